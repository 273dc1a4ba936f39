//! Crash test with real processes (STYLE.md §15): a child appends and flushes to a real
//! journal directory and prints each durable seq; the test SIGKILLs it at a random moment,
//! reopens the journal and checks that everything printed survived, intact and chained, and
//! that nothing after it is garbage. The next child resumes the same journal. Half the children
//! run retention, so kills also land in segments that recycle retired files.
//!
//! The seed comes from `PAYU_CRASH_SEED` or the clock, and is printed (shown on failure).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use common::{Rng, hash_of};
use payu_journal::{
    FlushMode, Journal, JournalConfig, MmapStorage, Recovery, Storage, read_segment_header,
};

const ITERATIONS: usize = 30;
/// The most durable-seq lines read before the kill.
const LINES_MAX: u64 = 200;
/// As in the child.
const SEGMENT_BYTES: u64 = 64 << 10;

/// The child's payload for `seq` (src/bin/journal-crash-child.rs).
fn payload(seq: u64) -> Vec<u8> {
    seq.to_le_bytes().repeat((seq % 61 + 1) as usize)
}

fn seed() -> u64 {
    match std::env::var("PAYU_CRASH_SEED") {
        Ok(seed) => seed.parse().expect("PAYU_CRASH_SEED is a u64"),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64,
    }
}

/// Runs one child until it has printed `lines` durable seqs (or ended), then SIGKILLs it.
/// Returns the highest durable seq it printed.
fn run_child(dir: &std::path::Path, child_seed: u64, lines: u64) -> Option<u64> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_payu-journal-crash-child"))
        .arg(dir)
        .arg(child_seed.to_string())
        // Alternate the two ways appends reach the file.
        .arg(if child_seed % 2 == 0 { "map" } else { "pwrite" })
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the crash child");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut printed = None;
    // The read end stays open until the child is reaped: closed earlier, the child's next
    // print could fail with EPIPE and end it by itself (exit 1) before the SIGKILL lands.
    let mut output = BufReader::new(stdout).lines();
    for line in output.by_ref().take(lines as usize) {
        let durable: u64 = line.expect("child stdout").parse().expect("a durable seq");
        assert!(printed.is_none_or(|p| durable > p), "durable seqs increase");
        printed = Some(durable);
    }
    // SIGKILL on Unix; the child may have ended by itself already.
    let _ = child.kill();
    let status = child.wait().expect("reap the child");
    drop(output);
    assert!(
        status.success() || status.code().is_none(),
        "the child failed by itself: {status}"
    );
    printed
}

/// Reopens the journal and checks every record it holds (from seq 1 until retention ran).
/// Returns what recovery found and whether the last segment is recycled.
fn verify(dir: &std::path::Path, durable: u64, iteration: usize) -> (Recovery, bool) {
    let storage = MmapStorage::open(dir, FlushMode::Auto).expect("open dir");
    let config = JournalConfig {
        segment_bytes: SEGMENT_BYTES,
    };
    let (journal, recovery) =
        Journal::open(storage, config).unwrap_or_else(|e| panic!("iteration {iteration}: {e}"));
    assert!(
        recovery.last_seq >= durable,
        "iteration {iteration}: printed durable {durable}, recovered {recovery:?}"
    );
    let first = journal.first_seq();
    let mut reader = journal.reader(first).expect("reader");
    let (mut seq, mut prev_hash) = (first, (first == 1).then_some(0));
    while let Some(record) = reader.next().expect("read") {
        assert_eq!(record.header.seq, seq, "iteration {iteration}: gap-free");
        if let Some(prev_hash) = prev_hash {
            assert_eq!(
                record.header.prev_hash, prev_hash,
                "iteration {iteration}: chain at {seq}"
            );
        }
        assert_eq!(record.header.timestamp, seq);
        assert!(
            record.payload() == payload(seq),
            "iteration {iteration}: payload of {seq}"
        );
        prev_hash = Some(hash_of(record.bytes));
        seq += 1;
    }
    assert_eq!(
        seq - 1,
        recovery.last_seq,
        "iteration {iteration}: read to the end"
    );
    let storage = journal.storage();
    let last = *storage
        .segments()
        .expect("segments")
        .last()
        .expect("a segment");
    let recycled = read_segment_header(&storage.reader(), last)
        .expect("the last segment's header")
        .recycled;
    (recovery, recycled)
}

#[test]
fn sigkilled_writer_loses_nothing_it_reported_durable() {
    // Proves: across 30 SIGKILLs at random moments, every record a child reported durable survives intact and chained, and nothing after it is garbage.
    let seed = seed();
    eprintln!("crash test seed {seed} (rerun with PAYU_CRASH_SEED={seed})");
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut durable, mut last) = (0, 0);
    let (mut unflushed_survived, mut torn, mut recycled_tails) = (0, 0, 0);
    for iteration in 0..ITERATIONS {
        let lines = 1 + rng.below(LINES_MAX);
        if let Some(printed) = run_child(dir.path(), rng.next_u64(), lines) {
            assert!(printed >= last, "a child starts from the recovered journal");
            durable = printed;
        }
        let (recovery, recycled) = verify(dir.path(), durable, iteration);
        recycled_tails += usize::from(recycled);
        last = recovery.last_seq;
        unflushed_survived += usize::from(last > durable);
        torn += usize::from(recovery.truncated_bytes > 0 || !recovery.removed_segments.is_empty());
    }
    assert!(durable > 0, "children made progress");
    eprintln!(
        "crash test: {ITERATIONS} kills, {last} records, {durable} reported durable; \
         {unflushed_survived} kills left unflushed records, {torn} left a torn tail, \
         {recycled_tails} ended in a recycled segment"
    );
    assert!(recycled_tails > 0, "some kill landed in a recycled segment");
}
