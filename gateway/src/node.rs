//! Assembling and running a node: recover (newest snapshot + journal replay), start the engine
//! thread, the read model and the HTTP server; on SIGTERM stop accepting, drain, flush, take a
//! snapshot and return.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use payu_journal::{Journal, JournalConfig, MmapStorage, SnapshotStore, restore_engine};

use crate::api::{App, JournalLookup, NodeInfo, router};
use crate::auth::{AuthConfig, Authenticator, load_or_create_dev_secret};
use crate::config::NodeConfig;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::ratelimit::RateLimiter;
use crate::readmodel::{ReadModel, spawn_tailer};

/// How often the node checks whether its engine pipeline failed.
const FAILURE_POLL: Duration = Duration::from_millis(100);
/// Connections the kernel queues for `accept` (capped by `net.core.somaxconn`). When every
/// client connects at once (a load test's start, clients reconnecting after a failover), a
/// full queue drops SYNs and each dropped client waits the 1 s SYN retransmit: measured with
/// tokio's default of 1024, a 25k/s load's warm-up had requests at 1.03-1.04 s exactly when
/// `TcpExtListenOverflows` grew.
const LISTEN_BACKLOG: u32 = 4096;
/// How long a stopping node waits for its connections past the request time limit (their
/// last answers are being written) before it closes them.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Runs a node until `shutdown` resolves (or the pipeline fails). `on_listening` gets the bound
/// address (port 0 in the config picks a free one).
pub async fn run(
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;

    let started = Instant::now();
    let storage = MmapStorage::open(
        &config.journal_dir(),
        config.flush_mode().map_err(anyhow::Error::msg)?,
    )
    .with_context(|| format!("opening the journal in {}", config.journal_dir().display()))?;
    let flush_backend = storage.flush_backend();
    let (journal, recovery) = Journal::open(
        storage,
        JournalConfig {
            segment_bytes: config.journal.segment_bytes,
        },
    )
    .map_err(|error| anyhow::anyhow!("journal recovery: {error}"))?;
    tracing::info!(?recovery, flush_backend, "journal opened");
    let snapshots = SnapshotStore::open(&config.snapshot_dir())
        .with_context(|| format!("opening {}", config.snapshot_dir().display()))?;
    let restored = restore_engine(&snapshots, &journal, config.engine_config())
        .map_err(|error| anyhow::anyhow!("restoring the ledger: {error}"))?;
    for rejected in &restored.rejected_snapshots {
        tracing::warn!(snapshot = %rejected, "snapshot passed over");
    }
    tracing::info!(
        snapshot_seq = ?restored.snapshot_seq,
        replayed = restored.replayed,
        last_seq = restored.engine.last_seq(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "ledger restored"
    );

    let read = Arc::new(ReadModel::try_new(config.read_model).map_err(anyhow::Error::msg)?);
    read.seed(&restored.engine, journal.first_seq());
    let reader = journal
        .reader(journal.first_seq())
        .map_err(|error| anyhow::anyhow!("read model reader: {error}"))?;
    let stop_tailer = Arc::new(AtomicBool::new(false));
    let tailer = Arc::new(spawn_tailer(
        Arc::clone(&read),
        reader,
        Arc::clone(&stop_tailer),
    ));

    let mut auth_config: AuthConfig = config.auth.keys.clone();
    if config.auth.dev_secret {
        let secret =
            load_or_create_dev_secret(&config.data_dir).context("the development JWT secret")?;
        auth_config
            .hs256_secrets
            .push(String::from_utf8(secret).context("the development JWT secret is not UTF-8")?);
    }
    let auth = Authenticator::new(&auth_config).map_err(anyhow::Error::msg)?;

    let metrics = Arc::new(Metrics::new());
    let pipeline_config = config.pipeline_config().map_err(anyhow::Error::msg)?;
    let epoch = pipeline_config.epoch;
    let journal_lookup: Arc<dyn JournalLookup> = Arc::new(journal.readers());
    let pipeline = Pipeline::start(
        restored.engine,
        journal,
        Some(snapshots),
        pipeline_config,
        Arc::clone(&metrics),
    )
    .context("starting the engine thread")?;

    let app_ready_after = pipeline.status.durable_seq.load(Ordering::Acquire);
    let app = Arc::new(App::new(
        pipeline.submitter.clone(),
        Arc::clone(&read),
        auth,
        RateLimiter::new(config.rate_limit),
        metrics,
        config.http.request_timeout(),
        config.http.in_flight_max,
        journal_lookup,
        NodeInfo {
            data_dir: config.data_dir.display().to_string(),
            flush_backend,
            epoch,
            body_limit_bytes: config.http.body_limit_bytes,
            ready_after_seq: app_ready_after,
        },
    ));
    let listener = listen(config.listen).with_context(|| format!("binding {}", config.listen))?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, "listening");
    on_listening(local);

    let failed = Arc::clone(&pipeline.status);
    let draining_app = Arc::clone(&app);
    let watched_tailer = Arc::clone(&tailer);
    let read_model_failed = Arc::new(AtomicBool::new(false));
    let read_model_failed_signal = Arc::clone(&read_model_failed);
    let stop_signal = async move {
        tokio::select! {
            () = shutdown => tracing::info!("shutdown requested: draining"),
            () = watch_failure(failed) => tracing::error!("engine pipeline failed: stopping"),
            () = watch_tailer(watched_tailer) => {
                // Queries would answer 503 forever: stop, and let a restart rebuild it.
                tracing::error!("the read model stopped: stopping");
                read_model_failed_signal.store(true, Ordering::Release);
            }
        }
        draining_app.draining.store(true, Ordering::Release);
    };
    let drain_timeout = config.http.request_timeout() + DRAIN_GRACE;
    crate::listener::serve(
        listener,
        router(Arc::clone(&app), config.http.body_limit_bytes),
        crate::http2::BodyLimits {
            bytes: config.http.body_limit_bytes,
            time: config.http.request_timeout(),
        },
        drain_timeout,
        stop_signal,
    )
    .await;

    // Every HTTP request has been answered; drain the ring, flush, snapshot.
    let pipeline_failed = app.pipeline.failed.load(Ordering::Acquire);
    let engine = tokio::task::spawn_blocking(move || pipeline.shutdown())
        .await
        .context("joining the engine thread")?;
    stop_tailer.store(true, Ordering::Release);
    // The shutdown future (holding the other reference) is gone once `serve` returned.
    if let Ok(tailer) = Arc::try_unwrap(tailer) {
        let _ = tokio::task::spawn_blocking(move || tailer.join()).await;
    }
    if read_model_failed.load(Ordering::Acquire) {
        return Err(anyhow::anyhow!("the read model stopped"));
    }
    match engine {
        Ok(engine) if !pipeline_failed => {
            tracing::info!(last_seq = engine.last_seq(), "stopped cleanly");
            Ok(())
        }
        Ok(_) => Err(anyhow::anyhow!("the engine pipeline failed")),
        Err(error) => Err(anyhow::anyhow!("the engine pipeline failed: {error}")),
    }
}

/// Resolves if the read model's tailing thread ends (it only ends on an error until stopped).
async fn watch_tailer(tailer: Arc<std::thread::JoinHandle<Result<(), String>>>) {
    while !tailer.is_finished() {
        tokio::time::sleep(FAILURE_POLL).await;
    }
}

async fn watch_failure(status: Arc<crate::pipeline::PipelineStatus>) {
    loop {
        if status.failed.load(Ordering::Acquire) {
            return;
        }
        tokio::time::sleep(FAILURE_POLL).await;
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

/// A listening socket with `LISTEN_BACKLOG` (and `SO_REUSEADDR`, as `TcpListener::bind` sets).
fn listen(address: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match address {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}
