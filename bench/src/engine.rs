//! `payu-bench engine`: the balance engine alone, in memory, on skewed (Zipf) transfers.
//!
//! Setup (untimed) opens a settlement account and N customers and funds each through real
//! commands, exactly as the pipeline would. The picks are generated before any timing, so the
//! measured loops do nothing but build commands from a flat array and call `Engine::apply`.
//! Scenarios:
//! - `single`: one `Transfer` command per transfer, the path of single HTTP transfers;
//! - `batch`: `TransferBatch` commands of `--batch-size` transfers under one key each;
//! - `bare`: the same batches applied to a plain array of balances, a floor that shows how much
//!   of the engine's time is bookkeeping rather than memory traffic (STYLE.md §16 baseline).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Instant;

use anyhow::ensure;
use payu_engine::{
    Account, Amount, BATCH_TRANSFERS_MAX, BatchItem, Command, CommandBody, CommandResult, Engine,
    EngineConfig, IdempotencyKey, Outcome, RejectCode, TierLimits, Timestamp,
};
use serde_json::{Value, json};

use crate::ledger_setup::{self, Submit, UNITS_PER_IDR, opening_balance, transfer};
use crate::report::{self, Latency};
use crate::workload::{self, Pick, WorkloadOptions};

/// The largest ledger the benchmark builds (the engine's default `accounts_max`); also keeps
/// customer indexes within `u32`.
pub const ACCOUNTS_MAX: u32 = 10_000_000;
/// The most transfers one run generates: picks take 12 bytes each and the single scenario keeps
/// one idempotency entry (about 100 bytes) per transfer, so this bounds memory near 6 GB.
pub const TRANSFERS_MAX: u64 = 50_000_000;
/// One in this many single applies is timed individually: often enough for a p999 over
/// millions of commands, rare enough that two clock reads do not distort throughput.
const LATENCY_SAMPLE_EVERY: usize = 64;
/// Idempotency entries beyond the ones the run needs, so no key is ever evicted early.
const IDEMPOTENCY_SLACK: u64 = 1024;
/// 2025-01-01T00:00:00Z (07:00 in Jakarta): the simulated clock starts here.
const START_TIMESTAMP_NS: u64 = 1_735_689_600_000_000_000;
/// The simulated clock advances 1 µs per command; a 24 h idempotency window never expires a
/// key within a run, so every command pays for a growing window, as under sustained load.
const TICK_NS: u64 = 1_000;

#[derive(clap::Args, Clone, Debug)]
pub struct EngineArgs {
    /// Customer accounts in the ledger (a settlement account is added).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(2..=i64::from(ACCOUNTS_MAX)))]
    pub accounts: u32,
    /// Transfers per scenario.
    #[arg(long, default_value_t = 10_000_000, value_parser = clap::value_parser!(u64).range(1..=TRANSFERS_MAX))]
    pub transfers: u64,
    /// Transfers per `TransferBatch` command in the batch scenarios.
    #[arg(long, default_value_t = 8190, value_parser = clap::value_parser!(u32).range(1..=BATCH_TRANSFERS_MAX as i64))]
    pub batch_size: u32,
    /// Skew of account picks: rank r is chosen with probability proportional to 1/r^s.
    #[arg(long, default_value_t = 1.0, value_parser = parse_zipf_exponent)]
    pub zipf_exponent: f64,
    /// Seed of the workload generator; the same seed gives the same picks.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Scenarios to run, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "single,batch"
    )]
    pub scenarios: Vec<Scenario>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// One Transfer command per transfer.
    Single,
    /// TransferBatch commands of --batch-size transfers.
    Batch,
    /// The same batches on a plain array of balances: a floor to compare against.
    Bare,
}

fn parse_zipf_exponent(text: &str) -> Result<f64, String> {
    let exponent: f64 = text.parse().map_err(|e| format!("not a number: {e}"))?;
    match exponent.is_finite() && (0.0..=16.0).contains(&exponent) {
        true => Ok(exponent),
        false => Err("the Zipf exponent must be between 0 (uniform) and 16".into()),
    }
}

/// Runs the requested scenarios and writes one JSON line per scenario to `out`, plus one
/// `engine_memory` line after the first ledger is built.
pub fn run(args: &EngineArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let picks = generate(args);
    let context = context_fields(args, workload::distinct_accounts(&picks, args.accounts));
    let mut memory_reported = false;
    for &scenario in &args.scenarios {
        if scenario == Scenario::Bare {
            let measured = run_bare(&picks, args)?;
            report::emit(out, &report::merge(context.clone(), measured))?;
            continue;
        }
        // A fresh ledger per scenario, so each starts from the same state.
        let (mut ledger, memory) = open_ledger(args)?;
        if !memory_reported {
            report::emit(out, &report::merge(context.clone(), memory))?;
            memory_reported = true;
        }
        let measured = run_on_engine(scenario, &mut ledger, &picks, args)?;
        report::emit(out, &report::merge(context.clone(), measured))?;
    }
    Ok(())
}

fn generate(args: &EngineArgs) -> Vec<Pick> {
    eprintln!(
        "payu-bench engine: generating {} picks over {} accounts (zipf s={}, seed {})",
        args.transfers, args.accounts, args.zipf_exponent, args.seed
    );
    let started = Instant::now();
    let picks = workload::generate_picks(WorkloadOptions {
        accounts: args.accounts,
        transfers: args.transfers,
        zipf_exponent: args.zipf_exponent,
        seed: args.seed,
    });
    eprintln!(
        "payu-bench engine: picks ready in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    picks
}

/// Fields every line carries: the settings and the machine, so a line stands on its own.
fn context_fields(args: &EngineArgs, accounts_touched: u64) -> Value {
    json!({
        "accounts": args.accounts,
        "accounts_touched": accounts_touched,
        "zipf_exponent": args.zipf_exponent,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "machine": report::machine(),
        "build": report::build(),
    })
}

fn run_on_engine(
    scenario: Scenario,
    ledger: &mut Ledger,
    picks: &[Pick],
    args: &EngineArgs,
) -> anyhow::Result<Value> {
    eprintln!(
        "payu-bench engine: running {scenario:?} over {} transfers",
        picks.len()
    );
    let measured = match scenario {
        Scenario::Single => run_single(ledger, picks)?,
        _ => run_batch(ledger, picks, args.batch_size as usize)?,
    };
    let checks = check_ledger(ledger)?;
    Ok(report::merge(measured, checks))
}

// ---- the ledger under test ----

/// An engine plus the sequencer role of the pipeline: consecutive seqs, a clock that never goes
/// backwards, and a fresh idempotency key per command.
struct Ledger {
    engine: Engine,
    seq: u64,
    timestamp: Timestamp,
}

impl Ledger {
    fn new(config: EngineConfig) -> anyhow::Result<Ledger> {
        config
            .validate()
            .map_err(|reason| anyhow::anyhow!("engine configuration: {reason}"))?;
        let engine = Engine::new(config);
        Ok(Ledger {
            engine,
            seq: 0,
            timestamp: Timestamp(START_TIMESTAMP_NS),
        })
    }

    fn next_key(&self) -> IdempotencyKey {
        ledger_setup::idempotency_key(self.seq + 1)
    }

    fn apply(&mut self, command: &Command) -> Outcome {
        self.seq += 1;
        self.timestamp = self.timestamp.saturating_add_nanos(TICK_NS);
        self.engine.apply(self.seq, self.timestamp, command)
    }

    fn apply_body(&mut self, body: CommandBody) -> Outcome {
        let command = Command {
            key: self.next_key(),
            body,
        };
        self.apply(&command)
    }
}

impl Submit for Ledger {
    fn submit(&mut self, body: CommandBody) -> CommandResult {
        self.apply_body(body).result
    }
}

/// Limits that never bind, room for every account and every key the run creates.
fn engine_config(args: &EngineArgs) -> EngineConfig {
    let unlimited = TierLimits {
        daily_outgoing: Amount::MAX,
        monthly_outgoing: Amount::MAX,
    };
    let setup_commands = 1 + 2 * u64::from(args.accounts);
    EngineConfig {
        tiers: vec![unlimited],
        accounts_max: u64::from(args.accounts) + 1,
        idempotency_entries_max: setup_commands + args.transfers + IDEMPOTENCY_SLACK,
        ..EngineConfig::default()
    }
}

/// Opens and funds the ledger through `apply`, and reports the memory that took.
fn open_ledger(args: &EngineArgs) -> anyhow::Result<(Ledger, Value)> {
    eprintln!(
        "payu-bench engine: opening and funding {} accounts",
        args.accounts
    );
    let rss_before = report::rss_bytes();
    let started = Instant::now();
    let mut ledger = Ledger::new(engine_config(args))?;
    ledger_setup::open_and_fund(&mut ledger, args.accounts)?;
    let seconds = started.elapsed().as_secs_f64();
    let memory = memory_fields(&ledger, args.accounts, rss_before, seconds);
    Ok((ledger, memory))
}

fn memory_fields(
    ledger: &Ledger,
    accounts: u32,
    rss_before: Option<u64>,
    setup_seconds: f64,
) -> Value {
    let growth = rss_before
        .zip(report::rss_bytes())
        .map(|(before, after)| after.saturating_sub(before));
    let per_account = growth.map(|bytes| bytes as f64 / f64::from(accounts));
    json!({
        "scenario": "engine_memory",
        "account_struct_bytes": std::mem::size_of::<Account>(),
        "rss_bytes_per_account": per_account,
        "rss_growth_bytes": growth,
        "rss_includes": "VmRSS growth over opening and funding N accounts: the accounts vector \
            (grown by doubling, so up to 2x its length), one idempotency-window entry per setup \
            command (2N+1: open and deposit), and allocator overhead",
        "idempotency_entries": ledger.engine.stats().idempotency_entries,
        "setup_commands": ledger.seq,
        "setup_seconds": setup_seconds,
        "setup_commands_per_sec": ledger.seq as f64 / setup_seconds,
    })
}

/// Runs the full invariant scan after a scenario (untimed): the ledger still sums to zero and
/// no idempotency key was forgotten early.
fn check_ledger(ledger: &Ledger) -> anyhow::Result<Value> {
    let started = Instant::now();
    ledger
        .engine
        .verify()
        .map_err(|reason| anyhow::anyhow!("ledger invariant broken: {reason}"))?;
    let stats = ledger.engine.stats();
    eprintln!(
        "payu-bench engine: ledger verified in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(json!({
        "ledger_verified": true,
        "idempotency_entries": stats.idempotency_entries,
        "idempotency_evicted_early": stats.idempotency_evicted_early,
    }))
}

// ---- scenarios ----

fn run_single(ledger: &mut Ledger, picks: &[Pick]) -> anyhow::Result<Value> {
    let mut sampled = SampledLatency::new()?;
    let mut tally = Tally::default();
    let started = Instant::now();
    for (index, pick) in picks.iter().enumerate() {
        let command = Command {
            key: ledger.next_key(),
            body: CommandBody::Transfer(transfer(pick)),
        };
        let outcome = if index % LATENCY_SAMPLE_EVERY == 0 {
            sampled.time(|| ledger.apply(&command))
        } else {
            ledger.apply(&command)
        };
        tally.count(&outcome.result, 1);
    }
    let seconds = started.elapsed().as_secs_f64();
    let how = Method {
        latency_sampling: "every 64th Transfer apply timed alone with Instant (ns histogram); \
            block64_* is the wall time from one timed apply's start to the next (64 commands), \
            which catches rare long stalls that 1-in-64 sampling can miss",
        throughput_basis: "wall time of the whole loop: building each command from its pick, apply, \
            counting the result",
    };
    let report = tally.into_report("engine_single", picks.len(), seconds, &sampled.applies, how)?;
    Ok(report::merge(report, sampled.block_fields()))
}

/// One-in-64 apply timing, plus the time between consecutive timed applies: the second costs no
/// extra clock reads and bounds every stall, including ones in the 63 applies not timed alone.
struct SampledLatency {
    applies: Latency,
    blocks: Latency,
    block_started: Option<Instant>,
}

impl SampledLatency {
    fn new() -> anyhow::Result<SampledLatency> {
        Ok(SampledLatency {
            applies: Latency::new()?,
            blocks: Latency::new()?,
            block_started: None,
        })
    }

    fn time<T>(&mut self, apply: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        if let Some(previous) = self.block_started.replace(started) {
            self.blocks.record(started - previous);
        }
        let value = apply();
        self.applies.record(started.elapsed());
        value
    }

    fn block_fields(&self) -> Value {
        json!({
            "block64_p999_us": self.blocks.quantile_us(0.999),
            "block64_max_us": self.blocks.max_us(),
        })
    }
}

fn run_batch(ledger: &mut Ledger, picks: &[Pick], batch_size: usize) -> anyhow::Result<Value> {
    let mut latency = Latency::new()?;
    let mut tally = Tally::default();
    let mut items = Vec::with_capacity(batch_size);
    let started = Instant::now();
    for chunk in picks.chunks(batch_size) {
        items.clear();
        items.extend(chunk.iter().map(transfer));
        let command = Command {
            key: ledger.next_key(),
            body: CommandBody::TransferBatch(items),
        };
        let apply_started = Instant::now();
        let outcome = ledger.apply(&command);
        latency.record(apply_started.elapsed());
        tally.count(&outcome.result, chunk.len());
        // Reuse the batch buffer: the loop should measure the engine, not the allocator.
        let CommandBody::TransferBatch(buffer) = command.body else {
            unreachable!("built as a batch above")
        };
        items = buffer;
    }
    let seconds = started.elapsed().as_secs_f64();
    let how = Method {
        latency_sampling: "every TransferBatch apply timed with Instant (ns histogram): per-batch latency",
        throughput_basis: "wall time of the whole loop: filling each batch from the picks, apply, counting \
            the item results",
    };
    tally.into_report("engine_batch", picks.len(), seconds, &latency, how)
}

/// A stand-in for `payu_engine::Account` of the same size, so the baseline pays the same cache
/// and TLB misses as the engine does for each account it touches.
#[derive(Clone, Copy)]
struct BareAccount {
    balance: i128,
    _rest: [u8; size_of::<Account>() - size_of::<i128>()],
}

/// The same batches on an array of account-sized records holding only a balance, with only a
/// funds check: what moving the money costs in memory traffic alone, with none of the engine's
/// bookkeeping.
fn run_bare(picks: &[Pick], args: &EngineArgs) -> anyhow::Result<Value> {
    eprintln!(
        "payu-bench engine: running Bare over {} transfers",
        picks.len()
    );
    let opening = i128::from(opening_balance(args.accounts).0);
    let record = BareAccount {
        balance: opening,
        _rest: [0; size_of::<Account>() - size_of::<i128>()],
    };
    let mut accounts = vec![record; args.accounts as usize];
    let mut latency = Latency::new()?;
    let mut tally = Tally::default();
    let started = Instant::now();
    for chunk in picks.chunks(args.batch_size as usize) {
        let apply_started = Instant::now();
        let accepted = bare_batch(&mut accounts, chunk);
        latency.record(apply_started.elapsed());
        tally.accepted += accepted;
        tally.reject(RejectCode::InsufficientFunds, chunk.len() as u64 - accepted);
    }
    let seconds = started.elapsed().as_secs_f64();
    // The total is conserved; checking it also keeps the loop from being optimised away.
    let total: i128 = accounts.iter().map(|account| account.balance).sum();
    ensure!(
        total == opening * i128::from(args.accounts),
        "bare baseline lost money: {total}"
    );
    let how = Method {
        latency_sampling: "every batch of --batch-size array updates timed with Instant (ns histogram)",
        throughput_basis: "wall time of the whole loop over an array of account-sized records \
            (balance only) with a funds check",
    };
    let report = tally.into_report("bare_array_batch", picks.len(), seconds, &latency, how)?;
    Ok(report::merge(
        report,
        json!({ "record_bytes": size_of::<BareAccount>() }),
    ))
}

/// Applies one batch to the balances; returns how many moved money.
fn bare_batch(accounts: &mut [BareAccount], chunk: &[Pick]) -> u64 {
    let mut accepted = 0;
    for pick in chunk {
        let amount = i128::from(pick.amount_idr) * i128::from(UNITS_PER_IDR);
        if accounts[pick.from as usize].balance >= amount {
            accounts[pick.from as usize].balance -= amount;
            accounts[pick.to as usize].balance += amount;
            accepted += 1;
        }
    }
    accepted
}

/// How a scenario was measured, stated in its report line.
struct Method {
    latency_sampling: &'static str,
    throughput_basis: &'static str,
}

/// Accepted and rejected transfers, and rejections by code.
#[derive(Default)]
struct Tally {
    accepted: u64,
    rejected: u64,
    rejected_by_code: BTreeMap<&'static str, u64>,
    /// Results that are neither a posting nor a rejection (a replay would mean reused keys).
    unexpected: u64,
}

impl Tally {
    /// Counts one command's result, which covered `transfers` transfers.
    fn count(&mut self, result: &CommandResult, transfers: usize) {
        match result {
            CommandResult::Posted(_) => self.accepted += 1,
            CommandResult::Batch(items) => items.iter().for_each(|item| match item {
                BatchItem::Posted(_) => self.accepted += 1,
                BatchItem::Rejected(code) => self.reject(*code, 1),
            }),
            CommandResult::Rejected(code) => self.reject(*code, transfers as u64),
            _ => self.unexpected += transfers as u64,
        }
    }

    fn reject(&mut self, code: RejectCode, transfers: u64) {
        if transfers > 0 {
            self.rejected += transfers;
            *self.rejected_by_code.entry(code.code()).or_insert(0) += transfers;
        }
    }

    fn into_report(
        self,
        scenario: &str,
        transfers: usize,
        seconds: f64,
        latency: &Latency,
        how: Method,
    ) -> anyhow::Result<Value> {
        ensure!(
            self.unexpected == 0,
            "{scenario}: {} results were neither posted nor rejected",
            self.unexpected
        );
        let counted = self.accepted + self.rejected;
        ensure!(
            counted == transfers as u64,
            "{scenario}: counted {counted} results for {transfers} transfers"
        );
        let fields = json!({
            "scenario": scenario,
            "transfers": transfers,
            "seconds": seconds,
            "transfers_per_sec": transfers as f64 / seconds,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "rejected_by_code": self.rejected_by_code,
            "latency_sampling": how.latency_sampling,
            "throughput_basis": how.throughput_basis,
        });
        Ok(report::merge(fields, latency.summary()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_args(scenarios: Vec<Scenario>) -> EngineArgs {
        EngineArgs {
            accounts: 1000,
            transfers: 20_000,
            batch_size: 1000,
            zipf_exponent: 1.0,
            seed: 5,
            scenarios,
        }
    }

    fn run_to_lines(args: &EngineArgs) -> Vec<Value> {
        let mut out = Vec::new();
        run(args, &mut out).expect("the tiny run succeeds");
        let text = String::from_utf8(out).expect("the report is UTF-8");
        text.lines()
            .map(|line| serde_json::from_str(line).expect("each line is JSON"))
            .collect()
    }

    #[test]
    fn tiny_run_reports_every_scenario_with_the_contract_fields() {
        // DESIGN.md §7: one JSON object per scenario with the contract fields; counts add up.
        let lines = run_to_lines(&tiny_args(vec![
            Scenario::Single,
            Scenario::Batch,
            Scenario::Bare,
        ]));
        let names: Vec<&str> = lines
            .iter()
            .map(|l| l["scenario"].as_str().expect("scenario"))
            .collect();
        assert_eq!(
            names,
            [
                "engine_memory",
                "engine_single",
                "engine_batch",
                "bare_array_batch"
            ]
        );
        for line in &lines[1..] {
            for field in [
                "transfers",
                "seconds",
                "transfers_per_sec",
                "p50_us",
                "p99_us",
                "p999_us",
            ] {
                assert!(line[field].is_number(), "{field} missing in {line}");
            }
            for field in ["latency_sampling", "build"] {
                assert!(line[field].is_string(), "{field} missing in {line}");
            }
            assert!(line["machine"]["cpus"].is_number() && line["machine"]["os"].is_string());
            let accepted = line["accepted"].as_u64().expect("accepted");
            let rejected = line["rejected"].as_u64().expect("rejected");
            assert_eq!(accepted + rejected, 20_000, "{line}");
            // Opening balances dwarf the transfer amounts: everything is accepted.
            assert_eq!(rejected, 0, "{line}");
            assert_eq!(line["seed"], 5);
            assert!(
                line["accounts_touched"]
                    .as_u64()
                    .is_some_and(|n| n > 100 && n <= 1000)
            );
        }
        assert_eq!(lines[1]["latency_samples"], 20_000 / 64 + 1);
        let block_max = lines[1]["block64_max_us"].as_f64().expect("block64_max_us");
        let apply_p50 = lines[1]["p50_us"].as_f64().expect("p50_us");
        assert!(
            block_max >= apply_p50,
            "64 applies cannot take less than one"
        );
        assert_eq!(lines[2]["latency_samples"], 20);
        assert_eq!(
            lines[0]["account_struct_bytes"],
            std::mem::size_of::<Account>()
        );
    }

    #[test]
    fn single_and_batch_post_the_same_transfers() {
        // Same picks, same opening balances: both paths accept the same number of transfers and
        // leave the engine with one idempotency entry per command.
        let lines = run_to_lines(&tiny_args(vec![Scenario::Single, Scenario::Batch]));
        assert_eq!(lines[1]["accepted"], lines[2]["accepted"]);
        let setup = 1 + 2 * 1000;
        assert_eq!(lines[1]["idempotency_entries"], setup + 20_000);
        assert_eq!(lines[2]["idempotency_entries"], setup + 20);
        assert_eq!(lines[1]["idempotency_evicted_early"], 0);
    }
}
