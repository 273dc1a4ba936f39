//! The open-loop scheduler. Operation `i` of a phase is *intended* at `start + i / rate`,
//! whatever happened to the operations before it. Each operation waits until its intended
//! time, then for one of a bounded pool of in-flight slots. When every slot is busy the
//! operation waits for one; its latency is still measured from its intended time, and the
//! wait is counted as dispatch lateness. This is the coordinated-omission correction: a node
//! that stalls is charged for every request a real client population would have sent during
//! the stall, not only for the one it was serving.
//!
//! The work runs on *lanes*: single-threaded runtimes, each on a thread of its own for the
//! phase, lane `l` sending operations `l`, `l + lanes`, ... and doing everything for them
//! (dispatch, I/O, parsing, booking) without handing anything to another thread. A lane
//! waits for an operation's time with `std::thread::sleep` (nanosleep, ~50 µs slack) rather
//! than the runtime's 1 ms timer wheel, so the tool's own timer granularity stays out of the
//! figures; before it sleeps it runs every task that is ready and reads every answer that has
//! arrived, and it never sleeps the thread longer than [`THREAD_SLEEP_MAX`] at once, so an
//! answer waits at most that long (or until the next dispatch, if sooner) to be read. Longer
//! waits are slept on the runtime's timer, reading answers as they come, until
//! [`TIMER_SLEEP_MARGIN`] before the operation's time. One thread doing all of a request's
//! work is what makes the tool cheap: the earlier design (a scheduler thread handing every
//! request to a work-stealing runtime) woke a second thread for every request. With
//! `--http2` each lane's connections are driven by tasks on that lane too (http2.rs).
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio::sync::{Notify, Semaphore};

use crate::measure::{Outcome, Recorder, human};

/// The first operation is intended this long after the phase starts, so the first dispatches
/// are not late merely because the phase was being set up.
const START_DELAY: Duration = Duration::from_millis(5);
/// How often the progress line is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// The longest a lane sleeps its thread at once (answers arriving meanwhile wait to be read).
pub const THREAD_SLEEP_MAX: Duration = Duration::from_micros(200);
/// Waits longer than this are slept on the runtime's (1 ms) timer...
const TIMER_SLEEP_ABOVE: Duration = Duration::from_millis(3);
/// ...until this long before the operation's time.
const TIMER_SLEEP_MARGIN: Duration = Duration::from_millis(2);
/// Operations a lane dispatches back to back, at most, before it lets their tasks run (it
/// does not wait between operations whose time has already come: a lane that fell behind).
const DISPATCHES_PER_YIELD_MAX: u32 = 16;
/// Lanes, at most (`--lanes`).
pub const LANES_MAX: usize = 64;

/// The lanes a session runs its load on: single-threaded runtimes that live as long as the
/// session, so their connections stay open from phase to phase.
pub fn lanes(count: usize) -> std::io::Result<Vec<Runtime>> {
    (0..count.clamp(1, LANES_MAX))
        .map(|_| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        })
        .collect()
}

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
    /// CPU seconds the node used during the phase, from its `process_cpu_seconds_total`
    /// before and after (None if it exports none). Read by the session, not the driver.
    pub node_cpu_seconds: Option<f64>,
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

    /// CPU microseconds per answered operation, from a phase's CPU seconds (the tool's or the
    /// node's); None without the seconds or without answers.
    pub fn cpu_us_per_op(&self, cpu_seconds: Option<f64>) -> Option<f64> {
        let answered = self.recorder.answered_total();
        cpu_seconds
            .filter(|_| answered > 0)
            .map(|seconds| seconds * 1e6 / answered as f64)
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

/// Runs one phase on `lanes` (each driven by a thread of its own for the phase) and returns
/// when every dispatched operation has been answered. `op(i)` performs global operation `i`.
pub fn run_phase<F, Fut>(lanes: &[Runtime], plan: Plan, op: Arc<F>) -> PhaseResult
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let cpu_at_start = process_cpu_seconds();
    let shared = Shared {
        recorder: Arc::new(Mutex::new(Recorder::new())),
        slots: Arc::new(Semaphore::new(plan.concurrency as usize)),
        dispatching: AtomicUsize::new(lanes.len()),
        dispatched: Notify::new(),
        not_sent: AtomicUsize::new(0),
    };
    let ops = plan.ops();
    let start = Instant::now();
    let (stop_progress, progress) = spawn_progress(
        &plan,
        ops,
        start,
        Arc::clone(&shared.recorder),
        Arc::clone(&shared.slots),
    );
    std::thread::scope(|scope| {
        for (lane, runtime) in lanes.iter().enumerate() {
            let (plan, op, shared) = (&plan, Arc::clone(&op), &shared);
            let name = format!("loadtest-lane{lane}");
            let spawned = std::thread::Builder::new()
                .name(name)
                .spawn_scoped(scope, move || {
                    crate::http1::enter_lane(lane);
                    let lane = Lane {
                        index: lane,
                        count: lanes.len(),
                    };
                    runtime.block_on(run_lane(plan, lane, start, op, shared));
                });
            // Without its thread a lane sends nothing: its operations are counted as not sent.
            if spawned.is_err() {
                let count = (lane as u64..ops).step_by(lanes.len()).count();
                shared.not_sent.fetch_add(count, Ordering::SeqCst);
                shared.dispatching.fetch_sub(1, Ordering::SeqCst);
                shared.dispatched.notify_waiters();
            }
        }
    });
    drop(stop_progress);
    if let Some(progress) = progress {
        let _ = progress.join();
    }
    let recorder = lock(&shared.recorder).clone();
    let fastest = Duration::from_nanos(recorder.corrected.min());
    let elapsed = recorder
        .last_answer
        .saturating_sub(fastest)
        .max(plan.duration + START_DELAY);
    let client_cpu_seconds = process_cpu_seconds()
        .zip(cpu_at_start)
        .map(|(end, start)| end - start);
    PhaseResult {
        not_sent: shared.not_sent.load(Ordering::SeqCst) as u64,
        plan,
        recorder,
        client_cpu_seconds,
        node_cpu_seconds: None,
        elapsed,
    }
}

/// Which lane, of how many.
struct Lane {
    index: usize,
    count: usize,
}

/// What the lanes of one phase share.
struct Shared {
    recorder: Arc<Mutex<Recorder>>,
    /// In-flight slots (`--concurrency`), over all lanes.
    slots: Arc<Semaphore>,
    /// Lanes still dispatching.
    dispatching: AtomicUsize,
    /// Told when a lane stops dispatching.
    dispatched: Notify,
    not_sent: AtomicUsize,
}

/// One lane's share of the phase: operations `lane`, `lane + lanes`, ... Returns when every
/// operation of *every* lane has been answered, so the phase ends at one moment for all lanes.
async fn run_lane<F, Fut>(plan: &Plan, lane: Lane, start: Instant, op: Arc<F>, shared: &Shared)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let ops = plan.ops();
    let cutoff = start + plan.duration + plan.grace;
    let lanes = lane.count;
    let mut i = lane.index as u64;
    let mut back_to_back = 0;
    while i < ops {
        let intended = plan.intended(i);
        if wait_until(start + intended).await {
            back_to_back = 0;
        } else if back_to_back >= DISPATCHES_PER_YIELD_MAX {
            tokio::task::yield_now().await;
            back_to_back = 0;
        }
        back_to_back += 1;
        let permit = match Arc::clone(&shared.slots).try_acquire_owned() {
            Ok(permit) => Some(permit),
            // Every slot is busy: wait for one (reading answers meanwhile), not past the cutoff.
            Err(_) => {
                tokio::time::timeout_at(cutoff.into(), Arc::clone(&shared.slots).acquire_owned())
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
        };
        let Some(permit) = permit.filter(|_| Instant::now() < cutoff) else {
            let left = (i..ops).step_by(lanes).count();
            shared.not_sent.fetch_add(left, Ordering::SeqCst);
            break;
        };
        let lateness = start.elapsed().saturating_sub(intended);
        lock(&shared.recorder).dispatched(lateness);
        let recorder = Arc::clone(&shared.recorder);
        // Boxed: the operation's future is large, and spawning would copy it twice over.
        let future = Box::pin(op(plan.first_index + i));
        let task = async move {
            let outcome = future.await;
            let answered = start.elapsed();
            lock(&recorder).answered(intended, lateness, answered, &outcome);
            drop(permit);
        };
        drop(tokio::spawn(task));
        i += lanes as u64;
    }
    shared.dispatching.fetch_sub(1, Ordering::SeqCst);
    shared.dispatched.notify_waiters();
    loop {
        let dispatched = shared.dispatched.notified();
        if shared.dispatching.load(Ordering::SeqCst) == 0 {
            break;
        }
        dispatched.await;
    }
    // Nothing is dispatched any more, so slots only come back: every slot back means every
    // operation was answered (each is time-bounded; a task that panicked gave its slot back too).
    drop(shared.slots.acquire_many(plan.concurrency).await);
}

/// Waits until `deadline`: on the runtime's timer while it is far, then by sleeping the thread
/// in steps of at most [`THREAD_SLEEP_MAX`], each after running every ready task and reading
/// every answer that has arrived. (Never early: the runtime's timer only wakes late.) Returns
/// whether it waited at all (and so let other tasks run).
async fn wait_until(deadline: Instant) -> bool {
    let mut waited = false;
    loop {
        let now = Instant::now();
        let Some(wait) = deadline
            .checked_duration_since(now)
            .filter(|w| !w.is_zero())
        else {
            return waited;
        };
        waited = true;
        if wait > TIMER_SLEEP_ABOVE {
            tokio::time::sleep(wait - TIMER_SLEEP_MARGIN).await;
            continue;
        }
        // The first yield runs the ready tasks and polls the I/O driver (without blocking);
        // the second runs the tasks that polling woke (answers that arrived).
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        let now = Instant::now();
        if let Some(wait) = deadline
            .checked_duration_since(now)
            .filter(|w| !w.is_zero())
        {
            std::thread::sleep(wait.min(THREAD_SLEEP_MAX));
        }
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
