//! The load's HTTP/2 client (`--http2`): a few connections per lane, each multiplexing many
//! requests as streams (h2c with prior knowledge, as the node serves it), driven by the `h2`
//! crate directly. reqwest on top of the same crate cost 54 µs of CPU per request at 15k/s,
//! three times this tool's HTTP/1.1 client, and on a box shared with the node that CPU comes
//! out of the node's budget.
//!
//! Outcomes are classified as in http1.rs: a timeout, a connection that fails, a stream the
//! node resets and an answer this client cannot read are [`Answer::Unknown`] (the request may
//! have been applied) and are resolved later by resending with the same Idempotency-Key.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Uri};
use tokio::net::TcpStream;

use crate::api::{Answer, Body, HOT_PATHS, problem_code};
use crate::http1::{
    BODY_BYTES_MAX, LABEL_BODY, LABEL_CONNECT, LABEL_MALFORMED, LABEL_TIMEOUT, LABEL_TRANSPORT,
    POOLS, is_json_content_type, parse_base, pool_index, unknown,
};

/// Connections each lane opens to the node, at most; its requests take them in turn.
pub const CONNECTIONS_PER_LANE_MAX: usize = 64;
/// The receive window of one answer's stream: a batch's answer (about 3 MB) arrives in a few
/// window updates, a single transfer's in one frame.
const STREAM_WINDOW_BYTES: u32 = 1 << 20;
/// The receive window of a whole connection, shared by its streams.
const CONNECTION_WINDOW_BYTES: u32 = 16 << 20;

/// An HTTP/2 client for one node.
pub struct Http2 {
    address: SocketAddr,
    /// `http://authority` and the base URL's path, put before every request's path.
    origin: String,
    authorization: HeaderValue,
    /// The load's paths with their URIs, parsed once.
    hot_uris: Vec<(&'static str, Uri)>,
    timeout: Duration,
    /// Per pool (a lane's, see http1.rs), its connections' senders; `None` until first used and
    /// after the connection failed.
    pools: Vec<Vec<tokio::sync::Mutex<Option<SendRequest<Bytes>>>>>,
    /// Which connection of its pool the next request takes.
    next: AtomicUsize,
}

impl Http2 {
    /// A client for `base` (`http://host[:port][/prefix]`) with `connections` connections per
    /// lane, sending `token` as a bearer token and giving up on a request after `timeout`.
    pub fn new(
        base: &str,
        token: &str,
        timeout: Duration,
        connections: usize,
    ) -> anyhow::Result<Arc<Http2>> {
        anyhow::ensure!(
            (1..=CONNECTIONS_PER_LANE_MAX).contains(&connections),
            "--http2-connections must be in 1..={CONNECTIONS_PER_LANE_MAX}, got {connections}"
        );
        let (address, authority, path_prefix) = parse_base(base)?;
        // The h2 crate never puts an Authorization value in HPACK's table (nor a path), so
        // every request carries the token as a Huffman-coded literal, which the node decodes
        // again each time, as it would from any h2 client.
        let authorization = HeaderValue::from_str(&format!("Bearer {token}"))
            .context("the token is not a valid header value")?;
        let origin = format!("http://{authority}{path_prefix}");
        let hot_uris = HOT_PATHS
            .iter()
            .map(|path| {
                Uri::try_from(format!("{origin}{path}"))
                    .map(|uri| (*path, uri))
                    .with_context(|| format!("{base:?} is not a valid base URL"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Arc::new(Http2 {
            address,
            origin,
            authorization,
            hot_uris,
            timeout,
            pools: (0..POOLS)
                .map(|_| {
                    (0..connections)
                        .map(|_| tokio::sync::Mutex::new(None))
                        .collect()
                })
                .collect(),
            next: AtomicUsize::new(0),
        }))
    }

    /// POSTs `body` (JSON; none when empty) to `path` with an optional Idempotency-Key, within
    /// the client's timeout.
    pub async fn post(&self, path: &str, key: Option<&str>, body: &[u8]) -> Answer {
        match tokio::time::timeout(self.timeout, self.exchange(path, key, body)).await {
            Ok(answer) => answer,
            // Dropping the exchange reset its stream; the connection carries on.
            Err(_) => unknown(LABEL_TIMEOUT),
        }
    }

    async fn exchange(&self, path: &str, key: Option<&str>, body: &[u8]) -> Answer {
        let pool = &self.pools[pool_index()];
        let slot = &pool[self.next.fetch_add(1, Ordering::Relaxed) % pool.len()];
        let Some(sender) = self.sender(slot).await else {
            return unknown(LABEL_CONNECT);
        };
        let mut sender = match sender.ready().await {
            Ok(sender) => sender,
            Err(_) => {
                // The connection is gone: the next request on this slot opens a new one.
                slot.lock().await.take();
                return unknown(LABEL_TRANSPORT);
            }
        };
        let uri = match self.hot_uris.iter().find(|(hot, _)| *hot == path) {
            Some((_, uri)) => uri.clone(),
            None => match Uri::try_from(format!("{}{path}", self.origin)) {
                Ok(uri) => uri,
                Err(_) => return unknown(LABEL_MALFORMED),
            },
        };
        let mut request = Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(AUTHORIZATION, self.authorization.clone());
        if !body.is_empty() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Some(key) = key {
            let Ok(value) = HeaderValue::from_str(key) else {
                return unknown(LABEL_MALFORMED);
            };
            headers.insert("idempotency-key", value);
        }
        let (answer, mut stream) = match sender.send_request(request, body.is_empty()) {
            Ok(sent) => sent,
            Err(_) => return unknown(LABEL_TRANSPORT),
        };
        if !body.is_empty()
            && stream
                .send_data(Bytes::copy_from_slice(body), true)
                .is_err()
        {
            return unknown(LABEL_TRANSPORT);
        }
        let Ok(answer) = answer.await else {
            return unknown(LABEL_TRANSPORT);
        };
        let (head, mut received) = answer.into_parts();
        let Some(bytes) = read_body(&mut received).await else {
            return unknown(LABEL_BODY);
        };
        let status = head.status.as_u16();
        match status {
            200..=299 => Answer::Done {
                status,
                replayed: head
                    .headers
                    .get("idempotent-replayed")
                    .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"true")),
                body: Body::Bytes(bytes),
            },
            _ => {
                let json = head
                    .headers
                    .get(CONTENT_TYPE)
                    .is_some_and(|value| is_json_content_type(value.as_bytes()));
                let code = match json {
                    true => problem_code(&bytes),
                    false => "-".to_owned(),
                };
                Answer::not_done(status, code)
            }
        }
    }

    /// The slot's sender, connecting first if the slot has none.
    async fn sender(
        &self,
        slot: &tokio::sync::Mutex<Option<SendRequest<Bytes>>>,
    ) -> Option<SendRequest<Bytes>> {
        let mut held = slot.lock().await;
        if let Some(sender) = held.as_ref() {
            return Some(sender.clone());
        }
        let sender = self.connect().await.ok()?;
        *held = Some(sender.clone());
        Some(sender)
    }

    /// A new connection, its frames driven by a task on the calling lane's runtime.
    async fn connect(&self) -> anyhow::Result<SendRequest<Bytes>> {
        let stream = TcpStream::connect(self.address).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = h2::client::Builder::new()
            // The node never pushes; a pushed stream would be a protocol error.
            .enable_push(false)
            .initial_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .handshake(stream)
            .await?;
        // Ends when the connection does (the node closed it, or it failed); the slot's next
        // `ready` then fails and the slot reconnects.
        drop(tokio::spawn(async move {
            let _ = connection.await;
        }));
        Ok(sender)
    }
}

/// An answer's whole body, or `None` if the stream failed or the body exceeds
/// [`BODY_BYTES_MAX`]. Each chunk's bytes go back to the node's window as they are read; a
/// body of one frame (every single operation's answer) is kept without a copy.
async fn read_body(received: &mut h2::RecvStream) -> Option<Bytes> {
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    while let Some(chunk) = received.data().await {
        let chunk = chunk.ok()?;
        let _ = received.flow_control().release_capacity(chunk.len());
        let length = match &first {
            None => {
                let length = chunk.len();
                first = Some(chunk);
                length
            }
            Some(start) => {
                let joined = joined.get_or_insert_with(|| BytesMut::from(&start[..]));
                joined.extend_from_slice(&chunk);
                joined.len()
            }
        };
        if length > BODY_BYTES_MAX {
            return None;
        }
    }
    Some(match joined {
        Some(joined) => joined.freeze(),
        None => first.unwrap_or_default(),
    })
}
