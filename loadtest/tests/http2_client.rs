//! The load's HTTP/2 client (http2.rs) against real h2c servers on 127.0.0.1:0 (the `h2`
//! crate's server side) that answer from a script: what a request carries, answers in many
//! DATA frames, problem+json refusals, streams reset by the server, connections closed under
//! the client, timeouts, the body bound, and that many requests share a few connections.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{done, runtime, unknown_label};
use payu_loadtest::api::Answer;
use payu_loadtest::http1::{BODY_BYTES_MAX, LABEL_BODY, LABEL_TIMEOUT, LABEL_TRANSPORT};
use payu_loadtest::http2::Http2;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// The client's timeout in these tests; only the timeout test waits for it.
const TIMEOUT: Duration = Duration::from_secs(20);

/// What the server does with one request (after reading all of its body).
#[derive(Clone, Debug)]
enum Script {
    /// Answer with this status, extra headers and body, the body in DATA frames of these sizes.
    Answer {
        status: u16,
        headers: Vec<(&'static str, &'static str)>,
        body: Vec<u8>,
        frames: usize,
    },
    /// Reset the request's stream.
    Reset,
    /// Close the whole connection without answering.
    Close,
    /// Never answer.
    Hang,
    /// Wait until this many requests have arrived (over all connections), then answer 200.
    AwaitRequests(usize),
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    connection: usize,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
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

/// A server answering request `n` (counted over all connections) as `script(n)` says.
async fn server(script: impl Fn(usize) -> Script + Send + Sync + 'static) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let accepted = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (accepted_, seen_) = (Arc::clone(&accepted), Arc::clone(&seen));
    let script = Arc::new(script);
    let arrived = Arc::new(Notify::new());
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let connection = accepted_.fetch_add(1, Ordering::SeqCst);
            let (seen, script, arrived) = (
                Arc::clone(&seen_),
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
    socket: tokio::net::TcpStream,
    connection: usize,
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<impl Fn(usize) -> Script + Send + Sync + 'static>,
    arrived: Arc<Notify>,
) {
    let Ok(mut h2) = h2::server::handshake(socket).await else {
        return;
    };
    let close = Arc::new(Notify::new());
    loop {
        let next = tokio::select! {
            next = h2.accept() => next,
            () = close.notified() => return,
        };
        let Some(Ok((request, mut respond))) = next else {
            return;
        };
        let (seen, script, arrived, close) = (
            Arc::clone(&seen),
            Arc::clone(&script),
            Arc::clone(&arrived),
            Arc::clone(&close),
        );
        tokio::spawn(async move {
            let (head, mut received) = request.into_parts();
            let mut body = Vec::new();
            while let Some(Ok(chunk)) = received.data().await {
                let _ = received.flow_control().release_capacity(chunk.len());
                body.extend_from_slice(&chunk);
            }
            let n = {
                let mut seen = seen.lock().expect("seen");
                seen.push(Seen {
                    connection,
                    method: head.method.to_string(),
                    path: head.uri.path().to_owned(),
                    headers: head
                        .headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_owned()))
                        .collect(),
                    body,
                });
                seen.len() - 1
            };
            arrived.notify_waiters();
            let (status, headers, body, frames) = match script(n) {
                Script::Answer {
                    status,
                    headers,
                    body,
                    frames,
                } => (status, headers, body, frames),
                Script::Reset => return respond.send_reset(h2::Reason::INTERNAL_ERROR),
                Script::Close => return close.notify_one(),
                Script::Hang => return std::future::pending().await,
                Script::AwaitRequests(count) => {
                    loop {
                        let more = arrived.notified();
                        if seen.lock().expect("seen").len() >= count {
                            break;
                        }
                        more.await;
                    }
                    (200, vec![], b"ok".to_vec(), 1)
                }
            };
            let mut answer = http::Response::builder().status(status);
            for (name, value) in headers {
                answer = answer.header(name, value);
            }
            let answer = answer.body(()).expect("answer");
            let Ok(mut stream) = respond.send_response(answer, body.is_empty()) else {
                return;
            };
            let size = body.len().div_ceil(frames.max(1)).max(1);
            let pieces: Vec<&[u8]> = body.chunks(size).collect();
            for (i, piece) in pieces.iter().enumerate() {
                let last = i + 1 == pieces.len();
                if stream
                    .send_data(Bytes::copy_from_slice(piece), last)
                    .is_err()
                {
                    return;
                }
                // Each piece its own frame: wait until it went out before the next.
                if !last {
                    tokio::task::yield_now().await;
                }
            }
        });
    }
}

fn client(url: &str, timeout: Duration, connections: usize) -> Arc<Http2> {
    Http2::new(url, "test-token", timeout, connections).expect("client")
}

fn header<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
    seen.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A plain 201 with `{}`.
fn created() -> Script {
    Script::Answer {
        status: 201,
        headers: vec![],
        body: b"{}".to_vec(),
        frames: 1,
    }
}

const TRANSFER: &[u8] = br#"{"id":7,"amount":{"value":"1.5","currency":"IDR"}}"#;

/// Proves: a request goes out as the node expects it (POST to the path under the base URL's
/// prefix, bearer token, JSON content type, Idempotency-Key, the body), and an answer in
/// several DATA frames is put together, with its replay header read.
#[test]
fn a_request_carries_what_the_node_needs_and_a_framed_answer_is_put_together() {
    let runtime = runtime();
    runtime.block_on(async {
        let body = br#"{"transaction":{"id":41},"status":"posted"}"#.to_vec();
        let answer = body.clone();
        let server = server(move |_| Script::Answer {
            status: 201,
            headers: vec![
                ("content-type", "application/json"),
                ("idempotent-replayed", "true"),
            ],
            body: answer.clone(),
            frames: 5,
        })
        .await;
        let client = client(&format!("{}/api/", server.url), TIMEOUT, 1);
        let answer = client.post("/v1/transfers", Some("key-1"), TRANSFER).await;
        assert_eq!(done(answer), (201, true, body));
        let seen = server.seen();
        assert_eq!(seen.len(), 1);
        let request = &seen[0];
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/api/v1/transfers");
        assert_eq!(header(request, "authorization"), Some("Bearer test-token"));
        assert_eq!(header(request, "content-type"), Some("application/json"));
        assert_eq!(header(request, "idempotency-key"), Some("key-1"));
        assert_eq!(request.body, TRANSFER);
    });
}

/// Proves: a 4xx is a refusal with the problem's code, a 5xx an unknown outcome labelled with
/// its status and code, and an empty 2xx body is an empty body; the connection carries on.
#[test]
fn problems_are_refusals_or_unknown_with_their_codes() {
    let runtime = runtime();
    runtime.block_on(async {
        let server = server(|n| match n {
            0 => Script::Answer {
                status: 422,
                headers: vec![("content-type", "application/problem+json; charset=utf-8")],
                body: br#"{"code":"INSUFFICIENT_FUNDS","status":422}"#.to_vec(),
                frames: 1,
            },
            1 => Script::Answer {
                status: 503,
                headers: vec![("content-type", "application/problem+json")],
                body: br#"{"code":"OVERLOADED","status":503}"#.to_vec(),
                frames: 1,
            },
            _ => Script::Answer {
                status: 204,
                headers: vec![],
                body: vec![],
                frames: 1,
            },
        })
        .await;
        let client = client(&server.url, TIMEOUT, 1);
        match client.post("/v1/transfers", Some("a"), TRANSFER).await {
            Answer::Refused { status, code } => {
                assert_eq!((status, code.as_str()), (422, "INSUFFICIENT_FUNDS"));
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(
            unknown_label(client.post("/v1/transfers", Some("b"), TRANSFER).await),
            "503 OVERLOADED"
        );
        assert_eq!(
            done(client.post("/v1/holds/9/commit", Some("c"), b"").await),
            (204, false, vec![])
        );
        let seen = server.seen();
        assert_eq!(header(&seen[2], "content-type"), None, "no body, no type");
        assert_eq!(server.accepted(), 1, "one connection carried all three");
    });
}

/// Proves: a stream the server resets and a connection it closes are unknown outcomes (the
/// request may have been applied), and after the close the next request opens a new
/// connection and is answered.
#[test]
fn resets_and_closed_connections_are_unknown_and_the_client_reconnects() {
    let runtime = runtime();
    runtime.block_on(async {
        let server = server(|n| match n {
            0 => Script::Reset,
            1 => Script::Close,
            _ => created(),
        })
        .await;
        let client = client(&server.url, TIMEOUT, 1);
        assert_eq!(
            unknown_label(client.post("/v1/transfers", Some("a"), TRANSFER).await),
            LABEL_TRANSPORT
        );
        assert_eq!(
            unknown_label(client.post("/v1/transfers", Some("b"), TRANSFER).await),
            LABEL_TRANSPORT
        );
        // The first use of the dead connection may still fail; within a few tries the slot
        // reconnects (a bounded loop, not a timing).
        let mut answered = None;
        for attempt in 0..5 {
            let key = format!("c{attempt}");
            if let Answer::Done { status, .. } =
                client.post("/v1/transfers", Some(&key), TRANSFER).await
            {
                answered = Some(status);
                break;
            }
        }
        assert_eq!(answered, Some(201));
        assert_eq!(server.accepted(), 2, "a new connection after the close");
    });
}

/// Proves: a request the node never answers is an unknown outcome labelled as a timeout,
/// after the client's timeout, and the connection still serves the next request.
#[test]
fn a_request_past_its_timeout_is_an_unknown_outcome() {
    let runtime = runtime();
    runtime.block_on(async {
        let server = server(|n| match n {
            0 => Script::Hang,
            _ => created(),
        })
        .await;
        let client = client(&server.url, Duration::from_millis(200), 1);
        assert_eq!(
            unknown_label(client.post("/v1/transfers", Some("a"), TRANSFER).await),
            LABEL_TIMEOUT
        );
        assert_eq!(
            done(client.post("/v1/transfers", Some("b"), TRANSFER).await).0,
            201
        );
        assert_eq!(server.accepted(), 1);
    });
}

/// Proves: many requests in flight at once share the client's connections as streams:
/// 40 requests, none answered until all 40 have arrived, over exactly 2 connections.
#[test]
fn requests_in_flight_are_multiplexed_over_the_configured_connections() {
    const AT_ONCE: usize = 40;
    let runtime = runtime();
    runtime.block_on(async {
        let server = server(|_| Script::AwaitRequests(AT_ONCE)).await;
        let client = client(&server.url, TIMEOUT, 2);
        let sends: Vec<_> = (0..AT_ONCE)
            .map(|i| {
                let client = Arc::clone(&client);
                tokio::spawn(async move {
                    let key = format!("k{i}");
                    done(client.post("/v1/transfers", Some(&key), TRANSFER).await)
                })
            })
            .collect();
        for send in sends {
            assert_eq!(send.await.expect("send"), (200, false, b"ok".to_vec()));
        }
        assert_eq!(server.accepted(), 2);
        let seen = server.seen();
        for connection in 0..2 {
            let carried = seen.iter().filter(|s| s.connection == connection).count();
            assert_eq!(
                carried,
                AT_ONCE / 2,
                "connection {connection}: turns are fair"
            );
        }
    });
}

/// Proves: the bound on an answer's body is enforced: one byte over it is an unknown outcome.
#[test]
fn an_answer_larger_than_the_bound_is_unknown() {
    let runtime = runtime();
    runtime.block_on(async {
        let server = server(|_| Script::Answer {
            status: 200,
            headers: vec![],
            body: vec![b'x'; BODY_BYTES_MAX + 1],
            frames: 64,
        })
        .await;
        let client = client(&server.url, TIMEOUT, 1);
        assert_eq!(
            unknown_label(client.post("/v1/transfers/batch", Some("a"), b"{}").await),
            LABEL_BODY
        );
    });
}

/// Proves: the number of connections is bounded and checked.
#[test]
fn the_connection_count_is_bounded() {
    for bad in [0, payu_loadtest::http2::CONNECTIONS_PER_LANE_MAX + 1] {
        let error = Http2::new("http://127.0.0.1:1", "t", TIMEOUT, bad)
            .err()
            .expect("refused");
        assert!(error.to_string().contains("--http2-connections"), "{error}");
    }
}
