//! The ledger both benchmarks build through real commands (a settlement account, then N
//! customers, each funded by a deposit), the keys they use, and how a pick becomes a transfer.

use anyhow::{bail, ensure};
use payu_engine::{
    AMOUNT_UNITS_MAX, AccountId, AccountKind, Amount, CommandBody, CommandResult, Currency,
    Deposit, IdempotencyKey, OpenAccount, OwnerId, Transfer,
};

use crate::workload::{Pick, mix64};

/// The settlement account is opened first; customers follow from id 2.
pub const SETTLEMENT_ID: AccountId = AccountId(1);
const FIRST_CUSTOMER_ID: u64 = 2;
pub const UNITS_PER_IDR: u64 = 10_000;

/// Applies a command body at the next seq (with a fresh key) and returns its result.
pub trait Submit {
    fn submit(&mut self, body: CommandBody) -> CommandResult;
}

/// Opens the settlement account and `accounts` customers, then funds every customer.
pub fn open_and_fund(ledger: &mut impl Submit, accounts: u32) -> anyhow::Result<()> {
    let settlement = open_account(ledger, AccountKind::Settlement, 0)?;
    ensure!(
        settlement == SETTLEMENT_ID,
        "settlement account got id {}",
        settlement.0
    );
    for index in 0..accounts {
        let id = open_account(ledger, AccountKind::Customer, u128::from(index) + 1)?;
        ensure!(id == customer_id(index), "customer {index} got id {}", id.0);
    }
    let balance = opening_balance(accounts);
    for index in 0..accounts {
        let body = CommandBody::Deposit(Deposit {
            settlement: SETTLEMENT_ID,
            account: customer_id(index),
            amount: balance,
            currency: Currency::IDR,
        });
        match ledger.submit(body) {
            CommandResult::Posted(_) => {}
            other => bail!("funding customer {index} failed: {other:?}"),
        }
    }
    Ok(())
}

fn open_account(
    ledger: &mut impl Submit,
    kind: AccountKind,
    owner: u128,
) -> anyhow::Result<AccountId> {
    let body = CommandBody::OpenAccount(OpenAccount {
        owner: OwnerId(owner),
        kind,
        tier: 0,
        currency: Currency::IDR,
        overdraft_limit: Amount::ZERO,
    });
    match ledger.submit(body) {
        CommandResult::AccountOpened { account } => Ok(account),
        other => bail!("opening a {kind:?} account failed: {other:?}"),
    }
}

/// Each customer's opening balance: as large as possible while the settlement account's
/// negative total (N times this) stays within DECIMAL(19,4), so no balance can ever overflow.
pub fn opening_balance(accounts: u32) -> Amount {
    Amount(AMOUNT_UNITS_MAX / u64::from(accounts))
}

pub fn customer_id(index: u32) -> AccountId {
    AccountId(FIRST_CUSTOMER_ID + u64::from(index))
}

/// The `n`th command's key, shaped like the gateway's 128-bit hashes: the low half is the
/// counter (so keys never collide), the high half a mix of it (so hashing sees spread bits).
pub fn idempotency_key(n: u64) -> IdempotencyKey {
    IdempotencyKey((u128::from(mix64(n)) << 64) | u128::from(n))
}

pub fn transfer(pick: &Pick) -> Transfer {
    Transfer {
        from: customer_id(pick.from),
        to: customer_id(pick.to),
        amount: Amount(u64::from(pick.amount_idr) * UNITS_PER_IDR),
        currency: Currency::IDR,
    }
}
