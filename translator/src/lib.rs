//! The translator: a pure function from a mesh [`model::Snapshot`] and a
//! [`model::Proxy`] to the Envoy resources that proxy needs ([`generate`]).
//!
//! No I/O, no clock, no randomness: the same snapshot and proxy give the same
//! resources, which makes golden tests and caching cheap. A snapshot
//! memoises what several proxies share (see [`encoded`]); that changes how
//! long generation takes, never what it gives. Names follow Istio
//! (`outbound|9080|v1|reviews.default.svc.cluster.local`, `virtualOutbound`,
//! route configurations `"9080"` / `"http.8080"`, `PassthroughCluster`), so
//! tools and people who know Istio find their way around.
//!
//! Config that cannot be translated is skipped and reported as a
//! [`ConfigWarning`] naming the object and field; the rest still translates.

pub mod attach;
pub mod authz;
pub mod changes;
pub mod cluster;
pub mod encoded;
pub mod envoy_filter;
pub mod ext_authz;
pub mod gateway_api;
pub mod inbound;
pub mod ingress;
pub mod jwt;
pub mod listener;
pub mod log_format;
pub mod metrics;
pub mod model;
pub mod nds;
pub mod policy;
pub mod route;
pub mod session;
pub mod telemetry;
pub mod trace;
pub mod wasm;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress, TypedExtensionConfig,
    address, config_source, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::{Any, BoolValue};

use encoded::Encoded;
use model::{Proxy, ProxyKind, Snapshot};

/// Type URL of CDS resources (`envoy.config.cluster.v3.Cluster`).
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Type URL of EDS resources (`envoy.config.endpoint.v3.ClusterLoadAssignment`).
pub const ENDPOINT_TYPE: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// Type URL of LDS resources (`envoy.config.listener.v3.Listener`).
pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Type URL of RDS resources (`envoy.config.route.v3.RouteConfiguration`).
pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// Type URL of SDS resources (`envoy.extensions.transport_sockets.tls.v3.Secret`).
pub const SECRET_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// Type URL of ECDS resources (`envoy.config.core.v3.TypedExtensionConfig`):
/// WasmPlugins' filters ([`wasm`]).
pub const EXTENSION_CONFIG_TYPE: &str = wasm::EXTENSION_CONFIG_TYPE;

/// Type URL of NDS resources (`istio.networking.nds.v1.NameTable`), the
/// agent's DNS table ([`nds`]).
pub const NAME_TABLE_TYPE: &str = nds::NAME_TABLE_TYPE;

/// Istio's push order: clusters, endpoints, listeners, routes, secrets,
/// then extension configs; the agent's name table last (Envoy never asks
/// for it).
pub const PUSH_ORDER: [&str; 7] = [
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    SECRET_TYPE,
    EXTENSION_CONFIG_TYPE,
    NAME_TABLE_TYPE,
];

/// Name of Envoy's HTTP fault filter (`envoy.filters.http.fault`).
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
/// Name of Envoy's CORS filter (`envoy.filters.http.cors`).
pub const CORS_FILTER: &str = "envoy.filters.http.cors";

/// A config problem met while translating, naming object and field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigWarning {
    /// Kind of the object (`VirtualService`).
    pub kind: &'static str,
    /// `namespace/name`.
    pub object: String,
    /// Field path (`spec.http[0].route`).
    pub field: String,
    /// What is wrong and what was done about it.
    pub reason: String,
}

impl ConfigWarning {
    /// A warning about `field` of the `kind` object `object` (`namespace/name`).
    pub fn new(kind: &'static str, object: String, field: String, reason: String) -> Self {
        ConfigWarning {
            kind,
            object,
            field,
            reason,
        }
    }
}

impl std::fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: field `{}`: {}",
            self.kind, self.object, self.field, self.reason
        )
    }
}

/// Everything one proxy is sent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Output {
    /// CDS.
    pub clusters: Vec<Cluster>,
    /// EDS, one per EDS cluster, named by cluster.
    pub endpoints: Vec<ClusterLoadAssignment>,
    /// LDS.
    pub listeners: Vec<Listener>,
    /// RDS.
    pub routes: Vec<RouteConfiguration>,
    /// SDS: gateway certificates (`kubernetes://NAME`), by name.
    pub secrets: Vec<Secret>,
    /// ECDS: WasmPlugins' filters ([`wasm::resource_name`]) and
    /// EnvoyFilters' `EXTENSION_CONFIG`s, by name.
    pub extension_configs: Vec<TypedExtensionConfig>,
    /// NDS: the agent's name table, one resource named `""` ([`nds`]).
    pub name_table: nds::NameTable,
    /// Problems met (objects or routes skipped).
    pub warnings: Vec<ConfigWarning>,
}

impl Output {
    /// The resources of one type URL as `(name, Any)` pairs; empty for an
    /// unknown type.
    pub fn resources(&self, type_url: &str) -> Vec<(String, Any)> {
        match type_url {
            CLUSTER_TYPE => encode_all(&self.clusters, |r| &r.name),
            ENDPOINT_TYPE => encode_all(&self.endpoints, |r| &r.cluster_name),
            LISTENER_TYPE => encode_all(&self.listeners, |r| &r.name),
            ROUTE_TYPE => encode_all(&self.routes, |r| &r.name),
            SECRET_TYPE => encode_all(&self.secrets, |r| &r.name),
            EXTENSION_CONFIG_TYPE => encode_all(&self.extension_configs, |r| &r.name),
            NAME_TABLE_TYPE => encode_all(std::slice::from_ref(&self.name_table), |_| ""),
            _ => Vec::new(),
        }
    }
}

/// `(name, Any)` for each of `items`, encoded in place (no copy of the message).
fn encode_all<M: prost::Name + prost::Message>(
    items: &[M],
    name: impl Fn(&M) -> &str,
) -> Vec<(String, Any)> {
    items
        .iter()
        .map(|r| {
            let any = Any {
                type_url: M::type_url(),
                value: r.encode_to_vec(),
            };
            (name(r).to_owned(), any)
        })
        .collect()
}

/// The endpoint assignments of `proxy` for the services `hostnames` only
/// (an endpoint-only change; see [`changes::Effect::Endpoints`]), encoded
/// as by [`generate_encoded`] (and memoised alike).
pub fn generate_endpoints_encoded(
    snap: &Snapshot,
    proxy: &Proxy,
    hostnames: &std::collections::BTreeSet<String>,
) -> Vec<Encoded> {
    cluster::build_encoded(snap, proxy, Some(hostnames)).1
}

/// Generates the full configuration of `proxy` from `snap`.
pub fn generate(snap: &Snapshot, proxy: &Proxy) -> Output {
    let (mut clusters, endpoints) = cluster::build(snap, proxy);
    let mut rest = listeners_and_routes(snap, proxy);
    clusters.extend(rest.inbound_clusters);
    let mut routes = rest.routes.build(snap, proxy);
    let patches = envoy_filter::for_proxy(snap, proxy);
    if !patches.is_empty() {
        envoy_filter::apply_listeners(&patches, proxy, &mut rest.listeners);
        envoy_filter::apply_clusters(&patches, proxy, &mut clusters);
        envoy_filter::apply_routes(&patches, proxy, &mut routes);
    }
    Output {
        clusters,
        endpoints,
        routes,
        listeners: rest.listeners,
        secrets: rest.secrets,
        extension_configs: extension_configs(snap, proxy, &patches),
        name_table: nds::name_table(snap, proxy),
        warnings: rest.warnings,
    }
}

/// Everything one proxy is sent, encoded for the wire: per type, each
/// resource's name, version and `Any` bytes, in no particular order.
#[derive(Clone, Debug, Default)]
pub struct EncodedOutput {
    /// CDS.
    pub clusters: Vec<Encoded>,
    /// EDS.
    pub endpoints: Vec<Encoded>,
    /// LDS.
    pub listeners: Vec<Encoded>,
    /// RDS.
    pub routes: Vec<Encoded>,
    /// SDS.
    pub secrets: Vec<Encoded>,
    /// ECDS.
    pub extension_configs: Vec<Encoded>,
    /// NDS (one resource).
    pub name_tables: Vec<Encoded>,
    /// Problems met (objects or routes skipped).
    pub warnings: Vec<ConfigWarning>,
}

impl EncodedOutput {
    /// Takes the resources of one type URL out (empty for an unknown type).
    pub fn take(&mut self, type_url: &str) -> Vec<Encoded> {
        std::mem::take(match type_url {
            CLUSTER_TYPE => &mut self.clusters,
            ENDPOINT_TYPE => &mut self.endpoints,
            LISTENER_TYPE => &mut self.listeners,
            ROUTE_TYPE => &mut self.routes,
            SECRET_TYPE => &mut self.secrets,
            EXTENSION_CONFIG_TYPE => &mut self.extension_configs,
            NAME_TABLE_TYPE => &mut self.name_tables,
            _ => return Vec::new(),
        })
    }
}

/// [`generate`], encoded for the wire: what the daemon sends. The
/// resources are those of [`generate`], byte for byte. What another proxy
/// already needed comes from the snapshot's memos (see [`encoded`]):
/// each service's outbound clusters and load assignments (by the
/// DestinationRule that applies and the proxy's locality), and the default
/// route of each service without a VirtualService (by the rule and the
/// port). A proxy whose config differs from every other's (another
/// namespace, another Sidecar) then pays for its listeners, its route
/// configurations' domains and its VirtualServices' routes, not again for
/// every service.
pub fn generate_encoded(snap: &Snapshot, proxy: &Proxy) -> EncodedOutput {
    let (mut clusters, endpoints) = cluster::build_encoded(snap, proxy, None);
    let mut rest = listeners_and_routes(snap, proxy);
    clusters.extend(
        rest.inbound_clusters
            .iter()
            .map(|c| encoded::encode(CLUSTER_TYPE, &c.name, c)),
    );
    let mut routes = rest.routes.encode(snap, proxy);
    // EnvoyFilters: the resources they patch decoded, patched, encoded again.
    let patches = envoy_filter::for_proxy(snap, proxy);
    if !patches.is_empty() {
        use crds::envoy_filter::ApplyTo;
        envoy_filter::apply_listeners(&patches, proxy, &mut rest.listeners);
        envoy_filter::apply_encoded(
            &patches,
            &[ApplyTo::Cluster],
            CLUSTER_TYPE,
            |c: &Cluster| &c.name,
            &mut clusters,
            |c| envoy_filter::apply_clusters(&patches, proxy, c),
        );
        envoy_filter::apply_encoded(
            &patches,
            &[
                ApplyTo::RouteConfiguration,
                ApplyTo::VirtualHost,
                ApplyTo::HttpRoute,
            ],
            ROUTE_TYPE,
            |r: &RouteConfiguration| &r.name,
            &mut routes,
            |r| envoy_filter::apply_routes(&patches, proxy, r),
        );
    }
    EncodedOutput {
        clusters,
        endpoints,
        listeners: encode_each(LISTENER_TYPE, &rest.listeners, |l| &l.name),
        routes,
        secrets: encode_each(SECRET_TYPE, &rest.secrets, |s| &s.name),
        extension_configs: encode_each(
            EXTENSION_CONFIG_TYPE,
            &extension_configs(snap, proxy, &patches),
            |c| &c.name,
        ),
        name_tables: vec![encoded::encode(
            NAME_TABLE_TYPE,
            "",
            &nds::name_table(snap, proxy),
        )],
        warnings: rest.warnings,
    }
}

/// ECDS: the WasmPlugins' filters, then what EnvoyFilters add under names
/// no plugin has (a name is served once).
fn extension_configs(
    snap: &Snapshot,
    proxy: &Proxy,
    patches: &[&envoy_filter::Compiled],
) -> Vec<TypedExtensionConfig> {
    let mut out = wasm::extension_configs(snap, proxy);
    if !patches.is_empty() {
        for c in envoy_filter::extension_configs(patches, proxy) {
            if !out.iter().any(|o| o.name == c.name) {
                out.push(c);
            }
        }
    }
    out
}

fn encode_each<M: prost::Message>(
    type_url: &str,
    items: &[M],
    name: impl Fn(&M) -> &str,
) -> Vec<Encoded> {
    items
        .iter()
        .map(|m| encoded::encode(type_url, name(m), m))
        .collect()
}

/// What a proxy gets besides its outbound clusters and load assignments.
struct Rest<'a> {
    listeners: Vec<Listener>,
    routes: Routes<'a>,
    secrets: Vec<Secret>,
    /// A sidecar's `inbound|...` clusters.
    inbound_clusters: Vec<Cluster>,
    warnings: Vec<ConfigWarning>,
}

/// A sidecar's route configurations, planned; a gateway's, made.
enum Routes<'a> {
    Planned(Vec<listener::RoutePlan<'a>>),
    Built(Vec<RouteConfiguration>),
}

impl Routes<'_> {
    fn build(self, snap: &Snapshot, proxy: &Proxy) -> Vec<RouteConfiguration> {
        match self {
            Routes::Planned(plans) => plans.into_iter().map(|p| p.build(snap, proxy)).collect(),
            Routes::Built(routes) => routes,
        }
    }

    fn encode(self, snap: &Snapshot, proxy: &Proxy) -> Vec<Encoded> {
        match self {
            Routes::Planned(plans) => plans.into_iter().map(|p| p.encode(snap, proxy)).collect(),
            Routes::Built(routes) => encode_each(ROUTE_TYPE, &routes, |r| &r.name),
        }
    }
}

fn listeners_and_routes<'a>(snap: &'a Snapshot, proxy: &'a Proxy) -> Rest<'a> {
    let mut warnings = Vec::new();
    let mut inbound_clusters = Vec::new();
    let (mut listeners, routes, secrets) = match proxy.kind {
        ProxyKind::Sidecar => {
            let (mut l, r) = listener::sidecar(snap, proxy, &mut warnings);
            let (inbound, clusters) = inbound::build(snap, proxy, &mut warnings);
            l.extend(inbound);
            inbound_clusters = clusters;
            // The Secrets of the rules that select this workload.
            let mut secrets = std::collections::BTreeMap::new();
            if snap.has_selecting_rules() || !snap.config_map_cas.is_empty() {
                listener::client_credentials(snap, proxy, &mut secrets, &mut warnings);
            }
            (l, Routes::Planned(r), secrets.into_values().collect())
        }
        ProxyKind::Router => {
            let (l, r, s) = listener::gateway(snap, proxy, &mut warnings);
            (l, Routes::Built(r), s)
        }
    };
    if !snap.wasm_plugins.is_empty() {
        wasm::apply_network(snap, proxy, &mut listeners);
    }
    Rest {
        listeners,
        routes,
        secrets,
        inbound_clusters,
        warnings,
    }
}

pub(crate) fn duration(d: std::time::Duration) -> envoy_types::pb::google::protobuf::Duration {
    envoy_types::pb::google::protobuf::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// The prefix of an address naming a unix domain socket (Istio's
/// `UnixAddressPrefix`): `unix:///path/to/socket` or `unix://@abstract`.
pub const UNIX_PREFIX: &str = "unix://";

/// Envoy's `Address` of `ip:port`, or for a `unix://PATH` address (a unix
/// domain socket; `@name` in Linux's abstract namespace) a `Pipe` at PATH,
/// the port ignored, as Istio's `BuildAddress`.
pub(crate) fn socket_address(ip: &str, port: u32) -> Address {
    if let Some(path) = ip.strip_prefix(UNIX_PREFIX) {
        return Address {
            address: Some(address::Address::Pipe(
                envoy_types::pb::envoy::config::core::v3::Pipe {
                    path: path.to_owned(),
                    mode: 0,
                },
            )),
        };
    }
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_owned(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// `ConfigSource` pointing at ADS, V3, with Envoy's default
/// `initial_fetch_timeout` (15 s): for a gateway's `credentialName`
/// secrets, which may name a Secret that does not exist, so that a missing
/// one does not hold its listener back forever (Istio's `SDSAdsConfig`).
pub(crate) fn ads_config_source() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

/// `ConfigSource` pointing at ADS, V3, that Envoy waits on for as long as
/// it takes (`initial_fetch_timeout: 0s`): every EDS and RDS reference, as
/// Istio writes them. With Envoy's default of 15 s, a proxy whose
/// endpoints or routes are late (a control plane busy with a push storm,
/// thousands of proxies connecting at once) stops waiting and starts
/// serving with empty clusters and missing routes: 503s until they arrive.
pub(crate) fn ads_config_source_waited_for() -> ConfigSource {
    ConfigSource {
        initial_fetch_timeout: Some(duration(std::time::Duration::ZERO)),
        ..ads_config_source()
    }
}

/// What every HTTP connection manager Istio writes (sidecar outbound and
/// inbound, gateways) sets besides its routes and filters, as Istio's
/// `buildHTTPConnectionManager` does with the mesh's defaults:
/// - `upgrade_configs: [websocket]`: WebSocket upgrades are proxied (Envoy
///   refuses them with a 403 otherwise);
/// - `stream_idle_timeout: 0s`: no idle limit on a stream, so a quiet
///   gRPC stream or WebSocket is not reset after Envoy's default 5
///   minutes;
/// - paths normalised before routing as the mesh's `pathNormalization`
///   says ([`path_normalization`]; `BASE` by default: RFC 3986, `/a/../b`
///   is `/b`, escaped slashes left alone);
/// - `proxy_100_continue: true`: `100-continue` passed through as it is
///   (Istio's `ENABLE_100_CONTINUE_HEADERS`, on by default).
///
/// `access_log`: the workload's access logs for this side
/// ([`telemetry::access_logs`]).
pub(crate) fn istio_http_connection_manager(
    mesh: &model::MeshConfig,
    access_log: &[envoy_types::pb::envoy::config::accesslog::v3::AccessLog],
) -> HttpConnectionManager {
    HttpConnectionManager {
        access_log: crate::metrics::for_protocol(access_log, false),
        upgrade_configs: vec![http_connection_manager::UpgradeConfig {
            upgrade_type: "websocket".into(),
            ..Default::default()
        }],
        stream_idle_timeout: Some(duration(std::time::Duration::ZERO)),
        proxy_100_continue: true,
        ..path_normalization(mesh.path_normalization)
    }
}

/// The mesh config's access log (`accessLogFile`) as Envoy's file access
/// logger ([`file_access_log`]), for an HTTP connection manager's or a TCP
/// proxy's `access_log`; empty when the mesh logs nothing. (Where the
/// Telemetry API applies, [`telemetry::access_logs`] decides instead.)
pub(crate) fn access_logs(
    mesh: &model::MeshConfig,
) -> Vec<envoy_types::pb::envoy::config::accesslog::v3::AccessLog> {
    mesh.access_log.iter().map(file_access_log).collect()
}

/// One file access log as Envoy's file access logger
/// (`envoy.access_loggers.file`, `FileAccessLog` with a
/// `SubstitutionFormatString`).
pub(crate) fn file_access_log(
    log: &model::AccessLog,
) -> envoy_types::pb::envoy::config::accesslog::v3::AccessLog {
    use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog, access_log};
    use envoy_types::pb::envoy::config::core::v3::{
        DataSource, SubstitutionFormatString, data_source, substitution_format_string,
    };
    use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
        FileAccessLog, file_access_log,
    };
    use envoy_types::pb::google::protobuf::{Struct, Value, value};
    let format = match &log.format {
        model::AccessLogFormat::Text(text) => {
            substitution_format_string::Format::TextFormatSource(DataSource {
                specifier: Some(data_source::Specifier::InlineString(text.clone())),
                ..Default::default()
            })
        }
        model::AccessLogFormat::Json(fields) => {
            substitution_format_string::Format::JsonFormat(Struct {
                fields: fields
                    .iter()
                    .map(|(k, v)| {
                        let v = Value {
                            kind: Some(value::Kind::StringValue(v.clone())),
                        };
                        (k.clone(), v)
                    })
                    .collect(),
            })
        }
    };
    let file = FileAccessLog {
        path: log.path.clone(),
        access_log_format: Some(file_access_log::AccessLogFormat::LogFormat(
            SubstitutionFormatString {
                format: Some(format),
                formatters: if log.req_without_query {
                    vec![envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig {
                        name: "envoy.formatter.req_without_query".into(),
                        typed_config: Some(envoy_types::util::pack_any(
                            envoy_types::pb::envoy::extensions::formatter::req_without_query::v3::ReqWithoutQuery::default(),
                        )),
                    }]
                } else {
                    Vec::new()
                },
                ..Default::default()
            },
        )),
    };
    AccessLog {
        name: "envoy.access_loggers.file".into(),
        config_type: Some(access_log::ConfigType::TypedConfig(
            envoy_types::util::pack_any(file),
        )),
        ..Default::default()
    }
}

/// The HTTP connection manager's path settings for the mesh config's
/// `pathNormalization.normalization`, as Istio's
/// `buildHTTPConnectionManager` maps them:
///
/// | normalization | `normalize_path` | `merge_slashes` | escaped slashes |
/// |---|---|---|---|
/// | `NONE` | false | false | kept |
/// | `BASE`, `DEFAULT` | true | false | kept |
/// | `MERGE_SLASHES` | true | true | kept |
/// | `DECODE_AND_MERGE_SLASHES` | true | true | unescaped and forwarded |
fn path_normalization(n: crds::mesh::PathNormalization) -> HttpConnectionManager {
    use crds::mesh::PathNormalization as N;
    use http_connection_manager::PathWithEscapedSlashesAction as Escaped;
    let (normalize, merge, escaped) = match n {
        N::None => (false, false, Escaped::KeepUnchanged),
        N::Default | N::Base => (true, false, Escaped::KeepUnchanged),
        N::MergeSlashes => (true, true, Escaped::KeepUnchanged),
        N::DecodeAndMergeSlashes => (true, true, Escaped::UnescapeAndForward),
    };
    HttpConnectionManager {
        normalize_path: Some(BoolValue { value: normalize }),
        merge_slashes: merge,
        path_with_escaped_slashes_action: escaped as i32,
        ..Default::default()
    }
}
