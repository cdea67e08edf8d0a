//! The axum router in process (`oneshot`): AdmissionReviews in, answers
//! out, for good and bad input, and Istio's validation fixtures through
//! `/validate`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;
use webhook::inject::InjectionConfig;
use webhook::server::{MAX_BODY_BYTES, Webhooks, router};

fn hooks() -> Webhooks {
    let values =
        std::fs::read_to_string(crds::istio_testdata().join("injection/chart/values.yaml"))
            .unwrap();
    Webhooks {
        injection: Arc::new(InjectionConfig::from_chart_values(&values).unwrap()),
        policy_enabled: true,
        openshift_namespaces: None,
    }
}

fn review(kind: (&str, &str, &str), namespace: &str, object: Value) -> Value {
    let (group, version, kind) = kind;
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": format!("{}s", kind.to_lowercase())},
            "namespace": namespace,
            "name": object.pointer("/metadata/name").cloned().unwrap_or(json!("")),
            "operation": "CREATE",
            "userInfo": {"username": "admin"},
            "object": object,
            "dryRun": false,
        }
    })
}

async fn post(path: &str, body: Vec<u8>) -> (StatusCode, Value, String) {
    let resp = router(hooks())
        .oneshot(
            Request::post(path)
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        text,
    )
}

fn pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "reviews-v1-abc", "namespace": "default",
            "labels": {"app": "reviews", "version": "v1", "pod-template-hash": "abc"},
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "reviews-v1-abc",
                                 "uid": "1", "controller": true}],
        },
        "spec": {"containers": [{"name": "reviews", "image": "reviews:1",
                                 "ports": [{"containerPort": 9080}],
                                 "readinessProbe": {"httpGet": {"port": 9080, "path": "/health"}}}]},
    })
}

fn apply_patch(original: &Value, response: &Value) -> Value {
    let b64 = response
        .pointer("/response/patch")
        .unwrap()
        .as_str()
        .unwrap();
    let bytes = base64_decode(b64);
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut out = original.clone();
    json_patch::patch(&mut out, &patch).unwrap();
    out
}

/// Standard base64 (the patch field is `[]byte` in Go's JSON).
fn base64_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c).unwrap() as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    out
}

#[tokio::test]
async fn a_pod_gets_the_sidecar_by_json_patch() {
    let original = pod(json!({}));
    let body = serde_json::to_vec(&review(("", "v1", "Pod"), "default", original.clone())).unwrap();
    let (status, resp, text) = post("/inject", body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(resp.pointer("/response/allowed"), Some(&json!(true)));
    assert_eq!(
        resp.pointer("/response/uid"),
        Some(&json!("705ab4f5-6393-11e8-b7cc-42010a800002"))
    );
    assert_eq!(
        resp.pointer("/response/patchType"),
        Some(&json!("JSONPatch"))
    );
    let injected = apply_patch(&original, &resp);
    let inits: Vec<&str> = injected
        .pointer("/spec/initContainers")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(inits, ["istio-init", "istio-proxy"]);
    // The owner is the Deployment behind the ReplicaSet, as Istio derives it.
    let proxy = &injected["spec"]["initContainers"][1];
    let env = |name: &str| {
        proxy["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
            .map(str::to_owned)
    };
    assert_eq!(
        env("ISTIO_META_OWNER").as_deref(),
        Some("kubernetes://apis/apps/v1/namespaces/default/deployments/reviews-v1")
    );
    // The app's probe now goes through the agent.
    assert_eq!(
        injected.pointer("/spec/containers/0/readinessProbe/httpGet/path"),
        Some(&json!("/app-health/reviews/readyz"))
    );
    assert!(
        injected
            .pointer("/metadata/annotations/sidecar.istio.io~1status")
            .is_some()
    );
}

#[tokio::test]
async fn pods_the_policy_skips_are_allowed_unchanged() {
    for object in [
        pod(json!({"sidecar.istio.io/inject": "false"})),
        {
            let mut p = pod(json!({}));
            p["spec"]["hostNetwork"] = json!(true);
            p
        },
        pod(json!({"sidecar.istio.io/status": "{}"})),
    ] {
        let body = serde_json::to_vec(&review(("", "v1", "Pod"), "default", object)).unwrap();
        let (status, resp, _) = post("/inject", body).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(resp.pointer("/response/allowed"), Some(&json!(true)));
        assert!(resp.pointer("/response/patch").is_none(), "{resp}");
    }
    // kube-system is never injected.
    let body =
        serde_json::to_vec(&review(("", "v1", "Pod"), "kube-system", pod(json!({})))).unwrap();
    let (_, resp, _) = post("/inject", body).await;
    assert!(resp.pointer("/response/patch").is_none());
    // Not a Pod: not this webhook's business.
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}});
    let body = serde_json::to_vec(&review(("", "v1", "Service"), "default", svc)).unwrap();
    let (_, resp, _) = post("/inject", body).await;
    assert_eq!(resp.pointer("/response/allowed"), Some(&json!(true)));
    assert!(resp.pointer("/response/patch").is_none());
}

#[tokio::test]
async fn a_pod_with_a_bad_annotation_is_refused_with_its_name() {
    let object = pod(json!({"traffic.sidecar.istio.io/includeOutboundIPRanges": "10.0.0.0/33"}));
    let body = serde_json::to_vec(&review(("", "v1", "Pod"), "default", object)).unwrap();
    let (status, resp, _) = post("/inject", body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(resp.pointer("/response/allowed"), Some(&json!(false)));
    let message = resp
        .pointer("/response/status/message")
        .unwrap()
        .as_str()
        .unwrap();
    assert!(
        message.contains("traffic.sidecar.istio.io/includeOutboundIPRanges"),
        "{message}"
    );
}

#[tokio::test]
async fn malformed_and_oversized_bodies_get_clear_http_errors() {
    for (body, what) in [
        (b"not json".to_vec(), "not JSON"),
        (b"{\"kind\": \"Pod\"}".to_vec(), "not a review"),
        (
            serde_json::to_vec(
                &json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
            )
            .unwrap(),
            "no request",
        ),
    ] {
        for path in ["/inject", "/validate"] {
            let (status, _, text) = post(path, body.clone()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{what} on {path}: {text}");
            assert!(text.contains("AdmissionReview"), "{what}: {text}");
        }
    }
    let huge = vec![b' '; MAX_BODY_BYTES + 1];
    let (status, _, _) = post("/inject", huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

fn vs(weights: (u32, u32), extra: Value) -> Value {
    let mut spec = json!({
        "hosts": ["reviews"],
        "http": [{"route": [
            {"destination": {"host": "reviews", "subset": "v1"}, "weight": weights.0},
            {"destination": {"host": "reviews", "subset": "v2"}, "weight": weights.1},
        ]}],
    });
    if let (Value::Object(s), Value::Object(e)) = (&mut spec, extra) {
        s.extend(e);
    }
    json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
           "metadata": {"name": "reviews", "namespace": "default"}, "spec": spec})
}

async fn validate(object: Value) -> (bool, String) {
    let kind = object["kind"].as_str().unwrap().to_owned();
    let api = object["apiVersion"].as_str().unwrap().to_owned();
    let (group, version) = api.split_once('/').unwrap_or(("", &api));
    let body =
        serde_json::to_vec(&review((group, version, &kind), "default", object.clone())).unwrap();
    let (status, resp, text) = post("/validate", body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let allowed = resp
        .pointer("/response/allowed")
        .and_then(Value::as_bool)
        .unwrap();
    let message = resp
        .pointer("/response/status/message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    (allowed, message)
}

#[tokio::test]
async fn validation_refuses_what_the_mesh_cannot_use_naming_the_field() {
    assert_eq!(
        validate(vs((80, 20), json!({}))).await,
        (true, String::new())
    );
    let (allowed, message) = validate(vs((80, 30), json!({}))).await;
    assert!(!allowed);
    assert!(
        message.contains("default/reviews") && message.contains("spec.http[0].route"),
        "{message}"
    );
    let (allowed, message) = validate(vs((80, 20), json!({"hots": ["x"]}))).await;
    assert!(!allowed);
    assert!(message.contains("hots"), "{message}");
    // The security kinds, by field: an AuthorizationPolicy with an unknown
    // condition key, a RequestAuthentication without an issuer.
    let ap = json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                    "metadata": {"name": "p"},
                    "spec": {"rules": [{"when": [{"key": "source.colour", "values": ["red"]}]}]}});
    let (allowed, message) = validate(ap).await;
    assert!(!allowed);
    assert!(message.contains("spec.rules[0].when[0].key"), "{message}");
    let ra = json!({"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
                    "metadata": {"name": "r"},
                    "spec": {"jwtRules": [{"jwksUri": "https://idp.example/keys"}]}});
    let (allowed, message) = validate(ra).await;
    assert!(!allowed);
    assert!(message.contains("spec.jwtRules[0].issuer"), "{message}");
    // Telemetry: an access log filter Envoy would refuse, by field.
    let t = json!({"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry",
                   "metadata": {"name": "t"},
                   "spec": {"accessLogging": [{"filter": {"expression": "foo(1)"}}]}});
    let (allowed, message) = validate(t).await;
    assert!(!allowed);
    assert!(
        message.contains("spec.accessLogging[0].filter.expression"),
        "{message}"
    );
    // WasmPlugin: an unknown field, a checksum that is not one, by field.
    let wasm = |spec: serde_json::Value| {
        json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
               "metadata": {"name": "w"}, "spec": spec})
    };
    let (allowed, message) = validate(wasm(json!({"url": "oci://x/y", "anything": 1}))).await;
    assert!(!allowed);
    assert!(message.contains("anything"), "{message}");
    let (allowed, message) = validate(wasm(json!({"url": "oci://x/y", "sha256": "abc"}))).await;
    assert!(!allowed);
    assert!(message.contains("spec.sha256"), "{message}");
    assert!(
        validate(wasm(json!({"url": "https://example.com/p.wasm"})))
            .await
            .0
    );
    // Kinds this control plane does not read are not refused.
    let other = json!({"apiVersion": "networking.istio.io/v1beta1", "kind": "ProxyConfig",
                       "metadata": {"name": "p"}, "spec": {"anything": 1}});
    assert!(validate(other).await.0);
}

/// A VirtualService whose rules cannot all be reached is admitted with
/// Istio's warnings, which `kubectl apply` prints.
#[tokio::test]
async fn unreachable_rules_are_admitted_with_istios_warnings() {
    let object = vs(
        (80, 20),
        json!({"http": [
            {"match": [{"uri": {"prefix": "/api"}}], "route": [{"destination": {"host": "reviews"}}]},
            {"route": [{"destination": {"host": "reviews"}}]},
            {"name": "again", "match": [{"uri": {"prefix": "/api"}}], "route": [{"destination": {"host": "reviews"}}]},
            {"route": [{"destination": {"host": "reviews"}}]},
        ]}),
    );
    let body = serde_json::to_vec(&review(
        ("networking.istio.io", "v1", "VirtualService"),
        "default",
        object,
    ))
    .unwrap();
    let (status, resp, text) = post("/validate", body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(
        resp.pointer("/response/allowed"),
        Some(&json!(true)),
        "{text}"
    );
    assert_eq!(
        resp.pointer("/response/warnings"),
        Some(&json!([
            "virtualService rule \"again\" match #0 is not used (duplicate/overlapping match in rule #0)",
            "virtualService rule \"again\" not used (all matches used by prior rules)",
            "virtualService rule #3 not used (only the last rule can have no matches)",
        ])),
        "{text}"
    );
    // A VirtualService without such rules has none.
    let body = serde_json::to_vec(&review(
        ("networking.istio.io", "v1", "VirtualService"),
        "default",
        vs((80, 20), json!({})),
    ))
    .unwrap();
    let (_, resp, text) = post("/validate", body).await;
    assert_eq!(resp.pointer("/response/warnings"), None, "{text}");
}

/// Istio's CRD validation fixtures (`validation/crds/`): every document
/// in `*-valid.yaml` is accepted, every one in `*-invalid.yaml` refused
/// with a message naming the field of its `_err`. Only the kinds this
/// control plane reads (DestinationRule, ServiceEntry, WorkloadEntry) are
/// run; the WorkloadGroup files are reported as skipped.
#[tokio::test]
async fn istio_validation_fixtures() {
    let dir = crds::istio_testdata().join("validation/crds");
    let mut skipped = Vec::new();
    let (mut accepted, mut refused) = (0, 0);
    let mut wrong = Vec::new();
    let mut unreadable = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        if !["destinationrule", "serviceentry", "workloadentry"]
            .iter()
            .any(|kind| file.starts_with(kind))
        {
            skipped.push(file);
            continue;
        }
        let valid = file.ends_with("-valid.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        // Documents one by one: one our YAML library cannot read (Istio's
        // `[1.2.3.4, 001:db8::]`) must not hide the others.
        for doc in text.split("\n---") {
            let mut object: Value = match serde_yaml_ng::from_str(doc) {
                Ok(v) => v,
                Err(e) => {
                    unreadable.push(format!("{file}: {e}"));
                    continue;
                }
            };
            if object.is_null() {
                continue;
            }
            let err = object
                .as_object_mut()
                .and_then(|o| o.remove("_err"))
                .and_then(|e| e.as_str().map(str::to_owned));
            let name = object
                .pointer("/metadata/name")
                .cloned()
                .unwrap_or_default();
            let (allowed, message) = validate(object).await;
            match (valid, allowed, err) {
                (true, true, _) => accepted += 1,
                (true, false, _) => wrong.push(format!("{file} {name}: refused: {message}")),
                (false, true, want) => {
                    wrong.push(format!("{file} {name}: accepted, want {want:?}"))
                }
                (false, false, Some(want)) => {
                    // `field.path: Reason` names a field; other texts are Istio's message.
                    let needle = match want.split_once(": ") {
                        Some((field, _)) if field.starts_with("spec") => field.to_owned(),
                        _ => want.clone(),
                    };
                    if message.contains(&needle) {
                        refused += 1;
                    } else {
                        wrong.push(format!(
                            "{file} {name}: refused with {message:?}, want {want:?}"
                        ));
                    }
                }
                (false, false, None) => refused += 1,
            }
        }
    }
    println!(
        "validation fixtures: {accepted} valid accepted, {refused} invalid refused, {} wrong; \
         kinds not read here: {skipped:?}; documents our YAML library cannot read: {unreadable:?}",
        wrong.len()
    );
    for w in &wrong {
        println!("  {w}");
    }
    assert!(
        accepted + refused > 0,
        "no fixtures found in {}",
        dir.display()
    );
    assert!(wrong.is_empty(), "{} fixtures decided wrongly", wrong.len());
}
