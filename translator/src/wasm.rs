//! WasmPlugins (`extensions.istio.io/v1alpha1`) as Istio's
//! `pilot/pkg/networking/core/extension` writes them: each plugin that
//! applies to a listener is a filter of that listener whose configuration
//! comes over ECDS (Envoy's extension config discovery, on ADS; the filter
//! named `extensions.istio.io/wasmplugin/<namespace>.<name>`, which is also
//! the ECDS resource's name), and the proxy's ECDS resources
//! ([`extension_configs`], type [`EXTENSION_CONFIG_TYPE`]) carry the Wasm
//! filter itself.
//!
//! - **Which workloads**: as every policy ([`crate::attach`]): the plugin's
//!   namespace (every namespace from the root namespace) and `selector`,
//!   or the Gateway API gateways of `targetRefs`.
//! - **Which listeners**: `match` (none: all): its `mode` (`CLIENT`:
//!   sidecar outbound and gateways; `SERVER`: sidecar inbound; `UNDEFINED`
//!   and `CLIENT_AND_SERVER`: both) and `ports` (the listener's port: the
//!   service port outbound, the workload's port inbound, the server's port
//!   on a gateway).
//! - **Where**: HTTP plugins (`type` `HTTP` or none) in the HTTP
//!   connection managers: `AUTHN` before the JWT filter, `AUTHZ` after it
//!   and before the authorization filters (`CUSTOM`, then RBAC), `STATS`
//!   then the unspecified phase after those, before the peer metadata
//!   exchange, CORS, fault and router filters. `NETWORK` plugins in the
//!   network filters of TCP chains and before the HTTP connection manager,
//!   in the same phase order around the network RBAC filters. Within a
//!   phase: the root namespace's plugins, then the workload's namespace's
//!   (each by name; Istio orders by creation time, which a folder of files
//!   does not have), then by `priority`, higher first (none: lowest).
//! - **The module**: `file://PATH` is read by Envoy from the proxy's
//!   filesystem; `http(s)://` and `oci://` (the default scheme) are a
//!   remote source Envoy cannot fetch by itself (cluster `_`), which the
//!   proxy's agent fetches or pulls and rewrites to a local file (as
//!   Istio's agent, `istiod::xds_proxy`); a module that cannot be fetched is
//!   replaced by an RBAC filter that allows everything (`FAIL_OPEN`) or
//!   nothing (otherwise), so a proxy never waits on a missing module.
//!   Envoy waits for the ECDS resource before it takes the listener
//!   (`initial_fetch_timeout: 0s`), as Istio, because a plugin may be what
//!   guards it.

use std::collections::BTreeMap;

use crds::WasmPluginSpec;
use crds::wasm_plugin::{EnvValueSource, FailStrategy, PluginPhase, PullPolicy};
use envoy_types::pb::envoy::config::core::v3::{
    AsyncDataSource, DataSource, ExtensionConfigSource, HttpUri, RemoteDataSource,
    TypedExtensionConfig, async_data_source, data_source, http_uri,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, filter};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::extensions::wasm::v3::{
    EnvironmentVariables, FailurePolicy, PluginConfig, VmConfig, plugin_config,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use crate::ConfigWarning;
use crate::model::{Config, Proxy, Snapshot};
use crate::telemetry::Side;

/// Type URL of ECDS resources (`envoy.config.core.v3.TypedExtensionConfig`).
pub const EXTENSION_CONFIG_TYPE: &str =
    "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
/// Type URL of Envoy's HTTP Wasm filter.
pub const WASM_HTTP_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
/// Type URL of Envoy's network Wasm filter.
pub const WASM_NETWORK_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm";
/// Type URL of Envoy's HTTP RBAC filter (what replaces a module that cannot
/// be fetched).
pub const RBAC_HTTP_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
/// Type URL of Envoy's network RBAC filter.
pub const RBAC_NETWORK_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";
/// Prefix of a WasmPlugin's filter and ECDS resource name (Istio's
/// `WasmPluginResourceNamePrefix`).
pub const RESOURCE_PREFIX: &str = "extensions.istio.io/wasmplugin/";
/// The Wasm VM variable carrying the plugin's registry login to the agent
/// (Istio's `WasmSecretEnv`: the `.dockerconfigjson` of its
/// `imagePullSecret`; empty when the proxy may not have it, or there is
/// none, and the agent then does not pull).
pub const PULL_SECRET_ENV: &str = "ISTIO_META_WASM_IMAGE_PULL_SECRET";
/// The Wasm VM variable carrying the plugin's pull policy to the agent
/// (Istio's `WasmPolicyEnv`; the agent takes it out).
pub const PULL_POLICY_ENV: &str = "ISTIO_META_WASM_IMAGE_PULL_POLICY";
/// The Wasm VM variable carrying the plugin's version to the agent (Istio's
/// `WasmResourceVersionEnv`): here a hash of its spec, so that `Always`
/// fetches again when the plugin changes.
pub const RESOURCE_VERSION_ENV: &str = "ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION";
/// The cluster of a remote module's `http_uri`: none, the agent fetches it.
pub const AGENT_FETCHED_CLUSTER: &str = "_";
/// How long the agent may take to fetch a module (Istio's 30 s).
pub const FETCH_TIMEOUT_SECS: u64 = 30;
/// Envoy's V8 runtime, the one Istio uses.
const RUNTIME: &str = "envoy.wasm.runtime.v8";
/// What a remote source's `sha256` says when the plugin has none (Envoy
/// requires one; the agent reads this as none, as Istio's).
pub const NO_CHECKSUM: &str = "nil";

/// The filter and ECDS resource name of the WasmPlugin `namespace/name`.
pub fn resource_name(namespace: &str, name: &str) -> String {
    format!("{RESOURCE_PREFIX}{namespace}.{name}")
}

/// One plugin applying to one side of a proxy.
#[derive(Clone, Debug, PartialEq)]
struct Attached {
    /// Its filter's name ([`resource_name`]).
    name: String,
    phase: PluginPhase,
    network: bool,
    /// The port lists of its `match` entries for this side (an empty list:
    /// every port); none: no listener of this side.
    ports: Vec<Vec<u32>>,
}

impl Attached {
    fn on_port(&self, port: u32) -> bool {
        self.ports.iter().any(|p| p.is_empty() || p.contains(&port))
    }
}

/// The WasmPlugins of one side of a proxy, in Istio's order (see the
/// module's doc). Empty in a mesh without WasmPlugins.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Plugins(Vec<Attached>);

/// The phases in the order their filters run.
const PHASES: [PluginPhase; 4] = [
    PluginPhase::Authn,
    PluginPhase::Authz,
    PluginPhase::Stats,
    PluginPhase::UnspecifiedPhase,
];

impl Plugins {
    /// `proxy`'s plugins on `side`.
    pub(crate) fn of(snap: &Snapshot, proxy: &Proxy, side: Side) -> Plugins {
        if snap.wasm_plugins.is_empty() {
            return Plugins::default();
        }
        Plugins(
            applicable(snap, proxy)
                .map(|p| Attached {
                    name: resource_name(&p.namespace, &p.name),
                    phase: p.spec.phase.unwrap_or_default(),
                    network: p.spec.is_network(),
                    ports: if p.spec.match_.is_empty() {
                        vec![Vec::new()]
                    } else {
                        p.spec
                            .match_
                            .iter()
                            .filter(|m| {
                                side.matches_mode(
                                    m.mode
                                        .map(|m| m.workload_mode())
                                        .unwrap_or(crds::telemetry::WorkloadMode::ClientAndServer),
                                )
                            })
                            .map(|m| m.ports.iter().map(|p| p.number).collect())
                            .collect()
                    },
                })
                .filter(|a| !a.ports.is_empty())
                .collect(),
        )
    }

    fn at(&self, port: u32, network: bool, phase: PluginPhase) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(move |a| a.network == network && a.phase == phase && a.on_port(port))
            .map(|a| a.name.as_str())
    }

    /// The HTTP filters of a connection manager on `port` up to the
    /// router's companions: the HTTP plugins around `security` (the JWT
    /// filter first, then the authorization filters, as
    /// [`crate::authz::Filters::http`] has them, or any other filters that
    /// stand there).
    pub(crate) fn http(&self, port: u32, security: &[HttpFilter]) -> Vec<HttpFilter> {
        if self.0.is_empty() {
            return security.to_vec();
        }
        let authn_end = security
            .iter()
            .position(|f| f.name != crate::jwt::JWT_FILTER)
            .unwrap_or(security.len());
        let plugin = |name: &str| HttpFilter {
            name: name.to_owned(),
            config_type: Some(http_filter::ConfigType::ConfigDiscovery(discovery(
                WASM_HTTP_TYPE,
                RBAC_HTTP_TYPE,
            ))),
            ..Default::default()
        };
        let mut out = Vec::with_capacity(security.len() + self.0.len());
        for phase in PHASES {
            out.extend(self.at(port, false, phase).map(plugin));
            match phase {
                PluginPhase::Authn => out.extend_from_slice(&security[..authn_end]),
                PluginPhase::Authz => out.extend_from_slice(&security[authn_end..]),
                _ => {}
            }
        }
        out
    }

    /// Puts the network plugins of `port` into `filters` (a chain's network
    /// filters, ending in a TCP proxy or an HTTP connection manager):
    /// `AUTHN` and `AUTHZ` before the first RBAC or external authorization
    /// filter, `STATS` and the unspecified phase before the last filter.
    pub(crate) fn network(&self, port: u32, filters: &mut Vec<Filter>) {
        if !self.0.iter().any(|a| a.network) || filters.is_empty() {
            return;
        }
        let plugin = |name: &str| Filter {
            name: name.to_owned(),
            config_type: Some(filter::ConfigType::ConfigDiscovery(discovery(
                WASM_NETWORK_TYPE,
                RBAC_NETWORK_TYPE,
            ))),
        };
        let last = filters.len() - 1;
        let guard = filters
            .iter()
            .position(|f| {
                f.name == crate::authz::NETWORK_RBAC_FILTER
                    || f.name == crate::ext_authz::NETWORK_EXT_AUTHZ_FILTER
            })
            .unwrap_or(last);
        let early: Vec<Filter> = [PluginPhase::Authn, PluginPhase::Authz]
            .into_iter()
            .flat_map(|phase| self.at(port, true, phase).map(plugin))
            .collect();
        let late: Vec<Filter> = [PluginPhase::Stats, PluginPhase::UnspecifiedPhase]
            .into_iter()
            .flat_map(|phase| self.at(port, true, phase).map(plugin))
            .collect();
        let terminal = filters.split_off(last);
        let after_guard = filters.split_off(guard.min(last));
        filters.extend(early);
        filters.extend(after_guard);
        filters.extend(late);
        filters.extend(terminal);
    }
}

/// A filter's ECDS source: ADS, waited for (Istio's `defaultConfigSource`),
/// of the Wasm type or the RBAC type that stands in for a module that
/// cannot be fetched.
fn discovery(wasm: &str, rbac: &str) -> ExtensionConfigSource {
    ExtensionConfigSource {
        config_source: Some(crate::ads_config_source_waited_for()),
        type_urls: vec![wasm.to_owned(), rbac.to_owned()],
        ..Default::default()
    }
}

/// The WasmPlugins that apply to `proxy` (any side), in Istio's order.
fn applicable<'a>(
    snap: &'a Snapshot,
    proxy: &'a Proxy,
) -> impl Iterator<Item = &'a Config<WasmPluginSpec>> + 'a {
    let root = snap.mesh.root_namespace.as_str();
    let workload = (root, proxy.namespace.as_str(), &proxy.labels);
    let of = move |ns: &'a str| {
        snap.wasm_plugins
            .iter()
            .filter(move |p| p.namespace == ns)
            .filter(move |p| crate::attach::attaches(&p.namespace, &p.spec, workload))
    };
    let own = (proxy.namespace != root).then(|| of(proxy.namespace.as_str()));
    let mut all: Vec<&Config<WasmPluginSpec>> = of(root).chain(own.into_iter().flatten()).collect();
    // Stable: the namespace order stays within a priority.
    all.sort_by_key(|p| std::cmp::Reverse(p.spec.priority.unwrap_or(i32::MIN)));
    all.into_iter()
}

/// The ECDS resources of `proxy`: one per WasmPlugin that applies to it,
/// named as its filters ([`resource_name`]).
pub(crate) fn extension_configs(snap: &Snapshot, proxy: &Proxy) -> Vec<TypedExtensionConfig> {
    if snap.wasm_plugins.is_empty() {
        return Vec::new();
    }
    applicable(snap, proxy)
        .map(|p| TypedExtensionConfig {
            name: resource_name(&p.namespace, &p.name),
            typed_config: Some(wasm_filter(p, pull_secret(snap, proxy, p))),
        })
        .collect()
}

/// The registry login `proxy` gets for plugin `p`: none without an
/// `imagePullSecret`; else the Secret's `.dockerconfigjson`, for proxies
/// of the plugin's (and so the Secret's) namespace only (Istio sends it to
/// any proxy with a verified identity the plugin applies to); an empty
/// one where that is not there, so that the agent does not pull.
fn pull_secret<'a>(
    snap: &'a Snapshot,
    proxy: &Proxy,
    p: &Config<WasmPluginSpec>,
) -> Option<&'a [u8]> {
    let name = p.spec.image_pull_secret.as_deref()?;
    let login = snap
        .secrets
        .get(&format!("{}/{name}", p.namespace))
        .and_then(|s| s.docker_config.as_deref())
        .filter(|_| proxy.namespace == p.namespace);
    Some(login.unwrap_or_default())
}

/// The Wasm filter (HTTP or network) of a plugin, as Istio's
/// `buildWasmPluginConfigCommon`: plugin `<namespace>.<name>`, root ID
/// `pluginName`, configuration the `pluginConfig` as JSON text, the V8
/// runtime, the module's source, its environment, its failure policy.
fn wasm_filter(p: &Config<WasmPluginSpec>, pull_secret: Option<&[u8]>) -> Any {
    let spec = &p.spec;
    let configuration = spec
        .plugin_config
        .as_ref()
        .filter(|c| !c.is_empty())
        .map(|c| Any {
            type_url: "type.googleapis.com/google.protobuf.StringValue".into(),
            value: envoy_types::pb::google::protobuf::StringValue {
                value: serde_json::Value::Object(c.clone()).to_string(),
            }
            .encode_to_vec(),
        });
    let mut key_values: BTreeMap<String, String> = BTreeMap::new();
    let mut host_env_keys = Vec::new();
    for e in spec.vm_config.iter().flat_map(|vm| &vm.env) {
        match e.value_from.unwrap_or_default() {
            EnvValueSource::Inline => {
                key_values.insert(e.name.clone(), e.value.clone().unwrap_or_default());
            }
            EnvValueSource::Host => host_env_keys.push(e.name.clone()),
        }
    }
    if let Some(login) = pull_secret {
        key_values.insert(
            PULL_SECRET_ENV.into(),
            String::from_utf8_lossy(login).into_owned(),
        );
    }
    if let Some(policy) = spec.image_pull_policy {
        let name = match policy {
            PullPolicy::UnspecifiedPolicy => "UNSPECIFIED_POLICY",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Always => "Always",
        };
        key_values.insert(PULL_POLICY_ENV.into(), name.into());
    }
    let spec_json = serde_json::to_string(spec).unwrap_or_default();
    key_values.insert(
        RESOURCE_VERSION_ENV.into(),
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(spec_json.as_bytes())),
    );
    let config = PluginConfig {
        name: format!("{}.{}", p.namespace, p.name),
        root_id: spec.plugin_name.clone().unwrap_or_default(),
        configuration,
        failure_policy: match spec.fail_strategy.unwrap_or_default() {
            FailStrategy::FailClose => FailurePolicy::FailClosed,
            FailStrategy::FailOpen => FailurePolicy::FailOpen,
            FailStrategy::FailReload => FailurePolicy::FailReload,
        } as i32,
        vm: Some(plugin_config::Vm::VmConfig(VmConfig {
            runtime: RUNTIME.into(),
            code: Some(module_source(spec)),
            environment_variables: Some(EnvironmentVariables {
                host_env_keys,
                key_values: key_values.into_iter().collect(),
            }),
            ..Default::default()
        })),
        ..Default::default()
    };
    if spec.is_network() {
        envoy_types::util::pack_any(
            envoy_types::pb::envoy::extensions::filters::network::wasm::v3::Wasm {
                config: Some(config),
            },
        )
    } else {
        envoy_types::util::pack_any(
            envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm {
                config: Some(config),
            },
        )
    }
}

/// Where the module is, as Istio's `buildDataSource`: a `file://` URL is
/// a local file; anything else a remote source (an URL without a scheme
/// is an OCI image), fetched by the agent.
fn module_source(spec: &WasmPluginSpec) -> AsyncDataSource {
    let scheme = crds::validate::wasm_url_scheme(&spec.url);
    if scheme == "file" {
        return AsyncDataSource {
            specifier: Some(async_data_source::Specifier::Local(DataSource {
                specifier: Some(data_source::Specifier::Filename(
                    spec.url.trim_start_matches("file://").to_owned(),
                )),
                ..Default::default()
            })),
        };
    }
    let uri = if scheme.is_empty() {
        format!("oci://{}", spec.url)
    } else {
        spec.url.clone()
    };
    AsyncDataSource {
        specifier: Some(async_data_source::Specifier::Remote(RemoteDataSource {
            http_uri: Some(HttpUri {
                uri,
                timeout: Some(crate::duration(std::time::Duration::from_secs(
                    FETCH_TIMEOUT_SECS,
                ))),
                http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster(
                    AGENT_FETCHED_CLUSTER.into(),
                )),
            }),
            sha256: spec
                .sha256
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| NO_CHECKSUM.into()),
            ..Default::default()
        })),
    }
}

/// What WasmPlugins ask for that is not done here, naming the field.
pub(crate) fn warnings(snap: &Snapshot) -> Vec<ConfigWarning> {
    let mut out = Vec::new();
    for p in &snap.wasm_plugins {
        let mut warn = |field: &str, reason: &str| {
            out.push(ConfigWarning::new(
                "WasmPlugin",
                p.key(),
                field.into(),
                reason.into(),
            ));
        };
        if let Some(name) = &p.spec.image_pull_secret {
            let login = snap
                .secrets
                .get(&format!("{}/{name}", p.namespace))
                .map(|s| s.docker_config.is_some());
            let problem = match login {
                None => "no such Secret in the plugin's namespace",
                Some(false) => {
                    "the Secret has no .dockerconfigjson (type kubernetes.io/dockerconfigjson)"
                }
                Some(true) => continue,
            };
            warn(
                "spec.imagePullSecret",
                &format!(
                    "{problem}: the image is not pulled, and the plugin fails as its failStrategy says"
                ),
            );
        }
    }
    out
}

/// Puts `proxy`'s network plugins ([`Plugins::network`]) into the chains
/// of its `listeners`: inbound chains (`SERVER`) by the port they match
/// (a bound inbound listener's own port), outbound and gateway chains
/// (`CLIENT`) by the listener's port; the passthrough chains (to
/// destinations outside the mesh, or to ports nothing serves) take none,
/// as in Istio.
pub(crate) fn apply_network(
    snap: &Snapshot,
    proxy: &Proxy,
    listeners: &mut [envoy_types::pb::envoy::config::listener::v3::Listener],
) {
    use envoy_types::pb::envoy::config::core::v3::{TrafficDirection, address, socket_address};
    if !snap.wasm_plugins.iter().any(|p| p.spec.is_network()) {
        return;
    }
    let client = Plugins::of(snap, proxy, Side::Client);
    let server = Plugins::of(snap, proxy, Side::Server);
    for l in listeners {
        if l.name == crate::listener::VIRTUAL_OUTBOUND {
            continue;
        }
        let own_port = match l.address.as_ref().and_then(|a| a.address.as_ref()) {
            Some(address::Address::SocketAddress(s)) => match s.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(p)) => p,
                _ => 0,
            },
            _ => 0,
        };
        let inbound = l.traffic_direction == TrafficDirection::Inbound as i32;
        let virtual_inbound = l.name == crate::inbound::VIRTUAL_INBOUND;
        let plugins = if inbound { &server } else { &client };
        for chain in l
            .filter_chains
            .iter_mut()
            .chain(l.default_filter_chain.as_mut())
        {
            if chain.name == "PassthroughFilterChain" {
                continue;
            }
            let matched = chain
                .filter_chain_match
                .as_ref()
                .and_then(|m| m.destination_port)
                .map(|p| p.value);
            let port = match (virtual_inbound, matched) {
                (true, Some(p)) => p,
                // virtualInbound's chains for ports nothing serves.
                (true, None) => continue,
                (false, _) => own_port,
            };
            plugins.network(port, &mut chain.filters);
        }
    }
}
