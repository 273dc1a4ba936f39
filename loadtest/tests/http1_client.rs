//! The load's HTTP/1.1 client (http1.rs) against real TCP servers on 127.0.0.1:0 that answer
//! from a script: answers spread over many reads, empty bodies, problem+json refusals, chunked
//! bodies, connections closed mid-answer, `Connection: close`, timeouts, and a check that
//! requests are never pipelined (one request in flight per connection).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{done, runtime, unknown_label};
use payu_loadtest::api::Answer;
use payu_loadtest::http1::{
    BODY_BYTES_MAX, Http1, LABEL_BODY, LABEL_MALFORMED, LABEL_TIMEOUT, LABEL_TRANSPORT,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// A request head larger than this ends the test server's connection.
const REQUEST_BYTES_MAX: usize = 1 << 20;
/// Pause between the pieces of a scripted answer, so that they arrive in separate reads
/// (nothing is asserted about time: the answers must be read right either way).
const PIECE_PAUSE: Duration = Duration::from_millis(3);
/// The client's timeout in these tests; only the timeout test waits for it.
const TIMEOUT: Duration = Duration::from_secs(20);

/// One step of a scripted answer.
#[derive(Clone, Debug)]
enum Step {
    /// Write these bytes (then pause).
    Write(Vec<u8>),
    /// Close the connection.
    Close,
    /// Wait until this many requests have arrived (over all connections) before going on.
    AwaitRequests(usize),
    /// Never answer (the connection stays open until the test ends).
    Hang,
}

fn write(bytes: &[u8]) -> Step {
    Step::Write(bytes.to_vec())
}

/// `answer` cut into pieces of `size` bytes.
fn pieces(answer: &[u8], size: usize) -> Vec<Step> {
    answer.chunks(size).map(write).collect()
}

/// A request as the server read it.
#[derive(Clone, Debug)]
struct Seen {
    connection: usize,
    head: String,
    body: Vec<u8>,
    /// Bytes of a further request had arrived before this one was answered.
    pipelined: bool,
}

impl Seen {
    fn header(&self, name: &str) -> Option<String> {
        self.head.split("\r\n").skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

struct Server {
    url: String,
    accepted: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }
}

/// Starts a server whose answer to the n-th request (over all connections, from 0) is
/// `script(n)`.
async fn server(script: impl Fn(usize) -> Vec<Step> + Send + Sync + 'static) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let accepted = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let arrived = Arc::new((AtomicUsize::new(0), Notify::new()));
    let script = Arc::new(script);
    let (accepted_in, seen_in) = (Arc::clone(&accepted), Arc::clone(&seen));
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            socket.set_nodelay(true).expect("nodelay");
            let connection = accepted_in.fetch_add(1, Ordering::SeqCst);
            let (seen, script, arrived) = (
                Arc::clone(&seen_in),
                Arc::clone(&script),
                Arc::clone(&arrived),
            );
            tokio::spawn(serve(socket, connection, seen, script, arrived));
        }
    });
    Server {
        url,
        accepted,
        seen,
    }
}

async fn serve(
    mut socket: TcpStream,
    connection: usize,
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<impl Fn(usize) -> Vec<Step> + Send + Sync + 'static>,
    arrived: Arc<(AtomicUsize, Notify)>,
) {
    let mut buffer = Vec::new();
    loop {
        let Some((head, body)) = read_request(&mut socket, &mut buffer).await else {
            return;
        };
        let number = {
            let mut seen = seen.lock().expect("seen");
            seen.push(Seen {
                connection,
                head,
                body,
                pipelined: !buffer.is_empty(),
            });
            seen.len() - 1
        };
        arrived.0.fetch_add(1, Ordering::SeqCst);
        arrived.1.notify_waiters();
        for step in script(number) {
            match step {
                Step::Write(bytes) => {
                    if socket.write_all(&bytes).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(PIECE_PAUSE).await;
                }
                Step::Close => return,
                Step::AwaitRequests(count) => loop {
                    let notified = arrived.1.notified();
                    if arrived.0.load(Ordering::SeqCst) >= count {
                        break;
                    }
                    notified.await;
                },
                Step::Hang => std::future::pending::<()>().await,
            }
        }
        // Whatever came while answering (a pipelined request would have) is seen next time.
        if !buffer.is_empty() {
            let mut seen = seen.lock().expect("seen");
            if let Some(last) = seen.last_mut() {
                last.pipelined = true;
            }
        }
    }
}

/// Reads one request (head and Content-Length body); what follows stays in `buffer`.
async fn read_request(socket: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buffer.len() > REQUEST_BYTES_MAX {
            return None;
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8(buffer[..end].to_vec()).ok()?;
    let length: usize = head
        .split("\r\n")
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buffer.len() < end + length {
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buffer[end..end + length].to_vec();
    buffer.drain(..end + length);
    Some((head, body))
}

fn client(url: &str, timeout: Duration) -> Arc<Http1> {
    Http1::new(url, "test-token", timeout).expect("client")
}

const TRANSFER: &[u8] = br#"{"id":7,"amount":{"value":"1.5","currency":"IDR"}}"#;

fn answer_201(body: &[u8], extra_headers: &str) -> Vec<u8> {
    let mut answer = format!(
        "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\n{extra_headers}content-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(body);
    answer
}

/// Proves: an answer arriving a few bytes at a time (the head split inside its status line,
/// inside header names and inside the blank line; the body split too) is put together, the
/// replay header is read, and the request went out as the node expects it: request line,
/// Host, bearer token, JSON content type, Idempotency-Key, Content-Length and the body.
#[test]
fn an_answer_spread_over_many_reads_is_put_together() {
    let runtime = runtime();
    runtime.block_on(async {
        let answer = answer_201(TRANSFER, "Idempotent-Replayed: true\r\n");
        let server = server(move |_| pieces(&answer, 7)).await;
        let client = client(&format!("{}/", server.url), TIMEOUT);
        let (status, replayed, body) = done(
            client
                .post("/v1/transfers", Some("run-t1"), b"{\"a\":1}")
                .await,
        );
        assert_eq!((status, replayed), (201, true));
        assert_eq!(body, TRANSFER);

        let seen = server.seen();
        assert_eq!(seen.len(), 1);
        let request = &seen[0];
        assert!(
            request.head.starts_with("POST /v1/transfers HTTP/1.1\r\n"),
            "{}",
            request.head
        );
        let authority = server.url.trim_start_matches("http://");
        assert_eq!(request.header("host").as_deref(), Some(authority));
        assert_eq!(
            request.header("authorization").as_deref(),
            Some("Bearer test-token")
        );
        assert_eq!(
            request.header("content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(request.header("idempotency-key").as_deref(), Some("run-t1"));
        assert_eq!(request.header("content-length").as_deref(), Some("7"));
        assert_eq!(request.body, b"{\"a\":1}");
    });
}

/// Proves: a body of 1 MiB arriving over many reads is read whole and byte for byte, and a
/// 2xx with `Content-Length: 0` is an empty body; both leave the connection usable, so the
/// three requests share one connection.
#[test]
fn large_and_empty_bodies_are_read_and_the_connection_is_kept() {
    let runtime = runtime();
    runtime.block_on(async {
        let large: Vec<u8> = (0..1 << 20).map(|i: u32| b'a' + (i % 26) as u8).collect();
        let large_answer = answer_201(&large, "");
        let server = server(move |n| match n {
            0 => vec![write(&large_answer)],
            _ => vec![write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")],
        })
        .await;
        let client = client(&server.url, TIMEOUT);
        let (status, _, body) = done(client.post("/v1/transfers/batch", Some("k1"), b"{}").await);
        assert_eq!(status, 201);
        assert!(body == large, "the 1 MiB body, byte for byte");
        for key in ["k2", "k3"] {
            let (status, replayed, body) =
                done(client.post("/v1/holds/1/release", Some(key), b"").await);
            assert_eq!((status, replayed, body.len()), (200, false, 0));
        }
        assert_eq!(server.accepted(), 1, "one keep-alive connection");
        let seen = server.seen();
        assert_eq!(
            seen[1].header("content-type"),
            None,
            "no content type without a body"
        );
        assert_eq!(seen[1].header("content-length").as_deref(), Some("0"));
        assert!(
            seen[1]
                .head
                .starts_with("POST /v1/holds/1/release HTTP/1.1\r\n")
        );
    });
}

/// Proves: a 4xx problem+json answer is a refusal carrying the problem's code, a 5xx is an
/// unknown outcome labelled with its status and code, and a refusal's connection is reused.
#[test]
fn problem_answers_are_refusals_or_unknown_with_their_codes() {
    let runtime = runtime();
    runtime.block_on(async {
        let refusal = br#"{"type":"about:blank","title":"Insufficient funds","status":422,"code":"INSUFFICIENT_FUNDS"}"#;
        let unavailable = br#"{"title":"Busy","status":503,"code":"RING_FULL"}"#;
        let problem = |status: &str, body: &[u8]| {
            let mut answer = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/problem+json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            answer.extend_from_slice(body);
            answer
        };
        let (first, second) = (
            problem("422 Unprocessable Entity", refusal),
            problem("503 Service Unavailable", unavailable),
        );
        let server = server(move |n| match n {
            0 => pieces(&first, 11),
            _ => vec![write(&second)],
        })
        .await;
        let client = client(&server.url, TIMEOUT);
        match client.post("/v1/transfers", Some("k1"), b"{}").await {
            Answer::Refused { status, code } => {
                assert_eq!((status, code.as_str()), (422, "INSUFFICIENT_FUNDS"))
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(
            unknown_label(client.post("/v1/transfers", Some("k2"), b"{}").await),
            "503 RING_FULL"
        );
        assert_eq!(server.accepted(), 1);
    });
}

/// Proves: a connection that closes in the middle of an answer's body, or before any answer,
/// makes the outcome unknown (the node may have applied the request), and the next request
/// opens a fresh connection and succeeds.
#[test]
fn a_connection_closed_mid_answer_is_an_unknown_outcome() {
    let runtime = runtime();
    runtime.block_on(async {
        let server = server(|n| match n {
            0 => vec![
                write(b"HTTP/1.1 201 Created\r\nContent-Length: 100\r\n\r\n"),
                write(b"{\"id\":"),
                Step::Close,
            ],
            1 => vec![write(b"HTTP/1.1 201 Cre"), Step::Close],
            2 => vec![Step::Close],
            _ => vec![write(&answer_201(TRANSFER, ""))],
        })
        .await;
        let client = client(&server.url, TIMEOUT);
        let label = |answer| unknown_label(answer);
        assert_eq!(
            label(client.post("/v1/transfers", Some("k1"), b"{}").await),
            LABEL_BODY
        );
        assert_eq!(
            label(client.post("/v1/transfers", Some("k2"), b"{}").await),
            LABEL_TRANSPORT
        );
        assert_eq!(
            label(client.post("/v1/transfers", Some("k3"), b"{}").await),
            LABEL_TRANSPORT
        );
        let (status, _, body) = done(client.post("/v1/transfers", Some("k4"), b"{}").await);
        assert_eq!((status, body.as_slice()), (201, TRANSFER));
        assert_eq!(server.accepted(), 4, "a fresh connection after each close");
    });
}

/// Proves: a chunked answer (chunk extensions, a trailer, chunks cut across reads) is decoded
/// into the body, and the connection is kept; an answer the client cannot read (not HTTP/1.x,
/// or two different Content-Lengths) is an unknown outcome and its connection is not reused.
#[test]
fn chunked_answers_are_decoded_and_garbage_is_unknown() {
    let runtime = runtime();
    runtime.block_on(async {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n\
            5;ext=1\r\n{\"id\"\r\n1\r\n:\r\n10\r\n0123456789abcdef\r\n1\r\n}\r\n0\r\nX-Trailer: yes\r\n\r\n";
        let chunked = chunked.to_vec();
        let server = server(move |n| match n {
            0 | 1 => pieces(&chunked, 5),
            2 => vec![write(b"HTTP/2 200 OK\r\n\r\n")],
            3 => vec![write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
            )],
            _ => vec![write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")],
        })
        .await;
        let client = client(&server.url, TIMEOUT);
        for key in ["k1", "k2"] {
            let (status, _, body) = done(client.post("/v1/transfers", Some(key), b"{}").await);
            assert_eq!(status, 200);
            assert_eq!(body, b"{\"id\":0123456789abcdef}");
        }
        assert_eq!(server.accepted(), 1, "a chunked answer keeps the connection");
        for key in ["k3", "k4"] {
            assert_eq!(
                unknown_label(client.post("/v1/transfers", Some(key), b"{}").await),
                LABEL_MALFORMED
            );
        }
        let (_, _, body) = done(client.post("/v1/transfers", Some("k5"), b"{}").await);
        assert_eq!(body, b"ok");
        assert_eq!(server.accepted(), 3, "no reuse after an unreadable answer");
    });
}

/// Proves: `Connection: close` is honoured (the next request opens a new connection), and so
/// is an answer with neither length nor chunking, read to the connection's end.
#[test]
fn connection_close_and_answers_framed_by_the_close_are_honoured() {
    let runtime = runtime();
    runtime.block_on(async {
        let server = server(|n| match n {
            0 => vec![write(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            )],
            1 => vec![
                write(b"HTTP/1.1 200 OK\r\n\r\nuntil "),
                write(b"close"),
                Step::Close,
            ],
            _ => vec![write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlast")],
        })
        .await;
        let client = client(&server.url, TIMEOUT);
        assert_eq!(
            done(client.post("/v1/transfers", Some("k1"), b"{}").await).2,
            b"ok"
        );
        assert_eq!(
            done(client.post("/v1/transfers", Some("k2"), b"{}").await).2,
            b"until close"
        );
        assert_eq!(
            done(client.post("/v1/transfers", Some("k3"), b"{}").await).2,
            b"last"
        );
        assert_eq!(server.accepted(), 3);
    });
}

/// Proves: a request the server never answers ends as an unknown outcome labelled "timeout"
/// once the client's timeout passes, and the abandoned connection is not reused.
#[test]
fn a_request_past_its_timeout_is_an_unknown_outcome() {
    let runtime = runtime();
    runtime.block_on(async {
        let server = server(|n| match n {
            0 => vec![write(b"HTTP/1.1 200 OK\r\nContent-Len"), Step::Hang],
            _ => vec![write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")],
        })
        .await;
        let client = client(&server.url, Duration::from_millis(200));
        assert_eq!(
            unknown_label(client.post("/v1/transfers", Some("k1"), b"{}").await),
            LABEL_TIMEOUT
        );
        assert_eq!(
            done(client.post("/v1/transfers", Some("k2"), b"{}").await).2,
            b"ok"
        );
        assert_eq!(server.accepted(), 2);
    });
}

/// Proves: requests are never pipelined. Eight requests are sent at once and the server
/// answers none of them until all eight have arrived, each read on its own: that happens only
/// if each went out on a connection of its own (a pipelined request would sit unread behind an
/// unanswered one, and show as bytes after it). Then eight more, one after another, reuse one
/// of those connections.
#[test]
fn requests_are_never_pipelined() {
    const AT_ONCE: usize = 8;
    let runtime = runtime();
    runtime.block_on(async {
        let server = server(|n| match n {
            n if n < AT_ONCE => vec![
                Step::AwaitRequests(AT_ONCE),
                write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
            ],
            _ => vec![write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")],
        })
        .await;
        let client = client(&server.url, TIMEOUT);
        let sends: Vec<_> = (0..AT_ONCE)
            .map(|i| {
                let client = Arc::clone(&client);
                tokio::spawn(async move {
                    let key = format!("k{i}");
                    done(client.post("/v1/transfers", Some(&key), b"{}").await)
                })
            })
            .collect();
        for send in sends {
            let (status, _, body) = send.await.expect("send");
            assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));
        }
        assert_eq!(
            server.accepted(),
            AT_ONCE,
            "one connection per request in flight"
        );
        assert_eq!(client.idle_connections(), AT_ONCE);
        for i in 0..AT_ONCE {
            let key = format!("again{i}");
            let (status, _, _) = done(client.post("/v1/transfers", Some(&key), b"{}").await);
            assert_eq!(status, 200);
        }
        assert_eq!(
            server.accepted(),
            AT_ONCE,
            "sequential requests reuse connections"
        );
        let seen = server.seen();
        assert_eq!(seen.len(), 2 * AT_ONCE);
        assert!(
            seen.iter().all(|s| !s.pipelined),
            "a request arrived before the previous one on its connection was answered"
        );
        let last = seen[AT_ONCE].connection;
        assert!(
            seen[AT_ONCE..].iter().all(|s| s.connection == last),
            "the most recently used connection is reused"
        );
    });
}

/// Proves: the bound on an answer's body is enforced before anything is read into memory.
#[test]
fn an_answer_larger_than_the_bound_is_unknown() {
    let runtime = runtime();
    runtime.block_on(async {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            BODY_BYTES_MAX + 1
        );
        let server = server(move |_| vec![write(head.as_bytes())]).await;
        let client = client(&server.url, TIMEOUT);
        assert_eq!(
            unknown_label(client.post("/v1/transfers", Some("k1"), b"{}").await),
            LABEL_MALFORMED
        );
    });
}
