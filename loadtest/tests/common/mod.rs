//! A real PayU Core node for the tests, run in-process through `payu_gateway::node::run` on
//! 127.0.0.1:0 with a temporary data directory, on a runtime of its own (so the load tester's
//! runtime and the node's do not share threads). Dropping it shuts the node down gracefully
//! (bounded wait) and removes the directory.

// Each test binary uses a different subset of this module.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use payu_gateway::config::{NODE_SEGMENT_BYTES_MIN, NodeConfig};

/// How long a node may take to start listening (debug build, fresh journal).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node may take to drain, flush and snapshot at shutdown.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

pub struct TestNode {
    pub url: String,
    pub dir: tempfile::TempDir,
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestNode {
    /// Starts a node sized for tests (small tables, so a debug build starts fast).
    pub fn start() -> TestNode {
        let dir = tempfile::tempdir().expect("a temporary data directory");
        let mut config = NodeConfig {
            data_dir: dir.path().to_path_buf(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..NodeConfig::default()
        };
        config.journal.segment_bytes = NODE_SEGMENT_BYTES_MIN;
        config.engine.accounts_max = 10_000;
        config.engine.holds_active_max = 10_000;
        config.engine.idempotency_entries_max = 100_000;
        config.engine.refundable_payments_max = 1_000;
        config.engine.finished_holds_max = 10_000;
        config.read_model.transactions_max = 100_000;
        config.pipeline.ring_size = 4096;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("test-node")
            .enable_all()
            .build()
            .expect("the node's runtime");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (listening, address) = std::sync::mpsc::sync_channel::<SocketAddr>(1);
        let task = runtime.spawn(payu_gateway::node::run(
            config,
            async move {
                let _ = stopped.await;
            },
            move |address| {
                let _ = listening.send(address);
            },
        ));
        let address = address
            .recv_timeout(START_TIMEOUT)
            .expect("the node listens within the start timeout");
        TestNode {
            url: format!("http://{address}"),
            dir,
            runtime: Some(runtime),
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir_text(&self) -> String {
        PathBuf::from(self.dir.path()).display().to_string()
    }

    /// A token for the node minted the way `payu token` does (the node's own code).
    pub fn operator_token(&self, subject: &str) -> String {
        let secret =
            payu_gateway::auth::load_or_create_dev_secret(self.data_dir()).expect("the dev secret");
        payu_gateway::auth::mint_hs256(
            &secret,
            subject,
            &[
                payu_gateway::auth::SCOPE_OPERATOR,
                payu_gateway::auth::SCOPE_SYSTEM,
            ],
            Duration::from_secs(600),
            None,
            None,
        )
        .expect("a token")
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let (Some(runtime), Some(task)) = (self.runtime.take(), self.task.take()) {
            let stopped =
                runtime.block_on(async { tokio::time::timeout(STOP_TIMEOUT, task).await });
            if !std::thread::panicking() {
                let result = stopped
                    .expect("the node stops within the timeout")
                    .expect("the node task joins");
                result.expect("the node stops cleanly");
            }
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// Options for a short run against `node`, plus `extra` flags.
pub fn options(node: &TestNode, extra: &[&str]) -> payu_loadtest::Options {
    use clap::Parser;
    let data_dir = node.data_dir_text();
    let mut args = vec![
        "payu-loadtest",
        "--url",
        node.url.as_str(),
        "--data-dir",
        data_dir.as_str(),
        "--quiet",
    ];
    args.extend_from_slice(extra);
    payu_loadtest::Options::try_parse_from(args).expect("test options parse")
}

/// A TCP proxy in front of a node that forwards every request and, for every `drop_every`-th
/// POST, closes the client's connection instead of passing the answer on: the node applied the
/// request, the client cannot know. Runs on `runtime` until the runtime stops. Returns its URL.
pub fn lossy_proxy(
    runtime: &tokio::runtime::Runtime,
    upstream: &str,
    drop_every: u64,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;
    let upstream: SocketAddr = upstream
        .trim_start_matches("http://")
        .parse()
        .expect("the node's address");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind the proxy");
    let url = format!("http://{}", listener.local_addr().expect("proxy address"));
    let posts = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&dropped);
    runtime.spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let (posts, dropped) = (Arc::clone(&posts), Arc::clone(&dropped));
            tokio::spawn(async move {
                let _ = relay(client, upstream, posts, dropped, drop_every).await;
            });
        }
    });
    (url, counter)
}

/// Messages larger than this end the connection (the tests send small requests).
const MESSAGE_BYTES_MAX: usize = 16 << 20;

async fn relay(
    mut client: tokio::net::TcpStream,
    upstream: SocketAddr,
    posts: std::sync::Arc<std::sync::atomic::AtomicU64>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    drop_every: u64,
) -> std::io::Result<()> {
    use std::sync::atomic::Ordering;
    use tokio::io::AsyncWriteExt;
    let mut server = tokio::net::TcpStream::connect(upstream).await?;
    let (mut from_client, mut from_server) = (Vec::new(), Vec::new());
    loop {
        let Some(request) = read_message(&mut client, &mut from_client).await? else {
            return Ok(());
        };
        server.write_all(&request).await?;
        let Some(response) = read_message(&mut server, &mut from_server).await? else {
            return Ok(());
        };
        if request.starts_with(b"POST ")
            && (posts.fetch_add(1, Ordering::SeqCst) + 1) % drop_every == 0
        {
            dropped.fetch_add(1, Ordering::SeqCst);
            return Ok(()); // both connections close: the answer is lost
        }
        client.write_all(&response).await?;
    }
}

/// Reads one HTTP/1.1 message framed by Content-Length (what reqwest and the node send).
async fn read_message(
    stream: &mut tokio::net::TcpStream,
    buffer: &mut Vec<u8>,
) -> std::io::Result<Option<Vec<u8>>> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buffer.len() > MESSAGE_BYTES_MAX {
            return Ok(None);
        }
        match stream.read(&mut chunk).await? {
            0 => return Ok(None),
            n => buffer.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    if head.contains("transfer-encoding: chunked") || length > MESSAGE_BYTES_MAX {
        return Ok(None);
    }
    while buffer.len() < head_end + length {
        match stream.read(&mut chunk).await? {
            0 => return Ok(None),
            n => buffer.extend_from_slice(&chunk[..n]),
        }
    }
    Ok(Some(buffer.drain(..head_end + length).collect()))
}

/// A two-worker runtime for tests that drive a client against a scripted server.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The status, replay flag and body of a 2xx answer, or a panic naming what came instead.
pub fn done(answer: payu_loadtest::api::Answer) -> (u16, bool, Vec<u8>) {
    match answer {
        payu_loadtest::api::Answer::Done {
            status,
            replayed,
            body,
        } => (status, replayed, body.to_vec()),
        other => panic!("expected a 2xx answer, got {other:?}"),
    }
}

/// The label of an unknown outcome, or a panic naming what came instead.
pub fn unknown_label(answer: payu_loadtest::api::Answer) -> String {
    match answer {
        payu_loadtest::api::Answer::Unknown { label } => label,
        other => panic!("expected an unknown outcome, got {other:?}"),
    }
}
