//! Sidecar injection, as Istio's injector does it with its default
//! `sidecar` template (`files/injection-template.yaml` of the
//! istio-discovery chart) and the post-processing of `pkg/kube/inject`:
//!
//! 1. The policy ([`inject_required`]): `hostNetwork` pods, ignored
//!    namespaces, already injected pods and `sidecar.istio.io/inject:
//!    "false"` (label, else annotation) are left alone.
//! 2. The template ([`render_sidecar`]): the `istio-init` init container
//!    (iptables, from the `traffic.sidecar.istio.io/*` annotations and the
//!    chart values), the `istio-proxy` sidecar (a native sidecar: an init
//!    container with `restartPolicy: Always`, unless disabled), its
//!    environment, probes, security context, resources and volumes, and the
//!    labels and annotations Istio adds.
//! 3. The merge into the pod (containers by name, the user's own
//!    `istio-proxy` fields winning), app probes rewritten to the agent's
//!    status port, Prometheus merge annotations, and the
//!    `sidecar.istio.io/status` annotation.
//!
//! Pods are handled as JSON (`serde_json::Value`) so that every field the
//! user wrote survives untouched.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

/// Namespaces the injector never touches (Istio's ignored namespaces).
pub const IGNORED_NAMESPACES: [&str; 4] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "local-path-storage",
];
/// The annotation recording what was injected.
pub const STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
/// Istio's proxy uid and gid (`istio-proxy`), excluded from capture.
pub const PROXY_ID: i64 = 1337;
/// The agent's port serving merged Prometheus metrics (`/stats/prometheus`).
pub const AGENT_PROMETHEUS_PORT: &str = "15020";
/// The label (or, with lower priority, annotation) that opts a pod in or out.
pub const INJECT_LABEL: &str = "sidecar.istio.io/inject";

/// Why injection failed (the pod is refused or left as it was).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InjectError {
    /// An annotation's value is not valid; names the annotation.
    #[error("annotation {annotation}: {reason}")]
    InvalidAnnotation {
        /// The annotation, e.g. `traffic.sidecar.istio.io/includeOutboundIPRanges`.
        annotation: String,
        /// What is wrong.
        reason: String,
    },
    /// The object is not what was expected; names the field.
    #[error("{field}: {reason}")]
    InvalidObject {
        /// The field path.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

/// The injector's default values (chart format), see [`InjectionConfig::defaults`].
pub const DEFAULT_VALUES: &str = include_str!("values.yaml");

/// The injector's configuration: Istio's `istio-sidecar-injector`
/// ConfigMap (`values`: the chart's `global`, `sidecarInjectorWebhook`,
/// `revision`, and `pilot.cni`/`pilot.env`) and the mesh config.
#[derive(Clone, Debug)]
pub struct InjectionConfig {
    /// The chart values, as JSON.
    pub values: Value,
    /// `MeshConfig` (`trustDomain`, `defaultConfig`, `enablePrometheusMerge`, ...), as JSON.
    pub mesh: Value,
    /// Inject `istio-proxy` as a native sidecar (Istio's default on
    /// Kubernetes 1.29 and later, `ENABLE_NATIVE_SIDECARS`).
    pub native_sidecars: bool,
    /// The control plane revision (`istio.io/rev`), `default`.
    pub revision: String,
}

impl InjectionConfig {
    /// From values text: the istio-discovery chart's `values.yaml` (its
    /// `_internal_defaults_do_not_set` section) or the injector
    /// ConfigMap's `values` (top level), picked as Istio's injector
    /// ConfigMap picks them: `global`, `sidecarInjectorWebhook`, `revision`,
    /// `pilot` (else the chart's `cni` and `env`), `gateways`. The mesh
    /// config starts as trust domain `cluster.local`, empty `defaultConfig`.
    ///
    /// # Errors
    /// The text is not YAML.
    pub fn from_chart_values(text: &str) -> Result<InjectionConfig, serde_yaml_ng::Error> {
        let all: Value = serde_yaml_ng::from_str(text)?;
        let defaults = all
            .get("_internal_defaults_do_not_set")
            .cloned()
            .unwrap_or(all);
        let pick = |from: Option<&Value>, keys: &[&str]| {
            let mut m = Map::new();
            for k in keys {
                if let Some(v) = from.and_then(|f| f.get(*k)) {
                    m.insert((*k).to_owned(), v.clone());
                }
            }
            Value::Object(m)
        };
        let mut values = pick(
            Some(&defaults),
            &["global", "sidecarInjectorWebhook", "revision"],
        );
        if let Value::Object(m) = &mut values {
            let pilot = match defaults.get("pilot") {
                Some(p) => p.clone(),
                None => pick(Some(&defaults), &["cni", "env"]),
            };
            m.insert("pilot".into(), pilot);
            m.insert(
                "gateways".into(),
                pick(
                    defaults.get("gateways"),
                    &["securityContext", "seccompProfile"],
                ),
            );
        }
        Ok(InjectionConfig {
            values,
            mesh: json!({"trustDomain": "cluster.local", "defaultConfig": {}}),
            native_sidecars: true,
            revision: "default".into(),
        })
    }

    /// The defaults this project ships (`webhook/src/values.yaml`: Istio's
    /// `proxyv2` image from `docker.io/istio`, the chart's settings), with
    /// `trust_domain` as the mesh's.
    ///
    /// # Errors
    /// Never for the shipped file; the type is that of [`InjectionConfig::from_chart_values`].
    pub fn defaults(trust_domain: &str) -> Result<InjectionConfig, serde_yaml_ng::Error> {
        let mut cfg = InjectionConfig::from_chart_values(DEFAULT_VALUES)?;
        cfg.mesh["trustDomain"] = json!(trust_domain);
        Ok(cfg)
    }

    fn value(&self, path: &str) -> Option<&Value> {
        lookup(&self.values, path)
    }

    /// A value printed as Go's template prints it ("" when absent).
    fn text(&self, path: &str) -> String {
        self.value(path).map(go_string).unwrap_or_default()
    }

    fn truthy(&self, path: &str) -> bool {
        self.value(path).is_some_and(truthy)
    }
}

/// `a.b.c` in a JSON tree.
pub fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

/// Sets `a.b.c` in a JSON tree, creating objects on the way.
pub fn set_path(v: &mut Value, path: &str, value: Value) {
    let mut cur = v;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, k) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Value::Object(m) = cur else { return };
        if i + 1 == parts.len() {
            m.insert((*k).to_owned(), value);
            return;
        }
        cur = m
            .entry((*k).to_owned())
            .or_insert(Value::Object(Map::new()));
    }
}

/// Go's template truthiness: false, 0, "", nil and empty collections are false.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// A scalar as Go's template prints it.
fn go_string(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

/// The pod as the injector sees it, plus what it knows of the workload.
#[derive(Clone, Debug)]
pub struct PodContext {
    /// The pod's namespace.
    pub namespace: String,
    /// The workload's name (Deployment, Job, ... or the pod itself):
    /// Istio's `DeploymentMeta.Name`.
    pub workload_name: String,
    /// The workload's `apiVersion` (`apps/v1`) and `kind` (`Deployment`).
    pub workload_type: (String, String),
    /// The proxy's uid and gid when not Istio's 1337: on OpenShift, from
    /// the namespace's `openshift.io/sa.scc.uid-range` and
    /// `sa.scc.supplemental-groups` ([`openshift_ids`]).
    pub proxy_ids: Option<(i64, i64)>,
}

/// On OpenShift, the ids the proxy must run as in a namespace: the last
/// of its `openshift.io/sa.scc.uid-range` (`start/size`) and of its
/// `openshift.io/sa.scc.supplemental-groups`, as Istio picks them. None
/// when the namespace has no (valid) range.
pub fn openshift_ids(namespace_annotations: &BTreeMap<String, String>) -> Option<(i64, i64)> {
    let last = |key: &str| -> Option<i64> {
        let range = namespace_annotations.get(key)?;
        let (start, size) = range.split_once('/')?;
        let (start, size): (i64, i64) = (start.trim().parse().ok()?, size.trim().parse().ok()?);
        (size > 0).then(|| start + size - 1)
    };
    let uid = last("openshift.io/sa.scc.uid-range")?;
    let gid = last("openshift.io/sa.scc.supplemental-groups").unwrap_or(uid);
    Some((uid, gid))
}

/// Whether Istio would inject this pod (namespace selection happens in
/// the MutatingWebhookConfiguration): not `hostNetwork`, not in an ignored
/// namespace, not injected already, not opted out by
/// `sidecar.istio.io/inject` (label first, then annotation; `true`/`false`),
/// and the `policy` (`enabled`: inject unless opted out; `disabled`:
/// only when opted in).
pub fn inject_required(pod: &Value, namespace: &str, policy_enabled: bool) -> bool {
    if lookup(pod, "spec.hostNetwork").and_then(Value::as_bool) == Some(true) {
        return false;
    }
    if IGNORED_NAMESPACES.contains(&namespace) {
        return false;
    }
    let annotations = lookup(pod, "metadata.annotations");
    if annotations.and_then(|a| a.get(STATUS_ANNOTATION)).is_some() {
        return false;
    }
    let opt = lookup(pod, "metadata.labels")
        .and_then(|l| l.get(INJECT_LABEL))
        .or_else(|| annotations.and_then(|a| a.get(INJECT_LABEL)))
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase);
    match opt.as_deref() {
        Some("true" | "y" | "yes" | "on") => true,
        Some("false" | "n" | "no" | "off") => false,
        _ => policy_enabled,
    }
}

struct Ctx<'a> {
    cfg: &'a InjectionConfig,
    pod: &'a PodContext,
    labels: Map<String, Value>,
    annotations: Map<String, Value>,
    spec: &'a Value,
    /// MeshConfig `defaultConfig` with the pod's `proxy.istio.io/config` over it.
    proxy_config: Value,
}

impl Ctx<'_> {
    fn annotation_or(&self, name: &str, default: &str) -> String {
        self.annotations
            .get(name)
            .map(go_string)
            .unwrap_or_else(|| default.to_owned())
    }

    /// `service.istio.io/canonical-name` (the pod's, else
    /// `app.kubernetes.io/name`, `app`, the workload's name) and
    /// `canonical-revision` (else `app.kubernetes.io/version`, `version`,
    /// `latest`); the sidecar template truncates the name to 63 characters
    /// and trims `-_.` (`trim`).
    fn canonical_labels(&self, labels: &mut Map<String, Value>, trim: bool) {
        let name = self
            .label("service.istio.io/canonical-name")
            .or_else(|| self.label("app.kubernetes.io/name"))
            .or_else(|| self.label("app"))
            .unwrap_or_else(|| self.pod.workload_name.clone());
        let name = if trim {
            let short: String = name.chars().take(63).collect();
            short.trim_matches(['-', '_', '.']).to_owned()
        } else {
            name
        };
        labels.insert("service.istio.io/canonical-name".into(), name.into());
        labels.insert(
            "service.istio.io/canonical-revision".into(),
            self.label("service.istio.io/canonical-revision")
                .or_else(|| self.label("app.kubernetes.io/version"))
                .or_else(|| self.label("version"))
                .unwrap_or_else(|| "latest".into())
                .into(),
        );
    }

    /// `istio.io/rev`, and the first app container as `kubectl`'s default
    /// (and default logs) container unless the pod names one.
    fn base_annotations(&self) -> Map<String, Value> {
        let mut annotations = Map::new();
        annotations.insert("istio.io/rev".into(), self.revision().into());
        if let Some(first) = self.app_containers().first() {
            for key in [
                "kubectl.kubernetes.io/default-logs-container",
                "kubectl.kubernetes.io/default-container",
            ] {
                if !self.has_annotation(key) {
                    annotations.insert(key.into(), first.clone().into());
                }
            }
        }
        annotations
    }

    /// The proxy's uid (Istio's `.ProxyUID`, 1337 unless OpenShift's range says otherwise).
    fn uid(&self) -> i64 {
        self.pod.proxy_ids.map_or(PROXY_ID, |(uid, _)| uid)
    }

    /// The proxy's gid (Istio's `.ProxyGID`).
    fn gid(&self) -> i64 {
        self.pod.proxy_ids.map_or(PROXY_ID, |(_, gid)| gid)
    }

    fn revision(&self) -> &str {
        if self.cfg.revision.is_empty() {
            "default"
        } else {
            &self.cfg.revision
        }
    }

    /// The templates the pod asks for (`inject.istio.io/templates`, comma
    /// separated), else `sidecarInjectorWebhook.defaultTemplates`, else `sidecar`.
    fn templates(&self) -> Result<Vec<Template>, InjectError> {
        let names: Vec<String> = match self.annotations.get("inject.istio.io/templates") {
            Some(v) => go_string(v)
                .split(',')
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .collect(),
            None => self
                .cfg
                .value("sidecarInjectorWebhook.defaultTemplates")
                .and_then(Value::as_array)
                .map(|l| l.iter().map(go_string).collect())
                .filter(|l: &Vec<String>| !l.is_empty())
                .unwrap_or_else(|| vec!["sidecar".into()]),
        };
        names
            .iter()
            .map(|n| match n.as_str() {
                "sidecar" => Ok(Template::Sidecar),
                "gateway" => Ok(Template::Gateway),
                "grpc-agent" => Ok(Template::GrpcAgent),
                other => Err(InjectError::InvalidAnnotation {
                    annotation: "inject.istio.io/templates".into(),
                    reason: format!(
                        "template {other:?} is not supported (built in: sidecar, gateway, grpc-agent; \
                         custom Go templates from sidecarInjectorWebhook.templates are not evaluated)"
                    ),
                }),
            })
            .collect()
    }

    fn render(&self, template: Template) -> Value {
        match template {
            Template::Sidecar => render_sidecar(self),
            Template::Gateway => render_gateway(self),
            Template::GrpcAgent => render_grpc_agent(self),
        }
    }

    fn has_annotation(&self, name: &str) -> bool {
        self.annotations.contains_key(name)
    }

    fn label(&self, name: &str) -> Option<String> {
        self.labels
            .get(name)
            .map(go_string)
            .filter(|s| !s.is_empty())
    }

    fn interception_mode(&self) -> String {
        self.annotation_or(
            "sidecar.istio.io/interceptionMode",
            &lookup(&self.proxy_config, "interceptionMode")
                .map(go_string)
                .unwrap_or_else(|| "REDIRECT".into()),
        )
    }

    fn status_port(&self) -> String {
        self.annotation_or(
            "status.sidecar.istio.io/port",
            &self.cfg.text("global.proxy.statusPort"),
        )
    }

    fn proxy_metadata(&self, key: &str) -> Option<String> {
        lookup(&self.proxy_config, "proxyMetadata")
            .and_then(|m| m.get(key))
            .map(go_string)
    }

    fn native(&self) -> bool {
        match self.annotations.get("sidecar.istio.io/nativeSidecar") {
            Some(v) => go_string(v) != "false",
            None => self.cfg.native_sidecars,
        }
    }

    fn cni(&self) -> bool {
        self.cfg.truthy("pilot.cni.enabled")
    }

    fn image(&self, values_path: &str) -> String {
        let configured =
            self.annotation_or("sidecar.istio.io/proxyImage", &self.cfg.text(values_path));
        if configured.contains('/') {
            return configured;
        }
        let hub = self.cfg.text("global.hub");
        let tag = self.cfg.text("global.tag");
        let variant = self.cfg.text("global.variant");
        let tag = if variant.is_empty() || variant == "default" {
            tag
        } else {
            format!("{tag}-{variant}")
        };
        format!("{hub}/{configured}:{tag}")
    }

    fn app_containers(&self) -> Vec<String> {
        self.spec
            .get("containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("name").and_then(Value::as_str))
            .filter(|n| *n != "istio-proxy")
            .map(str::to_owned)
            .collect()
    }
}

/// Go's `excludeInboundPort`: the status port added to the excluded
/// inbound ports (unless 0 or already there).
fn exclude_inbound_port(port: &str, excluded: &str) -> String {
    let port = port.trim();
    if port.is_empty() || port == "0" {
        return excluded.to_owned();
    }
    let parts: Vec<&str> = excluded
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if parts.contains(&port) {
        return excluded.to_owned();
    }
    if parts.is_empty() {
        port.to_owned()
    } else {
        format!("{},{port}", parts.join(","))
    }
}

/// A Kubernetes quantity in canonical form, as the API server (and Go's
/// marshaller) writes it: `2000m` -> `2`, `1024Mi` -> `1Gi`.
pub fn canonical_quantity(q: &str) -> String {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let Ok(mut n) = num.parse::<u64>() else {
        return q.to_owned();
    };
    const BINARY: [&str; 6] = ["", "Ki", "Mi", "Gi", "Ti", "Pi"];
    if let Some(mut i) = BINARY
        .iter()
        .position(|s| *s == suffix)
        .filter(|_| !suffix.is_empty())
    {
        while n != 0 && n % 1024 == 0 && i + 1 < BINARY.len() {
            n /= 1024;
            i += 1;
        }
        return format!("{n}{}", BINARY[i]);
    }
    if suffix == "m" {
        if n % 1000 == 0 {
            return (n / 1000).to_string();
        }
        return format!("{n}m");
    }
    q.to_owned()
}

/// Quantities in a `resources` block made canonical, nulls dropped.
fn canonical_resources(v: &Value) -> Value {
    let mut out = Map::new();
    if let Value::Object(m) = v {
        for (k, inner) in m {
            let Value::Object(q) = inner else { continue };
            let mut qs = Map::new();
            for (name, amount) in q {
                if amount.is_null() {
                    continue;
                }
                qs.insert(
                    name.clone(),
                    Value::String(canonical_quantity(&go_string(amount))),
                );
            }
            out.insert(k.clone(), Value::Object(qs));
        }
    }
    Value::Object(out)
}

/// The template's `resources`: from the `sidecar.istio.io/proxyCPU`,
/// `proxyMemory`, `proxyCPULimit`, `proxyMemoryLimit` annotations if any
/// is set, else `global.proxy.resources`.
fn resources(ctx: &Ctx<'_>) -> Value {
    let ann = |k: &str| ctx.annotations.get(k).map(go_string);
    let (cpu, mem, cpu_l, mem_l) = (
        ann("sidecar.istio.io/proxyCPU"),
        ann("sidecar.istio.io/proxyMemory"),
        ann("sidecar.istio.io/proxyCPULimit"),
        ann("sidecar.istio.io/proxyMemoryLimit"),
    );
    if cpu.is_some() || mem.is_some() || cpu_l.is_some() || mem_l.is_some() {
        let mut r = Map::new();
        let block = |a: Option<String>, b: Option<String>| {
            let mut m = Map::new();
            if let Some(a) = a {
                m.insert("cpu".into(), Value::String(canonical_quantity(&a)));
            }
            if let Some(b) = b {
                m.insert("memory".into(), Value::String(canonical_quantity(&b)));
            }
            Value::Object(m)
        };
        if cpu.is_some() || mem.is_some() {
            r.insert("requests".into(), block(cpu, mem));
        }
        if cpu_l.is_some() || mem_l.is_some() {
            r.insert("limits".into(), block(cpu_l, mem_l));
        }
        return Value::Object(r);
    }
    ctx.cfg
        .value("global.proxy.resources")
        .filter(|v| truthy(v))
        .map(canonical_resources)
        .unwrap_or_else(|| json!({}))
}

/// An env var; an empty value is left out, as Go's `omitempty` does.
fn env(name: &str, value: impl Into<String>) -> Value {
    let value = value.into();
    if value.is_empty() {
        json!({ "name": name })
    } else {
        json!({"name": name, "value": value})
    }
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
}

fn resource_env(name: &str, resource: &str) -> Value {
    json!({"name": name, "valueFrom": {"resourceFieldRef": {"resource": resource, "divisor": "1"}}})
}

/// Validates the traffic annotations as Istio does before rendering.
fn validate_annotations(ctx: &Ctx<'_>) -> Result<(), InjectError> {
    let bad = |annotation: &str, reason: String| InjectError::InvalidAnnotation {
        annotation: annotation.to_owned(),
        reason,
    };
    for key in [
        "traffic.sidecar.istio.io/includeOutboundIPRanges",
        "traffic.sidecar.istio.io/excludeOutboundIPRanges",
    ] {
        if let Some(v) = ctx.annotations.get(key).map(go_string) {
            if v.trim() == "*" {
                continue;
            }
            for cidr in v.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                if !valid_cidr(cidr) {
                    return Err(bad(
                        key,
                        format!("{cidr:?} is not a CIDR (IncludeIPRanges)"),
                    ));
                }
            }
        }
    }
    for key in [
        "traffic.sidecar.istio.io/includeInboundPorts",
        "traffic.sidecar.istio.io/excludeInboundPorts",
        "traffic.sidecar.istio.io/includeOutboundPorts",
        "traffic.sidecar.istio.io/excludeOutboundPorts",
    ] {
        if let Some(v) = ctx.annotations.get(key).map(go_string) {
            if v.trim() == "*" && key.contains("include") {
                continue;
            }
            for port in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                if !port.parse::<u16>().is_ok_and(|p| p > 0) {
                    let short = key.trim_start_matches("traffic.sidecar.istio.io/");
                    return Err(bad(key, format!("{port:?} is not a port ({short})")));
                }
            }
        }
    }
    Ok(())
}

fn valid_cidr(s: &str) -> bool {
    let (ip, len) = s.split_once('/').unwrap_or((s, ""));
    let Ok(addr) = ip.parse::<std::net::IpAddr>() else {
        return false;
    };
    if len.is_empty() {
        return true;
    }
    let max = if addr.is_ipv4() { 32 } else { 128 };
    len.parse::<u8>().is_ok_and(|l| l <= max)
}

/// Renders Istio's default `sidecar` template for a pod: the partial pod
/// (`metadata.labels`, `metadata.annotations`, `spec.initContainers`,
/// `spec.containers`, `spec.volumes`, `spec.imagePullSecrets`) that is
/// merged into it.
fn render_sidecar(ctx: &Ctx<'_>) -> Value {
    let cfg = ctx.cfg;
    let mode = ctx.interception_mode();
    let tproxy = mode == "TPROXY";
    let cap_bind = ctx.annotation_or(
        "sidecar.istio.io/capNetBindService",
        &cfg.text("global.proxy.capNetBindService"),
    ) == "true";
    let native = ctx.native();
    let cni = ctx.cni();
    let status_port = ctx.status_port();

    // Labels.
    let mut labels = Map::new();
    labels.insert(
        "security.istio.io/tlsMode".into(),
        ctx.label("security.istio.io/tlsMode")
            .unwrap_or_else(|| "istio".into())
            .into(),
    );
    if ctx.proxy_metadata("ISTIO_META_ENABLE_HBONE").as_deref() == Some("true") {
        labels.insert(
            "networking.istio.io/tunnel".into(),
            ctx.label("networking.istio.io/tunnel")
                .unwrap_or_else(|| "http".into())
                .into(),
        );
    }
    ctx.canonical_labels(&mut labels, true);

    // Annotations.
    let mut annotations = ctx.base_annotations();
    let include_ranges = ctx.annotation_or(
        "traffic.sidecar.istio.io/includeOutboundIPRanges",
        &cfg.text("global.proxy.includeIPRanges"),
    );
    let exclude_ranges = ctx.annotation_or(
        "traffic.sidecar.istio.io/excludeOutboundIPRanges",
        &cfg.text("global.proxy.excludeIPRanges"),
    );
    let include_inbound = ctx.annotation_or(
        "traffic.sidecar.istio.io/includeInboundPorts",
        &cfg.text("global.proxy.includeInboundPorts"),
    );
    let excluded_inbound = exclude_inbound_port(
        &status_port,
        &ctx.annotation_or(
            "traffic.sidecar.istio.io/excludeInboundPorts",
            &cfg.text("global.proxy.excludeInboundPorts"),
        ),
    );
    let include_outbound_set = ctx.has_annotation("traffic.sidecar.istio.io/includeOutboundPorts")
        || !cfg.text("global.proxy.includeOutboundPorts").is_empty();
    let include_outbound = ctx.annotation_or(
        "traffic.sidecar.istio.io/includeOutboundPorts",
        &cfg.text("global.proxy.includeOutboundPorts"),
    );
    let exclude_outbound_set = ctx.has_annotation("traffic.sidecar.istio.io/excludeOutboundPorts")
        || !cfg.text("global.proxy.excludeOutboundPorts").is_empty();
    let exclude_outbound = ctx.annotation_or(
        "traffic.sidecar.istio.io/excludeOutboundPorts",
        &cfg.text("global.proxy.excludeOutboundPorts"),
    );
    if cni {
        if cfg.text("pilot.cni.provider") == "multus" {
            let existing = ctx.annotation_or("k8s.v1.cni.cncf.io/networks", "");
            let networks = append_multus_network(&existing, "default/istio-cni");
            annotations.insert("k8s.v1.cni.cncf.io/networks".into(), networks.into());
        }
        annotations.insert(
            "sidecar.istio.io/interceptionMode".into(),
            mode.clone().into(),
        );
        if !include_ranges.is_empty() {
            annotations.insert(
                "traffic.sidecar.istio.io/includeOutboundIPRanges".into(),
                include_ranges.clone().into(),
            );
        }
        if !exclude_ranges.is_empty() {
            annotations.insert(
                "traffic.sidecar.istio.io/excludeOutboundIPRanges".into(),
                exclude_ranges.clone().into(),
            );
        }
        annotations.insert(
            "traffic.sidecar.istio.io/includeInboundPorts".into(),
            include_inbound.clone().into(),
        );
        annotations.insert(
            "traffic.sidecar.istio.io/excludeInboundPorts".into(),
            excluded_inbound.clone().into(),
        );
        if include_outbound_set {
            annotations.insert(
                "traffic.sidecar.istio.io/includeOutboundPorts".into(),
                include_outbound.clone().into(),
            );
        }
        if exclude_outbound_set {
            annotations.insert(
                "traffic.sidecar.istio.io/excludeOutboundPorts".into(),
                exclude_outbound.clone().into(),
            );
        }
        for key in [
            "traffic.sidecar.istio.io/kubevirtInterfaces",
            "istio.io/reroute-virtual-interfaces",
            "traffic.sidecar.istio.io/excludeInterfaces",
        ] {
            if let Some(v) = ctx.annotations.get(key).filter(|v| truthy(v)) {
                annotations.insert(key.into(), v.clone());
            }
        }
    }

    let hold = (lookup(&ctx.proxy_config, "holdApplicationUntilProxyStarts").is_some_and(truthy)
        || cfg.truthy("global.proxy.holdApplicationUntilProxyStarts"))
        && !native;
    let no_init = mode == "NONE" && !native;
    let log_level = ctx.annotation_or(
        "sidecar.istio.io/agentLogLevel",
        &cfg.text("global.logging.level"),
    );
    let pull_policy = cfg.text("global.imagePullPolicy");
    let res = resources(ctx);

    let mut init_containers = Vec::new();
    if !no_init && mode != "NONE" {
        let mut args: Vec<String> = vec![
            "istio-iptables".into(),
            "-p".into(),
            lookup(&cfg.mesh, "proxyListenPort")
                .map(go_string)
                .filter(|s| !s.is_empty() && s != "0")
                .unwrap_or_else(|| "15001".into()),
            "-z".into(),
            lookup(&cfg.mesh, "proxyInboundListenPort")
                .map(go_string)
                .filter(|s| !s.is_empty() && s != "0")
                .unwrap_or_else(|| "15006".into()),
            "-u".into(),
            if tproxy { PROXY_ID } else { ctx.uid() }.to_string(),
            "-m".into(),
            mode.clone(),
            "-i".into(),
            include_ranges.clone(),
            "-x".into(),
            exclude_ranges.clone(),
            "-b".into(),
            include_inbound.clone(),
            "-d".into(),
            if excluded_inbound.is_empty() {
                "15090,15021".into()
            } else {
                format!("15090,15021,{excluded_inbound}")
            },
        ];
        if include_outbound_set {
            args.extend(["-q".into(), include_outbound.clone()]);
        }
        if exclude_outbound_set {
            args.extend(["-o".into(), exclude_outbound.clone()]);
        }
        if let Some(v) = ctx.annotations.get("istio.io/reroute-virtual-interfaces") {
            args.extend(["-k".into(), go_string(v)]);
        } else if let Some(v) = ctx
            .annotations
            .get("traffic.sidecar.istio.io/kubevirtInterfaces")
        {
            args.extend(["-k".into(), go_string(v)]);
        }
        if let Some(v) = ctx
            .annotations
            .get("traffic.sidecar.istio.io/excludeInterfaces")
        {
            args.extend(["-c".into(), go_string(v)]);
        }
        args.push(format!("--log_output_level={log_level}"));
        if cfg.truthy("global.logAsJson") {
            args.push("--log_as_json".into());
        }
        if cni {
            args.extend(["--run-validation".into(), "--skip-rule-apply".into()]);
        } else if cfg.truthy("global.proxy_init.forceApplyIptables") {
            args.push("--force-apply".into());
        }
        if cfg.truthy("global.nativeNftables") {
            args.push("--native-nftables".into());
        }
        let privileged = cfg
            .value("global.proxy.privileged")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut security = json!({
            "allowPrivilegeEscalation": privileged,
            "privileged": privileged,
            "capabilities": {"drop": ["ALL"]},
        });
        if cni {
            security["readOnlyRootFilesystem"] = json!(true);
            security["runAsGroup"] = json!(if tproxy { PROXY_ID } else { ctx.gid() });
            security["runAsUser"] = json!(if tproxy { PROXY_ID } else { ctx.uid() });
            security["runAsNonRoot"] = json!(true);
        } else {
            security["capabilities"]["add"] = json!(["NET_ADMIN", "NET_RAW"]);
            security["readOnlyRootFilesystem"] = json!(false);
            security["runAsGroup"] = json!(0);
            security["runAsNonRoot"] = json!(false);
            security["runAsUser"] = json!(0);
        }
        if let Some(sp) = cfg
            .value("global.proxy.seccompProfile")
            .filter(|v| truthy(v))
        {
            security["seccompProfile"] = sp.clone();
        }
        let mut init = json!({
            "name": if cni { "istio-validation" } else { "istio-init" },
            "image": ctx.image("global.proxy_init.image"),
            "args": args,
            "resources": res.clone(),
            "securityContext": security,
        });
        if !pull_policy.is_empty() {
            init["imagePullPolicy"] = json!(pull_policy);
        }
        if let Some(Value::Object(md)) = lookup(&ctx.proxy_config, "proxyMetadata")
            && !md.is_empty()
        {
            init["env"] = Value::Array(md.iter().map(|(k, v)| env(k, go_string(v))).collect());
        }
        init_containers.push(init);
    }

    // istio-proxy.
    let mut args = agent_args(ctx, "sidecar");
    if cfg.truthy("global.proxy.outlierLogPath") {
        args.push(format!(
            "--outlierLogPath={}",
            cfg.text("global.proxy.outlierLogPath")
        ));
    }
    let mut proxy = json!({
        "name": "istio-proxy",
        "image": ctx.image("global.proxy.image"),
        "ports": [{"containerPort": 15090, "protocol": "TCP", "name": "http-envoy-prom"}],
        "args": args,
    });
    if native {
        proxy["restartPolicy"] = json!("Always");
    }
    if let Some(lc) = cfg.value("global.proxy.lifecycle").filter(|v| truthy(v)) {
        proxy["lifecycle"] = lc.clone();
    } else if hold {
        proxy["lifecycle"] = json!({"postStart": {"exec": {"command": ["pilot-agent", "wait"]}}});
    } else if native {
        proxy["lifecycle"] = json!({"preStop": {"exec": {"command": [
            "pilot-agent", "request", format!("--debug-port={status_port}"), "POST", "drain"
        ]}}});
    }

    proxy["env"] = Value::Array(proxy_env(ctx, Template::Sidecar));
    if !pull_policy.is_empty() {
        proxy["imagePullPolicy"] = json!(pull_policy);
    }
    if status_port != "0" {
        if cfg.truthy("global.proxy.startupProbe.enabled") {
            proxy["startupProbe"] = json!({
                "httpGet": {"path": "/healthz/ready", "port": 15021},
                "periodSeconds": 1,
                "timeoutSeconds": 3,
                "failureThreshold": number(&cfg.text("global.proxy.startupProbe.failureThreshold")),
            });
        }
        proxy["readinessProbe"] = readiness_probe(ctx, 15021);
    }
    let privileged = cfg
        .value("global.proxy.privileged")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut security = if ctx.proxy_metadata("IPTABLES_TRACE_LOGGING").as_deref() == Some("true") {
        json!({
            "allowPrivilegeEscalation": true,
            "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]},
            "privileged": true,
            "readOnlyRootFilesystem": true,
            "runAsGroup": ctx.gid(),
            "runAsNonRoot": false,
            "runAsUser": 0,
        })
    } else {
        let mut s = json!({
            "allowPrivilegeEscalation": privileged,
            "capabilities": {"drop": ["ALL"]},
            "privileged": privileged,
            "readOnlyRootFilesystem": true,
        });
        if tproxy || cap_bind {
            let mut add = Vec::new();
            if tproxy {
                add.push("NET_ADMIN");
            }
            if cap_bind {
                add.push("NET_BIND_SERVICE");
            }
            s["capabilities"]["add"] = json!(add);
            s["runAsNonRoot"] = json!(false);
            s["runAsUser"] = json!(0);
            s["runAsGroup"] = json!(PROXY_ID);
        } else {
            s["runAsNonRoot"] = json!(true);
            s["runAsUser"] = json!(ctx.uid());
            s["runAsGroup"] = json!(ctx.gid());
        }
        s
    };
    if let Some(sp) = cfg
        .value("global.proxy.seccompProfile")
        .filter(|v| truthy(v))
    {
        security["seccompProfile"] = sp.clone();
    }
    proxy["securityContext"] = security;
    proxy["resources"] = res;

    proxy["volumeMounts"] = Value::Array(proxy_mounts(ctx, Template::Sidecar));
    let volumes = proxy_volumes(ctx, Template::Sidecar);

    let mut spec = Map::new();
    if native {
        init_containers.push(proxy);
        spec.insert("initContainers".into(), Value::Array(init_containers));
    } else {
        spec.insert("initContainers".into(), Value::Array(init_containers));
        spec.insert("containers".into(), json!([proxy]));
    }
    spec.insert("volumes".into(), Value::Array(volumes));
    template_pod(cfg, labels, annotations, Value::Object(spec))
}

/// Renders Istio's `gateway` template (`files/gateway-injection-template.yaml`):
/// the pod runs `istio-proxy` as a router (`proxy router`), as a plain
/// container, with the unprivileged-port sysctl, no traffic capture.
fn render_gateway(ctx: &Ctx<'_>) -> Value {
    let cfg = ctx.cfg;
    let mut labels = Map::new();
    ctx.canonical_labels(&mut labels, false);
    let annotations = ctx.base_annotations();
    let args = agent_args(ctx, "router");
    let mut proxy = json!({
        "name": "istio-proxy",
        "image": ctx.image("global.proxy.image"),
        "ports": [{"containerPort": 15090, "protocol": "TCP", "name": "http-envoy-prom"}],
        "args": args,
        "securityContext": {"runAsUser": ctx.uid(), "runAsGroup": ctx.gid()},
        "env": proxy_env(ctx, Template::Gateway),
        "readinessProbe": {
            "httpGet": {"path": "/healthz/ready", "port": 15021},
            "periodSeconds": number(&cfg.text("global.proxy.readinessPeriodSeconds")),
            "timeoutSeconds": 3,
            "failureThreshold": number(&cfg.text("global.proxy.readinessFailureThreshold")),
        },
        "volumeMounts": proxy_mounts(ctx, Template::Gateway),
    });
    let delay = number(&cfg.text("global.proxy.readinessInitialDelaySeconds"));
    if delay != json!(0) {
        proxy["readinessProbe"]["initialDelaySeconds"] = delay;
    }
    if let Some(lc) = cfg.value("global.proxy.lifecycle").filter(|v| truthy(v)) {
        proxy["lifecycle"] = lc.clone();
    }
    let pull_policy = cfg.text("global.imagePullPolicy");
    if !pull_policy.is_empty() {
        proxy["imagePullPolicy"] = json!(pull_policy);
    }
    let security = cfg
        .value("gateways.securityContext")
        .filter(|v| truthy(v))
        .cloned()
        .unwrap_or_else(
            || json!({"sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]}),
        );
    let spec = json!({
        "securityContext": security,
        "containers": [proxy],
        "volumes": proxy_volumes(ctx, Template::Gateway),
    });
    template_pod(cfg, labels, annotations, spec)
}

/// Renders Istio's `grpc-agent` template (`files/grpc-agent.yaml`): the
/// agent (`proxy sidecar` with Envoy disabled) serving xDS and
/// certificates to a proxyless gRPC app over `/etc/istio/proxy`, each app
/// container pointed at its gRPC xDS bootstrap; no traffic capture, no
/// probe rewriting.
fn render_grpc_agent(ctx: &Ctx<'_>) -> Value {
    let cfg = ctx.cfg;
    let mut labels = Map::new();
    ctx.canonical_labels(&mut labels, false);
    let mut annotations = ctx.base_annotations();
    annotations.insert(
        "sidecar.istio.io/rewriteAppHTTPProbers".into(),
        "false".into(),
    );
    let args = agent_args(ctx, "sidecar");
    let mut proxy = json!({
        "name": "istio-proxy",
        "image": ctx.image("global.proxy.image"),
        "ports": [{"containerPort": 15020, "protocol": "TCP", "name": "mesh-metrics"}],
        "args": args,
        "lifecycle": {"postStart": {"exec": {"command": [
            "pilot-agent", "wait", "--url=http://localhost:15020/healthz/ready"
        ]}}},
        "env": proxy_env(ctx, Template::GrpcAgent),
        "resources": resources(ctx),
        "volumeMounts": proxy_mounts(ctx, Template::GrpcAgent),
    });
    let pull_policy = cfg.text("global.imagePullPolicy");
    if !pull_policy.is_empty() {
        proxy["imagePullPolicy"] = json!(pull_policy);
    }
    if ctx.status_port() != "0" {
        proxy["readinessProbe"] = readiness_probe(ctx, 15020);
    }
    let mut containers = vec![proxy];
    for name in ctx.app_containers() {
        containers.push(json!({
            "name": name,
            "env": [
                {"name": "GRPC_XDS_EXPERIMENTAL_SECURITY_SUPPORT", "value": "true"},
                {"name": "GRPC_XDS_BOOTSTRAP", "value": "/etc/istio/proxy/grpc-bootstrap.json"},
            ],
            "volumeMounts": [
                {"mountPath": "/var/lib/istio/data", "name": "istio-data"},
                {"mountPath": "/etc/istio/proxy", "name": "istio-xds"},
                {"mountPath": "/var/run/secrets/workload-spiffe-credentials", "name": "workload-certs"},
            ],
        }));
    }
    let spec = json!({
        "containers": containers,
        "volumes": proxy_volumes(ctx, Template::GrpcAgent),
    });
    template_pod(cfg, labels, annotations, spec)
}

/// The agent's readiness probe on `port`, its delay, period and threshold
/// from the pod's `readiness.status.sidecar.istio.io/*` annotations or the values.
fn readiness_probe(ctx: &Ctx<'_>, port: u16) -> Value {
    let cfg = ctx.cfg;
    let mut readiness = json!({
        "httpGet": {"path": "/healthz/ready", "port": port},
        "periodSeconds": number(&ctx.annotation_or(
            "readiness.status.sidecar.istio.io/periodSeconds",
            &cfg.text("global.proxy.readinessPeriodSeconds"),
        )),
        "timeoutSeconds": 3,
        "failureThreshold": number(&ctx.annotation_or(
            "readiness.status.sidecar.istio.io/failureThreshold",
            &cfg.text("global.proxy.readinessFailureThreshold"),
        )),
    });
    let delay = number(&ctx.annotation_or(
        "readiness.status.sidecar.istio.io/initialDelaySeconds",
        &cfg.text("global.proxy.readinessInitialDelaySeconds"),
    ));
    if delay != json!(0) {
        readiness["initialDelaySeconds"] = delay;
    }
    readiness
}

/// The agent's arguments: `proxy <mode> --domain ...`, the log levels,
/// `--stsPort` and `--log_as_json` when set.
fn agent_args(ctx: &Ctx<'_>, mode: &str) -> Vec<String> {
    let cfg = ctx.cfg;
    let mut args = vec![
        "proxy".to_owned(),
        mode.to_owned(),
        "--domain".into(),
        format!(
            "$(POD_NAMESPACE).svc.{}",
            cfg.text("global.proxy.clusterDomain")
        ),
    ];
    args.extend(log_args(ctx));
    if cfg.truthy("global.sts.servicePort") {
        args.push(format!("--stsPort={}", cfg.text("global.sts.servicePort")));
    }
    if cfg.truthy("global.logAsJson") {
        args.push("--log_as_json".into());
    }
    args
}

/// A rendered template: the pod metadata it adds and its `spec`, with
/// `global.imagePullSecrets` when set.
fn template_pod(
    cfg: &InjectionConfig,
    labels: Map<String, Value>,
    annotations: Map<String, Value>,
    mut spec: Value,
) -> Value {
    if let Some(Value::Array(secrets)) = cfg.value("global.imagePullSecrets")
        && !secrets.is_empty()
    {
        spec["imagePullSecrets"] = Value::Array(
            secrets
                .iter()
                .map(|s| json!({"name": go_string(s)}))
                .collect(),
        );
    }
    json!({
        "metadata": {"labels": labels, "annotations": annotations},
        "spec": spec,
    })
}

/// `--proxyLogLevel`, `--proxyComponentLogLevel` and `--log_output_level`,
/// from the pod's annotations or the values.
fn log_args(ctx: &Ctx<'_>) -> [String; 3] {
    let cfg = ctx.cfg;
    [
        format!(
            "--proxyLogLevel={}",
            ctx.annotation_or(
                "sidecar.istio.io/logLevel",
                &cfg.text("global.proxy.logLevel")
            )
        ),
        format!(
            "--proxyComponentLogLevel={}",
            ctx.annotation_or(
                "sidecar.istio.io/componentLogLevel",
                &cfg.text("global.proxy.componentLogLevel")
            )
        ),
        format!(
            "--log_output_level={}",
            ctx.annotation_or(
                "sidecar.istio.io/agentLogLevel",
                &cfg.text("global.logging.level")
            )
        ),
    ]
}

/// The built-in templates this injector renders (Istio's chart files).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Template {
    /// `sidecar` (`files/injection-template.yaml`).
    Sidecar,
    /// `gateway` (`files/gateway-injection-template.yaml`).
    Gateway,
    /// `grpc-agent` (`files/grpc-agent.yaml`): the agent alone next to a
    /// proxyless gRPC app, which gets the xDS bootstrap and certificates.
    GrpcAgent,
}

/// The `istio-proxy` environment of `template`.
fn proxy_env(ctx: &Ctx<'_>, template: Template) -> Vec<Value> {
    let cfg = ctx.cfg;
    let grpc = template == Template::GrpcAgent;
    let mut envs = Vec::new();
    if grpc {
        envs.push(env("ISTIO_META_GENERATOR", "grpc"));
        envs.push(env("OUTPUT_CERTS", "/var/lib/istio/data"));
    }
    envs.extend([
        env("PILOT_CERT_PROVIDER", cfg.text("global.pilotCertProvider")),
        env("CA_ADDR", {
            let ca = cfg.text("global.caAddress");
            if ca.is_empty() {
                let rev = cfg.text("revision");
                let suffix = if rev.is_empty() {
                    String::new()
                } else {
                    format!("-{rev}")
                };
                format!(
                    "istiod{suffix}.{}.svc:15012",
                    cfg.text("global.istioNamespace")
                )
            } else {
                ca
            }
        }),
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("INSTANCE_IP", "status.podIP"),
        field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        field_env("HOST_IP", "status.hostIP"),
    ]);
    if !grpc {
        envs.push(resource_env("ISTIO_CPU_LIMIT", "limits.cpu"));
    }
    envs.push(env(
        "PROXY_CONFIG",
        format!("{}\n", proto_json(&ctx.proxy_config)),
    ));
    envs.push(env("ISTIO_META_POD_PORTS", pod_ports(ctx.spec)));
    let app_containers = env("ISTIO_META_APP_CONTAINERS", ctx.app_containers().join(","));
    match template {
        Template::Gateway => {
            envs.push(resource_env("GOMEMLIMIT", "limits.memory"));
            envs.push(app_containers);
        }
        Template::Sidecar => {
            envs.push(app_containers);
            envs.push(resource_env("GOMEMLIMIT", "limits.memory"));
        }
        Template::GrpcAgent => envs.push(app_containers),
    }
    let cluster = cfg.text("global.multiCluster.clusterName");
    envs.push(env(
        "ISTIO_META_CLUSTER_ID",
        if cluster.is_empty() {
            "Kubernetes".to_owned()
        } else {
            cluster
        },
    ));
    envs.push(field_env("ISTIO_META_NODE_NAME", "spec.nodeName"));
    let configured_mode = lookup(&ctx.proxy_config, "interceptionMode")
        .map(go_string)
        .unwrap_or_else(|| "REDIRECT".into());
    match template {
        Template::Gateway => envs.push(env("ISTIO_META_INTERCEPTION_MODE", configured_mode)),
        Template::Sidecar => envs.push(env(
            "ISTIO_META_INTERCEPTION_MODE",
            ctx.annotations
                .get("sidecar.istio.io/interceptionMode")
                .map(go_string)
                .filter(|s| !s.is_empty())
                .unwrap_or(configured_mode),
        )),
        Template::GrpcAgent => {}
    }
    if cfg.truthy("global.network") {
        envs.push(env("ISTIO_META_NETWORK", cfg.text("global.network")));
    }
    let workload = match template {
        Template::Gateway | Template::GrpcAgent => ctx.pod.workload_name.clone(),
        Template::Sidecar => ctx
            .label("service.istio.io/workload-name")
            .unwrap_or_else(|| ctx.pod.workload_name.clone()),
    };
    if !workload.is_empty() {
        envs.push(env("ISTIO_META_WORKLOAD_NAME", workload));
    }
    let (api_version, kind) = &ctx.pod.workload_type;
    if !api_version.is_empty() && !ctx.pod.workload_name.is_empty() {
        let ns = if ctx.pod.namespace.is_empty() {
            "default"
        } else {
            &ctx.pod.namespace
        };
        envs.push(env(
            "ISTIO_META_OWNER",
            format!(
                "kubernetes://apis/{api_version}/namespaces/{ns}/{}s/{}",
                kind.to_lowercase(),
                ctx.pod.workload_name
            ),
        ));
    }
    if !grpc && ctx.has_annotation("sidecar.istio.io/bootstrapOverride") {
        envs.push(env(
            "ISTIO_BOOTSTRAP_OVERRIDE",
            "/etc/istio/custom-bootstrap/custom_bootstrap.json",
        ));
    }
    let trust_domain = lookup(&cfg.mesh, "trustDomain")
        .map(go_string)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| cfg.text("global.trustDomain"));
    let mesh_id = cfg.text("global.meshID");
    if !mesh_id.is_empty() {
        envs.push(env("ISTIO_META_MESH_ID", mesh_id));
    } else if !trust_domain.is_empty() {
        envs.push(env("ISTIO_META_MESH_ID", trust_domain.clone()));
    }
    if !trust_domain.is_empty() {
        envs.push(env("TRUST_DOMAIN", trust_domain));
    }
    if let Some(Value::Object(md)) = lookup(&ctx.proxy_config, "proxyMetadata") {
        for (k, v) in md {
            envs.push(env(k, go_string(v)));
        }
    }
    if grpc {
        // gRPC resolves `xds:///` names itself: no DNS capture, no Envoy.
        envs.push(env("ISTIO_META_DNS_CAPTURE", "false"));
        envs.push(env("DISABLE_ENVOY", "true"));
    }
    envs
}
/// The agent's socket volume at `/etc/istio/proxy`: `istio-envoy`, or
/// `istio-xds` next to a proxyless gRPC app.
fn proxy_volume(template: Template) -> &'static str {
    match template {
        Template::GrpcAgent => "istio-xds",
        Template::Sidecar | Template::Gateway => "istio-envoy",
    }
}

/// The `istio-proxy` volume mounts of `template`.
fn proxy_mounts(ctx: &Ctx<'_>, template: Template) -> Vec<Value> {
    let cfg = ctx.cfg;
    let istiod_certs = cfg.text("global.pilotCertProvider") == "istiod";
    let grpc = template == Template::GrpcAgent;
    let mut mounts = vec![
        json!({"name": "workload-socket", "mountPath": "/var/run/secrets/workload-spiffe-uds"}),
    ];
    if !grpc {
        mounts.push(
            json!({"name": "credential-socket", "mountPath": "/var/run/secrets/credential-uds"}),
        );
    }
    mounts.push(
        json!({"name": "workload-certs", "mountPath": "/var/run/secrets/workload-spiffe-credentials"}),
    );
    if istiod_certs {
        mounts.push(json!({"mountPath": "/var/run/secrets/istio", "name": "istiod-ca-cert"}));
        if template == Template::Sidecar {
            mounts.push(json!({"mountPath": "/var/run/secrets/istio/crl", "name": "istio-ca-crl"}));
        }
    }
    mounts.push(json!({"mountPath": "/var/lib/istio/data", "name": "istio-data"}));
    if !grpc && ctx.has_annotation("sidecar.istio.io/bootstrapOverride") {
        mounts.push(
            json!({"mountPath": "/etc/istio/custom-bootstrap", "name": "custom-bootstrap-volume"}),
        );
    }
    mounts.push(json!({"mountPath": "/etc/istio/proxy", "name": proxy_volume(template)}));
    mounts.push(json!({"mountPath": "/var/run/secrets/tokens", "name": "istio-token"}));
    if cfg.truthy("global.mountMtlsCerts") {
        mounts.push(json!({"mountPath": "/etc/certs/", "name": "istio-certs", "readOnly": true}));
    }
    mounts.push(json!({"name": "istio-podinfo", "mountPath": "/etc/istio/pod"}));
    if template != Template::Gateway
        && let Some(Value::Object(user)) = ctx
            .annotations
            .get("sidecar.istio.io/userVolumeMount")
            .and_then(|v| serde_json::from_str::<Value>(&go_string(v)).ok())
    {
        for (name, mut m) in user {
            m["name"] = json!(name);
            mounts.push(m);
        }
    }
    mounts
}

/// The volumes `template` adds to the pod.
fn proxy_volumes(ctx: &Ctx<'_>, template: Template) -> Vec<Value> {
    let cfg = ctx.cfg;
    let istiod_certs = cfg.text("global.pilotCertProvider") == "istiod";

    let mut volumes = vec![json!({"name": "workload-socket", "emptyDir": null})];
    if template != Template::GrpcAgent {
        volumes.push(json!({"name": "credential-socket", "emptyDir": null}));
    }
    volumes.push(json!({"name": "workload-certs", "emptyDir": null}));
    if ctx.has_annotation("sidecar.istio.io/bootstrapOverride") {
        volumes.push(json!({"name": "custom-bootstrap-volume", "configMap": {
            "name": ctx.annotation_or("sidecar.istio.io/bootstrapOverride", "")
        }}));
    }
    volumes.push(json!({"name": proxy_volume(template), "emptyDir": {"medium": "Memory"}}));
    volumes.push(json!({"name": "istio-data", "emptyDir": {}}));
    volumes.push(json!({"name": "istio-podinfo", "downwardAPI": {"items": [
        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
        {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
    ]}}));
    volumes.push(json!({"name": "istio-token", "projected": {"sources": [
        {"serviceAccountToken": {"path": "istio-token", "expirationSeconds": 43200,
                                 "audience": cfg.text("global.sds.token.aud")}}
    ]}}));
    if istiod_certs {
        let bundle = cfg.text("global.trustBundleName");
        if cfg
            .value("pilot.env.ENABLE_CLUSTER_TRUST_BUNDLE_API")
            .and_then(Value::as_bool)
            == Some(true)
        {
            let name = if bundle.is_empty() {
                "root-cert".into()
            } else {
                bundle
            };
            volumes.push(json!({"name": "istiod-ca-cert", "projected": {"sources": [
                {"clusterTrustBundle": {"name": format!("istio.io:istiod-ca:{name}"), "path": "root-cert.pem"}}
            ]}}));
        } else {
            let name = if bundle.is_empty() {
                "istio-ca-root-cert".into()
            } else {
                bundle
            };
            volumes.push(json!({"name": "istiod-ca-cert", "configMap": {"name": name}}));
        }
    }
    if template == Template::Sidecar {
        let crl = cfg.text("pilot.crlConfigMapName");
        volumes.push(json!({"name": "istio-ca-crl", "configMap": {
            "name": if crl.is_empty() { "istio-ca-crl".to_owned() } else { crl },
            "optional": true,
        }}));
    }
    if cfg.truthy("global.mountMtlsCerts") {
        let sa = ctx
            .spec
            .get("serviceAccountName")
            .map(go_string)
            .unwrap_or_default();
        let secret = if sa.is_empty() {
            "istio.default".to_owned()
        } else {
            format!("istio.{sa}")
        };
        volumes.push(
            json!({"name": "istio-certs", "secret": {"optional": true, "secretName": secret}}),
        );
    }
    if template != Template::Gateway
        && let Some(Value::Object(user)) = ctx
            .annotations
            .get("sidecar.istio.io/userVolume")
            .and_then(|v| serde_json::from_str::<Value>(&go_string(v)).ok())
    {
        for (name, mut v) in user {
            v["name"] = json!(name);
            volumes.push(v);
        }
    }
    volumes
}

/// A numeric template value as a JSON number (Go writes them unquoted).
fn number(s: &str) -> Value {
    s.parse::<i64>()
        .map_or_else(|_| Value::String(s.to_owned()), Value::from)
}

/// Istio's `appendMultusNetwork`: adds `network` to a comma-separated
/// list (or a JSON list) unless present.
fn append_multus_network(existing: &str, network: &str) -> String {
    let existing = existing.trim();
    if existing.is_empty() {
        return network.to_owned();
    }
    if existing.starts_with('[') {
        if let Ok(Value::Array(mut items)) = serde_json::from_str::<Value>(existing) {
            let present = items.iter().any(|i| {
                i.get("name").and_then(Value::as_str) == Some("istio-cni")
                    && i.get("namespace")
                        .and_then(Value::as_str)
                        .unwrap_or("default")
                        == "default"
            });
            if !present {
                items.push(json!({"name": "istio-cni", "namespace": "default"}));
            }
            return Value::Array(items).to_string();
        }
        return existing.to_owned();
    }
    if existing
        .split(',')
        .any(|n| n.trim() == network || n.trim() == "istio-cni")
    {
        return existing.to_owned();
    }
    format!("{existing}, {network}")
}

/// `ISTIO_META_POD_PORTS`: every container port as Go's JSON of a
/// `ContainerPort` (`name`, `hostPort`, `containerPort`, `protocol`,
/// `hostIP`, zero values left out), in Istio's layout.
fn pod_ports(spec: &Value) -> String {
    let mut out = String::from("[");
    let mut first = true;
    for c in spec
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for p in c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let mut fields = Vec::new();
            for key in ["name", "hostPort", "containerPort", "protocol", "hostIP"] {
                match p.get(key) {
                    None | Some(Value::Null) => {}
                    Some(Value::String(s)) if s.is_empty() => {}
                    Some(Value::Number(n)) if n.as_i64() == Some(0) => {}
                    Some(v) => fields.push(format!("{}:{}", Value::String(key.into()), v)),
                }
            }
            out.push_str("\n    ");
            if !first {
                out.push(',');
            }
            first = false;
            out.push('{');
            out.push_str(&fields.join(","));
            out.push('}');
        }
    }
    out.push_str("\n]");
    out
}

/// `ProxyConfig` fields in the order of their numbers in Istio's
/// `mesh/v1alpha1/proxy.proto`, which `protoToJSON` follows.
const PROXY_CONFIG_ORDER: [&str; 32] = [
    "configPath",
    "binaryPath",
    "serviceCluster",
    "drainDuration",
    "parentShutdownDuration",
    "discoveryAddress",
    "statsdUdpAddress",
    "proxyAdminPort",
    "controlPlaneAuthPolicy",
    "customConfigFile",
    "statNameLength",
    "concurrency",
    "proxyBootstrapTemplatePath",
    "interceptionMode",
    "tracing",
    "envoyAccessLogService",
    "envoyMetricsService",
    "proxyMetadata",
    "statusPort",
    "extraStatTags",
    "gatewayTopology",
    "terminationDrainDuration",
    "meshId",
    "readinessProbe",
    "proxyStatsMatcher",
    "holdApplicationUntilProxyStarts",
    "caCertificatesPem",
    "image",
    "privateKeyProvider",
    "proxyHeaders",
    "fileFlushInterval",
    "fileFlushMinSizeKb",
];

/// A `ProxyConfig` as Istio's `protoToJSON` writes it: compact JSON, the
/// fields in proto order (unknown ones after, by name), map keys sorted.
fn proto_json(v: &Value) -> String {
    let Value::Object(m) = v else {
        return "{}".into();
    };
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort_by_key(|k| {
        (
            PROXY_CONFIG_ORDER
                .iter()
                .position(|o| o == k)
                .unwrap_or(PROXY_CONFIG_ORDER.len()),
            (*k).clone(),
        )
    });
    let fields: Vec<String> = keys
        .iter()
        .map(|k| format!("{}:{}", Value::String((*k).clone()), m[*k]))
        .collect();
    format!("{{{}}}", fields.join(","))
}

/// Merges a JSON object into another: objects recursively, everything
/// else replaced (how a `ProxyConfig` annotation overrides the mesh default).
fn merge_objects(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        merge_objects(existing, v)
                    }
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// Injects the sidecar into `pod` (a Pod as JSON, or a pod template:
/// `metadata` and `spec`), returning the injected pod.
///
/// # Errors
/// [`InjectError`] naming the annotation or field that is not valid
/// (e.g. a malformed `traffic.sidecar.istio.io/includeOutboundIPRanges`).
pub fn inject_pod(
    pod: &Value,
    ctx: &PodContext,
    cfg: &InjectionConfig,
) -> Result<Value, InjectError> {
    let obj_map = |path: &str| -> Map<String, Value> {
        match lookup(pod, path) {
            Some(Value::Object(m)) => m.clone(),
            _ => Map::new(),
        }
    };
    let annotations = obj_map("metadata.annotations");
    let labels = obj_map("metadata.labels");
    let empty = json!({});
    let spec = pod.get("spec").unwrap_or(&empty);
    let proxy_override = match annotations.get("proxy.istio.io/config").map(go_string) {
        Some(text) if !text.trim().is_empty() => {
            serde_yaml_ng::from_str::<Value>(&text).map_err(|e| InjectError::InvalidAnnotation {
                annotation: "proxy.istio.io/config".into(),
                reason: e.to_string(),
            })?
        }
        _ => json!({}),
    };
    let mut proxy_config = lookup(&cfg.mesh, "defaultConfig")
        .cloned()
        .unwrap_or(json!({}));
    merge_objects(&mut proxy_config, &proxy_override);
    let c = Ctx {
        cfg,
        pod: ctx,
        labels,
        annotations,
        spec,
        proxy_config,
    };
    validate_annotations(&c)?;
    let templates = c.templates()?;
    let native = c.native() && !templates.contains(&Template::Gateway);
    let rendered: Vec<Value> = templates.iter().map(|t| c.render(*t)).collect();
    let defined: std::collections::BTreeSet<String> = rendered
        .iter()
        .flat_map(|t| {
            ["/spec/initContainers", "/spec/containers"]
                .into_iter()
                .filter_map(|p| t.pointer(p).and_then(Value::as_array))
                .flatten()
                .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut out = pod.clone();
    let overrides = user_overrides(&mut out, native, &defined);
    for t in &rendered {
        merge_template(&mut out, t);
    }
    post_process(&mut out, &c, &rendered);
    if let Some(overrides) = overrides {
        set_annotations(&mut out, [(OVERRIDES_ANNOTATION, Value::String(overrides))]);
    }
    Ok(out)
}

/// Where Istio records the `istio-proxy` / `istio-init` containers the
/// user declared (their fields override the template's).
pub const OVERRIDES_ANNOTATION: &str = "proxy.istio.io/overrides";

/// The user's own containers that the templates also define (`istio-init`,
/// `istio-proxy`, a gRPC app's containers), as Istio records them in
/// [`OVERRIDES_ANNOTATION`] (Go's JSON of the containers, `image: auto`
/// meaning "the template's image" and dropped). With native sidecars the
/// user's `istio-proxy` counts as an init container.
fn user_overrides(
    pod: &mut Value,
    native: bool,
    defined: &std::collections::BTreeSet<String>,
) -> Option<String> {
    let mut containers = Vec::new();
    let mut inits = Vec::new();
    for list in ["/spec/initContainers", "/spec/containers"] {
        let Some(Value::Array(items)) = pod.pointer_mut(list) else {
            continue;
        };
        for c in items.iter_mut() {
            let name = c
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if !defined.contains(&name) {
                continue;
            }
            if let Value::Object(m) = c
                && m.get("image").and_then(Value::as_str) == Some("auto")
            {
                m.remove("image");
            }
            if let Some(r) = c.get_mut("resources") {
                *r = canonical_resources(r);
            }
            let recorded = c.clone();
            let as_init = list == "/spec/initContainers" || (native && name == "istio-proxy");
            if as_init {
                inits.push(recorded);
            } else {
                containers.push(recorded);
            }
        }
    }
    if containers.is_empty() && inits.is_empty() {
        return None;
    }
    let list = |l: &[Value]| {
        let items: Vec<String> = l.iter().map(|c| go_json(c, GoType::Container)).collect();
        format!("[{}]", items.join(","))
    };
    let mut parts = Vec::new();
    if !containers.is_empty() {
        parts.push(format!("\"containers\":{}", list(&containers)));
    }
    if !inits.is_empty() {
        parts.push(format!("\"initContainers\":{}", list(&inits)));
    }
    Some(format!("{{{}}}", parts.join(",")))
}

/// Kubernetes types whose JSON field order (Go's struct order) matters
/// where Istio writes them into annotations.
#[derive(Clone, Copy)]
enum GoType {
    Container,
    Probe,
    HttpGet,
    SecurityContext,
    VolumeMount,
    Resources,
    Lifecycle,
    Handler,
    Other,
}

impl GoType {
    fn fields(self) -> &'static [&'static str] {
        match self {
            GoType::Container => &[
                "name",
                "image",
                "command",
                "args",
                "workingDir",
                "ports",
                "envFrom",
                "env",
                "resources",
                "resizePolicy",
                "restartPolicy",
                "volumeMounts",
                "volumeDevices",
                "livenessProbe",
                "readinessProbe",
                "startupProbe",
                "lifecycle",
                "terminationMessagePath",
                "terminationMessagePolicy",
                "imagePullPolicy",
                "securityContext",
                "stdin",
                "stdinOnce",
                "tty",
            ],
            GoType::Probe => &[
                "exec",
                "httpGet",
                "tcpSocket",
                "grpc",
                "initialDelaySeconds",
                "timeoutSeconds",
                "periodSeconds",
                "successThreshold",
                "failureThreshold",
                "terminationGracePeriodSeconds",
            ],
            GoType::HttpGet => &["path", "port", "host", "scheme", "httpHeaders"],
            GoType::SecurityContext => &[
                "capabilities",
                "privileged",
                "seLinuxOptions",
                "windowsOptions",
                "runAsUser",
                "runAsGroup",
                "runAsNonRoot",
                "readOnlyRootFilesystem",
                "allowPrivilegeEscalation",
                "procMount",
                "seccompProfile",
                "appArmorProfile",
            ],
            GoType::VolumeMount => &[
                "name",
                "readOnly",
                "recursiveReadOnly",
                "mountPath",
                "subPath",
                "mountPropagation",
                "subPathExpr",
            ],
            GoType::Resources => &["limits", "requests", "claims"],
            GoType::Lifecycle => &["postStart", "preStop", "stopSignal"],
            GoType::Handler => &["exec", "httpGet", "tcpSocket", "sleep"],
            GoType::Other => &[],
        }
    }

    fn child(self, key: &str) -> GoType {
        match (self, key) {
            (GoType::Container, "livenessProbe" | "readinessProbe" | "startupProbe") => {
                GoType::Probe
            }
            (GoType::Container, "securityContext") => GoType::SecurityContext,
            (GoType::Container, "volumeMounts") => GoType::VolumeMount,
            (GoType::Container, "resources") => GoType::Resources,
            (GoType::Container, "lifecycle") => GoType::Lifecycle,
            (GoType::Lifecycle, "postStart" | "preStop") => GoType::Handler,
            (GoType::Probe | GoType::Handler, "httpGet") => GoType::HttpGet,
            _ => GoType::Other,
        }
    }
}

/// JSON as Go's `encoding/json` writes the Kubernetes type `ty`: fields in
/// struct order (unknown ones after, by name); `resources` always present
/// in a container.
fn go_json(v: &Value, ty: GoType) -> String {
    match v {
        Value::Object(m) => {
            let order = ty.fields();
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_by_key(|k| {
                (
                    order.iter().position(|o| o == k).unwrap_or(order.len()),
                    (*k).clone(),
                )
            });
            let mut fields: Vec<String> = Vec::new();
            let mut wrote_resources = false;
            for k in keys {
                if matches!(ty, GoType::Container)
                    && !wrote_resources
                    && order.iter().position(|o| o == k)
                        > order.iter().position(|o| *o == "resources")
                    && !m.contains_key("resources")
                {
                    fields.push("\"resources\":{}".into());
                    wrote_resources = true;
                }
                if k == "resources" {
                    wrote_resources = true;
                }
                fields.push(format!(
                    "{}:{}",
                    Value::String(k.clone()),
                    go_json(&m[k], ty.child(k))
                ));
            }
            if matches!(ty, GoType::Container) && !wrote_resources {
                fields.push("\"resources\":{}".into());
            }
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(|i| go_json(i, ty)).collect();
            format!("[{}]", inner.join(","))
        }
        other => other.to_string(),
    }
}

/// Merges the rendered template into the pod: labels and annotations (the
/// pod's own values win for those the template only defaults), init
/// containers and containers by name (a container the user declared
/// keeps its fields over the template's), volumes and pull secrets by
/// name.
fn merge_template(pod: &mut Value, template: &Value) {
    for key in ["labels", "annotations"] {
        if let Some(Value::Object(t)) = lookup(template, &format!("metadata.{key}"))
            && let Some(m) = object_at(pod, "metadata").and_then(|meta| {
                let target = meta.entry(key).or_insert_with(|| Value::Object(Map::new()));
                target.as_object_mut()
            })
        {
            for (k, v) in t {
                m.insert(k.clone(), v.clone());
            }
        }
    }
    let Some(Value::Object(tspec)) = template.get("spec") else {
        return;
    };
    let Some(spec) = object_at(pod, "spec") else {
        return;
    };
    // Pod-level fields (e.g. a gateway's `securityContext`): merged, the
    // template's values over the pod's, as a strategic merge patch does.
    for (key, value) in tspec {
        if matches!(
            key.as_str(),
            "initContainers" | "containers" | "volumes" | "imagePullSecrets"
        ) {
            continue;
        }
        match spec.get_mut(key) {
            Some(existing) => merge_objects(existing, value),
            None => {
                spec.insert(key.clone(), value.clone());
            }
        }
    }
    for key in [
        "initContainers",
        "containers",
        "volumes",
        "imagePullSecrets",
    ] {
        let Some(Value::Array(items)) = tspec.get(key) else {
            continue;
        };
        let list = spec.entry(key).or_insert_with(|| Value::Array(Vec::new()));
        if !list.is_array() {
            *list = Value::Array(Vec::new());
        }
        let Value::Array(list) = list else { continue };
        let mut added = Vec::new();
        for item in items {
            let name = item.get("name").and_then(Value::as_str);
            match list
                .iter_mut()
                .find(|i| name.is_some() && i.get("name").and_then(Value::as_str) == name)
            {
                // The user's own container: the template under it, the
                // user's fields over (Istio's overrides).
                Some(existing) => {
                    let mut merged = item.clone();
                    merge_container(&mut merged, existing);
                    *existing = merged;
                }
                None => added.push(item.clone()),
            }
        }
        // Volumes and pull secrets come first, containers after the app's.
        if matches!(key, "volumes" | "imagePullSecrets") {
            added.append(list);
            *list = added;
        } else {
            list.append(&mut added);
        }
    }
    // A container the user declared as `istio-proxy` under `containers`
    // moves to the native sidecar's place when the template put it there.
    let native_proxy = tspec
        .get("initContainers")
        .and_then(Value::as_array)
        .is_some_and(|l| {
            l.iter()
                .any(|c| c.get("name").and_then(Value::as_str) == Some("istio-proxy"))
        });
    if native_proxy
        && let Some(Value::Array(containers)) = spec.get_mut("containers")
        && let Some(i) = containers
            .iter()
            .position(|c| c.get("name").and_then(Value::as_str) == Some("istio-proxy"))
    {
        let user = containers.remove(i);
        if let Some(Value::Array(inits)) = spec.get_mut("initContainers")
            && let Some(p) = inits
                .iter_mut()
                .find(|c| c.get("name").and_then(Value::as_str) == Some("istio-proxy"))
        {
            merge_container(p, &user);
        }
    }
}

/// The user's container fields over the template's (a strategic merge):
/// scalars replace, objects merge, `env` (by `name`), `volumeMounts` (by
/// `mountPath`) and `ports` (by `containerPort`) merge item by item, the
/// user's new items after the template's; other lists replace.
fn merge_container(base: &mut Value, user: &Value) {
    let (Value::Object(b), Value::Object(u)) = (base, user) else {
        return;
    };
    for (k, v) in u {
        let merge_key = match k.as_str() {
            "env" => Some("name"),
            "volumeMounts" => Some("mountPath"),
            "ports" => Some("containerPort"),
            _ => None,
        };
        if let Some(key) = merge_key
            && let (Some(Value::Array(items)), Value::Array(user_items)) = (b.get_mut(k), v)
        {
            for item in user_items {
                let id = item.get(key);
                match items.iter_mut().find(|x| id.is_some() && x.get(key) == id) {
                    Some(x) => merge_objects(x, item),
                    None => items.push(item.clone()),
                }
            }
            continue;
        }
        match b.get_mut(k) {
            Some(existing) if existing.is_object() && v.is_object() => merge_objects(existing, v),
            _ => {
                b.insert(k.clone(), v.clone());
            }
        }
    }
}

/// `v.<key>` as an object, `v` and the entry made objects if they were
/// not (None cannot happen after that, but is not a panic).
fn object_at<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Map<String, Value>> {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    let entry = v
        .as_object_mut()?
        .entry(key)
        .or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    entry.as_object_mut()
}

/// Sets annotations on `pod` (`metadata.annotations`, created if missing).
fn set_annotations(pod: &mut Value, entries: impl IntoIterator<Item = (&'static str, Value)>) {
    let Some(meta) = object_at(pod, "metadata") else {
        return;
    };
    if let Value::Object(a) = meta
        .entry("annotations")
        .or_insert_with(|| Value::Object(Map::new()))
    {
        for (k, v) in entries {
            a.insert(k.to_owned(), v);
        }
    }
}

/// Istio's post-processing: init containers ordered (`istio-init` first,
/// then the native `istio-proxy`), app probes rewritten to the agent,
/// Prometheus merge annotations, and the status annotation.
fn post_process(pod: &mut Value, ctx: &Ctx<'_>, rendered: &[Value]) {
    reorder(pod);
    rewrite_probes(pod, ctx);
    prometheus_merge(pod, ctx);
    // The status lists what the templates added, in their order.
    let injected = added_names(rendered);
    let status = json!({
        "initContainers": injected.0,
        "containers": injected.1,
        "volumes": injected.2,
        "imagePullSecrets": injected.3,
        "revision": ctx.revision(),
    });
    set_annotations(
        pod,
        [(STATUS_ANNOTATION, Value::String(go_status_json(&status)))],
    );
}

/// The names the templates add: (init containers, containers, volumes, pull secrets).
fn added_names(rendered: &[Value]) -> (Value, Value, Value, Value) {
    let names = |key: &str, field: &str| -> Value {
        let mut list: Vec<Value> = Vec::new();
        for t in rendered {
            for name in lookup(t, &format!("spec.{key}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| c.get(field).cloned())
            {
                if !list.contains(&name) {
                    list.push(name);
                }
            }
        }
        if list.is_empty() {
            Value::Null
        } else {
            Value::Array(list)
        }
    };
    (
        names("initContainers", "name"),
        names("containers", "name"),
        names("volumes", "name"),
        names("imagePullSecrets", "name"),
    )
}

/// JSON in the key order Istio's status struct has.
fn go_status_json(status: &Value) -> String {
    let keys = [
        "initContainers",
        "containers",
        "volumes",
        "imagePullSecrets",
        "revision",
    ];
    let parts: Vec<String> = keys
        .iter()
        .map(|k| {
            format!(
                "{}:{}",
                Value::String((*k).into()),
                status.get(*k).unwrap_or(&Value::Null)
            )
        })
        .collect();
    format!("{{{}}}", parts.join(","))
}

/// `istio-init` (or `istio-validation`) first, the native `istio-proxy`
/// right after it, then the app's init containers.
fn reorder(pod: &mut Value) {
    let Some(Value::Array(inits)) = pod.pointer_mut("/spec/initContainers") else {
        return;
    };
    let rank = |c: &Value| match c.get("name").and_then(Value::as_str) {
        Some("istio-init" | "istio-validation") => 0,
        Some("istio-proxy") => 1,
        _ => 2,
    };
    inits.sort_by_key(rank);
}

/// Istio's probe rewrite (`sidecar.istio.io/rewriteAppHTTPProbers`,
/// default on): the app containers' HTTP, TCP and gRPC probes become HTTP
/// GETs on the agent's status port (`/app-health/<container>/livez`,
/// `readyz`, `startupz`), and the originals go to the agent in
/// `ISTIO_KUBE_APP_PROBERS`.
fn rewrite_probes(pod: &mut Value, ctx: &Ctx<'_>) {
    // The merged pod's annotation: a template may turn the rewrite off.
    let enabled = pod
        .pointer("/metadata/annotations/sidecar.istio.io~1rewriteAppHTTPProbers")
        .map(go_string)
        .map_or_else(
            || {
                ctx.cfg
                    .value("sidecarInjectorWebhook.rewriteAppHTTPProbe")
                    .is_none_or(truthy)
            },
            |v| v != "false",
        );
    let status_port = ctx.status_port();
    if !enabled || status_port == "0" {
        return;
    }
    let Ok(port) = status_port.parse::<u16>() else {
        return;
    };
    let mut probers: BTreeMap<String, Value> = BTreeMap::new();
    for list in ["/spec/containers", "/spec/initContainers"] {
        let Some(Value::Array(containers)) = pod.pointer_mut(list) else {
            continue;
        };
        for c in containers.iter_mut() {
            let name = c
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            // Init containers only when they are sidecars themselves.
            let sidecar = c.get("restartPolicy").and_then(Value::as_str) == Some("Always");
            if name == "istio-proxy" || (list == "/spec/initContainers" && !sidecar) {
                continue;
            }
            let named_ports: BTreeMap<String, Value> = c
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| {
                    Some((
                        p.get("name")?.as_str()?.to_owned(),
                        p.get("containerPort")?.clone(),
                    ))
                })
                .collect();
            for (probe, path) in [
                ("/livenessProbe", format!("/app-health/{name}/livez")),
                ("/readinessProbe", format!("/app-health/{name}/readyz")),
                ("/startupProbe", format!("/app-health/{name}/startupz")),
                (
                    "/lifecycle/postStart",
                    format!("/app-lifecycle/{name}/poststartz"),
                ),
                (
                    "/lifecycle/preStop",
                    format!("/app-lifecycle/{name}/prestopz"),
                ),
            ] {
                if let Some(handler) = c.pointer_mut(probe)
                    && let Some(original) = rewrite_handler(handler, &path, port, &named_ports)
                {
                    probers.insert(path, original);
                }
            }
        }
    }
    if probers.is_empty() {
        return;
    }
    let text = serde_json::to_string(&probers).unwrap_or_default();
    if let Some(proxy) = find_proxy(pod)
        && let Some(Value::Array(envs)) = proxy.get_mut("env")
    {
        envs.push(env("ISTIO_KUBE_APP_PROBERS", text));
    }
}

/// Points an HTTP, TCP or gRPC probe (or lifecycle handler) at the
/// agent's `path` on `port`; returns what the agent must probe instead
/// (named ports resolved), or None for other kinds (exec).
fn rewrite_handler(
    handler: &mut Value,
    path: &str,
    port: u16,
    named_ports: &BTreeMap<String, Value>,
) -> Option<Value> {
    let Value::Object(h) = handler else {
        return None;
    };
    let mut original = Map::new();
    let resolve = |mut v: Value| {
        if let Some(Value::String(name)) = v.get("port")
            && let Some(num) = named_ports.get(name)
        {
            v["port"] = num.clone();
        }
        v
    };
    if let Some(http) = h.get("httpGet") {
        original.insert("httpGet".into(), resolve(http.clone()));
    } else if let Some(tcp) = h.get("tcpSocket") {
        original.insert("tcpSocket".into(), resolve(tcp.clone()));
    } else if let Some(grpc) = h.get("grpc") {
        original.insert("grpc".into(), grpc.clone());
    } else {
        return None;
    }
    if let Some(t) = h.get("timeoutSeconds") {
        original.insert("timeoutSeconds".into(), t.clone());
    }
    let scheme = h
        .get("httpGet")
        .and_then(|g| g.get("scheme"))
        .filter(|s| *s == "HTTPS")
        .cloned();
    h.remove("tcpSocket");
    h.remove("grpc");
    let mut get = json!({"path": path, "port": port});
    if let Some(s) = scheme {
        get["scheme"] = s;
    }
    h.insert("httpGet".into(), get);
    Some(Value::Object(original))
}

fn find_proxy(pod: &mut Value) -> Option<&mut Value> {
    let is_proxy = |c: &Value| c.get("name").and_then(Value::as_str) == Some("istio-proxy");
    let in_inits = pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .is_some_and(|l| l.iter().any(is_proxy));
    let list = if in_inits {
        "/spec/initContainers"
    } else {
        "/spec/containers"
    };
    pod.pointer_mut(list)?
        .as_array_mut()?
        .iter_mut()
        .find(|c| is_proxy(c))
}

/// Istio's Prometheus merge (`enablePrometheusMerge`, default on): the pod
/// is scraped at the agent (`prometheus.io/port: 15020`, path
/// `/stats/prometheus`); the app's own scrape settings go to the agent in
/// `ISTIO_PROMETHEUS_ANNOTATIONS`. Off when the pod says
/// `prometheus.io/scrape: "false"` or the merge is disabled.
fn prometheus_merge(pod: &mut Value, ctx: &Ctx<'_>) {
    let enabled = ctx
        .annotations
        .get("prometheus.istio.io/merge-metrics")
        .map(go_string)
        .map_or_else(
            || lookup(&ctx.cfg.mesh, "enablePrometheusMerge").is_none_or(truthy),
            |v| v != "false",
        );
    if !enabled {
        return;
    }
    let ann = |k: &str| ctx.annotations.get(k).map(go_string);
    if ann("prometheus.io/scrape").as_deref() == Some("false") {
        return;
    }
    let original = json!({
        "scrape": ann("prometheus.io/scrape").unwrap_or_default(),
        "path": ann("prometheus.io/path").unwrap_or_default(),
        "port": ann("prometheus.io/port").unwrap_or_default(),
    });
    let has_own = original.as_object().is_some_and(|m| {
        m.values()
            .any(|v| v.as_str().is_some_and(|s| !s.is_empty()))
    });
    if has_own
        && let Some(proxy) = find_proxy(pod)
        && let Some(Value::Array(envs)) = proxy.get_mut("env")
    {
        envs.push(env("ISTIO_PROMETHEUS_ANNOTATIONS", original.to_string()));
    }
    set_annotations(
        pod,
        [
            ("prometheus.io/port", AGENT_PROMETHEUS_PORT.into()),
            ("prometheus.io/path", "/stats/prometheus".into()),
            ("prometheus.io/scrape", "true".into()),
        ],
    );
}

/// Where the pod template sits in a workload of `kind`, as a JSON pointer.
fn pod_template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment"
        | "ReplicaSet"
        | "DaemonSet"
        | "StatefulSet"
        | "Job"
        | "ReplicationController"
        | "DeploymentConfig" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// `istioctl kube-inject` for one object: a workload (Pod, Deployment,
/// ReplicaSet, DaemonSet, StatefulSet, Job, CronJob,
/// ReplicationController, DeploymentConfig) gets its pod template
/// injected; a `List` each item; anything else comes back as it was.
///
/// # Errors
/// [`InjectError`] from [`inject_pod`].
pub fn kube_inject(object: &Value, cfg: &InjectionConfig) -> Result<Value, InjectError> {
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if kind == "List" {
        let mut out = object.clone();
        if let Some(Value::Array(items)) = out.get_mut("items") {
            for item in items.iter_mut() {
                *item = kube_inject(item, cfg)?;
            }
        }
        return Ok(out);
    }
    let Some(pointer) = pod_template_pointer(kind) else {
        return Ok(object.clone());
    };
    let Some(template) = object.pointer(pointer) else {
        return Ok(object.clone());
    };
    let namespace = lookup(object, "metadata.namespace")
        .map(go_string)
        .unwrap_or_default();
    if !inject_required(template, &namespace, true) {
        return Ok(object.clone());
    }
    let ctx = PodContext {
        namespace,
        workload_name: lookup(object, "metadata.name")
            .map(go_string)
            .unwrap_or_default(),
        workload_type: (
            object.get("apiVersion").map(go_string).unwrap_or_default(),
            kind.to_owned(),
        ),
        proxy_ids: None,
    };
    let mut injected = inject_pod(template, &ctx, cfg)?;
    let mut out = object.clone();
    if kind == "CronJob" {
        // As Istio's kube-inject does: the pod metadata it adds lands on
        // the job template, the pod template's own metadata stays.
        let meta = injected
            .get_mut("metadata")
            .map(Value::take)
            .unwrap_or(Value::Null);
        if let Some(original) = template.get("metadata") {
            injected["metadata"] = original.clone();
        }
        if let Some(job) = out.pointer_mut("/spec/jobTemplate") {
            job["metadata"] = meta;
        }
    }
    if let Some(slot) = out.pointer_mut(pointer) {
        *slot = injected;
    }
    Ok(out)
}
