//! Performing operations against the node and booking what it answered. Each operation is
//! regenerated from its index (workload.rs), so an operation whose outcome is unknown is
//! remembered by index alone and resent later with the same key and the same body.
//!
//! Idempotency keys are `<run id>-<tag><index>`: unique per run and per request, stable across
//! resends. Tags: `t` transfer, `b` batch, `h` hold reservation, `hc` / `hr` its commit or
//! release.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rust_decimal::Decimal;

use crate::api::{Answer, Api, BatchRef, HoldCommitRef, HoldOut, PostedRef};
use crate::book::{Acked, Book, OpenHold, Pending};
use crate::measure::{Class, Outcome};
use crate::setup::Fleet;
use crate::workload::{Movement, Op, OpKind, Workload};

/// Holds expire this long after they are reserved: far beyond any run's commit, so expiry
/// never races the load (the audit expects every committed or released hold to be closed).
pub const HOLD_EXPIRES_IN_SECONDS: u64 = 6 * 3600;
/// Bytes of one transfer's JSON, about (a capacity hint).
const TRANSFER_JSON_BYTES: usize = 112;
/// Item rejection codes kept per batch answer, at most (the rest are counted, not named).
const ITEM_CODES_MAX: usize = 32;

/// Whether a request is the load's single attempt or part of resolving an unknown outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Live,
    Resolving,
}

/// Performs operations for one run and books their answers.
pub struct Executor {
    pub api: Api,
    pub workload: Workload,
    pub fleet: Arc<Fleet>,
    pub run_id: String,
    pub book: Arc<Mutex<Book>>,
}

/// How the node's answer to a write settled, for the statistics.
struct Settled {
    class: Class,
    label: Cow<'static, str>,
    posted: u64,
    rejected: u64,
    item_codes: BTreeMap<String, u64>,
}

impl Settled {
    fn of(answer: &Answer) -> Settled {
        let class = match answer {
            Answer::Done { .. } => Class::Ok,
            Answer::Refused { status, .. } if is_ledger_rejection(*status) => Class::Rejected,
            _ => Class::Failed,
        };
        let rejected = u64::from(class == Class::Rejected);
        Settled {
            class,
            label: answer.label(),
            posted: 0,
            rejected,
            item_codes: BTreeMap::new(),
        }
    }

    fn into_outcome(self, kind: OpKind) -> Outcome {
        Outcome {
            kind,
            class: self.class,
            label: self.label,
            transfers_posted: self.posted,
            transfers_rejected: self.rejected,
            item_rejections: self.item_codes,
        }
    }
}

/// 404, 409 and 422 are the ledger's business answers (unknown account, insufficient funds,
/// hold no longer active, ...). Other 4xx (400, 401, 403, 413, 429) mean the request never
/// reached the ledger: definitive, but a failure of the run.
fn is_ledger_rejection(status: u16) -> bool {
    matches!(status, 404 | 409 | 422)
}

fn money(amount: &Decimal) -> String {
    format!("{{\"value\":\"{amount}\",\"currency\":\"IDR\"}}")
}

/// Appends one transfer's JSON to `body` (no intermediate strings: a batch holds 8190).
fn push_transfer(body: &mut String, from: u64, to: u64, amount: &Decimal) {
    // Writing into a String cannot fail.
    let _ = write!(
        body,
        "{{\"from_account_id\":{from},\"to_account_id\":{to},\"amount\":{{\"value\":\"{amount}\",\"currency\":\"IDR\"}}}}"
    );
}

pub fn transfer_body(from: u64, to: u64, amount: &Decimal) -> String {
    let mut body = String::with_capacity(TRANSFER_JSON_BYTES);
    push_transfer(&mut body, from, to, amount);
    body
}

fn hold_body(account: u64, destination: u64, amount: &Decimal) -> String {
    format!(
        "{{\"account_id\":{account},\"destination_account_id\":{destination},\"amount\":{},\"expires_in_seconds\":{HOLD_EXPIRES_IN_SECONDS}}}",
        money(amount)
    )
}

fn lock(book: &Mutex<Book>) -> MutexGuard<'_, Book> {
    book.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Checks that a posted movement is the one asked for.
fn posted_matches(
    txn: &PostedRef,
    debit: u64,
    credit: u64,
    amount: &Decimal,
) -> Result<(), String> {
    let answered = txn
        .amount
        .decimal()
        .map_err(|error| format!("txn {}: {error}", txn.id))?;
    if txn.debit.account_id != debit || txn.credit.account_id != credit || answered != *amount {
        return Err(format!(
            "txn {} moved {answered} from {} to {}; asked: {amount} from {debit} to {credit}",
            txn.id, txn.debit.account_id, txn.credit.account_id
        ));
    }
    Ok(())
}

impl Executor {
    fn key(&self, tag: &str, index: u64) -> String {
        format!("{}-{tag}{index}", self.run_id)
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        lock(&self.book)
    }

    async fn send(&self, mode: Mode, path: &str, key: &str, body: String) -> Answer {
        let answer = match mode {
            Mode::Live => self.api.post(path, Some(key), body).await,
            Mode::Resolving => self.api.post_until_known(path, key, &body).await,
        };
        if let Answer::Done { replayed: true, .. } = answer {
            self.book().replayed += 1;
        }
        answer
    }

    /// Performs global operation `index` once, as part of the load.
    pub async fn execute(&self, index: u64) -> Outcome {
        let op = self.workload.op(index);
        let kind = op.kind();
        let settled = match op {
            Op::Transfer(movement) => self.transfer(Mode::Live, index, &movement).await,
            Op::Hold { movement, commit } => self.hold(Mode::Live, index, &movement, commit).await,
            Op::Batch(items) => self.batch(Mode::Live, index, &items).await,
        };
        settled.into_outcome(kind)
    }

    async fn transfer(&self, mode: Mode, index: u64, movement: &Movement) -> Settled {
        let (from, to) = (self.fleet.id(movement.from), self.fleet.id(movement.to));
        let key = self.key("t", index);
        let answer = self
            .send(
                mode,
                "/v1/transfers",
                &key,
                transfer_body(from, to, &movement.amount),
            )
            .await;
        let mut settled = Settled::of(&answer);
        match answer {
            Answer::Done { body, .. } => match serde_json::from_slice::<PostedRef>(&body) {
                Ok(txn) => match posted_matches(&txn, from, to, &movement.amount) {
                    Ok(()) => {
                        self.book().ack(Acked {
                            txn: Some(txn.id),
                            debit: from,
                            credit: to,
                            amount: movement.amount,
                        });
                        settled.posted = 1;
                    }
                    Err(why) => self.book().mismatch(format!("transfer {key}: {why}")),
                },
                Err(error) => self
                    .book()
                    .mismatch(format!("transfer {key}: 2xx body does not parse: {error}")),
            },
            Answer::Refused { .. } => {}
            Answer::Unknown { label } => {
                self.in_doubt(mode, Pending::Transfer { index }, &[from, to], &key, &label)
            }
        }
        settled
    }

    /// Books an unknown outcome: to resolve later (live), or as unresolved (resolving).
    fn in_doubt(&self, mode: Mode, pending: Pending, accounts: &[u64], key: &str, label: &str) {
        let mut book = self.book();
        match mode {
            Mode::Live => book.pending.push(pending),
            Mode::Resolving => {
                book.unresolved
                    .push(format!("{key}: still {label} after resolution"));
                book.balance_unknown.extend(accounts.iter().copied());
            }
        }
    }

    async fn hold(&self, mode: Mode, index: u64, movement: &Movement, commit: bool) -> Settled {
        let (account, destination) = (self.fleet.id(movement.from), self.fleet.id(movement.to));
        let key = self.key("h", index);
        let answer = self
            .send(
                mode,
                "/v1/holds",
                &key,
                hold_body(account, destination, &movement.amount),
            )
            .await;
        let mut settled = Settled::of(&answer);
        settled.label = format!("hold reserve {}", settled.label).into();
        let hold = match answer {
            Answer::Done { body, .. } => match serde_json::from_slice::<HoldOut>(&body) {
                Ok(hold)
                    if hold.account_id == account
                        && hold.amount.decimal().ok() == Some(movement.amount) =>
                {
                    hold.id
                }
                Ok(hold) => {
                    self.book().mismatch(format!(
                        "hold {key}: answered hold {} on account {}",
                        hold.id, hold.account_id
                    ));
                    return settled;
                }
                Err(error) => {
                    self.book()
                        .mismatch(format!("hold {key}: 2xx body does not parse: {error}"));
                    return settled;
                }
            },
            Answer::Refused { status: 409, code }
                if mode == Mode::Resolving && code == "IDEMPOTENCY_CONFLICT" =>
            {
                // The same key and the same body answered IDEMPOTENCY_CONFLICT (nodes before
                // HoldExpiry::After fingerprinted their own clock's deadline): the first attempt
                // was taken but what it decided is not said. `held` is unknowable; no money
                // moved (a reservation moves none, and this tool never commits it).
                let mut book = self.book();
                book.held_unknown.insert(account);
                book.unresolved_holds += 1;
                return settled;
            }
            Answer::Refused { .. } => return settled,
            Answer::Unknown { label } => {
                match mode {
                    Mode::Live => self.book().pending.push(Pending::HoldReserve { index }),
                    Mode::Resolving => {
                        // As with a conflict: `held` is unknowable, balances are not affected.
                        let mut book = self.book();
                        book.held_unknown.insert(account);
                        book.unresolved_holds += 1;
                        note_unresolved_hold(&key, &label);
                    }
                }
                return settled;
            }
        };
        self.finish_hold(mode, index, hold, movement, commit).await
    }

    async fn finish_hold(
        &self,
        mode: Mode,
        index: u64,
        hold: u64,
        movement: &Movement,
        commit: bool,
    ) -> Settled {
        let (account, destination) = (self.fleet.id(movement.from), self.fleet.id(movement.to));
        let (path, key, body) = match commit {
            true => (
                format!("/v1/holds/{hold}/commit"),
                self.key("hc", index),
                format!("{{\"amount\":{}}}", money(&movement.amount)),
            ),
            false => (
                format!("/v1/holds/{hold}/release"),
                self.key("hr", index),
                String::new(),
            ),
        };
        let answer = self.send(mode, &path, &key, body).await;
        let mut settled = Settled::of(&answer);
        let stage = if commit {
            "hold commit"
        } else {
            "hold release"
        };
        settled.label = format!("{stage} {}", settled.label).into();
        match answer {
            Answer::Done { body, replayed, .. } if commit => {
                // A fresh commit answers the posted transaction; a replay answers the hold's view.
                let txn = match replayed {
                    false => serde_json::from_slice::<HoldCommitRef>(&body).map(|out| {
                        posted_matches(&out.transaction, account, destination, &movement.amount)
                            .map(|()| out.transaction.id)
                    }),
                    true => serde_json::from_slice::<HoldOut>(&body).map(|view| {
                        match (view.state.as_deref(), view.transaction_id) {
                            (Some("committed"), Some(txn)) => Ok(txn),
                            (state, _) => Err(format!(
                                "replayed commit of hold {hold} shows state {state:?}"
                            )),
                        }
                    }),
                };
                match txn {
                    Ok(Ok(txn)) => {
                        self.book().ack(Acked {
                            txn: Some(txn),
                            debit: account,
                            credit: destination,
                            amount: movement.amount,
                        });
                        settled.posted = 1;
                    }
                    Ok(Err(why)) => self.book().mismatch(format!("{key}: {why}")),
                    Err(error) => self
                        .book()
                        .mismatch(format!("{key}: 2xx body does not parse: {error}")),
                }
            }
            Answer::Done { .. } => {}
            Answer::Refused { .. } => {
                // The hold stays reserved until it expires.
                self.book().open_holds.push(OpenHold {
                    hold,
                    account,
                    amount: movement.amount,
                });
            }
            Answer::Unknown { label } => match mode {
                Mode::Live => self
                    .book()
                    .pending
                    .push(Pending::HoldFinish { index, hold }),
                Mode::Resolving => {
                    let mut book = self.book();
                    book.unresolved
                        .push(format!("{key}: still {label} after resolution"));
                    book.balance_unknown.extend([account, destination]);
                    book.held_unknown.insert(account);
                }
            },
        }
        settled
    }

    async fn batch(&self, mode: Mode, index: u64, items: &[Movement]) -> Settled {
        let ids: Vec<(u64, u64)> = items
            .iter()
            .map(|m| (self.fleet.id(m.from), self.fleet.id(m.to)))
            .collect();
        let mut body = String::with_capacity(32 + items.len() * TRANSFER_JSON_BYTES);
        body.push_str("{\"transfers\":[");
        for (position, (movement, (from, to))) in items.iter().zip(&ids).enumerate() {
            if position > 0 {
                body.push(',');
            }
            push_transfer(&mut body, *from, *to, &movement.amount);
        }
        body.push_str("]}");
        let key = self.key("b", index);
        let answer = self.send(mode, "/v1/transfers/batch", &key, body).await;
        let mut settled = Settled::of(&answer);
        settled.rejected *= items.len() as u64;
        match answer {
            Answer::Done { body, .. } => match serde_json::from_slice::<BatchRef>(&body) {
                Ok(out) => self.settle_batch(&key, items, &ids, out, &mut settled),
                Err(error) => self
                    .book()
                    .mismatch(format!("batch {key}: 2xx body does not parse: {error}")),
            },
            Answer::Refused { .. } => {}
            Answer::Unknown { label } => {
                let accounts: Vec<u64> = ids.iter().flat_map(|(a, b)| [*a, *b]).collect();
                self.in_doubt(mode, Pending::Batch { index }, &accounts, &key, &label);
            }
        }
        settled
    }

    fn settle_batch(
        &self,
        key: &str,
        items: &[Movement],
        ids: &[(u64, u64)],
        out: BatchRef,
        settled: &mut Settled,
    ) {
        let mut book = self.book();
        let Some(results) = out.results else {
            // A replay answers counts only. All posted: the movements are known without ids.
            // Otherwise which ones were rejected is unknowable from here.
            if out.rejected == 0 && out.posted == items.len() as u64 {
                for (movement, (from, to)) in items.iter().zip(ids) {
                    book.ack(Acked {
                        txn: None,
                        debit: *from,
                        credit: *to,
                        amount: movement.amount,
                    });
                }
                settled.posted = out.posted;
            } else {
                book.unresolved.push(format!(
                    "{key}: a replay answered {} posted, {} rejected, without saying which",
                    out.posted, out.rejected
                ));
                book.balance_unknown
                    .extend(ids.iter().flat_map(|(a, b)| [*a, *b]));
            }
            return;
        };
        if results.len() != items.len() {
            book.mismatch(format!(
                "batch {key}: {} results for {} transfers",
                results.len(),
                items.len()
            ));
            return;
        }
        for (position, result) in results.iter().enumerate() {
            let (movement, (from, to)) = (&items[position], ids[position]);
            match (result.status.as_ref(), &result.transaction) {
                _ if result.index != position => {
                    book.mismatch(format!(
                        "batch {key}: result {position} names index {}",
                        result.index
                    ));
                }
                ("posted", Some(txn)) => match posted_matches(txn, from, to, &movement.amount) {
                    Ok(()) => {
                        book.ack(Acked {
                            txn: Some(txn.id),
                            debit: from,
                            credit: to,
                            amount: movement.amount,
                        });
                        settled.posted += 1;
                    }
                    Err(why) => book.mismatch(format!("batch {key} item {position}: {why}")),
                },
                ("rejected", _) => {
                    settled.rejected += 1;
                    let code = result.code.as_deref().unwrap_or("-").to_owned();
                    if settled.item_codes.len() < ITEM_CODES_MAX
                        || settled.item_codes.contains_key(&code)
                    {
                        *settled.item_codes.entry(code).or_insert(0) += 1;
                    }
                }
                (status, _) => {
                    book.mismatch(format!("batch {key} item {position}: status {status:?}"))
                }
            }
        }
    }

    /// Resends every operation whose outcome was unknown, with the same key and body, until
    /// the node answers (bounded per request). Returns how many were pending.
    pub async fn resolve(self: &Arc<Self>, workers: u32) -> u64 {
        let pending = std::mem::take(&mut self.book().pending);
        let count = pending.len() as u64;
        self.book().resent += count;
        let pending = Arc::new(pending);
        let executor = Arc::clone(self);
        crate::setup::for_each_bounded(count, workers, move |position| {
            let executor = Arc::clone(&executor);
            let pending = Arc::clone(&pending);
            async move {
                executor.resolve_one(&pending[position as usize]).await;
                Ok(())
            }
        })
        .await
        .into_iter()
        .for_each(drop);
        count
    }

    async fn resolve_one(&self, pending: &Pending) {
        let mode = Mode::Resolving;
        match (pending, self.workload.op(pending_index(pending))) {
            (Pending::Transfer { index }, Op::Transfer(movement)) => {
                self.transfer(mode, *index, &movement).await;
            }
            (Pending::Batch { index }, Op::Batch(items)) => {
                self.batch(mode, *index, &items).await;
            }
            (Pending::HoldReserve { index }, Op::Hold { movement, commit }) => {
                self.hold(mode, *index, &movement, commit).await;
            }
            (Pending::HoldFinish { index, hold }, Op::Hold { movement, commit }) => {
                self.finish_hold(mode, *index, *hold, &movement, commit)
                    .await;
            }
            (pending, op) => {
                // Operations regenerate from their index; a different kind is a bug here.
                panic!("pending {pending:?} regenerated as {op:?}");
            }
        }
    }
}

fn note_unresolved_hold(key: &str, label: &str) {
    eprintln!(
        "payu-loadtest: hold reservation {key} still {label} after resolution; its account's held is not audited"
    );
}

fn pending_index(pending: &Pending) -> u64 {
    match pending {
        Pending::Transfer { index }
        | Pending::Batch { index }
        | Pending::HoldReserve { index }
        | Pending::HoldFinish { index, .. } => *index,
    }
}
