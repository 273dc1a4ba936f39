//! Reporting shared by every benchmark: latency histograms, the machine and build description,
//! process memory, and writing one JSON object per line.
//!
//! Percentiles come from HDR histograms, never from means (STYLE.md §16), and every line names
//! the machine and build it was measured on, so numbers copied out of context stay honest.

use std::io::Write;
use std::path::Path;
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

    /// Adds every sample of `other` (another thread's histogram, say).
    pub fn add(&mut self, other: &Latency) -> anyhow::Result<()> {
        self.histogram
            .add(&other.histogram)
            .context("merging latency histograms")
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

    /// p50, p99, p999 and max in microseconds under `{prefix}_p50_us` and so on, for a line
    /// that reports more than one latency.
    pub fn prefixed_summary(&self, prefix: &str) -> Value {
        let fields = [
            ("p50", self.quantile_us(0.50)),
            ("p99", self.quantile_us(0.99)),
            ("p999", self.quantile_us(0.999)),
            ("max", self.max_us()),
        ];
        fields
            .into_iter()
            .map(|(name, us)| (format!("{prefix}_{name}_us"), Value::from(us)))
            .collect::<serde_json::Map<_, _>>()
            .into()
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

/// The file system holding `path` (type and device, from /proc/self/mounts), where Linux
/// tells: a tmpfs or overlay directory would make every flush number meaningless.
pub fn filesystem(path: &Path) -> Option<String> {
    mount_of(path).map(|mount| format!("{} on {}", mount.kind, mount.device))
}

struct Mount {
    device: String,
    kind: String,
}

/// The innermost mount holding `path`.
fn mount_of(path: &Path) -> Option<Mount> {
    let path = path.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (device, mount_point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            let mount = Mount {
                device: device.to_string(),
                kind: kind.to_string(),
            };
            path.starts_with(mount_point)
                .then_some((mount_point.len(), mount))
        })
        .max_by_key(|(depth, _)| *depth)
        .map(|(_, mount)| mount)
}

/// Bytes written to the block device under a directory, from /proc/diskstats: what flushes
/// really cost the disk, write amplification included. Device-wide, so other processes'
/// writes count too.
pub struct DeviceWrites {
    /// The device's name in /proc/diskstats (`vda`, `nvme0n1p2`, `dm-0`).
    name: String,
}

impl DeviceWrites {
    /// `None` where the directory is not on a block device Linux reports (tmpfs, overlay).
    pub fn for_path(path: &Path) -> Option<DeviceWrites> {
        let device = Path::new(&mount_of(path)?.device).canonicalize().ok()?;
        let name = device.file_name()?.to_str()?.to_string();
        let writes = DeviceWrites { name };
        writes.bytes_written().map(|_| writes)
    }

    pub fn bytes_written(&self) -> Option<u64> {
        /// /proc/diskstats counts 512-byte sectors whatever the device's sector size.
        const SECTOR_BYTES: u64 = 512;
        let stats = std::fs::read_to_string("/proc/diskstats").ok()?;
        stats.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(2) != Some(&self.name.as_str()) {
                return None;
            }
            let sectors: u64 = fields.get(9)?.parse().ok()?;
            Some(sectors * SECTOR_BYTES)
        })
    }
}

/// How long a thread has run on a CPU, and how long it sat runnable waiting for one, in
/// seconds (/proc/.../schedstat: nanoseconds, exact).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SchedTimes {
    pub running: f64,
    pub runnable_waiting: f64,
}

impl SchedTimes {
    /// The times spent since `earlier`.
    pub fn since(self, earlier: SchedTimes) -> SchedTimes {
        SchedTimes {
            running: self.running - earlier.running,
            runnable_waiting: self.runnable_waiting - earlier.runnable_waiting,
        }
    }
}

/// The calling thread's times so far, where Linux provides them.
pub fn current_thread_sched() -> Option<SchedTimes> {
    schedstat(Path::new("/proc/thread-self/schedstat"))
}

/// The times of the first thread of this process named `name` (its `comm`, at most 15 bytes),
/// where Linux provides them; `None` if no such thread is alive.
pub fn thread_sched(name: &str) -> Option<SchedTimes> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    tasks.flatten().find_map(|task| {
        let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
        (comm.trim_end() == name)
            .then(|| schedstat(&task.path().join("schedstat")))
            .flatten()
    })
}

fn schedstat(path: &Path) -> Option<SchedTimes> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut fields = text.split_whitespace();
    let mut seconds = || -> Option<f64> { Some(fields.next()?.parse::<u64>().ok()? as f64 / 1e9) };
    Some(SchedTimes {
        running: seconds()?,
        runnable_waiting: seconds()?,
    })
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
    fn filesystem_of_the_current_directory_is_named_on_linux() {
        // The journal benchmark names the file system it flushed to; on Linux it must resolve.
        if cfg!(target_os = "linux") {
            let description = filesystem(Path::new(".")).expect("a mount holds the cwd");
            assert!(description.contains(" on "), "{description}");
        }
    }

    #[test]
    fn device_writes_grow_after_a_synced_write() {
        // The write-amplification report depends on /proc/diskstats; where the temp dir is on a
        // block device, a synced 64 KiB write must show up in its counter.
        let dir = tempfile::tempdir().expect("temp dir");
        let Some(writes) = DeviceWrites::for_path(dir.path()) else {
            return; // tmpfs, overlay or not Linux: the report says null.
        };
        let before = writes.bytes_written().expect("counter readable");
        let path = dir.path().join("probe");
        std::fs::write(&path, vec![1u8; 64 << 10]).expect("write");
        std::fs::File::open(&path)
            .and_then(|file| file.sync_all())
            .expect("sync");
        let after = writes.bytes_written().expect("counter readable");
        assert!(after >= before + (64 << 10), "{before} -> {after}");
    }

    #[test]
    fn thread_sched_times_are_readable_on_linux() {
        // The pipeline benchmark reports the engine thread's CPU time by thread name.
        if cfg!(target_os = "linux") {
            let spun = std::thread::Builder::new()
                .name("payu-cpu-probe".into())
                .spawn(|| {
                    let own = current_thread_sched().expect("own schedstat");
                    let named = thread_sched("payu-cpu-probe").expect("found by name");
                    assert!(own.running >= 0.0 && named.runnable_waiting >= 0.0);
                    assert!(named.since(own).running >= 0.0, "time went backwards");
                })
                .expect("spawn");
            spun.join().expect("the probe thread passed");
            assert!(thread_sched("no-such-thread").is_none());
        }
    }

    #[test]
    fn rss_is_readable_on_linux() {
        // The memory report depends on /proc/self/status; on Linux it must parse.
        if cfg!(target_os = "linux") {
            assert!(rss_bytes().is_some_and(|bytes| bytes > 0));
        }
    }
}
