//! The journal's contract, proved once for every storage (STYLE.md §3). Each generic test below
//! runs against `MmapStorage` (real files; a crash is the process dropping the journal without
//! flushing, so unflushed data may survive in the page cache, which the contract allows) and
//! `SimStorage` (a crash keeps, loses or tears each unflushed sector). The sim-only tests at
//! the end inject what real files cannot: failed flushes, bit flips and torn tails.

mod common;

use std::collections::BTreeSet;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::{Model, Rng, SEGMENT_BYTES, check_journal, config, hash_of, image, layout_of};
use payu_journal::{
    END_MARKER_ALIGN, FlushMode, HEADER_LEN, Journal, JournalConfig, JournalError, MmapStorage,
    READERS_MAX, RecordHeader, Recovery, SEGMENT_BYTES_MIN, SegmentRead, SimStorage, Storage,
    StorageReader, WriteMode, end_marker_len, read_segment_header, record_len,
};

/// A storage under test and what a crash does to it.
trait Harness {
    type S: Storage;

    /// Whether the storage recycles retired segments (files in map mode do not).
    const RECYCLES: bool;

    fn fresh(seed: u64) -> Self;

    /// A handle to open a journal on (the same files or simulated disk every time).
    fn storage(&self) -> Self::S;

    /// A crash, after the test dropped its journal without flushing.
    fn crash(&mut self);
}

/// Real files; `MAPPED` picks `WriteMode::Map` (memcpy into the map) over `WriteMode::Pwrite`.
struct MmapHarness<const MAPPED: bool> {
    dir: tempfile::TempDir,
}

impl<const MAPPED: bool> Harness for MmapHarness<MAPPED> {
    type S = MmapStorage;

    const RECYCLES: bool = !MAPPED;

    fn fresh(_seed: u64) -> MmapHarness<MAPPED> {
        MmapHarness {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn storage(&self) -> MmapStorage {
        let mode = if MAPPED {
            WriteMode::Map
        } else {
            WriteMode::Pwrite
        };
        MmapStorage::open(self.dir.path(), FlushMode::Auto)
            .expect("open journal dir")
            .with_write_mode(mode)
    }

    fn crash(&mut self) {
        // The process "died" when the journal was dropped; the page cache keeps what it kept.
    }
}

/// Retired segments the simulated disk keeps for reuse.
const SIM_RECYCLED_MAX: usize = 4;

struct SimHarness {
    sim: SimStorage,
}

impl Harness for SimHarness {
    type S = SimStorage;

    const RECYCLES: bool = true;

    fn fresh(seed: u64) -> SimHarness {
        SimHarness {
            sim: SimStorage::new(seed).recycling(SIM_RECYCLED_MAX),
        }
    }

    fn storage(&self) -> SimStorage {
        self.sim.clone()
    }

    fn crash(&mut self) {
        self.sim.crash();
    }
}

fn open<H: Harness>(harness: &H) -> (Journal<H::S>, Recovery) {
    open_with(harness, config())
}

fn open_with<H: Harness>(harness: &H, config: JournalConfig) -> (Journal<H::S>, Recovery) {
    Journal::open(harness.storage(), config).unwrap_or_else(|e| panic!("open: {e}"))
}

fn segments<S: Storage>(journal: &Journal<S>) -> Vec<u64> {
    journal.storage().segments().expect("list segments")
}

/// A payload length that makes records of many sizes (0 to ~1 KiB, with padding variety).
fn varied_len(rng: &mut Rng) -> usize {
    match rng.below(4) {
        0 => rng.below(17) as usize,
        1 => 16 * rng.below(8) as usize,
        _ => rng.below(1100) as usize,
    }
}

/// Appends `count` records of varied sizes and flushes once at the end.
fn fill<S: Storage>(journal: &mut Journal<S>, model: &mut Model, rng: &mut Rng, count: usize) {
    for _ in 0..count {
        model.append(journal, varied_len(rng));
    }
    let durable = journal.flush().expect("flush");
    assert_eq!(durable, model.next_seq() - 1);
}

macro_rules! contract_tests {
    ($($test:ident),* $(,)?) => {
        mod files_pwrite {
            $(
                #[test]
                fn $test() {
                    // Proves the generic test of the same name against real files (pwrite).
                    super::$test::<super::MmapHarness<false>>();
                }
            )*
        }
        mod files_mapped {
            $(
                #[test]
                fn $test() {
                    // Proves the generic test of the same name against real files (mmap).
                    super::$test::<super::MmapHarness<true>>();
                }
            )*
        }
        mod sim {
            $(
                #[test]
                fn $test() {
                    // Proves the generic test of the same name against the simulated disk.
                    super::$test::<super::SimHarness>();
                }
            )*
        }
    };
}

contract_tests!(
    pipelined_flush_covers_exactly_what_was_appended_before_it_started,
    records_survive_reopen_in_order_across_segment_rolls,
    flush_reports_the_highest_durable_seq,
    crash_keeps_every_flushed_record_and_nothing_garbage,
    reader_sees_only_durable_records_and_tails_new_ones,
    reader_wait_wakes_on_a_flush_from_another_thread,
    reader_starts_at_any_seq_in_a_middle_segment,
    reader_outside_the_journal_is_unavailable,
    readers_are_bounded_by_readers_max,
    readers_read_any_durable_record_back_from_another_thread,
    retention_removes_only_whole_covered_segments,
    retention_keeps_what_a_live_reader_needs,
    reopen_after_retention_starts_at_the_first_kept_segment,
    replicated_records_rebuild_an_identical_chain,
    replication_rejects_gaps_broken_chains_and_flipped_bits,
    payload_too_large_is_refused_and_the_largest_fits,
    recycled_segments_keep_every_flushed_record_across_crashes,
    a_tailing_reader_never_takes_stale_records_of_a_recycled_segment_for_new_ones,
);

fn records_survive_reopen_in_order_across_segment_rolls<H: Harness>() {
    // Proves: flushed records come back after reopen with every header field, payload and chain link.
    let harness = H::fresh(1);
    let mut rng = Rng::new(11);
    let mut model = Model::default();
    {
        let (mut journal, recovery) = open(&harness);
        assert_eq!(recovery.last_seq, 0);
        assert_eq!(recovery.first_seq, 1);
        for round in 0..12 {
            fill(&mut journal, &mut model, &mut rng, 20 + round * 5);
        }
    }
    let (journal, recovery) = open(&harness);
    let last = model.next_seq() - 1;
    assert_eq!(recovery.last_seq, last);
    assert_eq!(recovery.truncated_bytes, 0);
    assert!(recovery.removed_segments.is_empty());
    assert_eq!(journal.next_seq(), last + 1);
    assert_eq!(journal.durable_seq(), last);
    assert_eq!(check_journal(&journal, &model, 1), last);
    let rolled = segments(&journal);
    assert!(rolled.len() >= 10, "rolled over many segments: {rolled:?}");
    let expected: Vec<u64> = layout_of(&model).iter().map(|p| p.segment).collect();
    let mut expected_segments = expected.clone();
    expected_segments.dedup();
    assert_eq!(
        rolled, expected_segments,
        "segments are named by their first seq"
    );
}

fn flush_reports_the_highest_durable_seq<H: Harness>() {
    // Proves: `flush` returns the highest durable seq, `durable_seq` agrees, appends alone don't move it.
    let harness = H::fresh(2);
    let (mut journal, _) = open(&harness);
    let mut model = Model::default();
    assert_eq!(journal.durable_seq(), 0);
    assert_eq!(journal.flush().expect("empty flush"), 0);
    for expected_durable in [3u64, 4, 40, 41] {
        while model.next_seq() <= expected_durable {
            model.append(&mut journal, 300);
            assert!(journal.durable_seq() < model.next_seq() - 1);
        }
        assert_eq!(journal.flush().expect("flush"), expected_durable);
        assert_eq!(journal.durable_seq(), expected_durable);
        assert_eq!(journal.next_seq(), expected_durable + 1);
    }
    assert_eq!(journal.flush().expect("idle flush"), 41);
    check_journal(&journal, &model, 1);
}

fn pipelined_flush_covers_exactly_what_was_appended_before_it_started<H: Harness>() {
    // Proves: `flush_start` covers the records appended before it, appends go on while it runs
    // (across a segment roll), `flush_wait` reports only the covered seq durable and readers see
    // no more, the next flush covers the rest, and all of it survives a crash.
    let mut harness = H::fresh(12);
    let (mut journal, _) = open(&harness);
    let mut model = Model::default();
    let mut reader = journal.reader(1).expect("reader");
    let mut read = 0;
    for round in 1..=6u64 {
        while model.next_seq() <= round * 25 {
            model.append(&mut journal, 500);
        }
        let target = journal.flush_start().expect("flush_start");
        assert_eq!(target, round * 25);
        // Appended while the group commit is in flight: not covered by it.
        for _ in 0..7 {
            model.append(&mut journal, 500);
        }
        assert_eq!(journal.flush_wait().expect("flush_wait"), target);
        assert_eq!(journal.durable_seq(), target);
        while let Some(record) = reader.next().expect("read") {
            read = record.header.seq;
        }
        assert_eq!(read, target, "readers see exactly the durable records");
        assert_eq!(
            journal.flush_wait().expect("idle wait"),
            target,
            "nothing in flight"
        );
    }
    let last = journal.flush().expect("flush");
    assert_eq!(last, model.next_seq() - 1);
    assert!(segments(&journal).len() > 1, "the appends rolled segments");
    drop(reader);
    drop(journal);
    harness.crash();
    let (journal, recovery) = open(&harness);
    assert_eq!(recovery.last_seq, last);
    check_journal(&journal, &model, 1);
}

/// Opens the journal after a crash in `round`: it holds at least every record up to `durable`,
/// and whatever survived beyond it is exactly what was written (checked against `model`,
/// from the journal's first seq). Then `model` and `durable` forget what recovery cut.
fn reopen_after_crash<H: Harness>(
    harness: &H,
    model: &mut Model,
    durable: &mut u64,
    round: usize,
) -> Journal<H::S> {
    let (journal, recovery) = open(harness);
    assert!(
        recovery.last_seq >= *durable,
        "round {round}: recovered {} < durable {durable}",
        recovery.last_seq
    );
    assert!(recovery.last_seq < model.next_seq(), "nothing invented");
    check_journal(&journal, model, journal.first_seq());
    model.truncate(recovery.last_seq);
    *durable = recovery.last_seq;
    journal
}

fn crash_keeps_every_flushed_record_and_nothing_garbage<H: Harness>() {
    // Proves: after any crash every record up to the last flush is intact, and whatever else survives is valid and continues the chain. Flushes are `flush`, `flush_now`, or `flush_now` right after a `flush_start` still in flight; readers see a flushed record at once.
    let mut harness = H::fresh(3);
    let mut rng = Rng::new(33);
    let mut model = Model::default();
    let mut durable = 0;
    for round in 0..16 {
        let mut journal = reopen_after_crash(&harness, &mut model, &mut durable, round);
        for _ in 0..rng.below(120) {
            model.append(&mut journal, varied_len(&mut rng));
            if rng.chance(1, 8) {
                durable = match rng.below(3) {
                    0 => journal.flush().expect("flush"),
                    1 => journal.flush_now().expect("flush now"),
                    _ => {
                        journal.flush_start().expect("flush start");
                        model.append(&mut journal, varied_len(&mut rng));
                        journal.flush_now().expect("flush now, one in flight")
                    }
                };
                assert_eq!(durable, model.next_seq() - 1);
                let mut reader = journal.reader(durable).expect("reader");
                let last = reader.next().expect("read").expect("the durable record");
                assert_eq!(last.header.seq, durable, "readers see it at once");
            }
        }
        drop(journal);
        harness.crash();
    }
}

fn recycled_segments_keep_every_flushed_record_across_crashes<H: Harness>() {
    // Proves: with retention retiring segments as the log grows, new segments reuse the retired files (stale records of old seqs after their data), yet after every crash each flushed record survives, readers read across segment ends, and nothing stale is ever read back.
    let mut harness = H::fresh(21);
    let mut rng = Rng::new(2121);
    let mut model = Model::default();
    let mut durable = 0;
    let mut recycled = BTreeSet::new();
    for round in 0..24 {
        let mut journal = reopen_after_crash(&harness, &mut model, &mut durable, round);
        for _ in 0..100 + rng.below(200) {
            model.append(&mut journal, varied_len(&mut rng));
            if rng.chance(1, 6) {
                durable = match rng.below(2) {
                    0 => journal.flush().expect("flush"),
                    _ => journal.flush_now().expect("flush now"),
                };
                // Retention as a node's: everything but the last ~60 records is covered.
                journal
                    .remove_covered(durable.saturating_sub(60))
                    .expect("retention");
                check_journal(&journal, &model, journal.first_seq());
            }
        }
        recycled.extend(recycled_segments(&journal));
        drop(journal);
        harness.crash();
    }
    if H::RECYCLES {
        assert!(
            recycled.len() >= 20,
            "only {} segments were recycled",
            recycled.len()
        );
    } else {
        assert!(recycled.is_empty(), "{recycled:?} recycled in map mode");
    }
}

fn a_tailing_reader_never_takes_stale_records_of_a_recycled_segment_for_new_ones<H: Harness>() {
    // Proves: a reader whose buffer holds a recycled segment as it was while the writer ran
    // ahead of the durable point (new records, then the stale records of the file's earlier
    // life, older seqs of the same size, so each sits where a new one starts) reads, after the
    // next flush, exactly the records written since: it reads such bytes again rather than
    // skipping a stale record as if it were seeking forward (which misaligned it, and stopped
    // the node's read model with "seq N where M was expected").
    const LEN: usize = 100;
    let harness = H::fresh(31);
    let (mut journal, _) = open(&harness);
    let mut model = Model::default();
    // Retire segments as a node does until the writer has just rolled into a recycled one.
    // (With `WriteMode::Pwrite` appends reach the file at the flush, so there the reader
    // cannot see records past the durable point; the sim, like `Map`, shows them at once, as
    // a pwrite racing the reader's read can.)
    let mut durable = 0;
    for _ in 0..5_000 {
        let seq = model.append(&mut journal, LEN);
        let rolled = segments(&journal).last() == Some(&seq);
        if seq % 10 == 0 || rolled {
            durable = journal.flush().expect("flush");
            // (A storage that never recycles: any roll after a few retired segments.)
            let recycled = recycled_segments(&journal).contains(&seq);
            if rolled && (recycled || (!H::RECYCLES && seq > 500)) {
                break;
            }
            journal
                .remove_covered(durable.saturating_sub(20))
                .expect("retention");
        }
    }
    let last = *segments(&journal).last().expect("a segment");
    assert_eq!(durable, last, "flushed right after the roll");
    assert_eq!(
        recycled_segments(&journal).contains(&last),
        H::RECYCLES,
        "the segment being written reuses a retired file exactly when the storage recycles"
    );
    let mut reader = journal.reader(durable).expect("reader");
    // Past the end marker of the flush (a record header's worth, up to the next 4 KiB
    // boundary); twice that still fits the segment.
    let ahead = (END_MARKER_ALIGN as usize + HEADER_LEN).div_ceil(record_len(LEN)) + 1;
    for _ in 0..ahead {
        model.append(&mut journal, LEN);
    }
    let first = reader.next().expect("read").expect("the durable record");
    assert_eq!(first.header.seq, durable);
    assert!(
        reader.next().expect("read").is_none(),
        "records not yet flushed are invisible"
    );
    // Written over the stale records the reader holds, and flushed.
    for _ in 0..ahead {
        model.append(&mut journal, LEN);
    }
    journal.flush().expect("flush");
    assert_eq!(segments(&journal).last(), Some(&last), "all in one segment");
    let mut next = durable + 1;
    while let Some(record) = reader.next().expect("read") {
        assert_eq!(record.header.seq, next);
        assert!(record.payload() == model.get(next).payload);
        next += 1;
    }
    assert_eq!(next, model.next_seq(), "the reader caught up");
}

/// The segments of `journal` whose header says they reuse a retired segment's file.
fn recycled_segments<S: Storage>(journal: &Journal<S>) -> Vec<u64> {
    let reader = journal.storage().reader();
    segments(journal)
        .into_iter()
        .filter(|&segment| {
            read_segment_header(&reader, segment)
                .expect("a valid segment header")
                .recycled
        })
        .collect()
}

fn reader_sees_only_durable_records_and_tails_new_ones<H: Harness>() {
    // Proves: a reader yields only durable records, and keeps tailing the journal across flushes and segment rolls.
    let harness = H::fresh(4);
    let (mut journal, _) = open(&harness);
    let mut model = Model::default();
    let mut reader = journal.reader(1).expect("reader");
    let mut next = 1;
    for batch in 0..40u64 {
        for _ in 0..(batch % 7 + 1) {
            model.append(&mut journal, (batch as usize * 37) % 700);
        }
        assert!(
            reader.next().expect("read").is_none(),
            "batch {batch}: unflushed records are invisible"
        );
        journal.flush().expect("flush");
        while let Some(record) = reader.next().expect("read") {
            assert_eq!(record.header.seq, next);
            assert!(record.payload() == model.get(next).payload);
            next += 1;
        }
        assert_eq!(next, model.next_seq(), "batch {batch}: caught up");
    }
    assert!(segments(&journal).len() > 3, "the reader crossed segments");
}

fn reader_wait_wakes_on_a_flush_from_another_thread<H: Harness>() {
    // Proves: `Reader::wait` times out while nothing is durable and returns true once another thread flushes.
    let harness = H::fresh(5);
    let (mut journal, _) = open(&harness);
    let mut model = Model::default();
    let mut reader = journal.reader(1).expect("reader");
    assert!(
        !reader.wait(Duration::from_millis(20)),
        "nothing durable yet"
    );
    const BATCHES: u64 = 5;
    const BATCH: u64 = 30;
    let (ready_tx, ready_rx) = mpsc::sync_channel::<()>(1);
    let tailer = thread::spawn(move || {
        let mut seen = Vec::new();
        ready_tx.send(()).expect("the test is waiting");
        while (seen.len() as u64) < BATCHES * BATCH {
            assert!(
                reader.wait(Duration::from_secs(20)),
                "no flush arrived within 20 s (after {} records)",
                seen.len()
            );
            while let Some(record) = reader.next().expect("read") {
                seen.push((record.header.seq, record.payload().to_vec()));
            }
        }
        seen
    });
    ready_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the tailer started");
    for _ in 0..BATCHES {
        for _ in 0..BATCH {
            model.append(&mut journal, 400);
        }
        journal.flush().expect("flush");
    }
    let seen = tailer.join().expect("tailer");
    assert_eq!(seen.len() as u64, BATCHES * BATCH);
    for (index, (seq, payload)) in seen.iter().enumerate() {
        assert_eq!(*seq, index as u64 + 1);
        assert!(*payload == model.get(*seq).payload);
    }
}

fn reader_starts_at_any_seq_in_a_middle_segment<H: Harness>() {
    // Proves: a reader from any seq (segment starts, middles, ends, the very next seq) yields exactly the records from there on.
    let harness = H::fresh(6);
    let (mut journal, _) = open(&harness);
    let mut model = Model::default();
    let mut rng = Rng::new(66);
    fill(&mut journal, &mut model, &mut rng, 250);
    let segments = segments(&journal);
    assert!(segments.len() >= 5);
    let last = model.next_seq() - 1;
    let mut starts = vec![1, 2, last, last + 1];
    for &s in &segments[1..] {
        starts.extend([s - 1, s, s + 1]);
    }
    starts.push((segments[2] + segments[3]) / 2);
    for from in starts {
        let mut reader = journal.reader(from).expect("reader");
        let mut seq = from;
        while let Some(record) = reader.next().expect("read") {
            assert_eq!(record.header.seq, seq, "reader from {from}");
            assert!(record.payload() == model.get(seq).payload);
            seq += 1;
        }
        assert_eq!(seq, last + 1, "reader from {from} reads to the end");
    }
}

fn reader_outside_the_journal_is_unavailable<H: Harness>() {
    // Proves: asking for a seq before the first or after the next is `Unavailable`, never a wrong record.
    let harness = H::fresh(7);
    let (mut journal, _) = open(&harness);
    let mut model = Model::default();
    let mut rng = Rng::new(77);
    fill(&mut journal, &mut model, &mut rng, 200);
    let next = journal.next_seq();
    for seq in [0, next + 1, next + 1000] {
        match journal.reader(seq) {
            Err(JournalError::Unavailable {
                seq: asked,
                first,
                next: n,
            }) => assert_eq!((asked, first, n), (seq, 1, next)),
            other => panic!("reader({seq}) gave {other:?}"),
        }
    }
    let covered = segments(&journal)[2];
    journal.remove_covered(covered).expect("retention");
    let first = journal.first_seq();
    assert!(first > 1);
    assert!(matches!(
        journal.reader(first - 1),
        Err(JournalError::Unavailable { .. })
    ));
    assert_eq!(
        check_journal(&journal, &model, first),
        next - first,
        "the first kept seq reads"
    );
}

fn readers_read_any_durable_record_back_from_another_thread<H: Harness>() {
    // Proves: `Readers::record` returns exactly the record asked for, from another thread,
    // at segment starts, middles and ends; a seq not durable yet, or removed by retention, is
    // `Unavailable`, never another record; and the lookup gives its reader slot back.
    let harness = H::fresh(12);
    let (mut journal, _) = open(&harness);
    let mut model = Model::default();
    let mut rng = Rng::new(1212);
    fill(&mut journal, &mut model, &mut rng, 250);
    let readers = journal.readers();
    let segments = segments(&journal);
    assert!(segments.len() >= 5);
    let last = model.next_seq() - 1;
    let mut seqs = vec![1, 2, last];
    for &s in &segments[1..] {
        seqs.extend([s - 1, s, s + 1]);
    }
    let looked_up = thread::spawn({
        let readers = readers.clone();
        let seqs = seqs.clone();
        move || {
            seqs.iter()
                .map(|&seq| readers.record(seq).expect("a durable record"))
                .collect::<Vec<_>>()
        }
    })
    .join()
    .expect("lookup thread");
    for (&seq, (header, payload)) in seqs.iter().zip(&looked_up) {
        assert_eq!(header.seq, seq);
        assert!(*payload == model.get(seq).payload, "record {seq}");
    }
    // Appended but not flushed: not durable, so not readable.
    model.append(&mut journal, 10);
    assert!(matches!(
        readers.record(last + 1),
        Err(JournalError::Unavailable { .. })
    ));
    journal.flush().expect("flush");
    assert_eq!(
        readers.record(last + 1).expect("durable now").0.seq,
        last + 1
    );
    let covered = segments[2];
    journal.remove_covered(covered).expect("retention");
    assert!(matches!(
        readers.record(1),
        Err(JournalError::Unavailable { .. })
    ));
    // Every lookup released its slot: all READERS_MAX are free.
    let held: Vec<_> = (0..READERS_MAX)
        .map(|_| journal.reader(journal.first_seq()).expect("a free slot"))
        .collect();
    assert_eq!(held.len(), READERS_MAX);
}

fn readers_are_bounded_by_readers_max<H: Harness>() {
    // Proves: at most READERS_MAX readers exist at once, and dropping one frees its slot.
    let harness = H::fresh(8);
    let (mut journal, _) = open(&harness);
    let mut model = Model::default();
    model.append(&mut journal, 10);
    journal.flush().expect("flush");
    let mut readers: Vec<_> = (0..READERS_MAX)
        .map(|_| journal.reader(1).expect("a free slot"))
        .collect();
    assert!(matches!(journal.reader(1), Err(JournalError::ReadersFull)));
    readers.pop();
    let mut reader = journal.reader(1).expect("a freed slot");
    assert_eq!(reader.next().expect("read").expect("record").header.seq, 1);
}

/// The seq after each segment's last record, i.e. the next segment's id (or `next` for the last).
fn segment_ends(segments: &[u64], next: u64) -> Vec<u64> {
    segments[1..].iter().copied().chain([next]).collect()
}

fn retention_removes_only_whole_covered_segments<H: Harness>() {
    // Proves: `remove_covered` removes exactly the segments whose records are all covered, never the active one.
    let harness = H::fresh(9);
    let (mut journal, _) = open(&harness);
    let mut model = Model::default();
    let mut rng = Rng::new(99);
    fill(&mut journal, &mut model, &mut rng, 300);
    let before = segments(&journal);
    assert!(before.len() >= 6);
    assert!(
        journal
            .remove_covered(0)
            .expect("nothing covered")
            .is_empty()
    );
    assert!(
        journal
            .remove_covered(before[1] - 2)
            .expect("first segment not wholly covered")
            .is_empty()
    );
    for covered in [before[1] - 1, before[3] + 2, before[4] - 1] {
        let segments_now = segments(&journal);
        let removed = journal.remove_covered(covered).expect("retention");
        let ends = segment_ends(&segments_now, journal.next_seq());
        let expected: Vec<u64> = segments_now
            .iter()
            .zip(&ends)
            .filter(|&(_, &end)| end - 1 <= covered)
            .map(|(&s, _)| s)
            .collect();
        assert_eq!(removed, expected, "covered {covered}");
        assert_eq!(segments(&journal), segments_now[expected.len()..].to_vec());
        assert_eq!(journal.first_seq(), segments(&journal)[0]);
        assert!(journal.first_seq() <= covered + 1);
    }
    let active = *before.last().expect("segments");
    let removed = journal
        .remove_covered(journal.next_seq() + 100)
        .expect("everything covered");
    assert!(!removed.contains(&active));
    assert_eq!(segments(&journal), vec![active], "the active segment stays");
    let first = journal.first_seq();
    assert_eq!(first, active);
    check_journal(&journal, &model, first);
    // Appending after retention still works and rolls on.
    fill(&mut journal, &mut model, &mut rng, 100);
    check_journal(&journal, &model, first);
}

fn retention_keeps_what_a_live_reader_needs<H: Harness>() {
    // Proves: retention never removes a segment a live reader still needs (even one it has just finished), and frees it once the reader moves on or is dropped.
    let harness = H::fresh(10);
    let (mut journal, _) = open(&harness);
    let mut model = Model::default();
    let mut rng = Rng::new(1010);
    fill(&mut journal, &mut model, &mut rng, 400);
    let all = segments(&journal);
    assert!(all.len() >= 8);
    let durable = journal.durable_seq();

    let from = all[2] + 3;
    let mut reader = journal.reader(from).expect("reader");
    let removed = journal.remove_covered(durable).expect("retention");
    assert_eq!(
        removed,
        all[..2].to_vec(),
        "only segments wholly before the reader"
    );
    // Read exactly to the end of a segment with room for a header after its data (so the
    // reader must look there again), then let retention run: the next read must work.
    let places = layout_of(&model);
    let slack_after = |id: u64| {
        let last = places.iter().rfind(|p| p.segment == id).expect("records");
        SEGMENT_BYTES - (last.offset + last.padded)
    };
    let k = (4..all.len() - 1)
        .find(|&k| slack_after(all[k]) >= HEADER_LEN as u64)
        .expect("a segment with slack");
    let mut seq = from;
    while seq < all[k + 1] {
        let record = reader.next().expect("read").expect("durable");
        assert_eq!(record.header.seq, seq);
        seq += 1;
    }
    let removed = journal.remove_covered(durable).expect("retention");
    assert!(
        removed.iter().all(|&s| s < all[k]),
        "removed {removed:?} while the reader needs {}",
        reader.next_seq()
    );
    while let Some(record) = reader.next().expect("read after retention") {
        assert_eq!(record.header.seq, seq);
        assert!(record.payload() == model.get(seq).payload);
        seq += 1;
    }
    assert_eq!(seq, durable + 1);
    drop(reader);
    journal.remove_covered(durable).expect("retention");
    assert_eq!(
        segments(&journal),
        vec![*all.last().expect("segments")],
        "no reader left: all but the active segment go"
    );
}

fn reopen_after_retention_starts_at_the_first_kept_segment<H: Harness>() {
    // Proves: a journal reopened after retention recovers from its first kept segment (first_seq > 1) and continues the chain.
    let mut harness = H::fresh(11);
    let mut model = Model::default();
    let mut rng = Rng::new(1111);
    let (first, last_hash) = {
        let (mut journal, _) = open(&harness);
        fill(&mut journal, &mut model, &mut rng, 300);
        let covered = segments(&journal)[3] + 1;
        assert_eq!(journal.remove_covered(covered).expect("retention").len(), 3);
        (journal.first_seq(), journal.last_hash())
    };
    harness.crash();
    let (mut journal, recovery) = open(&harness);
    assert_eq!(recovery.first_seq, first);
    assert!(first > 1);
    assert_eq!(recovery.last_seq, model.next_seq() - 1);
    assert_eq!(journal.first_seq(), first);
    assert_eq!(journal.last_hash(), last_hash);
    check_journal(&journal, &model, first);
    fill(&mut journal, &mut model, &mut rng, 100);
    drop(journal);
    harness.crash();
    let (journal, recovery) = open(&harness);
    assert_eq!(recovery.last_seq, model.next_seq() - 1);
    check_journal(&journal, &model, first);
}

/// Every durable record of `journal` from `from` on, as bytes (header and payload).
fn records_of<S: Storage>(journal: &Journal<S>, from: u64) -> Vec<Vec<u8>> {
    let mut reader = journal.reader(from).expect("reader");
    let mut records = Vec::new();
    while let Some(record) = reader.next().expect("read") {
        records.push(record.bytes.to_vec());
    }
    records
}

fn replicated_records_rebuild_an_identical_chain<H: Harness>() {
    // Proves: records read from journal A and appended to B with `append_replicated` give B the same bytes but for the node-local watermark, and the same chain hashes.
    let primary = H::fresh(12);
    let mut standby = H::fresh(13);
    let (mut a, _) = open(&primary);
    let mut model = Model::default();
    let mut rng = Rng::new(1212);
    for _ in 0..8 {
        fill(&mut a, &mut model, &mut rng, 40);
    }
    let originals = records_of(&a, 1);
    {
        let (mut b, _) = open(&standby);
        for (index, record) in originals.iter().enumerate() {
            let seq = b.append_replicated(record).expect("replicated");
            assert_eq!(seq, index as u64 + 1);
            if index % 25 == 24 {
                b.flush().expect("flush");
            }
        }
        assert_eq!(b.flush().expect("flush"), originals.len() as u64);
        assert_eq!(b.last_hash(), a.last_hash());
    }
    standby.crash();
    let (b, recovery) = open(&standby);
    assert_eq!(recovery.last_seq, originals.len() as u64);
    let copies = records_of(&b, 1);
    assert_eq!(copies.len(), originals.len());
    let mut prev_hash = 0;
    for (original, copy) in originals.iter().zip(&copies) {
        assert_eq!(original.len(), copy.len());
        assert_eq!(original[..12], copy[..12], "magic, version, kind, length");
        assert_eq!(
            original[16..56],
            copy[16..56],
            "seq, epoch, timestamp, prev_hash"
        );
        assert_eq!(original[HEADER_LEN..], copy[HEADER_LEN..], "payload");
        assert_eq!(hash_of(original), hash_of(copy));
        let header =
            RecordHeader::decode(copy[..HEADER_LEN].try_into().expect("header")).expect("decodes");
        assert_eq!(header.prev_hash, prev_hash);
        prev_hash = hash_of(copy);
    }
    assert_eq!(b.last_hash(), a.last_hash());
}

fn replication_rejects_gaps_broken_chains_and_flipped_bits<H: Harness>() {
    // Proves: `append_replicated` refuses a record that skips a seq, breaks the chain, lowers the epoch or has a flipped bit, and a refusal does not poison the journal.
    let primary = H::fresh(14);
    let standby = H::fresh(15);
    let (mut a, _) = open(&primary);
    let mut model = Model::default();
    let mut rng = Rng::new(1414);
    fill(&mut a, &mut model, &mut rng, 120);
    let originals = records_of(&a, 1);
    let (mut b, _) = open(&standby);
    for record in &originals[..60] {
        b.append_replicated(record).expect("replicated");
    }
    let next = &originals[60];
    let rejected =
        |b: &mut Journal<H::S>, record: &[u8], what: &str| match b.append_replicated(record) {
            Err(JournalError::Rejected(_)) => {}
            other => panic!("{what}: expected Rejected, got {other:?}"),
        };
    rejected(&mut b, &originals[61], "a seq gap");
    rejected(&mut b, &originals[59], "a repeated seq");
    rejected(&mut b, &next[..HEADER_LEN - 1], "a short record");
    for bit in [0, 8 * 9 + 3, 8 * 20, 8 * 45 + 7, 8 * (next.len() - 1)] {
        let mut flipped = next.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        rejected(&mut b, &flipped, &format!("flipped bit {bit}"));
    }
    let payload = &next[HEADER_LEN..];
    let header =
        RecordHeader::decode(next[..HEADER_LEN].try_into().expect("header")).expect("decodes");
    let forged = |header: RecordHeader| {
        let mut record = header.encode(payload).to_vec();
        record.extend_from_slice(payload);
        record
    };
    rejected(
        &mut b,
        &forged(RecordHeader {
            prev_hash: header.prev_hash ^ 1,
            ..header
        }),
        "a broken chain with a valid CRC",
    );
    rejected(
        &mut b,
        &forged(RecordHeader { epoch: 0, ..header }),
        "a lower epoch",
    );
    assert_eq!(b.append_replicated(next).expect("the right record"), 61);
    for record in &originals[61..] {
        b.append_replicated(record).expect("replicated");
    }
    assert_eq!(b.flush().expect("flush"), originals.len() as u64);
    assert_eq!(b.last_hash(), a.last_hash());
}

fn payload_too_large_is_refused_and_the_largest_fits<H: Harness>() {
    // Proves: for any segment size, a payload of `payload_max()` is stored and read back, and one byte more is `PayloadTooLarge` without poisoning.
    for segment_bytes in [SEGMENT_BYTES_MIN, SEGMENT_BYTES, SEGMENT_BYTES + 8, 20_001] {
        let harness = H::fresh(16);
        let config = JournalConfig { segment_bytes };
        let mut model = Model::default();
        {
            let (mut journal, _) = open_with(&harness, config);
            let max = journal.payload_max();
            model.append(&mut journal, 100);
            match journal.append(1, 0, &vec![7u8; max + 1]) {
                Err(JournalError::PayloadTooLarge { len, max: m }) => {
                    assert_eq!((len, m), (max + 1, max));
                }
                other => panic!("segment_bytes {segment_bytes}: {other:?}"),
            }
            model.append(&mut journal, max);
            model.append(&mut journal, 100);
            model.append(&mut journal, max);
            journal
                .flush()
                .unwrap_or_else(|e| panic!("segment_bytes {segment_bytes}: {e}"));
        }
        let (journal, recovery) = open_with(&harness, config);
        assert_eq!(recovery.last_seq, 4, "segment_bytes {segment_bytes}");
        check_journal(&journal, &model, 1);
    }
}

// ---- Sim-only: faults that real files cannot inject on demand. ----

fn sim_open(sim: &SimStorage) -> Result<(Journal<SimStorage>, Recovery), JournalError> {
    Journal::open(sim.clone(), config())
}

/// Appends `count` records of `len` bytes, flushing every `flush_every`.
fn sim_fill(journal: &mut Journal<SimStorage>, model: &mut Model, count: u64, flush_every: u64) {
    for i in 1..=count {
        model.append(journal, 200 + (i as usize * 53) % 400);
        if i % flush_every == 0 {
            journal.flush().expect("flush");
        }
    }
}

#[test]
fn sim_damage_before_durable_data_is_corrupt_naming_file_and_offset() {
    // Proves: damage before durable data is a hard `Corrupt` error naming the damaged record's segment and offset, never a silent truncation.
    let targets: [(u64, u64); 5] = [(7, 0), (7, 20), (7, 70), (150, 100), (149, 63)];
    for (seq, byte) in targets {
        let sim = SimStorage::new(seq * 1000 + byte);
        let mut model = Model::default();
        let (mut journal, _) = sim_open(&sim).expect("open");
        sim_fill(&mut journal, &mut model, 300, 10);
        drop(journal);
        let place = layout_of(&model)[(seq - 1) as usize];
        assert!(byte < place.bytes);
        sim.flip_bit(place.segment, place.offset + byte, (byte % 8) as u8);
        match sim_open(&sim) {
            Err(JournalError::Corrupt { file, offset, .. }) => {
                assert_eq!(file, StorageReader::describe(&sim, place.segment));
                assert_eq!(offset, place.offset, "seq {seq} byte {byte}");
            }
            Err(other) => panic!("seq {seq} byte {byte}: {other}"),
            Ok((_, recovery)) => panic!("seq {seq} byte {byte}: opened: {recovery:?}"),
        }
    }
    // A zeroed header in the last segment looks like the end of the data; the records after
    // it vouch that it was durable.
    let sim = SimStorage::new(78);
    let mut model = Model::default();
    let (mut journal, _) = sim_open(&sim).expect("open");
    sim_fill(&mut journal, &mut model, 300, 10);
    drop(journal);
    let places = layout_of(&model);
    let last_segment = places[299].segment;
    let place = *places
        .iter()
        .find(|p| p.segment == last_segment && p.offset > 64)
        .expect("a record after the first in the last segment");
    sim.overwrite(place.segment, place.offset, &[0; HEADER_LEN]);
    match sim_open(&sim) {
        Err(JournalError::Corrupt { file, offset, .. }) => {
            assert_eq!(file, StorageReader::describe(&sim, place.segment));
            assert_eq!(offset, place.offset);
        }
        other => panic!("zeroed durable header: {:?}", other.map(|(_, r)| r)),
    }
    // A damaged segment header of a durable segment names offset 0 of that segment.
    let sim = SimStorage::new(77);
    let mut model = Model::default();
    let (mut journal, _) = sim_open(&sim).expect("open");
    sim_fill(&mut journal, &mut model, 300, 10);
    drop(journal);
    let segment = layout_of(&model)[100].segment;
    sim.flip_bit(segment, 40, 2);
    match sim_open(&sim) {
        Err(JournalError::Corrupt { file, offset, .. }) => {
            assert_eq!(file, StorageReader::describe(&sim, segment));
            assert_eq!(offset, 0);
        }
        other => panic!("damaged segment header: {:?}", other.map(|(_, r)| r)),
    }
}

/// A recycling sim disk holding at least 300 records of `sim_fill`'s sizes, flushed every 5
/// with retention after each flush, and 20 to 25 in its last segment, which reuses a retired
/// one's bytes.
fn sim_recycled_tail(seed: u64) -> (SimStorage, Model, Journal<SimStorage>) {
    let sim = SimStorage::new(seed).recycling(SIM_RECYCLED_MAX);
    let mut model = Model::default();
    let (mut journal, _) = sim_open(&sim).expect("open");
    let in_last = |model: &Model| {
        let places = layout_of(model);
        let last = places.last().map(|p| p.segment);
        places.iter().filter(|p| Some(p.segment) == last).count()
    };
    // 20 to 25 records (of ~40 that fit) leave room for stale bytes after the end marker.
    while model.next_seq() <= 300 || !(20..=25).contains(&in_last(&model)) {
        sim_fill(&mut journal, &mut model, 5, 5);
        let durable = journal.durable_seq();
        journal
            .remove_covered(durable.saturating_sub(20))
            .expect("retention");
    }
    let last = *segments(&journal).last().expect("segments");
    assert!(
        recycled_segments(&journal).contains(&last),
        "seed {seed}: the last segment is not recycled"
    );
    (sim, model, journal)
}

#[test]
fn sim_recycled_segment_stale_bytes_are_not_damage_but_durable_damage_is_corrupt() {
    // Proves: in a recycled last segment, the stale records after the data are neither reported nor rewritten on reopen, while a damaged durable record before later vouching ones is still `Corrupt`, naming file and offset.
    for seed in 0..8u64 {
        let (sim, model, journal) = sim_recycled_tail(seed);
        let first = journal.first_seq();
        drop(journal);
        let places = layout_of(&model);
        let end = *places.last().expect("records");
        let last_seq = model.next_seq() - 1;
        // After the data and its end marker, the retired segment's bytes are still there.
        let data_end = end.offset + end.padded;
        let after = data_end + end_marker_len(data_end, SEGMENT_BYTES);
        let mut stale = vec![0u8; (SEGMENT_BYTES - after) as usize];
        StorageReader::open(&sim, end.segment)
            .and_then(|s| s.read_at(after, &mut stale))
            .expect("read the tail");
        assert!(
            stale.iter().any(|&b| b != 0),
            "seed {seed}: no stale bytes after the data"
        );
        let (journal, recovery) = sim_open(&sim).expect("clean reopen");
        assert_eq!(recovery.last_seq, last_seq);
        assert_eq!(recovery.truncated_bytes, 0, "seed {seed}: nothing cut");
        assert!(recovery.removed_segments.is_empty());
        check_journal(&journal, &model, first);
        drop(journal);
        // The last segment's first record is durable and later flushes vouch for it.
        let place = *places
            .iter()
            .find(|p| p.segment == end.segment)
            .expect("records");
        sim.flip_bit(place.segment, place.offset + 30, 3);
        match sim_open(&sim) {
            Err(JournalError::Corrupt { file, offset, .. }) => {
                assert_eq!(file, StorageReader::describe(&sim, place.segment));
                assert_eq!(offset, place.offset, "seed {seed}");
            }
            other => panic!("seed {seed}: {:?}", other.map(|(_, r)| r)),
        }
    }
}

#[test]
fn sim_torn_tail_over_stale_bytes_recovers_the_durable_records_and_appends_continue() {
    // Proves: a crash after unflushed appends into a recycled segment recovers exactly the durable records, marks the end over the torn rest (reported when something was cut), and later appends and reopens continue the chain.
    let mut truncated_somewhere = false;
    for seed in 0..24u64 {
        let (sim, mut model, mut journal) = sim_recycled_tail(seed);
        let durable = journal.durable_seq();
        for i in 0..(1 + seed % 9) {
            model.append(&mut journal, 100 + i as usize * 97);
        }
        drop(journal);
        sim.crash();
        let (mut journal, recovery) = sim_open(&sim).expect("open after the crash");
        assert!(recovery.last_seq >= durable, "seed {seed}: {recovery:?}");
        assert!(recovery.last_seq < model.next_seq(), "nothing invented");
        truncated_somewhere |= recovery.truncated_bytes > 0;
        // What survived beyond the durable seq must be exactly what was written.
        let first = journal.first_seq();
        check_journal(&journal, &model, first);
        model.truncate(recovery.last_seq);
        sim_fill(&mut journal, &mut model, 40, 7);
        journal.flush().expect("flush");
        drop(journal);
        sim.crash();
        let (journal, recovery) = sim_open(&sim).expect("reopen");
        assert_eq!(recovery.last_seq, model.next_seq() - 1, "seed {seed}");
        check_journal(&journal, &model, first);
    }
    assert!(
        truncated_somewhere,
        "some crash tore a record over stale bytes"
    );
}

#[test]
fn sim_torn_tail_is_truncated_reported_and_appends_continue_the_chain() {
    // Proves: a crash after unflushed appends recovers every durable record, zeroes and reports the torn rest, and new appends continue the chain.
    let mut truncated_somewhere = false;
    for seed in 0..40u64 {
        let sim = SimStorage::new(seed);
        let mut model = Model::default();
        let (mut journal, _) = sim_open(&sim).expect("open");
        sim_fill(&mut journal, &mut model, 50 + seed, 50 + seed);
        let durable = journal.durable_seq();
        // Short tails stay in the last segment, long ones span segments.
        sim_fill(&mut journal, &mut model, 2 + (seed * 7) % 60, u64::MAX);
        drop(journal);
        sim.crash();
        let before = image(&sim);
        let (mut journal, recovery) = sim_open(&sim).expect("a torn tail opens");
        assert!(recovery.last_seq >= durable, "seed {seed}");
        check_journal(&journal, &model, 1);
        let after = image(&sim);
        if before != after {
            assert!(
                recovery.truncated_bytes > 0 || !recovery.removed_segments.is_empty(),
                "seed {seed}: recovery changed the disk without reporting it: {recovery:?}"
            );
        }
        truncated_somewhere |= recovery.truncated_bytes > 0;
        // Nothing but zeros is left after the recovered data.
        model.truncate(recovery.last_seq);
        let end = layout_of(&model)
            .last()
            .map(|p| (p.segment, p.offset + p.padded));
        let (end_segment, end_offset) = end.expect("records");
        for (id, bytes) in &after {
            assert!(
                *id <= end_segment || *id == recovery.last_seq + 1,
                "seed {seed}: segment {id} left after the recovered data"
            );
            let from = match *id {
                id if id == end_segment => end_offset as usize,
                id if id > end_segment => payu_journal::SEGMENT_HEADER_LEN as usize,
                _ => continue,
            };
            assert!(
                bytes[from..].iter().all(|&b| b == 0),
                "seed {seed}: garbage left in segment {id}"
            );
        }
        for _ in 0..40 {
            model.append(&mut journal, 333);
        }
        journal.flush().expect("flush");
        drop(journal);
        sim.crash();
        let (journal, recovery) = sim_open(&sim).expect("reopen");
        assert_eq!(recovery.last_seq, model.next_seq() - 1, "seed {seed}");
        check_journal(&journal, &model, 1);
    }
    assert!(truncated_somewhere, "some seed tore a tail");
}

#[test]
fn sim_failed_flush_is_never_reported_durable() {
    // Proves: a failed flush returns Err, keeps `durable_seq`, poisons appends and flushes, and a crash keeps every record flushed before it.
    for seed in 0..8 {
        let sim = SimStorage::new(seed);
        let mut model = Model::default();
        let (mut journal, _) = sim_open(&sim).expect("open");
        sim_fill(&mut journal, &mut model, 80, 20);
        let durable = journal.durable_seq();
        assert_eq!(durable, 80);
        let mut reader = journal.reader(1).expect("reader");
        sim.fail_next_flushes(1);
        sim_fill(&mut journal, &mut model, 30, u64::MAX);
        assert!(matches!(journal.flush(), Err(JournalError::Io { .. })));
        assert_eq!(journal.durable_seq(), durable);
        assert!(matches!(
            journal.append(9, 0, b"after"),
            Err(JournalError::Poisoned)
        ));
        assert!(matches!(journal.flush(), Err(JournalError::Poisoned)));
        let mut read = 0;
        while let Some(record) = reader.next().expect("read") {
            read = record.header.seq;
        }
        assert_eq!(read, durable, "readers never see the failed batch");
        drop(reader);
        drop(journal);
        sim.crash();
        let (journal, recovery) = sim_open(&sim).expect("reopen");
        assert!(recovery.last_seq >= durable, "seed {seed}");
        check_journal(&journal, &model, 1);
    }
}

#[test]
fn sim_failed_pipelined_flush_is_never_reported_durable() {
    // Proves: a group commit that fails when started or while in flight leaves `durable_seq` where it was, poisons the journal, and loses nothing flushed before.
    for seed in 0..4 {
        let sim = SimStorage::new(seed);
        let mut model = Model::default();
        let (mut journal, _) = sim_open(&sim).expect("open");
        sim_fill(&mut journal, &mut model, 60, 20);
        sim.fail_next_flushes(1);
        sim_fill(&mut journal, &mut model, 20, u64::MAX);
        assert!(matches!(
            journal.flush_start(),
            Err(JournalError::Io { .. })
        ));
        assert!(matches!(journal.flush_wait(), Err(JournalError::Poisoned)));
        assert_eq!(journal.durable_seq(), 60);
        drop(journal);
        sim.crash();
        let (journal, recovery) = sim_open(&sim).expect("reopen");
        assert!(recovery.last_seq >= 60, "seed {seed}");
        check_journal(&journal, &model, 1);
    }
}

#[test]
fn sim_failed_flush_then_reopen_without_crash_makes_recovered_records_durable() {
    // Proves: records that a failed flush dropped but that still read back are made durable by recovery before it reports them durable.
    for seed in 0..8 {
        let sim = SimStorage::new(seed);
        let mut model = Model::default();
        let (mut journal, _) = sim_open(&sim).expect("open");
        sim_fill(&mut journal, &mut model, 40, 20);
        sim.fail_next_flushes(1);
        sim_fill(&mut journal, &mut model, 50, u64::MAX);
        assert!(journal.flush().is_err());
        drop(journal);
        // Reopened in the same boot: the dropped writes still read back.
        let (mut journal, recovery) = sim_open(&sim).expect("reopen");
        assert_eq!(recovery.last_seq, 90);
        model.append(&mut journal, 100);
        assert_eq!(journal.flush().expect("flush"), 91);
        drop(journal);
        sim.crash();
        let (journal, recovery) = sim_open(&sim)
            .unwrap_or_else(|e| panic!("seed {seed}: durable records were lost: {e}"));
        assert_eq!(recovery.last_seq, 91, "seed {seed}");
        check_journal(&journal, &model, 1);
    }
}

#[test]
fn sim_process_death_then_power_loss_keeps_what_recovery_reported() {
    // Proves: after a process dies with unflushed appends in several segments, recovery makes what it found durable before reporting it so.
    for seed in 0..8 {
        let sim = SimStorage::new(seed);
        let mut model = Model::default();
        let (mut journal, _) = sim_open(&sim).expect("open");
        sim_fill(&mut journal, &mut model, 20, 20);
        sim_fill(&mut journal, &mut model, 100, u64::MAX);
        assert!(
            segments(&journal).len() >= 3,
            "the unflushed batch spans segments"
        );
        drop(journal); // the process dies; the page cache (sim volatile image) keeps its writes
        let (mut journal, recovery) = sim_open(&sim).expect("reopen");
        assert_eq!(recovery.last_seq, 120);
        model.append(&mut journal, 100);
        assert_eq!(journal.flush().expect("flush"), 121);
        drop(journal);
        sim.crash(); // then the power goes
        let (journal, recovery) = sim_open(&sim)
            .unwrap_or_else(|e| panic!("seed {seed}: durable records were lost: {e}"));
        assert_eq!(recovery.last_seq, 121, "seed {seed}");
        check_journal(&journal, &model, 1);
    }
}
