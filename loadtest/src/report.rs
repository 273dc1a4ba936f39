//! The run's outputs in words (stdout) and as one JSON document (`--report`). Both name the
//! machine, the node, the seed and every setting, so figures copied out of context stay honest.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::audit::AuditReport;
use crate::driver::PhaseResult;
use crate::measure::{LATE_DISPATCH, human, percentiles_ms, quantile};
use crate::{EXIT_AUDIT_FAILED, EXIT_OBJECTIVE_MISSED, EXIT_PASSED, Load, Session};

pub struct Summary<'a> {
    pub session: &'a Session,
    pub load: &'a Load,
    /// Operations whose outcome was unknown and were resent before the audit.
    pub pending: u64,
    pub audit: Option<&'a AuditReport>,
    pub status: u8,
    pub started: SystemTime,
}

/// The machine the numbers were measured on.
pub fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|k| k.trim().to_owned());
    json!({
        "cpus": std::thread::available_parallelism().map(usize::from).ok(),
        "cpu": cpu,
        "kernel": kernel,
        "os": std::env::consts::OS,
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

fn phase_json(step: &crate::Step) -> Value {
    let phase: &PhaseResult = &step.phase;
    let r = &phase.recorder;
    let seconds: Vec<Value> = r
        .seconds
        .iter()
        .enumerate()
        .map(|(t, s)| {
            let ms = |q: f64| s.latency.value_at_quantile(q) as f64 / 1e6;
            json!({"t": t, "ops": s.latency.len(), "p50_ms": ms(0.5), "p99_ms": ms(0.99),
                   "max_ms": s.latency.max() as f64 / 1e6, "answered": s.answered, "failed": s.failed,
                   "transfers_posted": s.transfers_posted})
        })
        .collect();
    let elapsed = phase.elapsed.as_secs_f64();
    json!({
        "rate_intended": phase.plan.rate,
        "duration_s": phase.plan.duration.as_secs_f64(),
        "concurrency": phase.plan.concurrency,
        "intended_ops": phase.intended_ops(),
        "sent": r.sent,
        "not_sent": phase.not_sent,
        "ok": r.ok,
        "rejected": r.rejected,
        "failed": r.failed,
        "elapsed_s": elapsed,
        "achieved_ops_per_s": phase.achieved_rate(),
        "achieved_ratio": phase.achieved_ratio(),
        "error_ratio": phase.error_ratio(),
        "transfers_posted": r.transfers_posted,
        "transfers_rejected": r.transfers_rejected,
        "transfers_posted_per_s": r.transfers_posted as f64 / elapsed.max(1e-9),
        "late_dispatches": r.late_dispatches,
        "client_cpu_seconds": phase.client_cpu_seconds,
        "client_cpu_cores": phase.client_cpu_seconds.map(|cpu| cpu / elapsed.max(1e-9)),
        "client_cpu_us_per_op": phase.cpu_us_per_op(phase.client_cpu_seconds),
        "node_cpu_seconds": phase.node_cpu_seconds,
        "node_cpu_cores": phase.node_cpu_seconds.map(|cpu| cpu / elapsed.max(1e-9)),
        "node_cpu_us_per_op": phase.cpu_us_per_op(phase.node_cpu_seconds),
        "late_dispatch_threshold_ms": LATE_DISPATCH.as_secs_f64() * 1e3,
        "latency_corrected": percentiles_ms(&r.corrected),
        "service_time": percentiles_ms(&r.service),
        "dispatch_lateness": percentiles_ms(&r.lateness),
        "latency_by_kind": r.by_kind.iter().map(|(k, h)| (k.name().to_owned(), percentiles_ms(h))).collect::<serde_json::Map<_, _>>(),
        "answers": r.answers,
        "batch_item_rejections": r.item_rejections,
        "objectives_missed": step.missed,
        "passed": step.passed(),
        "per_second": seconds,
    })
}

impl Summary<'_> {
    fn replayed(&self) -> u64 {
        self.session.book.lock().map_or(0, |book| book.replayed)
    }

    pub fn json(&self) -> Value {
        let s = self.session;
        let o = &s.options;
        let fleet = s.fleet.as_deref();
        json!({
            "tool": "payu-loadtest",
            "version": env!("CARGO_PKG_VERSION"),
            "started_unix_s": self.started.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            "node": o.url,
            "run_id": s.run_id,
            "seed": s.seed,
            "machine": machine(),
            "load_average_at_start": s.load_average_at_start,
            "settings": {
                "mode": if o.ramp { "ramp" } else { "fixed" },
                "rate": o.rate, "duration_s": o.duration.as_secs_f64(),
                "ramp_from": o.ramp_from, "ramp_step": o.ramp_step, "step_duration_s": o.step_duration.as_secs_f64(),
                "refine": o.refine,
                "batch_size": o.batch_size,
                "concurrency": o.concurrency, "grace_s": o.grace.as_secs_f64(), "timeout_s": o.timeout.as_secs_f64(),
                "http2": o.http2, "http2_connections": o.http2.then_some(o.http2_connections), "lanes": s.lane_count(),
                "accounts": o.accounts, "funding_idr": o.funding.to_string(), "tier": o.tier,
                "amount_min_idr": o.amount_min.to_string(), "amount_max_idr": o.amount_max.to_string(),
                "mix": {"transfer": o.mix.transfer, "hold": o.mix.hold}, "hold_commit_ratio": o.hold_commit_ratio,
                "zipf": o.zipf,
                "slo_p99_ms": o.slo_p99.map(|d| d.as_secs_f64() * 1e3),
                "min_rate_ratio": o.min_rate_ratio, "max_error_ratio": o.max_error_ratio,
            },
            "setup": {
                "settlement_account": fleet.map(|f| f.settlement),
                "accounts": fleet.map(|f| f.accounts.len()),
                "seconds": s.setup_seconds,
            },
            "warmup": self.load.warmup.as_ref().map(phase_json),
            "phases": self.load.steps.iter().map(phase_json).collect::<Vec<_>>(),
            "ramp": self.load.ramp.then(|| json!({"best_rate": self.load.best_rate})),
            "resolution": {
                "unknown_outcomes_resent": self.pending,
                "answered_as_replays": self.replayed(),
            },
            "audit": self.audit.map(AuditReport::to_json),
            "verdict": {
                "audit_passed": self.audit.map(AuditReport::passed),
                "objectives_met": self.load.objectives_met(),
                "exit_status": self.status,
            },
        })
    }

    pub fn human(&self) -> String {
        let mut out = String::new();
        let s = self.session;
        let o = &s.options;
        let _ = writeln!(
            out,
            "payu-loadtest {} against {} (run {}, seed {})",
            env!("CARGO_PKG_VERSION"),
            o.url,
            s.run_id,
            s.seed
        );
        if let Some(fleet) = s.fleet.as_deref() {
            let _ = writeln!(
                out,
                "setup: {} accounts funded with {} IDR each from settlement account {} in {:.1}s",
                fleet.accounts.len(),
                fleet.funding,
                fleet.settlement,
                s.setup_seconds
            );
        }
        let what = match o.batch_size {
            Some(size) => format!("batches of {size} transfers"),
            None => format!(
                "operations (mix transfer={} hold={})",
                o.mix.transfer, o.mix.hold
            ),
        };
        let _ = writeln!(
            out,
            "load: {what}, zipf {}, concurrency {}, {}, {} lane(s)",
            o.zipf,
            o.concurrency,
            if o.http2 {
                "HTTP/2"
            } else {
                "HTTP/1.1 keep-alive"
            },
            self.session.lane_count()
        );
        if let Some(warmup) = &self.load.warmup {
            self.human_phase(&mut out, None, warmup);
        }
        for (n, step) in self.load.steps.iter().enumerate() {
            self.human_phase(&mut out, Some(n), step);
        }
        if self.load.ramp {
            let slo = o.slo_p99.map(human).unwrap_or_default();
            match self.load.best_rate {
                Some(rate) => {
                    let per = o.transfers_per_op();
                    let _ = writeln!(
                        out,
                        "ramp: highest rate meeting p99 <= {slo}: {rate:.0}/s ({:.0} transfers/s)",
                        rate * f64::from(per)
                    );
                }
                None => {
                    let _ = writeln!(out, "ramp: no step met p99 <= {slo}");
                }
            }
        }
        let _ = writeln!(
            out,
            "resolution: {} operations with unknown outcomes were resent with their keys; {} answered as replays",
            self.pending,
            self.replayed()
        );
        match self.audit {
            None => {
                let _ = writeln!(out, "audit: skipped (--no-audit)");
            }
            Some(audit) => {
                let _ = writeln!(
                    out,
                    "audit: {} ({} accounts, {} acknowledged postings, {} history items, {} transactions fetched, {:.1}s)",
                    if audit.passed() { "PASSED" } else { "FAILED" },
                    audit.accounts,
                    audit.acknowledged,
                    audit.history_items,
                    audit.transactions_fetched,
                    audit.seconds
                );
                for check in &audit.checks {
                    let mark = if check.passed() { "ok  " } else { "FAIL" };
                    let _ = writeln!(
                        out,
                        "  {mark} {:<12} {} ({} checked, {} failed)",
                        check.name, check.what, check.checked, check.failures
                    );
                    for example in check.examples.iter().take(5) {
                        let _ = writeln!(out, "         - {example}");
                    }
                }
                for warning in &audit.warnings {
                    let _ = writeln!(out, "  warning: {warning}");
                }
            }
        }
        let verdict = match self.status {
            EXIT_PASSED => "PASS",
            EXIT_AUDIT_FAILED => "FAIL: the audit failed",
            EXIT_OBJECTIVE_MISSED => "FAIL: an objective was missed",
            _ => "FAIL",
        };
        let _ = writeln!(out, "verdict: {verdict} (exit {})", self.status);
        out
    }

    /// One phase in words; `n` is the step's position, `None` for the warmup.
    fn human_phase(&self, out: &mut String, n: Option<usize>, step: &crate::Step) {
        let phase = &step.phase;
        let r = &phase.recorder;
        let title = match (n, self.load.ramp) {
            (None, _) => "warmup (not judged)".to_owned(),
            (Some(n), true) => format!("step {}", n + 1),
            (Some(_), false) => "run".to_owned(),
        };
        let _ = writeln!(
            out,
            "{title}: {:.0}/s intended for {:.1}s: {} intended, {} sent, {} not sent; ok {}, rejected {}, failed {}",
            phase.plan.rate,
            phase.plan.duration.as_secs_f64(),
            phase.intended_ops(),
            r.sent,
            phase.not_sent,
            r.ok,
            r.rejected,
            r.failed
        );
        let _ = writeln!(
            out,
            "  achieved {:.1}/s = {:.1}% of intended; transfers posted {} ({:.0}/s)",
            phase.achieved_rate(),
            phase.achieved_ratio() * 100.0,
            r.transfers_posted,
            r.transfers_posted as f64 / phase.elapsed.as_secs_f64().max(1e-9)
        );
        let line = |h| {
            format!(
                "p50 {} p90 {} p99 {} p99.9 {} max {}",
                human(quantile(h, 0.5)),
                human(quantile(h, 0.9)),
                human(quantile(h, 0.99)),
                human(quantile(h, 0.999)),
                human(quantile(h, 1.0))
            )
        };
        let _ = writeln!(
            out,
            "  latency from intended send (corrected): {}",
            line(&r.corrected)
        );
        let _ = writeln!(
            out,
            "  service time (uncorrected):             {}",
            line(&r.service)
        );
        let _ = writeln!(
            out,
            "  dispatch lateness: p99 {} max {}; {} dispatches later than {}",
            human(quantile(&r.lateness, 0.99)),
            human(quantile(&r.lateness, 1.0)),
            r.late_dispatches,
            human(LATE_DISPATCH)
        );
        let cpu_lines = [
            ("load tester CPU", phase.client_cpu_seconds),
            (
                "node CPU (its process_cpu_seconds_total)",
                phase.node_cpu_seconds,
            ),
        ];
        for (label, seconds) in cpu_lines {
            let Some(cpu) = seconds else { continue };
            let per_op = phase.cpu_us_per_op(seconds).map_or(String::new(), |us| {
                format!(", {us:.1} us per answered operation")
            });
            let _ = writeln!(
                out,
                "  {label}: {cpu:.1}s = {:.2} cores over the phase{per_op}",
                cpu / phase.elapsed.as_secs_f64().max(1e-9)
            );
        }
        let answers: Vec<String> = r
            .answers
            .iter()
            .map(|(label, count)| format!("{label} x{count}"))
            .collect();
        let _ = writeln!(out, "  answers: {}", answers.join(", "));
        if !r.item_rejections.is_empty() {
            let items: Vec<String> = r
                .item_rejections
                .iter()
                .map(|(code, count)| format!("{code} x{count}"))
                .collect();
            let _ = writeln!(out, "  batch items rejected: {}", items.join(", "));
        }
        match (n, step.passed()) {
            (None, _) => {}
            (Some(_), true) => {
                let _ = writeln!(out, "  objectives: met");
            }
            (Some(_), false) => {
                let _ = writeln!(out, "  objectives missed: {}", step.missed.join("; "));
            }
        }
    }
}
