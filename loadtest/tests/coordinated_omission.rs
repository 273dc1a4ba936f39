//! The coordinated-omission correction, checked against a tiny HTTP server (tokio TcpListener)
//! that holds one request for 500 ms on purpose while the load runs at 100/s.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use payu_loadtest::driver::{Plan, lanes, run_phase};
use payu_loadtest::measure::{Class, Outcome, quantile};
use payu_loadtest::workload::OpKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RATE: f64 = 100.0;
const DURATION: Duration = Duration::from_secs(3);
/// The request (in arrival order) the server holds, about 1 s into the run.
const STALLED_REQUEST: u64 = 100;
const STALL: Duration = Duration::from_millis(500);
const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;

/// Serves `GET` with keep-alive; holds the STALLED_REQUEST-th request for STALL.
async fn stalling_server(listener: tokio::net::TcpListener, arrivals: Arc<AtomicU64>) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            return;
        };
        let arrivals = Arc::clone(&arrivals);
        tokio::spawn(async move {
            let mut buffer = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            loop {
                while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                    }
                    if buffer.len() > REQUEST_HEAD_BYTES_MAX {
                        return;
                    }
                }
                let end = buffer
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map_or(0, |p| p + 4);
                buffer.drain(..end);
                if arrivals.fetch_add(1, Ordering::SeqCst) + 1 == STALLED_REQUEST {
                    // The stall this test is about, not a guess at timing.
                    tokio::time::sleep(STALL).await;
                }
                let answer =
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";
                if socket.write_all(answer).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[derive(Debug)]
struct Measured {
    corrected_p90: Duration,
    corrected_p99: Duration,
    corrected_max: Duration,
    service_p99: Duration,
    service_max: Duration,
    late: u64,
    answered: u64,
}

/// Runs 3 s at 100/s with `concurrency` slots against a fresh stalling server.
fn run_against_stall(concurrency: u32) -> Measured {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("address"));
    let arrivals = Arc::new(AtomicU64::new(0));
    runtime.spawn(stalling_server(listener, Arc::clone(&arrivals)));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let op = Arc::new(move |_index: u64| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let ok = matches!(client.get(&url).send().await, Ok(r) if r.status().is_success());
            Outcome {
                kind: OpKind::Transfer,
                class: if ok { Class::Ok } else { Class::Failed },
                label: if ok { "200".into() } else { "error".into() },
                transfers_posted: 0,
                transfers_rejected: 0,
                item_rejections: Default::default(),
            }
        }
    });
    let plan = Plan {
        rate: RATE,
        duration: DURATION,
        concurrency,
        grace: Duration::from_secs(10),
        first_index: 0,
        label: String::new(),
        progress: false,
    };
    // Two lanes, as on the project's 2-core machine; the server runs on its own runtime.
    let lanes = lanes(2).expect("lanes");
    let phase = run_phase(&lanes, plan, op);
    assert!(
        arrivals.load(Ordering::SeqCst) >= STALLED_REQUEST,
        "the stall happened"
    );
    let r = &phase.recorder;
    assert_eq!(r.failed, 0, "answers: {:?}", r.answers);
    let measured = Measured {
        corrected_p90: quantile(&r.corrected, 0.90),
        corrected_p99: quantile(&r.corrected, 0.99),
        corrected_max: quantile(&r.corrected, 1.0),
        service_p99: quantile(&r.service, 0.99),
        service_max: quantile(&r.service, 1.0),
        late: r.late_dispatches,
        answered: r.ok,
    };
    eprintln!("concurrency {concurrency}: {measured:?}");
    measured
}

/// Proves: with one slot (the situation of a closed-loop tester), the ~50 requests scheduled
/// during the 500 ms stall wait for it, and their corrected latency shows it (p90, p99, max),
/// while their service times, measured from the actual send, do not: only the stalled request
/// itself is slow there, so the uncorrected p99 stays small.
#[test]
fn requests_scheduled_during_a_stall_are_charged_for_it() {
    let m = run_against_stall(1);
    assert_eq!(m.answered, 300);
    assert!(
        m.corrected_max >= STALL,
        "corrected max {:?}",
        m.corrected_max
    );
    assert!(
        m.corrected_p99 >= Duration::from_millis(400),
        "corrected p99 {:?}",
        m.corrected_p99
    );
    assert!(
        m.corrected_p90 >= Duration::from_millis(100),
        "corrected p90 {:?}",
        m.corrected_p90
    );
    assert!(
        m.service_max >= STALL,
        "the stalled request's own service time {:?}",
        m.service_max
    );
    assert!(
        m.service_p99 < Duration::from_millis(100),
        "uncorrected p99 {:?} hides the stall",
        m.service_p99
    );
    assert!(m.late >= 30, "{} dispatches waited for the slot", m.late);
}

/// Proves: the correction charges only real waiting. With enough slots, requests scheduled
/// during the stall go out on other connections on time, so only the stalled request is slow
/// and the corrected p99 stays small too.
#[test]
fn with_free_slots_only_the_stalled_request_is_slow() {
    let m = run_against_stall(64);
    assert_eq!(m.answered, 300);
    assert!(
        m.corrected_max >= STALL,
        "corrected max {:?}",
        m.corrected_max
    );
    assert!(
        m.corrected_p99 < Duration::from_millis(100),
        "corrected p99 {:?}",
        m.corrected_p99
    );
    assert!(m.late < 30, "{} late dispatches", m.late);
}
