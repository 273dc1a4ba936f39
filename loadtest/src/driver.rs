//! The open-loop scheduler. Operation `i` of a phase is *intended* at `start + i / rate`,
//! whatever happened to the operations before it. A dedicated thread sleeps until each
//! intended time and hands the operation to the client runtime through a bounded pool of
//! in-flight slots. When every slot is busy the operation waits for one; its latency is still
//! measured from its intended time, and the wait is counted as dispatch lateness. This is the
//! coordinated-omission correction: a node that stalls is charged for every request a real
//! client population would have sent during the stall, not only for the one it was serving.
//!
//! The scheduler uses `std::thread::sleep` (nanosleep, ~50 µs slack) rather than the runtime's
//! 1 ms timer wheel, so the tool's own timer granularity stays out of the figures.

use std::future::Future;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use crate::measure::{Outcome, Recorder, human};

/// The first operation is intended this long after the phase starts, so the first dispatches
/// are not late merely because the phase was being set up.
const START_DELAY: Duration = Duration::from_millis(5);
/// How often the progress line is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// One phase: `rate` operations per second for `duration`.
#[derive(Clone, Debug)]
pub struct Plan {
    pub rate: f64,
    pub duration: Duration,
    pub concurrency: u32,
    /// After `duration`, how long a backlog may still be dispatched.
    pub grace: Duration,
    /// The global index of this phase's first operation (keys stay unique across phases).
    pub first_index: u64,
    /// A label for the progress line ("", or "step 3 @ 4000/s").
    pub label: String,
    pub progress: bool,
}

impl Plan {
    /// Operations the phase intends to send.
    pub fn ops(&self) -> u64 {
        ((self.rate * self.duration.as_secs_f64()).round() as u64).max(1)
    }

    /// When operation `i` is intended, relative to the phase's start.
    pub fn intended(&self, i: u64) -> Duration {
        START_DELAY + Duration::from_secs_f64(i as f64 / self.rate)
    }
}

/// What a phase did, besides what its recorder measured.
#[derive(Clone, Debug)]
pub struct PhaseResult {
    pub plan: Plan,
    pub recorder: Recorder,
    /// Operations that were never sent: the backlog left when `duration + grace` ran out.
    pub not_sent: u64,
    /// CPU seconds this process (the load tester) used during the phase, if readable: on a
    /// machine shared with the node, the client's own share of the cores.
    pub client_cpu_seconds: Option<f64>,
    /// The span the answers needed: from the phase's start to its last answer, less the
    /// fastest answer's latency (the delay even a node that keeps up adds to the last one),
    /// and never shorter than the schedule itself. A node that falls behind stretches it.
    pub elapsed: Duration,
}

impl PhaseResult {
    pub fn intended_ops(&self) -> u64 {
        self.plan.ops()
    }

    /// Answered (ok or rejected by the ledger) operations per second.
    pub fn achieved_rate(&self) -> f64 {
        self.recorder.answered_total() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn achieved_ratio(&self) -> f64 {
        self.achieved_rate() / self.plan.rate
    }

    /// Failed operations (and operations never sent) over those intended.
    pub fn error_ratio(&self) -> f64 {
        (self.recorder.failed + self.not_sent) as f64 / self.intended_ops().max(1) as f64
    }
}

fn lock(recorder: &Mutex<Recorder>) -> std::sync::MutexGuard<'_, Recorder> {
    // A panic while holding the lock leaves counters that are still meaningful.
    recorder.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs one phase on the calling thread (which must not be a runtime thread) and returns when
/// every dispatched operation has been answered. `op(i)` performs global operation `i`.
pub fn run_phase<F, Fut>(runtime: &Handle, plan: Plan, op: Arc<F>) -> PhaseResult
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let cpu_at_start = process_cpu_seconds();
    let recorder = Arc::new(Mutex::new(Recorder::new()));
    let slots = Arc::new(Semaphore::new(plan.concurrency as usize));
    let ops = plan.ops();
    let start = Instant::now();
    let cutoff = start + plan.duration + plan.grace;
    let (stop_progress, progress) =
        spawn_progress(&plan, ops, start, Arc::clone(&recorder), Arc::clone(&slots));

    let mut not_sent = 0;
    for i in 0..ops {
        let intended = plan.intended(i);
        let now = start.elapsed();
        if intended > now {
            std::thread::sleep(intended - now);
        }
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => Some(permit),
            // Every slot is busy: wait for one, but not past the cutoff.
            // (The timeout is built inside the runtime: its timer needs the runtime's context.)
            Err(_) => runtime
                .block_on(async {
                    tokio::time::timeout_at(cutoff.into(), Arc::clone(&slots).acquire_owned()).await
                })
                .ok()
                .and_then(Result::ok),
        };
        let Some(permit) = permit.filter(|_| Instant::now() < cutoff) else {
            not_sent = ops - i;
            break;
        };
        let lateness = start.elapsed().saturating_sub(intended);
        lock(&recorder).dispatched(lateness);
        let op = Arc::clone(&op);
        let recorder = Arc::clone(&recorder);
        let index = plan.first_index + i;
        runtime.spawn(async move {
            let outcome = op(index).await;
            let answered = start.elapsed();
            lock(&recorder).answered(intended, lateness, answered, &outcome);
            drop(permit);
        });
    }
    // Every slot back means every dispatched operation was answered (each is time-bounded).
    let all = runtime.block_on(slots.acquire_many(plan.concurrency));
    drop(all);
    drop(stop_progress);
    if let Some(progress) = progress {
        let _ = progress.join();
    }
    let recorder = lock(&recorder).clone();
    let fastest = Duration::from_nanos(recorder.corrected.min());
    let elapsed = recorder
        .last_answer
        .saturating_sub(fastest)
        .max(plan.duration + START_DELAY);
    let client_cpu_seconds = process_cpu_seconds()
        .zip(cpu_at_start)
        .map(|(end, start)| end - start);
    PhaseResult {
        plan,
        recorder,
        not_sent,
        client_cpu_seconds,
        elapsed,
    }
}

/// User + system CPU seconds of this process so far, from /proc/self/stat (Linux reports them
/// in USER_HZ = 100 ticks per second to user space).
pub fn process_cpu_seconds() -> Option<f64> {
    const TICKS_PER_SECOND: f64 = 100.0;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; the fields after its ')' are plain.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// A thread printing one progress line per second on stderr until the sender is dropped.
fn spawn_progress(
    plan: &Plan,
    ops: u64,
    start: Instant,
    recorder: Arc<Mutex<Recorder>>,
    slots: Arc<Semaphore>,
) -> (mpsc::Sender<()>, Option<std::thread::JoinHandle<()>>) {
    let (stop, stopped) = mpsc::channel::<()>();
    if !plan.progress {
        return (stop, None);
    }
    let label = plan.label.clone();
    let concurrency = plan.concurrency as usize;
    let rate = plan.rate;
    let handle = std::thread::Builder::new()
        .name("loadtest-progress".into())
        .spawn(move || {
            let mut next = start + PROGRESS_EVERY;
            loop {
                match stopped.recv_timeout(next.saturating_duration_since(Instant::now())) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                next += PROGRESS_EVERY;
                let (interval, sent, failed, late) = {
                    let mut r = lock(&recorder);
                    (r.take_interval(), r.sent, r.failed, r.late_dispatches)
                };
                let in_flight = concurrency - slots.available_permits();
                eprintln!(
                    "[{:>4}s]{label} sent {sent}/{ops} ({rate:.0}/s intended) | answered {}/s | \
                     p50 {} p99 {} max {} | in flight {in_flight} | late {late} | failed {failed}",
                    start.elapsed().as_secs(),
                    interval.answered,
                    human(interval.p50),
                    human(interval.p99),
                    human(interval.max),
                );
            }
        })
        .ok();
    (stop, handle)
}
