//! Locality load balancing on a real Envoy (DestinationRule
//! `localityLbSetting`): failover keeps traffic in the proxy's zone and
//! moves it outward as endpoints fail; `distribute` splits by weight;
//! `failoverPriority` orders endpoints by the labels they share with the
//! client, and by its network.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::collections::BTreeMap;

use e2e::{Mesh, SIDECAR, SIDECAR_LABELS, assert_binomial, tally};

const URL: &str = "http://10.96.0.50:9080";

/// `reviews-local`: the three reviews backends, each in its own locality
/// (pod label `istio-locality`, as Istio reads it).
const PLATFORM: &str = "apiVersion: v1
kind: Service
metadata: {name: reviews-local, namespace: default}
spec:
  clusterIP: 10.96.0.50
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Pod
metadata: {name: local-v1, namespace: default, labels: {app: reviews-local, istio-locality: region1.zone1}}
status: {podIP: 127.0.1.4}
---
apiVersion: v1
kind: Pod
metadata: {name: local-v2, namespace: default, labels: {app: reviews-local, istio-locality: region1.zone2}}
status: {podIP: 127.0.1.5}
---
apiVersion: v1
kind: Pod
metadata: {name: local-v3, namespace: default, labels: {app: reviews-local, istio-locality: region2.zone1}}
status: {podIP: 127.0.1.6}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: reviews-local-1, namespace: default, labels: {kubernetes.io/service-name: reviews-local}}
addressType: IPv4
ports: [{name: http, port: 9080}]
endpoints:
- {addresses: [127.0.1.4], targetRef: {kind: Pod, name: local-v1}}
- {addresses: [127.0.1.5], targetRef: {kind: Pod, name: local-v2}}
- {addresses: [127.0.1.6], targetRef: {kind: Pod, name: local-v3}}
";

/// reviews-local's DestinationRule: outlier detection ejecting an endpoint
/// on its first 5xx, then `more` (YAML under `trafficPolicy`).
fn rule_with(more: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews-local}}
spec:
  host: reviews-local
  trafficPolicy:
    outlierDetection: {{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 3m, maxEjectionPercent: 100}}
{more}"
    )
}

/// [`rule_with`] a `localityLbSetting` of `lb`.
fn rule(lb: &str) -> String {
    rule_with(&format!(
        "    loadBalancer:\n      localityLbSetting:\n{lb}"
    ))
}

/// The mesh with reviews-local and `dr`, and productpage's sidecar in
/// region1/zone1, in sync.
fn local_mesh(dr: &str) -> (Mesh, e2e::Envoy) {
    let mesh = Mesh::start(true, &[]);
    mesh.cfg.write("platform-local.yaml", PLATFORM);
    mesh.cfg.write("dr.yaml", dr);
    mesh.wait_loaded(2);
    let envoy = mesh.proxy_at(SIDECAR, &SIDECAR_LABELS, "region1/zone1", 15000);
    (mesh, envoy)
}

fn only(version: &str, n: usize) -> BTreeMap<String, usize> {
    BTreeMap::from([(format!("reviews {version}"), n)])
}

/// Sends requests until `version` answers (Envoy moves load to the next
/// priority once the failing endpoint is ejected, at the latest on the next
/// outlier-detection interval), then requires it to answer every request.
fn failover_to(url: &str, version: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !tally(url, "reviews-local", &[], 1).contains_key(&format!("reviews {version}")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no failover to {version}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(tally(url, "reviews-local", &[], 30), only(version, 30));
}

#[test]
fn failover_stays_local_then_moves_out_by_distance() {
    let (_mesh, envoy) = local_mesh(&rule(
        "        enabled: true\n        failover: [{from: region1, to: region2}]\n",
    ));
    // Same zone first.
    assert_eq!(
        tally(&format!("{URL}/"), "reviews-local", &[], 30),
        only("v1", 30)
    );
    // v1 fails and is ejected: the same region's other zone takes over.
    failover_to(&format!("{URL}/fail-on/v1"), "v2");
    // v2 fails too: the failover region.
    failover_to(&format!("{URL}/fail-on/v2"), "v3");
    assert_eq!(envoy.rejected(), 0);
}

#[test]
fn distribute_splits_by_locality_weight() {
    let (_mesh, envoy) = local_mesh(&rule(
        "        distribute:\n        - from: region1/zone1/*\n          to: {\"region1/zone1/*\": 75, \"region2/zone1/*\": 25}\n",
    ));
    let n = 400;
    let counts = tally(&format!("{URL}/"), "reviews-local", &[], n);
    assert_eq!(
        counts.get("reviews v2"),
        None,
        "region1/zone2 gets no weight: {counts:?}"
    );
    assert_binomial(
        counts.get("reviews v1").copied().unwrap_or(0),
        n,
        0.75,
        "region1/zone1",
    );
    assert_eq!(
        counts.get("reviews v1").copied().unwrap_or(0)
            + counts.get("reviews v3").copied().unwrap_or(0),
        n
    );
    assert_eq!(envoy.rejected(), 0);
}

/// Istio's default mesh `localityLbSetting` (`{enabled: true}`): a
/// DestinationRule with outlier detection and no `localityLbSetting` keeps
/// traffic in the proxy's zone and fails over by distance; the mesh config
/// turning it off spreads traffic over every locality.
#[test]
fn the_mesh_default_prioritises_localities_under_outlier_detection() {
    let (mesh, envoy) = local_mesh(&rule_with(""));
    assert_eq!(
        tally(&format!("{URL}/"), "reviews-local", &[], 30),
        only("v1", 30)
    );
    failover_to(&format!("{URL}/fail-on/v1"), "v2");
    mesh.apply(
        &[&envoy],
        "mesh.yaml",
        &e2e::mesh_config("localityLbSetting: {enabled: false}"),
    );
    // One priority now: the ejected v1 aside, v2 and v3 share the load.
    let counts = tally(&format!("{URL}/"), "reviews-local", &[], 200);
    assert_binomial(
        counts.get("reviews v3").copied().unwrap_or(0),
        200,
        0.5,
        "region2/zone1 without locality priorities",
    );
    assert_eq!(envoy.rejected(), 0);
}

/// `failoverPriority` (Istio's `applyPriorityFailover`): a `key=value`
/// entry puts the endpoints with that label first; then endpoints sharing
/// the client's `rack` label and then its region come first, whatever the
/// zones. The client (region1/zone1, rack a) goes to v2 (region1/zone2,
/// rack a), not to v1 in its own zone (rack b); then to v3 (rack a, the
/// other region); last to v1.
#[test]
fn failover_priority_orders_endpoints_by_the_labels_they_share() {
    let platform = PLATFORM
        .replace(
            "labels: {app: reviews-local, istio-locality: region1.zone1}",
            "labels: {app: reviews-local, istio-locality: region1.zone1, rack: b}",
        )
        .replace(
            "labels: {app: reviews-local, istio-locality: region1.zone2}",
            "labels: {app: reviews-local, istio-locality: region1.zone2, rack: a}",
        )
        .replace(
            "labels: {app: reviews-local, istio-locality: region2.zone1}",
            "labels: {app: reviews-local, istio-locality: region2.zone1, rack: a}",
        );
    assert_eq!(platform.matches("rack:").count(), 3);
    let mesh = Mesh::start(true, &[]);
    mesh.cfg.write("platform-local.yaml", &platform);
    // A `key=value` entry compares the endpoints with its value alone:
    // rack b first, though the client is in rack a.
    mesh.cfg
        .write("dr.yaml", &rule("        failoverPriority: [rack=b]\n"));
    mesh.wait_loaded(2);
    let labels = [SIDECAR_LABELS[0], SIDECAR_LABELS[1], ("rack", "a")];
    let envoy = mesh.proxy_at(SIDECAR, &labels, "region1/zone1", 15000);
    assert_eq!(
        tally(&format!("{URL}/"), "reviews-local", &[], 30),
        only("v1", 30)
    );
    mesh.apply(
        &[&envoy],
        "dr.yaml",
        &rule("        failoverPriority: [rack, topology.kubernetes.io/region]\n"),
    );
    assert_eq!(
        tally(&format!("{URL}/"), "reviews-local", &[], 30),
        only("v2", 30)
    );
    failover_to(&format!("{URL}/fail-on/v2"), "v3");
    failover_to(&format!("{URL}/fail-on/v3"), "v1");
    assert_eq!(envoy.rejected(), 0);
}

/// `failoverPriority` on `topology.istio.io/network` (Istio's documented
/// example): the client's network is its node metadata `NETWORK`, each
/// endpoint's its pod's label. The client (region1/zone1, network1) goes
/// to v2, the one endpoint in network1, not to v1 in its own zone; once v2
/// fails, v1 and v3 share the load: as in Istio, the priorities come from
/// `failoverPriority` alone unless `failover` is set too.
#[test]
fn failover_priority_on_the_network_prefers_the_clients_network() {
    let network = |locality: &str, net: &str| {
        (
            format!("labels: {{app: reviews-local, istio-locality: {locality}}}"),
            format!(
                "labels: {{app: reviews-local, istio-locality: {locality}, topology.istio.io/network: {net}}}"
            ),
        )
    };
    let mut platform = PLATFORM.to_owned();
    for (locality, net) in [
        ("region1.zone1", "network2"),
        ("region1.zone2", "network1"),
        ("region2.zone1", "network2"),
    ] {
        let (from, to) = network(locality, net);
        platform = platform.replace(&from, &to);
    }
    assert_eq!(platform.matches("topology.istio.io/network").count(), 3);
    let mesh = Mesh::start(true, &[]);
    mesh.cfg.write("platform-local.yaml", &platform);
    mesh.cfg.write(
        "dr.yaml",
        &rule("        failoverPriority: [topology.istio.io/network]\n"),
    );
    mesh.wait_loaded(2);
    e2e::use_network("network1");
    let envoy = mesh.proxy_at(SIDECAR, &SIDECAR_LABELS, "region1/zone1", 15000);
    assert_eq!(
        tally(&format!("{URL}/"), "reviews-local", &[], 30),
        only("v2", 30)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while tally(&format!("{URL}/fail-on/v2"), "reviews-local", &[], 1).contains_key("reviews v2") {
        assert!(std::time::Instant::now() < deadline, "v2 not ejected");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let counts = tally(&format!("{URL}/"), "reviews-local", &[], 40);
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        ["reviews v1", "reviews v3"],
        "one priority for the other network (2 x 0.5^40 to miss one by chance)"
    );
    assert_eq!(envoy.rejected(), 0);
}
