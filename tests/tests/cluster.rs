//! Against a real Kubernetes cluster (ignored unless asked for; no API
//! server can be installed on the build machines). Run with a cluster you
//! may write to, `kubectl` on the PATH and Envoy from `scripts/setup`:
//!
//! ```sh
//! KUBECONFIG=~/.kube/config cargo test -p e2e --test cluster -- --ignored
//! ```
//!
//! It applies `manifests/crds.yaml` (server-side), creates a scratch
//! namespace with Istio's Bookinfo (`bookinfo.yaml`) and its
//! DestinationRules and all-v1 VirtualServices, runs the daemon out of
//! cluster on the kubeconfig, connects a real Envoy as productpage's
//! sidecar, and checks that its routes follow a `kubectl apply` of a new
//! VirtualService. The namespace is deleted at the end (the CRDs are kept).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::process::Command;
use std::time::Instant;

use e2e::{Envoy, SYNC, istio_testdata, wait_ready, wait_synced, workspace};
use istiod::sources::kube::KubeSource;
use istiod::{Daemon, Options, Source};

fn kubectl(args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("kubectl {args:?}: {e} (is kubectl on the PATH?)"));
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("kubectl")
            .args(["delete", "namespace", &self.0, "--wait=false"])
            .status();
    }
}

/// The cluster of the reviews route in Envoy's route configuration for port 9080.
fn reviews_cluster(envoy: &Envoy, ns: &str) -> Option<String> {
    let dump: serde_json::Value =
        serde_json::from_str(&envoy.admin("/config_dump?resource=dynamic_route_configs")?).ok()?;
    let host = format!("reviews.{ns}.svc.cluster.local");
    dump["configs"]
        .as_array()?
        .iter()
        .flat_map(|c| {
            c["route_config"]["virtual_hosts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .find(|vh| {
            vh["domains"]
                .as_array()
                .is_some_and(|d| d.iter().any(|x| x == &*host))
        })
        .and_then(|vh| {
            vh["routes"][0]["route"]["cluster"]
                .as_str()
                .map(str::to_owned)
        })
}

#[test]
#[ignore = "needs cluster"]
fn routes_follow_kubectl_apply_on_a_real_cluster() {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "set KUBECONFIG to a cluster this test may write to"
    );
    let samples = istio_testdata().join("samples/bookinfo");
    let crds = workspace().join("manifests/crds.yaml");
    kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        crds.to_str().unwrap(),
    ]);
    kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/virtualservices.networking.istio.io",
    ]);
    let ns = Namespace(format!("istiod-rs-e2e-{}", std::process::id()));
    kubectl(&["create", "namespace", &ns.0]);
    for file in [
        "platform/kube/bookinfo.yaml",
        "networking/destination-rule-all.yaml",
        "networking/virtual-service-all-v1.yaml",
    ] {
        kubectl(&[
            "apply",
            "-n",
            &ns.0,
            "-f",
            samples.join(file).to_str().unwrap(),
        ]);
    }

    let rt = e2e::runtime();
    let daemon = rt.block_on(async {
        let source = KubeSource::infer(None, "istio-system".into())
            .await
            .unwrap();
        Daemon::start(Options {
            source: Source::Kubernetes(Box::new(source)),
            xds_addr: "127.0.0.1:0".parse().unwrap(),
            monitoring_addr: Some("127.0.0.1:0".parse().unwrap()),
            push_throttle: 100,
            workload_entry_grace: istiod::autoregister::DEFAULT_GRACE,
            keepalive: Default::default(),
            debounce: Default::default(),
            ca: None,
            webhooks: None,
        })
        .await
        .unwrap()
    });
    wait_ready(&daemon);
    let node = format!(
        "sidecar~10.0.0.1~productpage-v1-0.{0}~{0}.svc.cluster.local",
        ns.0
    );
    let envoy = Envoy::launch(
        &node,
        &[("app", "productpage"), ("version", "v1")],
        "",
        daemon.xds_addr,
        15900,
    );
    wait_synced(&daemon, &[&envoy], SYNC * 3);
    let v1 = format!("outbound|9080|v1|reviews.{}.svc.cluster.local", ns.0);
    let v3 = format!("outbound|9080|v3|reviews.{}.svc.cluster.local", ns.0);
    envoy.wait_for(SYNC, "reviews -> v1", |e| {
        reviews_cluster(e, &ns.0).as_deref() == Some(v1.as_str())
    });

    kubectl(&[
        "apply",
        "-n",
        &ns.0,
        "-f",
        samples
            .join("networking/virtual-service-reviews-v3.yaml")
            .to_str()
            .unwrap(),
    ]);
    let start = Instant::now();
    envoy.wait_for(SYNC * 3, "reviews -> v3 after kubectl apply", |e| {
        reviews_cluster(e, &ns.0).as_deref() == Some(v3.as_str())
    });
    println!("kubectl apply -> Envoy route change: {:?}", start.elapsed());
    assert_eq!(envoy.rejected(), 0);
}

/// Deletes a cluster-scoped object at the end of a test.
struct ClusterObject(&'static str, String);

impl Drop for ClusterObject {
    fn drop(&mut self) {
        let _ = Command::new("kubectl")
            .args(["delete", self.0, &self.1, "--wait=false"])
            .status();
    }
}

fn kubectl_stdin(args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new("kubectl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl on the PATH");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The webhooks on a real API server, the daemon out of cluster: the API
/// server calls it by URL (`ISTIOD_WEBHOOK_HOST`: an address of this
/// machine the API server can reach, e.g. the docker bridge's gateway for
/// kind; it goes into the serving certificate as Istio's
/// `ISTIOD_CUSTOM_HOST` does). A pod created in a namespace labelled
/// `istio-injection=enabled` comes back injected, one in an unlabelled
/// namespace does not, and an invalid VirtualService is denied with the
/// message.
#[test]
#[ignore = "needs cluster"]
fn webhooks_inject_and_validate_on_a_real_cluster() {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "set KUBECONFIG to a cluster this test may write to"
    );
    let host = std::env::var("ISTIOD_WEBHOOK_HOST")
        .expect("set ISTIOD_WEBHOOK_HOST to an address of this machine the API server can reach");
    let crds = workspace().join("manifests/crds.yaml");
    kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        crds.to_str().unwrap(),
    ]);
    let id = std::process::id();
    let injected_ns = Namespace(format!("istiod-rs-inject-{id}"));
    let plain_ns = Namespace(format!("istiod-rs-plain-{id}"));
    kubectl(&["create", "namespace", &injected_ns.0]);
    kubectl(&[
        "label",
        "namespace",
        &injected_ns.0,
        "istio-injection=enabled",
    ]);
    kubectl(&["create", "namespace", &plain_ns.0]);

    let ca_dir = tempfile::tempdir().unwrap();
    let rt = e2e::runtime();
    let daemon = rt.block_on(async {
        let source = KubeSource::infer(None, "istio-system".into())
            .await
            .unwrap();
        Daemon::start(Options {
            source: Source::Kubernetes(Box::new(source)),
            xds_addr: "127.0.0.1:0".parse().unwrap(),
            monitoring_addr: None,
            push_throttle: 100,
            workload_entry_grace: istiod::autoregister::DEFAULT_GRACE,
            keepalive: Default::default(),
            debounce: Default::default(),
            ca: Some(istiod::secure::CaOptions {
                dir: ca_dir.path().to_owned(),
                token_issuer_keys: None,
                custom_hosts: vec![host.clone()],
                ..e2e::ca_options()
            }),
            webhooks: Some(istiod::webhooks::WebhookOptions {
                // Reachable from the API server.
                addr: "0.0.0.0:0".parse().unwrap(),
                ..e2e::webhook_options()
            }),
        })
        .await
        .unwrap()
    });
    wait_ready(&daemon);
    let port = daemon.webhook_addr.unwrap().port();
    let bundle = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        daemon.secure.as_ref().unwrap().authority.root_pem(),
    );
    let name = format!("istiod-rs-e2e-{id}");
    let configs = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
         "metadata": {"name": name},
         "webhooks": [{"name": "namespace.sidecar-injector.istio.io",
            "clientConfig": {"url": format!("https://{host}:{port}/inject"), "caBundle": bundle},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": injected_ns.0}},
            "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"]}]},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
         "metadata": {"name": name},
         "webhooks": [{"name": "rev.validation.istio.io",
            "clientConfig": {"url": format!("https://{host}:{port}/validate"), "caBundle": bundle},
            "rules": [{"operations": ["CREATE", "UPDATE"], "apiGroups": ["networking.istio.io"],
                       "apiVersions": ["*"], "resources": ["*"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": injected_ns.0}},
            "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"]}]},
    ]});
    let out = kubectl_stdin(&["apply", "-f", "-"], &configs.to_string());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _mutating = ClusterObject("mutatingwebhookconfiguration", name.clone());
    let _validating = ClusterObject("validatingwebhookconfiguration", name.clone());

    let init_containers = |ns: &str| -> Vec<String> {
        kubectl(&[
            "run",
            "sleep",
            "-n",
            ns,
            "--image=curlimages/curl",
            "--restart=Never",
            "--command",
            "--",
            "sleep",
            "3600",
        ]);
        let pod: serde_json::Value =
            serde_json::from_str(&kubectl(&["get", "pod", "sleep", "-n", ns, "-o", "json"]))
                .unwrap();
        pod["spec"]["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect()
    };
    let start = Instant::now();
    assert_eq!(
        init_containers(&injected_ns.0),
        ["istio-init", "istio-proxy"],
        "injected in {:?}",
        start.elapsed()
    );
    assert!(init_containers(&plain_ns.0).is_empty());

    let vs = format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: bad, namespace: {}}}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - {{destination: {{host: reviews}}, weight: 60}}\n    - {{destination: {{host: reviews}}, weight: 60}}\n",
        injected_ns.0
    );
    let out = kubectl_stdin(&["apply", "-f", "-"], &vs);
    assert!(
        !out.status.success(),
        "an invalid VirtualService was stored"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("spec.http[0].route"), "{stderr}");
}
