//! Property tests of recovery on the simulated disk: write records of random sizes with
//! flushes at random points, damage one random place (a bit flip, a zeroed range or garbage),
//! crash, and compare what `Journal::open` does with what the design guarantees.
//!
//! What is provable, and asserted:
//! - (a) Damage in the unflushed tail (after the last flushed record), then a crash: `open`
//!   always succeeds, every flushed record is intact, the chain verifies, nothing but zeros
//!   follows the recovered data, and new appends continue the chain.
//! - (b) Damage inside flushed data (after a crash, like a media error): let `s` be the first
//!   record (in seq order) whose checked bytes are not what was written. Recovery can call `s`
//!   durable only if an intact later record carries a durable watermark >= `s`, that is, some
//!   record appended after the flush that covered `s` survived. Then `open` must fail with
//!   `Corrupt` naming `s`'s segment file and `s`'s offset (0 if the segment header is the
//!   damage). Otherwise the damage looks exactly like a torn tail (the last batch was flushed
//!   but nothing after it says so) and `open` truncates to `s - 1`. That silent truncation of
//!   durable records is the watermark scheme's documented limit: damage to the last flushed
//!   batch, with nothing written after its flush surviving, cannot be told from a torn write.
//!   The test asserts the exact outcome in both cases, so it also fails if recovery ever
//!   truncates damage that a later watermark vouches for, or reports corruption it cannot know.

mod common;

use std::collections::BTreeMap;

use common::{Model, Place, SEGMENT_BYTES, check_journal, config, image, layout_of};
use payu_journal::{
    Journal, JournalError, Recovery, SEGMENT_HEADER_LEN, SimStorage, StorageReader,
};
use proptest::prelude::*;

type Image = BTreeMap<u64, Vec<u8>>;

#[derive(Clone, Debug)]
enum Damage {
    Flip { bit: u8 },
    Zero { len: usize },
    Garbage { bytes: Vec<u8> },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        any::<u8>().prop_map(|bit| Damage::Flip { bit }),
        (1usize..=600).prop_map(|len| Damage::Zero { len }),
        prop::collection::vec(any::<u8>(), 1..=64).prop_map(|bytes| Damage::Garbage { bytes }),
    ]
}

/// What to write: payload sizes with a flush after some of them, then an unflushed tail.
#[derive(Clone, Debug)]
struct History {
    records: Vec<(usize, bool)>,
    /// One flush forced here (modulo the length), so something is durable.
    forced_flush: usize,
    tail: Vec<usize>,
}

fn history() -> impl Strategy<Value = History> {
    let record = (0usize..900, prop::bool::weighted(0.15));
    let tail = prop_oneof![
        1 => Just(Vec::new()),
        2 => prop::collection::vec(0usize..900, 1..20),
    ];
    (prop::collection::vec(record, 5..100), any::<usize>(), tail).prop_map(
        |(records, forced_flush, tail)| History {
            records,
            forced_flush,
            tail,
        },
    )
}

/// Writes the history; returns the model and the last flushed seq.
fn write(sim: &SimStorage, history: &History) -> (Model, u64) {
    let (mut journal, _) = Journal::open(sim.clone(), config()).expect("open");
    let mut model = Model::default();
    let forced = history.forced_flush % history.records.len();
    for (index, &(len, flush)) in history.records.iter().enumerate() {
        model.append(&mut journal, len);
        if flush || index == forced {
            journal.flush().expect("flush");
        }
    }
    let durable = journal.durable_seq();
    for &len in &history.tail {
        model.append(&mut journal, len);
    }
    (model, durable)
}

fn image_of(sim: &SimStorage) -> Image {
    image(sim).into_iter().collect()
}

/// Applies `damage` at (`segment`, `at`), keeping it before `end` (exclusive).
fn apply(sim: &SimStorage, segment: u64, at: u64, end: u64, damage: &Damage) {
    let room = (end - at) as usize;
    match damage {
        Damage::Flip { bit } => sim.flip_bit(segment, at, *bit),
        Damage::Zero { len } => sim.overwrite(segment, at, &vec![0; (*len).min(room)]),
        Damage::Garbage { bytes } => sim.overwrite(segment, at, &bytes[..bytes.len().min(room)]),
    }
}

/// What recovery must do, derived from the bytes on the disk and what was written.
#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Opens { last_seq: u64 },
    Corrupt { segment: u64, offset: u64 },
}

fn same(a: &Image, b: &Image, segment: u64, start: u64, len: u64) -> bool {
    let range = start as usize..(start + len) as usize;
    match (a.get(&segment), b.get(&segment)) {
        (Some(a), Some(b)) => a[range.clone()] == b[range],
        _ => false,
    }
}

fn expected(model: &Model, places: &[Place], written: &Image, now: &Image) -> Expected {
    let intact = |index: usize| {
        let p = places[index];
        same(written, now, p.segment, p.offset, p.bytes)
    };
    let mut first_bad = None;
    for (index, place) in places.iter().enumerate() {
        let header_ok = place.offset != SEGMENT_HEADER_LEN
            || same(written, now, place.segment, 0, SEGMENT_HEADER_LEN);
        if !header_ok {
            first_bad = Some((index, 0));
            break;
        }
        if !intact(index) {
            first_bad = Some((index, place.offset));
            break;
        }
    }
    let Some((index, offset)) = first_bad else {
        return Expected::Opens {
            last_seq: places.len() as u64,
        };
    };
    let seq = index as u64 + 1;
    let vouched = (index + 1..places.len())
        .any(|later| intact(later) && model.records[later].watermark >= seq);
    match vouched {
        true => Expected::Corrupt {
            segment: places[index].segment,
            offset,
        },
        false => Expected::Opens { last_seq: seq - 1 },
    }
}

/// Checks an opened journal: the records, zeros after them, and that appends continue.
fn check_opened(
    sim: &SimStorage,
    mut model: Model,
    journal: Journal<SimStorage>,
    recovery: &Recovery,
) {
    model.truncate(recovery.last_seq);
    check_journal(&journal, &model, 1);
    let places = layout_of(&model);
    let (end_segment, end) = places.last().map_or((1, SEGMENT_HEADER_LEN), |p| {
        (p.segment, p.offset + p.padded)
    });
    for (id, bytes) in image_of(sim) {
        assert!(
            id <= end_segment || id == recovery.last_seq + 1,
            "stray segment {id}"
        );
        let from = if id == end_segment {
            end
        } else {
            SEGMENT_HEADER_LEN
        };
        if id >= end_segment {
            assert!(
                bytes[from as usize..].iter().all(|&b| b == 0),
                "garbage after the recovered data in segment {id}"
            );
        }
    }
    let mut journal = journal;
    for len in [0, 100, 700] {
        model.append(&mut journal, len);
    }
    assert_eq!(journal.flush().expect("flush"), model.next_seq() - 1);
    drop(journal);
    sim.crash();
    let (journal, recovery) = Journal::open(sim.clone(), config()).expect("reopen");
    assert_eq!(recovery.last_seq, model.next_seq() - 1);
    check_journal(&journal, &model, 1);
}

fn outcome(sim: &SimStorage) -> Result<(Journal<SimStorage>, Recovery), JournalError> {
    Journal::open(sim.clone(), config())
}

/// Where the data of each segment ends (after its last written record).
fn data_ends(places: &[Place]) -> BTreeMap<u64, u64> {
    let mut ends = BTreeMap::new();
    for p in places {
        ends.insert(p.segment, p.offset + p.padded);
    }
    ends
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn tail_damage_then_crash_always_recovers_every_flushed_record(
        history in history(),
        damage in damage(),
        position in any::<u64>(),
        seed in any::<u64>(),
    ) {
        // Proves (a): damage after the last flushed record, then a crash, never fails `open` nor touches flushed records.
        let sim = SimStorage::new(seed);
        let (model, durable) = write(&sim, &history);
        let places = layout_of(&model);
        let flushed = places[(durable - 1) as usize];
        // The tail region: after the last flushed record, to the end of every segment.
        let mut regions = vec![(flushed.segment, flushed.offset + flushed.padded)];
        regions.extend(
            data_ends(&places)
                .keys()
                .filter(|&&id| id > flushed.segment)
                .map(|&id| (id, 0)),
        );
        let written = image_of(&sim);
        let total: u64 = regions.iter().map(|&(_, start)| SEGMENT_BYTES - start).sum();
        prop_assume!(total > 0);
        let mut at = position % total;
        for &(segment, start) in &regions {
            let len = SEGMENT_BYTES - start;
            if at < len {
                apply(&sim, segment, start + at, SEGMENT_BYTES, &damage);
                break;
            }
            at -= len;
        }
        sim.crash();
        let now = image_of(&sim);
        let expect = expected(&model, &places, &written, &now);
        let opened = outcome(&sim);
        let (journal, recovery) = match opened {
            Ok(opened) => opened,
            Err(e) => panic!("tail damage must open: {e} (expected {expect:?})"),
        };
        prop_assert!(recovery.last_seq >= durable);
        prop_assert!(
            matches!(expect, Expected::Opens { .. }),
            "the model thinks tail damage is corruption: {expect:?}"
        );
        prop_assert_eq!(Expected::Opens { last_seq: recovery.last_seq }, expect);
        if now != image_of(&sim) {
            prop_assert!(recovery.truncated_bytes > 0 || !recovery.removed_segments.is_empty());
        }
        check_opened(&sim, model, journal, &recovery);
    }

    #[test]
    fn durable_damage_is_corrupt_whenever_a_later_watermark_vouches_for_it(
        history in history(),
        damage in damage(),
        target in any::<u64>(),
        within in prop_oneof![1 => Just(0u64), 2 => any::<u64>()],
        seed in any::<u64>(),
    ) {
        // Proves (b): damage inside flushed data is `Corrupt` naming file and offset exactly when provable, and otherwise truncated to just before it.
        let sim = SimStorage::new(seed);
        let (model, durable) = write(&sim, &history);
        let places = layout_of(&model);
        let written = image_of(&sim);
        sim.crash();
        let crashed = image_of(&sim);
        // A third of the damage starts at a record's first byte: a zeroed header there looks
        // like the end of the data.
        let place = places[(target % durable) as usize];
        let at = place.offset + within % place.bytes;
        apply(&sim, place.segment, at, data_ends(&places)[&place.segment], &damage);
        let now = image_of(&sim);
        prop_assume!(now != crashed); // zeroing zeros changes nothing
        let expect = expected(&model, &places, &written, &now);
        match (outcome(&sim), &expect) {
            (Err(JournalError::Corrupt { file, offset, reason }), Expected::Corrupt { segment, offset: o }) => {
                prop_assert_eq!(file, StorageReader::describe(&sim, *segment), "{}", reason);
                prop_assert_eq!(offset, *o, "{}", reason);
            }
            (Ok((journal, recovery)), Expected::Opens { last_seq }) => {
                prop_assert_eq!(recovery.last_seq, *last_seq);
                check_opened(&sim, model, journal, &recovery);
            }
            (Err(e), _) => prop_assert!(false, "open failed with {} where {:?} was expected", e, expect),
            (Ok((_, recovery)), _) => {
                prop_assert!(false, "opened ({:?}) where {:?} was expected", recovery, expect)
            }
        }
    }
}
