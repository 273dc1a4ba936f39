//! A deliberately simple reference model of the balance engine, written from the rules (the
//! engine's contract) rather than from `engine/src/engine.rs`, so that the two can disagree.
//!
//! It takes the engine's public `Command` values and produces the engine's public `Outcome`
//! values, but keeps its own state in the plainest form that states the rules: a `Vec` of
//! accounts, `BTreeMap`s and `Vec`s searched by linear scans, windows that forget by age, and
//! fresh calendar arithmetic. Nothing here is fast; everything here is easy to check by eye.
//!
//! Windows (idempotency keys, refundable payments, finished holds) keep only live entries and,
//! when full, drop the oldest live one. The engine also counts expired entries it has not yet
//! removed, but those are older than any live one and so are dropped first: the answers agree.

use std::collections::BTreeMap;

use payu_engine::{
    AMOUNT_UNITS_MAX, AccountId, AccountKind, AccountStatus, Amount, BATCH_TRANSFERS_MAX,
    BatchItem, Command, CommandBody, CommandResult, Currency, Date, EngineConfig, HoldChange,
    HoldCommit, HoldEnd, HoldExpired, HoldExpiry, HoldId, HoldRelease, HoldReserve, OpenAccount,
    OpenPocket, Outcome, OutcomeSummary, OwnerId, POCKET_NAME_BYTES_MAX, PocketDirection,
    PocketMove, Posted, Posting, Refund, RejectCode, Timestamp, Transfer, TxnId, UpdateAccount,
};

/// DECIMAL(19,4) in units of 10^-4: the largest amount and the largest balance magnitude.
pub const MAX: u64 = AMOUNT_UNITS_MAX;
const MAX_BALANCE: i128 = MAX as i128;
/// The most overdue holds expired at the start of one command.
const EXPIRIES_PER_COMMAND: usize = 64;

const NANOS_PER_SECOND: u64 = 1_000_000_000;
const SECONDS_PER_DAY: u64 = 86_400;
const JAKARTA_OFFSET_SECONDS: u64 = 7 * 3600;

const PARTIES: &[AccountKind] = &[AccountKind::Customer, AccountKind::Merchant];
const SETTLEMENT: &[AccountKind] = &[AccountKind::Settlement];
const CUSTOMER: &[AccountKind] = &[AccountKind::Customer];
const MERCHANT: &[AccountKind] = &[AccountKind::Merchant];

type Checked<T> = Result<T, RejectCode>;

/// The Jakarta (UTC+7) calendar day of a timestamp, as days since 1970-01-01.
pub fn jakarta_day(at: Timestamp) -> u32 {
    let day = (at.0 / NANOS_PER_SECOND + JAKARTA_OFFSET_SECONDS) / SECONDS_PER_DAY;
    u32::try_from(day).expect("timestamps in these tests are centuries from overflow")
}

/// The (year, month) of a day number, found by walking whole years and months from 1970:
/// slow and obviously right, unlike the engine's closed-form civil calendar.
pub fn year_month(day: u32) -> (u32, u32) {
    let mut remaining = day;
    let mut year = 1970;
    while remaining >= days_in_year(year) {
        remaining -= days_in_year(year);
        year += 1;
    }
    let mut month = 1;
    while remaining >= days_in_month(year, month) {
        remaining -= days_in_month(year, month);
        month += 1;
    }
    (year, month)
}

fn is_leap(year: u32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_year(year: u32) -> u32 {
    if is_leap(year) { 366 } else { 365 }
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Whether something recorded at `at` is still inside a window of `window_ns` at `now`.
fn live(at: Timestamp, window_ns: u64, now: Timestamp) -> bool {
    u128::from(at.0) + u128::from(window_ns) > u128::from(now.0)
}

fn valid_amount(amount: Amount) -> Checked<()> {
    match amount.0 >= 1 && amount.0 <= MAX {
        true => Ok(()),
        false => Err(RejectCode::InvalidAmount),
    }
}

fn require_kind(account: &ModelAccount, kinds: &[AccountKind]) -> Checked<()> {
    match kinds.contains(&account.kind) {
        true => Ok(()),
        false => Err(RejectCode::InvalidAccountKind),
    }
}

fn require_open(account: &ModelAccount) -> Checked<()> {
    match account.status {
        AccountStatus::Active => Ok(()),
        AccountStatus::Frozen => Err(RejectCode::AccountFrozen),
        AccountStatus::Closed => Err(RejectCode::AccountClosed),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelAccount {
    pub owner: OwnerId,
    pub kind: AccountKind,
    pub tier: u8,
    pub currency: Currency,
    pub overdraft: u64,
    pub status: AccountStatus,
    /// Set for pockets only.
    pub parent: Option<AccountId>,
    pub balance: i128,
    pub held: i128,
    /// The Jakarta day last counted against the daily limit, and its total.
    pub spent_day: Option<(u32, u64)>,
    /// The (year, month) last counted against the monthly limit, and its total.
    pub spent_month: Option<((u32, u32), u64)>,
}

impl ModelAccount {
    pub fn available(&self) -> i128 {
        self.balance - self.held
    }

    pub fn is_party(&self) -> bool {
        PARTIES.contains(&self.kind)
    }

    /// What has been counted against the limits in the day and month of `day`.
    pub fn spent_in(&self, day: u32) -> (u64, u64) {
        let spent_day = match self.spent_day {
            Some((counted_day, total)) if counted_day == day => total,
            _ => 0,
        };
        let spent_month = match self.spent_month {
            Some((counted_month, total)) if counted_month == year_month(day) => total,
            _ => 0,
        };
        (spent_day, spent_month)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelPocket {
    pub parent: AccountId,
    pub name: String,
    pub target_amount: Amount,
    pub target_date: Date,
    pub locked: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelHold {
    pub account: AccountId,
    pub destination: AccountId,
    pub amount: u64,
    pub currency: Currency,
    pub expires_at: Timestamp,
    /// The Jakarta day and month the reservation was counted in.
    pub day: u32,
    pub month: (u32, u32),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelPayment {
    pub txn: TxnId,
    pub customer: AccountId,
    pub merchant: AccountId,
    pub amount: u64,
    pub refunded: u64,
    pub currency: Currency,
    pub at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remembered {
    pub fingerprint: u64,
    pub seq: u64,
    pub at: Timestamp,
    pub summary: OutcomeSummary,
}

/// The command's place in time.
#[derive(Clone, Copy, Debug)]
struct Now {
    at: Timestamp,
    day: u32,
    month: (u32, u32),
}

/// One balanced movement between two accounts.
#[derive(Clone, Copy, Debug)]
struct Movement {
    from: AccountId,
    to: AccountId,
    amount: u64,
    currency: Currency,
    counts_toward_limits: bool,
}

#[derive(Clone, Debug)]
pub struct Model {
    pub config: EngineConfig,
    pub last_seq: u64,
    pub last_at: Timestamp,
    /// `accounts[i]` is `AccountId(i + 1)`.
    pub accounts: Vec<ModelAccount>,
    pub pockets: BTreeMap<AccountId, ModelPocket>,
    /// Active holds only.
    pub holds: BTreeMap<HoldId, ModelHold>,
    /// Holds that ended, oldest first, with how and when.
    pub finished_holds: Vec<(HoldId, HoldEnd, Timestamp)>,
    /// Refundable payments, oldest first.
    pub payments: Vec<ModelPayment>,
    pub idempotency: BTreeMap<u128, Remembered>,
    pub next_txn: u64,
    pub next_hold: u64,
}

impl Model {
    pub fn new(config: EngineConfig) -> Model {
        Model {
            config,
            last_seq: 0,
            last_at: Timestamp(0),
            accounts: Vec::new(),
            pockets: BTreeMap::new(),
            holds: BTreeMap::new(),
            finished_holds: Vec::new(),
            payments: Vec::new(),
            idempotency: BTreeMap::new(),
            next_txn: 1,
            next_hold: 1,
        }
    }

    pub fn account(&self, id: AccountId) -> Option<&ModelAccount> {
        let index = usize::try_from(id.0).ok()?.checked_sub(1)?;
        self.accounts.get(index)
    }

    fn account_mut(&mut self, id: AccountId) -> &mut ModelAccount {
        let index = usize::try_from(id.0 - 1).expect("checked id");
        &mut self.accounts[index]
    }

    fn find(&self, id: AccountId) -> Checked<&ModelAccount> {
        self.account(id).ok_or(RejectCode::AccountNotFound)
    }

    /// Pockets of `parent` that are not closed, counted by a scan.
    pub fn open_pockets(&self, parent: AccountId) -> usize {
        let open = |id: &AccountId| {
            self.account(*id)
                .is_some_and(|pocket| pocket.status != AccountStatus::Closed)
        };
        self.pockets
            .iter()
            .filter(|(id, pocket)| pocket.parent == parent && open(id))
            .count()
    }

    pub fn apply(&mut self, seq: u64, at: Timestamp, command: &Command) -> Outcome {
        assert_eq!(seq, self.last_seq + 1, "model: seq must be consecutive");
        assert!(at >= self.last_at, "model: time must not go backwards");
        self.last_seq = seq;
        self.last_at = at;
        let day = jakarta_day(at);
        let now = Now {
            at,
            day,
            month: year_month(day),
        };
        let expired_holds = self.expire_holds(now);
        let result = self.apply_idempotent(seq, now, command);
        Outcome {
            result,
            expired_holds,
        }
    }

    fn expire_holds(&mut self, now: Now) -> Vec<HoldExpired> {
        let mut due: Vec<(Timestamp, HoldId)> = self
            .holds
            .iter()
            .filter(|(_, hold)| hold.expires_at <= now.at)
            .map(|(id, hold)| (hold.expires_at, *id))
            .collect();
        due.sort();
        due.truncate(EXPIRIES_PER_COMMAND);
        let mut expired = Vec::new();
        for (_, id) in due {
            let hold = self.end_hold(now, id, HoldEnd::Expired);
            self.give_back(&hold, hold.amount);
            let held_after = self.account_mut(hold.account).held;
            expired.push(HoldExpired {
                hold: id,
                account: hold.account,
                amount: Amount(hold.amount),
                held_after,
            });
        }
        expired
    }

    /// Removes an active hold, takes it off its account's held total and remembers its end.
    fn end_hold(&mut self, now: Now, id: HoldId, end: HoldEnd) -> ModelHold {
        let hold = self.holds.remove(&id).expect("ending an active hold");
        self.account_mut(hold.account).held -= i128::from(hold.amount);
        let window_ns = self.config.idempotency_window_ns;
        let capacity = self.config.finished_holds_max;
        self.finished_holds
            .retain(|(_, _, at)| live(*at, window_ns, now.at));
        while self.finished_holds.len() as u64 >= capacity {
            self.finished_holds.remove(0);
        }
        self.finished_holds.push((id, end, now.at));
        hold
    }

    fn apply_idempotent(&mut self, seq: u64, now: Now, command: &Command) -> CommandResult {
        let fingerprint = command.body.fingerprint();
        let window_ns = self.config.idempotency_window_ns;
        if let Some(entry) = self.idempotency.get(&command.key.0)
            && live(entry.at, window_ns, now.at)
        {
            return match entry.fingerprint == fingerprint {
                true => CommandResult::Replayed {
                    original_seq: entry.seq,
                    original: entry.summary,
                },
                false => CommandResult::Rejected(RejectCode::IdempotencyConflict),
            };
        }
        let result = self.execute(now, &command.body);
        self.idempotency
            .retain(|_, entry| live(entry.at, window_ns, now.at));
        while self.idempotency.len() as u64 >= self.config.idempotency_entries_max {
            let oldest = self.idempotency.iter().min_by_key(|(_, entry)| entry.seq);
            let oldest = *oldest.expect("a full window has entries").0;
            self.idempotency.remove(&oldest);
        }
        let remembered = Remembered {
            fingerprint,
            seq,
            at: now.at,
            summary: summarise(&result),
        };
        self.idempotency.insert(command.key.0, remembered);
        result
    }

    fn execute(&mut self, now: Now, body: &CommandBody) -> CommandResult {
        let result = match body {
            CommandBody::OpenAccount(c) => self
                .open_account(c)
                .map(|account| CommandResult::AccountOpened { account }),
            CommandBody::UpdateAccount(c) => self
                .update_account(c)
                .map(|account| CommandResult::AccountUpdated { account }),
            CommandBody::OpenPocket(c) => self
                .open_pocket(c)
                .map(|pocket| CommandResult::PocketOpened { pocket }),
            CommandBody::Deposit(c) => {
                let movement = (c.settlement, c.account, c.amount, c.currency);
                self.two_party(now, movement, SETTLEMENT, PARTIES, false)
                    .map(CommandResult::Posted)
            }
            CommandBody::Withdrawal(c) => {
                let movement = (c.account, c.settlement, c.amount, c.currency);
                self.two_party(now, movement, PARTIES, SETTLEMENT, true)
                    .map(CommandResult::Posted)
            }
            CommandBody::Transfer(c) => self.transfer(now, c).map(CommandResult::Posted),
            CommandBody::TransferBatch(items) => self.transfer_batch(now, items),
            CommandBody::PocketMove(c) => self.pocket_move(now, c).map(CommandResult::Posted),
            CommandBody::Payment(c) => {
                let movement = (c.customer, c.merchant, c.amount, c.currency);
                let posted = self.two_party(now, movement, CUSTOMER, MERCHANT, true);
                posted
                    .inspect(|posted| self.remember_payment(now, posted, c.currency))
                    .map(CommandResult::Posted)
            }
            CommandBody::Refund(c) => self.refund(now, c).map(CommandResult::Posted),
            CommandBody::HoldReserve(c) => {
                self.hold_reserve(now, c).map(CommandResult::HoldReserved)
            }
            CommandBody::HoldCommit(c) => self.hold_commit(now, c),
            CommandBody::HoldRelease(c) => {
                self.hold_release(now, c).map(CommandResult::HoldReleased)
            }
        };
        result.unwrap_or_else(CommandResult::Rejected)
    }

    fn open_account(&mut self, c: &OpenAccount) -> Checked<AccountId> {
        if c.kind == AccountKind::Pocket {
            return Err(RejectCode::InvalidAccountKind);
        }
        if usize::from(c.tier) >= self.config.tiers.len() {
            return Err(RejectCode::InvalidTier);
        }
        if c.overdraft_limit.0 > MAX {
            return Err(RejectCode::InvalidAmount);
        }
        if c.kind == AccountKind::Settlement && c.overdraft_limit.0 > 0 {
            return Err(RejectCode::InvalidAccountKind);
        }
        self.require_room()?;
        Ok(self.add_account(ModelAccount {
            owner: c.owner,
            kind: c.kind,
            tier: c.tier,
            currency: c.currency,
            overdraft: c.overdraft_limit.0,
            status: AccountStatus::Active,
            parent: None,
            balance: 0,
            held: 0,
            spent_day: None,
            spent_month: None,
        }))
    }

    fn require_room(&self) -> Checked<()> {
        match (self.accounts.len() as u64) < self.config.accounts_max {
            true => Ok(()),
            false => Err(RejectCode::CapacityExceeded),
        }
    }

    fn add_account(&mut self, account: ModelAccount) -> AccountId {
        self.accounts.push(account);
        AccountId(self.accounts.len() as u64)
    }

    fn update_account(&mut self, c: &UpdateAccount) -> Checked<AccountId> {
        let account = self.find(c.account)?;
        if account.status == AccountStatus::Closed {
            return Err(RejectCode::AccountClosed);
        }
        if (c.tier.is_some() || c.overdraft_limit.is_some()) && !account.is_party() {
            return Err(RejectCode::InvalidAccountKind);
        }
        if c.tier
            .is_some_and(|tier| usize::from(tier) >= self.config.tiers.len())
        {
            return Err(RejectCode::InvalidTier);
        }
        if let Some(overdraft) = c.overdraft_limit {
            if overdraft.0 > MAX {
                return Err(RejectCode::InvalidAmount);
            }
            if account.available() + i128::from(overdraft.0) < 0 {
                return Err(RejectCode::OverdraftInUse);
            }
        }
        if c.status == Some(AccountStatus::Closed) {
            let empty = account.balance == 0 && account.held == 0;
            if !empty || self.open_pockets(c.account) > 0 {
                return Err(RejectCode::AccountNotEmpty);
            }
        }
        let account = self.account_mut(c.account);
        if let Some(status) = c.status {
            account.status = status;
        }
        if let Some(tier) = c.tier {
            account.tier = tier;
        }
        if let Some(overdraft) = c.overdraft_limit {
            account.overdraft = overdraft.0;
        }
        Ok(c.account)
    }

    fn open_pocket(&mut self, c: &OpenPocket) -> Checked<AccountId> {
        let parent = self.find(c.parent)?;
        require_kind(parent, CUSTOMER)?;
        require_open(parent)?;
        if c.name.is_empty() || c.name.len() > POCKET_NAME_BYTES_MAX {
            return Err(RejectCode::InvalidPocket);
        }
        valid_amount(c.target_amount)?;
        if self.open_pockets(c.parent) >= usize::from(self.config.pockets_per_account_max) {
            return Err(RejectCode::TooManyPockets);
        }
        self.require_room()?;
        let pocket = ModelAccount {
            kind: AccountKind::Pocket,
            overdraft: 0,
            parent: Some(c.parent),
            balance: 0,
            held: 0,
            spent_day: None,
            spent_month: None,
            ..parent.clone()
        };
        let id = self.add_account(pocket);
        let terms = ModelPocket {
            parent: c.parent,
            name: c.name.clone(),
            target_amount: c.target_amount,
            target_date: c.target_date,
            locked: c.locked,
        };
        self.pockets.insert(id, terms);
        Ok(id)
    }

    /// The common checks of deposits, withdrawals, transfers and payments, then the movement.
    fn two_party(
        &mut self,
        now: Now,
        (from, to, amount, currency): (AccountId, AccountId, Amount, Currency),
        from_kinds: &[AccountKind],
        to_kinds: &[AccountKind],
        counts_toward_limits: bool,
    ) -> Checked<Posted> {
        valid_amount(amount)?;
        let from_account = self.find(from)?;
        let to_account = self.find(to)?;
        if from == to {
            return Err(RejectCode::SameAccount);
        }
        require_kind(from_account, from_kinds)?;
        require_kind(to_account, to_kinds)?;
        let movement = Movement {
            from,
            to,
            amount: amount.0,
            currency,
            counts_toward_limits,
        };
        self.check_movement(now, movement)?;
        Ok(self.post(now, movement))
    }

    fn transfer(&mut self, now: Now, c: &Transfer) -> Checked<Posted> {
        self.two_party(
            now,
            (c.from, c.to, c.amount, c.currency),
            PARTIES,
            PARTIES,
            true,
        )
    }

    fn transfer_batch(&mut self, now: Now, items: &[Transfer]) -> Checked<CommandResult> {
        if items.is_empty() || items.len() > BATCH_TRANSFERS_MAX {
            return Err(RejectCode::InvalidBatch);
        }
        let results = items
            .iter()
            .map(|item| match self.transfer(now, item) {
                Ok(posted) => BatchItem::Posted(posted),
                Err(code) => BatchItem::Rejected(code),
            })
            .collect();
        Ok(CommandResult::Batch(results))
    }

    fn check_movement(&self, now: Now, m: Movement) -> Checked<()> {
        let from = self.find(m.from)?;
        let to = self.find(m.to)?;
        if from.currency != m.currency || to.currency != m.currency {
            return Err(RejectCode::CurrencyMismatch);
        }
        require_open(from)?;
        require_open(to)?;
        let amount = i128::from(m.amount);
        if from.kind != AccountKind::Settlement
            && from.available() + i128::from(from.overdraft) < amount
        {
            return Err(RejectCode::InsufficientFunds);
        }
        if m.counts_toward_limits {
            self.check_limits(now, from, m.amount)?;
        }
        if from.balance - amount < -MAX_BALANCE || to.balance + amount > MAX_BALANCE {
            return Err(RejectCode::AmountOverflow);
        }
        Ok(())
    }

    fn check_limits(&self, now: Now, account: &ModelAccount, amount: u64) -> Checked<()> {
        if !account.is_party() {
            return Ok(());
        }
        let tier = self.config.tiers[usize::from(account.tier)];
        let (spent_day, spent_month) = account.spent_in(now.day);
        // In u128: a day's total plus one amount can pass u64::MAX.
        if u128::from(spent_day) + u128::from(amount) > u128::from(tier.daily_outgoing.0) {
            return Err(RejectCode::DailyLimitExceeded);
        }
        if u128::from(spent_month) + u128::from(amount) > u128::from(tier.monthly_outgoing.0) {
            return Err(RejectCode::MonthlyLimitExceeded);
        }
        Ok(())
    }

    fn count_toward_limits(&mut self, now: Now, id: AccountId, amount: u64) {
        let account = self.account_mut(id);
        if !account.is_party() {
            return;
        }
        let (spent_day, spent_month) = account.spent_in(now.day);
        // The limit check bounds both totals by the tier's limits, which are at most MAX.
        account.spent_day = Some((now.day, spent_day + amount));
        account.spent_month = Some((now.month, spent_month + amount));
    }

    /// Gives back `amount` of a hold's reservation to the period it was counted in, if the
    /// account's counters are still for that period.
    fn give_back(&mut self, hold: &ModelHold, amount: u64) {
        let account = self.account_mut(hold.account);
        if let Some((day, total)) = account.spent_day
            && day == hold.day
        {
            account.spent_day = Some((day, total - total.min(amount)));
        }
        if let Some((month, total)) = account.spent_month
            && month == hold.month
        {
            account.spent_month = Some((month, total - total.min(amount)));
        }
    }

    fn post(&mut self, now: Now, m: Movement) -> Posted {
        if m.counts_toward_limits {
            self.count_toward_limits(now, m.from, m.amount);
        }
        let amount = i128::from(m.amount);
        let from = self.account_mut(m.from);
        from.balance -= amount;
        let debit = Posting {
            account: m.from,
            amount: Amount(m.amount),
            balance_after: from.balance,
        };
        let to = self.account_mut(m.to);
        to.balance += amount;
        let credit = Posting {
            account: m.to,
            amount: Amount(m.amount),
            balance_after: to.balance,
        };
        let txn = TxnId(self.next_txn);
        self.next_txn += 1;
        Posted { txn, debit, credit }
    }

    fn remember_payment(&mut self, now: Now, posted: &Posted, currency: Currency) {
        let window_ns = self.config.refund_window_ns;
        self.payments
            .retain(|payment| live(payment.at, window_ns, now.at));
        while self.payments.len() as u64 >= self.config.refundable_payments_max {
            self.payments.remove(0);
        }
        self.payments.push(ModelPayment {
            txn: posted.txn,
            customer: posted.debit.account,
            merchant: posted.credit.account,
            amount: posted.debit.amount.0,
            refunded: 0,
            currency,
            at: now.at,
        });
    }

    fn refund(&mut self, now: Now, c: &Refund) -> Checked<Posted> {
        valid_amount(c.amount)?;
        let window_ns = self.config.refund_window_ns;
        let index = self
            .payments
            .iter()
            .position(|p| p.txn == c.payment && live(p.at, window_ns, now.at))
            .ok_or(RejectCode::PaymentNotFound)?;
        let payment = &self.payments[index];
        if c.currency != payment.currency {
            return Err(RejectCode::CurrencyMismatch);
        }
        if c.amount.0 > payment.amount - payment.refunded {
            return Err(RejectCode::RefundExceedsPayment);
        }
        let movement = Movement {
            from: payment.merchant,
            to: payment.customer,
            amount: c.amount.0,
            currency: c.currency,
            counts_toward_limits: false,
        };
        self.check_movement(now, movement)?;
        self.payments[index].refunded += c.amount.0;
        Ok(self.post(now, movement))
    }

    fn pocket_move(&mut self, now: Now, c: &PocketMove) -> Checked<Posted> {
        valid_amount(c.amount)?;
        let pocket = self.find(c.pocket)?;
        require_kind(pocket, &[AccountKind::Pocket])?;
        let terms = &self.pockets[&c.pocket];
        let movement = match c.direction {
            PocketDirection::In => (terms.parent, c.pocket),
            PocketDirection::Out => {
                if terms.locked && now.day < terms.target_date.0 {
                    return Err(RejectCode::PocketLocked);
                }
                (c.pocket, terms.parent)
            }
        };
        let movement = Movement {
            from: movement.0,
            to: movement.1,
            amount: c.amount.0,
            currency: c.currency,
            counts_toward_limits: false,
        };
        self.check_movement(now, movement)?;
        Ok(self.post(now, movement))
    }

    fn hold_reserve(&mut self, now: Now, c: &HoldReserve) -> Checked<HoldChange> {
        valid_amount(c.amount)?;
        let account = self.find(c.account)?;
        let destination = self.find(c.destination)?;
        if c.account == c.destination {
            return Err(RejectCode::SameAccount);
        }
        require_kind(account, PARTIES)?;
        require_kind(
            destination,
            &[
                AccountKind::Customer,
                AccountKind::Merchant,
                AccountKind::Settlement,
            ],
        )?;
        let latest = u128::from(now.at.0) + u128::from(self.config.hold_duration_max_ns);
        // Resolved here independently of HoldExpiry::deadline.
        let expires_at = match c.expiry {
            HoldExpiry::At(at) => at,
            HoldExpiry::After { nanos } => Timestamp(now.at.0.saturating_add(nanos)),
        };
        if expires_at <= now.at || u128::from(expires_at.0) > latest {
            return Err(RejectCode::InvalidHoldExpiry);
        }
        if account.currency != c.currency || destination.currency != c.currency {
            return Err(RejectCode::CurrencyMismatch);
        }
        require_open(account)?;
        require_open(destination)?;
        if account.available() + i128::from(account.overdraft) < i128::from(c.amount.0) {
            return Err(RejectCode::InsufficientFunds);
        }
        self.check_limits(now, account, c.amount.0)?;
        if self.holds.len() as u64 >= self.config.holds_active_max {
            return Err(RejectCode::CapacityExceeded);
        }
        self.count_toward_limits(now, c.account, c.amount.0);
        let account = self.account_mut(c.account);
        account.held += i128::from(c.amount.0);
        let held_after = account.held;
        let id = HoldId(self.next_hold);
        self.next_hold += 1;
        let hold = ModelHold {
            account: c.account,
            destination: c.destination,
            amount: c.amount.0,
            currency: c.currency,
            expires_at,
            day: now.day,
            month: now.month,
        };
        self.holds.insert(id, hold);
        Ok(HoldChange {
            hold: id,
            account: c.account,
            amount: c.amount,
            held_after,
        })
    }

    fn find_hold(&self, now: Now, id: HoldId) -> Checked<ModelHold> {
        if let Some(hold) = self.holds.get(&id) {
            return match now.at >= hold.expires_at {
                true => Err(RejectCode::HoldExpired),
                false => Ok(hold.clone()),
            };
        }
        let window_ns = self.config.idempotency_window_ns;
        let finished = self
            .finished_holds
            .iter()
            .find(|(finished, _, at)| *finished == id && live(*at, window_ns, now.at));
        match finished {
            Some((_, HoldEnd::Expired, _)) => Err(RejectCode::HoldExpired),
            Some(_) => Err(RejectCode::HoldNotActive),
            None => Err(RejectCode::HoldNotFound),
        }
    }

    fn hold_commit(&mut self, now: Now, c: &HoldCommit) -> Checked<CommandResult> {
        valid_amount(c.amount)?;
        let hold = self.find_hold(now, c.hold)?;
        if c.amount.0 > hold.amount {
            return Err(RejectCode::HoldAmountExceeded);
        }
        require_open(self.find(hold.account)?)?;
        let destination = self.find(hold.destination)?;
        require_open(destination)?;
        if destination.balance + i128::from(c.amount.0) > MAX_BALANCE {
            return Err(RejectCode::AmountOverflow);
        }
        self.end_hold(now, c.hold, HoldEnd::Committed);
        let released = hold.amount - c.amount.0;
        self.give_back(&hold, released);
        let movement = Movement {
            from: hold.account,
            to: hold.destination,
            amount: c.amount.0,
            currency: hold.currency,
            counts_toward_limits: false,
        };
        let posted = self.post(now, movement);
        let held_after = self.account_mut(hold.account).held;
        let change = HoldChange {
            hold: c.hold,
            account: hold.account,
            amount: Amount(hold.amount),
            held_after,
        };
        Ok(CommandResult::HoldCommitted {
            hold: change,
            released: Amount(released),
            posted,
        })
    }

    fn hold_release(&mut self, now: Now, c: &HoldRelease) -> Checked<HoldChange> {
        let hold = self.find_hold(now, c.hold)?;
        self.end_hold(now, c.hold, HoldEnd::Released);
        self.give_back(&hold, hold.amount);
        let held_after = self.account_mut(hold.account).held;
        Ok(HoldChange {
            hold: c.hold,
            account: hold.account,
            amount: Amount(hold.amount),
            held_after,
        })
    }
}

/// What the idempotency window keeps of a result, by the outcome contract.
fn summarise(result: &CommandResult) -> OutcomeSummary {
    match result {
        CommandResult::AccountOpened { account } => OutcomeSummary::AccountOpened(*account),
        CommandResult::AccountUpdated { account } => OutcomeSummary::AccountUpdated(*account),
        CommandResult::PocketOpened { pocket } => OutcomeSummary::PocketOpened(*pocket),
        CommandResult::Posted(posted) => OutcomeSummary::Posted(posted.txn),
        CommandResult::Batch(items) => {
            let mut posted = 0;
            let mut rejected = 0;
            for item in items {
                match item {
                    BatchItem::Posted(_) => posted += 1,
                    BatchItem::Rejected(_) => rejected += 1,
                }
            }
            OutcomeSummary::Batch { posted, rejected }
        }
        CommandResult::HoldReserved(change) => OutcomeSummary::HoldReserved(change.hold),
        CommandResult::HoldReleased(change) => OutcomeSummary::HoldReleased(change.hold),
        CommandResult::HoldCommitted { hold, posted, .. } => OutcomeSummary::HoldCommitted {
            hold: hold.hold,
            txn: posted.txn,
        },
        CommandResult::Rejected(code) => OutcomeSummary::Rejected(*code),
        CommandResult::Replayed { .. } => unreachable!("the model never stores a replay"),
    }
}
