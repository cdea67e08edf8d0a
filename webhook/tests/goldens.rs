//! Istio's sidecar-injection goldens (`injection/inject/` of the shared
//! corpus, settings per case in `injection/cases.yaml`), through
//! `kube-inject`: every input document injected and compared with its
//! golden as parsed YAML. Go's typed serialisation adds empty objects
//! (`strategy: {}`, `resources: {}`), nulls (`creationTimestamp: null`),
//! a zero `status`, writes DeploymentConfig's `test: false`, drops zero
//! `minReadySeconds` / false `paused`; those are normalised on
//! both sides before comparing (see `normalise`), nothing else is.
//!
//! The test reports how many goldens match and lists the others; it fails
//! when fewer than `MIN_PASSING` match, or when a case that must be
//! rejected is not.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::path::PathBuf;

use serde_json::Value;
use webhook::inject::{InjectionConfig, kube_inject, set_path};

/// Goldens that match today; raise it as more do (never lower it).
const MIN_PASSING: usize = 56;

fn corpus() -> PathBuf {
    crds::istio_testdata().join("injection")
}

/// The injector config a case asks for: the chart defaults, its `iop`
/// overlay, its `set` flags, `mesh` fields and `env` switches.
fn config_for(case: &Value) -> InjectionConfig {
    let values = std::fs::read_to_string(corpus().join("chart/values.yaml")).unwrap();
    let mut cfg = InjectionConfig::from_chart_values(&values).unwrap();
    if let Some(iop) = case.get("iop").and_then(Value::as_str) {
        let text = std::fs::read_to_string(corpus().join("inject").join(iop)).unwrap();
        let iop: Value = serde_yaml_ng::from_str(&text).unwrap();
        if let Some(v) = iop.pointer("/spec/values") {
            merge(&mut cfg.values, v);
        }
        if let Some(m) = iop.pointer("/spec/meshConfig") {
            merge(&mut cfg.mesh, m);
        }
    }
    for flag in case
        .get("set")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let flag = flag.as_str().unwrap();
        let (path, value) = flag.split_once('=').unwrap();
        let value: Value = serde_yaml_ng::from_str(value).unwrap_or(Value::String(value.into()));
        let path = match path {
            "components.cni.enabled" => "pilot.cni.enabled".to_owned(),
            p if p.starts_with("values.cni.") => p.replacen("values.cni.", "pilot.cni.", 1),
            p if p.starts_with("values.") => p.trim_start_matches("values.").to_owned(),
            p if p.starts_with("meshConfig.") => {
                set_path(&mut cfg.mesh, p.trim_start_matches("meshConfig."), value);
                continue;
            }
            p => p.to_owned(),
        };
        set_path(&mut cfg.values, &path, value);
    }
    if let Some(m) = case.get("mesh") {
        merge(&mut cfg.mesh, m);
    }
    if case
        .pointer("/env/ENABLE_NATIVE_SIDECARS")
        .and_then(Value::as_str)
        == Some("false")
    {
        cfg.native_sidecars = false;
    }
    cfg
}

fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(e) if e.is_object() && v.is_object() => merge(e, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

fn documents(text: &str) -> Vec<Value> {
    // The iterator does not end after an error: stop at the first.
    serde_yaml_ng::Deserializer::from_str(text)
        .map_while(|d| serde::Deserialize::deserialize(d).ok())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// Drops what Go's typed serialisation adds or removes: the object's
/// `status`, nulls, empty objects, `minReadySeconds: 0`, and `paused` /
/// `test` when false (OpenShift's DeploymentConfig type omits the one and
/// always writes the other).
fn normalise(v: &mut Value) {
    if let Value::Object(m) = v {
        m.remove("status");
    }
    normalise_inner(v);
}

fn normalise_inner(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for v in m.values_mut() {
                normalise_inner(v);
            }
            m.retain(|k, v| {
                !(v.is_null()
                    || v.as_object().is_some_and(|o| o.is_empty())
                    || (k == "minReadySeconds" && v.as_i64() == Some(0))
                    || (matches!(k.as_str(), "paused" | "test") && v.as_bool() == Some(false)))
            });
        }
        Value::Array(a) => a.iter_mut().for_each(normalise_inner),
        _ => {}
    }
}

/// The first difference between two JSON trees, as a path.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys()) {
                let p = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => {
                        if let Some(d) = first_difference(u, v, &p) {
                            return Some(d);
                        }
                    }
                    (u, v) => return Some(format!("{p}: got {u:?}, want {v:?}")),
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                let names = |l: &Vec<Value>| {
                    l.iter()
                        .map(|i| {
                            i.get("name")
                                .map(|n| n.to_string())
                                .unwrap_or_else(|| i.to_string())
                        })
                        .collect::<Vec<_>>()
                };
                return Some(format!("{path}: got {:?}, want {:?}", names(x), names(y)));
            }
            x.iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (u, v))| first_difference(u, v, &format!("{path}[{i}]")))
        }
        _ if a == b => None,
        _ => Some(format!("{path}: got {a}, want {b}")),
    }
}

#[test]
fn injection_goldens() {
    let cases: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(corpus().join("cases.yaml")).unwrap())
            .unwrap();
    let cases = cases.get("cases").and_then(Value::as_array).unwrap();
    let (mut passed, mut failed, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    for case in cases {
        let input = case.get("input").and_then(Value::as_str).unwrap();
        if case.get("mode").and_then(Value::as_str) == Some("webhook-only") {
            continue;
        }
        let cfg = config_for(case);
        let text = std::fs::read_to_string(corpus().join("inject").join(input)).unwrap();
        let results: Vec<Result<Value, _>> = documents(&text)
            .iter()
            .map(|d| kube_inject(d, &cfg))
            .collect();
        if let Some(want) = case.get("expect_error").and_then(Value::as_str) {
            let got = results
                .iter()
                .find_map(|r| r.as_ref().err().map(|e| e.to_string()));
            match got {
                Some(e) if e.to_lowercase().contains(want) => {}
                other => errors.push(format!(
                    "{input}: expected an error with {want:?}, got {other:?}"
                )),
            }
            continue;
        }
        let Some(golden) = case.get("golden").and_then(Value::as_str) else {
            continue;
        };
        let want_text = std::fs::read_to_string(corpus().join("inject").join(golden)).unwrap();
        let mut want = documents(&want_text);
        let mut got: Vec<Value> = match results.into_iter().collect::<Result<_, _>>() {
            Ok(g) => g,
            Err(e) => {
                failed.push(format!("{golden}: injection failed: {e}"));
                continue;
            }
        };
        want.iter_mut().for_each(normalise);
        got.iter_mut().for_each(normalise);
        if got == want {
            passed.push(golden.to_owned());
        } else {
            let diff = got
                .iter()
                .zip(&want)
                .find_map(|(g, w)| first_difference(g, w, ""))
                .unwrap_or_else(|| format!("{} documents, want {}", got.len(), want.len()));
            failed.push(format!("{golden}: {diff}"));
        }
    }
    println!(
        "injection goldens: {} of {} match",
        passed.len(),
        passed.len() + failed.len()
    );
    for f in &failed {
        println!("  differs: {f}");
    }
    assert!(
        errors.is_empty(),
        "inputs that must be rejected: {errors:#?}"
    );
    assert!(
        passed.len() >= MIN_PASSING,
        "only {} goldens match (at least {MIN_PASSING} did before)",
        passed.len()
    );
}

/// The pod a workload's controller would create from its template, as
/// Istio's webhook test simulates it: a Deployment's pod is owned by
/// ReplicaSet `<name>-fake` (label `pod-template-hash: fake`), other
/// controllers own theirs directly, a Pod is itself.
fn pod_of(doc: &Value) -> Option<(Value, &'static str)> {
    let kind = doc.get("kind")?.as_str()?;
    let name = doc.pointer("/metadata/name")?.as_str()?.to_owned();
    let namespace = doc
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_owned();
    if kind == "Pod" {
        let mut pod = doc.clone();
        pod["metadata"]["namespace"] = Value::String(namespace);
        return Some((pod, "Pod"));
    }
    let (template, owner_kind, owner_api, owner_name) = match kind {
        "Deployment" => (
            doc.pointer("/spec/template")?,
            "ReplicaSet",
            "apps/v1",
            format!("{name}-fake"),
        ),
        "ReplicaSet"
        | "DaemonSet"
        | "StatefulSet"
        | "Job"
        | "ReplicationController"
        | "DeploymentConfig" => (
            doc.pointer("/spec/template")?,
            match kind {
                "ReplicaSet" => "ReplicaSet",
                "DaemonSet" => "DaemonSet",
                "StatefulSet" => "StatefulSet",
                "Job" => "Job",
                "ReplicationController" => "ReplicationController",
                _ => "DeploymentConfig",
            },
            doc.get("apiVersion")?.as_str()?,
            name.clone(),
        ),
        _ => return None,
    };
    let mut pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod"});
    pod["metadata"] = template
        .get("metadata")
        .cloned()
        .unwrap_or(serde_json::json!({}));
    pod["metadata"]["namespace"] = Value::String(namespace);
    pod["metadata"]["generateName"] = Value::String(format!("{owner_name}-"));
    pod["metadata"]["ownerReferences"] = serde_json::json!([{
        "apiVersion": owner_api, "kind": owner_kind, "name": owner_name,
        "uid": "1", "controller": true}]);
    if kind == "Deployment" {
        pod["metadata"]["labels"]["pod-template-hash"] = Value::String("fake".into());
    }
    pod["spec"] = template
        .get("spec")
        .cloned()
        .unwrap_or(serde_json::json!({}));
    Some((pod, "template"))
}

/// The webhook path of the same goldens: each pod-bearing document made a
/// Pod, sent to `/inject` as an AdmissionReview, the JSON Patch applied,
/// and the pod's spec, labels and annotations compared with the golden's
/// pod template.
#[tokio::test]
async fn injection_goldens_through_the_webhook() {
    use tower::ServiceExt;
    let cases: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(corpus().join("cases.yaml")).unwrap())
            .unwrap();
    let cases = cases.get("cases").and_then(Value::as_array).unwrap();
    let (mut passed, mut failed) = (0, Vec::new());
    for case in cases {
        if case.get("mode").and_then(Value::as_str) == Some("kube-inject-only")
            || case.get("expect_error").is_some()
        {
            continue;
        }
        let (Some(input), Some(golden)) = (
            case.get("input").and_then(Value::as_str),
            case.get("golden").and_then(Value::as_str),
        ) else {
            continue;
        };
        let cfg = config_for(case);
        let router = webhook::server::router(webhook::server::Webhooks {
            injection: std::sync::Arc::new(cfg),
            policy_enabled: true,
            // The namespace the test environment gives (cases.yaml header).
            openshift_namespaces: (case.pointer("/env/PLATFORM").and_then(Value::as_str)
                == Some("openshift"))
            .then(|| {
                let lookup: webhook::server::NamespaceAnnotations =
                    std::sync::Arc::new(|ns: &str| {
                        (ns == "test-ns").then(|| {
                            [
                                ("openshift.io/sa.scc.uid-range", "1000620000/10000"),
                                (
                                    "openshift.io/sa.scc.supplemental-groups",
                                    "1000620000/10000",
                                ),
                            ]
                            .into_iter()
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                            .collect()
                        })
                    });
                lookup
            }),
        });
        let inputs =
            documents(&std::fs::read_to_string(corpus().join("inject").join(input)).unwrap());
        let wants =
            documents(&std::fs::read_to_string(corpus().join("inject").join(golden)).unwrap());
        let mut ok = true;
        for (doc, want) in inputs.iter().zip(&wants) {
            let Some((pod, _)) = pod_of(doc) else {
                continue;
            };
            let review = serde_json::json!({
                "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {"uid": "1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                            "resource": {"group": "", "version": "v1", "resource": "pods"},
                            "namespace": pod["metadata"]["namespace"], "operation": "CREATE",
                            "userInfo": {}, "object": pod}});
            let resp = router
                .clone()
                .oneshot(
                    axum::http::Request::post("/inject")
                        .header("content-type", "application/json")
                        .body(axum::body::Body::from(review.to_string()))
                        .unwrap(),
                )
                .await
                .unwrap();
            let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let mut got = pod.clone();
            if let Some(b64) = answer.pointer("/response/patch").and_then(Value::as_str) {
                let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64)
                    .unwrap();
                let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
                json_patch::patch(&mut got, &patch).unwrap();
            } else if answer.pointer("/response/allowed") != Some(&Value::Bool(true)) {
                failed.push(format!("{golden}: refused: {answer}"));
                ok = false;
                break;
            }
            let want_pod = if want.get("kind").and_then(Value::as_str) == Some("Pod") {
                want.clone()
            } else {
                want.pointer("/spec/template")
                    .cloned()
                    .unwrap_or(Value::Null)
            };
            let mut got_part = serde_json::json!({"metadata": {
                "labels": got.pointer("/metadata/labels").cloned(),
                "annotations": got.pointer("/metadata/annotations").cloned()},
                "spec": got.get("spec").cloned()});
            if let Some(Value::Object(l)) = got_part.pointer_mut("/metadata/labels") {
                l.remove("pod-template-hash");
            }
            let mut want_part = serde_json::json!({"metadata": {
                "labels": want_pod.pointer("/metadata/labels").cloned(),
                "annotations": want_pod.pointer("/metadata/annotations").cloned()},
                "spec": want_pod.get("spec").cloned()});
            normalise_inner(&mut got_part);
            normalise_inner(&mut want_part);
            if got_part != want_part {
                let diff = first_difference(&got_part, &want_part, "").unwrap_or_default();
                failed.push(format!("{golden}: {diff}"));
                ok = false;
                break;
            }
        }
        if ok {
            passed += 1;
        }
    }
    println!(
        "webhook path: {passed} of {} goldens match",
        passed + failed.len()
    );
    for f in &failed {
        println!("  differs: {f}");
    }
    assert!(
        passed >= MIN_PASSING_WEBHOOK,
        "only {passed} goldens match through the webhook (at least {MIN_PASSING_WEBHOOK} did before)"
    );
}

/// Goldens that match through the webhook today; raise it as more do.
const MIN_PASSING_WEBHOOK: usize = 55;
