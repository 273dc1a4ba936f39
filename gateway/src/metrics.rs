//! Prometheus metrics without a metrics crate: a fixed registry of atomics, updated lock-free
//! on the hot path and rendered in the text exposition format 0.0.4 for `GET /metrics`.
//!
//! Every label's values come from a bounded set, so the number of series is bounded whatever
//! the clients send:
//! - `route`: at most `ROUTES_MAX` route templates. `Metrics::with_routes` registers a closed
//!   set up front and counts anything else as `"other"`; `Metrics::new` interns templates as
//!   they are first seen, until the table is full, then counts the rest as `"other"`. Pass the
//!   matched route template (axum's `MatchedPath`), never the raw path.
//! - `method`: `GET`, `POST`, `PATCH`, or `other`.
//! - `status`: the numeric code for the codes in `STATUSES_EXACT` (the ones the gateway
//!   answers); any other code is counted under its class, `"1xx"` to `"5xx"`, or `"other"`
//!   outside 100..=599. So `status=~"5.."` still selects every server error.
//! - `code` (rejections): at most `CODES_MAX` codes; the engine's `RejectCode` codes are
//!   registered up front, gateway codes are interned on first use, the rest count as `"other"`.
//!
//! Histograms keep one counter per bucket (not cumulative) and render running sums, so the
//! `+Inf` bucket always equals `_count`, even while other threads update them: `_count` is the
//! same sum. Latencies are kept in nanoseconds and rendered in seconds, exactly (no float).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Route templates tracked, `"other"` included.
pub const ROUTES_MAX: usize = 64;
/// Rejection codes tracked, `"other"` included.
pub const CODES_MAX: usize = 64;
/// Status codes counted under their own number; the rest are counted by class.
pub const STATUSES_EXACT: [u16; 18] = [
    200, 201, 202, 204, 400, 401, 403, 404, 405, 408, 409, 413, 415, 422, 429, 500, 503, 504,
];
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];
const STATUS_SLOTS: usize = STATUSES_EXACT.len() + STATUS_CLASSES.len();
const METHODS: [&str; 4] = ["GET", "POST", "PATCH", "other"];
const OTHER: &str = "other";

const MICROS: u64 = 1_000;
const MILLIS: u64 = 1_000_000;
const SECONDS: u64 = 1_000_000_000;
/// Latency bucket bounds in nanoseconds: 50 µs to 10 s in 1-2.5-5 steps (log-spaced).
const LATENCY_BOUNDS_NS: [u64; 17] = [
    50 * MICROS,
    100 * MICROS,
    250 * MICROS,
    500 * MICROS,
    MILLIS,
    2_500 * MICROS,
    5 * MILLIS,
    10 * MILLIS,
    25 * MILLIS,
    50 * MILLIS,
    100 * MILLIS,
    250 * MILLIS,
    500 * MILLIS,
    SECONDS,
    2_500 * MILLIS,
    5 * SECONDS,
    10 * SECONDS,
];
/// Engine batch size bucket bounds (commands per batch): powers of two up to 65 536.
const BATCH_BOUNDS: [u64; 17] = [
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536,
];

const _: () = assert!(ROUTES_MAX >= 2 && CODES_MAX >= 2);
const _: () = assert!(LATENCY_BOUNDS_NS[0] == 50 * MICROS);
const _: () = assert!(LATENCY_BOUNDS_NS[LATENCY_BOUNDS_NS.len() - 1] == 10 * SECONDS);

/// Gauges set by the node's components; each is rendered once it has been set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gauge {
    JournalDurableSeq,
    ReadModelAppliedSeq,
    ReadModelLagRecords,
    SnapshotSeq,
    Accounts,
    /// Records durable here and not yet durable on the standby.
    ReplicationLagRecords,
    /// Committed records not yet published to Kafka.
    KafkaPublishLagRecords,
}

impl Gauge {
    const ALL: [Gauge; 7] = [
        Gauge::JournalDurableSeq,
        Gauge::ReadModelAppliedSeq,
        Gauge::ReadModelLagRecords,
        Gauge::SnapshotSeq,
        Gauge::Accounts,
        Gauge::ReplicationLagRecords,
        Gauge::KafkaPublishLagRecords,
    ];

    fn name_and_help(self) -> (&'static str, &'static str) {
        match self {
            Gauge::JournalDurableSeq => (
                "payu_journal_durable_seq",
                "The last journal seq that is durable on this node.",
            ),
            Gauge::ReadModelAppliedSeq => (
                "payu_read_model_applied_seq",
                "The last journal seq the read model has applied.",
            ),
            Gauge::ReadModelLagRecords => (
                "payu_read_model_lag_records",
                "Durable journal records the read model has not applied yet.",
            ),
            Gauge::SnapshotSeq => (
                "payu_snapshot_seq",
                "The seq of the newest durable engine snapshot.",
            ),
            Gauge::Accounts => ("payu_accounts", "Accounts in the engine, pockets included."),
            Gauge::ReplicationLagRecords => (
                "payu_replication_lag_records",
                "Records durable on this node and not yet acknowledged durable by the standby.",
            ),
            Gauge::KafkaPublishLagRecords => (
                "payu_kafka_publish_lag_records",
                "Committed journal records whose events are not yet published to Kafka.",
            ),
        }
    }
}

/// A histogram over fixed bucket bounds: one counter per bucket plus one above the last bound.
#[derive(Debug)]
struct Histogram<const N: usize> {
    bounds: &'static [u64; N],
    buckets: [AtomicU64; N],
    above: AtomicU64,
    sum: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    fn new(bounds: &'static [u64; N]) -> Histogram<N> {
        assert!(bounds.windows(2).all(|pair| pair[0] < pair[1]));
        Histogram {
            bounds,
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            above: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    fn observe(&self, value: u64) {
        // `le` is inclusive: a value equal to a bound belongs to that bound's bucket.
        let index = self.bounds.partition_point(|&bound| bound < value);
        match self.buckets.get(index) {
            Some(bucket) => bucket.fetch_add(1, Ordering::Relaxed),
            None => self.above.fetch_add(1, Ordering::Relaxed),
        };
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        let below: u64 = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum();
        below + self.above.load(Ordering::Relaxed)
    }

    /// Writes `_bucket`, `_sum` and `_count` samples. `labels` is `""` or `key="value",`
    /// pairs each followed by a comma; `format` renders a bound or the sum in the metric's unit.
    fn render(&self, out: &mut String, name: &str, labels: &str, format: fn(u64) -> String) {
        let mut cumulative = 0u64;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = format(*bound);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.above.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {cumulative}");
        let sum = format(self.sum.load(Ordering::Relaxed));
        let braces = braces(labels);
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// `{a="b"}` from `a="b",` pairs, or nothing for no labels.
fn braces(labels: &str) -> String {
    match labels.strip_suffix(',') {
        Some(pairs) => format!("{{{pairs}}}"),
        None => String::new(),
    }
}

/// Nanoseconds as exact decimal seconds: 50 000 → "0.00005", 2 500 000 000 → "2.5".
fn seconds(nanos: u64) -> String {
    let whole = nanos / SECONDS;
    let fraction = nanos % SECONDS;
    if fraction == 0 {
        return whole.to_string();
    }
    let digits = format!("{fraction:09}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

fn plain(value: u64) -> String {
    value.to_string()
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// A label value escaped for the text format: backslash, double quote and newline.
fn escape(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// A bounded, append-only table of names. Lookups scan it without locking; adding a name
/// takes a mutex, which happens at most once per name. Slot 0 is always `"other"`.
#[derive(Debug)]
struct Names<const N: usize> {
    names: [OnceLock<Box<str>>; N],
    len: AtomicUsize,
    /// Closed: unknown names count as "other" and are never added.
    closed: bool,
    adding: Mutex<()>,
}

impl<const N: usize> Names<N> {
    fn new(initial: &[&str], closed: bool) -> Names<N> {
        let names = Names {
            names: std::array::from_fn(|_| OnceLock::new()),
            len: AtomicUsize::new(0),
            closed: false,
            adding: Mutex::new(()),
        };
        names.index(OTHER);
        for name in initial {
            names.index(name);
        }
        Names { closed, ..names }
    }

    fn find(&self, name: &str, len: usize) -> Option<usize> {
        self.names[..len]
            .iter()
            .position(|slot| slot.get().is_some_and(|known| **known == *name))
    }

    /// The slot of `name`, adding it while the table is open and has room; else `"other"`'s.
    fn index(&self, name: &str) -> usize {
        if let Some(index) = self.find(name, self.len.load(Ordering::Acquire)) {
            return index;
        }
        if self.closed {
            return 0;
        }
        let _adding = self.adding.lock().unwrap_or_else(|p| p.into_inner());
        let len = self.len.load(Ordering::Acquire);
        if let Some(index) = self.find(name, len) {
            return index; // added by another thread meanwhile
        }
        if len == N {
            return 0;
        }
        // Only this thread (holding `adding`) sets slot `len`, and only once.
        let _ = self.names[len].set(name.into());
        self.len.store(len + 1, Ordering::Release);
        len
    }

    /// The names added so far, with their slots.
    fn iter(&self) -> impl Iterator<Item = (usize, &str)> {
        let len = self.len.load(Ordering::Acquire);
        self.names[..len]
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| slot.get().map(|name| (index, &**name)))
    }
}

/// The series of one route.
#[derive(Debug)]
struct RouteSeries {
    /// Indexed by method, then status slot (`status_slot`).
    requests: [[AtomicU64; STATUS_SLOTS]; METHODS.len()],
    duration: Histogram<{ LATENCY_BOUNDS_NS.len() }>,
    client_errors: AtomicU64,
    server_errors: AtomicU64,
}

impl RouteSeries {
    fn new() -> RouteSeries {
        RouteSeries {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            duration: Histogram::new(&LATENCY_BOUNDS_NS),
            client_errors: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
        }
    }
}

fn method_slot(method: &str) -> usize {
    METHODS[..METHODS.len() - 1]
        .iter()
        .position(|&known| known == method)
        .unwrap_or(METHODS.len() - 1)
}

fn status_slot(status: u16) -> usize {
    if let Some(index) = STATUSES_EXACT.iter().position(|&s| s == status) {
        return index;
    }
    let class = match status {
        100..=599 => usize::from(status / 100) - 1,
        _ => STATUS_CLASSES.len() - 1,
    };
    STATUSES_EXACT.len() + class
}

fn status_label(slot: usize) -> String {
    match STATUSES_EXACT.get(slot) {
        Some(status) => status.to_string(),
        None => STATUS_CLASSES[slot - STATUSES_EXACT.len()].to_string(),
    }
}

/// The node's metrics. `Send + Sync`; share one as `Arc<Metrics>`. Every update is a few
/// relaxed atomic adds (plus, for a route or code seen for the first time, one mutex).
#[derive(Debug)]
pub struct Metrics {
    routes: Names<ROUTES_MAX>,
    route_series: Box<[RouteSeries]>,
    codes: Names<CODES_MAX>,
    rejections: [AtomicU64; CODES_MAX],
    commands_committed: AtomicU64,
    transfers_committed: AtomicU64,
    batch_size: Histogram<{ BATCH_BOUNDS.len() }>,
    flush_latency: Histogram<{ LATENCY_BOUNDS_NS.len() }>,
    commit_latency: Histogram<{ LATENCY_BOUNDS_NS.len() }>,
    ring_occupancy: AtomicU64,
    ring_capacity: AtomicU64,
    ring_full: AtomicU64,
    commit_lingers: AtomicU64,
    slow_flushes: AtomicU64,
    gauges: [AtomicU64; Gauge::ALL.len()],
    gauges_set: [AtomicBool; Gauge::ALL.len()],
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// Routes are interned as first seen, up to `ROUTES_MAX`.
    pub fn new() -> Metrics {
        Metrics::build(Names::new(&[], false))
    }

    /// A closed set of route templates: any other route counts as `"other"`. Panics if there
    /// are more than `ROUTES_MAX - 1` (a programming error: the set is fixed at start-up).
    pub fn with_routes(routes: &[&'static str]) -> Metrics {
        assert!(routes.len() < ROUTES_MAX, "at most {ROUTES_MAX} routes");
        Metrics::build(Names::new(routes, true))
    }

    fn build(routes: Names<ROUTES_MAX>) -> Metrics {
        // The two limit periods share LIMIT_EXCEEDED: `Names` keeps one slot per name.
        let codes: Vec<&str> = payu_engine::RejectCode::ALL
            .iter()
            .map(|c| c.code())
            .collect();
        Metrics {
            routes,
            route_series: (0..ROUTES_MAX).map(|_| RouteSeries::new()).collect(),
            codes: Names::new(&codes, false),
            rejections: std::array::from_fn(|_| AtomicU64::new(0)),
            commands_committed: AtomicU64::new(0),
            transfers_committed: AtomicU64::new(0),
            batch_size: Histogram::new(&BATCH_BOUNDS),
            flush_latency: Histogram::new(&LATENCY_BOUNDS_NS),
            commit_latency: Histogram::new(&LATENCY_BOUNDS_NS),
            ring_occupancy: AtomicU64::new(0),
            ring_capacity: AtomicU64::new(0),
            ring_full: AtomicU64::new(0),
            commit_lingers: AtomicU64::new(0),
            slow_flushes: AtomicU64::new(0),
            gauges: std::array::from_fn(|_| AtomicU64::new(0)),
            gauges_set: std::array::from_fn(|_| AtomicBool::new(false)),
        }
    }

    /// One HTTP request finished. `route` is the matched route template (e.g.
    /// `/v1/transfers`), or `"other"` when no route matched.
    pub fn http_request(&self, method: &str, route: &str, status: u16, latency: Duration) {
        let series = &self.route_series[self.routes.index(route)];
        series.requests[method_slot(method)][status_slot(status)].fetch_add(1, Ordering::Relaxed);
        series.duration.observe(nanos(latency));
        match status {
            400..=499 => series.client_errors.fetch_add(1, Ordering::Relaxed),
            500.. => series.server_errors.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
    }

    /// One durable batch: how many commands, and how many transfers among them (a batch
    /// command counts each of its transfers).
    pub fn committed(&self, commands: u64, transfers: u64) {
        self.commands_committed
            .fetch_add(commands, Ordering::Relaxed);
        self.transfers_committed
            .fetch_add(transfers, Ordering::Relaxed);
    }

    /// Commands the engine took in one batch.
    pub fn batch(&self, size: usize) {
        self.batch_size
            .observe(u64::try_from(size).unwrap_or(u64::MAX));
    }

    /// One journal group commit (flush) took `latency`.
    pub fn flush(&self, latency: Duration) {
        self.flush_latency.observe(nanos(latency));
    }

    /// From publishing a command into the ring to its durable reply.
    pub fn commit_latency(&self, latency: Duration) {
        self.commit_latency.observe(nanos(latency));
    }

    pub fn ring(&self, occupancy: u64, capacity: u64) {
        self.ring_occupancy.store(occupancy, Ordering::Relaxed);
        self.ring_capacity.store(capacity, Ordering::Relaxed);
    }

    /// A request turned away (503) because the ring was full.
    pub fn ring_full(&self) {
        self.ring_full.fetch_add(1, Ordering::Relaxed);
    }

    /// A group commit took at least the pipeline's slow-flush threshold (it is also logged).
    pub fn slow_flush(&self) {
        self.slow_flushes.fetch_add(1, Ordering::Relaxed);
    }

    /// A group commit waited for more commands (`PipelineConfig::commit_linger`).
    pub fn commit_lingered(&self) {
        self.commit_lingers.fetch_add(1, Ordering::Relaxed);
    }

    /// A rejection answered, by its stable code (engine `RejectCode::code()` or gateway code).
    pub fn rejected(&self, code: &'static str) {
        self.rejections[self.codes.index(code)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_gauge(&self, gauge: Gauge, value: u64) {
        let index = gauge as usize;
        self.gauges[index].store(value, Ordering::Relaxed);
        self.gauges_set[index].store(true, Ordering::Relaxed);
    }

    /// The text exposition format 0.0.4 (`Content-Type: text/plain; version=0.0.4`).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 << 10);
        self.render_http(&mut out);
        self.render_pipeline(&mut out);
        self.render_gauges(&mut out);
        header(
            &mut out,
            "payu_build_info",
            "gauge",
            "Always 1; the version label says which build is running.",
        );
        let version = escape(env!("CARGO_PKG_VERSION"));
        let _ = writeln!(out, "payu_build_info{{version=\"{version}\"}} 1");
        if let Some(ticks) = process_cpu_ticks() {
            header(
                &mut out,
                "process_cpu_seconds_total",
                "counter",
                "User and system CPU time the node process has used, in seconds.",
            );
            let (whole, hundredths) = (ticks / CPU_TICKS_PER_SECOND, ticks % CPU_TICKS_PER_SECOND);
            let _ = writeln!(out, "process_cpu_seconds_total {whole}.{hundredths:02}");
        }
        out
    }

    /// Routes with at least one request, with their escaped label values.
    fn active_routes(&self) -> Vec<(&RouteSeries, String)> {
        self.routes
            .iter()
            .map(|(index, route)| (&self.route_series[index], escape(route)))
            .filter(|(series, _)| series.duration.count() > 0)
            .collect()
    }

    fn render_http(&self, out: &mut String) {
        let routes = self.active_routes();
        header(
            out,
            "payu_http_requests_total",
            "counter",
            "HTTP requests finished, by method, route template and status. Statuses outside \
             a fixed set are counted by class (1xx..5xx, other).",
        );
        for (series, route) in &routes {
            for (method, by_status) in METHODS.iter().zip(&series.requests) {
                for (slot, count) in by_status.iter().enumerate() {
                    let count = count.load(Ordering::Relaxed);
                    if count > 0 {
                        let status = status_label(slot);
                        let _ = writeln!(
                            out,
                            "payu_http_requests_total{{method=\"{method}\",route=\"{route}\",\
                             status=\"{status}\"}} {count}"
                        );
                    }
                }
            }
        }
        header(
            out,
            "payu_http_request_duration_seconds",
            "histogram",
            "HTTP request latency by route template, from request to response.",
        );
        for (series, route) in &routes {
            let labels = format!("route=\"{route}\",");
            let name = "payu_http_request_duration_seconds";
            series.duration.render(out, name, &labels, seconds);
        }
        let errors = [
            (
                "payu_http_errors_total",
                "HTTP responses with status >= 500, by route template.",
                true,
            ),
            (
                "payu_http_client_errors_total",
                "HTTP responses with a 4xx status, by route template.",
                false,
            ),
        ];
        for (name, help, server) in errors {
            header(out, name, "counter", help);
            for (series, route) in &routes {
                let counter = match server {
                    true => &series.server_errors,
                    false => &series.client_errors,
                };
                let count = counter.load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}{{route=\"{route}\"}} {count}");
            }
        }
    }

    fn render_pipeline(&self, out: &mut String) {
        counter(
            out,
            "payu_commands_committed_total",
            "Engine commands made durable. TPS: rate(payu_commands_committed_total[1m]).",
            &self.commands_committed,
        );
        counter(
            out,
            "payu_transfers_committed_total",
            "Transfers made durable, each item of a batch counted. Transfers per second: \
             rate(payu_transfers_committed_total[1m]).",
            &self.transfers_committed,
        );
        let histograms = [
            (
                "payu_journal_flush_seconds",
                "Journal group commit (fdatasync) latency.",
                &self.flush_latency,
            ),
            (
                "payu_commit_seconds",
                "From publishing a command into the ring to its durable reply.",
                &self.commit_latency,
            ),
        ];
        for (name, help, histogram) in histograms {
            header(out, name, "histogram", help);
            histogram.render(out, name, "", seconds);
        }
        let name = "payu_engine_batch_size";
        header(
            out,
            name,
            "histogram",
            "Commands the engine applied per batch.",
        );
        self.batch_size.render(out, name, "", plain);
        gauge(
            out,
            "payu_ring_occupancy",
            "Commands waiting in the ring.",
            self.ring_occupancy.load(Ordering::Relaxed),
        );
        gauge(
            out,
            "payu_ring_capacity",
            "Slots in the ring.",
            self.ring_capacity.load(Ordering::Relaxed),
        );
        counter(
            out,
            "payu_ring_full_total",
            "Requests answered 503 because the ring was full.",
            &self.ring_full,
        );
        counter(
            out,
            "payu_group_commit_lingers_total",
            "Group commits that waited up to the commit linger for more commands.",
            &self.commit_lingers,
        );
        counter(
            out,
            "payu_journal_slow_flushes_total",
            "Group commits that took 50 ms or more (each is also logged as a warning).",
            &self.slow_flushes,
        );
        header(
            out,
            "payu_rejections_total",
            "counter",
            "Commands or requests rejected, by stable code.",
        );
        for (index, code) in self.codes.iter() {
            let count = self.rejections[index].load(Ordering::Relaxed);
            let code = escape(code);
            let _ = writeln!(out, "payu_rejections_total{{code=\"{code}\"}} {count}");
        }
    }

    fn render_gauges(&self, out: &mut String) {
        for gauge_kind in Gauge::ALL {
            let index = gauge_kind as usize;
            if self.gauges_set[index].load(Ordering::Relaxed) {
                let (name, help) = gauge_kind.name_and_help();
                gauge(out, name, help, self.gauges[index].load(Ordering::Relaxed));
            }
        }
    }
}

/// Linux reports a process's CPU time to user space in USER_HZ ticks, 100 a second.
const CPU_TICKS_PER_SECOND: u64 = 100;

/// User + system CPU ticks of this process so far, from /proc/self/stat (None elsewhere).
fn process_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields 14 and 15: utime and stime.
    let mut fields = stat_fields(&stat)?.skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// The fields of a /proc/<pid>/stat or /proc/<pid>/task/<tid>/stat text from field 3 (the
/// state) on. The command name, field 2, may hold spaces and parentheses, so they are the
/// fields after its last ')'.
pub(crate) fn stat_fields(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    Some(stat.rsplit_once(')')?.1.split_whitespace())
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: &AtomicU64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    /// One sample line: metric name, labels in order, value.
    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    }

    /// Parses the text format strictly enough to catch our mistakes: every line is a `# HELP`,
    /// a `# TYPE`, or `name{labels} value` whose family has a `# TYPE` before it.
    fn parse(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
        let mut types = BTreeMap::new();
        let mut samples = Vec::new();
        assert!(text.ends_with('\n'), "the exposition ends with a newline");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert!(
                    types.insert(name.to_string(), kind.to_string()).is_none(),
                    "one TYPE per family: {line}"
                );
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            assert!(!line.starts_with('#'), "unknown comment: {line}");
            let sample = parse_sample(line);
            let family = family_of(&sample.name, &types);
            assert!(
                types.contains_key(&family),
                "sample without a TYPE before it: {line}"
            );
            samples.push(sample);
        }
        (types, samples)
    }

    fn parse_sample(line: &str) -> Sample {
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                (name, parse_labels(body))
            }
            None => (series, Vec::new()),
        };
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line}"
        );
        Sample {
            name: name.to_string(),
            labels,
            value,
        }
    }

    fn parse_labels(body: &str) -> Vec<(String, String)> {
        let mut labels = Vec::new();
        let mut chars = body.chars().peekable();
        while chars.peek().is_some() {
            let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
            assert!(
                key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "bad label name {key:?}"
            );
            assert_eq!(chars.next(), Some('"'), "label value opens with a quote");
            let mut value = String::new();
            loop {
                match chars.next().expect("unterminated label value") {
                    '"' => break,
                    '\\' => match chars.next() {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => panic!("bad escape {other:?}"),
                    },
                    c => value.push(c),
                }
            }
            labels.push((key, value));
            match chars.next() {
                None => break,
                Some(',') => {}
                Some(other) => panic!("expected a comma, found {other:?}"),
            }
        }
        labels
    }

    fn family_of(name: &str, types: &BTreeMap<String, String>) -> String {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                if types.get(base).is_some_and(|kind| kind == "histogram") {
                    return base.to_string();
                }
            }
        }
        name.to_string()
    }

    fn label<'a>(sample: &'a Sample, key: &str) -> Option<&'a str> {
        sample
            .labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Checks every histogram: buckets ascending by `le`, counts cumulative, `+Inf` equal to
    /// `_count`, and a `_sum`. Returns (family, labels without le) -> count.
    fn check_histograms(
        types: &BTreeMap<String, String>,
        samples: &[Sample],
    ) -> BTreeMap<(String, String), u64> {
        let mut counts = BTreeMap::new();
        for (family, _) in types.iter().filter(|(_, kind)| *kind == "histogram") {
            let key_of = |s: &Sample| {
                let rest: Vec<_> = s.labels.iter().filter(|(k, _)| k != "le").collect();
                format!("{rest:?}")
            };
            let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
            let bucket_name = format!("{family}_bucket");
            for s in samples.iter().filter(|s| s.name == bucket_name) {
                let le = label(s, "le").expect("le label");
                let le = match le {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().expect("numeric le"),
                };
                buckets.entry(key_of(s)).or_default().push((le, s.value));
            }
            for (key, series) in buckets {
                assert!(
                    series
                        .windows(2)
                        .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                    "{family} {key}: buckets ascend and are cumulative: {series:?}"
                );
                let (last_le, inf) = *series.last().expect("buckets");
                assert_eq!(last_le, f64::INFINITY, "{family} {key}: ends with +Inf");
                let find = |suffix: &str| {
                    let name = format!("{family}{suffix}");
                    samples
                        .iter()
                        .find(|s| s.name == name && key_of(s) == key)
                        .map(|s| s.value)
                        .unwrap_or_else(|| panic!("{name} {key} missing"))
                };
                assert_eq!(find("_count"), inf, "{family} {key}: +Inf == _count");
                assert!(find("_sum") >= 0.0);
                counts.insert((family.clone(), key), inf as u64);
            }
        }
        counts
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels.iter().all(|(k, v)| label(s, k) == Some(*v))
            })
            .map(|s| s.value)
    }

    #[test]
    fn the_process_cpu_time_is_exported_in_seconds() {
        let before = process_cpu_ticks().expect("/proc/self/stat on Linux");
        let text = Metrics::new().render();
        let after = process_cpu_ticks().expect("/proc/self/stat on Linux");
        let (types, samples) = parse(&text);
        assert_eq!(types["process_cpu_seconds_total"], "counter");
        let line = text
            .lines()
            .find(|line| line.starts_with("process_cpu_seconds_total "))
            .expect("the sample");
        let (whole, hundredths) = line
            .trim_start_matches("process_cpu_seconds_total ")
            .split_once('.')
            .expect("two decimals");
        assert_eq!(hundredths.len(), 2, "{line}");
        let ticks = whole.parse::<u64>().expect("seconds") * CPU_TICKS_PER_SECOND
            + hundredths.parse::<u64>().expect("hundredths");
        assert!(
            (before..=after).contains(&ticks),
            "{before} <= {ticks} <= {after}"
        );
        assert!(value(&samples, "process_cpu_seconds_total", &[]).is_some());
    }

    #[test]
    fn renders_parseable_exposition_with_exact_counts() {
        let metrics = Metrics::with_routes(&["/v1/transfers", "/v1/accounts/{id}"]);
        let ms = Duration::from_millis;
        metrics.http_request("POST", "/v1/transfers", 201, ms(2));
        metrics.http_request("POST", "/v1/transfers", 201, Duration::from_micros(50));
        metrics.http_request("POST", "/v1/transfers", 422, ms(1));
        metrics.http_request("POST", "/v1/transfers", 503, ms(20_000));
        metrics.http_request("GET", "/v1/accounts/{id}", 200, ms(1));
        metrics.http_request("GET", "/v1/accounts/{id}", 418, ms(1));
        metrics.http_request("DELETE", "/v1/accounts/{id}", 302, ms(1));
        metrics.http_request("GET", "/not/registered", 404, ms(1));
        metrics.committed(3, 10);
        metrics.committed(2, 2);
        metrics.batch(1);
        metrics.batch(5);
        metrics.batch(100_000);
        metrics.flush(Duration::from_micros(800));
        metrics.commit_latency(ms(3));
        metrics.ring(17, 65_536);
        metrics.ring_full();
        metrics.rejected("INSUFFICIENT_FUNDS");
        metrics.rejected("INSUFFICIENT_FUNDS");
        metrics.rejected("RING_FULL");
        metrics.set_gauge(Gauge::JournalDurableSeq, 1234);
        metrics.set_gauge(Gauge::Accounts, 7);

        let text = metrics.render();
        let (types, samples) = parse(&text);
        let histograms = check_histograms(&types, &samples);

        let requests = |method, route, status| {
            let labels = [("method", method), ("route", route), ("status", status)];
            value(&samples, "payu_http_requests_total", &labels)
        };
        assert_eq!(requests("POST", "/v1/transfers", "201"), Some(2.0));
        assert_eq!(requests("POST", "/v1/transfers", "422"), Some(1.0));
        assert_eq!(requests("POST", "/v1/transfers", "503"), Some(1.0));
        assert_eq!(requests("GET", "/v1/accounts/{id}", "200"), Some(1.0));
        assert_eq!(requests("GET", "/v1/accounts/{id}", "4xx"), Some(1.0));
        assert_eq!(requests("other", "/v1/accounts/{id}", "3xx"), Some(1.0));
        assert_eq!(requests("GET", "other", "404"), Some(1.0));
        assert_eq!(requests("GET", "/not/registered", "404"), None);
        let total: f64 = samples
            .iter()
            .filter(|s| s.name == "payu_http_requests_total")
            .map(|s| s.value)
            .sum();
        assert_eq!(total, 8.0);

        let route = |r: &str| format!("{:?}", vec![&("route".to_string(), r.to_string())]);
        let duration = "payu_http_request_duration_seconds".to_string();
        assert_eq!(histograms[&(duration.clone(), route("/v1/transfers"))], 4);
        assert_eq!(histograms[&(duration.clone(), route("other"))], 1);
        let transfers = [("route", "/v1/transfers")];
        let bucket = |le| {
            let labels = [("route", "/v1/transfers"), ("le", le)];
            value(
                &samples,
                "payu_http_request_duration_seconds_bucket",
                &labels,
            )
        };
        assert_eq!(
            bucket("0.00005"),
            Some(1.0),
            "50 µs is in the le=50µs bucket"
        );
        assert_eq!(bucket("0.001"), Some(2.0));
        assert_eq!(bucket("0.0025"), Some(3.0));
        assert_eq!(bucket("10"), Some(3.0));
        assert_eq!(bucket("+Inf"), Some(4.0));
        let sum = value(
            &samples,
            "payu_http_request_duration_seconds_sum",
            &transfers,
        );
        assert_eq!(sum, Some(20.00305));
        assert!(text.contains(
            "payu_http_request_duration_seconds_sum{route=\"/v1/transfers\"} 20.00305\n"
        ));
        assert_eq!(
            value(&samples, "payu_http_errors_total", &transfers),
            Some(1.0)
        );
        assert_eq!(
            value(&samples, "payu_http_client_errors_total", &transfers),
            Some(1.0)
        );
        let accounts = [("route", "/v1/accounts/{id}")];
        assert_eq!(
            value(&samples, "payu_http_errors_total", &accounts),
            Some(0.0)
        );
        assert_eq!(
            value(&samples, "payu_http_client_errors_total", &accounts),
            Some(1.0)
        );

        assert_eq!(
            value(&samples, "payu_commands_committed_total", &[]),
            Some(5.0)
        );
        assert_eq!(
            value(&samples, "payu_transfers_committed_total", &[]),
            Some(12.0)
        );
        let batch = ("payu_engine_batch_size".to_string(), "[]".to_string());
        assert_eq!(histograms[&batch], 3);
        assert_eq!(
            value(&samples, "payu_engine_batch_size_sum", &[]),
            Some(100_006.0)
        );
        assert_eq!(
            value(&samples, "payu_engine_batch_size_bucket", &[("le", "8")]),
            Some(2.0)
        );
        assert_eq!(
            histograms[&("payu_journal_flush_seconds".into(), "[]".into())],
            1
        );
        assert_eq!(histograms[&("payu_commit_seconds".into(), "[]".into())], 1);
        assert_eq!(
            value(&samples, "payu_journal_flush_seconds_sum", &[]),
            Some(0.0008)
        );
        assert_eq!(value(&samples, "payu_ring_occupancy", &[]), Some(17.0));
        assert_eq!(value(&samples, "payu_ring_capacity", &[]), Some(65_536.0));
        assert_eq!(value(&samples, "payu_ring_full_total", &[]), Some(1.0));
        let rejections = |code| value(&samples, "payu_rejections_total", &[("code", code)]);
        assert_eq!(rejections("INSUFFICIENT_FUNDS"), Some(2.0));
        assert_eq!(rejections("RING_FULL"), Some(1.0));
        let limit_series = samples
            .iter()
            .filter(|s| label(s, "code") == Some("LIMIT_EXCEEDED"))
            .count();
        assert_eq!(limit_series, 1, "both limit periods share one code");
        assert_eq!(
            rejections("ACCOUNT_FROZEN"),
            Some(0.0),
            "engine codes pre-registered"
        );
        assert_eq!(
            value(&samples, "payu_journal_durable_seq", &[]),
            Some(1234.0)
        );
        assert_eq!(value(&samples, "payu_accounts", &[]), Some(7.0));
        assert_eq!(value(&samples, "payu_snapshot_seq", &[]), None, "never set");
        let version = [("version", env!("CARGO_PKG_VERSION"))];
        assert_eq!(value(&samples, "payu_build_info", &version), Some(1.0));
        assert!(types["payu_commands_committed_total"] == "counter");
        assert!(text.contains("rate(payu_transfers_committed_total[1m])"));
    }

    #[test]
    fn label_sets_stay_bounded() {
        let metrics = Metrics::new();
        for i in 0..ROUTES_MAX * 3 {
            metrics.http_request("GET", &format!("/r/{i}"), 200, Duration::ZERO);
        }
        for status in [0u16, 99, 150, 299, 301, 418, 499, 502, 599, 600, 999] {
            metrics.http_request("PUT", "/r/0", status, Duration::ZERO);
        }
        let text = metrics.render();
        let (types, samples) = parse(&text);
        check_histograms(&types, &samples);
        let routes: std::collections::BTreeSet<&str> = samples
            .iter()
            .filter(|s| s.name == "payu_http_requests_total")
            .filter_map(|s| label(s, "route"))
            .collect();
        assert_eq!(routes.len(), ROUTES_MAX);
        assert!(routes.contains("other"));
        let other = value(
            &samples,
            "payu_http_requests_total",
            &[("method", "GET"), ("route", "other"), ("status", "200")],
        );
        assert_eq!(other, Some((ROUTES_MAX * 3 - (ROUTES_MAX - 1)) as f64));
        let statuses = |route| {
            samples
                .iter()
                .filter(|s| s.name == "payu_http_requests_total" && label(s, "route") == route)
                .map(|s| (label(s, "status").map(String::from), s.value))
                .collect::<Vec<_>>()
        };
        let seen: Vec<_> = statuses(Some("/r/0"));
        let count = |status: &str| {
            seen.iter()
                .filter(|(s, _)| s.as_deref() == Some(status))
                .map(|(_, v)| *v)
                .sum::<f64>()
        };
        assert_eq!(count("other"), 4.0, "0, 99, 600, 999");
        assert_eq!(count("1xx"), 1.0);
        assert_eq!(count("2xx"), 1.0);
        assert_eq!(count("200"), 1.0);
        assert_eq!(count("3xx"), 1.0);
        assert_eq!(count("4xx"), 2.0);
        assert_eq!(count("5xx"), 2.0);

        for i in 0..CODES_MAX * 2 {
            let code: &'static str = Box::leak(format!("GATEWAY_{i}").into_boxed_str());
            metrics.rejected(code);
        }
        let (_, samples) = parse(&metrics.render());
        let codes = samples
            .iter()
            .filter(|s| s.name == "payu_rejections_total")
            .count();
        assert_eq!(codes, CODES_MAX);
        let total: f64 = samples
            .iter()
            .filter(|s| s.name == "payu_rejections_total")
            .map(|s| s.value)
            .sum();
        assert_eq!(total, (CODES_MAX * 2) as f64);
    }

    #[test]
    fn label_values_are_escaped() {
        let metrics = Metrics::new();
        metrics.http_request("GET", "/a\"b\\c\nd", 200, Duration::ZERO);
        let (_, samples) = parse(&metrics.render());
        let labels = [
            ("method", "GET"),
            ("route", "/a\"b\\c\nd"),
            ("status", "200"),
        ];
        assert_eq!(
            value(&samples, "payu_http_requests_total", &labels),
            Some(1.0)
        );
    }

    #[test]
    fn concurrent_updates_from_two_threads_sum_exactly() {
        const PER_THREAD: u64 = 20_000;
        let metrics = Arc::new(Metrics::new());
        let threads: Vec<_> = (0..2u64)
            .map(|t| {
                let metrics = Arc::clone(&metrics);
                std::thread::spawn(move || {
                    for i in 0..PER_THREAD {
                        // Both threads intern the same new routes at the same time.
                        let route = format!("/v1/r{}", i % 8);
                        let latency = Duration::from_micros(i % 5_000);
                        metrics.http_request("POST", &route, 201, latency);
                        metrics.committed(1, 2);
                        metrics.batch((i % 300) as usize + 1);
                        metrics.flush(latency);
                        metrics.commit_latency(latency);
                        metrics.rejected(if t == 0 {
                            "INSUFFICIENT_FUNDS"
                        } else {
                            "NEW_CODE"
                        });
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("thread");
        }
        let (types, samples) = parse(&metrics.render());
        let histograms = check_histograms(&types, &samples);
        let requests: Vec<_> = samples
            .iter()
            .filter(|s| s.name == "payu_http_requests_total")
            .collect();
        assert_eq!(requests.len(), 8, "each route interned once: {requests:?}");
        assert!(
            requests
                .iter()
                .all(|s| s.value == (PER_THREAD * 2 / 8) as f64)
        );
        let total = 2 * PER_THREAD;
        assert_eq!(
            value(&samples, "payu_commands_committed_total", &[]),
            Some(total as f64)
        );
        assert_eq!(
            value(&samples, "payu_transfers_committed_total", &[]),
            Some((2 * total) as f64)
        );
        for family in [
            "payu_engine_batch_size",
            "payu_journal_flush_seconds",
            "payu_commit_seconds",
        ] {
            assert_eq!(histograms[&(family.to_string(), "[]".to_string())], total);
        }
        let rejected = |code| value(&samples, "payu_rejections_total", &[("code", code)]);
        assert_eq!(rejected("INSUFFICIENT_FUNDS"), Some(PER_THREAD as f64));
        assert_eq!(rejected("NEW_CODE"), Some(PER_THREAD as f64));
        let expected_sum: u64 = (0..PER_THREAD).map(|i| (i % 300) + 1).sum::<u64>() * 2;
        assert_eq!(
            value(&samples, "payu_engine_batch_size_sum", &[]),
            Some(expected_sum as f64)
        );
    }

    #[test]
    fn seconds_are_exact_decimals() {
        assert_eq!(seconds(50_000), "0.00005");
        assert_eq!(seconds(2_500_000_000), "2.5");
        assert_eq!(seconds(10 * SECONDS), "10");
        assert_eq!(seconds(0), "0");
        assert_eq!(seconds(1), "0.000000001");
    }
}
