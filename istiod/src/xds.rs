//! The xDS server: Envoy's Aggregated Discovery Service
//! (`envoy.service.discovery.v3.AggregatedDiscoveryService`), both State of
//! the World (`StreamAggregatedResources`) and Delta / incremental
//! (`DeltaAggregatedResources`, the default of Istio's own sidecars), serving
//! CDS, EDS, LDS, RDS and SDS from the current [`Snapshot`].
//!
//! One task per connection ([`connection`]) keeps, per type URL, what the
//! proxy asked for (wildcard for clusters and listeners, names for the
//! rest), what was sent (nonce, and a version per resource: a hash of its
//! bytes) and what it accepted. A new snapshot regenerates the proxy's
//! config and sends only what changed, in Istio's order (CDS, EDS, LDS, RDS,
//! SDS): whole types over SotW, single resources and removals over Delta. A
//! NACK is logged with Envoy's error and nothing is resent: the proxy keeps
//! its last good config until the next change.

mod connection;
mod names;
pub(crate) mod read_ahead;
mod wire;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::google::protobuf::{Value, value};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status};
use translator::model::{Proxy, Snapshot};

use connection::{Connection, Req};

use crate::metrics::Metrics;

/// What one proxy was sent and what it accepted, per type URL (the shape
/// of istiod's `/debug/syncz`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProxySync {
    /// The proxy as it identified itself (shared with its connection).
    pub proxy: Option<Arc<Proxy>>,
    /// Version of the snapshot the proxy's config was last generated from.
    pub snapshot_version: u64,
    /// Per type URL.
    pub types: ByType<TypeSync>,
    /// The last snapshot whose change this proxy has ACKed all of, and
    /// when: what it added to `pilot_proxy_convergence_time`.
    pub converged: Option<Converged>,
}

/// One proxy's convergence on one change: every response generated from
/// the snapshot ACKed (the per-proxy sample of istiod's
/// `pilot_proxy_convergence_time`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Converged {
    /// The snapshot's version.
    pub snapshot_version: u64,
    /// Seconds from the change (the first config event of the snapshot,
    /// debounce included) to the ACK of the proxy's last response.
    pub seconds: f64,
}

/// A small map from type URL to `T`, in type URL order: a proxy uses at
/// most the five xDS types. Held per connection, twice (the connection's
/// own state and its [`ProxySync`]); a `BTreeMap` allocates a node of 11
/// entries and a `HashMap` 8 buckets for the usual four, ~1.3 KiB and
/// ~1.7 KiB per proxy at these entry sizes, a `Vec` only the entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ByType<T>(Vec<(String, T)>);

impl<T> Default for ByType<T> {
    fn default() -> Self {
        ByType(Vec::new())
    }
}

impl<T> ByType<T> {
    /// Where `type_url` is (`Ok`), or would go to keep the order (`Err`).
    /// A scan rather than a binary search: the five xDS type URLs differ
    /// in length, so `==` tells them apart without comparing bytes, where
    /// ordering them compares their shared 26-byte prefix every time.
    fn position(&self, type_url: &str) -> Result<usize, usize> {
        match self.0.iter().position(|(t, _)| t == type_url) {
            Some(i) => Ok(i),
            None => Err(self.0.partition_point(|(t, _)| t.as_str() < type_url)),
        }
    }

    /// The entry of `type_url`, if any.
    pub fn get(&self, type_url: &str) -> Option<&T> {
        self.position(type_url).ok().map(|i| &self.0[i].1)
    }

    /// The entry of `type_url`, mutable, if any.
    pub fn get_mut(&mut self, type_url: &str) -> Option<&mut T> {
        self.position(type_url).ok().map(|i| &mut self.0[i].1)
    }

    /// Takes the entry of `type_url` out, if any.
    pub fn remove(&mut self, type_url: &str) -> Option<T> {
        self.position(type_url).ok().map(|i| self.0.remove(i).1)
    }

    /// Whether `type_url` has an entry.
    pub fn contains_key(&self, type_url: &str) -> bool {
        self.position(type_url).is_ok()
    }

    /// The entry of `type_url`, inserted as `T::default()` if missing.
    pub fn entry_or_default(&mut self, type_url: &str) -> &mut T
    where
        T: Default,
    {
        let i = match self.position(type_url) {
            Ok(i) => i,
            Err(i) => {
                self.0.insert(i, (type_url.to_owned(), T::default()));
                i
            }
        };
        &mut self.0[i].1
    }

    /// `(type URL, entry)` in type URL order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.0.iter().map(|(t, v)| (t.as_str(), v))
    }

    /// The entries, in type URL order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.0.iter().map(|(_, v)| v)
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One type's exchange with one proxy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeSync {
    /// Version of the last response sent.
    pub sent_version: String,
    /// Nonce of the last response sent.
    pub sent_nonce: String,
    /// Nonce of the last response ACKed.
    pub acked_nonce: Option<String>,
    /// Envoy's error message if the last response was NACKed.
    pub nack: Option<String>,
}

impl ProxySync {
    /// True when every response sent was ACKed (none pending, none rejected).
    pub fn in_sync(&self) -> bool {
        self.types
            .values()
            .all(|t| t.nack.is_none() && t.acked_nonce.as_deref() == Some(t.sent_nonce.as_str()))
    }
}

/// One connected proxy's [`ProxySync`], shared by its connection (which
/// updates it, locking only this row) and the [`SyncTable`].
pub(crate) type SyncRow = Arc<Mutex<ProxySync>>;

/// Connected proxies by node ID, each a row of its own: a connection
/// records a push or an ACK in its row without looking the node ID up or
/// locking the table, four times per proxy in an endpoint push
/// (docs/PERFORMANCE.md, step 43). The table itself is locked when a proxy
/// connects or disconnects, and for as long as it takes to copy the row
/// handles out (`/debug/syncz` then copies each row under its own lock, so
/// a read of 2000 rows no longer holds every connection's records up).
#[derive(Clone, Debug, Default)]
pub struct SyncTable(Arc<Mutex<BTreeMap<String, SyncRow>>>);

impl SyncTable {
    /// A copy of every connected proxy's row, by node ID.
    pub fn rows(&self) -> BTreeMap<String, ProxySync> {
        let rows: Vec<(String, SyncRow)> = match self.0.lock() {
            Ok(table) => table.iter().map(|(n, r)| (n.clone(), r.clone())).collect(),
            Err(_) => return BTreeMap::new(),
        };
        rows.into_iter()
            .filter_map(|(n, r)| Some((n, r.lock().ok()?.clone())))
            .collect()
    }

    /// The proxy of the first connected node whose ID `matches`.
    pub fn proxy(&self, matches: impl Fn(&str) -> bool) -> Option<Arc<Proxy>> {
        let row = self
            .0
            .lock()
            .ok()?
            .iter()
            .find(|(n, _)| matches(n))?
            .1
            .clone();
        row.lock().ok()?.proxy.clone()
    }

    /// Adds (or replaces: the node reconnected) `node_id`'s row.
    fn insert(&self, node_id: &str, row: ProxySync) -> SyncRow {
        let row = Arc::new(Mutex::new(row));
        if let Ok(mut table) = self.0.lock() {
            table.insert(node_id.to_owned(), row.clone());
        }
        row
    }

    /// Removes `node_id`'s row if it is still `row`: a newer connection of
    /// the same node may own the entry already.
    fn remove(&self, node_id: &str, row: &SyncRow) {
        if let Ok(mut table) = self.0.lock()
            && table.get(node_id).is_some_and(|r| Arc::ptr_eq(r, row))
        {
            table.remove(node_id);
        }
    }
}

/// The ADS service, cloned into every connection.
#[derive(Clone, Debug)]
pub struct AdsServer {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    connections: Arc<AtomicU64>,
    sync: SyncTable,
    drain: CancellationToken,
    metrics: Arc<Metrics>,
    shared: Arc<connection::Shared>,
    ready: Option<Arc<AtomicBool>>,
    callers: Option<CallerAuth>,
    keepalive: Keepalive,
}

/// How the xDS servers keep their connections, as istiod's gRPC keepalive
/// options (its flags `--keepaliveInterval`, `--keepaliveTimeout`,
/// `--keepaliveMaxServerConnectionAge`; [`Keepalive::default`] is
/// istiod's defaults).
///
/// - **Dead proxies let go.** An HTTP/2 PING goes out after `interval`
///   without a frame from the proxy; without its ACK within `timeout` the
///   connection is closed, and with it the proxy's stream and state. A
///   proxy whose node vanished (no FIN, no RST) is otherwise held until
///   TCP gives up, hours later.
/// - **Proxies rebalanced.** A connection `max_connection_age` old gets a
///   GOAWAY (no new streams on it), and its ADS stream is ended
///   `max_connection_age_grace` later, plus up to a tenth of the age
///   spread by connection, so that proxies connected together do not
///   reconnect together. The proxy reconnects on a new connection, to
///   whichever replica the Service picks: after a scale-out, proxies move
///   to the new replicas within one age.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// Quiet time before a PING (istiod: 30 s); `None` sends none.
    pub interval: Option<std::time::Duration>,
    /// How long a PING's ACK is awaited (istiod: 10 s).
    pub timeout: std::time::Duration,
    /// A connection's age at its GOAWAY (istiod: 30 minutes); `None`: never.
    pub max_connection_age: Option<std::time::Duration>,
    /// From the GOAWAY to the end of the ADS stream (istiod: 10 s).
    pub max_connection_age_grace: std::time::Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        use std::time::Duration;
        Keepalive {
            interval: Some(Duration::from_secs(30)),
            timeout: Duration::from_secs(10),
            max_connection_age: Some(Duration::from_secs(30 * 60)),
            max_connection_age_grace: Duration::from_secs(10),
        }
    }
}

impl Keepalive {
    /// A tonic server with the PINGs and the GOAWAY at the connection's
    /// age. (tonic's own grace would close the connection at age + grace
    /// without a GOAWAY before it; the stream's end is done by the ADS
    /// service instead, see [`Keepalive::stream_age`].)
    pub fn server(&self) -> tonic::transport::Server {
        let server = tonic::transport::Server::builder()
            .http2_keepalive_interval(self.interval)
            .http2_keepalive_timeout(Some(self.timeout));
        match self.max_connection_age {
            Some(age) => server.max_connection_age(age),
            None => server,
        }
    }

    /// How long connection `id`'s ADS stream lives: the age, the grace,
    /// and `id`'s share of a tenth of the age (a fixed spread over the
    /// connections, so never before the GOAWAY). `None` when connections
    /// have no maximum age.
    fn stream_age(&self, id: u64) -> Option<std::time::Duration> {
        let age = self.max_connection_age?;
        // A tenth of the age, in 1024 steps, by a multiplicative hash of
        // the connection number.
        let step = (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) as u32;
        let spread = age / 10 / 1024 * step;
        Some(
            age.saturating_add(self.max_connection_age_grace)
                .saturating_add(spread),
        )
    }
}

/// How the TLS port's xDS authenticates callers (see [`AdsServer::authenticated`]).
#[derive(Clone)]
struct CallerAuth(Arc<dyn ca::service::Authenticator>);

impl std::fmt::Debug for CallerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallerAuth")
    }
}

impl AdsServer {
    /// Serves the snapshots published on `snapshots`; every stream ends
    /// when `drain` is cancelled (so a graceful shutdown can complete).
    /// `push_throttle` bounds how many connections generate and send at once.
    pub fn new(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        drain: CancellationToken,
        metrics: Arc<Metrics>,
        push_throttle: usize,
    ) -> Self {
        AdsServer {
            snapshots,
            connections: Arc::new(AtomicU64::new(0)),
            sync: SyncTable::default(),
            drain,
            shared: Arc::new(connection::Shared::new(push_throttle, metrics.clone())),
            metrics,
            ready: None,
            callers: None,
            keepalive: Keepalive::default(),
        }
    }

    /// Registers the proxies that ask for it (node metadata
    /// `AUTO_REGISTER_GROUP`) in `registry` for as long as they stay
    /// connected (see [`crate::autoregister`]).
    pub fn with_registry(self, registry: Arc<crate::autoregister::Registry>) -> Self {
        let _ = self.shared.registry.set(registry);
        self
    }

    /// Keeps connections as `keepalive` says (see [`Keepalive`]); serve
    /// with [`AdsServer::server`] for its HTTP/2 part.
    pub fn with_keepalive(mut self, keepalive: Keepalive) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// A tonic server for this service, with its [`Keepalive`].
    pub fn server(&self) -> tonic::transport::Server {
        self.keepalive.server()
    }

    /// Authenticates every stream as istiod does on its TLS port: a
    /// service-account token or a client certificate from the mesh CA
    /// (`UNAUTHENTICATED` otherwise), and the proxy must be in the
    /// caller's namespace (`PERMISSION_DENIED` otherwise).
    pub fn authenticated(mut self, auth: Arc<dyn ca::service::Authenticator>) -> Self {
        self.callers = Some(CallerAuth(auth));
        self
    }

    /// The caller's identity, when streams are authenticated.
    async fn caller<T>(&self, request: &Request<T>) -> Result<Option<ca::SpiffeId>, Status> {
        let Some(CallerAuth(auth)) = &self.callers else {
            return Ok(None);
        };
        let peer_certs: Option<Vec<Vec<u8>>> = request
            .peer_certs()
            .map(|certs| certs.iter().map(|c| c.to_vec()).collect());
        auth.authenticate(request.metadata(), peer_certs.as_deref())
            .await
            .map(Some)
    }

    /// Refuses streams (gRPC `UNAVAILABLE`, with istiod's message) while
    /// `ready` is false, so a proxy is never served the empty config of a
    /// daemon whose caches have not synced: it keeps its last config and
    /// retries.
    pub fn gated(mut self, ready: Arc<AtomicBool>) -> Self {
        self.ready = Some(ready);
        self
    }

    fn check_ready(&self) -> Result<(), Status> {
        match &self.ready {
            Some(r) if !r.load(Ordering::Relaxed) => Err(Status::unavailable(
                "server is not ready to serve discovery information",
            )),
            _ => Ok(()),
        }
    }

    /// The sync status of every connected proxy.
    pub fn sync_table(&self) -> SyncTable {
        self.sync.clone()
    }

    /// As a tonic service, ready for a `Server` router.
    pub fn into_service(self) -> AdsService {
        AdsService(self)
    }
}

/// The gRPC path of State-of-the-World ADS.
const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
/// The gRPC path of Delta ADS.
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// The ADS service as tonic's router takes it (HTTP/2 requests in,
/// responses out), with both directions of the stream written by [`wire`]:
/// requests decoded without keeping a buffer, responses from shared
/// encodings. Paths other than ADS's two methods answer `UNIMPLEMENTED`.
#[derive(Clone, Debug)]
pub struct AdsService(AdsServer);

impl tonic::server::NamedService for AdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

impl tower_service::Service<http::Request<tonic::body::Body>> for AdsService {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let server = self.0.clone();
        Box::pin(async move {
            Ok(server
                .serve(request)
                .await
                .unwrap_or_else(|status| status.into_http()))
        })
    }
}

impl AdsServer {
    /// One ADS stream: checks readiness and the caller, then runs a
    /// [`Connection`] on the decoded requests; its responses are the body.
    async fn serve(
        &self,
        request: http::Request<tonic::body::Body>,
    ) -> Result<http::Response<tonic::body::Body>, Status> {
        let delta = match request.uri().path() {
            SOTW_PATH => false,
            DELTA_PATH => true,
            other => return Err(Status::unimplemented(format!("no method {other}"))),
        };
        self.check_ready()?;
        let (parts, body) = request.into_parts();
        let caller = self
            .caller(&Request::from_http(http::Request::from_parts(parts, ())))
            .await?;
        let (tx, rx) = mpsc::channel(2);
        let conn = self.connection(connection::Sink { tx, delta }, caller);
        let ends = connection::Ends {
            drain: self.drain.clone(),
            age: self.keepalive.stream_age(conn.id()),
        };
        if delta {
            let requests =
                wire::Requests::<DeltaDiscoveryRequest>::new(body).map(|r| r.map(Req::from_delta));
            tokio::spawn(conn.run(requests, ends));
        } else {
            let requests =
                wire::Requests::<wire::SotwRequest>::new(body).map(|r| r.map(Req::from_sotw));
            tokio::spawn(conn.run(requests, ends));
        }
        let mut response = http::Response::new(tonic::body::Body::new(wire::ResponseBody::new(rx)));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        Ok(response)
    }
}

impl AdsServer {
    fn connection(&self, sink: connection::Sink, caller: Option<ca::SpiffeId>) -> Connection {
        let id = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        Connection::new(
            id,
            self.snapshots.clone(),
            sink,
            self.sync.clone(),
            self.metrics.clone(),
            self.shared.clone(),
            caller,
        )
    }
}

/// Updates one proxy's row of the sync table (there is one once the
/// proxy has identified itself).
fn record(row: Option<&SyncRow>, f: impl FnOnce(&mut ProxySync)) {
    if let Some(mut entry) = row.and_then(|r| r.lock().ok()) {
        f(&mut entry);
    }
}

/// What an xDS node says for auto-registration: node metadata
/// `AUTO_REGISTER_GROUP` (`None` without it) with what [`proxy_from_node`]
/// read.
fn workload_of(node: &Node, proxy: &Proxy) -> Option<crate::autoregister::Workload> {
    let group = node
        .metadata
        .as_ref()?
        .fields
        .get(crate::autoregister::AUTO_REGISTER_GROUP)
        .and_then(|v| match &v.kind {
            Some(value::Kind::StringValue(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        })?;
    Some(crate::autoregister::Workload {
        group,
        namespace: proxy.namespace.clone(),
        ip: proxy.ip.clone(),
        network: proxy.network.clone(),
        locality: proxy.locality.clone(),
        labels: proxy.labels.clone(),
    })
}

/// Builds the [`Proxy`] from an xDS node: Istio's node ID, the node
/// metadata `NAMESPACE` (string), `LABELS` (struct of strings), `NETWORK`
/// and `REQUESTED_NETWORK_VIEW` (comma-separated), the node's
/// `locality`, and whether its `extensions` hold Envoy's stats access
/// logger (Istio's metrics).
fn proxy_from_node(node: &Node) -> Result<Proxy, translator::model::InvalidNodeId> {
    let fields = node.metadata.as_ref().map(|m| &m.fields);
    let string = |v: &Value| match &v.kind {
        Some(value::Kind::StringValue(s)) => Some(s.clone()),
        _ => None,
    };
    let namespace = fields.and_then(|f| f.get("NAMESPACE")).and_then(string);
    let labels = fields
        .and_then(|f| f.get("LABELS"))
        .and_then(|v| match &v.kind {
            Some(value::Kind::StructValue(s)) => Some(
                s.fields
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), string(v)?)))
                    .collect(),
            ),
            _ => None,
        })
        .unwrap_or_default();
    let mut proxy = Proxy::from_node_id(&node.id, namespace, labels)?;
    if let Some(network) = fields.and_then(|f| f.get("NETWORK")).and_then(string) {
        proxy.network = network;
    }
    if let Some(view) = fields
        .and_then(|f| f.get("REQUESTED_NETWORK_VIEW"))
        .and_then(string)
    {
        proxy.network_view = view
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
    }
    // The string values, for EnvoyFilters' `match.proxy` (`ISTIO_VERSION`
    // and whatever else they name).
    proxy.metadata = fields
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), string(v)?)))
        .collect();
    proxy.stats_logger = node
        .extensions
        .iter()
        .any(|e| e.name == translator::metrics::STATS_LOGGER);
    if let Some(l) = &node.locality {
        proxy.locality = [l.region.as_str(), l.zone.as_str(), l.sub_zone.as_str()]
            .join("/")
            .trim_end_matches('/')
            .to_owned();
    }
    Ok(proxy)
}

#[cfg(test)]
mod tests {
    use super::{ByType, Keepalive, ProxySync, SyncTable, record};

    /// Streams end after the GOAWAY and its grace, spread over a tenth of
    /// the age by connection; without a maximum age, never.
    #[test]
    fn streams_end_after_the_goaway_spread_over_a_tenth_of_the_age() {
        use std::time::Duration;
        let k = Keepalive::default();
        let (age, grace) = (Duration::from_secs(1800), Duration::from_secs(10));
        let ends: Vec<Duration> = (1..=2000).map(|id| k.stream_age(id).unwrap()).collect();
        assert!(
            ends.iter()
                .all(|&e| e >= age + grace && e < age + grace + age / 10)
        );
        let (first, last) = (ends.iter().min().unwrap(), ends.iter().max().unwrap());
        assert!(
            *last - *first > age / 20,
            "2000 connections spread over {:?} only",
            *last - *first
        );
        let never = Keepalive {
            max_connection_age: None,
            ..k
        };
        assert_eq!(never.stream_age(7), None);
    }

    #[test]
    fn a_reconnected_node_keeps_its_new_row_when_the_old_connection_ends() {
        let table = SyncTable::default();
        let old = table.insert("sidecar~a", ProxySync::default());
        let new = table.insert("sidecar~a", ProxySync::default());
        record(Some(&new), |s| s.snapshot_version = 7);
        record(Some(&old), |s| s.snapshot_version = 3);
        table.remove("sidecar~a", &old);
        let rows = table.rows();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows["sidecar~a"].snapshot_version, 7, "the new row stays");
        table.remove("sidecar~a", &new);
        assert!(table.rows().is_empty());
    }

    #[test]
    fn by_type_keeps_type_url_order_and_one_entry_per_type() {
        let mut m: ByType<u32> = ByType::default();
        assert!(m.is_empty());
        *m.entry_or_default(translator::ROUTE_TYPE) += 1;
        *m.entry_or_default(translator::CLUSTER_TYPE) += 2;
        *m.entry_or_default(translator::ROUTE_TYPE) += 3;
        *m.entry_or_default(translator::LISTENER_TYPE) += 5;
        assert_eq!(m.get(translator::ROUTE_TYPE), Some(&4));
        assert!(m.contains_key(translator::CLUSTER_TYPE));
        assert!(!m.contains_key(translator::ENDPOINT_TYPE));
        if let Some(v) = m.get_mut(translator::LISTENER_TYPE) {
            *v = 7;
        }
        let keys: Vec<&str> = m.iter().map(|(t, _)| t).collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(keys, sorted);
        // cluster < listener < route, as type URLs.
        assert_eq!(m.values().copied().collect::<Vec<_>>(), [2, 7, 4]);
    }
}
