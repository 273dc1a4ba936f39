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
    // Serialising owned in-memory data into a growable buffer cannot fail.
    rkyv::to_bytes::<rancor::Error>(entry).expect("entry serialisation")
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

/// Applies every durable record from the engine's next seq on. Returns how many were applied.
pub fn replay<R: StorageReader>(
    engine: &mut Engine,
    reader: &mut Reader<R>,
) -> Result<u64, ReplayError> {
    let mut applied = 0;
    while let Some(record) = reader.next().map_err(ReplayError::Journal)? {
        let seq = record.header.seq;
        let expected = engine.last_seq() + 1;
        if seq != expected {
            return Err(ReplayError::Gap {
                expected,
                found: seq,
            });
        }
        let entry = decode_entry(record.payload())
            .map_err(|reason| ReplayError::Undecodable { seq, reason })?;
        let outcome = engine.apply(seq, Timestamp(record.header.timestamp), &entry.command);
        if outcome != entry.outcome {
            return Err(ReplayError::Diverged { seq });
        }
        applied += 1;
    }
    Ok(applied)
}
