//! `payu`: run a PayU Core node and operate it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use payu_gateway::auth::{
    SCOPE_ADMIN, SCOPE_CUSTOMER, SCOPE_OPERATOR, SCOPE_SYSTEM, load_or_create_dev_secret,
    mint_hs256,
};
use payu_gateway::config::NodeConfig;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "payu",
    version,
    about = "PayU Core: the bank's transaction processor"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node. With no flags: data in ./payu-data, HTTP on 127.0.0.1:8080, no Kafka.
    Serve(ServeArgs),
    /// Mint a development token signed with the data directory's secret (for the local node).
    Token(TokenArgs),
    /// Show a running node's role, seqs, ring and journal state.
    Status(StatusArgs),
    /// Offline journal tools (run them on a stopped node's data directory).
    Journal {
        #[command(subcommand)]
        command: JournalCmd,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// A TOML configuration file; flags and PAYU_* environment variables override it.
    #[arg(long, env = "PAYU_CONFIG")]
    config: Option<PathBuf>,
    /// Where the journal, snapshots and development secret live.
    #[arg(long, env = "PAYU_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// HTTP address to listen on (port 0 picks a free port and prints it).
    #[arg(long, env = "PAYU_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Log format: text or json.
    #[arg(long, env = "PAYU_LOG_FORMAT")]
    log_format: Option<String>,
    /// Ring capacity in commands (a power of two).
    #[arg(long, env = "PAYU_RING_SIZE")]
    ring_size: Option<usize>,
    /// How the idle engine thread waits: park, yield, spin or sleep:<micros>.
    #[arg(long, env = "PAYU_WAIT_STRATEGY")]
    wait_strategy: Option<String>,
    /// Group commit linger in microseconds (0: off): under concurrent load, a small group
    /// commit waits up to this long for more commands before its fdatasync.
    #[arg(long, env = "PAYU_COMMIT_LINGER_US")]
    commit_linger_us: Option<u64>,
    /// Journal flush backend: auto, io_uring or syscall.
    #[arg(long, env = "PAYU_FLUSH")]
    flush: Option<String>,
    /// Take a snapshot every this many records (0: no record bound).
    #[arg(long, env = "PAYU_SNAPSHOT_EVERY")]
    snapshot_every: Option<u64>,
    /// Also take a snapshot every this many journal bytes (0: no byte bound; with both 0,
    /// only at shutdown).
    #[arg(long, env = "PAYU_SNAPSHOT_EVERY_BYTES")]
    snapshot_every_bytes: Option<u64>,
    /// Genesis bound on accounts (applies only to a new ledger).
    #[arg(long, env = "PAYU_ACCOUNTS_MAX")]
    accounts_max: Option<u64>,
    /// Requests handled at once, at most (beyond it: 503).
    #[arg(long, env = "PAYU_IN_FLIGHT_MAX")]
    in_flight_max: Option<usize>,
    /// Threads serving HTTP; 0: one fewer than the cores (at least one).
    #[arg(long, env = "PAYU_HTTP_WORKERS")]
    http_workers: Option<usize>,
    /// Per-client rate limit in requests (or batch items) per second; 0 = unlimited.
    #[arg(long, env = "PAYU_RATE_LIMIT")]
    rate_limit: Option<u32>,
}

#[derive(Args)]
struct TokenArgs {
    #[arg(long, env = "PAYU_DATA_DIR", default_value = "payu-data")]
    data_dir: PathBuf,
    /// The token's subject; a customer's subject is its owner id (a UUID).
    #[arg(long, default_value = "dev-operator")]
    subject: String,
    /// Scopes to grant (repeatable). Default: operator, system and admin.
    #[arg(long = "scope")]
    scopes: Vec<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
}

#[derive(Args)]
struct StatusArgs {
    #[arg(long, env = "PAYU_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Bearer token; by default one is minted from the data directory's development secret.
    #[arg(long, env = "PAYU_TOKEN")]
    token: Option<String>,
    #[arg(long, env = "PAYU_DATA_DIR", default_value = "payu-data")]
    data_dir: PathBuf,
}

#[derive(Subcommand)]
enum JournalCmd {
    /// Check every record: CRC, seq continuity, hash chain, payload. Exit 1 on corruption.
    Verify {
        #[arg(long, env = "PAYU_DATA_DIR", default_value = "payu-data")]
        data_dir: PathBuf,
    },
    /// Print records.
    Inspect {
        #[arg(long, env = "PAYU_DATA_DIR", default_value = "payu-data")]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Serve(args) => serve(args),
        Cmd::Token(args) => token(args),
        Cmd::Status(args) => status(args),
        Cmd::Journal { command } => journal(command),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("payu: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = match &args.config {
        Some(path) => NodeConfig::from_file(path).map_err(anyhow::Error::msg)?,
        None => NodeConfig::default(),
    };
    if let Some(value) = args.data_dir {
        config.data_dir = value;
    }
    if let Some(value) = args.listen {
        config.listen = value;
    }
    if let Some(value) = args.log_format {
        config.log_format = value;
    }
    if let Some(value) = args.ring_size {
        config.pipeline.ring_size = value;
    }
    if let Some(value) = args.wait_strategy {
        config.pipeline.wait_strategy = value;
    }
    if let Some(value) = args.commit_linger_us {
        config.pipeline.commit_linger_us = value;
    }
    if let Some(value) = args.flush {
        config.journal.flush = value;
    }
    if let Some(value) = args.snapshot_every {
        config.pipeline.snapshot_every_records = value;
    }
    if let Some(value) = args.snapshot_every_bytes {
        config.pipeline.snapshot_every_bytes = value;
    }
    if let Some(value) = args.accounts_max {
        config.engine.accounts_max = value;
    }
    if let Some(value) = args.in_flight_max {
        config.http.in_flight_max = value;
    }
    if let Some(value) = args.http_workers {
        config.http.workers = value;
    }
    if let Some(value) = args.rate_limit {
        config.rate_limit.requests_per_second = value;
        config.rate_limit.burst = value.saturating_mul(2);
    }
    config.validate().map_err(anyhow::Error::msg)?;
    init_logging(&config.log_format);
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.http.workers_for(cores))
        .enable_all()
        .thread_name("payu-http")
        .build()?;
    runtime.block_on(payu_gateway::node::run(
        config,
        payu_gateway::node::termination(),
        |address| {
            // Tests and scripts read the bound address from this line.
            println!("payu listening on http://{address}");
        },
    ))?;
    Ok(ExitCode::SUCCESS)
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PAYU_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        "json" => builder.json().init(),
        _ => builder.init(),
    }
}

fn token(args: TokenArgs) -> anyhow::Result<ExitCode> {
    // The node creates the directory too; minting first must work on a fresh machine.
    std::fs::create_dir_all(&args.data_dir)?;
    let secret = load_or_create_dev_secret(&args.data_dir)?;
    let scopes: Vec<&str> = match args.scopes.is_empty() {
        true => vec![SCOPE_OPERATOR, SCOPE_SYSTEM, SCOPE_ADMIN],
        false => args.scopes.iter().map(String::as_str).collect(),
    };
    let known = [SCOPE_CUSTOMER, SCOPE_OPERATOR, SCOPE_SYSTEM, SCOPE_ADMIN];
    if let Some(unknown) = scopes.iter().find(|s| !known.contains(s)) {
        anyhow::bail!("unknown scope {unknown:?}: use one of {}", known.join(", "));
    }
    let token = mint_hs256(
        &secret,
        &args.subject,
        &scopes,
        Duration::from_secs(args.ttl),
        None,
        None,
    )
    .map_err(anyhow::Error::msg)?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let token = match args.token {
        Some(token) => token,
        None => {
            let secret = load_or_create_dev_secret(&args.data_dir)?;
            mint_hs256(
                &secret,
                "payu-status",
                &[SCOPE_ADMIN],
                Duration::from_secs(60),
                None,
                None,
            )
            .map_err(anyhow::Error::msg)?
        }
    };
    let url = format!("{}/v1/admin/status", args.url.trim_end_matches('/'));
    let body = payu_gateway::client::get(&url, &token)?;
    println!("{body}");
    Ok(ExitCode::SUCCESS)
}

fn journal(command: JournalCmd) -> anyhow::Result<ExitCode> {
    match command {
        JournalCmd::Verify { data_dir } => match payu_gateway::tools::verify_journal(&data_dir) {
            Ok(report) => {
                println!("{report}");
                Ok(ExitCode::SUCCESS)
            }
            Err(error) => {
                eprintln!("payu: journal verify: {error}");
                Ok(ExitCode::FAILURE)
            }
        },
        JournalCmd::Inspect {
            data_dir,
            from,
            limit,
            json,
        } => {
            let mut out = std::io::stdout().lock();
            payu_gateway::tools::inspect_journal(&data_dir, from, limit, &mut out, json)
                .map_err(|error| anyhow::anyhow!("journal inspect: {error}"))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
