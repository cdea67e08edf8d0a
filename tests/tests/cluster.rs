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
