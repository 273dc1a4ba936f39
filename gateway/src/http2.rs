//! The node's HTTP/2 server (h2c, prior knowledge): one task per connection that reads the
//! frames, hands each whole request to the router, and writes the answers.
//!
//! Why not hyper's: through hyper and the `h2` crate, at 35k transfers/s over two connections,
//! the HTTP workers spent 38% of their CPU in the connection task (the h2 stream store, HPACK,
//! frame coding, and the socket calls that stay), and 14% more in each request's own task
//! around the router (spawning it, handing its answer to the connection through the shared
//! stream store, and waking the connection for every answer). The router itself was 38%.
//! Here a request is a future polled by its connection's task: no task per request, no locks,
//! one wake per batch of answers the engine releases, and everything the connection's answers
//! have queued leaves in one write.
//!
//! What it keeps of the protocol (RFC 9113):
//! - the preface, SETTINGS (both ways, acknowledged), PING, GOAWAY (both ways),
//!   RST_STREAM, WINDOW_UPDATE, PRIORITY (read and ignored), padding, CONTINUATION;
//! - stream ids (odd, rising), the concurrent-stream limit it announces (more is refused with
//!   REFUSED_STREAM, which tells the client the request was not processed);
//! - flow control both ways: it grants window back as it reads request bodies (what it keeps
//!   of them is bounded below), and sends an answer's DATA only as the client's windows allow;
//! - malformed requests (pseudo-header rules, uppercase or connection-specific fields, a
//!   content-length that does not match the body) are reset with PROTOCOL_ERROR; anything
//!   that breaks the connection's state (HPACK, framing, flow control) ends it with GOAWAY.
//!
//! Its bounds: [`STREAMS_MAX`] streams; a request's header block and its decoded fields
//! [`HEADER_LIST_BYTES_MAX`] (more is answered 431); a request body the router's limit plus
//! one byte (the router then answers 413); all bodies still arriving on a connection
//! [`BUFFERED_BODY_BYTES_MAX`] (the stream that would pass it is refused); a body's time, the
//! request time limit ([`BodyLimits`]; then the stream is reset with CANCEL); output waiting
//! for the socket [`OUTPUT_BYTES_MAX`] (reading pauses); an answer [`ANSWER_BYTES_MAX`].
//!
//! Answers are encoded without the dynamic table (hpack.rs), so the client's table holds
//! nothing of ours and the server keeps no encoder state, and without Huffman coding, which
//! would save a few bytes per answer for CPU at both ends.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header,
};
use axum::response::IntoResponse;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tower::Service;

use crate::h2frame::*;
use crate::hpack::{self, Decoder};
use crate::wire::Problem;

/// Streams one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS), counting
/// answers still being made for streams the client reset.
pub const STREAMS_MAX: u32 = 512;
/// The receive window each stream starts with (SETTINGS_INITIAL_WINDOW_SIZE).
pub const STREAM_WINDOW_BYTES: u32 = 1 << 20;
/// The receive window of a whole connection, shared by its streams.
pub const CONNECTION_WINDOW_BYTES: u32 = 16 << 20;
/// The largest request header block, before and after decoding
/// (SETTINGS_MAX_HEADER_LIST_SIZE).
pub const HEADER_LIST_BYTES_MAX: usize = 64 << 10;
/// Request bodies still arriving on one connection, in bytes, at most.
pub const BUFFERED_BODY_BYTES_MAX: usize = 32 << 20;
/// Output waiting for the socket past which the connection stops reading requests.
pub const OUTPUT_BYTES_MAX: usize = 4 << 20;
/// The longest answer body; a longer one resets its stream (INTERNAL_ERROR).
pub const ANSWER_BYTES_MAX: usize = 256 << 20;
/// The read buffer: a read has at least 64 KiB free, past the part of one frame that may be
/// left from the last.
const INPUT_BYTES: usize = (64 << 10) + FRAME_HEADER_BYTES + FRAME_BYTES_DEFAULT;
/// Rounds of read, answer and write in one poll before the task yields to others.
const POLL_ROUNDS_MAX: usize = 16;
/// An entry of a decoded header list counts this much besides its name and value.
const FIELD_OVERHEAD_BYTES: usize = 32;

/// A stream's answer: its head, and its body in full.
type Answer = (axum::http::response::Parts, Result<Bytes, ()>);
/// A request the router is answering.
type Answering = Pin<Box<dyn Future<Output = (u32, Answer)> + Send>>;

/// What ends a connection: GOAWAY with this error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ConnectionError(u32);

struct Stream {
    state: State,
    /// What the client may still send on it.
    recv_window: i64,
    /// Received and not yet granted back.
    recv_unacked: u32,
    /// What this side may still send on it.
    send_window: i64,
    /// A HEAD request: its answer carries no body.
    head: bool,
}

enum State {
    /// The request's body is arriving.
    Receiving {
        request: Box<Request<()>>,
        body: Vec<u8>,
        /// Its content-length, if it gave one.
        declared: Option<usize>,
        /// When the body is given up if it has not ended.
        deadline: Instant,
    },
    /// The router is answering; `remote_closed` once the client's side has ended.
    Answering { remote_closed: bool },
    /// The answer's head is sent; its body waits for window.
    Sending {
        body: Bytes,
        sent: usize,
        remote_closed: bool,
    },
}

/// What a DATA frame leads to, once its stream is no longer borrowed.
enum After {
    Nothing,
    Reset(u32),
    /// The request goes to the router.
    Received,
    /// More body is wanted: window is granted back.
    Grant,
}

/// A header block still arriving in CONTINUATIONs.
struct PartialBlock {
    id: u32,
    end_stream: bool,
    bytes: Vec<u8>,
}

/// What a connection accepts of a request's body.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    /// The router's limit in bytes: one byte more is buffered, and the router answers 413.
    pub bytes: usize,
    /// A body still arriving this long after its request's headers is given up: the stream is
    /// reset with CANCEL. (Over HTTP/1.1 the request time limit covers reading the body.)
    pub time: Duration,
}

/// Serves HTTP/2 on `io`, whose first bytes (`read`, holding at least the preface) were read
/// already, until the client leaves, the connection fails, or `stop` resolves and the open
/// streams are answered.
pub async fn serve(
    io: TcpStream,
    read: Vec<u8>,
    router: Router,
    limits: BodyLimits,
    stop: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let mut connection = Connection::new(io, read, router, limits, Box::pin(stop));
    std::future::poll_fn(|context| connection.poll(context)).await
}

struct Connection {
    io: TcpStream,
    router: Router,
    body_limit: usize,
    body_time: Duration,
    /// Armed while a body is arriving: when it fires, bodies past their time are given up.
    body_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// [`INPUT_BYTES`] long: bytes `consumed..filled` are read and not yet handled.
    input: Vec<u8>,
    consumed: usize,
    filled: usize,
    out: Vec<u8>,
    written: usize,
    decoder: Decoder,
    streams: HashMap<u32, Stream, BuildHasherDefault<StreamIdHasher>>,
    answering: FuturesUnordered<Answering>,
    /// Answers still being made for streams the client reset.
    orphans: usize,
    /// Streams whose answer waits for window, oldest first.
    blocked: VecDeque<u32>,
    /// The highest stream id the client opened.
    last_id: u32,
    block: Option<PartialBlock>,
    preface_read: bool,
    settings_read: bool,
    send_window: i64,
    /// The client's SETTINGS_INITIAL_WINDOW_SIZE.
    peer_stream_window: i64,
    /// The client's SETTINGS_MAX_FRAME_SIZE.
    peer_frame_max: usize,
    recv_window: i64,
    recv_unacked: u32,
    buffered_body: usize,
    read_closed: bool,
    /// This side sent GOAWAY: streams above `last_id` are ignored.
    going_away: bool,
    stop: Pin<Box<dyn Future<Output = ()> + Send>>,
    failed: Option<ConnectionError>,
}

impl Connection {
    fn new(
        io: TcpStream,
        read: Vec<u8>,
        router: Router,
        limits: BodyLimits,
        stop: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Connection {
        let mut out = Vec::with_capacity(64 << 10);
        settings(
            &mut out,
            &[
                (SETTINGS_MAX_CONCURRENT_STREAMS, STREAMS_MAX),
                (SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW_BYTES),
                (SETTINGS_MAX_HEADER_LIST_SIZE, HEADER_LIST_BYTES_MAX as u32),
            ],
        );
        window_update(&mut out, 0, CONNECTION_WINDOW_BYTES - WINDOW_DEFAULT as u32);
        let mut input = vec![0; INPUT_BYTES.max(read.len())];
        input[..read.len()].copy_from_slice(&read);
        Connection {
            io,
            router,
            body_limit: limits.bytes,
            body_time: limits.time,
            body_timer: None,
            input,
            consumed: 0,
            filled: read.len(),
            out,
            written: 0,
            decoder: Decoder::new(hpack::TABLE_BYTES_DEFAULT),
            streams: HashMap::default(),
            answering: FuturesUnordered::new(),
            orphans: 0,
            blocked: VecDeque::new(),
            last_id: 0,
            block: None,
            preface_read: false,
            settings_read: false,
            send_window: WINDOW_DEFAULT,
            peer_stream_window: WINDOW_DEFAULT,
            peer_frame_max: FRAME_BYTES_DEFAULT,
            recv_window: i64::from(CONNECTION_WINDOW_BYTES),
            recv_unacked: 0,
            buffered_body: 0,
            read_closed: false,
            going_away: false,
            stop,
            failed: None,
        }
    }

    fn poll(&mut self, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        for _ in 0..POLL_ROUNDS_MAX {
            let mut progressed = false;
            if !self.going_away && self.stop.as_mut().poll(context).is_ready() {
                self.go_away(NO_ERROR);
                progressed = true;
            }
            // The bytes read with the preface first, then the socket's.
            if !self.preface_read && self.failed.is_none() {
                if let Err(error) = self.handle_input() {
                    self.fail(error);
                }
            }
            // Reading waits while too much output waits: once a write brings it under the
            // bound, the loop goes round again, so that the read registers for a wake-up.
            let output_full = self.out.len() - self.written >= OUTPUT_BYTES_MAX;
            if self.failed.is_none()
                && !self.read_closed
                && self.filled < self.input.len()
                && !output_full
            {
                match self.read(context) {
                    Poll::Ready(Ok(0)) => {
                        self.read_closed = true;
                        progressed = true;
                    }
                    Poll::Ready(Ok(_)) => {
                        progressed = true;
                        if let Err(error) = self.handle_input() {
                            self.fail(error);
                        }
                    }
                    Poll::Ready(Err(_)) => {
                        self.read_closed = true;
                        progressed = true;
                    }
                    Poll::Pending => {}
                }
            }
            if self
                .body_timer
                .as_mut()
                .is_some_and(|timer| timer.as_mut().poll(context).is_ready())
            {
                self.give_up_late_bodies();
                progressed = true;
            }
            while let Poll::Ready(Some((id, answer))) = self.answering.poll_next_unpin(context) {
                self.answered(id, answer);
                progressed = true;
            }
            match self.write(context) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => {}
            }
            if output_full && self.out.len() - self.written < OUTPUT_BYTES_MAX {
                progressed = true;
            }
            if self.finished() {
                return Poll::Ready(Ok(()));
            }
            if !progressed {
                return Poll::Pending;
            }
        }
        context.waker().wake_by_ref();
        Poll::Pending
    }

    /// Whether the connection is over: failed (and its GOAWAY written, or the socket gone),
    /// or no stream is left and nothing more will come.
    fn finished(&self) -> bool {
        // A failed connection's GOAWAY is written if the socket takes it: best effort.
        if self.failed.is_some() {
            return true;
        }
        let flushed = self.written == self.out.len();
        let idle = self.streams.is_empty() && self.answering.is_empty();
        idle && flushed && (self.read_closed || self.going_away)
    }

    /// Reads into the free end of `input`. Through `AsyncRead`, so that a short read clears
    /// the socket's readiness and the next attempt waits without a `recvfrom` that would
    /// find nothing.
    fn read(&mut self, context: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut buffer = ReadBuf::new(&mut self.input[self.filled..]);
        match Pin::new(&mut self.io).poll_read(context, &mut buffer) {
            Poll::Ready(Ok(())) => {
                let n = buffer.filled().len();
                self.filled += n;
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn write(&mut self, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.out.len() {
            match self.io.poll_write_ready(context) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(error)) => return self.write_failed(error),
                Poll::Pending => return Poll::Pending,
            }
            match self.io.try_write(&self.out[self.written..]) {
                Ok(n) => self.written += n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return self.write_failed(error),
            }
        }
        self.out.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// The client is gone: nothing more can be sent, so the connection ends (the answers
    /// being made are dropped; a money-moving request's outcome stays in the journal).
    fn write_failed(&mut self, error: io::Error) -> Poll<io::Result<()>> {
        if matches!(
            error.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        ) {
            return Poll::Ready(Ok(()));
        }
        Poll::Ready(Err(error))
    }

    /// Ends the connection: GOAWAY with `code`, and nothing more is read or answered.
    fn fail(&mut self, error: ConnectionError) {
        tracing::debug!(code = error.0, "HTTP/2 connection error");
        goaway(&mut self.out, self.last_id, error.0);
        self.failed = Some(error);
        self.streams.clear();
        self.answering = FuturesUnordered::new();
    }

    /// No new streams: the client learns which it opened will be answered.
    fn go_away(&mut self, code: u32) {
        if !self.going_away {
            self.going_away = true;
            goaway(&mut self.out, self.last_id, code);
        }
    }

    /// Handles every whole frame read so far.
    fn handle_input(&mut self) -> Result<(), ConnectionError> {
        if !self.preface_read {
            let have = &self.input[self.consumed..self.filled];
            if have.len() < PREFACE.len() {
                return match PREFACE.starts_with(have) {
                    true => Ok(()),
                    false => Err(ConnectionError(PROTOCOL_ERROR)),
                };
            }
            if !have.starts_with(PREFACE) {
                return Err(ConnectionError(PROTOCOL_ERROR));
            }
            self.consumed += PREFACE.len();
            self.preface_read = true;
        }
        while let Some(frame) = parse_header(&self.input[self.consumed..self.filled]) {
            if frame.length > FRAME_BYTES_DEFAULT {
                return Err(ConnectionError(FRAME_SIZE_ERROR));
            }
            let start = self.consumed + FRAME_HEADER_BYTES;
            if self.filled < start + frame.length {
                break;
            }
            // The payload is moved out of `input` for the handler's sake, then put back.
            let input = std::mem::take(&mut self.input);
            let handled = self.frame(frame, &input[start..start + frame.length]);
            self.input = input;
            self.consumed = start + frame.length;
            handled?;
            if self.failed.is_some() {
                break;
            }
        }
        // What is left is part of one frame: moved to the front, so that a whole read fits.
        self.input.copy_within(self.consumed..self.filled, 0);
        self.filled -= self.consumed;
        self.consumed = 0;
        Ok(())
    }

    fn frame(&mut self, frame: FrameHeader, payload: &[u8]) -> Result<(), ConnectionError> {
        if !self.settings_read && frame.kind != SETTINGS {
            return Err(ConnectionError(PROTOCOL_ERROR));
        }
        if self.block.is_some() && frame.kind != CONTINUATION {
            return Err(ConnectionError(PROTOCOL_ERROR));
        }
        match frame.kind {
            DATA => self.data(frame, payload),
            HEADERS => self.headers(frame, payload),
            CONTINUATION => self.continuation(frame, payload),
            PRIORITY => match (frame.id, payload.len()) {
                (0, _) => Err(ConnectionError(PROTOCOL_ERROR)),
                (_, 5) => Ok(()),
                (id, _) => {
                    self.reset(id, FRAME_SIZE_ERROR);
                    Ok(())
                }
            },
            RST_STREAM => {
                if frame.id == 0 || frame.id > self.last_id {
                    return Err(ConnectionError(PROTOCOL_ERROR));
                }
                if payload.len() != 4 {
                    return Err(ConnectionError(FRAME_SIZE_ERROR));
                }
                self.forget(frame.id);
                Ok(())
            }
            SETTINGS => self.settings(frame, payload),
            PUSH_PROMISE => Err(ConnectionError(PROTOCOL_ERROR)),
            PING => {
                if frame.id != 0 {
                    return Err(ConnectionError(PROTOCOL_ERROR));
                }
                if payload.len() != 8 {
                    return Err(ConnectionError(FRAME_SIZE_ERROR));
                }
                if frame.flags & FLAG_ACK == 0 {
                    frame_header(&mut self.out, 8, PING, FLAG_ACK, 0);
                    self.out.extend_from_slice(payload);
                }
                Ok(())
            }
            GOAWAY => {
                if frame.id != 0 {
                    return Err(ConnectionError(PROTOCOL_ERROR));
                }
                // The client opens nothing more; its open streams are still answered.
                self.go_away(NO_ERROR);
                Ok(())
            }
            WINDOW_UPDATE => self.window_update(frame, payload),
            // Unknown frame types are ignored (RFC 9113 §4.1).
            _ => Ok(()),
        }
    }

    fn settings(&mut self, frame: FrameHeader, payload: &[u8]) -> Result<(), ConnectionError> {
        if frame.id != 0 {
            return Err(ConnectionError(PROTOCOL_ERROR));
        }
        if frame.flags & FLAG_ACK != 0 {
            return match payload.is_empty() {
                true => Ok(()),
                false => Err(ConnectionError(FRAME_SIZE_ERROR)),
            };
        }
        if payload.len() % 6 != 0 {
            return Err(ConnectionError(FRAME_SIZE_ERROR));
        }
        self.settings_read = true;
        for setting in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([setting[0], setting[1]]);
            let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
            match id {
                SETTINGS_ENABLE_PUSH if value > 1 => return Err(ConnectionError(PROTOCOL_ERROR)),
                SETTINGS_INITIAL_WINDOW_SIZE => {
                    let value = i64::from(value);
                    if value > WINDOW_MAX {
                        return Err(ConnectionError(FLOW_CONTROL_ERROR));
                    }
                    let change = value - self.peer_stream_window;
                    self.peer_stream_window = value;
                    for stream in self.streams.values_mut() {
                        stream.send_window += change;
                        if stream.send_window > WINDOW_MAX {
                            return Err(ConnectionError(FLOW_CONTROL_ERROR));
                        }
                    }
                    self.send_blocked();
                }
                SETTINGS_MAX_FRAME_SIZE => {
                    let value = value as usize;
                    if !(FRAME_BYTES_DEFAULT..=FRAME_BYTES_LIMIT).contains(&value) {
                        return Err(ConnectionError(PROTOCOL_ERROR));
                    }
                    self.peer_frame_max = value;
                }
                // The table size limits the client's decoder, which this side never fills;
                // the rest do not apply to a server, or are unknown and ignored.
                _ => {}
            }
        }
        frame_header(&mut self.out, 0, SETTINGS, FLAG_ACK, 0);
        Ok(())
    }

    fn window_update(&mut self, frame: FrameHeader, payload: &[u8]) -> Result<(), ConnectionError> {
        let Ok(bytes) = <[u8; 4]>::try_from(payload) else {
            return Err(ConnectionError(FRAME_SIZE_ERROR));
        };
        let increment = i64::from(u32::from_be_bytes(bytes) & STREAM_ID_MAX);
        if frame.id == 0 {
            if increment == 0 {
                return Err(ConnectionError(PROTOCOL_ERROR));
            }
            self.send_window += increment;
            if self.send_window > WINDOW_MAX {
                return Err(ConnectionError(FLOW_CONTROL_ERROR));
            }
            self.send_blocked();
            return Ok(());
        }
        if frame.id > self.last_id {
            return Err(ConnectionError(PROTOCOL_ERROR));
        }
        let Some(stream) = self.streams.get_mut(&frame.id) else {
            // A stream that has ended: updates may still be on their way.
            return Ok(());
        };
        if increment == 0 {
            self.reset(frame.id, PROTOCOL_ERROR);
            return Ok(());
        }
        stream.send_window += increment;
        if stream.send_window > WINDOW_MAX {
            self.reset(frame.id, FLOW_CONTROL_ERROR);
            return Ok(());
        }
        if matches!(stream.state, State::Sending { .. }) {
            self.send_body(frame.id);
        }
        Ok(())
    }

    fn headers(&mut self, frame: FrameHeader, payload: &[u8]) -> Result<(), ConnectionError> {
        if frame.id == 0 {
            return Err(ConnectionError(PROTOCOL_ERROR));
        }
        let mut fragment = unpad(frame.flags, payload).ok_or(ConnectionError(PROTOCOL_ERROR))?;
        if frame.flags & FLAG_PRIORITY != 0 {
            fragment = fragment.get(5..).ok_or(ConnectionError(FRAME_SIZE_ERROR))?;
        }
        let end_stream = frame.flags & FLAG_END_STREAM != 0;
        if frame.flags & FLAG_END_HEADERS != 0 {
            return self.header_block(frame.id, end_stream, fragment);
        }
        if fragment.len() > HEADER_LIST_BYTES_MAX {
            return Err(ConnectionError(ENHANCE_YOUR_CALM));
        }
        self.block = Some(PartialBlock {
            id: frame.id,
            end_stream,
            bytes: fragment.to_vec(),
        });
        Ok(())
    }

    fn continuation(&mut self, frame: FrameHeader, payload: &[u8]) -> Result<(), ConnectionError> {
        let Some(mut block) = self.block.take() else {
            return Err(ConnectionError(PROTOCOL_ERROR));
        };
        if block.id != frame.id {
            return Err(ConnectionError(PROTOCOL_ERROR));
        }
        if block.bytes.len() + payload.len() > HEADER_LIST_BYTES_MAX {
            return Err(ConnectionError(ENHANCE_YOUR_CALM));
        }
        block.bytes.extend_from_slice(payload);
        if frame.flags & FLAG_END_HEADERS == 0 {
            self.block = Some(block);
            return Ok(());
        }
        self.header_block(block.id, block.end_stream, &block.bytes)
    }

    /// A whole header block: a new request, or the trailers of one whose body is arriving.
    fn header_block(
        &mut self,
        id: u32,
        end_stream: bool,
        block: &[u8],
    ) -> Result<(), ConnectionError> {
        // Decoded whatever becomes of the stream: the table must stay in step.
        let mut fields = Fields::default();
        self.decoder
            .decode(block, |name, value| fields.add(name, value))
            .map_err(|_| ConnectionError(COMPRESSION_ERROR))?;
        if let Some(stream) = self.streams.get_mut(&id) {
            // Trailers: they must end the stream, and are not passed on.
            let reset = match &mut stream.state {
                State::Receiving { .. } if end_stream => {
                    self.received(id, true);
                    return Ok(());
                }
                State::Receiving { .. } => Some(PROTOCOL_ERROR),
                State::Answering { remote_closed } | State::Sending { remote_closed, .. } => {
                    match *remote_closed || !end_stream {
                        true => Some(STREAM_CLOSED),
                        false => {
                            // Answered before its body ended: the rest is dropped.
                            *remote_closed = true;
                            None
                        }
                    }
                }
            };
            if let Some(code) = reset {
                self.reset(id, code);
            }
            return Ok(());
        }
        if id <= self.last_id {
            // A stream that has ended (reset, or answered before its body ended): ignored.
            return Ok(());
        }
        if id % 2 == 0 {
            return Err(ConnectionError(PROTOCOL_ERROR));
        }
        self.last_id = id;
        if self.going_away {
            // Above the GOAWAY's last stream: not processed, and the client knows it.
            return Ok(());
        }
        if self.streams.len() + self.orphans >= STREAMS_MAX as usize {
            rst_stream(&mut self.out, id, REFUSED_STREAM);
            return Ok(());
        }
        let head = fields.method.as_ref() == Some(&Method::HEAD);
        let mut stream = Stream {
            state: State::Answering {
                remote_closed: end_stream,
            },
            recv_window: i64::from(STREAM_WINDOW_BYTES),
            recv_unacked: 0,
            send_window: self.peer_stream_window,
            head,
        };
        if fields.size > HEADER_LIST_BYTES_MAX {
            self.streams.insert(id, stream);
            let problem = Problem::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "HEADERS_TOO_LARGE",
                format!("the request's header fields exceed {HEADER_LIST_BYTES_MAX} bytes"),
            );
            self.answer_with(id, problem.into_response());
            return Ok(());
        }
        let (request, declared) = match fields.into_request() {
            Ok(request) => request,
            Err(reason) => {
                tracing::debug!(id, reason, "malformed HTTP/2 request");
                rst_stream(&mut self.out, id, PROTOCOL_ERROR);
                return Ok(());
            }
        };
        if end_stream {
            if declared.is_some_and(|length| length != 0) {
                rst_stream(&mut self.out, id, PROTOCOL_ERROR);
                return Ok(());
            }
            self.streams.insert(id, stream);
            self.dispatch(id, request.map(|()| Body::empty()));
            return Ok(());
        }
        let deadline = Instant::now() + self.body_time;
        stream.state = State::Receiving {
            request: Box::new(request),
            body: Vec::new(),
            declared,
            deadline,
        };
        self.streams.insert(id, stream);
        if self.body_timer.is_none() {
            self.body_timer = Some(Box::pin(tokio::time::sleep_until(deadline.into())));
        }
        Ok(())
    }

    fn data(&mut self, frame: FrameHeader, payload: &[u8]) -> Result<(), ConnectionError> {
        if frame.id == 0 || frame.id > self.last_id {
            return Err(ConnectionError(PROTOCOL_ERROR));
        }
        // Flow control counts the whole payload, padding included.
        let length = payload.len() as u32;
        if i64::from(length) > self.recv_window {
            return Err(ConnectionError(FLOW_CONTROL_ERROR));
        }
        self.recv_window -= i64::from(length);
        self.grant(0, length);
        let data = unpad(frame.flags, payload).ok_or(ConnectionError(PROTOCOL_ERROR))?;
        let end_stream = frame.flags & FLAG_END_STREAM != 0;
        // One byte past the router's limit is enough for it to answer 413.
        let body_limit = self.body_limit;
        let Some(stream) = self.streams.get_mut(&frame.id) else {
            // Ended already (reset, or answered and closed): dropped.
            return Ok(());
        };
        let after = match &mut stream.state {
            State::Answering { remote_closed } | State::Sending { remote_closed, .. } => {
                match *remote_closed {
                    true => After::Reset(STREAM_CLOSED),
                    false => {
                        // Answered before its body ended: the rest is dropped.
                        *remote_closed = end_stream;
                        After::Nothing
                    }
                }
            }
            State::Receiving { body, .. } => {
                if i64::from(length) > stream.recv_window {
                    After::Reset(FLOW_CONTROL_ERROR)
                } else {
                    stream.recv_window -= i64::from(length);
                    let keep = data.len().min((body_limit + 1).saturating_sub(body.len()));
                    if self.buffered_body + keep > BUFFERED_BODY_BYTES_MAX {
                        After::Reset(REFUSED_STREAM)
                    } else {
                        body.extend_from_slice(&data[..keep]);
                        self.buffered_body += keep;
                        match end_stream || body.len() > body_limit {
                            true => After::Received,
                            false => After::Grant,
                        }
                    }
                }
            }
        };
        match after {
            After::Nothing => {}
            After::Reset(code) => self.reset(frame.id, code),
            After::Received => self.received(frame.id, end_stream),
            After::Grant => self.grant(frame.id, length),
        }
        Ok(())
    }

    /// Counts `length` received bytes against a window (0: the connection's) and grants
    /// them back once half the window is used.
    fn grant(&mut self, id: u32, length: u32) {
        let (unacked, window, full) = match id {
            0 => (
                &mut self.recv_unacked,
                &mut self.recv_window,
                CONNECTION_WINDOW_BYTES,
            ),
            _ => match self.streams.get_mut(&id) {
                Some(stream) => (
                    &mut stream.recv_unacked,
                    &mut stream.recv_window,
                    STREAM_WINDOW_BYTES,
                ),
                None => return,
            },
        };
        *unacked += length;
        if *unacked >= full / 2 {
            window_update(&mut self.out, id, *unacked);
            *window += i64::from(*unacked);
            *unacked = 0;
        }
    }

    /// The client's side of stream `id` has ended (`remote_closed`), or its body passed the
    /// limit: the request goes to the router.
    ///
    /// A stream is `Answering` only once its answer is being made: `forget` counts an
    /// `Answering` stream it drops as an answer still to come.
    fn received(&mut self, id: u32, remote_closed: bool) {
        let Some(stream) = self.streams.get(&id) else {
            return;
        };
        let State::Receiving { body, declared, .. } = &stream.state else {
            return;
        };
        let complete = body.len() <= self.body_limit;
        if complete && remote_closed && declared.is_some_and(|length| length != body.len()) {
            self.reset(id, PROTOCOL_ERROR);
            return;
        }
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let state = std::mem::replace(&mut stream.state, State::Answering { remote_closed });
        let State::Receiving { request, body, .. } = state else {
            return;
        };
        self.buffered_body -= body.len();
        self.dispatch(id, (*request).map(|()| Body::from(body)));
    }

    fn dispatch(&mut self, id: u32, request: Request<Body>) {
        let answer = self.router.call(request);
        self.answering.push(Box::pin(async move {
            let response = match answer.await {
                Ok(response) => response,
                Err(infallible) => match infallible {},
            };
            (id, collect(response).await)
        }));
    }

    /// Answers stream `id` with `response` made here, not by the router.
    fn answer_with(&mut self, id: u32, response: Response<Body>) {
        self.answering
            .push(Box::pin(async move { (id, collect(response).await) }));
    }

    fn answered(&mut self, id: u32, (head, body): Answer) {
        let Some(stream) = self.streams.get_mut(&id) else {
            self.orphans = self.orphans.saturating_sub(1);
            return;
        };
        let State::Answering { remote_closed } = stream.state else {
            return;
        };
        let Ok(body) = body else {
            // Not `reset`: that would count the finished answer as one still being made.
            self.streams.remove(&id);
            rst_stream(&mut self.out, id, INTERNAL_ERROR);
            return;
        };
        let body = match stream.head || no_body(head.status) {
            true => Bytes::new(),
            false => body,
        };
        encode_head(&mut self.out, id, &head, body.len(), body.is_empty());
        if body.is_empty() {
            self.ended(id, remote_closed);
            return;
        }
        stream.state = State::Sending {
            body,
            sent: 0,
            remote_closed,
        };
        self.send_body(id);
    }

    /// Sends what the windows allow of stream `id`'s answer body.
    fn send_body(&mut self, id: u32) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let State::Sending {
            body,
            sent,
            remote_closed,
        } = &mut stream.state
        else {
            return;
        };
        while *sent < body.len() {
            let allowed = self.send_window.min(stream.send_window).max(0) as usize;
            let length = (body.len() - *sent).min(allowed).min(self.peer_frame_max);
            if length == 0 {
                if !self.blocked.contains(&id) {
                    self.blocked.push_back(id);
                }
                return;
            }
            let last = *sent + length == body.len();
            let flags = if last { FLAG_END_STREAM } else { 0 };
            frame_header(&mut self.out, length, DATA, flags, id);
            self.out.extend_from_slice(&body[*sent..*sent + length]);
            *sent += length;
            self.send_window -= length as i64;
            stream.send_window -= length as i64;
        }
        let remote_closed = *remote_closed;
        self.ended(id, remote_closed);
    }

    /// Sends what the windows allow of the answers waiting for window.
    fn send_blocked(&mut self) {
        for _ in 0..self.blocked.len() {
            if self.send_window <= 0 {
                return;
            }
            if let Some(id) = self.blocked.pop_front() {
                self.send_body(id);
            }
        }
    }

    /// This side's answer on stream `id` is complete. If the client's side had not ended
    /// (the answer came before the whole body), the stream is reset with NO_ERROR, which
    /// tells the client to stop sending (RFC 9113 §8.1).
    fn ended(&mut self, id: u32, remote_closed: bool) {
        self.streams.remove(&id);
        if !remote_closed {
            rst_stream(&mut self.out, id, NO_ERROR);
        }
    }

    /// Resets the streams whose bodies are past their time, and arms the timer for the next
    /// deadline, if a body is still arriving.
    fn give_up_late_bodies(&mut self) {
        let now = Instant::now();
        let mut late = Vec::new();
        let mut next: Option<Instant> = None;
        for (&id, stream) in &self.streams {
            if let State::Receiving { deadline, .. } = stream.state {
                match deadline <= now {
                    true => late.push(id),
                    false => next = Some(next.map_or(deadline, |next| next.min(deadline))),
                }
            }
        }
        for id in late {
            tracing::debug!(id, "an HTTP/2 request body did not arrive in time");
            self.reset(id, CANCEL);
        }
        self.body_timer = next.map(|next| Box::pin(tokio::time::sleep_until(next.into())));
    }

    /// Resets stream `id` with `code`.
    fn reset(&mut self, id: u32, code: u32) {
        rst_stream(&mut self.out, id, code);
        self.forget(id);
    }

    /// Drops stream `id`; an answer still being made for it is dropped when it comes.
    fn forget(&mut self, id: u32) {
        match self.streams.remove(&id).map(|stream| stream.state) {
            Some(State::Answering { .. }) => self.orphans += 1,
            Some(State::Receiving { body, .. }) => self.buffered_body -= body.len(),
            Some(State::Sending { .. }) | None => {}
        }
    }
}

/// Hashes a stream id with one multiply and a fold: SipHash, the default, showed in the
/// profile. Ids are rising odd numbers the client picks; the fold mixes high bits into low
/// ones, so ids spaced by a power of two still spread.
#[derive(Default)]
struct StreamIdHasher(u64);

impl Hasher for StreamIdHasher {
    fn finish(&self) -> u64 {
        let mixed = self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        mixed ^ (mixed >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 << 8) | u64::from(byte);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id);
    }
}

/// An answer's body, in full.
async fn collect(response: Response<Body>) -> Answer {
    let (head, body) = response.into_parts();
    let body = axum::body::to_bytes(body, ANSWER_BYTES_MAX)
        .await
        .map_err(|error| tracing::warn!(%error, "an answer's body could not be read"));
    (head, body)
}

/// Statuses whose answers never carry a body (RFC 9110 §6.4.1).
fn no_body(status: StatusCode) -> bool {
    status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// Appends the HEADERS frame(s) of an answer: `:status`, the head's fields without the ones
/// HTTP/2 forbids, `content-length` and `date` unless the head has them.
fn encode_head(
    out: &mut Vec<u8>,
    id: u32,
    head: &axum::http::response::Parts,
    body_length: usize,
    end_stream: bool,
) {
    // The block is written in place after a frame header whose length is filled in last; a
    // block longer than a frame (never, for this API's answers) moves into CONTINUATIONs.
    let start = out.len();
    frame_header(out, 0, HEADERS, 0, id);
    let block_start = out.len();
    let block = out;
    match head.status.as_u16() {
        200 => hpack::encode_indexed(8, block),
        204 => hpack::encode_indexed(9, block),
        400 => hpack::encode_indexed(12, block),
        404 => hpack::encode_indexed(13, block),
        500 => hpack::encode_indexed(14, block),
        _ => hpack::encode_raw_literal(8, b"", head.status.as_str().as_bytes(), false, block),
    }
    for (name, value) in &head.headers {
        if is_connection_specific(name) {
            continue;
        }
        encode_field(name, value, block);
    }
    if !head.headers.contains_key(header::CONTENT_LENGTH) && !no_body(head.status) {
        let mut digits = [0u8; 20];
        hpack::encode_raw_literal(28, b"", decimal(body_length, &mut digits), false, block);
    }
    if !head.headers.contains_key(header::DATE) {
        DATE.with(|date| hpack::encode_raw_literal(33, b"", date.now().as_bytes(), false, block));
    }
    let end_stream = if end_stream { FLAG_END_STREAM } else { 0 };
    let length = block.len() - block_start;
    if length <= FRAME_BYTES_DEFAULT {
        block[start..start + 3].copy_from_slice(&(length as u32).to_be_bytes()[1..]);
        block[start + 4] = end_stream | FLAG_END_HEADERS;
        return;
    }
    let whole = block.split_off(block_start);
    block.truncate(start);
    header_block_frames(block, id, &whole, end_stream, FRAME_BYTES_DEFAULT);
}

/// `value` in decimal digits, written into `digits`.
fn decimal(mut value: usize, digits: &mut [u8; 20]) -> &[u8] {
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return &digits[at..];
        }
    }
}

/// One answer field, as a literal never added to the table and not Huffman-coded (see
/// [`hpack::encode_raw_string`]): its name from the static table when it is there (RFC 7541
/// Appendix A), and never indexed if the value is sensitive.
fn encode_field(name: &HeaderName, value: &HeaderValue, block: &mut Vec<u8>) {
    let index = match name.as_str() {
        "cache-control" => 24,
        "content-length" => 28,
        "content-type" => 31,
        "date" => 33,
        "etag" => 34,
        "location" => 46,
        "retry-after" => 53,
        "www-authenticate" => 61,
        _ => 0,
    };
    hpack::encode_raw_literal(
        index,
        name.as_str().as_bytes(),
        value.as_bytes(),
        value.is_sensitive(),
        block,
    );
}

/// Fields HTTP/2 does not carry (RFC 9113 §8.2.2).
fn is_connection_specific(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

thread_local! {
    static DATE: CachedDate = CachedDate::default();
}

/// The `date` field's text, made at most once a second per thread.
#[derive(Default)]
struct CachedDate(std::cell::RefCell<(u64, String)>);

impl CachedDate {
    fn now(&self) -> std::cell::Ref<'_, str> {
        let now = SystemTime::now();
        let second = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        if self.0.borrow().0 != second || self.0.borrow().1.is_empty() {
            *self.0.borrow_mut() = (second, httpdate::fmt_http_date(now));
        }
        std::cell::Ref::map(self.0.borrow(), |(_, text)| text.as_str())
    }
}

/// A request's fields as they are decoded.
#[derive(Default)]
struct Fields {
    method: Option<Method>,
    scheme: bool,
    path: Option<Bytes>,
    headers: HeaderMap,
    content_length: Option<usize>,
    /// The decoded list's size as SETTINGS_MAX_HEADER_LIST_SIZE counts it.
    size: usize,
    malformed: Option<&'static str>,
}

impl Fields {
    fn add(&mut self, name: &[u8], value: &[u8]) {
        self.size += name.len() + value.len() + FIELD_OVERHEAD_BYTES;
        if self.malformed.is_some() || self.size > HEADER_LIST_BYTES_MAX {
            return;
        }
        if let Err(reason) = self.try_add(name, value) {
            self.malformed = Some(reason);
        }
    }

    fn try_add(&mut self, name: &[u8], value: &[u8]) -> Result<(), &'static str> {
        if let Some(pseudo) = name.strip_prefix(b":") {
            if !self.headers.is_empty() {
                return Err("a pseudo-header after a regular field");
            }
            match pseudo {
                b"method" if self.method.is_none() => {
                    self.method = Some(Method::from_bytes(value).map_err(|_| "a bad :method")?);
                }
                b"scheme" if !self.scheme => self.scheme = true,
                b"path" if self.path.is_none() => {
                    if value.is_empty() {
                        return Err("an empty :path");
                    }
                    self.path = Some(Bytes::copy_from_slice(value));
                }
                // Routing does not look at the authority.
                b"authority" => {}
                _ => return Err("an unknown or repeated pseudo-header"),
            }
            return Ok(());
        }
        let name = HeaderName::from_lowercase(name).map_err(|_| "a bad or uppercase field name")?;
        if is_connection_specific(&name) {
            return Err("a connection-specific field");
        }
        if name == header::TE && value != b"trailers" {
            return Err("te other than trailers");
        }
        if value.first().is_some_and(|b| b.is_ascii_whitespace())
            || value.last().is_some_and(|b| b.is_ascii_whitespace())
        {
            return Err("a field value with surrounding whitespace");
        }
        let value = HeaderValue::from_bytes(value).map_err(|_| "a bad field value")?;
        if name == header::CONTENT_LENGTH {
            let length = value
                .to_str()
                .ok()
                .and_then(|text| text.parse::<usize>().ok())
                .ok_or("a bad content-length")?;
            if self.content_length.is_some_and(|seen| seen != length) {
                return Err("two different content-lengths");
            }
            self.content_length = Some(length);
        }
        self.headers.append(name, value);
        Ok(())
    }

    /// The request, and its declared content-length.
    fn into_request(self) -> Result<(Request<()>, Option<usize>), &'static str> {
        if let Some(reason) = self.malformed {
            return Err(reason);
        }
        let (Some(method), true, Some(path)) = (self.method, self.scheme, self.path) else {
            return Err("a missing :method, :scheme or :path");
        };
        let uri = Uri::from_maybe_shared(path).map_err(|_| "a bad :path")?;
        let mut request = Request::new(());
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_2;
        *request.headers_mut() = self.headers;
        Ok((request, self.content_length))
    }
}
