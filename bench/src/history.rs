//! A real, deterministic engine history, encoded as journal entries, for the journal benchmark.
//!
//! A small ledger is opened and funded through real commands, then Zipf-skewed transfers (each
//! under its own idempotency key) are applied to it. Every command is encoded with its outcome
//! by `payu_journal::encode_entry`, exactly as the pipeline journals it, and kept in one flat
//! buffer before any timing starts. Entry `i` belongs at seq `i + 1` with the timestamp
//! [`timestamp_ns`] gives, so a journal holding any prefix of the history replays to the same
//! ledger and `payu_journal::replay` can check every outcome.
//!
//! The entries are all distinct: cycling a smaller pool would repeat idempotency keys, and
//! replay would rightly answer those with `Replayed` instead of the journaled `Posted`.

use anyhow::ensure;
use payu_engine::{
    Amount, Command, CommandBody, CommandResult, Engine, EngineConfig, TierLimits, Timestamp,
};
use payu_journal::{Entry, encode_entry};

use crate::ledger_setup::{self, Submit, transfer};
use crate::workload::{self, WorkloadOptions};

/// 2025-01-01T00:00:00Z (07:00 in Jakarta): the simulated clock starts here.
const START_TIMESTAMP_NS: u64 = 1_735_689_600_000_000_000;
/// The simulated clock advances 1 µs per command, so no idempotency key expires within a run.
const TICK_NS: u64 = 1_000;
/// Idempotency entries beyond the ones the history needs, so no key is ever evicted early.
const IDEMPOTENCY_SLACK: u64 = 1024;

#[derive(Clone, Copy, Debug)]
pub struct HistoryOptions {
    /// Customer accounts (a settlement account is added).
    pub accounts: u32,
    /// Transfers after the setup.
    pub transfers: u64,
    pub seed: u64,
}

/// Every entry of the history, encoded, back to back.
pub struct History {
    bytes: Vec<u8>,
    /// Entry `i` is `bytes[ends[i - 1]..ends[i]]` (from 0 for the first).
    ends: Vec<usize>,
    setup_records: u64,
    transfer_payload_bytes: usize,
}

impl History {
    /// Applies the setup and the transfers to a fresh engine and encodes each (command,
    /// outcome). Fails if any transfer is not posted: the benchmark journals posted transfers.
    pub fn build(options: HistoryOptions) -> anyhow::Result<History> {
        let config = engine_config(options);
        config
            .validate()
            .map_err(|reason| anyhow::anyhow!("engine configuration: {reason}"))?;
        let mut builder = Builder {
            engine: Engine::new(config),
            history: History {
                bytes: Vec::new(),
                ends: Vec::with_capacity(setup_records(options.accounts) as usize),
                setup_records: 0,
                transfer_payload_bytes: 0,
            },
        };
        builder.setup(options.accounts)?;
        builder.history.setup_records = builder.history.len();
        builder.transfers(options)?;
        builder
            .engine
            .verify()
            .map_err(|reason| anyhow::anyhow!("history ledger invariant broken: {reason}"))?;
        Ok(builder.history)
    }

    /// Entries in the history (setup and transfers).
    pub fn len(&self) -> u64 {
        self.ends.len() as u64
    }

    /// Entries that open and fund the ledger, before the first transfer.
    pub fn setup_records(&self) -> u64 {
        self.setup_records
    }

    /// The encoded entry that belongs at `seq` (1-based).
    pub fn payload(&self, seq: u64) -> &[u8] {
        assert!(
            (1..=self.len()).contains(&seq),
            "seq {seq} outside the history"
        );
        let index = (seq - 1) as usize;
        let start = index
            .checked_sub(1)
            .map_or(0, |previous| self.ends[previous]);
        &self.bytes[start..self.ends[index]]
    }

    /// The size of every transfer entry: rkyv lays out a Transfer command with its Posted
    /// outcome (and no expired holds) in the same number of bytes every time.
    pub fn transfer_payload_bytes(&self) -> usize {
        self.transfer_payload_bytes
    }

    fn push(&mut self, entry: &Entry) -> usize {
        let encoded = encode_entry(entry);
        self.bytes.extend_from_slice(&encoded);
        self.ends.push(self.bytes.len());
        encoded.len()
    }
}

/// The configuration of the ledger the history was built on; replay needs the same one.
pub fn engine_config(options: HistoryOptions) -> EngineConfig {
    let unlimited = TierLimits {
        daily_outgoing: Amount::MAX,
        monthly_outgoing: Amount::MAX,
    };
    EngineConfig {
        tiers: vec![unlimited],
        accounts_max: u64::from(options.accounts) + 1,
        idempotency_entries_max: setup_records(options.accounts)
            + options.transfers
            + IDEMPOTENCY_SLACK,
        ..EngineConfig::default()
    }
}

/// The timestamp of the command at `seq`: one tick after the one before.
pub fn timestamp_ns(seq: u64) -> u64 {
    START_TIMESTAMP_NS + seq * TICK_NS
}

/// Open the settlement account, open each customer, fund each customer.
pub fn setup_records(accounts: u32) -> u64 {
    1 + 2 * u64::from(accounts)
}

struct Builder {
    engine: Engine,
    history: History,
}

impl Builder {
    /// Applies one command at the next seq and records it with its outcome.
    fn apply(&mut self, body: CommandBody) -> (CommandResult, usize) {
        let seq = self.engine.last_seq() + 1;
        // Unique keys that look like the gateway's 128-bit hashes (spread-out high bits).
        let command = Command {
            key: ledger_setup::idempotency_key(seq),
            body,
        };
        let outcome = self
            .engine
            .apply(seq, Timestamp(timestamp_ns(seq)), &command);
        let result = outcome.result.clone();
        let entry = Entry { command, outcome };
        let len = self.history.push(&entry);
        (result, len)
    }

    fn setup(&mut self, accounts: u32) -> anyhow::Result<()> {
        ledger_setup::open_and_fund(self, accounts)
    }

    fn transfers(&mut self, options: HistoryOptions) -> anyhow::Result<()> {
        let picks = workload::generate_picks(WorkloadOptions {
            accounts: options.accounts,
            transfers: options.transfers,
            zipf_exponent: 1.0,
            seed: options.seed,
        });
        self.history.ends.reserve_exact(picks.len());
        for pick in &picks {
            let (result, len) = self.apply(CommandBody::Transfer(transfer(pick)));
            ensure!(
                matches!(result, CommandResult::Posted(_)),
                "transfer {pick:?} was not posted: {result:?}"
            );
            let expected = self.history.transfer_payload_bytes;
            ensure!(
                expected == 0 || expected == len,
                "transfer entries differ in size: {expected} and {len} bytes"
            );
            self.history.transfer_payload_bytes = len;
            if self.history.len() == self.history.setup_records + 1 {
                // Now that one entry's size is known, reserve the whole buffer at once.
                self.history.bytes.reserve_exact(len * picks.len());
            }
        }
        Ok(())
    }
}

impl Submit for Builder {
    fn submit(&mut self, body: CommandBody) -> CommandResult {
        self.apply(body).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use payu_journal::decode_entry;

    #[test]
    fn history_is_a_valid_posted_sequence_with_fixed_size_transfers() {
        // Every entry decodes; transfers are posted, distinct, and replay to the same outcomes.
        let options = HistoryOptions {
            accounts: 50,
            transfers: 500,
            seed: 3,
        };
        let history = History::build(options).expect("history builds");
        assert_eq!(history.setup_records(), 101);
        assert_eq!(history.len(), 601);
        let mut engine = Engine::new(engine_config(options));
        let mut keys = std::collections::BTreeSet::new();
        for seq in 1..=history.len() {
            let entry = decode_entry(history.payload(seq)).expect("decodes");
            assert!(keys.insert(entry.command.key), "key repeated at {seq}");
            let outcome = engine.apply(seq, Timestamp(timestamp_ns(seq)), &entry.command);
            assert_eq!(outcome, entry.outcome, "seq {seq}");
            if seq > history.setup_records() {
                assert!(matches!(entry.outcome.result, CommandResult::Posted(_)));
                assert_eq!(history.payload(seq).len(), history.transfer_payload_bytes());
            }
        }
    }
}
