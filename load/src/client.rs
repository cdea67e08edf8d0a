//! An ADS client that behaves like Envoy: subscribes, follows references
//! (clusters -> endpoints, listeners -> routes), ACKs, and records what it
//! received and when.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use translator::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};

/// One response as received.
#[derive(Clone, Debug)]
pub struct Received {
    /// When it arrived.
    pub at: Instant,
    /// Its type URL.
    pub type_url: String,
    /// Names of the resources in it.
    pub names: Vec<String>,
    /// Names removed (Delta).
    pub removed: Vec<String>,
    /// Bytes of resources.
    pub bytes: usize,
}

/// What a client has seen, shared with the caller.
pub type Log = Arc<Mutex<Vec<Received>>>;

/// A simulated proxy.
#[derive(Debug)]
pub struct Client {
    /// Every response received, in order.
    pub log: Log,
    /// The resources the client holds now, by type URL and name.
    pub state: State,
}

/// Envoy's `envoy.service.discovery.v3.DiscoveryRequest` as this client
/// sends it (the same fields and bytes; encoded by hand below): the
/// names are kept already encoded, so that an ACK, which names every
/// cluster again (~65 KiB at 1000 services), hands them on without a copy
/// ([`SotwBody`]). The simulated proxies share two cores with the daemon;
/// what they spend is taken from it. Kept as ~1400 shared `Bytes`, each
/// ACK's clone and drop of them was half of the simulator's CPU after an
/// endpoint change.
#[derive(Clone, Debug, Default, PartialEq)]
struct SotwRequest {
    /// Field 1.
    version_info: String,
    /// Field 2.
    node: Option<Node>,
    /// Field 3, `repeated string resource_names`, as encoded.
    resource_names: EncodedNames,
    /// Field 4.
    type_url: String,
    /// Field 5.
    response_nonce: String,
}

/// `repeated string resource_names` (field 3) as protobuf encodes it: each
/// name with its key and length, end to end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct EncodedNames(bytes::Bytes);

impl EncodedNames {
    fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> EncodedNames {
        let mut buf = bytes::BytesMut::new();
        for name in names {
            use prost::encoding::{WireType, encode_key, encode_varint};
            encode_key(3, WireType::LengthDelimited, &mut buf);
            encode_varint(name.len() as u64, &mut buf);
            buf.extend_from_slice(name.as_bytes());
        }
        EncodedNames(buf.freeze())
    }
}

impl SotwRequest {
    /// Fields 1 and 2, those before the names, as prost writes them.
    fn write_head(&self, buf: &mut impl bytes::BufMut) {
        if !self.version_info.is_empty() {
            prost::encoding::string::encode(1, &self.version_info, buf);
        }
        if let Some(node) = &self.node {
            prost::encoding::message::encode(2, node, buf);
        }
    }

    /// Fields 4 and 5, those after the names.
    fn write_tail(&self, buf: &mut impl bytes::BufMut) {
        for (tag, text) in [(4, &self.type_url), (5, &self.response_nonce)] {
            if !text.is_empty() {
                prost::encoding::string::encode(tag, text, buf);
            }
        }
    }
}

impl Message for SotwRequest {
    fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
        self.write_head(buf);
        buf.put_slice(&self.resource_names.0);
        self.write_tail(buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Only ever sent: nothing is kept from a decode.
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        use prost::encoding::{message, string};
        let text = |tag, s: &String| {
            if s.is_empty() {
                0
            } else {
                string::encoded_len(tag, s)
            }
        };
        text(1, &self.version_info)
            + self.node.as_ref().map_or(0, |n| message::encoded_len(2, n))
            + self.resource_names.0.len()
            + text(4, &self.type_url)
            + text(5, &self.response_nonce)
    }

    fn clear(&mut self) {
        *self = SotwRequest::default();
    }
}

/// A SotW request stream as an HTTP/2 body: each request framed as gRPC
/// does (a 0 byte, the length as 4 bytes big-endian, the message), handed
/// on as three shared pieces, the names (`EncodedNames`) not copied.
struct SotwBody {
    requests: mpsc::Receiver<SotwRequest>,
    pieces: std::collections::VecDeque<bytes::Bytes>,
}

impl SotwBody {
    fn frame(request: SotwRequest) -> [bytes::Bytes; 3] {
        let mut head = bytes::BytesMut::new();
        head.extend_from_slice(&[0]);
        head.extend_from_slice(
            &u32::try_from(request.encoded_len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        request.write_head(&mut head);
        let mut tail = bytes::BytesMut::new();
        request.write_tail(&mut tail);
        [head.freeze(), request.resource_names.0, tail.freeze()]
    }
}

impl tonic::codegen::Body for SotwBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        use std::task::Poll;
        loop {
            if let Some(piece) = self.pieces.pop_front() {
                if piece.is_empty() {
                    continue;
                }
                return Poll::Ready(Some(Ok(http_body::Frame::data(piece))));
            }
            match self.requests.poll_recv(cx) {
                Poll::Ready(Some(request)) => self.pieces.extend(SotwBody::frame(request)),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

/// `sidecar~IP~NAME.NS~NS.svc.cluster.local` with `NAMESPACE` metadata.
pub fn sidecar_node(name: &str, namespace: &str) -> Node {
    Node {
        id: format!("sidecar~10.0.0.1~{name}.{namespace}~{namespace}.svc.cluster.local"),
        ..Default::default()
    }
}

impl Client {
    /// Connects to `addr` (`http://host:port`) as `node` and starts
    /// following config; returns once the stream is open.
    ///
    /// # Errors
    /// When the daemon cannot be reached.
    pub async fn connect(addr: &str, node: Node, delta: bool) -> anyhow::Result<Client> {
        // Written to as Envoy writes: one write per turn (`coalesce`).
        let channel = tonic::transport::Endpoint::from_shared(addr.to_owned())?
            .connect_with_connector(crate::coalesce::Connector)
            .await?;
        let log = Log::default();
        let state = State::default();
        if delta {
            let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
            for type_url in [CLUSTER_TYPE, LISTENER_TYPE] {
                tx.send(DeltaDiscoveryRequest {
                    node: Some(node.clone()),
                    type_url: type_url.into(),
                    ..Default::default()
                })
                .await?;
            }
            let mut responses = AggregatedDiscoveryServiceClient::new(channel)
                .delta_aggregated_resources(ReceiverStream::new(rx))
                .await?
                .into_inner();
            let (log2, state2) = (log.clone(), state.clone());
            tokio::spawn(async move {
                let mut subscribed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
                while let Some(Ok(r)) = responses.next().await {
                    if !on_delta(&r, &tx, &log2, &state2, &mut subscribed).await {
                        break;
                    }
                }
            });
        } else {
            let (tx, rx) = mpsc::channel::<SotwRequest>(16);
            for type_url in [CLUSTER_TYPE, LISTENER_TYPE] {
                tx.send(SotwRequest {
                    node: Some(node.clone()),
                    type_url: type_url.into(),
                    ..Default::default()
                })
                .await?;
            }
            // The request stream is written as gRPC frames of shared bytes
            // (`SotwBody`), not through tonic's encoder: that copies each
            // ~65 KiB ACK into a fresh buffer, and after a quiet second the
            // kernel zeroing those pages was a fifth of the machine's CPU
            // in an endpoint change.
            use tonic::codec::Codec as _;
            use tonic::codegen::Service as _;
            use tonic::codegen::http;
            let mut channel = channel;
            std::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
            let request = http::Request::builder()
                .method(http::Method::POST)
                .uri(format!("{addr}{SOTW_PATH}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(tonic::body::Body::new(SotwBody {
                    requests: rx,
                    pieces: std::collections::VecDeque::new(),
                }))?;
            let response = channel.call(request).await?;
            let (parts, body) = response.into_parts();
            let mut responses = tonic::codec::Streaming::new_response(
                tonic_prost::ProstCodec::<SotwRequest, DiscoveryResponse>::default().decoder(),
                body,
                parts.status,
                None,
                None,
            );
            let (log2, state2) = (log.clone(), state.clone());
            tokio::spawn(async move {
                let mut names: BTreeMap<String, EncodedNames> = BTreeMap::new();
                while let Some(Ok(r)) = responses.next().await {
                    if !on_sotw(&r, &tx, &log2, &state2, &mut names).await {
                        break;
                    }
                }
            });
        }
        Ok(Client { log, state })
    }

    /// Responses received so far.
    pub fn received(&self) -> Vec<Received> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Whether the client holds at least one resource of each of CDS, EDS,
    /// LDS and RDS (its initial config has arrived).
    pub fn has_initial_config(&self) -> bool {
        let Ok(state) = self.state.lock() else {
            return false;
        };
        [CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE]
            .iter()
            .all(|t| state.get(*t).is_some_and(|m| !m.is_empty()))
    }

    /// When the first response of `type_url` carrying `name` arrived after
    /// `since` (read in place: cheap enough to poll thousands of clients).
    pub fn first_after(&self, since: Instant, type_url: &str, name: &str) -> Option<Instant> {
        let log = self.log.lock().ok()?;
        log.iter()
            .rev()
            .take_while(|r| r.at > since)
            .filter(|r| r.type_url == type_url && r.names.iter().any(|n| n == name))
            .last()
            .map(|r| r.at)
    }

    /// Bytes of resources received after `since`.
    pub fn bytes_after(&self, since: Instant) -> usize {
        let Ok(log) = self.log.lock() else { return 0 };
        log.iter()
            .rev()
            .take_while(|r| r.at > since)
            .map(|r| r.bytes)
            .sum()
    }
}

/// What a type's resources refer to that must be subscribed next.
fn references(type_url: &str, resources: &Resources) -> Option<(&'static str, BTreeSet<String>)> {
    match type_url {
        CLUSTER_TYPE => Some((
            ENDPOINT_TYPE,
            resources
                .values()
                .filter_map(|a| Cluster::decode(a.value.as_slice()).ok())
                .filter(|c| {
                    c.cluster_discovery_type
                        == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
                })
                .map(|c| c.name)
                .collect(),
        )),
        LISTENER_TYPE => Some((
            ROUTE_TYPE,
            resources
                .values()
                .filter_map(|a| Listener::decode(a.value.as_slice()).ok())
                .flat_map(|l| l.filter_chains.into_iter().chain(l.default_filter_chain))
                .flat_map(|c| c.filters)
                .filter_map(|f| match f.config_type {
                    Some(filter::ConfigType::TypedConfig(a))
                        if a.type_url.ends_with("HttpConnectionManager") =>
                    {
                        HttpConnectionManager::decode(a.value.as_slice()).ok()
                    }
                    _ => None,
                })
                .filter_map(|h| match h.route_specifier {
                    Some(http_connection_manager::RouteSpecifier::Rds(r)) => {
                        Some(r.route_config_name)
                    }
                    _ => None,
                })
                .collect(),
        )),
        _ => None,
    }
}

/// One type's resources by name. Hashed, as Envoy keeps them: a SotW EDS
/// push (one cluster's assignment) is inserted among ~1400 names that
/// share long prefixes, which in a `BTreeMap` was ~5 % of the simulated
/// proxies' CPU in an endpoint change.
pub type Resources = std::collections::HashMap<String, Any>;

/// What a client holds, by type URL (see [`Client::state`]).
pub type State = Arc<Mutex<BTreeMap<String, Resources>>>;

async fn on_sotw(
    r: &DiscoveryResponse,
    tx: &mpsc::Sender<SotwRequest>,
    log: &Log,
    state: &State,
    names: &mut BTreeMap<String, EncodedNames>,
) -> bool {
    let decoded: Resources = r
        .resources
        .iter()
        .map(|a| (resource_name(&r.type_url, a), a.clone()))
        .collect();
    if let Ok(mut l) = log.lock() {
        l.push(Received {
            at: Instant::now(),
            type_url: r.type_url.clone(),
            names: {
                let mut names: Vec<String> = decoded.keys().cloned().collect();
                names.sort_unstable();
                names
            },
            removed: Vec::new(),
            bytes: r.resources.iter().map(|a| a.value.len()).sum(),
        });
    }
    let whole = {
        let Ok(mut st) = state.lock() else {
            return false;
        };
        let entry = st.entry(r.type_url.clone()).or_default();
        if r.type_url == CLUSTER_TYPE || r.type_url == LISTENER_TYPE {
            // Wildcard types: the response is the whole set.
            *entry = decoded;
        } else {
            entry.extend(decoded);
        }
        // Only clusters and listeners refer to further resources.
        if r.type_url == CLUSTER_TYPE || r.type_url == LISTENER_TYPE {
            entry.clone()
        } else {
            Resources::new()
        }
    };
    let ack = SotwRequest {
        type_url: r.type_url.clone(),
        version_info: r.version_info.clone(),
        response_nonce: r.nonce.clone(),
        resource_names: names.get(&r.type_url).cloned().unwrap_or_default(),
        ..Default::default()
    };
    if tx.send(ack).await.is_err() {
        return false;
    }
    if let Some((next, wanted)) = references(&r.type_url, &whole) {
        let wanted = EncodedNames::new(wanted.iter().map(String::as_str));
        if names.get(next) != Some(&wanted) {
            names.insert(next.to_owned(), wanted.clone());
            let nonce = String::new();
            let req = SotwRequest {
                type_url: next.into(),
                resource_names: wanted,
                response_nonce: nonce,
                ..Default::default()
            };
            if tx.send(req).await.is_err() {
                return false;
            }
        }
    }
    true
}

async fn on_delta(
    r: &DeltaDiscoveryResponse,
    tx: &mpsc::Sender<DeltaDiscoveryRequest>,
    log: &Log,
    state: &State,
    subscribed: &mut BTreeMap<String, BTreeSet<String>>,
) -> bool {
    if let Ok(mut l) = log.lock() {
        l.push(Received {
            at: Instant::now(),
            type_url: r.type_url.clone(),
            names: r.resources.iter().map(|x| x.name.clone()).collect(),
            removed: r.removed_resources.clone(),
            bytes: r
                .resources
                .iter()
                .filter_map(|x| x.resource.as_ref())
                .map(|a| a.value.len())
                .sum(),
        });
    }
    let whole = {
        let Ok(mut st) = state.lock() else {
            return false;
        };
        let entry = st.entry(r.type_url.clone()).or_default();
        for res in &r.resources {
            if let Some(a) = &res.resource {
                entry.insert(res.name.clone(), a.clone());
            }
        }
        for name in &r.removed_resources {
            entry.remove(name);
        }
        // Only clusters and listeners refer to further resources.
        if r.type_url == CLUSTER_TYPE || r.type_url == LISTENER_TYPE {
            entry.clone()
        } else {
            Resources::new()
        }
    };
    let ack = DeltaDiscoveryRequest {
        type_url: r.type_url.clone(),
        response_nonce: r.nonce.clone(),
        ..Default::default()
    };
    if tx.send(ack).await.is_err() {
        return false;
    }
    if let Some((next, wanted)) = references(&r.type_url, &whole) {
        let have = subscribed.entry(next.to_owned()).or_default();
        let subscribe: Vec<String> = wanted.difference(have).cloned().collect();
        let unsubscribe: Vec<String> = have.difference(&wanted).cloned().collect();
        if !subscribe.is_empty() || !unsubscribe.is_empty() {
            *have = wanted;
            let req = DeltaDiscoveryRequest {
                type_url: next.into(),
                resource_names_subscribe: subscribe,
                resource_names_unsubscribe: unsubscribe,
                ..Default::default()
            };
            if tx.send(req).await.is_err() {
                return false;
            }
        }
    }
    true
}

/// The name of a cluster, listener, route configuration or load
/// assignment: field 1 of each (`name`, or `cluster_name`). Decoding only
/// that field skips the rest of the message by its length, so the
/// simulated proxies (which share the daemon's cores) do not spend their
/// time decoding route tables they never read.
#[derive(Clone, PartialEq, prost::Message)]
struct Named {
    #[prost(string, tag = "1")]
    name: String,
}

/// A resource's name, decoded from its message.
fn resource_name(type_url: &str, a: &Any) -> String {
    match type_url {
        CLUSTER_TYPE | LISTENER_TYPE | ENDPOINT_TYPE | ROUTE_TYPE => {
            Named::decode(a.value.as_slice())
                .map(|n| n.name)
                .unwrap_or_default()
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};

    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

    /// One EDS ACK as this client writes it, and as Envoy's message.
    fn an_ack() -> (SotwRequest, DiscoveryRequest) {
        let ours = SotwRequest {
            version_info: "3".into(),
            node: Some(sidecar_node("a", "ns")),
            resource_names: EncodedNames::new(["x", "y"]),
            type_url: ENDPOINT_TYPE.into(),
            response_nonce: "3-1".into(),
        };
        let envoys = DiscoveryRequest {
            version_info: "3".into(),
            node: Some(sidecar_node("a", "ns")),
            resource_names: vec!["x".into(), "y".into()],
            type_url: ENDPOINT_TYPE.into(),
            response_nonce: "3-1".into(),
            ..Default::default()
        };
        (ours, envoys)
    }

    #[test]
    fn sotw_requests_encode_as_envoys_discovery_request() {
        let (ours, envoys) = an_ack();
        assert_eq!(ours.encode_to_vec(), envoys.encode_to_vec());
        assert_eq!(ours.encoded_len(), envoys.encoded_len());
        // The first request of a type: no version, nonce or names.
        let first = SotwRequest {
            node: Some(sidecar_node("a", "ns")),
            type_url: CLUSTER_TYPE.into(),
            ..Default::default()
        };
        let decoded = DiscoveryRequest::decode(first.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded.type_url, CLUSTER_TYPE);
        assert!(decoded.resource_names.is_empty() && decoded.version_info.is_empty());
        assert_eq!(decoded.node, first.node);
        assert_eq!(first.encoded_len(), first.encode_to_vec().len());
    }

    #[test]
    fn the_sotw_body_frames_a_request_as_grpc_does() {
        let (ours, envoys) = an_ack();
        let envoys = envoys.encode_to_vec();
        let mut expected = vec![0];
        expected.extend_from_slice(&(envoys.len() as u32).to_be_bytes());
        expected.extend_from_slice(&envoys);
        assert_eq!(SotwBody::frame(ours).concat(), expected);
    }

    #[test]
    fn names_are_field_one_of_every_type() {
        let cluster = Cluster {
            name: "outbound|80||a".into(),
            alt_stat_name: "x".into(),
            ..Default::default()
        };
        let route = RouteConfiguration {
            name: "8080".into(),
            virtual_hosts: vec![VirtualHost {
                name: "a:80".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let cla = ClusterLoadAssignment {
            cluster_name: "outbound|80||a".into(),
            ..Default::default()
        };
        let listener = Listener {
            name: "virtualOutbound".into(),
            ..Default::default()
        };
        let cases = [
            (CLUSTER_TYPE, cluster.encode_to_vec(), "outbound|80||a"),
            (ROUTE_TYPE, route.encode_to_vec(), "8080"),
            (ENDPOINT_TYPE, cla.encode_to_vec(), "outbound|80||a"),
            (LISTENER_TYPE, listener.encode_to_vec(), "virtualOutbound"),
        ];
        for (type_url, value, name) in cases {
            let any = Any {
                type_url: type_url.into(),
                value,
            };
            assert_eq!(resource_name(type_url, &any), name, "{type_url}");
        }
    }
}
