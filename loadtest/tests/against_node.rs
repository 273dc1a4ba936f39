//! `payu-loadtest` against a real node started by the test (in-process, 127.0.0.1:0): a short
//! fixed-rate run reaches its rate and its audit passes; the audit fails when the ledger is
//! changed behind the tester's back.

mod common;

use common::{TestNode, options};
use payu_loadtest::{EXIT_PASSED, Session};
use serde_json::Value;

/// Runs the load tester against `node` with `extra` arguments plus a JSON report, and
/// returns its exit status and the report.
fn run_with_report(node: &TestNode, extra: &[&str], out: &std::path::Path) -> (u8, Value) {
    let report = out.join("report.json");
    let report_arg = report.display().to_string();
    let mut args = extra.to_vec();
    args.extend_from_slice(&["--report", &report_arg]);
    let status = payu_loadtest::run(options(node, &args)).expect("the run completes");
    let report = serde_json::from_str(&std::fs::read_to_string(&report).expect("report written"))
        .expect("JSON");
    (status, report)
}

/// Holds were among the phase's operations, and the report's audit passed.
fn assert_holds_ran_and_the_audit_passed(phase: &Value, report: &Value) {
    assert!(
        phase["latency_by_kind"]["hold"]["count"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "holds ran"
    );
    assert_eq!(
        report["audit"]["passed"], true,
        "audit: {:#}",
        report["audit"]
    );
}

/// Proves: a 200/s run for 3 s sends and gets answers for nearly all 600 intended operations
/// (a count, not a timing, assertion), the ledger audit passes on an honest node, and the
/// JSON report and SVG plot are written with the figures the issue asks for.
#[test]
fn a_fixed_rate_run_reaches_its_rate_and_its_audit_passes() {
    let node = TestNode::start();
    let out = tempfile::tempdir().expect("output dir");
    let plot = out.path().join("plot.svg");
    let plot_arg = plot.display().to_string();
    let (status, report) = run_with_report(
        &node,
        &[
            "--rate",
            "200",
            "--duration",
            "3s",
            "--accounts",
            "50",
            "--mix",
            "transfer=80,hold=20",
            "--seed",
            "42",
            "--warmup",
            "500ms",
            "--plot",
            &plot_arg,
            "--min-rate-ratio",
            "0",
            "--max-error-ratio",
            "1",
        ],
        out.path(),
    );
    assert_eq!(status, EXIT_PASSED, "exit status; report: {report:#}");

    // The warmup ran at the same rate, is reported apart, and is not part of the phase judged.
    assert_eq!(
        report["warmup"]["intended_ops"], 100,
        "warmup: {:#}",
        report["warmup"]
    );
    let phase = &report["phases"][0];
    let intended = phase["intended_ops"].as_u64().expect("intended_ops");
    assert_eq!(intended, 600);
    let sent = phase["sent"].as_u64().expect("sent");
    let answered =
        phase["ok"].as_u64().expect("ok") + phase["rejected"].as_u64().expect("rejected");
    assert!(sent * 10 >= intended * 9, "sent {sent} of {intended}");
    assert!(
        answered * 10 >= intended * 9,
        "answered {answered} of {intended}; report: {phase:#}"
    );
    for field in ["p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"] {
        assert!(
            phase["latency_corrected"][field]
                .as_f64()
                .is_some_and(|v| v > 0.0),
            "{field}"
        );
        assert!(
            phase["service_time"][field]
                .as_f64()
                .is_some_and(|v| v > 0.0),
            "{field}"
        );
    }
    // The node exports its CPU time, and the report turns both sides' into a cost per
    // operation (this node runs in the test's process, so its figure includes the tool's).
    for side in ["client", "node"] {
        for field in ["cpu_seconds", "cpu_us_per_op"] {
            assert!(
                phase[format!("{side}_{field}")]
                    .as_f64()
                    .is_some_and(|v| v > 0.0),
                "{side}_{field}: {phase:#}"
            );
        }
    }
    assert_holds_ran_and_the_audit_passed(phase, &report);
    // Funding (50 deposits, counted on both sides) plus every posted transfer and commit.
    let postings = report["audit"]["acknowledged_postings"]
        .as_u64()
        .expect("postings");
    assert!(
        postings >= 50 + answered / 2,
        "{postings} acknowledged postings"
    );

    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(
        svg.starts_with("<svg") && svg.contains("intended send"),
        "an SVG with its captions"
    );
}

/// Proves: with `--http2` the load runs over a few multiplexed h2c connections to the real
/// node (the lean client of http2.rs on the lanes), reaches nearly all of its intended
/// operations, transfers and holds alike, and the audit of what the node acknowledged passes.
#[test]
fn an_http2_run_reaches_its_rate_and_its_audit_passes() {
    let node = TestNode::start();
    let out = tempfile::tempdir().expect("output dir");
    let (status, report) = run_with_report(
        &node,
        &[
            "--http2",
            "--http2-connections",
            "2",
            "--rate",
            "200",
            "--duration",
            "2s",
            "--accounts",
            "40",
            "--mix",
            "transfer=80,hold=20",
            "--seed",
            "7",
            "--min-rate-ratio",
            "0",
            "--max-error-ratio",
            "1",
        ],
        out.path(),
    );
    assert_eq!(status, EXIT_PASSED, "exit status; report: {report:#}");
    assert_eq!(
        report["settings"]["http2"], true,
        "{:#}",
        report["settings"]
    );
    assert_eq!(report["settings"]["http2_connections"], 2);
    let phase = &report["phases"][0];
    let intended = phase["intended_ops"].as_u64().expect("intended_ops");
    assert_eq!(intended, 400);
    let ok = phase["ok"].as_u64().expect("ok");
    assert!(ok * 10 >= intended * 9, "ok {ok} of {intended}: {phase:#}");
    assert_holds_ran_and_the_audit_passed(phase, &report);
}

/// Proves: the audit is not vacuous. It passes after a run, and fails once an operator moves
/// money between two of the run's accounts behind the tester's back: both balances disagree
/// with the acknowledgments and each history holds a transaction the tester never saw.
#[test]
fn the_audit_fails_when_the_ledger_is_changed_behind_the_testers_back() {
    let node = TestNode::start();
    let mut session = Session::new(options(
        &node,
        &[
            "--rate",
            "100",
            "--duration",
            "1s",
            "--accounts",
            "20",
            "--seed",
            "7",
        ],
    ))
    .expect("session");
    let fleet = session.setup().expect("setup");
    session.load().expect("load");
    session.resolve().expect("resolution");
    let honest = session.audit().expect("audit");
    assert!(
        honest.passed(),
        "the untouched ledger passes: {:#}",
        honest.to_json()
    );

    let (from, to) = (fleet.accounts[0], fleet.accounts[1]);
    let token = node.operator_token("someone-else");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let status = runtime.block_on(async {
        reqwest::Client::new()
            .post(format!("{}/v1/transfers", node.url))
            .bearer_auth(token)
            .header("idempotency-key", "behind-the-back-1")
            .json(&serde_json::json!({"from_account_id": from, "to_account_id": to, "amount": {"value": "7.77", "currency": "IDR"}}))
            .send()
            .await
            .expect("the tampering transfer is answered")
            .status()
    });
    assert_eq!(status.as_u16(), 201, "the tampering transfer posted");

    let tampered = session.audit().expect("audit");
    assert!(!tampered.passed(), "the audit must fail after tampering");
    let failed: Vec<&str> = tampered
        .checks
        .iter()
        .filter(|c| !c.passed())
        .map(|c| c.name)
        .collect();
    assert!(
        failed.contains(&"balances"),
        "balances check fails: {failed:?}"
    );
    assert!(
        failed.contains(&"histories"),
        "histories check fails: {failed:?}"
    );
    assert!(
        !failed.contains(&"zero_sum"),
        "money moved inside the run still sums to zero: {failed:?}"
    );
    let balances = tampered
        .checks
        .iter()
        .find(|c| c.name == "balances")
        .expect("balances check");
    assert_eq!(
        balances.failures, 2,
        "exactly the two tampered accounts: {:?}",
        balances.examples
    );
    assert!(
        balances
            .examples
            .iter()
            .any(|e| e.contains(&format!("account {from}:")) && e.contains("off by -7.77"))
    );
}

/// Proves: operations whose answers were lost (the node applied them; the client saw the
/// connection drop) are resolved by resending the same request with the same key and body,
/// the node answers those resends as replays instead of applying them twice, and the audit
/// then passes: every lost answer was learned, nothing was applied twice. (Two load lanes.)
#[test]
fn lost_answers_are_learned_by_resending_and_nothing_is_applied_twice() {
    let node = TestNode::start();
    let proxy_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (proxy, dropped) = common::lossy_proxy(&proxy_runtime, &node.url, 9);
    let mut options = options(
        &node,
        &[
            "--rate",
            "150",
            "--duration",
            "2s",
            "--accounts",
            "30",
            "--mix",
            "transfer=60,hold=40",
            "--seed",
            "11",
            // Two lanes, each with its own connections to lose.
            "--lanes",
            "2",
        ],
    );
    options.url = proxy;
    let mut session = Session::new(options).expect("session");
    session
        .setup()
        .expect("setup resolves its own lost answers");
    let load = session.load().expect("load");
    let failed = load.steps[0].phase.recorder.failed;
    let resent = session.resolve().expect("resolution");
    let audit = session.audit().expect("audit");
    let book = session.book.lock().expect("book");
    let lost = dropped.load(std::sync::atomic::Ordering::SeqCst);
    assert!(lost >= 20, "the proxy lost {lost} answers");
    assert!(
        failed > 0 && resent == failed,
        "{failed} operations failed in the load, {resent} resent"
    );
    assert!(book.replayed > 0, "resends were answered as replays");
    assert!(
        book.unresolved.is_empty() && book.unresolved_holds == 0,
        "{:?}",
        book.unresolved
    );
    assert!(
        audit.passed(),
        "audit after lost answers: {:#}",
        audit.to_json()
    );
}
