//! The load's own HTTP/1.1 client: keep-alive connections over `tokio::net::TcpStream`, one
//! request at a time per connection (no pipelining), request bytes rendered into a buffer the
//! connection keeps, and the answer parsed by hand into another. It exists because reqwest
//! (hyper, its pool, its header maps) cost about four times wrk's CPU per request, and on a
//! box shared with the node that CPU comes out of the node's budget.
//!
//! It speaks only what the node's write endpoints need: plain `http://`, POST, a JSON body,
//! answers framed by Content-Length (chunked answers are decoded too; an answer framed by the
//! connection's end is read to it). Anything it cannot read, a connection that fails or closes
//! before the answer is complete, and a request that outlives its timeout are
//! [`Answer::Unknown`]: the request may have been applied, and is resolved later by resending
//! it with the same Idempotency-Key (api.rs), exactly as for reqwest's transport errors.

use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::{Deref, Range};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use crate::api::{Answer, Body, problem_code};

/// Idle keep-alive connections kept per pool, at most; more are closed when their request
/// ends. (Connections in use are bounded by the load's in-flight bound, `--concurrency`.)
pub const IDLE_CONNECTIONS_MAX: usize = 4096;
/// Pools: one per lane (driver.rs), and one for every other thread.
pub(crate) const POOLS: usize = crate::driver::LANES_MAX + 1;

thread_local! {
    /// The lane this thread drives, if any: a connection belongs to the runtime that opened
    /// it, so each lane keeps its own pool.
    static LANE: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Marks the calling thread as driving lane `lane`: its requests use that lane's pool.
pub fn enter_lane(lane: usize) {
    LANE.with(|cell| cell.set(Some(lane)));
}

/// The pool of the calling thread.
pub(crate) fn pool_index() -> usize {
    LANE.with(std::cell::Cell::get)
        .map_or(0, |lane| 1 + lane % (POOLS - 1))
}
/// An answer's status line and headers, at most.
pub const HEAD_BYTES_MAX: usize = 16 * 1024;
/// An answer's body, at most (a batch of 8190 transfers answers about 3 MB).
pub const BODY_BYTES_MAX: usize = 64 << 20;
/// One chunk-size line of a chunked answer, at most.
const CHUNK_LINE_BYTES_MAX: usize = 1024;
/// Free space offered to each read.
const READ_BYTES_MIN: usize = 4096;
/// A connection's buffers start at this many bytes...
const BUFFER_BYTES_INITIAL: usize = 4096;
/// ...and are given back when a large request or answer (a batch) grew them past this.
const BUFFER_BYTES_RETAINED_MAX: usize = 256 * 1024;

/// Labels of unknown outcomes in the run's error table (the reqwest path uses the same words).
pub const LABEL_TIMEOUT: &str = "timeout";
pub const LABEL_CONNECT: &str = "connect error";
/// The connection failed or closed before the answer's head was complete.
pub const LABEL_TRANSPORT: &str = "transport error";
/// The connection failed or closed in the middle of the answer's body.
pub const LABEL_BODY: &str = "body error";
/// An answer this client cannot read (not HTTP/1.x, bad framing, chunked garbage, too large).
pub const LABEL_MALFORMED: &str = "malformed answer";

/// A keep-alive HTTP/1.1 client for one node.
pub struct Http1 {
    address: SocketAddr,
    /// The base URL's path ("" for `http://host:port`), put before every request's path.
    path_prefix: String,
    /// `Host: ...\r\nAuthorization: Bearer ...\r\n`, rendered once.
    fixed_headers: Vec<u8>,
    timeout: Duration,
    /// Idle connections, most recently used last, per pool (see [`enter_lane`]).
    pools: Vec<Mutex<Vec<Connection>>>,
}

/// One connection and the buffers it reuses from request to request.
struct Connection {
    stream: TcpStream,
    request: Vec<u8>,
    answer: Vec<u8>,
}

/// How an answer's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Length(usize),
    Chunked,
    /// No length and not chunked: the body runs to the end of the connection.
    UntilClose,
}

/// A parsed answer head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// Bytes of the status line and headers, the blank line included.
    pub length: usize,
    pub framing: Framing,
    /// `Idempotent-Replayed: true`.
    pub replayed: bool,
    /// A JSON content type (`application/json`, `application/problem+json`).
    pub json: bool,
    /// The connection may carry another request (HTTP/1.1 without `Connection: close`).
    pub keep_alive: bool,
}

/// A 2xx answer's body, read into its connection's buffer. Dropping it gives the connection
/// back to the pool (when it can carry another request).
pub struct Reply {
    connection: Option<Connection>,
    client: Arc<Http1>,
    body: Range<usize>,
    reusable: bool,
}

impl Deref for Reply {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.connection {
            Some(connection) => &connection.answer[self.body.clone()],
            None => &[],
        }
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reply({} bytes)", self.body.len())
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take()
            && self.reusable
        {
            self.client.check_in(connection);
        }
    }
}

impl Http1 {
    /// A client for `base` (`http://host[:port][/prefix]`), sending `token` as a bearer token
    /// and giving up on a request after `timeout`.
    pub fn new(base: &str, token: &str, timeout: Duration) -> anyhow::Result<Arc<Http1>> {
        let (address, authority, path_prefix) = parse_base(base)?;
        let mut fixed = String::new();
        // Writing into a String cannot fail.
        let _ = write!(
            fixed,
            "Host: {authority}\r\nAuthorization: Bearer {token}\r\n"
        );
        if fixed
            .bytes()
            .any(|b| b.is_ascii_control() && b != b'\r' && b != b'\n')
            || token.bytes().any(|b| b == b'\r' || b == b'\n')
        {
            bail!("the token is not a valid header value");
        }
        Ok(Arc::new(Http1 {
            address,
            path_prefix,
            fixed_headers: fixed.into_bytes(),
            timeout,
            pools: (0..POOLS).map(|_| Mutex::new(Vec::new())).collect(),
        }))
    }

    /// Connections waiting in the calling thread's pool.
    pub fn idle_connections(&self) -> usize {
        self.pool().len()
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.pools[pool_index()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// POSTs `body` (JSON; none when empty) to `path` with an optional Idempotency-Key, within
    /// the client's timeout.
    pub async fn post(self: &Arc<Self>, path: &str, key: Option<&str>, body: &[u8]) -> Answer {
        match tokio::time::timeout(self.timeout, self.exchange(path, key, body)).await {
            Ok(answer) => answer,
            // Dropping the exchange closed its connection: it is never reused half-read.
            Err(_) => unknown(LABEL_TIMEOUT),
        }
    }

    async fn exchange(self: &Arc<Self>, path: &str, key: Option<&str>, body: &[u8]) -> Answer {
        let mut connection = match self.check_out() {
            Some(connection) => connection,
            None => match self.connect().await {
                Ok(connection) => connection,
                Err(_) => return unknown(LABEL_CONNECT),
            },
        };
        self.render(&mut connection.request, path, key, body);
        if connection
            .stream
            .write_all(&connection.request)
            .await
            .is_err()
        {
            return unknown(LABEL_TRANSPORT);
        }
        let (head, body, extra) = match connection.read_answer().await {
            Ok(answer) => answer,
            Err(label) => return unknown(label),
        };
        // Bytes after the answer were never asked for: the connection is not trusted again.
        let reusable = head.keep_alive && !extra;
        if reusable {
            connection.settle();
        }
        match head.status {
            200..=299 => Answer::Done {
                status: head.status,
                replayed: head.replayed,
                body: Body::Reply(Reply {
                    connection: Some(connection),
                    client: Arc::clone(self),
                    body,
                    reusable,
                }),
            },
            status => {
                let code = match head.json {
                    true => problem_code(&connection.answer[body]),
                    false => "-".to_owned(),
                };
                if reusable {
                    self.check_in(connection);
                }
                Answer::not_done(status, code)
            }
        }
    }

    /// The request's bytes: request line, the fixed headers, key, framing, body.
    fn render(&self, out: &mut Vec<u8>, path: &str, key: Option<&str>, body: &[u8]) {
        out.clear();
        out.extend_from_slice(b"POST ");
        out.extend_from_slice(self.path_prefix.as_bytes());
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        out.extend_from_slice(&self.fixed_headers);
        if !body.is_empty() {
            out.extend_from_slice(b"Content-Type: application/json\r\n");
        }
        if let Some(key) = key {
            out.extend_from_slice(b"Idempotency-Key: ");
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"Content-Length: ");
        push_decimal(out, body.len());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(body);
    }

    /// The most recently used idle connection that is still open, if any.
    fn check_out(&self) -> Option<Connection> {
        loop {
            let connection = self.pool().pop()?;
            if connection.quiet() {
                return Some(connection);
            }
            // The node closed it (or sent something unasked): drop it, try the next.
        }
    }

    fn check_in(&self, mut connection: Connection) {
        if connection.answer.capacity() > BUFFER_BYTES_RETAINED_MAX {
            connection.answer = Vec::with_capacity(BUFFER_BYTES_INITIAL);
        }
        let mut idle = self.pool();
        if idle.len() < IDLE_CONNECTIONS_MAX {
            idle.push(connection);
        }
    }

    async fn connect(&self) -> std::io::Result<Connection> {
        let stream = TcpStream::connect(self.address).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            request: Vec::with_capacity(BUFFER_BYTES_INITIAL),
            answer: Vec::with_capacity(BUFFER_BYTES_INITIAL),
        })
    }
}

/// A base URL `http://host[:port][/prefix]`: the node's address, the authority as written,
/// and the prefix ("" for none) without a trailing slash.
pub(crate) fn parse_base(base: &str) -> anyhow::Result<(SocketAddr, String, String)> {
    let Some(rest) = base.strip_prefix("http://") else {
        bail!("{base:?} is not an http:// URL");
    };
    let (authority, path_prefix) = match rest.find('/') {
        Some(at) => (&rest[..at], rest[at..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        bail!("{base:?}: expected http://host[:port]");
    }
    let address = authority
        .to_socket_addrs()
        .or_else(|_| format!("{authority}:80").to_socket_addrs())
        .with_context(|| format!("resolving {authority:?}"))?
        .next()
        .with_context(|| format!("{authority:?} resolves to no address"))?;
    Ok((address, authority.to_owned(), path_prefix.to_owned()))
}

/// Whether a Content-Type value is JSON (`application/json` or `application/problem+json`,
/// any parameters such as a charset aside).
pub(crate) fn is_json_content_type(value: &[u8]) -> bool {
    let essence = value.split(|&b| b == b';').next().unwrap_or_default();
    let essence = essence.trim_ascii();
    essence.eq_ignore_ascii_case(b"application/json")
        || essence.eq_ignore_ascii_case(b"application/problem+json")
}

pub(crate) fn unknown(label: &str) -> Answer {
    Answer::Unknown {
        label: label.to_owned(),
    }
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

impl Connection {
    /// Reads one answer: its head, then its body into `answer[body]` (decoded in place when
    /// chunked). Interim 1xx answers are skipped. The flag says whether bytes followed the
    /// answer (nothing should: this client never pipelines).
    async fn read_answer(&mut self) -> Result<(Head, Range<usize>, bool), &'static str> {
        self.answer.clear();
        let mut scanned = 0;
        let head = loop {
            match parse_head(&self.answer, scanned)? {
                Parsed::Head(head) if (100..200).contains(&head.status) => {
                    self.answer.drain(..head.length);
                    scanned = 0;
                }
                Parsed::Head(head) => break head,
                Parsed::Partial { scanned: upto } => {
                    scanned = upto;
                    if self.answer.len() > HEAD_BYTES_MAX {
                        return Err(LABEL_MALFORMED);
                    }
                    match self.fill(READ_BYTES_MIN).await {
                        Ok(0) | Err(_) => return Err(LABEL_TRANSPORT),
                        Ok(_) => {}
                    }
                }
            }
        };
        let start = head.length;
        match head.framing {
            Framing::Length(length) => {
                if length > BODY_BYTES_MAX {
                    return Err(LABEL_MALFORMED);
                }
                while self.answer.len() < start + length {
                    let missing = start + length - self.answer.len();
                    match self.fill(missing).await {
                        Ok(0) | Err(_) => return Err(LABEL_BODY),
                        Ok(_) => {}
                    }
                }
                let extra = self.answer.len() > start + length;
                Ok((head, start..start + length, extra))
            }
            Framing::Chunked => {
                let mut chunks = Dechunker::new(start);
                loop {
                    if let Some((end, extra)) = chunks.advance(&mut self.answer)? {
                        return Ok((head, start..end, extra));
                    }
                    match self.fill(READ_BYTES_MIN).await {
                        Ok(0) | Err(_) => return Err(LABEL_BODY),
                        Ok(_) => {}
                    }
                }
            }
            Framing::UntilClose => loop {
                match self.fill(READ_BYTES_MIN).await {
                    Ok(0) => return Ok((head, start..self.answer.len(), false)),
                    Err(_) => return Err(LABEL_BODY),
                    Ok(_) if self.answer.len() - start > BODY_BYTES_MAX => {
                        return Err(LABEL_MALFORMED);
                    }
                    Ok(_) => {}
                }
            },
        }
    }

    /// Reads once into the answer buffer, with room for at least `want` bytes (and at least
    /// [`READ_BYTES_MIN`]); returns how many came (0: the peer closed).
    async fn fill(&mut self, want: usize) -> std::io::Result<usize> {
        self.answer.reserve(want.max(READ_BYTES_MIN));
        self.stream.read_buf(&mut self.answer).await
    }

    /// After a complete answer that leaves the connection usable: shrinks a request buffer a
    /// batch grew (the answer buffer is shrunk when the reply is done with it), and forgets
    /// the socket's stale read readiness, so the next answer's first read waits for data
    /// instead of costing a read that finds none.
    fn settle(&mut self) {
        if self.request.capacity() > BUFFER_BYTES_RETAINED_MAX {
            self.request = Vec::with_capacity(BUFFER_BYTES_INITIAL);
        }
        // Clearing readiness without a syscall: tokio clears it when the closure says
        // WouldBlock, unless a newer readiness event arrived meanwhile (then nothing is lost;
        // a close is never cleared).
        let _ = self.stream.try_io(Interest::READABLE, || {
            Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
        });
    }

    /// An idle connection is quiet when no readiness arrived since its last answer: the node
    /// neither closed it nor sent anything unasked. (No syscall unless something arrived.)
    fn quiet(&self) -> bool {
        let mut context = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut context) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                // A spurious readiness reads WouldBlock: still usable.
                matches!(self.stream.try_read(&mut probe), Err(error) if error.kind() == std::io::ErrorKind::WouldBlock)
            }
        }
    }
}

/// What [`parse_head`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Head(Head),
    /// The head is not complete; the blank line is not within `buffer[..scanned]` (pass it
    /// back so the next call scans only what came since).
    Partial {
        scanned: usize,
    },
}

/// Parses an answer's status line and headers from the start of `buffer`, if complete.
pub fn parse_head(buffer: &[u8], scanned: usize) -> Result<Parsed, &'static str> {
    let from = scanned.saturating_sub(3);
    let Some(at) = buffer[from..]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| from + at)
    else {
        return Ok(Parsed::Partial {
            scanned: buffer.len(),
        });
    };
    let length = at + 4;
    let text = &buffer[..at];
    let mut lines = text.split(|&b| b == b'\n').map(|line| match line {
        [rest @ .., b'\r'] => rest,
        line => line,
    });
    let status_line = lines.next().ok_or(LABEL_MALFORMED)?;
    let (version, rest) = split_once(status_line, b' ').ok_or(LABEL_MALFORMED)?;
    let http11 = match version {
        b"HTTP/1.1" => true,
        b"HTTP/1.0" => false,
        _ => return Err(LABEL_MALFORMED),
    };
    let code = rest.get(..3).ok_or(LABEL_MALFORMED)?;
    if !code.iter().all(u8::is_ascii_digit) || rest.get(3).is_some_and(|&b| b != b' ') {
        return Err(LABEL_MALFORMED);
    }
    let status = code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    let mut head = Head {
        status,
        length,
        framing: Framing::UntilClose,
        replayed: false,
        json: false,
        keep_alive: http11,
    };
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = split_once(line, b':').ok_or(LABEL_MALFORMED)?;
        let value = value.trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            let parsed = parse_length(value).ok_or(LABEL_MALFORMED)?;
            if content_length.is_some_and(|known| known != parsed) {
                return Err(LABEL_MALFORMED);
            }
            content_length = Some(parsed);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Only chunked is understood (and must be the last coding).
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
            if !last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(LABEL_MALFORMED);
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            if value
                .split(|&b| b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
            {
                head.keep_alive = false;
            }
        } else if name.eq_ignore_ascii_case(b"idempotent-replayed") {
            head.replayed = value.eq_ignore_ascii_case(b"true");
        } else if name.eq_ignore_ascii_case(b"content-type") {
            head.json = is_json_content_type(value);
        }
    }
    head.framing = match (chunked, content_length) {
        (true, _) => Framing::Chunked,
        // Answers that never have a body (RFC 9112 §6.3).
        _ if status == 204 || status == 304 || (100..200).contains(&status) => Framing::Length(0),
        (false, Some(length)) => Framing::Length(length),
        (false, None) => Framing::UntilClose,
    };
    if head.framing == Framing::UntilClose {
        head.keep_alive = false;
    }
    Ok(Parsed::Head(head))
}

fn split_once(bytes: &[u8], separator: u8) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|&b| b == separator)?;
    Some((&bytes[..at], &bytes[at + 1..]))
}

fn parse_length(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0usize, |n, d| n * 10 + usize::from(d - b'0')),
    )
}

/// Decodes a chunked body in place as its bytes arrive: chunk data is moved down over the
/// chunk-size lines, so the body ends up contiguous after the head.
#[derive(Debug)]
pub struct Dechunker {
    /// Where the body starts.
    start: usize,
    /// End of the decoded body so far.
    written: usize,
    /// Start of the raw bytes not decoded yet.
    read: usize,
    /// In the trailer section, after the last (empty) chunk.
    trailer: bool,
}

impl Dechunker {
    /// Decoding the body that starts at `start` (just after the head).
    pub fn new(start: usize) -> Dechunker {
        Dechunker {
            start,
            written: start,
            read: start,
            trailer: false,
        }
    }

    /// Decodes what `buffer` holds; `Some((end, extra))` once the body is complete (decoded
    /// body: `buffer[start..end]`; the buffer is truncated there; `extra`: bytes followed the
    /// chunked message), `None` when more bytes are needed.
    pub fn advance(&mut self, buffer: &mut Vec<u8>) -> Result<Option<(usize, bool)>, &'static str> {
        loop {
            let Some(rest) = buffer.get(self.read..) else {
                return Ok(None);
            };
            let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
                if rest.len() > CHUNK_LINE_BYTES_MAX {
                    return Err(LABEL_MALFORMED);
                }
                return Ok(None);
            };
            if line_end > CHUNK_LINE_BYTES_MAX {
                return Err(LABEL_MALFORMED);
            }
            if self.trailer {
                self.read += line_end + 2;
                if line_end == 0 {
                    let extra = buffer.len() > self.read;
                    buffer.truncate(self.written);
                    return Ok(Some((self.written, extra)));
                }
                continue; // a trailer field: ignored
            }
            let line = &rest[..line_end];
            let size = line.split(|&b| b == b';').next().unwrap_or_default();
            let size = size.trim_ascii();
            if size.is_empty() || size.len() > 15 {
                return Err(LABEL_MALFORMED);
            }
            let mut length = 0usize;
            for &digit in size {
                let value = (digit as char).to_digit(16).ok_or(LABEL_MALFORMED)?;
                length = length * 16 + value as usize;
            }
            if length == 0 {
                self.read += line_end + 2;
                self.trailer = true;
                continue;
            }
            if self.written - self.start + length > BODY_BYTES_MAX {
                return Err(LABEL_MALFORMED);
            }
            let data = self.read + line_end + 2;
            if buffer.len() < data + length + 2 {
                return Ok(None);
            }
            if &buffer[data + length..data + length + 2] != b"\r\n" {
                return Err(LABEL_MALFORMED);
            }
            buffer.copy_within(data..data + length, self.written);
            self.written += length;
            self.read = data + length + 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &[u8] =
        b"HTTP/1.1 201 Created\r\ncontent-type: application/json; charset=utf-8\r\n\
        Idempotent-Replayed: TRUE\r\ncontent-length: 12\r\n\r\n{\"id\":12345}";

    /// Feeds `bytes` one prefix at a time, as reads would, scanning incrementally.
    fn head_of(bytes: &[u8], step: usize) -> Head {
        let mut scanned = 0;
        let mut upto = 0;
        loop {
            upto = (upto + step).min(bytes.len());
            match parse_head(&bytes[..upto], scanned).expect("well formed") {
                Parsed::Head(head) => return head,
                Parsed::Partial { scanned: s } => {
                    assert!(upto < bytes.len(), "the head is complete");
                    scanned = s;
                }
            }
        }
    }

    #[test]
    fn the_head_is_found_whatever_the_reads_cut() {
        let expected = Head {
            status: 201,
            length: ANSWER.len() - 12,
            framing: Framing::Length(12),
            replayed: true,
            json: true,
            keep_alive: true,
        };
        for step in 1..ANSWER.len() {
            assert_eq!(head_of(ANSWER, step), expected, "reads of {step} bytes");
        }
    }

    #[test]
    fn framing_and_connection_rules() {
        let head = |text: &str| match parse_head(text.as_bytes(), 0) {
            Ok(Parsed::Head(head)) => Ok(head),
            Ok(Parsed::Partial { .. }) => panic!("complete: {text:?}"),
            Err(label) => Err(label),
        };
        let h =
            head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").expect("parses");
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, true));
        let h = head("HTTP/1.1 204 No Content\r\n\r\n").expect("parses");
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(0), true));
        let h = head("HTTP/1.1 200 OK\r\n\r\n").expect("parses");
        assert_eq!((h.framing, h.keep_alive), (Framing::UntilClose, false));
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").expect("parses");
        assert!(!h.keep_alive);
        let h =
            head("HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\ncontent-length: 1\r\n\r\n")
                .expect("parses");
        assert!(!h.keep_alive);
        let h = head("HTTP/1.1 409 \r\nContent-Type: text/plain\r\ncontent-length: 1\r\n\r\n")
            .expect("parses");
        assert_eq!((h.status, h.json), (409, false));
        for bad in [
            "HTTP/2 200 OK\r\n\r\n",
            "HTTP/1.1 20 OK\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        ] {
            assert_eq!(head(bad), Err(LABEL_MALFORMED), "{bad:?}");
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_reads_cut() {
        let raw = b"HEAD4;x=y\r\nabcd\r\n1\r\ne\r\nA\r\n0123456789\r\n0\r\nTrailer: t\r\n\r\n";
        for step in 1..raw.len() {
            let mut buffer = Vec::new();
            let mut chunks = Dechunker::new(4);
            let mut fed = 0;
            let end = loop {
                if let Some(done) = chunks.advance(&mut buffer).expect("well formed") {
                    break done;
                }
                assert!(fed < raw.len(), "complete after every byte (step {step})");
                let next = (fed + step).min(raw.len());
                buffer.extend_from_slice(&raw[fed..next]);
                fed = next;
            };
            assert_eq!(end, (4 + 15, false));
            assert_eq!(&buffer[4..end.0], b"abcde0123456789", "step {step}");
        }
        let mut extra = b"3\r\nabc\r\n0\r\n\r\nHTTP".to_vec();
        assert_eq!(Dechunker::new(0).advance(&mut extra), Ok(Some((3, true))));
        for bad in [&b"x\r\n"[..], b"3\r\nabcX\r\n", b"\r\n"] {
            let mut buffer = bad.to_vec();
            assert_eq!(
                Dechunker::new(0).advance(&mut buffer),
                Err(LABEL_MALFORMED),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn requests_render_with_their_fixed_parts() {
        let client = Http1::new("http://127.0.0.1:8080/base/", "tok", Duration::from_secs(1))
            .expect("client");
        let mut out = Vec::new();
        client.render(&mut out, "/v1/transfers", Some("k-1"), b"{}");
        assert_eq!(
            String::from_utf8(out.clone()).expect("ASCII"),
            "POST /base/v1/transfers HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAuthorization: Bearer tok\r\n\
             Content-Type: application/json\r\nIdempotency-Key: k-1\r\nContent-Length: 2\r\n\r\n{}"
        );
        client.render(&mut out, "/v1/holds/9/release", None, b"");
        assert!(out.ends_with(b"Authorization: Bearer tok\r\nContent-Length: 0\r\n\r\n"));
        assert!(Http1::new("https://x", "t", Duration::from_secs(1)).is_err());
        assert!(Http1::new("http://127.0.0.1:1", "a\r\nb", Duration::from_secs(1)).is_err());
    }
}
