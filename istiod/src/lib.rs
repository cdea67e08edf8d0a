//! A Rust istiod: Istio config in, Envoy xDS out.
//!
//! Data flows one way: a source ([`sources`]: the `--config-dir` folder,
//! watched, or the embedded example mesh) yields typed objects; the push
//! queue ([`push`]) debounces changes; each settled change builds a new
//! immutable [`Snapshot`] (published on a `watch` channel); the xDS server
//! ([`xds`]) regenerates every connected proxy's config from it with the
//! pure [`translator`] and sends what changed.

pub mod admin;
pub mod bootstrap;
pub mod metrics;
pub mod push;
pub mod sources;
pub mod xds;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::{error, info, warn};
use translator::model::{MeshConfig, Snapshot};

use push::{DebounceConfig, Debouncer};
use sources::{Loaded, SourceError};

/// How the daemon runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Folder of config to read and watch; `None` serves the embedded example mesh.
    pub config_dir: Option<PathBuf>,
    /// Where ADS is served (Istio's plaintext port is 15010; port 0 picks one).
    pub xds_addr: SocketAddr,
    /// Where `/metrics`, `/ready` and `/debug/*` are served (Istio's 15014);
    /// `None` serves none.
    pub monitoring_addr: Option<SocketAddr>,
    /// Push debounce.
    pub debounce: DebounceConfig,
    /// Most proxies generated and pushed to at once (Istio `PILOT_PUSH_THROTTLE`).
    pub push_throttle: usize,
}

/// A running daemon. Dropping it does not stop it: call [`Daemon::shutdown`].
#[derive(Debug)]
pub struct Daemon {
    /// The address ADS is served on.
    pub xds_addr: SocketAddr,
    /// The address of the monitoring port, if served.
    pub monitoring_addr: Option<SocketAddr>,
    /// The daemon's metrics.
    pub metrics: Arc<metrics::Metrics>,
    /// The current snapshot, replaced on every change.
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// Documents skipped at the last load, each naming file, object and field.
    pub errors: watch::Receiver<Arc<Vec<SourceError>>>,
    /// What each connected proxy was sent and has ACKed.
    pub sync: xds::SyncTable,
    shutdown: tokio_util::sync::CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    // Held so the snapshot channel stays open even when no watcher publishes.
    _publisher: Arc<watch::Sender<Arc<Snapshot>>>,
}

impl Daemon {
    /// Loads the config, binds the xDS port and starts serving.
    ///
    /// # Errors
    /// An unreadable config folder, a folder that cannot be watched, or an
    /// xDS address that cannot be bound.
    pub async fn start(opts: Options) -> anyhow::Result<Daemon> {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let metrics = Arc::new(metrics::Metrics::new());
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let loaded = load(opts.config_dir.as_deref())?;
        let (mut snap, errs) = build(1, loaded);
        snap.published_at = Some(std::time::Instant::now());
        let (snap_tx, snapshots) = watch::channel(Arc::new(snap));
        let snap_tx = Arc::new(snap_tx);
        let publisher = snap_tx.clone();
        let (err_tx, errors) = watch::channel(Arc::new(errs));
        let mut tasks = Vec::new();

        if let Some(dir) = opts.config_dir.clone() {
            let (ev_tx, ev_rx) = mpsc::channel(1);
            let watcher = sources::file::watch(&dir, ev_tx)
                .with_context(|| format!("cannot watch config folder {}", dir.display()))?;
            let token = shutdown.clone();
            let metrics = metrics.clone();
            tasks.push(tokio::spawn(async move {
                let _watcher = watcher;
                let mut debouncer = Debouncer::new(ev_rx, opts.debounce);
                let mut version = 1;
                loop {
                    let merged = tokio::select! {
                        m = debouncer.next() => m,
                        _ = token.cancelled() => None,
                    };
                    let Some((merged, first_event)) = merged else { break };
                    metrics.debounce_time.observe(metrics::secs(first_event.elapsed()));
                    metrics
                        .triggers
                        .get_or_create(&metrics::TypeLabel { r#type: "config".into() })
                        .inc_by(merged as u64);
                    version += 1;
                    let dir = dir.clone();
                    let loaded = match tokio::task::spawn_blocking(move || load(Some(&dir))).await {
                        Ok(Ok(l)) => l,
                        Ok(Err(e)) => {
                            error!(error = %e, "config folder unreadable; keeping the last snapshot");
                            continue;
                        }
                        Err(e) => {
                            error!(error = %e, "config load task failed");
                            continue;
                        }
                    };
                    let (mut snap, errs) = build(version, loaded);
                    let previous = snap_tx.borrow().clone();
                    snap.changes = Some(Arc::new(translator::changes::ChangeSet::between(&previous, &snap)));
                    snap.changed_at = Some(first_event.into_std());
                    snap.published_at = Some(std::time::Instant::now());
                    info!(version, events = merged, services = snap.services.len(), "config changed; pushing");
                    snap_tx.send_replace(Arc::new(snap));
                    err_tx.send_replace(Arc::new(errs));
                }
            }));
        }

        let listener = tokio::net::TcpListener::bind(opts.xds_addr)
            .await
            .with_context(|| format!("cannot bind xDS address {}", opts.xds_addr))?;
        let xds_addr = listener.local_addr()?;
        let ads = xds::AdsServer::new(
            snapshots.clone(),
            shutdown.clone(),
            metrics.clone(),
            opts.push_throttle,
        );
        let sync = ads.sync_table();
        let token = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(ads.into_service())
                .serve_with_incoming_shutdown(
                    TcpListenerStream::new(listener),
                    token.cancelled_owned(),
                )
                .await;
            if let Err(e) = served {
                error!(error = %e, "xDS server failed");
            }
        }));
        info!(%xds_addr, "serving ADS (SotW and Delta: CDS, EDS, LDS, RDS, SDS)");
        let mut monitoring_addr = None;
        if let Some(addr) = opts.monitoring_addr {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot bind monitoring address {addr}"))?;
            monitoring_addr = Some(listener.local_addr()?);
            let app = admin::router(admin::AdminState {
                metrics: metrics.clone(),
                sync: sync.clone(),
                snapshots: snapshots.clone(),
                ready: ready.clone(),
            });
            let token = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(token.cancelled_owned())
                    .await;
                if let Err(e) = served {
                    error!(error = %e, "monitoring server failed");
                }
            }));
            info!(addr = ?monitoring_addr, "serving /metrics, /ready and /debug/*");
        }
        ready.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(Daemon {
            xds_addr,
            monitoring_addr,
            metrics,
            snapshots,
            errors,
            sync,
            shutdown,
            tasks,
            _publisher: publisher,
        })
    }

    /// Stops watching and serving (every xDS stream ends), and waits for
    /// the tasks to end. Calling it again does nothing.
    pub async fn shutdown(&mut self) {
        self.shutdown.cancel();
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
    }
}

fn load(dir: Option<&std::path::Path>) -> anyhow::Result<Loaded> {
    match dir {
        Some(dir) => sources::file::load_dir(dir)
            .with_context(|| format!("cannot read config folder {}", dir.display())),
        None => Ok(sources::embedded::load()),
    }
}

/// Builds a snapshot, logging (and returning) every skipped document.
fn build(version: u64, mut loaded: Loaded) -> (Snapshot, Vec<SourceError>) {
    loaded.drop_orphan_delegates();
    for e in &loaded.errors {
        error!(file = %e.file.display(), document = e.document, error = %e.error, "invalid config skipped");
    }
    for entry in &loaded.entries {
        for (field, reason) in crds::support::unsupported(&entry.object) {
            let meta = entry.object.metadata();
            warn!(
                file = %entry.file.display(), document = entry.document, kind = entry.object.kind(),
                name = %format!("{}/{}", meta.namespace.as_deref().unwrap_or(""), meta.name.as_deref().unwrap_or("")),
                %field, %reason, "config field not acted on"
            );
        }
    }
    let snap = Snapshot::build(version, loaded.objects(), MeshConfig::default());
    for w in &snap.warnings {
        warn!(warning = %w, "config read but not acted on");
    }
    (snap, loaded.errors)
}
