//! CDS and EDS: `outbound|port|subset|host` clusters and their
//! `ClusterLoadAssignment`s, `PassthroughCluster` and `BlackHoleCluster`.

use std::collections::BTreeMap;

use crds::destination_rule::{SimpleLb, TrafficPolicy};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    DiscoveryType, DnsLookupFamily, EdsClusterConfig, LbPolicy, common_lb_config,
};
use envoy_types::pb::envoy::config::core::v3::{HealthStatus, HealthStatusSet, Locality, Metadata};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::google::protobuf::UInt32Value;

use std::sync::Arc;

use crds::destination_rule::DestinationRuleSpec;

use crate::encoded::{
    ClusterView, Encoded, ServiceResources, encode, encode_with, nested_len, put_head, put_key,
    put_string, put_varint, string_len, uint32_len,
};
use crate::model::{
    Config, Endpoint, NetworkGateway, Networks, Protocol, Proxy, ProxyKind, Service, ServicePort,
    ServiceResolution, Snapshot,
};
use crate::policy::{
    AutoMtlsField, Effective, LocalityPlan, MeshPool, TRANSPORT_SOCKET_MATCH, auto_mtls_match,
    discovery, tls_mode_istio,
};
use crate::{CLUSTER_TYPE, ENDPOINT_TYPE};
use crate::{ads_config_source_waited_for, duration, socket_address};
use prost::Message as _;
use prost::encoding::WireType;

/// Istio's name of the cluster forwarding to the original destination.
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// Istio's name of the cluster that drops everything.
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";
/// Istio's default upstream connect timeout (MeshConfig `connectTimeout`), seconds.
pub(crate) const CONNECT_TIMEOUT_SECS: u64 = 10;

/// Istio's cluster name: `outbound|9080|v1|reviews.default.svc.cluster.local`
/// (`subset` empty for the whole service).
pub fn cluster_name(port: u32, subset: &str, hostname: &str) -> String {
    outbound_name("outbound|", port, "|", subset, hostname)
}

/// `<prefix><port><sep><subset><sep><hostname>`, written out rather than
/// with `format!`, into one allocation (the port without a `String` of its
/// own): a cluster name and an SNI per cluster of every sidecar.
fn outbound_name(prefix: &str, port: u32, sep: &str, subset: &str, hostname: &str) -> String {
    use std::fmt::Write;
    let mut name =
        String::with_capacity(prefix.len() + 5 + 2 * sep.len() + subset.len() + hostname.len());
    name.push_str(prefix);
    // Cannot fail: writing to a `String`.
    let _ = write!(name, "{port}");
    name.push_str(sep);
    name.push_str(subset);
    name.push_str(sep);
    name.push_str(hostname);
    name
}

/// The services `proxy` sees (all of them, or only those named in `only`),
/// each with the DestinationRule that applies to it from the proxy's
/// namespace.
fn visible<'a>(
    snap: &'a Snapshot,
    proxy: &'a Proxy,
    only: Option<&'a std::collections::BTreeSet<String>>,
) -> impl Iterator<Item = (&'a Arc<Service>, Option<&'a Config<DestinationRuleSpec>>)> + 'a {
    snap.services_for(proxy)
        .filter(move |s| only.is_none_or(|o| o.contains(&s.hostname)))
        .map(|s| (s, snap.destination_rule_for(&s.hostname, proxy)))
}

/// Clusters and endpoint assignments for every service port and every
/// DestinationRule subset, seen from `proxy` (its namespace decides what is
/// visible, its locality the endpoints' priorities and weights).
pub(crate) fn build(snap: &Snapshot, proxy: &Proxy) -> (Vec<Cluster>, Vec<ClusterLoadAssignment>) {
    let services: Vec<_> = visible(snap, proxy, None).collect();
    // Clusters are large (~3 KiB each): room for all of them up front
    // rather than copies as the vector grows.
    let views = ProxyViews::new(snap, proxy);
    let count: usize = services
        .iter()
        .map(|(s, dr)| cluster_count(s, *dr, views.sni_dnat))
        .sum();
    let mut clusters = Vec::with_capacity(count + 2);
    clusters.extend([passthrough_cluster(&snap.mesh), blackhole_cluster()]);
    let mut assignments = Vec::with_capacity(count);
    for (svc, dr) in services {
        let view = views.of(dr);
        let metadata = view.service_metadata.then(|| service_metadata(svc));
        service_clusters(snap, view, svc, dr, &mut |name, cluster, auto, cla| {
            let mut cluster = match cluster {
                PlannedCluster::Built(cluster) => cluster,
                PlannedCluster::Plain { http2 } => plain_cluster(name, http2),
            };
            cluster.metadata.clone_from(&metadata);
            if let Some(identity) = auto {
                cluster.transport_socket_matches = vec![auto_mtls_match(identity)];
            }
            clusters.push(*cluster);
            assignments.extend(cla.map(|a| a.build()));
        });
    }
    (clusters, assignments)
}

/// The clusters [`service_clusters`] makes of `svc` seen through `dr`:
/// one per port and subset (the whole service counts as one), twice for a
/// gateway that gets SNI-DNAT clusters; at most as many load assignments.
fn cluster_count(svc: &Service, dr: Option<&Config<DestinationRuleSpec>>, sni_dnat: bool) -> usize {
    let n = svc.ports.len() * (1 + dr.map_or(0, |d| d.spec.subsets.len()));
    if sni_dnat { 2 * n } else { n }
}

/// [`build`], encoded for the wire (only the services in `only`, if
/// given, and then without `PassthroughCluster` and `BlackHoleCluster`).
/// Each service's clusters and load assignments come from the snapshot's
/// [`crate::encoded::ClusterMemo`]: built and encoded by the first proxy
/// that needs them, then shared by every other proxy that sees the service
/// through the same DestinationRule from the same locality (what they are
/// made from), as istiod's XDS cache shares CDS and EDS resources across
/// proxies.
pub(crate) fn build_encoded(
    snap: &Snapshot,
    proxy: &Proxy,
    only: Option<&std::collections::BTreeSet<String>>,
) -> (Vec<Encoded>, Vec<Encoded>) {
    if only.is_none() {
        // A full config reads or fills an entry for every service it sees.
        snap.cluster_memo.reserve(snap.services.len());
    }
    let views = ProxyViews::new(snap, proxy);
    let built: Vec<_> = visible(snap, proxy, only)
        .map(|(svc, dr)| {
            let view = views.of(dr);
            snap.cluster_memo.get_or_build(svc, dr, view, || {
                let count = cluster_count(svc, dr, view.sni_dnat);
                let mut built = ServiceResources {
                    clusters: Vec::with_capacity(count),
                    assignments: Vec::with_capacity(count),
                };
                let metadata = view.service_metadata.then(|| service_metadata(svc));
                let metadata_bytes = metadata.as_ref().map(prost::Message::encode_to_vec);
                service_clusters(snap, view, svc, dr, &mut |name, cluster, auto, cla| {
                    built.clusters.push(match cluster {
                        PlannedCluster::Built(mut cluster) => {
                            cluster.metadata.clone_from(&metadata);
                            encode_cluster(&cluster, auto)
                        }
                        PlannedCluster::Plain { http2 } => {
                            encode_plain_cluster(name, http2, auto, metadata_bytes.as_deref())
                        }
                    });
                    if let Some(cla) = cla {
                        built.assignments.push(cla.encode());
                    }
                });
                built
            })
        })
        .collect();
    // Sized before they are filled: ~1400 of each at 1000 services.
    let mut clusters =
        Vec::with_capacity(2 + built.iter().map(|b| b.clusters.len()).sum::<usize>());
    if only.is_none() {
        clusters.extend(
            [passthrough_cluster(&snap.mesh), blackhole_cluster()]
                .iter()
                .map(|c| encode(CLUSTER_TYPE, &c.name, c)),
        );
    }
    let mut assignments = Vec::with_capacity(built.iter().map(|b| b.assignments.len()).sum());
    for b in &built {
        clusters.extend(b.clusters.iter().cloned());
        assignments.extend(b.assignments.iter().cloned());
    }
    (clusters, assignments)
}

/// What the clusters of the services a proxy sees depend on of it
/// ([`ClusterView`], as [`build_encoded`] keys its memo): made once per
/// proxy for each of the four kinds a rule can ask for (with or without
/// the credentials it names, with or without the labels its
/// `failoverPriority` compares), not per service.
struct ProxyViews<'a> {
    snap: &'a Snapshot,
    proxy: &'a Proxy,
    /// The proxy is a gateway with an AUTO_PASSTHROUGH server
    /// (`listener::auto_passthrough`), found once.
    sni_dnat: bool,
    made: [std::cell::OnceCell<ClusterView>; 4],
}

impl<'a> ProxyViews<'a> {
    fn new(snap: &'a Snapshot, proxy: &'a Proxy) -> ProxyViews<'a> {
        ProxyViews {
            snap,
            proxy,
            sni_dnat: crate::listener::auto_passthrough(snap, proxy),
            made: Default::default(),
        }
    }

    /// The view of a service seen through `dr`.
    fn of(&self, dr: Option<&Config<DestinationRuleSpec>>) -> &ClusterView {
        let credentials = dr.is_some_and(|dr| gets_credentials(self.proxy, dr));
        let labelled = compares_labels(self.snap, dr);
        self.made[usize::from(credentials) | usize::from(labelled) << 1].get_or_init(|| {
            let split = self.snap.mesh.networks.split_view(self.proxy);
            ClusterView {
                locality: self.proxy.locality.clone(),
                credentials,
                sni_dnat: self.sni_dnat,
                network: split.0.to_owned(),
                network_view: split.1.to_vec(),
                service_metadata: self.proxy.stats_logger,
                labels: if labelled {
                    self.snap
                        .failover_keys
                        .iter()
                        .map(|k| {
                            let v = crate::model::topology_value(
                                &self.proxy.labels,
                                &self.proxy.locality,
                                &self.proxy.network,
                                k,
                            );
                            (k.clone(), v.to_owned())
                        })
                        .collect()
                } else {
                    Vec::new()
                },
            }
        })
    }
}

/// Whether the endpoint priorities of a service seen through `dr` may
/// compare the proxy's labels: some `failoverPriority` key is set, in the
/// mesh config or in `dr`. False at once in a mesh without one.
fn compares_labels(snap: &Snapshot, dr: Option<&Config<DestinationRuleSpec>>) -> bool {
    !snap.failover_keys.is_empty()
        && (snap
            .mesh
            .locality_lb
            .as_ref()
            .is_some_and(|l| l.failover_priority_keys().next().is_some())
            || dr.is_some_and(|dr| dr.spec.failover_priority_keys().next().is_some()))
}

/// Whether `proxy` gets the `credentialName` Secrets `dr` names (and
/// originates TLS with them), as istiod: a gateway does, and so does a
/// workload the rule's `workloadSelector` picks; a sidecar does not get
/// them from a rule for every workload.
pub(crate) fn gets_credentials(proxy: &Proxy, dr: &Config<DestinationRuleSpec>) -> bool {
    (proxy.kind == ProxyKind::Router || dr.spec.workload_selector.is_some())
        && dr.spec.names_credential()
}

/// A cluster encoded as a CDS resource, with its auto mTLS match
/// `auto` (Istio's `tlsMode-istio`) written by
/// [`AutoMtlsField`]: the same bytes as prost's
/// encoding of the cluster with [`auto_mtls_match`] in
/// `transport_socket_matches`. prost writes fields in tag order, and
/// `transport_socket_matches` (43) is the highest tag this translator
/// sets on a cluster (the `lb_config` oneof goes at its lowest, 23), so
/// the match goes last.
fn encode_cluster(cluster: &Cluster, auto: Option<&IstioTls>) -> Encoded {
    let Some(identity) = auto else {
        return encode(CLUSTER_TYPE, &cluster.name, cluster);
    };
    debug_assert!(cluster.transport_socket_matches.is_empty());
    let field = AutoMtlsField::new(identity);
    encode_with(
        CLUSTER_TYPE,
        &cluster.name,
        cluster.encoded_len() + field.len(),
        |b| {
            // Cannot fail: a `Vec` grows to whatever is written.
            let _ = cluster.encode(b);
            field.write(b);
        },
    )
}

/// What [`service_clusters`] hands each cluster to: its name, the
/// cluster, what its auto mTLS match is made from, and its load assignment.
type Emit<'e> = dyn FnMut(&str, PlannedCluster, Option<&IstioTls>, Option<Assignment<'_>>) + 'e;

/// A cluster as [`service_clusters`] hands it on.
enum PlannedCluster {
    /// Built as a message, without its auto mTLS match. (Boxed: a
    /// `Cluster` is ~3 KiB, copied at every move.)
    Built(Box<Cluster>),
    /// An EDS cluster with no traffic policy and no locality weights:
    /// [`plain_cluster`], the same as every other such cluster but for its
    /// name and protocol (so the daemon's path writes it from parts).
    Plain {
        /// The port is HTTP/2 (or gRPC).
        http2: bool,
    },
}

/// An EDS cluster with no traffic policy and no locality weights, as
/// [`service_clusters`] builds it: Istio's defaults (connect timeout,
/// `LEAST_REQUEST`, unlimited circuit breakers) and, for HTTP/2, the
/// upstream protocol options.
fn plain_cluster(name: &str, http2: bool) -> Box<Cluster> {
    let mut cluster = new_cluster(name);
    Effective::default().apply(&mut cluster, http2, "", None);
    set_eds(&mut cluster, name);
    cluster
}

/// A cluster named `name` with Istio's connect timeout, nothing else set.
fn new_cluster(name: &str) -> Box<Cluster> {
    Box::new(Cluster {
        name: name.to_owned(),
        connect_timeout: Some(duration(std::time::Duration::from_secs(
            CONNECT_TIMEOUT_SECS,
        ))),
        ..Default::default()
    })
}

/// Makes `cluster` an EDS cluster over ADS whose load assignment is named `name`.
fn set_eds(cluster: &mut Cluster, name: &str) {
    cluster.cluster_discovery_type = discovery(DiscoveryType::Eds);
    cluster.eds_cluster_config = Some(EdsClusterConfig {
        eds_config: Some(ads_config_source_waited_for()),
        service_name: name.to_owned(),
    });
}

/// The parts of [`plain_cluster`] that are the same for every name,
/// encoded once by prost, for HTTP/1.1 and HTTP/2: the discovery type
/// (field 2), `eds_cluster_config`'s `eds_config` (its field 1), and
/// every other field (tags 4 to 42).
struct PlainParts {
    discovery: Vec<u8>,
    eds_config: Vec<u8>,
    rest: [Vec<u8>; 2],
}

static PLAIN_PARTS: std::sync::LazyLock<PlainParts> = std::sync::LazyLock::new(|| {
    let rest = |http2| {
        let mut c = plain_cluster("", http2);
        c.cluster_discovery_type = None;
        c.eds_cluster_config = None;
        c.encode_to_vec()
    };
    let c = plain_cluster("", false);
    PlainParts {
        discovery: c
            .cluster_discovery_type
            .as_ref()
            .map(|d| {
                let mut b = Vec::new();
                d.encode(&mut b);
                b
            })
            .unwrap_or_default(),
        eds_config: c
            .eds_cluster_config
            .map(|e| e.encode_to_vec())
            .unwrap_or_default(),
        rest: [rest(false), rest(true)],
    }
});

/// [`plain_cluster`] encoded as a CDS resource, with its auto mTLS match
/// when `auto` is given, written from [`PLAIN_PARTS`] without building it:
/// the same bytes as [`encode_cluster`] (prost's tag order: `name` 1, the
/// discovery type 2, `eds_cluster_config` 3 with its `eds_config` 1 and
/// `service_name` 2, the rest, `transport_socket_matches` 43).
fn encode_plain_cluster(
    name: &str,
    http2: bool,
    auto: Option<&IstioTls>,
    metadata: Option<&[u8]>,
) -> Encoded {
    let parts = &*PLAIN_PARTS;
    let rest = &parts.rest[usize::from(http2)];
    let matches = auto.map(AutoMtlsField::new);
    let eds = parts.eds_config.len() + string_len(name);
    let len = string_len(name)
        + parts.discovery.len()
        + nested_len(eds)
        + rest.len()
        + matches.as_ref().map_or(0, AutoMtlsField::len)
        + metadata.map_or(0, |m| {
            prost::encoding::key_len(CLUSTER_METADATA)
                + prost::encoding::encoded_len_varint(m.len() as u64)
                + m.len()
        });
    encode_with(CLUSTER_TYPE, name, len, |b| {
        put_string(b, 1, name);
        b.extend_from_slice(&parts.discovery);
        put_head(b, 3, eds);
        b.extend_from_slice(&parts.eds_config);
        put_string(b, 2, name);
        b.extend_from_slice(rest);
        if let Some(m) = &matches {
            m.write(b);
        }
        if let Some(m) = metadata {
            put_head(b, CLUSTER_METADATA, m.len());
            b.extend_from_slice(m);
        }
    })
}

/// `Cluster.metadata`'s field number.
const CLUSTER_METADATA: u32 = 25;

/// Istio's cluster metadata naming `svc` (`filter_metadata.istio.services`:
/// one `{host, name, namespace}`), which the labels of Istio's metrics
/// read (`destination_service`, [`crate::metrics`]); unless it is
/// `MESH_EXTERNAL`, also an empty [`crate::metrics::PEER_NAMESPACE`]
/// entry, on which the client's workload headers are sent.
fn service_metadata(svc: &Service) -> envoy_types::pb::envoy::config::core::v3::Metadata {
    let mut metadata = services_metadata(std::iter::once(svc)).unwrap_or_default();
    if !svc.external {
        // Its workloads are in the mesh: they are told the client's
        // workload (an empty struct is enough to look up).
        metadata.filter_metadata.insert(
            crate::metrics::PEER_NAMESPACE.to_owned(),
            Default::default(),
        );
    }
    metadata
}

/// Istio's cluster metadata naming `services`
/// (`filter_metadata.istio.services`: `{host, name, namespace}` each, as
/// istiod writes it on outbound and inbound clusters); `None` for none.
pub(crate) fn services_metadata<'a>(
    services: impl Iterator<Item = &'a Service>,
) -> Option<envoy_types::pb::envoy::config::core::v3::Metadata> {
    use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
    let string = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    let values: Vec<Value> = services
        .map(|svc| Value {
            kind: Some(Kind::StructValue(Struct {
                fields: [
                    ("host".to_owned(), string(&svc.hostname)),
                    ("name".to_owned(), string(&svc.name)),
                    ("namespace".to_owned(), string(&svc.namespace)),
                ]
                .into(),
            })),
        })
        .collect();
    if values.is_empty() {
        return None;
    }
    let istio = Struct {
        fields: [(
            "services".to_owned(),
            Value {
                kind: Some(Kind::ListValue(ListValue { values })),
            },
        )]
        .into(),
    };
    Some(envoy_types::pb::envoy::config::core::v3::Metadata {
        filter_metadata: [("istio".to_owned(), istio)].into(),
        ..Default::default()
    })
}

/// One service's clusters (each port: the whole service, then each subset
/// of `dr`) and their load assignments, seen from a proxy in `locality`
/// (`region/zone/subzone`) to which `dr` applies; each handed to `emit`
/// with, under auto mTLS, what its `tlsMode-istio` transport socket match
/// is made from (left for `emit` to add: [`auto_mtls_match`] as a message,
/// or [`encode_cluster`] writes it).
/// Nothing else of the proxy is read: [`crate::encoded::ClusterMemo`] keys on
/// `view`, which also says whether the proxy originates TLS with a rule's
/// `credentialName` Secret ([`gets_credentials`]; otherwise
/// [`Effective::drop_credential`]).
fn service_clusters(
    snap: &Snapshot,
    view: &ClusterView,
    svc: &Service,
    dr: Option<&Config<DestinationRuleSpec>>,
    emit: &mut Emit<'_>,
) {
    let no_labels = BTreeMap::new();
    let top = dr.and_then(|d| d.spec.traffic_policy.as_ref());
    for port in &svc.ports {
        // The whole service, then each subset of the rule.
        let subsets = dr
            .iter()
            .flat_map(|dr| &dr.spec.subsets)
            .map(|s| (s.name.as_str(), s.traffic_policy.as_ref(), &s.labels));
        let whole: (&str, Option<&TrafficPolicy>, &BTreeMap<String, String>) =
            ("", None, &no_labels);
        for (subset, subset_policy, labels) in std::iter::once(whole).chain(subsets) {
            let name = cluster_name(port.port, subset, &svc.hostname);
            let mut policy = Effective::resolve(top, subset_policy, port.port)
                .with_mesh(MeshPool::of(&snap.mesh, port.protocol));
            if !view.credentials {
                policy.drop_credential();
            }
            // The subset's endpoints, ready or not: their identities and
            // sidecars decide the cluster's TLS (as Istio's service accounts
            // count every instance), so that an endpoint turning ready (a
            // health-checked WorkloadEntry, a pod) changes EDS only.
            let all: Vec<&Endpoint> = svc
                .endpoints
                .iter()
                .filter(|ep| selects(labels, ep))
                .collect();
            // Ready ones; a draining one only for a cookie session, which
            // keeps sending its sessions there (Istio's endpoint filter).
            let keeps_draining = svc.keeps_draining();
            let endpoints: Vec<&Endpoint> = all
                .iter()
                .copied()
                .filter(|ep| {
                    if ep.draining {
                        keeps_draining
                    } else {
                        ep.ready
                    }
                })
                .collect();
            // A session may go on to a draining endpoint (Istio sets it on
            // the service's own cluster, whichever label it has).
            let overrides = subset.is_empty() && svc.persistent_session.is_some();
            // Most proxies and rules have no locality load balancing: the
            // endpoints' localities are gathered only for those that do.
            let plan = if policy.has_locality_plan(&view.locality) {
                let mut localities: Vec<&str> =
                    endpoints.iter().map(|e| e.locality.as_str()).collect();
                localities.sort_unstable();
                localities.dedup();
                policy.locality_plan(&view.locality, &view.labels, &localities)
            } else {
                None
            };
            // Auto mTLS (Istio's default): no TLS settings from a rule,
            // an in-mesh service, and endpoints with a sidecar whose
            // PeerAuthentication on that port is not DISABLE.
            let auto: Option<Vec<bool>> = (snap.mesh.auto_mtls
                && policy.tls_unset()
                && !svc.external
                && all
                    .iter()
                    .any(|e| e.in_mesh() && takes_mtls(snap, svc, port, e)))
            .then(|| {
                endpoints
                    .iter()
                    .map(|e| e.in_mesh() && takes_mtls(snap, svc, port, e))
                    .collect()
            });
            // A ServiceEntry's identities also stand in for the SANs a
            // rule's SIMPLE or MUTUAL settings leave out (Istio's
            // `constructUpstreamTLS`).
            let entry_tls = !svc.kubernetes && policy.originates_tls();
            let identity =
                (policy.istio_mutual() || auto.is_some() || entry_tls).then(|| IstioTls {
                    sni: istio_sni(port.port, subset, &svc.hostname),
                    sans: identities(&snap.mesh, svc, &all),
                    auto,
                });
            let auto = identity.as_ref().filter(|i| i.auto.is_some());
            let split = (!view.network.is_empty()).then(|| Split {
                networks: &snap.mesh.networks,
                network: &view.network,
                view: &view.network_view,
                mtls: if policy.istio_mutual() {
                    Mtls::All
                } else {
                    auto.and_then(|i| i.auto.as_deref())
                        .map_or(Mtls::None, Mtls::Some)
                },
            });
            let http2 = matches!(port.protocol, Protocol::Http2 | Protocol::Grpc);
            if view.sni_dnat {
                // A gateway with an AUTO_PASSTHROUGH server: the same
                // endpoints under Istio's SNI name, without TLS of its own
                // (the client's passes through), as Istio's
                // `SniDnatClusterMode`.
                let dnat = istio_sni(port.port, subset, &svc.hostname);
                let mut bare = policy.clone();
                bare.tls = None;
                bare.proxy_protocol = None;
                if svc.resolution == ServiceResolution::Static
                    && bare == Effective::default()
                    && !plan.as_ref().is_some_and(|p| p.weighted)
                {
                    let cla = assignment(
                        &dnat,
                        port,
                        &endpoints,
                        plan.as_ref(),
                        None,
                        split.as_ref(),
                        &snap.mesh.networks,
                    );
                    emit(&dnat, PlannedCluster::Plain { http2 }, None, Some(cla));
                } else {
                    let (mut cluster, cla) = service_cluster(
                        &dnat,
                        (svc, port),
                        &bare,
                        &endpoints,
                        (plan.as_ref(), split.as_ref(), &snap.mesh.networks),
                        None,
                    );
                    resolve_at_mesh_rate(&mut cluster, snap.mesh.dns_refresh_rate);
                    emit(&dnat, PlannedCluster::Built(cluster), None, cla);
                }
            }
            if svc.resolution == ServiceResolution::Static
                && policy == Effective::default()
                && !plan.as_ref().is_some_and(|p| p.weighted)
                && !overrides
            {
                let mtls = auto.and_then(|i| i.auto.as_ref());
                let cla = assignment(
                    &name,
                    port,
                    &endpoints,
                    plan.as_ref(),
                    mtls,
                    split.as_ref(),
                    &snap.mesh.networks,
                );
                emit(&name, PlannedCluster::Plain { http2 }, auto, Some(cla));
                continue;
            }
            let (mut cluster, cla) = service_cluster(
                &name,
                (svc, port),
                &policy,
                &endpoints,
                (plan.as_ref(), split.as_ref(), &snap.mesh.networks),
                identity.as_ref(),
            );
            resolve_at_mesh_rate(&mut cluster, snap.mesh.dns_refresh_rate);
            if overrides {
                cluster
                    .common_lb_config
                    .get_or_insert_default()
                    .override_host_status = Some(session_host_status());
            }
            // The PROXY protocol goes around the auto mTLS socket too
            // (Istio's `applyUpstreamProxyProtocol`): the match is then
            // built here rather than written by the encoder.
            let auto = match (policy.proxy_protocol, auto) {
                (Some(version), Some(identity)) => {
                    let mut m = auto_mtls_match(identity);
                    m.transport_socket = m
                        .transport_socket
                        .map(|s| crate::policy::proxy_protocol_socket(version, s));
                    cluster.transport_socket_matches = vec![m];
                    None
                }
                (_, auto) => auto,
            };
            emit(&name, PlannedCluster::Built(cluster), auto, cla);
        }
    }
}

/// The endpoint health statuses a persistent session may be sent to
/// (`CommonLbConfig.override_host_status`), as Istio's cluster builder
/// sets them for a service with a persistent session label: Envoy's
/// default (`UNKNOWN`, `HEALTHY`, `DEGRADED`) and `DRAINING`, so that a
/// session stays with an endpoint that is shutting down while new
/// requests go elsewhere.
fn session_host_status() -> HealthStatusSet {
    HealthStatusSet {
        statuses: [
            HealthStatus::Healthy,
            HealthStatus::Draining,
            HealthStatus::Unknown,
            HealthStatus::Degraded,
        ]
        .map(|s| s as i32)
        .to_vec(),
    }
}

/// A DNS cluster (`STRICT_DNS`, `LOGICAL_DNS`) resolves its hosts every
/// `rate` (mesh config `dnsRefreshRate`, 60 s by default against Envoy's
/// 5 s: every proxy resolves every DNS host of the mesh), or at the
/// record's TTL (`respect_dns_ttl`), as Istio's cluster builder sets them.
/// Other clusters are left alone.
#[allow(
    deprecated,
    reason = "Istio writes these Cluster fields, deprecated for the DNS cluster extension, and Envoy 1.40 takes them"
)]
fn resolve_at_mesh_rate(cluster: &mut Cluster, rate: std::time::Duration) {
    let dns = [DiscoveryType::StrictDns, DiscoveryType::LogicalDns]
        .iter()
        .any(|&t| cluster.cluster_discovery_type == discovery(t));
    if dns {
        cluster.dns_refresh_rate = Some(duration(rate));
        cluster.respect_dns_ttl = true;
    }
}

/// One cluster of `svc` on `port` (without its auto mTLS match, which the
/// caller adds), and the load assignment of an EDS cluster, planned with
/// the locality plan, the mesh's networks and (EDS only, as Istio's)
/// Split Horizon.
fn service_cluster<'a>(
    name: &'a str,
    (svc, port): (&Service, &ServicePort),
    policy: &Effective,
    endpoints: &[&'a Endpoint],
    (plan, split, networks): (Option<&LocalityPlan>, Option<&Split<'a>>, &Networks),
    identity: Option<&IstioTls>,
) -> (Box<Cluster>, Option<Assignment<'a>>) {
    let auto = identity.and_then(|i| i.auto.as_ref());
    let mut cluster = new_cluster(name);
    let http2 = matches!(port.protocol, Protocol::Http2 | Protocol::Grpc);
    policy.apply(&mut cluster, http2, &svc.hostname, identity);
    if plan.is_some_and(|p| p.weighted) {
        cluster
            .common_lb_config
            .get_or_insert_default()
            .locality_config_specifier = Some(
            common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                common_lb_config::LocalityWeightedLbConfig {},
            ),
        );
    }
    let passthrough = svc.resolution == ServiceResolution::Passthrough
        || policy.simple() == Some(SimpleLb::Passthrough);
    let mut cla = None;
    if svc.resolution == ServiceResolution::DynamicDns {
        // Envoy's dynamic forward proxy: the host each request (or SNI)
        // names, resolved at request time through the cache the
        // listener's filter shares (Istio's DYNAMIC_DNS clusters).
        use envoy_types::pb::envoy::config::cluster::v3::cluster::{
            ClusterDiscoveryType, CustomClusterType,
        };
        use envoy_types::pb::envoy::extensions::clusters::dynamic_forward_proxy::v3::{
            ClusterConfig, cluster_config,
        };
        cluster.cluster_discovery_type =
            Some(ClusterDiscoveryType::ClusterType(CustomClusterType {
                name: "envoy.clusters.dynamic_forward_proxy".into(),
                typed_config: Some(envoy_types::util::pack_any(ClusterConfig {
                    cluster_implementation_specifier: Some(
                        cluster_config::ClusterImplementationSpecifier::DnsCacheConfig(
                            dfp_dns_cache(&svc.hostname),
                        ),
                    ),
                    ..Default::default()
                })),
            }));
        cluster.lb_policy = LbPolicy::ClusterProvided as i32;
        cluster.lb_config = None;
    } else if passthrough {
        cluster.cluster_discovery_type = discovery(DiscoveryType::OriginalDst);
        cluster.lb_policy = LbPolicy::ClusterProvided as i32;
        cluster.lb_config = None;
    } else if matches!(
        svc.resolution,
        ServiceResolution::Dns | ServiceResolution::DnsRoundRobin
    ) {
        cluster.cluster_discovery_type = discovery(if svc.resolution == ServiceResolution::Dns {
            DiscoveryType::StrictDns
        } else {
            DiscoveryType::LogicalDns
        });
        cluster.dns_lookup_family = DnsLookupFamily::V4Only as i32;
        cluster.load_assignment =
            Some(assignment(name, port, endpoints, plan, auto, None, networks).build());
    } else {
        set_eds(&mut cluster, name);
        cla = Some(assignment(
            name, port, endpoints, plan, auto, split, networks,
        ));
    }
    (cluster, cla)
}

/// The DNS cache a `DYNAMIC_DNS` service's cluster and its listener's
/// filter share: `<hostname>_dfp_dns_cache`, IPv4 only, as Istio's.
pub(crate) fn dfp_dns_cache(
    hostname: &str,
) -> envoy_types::pb::envoy::extensions::common::dynamic_forward_proxy::v3::DnsCacheConfig {
    envoy_types::pb::envoy::extensions::common::dynamic_forward_proxy::v3::DnsCacheConfig {
        name: format!("{hostname}_dfp_dns_cache"),
        dns_lookup_family: DnsLookupFamily::V4Only as i32,
        ..Default::default()
    }
}

/// What `ISTIO_MUTUAL` needs of a cluster: Istio's SNI and the identities
/// the server may present.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IstioTls {
    /// `outbound_.<port>_.<subset>_.<hostname>`: what Istio's inbound
    /// listener matches on.
    pub sni: String,
    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<account>` of every
    /// service account behind the cluster (empty: any, verified by the root only).
    pub sans: Vec<String>,
    /// Auto mTLS: for each of the cluster's endpoints (in the order of its
    /// selection), whether it takes Istio mTLS (a transport socket match on
    /// its metadata); the others get plaintext. At least one does. None:
    /// `ISTIO_MUTUAL`, mTLS to every endpoint.
    pub auto: Option<Vec<bool>>,
}

/// Istio's SNI for mesh-internal mTLS to one cluster.
pub fn istio_sni(port: u32, subset: &str, hostname: &str) -> String {
    outbound_name("outbound_.", port, "_.", subset, hostname)
}

/// The SPIFFE IDs of the endpoints' service accounts, sorted, unique, in
/// each of the mesh's trust domains (its own, then its aliases: Istio's
/// `ExpandWithTrustDomains`).
fn identities(
    mesh: &crate::model::MeshConfig,
    svc: &Service,
    endpoints: &[&Endpoint],
) -> Vec<String> {
    // The IDs differ only after a common prefix: sorting the accounts
    // sorts them (and a Deployment's replicas share one account).
    let mut accounts: Vec<&str> = endpoints
        .iter()
        .filter_map(|e| e.service_account.as_deref())
        .collect();
    accounts.sort_unstable();
    accounts.dedup();
    let spiffe = mesh
        .trust_domains()
        .flat_map(|td| accounts.iter().map(move |sa| (td, sa)))
        // Written out rather than `format!`: per cluster of every service.
        .map(|(td, sa)| ["spiffe://", td, "/ns/", &svc.namespace, "/sa/", sa].concat());
    svc.subject_alt_names
        .iter()
        .cloned()
        .chain(spiffe)
        .collect()
}

/// One load assignment, planned: the endpoints on a port grouped by
/// locality, in locality order, each group with its Envoy priority and
/// weight. [`Assignment::build`] makes Envoy's `ClusterLoadAssignment` of
/// it; [`Assignment::encode`] writes that message's encoding straight away
/// (the same bytes, without the ~10 allocations per endpoint the message
/// takes), which is what the daemon sends.
pub(crate) struct Assignment<'a> {
    name: &'a str,
    groups: Vec<Group<'a>>,
}

/// One `LbEndpoint` of a [`Group`].
#[derive(Clone, Copy)]
struct Target<'a> {
    /// Its address.
    address: &'a str,
    /// Its (target) port.
    port: u32,
    /// Whether it takes Istio mTLS (auto mTLS: `tlsMode: istio` in its
    /// transport socket match metadata).
    tls: bool,
    /// Its `load_balancing_weight`.
    weight: u32,
    /// `health_status: DRAINING` ([`Endpoint::draining`]).
    draining: bool,
}

/// One `LocalityLbEndpoints`.
struct Group<'a> {
    /// `region/zone/subzone`.
    locality: &'a str,
    priority: u32,
    /// `load_balancing_weight`: the plan's, or the sum of its endpoints'
    /// weights (their count when none is weighted).
    weight: u32,
    /// Its endpoints (and gateways standing for some), in order.
    endpoints: Vec<Target<'a>>,
    /// Other networks' gateways standing for endpoints of this locality,
    /// with the weight they carry, in gateway order ([`Split`]).
    gateways: Vec<(&'a NetworkGateway, u32)>,
}

/// Adds `weight` to `gateways` (of one network) in `into`, spread evenly,
/// as Istio spreads an endpoint's weight over its network's gateways: a
/// share each, at least 1, until it is used up.
fn spread<'a>(
    into: &mut Vec<(&'a NetworkGateway, u32)>,
    gateways: &'a [NetworkGateway],
    weight: u32,
) {
    let n = u32::try_from(gateways.len()).unwrap_or(u32::MAX).max(1);
    let mut left = weight;
    while left > 0 {
        let share = (left / n).max(1);
        for gw in gateways {
            let add = share.min(left);
            match into.iter_mut().find(|(g, _)| std::ptr::eq(*g, gw)) {
                Some((_, w)) => *w = w.saturating_add(add),
                None => into.push((gw, add)),
            }
            left -= add;
            if left == 0 {
                break;
            }
        }
    }
}

/// Split Horizon EDS for one cluster, as a proxy of `network` sees it
/// (Istio's `EndpointsByNetworkFilter`): an endpoint of another network
/// that has gateways is reached through them, its weight (every weight
/// scaled by the most gateways a network has) spread over them, and the
/// gateways weighted by what they stand for in each locality; such an
/// endpoint the cluster would not send Istio mTLS is left out (the
/// gateway routes on Istio's SNI). Endpoints of the proxy's network, of
/// none, or of a network without gateways are reached directly.
pub(crate) struct Split<'a> {
    pub(crate) networks: &'a Networks,
    /// The proxy's network (not empty).
    pub(crate) network: &'a str,
    /// The other networks it wants reached (`REQUESTED_NETWORK_VIEW`;
    /// empty: all): another network's endpoints are left out otherwise.
    pub(crate) view: &'a [String],
    /// Which endpoints the cluster sends Istio mTLS.
    pub(crate) mtls: Mtls<'a>,
}

/// How a proxy reaches one endpoint under [`Split`].
enum Route<'a> {
    /// At its address (an endpoint without one is not reached at all).
    Direct,
    /// Through these gateways of its network.
    Through(&'a [NetworkGateway]),
    /// Not at all: another network's, without mTLS or out of the view.
    Unreachable,
}

impl<'a> Split<'a> {
    /// How the proxy reaches `ep`, the cluster's `i`th endpoint.
    fn route(&self, ep: &Endpoint, i: usize) -> Route<'a> {
        let net = self.networks.of(ep);
        if net.is_empty() || net == self.network {
            return Route::Direct;
        }
        let Some(gateways) = self.networks.gateways.get(net) else {
            return Route::Direct;
        };
        let secured = match self.mtls {
            Mtls::All => true,
            Mtls::Some(marked) => marked.get(i) == Some(&true),
            Mtls::None => false,
        };
        let viewed = self.view.is_empty() || self.view.iter().any(|v| v == net);
        if secured && viewed {
            Route::Through(gateways)
        } else {
            Route::Unreachable
        }
    }
}

/// Which endpoints of a cluster get Istio mTLS.
#[derive(Clone, Copy)]
pub(crate) enum Mtls<'a> {
    /// Every one (`ISTIO_MUTUAL`).
    All,
    /// Auto mTLS: those marked, in the order of the cluster's endpoints.
    Some(&'a [bool]),
    /// None.
    None,
}

/// The endpoints on `port`, grouped by locality, each locality with its
/// priority and weight from `plan` (a locality weighted 0 is left out).
/// `mtls`: for each endpoint, whether it takes Istio mTLS (auto mTLS).
/// `split`: other networks' endpoints as their gateways ([`Split`]);
/// `networks`: the endpoints' networks, which `failoverPriority` may
/// compare.
fn assignment<'a>(
    name: &'a str,
    port: &ServicePort,
    endpoints: &[&'a Endpoint],
    plan: Option<&LocalityPlan>,
    mtls: Option<&Vec<bool>>,
    split: Option<&Split<'a>>,
    networks: &Networks,
) -> Assignment<'a> {
    // By locality (and `failoverPriority` rank), in that order; endpoints
    // in their order within one.
    let by_labels = plan.and_then(|p| p.by_labels.as_deref());
    let scale = split.map_or(1, |s| s.networks.max_gateways());
    let mut groups: Vec<Group<'a>> = Vec::new();
    for (i, ep) in endpoints.iter().enumerate() {
        let Some(target) = ep.target_port(&port.name) else {
            continue;
        };
        // Through its network's gateways, when it is another network's.
        let through = match split.map_or(Route::Direct, |s| s.route(ep, i)) {
            Route::Direct if ep.address.is_empty() => continue,
            Route::Direct => None,
            Route::Through(gateways) => Some(gateways),
            Route::Unreachable => continue,
        };
        let locality = ep.locality.as_str();
        let rank = by_labels.map_or(0, |wanted| failover_rank(ep, wanted, networks));
        // Usually every endpoint is in the locality of the one before
        // (often none): checked without a string compare when it is empty.
        let at = match groups.last() {
            Some(last)
                if last.locality.len() == locality.len()
                    && (locality.is_empty() || last.locality == locality)
                    && last.priority == rank =>
            {
                groups.len() - 1
            }
            _ => match groups.binary_search_by(|g| (g.locality, g.priority).cmp(&(locality, rank)))
            {
                Ok(at) => at,
                Err(at) => {
                    groups.insert(
                        at,
                        Group {
                            locality,
                            priority: rank,
                            weight: 0,
                            endpoints: Vec::new(),
                            gateways: Vec::new(),
                        },
                    );
                    at
                }
            },
        };
        let Some(group) = groups.get_mut(at) else {
            continue;
        };
        let weight = ep.weight.saturating_mul(scale);
        match through {
            Some(gateways) => spread(&mut group.gateways, gateways, weight),
            None => group.endpoints.push(Target {
                address: ep.address.as_str(),
                port: target,
                tls: mtls.is_some_and(|m| m.get(i) == Some(&true)),
                weight,
                draining: ep.draining,
            }),
        }
    }
    // Each locality's gateways after its own endpoints, with Istio mTLS.
    for g in &mut groups {
        for (gw, weight) in std::mem::take(&mut g.gateways) {
            g.endpoints.push(Target {
                address: gw.address.as_str(),
                port: gw.port,
                tls: true,
                weight,
                draining: false,
            });
        }
    }
    // Envoy wants priorities without gaps: the ranks in use, in order.
    let mut ranks: Vec<u32> = Vec::new();
    if by_labels.is_some() {
        ranks = groups.iter().map(|g| g.priority).collect();
        ranks.sort_unstable();
        ranks.dedup();
    }
    groups.retain_mut(|g| {
        let (priority, weight) = match by_labels {
            Some(_) => (
                u32::try_from(ranks.binary_search(&g.priority).unwrap_or(0)).unwrap_or(0),
                None,
            ),
            None => plan
                .and_then(|p| p.by_locality.get(g.locality).copied())
                .unwrap_or((0, None)),
        };
        g.priority = priority;
        g.weight = weight.unwrap_or_else(|| {
            g.endpoints
                .iter()
                .fold(0u32, |sum, e| sum.saturating_add(e.weight))
        });
        weight != Some(0)
    });
    Assignment { name, groups }
}

/// Istio's `failoverPriority` rank of `ep` against `wanted` (label key,
/// value): 0 when it matches every entry, else N - j for its first
/// mismatch `j` (a later label counts only when the ones before match).
fn failover_rank(ep: &Endpoint, wanted: &[(String, String)], networks: &Networks) -> u32 {
    let n = wanted.len();
    wanted
        .iter()
        .position(|(k, v)| {
            // The network is resolved only for a key that compares it.
            let network = if k == crate::model::NETWORK_LABEL {
                networks.of(ep)
            } else {
                ""
            };
            crate::model::topology_value(&ep.labels, &ep.locality, network, k) != v
        })
        .map_or(0, |j| u32::try_from(n - j).unwrap_or(u32::MAX))
}

/// The encoded `Metadata` field (3) of an endpoint that takes Istio mTLS:
/// `filter_metadata` [`TRANSPORT_SOCKET_MATCH`] `{tlsMode: istio}`.
static TLS_MODE_ISTIO_FIELD: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let mut b = Vec::new();
    prost::encoding::message::encode(3, &tls_mode_metadata(), &mut b);
    b
});

fn tls_mode_metadata() -> Metadata {
    Metadata {
        filter_metadata: [(TRANSPORT_SOCKET_MATCH.to_owned(), tls_mode_istio())]
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

/// An `LbEndpoint`'s `load_balancing_weight` (4): `UInt32Value { value: 1 }`.
const WEIGHT_ONE_FIELD: [u8; 4] = [0x22, 0x02, 0x08, 0x01];

/// An `LbEndpoint`'s `health_status` (2, a varint): `DRAINING` (3).
const DRAINING_FIELD: [u8; 2] = [2 << 3, HealthStatus::Draining as u8];

impl Assignment<'_> {
    /// Envoy's `ClusterLoadAssignment`.
    fn build(&self) -> ClusterLoadAssignment {
        let endpoints = self
            .groups
            .iter()
            .map(|g| {
                let mut parts = g.locality.split('/').map(str::to_owned);
                LocalityLbEndpoints {
                    // Always a locality and a weight: proxyless gRPC drops
                    // localities without one.
                    locality: Some(Locality {
                        region: parts.next().unwrap_or_default(),
                        zone: parts.next().unwrap_or_default(),
                        sub_zone: parts.next().unwrap_or_default(),
                    }),
                    load_balancing_weight: Some(UInt32Value { value: g.weight }),
                    priority: g.priority,
                    lb_endpoints: g
                        .endpoints
                        .iter()
                        .map(|t| LbEndpoint {
                            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(
                                EnvoyEndpoint {
                                    address: Some(socket_address(t.address, t.port)),
                                    ..Default::default()
                                },
                            )),
                            health_status: if t.draining {
                                HealthStatus::Draining as i32
                            } else {
                                HealthStatus::Unknown as i32
                            },
                            load_balancing_weight: Some(UInt32Value { value: t.weight }),
                            metadata: t.tls.then(tls_mode_metadata),
                        })
                        .collect(),
                    ..Default::default()
                }
            })
            .collect();
        ClusterLoadAssignment {
            cluster_name: self.name.to_owned(),
            endpoints,
            ..Default::default()
        }
    }

    /// [`Assignment::build`]'s message as an encoded EDS resource, written
    /// directly: the same bytes as prost's, which writes set fields in tag
    /// order (`ClusterLoadAssignment`: `cluster_name` 1, `endpoints` 2;
    /// `LocalityLbEndpoints`: `locality` 1, `lb_endpoints` 2,
    /// `load_balancing_weight` 3, `priority` 5; `LbEndpoint`: `endpoint` 1,
    /// `health_status` 2, `metadata` 3, `load_balancing_weight` 4 (a `UInt32Value`: `value`
    /// 1); `Endpoint`: `address` 1;
    /// `Address`: `socket_address` 1; `SocketAddress`: `address` 2,
    /// `port_value` 3, written even when 0 as a oneof member). An
    /// assignment with a unix domain socket (an `Address.pipe`) is left to
    /// prost.
    fn encode(&self) -> Encoded {
        use prost::encoding::encoded_len_varint as vlen;
        if self.groups.iter().any(|g| {
            g.endpoints
                .iter()
                .any(|t| t.address.starts_with(crate::UNIX_PREFIX))
        }) {
            return crate::encoded::encode(ENDPOINT_TYPE, self.name, &self.build());
        }
        // Lengths of the nested messages, innermost first.
        let socket_len = |address: &str, port: u32| string_len(address) + 1 + vlen(u64::from(port));
        let endpoint_len = |t: &Target<'_>| {
            let socket = socket_len(t.address, t.port);
            let addr = nested_len(socket);
            let endpoint = nested_len(addr);
            nested_len(endpoint)
                + if t.draining { DRAINING_FIELD.len() } else { 0 }
                + if t.tls { TLS_MODE_ISTIO_FIELD.len() } else { 0 }
                + nested_len(uint32_len(t.weight))
        };
        let locality_len = |l: &str| {
            let mut parts = l.split('/');
            (0..3)
                .map(|_| string_len(parts.next().unwrap_or_default()))
                .sum::<usize>()
        };
        let group_len = |g: &Group<'_>| {
            nested_len(locality_len(g.locality))
                + g.endpoints
                    .iter()
                    .map(|t| nested_len(endpoint_len(t)))
                    .sum::<usize>()
                + nested_len(uint32_len(g.weight))
                + if g.priority == 0 {
                    0
                } else {
                    1 + vlen(u64::from(g.priority))
                }
        };
        let len = string_len(self.name)
            + self
                .groups
                .iter()
                .map(|g| nested_len(group_len(g)))
                .sum::<usize>();
        encode_with(ENDPOINT_TYPE, self.name, len, |b| {
            put_string(b, 1, self.name);
            for g in &self.groups {
                put_head(b, 2, group_len(g));
                put_head(b, 1, locality_len(g.locality));
                let mut parts = g.locality.split('/');
                for tag in 1..=3 {
                    put_string(b, tag, parts.next().unwrap_or_default());
                }
                for t in &g.endpoints {
                    put_head(b, 2, endpoint_len(t));
                    let socket = socket_len(t.address, t.port);
                    let addr = nested_len(socket);
                    put_head(b, 1, nested_len(addr)); // LbEndpoint.endpoint
                    put_head(b, 1, addr); // Endpoint.address
                    put_head(b, 1, socket); // Address.socket_address
                    put_string(b, 2, t.address);
                    put_key(b, 3, WireType::Varint);
                    put_varint(b, u64::from(t.port));
                    if t.draining {
                        b.extend_from_slice(&DRAINING_FIELD);
                    }
                    if t.tls {
                        b.extend_from_slice(&TLS_MODE_ISTIO_FIELD);
                    }
                    if t.weight == 1 {
                        b.extend_from_slice(&WEIGHT_ONE_FIELD);
                    } else {
                        put_head(b, 4, uint32_len(t.weight));
                        put_key(b, 1, WireType::Varint);
                        put_varint(b, u64::from(t.weight));
                    }
                }
                put_head(b, 3, uint32_len(g.weight));
                if g.weight != 0 {
                    put_key(b, 1, WireType::Varint);
                    put_varint(b, u64::from(g.weight));
                }
                if g.priority != 0 {
                    put_key(b, 5, WireType::Varint);
                    put_varint(b, u64::from(g.priority));
                }
            }
        })
    }
}

/// Whether the workload behind `ep` accepts Istio mTLS on `port`: its
/// PeerAuthentication there is not `DISABLE`.
fn takes_mtls(snap: &Snapshot, svc: &Service, port: &ServicePort, ep: &Endpoint) -> bool {
    // The common case, on the per-proxy hot path: no policy, PERMISSIVE.
    if snap.peer_authentications.is_empty() {
        return true;
    }
    let policy = crate::inbound::peer_policy_of(snap, &svc.namespace, &ep.labels);
    let target = ep.target_port(&port.name).unwrap_or(port.port);
    policy.for_port(target) != crate::inbound::PeerMode::Disable
}

fn selects(labels: &BTreeMap<String, String>, ep: &Endpoint) -> bool {
    labels.iter().all(|(k, v)| ep.labels.get(k) == Some(v))
}

/// `PassthroughCluster`: where `ALLOW_ANY` sends what no service matches,
/// with the mesh config's `connectTimeout` (as Istio's).
fn passthrough_cluster(mesh: &crate::model::MeshConfig) -> Cluster {
    Cluster {
        name: PASSTHROUGH_CLUSTER.into(),
        cluster_discovery_type: discovery(DiscoveryType::OriginalDst),
        lb_policy: LbPolicy::ClusterProvided as i32,
        connect_timeout: Some(duration(
            mesh.connect_timeout
                .unwrap_or(std::time::Duration::from_secs(CONNECT_TIMEOUT_SECS)),
        )),
        ..Default::default()
    }
}

fn blackhole_cluster() -> Cluster {
    Cluster {
        name: BLACKHOLE_CLUSTER.into(),
        cluster_discovery_type: discovery(DiscoveryType::Static),
        connect_timeout: Some(duration(std::time::Duration::from_secs(
            CONNECT_TIMEOUT_SECS,
        ))),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::model::Protocol;

    fn endpoint(address: &str, locality: &str) -> Endpoint {
        Endpoint::new(
            address.into(),
            Arc::new(BTreeMap::from([("http".to_owned(), 9080)])),
            Arc::default(),
            true,
            locality.into(),
            None,
        )
    }

    /// Port 80, named `http`, HTTP/1.1.
    fn http_port() -> ServicePort {
        ServicePort {
            name: "http".into(),
            port: 80,
            protocol: Protocol::Http,
        }
    }

    #[test]
    fn endpoints_are_grouped_by_locality_in_locality_order() {
        let port = http_port();
        let eps = [
            endpoint("10.0.0.1", "r/b"),
            endpoint("10.0.0.2", "r/a"),
            endpoint("10.0.0.3", "r/b"),
            endpoint("10.0.0.4", ""),
            endpoint("10.0.0.5", "r/a"),
        ];
        let refs: Vec<&Endpoint> = eps.iter().collect();
        let cla = assignment("c", &port, &refs, None, None, None, &Default::default()).build();
        let groups: Vec<(String, Vec<String>)> = cla
            .endpoints
            .iter()
            .map(|g| {
                let l = g.locality.clone().unwrap();
                let addresses = g
                    .lb_endpoints
                    .iter()
                    .map(|e| match &e.host_identifier {
                        Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => {
                            match ep.address.as_ref().and_then(|a| a.address.as_ref()) {
                                Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s)) => {
                                    s.address.clone()
                                }
                                other => panic!("{other:?}"),
                            }
                        }
                        other => panic!("{other:?}"),
                    })
                    .collect();
                (format!("{}/{}", l.region, l.zone), addresses)
            })
            .collect();
        assert_eq!(
            groups,
            [
                ("/".to_owned(), vec!["10.0.0.4".to_owned()]),
                (
                    "r/a".to_owned(),
                    vec!["10.0.0.2".to_owned(), "10.0.0.5".to_owned()]
                ),
                (
                    "r/b".to_owned(),
                    vec!["10.0.0.1".to_owned(), "10.0.0.3".to_owned()]
                ),
            ]
        );
        // Each locality weighs as many as it has endpoints.
        let weights: Vec<u32> = cla
            .endpoints
            .iter()
            .map(|g| g.load_balancing_weight.unwrap().value)
            .collect();
        assert_eq!(weights, [1, 2, 2]);
    }

    #[test]
    fn written_assignments_are_prosts_encoding_of_the_message() {
        let port = http_port();
        let weighted = |mut e: Endpoint, weight| {
            e.weight = weight;
            e
        };
        let eps = [
            endpoint("10.0.0.1", "r/b"),
            weighted(endpoint("10.0.0.2", "r/a/s"), 3),
            endpoint("10.0.0.3", ""),
            weighted(endpoint("10.0.0.4", "r/b"), 300),
            endpoint("10.0.0.5", "r/c"),
        ];
        let refs: Vec<&Endpoint> = eps.iter().collect();
        let plan = LocalityPlan {
            by_locality: BTreeMap::from([
                ("r/a/s".to_owned(), (0, Some(300))),
                ("r/b".to_owned(), (2, None)),
                ("r/c".to_owned(), (1, Some(0))),
            ]),
            weighted: true,
            by_labels: None,
        };
        let mtls = vec![true, false, true, false, true];
        // Long enough a name that lengths take two varint bytes.
        let name = "outbound|80||".to_owned() + &"x".repeat(200);
        for (plan, mtls) in [(None, None), (Some(&plan), Some(&mtls))] {
            let a = assignment(&name, &port, &refs, plan, mtls, None, &Default::default());
            let want = encode(ENDPOINT_TYPE, &name, &a.build());
            assert!(a.encode() == want, "plan {plan:?}, mtls {mtls:?}");
        }
        // Without a plan a locality weighs what its endpoints weigh.
        let built = assignment(&name, &port, &refs, None, None, None, &Default::default()).build();
        let weights: Vec<(String, u32, Vec<u32>)> = built
            .endpoints
            .iter()
            .map(|g| {
                let l = g.locality.clone().unwrap();
                (
                    format!("{}/{}", l.region, l.zone),
                    g.load_balancing_weight.unwrap().value,
                    g.lb_endpoints
                        .iter()
                        .map(|e| e.load_balancing_weight.unwrap().value)
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            weights,
            [
                ("/".to_owned(), 1, vec![1]),
                ("r/a".to_owned(), 3, vec![3]),
                ("r/b".to_owned(), 301, vec![1, 300]),
                ("r/c".to_owned(), 1, vec![1]),
            ]
        );
    }

    /// A plain cluster is what the general builder makes of a service
    /// with no traffic policy, and its written encoding (and that of a
    /// cluster with a policy and the appended match) is prost's, for
    /// HTTP/1.1 and HTTP/2 ports, with and without auto mTLS, short and
    /// long (two-byte length) names.
    #[test]
    fn plain_clusters_are_the_general_ones_and_written_as_prost_does() {
        let svc = Service {
            hostname: "a.ns.svc.cluster.local".into(),
            name: "a".into(),
            namespace: "ns".into(),
            vips: vec![],
            ports: vec![],
            endpoints: vec![endpoint("10.0.0.1", "")],
            resolution: ServiceResolution::Static,
            kubernetes: true,
            external: false,
            export_to: vec![],
            subject_alt_names: vec![],
            persistent_session: None,
            auto_vips: vec![],
            no_gateway_port_translation: false,
        };
        let identity = IstioTls {
            sni: "outbound_.80_._.a.ns.svc.cluster.local".into(),
            sans: vec!["spiffe://cluster.local/ns/ns/sa/a".into()],
            auto: Some(vec![true]),
        };
        let long = format!("outbound|80||{}.ns.svc.cluster.local", "a".repeat(200));
        for protocol in [Protocol::Http, Protocol::Http2, Protocol::Grpc] {
            let port = ServicePort {
                name: "http".into(),
                port: 80,
                protocol,
            };
            let http2 = protocol != Protocol::Http;
            for name in ["outbound|80||a.ns.svc.cluster.local", &long] {
                let refs: Vec<&Endpoint> = svc.endpoints.iter().collect();
                // A rule's traffic policy (not plain): written by prost,
                // the auto mTLS match appended.
                let with_policy = Effective {
                    load_balancer: Some(crds::destination_rule::LoadBalancerSettings {
                        simple: Some(SimpleLb::RoundRobin),
                        ..Default::default()
                    }),
                    outlier_detection: Some(Default::default()),
                    ..Default::default()
                };
                for auto in [None, Some(&identity)] {
                    // prost's encoding of the whole message, the match in it.
                    let whole = |c: &Cluster| {
                        let mut c = c.clone();
                        if let Some(identity) = auto {
                            c.transport_socket_matches = vec![auto_mtls_match(identity)];
                        }
                        encode(CLUSTER_TYPE, name, &c)
                    };
                    let (general, _) = service_cluster(
                        name,
                        (&svc, &port),
                        &Effective::default(),
                        &refs,
                        (None, None, &Networks::default()),
                        auto,
                    );
                    assert_eq!(general, plain_cluster(name, http2), "{protocol:?} {name}");
                    assert!(
                        encode_plain_cluster(name, http2, auto, None)
                            == encode_cluster(&general, auto),
                        "{protocol:?} {name} {auto:?}"
                    );
                    // With Istio's service metadata (written after the
                    // rest, out of prost's order): the same message.
                    let metadata = service_metadata(&svc);
                    let mut with_metadata = general.clone();
                    with_metadata.metadata = Some(metadata.clone());
                    let decoded = |e: Encoded| {
                        let any = envoy_types::pb::google::protobuf::Any::decode(e.2).unwrap();
                        Cluster::decode(any.value.as_slice()).unwrap()
                    };
                    assert_eq!(
                        decoded(encode_plain_cluster(
                            name,
                            http2,
                            auto,
                            Some(&metadata.encode_to_vec())
                        )),
                        decoded(encode_cluster(&with_metadata, auto)),
                        "{protocol:?} {name} {auto:?}"
                    );
                    assert!(
                        encode_cluster(&general, auto) == whole(&general),
                        "{protocol:?} {name} {auto:?}"
                    );
                    let (ruled, _) = service_cluster(
                        name,
                        (&svc, &port),
                        &with_policy,
                        &refs,
                        (None, None, &Networks::default()),
                        auto,
                    );
                    assert!(
                        encode_cluster(&ruled, auto) == whole(&ruled),
                        "with a policy: {protocol:?} {name} {auto:?}"
                    );
                }
            }
        }
    }
}
