//! The agent's xDS proxy (Istio's `pkg/istio-agent/xds_proxy.go`): Envoy's
//! ADS stream goes to the agent on a Unix socket (Istio's
//! `./etc/istio/proxy/XDS`), and the agent carries it to the daemon, one
//! upstream stream per Envoy stream, requests and responses passed through
//! unchanged, State of the World and Delta alike, but for two things. ECDS
//! responses have their WasmPlugins' remote modules fetched and made local
//! files ([`crate::wasm`]). And the agent adds the
//! workload's health ([`crate::health`]): each change, and the last one again
//! at the start of every new stream, is sent upstream as a request of type
//! [`crate::autoregister::HEALTH_TYPE`] (healthy: no `error_detail`;
//! unhealthy: `error_detail` with code 13, `INTERNAL`, and the check's error,
//! as Istio's agent sends it), after Envoy's first request (which names the
//! node). With the DNS proxy on ([`crate::dns`]), the agent also asks for
//! the name table ([`NAME_TABLE_TYPE`]) on the stream, after Envoy's first
//! request, as Istio's agent does: the daemon's name tables are ACKed and
//! kept for the DNS proxy, never passed to Envoy.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::autoregister::HEALTH_TYPE;
use crate::dns::Table;
use crate::health::Health;
use crate::wasm::{ModuleCache, localize};
use prost::Message as _;
use translator::nds::NameTable;
use translator::{EXTENSION_CONFIG_TYPE, NAME_TABLE_TYPE};

/// Where Istio's agent serves xDS to Envoy, relative to the proxy's working
/// directory.
pub const ISTIO_XDS_SOCKET: &str = "./etc/istio/proxy/XDS";

/// gRPC's `INTERNAL`, the code of an unhealthy report.
const INTERNAL: i32 = 13;

/// The proxy: the daemon's address, the health to report, the Wasm
/// modules, the DNS proxy's table.
#[derive(Clone)]
struct XdsProxy {
    /// The daemon's xDS endpoint, `http://HOST:PORT`.
    upstream: tonic::transport::Endpoint,
    health: watch::Receiver<Option<Health>>,
    wasm: Arc<ModuleCache>,
    dns: Option<Arc<DnsFeed>>,
}

/// Where the name tables go, for the DNS proxy of a workload.
pub struct DnsFeed {
    /// The DNS proxy's table ([`crate::dns::serve`] reads it).
    pub table: watch::Sender<Arc<Table>>,
    /// The workload's namespace (its Services answer by short name).
    pub namespace: String,
    /// The cluster's DNS domain (`cluster.local`).
    pub domain: String,
}

/// Serves the proxy on the Unix socket `socket` (created; its folder too),
/// forwarding to the daemon at `upstream` (`HOST:PORT`, plaintext, as
/// Envoy's own `xds-grpc` cluster connects), with the workload's `health`
/// (none: a receiver whose sender is gone) and the WasmPlugins' modules
/// fetched into `wasm`, and the name tables into `dns` (the DNS proxy
/// on), until `token` is cancelled.
///
/// # Errors
/// The address does not parse or the socket cannot be created.
pub fn serve(
    socket: PathBuf,
    upstream: &str,
    health: watch::Receiver<Option<Health>>,
    wasm: Arc<ModuleCache>,
    dns: Option<DnsFeed>,
    token: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    let upstream = tonic::transport::Endpoint::from_shared(format!("http://{upstream}"))
        .with_context(|| format!("xDS address {upstream}"))?;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("xDS socket {}", socket.display()))?;
    info!(socket = %socket.display(), "xDS proxy serving");
    let proxy = XdsProxy {
        upstream,
        health,
        wasm,
        dns: dns.map(Arc::new),
    };
    Ok(tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(proxy))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                token.cancelled_owned(),
            )
            .await;
        if let Err(e) = served {
            warn!(error = %e, "xDS proxy stopped");
        }
    }))
}

/// What the upstream stream carries: Envoy's requests, then health reports
/// made as `report` makes them, and `extra` after the first (the name
/// table's subscription); also a sender for more (the name tables' ACKs).
fn upstream_requests<R: Send + 'static>(
    mut downstream: Streaming<R>,
    mut health: watch::Receiver<Option<Health>>,
    report: fn(&Health) -> R,
    extra: Option<R>,
) -> (ReceiverStream<R>, mpsc::Sender<R>) {
    let (tx, rx) = mpsc::channel(16);
    let acks = tx.clone();
    tokio::spawn(async move {
        // Envoy's first request names the node: the daemon needs it first.
        match downstream.next().await {
            Some(Ok(first)) => {
                if tx.send(first).await.is_err() {
                    return;
                }
            }
            _ => return,
        }
        if let Some(extra) = extra
            && tx.send(extra).await.is_err()
        {
            return;
        }
        // What was concluded before this stream began, then each change.
        health.mark_changed();
        let mut checking = true;
        loop {
            tokio::select! {
                request = downstream.next() => match request {
                    Some(Ok(r)) => {
                        if tx.send(r).await.is_err() {
                            return;
                        }
                    }
                    // Envoy's stream ended (or broke): so does the upstream one.
                    _ => return,
                },
                changed = health.changed(), if checking => {
                    if changed.is_err() {
                        // The checks stopped; keep passing Envoy's requests.
                        checking = false;
                        continue;
                    }
                    let current = health.borrow_and_update().clone();
                    if let Some(h) = current {
                        debug!(health = ?h, "health reported upstream");
                        if tx.send(report(&h)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    (ReceiverStream::new(rx), acks)
}

/// A response type of the stream that can carry name tables.
trait NameTables: Send + Sized + 'static {
    /// The stream's request type.
    type Request: Send + 'static;
    /// The name table's subscription (by type alone, as Istio's agent asks).
    fn subscribe() -> Self::Request;
    /// The table, when this is a name table response.
    fn name_table(&self) -> Option<Option<NameTable>>;
    /// Its ACK.
    fn ack(&self) -> Self::Request;
}

impl NameTables for DiscoveryResponse {
    type Request = DiscoveryRequest;
    fn subscribe() -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: NAME_TABLE_TYPE.to_owned(),
            ..Default::default()
        }
    }
    fn name_table(&self) -> Option<Option<NameTable>> {
        (self.type_url == NAME_TABLE_TYPE).then(|| {
            self.resources
                .first()
                .and_then(|a| NameTable::decode(a.value.as_slice()).ok())
        })
    }
    fn ack(&self) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: self.type_url.clone(),
            version_info: self.version_info.clone(),
            response_nonce: self.nonce.clone(),
            ..Default::default()
        }
    }
}

impl NameTables for DeltaDiscoveryResponse {
    type Request = DeltaDiscoveryRequest;
    fn subscribe() -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: NAME_TABLE_TYPE.to_owned(),
            ..Default::default()
        }
    }
    fn name_table(&self) -> Option<Option<NameTable>> {
        (self.type_url == NAME_TABLE_TYPE).then(|| {
            self.resources
                .iter()
                .find_map(|r| r.resource.as_ref())
                .and_then(|a| NameTable::decode(a.value.as_slice()).ok())
        })
    }
    fn ack(&self) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: self.type_url.clone(),
            response_nonce: self.nonce.clone(),
            ..Default::default()
        }
    }
}

/// `responses` without the name tables, which go to `dns` (a table that
/// does not decode keeps the last one) and are ACKed on `acks`.
fn without_name_tables<R: NameTables>(
    responses: Responses<R>,
    dns: Option<Arc<DnsFeed>>,
    acks: mpsc::Sender<R::Request>,
) -> Responses<R> {
    let Some(dns) = dns else {
        return responses;
    };
    Box::pin(futures::StreamExt::filter_map(responses, move |r| {
        let (dns, acks) = (dns.clone(), acks.clone());
        async move {
            let Ok(response) = &r else {
                return Some(r);
            };
            // Every other response goes on to Envoy.
            let Some(table) = response.name_table() else {
                return Some(r);
            };
            match table {
                Some(t) => {
                    debug!(names = t.table.len(), "name table for the DNS proxy");
                    dns.table
                        .send_replace(Arc::new(Table::new(&t, &dns.namespace, &dns.domain)));
                }
                None => warn!("a name table that does not decode; the last one is kept"),
            }
            let _ = acks.send(response.ack()).await;
            None
        }
    }))
}

fn error_detail(health: &Health) -> Option<RpcStatus> {
    match health {
        Health::Healthy => None,
        Health::Unhealthy(message) => Some(RpcStatus {
            code: INTERNAL,
            message: message.clone(),
            details: Vec::new(),
        }),
    }
}

type Responses<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The daemon's `responses` on their way to Envoy, the ECDS resources that
/// `ecds` finds in each made local ([`localize`]: WasmPlugins' modules
/// fetched into `wasm`).
fn localized<R: Send + 'static>(
    responses: Streaming<R>,
    wasm: Arc<ModuleCache>,
    ecds: for<'a> fn(&'a mut R) -> Vec<&'a mut Any>,
) -> Responses<R> {
    Box::pin(futures::StreamExt::then(responses, move |r| {
        let wasm = wasm.clone();
        async move {
            let mut r = r?;
            for any in ecds(&mut r) {
                *any = localize(std::mem::take(any), &wasm).await;
            }
            Ok(r)
        }
    }))
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsProxy {
    type StreamAggregatedResourcesStream = Responses<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Responses<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (requests, acks) = upstream_requests(
            request.into_inner(),
            self.health.clone(),
            |h| DiscoveryRequest {
                type_url: HEALTH_TYPE.to_owned(),
                error_detail: error_detail(h),
                ..Default::default()
            },
            self.dns.as_ref().map(|_| DiscoveryResponse::subscribe()),
        );
        let channel = self.upstream.connect().await.map_err(unavailable)?;
        let responses = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .stream_aggregated_resources(requests)
            .await?
            .into_inner();
        let responses = localized(responses, self.wasm.clone(), |r: &mut DiscoveryResponse| {
            if r.type_url == EXTENSION_CONFIG_TYPE {
                r.resources.iter_mut().collect()
            } else {
                Vec::new()
            }
        });
        Ok(Response::new(without_name_tables(
            responses,
            self.dns.clone(),
            acks,
        )))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (requests, acks) = upstream_requests(
            request.into_inner(),
            self.health.clone(),
            |h| DeltaDiscoveryRequest {
                type_url: HEALTH_TYPE.to_owned(),
                error_detail: error_detail(h),
                ..Default::default()
            },
            self.dns
                .as_ref()
                .map(|_| DeltaDiscoveryResponse::subscribe()),
        );
        let channel = self.upstream.connect().await.map_err(unavailable)?;
        let responses = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .delta_aggregated_resources(requests)
            .await?
            .into_inner();
        let responses = localized(
            responses,
            self.wasm.clone(),
            |r: &mut DeltaDiscoveryResponse| {
                if r.type_url == EXTENSION_CONFIG_TYPE {
                    r.resources
                        .iter_mut()
                        .filter_map(|r| r.resource.as_mut())
                        .collect()
                } else {
                    Vec::new()
                }
            },
        );
        Ok(Response::new(without_name_tables(
            responses,
            self.dns.clone(),
            acks,
        )))
    }
}

fn unavailable(e: tonic::transport::Error) -> Status {
    Status::unavailable(format!("the daemon's xDS endpoint: {e}"))
}
