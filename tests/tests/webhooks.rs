//! The admission webhooks as the API server calls them: over TLS on the
//! daemon's webhook port, with the certificate its CA issued for
//! `istiod.istio-system.svc` (curl checks the name and the chain against
//! the mesh root), AdmissionReviews in and out. A plaintext caller gets
//! nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::process::Command;

use base64::Engine;
use e2e::{ConfigDir, ca_options, isolate, runtime};
use istiod::{Daemon, Options, Source};
use serde_json::{Value, json};

fn review(kind: (&str, &str, &str), object: Value) -> Value {
    review_in("default", kind, object)
}

fn review_in(namespace: &str, kind: (&str, &str, &str), object: Value) -> Value {
    let (group, version, kind) = kind;
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "e2e-1",
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": "x"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "admin"},
            "object": object,
        }
    })
}

/// POSTs `body` to `path` of the webhook port as the API server would:
/// HTTPS to `istiod.istio-system.svc`, trusting only the mesh root.
fn call(port: u16, root: &std::path::Path, path: &str, body: &Value) -> Result<Value, String> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), body.to_string()).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "--cacert"])
        .arg(root)
        .args([
            "--resolve",
            &format!("istiod.istio-system.svc:{port}:127.0.0.1"),
            "-H",
            "content-type: application/json",
            "--data-binary",
        ])
        .arg(format!("@{}", file.path().display()))
        .arg(format!("https://istiod.istio-system.svc:{port}{path}"))
        .output()
        .expect("curl (see scripts/setup)");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// The daemon on `cfg` with its CA and webhooks, and a file with the mesh root.
fn start(
    rt: &tokio::runtime::Runtime,
    cfg: &ConfigDir,
    webhooks: istiod::webhooks::WebhookOptions,
) -> (Daemon, tempfile::NamedTempFile) {
    let daemon = rt.block_on(async {
        Daemon::start(Options {
            source: Source::Folder(cfg.path().to_owned()),
            xds_addr: "127.0.0.1:0".parse().unwrap(),
            monitoring_addr: None,
            push_throttle: 10,
            workload_entry_grace: istiod::autoregister::DEFAULT_GRACE,
            keepalive: Default::default(),
            debounce: Default::default(),
            ca: Some(istiod::secure::CaOptions {
                // As ISTIOD_CUSTOM_HOST: callers by IP (a URL webhook) verify it.
                custom_hosts: vec!["127.0.0.1".into()],
                ..ca_options()
            }),
            webhooks: Some(webhooks),
        })
        .await
        .unwrap()
    });
    let root = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        root.path(),
        daemon.secure.as_ref().unwrap().authority.root_pem(),
    )
    .unwrap();
    (daemon, root)
}

/// Sends a pod of `namespace` to `/inject` and applies the answer's patch:
/// the injected pod, and its `istio-proxy` container.
fn inject(port: u16, root: &std::path::Path, namespace: &str, pod: &Value) -> (Value, Value) {
    let answer = call(
        port,
        root,
        "/inject",
        &review_in(namespace, ("", "v1", "Pod"), pod.clone()),
    )
    .unwrap();
    assert_eq!(answer.pointer("/response/uid"), Some(&json!("e2e-1")));
    assert_eq!(answer.pointer("/response/allowed"), Some(&json!(true)));
    let patch = base64::engine::general_purpose::STANDARD
        .decode(answer.pointer("/response/patch").unwrap().as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut injected = pod.clone();
    json_patch::patch(&mut injected, &patch).unwrap();
    let proxy = injected
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .and_then(|l| l.iter().find(|c| c["name"] == "istio-proxy"))
        .unwrap()
        .clone();
    (injected, proxy)
}

#[test]
fn the_api_server_gets_patches_and_denials_over_tls() {
    let _hosts = isolate();
    let rt = runtime();
    let cfg = ConfigDir::bookinfo_platform();
    let (daemon, root) = start(&rt, &cfg, e2e::webhook_options());
    let port = daemon.webhook_addr.unwrap().port();

    // A pod is injected: the patch adds Istio's proxyv2 sidecar.
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "ratings-v1-xyz", "namespace": "default", "labels": {"app": "ratings"}},
        "spec": {"containers": [{"name": "ratings", "image": "ratings:1"}]},
    });
    let (injected, proxy) = inject(port, root.path(), "default", &pod);
    assert_eq!(proxy["image"], "docker.io/istio/proxyv2:1.28.0");
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(
        injected.pointer("/metadata/labels/security.istio.io~1tlsMode"),
        Some(&json!("istio"))
    );

    // An impossible route is refused with the object and the field.
    let vs = json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "ratings", "namespace": "default"},
        "spec": {"hosts": ["ratings"], "http": [{"route": [
            {"destination": {"host": "ratings"}, "weight": 60},
            {"destination": {"host": "ratings"}, "weight": 60}]}]},
    });
    let answer = call(
        port,
        root.path(),
        "/validate",
        &review(("networking.istio.io", "v1", "VirtualService"), vs),
    )
    .unwrap();
    assert_eq!(answer.pointer("/response/allowed"), Some(&json!(false)));
    let message = answer
        .pointer("/response/status/message")
        .and_then(Value::as_str)
        .unwrap();
    assert!(
        message.contains("default/ratings") && message.contains("spec.http[0].route"),
        "{message}"
    );

    // By IP, as an API server calling a URL webhook: the certificate has it.
    let by_ip = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(root.path())
        .args(["-d", "{}"])
        .arg(format!("https://127.0.0.1:{port}/inject"))
        .output()
        .unwrap();
    assert!(
        by_ip.status.success(),
        "{}",
        String::from_utf8_lossy(&by_ip.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&by_ip.stdout),
        "400",
        "not a review"
    );

    // Plaintext HTTP to the TLS port: no answer at all.
    let plain = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .arg(format!("http://127.0.0.1:{port}/inject"))
        .args(["-d", "{}"])
        .output()
        .unwrap();
    assert!(
        !plain.status.success(),
        "a plaintext caller got {}",
        String::from_utf8_lossy(&plain.stdout)
    );
}

/// On OpenShift (`PLATFORM=openshift`) the proxy runs with the last uid and
/// gid of its namespace's SCC ranges, which the daemon reads from the
/// Namespaces it watches; elsewhere, and in a namespace without ranges, 1337.
#[test]
fn on_openshift_the_proxy_runs_as_its_namespace_range() {
    let _hosts = isolate();
    let rt = runtime();
    let cfg = ConfigDir::bookinfo_platform();
    cfg.write(
        "openshift-namespace.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  annotations:\n    openshift.io/sa.scc.uid-range: 1000620000/10000\n    openshift.io/sa.scc.supplemental-groups: 1000700000/100\n",
    );
    let pod = |ns: &str| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "cart-1", "namespace": ns, "labels": {"app": "cart"}},
            "spec": {"containers": [{"name": "cart", "image": "cart:1"}]},
        })
    };
    let ids = |proxy: &Value| {
        (
            proxy.pointer("/securityContext/runAsUser").cloned(),
            proxy.pointer("/securityContext/runAsGroup").cloned(),
        )
    };
    let openshift = istiod::webhooks::WebhookOptions {
        openshift: true,
        ..e2e::webhook_options()
    };
    let (daemon, root) = start(&rt, &cfg, openshift);
    let port = daemon.webhook_addr.unwrap().port();
    let (_, proxy) = inject(port, root.path(), "shop", &pod("shop"));
    assert_eq!(
        ids(&proxy),
        (Some(json!(1000629999)), Some(json!(1000700099)))
    );
    let (_, proxy) = inject(port, root.path(), "default", &pod("default"));
    assert_eq!(ids(&proxy), (Some(json!(1337)), Some(json!(1337))));
    drop(daemon);

    // Not on OpenShift: the namespace's ranges are not looked at.
    let (daemon, root) = start(&rt, &cfg, e2e::webhook_options());
    let port = daemon.webhook_addr.unwrap().port();
    let (_, proxy) = inject(port, root.path(), "shop", &pod("shop"));
    assert_eq!(ids(&proxy), (Some(json!(1337)), Some(json!(1337))));
}
