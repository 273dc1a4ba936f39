//! Reporting shared by every benchmark: latency histograms, the machine and build description,
//! process memory, and writing one JSON object per line.
//!
//! Percentiles come from HDR histograms, never from means (STYLE.md §16), and every line names
//! the machine and build it was measured on, so numbers copied out of context stay honest.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// The longest latency a histogram records exactly (60 s); longer values saturate to it.
const LATENCY_NS_MAX: u64 = 60_000_000_000;
/// Three significant digits: 0.1 % relative error at any magnitude.
const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// Latency samples in nanoseconds.
pub struct Latency {
    histogram: Histogram<u64>,
}

impl Latency {
    pub fn new() -> anyhow::Result<Latency> {
        let histogram = Histogram::new_with_bounds(1, LATENCY_NS_MAX, LATENCY_SIGNIFICANT_DIGITS)
            .context("creating a latency histogram")?;
        Ok(Latency { histogram })
    }

    pub fn record(&mut self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        // Zero would be below the histogram's lowest trackable value; 1 ns is the floor.
        self.histogram.saturating_record(nanos.max(1));
    }

    pub fn quantile_us(&self, quantile: f64) -> f64 {
        nanos_to_us(self.histogram.value_at_quantile(quantile))
    }

    pub fn max_us(&self) -> f64 {
        nanos_to_us(self.histogram.max())
    }

    /// p50, p99, p999 and max in microseconds, plus the number of samples.
    pub fn summary(&self) -> Value {
        json!({
            "p50_us": self.quantile_us(0.50),
            "p99_us": self.quantile_us(0.99),
            "p999_us": self.quantile_us(0.999),
            "max_us": self.max_us(),
            "latency_samples": self.histogram.len(),
        })
    }
}

fn nanos_to_us(nanos: u64) -> f64 {
    nanos as f64 / 1_000.0
}

/// The machine the numbers were measured on.
pub fn machine() -> Value {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).ok();
    json!({
        "cpus": cpus,
        "cpu_model": cpu_model(),
        "os": std::env::consts::OS,
    })
}

fn cpu_model() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))?;
    let (_, model) = line.split_once(':')?;
    Some(model.trim().to_string())
}

/// "release" or "debug": a debug build's numbers are not comparable to anything.
pub fn build() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// The process's resident set size in bytes (VmRSS), where /proc is available.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Adds every field of `extra` (an object) to `base` (an object).
pub fn merge(mut base: Value, extra: Value) -> Value {
    if let (Some(base_fields), Value::Object(extra_fields)) = (base.as_object_mut(), extra) {
        base_fields.extend(extra_fields);
    }
    base
}

/// Writes one JSON object as one line and flushes, so a consumer sees each scenario as soon
/// as it finishes.
pub fn emit(out: &mut impl Write, line: &Value) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, line).context("encoding a JSON report line")?;
    out.write_all(b"\n").context("writing a report line")?;
    out.flush().context("flushing report output")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_reports_percentiles_in_microseconds() {
        // 1000 samples of 1..=1000 µs: p50 is about 500 µs, p99 about 990 µs (±0.1 %).
        let mut latency = Latency::new().expect("valid histogram bounds");
        for us in 1..=1000u64 {
            latency.record(Duration::from_micros(us));
        }
        let summary = latency.summary();
        let p50 = summary["p50_us"].as_f64().expect("p50 is a number");
        let p99 = summary["p99_us"].as_f64().expect("p99 is a number");
        assert!((499.0..=501.0).contains(&p50), "p50 {p50}");
        assert!((989.0..=991.0).contains(&p99), "p99 {p99}");
        assert_eq!(summary["latency_samples"], 1000);
    }

    #[test]
    fn rss_is_readable_on_linux() {
        // The memory report depends on /proc/self/status; on Linux it must parse.
        if cfg!(target_os = "linux") {
            assert!(rss_bytes().is_some_and(|bytes| bytes > 0));
        }
    }
}
