//! The Kubernetes source: one kube-rs watcher per collection the model reads
//! (list, then watch from the list's `resourceVersion`; bookmarks; an
//! immediate relist after `410 Gone`; exponential backoff and retry on every
//! other error), all feeding
//! one [`Store`] that yields the same [`Loaded`] the folder source gives, so
//! there is one parse, validation and translation path for both.
//!
//! Objects are read as untyped JSON and parsed by [`crds::document`], so an
//! object the API server accepted but this daemon cannot use is reported
//! with its namespace/name and field, and skipped, while everything else
//! keeps working (a typed watcher would fail the whole list instead).
//!
//! Before parsing, each object is trimmed to what the model reads (no
//! `managedFields`, `resourceVersion`, last-applied annotation, Istio
//! `status` but a WorkloadEntry's `Healthy` condition, of a Pod's status
//! only its IPs and phase, of a Node only its
//! labels and external IPs). The trimmed
//! object's fingerprint decides whether an update changed anything: a
//! status-only or otherwise irrelevant update triggers no push.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use crds::{Object, ParseError};
use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::watcher as watch_stream;
use kube::runtime::watcher::{self, Event};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Loaded;

/// Where the Kubernetes source connects, and what it reads.
#[derive(Clone, Debug)]
pub struct KubeSource {
    /// The API server and credentials: in cluster (service account), or
    /// from `KUBECONFIG` / `--kubeconfig` (see [`KubeSource::infer`]).
    pub config: kube::Config,
    /// The daemon's own namespace (Istio `POD_NAMESPACE`, default
    /// `istio-system`), where the leader election Lease lives (the mesh
    /// config is the ConfigMap `istio` of `istio-system`).
    pub namespace: String,
    /// This replica's identity in leader election (see [`crate::leader`]);
    /// `None` takes no part (the replica never leads).
    pub leader_identity: Option<String>,
    /// How often the leader applies managed Gateways' deployments again
    /// (bringing back what was deleted or edited by hand) and retries
    /// failed writes (default [`crate::gateway_controller::RECHECK`]).
    pub gateway_recheck: std::time::Duration,
    /// How often, at most, the leader analyses the config and writes each
    /// Istio object's `status.validationMessages` (Istio's
    /// `PILOT_ENABLE_ANALYSIS`; see [`crate::analysis_status`]); `None`
    /// (the default, as Istio's) writes none.
    pub analysis_interval: Option<std::time::Duration>,
}

impl KubeSource {
    /// The client configuration as kubectl finds it: `kubeconfig` if given,
    /// else `KUBECONFIG` / `~/.kube/config`, else the in-cluster service
    /// account.
    ///
    /// # Errors
    /// An unreadable or invalid kubeconfig, or no configuration at all.
    pub async fn infer(kubeconfig: Option<&Path>, namespace: String) -> anyhow::Result<Self> {
        let config = match kubeconfig {
            Some(path) => {
                let file = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| anyhow::anyhow!("kubeconfig {}: {e}", path.display()))?;
                kube::Config::from_custom_kubeconfig(file, &Default::default())
                    .await
                    .map_err(|e| anyhow::anyhow!("kubeconfig {}: {e}", path.display()))?
            }
            None => kube::Config::infer()
                .await
                .map_err(|e| anyhow::anyhow!("no Kubernetes configuration: {e}"))?,
        };
        Ok(KubeSource {
            config,
            namespace,
            leader_identity: Some(crate::leader::identity()),
            gateway_recheck: crate::gateway_controller::RECHECK,
            analysis_interval: None,
        })
    }
}

/// One watched collection: a resource, optionally limited to a namespace
/// and by a field selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watched {
    /// Group, version, kind and plural.
    pub resource: ApiResource,
    /// Only this namespace (`None`: all namespaces).
    pub namespace: Option<String>,
    /// A `fieldSelector`, as the API server evaluates it.
    pub field_selector: Option<String>,
    /// A kind whose CRD may not be installed (the Gateway API's): a `404`
    /// on its list counts as an empty collection (readiness does not wait
    /// for it), and the list is retried (up to every 30 s), so the kind is
    /// read once its CRD is installed.
    pub optional: bool,
    /// Other versions of the same kind, tried in turn when one is not
    /// served (`404`): TLSRoute is `v1` since Gateway API 1.5 (its standard
    /// channel serves nothing else), `v1alpha2` before.
    pub fallbacks: Vec<ApiResource>,
}

impl Watched {
    fn new(api_version: &str, kind: &str, plural: &str) -> Watched {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        Watched {
            resource: ApiResource {
                group: group.into(),
                version: version.into(),
                api_version: api_version.into(),
                kind: kind.into(),
                plural: plural.into(),
            },
            namespace: None,
            field_selector: None,
            optional: false,
            fallbacks: Vec::new(),
        }
    }

    /// As [`Watched::new`], for a kind whose CRD may be absent.
    fn optional(api_version: &str, kind: &str, plural: &str) -> Watched {
        Watched {
            optional: true,
            ..Watched::new(api_version, kind, plural)
        }
    }

    /// As [`Watched::optional`], served at the first of `versions` (of
    /// `group`) the API server has.
    fn optional_versions(group: &str, versions: &[&str], kind: &str, plural: &str) -> Watched {
        let at = |v: &str| Watched::new(&format!("{group}/{v}"), kind, plural).resource;
        Watched {
            fallbacks: versions.iter().skip(1).map(|v| at(v)).collect(),
            ..Watched::optional(&format!("{group}/{}", versions[0]), kind, plural)
        }
    }

    /// The collection's URL path, e.g. `/apis/networking.istio.io/v1/virtualservices`.
    pub fn path(&self) -> String {
        let base = match self.resource.group.as_str() {
            "" => format!("/api/{}", self.resource.version),
            g => format!("/apis/{g}/{}", self.resource.version),
        };
        match &self.namespace {
            Some(ns) => format!("{base}/namespaces/{ns}/{}", self.resource.plural),
            None => format!("{base}/{}", self.resource.plural),
        }
    }
}

/// Everything the daemon watches (the RBAC in `manifests/` grants exactly
/// list and watch on these): Namespaces, Nodes (NodePort network
/// gateways' addresses), Pods, Services, EndpointSlices, Ingresses and
/// IngressClasses (Istio's Kubernetes Ingress support),
/// ConfigMaps (the mesh config, `istio` in `istio-system`, whole; of the
/// others only a `ca.crt`, for BackendTLSPolicy CAs, and the keys a
/// Gateway's `parametersRef` reads), Secrets (for
/// Gateway `credentialName`; service-account tokens and Helm releases are
/// excluded, as istiod does), the `networking.istio.io/v1` kinds (WorkloadEntry and WorkloadGroup included) and
/// `security.istio.io/v1` PeerAuthentication, AuthorizationPolicy and
/// RequestAuthentication, `telemetry.istio.io/v1` Telemetry,
/// `extensions.istio.io/v1alpha1` WasmPlugin, and the
/// Gateway API's GatewayClasses, Gateways, HTTPRoutes, GRPCRoutes,
/// ReferenceGrants (`v1` since Gateway API 1.5, else `v1beta1`),
/// BackendTLSPolicies, TLSRoutes (`v1` since Gateway API 1.5, else
/// `v1alpha2`), ListenerSets, and from the experimental channel TCPRoutes
/// (`v1alpha2`), XBackendTrafficPolicies and XListenerSets
/// (`gateway.networking.x-k8s.io/v1alpha1`) (optional: their CRDs come
/// with the Gateway API, not with Istio).
pub fn watched() -> Vec<Watched> {
    let mut secrets = Watched::new("v1", "Secret", "secrets");
    secrets.field_selector =
        Some("type!=kubernetes.io/service-account-token,type!=helm.sh/release.v1".into());
    vec![
        Watched::new("v1", "Namespace", "namespaces"),
        Watched::new("v1", "Node", "nodes"),
        Watched::new("v1", "Pod", "pods"),
        Watched::new("v1", "Service", "services"),
        Watched::new("discovery.k8s.io/v1", "EndpointSlice", "endpointslices"),
        Watched::new("networking.k8s.io/v1", "Ingress", "ingresses"),
        Watched::new("networking.k8s.io/v1", "IngressClass", "ingressclasses"),
        Watched::new("v1", "ConfigMap", "configmaps"),
        secrets,
        Watched::new(
            "networking.istio.io/v1",
            "VirtualService",
            "virtualservices",
        ),
        Watched::new(
            "networking.istio.io/v1",
            "DestinationRule",
            "destinationrules",
        ),
        Watched::new("networking.istio.io/v1", "ServiceEntry", "serviceentries"),
        Watched::new("networking.istio.io/v1", "WorkloadEntry", "workloadentries"),
        Watched::new("networking.istio.io/v1", "WorkloadGroup", "workloadgroups"),
        Watched::new("networking.istio.io/v1", "Gateway", "gateways"),
        Watched::new("networking.istio.io/v1", "Sidecar", "sidecars"),
        Watched::new(
            "networking.istio.io/v1alpha3",
            "EnvoyFilter",
            "envoyfilters",
        ),
        Watched::new(
            "security.istio.io/v1",
            "PeerAuthentication",
            "peerauthentications",
        ),
        Watched::new(
            "security.istio.io/v1",
            "AuthorizationPolicy",
            "authorizationpolicies",
        ),
        Watched::new(
            "security.istio.io/v1",
            "RequestAuthentication",
            "requestauthentications",
        ),
        Watched::new("telemetry.istio.io/v1", "Telemetry", "telemetries"),
        Watched::new("extensions.istio.io/v1alpha1", "WasmPlugin", "wasmplugins"),
        Watched::optional(
            "gateway.networking.k8s.io/v1",
            "GatewayClass",
            "gatewayclasses",
        ),
        Watched::optional("gateway.networking.k8s.io/v1", "Gateway", "gateways"),
        Watched::optional("gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes"),
        Watched::optional("gateway.networking.k8s.io/v1", "GRPCRoute", "grpcroutes"),
        Watched::optional(
            "gateway.networking.k8s.io/v1alpha2",
            "TCPRoute",
            "tcproutes",
        ),
        Watched::optional_versions(
            "gateway.networking.k8s.io",
            &["v1", "v1alpha2"],
            "TLSRoute",
            "tlsroutes",
        ),
        Watched::optional(
            "gateway.networking.k8s.io/v1",
            "BackendTLSPolicy",
            "backendtlspolicies",
        ),
        Watched::optional(
            "gateway.networking.x-k8s.io/v1alpha1",
            "XBackendTrafficPolicy",
            "xbackendtrafficpolicies",
        ),
        Watched::optional(
            "gateway.networking.k8s.io/v1",
            "ListenerSet",
            "listenersets",
        ),
        Watched::optional(
            "gateway.networking.x-k8s.io/v1alpha1",
            "XListenerSet",
            "xlistenersets",
        ),
        Watched::optional_versions(
            "gateway.networking.k8s.io",
            &["v1", "v1beta1"],
            "ReferenceGrant",
            "referencegrants",
        ),
    ]
}

/// The objects of every watched collection, as last listed and watched.
#[derive(Debug)]
pub struct Store {
    collections: Vec<Collection>,
}

#[derive(Debug, Default)]
struct Collection {
    /// The first list completed.
    synced: bool,
    /// By (namespace, name).
    objects: BTreeMap<(String, String), Stored>,
    /// Filled during a (re)list, swapped in whole when it completes.
    relist: Option<BTreeMap<(String, String), Stored>>,
}

#[derive(Debug)]
struct Stored {
    /// Hash of the trimmed object: equal means nothing the model reads changed.
    fingerprint: u64,
    /// The object's API path, named in error reports.
    path: Arc<Path>,
    /// Parsed and validated once, when it changes (shared with every
    /// [`Loaded`] made from the store).
    parsed: Result<std::sync::Arc<Object>, ParseError>,
}

impl Store {
    /// An empty store for `n` collections (indexes into [`watched`]).
    pub fn new(n: usize) -> Store {
        Store {
            collections: (0..n).map(|_| Collection::default()).collect(),
        }
    }

    /// True once every collection's first list has completed.
    pub fn synced(&self) -> bool {
        self.collections.iter().all(|c| c.synced)
    }

    /// Number of objects held (including those that failed to parse).
    pub fn len(&self) -> usize {
        self.collections.iter().map(|c| c.objects.len()).sum()
    }

    /// True when no object is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies one watcher event to collection `index`; true when what the
    /// model reads changed (or the collection just synced for the first
    /// time). A completed relist replaces the collection whole, so objects
    /// deleted while the watch was down disappear and none is duplicated.
    pub fn apply(&mut self, index: usize, watched: &Watched, event: Event<DynamicObject>) -> bool {
        let Some(c) = self.collections.get_mut(index) else {
            return false;
        };
        match event {
            Event::Init => {
                c.relist = Some(BTreeMap::new());
                false
            }
            Event::InitApply(obj) => {
                if ignored(watched, &obj) {
                    return false;
                }
                let (key, stored) = stored(watched, obj);
                c.relist.get_or_insert_default().insert(key, stored);
                false
            }
            Event::InitDone => {
                let fresh = c.relist.take().unwrap_or_default();
                let same = fresh.len() == c.objects.len()
                    && fresh
                        .iter()
                        .zip(&c.objects)
                        .all(|((k1, a), (k2, b))| k1 == k2 && a.fingerprint == b.fingerprint);
                c.objects = fresh;
                let first = !c.synced;
                c.synced = true;
                first || !same
            }
            Event::Apply(obj) if ignored(watched, &obj) => {
                // It may have held what is read before this change.
                let key = (
                    obj.metadata.namespace.clone().unwrap_or_default(),
                    obj.metadata.name.clone().unwrap_or_default(),
                );
                c.objects.remove(&key).is_some()
            }
            Event::Apply(obj) => {
                let (key, stored) = stored(watched, obj);
                let fingerprint = stored.fingerprint;
                let old = c.objects.insert(key, stored);
                old.is_none_or(|o| o.fingerprint != fingerprint)
            }
            Event::Delete(obj) => {
                let key = (
                    obj.metadata.namespace.clone().unwrap_or_default(),
                    obj.metadata.name.clone().unwrap_or_default(),
                );
                c.objects.remove(&key).is_some()
            }
        }
    }

    /// Collection `index`'s kind is not served (its CRD is not installed):
    /// it is synced and empty. True when that changes what the model reads
    /// (the first time, or objects held before the CRD went away).
    pub fn absent(&mut self, index: usize) -> bool {
        let Some(c) = self.collections.get_mut(index) else {
            return false;
        };
        let changed = !c.synced || !c.objects.is_empty();
        c.synced = true;
        c.objects.clear();
        c.relist = None;
        changed
    }

    /// Everything held, through the same validation as the folder source:
    /// valid objects in [`Loaded::entries`], the rest in [`Loaded::errors`]
    /// with their API path as the "file".
    pub fn loaded(&self) -> Loaded {
        let mut loaded = Loaded::default();
        for c in &self.collections {
            for stored in c.objects.values() {
                loaded.add_validated(&stored.path, 0, stored.parsed.clone());
            }
        }
        loaded
    }
}

/// The object as the folder source would read it: `apiVersion` and `kind`
/// set (list items from the API server may lack them), trimmed, parsed.
fn stored(watched: &Watched, obj: DynamicObject) -> ((String, String), Stored) {
    let namespace = obj.metadata.namespace.clone().unwrap_or_default();
    let name = obj.metadata.name.clone().unwrap_or_default();
    let mut path = watched.path();
    if watched.namespace.is_none() && !namespace.is_empty() {
        let (base, plural) = path.rsplit_once('/').unwrap_or(("", ""));
        path = format!("{base}/namespaces/{namespace}/{plural}");
    }
    path = format!("{path}/{name}");
    let mut value = match serde_json::to_value(&obj) {
        Ok(v) => v,
        Err(e) => Value::String(e.to_string()),
    };
    if let Some(map) = value.as_object_mut() {
        map.insert(
            "apiVersion".into(),
            watched.resource.api_version.clone().into(),
        );
        map.insert("kind".into(), watched.resource.kind.clone().into());
    }
    trim(&mut value, &watched.resource);
    let mut hasher = DefaultHasher::new();
    value.to_string().hash(&mut hasher);
    let parsed = crds::document::parse_value(value, "default")
        .into_iter()
        .next()
        .unwrap_or(Err(ParseError::Syntax("empty object".into())));
    let parsed = super::validated(parsed).map(std::sync::Arc::new);
    (
        (namespace, name),
        Stored {
            fingerprint: hasher.finish(),
            path: Path::new(&path).into(),
            parsed,
        },
    )
}

/// Drops what the model never reads and what changes on every write.
/// Whether `obj` is not kept at all: a ConfigMap other than the mesh
/// config with neither a `ca.crt` nor a key a Gateway's `parametersRef`
/// reads (most of a cluster's, some rewritten every few seconds, as old
/// leader-election locks; nothing reads them).
fn ignored(watched: &Watched, obj: &DynamicObject) -> bool {
    let mesh = crds::mesh::MESH_CONFIGMAP;
    let is_mesh = obj.metadata.namespace.as_deref() == Some(mesh.0)
        && obj.metadata.name.as_deref() == Some(mesh.1);
    let data = obj.data.get("data");
    let read = |key: &str| data.and_then(|d| d.get(key)).is_some();
    let kept =
        is_mesh || read("ca.crt") || crds::gateway_api::PARAMETERS_KEYS.iter().any(|k| read(k));
    watched.resource.kind == "ConfigMap" && !kept
}

fn trim(value: &mut Value, resource: &ApiResource) {
    let Some(map) = value.as_object_mut() else {
        return;
    };
    if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in ["managedFields", "resourceVersion"] {
            meta.remove(field);
        }
        // The Gateway API's status conditions name the generation they saw.
        let gateway_api = [crds::gateway_api::GROUP, crds::gateway_api::X_GROUP];
        if !gateway_api.contains(&resource.group.as_str()) {
            meta.remove("generation");
        }
        if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
    }
    if resource.group == crds::NETWORKING_GROUP
        || resource.group == crds::SECURITY_GROUP
        || resource.group == crds::gateway_api::GROUP
        || resource.group == crds::gateway_api::X_GROUP
    {
        // Written by control planes (this one's own status writes among
        // them): never an input, but for a WorkloadEntry's health (the
        // `Healthy` condition's status only: its times and message do not
        // change what is served).
        let healthy = (resource.kind == "WorkloadEntry")
            .then(|| {
                map.get("status")?
                    .get("conditions")?
                    .as_array()?
                    .iter()
                    .find(|c| c["type"] == crds::service_entry::HEALTHY_CONDITION)
                    .map(|c| serde_json::json!({"conditions": [{"type": c["type"], "status": c["status"]}]}))
            })
            .flatten();
        map.remove("status");
        if let Some(status) = healthy {
            map.insert("status".into(), status);
        }
    }
    if resource.kind == "ConfigMap" {
        let mesh = crds::mesh::MESH_CONFIGMAP;
        let is_mesh = map["metadata"]["namespace"] == mesh.0 && map["metadata"]["name"] == mesh.1;
        if !is_mesh {
            // Only a CA (a BackendTLSPolicy's `caCertificateRefs`) and a
            // Gateway's `parametersRef` overlays (with the label making
            // them a GatewayClass's defaults): the rest of such a
            // ConfigMap is never read.
            map.remove("binaryData");
            if let Some(data) = map.get_mut("data").and_then(Value::as_object_mut) {
                data.retain(|key, _| {
                    key == "ca.crt" || crds::gateway_api::PARAMETERS_KEYS.contains(&key.as_str())
                });
            }
            if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
                if let Some(labels) = meta.get_mut("labels").and_then(Value::as_object_mut) {
                    labels.retain(|key, _| key == crds::gateway_api::CLASS_DEFAULTS_LABEL);
                }
                meta.remove("annotations");
            }
        }
    }
    if resource.kind == "Ingress" {
        // Written by the leader ([`crate::gateway_controller`]): never an input.
        map.remove("status");
    }
    if resource.kind == "Node" {
        // Only its labels and external IPs (NodePort network gateways);
        // its heartbeats, conditions and annotations change all the time.
        map.remove("spec");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("annotations");
        }
        if let Some(status) = map.get_mut("status").and_then(Value::as_object_mut) {
            let external: Vec<Value> = status
                .get("addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|a| a["type"] == "ExternalIP")
                .cloned()
                .collect();
            status.clear();
            status.insert("addresses".into(), Value::Array(external));
        }
    }
    if resource.kind == "Pod"
        && let Some(status) = map.get_mut("status").and_then(Value::as_object_mut)
    {
        // Of the conditions, only a pod that is not Ready (a ServiceEntry
        // selects ready pods; a pod without conditions counts as ready, so
        // `Ready: True` is dropped too); their times change on every probe.
        let unready = status
            .get("conditions")
            .and_then(Value::as_array)
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
            .filter(|c| c["status"] != "True")
            .map(|c| serde_json::json!([{"type": "Ready", "status": c["status"]}]));
        status.retain(|k, _| matches!(k.as_str(), "podIP" | "podIPs" | "hostIP" | "phase"));
        if let Some(unready) = unready {
            status.insert("conditions".into(), unready);
        }
    }
}

/// First retry delay after a failed list or watch; doubled per failure up
/// to [`RETRY_MAX`], reset by any event.
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(200);
/// Longest retry delay (kube-rs's default backoff also caps at 30 s).
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Locks the store; a panic elsewhere while holding it leaves data that is
/// still consistent per collection, so the lock is taken over.
pub fn lock(store: &Mutex<Store>) -> MutexGuard<'_, Store> {
    store
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts one watcher task per entry of `watched`. Each event that changes
/// what the model reads sends a unit on `changed` (a full channel means a
/// rebuild is already pending). Tasks end when `token` is cancelled.
/// Errors (API server down, forbidden, `410 Gone`) are logged and retried
/// with backoff; until then the store keeps what it had, so proxies keep
/// their last config.
pub fn spawn(
    client: kube::Client,
    watched: Vec<Watched>,
    store: Arc<Mutex<Store>>,
    changed: mpsc::Sender<()>,
    token: CancellationToken,
) -> Vec<JoinHandle<()>> {
    watched
        .into_iter()
        .enumerate()
        .map(|(index, w)| {
            let client = client.clone();
            let store = store.clone();
            let changed = changed.clone();
            let token = token.clone();
            tokio::spawn(async move {
                let mut w = w;
                // The versions to try, the watched one first.
                let versions: Vec<ApiResource> = std::iter::once(w.resource.clone())
                    .chain(std::mem::take(&mut w.fallbacks))
                    .collect();
                let mut at = 0;
                let mut config = watcher::Config::default();
                if let Some(f) = &w.field_selector {
                    config = config.fields(f);
                }
                let stream = |w: &Watched| {
                    let api: Api<DynamicObject> = match &w.namespace {
                        Some(ns) => Api::namespaced_with(client.clone(), ns, &w.resource),
                        None => Api::all_with(client.clone(), &w.resource),
                    };
                    watch_stream(api, config.clone()).boxed()
                };
                let mut events = stream(&w);
                let kind_name = w.resource.kind.clone();
                let kind = kind_name.as_str();
                let mut backoff = RETRY_FIRST;
                loop {
                    let event = tokio::select! {
                        e = events.next() => e,
                        _ = token.cancelled() => None,
                    };
                    match event {
                        None => break,
                        // `410 Gone`: the watcher relists on its next poll, at once
                        // (as client-go's reflector does); nothing is lost meanwhile.
                        Some(Err(watcher::Error::WatchError(status))) if status.code == 410 => {
                            info!(kind, path = %w.path(), "watch expired (410 Gone); relisting");
                        }
                        // An optional kind whose CRD is not installed: empty,
                        // and asked for again (a CRD installed later is read).
                        Some(Err(watcher::Error::InitialListFailed(kube::Error::Api(status))))
                            if w.optional && status.code == 404 && at + 1 < versions.len() =>
                        {
                            // Not served at this version: the next one, at once.
                            at += 1;
                            w.resource = versions[at].clone();
                            debug!(kind, path = %w.path(), "trying the next version");
                            events = stream(&w);
                        }
                        Some(Err(watcher::Error::InitialListFailed(kube::Error::Api(status))))
                            if w.optional && status.code == 404 =>
                        {
                            if at > 0 {
                                // None served: from the first again, later.
                                at = 0;
                                w.resource = versions[0].clone();
                                events = stream(&w);
                            }
                            let changed_now = lock(&store).absent(index);
                            if changed_now {
                                info!(kind, path = %w.path(), "not served (CRD not installed); asking again every {}s at most", RETRY_MAX.as_secs());
                                let _ = changed.try_send(());
                            }
                            tokio::select! {
                                _ = tokio::time::sleep(backoff) => {}
                                _ = token.cancelled() => break,
                            }
                            backoff = (backoff * 2).min(RETRY_MAX);
                        }
                        Some(Err(e)) => {
                            warn!(kind, path = %w.path(), error = %e, retry_in = ?backoff, "watch failed; keeping the last state");
                            tokio::select! {
                                _ = tokio::time::sleep(backoff) => {}
                                _ = token.cancelled() => break,
                            }
                            backoff = (backoff * 2).min(RETRY_MAX);
                        }
                        Some(Ok(event)) => {
                            backoff = RETRY_FIRST;
                            let done = matches!(event, Event::InitDone);
                            let (changed_now, total) = {
                                let mut s = lock(&store);
                                let c = s.apply(index, &w, event);
                                (c, s.len())
                            };
                            if done {
                                info!(kind, objects = total, "listed");
                            }
                            if changed_now {
                                debug!(kind, "changed");
                                let _ = changed.try_send(());
                            }
                        }
                    }
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(json: Value) -> DynamicObject {
        serde_json::from_value(json).unwrap()
    }

    fn pod(rv: &str, ready: &str) -> DynamicObject {
        obj(serde_json::json!({
            "metadata": {"name": "p", "namespace": "default", "resourceVersion": rv,
                         "labels": {"app": "reviews"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
            "status": {"podIP": "10.0.0.1", "conditions": [
                {"type": "Ready", "status": ready, "lastTransitionTime": format!("2026-01-01T00:00:0{rv}Z")},
                {"type": "ContainersReady", "status": ready}
            ]}
        }))
    }

    #[test]
    fn config_maps_are_kept_whole_only_for_the_mesh_config_and_cut_down_else() {
        let w = watched();
        let cms = w
            .iter()
            .position(|w| w.resource.kind == "ConfigMap")
            .unwrap();
        let cm = |ns: &str, name: &str, data: Value| {
            obj(serde_json::json!({
                "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"},
                "data": data,
            }))
        };
        let mut s = Store::new(w.len());
        let mesh = serde_json::json!({"mesh": "rootNamespace: istio-system\n"});
        assert!(s.apply(
            cms,
            &w[cms],
            Event::Apply(cm("istio-system", "istio", mesh))
        ));
        assert!(s.apply(
            cms,
            &w[cms],
            Event::Apply(cm(
                "default",
                "ca",
                serde_json::json!({"ca.crt": "PEM", "other": "x"})
            ))
        ));
        // One without a CA is not kept at all.
        assert!(!s.apply(
            cms,
            &w[cms],
            Event::Apply(cm("default", "lock", serde_json::json!({"holder": "a"})))
        ));
        // A Gateway's parameters: its keys kept.
        assert!(s.apply(
            cms,
            &w[cms],
            Event::Apply(cm(
                "default",
                "gw-options",
                serde_json::json!({"deployment": "spec: {replicas: 2}", "notes": "x"})
            ))
        ));
        // A GatewayClass's defaults: their label kept, other labels not.
        assert!(s.apply(
            cms,
            &w[cms],
            Event::Apply(obj(serde_json::json!({
                "metadata": {
                    "name": "istio-gateway-class-defaults",
                    "namespace": "istio-system",
                    "resourceVersion": "1",
                    "labels": {"gateway.istio.io/defaults-for-class": "istio", "team": "edge"},
                },
                "data": {"podDisruptionBudget": "spec: {minAvailable: 1}"},
            })))
        ));
        // A key other than `ca.crt` changing changes nothing.
        assert!(!s.apply(
            cms,
            &w[cms],
            Event::Apply(cm(
                "default",
                "ca",
                serde_json::json!({"ca.crt": "PEM", "other": "y"})
            ))
        ));
        let loaded = s.loaded();
        let labels: Vec<_> = loaded
            .objects()
            .filter_map(|o| match o {
                Object::ConfigMap(cm) => cm.metadata.labels.clone(),
                _ => None,
            })
            .collect();
        assert_eq!(
            labels,
            [[(
                crds::gateway_api::CLASS_DEFAULTS_LABEL.to_owned(),
                "istio".to_owned()
            )]
            .into()],
            "{labels:?}"
        );
        let data: Vec<_> = loaded
            .objects()
            .filter_map(|o| match o {
                Object::ConfigMap(cm) => cm.data.clone(),
                _ => None,
            })
            .collect();
        assert_eq!(data.len(), 4);
        assert!(data.iter().any(|d| d.contains_key("mesh")), "{data:?}");
        assert!(
            data.iter()
                .any(|d| d.keys().collect::<Vec<_>>() == ["deployment"]),
            "{data:?}"
        );
        assert!(
            data.iter()
                .any(|d| d.keys().collect::<Vec<_>>() == ["ca.crt"]),
            "{data:?}"
        );
    }

    #[test]
    fn status_only_updates_change_nothing_but_readiness() {
        let w = watched();
        let pods = w.iter().position(|w| w.resource.kind == "Pod").unwrap();
        let mut s = Store::new(w.len());
        assert!(s.apply(pods, &w[pods], Event::Apply(pod("1", "False"))));
        // Ready (a ServiceEntry selects ready pods), then only times.
        assert!(s.apply(pods, &w[pods], Event::Apply(pod("2", "True"))));
        assert!(!s.apply(pods, &w[pods], Event::Apply(pod("4", "True"))));
        let loaded = s.loaded();
        let Some(Object::Pod(p)) = loaded.objects().next() else {
            panic!("no pod")
        };
        assert!(p.ready);
        let mut moved = pod("3", "True");
        moved.data["status"]["podIP"] = "10.0.0.2".into();
        assert!(s.apply(pods, &w[pods], Event::Apply(moved)));

        // A WorkloadEntry's status counts only for its `Healthy` condition.
        let entries = w
            .iter()
            .position(|w| w.resource.kind == "WorkloadEntry")
            .unwrap();
        let entry = |rv: &str, conditions: Value| {
            obj(serde_json::json!({
                "metadata": {"name": "vm", "namespace": "default", "resourceVersion": rv,
                             "annotations": {"proxy.istio.io/health-checks-enabled": "true"}},
                "spec": {"address": "10.0.0.9"},
                "status": {"observedGeneration": rv, "conditions": conditions},
            }))
        };
        let healthy = |status: &str, at: &str| serde_json::json!([{"type": "Healthy", "status": status, "lastProbeTime": at, "message": at}]);
        let mut s = Store::new(w.len());
        assert!(s.apply(
            entries,
            &w[entries],
            Event::Apply(entry("1", serde_json::json!([])))
        ));
        assert!(!s.apply(
            entries,
            &w[entries],
            Event::Apply(entry(
                "2",
                serde_json::json!([{"type": "Other", "status": "True"}])
            ))
        ));
        assert!(s.apply(
            entries,
            &w[entries],
            Event::Apply(entry("3", healthy("True", "a")))
        ));
        assert!(!s.apply(
            entries,
            &w[entries],
            Event::Apply(entry("4", healthy("True", "b")))
        ));
        let loaded = s.loaded();
        let Some(Object::WorkloadEntry(we)) = loaded.objects().next() else {
            panic!("no entry")
        };
        assert!(we.healthy());
        assert!(s.apply(
            entries,
            &w[entries],
            Event::Apply(entry("5", healthy("False", "b")))
        ));
    }

    #[test]
    fn a_relist_replaces_the_collection() {
        let w = watched();
        let vs = w
            .iter()
            .position(|w| w.resource.kind == "VirtualService")
            .unwrap();
        let mk = |name: &str| {
            obj(serde_json::json!({
                "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"hosts": [name], "http": [{"route": [{"destination": {"host": name}}]}]}
            }))
        };
        let mut s = Store::new(w.len());
        assert!(!s.synced());
        for e in [
            Event::Init,
            Event::InitApply(mk("a")),
            Event::InitApply(mk("b")),
        ] {
            assert!(!s.apply(vs, &w[vs], e));
        }
        assert!(
            s.apply(vs, &w[vs], Event::InitDone),
            "the first sync counts"
        );
        // The same list again: nothing changed.
        for e in [
            Event::Init,
            Event::InitApply(mk("b")),
            Event::InitApply(mk("a")),
        ] {
            s.apply(vs, &w[vs], e);
        }
        assert!(!s.apply(vs, &w[vs], Event::InitDone));
        // `a` was deleted and `c` created while the watch was down.
        for e in [
            Event::Init,
            Event::InitApply(mk("b")),
            Event::InitApply(mk("c")),
        ] {
            s.apply(vs, &w[vs], e);
        }
        assert!(s.apply(vs, &w[vs], Event::InitDone));
        let names: Vec<_> = s
            .loaded()
            .objects()
            .map(|o| o.metadata().name.clone().unwrap())
            .collect();
        assert_eq!(names, ["b", "c"]);
    }

    #[test]
    fn an_unusable_object_is_reported_with_its_path_and_field() {
        let w = watched();
        let vs = w
            .iter()
            .position(|w| w.resource.kind == "VirtualService")
            .unwrap();
        let mut s = Store::new(w.len());
        // As the API server lists a custom resource: no status problem, but
        // a weight the schema does not allow here.
        s.apply(
            vs,
            &w[vs],
            Event::Apply(obj(serde_json::json!({
                "metadata": {"name": "bad", "namespace": "shop"},
                "spec": {"hosts": ["r"], "http": [{"route": [{"destination": {"host": "r"}, "weight": "x"}]}]}
            }))),
        );
        let loaded = s.loaded();
        assert_eq!(loaded.entries.len(), 0);
        let msg = loaded.errors[0].to_string();
        assert!(
            msg.starts_with("/apis/networking.istio.io/v1/namespaces/shop/virtualservices/bad"),
            "{msg}"
        );
        assert!(msg.contains("spec.http[0].route[0].weight"), "{msg}");
    }
}
