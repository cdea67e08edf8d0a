//! One Kubernetes-style document (YAML or JSON) into a typed [`Object`].
//!
//! Reads the kinds the control plane consumes: `v1` `Namespace`, `Pod`,
//! `Service`, `ConfigMap` (the mesh config) and `Secret` (gateway certificates), `discovery.k8s.io/v1` `EndpointSlice`, the Istio
//! networking kinds and `security.istio.io` PeerAuthentication,
//! RequestAuthentication and AuthorizationPolicy, and `telemetry.istio.io`
//! Telemetry. Errors name the kind, the object and the field path
//! (`spec.http[0].route[1].weight`), so one bad document can be reported and
//! skipped while the rest of the mesh applies.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::{
    AuthorizationPolicy, DestinationRule, EnvoyFilter, Gateway, NETWORKING_GROUP,
    NETWORKING_VERSIONS, PeerAuthentication, RequestAuthentication, SECURITY_GROUP,
    SECURITY_VERSIONS, ServiceEntry, Sidecar, TELEMETRY_GROUP, TELEMETRY_VERSIONS, Telemetry,
    VirtualService, WasmPlugin, WorkloadEntry, WorkloadGroup, gateway_api,
};

/// What the mesh model reads of a `v1` `Pod`: its metadata (labels give
/// subsets and locality), `spec.serviceAccountName` (the workload's SPIFFE
/// identity) and `status.podIP` (endpoints without a `targetRef` are matched
/// by address). A Pod is parsed, and so checked, in full, then cut down to
/// this: a `k8s_openapi` Pod is 2.4 KiB before any of its contents, this is
/// ~0.4 KiB, and a mesh keeps one per workload.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodInfo {
    /// `metadata`.
    pub metadata: ObjectMeta,
    /// `spec.serviceAccountName`.
    pub service_account_name: Option<String>,
    /// `status.podIP`.
    pub pod_ip: Option<String>,
    /// `spec.nodeName`: the Node whose topology labels the pod's endpoints
    /// carry.
    pub node_name: Option<String>,
    /// Whether it runs Istio's proxy: a container (or a native sidecar,
    /// an init container) named `istio-proxy`.
    pub proxy: bool,
    /// `spec.hostNetwork`: such a pod is never injected.
    pub host_network: bool,
    /// Whether the pod, or one of its containers other than the proxy's,
    /// runs as UID 1337, the proxy's ([`runs_as_proxy_uid`]).
    pub runs_as_proxy_uid: bool,
    /// The containers' named TCP ports, name -> `containerPort` (the first
    /// of a name wins, as in Kubernetes): where a ServiceEntry that selects
    /// the pod reaches its port of that name (Istio's `getPortMap`).
    pub ports: BTreeMap<String, u32>,
    /// Ready to be a ServiceEntry's endpoint: not being deleted, not
    /// `Succeeded` or `Failed`, and no `Ready` condition other than
    /// `True` (a pod written without conditions counts as ready).
    pub ready: bool,
}

/// What the mesh reads of a Node: its labels and its `ExternalIP`
/// addresses (a NodePort network gateway's addresses, as Istio's). A Node is
/// parsed in full, then cut down to this.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeInfo {
    /// `metadata`.
    pub metadata: ObjectMeta,
    /// `status.addresses` of type `ExternalIP`.
    pub external_ips: Vec<String>,
}

impl From<k8s_openapi::api::core::v1::Node> for NodeInfo {
    fn from(node: k8s_openapi::api::core::v1::Node) -> NodeInfo {
        NodeInfo {
            external_ips: node
                .status
                .iter()
                .flat_map(|s| s.addresses.iter().flatten())
                .filter(|a| a.type_ == "ExternalIP")
                .map(|a| a.address.clone())
                .collect(),
            metadata: node.metadata,
        }
    }
}

impl From<Pod> for PodInfo {
    fn from(pod: Pod) -> PodInfo {
        let mut ports = BTreeMap::new();
        let containers = pod.spec.iter().flat_map(|s| &s.containers);
        for port in containers.flat_map(|c| c.ports.iter().flatten()) {
            let tcp = port.protocol.as_deref().is_none_or(|p| p == "TCP");
            if let (Some(name), true, Ok(number)) =
                (&port.name, tcp, u32::try_from(port.container_port))
                && !name.is_empty()
            {
                ports.entry(name.clone()).or_insert(number);
            }
        }
        let status = pod.status.as_ref();
        let finished = status
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        let unready = status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status != "True");
        PodInfo {
            ready: pod.metadata.deletion_timestamp.is_none() && !finished && !unready,
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            proxy: pod.spec.as_ref().is_some_and(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
                    .any(|c| c.name == "istio-proxy")
            }),
            host_network: pod
                .spec
                .as_ref()
                .is_some_and(|s| s.host_network == Some(true)),
            runs_as_proxy_uid: pod.spec.as_ref().is_some_and(runs_as_proxy_uid),
            service_account_name: pod.spec.and_then(|s| s.service_account_name),
            pod_ip: pod.status.and_then(|s| s.pod_ip),
            metadata: pod.metadata,
            ports,
        }
    }
}

/// The UID Istio's proxy runs as; its traffic is never captured.
pub const PROXY_UID: i64 = 1337;

/// Whether `spec` runs an application as [`PROXY_UID`]: the pod's
/// `securityContext.runAsUser`, or a container's other than `istio-proxy`
/// and `istio-operator` (Istio's `ApplicationUIDAnalyzer`, IST0144): its
/// outbound traffic would bypass the sidecar.
pub fn runs_as_proxy_uid(spec: &k8s_openapi::api::core::v1::PodSpec) -> bool {
    let pod = spec.security_context.as_ref().and_then(|s| s.run_as_user) == Some(PROXY_UID);
    pod || spec.containers.iter().any(|c| {
        c.name != "istio-proxy"
            && c.name != "istio-operator"
            && c.security_context.as_ref().and_then(|s| s.run_as_user) == Some(PROXY_UID)
    })
}

/// A parsed, typed object of a kind the control plane reads.
#[derive(Clone, Debug)]
#[allow(missing_docs)]
pub enum Object {
    Namespace(Box<Namespace>),
    /// What the mesh reads of a Node (cluster-scoped).
    Node(Box<NodeInfo>),
    /// What the mesh reads of a Pod (the rest is checked, then dropped).
    Pod(Box<PodInfo>),
    ConfigMap(Box<ConfigMap>),
    Secret(Box<Secret>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    VirtualService(Box<VirtualService>),
    DestinationRule(Box<DestinationRule>),
    ServiceEntry(Box<ServiceEntry>),
    WorkloadEntry(Box<WorkloadEntry>),
    WorkloadGroup(Box<WorkloadGroup>),
    Gateway(Box<Gateway>),
    Sidecar(Box<Sidecar>),
    /// `networking.istio.io/v1alpha3` EnvoyFilter.
    EnvoyFilter(Box<EnvoyFilter>),
    PeerAuthentication(Box<PeerAuthentication>),
    AuthorizationPolicy(Box<AuthorizationPolicy>),
    RequestAuthentication(Box<RequestAuthentication>),
    Telemetry(Box<Telemetry>),
    /// `extensions.istio.io/v1alpha1` WasmPlugin.
    WasmPlugin(Box<WasmPlugin>),
    /// Gateway API `GatewayClass` (cluster-scoped).
    GatewayClass(Box<crate::gateway_api::GatewayClass>),
    /// Gateway API `Gateway` (`gateway.networking.k8s.io`).
    KubeGateway(Box<crate::gateway_api::KubeGateway>),
    /// Gateway API `HTTPRoute`.
    HttpRoute(Box<crate::gateway_api::HttpRoute>),
    /// Gateway API `GRPCRoute`.
    GrpcRoute(Box<crate::gateway_api::GrpcRoute>),
    /// Gateway API `TCPRoute`.
    TcpRoute(Box<crate::gateway_api::TcpRoute>),
    /// Gateway API `TLSRoute`.
    TlsRoute(Box<crate::gateway_api::TlsRoute>),
    /// Gateway API `BackendTLSPolicy`.
    BackendTlsPolicy(Box<crate::gateway_api::BackendTlsPolicy>),
    /// Gateway API `XBackendTrafficPolicy` (experimental).
    BackendTrafficPolicy(Box<crate::gateway_api::BackendTrafficPolicy>),
    /// Gateway API `ListenerSet`.
    ListenerSet(Box<crate::gateway_api::ListenerSet>),
    /// Gateway API `XListenerSet` (`gateway.networking.x-k8s.io/v1alpha1`,
    /// the experimental ListenerSet before Gateway API 1.5).
    XListenerSet(Box<crate::gateway_api::ListenerSet>),
    /// Gateway API `ReferenceGrant`.
    ReferenceGrant(Box<crate::gateway_api::ReferenceGrant>),
    /// Kubernetes `networking.k8s.io/v1` Ingress (Istio's Kubernetes
    /// Ingress support).
    Ingress(Box<Ingress>),
    /// Kubernetes `networking.k8s.io/v1` IngressClass (cluster-scoped).
    IngressClass(Box<IngressClass>),
}

impl Object {
    /// The object's kind, as in its `kind:` field.
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Namespace(_) => "Namespace",
            Object::Node(_) => "Node",
            Object::Pod(_) => "Pod",
            Object::ConfigMap(_) => "ConfigMap",
            Object::Secret(_) => "Secret",
            Object::Service(_) => "Service",
            Object::EndpointSlice(_) => "EndpointSlice",
            Object::VirtualService(_) => "VirtualService",
            Object::DestinationRule(_) => "DestinationRule",
            Object::ServiceEntry(_) => "ServiceEntry",
            Object::WorkloadEntry(_) => "WorkloadEntry",
            Object::WorkloadGroup(_) => "WorkloadGroup",
            Object::Gateway(_) => "Gateway",
            Object::Sidecar(_) => "Sidecar",
            Object::EnvoyFilter(_) => "EnvoyFilter",
            Object::PeerAuthentication(_) => "PeerAuthentication",
            Object::AuthorizationPolicy(_) => "AuthorizationPolicy",
            Object::RequestAuthentication(_) => "RequestAuthentication",
            Object::Telemetry(_) => "Telemetry",
            Object::WasmPlugin(_) => "WasmPlugin",
            Object::GatewayClass(_) => "GatewayClass",
            Object::KubeGateway(_) => "Gateway",
            Object::HttpRoute(_) => "HTTPRoute",
            Object::GrpcRoute(_) => "GRPCRoute",
            Object::TcpRoute(_) => "TCPRoute",
            Object::TlsRoute(_) => "TLSRoute",
            Object::BackendTlsPolicy(_) => "BackendTLSPolicy",
            Object::BackendTrafficPolicy(_) => "XBackendTrafficPolicy",
            Object::ListenerSet(_) => "ListenerSet",
            Object::XListenerSet(_) => "XListenerSet",
            Object::ReferenceGrant(_) => "ReferenceGrant",
            Object::Ingress(_) => "Ingress",
            Object::IngressClass(_) => "IngressClass",
        }
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::ConfigMap(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::VirtualService(o) => &o.metadata,
            Object::DestinationRule(o) => &o.metadata,
            Object::ServiceEntry(o) => &o.metadata,
            Object::WorkloadEntry(o) => &o.metadata,
            Object::WorkloadGroup(o) => &o.metadata,
            Object::Gateway(o) => &o.metadata,
            Object::Sidecar(o) => &o.metadata,
            Object::EnvoyFilter(o) => &o.metadata,
            Object::PeerAuthentication(o) => &o.metadata,
            Object::AuthorizationPolicy(o) => &o.metadata,
            Object::RequestAuthentication(o) => &o.metadata,
            Object::Telemetry(o) => &o.metadata,
            Object::WasmPlugin(o) => &o.metadata,
            Object::GatewayClass(o) => &o.metadata,
            Object::KubeGateway(o) => &o.metadata,
            Object::HttpRoute(o) => &o.metadata,
            Object::GrpcRoute(o) => &o.metadata,
            Object::TcpRoute(o) => &o.metadata,
            Object::TlsRoute(o) => &o.metadata,
            Object::BackendTlsPolicy(o) => &o.metadata,
            Object::BackendTrafficPolicy(o) => &o.metadata,
            Object::ListenerSet(o) | Object::XListenerSet(o) => &o.metadata,
            Object::ReferenceGrant(o) => &o.metadata,
            Object::Ingress(o) => &o.metadata,
            Object::IngressClass(o) => &o.metadata,
        }
    }

    /// Mutable metadata (e.g. to default the namespace).
    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Namespace(o) => &mut o.metadata,
            Object::Node(o) => &mut o.metadata,
            Object::Pod(o) => &mut o.metadata,
            Object::ConfigMap(o) => &mut o.metadata,
            Object::Secret(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::EndpointSlice(o) => &mut o.metadata,
            Object::VirtualService(o) => &mut o.metadata,
            Object::DestinationRule(o) => &mut o.metadata,
            Object::ServiceEntry(o) => &mut o.metadata,
            Object::WorkloadEntry(o) => &mut o.metadata,
            Object::WorkloadGroup(o) => &mut o.metadata,
            Object::Gateway(o) => &mut o.metadata,
            Object::Sidecar(o) => &mut o.metadata,
            Object::EnvoyFilter(o) => &mut o.metadata,
            Object::PeerAuthentication(o) => &mut o.metadata,
            Object::AuthorizationPolicy(o) => &mut o.metadata,
            Object::RequestAuthentication(o) => &mut o.metadata,
            Object::Telemetry(o) => &mut o.metadata,
            Object::WasmPlugin(o) => &mut o.metadata,
            Object::GatewayClass(o) => &mut o.metadata,
            Object::KubeGateway(o) => &mut o.metadata,
            Object::HttpRoute(o) => &mut o.metadata,
            Object::GrpcRoute(o) => &mut o.metadata,
            Object::TcpRoute(o) => &mut o.metadata,
            Object::TlsRoute(o) => &mut o.metadata,
            Object::BackendTlsPolicy(o) => &mut o.metadata,
            Object::BackendTrafficPolicy(o) => &mut o.metadata,
            Object::ListenerSet(o) | Object::XListenerSet(o) => &mut o.metadata,
            Object::ReferenceGrant(o) => &mut o.metadata,
            Object::Ingress(o) => &mut o.metadata,
            Object::IngressClass(o) => &mut o.metadata,
        }
    }
}

/// Why a document could not be read. `Display` gives a one-line message
/// naming kind, object, field and reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    /// Not valid YAML/JSON at all.
    #[error("invalid YAML: {0}")]
    Syntax(String),
    /// `apiVersion`/`kind` missing or not strings.
    #[error("missing or invalid field `{field}`")]
    MissingTypeMeta {
        /// `apiVersion` or `kind`.
        field: &'static str,
    },
    /// A kind this control plane does not read (reported, not fatal).
    #[error("{api_version} {kind} {name} is not a kind this control plane reads")]
    UnsupportedKind {
        /// `apiVersion` as written.
        api_version: String,
        /// `kind` as written.
        kind: String,
        /// `metadata.name`.
        name: String,
    },
    /// The object does not fit its kind's schema.
    #[error("{kind} {name}: field `{field}`: {reason}")]
    InvalidField {
        /// The object's kind.
        kind: String,
        /// `namespace/name` (or just `name`).
        name: String,
        /// Path of the offending field, e.g. `spec.http[0].route[0].weight`.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

impl ParseError {
    /// True for kinds that are merely not read (e.g. `Deployment` in Bookinfo's
    /// manifest), as opposed to broken documents.
    pub fn is_unsupported_kind(&self) -> bool {
        matches!(self, ParseError::UnsupportedKind { .. })
    }
}

/// Splits a multi-document YAML (or a JSON) text into documents as
/// `serde_json::Value`s, skipping empty ones. Each entry is the document's
/// 0-based index and its value or a syntax error.
pub fn split_documents(text: &str) -> Vec<(usize, Result<serde_json::Value, ParseError>)> {
    let mut out = Vec::new();
    for (index, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        match serde_json::Value::deserialize(doc) {
            Ok(serde_json::Value::Null) => {}
            Ok(value) => out.push((index, Ok(value))),
            Err(e) => {
                out.push((index, Err(ParseError::Syntax(e.to_string()))));
                // After a syntax error the YAML stream cannot be resynchronised.
                break;
            }
        }
    }
    out
}

/// Parses one document value into typed objects. A `kind: List` yields its
/// items; every other kind yields one object. Namespaced objects without
/// `metadata.namespace` are put in `default_namespace`, as `kubectl apply`
/// does.
///
/// # Errors
/// [`ParseError`] naming the kind, object (`namespace/name`) and field for
/// anything that does not fit the schema, including unknown fields.
pub fn parse_value(
    value: serde_json::Value,
    default_namespace: &str,
) -> Vec<Result<Object, ParseError>> {
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    if kind == "List" {
        return match value.get("items").and_then(|i| i.as_array()) {
            Some(items) => items
                .iter()
                .cloned()
                .flat_map(|item| parse_value(item, default_namespace))
                .collect(),
            None => vec![Err(ParseError::InvalidField {
                kind: "List".into(),
                name: String::new(),
                field: "items".into(),
                reason: "expected a list of objects".into(),
            })],
        };
    }
    vec![parse_object(value, default_namespace)]
}

fn parse_object(value: serde_json::Value, default_namespace: &str) -> Result<Object, ParseError> {
    let api_version = value
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .ok_or(ParseError::MissingTypeMeta {
            field: "apiVersion",
        })?
        .to_owned();
    let kind = value
        .get("kind")
        .and_then(|v| v.as_str())
        .ok_or(ParseError::MissingTypeMeta { field: "kind" })?
        .to_owned();
    let meta = value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("")
        .to_owned();
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(|n| n.as_str())
        .unwrap_or(default_namespace)
        .to_owned();
    let cluster_scoped = ["Namespace", "GatewayClass", "IngressClass"];
    let display_name = if cluster_scoped.contains(&kind.as_str()) {
        name.clone()
    } else {
        format!("{namespace}/{name}")
    };
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version.as_str()),
    };
    let ctx = Ctx {
        kind: &kind,
        name: &display_name,
    };
    let mut object = match (group, version, kind.as_str()) {
        ("", "v1", "Namespace") => Object::Namespace(ctx.parse(value)?),
        ("", "v1", "Node") => Object::Node(Box::new(NodeInfo::from(
            *ctx.parse::<k8s_openapi::api::core::v1::Node>(value)?,
        ))),
        ("", "v1", "Pod") => Object::Pod(Box::new(PodInfo::from(*ctx.parse::<Pod>(value)?))),
        ("", "v1", "ConfigMap") => Object::ConfigMap(ctx.parse(value)?),
        ("", "v1", "Secret") => Object::Secret(ctx.parse(value)?),
        ("", "v1", "Service") => Object::Service(ctx.parse(value)?),
        ("discovery.k8s.io", "v1", "EndpointSlice") => Object::EndpointSlice(ctx.parse(value)?),
        ("networking.k8s.io", "v1", "Ingress") => Object::Ingress(ctx.parse(value)?),
        ("networking.k8s.io", "v1", "IngressClass") => Object::IngressClass(ctx.parse(value)?),
        (SECURITY_GROUP, v, "PeerAuthentication") if SECURITY_VERSIONS.contains(&v) => {
            Object::PeerAuthentication(ctx.parse_istio(value)?)
        }
        (SECURITY_GROUP, v, "AuthorizationPolicy") if SECURITY_VERSIONS.contains(&v) => {
            Object::AuthorizationPolicy(ctx.parse_istio(value)?)
        }
        (SECURITY_GROUP, v, "RequestAuthentication") if SECURITY_VERSIONS.contains(&v) => {
            Object::RequestAuthentication(ctx.parse_istio(value)?)
        }
        (TELEMETRY_GROUP, v, "Telemetry") if TELEMETRY_VERSIONS.contains(&v) => {
            Object::Telemetry(ctx.parse_istio(value)?)
        }
        (crate::wasm_plugin::GROUP, "v1alpha1", "WasmPlugin") => {
            Object::WasmPlugin(ctx.parse_istio(value)?)
        }
        (gateway_api::GROUP, v, "TCPRoute") if gateway_api::ALPHA_VERSIONS.contains(&v) => {
            Object::TcpRoute(ctx.parse_istio(value)?)
        }
        (gateway_api::GROUP, v, "TLSRoute") if gateway_api::ALPHA_VERSIONS.contains(&v) => {
            Object::TlsRoute(ctx.parse_istio(value)?)
        }
        (gateway_api::GROUP, v, "BackendTLSPolicy")
            if gateway_api::POLICY_VERSIONS.contains(&v) =>
        {
            Object::BackendTlsPolicy(ctx.parse_istio(value)?)
        }
        (gateway_api::X_GROUP, "v1alpha1", "XListenerSet") => {
            Object::XListenerSet(ctx.parse_istio(value)?)
        }
        (gateway_api::X_GROUP, "v1alpha1", "XBackendTrafficPolicy") => {
            Object::BackendTrafficPolicy(ctx.parse_istio(value)?)
        }
        (gateway_api::GROUP, v, k) if gateway_api::VERSIONS.contains(&v) => match k {
            "GatewayClass" => Object::GatewayClass(ctx.parse_istio(value)?),
            "Gateway" => Object::KubeGateway(ctx.parse_istio(value)?),
            "HTTPRoute" => Object::HttpRoute(ctx.parse_istio(value)?),
            "GRPCRoute" => Object::GrpcRoute(ctx.parse_istio(value)?),
            "ReferenceGrant" => Object::ReferenceGrant(ctx.parse_istio(value)?),
            "ListenerSet" if v == "v1" => Object::ListenerSet(ctx.parse_istio(value)?),
            _ => return Err(unsupported(api_version, kind, display_name)),
        },
        // Istio serves EnvoyFilter as `v1alpha3` only.
        (NETWORKING_GROUP, "v1alpha3", "EnvoyFilter") => {
            Object::EnvoyFilter(ctx.parse_istio(value)?)
        }
        (NETWORKING_GROUP, v, k) if NETWORKING_VERSIONS.contains(&v) => match k {
            "VirtualService" => Object::VirtualService(ctx.parse_istio(value)?),
            "DestinationRule" => Object::DestinationRule(ctx.parse_istio(value)?),
            "ServiceEntry" => Object::ServiceEntry(ctx.parse_istio(value)?),
            "WorkloadEntry" => Object::WorkloadEntry(ctx.parse_istio(value)?),
            "WorkloadGroup" => Object::WorkloadGroup(ctx.parse_istio(value)?),
            "Gateway" => Object::Gateway(ctx.parse_istio(value)?),
            "Sidecar" => Object::Sidecar(ctx.parse_istio(value)?),
            _ => return Err(unsupported(api_version, kind, display_name)),
        },
        _ => return Err(unsupported(api_version, kind, display_name)),
    };
    if !matches!(
        object,
        Object::Namespace(_) | Object::Node(_) | Object::GatewayClass(_) | Object::IngressClass(_)
    ) && object.metadata().namespace.is_none()
    {
        object.metadata_mut().namespace = Some(namespace);
    }
    if object.metadata().name.as_deref().unwrap_or("").is_empty() {
        return Err(ParseError::InvalidField {
            kind,
            name: display_name,
            field: "metadata.name".into(),
            reason: "required".into(),
        });
    }
    Ok(object)
}

fn unsupported(api_version: String, kind: String, name: String) -> ParseError {
    ParseError::UnsupportedKind {
        api_version,
        kind,
        name,
    }
}

struct Ctx<'a> {
    kind: &'a str,
    name: &'a str,
}

impl Ctx<'_> {
    fn parse<T: DeserializeOwned>(&self, value: serde_json::Value) -> Result<Box<T>, ParseError> {
        serde_path_to_error::deserialize(value)
            .map(Box::new)
            .map_err(|e| self.field_error(e))
    }

    /// Istio kinds: the envelope itself denies unknown top-level fields,
    /// and `status` (written by the control plane) is accepted and dropped.
    fn parse_istio<S, T>(&self, value: serde_json::Value) -> Result<Box<T>, ParseError>
    where
        S: DeserializeOwned,
        T: IstioKind<Spec = S>,
    {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct Envelope<S> {
            #[allow(dead_code)]
            api_version: String,
            #[allow(dead_code)]
            kind: String,
            #[serde(default)]
            metadata: ObjectMeta,
            spec: S,
            #[serde(default)]
            status: Option<serde_json::Value>,
        }
        let env: Envelope<S> =
            serde_path_to_error::deserialize(value).map_err(|e| self.field_error(e))?;
        Ok(Box::new(T::from_parts(env.metadata, env.spec, env.status)))
    }

    fn field_error(&self, e: serde_path_to_error::Error<serde_json::Error>) -> ParseError {
        let field = e.path().to_string();
        ParseError::InvalidField {
            kind: self.kind.to_owned(),
            name: self.name.to_owned(),
            field: if field == "." {
                "(top level)".into()
            } else {
                field
            },
            reason: e.into_inner().to_string(),
        }
    }
}

/// The Istio kinds, built from metadata, spec and (kept only where it is
/// read) status.
trait IstioKind {
    type Spec;
    fn from_parts(
        metadata: ObjectMeta,
        spec: Self::Spec,
        status: Option<serde_json::Value>,
    ) -> Self;
}

macro_rules! istio_kind {
    ($($kind:ident => $spec:ident),*) => {$(
        impl IstioKind for $kind {
            type Spec = crate::$spec;
            fn from_parts(metadata: ObjectMeta, spec: Self::Spec, _: Option<serde_json::Value>) -> Self {
                $kind { metadata, spec }
            }
        }
    )*};
}

impl IstioKind for WorkloadEntry {
    type Spec = crate::WorkloadEntrySpec;
    /// The status is read leniently: one that does not parse counts as
    /// none (a health-checked entry is then unhealthy, as in Istio).
    fn from_parts(
        metadata: ObjectMeta,
        spec: Self::Spec,
        status: Option<serde_json::Value>,
    ) -> Self {
        let status = status.and_then(|s| serde_json::from_value(s).ok());
        WorkloadEntry {
            metadata,
            spec,
            status,
        }
    }
}

istio_kind!(
    VirtualService => VirtualServiceSpec,
    DestinationRule => DestinationRuleSpec,
    ServiceEntry => ServiceEntrySpec,
    WorkloadGroup => WorkloadGroupSpec,
    Gateway => GatewaySpec,
    Sidecar => SidecarSpec,
    EnvoyFilter => EnvoyFilterSpec,
    PeerAuthentication => PeerAuthenticationSpec,
    AuthorizationPolicy => AuthorizationPolicySpec,
    RequestAuthentication => RequestAuthenticationSpec,
    Telemetry => TelemetrySpec,
    WasmPlugin => WasmPluginSpec
);

macro_rules! gateway_api_kind {
    ($($kind:ident => $spec:ident),*) => {$(
        impl IstioKind for gateway_api::$kind {
            type Spec = gateway_api::$spec;
            fn from_parts(metadata: ObjectMeta, spec: Self::Spec, _: Option<serde_json::Value>) -> Self {
                gateway_api::$kind { metadata, spec }
            }
        }
    )*};
}
gateway_api_kind!(
    GatewayClass => GatewayClassSpec,
    KubeGateway => KubeGatewaySpec,
    HttpRoute => HttpRouteSpec,
    GrpcRoute => GrpcRouteSpec,
    TcpRoute => TcpRouteSpec,
    TlsRoute => TlsRouteSpec,
    BackendTlsPolicy => BackendTlsPolicySpec,
    BackendTrafficPolicy => BackendTrafficPolicySpec,
    ListenerSet => ListenerSetSpec,
    ReferenceGrant => ReferenceGrantSpec
);

#[cfg(test)]
mod tests {
    use super::*;

    fn one(yaml: &str) -> Result<Object, ParseError> {
        let mut docs = split_documents(yaml);
        assert_eq!(docs.len(), 1);
        let (_, value) = docs.remove(0);
        parse_value(value?, "default").remove(0)
    }

    #[test]
    fn pod_is_checked_in_full_and_kept_in_part() {
        let pod = one(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {app: a}}\n\
             spec: {serviceAccountName: sa, containers: [{name: c, image: i}]}\n\
             status: {podIP: 10.0.0.1, phase: Running}\n",
        )
        .unwrap();
        let Object::Pod(pod) = pod else {
            panic!("{pod:?}")
        };
        assert_eq!(pod.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(pod.metadata.labels.as_ref().unwrap()["app"], "a");
        assert_eq!(pod.service_account_name.as_deref(), Some("sa"));
        assert_eq!(pod.pod_ip.as_deref(), Some("10.0.0.1"));
        assert!(pod.ready && pod.ports.is_empty());
        // Fields that are not kept are still checked against the Pod schema.
        let err = one(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: 5, image: [i]}]}\n",
        )
        .unwrap_err();
        let ParseError::InvalidField { field, .. } = &err else {
            panic!("{err}")
        };
        assert!(field.starts_with("spec.containers[0]"), "{err}");
    }

    /// What a ServiceEntry's `workloadSelector` reads of a pod: its named
    /// TCP container ports (the first of a name) and whether it is ready.
    #[test]
    fn pod_ports_and_readiness() {
        let pod = |status: &str| {
            let text = format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\n\
                 spec:\n  containers:\n\
                 \x20 - {{name: a, image: i, ports: [{{name: http, containerPort: 8080}}, {{containerPort: 9000}}, {{name: dns, containerPort: 53, protocol: UDP}}]}}\n\
                 \x20 - {{name: b, image: i, ports: [{{name: http, containerPort: 8081}}, {{name: grpc, containerPort: 7070, protocol: TCP}}]}}\n\
                 status: {status}\n"
            );
            match one(&text).unwrap() {
                Object::Pod(pod) => pod,
                other => panic!("{other:?}"),
            }
        };
        let running =
            pod("{podIP: 10.0.0.1, phase: Running, conditions: [{type: Ready, status: 'True'}]}");
        assert!(running.ready);
        let ports: Vec<(&str, u32)> = running
            .ports
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        assert_eq!(ports, [("grpc", 7070), ("http", 8080)]);
        assert!(!pod("{conditions: [{type: Ready, status: 'False'}]}").ready);
        assert!(!pod("{phase: Succeeded}").ready);
        assert!(pod("{conditions: [{type: PodScheduled, status: 'False'}]}").ready);
    }

    #[test]
    fn workload_entry_is_read() {
        let we = one(
            "apiVersion: networking.istio.io/v1beta1\nkind: WorkloadEntry\nmetadata: {name: vm, namespace: shop}\n\
             spec: {address: 10.1.0.1, labels: {app: ratings}, ports: {http: 9080}, serviceAccount: ratings}\n",
        )
        .unwrap();
        let Object::WorkloadEntry(we) = we else {
            panic!("{we:?}")
        };
        assert_eq!(we.spec.address.as_deref(), Some("10.1.0.1"));
        assert_eq!(we.spec.ports["http"], 9080);
        let typo = one(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: vm}\nspec: {adress: 10.1.0.1}\n",
        )
        .unwrap_err();
        assert!(typo.to_string().contains("adress"), "{typo}");
    }

    #[test]
    fn unknown_field_is_named() {
        let err = one(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: default}\n\
             spec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n      wieght: 3\n",
        )
        .unwrap_err();
        let ParseError::InvalidField {
            field,
            reason,
            name,
            ..
        } = &err
        else {
            panic!("{err}")
        };
        assert_eq!(field, "spec.http[0].route[0].wieght");
        assert!(reason.contains("unknown field `wieght`"), "{reason}");
        assert_eq!(name, "default/r");
    }

    #[test]
    fn weight_as_word_is_named() {
        let err = one(
            "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: r}\n\
             spec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n      weight: eighty\n",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("spec.http[0].route[0].weight"),
            "{err}"
        );
    }

    #[test]
    fn all_networking_versions_accepted() {
        for v in NETWORKING_VERSIONS {
            let obj = one(&format!(
                "apiVersion: networking.istio.io/{v}\nkind: DestinationRule\nmetadata: {{name: d}}\nspec: {{host: reviews}}\n"
            ))
            .unwrap();
            assert_eq!(obj.kind(), "DestinationRule");
        }
    }

    #[test]
    fn durations_and_percentages() {
        let Object::VirtualService(vs) = one(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\n\
             spec:\n  hosts: [ratings]\n  http:\n  - fault:\n      delay: {fixedDelay: 7s, percentage: {value: 10.5}}\n    timeout: 100ms\n    route:\n    - destination: {host: ratings, subset: v1}\n",
        )
        .unwrap() else {
            panic!()
        };
        let http = &vs.spec.http[0];
        assert_eq!(http.timeout.unwrap().as_std().as_millis(), 100);
        let delay = http.fault.as_ref().unwrap().delay.as_ref().unwrap();
        assert_eq!(delay.fixed_delay.unwrap().as_std().as_secs(), 7);
        assert_eq!(delay.percentage.unwrap().value, 10.5);
    }

    #[test]
    fn peer_authentication_is_read_with_port_level_modes() {
        let Object::PeerAuthentication(pa) = one(
            "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: shop}\n\
             spec:\n  selector: {matchLabels: {app: db}}\n  mtls: {mode: STRICT}\n  portLevelMtls:\n    8080: {mode: DISABLE}\n",
        )
        .unwrap() else {
            panic!()
        };
        use crate::peer_authentication::MtlsMode;
        assert_eq!(pa.spec.mtls.unwrap().mode, Some(MtlsMode::Strict));
        assert_eq!(pa.spec.port_level_mtls[&8080].mode, Some(MtlsMode::Disable));
        let err = one(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec: {mtls: {mode: STRICTEST}}\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("spec.mtls.mode"), "{err}");
    }

    #[test]
    fn unsupported_kind_is_distinguished() {
        let err = one("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n").unwrap_err();
        assert!(err.is_unsupported_kind());
    }
}
