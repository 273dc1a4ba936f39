//! `payu-loadtest`: an honest load generator and auditor for a PayU Core node (DESIGN.md §7).
//!
//! A run has four phases, each a method of [`Session`] so tests can step in between them:
//! 1. **setup** (setup.rs): a settlement account and N funded customer accounts, made through
//!    the API with Idempotency-Keys;
//! 2. **load** (driver.rs, ops.rs): open-loop operations at a fixed rate, a ramp of rates, or
//!    batches, with latency measured from each operation's intended send time (measure.rs);
//! 3. **resolution**: every operation whose outcome was unknown is resent with the same key
//!    and body until the node says what happened;
//! 4. **audit** (audit.rs): the ledger read back through the API must agree with what the node
//!    acknowledged to this client.
//!
//! [`run`] chains them and writes the human summary, the JSON report (report.rs) and the SVG
//! plot (plot.rs).

pub mod api;
pub mod audit;
pub mod book;
pub mod driver;
pub use payu_gateway::hpack;
pub mod http1;
pub mod http2;
pub mod measure;
pub mod ops;
pub mod options;
pub mod plot;
pub mod report;
pub mod setup;
pub mod token;
pub mod workload;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::api::{Answer, Api, ApiOptions};
use crate::audit::{AuditOptions, AuditReport};
use crate::book::Book;
use crate::driver::{PhaseResult, Plan, run_phase};
use crate::ops::Executor;
pub use crate::options::Options;
use crate::setup::{Fleet, SetupOptions, create_fleet};
use crate::workload::{Workload, mix64};

/// The subject of minted tokens; idempotency keys are scoped to it by the node.
pub const TOKEN_SUBJECT: &str = "payu-loadtest";
/// Minted tokens outlive any run: setup, a day-long load and the audit.
const TOKEN_TTL: Duration = Duration::from_secs(48 * 3600);

/// Exit statuses (also in `--help`).
pub const EXIT_PASSED: u8 = 0;
pub const EXIT_AUDIT_FAILED: u8 = 1;
pub const EXIT_ERROR: u8 = 2;
pub const EXIT_OBJECTIVE_MISSED: u8 = 3;

/// One load phase and the objectives it missed (empty: it met them all).
#[derive(Clone, Debug)]
pub struct Step {
    pub phase: PhaseResult,
    pub missed: Vec<String>,
}

impl Step {
    pub fn passed(&self) -> bool {
        self.missed.is_empty()
    }
}

/// What the load phase did.
#[derive(Clone, Debug)]
pub struct Load {
    /// The `--warmup` phase, outside every objective.
    pub warmup: Option<Step>,
    pub steps: Vec<Step>,
    /// Ramp mode: the highest rate whose step met every objective.
    pub best_rate: Option<f64>,
    pub ramp: bool,
}

impl Load {
    /// Whether the run met its objectives: every step of a fixed run; at least one step of a
    /// ramp (whose point is to find where they stop being met).
    pub fn objectives_met(&self) -> bool {
        match self.ramp {
            true => self.best_rate.is_some(),
            false => self.steps.iter().all(Step::passed),
        }
    }
}

/// A run against one node.
pub struct Session {
    pub options: Options,
    pub api: Api,
    pub run_id: String,
    pub seed: u64,
    pub book: Arc<Mutex<Book>>,
    pub fleet: Option<Arc<Fleet>>,
    pub setup_seconds: f64,
    /// /proc/loadavg when the session began: other work on the machine skews every figure.
    pub load_average_at_start: Option<String>,
    runtime: tokio::runtime::Runtime,
    /// The load's lanes (driver.rs).
    lanes: Vec<tokio::runtime::Runtime>,
    next_index: u64,
    executor: Option<Arc<Executor>>,
}

/// The value of `process_cpu_seconds_total` in a Prometheus text exposition.
pub fn process_cpu_seconds_in(metrics: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("process_cpu_seconds_total "))
        .and_then(|value| value.trim().parse().ok())
        .filter(|seconds: &f64| seconds.is_finite() && *seconds >= 0.0)
}

impl Session {
    /// Checks the options, builds the client runtime and the HTTP client, and gets a token.
    pub fn new(options: Options) -> anyhow::Result<Session> {
        options.validate().map_err(anyhow::Error::msg)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .context("the clock is before 1970")?;
        let seed = options
            .seed
            .unwrap_or_else(|| mix64(now.as_nanos() as u64 ^ u64::from(std::process::id())));
        // Unique per run even when a seed is reused, so keys never replay an earlier run's.
        let run_id = format!(
            "lt{:x}",
            mix64(now.as_nanos() as u64 ^ seed.rotate_left(17) ^ u64::from(std::process::id()))
        );
        let token = match (&options.token, &options.data_dir) {
            (Some(token), _) => token.clone(),
            (None, Some(dir)) => token::mint(
                &token::read_dev_secret(dir)?,
                TOKEN_SUBJECT,
                token::LOADTEST_SCOPES,
                TOKEN_TTL,
            )?,
            (None, None) => anyhow::bail!("give --token or --data-dir"),
        };
        let cores = std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(2);
        let threads = options.client_threads.unwrap_or(cores);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("loadtest-client")
            .enable_all()
            .build()
            .context("starting the client runtime")?;
        let lanes = options.lanes.unwrap_or(match options.batch_size {
            Some(_) => cores,
            None => 1,
        });
        let lanes = driver::lanes(lanes).context("starting the load's lanes")?;
        let api = {
            // reqwest's connector needs the runtime's context while it is built.
            let _entered = runtime.enter();
            Api::new(ApiOptions {
                base: options.url.clone(),
                token,
                timeout: options.timeout,
                http2: options.http2,
                http2_connections: options.http2_connections,
            })?
        };
        Ok(Session {
            options,
            api,
            run_id,
            seed,
            book: Arc::new(Mutex::new(Book::default())),
            fleet: None,
            setup_seconds: 0.0,
            load_average_at_start: std::fs::read_to_string("/proc/loadavg")
                .ok()
                .map(|text| text.trim().to_owned()),
            runtime,
            lanes,
            next_index: 0,
            executor: None,
        })
    }

    /// Creates and funds the run's accounts.
    pub fn setup(&mut self) -> anyhow::Result<Arc<Fleet>> {
        let started = Instant::now();
        let options = SetupOptions {
            run_id: self.run_id.clone(),
            accounts: self.options.accounts,
            funding: self.options.funding,
            tier: self.options.tier,
            workers: self.options.audit_concurrency,
            progress: !self.options.quiet,
        };
        let fleet = Arc::new(self.runtime.block_on(create_fleet(
            &self.api,
            options,
            Arc::clone(&self.book),
        ))?);
        self.setup_seconds = started.elapsed().as_secs_f64();
        self.executor = Some(Arc::new(Executor {
            api: self.api.clone(),
            workload: Workload::new(&self.options, self.seed),
            fleet: Arc::clone(&fleet),
            run_id: self.run_id.clone(),
            book: Arc::clone(&self.book),
        }));
        self.fleet = Some(Arc::clone(&fleet));
        Ok(fleet)
    }

    /// Lanes the load runs on (driver.rs).
    pub fn lane_count(&self) -> usize {
        self.lanes.len()
    }

    fn executor(&self) -> anyhow::Result<Arc<Executor>> {
        self.executor
            .clone()
            .context("setup must run before the load")
    }

    /// One phase at `rate` for `duration`.
    pub fn phase(&mut self, rate: f64, duration: Duration, label: String) -> anyhow::Result<Step> {
        let executor = self.executor()?;
        let plan = Plan {
            rate,
            duration,
            concurrency: self.options.concurrency,
            grace: self.options.grace,
            first_index: self.next_index,
            label,
            progress: !self.options.quiet,
        };
        self.next_index += plan.ops();
        // Room for every acknowledgement the phase can book, made now rather than by doubling
        // in the middle of the timed phase (see `Book::reserve`).
        let acks = plan
            .ops()
            .saturating_mul(u64::from(self.options.transfers_per_op()));
        self.book
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .reserve(acks);
        let op = Arc::new(move |index: u64| {
            let executor = Arc::clone(&executor);
            async move { executor.execute(index).await }
        });
        let node_cpu_at_start = self.node_cpu_seconds();
        let mut phase = run_phase(&self.lanes, plan, op);
        phase.node_cpu_seconds = self
            .node_cpu_seconds()
            .zip(node_cpu_at_start)
            .map(|(end, start)| end - start);
        let missed = missed_objectives(&phase, &self.options);
        Ok(Step { phase, missed })
    }

    /// The node's `process_cpu_seconds_total`, scraped from its /metrics: on a shared machine,
    /// the node's share of the cores, next to the tool's own. None if it exports none.
    fn node_cpu_seconds(&self) -> Option<f64> {
        let Answer::Done { body, .. } = self.runtime.block_on(self.api.get("/metrics")) else {
            return None;
        };
        process_cpu_seconds_in(std::str::from_utf8(&body).ok()?)
    }

    /// The load the options ask for: one fixed-rate phase, or a ramp.
    pub fn load(&mut self) -> anyhow::Result<Load> {
        let first_rate = match self.options.ramp {
            true => self.options.ramp_from,
            false => self.options.rate,
        };
        let warmup = match self.options.warmup.is_zero() {
            true => None,
            false => Some(self.phase(first_rate, self.options.warmup, " warmup |".into())?),
        };
        let mut load = match self.options.ramp {
            false => {
                let step = self.phase(self.options.rate, self.options.duration, String::new())?;
                Load {
                    warmup: None,
                    steps: vec![step],
                    best_rate: None,
                    ramp: false,
                }
            }
            true => self.ramp()?,
        };
        load.warmup = warmup;
        Ok(load)
    }

    fn ramp(&mut self) -> anyhow::Result<Load> {
        let (from, step, duration) = (
            self.options.ramp_from,
            self.options.ramp_step,
            self.options.step_duration,
        );
        let mut steps = Vec::new();
        let mut passed: Option<f64> = None;
        let mut failed: Option<f64> = None;
        for n in 0..self.options.ramp_steps_max {
            let rate = from + step * f64::from(n);
            let result = self.ramp_step(&mut steps, rate, duration)?;
            match result {
                true => passed = Some(rate),
                false => {
                    failed = Some(rate);
                    break;
                }
            }
        }
        // Bisect between the last passing and the first failing rate.
        if let Some(mut high) = failed {
            let mut low = passed.unwrap_or(0.0);
            for _ in 0..self.options.refine {
                let rate = ((low + high) / 2.0).round();
                if rate <= low || rate >= high {
                    break;
                }
                match self.ramp_step(&mut steps, rate, duration)? {
                    true => {
                        low = rate;
                        passed = Some(rate);
                    }
                    false => high = rate,
                }
            }
        }
        Ok(Load {
            warmup: None,
            steps,
            best_rate: passed,
            ramp: true,
        })
    }

    fn ramp_step(
        &mut self,
        steps: &mut Vec<Step>,
        rate: f64,
        duration: Duration,
    ) -> anyhow::Result<bool> {
        let label = format!(" step {} @ {rate:.0}/s |", steps.len() + 1);
        let step = self.phase(rate, duration, label)?;
        let passed = step.passed();
        if !self.options.quiet {
            let verdict = match passed {
                true => "met the objectives".to_owned(),
                false => format!("missed: {}", step.missed.join("; ")),
            };
            eprintln!(
                "payu-loadtest: step {} at {rate:.0}/s {verdict}",
                steps.len() + 1
            );
        }
        steps.push(step);
        Ok(passed)
    }

    /// Resends every operation whose outcome is unknown; returns how many there were.
    pub fn resolve(&mut self) -> anyhow::Result<u64> {
        let executor = self.executor()?;
        let workers = self.options.audit_concurrency;
        Ok(self.runtime.block_on(executor.resolve(workers)))
    }

    /// Audits the ledger against the books (call [`Session::resolve`] first).
    pub fn audit(&mut self) -> anyhow::Result<AuditReport> {
        let fleet = self
            .fleet
            .clone()
            .context("setup must run before the audit")?;
        let book = self
            .book
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let options = AuditOptions {
            workers: self.options.audit_concurrency,
            gets_max: self.options.audit_gets_max,
            seed: self.seed,
        };
        Ok(self
            .runtime
            .block_on(audit::audit(&self.api, &fleet, book, options)))
    }
}

/// The objectives a phase missed, in words.
pub fn missed_objectives(phase: &PhaseResult, options: &Options) -> Vec<String> {
    let mut missed = Vec::new();
    let p99 = measure::quantile(&phase.recorder.corrected, 0.99);
    if let Some(slo) = options.slo_p99
        && p99 > slo
    {
        missed.push(format!(
            "p99 {} > {}",
            measure::human(p99),
            measure::human(slo)
        ));
    }
    if phase.achieved_ratio() < options.min_rate_ratio {
        missed.push(format!(
            "achieved {:.0}/s is {:.1}% of {:.0}/s (< {:.1}%)",
            phase.achieved_rate(),
            phase.achieved_ratio() * 100.0,
            phase.plan.rate,
            options.min_rate_ratio * 100.0
        ));
    }
    if phase.error_ratio() > options.max_error_ratio {
        missed.push(format!(
            "errors {:.3}% of operations (> {:.3}%)",
            phase.error_ratio() * 100.0,
            options.max_error_ratio * 100.0
        ));
    }
    missed
}

/// A whole run: setup, load, resolution, audit, outputs. Returns the exit status.
pub fn run(options: Options) -> anyhow::Result<u8> {
    let started = SystemTime::now();
    let mut session = Session::new(options)?;
    session.setup()?;
    let load = session.load()?;
    let pending = session.resolve()?;
    let audit = match session.options.no_audit {
        true => None,
        false => Some(session.audit()?),
    };
    let status = match (&audit, load.objectives_met()) {
        (Some(audit), _) if !audit.passed() => EXIT_AUDIT_FAILED,
        (_, false) => EXIT_OBJECTIVE_MISSED,
        _ => EXIT_PASSED,
    };
    let summary = report::Summary {
        session: &session,
        load: &load,
        pending,
        audit: audit.as_ref(),
        status,
        started,
    };
    print!("{}", summary.human());
    if let Some(path) = &session.options.report {
        let text = serde_json::to_string_pretty(&summary.json()).context("rendering the report")?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &session.options.plot {
        plot::write_svg(path, &load, session.options.slo_p99)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_cpu_counter_is_read_from_a_metrics_exposition() {
        let text = "# HELP payu_build_info x\n# TYPE payu_build_info gauge\n\
                    payu_build_info{version=\"0.1.0\"} 1\n\
                    # TYPE process_cpu_seconds_total counter\n\
                    process_cpu_seconds_total 12.34\n";
        assert_eq!(process_cpu_seconds_in(text), Some(12.34));
        assert_eq!(process_cpu_seconds_in("payu_build_info 1\n"), None);
        assert_eq!(
            process_cpu_seconds_in("process_cpu_seconds_total x\n"),
            None
        );
        assert_eq!(
            process_cpu_seconds_in("process_cpu_seconds_total -1\n"),
            None
        );
        // A longer name with the same start is another metric.
        assert_eq!(
            process_cpu_seconds_in("process_cpu_seconds_total_x 3\n"),
            None
        );
    }
}
