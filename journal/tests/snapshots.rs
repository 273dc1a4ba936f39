//! Snapshot files (save, load the newest valid one, keep a few, ignore leftovers) and the
//! end-to-end path recovery takes: restore the newest engine snapshot, then replay the
//! journal after it, which must rebuild the very same engine and catch a tampered outcome.

use std::fs;
use std::path::Path;

use payu_engine::{
    AccountId, AccountKind, Amount, Command, CommandBody, CommandResult, Currency, Deposit, Engine,
    EngineConfig, IdempotencyKey, NANOS_PER_SECOND, OpenAccount, OwnerId, RejectCode, Timestamp,
    Transfer, Withdrawal,
};
use payu_journal::{
    Entry, FlushMode, Journal, JournalConfig, JournalError, MmapStorage, ReplayError, RestoreError,
    SNAPSHOTS_KEPT, SnapshotStore, encode_entry, replay, restore_engine,
};

fn snapshot_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".snapshot"))
        .collect();
    names.sort();
    names
}

#[test]
fn saved_snapshots_load_back_newest_first() {
    // Proves: `load_newest` returns the newest saved snapshot's seq, path and bytes, and nothing when there is none.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(dir.path()).expect("store");
    assert_eq!(store.load_newest().expect("load"), (None, Vec::new()));
    store.save(10, b"ten").expect("save");
    let path = store.save(20, b"twenty").expect("save");
    store.save(15, b"fifteen, saved later").expect("save");
    let (newest, rejected) = store.load_newest().expect("load");
    let newest = newest.expect("a snapshot");
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(newest.seq, 20);
    assert_eq!(newest.path, path);
    assert_eq!(newest.bytes, b"twenty");
    // Empty snapshot bytes are valid too.
    store.save(30, b"").expect("save");
    let (newest, _) = store.load_newest().expect("load");
    assert_eq!(newest.expect("a snapshot").bytes, b"");
}

/// Damages a snapshot file's bytes.
type Damage = fn(&mut Vec<u8>);

#[test]
fn a_damaged_newest_snapshot_is_skipped_with_a_reason() {
    // Proves: a newest snapshot with a flipped byte, a wrong header or a cut-off body is passed over for the previous valid one, and each reason is reported.
    let damages: [(&str, Damage); 4] = [
        ("CRC32C mismatch", |b| b[40] ^= 0x10),
        ("seq or length does not match", |b| b[16] ^= 1),
        ("bad magic or version", |b| b[0] ^= 0x80),
        ("shorter than its header", |b| b.truncate(20)),
    ];
    for (reason, damage) in damages {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SnapshotStore::open(dir.path()).expect("store");
        store.save(10, &[1u8; 64]).expect("save");
        store.save(20, &[2u8; 64]).expect("save");
        let newest = store.save(30, &[3u8; 64]).expect("save");
        let mut bytes = fs::read(&newest).expect("read");
        damage(&mut bytes);
        fs::write(&newest, bytes).expect("write");
        let (loaded, rejected) = store.load_newest().expect("load");
        let loaded = loaded.expect("an older valid snapshot");
        assert_eq!(loaded.seq, 20, "{reason}");
        assert_eq!(loaded.bytes, [2u8; 64]);
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert!(
            rejected[0].contains(&newest.display().to_string()) && rejected[0].contains(reason),
            "expected {reason:?} naming the file, got {rejected:?}"
        );
    }
}

#[test]
fn only_the_newest_snapshots_kept_remain() {
    // Proves: after each save at most SNAPSHOTS_KEPT snapshot files remain, and they are the newest.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(dir.path()).expect("store");
    for seq in 1..=(SNAPSHOTS_KEPT as u64 + 4) {
        store.save(seq * 100, &seq.to_le_bytes()).expect("save");
        let kept = snapshot_files(dir.path());
        let oldest_kept = seq.saturating_sub(SNAPSHOTS_KEPT as u64) + 1;
        let expected: Vec<String> = (oldest_kept..=seq)
            .map(|s| format!("{:020}.snapshot", s * 100))
            .collect();
        assert_eq!(kept, expected);
    }
}

#[test]
fn a_leftover_temp_file_is_ignored() {
    // Proves: a `.tmp` left by a crash mid-save is neither loaded, nor reported, nor counted as a kept snapshot.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(dir.path()).expect("store");
    store.save(10, b"ten").expect("save");
    fs::write(
        dir.path().join(format!("{:020}.snapshot.tmp", 99)),
        b"half a snapshot",
    )
    .expect("plant a temp file");
    let (newest, rejected) = store.load_newest().expect("load");
    assert_eq!(newest.expect("a snapshot").seq, 10);
    assert!(rejected.is_empty(), "{rejected:?}");
    for seq in 11..=(10 + SNAPSHOTS_KEPT as u64) {
        store.save(seq, b"more").expect("save");
    }
    assert_eq!(snapshot_files(dir.path()).len(), SNAPSHOTS_KEPT);
    let (newest, _) = store.load_newest().expect("load");
    assert_eq!(newest.expect("a snapshot").seq, 10 + SNAPSHOTS_KEPT as u64);
}

const COMMANDS: u64 = 60;
const SNAPSHOT_AT: u64 = 25;
const START: Timestamp = Timestamp(1_764_028_800 * NANOS_PER_SECOND);

fn open_account(kind: AccountKind, owner: u128) -> CommandBody {
    CommandBody::OpenAccount(OpenAccount {
        owner: OwnerId(owner),
        kind,
        tier: 1,
        currency: Currency::IDR,
        overdraft_limit: Amount::ZERO,
    })
}

/// The `i`-th command (from 1) of a small banking day: accounts, deposits, transfers (some
/// refused for lack of funds), withdrawals.
fn command(i: u64) -> Command {
    let settlement = AccountId(1);
    let customer = |n: u64| AccountId(2 + n % 3);
    let body = match i {
        1 => open_account(AccountKind::Settlement, 1),
        2..=4 => open_account(AccountKind::Customer, u128::from(i)),
        _ if i % 5 == 0 => CommandBody::Deposit(Deposit {
            settlement,
            account: customer(i),
            amount: Amount::whole(1_000 * i),
            currency: Currency::IDR,
        }),
        _ if i % 7 == 0 => CommandBody::Withdrawal(Withdrawal {
            account: customer(i),
            settlement,
            amount: Amount::whole(300 * i),
            currency: Currency::IDR,
        }),
        _ => CommandBody::Transfer(Transfer {
            from: customer(i),
            to: customer(i + 1),
            amount: Amount::whole(500 * i),
            currency: Currency::IDR,
        }),
    };
    Command {
        key: IdempotencyKey(u128::from(i) << 64 | 0xabc),
        body,
    }
}

fn journal_config() -> JournalConfig {
    JournalConfig {
        segment_bytes: 16 << 10,
    }
}

fn open_journal(dir: &Path) -> Journal<MmapStorage> {
    let storage = MmapStorage::open(dir, FlushMode::Auto).expect("journal dir");
    Journal::open(storage, journal_config()).expect("journal").0
}

/// Runs the commands through an engine, journaling each (command, outcome) and snapshotting at
/// `SNAPSHOT_AT`. `tamper` may change the outcome journaled for a seq. Returns the engine.
fn run(dir: &Path, tamper: impl Fn(u64, &mut Entry)) -> Engine {
    let mut engine = Engine::new(EngineConfig::default());
    let mut journal = open_journal(&dir.join("journal"));
    let snapshots = SnapshotStore::open(&dir.join("snapshots")).expect("snapshots");
    for i in 1..=COMMANDS {
        let seq = journal.next_seq();
        let timestamp = Timestamp(START.0 + i * 60 * NANOS_PER_SECOND);
        let command = command(i);
        let outcome = engine.apply(seq, timestamp, &command);
        let mut entry = Entry { command, outcome };
        tamper(seq, &mut entry);
        journal
            .append(1, timestamp.0, &encode_entry(&entry))
            .expect("append");
        if i % 4 == 0 || i == SNAPSHOT_AT {
            journal.flush().expect("flush");
        }
        if i == SNAPSHOT_AT {
            snapshots
                .save(engine.last_seq(), &engine.snapshot())
                .expect("snapshot");
        }
    }
    journal.flush().expect("flush");
    engine
}

/// Recovery: the newest snapshot, then the journal after it (`restore_engine`).
fn recover(dir: &Path) -> (Engine, Result<u64, ReplayError>) {
    let journal = open_journal(&dir.join("journal"));
    let snapshots = SnapshotStore::open(&dir.join("snapshots")).expect("snapshots");
    let snapshot = snapshots
        .load_newest()
        .expect("load")
        .0
        .expect("a snapshot");
    match restore_engine(&snapshots, &journal, EngineConfig::default()) {
        Ok(restored) => {
            assert_eq!(restored.snapshot_seq, Some(snapshot.seq));
            assert!(restored.rejected_snapshots.is_empty());
            (restored.engine, Ok(restored.replayed))
        }
        Err(RestoreError::Replay(error)) => {
            // Replay stopped part way: rebuild the engine to where it stopped, for inspection.
            let mut engine = Engine::restore(&snapshot.bytes).expect("restore");
            let mut reader = journal.reader(snapshot.seq + 1).expect("reader");
            let again = replay(&mut engine, &mut reader);
            assert_eq!(format!("{again:?}"), format!("{:?}", Err::<u64, _>(error)));
            (engine, again)
        }
        Err(other) => panic!("restore failed: {other}"),
    }
}

#[test]
fn restart_without_a_snapshot_replays_from_genesis_and_refuses_inconsistent_inputs() {
    // Proves: with no snapshot, restore_engine replays the whole journal; a snapshot ahead of
    // the journal, or a journal that no longer reaches back to the snapshot, is an error.
    let dir = tempfile::tempdir().expect("tempdir");
    let original = run(dir.path(), |_, _| {});
    let journal = open_journal(&dir.path().join("journal"));
    let empty = SnapshotStore::open(&dir.path().join("no-snapshots")).expect("snapshots");
    let restored = restore_engine(&empty, &journal, EngineConfig::default()).expect("restore");
    assert_eq!((restored.snapshot_seq, restored.replayed), (None, COMMANDS));
    assert_eq!(restored.engine, original);

    let ahead = SnapshotStore::open(&dir.path().join("ahead")).expect("snapshots");
    let mut further = original.clone();
    further.apply(
        further.last_seq() + 1,
        further.last_timestamp(),
        &command(1),
    );
    ahead
        .save(further.last_seq(), &further.snapshot())
        .expect("save");
    match restore_engine(&ahead, &journal, EngineConfig::default()) {
        Err(RestoreError::SnapshotAhead {
            snapshot_seq,
            durable_seq,
        }) => {
            assert_eq!((snapshot_seq, durable_seq), (COMMANDS + 1, COMMANDS));
        }
        other => panic!("expected SnapshotAhead, got {other:?}"),
    }
    let bad_genesis = EngineConfig {
        tiers: Vec::new(),
        ..EngineConfig::default()
    };
    let refused = restore_engine(&empty, &journal, bad_genesis);
    assert!(
        matches!(refused, Err(RestoreError::Config(_))),
        "{refused:?}"
    );

    // Retention removes the early segments: replay from genesis can no longer start.
    let mut journal = journal;
    let removed = journal.remove_covered(COMMANDS).expect("retention");
    assert!(!removed.is_empty());
    let gone = restore_engine(&empty, &journal, EngineConfig::default());
    assert!(
        matches!(
            gone,
            Err(RestoreError::Journal(JournalError::Unavailable { .. }))
        ),
        "{gone:?}"
    );
}

#[test]
fn retention_can_archive_instead_of_delete() {
    // Proves: with an archive directory, retention moves whole covered segments there intact.
    let dir = tempfile::tempdir().expect("tempdir");
    run(dir.path(), |_, _| {});
    let archive = dir.path().join("archive");
    let storage = MmapStorage::open(&dir.path().join("journal"), FlushMode::Auto)
        .and_then(|s| s.with_archive(&archive))
        .expect("storage");
    let (mut journal, _) = Journal::open(storage, journal_config()).expect("journal");
    let removed = journal.remove_covered(COMMANDS).expect("retention");
    assert!(!removed.is_empty());
    for segment in &removed {
        let archived = payu_journal::segment_path(&archive, *segment);
        let length = fs::metadata(&archived).expect("archived segment").len();
        assert_eq!(length, journal_config().segment_bytes);
        assert!(!payu_journal::segment_path(&dir.path().join("journal"), *segment).exists());
    }
    assert_eq!(
        journal.first_seq(),
        *journal_segments(&journal).first().expect("a segment")
    );
}

fn journal_segments(journal: &Journal<MmapStorage>) -> Vec<u64> {
    payu_journal::Storage::segments(journal.storage()).expect("segments")
}

#[test]
fn snapshot_plus_journal_replay_rebuilds_the_same_engine() {
    // Proves: restoring the newest snapshot and replaying the journal after it gives an engine equal to the one that wrote them.
    let dir = tempfile::tempdir().expect("tempdir");
    let original = run(dir.path(), |_, _| {});
    assert_eq!(original.stats().accounts, 4, "the accounts were opened");
    let (recovered, replayed) = recover(dir.path());
    assert_eq!(replayed.expect("replay"), COMMANDS - SNAPSHOT_AT);
    assert_eq!(recovered, original);
    assert_eq!(recovered.snapshot(), original.snapshot());
    recovered.verify().expect("ledger invariants");
}

#[test]
fn replay_catches_a_tampered_outcome_and_a_gap() {
    // Proves: a journaled outcome the engine does not reproduce is `ReplayError::Diverged` at its seq, and a reader that skips a seq is `Gap`.
    let tampered_seq = SNAPSHOT_AT + 10;
    let dir = tempfile::tempdir().expect("tempdir");
    run(dir.path(), |seq, entry| {
        if seq == tampered_seq {
            assert_ne!(
                entry.outcome.result,
                CommandResult::Rejected(RejectCode::AccountFrozen)
            );
            entry.outcome.result = CommandResult::Rejected(RejectCode::AccountFrozen);
        }
    });
    let (engine, replayed) = recover(dir.path());
    match replayed {
        Err(ReplayError::Diverged { seq }) => assert_eq!(seq, tampered_seq),
        other => panic!("expected Diverged at {tampered_seq}, got {other:?}"),
    }
    assert_eq!(engine.last_seq(), tampered_seq, "stopped at the divergence");

    let journal = open_journal(&dir.path().join("journal"));
    let snapshots = SnapshotStore::open(&dir.path().join("snapshots")).expect("snapshots");
    let snapshot = snapshots.load_newest().expect("load").0.expect("snapshot");
    let mut engine = Engine::restore(&snapshot.bytes).expect("restore");
    let mut reader = journal.reader(snapshot.seq + 2).expect("reader");
    match replay(&mut engine, &mut reader) {
        Err(ReplayError::Gap { expected, found }) => {
            assert_eq!((expected, found), (snapshot.seq + 1, snapshot.seq + 2));
        }
        other => panic!("expected Gap, got {other:?}"),
    }
}

#[test]
fn replay_applies_every_record_before_an_undecodable_one() {
    // Proves: replay (which decodes on a second thread, in chunks) applies every good record
    // before a bad payload, across chunk boundaries, then stops with `Undecodable` at its seq.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut journal = open_journal(dir.path());
    let mut engine = Engine::new(EngineConfig::default());
    let open = |i: u64| Command {
        key: IdempotencyKey(u128::from(i)),
        body: open_account(AccountKind::Customer, u128::from(i)),
    };
    let good = 2_500; // more than two decode chunks
    for i in 1..=good {
        let seq = journal.next_seq();
        let outcome = engine.apply(seq, START, &open(i));
        let entry = Entry {
            command: open(i),
            outcome,
        };
        journal
            .append(1, START.0, &encode_entry(&entry))
            .expect("append");
    }
    journal
        .append(1, START.0, &[0xa5; 48])
        .expect("append garbage");
    journal.flush().expect("flush");
    let mut replayed = Engine::new(EngineConfig::default());
    let mut reader = journal.reader(1).expect("reader");
    match replay(&mut replayed, &mut reader) {
        Err(ReplayError::Undecodable { seq, .. }) => assert_eq!(seq, good + 1),
        other => panic!("expected Undecodable, got {other:?}"),
    }
    assert_eq!(replayed, engine, "every good record was applied");
}

#[test]
fn replay_refuses_a_payload_that_is_not_an_entry() {
    // Proves: a record whose payload does not decode as an `Entry` stops replay with `Undecodable` at its seq.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut journal = open_journal(dir.path());
    journal
        .append(1, START.0, &[0xa5; 48])
        .expect("append garbage");
    journal.flush().expect("flush");
    let mut engine = Engine::new(EngineConfig::default());
    let mut reader = journal.reader(1).expect("reader");
    match replay(&mut engine, &mut reader) {
        Err(ReplayError::Undecodable { seq, .. }) => assert_eq!(seq, 1),
        other => panic!("expected Undecodable, got {other:?}"),
    }
    assert_eq!(engine.last_seq(), 0, "nothing applied");
}
