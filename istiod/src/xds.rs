//! The xDS server: Envoy's Aggregated Discovery Service, State of the World
//! (`envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources`),
//! serving CDS, EDS, LDS and RDS from the current [`Snapshot`].
//!
//! One task per connection keeps, per type URL, what the proxy asked for
//! (wildcard for clusters and listeners, names for endpoints and routes),
//! what was sent (version, nonce, bytes per resource) and what it accepted.
//! A new snapshot regenerates the proxy's config and sends only the types
//! whose resources changed, in Istio's order (CDS, EDS, LDS, RDS). A NACK is
//! logged with Envoy's error and nothing is resent: the proxy keeps its last
//! good config until the next change. Delta xDS is answered `UNIMPLEMENTED`
//! for now; the per-type state is shaped so it can be added.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{Any, Value, value};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};
use translator::model::{Proxy, Snapshot};
use translator::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, Output, PUSH_ORDER, ROUTE_TYPE};

/// What one proxy was sent and what it accepted, per type URL (the shape
/// of istiod's `/debug/syncz`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxySync {
    /// The connection (a per-daemon counter) this entry belongs to.
    pub connection: u64,
    /// Version of the snapshot the proxy's config was last generated from.
    pub snapshot_version: u64,
    /// Per type URL.
    pub types: BTreeMap<String, TypeSync>,
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

/// Connected proxies by node ID. Locked only for short, synchronous updates.
pub type SyncTable = Arc<std::sync::Mutex<BTreeMap<String, ProxySync>>>;

/// The ADS service, cloned into every connection.
#[derive(Clone, Debug)]
pub struct AdsServer {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    connections: Arc<AtomicU64>,
    sync: SyncTable,
    drain: CancellationToken,
}

impl AdsServer {
    /// Serves the snapshots published on `snapshots`; every stream ends
    /// when `drain` is cancelled (so a graceful shutdown can complete).
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>, drain: CancellationToken) -> Self {
        AdsServer {
            snapshots,
            connections: Arc::new(AtomicU64::new(0)),
            sync: SyncTable::default(),
            drain,
        }
    }

    /// The sync status of every connected proxy.
    pub fn sync_table(&self) -> SyncTable {
        self.sync.clone()
    }

    /// As a tonic service, ready for a `Server` router.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let id = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(8);
        let conn = Connection::new(id, self.snapshots.clone(), tx, self.sync.clone());
        tokio::spawn(conn.run(request.into_inner(), self.drain.clone()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "Delta xDS is not served yet: use State-of-the-World ADS (StreamAggregatedResources)",
        ))
    }
}

/// Per type URL: the subscription and what was sent and accepted.
#[derive(Debug, Default)]
struct TypeState {
    /// Resource names asked for; empty (or `*`) is wildcard.
    names: BTreeSet<String>,
    /// Nonce of the last response sent.
    nonce: String,
    /// Version of the last response sent.
    sent_version: String,
    /// Encoded resources of the last response, by name.
    sent: BTreeMap<String, Vec<u8>>,
}

struct Connection {
    id: u64,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    proxy: Option<Proxy>,
    node_id: String,
    snapshot: Arc<Snapshot>,
    output: Option<Output>,
    types: HashMap<String, TypeState>,
    nonces: u64,
    sync: SyncTable,
}

/// The connection has ended (client gone, or a fatal request).
struct Closed;

impl Connection {
    fn new(
        id: u64,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
        sync: SyncTable,
    ) -> Self {
        let snapshot = snapshots.borrow().clone();
        Connection {
            id,
            snapshots,
            tx,
            proxy: None,
            node_id: String::new(),
            snapshot,
            output: None,
            types: HashMap::new(),
            nonces: 0,
            sync,
        }
    }

    async fn run(mut self, mut requests: Streaming<DiscoveryRequest>, drain: CancellationToken) {
        // Once the publisher is gone no new snapshot can come; requests are still served.
        let mut publishing = true;
        loop {
            let step = tokio::select! {
                _ = drain.cancelled() => Err(Closed),
                req = requests.message() => match req {
                    Ok(Some(req)) => self.on_request(req).await,
                    Ok(None) => Err(Closed),
                    Err(status) => {
                        debug!(conn = self.id, node = %self.node_id, %status, "xDS stream error");
                        Err(Closed)
                    }
                },
                changed = self.snapshots.changed(), if publishing => match changed {
                    Ok(()) => {
                        let snap = self.snapshots.borrow_and_update().clone();
                        self.on_snapshot(snap).await
                    }
                    Err(_) => {
                        publishing = false;
                        Ok(())
                    }
                },
            };
            if step.is_err() {
                break;
            }
        }
        if self.proxy.is_some() {
            info!(conn = self.id, node = %self.node_id, "proxy disconnected");
            if let Ok(mut table) = self.sync.lock() {
                // A newer connection of the same node may already own the entry.
                if table
                    .get(&self.node_id)
                    .is_some_and(|s| s.connection == self.id)
                {
                    table.remove(&self.node_id);
                }
            }
        }
    }

    async fn on_request(&mut self, req: DiscoveryRequest) -> Result<(), Closed> {
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
            info!(conn = self.id, node = %self.node_id, "proxy connected");
            if let Ok(mut table) = self.sync.lock() {
                table.insert(
                    self.node_id.clone(),
                    ProxySync {
                        connection: self.id,
                        ..Default::default()
                    },
                );
            }
            self.proxy = Some(proxy);
            self.regenerate();
        }
        let type_url = req.type_url.clone();
        if !PUSH_ORDER.contains(&type_url.as_str()) {
            debug!(node = %self.node_id, %type_url, "request for a type this server does not serve");
            return Ok(());
        }
        let names: BTreeSet<String> = req.resource_names.iter().cloned().collect();
        let state = self.types.entry(type_url.clone()).or_default();
        if !req.response_nonce.is_empty() {
            if req.response_nonce != state.nonce {
                debug!(node = %self.node_id, %type_url, nonce = %req.response_nonce, "stale nonce ignored");
                return Ok(());
            }
            if let Some(status) = &req.error_detail {
                warn!(
                    node = %self.node_id, %type_url, rejected = %state.sent_version,
                    kept = %req.version_info, error = %status.message,
                    "proxy rejected config (NACK); it keeps its last accepted config"
                );
                let message = status.message.clone();
                record(&self.sync, &self.node_id, |s| {
                    s.types.entry(type_url.clone()).or_default().nack = Some(message)
                });
                return Ok(());
            }
            let nonce = req.response_nonce.clone();
            record(&self.sync, &self.node_id, |s| {
                let t = s.types.entry(type_url.clone()).or_default();
                t.acked_nonce = Some(nonce);
                t.nack = None;
            });
            debug!(node = %self.node_id, %type_url, version = %req.version_info, "ACK");
            if names == state.names {
                return Ok(());
            }
        }
        state.names = names;
        self.send_if_changed(&type_url, true).await.map(|_| ())
    }

    async fn on_snapshot(&mut self, snap: Arc<Snapshot>) -> Result<(), Closed> {
        self.snapshot = snap;
        if self.proxy.is_none() {
            return Ok(());
        }
        self.regenerate();
        let mut cds_sent = false;
        let mut lds_sent = false;
        for type_url in PUSH_ORDER {
            if !self.types.contains_key(type_url) {
                continue;
            }
            // A changed cluster or listener re-warms and waits for its
            // endpoints/routes, so those follow even when unchanged (as istiod's full push).
            let force =
                (type_url == ENDPOINT_TYPE && cds_sent) || (type_url == ROUTE_TYPE && lds_sent);
            let sent = self.send_if_changed(type_url, force).await?;
            cds_sent |= type_url == CLUSTER_TYPE && sent;
            lds_sent |= type_url == LISTENER_TYPE && sent;
        }
        Ok(())
    }

    fn regenerate(&mut self) {
        if let Some(proxy) = &self.proxy {
            let output = translator::generate(&self.snapshot, proxy);
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
            let version = self.snapshot.version;
            record(&self.sync, &self.node_id, |s| s.snapshot_version = version);
        }
    }

    /// Sends the type's resources if they differ from what was sent (or
    /// `always`). Returns whether a response went out.
    async fn send_if_changed(&mut self, type_url: &str, always: bool) -> Result<bool, Closed> {
        let Some(output) = &self.output else {
            return Ok(false);
        };
        let state = self.types.entry(type_url.to_owned()).or_default();
        let wildcard = state.names.is_empty() || state.names.contains("*");
        let wildcard_type = type_url == CLUSTER_TYPE || type_url == LISTENER_TYPE;
        let resources: Vec<(String, Any)> = output
            .resources(type_url)
            .into_iter()
            .filter(|(name, _)| (wildcard_type && wildcard) || state.names.contains(name))
            .collect();
        let encoded: BTreeMap<String, Vec<u8>> = resources
            .iter()
            .map(|(n, a)| (n.clone(), a.value.clone()))
            .collect();
        if !always && encoded == state.sent {
            return Ok(false);
        }
        self.nonces += 1;
        let version = self.snapshot.version.to_string();
        let nonce = format!("{}-{}", self.snapshot.version, self.nonces);
        state.nonce = nonce.clone();
        state.sent_version = version.clone();
        state.sent = encoded;
        let (v, n) = (version.clone(), nonce.clone());
        record(&self.sync, &self.node_id, |s| {
            let t = s.types.entry(type_url.to_owned()).or_default();
            t.sent_version = v;
            t.sent_nonce = n;
        });
        debug!(node = %self.node_id, %type_url, %version, resources = resources.len(), "push");
        let response = DiscoveryResponse {
            version_info: version,
            resources: resources.into_iter().map(|(_, a)| a).collect(),
            type_url: type_url.to_owned(),
            nonce,
            ..Default::default()
        };
        self.tx.send(Ok(response)).await.map_err(|_| Closed)?;
        Ok(true)
    }

    async fn fail(&mut self, status: Status) -> Result<(), Closed> {
        warn!(conn = self.id, %status, "closing xDS stream");
        let _ = self.tx.send(Err(status)).await;
        Err(Closed)
    }
}

/// Updates one proxy's entry in the sync table (created on connect).
fn record(sync: &SyncTable, node_id: &str, f: impl FnOnce(&mut ProxySync)) {
    if let Ok(mut table) = sync.lock()
        && let Some(entry) = table.get_mut(node_id)
    {
        f(entry);
    }
}

/// Builds the [`Proxy`] from an xDS node: Istio's node ID, the node
/// metadata `NAMESPACE` (string) and `LABELS` (struct of strings), and the
/// node's `locality`.
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
    if let Some(l) = &node.locality {
        proxy.locality = [l.region.as_str(), l.zone.as_str(), l.sub_zone.as_str()]
            .join("/")
            .trim_end_matches('/')
            .to_owned();
    }
    Ok(proxy)
}
