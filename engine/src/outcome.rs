//! Outcomes: what a command did, as plain rkyv-encodable data. A rejection is an outcome, not
//! an error: it is journaled like any other, so replay answers the same.

use crate::amount::Amount;
use crate::ids::{AccountId, HoldId, TxnId};

/// Everything one `apply` produced.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Outcome {
    pub result: CommandResult,
    /// Holds whose deadline had passed at this command's timestamp and that the engine
    /// released before applying it (bounded by `EXPIRIES_PER_COMMAND_MAX`).
    pub expired_holds: Vec<HoldExpired>,
}

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum CommandResult {
    AccountOpened {
        account: AccountId,
    },
    AccountUpdated {
        account: AccountId,
    },
    PocketOpened {
        pocket: AccountId,
    },
    /// Deposit, withdrawal, transfer, pocket move, payment or refund.
    Posted(Posted),
    /// One result per transfer of a `TransferBatch`, in order.
    Batch(Vec<BatchItem>),
    HoldReserved(HoldChange),
    HoldReleased(HoldChange),
    HoldCommitted {
        hold: HoldChange,
        /// The part of the hold that was not committed and is now available again.
        released: Amount,
        posted: Posted,
    },
    /// The idempotency key was seen before with the same body: nothing was applied again. The
    /// original outcome is the one journaled at `original_seq`; `original` summarises it.
    Replayed {
        original_seq: u64,
        original: OutcomeSummary,
    },
    Rejected(RejectCode),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum BatchItem {
    Posted(Posted),
    Rejected(RejectCode),
}

/// A balanced movement: exactly one debit and one credit of the same amount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Posted {
    pub txn: TxnId,
    pub debit: Posting,
    pub credit: Posting,
}

/// One side of a movement. Balances rise with credits and fall with debits (the bank's view of
/// a customer's money), so the sum of every account's balance is zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Posting {
    pub account: AccountId,
    pub amount: Amount,
    /// The account's balance right after this posting, in units of 10^-4.
    pub balance_after: i128,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct HoldChange {
    pub hold: HoldId,
    pub account: AccountId,
    pub amount: Amount,
    /// The account's total held amount after the change.
    pub held_after: i128,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct HoldExpired {
    pub hold: HoldId,
    pub account: AccountId,
    pub amount: Amount,
    pub held_after: i128,
}

/// The compact form of an outcome that the idempotency window keeps (about 24 bytes, so the
/// window can hold millions of keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum OutcomeSummary {
    AccountOpened(AccountId),
    AccountUpdated(AccountId),
    PocketOpened(AccountId),
    Posted(TxnId),
    Batch { posted: u32, rejected: u32 },
    HoldReserved(HoldId),
    HoldReleased(HoldId),
    HoldCommitted { hold: HoldId, txn: TxnId },
    Rejected(RejectCode),
}

impl CommandResult {
    /// The summary kept for idempotent replays. `None` for results that are not stored
    /// (a replay or an idempotency conflict is never itself remembered).
    pub fn summary(&self) -> Option<OutcomeSummary> {
        Some(match self {
            CommandResult::AccountOpened { account } => OutcomeSummary::AccountOpened(*account),
            CommandResult::AccountUpdated { account } => OutcomeSummary::AccountUpdated(*account),
            CommandResult::PocketOpened { pocket } => OutcomeSummary::PocketOpened(*pocket),
            CommandResult::Posted(posted) => OutcomeSummary::Posted(posted.txn),
            CommandResult::Batch(items) => {
                let posted = items
                    .iter()
                    .filter(|i| matches!(i, BatchItem::Posted(_)))
                    .count();
                // Batches hold at most BATCH_TRANSFERS_MAX items, far below u32::MAX.
                let posted = u32::try_from(posted).unwrap_or(u32::MAX);
                let rejected = u32::try_from(items.len()).unwrap_or(u32::MAX) - posted;
                OutcomeSummary::Batch { posted, rejected }
            }
            CommandResult::HoldReserved(change) => OutcomeSummary::HoldReserved(change.hold),
            CommandResult::HoldReleased(change) => OutcomeSummary::HoldReleased(change.hold),
            CommandResult::HoldCommitted { hold, posted, .. } => OutcomeSummary::HoldCommitted {
                hold: hold.hold,
                txn: posted.txn,
            },
            CommandResult::Replayed { .. } => return None,
            CommandResult::Rejected(RejectCode::IdempotencyConflict) => return None,
            CommandResult::Rejected(code) => OutcomeSummary::Rejected(*code),
        })
    }
}

/// Why a command (or one batch item) was not applied. `code()` is the stable string that
/// clients see; never rename one.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub enum RejectCode {
    /// Zero, or above DECIMAL(19,4).
    InvalidAmount,
    /// The result would leave a balance or total outside DECIMAL(19,4).
    AmountOverflow,
    AccountNotFound,
    AccountFrozen,
    AccountClosed,
    InsufficientFunds,
    DailyLimitExceeded,
    MonthlyLimitExceeded,
    PocketLocked,
    HoldNotFound,
    HoldExpired,
    /// The hold was already committed or released.
    HoldNotActive,
    /// Commit of more than the held amount.
    HoldAmountExceeded,
    /// The deadline is not after the command's timestamp, or too far ahead.
    InvalidHoldExpiry,
    CurrencyMismatch,
    IdempotencyConflict,
    /// Source and destination are the same account.
    SameAccount,
    /// The account's kind does not fit the operation (e.g. a deposit from a customer account).
    InvalidAccountKind,
    InvalidTier,
    /// Closing an account that still has money, holds or open pockets.
    AccountNotEmpty,
    /// Reducing the overdraft limit below what the account already uses.
    OverdraftInUse,
    TooManyPockets,
    /// An empty or over-long pocket name.
    InvalidPocket,
    PaymentNotFound,
    RefundExceedsPayment,
    /// An empty or over-long batch.
    InvalidBatch,
    /// A configured engine bound (accounts, active holds) is reached.
    CapacityExceeded,
}

impl RejectCode {
    pub const ALL: [RejectCode; 27] = [
        RejectCode::InvalidAmount,
        RejectCode::AmountOverflow,
        RejectCode::AccountNotFound,
        RejectCode::AccountFrozen,
        RejectCode::AccountClosed,
        RejectCode::InsufficientFunds,
        RejectCode::DailyLimitExceeded,
        RejectCode::MonthlyLimitExceeded,
        RejectCode::PocketLocked,
        RejectCode::HoldNotFound,
        RejectCode::HoldExpired,
        RejectCode::HoldNotActive,
        RejectCode::HoldAmountExceeded,
        RejectCode::InvalidHoldExpiry,
        RejectCode::CurrencyMismatch,
        RejectCode::IdempotencyConflict,
        RejectCode::SameAccount,
        RejectCode::InvalidAccountKind,
        RejectCode::InvalidTier,
        RejectCode::AccountNotEmpty,
        RejectCode::OverdraftInUse,
        RejectCode::TooManyPockets,
        RejectCode::InvalidPocket,
        RejectCode::PaymentNotFound,
        RejectCode::RefundExceedsPayment,
        RejectCode::InvalidBatch,
        RejectCode::CapacityExceeded,
    ];

    /// The stable machine-readable code.
    pub const fn code(self) -> &'static str {
        match self {
            RejectCode::InvalidAmount => "INVALID_AMOUNT",
            RejectCode::AmountOverflow => "AMOUNT_OVERFLOW",
            RejectCode::AccountNotFound => "ACCOUNT_NOT_FOUND",
            RejectCode::AccountFrozen => "ACCOUNT_FROZEN",
            RejectCode::AccountClosed => "ACCOUNT_CLOSED",
            RejectCode::InsufficientFunds => "INSUFFICIENT_FUNDS",
            // One public code for both periods (DESIGN.md §2); `limit_period` tells which.
            RejectCode::DailyLimitExceeded | RejectCode::MonthlyLimitExceeded => "LIMIT_EXCEEDED",
            RejectCode::PocketLocked => "POCKET_LOCKED",
            RejectCode::HoldNotFound => "HOLD_NOT_FOUND",
            RejectCode::HoldExpired => "HOLD_EXPIRED",
            RejectCode::HoldNotActive => "HOLD_NOT_ACTIVE",
            RejectCode::HoldAmountExceeded => "HOLD_AMOUNT_EXCEEDED",
            RejectCode::InvalidHoldExpiry => "INVALID_HOLD_EXPIRY",
            RejectCode::CurrencyMismatch => "CURRENCY_MISMATCH",
            RejectCode::IdempotencyConflict => "IDEMPOTENCY_CONFLICT",
            RejectCode::SameAccount => "SAME_ACCOUNT",
            RejectCode::InvalidAccountKind => "INVALID_ACCOUNT_KIND",
            RejectCode::InvalidTier => "INVALID_TIER",
            RejectCode::AccountNotEmpty => "ACCOUNT_NOT_EMPTY",
            RejectCode::OverdraftInUse => "OVERDRAFT_IN_USE",
            RejectCode::TooManyPockets => "TOO_MANY_POCKETS",
            RejectCode::InvalidPocket => "INVALID_POCKET",
            RejectCode::PaymentNotFound => "PAYMENT_NOT_FOUND",
            RejectCode::RefundExceedsPayment => "REFUND_EXCEEDS_PAYMENT",
            RejectCode::InvalidBatch => "INVALID_BATCH",
            RejectCode::CapacityExceeded => "CAPACITY_EXCEEDED",
        }
    }

    /// "daily" or "monthly" for a LIMIT_EXCEEDED rejection, for the client's detail.
    pub const fn limit_period(self) -> Option<&'static str> {
        match self {
            RejectCode::DailyLimitExceeded => Some("daily"),
            RejectCode::MonthlyLimitExceeded => Some("monthly"),
            _ => None,
        }
    }
}

impl std::fmt::Display for RejectCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_screaming_snake_case() {
        let mut codes: Vec<&str> = RejectCode::ALL.iter().map(|c| c.code()).collect();
        assert!(
            codes
                .iter()
                .all(|c| c.chars().all(|ch| ch.is_ascii_uppercase() || ch == '_'))
        );
        codes.sort_unstable();
        codes.dedup();
        // Only the two limit periods share a code.
        assert_eq!(codes.len(), RejectCode::ALL.len() - 1);
        assert_eq!(RejectCode::DailyLimitExceeded.code(), "LIMIT_EXCEEDED");
        assert_eq!(
            RejectCode::MonthlyLimitExceeded.limit_period(),
            Some("monthly")
        );
    }
}
