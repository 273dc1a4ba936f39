//! The records the engine keeps: accounts, pockets, holds, refundable payments and the
//! idempotency window's entries. All are rkyv-encodable for snapshots.

use crate::amount::{Amount, Currency};
use crate::calendar::Date;
use crate::command::{AccountKind, AccountStatus};
use crate::ids::{AccountId, HoldId, IdempotencyKey, OwnerId, Timestamp, TxnId};
use crate::outcome::OutcomeSummary;
use crate::window::WindowItem;

/// One ledger account. Balances are in units of 10^-4 and rise with credits.
///
/// `repr(C)` keeps the fields a movement reads and writes in the first 64 bytes; the rest
/// follows, with `tier` (read for the sender's limits) first. A batch loads the first and the
/// last byte a movement reads of each account ahead of time, so the lines a transfer needs are
/// in cache when it runs (see `Engine::touch_accounts`).
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
#[repr(C)]
pub struct Account {
    pub balance: i128,
    /// The sum of this account's active holds.
    pub held: i128,
    pub overdraft_limit: Amount,
    /// Outgoing total counted against the daily limit on `spent_date` (Jakarta).
    pub spent_day: Amount,
    /// Outgoing total counted against the monthly limit in `spent_month_index`.
    pub spent_month: Amount,
    pub spent_date: Date,
    pub currency: Currency,
    pub kind: AccountKind,
    pub status: AccountStatus,
    // ---- 64 bytes ----
    pub tier: u8,
    /// Pockets of this account that are not closed.
    pub open_pockets: u8,
    pub spent_month_index: u32,
    /// The parent account of a pocket; `AccountId(0)` for every other kind.
    pub parent: AccountId,
    pub owner: OwnerId,
}

const _: () = assert!(std::mem::offset_of!(Account, tier) == 64);
const _: () = assert!(std::mem::size_of::<Account>() == 96);

impl Account {
    /// Balance minus held: what can be spent (plus any overdraft).
    pub fn available(&self) -> i128 {
        self.balance - self.held
    }
}

/// The savings rules of a pocket; its money lives in its own `Account` of kind `Pocket`.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Pocket {
    pub id: AccountId,
    pub parent: AccountId,
    pub name: String,
    pub target_amount: Amount,
    pub target_date: Date,
    pub locked: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Hold {
    pub id: HoldId,
    pub account: AccountId,
    pub destination: AccountId,
    pub amount: Amount,
    pub currency: Currency,
    pub expires_at: Timestamp,
    /// The Jakarta day and month whose limits the reservation counted against, so an unused
    /// remainder can be given back to the same period.
    pub limit_date: Date,
    pub limit_month_index: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum HoldEnd {
    Committed,
    Released,
    Expired,
}

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct FinishedHold {
    pub id: HoldId,
    pub end: HoldEnd,
    pub at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct PaymentRecord {
    pub txn: TxnId,
    pub customer: AccountId,
    pub merchant: AccountId,
    pub amount: Amount,
    pub refunded: Amount,
    pub currency: Currency,
    pub at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct IdempotencyEntry {
    pub key: IdempotencyKey,
    pub fingerprint: u64,
    pub seq: u64,
    pub at: Timestamp,
    pub summary: OutcomeSummary,
}

impl WindowItem for IdempotencyEntry {
    type Key = IdempotencyKey;
    fn key(&self) -> IdempotencyKey {
        self.key
    }
    fn at(&self) -> Timestamp {
        self.at
    }
}

impl WindowItem for PaymentRecord {
    type Key = TxnId;
    fn key(&self) -> TxnId {
        self.txn
    }
    fn at(&self) -> Timestamp {
        self.at
    }
}

impl WindowItem for FinishedHold {
    type Key = HoldId;
    fn key(&self) -> HoldId {
        self.id
    }
    fn at(&self) -> Timestamp {
        self.at
    }
}
