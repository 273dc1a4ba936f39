//! The end-of-run audit: read the ledger back through the API and compare it with the client's
//! own books (book.rs), which hold only what the node acknowledged.
//!
//! Checks:
//! - `zero_sum`: the run's accounts and its settlement account sum to zero (double entry);
//! - `balances`: each account's balance is its funding plus acknowledged credits minus
//!   acknowledged debits;
//! - `held`: each account's held amount is the sum of its holds still open;
//! - `histories`: every acknowledged transaction appears exactly once in the history of each
//!   of its two accounts, no history holds a transaction this run was not told about (nothing
//!   applied twice, nothing slipped in), and each history's length is the number of postings
//!   acknowledged for that account, funding included;
//! - `transactions`: GET /v1/transactions/{id} shows each acknowledged transaction with the
//!   same accounts and amount (all of them, or a seeded sample above `--audit-gets-max`);
//! - `answers`: every 2xx answer matched its request;
//! - `resolved`: every unknown outcome was learned by resending it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::api::{AccountOut, Api, HistoryOut, TxnOut};
use crate::book::{Acked, Book};
use crate::setup::{Fleet, for_each_bounded};
use crate::workload::SplitMix64;

/// The node's largest history page (gateway readmodel::HISTORY_PAGE_MAX).
const HISTORY_PAGE: usize = 500;
/// Pages read per account at most, so a cursor that loops cannot hang the audit.
const HISTORY_PAGES_MAX: u64 = 1_000_000;
/// Examples kept per check; the counts are exact.
const EXAMPLES_MAX: usize = 20;
const DEBIT_SEEN: u8 = 1;
const CREDIT_SEEN: u8 = 2;

pub struct AuditOptions {
    pub workers: u32,
    pub gets_max: u64,
    pub seed: u64,
}

/// One check's verdict.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: &'static str,
    pub what: &'static str,
    pub checked: u64,
    pub failures: u64,
    pub examples: Vec<String>,
}

impl Check {
    fn new(name: &'static str, what: &'static str) -> Check {
        Check {
            name,
            what,
            checked: 0,
            failures: 0,
            examples: Vec::new(),
        }
    }

    fn fail(&mut self, example: String) {
        self.failures += 1;
        if self.examples.len() < EXAMPLES_MAX {
            self.examples.push(example);
        }
    }

    pub fn passed(&self) -> bool {
        self.failures == 0
    }
}

#[derive(Clone, Debug)]
pub struct AuditReport {
    pub checks: Vec<Check>,
    pub warnings: Vec<String>,
    pub accounts: u64,
    pub acknowledged: u64,
    pub history_items: u64,
    pub transactions_fetched: u64,
    pub seconds: f64,
}

impl AuditReport {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(Check::passed)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "passed": self.passed(),
            "accounts": self.accounts,
            "acknowledged_postings": self.acknowledged,
            "history_items_read": self.history_items,
            "transactions_fetched": self.transactions_fetched,
            "seconds": self.seconds,
            "warnings": self.warnings,
            "checks": self.checks.iter().map(|c| json!({
                "name": c.name, "what": c.what, "passed": c.passed(), "checked": c.checked,
                "failures": c.failures, "examples": c.examples,
            })).collect::<Vec<_>>(),
        })
    }
}

/// What the books say each account should show.
struct Expected {
    /// Account id → position in `fleet.all()`.
    position: HashMap<u64, usize>,
    ids: Vec<u64>,
    balance: Vec<Decimal>,
    postings: Vec<u64>,
    held: Vec<Decimal>,
}

fn expected(fleet: &Fleet, book: &Book, answers: &mut Check) -> Expected {
    let ids: Vec<u64> = fleet.all().collect();
    let position: HashMap<u64, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let mut balance = vec![Decimal::ZERO; ids.len()];
    let mut postings = vec![0u64; ids.len()];
    let mut held = vec![Decimal::ZERO; ids.len()];
    for acked in &book.acked {
        match (position.get(&acked.debit), position.get(&acked.credit)) {
            (Some(&debit), Some(&credit)) => {
                balance[debit] -= acked.amount;
                balance[credit] += acked.amount;
                postings[debit] += 1;
                postings[credit] += 1;
            }
            _ => answers.fail(format!(
                "acknowledged {acked:?} names an account outside the run"
            )),
        }
    }
    for hold in &book.open_holds {
        if let Some(&at) = position.get(&hold.account) {
            held[at] += hold.amount;
        }
    }
    Expected {
        position,
        ids,
        balance,
        postings,
        held,
    }
}

/// Runs every check. `book` is the run's books after resolution.
pub async fn audit(api: &Api, fleet: &Fleet, book: Book, options: AuditOptions) -> AuditReport {
    let started = Instant::now();
    let mut answers = Check::new(
        "answers",
        "every 2xx answer matched the request it answered",
    );
    for mismatch in &book.mismatches {
        answers.fail(mismatch.clone());
    }
    answers.checked = book.acked.len() as u64 + book.mismatches.len() as u64;
    let mut resolved = Check::new(
        "resolved",
        "every unknown outcome was learned by resending the same request",
    );
    resolved.checked = book.resent;
    for unresolved in &book.unresolved {
        resolved.fail(unresolved.clone());
    }
    let expected = expected(fleet, &book, &mut answers);
    let book = Arc::new(book);

    let accounts = read_accounts(api, &expected.ids, options.workers).await;
    let (zero_sum, balances, held) = check_accounts(&accounts, &expected, &book);
    let (histories, history_items) =
        check_histories(api, &expected, Arc::clone(&book), options.workers).await;
    let (transactions, fetched) = check_transactions(api, Arc::clone(&book), &options).await;

    let mut warnings = Vec::new();
    if book.unresolved_holds > 0 {
        warnings.push(format!(
            "{} hold reservations stayed unknown after resending them (no answer, or IDEMPOTENCY_CONFLICT \
             to the same key and body); held was not checked on {} accounts",
            book.unresolved_holds,
            book.held_unknown.len()
        ));
    }
    if !book.balance_unknown.is_empty() {
        warnings.push(format!(
            "balances of {} accounts could not be predicted",
            book.balance_unknown.len()
        ));
    }
    AuditReport {
        checks: vec![
            zero_sum,
            balances,
            held,
            histories,
            transactions,
            answers,
            resolved,
        ],
        warnings,
        accounts: expected.ids.len() as u64,
        acknowledged: book.acked.len() as u64,
        history_items,
        transactions_fetched: fetched,
        seconds: started.elapsed().as_secs_f64(),
    }
}

async fn read_accounts(api: &Api, ids: &[u64], workers: u32) -> Vec<anyhow::Result<AccountOut>> {
    let ids = Arc::new(ids.to_vec());
    let api = api.clone();
    for_each_bounded(ids.len() as u64, workers, move |i| {
        let (api, ids) = (api.clone(), Arc::clone(&ids));
        async move {
            api.get_json::<AccountOut>(&format!("/v1/accounts/{}", ids[i as usize]))
                .await
        }
    })
    .await
}

fn check_accounts(
    accounts: &[anyhow::Result<AccountOut>],
    expected: &Expected,
    book: &Book,
) -> (Check, Check, Check) {
    let mut zero_sum = Check::new(
        "zero_sum",
        "the run's accounts and its settlement account sum to zero",
    );
    let mut balances = Check::new(
        "balances",
        "each balance is funding + acknowledged credits - acknowledged debits",
    );
    let mut held = Check::new(
        "held",
        "each account's held amount is the sum of its open holds",
    );
    let mut sum = Decimal::ZERO;
    zero_sum.checked = 1;
    for (at, account) in accounts.iter().enumerate() {
        let id = expected.ids[at];
        let read = account
            .as_ref()
            .map_err(|error| format!("{error:#}"))
            .and_then(|account| {
                let balance = account
                    .balance
                    .decimal()
                    .map_err(|e| format!("account {id} balance: {e:#}"))?;
                let held = account
                    .held
                    .decimal()
                    .map_err(|e| format!("account {id} held: {e:#}"))?;
                match account.id == id {
                    true => Ok((balance, held)),
                    false => Err(format!(
                        "GET /v1/accounts/{id} answered account {}",
                        account.id
                    )),
                }
            });
        let (balance, held_now) = match read {
            Ok(pair) => pair,
            Err(why) => {
                zero_sum.fail(format!("account {id} unreadable: {why}"));
                balances.fail(format!("account {id} unreadable: {why}"));
                continue;
            }
        };
        sum += balance;
        if !book.balance_unknown.contains(&id) {
            balances.checked += 1;
            if balance != expected.balance[at] {
                balances.fail(format!(
                    "account {id}: balance {balance}, acknowledged {} (off by {})",
                    expected.balance[at],
                    balance - expected.balance[at]
                ));
            }
        }
        if !book.held_unknown.contains(&id) {
            held.checked += 1;
            if held_now != expected.held[at] {
                held.fail(format!(
                    "account {id}: held {held_now}, open holds {}",
                    expected.held[at]
                ));
            }
        }
    }
    if sum != Decimal::ZERO {
        zero_sum.fail(format!("the run's accounts sum to {sum}, not 0"));
    }
    (zero_sum, balances, held)
}

/// Acknowledged transactions with ids, sorted by id, with a seen-mark per side.
struct Index {
    by_txn: Vec<(u64, usize)>,
    seen: Vec<AtomicU8>,
    /// Acknowledged movements without an id (replayed batches), per (side, debit, credit, amount).
    idless: Mutex<HashMap<(u8, u64, u64, Decimal), u64>>,
}

impl Index {
    fn new(book: &Book) -> Index {
        let mut by_txn: Vec<(u64, usize)> = book
            .acked
            .iter()
            .enumerate()
            .filter_map(|(at, a)| a.txn.map(|txn| (txn, at)))
            .collect();
        by_txn.sort_unstable();
        let mut idless = HashMap::new();
        for acked in book.acked.iter().filter(|a| a.txn.is_none()) {
            for side in [DEBIT_SEEN, CREDIT_SEEN] {
                *idless
                    .entry((side, acked.debit, acked.credit, acked.amount))
                    .or_insert(0) += 1;
            }
        }
        let seen = (0..book.acked.len()).map(|_| AtomicU8::new(0)).collect();
        Index {
            by_txn,
            seen,
            idless: Mutex::new(idless),
        }
    }

    fn find(&self, txn: u64) -> Option<usize> {
        self.by_txn
            .binary_search_by_key(&txn, |(id, _)| *id)
            .ok()
            .map(|at| self.by_txn[at].1)
    }
}

/// A failure found in a history, with the two accounts of the transaction it concerns.
struct ItemFailure {
    text: String,
    accounts: [u64; 2],
}

/// A history item checked against the books.
fn check_item(account: u64, item: &TxnOut, book: &Book, index: &Index) -> Result<(), ItemFailure> {
    let accounts = [item.debit.account_id, item.credit.account_id];
    check_item_text(account, item, book, index).map_err(|text| ItemFailure { text, accounts })
}

fn check_item_text(account: u64, item: &TxnOut, book: &Book, index: &Index) -> Result<(), String> {
    let side = match (
        item.debit.account_id == account,
        item.credit.account_id == account,
    ) {
        (true, _) => DEBIT_SEEN,
        (_, true) => CREDIT_SEEN,
        _ => {
            return Err(format!(
                "account {account}'s history holds txn {} between {} and {}",
                item.id, item.debit.account_id, item.credit.account_id
            ));
        }
    };
    let amount = item
        .amount
        .decimal()
        .map_err(|e| format!("txn {}: {e:#}", item.id))?;
    let Some(at) = index.find(item.id) else {
        let mut idless = index.idless.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (side, item.debit.account_id, item.credit.account_id, amount);
        if let Some(count) = idless.get_mut(&key).filter(|count| **count > 0) {
            *count -= 1;
            return Ok(());
        }
        return Err(format!(
            "account {account}'s history holds txn {} ({} {amount} from {} to {}) that was never acknowledged to this run",
            item.id, item.kind, item.debit.account_id, item.credit.account_id
        ));
    };
    let acked: &Acked = &book.acked[at];
    if acked.debit != item.debit.account_id
        || acked.credit != item.credit.account_id
        || acked.amount != amount
    {
        return Err(format!(
            "txn {} in account {account}'s history moves {amount} from {} to {}; acknowledged: {} from {} to {}",
            item.id,
            item.debit.account_id,
            item.credit.account_id,
            acked.amount,
            acked.debit,
            acked.credit
        ));
    }
    if index.seen[at].fetch_or(side, Ordering::Relaxed) & side != 0 {
        return Err(format!(
            "txn {} appears twice in account {account}'s history",
            item.id
        ));
    }
    Ok(())
}

/// Walks one account's whole history; returns its length and the failures found.
async fn walk_history(
    api: &Api,
    account: u64,
    book: &Book,
    index: &Index,
) -> anyhow::Result<(u64, Vec<ItemFailure>)> {
    let mut cursor: Option<String> = None;
    let mut length = 0u64;
    let mut failures = Vec::new();
    for _ in 0..HISTORY_PAGES_MAX {
        let path = match &cursor {
            None => format!("/v1/accounts/{account}/transactions?limit={HISTORY_PAGE}"),
            Some(cursor) => {
                format!("/v1/accounts/{account}/transactions?limit={HISTORY_PAGE}&cursor={cursor}")
            }
        };
        let page: HistoryOut = api.get_json(&path).await?;
        for item in &page.items {
            length += 1;
            if let Err(why) = check_item(account, item, book, index) {
                failures.push(why);
            }
        }
        match page.next_cursor {
            Some(next) if !page.items.is_empty() => cursor = Some(next.to_string()),
            _ => return Ok((length, failures)),
        }
    }
    anyhow::bail!("account {account}: history longer than {HISTORY_PAGES_MAX} pages")
}

async fn check_histories(
    api: &Api,
    expected: &Expected,
    book: Arc<Book>,
    workers: u32,
) -> (Check, u64) {
    let mut check = Check::new(
        "histories",
        "each acknowledged transaction is in both accounts' histories once; histories hold nothing else",
    );
    let index = Arc::new(Index::new(&book));
    let ids = Arc::new(expected.ids.clone());
    let (api_for_walk, book_for_walk, index_for_walk) =
        (api.clone(), Arc::clone(&book), Arc::clone(&index));
    let walked = for_each_bounded(ids.len() as u64, workers, move |i| {
        let (api, book, index, ids) = (
            api_for_walk.clone(),
            Arc::clone(&book_for_walk),
            Arc::clone(&index_for_walk),
            Arc::clone(&ids),
        );
        async move { walk_history(&api, ids[i as usize], &book, &index).await }
    })
    .await;
    let mut items = 0;
    for (at, walk) in walked.into_iter().enumerate() {
        let id = expected.ids[at];
        check.checked += 1;
        let (length, failures) = match walk {
            Ok(walk) => walk,
            Err(error) => {
                check.fail(format!("account {id}: history unreadable: {error:#}"));
                continue;
            }
        };
        items += length;
        for failure in failures {
            // A transaction of an operation whose outcome stayed unknown cannot be judged.
            if !failure
                .accounts
                .iter()
                .any(|a| book.balance_unknown.contains(a))
            {
                check.fail(failure.text);
            }
        }
        if !book.balance_unknown.contains(&id) && length != expected.postings[at] {
            check.fail(format!(
                "account {id}: history holds {length} transactions, {} postings were acknowledged",
                expected.postings[at]
            ));
        }
    }
    for &(txn, at) in &index.by_txn {
        let seen = index.seen[at].load(Ordering::Relaxed);
        let acked = &book.acked[at];
        for (side, account) in [(DEBIT_SEEN, acked.debit), (CREDIT_SEEN, acked.credit)] {
            if seen & side == 0 && expected.position.contains_key(&account) {
                check.fail(format!(
                    "acknowledged txn {txn} is missing from account {account}'s history"
                ));
            }
        }
    }
    let idless_left: u64 = index
        .idless
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .values()
        .sum();
    if idless_left > 0 {
        check.fail(format!("{idless_left} acknowledged batch postings (replayed, no ids) are missing from histories"));
    }
    (check, items)
}

async fn check_transactions(api: &Api, book: Arc<Book>, options: &AuditOptions) -> (Check, u64) {
    let mut check = Check::new(
        "transactions",
        "GET /v1/transactions/{id} shows each acknowledged transaction unchanged",
    );
    let mut chosen: Vec<usize> = (0..book.acked.len())
        .filter(|&at| book.acked[at].txn.is_some())
        .collect();
    if chosen.len() as u64 > options.gets_max {
        // A seeded partial Fisher-Yates: a uniform sample of gets_max transactions.
        let mut rng = SplitMix64::new(options.seed ^ 0xa0d1_7000);
        let take = options.gets_max as usize;
        for i in 0..take {
            let j = i + rng.below((chosen.len() - i) as u64) as usize;
            chosen.swap(i, j);
        }
        chosen.truncate(take);
    }
    let chosen = Arc::new(chosen);
    let (api, book_for_get, list) = (api.clone(), Arc::clone(&book), Arc::clone(&chosen));
    let fetched = for_each_bounded(chosen.len() as u64, options.workers, move |i| {
        let (api, book, list) = (api.clone(), Arc::clone(&book_for_get), Arc::clone(&list));
        async move {
            let acked = &book.acked[list[i as usize]];
            let txn = acked.txn.unwrap_or_default();
            let out: TxnOut = api.get_json(&format!("/v1/transactions/{txn}")).await?;
            let amount = out.amount.decimal()?;
            match out.id == txn
                && out.debit.account_id == acked.debit
                && out.credit.account_id == acked.credit
                && amount == acked.amount
            {
                true => Ok(()),
                false => anyhow::bail!(
                    "txn {txn}: GET shows {amount} from {} to {}; acknowledged {} from {} to {}",
                    out.debit.account_id,
                    out.credit.account_id,
                    acked.amount,
                    acked.debit,
                    acked.credit
                ),
            }
        }
    })
    .await;
    for result in fetched {
        check.checked += 1;
        if let Err(error) = result {
            check.fail(format!("{error:#}"));
        }
    }
    let count = check.checked;
    (check, count)
}
