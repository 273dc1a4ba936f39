//! Commands: plain data, fully decided before they reach the engine (ids of existing objects,
//! amounts, deadlines), rkyv-encodable so the journal can store them byte for byte.

use crate::amount::{Amount, Currency};
use crate::calendar::Date;
use crate::ids::{AccountId, HoldId, IdempotencyKey, OwnerId, Timestamp, TxnId};

/// The most transfers one `TransferBatch` carries (TigerBeetle's batch of 8189 fits).
pub const BATCH_TRANSFERS_MAX: usize = 8190;
/// The longest pocket name, in bytes of UTF-8.
pub const POCKET_NAME_BYTES_MAX: usize = 64;

/// One command for the engine: what to do, and the client's idempotency key for it.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Command {
    pub key: IdempotencyKey,
    pub body: CommandBody,
}

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum CommandBody {
    OpenAccount(OpenAccount),
    UpdateAccount(UpdateAccount),
    OpenPocket(OpenPocket),
    Deposit(Deposit),
    Withdrawal(Withdrawal),
    Transfer(Transfer),
    /// Independent transfers under one idempotency key, each with its own result.
    TransferBatch(Vec<Transfer>),
    PocketMove(PocketMove),
    Payment(Payment),
    Refund(Refund),
    HoldReserve(HoldReserve),
    HoldCommit(HoldCommit),
    HoldRelease(HoldRelease),
}

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
pub enum AccountKind {
    Customer,
    Merchant,
    /// A system account mirroring money held outside the ledger (at Bank Indonesia, a partner
    /// bank, a card network). Deposits and withdrawals move money against it; it may go negative.
    Settlement,
    /// A savings sub-balance of a customer account. Opened only by `OpenPocket`.
    Pocket,
}

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
pub enum AccountStatus {
    Active,
    /// Rejects every movement in or out until made active again.
    Frozen,
    /// Final. Only an empty account with no holds and no open pockets can close.
    Closed,
}

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct OpenAccount {
    pub owner: OwnerId,
    /// Customer, Merchant or Settlement (pockets come from `OpenPocket`).
    pub kind: AccountKind,
    /// Index into the configured tier table; decides outgoing limits.
    pub tier: u8,
    pub currency: Currency,
    /// How far below zero the available balance may go; zero for no overdraft.
    pub overdraft_limit: Amount,
}

/// Changes to an account's status, tier or overdraft; `None` leaves a field as it is.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct UpdateAccount {
    pub account: AccountId,
    pub status: Option<AccountStatus>,
    pub tier: Option<u8>,
    pub overdraft_limit: Option<Amount>,
}

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct OpenPocket {
    pub parent: AccountId,
    pub name: String,
    pub target_amount: Amount,
    pub target_date: Date,
    /// A locked pocket refuses withdrawals before `target_date` (Jakarta calendar).
    pub locked: bool,
}

/// Money arriving from outside: debits the settlement account, credits the account.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Deposit {
    pub settlement: AccountId,
    pub account: AccountId,
    pub amount: Amount,
    pub currency: Currency,
}

/// Money leaving the bank: debits the account, credits the settlement account.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Withdrawal {
    pub account: AccountId,
    pub settlement: AccountId,
    pub amount: Amount,
    pub currency: Currency,
}

/// An internal transfer between customer or merchant accounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Transfer {
    pub from: AccountId,
    pub to: AccountId,
    pub amount: Amount,
    pub currency: Currency,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum PocketDirection {
    /// From the parent account into the pocket.
    In,
    /// From the pocket back to the parent account.
    Out,
}

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct PocketMove {
    pub pocket: AccountId,
    pub direction: PocketDirection,
    pub amount: Amount,
    pub currency: Currency,
}

/// A customer paying a merchant. Refundable later by its `TxnId`.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Payment {
    pub customer: AccountId,
    pub merchant: AccountId,
    pub amount: Amount,
    pub currency: Currency,
}

/// Returns part or all of a payment from the merchant to the customer.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Refund {
    pub payment: TxnId,
    pub amount: Amount,
    pub currency: Currency,
}

/// Reserves funds on `account` for a later payment to `destination`.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct HoldReserve {
    pub account: AccountId,
    pub destination: AccountId,
    pub amount: Amount,
    pub currency: Currency,
    pub expiry: HoldExpiry,
}

/// When a hold expires: at an instant, or a duration after the command's own (journaled)
/// timestamp. The relative form lets a client retry "hold for 15 minutes" with the same
/// idempotency key and get the original answer: the deadline is decided inside `apply`, from
/// the timestamp of the first attempt, so the retry's command is identical.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum HoldExpiry {
    /// The hold is expired from this instant on (a commit at exactly this time is too late).
    At(Timestamp),
    /// This many nanoseconds after the reserving command's timestamp.
    After { nanos: u64 },
}

impl HoldExpiry {
    /// The deadline for a reservation applied at `now`.
    pub const fn deadline(self, now: Timestamp) -> Timestamp {
        match self {
            HoldExpiry::At(at) => at,
            HoldExpiry::After { nanos } => now.saturating_add_nanos(nanos),
        }
    }
}

/// Moves `amount` (at most the held amount) to the hold's destination and releases the rest.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct HoldCommit {
    pub hold: HoldId,
    pub amount: Amount,
}

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct HoldRelease {
    pub hold: HoldId,
}

impl CommandBody {
    /// A stable 64-bit digest of the command body, so a reused idempotency key with a different
    /// body is detected without storing the body. Hand-written (not `std::hash::Hash`) so that
    /// the value never changes across compiler versions: it lives in snapshots.
    pub fn fingerprint(&self) -> u64 {
        let mut f = Fingerprint::new();
        match self {
            CommandBody::OpenAccount(c) => {
                f.word(1)
                    .word128(c.owner.0)
                    .word(kind_code(c.kind))
                    .word(c.tier.into());
                f.word(c.currency.0.into()).word(c.overdraft_limit.0);
            }
            CommandBody::UpdateAccount(c) => {
                f.word(2).word(c.account.0);
                f.option(c.status.map(status_code))
                    .option(c.tier.map(u64::from));
                f.option(c.overdraft_limit.map(|a| a.0));
            }
            CommandBody::OpenPocket(c) => {
                f.word(3)
                    .word(c.parent.0)
                    .bytes(c.name.as_bytes())
                    .word(c.target_amount.0);
                f.word(c.target_date.0.into()).word(c.locked.into());
            }
            CommandBody::Deposit(c) => {
                f.word(4)
                    .word(c.settlement.0)
                    .word(c.account.0)
                    .money(c.amount, c.currency);
            }
            CommandBody::Withdrawal(c) => {
                f.word(5)
                    .word(c.account.0)
                    .word(c.settlement.0)
                    .money(c.amount, c.currency);
            }
            CommandBody::Transfer(c) => {
                f.word(6).transfer(c);
            }
            CommandBody::TransferBatch(items) => {
                f.word(7).word(items.len() as u64);
                items.iter().for_each(|t| {
                    f.transfer(t);
                });
            }
            CommandBody::PocketMove(c) => {
                let direction = match c.direction {
                    PocketDirection::In => 1,
                    PocketDirection::Out => 2,
                };
                f.word(8)
                    .word(c.pocket.0)
                    .word(direction)
                    .money(c.amount, c.currency);
            }
            CommandBody::Payment(c) => {
                f.word(9)
                    .word(c.customer.0)
                    .word(c.merchant.0)
                    .money(c.amount, c.currency);
            }
            CommandBody::Refund(c) => {
                f.word(10).word(c.payment.0).money(c.amount, c.currency);
            }
            CommandBody::HoldReserve(c) => {
                f.word(11)
                    .word(c.account.0)
                    .word(c.destination.0)
                    .money(c.amount, c.currency);
                match c.expiry {
                    HoldExpiry::At(at) => f.word(0).word(at.0),
                    HoldExpiry::After { nanos } => f.word(1).word(nanos),
                };
            }
            CommandBody::HoldCommit(c) => {
                f.word(12).word(c.hold.0).word(c.amount.0);
            }
            CommandBody::HoldRelease(c) => {
                f.word(13).word(c.hold.0);
            }
        }
        f.finish()
    }
}

fn kind_code(kind: AccountKind) -> u64 {
    match kind {
        AccountKind::Customer => 1,
        AccountKind::Merchant => 2,
        AccountKind::Settlement => 3,
        AccountKind::Pocket => 4,
    }
}

fn status_code(status: AccountStatus) -> u64 {
    match status {
        AccountStatus::Active => 1,
        AccountStatus::Frozen => 2,
        AccountStatus::Closed => 3,
    }
}

/// A word-at-a-time hash built from the splitmix64 finaliser: simple, fixed forever, and well
/// mixed enough that distinct bodies collide with probability about 2^-64.
struct Fingerprint(u64);

impl Fingerprint {
    fn new() -> Fingerprint {
        Fingerprint(0x5041_5955_434f_5245) // "PAYUCORE"
    }

    fn word(&mut self, value: u64) -> &mut Self {
        self.0 = mix(self.0 ^ mix(value.wrapping_add(0x9e37_79b9_7f4a_7c15)));
        self
    }

    fn word128(&mut self, value: u128) -> &mut Self {
        self.word(value as u64).word((value >> 64) as u64)
    }

    fn option(&mut self, value: Option<u64>) -> &mut Self {
        match value {
            None => self.word(0),
            Some(v) => self.word(1).word(v),
        }
    }

    fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.word(bytes.len() as u64);
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.word(u64::from_le_bytes(word));
        }
        self
    }

    fn money(&mut self, amount: Amount, currency: Currency) -> &mut Self {
        self.word(amount.0).word(currency.0.into())
    }

    fn transfer(&mut self, t: &Transfer) -> &mut Self {
        self.word(t.from.0).word(t.to.0).money(t.amount, t.currency)
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer(amount: u64) -> CommandBody {
        CommandBody::Transfer(Transfer {
            from: AccountId(1),
            to: AccountId(2),
            amount: Amount(amount),
            currency: Currency::IDR,
        })
    }

    #[test]
    fn fingerprint_is_stable_and_separates_bodies() {
        // A literal: if this changes, snapshots written by older builds would misjudge retries.
        assert_eq!(
            transfer(10_000).fingerprint(),
            transfer(10_000).fingerprint()
        );
        assert_eq!(transfer(10_000).fingerprint(), 0xd473_87a5_b3b6_36bb_u64);
        assert_ne!(
            transfer(10_000).fingerprint(),
            transfer(10_001).fingerprint()
        );
        let swapped = CommandBody::Transfer(Transfer {
            from: AccountId(2),
            to: AccountId(1),
            amount: Amount(10_000),
            currency: Currency::IDR,
        });
        assert_ne!(transfer(10_000).fingerprint(), swapped.fingerprint());
    }
}
