//! The balance engine: one deterministic state machine that alone decides whether money moves.
//!
//! `Engine::apply(seq, timestamp, command)` is the only way state changes. It reads no clock,
//! draws no random numbers and does no I/O, so the same commands always give the same state and
//! the same outcomes. Every check happens before any mutation, so a rejected command leaves the
//! ledger exactly as it was (expired holds, released at the start of each command, aside).
//!
//! Checks run in a fixed order, which `docs/ARCHITECTURE.md` ("Rules") spells out; the reference
//! model in `tests/model.rs` follows the same order independently.

use std::collections::{BTreeMap, BTreeSet};

use crate::accounts::Accounts;
use crate::amount::{Amount, BALANCE_UNITS_MAX, Currency};
use crate::calendar::{Date, jakarta_date, month_index};
use crate::command::*;
use crate::config::EngineConfig;
use crate::holds::Holds;
use crate::ids::{AccountId, HoldId, OwnerId, Timestamp, TxnId};
use crate::outcome::*;
use crate::state::*;
use crate::window::{Window, WindowItem};

/// The most expired holds one command releases; the rest go with the following commands (a
/// commit or release of an overdue hold is refused by its deadline either way).
pub const EXPIRIES_PER_COMMAND_MAX: usize = 64;

/// Transfers whose accounts are loaded into cache together before they are applied.
const BATCH_TOUCH_AHEAD: usize = 64;

/// Accounts that can send and receive transfers and payments.
const PARTIES: &[AccountKind] = &[AccountKind::Customer, AccountKind::Merchant];
const SETTLEMENT: &[AccountKind] = &[AccountKind::Settlement];
const HOLD_DESTINATIONS: &[AccountKind] = &[
    AccountKind::Customer,
    AccountKind::Merchant,
    AccountKind::Settlement,
];

#[derive(Clone, Debug, PartialEq)]
pub struct Engine {
    pub(crate) config: EngineConfig,
    pub(crate) last_seq: u64,
    pub(crate) last_timestamp: Timestamp,
    /// Indexed by `AccountId - 1`; changed only through `Accounts::get_mut` and `push`.
    pub(crate) accounts: Accounts,
    /// Only ever inserted into, each pocket with an id above all before it (a new account's):
    /// the snapshot mirror copies just the pockets after the last one it holds.
    pub(crate) pockets: BTreeMap<AccountId, Pocket>,
    /// Changed only through `Holds::insert` and `remove`.
    pub(crate) holds: Holds,
    pub(crate) hold_deadlines: BTreeSet<(Timestamp, HoldId)>,
    pub(crate) finished_holds: Window<FinishedHold>,
    pub(crate) payments: Window<PaymentRecord>,
    pub(crate) idempotency: Window<IdempotencyEntry>,
    pub(crate) next_txn: u64,
    pub(crate) next_hold: u64,
    /// The net of every balance change made by the command being applied. Zero between
    /// commands: that is the O(1) form of "the sum over all accounts is zero".
    net_units: i128,
    calendar: CalendarCache,
}

/// The command's place in time, computed once per command.
#[derive(Clone, Copy, Debug)]
struct Now {
    seq: u64,
    timestamp: Timestamp,
    date: Date,
    month_index: u32,
}

/// Memo of the last date's month index; derived data, so it never makes two engines unequal.
#[derive(Clone, Copy, Debug, Default)]
struct CalendarCache {
    date: Date,
    month_index: u32,
}

impl PartialEq for CalendarCache {
    fn eq(&self, _: &CalendarCache) -> bool {
        true
    }
}

/// One balanced movement, checked by `check_movement` and then posted by `post`.
#[derive(Clone, Copy, Debug)]
struct Movement {
    from: usize,
    to: usize,
    amount: Amount,
    currency: Currency,
    counts_toward_limits: bool,
}

/// The terms of an account about to be opened.
#[derive(Clone, Copy, Debug)]
struct NewAccount {
    owner: OwnerId,
    kind: AccountKind,
    tier: u8,
    currency: Currency,
    overdraft_limit: Amount,
    parent: AccountId,
}

/// Counters for metrics and capacity planning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineStats {
    pub last_seq: u64,
    pub accounts: u64,
    pub holds_active: u64,
    pub finished_holds: u64,
    pub refundable_payments: u64,
    pub payments_evicted_early: u64,
    pub idempotency_entries: u64,
    pub idempotency_evicted_early: u64,
}

type Checked<T> = Result<T, RejectCode>;

impl Engine {
    /// A fresh ledger. Panics on an invalid configuration: validate it first with
    /// `EngineConfig::validate` to turn that into a startup error.
    pub fn new(config: EngineConfig) -> Engine {
        if let Err(reason) = config.validate() {
            panic!("invalid engine configuration: {reason}");
        }
        Engine {
            last_seq: 0,
            last_timestamp: Timestamp(0),
            accounts: Accounts::with_capacity(capacity(config.accounts_max)),
            pockets: BTreeMap::new(),
            holds: Holds::with_capacity(capacity(config.holds_active_max)),
            hold_deadlines: BTreeSet::new(),
            finished_holds: Window::with_capacity(config.finished_holds_max),
            payments: Window::with_capacity(config.refundable_payments_max),
            idempotency: Window::with_capacity(config.idempotency_entries_max),
            config,
            next_txn: 1,
            next_hold: 1,
            net_units: 0,
            calendar: CalendarCache::default(),
        }
    }

    /// Checks that the system grants the address space a ledger with `config` reserves up
    /// front (see `reservations`): each block reserved, all held together, then released,
    /// never written, so the check costs no memory. Bounds too large for the machine then
    /// fail here with a message instead of aborting the process when the tables are
    /// allocated. The error is the total in MiB.
    pub fn check_reservations(config: &EngineConfig) -> Result<(), u128> {
        let blocks = Engine::reservations(config);
        let mut held: Vec<Vec<u8>> = Vec::with_capacity(blocks.len());
        for &bytes in &blocks {
            let mut block: Vec<u8> = Vec::new();
            let granted = usize::try_from(bytes)
                .ok()
                .is_some_and(|bytes| block.try_reserve_exact(bytes).is_ok());
            if !granted {
                return Err(blocks.iter().sum::<u128>() >> 20);
            }
            held.push(block);
        }
        Ok(())
    }

    /// The blocks of address space, in bytes, a ledger with `config` reserves up front: its
    /// accounts, active holds and the idempotency, payment and finished-hold windows (index
    /// and items), each sized for its bound when the ledger is made (or restored), plus a
    /// snapshot mirror's copy of each window's items. Pages are mapped only as the tables
    /// fill.
    pub(crate) fn reservations(config: &EngineConfig) -> Vec<u128> {
        fn items<T>(capacity: u64) -> u128 {
            capacity as u128 * std::mem::size_of::<T>() as u128
        }
        fn window<T: WindowItem>(capacity: u64) -> [u128; 3] {
            let [index, items] = Window::<T>::reserved_blocks(capacity);
            [index, items, items]
        }
        // A hash table has at least 8/7 buckets per entry, a power of two, each with its entry
        // and a control byte.
        let buckets = (config.holds_active_max as u128 * 8 / 7 + 1).next_power_of_two();
        let holds = buckets * (std::mem::size_of::<(HoldId, Hold)>() as u128 + 1);
        let mut blocks = vec![items::<Account>(config.accounts_max), holds];
        blocks.extend(window::<IdempotencyEntry>(config.idempotency_entries_max));
        blocks.extend(window::<PaymentRecord>(config.refundable_payments_max));
        blocks.extend(window::<FinishedHold>(config.finished_holds_max));
        blocks
    }

    /// Loads what applying `commands` will read first: each one's idempotency index slot and,
    /// for a transfer, both accounts. A caller holding several commands (the pipeline's ring
    /// batch) calls this for the next few before applying them, so their cache misses overlap
    /// instead of stalling one command at a time (as `transfer_batch` does for its items).
    /// Changes nothing: the loaded values are discarded.
    pub fn touch<'a>(&self, commands: impl IntoIterator<Item = &'a Command>) {
        for command in commands {
            self.idempotency.touch(command.key);
            if let CommandBody::Transfer(transfer) = &command.body {
                self.touch_transfer(transfer);
            }
        }
    }

    /// Applies one command. `seq` must be the last seq plus one and `timestamp` must not be
    /// earlier than the last one: the pipeline guarantees both, so a violation is a bug and
    /// panics.
    pub fn apply(&mut self, seq: u64, timestamp: Timestamp, command: &Command) -> Outcome {
        assert_eq!(
            seq,
            self.last_seq + 1,
            "commands must arrive with consecutive seq numbers"
        );
        assert!(
            timestamp >= self.last_timestamp,
            "timestamps must not go backwards"
        );
        self.last_seq = seq;
        self.last_timestamp = timestamp;
        let now = self.now(seq, timestamp);
        self.expire_windows(now);
        let expired_holds = self.expire_holds(now);
        let result = self.apply_once(now, command);
        assert_eq!(
            self.net_units, 0,
            "debits must equal credits in every command"
        );
        Outcome {
            result,
            expired_holds,
        }
    }

    fn now(&mut self, seq: u64, timestamp: Timestamp) -> Now {
        let date = jakarta_date(timestamp);
        if date != self.calendar.date || self.calendar.month_index == 0 {
            self.calendar = CalendarCache {
                date,
                month_index: month_index(date),
            };
        }
        Now {
            seq,
            timestamp,
            date,
            month_index: self.calendar.month_index,
        }
    }

    fn expire_windows(&mut self, now: Now) {
        let config = &self.config;
        self.idempotency
            .expire(now.timestamp, config.idempotency_window_ns);
        self.payments.expire(now.timestamp, config.refund_window_ns);
        self.finished_holds
            .expire(now.timestamp, config.idempotency_window_ns);
    }

    /// Runs the command unless its idempotency key was already used in the window.
    fn apply_once(&mut self, now: Now, command: &Command) -> CommandResult {
        let fingerprint = command.body.fingerprint();
        let window_ns = self.config.idempotency_window_ns;
        if let Some(entry) = self.idempotency.get(command.key, now.timestamp, window_ns) {
            if entry.fingerprint != fingerprint {
                return CommandResult::Rejected(RejectCode::IdempotencyConflict);
            }
            return CommandResult::Replayed {
                original_seq: entry.seq,
                original: entry.summary,
            };
        }
        let result = match self.execute(now, &command.body) {
            Ok(result) => result,
            Err(code) => CommandResult::Rejected(code),
        };
        if let Some(summary) = result.summary() {
            let entry = IdempotencyEntry {
                key: command.key,
                fingerprint,
                seq: now.seq,
                at: now.timestamp,
                summary,
            };
            self.idempotency
                .push(entry, self.config.idempotency_entries_max);
        }
        result
    }

    fn execute(&mut self, now: Now, body: &CommandBody) -> Checked<CommandResult> {
        match body {
            CommandBody::OpenAccount(c) => self.open_account(now, c),
            CommandBody::UpdateAccount(c) => self.update_account(c),
            CommandBody::OpenPocket(c) => self.open_pocket(now, c),
            CommandBody::Deposit(c) => self.deposit(now, c).map(CommandResult::Posted),
            CommandBody::Withdrawal(c) => self.withdrawal(now, c).map(CommandResult::Posted),
            CommandBody::Transfer(c) => self.transfer(now, c).map(CommandResult::Posted),
            CommandBody::TransferBatch(items) => self.transfer_batch(now, items),
            CommandBody::PocketMove(c) => self.pocket_move(now, c).map(CommandResult::Posted),
            CommandBody::Payment(c) => self.payment(now, c).map(CommandResult::Posted),
            CommandBody::Refund(c) => self.refund(now, c).map(CommandResult::Posted),
            CommandBody::HoldReserve(c) => self.hold_reserve(now, c),
            CommandBody::HoldCommit(c) => self.hold_commit(now, c),
            CommandBody::HoldRelease(c) => self.hold_release(now, c),
        }
    }

    // ---- accounts and pockets ----

    fn open_account(&mut self, now: Now, c: &OpenAccount) -> Checked<CommandResult> {
        if c.kind == AccountKind::Pocket {
            return Err(RejectCode::InvalidAccountKind);
        }
        self.require_tier(c.tier)?;
        if c.overdraft_limit > Amount::MAX {
            return Err(RejectCode::InvalidAmount);
        }
        if c.kind == AccountKind::Settlement && c.overdraft_limit != Amount::ZERO {
            // Settlement accounts may always go negative; an overdraft setting means nothing.
            return Err(RejectCode::InvalidAccountKind);
        }
        self.require_account_capacity()?;
        let account = self.push_account(
            now,
            NewAccount {
                owner: c.owner,
                kind: c.kind,
                tier: c.tier,
                currency: c.currency,
                overdraft_limit: c.overdraft_limit,
                parent: AccountId(0),
            },
        );
        Ok(CommandResult::AccountOpened { account })
    }

    fn push_account(&mut self, now: Now, new: NewAccount) -> AccountId {
        self.accounts.push(Account {
            balance: 0,
            held: 0,
            owner: new.owner,
            overdraft_limit: new.overdraft_limit,
            spent_day: Amount::ZERO,
            spent_month: Amount::ZERO,
            spent_date: now.date,
            spent_month_index: now.month_index,
            parent: new.parent,
            currency: new.currency,
            kind: new.kind,
            status: AccountStatus::Active,
            tier: new.tier,
            open_pockets: 0,
        });
        id_of(self.accounts.len() - 1)
    }

    fn update_account(&mut self, c: &UpdateAccount) -> Checked<CommandResult> {
        let index = self.index(c.account)?;
        let account = &self.accounts[index];
        if account.status == AccountStatus::Closed {
            return Err(RejectCode::AccountClosed);
        }
        let changes_terms = c.tier.is_some() || c.overdraft_limit.is_some();
        if changes_terms && !PARTIES.contains(&account.kind) {
            return Err(RejectCode::InvalidAccountKind);
        }
        if let Some(tier) = c.tier {
            self.require_tier(tier)?;
        }
        if let Some(limit) = c.overdraft_limit {
            if limit > Amount::MAX {
                return Err(RejectCode::InvalidAmount);
            }
            if account.available() + i128::from(limit.0) < 0 {
                return Err(RejectCode::OverdraftInUse);
            }
        }
        let closing = c.status == Some(AccountStatus::Closed);
        if closing && (account.balance != 0 || account.held != 0 || account.open_pockets != 0) {
            return Err(RejectCode::AccountNotEmpty);
        }
        let parent = account.parent;
        let account = self.accounts.get_mut(index);
        account.tier = c.tier.unwrap_or(account.tier);
        account.overdraft_limit = c.overdraft_limit.unwrap_or(account.overdraft_limit);
        account.status = c.status.unwrap_or(account.status);
        if closing && account.kind == AccountKind::Pocket {
            let parent = self.index_of(parent);
            self.accounts.get_mut(parent).open_pockets -= 1;
        }
        Ok(CommandResult::AccountUpdated { account: c.account })
    }

    fn open_pocket(&mut self, now: Now, c: &OpenPocket) -> Checked<CommandResult> {
        let parent = self.index(c.parent)?;
        self.require_kind(parent, &[AccountKind::Customer])?;
        self.require_open(parent)?;
        if c.name.is_empty() || c.name.len() > POCKET_NAME_BYTES_MAX {
            return Err(RejectCode::InvalidPocket);
        }
        require_amount(c.target_amount)?;
        if self.accounts[parent].open_pockets >= self.config.pockets_per_account_max {
            return Err(RejectCode::TooManyPockets);
        }
        self.require_account_capacity()?;
        let owner = &self.accounts[parent];
        let pocket = self.push_account(
            now,
            NewAccount {
                owner: owner.owner,
                kind: AccountKind::Pocket,
                tier: owner.tier,
                currency: owner.currency,
                overdraft_limit: Amount::ZERO,
                parent: c.parent,
            },
        );
        self.accounts.get_mut(parent).open_pockets += 1;
        let record = Pocket {
            id: pocket,
            parent: c.parent,
            name: c.name.clone(),
            target_amount: c.target_amount,
            target_date: c.target_date,
            locked: c.locked,
        };
        self.pockets.insert(pocket, record);
        Ok(CommandResult::PocketOpened { pocket })
    }

    // ---- money movement ----

    fn deposit(&mut self, now: Now, c: &Deposit) -> Checked<Posted> {
        require_amount(c.amount)?;
        let (from, to) = self.parties(c.settlement, SETTLEMENT, c.account, PARTIES)?;
        self.move_money(
            now,
            Movement {
                from,
                to,
                amount: c.amount,
                currency: c.currency,
                counts_toward_limits: false,
            },
        )
    }

    fn withdrawal(&mut self, now: Now, c: &Withdrawal) -> Checked<Posted> {
        require_amount(c.amount)?;
        let (from, to) = self.parties(c.account, PARTIES, c.settlement, SETTLEMENT)?;
        self.move_money(
            now,
            Movement {
                from,
                to,
                amount: c.amount,
                currency: c.currency,
                counts_toward_limits: true,
            },
        )
    }

    fn transfer(&mut self, now: Now, c: &Transfer) -> Checked<Posted> {
        require_amount(c.amount)?;
        let (from, to) = self.parties(c.from, PARTIES, c.to, PARTIES)?;
        self.move_money(
            now,
            Movement {
                from,
                to,
                amount: c.amount,
                currency: c.currency,
                counts_toward_limits: true,
            },
        )
    }

    fn transfer_batch(&mut self, now: Now, items: &[Transfer]) -> Checked<CommandResult> {
        if items.is_empty() || items.len() > BATCH_TRANSFERS_MAX {
            return Err(RejectCode::InvalidBatch);
        }
        let mut results = Vec::with_capacity(items.len());
        for chunk in items.chunks(BATCH_TOUCH_AHEAD) {
            self.touch_accounts(chunk);
            results.extend(chunk.iter().map(|item| match self.transfer(now, item) {
                Ok(posted) => BatchItem::Posted(posted),
                Err(code) => BatchItem::Rejected(code),
            }));
        }
        Ok(CommandResult::Batch(results))
    }

    /// Loads the cache lines each transfer of `items` will read in a tight loop of independent
    /// loads, so their misses overlap instead of stalling one transfer at a time. An account
    /// need not start on a cache line, so its hot first 64 bytes may span two: the loads take
    /// the first and the last byte a movement reads (the sender's `tier` is the 65th). Changes
    /// nothing: the loaded values are discarded.
    fn touch_accounts(&self, items: &[Transfer]) {
        for item in items {
            self.touch_transfer(item);
        }
    }

    fn touch_transfer(&self, item: &Transfer) {
        if let Ok(from) = self.index(item.from) {
            let account = &self.accounts[from];
            std::hint::black_box((account.balance, account.tier));
        }
        if let Ok(to) = self.index(item.to) {
            let account = &self.accounts[to];
            std::hint::black_box((account.balance, account.status));
        }
    }

    fn pocket_move(&mut self, now: Now, c: &PocketMove) -> Checked<Posted> {
        require_amount(c.amount)?;
        let pocket = self.index(c.pocket)?;
        self.require_kind(pocket, &[AccountKind::Pocket])?;
        let parent = self.index_of(self.accounts[pocket].parent);
        let (from, to) = match c.direction {
            PocketDirection::In => (parent, pocket),
            PocketDirection::Out => {
                let rules = &self.pockets[&c.pocket];
                if rules.locked && now.date < rules.target_date {
                    return Err(RejectCode::PocketLocked);
                }
                (pocket, parent)
            }
        };
        self.move_money(
            now,
            Movement {
                from,
                to,
                amount: c.amount,
                currency: c.currency,
                counts_toward_limits: false,
            },
        )
    }

    fn payment(&mut self, now: Now, c: &Payment) -> Checked<Posted> {
        require_amount(c.amount)?;
        let customer = &[AccountKind::Customer];
        let merchant = &[AccountKind::Merchant];
        let (from, to) = self.parties(c.customer, customer, c.merchant, merchant)?;
        let posted = self.move_money(
            now,
            Movement {
                from,
                to,
                amount: c.amount,
                currency: c.currency,
                counts_toward_limits: true,
            },
        )?;
        let record = PaymentRecord {
            txn: posted.txn,
            customer: c.customer,
            merchant: c.merchant,
            amount: c.amount,
            refunded: Amount::ZERO,
            currency: c.currency,
            at: now.timestamp,
        };
        self.payments
            .push(record, self.config.refundable_payments_max);
        Ok(posted)
    }

    fn refund(&mut self, now: Now, c: &Refund) -> Checked<Posted> {
        require_amount(c.amount)?;
        let window_ns = self.config.refund_window_ns;
        let payment = self.payments.get(c.payment, now.timestamp, window_ns);
        let payment = payment.ok_or(RejectCode::PaymentNotFound)?;
        if payment.currency != c.currency {
            return Err(RejectCode::CurrencyMismatch);
        }
        if c.amount.0 > payment.amount.0 - payment.refunded.0 {
            return Err(RejectCode::RefundExceedsPayment);
        }
        let (from, to) = (
            self.index_of(payment.merchant),
            self.index_of(payment.customer),
        );
        let posted = self.move_money(
            now,
            Movement {
                from,
                to,
                amount: c.amount,
                currency: c.currency,
                counts_toward_limits: false,
            },
        )?;
        let payment = self.payments.get_mut(c.payment, now.timestamp, window_ns);
        let payment = payment.expect("payment found above and not removed since");
        payment.refunded = Amount(payment.refunded.0 + c.amount.0);
        Ok(posted)
    }

    // ---- holds ----

    fn hold_reserve(&mut self, now: Now, c: &HoldReserve) -> Checked<CommandResult> {
        require_amount(c.amount)?;
        let (account, destination) =
            self.parties(c.account, PARTIES, c.destination, HOLD_DESTINATIONS)?;
        let horizon = now
            .timestamp
            .saturating_add_nanos(self.config.hold_duration_max_ns);
        let expires_at = c.expiry.deadline(now.timestamp);
        if expires_at <= now.timestamp || expires_at > horizon {
            return Err(RejectCode::InvalidHoldExpiry);
        }
        self.require_currency(account, c.currency)?;
        self.require_currency(destination, c.currency)?;
        self.require_open(account)?;
        self.require_open(destination)?;
        self.require_funds(account, c.amount)?;
        self.require_within_limits(account, c.amount, now)?;
        if self.holds.len() as u64 >= self.config.holds_active_max {
            return Err(RejectCode::CapacityExceeded);
        }
        self.count_outgoing(account, c.amount, now);
        let hold = HoldId(self.next_hold);
        self.next_hold += 1;
        let held_after = self.change_held(account, i128::from(c.amount.0));
        self.hold_deadlines.insert((expires_at, hold));
        self.holds.insert(Hold {
            id: hold,
            account: c.account,
            destination: c.destination,
            amount: c.amount,
            currency: c.currency,
            expires_at,
            limit_date: now.date,
            limit_month_index: now.month_index,
        });
        let change = HoldChange {
            hold,
            account: c.account,
            amount: c.amount,
            held_after,
        };
        Ok(CommandResult::HoldReserved(change))
    }

    fn hold_commit(&mut self, now: Now, c: &HoldCommit) -> Checked<CommandResult> {
        require_amount(c.amount)?;
        let hold = self.active_hold(c.hold, now)?;
        if c.amount > hold.amount {
            return Err(RejectCode::HoldAmountExceeded);
        }
        let movement = Movement {
            from: self.index_of(hold.account),
            to: self.index_of(hold.destination),
            amount: c.amount,
            currency: hold.currency,
            counts_toward_limits: false,
        };
        self.require_open(movement.from)?;
        self.require_open(movement.to)?;
        self.require_credit_room(movement.to, c.amount)?;
        // Funds were reserved: releasing the hold makes at least `c.amount` available.
        let released = Amount(hold.amount.0 - c.amount.0);
        let change = self.finish_hold(&hold, HoldEnd::Committed, released, now);
        let posted = self.post(now, movement);
        Ok(CommandResult::HoldCommitted {
            hold: change,
            released,
            posted,
        })
    }

    fn hold_release(&mut self, now: Now, c: &HoldRelease) -> Checked<CommandResult> {
        let hold = self.active_hold(c.hold, now)?;
        let change = self.finish_hold(&hold, HoldEnd::Released, hold.amount, now);
        Ok(CommandResult::HoldReleased(change))
    }

    /// The hold, if it can still be committed or released at `now`.
    fn active_hold(&self, id: HoldId, now: Now) -> Checked<Hold> {
        if let Some(hold) = self.holds.get(&id) {
            if now.timestamp >= hold.expires_at {
                return Err(RejectCode::HoldExpired);
            }
            return Ok(hold.clone());
        }
        let window_ns = self.config.idempotency_window_ns;
        match self
            .finished_holds
            .get(id, now.timestamp, window_ns)
            .map(|f| f.end)
        {
            Some(HoldEnd::Expired) => Err(RejectCode::HoldExpired),
            Some(HoldEnd::Committed | HoldEnd::Released) => Err(RejectCode::HoldNotActive),
            None => Err(RejectCode::HoldNotFound),
        }
    }

    /// Ends a hold: un-holds its whole amount and gives `unused` back to the limits of the
    /// period it was counted in (if that period is still current).
    fn finish_hold(&mut self, hold: &Hold, end: HoldEnd, unused: Amount, now: Now) -> HoldChange {
        let removed = self.holds.remove(hold.id);
        assert!(removed.is_some(), "finishing a hold that is not active");
        assert!(self.hold_deadlines.remove(&(hold.expires_at, hold.id)));
        let finished = FinishedHold {
            id: hold.id,
            end,
            at: now.timestamp,
        };
        self.finished_holds
            .push(finished, self.config.finished_holds_max);
        let account = self.index_of(hold.account);
        let held_after = self.change_held(account, -i128::from(hold.amount.0));
        self.give_back_limits(account, unused, hold.limit_date, hold.limit_month_index);
        HoldChange {
            hold: hold.id,
            account: hold.account,
            amount: hold.amount,
            held_after,
        }
    }

    fn expire_holds(&mut self, now: Now) -> Vec<HoldExpired> {
        let mut expired = Vec::new();
        while expired.len() < EXPIRIES_PER_COMMAND_MAX {
            let Some(&(deadline, id)) = self.hold_deadlines.first() else {
                break;
            };
            if deadline > now.timestamp {
                break;
            }
            let hold = self.holds[&id].clone();
            let change = self.finish_hold(&hold, HoldEnd::Expired, hold.amount, now);
            expired.push(HoldExpired {
                hold: change.hold,
                account: change.account,
                amount: change.amount,
                held_after: change.held_after,
            });
        }
        expired
    }

    // ---- checks: each returns the rejection it finds, none mutates ----

    fn index(&self, id: AccountId) -> Checked<usize> {
        let index = id.0.wrapping_sub(1);
        if index < self.accounts.len() as u64 {
            Ok(index as usize)
        } else {
            Err(RejectCode::AccountNotFound)
        }
    }

    /// The index of an account the engine itself recorded (a pocket's parent, a hold's account).
    fn index_of(&self, id: AccountId) -> usize {
        self.index(id)
            .expect("engine-recorded account ids always exist")
    }

    /// Looks up both sides of a movement: existence, then distinctness, then kinds.
    fn parties(
        &self,
        from: AccountId,
        from_kinds: &[AccountKind],
        to: AccountId,
        to_kinds: &[AccountKind],
    ) -> Checked<(usize, usize)> {
        let from = self.index(from)?;
        let to = self.index(to)?;
        if from == to {
            return Err(RejectCode::SameAccount);
        }
        self.require_kind(from, from_kinds)?;
        self.require_kind(to, to_kinds)?;
        Ok((from, to))
    }

    fn require_kind(&self, index: usize, kinds: &[AccountKind]) -> Checked<()> {
        match kinds.contains(&self.accounts[index].kind) {
            true => Ok(()),
            false => Err(RejectCode::InvalidAccountKind),
        }
    }

    fn require_tier(&self, tier: u8) -> Checked<()> {
        match usize::from(tier) < self.config.tiers.len() {
            true => Ok(()),
            false => Err(RejectCode::InvalidTier),
        }
    }

    fn require_account_capacity(&self) -> Checked<()> {
        match (self.accounts.len() as u64) < self.config.accounts_max {
            true => Ok(()),
            false => Err(RejectCode::CapacityExceeded),
        }
    }

    fn require_currency(&self, index: usize, currency: Currency) -> Checked<()> {
        match self.accounts[index].currency == currency {
            true => Ok(()),
            false => Err(RejectCode::CurrencyMismatch),
        }
    }

    fn require_open(&self, index: usize) -> Checked<()> {
        match self.accounts[index].status {
            AccountStatus::Active => Ok(()),
            AccountStatus::Frozen => Err(RejectCode::AccountFrozen),
            AccountStatus::Closed => Err(RejectCode::AccountClosed),
        }
    }

    /// Available balance plus overdraft must cover the amount; settlement accounts are exempt.
    fn require_funds(&self, index: usize, amount: Amount) -> Checked<()> {
        let account = &self.accounts[index];
        if account.kind == AccountKind::Settlement {
            return Ok(());
        }
        let spendable = account.available() + i128::from(account.overdraft_limit.0);
        match spendable >= i128::from(amount.0) {
            true => Ok(()),
            false => Err(RejectCode::InsufficientFunds),
        }
    }

    /// Tier limits apply to customer and merchant accounts, per Jakarta day and month.
    fn require_within_limits(&self, index: usize, amount: Amount, now: Now) -> Checked<()> {
        let account = &self.accounts[index];
        if !PARTIES.contains(&account.kind) {
            return Ok(());
        }
        let tier = &self.config.tiers[usize::from(account.tier)];
        let (spent_day, spent_month) = spent_now(account, now);
        if spent_day.saturating_add(amount.0) > tier.daily_outgoing.0 {
            return Err(RejectCode::DailyLimitExceeded);
        }
        if spent_month.saturating_add(amount.0) > tier.monthly_outgoing.0 {
            return Err(RejectCode::MonthlyLimitExceeded);
        }
        Ok(())
    }

    fn require_debit_room(&self, index: usize, amount: Amount) -> Checked<()> {
        match self.accounts[index].balance - i128::from(amount.0) >= -BALANCE_UNITS_MAX {
            true => Ok(()),
            false => Err(RejectCode::AmountOverflow),
        }
    }

    fn require_credit_room(&self, index: usize, amount: Amount) -> Checked<()> {
        match self.accounts[index].balance + i128::from(amount.0) <= BALANCE_UNITS_MAX {
            true => Ok(()),
            false => Err(RejectCode::AmountOverflow),
        }
    }

    fn check_movement(&self, now: Now, m: Movement) -> Checked<()> {
        self.require_currency(m.from, m.currency)?;
        self.require_currency(m.to, m.currency)?;
        self.require_open(m.from)?;
        self.require_open(m.to)?;
        self.require_funds(m.from, m.amount)?;
        if m.counts_toward_limits {
            self.require_within_limits(m.from, m.amount, now)?;
        }
        self.require_debit_room(m.from, m.amount)?;
        self.require_credit_room(m.to, m.amount)
    }

    // ---- mutations: called only after every check passed ----

    fn move_money(&mut self, now: Now, m: Movement) -> Checked<Posted> {
        self.check_movement(now, m)?;
        Ok(self.post(now, m))
    }

    fn post(&mut self, now: Now, m: Movement) -> Posted {
        if m.counts_toward_limits {
            self.count_outgoing(m.from, m.amount, now);
        }
        let units = i128::from(m.amount.0);
        let debit = self.change_balance(m.from, -units);
        let credit = self.change_balance(m.to, units);
        let txn = TxnId(self.next_txn);
        self.next_txn += 1;
        Posted {
            txn,
            debit: Posting {
                account: id_of(m.from),
                amount: m.amount,
                balance_after: debit,
            },
            credit: Posting {
                account: id_of(m.to),
                amount: m.amount,
                balance_after: credit,
            },
        }
    }

    /// The one place balances change. Returns the balance after.
    fn change_balance(&mut self, index: usize, delta: i128) -> i128 {
        let account = self.accounts.get_mut(index);
        account.balance += delta;
        self.net_units += delta;
        assert!(
            account.balance.abs() <= BALANCE_UNITS_MAX,
            "balance outside DECIMAL(19,4)"
        );
        if account.kind != AccountKind::Settlement {
            let floor = -i128::from(account.overdraft_limit.0);
            assert!(
                account.available() >= floor,
                "balance below zero without overdraft"
            );
        }
        account.balance
    }

    /// The one place held amounts change. Returns the held amount after.
    fn change_held(&mut self, index: usize, delta: i128) -> i128 {
        let account = self.accounts.get_mut(index);
        account.held += delta;
        assert!(account.held >= 0, "held amount below zero");
        let floor = -i128::from(account.overdraft_limit.0);
        assert!(account.available() >= floor, "hold beyond available funds");
        account.held
    }

    fn count_outgoing(&mut self, index: usize, amount: Amount, now: Now) {
        let account = self.accounts.get_mut(index);
        if !PARTIES.contains(&account.kind) {
            return;
        }
        let (spent_day, spent_month) = spent_now(account, now);
        account.spent_date = now.date;
        account.spent_month_index = now.month_index;
        // Checked against the tier limits (<= DECIMAL(19,4) max) just before: no overflow.
        account.spent_day = Amount(spent_day + amount.0);
        account.spent_month = Amount(spent_month + amount.0);
    }

    fn give_back_limits(&mut self, index: usize, amount: Amount, date: Date, month: u32) {
        let account = self.accounts.get_mut(index);
        if account.spent_date == date {
            account.spent_day = Amount(account.spent_day.0.saturating_sub(amount.0));
        }
        if account.spent_month_index == month {
            account.spent_month = Amount(account.spent_month.0.saturating_sub(amount.0));
        }
    }

    // ---- reading ----

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn last_timestamp(&self) -> Timestamp {
        self.last_timestamp
    }

    pub fn account(&self, id: AccountId) -> Option<&Account> {
        self.index(id).ok().map(|index| &self.accounts[index])
    }

    pub fn accounts(&self) -> impl ExactSizeIterator<Item = (AccountId, &Account)> {
        self.accounts
            .iter()
            .enumerate()
            .map(|(index, account)| (id_of(index), account))
    }

    pub fn pocket(&self, id: AccountId) -> Option<&Pocket> {
        self.pockets.get(&id)
    }

    /// Pockets of one account, in id order.
    pub fn pockets_of(&self, parent: AccountId) -> impl Iterator<Item = &Pocket> {
        self.pockets
            .values()
            .filter(move |pocket| pocket.parent == parent)
    }

    pub fn hold(&self, id: HoldId) -> Option<&Hold> {
        self.holds.get(&id)
    }

    /// Active holds, in no particular order (callers that need an order sort them).
    pub fn holds(&self) -> impl ExactSizeIterator<Item = &Hold> {
        self.holds.values()
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            last_seq: self.last_seq,
            accounts: self.accounts.len() as u64,
            holds_active: self.holds.len() as u64,
            finished_holds: self.finished_holds.len() as u64,
            refundable_payments: self.payments.len() as u64,
            payments_evicted_early: self.payments.evicted_early,
            idempotency_entries: self.idempotency.len() as u64,
            idempotency_evicted_early: self.idempotency.evicted_early,
        }
    }

    /// The sum of all balances per currency, by a full scan. Zero for every currency.
    pub fn ledger_totals(&self) -> BTreeMap<Currency, i128> {
        let mut totals = BTreeMap::new();
        for account in self.accounts.iter() {
            *totals.entry(account.currency).or_insert(0) += account.balance;
        }
        totals
    }

    /// Checks every invariant by a full scan (O(accounts + holds)). `apply` checks the O(1)
    /// forms on every command; tests call this after every step and restore calls it once.
    pub fn verify(&self) -> Result<(), String> {
        // Bounds first: a restored snapshot may carry any i128, and summing out-of-range
        // balances would overflow (a panic in debug builds) instead of reporting an error.
        let out_of_range =
            |a: &Account| a.balance.unsigned_abs() > BALANCE_UNITS_MAX.unsigned_abs();
        if let Some(index) = self.accounts.iter().position(out_of_range) {
            return Err(format!(
                "account {}: balance outside DECIMAL(19,4)",
                index + 1
            ));
        }
        if let Some((currency, total)) = self.ledger_totals().into_iter().find(|(_, t)| *t != 0) {
            return Err(format!(
                "ledger for currency {} sums to {total}, not zero",
                currency.0
            ));
        }
        let held = self.verify_holds()?;
        let open_pockets = self.verify_pockets()?;
        for (index, account) in self.accounts.iter().enumerate() {
            self.verify_account(account, held[index], open_pockets[index])
                .map_err(|reason| format!("account {}: {reason}", index + 1))?;
        }
        self.verify_windows()
    }

    /// Checks every active hold and returns the held total per account.
    fn verify_holds(&self) -> Result<Vec<i128>, String> {
        let mut held = vec![0i128; self.accounts.len()];
        for hold in self.holds.values() {
            let fail = |reason: &str| format!("hold {}: {reason}", hold.id.0);
            let index = self
                .index(hold.account)
                .map_err(|_| fail("unknown account"))?;
            let destination = self
                .index(hold.destination)
                .map_err(|_| fail("unknown destination"))?;
            if !PARTIES.contains(&self.accounts[index].kind)
                || !HOLD_DESTINATIONS.contains(&self.accounts[destination].kind)
            {
                return Err(fail("account kinds do not allow a hold"));
            }
            if !hold.amount.is_valid_positive() || hold.id.0 >= self.next_hold {
                return Err(fail("invalid amount or id"));
            }
            // Commit moves money in the hold's currency without checking the accounts again.
            let currencies = [
                self.accounts[index].currency,
                self.accounts[destination].currency,
            ];
            if currencies != [hold.currency; 2] {
                return Err(fail("currency differs from its accounts'"));
            }
            if !self.hold_deadlines.contains(&(hold.expires_at, hold.id)) {
                return Err(fail("not indexed by its deadline"));
            }
            held[index] += i128::from(hold.amount.0);
        }
        if self.hold_deadlines.len() != self.holds.len() {
            return Err("hold deadlines and holds disagree".into());
        }
        Ok(held)
    }

    /// Checks that pocket records and pocket accounts match; returns open pockets per parent.
    fn verify_pockets(&self) -> Result<Vec<u32>, String> {
        let mut open_pockets = vec![0u32; self.accounts.len()];
        for pocket in self.pockets.values() {
            let index = self
                .index(pocket.id)
                .map_err(|_| "pocket without account")?;
            let parent = self
                .index(pocket.parent)
                .map_err(|_| "pocket without parent")?;
            let account = &self.accounts[index];
            let parent_account = &self.accounts[parent];
            let parent_is_customer = parent_account.kind == AccountKind::Customer;
            if account.kind != AccountKind::Pocket
                || account.parent != pocket.parent
                || !parent_is_customer
                || parent_account.currency != account.currency
            {
                return Err(format!("pocket {} does not match its account", pocket.id.0));
            }
            if account.status != AccountStatus::Closed {
                open_pockets[parent] += 1;
            }
        }
        // Each record names a distinct pocket account; together with equal counts, every
        // pocket account has its record (pocket moves rely on it).
        let pocket_accounts = self
            .accounts
            .iter()
            .filter(|a| a.kind == AccountKind::Pocket)
            .count();
        if pocket_accounts != self.pockets.len() {
            return Err("pocket accounts without pocket records".into());
        }
        Ok(open_pockets)
    }

    /// Checks one account against the holds and pockets that name it (`held`,
    /// `open_pockets`) and the configuration. Balances are range-checked before this, in
    /// `verify`, for every account.
    fn verify_account(
        &self,
        account: &Account,
        held: i128,
        open_pockets: u32,
    ) -> Result<(), String> {
        if account.held != held {
            return Err(format!("held {} but its holds sum to {held}", account.held));
        }
        let floor = match account.kind {
            AccountKind::Settlement => -BALANCE_UNITS_MAX,
            _ => -i128::from(account.overdraft_limit.0),
        };
        if account.available() < floor {
            return Err("available balance below zero without overdraft".into());
        }
        if u32::from(account.open_pockets) != open_pockets {
            return Err("open pocket count is wrong".into());
        }
        if usize::from(account.tier) >= self.config.tiers.len() {
            return Err("tier outside the tier table".into());
        }
        if account.overdraft_limit > Amount::MAX {
            return Err("overdraft above DECIMAL(19,4)".into());
        }
        let is_pocket = account.kind == AccountKind::Pocket;
        if is_pocket && account.overdraft_limit != Amount::ZERO {
            return Err("pocket with an overdraft".into());
        }
        if is_pocket != (account.parent != AccountId(0)) {
            return Err("only pockets have a parent".into());
        }
        if is_pocket && self.pockets.contains_key(&account.parent) {
            return Err("a pocket's parent is itself a pocket".into());
        }
        Ok(())
    }

    /// Checks the bounded windows: consistent indexes, nothing from the future, and records
    /// that name existing accounts, transactions and holds.
    fn verify_windows(&self) -> Result<(), String> {
        let last = self.last_timestamp;
        self.idempotency
            .verify(last, |entry| match entry.seq <= self.last_seq {
                true => Ok(()),
                false => Err(format!("entry from seq {} after the last seq", entry.seq)),
            })
            .map_err(|e| format!("idempotency window: {e}"))?;
        self.payments
            .verify(last, |payment| self.verify_payment(payment))
            .map_err(|e| format!("payments window: {e}"))?;
        self.finished_holds
            .verify(last, |hold| match hold.id.0 < self.next_hold {
                true => Ok(()),
                false => Err(format!("hold {} was never issued", hold.id.0)),
            })
            .map_err(|e| format!("finished holds: {e}"))
    }

    fn verify_payment(&self, payment: &PaymentRecord) -> Result<(), String> {
        // Refunds move money in the payment's currency; both parties must hold it.
        let is = |id, kind| {
            let account = self.index(id).map(|index| &self.accounts[index]).ok();
            account.is_some_and(|a| a.kind == kind && a.currency == payment.currency)
        };
        let parties_ok = is(payment.customer, AccountKind::Customer)
            && is(payment.merchant, AccountKind::Merchant);
        let amounts_ok = payment.amount.is_valid_positive() && payment.refunded <= payment.amount;
        match parties_ok && amounts_ok && payment.txn.0 < self.next_txn {
            true => Ok(()),
            false => Err(format!("payment {} is inconsistent", payment.txn.0)),
        }
    }
}

fn require_amount(amount: Amount) -> Checked<()> {
    match amount.is_valid_positive() {
        true => Ok(()),
        false => Err(RejectCode::InvalidAmount),
    }
}

/// Outgoing totals counted in the current Jakarta day and month (zero once a period rolls).
fn spent_now(account: &Account, now: Now) -> (u64, u64) {
    let day = if account.spent_date == now.date {
        account.spent_day.0
    } else {
        0
    };
    let month = if account.spent_month_index == now.month_index {
        account.spent_month.0
    } else {
        0
    };
    (day, month)
}

/// A configured count as a table size (bounded by `CAPACITY_MAX` in `validate`).
fn capacity(count: u64) -> usize {
    usize::try_from(count).unwrap_or(usize::MAX)
}

fn id_of(index: usize) -> AccountId {
    AccountId(index as u64 + 1)
}
