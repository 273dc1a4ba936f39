//! The node's HTTP API as a client sees it: keep-alive HTTP clients (the load's writes go
//! through the lean HTTP/1.1 client of http1.rs, or with `--http2` the lean HTTP/2 client of
//! http2.rs; setup, resolution and the audit through `reqwest`), every answer classified as
//! done (2xx), refused (4xx: a definitive answer, nothing was applied unless the ledger says
//! so) or unknown (5xx, timeout, connection error: it may or may not have been
//! applied), and the JSON shapes this tool reads back (docs/openapi.json).
//!
//! Unknown outcomes are resolved the way a real client must: by sending the same request with
//! the same Idempotency-Key and body again, which either replays the original outcome or
//! applies the request once.

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::http1::{Http1, LABEL_BODY, LABEL_CONNECT, LABEL_TIMEOUT, LABEL_TRANSPORT};
use crate::http2::Http2;

/// Sends of one request while resolving an unknown outcome, at most.
pub const RESOLVE_ATTEMPTS_MAX: u32 = 40;
/// The first pause between resolution attempts; it doubles up to [`RESOLVE_BACKOFF_MAX`].
const RESOLVE_BACKOFF_MIN: Duration = Duration::from_millis(20);
const RESOLVE_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Idle keep-alive connections kept per host, at most (beyond the in-flight bound).
const IDLE_CONNECTIONS_MAX: usize = 4096;

/// How one request ended.
#[derive(Debug)]
pub enum Answer {
    /// 2xx. `replayed`: the node answered an earlier request with the same key.
    Done {
        status: u16,
        replayed: bool,
        body: Body,
    },
    /// 4xx: the node refused; `code` is the problem's stable code.
    Refused { status: u16, code: String },
    /// 5xx or no answer: the request may or may not have been applied.
    Unknown { label: String },
}

/// A 2xx answer's body: as reqwest handed it over, or in the load client's connection buffer
/// (the connection goes back to its pool when the body is dropped).
#[derive(Debug)]
pub enum Body {
    Bytes(bytes::Bytes),
    Reply(crate::http1::Reply),
}

impl std::ops::Deref for Body {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Body::Bytes(bytes) => bytes,
            Body::Reply(reply) => reply,
        }
    }
}

impl Answer {
    /// A non-2xx answer with its problem code: 4xx is a refusal, anything else unknown.
    pub(crate) fn not_done(status: u16, code: String) -> Answer {
        match status {
            400..=499 => Answer::Refused { status, code },
            _ => Answer::Unknown {
                label: format!("{status} {code}"),
            },
        }
    }

    /// The key under which the run's error table counts this answer (no allocation for the
    /// usual 2xx: it is made for every answer of the load).
    pub fn label(&self) -> Cow<'static, str> {
        match self {
            Answer::Done { status: 200, .. } => Cow::Borrowed("200"),
            Answer::Done { status: 201, .. } => Cow::Borrowed("201"),
            Answer::Done { status, .. } => Cow::Owned(status.to_string()),
            Answer::Refused { status, code } => Cow::Owned(format!("{status} {code}")),
            Answer::Unknown { label } => Cow::Owned(label.clone()),
        }
    }
}

/// One node, one token, one connection pool.
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    base: String,
    authorization: HeaderValue,
    /// Per request while resolving outcomes and auditing: at least [`SETTLE_TIMEOUT_MIN`],
    /// so a short load timeout does not also starve the resolution.
    settle_timeout: Duration,
    /// The load's paths, parsed once: a URL parsed per request (IDNA included) showed up in
    /// the client's profile.
    hot_urls: Vec<(&'static str, reqwest::Url)>,
    /// The load's own client.
    live: Live,
}

/// The lean client the load's requests go through.
#[derive(Clone)]
enum Live {
    Http1(Arc<Http1>),
    Http2(Arc<Http2>),
}

/// Paths every operation of the load uses.
pub(crate) const HOT_PATHS: [&str; 4] = [
    "/v1/transfers",
    "/v1/transfers/batch",
    "/v1/holds",
    "/v1/deposits",
];

/// The shortest per-request timeout of resolution resends and audit reads.
pub const SETTLE_TIMEOUT_MIN: Duration = Duration::from_secs(30);

pub struct ApiOptions {
    pub base: String,
    pub token: String,
    /// Per request during the load.
    pub timeout: Duration,
    pub http2: bool,
    /// With `http2`: connections per lane.
    pub http2_connections: usize,
}

impl Api {
    pub fn new(options: ApiOptions) -> anyhow::Result<Api> {
        let base = options.base.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") {
            bail!("--url must be an http:// URL (the node speaks plain HTTP), got {base:?}");
        }
        let mut builder = reqwest::Client::builder()
            .timeout(options.timeout)
            .pool_max_idle_per_host(IDLE_CONNECTIONS_MAX)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true);
        builder = match options.http2 {
            true => builder.http2_prior_knowledge(),
            false => builder.http1_only(),
        };
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", options.token))
            .context("the token is not a valid header value")?;
        authorization.set_sensitive(true);
        let hot_urls = HOT_PATHS
            .iter()
            .map(|path| {
                reqwest::Url::parse(&format!("{base}{path}"))
                    .map(|url| (*path, url))
                    .with_context(|| format!("{base:?} is not a valid base URL"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let live = match options.http2 {
            true => Live::Http2(Http2::new(
                &base,
                &options.token,
                options.timeout,
                options.http2_connections,
            )?),
            false => Live::Http1(Http1::new(&base, &options.token, options.timeout)?),
        };
        Ok(Api {
            client: builder.build().context("building the HTTP client")?,
            base,
            authorization,
            settle_timeout: options.timeout.max(SETTLE_TIMEOUT_MIN),
            hot_urls,
            live,
        })
    }

    /// POSTs a JSON body (or none, for an empty `body`) with an optional Idempotency-Key, as
    /// part of the load: through the lean HTTP/1.1 client unless `--http2`.
    pub async fn post(&self, path: &str, key: Option<&str>, body: String) -> Answer {
        match &self.live {
            Live::Http1(live) => live.post(path, key, body.as_bytes()).await,
            Live::Http2(live) => live.post(path, key, body.as_bytes()).await,
        }
    }

    async fn post_within(
        &self,
        path: &str,
        key: Option<&str>,
        body: String,
        timeout: Option<Duration>,
    ) -> Answer {
        let request = match self.hot_urls.iter().find(|(hot, _)| *hot == path) {
            Some((_, url)) => self.client.post(url.clone()),
            None => self.client.post(format!("{}{path}", self.base)),
        };
        let mut request = request.header(AUTHORIZATION, self.authorization.clone());
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        if !body.is_empty() {
            request = request.header(CONTENT_TYPE, "application/json").body(body);
        }
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        send(request).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        let request = self
            .client
            .get(format!("{}{path}", self.base))
            .header(AUTHORIZATION, self.authorization.clone())
            .timeout(self.settle_timeout);
        send(request).await
    }

    /// Sends the same POST (same key, same body) until the answer is known or
    /// [`RESOLVE_ATTEMPTS_MAX`] sends were made; returns the last answer.
    pub async fn post_until_known(&self, path: &str, key: &str, body: &str) -> Answer {
        let mut backoff = RESOLVE_BACKOFF_MIN;
        let timeout = Some(self.settle_timeout);
        let mut answer = self
            .post_within(path, Some(key), body.to_owned(), timeout)
            .await;
        for _ in 1..RESOLVE_ATTEMPTS_MAX {
            if !matches!(answer, Answer::Unknown { .. }) {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RESOLVE_BACKOFF_MAX);
            answer = self
                .post_within(path, Some(key), body.to_owned(), timeout)
                .await;
        }
        answer
    }

    /// GETs a JSON document, retrying unknown answers (e.g. 503 READ_MODEL_BEHIND) and 429
    /// (reads count toward the client's rate limit) with backoff. A refusal or a body that does
    /// not parse is an error naming the path.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let mut backoff = RESOLVE_BACKOFF_MIN;
        let mut answer = self.get(path).await;
        for _ in 1..RESOLVE_ATTEMPTS_MAX {
            if !matches!(
                answer,
                Answer::Unknown { .. } | Answer::Refused { status: 429, .. }
            ) {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RESOLVE_BACKOFF_MAX);
            answer = self.get(path).await;
        }
        match answer {
            Answer::Done { body, .. } => serde_json::from_slice(&body)
                .with_context(|| format!("GET {path}: unexpected JSON")),
            other => Err(GetRefused {
                path: path.to_owned(),
                label: other.label().into_owned(),
            }
            .into()),
        }
    }
}

/// A GET that the node answered with a 4xx, or never answered.
#[derive(Debug)]
pub struct GetRefused {
    pub path: String,
    pub label: String,
}

impl std::fmt::Display for GetRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GET {}: {}", self.path, self.label)
    }
}

impl std::error::Error for GetRefused {}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) => {
            return Answer::Unknown {
                label: transport_label(&error),
            };
        }
    };
    let status = response.status().as_u16();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"true"));
    let body = match response.bytes().await {
        Ok(body) => body,
        Err(error) => {
            return Answer::Unknown {
                label: transport_label(&error),
            };
        }
    };
    match status {
        200..=299 => Answer::Done {
            status,
            replayed,
            body: Body::Bytes(body),
        },
        status => Answer::not_done(status, problem_code(&body)),
    }
}

fn transport_label(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        LABEL_TIMEOUT
    } else if error.is_connect() {
        LABEL_CONNECT
    } else if error.is_body() || error.is_decode() {
        LABEL_BODY
    } else {
        LABEL_TRANSPORT
    };
    kind.to_owned()
}

#[derive(Deserialize)]
struct ProblemOut {
    code: Option<String>,
}

/// The stable `code` of a problem+json body, or `-` when there is none.
pub(crate) fn problem_code(body: &[u8]) -> String {
    serde_json::from_slice::<ProblemOut>(body)
        .ok()
        .and_then(|problem| problem.code)
        .unwrap_or_else(|| "-".to_owned())
}

// ---- the shapes this tool reads (unknown fields are ignored) --------------------------------

/// `{"value": "150000.5", "currency": "IDR"}`: the node sends exact decimal strings.
#[derive(Clone, Debug, Deserialize)]
pub struct MoneyOut {
    pub value: String,
    pub currency: String,
}

impl MoneyOut {
    pub fn decimal(&self) -> anyhow::Result<Decimal> {
        if self.currency != "IDR" {
            bail!("currency {:?}, expected IDR", self.currency);
        }
        Decimal::from_str(&self.value)
            .with_context(|| format!("amount {:?} is not an exact decimal", self.value))
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct PostingOut {
    pub account_id: u64,
}

/// The answer shapes of the load's writes, read without copying their strings (a batch
/// answer carries 8190 of them).
#[derive(Debug, Deserialize)]
pub struct MoneyRef<'a> {
    #[serde(borrow)]
    pub value: Cow<'a, str>,
    #[serde(borrow)]
    pub currency: Cow<'a, str>,
}

impl MoneyRef<'_> {
    pub fn decimal(&self) -> anyhow::Result<Decimal> {
        if self.currency != "IDR" {
            bail!("currency {:?}, expected IDR", self.currency);
        }
        Decimal::from_str(&self.value)
            .with_context(|| format!("amount {:?} is not an exact decimal", self.value))
    }
}

/// A posted movement in a write's answer.
#[derive(Debug, Deserialize)]
pub struct PostedRef<'a> {
    pub id: u64,
    #[serde(borrow)]
    pub amount: MoneyRef<'a>,
    pub debit: PostingOut,
    pub credit: PostingOut,
}

/// A fresh answer to POST /v1/holds/{id}/commit.
#[derive(Debug, Deserialize)]
pub struct HoldCommitRef<'a> {
    #[serde(borrow)]
    pub transaction: PostedRef<'a>,
}

#[derive(Debug, Deserialize)]
pub struct BatchRef<'a> {
    pub posted: u64,
    pub rejected: u64,
    /// Absent (null) in a replay: the node keeps only the counts.
    #[serde(borrow)]
    pub results: Option<Vec<BatchItemRef<'a>>>,
}

#[derive(Debug, Deserialize)]
pub struct BatchItemRef<'a> {
    pub index: usize,
    #[serde(borrow)]
    pub status: Cow<'a, str>,
    #[serde(borrow)]
    pub transaction: Option<PostedRef<'a>>,
    #[serde(borrow)]
    pub code: Option<Cow<'a, str>>,
}

/// A posted movement (transfer, deposit, hold commit): the answer to a write and the shape of
/// GET /v1/transactions/{id} and of history items.
#[derive(Clone, Debug, Deserialize)]
pub struct TxnOut {
    pub id: u64,
    pub kind: String,
    pub amount: MoneyOut,
    pub debit: PostingOut,
    pub credit: PostingOut,
}

/// A hold as answered by POST /v1/holds (fresh) and GET-like replays of hold writes.
#[derive(Clone, Debug, Deserialize)]
pub struct HoldOut {
    pub id: u64,
    pub account_id: u64,
    pub amount: MoneyOut,
    /// Replays (the hold's view) carry these two.
    pub state: Option<String>,
    pub transaction_id: Option<u64>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct AccountOut {
    pub id: u64,
    pub balance: MoneyOut,
    pub held: MoneyOut,
}

#[derive(Clone, Debug, Deserialize)]
pub struct OpenedOut {
    pub id: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct HistoryOut {
    pub items: Vec<TxnOut>,
    /// A transaction id; older nodes sent it as a string, current ones as a number.
    pub next_cursor: Option<Cursor>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Cursor {
    Number(u64),
    Text(String),
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cursor::Number(n) => write!(f, "{n}"),
            Cursor::Text(text) => f.write_str(text),
        }
    }
}
