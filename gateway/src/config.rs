//! Node configuration: embedded defaults, then a TOML file, then environment variables and
//! flags (the last two through clap, which reads `PAYU_*` variables for each flag).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use payu_engine::EngineConfig;
use serde::Deserialize;

use crate::auth::AuthConfig;
use crate::pipeline::{
    BATCH_COMMANDS_MAX, COMMIT_LINGER_MAX, PipelineConfig, RING_SIZE_DEFAULT, RING_SIZE_MAX,
    RING_SIZE_MIN, WaitStrategy,
};
use crate::ratelimit::RateLimitConfig;
use crate::readmodel::ReadModelConfig;

/// The smallest journal segment the node accepts: a full batch of 8190 transfers with its
/// outcomes (about 1 MiB encoded) must fit one segment many times over.
pub const NODE_SEGMENT_BYTES_MIN: u64 = 32 << 20;

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// "text" or "json".
    pub log_format: String,
    pub http: HttpConfig,
    pub pipeline: PipelineSection,
    pub journal: JournalSection,
    pub auth: AuthSection,
    pub rate_limit: RateLimitConfig,
    pub read_model: ReadModelConfig,
    pub engine: EngineSection,
}

impl Default for NodeConfig {
    fn default() -> NodeConfig {
        NodeConfig {
            data_dir: PathBuf::from("payu-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            log_format: "text".into(),
            http: HttpConfig::default(),
            pipeline: PipelineSection::default(),
            journal: JournalSection::default(),
            auth: AuthSection::default(),
            rate_limit: RateLimitConfig {
                requests_per_second: 100_000,
                burst: 200_000,
            },
            read_model: ReadModelConfig {
                transactions_max: 4_000_000,
            },
            engine: EngineSection::default(),
        }
    }
}

/// The most HTTP threads a node runs.
pub const HTTP_WORKERS_MAX: usize = 256;

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Largest request body accepted (a batch of 8190 transfers is about 1.2 MB of JSON).
    pub body_limit_bytes: usize,
    /// A request not answered within this gets 503 (its command may still commit: retry
    /// with the same Idempotency-Key to learn the outcome).
    pub request_timeout_ms: u64,
    /// Requests being handled at once, at most; beyond it the node answers 503 at once.
    pub in_flight_max: usize,
    /// Threads serving HTTP (the tokio runtime's workers). 0: one fewer than the machine's
    /// cores (at least one), so that the engine thread has a core of its own.
    pub workers: usize,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            body_limit_bytes: 4 << 20,
            request_timeout_ms: 10_000,
            in_flight_max: 16_384,
            workers: 0,
        }
    }
}

impl HttpConfig {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// The HTTP threads to run: `workers`, or for 0 one fewer than `cores` (at least one).
    ///
    /// Why not one per core, tokio's default: on this 2-core VM at 37.5k transfers/s over
    /// HTTP/2, a second worker cost 2.5 µs of CPU per request more (14.9-17.4 against
    /// 12.4-14.1), mostly waking each other to steal work that one of them then did.
    pub fn workers_for(&self, cores: usize) -> usize {
        match self.workers {
            0 => cores.saturating_sub(1).max(1),
            n => n,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineSection {
    pub ring_size: usize,
    /// park (default), yield, spin, or sleep:<micros>.
    pub wait_strategy: String,
    pub snapshot_every_records: u64,
    /// Also snapshot after this many journal bytes (0: no byte bound).
    pub snapshot_every_bytes: u64,
    /// Retire journal segments that the oldest kept snapshot covers (recycled or deleted).
    pub retention: bool,
    /// Group commit linger in microseconds (0: off): after a group commit of two or more
    /// commands, a smaller batch waits up to this long for more before its fdatasync.
    pub commit_linger_us: u64,
    /// A lingering batch stops waiting at this many commands.
    pub commit_linger_commands: usize,
}

impl Default for PipelineSection {
    fn default() -> PipelineSection {
        let defaults = PipelineConfig::default();
        PipelineSection {
            ring_size: RING_SIZE_DEFAULT,
            wait_strategy: "park".into(),
            snapshot_every_records: defaults.snapshot_every_records,
            snapshot_every_bytes: defaults.snapshot_every_bytes,
            retention: defaults.retention,
            commit_linger_us: defaults.commit_linger.as_micros() as u64,
            commit_linger_commands: defaults.commit_linger_commands,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JournalSection {
    /// auto (io_uring when the kernel allows it), io_uring, or syscall.
    pub flush: String,
    pub segment_bytes: u64,
}

impl Default for JournalSection {
    fn default() -> JournalSection {
        JournalSection {
            flush: "auto".into(),
            segment_bytes: payu_journal::SEGMENT_BYTES_DEFAULT,
        }
    }
}

// No deny_unknown_fields: serde does not support it together with `flatten`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct AuthSection {
    #[serde(flatten)]
    pub keys: AuthConfig,
    /// Also accept HS256 tokens signed with the data directory's development secret
    /// (`payu token` mints them). On by default so a fresh node is usable at once; turn it off
    /// in production, where keys come from the identity provider.
    pub dev_secret: bool,
}

impl Default for AuthSection {
    fn default() -> AuthSection {
        AuthSection {
            keys: AuthConfig {
                leeway_seconds: 30,
                ..AuthConfig::default()
            },
            dev_secret: true,
        }
    }
}

/// The engine's bounds. They are genesis settings: they apply when the ledger is created
/// (no snapshot yet); afterwards the snapshot's own settings win, so replay decides the same.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSection {
    pub accounts_max: u64,
    pub holds_active_max: u64,
    pub idempotency_entries_max: u64,
    pub refundable_payments_max: u64,
    pub finished_holds_max: u64,
}

impl Default for EngineSection {
    fn default() -> EngineSection {
        let defaults = EngineConfig::default();
        EngineSection {
            accounts_max: defaults.accounts_max,
            holds_active_max: defaults.holds_active_max,
            idempotency_entries_max: defaults.idempotency_entries_max,
            refundable_payments_max: defaults.refundable_payments_max,
            finished_holds_max: defaults.finished_holds_max,
        }
    }
}

impl NodeConfig {
    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &std::path::Path) -> Result<NodeConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("reading {}: {error}", path.display()))?;
        toml::from_str(&text).map_err(|error| format!("{}: {error}", path.display()))
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.journal.segment_bytes < NODE_SEGMENT_BYTES_MIN {
            return Err(format!(
                "journal.segment_bytes must be at least {NODE_SEGMENT_BYTES_MIN}"
            ));
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(format!(
                "log_format must be text or json, got {:?}",
                self.log_format
            ));
        }
        self.flush_mode()?;
        self.wait_strategy()?;
        if self.http.workers > HTTP_WORKERS_MAX {
            return Err(format!("http.workers must be at most {HTTP_WORKERS_MAX}"));
        }
        self.engine_config().validate()?;
        if self.http.in_flight_max == 0 || self.http.request_timeout_ms == 0 {
            return Err("http.in_flight_max and http.request_timeout_ms must be positive".into());
        }
        let ring = RING_SIZE_MIN..=RING_SIZE_MAX;
        if !ring.contains(&self.pipeline.ring_size) {
            return Err(format!(
                "pipeline.ring_size must be within {RING_SIZE_MIN}..={RING_SIZE_MAX}"
            ));
        }
        if self.pipeline.commit_linger_us > COMMIT_LINGER_MAX.as_micros() as u64 {
            return Err(format!(
                "pipeline.commit_linger_us must be at most {} (microseconds)",
                COMMIT_LINGER_MAX.as_micros()
            ));
        }
        if !(2..=BATCH_COMMANDS_MAX).contains(&self.pipeline.commit_linger_commands) {
            return Err(format!(
                "pipeline.commit_linger_commands must be within 2..={BATCH_COMMANDS_MAX}"
            ));
        }
        Ok(())
    }

    pub fn flush_mode(&self) -> Result<payu_journal::FlushMode, String> {
        match self.journal.flush.as_str() {
            "auto" => Ok(payu_journal::FlushMode::Auto),
            "io_uring" => Ok(payu_journal::FlushMode::IoUring),
            "syscall" => Ok(payu_journal::FlushMode::Syscall),
            other => Err(format!(
                "journal.flush must be auto, io_uring or syscall, got {other:?}"
            )),
        }
    }

    pub fn wait_strategy(&self) -> Result<WaitStrategy, String> {
        self.pipeline.wait_strategy.parse()
    }

    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            accounts_max: self.engine.accounts_max,
            holds_active_max: self.engine.holds_active_max,
            idempotency_entries_max: self.engine.idempotency_entries_max,
            refundable_payments_max: self.engine.refundable_payments_max,
            finished_holds_max: self.engine.finished_holds_max,
            ..EngineConfig::default()
        }
    }

    pub fn pipeline_config(&self) -> Result<PipelineConfig, String> {
        Ok(PipelineConfig {
            ring_size: self.pipeline.ring_size,
            wait: self.wait_strategy()?,
            snapshot_every_records: self.pipeline.snapshot_every_records,
            snapshot_every_bytes: self.pipeline.snapshot_every_bytes,
            retention: self.pipeline.retention,
            commit_linger: Duration::from_micros(self.pipeline.commit_linger_us),
            commit_linger_commands: self.pipeline.commit_linger_commands,
            ..PipelineConfig::default()
        })
    }

    pub fn journal_dir(&self) -> PathBuf {
        self.data_dir.join("journal")
    }

    pub fn snapshot_dir(&self) -> PathBuf {
        self.data_dir.join("snapshots")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_is_valid() {
        NodeConfig::default().validate().expect("default config");
    }

    #[test]
    fn a_file_overrides_only_what_it_names() {
        let config: NodeConfig = toml::from_str(
            "listen = \"127.0.0.1:9000\"\n[pipeline]\nring_size = 1024\n[engine]\naccounts_max = 1000\n",
        )
        .expect("parses");
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.pipeline.ring_size, 1024);
        assert_eq!(config.engine.accounts_max, 1000);
        assert_eq!(config.http.request_timeout_ms, 10_000);
        config.validate().expect("valid");
    }

    #[test]
    fn http_workers_leave_the_engine_a_core_unless_set() {
        let auto = HttpConfig::default();
        assert_eq!(auto.workers_for(1), 1);
        assert_eq!(auto.workers_for(2), 1);
        assert_eq!(auto.workers_for(8), 7);
        let set: NodeConfig = toml::from_str("[http]\nworkers = 3").expect("parses");
        assert_eq!(set.http.workers_for(2), 3);
        let too_many: NodeConfig = toml::from_str("[http]\nworkers = 257").expect("parses");
        assert!(too_many.validate().is_err());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(toml::from_str::<NodeConfig>("lissten = \"127.0.0.1:1\"").is_err());
        let config: NodeConfig =
            toml::from_str("[pipeline]\nwait_strategy = \"nap\"").expect("parses");
        assert!(config.validate().is_err());
        let config: NodeConfig = toml::from_str("[journal]\nsegment_bytes = 4096").expect("parses");
        assert!(config.validate().is_err());
    }

    #[test]
    fn the_commit_linger_is_bounded() {
        let parse = |text: &str| {
            toml::from_str::<NodeConfig>(text)
                .expect("parses")
                .validate()
        };
        parse("[pipeline]\ncommit_linger_us = 0").expect("off");
        parse("[pipeline]\ncommit_linger_us = 10000\ncommit_linger_commands = 2").expect("ok");
        let error = parse("[pipeline]\ncommit_linger_us = 10001").expect_err("too long");
        assert!(
            error.contains("commit_linger_us must be at most 10000"),
            "{error}"
        );
        let error = parse("[pipeline]\ncommit_linger_commands = 1").expect_err("too few");
        assert!(error.contains("commit_linger_commands"), "{error}");
        parse("[pipeline]\ncommit_linger_commands = 4097").expect_err("more than a batch");
        let config: NodeConfig =
            toml::from_str("[pipeline]\ncommit_linger_us = 500").expect("parses");
        let pipeline = config.pipeline_config().expect("valid");
        assert_eq!(pipeline.commit_linger, Duration::from_micros(500));
    }
}
