//! Example tests: one scenario for every rejection code, and the edge cases the ledger's rules
//! are most likely to get wrong (deadlines, partial commits, Jakarta midnight, idempotency,
//! locked pockets, DECIMAL(19,4) overflow).

use std::collections::BTreeSet;
use std::str::FromStr;

use payu_engine::*;
use rust_decimal::Decimal;

const HOUR: u64 = NANOS_PER_HOUR;
/// 2026-11-25 00:00 UTC (07:00 in Jakarta).
const START: Timestamp = Timestamp(1_764_028_800 * NANOS_PER_SECOND);

/// A ledger driven one command at a time, each with a fresh idempotency key unless told.
struct Ledger {
    engine: Engine,
    now: Timestamp,
    next_key: u128,
    settlement: AccountId,
}

impl Ledger {
    fn new() -> Ledger {
        Ledger::with_config(EngineConfig::default())
    }

    fn with_config(config: EngineConfig) -> Ledger {
        let mut ledger = Ledger {
            engine: Engine::new(config),
            now: START,
            next_key: 1,
            settlement: AccountId(0),
        };
        ledger.settlement = ledger.open(AccountKind::Settlement, 0);
        ledger
    }

    fn at(&mut self, now: Timestamp) -> &mut Ledger {
        assert!(now >= self.now);
        self.now = now;
        self
    }

    fn run(&mut self, body: CommandBody) -> Outcome {
        let key = IdempotencyKey(self.next_key);
        self.next_key += 1;
        self.run_keyed(key, body)
    }

    fn run_keyed(&mut self, key: IdempotencyKey, body: CommandBody) -> Outcome {
        let seq = self.engine.last_seq() + 1;
        let outcome = self.engine.apply(seq, self.now, &Command { key, body });
        self.engine
            .verify()
            .expect("invariants hold after every command");
        outcome
    }

    fn result(&mut self, body: CommandBody) -> CommandResult {
        self.run(body).result
    }

    fn open(&mut self, kind: AccountKind, tier: u8) -> AccountId {
        match self.result(open_account(kind, tier)) {
            CommandResult::AccountOpened { account } => account,
            other => panic!("open account: {other:?}"),
        }
    }

    fn customer(&mut self, funded_idr: u64) -> AccountId {
        let account = self.open(AccountKind::Customer, 1);
        if funded_idr > 0 {
            self.deposit(account, Amount::whole(funded_idr));
        }
        account
    }

    fn deposit(&mut self, account: AccountId, amount: Amount) -> CommandResult {
        let settlement = self.settlement;
        self.result(CommandBody::Deposit(Deposit {
            settlement,
            account,
            amount,
            currency: Currency::IDR,
        }))
    }

    fn transfer(&mut self, from: AccountId, to: AccountId, amount: Amount) -> CommandResult {
        self.result(transfer(from, to, amount))
    }

    fn pocket(&mut self, parent: AccountId, target_date: Date, locked: bool) -> AccountId {
        let body = CommandBody::OpenPocket(OpenPocket {
            parent,
            name: "Umroh 2027".into(),
            target_amount: Amount::whole(30_000_000),
            target_date,
            locked,
        });
        match self.result(body) {
            CommandResult::PocketOpened { pocket } => pocket,
            other => panic!("open pocket: {other:?}"),
        }
    }

    fn reserve(
        &mut self,
        account: AccountId,
        to: AccountId,
        amount: Amount,
        ttl: u64,
    ) -> CommandResult {
        let expires_at = self.now.saturating_add_nanos(ttl);
        self.result(CommandBody::HoldReserve(HoldReserve {
            account,
            destination: to,
            amount,
            currency: Currency::IDR,
            expiry: HoldExpiry::At(expires_at),
        }))
    }

    fn account(&self, id: AccountId) -> &Account {
        self.engine.account(id).expect("account exists")
    }
}

fn open_account(kind: AccountKind, tier: u8) -> CommandBody {
    CommandBody::OpenAccount(OpenAccount {
        owner: OwnerId(7),
        kind,
        tier,
        currency: Currency::IDR,
        overdraft_limit: Amount::ZERO,
    })
}

fn transfer(from: AccountId, to: AccountId, amount: Amount) -> CommandBody {
    CommandBody::Transfer(Transfer {
        from,
        to,
        amount,
        currency: Currency::IDR,
    })
}

fn rejection(result: &CommandResult) -> RejectCode {
    match result {
        CommandResult::Rejected(code) => *code,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn posted(result: &CommandResult) -> Posted {
    match result {
        CommandResult::Posted(posted) => *posted,
        other => panic!("expected a posting, got {other:?}"),
    }
}

fn hold_id(result: &CommandResult) -> HoldId {
    match result {
        CommandResult::HoldReserved(change) => change.hold,
        other => panic!("expected a reserved hold, got {other:?}"),
    }
}

fn idr(whole: u64) -> i128 {
    i128::from(Amount::whole(whole).units())
}

fn utc(year: u32, month: u32, day: u32, hour: u64) -> Timestamp {
    let date = Date::from_ymd(year, month, day).expect("valid date");
    Timestamp(u64::from(date.0) * 24 * HOUR + hour * HOUR)
}

/// Produces one example of every rejection code and checks each is the code the rules name.
#[test]
fn every_rejection_code_has_an_example() {
    let mut seen = BTreeSet::new();
    let mut expect = |result: CommandResult, code: RejectCode| {
        assert_eq!(rejection(&result), code, "for {code:?}");
        seen.insert(code);
    };
    let mut l = Ledger::with_config(EngineConfig {
        accounts_max: 9,
        holds_active_max: 1,
        pockets_per_account_max: 1,
        ..EngineConfig::default()
    });
    let a = l.customer(1_000);
    let b = l.customer(0);
    let merchant = l.open(AccountKind::Merchant, 3);
    let unknown = AccountId(99);

    expect(l.transfer(a, b, Amount(0)), RejectCode::InvalidAmount);
    expect(
        l.transfer(a, b, Amount(AMOUNT_UNITS_MAX + 1)),
        RejectCode::InvalidAmount,
    );
    expect(
        l.transfer(a, unknown, Amount::whole(1)),
        RejectCode::AccountNotFound,
    );
    expect(l.transfer(a, a, Amount::whole(1)), RejectCode::SameAccount);
    expect(
        l.transfer(a, b, Amount::whole(1_001)),
        RejectCode::InsufficientFunds,
    );
    let settlement = l.settlement;
    expect(
        l.transfer(settlement, a, Amount::whole(1)),
        RejectCode::InvalidAccountKind,
    );
    let usd = CommandBody::Transfer(Transfer {
        from: a,
        to: b,
        amount: Amount::whole(1),
        currency: Currency(840),
    });
    expect(l.result(usd), RejectCode::CurrencyMismatch);
    expect(
        l.result(open_account(AccountKind::Customer, 200)),
        RejectCode::InvalidTier,
    );

    let frozen = l.customer(10);
    let freeze = |account, status| {
        CommandBody::UpdateAccount(UpdateAccount {
            account,
            status: Some(status),
            tier: None,
            overdraft_limit: None,
        })
    };
    l.result(freeze(frozen, AccountStatus::Frozen));
    expect(
        l.transfer(frozen, a, Amount::whole(1)),
        RejectCode::AccountFrozen,
    );
    expect(
        l.result(freeze(a, AccountStatus::Closed)),
        RejectCode::AccountNotEmpty,
    );
    let closed = l.customer(0);
    l.result(freeze(closed, AccountStatus::Closed));
    expect(
        l.transfer(a, closed, Amount::whole(1)),
        RejectCode::AccountClosed,
    );

    let overdraft = CommandBody::UpdateAccount(UpdateAccount {
        account: b,
        status: None,
        tier: None,
        overdraft_limit: Some(Amount::whole(50)),
    });
    l.result(overdraft);
    l.transfer(b, a, Amount::whole(30));
    let shrink = CommandBody::UpdateAccount(UpdateAccount {
        account: b,
        status: None,
        tier: None,
        overdraft_limit: Some(Amount::whole(10)),
    });
    expect(l.result(shrink), RejectCode::OverdraftInUse);

    let basic = l.open(AccountKind::Customer, 0); // tier 0: IDR 5 000 000 a day
    l.deposit(basic, Amount::whole(6_000_000));
    expect(
        l.transfer(basic, a, Amount::whole(5_000_001)),
        RejectCode::DailyLimitExceeded,
    );

    let bad_name = CommandBody::OpenPocket(OpenPocket {
        parent: a,
        name: String::new(),
        target_amount: Amount::whole(1),
        target_date: Date(0),
        locked: false,
    });
    expect(l.result(bad_name), RejectCode::InvalidPocket);
    let next_year = Date::from_ymd(2027, 11, 25).expect("date");
    let pocket = l.pocket(a, next_year, true);
    l.result(CommandBody::PocketMove(PocketMove {
        pocket,
        direction: PocketDirection::In,
        amount: Amount::whole(10),
        currency: Currency::IDR,
    }));
    let out = CommandBody::PocketMove(PocketMove {
        pocket,
        direction: PocketDirection::Out,
        amount: Amount::whole(10),
        currency: Currency::IDR,
    });
    expect(l.result(out), RejectCode::PocketLocked);
    let second_pocket = CommandBody::OpenPocket(OpenPocket {
        parent: a,
        name: "Second".into(),
        target_amount: Amount::whole(1),
        target_date: next_year,
        locked: false,
    });
    expect(l.result(second_pocket), RejectCode::TooManyPockets);

    expect(
        l.reserve(a, merchant, Amount::whole(1), 0),
        RejectCode::InvalidHoldExpiry,
    );
    let hold = hold_id(&l.reserve(a, merchant, Amount::whole(100), HOUR));
    expect(
        l.reserve(a, merchant, Amount::whole(1), HOUR),
        RejectCode::CapacityExceeded,
    );
    let commit = |hold, amount| CommandBody::HoldCommit(HoldCommit { hold, amount });
    expect(
        l.result(commit(hold, Amount::whole(101))),
        RejectCode::HoldAmountExceeded,
    );
    expect(
        l.result(commit(HoldId(42), Amount::whole(1))),
        RejectCode::HoldNotFound,
    );
    l.result(CommandBody::HoldRelease(HoldRelease { hold }));
    expect(
        l.result(commit(hold, Amount::whole(1))),
        RejectCode::HoldNotActive,
    );
    let expiring = hold_id(&l.reserve(a, merchant, Amount::whole(1), HOUR));
    let later = l.now.saturating_add_nanos(HOUR);
    l.at(later);
    expect(
        l.result(commit(expiring, Amount::whole(1))),
        RejectCode::HoldExpired,
    );

    let refund = |payment, amount| {
        CommandBody::Refund(Refund {
            payment,
            amount,
            currency: Currency::IDR,
        })
    };
    expect(
        l.result(refund(TxnId(999_999), Amount::whole(1))),
        RejectCode::PaymentNotFound,
    );
    let pay = CommandBody::Payment(Payment {
        customer: a,
        merchant,
        amount: Amount::whole(20),
        currency: Currency::IDR,
    });
    let payment = posted(&l.result(pay)).txn;
    expect(
        l.result(refund(payment, Amount::whole(21))),
        RejectCode::RefundExceedsPayment,
    );

    expect(
        l.result(CommandBody::TransferBatch(Vec::new())),
        RejectCode::InvalidBatch,
    );
    l.result(open_account(AccountKind::Customer, 0)); // the ninth account: at capacity
    expect(
        l.result(open_account(AccountKind::Customer, 0)),
        RejectCode::CapacityExceeded,
    );

    let key = IdempotencyKey(u128::MAX);
    l.run_keyed(key, transfer(a, b, Amount::whole(1)));
    let conflict = l.run_keyed(key, transfer(a, b, Amount::whole(2))).result;
    expect(conflict, RejectCode::IdempotencyConflict);

    // Overflow and the monthly limit need ledgers of their own.
    seen.insert(overflow_example());
    seen.insert(monthly_limit_example());

    let missing: Vec<_> = RejectCode::ALL
        .iter()
        .filter(|code| !seen.contains(code))
        .collect();
    assert!(
        missing.is_empty(),
        "rejection codes without an example: {missing:?}"
    );
}

fn overflow_example() -> RejectCode {
    let mut l = Ledger::new();
    let a = l.open(AccountKind::Merchant, 3);
    assert!(matches!(
        l.deposit(a, Amount::MAX),
        CommandResult::Posted(_)
    ));
    let code = rejection(&l.deposit(a, Amount(1)));
    assert_eq!(code, RejectCode::AmountOverflow);
    code
}

fn monthly_limit_example() -> RejectCode {
    let mut config = EngineConfig::default();
    config.tiers[0] = TierLimits {
        daily_outgoing: Amount::whole(100),
        monthly_outgoing: Amount::whole(150),
    };
    let mut l = Ledger::with_config(config);
    let a = l.open(AccountKind::Customer, 0);
    let b = l.customer(0);
    l.deposit(a, Amount::whole(1_000));
    posted(&l.transfer(a, b, Amount::whole(100)));
    l.at(START.saturating_add_nanos(24 * HOUR));
    let code = rejection(&l.transfer(a, b, Amount::whole(51)));
    assert_eq!(code, RejectCode::MonthlyLimitExceeded);
    assert_eq!(code.code(), "LIMIT_EXCEEDED");
    code
}

/// A hold is usable until one nanosecond before its deadline and expired from the deadline on;
/// expiry returns the held funds and reports them in the outcome.
#[test]
fn hold_expires_exactly_at_its_deadline() {
    let mut l = Ledger::new();
    let a = l.customer(1_000);
    let shop = l.open(AccountKind::Merchant, 3);
    let early = hold_id(&l.reserve(a, shop, Amount::whole(100), HOUR));
    let on_time = hold_id(&l.reserve(a, shop, Amount::whole(200), HOUR));
    assert_eq!(l.account(a).held, idr(300));
    assert_eq!(l.account(a).available(), idr(700));

    let deadline = START.saturating_add_nanos(HOUR);
    l.at(Timestamp(deadline.0 - 1));
    let commit = |hold| {
        CommandBody::HoldCommit(HoldCommit {
            hold,
            amount: Amount::whole(100),
        })
    };
    let committed = l.run(commit(early));
    assert!(
        matches!(committed.result, CommandResult::HoldCommitted { .. }),
        "{committed:?}"
    );
    assert!(committed.expired_holds.is_empty());

    l.at(deadline);
    let late = l.run(commit(on_time));
    assert_eq!(
        late.expired_holds.len(),
        1,
        "the sweep releases the hold first"
    );
    assert_eq!(late.expired_holds[0].hold, on_time);
    assert_eq!(late.expired_holds[0].held_after, 0);
    assert_eq!(rejection(&late.result), RejectCode::HoldExpired);
    assert_eq!(l.account(a).held, 0);
    assert_eq!(l.account(a).balance, idr(900));
    let release = l.result(CommandBody::HoldRelease(HoldRelease { hold: on_time }));
    assert_eq!(rejection(&release), RejectCode::HoldExpired);
}

/// Committing part of a hold moves that part, releases the rest and returns the unused part
/// to today's limit.
/// A relative expiry is resolved at the reserving command's timestamp, so a retry of the
/// same request later (same key, same body) replays instead of conflicting.
#[test]
fn relative_hold_expiry_resolves_at_the_command_and_replays_on_retry() {
    let mut l = Ledger::new();
    let a = l.customer(1_000);
    let shop = l.open(AccountKind::Merchant, 3);
    let body = CommandBody::HoldReserve(HoldReserve {
        account: a,
        destination: shop,
        amount: Amount::whole(100),
        currency: Currency::IDR,
        expiry: HoldExpiry::After { nanos: HOUR },
    });
    let key = IdempotencyKey(9_000);
    let reserved = l.run_keyed(key, body.clone());
    let seq = l.engine.last_seq();
    let hold = hold_id(&reserved.result);
    assert_eq!(
        l.engine.hold(hold).expect("active").expires_at,
        START.saturating_add_nanos(HOUR)
    );

    l.at(START.saturating_add_nanos(HOUR / 2));
    let retried = l.run_keyed(key, body);
    assert_eq!(
        retried.result,
        CommandResult::Replayed {
            original_seq: seq,
            original: OutcomeSummary::HoldReserved(hold),
        }
    );
    assert_eq!(l.account(a).held, idr(100), "reserved once");

    let zero = CommandBody::HoldReserve(HoldReserve {
        account: a,
        destination: shop,
        amount: Amount::whole(1),
        currency: Currency::IDR,
        expiry: HoldExpiry::After { nanos: 0 },
    });
    assert_eq!(rejection(&l.result(zero)), RejectCode::InvalidHoldExpiry);
}

#[test]
fn partial_commit_moves_part_and_releases_the_rest() {
    let mut config = EngineConfig::default();
    config.tiers[0].daily_outgoing = Amount::whole(500);
    let mut l = Ledger::with_config(config);
    let a = l.open(AccountKind::Customer, 0);
    l.deposit(a, Amount::whole(1_000));
    let shop = l.open(AccountKind::Merchant, 3);
    let hold = hold_id(&l.reserve(a, shop, Amount::whole(400), HOUR));
    // 400 of the 500 daily limit is reserved.
    assert_eq!(
        rejection(&l.reserve(a, shop, Amount::whole(101), HOUR)),
        RejectCode::DailyLimitExceeded
    );

    let result = l.result(CommandBody::HoldCommit(HoldCommit {
        hold,
        amount: Amount::whole(150),
    }));
    let CommandResult::HoldCommitted {
        hold: change,
        released,
        posted,
    } = result
    else {
        panic!("expected a commit, got {result:?}");
    };
    assert_eq!(released, Amount::whole(250));
    assert_eq!(change.held_after, 0);
    assert_eq!(
        posted.debit,
        Posting {
            account: a,
            amount: Amount::whole(150),
            balance_after: idr(850)
        }
    );
    assert_eq!(
        posted.credit,
        Posting {
            account: shop,
            amount: Amount::whole(150),
            balance_after: idr(150)
        }
    );
    assert_eq!(l.account(a).held, 0);
    // 150 of the limit is used, so 350 more fits today and 351 does not.
    let b = l.customer(0);
    assert_eq!(
        rejection(&l.transfer(a, b, Amount::whole(351))),
        RejectCode::DailyLimitExceeded
    );
    posted_ok(l.transfer(a, b, Amount::whole(350)));
}

fn posted_ok(result: CommandResult) -> Posted {
    posted(&result)
}

/// The daily limit resets at 00:00 Asia/Jakarta, which is 17:00 UTC, not at UTC midnight.
#[test]
fn daily_limit_rolls_over_at_jakarta_midnight() {
    let mut config = EngineConfig::default();
    config.tiers[0].daily_outgoing = Amount::whole(1_000);
    let mut l = Ledger::with_config(config);
    let a = l.open(AccountKind::Customer, 0);
    l.deposit(a, Amount::whole(10_000));
    let b = l.customer(0);

    let jakarta_midnight_utc = utc(2026, 11, 25, 17);
    l.at(Timestamp(jakarta_midnight_utc.0 - HOUR));
    posted_ok(l.transfer(a, b, Amount::whole(1_000)));
    l.at(Timestamp(jakarta_midnight_utc.0 - 1));
    assert_eq!(
        rejection(&l.transfer(a, b, Amount(1))),
        RejectCode::DailyLimitExceeded
    );
    l.at(jakarta_midnight_utc);
    posted_ok(l.transfer(a, b, Amount::whole(1_000)));
    assert_eq!(
        rejection(&l.transfer(a, b, Amount(1))),
        RejectCode::DailyLimitExceeded
    );
    // UTC midnight (07:00 in Jakarta) is not a boundary.
    l.at(utc(2026, 11, 26, 0));
    assert_eq!(
        rejection(&l.transfer(a, b, Amount(1))),
        RejectCode::DailyLimitExceeded
    );
}

/// The monthly limit resets when the Jakarta calendar month turns (17:00 UTC on the last day).
#[test]
fn monthly_limit_rolls_over_at_jakarta_month_start() {
    let mut config = EngineConfig::default();
    config.tiers[0] = TierLimits {
        daily_outgoing: Amount::whole(1_000),
        monthly_outgoing: Amount::whole(1_000),
    };
    let mut l = Ledger::with_config(config);
    let a = l.open(AccountKind::Customer, 0);
    l.deposit(a, Amount::whole(10_000));
    let b = l.customer(0);
    l.at(utc(2026, 11, 30, 10));
    posted_ok(l.transfer(a, b, Amount::whole(1_000)));
    l.at(Timestamp(utc(2026, 11, 30, 17).0 - 1));
    assert_eq!(
        rejection(&l.transfer(a, b, Amount(1))),
        RejectCode::DailyLimitExceeded
    );
    l.at(utc(2026, 11, 30, 17)); // 1 December in Jakarta
    posted_ok(l.transfer(a, b, Amount::whole(1_000)));
}

/// Retrying with the same key and body returns the original outcome without applying again;
/// a different body under that key is refused; the key is forgotten after the window.
#[test]
fn idempotent_replay_and_conflict() {
    let mut l = Ledger::new();
    let a = l.customer(1_000);
    let b = l.customer(0);
    let key = IdempotencyKey(0xfeed);
    let first = l.run_keyed(key, transfer(a, b, Amount::whole(100))).result;
    let original_seq = l.engine.last_seq();
    let txn = posted(&first).txn;

    let again = l.run_keyed(key, transfer(a, b, Amount::whole(100))).result;
    let expected = CommandResult::Replayed {
        original_seq,
        original: OutcomeSummary::Posted(txn),
    };
    assert_eq!(again, expected);
    assert_eq!(l.account(b).balance, idr(100), "applied once");

    let conflict = l.run_keyed(key, transfer(a, b, Amount::whole(101))).result;
    assert_eq!(rejection(&conflict), RejectCode::IdempotencyConflict);

    // A rejection is remembered too: the retry answers the same.
    let broke_key = IdempotencyKey(0xdead);
    let broke = l
        .run_keyed(broke_key, transfer(b, a, Amount::whole(5_000)))
        .result;
    assert_eq!(rejection(&broke), RejectCode::InsufficientFunds);
    l.deposit(b, Amount::whole(10_000));
    let retry = l
        .run_keyed(broke_key, transfer(b, a, Amount::whole(5_000)))
        .result;
    assert!(matches!(
        retry,
        CommandResult::Replayed {
            original: OutcomeSummary::Rejected(RejectCode::InsufficientFunds),
            ..
        }
    ));

    // After the 24 h window the key is new again.
    l.at(START.saturating_add_nanos(24 * HOUR));
    let fresh = l.run_keyed(key, transfer(a, b, Amount::whole(100))).result;
    assert_ne!(posted(&fresh).txn, txn);
    assert_eq!(
        l.account(b).balance,
        idr(10_200),
        "100 + 10 000 deposited + 100 again"
    );
}

/// A locked pocket refuses withdrawal until its target date begins in Jakarta; an unlocked one
/// never does; deposits into either always work.
#[test]
fn locked_pocket_opens_on_its_target_date() {
    let mut l = Ledger::new();
    let a = l.customer(1_000);
    let target = Date::from_ymd(2026, 12, 31).expect("date");
    let locked = l.pocket(a, target, true);
    let free = l.pocket(a, target, false);
    let pocket_move = |pocket, direction| {
        CommandBody::PocketMove(PocketMove {
            pocket,
            direction,
            amount: Amount::whole(100),
            currency: Currency::IDR,
        })
    };
    for pocket in [locked, free] {
        let moved = posted(&l.result(pocket_move(pocket, PocketDirection::In)));
        assert_eq!(moved.credit.account, pocket);
    }
    assert_eq!(l.account(a).balance, idr(800));
    assert_eq!(l.account(locked).balance, idr(100));
    posted(&l.result(pocket_move(free, PocketDirection::Out)));

    l.at(Timestamp(jakarta_midnight(target).0 - 1));
    let refused = l.result(pocket_move(locked, PocketDirection::Out));
    assert_eq!(rejection(&refused), RejectCode::PocketLocked);
    l.at(jakarta_midnight(target));
    let out = posted(&l.result(pocket_move(locked, PocketDirection::Out)));
    assert_eq!(
        out.credit,
        Posting {
            account: a,
            amount: Amount::whole(100),
            balance_after: idr(1_000)
        }
    );
    assert_eq!(
        l.engine.pocket(locked).map(|p| p.name.as_str()),
        Some("Umroh 2027")
    );
}

/// Balances may reach exactly the DECIMAL(19,4) maximum and never pass it, on either side.
#[test]
fn overflow_near_decimal_19_4_maximum_is_refused() {
    let mut l = Ledger::new();
    let rich = l.open(AccountKind::Merchant, 3);
    let other = l.open(AccountKind::Merchant, 3);
    let max = posted(&l.deposit(rich, Amount::MAX));
    assert_eq!(max.credit.balance_after, BALANCE_UNITS_MAX);
    assert_eq!(
        max.debit.balance_after, -BALANCE_UNITS_MAX,
        "settlement mirrors it"
    );
    // The settlement account cannot go further below -MAX (debit side).
    assert_eq!(
        rejection(&l.deposit(other, Amount(1))),
        RejectCode::AmountOverflow
    );
    // A second settlement account funds `other`; crediting `rich` past MAX is refused.
    let second = l.open(AccountKind::Settlement, 0);
    let fund = CommandBody::Deposit(Deposit {
        settlement: second,
        account: other,
        amount: Amount(2),
        currency: Currency::IDR,
    });
    posted(&l.result(fund));
    assert_eq!(
        rejection(&l.transfer(other, rich, Amount(1))),
        RejectCode::AmountOverflow
    );
    // One unit out and back: exactly MAX again is fine.
    posted(&l.transfer(rich, other, Amount(1)));
    let back = posted(&l.transfer(other, rich, Amount(1)));
    assert_eq!(back.credit.balance_after, BALANCE_UNITS_MAX);
    assert_eq!(l.engine.ledger_totals().get(&Currency::IDR), Some(&0));
    // An amount above DECIMAL(19,4) never enters.
    let too_big = Amount(AMOUNT_UNITS_MAX + 1);
    assert_eq!(
        rejection(&l.deposit(other, too_big)),
        RejectCode::InvalidAmount
    );
}

/// Amounts with more than four significant decimal places are refused at the edge, not rounded.
#[test]
fn more_than_four_decimal_places_are_rejected() {
    let parse = |s: &str| Amount::from_decimal(Decimal::from_str(s).expect("decimal literal"));
    assert_eq!(parse("150000.1234"), Ok(Amount(1_500_001_234)));
    assert_eq!(parse("150000.12345"), Err(AmountError::TooManyDecimals));
    assert_eq!(parse("0.00001"), Err(AmountError::TooManyDecimals));
    assert_eq!(
        parse("150000.12340"),
        Ok(Amount(1_500_001_234)),
        "trailing zeros are exact"
    );
    assert_eq!(parse("-1"), Err(AmountError::NotPositive));
    assert_eq!(parse("1000000000000000"), Err(AmountError::TooLarge));
}

/// Every posted movement is one debit and one credit of the same amount, each with the
/// account's balance after it, and the ledger sums to zero throughout.
#[test]
fn postings_balance_and_carry_balance_after() {
    let mut l = Ledger::new();
    let a = l.customer(500);
    let b = l.customer(0);
    let p = posted(&l.transfer(a, b, Amount::whole(200)));
    assert_eq!(p.debit.amount, p.credit.amount);
    assert_eq!(p.debit.balance_after, idr(300));
    assert_eq!(p.credit.balance_after, idr(200));
    assert_eq!(
        l.engine.account(l.settlement).map(|s| s.balance),
        Some(-idr(500))
    );
    assert_eq!(l.engine.ledger_totals().values().sum::<i128>(), 0);
}

/// A batch applies each transfer independently, in order, with its own result.
#[test]
fn batch_items_have_independent_results() {
    let mut l = Ledger::new();
    let a = l.customer(100);
    let b = l.customer(0);
    let items = vec![
        Transfer {
            from: a,
            to: b,
            amount: Amount::whole(60),
            currency: Currency::IDR,
        },
        Transfer {
            from: a,
            to: b,
            amount: Amount::whole(60),
            currency: Currency::IDR,
        },
        Transfer {
            from: b,
            to: a,
            amount: Amount::whole(10),
            currency: Currency::IDR,
        },
    ];
    let CommandResult::Batch(results) = l.result(CommandBody::TransferBatch(items)) else {
        panic!("expected batch results");
    };
    assert!(matches!(results[0], BatchItem::Posted(_)));
    assert_eq!(
        results[1],
        BatchItem::Rejected(RejectCode::InsufficientFunds)
    );
    assert!(matches!(results[2], BatchItem::Posted(p) if p.credit.balance_after == idr(50)));
    let oversized = vec![results_transfer(a, b); BATCH_TRANSFERS_MAX + 1];
    assert_eq!(
        rejection(&l.result(CommandBody::TransferBatch(oversized))),
        RejectCode::InvalidBatch
    );
}

fn results_transfer(from: AccountId, to: AccountId) -> Transfer {
    Transfer {
        from,
        to,
        amount: Amount(1),
        currency: Currency::IDR,
    }
}

/// Refunds return a payment in parts, never more than was paid in total.
#[test]
fn refunds_are_partial_and_bounded_by_the_payment() {
    let mut l = Ledger::new();
    let customer = l.customer(1_000);
    let shop = l.open(AccountKind::Merchant, 3);
    let pay = CommandBody::Payment(Payment {
        customer,
        merchant: shop,
        amount: Amount::whole(300),
        currency: Currency::IDR,
    });
    let payment = posted(&l.result(pay)).txn;
    let refund = |amount| {
        CommandBody::Refund(Refund {
            payment,
            amount,
            currency: Currency::IDR,
        })
    };
    posted(&l.result(refund(Amount::whole(100))));
    posted(&l.result(refund(Amount::whole(200))));
    assert_eq!(
        rejection(&l.result(refund(Amount(1)))),
        RejectCode::RefundExceedsPayment
    );
    assert_eq!(l.account(customer).balance, idr(1_000));
    assert_eq!(l.account(shop).balance, 0);
}

/// A frozen account neither sends nor receives; unfreezing restores it; closing is final.
#[test]
fn frozen_and_closed_accounts_reject_movement() {
    let mut l = Ledger::new();
    let a = l.customer(100);
    let b = l.customer(0);
    let set = |status| {
        CommandBody::UpdateAccount(UpdateAccount {
            account: b,
            status: Some(status),
            tier: None,
            overdraft_limit: None,
        })
    };
    l.result(set(AccountStatus::Frozen));
    assert_eq!(
        rejection(&l.transfer(a, b, Amount::whole(1))),
        RejectCode::AccountFrozen
    );
    l.result(set(AccountStatus::Active));
    posted(&l.transfer(a, b, Amount::whole(1)));
    posted(&l.transfer(b, a, Amount::whole(1)));
    l.result(set(AccountStatus::Closed));
    assert_eq!(
        rejection(&l.transfer(a, b, Amount::whole(1))),
        RejectCode::AccountClosed
    );
    assert_eq!(
        rejection(&l.result(set(AccountStatus::Active))),
        RejectCode::AccountClosed
    );
}

/// Snapshots restore exactly, including the idempotency window, and re-encode to the same bytes.
#[test]
fn snapshot_restores_idempotency_and_holds() {
    let mut l = Ledger::new();
    let a = l.customer(1_000);
    let shop = l.open(AccountKind::Merchant, 3);
    let key = IdempotencyKey(77);
    l.run_keyed(key, transfer(a, shop, Amount::whole(5)));
    let hold = hold_id(&l.reserve(a, shop, Amount::whole(10), HOUR));
    let bytes = l.engine.snapshot();
    let restored = Engine::restore(&bytes).expect("restores");
    assert_eq!(restored, l.engine);
    assert_eq!(restored.snapshot(), bytes);
    l.engine = restored;
    let replay = l.run_keyed(key, transfer(a, shop, Amount::whole(5))).result;
    assert!(matches!(replay, CommandResult::Replayed { .. }));
    assert_eq!(
        l.engine.hold(hold).map(|h| h.amount),
        Some(Amount::whole(10))
    );
    let mut damaged = bytes.clone();
    damaged.truncate(bytes.len() / 2);
    assert!(Engine::restore(&damaged).is_err());
}
