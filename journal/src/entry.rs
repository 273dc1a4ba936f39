//! The journal's payload for engine commands: the rkyv-encoded (command, outcome) pair, and
//! replay, which re-applies journaled commands to an engine and checks that each outcome is
//! the one journaled (the engine is deterministic, so any difference is a bug or damage).

use payu_engine::{Command, Engine, Outcome, Timestamp};
use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::journal::JournalError;
use crate::reader::Reader;
use crate::storage::StorageReader;

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Entry {
    pub command: Command,
    pub outcome: Outcome,
}

pub fn encode_entry(entry: &Entry) -> AlignedVec {
    let mut encoder = EntryEncoder::default();
    encoder.encode(entry);
    encoder.buffer
}

/// Encodes entries into one reused buffer: the engine thread encodes every command it
/// applies, and a fresh buffer per record had to grow from empty each time. The buffer keeps
/// the capacity of the largest entry encoded: a full transfer batch, about 1 MB.
#[derive(Debug, Default)]
pub struct EntryEncoder {
    buffer: AlignedVec,
}

impl EntryEncoder {
    /// The entry's payload bytes, valid until the next call.
    pub fn encode(&mut self, entry: &Entry) -> &[u8] {
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.clear();
        // Serialising owned in-memory data into a growable buffer cannot fail.
        self.buffer = rkyv::api::high::to_bytes_in::<_, rancor::Error>(entry, buffer)
            .expect("entry serialisation");
        &self.buffer
    }
}

/// Decodes and validates a payload (copying it first if it is not 16-byte aligned).
pub fn decode_entry(payload: &[u8]) -> Result<Entry, String> {
    if (payload.as_ptr() as usize) % 16 == 0 {
        return rkyv::from_bytes::<Entry, rancor::Error>(payload).map_err(|e| e.to_string());
    }
    let mut aligned = AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    rkyv::from_bytes::<Entry, rancor::Error>(&aligned).map_err(|e| e.to_string())
}

#[derive(Debug)]
pub enum ReplayError {
    Journal(JournalError),
    Undecodable {
        seq: u64,
        reason: String,
    },
    /// The record is not the engine's next seq (a gap between snapshot and journal).
    Gap {
        expected: u64,
        found: u64,
    },
    /// Re-applying gave a different outcome than the journaled one.
    Diverged {
        seq: u64,
    },
}

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayError::Journal(error) => error.fmt(f),
            ReplayError::Undecodable { seq, reason } => {
                write!(f, "record {seq} does not decode: {reason}")
            }
            ReplayError::Gap { expected, found } => {
                write!(f, "replay expected seq {expected}, journal has {found}")
            }
            ReplayError::Diverged { seq } => write!(
                f,
                "replaying seq {seq} gave a different outcome than journaled"
            ),
        }
    }
}

impl std::error::Error for ReplayError {}

/// Records decoded per hand-off from the decoding thread to the applying one.
const REPLAY_CHUNK_RECORDS: usize = 1024;
/// Decoded chunks waiting to be applied, at most (bounds replay's memory).
const REPLAY_CHUNKS_IN_FLIGHT: usize = 4;

/// A journal record ready to apply.
struct Decoded {
    seq: u64,
    timestamp: Timestamp,
    entry: Entry,
}

/// Applies every durable record from the engine's next seq on, checking each outcome against
/// the journaled one. Returns how many were applied. Reading and decoding run on a second
/// thread, so the engine (still one thread) only applies.
pub fn replay<R: StorageReader>(
    engine: &mut Engine,
    reader: &mut Reader<R>,
) -> Result<u64, ReplayError> {
    std::thread::scope(|scope| {
        let (chunks, decoded) = std::sync::mpsc::sync_channel(REPLAY_CHUNKS_IN_FLIGHT);
        scope.spawn(move || decode_chunks(reader, chunks));
        let mut applied = 0;
        // Returning early (a divergence) drops `decoded`, which stops the decoding thread.
        for chunk in decoded {
            for record in chunk? {
                apply_checked(engine, record)?;
                applied += 1;
            }
        }
        Ok(applied)
    })
}

/// Reads and decodes records in chunks until the reader catches up, an error, or the
/// applying side hangs up. Records decoded before an error are sent before the error.
fn decode_chunks<R: StorageReader>(
    reader: &mut Reader<R>,
    chunks: std::sync::mpsc::SyncSender<Result<Vec<Decoded>, ReplayError>>,
) {
    loop {
        let (records, error) = decode_chunk(reader);
        let full = records.len() == REPLAY_CHUNK_RECORDS;
        if !records.is_empty() && chunks.send(Ok(records)).is_err() {
            return;
        }
        if let Some(error) = error {
            let _ = chunks.send(Err(error)); // the applier may have stopped already
            return;
        }
        if !full {
            return; // caught up with the durable records
        }
    }
}

fn decode_chunk<R: StorageReader>(reader: &mut Reader<R>) -> (Vec<Decoded>, Option<ReplayError>) {
    let mut chunk = Vec::with_capacity(REPLAY_CHUNK_RECORDS);
    while chunk.len() < REPLAY_CHUNK_RECORDS {
        let record = match reader.next() {
            Ok(Some(record)) => record,
            Ok(None) => break,
            Err(error) => return (chunk, Some(ReplayError::Journal(error))),
        };
        let seq = record.header.seq;
        match decode_entry(record.payload()) {
            Ok(entry) => chunk.push(Decoded {
                seq,
                timestamp: Timestamp(record.header.timestamp),
                entry,
            }),
            Err(reason) => return (chunk, Some(ReplayError::Undecodable { seq, reason })),
        }
    }
    (chunk, None)
}

fn apply_checked(engine: &mut Engine, record: Decoded) -> Result<(), ReplayError> {
    let expected = engine.last_seq() + 1;
    if record.seq != expected {
        return Err(ReplayError::Gap {
            expected,
            found: record.seq,
        });
    }
    let outcome = engine.apply(record.seq, record.timestamp, &record.entry.command);
    if outcome != record.entry.outcome {
        return Err(ReplayError::Diverged { seq: record.seq });
    }
    Ok(())
}

/// What `restore_engine` rebuilt.
#[derive(Debug)]
pub struct Restored {
    pub engine: Engine,
    /// The seq of the snapshot it started from; `None` when it started from genesis.
    pub snapshot_seq: Option<u64>,
    /// Journal records applied after the snapshot.
    pub replayed: u64,
    /// Newer snapshot files passed over, with the reason for each.
    pub rejected_snapshots: Vec<String>,
}

#[derive(Debug)]
pub enum RestoreError {
    Config(String),
    Snapshots(std::io::Error),
    Snapshot {
        path: String,
        error: payu_engine::SnapshotError,
    },
    /// The snapshot includes records the journal does not have as durable: it was taken of
    /// state that never became durable, or the journal lost its tail.
    SnapshotAhead {
        snapshot_seq: u64,
        durable_seq: u64,
    },
    Journal(JournalError),
    Replay(ReplayError),
}

impl std::fmt::Display for RestoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestoreError::Config(reason) => write!(f, "engine configuration: {reason}"),
            RestoreError::Snapshots(error) => write!(f, "listing snapshots: {error}"),
            RestoreError::Snapshot { path, error } => write!(f, "snapshot {path}: {error}"),
            RestoreError::SnapshotAhead {
                snapshot_seq,
                durable_seq,
            } => write!(
                f,
                "snapshot at seq {snapshot_seq} is ahead of the journal's durable seq {durable_seq}"
            ),
            RestoreError::Journal(error) => write!(f, "journal: {error}"),
            RestoreError::Replay(error) => write!(f, "replay: {error}"),
        }
    }
}

impl std::error::Error for RestoreError {}

/// Restart: the newest valid snapshot (or a fresh engine from `genesis` when there is none),
/// then every durable journal record after it, each outcome checked against the journaled one.
pub fn restore_engine<S: crate::Storage>(
    snapshots: &crate::SnapshotStore,
    journal: &crate::Journal<S>,
    genesis: payu_engine::EngineConfig,
) -> Result<Restored, RestoreError> {
    genesis.validate().map_err(RestoreError::Config)?;
    let (newest, rejected_snapshots) = snapshots.load_newest().map_err(RestoreError::Snapshots)?;
    let (mut engine, snapshot_seq) = match newest {
        Some(file) => {
            let engine = Engine::restore(&file.bytes).map_err(|error| RestoreError::Snapshot {
                path: file.path.display().to_string(),
                error,
            })?;
            (engine, Some(file.seq))
        }
        None => {
            Engine::check_reservations(&genesis).map_err(|mib| {
                RestoreError::Config(format!(
                    "the ledger's tables need {mib} MiB of address space up front, which the \
                     system refused: lower engine.accounts_max, engine.holds_active_max, \
                     engine.idempotency_entries_max, engine.refundable_payments_max or \
                     engine.finished_holds_max, or give the node more memory"
                ))
            })?;
            (Engine::new(genesis), None)
        }
    };
    let durable_seq = journal.durable_seq();
    if engine.last_seq() > durable_seq {
        let snapshot_seq = engine.last_seq();
        return Err(RestoreError::SnapshotAhead {
            snapshot_seq,
            durable_seq,
        });
    }
    let mut reader = journal
        .reader(engine.last_seq() + 1)
        .map_err(RestoreError::Journal)?;
    let replayed = replay(&mut engine, &mut reader).map_err(RestoreError::Replay)?;
    Ok(Restored {
        engine,
        snapshot_seq,
        replayed,
        rejected_snapshots,
    })
}

#[cfg(test)]
mod tests {
    use payu_engine::{
        AccountId, Amount, Command, CommandBody, CommandResult, Currency, IdempotencyKey, Outcome,
        RejectCode, Transfer,
    };

    use super::*;

    fn entry(key: u128, transfers: usize) -> Entry {
        let transfer = |n: usize| Transfer {
            from: AccountId(n as u64 + 2),
            to: AccountId(n as u64 + 3),
            amount: Amount::whole(n as u64 + 1),
            currency: Currency::IDR,
        };
        let body = match transfers {
            1 => CommandBody::Transfer(transfer(0)),
            n => CommandBody::TransferBatch((0..n).map(transfer).collect()),
        };
        Entry {
            command: Command {
                key: IdempotencyKey(key),
                body,
            },
            outcome: Outcome {
                result: CommandResult::Rejected(RejectCode::AccountNotFound),
                expired_holds: Vec::new(),
            },
        }
    }

    #[test]
    fn a_reused_encoder_encodes_each_entry_as_a_fresh_buffer_does() {
        let mut encoder = EntryEncoder::default();
        // Large, then small, then large again: nothing of an earlier entry may survive.
        for (key, transfers) in [(1, 1000), (2, 1), (3, 7), (4, 1000), (5, 1)] {
            let entry = entry(key, transfers);
            let encoded = encoder.encode(&entry).to_vec();
            assert_eq!(encoded, encode_entry(&entry).to_vec(), "entry {key}");
            assert_eq!(decode_entry(&encoded), Ok(entry), "entry {key}");
        }
    }
}
