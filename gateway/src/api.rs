//! The HTTP API (DESIGN.md §6): routes, authentication and authorisation, validation, and the
//! mapping of durable outcomes to answers. Writes go through the ring; reads come from the read
//! model after it has caught up with everything durable when the request arrived, so a client
//! always reads its own acknowledged writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Router, extract::DefaultBodyLimit};
use payu_engine::{
    AccountId, AccountKind, Amount, BATCH_TRANSFERS_MAX, BatchItem, Command, CommandBody,
    CommandResult, Currency, Deposit, HoldCommit, HoldExpiry, HoldId, HoldRelease, HoldReserve,
    IdempotencyKey, NANOS_PER_SECOND, OpenAccount, OpenPocket, Outcome, OutcomeSummary, OwnerId,
    Payment, PocketDirection, PocketMove, Refund, Timestamp, Transfer, TxnId, UpdateAccount,
    Withdrawal,
};
use payu_journal::{Entry, Readers, StorageReader, decode_entry};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::auth::{Authenticator, Principal, Scopes};
use crate::metrics::{Gauge, Metrics};
use crate::pipeline::{PipelineStatus, Reply, SubmitError, Submitter};
use crate::ratelimit::RateLimiter;
use crate::readmodel::ReadModel;
use crate::wire::{self, MoneyIn, PostedOut, Problem, json_response, parse_body, parse_money};

/// The OpenAPI document, kept in docs/ and served at /openapi.json.
pub const OPENAPI_JSON: &str = include_str!("../../docs/openapi.json");
/// Longest Idempotency-Key accepted, in bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;
/// How long a query waits for the read model to reach what was durable when it arrived.
const READ_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(2);
/// Journal lookups for replayed batches running at once (each may read through most of a
/// segment); further replays wait for a turn.
const REPLAY_READS_MAX: usize = 2;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Reads a journaled command and its outcome back by seq: blocking file reads, for the rare
/// idempotent replay whose original answer the read model does not hold (a batch's items).
pub trait JournalLookup: Send + Sync {
    fn entry(&self, seq: u64) -> Result<(Timestamp, Entry), String>;
}

impl<R: StorageReader> JournalLookup for Readers<R> {
    fn entry(&self, seq: u64) -> Result<(Timestamp, Entry), String> {
        let (header, payload) = self.record(seq).map_err(|error| error.to_string())?;
        let entry = decode_entry(&payload)?;
        Ok((Timestamp(header.timestamp), entry))
    }
}

/// What every handler shares.
pub struct App {
    pub submitter: Submitter,
    pub pipeline: Arc<PipelineStatus>,
    pub read: Arc<ReadModel>,
    pub auth: Authenticator,
    pub limiter: RateLimiter,
    pub metrics: Arc<Metrics>,
    pub request_timeout: Duration,
    pub in_flight: Semaphore,
    journal: Arc<dyn JournalLookup>,
    replay_reads: Semaphore,
    /// Set on SIGTERM: /readyz fails so balancers stop sending, new writes get 503.
    pub draining: AtomicBool,
    pub started: Instant,
    pub info: NodeInfo,
    next_request_id: AtomicU64,
}

/// Static facts for /v1/admin/status.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub data_dir: String,
    pub flush_backend: &'static str,
    pub epoch: u64,
    pub body_limit_bytes: usize,
    /// The durable seq at start-up: the node is ready once its read model has replayed that
    /// far (queries before then would answer 503 READ_MODEL_BEHIND).
    pub ready_after_seq: u64,
}

impl App {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        submitter: Submitter,
        read: Arc<ReadModel>,
        auth: Authenticator,
        limiter: RateLimiter,
        metrics: Arc<Metrics>,
        request_timeout: Duration,
        in_flight_max: usize,
        journal: Arc<dyn JournalLookup>,
        info: NodeInfo,
    ) -> App {
        App {
            pipeline: Arc::clone(submitter.status()),
            submitter,
            read,
            auth,
            limiter,
            metrics,
            request_timeout,
            in_flight: Semaphore::new(in_flight_max),
            journal,
            replay_reads: Semaphore::new(REPLAY_READS_MAX),
            draining: AtomicBool::new(false),
            started: Instant::now(),
            info,
            next_request_id: AtomicU64::new(0),
        }
    }
}

type Shared = Arc<App>;
type Answer = Result<Response, Problem>;

/// Every route, as (method, path template); /openapi.json documents exactly these.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("POST", "/v1/accounts"),
    ("GET", "/v1/accounts/{id}"),
    ("PATCH", "/v1/accounts/{id}"),
    ("POST", "/v1/accounts/{id}/pockets"),
    ("GET", "/v1/accounts/{id}/pockets"),
    ("GET", "/v1/accounts/{id}/transactions"),
    ("POST", "/v1/pockets/{id}/moves"),
    ("POST", "/v1/deposits"),
    ("POST", "/v1/withdrawals"),
    ("POST", "/v1/transfers"),
    ("POST", "/v1/transfers/batch"),
    ("POST", "/v1/payments"),
    ("POST", "/v1/payments/{id}/refunds"),
    ("POST", "/v1/holds"),
    ("GET", "/v1/holds/{id}"),
    ("POST", "/v1/holds/{id}/commit"),
    ("POST", "/v1/holds/{id}/release"),
    ("GET", "/v1/transactions/{id}"),
    ("GET", "/v1/admin/status"),
];

pub fn router(app: Shared, body_limit: usize) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/v1/accounts", post(open_account))
        .route("/v1/accounts/{id}", get(get_account).patch(update_account))
        .route(
            "/v1/accounts/{id}/pockets",
            post(open_pocket).get(list_pockets),
        )
        .route("/v1/accounts/{id}/transactions", get(history))
        .route("/v1/pockets/{id}/moves", post(pocket_move))
        .route("/v1/deposits", post(deposit))
        .route("/v1/withdrawals", post(withdrawal))
        .route("/v1/transfers", post(transfer))
        .route("/v1/transfers/batch", post(transfer_batch))
        .route("/v1/payments", post(payment))
        .route("/v1/payments/{id}/refunds", post(refund))
        .route("/v1/holds", post(hold_reserve))
        .route("/v1/holds/{id}", get(get_hold))
        .route("/v1/holds/{id}/commit", post(hold_commit))
        .route("/v1/holds/{id}/release", post(hold_release))
        .route("/v1/transactions/{id}", get(get_transaction))
        .route("/v1/admin/status", get(admin_status))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(Arc::clone(&app), observe))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(app)
}

/// Per request: X-Request-ID, the in-flight bound, the time limit, metrics and a log line.
async fn observe(State(app): State<Shared>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    // A clone of the matched path is a reference count, not a copy of the text.
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("other", MatchedPath::as_str);
    let request_id = request
        .headers()
        .get(&X_REQUEST_ID)
        .filter(|value| !value.is_empty() && value.len() <= 128)
        .cloned()
        .unwrap_or_else(|| {
            let n = app.next_request_id.fetch_add(1, Ordering::Relaxed);
            let uptime = started.saturating_duration_since(app.started).as_nanos() as u64;
            fresh_request_id(uptime, n)
        });
    let mut response = match app.in_flight.try_acquire() {
        Err(_) => {
            // Read (and drop) the body first: answering with it unread makes the server
            // close the connection under the client, which then sees a reset, not the 503.
            // Bounded by the body limit and the request time limit.
            let body = axum::body::to_bytes(request.into_body(), app.info.body_limit_bytes);
            let _ = tokio::time::timeout(app.request_timeout, body).await;
            Problem::unavailable(
                "OVERLOADED",
                "too many requests in flight; retry shortly",
                1,
            )
            .into_response()
        }
        Ok(_permit) => match tokio::time::timeout(app.request_timeout, next.run(request)).await {
            Ok(response) => response,
            Err(_) => Problem::unavailable(
                "REQUEST_TIMEOUT",
                "no answer within the time limit; if this moved money, retry with the same \
                 Idempotency-Key to learn the outcome",
                1,
            )
            .into_response(),
        },
    };
    if response.status().is_client_error() && !is_json(&response) {
        response = plain_rejection_as_problem(response.status()).into_response();
    }
    let status = response.status();
    response
        .headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id.clone());
    let latency = started.elapsed();
    app.metrics
        .http_request(method.as_str(), route, status.as_u16(), latency);
    if status.is_server_error() {
        tracing::warn!(request_id = ?request_id, %method, route, status = status.as_u16(), "request failed");
    } else {
        tracing::debug!(request_id = ?request_id, %method, route, status = status.as_u16(), latency_us = latency.as_micros() as u64, "request");
    }
    response
}

/// The longest id [`fresh_request_id`] makes: two u64s in hex and a dash.
const FRESH_REQUEST_ID_MAX: usize = 33;

/// An id for a request that brought none: the node's uptime in nanoseconds (mixed with a
/// constant) and a counter, in lowercase hex, as in "1f3a9c04-2b". Marked sensitive, so that
/// HTTP/2 sends it as a literal and does not fill both ends' header tables with values that
/// never repeat.
fn fresh_request_id(uptime_nanos: u64, n: u64) -> HeaderValue {
    let mut text = [0u8; FRESH_REQUEST_ID_MAX];
    let mut length = put_hex(&mut text, 0, uptime_nanos ^ 0x9e37);
    text[length] = b'-';
    length = put_hex(&mut text, length + 1, n);
    let mut value =
        HeaderValue::from_bytes(&text[..length]).unwrap_or(HeaderValue::from_static("unknown"));
    value.set_sensitive(true);
    value
}

/// Writes `value` in lowercase hex without leading zeros at `at`; returns where it ends.
fn put_hex(text: &mut [u8], at: usize, value: u64) -> usize {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let length = (64 - value.leading_zeros() as usize).div_ceil(4).max(1);
    for (place, digit) in text[at..at + length].iter_mut().rev().enumerate() {
        *digit = DIGITS[(value >> (4 * place) & 0xf) as usize];
    }
    at + length
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.contains("json"))
}

/// axum's own rejections (a body over the limit, an unreadable body) are plain text; every
/// error this node answers is problem+json with a stable code.
fn plain_rejection_as_problem(status: StatusCode) -> Problem {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => Problem::new(
            status,
            "PAYLOAD_TOO_LARGE",
            "the request body exceeds the node's limit",
        ),
        _ => Problem::new(status, "INVALID_REQUEST", "the request could not be read"),
    }
}

async fn not_found() -> Problem {
    Problem::not_found("NOT_FOUND", "no such route")
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        "this route does not take that method",
    )
}

// ---- operations -------------------------------------------------------------------------

async fn healthz(State(app): State<Shared>) -> Response {
    match app.pipeline.failed.load(Ordering::Acquire) {
        false => json_response(StatusCode::OK, json!({"status": "ok"})),
        true => Problem::unavailable("PIPELINE_FAILED", "the engine pipeline stopped", 1)
            .into_response(),
    }
}

async fn readyz(State(app): State<Shared>) -> Response {
    if app.pipeline.failed.load(Ordering::Acquire) {
        return Problem::unavailable("PIPELINE_FAILED", "the engine pipeline stopped", 1)
            .into_response();
    }
    if app.draining.load(Ordering::Acquire) {
        return Problem::unavailable("DRAINING", "the node is shutting down", 1).into_response();
    }
    let replayed = app.read.applied_seq();
    if replayed < app.info.ready_after_seq {
        return Problem::unavailable(
            "READ_MODEL_BEHIND",
            format!(
                "replaying the journal into the read model: {replayed} of {}",
                app.info.ready_after_seq
            ),
            1,
        )
        .into_response();
    }
    json_response(
        StatusCode::OK,
        json!({"status": "ready", "role": "primary", "durable_seq": app.pipeline.durable_seq.load(Ordering::Acquire)}),
    )
}

async fn metrics(State(app): State<Shared>) -> Response {
    let durable = app.pipeline.durable_seq.load(Ordering::Acquire);
    let applied = app.read.applied_seq();
    app.metrics.set_gauge(Gauge::JournalDurableSeq, durable);
    app.metrics.set_gauge(Gauge::ReadModelAppliedSeq, applied);
    app.metrics
        .set_gauge(Gauge::ReadModelLagRecords, durable.saturating_sub(applied));
    app.metrics.set_gauge(
        Gauge::SnapshotSeq,
        app.pipeline.snapshot_seq.load(Ordering::Relaxed),
    );
    app.metrics
        .set_gauge(Gauge::Accounts, app.read.stats().accounts);
    app.metrics.ring(
        app.pipeline.ring_occupancy(),
        app.pipeline.ring_capacity.load(Ordering::Relaxed),
    );
    let mut response = app.metrics.render().into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

async fn openapi() -> Response {
    let mut response = OPENAPI_JSON.into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

async fn admin_status(State(app): State<Shared>, headers: HeaderMap) -> Answer {
    let principal = app.authenticate(&headers)?;
    require(&principal, Scopes::ADMIN.union(Scopes::OPERATOR))?;
    app.limit(&principal, 1)?;
    let status = &app.pipeline;
    let stats = app.read.stats();
    Ok(json_response(
        StatusCode::OK,
        json!({
            "role": "primary",
            "epoch": app.info.epoch,
            "ready": !app.draining.load(Ordering::Acquire) && !status.failed.load(Ordering::Acquire),
            "applied_seq": status.applied_seq.load(Ordering::Acquire),
            "durable_seq": status.durable_seq.load(Ordering::Acquire),
            "snapshot_seq": status.snapshot_seq.load(Ordering::Acquire),
            "read_model_seq": stats.applied_seq,
            "accounts": stats.accounts,
            "ring": {"capacity": status.ring_capacity.load(Ordering::Relaxed), "occupancy": status.ring_occupancy()},
            "journal": {"flush_backend": app.info.flush_backend},
            "replication": {"mode": "none"},
            "data_dir": app.info.data_dir,
            "uptime_seconds": app.started.elapsed().as_secs(),
            "version": env!("CARGO_PKG_VERSION"),
        }),
    ))
}

// ---- authentication, authorisation, idempotency -------------------------------------------

/// Whether the principal holds at least one of `any_of`.
fn has_any(principal: &Principal, any_of: Scopes) -> bool {
    [
        Scopes::CUSTOMER,
        Scopes::OPERATOR,
        Scopes::SYSTEM,
        Scopes::ADMIN,
    ]
    .into_iter()
    .any(|scope| any_of.contains(scope) && principal.scopes.contains(scope))
}

fn require(principal: &Principal, any_of: Scopes) -> Result<(), Problem> {
    match has_any(principal, any_of) {
        true => Ok(()),
        false => Err(Problem::forbidden(format!(
            "this needs one of the scopes: {}",
            any_of.names().join(" ")
        ))),
    }
}

/// Scopes that act for any owner.
/// (`payu:admin` is for the admin endpoints only: it moves and reads no money.)
const TRUSTED: Scopes = Scopes::SYSTEM.union(Scopes::OPERATOR);
/// Scopes that may move money at all.
const MOVERS: Scopes = Scopes::CUSTOMER
    .union(Scopes::SYSTEM)
    .union(Scopes::OPERATOR);

impl App {
    fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, Problem> {
        let header = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        let principal = self.auth.authenticate(header).map_err(|error| {
            let mut problem = Problem::new(StatusCode::UNAUTHORIZED, error.code(), error.detail());
            problem
                .extra
                .push(("auth_error", json!(format!("{error:?}"))));
            problem
        })?;
        Ok(principal)
    }

    fn limit(&self, principal: &Principal, cost: u32) -> Result<(), Problem> {
        self.limiter
            .check(&principal.client_id, cost, Instant::now())
            .map_err(|retry| {
                let mut problem = Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "RATE_LIMITED",
                    "this client's rate limit is exceeded",
                );
                problem.retry_after = Some(retry.as_secs().max(1));
                problem
            })
    }

    /// Waits until the read model holds everything that was durable when this was called,
    /// so a client reads its own acknowledged writes. A read model still rebuilding after a
    /// restart answers 503 rather than stale data.
    async fn catch_up(&self) -> Result<(), Problem> {
        let durable = self.pipeline.durable_seq.load(Ordering::Acquire);
        if self.read.applied_seq() >= durable
            || self.read.wait_for(durable, READ_CATCH_UP_TIMEOUT).await
        {
            return Ok(());
        }
        Err(Problem::unavailable(
            "READ_MODEL_BEHIND",
            format!(
                "the read model is at seq {} of {durable}; retry shortly",
                self.read.applied_seq()
            ),
            1,
        ))
    }

    /// The account, if this principal may see it (customers see only their own; others get
    /// the same 404 as for a missing account, so ids of other owners do not leak).
    async fn visible_account(
        &self,
        principal: &Principal,
        id: AccountId,
    ) -> Result<crate::readmodel::AccountView, Problem> {
        self.catch_up().await?;
        match self.read.account(id) {
            Some(view)
                if has_any(principal, TRUSTED)
                    || (has_any(principal, Scopes::CUSTOMER) && view.owner == principal.owner) =>
            {
                Ok(view)
            }
            _ => Err(Problem::not_found(
                "ACCOUNT_NOT_FOUND",
                format!("no account {}", id.0),
            )),
        }
    }

    /// A customer moves money only out of its own accounts; trusted scopes out of any.
    async fn authorize_debit(&self, principal: &Principal, from: AccountId) -> Result<(), Problem> {
        require(principal, MOVERS)?;
        if has_any(principal, TRUSTED) {
            return Ok(());
        }
        self.visible_account(principal, from).await.map(|_| ())
    }

    /// Publishes a command and waits for its durable outcome.
    async fn execute(&self, command: Command) -> Result<Reply, Problem> {
        if self.draining.load(Ordering::Acquire) {
            return Err(Problem::unavailable(
                "DRAINING",
                "the node is shutting down",
                1,
            ));
        }
        let receiver = self
            .submitter
            .submit(command)
            .map_err(|error| match error {
                SubmitError::Full => {
                    self.metrics.ring_full();
                    Problem::unavailable(
                        "RING_FULL",
                        "the node is at capacity; retry shortly with the same Idempotency-Key",
                        1,
                    )
                }
                SubmitError::Closed => {
                    Problem::unavailable("DRAINING", "the node is not accepting writes", 1)
                }
            })?;
        match receiver.await {
            Ok(Ok(reply)) => Ok(reply),
            // The pipeline logged the cause; a 5xx body says nothing internal.
            Ok(Err(_failed)) => Err(Problem::unavailable(
                "NOT_DURABLE",
                "the outcome could not be made durable; retry with the same Idempotency-Key",
                1,
            )),
            Err(_) => Err(Problem::unavailable(
                "NOT_DURABLE",
                "the engine stopped before answering; retry with the same Idempotency-Key",
                1,
            )),
        }
    }
}

/// The engine's idempotency key: the client's key, scoped to the client, hashed to 128 bits.
/// Required on money-moving POSTs; other POSTs get a fresh one when they carry none.
fn idempotency_key(
    headers: &HeaderMap,
    principal: &Principal,
    required: bool,
) -> Result<IdempotencyKey, Problem> {
    let Some(value) = headers.get(&IDEMPOTENCY_KEY) else {
        if required {
            return Err(Problem::bad_request(
                "IDEMPOTENCY_KEY_REQUIRED",
                "money-moving requests need an Idempotency-Key header",
            ));
        }
        let mut fresh = [0u8; 16];
        getrandom::fill(&mut fresh)
            .map_err(|error| Problem::unavailable("ENTROPY_UNAVAILABLE", error.to_string(), 1))?;
        return Ok(IdempotencyKey(u128::from_le_bytes(fresh)));
    };
    let key = value.as_bytes();
    if key.is_empty()
        || key.len() > IDEMPOTENCY_KEY_BYTES_MAX
        || !key.iter().all(|b| b.is_ascii_graphic())
    {
        return Err(Problem::bad_request(
            "INVALID_IDEMPOTENCY_KEY",
            format!(
                "Idempotency-Key must be 1..={IDEMPOTENCY_KEY_BYTES_MAX} visible ASCII characters"
            ),
        ));
    }
    let mut scoped = Vec::with_capacity(principal.client_id.len() + 1 + key.len());
    scoped.extend_from_slice(principal.client_id.as_bytes());
    scoped.push(0);
    scoped.extend_from_slice(key);
    Ok(IdempotencyKey(xxhash_rust::xxh3::xxh3_128(&scoped)))
}

fn path_id(
    raw: Result<Path<String>, axum::extract::rejection::PathRejection>,
    what: &'static str,
) -> Result<u64, Problem> {
    let Path(text) =
        raw.map_err(|error| Problem::bad_request("INVALID_REQUEST", error.body_text()))?;
    text.parse::<u64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| {
            Problem::bad_request(
                "INVALID_REQUEST",
                format!("{what} must be a positive integer id"),
            )
        })
}

type RawPath = Result<Path<String>, axum::extract::rejection::PathRejection>;

// ---- outcome rendering ---------------------------------------------------------------------

/// What a posted movement looks like on the wire.
fn posted_response(reply: &Reply, currency: Currency, kind: &str) -> Answer {
    match &reply.outcome.result {
        CommandResult::Posted(posted) => {
            let created_at = wire::timestamp(reply.timestamp);
            Ok(wire::typed_response(
                StatusCode::CREATED,
                &PostedOut::new(posted, currency, kind, reply.seq, &created_at),
            ))
        }
        other => non_posted(reply, other),
    }
}

/// Rejections and idempotent replays, which every write route answers the same way.
fn non_posted(reply: &Reply, result: &CommandResult) -> Answer {
    match result {
        CommandResult::Rejected(code) => Err(Problem::rejected(*code, reply.seq)),
        other => {
            tracing::error!(seq = reply.seq, outcome = ?other, "an outcome that does not fit the route");
            Err(Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNEXPECTED_OUTCOME",
                "the ledger answered in a way this route does not expect",
            ))
        }
    }
}

impl App {
    /// Answers a write: the outcome, or for a replay the original outcome as the read model
    /// holds it, marked with `Idempotent-Replayed: true`.
    async fn answer(&self, reply: Reply, render: impl FnOnce(&Reply) -> Answer) -> Answer {
        let CommandResult::Replayed {
            original_seq,
            original,
        } = reply.outcome.result
        else {
            return render(&reply);
        };
        if !self
            .read
            .wait_for(original_seq, READ_CATCH_UP_TIMEOUT)
            .await
        {
            return Err(Problem::unavailable(
                "READ_MODEL_BEHIND",
                "this key was already used; its original answer is not readable yet, retry shortly",
                1,
            ));
        }
        let mut answer = self.replayed(original_seq, original).await;
        let response = match &mut answer {
            Ok(response) => response,
            Err(_) => {
                return answer.map_err(|problem| problem.with("replayed", json!(true)));
            }
        };
        response.headers_mut().insert(
            IDEMPOTENT_REPLAYED.clone(),
            HeaderValue::from_static("true"),
        );
        answer
    }

    async fn replayed(&self, seq: u64, original: OutcomeSummary) -> Answer {
        let gone = || {
            Problem::new(
                StatusCode::CONFLICT,
                "REPLAY_UNAVAILABLE",
                format!("this key was already used (seq {seq}); its result is no longer kept"),
            )
        };
        let body = match original {
            OutcomeSummary::Rejected(code) => return Err(Problem::rejected(code, seq)),
            OutcomeSummary::Posted(txn) => {
                wire::txn_view(&self.read.transaction(txn).ok_or_else(gone)?)
            }
            OutcomeSummary::AccountOpened(id) | OutcomeSummary::AccountUpdated(id) => {
                wire::account_view(&self.read.account(id).ok_or_else(gone)?)
            }
            OutcomeSummary::PocketOpened(id) => {
                let pocket = self.read.pocket(id).ok_or_else(gone)?;
                let currency = self
                    .read
                    .account(id)
                    .map(|a| a.currency)
                    .unwrap_or(Currency::IDR);
                wire::pocket_view(&pocket, currency)
            }
            OutcomeSummary::Batch { posted, rejected } => {
                return self.replayed_batch(seq, posted, rejected).await;
            }
            OutcomeSummary::HoldReserved(hold) | OutcomeSummary::HoldReleased(hold) => {
                wire::hold_view(&self.read.hold(hold).ok_or_else(gone)?)
            }
            OutcomeSummary::HoldCommitted { hold, .. } => {
                wire::hold_view(&self.read.hold(hold).ok_or_else(gone)?)
            }
        };
        let status = match original {
            OutcomeSummary::AccountUpdated(_) => StatusCode::OK,
            OutcomeSummary::HoldReleased(_) | OutcomeSummary::HoldCommitted { .. } => {
                StatusCode::OK
            }
            _ => StatusCode::CREATED,
        };
        Ok(json_response(status, body))
    }

    /// A replayed batch answers the original per-item results, read back from the journal
    /// record `seq` (the read model keeps postings, not rejected items). Once retention has
    /// removed that record, only the counts are left to answer.
    async fn replayed_batch(&self, seq: u64, posted: u32, rejected: u32) -> Answer {
        let read = match self.replay_reads.acquire().await {
            Ok(_permit) => {
                let journal = Arc::clone(&self.journal);
                tokio::task::spawn_blocking(move || journal.entry(seq))
                    .await
                    .unwrap_or_else(|error| Err(format!("journal lookup stopped: {error}")))
            }
            Err(closed) => Err(closed.to_string()),
        };
        match read {
            Ok((
                timestamp,
                Entry {
                    command:
                        Command {
                            body: CommandBody::TransferBatch(transfers),
                            ..
                        },
                    outcome:
                        Outcome {
                            result: CommandResult::Batch(items),
                            ..
                        },
                },
            )) => batch_answer(seq, timestamp, &items, transfers.iter().map(|t| t.currency)),
            Ok((_, entry)) => {
                tracing::error!(seq, command = ?entry.command.body, "a replayed batch's record holds another command");
                Ok(batch_counts_only(seq, posted, rejected))
            }
            Err(reason) => {
                tracing::warn!(seq, %reason, "replayed batch: per-item results not readable");
                Ok(batch_counts_only(seq, posted, rejected))
            }
        }
    }
}

/// A replayed batch whose record could not be read back (retention retired it, or the read
/// failed): the counts the engine's window keeps.
fn batch_counts_only(seq: u64, posted: u32, rejected: u32) -> Response {
    json_response(
        StatusCode::OK,
        json!({"seq": seq, "posted": posted, "rejected": rejected, "results": Value::Null,
               "detail": "replayed batch: the original per-item results are no longer readable from the journal, so only the counts are answered"}),
    )
}

/// The answer to a batch: one result per item, in order. The original answer and a replay
/// (from the journaled outcome) are built here alike, so they are the same bytes.
fn batch_answer(
    seq: u64,
    timestamp: Timestamp,
    items: &[BatchItem],
    currencies: impl Iterator<Item = Currency>,
) -> Answer {
    let created_at = wire::timestamp(timestamp);
    let results: Vec<BatchResultOut> = items
        .iter()
        .zip(currencies)
        .enumerate()
        .map(|(index, (item, currency))| match item {
            BatchItem::Posted(p) => BatchResultOut::Posted {
                index,
                status: "posted",
                transaction: PostedOut::new(p, currency, "transfer", seq, &created_at),
            },
            BatchItem::Rejected(code) => BatchResultOut::Rejected {
                index,
                status: "rejected",
                code: code.code(),
            },
        })
        .collect();
    let posted = items
        .iter()
        .filter(|item| matches!(item, BatchItem::Posted(_)))
        .count();
    Ok(wire::typed_response(
        StatusCode::OK,
        &BatchOut {
            seq,
            posted,
            rejected: items.len() - posted,
            results,
        },
    ))
}

// ---- accounts and pockets ------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenAccountIn {
    kind: String,
    owner_id: Option<String>,
    #[serde(default)]
    tier: u8,
    #[serde(default = "idr")]
    currency: String,
    overdraft_limit: Option<MoneyIn>,
}

fn idr() -> String {
    "IDR".into()
}

fn parse_owner(text: &str) -> Result<OwnerId, Problem> {
    crate::auth::uuid_value(text).map(OwnerId).ok_or_else(|| {
        Problem::bad_request(
            "INVALID_REQUEST",
            "owner_id: expected a hyphenated UUID (8-4-4-4-12 hex digits)",
        )
    })
}

async fn open_account(State(app): State<Shared>, headers: HeaderMap, body: Bytes) -> Answer {
    let principal = app.authenticate(&headers)?;
    app.limit(&principal, 1)?;
    let input: OpenAccountIn = parse_body(&body)?;
    let kind = wire::parse_kind(&input.kind)?;
    let currency = Currency::from_alpha(&input.currency).ok_or_else(|| {
        Problem::unprocessable(
            "UNSUPPORTED_CURRENCY",
            format!("currency {:?} is not supported", input.currency),
        )
    })?;
    let overdraft_limit = match &input.overdraft_limit {
        Some(money) => wire::parse_limit(money, "overdraft_limit")?,
        None => Amount::ZERO,
    };
    let owner = match &input.owner_id {
        Some(text) => parse_owner(text)?,
        None => principal.owner,
    };
    let trusted = has_any(&principal, TRUSTED);
    if !trusted {
        require(&principal, Scopes::CUSTOMER)?;
        if kind != AccountKind::Customer
            || owner != principal.owner
            || input.tier != 0
            || overdraft_limit != Amount::ZERO
        {
            return Err(Problem::forbidden(
                "customers open tier-0 customer accounts for themselves; other kinds, tiers and overdrafts need an operator",
            ));
        }
    } else if kind == AccountKind::Settlement {
        require(&principal, Scopes::OPERATOR)?;
    }
    let key = idempotency_key(&headers, &principal, false)?;
    let command = Command {
        key,
        body: CommandBody::OpenAccount(OpenAccount {
            owner,
            kind,
            tier: input.tier,
            currency,
            overdraft_limit,
        }),
    };
    let reply = app.execute(command).await?;
    app.answer(reply, |reply| match &reply.outcome.result {
        CommandResult::AccountOpened { account } => Ok(json_response(
            StatusCode::CREATED,
            json!({
                "id": account.0, "owner_id": wire::owner_text(owner), "kind": wire::kind_name(kind),
                "status": "active", "tier": input.tier, "currency": wire::currency_code(currency),
                "balance": wire::money(0, currency), "held": wire::money(0, currency),
                "available": wire::money(0, currency),
                "overdraft_limit": wire::amount(overdraft_limit, currency), "parent_id": Value::Null,
                "opened_at": wire::timestamp(reply.timestamp), "seq": reply.seq,
            }),
        )),
        other => non_posted(reply, other),
    })
    .await
}

async fn get_account(State(app): State<Shared>, headers: HeaderMap, id: RawPath) -> Answer {
    let principal = app.authenticate(&headers)?;
    app.limit(&principal, 1)?;
    let id = AccountId(path_id(id, "account id")?);
    let view = app.visible_account(&principal, id).await?;
    let mut body = wire::account_view(&view);
    let pockets: Vec<Value> = app
        .read
        .pockets(id)
        .iter()
        .map(|p| wire::pocket_view(p, view.currency))
        .collect();
    body["pockets"] = Value::Array(pockets);
    Ok(json_response(StatusCode::OK, body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateAccountIn {
    status: Option<String>,
    tier: Option<u8>,
    overdraft_limit: Option<MoneyIn>,
}

async fn update_account(
    State(app): State<Shared>,
    headers: HeaderMap,
    id: RawPath,
    body: Bytes,
) -> Answer {
    let principal = app.authenticate(&headers)?;
    require(&principal, Scopes::OPERATOR)?;
    app.limit(&principal, 1)?;
    let id = AccountId(path_id(id, "account id")?);
    let input: UpdateAccountIn = parse_body(&body)?;
    let status = input
        .status
        .as_deref()
        .map(wire::parse_status)
        .transpose()?;
    let overdraft_limit = match &input.overdraft_limit {
        Some(money) => Some(wire::parse_limit(money, "overdraft_limit")?),
        None => None,
    };
    if status.is_none() && input.tier.is_none() && overdraft_limit.is_none() {
        return Err(Problem::bad_request(
            "INVALID_REQUEST",
            "nothing to update: give status, tier or overdraft_limit",
        ));
    }
    let key = idempotency_key(&headers, &principal, false)?;
    let command = Command {
        key,
        body: CommandBody::UpdateAccount(UpdateAccount {
            account: id,
            status,
            tier: input.tier,
            overdraft_limit,
        }),
    };
    let reply = app.execute(command).await?;
    let read = Arc::clone(&app.read);
    // The answer is the account as updated: wait for the read model to hold this record.
    let caught_up = read.wait_for(reply.seq, READ_CATCH_UP_TIMEOUT).await;
    app.answer(reply, |reply| match &reply.outcome.result {
        CommandResult::AccountUpdated { account } => {
            let behind = || {
                Problem::unavailable(
                    "READ_MODEL_BEHIND",
                    "updated; the read model has not caught up yet, GET the account shortly",
                    1,
                )
            };
            let view = read
                .account(*account)
                .filter(|_| caught_up)
                .ok_or_else(behind)?;
            Ok(json_response(StatusCode::OK, wire::account_view(&view)))
        }
        other => non_posted(reply, other),
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenPocketIn {
    name: String,
    target_amount: MoneyIn,
    target_date: String,
    #[serde(default)]
    is_locked: bool,
}

async fn open_pocket(
    State(app): State<Shared>,
    headers: HeaderMap,
    id: RawPath,
    body: Bytes,
) -> Answer {
    let principal = app.authenticate(&headers)?;
    app.limit(&principal, 1)?;
    let parent = AccountId(path_id(id, "account id")?);
    let input: OpenPocketIn = parse_body(&body)?;
    let (target_amount, currency) = parse_money(&input.target_amount, "target_amount")?;
    let target_date = wire::parse_date(&input.target_date, "target_date")?;
    app.authorize_debit(&principal, parent).await?;
    let key = idempotency_key(&headers, &principal, false)?;
    let command = Command {
        key,
        body: CommandBody::OpenPocket(OpenPocket {
            parent,
            name: input.name.clone(),
            target_amount,
            target_date,
            locked: input.is_locked,
        }),
    };
    let reply = app.execute(command).await?;
    app.answer(reply, |reply| match &reply.outcome.result {
        CommandResult::PocketOpened { pocket } => Ok(json_response(
            StatusCode::CREATED,
            json!({
                "id": pocket.0, "account_id": parent.0, "name": input.name,
                "target_amount": wire::amount(target_amount, currency),
                "target_date": wire::date(target_date), "is_locked": input.is_locked,
                "balance": wire::money(0, currency), "seq": reply.seq,
            }),
        )),
        other => non_posted(reply, other),
    })
    .await
}

async fn list_pockets(State(app): State<Shared>, headers: HeaderMap, id: RawPath) -> Answer {
    let principal = app.authenticate(&headers)?;
    app.limit(&principal, 1)?;
    let id = AccountId(path_id(id, "account id")?);
    let view = app.visible_account(&principal, id).await?;
    let pockets: Vec<Value> = app
        .read
        .pockets(id)
        .iter()
        .map(|p| wire::pocket_view(p, view.currency))
        .collect();
    Ok(json_response(StatusCode::OK, json!({ "pockets": pockets })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PocketMoveIn {
    direction: String,
    amount: MoneyIn,
}

async fn pocket_move(
    State(app): State<Shared>,
    headers: HeaderMap,
    id: RawPath,
    body: Bytes,
) -> Answer {
    let principal = app.authenticate(&headers)?;
    app.limit(&principal, 1)?;
    let key = idempotency_key(&headers, &principal, true)?;
    let pocket = AccountId(path_id(id, "pocket id")?);
    let input: PocketMoveIn = parse_body(&body)?;
    let direction = match input.direction.as_str() {
        "in" => PocketDirection::In,
        "out" => PocketDirection::Out,
        other => {
            return Err(Problem::bad_request(
                "INVALID_REQUEST",
                format!("direction: expected in or out, got {other:?}"),
            ));
        }
    };
    let (amount, currency) = parse_money(&input.amount, "amount")?;
    // Both directions move the owner's own money: the pocket belongs to the account.
    app.authorize_debit(&principal, pocket).await?;
    let command = Command {
        key,
        body: CommandBody::PocketMove(PocketMove {
            pocket,
            direction,
            amount,
            currency,
        }),
    };
    let reply = app.execute(command).await?;
    app.answer(reply, |reply| {
        posted_response(reply, currency, "pocket_move")
    })
    .await
}

#[derive(Deserialize)]
struct HistoryQuery {
    limit: Option<usize>,
    cursor: Option<u64>,
}

async fn history(
    State(app): State<Shared>,
    headers: HeaderMap,
    id: RawPath,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let principal = app.authenticate(&headers)?;
    app.limit(&principal, 1)?;
    let id = AccountId(path_id(id, "account id")?);
    let Query(query) =
        query.map_err(|error| Problem::bad_request("INVALID_REQUEST", error.body_text()))?;
    let limit = query.limit.unwrap_or(50);
    if limit == 0 || limit > crate::readmodel::HISTORY_PAGE_MAX {
        return Err(Problem::bad_request(
            "INVALID_REQUEST",
            format!(
                "limit must be within 1..={}",
                crate::readmodel::HISTORY_PAGE_MAX
            ),
        ));
    }
    app.visible_account(&principal, id).await?;
    let page = app.read.history(id, query.cursor.map(TxnId), limit);
    let items: Vec<Value> = page.items.iter().map(wire::txn_view).collect();
    Ok(json_response(
        StatusCode::OK,
        json!({ "items": items, "next_cursor": page.next_cursor.map(|t| t.0) }),
    ))
}

// ---- money movement -----------------------------------------------------------------------

/// A deposit or a withdrawal: money between a settlement account and another account.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettlementIn {
    settlement_account_id: u64,
    account_id: u64,
    amount: MoneyIn,
}

async fn deposit(State(app): State<Shared>, headers: HeaderMap, body: Bytes) -> Answer {
    settlement_movement(
        &app,
        &headers,
        &body,
        "deposit",
        |input, amount, currency| {
            CommandBody::Deposit(Deposit {
                settlement: AccountId(input.settlement_account_id),
                account: AccountId(input.account_id),
                amount,
                currency,
            })
        },
    )
    .await
}

async fn withdrawal(State(app): State<Shared>, headers: HeaderMap, body: Bytes) -> Answer {
    settlement_movement(
        &app,
        &headers,
        &body,
        "withdrawal",
        |input, amount, currency| {
            CommandBody::Withdrawal(Withdrawal {
                account: AccountId(input.account_id),
                settlement: AccountId(input.settlement_account_id),
                amount,
                currency,
            })
        },
    )
    .await
}

/// Deposits and withdrawals: operator or system scope, then the movement `build` describes.
async fn settlement_movement(
    app: &App,
    headers: &HeaderMap,
    body: &[u8],
    kind: &'static str,
    build: impl FnOnce(&SettlementIn, Amount, Currency) -> CommandBody,
) -> Answer {
    let principal = app.authenticate(headers)?;
    require(&principal, Scopes::OPERATOR.union(Scopes::SYSTEM))?;
    app.limit(&principal, 1)?;
    let key = idempotency_key(headers, &principal, true)?;
    let input: SettlementIn = parse_body(body)?;
    let (amount, currency) = parse_money(&input.amount, "amount")?;
    let command = Command {
        key,
        body: build(&input, amount, currency),
    };
    let reply = app.execute(command).await?;
    app.answer(reply, |reply| posted_response(reply, currency, kind))
        .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferIn {
    from_account_id: u64,
    to_account_id: u64,
    amount: MoneyIn,
    /// Free text for the client's own records; not stored by the ledger.
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
}

fn parse_transfer(input: &TransferIn, field: &str) -> Result<Transfer, Problem> {
    let (amount, currency) = parse_money(&input.amount, &format!("{field}amount"))?;
    Ok(Transfer {
        from: AccountId(input.from_account_id),
        to: AccountId(input.to_account_id),
        amount,
        currency,
    })
}

async fn transfer(State(app): State<Shared>, headers: HeaderMap, body: Bytes) -> Answer {
    let principal = app.authenticate(&headers)?;
    app.limit(&principal, 1)?;
    let key = idempotency_key(&headers, &principal, true)?;
    let input: TransferIn = parse_body(&body)?;
    let transfer = parse_transfer(&input, "")?;
    app.authorize_debit(&principal, transfer.from).await?;
    let currency = transfer.currency;
    let command = Command {
        key,
        body: CommandBody::Transfer(transfer),
    };
    let reply = app.execute(command).await?;
    app.answer(reply, |reply| posted_response(reply, currency, "transfer"))
        .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchIn {
    transfers: Vec<TransferIn>,
}

#[derive(serde::Serialize)]
struct BatchOut<'a> {
    seq: u64,
    posted: usize,
    rejected: usize,
    results: Vec<BatchResultOut<'a>>,
}

// Short-lived rendering values, one Vec per answer: boxing the big variant would only add
// an allocation per item.
#[allow(clippy::large_enum_variant)]
#[derive(serde::Serialize)]
#[serde(untagged)]
enum BatchResultOut<'a> {
    Posted {
        index: usize,
        status: &'static str,
        transaction: PostedOut<'a>,
    },
    Rejected {
        index: usize,
        status: &'static str,
        code: &'static str,
    },
}

async fn transfer_batch(State(app): State<Shared>, headers: HeaderMap, body: Bytes) -> Answer {
    let principal = app.authenticate(&headers)?;
    let key = idempotency_key(&headers, &principal, true)?;
    let input: BatchIn = parse_body(&body)?;
    if input.transfers.is_empty() || input.transfers.len() > BATCH_TRANSFERS_MAX {
        return Err(Problem::unprocessable(
            "INVALID_BATCH",
            format!("a batch holds 1..={BATCH_TRANSFERS_MAX} transfers"),
        ));
    }
    app.limit(&principal, input.transfers.len() as u32)?;
    let mut transfers = Vec::with_capacity(input.transfers.len());
    for (index, item) in input.transfers.iter().enumerate() {
        transfers.push(
            parse_transfer(item, &format!("transfers[{index}]."))
                .map_err(|problem| problem.with("index", json!(index)))?,
        );
    }
    require(&principal, MOVERS)?;
    if !has_any(&principal, TRUSTED) {
        let mut checked: Vec<AccountId> = Vec::new();
        for transfer in &transfers {
            if !checked.contains(&transfer.from) {
                app.authorize_debit(&principal, transfer.from).await?;
                checked.push(transfer.from);
            }
        }
    }
    let currencies: Vec<Currency> = transfers.iter().map(|t| t.currency).collect();
    let command = Command {
        key,
        body: CommandBody::TransferBatch(transfers),
    };
    let reply = app.execute(command).await?;
    app.answer(reply, |reply| match &reply.outcome.result {
        CommandResult::Batch(items) => batch_answer(
            reply.seq,
            reply.timestamp,
            items,
            currencies.iter().copied(),
        ),
        other => non_posted(reply, other),
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PaymentIn {
    customer_account_id: u64,
    merchant_account_id: u64,
    amount: MoneyIn,
}

async fn payment(State(app): State<Shared>, headers: HeaderMap, body: Bytes) -> Answer {
    let principal = app.authenticate(&headers)?;
    app.limit(&principal, 1)?;
    let key = idempotency_key(&headers, &principal, true)?;
    let input: PaymentIn = parse_body(&body)?;
    let (amount, currency) = parse_money(&input.amount, "amount")?;
    let customer = AccountId(input.customer_account_id);
    app.authorize_debit(&principal, customer).await?;
    let command = Command {
        key,
        body: CommandBody::Payment(Payment {
            customer,
            merchant: AccountId(input.merchant_account_id),
            amount,
            currency,
        }),
    };
    let reply = app.execute(command).await?;
    app.answer(reply, |reply| posted_response(reply, currency, "payment"))
        .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundIn {
    amount: MoneyIn,
}

async fn refund(State(app): State<Shared>, headers: HeaderMap, id: RawPath, body: Bytes) -> Answer {
    let principal = app.authenticate(&headers)?;
    app.limit(&principal, 1)?;
    let key = idempotency_key(&headers, &principal, true)?;
    let payment = TxnId(path_id(id, "payment id")?);
    let input: RefundIn = parse_body(&body)?;
    let (amount, currency) = parse_money(&input.amount, "amount")?;
    require(&principal, MOVERS)?;
    if !has_any(&principal, TRUSTED) {
        // A refund moves the merchant's money: only the merchant's owner may ask.
        app.catch_up().await?;
        // Another owner's payment answers exactly like a missing one.
        let not_found =
            || Problem::not_found("PAYMENT_NOT_FOUND", format!("no payment {}", payment.0));
        let merchant = app
            .read
            .payment(payment)
            .ok_or_else(not_found)?
            .credit
            .account;
        app.authorize_debit(&principal, merchant)
            .await
            .map_err(|_| not_found())?;
    }
    let command = Command {
        key,
        body: CommandBody::Refund(Refund {
            payment,
            amount,
            currency,
        }),
    };
    let reply = app.execute(command).await?;
    app.answer(reply, |reply| posted_response(reply, currency, "refund"))
        .await
}

// ---- holds --------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldIn {
    account_id: u64,
    destination_account_id: u64,
    amount: MoneyIn,
    /// Seconds after the reservation is applied until the hold expires (resolved by the
    /// engine at the command's journaled timestamp, so a retry with the same key replays).
    expires_in_seconds: Option<u64>,
    /// Or an absolute deadline, RFC 3339 (e.g. "2026-11-25T12:00:00Z").
    expires_at: Option<String>,
}

async fn hold_reserve(State(app): State<Shared>, headers: HeaderMap, body: Bytes) -> Answer {
    let principal = app.authenticate(&headers)?;
    app.limit(&principal, 1)?;
    let key = idempotency_key(&headers, &principal, true)?;
    let input: HoldIn = parse_body(&body)?;
    let (amount, currency) = parse_money(&input.amount, "amount")?;
    let account = AccountId(input.account_id);
    app.authorize_debit(&principal, account).await?;
    let expiry = match (input.expires_in_seconds, &input.expires_at) {
        (Some(seconds), None) => HoldExpiry::After {
            nanos: seconds.saturating_mul(NANOS_PER_SECOND),
        },
        (None, Some(text)) => HoldExpiry::At(wire::parse_timestamp(text, "expires_at")?),
        _ => {
            return Err(Problem::bad_request(
                "INVALID_REQUEST",
                "give exactly one of expires_in_seconds and expires_at",
            ));
        }
    };
    let command = Command {
        key,
        body: CommandBody::HoldReserve(HoldReserve {
            account,
            destination: AccountId(input.destination_account_id),
            amount,
            currency,
            expiry,
        }),
    };
    let reply = app.execute(command).await?;
    app.answer(reply, |reply| match &reply.outcome.result {
        CommandResult::HoldReserved(change) => {
            let mut body = wire::hold_change(change, currency, "active");
            body["destination_id"] = json!(input.destination_account_id);
            body["expires_at"] = json!(wire::timestamp(expiry.deadline(reply.timestamp)));
            body["seq"] = json!(reply.seq);
            Ok(json_response(StatusCode::CREATED, body))
        }
        other => non_posted(reply, other),
    })
    .await
}

async fn get_hold(State(app): State<Shared>, headers: HeaderMap, id: RawPath) -> Answer {
    let principal = app.authenticate(&headers)?;
    app.limit(&principal, 1)?;
    let id = HoldId(path_id(id, "hold id")?);
    app.catch_up().await?;
    let hold = app.read.hold(id).ok_or_else(|| hold_not_found(id))?;
    app.visible_account(&principal, hold.account)
        .await
        .map_err(|_| hold_not_found(id))?;
    Ok(json_response(StatusCode::OK, wire::hold_view(&hold)))
}

/// Customers may commit or release only holds on their own accounts.
async fn authorize_hold(app: &App, principal: &Principal, id: HoldId) -> Result<(), Problem> {
    require(principal, MOVERS)?;
    app.catch_up().await?;
    if has_any(principal, TRUSTED) {
        return Ok(());
    }
    // Another owner's hold answers exactly like a missing one.
    let hold = app.read.hold(id).ok_or_else(|| hold_not_found(id))?;
    app.authorize_debit(principal, hold.account)
        .await
        .map_err(|_| hold_not_found(id))
}

fn hold_not_found(id: HoldId) -> Problem {
    Problem::not_found("HOLD_NOT_FOUND", format!("no hold {}", id.0))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HoldCommitIn {
    /// Omitted: commit the whole hold.
    amount: Option<MoneyIn>,
}

async fn hold_commit(
    State(app): State<Shared>,
    headers: HeaderMap,
    id: RawPath,
    body: Bytes,
) -> Answer {
    let principal = app.authenticate(&headers)?;
    app.limit(&principal, 1)?;
    let key = idempotency_key(&headers, &principal, true)?;
    let hold = HoldId(path_id(id, "hold id")?);
    let input: HoldCommitIn = match body.is_empty() {
        true => HoldCommitIn::default(),
        false => parse_body(&body)?,
    };
    let requested = match &input.amount {
        Some(money) => Some(parse_money(money, "amount")?),
        None => None,
    };
    authorize_hold(&app, &principal, hold).await?;
    let (amount, currency) = match requested {
        Some(pair) => pair,
        None => {
            let view = app.read.hold(hold).ok_or_else(|| hold_not_found(hold))?;
            (view.amount, view.currency)
        }
    };
    let command = Command {
        key,
        body: CommandBody::HoldCommit(HoldCommit { hold, amount }),
    };
    let reply = app.execute(command).await?;
    app.answer(reply, |reply| match &reply.outcome.result {
        CommandResult::HoldCommitted {
            hold,
            released,
            posted,
        } => Ok(json_response(
            StatusCode::OK,
            json!({
                "hold": wire::hold_change(hold, currency, "committed"),
                "released": wire::amount(*released, currency),
                "transaction": wire::posted(posted, currency, "hold_commit", reply.seq, reply.timestamp),
                "seq": reply.seq,
            }),
        )),
        other => non_posted(reply, other),
    })
    .await
}

async fn hold_release(State(app): State<Shared>, headers: HeaderMap, id: RawPath) -> Answer {
    let principal = app.authenticate(&headers)?;
    app.limit(&principal, 1)?;
    let key = idempotency_key(&headers, &principal, true)?;
    let hold = HoldId(path_id(id, "hold id")?);
    authorize_hold(&app, &principal, hold).await?;
    let currency = app
        .read
        .hold(hold)
        .map(|h| h.currency)
        .unwrap_or(Currency::IDR);
    let command = Command {
        key,
        body: CommandBody::HoldRelease(HoldRelease { hold }),
    };
    let reply = app.execute(command).await?;
    app.answer(reply, |reply| match &reply.outcome.result {
        CommandResult::HoldReleased(change) => {
            let mut body = wire::hold_change(change, currency, "released");
            body["seq"] = json!(reply.seq);
            Ok(json_response(StatusCode::OK, body))
        }
        other => non_posted(reply, other),
    })
    .await
}

// ---- queries --------------------------------------------------------------------------------

async fn get_transaction(State(app): State<Shared>, headers: HeaderMap, id: RawPath) -> Answer {
    let principal = app.authenticate(&headers)?;
    app.limit(&principal, 1)?;
    let id = TxnId(path_id(id, "transaction id")?);
    app.catch_up().await?;
    let missing =
        || Problem::not_found("TRANSACTION_NOT_FOUND", format!("no transaction {}", id.0));
    let txn = app.read.transaction(id).ok_or_else(missing)?;
    if !has_any(&principal, TRUSTED) {
        let customer = has_any(&principal, Scopes::CUSTOMER);
        let own = |account: AccountId| {
            customer
                && app
                    .read
                    .account(account)
                    .is_some_and(|view| view.owner == principal.owner)
        };
        if !own(txn.debit.account) && !own(txn.credit.account) {
            return Err(missing());
        }
    }
    Ok(json_response(StatusCode::OK, wire::txn_view(&txn)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_request_ids_are_two_hex_numbers_and_sensitive() {
        for (uptime, n) in [
            (0, 0),
            (0x9e37, 1),
            (1, 0xff),
            (123_456_789_012, 42),
            (u64::MAX, u64::MAX),
        ] {
            let id = fresh_request_id(uptime, n);
            assert_eq!(id, format!("{:x}-{n:x}", uptime ^ 0x9e37).as_str());
            assert!(id.is_sensitive());
        }
        assert_eq!(
            fresh_request_id(u64::MAX, u64::MAX).len(),
            FRESH_REQUEST_ID_MAX
        );
    }
}
