//! Criterion micro-benchmarks of `Engine::apply`: one `Transfer` command, and one
//! `TransferBatch` of 1024 transfers, on a funded ledger of 10 000 customer accounts.
//!
//! Every iteration is a real new command: the next seq, a clock one microsecond later and a
//! fresh idempotency key, so the engine does its full work (no idempotent replays). The
//! idempotency window is capped and filled before measuring, so each apply pays the steady-state
//! cost of remembering one key and forgetting the oldest, instead of a window that only grows.
//! `payu-bench engine` measures the same paths at scale with percentiles; these runs are for
//! quick before/after comparisons of a change.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use payu_engine::{
    AMOUNT_UNITS_MAX, AccountId, AccountKind, Amount, Command, CommandBody, CommandResult,
    Currency, Deposit, Engine, EngineConfig, IdempotencyKey, OpenAccount, OwnerId, TierLimits,
    Timestamp, Transfer,
};

const CUSTOMERS: u64 = 10_000;
const BATCH_LEN: usize = 1024;
/// Distinct prebuilt batches cycled through, so consecutive batches touch different accounts.
const BATCHES_PREBUILT: usize = 16;
/// Idempotency keys remembered; the window is filled to this before measuring.
const IDEMPOTENCY_ENTRIES_MAX: u64 = 1_000_000;
const SETTLEMENT: AccountId = AccountId(1);
/// 2025-01-01T00:00:00Z.
const START_NS: u64 = 1_735_689_600_000_000_000;
const TICK_NS: u64 = 1_000;

/// The sequencer's role: consecutive seqs, a clock that only moves forward, fresh keys.
struct Ledger {
    engine: Engine,
    seq: u64,
}

impl Ledger {
    fn apply(&mut self, body: CommandBody) -> CommandResult {
        let command = Command {
            key: self.next_key(),
            body,
        };
        self.apply_command(&command)
    }

    fn apply_command(&mut self, command: &Command) -> CommandResult {
        self.seq += 1;
        let timestamp = Timestamp(START_NS + self.seq * TICK_NS);
        self.engine.apply(self.seq, timestamp, command).result
    }

    /// A unique key per command, spread over 128 bits like the gateway's hashed keys.
    fn next_key(&self) -> IdempotencyKey {
        let n = u128::from(self.seq + 1);
        IdempotencyKey(n.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835) ^ n)
    }
}

fn funded_ledger() -> Ledger {
    let unlimited = TierLimits {
        daily_outgoing: Amount::MAX,
        monthly_outgoing: Amount::MAX,
    };
    let config = EngineConfig {
        tiers: vec![unlimited],
        accounts_max: CUSTOMERS + 1,
        idempotency_entries_max: IDEMPOTENCY_ENTRIES_MAX,
        ..EngineConfig::default()
    };
    let mut ledger = Ledger {
        engine: Engine::new(config),
        seq: 0,
    };
    open(&mut ledger, AccountKind::Settlement, 0);
    for owner in 1..=CUSTOMERS {
        open(&mut ledger, AccountKind::Customer, owner);
    }
    // The settlement account may owe at most DECIMAL(19,4): split that among the customers.
    let balance = Amount(AMOUNT_UNITS_MAX / CUSTOMERS);
    for customer in 0..CUSTOMERS {
        let deposit = Deposit {
            settlement: SETTLEMENT,
            account: customer_id(customer),
            amount: balance,
            currency: Currency::IDR,
        };
        let result = ledger.apply(CommandBody::Deposit(deposit));
        assert!(
            matches!(result, CommandResult::Posted(_)),
            "funding failed: {result:?}"
        );
    }
    fill_idempotency_window(&mut ledger);
    ledger
}

fn open(ledger: &mut Ledger, kind: AccountKind, owner: u64) {
    let body = CommandBody::OpenAccount(OpenAccount {
        owner: OwnerId(u128::from(owner)),
        kind,
        tier: 0,
        currency: Currency::IDR,
        overdraft_limit: Amount::ZERO,
    });
    let result = ledger.apply(body);
    assert!(
        matches!(result, CommandResult::AccountOpened { .. }),
        "open failed: {result:?}"
    );
}

/// Runs transfers until the idempotency window is full, so measured applies also evict.
fn fill_idempotency_window(ledger: &mut Ledger) {
    let mut n = 0;
    while ledger.engine.stats().idempotency_entries < IDEMPOTENCY_ENTRIES_MAX {
        let result = ledger.apply(CommandBody::Transfer(transfer(n)));
        assert!(
            matches!(result, CommandResult::Posted(_)),
            "warm-up transfer failed: {result:?}"
        );
        n += 1;
    }
}

fn customer_id(index: u64) -> AccountId {
    AccountId(2 + index % CUSTOMERS)
}

/// The n-th transfer of a fixed, scattered pattern: multiplying by primes spreads consecutive
/// transfers over the ledger, and the offset keeps both sides distinct.
fn transfer(n: u64) -> Transfer {
    let from = n.wrapping_mul(7_919) % CUSTOMERS;
    let to = (from + 1 + n.wrapping_mul(104_729) % (CUSTOMERS - 1)) % CUSTOMERS;
    Transfer {
        from: customer_id(from),
        to: customer_id(to),
        amount: Amount(10_000 * (1 + n % 100_000)),
        currency: Currency::IDR,
    }
}

fn bench_single_transfer(c: &mut Criterion) {
    let mut ledger = funded_ledger();
    let mut n = 0u64;
    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Elements(1));
    group.bench_function("transfer_single_10k_accounts", |b| {
        b.iter(|| {
            n += 1;
            black_box(ledger.apply(CommandBody::Transfer(transfer(n))))
        })
    });
    group.finish();
}

fn bench_transfer_batch(c: &mut Criterion) {
    let mut ledger = funded_ledger();
    let mut batches: Vec<Command> = (0..BATCHES_PREBUILT)
        .map(|b| {
            let items = (0..BATCH_LEN)
                .map(|i| transfer((b * BATCH_LEN + i) as u64))
                .collect();
            Command {
                key: IdempotencyKey(0),
                body: CommandBody::TransferBatch(items),
            }
        })
        .collect();
    let mut next = 0usize;
    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Elements(BATCH_LEN as u64));
    group.bench_function("transfer_batch_1024_10k_accounts", |b| {
        b.iter(|| {
            // Only the key changes: building 1024 items per iteration would be measured too.
            let command = &mut batches[next % BATCHES_PREBUILT];
            next += 1;
            command.key = ledger.next_key();
            black_box(ledger.apply_command(command))
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_single_transfer, bench_transfer_batch
}
criterion_main!(benches);
