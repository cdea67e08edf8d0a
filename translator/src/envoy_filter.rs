//! EnvoyFilter (`networking.istio.io/v1alpha3`): patches to what is
//! generated for the workloads an EnvoyFilter selects, as istiod's
//! `envoyfilter` package applies them after generating.
//!
//! - **Which**: those of the root namespace, then those of the proxy's
//!   namespace, each by `priority` then name, whose `workloadSelector`
//!   labels (none: all) are the proxy's, and whose `match.proxy` (if any)
//!   its `ISTIO_VERSION` and node metadata match; or, with `targetRefs`,
//!   those attached to a Gateway API gateway's pods ([`crate::attach`]).
//! - **Where** (`match.context`): `SIDECAR_INBOUND` (a sidecar's
//!   `virtualInbound` listener and inbound listeners, its `inbound|` route
//!   configurations and clusters), `SIDECAR_OUTBOUND` (the rest of a
//!   sidecar's), `GATEWAY` (a gateway's), `ANY`.
//! - **What**: `LISTENER` (`ADD`, `REMOVE`, `MERGE`), `LISTENER_FILTER`,
//!   `NETWORK_FILTER` and `HTTP_FILTER` (`ADD` at the end, `INSERT_FIRST`,
//!   `INSERT_BEFORE` / `INSERT_AFTER` the matched filter, `REMOVE`,
//!   `REPLACE`, `MERGE`; `REMOVE` and `REPLACE`, and `MERGE` of a listener
//!   filter, need a filter name and do nothing without one, as Istio's),
//!   `FILTER_CHAIN` (`ADD`, `REMOVE`, `MERGE`), `CLUSTER` (`ADD`,
//!   `REMOVE`, `MERGE`, `REPLACE`), `ROUTE_CONFIGURATION` (`MERGE`),
//!   `VIRTUAL_HOST` (`ADD`, `REMOVE`, `MERGE`), `HTTP_ROUTE` (`MERGE`,
//!   `REMOVE`, `INSERT_FIRST`, `INSERT_BEFORE` / `INSERT_AFTER` the matched
//!   route); `MERGE_AND_REPLACE_LIST` wherever `MERGE` is. Matches: a
//!   listener's `name` and `portNumber` (inbound: the filter chain's
//!   destination port), its `listenerFilter` (a listener filter's name), a
//!   filter chain's `name`, `sni`, `transportProtocol`,
//!   `applicationProtocols`, `destinationPort`, its `filter.name` and
//!   `filter.subFilter.name`; a cluster's `name`, `service`, `portNumber`,
//!   `subset`; a route configuration's `name`, `portNumber`, `gateway`,
//!   `vhost.name`, `vhost.domainName`, `vhost.route.name` and `action`.
//!   `EXTENSION_CONFIG` `ADD`s an ECDS resource ([`extension_configs`]).
//!   `BOOTSTRAP` and `filterClass` are reported and left out.
//! - **Values** are Envoy's JSON of the patched type (`@type` naming the
//!   type of a typed config), read against Envoy's descriptors
//!   ([`descriptors`]); one that does not parse is reported on
//!   `spec.configPatches[i].patch.value` and its patch left out.
//!   `MERGE` is protobuf's merge (set fields replace, lists append, messages
//!   merge), and merges inside a typed config (an `Any`) of the same type,
//!   as Istio's merge does; `MERGE_AND_REPLACE_LIST` (Istio 1.31) replaces
//!   the lists the value sets instead.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use crds::envoy_filter::{
    ApplyTo, EnvoyConfigObjectMatch, FilterChainMatch as ChainMatch, ListenerMatch, Operation,
    PatchContext, RouteConfigurationMatch,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, Listener, ListenerFilter, filter,
};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost, route};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, ReflectMessage, Value};

use crate::ConfigWarning;
use crate::encoded::Encoded;
use crate::model::{Proxy, ProxyKind, Snapshot};

/// Envoy's descriptors (every `v3` message envoy-types ships), compiled
/// by the build; `None` when the build found no `.proto` files.
pub fn descriptors() -> Option<&'static DescriptorPool> {
    static POOL: OnceLock<Option<DescriptorPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let bytes: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));
        if bytes.is_empty() {
            return None;
        }
        DescriptorPool::decode(bytes).ok()
    })
    .as_ref()
}

const HCM: &str = "envoy.filters.network.http_connection_manager";

/// One patch of an EnvoyFilter, its value read: what [`for_proxy`] picks
/// and the `apply_*` functions apply.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The EnvoyFilter's namespace.
    namespace: String,
    /// Its `workloadSelector` labels (none: every workload).
    selector: Option<BTreeMap<String, String>>,
    /// Its `targetRefs` (instead of the selector: a Gateway API gateway's
    /// pods, [`crate::attach`]).
    target_refs: Vec<crds::authorization_policy::PolicyTargetReference>,
    apply_to: ApplyTo,
    operation: Operation,
    context: PatchContext,
    matching: EnvoyConfigObjectMatch,
    /// `match.proxy.proxyVersion`, anchored as Go's `MatchString` is not:
    /// it matches anywhere in the proxy's `ISTIO_VERSION`.
    proxy_version: Option<regex::Regex>,
    /// The value, encoded as the patched type (none for `REMOVE`).
    value: Option<Vec<u8>>,
}

impl Compiled {
    /// Whether `proxy` is one this patch's `match.proxy` picks (Istio's
    /// `proxyMatch`): its `ISTIO_VERSION` matches `proxyVersion` (a proxy
    /// without a version matches no version regex) and its node metadata
    /// carries every `metadata` pair.
    fn proxy_matches(&self, proxy: &Proxy) -> bool {
        let Some(m) = &self.matching.proxy else {
            return true;
        };
        self.proxy_version.as_ref().is_none_or(|re| {
            proxy
                .metadata
                .get("ISTIO_VERSION")
                .is_some_and(|v| !v.is_empty() && re.is_match(v))
        }) && m
            .metadata
            .iter()
            .all(|(k, v)| proxy.metadata.get(k) == Some(v))
    }
}

/// The positions of the patches with a `match.proxy` that `proxy` matches:
/// part of its config key, so that proxies that differ there do not share
/// config.
pub(crate) fn proxy_matched(snap: &Snapshot, proxy: &Proxy) -> Vec<usize> {
    snap.envoy_patches
        .iter()
        .enumerate()
        .filter(|(_, c)| c.matching.proxy.is_some() && c.proxy_matches(proxy))
        .map(|(i, _)| i)
        .collect()
}

/// The protobuf type a patch of `apply_to` carries, if supported.
fn type_of(apply_to: ApplyTo) -> Option<&'static str> {
    Some(match apply_to {
        ApplyTo::Listener => "envoy.config.listener.v3.Listener",
        ApplyTo::ListenerFilter => "envoy.config.listener.v3.ListenerFilter",
        ApplyTo::FilterChain => "envoy.config.listener.v3.FilterChain",
        ApplyTo::NetworkFilter => "envoy.config.listener.v3.Filter",
        ApplyTo::HttpFilter => {
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter"
        }
        ApplyTo::RouteConfiguration => "envoy.config.route.v3.RouteConfiguration",
        ApplyTo::VirtualHost => "envoy.config.route.v3.VirtualHost",
        ApplyTo::HttpRoute => "envoy.config.route.v3.Route",
        ApplyTo::Cluster => "envoy.config.cluster.v3.Cluster",
        ApplyTo::ExtensionConfig => "envoy.config.core.v3.TypedExtensionConfig",
        _ => return None,
    })
}

/// Whether `operation` is one this module applies to `apply_to`
/// (`MERGE_AND_REPLACE_LIST` wherever `MERGE` is, as Istio takes it).
fn supported(apply_to: ApplyTo, operation: Operation) -> bool {
    use Operation::*;
    let operation = if operation == MergeAndReplaceList {
        Merge
    } else {
        operation
    };
    match apply_to {
        ApplyTo::Listener | ApplyTo::FilterChain => matches!(operation, Add | Remove | Merge),
        ApplyTo::ListenerFilter | ApplyTo::NetworkFilter | ApplyTo::HttpFilter => matches!(
            operation,
            Add | InsertFirst | InsertBefore | InsertAfter | Remove | Replace | Merge
        ),
        ApplyTo::Cluster => matches!(operation, Add | Remove | Merge | Replace),
        ApplyTo::RouteConfiguration => operation == Merge,
        ApplyTo::VirtualHost => matches!(operation, Add | Remove | Merge),
        ApplyTo::HttpRoute => matches!(
            operation,
            Merge | Remove | InsertFirst | InsertBefore | InsertAfter
        ),
        ApplyTo::ExtensionConfig => operation == Add,
        _ => false,
    }
}

/// Whether `operation` merges its value in (`MERGE`, or
/// `MERGE_AND_REPLACE_LIST`).
fn merges(operation: Operation) -> bool {
    matches!(operation, Operation::Merge | Operation::MergeAndReplaceList)
}

/// Reads every EnvoyFilter's patches (`value`s against Envoy's
/// descriptors); what cannot be applied is reported, naming the field, and
/// left out.
pub(crate) fn compile(snap: &Snapshot) -> (Vec<Compiled>, Vec<ConfigWarning>) {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    for ef in &snap.envoy_filters {
        let warn = |warnings: &mut Vec<ConfigWarning>, field: String, reason: String| {
            warnings.push(ConfigWarning::new("EnvoyFilter", ef.key(), field, reason));
        };
        for (i, cp) in ef.spec.config_patches.iter().enumerate() {
            let at = format!("spec.configPatches[{i}]");
            // Validation refused those without these.
            let (Some(apply_to), Some(patch)) = (cp.apply_to, &cp.patch) else {
                continue;
            };
            let Some(operation) = patch.operation else {
                continue;
            };
            let matching = cp.match_.clone().unwrap_or_default();
            if matching.waypoint.is_some() || matching.context == Some(PatchContext::Waypoint) {
                warn(
                    &mut warnings,
                    format!("{at}.match"),
                    "waypoints are not programmed by this control plane: the patch applies to nothing"
                        .into(),
                );
                continue;
            }
            let version = matching
                .proxy
                .as_ref()
                .and_then(|p| p.proxy_version.as_deref())
                .filter(|v| !v.is_empty());
            let proxy_version = match version.map(regex::Regex::new) {
                None => None,
                Some(Ok(re)) => Some(re),
                Some(Err(e)) => {
                    warn(
                        &mut warnings,
                        format!("{at}.match.proxy.proxyVersion"),
                        format!("not a regular expression: {e}; the patch is left out"),
                    );
                    continue;
                }
            };
            if !supported(apply_to, operation) {
                warn(
                    &mut warnings,
                    format!("{at}.patch.operation"),
                    format!(
                        "{operation:?} of {apply_to:?} is not supported yet: the patch is left out"
                    ),
                );
                continue;
            }
            if patch
                .filter_class
                .is_some_and(|c| c != crds::envoy_filter::FilterClass::Unspecified)
            {
                warn(
                    &mut warnings,
                    format!("{at}.patch.filterClass"),
                    "not supported yet: the operation places the filter".into(),
                );
            }
            let value = match (&patch.value, operation) {
                (_, Operation::Remove) | (None, _) => None,
                (Some(value), _) => match read_value(apply_to, value) {
                    Ok(bytes) if apply_to == ApplyTo::ExtensionConfig => {
                        // Envoy wants both; Istio's validation too.
                        let ec: Option<
                            envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig,
                        > = decode(&bytes);
                        if ec.is_none_or(|ec| ec.name.is_empty() || ec.typed_config.is_none()) {
                            warn(
                                &mut warnings,
                                format!("{at}.patch.value"),
                                "an extension config needs a name and a typed_config: the patch is left out".into(),
                            );
                            continue;
                        }
                        Some(bytes)
                    }
                    Ok(bytes) => Some(bytes),
                    Err(why) => {
                        warn(&mut warnings, format!("{at}.patch.value"), why);
                        continue;
                    }
                },
            };
            out.push(Compiled {
                namespace: ef.namespace.clone(),
                selector: ef.spec.workload_selector.as_ref().map(|s| s.labels.clone()),
                target_refs: ef.spec.target_refs.clone(),
                apply_to,
                operation,
                context: matching.context.unwrap_or(PatchContext::Any),
                matching,
                proxy_version,
                value,
            });
        }
    }
    (out, warnings)
}

/// `value` (Envoy's JSON) as the protobuf of the type `apply_to` patches.
fn read_value(
    apply_to: ApplyTo,
    value: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<u8>, String> {
    let pool = descriptors().ok_or("Envoy's descriptors are not built in")?;
    let name = type_of(apply_to).ok_or("not a patchable kind")?;
    let desc = pool
        .get_message_by_name(name)
        .ok_or_else(|| format!("{name} is not known"))?;
    let message = DynamicMessage::deserialize(desc, serde_json::Value::Object(value.clone()))
        .map_err(|e| format!("not a {name}: {e}"))?;
    Ok(message.encode_to_vec())
}

/// The patches that apply to `proxy`: the root namespace's, then its own
/// namespace's, selected by labels.
pub(crate) fn for_proxy<'a>(snap: &'a Snapshot, proxy: &Proxy) -> Vec<&'a Compiled> {
    if snap.envoy_patches.is_empty() {
        return Vec::new();
    }
    let root = snap.mesh.root_namespace.as_str();
    let selects = |c: &Compiled| {
        if !c.target_refs.is_empty() {
            return crate::attach::attaches_by_refs(
                &c.namespace,
                &c.target_refs,
                (root, &proxy.namespace, &proxy.labels),
            );
        }
        c.selector
            .as_ref()
            .is_none_or(|s| s.iter().all(|(k, v)| proxy.labels.get(k) == Some(v)))
    };
    let level = |ns: &str| -> Vec<&'a Compiled> {
        snap.envoy_patches
            .iter()
            .filter(|c| c.namespace == ns && selects(c) && c.proxy_matches(proxy))
            .collect()
    };
    let mut out = level(root);
    if proxy.namespace != root {
        out.extend(level(&proxy.namespace));
    }
    out
}

/// Whether a patch of `context` applies to a part of `proxy` on the
/// inbound side (`inbound`) or not.
fn in_context(context: PatchContext, proxy: &Proxy, inbound: bool) -> bool {
    let router = proxy.kind == ProxyKind::Router;
    match context {
        PatchContext::Any => true,
        PatchContext::Gateway => router,
        PatchContext::SidecarInbound => !router && inbound,
        PatchContext::SidecarOutbound => !router && !inbound,
        PatchContext::Waypoint => false,
    }
}

/// The extension configs the `EXTENSION_CONFIG` patches among `patches`
/// add for `proxy` (served over ECDS, as Istio's
/// `InsertedExtensionConfigurations`: a filter names one in its
/// `config_discovery`, e.g. from an `HTTP_FILTER` patch), by context.
pub(crate) fn extension_configs(
    patches: &[&Compiled],
    proxy: &Proxy,
) -> Vec<envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig> {
    patches
        .iter()
        .filter(|c| c.apply_to == ApplyTo::ExtensionConfig && c.operation == Operation::Add)
        .filter(|c| adds_to(c.context, proxy))
        .filter_map(|c| decode(c.value.as_deref()?))
        .collect()
}

/// Whether a patch of `context` may add something to `proxy`'s config.
fn adds_to(context: PatchContext, proxy: &Proxy) -> bool {
    let router = proxy.kind == ProxyKind::Router;
    match context {
        PatchContext::Any => true,
        PatchContext::Gateway => router,
        PatchContext::SidecarInbound | PatchContext::SidecarOutbound => !router,
        PatchContext::Waypoint => false,
    }
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Option<M> {
    M::decode(bytes).ok()
}

/// `target` with `p`'s value (encoded as the same type, `type_name`)
/// merged in, as protobuf's merge, recursing into typed configs of the
/// same type; `MERGE_AND_REPLACE_LIST` replaces the lists the value sets
/// instead of appending to them, at every depth (Istio's newest source
/// does so inside typed configs too).
fn merged<M: Message + Default>(target: &M, p: &Compiled, type_name: &str) -> Option<M> {
    let pool = descriptors()?;
    let desc = pool.get_message_by_name(type_name)?;
    let mut dst = DynamicMessage::decode(desc.clone(), target.encode_to_vec().as_slice()).ok()?;
    let src = DynamicMessage::decode(desc, p.value.as_deref()?).ok()?;
    let replace_lists = p.operation == Operation::MergeAndReplaceList;
    merge(&mut dst, &src, pool, replace_lists);
    M::decode(dst.encode_to_vec().as_slice()).ok()
}

/// Protobuf's merge of `src` into `dst` (lists replaced, with
/// `replace_lists`), except that a `google.protobuf.Any` holding the same
/// type on both sides is merged as that type.
fn merge(
    dst: &mut DynamicMessage,
    src: &DynamicMessage,
    pool: &DescriptorPool,
    replace_lists: bool,
) {
    if dst.descriptor().full_name() == "google.protobuf.Any"
        && let (Some(a), Some(b)) = (any_of(dst), any_of(src))
        && a.0 == b.0
        && let Some(desc) = pool.get_message_by_name(a.0.trim_start_matches("type.googleapis.com/"))
        && let (Ok(mut inner), Ok(patch)) = (
            DynamicMessage::decode(desc.clone(), a.1.as_slice()),
            DynamicMessage::decode(desc, b.1.as_slice()),
        )
    {
        merge(&mut inner, &patch, pool, replace_lists);
        dst.set_field_by_name("value", Value::Bytes(inner.encode_to_vec().into()));
        return;
    }
    for (field, value) in src.fields() {
        match value {
            Value::List(items) => {
                if let Value::List(existing) = dst.get_field_mut(&field) {
                    if replace_lists {
                        existing.clear();
                    }
                    existing.extend(items.iter().cloned());
                }
            }
            Value::Map(entries) => {
                if let Value::Map(existing) = dst.get_field_mut(&field) {
                    existing.extend(entries.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
            Value::Message(m) if dst.has_field(&field) => {
                if let Value::Message(existing) = dst.get_field_mut(&field) {
                    merge(existing, m, pool, replace_lists);
                }
            }
            other => dst.set_field(&field, other.clone()),
        }
    }
}

/// The `type_url` and `value` of an `Any`.
fn any_of(m: &DynamicMessage) -> Option<(String, Vec<u8>)> {
    let url = m.get_field_by_name("type_url")?.as_str()?.to_owned();
    let value = m.get_field_by_name("value")?.as_bytes()?.to_vec();
    Some((url, value))
}

/// Applies the listener-class patches (`LISTENER`, `LISTENER_FILTER`,
/// `FILTER_CHAIN`, `NETWORK_FILTER`, `HTTP_FILTER`) to `listeners`.
pub(crate) fn apply_listeners(patches: &[&Compiled], proxy: &Proxy, listeners: &mut Vec<Listener>) {
    for p in patches {
        let lm = p.matching.listener.clone().unwrap_or_default();
        match p.apply_to {
            ApplyTo::Listener => match p.operation {
                Operation::Add => {
                    if adds_to(p.context, proxy)
                        && let Some(l) = p.value.as_deref().and_then(decode::<Listener>)
                    {
                        listeners.push(l);
                    }
                }
                Operation::Remove => {
                    listeners.retain(|l| !listener_matches(p, proxy, &lm, l));
                }
                op if merges(op) => {
                    for l in listeners.iter_mut() {
                        if listener_matches(p, proxy, &lm, l)
                            && let Some(m) = merged(&*l, p, "envoy.config.listener.v3.Listener")
                        {
                            *l = m;
                        }
                    }
                }
                _ => {}
            },
            ApplyTo::ListenerFilter => {
                for l in listeners.iter_mut() {
                    if in_context(p.context, proxy, is_inbound(l)) && listener_named_at(p, &lm, l) {
                        listener_filter_op(p, &lm, l);
                    }
                }
            }
            ApplyTo::FilterChain => {
                for l in listeners.iter_mut() {
                    if !listener_matches(p, proxy, &lm, l) {
                        continue;
                    }
                    match p.operation {
                        Operation::Add => {
                            if let Some(c) = p.value.as_deref().and_then(decode::<FilterChain>) {
                                l.filter_chains.push(c);
                            }
                        }
                        Operation::Remove => {
                            let virtual_ = is_virtual(l);
                            l.filter_chains.retain(|c| {
                                !chain_matches(
                                    lm.filter_chain.as_ref(),
                                    c,
                                    virtual_,
                                    lm.port_number,
                                )
                            });
                            if l.default_filter_chain.as_ref().is_some_and(|c| {
                                chain_matches(lm.filter_chain.as_ref(), c, virtual_, lm.port_number)
                            }) {
                                l.default_filter_chain = None;
                            }
                        }
                        op if merges(op) => {
                            for_each_chain(l, &lm, |c| {
                                if let Some(m) =
                                    merged(&*c, p, "envoy.config.listener.v3.FilterChain")
                                {
                                    *c = m;
                                }
                            });
                        }
                        _ => {}
                    }
                }
            }
            ApplyTo::NetworkFilter => {
                for l in listeners.iter_mut() {
                    if listener_matches(p, proxy, &lm, l) {
                        for_each_chain(l, &lm, |c| network_filter_op(p, &lm, c));
                    }
                }
            }
            ApplyTo::HttpFilter => {
                for l in listeners.iter_mut() {
                    if listener_matches(p, proxy, &lm, l) {
                        for_each_chain(l, &lm, |c| http_filter_op(p, &lm, c));
                    }
                }
            }
            _ => {}
        }
    }
}

/// A sidecar's inbound listener (`virtualInbound`, or one marked inbound).
fn is_inbound(l: &Listener) -> bool {
    l.name == crate::inbound::VIRTUAL_INBOUND
        || l.traffic_direction == TrafficDirection::Inbound as i32
}

fn listener_port(l: &Listener) -> Option<u32> {
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
    match l.address.as_ref()?.address.as_ref()? {
        address::Address::SocketAddress(s) => match s.port_specifier.as_ref()? {
            socket_address::PortSpecifier::PortValue(p) => Some(*p),
            socket_address::PortSpecifier::NamedPort(_) => None,
        },
        _ => None,
    }
}

/// `virtualInbound` or `virtualOutbound`: the listeners whose chains are
/// told apart by the destination port.
fn is_virtual(l: &Listener) -> bool {
    l.name == crate::inbound::VIRTUAL_INBOUND || l.name == crate::listener::VIRTUAL_OUTBOUND
}

/// Whether listener `l` has the name and port `lm` asks for, as Istio's
/// `listenerMatch`: below `LISTENER`, the port of `virtualInbound` and
/// `virtualOutbound` is not checked (on `virtualInbound` it is the
/// chains' destination port, checked per chain).
fn listener_named_at(p: &Compiled, lm: &ListenerMatch, l: &Listener) -> bool {
    lm.name.as_deref().is_none_or(|n| n == l.name)
        && ((is_virtual(l) && p.apply_to != ApplyTo::Listener)
            || lm
                .port_number
                .is_none_or(|port| listener_port(l) == Some(port)))
}

/// Whether listener `l` is one `p` patches: its side, name and port (an
/// inbound listener's port is its chains', checked per chain), and a chain
/// that `lm.filterChain` matches.
fn listener_matches(p: &Compiled, proxy: &Proxy, lm: &ListenerMatch, l: &Listener) -> bool {
    let virtual_ = is_virtual(l);
    in_context(p.context, proxy, is_inbound(l))
        && listener_named_at(p, lm, l)
        && (lm.filter_chain.is_none()
            || l.filter_chains
                .iter()
                .chain(l.default_filter_chain.as_ref())
                .any(|c| chain_matches(lm.filter_chain.as_ref(), c, virtual_, lm.port_number)))
}

/// Whether chain `c` matches `m` (and, on a virtual listener, `port` as
/// its destination port, as Istio's `filterChainMatch`).
fn chain_matches(
    m: Option<&ChainMatch>,
    c: &FilterChain,
    virtual_: bool,
    port: Option<u32>,
) -> bool {
    let fcm = c.filter_chain_match.clone().unwrap_or_default();
    let destination = fcm.destination_port.map(|p| p.value);
    if virtual_ && port.is_some() && destination != port {
        return false;
    }
    let Some(m) = m else { return true };
    m.name.as_deref().is_none_or(|n| n == c.name)
        && m.sni
            .as_deref()
            .is_none_or(|s| fcm.server_names.iter().any(|n| n == s))
        && m.transport_protocol
            .as_deref()
            .is_none_or(|t| t == fcm.transport_protocol)
        && m.application_protocols.as_deref().is_none_or(|wanted| {
            wanted
                .split(',')
                .all(|w| fcm.application_protocols.iter().any(|a| a == w.trim()))
        })
        && m.destination_port.is_none_or(|d| destination == Some(d))
        && m.filter
            .as_ref()
            .and_then(|f| f.name.as_deref())
            .is_none_or(|n| c.filters.iter().any(|f| f.name == n))
}

/// Runs `op` on each chain of `l` (its default chain too) that `lm` matches.
fn for_each_chain(l: &mut Listener, lm: &ListenerMatch, mut op: impl FnMut(&mut FilterChain)) {
    let virtual_ = is_virtual(l);
    for c in l
        .filter_chains
        .iter_mut()
        .chain(l.default_filter_chain.as_mut())
    {
        if chain_matches(lm.filter_chain.as_ref(), c, virtual_, lm.port_number) {
            op(c);
        }
    }
}

/// The filter name `lm` names, if any.
fn filter_name(lm: &ListenerMatch) -> Option<&str> {
    lm.filter_chain.as_ref()?.filter.as_ref()?.name.as_deref()
}

/// A list operation of `p` on `items` (filters of a chain, HTTP filters of
/// a connection manager, routes of a virtual host), `target` saying
/// which item the match names (all, without a name).
fn list_op<T: Message + Default + Clone>(
    p: &Compiled,
    items: &mut Vec<T>,
    target: impl Fn(&T) -> bool,
    named: bool,
    type_name: &str,
) {
    let value = || p.value.as_deref().and_then(decode::<T>);
    match p.operation {
        Operation::Add => items.extend(value()),
        Operation::InsertFirst => {
            if let Some(v) = value() {
                items.insert(0, v);
            }
        }
        Operation::InsertBefore | Operation::InsertAfter => {
            // Without a name there is nothing to be next to: first or last.
            let at = if named {
                items.iter().position(&target)
            } else {
                None
            };
            let Some(v) = value() else { return };
            match (at, p.operation) {
                (Some(i), Operation::InsertBefore) => items.insert(i, v),
                (Some(i), _) => items.insert(i + 1, v),
                (None, Operation::InsertBefore) if !named => items.insert(0, v),
                (None, _) if !named => items.push(v),
                (None, _) => {}
            }
        }
        Operation::Remove => items.retain(|i| !target(i)),
        Operation::Replace => {
            if let Some(v) = value() {
                for i in items.iter_mut().filter(|i| target(i)) {
                    *i = v.clone();
                }
            }
        }
        op if merges(op) => {
            for i in items.iter_mut().filter(|i| target(i)) {
                if let Some(m) = merged(&*i, p, type_name) {
                    *i = m;
                }
            }
        }
        _ => {}
    }
}

/// Whether `p` is a `REMOVE` or `REPLACE` without a filter to act on:
/// Istio leaves those out rather than act on every filter.
fn unnamed_removal(p: &Compiled, name: Option<&str>) -> bool {
    name.is_none() && matches!(p.operation, Operation::Remove | Operation::Replace)
}

/// A `LISTENER_FILTER` patch on `l`'s listener filters, the one named by
/// `lm.listenerFilter` (Istio's `patchListenerFilters`: without a name,
/// `REMOVE`, `REPLACE` and `MERGE` do nothing).
fn listener_filter_op(p: &Compiled, lm: &ListenerMatch, l: &mut Listener) {
    let name = lm.listener_filter.as_deref().filter(|n| !n.is_empty());
    if unnamed_removal(p, name) || (name.is_none() && merges(p.operation)) {
        return;
    }
    list_op(
        p,
        &mut l.listener_filters,
        |f: &ListenerFilter| name.is_none_or(|n| f.name == n),
        name.is_some(),
        "envoy.config.listener.v3.ListenerFilter",
    );
}

fn network_filter_op(p: &Compiled, lm: &ListenerMatch, c: &mut FilterChain) {
    let name = filter_name(lm);
    if unnamed_removal(p, name) {
        return;
    }
    list_op(
        p,
        &mut c.filters,
        |f: &Filter| name.is_none_or(|n| f.name == n),
        name.is_some(),
        "envoy.config.listener.v3.Filter",
    );
}

fn http_filter_op(p: &Compiled, lm: &ListenerMatch, c: &mut FilterChain) {
    if filter_name(lm).is_some_and(|n| n != HCM && n != "envoy.http_connection_manager") {
        return;
    }
    let sub = lm
        .filter_chain
        .as_ref()
        .and_then(|c| c.filter.as_ref())
        .and_then(|f| f.sub_filter.as_ref())
        .and_then(|s| s.name.as_deref());
    if unnamed_removal(p, sub) {
        return;
    }
    for f in c.filters.iter_mut().filter(|f| f.name == HCM) {
        let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            continue;
        };
        let Ok(mut hcm) = HttpConnectionManager::decode(any.value.as_slice()) else {
            continue;
        };
        list_op(
            p,
            &mut hcm.http_filters,
            |h: &HttpFilter| sub.is_none_or(|n| h.name == n),
            sub.is_some(),
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
        );
        f.config_type = Some(filter::ConfigType::TypedConfig(Any {
            type_url: any.type_url.clone(),
            value: hcm.encode_to_vec(),
        }));
    }
}

/// The `(port, subset, host)` of an `outbound|port|subset|host` cluster.
fn outbound_parts(name: &str) -> Option<(u32, &str, &str)> {
    let mut parts = name.split('|');
    if parts.next()? != "outbound" {
        return None;
    }
    let port = parts.next()?.parse().ok()?;
    Some((port, parts.next()?, parts.next()?))
}

/// Applies the `CLUSTER` patches to `clusters`.
pub(crate) fn apply_clusters(patches: &[&Compiled], proxy: &Proxy, clusters: &mut Vec<Cluster>) {
    for p in patches.iter().filter(|p| p.apply_to == ApplyTo::Cluster) {
        let cm = p.matching.cluster.clone().unwrap_or_default();
        let matches = |c: &Cluster| {
            let inbound = c.name.starts_with("inbound|");
            let parts = outbound_parts(&c.name);
            in_context(p.context, proxy, inbound)
                && cm.name.as_deref().is_none_or(|n| n == c.name)
                && cm
                    .service
                    .as_deref()
                    .is_none_or(|s| parts.is_some_and(|(_, _, host)| host == s))
                && cm
                    .port_number
                    .is_none_or(|port| parts.is_some_and(|(p, _, _)| p == port))
                && cm
                    .subset
                    .as_deref()
                    .is_none_or(|s| parts.is_some_and(|(_, subset, _)| subset == s))
        };
        match p.operation {
            Operation::Add => {
                if adds_to(p.context, proxy)
                    && let Some(c) = p.value.as_deref().and_then(decode::<Cluster>)
                {
                    clusters.retain(|old| old.name != c.name);
                    clusters.push(c);
                }
            }
            Operation::Remove => clusters.retain(|c| !matches(c)),
            Operation::Replace => {
                if let Some(v) = p.value.as_deref().and_then(decode::<Cluster>) {
                    for c in clusters.iter_mut().filter(|c| matches(c)) {
                        *c = v.clone();
                    }
                }
            }
            op if merges(op) => {
                for c in clusters.iter_mut().filter(|c| matches(c)) {
                    if let Some(m) = merged(&*c, p, "envoy.config.cluster.v3.Cluster") {
                        *c = m;
                    }
                }
            }
            _ => {}
        }
    }
}

/// The port a route configuration is for, from its name: `9080`,
/// `http.8080[.bind]`, `https.443.<port name>.<gateway>.<namespace>`,
/// `inbound|9080||`, `<host>:<port>`.
fn route_port(name: &str) -> Option<u32> {
    if let Ok(p) = name.parse() {
        return Some(p);
    }
    if let Some(rest) = name.strip_prefix("inbound|") {
        return rest.split('|').next()?.parse().ok();
    }
    for prefix in ["http.", "https."] {
        if let Some(rest) = name.strip_prefix(prefix) {
            return rest.split('.').next()?.parse().ok();
        }
    }
    name.rsplit_once(':')?.1.parse().ok()
}

/// Whether route configuration `rc` is one `m` names (`gateway` is
/// `namespace/name`, read from an HTTPS server's route name).
fn route_config_matches(m: &RouteConfigurationMatch, rc: &RouteConfiguration) -> bool {
    m.name.as_deref().is_none_or(|n| n == rc.name)
        && m.port_number
            .is_none_or(|p| route_port(&rc.name) == Some(p))
        && m.gateway.as_deref().is_none_or(|g| {
            let parts: Vec<&str> = rc.name.split('.').collect();
            parts.len() >= 5
                && parts[0] == "https"
                && g.split_once('/')
                    .is_some_and(|(ns, name)| parts[3] == name && parts[4] == ns)
        })
}

fn vhost_matches(m: &RouteConfigurationMatch, vh: &VirtualHost) -> bool {
    m.vhost.as_ref().is_none_or(|v| {
        v.name.as_deref().is_none_or(|n| n == vh.name)
            && v.domain_name
                .as_deref()
                .is_none_or(|d| vh.domains.iter().any(|x| x == d))
    })
}

/// Applies the route-class patches (`ROUTE_CONFIGURATION`, `VIRTUAL_HOST`,
/// `HTTP_ROUTE`) to `routes`.
pub(crate) fn apply_routes(
    patches: &[&Compiled],
    proxy: &Proxy,
    routes: &mut [RouteConfiguration],
) {
    use crds::envoy_filter::RouteAction;
    for p in patches {
        let m = p.matching.route_configuration.clone().unwrap_or_default();
        for rc in routes.iter_mut() {
            let inbound = rc.name.starts_with("inbound|");
            if !in_context(p.context, proxy, inbound) || !route_config_matches(&m, rc) {
                continue;
            }
            match p.apply_to {
                ApplyTo::RouteConfiguration => {
                    if let Some(merged) =
                        merged(&*rc, p, "envoy.config.route.v3.RouteConfiguration")
                    {
                        *rc = merged;
                    }
                }
                ApplyTo::VirtualHost => match p.operation {
                    Operation::Add => {
                        if let Some(v) = p.value.as_deref().and_then(decode::<VirtualHost>) {
                            rc.virtual_hosts.push(v);
                        }
                    }
                    Operation::Remove => rc.virtual_hosts.retain(|vh| !vhost_matches(&m, vh)),
                    op if merges(op) => {
                        for vh in rc
                            .virtual_hosts
                            .iter_mut()
                            .filter(|vh| vhost_matches(&m, vh))
                        {
                            if let Some(merged) =
                                merged(&*vh, p, "envoy.config.route.v3.VirtualHost")
                            {
                                *vh = merged;
                            }
                        }
                    }
                    _ => {}
                },
                ApplyTo::HttpRoute => {
                    let rm = m
                        .vhost
                        .as_ref()
                        .and_then(|v| v.route.clone())
                        .unwrap_or_default();
                    let action = rm.action.unwrap_or(RouteAction::Any);
                    let target = |r: &envoy_types::pb::envoy::config::route::v3::Route| {
                        rm.name.as_deref().is_none_or(|n| n == r.name)
                            && matches!(
                                (action, &r.action),
                                (RouteAction::Any, _)
                                    | (RouteAction::Route, Some(route::Action::Route(_)))
                                    | (RouteAction::Redirect, Some(route::Action::Redirect(_)))
                                    | (
                                        RouteAction::DirectResponse,
                                        Some(route::Action::DirectResponse(_))
                                    )
                            )
                    };
                    for vh in rc
                        .virtual_hosts
                        .iter_mut()
                        .filter(|vh| vhost_matches(&m, vh))
                    {
                        list_op(
                            p,
                            &mut vh.routes,
                            target,
                            rm.name.is_some(),
                            "envoy.config.route.v3.Route",
                        );
                    }
                }
                _ => {}
            }
        }
    }
}

/// Applies `patches` to encoded resources of one type, `M` (decoded only
/// when some patch is of `kinds`), with `apply`.
pub(crate) fn apply_encoded<M: Message + Default>(
    patches: &[&Compiled],
    kinds: &[ApplyTo],
    type_url: &str,
    name: impl Fn(&M) -> &str,
    resources: &mut Vec<Encoded>,
    apply: impl FnOnce(&mut Vec<M>),
) {
    if !patches.iter().any(|p| kinds.contains(&p.apply_to)) {
        return;
    }
    let mut decoded: Vec<M> = resources
        .iter()
        .filter_map(|(_, _, bytes)| {
            let any = Any::decode(bytes.as_ref()).ok()?;
            M::decode(any.value.as_slice()).ok()
        })
        .collect();
    apply(&mut decoded);
    *resources = decoded
        .iter()
        .map(|m| crate::encoded::encode(type_url, name(m), m))
        .collect();
}
