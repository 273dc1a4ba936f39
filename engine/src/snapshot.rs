//! Snapshots: the whole engine state as rkyv bytes, and back. The engine only turns state into
//! bytes and bytes into state; writing the file safely (temp, fsync, rename) is the journal's job.
//!
//! The snapshot is a separate, Vec-shaped type rather than the in-memory structures themselves:
//! hash maps are written as sorted lists and rebuilt on restore, so the same state always gives
//! the same bytes, and the in-memory layout can change without changing the format.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound::{Excluded, Unbounded};

use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::config::EngineConfig;
use crate::engine::Engine;
use crate::ids::{AccountId, HoldId, Timestamp};
use crate::state::{Account, FinishedHold, Hold, IdempotencyEntry, PaymentRecord, Pocket};
use crate::window::{Window, WindowMirror};

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
    /// The system refuses the address space (MiB) the snapshot's bounds reserve up front.
    AddressSpace {
        mib: u128,
    },
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
            SnapshotError::AddressSpace { mib } => write!(
                f,
                "the ledger's tables, sized by the bounds it was created with, need {mib} MiB \
                 of address space up front, which the system refused: give the node more memory"
            ),
        }
    }
}

impl std::error::Error for SnapshotError {}

/// The engine's state copied out for a snapshot. Copying is the only part that must stop the
/// engine thread; `encode`, which costs several times more, runs on any thread meanwhile.
pub struct SnapshotState(EngineSnapshot, Option<SnapshotMirror>);

/// The bulk of the state, copied and kept current by the engine thread between snapshots, a
/// few items per batch ([`Engine::sync_snapshot_mirror`]), so that a snapshot that carries the
/// mirror ([`Engine::snapshot_into_mirrored`]) copies only a few counters:
/// - the idempotency window (64 bytes per command, most of a snapshot), finished holds and
///   refundable payments. Items enter a window at the back and leave from the front, so a
///   sync drops what left and copies what came, and the few payments a refund changed;
/// - the accounts (96 bytes each). The engine records which accounts change, and a sync
///   copies those and the new ones;
/// - the active holds, which come and go (recorded the same way), and the pockets, which
///   only come, each with an id above all before it.
///
/// The mirror becomes the encoded lists on the thread that encodes.
#[derive(Debug)]
pub struct SnapshotMirror {
    /// Which copy this is, for the engine that keeps it in step (`Accounts`): a sync against
    /// an engine that does not record its changes copies everything whole.
    id: u64,
    accounts: Vec<Account>,
    /// In id order, as encoded.
    pockets: Vec<Pocket>,
    holds: BTreeMap<HoldId, Hold>,
    idempotency: WindowMirror<IdempotencyEntry>,
    finished_holds: WindowMirror<FinishedHold>,
    payments: WindowMirror<PaymentRecord>,
}

impl SnapshotMirror {
    /// Idempotency entries held.
    pub fn idempotency_entries(&self) -> usize {
        self.idempotency.items.len()
    }

    /// Accounts held.
    pub fn accounts(&self) -> usize {
        self.accounts.len()
    }
}

/// Moves `from`'s items into `to`, keeping the buffer (a ring that wrapped is straightened).
fn lend<T>(from: &mut VecDeque<T>, to: &mut Vec<T>) {
    *to = Vec::from(std::mem::take(from));
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
            self.0.accounts = std::mem::take(&mut mirror.accounts);
            self.0.pockets = std::mem::take(&mut mirror.pockets);
            // Kept by id in a map; listed in id order here, on the encoding thread.
            refill(&mut self.0.holds, mirror.holds.values().cloned());
            lend(&mut mirror.idempotency.items, &mut self.0.idempotency);
            lend(&mut mirror.finished_holds.items, &mut self.0.finished_holds);
            lend(&mut mirror.payments.items, &mut self.0.payments);
        }
        let buffer = AlignedVec::<16>::with_capacity(bytes_hint);
        let bytes = rkyv::api::high::to_bytes_in::<_, rancor::Error>(&self.0, buffer);
        if let Some(mirror) = self.1.as_mut() {
            mirror.accounts = std::mem::take(&mut self.0.accounts);
            mirror.pockets = std::mem::take(&mut self.0.pockets);
            self.0.holds = Vec::new();
            mirror.idempotency.items = VecDeque::from(std::mem::take(&mut self.0.idempotency));
            mirror.finished_holds.items =
                VecDeque::from(std::mem::take(&mut self.0.finished_holds));
            mirror.payments.items = VecDeque::from(std::mem::take(&mut self.0.payments));
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

    /// `snapshot_state`, with `mirror` carrying the accounts and the windows
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

    /// A mirror of the windows and the accounts, in step now: one whole copy. Each window's
    /// bound is allocated up front (touched as used), so keeping the mirror in step never
    /// regrows it. From now on the engine records changes for this mirror (and no other: an
    /// older one is copied whole again at its next sync).
    pub fn snapshot_mirror(&mut self) -> SnapshotMirror {
        let bound = |max: u64, held: usize| usize::try_from(max).unwrap_or(usize::MAX).max(held);
        let config = &self.config;
        let mut mirror = SnapshotMirror {
            id: 0,
            accounts: Vec::new(),
            pockets: Vec::new(),
            holds: BTreeMap::new(),
            idempotency: WindowMirror::with_capacity(bound(
                config.idempotency_entries_max,
                self.idempotency.len(),
            )),
            finished_holds: WindowMirror::with_capacity(bound(
                config.finished_holds_max,
                self.finished_holds.len(),
            )),
            payments: WindowMirror::with_capacity(bound(
                config.refundable_payments_max,
                self.payments.len(),
            )),
        };
        self.sync_snapshot_mirror(&mut mirror);
        mirror
    }

    /// Brings `mirror` in step with the engine: the accounts changed since its last sync and
    /// the new ones; the new pockets; the holds that came or went; in each window the items
    /// that left, came or (payments) changed. A mirror whose changes this engine does not
    /// record (another engine's, or an older one of this engine's once a newer exists) is
    /// copied again whole.
    pub fn sync_snapshot_mirror(&mut self, mirror: &mut SnapshotMirror) {
        let id = self.accounts.sync_mirror(mirror.id, &mut mirror.accounts);
        let whole = id != mirror.id;
        if whole {
            // Record for this mirror from now on: holds come and go, and refunds change
            // payments in place.
            let bound = usize::try_from(self.config.holds_active_max).unwrap_or(usize::MAX);
            self.holds.record_changes(bound);
            self.payments.record_changes();
        }
        mirror.id = id;
        self.holds.sync_mirror(&mut mirror.holds, whole);
        let newest = match mirror.pockets.last() {
            Some(last) if !whole && mirror.pockets.len() <= self.pockets.len() => last.id,
            _ => {
                mirror.pockets.clear();
                AccountId(0)
            }
        };
        let new = self.pockets.range((Excluded(newest), Unbounded));
        mirror.pockets.extend(new.map(|(_, pocket)| pocket.clone()));
        self.idempotency.sync_mirror(&mut mirror.idempotency, whole);
        self.finished_holds
            .sync_mirror(&mut mirror.finished_holds, whole);
        self.payments.sync_mirror(&mut mirror.payments, whole);
    }

    /// Copies the whole state into `state`, overwriting what it held and reusing its buffers:
    /// copying into memory already faulted in is several times faster than into fresh pages,
    /// and the copy is what stops the engine thread.
    pub fn snapshot_into(&self, state: &mut SnapshotState) {
        self.copy_unmirrored(state);
        let s = &mut state.0;
        refill(&mut s.accounts, self.accounts.iter().cloned());
        refill(&mut s.pockets, self.pockets.values().cloned());
        refill(&mut s.holds, self.holds.values().cloned());
        s.holds.sort_unstable_by_key(|hold| hold.id);
        refill(&mut s.idempotency, self.idempotency.items().cloned());
        refill(&mut s.finished_holds, self.finished_holds.items().cloned());
        refill(&mut s.payments, self.payments.items().cloned());
        state.1 = None;
    }

    /// `snapshot_into` without copying the windows or the accounts: `mirror` (synced
    /// here first, which copies only what changed since its last sync) travels in the state
    /// instead and is written out by `encode`. Take it back with `SnapshotState::take_mirror`.
    pub fn snapshot_into_mirrored(
        &mut self,
        state: &mut SnapshotState,
        mut mirror: SnapshotMirror,
    ) {
        self.sync_snapshot_mirror(&mut mirror);
        self.copy_unmirrored(state);
        // The mirror's lists stand in for these when the state is encoded.
        let s = &mut state.0;
        s.accounts = Vec::new();
        s.pockets = Vec::new();
        s.holds = Vec::new();
        s.idempotency = Vec::new();
        s.finished_holds = Vec::new();
        s.payments = Vec::new();
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
        s.finished_holds_evicted_early = self.finished_holds.evicted_early;
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
        Engine::check_reservations(&snapshot.config)
            .map_err(|mib| SnapshotError::AddressSpace { mib })?;
        let mut engine = Engine::new(snapshot.config);
        engine.last_seq = snapshot.last_seq;
        engine.last_timestamp = snapshot.last_timestamp;
        engine.next_txn = snapshot.next_txn;
        engine.next_hold = snapshot.next_hold;
        engine.accounts.extend(snapshot.accounts);
        engine.pockets = snapshot.pockets.into_iter().map(|p| (p.id, p)).collect();
        for hold in snapshot.holds {
            engine.hold_deadlines.insert((hold.expires_at, hold.id));
            engine.holds.insert(hold);
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
