//! A Rust istiod: Istio config in, Envoy xDS out.
//!
//! Data flows one way: a source ([`sources`]: the Kubernetes API or the
//! `--config-dir` folder, both watched, or the embedded example mesh)
//! yields typed objects; the push
//! queue ([`push`]) debounces changes; each settled change builds a new
//! immutable [`Snapshot`] (published on a `watch` channel); the xDS server
//! ([`xds`]) regenerates every connected proxy's config from it with the
//! pure [`translator`] and sends what changed.

pub mod admin;
pub mod agent;
pub mod analysis_status;
pub mod analyze;
pub mod autoregister;
pub mod bootstrap;
pub mod dns;
pub mod gateway_controller;
pub mod health;
pub mod kube_ca;
pub mod leader;
pub mod metrics;
mod oci;
pub mod push;
pub mod resolver;
pub mod secure;
pub mod sources;
pub mod wasm;
pub mod webhooks;
pub mod xds;
pub mod xds_proxy;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::{debug, error, info, warn};
use translator::model::{MeshConfig, Snapshot};

use push::{DebounceConfig, Debouncer};
use sources::{Loaded, SourceError};

/// Where the config comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// The embedded example mesh (Bookinfo's platform and routing), read once.
    Embedded,
    /// A folder of Kubernetes/Istio YAML (`--config-dir`), read and watched.
    Folder(PathBuf),
    /// The Kubernetes API server, listed and watched (`--kubernetes`).
    Kubernetes(Box<sources::kube::KubeSource>),
}

/// How the daemon runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where the config comes from.
    pub source: Source,
    /// Where ADS is served (Istio's plaintext port is 15010; port 0 picks one).
    pub xds_addr: SocketAddr,
    /// Where `/metrics`, `/ready` and `/debug/*` are served (Istio's 15014);
    /// `None` serves none.
    pub monitoring_addr: Option<SocketAddr>,
    /// Push debounce.
    pub debounce: DebounceConfig,
    /// Most proxies generated and pushed to at once (Istio `PILOT_PUSH_THROTTLE`).
    pub push_throttle: usize,
    /// How long an auto-registered WorkloadEntry outlives its proxy's last
    /// connection (Istio `PILOT_WORKLOAD_ENTRY_GRACE_PERIOD`, default
    /// [`autoregister::DEFAULT_GRACE`]).
    pub workload_entry_grace: std::time::Duration,
    /// HTTP/2 keepalive and maximum connection age of both xDS ports.
    pub keepalive: xds::Keepalive,
    /// The CA and the TLS port (Istio's 15012); `None` runs neither.
    pub ca: Option<secure::CaOptions>,
    /// The admission webhooks on their TLS port (Istio's 15017); they need
    /// the CA (their certificate comes from it). `None` serves none.
    pub webhooks: Option<webhooks::WebhookOptions>,
}

/// A running daemon. Dropping it does not stop it: call [`Daemon::shutdown`].
#[derive(Debug)]
pub struct Daemon {
    /// The address ADS is served on.
    pub xds_addr: SocketAddr,
    /// The address of the monitoring port, if served.
    pub monitoring_addr: Option<SocketAddr>,
    /// The TLS port (CA API and xDS), when the CA runs.
    pub secure: Option<secure::SecurePort>,
    /// The admission webhooks' TLS address, when served.
    pub webhook_addr: Option<SocketAddr>,
    /// The daemon's metrics.
    pub metrics: Arc<metrics::Metrics>,
    /// The current snapshot, replaced on every change. Version 0 (empty)
    /// until the source has been read: with the Kubernetes source, until
    /// every watcher's first list completed.
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// Documents skipped at the last load, each naming file, object and field.
    pub errors: watch::Receiver<Arc<Vec<SourceError>>>,
    /// What each connected proxy was sent and has ACKed.
    pub sync: xds::SyncTable,
    /// True while this replica holds the leader Lease ([`leader`]); always
    /// true for the folder and embedded sources (there is one replica).
    pub leader: watch::Receiver<bool>,
    /// True once the first snapshot is published (`/ready` answers 200, and
    /// xDS streams are accepted; before, they are refused as UNAVAILABLE).
    pub ready: Arc<AtomicBool>,
    shutdown: tokio_util::sync::CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    // Held so the snapshot channel stays open even when no watcher publishes.
    _publisher: Arc<watch::Sender<Arc<Snapshot>>>,
}

impl Daemon {
    /// Starts the source, binds the xDS and monitoring ports and starts
    /// serving. The folder and embedded sources are read before this
    /// returns; the Kubernetes source syncs in the background (see
    /// [`Daemon::ready`]).
    ///
    /// # Errors
    /// An unreadable config folder, a folder that cannot be watched, an
    /// unusable Kubernetes client configuration, or an address that cannot
    /// be bound.
    pub async fn start(opts: Options) -> anyhow::Result<Daemon> {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let metrics = Arc::new(metrics::Metrics::new());
        let ready = Arc::new(AtomicBool::new(false));
        let (snap_tx, snapshots) =
            watch::channel(Arc::new(Snapshot::build(0, [], MeshConfig::default())));
        let (err_tx, errors) = watch::channel(Arc::new(Vec::new()));
        let (objects_tx, objects) = watch::channel(Arc::new(Vec::new()));
        let resolved = resolver::Resolved::new();
        let publisher = Publisher {
            snapshots: Arc::new(snap_tx),
            errors: Arc::new(err_tx),
            objects: Arc::new(objects_tx),
            warned: Arc::default(),
            ca_trust_domain: opts.ca.as_ref().map(|ca| ca.trust_domain.as_str().into()),
            resolved: resolved.clone(),
        };
        let mut tasks = Vec::new();
        let (leader_tx, leader) = watch::channel(false);
        let mut kube_client = None;
        let mut gateway_recheck = gateway_controller::RECHECK;
        let mut analysis_interval = None;
        let follow = Follow {
            publisher: publisher.clone(),
            metrics: metrics.clone(),
            token: shutdown.clone(),
            debounce: opts.debounce,
        };
        // Auto-registered WorkloadEntries join every load of the source,
        // and signal its event channel when they change.
        let registry = autoregister::Registry::new(opts.workload_entry_grace);
        let (ev_tx, ev_rx) = mpsc::channel(1);
        registry.notify(ev_tx.clone());
        // Network gateways by DNS name: resolved, and the source signalled
        // when their addresses change.
        resolved.notify(ev_tx.clone());
        tasks.push(resolver::spawn(
            resolved,
            snapshots.clone(),
            resolver::REFRESH,
            shutdown.clone(),
        ));

        match opts.source {
            Source::Embedded => {
                leader_tx.send_replace(true);
                let base = sources::embedded::load();
                publisher.publish(1, base.clone(), None);
                ready.store(true, Ordering::Relaxed);
                // Read once; followed for auto-registrations only.
                let registry = registry.clone();
                let initial = base.fingerprint();
                tasks.push(tokio::spawn(async move {
                    follow
                        .run(ev_rx, initial, || {
                            let mut loaded = base.clone();
                            registry.add_to(&mut loaded);
                            async move { Some(loaded) }
                        })
                        .await;
                }));
            }
            Source::Folder(dir) => {
                leader_tx.send_replace(true);
                let cache = Arc::new(std::sync::Mutex::new(sources::file::ParseCache::default()));
                let loaded = load_dir(dir.clone(), cache.clone()).await?;
                let initial = loaded.fingerprint();
                publisher.publish(1, loaded, None);
                ready.store(true, Ordering::Relaxed);
                let watcher = sources::file::watch(&dir, ev_tx)
                    .with_context(|| format!("cannot watch config folder {}", dir.display()))?;
                let registry = registry.clone();
                tasks.push(tokio::spawn(async move {
                    let _watcher = watcher;
                    follow
                        .run(ev_rx, initial, || {
                            let (dir, cache) = (dir.clone(), cache.clone());
                            let registry = registry.clone();
                            async move {
                                let mut loaded = load_dir(dir, cache)
                                    .await
                                    .inspect_err(
                                        |e| error!(error = %e, "keeping the last snapshot"),
                                    )
                                    .ok()?;
                                registry.add_to(&mut loaded);
                                Some(loaded)
                            }
                        })
                        .await;
                }));
            }
            Source::Kubernetes(source) => {
                let client = kube::Client::try_from(source.config.clone())
                    .context("cannot build a Kubernetes client")?;
                kube_client = Some(client.clone());
                gateway_recheck = source.gateway_recheck;
                analysis_interval = source.analysis_interval;
                if let Some(identity) = source.leader_identity.clone() {
                    tasks.push(tokio::spawn(leader::campaign(
                        client.clone(),
                        source.namespace.clone(),
                        identity,
                        leader_tx,
                        shutdown.clone(),
                    )));
                }
                let watched = sources::kube::watched();
                info!(collections = watched.len(), "watching the Kubernetes API");
                let store = Arc::new(std::sync::Mutex::new(sources::kube::Store::new(
                    watched.len(),
                )));
                let mut ev_rx = ev_rx;
                // Entries go to the API server, so that every replica serves them.
                tasks.push(
                    registry.write_to(
                        client.clone(),
                        source
                            .leader_identity
                            .clone()
                            .unwrap_or_else(|| "istiod".to_owned()),
                        shutdown.clone(),
                    ),
                );
                // The leader sweeps up entries a stopped replica left.
                let watched_entries = {
                    let store = store.clone();
                    move || {
                        sources::kube::lock(&store)
                            .loaded()
                            .shared_objects()
                            .filter(|o| matches!(***o, crds::Object::WorkloadEntry(_)))
                            .cloned()
                            .collect()
                    }
                };
                tasks.push(tokio::spawn(autoregister::clean_up(
                    client.clone(),
                    watched_entries,
                    leader.clone(),
                    opts.workload_entry_grace,
                    opts.keepalive.max_connection_age,
                    shutdown.clone(),
                )));
                let registry = registry.clone();
                tasks.extend(sources::kube::spawn(
                    client,
                    watched,
                    store.clone(),
                    ev_tx,
                    shutdown.clone(),
                ));
                let ready = ready.clone();
                tasks.push(tokio::spawn(async move {
                    // Not ready, and no config served, until every first list is in.
                    while !sources::kube::lock(&store).synced() {
                        let event = tokio::select! {
                            e = ev_rx.recv() => e,
                            _ = follow.token.cancelled() => None,
                        };
                        if event.is_none() {
                            return;
                        }
                    }
                    let loaded = sources::kube::lock(&store).loaded();
                    let initial = loaded.fingerprint();
                    follow.publisher.publish(1, loaded, None);
                    ready.store(true, Ordering::Relaxed);
                    info!("Kubernetes caches synced; ready");
                    follow
                        .run(ev_rx, initial, || {
                            let mut loaded = sources::kube::lock(&store).loaded();
                            registry.add_to(&mut loaded);
                            async move { Some(loaded) }
                        })
                        .await;
                }));
            }
        }
        let publisher = publisher.snapshots;
        // The Gateway API's deployments and status, written by the leader.
        if let Some(client) = kube_client.clone() {
            tasks.push(tokio::spawn(gateway_controller::run(
                client,
                snapshots.clone(),
                leader.clone(),
                shutdown.clone(),
                gateway_recheck,
            )));
        }
        // Analysis results in the Istio objects' status, by the leader.
        if let (Some(client), Some(interval)) = (kube_client.clone(), analysis_interval) {
            tasks.push(tokio::spawn(analysis_status::run(
                client,
                objects.clone(),
                errors.clone(),
                leader.clone(),
                shutdown.clone(),
                interval,
            )));
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
        )
        .with_keepalive(opts.keepalive)
        .with_registry(registry)
        .gated(ready.clone());
        let sync = ads.sync_table();
        let secure = match &opts.ca {
            Some(ca) => {
                let (port, ca_tasks) =
                    secure::start(ca, ads.clone(), shutdown.clone(), kube_client.clone()).await?;
                tasks.extend(ca_tasks);
                if let Some(client) = kube_client.clone()
                    && opts.webhooks.is_some()
                {
                    tasks.push(tokio::spawn(kube_ca::keep_webhook_ca_bundles(
                        client,
                        port.authority.root_pem().into(),
                        leader.clone(),
                        shutdown.clone(),
                    )));
                }
                if let Some(client) = kube_client.clone() {
                    tasks.push(tokio::spawn(kube_ca::distribute_root(
                        client,
                        port.authority.root_pem().into(),
                        snapshots.clone(),
                        leader.clone(),
                        shutdown.clone(),
                    )));
                }
                Some(port)
            }
            None => None,
        };
        let webhook_addr = match (&opts.webhooks, &secure) {
            (Some(hooks), Some(port)) => {
                let (addr, hook_tasks) = webhooks::start(
                    hooks.clone(),
                    port.serving.clone(),
                    snapshots.clone(),
                    shutdown.clone(),
                )
                .await?;
                tasks.extend(hook_tasks);
                Some(addr)
            }
            (Some(_), None) => {
                anyhow::bail!("the webhooks need the CA (their TLS certificate comes from it)")
            }
            (None, _) => None,
        };
        let token = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let served = ads
                .server()
                .add_service(ads.into_service())
                .serve_with_incoming_shutdown(
                    futures::StreamExt::map(TcpListenerStream::new(listener), |accepted| {
                        accepted.map(xds::read_ahead::ReadAhead::new)
                    }),
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
                objects: objects.clone(),
                errors: errors.clone(),
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
        Ok(Daemon {
            xds_addr,
            monitoring_addr,
            secure,
            webhook_addr,
            metrics,
            snapshots,
            errors,
            sync,
            leader,
            ready,
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

/// Reads the folder off the runtime's worker threads.
async fn load_dir(
    dir: PathBuf,
    cache: Arc<std::sync::Mutex<sources::file::ParseCache>>,
) -> anyhow::Result<Loaded> {
    tokio::task::spawn_blocking(move || {
        let mut cache = cache
            .lock()
            .map_err(|_| anyhow::anyhow!("parse cache poisoned"))?;
        sources::file::load_dir(&dir, &mut cache)
            .with_context(|| format!("cannot read config folder {}", dir.display()))
    })
    .await
    .context("config load task failed")?
}

/// Publishes snapshots (and the errors of their load).
#[derive(Clone, Debug)]
struct Publisher {
    snapshots: Arc<watch::Sender<Arc<Snapshot>>>,
    errors: Arc<watch::Sender<Arc<Vec<SourceError>>>>,
    /// The objects the published snapshot was built from.
    objects: Arc<watch::Sender<Arc<Vec<sources::Entry>>>>,
    /// The objects of the last snapshot, by address: their unsupported
    /// fields were logged when they first came (the sources share unchanged
    /// objects from one load to the next).
    warned: Arc<std::sync::Mutex<Seen>>,
    /// The CA's trust domain (`--trust-domain`) when it runs: the mesh's
    /// unless the mesh config names another, so that clients expect the
    /// identities it issues.
    ca_trust_domain: Option<Arc<str>>,
    /// Network gateway names and their addresses ([`resolver`]).
    resolved: Arc<resolver::Resolved>,
}

/// Objects by address, held so that an address is not reused while listed.
type Seen = std::collections::HashMap<usize, Arc<crds::Object>>;

/// A snapshot built and not yet published ([`Publisher::build`]).
struct Built {
    snap: Snapshot,
    /// The load's errors, published with it.
    errors: Vec<SourceError>,
    /// The objects it was built from (for `/debug/analyze`).
    objects: Vec<sources::Entry>,
    /// How long building the snapshot took, and its change set after it.
    build_time: std::time::Duration,
    changes_time: std::time::Duration,
}

impl Publisher {
    /// Whether the published snapshot was built with the gateway names'
    /// addresses as they are now.
    fn resolved_as_published(&self) -> bool {
        Arc::ptr_eq(
            &self.snapshots.borrow().mesh.networks.resolved,
            &self.resolved.current(),
        )
    }

    /// Builds snapshot `version` from `loaded` and publishes it. With
    /// `first_event` (when the change that caused it was first seen), the
    /// snapshot carries its change set against the previous one, so only
    /// affected proxies and types are pushed.
    fn publish(&self, version: u64, loaded: Loaded, first_event: Option<tokio::time::Instant>) {
        let built = self.build(version, loaded, first_event.is_some());
        self.send(built, first_event);
    }

    /// Builds snapshot `version` from `loaded`; `with_changes`: with its
    /// change set against the snapshot published now (and what that one
    /// memoised for the services the change did not touch), which must
    /// still be the published one when this is sent. The unsupported
    /// fields of objects no build has read before are logged here (see
    /// [`build`]), so a build that is never sent logs those too, once per
    /// object; the load's errors and the snapshot's warnings wait for
    /// [`Publisher::send`].
    fn build(&self, version: u64, loaded: Loaded, with_changes: bool) -> Built {
        let started = std::time::Instant::now();
        let previous = self.snapshots.borrow().clone();
        let (mut snap, errors, objects) = match self.warned.lock() {
            Ok(mut seen) => build(
                version,
                loaded,
                &mut seen,
                &previous,
                (self.ca_trust_domain.as_deref(), self.resolved.current()),
            ),
            Err(_) => build(
                version,
                loaded,
                &mut Seen::new(),
                &previous,
                (self.ca_trust_domain.as_deref(), self.resolved.current()),
            ),
        };
        let build_time = started.elapsed();
        if with_changes {
            let changes = translator::changes::ChangeSet::between(&previous, &snap);
            // What the last snapshot memoised for what did not change is
            // kept, so that a change's first config key builds only what
            // it touched.
            snap.inherit_memos(&previous, &changes);
            snap.changes = Some(Arc::new(changes));
        }
        Built {
            snap,
            errors,
            objects,
            build_time,
            changes_time: started.elapsed() - build_time,
        }
    }

    /// Publishes a built snapshot (the load's errors and the snapshot's
    /// warnings are logged here, once per published snapshot). `first_event`: when the change
    /// that caused it was first seen.
    fn send(&self, built: Built, first_event: Option<tokio::time::Instant>) {
        let Built {
            mut snap,
            errors,
            objects,
            build_time,
            changes_time,
        } = built;
        for e in &errors {
            error!(file = %e.file.display(), document = e.document, error = %e.error, "invalid config skipped");
        }
        for w in &snap.warnings {
            warn!(warning = %w, "config read but not acted on");
        }
        snap.changed_at = first_event.map(tokio::time::Instant::into_std);
        snap.published_at = Some(std::time::Instant::now());
        info!(
            version = snap.version,
            services = snap.services.len(),
            errors = errors.len(),
            build_ms = build_time.as_secs_f64() * 1e3,
            changes_ms = changes_time.as_secs_f64() * 1e3,
            since_change_ms = first_event.map(|f| f.elapsed().as_secs_f64() * 1e3),
            "config snapshot published"
        );
        self.snapshots.send_replace(Arc::new(snap));
        self.errors.send_replace(Arc::new(errors));
        self.objects.send_replace(Arc::new(objects));
    }
}

/// The loop every watched source shares: debounce change signals, reload
/// and build the next snapshot while they settle, publish it when the
/// debounce fires.
struct Follow {
    publisher: Publisher,
    metrics: Arc<metrics::Metrics>,
    token: tokio_util::sync::CancellationToken,
    debounce: DebounceConfig,
}

impl Follow {
    /// Runs until the token is cancelled or `events` closes. `load` gives
    /// the source's current objects (`None`: unreadable, keep the last
    /// snapshot); a load made of what the last published one was
    /// (`initial` at first) publishes nothing. Versions count up from 2 (1
    /// is the initial load). The load and the build run a third of the
    /// quiet period before the debounce fires, and again if an event comes
    /// after they began ([`Debouncer::next_prepared`]).
    async fn run<F, Fut>(
        self,
        events: mpsc::Receiver<()>,
        initial: sources::LoadFingerprint,
        mut load: F,
    ) where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<Loaded>>,
    {
        let mut debouncer = Debouncer::new(events, self.debounce);
        let mut version = 1;
        // What the last snapshot was made of.
        let mut last = initial;
        loop {
            // The source is read and the snapshot built while the burst
            // settles (`next_prepared`), so the push starts when the
            // debounce fires rather than a read and a build later.
            let burst = {
                let (publisher, last, next) = (&self.publisher, &last, version + 1);
                let load = &mut load;
                let prepare = move || {
                    let loading = load();
                    async move {
                        let reading = std::time::Instant::now();
                        let loaded = loading.await?;
                        debug!(
                            read_ms = reading.elapsed().as_secs_f64() * 1e3,
                            "config source read"
                        );
                        // Nothing it reads changed (nor the gateway names'
                        // addresses): no new version, and no push, as
                        // istiod drops an update whose object is unchanged.
                        if loaded.same_as(last) && publisher.resolved_as_published() {
                            return Some(None);
                        }
                        let fingerprint = loaded.fingerprint();
                        Some(Some((fingerprint, publisher.build(next, loaded, true))))
                    }
                };
                tokio::select! {
                    b = debouncer.next_prepared(prepare) => b,
                    _ = self.token.cancelled() => None,
                }
            };
            let Some(burst) = burst else {
                break;
            };
            self.metrics
                .debounce_time
                .observe(metrics::secs(burst.first.elapsed()));
            let Some(prepared) = burst.prepared else {
                // Unreadable: the last snapshot stays.
                continue;
            };
            let Some((fingerprint, built)) = prepared else {
                debug!("config source unchanged; nothing published");
                continue;
            };
            last = fingerprint;
            self.metrics
                .triggers
                .get_or_create(&metrics::TypeLabel { r#type: "config" })
                .inc_by(burst.merged as u64);
            version += 1;
            self.publisher.send(built, Some(burst.first));
        }
    }
}

/// Builds a snapshot, logging (and returning) every skipped document.
/// The entries whose objects are not in `seen` (new or changed since the
/// last load); `seen` becomes these entries' objects.
fn newly_seen<'a>(
    entries: impl IntoIterator<Item = &'a sources::Entry>,
    seen: &mut Seen,
) -> Vec<&'a sources::Entry> {
    let previous = std::mem::take(seen);
    let mut fresh = Vec::new();
    for entry in entries {
        let at = Arc::as_ptr(&entry.object) as usize;
        seen.insert(at, entry.object.clone());
        if !previous.contains_key(&at) {
            fresh.push(entry);
        }
    }
    fresh
}

/// Objects in `seen` (the last build's) had their unsupported fields
/// logged then; `seen` becomes this build's objects. Services built
/// from the same objects as in `previous` are taken from it.
fn build(
    version: u64,
    mut loaded: Loaded,
    seen: &mut Seen,
    previous: &Snapshot,
    (ca_trust_domain, resolved): (
        Option<&str>,
        Arc<std::collections::BTreeMap<String, Vec<String>>>,
    ),
) -> (Snapshot, Vec<SourceError>, Vec<sources::Entry>) {
    loaded.drop_orphan_delegates();
    for entry in newly_seen(
        loaded
            .entries
            .iter()
            .filter(|e| crds::support::inspected(&e.object)),
        seen,
    ) {
        for (field, reason) in crds::support::unsupported(&entry.object) {
            let meta = entry.object.metadata();
            warn!(
                file = %entry.file.display(), document = entry.document, kind = entry.object.kind(),
                name = %format!("{}/{}", meta.namespace.as_deref().unwrap_or(""), meta.name.as_deref().unwrap_or("")),
                %field, %reason, "config field not acted on"
            );
        }
    }
    let mut mesh = MeshConfig::default();
    mesh.networks.resolved = resolved;
    if let Some(td) = ca_trust_domain {
        td.clone_into(&mut mesh.trust_domain);
    }
    let mut snap = Snapshot::rebuild(version, loaded.shared_objects(), mesh, previous);
    if let Some(ca) = ca_trust_domain.filter(|ca| *ca != snap.mesh.trust_domain) {
        // The CA issues in its own trust domain: a mesh config naming
        // another has clients expect IDs no workload carries.
        let (ns, name) = crds::mesh::MESH_CONFIGMAP;
        snap.warnings.push(translator::ConfigWarning::new(
            "ConfigMap",
            format!("{ns}/{name}"),
            "data.mesh.trustDomain".into(),
            format!(
                "{:?} differs from the CA's trust domain {ca:?} (--trust-domain), which issues the identities; \
                 list the CA's in trustDomainAliases during a migration",
                snap.mesh.trust_domain
            ),
        ));
    }
    (snap, loaded.errors, loaded.entries)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn only_new_or_changed_objects_are_looked_at_again() {
        let service = |port: u16| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: a}}\nspec: {{ports: [{{port: {port}}}]}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: b}}\nspec: {{ports: [{{port: 80}}]}}\n"
            )
        };
        let mut first = Loaded::default();
        first.add_text("a.yaml".into(), &service(80));
        let mut seen = Seen::new();
        assert_eq!(newly_seen(&first.entries, &mut seen).len(), 2);
        // The same objects (shared, as the sources keep them): none.
        assert!(newly_seen(&first.entries, &mut seen).is_empty());
        // One object replaced: that one only.
        let mut second = first.clone();
        let mut changed = Loaded::default();
        changed.add_text("a.yaml".into(), &service(81));
        second.entries[0] = changed.entries.remove(0);
        let fresh = newly_seen(&second.entries, &mut seen);
        assert_eq!(fresh.len(), 1);
        assert!(Arc::ptr_eq(&fresh[0].object, &second.entries[0].object));
        assert_eq!(seen.len(), 2, "the replaced object is let go");
    }
}
