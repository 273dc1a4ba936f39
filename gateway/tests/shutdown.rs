//! Graceful shutdown with real processes: SIGTERM arrives while concurrent clients are sending
//! transfers. The node must drain and exit 0 (bounded wait), answer every request it took
//! either 2xx (durable) or 503 DRAINING (not applied), leave a snapshot behind, and never
//! apply a request without answering it: a request that got no answer at all (its connection
//! closed) was not applied, and after the restart its retry with the same Idempotency-Key
//! applies it exactly once.
//!
//! Every transfer is identifiable: transfer number `n` has Idempotency-Key `s-n` and moves
//! exactly `n` units.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Api, Node, NodeOptions, Rng, Txn, UNITS_PER_IDR, money};
use serde_json::{Value, json};

const CUSTOMERS: usize = 16;
const DEPOSIT_UNITS: i128 = 1_000_000 * UNITS_PER_IDR;
const TIER: u8 = 1;
/// Concurrent clients.
const WRITERS: usize = 8;
/// SIGTERM comes this long (uniform, ms) after the load starts.
const TERM_DELAY_MS_MIN: u64 = 200;
const TERM_DELAY_MS_MAX: u64 = 600;
/// Transfers one writer sends at most (bounds the test however the node behaves).
const TRANSFERS_PER_WRITER_MAX: u64 = 5_000;
/// How long the writers may take to stop once the node is gone.
const WRITERS_JOIN_TIMEOUT: Duration = Duration::from_secs(120);
/// How often /readyz is asked while the node drains.
const READYZ_POLL: Duration = Duration::from_millis(5);

/// How one transfer's first attempt ended.
#[derive(Debug)]
enum First {
    /// 201 with this body.
    Acked(Value),
    /// 503 with this problem code.
    Refused(String),
    /// A transport error: no answer at all.
    NoAnswer(String),
}

#[derive(Debug)]
struct Sent {
    number: u64,
    body: Vec<u8>,
    first: First,
}

impl Sent {
    fn key(&self) -> String {
        format!("s-{}", self.number)
    }
}

fn transfer_body(seed: u64, number: u64, customers: &[u64]) -> Vec<u8> {
    let mut rng = Rng::new(seed ^ number.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let count = customers.len() as u64;
    let from = rng.below(count);
    let to = (from + 1 + rng.below(count - 1)) % count;
    let body = json!({
        "from_account_id": customers[from as usize],
        "to_account_id": customers[to as usize],
        "amount": money(i128::from(number)),
    });
    serde_json::to_vec(&body).expect("serialise a transfer")
}

/// One client: sends transfers until the node refuses (503) or stops answering.
async fn write_until_refused(
    api: Api,
    seed: u64,
    counter: Arc<AtomicU64>,
    customers: Arc<Vec<u64>>,
) -> Vec<Sent> {
    let mut sent = Vec::new();
    for _ in 0..TRANSFERS_PER_WRITER_MAX {
        let number = counter.fetch_add(1, Ordering::Relaxed);
        let body = transfer_body(seed, number, &customers);
        let key = format!("s-{number}");
        let (first, stop) = match api
            .post_raw("/v1/transfers", Some(&key), body.clone())
            .await
        {
            Ok(answer) if answer.status == 201 => (First::Acked(answer.body), false),
            Ok(answer) if answer.status == 503 => {
                assert!(
                    answer.retry_after.is_some(),
                    "503 without Retry-After: {answer:?}"
                );
                (First::Refused(answer.code().to_owned()), true)
            }
            Ok(answer) => panic!("transfer {number}: unexpected answer {answer:?}"),
            Err(error) => (First::NoAnswer(common::error_chain(&error)), true),
        };
        sent.push(Sent {
            number,
            body,
            first,
        });
        if stop {
            break;
        }
    }
    sent
}

/// Asks /readyz over and over until the node stops answering; returns the answers seen.
async fn watch_readyz(api: Api, stop: Arc<AtomicBool>) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let outcome = match api.try_get("/readyz").await {
            Ok(answer) => format!("{} {}", answer.status, answer.code()),
            Err(_) => break,
        };
        *seen.entry(outcome).or_default() += 1;
        tokio::time::sleep(READYZ_POLL).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_answers_and_exits_cleanly() {
    // Proves: SIGTERM under concurrent transfers ends in exit 0 with a snapshot; every 2xx is durable, no 503 DRAINING or unanswered request was applied, and each retries to exactly one application.
    let seed = common::seed();
    eprintln!("shutdown test seed {seed} (rerun with PAYU_CRASH_SEED={seed})");
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let token = common::token(&data);
    let options = NodeOptions::default();
    let mut node = Node::start(&data, &options);
    let api = node.api(&token);
    api.wait_ready().await;
    let ledger = api.fund_ledger(CUSTOMERS, DEPOSIT_UNITS, TIER).await;

    let counter = Arc::new(AtomicU64::new(1));
    let customers = Arc::new(ledger.customers.clone());
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..WRITERS {
        let task = write_until_refused(
            api.clone(),
            seed,
            Arc::clone(&counter),
            Arc::clone(&customers),
        );
        writers.spawn(task);
    }
    // A client of its own (its own connection) watches readiness through the drain.
    let watcher_stop = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(watch_readyz(
        Api::new(&node.base, &token),
        Arc::clone(&watcher_stop),
    ));
    let delay = Duration::from_millis(rng.between(TERM_DELAY_MS_MIN, TERM_DELAY_MS_MAX));
    tokio::time::sleep(delay).await;
    let terminated = Instant::now();
    node.terminate();

    let mut sent: Vec<Sent> = Vec::new();
    let joined = tokio::time::timeout(WRITERS_JOIN_TIMEOUT, async {
        while let Some(part) = writers.join_next().await {
            sent.extend(common::joined(part));
        }
    })
    .await;
    assert!(joined.is_ok(), "the writers stop once the node drains");
    let status = node.wait_exit(common::EXIT_TIMEOUT);
    let exit_time = terminated.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM → exit 0 within {:?}, got {status:?}; log:\n{}",
        common::EXIT_TIMEOUT,
        node.log_tail()
    );
    watcher_stop.store(true, Ordering::Relaxed);
    let readyz = watcher.await.expect("the readiness watcher");

    let snapshots: Vec<_> = std::fs::read_dir(data.join("snapshots"))
        .expect("D/snapshots exists after a clean stop")
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".snapshot"))
        .collect();
    assert!(!snapshots.is_empty(), "a snapshot file in D/snapshots");

    // Refusals during the drain say DRAINING (the small load never fills the ring).
    for one in &sent {
        if let First::Refused(code) = &one.first {
            assert_eq!(code, "DRAINING", "transfer {}: 503 {code}", one.number);
        }
    }
    let acked = sent
        .iter()
        .filter(|one| matches!(one.first, First::Acked(_)))
        .count();
    let refused = sent
        .iter()
        .filter(|one| matches!(one.first, First::Refused(_)))
        .count();
    let mut unanswered: BTreeMap<&str, usize> = BTreeMap::new();
    for one in &sent {
        if let First::NoAnswer(error) = &one.first {
            // The kind of failure, without the URL (its port differs every run).
            let kind = error.rsplit("): ").next().unwrap_or(error);
            *unanswered.entry(kind).or_default() += 1;
        }
    }
    assert!(acked > 0, "some transfers were acknowledged before SIGTERM");

    // Restart: every 2xx is durable, the 503s were not applied, the unanswered apply once.
    let mut node = Node::start(&data, &options);
    let api = node.api(&token);
    api.wait_ready().await;
    let context = format!("seed {seed}, after SIGTERM");
    // The newest acknowledged transfer first: the one a read model rebuilding after the
    // restart would reach last.
    let newest = sent
        .iter()
        .filter_map(|one| match &one.first {
            First::Acked(body) => Some(body),
            _ => None,
        })
        .max_by_key(|body| body["seq"].as_u64());
    if let Some(body) = newest {
        let id = body["id"].as_u64().expect("a transaction id");
        let stored = common::get_acknowledged(&api, id, &context).await;
        assert_eq!(&stored, body, "{context}: the newest acknowledged transfer");
    }
    let before_retry = api.read_ledger(&ledger).await;
    before_retry.check(&ledger, &context);
    let applied = before_retry.transfers_by_amount(&context);
    for one in &sent {
        let found = applied.get(&i128::from(one.number));
        match &one.first {
            First::Acked(body) => {
                let id = body["id"].as_u64().expect("a transaction id");
                let stored = common::get_acknowledged(&api, id, &context).await;
                assert_eq!(
                    &stored, body,
                    "{context}: transfer {} as acknowledged",
                    one.number
                );
                assert_eq!(
                    found,
                    Some(&&Txn::from_json(body)),
                    "{context}: {}",
                    one.number
                );
            }
            First::Refused(code) => assert!(
                found.is_none(),
                "{context}: transfer {} was answered 503 {code} but applied: {found:?}",
                one.number
            ),
            // A graceful stop answers every request it read: one that got no answer was never
            // read, so it was not applied.
            First::NoAnswer(error) => assert!(
                found.is_none(),
                "{context}: transfer {} got no answer ({error}) but was applied: {found:?}",
                one.number
            ),
        }
    }
    for one in &sent {
        if matches!(one.first, First::Acked(_)) {
            continue;
        }
        let answer = api
            .post_raw("/v1/transfers", Some(&one.key()), one.body.clone())
            .await
            .unwrap_or_else(|error| panic!("{context}: retry of {}: {error}", one.number));
        assert_eq!(
            answer.status, 201,
            "{context}: retry of {} ({:?}): {answer:?}",
            one.number, one.first
        );
        assert!(
            !answer.replayed,
            "{context}: retry of {}: the first attempt was not applied, so this is no replay",
            one.number
        );
    }
    let after_retry = api.read_ledger(&ledger).await;
    after_retry.check(&ledger, &context);
    let transfers = after_retry.transfers_by_amount(&context);
    assert_eq!(
        transfers.len(),
        sent.len(),
        "{context}: every transfer sent is applied exactly once after the retries"
    );
    node.terminate();
    assert!(
        node.wait_exit(common::EXIT_TIMEOUT)
            .is_some_and(|s| s.success()),
        "{context}: the second clean stop"
    );
    eprintln!(
        "shutdown test: SIGTERM after {delay:?}; exit 0 in {exit_time:?}; {} sent: {acked} \
         acknowledged, {refused} refused 503 DRAINING, {} without an answer (none applied; \
         {unanswered:?}), all applied once by their retry; /readyz during the drain: {readyz:?}; \
         {} snapshot(s)",
        sent.len(),
        unanswered.values().sum::<usize>(),
        snapshots.len()
    );
}
