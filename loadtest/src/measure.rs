//! What a load phase measured: HDR histograms of the corrected latency (intended send time →
//! answer, so a stalled node cannot hide the requests it delayed), of the service time (actual
//! send → answer, the figure a closed-loop tool would show) and of dispatch lateness; counts of
//! answers by status and code; and a per-second series for the live progress line and the plot.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::workload::OpKind;

/// The longest latency recorded exactly (one hour); longer values saturate to it.
const LATENCY_NS_MAX: u64 = 3_600_000_000_000;
/// Three significant digits: 0.1% relative error at any magnitude.
const SIGNIFICANT_DIGITS: u8 = 3;
/// Per-second histograms are coarser (1%) and start at 1 µs: there is one per second of run.
const SECOND_SIGNIFICANT_DIGITS: u8 = 2;
const SECOND_LOWEST_NS: u64 = 1_000;
/// A dispatch later than this after its intended time counts as late.
pub const LATE_DISPATCH: Duration = Duration::from_millis(1);

/// How one operation ended, as the statistics see it.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub kind: OpKind,
    pub class: Class,
    /// The answer's label ("201", "422 INSUFFICIENT_FUNDS", "503 RING_FULL", "timeout", …).
    pub label: Cow<'static, str>,
    /// Transfers the ledger posted / rejected in this operation (a batch carries many).
    pub transfers_posted: u64,
    pub transfers_rejected: u64,
    /// Rejection codes of a batch's items.
    pub item_rejections: BTreeMap<String, u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// 2xx.
    Ok,
    /// A business answer from the ledger (404, 409, 422 with a rejection code).
    Rejected,
    /// 5xx, timeout, connection error, or a 4xx that is this tool's or the node's mistake.
    Failed,
}

pub fn histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts; failure would be a programming error.
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, SIGNIFICANT_DIGITS)
        .expect("valid histogram bounds")
}

fn second_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(SECOND_LOWEST_NS, LATENCY_NS_MAX, SECOND_SIGNIFICANT_DIGITS)
        .expect("valid histogram bounds")
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// One second of a phase.
#[derive(Clone, Debug)]
pub struct Second {
    /// Corrected latency of the operations whose intended send time fell in this second.
    pub latency: Histogram<u64>,
    /// Operations answered (ok or rejected) during this second.
    pub answered: u64,
    /// Operations that failed during this second.
    pub failed: u64,
    /// Transfers posted during this second.
    pub transfers_posted: u64,
}

impl Second {
    fn new() -> Second {
        Second {
            latency: second_histogram(),
            answered: 0,
            failed: 0,
            transfers_posted: 0,
        }
    }
}

/// Everything one phase (a fixed-rate run, or one ramp step) measured.
#[derive(Clone, Debug)]
pub struct Recorder {
    pub corrected: Histogram<u64>,
    pub service: Histogram<u64>,
    pub lateness: Histogram<u64>,
    pub by_kind: BTreeMap<OpKind, Histogram<u64>>,
    pub seconds: Vec<Second>,
    pub sent: u64,
    pub ok: u64,
    pub rejected: u64,
    pub failed: u64,
    pub late_dispatches: u64,
    pub transfers_posted: u64,
    pub transfers_rejected: u64,
    /// Answers by label.
    pub answers: BTreeMap<String, u64>,
    /// Batch items the ledger rejected, by code.
    pub item_rejections: BTreeMap<String, u64>,
    /// Since the phase's start, when the last answer came.
    pub last_answer: Duration,
    interval: Histogram<u64>,
    interval_answered: u64,
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder::new()
    }
}

/// The live numbers of the last progress interval.
#[derive(Clone, Debug)]
pub struct Interval {
    pub answered: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            corrected: histogram(),
            service: histogram(),
            lateness: histogram(),
            by_kind: BTreeMap::new(),
            seconds: Vec::new(),
            sent: 0,
            ok: 0,
            rejected: 0,
            failed: 0,
            late_dispatches: 0,
            transfers_posted: 0,
            transfers_rejected: 0,
            answers: BTreeMap::new(),
            item_rejections: BTreeMap::new(),
            last_answer: Duration::ZERO,
            interval: histogram(),
            interval_answered: 0,
        }
    }

    /// A request left `lateness` after its intended send time.
    pub fn dispatched(&mut self, lateness: Duration) {
        self.sent += 1;
        self.lateness.saturating_record(nanos(lateness));
        if lateness > LATE_DISPATCH {
            self.late_dispatches += 1;
        }
    }

    /// An operation intended at `intended` (since the phase's start) was sent `lateness` later
    /// and answered at `answered`.
    pub fn answered(
        &mut self,
        intended: Duration,
        lateness: Duration,
        answered: Duration,
        outcome: &Outcome,
    ) {
        let corrected = answered.saturating_sub(intended);
        let service = corrected.saturating_sub(lateness);
        self.corrected.saturating_record(nanos(corrected));
        self.service.saturating_record(nanos(service));
        self.interval.saturating_record(nanos(corrected));
        self.by_kind
            .entry(outcome.kind)
            .or_insert_with(histogram)
            .saturating_record(nanos(corrected));
        self.second(intended)
            .latency
            .saturating_record(nanos(corrected));
        let done = self.second(answered);
        match outcome.class {
            Class::Ok | Class::Rejected => done.answered += 1,
            Class::Failed => done.failed += 1,
        }
        done.transfers_posted += outcome.transfers_posted;
        match outcome.class {
            Class::Ok => self.ok += 1,
            Class::Rejected => self.rejected += 1,
            Class::Failed => self.failed += 1,
        }
        if outcome.class != Class::Failed {
            self.interval_answered += 1;
        }
        self.transfers_posted += outcome.transfers_posted;
        self.transfers_rejected += outcome.transfers_rejected;
        match self.answers.get_mut(outcome.label.as_ref()) {
            Some(count) => *count += 1,
            None => {
                self.answers.insert(outcome.label.clone().into_owned(), 1);
            }
        }
        for (code, count) in &outcome.item_rejections {
            *self.item_rejections.entry(code.clone()).or_insert(0) += count;
        }
        self.last_answer = self.last_answer.max(answered);
    }

    fn second(&mut self, at: Duration) -> &mut Second {
        let index = at.as_secs() as usize;
        if self.seconds.len() <= index {
            self.seconds.resize_with(index + 1, Second::new);
        }
        &mut self.seconds[index]
    }

    /// The numbers since the previous call, for the progress line.
    pub fn take_interval(&mut self) -> Interval {
        let interval = Interval {
            answered: self.interval_answered,
            p50: Duration::from_nanos(self.interval.value_at_quantile(0.50)),
            p99: Duration::from_nanos(self.interval.value_at_quantile(0.99)),
            max: Duration::from_nanos(self.interval.max()),
        };
        self.interval.reset();
        self.interval_answered = 0;
        interval
    }

    pub fn answered_total(&self) -> u64 {
        self.ok + self.rejected
    }

    pub fn in_flight(&self) -> u64 {
        self.sent - self.ok - self.rejected - self.failed
    }
}

/// Percentiles of a histogram in milliseconds, for reports.
pub fn percentiles_ms(histogram: &Histogram<u64>) -> Value {
    let ms = |nanos: u64| nanos as f64 / 1e6;
    json!({
        "count": histogram.len(),
        "p50_ms": ms(histogram.value_at_quantile(0.50)),
        "p90_ms": ms(histogram.value_at_quantile(0.90)),
        "p99_ms": ms(histogram.value_at_quantile(0.99)),
        "p999_ms": ms(histogram.value_at_quantile(0.999)),
        "max_ms": ms(histogram.max()),
    })
}

/// `1.234ms`, `12.3ms`, `1.20s`: compact latency text for humans.
pub fn human(duration: Duration) -> String {
    let ms = duration.as_secs_f64() * 1e3;
    match ms {
        ms if ms < 10.0 => format!("{ms:.3}ms"),
        ms if ms < 1000.0 => format!("{ms:.1}ms"),
        ms => format!("{:.2}s", ms / 1e3),
    }
}

/// The latency at quantile `q`; `q >= 1` is the maximum recorded.
pub fn quantile(histogram: &Histogram<u64>, q: f64) -> Duration {
    match q >= 1.0 {
        true => Duration::from_nanos(histogram.max()),
        false => Duration::from_nanos(histogram.value_at_quantile(q)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Outcome {
        Outcome {
            kind: OpKind::Transfer,
            class: Class::Ok,
            label: "201".into(),
            transfers_posted: 1,
            transfers_rejected: 0,
            item_rejections: BTreeMap::new(),
        }
    }

    #[test]
    fn corrected_latency_counts_from_the_intended_time() {
        // Intended at 1 s, sent 300 ms late, answered at 1.31 s: corrected 310 ms, service 10 ms.
        let mut recorder = Recorder::new();
        recorder.dispatched(Duration::from_millis(300));
        recorder.answered(
            Duration::from_secs(1),
            Duration::from_millis(300),
            Duration::from_millis(1310),
            &ok(),
        );
        let within = |h: &Histogram<u64>, ms: u64| {
            let v = h.max() as f64 / 1e6;
            (v - ms as f64).abs() < ms as f64 * 0.01
        };
        assert!(within(&recorder.corrected, 310));
        assert!(within(&recorder.service, 10));
        assert_eq!(recorder.late_dispatches, 1);
        assert_eq!(
            (recorder.sent, recorder.ok, recorder.in_flight()),
            (1, 1, 0)
        );
        assert_eq!(recorder.seconds.len(), 2);
        assert_eq!(recorder.seconds[1].answered, 1);
        assert_eq!(recorder.answers.get("201"), Some(&1));
    }
}
