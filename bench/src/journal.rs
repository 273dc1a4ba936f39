//! `payu-bench journal`: the journal alone, with real flushes, against a bare fdatasync of the
//! same bytes measured in the same run and directory (DESIGN.md §3, §8; STYLE.md §16).
//!
//! Before any timing, a real engine history is built and encoded (see `history`): a small
//! ledger is opened and funded, then each transfer is applied and journaled with its Posted
//! outcome. Every journal starts with the setup records (untimed) so that it replays from seq 1.
//! Scenarios, in order:
//! - `fdatasync_baseline`, per batch size: a preallocated, zero-filled plain file; each
//!   iteration pwrites the bytes one journal batch takes, then fdatasyncs. Runs before any
//!   journal exists, so no journal's background work disturbs it.
//! - `journal_append`, per batch size: a fresh journal on `MmapStorage`; append a batch, flush,
//!   repeat. Commit latency (append batch + flush) is compared with the baseline's fdatasync.
//! - `journal_read` and `journal_replay`: the largest batch size's journal is reopened
//!   (recovery timed as `open_seconds`), read and decoded from seq 1, then replayed into a fresh
//!   engine with `payu_journal::replay`, which checks every outcome against the journaled one.
//!
//! All reads hit the page cache (the journal was just written): they measure the reader and the
//! decode, not the disk. Dropping caches would need root and disturb other work on the machine.

use std::fs::{self, File, OpenOptions};
use std::hint::black_box;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use payu_engine::Engine;
use payu_journal::{
    FlushMode, Journal, JournalConfig, MmapStorage, SEGMENT_BYTES_MIN, SEGMENT_HEADER_LEN, Storage,
    WriteMode, decode_entry, record_len, replay,
};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::history::{self, History, HistoryOptions};
use crate::report::{self, DeviceWrites, Latency};

/// The most records one batch size appends; the whole history is kept in memory (about
/// 250 bytes per record), so this bounds it near 2.5 GB.
pub const RECORDS_MAX: u64 = 10_000_000;
/// The largest group-commit batch the benchmark tries.
pub const BATCH_RECORDS_MAX: u32 = 1 << 16;
/// The largest segment the benchmark asks for (each is zero-filled up front).
pub const SEGMENT_MIB_MAX: u64 = 4096;
/// The largest ledger the history is built on; the journal is the subject, not the ledger.
pub const ACCOUNTS_MAX: u32 = 1_000_000;
/// The batch size from which DESIGN.md §8's throughput target applies.
const TARGET_BATCH_MIN: u32 = 1024;
const TARGET_APPEND_RECORDS_PER_SEC: f64 = 1_000_000.0;
const TARGET_COMMIT_VS_FDATASYNC_MAX: f64 = 2.0;
const TARGET_REPLAY_RECORDS_PER_SEC: f64 = 2_000_000.0;
/// One in this many reads is timed alone: enough samples for a p999 over a million records,
/// few enough that the clock reads do not distort throughput.
const READ_SAMPLE_EVERY: u64 = 64;
/// Every record is written by the first primary.
const EPOCH: u64 = 1;
const RUN_DIR_PREFIX: &str = "payu-bench-journal-";
const BASELINE_FILE_NAME: &str = "fdatasync-baseline.bin";
/// The chunk the journal zero-fills segments with (journal/src/mmap.rs), so the baseline file
/// starts with the same page-cache layout (the folio size follows the write size).
const ZERO_CHUNK_BYTES: usize = 1 << 20;
/// What the baseline writes: not zeros, so no layer can skip the write as a no-op.
pub(crate) const BASELINE_FILL_BYTE: u8 = 0xa5;

#[derive(clap::Args, Clone, Debug)]
pub struct JournalArgs {
    /// Parent of the run's fresh directory [default: ./target if it exists, else the system
    /// temp dir]. Nothing already in it is touched.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the run's directory (journals and baseline file) instead of removing it at the end.
    #[arg(long)]
    pub keep: bool,
    /// Records appended per batch size (batch size 1 uses --records-unbatched).
    #[arg(long, default_value_t = 2_000_000, value_parser = clap::value_parser!(u64).range(1..=RECORDS_MAX))]
    pub records: u64,
    /// Records appended with batch size 1, where every record pays a whole fdatasync.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=RECORDS_MAX))]
    pub records_unbatched: u64,
    /// Records per flush (group commit), one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,64,1024,8192", value_parser = clap::value_parser!(u32).range(1..=i64::from(BATCH_RECORDS_MAX)))]
    pub batch_sizes: Vec<u32>,
    /// Flush backend: probe io_uring and fall back to the syscall, or force one.
    #[arg(long, value_enum, default_value = "auto")]
    pub flush_mode: FlushModeArg,
    /// How appends reach the segment file: one pwrite per group commit, or memcpy into a map.
    #[arg(long, value_enum, default_value = "pwrite")]
    pub write_mode: WriteModeArg,
    /// Keep one group commit in flight while the next batch is appended (flush_start /
    /// flush_wait), as the node's engine thread does.
    #[arg(long)]
    pub pipelined: bool,
    /// Journal segment size in MiB (each segment is preallocated and zero-filled).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=SEGMENT_MIB_MAX))]
    pub segment_mib: u64,
    /// Customer accounts in the ledger the journaled transfers come from.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(2..=i64::from(ACCOUNTS_MAX)))]
    pub accounts: u32,
    /// Seed of the transfer picks; the same seed journals the same entries.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushModeArg {
    Auto,
    IoUring,
    Syscall,
}

impl From<FlushModeArg> for FlushMode {
    fn from(mode: FlushModeArg) -> FlushMode {
        match mode {
            FlushModeArg::Auto => FlushMode::Auto,
            FlushModeArg::IoUring => FlushMode::IoUring,
            FlushModeArg::Syscall => FlushMode::Syscall,
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteModeArg {
    Pwrite,
    Map,
}

impl From<WriteModeArg> for WriteMode {
    fn from(mode: WriteModeArg) -> WriteMode {
        match mode {
            WriteModeArg::Pwrite => WriteMode::Pwrite,
            WriteModeArg::Map => WriteMode::Map,
        }
    }
}

fn write_mode_name(mode: WriteMode) -> &'static str {
    match mode {
        WriteMode::Pwrite => "pwrite",
        WriteMode::Map => "map",
    }
}

/// The mode as the command line spells it.
pub(crate) fn flush_mode_name(mode: FlushMode) -> &'static str {
    match mode {
        FlushMode::Auto => "auto",
        FlushMode::IoUring => "io-uring",
        FlushMode::Syscall => "syscall",
    }
}

/// A run's settings, resolved from the arguments (tests build them directly, with segments
/// smaller than a MiB so a tiny run still rolls segments).
#[derive(Clone, Debug)]
pub struct Settings {
    pub parent_dir: PathBuf,
    pub keep: bool,
    pub records: u64,
    pub records_unbatched: u64,
    /// Ascending and distinct: the last is the one replayed.
    pub batch_sizes: Vec<u32>,
    pub flush_mode: FlushMode,
    pub write_mode: WriteMode,
    pub pipelined: bool,
    pub segment_bytes: u64,
    pub accounts: u32,
    pub seed: u64,
}

impl Settings {
    pub fn from_args(args: &JournalArgs) -> Settings {
        let parent_dir = args.dir.clone().unwrap_or_else(|| {
            let target = PathBuf::from("target");
            match target.is_dir() {
                true => target,
                false => std::env::temp_dir(),
            }
        });
        let mut batch_sizes = args.batch_sizes.clone();
        batch_sizes.sort_unstable();
        batch_sizes.dedup();
        Settings {
            parent_dir,
            keep: args.keep,
            records: args.records,
            records_unbatched: args.records_unbatched,
            batch_sizes,
            flush_mode: args.flush_mode.into(),
            write_mode: args.write_mode.into(),
            pipelined: args.pipelined,
            segment_bytes: args.segment_mib << 20,
            accounts: args.accounts,
            seed: args.seed,
        }
    }

    /// How many records the run with `batch` appends.
    fn records_for(&self, batch: u32) -> u64 {
        match batch {
            1 => self.records_unbatched,
            _ => self.records,
        }
    }

    fn history_options(&self) -> HistoryOptions {
        let transfers = self
            .batch_sizes
            .iter()
            .map(|&batch| self.records_for(batch))
            .max()
            .unwrap_or(0);
        HistoryOptions {
            accounts: self.accounts,
            transfers,
            seed: self.seed,
        }
    }

    fn journal_config(&self) -> JournalConfig {
        JournalConfig {
            segment_bytes: self.segment_bytes,
        }
    }
}

pub fn run(args: &JournalArgs, out: &mut impl Write) -> anyhow::Result<()> {
    run_with(&Settings::from_args(args), out)
}

/// Runs every scenario and writes one JSON line per scenario (and batch size) to `out`.
pub fn run_with(settings: &Settings, out: &mut impl Write) -> anyhow::Result<()> {
    ensure!(!settings.batch_sizes.is_empty(), "no batch sizes to run");
    ensure!(
        settings.segment_bytes >= SEGMENT_BYTES_MIN,
        "segments must be at least {SEGMENT_BYTES_MIN} bytes"
    );
    let run_dir = RunDir::create(&settings.parent_dir, settings.keep)?;
    let history = build_history(settings)?;
    let record_bytes = record_len(history.transfer_payload_bytes()) as u64;
    let context = context_fields(settings, &history, run_dir.path());
    let plans: Vec<Plan> = settings
        .batch_sizes
        .iter()
        .map(|&batch| Plan {
            batch,
            records: settings.records_for(batch),
            record_bytes,
        })
        .collect();

    let device = DeviceWrites::for_path(run_dir.path());
    let baseline_p99_us = run_baselines(
        settings,
        &plans,
        run_dir.path(),
        device.as_ref(),
        &context,
        out,
    )?;
    let mut replayed_dir = None;
    for (plan, &baseline_p99_us) in plans.iter().zip(&baseline_p99_us) {
        let dir = run_dir.path().join(format!("journal-batch-{}", plan.batch));
        let measured = run_append(
            settings,
            &history,
            plan,
            &dir,
            device.as_ref(),
            baseline_p99_us,
        )?;
        report::emit(out, &report::merge(context.clone(), measured))?;
        replayed_dir = Some((dir, plan.records));
    }
    let (dir, transfers) = replayed_dir.context("at least one batch size ran")?;
    let (read, replayed) = run_recovery(settings, &history, &dir, transfers)?;
    report::emit(out, &report::merge(context.clone(), read))?;
    report::emit(out, &report::merge(context, replayed))?;
    run_dir.finish()
}

fn build_history(settings: &Settings) -> anyhow::Result<History> {
    let options = settings.history_options();
    eprintln!(
        "payu-bench journal: applying and encoding {} transfers over {} accounts (seed {})",
        options.transfers, options.accounts, options.seed
    );
    let started = Instant::now();
    let history = History::build(options)?;
    eprintln!(
        "payu-bench journal: {} entries ready in {:.2} s ({} bytes per transfer entry)",
        history.len(),
        started.elapsed().as_secs_f64(),
        history.transfer_payload_bytes()
    );
    Ok(history)
}

/// Fields every line carries: the settings, the storage and the machine.
fn context_fields(settings: &Settings, history: &History, dir: &Path) -> Value {
    json!({
        "accounts": settings.accounts,
        "seed": settings.seed,
        "segment_bytes": settings.segment_bytes,
        "flush_mode": flush_mode_name(settings.flush_mode),
        "write_mode": write_mode_name(settings.write_mode),
        "payload_bytes": history.transfer_payload_bytes(),
        "record_bytes": record_len(history.transfer_payload_bytes()),
        "payload": "rkyv Entry { command: Transfer with a unique idempotency key, outcome: Posted }, \
            from a real engine history (setup records journaled first, untimed)",
        "setup_records": history.setup_records(),
        "dir": dir.display().to_string(),
        "filesystem": report::filesystem(dir),
        "machine": report::machine(),
        "build": report::build(),
    })
}

/// One batch size's run: `records` records in flushes of `batch`.
#[derive(Clone, Copy, Debug)]
struct Plan {
    batch: u32,
    records: u64,
    record_bytes: u64,
}

impl Plan {
    /// The records in each flush, in order: full batches, then what is left.
    fn batch_lens(&self) -> impl Iterator<Item = u64> + use<> {
        let (records, batch) = (self.records, u64::from(self.batch));
        (0..records.div_ceil(batch)).map(move |index| batch.min(records - index * batch))
    }

    fn flushes(&self) -> u64 {
        self.records.div_ceil(u64::from(self.batch))
    }

    fn bytes_per_flush(&self) -> u64 {
        u64::from(self.batch) * self.record_bytes
    }
}

// ---- the run directory ----

/// A fresh directory for the run, removed at the end (or on an error) unless it is kept.
pub(crate) enum RunDir {
    Removed(TempDir),
    Kept(PathBuf),
}

impl RunDir {
    pub(crate) fn create(parent: &Path, keep: bool) -> anyhow::Result<RunDir> {
        RunDir::create_with_prefix(parent, RUN_DIR_PREFIX, keep)
    }

    pub(crate) fn create_with_prefix(
        parent: &Path,
        prefix: &str,
        keep: bool,
    ) -> anyhow::Result<RunDir> {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(parent)
            .with_context(|| format!("creating a run directory in {}", parent.display()))?;
        Ok(match keep {
            true => RunDir::Kept(dir.keep()),
            false => RunDir::Removed(dir),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        match self {
            RunDir::Removed(dir) => dir.path(),
            RunDir::Kept(path) => path,
        }
    }

    pub(crate) fn finish(self) -> anyhow::Result<()> {
        match self {
            RunDir::Removed(dir) => {
                let path = dir.path().display().to_string();
                dir.close().with_context(|| format!("removing {path}"))
            }
            RunDir::Kept(path) => {
                eprintln!("payu-bench: kept {}", path.display());
                Ok(())
            }
        }
    }
}

// ---- scenario 1: bare fdatasync ----

/// Runs the baseline for every plan on one preallocated file; returns each plan's fdatasync p99.
fn run_baselines(
    settings: &Settings,
    plans: &[Plan],
    dir: &Path,
    device: Option<&DeviceWrites>,
    context: &Value,
    out: &mut impl Write,
) -> anyhow::Result<Vec<f64>> {
    let largest_flush = plans.iter().map(Plan::bytes_per_flush).max().unwrap_or(0);
    let len = settings
        .segment_bytes
        .max(SEGMENT_HEADER_LEN + largest_flush);
    let mut file = BaselineFile::create(&dir.join(BASELINE_FILE_NAME), len)?;
    let mut p99s = Vec::with_capacity(plans.len());
    for plan in plans {
        let (measured, p99_us) = file.run(plan, device)?;
        report::emit(out, &report::merge(context.clone(), measured))?;
        p99s.push(p99_us);
    }
    Ok(p99s)
}

/// A plain file preallocated like a journal segment (zeros really written and synced, so no
/// flush pays for block allocation), appended to in place and wrapping at its end.
pub(crate) struct BaselineFile {
    file: File,
    len: u64,
    offset: u64,
}

impl BaselineFile {
    pub(crate) fn create(path: &Path, len: u64) -> anyhow::Result<BaselineFile> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        let zeros = vec![0u8; ZERO_CHUNK_BYTES];
        let mut left = len;
        while left > 0 {
            let chunk = left.min(ZERO_CHUNK_BYTES as u64) as usize;
            file.write_all(&zeros[..chunk])
                .context("zero-filling the baseline file")?;
            left -= chunk as u64;
        }
        file.sync_all().context("syncing the baseline file")?;
        Ok(BaselineFile {
            file,
            len,
            // Where a segment's first record goes.
            offset: SEGMENT_HEADER_LEN,
        })
    }

    /// Writes and fdatasyncs what each of the plan's flushes would; returns the report and
    /// the fdatasync p99 in microseconds.
    fn run(&mut self, plan: &Plan, device: Option<&DeviceWrites>) -> anyhow::Result<(Value, f64)> {
        eprintln!(
            "payu-bench journal: fdatasync baseline, {} flushes of {} bytes",
            plan.flushes(),
            plan.bytes_per_flush()
        );
        let buffer = vec![BASELINE_FILL_BYTE; plan.bytes_per_flush() as usize];
        let mut sync_latency = Latency::new()?;
        let mut write_and_sync_latency = Latency::new()?;
        let device_before = device.and_then(DeviceWrites::bytes_written);
        let started = Instant::now();
        for records in plan.batch_lens() {
            let bytes = &buffer[..(records * plan.record_bytes) as usize];
            let timed = self.write_and_sync(bytes)?;
            sync_latency.record(timed.sync);
            write_and_sync_latency.record(timed.write_and_sync);
        }
        let seconds = started.elapsed().as_secs_f64();
        let written = device_written(device, device_before, plan);
        let p99_us = sync_latency.quantile_us(0.99);
        let fields = json!({
            "scenario": "fdatasync_baseline",
            "batch_size": plan.batch,
            "bytes_per_flush": plan.bytes_per_flush(),
            "flushes": plan.flushes(),
            "transfers": plan.records,
            "seconds": seconds,
            "transfers_per_sec": plan.records as f64 / seconds,
            "write_and_fdatasync_p99_us": write_and_sync_latency.quantile_us(0.99),
            "latency_sampling": "every fdatasync timed alone with Instant (ns histogram); p*_us are \
                fdatasync only, write_and_fdatasync_* adds the pwrite before it",
            "throughput_basis": "wall time of the loop: pwrite of batch_size records' bytes at the \
                next offset of a preallocated file, then fdatasync; transfers = records-equivalent",
        });
        let report = report::merge(fields, sync_latency.summary());
        Ok((report::merge(report, written), p99_us))
    }
}

/// The time one baseline flush took.
pub(crate) struct BaselineTimes {
    /// The fdatasync alone.
    pub sync: Duration,
    /// The pwrite before it, and the fdatasync.
    pub write_and_sync: Duration,
}

impl BaselineFile {
    /// Writes `bytes` at the next offset (wrapping to the start at the end of the file), then
    /// fdatasyncs: what one group commit of those bytes must do.
    pub(crate) fn write_and_sync(&mut self, bytes: &[u8]) -> anyhow::Result<BaselineTimes> {
        ensure!(
            SEGMENT_HEADER_LEN + bytes.len() as u64 <= self.len,
            "{} bytes do not fit the {}-byte baseline file",
            bytes.len(),
            self.len
        );
        if self.offset + bytes.len() as u64 > self.len {
            self.offset = SEGMENT_HEADER_LEN;
        }
        let write_started = Instant::now();
        self.file
            .write_all_at(bytes, self.offset)
            .context("writing the baseline file")?;
        let sync_started = Instant::now();
        self.file
            .sync_data()
            .context("fdatasync of the baseline file")?;
        let done = Instant::now();
        self.offset += bytes.len() as u64;
        Ok(BaselineTimes {
            sync: done - sync_started,
            write_and_sync: done - write_started,
        })
    }
}

/// What the device wrote over a timed loop, per flush and per byte of records: write
/// amplification shows here, not in latencies. Null where the device is unknown.
fn device_written(device: Option<&DeviceWrites>, before: Option<u64>, plan: &Plan) -> Value {
    let after = device.and_then(DeviceWrites::bytes_written);
    let written = before
        .zip(after)
        .map(|(before, after)| after.saturating_sub(before));
    let records_bytes = (plan.records * plan.record_bytes) as f64;
    json!({
        "device_write_bytes": written,
        "device_write_bytes_per_flush": written.map(|bytes| bytes / plan.flushes()),
        "device_write_amplification": written.map(|bytes| bytes as f64 / records_bytes),
        "device_write_basis": "sectors written to the directory's block device (/proc/diskstats) \
            over the timed loop, divided by flushes and by the records' bytes; device-wide (other \
            processes count too) and, for the journal, including segment preallocation",
    })
}

// ---- scenario 2: journal append ----

fn run_append(
    settings: &Settings,
    history: &History,
    plan: &Plan,
    dir: &Path,
    device: Option<&DeviceWrites>,
    baseline_p99_us: f64,
) -> anyhow::Result<Value> {
    eprintln!(
        "payu-bench journal: journal append, {} records in batches of {}",
        plan.records, plan.batch
    );
    let storage = MmapStorage::open(dir, settings.flush_mode)
        .with_context(|| format!("opening journal storage in {}", dir.display()))?
        .with_write_mode(settings.write_mode);
    let flush_backend = storage.flush_backend();
    let (mut journal, recovery) = Journal::open(storage, settings.journal_config())?;
    ensure!(
        recovery.last_seq == 0,
        "a fresh journal holds {}",
        recovery.last_seq
    );
    // The setup records go first, untimed, so the journal replays from seq 1.
    let setup = history.setup_records();
    append_range(&mut journal, history, 1, setup)?;
    journal.flush()?;

    let mut flush_latency = Latency::new()?;
    let mut commit_latency = Latency::new()?;
    let mut next = setup + 1;
    let device_before = device.and_then(DeviceWrites::bytes_written);
    let started = Instant::now();
    // A started group commit: when its batch began, when its flush began, its last seq.
    let mut in_flight: Option<(Instant, Instant, u64)> = None;
    let mut finish = |journal: &mut Journal<MmapStorage>, started: (Instant, Instant, u64)| {
        let (commit_started, flush_started, target) = started;
        let durable = journal.flush_wait()?;
        let done = Instant::now();
        flush_latency.record(done - flush_started);
        commit_latency.record(done - commit_started);
        ensure!(
            durable == target,
            "flush made {durable} durable, expected {target}"
        );
        anyhow::Ok(())
    };
    for records in plan.batch_lens() {
        let commit_started = Instant::now();
        append_range(&mut journal, history, next, records)?;
        next += records;
        // Pipelined, the previous group commit ran while this batch was appended.
        if let Some(previous) = in_flight.take() {
            finish(&mut journal, previous)?;
        }
        let flush_started = Instant::now();
        let target = journal.flush_start()?;
        in_flight = Some((commit_started, flush_started, target));
        if !settings.pipelined {
            finish(&mut journal, in_flight.take().expect("just started"))?;
        }
    }
    if let Some(last) = in_flight.take() {
        finish(&mut journal, last)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let written = device_written(device, device_before, plan);
    let segments = journal
        .storage()
        .segments()
        .context("listing segments")?
        .len();
    let report = append_report(AppendMeasured {
        plan,
        seconds,
        flush_backend,
        segments,
        flush_latency: &flush_latency,
        commit_latency: &commit_latency,
        baseline_p99_us,
        pipelined: settings.pipelined,
    });
    Ok(report::merge(report, written))
}

/// Appends the history's records `first..first + count` at their own seqs.
fn append_range(
    journal: &mut Journal<MmapStorage>,
    history: &History,
    first: u64,
    count: u64,
) -> anyhow::Result<()> {
    for seq in first..first + count {
        let appended = journal.append(EPOCH, history::timestamp_ns(seq), history.payload(seq))?;
        ensure!(appended == seq, "record {seq} was appended at {appended}");
    }
    Ok(())
}

struct AppendMeasured<'a> {
    plan: &'a Plan,
    seconds: f64,
    flush_backend: &'static str,
    segments: usize,
    flush_latency: &'a Latency,
    commit_latency: &'a Latency,
    baseline_p99_us: f64,
    pipelined: bool,
}

fn append_report(measured: AppendMeasured<'_>) -> Value {
    let plan = measured.plan;
    let records_per_sec = plan.records as f64 / measured.seconds;
    let commit_p99_us = measured.commit_latency.quantile_us(0.99);
    let commit_vs_fdatasync = commit_p99_us / measured.baseline_p99_us;
    let throughput_applies = plan.batch >= TARGET_BATCH_MIN;
    let meets_target = commit_vs_fdatasync <= TARGET_COMMIT_VS_FDATASYNC_MAX
        && (!throughput_applies || records_per_sec >= TARGET_APPEND_RECORDS_PER_SEC);
    let fields = json!({
        "scenario": "journal_append",
        "pipelined": measured.pipelined,
        "batch_size": plan.batch,
        "bytes_per_flush": plan.bytes_per_flush(),
        "flushes": plan.flushes(),
        "flush_backend": measured.flush_backend,
        "segments": measured.segments,
        "records": plan.records,
        "transfers": plan.records,
        "seconds": measured.seconds,
        "records_per_sec": records_per_sec,
        "transfers_per_sec": records_per_sec,
        "mib_per_sec": (plan.records * plan.record_bytes) as f64 / measured.seconds / f64::from(1u32 << 20),
        "commit_p99_us": commit_p99_us,
        "baseline_fdatasync_p99_us": measured.baseline_p99_us,
        "commit_p99_vs_fdatasync": commit_vs_fdatasync,
        "target": format!(
            "DESIGN.md §8: commit p99 <= {TARGET_COMMIT_VS_FDATASYNC_MAX}x the bare fdatasync p99 of \
            the same bytes; at batch >= {TARGET_BATCH_MIN} also >= 1 M records/s"
        ),
        "meets_target": meets_target,
        "latency_sampling": "every batch timed with Instant (ns histogram); p*_us are commit \
            latency (from the batch's first append until it is durable), flush_* from flush_start \
            to the end of flush_wait (pipelined, that spans the next batch's appends)",
        "throughput_basis": "wall time of the loop over batches: append each record of the batch \
            (CRC32C, xxh3 chain hash, copy), then one group commit (pipelined: started, and \
            finished after the next batch is appended)",
    });
    let fields = report::merge(fields, measured.flush_latency.prefixed_summary("flush"));
    report::merge(fields, measured.commit_latency.summary())
}

// ---- scenario 3: reopen, read and replay ----

/// Reopens the journal in `dir`, reads and decodes every record, then replays every record into
/// a fresh engine. Returns the `journal_read` and `journal_replay` reports.
fn run_recovery(
    settings: &Settings,
    history: &History,
    dir: &Path,
    transfers: u64,
) -> anyhow::Result<(Value, Value)> {
    let expected = history.setup_records() + transfers;
    eprintln!("payu-bench journal: reopening and reading {expected} records");
    let started = Instant::now();
    let storage = MmapStorage::open(dir, settings.flush_mode)
        .with_context(|| format!("reopening journal storage in {}", dir.display()))?
        .with_write_mode(settings.write_mode);
    let (journal, recovery) = Journal::open(storage, settings.journal_config())?;
    let open_seconds = started.elapsed().as_secs_f64();
    ensure!(
        recovery.last_seq == expected && recovery.truncated_bytes == 0,
        "recovery found {recovery:?}, expected {expected} records and no torn tail"
    );
    let reopened = json!({
        "open_seconds": open_seconds,
        "open_records_per_sec": expected as f64 / open_seconds,
        "records": expected,
        "transfers": expected,
        "replayed_batch_size": settings.batch_sizes.last(),
    });
    let read = report::merge(read_all(&journal, expected)?, reopened.clone());
    eprintln!("payu-bench journal: replaying {expected} records into a fresh engine");
    let replayed = report::merge(replay_all(&journal, settings, expected)?, reopened);
    Ok((read, replayed))
}

fn read_all(journal: &Journal<MmapStorage>, expected: u64) -> anyhow::Result<Value> {
    let mut reader = journal.reader(1)?;
    let mut latency = Latency::new()?;
    let mut read = 0u64;
    let started = Instant::now();
    loop {
        let sample_started = (read % READ_SAMPLE_EVERY == 0).then(Instant::now);
        let Some(record) = reader.next()? else {
            break;
        };
        let seq = record.header.seq;
        let entry = decode_entry(record.payload())
            .map_err(|reason| anyhow::anyhow!("record {seq} does not decode: {reason}"))?;
        black_box(&entry);
        if let Some(sample_started) = sample_started {
            latency.record(sample_started.elapsed());
        }
        read += 1;
        ensure!(seq == read, "read seq {seq} as record {read}");
    }
    let seconds = started.elapsed().as_secs_f64();
    ensure!(read == expected, "read {read} records, expected {expected}");
    let fields = json!({
        "scenario": "journal_read",
        "seconds": seconds,
        "records_per_sec": read as f64 / seconds,
        "transfers_per_sec": read as f64 / seconds,
        "latency_sampling": "every 64th record timed alone with Instant (ns histogram): \
            Reader::next (CRC32C check, 1 MiB pread refills) + decode_entry (rkyv check and \
            deserialise)",
        "throughput_basis": "wall time of reading every record from seq 1 (setup included) from \
            the page cache with a Reader and decoding each with decode_entry",
    });
    Ok(report::merge(fields, latency.summary()))
}

fn replay_all(
    journal: &Journal<MmapStorage>,
    settings: &Settings,
    expected: u64,
) -> anyhow::Result<Value> {
    let mut engine = Engine::new(history::engine_config(settings.history_options()));
    let mut reader = journal.reader(1)?;
    let mut latency = Latency::new()?;
    let started = Instant::now();
    let applied = replay(&mut engine, &mut reader)?;
    let elapsed = started.elapsed();
    latency.record(elapsed);
    let seconds = elapsed.as_secs_f64();
    ensure!(
        applied == expected,
        "replayed {applied} records, expected {expected}"
    );
    engine
        .verify()
        .map_err(|reason| anyhow::anyhow!("replayed ledger invariant broken: {reason}"))?;
    let records_per_sec = applied as f64 / seconds;
    let fields = json!({
        "scenario": "journal_replay",
        "seconds": seconds,
        "records_per_sec": records_per_sec,
        "transfers_per_sec": records_per_sec,
        "ledger_verified": true,
        "target": "DESIGN.md §8: restart replay >= 2 M records/s",
        "meets_target": records_per_sec >= TARGET_REPLAY_RECORDS_PER_SEC,
        "latency_sampling": "one sample: the whole replay() call, which is what a restart waits \
            for (replay runs as one call, so single records cannot be timed from outside)",
        "throughput_basis": "wall time of payu_journal::replay from seq 1 into a fresh engine: \
            read, CRC check, decode, Engine::apply, and comparing each outcome with the journaled one",
    });
    Ok(report::merge(fields, latency.summary()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_settings(parent: &Path) -> Settings {
        Settings {
            parent_dir: parent.to_path_buf(),
            keep: false,
            records: 3000,
            records_unbatched: 40,
            batch_sizes: vec![1, 64, 512],
            flush_mode: FlushMode::Auto,
            write_mode: WriteMode::Pwrite,
            pipelined: false,
            // Small segments, so the runs roll segments and replay crosses them.
            segment_bytes: 64 << 10,
            accounts: 32,
            seed: 7,
        }
    }

    #[test]
    fn tiny_run_reports_every_scenario_with_the_contract_fields() {
        // DESIGN.md §7: every line has the contract fields; each journal holds exactly what was
        // appended, replays completely, and the run directory is removed at the end.
        let parent = tempfile::tempdir().expect("temp dir");
        let mut out = Vec::new();
        run_with(&tiny_settings(parent.path()), &mut out).expect("the tiny run succeeds");
        let text = String::from_utf8(out).expect("UTF-8");
        let lines: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("each line is JSON"))
            .collect();
        let names: Vec<&str> = lines
            .iter()
            .map(|l| l["scenario"].as_str().expect("scenario"))
            .collect();
        assert_eq!(
            names,
            [
                "fdatasync_baseline",
                "fdatasync_baseline",
                "fdatasync_baseline",
                "journal_append",
                "journal_append",
                "journal_append",
                "journal_read",
                "journal_replay",
            ]
        );
        for line in &lines {
            for field in [
                "transfers",
                "seconds",
                "transfers_per_sec",
                "p50_us",
                "p99_us",
                "p999_us",
            ] {
                assert!(line[field].is_number(), "{field} missing in {line}");
            }
            assert!(line["machine"]["cpus"].is_number() && line["build"].is_string());
            assert!(
                line["payload_bytes"].as_u64().is_some_and(|b| b > 100),
                "{line}"
            );
        }
        for line in &lines[..6] {
            // Null only where the directory is not on a block device.
            let written = &line["device_write_bytes"];
            assert!(written.is_u64() || written.is_null(), "{line}");
        }
        let record_bytes = lines[0]["record_bytes"].as_u64().expect("record_bytes");
        for (line, (batch, records)) in
            lines[3..6]
                .iter()
                .zip([(1u64, 40u64), (64, 3000), (512, 3000)])
        {
            assert_eq!(line["batch_size"], batch);
            assert_eq!(line["records"], records);
            assert_eq!(line["flushes"], u64::div_ceil(records, batch));
            assert_eq!(line["bytes_per_flush"], batch * record_bytes);
            assert_eq!(line["latency_samples"], u64::div_ceil(records, batch));
            assert!(
                line["flush_backend"].is_string() && line["commit_p99_vs_fdatasync"].is_number()
            );
            assert!(
                line["flush_p99_us"].as_f64() <= line["p99_us"].as_f64(),
                "{line}"
            );
        }
        // 3000 records of about 300 bytes do not fit one 64 KiB segment.
        assert!(lines[5]["segments"].as_u64().is_some_and(|n| n > 1));
        let setup = 1 + 2 * 32;
        for line in &lines[6..] {
            assert_eq!(line["records"], setup + 3000);
            assert_eq!(line["replayed_batch_size"], 512);
            assert!(line["open_seconds"].is_number());
        }
        assert_eq!(lines[7]["ledger_verified"], true);
        let left = fs::read_dir(parent.path()).expect("listing").count();
        assert_eq!(left, 0, "the run directory was not removed");
    }

    #[test]
    fn plans_split_records_into_full_batches_and_a_rest() {
        // The baseline and the journal flush after the same record counts.
        let plan = Plan {
            batch: 64,
            records: 200,
            record_bytes: 256,
        };
        assert_eq!(plan.batch_lens().collect::<Vec<_>>(), [64, 64, 64, 8]);
        assert_eq!(plan.flushes(), 4);
        assert_eq!(plan.bytes_per_flush(), 64 * 256);
    }
}
