//! The command line: what to drive, how hard, and what counts as passing. Every option has a
//! default that makes `payu-loadtest --data-dir payu-data` a meaningful run against a local
//! node; values that would make a run meaningless or unbounded are refused here.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use rust_decimal::Decimal;

/// Accounts one run creates, at most (each is opened, funded, read back and audited).
pub const ACCOUNTS_MAX: u32 = 1_000_000;
/// In-flight requests, at most.
pub const CONCURRENCY_MAX: usize = 65_536;
/// The node's own bound on a batch (engine `BATCH_TRANSFERS_MAX`).
pub const BATCH_SIZE_MAX: usize = 8190;
/// The longest one run (or one ramp step) may be asked to last.
pub const DURATION_MAX: Duration = Duration::from_secs(24 * 3600);
/// Ramp steps, at most (refinement steps included).
pub const RAMP_STEPS_MAX: u32 = 1000;

#[derive(Parser, Clone, Debug)]
#[command(
    name = "payu-loadtest",
    version,
    about = "Open-loop HTTP load for a PayU Core node, with latency corrected for coordinated \
             omission, a JSON report, an SVG plot and a ledger audit at the end",
    after_help = "Exit status: 0 passed; 1 the audit failed; 2 the run could not be made; \
                  3 the audit passed but an objective (--slo-p99, --min-rate-ratio, \
                  --max-error-ratio) was missed."
)]
pub struct Options {
    /// The node's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// A bearer token with the payu:operator scope (settlement accounts and deposits need it).
    #[arg(long, conflicts_with = "data_dir")]
    pub token: Option<String>,
    /// A local node's data directory: tokens are minted from its `dev-jwt-secret`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,

    /// Operations (or batches) per second, scheduled at fixed intervals (open loop).
    #[arg(long, default_value_t = 1000.0, value_parser = positive_rate)]
    pub rate: f64,
    /// How long to send at --rate (e.g. 60s, 500ms, 2m).
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub duration: Duration,
    /// Requests in flight at most; a request whose time has come waits for a free slot, and
    /// its latency still counts from its intended send time.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=CONCURRENCY_MAX as i64))]
    pub concurrency: u32,
    /// Before the measured load, run this long at the first rate (connections open, caches
    /// warm); reported apart and excluded from the objectives. Its operations are audited.
    #[arg(long, default_value = "0s", value_parser = duration)]
    pub warmup: Duration,
    /// After --duration, how long a backlog of requests may still be sent; what is left is
    /// counted as not sent.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub grace: Duration,
    /// Per-request client timeout (the outcome is then unknown and resolved before the audit).
    #[arg(long, default_value = "15s", value_parser = duration)]
    pub timeout: Duration,
    /// Threads of the runtime that sets up, resolves and audits (default: the machine's cores).
    #[arg(long)]
    pub client_threads: Option<usize>,
    /// Load lanes: threads that each send, read and book a share of the load's requests on
    /// connections of their own (default: 1, which costs the least CPU per request; in batch
    /// mode the machine's cores, to build and parse the large bodies in parallel).
    #[arg(long)]
    pub lanes: Option<usize>,
    /// Speak HTTP/2 with prior knowledge (multiplexed) instead of HTTP/1.1 keep-alive.
    #[arg(long)]
    pub http2: bool,
    /// With --http2: connections each lane opens, its requests multiplexed over them.
    #[arg(long, default_value_t = 4, requires = "http2")]
    pub http2_connections: usize,

    /// Step mode: start at --from, add --step every --step-duration, report the highest rate
    /// that met the objectives (--slo-p99, --min-rate-ratio, --max-error-ratio).
    #[arg(long, requires = "slo_p99")]
    pub ramp: bool,
    /// The ramp's first rate.
    #[arg(long = "from", default_value_t = 1000.0, value_parser = positive_rate)]
    pub ramp_from: f64,
    /// The ramp's increment per step.
    #[arg(long = "step", default_value_t = 1000.0, value_parser = positive_rate)]
    pub ramp_step: f64,
    /// How long each ramp step runs.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub step_duration: Duration,
    /// The ramp stops after this many plain steps even if every one passed.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=RAMP_STEPS_MAX as i64))]
    pub ramp_steps_max: u32,
    /// After the first failing step, bisect between it and the last passing one this many
    /// times.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=20))]
    pub refine: u32,

    /// Batch mode: each operation is one POST /v1/transfers/batch of this many transfers
    /// (--rate is then batches per second).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=BATCH_SIZE_MAX as i64))]
    pub batch_size: Option<u32>,

    /// Customer accounts to create and fund for this run (plus one settlement account).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(2..=ACCOUNTS_MAX as i64))]
    pub accounts: u32,
    /// Each account's opening deposit in IDR (an exact decimal).
    #[arg(long, default_value = "100000000", value_parser = money)]
    pub funding: Decimal,
    /// The tier of the run's accounts (tier 3's daily limit keeps hot accounts sending).
    #[arg(long, default_value_t = 3)]
    pub tier: u8,
    /// Smallest transfer or hold amount in IDR.
    #[arg(long, default_value = "1", value_parser = money)]
    pub amount_min: Decimal,
    /// Largest transfer or hold amount in IDR (amounts are drawn in whole cents).
    #[arg(long, default_value = "1000", value_parser = money)]
    pub amount_max: Decimal,
    /// Operation mix by weight: transfer (one POST /v1/transfers) and hold (reserve, then
    /// commit or release).
    #[arg(long, default_value = "transfer=100", value_parser = Mix::from_str)]
    pub mix: Mix,
    /// Fraction of holds that are committed (the rest are released).
    #[arg(long, default_value_t = 0.5, value_parser = ratio)]
    pub hold_commit_ratio: f64,
    /// Zipf exponent of account choice: 0 is uniform, 1.0 a classic hot-account skew.
    #[arg(long, default_value_t = 1.0, value_parser = zipf_exponent)]
    pub zipf: f64,
    /// Seed of every random choice (accounts, amounts, operations); printed in the report.
    #[arg(long)]
    pub seed: Option<u64>,

    /// Objective: corrected p99 at most this (e.g. 10ms). Required by --ramp.
    #[arg(long, value_parser = duration)]
    pub slo_p99: Option<Duration>,
    /// Objective: answered operations per second at least this fraction of the intended rate.
    #[arg(long, default_value_t = 0.95, value_parser = ratio)]
    pub min_rate_ratio: f64,
    /// Objective: failed operations (5xx, timeouts, connection errors, unexpected 4xx) at
    /// most this fraction of those sent.
    #[arg(long, default_value_t = 0.001, value_parser = ratio)]
    pub max_error_ratio: f64,

    /// Write the JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write the SVG picture here (latency over time, throughput, percentile distribution).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// No live progress line on stderr.
    #[arg(long)]
    pub quiet: bool,

    /// Skip the end-of-run audit (the run then proves nothing about the ledger).
    #[arg(long)]
    pub no_audit: bool,
    /// Requests in flight during setup and audit.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub audit_concurrency: u32,
    /// Acknowledged transactions the audit also fetches one by one (GET /v1/transactions/{id});
    /// beyond this a seeded sample of this size is fetched. Every one is checked in both
    /// accounts' histories regardless.
    #[arg(long, default_value_t = 200_000)]
    pub audit_gets_max: u64,
}

impl Options {
    /// Checks relations between options that clap cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if self.token.is_none() && self.data_dir.is_none() {
            return Err(
                "give --token or --data-dir (to mint a token from the node's dev secret)".into(),
            );
        }
        if self.amount_min <= Decimal::ZERO || self.amount_min > self.amount_max {
            return Err("need 0 < --amount-min <= --amount-max".into());
        }
        if self.amount_max.round_dp(2) != self.amount_max
            || self.amount_min.round_dp(2) != self.amount_min
        {
            return Err(
                "--amount-min and --amount-max have at most 2 decimal places (cents)".into(),
            );
        }
        if self.funding <= Decimal::ZERO || self.funding.round_dp(4) != self.funding {
            return Err("--funding must be positive with at most 4 decimal places".into());
        }
        if self.batch_size.is_some() && self.mix.hold > 0 {
            return Err("--batch-size drives transfers only: drop hold from --mix".into());
        }
        if self.warmup > DURATION_MAX {
            return Err(format!(
                "--warmup must be at most {}s",
                DURATION_MAX.as_secs()
            ));
        }
        for (name, value) in [
            ("--duration", self.duration),
            ("--step-duration", self.step_duration),
        ] {
            if value.is_zero() || value > DURATION_MAX {
                return Err(format!(
                    "{name} must be within (0, {}s]",
                    DURATION_MAX.as_secs()
                ));
            }
        }
        if self.timeout.is_zero() {
            return Err("--timeout must be positive".into());
        }
        if self.client_threads == Some(0) {
            return Err("--client-threads must be positive".into());
        }
        if self
            .lanes
            .is_some_and(|lanes| lanes == 0 || lanes > crate::driver::LANES_MAX)
        {
            return Err(format!(
                "--lanes must be within [1, {}]",
                crate::driver::LANES_MAX
            ));
        }
        Ok(())
    }

    /// Transfers each operation carries (1 unless in batch mode).
    pub fn transfers_per_op(&self) -> u32 {
        self.batch_size.unwrap_or(1)
    }
}

/// Operation weights, from `transfer=90,hold=10`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix {
    pub transfer: u32,
    pub hold: u32,
}

impl Mix {
    pub fn total(&self) -> u32 {
        self.transfer + self.hold
    }
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(text: &str) -> Result<Mix, String> {
        let mut mix = Mix {
            transfer: 0,
            hold: 0,
        };
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected name=weight"))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: the weight is not a whole number"))?;
            if weight > 1_000_000 {
                return Err(format!("{part:?}: weights go up to 1000000"));
            }
            match name.trim() {
                "transfer" => mix.transfer = weight,
                "hold" => mix.hold = weight,
                other => return Err(format!("unknown operation {other:?}: use transfer or hold")),
            }
        }
        if mix.total() == 0 {
            return Err("the mix has no operation with a positive weight".into());
        }
        Ok(mix)
    }
}

/// `60s`, `10ms`, `1.5s`, `250us`, `2m`, `1h`.
pub fn duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{text:?}: give a unit (ns, us, ms, s, m or h)"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: not a number followed by a unit"))?;
    let seconds_per_unit = match unit {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("{text:?}: unknown unit {other:?}")),
    };
    let seconds = number * seconds_per_unit;
    if !seconds.is_finite() || seconds < 0.0 || seconds > DURATION_MAX.as_secs_f64() {
        return Err(format!("{text:?}: out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn positive_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    match rate.is_finite() && rate > 0.0 && rate <= 10_000_000.0 {
        true => Ok(rate),
        false => Err(format!(
            "{text:?}: a rate must be within (0, 10000000] per second"
        )),
    }
}

fn ratio(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    match (0.0..=1.0).contains(&value) {
        true => Ok(value),
        false => Err(format!("{text:?}: must be within [0, 1]")),
    }
}

fn zipf_exponent(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    match value.is_finite() && (0.0..=10.0).contains(&value) {
        true => Ok(value),
        false => Err(format!("{text:?}: the exponent must be within [0, 10]")),
    }
}

fn money(text: &str) -> Result<Decimal, String> {
    Decimal::from_str(text.trim()).map_err(|_| format!("{text:?} is not an exact decimal amount"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, clap::Error> {
        Options::try_parse_from(std::iter::once("payu-loadtest").chain(args.iter().copied()))
    }

    #[test]
    fn durations_parse_with_units() {
        // The issue's spellings: 60s, 10ms; and the other units a user would try.
        assert_eq!(duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(duration("10ms"), Ok(Duration::from_millis(10)));
        assert_eq!(duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert!(duration("10").is_err());
        assert!(duration("10 parsecs").is_err());
        assert!(duration("-1s").is_err());
    }

    #[test]
    fn mixes_parse_and_refuse_nonsense() {
        // `--mix transfer=90,hold=10` as in the issue; unknown names and all-zero mixes are refused.
        assert_eq!(
            Mix::from_str("transfer=90,hold=10"),
            Ok(Mix {
                transfer: 90,
                hold: 10
            })
        );
        assert_eq!(
            Mix::from_str("hold=1"),
            Ok(Mix {
                transfer: 0,
                hold: 1
            })
        );
        assert!(Mix::from_str("transfer=0").is_err());
        assert!(Mix::from_str("payment=5").is_err());
        assert!(Mix::from_str("transfer").is_err());
    }

    #[test]
    fn the_issue_commands_parse() {
        // The three runs docs/PERFORMANCE.md ("Load tests") records must be accepted as written.
        let fixed =
            parse(&["--data-dir", "d", "--rate", "1000", "--duration", "60s"]).expect("fixed");
        fixed.validate().expect("valid");
        assert_eq!(fixed.duration, Duration::from_secs(60));
        let ramp = parse(&[
            "--data-dir",
            "d",
            "--ramp",
            "--from",
            "1000",
            "--step",
            "1000",
            "--step-duration",
            "10s",
            "--slo-p99",
            "10ms",
        ])
        .expect("ramp");
        assert_eq!(ramp.slo_p99, Some(Duration::from_millis(10)));
        let batch =
            parse(&["--data-dir", "d", "--batch-size", "8190", "--rate", "50"]).expect("batch");
        batch.validate().expect("valid");
        assert_eq!(batch.transfers_per_op(), 8190);
    }

    #[test]
    fn bad_arguments_are_refused() {
        // Each would make the run meaningless or unbounded.
        assert!(
            parse(&["--data-dir", "d", "--ramp"]).is_err(),
            "a ramp needs --slo-p99"
        );
        assert!(parse(&["--data-dir", "d", "--rate", "0"]).is_err());
        assert!(parse(&["--data-dir", "d", "--batch-size", "8191"]).is_err());
        assert!(parse(&["--data-dir", "d", "--accounts", "1"]).is_err());
        assert!(parse(&["--data-dir", "d", "--token", "t"]).is_err());
        let no_token = parse(&[]).expect("parses");
        assert!(no_token.validate().is_err());
        let cents = parse(&["--data-dir", "d", "--amount-max", "1.005"]).expect("parses");
        assert!(cents.validate().is_err());
        let holds_in_batches = parse(&[
            "--data-dir",
            "d",
            "--batch-size",
            "10",
            "--mix",
            "transfer=1,hold=1",
        ])
        .expect("parses");
        assert!(holds_in_batches.validate().is_err());
    }
}
