//! PayU Core's balance engine: a pure, deterministic, double-entry ledger.
//!
//! The engine is a state machine, `apply(seq, timestamp, command) -> outcome`, run by exactly
//! one thread. It reads no clock, draws no random numbers, does no I/O, spawns no threads and
//! has no `unsafe`: the journal, the standby and crash recovery all rebuild it by replaying the
//! same commands, and get the same state byte for byte (see `Engine::snapshot`).
//!
//! Money is integer units of 10^-4 inside (DECIMAL(19,4)); `rust_decimal` appears only at the
//! edge ([`Amount::from_decimal`], [`units_to_decimal`]). Nothing here derives `Serialize`: the
//! gateway owns the wire format. Commands, outcomes and snapshots are rkyv-encodable.

mod accounts;
mod amount;
mod calendar;
mod changes;
mod command;
mod config;
mod engine;
mod holds;
mod ids;
mod outcome;
mod snapshot;
mod state;
mod window;

pub use amount::{
    AMOUNT_SCALE, AMOUNT_UNITS_MAX, Amount, AmountError, BALANCE_UNITS_MAX, Currency,
    units_to_decimal,
};
pub use calendar::{Date, JAKARTA_UTC_OFFSET_SECONDS, jakarta_date, jakarta_midnight, month_index};
pub use command::*;
pub use config::{CAPACITY_MAX, EngineConfig, TIERS_MAX, TierLimits};
pub use engine::{EXPIRIES_PER_COMMAND_MAX, Engine, EngineStats};
pub use ids::*;
pub use outcome::*;
pub use snapshot::{SNAPSHOT_FORMAT_VERSION, SnapshotError, SnapshotMirror, SnapshotState};
pub use state::{Account, FinishedHold, Hold, HoldEnd, IdempotencyEntry, PaymentRecord, Pocket};
pub use window::WINDOW_EXPIRIES_PER_COMMAND_MAX;
