//! Snapshots: the whole engine state as rkyv bytes, and back. The engine only turns state into
//! bytes and bytes into state; writing the file safely (temp, fsync, rename) is the journal's job.
//!
//! The snapshot is a separate, Vec-shaped type rather than the in-memory structures themselves:
//! hash maps are written as sorted lists and rebuilt on restore, so the same state always gives
//! the same bytes, and the in-memory layout can change without changing the format.

use std::collections::VecDeque;

use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::config::EngineConfig;
use crate::engine::Engine;
use crate::ids::Timestamp;
use crate::state::{Account, FinishedHold, Hold, IdempotencyEntry, PaymentRecord, Pocket};
use crate::window::Window;

/// Bumped whenever `EngineSnapshot`'s shape changes; restore refuses other versions.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct EngineSnapshot {
    format_version: u32,
    config: EngineConfig,
    last_seq: u64,
    last_timestamp: Timestamp,
    next_txn: u64,
    next_hold: u64,
    accounts: Vec<Account>,
    /// In id order.
    pockets: Vec<Pocket>,
    /// In id order.
    holds: Vec<Hold>,
    finished_holds: Vec<FinishedHold>,
    finished_holds_evicted_early: u64,
    payments: Vec<PaymentRecord>,
    payments_evicted_early: u64,
    idempotency: Vec<IdempotencyEntry>,
    idempotency_evicted_early: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotError {
    /// The bytes are not a well-formed snapshot.
    Decode(String),
    Version {
        found: u32,
        expected: u32,
    },
    /// Well-formed, but the state breaks an engine invariant.
    Invalid(String),
}

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotError::Decode(reason) => write!(f, "snapshot does not decode: {reason}"),
            SnapshotError::Version { found, expected } => {
                write!(
                    f,
                    "snapshot format version {found}, this build reads {expected}"
                )
            }
            SnapshotError::Invalid(reason) => write!(f, "snapshot breaks an invariant: {reason}"),
        }
    }
}

impl std::error::Error for SnapshotError {}

/// The engine's state copied out for a snapshot. Copying is the only part that must stop the
/// engine thread; `encode`, which costs several times more, runs on any thread meanwhile.
pub struct SnapshotState(EngineSnapshot, Option<SnapshotMirror>);

/// The biggest parts of the state, copied and kept current by the engine thread between
/// snapshots, a few items per batch ([`Engine::sync_snapshot_mirror`]), so that a snapshot
/// that carries the mirror ([`Engine::snapshot_into_mirrored`]) copies only the rest:
/// - the idempotency window (64 bytes per command, most of a snapshot). An entry never changes
///   once it is in the window: entries are pushed at the back and leave from the front, so a
///   sync drops what left and copies what came;
/// - the accounts (96 bytes each). The engine records which accounts change, and a sync
///   copies those and the new ones.
///
/// The mirror becomes the encoded lists on the thread that encodes.
#[derive(Debug)]
pub struct SnapshotMirror {
    items: VecDeque<IdempotencyEntry>,
    /// The window position of `items[0]` (positions count every entry ever pushed).
    first_position: u64,
    /// Which copy of the accounts this is, for the engine that keeps it (`Accounts`).
    accounts_id: u64,
    accounts: Vec<Account>,
}

impl SnapshotMirror {
    /// Idempotency entries held.
    pub fn idempotency_entries(&self) -> usize {
        self.items.len()
    }

    /// Accounts held.
    pub fn accounts(&self) -> usize {
        self.accounts.len()
    }
}

impl SnapshotState {
    /// The last seq the state includes.
    pub fn seq(&self) -> u64 {
        self.0.last_seq
    }

    /// The snapshot bytes. Equal states give equal bytes, with or without a mirror.
    pub fn encode(&mut self) -> Vec<u8> {
        self.encode_sized(0)
    }

    /// `encode` into a buffer allocated for `bytes_hint` bytes up front (the size of the last
    /// snapshot, say), instead of one that doubles its way there, copying as it grows. A
    /// mirror's lists are lent to the encoded ones and taken back (in place, no copy, unless
    /// the window's ring wrapped: then it is straightened here, on the encoding thread).
    pub fn encode_sized(&mut self, bytes_hint: usize) -> Vec<u8> {
        if let Some(mirror) = self.1.as_mut() {
            self.0.idempotency = Vec::from(std::mem::take(&mut mirror.items));
            self.0.accounts = std::mem::take(&mut mirror.accounts);
        }
        let buffer = AlignedVec::<16>::with_capacity(bytes_hint);
        let bytes = rkyv::api::high::to_bytes_in::<_, rancor::Error>(&self.0, buffer);
        if let Some(mirror) = self.1.as_mut() {
            mirror.items = VecDeque::from(std::mem::take(&mut self.0.idempotency));
            mirror.accounts = std::mem::take(&mut self.0.accounts);
        }
        // Serialising owned, in-memory data into a growable buffer cannot fail.
        bytes.expect("snapshot serialisation").into_vec()
    }

    /// The mirror this state carried, to be synced and used for the next snapshot.
    pub fn take_mirror(&mut self) -> Option<SnapshotMirror> {
        self.1.take()
    }
}

/// Replaces `buffer`'s contents with `items`, keeping its allocation.
fn refill<T: Clone>(buffer: &mut Vec<T>, items: impl Iterator<Item = T>) {
    buffer.clear();
    buffer.extend(items);
}

impl Engine {
    /// The whole state as bytes. Equal states give equal bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        self.snapshot_state().encode()
    }

    /// The whole state copied out, to be encoded elsewhere (`SnapshotState::encode`).
    pub fn snapshot_state(&self) -> SnapshotState {
        let mut state = self.empty_snapshot_state();
        self.snapshot_into(&mut state);
        state
    }

    /// `snapshot_state`, with `mirror` carrying the window and the accounts
    /// (`snapshot_into_mirrored`).
    pub fn snapshot_state_mirrored(&mut self, mirror: SnapshotMirror) -> SnapshotState {
        let mut state = self.empty_snapshot_state();
        self.snapshot_into_mirrored(&mut state, mirror);
        state
    }

    fn empty_snapshot_state(&self) -> SnapshotState {
        SnapshotState(
            EngineSnapshot {
                format_version: SNAPSHOT_FORMAT_VERSION,
                config: self.config.clone(),
                last_seq: 0,
                last_timestamp: Timestamp(0),
                next_txn: 0,
                next_hold: 0,
                accounts: Vec::new(),
                pockets: Vec::new(),
                holds: Vec::new(),
                finished_holds: Vec::new(),
                finished_holds_evicted_early: 0,
                payments: Vec::new(),
                payments_evicted_early: 0,
                idempotency: Vec::new(),
                idempotency_evicted_early: 0,
            },
            None,
        )
    }

    /// A mirror of the idempotency window and the accounts, in step now: one whole copy. The
    /// window's bound is allocated up front (touched as used), so keeping it in step never
    /// regrows it. From now on the engine records account changes for this mirror (and no
    /// other: an older one is copied whole again at its next sync).
    pub fn snapshot_mirror(&mut self) -> SnapshotMirror {
        let bound = usize::try_from(self.config.idempotency_entries_max).unwrap_or(usize::MAX);
        let (accounts_id, accounts) = self.accounts.new_mirror();
        let mut mirror = SnapshotMirror {
            items: VecDeque::with_capacity(bound.max(self.idempotency.len())),
            first_position: 0,
            accounts_id,
            accounts,
        };
        self.sync_snapshot_mirror(&mut mirror);
        mirror
    }

    /// Brings `mirror` in step with the engine:
    /// - the window: drops the entries that left it and copies the ones that entered since the
    ///   last sync;
    /// - the accounts: copies those changed since the last sync, and the new ones.
    ///
    /// A mirror from another engine (or one that fell behind by more than the window holds,
    /// or whose account changes this engine stopped recording) is rebuilt whole.
    pub fn sync_snapshot_mirror(&mut self, mirror: &mut SnapshotMirror) {
        let (first, items) = self.idempotency.positioned_items();
        let end = first + items.len() as u64;
        let mirror_end = mirror.first_position + mirror.items.len() as u64;
        if mirror.first_position > first || mirror_end < first || mirror_end > end {
            mirror.items.clear();
            mirror.first_position = first;
        }
        let gone = (first - mirror.first_position) as usize;
        mirror.items.drain(..gone);
        mirror.first_position = first;
        let held = mirror.items.len();
        mirror.items.extend(items.range(held..).cloned());
        mirror.accounts_id = self
            .accounts
            .sync_mirror(mirror.accounts_id, &mut mirror.accounts);
    }

    /// Copies the whole state into `state`, overwriting what it held and reusing its buffers:
    /// copying into memory already faulted in is several times faster than into fresh pages,
    /// and the copy is what stops the engine thread.
    pub fn snapshot_into(&self, state: &mut SnapshotState) {
        self.copy_unmirrored(state);
        refill(&mut state.0.accounts, self.accounts.iter().cloned());
        refill(&mut state.0.idempotency, self.idempotency.items().cloned());
        state.1 = None;
    }

    /// `snapshot_into` without copying the idempotency window or the accounts: `mirror` (synced
    /// here first, which copies only what changed since its last sync) travels in the state
    /// instead and is written out by `encode`. Take it back with `SnapshotState::take_mirror`.
    pub fn snapshot_into_mirrored(
        &mut self,
        state: &mut SnapshotState,
        mut mirror: SnapshotMirror,
    ) {
        self.sync_snapshot_mirror(&mut mirror);
        self.copy_unmirrored(state);
        state.0.accounts = Vec::new();
        state.0.idempotency = Vec::new();
        state.1 = Some(mirror);
    }

    /// Copies everything a mirror does not carry.
    fn copy_unmirrored(&self, state: &mut SnapshotState) {
        let s = &mut state.0;
        s.format_version = SNAPSHOT_FORMAT_VERSION;
        s.config = self.config.clone();
        s.last_seq = self.last_seq;
        s.last_timestamp = self.last_timestamp;
        s.next_txn = self.next_txn;
        s.next_hold = self.next_hold;
        refill(&mut s.pockets, self.pockets.values().cloned());
        refill(&mut s.holds, self.holds.values().cloned());
        s.holds.sort_unstable_by_key(|hold| hold.id);
        refill(&mut s.finished_holds, self.finished_holds.items().cloned());
        s.finished_holds_evicted_early = self.finished_holds.evicted_early;
        refill(&mut s.payments, self.payments.items().cloned());
        s.payments_evicted_early = self.payments.evicted_early;
        s.idempotency_evicted_early = self.idempotency.evicted_early;
    }

    /// Rebuilds an engine from `snapshot` bytes, validating both the encoding and every
    /// invariant, so a damaged or forged snapshot is an error, never a wrong ledger.
    pub fn restore(bytes: &[u8]) -> Result<Engine, SnapshotError> {
        let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        let snapshot = rkyv::from_bytes::<EngineSnapshot, rancor::Error>(&aligned)
            .map_err(|e| SnapshotError::Decode(e.to_string()))?;
        if snapshot.format_version != SNAPSHOT_FORMAT_VERSION {
            return Err(SnapshotError::Version {
                found: snapshot.format_version,
                expected: SNAPSHOT_FORMAT_VERSION,
            });
        }
        snapshot.config.validate().map_err(SnapshotError::Invalid)?;
        let mut engine = Engine::new(snapshot.config);
        engine.last_seq = snapshot.last_seq;
        engine.last_timestamp = snapshot.last_timestamp;
        engine.next_txn = snapshot.next_txn;
        engine.next_hold = snapshot.next_hold;
        engine.accounts.extend(snapshot.accounts);
        engine.pockets = snapshot.pockets.into_iter().map(|p| (p.id, p)).collect();
        for hold in snapshot.holds {
            engine.hold_deadlines.insert((hold.expires_at, hold.id));
            engine.holds.insert(hold.id, hold);
        }
        let config = &engine.config;
        engine.finished_holds = Window::from_items(
            snapshot.finished_holds,
            snapshot.finished_holds_evicted_early,
            config.finished_holds_max,
        );
        engine.payments = Window::from_items(
            snapshot.payments,
            snapshot.payments_evicted_early,
            config.refundable_payments_max,
        );
        engine.idempotency = Window::from_items(
            snapshot.idempotency,
            snapshot.idempotency_evicted_early,
            config.idempotency_entries_max,
        );
        engine.verify().map_err(SnapshotError::Invalid)?;
        Ok(engine)
    }
}
