//! The read model: the query side of the node (CQRS). The engine thread alone owns the
//! `Engine`; HTTP queries (an account, its pockets, a transaction, a hold, an account's history)
//! are answered from here instead, so reads never touch the engine thread.
//!
//! It is fed only by durable journal records (`Entry { command, outcome }` plus the seq and
//! timestamp from the record header): whatever a query shows is durable. Account views are
//! built from outcomes alone (every posting carries `balance_after`, every hold change
//! `held_after`), with the attributes of new accounts taken from the command that opened them.
//!
//! Every answer is a lookup, never a scan, and memory is bounded:
//! - transactions live in a ring indexed by `TxnId` (the engine assigns them densely from 1, in
//!   seq order), at most `ReadModelConfig::transactions_max`, oldest evicted first;
//! - an account's history is a linked list through that ring: each slot names the previous
//!   transaction of its debit account and of its credit account, each account its last one. A
//!   page walks the list backwards in O(limit); a link into the evicted part ends the history;
//! - finished holds are kept for the latest `HOLDS_FINISHED_MAX`; active holds are bounded by
//!   the engine's `holds_active_max`; accounts and pockets by its `accounts_max`.
//!
//! One writer (the tailing thread) applies records a chunk at a time under one write lock, so
//! readers wait for at most one chunk; `applied_seq` is published after the chunk is visible.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use payu_engine::{
    Account, AccountId, AccountKind, AccountStatus, Amount, BatchItem, CAPACITY_MAX, CommandBody,
    CommandResult, Currency, Date, Engine, HoldChange, HoldExpired, HoldId, HoldReserve,
    OpenAccount, OpenPocket, OwnerId, Pocket, Posted, Posting, Timestamp, TxnId, UpdateAccount,
};
use payu_journal::{Entry, Reader, RecordKind, StorageReader, decode_entry};

/// Records the tailing thread applies per write-lock hold (at most).
pub const READ_CHUNK_RECORDS: usize = 1024;
/// Payload bytes the tailing thread decodes into one chunk (at most, past the first record):
/// a chunk of full 8190-transfer batches would otherwise hold ~1 GiB and the write lock for
/// a long time. About 4 such batches fit.
pub const READ_CHUNK_PAYLOAD_BYTES_MAX: usize = 4 << 20;
/// The most transactions one history page returns.
pub const HISTORY_PAGE_MAX: usize = 500;
/// Finished (committed, released, expired) holds kept for queries; older ones are forgotten.
pub const HOLDS_FINISHED_MAX: usize = 1_000_000;
/// The default of `ReadModelConfig::transactions_max` (about 450 MiB of ring at 112 bytes a
/// transaction).
pub const TRANSACTIONS_MAX_DEFAULT: usize = 4_000_000;
/// How long the tailing thread waits for new durable records before checking `stop` again.
const TAIL_WAIT: Duration = Duration::from_millis(100);
/// `TxnId` 0 is never assigned: a history link of 0 means "no earlier transaction".
const NO_TXN: u64 = 0;

const _: () = assert!(READ_CHUNK_RECORDS > 0);
const _: () = assert!(HISTORY_PAGE_MAX > 0 && HOLDS_FINISHED_MAX > 0);
const _: () = assert!(TRANSACTIONS_MAX_DEFAULT as u64 <= CAPACITY_MAX);
// A transaction's slot: the ring's memory is transactions_max times this.
const _: () = assert!(std::mem::size_of::<Option<Slot>>() <= 112);
// An account's view: the model's memory per account (the engine's own is 96 bytes).
const _: () = assert!(std::mem::size_of::<Option<AccountView>>() <= 128);
// Shared as `Arc<ReadModel>` by the HTTP handlers and the tailing thread.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<ReadModel>();
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReadModelConfig {
    /// Transactions kept for lookups and history; the oldest are evicted first.
    pub transactions_max: usize,
}

impl Default for ReadModelConfig {
    fn default() -> ReadModelConfig {
        ReadModelConfig {
            transactions_max: TRANSACTIONS_MAX_DEFAULT,
        }
    }
}

impl ReadModelConfig {
    /// A bad configuration is a startup error; `ReadModel::new` panics on one.
    pub fn validate(&self) -> Result<(), String> {
        if self.transactions_max == 0 || self.transactions_max as u64 > CAPACITY_MAX {
            return Err(format!(
                "transactions_max: need 1..={CAPACITY_MAX}, got {}",
                self.transactions_max
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountView {
    pub id: AccountId,
    pub owner: OwnerId,
    pub kind: AccountKind,
    pub status: AccountStatus,
    pub tier: u8,
    pub currency: Currency,
    pub overdraft_limit: Amount,
    /// Units of 10^-4.
    pub balance: i128,
    /// The sum of the account's active holds, units of 10^-4.
    pub held: i128,
    /// The parent account of a pocket.
    pub parent: Option<AccountId>,
    /// The record that opened the account. 0 (and `Timestamp(0)`) when the model was seeded
    /// from a snapshot and has not seen that record.
    pub opened_seq: u64,
    pub opened_at: Timestamp,
    /// The account's newest transaction this model has seen.
    pub last_txn: Option<TxnId>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PocketView {
    pub id: AccountId,
    pub parent: AccountId,
    pub name: String,
    pub target_amount: Amount,
    pub target_date: Date,
    pub locked: bool,
    pub balance: i128,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnKind {
    Deposit,
    Withdrawal,
    Transfer,
    PocketMove,
    Payment,
    Refund,
    HoldCommit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnView {
    pub id: TxnId,
    pub seq: u64,
    pub timestamp: Timestamp,
    pub kind: TxnKind,
    pub currency: Currency,
    pub debit: Posting,
    pub credit: Posting,
    /// The hold a `HoldCommit` transaction committed.
    pub hold: Option<HoldId>,
    /// The payment a `Refund` transaction refunds.
    pub payment: Option<TxnId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldState {
    Active,
    Committed,
    Released,
    Expired,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldView {
    pub id: HoldId,
    pub account: AccountId,
    pub destination: AccountId,
    pub amount: Amount,
    pub currency: Currency,
    pub expires_at: Timestamp,
    pub state: HoldState,
    /// What a commit moved to the destination (zero unless committed).
    pub committed: Amount,
    /// The commit's transaction.
    pub txn: Option<TxnId>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryPage {
    /// Newest first.
    pub items: Vec<TxnView>,
    /// Pass as `before` for the next page. `None`: no more history, or older history was
    /// evicted.
    pub next_cursor: Option<TxnId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadModelStats {
    pub applied_seq: u64,
    pub accounts: u64,
    /// Transactions kept in the ring.
    pub transactions: u64,
    /// The oldest transaction kept; history reaches back to it at most.
    pub oldest_txn: Option<TxnId>,
    pub transactions_evicted: u64,
    /// Holds kept, active and finished.
    pub holds: u64,
}

/// One durable journal record, decoded: what `ReadModel::apply_batch` takes.
pub type DurableRecord = (u64, Timestamp, Entry);

pub struct ReadModel {
    state: RwLock<State>,
    /// `State::applied_seq` as of the last published chunk, readable without the lock.
    applied_seq: AtomicU64,
    /// The same value for async waiters (`wait_for`).
    published: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for ReadModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadModel")
            .field("applied_seq", &self.applied_seq())
            .finish_non_exhaustive()
    }
}

impl ReadModel {
    /// An empty model. Panics on an invalid configuration (see `ReadModelConfig::validate`)
    /// or when its transaction ring cannot be reserved; the node uses [`ReadModel::try_new`].
    pub fn new(config: ReadModelConfig) -> ReadModel {
        ReadModel::try_new(config).unwrap_or_else(|reason| panic!("{reason}"))
    }

    /// An empty model, or why there cannot be one: an invalid configuration, or a transaction
    /// ring (`transactions_max` slots) whose address space the system refuses.
    pub fn try_new(config: ReadModelConfig) -> Result<ReadModel, String> {
        config
            .validate()
            .map_err(|reason| format!("invalid read model configuration: {reason}"))?;
        Ok(ReadModel {
            state: RwLock::new(State::new(config)?),
            applied_seq: AtomicU64::new(0),
            published: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Seeds account, pocket and active-hold views from a restored engine (its state as of
    /// `engine.last_seq()`). Records with a seq up to that one later feed only the transaction
    /// index and history (and fill in `opened_seq`/`opened_at` and finished holds), never
    /// balances, held amounts or statuses: their effects are already in the seed.
    ///
    /// `history_from` is the first seq that will be applied after the seed (the journal's
    /// first retained seq). Until the records up to the seed's seq have been replayed into the
    /// history, `applied_seq` stays below the seed, so queries that wait for the durable seq
    /// (read-your-writes) wait for the history too, not only for balances.
    ///
    /// Must be called before any record is applied (asserted).
    pub fn seed(&self, engine: &Engine, history_from: u64) {
        let applied = {
            let mut state = self.write();
            state.seed(engine, history_from);
            state.applied_seq()
        };
        self.publish(applied);
    }

    /// Applies one durable record. Records must arrive in seq order with no gaps after the
    /// first one applied (and, on a seeded model, the first must be at most the seed's seq
    /// plus one); a violation is a bug and panics.
    pub fn apply(&self, seq: u64, timestamp: Timestamp, entry: &Entry) {
        let applied = {
            let mut state = self.write();
            state.apply(seq, timestamp, entry);
            state.applied_seq()
        };
        self.publish(applied);
    }

    /// Applies records in order under one hold of the write lock, then publishes them.
    pub fn apply_batch(&self, records: &[DurableRecord]) {
        if records.is_empty() {
            return;
        }
        let applied = {
            let mut state = self.write();
            for (seq, timestamp, entry) in records {
                state.apply(*seq, *timestamp, entry);
            }
            state.applied_seq()
        };
        self.publish(applied);
    }

    /// The seq whose effects every view includes: the seed's seq or the last record applied,
    /// whichever is later.
    pub fn applied_seq(&self) -> u64 {
        self.applied_seq.load(Ordering::Acquire)
    }

    /// Waits until `applied_seq() >= seq` or `timeout` passes; true if reached.
    pub async fn wait_for(&self, seq: u64, timeout: Duration) -> bool {
        if self.applied_seq() >= seq {
            return true;
        }
        let mut published = self.published.subscribe();
        // `watch::Receiver::wait_for` checks the current value first: no lost wake-up.
        let reached = published.wait_for(|&applied| applied >= seq);
        matches!(tokio::time::timeout(timeout, reached).await, Ok(Ok(_)))
    }

    pub fn account(&self, id: AccountId) -> Option<AccountView> {
        self.read().accounts.get(id).cloned()
    }

    /// The pockets of `parent` (closed ones included, as the engine keeps them), in id order.
    pub fn pockets(&self, parent: AccountId) -> Vec<PocketView> {
        let state = self.read();
        state
            .pockets
            .of(parent)
            .filter_map(|pocket| state.pocket_view(pocket))
            .collect()
    }

    pub fn pocket(&self, id: AccountId) -> Option<PocketView> {
        let state = self.read();
        state
            .pockets
            .get(id)
            .and_then(|pocket| state.pocket_view(pocket))
    }

    pub fn transaction(&self, id: TxnId) -> Option<TxnView> {
        self.read().txns.view(id.0)
    }

    pub fn hold(&self, id: HoldId) -> Option<HoldView> {
        self.read().holds.get(id)
    }

    /// A transaction of kind `Payment` (refund authorisation uses its accounts).
    pub fn payment(&self, id: TxnId) -> Option<TxnView> {
        self.transaction(id)
            .filter(|txn| txn.kind == TxnKind::Payment)
    }

    /// The account's transactions, newest first, strictly before `before` (`None`: from the
    /// newest). `limit` is clamped to 1..=HISTORY_PAGE_MAX. A `before` that is not one of the
    /// account's kept transactions gives an empty page.
    pub fn history(&self, account: AccountId, before: Option<TxnId>, limit: usize) -> HistoryPage {
        self.read().history(account, before, limit)
    }

    pub fn stats(&self) -> ReadModelStats {
        let state = self.read();
        ReadModelStats {
            applied_seq: state.applied_seq(),
            accounts: state.accounts.count as u64,
            transactions: state.txns.stored as u64,
            oldest_txn: state.txns.oldest(),
            transactions_evicted: state.txns.evicted,
            holds: state.holds.views.len() as u64,
        }
    }

    // A panic while writing (a broken ordering assertion) poisons the lock. The assertions run
    // before a record changes anything, so the views are still those of the last record
    // applied, and readers keep being served.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Called after the write lock is released, so whoever sees `applied` sees its effects.
    fn publish(&self, applied: u64) {
        self.applied_seq.fetch_max(applied, Ordering::AcqRel);
        self.published.send_if_modified(|published| {
            let newer = applied > *published;
            if newer {
                *published = applied;
            }
            newer
        });
    }
}

/// Starts the tailing thread ("payu-readmodel"): reads durable records from `reader` in chunks
/// (`READ_CHUNK_RECORDS`, `READ_CHUNK_PAYLOAD_BYTES_MAX`), decodes them, applies each chunk
/// under one write lock, and waits on the journal when caught up. Checks `stop` at least every
/// 100 ms. A journal error or a record that does not decode is fatal: it is logged, the records
/// before it are applied, and the thread returns the error.
pub fn spawn_tailer<R: StorageReader + Send + 'static>(
    model: Arc<ReadModel>,
    mut reader: Reader<R>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<(), String>> {
    std::thread::Builder::new()
        .name("payu-readmodel".into())
        .spawn(move || tail(&model, &mut reader, &stop))
        .expect("spawning the read model's tailing thread")
}

fn tail<R: StorageReader>(
    model: &ReadModel,
    reader: &mut Reader<R>,
    stop: &AtomicBool,
) -> Result<(), String> {
    while !stop.load(Ordering::Acquire) {
        let (records, end) = read_chunk(reader);
        model.apply_batch(&records);
        match end {
            ChunkEnd::Full => {}
            ChunkEnd::CaughtUp => {
                reader.wait(TAIL_WAIT);
            }
            ChunkEnd::Failed(error) => {
                tracing::error!(%error, applied_seq = model.applied_seq(), "read model stopped");
                return Err(error);
            }
        }
    }
    Ok(())
}

enum ChunkEnd {
    /// The chunk's record or byte bound was reached; more may be ready.
    Full,
    /// Every durable record has been read.
    CaughtUp,
    Failed(String),
}

fn read_chunk<R: StorageReader>(reader: &mut Reader<R>) -> (Vec<DurableRecord>, ChunkEnd) {
    let mut records = Vec::new();
    let mut bytes = 0;
    while records.len() < READ_CHUNK_RECORDS && bytes < READ_CHUNK_PAYLOAD_BYTES_MAX {
        let record = match reader.next() {
            Ok(Some(record)) => record,
            Ok(None) => return (records, ChunkEnd::CaughtUp),
            Err(error) => return (records, ChunkEnd::Failed(format!("journal: {error}"))),
        };
        let seq = record.header.seq;
        let timestamp = Timestamp(record.header.timestamp);
        bytes += record.payload().len();
        let decoded = match record.header.kind {
            RecordKind::Command => decode_entry(record.payload()),
        };
        match decoded {
            Ok(entry) => records.push((seq, timestamp, entry)),
            Err(reason) => {
                let error = format!("journal record {seq} does not decode: {reason}");
                return (records, ChunkEnd::Failed(error));
            }
        }
    }
    (records, ChunkEnd::Full)
}

/// Where a record sits relative to the seed.
#[derive(Clone, Copy, Debug)]
struct At {
    seq: u64,
    timestamp: Timestamp,
    /// False for records the seed already includes: they feed only the transaction index,
    /// history links, opening times and finished holds.
    current: bool,
}

struct State {
    /// The seq of the engine state the model was seeded from.
    seed_seq: Option<u64>,
    /// The first seq applied after the seed (the journal's first retained record).
    history_from: u64,
    last_record_seq: Option<u64>,
    accounts: Accounts,
    pockets: Pockets,
    holds: Holds,
    txns: TxnRing,
}

impl State {
    fn new(config: ReadModelConfig) -> Result<State, String> {
        Ok(State {
            seed_seq: None,
            history_from: 1,
            last_record_seq: None,
            accounts: Accounts::default(),
            pockets: Pockets::default(),
            holds: Holds::new(HOLDS_FINISHED_MAX),
            txns: TxnRing::new(config.transactions_max)?,
        })
    }

    /// The seq up to which every view, history included, is complete.
    fn applied_seq(&self) -> u64 {
        let replayed = self
            .last_record_seq
            .unwrap_or(self.history_from.saturating_sub(1));
        match self.seed_seq {
            // Nothing up to the seed is left to replay: the seed itself is complete.
            Some(seed) if self.history_from > seed => seed.max(replayed),
            _ => replayed,
        }
    }

    fn seed(&mut self, engine: &Engine, history_from: u64) {
        assert!(
            self.seed_seq.is_none() && self.last_record_seq.is_none(),
            "a read model is seeded once, before any record is applied"
        );
        self.seed_seq = Some(engine.last_seq());
        self.history_from = history_from;
        for (id, account) in engine.accounts() {
            self.accounts.insert(seeded_view(id, account));
            if let Some(pocket) = engine.pocket(id) {
                self.pockets.insert(pocket.clone());
            }
        }
        self.seed_holds(engine);
    }

    /// Active holds as of the seed, inserted in id order.
    fn seed_holds(&mut self, engine: &Engine) {
        let mut holds: Vec<_> = engine.holds().collect();
        holds.sort_unstable_by_key(|hold| hold.id);
        for hold in holds {
            self.holds.insert(HoldView {
                id: hold.id,
                account: hold.account,
                destination: hold.destination,
                amount: hold.amount,
                currency: hold.currency,
                expires_at: hold.expires_at,
                state: HoldState::Active,
                committed: Amount::ZERO,
                txn: None,
            });
        }
    }

    fn apply(&mut self, seq: u64, timestamp: Timestamp, entry: &Entry) {
        self.check_order(seq);
        let at = At {
            seq,
            timestamp,
            current: self.seed_seq.is_none_or(|seed| seq > seed),
        };
        // The engine expires overdue holds before it runs the command, whatever the command
        // does (rejections and replays included).
        for expired in &entry.outcome.expired_holds {
            self.expire_hold(at, expired);
        }
        self.apply_result(at, &entry.command.body, &entry.outcome.result);
        self.last_record_seq = Some(seq);
    }

    fn check_order(&self, seq: u64) {
        match (self.last_record_seq, self.seed_seq) {
            (Some(last), _) => assert_eq!(seq, last + 1, "read model records must be consecutive"),
            (None, Some(seed)) => assert!(
                seq <= seed + 1,
                "record {seq} leaves a gap after the seed at seq {seed}"
            ),
            (None, None) => {}
        }
    }

    fn apply_result(&mut self, at: At, body: &CommandBody, result: &CommandResult) {
        match (body, result) {
            (_, CommandResult::Rejected(_) | CommandResult::Replayed { .. }) => {}
            (CommandBody::OpenAccount(c), CommandResult::AccountOpened { account }) => {
                self.open_account(at, *account, c);
            }
            (CommandBody::UpdateAccount(c), CommandResult::AccountUpdated { account }) => {
                self.update_account(at, *account, c);
            }
            (CommandBody::OpenPocket(c), CommandResult::PocketOpened { pocket }) => {
                self.open_pocket(at, *pocket, c);
            }
            (CommandBody::TransferBatch(transfers), CommandResult::Batch(items))
                if transfers.len() == items.len() =>
            {
                for (transfer, item) in transfers.iter().zip(items) {
                    if let BatchItem::Posted(posted) = item {
                        let meta = TxnMeta::plain(TxnKind::Transfer, transfer.currency);
                        self.post(at, posted, meta);
                    }
                }
            }
            (body, CommandResult::Posted(posted)) => match posted_meta(body) {
                Some(meta) => self.post(at, posted, meta),
                None => mismatch(at),
            },
            (CommandBody::HoldReserve(c), CommandResult::HoldReserved(change)) => {
                self.reserve_hold(at, c, change);
            }
            (CommandBody::HoldRelease(_), CommandResult::HoldReleased(change)) => {
                self.finish_hold(at, change, HoldState::Released, None);
            }
            (CommandBody::HoldCommit(_), CommandResult::HoldCommitted { hold, posted, .. }) => {
                let currency = self.hold_currency(hold.hold, posted.debit.account);
                self.finish_hold(at, hold, HoldState::Committed, Some(posted));
                let meta = TxnMeta {
                    kind: TxnKind::HoldCommit,
                    currency,
                    reference: hold.hold.0,
                };
                self.post(at, posted, meta);
            }
            _ => mismatch(at),
        }
    }

    fn open_account(&mut self, at: At, id: AccountId, c: &OpenAccount) {
        if !at.current {
            self.accounts.set_opened(id, at);
            return;
        }
        self.accounts.insert(AccountView {
            id,
            owner: c.owner,
            kind: c.kind,
            status: AccountStatus::Active,
            tier: c.tier,
            currency: c.currency,
            overdraft_limit: c.overdraft_limit,
            balance: 0,
            held: 0,
            parent: None,
            opened_seq: at.seq,
            opened_at: at.timestamp,
            last_txn: None,
        });
    }

    fn update_account(&mut self, at: At, id: AccountId, c: &UpdateAccount) {
        if !at.current {
            return;
        }
        let Some(view) = self.accounts.get_mut(id) else {
            return;
        };
        view.status = c.status.unwrap_or(view.status);
        view.tier = c.tier.unwrap_or(view.tier);
        view.overdraft_limit = c.overdraft_limit.unwrap_or(view.overdraft_limit);
    }

    /// A pocket is an account with its parent's owner, tier and currency, and no overdraft.
    fn open_pocket(&mut self, at: At, id: AccountId, c: &OpenPocket) {
        if !at.current {
            self.accounts.set_opened(id, at);
            return;
        }
        let Some(parent) = self.accounts.get(c.parent) else {
            tracing::error!(seq = at.seq, "read model: pocket of an unknown account");
            return;
        };
        let view = AccountView {
            id,
            owner: parent.owner,
            kind: AccountKind::Pocket,
            status: AccountStatus::Active,
            tier: parent.tier,
            currency: parent.currency,
            overdraft_limit: Amount::ZERO,
            balance: 0,
            held: 0,
            parent: Some(c.parent),
            opened_seq: at.seq,
            opened_at: at.timestamp,
            last_txn: None,
        };
        self.accounts.insert(view);
        self.pockets.insert(Pocket {
            id,
            parent: c.parent,
            name: c.name.clone(),
            target_amount: c.target_amount,
            target_date: c.target_date,
            locked: c.locked,
        });
    }

    /// Records a posted movement: balances (for current records), the transaction, and the
    /// history links of both accounts.
    fn post(&mut self, at: At, posted: &Posted, meta: TxnMeta) {
        let (debit, credit) = (posted.debit, posted.credit);
        if at.current {
            self.accounts
                .set_balance(debit.account, debit.balance_after);
            self.accounts
                .set_balance(credit.account, credit.balance_after);
        }
        let slot = Slot {
            seq: at.seq,
            timestamp: at.timestamp,
            debit,
            credit,
            prev_debit: self.accounts.last_txn(debit.account),
            prev_credit: self.accounts.last_txn(credit.account),
            reference: meta.reference,
            currency: meta.currency,
            kind: meta.kind,
        };
        if self.txns.push(posted.txn.0, slot) {
            self.accounts.set_last_txn(debit.account, posted.txn);
            self.accounts.set_last_txn(credit.account, posted.txn);
        }
    }

    fn reserve_hold(&mut self, at: At, c: &HoldReserve, change: &HoldChange) {
        let view = HoldView {
            id: change.hold,
            account: c.account,
            destination: c.destination,
            amount: c.amount,
            currency: c.currency,
            // The deadline as the engine resolved it, at the reserving record's timestamp.
            expires_at: c.expiry.deadline(at.timestamp),
            state: HoldState::Active,
            committed: Amount::ZERO,
            txn: None,
        };
        if at.current {
            self.accounts.set_held(change.account, change.held_after);
            self.holds.insert(view);
        } else if self.holds.get(change.hold).is_none() {
            // A hold that finished before the seed: rebuilt for queries from its records.
            self.holds.insert(view);
        }
    }

    fn finish_hold(
        &mut self,
        at: At,
        change: &HoldChange,
        state: HoldState,
        commit: Option<&Posted>,
    ) {
        if at.current {
            self.accounts.set_held(change.account, change.held_after);
        }
        self.holds.finish(change.hold, state, commit);
    }

    fn expire_hold(&mut self, at: At, expired: &HoldExpired) {
        let change = HoldChange {
            hold: expired.hold,
            account: expired.account,
            amount: expired.amount,
            held_after: expired.held_after,
        };
        self.finish_hold(at, &change, HoldState::Expired, None);
    }

    /// A commit moves money in the hold's currency, which is also its accounts' currency.
    fn hold_currency(&self, hold: HoldId, account: AccountId) -> Currency {
        let known = self.holds.get(hold).map(|view| view.currency);
        let known = known.or_else(|| self.accounts.get(account).map(|view| view.currency));
        // Only a model started mid-journal without a seed can miss both.
        known.unwrap_or(Currency(0))
    }

    fn pocket_view(&self, pocket: &Pocket) -> Option<PocketView> {
        let account = self.accounts.get(pocket.id)?;
        Some(PocketView {
            id: pocket.id,
            parent: pocket.parent,
            name: pocket.name.clone(),
            target_amount: pocket.target_amount,
            target_date: pocket.target_date,
            locked: pocket.locked,
            balance: account.balance,
        })
    }

    fn history(&self, account: AccountId, before: Option<TxnId>, limit: usize) -> HistoryPage {
        let limit = limit.clamp(1, HISTORY_PAGE_MAX);
        let start = match before {
            None => self.accounts.last_txn(account),
            Some(cursor) => self
                .txns
                .get(cursor.0)
                .and_then(|slot| slot.link(account))
                .unwrap_or(NO_TXN),
        };
        let mut items = Vec::with_capacity(limit.min(64));
        let mut next = start;
        while next != NO_TXN && items.len() < limit {
            let Some(slot) = self.txns.get(next) else {
                next = NO_TXN; // evicted: the kept history ends here
                break;
            };
            items.push(slot.view(TxnId(next)));
            // Links point strictly backwards; anything else ends the walk.
            next = match slot.link(account) {
                Some(link) if link < next => link,
                _ => NO_TXN,
            };
        }
        let more = next != NO_TXN && self.txns.get(next).is_some();
        HistoryPage {
            next_cursor: items.last().filter(|_| more).map(|txn| txn.id),
            items,
        }
    }
}

/// The engine produced both halves of the entry; a mismatch is a bug there, logged and skipped
/// here (the read model is not the authority on balances).
fn mismatch(at: At) {
    tracing::error!(
        seq = at.seq,
        "read model: outcome does not match its command"
    );
}

/// What a posting's command says about its transaction (the outcome carries the rest).
#[derive(Clone, Copy, Debug)]
struct TxnMeta {
    kind: TxnKind,
    currency: Currency,
    /// HoldCommit: the hold id; Refund: the payment's txn id; otherwise 0.
    reference: u64,
}

impl TxnMeta {
    fn plain(kind: TxnKind, currency: Currency) -> TxnMeta {
        TxnMeta {
            kind,
            currency,
            reference: 0,
        }
    }
}

/// The transaction a command whose result is a single `Posted` made.
fn posted_meta(body: &CommandBody) -> Option<TxnMeta> {
    Some(match body {
        CommandBody::Deposit(c) => TxnMeta::plain(TxnKind::Deposit, c.currency),
        CommandBody::Withdrawal(c) => TxnMeta::plain(TxnKind::Withdrawal, c.currency),
        CommandBody::Transfer(c) => TxnMeta::plain(TxnKind::Transfer, c.currency),
        CommandBody::PocketMove(c) => TxnMeta::plain(TxnKind::PocketMove, c.currency),
        CommandBody::Payment(c) => TxnMeta::plain(TxnKind::Payment, c.currency),
        CommandBody::Refund(c) => TxnMeta {
            kind: TxnKind::Refund,
            currency: c.currency,
            reference: c.payment.0,
        },
        _ => return None,
    })
}

fn seeded_view(id: AccountId, account: &Account) -> AccountView {
    AccountView {
        id,
        owner: account.owner,
        kind: account.kind,
        status: account.status,
        tier: account.tier,
        currency: account.currency,
        overdraft_limit: account.overdraft_limit,
        balance: account.balance,
        held: account.held,
        parent: (account.parent != AccountId(0)).then_some(account.parent),
        opened_seq: 0,
        opened_at: Timestamp(0),
        last_txn: None,
    }
}

/// Account views indexed by `AccountId - 1` (the engine assigns ids densely from 1).
#[derive(Default)]
struct Accounts {
    views: Vec<Option<AccountView>>,
    count: usize,
}

impl Accounts {
    fn index(id: AccountId) -> Option<usize> {
        let index = id.0.checked_sub(1)?;
        // Ids come from the engine, which never exceeds CAPACITY_MAX accounts.
        (index < CAPACITY_MAX).then_some(index as usize)
    }

    fn get(&self, id: AccountId) -> Option<&AccountView> {
        self.views.get(Self::index(id)?)?.as_ref()
    }

    fn get_mut(&mut self, id: AccountId) -> Option<&mut AccountView> {
        self.views.get_mut(Self::index(id)?)?.as_mut()
    }

    fn insert(&mut self, view: AccountView) {
        let Some(index) = Self::index(view.id) else {
            tracing::error!(account = view.id.0, "read model: account id out of range");
            return;
        };
        if index >= self.views.len() {
            self.views.resize(index + 1, None);
        }
        if self.views[index].replace(view).is_none() {
            self.count += 1;
        }
    }

    fn set_balance(&mut self, id: AccountId, balance: i128) {
        if let Some(view) = self.get_mut(id) {
            view.balance = balance;
        }
    }

    fn set_held(&mut self, id: AccountId, held: i128) {
        if let Some(view) = self.get_mut(id) {
            view.held = held;
        }
    }

    fn set_opened(&mut self, id: AccountId, at: At) {
        if let Some(view) = self.get_mut(id) {
            view.opened_seq = at.seq;
            view.opened_at = at.timestamp;
        }
    }

    fn last_txn(&self, id: AccountId) -> u64 {
        self.get(id)
            .and_then(|view| view.last_txn)
            .map_or(NO_TXN, |txn| txn.0)
    }

    fn set_last_txn(&mut self, id: AccountId, txn: TxnId) {
        if let Some(view) = self.get_mut(id) {
            view.last_txn = Some(txn);
        }
    }
}

/// Pocket rules by pocket id, and an index from parent to its pockets (no scan per query).
#[derive(Default)]
struct Pockets {
    rules: HashMap<AccountId, Pocket>,
    by_parent: BTreeSet<(AccountId, AccountId)>,
}

impl Pockets {
    fn insert(&mut self, pocket: Pocket) {
        self.by_parent.insert((pocket.parent, pocket.id));
        self.rules.insert(pocket.id, pocket);
    }

    fn get(&self, id: AccountId) -> Option<&Pocket> {
        self.rules.get(&id)
    }

    fn of(&self, parent: AccountId) -> impl Iterator<Item = &Pocket> {
        let range = (parent, AccountId(0))..=(parent, AccountId(u64::MAX));
        self.by_parent
            .range(range)
            .filter_map(|(_, id)| self.rules.get(id))
    }
}

/// Active holds (bounded by the engine's `holds_active_max`) and the latest finished ones.
struct Holds {
    views: HashMap<HoldId, HoldView>,
    /// Finished holds in the order they finished; the oldest is forgotten first.
    finished: VecDeque<HoldId>,
    finished_max: usize,
}

impl Holds {
    fn new(finished_max: usize) -> Holds {
        Holds {
            views: HashMap::new(),
            finished: VecDeque::new(),
            finished_max,
        }
    }

    fn get(&self, id: HoldId) -> Option<HoldView> {
        self.views.get(&id).copied()
    }

    fn insert(&mut self, view: HoldView) {
        self.views.insert(view.id, view);
    }

    /// Ends an active hold; unknown or already finished holds are left alone.
    fn finish(&mut self, id: HoldId, state: HoldState, commit: Option<&Posted>) {
        let Some(view) = self.views.get_mut(&id) else {
            return;
        };
        if view.state != HoldState::Active {
            return;
        }
        view.state = state;
        if let Some(posted) = commit {
            view.committed = posted.debit.amount;
            view.txn = Some(posted.txn);
        }
        self.finished.push_back(id);
        while self.finished.len() > self.finished_max {
            if let Some(oldest) = self.finished.pop_front() {
                self.views.remove(&oldest);
            }
        }
    }
}

/// One transaction in the ring (its id is implied by its position).
#[derive(Clone, Copy, Debug)]
struct Slot {
    seq: u64,
    timestamp: Timestamp,
    debit: Posting,
    credit: Posting,
    /// The debit account's previous transaction (`NO_TXN`: none).
    prev_debit: u64,
    /// The credit account's previous transaction.
    prev_credit: u64,
    /// HoldCommit: the hold id; Refund: the payment's txn id; otherwise 0.
    reference: u64,
    currency: Currency,
    kind: TxnKind,
}

impl Slot {
    /// The previous transaction of `account` before this one, if `account` takes part.
    fn link(&self, account: AccountId) -> Option<u64> {
        if self.debit.account == account {
            Some(self.prev_debit)
        } else if self.credit.account == account {
            Some(self.prev_credit)
        } else {
            None
        }
    }

    fn view(&self, id: TxnId) -> TxnView {
        let reference = (self.reference != 0).then_some(self.reference);
        TxnView {
            id,
            seq: self.seq,
            timestamp: self.timestamp,
            kind: self.kind,
            currency: self.currency,
            debit: self.debit,
            credit: self.credit,
            hold: reference
                .filter(|_| self.kind == TxnKind::HoldCommit)
                .map(HoldId),
            payment: reference
                .filter(|_| self.kind == TxnKind::Refund)
                .map(TxnId),
        }
    }
}

/// The latest `max` transaction ids and their slots. Ids are dense and increasing; an
/// unexpected jump leaves vacant slots (or restarts the ring past a jump of `max` or more), and
/// an id at or below one already stored is refused.
struct TxnRing {
    slots: VecDeque<Option<Slot>>,
    /// The id of `slots[0]`.
    first: u64,
    max: usize,
    /// Occupied slots.
    stored: usize,
    evicted: u64,
}

impl TxnRing {
    /// Reserves the whole ring at once; an error if the system refuses the address space.
    /// The memory is address space until transactions fill it (the kernel maps a page when it
    /// is first written), so the node's resident memory still grows with the ring. Growing by
    /// doubling instead copied the whole ring on the read model's thread, under its write
    /// lock: at 2^20 transactions (117 MB, into a new 235 MB) that took about 270 ms of a core
    /// within 300 ms, in the middle of a 35k/s load (docs/PERFORMANCE.md).
    fn new(max: usize) -> Result<TxnRing, String> {
        assert!(max > 0);
        let mut slots = VecDeque::new();
        slots.try_reserve_exact(max).map_err(|error| {
            let mib = (max as u128 * std::mem::size_of::<Option<Slot>>() as u128) >> 20;
            format!(
                "reserving the read model's ring of {max} transactions \
                 ({mib} MiB of address space; read_model.transactions_max): {error}"
            )
        })?;
        Ok(TxnRing {
            slots,
            first: 1,
            max,
            stored: 0,
            evicted: 0,
        })
    }

    fn next_id(&self) -> u64 {
        self.first + self.slots.len() as u64
    }

    fn get(&self, id: u64) -> Option<&Slot> {
        let offset = id.checked_sub(self.first)?;
        let offset = usize::try_from(offset).ok()?;
        self.slots.get(offset)?.as_ref()
    }

    fn view(&self, id: u64) -> Option<TxnView> {
        self.get(id).map(|slot| slot.view(TxnId(id)))
    }

    fn oldest(&self) -> Option<TxnId> {
        let offset = self.slots.iter().position(Option::is_some)?;
        Some(TxnId(self.first + offset as u64))
    }

    /// Stores transaction `id`; false if it was refused (not newer than the newest).
    fn push(&mut self, id: u64, slot: Slot) -> bool {
        if self.slots.is_empty() {
            self.first = id;
        }
        let next = self.next_id();
        if id < next {
            tracing::error!(
                txn = id,
                next,
                "read model: transaction id repeats; ignored"
            );
            return false;
        }
        let gap = id - next;
        if gap > 0 {
            tracing::warn!(txn = id, next, "read model: transaction ids skip");
        }
        if gap >= self.max as u64 {
            self.evict_all();
            self.first = id;
        } else {
            for _ in 0..gap {
                self.push_back(None);
            }
        }
        self.push_back(Some(slot));
        self.stored += 1;
        true
    }

    fn push_back(&mut self, slot: Option<Slot>) {
        if self.slots.len() == self.max {
            self.evict_oldest();
        }
        debug_assert!(
            self.slots.len() < self.slots.capacity(),
            "the ring never grows"
        );
        self.slots.push_back(slot);
    }

    fn evict_oldest(&mut self) {
        if let Some(oldest) = self.slots.pop_front() {
            self.first += 1;
            if oldest.is_some() {
                self.stored -= 1;
                self.evicted += 1;
            }
        }
    }

    fn evict_all(&mut self) {
        self.evicted += self.stored as u64;
        self.stored = 0;
        self.first = self.next_id();
        self.slots.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use payu_engine::{
        Command, EngineConfig, IdempotencyKey, NANOS_PER_SECOND, Outcome, PocketDirection,
        RejectCode, Transfer,
    };
    use payu_journal::{FlushMode, Journal, JournalConfig, MmapStorage, encode_entry};

    /// 2025-01-01T00:00:00Z.
    const START_NS: u64 = 1_735_689_600 * NANOS_PER_SECOND;
    const IDR: Currency = Currency::IDR;

    /// The default rules with small tables (the defaults size them for millions up front).
    fn engine_config() -> EngineConfig {
        EngineConfig {
            accounts_max: 1_000,
            holds_active_max: 100,
            idempotency_entries_max: 10_000,
            refundable_payments_max: 1_000,
            finished_holds_max: 1_000,
            ..EngineConfig::default()
        }
    }

    /// Drives a real engine and feeds every (seq, timestamp, entry) to a read model, checking
    /// the model against the engine after every command.
    struct Harness {
        engine: Engine,
        model: ReadModel,
        log: Vec<DurableRecord>,
        now_ns: u64,
        keys: u128,
        holds_issued: u64,
    }

    impl Harness {
        fn new(config: ReadModelConfig) -> Harness {
            Harness {
                engine: Engine::new(engine_config()),
                model: ReadModel::new(config),
                log: Vec::new(),
                now_ns: START_NS,
                keys: 0,
                holds_issued: 0,
            }
        }

        fn run(&mut self, body: CommandBody) -> Outcome {
            self.keys += 1;
            self.run_keyed(IdempotencyKey(self.keys), body)
        }

        fn run_keyed(&mut self, key: IdempotencyKey, body: CommandBody) -> Outcome {
            self.now_ns += NANOS_PER_SECOND;
            let seq = self.engine.last_seq() + 1;
            let timestamp = Timestamp(self.now_ns);
            let command = Command { key, body };
            let outcome = self.engine.apply(seq, timestamp, &command);
            if let CommandResult::HoldReserved(change) = &outcome.result {
                self.holds_issued = self.holds_issued.max(change.hold.0);
            }
            let entry = Entry {
                command,
                outcome: outcome.clone(),
            };
            self.model.apply(seq, timestamp, &entry);
            self.log.push((seq, timestamp, entry));
            self.engine.verify().expect("engine invariants");
            assert_matches_engine(&self.model, &self.engine, self.holds_issued);
            outcome
        }

        fn advance(&mut self, nanos: u64) {
            self.now_ns += nanos;
        }

        fn open(&mut self, kind: AccountKind, tier: u8) -> AccountId {
            let body = CommandBody::OpenAccount(OpenAccount {
                owner: OwnerId(u128::from(self.engine.last_seq()) + 7),
                kind,
                tier,
                currency: IDR,
                overdraft_limit: Amount::ZERO,
            });
            match self.run(body).result {
                CommandResult::AccountOpened { account } => account,
                other => panic!("open account: {other:?}"),
            }
        }

        fn open_pocket(&mut self, parent: AccountId, name: &str, locked: bool) -> AccountId {
            let body = CommandBody::OpenPocket(OpenPocket {
                parent,
                name: name.into(),
                target_amount: Amount::whole(5_000_000),
                target_date: Date::from_ymd(2030, 1, 1).expect("date"),
                locked,
            });
            match self.run(body).result {
                CommandResult::PocketOpened { pocket } => pocket,
                other => panic!("open pocket: {other:?}"),
            }
        }

        fn posted(&mut self, body: CommandBody) -> Posted {
            match self.run(body).result {
                CommandResult::Posted(posted) => posted,
                other => panic!("expected a posting: {other:?}"),
            }
        }

        fn rejected(&mut self, body: CommandBody, code: RejectCode) -> Outcome {
            let outcome = self.run(body);
            assert_eq!(outcome.result, CommandResult::Rejected(code));
            outcome
        }

        fn reserve(&mut self, account: AccountId, to: AccountId, whole: u64, ttl_s: u64) -> HoldId {
            let body = CommandBody::HoldReserve(HoldReserve {
                account,
                destination: to,
                amount: Amount::whole(whole),
                currency: IDR,
                expiry: payu_engine::HoldExpiry::At(Timestamp(
                    self.now_ns + ttl_s * NANOS_PER_SECOND,
                )),
            });
            match self.run(body).result {
                CommandResult::HoldReserved(change) => change.hold,
                other => panic!("reserve: {other:?}"),
            }
        }
    }

    fn transfer(from: AccountId, to: AccountId, whole: u64) -> Transfer {
        Transfer {
            from,
            to,
            amount: Amount::whole(whole),
            currency: IDR,
        }
    }

    fn deposit(settlement: AccountId, account: AccountId, whole: u64) -> CommandBody {
        CommandBody::Deposit(payu_engine::Deposit {
            settlement,
            account,
            amount: Amount::whole(whole),
            currency: IDR,
        })
    }

    fn pocket_move(pocket: AccountId, direction: PocketDirection, whole: u64) -> CommandBody {
        CommandBody::PocketMove(payu_engine::PocketMove {
            pocket,
            direction,
            amount: Amount::whole(whole),
            currency: IDR,
        })
    }

    fn update(account: AccountId, status: Option<AccountStatus>, tier: Option<u8>) -> CommandBody {
        CommandBody::UpdateAccount(UpdateAccount {
            account,
            status,
            tier,
            overdraft_limit: None,
        })
    }

    /// Every view the engine can be asked about equals the engine's own state.
    fn assert_matches_engine(model: &ReadModel, engine: &Engine, holds_issued: u64) {
        assert_eq!(model.applied_seq(), engine.last_seq());
        assert_eq!(model.stats().accounts, engine.accounts().len() as u64);
        for (id, account) in engine.accounts() {
            let view = model.account(id).expect("a view of every engine account");
            let expected = AccountView {
                opened_seq: view.opened_seq,
                opened_at: view.opened_at,
                last_txn: view.last_txn,
                ..seeded_view(id, account)
            };
            assert_eq!(view, expected);
            let pocket_view = |pocket: &Pocket| PocketView {
                id: pocket.id,
                parent: pocket.parent,
                name: pocket.name.clone(),
                target_amount: pocket.target_amount,
                target_date: pocket.target_date,
                locked: pocket.locked,
                balance: engine.account(pocket.id).expect("pocket account").balance,
            };
            let pockets: Vec<PocketView> = engine.pockets_of(id).map(pocket_view).collect();
            assert_eq!(model.pockets(id), pockets);
            assert_eq!(model.pocket(id), engine.pocket(id).map(pocket_view));
        }
        for id in (1..=holds_issued).map(HoldId) {
            let view = model.hold(id);
            match engine.hold(id) {
                Some(hold) => assert_eq!(
                    view,
                    Some(HoldView {
                        id,
                        account: hold.account,
                        destination: hold.destination,
                        amount: hold.amount,
                        currency: hold.currency,
                        expires_at: hold.expires_at,
                        state: HoldState::Active,
                        committed: Amount::ZERO,
                        txn: None,
                    })
                ),
                None => assert_ne!(view.map(|v| v.state), Some(HoldState::Active)),
            }
        }
    }

    /// What `scenario` did, for assertions about particular views.
    struct Scenario {
        settlement: AccountId,
        alice: AccountId,
        bob: AccountId,
        shop: AccountId,
        locked_pocket: AccountId,
        open_pocket: AccountId,
        batch: Vec<BatchItem>,
        payment: Posted,
        refund: Posted,
        committed_hold: HoldId,
        commit: Posted,
        released_hold: HoldId,
        expired_hold: HoldId,
    }

    /// Every kind of command, with rejections, a replay and an expiry among them.
    fn scenario(h: &mut Harness) -> Scenario {
        use PocketDirection::{In, Out};
        let settlement = h.open(AccountKind::Settlement, 0);
        let alice = h.open(AccountKind::Customer, 2);
        let bob = h.open(AccountKind::Customer, 2);
        let shop = h.open(AccountKind::Merchant, 3);
        h.posted(deposit(settlement, alice, 1_000_000));
        h.posted(deposit(settlement, bob, 500_000));
        h.posted(CommandBody::Transfer(transfer(alice, bob, 100_000)));
        let too_much = CommandBody::Transfer(transfer(bob, alice, 10_000_000));
        h.rejected(too_much, RejectCode::InsufficientFunds);
        let batch = vec![
            transfer(alice, bob, 1_000),
            transfer(bob, alice, 50_000_000),
            transfer(bob, shop, 2_000),
        ];
        let batch = match h.run(CommandBody::TransferBatch(batch)).result {
            CommandResult::Batch(items) => items,
            other => panic!("batch: {other:?}"),
        };
        let locked_pocket = h.open_pocket(alice, "Liburan", true);
        let open_pocket = h.open_pocket(alice, "Darurat", false);
        h.posted(pocket_move(locked_pocket, In, 200_000));
        h.rejected(pocket_move(locked_pocket, Out, 1), RejectCode::PocketLocked);
        h.posted(pocket_move(open_pocket, In, 50_000));
        h.posted(pocket_move(open_pocket, Out, 50_000));
        let payment = h.posted(CommandBody::Payment(payu_engine::Payment {
            customer: alice,
            merchant: shop,
            amount: Amount::whole(75_000),
            currency: IDR,
        }));
        let refund = h.posted(CommandBody::Refund(payu_engine::Refund {
            payment: payment.txn,
            amount: Amount::whole(25_000),
            currency: IDR,
        }));
        let committed_hold = h.reserve(alice, shop, 30_000, 3600);
        let commit = match h
            .run(CommandBody::HoldCommit(payu_engine::HoldCommit {
                hold: committed_hold,
                amount: Amount::whole(10_000),
            }))
            .result
        {
            CommandResult::HoldCommitted { posted, .. } => posted,
            other => panic!("commit: {other:?}"),
        };
        let released_hold = h.reserve(bob, settlement, 5_000, 3600);
        let release = h.run(CommandBody::HoldRelease(payu_engine::HoldRelease {
            hold: released_hold,
        }));
        assert!(matches!(release.result, CommandResult::HoldReleased(_)));
        let expired_hold = h.reserve(alice, bob, 40_000, 10);
        h.advance(60 * NANOS_PER_SECOND);
        let too_much = CommandBody::Transfer(transfer(bob, alice, 10_000_000));
        let outcome = h.rejected(too_much, RejectCode::InsufficientFunds);
        assert_eq!(
            outcome.expired_holds.len(),
            1,
            "the expiry rides on a rejection"
        );
        h.run(update(bob, Some(AccountStatus::Frozen), None));
        let to_frozen = CommandBody::Transfer(transfer(alice, bob, 1));
        h.rejected(to_frozen, RejectCode::AccountFrozen);
        h.run(update(bob, Some(AccountStatus::Active), Some(1)));
        h.posted(CommandBody::Withdrawal(payu_engine::Withdrawal {
            account: alice,
            settlement,
            amount: Amount::whole(10_000),
            currency: IDR,
        }));
        h.run(update(open_pocket, Some(AccountStatus::Closed), None));
        let key = IdempotencyKey(u128::MAX);
        let once = CommandBody::Transfer(transfer(alice, bob, 3));
        h.run_keyed(key, once.clone());
        let again = h.run_keyed(key, once);
        assert!(matches!(again.result, CommandResult::Replayed { .. }));
        Scenario {
            settlement,
            alice,
            bob,
            shop,
            locked_pocket,
            open_pocket,
            batch,
            payment,
            refund,
            committed_hold,
            commit,
            released_hold,
            expired_hold,
        }
    }

    /// Every posting in the log, in order.
    fn postings(log: &[DurableRecord]) -> Vec<Posted> {
        let mut all = Vec::new();
        for (_, _, entry) in log {
            match &entry.outcome.result {
                CommandResult::Posted(posted) => all.push(*posted),
                CommandResult::HoldCommitted { posted, .. } => all.push(*posted),
                CommandResult::Batch(items) => all.extend(items.iter().filter_map(|i| match i {
                    BatchItem::Posted(posted) => Some(*posted),
                    BatchItem::Rejected(_) => None,
                })),
                _ => {}
            }
        }
        all
    }

    /// The whole history of `account`, page by page.
    fn all_pages(model: &ReadModel, account: AccountId, limit: usize) -> Vec<Vec<TxnId>> {
        let mut pages = Vec::new();
        let mut before = None;
        loop {
            let page = model.history(account, before, limit);
            pages.push(page.items.iter().map(|txn| txn.id).collect());
            match page.next_cursor {
                Some(cursor) => before = Some(cursor),
                None => return pages,
            }
        }
    }

    #[test]
    fn views_follow_the_engine_through_every_kind_of_command() {
        let mut h = Harness::new(ReadModelConfig::default());
        let s = scenario(&mut h);
        let model = &h.model;

        let kinds: Vec<TxnKind> = postings(&h.log)
            .iter()
            .map(|p| model.transaction(p.txn).expect("kept").kind)
            .collect();
        use TxnKind::*;
        let expected = [
            Deposit, Deposit, Transfer, Transfer, Transfer, PocketMove, PocketMove, PocketMove,
            Payment, Refund, HoldCommit, Withdrawal, Transfer,
        ];
        assert_eq!(kinds, expected);

        assert!(matches!(s.batch[1], BatchItem::Rejected(_)));
        for item in [s.batch[0], s.batch[2]] {
            let BatchItem::Posted(posted) = item else {
                panic!("batch item: {item:?}")
            };
            let txn = model.transaction(posted.txn).expect("batch transfer");
            assert_eq!((txn.debit, txn.credit), (posted.debit, posted.credit));
        }

        let payment = model.payment(s.payment.txn).expect("payment");
        assert_eq!(
            (payment.debit.account, payment.credit.account),
            (s.alice, s.shop)
        );
        assert_eq!(payment.currency, IDR);
        assert_eq!(
            model.payment(s.refund.txn),
            None,
            "a refund is not a payment"
        );
        let refund = model.transaction(s.refund.txn).expect("refund");
        assert_eq!(refund.payment, Some(s.payment.txn));
        assert_eq!(
            (refund.debit.account, refund.credit.account),
            (s.shop, s.alice)
        );

        let committed = model.hold(s.committed_hold).expect("committed hold");
        assert_eq!(committed.state, HoldState::Committed);
        assert_eq!(committed.committed, Amount::whole(10_000));
        assert_eq!(committed.txn, Some(s.commit.txn));
        let commit = model.transaction(s.commit.txn).expect("commit txn");
        assert_eq!(commit.hold, Some(s.committed_hold));
        assert_eq!(commit.payment, None);
        let released = model.hold(s.released_hold).expect("released hold");
        assert_eq!(
            (released.state, released.destination),
            (HoldState::Released, s.settlement)
        );
        let expired = model.hold(s.expired_hold).expect("expired hold");
        assert_eq!((expired.state, expired.txn), (HoldState::Expired, None));

        let bob = model.account(s.bob).expect("bob");
        assert_eq!((bob.status, bob.tier), (AccountStatus::Active, 1));
        let pocket = model.account(s.open_pocket).expect("pocket");
        assert_eq!(pocket.status, AccountStatus::Closed);
        assert_eq!(pocket.parent, Some(s.alice));
        let locked = model.pocket(s.locked_pocket).expect("locked pocket");
        assert_eq!(locked.balance, i128::from(Amount::whole(200_000).0));
        assert_eq!(model.pockets(s.alice).len(), 2);
        assert_eq!(model.pocket(s.alice), None, "an account is not a pocket");

        let shop = model.account(s.shop).expect("shop");
        assert_eq!(shop.opened_seq, 4);
        assert_eq!(shop.opened_at, h.log[3].1);
        assert_eq!(model.account(AccountId(999)), None);
        assert_eq!(model.transaction(TxnId(999)), None);
        let stats = model.stats();
        assert_eq!(stats.transactions, expected.len() as u64);
        assert_eq!(stats.oldest_txn, Some(TxnId(1)));
    }

    #[test]
    fn history_pages_walk_each_account_newest_first() {
        let mut h = Harness::new(ReadModelConfig::default());
        let settlement = h.open(AccountKind::Settlement, 0);
        let alice = h.open(AccountKind::Customer, 2);
        let bob = h.open(AccountKind::Customer, 2);
        let carol = h.open(AccountKind::Customer, 2);
        h.posted(deposit(settlement, alice, 1_000_000));
        h.posted(deposit(settlement, bob, 1_000_000));
        for i in 0..25 {
            let other = if i % 2 == 0 { bob } else { carol };
            h.posted(CommandBody::Transfer(transfer(alice, other, i + 1)));
            h.posted(CommandBody::Transfer(transfer(bob, carol, 1)));
        }
        for account in [alice, bob, carol, settlement] {
            let mut expected: Vec<TxnId> = postings(&h.log)
                .iter()
                .filter(|p| p.debit.account == account || p.credit.account == account)
                .map(|p| p.txn)
                .collect();
            expected.reverse();
            let pages = all_pages(&h.model, account, 10);
            let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
            let full = expected.len() / 10;
            assert!(sizes[..full].iter().all(|&n| n == 10), "{sizes:?}");
            assert_eq!(pages.concat(), expected, "account {account:?}");
            let page = h.model.history(account, None, 10_000);
            assert!(page.items.len() <= HISTORY_PAGE_MAX);
            assert_eq!(page.next_cursor, None);
            let last = h.model.account(account).expect("account").last_txn;
            assert_eq!(last, expected.first().copied());
        }
        let alice_txns = h.model.history(alice, None, 500).items;
        assert!(alice_txns.windows(2).all(|w| w[0].id > w[1].id));
        assert_eq!(
            h.model.history(alice, None, 0).items.len(),
            1,
            "limit clamps to 1"
        );
        // A cursor that is not one of the account's transactions gives an empty page.
        let bob_only = h.model.history(bob, None, 1).items[0].id;
        let page = h.model.history(alice, Some(bob_only), 10);
        assert_eq!((page.items.len(), page.next_cursor), (0, None));
        assert!(h.model.history(AccountId(999), None, 10).items.is_empty());
    }

    #[test]
    fn eviction_bounds_the_ring_and_ends_old_history() {
        let max = 8;
        let mut h = Harness::new(ReadModelConfig {
            transactions_max: max,
        });
        let settlement = h.open(AccountKind::Settlement, 0);
        let alice = h.open(AccountKind::Customer, 2);
        let bob = h.open(AccountKind::Customer, 2);
        h.posted(deposit(settlement, alice, 1_000_000));
        h.posted(deposit(settlement, bob, 1_000_000));
        for i in 0..40 {
            let (from, to) = if i % 3 == 0 {
                (bob, alice)
            } else {
                (alice, bob)
            };
            h.posted(CommandBody::Transfer(transfer(from, to, 1)));
            let stats = h.model.stats();
            assert!(stats.transactions <= max as u64);
            let state = h.model.read();
            assert!(state.txns.slots.len() <= max && state.txns.slots.capacity() <= max);
        }
        let all = postings(&h.log);
        let newest = all.last().expect("postings").txn.0;
        let stats = h.model.stats();
        assert_eq!(stats.transactions, max as u64);
        assert_eq!(stats.oldest_txn, Some(TxnId(newest - max as u64 + 1)));
        assert_eq!(stats.transactions_evicted, all.len() as u64 - max as u64);
        assert_eq!(h.model.transaction(TxnId(1)), None);
        assert!(h.model.transaction(TxnId(newest)).is_some());
        for account in [alice, bob, settlement] {
            let mut kept: Vec<TxnId> = all
                .iter()
                .filter(|p| p.txn.0 > newest - max as u64)
                .filter(|p| p.debit.account == account || p.credit.account == account)
                .map(|p| p.txn)
                .collect();
            kept.reverse();
            assert_eq!(all_pages(&h.model, account, 3).concat(), kept);
        }
        // The settlement account's transactions were all evicted: its history is empty.
        assert!(h.model.history(settlement, None, 10).items.is_empty());
    }

    #[test]
    fn ring_tolerates_gaps_and_refuses_repeats() {
        let slot = |seq| Slot {
            seq,
            timestamp: Timestamp(seq),
            debit: Posting {
                account: AccountId(1),
                amount: Amount(1),
                balance_after: -1,
            },
            credit: Posting {
                account: AccountId(2),
                amount: Amount(1),
                balance_after: 1,
            },
            prev_debit: NO_TXN,
            prev_credit: NO_TXN,
            reference: 0,
            currency: IDR,
            kind: TxnKind::Transfer,
        };
        let mut ring = TxnRing::new(8).expect("a small ring");
        let reserved = ring.slots.capacity();
        assert!(reserved >= 8, "the whole ring is reserved up front");
        assert!(ring.push(1, slot(1)) && ring.push(2, slot(2)));
        assert!(ring.push(5, slot(3)), "a gap leaves vacant slots");
        assert!(ring.get(3).is_none() && ring.get(4).is_none());
        assert_eq!(ring.get(5).map(|s| s.seq), Some(3));
        assert!(!ring.push(4, slot(4)), "an id below the newest is refused");
        assert!(!ring.push(5, slot(4)));
        assert_eq!(ring.stored, 3);
        assert!(
            ring.push(100, slot(5)),
            "a jump past the bound restarts the ring"
        );
        assert_eq!(
            (ring.stored, ring.evicted, ring.oldest()),
            (1, 3, Some(TxnId(100)))
        );
        for id in 101..=120 {
            assert!(ring.push(id, slot(id)));
        }
        assert_eq!((ring.stored, ring.oldest()), (8, Some(TxnId(113))));
        // Through gaps, a restart and eviction, the ring never grew (nor copied itself).
        assert_eq!(ring.slots.capacity(), reserved);

        let mut ring = TxnRing::new(3000).expect("a small ring");
        let reserved = ring.slots.capacity();
        for id in 1..=10_000 {
            assert!(ring.push(id, slot(id)));
            assert_eq!(ring.slots.capacity(), reserved, "at txn {id}");
        }
        assert_eq!((ring.stored, ring.oldest()), (3000, Some(TxnId(7001))));
    }

    #[test]
    fn a_ring_the_system_refuses_is_an_error_not_an_abort() {
        // More address space than a process can have: refused before anything is mapped.
        let error = TxnRing::new(usize::MAX / 64).err().expect("refused");
        assert!(
            error.contains("reserving the read model's ring of")
                && error.contains("read_model.transactions_max"),
            "{error}"
        );
        let error = ReadModel::try_new(ReadModelConfig {
            transactions_max: 0,
        })
        .expect_err("refused");
        assert!(error.contains("transactions_max: need 1..="), "{error}");
    }

    fn assert_same_views(a: &ReadModel, b: &ReadModel, accounts: u64, holds: u64, txns: u64) {
        assert_eq!(a.stats(), b.stats());
        for id in (1..=accounts + 1).map(AccountId) {
            assert_eq!(a.account(id), b.account(id));
            assert_eq!(a.pockets(id), b.pockets(id));
            assert_eq!(a.pocket(id), b.pocket(id));
            assert_eq!(all_pages(a, id, 4), all_pages(b, id, 4));
        }
        for id in (1..=holds + 1).map(HoldId) {
            assert_eq!(a.hold(id), b.hold(id));
        }
        for id in (1..=txns + 1).map(TxnId) {
            assert_eq!(a.transaction(id), b.transaction(id));
        }
    }

    #[test]
    fn seeding_from_a_restored_engine_equals_applying_everything() {
        let mut h = Harness::new(ReadModelConfig::default());
        scenario(&mut h);
        let accounts = h.engine.accounts().len() as u64;
        let txns = postings(&h.log).len() as u64;
        for k in 0..=h.log.len() {
            let mut engine = Engine::new(engine_config());
            for (seq, timestamp, entry) in &h.log[..k] {
                engine.apply(*seq, *timestamp, &entry.command);
            }
            let restored = Engine::restore(&engine.snapshot()).expect("restore");

            // Seeded, then fed the whole journal: the same as the model fed from genesis.
            let seeded = ReadModel::new(ReadModelConfig::default());
            seeded.seed(&restored, 1);
            // History up to the seed is still to be replayed: not caught up yet.
            assert_eq!(seeded.applied_seq(), 0);
            seeded.apply_batch(&h.log[..k]);
            assert_matches_engine(&seeded, &restored, h.holds_issued);
            seeded.apply_batch(&h.log[k..]);
            assert_same_views(&seeded, &h.model, accounts, h.holds_issued, txns);

            // Seeded, then fed only what follows the snapshot (the node's usual start): the
            // same balances, holds and statuses.
            let tail_only = ReadModel::new(ReadModelConfig::default());
            tail_only.seed(&restored, k as u64 + 1);
            assert_eq!(tail_only.applied_seq(), k as u64);
            tail_only.apply_batch(&h.log[k..]);
            assert_matches_engine(&tail_only, &h.engine, h.holds_issued);
            let later = postings(&h.log[k..]);
            for posted in &later {
                assert_eq!(
                    tail_only.transaction(posted.txn),
                    h.model.transaction(posted.txn)
                );
            }
        }
    }

    #[test]
    #[should_panic(expected = "consecutive")]
    fn a_gap_between_records_is_a_bug() {
        let mut h = Harness::new(ReadModelConfig::default());
        h.open(AccountKind::Customer, 0);
        h.open(AccountKind::Customer, 0);
        h.open(AccountKind::Customer, 0);
        let model = ReadModel::new(ReadModelConfig::default());
        let (seq, timestamp, entry) = &h.log[0];
        model.apply(*seq, *timestamp, entry);
        let (seq, timestamp, entry) = &h.log[2];
        model.apply(*seq, *timestamp, entry);
    }

    fn journal_in(dir: &std::path::Path) -> Journal<MmapStorage> {
        let storage = MmapStorage::open(dir, FlushMode::Syscall).expect("storage");
        let config = JournalConfig {
            segment_bytes: 64 << 10,
        };
        Journal::open(storage, config).expect("journal").0
    }

    fn append(journal: &mut Journal<MmapStorage>, records: &[DurableRecord]) {
        for (seq, timestamp, entry) in records {
            let appended = journal.append(1, timestamp.0, &encode_entry(entry));
            assert_eq!(appended.expect("append"), *seq);
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    }

    /// Far longer than the tailer ever needs: the test waits on progress, never on time.
    const CATCH_UP: Duration = Duration::from_secs(120);

    #[test]
    fn tailer_applies_durable_records_from_a_real_journal() {
        let mut h = Harness::new(ReadModelConfig::default());
        scenario(&mut h);
        let dir = tempfile::tempdir().expect("tempdir");
        let mut journal = journal_in(dir.path());
        let half = h.log.len() / 2;
        append(&mut journal, &h.log[..half]);
        journal.flush().expect("flush");

        let model = Arc::new(ReadModel::new(ReadModelConfig::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = journal.reader(1).expect("reader");
        let tailer = spawn_tailer(Arc::clone(&model), reader, Arc::clone(&stop));
        let runtime = runtime();
        assert!(runtime.block_on(model.wait_for(half as u64, CATCH_UP)));
        assert_eq!(model.applied_seq(), half as u64);

        // Appended but not flushed: not durable, so not applied.
        append(&mut journal, &h.log[half..]);
        let last = h.log.len() as u64;
        let short = Duration::from_millis(20);
        assert!(!runtime.block_on(model.wait_for(last, short)));
        assert_eq!(model.applied_seq(), half as u64);

        journal.flush().expect("flush");
        assert!(runtime.block_on(model.wait_for(last, CATCH_UP)));
        let accounts = h.engine.accounts().len() as u64;
        let txns = postings(&h.log).len() as u64;
        assert_same_views(&model, &h.model, accounts, h.holds_issued, txns);
        assert_matches_engine(&model, &h.engine, h.holds_issued);

        stop.store(true, Ordering::Release);
        let result = tailer.join().expect("tailer thread");
        assert_eq!(result, Ok(()));
    }

    #[test]
    fn tailer_stops_at_a_record_that_does_not_decode() {
        let mut h = Harness::new(ReadModelConfig::default());
        h.open(AccountKind::Customer, 0);
        let dir = tempfile::tempdir().expect("tempdir");
        let mut journal = journal_in(dir.path());
        append(&mut journal, &h.log);
        journal
            .append(1, h.now_ns + 1, &[0xff; 64])
            .expect("append");
        journal.flush().expect("flush");

        let model = Arc::new(ReadModel::new(ReadModelConfig::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = journal.reader(1).expect("reader");
        let tailer = spawn_tailer(Arc::clone(&model), reader, stop);
        let result = tailer.join().expect("tailer thread");
        let error = result.expect_err("an undecodable record is fatal");
        assert!(error.contains("record 2 does not decode"), "{error}");
        assert_eq!(model.applied_seq(), 1, "records before it are applied");
        assert!(model.account(AccountId(1)).is_some());
    }
}
