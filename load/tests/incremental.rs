//! Only what changed reaches a connected proxy: an endpoint change sends
//! EDS for the affected clusters alone (every subset the endpoint joins),
//! and a change in a namespace the proxy cannot see sends it nothing. Over
//! both SotW and Delta.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::time::Duration;

use istiod::{Daemon, Options};
use load::client::{Client, sidecar_node};
use load::mesh;

const PRIVATE: &str = "apiVersion: v1
kind: Service
metadata: {name: hidden, namespace: private, annotations: {networking.istio.io/exportTo: \".\"}}
spec:
  clusterIP: 10.96.200.1
  ports: [{name: http, port: 8080}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hidden, namespace: private}
spec:
  hosts: [hidden]
  exportTo: [\".\"]
  http: [{route: [{destination: {host: hidden}}], timeout: 1s}]
";

async fn wait(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A daemon on the config folder `dir`, and one ADS client (a sidecar in
/// `ns-0`) connected to it over SotW or, with `delta`, Delta xDS.
async fn start(dir: &std::path::Path, delta: bool) -> (Daemon, Client) {
    let daemon = Daemon::start(Options {
        source: istiod::Source::Folder(dir.to_owned()),
        xds_addr: "127.0.0.1:0".parse().unwrap(),
        monitoring_addr: None,
        debounce: Default::default(),
        ca: None,
        webhooks: None,
        push_throttle: 100,
        workload_entry_grace: istiod::autoregister::DEFAULT_GRACE,
        keepalive: Default::default(),
    })
    .await
    .unwrap();
    let client = Client::connect(
        &format!("http://{}", daemon.xds_addr),
        sidecar_node("client", "ns-0"),
        delta,
    )
    .await
    .unwrap();
    (daemon, client)
}

/// Gives service `i` of the mesh in `dir` `endpoints` endpoints (it was
/// written with two) and returns the names, sorted, of the one response
/// the client then gets, which must be EDS and remove nothing.
async fn endpoint_push(
    daemon: &Daemon,
    client: &Client,
    dir: &std::path::Path,
    i: usize,
    endpoints: usize,
) -> Vec<String> {
    let before = client.received().len();
    let version = daemon.snapshots.borrow().version;
    mesh::replace(&mesh::file(dir, i), &mesh::service_yaml(i, endpoints, 90)).unwrap();
    wait("the endpoint change", || {
        daemon.snapshots.borrow().version > version
    })
    .await;
    wait("a push", || client.received().len() > before).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pushed: Vec<_> = client.received()[before..].to_vec();
    assert_eq!(pushed.len(), 1, "one response: {pushed:?}");
    assert_eq!(pushed[0].type_url, translator::ENDPOINT_TYPE);
    assert!(pushed[0].removed.is_empty());
    let mut names = pushed[0].names.clone();
    names.sort();
    names
}

async fn only_what_changed(delta: bool) {
    let dir = tempfile::tempdir().unwrap();
    mesh::write(dir.path(), 20, 2).unwrap();
    std::fs::write(dir.path().join("private.yaml"), PRIVATE).unwrap();
    let (mut daemon, client) = start(dir.path(), delta).await;
    wait("initial config", || client.has_initial_config()).await;
    // Quiet: everything sent has been answered.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // An endpoint is added to svc-3: EDS for its cluster, nothing else.
    assert_eq!(
        endpoint_push(&daemon, &client, dir.path(), 3, 3).await,
        ["outbound|8080||svc-3.ns-0.svc.cluster.local"]
    );
    // An endpoint added to a service with subsets (svc-10: v1, v2): EDS for
    // each cluster the endpoint joins (the whole service and v1), found
    // through the config's endpoint index by hostname, and no other.
    assert_eq!(
        endpoint_push(&daemon, &client, dir.path(), 10, 3).await,
        [
            "outbound|8080|v1|svc-10.ns-0.svc.cluster.local",
            "outbound|8080||svc-10.ns-0.svc.cluster.local"
        ]
    );
    // The same services' endpoints changed again, back to two: the proxy's
    // record of what it was sent (taken from each patched config once it
    // had all of it) still tells what it has, so each change is pushed.
    assert_eq!(
        endpoint_push(&daemon, &client, dir.path(), 10, 2).await,
        [
            "outbound|8080|v1|svc-10.ns-0.svc.cluster.local",
            "outbound|8080||svc-10.ns-0.svc.cluster.local"
        ]
    );
    assert_eq!(
        endpoint_push(&daemon, &client, dir.path(), 3, 2).await,
        ["outbound|8080||svc-3.ns-0.svc.cluster.local"]
    );

    // A change the proxy cannot see (namespace `private`, exportTo ".").
    let before = client.received().len();
    let version = daemon.snapshots.borrow().version;
    mesh::replace(
        &dir.path().join("private.yaml"),
        &PRIVATE.replace("timeout: 1s", "timeout: 2s"),
    )
    .unwrap();
    wait("the private change", || {
        daemon.snapshots.borrow().version > version
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        client.received().len(),
        before,
        "nothing for a change out of sight"
    );

    // A routing change it can see: RDS only.
    let before = client.received().len();
    mesh::replace(&mesh::file(dir.path(), 5), &mesh::service_yaml(5, 2, 50)).unwrap();
    wait("a push", || client.received().len() > before).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let types: Vec<_> = client.received()[before..]
        .iter()
        .map(|r| r.type_url.clone())
        .collect();
    assert_eq!(types, [translator::ROUTE_TYPE]);

    // A new service: its cluster, then, once the proxy names it in a new
    // subscription (a new SotW list after many same-list ACKs; a Delta
    // subscribe after plain ACKs), its endpoints.
    let before = client.received().len();
    mesh::replace(&mesh::file(dir.path(), 20), &mesh::service_yaml(20, 2, 90)).unwrap();
    let cluster = format!(
        "outbound|8080||svc-20.{}.svc.cluster.local",
        mesh::namespace(20)
    );
    let got = |type_url: &str| {
        client.received()[before..]
            .iter()
            .position(|r| r.type_url == type_url && r.names.contains(&cluster))
    };
    wait("the new cluster's endpoints", || {
        got(translator::ENDPOINT_TYPE).is_some()
    })
    .await;
    let clusters = got(translator::CLUSTER_TYPE).expect("the new cluster");
    assert!(clusters < got(translator::ENDPOINT_TYPE).unwrap_or_default());
    daemon.shutdown().await;
}

#[tokio::test]
async fn only_what_changed_over_sotw() {
    only_what_changed(false).await;
}

#[tokio::test]
async fn only_what_changed_over_delta() {
    only_what_changed(true).await;
}

async fn sidecar_scopes_a_connected_proxy(delta: bool) {
    let dir = tempfile::tempdir().unwrap();
    // 150 services: ns-0 holds 100, ns-1 holds 50.
    mesh::write(dir.path(), 150, 1).unwrap();
    let (mut daemon, client) = start(dir.path(), delta).await;
    let clusters = |ns: &str| {
        client
            .state
            .lock()
            .unwrap()
            .get(translator::CLUSTER_TYPE)
            .map(|m| {
                m.keys()
                    .filter(|k| k.ends_with(&format!(".{ns}.svc.cluster.local")))
                    .count()
            })
            .unwrap_or(0)
    };
    wait("initial config", || {
        client.has_initial_config() && clusters("ns-1") > 0
    })
    .await;
    // A Sidecar for ns-0: only its own namespace.
    std::fs::write(
        dir.path().join("sidecar.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: ns-0}\nspec:\n  egress: [{hosts: [\"./*\"]}]\n",
    )
    .unwrap();
    wait("the other namespace to be dropped", || {
        clusters("ns-1") == 0
    })
    .await;
    assert!(clusters("ns-0") >= 100, "its own namespace stays");
    daemon.shutdown().await;
}

#[tokio::test]
async fn sidecar_scopes_a_connected_proxy_over_sotw() {
    sidecar_scopes_a_connected_proxy(false).await;
}

#[tokio::test]
async fn sidecar_scopes_a_connected_proxy_over_delta() {
    sidecar_scopes_a_connected_proxy(true).await;
}
