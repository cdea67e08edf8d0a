//! What is analysed: objects read from YAML files (each with the file and
//! line it starts on) or handed over by the daemon, the mesh config, and
//! the documents that could not be read.

use std::collections::{BTreeMap, HashMap};

use crds::document::{Object, ParseError, parse_value, split_documents};
use crds::mesh::MeshConfigSpec;

use crate::message::{self, Message, Resource};

/// An object read, with where it was read and whether istiod's validation
/// takes it.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The object, namespace filled in.
    pub object: Object,
    /// Its identity and origin, for messages about it.
    pub resource: Resource,
    /// Why istiod's validation refuses it (`None`: accepted). A refused
    /// object is still analysed, as istioctl analyses what it reads.
    pub invalid: Option<String>,
    /// A workload's own annotations (its `object` is the pod of its
    /// template, with the template's); `None` for other objects.
    pub owner_annotations: Option<BTreeMap<String, String>>,
}

/// The objects to analyse.
#[derive(Clone, Debug)]
pub struct Input {
    /// Objects read, in the order read (add them with the methods, which
    /// keep one object per kind, namespace and name).
    pub entries: Vec<Entry>,
    /// Documents that did not fit their kind's schema at all (a missing
    /// required field, a wrong type, an unknown field), or were not YAML:
    /// reported by the schema analyzer, not analysed further.
    pub unreadable: Vec<Message>,
    /// The mesh config: a `--mesh-config` file, or the `istio` ConfigMap
    /// of `istio-system` when one is read; else Istio's defaults.
    pub mesh: MeshConfigSpec,
    /// Objects of kinds this control plane does not read (`Role`, ...):
    /// skipped, counted. (A workload, `Deployment` and the like, is read as
    /// the pod of its template.)
    pub skipped: usize,
    default_namespace: String,
    /// Positions in `entries` by kind, namespace and name.
    index: HashMap<(String, Option<String>, String), usize>,
    /// The texts read, by name: where messages find their fields' lines.
    texts: HashMap<String, std::sync::Arc<str>>,
}

impl Input {
    /// No objects yet; documents without `metadata.namespace` will be put
    /// in `default_namespace`, as `kubectl apply -n` (and istioctl
    /// analyze) does.
    pub fn new(default_namespace: &str) -> Input {
        Input {
            entries: Vec::new(),
            unreadable: Vec::new(),
            mesh: MeshConfigSpec::default(),
            skipped: 0,
            default_namespace: default_namespace.to_owned(),
            index: HashMap::new(),
            texts: HashMap::new(),
        }
    }

    /// Reads every document of a multi-document YAML (or JSON) text;
    /// `name` (a file path, or `-` for standard input) is the reference
    /// messages give, with the line each document starts on. `List`s are
    /// unrolled. A document that cannot be read is kept as a
    /// `SchemaValidationError`; reading goes on after it (a YAML syntax
    /// error ends the text, as the YAML stream cannot be resumed).
    pub fn add_text(&mut self, name: &str, text: &str) {
        self.texts.insert(name.to_owned(), text.into());
        let starts = document_lines(text);
        for (index, value) in split_documents(text) {
            let line = starts.get(index).copied().flatten();
            let reference = match line {
                Some(line) => format!("{name}:{line}"),
                None => name.to_owned(),
            };
            let value = match value {
                Ok(v) => v,
                Err(e) => {
                    self.unreadable
                        .push(unreadable(None, format!("{reference}: {e}")));
                    continue;
                }
            };
            self.add_value(value, &reference);
        }
    }

    /// Reads one document (an object, or a `List` of them) as [`Input::add_text`]
    /// reads each: a kind the control plane reads is parsed and validated;
    /// a workload is read as the pod of its template; other kinds are
    /// skipped; what does not fit its schema is kept as a
    /// `SchemaValidationError`. `reference` is where it was read.
    pub fn add_value(&mut self, value: serde_json::Value, reference: &str) {
        let workload = workload_pods(&value, &self.default_namespace);
        for result in parse_value(value, &self.default_namespace) {
            match result {
                Ok(object) => self.add_object(object, Some(reference.to_owned())),
                Err(e) if e.is_unsupported_kind() => match workload.clone() {
                    Some((kind, pod, owner_annotations)) => {
                        let mut resource = resource_of(
                            &Object::Pod(Box::new(pod.clone())),
                            Some(reference.to_owned()),
                        );
                        resource.kind = kind;
                        self.insert(Entry {
                            object: Object::Pod(Box::new(pod)),
                            resource,
                            invalid: None,
                            owner_annotations,
                        });
                    }
                    None => self.skipped += 1,
                },
                Err(e) => self.add_error(reference, &e),
            }
        }
    }

    /// Where the field `path` of the object read at `reference`
    /// (`file:line`, the line its document starts on) is: `file:line` of
    /// the field (or of the deepest part of its path found), `None` when
    /// the text is not known or the path not there.
    pub fn field_reference(&self, reference: &str, path: &str) -> Option<String> {
        let (file, line) = reference.rsplit_once(':')?;
        let text = self.texts.get(file)?;
        let line = crate::lines::field_line(text, line.parse().ok()?, path)?;
        Some(format!("{file}:{line}"))
    }

    /// Keeps a document that could not be read (`reference`: where it
    /// was) as a `SchemaValidationError`, on the object the error names
    /// when it names one.
    pub fn add_error(&mut self, reference: &str, e: &ParseError) {
        let resource = failed_resource(e, reference);
        let text = match &resource {
            Some(_) => reason(e),
            None => format!("{reference}: {e}"),
        };
        self.unreadable.push(unreadable(resource.as_ref(), text));
    }

    /// Adds one object (its namespace already set), run through istiod's
    /// validation; it replaces an object of the same kind and name read
    /// before. The `istio` ConfigMap of `istio-system` becomes the mesh
    /// config (a mesh config that does not parse is a
    /// `SchemaValidationError` on the ConfigMap).
    pub fn add_object(&mut self, object: Object, reference: Option<String>) {
        let invalid = crds::validate::validate(&object).err().map(|e| reason(&e));
        let resource = resource_of(&object, reference);
        let mut invalid = invalid;
        if let Object::ConfigMap(cm) = &object
            && crds::mesh::is_mesh_configmap(cm)
        {
            match crds::mesh::parse(cm) {
                Ok(mesh) => self.mesh = mesh,
                Err(e) => invalid = Some(reason(&e)),
            }
        }
        self.insert(Entry {
            object,
            resource,
            invalid,
            owner_annotations: None,
        });
    }

    /// Adds `entry`, replacing an object of the same kind, namespace and
    /// name read before: the last one read wins, as when the files are
    /// applied in order.
    fn insert(&mut self, entry: Entry) {
        let r = &entry.resource;
        let key = (r.kind.clone(), r.namespace.clone(), r.name.clone());
        match self.index.get(&key) {
            Some(&i) => self.entries[i] = entry,
            None => {
                self.index.insert(key, self.entries.len());
                self.entries.push(entry);
            }
        }
    }

    /// Takes a mesh config file (`MeshConfig` YAML, as istioctl's
    /// `--meshConfigFile`).
    ///
    /// # Errors
    /// The YAML or field error, naming the field.
    pub fn set_mesh_config(&mut self, text: &str) -> Result<(), String> {
        let value = match split_documents(text).into_iter().next() {
            None => serde_json::Value::Object(Default::default()),
            Some((_, value)) => value.map_err(|e| e.to_string())?,
        };
        self.mesh = serde_json::from_value(value).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Adds istioctl's stand-in ingress gateway when the input has no
    /// `istio-system/istio-ingressgateway` Service: a Pod labelled
    /// `istio: ingressgateway` and its Service (TCP ports 80 -> 8080,
    /// 443 -> 8443, 31400, 15443, as Istio's gateway chart makes it), so that Gateways selecting the default ingress gateway can
    /// be checked offline (istioctl's `AddDefaultResources`).
    pub fn add_default_ingress(&mut self) {
        let present = self.entries.iter().any(|e| {
            matches!(e.object, Object::Service(_))
                && e.resource.namespace.as_deref() == Some("istio-system")
                && e.resource.name == "istio-ingressgateway"
        });
        if present {
            return;
        }
        let mut defaults = Input::new("istio-system");
        defaults.add_text("", DEFAULT_INGRESS);
        for mut entry in defaults.entries {
            entry.resource.reference = None;
            self.insert(entry);
        }
    }
}

/// istioctl's default ingress gateway workload and Service.
const DEFAULT_INGRESS: &str = "
apiVersion: v1
kind: Pod
metadata:
  name: istio-ingressgateway-dummypod
  namespace: istio-system
  labels:
    istio: ingressgateway
spec:
  containers:
  - name: istio-proxy
---
apiVersion: v1
kind: Service
metadata:
  name: istio-ingressgateway
  namespace: istio-system
spec:
  selector:
    istio: ingressgateway
  ports:
  - {name: http2, port: 80, protocol: TCP, targetPort: 8080}
  - {name: https, port: 443, protocol: TCP, targetPort: 8443}
  - {name: tcp, port: 31400, protocol: TCP, targetPort: 31400}
  - {name: tls, port: 15443, protocol: TCP, targetPort: 15443}
";

/// The pods a workload (`Deployment`, `StatefulSet`, `DaemonSet`,
/// `ReplicaSet`, `ReplicationController`, `Job`, `CronJob`) would run, as
/// one pod of its template (labels, annotations, namespace, service
/// account): a
/// manifest's workloads are the pods selectors are checked against,
/// where a cluster would have run them. `(kind, pod)`.
fn workload_pods(value: &serde_json::Value, default_namespace: &str) -> Option<Workload> {
    let kind = value.get("kind")?.as_str()?;
    let spec = value.get("spec")?;
    let template = match kind {
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => spec.get("template")?,
        "CronJob" => spec.get("jobTemplate")?.get("spec")?.get("template")?,
        _ => return None,
    };
    let meta = value.get("metadata")?;
    let string = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_owned);
    let template_meta = template.get("metadata");
    let map = |key: &str| {
        template_meta
            .and_then(|m| m.get(key))
            .and_then(|l| serde_json::from_value(l.clone()).ok())
    };
    let (labels, annotations) = (map("labels"), map("annotations"));
    let pod = crds::document::PodInfo {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: string(meta.get("name")),
            namespace: string(meta.get("namespace")).or_else(|| Some(default_namespace.to_owned())),
            labels,
            annotations,
            ..Default::default()
        },
        service_account_name: string(
            template
                .get("spec")
                .and_then(|s| s.get("serviceAccountName")),
        ),
        runs_as_proxy_uid: template
            .get("spec")
            .and_then(|s| {
                serde_json::from_value::<k8s_openapi::api::core::v1::PodSpec>(s.clone()).ok()
            })
            .is_some_and(|s| crds::document::runs_as_proxy_uid(&s)),
        ready: true,
        ..Default::default()
    };
    let owner = meta
        .get("annotations")
        .and_then(|a| serde_json::from_value(a.clone()).ok());
    Some((kind.to_owned(), pod, owner))
}

/// A workload read as its pod: `(kind, pod, its own annotations)`.
type Workload = (
    String,
    crds::document::PodInfo,
    Option<BTreeMap<String, String>>,
);

/// The workload kinds read as the pod of their template.
pub const WORKLOAD_KINDS: [&str; 7] = [
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "ReplicationController",
    "Job",
    "CronJob",
];

/// Kinds without a namespace.
fn cluster_scoped(kind: &str) -> bool {
    matches!(kind, "Namespace" | "Node" | "GatewayClass")
}

fn resource_of(object: &Object, reference: Option<String>) -> Resource {
    let meta = object.metadata();
    let kind = object.kind();
    Resource {
        kind: kind.to_owned(),
        namespace: if cluster_scoped(kind) {
            None
        } else {
            meta.namespace.clone()
        },
        name: meta.name.clone().unwrap_or_default(),
        reference,
    }
}

/// The object a document that failed to parse was, when the error names it.
fn failed_resource(e: &ParseError, reference: &str) -> Option<Resource> {
    let ParseError::InvalidField { kind, name, .. } = e else {
        return None;
    };
    let (namespace, name) = match name.split_once('/') {
        Some((ns, n)) if !cluster_scoped(kind) => (Some(ns.to_owned()), n.to_owned()),
        _ => (None, name.clone()),
    };
    Some(Resource {
        kind: kind.clone(),
        namespace,
        name,
        reference: Some(reference.to_owned()),
    })
}

/// The error without the object's name (the message's origin gives it).
fn reason(e: &ParseError) -> String {
    match e {
        ParseError::InvalidField { field, reason, .. } => format!("{field}: {reason}"),
        other => other.to_string(),
    }
}

fn unreadable(resource: Option<&Resource>, text: String) -> Message {
    Message::new(
        message::SCHEMA_VALIDATION_ERROR,
        resource,
        vec![text.into()],
    )
}

/// The line (1-based) each document of a YAML stream starts on, in the
/// order the YAML parser yields them (an empty document is `None`).
/// Documents are separated by `---` lines; comments and blank lines before
/// a document's first content are not its start.
fn document_lines(text: &str) -> Vec<Option<usize>> {
    let mut out = Vec::new();
    let mut open = false;
    let mut start = None;
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("---") {
            if open {
                out.push(start);
            }
            open = true;
            start = None;
        } else if !line.trim().is_empty() && !line.trim_start().starts_with('#') && line != "..." {
            open = true;
            start.get_or_insert(i + 1);
        }
    }
    if open {
        out.push(start);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_object_of_a_name_wins() {
        let mut input = Input::new("default");
        let vs = |hosts: &str| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: a}}\n\
                 spec: {{hosts: [{hosts}], http: [{{route: [{{destination: {{host: a}}}}]}}]}}\n"
            )
        };
        input.add_text("one.yaml", &vs("a"));
        input.add_text("two.yaml", &vs("b"));
        assert_eq!(input.entries.len(), 1);
        let Object::VirtualService(v) = &input.entries[0].object else {
            panic!()
        };
        assert_eq!(v.spec.hosts, ["b"]);
        assert_eq!(
            input.entries[0].resource.reference.as_deref(),
            Some("two.yaml:1")
        );
    }

    #[test]
    fn document_start_lines() {
        let text = "# c\napiVersion: v1\nkind: A\n---\n\n# x\nkind: B\n---\n---\nkind: C\n";
        assert_eq!(document_lines(text), vec![Some(2), Some(7), None, Some(10)]);
        assert_eq!(document_lines("---\nkind: A\n"), vec![Some(2)]);
    }

    #[test]
    fn unreadable_and_invalid_documents_are_kept_with_their_lines() {
        let mut input = Input::new("default");
        input.add_text(
            "mesh.yaml",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\n\
             spec: {hosts: [a], http: [{route: [{}]}]}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: x}\n\
             spec: {selector: {istio: ingressgateway}}\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: r}\n---\n\
             apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n\
             spec: {template: {metadata: {labels: {app: d}}, spec: {containers: []}}}\n",
        );
        assert_eq!(input.unreadable.len(), 1, "{:?}", input.unreadable);
        assert_eq!(
            input.unreadable[0].to_string(),
            "Error [IST0106] (VirtualService default/a mesh.yaml:1) Schema validation error: \
             spec.http[0].route[0]: missing field `destination`"
        );
        assert_eq!(input.entries.len(), 2);
        let gateway = &input.entries[0];
        assert_eq!(gateway.resource.friendly_name(), "Gateway x/g");
        assert_eq!(gateway.resource.reference.as_deref(), Some("mesh.yaml:6"));
        assert_eq!(
            gateway.invalid.as_deref(),
            Some("spec.servers: at least one server is required")
        );
        assert_eq!(input.skipped, 1);
        let deployment = &input.entries[1];
        assert_eq!(deployment.resource.friendly_name(), "Deployment default/d");
        let Object::Pod(pod) = &deployment.object else {
            panic!("{:?}", deployment.object)
        };
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("app").map(String::as_str), Some("d"));
    }
}
