//! The write path: a bounded multi-producer ring (the disruptor crate) in front of the one
//! engine thread, which applies commands in batches, journals each (command, outcome), makes
//! the batch durable with one group commit, and only then releases the replies (the
//! durability barrier).
//!
//! Group commit is pipelined: while batch N's fdatasync runs in the kernel (io_uring), the
//! engine thread applies and writes batch N+1; N's replies go out when its flush completes.
//! An idle engine thread waits by the configured [`WaitStrategy`]; the default parks it and
//! producers wake it, so nothing spins on a 2-core machine.
//!
//! Anything that fails after a command was applied in memory but before it was durable (an
//! append or a flush) leaves the engine ahead of the journal. The pipeline then stops: pending
//! requests get [`PipelineFailed`], the node exits, and restart rebuilds from the journal.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use disruptor::{BusySpin, EventPoller, Polling, Producer, SingleConsumerBarrier};
use payu_engine::{
    Command, CommandBody, Engine, Outcome, SnapshotMirror, SnapshotState, Timestamp,
};
use payu_journal::{Entry, EntryEncoder, Journal, SnapshotStore, Storage};
use tokio::sync::oneshot;

use crate::metrics::Metrics;

/// Commands applied per batch (one group commit) at most. A batch is whatever the ring holds
/// when the engine thread looks, up to this.
pub const BATCH_COMMANDS_MAX: usize = 4096;
/// Commands of a batch whose first cache lines (idempotency slot, accounts) are loaded together
/// before they are applied (`Engine::touch`), so their misses overlap.
const COMMANDS_TOUCH_AHEAD: usize = 16;
/// Journal bytes between snapshots by default (`PipelineConfig::snapshot_every_bytes`): at
/// the replay rate of batch records (about 2 GB/s) a restart replays at most a few seconds.
pub const SNAPSHOT_EVERY_BYTES_DEFAULT: u64 = 4 << 30;
/// The ring's default capacity in commands (a power of two).
pub const RING_SIZE_DEFAULT: usize = 1 << 16;
/// The smallest ring the disruptor's multi-producer barrier supports.
pub const RING_SIZE_MIN: usize = 64;
/// The largest ring accepted (its slots are allocated up front).
pub const RING_SIZE_MAX: usize = 1 << 24;
/// Producer handles shared by the gateway's tasks; each is used under its own lock.
const PRODUCERS: usize = 8;
/// The longest an idle engine thread sleeps before it looks again (also bounds how late a
/// missed wake-up or a periodic snapshot can be).
const IDLE_TICK: Duration = Duration::from_millis(10);
/// How long a small group commit may wait for more commands by default
/// (`PipelineConfig::commit_linger`; docs/PERFORMANCE.md, "Group commit linger").
pub const COMMIT_LINGER_DEFAULT: Duration = Duration::from_micros(250);
/// The longest linger a node accepts: past it, the wait is a latency cost with nothing left to
/// amortise (a group commit of 40k/s × 10 ms is 400 commands).
pub const COMMIT_LINGER_MAX: Duration = Duration::from_millis(10);
/// A lingering group commit stops waiting once it holds this many commands, by default.
pub const COMMIT_LINGER_COMMANDS_DEFAULT: usize = 64;
/// `Waker::wake_at` when the engine thread is not waiting.
const AWAKE: u64 = u64::MAX;
/// A group commit slower than this is logged as a warning (with its size) and counted in
/// `payu_journal_slow_flushes_total`, so a stalling disk shows in the log at the moment it
/// stalls, not only in the flush histogram. Each such line stands for at least this long a
/// stall, so there are at most 20 a second.
const SLOW_FLUSH_WARN: Duration = Duration::from_millis(50);

/// How the engine thread waits when the ring is empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitStrategy {
    /// Park; producers unpark it (default: no CPU burnt while idle).
    Park,
    /// Sleep this long between looks.
    Sleep(Duration),
    /// `thread::yield_now` between looks.
    Yield,
    /// Spin (opt-in: burns a whole core).
    Spin,
}

impl std::str::FromStr for WaitStrategy {
    type Err = String;
    fn from_str(text: &str) -> Result<WaitStrategy, String> {
        match text {
            "park" => Ok(WaitStrategy::Park),
            "yield" => Ok(WaitStrategy::Yield),
            "spin" => Ok(WaitStrategy::Spin),
            _ => match text
                .strip_prefix("sleep:")
                .and_then(|us| us.parse::<u64>().ok())
            {
                Some(micros) => Ok(WaitStrategy::Sleep(Duration::from_micros(micros))),
                None => Err(format!(
                    "unknown wait strategy {text:?}: use park, yield, spin or sleep:<micros>"
                )),
            },
        }
    }
}

#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// Ring capacity in commands; rounded up to a power of two.
    pub ring_size: usize,
    pub wait: WaitStrategy,
    /// The epoch stamped on every record (replication fences with it).
    pub epoch: u64,
    /// Take a snapshot after this many records since the last one (0 = never, but at shutdown).
    pub snapshot_every_records: u64,
    /// Or after this many journal bytes since the last one (0 = no byte bound): batch
    /// records are large, and without it a batch-heavy node would journal terabytes between
    /// snapshots, so retention would free nothing and a restart would replay them all.
    pub snapshot_every_bytes: u64,
    /// On shutdown, take a snapshot if anything was applied since the last one.
    pub snapshot_on_shutdown: bool,
    /// Retire journal segments covered by the oldest kept snapshot (their files are recycled
    /// by later segments, up to the journal's `RECYCLED_BYTES_MAX`, or deleted).
    pub retention: bool,
    /// Group commit linger: when the last group commit held two or more commands (concurrent
    /// clients), a smaller batch waits until this long after its oldest command was published,
    /// or until it holds `commit_linger_commands`, before its fdatasync. Fewer, larger group
    /// commits cost less CPU per command (flush, wake-ups, reply hand-offs) at the price of up
    /// to this much added latency. A lone sequential client never waits. Zero turns it off.
    /// The engine thread parks while it lingers, whatever `wait` says.
    pub commit_linger: Duration,
    /// A lingering batch stops waiting at this many commands (at most `BATCH_COMMANDS_MAX`).
    pub commit_linger_commands: usize,
}

impl Default for PipelineConfig {
    fn default() -> PipelineConfig {
        PipelineConfig {
            ring_size: RING_SIZE_DEFAULT,
            wait: WaitStrategy::Park,
            epoch: 1,
            snapshot_every_records: 5_000_000,
            snapshot_every_bytes: SNAPSHOT_EVERY_BYTES_DEFAULT,
            snapshot_on_shutdown: true,
            retention: true,
            commit_linger: COMMIT_LINGER_DEFAULT,
            commit_linger_commands: COMMIT_LINGER_COMMANDS_DEFAULT,
        }
    }
}

/// What the engine thread decided for one command, released once durable.
#[derive(Debug)]
pub struct Reply {
    pub seq: u64,
    pub timestamp: Timestamp,
    pub outcome: Outcome,
}

/// The pipeline stopped before this command's outcome became durable. The command may or may
/// not be in the journal: a client retries with the same idempotency key to find out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelineFailed(pub String);

pub type ReplyReceiver = oneshot::Receiver<Result<Reply, PipelineFailed>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The ring is full: the engine thread is behind. Answer 503 with Retry-After.
    Full,
    /// The pipeline is shutting down or has failed.
    Closed,
}

/// Counters other threads read (metrics, readiness, status).
#[derive(Debug, Default)]
pub struct PipelineStatus {
    pub ring_capacity: AtomicU64,
    pub published: AtomicU64,
    pub consumed: AtomicU64,
    pub applied_seq: AtomicU64,
    pub durable_seq: AtomicU64,
    pub snapshot_seq: AtomicU64,
    /// Set when the pipeline stopped on an error; the node must exit.
    pub failed: AtomicBool,
    /// Set when the engine thread has finished (drained, flushed) and returned.
    pub stopped: AtomicBool,
}

impl PipelineStatus {
    pub fn ring_occupancy(&self) -> u64 {
        let consumed = self.consumed.load(Ordering::Relaxed);
        self.published
            .load(Ordering::Relaxed)
            .saturating_sub(consumed)
    }
}

struct Request {
    command: Command,
    published: Instant,
    reply: oneshot::Sender<Result<Reply, PipelineFailed>>,
}

/// One ring slot. The producer fills it through `&mut`; the engine thread, which only gets
/// `&`, takes the request out under the (uncontended) lock.
#[derive(Default)]
struct Slot {
    request: Mutex<Option<Request>>,
}

impl Slot {
    /// Takes the request out (the engine thread's side).
    fn take(&self) -> Option<Request> {
        self.request
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }
}

type RingProducer = disruptor::MultiProducer<Slot, SingleConsumerBarrier>;
type RingPoller = EventPoller<Slot, disruptor::MultiProducerBarrier>;

/// Wakes the engine thread when it parked: on an empty ring at the first command, or while a
/// group commit lingers once enough commands were published.
struct Waker {
    engine: Thread,
    /// While the engine thread is parked: the `PipelineStatus::published` count that should
    /// wake it (0: any publish). `AWAKE` otherwise. One word, so a producer never pairs a
    /// stale threshold with a fresh "parked".
    wake_at: AtomicU64,
}

impl Waker {
    /// Called after publishing, with the `published` count that includes this command.
    fn wake(&self, published: u64) {
        // Pairs with the fence in `EngineWorker::park_until`: either the engine thread sees
        // the new count, or this sees its threshold and unparks it.
        fence(Ordering::SeqCst);
        if published >= self.wake_at.load(Ordering::Relaxed) {
            self.engine.unpark();
        }
    }
}

/// The gateway's handle on the ring. Cheap to clone.
#[derive(Clone)]
pub struct Submitter {
    inner: Arc<SubmitterInner>,
}

struct SubmitterInner {
    producers: Box<[Mutex<Option<RingProducer>>]>,
    next: AtomicUsize,
    waker: Arc<Waker>,
    status: Arc<PipelineStatus>,
}

impl Submitter {
    /// Publishes a command. The receiver resolves once the outcome is durable.
    pub fn submit(&self, command: Command) -> Result<ReplyReceiver, SubmitError> {
        if self.inner.status.failed.load(Ordering::Relaxed) {
            return Err(SubmitError::Closed);
        }
        let (reply, receiver) = oneshot::channel();
        let request = Request {
            command,
            published: Instant::now(),
            reply,
        };
        let index = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.producers.len();
        let mut producer = self.inner.producers[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(producer) = producer.as_mut() else {
            return Err(SubmitError::Closed);
        };
        let mut request = Some(request);
        let published = producer.try_publish(|slot| {
            *slot
                .request
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = request.take();
        });
        match published {
            Ok(_) => {
                let published = self.inner.status.published.fetch_add(1, Ordering::Relaxed) + 1;
                self.inner.waker.wake(published);
                Ok(receiver)
            }
            Err(_) => Err(SubmitError::Full),
        }
    }

    /// Stops accepting commands. The engine thread drains what was published, makes it
    /// durable, replies, and exits.
    pub fn close(&self) {
        for producer in self.inner.producers.iter() {
            let taken = producer
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take();
            drop(taken); // the last producer dropped shuts the ring down
        }
        self.inner.waker.engine.unpark();
    }

    pub fn status(&self) -> &Arc<PipelineStatus> {
        &self.inner.status
    }
}

/// The running pipeline: the submitter and the engine thread.
pub struct Pipeline {
    pub submitter: Submitter,
    pub status: Arc<PipelineStatus>,
    engine_thread: JoinHandle<Result<Engine, String>>,
}

impl Pipeline {
    /// Starts the engine thread on a restored engine and its open journal.
    pub fn start<S>(
        engine: Engine,
        journal: Journal<S>,
        snapshots: Option<SnapshotStore>,
        config: PipelineConfig,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Pipeline>
    where
        S: Storage + Send + 'static,
    {
        let ring_size = config
            .ring_size
            .clamp(RING_SIZE_MIN, RING_SIZE_MAX)
            .next_power_of_two();
        let builder = disruptor::build_multi_producer(ring_size, Slot::default, BusySpin);
        let (poller, builder) = builder.new_event_poller();
        let first = builder.build();
        let status = Arc::new(PipelineStatus::default());
        status
            .ring_capacity
            .store(ring_size as u64, Ordering::Relaxed);
        status
            .applied_seq
            .store(engine.last_seq(), Ordering::Relaxed);
        status
            .durable_seq
            .store(journal.durable_seq(), Ordering::Relaxed);
        metrics.ring(0, ring_size as u64);

        let (thread_tx, thread_rx) = std::sync::mpsc::sync_channel::<Arc<Waker>>(1);
        let worker = EngineWorker {
            engine,
            journal,
            snapshots,
            config,
            metrics,
            status: Arc::clone(&status),
            poller,
            waker: None,
            taken: Vec::with_capacity(BATCH_COMMANDS_MAX),
            encoder: EntryEncoder::default(),
            in_flight: Vec::with_capacity(BATCH_COMMANDS_MAX),
            in_flight_transfers: 0,
            last_commit_commands: 0,
            flush_started: Instant::now(),
            last_timestamp: 0,
            last_snapshot_seq: 0,
            bytes_since_snapshot: 0,
            snapshot_writer: None,
            mirror: None,
            returned: None,
        };
        let engine_thread = thread::Builder::new()
            .name("payu-engine".into())
            .spawn(move || {
                let waker = thread_rx
                    .recv()
                    .map_err(|_| "pipeline start aborted".to_string())?;
                let mut worker = worker;
                worker.waker = Some(waker);
                worker.run()
            })?;
        let waker = Arc::new(Waker {
            engine: engine_thread.thread().clone(),
            wake_at: AtomicU64::new(AWAKE),
        });
        // The engine thread waits for its waker before it touches the ring.
        let _ = thread_tx.send(Arc::clone(&waker));
        let mut producers = Vec::with_capacity(PRODUCERS);
        for _ in 1..PRODUCERS {
            producers.push(Mutex::new(Some(first.clone())));
        }
        producers.push(Mutex::new(Some(first)));
        let submitter = Submitter {
            inner: Arc::new(SubmitterInner {
                producers: producers.into_boxed_slice(),
                next: AtomicUsize::new(0),
                waker,
                status: Arc::clone(&status),
            }),
        };
        Ok(Pipeline {
            submitter,
            status,
            engine_thread,
        })
    }

    /// Closes the ring and waits for the engine thread to drain, flush and stop. Returns the
    /// engine (for tests and tools).
    pub fn shutdown(self) -> Result<Engine, String> {
        self.submitter.close();
        self.join()
    }

    /// Waits for the engine thread (after `Submitter::close`, or a failure).
    pub fn join(self) -> Result<Engine, String> {
        match self.engine_thread.join() {
            Ok(result) => result,
            Err(_) => Err("the engine thread panicked".into()),
        }
    }

    pub fn is_finished(&self) -> bool {
        self.engine_thread.is_finished()
    }
}

/// A request applied and written, waiting for its group commit.
struct Pending {
    reply: oneshot::Sender<Result<Reply, PipelineFailed>>,
    published: Instant,
    seq: u64,
    timestamp: Timestamp,
    outcome: Outcome,
}

enum Taken {
    /// Commands were applied and written; this many were transfers.
    Commands {
        transfers: u64,
    },
    Empty,
    Shutdown,
}

struct EngineWorker<S: Storage> {
    engine: Engine,
    journal: Journal<S>,
    snapshots: Option<SnapshotStore>,
    config: PipelineConfig,
    metrics: Arc<Metrics>,
    status: Arc<PipelineStatus>,
    poller: RingPoller,
    waker: Option<Arc<Waker>>,
    /// Requests taken off the ring, not yet applied (reused buffer).
    taken: Vec<Request>,
    encoder: EntryEncoder,
    /// The batch whose flush is in flight, and what it held.
    in_flight: Vec<Pending>,
    in_flight_transfers: u64,
    /// Commands in the last finished group commit (the linger's evidence of concurrency).
    last_commit_commands: usize,
    flush_started: Instant,
    last_timestamp: u64,
    last_snapshot_seq: u64,
    /// Journal bytes (whole records) appended since the last snapshot.
    bytes_since_snapshot: u64,
    snapshot_writer: Option<SnapshotWriter>,
    /// The state's lists (accounts, holds, pockets, windows) copied for the next snapshot, kept
    /// in step after every batch (with snapshots on; `None` while a snapshot being written
    /// holds it). Copying the idempotency window whole on this thread paused every reply for
    /// 57–176 ms at 0.4–1.2M entries under load, and the accounts for tens of milliseconds at
    /// a million (docs/PERFORMANCE.md).
    mirror: Option<SnapshotMirror>,
    /// A written snapshot's state, back from the writer, to be reused by the next one.
    returned: Option<SnapshotState>,
}

impl<S: Storage> EngineWorker<S> {
    fn run(mut self) -> Result<Engine, String> {
        self.last_snapshot_seq = self.engine.last_seq();
        self.last_timestamp = self.engine.last_timestamp().0;
        if let Some(store) = self.snapshots.take() {
            self.snapshot_writer = Some(SnapshotWriter::start(store)?);
            // One whole copy, before the first command.
            self.mirror = Some(self.engine.snapshot_mirror());
        }
        let mut batch: Vec<Pending> = Vec::with_capacity(BATCH_COMMANDS_MAX);
        let result = self.run_loop(&mut batch);
        let writer = self.snapshot_writer.take();
        if let Err(error) = &result {
            tracing::error!(%error, "engine pipeline stopped");
            self.status.failed.store(true, Ordering::Release);
            self.fail_all(&mut batch, error);
        }
        if let Some(writer) = writer {
            writer.finish();
        }
        self.status.stopped.store(true, Ordering::Release);
        result.map(|()| self.engine)
    }

    fn run_loop(&mut self, batch: &mut Vec<Pending>) -> Result<(), String> {
        let expected = self.engine.last_seq() + 1;
        if self.journal.next_seq() != expected {
            return Err(format!(
                "journal continues at seq {} but the engine expects {expected}",
                self.journal.next_seq()
            ));
        }
        loop {
            match self.take_batch(batch)? {
                Taken::Commands { transfers } => {
                    let (more, closed) = self.linger(batch)?;
                    self.commit(batch, transfers + more)?;
                    self.keep_mirror();
                    if closed {
                        self.finish_flush()?;
                        return self.maybe_snapshot(true);
                    }
                }
                Taken::Empty if !self.in_flight.is_empty() => {
                    // Nothing new to overlap with: finish the flush in flight now.
                    self.finish_flush()?;
                }
                Taken::Empty => {
                    self.maybe_snapshot(false)?;
                    self.wait();
                }
                Taken::Shutdown => {
                    self.finish_flush()?;
                    return self.maybe_snapshot(true);
                }
            }
        }
    }

    /// Takes what the ring holds (up to a batch, counting what `batch` already holds), then
    /// applies and journals it.
    fn take_batch(&mut self, batch: &mut Vec<Pending>) -> Result<Taken, String> {
        let room = BATCH_COMMANDS_MAX.saturating_sub(batch.len());
        if room == 0 {
            return Ok(Taken::Commands { transfers: 0 });
        }
        {
            let mut events = match self.poller.take(room as u64) {
                Ok(events) => events,
                Err(Polling::NoEvents) => return Ok(Taken::Empty),
                Err(Polling::Shutdown) => return Ok(Taken::Shutdown),
            };
            for slot in &mut events {
                self.taken.extend(slot.take());
            }
            // Dropping `events` hands the slots back to the producers before the batch is
            // applied: the ring refills while the engine works.
        }
        let count = self.taken.len() as u64;
        self.status.consumed.fetch_add(count, Ordering::Relaxed);
        let mut transfers = 0;
        let mut requests = std::mem::take(&mut self.taken);
        let mut drained = requests.drain(..);
        let mut applied = 0;
        loop {
            if applied % COMMANDS_TOUCH_AHEAD == 0 {
                let next = drained.as_slice().iter().take(COMMANDS_TOUCH_AHEAD);
                self.engine.touch(next.map(|request| &request.command));
            }
            let Some(request) = drained.next() else { break };
            applied += 1;
            transfers += transfer_count(&request.command);
            match self.apply_one(request) {
                Ok(pending) => batch.push(pending),
                Err((reply, error)) => {
                    let failed = PipelineFailed(error.clone());
                    let _ = reply.send(Err(failed.clone()));
                    for rest in drained {
                        let _ = rest.reply.send(Err(failed.clone()));
                    }
                    return Err(error);
                }
            }
        }
        drop(drained);
        self.taken = requests;
        if batch.is_empty() {
            return Ok(Taken::Empty);
        }
        self.status
            .applied_seq
            .store(self.engine.last_seq(), Ordering::Relaxed);
        Ok(Taken::Commands { transfers })
    }

    /// Applies one command and appends its record. An append failure returns the reply
    /// channel with the error: the engine is now ahead of the journal and must stop.
    #[allow(clippy::result_large_err)]
    fn apply_one(
        &mut self,
        request: Request,
    ) -> Result<Pending, (oneshot::Sender<Result<Reply, PipelineFailed>>, String)> {
        // Timestamps never go backwards, even if the wall clock does.
        let timestamp = wall_clock_nanos().max(self.last_timestamp);
        self.last_timestamp = timestamp;
        let seq = self.engine.last_seq() + 1;
        let outcome = self
            .engine
            .apply(seq, Timestamp(timestamp), &request.command);
        let entry = Entry {
            command: request.command,
            outcome,
        };
        let payload = self.encoder.encode(&entry);
        self.bytes_since_snapshot += payu_journal::record_len(payload.len()) as u64;
        if let Err(error) = self.journal.append(self.config.epoch, timestamp, payload) {
            return Err((
                request.reply,
                format!("journal append at seq {seq}: {error}"),
            ));
        }
        Ok(Pending {
            reply: request.reply,
            published: request.published,
            seq,
            timestamp: Timestamp(timestamp),
            outcome: entry.outcome,
        })
    }

    /// The group commit linger (`PipelineConfig::commit_linger`): holds a small batch back,
    /// taking and applying what arrives, until its oldest command is `commit_linger` old or
    /// the batch holds `commit_linger_commands`. Only after a group commit of two or more
    /// commands, so a lone client never waits. Returns the transfers taken meanwhile, and
    /// whether the ring closed.
    fn linger(&mut self, batch: &mut Vec<Pending>) -> Result<(u64, bool), String> {
        let wanted = self.config.commit_linger_commands.min(BATCH_COMMANDS_MAX);
        let Some(oldest) = batch.first() else {
            return Ok((0, false));
        };
        let deadline = oldest.published + self.config.commit_linger;
        if batch.len() >= wanted || self.last_commit_commands < 2 || Instant::now() >= deadline {
            return Ok((0, false));
        }
        // The replies of the group commit in flight go now, not after the linger.
        self.finish_flush()?;
        self.metrics.commit_lingered();
        let mut transfers = 0;
        loop {
            let now = Instant::now();
            if batch.len() >= wanted || now >= deadline {
                return Ok((transfers, false));
            }
            let target =
                self.status.consumed.load(Ordering::Relaxed) + (wanted - batch.len()) as u64;
            // `Submitter::close` unparks it, and the take below then sees the shutdown.
            self.park_until(target, (deadline - now).min(IDLE_TICK));
            match self.take_batch(batch)? {
                Taken::Commands { transfers: more } => transfers += more,
                Taken::Empty => {}
                Taken::Shutdown => return Ok((transfers, true)),
            }
        }
    }

    /// Parks until `published` reaches `target` (a producer unparks it) or `timeout` passes.
    fn park_until(&self, target: u64, timeout: Duration) {
        let Some(waker) = &self.waker else { return };
        waker.wake_at.store(target, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.status.published.load(Ordering::Relaxed) < target {
            thread::park_timeout(timeout);
        }
        waker.wake_at.store(AWAKE, Ordering::Relaxed);
    }

    /// Starts the group commit of `batch`, after finishing the one in flight. With commands
    /// waiting in the ring it runs in the kernel (io_uring) while the next batch is applied;
    /// with none, it is done right here and the replies go at once, since waiting for
    /// io_uring's worker thread would only add two wake-ups (docs/PERFORMANCE.md).
    fn commit(&mut self, batch: &mut Vec<Pending>, transfers: u64) -> Result<(), String> {
        self.finish_flush()?;
        self.flush_started = Instant::now();
        let overlap = self.poller.has_available();
        let flushed = match overlap {
            true => self.journal.flush_start(),
            false => self.journal.flush_now(),
        };
        flushed.map_err(|error| format!("journal flush: {error}"))?;
        std::mem::swap(&mut self.in_flight, batch);
        self.in_flight_transfers = transfers;
        if !overlap {
            self.finish_flush()?;
        }
        Ok(())
    }

    /// Finishes the group commit in flight and releases its replies.
    fn finish_flush(&mut self) -> Result<(), String> {
        if self.in_flight.is_empty() {
            return Ok(());
        }
        let durable = self
            .journal
            .flush_wait()
            .map_err(|error| format!("journal flush: {error}"))?;
        let now = Instant::now();
        let took = now - self.flush_started;
        self.metrics.flush(took);
        if took >= SLOW_FLUSH_WARN {
            self.metrics.slow_flush();
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                commands = self.in_flight.len(),
                durable_seq = durable,
                "slow journal group commit"
            );
        }
        self.metrics
            .committed(self.in_flight.len() as u64, self.in_flight_transfers);
        self.metrics.batch(self.in_flight.len());
        self.last_commit_commands = self.in_flight.len();
        self.status.durable_seq.store(durable, Ordering::Release);
        for pending in self.in_flight.drain(..) {
            debug_assert!(pending.seq <= durable);
            self.metrics.commit_latency(now - pending.published);
            // A client that gave up (timeout, disconnect) dropped its receiver: fine.
            let _ = pending.reply.send(Ok(Reply {
                seq: pending.seq,
                timestamp: pending.timestamp,
                outcome: pending.outcome,
            }));
        }
        self.metrics.ring(
            self.status.ring_occupancy(),
            self.status.ring_capacity.load(Ordering::Relaxed),
        );
        Ok(())
    }

    fn fail_all(&mut self, batch: &mut Vec<Pending>, error: &str) {
        let failed = PipelineFailed(error.to_string());
        for pending in self.in_flight.drain(..).chain(batch.drain(..)) {
            let _ = pending.reply.send(Err(failed.clone()));
        }
        // Requests still in the ring are answered too: nothing will apply them.
        while let Ok(mut events) = self.poller.poll() {
            for slot in &mut events {
                if let Some(request) = slot.take() {
                    let _ = request.reply.send(Err(failed.clone()));
                }
            }
        }
    }

    /// Takes a snapshot when enough records passed since the last one (or, with `shutdown`,
    /// whenever anything did). Called only with no flush in flight, so the snapshot never
    /// includes a record that is not durable.
    fn maybe_snapshot(&mut self, shutdown: bool) -> Result<(), String> {
        let seq = self.engine.last_seq();
        let since = seq - self.last_snapshot_seq;
        let due = match shutdown {
            true => self.config.snapshot_on_shutdown && since > 0,
            false => {
                let every = (
                    self.config.snapshot_every_records,
                    self.config.snapshot_every_bytes,
                );
                (every.0 > 0 && since >= every.0)
                    || (every.1 > 0 && since > 0 && self.bytes_since_snapshot >= every.1)
            }
        };
        let Some(writer) = &self.snapshot_writer else {
            return Ok(());
        };
        if due && (shutdown || writer.is_idle()) {
            // Only the copy stops the engine thread; the writer thread encodes and writes it.
            let started = Instant::now();
            take_back_state(writer, &mut self.mirror, &mut self.returned);
            // Without the mirror (still with a snapshot being written, at shutdown) the
            // state is copied whole.
            let state = match (self.returned.take(), self.mirror.take()) {
                (Some(mut state), Some(mirror)) => {
                    self.engine.snapshot_into_mirrored(&mut state, mirror);
                    state
                }
                (Some(mut state), None) => {
                    self.engine.snapshot_into(&mut state);
                    state
                }
                (None, Some(mirror)) => self.engine.snapshot_state_mirrored(mirror),
                (None, None) => self.engine.snapshot_state(),
            };
            tracing::info!(
                seq,
                copy_ms = started.elapsed().as_millis() as u64,
                "snapshot taken"
            );
            writer.save(state);
            self.last_snapshot_seq = seq;
            self.bytes_since_snapshot = 0;
        }
        if self.config.retention
            && let Some(covered) = writer.covered_seq()
        {
            let removed = self
                .journal
                .remove_covered(covered)
                .map_err(|error| format!("journal retention: {error}"))?;
            if !removed.is_empty() {
                tracing::info!(
                    covered,
                    segments = removed.len(),
                    "journal segments removed"
                );
            }
        }
        let saved = writer.saved_seq();
        self.status.snapshot_seq.store(saved, Ordering::Relaxed);
        Ok(())
    }

    /// Brings the snapshot mirror in step with the batch just applied, first taking it back
    /// (with its state) from a snapshot the writer has finished.
    fn keep_mirror(&mut self) {
        if self.mirror.is_none()
            && let Some(writer) = &self.snapshot_writer
            // Idle is set after the state is handed back, so an idle writer has returned it.
            && writer.is_idle()
        {
            take_back_state(writer, &mut self.mirror, &mut self.returned);
            if self.mirror.is_none() {
                // The last snapshot went without one (or its state could not come back): one
                // whole copy, once.
                self.mirror = Some(self.engine.snapshot_mirror());
            }
        }
        if let Some(mirror) = self.mirror.as_mut() {
            self.engine.sync_snapshot_mirror(mirror);
        }
    }

    fn wait(&self) {
        match self.config.wait {
            WaitStrategy::Park => {
                // Any publish wakes it: the next command is one past what was consumed.
                let consumed = self.status.consumed.load(Ordering::Relaxed);
                self.park_until(consumed + 1, IDLE_TICK);
            }
            WaitStrategy::Sleep(duration) => thread::sleep(duration.min(IDLE_TICK)),
            WaitStrategy::Yield => thread::yield_now(),
            WaitStrategy::Spin => std::hint::spin_loop(),
        }
    }
}

/// How many transfers a command carries (for the TPS metrics).
fn transfer_count(command: &Command) -> u64 {
    match &command.body {
        CommandBody::Transfer(_) => 1,
        CommandBody::TransferBatch(items) => items.len() as u64,
        _ => 0,
    }
}

pub fn wall_clock_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or(0)
}

/// Snapshots kept whose journal segments retention keeps (mirrors SnapshotStore's count).
const SNAPSHOTS_FOR_RETENTION: usize = payu_journal::SNAPSHOTS_KEPT;

/// Encodes and writes snapshots on a thread of its own, so the engine thread only pays for copying.
/// At most one snapshot waits to be written (the channel's bound). The writer hands the state
/// back after writing it, and the next snapshot copies into its buffers: copying into memory
/// already faulted in is what keeps the engine thread's stop short (docs/PERFORMANCE.md). The
/// price is one state-sized copy kept between snapshots.
struct SnapshotWriter {
    sender: Option<std::sync::mpsc::SyncSender<SnapshotState>>,
    returned: std::sync::mpsc::Receiver<SnapshotState>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<SnapshotShared>,
}

#[derive(Default)]
struct SnapshotShared {
    busy: AtomicBool,
    saved_seq: AtomicU64,
    /// The oldest of the last SNAPSHOTS_KEPT snapshots this run saved (0 until that many).
    covered_seq: AtomicU64,
}

/// Keeps the state a finished snapshot handed back (`returned`), for the next snapshot, and
/// the mirror it carried unless the engine thread already has one.
fn take_back_state(
    writer: &SnapshotWriter,
    mirror: &mut Option<SnapshotMirror>,
    returned: &mut Option<SnapshotState>,
) {
    if let Some(mut state) = writer.take_returned() {
        let carried = state.take_mirror();
        *mirror = mirror.take().or(carried);
        *returned = Some(state);
    }
}

/// The snapshot writer's niceness. Encoding a snapshot takes a core for a fraction of a second
/// (0.2-0.5 s at 0.4-1.2M commands). At normal priority it took that core from the HTTP
/// workers and the engine, and the second of each snapshot had p99 of 42-46 ms at 35k/s
/// (docs/PERFORMANCE.md). At nice 10 it gets about a tenth of their share while they are busy,
/// and all of an idle core.
pub const SNAPSHOT_THREAD_NICE: i32 = 10;

/// Raises the calling thread's niceness to `nice` (lowers its priority); raising it needs no
/// privilege.
#[allow(unsafe_code)]
fn lower_thread_priority(nice: i32) -> std::io::Result<()> {
    // SAFETY: gettid and setpriority take and return plain integers and touch no memory of
    // this process; on Linux PRIO_PROCESS with a thread id applies to that thread alone.
    let result =
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
    match result {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

impl SnapshotWriter {
    fn start(store: SnapshotStore) -> Result<SnapshotWriter, String> {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<SnapshotState>(1);
        let (give_back, returned) = std::sync::mpsc::sync_channel::<SnapshotState>(1);
        let shared = Arc::new(SnapshotShared::default());
        let thread_shared = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name("payu-snapshot".into())
            .spawn(move || {
                if let Err(error) = lower_thread_priority(SNAPSHOT_THREAD_NICE) {
                    tracing::warn!(%error, "the snapshot writer runs at normal priority");
                }
                let mut saved = std::collections::VecDeque::new();
                // The buffer of the next encoding: the last snapshot's size and an eighth.
                let mut bytes_hint = 0;
                for mut state in receiver {
                    let seq = state.seq();
                    let started = Instant::now();
                    let bytes = state.encode_sized(bytes_hint);
                    bytes_hint = bytes.len() + bytes.len() / 8;
                    let encode_ms = started.elapsed().as_millis() as u64;
                    match store.save(seq, &bytes) {
                        Ok(path) => {
                            tracing::info!(
                                seq,
                                bytes = bytes.len(),
                                encode_ms,
                                path = %path.display(),
                                "snapshot saved"
                            );
                            thread_shared.saved_seq.store(seq, Ordering::Release);
                            saved.push_back(seq);
                            if saved.len() > SNAPSHOTS_FOR_RETENTION {
                                saved.pop_front();
                            }
                            if saved.len() == SNAPSHOTS_FOR_RETENTION {
                                let oldest = saved.front().copied().unwrap_or(0);
                                thread_shared.covered_seq.store(oldest, Ordering::Release);
                            }
                        }
                        Err(error) => tracing::warn!(seq, %error, "snapshot not saved"),
                    }
                    let _ = give_back.try_send(state); // full or gone: the next copy allocates
                    thread_shared.busy.store(false, Ordering::Release);
                }
            })
            .map_err(|error| format!("starting the snapshot writer: {error}"))?;
        Ok(SnapshotWriter {
            sender: Some(sender),
            returned,
            thread: Some(thread),
            shared,
        })
    }

    fn is_idle(&self) -> bool {
        !self.shared.busy.load(Ordering::Acquire)
    }

    fn save(&self, state: SnapshotState) {
        self.shared.busy.store(true, Ordering::Release);
        if let Some(sender) = &self.sender
            && sender.send(state).is_err()
        {
            self.shared.busy.store(false, Ordering::Release);
        }
    }

    /// The last state written, to copy the next snapshot into.
    fn take_returned(&self) -> Option<SnapshotState> {
        self.returned.try_recv().ok()
    }

    fn saved_seq(&self) -> u64 {
        self.shared.saved_seq.load(Ordering::Acquire)
    }

    fn covered_seq(&self) -> Option<u64> {
        match self.shared.covered_seq.swap(0, Ordering::AcqRel) {
            0 => None,
            seq => Some(seq),
        }
    }

    /// Writes what is queued and stops the thread.
    fn finish(mut self) {
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use payu_engine::{
        AccountKind, Amount, CommandResult, Currency, Deposit, EngineConfig, IdempotencyKey,
        OpenAccount, OwnerId, Transfer,
    };
    use payu_journal::{JournalConfig, SNAPSHOTS_KEPT, SimStorage, restore_engine};

    use super::*;

    fn engine_config() -> EngineConfig {
        EngineConfig {
            accounts_max: 1_000,
            holds_active_max: 100,
            idempotency_entries_max: 10_000,
            refundable_payments_max: 100,
            finished_holds_max: 100,
            ..EngineConfig::default()
        }
    }

    fn open_journal(sim: &SimStorage) -> Journal<SimStorage> {
        let config = JournalConfig {
            segment_bytes: 1 << 20,
        };
        Journal::open(sim.clone(), config).expect("journal opens").0
    }

    fn start(sim: &SimStorage) -> Pipeline {
        let config = PipelineConfig {
            ring_size: 64,
            snapshot_every_records: 0,
            snapshot_on_shutdown: false,
            ..PipelineConfig::default()
        };
        let journal = open_journal(sim);
        Pipeline::start(
            Engine::new(engine_config()),
            journal,
            None,
            config,
            Arc::new(Metrics::new()),
        )
        .expect("pipeline starts")
    }

    fn command(n: u128, body: CommandBody) -> Command {
        Command {
            key: IdempotencyKey(n),
            body,
        }
    }

    fn open(n: u128, kind: AccountKind) -> Command {
        command(
            n,
            CommandBody::OpenAccount(OpenAccount {
                owner: OwnerId(n),
                kind,
                tier: 3,
                currency: Currency::IDR,
                overdraft_limit: Amount::ZERO,
            }),
        )
    }

    /// Submits, retrying (with a yield) while the small test ring is full.
    fn submit(submitter: &Submitter, command: Command) -> ReplyReceiver {
        loop {
            match submitter.submit(command.clone()) {
                Ok(receiver) => return receiver,
                Err(SubmitError::Full) => thread::yield_now(),
                Err(SubmitError::Closed) => panic!("pipeline closed"),
            }
        }
    }

    /// Settlement account 1, customers 2 and 3, 1000 IDR deposited into 2.
    fn setup(submitter: &Submitter) {
        let commands = [
            open(1, AccountKind::Settlement),
            open(2, AccountKind::Customer),
            open(3, AccountKind::Customer),
            command(
                4,
                CommandBody::Deposit(Deposit {
                    settlement: payu_engine::AccountId(1),
                    account: payu_engine::AccountId(2),
                    amount: Amount::whole(1_000),
                    currency: Currency::IDR,
                }),
            ),
        ];
        for command in commands {
            let reply = submit(submitter, command)
                .blocking_recv()
                .expect("answered")
                .expect("durable");
            assert!(
                !matches!(reply.outcome.result, CommandResult::Rejected(_)),
                "{reply:?}"
            );
        }
    }

    fn transfer(n: u128, units: u64) -> Command {
        command(
            n,
            CommandBody::Transfer(Transfer {
                from: payu_engine::AccountId(2),
                to: payu_engine::AccountId(3),
                amount: Amount(units),
                currency: Currency::IDR,
            }),
        )
    }

    #[test]
    fn every_answered_command_survives_a_crash_right_after_its_answer() {
        for seed in 1..=8u64 {
            let sim = SimStorage::new(seed);
            let pipeline = start(&sim);
            setup(&pipeline.submitter);
            // Many in flight at once, so batches and pipelined flushes really happen.
            let receivers: Vec<_> = (0..500u128)
                .map(|n| submit(&pipeline.submitter, transfer(100 + n, 1 + n as u64)))
                .collect();
            let mut answered = Vec::new();
            for receiver in receivers.into_iter().take(250) {
                let reply = receiver
                    .blocking_recv()
                    .expect("answered")
                    .expect("durable");
                answered.push((reply.seq, reply.outcome));
            }
            // Power loss now: anything not flushed may be lost or torn, but nothing answered.
            sim.crash();
            let _ = pipeline.shutdown();
            sim.crash();

            let journal = open_journal(&sim);
            let snapshots_dir = tempfile::tempdir().expect("tempdir");
            let snapshots = SnapshotStore::open(snapshots_dir.path()).expect("snapshot store");
            let restored = restore_engine(&snapshots, &journal, engine_config()).expect("restores");
            let mut reader = journal.reader(1).expect("reader");
            let mut journaled = std::collections::HashMap::new();
            while let Some(record) = reader.next().expect("reads") {
                let entry = payu_journal::decode_entry(record.payload()).expect("decodes");
                journaled.insert(record.header.seq, entry.outcome);
            }
            for (seq, outcome) in &answered {
                assert_eq!(
                    journaled.get(seq),
                    Some(outcome),
                    "seed {seed}: answered seq {seq} lost or changed"
                );
            }
            assert!(restored.engine.last_seq() >= answered.iter().map(|a| a.0).max().unwrap_or(0));
            restored.engine.verify().expect("ledger consistent");
        }
    }

    #[test]
    fn a_failed_flush_answers_not_durable_and_stops_the_pipeline() {
        let sim = SimStorage::new(7);
        let pipeline = start(&sim);
        setup(&pipeline.submitter);
        sim.fail_next_flushes(1);
        let answer = submit(&pipeline.submitter, transfer(50, 10))
            .blocking_recv()
            .expect("answered");
        assert!(
            answer.is_err(),
            "a failed flush must never be reported durable"
        );
        let status = Arc::clone(&pipeline.status);
        let result = pipeline.join();
        assert!(result.is_err());
        assert!(status.failed.load(Ordering::Acquire));
        // The failed command never reached the disk: after power loss it is gone. (Without
        // the power loss it may still be read back and recovered, which is why the answer
        // tells the client to retry with the same key rather than that it failed.)
        sim.crash();
        let journal = open_journal(&sim);
        assert_eq!(journal.durable_seq(), 4);
    }

    #[test]
    fn a_closed_pipeline_refuses_new_commands() {
        let sim = SimStorage::new(9);
        let pipeline = start(&sim);
        setup(&pipeline.submitter);
        let submitter = pipeline.submitter.clone();
        let engine = pipeline.shutdown().expect("clean stop");
        assert_eq!(engine.last_seq(), 4);
        assert_eq!(
            submitter.submit(transfer(60, 1)).err(),
            Some(SubmitError::Closed)
        );
    }

    #[test]
    fn shutdown_drains_and_answers_everything_published() {
        let sim = SimStorage::new(11);
        let pipeline = start(&sim);
        setup(&pipeline.submitter);
        let receivers: Vec<_> = (0..300u128)
            .map(|n| submit(&pipeline.submitter, transfer(1_000 + n, 1)))
            .collect();
        let status = Arc::clone(&pipeline.status);
        let engine = pipeline.shutdown().expect("clean stop");
        for receiver in receivers {
            let reply = receiver
                .blocking_recv()
                .expect("answered")
                .expect("durable");
            assert!(matches!(reply.outcome.result, CommandResult::Posted(_)));
        }
        assert_eq!(engine.last_seq(), 304);
        assert_eq!(status.durable_seq.load(Ordering::Acquire), 304);
        assert_eq!(status.ring_occupancy(), 0);
    }

    /// Proves: the snapshot writer's thread runs at `SNAPSHOT_THREAD_NICE`, so encoding a
    /// snapshot yields the cores to the engine and the HTTP workers.
    #[test]
    fn the_snapshot_writer_runs_at_lower_priority() {
        let sim = SimStorage::new(13);
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SnapshotStore::open(dir.path()).expect("snapshot store");
        let pipeline = Pipeline::start(
            Engine::new(engine_config()),
            open_journal(&sim),
            Some(store),
            PipelineConfig::default(),
            Arc::new(Metrics::new()),
        )
        .expect("pipeline starts");
        setup(&pipeline.submitter);
        // The writer lowers its priority first thing; give it GATE_PATIENCE to start.
        let started = Instant::now();
        let nices = loop {
            let nices: Vec<i64> = std::fs::read_dir("/proc/self/task")
                .expect("tasks")
                .flatten()
                .filter(|task| {
                    std::fs::read_to_string(task.path().join("comm"))
                        .is_ok_and(|comm| comm.trim() == "payu-snapshot")
                })
                .filter_map(|task| {
                    let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
                    // Field 19: nice.
                    crate::metrics::stat_fields(&stat)?.nth(16)?.parse().ok()
                })
                .collect();
            if nices.contains(&(SNAPSHOT_THREAD_NICE as i64)) || started.elapsed() > GATE_PATIENCE {
                break nices;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(
            nices.contains(&(SNAPSHOT_THREAD_NICE as i64)),
            "snapshot threads' nice: {nices:?}"
        );
        assert!(
            nices
                .iter()
                .all(|&nice| nice == SNAPSHOT_THREAD_NICE as i64),
            "{nices:?}"
        );
        pipeline.shutdown().expect("clean stop");
    }

    #[test]
    fn the_newest_periodic_snapshot_is_the_journals_state_at_its_seq() {
        // Every 20 records (no byte bound reached).
        assert_periodic_snapshots(20, SNAPSHOT_EVERY_BYTES_DEFAULT);
    }

    #[test]
    fn snapshots_also_come_every_so_many_journal_bytes() {
        // No record bound: 16 KiB of journal (about 50 transfer records) is what triggers.
        assert_periodic_snapshots(0, 16 << 10);
    }

    /// Snapshots are taken when the engine idles (here, between commands sent one at a time)
    /// and the writer is free. Commands go on until four snapshots were saved, the later ones
    /// copied into the buffers the writer handed back. The newest must be the state the
    /// journal rebuilds at its seq.
    ///
    /// The writer fsyncs each snapshot to a real directory, which right after a build can take
    /// seconds. Commands sent at full speed meanwhile ran the journal so far ahead that four
    /// snapshots did not come within a fixed count of commands, or that retention retired the
    /// segment the rebuild starts from. So once `TRICKLE_AFTER` commands brought no new
    /// snapshot, commands slow to one per `TRICKLE_PAUSE` until the writer catches up, and the
    /// bound is time (`GATE_PATIENCE`), not a count.
    fn assert_periodic_snapshots(every_records: u64, every_bytes: u64) {
        const TRICKLE_AFTER: u32 = 200;
        const TRICKLE_PAUSE: Duration = Duration::from_millis(5);
        let sim = SimStorage::new(12);
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SnapshotStore::open(dir.path()).expect("snapshot store");
        let config = PipelineConfig {
            ring_size: 64,
            snapshot_every_records: every_records,
            snapshot_every_bytes: every_bytes,
            snapshot_on_shutdown: false,
            ..PipelineConfig::default()
        };
        let pipeline = Pipeline::start(
            Engine::new(engine_config()),
            open_journal(&sim),
            Some(store),
            config,
            Arc::new(Metrics::new()),
        )
        .expect("pipeline starts");
        setup(&pipeline.submitter);
        let status = Arc::clone(&pipeline.status);
        let mut saved = vec![];
        let (started, mut since_saved) = (Instant::now(), 0);
        for n in 0u128.. {
            assert!(
                started.elapsed() < GATE_PATIENCE,
                "snapshots saved within {GATE_PATIENCE:?} ({n} commands): {saved:?}"
            );
            let reply = submit(&pipeline.submitter, transfer(1_000 + n, 1 + n as u64 % 7))
                .blocking_recv()
                .expect("answered")
                .expect("durable");
            assert!(matches!(reply.outcome.result, CommandResult::Posted(_)));
            let seq = status.snapshot_seq.load(Ordering::Acquire);
            if seq > 0 && saved.last() != Some(&seq) {
                saved.push(seq);
                since_saved = 0;
                if saved.len() == 4 {
                    break;
                }
            } else {
                since_saved += 1;
            }
            if since_saved >= TRICKLE_AFTER {
                thread::sleep(TRICKLE_PAUSE);
            }
        }
        pipeline.shutdown().expect("clean stop");
        let files = std::fs::read_dir(dir.path()).expect("list").count();
        assert_eq!(
            files, SNAPSHOTS_KEPT,
            "four or more snapshots, the oldest pruned"
        );
        let store = SnapshotStore::open(dir.path()).expect("snapshot store");
        let newest = store
            .load_newest()
            .expect("load")
            .0
            .expect("a valid snapshot");
        assert!(
            newest.seq >= saved[3],
            "the newest snapshot is the last one saved"
        );
        // Rebuild the state at that seq from the journal alone.
        let journal = open_journal(&sim);
        let mut reader = journal.reader(1).expect("reader");
        let mut rebuilt = Engine::new(engine_config());
        while rebuilt.last_seq() < newest.seq {
            let record = reader.next().expect("read").expect("a durable record");
            let entry = payu_journal::decode_entry(record.payload()).expect("an entry");
            let outcome = rebuilt.apply(
                record.header.seq,
                Timestamp(record.header.timestamp),
                &entry.command,
            );
            assert_eq!(outcome, entry.outcome, "seq {}", record.header.seq);
        }
        assert!(
            rebuilt.snapshot() == newest.bytes,
            "the snapshot at seq {} differs from the journal's state there",
            newest.seq
        );
    }

    /// Flushes wait for the test's go-ahead, so a test decides what each group commit holds.
    #[derive(Default)]
    struct Gate {
        /// (flushes started, flushes allowed to finish)
        counts: Mutex<(u64, u64)>,
        changed: std::sync::Condvar,
    }

    /// How long a gated test waits for the pipeline before it fails (instead of hanging).
    const GATE_PATIENCE: Duration = Duration::from_secs(60);

    impl Gate {
        fn open() -> Arc<Gate> {
            let gate = Gate::default();
            *gate.counts.lock().expect("gate lock") = (0, u64::MAX);
            Arc::new(gate)
        }

        fn pass(&self) {
            let mut counts = self.counts.lock().expect("gate lock");
            counts.0 += 1;
            self.changed.notify_all();
            let mine = counts.0;
            while mine > counts.1 {
                counts = self.changed.wait(counts).expect("gate lock");
            }
        }

        fn started(&self) -> u64 {
            self.counts.lock().expect("gate lock").0
        }

        /// Flushes from now on wait until `release`d.
        fn hold(&self) {
            let mut counts = self.counts.lock().expect("gate lock");
            counts.1 = counts.0;
        }

        fn release(&self, flushes: u64) {
            let mut counts = self.counts.lock().expect("gate lock");
            counts.1 = counts.1.saturating_add(flushes);
            self.changed.notify_all();
        }

        fn wait_started(&self, flushes: u64) {
            let mut counts = self.counts.lock().expect("gate lock");
            while counts.0 < flushes {
                let (next, timeout) = self
                    .changed
                    .wait_timeout(counts, GATE_PATIENCE)
                    .expect("gate lock");
                assert!(!timeout.timed_out(), "flush {flushes} never started");
                counts = next;
            }
        }
    }

    struct GatedStorage {
        sim: SimStorage,
        gate: Arc<Gate>,
    }

    impl Storage for GatedStorage {
        type Reader = SimStorage;

        fn reader(&self) -> SimStorage {
            self.sim.reader()
        }
        fn segments(&self) -> std::io::Result<Vec<u64>> {
            Storage::segments(&self.sim)
        }
        fn create(&mut self, segment: u64, len: u64) -> std::io::Result<payu_journal::Created> {
            self.sim.create(segment, len)
        }
        fn segment_len(&self, segment: u64) -> std::io::Result<u64> {
            self.sim.segment_len(segment)
        }
        fn write(&mut self, segment: u64, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
            self.sim.write(segment, offset, bytes)
        }
        fn flush(&mut self, segment: u64) -> std::io::Result<()> {
            self.gate.pass();
            self.sim.flush(segment)
        }
        fn flush_start(&mut self, segment: u64) -> std::io::Result<()> {
            self.gate.pass();
            self.sim.flush_start(segment)
        }
        fn flush_wait(&mut self) -> std::io::Result<()> {
            self.sim.flush_wait()
        }
        fn remove(&mut self, segment: u64) -> std::io::Result<()> {
            self.sim.remove(segment)
        }
    }

    /// A pipeline on gated storage whose group commits linger for an hour, or until they hold
    /// `linger_commands`: a test sees the linger by what each flush carries, never by time.
    fn start_gated(linger_commands: usize) -> (Pipeline, Arc<Gate>, Arc<Metrics>) {
        let gate = Gate::open();
        let storage = GatedStorage {
            sim: SimStorage::new(17),
            gate: Arc::clone(&gate),
        };
        let journal = Journal::open(
            storage,
            JournalConfig {
                segment_bytes: 1 << 20,
            },
        )
        .expect("journal opens")
        .0;
        let config = PipelineConfig {
            ring_size: 64,
            snapshot_every_records: 0,
            snapshot_on_shutdown: false,
            commit_linger: Duration::from_secs(3600),
            commit_linger_commands: linger_commands,
            ..PipelineConfig::default()
        };
        let metrics = Arc::new(Metrics::new());
        let pipeline = Pipeline::start(
            Engine::new(engine_config()),
            journal,
            None,
            config,
            Arc::clone(&metrics),
        )
        .expect("pipeline starts");
        (pipeline, gate, metrics)
    }

    /// The reply, or a failure after `GATE_PATIENCE` (polled, sleeping between looks).
    fn answer(mut receiver: ReplyReceiver) -> Reply {
        let started = Instant::now();
        loop {
            match receiver.try_recv() {
                Ok(reply) => return reply.expect("durable"),
                Err(oneshot::error::TryRecvError::Empty) => {
                    assert!(started.elapsed() < GATE_PATIENCE, "no answer");
                    thread::sleep(Duration::from_millis(1));
                }
                Err(oneshot::error::TryRecvError::Closed) => panic!("reply dropped"),
            }
        }
    }

    /// The rendered sample line of the unlabelled counter `name`.
    fn counter_line(metrics: &Metrics, name: &str) -> String {
        let text = metrics.render();
        text.lines()
            .find(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' '))
            })
            .unwrap_or_else(|| panic!("{name} rendered"))
            .to_string()
    }

    fn lingers(metrics: &Metrics) -> String {
        counter_line(metrics, "payu_group_commit_lingers_total")
    }

    fn slow_flushes(metrics: &Metrics) -> u64 {
        counter_line(metrics, "payu_journal_slow_flushes_total")
            .rsplit(' ')
            .next()
            .and_then(|count| count.parse().ok())
            .expect("a count")
    }

    #[test]
    fn a_group_commit_held_past_the_warning_threshold_is_counted_as_slow() {
        let (pipeline, gate, metrics) = start_gated(64);
        let before = slow_flushes(&metrics);
        gate.hold();
        let started = gate.started();
        let receiver = submit(&pipeline.submitter, open(10, AccountKind::Customer));
        gate.wait_started(started + 1);
        // The flush cannot finish while it is held, so it takes at least this long.
        thread::sleep(SLOW_FLUSH_WARN + Duration::from_millis(10));
        gate.release(1);
        assert_eq!(answer(receiver).seq, 1);
        assert_eq!(slow_flushes(&metrics), before + 1);
        pipeline.shutdown().expect("clean stop");
    }

    #[test]
    fn a_lone_client_never_waits_for_the_commit_linger() {
        let (pipeline, gate, metrics) = start_gated(64);
        let opened = gate.started(); // opening the journal flushes too
        for n in 0..20u128 {
            let reply = answer(submit(
                &pipeline.submitter,
                open(10 + n, AccountKind::Customer),
            ));
            assert_eq!(reply.seq, n as u64 + 1);
        }
        // One command per group commit: with an hour's linger any wait would have hung.
        assert_eq!(gate.started() - opened, 20);
        assert_eq!(lingers(&metrics), "payu_group_commit_lingers_total 0");
        pipeline.shutdown().expect("clean stop");
    }

    #[test]
    fn after_a_shared_group_commit_a_small_batch_lingers_until_it_is_full_or_the_ring_closes() {
        let (pipeline, gate, metrics) = start_gated(4);
        let submitter = pipeline.submitter.clone();
        let status = Arc::clone(&pipeline.status);
        let opened = gate.started(); // opening the journal flushes too

        // A's flush is held, so B and C wait in the ring and become one group commit of two.
        gate.hold();
        let a = submit(&submitter, open(1, AccountKind::Customer));
        gate.wait_started(opened + 1);
        let b = submit(&submitter, open(2, AccountKind::Customer));
        let c = submit(&submitter, open(3, AccountKind::Customer));
        gate.release(1);
        assert_eq!(answer(a).seq, 1);
        gate.wait_started(opened + 2);
        gate.release(u64::MAX);
        assert_eq!((answer(b).seq, answer(c).seq), (2, 3));
        assert_eq!(lingers(&metrics), "payu_group_commit_lingers_total 0");

        // D is applied alone, then waits for three more instead of taking a flush of its own.
        let d = submit(&submitter, open(4, AccountKind::Customer));
        let started = Instant::now();
        while status.applied_seq.load(Ordering::Relaxed) < 4 {
            assert!(started.elapsed() < GATE_PATIENCE, "D never applied");
            thread::sleep(Duration::from_millis(1));
        }
        let rest: Vec<_> = (5..8u128)
            .map(|n| submit(&submitter, open(n, AccountKind::Customer)))
            .collect();
        assert_eq!(answer(d).seq, 4);
        for (n, receiver) in rest.into_iter().enumerate() {
            assert_eq!(answer(receiver).seq, n as u64 + 5);
        }
        assert_eq!(
            gate.started() - opened,
            3,
            "A, then B and C, then D to G in one flush"
        );
        assert_eq!(lingers(&metrics), "payu_group_commit_lingers_total 1");

        // H lingers too; closing the ring ends the wait, and H is made durable and answered.
        let h = submit(&submitter, open(8, AccountKind::Customer));
        let stopper = thread::spawn(move || pipeline.shutdown().expect("clean stop"));
        assert_eq!(answer(h).seq, 8);
        let engine = stopper.join().expect("shutdown thread");
        assert_eq!(engine.last_seq(), 8);
        assert_eq!(gate.started() - opened, 4);
    }

    #[test]
    fn wait_strategies_parse() {
        assert_eq!("park".parse(), Ok(WaitStrategy::Park));
        assert_eq!(
            "sleep:50".parse(),
            Ok(WaitStrategy::Sleep(Duration::from_micros(50)))
        );
        assert!("sleep:x".parse::<WaitStrategy>().is_err());
        assert!("nap".parse::<WaitStrategy>().is_err());
    }
}
