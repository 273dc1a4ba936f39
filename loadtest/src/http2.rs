//! The load's HTTP/2 client (`--http2`): a few h2c connections per lane (prior knowledge, as
//! the node serves it), each multiplexing many requests as streams, written on the frames
//! directly as h2load is. Through the `h2` crate (its stream store, header maps, per-request
//! handles and a task per connection woken for every request) the tool cost 16-19 µs of CPU
//! per request at 30-40k/s; through reqwest on top of it, 54 µs. On a box shared with the
//! node, that CPU comes out of the node's budget.
//!
//! What it does per connection:
//! - one task (on the lane that opened it) owns the socket: it writes every frame the lane's
//!   requests queued since its last write in one `write`, and reads and handles the node's
//!   frames;
//! - a request encodes its HEADERS (HPACK, hpack.rs) and DATA frames straight into the
//!   connection's output under its lock, and waits for its stream to end;
//! - it keeps the protocol's rules: the node's stream limit (a request waits for a free
//!   stream), flow control both ways (DATA waits for window; WINDOW_UPDATEs return what was
//!   read), SETTINGS and PING acknowledgements, GOAWAY, RST_STREAM, padding, CONTINUATION.
//!
//! Outcomes are classified as in http1.rs: a timeout, a connection that fails, a stream the
//! node resets and an answer this client cannot read are [`Answer::Unknown`] (the request may
//! have been applied) and are resolved later by resending with the same Idempotency-Key.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::api::{Answer, Body, HOT_PATHS, problem_code};
use crate::hpack::{self, Decoder};
use crate::http1::{
    BODY_BYTES_MAX, LABEL_BODY, LABEL_CONNECT, LABEL_MALFORMED, LABEL_TIMEOUT, LABEL_TRANSPORT,
    POOLS, is_json_content_type, parse_base, pool_index, unknown,
};
use payu_gateway::h2frame::{
    CANCEL, COMPRESSION_ERROR, CONTINUATION, DATA, FLAG_ACK, FLAG_END_HEADERS, FLAG_END_STREAM,
    FLAG_PRIORITY, FLOW_CONTROL_ERROR, FRAME_BYTES_DEFAULT, FRAME_BYTES_LIMIT, FRAME_HEADER_BYTES,
    FRAME_SIZE_ERROR, GOAWAY, HEADERS, NO_ERROR, PING, PREFACE, PROTOCOL_ERROR, PUSH_PROMISE,
    RST_STREAM, SETTINGS, SETTINGS_ENABLE_PUSH, SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_MAX_FRAME_SIZE, STREAM_ID_MAX, WINDOW_DEFAULT,
    WINDOW_MAX, WINDOW_UPDATE, frame_header, goaway, header_block_frames, unpad, window_update,
};

/// Connections each lane opens to the node, at most; its requests take them in turn.
pub const CONNECTIONS_PER_LANE_MAX: usize = 64;
/// The receive window of one answer's stream: a batch's answer (about 3 MB) arrives in a few
/// window updates, a single transfer's in one frame.
const STREAM_WINDOW_BYTES: u32 = 1 << 20;
/// The receive window of a whole connection, shared by its streams.
const CONNECTION_WINDOW_BYTES: u32 = 16 << 20;
/// The largest frame payload this client accepts: the protocol's default
/// SETTINGS_MAX_FRAME_SIZE, which it never raises. Also the least the node may allow.
const FRAME_BYTES_MAX: usize = FRAME_BYTES_DEFAULT;
/// Free space offered to each read of the socket.
const READ_BYTES: usize = 64 << 10;

/// An HTTP/2 client for one node.
pub struct Http2 {
    address: SocketAddr,
    /// `:method POST`, `:scheme http` and `:authority`: the start of every request's header
    /// block, encoded once.
    pseudo_fields: Vec<u8>,
    /// `authorization` (never indexed), encoded once; it follows the `:path`.
    authorization_field: Vec<u8>,
    /// The base URL's path, put before every request's path.
    path_prefix: String,
    /// The `:path` field of each of the load's paths, encoded once.
    hot_paths: Vec<(&'static str, Vec<u8>)>,
    timeout: Duration,
    /// Per pool (a lane's, see http1.rs), its connections; `None` until first used.
    pools: Vec<Vec<tokio::sync::Mutex<Option<Arc<Connection>>>>>,
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
        anyhow::ensure!(
            token.bytes().all(|b| b.is_ascii_graphic()),
            "the token is not a valid header value"
        );
        let mut pseudo_fields = Vec::new();
        hpack::encode_indexed(hpack::STATIC_METHOD_POST, &mut pseudo_fields);
        hpack::encode_indexed(hpack::STATIC_SCHEME_HTTP, &mut pseudo_fields);
        hpack::encode_literal(
            hpack::STATIC_AUTHORITY,
            authority.as_bytes(),
            &mut pseudo_fields,
        );
        // Never indexed, as common clients send a credential: the node decodes the
        // Huffman-coded token again for every request.
        let mut authorization_field = Vec::new();
        hpack::encode_never_indexed(
            hpack::STATIC_AUTHORIZATION,
            format!("Bearer {token}").as_bytes(),
            &mut authorization_field,
        );
        let hot_paths = HOT_PATHS
            .iter()
            .map(|path| (*path, path_field(&format!("{path_prefix}{path}"))))
            .collect();
        Ok(Arc::new(Http2 {
            address,
            pseudo_fields,
            authorization_field,
            path_prefix,
            hot_paths,
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
        if key.is_some_and(|key| !key.bytes().all(|b| b.is_ascii_graphic())) {
            return unknown(LABEL_MALFORMED);
        }
        let pool = &self.pools[pool_index()];
        let slot = &pool[self.next.fetch_add(1, Ordering::Relaxed) % pool.len()];
        let Some(connection) = self.connection(slot).await else {
            return unknown(LABEL_CONNECT);
        };
        let path_field = match self.hot_paths.iter().find(|(hot, _)| *hot == path) {
            Some((_, field)) => std::borrow::Cow::Borrowed(&field[..]),
            None => std::borrow::Cow::Owned(path_field(&format!("{}{path}", self.path_prefix))),
        };
        let request = Request {
            pseudo_fields: &self.pseudo_fields,
            path_field: &path_field,
            authorization_field: &self.authorization_field,
            key,
            body,
        };
        let id = match poll_fn(|cx| connection.open(cx, &request)).await {
            Ok(id) => id,
            Err(label) => return unknown(label),
        };
        let mut exchange = Exchange {
            connection: &connection,
            id,
            finished: false,
        };
        poll_fn(|cx| exchange.poll_answer(cx)).await
    }

    /// The slot's connection, connecting first if it has none or its connection takes no more
    /// streams (failed, going away, or out of stream ids).
    async fn connection(
        &self,
        slot: &tokio::sync::Mutex<Option<Arc<Connection>>>,
    ) -> Option<Arc<Connection>> {
        let mut held = slot.lock().await;
        if let Some(connection) = held.as_ref().filter(|c| c.lock().takes_streams()) {
            return Some(Arc::clone(connection));
        }
        let connection = self.connect().await.ok()?;
        *held = Some(Arc::clone(&connection));
        Some(connection)
    }

    /// A new connection, its frames driven by a task on the calling lane's runtime.
    async fn connect(&self) -> std::io::Result<Arc<Connection>> {
        let socket = TcpStream::connect(self.address).await?;
        socket.set_nodelay(true)?;
        let connection = Arc::new(Connection::new());
        drop(tokio::spawn(drive(Arc::clone(&connection), socket)));
        Ok(connection)
    }
}

impl Drop for Http2 {
    /// Each connection closes (GOAWAY, then the socket) once its last stream ends.
    fn drop(&mut self) {
        for slot in self.pools.iter_mut().flatten() {
            if let Some(connection) = slot.get_mut() {
                connection.lock().client_gone = true;
                connection.work.notify_one();
            }
        }
    }
}

/// A `:path` field: a literal without indexing (it changes per resource), as the `h2`
/// crate and nghttp2 send it.
fn path_field(path: &str) -> Vec<u8> {
    let mut field = Vec::new();
    hpack::encode_literal(hpack::STATIC_PATH, path.as_bytes(), &mut field);
    field
}

/// What one request sends.
struct Request<'a> {
    pseudo_fields: &'a [u8],
    path_field: &'a [u8],
    authorization_field: &'a [u8],
    key: Option<&'a str>,
    body: &'a [u8],
}

/// One request's stream, from the moment it was opened: dropping it before its answer
/// (a timeout) resets the stream.
struct Exchange<'a> {
    connection: &'a Connection,
    id: u32,
    finished: bool,
}

impl Exchange<'_> {
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<Answer> {
        let mut state = self.connection.lock();
        let Some(stream) = state.streams.get_mut(&self.id) else {
            self.finished = true;
            return Poll::Ready(unknown(LABEL_TRANSPORT));
        };
        let Some(end) = stream.end else {
            match &stream.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => stream.waker = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        };
        let stream = state.streams.remove(&self.id).expect("the stream is there");
        drop(state);
        self.finished = true;
        Poll::Ready(match (end, stream.head) {
            (Err(label), _) => unknown(label),
            (Ok(()), None) => unknown(LABEL_MALFORMED),
            (Ok(()), Some(head)) => match head.status {
                200..=299 => Answer::Done {
                    status: head.status,
                    replayed: head.replayed,
                    body: Body::Bytes(Bytes::from(stream.body)),
                },
                status => {
                    let code = match head.json {
                        true => problem_code(&stream.body),
                        false => "-".to_owned(),
                    };
                    Answer::not_done(status, code)
                }
            },
        })
    }
}

impl Drop for Exchange<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut state = self.connection.lock();
        if let Some(stream) = state.streams.remove(&self.id) {
            if stream.end.is_none() {
                state.open -= 1;
                frame_header(&mut state.out, 4, RST_STREAM, 0, self.id);
                state.out.extend_from_slice(&CANCEL.to_be_bytes());
                let waiting = std::mem::take(&mut state.waiting);
                drop(state);
                waiting.into_iter().for_each(Waker::wake);
                self.connection.work.notify_one();
            }
        }
    }
}

/// One connection: its state, shared by its requests and its task.
struct Connection {
    state: Mutex<State>,
    /// Wakes the connection's task: frames to write, or the client is gone.
    work: Notify,
}

impl Connection {
    fn new() -> Connection {
        let mut out = Vec::with_capacity(READ_BYTES);
        out.extend_from_slice(PREFACE);
        frame_header(&mut out, 12, SETTINGS, 0, 0);
        for (id, value) in [
            (SETTINGS_ENABLE_PUSH, 0),
            (SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW_BYTES),
        ] {
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&value.to_be_bytes());
        }
        window_update(&mut out, 0, CONNECTION_WINDOW_BYTES - WINDOW_DEFAULT as u32);
        Connection {
            state: Mutex::new(State {
                out,
                scratch: Vec::new(),
                streams: HashMap::new(),
                open: 0,
                next_id: 1,
                peer_streams_max: usize::MAX,
                settled: false,
                peer_initial_window: WINDOW_DEFAULT,
                peer_frame_max: FRAME_BYTES_MAX,
                send_window: WINDOW_DEFAULT,
                held: VecDeque::new(),
                received_unreturned: 0,
                decoder: Decoder::new(hpack::TABLE_BYTES_DEFAULT),
                block: None,
                failed: None,
                going_away: false,
                client_gone: false,
                waiting: Vec::new(),
            }),
            work: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a state whose streams still end (the task
        // fails them if it cannot go on).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens a stream for `request` and queues its frames, or waits for the node's stream
    /// limit; fails if the connection takes no more streams.
    fn open(&self, cx: &mut Context<'_>, request: &Request<'_>) -> Poll<Result<u32, &'static str>> {
        let mut state = self.lock();
        if !state.takes_streams() {
            return Poll::Ready(Err(LABEL_TRANSPORT));
        }
        // Streams wait for the node's first SETTINGS: a stream beyond a limit the client does
        // not know yet would be refused.
        if !state.settled || state.open >= state.peer_streams_max {
            if !state.waiting.iter().any(|w| w.will_wake(cx.waker())) {
                state.waiting.push(cx.waker().clone());
            }
            return Poll::Pending;
        }
        let id = state.next_id;
        state.next_id += 2;
        state.open += 1;
        state.headers(id, request);
        let mut stream = Stream::new(state.peer_initial_window);
        if !request.body.is_empty() {
            stream.unsent = Bytes::copy_from_slice(request.body);
            state.held.push_back(id);
        }
        state.streams.insert(id, stream);
        state.send_held();
        drop(state);
        self.work.notify_one();
        Poll::Ready(Ok(id))
    }
}

/// What the node said about a stream's answer so far.
#[derive(Clone, Copy)]
struct Head {
    status: u16,
    json: bool,
    replayed: bool,
}

struct Stream {
    head: Option<Head>,
    body: Vec<u8>,
    /// Request body bytes not sent yet (flow control held them back).
    unsent: Bytes,
    send_window: i64,
    /// Answer bytes read but not yet given back to the node's window.
    received_unreturned: u32,
    /// Set when the stream ended: the answer is complete, or the label of what went wrong.
    end: Option<Result<(), &'static str>>,
    waker: Option<Waker>,
}

impl Stream {
    fn new(send_window: i64) -> Stream {
        Stream {
            head: None,
            body: Vec::new(),
            unsent: Bytes::new(),
            send_window,
            received_unreturned: 0,
            end: None,
            waker: None,
        }
    }
}

/// A connection error: GOAWAY with `code`, then every open stream fails.
#[derive(Clone, Copy)]
struct ConnectionError(u32);

struct State {
    /// Frames waiting for the task to write them, in order. Bounded by what the lane has in
    /// flight (`--concurrency`): a request queues its HEADERS and at most a window of DATA.
    out: Vec<u8>,
    /// A header block being encoded.
    scratch: Vec<u8>,
    /// Streams opened and not yet collected by their request (or reset by it).
    streams: HashMap<u32, Stream>,
    /// Streams the node counts as open (against its SETTINGS_MAX_CONCURRENT_STREAMS).
    open: usize,
    next_id: u32,
    peer_streams_max: usize,
    /// The node's first SETTINGS arrived (its stream limit is known).
    settled: bool,
    peer_initial_window: i64,
    peer_frame_max: usize,
    /// The connection's send window.
    send_window: i64,
    /// Streams whose request bodies wait for window, oldest first.
    held: VecDeque<u32>,
    received_unreturned: u32,
    decoder: Decoder,
    /// A header block still arriving: its stream, whether it ends the stream, its bytes.
    block: Option<(u32, bool, Vec<u8>)>,
    /// Why the connection failed; it then takes no streams and every stream has ended.
    failed: Option<&'static str>,
    /// The node sent GOAWAY: no new streams.
    going_away: bool,
    /// The client was dropped: close once no stream is open.
    client_gone: bool,
    /// Requests waiting for a stream (the node's limit); bounded by `--concurrency`.
    waiting: Vec<Waker>,
}

impl State {
    fn takes_streams(&self) -> bool {
        self.failed.is_none() && !self.going_away && self.next_id <= STREAM_ID_MAX
    }

    /// Queues a request's HEADERS (and CONTINUATIONs, if the block exceeds a frame).
    fn headers(&mut self, id: u32, request: &Request<'_>) {
        let mut block = std::mem::take(&mut self.scratch);
        block.clear();
        // Pseudo-header fields come first (RFC 9113 §8.3).
        block.extend_from_slice(request.pseudo_fields);
        block.extend_from_slice(request.path_field);
        block.extend_from_slice(request.authorization_field);
        if !request.body.is_empty() {
            hpack::encode_literal(hpack::STATIC_CONTENT_TYPE, b"application/json", &mut block);
        }
        if let Some(key) = request.key {
            hpack::encode_literal_named(b"idempotency-key", key.as_bytes(), &mut block);
        }
        let end_stream = match request.body.is_empty() {
            true => FLAG_END_STREAM,
            false => 0,
        };
        header_block_frames(&mut self.out, id, &block, end_stream, self.peer_frame_max);
        self.scratch = block;
    }

    /// Queues as much held request body as the windows allow, oldest stream first.
    fn send_held(&mut self) {
        let mut blocked = 0;
        while self.send_window > 0 && blocked < self.held.len() {
            let Some(id) = self.held.pop_front() else {
                break;
            };
            let Some(stream) = self.streams.get_mut(&id).filter(|s| !s.unsent.is_empty()) else {
                continue;
            };
            while !stream.unsent.is_empty() && stream.send_window > 0 && self.send_window > 0 {
                let n = (stream.unsent.len() as i64)
                    .min(stream.send_window)
                    .min(self.send_window)
                    .min(self.peer_frame_max as i64) as usize;
                let chunk = stream.unsent.split_to(n);
                let flags = match stream.unsent.is_empty() {
                    true => FLAG_END_STREAM,
                    false => 0,
                };
                frame_header(&mut self.out, n, DATA, flags, id);
                self.out.extend_from_slice(&chunk);
                stream.send_window -= n as i64;
                self.send_window -= n as i64;
            }
            if !stream.unsent.is_empty() {
                // Its own window is shut, or the connection's: it keeps its turn.
                self.held.push_back(id);
                blocked += 1;
            }
        }
    }

    /// Ends stream `id` (if it is still there and open): its request is woken.
    fn end(&mut self, id: u32, end: Result<(), &'static str>, wakers: &mut Vec<Waker>) {
        let Some(stream) = self.streams.get_mut(&id).filter(|s| s.end.is_none()) else {
            return;
        };
        stream.end = Some(end);
        wakers.extend(stream.waker.take());
        if !stream.unsent.is_empty() {
            // The node answered before the whole body was sent: the rest is not wanted.
            stream.unsent = Bytes::new();
            frame_header(&mut self.out, 4, RST_STREAM, 0, id);
            self.out.extend_from_slice(&CANCEL.to_be_bytes());
        }
        self.open -= 1;
        wakers.append(&mut self.waiting);
    }

    /// The connection failed: every stream still open ends with `label` (or, if its answer's
    /// head had arrived, as a broken body).
    fn fail(&mut self, label: &'static str, wakers: &mut Vec<Waker>) {
        if self.failed.is_some() {
            return;
        }
        self.failed = Some(label);
        let open: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| s.end.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in open {
            let label = match self.streams[&id].head {
                Some(_) => LABEL_BODY,
                None => label,
            };
            self.end(id, Err(label), wakers);
        }
        wakers.append(&mut self.waiting);
    }

    /// Handles one frame from the node.
    fn frame(
        &mut self,
        kind: u8,
        flags: u8,
        id: u32,
        payload: &[u8],
        wakers: &mut Vec<Waker>,
    ) -> Result<(), ConnectionError> {
        let protocol = ConnectionError(PROTOCOL_ERROR);
        let continues =
            |(block_id, ..): &(u32, bool, Vec<u8>)| kind == CONTINUATION && id == *block_id;
        if self.block.as_ref().is_some_and(|block| !continues(block)) {
            return Err(protocol);
        }
        match kind {
            DATA => {
                if id == 0 {
                    return Err(protocol);
                }
                self.received(payload.len() as u32);
                let data = unpad(flags, payload).ok_or(protocol)?;
                let Some(stream) = self.streams.get_mut(&id).filter(|s| s.end.is_none()) else {
                    return Ok(()); // a stream its request gave up on
                };
                if stream.head.is_none() {
                    self.reset(id, PROTOCOL_ERROR, LABEL_MALFORMED, wakers);
                } else if stream.body.len() + data.len() > BODY_BYTES_MAX {
                    self.reset(id, CANCEL, LABEL_BODY, wakers);
                } else {
                    stream.body.extend_from_slice(data);
                    stream.received_unreturned += payload.len() as u32;
                    if flags & FLAG_END_STREAM != 0 {
                        self.end(id, Ok(()), wakers);
                    } else if stream.received_unreturned >= STREAM_WINDOW_BYTES / 2 {
                        let n = std::mem::take(&mut stream.received_unreturned);
                        window_update(&mut self.out, id, n);
                    }
                }
            }
            HEADERS => {
                if id == 0 || id % 2 == 0 {
                    return Err(protocol);
                }
                let mut fragment = unpad(flags, payload).ok_or(protocol)?;
                if flags & FLAG_PRIORITY != 0 {
                    fragment = fragment.get(5..).ok_or(protocol)?;
                }
                let end_stream = flags & FLAG_END_STREAM != 0;
                match flags & FLAG_END_HEADERS != 0 {
                    true => self.header_block(id, end_stream, fragment, wakers)?,
                    false => self.block = Some((id, end_stream, fragment.to_vec())),
                }
            }
            CONTINUATION => {
                let Some((block_id, end_stream, mut block)) = self.block.take() else {
                    return Err(protocol);
                };
                if block.len() + payload.len() > hpack::HEADER_BLOCK_BYTES_MAX {
                    return Err(ConnectionError(COMPRESSION_ERROR));
                }
                block.extend_from_slice(payload);
                match flags & FLAG_END_HEADERS != 0 {
                    true => self.header_block(block_id, end_stream, &block, wakers)?,
                    false => self.block = Some((block_id, end_stream, block)),
                }
            }
            RST_STREAM => {
                if id == 0 || payload.len() != 4 {
                    return Err(protocol);
                }
                let label = match self.streams.get(&id).and_then(|s| s.head) {
                    Some(_) => LABEL_BODY,
                    None => LABEL_TRANSPORT,
                };
                // The node closed the stream: no RST_STREAM goes back for it.
                self.forget_unsent(id);
                self.end(id, Err(label), wakers);
            }
            SETTINGS => {
                if id != 0 {
                    return Err(protocol);
                }
                if flags & FLAG_ACK == 0 {
                    self.settings(payload, wakers)?;
                    frame_header(&mut self.out, 0, SETTINGS, FLAG_ACK, 0);
                }
            }
            PING => {
                if id != 0 || payload.len() != 8 {
                    return Err(ConnectionError(FRAME_SIZE_ERROR));
                }
                if flags & FLAG_ACK == 0 {
                    frame_header(&mut self.out, 8, PING, FLAG_ACK, 0);
                    self.out.extend_from_slice(payload);
                }
            }
            GOAWAY => {
                let last = payload
                    .get(..4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & STREAM_ID_MAX)
                    .ok_or(protocol)?;
                self.going_away = true;
                // Streams above `last` were never processed: they end without an answer.
                let unprocessed: Vec<u32> =
                    self.streams.keys().copied().filter(|&s| s > last).collect();
                for id in unprocessed {
                    self.forget_unsent(id);
                    self.end(id, Err(LABEL_TRANSPORT), wakers);
                }
                wakers.append(&mut self.waiting);
            }
            WINDOW_UPDATE => {
                let increment = payload
                    .get(..4)
                    .filter(|_| payload.len() == 4)
                    .map(|b| (u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & STREAM_ID_MAX) as i64)
                    .ok_or(ConnectionError(FRAME_SIZE_ERROR))?;
                if id == 0 {
                    if increment == 0 {
                        return Err(protocol);
                    }
                    self.send_window += increment;
                    if self.send_window > WINDOW_MAX {
                        return Err(ConnectionError(FLOW_CONTROL_ERROR));
                    }
                } else if let Some(stream) = self.streams.get_mut(&id).filter(|s| s.end.is_none()) {
                    stream.send_window += increment;
                    if increment == 0 || stream.send_window > WINDOW_MAX {
                        self.reset(id, FLOW_CONTROL_ERROR, LABEL_TRANSPORT, wakers);
                    }
                }
                self.send_held();
            }
            PUSH_PROMISE => return Err(protocol), // push is disabled in our SETTINGS
            _ => {}                               // PRIORITY, and unknown types, are ignored
        }
        Ok(())
    }

    /// A whole header block for stream `id`: decoded (always, so the table stays in step
    /// with the node's), and the answer's head taken from it.
    fn header_block(
        &mut self,
        id: u32,
        end_stream: bool,
        block: &[u8],
        wakers: &mut Vec<Waker>,
    ) -> Result<(), ConnectionError> {
        let mut head = Head {
            status: 0,
            json: false,
            replayed: false,
        };
        self.decoder
            .decode(block, |name, value| match name {
                b":status" => {
                    head.status = std::str::from_utf8(value)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                }
                b"content-type" => head.json = is_json_content_type(value),
                b"idempotent-replayed" => head.replayed = value.eq_ignore_ascii_case(b"true"),
                _ => {}
            })
            .map_err(|_| ConnectionError(COMPRESSION_ERROR))?;
        let Some(stream) = self.streams.get_mut(&id).filter(|s| s.end.is_none()) else {
            return Ok(());
        };
        if stream.head.is_none() {
            match head.status {
                100..=199 if !end_stream => return Ok(()), // informational: the answer follows
                200..=599 => stream.head = Some(head),
                _ => {
                    self.reset(id, PROTOCOL_ERROR, LABEL_MALFORMED, wakers);
                    return Ok(());
                }
            }
        }
        // (A second block is the answer's trailers: nothing in them is needed.)
        if end_stream {
            self.end(id, Ok(()), wakers);
        }
        Ok(())
    }

    fn settings(&mut self, payload: &[u8], wakers: &mut Vec<Waker>) -> Result<(), ConnectionError> {
        if payload.len() % 6 != 0 {
            return Err(ConnectionError(FRAME_SIZE_ERROR));
        }
        for setting in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([setting[0], setting[1]]);
            let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
            match id {
                SETTINGS_MAX_CONCURRENT_STREAMS => self.peer_streams_max = value as usize,
                SETTINGS_INITIAL_WINDOW_SIZE => {
                    if value as i64 > WINDOW_MAX {
                        return Err(ConnectionError(FLOW_CONTROL_ERROR));
                    }
                    let delta = value as i64 - self.peer_initial_window;
                    self.peer_initial_window = value as i64;
                    for stream in self.streams.values_mut() {
                        stream.send_window += delta;
                    }
                }
                SETTINGS_MAX_FRAME_SIZE => {
                    if !(FRAME_BYTES_MAX..=FRAME_BYTES_LIMIT).contains(&(value as usize)) {
                        return Err(ConnectionError(PROTOCOL_ERROR));
                    }
                    self.peer_frame_max = value as usize;
                }
                // The table size for our encoder (which never inserts), push (a server must
                // not enable it), the header list size: nothing to do.
                _ => {}
            }
        }
        self.settled = true;
        wakers.append(&mut self.waiting);
        self.send_held();
        Ok(())
    }

    /// `n` bytes of DATA read: given back to the connection's window once half of it is used.
    fn received(&mut self, n: u32) {
        self.received_unreturned += n;
        if self.received_unreturned >= CONNECTION_WINDOW_BYTES / 2 {
            let n = std::mem::take(&mut self.received_unreturned);
            window_update(&mut self.out, 0, n);
        }
    }

    /// Drops what stream `id` still had to send, so ending it sends no RST_STREAM.
    fn forget_unsent(&mut self, id: u32) {
        if let Some(stream) = self.streams.get_mut(&id) {
            stream.unsent = Bytes::new();
        }
    }

    /// Resets stream `id` with `code` and ends it with `label`.
    fn reset(&mut self, id: u32, code: u32, label: &'static str, wakers: &mut Vec<Waker>) {
        frame_header(&mut self.out, 4, RST_STREAM, 0, id);
        self.out.extend_from_slice(&code.to_be_bytes());
        self.forget_unsent(id);
        self.end(id, Err(label), wakers);
    }
}

/// The connection's task: writes what its requests queued (everything queued since the last
/// write, in one write), and reads and handles the node's frames, until the connection fails
/// or the client is gone and no stream is open.
async fn drive(connection: Arc<Connection>, socket: TcpStream) {
    let mut input: Vec<u8> = Vec::with_capacity(READ_BYTES);
    let mut output: Vec<u8> = Vec::with_capacity(READ_BYTES);
    let mut written = 0;
    let mut wakers = Vec::new();
    let failure = loop {
        if written == output.len() {
            output.clear();
            written = 0;
            let mut state = connection.lock();
            if state.failed.is_some() {
                return;
            }
            if state.client_gone && state.open == 0 {
                goaway(&mut state.out, 0, NO_ERROR);
                std::mem::swap(&mut state.out, &mut output);
                drop(state);
                let _ = socket.try_write(&output);
                return;
            }
            std::mem::swap(&mut state.out, &mut output);
        }
        if written < output.len() {
            match socket.try_write(&output[written..]) {
                Ok(n) => written += n,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => break None,
            }
        }
        let interest = match written < output.len() {
            true => Interest::READABLE | Interest::WRITABLE,
            false => Interest::READABLE,
        };
        tokio::select! {
            ready = socket.ready(interest) => {
                let Ok(ready) = ready else { break None };
                if !ready.is_readable() {
                    continue;
                }
                input.reserve(READ_BYTES);
                match socket.try_read_buf(&mut input) {
                    Ok(0) => break None,
                    Ok(_) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => break None,
                }
                let mut state = connection.lock();
                let handled = handle_frames(&mut state, &mut input, &mut wakers);
                drop(state);
                wakers.drain(..).for_each(Waker::wake);
                if let Err(error) = handled {
                    break Some(error);
                }
            }
            () = connection.work.notified(), if written == output.len() => {}
        }
    };
    let mut state = connection.lock();
    if let Some(ConnectionError(code)) = failure {
        // Best effort: the node learns why, then the socket closes.
        let mut last = output.split_off(written);
        goaway(&mut last, 0, code);
        let _ = socket.try_write(&last);
    }
    state.fail(LABEL_TRANSPORT, &mut wakers);
    drop(state);
    wakers.drain(..).for_each(Waker::wake);
}

/// Handles every whole frame in `input` and keeps the rest.
fn handle_frames(
    state: &mut State,
    input: &mut Vec<u8>,
    wakers: &mut Vec<Waker>,
) -> Result<(), ConnectionError> {
    let mut at = 0;
    while input.len() - at >= FRAME_HEADER_BYTES {
        let header = &input[at..at + FRAME_HEADER_BYTES];
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        if length > FRAME_BYTES_MAX {
            return Err(ConnectionError(FRAME_SIZE_ERROR));
        }
        if input.len() - at < FRAME_HEADER_BYTES + length {
            break;
        }
        let (kind, flags) = (header[3], header[4]);
        let id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & STREAM_ID_MAX;
        let payload = &input[at + FRAME_HEADER_BYTES..at + FRAME_HEADER_BYTES + length];
        state.frame(kind, flags, id, payload, wakers)?;
        at += FRAME_HEADER_BYTES + length;
    }
    input.drain(..at);
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The client against another implementation: the `h2` crate's server, configured to be
    //! awkward (tiny windows and stream limits, resets, big answers, a changing header table).

    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use h2::server::{Builder, SendResponse};
    use tokio::net::TcpListener;

    use super::*;

    /// A server accepting any number of connections with `configure`d settings; each request
    /// is answered by [`answer`] according to its path.
    async fn server(configure: fn(&mut Builder)) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let mut answered = 0u64;
            while let Ok((socket, _)) = listener.accept().await {
                let mut builder = Builder::new();
                configure(&mut builder);
                let Ok(mut connection) = builder.handshake::<_, Bytes>(socket).await else {
                    continue;
                };
                let die = Arc::new(Notify::new());
                loop {
                    tokio::select! {
                        request = connection.accept() => {
                            let Some(Ok((request, respond))) = request else { break };
                            answered += 1;
                            tokio::spawn(answer(request, respond, answered, Arc::clone(&die)));
                        }
                        () = die.notified() => break,
                    }
                }
            }
        });
        address
    }

    async fn answer(
        request: http::Request<h2::RecvStream>,
        mut respond: SendResponse<Bytes>,
        serial: u64,
        die: Arc<Notify>,
    ) {
        let (head, mut body) = request.into_parts();
        let mut received = Vec::new();
        while let Some(chunk) = body.data().await {
            let Ok(chunk) = chunk else { return };
            let _ = body.flow_control().release_capacity(chunk.len());
            received.extend_from_slice(&chunk);
        }
        let header = |name: &str| {
            head.headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default()
        };
        let (status, body, replayed): (u16, Vec<u8>, bool) = match head.uri.path() {
            "/p/echo" => {
                let mut echoed = format!(
                    "{} {} {} {} {} {}|",
                    head.method,
                    head.uri.authority().map(|a| a.as_str()).unwrap_or_default(),
                    head.uri.path(),
                    header("authorization"),
                    header("idempotency-key"),
                    header("content-type"),
                )
                .into_bytes();
                echoed.extend_from_slice(&received);
                (201, echoed, false)
            }
            "/p/replayed" => (200, b"{}".to_vec(), true),
            "/p/problem" => (409, br#"{"code":"INSUFFICIENT_FUNDS"}"#.to_vec(), false),
            "/p/big" => (200, (0..3_000_000u32).map(|i| i as u8).collect(), false),
            "/p/reset" => {
                respond.send_reset(h2::Reason::INTERNAL_ERROR);
                return;
            }
            "/p/slow" => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            "/p/die" => {
                die.notify_one();
                return;
            }
            _ => (404, Vec::new(), false),
        };
        let mut response = http::Response::builder()
            .status(status)
            .header(
                "content-type",
                match status {
                    409 => "application/problem+json",
                    _ => "application/json",
                },
            )
            // A value that changes with every answer, and a long one, so the server's table
            // keeps inserting and evicting.
            .header("x-serial", serial.to_string())
            .header("x-padding", "p".repeat(1000 + (serial % 7) as usize * 300));
        if replayed {
            response = response.header("idempotent-replayed", "true");
        }
        let response = response.body(()).expect("response");
        let Ok(mut send) = respond.send_response(response, false) else {
            return;
        };
        let _ = send.send_data(Bytes::from(body), true);
    }

    fn client(address: SocketAddr, timeout: Duration) -> Arc<Http2> {
        Http2::new(&format!("http://{address}/p"), "tok.en", timeout, 1).expect("client")
    }

    fn body_of(answer: Answer) -> Vec<u8> {
        match answer {
            Answer::Done { body, .. } => body.to_vec(),
            other => panic!("not done: {other:?}"),
        }
    }

    /// Proves: a request arrives whole (pseudo-headers, token, key, content type, body split
    /// to fit a 10-byte window and the node's frames), and 2xx, replayed and problem answers
    /// are classified as the HTTP/1.1 client classifies them.
    #[tokio::test(flavor = "current_thread")]
    async fn requests_arrive_whole_and_answers_are_classified() {
        let address = server(|b| {
            b.initial_window_size(10);
        })
        .await;
        let client = client(address, Duration::from_secs(10));
        let body: Vec<u8> = (0..40_000).map(|i| b'a' + (i % 26) as u8).collect();
        let echoed = body_of(client.post("/echo", Some("key-1"), &body).await);
        let mut expected =
            format!("POST {address} /p/echo Bearer tok.en key-1 application/json|").into_bytes();
        expected.extend_from_slice(&body);
        assert_eq!(echoed, expected);

        match client.post("/replayed", Some("key-2"), b"{}").await {
            Answer::Done {
                status, replayed, ..
            } => assert_eq!((status, replayed), (200, true)),
            other => panic!("{other:?}"),
        }
        match client.post("/problem", None, b"").await {
            Answer::Refused { status, code } => {
                assert_eq!((status, code.as_str()), (409, "INSUFFICIENT_FUNDS"));
            }
            other => panic!("{other:?}"),
        }
        match client.post("/nowhere", None, b"").await {
            Answer::Refused { status, code } => assert_eq!((status, code.as_str()), (404, "-")),
            other => panic!("{other:?}"),
        }
    }

    /// Proves: an answer three times the stream window arrives whole (the client gives window
    /// back as it reads), and 200 answers with ever-changing headers keep the client's
    /// header table in step with the server's through its evictions.
    #[tokio::test(flavor = "current_thread")]
    async fn big_answers_and_many_header_tables_decode() {
        let address = server(|_| {}).await;
        let client = client(address, Duration::from_secs(30));
        let big = body_of(client.post("/big", None, b"").await);
        assert_eq!(big.len(), 3_000_000);
        assert!(big.iter().enumerate().all(|(i, &b)| b == i as u8));
        for n in 0..200 {
            let key = format!("key-{n}");
            let echoed = body_of(client.post("/echo", Some(&key), b"{}").await);
            let text = String::from_utf8(echoed).expect("utf-8");
            assert!(text.contains(&format!(" {key} ")), "{text}");
        }
    }

    /// Proves: with the server allowing 2 streams at once, 60 concurrent requests all get
    /// their answers (they wait for a stream instead of being refused).
    #[tokio::test(flavor = "current_thread")]
    async fn the_servers_stream_limit_is_kept() {
        let address = server(|b| {
            b.max_concurrent_streams(2);
        })
        .await;
        let client = client(address, Duration::from_secs(30));
        let requests = (0..60).map(|n| {
            let client = Arc::clone(&client);
            tokio::spawn(async move {
                let key = format!("k{n}");
                let echoed = body_of(client.post("/echo", Some(&key), b"{}").await);
                assert!(String::from_utf8_lossy(&echoed).contains(&format!(" {key} ")));
            })
        });
        for request in requests.collect::<Vec<_>>() {
            request.await.expect("answered");
        }
    }

    /// Proves: a reset stream and a timed-out request are unknown outcomes and leave the
    /// connection usable; a connection the server drops fails its request as unknown, and
    /// the next request opens a new connection.
    #[tokio::test(flavor = "current_thread")]
    async fn resets_timeouts_and_dropped_connections_are_unknown_outcomes() {
        let address = server(|_| {}).await;
        let client = client(address, Duration::from_millis(300));
        let unknown_label = |answer: Answer| match answer {
            Answer::Unknown { label } => label,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            unknown_label(client.post("/reset", None, b"").await),
            LABEL_TRANSPORT
        );
        assert_eq!(
            unknown_label(client.post("/slow", None, b"").await),
            LABEL_TIMEOUT
        );
        body_of(client.post("/echo", None, b"{}").await);
        assert_eq!(
            unknown_label(client.post("/die", None, b"").await),
            LABEL_TRANSPORT
        );
        body_of(client.post("/echo", None, b"{}").await);
    }

    /// Proves: a header the protocol cannot carry is refused before anything is sent.
    #[tokio::test(flavor = "current_thread")]
    async fn a_key_with_a_line_break_is_refused() {
        let address = server(|_| {}).await;
        let client = client(address, Duration::from_secs(10));
        match client.post("/echo", Some("a\r\nb"), b"{}").await {
            Answer::Unknown { label } => assert_eq!(label, LABEL_MALFORMED),
            other => panic!("{other:?}"),
        }
        assert!(Http2::new("http://127.0.0.1:1", "bad token", Duration::from_secs(1), 1).is_err());
    }
}
