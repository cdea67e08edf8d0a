//! `networking.istio.io/v1alpha3` EnvoyFilter: patches to the Envoy
//! configuration generated for the workloads it selects. Follows
//! `istio.networking.v1alpha3.EnvoyFilter` field for field.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::authorization_policy::PolicyTargetReference;

/// Istio `EnvoyFilter` spec.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1alpha3",
    kind = "EnvoyFilter",
    namespaced
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvoyFilterSpec {
    /// The workloads it patches (`labels`); none: every workload of its
    /// namespace (of the mesh, in the root namespace).
    #[serde(default)]
    pub workload_selector: Option<WorkloadSelector>,
    /// Gateways or waypoints it patches (instead of `workloadSelector`).
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetReference>,
    /// The patches, applied in order.
    #[serde(default)]
    pub config_patches: Vec<EnvoyConfigObjectPatch>,
    /// Order among EnvoyFilters of one level (lower first; default 0). The
    /// root namespace's are applied before a workload namespace's.
    #[serde(default)]
    pub priority: Option<i32>,
}

/// Istio's `WorkloadSelector` (`labels`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Labels a workload must carry, all of them.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Istio `EnvoyConfigObjectPatch`: where (`applyTo`, `match`) and what (`patch`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvoyConfigObjectPatch {
    /// The kind of Envoy object patched.
    #[serde(default)]
    pub apply_to: Option<ApplyTo>,
    /// Which objects of that kind.
    #[serde(default, rename = "match")]
    pub match_: Option<EnvoyConfigObjectMatch>,
    /// The operation and its value.
    #[serde(default)]
    pub patch: Option<Patch>,
}

/// Istio `EnvoyFilter.ApplyTo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ApplyTo {
    /// Not a kind (refused).
    Invalid,
    /// A listener.
    Listener,
    /// A listener's filter chain.
    FilterChain,
    /// A filter of a filter chain.
    NetworkFilter,
    /// An HTTP filter of an HTTP connection manager.
    HttpFilter,
    /// A route configuration.
    RouteConfiguration,
    /// A virtual host of a route configuration.
    VirtualHost,
    /// A route of a virtual host.
    HttpRoute,
    /// A cluster.
    Cluster,
    /// An extension configuration (ECDS).
    ExtensionConfig,
    /// The bootstrap.
    Bootstrap,
    /// A listener filter.
    ListenerFilter,
}

/// Istio `EnvoyConfigObjectMatch`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvoyConfigObjectMatch {
    /// Which proxies' side (default `ANY`).
    #[serde(default)]
    pub context: Option<PatchContext>,
    /// The proxy's version and metadata.
    #[serde(default)]
    pub proxy: Option<ProxyMatch>,
    /// A listener (and within it a filter chain, a filter).
    #[serde(default)]
    pub listener: Option<ListenerMatch>,
    /// A route configuration (and a virtual host, a route).
    #[serde(default)]
    pub route_configuration: Option<RouteConfigurationMatch>,
    /// A cluster.
    #[serde(default)]
    pub cluster: Option<ClusterMatch>,
    /// A waypoint's filter or route.
    #[serde(default)]
    pub waypoint: Option<WaypointMatch>,
}

/// Istio `EnvoyFilter.WaypointMatch`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaypointMatch {
    /// A filter of the waypoint.
    #[serde(default)]
    pub filter: Option<FilterMatch>,
    /// The port.
    #[serde(default)]
    pub port_number: Option<u32>,
    /// A route.
    #[serde(default)]
    pub route: Option<WaypointRouteMatch>,
}

/// Istio `EnvoyFilter.WaypointMatch.RouteMatch`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaypointRouteMatch {
    /// The route's name.
    #[serde(default)]
    pub name: Option<String>,
}

/// Istio `EnvoyFilter.PatchContext`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PatchContext {
    /// Every proxy, every side.
    Any,
    /// A sidecar's inbound side.
    SidecarInbound,
    /// A sidecar's outbound side.
    SidecarOutbound,
    /// A gateway.
    Gateway,
    /// A waypoint.
    Waypoint,
}

/// Istio `EnvoyFilter.ProxyMatch`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyMatch {
    /// A regular expression the proxy's Istio version must match.
    #[serde(default)]
    pub proxy_version: Option<String>,
    /// Node metadata the proxy must carry.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// Istio `EnvoyFilter.ListenerMatch`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerMatch {
    /// The service or gateway port the listener (or, inbound, the chain) serves.
    #[serde(default)]
    pub port_number: Option<u32>,
    /// Deprecated by Istio.
    #[serde(default)]
    pub port_name: Option<String>,
    /// A filter chain of the listener.
    #[serde(default)]
    pub filter_chain: Option<FilterChainMatch>,
    /// A listener filter's name.
    #[serde(default)]
    pub listener_filter: Option<String>,
    /// The listener's name.
    #[serde(default)]
    pub name: Option<String>,
}

/// Istio `EnvoyFilter.ListenerMatch.FilterChainMatch`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterChainMatch {
    /// The chain's name.
    #[serde(default)]
    pub name: Option<String>,
    /// An SNI name the chain matches.
    #[serde(default)]
    pub sni: Option<String>,
    /// `tls` or `raw_buffer`.
    #[serde(default)]
    pub transport_protocol: Option<String>,
    /// ALPN values the chain matches (comma-separated).
    #[serde(default)]
    pub application_protocols: Option<String>,
    /// A filter of the chain.
    #[serde(default)]
    pub filter: Option<FilterMatch>,
    /// The destination port the chain matches.
    #[serde(default)]
    pub destination_port: Option<u32>,
    /// The chain's transport socket.
    #[serde(default)]
    pub transport_socket: Option<String>,
}

/// Istio `EnvoyFilter.ListenerMatch.FilterMatch`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterMatch {
    /// The filter's name (`envoy.filters.network.http_connection_manager`).
    #[serde(default)]
    pub name: Option<String>,
    /// An HTTP filter of that connection manager.
    #[serde(default)]
    pub sub_filter: Option<SubFilterMatch>,
}

/// Istio `EnvoyFilter.ListenerMatch.SubFilterMatch`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubFilterMatch {
    /// The HTTP filter's name (`envoy.filters.http.router`).
    #[serde(default)]
    pub name: Option<String>,
}

/// Istio `EnvoyFilter.RouteConfigurationMatch`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfigurationMatch {
    /// The service or gateway port the route configuration is for.
    #[serde(default)]
    pub port_number: Option<u32>,
    /// The gateway port's name.
    #[serde(default)]
    pub port_name: Option<String>,
    /// The gateway (`namespace/name`) whose server it is for.
    #[serde(default)]
    pub gateway: Option<String>,
    /// A virtual host.
    #[serde(default)]
    pub vhost: Option<VirtualHostMatch>,
    /// The route configuration's name.
    #[serde(default)]
    pub name: Option<String>,
}

/// Istio `EnvoyFilter.RouteConfigurationMatch.VirtualHostMatch`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualHostMatch {
    /// The virtual host's name (`reviews.default.svc.cluster.local:9080`).
    #[serde(default)]
    pub name: Option<String>,
    /// A domain of the virtual host.
    #[serde(default)]
    pub domain_name: Option<String>,
    /// A route of it.
    #[serde(default)]
    pub route: Option<RouteMatch>,
}

/// Istio `EnvoyFilter.RouteConfigurationMatch.RouteMatch`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    /// The route's name.
    #[serde(default)]
    pub name: Option<String>,
    /// The route's kind of action.
    #[serde(default)]
    pub action: Option<RouteAction>,
}

/// Istio `EnvoyFilter.RouteConfigurationMatch.RouteMatch.Action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RouteAction {
    /// Any route.
    Any,
    /// A route to a cluster.
    Route,
    /// A redirect.
    Redirect,
    /// A direct response.
    DirectResponse,
}

/// Istio `EnvoyFilter.ClusterMatch`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterMatch {
    /// The service port of the cluster.
    #[serde(default)]
    pub port_number: Option<u32>,
    /// The service's hostname.
    #[serde(default)]
    pub service: Option<String>,
    /// The DestinationRule subset.
    #[serde(default)]
    pub subset: Option<String>,
    /// The cluster's name.
    #[serde(default)]
    pub name: Option<String>,
}

/// Istio `EnvoyFilter.Patch`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Patch {
    /// What is done.
    #[serde(default)]
    pub operation: Option<Operation>,
    /// The Envoy object (in Envoy's JSON, `@type` naming typed configs) to
    /// add, insert, merge or replace with.
    #[serde(default)]
    #[schemars(schema_with = "preserved_object")]
    pub value: Option<serde_json::Map<String, serde_json::Value>>,
    /// Where an inserted HTTP filter goes among Istio's own.
    #[serde(default)]
    pub filter_class: Option<FilterClass>,
}

/// Istio `EnvoyFilter.Patch.Operation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Operation {
    /// Not an operation (refused).
    Invalid,
    /// Protobuf merge of the value into the object.
    Merge,
    /// Add the value (to a list of objects).
    Add,
    /// Remove the object.
    Remove,
    /// Insert the value before the matched object.
    InsertBefore,
    /// Insert the value after the matched object.
    InsertAfter,
    /// Insert the value first.
    InsertFirst,
    /// Replace the object with the value.
    Replace,
    /// Merge, replacing lists rather than appending to them.
    MergeAndReplaceList,
}

/// Istio `EnvoyFilter.Patch.FilterClass`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FilterClass {
    /// No class: the operation decides.
    Unspecified,
    /// After Istio's authentication filters.
    Authn,
    /// After Istio's authorization filters.
    Authz,
    /// Before Istio's stats filters.
    Stats,
}

/// `{type: object, x-kubernetes-preserve-unknown-fields: true}`, as Istio's
/// CRD has a `google.protobuf.Struct`.
pub(crate) fn preserved_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}
