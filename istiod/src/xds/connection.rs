//! One proxy's xDS stream, State of the World or Delta: the same state and
//! the same decisions, two wire formats.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{debug, info, warn};
use translator::changes::Effect;
use translator::model::{Proxy, Snapshot};
use translator::{
    CLUSTER_TYPE, ConfigWarning, ENDPOINT_TYPE, EncodedOutput, LISTENER_TYPE, PUSH_ORDER,
    ROUTE_TYPE,
};

use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;

use super::names::{self, NameMap, Versions};
use super::wire::{self, EncodedResource, SotwRequest};
use super::{Converged, ProxySync, SyncRow, SyncTable, proxy_from_node, record};
use crate::metrics::{GenerationTimer, Metrics, VersionLabel, secs};

/// A request of either protocol, as the connection needs it.
pub(super) struct Req {
    node: Option<envoy_types::pb::envoy::config::core::v3::Node>,
    type_url: String,
    nonce: String,
    /// SotW: the version the proxy has accepted.
    version_info: String,
    error: Option<String>,
    names: Names,
}

enum Names {
    /// SotW: the full list of names wanted (none: wildcard for CDS/LDS),
    /// decoded only when it differs from the last one.
    Replace(wire::SotwNames),
    /// Delta: changes to the subscription, and on reconnect what the proxy has.
    Change {
        subscribe: Vec<String>,
        unsubscribe: Vec<String>,
        initial: HashMap<String, String>,
    },
}

impl Req {
    pub(super) fn from_sotw(r: SotwRequest) -> Req {
        let head = r.head;
        Req {
            names: Names::Replace(r.names),
            node: head.node,
            type_url: head.type_url,
            nonce: head.response_nonce,
            version_info: head.version_info,
            error: head.error_detail.map(|s| s.message),
        }
    }

    pub(super) fn from_delta(r: DeltaDiscoveryRequest) -> Req {
        Req {
            node: r.node,
            type_url: r.type_url,
            nonce: r.response_nonce,
            version_info: String::new(),
            error: r.error_detail.map(|s| s.message),
            names: Names::Change {
                subscribe: r.resource_names_subscribe,
                unsubscribe: r.resource_names_unsubscribe,
                initial: r.initial_resource_versions,
            },
        }
    }
}

/// Per type URL: the subscription and what was sent.
#[derive(Debug, Default)]
struct TypeState {
    /// Subscribed to everything (CDS/LDS by default, or `*`).
    wildcard: bool,
    /// Names subscribed to (besides wildcard; versions unused).
    names: NameMap,
    /// Nonce of the last response sent.
    nonce: String,
    /// Version of the last response sent (the snapshot's).
    sent_version: String,
    /// Resources the proxy has (or was sent), by name: version hash.
    sent: NameMap,
    /// SotW: the digest of the names the last request gave, which `names` holds.
    names_digest: Option<u128>,
}

impl TypeState {
    /// Answered before, and now watching nothing: not a wildcard, no name.
    fn unwatched(&self) -> bool {
        !self.nonce.is_empty() && !self.wildcard && self.names.entries().next().is_none()
    }
}

/// Where a connection's responses go.
pub(super) struct Sink {
    /// The stream's body.
    pub(super) tx: wire::Outgoing,
    /// Delta xDS (else State of the World).
    pub(super) delta: bool,
}

pub(super) struct Connection {
    id: u64,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    sink: Sink,
    /// The proxy, shared with its [`ProxySync`] entry.
    proxy: Option<Arc<Proxy>>,
    node_id: String,
    snapshot: Arc<Snapshot>,
    output: Option<Arc<Generated>>,
    types: super::ByType<TypeState>,
    /// Clusters sent since their endpoints last were: a sent (or re-sent)
    /// EDS cluster warms until its ClusterLoadAssignment arrives, so it is
    /// sent next even when unchanged (as istiod pushes EDS after CDS).
    awaiting_endpoints: BTreeSet<Arc<str>>,
    nonces: u64,
    sync: SyncTable,
    /// This proxy's row of `sync`, once it has identified itself.
    row: Option<SyncRow>,
    metrics: Arc<Metrics>,
    /// `pilot_xds` label of this proxy, once connected.
    version_label: Option<VersionLabel>,
    /// Snapshot version whose convergence was last recorded.
    converged: u64,
    shared: Arc<Shared>,
    /// The authenticated caller (TLS port), if streams are authenticated.
    caller: Option<ca::SpiffeId>,
    /// Its auto-registered WorkloadEntry, held while connected (boxed: most
    /// proxies have none).
    registration: Option<Box<crate::autoregister::Registration>>,
}

/// One type's resources, encoded once: (name, version hash, encoded
/// `Any`), in name order.
type Encoded = Vec<EncodedResource>;

/// A generated config with each type encoded once, shared by every
/// connection whose proxy has the same [`Proxy::config_key`].
#[derive(Debug)]
pub(super) struct Generated {
    /// What the translator could not apply for this proxy (logged on change).
    warnings: Vec<ConfigWarning>,
    encoded: HashMap<&'static str, Arc<Encoded>>,
    /// Per type, the names and versions of `encoded` (shared by the
    /// connections that have exactly these, see [`NameMap`]).
    versions: HashMap<&'static str, Arc<Versions>>,
    /// Positions in the EDS encoding by a hash of the service hostname (the
    /// last field of `outbound|port|subset|host`), sorted, for
    /// endpoint-only pushes: 16 bytes per assignment, where a map from
    /// hostname was ~100 KiB per config at 1000 services.
    eds_by_host: Vec<(u64, usize)>,
}

fn host_hash(host: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(host.as_bytes())
}

fn eds_index(eds: &Encoded) -> Vec<(u64, usize)> {
    let mut by_host: Vec<(u64, usize)> = eds
        .iter()
        .enumerate()
        .filter_map(|(i, (name, _, _))| Some((host_hash(name.rsplit_once('|')?.1), i)))
        .collect();
    by_host.sort_unstable();
    by_host
}

impl Generated {
    /// Sorts each type of `output` by name and passes it through `intern`.
    fn new(mut output: EncodedOutput, intern: &dyn Fn(&mut Encoded)) -> Generated {
        let encoded: HashMap<&'static str, Arc<Encoded>> = PUSH_ORDER
            .iter()
            .map(|t| {
                let mut e = output.take(t);
                e.sort_by(|a, b| a.0.cmp(&b.0));
                intern(&mut e);
                (*t, Arc::new(e))
            })
            .collect();
        let eds_by_host = encoded
            .get(ENDPOINT_TYPE)
            .map(|e| eds_index(e))
            .unwrap_or_default();
        Generated {
            warnings: output.warnings,
            versions: versions_of(&encoded),
            encoded,
            eds_by_host,
        }
    }

    /// This config with the endpoint assignments `fresh` (encoded)
    /// replacing or joining its own; the other types are shared with
    /// `self`.
    fn with_endpoints(&self, mut fresh: Encoded, intern: &dyn Fn(&mut Encoded)) -> Generated {
        let mut eds = Encoded::clone(&self.resources(ENDPOINT_TYPE));
        intern(&mut fresh);
        for entry in fresh {
            match eds.binary_search_by(|e| e.0.cmp(&entry.0)) {
                Ok(i) => eds[i] = entry,
                Err(i) => eds.insert(i, entry),
            }
        }
        let eds_by_host = eds_index(&eds);
        let mut versions = self.versions.clone();
        versions.insert(ENDPOINT_TYPE, versions_of_type(&eds));
        let mut encoded = self.encoded.clone();
        encoded.insert(ENDPOINT_TYPE, Arc::new(eds));
        Generated {
            warnings: self.warnings.clone(),
            encoded,
            versions,
            eds_by_host,
        }
    }

    /// The assignments in `eds` (this config's EDS encoding) of the
    /// service `host`.
    fn endpoints_of<'a>(
        &'a self,
        eds: &'a Encoded,
        host: &'a str,
    ) -> impl Iterator<Item = &'a EncodedResource> + 'a {
        let hash = host_hash(host);
        let start = self.eds_by_host.partition_point(|(h, _)| *h < hash);
        self.eds_by_host[start..]
            .iter()
            .take_while(move |(h, _)| *h == hash)
            .filter_map(|(_, i)| eds.get(*i))
            .filter(move |(name, _, _)| name.rsplit_once('|').is_some_and(|(_, h)| h == host))
    }

    fn resources(&self, type_url: &str) -> Arc<Encoded> {
        self.encoded.get(type_url).cloned().unwrap_or_default()
    }

    fn versions(&self, type_url: &str) -> Arc<Versions> {
        self.versions
            .get(type_url)
            .cloned()
            .unwrap_or_else(|| Arc::new([]))
    }
}

fn versions_of(
    encoded: &HashMap<&'static str, Arc<Encoded>>,
) -> HashMap<&'static str, Arc<Versions>> {
    encoded
        .iter()
        .map(|(t, e)| (*t, versions_of_type(e)))
        .collect()
}

fn versions_of_type(encoded: &Encoded) -> Arc<Versions> {
    encoded.iter().map(|(n, v, _)| (n.clone(), *v)).collect()
}

type Key = translator::model::ConfigKey;

/// Generated configs for one snapshot version: full ones by config key, and
/// endpoint-patched ones by (config key, version patched from).
#[derive(Debug, Default)]
struct Cache {
    version: u64,
    full: HashMap<Key, Slot>,
    patched: HashMap<(Key, u64), Slot>,
}

/// One cache entry: empty while the first connection that needs it makes
/// it (see [`Shared::cached`]).
type Slot = Arc<tokio::sync::OnceCell<Arc<Generated>>>;

/// Encoded resources of one snapshot version by (name, version hash): a
/// resource that several config keys generate alike (most clusters and
/// load assignments look the same from every namespace) is kept once.
/// Without it, memory grew with namespaces x services: at 3000 services in
/// 30 namespaces, ~6 MiB per namespace's config.
#[derive(Debug, Default)]
struct Interner {
    version: u64,
    resources: HashMap<(Arc<str>, u64), Bytes>,
}

/// What all connections share: the generation cache (proxies with the same
/// [`Proxy::config_key`] get the same resources, generated and encoded once
/// per snapshot, as istiod's XDS cache), the resources interned across
/// config keys, and the push throttle.
#[derive(Debug)]
pub(super) struct Shared {
    cache: std::sync::Mutex<Cache>,
    interner: std::sync::Mutex<Interner>,
    throttle: tokio::sync::Semaphore,
    /// Where each generation's time goes (`istiod_xds_generation_seconds`).
    metrics: Arc<Metrics>,
    /// Where proxies asking for it are auto-registered.
    pub(super) registry: std::sync::OnceLock<Arc<crate::autoregister::Registry>>,
}

impl Shared {
    pub(super) fn new(push_throttle: usize, metrics: Arc<Metrics>) -> Shared {
        Shared {
            cache: std::sync::Mutex::new(Cache::default()),
            interner: std::sync::Mutex::new(Interner::default()),
            throttle: tokio::sync::Semaphore::new(push_throttle.max(1)),
            metrics,
            registry: std::sync::OnceLock::new(),
        }
    }

    /// Replaces each resource of `encoded` (generated from snapshot
    /// `version`) by the same one already generated for another config
    /// key, name and bytes alike, so that it is held once.
    fn intern(&self, version: u64, encoded: &mut Encoded) {
        let Ok(mut interner) = self.interner.lock() else {
            return;
        };
        if interner.version != version {
            if version < interner.version {
                // An older snapshot's config, on its way out.
                return;
            }
            *interner = Interner {
                version,
                ..Default::default()
            };
        }
        for (name, hash, bytes) in encoded.iter_mut() {
            match interner.resources.entry((name.clone(), *hash)) {
                std::collections::hash_map::Entry::Occupied(o) => {
                    // Memoised resources are the very same bytes:
                    // compared by address before by content.
                    if o.get().as_ptr() == bytes.as_ptr() && o.get().len() == bytes.len()
                        || *o.get() == *bytes
                    {
                        *bytes = o.get().clone();
                        *name = o.key().0.clone();
                    }
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(bytes.clone());
                }
            }
        }
    }

    /// The entry `slot` picks of the cache for snapshot `version`, made
    /// by `make` if it is not made yet. The first connection to need an
    /// entry makes it; the others that need it meanwhile wait for it
    /// (yielding their worker) rather than make it again: two connections
    /// of one config key woken by the same change made it twice (up to
    /// 40 % more generation at 2000 proxies in 10 config keys). `make` runs outside
    /// the cache's lock and, having no await in it, runs to its end.
    async fn cached(
        &self,
        version: u64,
        slot: impl FnOnce(&mut Cache) -> Slot,
        make: impl FnOnce() -> Generated,
    ) -> Arc<Generated> {
        let cell = match self.cache.lock() {
            Ok(mut cache) if cache.version <= version => {
                if cache.version != version {
                    *cache = Cache {
                        version,
                        ..Default::default()
                    };
                }
                slot(&mut cache)
            }
            // A newer snapshot is cached already (this one is on its way
            // out), or the lock is poisoned: made for this caller alone.
            _ => Slot::default(),
        };
        cell.get_or_init(|| async { Arc::new(make()) })
            .await
            .clone()
    }

    /// The proxy's config for `snap`.
    async fn output(&self, snap: &Snapshot, proxy: &Proxy) -> Arc<Generated> {
        let key = proxy.config_key(snap);
        self.cached(
            snap.version,
            |c| c.full.entry(key).or_default().clone(),
            || {
                let kind = if snap.nothing_memoised() {
                    "first_key"
                } else {
                    "full"
                };
                let timer = GenerationTimer::start();
                let output = translator::generate_encoded(snap, proxy);
                self.metrics.observe_generation(kind, timer);
                Generated::new(output, &|e| self.intern(snap.version, e))
            },
        )
        .await
    }

    /// `base` (generated from snapshot `from`) with the endpoints of `hosts` regenerated for `snap`.
    async fn with_endpoints(
        &self,
        snap: &Snapshot,
        proxy: &Proxy,
        base: &Generated,
        from: u64,
        hosts: &BTreeSet<String>,
    ) -> Arc<Generated> {
        let key = (proxy.config_key(snap), from);
        self.cached(
            snap.version,
            |c| c.patched.entry(key).or_default().clone(),
            || {
                let timer = GenerationTimer::start();
                let fresh = translator::generate_endpoints_encoded(snap, proxy, hosts);
                self.metrics.observe_generation("endpoints", timer);
                base.with_endpoints(fresh, &|e| self.intern(snap.version, e))
            },
        )
        .await
    }
}

/// The connection has ended (client gone, or a fatal request).
struct Closed;

/// What ends a connection's stream besides the proxy.
pub(super) struct Ends {
    /// The daemon shutting down.
    pub drain: CancellationToken,
    /// The stream's maximum age (see [`super::Keepalive`]); `None`: none.
    pub age: Option<std::time::Duration>,
}

/// What woke a connection.
#[allow(
    clippy::large_enum_variant,
    reason = "made and consumed between two awaits, never held in the task's future"
)]
enum Event {
    /// The daemon is shutting down, or the stream reached its maximum age.
    Drain,
    /// The next request, a stream error, or the end of the stream.
    Request(Option<Result<Req, Status>>),
    /// A new snapshot was published (`false`: the publisher is gone).
    Snapshot(bool),
}

impl Connection {
    /// The connection's number (1, 2, ... in the order of their streams).
    pub(super) fn id(&self) -> u64 {
        self.id
    }

    pub(super) fn new(
        id: u64,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        sink: Sink,
        sync: SyncTable,
        metrics: Arc<Metrics>,
        shared: Arc<Shared>,
        caller: Option<ca::SpiffeId>,
    ) -> Self {
        let snapshot = snapshots.borrow().clone();
        Connection {
            id,
            snapshots,
            sink,
            proxy: None,
            node_id: String::new(),
            snapshot,
            output: None,
            types: Default::default(),
            awaiting_endpoints: BTreeSet::new(),
            nonces: 0,
            sync,
            row: None,
            metrics,
            version_label: None,
            converged: 0,
            shared,
            caller,
            registration: None,
        }
    }

    pub(super) async fn run(
        mut self,
        mut requests: impl Stream<Item = Result<Req, Status>> + Unpin,
        ends: Ends,
    ) {
        // Once the publisher is gone no new snapshot can come; requests are still served.
        let mut publishing = true;
        let aged = async {
            match ends.age {
                Some(age) => tokio::time::sleep(age).await,
                None => std::future::pending().await,
            }
        };
        let mut aged = std::pin::pin!(aged);
        loop {
            let event = tokio::select! {
                _ = ends.drain.cancelled() => Event::Drain,
                () = &mut aged => {
                    debug!(conn = self.id, node = %self.node_id, "stream at its maximum age");
                    Event::Drain
                }
                req = requests.next() => Event::Request(req),
                changed = self.snapshots.changed(), if publishing => Event::Snapshot(changed.is_ok()),
            };
            if matches!(event, Event::Snapshot(false)) {
                publishing = false;
                continue;
            }
            if self.step(event).await.is_err() {
                break;
            }
        }
        if let Some(label) = &self.version_label {
            self.metrics.xds_clients.get_or_create(label).dec();
        }
        if self.proxy.is_some() {
            info!(conn = self.id, node = %self.node_id, "proxy disconnected");
            if let Some(row) = &self.row {
                self.sync.remove(&self.node_id, row);
            }
        }
    }

    /// The work of one event, as a boxed future: the connection task's own
    /// future then holds only the connection and its wait for the next
    /// event: 1.1 KiB, against 2.1 KiB when each event's work was awaited
    /// inline, held for the connection's life.
    fn step(
        &mut self,
        event: Event,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Closed>> + Send + '_>> {
        match event {
            Event::Request(Some(Ok(req))) => Box::pin(self.on_request(req)),
            Event::Request(Some(Err(status))) => {
                debug!(conn = self.id, node = %self.node_id, %status, "xDS stream error");
                Box::pin(std::future::ready(Err(Closed)))
            }
            Event::Request(None) | Event::Drain => Box::pin(std::future::ready(Err(Closed))),
            Event::Snapshot(_) => {
                let snap = self.snapshots.borrow_and_update().clone();
                Box::pin(self.on_snapshot(snap))
            }
        }
    }

    async fn on_request(&mut self, req: Req) -> Result<(), Closed> {
        if self.proxy.is_none() {
            let proxy = match req.node.as_ref().map(proxy_from_node) {
                Some(Ok(p)) => p,
                Some(Err(e)) => return self.fail(Status::invalid_argument(e.to_string())).await,
                None => {
                    return self
                        .fail(Status::invalid_argument(
                            "the first request must carry a node",
                        ))
                        .await;
                }
            };
            self.node_id = req.node.as_ref().map(|n| n.id.clone()).unwrap_or_default();
            // Istio's rule: an authenticated caller gets config only for
            // proxies of its own namespace.
            if let Some(caller) = &self.caller
                && caller.namespace != proxy.namespace
            {
                warn!(conn = self.id, node = %self.node_id, %caller, "xDS refused: proxy outside the caller's namespace");
                return self
                    .fail(Status::permission_denied(format!(
                        "authorization failed: {caller} may not get config for proxy {} in namespace {}",
                        self.node_id, proxy.namespace
                    )))
                    .await;
            }
            if let (Some(registry), Some(workload)) = (
                self.shared.registry.get(),
                req.node
                    .as_ref()
                    .and_then(|n| super::workload_of(n, &proxy)),
            ) {
                let registered = registry.connect(&self.snapshots.borrow(), &workload);
                match registered {
                    Ok(r) => self.registration = Some(Box::new(r)),
                    Err(e) => {
                        warn!(conn = self.id, node = %self.node_id, error = %e, "xDS refused");
                        return self.fail(Status::failed_precondition(e.to_string())).await;
                    }
                }
            }
            info!(conn = self.id, node = %self.node_id, delta = self.sink.delta, "proxy connected");
            let proxy = Arc::new(proxy);
            self.row = Some(self.sync.insert(
                &self.node_id,
                ProxySync {
                    proxy: Some(proxy.clone()),
                    ..Default::default()
                },
            ));
            let version = req
                .node
                .as_ref()
                .and_then(|n| match &n.user_agent_version_type {
                    Some(UserAgentVersionType::UserAgentBuildVersion(b)) => b
                        .version
                        .as_ref()
                        .map(|v| format!("{}.{}.{}", v.major_number, v.minor_number, v.patch)),
                    Some(UserAgentVersionType::UserAgentVersion(v)) => Some(v.clone()),
                    None => None,
                })
                .unwrap_or_else(|| "unknown".into());
            let label = VersionLabel { version };
            self.metrics.xds_clients.get_or_create(&label).inc();
            self.version_label = Some(label);
            self.proxy = Some(proxy);
            self.regenerate().await;
        }
        let type_url = req.type_url.clone();
        if type_url == crate::autoregister::HEALTH_TYPE {
            // The agent's probe result, for the proxy's auto-registered
            // entry (Istio's `handleWorkloadHealthcheck`); nothing is sent back.
            match &self.registration {
                Some(r) => r.report_health(req.error.is_none(), req.error),
                None => {
                    debug!(node = %self.node_id, "health report from a proxy without an auto-registered WorkloadEntry; ignored")
                }
            }
            return Ok(());
        }
        if !PUSH_ORDER.contains(&type_url.as_str()) {
            debug!(node = %self.node_id, %type_url, "request for a type this server does not serve");
            return Ok(());
        }
        let first = !self.types.contains_key(&type_url);
        // What is generated of this type: the names subscriptions share.
        let all = self
            .output
            .as_ref()
            .map(|o| o.versions(&type_url))
            .unwrap_or_else(|| Arc::new([]));
        // The agent's name table, one resource named "", is asked for by
        // type alone too, as Istio's agent asks.
        let wildcard_type = type_url == CLUSTER_TYPE
            || type_url == LISTENER_TYPE
            || type_url == translator::NAME_TABLE_TYPE;
        let state = self.types.entry_or_default(&type_url);
        if !req.nonce.is_empty() {
            if req.nonce != state.nonce {
                // A stale SotW request still lists all the proxy watches.
                // Naming nothing of a type that is not a wildcard (a
                // gateway's last Secret let go, say), it has let go of the
                // type, whatever response is on its way.
                if let Names::Replace(listed) = &req.names
                    && !wildcard_type
                    && listed.is_empty()
                {
                    self.let_go(&type_url);
                }
                debug!(node = %self.node_id, %type_url, nonce = %req.nonce, "stale nonce ignored");
                return Ok(());
            }
            if let Some(message) = req.error {
                warn!(
                    node = %self.node_id, %type_url, rejected = %state.sent_version,
                    kept = %req.version_info, error = %message,
                    "proxy rejected config (NACK); it keeps its last accepted config"
                );
                record(self.row.as_ref(), |s| {
                    s.types.entry_or_default(&type_url).nack = Some(message)
                });
                self.metrics
                    .rejects
                    .get_or_create(&Metrics::type_label(&type_url))
                    .inc();
                return Ok(());
            }
            let nonce = req.nonce.clone();
            record(self.row.as_ref(), |s| {
                let t = s.types.entry_or_default(&type_url);
                t.acked_nonce = Some(nonce);
                t.nack = None;
            });
            debug!(node = %self.node_id, %type_url, "ACK");
        }
        let changed = match req.names {
            Names::Replace(listed) if !first && state.names_digest == Some(listed.digest()) => {
                // The same names as last time, byte for byte (a SotW ACK,
                // most of the time): `names` stands. A SotW request without
                // a nonce (after a reconnect) is answered.
                req.nonce.is_empty()
            }
            Names::Replace(listed) => {
                let names = match listed.names() {
                    Ok(names) => names,
                    Err(status) => return self.fail(status).await,
                };
                let wildcard =
                    wildcard_type && (names.is_empty() || names.iter().any(|n| n == "*"));
                let names = if names
                    .iter()
                    .map(|n| &n[..])
                    .eq(all.iter().map(|(n, _)| n.as_bytes()))
                {
                    NameMap::shared(all)
                } else {
                    NameMap::own(
                        names
                            .iter()
                            .filter_map(|n| std::str::from_utf8(n).ok())
                            .map(|n| (names::intern(&all, n), 0)),
                    )
                };
                let changed = first || !names.same_keys(&state.names) || wildcard != state.wildcard;
                state.wildcard = wildcard;
                state.names = names;
                state.names_digest = Some(listed.digest());
                // A SotW request without a nonce (first, or after a reconnect) is answered.
                changed || req.nonce.is_empty()
            }
            Names::Change {
                subscribe,
                unsubscribe,
                initial,
            } => {
                debug!(
                    node = %self.node_id, %type_url, nonce = %req.nonce, ?subscribe, ?unsubscribe,
                    initial = initial.len(), "delta request"
                );
                if first {
                    // Delta: a first request naming nothing is a wildcard subscription.
                    state.wildcard = wildcard_type && subscribe.is_empty();
                    // What the proxy already has (reconnect): not resent if unchanged.
                    state.sent = NameMap::own(initial.into_iter().filter_map(|(name, v)| {
                        Some((
                            names::intern(&all, &name),
                            u64::from_str_radix(&v, 16).ok()?,
                        ))
                    }));
                }
                // A plain ACK leaves the subscription as it was, and every
                // change was pushed when it came: nothing to look at (a look
                // at the ~1400 names of a sidecar's EDS on every ACK was
                // most of the daemon's CPU in an endpoint push to 2000 proxies).
                let plain_ack = !first && subscribe.is_empty() && unsubscribe.is_empty();
                for name in subscribe {
                    if name == "*" {
                        state.wildcard = true;
                    } else {
                        // A name subscribed later is wanted now (e.g. by a
                        // warming cluster), whatever version went before.
                        if !first {
                            state.sent.remove(&name);
                        }
                        state.names.insert(names::intern(&all, &name), 0);
                    }
                }
                for name in unsubscribe {
                    if name == "*" {
                        state.wildcard = false;
                    } else {
                        state.names.remove(&name);
                        state.sent.remove(&name);
                    }
                }
                if !plain_ack {
                    state.names.compact(&all, false);
                    state.sent.compact(&all, true);
                }
                // Delta answers only when something is to be sent.
                !plain_ack
            }
        };
        if !first && self.types.get(&type_url).is_some_and(TypeState::unwatched) {
            self.let_go(&type_url);
        } else if changed {
            self.send(&type_url, false).await?;
        }
        if !req.nonce.is_empty() {
            self.observe_convergence();
        }
        Ok(())
    }

    /// The proxy watches nothing of `type_url` any more: Envoy takes a
    /// response of a type it does not watch without answering it (an empty
    /// one) or refuses it, so none is sent, and the type is out of its
    /// sync record until it subscribes again (nothing of it is pending).
    fn let_go(&mut self, type_url: &str) {
        let state = self.types.entry_or_default(type_url);
        state.names = NameMap::own([]);
        state.wildcard = false;
        state.names_digest = None;
        state.sent = NameMap::own([]);
        record(self.row.as_ref(), |s| {
            s.types.remove(type_url);
        });
    }

    async fn on_snapshot(&mut self, snap: Arc<Snapshot>) -> Result<(), Closed> {
        if let Some(published) = snap.published_at {
            self.metrics.queue_time.observe(secs(published.elapsed()));
        }
        // What this snapshot changes for this proxy; anything but a change
        // set relative to the snapshot the proxy has means everything.
        let from = self.snapshot.version;
        let effect = match (&snap.changes, &self.proxy, &self.output) {
            (Some(c), Some(p), Some(_)) if c.from_version == self.snapshot.version => c.effect(p),
            _ => Effect::Full,
        };
        self.snapshot = snap;
        if self.proxy.is_none() {
            return Ok(());
        }
        let shared = self.shared.clone();
        let _permit = shared.throttle.acquire().await.map_err(|_| Closed)?;
        match effect {
            Effect::Nothing => {
                // Nothing visible changed: the proxy is current as it is.
                self.record_version();
            }
            Effect::Endpoints(hosts) => {
                // The endpoint versions of the config patched from.
                let mut before = None;
                if let (Some(proxy), Some(base)) = (&self.proxy, &self.output) {
                    before = Some(base.versions(ENDPOINT_TYPE));
                    let patched = shared
                        .with_endpoints(&self.snapshot, proxy, base, from, &hosts)
                        .await;
                    self.output = Some(patched);
                }
                self.record_version();
                if self.types.contains_key(ENDPOINT_TYPE) {
                    self.send_endpoints(&hosts, before.as_ref()).await?;
                }
            }
            Effect::Full => {
                self.regenerate().await;
                let mut lds_sent = false;
                for type_url in PUSH_ORDER {
                    if !self.types.contains_key(type_url) {
                        continue;
                    }
                    // Endpoints of clusters just sent follow by themselves
                    // (`awaiting_endpoints`); a changed listener is followed by
                    // its routes, as istiod's full push does.
                    let force = type_url == ROUTE_TYPE && lds_sent;
                    let sent = self.send(type_url, force).await?;
                    lds_sent |= type_url == LISTENER_TYPE && sent;
                }
            }
        }
        self.observe_convergence();
        Ok(())
    }

    async fn regenerate(&mut self) {
        if let Some(proxy) = &self.proxy {
            let output = self.shared.output(&self.snapshot, proxy).await;
            // Logged when they change, not on every push.
            let previous = self
                .output
                .as_ref()
                .map(|o| o.warnings.as_slice())
                .unwrap_or_default();
            if output.warnings.as_slice() != previous {
                for w in &output.warnings {
                    warn!(node = %self.node_id, warning = %w, "config not applied to this proxy");
                }
            }
            self.output = Some(output);
            self.record_version();
        }
    }

    fn record_version(&self) {
        let version = self.snapshot.version;
        record(self.row.as_ref(), |s| s.snapshot_version = version);
    }

    /// Records `pilot_proxy_convergence_time` once the proxy has ACKed
    /// everything generated from a snapshot that carries a change time.
    fn observe_convergence(&mut self) {
        let version = self.snapshot.version;
        let Some(changed_at) = self.snapshot.changed_at else {
            return;
        };
        if self.converged >= version {
            return;
        }
        let seconds = secs(changed_at.elapsed());
        let mut synced = false;
        record(self.row.as_ref(), |s| {
            if s.snapshot_version == version && s.in_sync() {
                s.converged = Some(Converged {
                    snapshot_version: version,
                    seconds,
                });
                synced = true;
            }
        });
        if synced {
            self.converged = version;
            self.metrics.convergence.observe(seconds);
        }
    }

    /// An endpoint-only push: looks at the assignments of `hosts` alone (not
    /// every resource the proxy has) and sends those that changed.
    /// `before`: the endpoint versions of the config this one was patched
    /// from (which differ from this one's in the assignments of `hosts`
    /// alone).
    async fn send_endpoints(
        &mut self,
        hosts: &BTreeSet<String>,
        before: Option<&Arc<Versions>>,
    ) -> Result<(), Closed> {
        let Some(generated) = self.output.clone() else {
            return Ok(());
        };
        let all = generated.resources(ENDPOINT_TYPE);
        let Some(state) = self.types.get_mut(ENDPOINT_TYPE) else {
            return Ok(());
        };
        let changed: Vec<EncodedResource> = hosts
            .iter()
            .flat_map(|h| generated.endpoints_of(&all, h))
            .filter(|(n, v, _)| {
                (state.wildcard || state.names.contains(n)) && state.sent.get(n) != Some(*v)
            })
            .cloned()
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        // The proxy had exactly the config patched from, and now has every
        // assignment of `hosts` as generated: it has exactly this config,
        // whose own list it then shares (rather than keeping the old list
        // alive under an overlay of the changes, ~0.4 KiB per proxy).
        let had_all = before.is_some_and(|b| state.sent.is_exactly(b));
        for (n, v, _) in &changed {
            state.sent.insert(n.clone(), *v);
        }
        let has_hosts = hosts
            .iter()
            .flat_map(|h| generated.endpoints_of(&all, h))
            .all(|(n, v, _)| state.sent.get(n) == Some(*v));
        if had_all && has_hosts {
            state.sent = NameMap::shared(generated.versions(ENDPOINT_TYPE));
        } else {
            state.sent.compact(&generated.versions(ENDPOINT_TYPE), true);
        }
        self.respond(ENDPOINT_TYPE, changed, Vec::new())
            .await
            .map(|_| ())
    }

    /// Sends one response of `type_url` with `resources` (and, over Delta,
    /// `removed`), recording nonce, version and metrics.
    async fn respond(
        &mut self,
        type_url: &str,
        resources: Vec<EncodedResource>,
        removed: Vec<String>,
    ) -> Result<bool, Closed> {
        let Some(state) = self.types.get_mut(type_url) else {
            return Ok(false);
        };
        self.nonces += 1;
        let version = self.snapshot.version.to_string();
        let nonce = format!("{}-{}", self.snapshot.version, self.nonces);
        let message = if self.sink.delta {
            wire::delta_response(&version, type_url, &nonce, &resources, &removed)
        } else {
            wire::sotw_response(&version, type_url, &nonce, resources.iter().map(|r| &r.2))
        };
        // One copy each for the proxy's syncz row; the connection keeps
        // the strings themselves.
        let (v, n) = (version.clone(), nonce.clone());
        record(self.row.as_ref(), |s| {
            let t = s.types.entry_or_default(type_url);
            t.sent_version = v;
            t.sent_nonce = n;
        });
        state.nonce = nonce;
        state.sent_version = version;
        let label = Metrics::type_label(type_url);
        self.metrics.pushes.get_or_create(&label).inc();
        let size: usize = resources.iter().map(|(_, _, a)| a.len()).sum();
        self.metrics
            .config_size
            .get_or_create(&label)
            .observe(size as f64);
        if let Some(published) = self.snapshot.published_at {
            self.metrics
                .push_time
                .get_or_create(&label)
                .observe(secs(published.elapsed()));
        }
        if let Err(status) = &message {
            warn!(node = %self.node_id, %type_url, %status, "response cannot be sent; closing the stream");
        }
        let fatal = message.is_err();
        match self.sink.tx.send(message.map(Box::new)).await {
            Ok(()) if !fatal => Ok(true),
            _ => Err(Closed),
        }
    }

    /// Sends what changed of one type since the last response (everything
    /// subscribed when `force`). Returns whether a response went out.
    async fn send(&mut self, type_url: &str, force: bool) -> Result<bool, Closed> {
        let Some(output) = &self.output else {
            return Ok(false);
        };
        let delta = self.sink.delta;
        let state = self.types.entry_or_default(type_url);
        if state.unwatched() {
            // Let go of (see `let_go`): nothing to send.
            return Ok(false);
        }
        let all = output.resources(type_url);
        let current: Vec<&EncodedResource> = if state.wildcard {
            all.iter().collect()
        } else {
            state.names.filter_sorted(&all, |e| &e.0)
        };
        // What the proxy has once this is answered, when it is all that
        // was generated: the generated config's own list, shared. Taken even
        // when nothing is sent, so that a connection lets go of the previous
        // generation's list (and its names compare by pointer again).
        let all_of_it =
            (current.len() == all.len()).then(|| NameMap::shared(output.versions(type_url)));
        let (have, gone) = state.sent.diff_sorted(&current, |e| &e.0);
        let removed: Vec<String> = gone.iter().map(|n| n.to_string()).collect();
        let awaiting = &self.awaiting_endpoints;
        let endpoints = type_url == ENDPOINT_TYPE;
        let mut unchanged = removed.is_empty();
        let changed: Vec<&EncodedResource> = current
            .iter()
            .zip(&have)
            .filter(|((n, v, _), had)| {
                let differs = **had != Some(*v);
                unchanged &= !differs;
                force || differs || (endpoints && awaiting.contains(&**n))
            })
            .map(|(e, _)| *e)
            .collect();
        let force = force || (endpoints && changed.iter().any(|(n, _, _)| awaiting.contains(&**n)));
        // Delta sends nothing when nothing changed, except the first answer
        // to a subscription, which Envoy waits for (even if empty).
        let answered = !state.nonce.is_empty();
        if (delta && changed.is_empty() && removed.is_empty() && answered)
            || (!delta && !force && unchanged && answered)
        {
            // The proxy has exactly `current` already.
            if let Some(shared) = all_of_it {
                state.sent = shared;
            }
            return Ok(false);
        }
        let next_sent = all_of_it
            .unwrap_or_else(|| NameMap::own(current.iter().map(|(n, v, _)| (n.clone(), *v))));
        // SotW EDS after the first answer: only the assignments that changed,
        // as istiod's incremental EDS push (Envoy updates only the clusters named).
        let partial_eds = !delta && endpoints && !force && !state.nonce.is_empty();
        if partial_eds && changed.is_empty() {
            state.sent = next_sent;
            return Ok(false);
        }
        state.sent = next_sent;
        let to_send: Vec<EncodedResource> = if delta || partial_eds {
            changed.iter().map(|e| (*e).clone()).collect()
        } else {
            current.iter().map(|e| (*e).clone()).collect()
        };
        if type_url == CLUSTER_TYPE {
            self.awaiting_endpoints
                .extend(changed.iter().map(|(n, _, _)| n.clone()));
        } else if endpoints {
            for (n, _, _) in &changed {
                self.awaiting_endpoints.remove(&**n);
            }
        }
        debug!(
            node = %self.node_id, %type_url, version = self.snapshot.version, resources = to_send.len(),
            removed = removed.len(), delta, "push"
        );
        self.respond(type_url, to_send, removed).await
    }

    async fn fail(&mut self, status: Status) -> Result<(), Closed> {
        warn!(conn = self.id, %status, "closing xDS stream");
        let _ = self.sink.tx.send(Err(status)).await;
        Err(Closed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn shared() -> Arc<Shared> {
        Arc::new(Shared::new(8, Arc::new(Metrics::new())))
    }

    /// `Shared::cached` for the entry of one config key patched from
    /// `from`, of snapshot `version`, counting each time it makes the
    /// entry; making takes 50 ms.
    async fn cached(
        shared: &Shared,
        version: u64,
        from: u64,
        made: &AtomicUsize,
    ) -> Arc<Generated> {
        let proxy = Proxy::from_node_id(
            "sidecar~10.0.0.1~a.ns~ns.svc.cluster.local",
            None,
            Default::default(),
        )
        .unwrap();
        let key = proxy.config_key(&Snapshot::default());
        shared
            .cached(
                version,
                |c| c.patched.entry((key, from)).or_default().clone(),
                || {
                    made.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    Generated::new(EncodedOutput::default(), &|_| {})
                },
            )
            .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_needing_one_entry_at_once_make_it_once() {
        let shared = shared();
        let made = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let (shared, made) = (shared.clone(), made.clone());
                tokio::spawn(async move { cached(&shared, 1, 7, &made).await })
            })
            .collect();
        let mut got = Vec::new();
        for t in tasks {
            got.push(t.await.unwrap());
        }
        assert_eq!(made.load(Ordering::SeqCst), 1);
        assert!(got.iter().all(|g| Arc::ptr_eq(g, &got[0])));
        // Another entry, and the same entry of the next snapshot, are
        // made anew.
        cached(&shared, 1, 8, &made).await;
        cached(&shared, 2, 7, &made).await;
        assert_eq!(made.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_older_snapshot_is_made_for_its_caller_and_not_cached() {
        let shared = shared();
        let made = AtomicUsize::new(0);
        cached(&shared, 2, 7, &made).await;
        let old = cached(&shared, 1, 7, &made).await;
        let again = cached(&shared, 1, 7, &made).await;
        assert_eq!(made.load(Ordering::SeqCst), 3, "each older one made anew");
        assert!(!Arc::ptr_eq(&old, &again));
        // The newer version's entry is still there.
        cached(&shared, 2, 7, &made).await;
        assert_eq!(made.load(Ordering::SeqCst), 3);
    }
}
