//! An in-process fake Kubernetes API server that speaks the real list/watch
//! HTTP protocol, so the daemon's kube-rs watchers run their real code path:
//!
//! - `GET /api/v1/pods`, `/apis/networking.istio.io/v1/namespaces/ns/virtualservices`, ...:
//!   a JSON list (`kind: PodList`) whose `metadata.resourceVersion` is the
//!   store's current revision; items carry their own `resourceVersion`
//!   (built-in kinds without `apiVersion`/`kind`, as the real server sends
//!   them; custom resources with).
//! - `?watch=1&resourceVersion=N`: a chunked stream of newline-delimited
//!   events (`ADDED`, `MODIFIED`, `DELETED`) after revision N, then live
//!   ones; `BOOKMARK`s when asked for (`allowWatchBookmarks`) and sent
//!   ([`FakeApiServer::bookmark`]); an `ERROR` event with a `410 Expired`
//!   Status when N is older than the compacted history
//!   ([`FakeApiServer::compact`]), which forces the client to relist.
//! - `fieldSelector` on `metadata.name`, `metadata.namespace` and `type`
//!   (`=`, `==`, `!=`), anything else a `400` as the real server answers.
//! - Failure modes: watches dropped mid-stream ([`FakeApiServer::drop_watches`]),
//!   the whole server going away and coming back on the same port
//!   ([`FakeApiServer::stop`], [`FakeApiServer::restart`]), and lists held
//!   back ([`FakeApiServer::hold_lists`]).
//!
//! Resource versions are one global counter, as etcd's revision is.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

/// The kinds served: `(apiVersion, kind, plural, namespaced)`.
pub const KINDS: &[(&str, &str, &str, bool)] = &[
    ("v1", "Namespace", "namespaces", false),
    ("v1", "Node", "nodes", false),
    ("v1", "Pod", "pods", true),
    ("v1", "Service", "services", true),
    ("v1", "ConfigMap", "configmaps", true),
    ("v1", "ServiceAccount", "serviceaccounts", true),
    ("apps/v1", "Deployment", "deployments", true),
    (
        "autoscaling/v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        true,
    ),
    (
        "policy/v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        true,
    ),
    ("v1", "Secret", "secrets", true),
    (
        "discovery.k8s.io/v1",
        "EndpointSlice",
        "endpointslices",
        true,
    ),
    ("networking.k8s.io/v1", "Ingress", "ingresses", true),
    (
        "networking.k8s.io/v1",
        "IngressClass",
        "ingressclasses",
        false,
    ),
    (
        "networking.istio.io/v1",
        "VirtualService",
        "virtualservices",
        true,
    ),
    (
        "networking.istio.io/v1",
        "DestinationRule",
        "destinationrules",
        true,
    ),
    (
        "networking.istio.io/v1",
        "ServiceEntry",
        "serviceentries",
        true,
    ),
    (
        "networking.istio.io/v1",
        "WorkloadEntry",
        "workloadentries",
        true,
    ),
    (
        "networking.istio.io/v1",
        "WorkloadGroup",
        "workloadgroups",
        true,
    ),
    ("networking.istio.io/v1", "Gateway", "gateways", true),
    ("networking.istio.io/v1", "Sidecar", "sidecars", true),
    (
        "networking.istio.io/v1alpha3",
        "EnvoyFilter",
        "envoyfilters",
        true,
    ),
    (
        "admissionregistration.k8s.io/v1",
        "MutatingWebhookConfiguration",
        "mutatingwebhookconfigurations",
        false,
    ),
    (
        "admissionregistration.k8s.io/v1",
        "ValidatingWebhookConfiguration",
        "validatingwebhookconfigurations",
        false,
    ),
    (
        "security.istio.io/v1",
        "PeerAuthentication",
        "peerauthentications",
        true,
    ),
    (
        "security.istio.io/v1",
        "AuthorizationPolicy",
        "authorizationpolicies",
        true,
    ),
    (
        "security.istio.io/v1",
        "RequestAuthentication",
        "requestauthentications",
        true,
    ),
    ("telemetry.istio.io/v1", "Telemetry", "telemetries", true),
    (
        "extensions.istio.io/v1alpha1",
        "WasmPlugin",
        "wasmplugins",
        true,
    ),
    (
        "gateway.networking.k8s.io/v1",
        "GatewayClass",
        "gatewayclasses",
        false,
    ),
    ("gateway.networking.k8s.io/v1", "Gateway", "gateways", true),
    (
        "gateway.networking.k8s.io/v1",
        "HTTPRoute",
        "httproutes",
        true,
    ),
    (
        "gateway.networking.k8s.io/v1",
        "GRPCRoute",
        "grpcroutes",
        true,
    ),
    (
        "gateway.networking.k8s.io/v1alpha2",
        "TCPRoute",
        "tcproutes",
        true,
    ),
    (
        "gateway.networking.k8s.io/v1alpha2",
        "TLSRoute",
        "tlsroutes",
        true,
    ),
    // Gateway API 1.5's standard channel (served as its own collection
    // here; a real API server serves the same objects at every version).
    (
        "gateway.networking.k8s.io/v1",
        "TLSRoute",
        "tlsroutes",
        true,
    ),
    (
        "gateway.networking.k8s.io/v1",
        "BackendTLSPolicy",
        "backendtlspolicies",
        true,
    ),
    (
        "gateway.networking.x-k8s.io/v1alpha1",
        "XBackendTrafficPolicy",
        "xbackendtrafficpolicies",
        true,
    ),
    (
        "gateway.networking.k8s.io/v1",
        "ListenerSet",
        "listenersets",
        true,
    ),
    (
        "gateway.networking.x-k8s.io/v1alpha1",
        "XListenerSet",
        "xlistenersets",
        true,
    ),
    (
        "gateway.networking.k8s.io/v1beta1",
        "ReferenceGrant",
        "referencegrants",
        true,
    ),
];

/// One write, as a watch reports it.
#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    /// `apiVersion/plural`, e.g. `v1/pods`.
    collection: String,
    event: &'static str,
    object: Value,
}

#[derive(Debug, Default)]
struct Store {
    rv: u64,
    /// collection -> (namespace, name) -> object (with its resourceVersion).
    objects: BTreeMap<String, BTreeMap<(String, String), Value>>,
    /// Every change with `rv >= oldest`.
    history: Vec<Change>,
    /// The oldest revision a watch may start after (minus one).
    oldest: u64,
    /// `METHOD path?query` of every request, in order.
    requests: Vec<String>,
    /// `coordination.k8s.io/v1` Leases by (namespace, name), with the field
    /// manager owning each `spec` field (server-side apply's bookkeeping).
    leases: BTreeMap<(String, String), (Value, BTreeMap<String, String>)>,
    /// TokenReview: token -> (username, audiences).
    tokens: HashMap<String, (String, Vec<String>)>,
    /// Collections (`apiVersion/plural`) whose CRD is not installed: 404.
    uninstalled: BTreeSet<String>,
}

#[derive(Debug)]
struct Shared {
    store: Mutex<Store>,
    changes: broadcast::Sender<Change>,
    /// Bumped to end every open watch stream.
    epoch: watch::Sender<u64>,
    /// Lists wait while this is true.
    hold: watch::Sender<bool>,
}

/// The fake API server. Dropping it stops it.
#[derive(Debug)]
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    serving: Option<(JoinHandle<()>, tokio_util::sync::CancellationToken)>,
}

impl FakeApiServer {
    /// Starts serving on a free loopback port.
    pub async fn start() -> FakeApiServer {
        let (changes, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            store: Mutex::default(),
            changes,
            epoch: watch::channel(0).0,
            hold: watch::channel(false).0,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake API server");
        let addr = listener.local_addr().expect("local addr");
        let mut server = FakeApiServer {
            shared,
            addr,
            serving: None,
        };
        server.serve(listener);
        server
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let token = tokio_util::sync::CancellationToken::new();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(self.shared.clone());
        let stop = token.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        self.serving = Some((task, token));
    }

    /// Whether the CRD of `collection` (`apiVersion/plural`, e.g.
    /// `gateway.networking.k8s.io/v1/httproutes`) is installed: without it,
    /// its paths answer `404`, as an API server's do.
    pub fn set_installed(&self, collection: &str, installed: bool) {
        let mut store = self.shared.store.lock().expect("fake API store");
        if installed {
            store.uninstalled.remove(collection);
        } else {
            store.uninstalled.insert(collection.to_owned());
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client configuration for this server (plain HTTP, no credentials).
    pub fn kube_config(&self) -> kube::Config {
        let mut config = kube::Config::new(self.url().parse::<Uri>().expect("url"));
        config.default_namespace = "default".into();
        config
    }

    /// Creates or replaces an object (its `apiVersion`/`kind` must be one of
    /// [`KINDS`]); namespaced objects without a namespace go to `default`.
    /// Returns the object's new resource version.
    pub fn apply(&self, object: Value) -> u64 {
        put(&self.shared, object)
    }

    /// Makes `token` valid for TokenReview as `username` (e.g.
    /// `system:serviceaccount:default:productpage`) with `audiences`.
    pub fn add_token(&self, token: &str, username: &str, audiences: &[&str]) {
        self.lock().tokens.insert(
            token.to_owned(),
            (
                username.to_owned(),
                audiences.iter().map(|a| (*a).to_owned()).collect(),
            ),
        );
    }

    /// An object as stored, if it exists.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let probe = json!({"apiVersion": api_version, "kind": kind, "metadata": {}});
        let (collection, _) = collection_of(&probe)?;
        self.lock()
            .objects
            .get(&collection)?
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Applies every document of a multi-document YAML whose kind is served
    /// (others, e.g. `Deployment`, are skipped); returns how many were applied.
    pub fn apply_yaml(&self, text: &str) -> usize {
        let mut n = 0;
        for (_, doc) in crds::document::split_documents(text) {
            let doc = doc.expect("valid YAML");
            if collection_of(&doc).is_some() {
                self.apply(doc);
                n += 1;
            }
        }
        n
    }

    /// Deletes an object; true when it existed.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        delete(&self.shared, api_version, kind, namespace, name)
    }

    /// Forgets the history up to now, as etcd compaction does: a watch that
    /// resumes from an older revision gets `410 Gone` and must relist.
    pub fn compact(&self) {
        let mut store = self.lock();
        store.history.clear();
        store.oldest = store.rv;
    }

    /// Ends every open watch stream (the clients re-watch from their last revision).
    pub fn drop_watches(&self) {
        self.shared.epoch.send_modify(|e| *e += 1);
    }

    /// Sends a `BOOKMARK` at the current revision on every watch that allows them.
    pub fn bookmark(&self) {
        let store = self.lock();
        let _ = self.shared.changes.send(Change {
            rv: store.rv,
            collection: String::new(),
            event: "BOOKMARK",
            object: Value::Null,
        });
    }

    /// While `hold` is true, list requests wait (a slow or partitioned API server).
    pub fn hold_lists(&self, hold: bool) {
        self.shared.hold.send_replace(hold);
    }

    /// A Lease as stored, if it exists.
    pub fn lease(&self, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .leases
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|(object, _)| object.clone())
    }

    /// Every request so far, as `GET path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// Number of list (not watch) requests on a collection path, e.g.
    /// `/apis/networking.istio.io/v1/virtualservices`.
    pub fn lists_of(&self, path: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| {
                let (p, q) = r.split_once('?').unwrap_or((r, ""));
                p == format!("GET {path}") && !q.split('&').any(|kv| kv.starts_with("watch="))
            })
            .count()
    }

    /// The API server goes away: open watches end, the port is closed.
    pub async fn stop(&mut self) {
        if let Some((mut task, token)) = self.serving.take() {
            token.cancel();
            // A graceful shutdown waits for open streams; end every watch,
            // including one that started while shutting down, until it is done.
            loop {
                self.drop_watches();
                if tokio::time::timeout(std::time::Duration::from_millis(50), &mut task)
                    .await
                    .is_ok()
                {
                    break;
                }
            }
        }
    }

    /// Comes back on the same port, with the same store.
    pub async fn restart(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("rebind fake API server");
        self.serve(listener);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.shared.store.lock().expect("fake API store")
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.drop_watches();
        if let Some((task, token)) = self.serving.take() {
            token.cancel();
            task.abort();
        }
    }
}

/// Creates or replaces an object, as a write to the API server does.
/// Deletes an object (a `DELETED` event); true when it existed.
fn delete(shared: &Shared, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
    let probe = json!({"apiVersion": api_version, "kind": kind, "metadata": {}});
    let Some((collection, namespaced)) = collection_of(&probe) else {
        return false;
    };
    let ns = if namespaced { namespace } else { "" };
    let mut store = shared.store.lock().expect("fake API store");
    let removed = store
        .objects
        .get_mut(&collection)
        .and_then(|o| o.remove(&(ns.to_owned(), name.to_owned())));
    let Some(mut object) = removed else {
        return false;
    };
    store.rv += 1;
    object["metadata"]["resourceVersion"] = store.rv.to_string().into();
    record(shared, &mut store, collection, "DELETED", object);
    true
}

fn put(shared: &Shared, mut object: Value) -> u64 {
    let (collection, namespaced) = collection_of(&object)
        .unwrap_or_else(|| panic!("the fake API server does not serve {object}"));
    let meta = object["metadata"].as_object_mut().expect("metadata");
    if namespaced && !meta.contains_key("namespace") {
        meta.insert("namespace".into(), "default".into());
    }
    let key = key_of(&object);
    let mut store = shared.store.lock().expect("fake API store");
    store.rv += 1;
    let rv = store.rv;
    object["metadata"]["resourceVersion"] = rv.to_string().into();
    // A UID, as the API server gives each object once.
    let uid = store
        .objects
        .get(&collection)
        .and_then(|o| o.get(&key))
        .and_then(|o| o["metadata"]["uid"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("uid-{rv}"));
    object["metadata"]["uid"] = uid.into();
    let objects = store.objects.entry(collection.clone()).or_default();
    let event = if objects.insert(key, object.clone()).is_some() {
        "MODIFIED"
    } else {
        "ADDED"
    };
    record(shared, &mut store, collection, event, object);
    rv
}

fn record(
    shared: &Shared,
    store: &mut Store,
    collection: String,
    event: &'static str,
    object: Value,
) {
    let change = Change {
        rv: store.rv,
        collection,
        event,
        object,
    };
    store.history.push(change.clone());
    let _ = shared.changes.send(change);
}

/// The object `name` of `target`'s collection (and namespace), as stored.
fn stored(shared: &Shared, target: &Target, name: &str) -> Option<Value> {
    let ns = target.namespace.clone().unwrap_or_default();
    shared
        .store
        .lock()
        .expect("fake API store")
        .objects
        .get(&target.collection())
        .and_then(|o| o.get(&(ns, name.to_owned())))
        .cloned()
}

/// Whether a request's body is a patch of `kind` (`application/<kind>`
/// content type, e.g. `merge-patch+json`).
fn patch_of(headers: &HeaderMap, kind: &str) -> bool {
    headers
        .get("content-type")
        .and_then(|c| c.to_str().ok())
        .and_then(|c| c.strip_prefix("application/"))
        .is_some_and(|c| c.starts_with(kind))
}

/// The API server's `400` for a request body it cannot read.
fn bad_request(why: &str) -> Response {
    let body = status(StatusCode::BAD_REQUEST, "BadRequest", why.into());
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

/// The API server's `404` for the object `name`.
fn not_found(name: &str) -> Response {
    let body = status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{name:?} not found"),
    );
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

/// `(collection, namespaced)` of an object by its `apiVersion` and `kind`.
fn collection_of(object: &Value) -> Option<(String, bool)> {
    let api_version = object.get("apiVersion")?.as_str()?;
    let kind = object.get("kind")?.as_str()?;
    KINDS
        .iter()
        .find(|(v, k, _, _)| *v == api_version && *k == kind)
        .map(|(v, _, plural, namespaced)| (format!("{v}/{plural}"), *namespaced))
}

fn key_of(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    (s(&meta["namespace"]), s(&meta["name"]))
}

/// A parsed request path: which collection, and which namespace if any.
struct Target {
    api_version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespace: Option<String>,
}

impl Target {
    fn parse(path: &str) -> Option<Target> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (api_version, rest) = match segments.as_slice() {
            ["api", v, rest @ ..] => ((*v).to_owned(), rest),
            ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
            _ => return None,
        };
        let (namespace, plural) = match rest {
            [plural] => (None, *plural),
            ["namespaces", ns, plural] => (Some((*ns).to_owned()), *plural),
            _ => return None,
        };
        let (api_version, kind, plural, _) = KINDS
            .iter()
            .find(|(v, _, p, _)| *v == api_version && *p == plural)?;
        Some(Target {
            api_version,
            kind,
            plural,
            namespace,
        })
    }

    fn collection(&self) -> String {
        format!("{}/{}", self.api_version, self.plural)
    }

    fn custom(&self) -> bool {
        self.api_version.contains(".istio.io/")
            || self.api_version.starts_with("gateway.networking.k8s.io/")
    }

    /// The object as the server would send it in a list or an event.
    fn render(&self, object: &Value, in_list: bool) -> Value {
        let mut o = object.clone();
        if in_list
            && !self.custom()
            && let Some(map) = o.as_object_mut()
        {
            map.remove("apiVersion");
            map.remove("kind");
        }
        o
    }
}

/// A `fieldSelector`: `path=value`, `path==value`, `path!=value`, comma-joined.
#[derive(Clone)]
struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    fn parse(text: Option<&String>) -> Result<FieldSelector, String> {
        let mut terms = Vec::new();
        for term in text.map(|t| t.as_str()).unwrap_or("").split(',') {
            if term.is_empty() {
                continue;
            }
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, true, v)
            } else {
                return Err(format!("invalid selector: {term:?}"));
            };
            if !matches!(field, "metadata.name" | "metadata.namespace" | "type") {
                return Err(format!("field label not supported: {field}"));
            }
            terms.push((field.to_owned(), equal, value.to_owned()));
        }
        Ok(FieldSelector(terms))
    }

    fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let actual = match field.as_str() {
                "metadata.name" => &object["metadata"]["name"],
                "metadata.namespace" => &object["metadata"]["namespace"],
                _ => &object["type"],
            };
            (actual.as_str().unwrap_or("") == value) == *equal
        })
    }
}

fn status(code: StatusCode, reason: &str, message: String) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    })
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    shared
        .store
        .lock()
        .expect("fake API store")
        .requests
        .push(format!("{method} {uri}"));
    let target = Target::parse(uri.path()).or_else(|| {
        uri.path()
            .rsplit_once('/')
            .and_then(|(collection, _)| Target::parse(collection))
    });
    if let Some(t) = target
        && shared
            .store
            .lock()
            .expect("fake API store")
            .uninstalled
            .contains(&t.collection())
    {
        let body = status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource".into(),
        );
        return (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
    }
    if let Some(rest) = uri
        .path()
        .strip_prefix("/apis/coordination.k8s.io/v1/namespaces/")
    {
        let mut store = shared.store.lock().expect("fake API store");
        let (status, body) = lease(&mut store, &method, rest, &headers, &query, &body);
        return (status, axum::Json(body)).into_response();
    }
    if method == Method::POST && uri.path() == "/apis/authentication.k8s.io/v1/tokenreviews" {
        let review: Value = serde_json::from_slice(&body).unwrap_or_default();
        let token = review["spec"]["token"].as_str().unwrap_or_default();
        let asked: Vec<String> = review["spec"]["audiences"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        let known = shared
            .store
            .lock()
            .expect("fake API store")
            .tokens
            .get(token)
            .cloned();
        let status = match known {
            Some((user, audiences)) => {
                let both: Vec<&String> = asked.iter().filter(|a| audiences.contains(a)).collect();
                if both.is_empty() && !asked.is_empty() {
                    json!({"authenticated": false, "error": "token audiences do not match"})
                } else {
                    json!({"authenticated": true, "user": {"username": user}, "audiences": both})
                }
            }
            None => json!({"authenticated": false, "error": "invalid bearer token"}),
        };
        let mut answer = review.clone();
        answer["status"] = status;
        return (StatusCode::CREATED, axum::Json(answer)).into_response();
    }
    if method == Method::PATCH
        && let Some(rest) = uri.path().strip_prefix("/api/v1/namespaces/")
        && let [ns, "configmaps", name] = rest.split('/').collect::<Vec<_>>().as_slice()
    {
        // Server-side apply of a ConfigMap: the applied fields over what is there.
        let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
            return bad_request("patch is not JSON");
        };
        let existing = {
            let store = shared.store.lock().expect("fake API store");
            store
                .objects
                .get("v1/configmaps")
                .and_then(|o| o.get(&((*ns).to_owned(), (*name).to_owned())))
                .cloned()
        };
        let mut object = existing.unwrap_or_else(|| {
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}})
        });
        for field in ["data", "binaryData"] {
            if let Some(v) = patch.get(field) {
                object[field] = v.clone();
            }
        }
        if let Some(labels) = patch["metadata"].get("labels") {
            object["metadata"]["labels"] = labels.clone();
        }
        put(&shared, object.clone());
        return axum::Json(object).into_response();
    }
    // Server-side apply of one object of a served kind (the applied
    // object replaces the one there, its status kept: this server has one
    // field manager per object).
    if method == Method::PATCH
        && patch_of(&headers, "apply-patch")
        && let Some((collection_path, name)) = uri.path().rsplit_once('/')
        && let Some(target) = Target::parse(collection_path)
    {
        let Ok(mut object) = serde_json::from_slice::<Value>(&body) else {
            return bad_request("apply patch is not JSON");
        };
        let ns = target.namespace.clone().unwrap_or_default();
        let existing = stored(&shared, &target, name);
        object["metadata"]["name"] = name.into();
        if !ns.is_empty() {
            object["metadata"]["namespace"] = ns.into();
        }
        if let Some(old_status) = existing.as_ref().and_then(|e| e.get("status")) {
            object["status"] = old_status.clone();
        }
        put(&shared, object.clone());
        return axum::Json(object).into_response();
    }
    // A merge patch (RFC 7386) of one object's `status` subresource:
    // `.../PLURAL/NAME/status`.
    if method == Method::PATCH
        && patch_of(&headers, "merge-patch+json")
        && let Some(object_path) = uri.path().strip_suffix("/status")
        && let Some((collection_path, name)) = object_path.rsplit_once('/')
        && let Some(target) = Target::parse(collection_path)
    {
        let Some(mut object) = stored(&shared, &target, name) else {
            return not_found(name);
        };
        let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
            return bad_request("patch is not JSON");
        };
        // A `resourceVersion` in the patch is a precondition.
        if let Some(rv) = patch["metadata"]["resourceVersion"].as_str()
            && object["metadata"]["resourceVersion"].as_str() != Some(rv)
        {
            let body = status(
                StatusCode::CONFLICT,
                "Conflict",
                format!("the object has been modified (resourceVersion {rv} is stale)"),
            );
            return (StatusCode::CONFLICT, axum::Json(body)).into_response();
        }
        // The status subresource changes the status only.
        if let Some(new_status) = patch.get("status") {
            let mut current = object.get("status").cloned().unwrap_or(Value::Null);
            json_patch::merge(&mut current, new_status);
            object["status"] = current;
        }
        put(&shared, object.clone());
        return axum::Json(object).into_response();
    }
    // JSON Patch (RFC 6902) of one object, `test` operations included.
    if method == Method::PATCH
        && patch_of(&headers, "json-patch+json")
        && let Some((collection_path, name)) = uri.path().rsplit_once('/')
        && let Some(target) = Target::parse(collection_path)
    {
        let Some(mut object) = stored(&shared, &target, name) else {
            return not_found(name);
        };
        let patched = serde_json::from_slice::<json_patch::Patch>(&body)
            .map_err(|e| e.to_string())
            .and_then(|p| json_patch::patch(&mut object, &p).map_err(|e| e.to_string()));
        if let Err(e) = patched {
            let body = status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e);
            return (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response();
        }
        put(&shared, object.clone());
        return axum::Json(object).into_response();
    }
    // GET of one object: `.../namespaces/NS/PLURAL/NAME` (or `.../PLURAL/NAME`).
    if method == Method::GET
        && Target::parse(uri.path()).is_none()
        && let Some((collection_path, name)) = uri.path().rsplit_once('/')
        && let Some(target) = Target::parse(collection_path)
    {
        let ns = target.namespace.clone().unwrap_or_default();
        let found = shared
            .store
            .lock()
            .expect("fake API store")
            .objects
            .get(&target.collection())
            .and_then(|o| o.get(&(ns, name.to_owned())))
            .map(|o| target.render(o, false));
        return match found {
            Some(o) => axum::Json(o).into_response(),
            None => {
                let body = status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("{} {name:?} not found", target.plural),
                );
                (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
            }
        };
    }
    // DELETE of one object: `.../namespaces/NS/PLURAL/NAME`.
    if method == Method::DELETE
        && let Some((collection_path, name)) = uri.path().rsplit_once('/')
        && let Some(target) = Target::parse(collection_path)
    {
        let ns = target.namespace.clone().unwrap_or_default();
        let deleted = delete(&shared, target.api_version, target.kind, &ns, name);
        if !deleted {
            let body = status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{} {name:?} not found", target.plural),
            );
            return (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
        }
        let body = status(StatusCode::OK, "Success", format!("{name:?} deleted"));
        return axum::Json(body).into_response();
    }
    // POST to a namespaced collection: create.
    if method == Method::POST
        && let Some(target) = Target::parse(uri.path())
        && let Some(ns) = target.namespace.clone()
    {
        let Ok(mut object) = serde_json::from_slice::<Value>(&body) else {
            let body = status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON".into());
            return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
        };
        object["apiVersion"] = target.api_version.into();
        object["kind"] = target.kind.into();
        object["metadata"]["namespace"] = ns.clone().into();
        // As the API server: an owner reference names its owner's UID.
        let owners = object["metadata"]["ownerReferences"].as_array();
        if owners.is_some_and(|o| o.iter().any(|r| r["uid"].as_str().unwrap_or("").is_empty())) {
            let body = status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "metadata.ownerReferences.uid: Invalid value: \"\": uid must not be empty".into(),
            );
            return (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response();
        }
        let name = object["metadata"]["name"].as_str().unwrap_or("").to_owned();
        let exists = shared
            .store
            .lock()
            .expect("fake API store")
            .objects
            .get(&target.collection())
            .is_some_and(|o| o.contains_key(&(ns, name.clone())));
        if exists {
            let body = status(
                StatusCode::CONFLICT,
                "AlreadyExists",
                format!("{} {name:?} already exists", target.plural),
            );
            return (StatusCode::CONFLICT, axum::Json(body)).into_response();
        }
        put(&shared, object.clone());
        return (StatusCode::CREATED, axum::Json(object)).into_response();
    }
    if method != Method::GET {
        let body = status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} {uri}"),
        );
        return (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response();
    }
    let Some(target) = Target::parse(uri.path()) else {
        let body = status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{uri} not found"),
        );
        return (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
    };
    let selector = match FieldSelector::parse(query.get("fieldSelector")) {
        Ok(s) => s,
        Err(e) => {
            let body = status(StatusCode::BAD_REQUEST, "BadRequest", e);
            return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
        }
    };
    let namespace = target.namespace.clone();
    let in_scope = move |o: &Value| {
        namespace
            .as_deref()
            .is_none_or(|ns| o["metadata"]["namespace"].as_str() == Some(ns))
            && selector.matches(o)
    };
    let watching = query.get("watch").is_some_and(|w| w == "1" || w == "true");
    if !watching {
        let mut hold = shared.hold.subscribe();
        let _ = hold.wait_for(|h| !h).await;
        let store = shared.store.lock().expect("fake API store");
        let items: Vec<Value> = store
            .objects
            .get(&target.collection())
            .into_iter()
            .flat_map(|o| o.values())
            .filter(|o| in_scope(o))
            .map(|o| target.render(o, true))
            .collect();
        let body = json!({
            "apiVersion": target.api_version,
            "kind": format!("{}List", target.kind),
            "metadata": {"resourceVersion": store.rv.to_string()},
            "items": items,
        });
        return axum::Json(body).into_response();
    }

    // A watch.
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (tx, rx) = mpsc::channel::<Result<String, std::convert::Infallible>>(256);
    let mut epoch = shared.epoch.subscribe();
    let (mut live, backlog, mut last) = {
        let store = shared.store.lock().expect("fake API store");
        let live = shared.changes.subscribe();
        if from != 0 && from < store.oldest {
            let gone = status(
                StatusCode::GONE,
                "Expired",
                format!("too old resource version: {from} ({})", store.oldest),
            );
            let line = json!({"type": "ERROR", "object": gone}).to_string() + "\n";
            return Body::from(line).into_response();
        }
        let backlog: Vec<Value> = if from == 0 {
            // No revision: the current state as ADDED events, then live ones.
            store
                .objects
                .get(&target.collection())
                .into_iter()
                .flat_map(|o| o.values())
                .filter(|o| in_scope(o))
                .map(|o| json!({"type": "ADDED", "object": target.render(o, false)}))
                .collect()
        } else {
            store
                .history
                .iter()
                .filter(|c| c.rv > from && c.collection == target.collection())
                .filter(|c| in_scope(&c.object))
                .map(|c| json!({"type": c.event, "object": target.render(&c.object, false)}))
                .collect()
        };
        (live, backlog, store.rv)
    };
    let collection = target.collection();
    let (api_version, kind) = (target.api_version, target.kind);
    let in_scope = in_scope.clone();
    tokio::spawn(async move {
        for event in backlog {
            if tx.send(Ok(event.to_string() + "\n")).await.is_err() {
                return;
            }
        }
        loop {
            let change = tokio::select! {
                c = live.recv() => c,
                _ = epoch.changed() => return,
            };
            // Lagging behind the broadcast ends the watch; the client resumes.
            let Ok(change) = change else { return };
            if change.rv <= last && change.event != "BOOKMARK" {
                continue;
            }
            let event = if change.event == "BOOKMARK" {
                if !bookmarks {
                    continue;
                }
                json!({"type": "BOOKMARK", "object": {
                    "apiVersion": api_version, "kind": kind,
                    "metadata": {"resourceVersion": change.rv.to_string()},
                }})
            } else if change.collection == collection && in_scope(&change.object) {
                json!({"type": change.event, "object": change.object})
            } else {
                continue;
            };
            last = last.max(change.rv);
            if tx.send(Ok(event.to_string() + "\n")).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(ReceiverStream::new(rx)))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Leases: `GET`, `POST` (create) and `PATCH` (server-side apply or
/// strategic merge) on `NAMESPACE/leases[/NAME]`. Server-side apply's
/// conflict rule is kept for `spec` fields: applying a value to a field
/// another field manager owns is a `409 Conflict` (that is what makes a
/// Lease a lock); a strategic merge patch takes fields over, and `null`
/// removes a field with its owner.
fn lease(
    store: &mut Store,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    body: &[u8],
) -> (StatusCode, Value) {
    let fail =
        |code: StatusCode, reason: &str, message: String| (code, status(code, reason, message));
    let parts: Vec<&str> = path.split('/').collect();
    let (namespace, name) = match (method, parts.as_slice()) {
        (&Method::POST, [ns, "leases"]) => {
            let Ok(object) = serde_json::from_slice::<Value>(body) else {
                return fail(StatusCode::BAD_REQUEST, "BadRequest", "not JSON".into());
            };
            (
                (*ns).to_owned(),
                object["metadata"]["name"].as_str().unwrap_or("").to_owned(),
            )
        }
        (_, [ns, "leases", name]) => ((*ns).to_owned(), (*name).to_owned()),
        _ => {
            return fail(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{path} not found"),
            );
        }
    };
    let key = (namespace.clone(), name.clone());
    store.rv += 1;
    let rv = store.rv.to_string();
    match *method {
        Method::GET => match store.leases.get(&key) {
            Some((object, _)) => (StatusCode::OK, object.clone()),
            None => fail(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("leases {name:?} not found"),
            ),
        },
        Method::POST => {
            if store.leases.contains_key(&key) {
                return fail(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    format!("leases {name:?} already exists"),
                );
            }
            let object = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": namespace, "resourceVersion": rv},
                "spec": {},
            });
            store.leases.insert(key, (object.clone(), BTreeMap::new()));
            (StatusCode::CREATED, object)
        }
        Method::PATCH => {
            let manager = query.get("fieldManager").cloned().unwrap_or_default();
            let apply = patch_of(headers, "apply-patch");
            let Ok(patch) = serde_json::from_slice::<Value>(body) else {
                return fail(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "patch is not JSON".into(),
                );
            };
            let Some((object, owners)) = store.leases.get_mut(&key) else {
                return fail(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("leases {name:?} not found"),
                );
            };
            let fields = patch["spec"].as_object().cloned().unwrap_or_default();
            if apply {
                for (field, value) in &fields {
                    let owner = owners.get(field).filter(|o| **o != manager);
                    if let Some(owner) = owner
                        && object["spec"].get(field).is_some_and(|v| v != value)
                    {
                        return fail(
                            StatusCode::CONFLICT,
                            "Conflict",
                            format!(
                                "Apply failed with 1 conflict: conflict with {owner:?}: .spec.{field}"
                            ),
                        );
                    }
                }
            }
            if !object["spec"].is_object() {
                object["spec"] = json!({});
            }
            for (field, value) in fields {
                let spec = object["spec"].as_object_mut();
                let Some(spec) = spec else { continue };
                if value.is_null() {
                    spec.remove(&field);
                    owners.remove(&field);
                } else {
                    spec.insert(field.clone(), value);
                    owners.insert(field, manager.clone());
                }
            }
            object["metadata"]["resourceVersion"] = rv.into();
            (StatusCode::OK, object.clone())
        }
        _ => fail(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} {path}"),
        ),
    }
}
