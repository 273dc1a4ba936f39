//! The HTTP wire format: problem+json errors with stable codes, exact amounts, request bodies
//! and the JSON rendering of outcomes and views. The engine derives no `Serialize`: this module
//! owns the public shape, so the ledger's types can change without breaking clients.

use std::str::FromStr;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use payu_engine::{
    AMOUNT_UNITS_MAX, AccountKind, AccountStatus, Amount, Currency, Date, HoldChange, Posted,
    Posting, RejectCode, Timestamp, units_to_decimal,
};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::readmodel::{AccountView, HoldState, HoldView, PocketView, TxnKind, TxnView};

/// An error answer: `application/problem+json` (RFC 9457) with a stable `code`.
#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u64>,
    /// Extra members (e.g. the seq of a journaled rejection, a limit period).
    pub extra: Vec<(&'static str, Value)>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
            extra: Vec::new(),
        }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn unprocessable(code: &'static str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, code, detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, "FORBIDDEN", detail)
    }

    pub fn unavailable(code: &'static str, detail: impl Into<String>, retry: u64) -> Problem {
        let mut problem = Problem::new(StatusCode::SERVICE_UNAVAILABLE, code, detail);
        problem.retry_after = Some(retry);
        problem
    }

    pub fn with(mut self, name: &'static str, value: Value) -> Problem {
        self.extra.push((name, value));
        self
    }

    /// The answer for an engine rejection (journaled, so `seq` is given).
    pub fn rejected(code: RejectCode, seq: u64) -> Problem {
        let status = match code {
            RejectCode::AccountNotFound
            | RejectCode::HoldNotFound
            | RejectCode::PaymentNotFound => StatusCode::NOT_FOUND,
            RejectCode::IdempotencyConflict
            | RejectCode::HoldNotActive
            | RejectCode::HoldExpired => StatusCode::CONFLICT,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        let mut problem =
            Problem::new(status, code.code(), reject_detail(code)).with("seq", json!(seq));
        if let Some(period) = code.limit_period() {
            problem = problem.with("limit_period", json!(period));
        }
        problem
    }
}

fn reject_detail(code: RejectCode) -> &'static str {
    match code {
        RejectCode::InvalidAmount => "the amount must be positive and within DECIMAL(19,4)",
        RejectCode::AmountOverflow => "the result would exceed DECIMAL(19,4)",
        RejectCode::AccountNotFound => "no such account",
        RejectCode::AccountFrozen => "the account is frozen",
        RejectCode::AccountClosed => "the account is closed",
        RejectCode::InsufficientFunds => "the available balance does not cover the amount",
        RejectCode::DailyLimitExceeded => {
            "the daily outgoing limit of the account's tier is reached"
        }
        RejectCode::MonthlyLimitExceeded => {
            "the monthly outgoing limit of the account's tier is reached"
        }
        RejectCode::PocketLocked => "the pocket is locked until its target date",
        RejectCode::HoldNotFound => "no such hold",
        RejectCode::HoldExpired => "the hold expired",
        RejectCode::HoldNotActive => "the hold was already committed or released",
        RejectCode::HoldAmountExceeded => "the commit exceeds the held amount",
        RejectCode::InvalidHoldExpiry => "the hold's expiry is in the past or too far ahead",
        RejectCode::CurrencyMismatch => "the currency does not match the account's",
        RejectCode::IdempotencyConflict => {
            "this Idempotency-Key was already used with a different request"
        }
        RejectCode::SameAccount => "source and destination are the same account",
        RejectCode::InvalidAccountKind => "the account's kind does not allow this operation",
        RejectCode::InvalidTier => "no such tier",
        RejectCode::AccountNotEmpty => "the account still has money, holds or open pockets",
        RejectCode::OverdraftInUse => "the overdraft in use exceeds the new limit",
        RejectCode::TooManyPockets => "the account has the most pockets allowed",
        RejectCode::InvalidPocket => "the pocket name is empty or too long",
        RejectCode::PaymentNotFound => "no such payment (or it is past its refund window)",
        RejectCode::RefundExceedsPayment => "refunds would exceed the payment",
        RejectCode::InvalidBatch => "the batch is empty or too long",
        RejectCode::CapacityExceeded => "a configured capacity of the ledger is reached",
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = serde_json::Map::new();
        let slug = self.code.to_ascii_lowercase().replace('_', "-");
        body.insert(
            "type".into(),
            json!(format!("https://payu.id/problems/{slug}")),
        );
        body.insert(
            "title".into(),
            json!(self.status.canonical_reason().unwrap_or("Error")),
        );
        body.insert("status".into(), json!(self.status.as_u16()));
        body.insert("code".into(), json!(self.code));
        body.insert("detail".into(), json!(self.detail));
        for (name, value) in self.extra {
            body.insert(name.into(), value);
        }
        let mut response = (self.status, Value::Object(body).to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A JSON success answer.
pub fn json_response(status: StatusCode, body: Value) -> Response {
    typed_response(status, &body)
}

/// A transfer's answer is about 400 bytes; most answers fit this without growing.
const ANSWER_BYTES_TYPICAL: usize = 512;

/// A JSON success answer serialised straight from typed structs (the hot paths: no
/// intermediate `Value` tree per item).
pub fn typed_response(status: StatusCode, body: &impl serde::Serialize) -> Response {
    // Serialising plain structs and strings into a Vec cannot fail. Sized for a transfer's
    // answer, so the common case never regrows.
    let mut bytes = Vec::with_capacity(ANSWER_BYTES_TYPICAL);
    if serde_json::to_writer(&mut bytes, body).is_err() {
        bytes.clear();
    }
    let mut response = (status, bytes).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Parses a request body: malformed JSON and wrong shapes are distinct 400s.
pub fn parse_body<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, Problem> {
    serde_json::from_slice(bytes).map_err(|error| {
        let code = match error.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "MALFORMED_JSON"
            }
            _ => "INVALID_REQUEST",
        };
        Problem::bad_request(code, error.to_string())
    })
}

/// `{"value": 150000 | "150000.25", "currency": "IDR"}` as received.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoneyIn {
    pub value: Box<RawValue>,
    pub currency: String,
}

/// An exact amount parsed from the wire: positive, at most 4 decimal places, within
/// DECIMAL(19,4). The value may be a JSON number or a string; either is parsed from its text,
/// never through a float.
pub fn parse_money(money: &MoneyIn, field: &str) -> Result<(Amount, Currency), Problem> {
    let currency = parse_currency(money, field)?;
    let amount = parse_amount_text(money.value.get(), field)?;
    Ok((amount, currency))
}

fn parse_currency(money: &MoneyIn, field: &str) -> Result<Currency, Problem> {
    Currency::from_alpha(&money.currency).ok_or_else(|| {
        Problem::unprocessable(
            "UNSUPPORTED_CURRENCY",
            format!(
                "{field}.currency: {:?} is not a supported currency",
                money.currency
            ),
        )
    })
}

/// A limit (e.g. an overdraft): like an amount, but zero is allowed (it means "none").
pub fn parse_limit(money: &MoneyIn, field: &str) -> Result<Amount, Problem> {
    let raw = money.value.get();
    let text = raw.trim_matches('"');
    let zero = !text.is_empty()
        && text.bytes().all(|b| matches!(b, b'0' | b'.'))
        && text.bytes().filter(|b| *b == b'.').count() <= 1;
    if zero {
        parse_currency(money, field)?;
        return Ok(Amount::ZERO);
    }
    parse_money(money, field).map(|(amount, _)| amount)
}

pub fn parse_amount_text(raw: &str, field: &str) -> Result<Amount, Problem> {
    let text = match raw.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) => inner,
        None => raw,
    };
    let invalid =
        |why: &str| Problem::unprocessable("INVALID_AMOUNT", format!("{field}.value: {why}"));
    let plain = !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'));
    if !plain {
        return Err(invalid(
            "must be a decimal number, e.g. 150000 or \"150000.25\"",
        ));
    }
    let parsed = match text.contains(['e', 'E']) {
        true => Decimal::from_scientific(text),
        false => Decimal::from_str(text),
    };
    let value = parsed.map_err(|_| invalid("must be a decimal number within DECIMAL(19,4)"))?;
    Amount::from_decimal(value).map_err(|error| match error {
        payu_engine::AmountError::NotPositive => invalid("must be greater than zero"),
        payu_engine::AmountError::TooManyDecimals => Problem::unprocessable(
            "AMOUNT_TOO_PRECISE",
            format!("{field}.value: at most 4 decimal places"),
        ),
        payu_engine::AmountError::TooLarge => Problem::unprocessable(
            "AMOUNT_OUT_OF_RANGE",
            format!(
                "{field}.value: at most {} (DECIMAL(19,4))",
                units_to_decimal(i128::from(AMOUNT_UNITS_MAX))
            ),
        ),
    })
}

/// An amount as the wire shows it: an exact decimal string, plus the currency.
pub fn money(units: i128, currency: Currency) -> Value {
    json!({ "value": UnitsText(units).to_string(), "currency": currency_code(currency) })
}

pub fn amount(value: Amount, currency: Currency) -> Value {
    money(i128::from(value.0), currency)
}

pub fn currency_code(currency: Currency) -> &'static str {
    currency.alpha().unwrap_or("XXX")
}

pub fn parse_date(text: &str, field: &str) -> Result<Date, Problem> {
    let invalid =
        || Problem::bad_request("INVALID_REQUEST", format!("{field}: expected YYYY-MM-DD"));
    let mut parts = text.splitn(3, '-');
    let mut next = || parts.next().and_then(|p| p.parse::<u32>().ok());
    let (Some(year), Some(month), Some(day)) = (next(), next(), next()) else {
        return Err(invalid());
    };
    Date::from_ymd(year, month, day).ok_or_else(invalid)
}

pub fn date(value: Date) -> String {
    let (year, month, day) = value.to_ymd();
    format!("{year:04}-{month:02}-{day:02}")
}

/// Parses RFC 3339 (`2026-11-25T12:00:00Z`, optional fraction up to nanoseconds, `Z` or a
/// `±HH:MM` offset) to UTC nanoseconds.
pub fn parse_timestamp(text: &str, field: &str) -> Result<Timestamp, Problem> {
    let invalid = || {
        Problem::bad_request(
            "INVALID_REQUEST",
            format!("{field}: expected an RFC 3339 time such as 2026-11-25T12:00:00Z"),
        )
    };
    let (date_text, rest) = text.split_once(['T', 't']).ok_or_else(invalid)?;
    let day = parse_date(date_text, field).map_err(|_| invalid())?;
    let (clock, offset_seconds): (&str, i64) = match rest.strip_suffix(['Z', 'z']) {
        Some(clock) => (clock, 0),
        None => {
            let split = rest.rfind(['+', '-']).ok_or_else(invalid)?;
            let (clock, offset) = rest.split_at(split);
            let sign = if offset.starts_with('-') { -1 } else { 1 };
            let (hours, minutes) = offset[1..].split_once(':').ok_or_else(invalid)?;
            let hours: i64 = hours.parse().map_err(|_| invalid())?;
            let minutes: i64 = minutes.parse().map_err(|_| invalid())?;
            if hours > 23 || minutes > 59 {
                return Err(invalid());
            }
            (clock, sign * (hours * 3600 + minutes * 60))
        }
    };
    let (hms, fraction) = match clock.split_once('.') {
        Some((hms, fraction)) => (hms, fraction),
        None => (clock, ""),
    };
    let mut parts = hms.splitn(3, ':').map(|p| p.parse::<u64>().ok());
    let (Some(Some(hour)), Some(Some(minute)), Some(Some(second))) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    if hour > 23 || minute > 59 || second > 59 || fraction.len() > 9 {
        return Err(invalid());
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let nanos: u64 = match fraction.is_empty() {
        true => 0,
        false => format!("{fraction:0<9}").parse().map_err(|_| invalid())?,
    };
    let local = i64::from(day.0) * 86_400 + (hour * 3600 + minute * 60 + second) as i64;
    let utc = u64::try_from(local - offset_seconds).map_err(|_| invalid())?;
    Ok(Timestamp(utc * 1_000_000_000 + nanos))
}

/// RFC 3339 UTC with nanoseconds.
pub fn timestamp(value: Timestamp) -> String {
    const SECONDS_PER_DAY: u64 = 86_400;
    let seconds = value.0 / payu_engine::NANOS_PER_SECOND;
    let fraction = value.0 % payu_engine::NANOS_PER_SECOND;
    // u64 nanoseconds end in the year 2554, about 213 000 days: always fits a u32, and the
    // year always has four digits.
    let days = u32::try_from(seconds / SECONDS_PER_DAY).unwrap_or(u32::MAX);
    let (year, month, day) = Date(days).to_ymd();
    let of_day = seconds % SECONDS_PER_DAY;
    let (hour, minute, second) = (of_day / 3600, of_day / 60 % 60, of_day % 60);
    // Written digit by digit: this is on every write's answer, and `format!` cost several
    // times as much.
    let mut text = *b"0000-00-00T00:00:00.000000000Z";
    let fields = [
        (0, 4, u64::from(year)),
        (5, 2, u64::from(month)),
        (8, 2, u64::from(day)),
        (11, 2, hour),
        (14, 2, minute),
        (17, 2, second),
        (20, 9, fraction),
    ];
    for (start, width, value) in fields {
        put_padded(&mut text[start..start + width], value);
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// Writes `value` in decimal into all of `digits`, zero-padded on the left (its highest digits
/// are dropped if it does not fit).
fn put_padded(digits: &mut [u8], mut value: u64) {
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

pub fn kind_name(kind: AccountKind) -> &'static str {
    match kind {
        AccountKind::Customer => "customer",
        AccountKind::Merchant => "merchant",
        AccountKind::Settlement => "settlement",
        AccountKind::Pocket => "pocket",
    }
}

pub fn parse_kind(text: &str) -> Result<AccountKind, Problem> {
    match text {
        "customer" => Ok(AccountKind::Customer),
        "merchant" => Ok(AccountKind::Merchant),
        "settlement" => Ok(AccountKind::Settlement),
        _ => Err(Problem::bad_request(
            "INVALID_REQUEST",
            format!("kind: expected customer, merchant or settlement, got {text:?}"),
        )),
    }
}

pub fn status_name(status: AccountStatus) -> &'static str {
    match status {
        AccountStatus::Active => "active",
        AccountStatus::Frozen => "frozen",
        AccountStatus::Closed => "closed",
    }
}

pub fn parse_status(text: &str) -> Result<AccountStatus, Problem> {
    match text {
        "active" => Ok(AccountStatus::Active),
        "frozen" => Ok(AccountStatus::Frozen),
        "closed" => Ok(AccountStatus::Closed),
        _ => Err(Problem::bad_request(
            "INVALID_REQUEST",
            format!("status: expected active, frozen or closed, got {text:?}"),
        )),
    }
}

pub fn owner_text(owner: payu_engine::OwnerId) -> String {
    let hex = format!("{:032x}", owner.0);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

pub fn account_view(view: &AccountView) -> Value {
    json!({
        "id": view.id.0,
        "owner_id": owner_text(view.owner),
        "kind": kind_name(view.kind),
        "status": status_name(view.status),
        "tier": view.tier,
        "currency": currency_code(view.currency),
        "balance": money(view.balance, view.currency),
        "held": money(view.held, view.currency),
        "available": money(view.balance - view.held, view.currency),
        "overdraft_limit": amount(view.overdraft_limit, view.currency),
        "parent_id": view.parent.map(|p| p.0),
        "opened_at": timestamp(view.opened_at),
    })
}

pub fn pocket_view(view: &PocketView, currency: Currency) -> Value {
    json!({
        "id": view.id.0,
        "account_id": view.parent.0,
        "name": view.name,
        "target_amount": amount(view.target_amount, currency),
        "target_date": date(view.target_date),
        "is_locked": view.locked,
        "balance": money(view.balance, currency),
    })
}

/// Units of 10^-4 as an exact decimal string without trailing zeros ("1000.5", "-3", "0"):
/// the same text as `units_to_decimal(units).normalize()`, without building a `Decimal`.
pub struct UnitsText(pub i128);

/// The longest [`UnitsText`]: a sign, the 39 digits of an `i128` magnitude and a point.
pub const UNITS_TEXT_MAX: usize = 41;

impl UnitsText {
    /// The text, written backwards into `buffer` without `fmt` (five of these are on every
    /// transfer's answer).
    pub fn render<'a>(&self, buffer: &'a mut [u8; UNITS_TEXT_MAX]) -> &'a str {
        let scale = 10u64.pow(payu_engine::AMOUNT_SCALE);
        let magnitude = self.0.unsigned_abs();
        // u128 division is a library call: amounts and balances fit a u64 and skip it.
        let (whole, fraction) = match u64::try_from(magnitude) {
            Ok(magnitude) => (u128::from(magnitude / scale), magnitude % scale),
            Err(_) => (
                magnitude / u128::from(scale),
                (magnitude % u128::from(scale)) as u64,
            ),
        };
        let mut start = UNITS_TEXT_MAX;
        if fraction != 0 {
            let (mut fraction, mut digits) = (fraction, payu_engine::AMOUNT_SCALE as usize);
            while fraction % 10 == 0 {
                fraction /= 10;
                digits -= 1;
            }
            start -= digits;
            put_padded(&mut buffer[start..start + digits], fraction);
            start -= 1;
            buffer[start] = b'.';
        }
        start = put_decimal(buffer, start, whole);
        if self.0 < 0 {
            start -= 1;
            buffer[start] = b'-';
        }
        std::str::from_utf8(&buffer[start..]).expect("digits, a point and a sign are ASCII")
    }
}

/// Writes `value` in decimal so that it ends just before `end`; returns where it starts.
fn put_decimal(buffer: &mut [u8], end: usize, mut value: u128) -> usize {
    let mut start = end;
    // Only the digits above u64's range take u128 division.
    while value > u128::from(u64::MAX) {
        start -= 1;
        buffer[start] = b'0' + (value % 10) as u8;
        value /= 10;
    }
    let mut value = value as u64;
    loop {
        start -= 1;
        buffer[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return start;
        }
    }
}

impl std::fmt::Display for UnitsText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.render(&mut [0; UNITS_TEXT_MAX]))
    }
}

impl serde::Serialize for UnitsText {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.render(&mut [0; UNITS_TEXT_MAX]))
    }
}

/// `{"value": "<exact decimal>", "currency": "IDR"}`.
#[derive(serde::Serialize)]
pub struct MoneyOut {
    pub value: UnitsText,
    pub currency: &'static str,
}

impl MoneyOut {
    pub fn new(units: i128, currency: Currency) -> MoneyOut {
        MoneyOut {
            value: UnitsText(units),
            currency: currency_code(currency),
        }
    }
}

#[derive(serde::Serialize)]
pub struct PostingOut {
    pub account_id: u64,
    pub amount: MoneyOut,
    pub balance_after: MoneyOut,
}

impl PostingOut {
    pub fn new(posting: &Posting, currency: Currency) -> PostingOut {
        PostingOut {
            account_id: posting.account.0,
            amount: MoneyOut::new(i128::from(posting.amount.0), currency),
            balance_after: MoneyOut::new(posting.balance_after, currency),
        }
    }
}

/// A posted movement as the wire shows it. `created_at` is borrowed: a batch renders its
/// one timestamp once for all items.
#[derive(serde::Serialize)]
pub struct PostedOut<'a> {
    pub id: u64,
    pub kind: &'a str,
    pub status: &'static str,
    pub amount: MoneyOut,
    pub debit: PostingOut,
    pub credit: PostingOut,
    pub seq: u64,
    pub created_at: &'a str,
}

impl<'a> PostedOut<'a> {
    pub fn new(
        posted: &Posted,
        currency: Currency,
        kind: &'a str,
        seq: u64,
        created_at: &'a str,
    ) -> PostedOut<'a> {
        PostedOut {
            id: posted.txn.0,
            kind,
            status: "completed",
            amount: MoneyOut::new(i128::from(posted.debit.amount.0), currency),
            debit: PostingOut::new(&posted.debit, currency),
            credit: PostingOut::new(&posted.credit, currency),
            seq,
            created_at,
        }
    }
}

pub fn posted(posted: &Posted, currency: Currency, kind: &str, seq: u64, at: Timestamp) -> Value {
    let created_at = timestamp(at);
    serde_json::to_value(PostedOut::new(posted, currency, kind, seq, &created_at))
        .unwrap_or(Value::Null)
}

pub fn txn_kind_name(kind: TxnKind) -> &'static str {
    match kind {
        TxnKind::Deposit => "deposit",
        TxnKind::Withdrawal => "withdrawal",
        TxnKind::Transfer => "transfer",
        TxnKind::PocketMove => "pocket_move",
        TxnKind::Payment => "payment",
        TxnKind::Refund => "refund",
        TxnKind::HoldCommit => "hold_commit",
    }
}

pub fn txn_view(view: &TxnView) -> Value {
    let movement = Posted {
        txn: view.id,
        debit: view.debit,
        credit: view.credit,
    };
    let mut body = posted(
        &movement,
        view.currency,
        txn_kind_name(view.kind),
        view.seq,
        view.timestamp,
    );
    if let Some(hold) = view.hold {
        body["hold_id"] = json!(hold.0);
    }
    if let Some(payment) = view.payment {
        body["payment_id"] = json!(payment.0);
    }
    body
}

pub fn hold_change(change: &HoldChange, currency: Currency, state: &str) -> Value {
    json!({
        "id": change.hold.0,
        "account_id": change.account.0,
        "amount": amount(change.amount, currency),
        "held_after": money(change.held_after, currency),
        "state": state,
    })
}

pub fn hold_state_name(state: HoldState) -> &'static str {
    match state {
        HoldState::Active => "active",
        HoldState::Committed => "committed",
        HoldState::Released => "released",
        HoldState::Expired => "expired",
    }
}

pub fn hold_view(view: &HoldView) -> Value {
    json!({
        "id": view.id.0,
        "account_id": view.account.0,
        "destination_id": view.destination.0,
        "amount": amount(view.amount, view.currency),
        "committed": amount(view.committed, view.currency),
        "expires_at": timestamp(view.expires_at),
        "state": hold_state_name(view.state),
        "transaction_id": view.txn.map(|t| t.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(text: &str) -> Result<u64, &'static str> {
        parse_amount_text(text, "amount")
            .map(|a| a.0)
            .map_err(|p| p.code)
    }

    #[test]
    fn amounts_parse_exactly_from_numbers_and_strings() {
        assert_eq!(units("150000"), Ok(1_500_000_000));
        assert_eq!(units("\"150000.25\""), Ok(1_500_002_500));
        assert_eq!(units("0.0001"), Ok(1));
        assert_eq!(units("1.50000"), Ok(15_000)); // trailing zeros are not precision
        assert_eq!(units("1.5e3"), Ok(15_000_000));
        assert_eq!(units("\"999999999999999.9999\""), Ok(AMOUNT_UNITS_MAX));
        // 0.1 + 0.2 style values stay exact: no float ever touches them.
        assert_eq!(units("0.3"), Ok(3_000));
    }

    #[test]
    fn bad_amounts_get_stable_codes() {
        assert_eq!(units("0"), Err("INVALID_AMOUNT"));
        assert_eq!(units("-5"), Err("INVALID_AMOUNT"));
        assert_eq!(units("\"abc\""), Err("INVALID_AMOUNT"));
        assert_eq!(units("true"), Err("INVALID_AMOUNT"));
        assert_eq!(units("null"), Err("INVALID_AMOUNT"));
        assert_eq!(units("{}"), Err("INVALID_AMOUNT"));
        assert_eq!(units("\"\""), Err("INVALID_AMOUNT"));
        assert_eq!(units("1.00001"), Err("AMOUNT_TOO_PRECISE"));
        assert_eq!(units("1000000000000000"), Err("AMOUNT_OUT_OF_RANGE"));
        assert_eq!(units("1e40"), Err("INVALID_AMOUNT"));
    }

    #[test]
    fn units_render_like_a_normalised_decimal() {
        let samples = [
            0i128,
            1,
            -1,
            10,
            5_000,
            10_000,
            -10_005_000,
            1_500_002_500,
            i128::from(AMOUNT_UNITS_MAX),
            -payu_engine::BALANCE_UNITS_MAX,
        ];
        for units in samples {
            assert_eq!(
                UnitsText(units).to_string(),
                units_to_decimal(units).normalize().to_string(),
                "{units}"
            );
        }
    }

    #[test]
    fn units_beyond_decimal_range_render_like_fmt_would() {
        // `Decimal` holds 28 digits; an i128 holds 39. The old `format!`-based rendering is
        // the reference for the digits above u64's range.
        fn reference(units: i128) -> String {
            let magnitude = units.unsigned_abs();
            let sign = if units < 0 { "-" } else { "" };
            let (whole, fraction) = (magnitude / 10_000, magnitude % 10_000);
            let fraction = format!("{fraction:04}");
            let fraction = fraction.trim_end_matches('0');
            if fraction.is_empty() {
                format!("{sign}{whole}")
            } else {
                format!("{sign}{whole}.{fraction}")
            }
        }
        let samples = [
            i128::MAX,
            i128::MIN,
            i128::from(u64::MAX),
            i128::from(u64::MAX) + 1,
            -i128::from(u64::MAX) * 10_000 - 1,
            i128::from(u64::MAX) * 10_000 + 10,
        ];
        for units in samples {
            assert_eq!(UnitsText(units).to_string(), reference(units), "{units}");
            let mut buffer = [0; UNITS_TEXT_MAX];
            assert_eq!(UnitsText(units).render(&mut buffer), reference(units));
        }
        assert_eq!(UnitsText(i128::MIN).to_string().len(), UNITS_TEXT_MAX);
    }

    #[test]
    fn timestamps_render_as_rfc3339_utc() {
        assert_eq!(timestamp(Timestamp(0)), "1970-01-01T00:00:00.000000000Z");
        // 2026-11-25T04:47:08.5Z
        let at = Timestamp(1_795_582_028_500_000_000);
        assert_eq!(timestamp(at), "2026-11-25T04:47:08.500000000Z");
        // The last instant u64 nanoseconds hold.
        assert_eq!(
            timestamp(Timestamp(u64::MAX)),
            "2554-07-21T23:34:33.709551615Z"
        );
        assert_eq!(
            timestamp(Timestamp(999_999_999)),
            "1970-01-01T00:00:00.999999999Z"
        );
    }

    #[test]
    fn rfc3339_times_parse_to_utc() {
        let parse = |text| parse_timestamp(text, "t").map(|t| t.0).map_err(|p| p.code);
        let at = 1_795_582_028_500_000_000;
        assert_eq!(parse("2026-11-25T04:47:08.5Z"), Ok(at));
        assert_eq!(parse("2026-11-25T11:47:08.500+07:00"), Ok(at));
        assert_eq!(parse("2026-11-24T23:47:08.5-05:00"), Ok(at));
        assert_eq!(timestamp(Timestamp(at)), "2026-11-25T04:47:08.500000000Z");
        for bad in [
            "2026-11-25",
            "2026-11-25T25:00:00Z",
            "2026-13-01T00:00:00Z",
            "x",
            "2026-11-25T04:47:08.1234567890Z",
            "2026-11-25T04:47:08",
        ] {
            assert_eq!(parse(bad), Err("INVALID_REQUEST"), "{bad}");
        }
    }

    #[test]
    fn owner_ids_render_as_uuids() {
        let owner = payu_engine::OwnerId(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(owner_text(owner), "01234567-89ab-cdef-0123-456789abcdef");
    }
}
