//! `generate_encoded` (what the daemon sends) against `generate`: the same
//! resources byte for byte, for proxies generated one after the other from
//! one snapshot, so that each later proxy reads the clusters, load
//! assignments and default routes the earlier ones left in the snapshot's
//! memos. The meshes
//! make the memo's key matter: a DestinationRule exported to its own
//! namespace only, another rule for the same host in a second namespace,
//! and locality load balancing over endpoints in two zones.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::path::Path;

use translator::changes::ChangeSet;
use translator::encoded::{Encoded, encode};
use translator::model::{MeshConfig, Proxy, Snapshot};
use translator::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, SECRET_TYPE};

fn snapshot(texts: &[String]) -> Snapshot {
    Snapshot::build(1, &crds::objects_of(texts), MeshConfig::default())
}

fn proxy(node_id: &str, locality: &str) -> Proxy {
    let mut p = Proxy::from_node_id(node_id, None, Default::default()).unwrap();
    p.locality = locality.into();
    p
}

fn sidecar(namespace: &str, locality: &str) -> Proxy {
    proxy(
        &format!("sidecar~10.1.0.9~client.{namespace}~{namespace}.svc.cluster.local"),
        locality,
    )
}

/// `generate`'s resources of each type, encoded one by one, by name.
fn expected(snap: &Snapshot, proxy: &Proxy) -> Vec<(&'static str, Vec<Encoded>)> {
    let out = translator::generate(snap, proxy);
    let each = |type_url: &'static str, items: Vec<Encoded>| (type_url, sorted(items));
    vec![
        each(
            CLUSTER_TYPE,
            out.clusters
                .iter()
                .map(|c| encode(CLUSTER_TYPE, &c.name, c))
                .collect(),
        ),
        each(
            ENDPOINT_TYPE,
            out.endpoints
                .iter()
                .map(|c| encode(ENDPOINT_TYPE, &c.cluster_name, c))
                .collect(),
        ),
        each(
            LISTENER_TYPE,
            out.listeners
                .iter()
                .map(|l| encode(LISTENER_TYPE, &l.name, l))
                .collect(),
        ),
        each(
            ROUTE_TYPE,
            out.routes
                .iter()
                .map(|r| encode(ROUTE_TYPE, &r.name, r))
                .collect(),
        ),
        each(
            SECRET_TYPE,
            out.secrets
                .iter()
                .map(|s| encode(SECRET_TYPE, &s.name, s))
                .collect(),
        ),
    ]
}

fn sorted(mut items: Vec<Encoded>) -> Vec<Encoded> {
    items.sort_by(|a, b| a.0.cmp(&b.0));
    items
}

fn encoded(snap: &Snapshot, proxy: &Proxy) -> Vec<(&'static str, Vec<Encoded>)> {
    let mut out = translator::generate_encoded(snap, proxy);
    [
        CLUSTER_TYPE,
        ENDPOINT_TYPE,
        LISTENER_TYPE,
        ROUTE_TYPE,
        SECRET_TYPE,
    ]
    .into_iter()
    .map(|t| (t, sorted(out.take(t))))
    .collect()
}

/// Every proxy in turn on one snapshot: each must get what it would get
/// alone.
fn check_in_turn(snap: &Snapshot, proxies: &[Proxy]) {
    for (i, p) in proxies.iter().enumerate() {
        let want = expected(snap, p);
        let got = encoded(snap, p);
        for ((t, want), (_, got)) in want.iter().zip(&got) {
            let names = |v: &[Encoded]| v.iter().map(|e| e.0.to_string()).collect::<Vec<_>>();
            assert_eq!(names(got), names(want), "proxy {i} ({}), {t}", p.id);
            for (g, w) in got.iter().zip(want) {
                assert!(
                    g == w,
                    "proxy {i} ({}), {t}: {} differs from a fresh generation",
                    p.id,
                    w.0
                );
            }
        }
    }
}

/// Two namespaces see `db` through different rules (`default`'s own,
/// exported to itself only, and `other`'s, which hashes on a header), a
/// third through none; `db`'s endpoints are in two zones and the rules turn
/// on locality failover; it has two HTTP ports, each with its own default
/// route.
const TWO_RULES: &str = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.example.com]
  ports:
  - {number: 9000, name: http, protocol: HTTP}
  - {number: 9001, name: http-admin, protocol: HTTP}
  resolution: STATIC
  endpoints:
  - {address: 192.168.1.1, locality: region1/zone1, labels: {version: v1}}
  - {address: 192.168.1.2, locality: region1/zone2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: default}
spec:
  host: db.example.com
  exportTo: [.]
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1}
    loadBalancer: {localityLbSetting: {enabled: true}}
  subsets:
  - {name: v1, labels: {version: v1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: other}
spec:
  host: db.example.com
  exportTo: [.]
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1}
    loadBalancer: {consistentHash: {httpHeaderName: x-user}}
  subsets:
  - {name: v2, labels: {version: v2}}
";

#[test]
fn memoised_resources_match_a_fresh_generation_per_rule_locality_and_port() {
    let snap = snapshot(&[TWO_RULES.to_owned()]);
    let proxies = [
        sidecar("default", "region1/zone1"),
        sidecar("default", "region1/zone2"),
        sidecar("other", "region1/zone1"),
        sidecar("third", "region1/zone1"),
        sidecar("default", "region1/zone1"),
        sidecar("other", ""),
    ];
    check_in_turn(&snap, &proxies);
    // The rules and localities really differ in what they give.
    let eds_names = |p: &Proxy| {
        expected(&snap, p)[1]
            .1
            .iter()
            .map(|e| e.0.to_string())
            .collect::<Vec<_>>()
    };
    assert!(eds_names(&proxies[0]).contains(&"outbound|9000|v1|db.example.com".to_owned()));
    assert!(eds_names(&proxies[2]).contains(&"outbound|9000|v2|db.example.com".to_owned()));
    assert_eq!(
        eds_names(&proxies[3]),
        [
            "outbound|9000||db.example.com",
            "outbound|9001||db.example.com"
        ]
    );
    let of = |p: &Proxy, t: usize| expected(&snap, p)[t].1.clone();
    assert_ne!(
        of(&proxies[0], 1),
        of(&proxies[1], 1),
        "EDS, zone1 vs zone2"
    );
    assert_ne!(
        of(&proxies[0], 3),
        of(&proxies[2], 3),
        "RDS, default vs other"
    );
    let routes = of(&proxies[0], 3);
    assert_eq!(routes.len(), 2, "route configurations 9000 and 9001");
}

/// Bookinfo's platform and Istio's gateway, subset and 80/20 samples.
fn bookinfo() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let samples = crds::istio_testdata().join("samples/bookinfo/networking");
    let mut texts =
        vec![std::fs::read_to_string(root.join("examples/bookinfo/platform.yaml")).unwrap()];
    for sample in [
        "bookinfo-gateway.yaml",
        "destination-rule-all.yaml",
        "virtual-service-reviews-80-20.yaml",
    ] {
        texts.push(std::fs::read_to_string(samples.join(sample)).unwrap());
    }
    texts
}

/// [`bookinfo`] with `extra` objects (YAML ending in `---`, or empty) and
/// the mesh ConfigMap whose `mesh` key holds `mesh` (lines after the first
/// indented four spaces).
fn bookinfo_with_mesh(extra: &str, mesh: &str) -> Vec<String> {
    let mut texts = bookinfo();
    texts.push(format!(
        "{extra}apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: |\n    {mesh}\n"
    ));
    texts
}

fn bookinfo_proxies() -> [Proxy; 4] {
    let gateway = proxy(
        "router~10.1.0.5~istio-ingressgateway-1.istio-system~istio-system.svc.cluster.local",
        "",
    );
    [
        sidecar("default", ""),
        gateway,
        sidecar("other", ""),
        sidecar("default", "us-east/a"),
    ]
}

#[test]
fn memoised_bookinfo_matches_a_fresh_generation_and_is_shared() {
    let snap = snapshot(&bookinfo());
    let proxies = bookinfo_proxies();
    check_in_turn(&snap, &proxies);
    // A proxy in another namespace reads the same encoding (the bytes
    // themselves, not a copy) of a cluster the first proxy built.
    let reviews = "outbound|9080|v1|reviews.default.svc.cluster.local";
    let find = |p: &Proxy| {
        translator::generate_encoded(&snap, p)
            .take(CLUSTER_TYPE)
            .into_iter()
            .find(|e| &*e.0 == reviews)
            .unwrap()
            .2
    };
    let (first, second) = (find(&proxies[0]), find(&proxies[2]));
    assert_eq!(first.as_ptr(), second.as_ptr());
}

/// The same under the mesh config's connection and retry defaults, which
/// take clusters and default routes off their pre-encoded paths.
#[test]
fn memoised_bookinfo_matches_under_mesh_connection_and_retry_defaults() {
    let snap = snapshot(&bookinfo_with_mesh(
        "",
        "connectTimeout: 3s
    tcpKeepalive: {time: 300s}
    h2UpgradePolicy: UPGRADE
    defaultHttpRetryPolicy: {attempts: 5, retryOn: '503'}",
    ));
    assert!(snap.mesh.h2_upgrade && snap.mesh.default_retry.is_some());
    check_in_turn(&snap, &bookinfo_proxies());
}

/// The same with persistent sessions: a cookie on reviews (one endpoint
/// draining: `health_status` in the written assignment), a header on
/// ratings (both virtual hosts' per-filter configs in the written route
/// configuration), and reviews exposed by its own name on the gateway.
#[test]
fn memoised_bookinfo_matches_with_persistent_sessions() {
    let texts = edited(
        &edited(
            &edited(
                &bookinfo(),
                "labels: {app: reviews, service: reviews}",
                "labels: {app: reviews, istio.io/persistent-session: sticky}",
            ),
            "labels: {app: ratings, service: ratings}",
            "labels: {app: ratings, istio.io/persistent-session-header: x-session}",
        ),
        "- addresses: [\"127.0.1.6\"]\n  conditions: {ready: true}",
        "- addresses: [\"127.0.1.6\"]\n  conditions: {ready: false, serving: true, terminating: true}",
    );
    let mut texts = texts;
    texts.push(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-direct, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  gateways: [bookinfo-gateway]
  http:
  - route: [{destination: {host: reviews}}]
"
        .into(),
    );
    let snap = snapshot(&texts);
    let reviews = &snap.services["reviews.default.svc.cluster.local"];
    assert!(reviews.keeps_draining() && reviews.endpoints.iter().any(|e| e.draining));
    check_in_turn(&snap, &bookinfo_proxies());
}

/// The same with tracing on (a Zipkin provider): decorators take default
/// routes off their pre-encoded path, and tracers go on every connection
/// manager.
#[test]
fn memoised_bookinfo_matches_with_tracing() {
    let snap = snapshot(&bookinfo_with_mesh(
        "apiVersion: v1
kind: Service
metadata: {name: zipkin, namespace: istio-system}
spec:
  clusterIP: 10.96.0.90
  ports: [{name: http-query, port: 9411}]
---
",
        "extensionProviders: [{name: zipkin, zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}}]
    defaultProviders: {tracing: [zipkin]}",
    ));
    assert!(snap.mesh.tracing.is_some());
    check_in_turn(&snap, &bookinfo_proxies());
}

/// What the daemon labels a snapshot's first config key by
/// (`istiod_xds_generation_seconds{kind="first_key"}`): nothing memoised
/// in a new snapshot or a copy, something once a config is generated, and
/// in a changed snapshot that took over what its predecessor built.
#[test]
fn nothing_is_memoised_until_a_config_is_generated_or_taken_over() {
    let texts = bookinfo();
    let snap = snapshot(&texts);
    assert!(snap.nothing_memoised());
    drop(translator::generate_encoded(&snap, &bookinfo_proxies()[0]));
    assert!(!snap.nothing_memoised());
    assert!(snap.clone().nothing_memoised(), "a copy starts empty");
    let after = after_change(&snap, &texts, &[]);
    assert!(
        !after.nothing_memoised(),
        "taken over from the snapshot before"
    );
}

/// A domain claimed by two services (a ServiceEntry's address is
/// `reviews`' VIP) is written once, with the first service's virtual host,
/// as the message path decides: the written route configurations (each
/// virtual host's name and domains laid out by hand) equal prost's.
#[test]
fn written_domains_match_the_messages_when_a_domain_is_claimed_twice() {
    let mut texts = bookinfo();
    texts.push(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext, namespace: other}\n\
         spec:\n  hosts: [reviews.example.com]\n  addresses: [10.96.0.13]\n  location: MESH_EXTERNAL\n  resolution: DNS\n  ports: [{number: 9080, name: http, protocol: HTTP}]\n"
            .to_string(),
    );
    let snap = snapshot(&texts);
    check_in_turn(&snap, &bookinfo_proxies());
}

/// `texts` with `from` replaced by `to` (which must occur).
fn edited(texts: &[String], from: &str, to: &str) -> Vec<String> {
    assert!(texts.iter().any(|t| t.contains(from)), "{from:?} not found");
    texts.iter().map(|t| t.replace(from, to)).collect()
}

/// A snapshot after `before`, which every proxy was generated from, taking
/// over its memos: each proxy must get what a fresh generation gives it.
fn after_change(before: &Snapshot, texts: &[String], proxies: &[Proxy]) -> Snapshot {
    for p in proxies {
        drop(translator::generate_encoded(before, p));
    }
    let mut after = snapshot(texts);
    after.version = before.version + 1;
    let changes = ChangeSet::between(before, &after);
    after.inherit_memos(before, &changes);
    // Nothing from itself (and no deadlock), nor with another change set.
    after.inherit_memos(&after, &changes);
    after.inherit_memos(before, &ChangeSet::default());
    check_in_turn(&after, proxies);
    after
}

fn cluster_bytes(snap: &Snapshot, p: &Proxy, name: &str) -> bytes::Bytes {
    translator::generate_encoded(snap, p)
        .take(CLUSTER_TYPE)
        .into_iter()
        .find(|e| &*e.0 == name)
        .unwrap()
        .2
}

#[test]
fn a_change_keeps_what_it_did_not_touch_and_rebuilds_the_rest() {
    // Each change feeds some memoised clusters or routes; what it feeds
    // must be built again, the rest taken over.
    let two_rules = [TWO_RULES.to_owned()];
    let proxies = [
        sidecar("default", "region1/zone1"),
        sidecar("other", "region1/zone2"),
        sidecar("third", ""),
    ];
    let before = snapshot(&two_rules);
    for (from, to) in [
        // An endpoint: the service's model.
        ("192.168.1.2", "192.168.1.3"),
        // A subset of `default`'s rule.
        (
            "{name: v1, labels: {version: v1}}",
            "{name: v1, labels: {version: v2}}",
        ),
        // The hash of `other`'s rule: its default routes.
        ("httpHeaderName: x-user", "httpHeaderName: x-tenant"),
    ] {
        after_change(&before, &edited(&two_rules, from, to), &proxies);
    }

    // reviews v1 with a sidecar, so that auto mTLS applies to it.
    let texts = edited(
        &bookinfo(),
        "labels: {app: reviews, version: v1}",
        "labels: {app: reviews, version: v1, security.istio.io/tlsMode: istio}",
    );
    let proxies = bookinfo_proxies();
    let before = snapshot(&texts);
    // A PeerAuthentication: auto mTLS of every cluster.
    let mut disabled = texts.clone();
    disabled.push(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
         metadata: {name: default, namespace: default}\nspec:\n  mtls: {mode: DISABLE}\n"
            .to_owned(),
    );
    after_change(&before, &disabled, &proxies);
    // A VirtualService's weights: no cluster depends on them, so the
    // clusters are taken over, the very bytes.
    let reweighted = edited(&texts, "weight: 80", "weight: 70");
    let after = after_change(
        &before,
        &edited(&reweighted, "weight: 20", "weight: 30"),
        &proxies,
    );
    let reviews = "outbound|9080|v1|reviews.default.svc.cluster.local";
    assert_eq!(
        cluster_bytes(&before, &proxies[0], reviews).as_ptr(),
        cluster_bytes(&after, &proxies[0], reviews).as_ptr()
    );
}

/// `failoverPriority` makes endpoint priorities depend on the proxy's
/// labels: proxies that differ only in a compared label get their own
/// load assignments (and agree with a fresh generation), and the
/// priorities are Istio's: every entry matched first, then by the first
/// entry that does not match (`key=value` entries against the endpoint
/// alone).
#[test]
fn failover_priority_assignments_follow_each_proxys_labels() {
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use prost::Message;
    let rule = "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: default}
spec:
  host: db.example.com
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1}
    loadBalancer: {localityLbSetting: {failoverPriority: [version, tier=gold, topology.kubernetes.io/region]}}
";
    let entry = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.example.com]
  ports: [{number: 9000, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 192.168.1.1, locality: r1/z1, labels: {version: v1, tier: gold}}
  - {address: 192.168.1.2, locality: r2/z1, labels: {version: v1, tier: gold}}
  - {address: 192.168.1.3, locality: r1/z2, labels: {version: v1}}
  - {address: 192.168.1.4, locality: r1/z1, labels: {version: v2, tier: gold}}
";
    let snap = snapshot(&[entry.to_owned(), rule.to_owned()]);
    assert!(snap.warnings.is_empty(), "{:?}", snap.warnings);
    let labelled = |version: &str| {
        let mut p = Proxy::from_node_id(
            "sidecar~10.1.0.9~client.default~default.svc.cluster.local",
            None,
            [("version".to_owned(), version.to_owned())].into(),
        )
        .unwrap();
        p.locality = "r1/z1".into();
        p
    };
    let proxies = [labelled("v1"), labelled("v2"), labelled("v1")];
    check_in_turn(&snap, &proxies);
    // Address -> priority, as the daemon sends it to each proxy.
    let priorities = |p: &Proxy| {
        let cla = translator::generate_encoded(&snap, p)
            .take(ENDPOINT_TYPE)
            .into_iter()
            .find(|e| &*e.0 == "outbound|9000||db.example.com")
            .unwrap();
        let any = envoy_types::pb::google::protobuf::Any::decode(&cla.2[..]).unwrap();
        let cla = ClusterLoadAssignment::decode(&any.value[..]).unwrap();
        let mut out: Vec<(String, u32)> = cla
            .endpoints
            .iter()
            .flat_map(|g| {
                g.lb_endpoints.iter().map(move |e| {
                    let Some(
                        envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(ep),
                    ) = &e.host_identifier
                    else {
                        panic!("{e:?}")
                    };
                    let Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(a)) =
                        ep.address.as_ref().and_then(|a| a.address.as_ref())
                    else {
                        panic!("{ep:?}")
                    };
                    (a.address.clone(), g.priority)
                })
            })
            .collect();
        out.sort();
        out
    };
    // v1: .1 matches all three; .2 all but the region (rank 1); .3 not
    // gold (rank 2); .4 not v1 (rank 3). Dense: 0, 1, 2, 3.
    assert_eq!(
        priorities(&proxies[0]),
        [
            ("192.168.1.1".to_owned(), 0),
            ("192.168.1.2".to_owned(), 1),
            ("192.168.1.3".to_owned(), 2),
            ("192.168.1.4".to_owned(), 3)
        ]
    );
    // v2: .4 matches all; the v1 endpoints all rank 3, together.
    assert_eq!(
        priorities(&proxies[1]),
        [
            ("192.168.1.1".to_owned(), 1),
            ("192.168.1.2".to_owned(), 1),
            ("192.168.1.3".to_owned(), 1),
            ("192.168.1.4".to_owned(), 0)
        ]
    );
    // The config keys differ by the compared label.
    assert_ne!(proxies[0].config_key(&snap), proxies[1].config_key(&snap));
}

/// A gateway with an `AUTO_PASSTHROUGH` server also gets Istio's SNI-DNAT
/// clusters (`outbound_.<port>_.<subset>_.<host>`) and their load
/// assignments, without TLS of their own (not even auto mTLS), matching a
/// fresh generation; other proxies do not.
#[test]
fn auto_passthrough_gateways_get_sni_dnat_clusters() {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use prost::Message;
    let snap = snapshot(&bookinfo_with_mesh(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: cross-network-gateway, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 15443, name: tls, protocol: TLS}
    hosts: [\"*.local\"]
    tls: {mode: AUTO_PASSTHROUGH}
---
",
        "{}",
    ));
    let mut gateway = proxy(
        "router~10.1.0.5~istio-ingressgateway-1.istio-system~istio-system.svc.cluster.local",
        "",
    );
    gateway.labels = [("istio".to_owned(), "ingressgateway".to_owned())].into();
    let proxies = [gateway, sidecar("default", "")];
    check_in_turn(&snap, &proxies);
    let names = |p: &Proxy| -> Vec<String> {
        translator::generate_encoded(&snap, p)
            .take(CLUSTER_TYPE)
            .into_iter()
            .map(|e| e.0.to_string())
            .filter(|n| n.starts_with("outbound_."))
            .collect()
    };
    let dnat = names(&proxies[0]);
    assert!(
        dnat.contains(&"outbound_.9080_.v1_.reviews.default.svc.cluster.local".to_owned())
            && dnat.contains(&"outbound_.9080_._.reviews.default.svc.cluster.local".to_owned()),
        "{dnat:?}"
    );
    assert!(names(&proxies[1]).is_empty());
    let bytes = cluster_bytes(
        &snap,
        &proxies[0],
        "outbound_.9080_._.reviews.default.svc.cluster.local",
    );
    let any = envoy_types::pb::google::protobuf::Any::decode(&bytes[..]).unwrap();
    let c = Cluster::decode(&any.value[..]).unwrap();
    assert!(c.transport_socket.is_none() && c.transport_socket_matches.is_empty());
    assert_eq!(
        c.eds_cluster_config.unwrap().service_name,
        "outbound_.9080_._.reviews.default.svc.cluster.local"
    );
    let assignments = translator::generate_encoded(&snap, &proxies[0]).take(ENDPOINT_TYPE);
    assert!(
        assignments
            .iter()
            .any(|e| &*e.0 == "outbound_.9080_._.reviews.default.svc.cluster.local")
    );
}

/// The mesh of [`split_horizon_eds_sends_other_networks_endpoints_to_their_gateways`]:
/// `db` has an endpoint in network1 (by the registry default), three in
/// network2 (one weighted 3, one without a sidecar, one without an
/// address: reached only through the gateways) and one in network3, which
/// has no gateway; network2 has two gateways, network1 one.
const NETWORKS: &str = "
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  meshNetworks: |
    networks:
      network1:
        endpoints: [{fromRegistry: Kubernetes}]
        gateways: [{address: 192.0.2.10, port: 15443}]
      network2:
        endpoints: [{fromCidr: 10.2.0.0/16}]
        gateways: [{address: 192.0.2.21, port: 15443}, {address: 192.0.2.20, port: 15443}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.example.com]
  location: MESH_INTERNAL
  ports: [{number: 9000, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1, labels: {security.istio.io/tlsMode: istio}}
  - {address: 10.0.0.2, network: network2, weight: 3, labels: {security.istio.io/tlsMode: istio}}
  - {address: 10.0.0.3, network: network2}
  - {address: 10.0.0.4, network: network3, labels: {security.istio.io/tlsMode: istio}}
  - {network: network2, labels: {security.istio.io/tlsMode: istio}}
";

/// A client sidecar in `network` (node metadata `NETWORK`).
fn in_network(network: &str) -> Proxy {
    let mut p = sidecar("default", "");
    p.network = network.into();
    p
}

/// `db`'s endpoints as the daemon sends them to `p`: (address, port,
/// weight, whether it is marked for Istio mTLS), sorted.
fn db_endpoints(snap: &Snapshot, p: &Proxy) -> Vec<(String, u32, u32, bool)> {
    let mut out: Vec<_> = db_endpoints_by_priority(snap, p)
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    out.sort();
    out
}

/// As [`db_endpoints`], each with its locality's priority, in the order sent.
fn db_endpoints_by_priority(snap: &Snapshot, p: &Proxy) -> Vec<(u32, (String, u32, u32, bool))> {
    use envoy_types::pb::envoy::config::core::v3::address::Address;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    use prost::Message;
    let cla = translator::generate_encoded(snap, p)
        .take(ENDPOINT_TYPE)
        .into_iter()
        .find(|e| &*e.0 == "outbound|9000||db.example.com")
        .unwrap();
    let any = envoy_types::pb::google::protobuf::Any::decode(&cla.2[..]).unwrap();
    let cla = ClusterLoadAssignment::decode(&any.value[..]).unwrap();
    cla.endpoints
        .iter()
        .flat_map(|g| g.lb_endpoints.iter().map(move |e| (g.priority, e)))
        .map(|(priority, e)| {
            let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                panic!("{e:?}")
            };
            let Some(Address::SocketAddress(a)) = ep.address.as_ref().and_then(|a| a.address.as_ref())
            else {
                panic!("{ep:?}")
            };
            let port = match a.port_specifier {
                Some(envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(p)) => p,
                _ => 0,
            };
            (
                priority,
                (
                    a.address.clone(),
                    port,
                    e.load_balancing_weight.as_ref().map_or(0, |w| w.value),
                    e.metadata.is_some(),
                ),
            )
        })
        .collect()
}

/// Split Horizon EDS (Istio's `EndpointsByNetworkFilter`): a proxy reaches
/// its own network's endpoints, and those of networks without gateways,
/// directly; another network's endpoints come as that network's gateways
/// (its weight spread over them, every weight scaled by the most gateways
/// a network has), and only those the cluster sends Istio mTLS; a proxy
/// that names no network reaches every endpoint directly, and one with a
/// `REQUESTED_NETWORK_VIEW` only the networks it names. Each network's
/// proxies share their own memo entries.
#[test]
fn split_horizon_eds_sends_other_networks_endpoints_to_their_gateways() {
    let snap = snapshot(&[NETWORKS.to_owned()]);
    assert!(snap.warnings.is_empty(), "{:?}", snap.warnings);
    let ep = |a: &str, port: u32, w: u32, tls: bool| (a.to_owned(), port, w, tls);
    let proxies = [
        in_network("network1"),
        in_network("network2"),
        in_network(""),
        in_network("network1"),
    ];
    check_in_turn(&snap, &proxies);
    assert_eq!(
        db_endpoints(&snap, &proxies[0]),
        [
            ep("10.0.0.1", 9000, 2, true),
            ep("10.0.0.4", 9000, 2, true),
            // 10.0.0.2's weight 3 and the address-less entry's 1, scaled
            // by 2, over network2's gateways; 10.0.0.3 takes no mTLS: not
            // reachable through them.
            ep("192.0.2.20", 15443, 4, true),
            ep("192.0.2.21", 15443, 4, true),
        ]
    );
    assert_eq!(
        db_endpoints(&snap, &proxies[1]),
        [
            ep("10.0.0.2", 9000, 6, true),
            ep("10.0.0.3", 9000, 2, false),
            ep("10.0.0.4", 9000, 2, true),
            ep("192.0.2.10", 15443, 2, true),
        ]
    );
    assert_eq!(
        db_endpoints(&snap, &proxies[2]),
        [
            ep("10.0.0.1", 9000, 1, true),
            ep("10.0.0.2", 9000, 3, true),
            ep("10.0.0.3", 9000, 1, false),
            ep("10.0.0.4", 9000, 1, true),
        ]
    );
    // A proxy asking for a view without network2 gets none of its
    // endpoints; one asking for network2 gets them all.
    let viewing = |networks: &[&str]| {
        let mut p = in_network("network1");
        p.network_view = networks.iter().map(|n| (*n).to_owned()).collect();
        p
    };
    let (narrow, wide) = (viewing(&["network3"]), viewing(&["network3", "network2"]));
    check_in_turn(&snap, &[narrow.clone(), wide.clone()]);
    assert_eq!(
        db_endpoints(&snap, &narrow),
        [ep("10.0.0.1", 9000, 2, true), ep("10.0.0.4", 9000, 2, true)]
    );
    assert_eq!(db_endpoints(&snap, &wide), db_endpoints(&snap, &proxies[0]));
    // Without mTLS to db, no other network's endpoint is reachable.
    let plain = "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: default}
spec:
  host: db.example.com
  trafficPolicy: {tls: {mode: DISABLE}}
";
    let snap = snapshot(&[NETWORKS.to_owned(), plain.to_owned()]);
    check_in_turn(&snap, &proxies);
    assert_eq!(
        db_endpoints(&snap, &proxies[0]),
        [
            ep("10.0.0.1", 9000, 2, false),
            ep("10.0.0.4", 9000, 2, false)
        ]
    );
    // Without gateways the mesh is one network.
    let no_gateways: Vec<&str> = NETWORKS
        .lines()
        .filter(|l| !l.contains("gateways"))
        .collect();
    let snap = snapshot(&[no_gateways.join("\n")]);
    assert!(snap.warnings.is_empty(), "{:?}", snap.warnings);
    assert_eq!(
        db_endpoints(&snap, &proxies[0]),
        db_endpoints(&snap, &proxies[2])
    );
}

/// Where the networks' gateways and the endpoints' default network come
/// from besides `address` gateways: a Service labelled with a network (at
/// its `gatewayPort` label's port, which it must serve) at its external
/// IPs and load balancer IPs; a `registryServiceName` gateway of the
/// network whose endpoints are `fromRegistry: Kubernetes`; the system
/// namespace's label, which wins over `fromRegistry`. What cannot be used
/// is reported by field.
#[test]
fn network_gateways_come_from_labelled_services_and_the_registry() {
    use translator::model::NetworkGateway;
    let gw = |address: &str, port: u32| NetworkGateway {
        address: address.into(),
        port,
    };
    let texts = [
        "apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  meshNetworks: |
    networks:
      west:
        endpoints: [{fromRegistry: Kubernetes}]
        gateways: [{registryServiceName: west-gw.istio-system.svc.cluster.local, port: 15443}]
      south:
        endpoints: [{fromRegistry: other-cluster}]
        gateways: [{address: gw.example.com, port: 15443}, {registryServiceName: x.y.svc.cluster.local, port: 1}]
",
        "apiVersion: v1
kind: Service
metadata: {name: east-gw, namespace: istio-system, labels: {topology.istio.io/network: east, networking.istio.io/gatewayPort: '16443'}}
spec:
  type: LoadBalancer
  externalIPs: [192.0.2.7]
  ports: [{name: tls, port: 16443}]
status: {loadBalancer: {ingress: [{ip: 192.0.2.8}, {hostname: lb.example.com}]}}
",
        "apiVersion: v1
kind: Service
metadata: {name: north-gw, namespace: istio-system, labels: {topology.istio.io/network: north, networking.istio.io/gatewayPort: tls}}
spec:
  externalIPs: [192.0.2.9]
  ports: [{name: http, port: 80}]
",
        "apiVersion: v1
kind: Service
metadata: {name: west-gw, namespace: istio-system}
spec:
  externalIPs: [192.0.2.10]
  ports: [{name: tls, port: 15443}]
",
    ]
    .map(str::to_owned);
    let snap = snapshot(&texts);
    let n = &snap.mesh.networks;
    assert_eq!(
        n.gateways,
        [
            (
                "east".to_owned(),
                vec![gw("192.0.2.7", 16443), gw("192.0.2.8", 16443)]
            ),
            ("west".to_owned(), vec![gw("192.0.2.10", 15443)]),
        ]
        .into()
    );
    assert_eq!(n.default, "west");
    let mut fields: Vec<String> = snap
        .warnings
        .iter()
        .map(|w| format!("{} {}", w.object, w.field))
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "istio-system/istio data.meshNetworks.networks.south.endpoints[0].fromRegistry",
            "istio-system/istio data.meshNetworks.networks.south.gateways[1].registryServiceName",
            "istio-system/north-gw metadata.labels[networking.istio.io/gatewayPort]",
            "istio-system/north-gw metadata.labels[topology.istio.io/network]",
        ]
    );
    // The system namespace's label names the default network.
    let mut with_ns = texts.to_vec();
    with_ns.push(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: istio-system, labels: {topology.istio.io/network: east}}\n".into(),
    );
    assert_eq!(snapshot(&with_ns).mesh.networks.default, "east");

    // Names (a meshNetworks address, a load balancer's hostname) are noted
    // for the daemon to resolve; once resolved they are gateways, and a
    // name that resolves to nothing is reported.
    assert_eq!(
        n.hostnames.iter().collect::<Vec<_>>(),
        ["gw.example.com", "lb.example.com"]
    );
    let mut mesh = MeshConfig::default();
    mesh.networks.resolved = std::sync::Arc::new(
        [
            ("gw.example.com".to_owned(), vec![]),
            ("lb.example.com".to_owned(), vec!["198.51.100.4".to_owned()]),
        ]
        .into(),
    );
    let resolved = Snapshot::build(1, &crds::objects_of(&texts), mesh.clone());
    assert_eq!(
        resolved.mesh.networks.gateways["east"],
        [
            gw("192.0.2.7", 16443),
            gw("192.0.2.8", 16443),
            gw("198.51.100.4", 16443)
        ]
    );
    assert!(!resolved.mesh.networks.gateways.contains_key("south"));
    assert!(resolved.warnings.iter().any(|w| {
        w.field == "data.meshNetworks.networks.south.gateways[0].address"
            && w.reason.contains("resolves to no address")
    }));
    mesh.networks.resolved =
        std::sync::Arc::new([("gw.example.com".to_owned(), vec!["203.0.113.5".to_owned()])].into());
    let resolved = Snapshot::build(1, &crds::objects_of(&texts), mesh);
    assert_eq!(
        resolved.mesh.networks.gateways["south"],
        [gw("203.0.113.5", 15443)]
    );
}

/// `failoverPriority` on `topology.istio.io/network` (Istio's documented
/// example): the proxy's network (its `NETWORK` metadata) against each
/// endpoint's resolved network; the gateways standing for another
/// network's endpoints rank with them.
#[test]
fn failover_priority_compares_networks() {
    let rule = "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: default}
spec:
  host: db.example.com
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1}
    loadBalancer: {localityLbSetting: {failoverPriority: [topology.istio.io/network]}}
";
    let snap = snapshot(&[NETWORKS.to_owned(), rule.to_owned()]);
    assert!(snap.warnings.is_empty(), "{:?}", snap.warnings);
    let proxies = [in_network("network1"), in_network("network2")];
    check_in_turn(&snap, &proxies);
    let ranked = |p: &Proxy| {
        let mut out: Vec<(u32, String)> = db_endpoints_by_priority(&snap, p)
            .into_iter()
            .map(|(priority, e)| (priority, e.0))
            .collect();
        out.sort();
        out
    };
    let at = |priority: u32, address: &str| (priority, address.to_owned());
    assert_eq!(
        ranked(&proxies[0]),
        [
            at(0, "10.0.0.1"),
            at(1, "10.0.0.4"),
            at(1, "192.0.2.20"),
            at(1, "192.0.2.21")
        ]
    );
    assert_eq!(
        ranked(&proxies[1]),
        [
            at(0, "10.0.0.2"),
            at(0, "10.0.0.3"),
            at(1, "10.0.0.4"),
            at(1, "192.0.2.10")
        ]
    );
}
