//! `payu-bench fdatasync`: the bare baseline alone: pwrite N bytes at the next offset of a
//! preallocated, zero-filled file, then fdatasync, in a loop. This is what one group commit of
//! N bytes must cost at least, measured beside a run the benchmark cannot host itself (the
//! HTTP load in bench/http/, where the node runs in its own process).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use payu_journal::SEGMENT_HEADER_LEN;
use serde_json::json;

use crate::journal::{BASELINE_FILL_BYTE, BaselineFile, RunDir};
use crate::report::{self, Latency};

/// The largest write one flush makes (a full 8 MiB pending buffer of the journal is the most
/// one group commit writes).
pub const BYTES_MAX: u64 = 64 << 20;
pub const FLUSHES_MAX: u64 = 1_000_000;
const RUN_DIR_PREFIX: &str = "payu-bench-fdatasync-";
const FILE_NAME: &str = "fdatasync-baseline.bin";
/// The file is preallocated like a journal segment (the node's default size).
const FILE_BYTES: u64 = 128 << 20;

#[derive(clap::Args, Clone, Debug)]
pub struct FdatasyncArgs {
    /// Bytes written before each fdatasync; one scenario per size.
    #[arg(long, value_delimiter = ',', default_value = "304,19456", value_parser = clap::value_parser!(u64).range(1..=BYTES_MAX))]
    pub bytes: Vec<u64>,
    /// Flushes per size.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=FLUSHES_MAX))]
    pub flushes: u64,
    /// Parent of the run's fresh directory, on the file system under test [default: ./target
    /// if it exists, else the system temp dir]; removed at the end.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

pub fn run(args: &FdatasyncArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let parent = args.dir.clone().unwrap_or_else(|| {
        let target = PathBuf::from("target");
        match target.is_dir() {
            true => target,
            false => std::env::temp_dir(),
        }
    });
    let run_dir = RunDir::create_with_prefix(&parent, RUN_DIR_PREFIX, false)?;
    let largest = args.bytes.iter().copied().max().context("no sizes")?;
    let len = FILE_BYTES.max(SEGMENT_HEADER_LEN + largest);
    let mut file = BaselineFile::create(&run_dir.path().join(FILE_NAME), len)?;
    for &bytes in &args.bytes {
        eprintln!(
            "payu-bench fdatasync: {} flushes of {bytes} bytes",
            args.flushes
        );
        let buffer = vec![BASELINE_FILL_BYTE; bytes as usize];
        let mut sync_latency = Latency::new()?;
        let mut write_and_sync_latency = Latency::new()?;
        let started = Instant::now();
        for _ in 0..args.flushes {
            let timed = file.write_and_sync(&buffer)?;
            sync_latency.record(timed.sync);
            write_and_sync_latency.record(timed.write_and_sync);
        }
        let seconds = started.elapsed().as_secs_f64();
        let line = json!({
            "scenario": "fdatasync_baseline",
            "bytes_per_flush": bytes,
            "flushes": args.flushes,
            "transfers": 0,
            "seconds": seconds,
            "transfers_per_sec": 0.0,
            "flushes_per_sec": args.flushes as f64 / seconds,
            "write_and_fdatasync_p99_us": write_and_sync_latency.quantile_us(0.99),
            "latency_sampling": "every fdatasync timed alone with Instant (ns histogram); p*_us \
                are fdatasync only, write_and_fdatasync_* adds the pwrite before it",
            "filesystem": report::filesystem(run_dir.path()),
            "machine": report::machine(),
            "build": report::build(),
        });
        report::emit(out, &report::merge(line, sync_latency.summary()))?;
    }
    drop(file);
    run_dir.finish()
}
