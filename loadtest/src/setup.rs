//! The setup phase: a settlement account of the run's own and N customer accounts, opened and
//! funded through the API as a real client would, every write carrying an Idempotency-Key so
//! an unknown answer can be resolved by sending it again.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use anyhow::{Context, bail};
use rust_decimal::Decimal;

use crate::api::{Answer, Api, OpenedOut, TxnOut};
use crate::book::{Acked, Book};
use crate::workload::mix64;

/// The run's accounts, as the node numbered them.
#[derive(Clone, Debug)]
pub struct Fleet {
    pub settlement: u64,
    /// Customer accounts; the workload's account index `i` is `accounts[i]`.
    pub accounts: Vec<u64>,
    pub funding: Decimal,
}

impl Fleet {
    pub fn id(&self, index: u32) -> u64 {
        self.accounts[index as usize]
    }

    /// Every account of the run, the settlement account last.
    pub fn all(&self) -> impl Iterator<Item = u64> + '_ {
        self.accounts
            .iter()
            .copied()
            .chain(std::iter::once(self.settlement))
    }
}

pub struct SetupOptions {
    pub run_id: String,
    pub accounts: u32,
    pub funding: Decimal,
    pub tier: u8,
    pub workers: u32,
    pub progress: bool,
}

/// Runs `f(0..count)` on at most `workers` tasks at once; results in index order.
pub async fn for_each_bounded<T, F, Fut>(count: u64, workers: u32, f: F) -> Vec<anyhow::Result<T>>
where
    T: Send + 'static,
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let workers = u64::from(workers.max(1)).min(count.max(1));
    let f = Arc::new(f);
    let mut tasks = Vec::with_capacity(workers as usize);
    for worker in 0..workers {
        let f = Arc::clone(&f);
        tasks.push(tokio::spawn(async move {
            let mut results = Vec::new();
            let mut index = worker;
            while index < count {
                results.push((index, f(index).await));
                index += workers;
            }
            results
        }));
    }
    let mut slots: Vec<Option<anyhow::Result<T>>> = (0..count).map(|_| None).collect();
    for task in tasks {
        match task.await {
            Ok(results) => {
                for (index, result) in results {
                    slots[index as usize] = Some(result);
                }
            }
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }
    slots
        .into_iter()
        .map(|slot| slot.unwrap_or_else(|| Err(anyhow::anyhow!("a worker skipped an item"))))
        .collect()
}

/// An owner id (UUID text) unique to this run and index.
fn owner_id(run_id: &str, index: u32) -> String {
    let run = run_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let high = mix64(run ^ u64::from(index));
    let low = mix64(high ^ 0x6a09_e667_f3bc_c908);
    let hex = format!("{high:016x}{low:016x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Creates the settlement account and the customers, funds each customer, and books every
/// deposit. Fails if any account cannot be opened or funded.
pub async fn create_fleet(
    api: &Api,
    options: SetupOptions,
    book: Arc<Mutex<Book>>,
) -> anyhow::Result<Fleet> {
    let started = Instant::now();
    let settlement = open_account(
        api,
        &format!("{}-settlement", options.run_id),
        "{\"kind\":\"settlement\"}".into(),
    )
    .await
    .context("opening the run's settlement account")?;
    let shared = Arc::new((
        api.clone(),
        options.run_id.clone(),
        options.tier,
        options.funding,
        settlement,
        book,
    ));
    let results = for_each_bounded(u64::from(options.accounts), options.workers, move |index| {
        let shared = Arc::clone(&shared);
        async move {
            let (api, run_id, tier, funding, settlement, book) = &*shared;
            let index = index as u32;
            let body = format!("{{\"kind\":\"customer\",\"owner_id\":\"{}\",\"tier\":{tier}}}", owner_id(run_id, index));
            let id = open_account(api, &format!("{run_id}-open{index}"), body).await?;
            let deposit = format!(
                "{{\"settlement_account_id\":{settlement},\"account_id\":{id},\"amount\":{{\"value\":\"{funding}\",\"currency\":\"IDR\"}}}}"
            );
            let key = format!("{run_id}-fund{index}");
            let txn: TxnOut = written(api.post_until_known("/v1/deposits", &key, &deposit).await, &key)?;
            if txn.debit.account_id != *settlement || txn.credit.account_id != id || txn.amount.decimal()? != *funding {
                bail!("deposit {key} answered txn {} that is not the deposit asked for", txn.id);
            }
            book.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .ack(Acked { txn: Some(txn.id), debit: *settlement, credit: id, amount: *funding });
            Ok(id)
        }
    })
    .await;
    let accounts = results.into_iter().collect::<anyhow::Result<Vec<u64>>>()?;
    if options.progress {
        eprintln!(
            "payu-loadtest: setup: settlement account {settlement} and {} funded accounts in {:.1}s",
            accounts.len(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(Fleet {
        settlement,
        accounts,
        funding: options.funding,
    })
}

async fn open_account(api: &Api, key: &str, body: String) -> anyhow::Result<u64> {
    let opened: OpenedOut = written(api.post_until_known("/v1/accounts", key, &body).await, key)?;
    Ok(opened.id)
}

/// The parsed 2xx answer of a setup write, or an error naming the key.
fn written<T: serde::de::DeserializeOwned>(answer: Answer, key: &str) -> anyhow::Result<T> {
    match answer {
        Answer::Done { body, .. } => {
            serde_json::from_slice(&body).with_context(|| format!("{key}: unexpected answer"))
        }
        other => bail!("{key}: the node answered {}", other.label()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_ids_are_uuids_unique_per_run_and_index() {
        let a = owner_id("lt-1", 0);
        assert_eq!(a.len(), 36);
        assert_eq!(a.matches('-').count(), 4);
        assert_ne!(a, owner_id("lt-1", 1));
        assert_ne!(a, owner_id("lt-2", 0));
        assert_eq!(a, owner_id("lt-1", 0));
    }
}
