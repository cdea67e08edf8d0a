//! The Kubernetes source end to end: the daemon's kube-rs watchers against
//! an in-process fake API server speaking the real list/watch protocol
//! (`e2e::fake_kube`), and real Envoys configured only by the daemon.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use e2e::fake_kube::FakeApiServer;
use e2e::{
    Envoy, Mesh, SIDECAR, SIDECAR_LABELS, SYNC, apply, bookinfo_sample, http_get, istio_testdata,
    metric, start_kube_daemon, start_kube_replica, tally, wait_synced,
};
use serde_json::json;

/// The ClusterIP of `reviews` in `examples/bookinfo/platform.yaml`.
const REVIEWS: &str = "http://10.96.0.13:9080/reviews/0";
const VS_PATH: &str = "/apis/networking.istio.io/v1/virtualservices";

fn reviews_to(subset: &str) -> serde_json::Value {
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews", "subset": subset}}]}]}
    })
}

fn only(version: &str, n: usize) -> BTreeMap<String, usize> {
    BTreeMap::from([(format!("reviews {version}"), n)])
}

fn pushes(mesh: &Mesh, type_: &str) -> f64 {
    metric(
        &e2e::daemon_metrics(&mesh.daemon),
        &format!("pilot_xds_pushes{{type=\"{type_}\"}}"),
    )
}

#[test]
fn bookinfo_routes_follow_the_kubernetes_api() {
    let mesh = Mesh::start_kube(
        true,
        &["destination-rule-all.yaml", "virtual-service-all-v1.yaml"],
    );
    let (api, daemon) = (mesh.api(), &mesh.daemon);
    let snap = daemon.snapshots.borrow().clone();
    assert_eq!(snap.version, 1, "one full snapshot after the first sync");
    assert_eq!(snap.virtual_services.len(), 4, "all-v1 has four");
    let envoy = mesh.sidecar();
    assert_eq!(tally(REVIEWS, "reviews", &[], 20), only("v1", 20));

    // Update (MODIFIED over the watch).
    apply(daemon, &[&envoy], || {
        api.apply_yaml(&bookinfo_sample("virtual-service-reviews-v3.yaml"));
    });
    assert_eq!(tally(REVIEWS, "reviews", &[], 20), only("v3", 20));

    // Delete: without a VirtualService, reviews is balanced over every pod.
    apply(daemon, &[&envoy], || {
        assert!(api.delete(
            "networking.istio.io/v1",
            "VirtualService",
            "default",
            "reviews"
        ));
    });
    let spread = tally(REVIEWS, "reviews", &[], 60);
    assert_eq!(spread.len(), 3, "{spread:?}");

    // Create.
    apply(daemon, &[&envoy], || {
        api.apply(reviews_to("v2"));
    });
    assert_eq!(tally(REVIEWS, "reviews", &[], 20), only("v2", 20));

    // An EndpointSlice change: reviews-v2 goes unready. Only EDS is pushed.
    let before: Vec<f64> = ["cds", "lds", "rds", "eds"]
        .iter()
        .map(|t| pushes(&mesh, t))
        .collect();
    let platform = std::fs::read_to_string(mesh.cfg.path().join("platform.yaml")).unwrap();
    let slice = crds::document::split_documents(&platform)
        .into_iter()
        .filter_map(|(_, d)| d.ok())
        .find(|d| d["kind"] == "EndpointSlice" && d["metadata"]["name"] == "reviews-abcde")
        .unwrap();
    let mut unready = slice.clone();
    unready["endpoints"][1]["conditions"]["ready"] = false.into();
    apply(daemon, &[&envoy], || {
        api.apply(unready);
    });
    let after: Vec<f64> = ["cds", "lds", "rds", "eds"]
        .iter()
        .map(|t| pushes(&mesh, t))
        .collect();
    assert_eq!(
        after[..3],
        before[..3],
        "an endpoint change pushes no CDS/LDS/RDS"
    );
    assert!(after[3] > before[3], "an endpoint change pushes EDS");
    let none = tally(REVIEWS, "reviews", &[], 10);
    assert!(
        !none.contains_key("reviews v2"),
        "the unready endpoint still gets traffic: {none:?}"
    );
    apply(daemon, &[&envoy], || {
        api.apply(slice);
    });
    assert_eq!(tally(REVIEWS, "reviews", &[], 20), only("v2", 20));

    // A status-only update (as Istio's status writer makes) and a Pod status
    // change the model does not read: no new snapshot.
    let version = daemon.snapshots.borrow().version;
    let mut with_status = reviews_to("v2");
    with_status["status"] = json!({"observedGeneration": 3});
    api.apply(with_status);
    api.apply(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "reviews-v2", "namespace": "default", "labels": {"app": "reviews", "version": "v2"}},
        "spec": {"serviceAccountName": "bookinfo-reviews",
                 "containers": [{"name": "reviews", "image": "docker.io/istio/examples-bookinfo-reviews-v2:1.20.3",
                                 "ports": [{"containerPort": 9080}]}]},
        "status": {"podIP": "127.0.1.5", "conditions": [{"type": "Ready", "status": "True"}]}
    }));
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        daemon.snapshots.borrow().version,
        version,
        "nothing relevant changed"
    );

    // Bad input the API server accepted (no webhook in front of it): weights
    // that do not total 100. It is reported by namespace/name and field; the
    // rest of the mesh keeps working.
    apply(daemon, &[&envoy], || {
        api.apply(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "ratings-bad", "namespace": "default"},
            "spec": {"hosts": ["ratings"], "http": [{"route": [
                {"destination": {"host": "ratings", "subset": "v1"}, "weight": 150},
                {"destination": {"host": "ratings", "subset": "v2"}, "weight": 10}]}]}
        }));
    });
    let errors = daemon.errors.borrow().clone();
    let msg = errors
        .iter()
        .map(ToString::to_string)
        .find(|m| m.contains("ratings-bad"))
        .unwrap_or_else(|| panic!("not reported: {errors:?}"));
    assert!(msg.contains("default/ratings-bad"), "{msg}");
    assert!(msg.contains("spec.http[0].route"), "{msg}");
    assert_eq!(tally(REVIEWS, "reviews", &[], 10), only("v2", 10));
    assert_eq!(envoy.rejected(), 0);
}

#[test]
fn dropped_watches_bookmarks_and_an_api_server_outage_lose_nothing() {
    let mut mesh = Mesh::start_kube(
        true,
        &["destination-rule-all.yaml", "virtual-service-all-v1.yaml"],
    );
    let envoy = mesh.sidecar();
    let lists = mesh.api().lists_of(VS_PATH);
    assert_eq!(lists, 1);

    // A dropped watch resumes from its last revision: the change made while
    // it was reconnecting arrives, without a relist.
    {
        let (api, daemon) = (mesh.api(), &mesh.daemon);
        apply(daemon, &[&envoy], || {
            api.drop_watches();
            api.apply(reviews_to("v3"));
        });
        assert_eq!(tally(REVIEWS, "reviews", &[], 10), only("v3", 10));
        assert_eq!(api.lists_of(VS_PATH), 1, "a resumed watch does not relist");

        // Bookmarks move a watch's revision past writes it does not see, so a
        // compaction after them does not force a relist.
        for i in 0..3 {
            api.apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
                             "metadata": {"name": format!("unrelated-{i}"), "namespace": "default"}}));
        }
        let now = api.apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
                                   "metadata": {"name": "unrelated", "namespace": "default"}}));
        api.bookmark();
        std::thread::sleep(Duration::from_millis(300));
        api.compact();
        api.drop_watches();
        let resumed = format!("resourceVersion={now}");
        let start = Instant::now();
        while !api.requests().iter().any(|r| {
            r.starts_with(&format!("GET {VS_PATH}?"))
                && r.contains("watch=")
                && r.contains(&resumed)
        }) {
            assert!(
                start.elapsed() < SYNC,
                "no watch resumed from the bookmark's revision {now}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            api.lists_of(VS_PATH),
            1,
            "a bookmarked watch does not relist"
        );
    }

    // The API server goes away. Proxies keep their last config and the
    // daemon stays ready; meanwhile a VirtualService is replaced, one deleted
    // and one created, and the history is compacted, so the watches come
    // back to `410 Gone` and relist.
    let handle = mesh.runtime_handle();
    handle.block_on(mesh.api.as_mut().unwrap().stop());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(tally(REVIEWS, "reviews", &[], 10), only("v3", 10));
    assert!(mesh.daemon.ready.load(std::sync::atomic::Ordering::Relaxed));
    let version = mesh.daemon.snapshots.borrow().version;
    {
        let api = mesh.api();
        api.apply(reviews_to("v2"));
        assert!(api.delete(
            "networking.istio.io/v1",
            "VirtualService",
            "default",
            "ratings"
        ));
        api.apply(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "reviews-canary", "namespace": "default"},
            "spec": {"hosts": ["reviews-canary.example"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}
        }));
        api.compact();
    }
    handle.block_on(mesh.api.as_mut().unwrap().restart());
    let start = Instant::now();
    while mesh.daemon.snapshots.borrow().version == version {
        assert!(
            start.elapsed() < SYNC * 3,
            "no change after the API server came back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_synced(&mesh.daemon, &[&envoy], SYNC);
    assert_eq!(tally(REVIEWS, "reviews", &[], 10), only("v2", 10));
    assert!(
        mesh.api().lists_of(VS_PATH) >= 2,
        "410 Gone forces a relist"
    );
    let mut names: Vec<String> = mesh
        .daemon
        .snapshots
        .borrow()
        .virtual_services
        .iter()
        .map(|vs| format!("{}/{}", vs.namespace, vs.name))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "default/details",
            "default/productpage",
            "default/reviews",
            "default/reviews-canary"
        ],
        "neither duplicated nor lost"
    );
    assert_eq!(envoy.rejected(), 0);
}

#[test]
fn not_ready_and_no_config_served_until_every_list_synced() {
    let _hosts = e2e::isolate();
    let rt = e2e::runtime();
    let api = rt.block_on(FakeApiServer::start());
    api.apply_yaml(&e2e::bookinfo_platform_yaml());
    api.hold_lists(true);
    let daemon = rt.block_on(start_kube_daemon(&api));
    let ready_url = format!("http://{}/ready", daemon.monitoring_addr.unwrap());
    let envoy = Envoy::launch(SIDECAR, &SIDECAR_LABELS, "", daemon.xds_addr, 15000);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(http_get(&ready_url, &[]).map(|r| r.0), Ok(503));
    assert_eq!(daemon.snapshots.borrow().version, 0);
    assert_eq!(
        envoy
            .stats()
            .get("control_plane.connected_state")
            .map(String::as_str),
        Some("0"),
        "a proxy must not be served an unsynced (empty) config"
    );
    api.hold_lists(false);
    e2e::wait_ready(&daemon);
    assert_eq!(http_get(&ready_url, &[]).map(|r| r.0), Ok(200));
    // Envoy retries on its own and gets the whole config.
    wait_synced(&daemon, &[&envoy], SYNC * 3);
    envoy.wait_for(SYNC, "productpage's clusters", |e| {
        e.stats()
            .keys()
            .any(|k| k.starts_with("cluster.outbound|9080||reviews.default.svc.cluster.local."))
    });
}

#[test]
fn the_platform_serves_bookinfo_yaml_services() {
    // The fake API server is loaded with `examples/bookinfo/platform.yaml`,
    // which stands for Istio's `bookinfo.yaml` after the API server and the
    // EndpointSlice controller did their work. Its Services must be those of
    // Istio's file (same names, ports and selectors), plus ClusterIPs.
    let services = |text: &str| -> BTreeMap<String, serde_json::Value> {
        crds::document::split_documents(text)
            .into_iter()
            .filter_map(|(_, d)| d.ok())
            .filter(|d| d["kind"] == "Service")
            .map(|d| {
                let name = d["metadata"]["name"].as_str().unwrap().to_owned();
                let ports: Vec<_> = d["spec"]["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| (p["name"].clone(), p["port"].clone()))
                    .collect();
                (
                    name,
                    json!({"ports": format!("{ports:?}"), "selector": d["spec"]["selector"]}),
                )
            })
            .collect()
    };
    let istio = std::fs::read_to_string(
        istio_testdata().join("samples/bookinfo/platform/kube/bookinfo.yaml"),
    )
    .unwrap();
    let platform = e2e::bookinfo_platform_yaml();
    let theirs = services(&istio);
    assert_eq!(theirs.len(), 4);
    assert_eq!(services(&platform), theirs);
}

#[test]
fn one_replica_leads_and_another_takes_over_when_it_stops() {
    let _hosts = e2e::isolate();
    let rt = e2e::runtime();
    let api = rt.block_on(FakeApiServer::start());
    let leads = |d: &istiod::Daemon| *d.leader.borrow();
    let wait = |what: &str, timeout: Duration, cond: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !cond() {
            assert!(start.elapsed() < timeout, "{what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let holder = || {
        api.lease("istio-system", istiod::leader::LEASE)
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
    };
    let mut a = rt.block_on(start_kube_replica(&api, "istiod-a"));
    wait("istiod-a leads", SYNC, &|| leads(&a));
    let b = rt.block_on(start_kube_replica(&api, "istiod-b"));
    e2e::wait_ready(&b);
    std::thread::sleep(Duration::from_secs(2));
    assert!(leads(&a) && !leads(&b), "exactly one leader");
    assert_eq!(holder().as_deref(), Some("istiod-a"));
    // Both serve: leadership is only for writes.
    assert!(b.ready.load(std::sync::atomic::Ordering::Relaxed));

    rt.block_on(a.shutdown());
    assert!(!leads(&a));
    let limit = Duration::from_secs(istiod::leader::DURATION_SECS + 5);
    wait("istiod-b takes over", limit, &|| leads(&b));
    assert_eq!(holder().as_deref(), Some("istiod-b"));
}

#[test]
fn the_ingress_gateway_and_its_credential_secret_come_from_the_api() {
    let mesh = Mesh::start_kube(false, &["bookinfo-gateway.yaml"]);
    let (api, daemon) = (mesh.api(), &mesh.daemon);
    let gw = mesh.proxy(e2e::GATEWAY, &e2e::GATEWAY_LABELS, 15000);
    assert_eq!(
        http_get("http://127.0.0.1:8080/productpage", &[]),
        Ok((200, "productpage v1".into()))
    );
    let (status, _) = http_get("http://127.0.0.1:8080/elsewhere", &[]).unwrap();
    assert_eq!(status, 404);

    // A Gateway `credentialName` Secret arrives through the Secret watcher
    // (base64 `data`, as the API server serves it); a service-account token
    // is not watched at all (field selector).
    apply(daemon, &[&gw], || {
        api.apply(json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": "bookinfo-credential", "namespace": "istio-system"},
            "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"}
        }));
    });
    api.apply(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
        "metadata": {"name": "token", "namespace": "istio-system"},
        "data": {"token": "c2VjcmV0"}
    }));
    std::thread::sleep(Duration::from_millis(400));
    let snap = daemon.snapshots.borrow().clone();
    let secret = &snap.secrets["istio-system/bookinfo-credential"];
    assert_eq!(secret.cert.as_deref(), Some(&b"cert"[..]));
    assert_eq!(secret.key.as_deref(), Some(&b"key"[..]));
    assert!(!snap.secrets.contains_key("istio-system/token"));
}

/// Names of the clusters Envoy has, from its config dump.
fn clusters(envoy: &Envoy) -> std::collections::BTreeSet<String> {
    let dump = envoy
        .admin("/config_dump?resource=dynamic_active_clusters")
        .unwrap_or_default();
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap_or_default();
    dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["cluster"]["name"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn create_update_and_delete_of_each_kind_reach_envoy() {
    let mesh = Mesh::start_kube(false, &["destination-rule-all.yaml"]);
    let (api, daemon) = (mesh.api(), &mesh.daemon);
    let envoy = mesh.sidecar();
    let has = |name: &str| clusters(&envoy).contains(name);
    let step = |what: &str, change: &dyn Fn(), check: &dyn Fn() -> bool| {
        apply(daemon, &[&envoy], change);
        envoy.wait_for(SYNC, what, |_| check());
    };

    // Service: a cluster per port, following the port.
    let svc = |port: u16| {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "shop", "namespace": "default"},
               "spec": {"clusterIP": "10.96.0.50", "ports": [{"name": "http", "port": port}]}})
    };
    step(
        "Service created",
        &|| {
            api.apply(svc(9080));
        },
        &|| has("outbound|9080||shop.default.svc.cluster.local"),
    );
    step(
        "Service updated",
        &|| {
            api.apply(svc(9090));
        },
        &|| {
            has("outbound|9090||shop.default.svc.cluster.local")
                && !has("outbound|9080||shop.default.svc.cluster.local")
        },
    );
    step(
        "Service deleted",
        &|| {
            api.delete("v1", "Service", "default", "shop");
        },
        &|| !has("outbound|9090||shop.default.svc.cluster.local"),
    );

    // DestinationRule: a cluster per subset.
    let dr = |subset: &str| {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
               "metadata": {"name": "details", "namespace": "default"},
               "spec": {"host": "details", "subsets": [{"name": subset, "labels": {"version": subset}}]}})
    };
    step(
        "DestinationRule updated",
        &|| {
            api.apply(dr("v9"));
        },
        &|| {
            has("outbound|9080|v9|details.default.svc.cluster.local")
                && !has("outbound|9080|v1|details.default.svc.cluster.local")
        },
    );
    step(
        "DestinationRule deleted",
        &|| {
            api.delete(
                "networking.istio.io/v1",
                "DestinationRule",
                "default",
                "details",
            );
        },
        &|| !has("outbound|9080|v9|details.default.svc.cluster.local"),
    );

    // ServiceEntry: a cluster for an external host.
    let se = |port: u16| {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
               "metadata": {"name": "api", "namespace": "default"},
               "spec": {"hosts": ["api.example.com"], "location": "MESH_EXTERNAL", "resolution": "DNS",
                        "ports": [{"number": port, "name": "tls", "protocol": "TLS"}]}})
    };
    step(
        "ServiceEntry created",
        &|| {
            api.apply(se(443));
        },
        &|| has("outbound|443||api.example.com"),
    );
    step(
        "ServiceEntry updated",
        &|| {
            api.apply(se(8443));
        },
        &|| has("outbound|8443||api.example.com") && !has("outbound|443||api.example.com"),
    );
    step(
        "ServiceEntry deleted",
        &|| {
            api.delete("networking.istio.io/v1", "ServiceEntry", "default", "api");
        },
        &|| !has("outbound|8443||api.example.com"),
    );

    // Sidecar: egress scoped to reviews only, then lifted.
    step(
        "Sidecar created",
        &|| {
            api.apply(
                json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
                         "metadata": {"name": "default", "namespace": "default"},
                         "spec": {"egress": [{"hosts": ["./reviews.default.svc.cluster.local"]}]}}),
            );
        },
        &|| {
            has("outbound|9080|v1|reviews.default.svc.cluster.local")
                && !has("outbound|9080||ratings.default.svc.cluster.local")
        },
    );
    step(
        "Sidecar deleted",
        &|| {
            api.delete("networking.istio.io/v1", "Sidecar", "default", "default");
        },
        &|| has("outbound|9080||ratings.default.svc.cluster.local"),
    );

    // Pod: relabelled, it leaves the v1 subset's endpoints.
    let reviews_v1 = "outbound|9080|v1|reviews.default.svc.cluster.local";
    assert_eq!(envoy.hosts(reviews_v1), ["127.0.1.4:9080"]);
    let pod = |version: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "reviews-v1", "namespace": "default",
                            "labels": {"app": "reviews", "version": version}},
               "spec": {"containers": [{"name": "reviews", "image": "i"}]},
               "status": {"podIP": "127.0.1.4"}})
    };
    step(
        "Pod relabelled",
        &|| {
            api.apply(pod("v9"));
        },
        &|| envoy.hosts(reviews_v1).is_empty(),
    );
    step(
        "Pod restored",
        &|| {
            api.apply(pod("v1"));
        },
        &|| envoy.hosts(reviews_v1) == ["127.0.1.4:9080"],
    );

    // WorkloadEntry: a VM that reviews' selector picks joins its v1
    // subset, follows its address, and leaves.
    let vm = |address: &str| {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
               "metadata": {"name": "reviews-vm", "namespace": "default"},
               "spec": {"address": address, "labels": {"app": "reviews", "version": "v1"}}})
    };
    step(
        "WorkloadEntry created",
        &|| {
            api.apply(vm("127.0.1.40"));
        },
        &|| envoy.hosts(reviews_v1) == ["127.0.1.40:9080", "127.0.1.4:9080"],
    );
    step(
        "WorkloadEntry updated",
        &|| {
            api.apply(vm("127.0.1.41"));
        },
        &|| envoy.hosts(reviews_v1) == ["127.0.1.41:9080", "127.0.1.4:9080"],
    );
    step(
        "WorkloadEntry deleted",
        &|| {
            api.delete(
                "networking.istio.io/v1",
                "WorkloadEntry",
                "default",
                "reviews-vm",
            );
        },
        &|| envoy.hosts(reviews_v1) == ["127.0.1.4:9080"],
    );

    // The mesh ConfigMap and Namespaces reach the model.
    let mesh_config = |mode: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "istio", "namespace": "istio-system"},
               "data": {"mesh": format!("outboundTrafficPolicy:\n  mode: {mode}\n")}})
    };
    step(
        "mesh config REGISTRY_ONLY",
        &|| {
            api.apply(mesh_config("REGISTRY_ONLY"));
        },
        &|| !daemon.snapshots.borrow().mesh.allow_any,
    );
    step(
        "mesh config ALLOW_ANY",
        &|| {
            api.apply(mesh_config("ALLOW_ANY"));
        },
        &|| daemon.snapshots.borrow().mesh.allow_any,
    );
    step(
        "Namespace created",
        &|| {
            api.apply(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
            );
        },
        &|| {
            daemon
                .snapshots
                .borrow()
                .namespaces
                .contains(&"shop".to_string())
        },
    );
    step(
        "Namespace deleted",
        &|| {
            api.delete("v1", "Namespace", "", "shop");
        },
        &|| {
            !daemon
                .snapshots
                .borrow()
                .namespaces
                .contains(&"shop".to_string())
        },
    );

    // AuthorizationPolicy and RequestAuthentication: the sidecar's inbound
    // gets the RBAC filters, and loses them.
    let dump = || envoy.admin("/config_dump").unwrap_or_default();
    let issuer = e2e::JwtIssuer::new("issuer.example");
    step(
        "AuthorizationPolicy and RequestAuthentication created",
        &|| {
            api.apply(
                json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                             "metadata": {"name": "deny-admin", "namespace": "default"},
                             "spec": {"action": "DENY",
                                      "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}}),
            );
            api.apply(json!({"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
                             "metadata": {"name": "jwt", "namespace": "default"},
                             "spec": {"jwtRules": [{"issuer": issuer.issuer, "jwks": issuer.jwks}]}}));
        },
        // (The JWT filter goes on HTTP chains; this sidecar serves no
        // port, so the RequestAuthentication is looked for in the snapshot.)
        &|| {
            dump().contains("ns[default]-policy[deny-admin]-rule[0]")
                && daemon.snapshots.borrow().request_authentications.len() == 1
        },
    );
    step(
        "AuthorizationPolicy and RequestAuthentication deleted",
        &|| {
            api.delete(
                "security.istio.io/v1",
                "AuthorizationPolicy",
                "default",
                "deny-admin",
            );
            api.delete(
                "security.istio.io/v1",
                "RequestAuthentication",
                "default",
                "jwt",
            );
        },
        &|| {
            !dump().contains("deny-admin")
                && daemon.snapshots.borrow().request_authentications.is_empty()
        },
    );

    // Telemetry: a mesh-wide access log to the built-in provider reaches the
    // sidecar's listeners, and leaves with the resource.
    step(
        "Telemetry created",
        &|| {
            api.apply(
                json!({"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry",
                             "metadata": {"name": "mesh-default", "namespace": "istio-system"},
                             "spec": {"accessLogging": [{"providers": [{"name": "envoy"}]}]}}),
            );
        },
        &|| dump().contains("/dev/stdout"),
    );
    step(
        "Telemetry deleted",
        &|| {
            api.delete(
                "telemetry.istio.io/v1",
                "Telemetry",
                "istio-system",
                "mesh-default",
            );
        },
        &|| !dump().contains("/dev/stdout"),
    );

    // WasmPlugin: its filter on productpage's listeners and its module
    // over ECDS (Envoy's dump shows the extension config it loaded).
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("headers.wasm");
    std::fs::write(&module, e2e::wasm::header_plugin()).unwrap();
    step(
        "WasmPlugin created",
        &|| {
            api.apply(
                json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
                             "metadata": {"name": "headers", "namespace": "default"},
                             "spec": {"selector": {"matchLabels": {"app": "productpage"}},
                                      "url": format!("file://{}", module.display()),
                                      "pluginConfig": {"greeting": "kube"}}}),
            );
        },
        &|| {
            dump().contains("\"extensions.istio.io/wasmplugin/default.headers\"")
                && dump().contains("greeting")
        },
    );
    step(
        "WasmPlugin deleted",
        &|| {
            api.delete(
                "extensions.istio.io/v1alpha1",
                "WasmPlugin",
                "default",
                "headers",
            );
        },
        // (The listeners it left drain for a while: the active ones.)
        &|| {
            let listeners: serde_json::Value = serde_json::from_str(
                &envoy
                    .admin("/config_dump?resource=dynamic_listeners")
                    .unwrap_or_default(),
            )
            .unwrap_or_default();
            let active: Vec<&serde_json::Value> = listeners["configs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l.get("active_state"))
                .collect();
            !active.is_empty()
                && !serde_json::to_string(&active)
                    .unwrap_or_default()
                    .contains("wasmplugin/default.headers")
        },
    );
    assert_eq!(envoy.rejected(), 0);
}

/// A daemon on `api` as replica `istiod-0`, running the CA without
/// plugged-in `cacerts` (the root is kept in `istio-ca-secret`, tokens are
/// checked by TokenReview), with `webhooks` if given.
async fn start_with_ca(
    api: &FakeApiServer,
    ca_dir: &std::path::Path,
    webhooks: Option<istiod::webhooks::WebhookOptions>,
) -> istiod::Daemon {
    istiod::Daemon::start(istiod::Options {
        source: istiod::Source::Kubernetes(Box::new(istiod::sources::kube::KubeSource {
            config: api.kube_config(),
            namespace: "istio-system".into(),
            leader_identity: Some("istiod-0".into()),
            gateway_recheck: istiod::gateway_controller::RECHECK,
            analysis_interval: None,
        })),
        xds_addr: "127.0.0.1:0".parse().unwrap(),
        monitoring_addr: None,
        push_throttle: 10,
        workload_entry_grace: istiod::autoregister::DEFAULT_GRACE,
        keepalive: Default::default(),
        debounce: Default::default(),
        ca: Some(istiod::secure::CaOptions {
            token_issuer_keys: None,
            dir: ca_dir.to_owned(),
            ..e2e::ca_options()
        }),
        webhooks,
    })
    .await
    .unwrap()
}

#[test]
fn the_ca_keeps_its_root_in_a_secret_checks_tokens_with_token_review_and_distributes_the_root() {
    use ca::service::pb::IstioCertificateRequest;
    use ca::service::pb::istio_certificate_service_client::IstioCertificateServiceClient;

    let _hosts = e2e::isolate();
    let rt = e2e::runtime();
    let api = rt.block_on(FakeApiServer::start());
    for ns in ["default", "shop"] {
        api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    }
    api.add_token(
        "good",
        "system:serviceaccount:default:productpage",
        &["istio-ca"],
    );
    api.add_token(
        "for-kubernetes",
        "system:serviceaccount:default:productpage",
        &["https://kubernetes.default.svc"],
    );
    let ca_dir = tempfile::tempdir().unwrap();
    let start = || start_with_ca(&api, ca_dir.path(), None);
    let daemon = rt.block_on(start());
    e2e::wait_ready(&daemon);
    let secure = daemon.secure.as_ref().unwrap();
    let root = secure.authority.root_pem().to_owned();
    let secret = api
        .get("v1", "Secret", "istio-system", "istio-ca-secret")
        .expect("the root is kept in istio-ca-secret");
    assert!(secret["data"]["ca-key.pem"].is_string());
    assert!(
        std::fs::read_dir(ca_dir.path()).unwrap().next().is_none(),
        "nothing written to the folder"
    );
    // Another replica (or a restart) signs with the same root.
    let replica = rt.block_on(start());
    assert_eq!(replica.secure.as_ref().unwrap().authority.root_pem(), root);

    // The root reaches every namespace, and a new one.
    let has_root = |ns: &str| {
        api.get("v1", "ConfigMap", ns, "istio-ca-root-cert")
            .is_some_and(|cm| cm["data"]["root-cert.pem"] == *root)
    };
    let wait = |what: &str, cond: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !cond() {
            assert!(start.elapsed() < SYNC, "{what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait("istio-ca-root-cert in default and shop", &|| {
        has_root("default") && has_root("shop")
    });
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "later"}}));
    wait("istio-ca-root-cert in a new namespace", &|| {
        has_root("later")
    });
    // With the mesh config's discoverySelectors, only the namespaces they
    // select get it (istiod's enhanced resource scoping); one labelled
    // later gets it then.
    api.apply_yaml(&e2e::mesh_config(
        "discoverySelectors: [{matchLabels: {mesh: 'on'}}]",
    ));
    wait("the selectors applied: no namespace selected", &|| {
        daemon.snapshots.borrow().namespaces.is_empty()
    });
    let namespace = |name: &str, labels: serde_json::Value| {
        api.apply(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels}}));
    };
    namespace("outside", json!({}));
    namespace("inside", json!({"mesh": "on"}));
    wait("istio-ca-root-cert in a selected namespace", &|| {
        has_root("inside")
    });
    assert!(!has_root("outside"), "written outside the selectors");
    namespace("outside", json!({"mesh": "on"}));
    wait("istio-ca-root-cert in a namespace once selected", &|| {
        has_root("outside")
    });

    // Tokens are checked by the API server's TokenReview.
    rt.block_on(async {
        let mut client =
            IstioCertificateServiceClient::new(e2e::secure_channel(secure.addr, &root, None).await);
        let me = "spiffe://cluster.local/ns/default/sa/productpage";
        let request = |token: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.subject_alt_names = vec![rcgen::SanType::URI(me.try_into().unwrap())];
            let mut r = tonic::Request::new(IstioCertificateRequest {
                csr: params.serialize_request(&key).unwrap().pem().unwrap(),
                validity_duration: 600,
                metadata: None,
            });
            r.metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            r
        };
        let chain = client
            .create_certificate(request("good"))
            .await
            .unwrap()
            .into_inner()
            .cert_chain;
        assert!(chain.len() >= 2);
        for (token, reason) in [
            ("for-kubernetes", "audience"),
            ("stolen", "invalid bearer token"),
        ] {
            let status = client.create_certificate(request(token)).await.unwrap_err();
            assert_eq!(
                status.code(),
                tonic::Code::Unauthenticated,
                "{token}: {status:?}"
            );
            assert!(
                status.message().contains(reason),
                "{token}: {}",
                status.message()
            );
        }
    });
    assert!(
        api.requests()
            .iter()
            .any(|r| r.starts_with("POST /apis/authentication.k8s.io/v1/tokenreviews"))
    );
}

#[test]
fn the_leader_keeps_the_webhooks_ca_bundle_equal_to_the_mesh_root() {
    let _hosts = e2e::isolate();
    let rt = e2e::runtime();
    let api = rt.block_on(FakeApiServer::start());
    // The webhook configurations as `kubectl apply -f manifests/` installs them,
    // plus one that points at a URL (istiod out of cluster).
    let text = std::fs::read_to_string(e2e::workspace().join("manifests/webhooks.yaml")).unwrap();
    assert_eq!(api.apply_yaml(&text), 2);
    let mut validator = api
        .get(
            "admissionregistration.k8s.io/v1",
            "ValidatingWebhookConfiguration",
            "",
            "istio-validator-istio-system",
        )
        .unwrap();
    validator["webhooks"][0]["clientConfig"] = json!({"url": "https://192.0.2.1:15017/validate"});
    api.apply(validator);
    let ca_dir = tempfile::tempdir().unwrap();
    let daemon = rt.block_on(start_with_ca(
        &api,
        ca_dir.path(),
        Some(e2e::webhook_options()),
    ));
    e2e::wait_ready(&daemon);
    let root = daemon
        .secure
        .as_ref()
        .unwrap()
        .authority
        .root_pem()
        .to_owned();
    let bundle =
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, root.as_bytes());
    let bundles = |kind: &str, name: &str| -> Vec<String> {
        api.get("admissionregistration.k8s.io/v1", kind, "", name)
            .map(|o| {
                o["webhooks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|w| {
                        w["clientConfig"]["caBundle"]
                            .as_str()
                            .unwrap_or("")
                            .to_owned()
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let start = Instant::now();
    loop {
        let injector = bundles("MutatingWebhookConfiguration", "istio-sidecar-injector");
        let validator = bundles(
            "ValidatingWebhookConfiguration",
            "istio-validator-istio-system",
        );
        if injector.len() == 4
            && validator.len() == 1
            && injector.iter().chain(&validator).all(|b| *b == bundle)
        {
            break;
        }
        assert!(
            start.elapsed() < SYNC,
            "caBundles not set: {injector:?} {validator:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The URL the validator points at is left as it was.
    let v = api
        .get(
            "admissionregistration.k8s.io/v1",
            "ValidatingWebhookConfiguration",
            "",
            "istio-validator-istio-system",
        )
        .unwrap();
    assert_eq!(
        v["webhooks"][0]["clientConfig"]["url"],
        "https://192.0.2.1:15017/validate"
    );
}

/// Multi-network from the API: the system namespace's network label and a
/// gateway Service's load balancer IP (its `status`, which the watcher
/// keeps for Services) reach the mesh's networks, and follow the Service.
#[test]
fn network_gateways_follow_the_api() {
    use translator::model::NetworkGateway;
    let mesh = Mesh::start_kube(false, &[]);
    let (api, daemon) = (mesh.api(), &mesh.daemon);
    let networks = || daemon.snapshots.borrow().mesh.networks.clone();
    api.apply(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "istio-system", "labels": {"topology.istio.io/network": "network1"}}
    }));
    let gateway = |ip: &str| {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "istio-eastwestgateway", "namespace": "istio-system",
                         "labels": {"topology.istio.io/network": "network1"}},
            "spec": {"type": "LoadBalancer", "ports": [{"name": "tls", "port": 15443}]},
            "status": {"loadBalancer": {"ingress": [{"ip": ip}]}}
        })
    };
    api.apply(gateway("192.0.2.50"));
    let want = |ip: &str| {
        std::collections::BTreeMap::from([(
            "network1".to_owned(),
            vec![NetworkGateway {
                address: ip.into(),
                port: 15443,
            }],
        )])
    };
    let state = || format!("{:?}", networks());
    e2e::eventually(
        Duration::from_secs(5),
        || {
            let n = networks();
            (n.default == "network1" && n.gateways == want("192.0.2.50")).then_some(())
        },
        state,
    );
    api.apply(gateway("192.0.2.51"));
    e2e::eventually(
        Duration::from_secs(5),
        || (networks().gateways == want("192.0.2.51")).then_some(()),
        state,
    );
    // A NodePort gateway with Istio's `traffic.istio.io/nodeSelector`: the
    // selected nodes' external IPs, on the node port.
    let node = |name: &str, ip: &str, heartbeat: &str| {
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"pool": name}},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "10.0.0.9"}, {"type": "ExternalIP", "address": ip}],
                "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": heartbeat}]
            }
        })
    };
    api.apply(node("node-a", "198.51.100.1", "2026-01-01T00:00:00Z"));
    api.apply(node("node-b", "198.51.100.2", "2026-01-01T00:00:00Z"));
    api.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "istio-eastwestgateway", "namespace": "istio-system",
                     "labels": {"topology.istio.io/network": "network1"},
                     "annotations": {"traffic.istio.io/nodeSelector": "{\"pool\": \"node-b\"}"}},
        "spec": {"type": "NodePort", "ports": [{"name": "tls", "port": 15443, "nodePort": 31443}]}
    }));
    let on_node_port = std::collections::BTreeMap::from([(
        "network1".to_owned(),
        vec![NetworkGateway {
            address: "198.51.100.2".into(),
            port: 31443,
        }],
    )]);
    e2e::eventually(
        Duration::from_secs(5),
        || (networks().gateways == on_node_port).then_some(()),
        state,
    );
    // A node's heartbeat changes nothing the mesh reads: no new snapshot.
    let version = daemon.snapshots.borrow().version;
    api.apply(node("node-b", "198.51.100.2", "2026-01-01T00:00:10Z"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(daemon.snapshots.borrow().version, version);
    api.delete("v1", "Service", "istio-system", "istio-eastwestgateway");
    e2e::eventually(
        Duration::from_secs(5),
        || (!networks().enabled()).then_some(()),
        state,
    );
}

/// The VM that [`vm_group`]'s group `vms` auto-registers: its node ID
/// (address 127.0.1.4) and metadata.
const VM_NODE: &str = "sidecar~127.0.1.4~vm-1.default~default.svc.cluster.local";
const VM_METADATA: [(&str, &str); 1] = [("AUTO_REGISTER_GROUP", "vms")];

/// The WorkloadEntry [`VM_NODE`] is registered as, if written.
fn vm_entry(api: &FakeApiServer) -> Option<serde_json::Value> {
    api.get(
        "networking.istio.io/v1",
        "WorkloadEntry",
        "default",
        "vms-127.0.1.4",
    )
}

/// The WorkloadGroup `vms` (labels `app: vm-app`, port `http` 9080, and
/// `more` lines of its spec) and a ServiceEntry selecting its workloads
/// (`vm.example.internal`, 10.96.0.80:9080).
fn vm_group(more: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {{name: vms, namespace: default}}
spec:
  metadata: {{labels: {{app: vm-app}}}}
  template: {{ports: {{http: 9080}}}}
{more}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: vm-app, namespace: default}}
spec:
  hosts: [vm.example.internal]
  addresses: [10.96.0.80]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: vm-app}}}}
"
    )
}

/// WorkloadEntry auto-registration with the Kubernetes source, as istiod
/// does it: the entry of a VM whose proxy connects with node metadata
/// `AUTO_REGISTER_GROUP` is written to the API server (annotated with the
/// replica and the time), so every replica's watchers bring it back;
/// productpage's sidecar reaches the VM through a ServiceEntry selecting
/// the group's labels. Once the proxy is gone for the grace period (1 s
/// here, Istio's 10 s by default) the entry is deleted from the API.
#[test]
fn auto_registered_workload_entries_are_written_to_the_api() {
    let mesh = Mesh::start_kube(true, &[]);
    let (api, daemon) = (mesh.api(), &mesh.daemon);
    let envoy = mesh.sidecar();
    apply(daemon, &[&envoy], || {
        api.apply_yaml(&vm_group(""));
    });
    let hosts = || envoy.hosts("outbound|9080||vm.example.internal");
    let call = || {
        http_get(
            "http://10.96.0.80:9080/",
            &[("host", "vm.example.internal")],
        )
    };
    assert!(hosts().is_empty());
    assert_eq!(call().map(|(status, _)| status), Ok(503));

    let vm = mesh.block_on(e2e::ads_stream(daemon.xds_addr, VM_NODE, &VM_METADATA));
    let entry = || vm_entry(api);
    let written = e2e::eventually(SYNC, entry, || "no WorkloadEntry written".into());
    assert_eq!(written["spec"]["address"], "127.0.1.4");
    assert_eq!(written["metadata"]["labels"]["app"], "vm-app");
    let annotations = &written["metadata"]["annotations"];
    assert_eq!(annotations["istio.io/autoRegistrationGroup"], "vms");
    assert_eq!(annotations["istio.io/workloadController"], "istiod-0");
    assert!(
        annotations["istio.io/connectedAt"].is_string(),
        "{annotations}"
    );
    let group = api
        .get("networking.istio.io/v1", "WorkloadGroup", "default", "vms")
        .unwrap();
    let owner = &written["metadata"]["ownerReferences"][0];
    assert_eq!(
        (&owner["kind"], &owner["name"], &owner["uid"]),
        (
            &json!("WorkloadGroup"),
            &json!("vms"),
            &group["metadata"]["uid"]
        )
    );
    e2e::eventually(
        SYNC,
        || (hosts() == ["127.0.1.4:9080"]).then_some(()),
        || format!("the VM is not an endpoint: {:?}", hosts()),
    );
    assert_eq!(call(), Ok((200, "reviews v1".into())));

    drop(vm);
    e2e::eventually(
        SYNC,
        || entry().is_none().then_some(()),
        || format!("the entry stayed: {:?}", entry()),
    );
    e2e::eventually(
        SYNC,
        || hosts().is_empty().then_some(()),
        || format!("the VM is still an endpoint: {:?}", hosts()),
    );
    assert_eq!(envoy.rejected(), 0);
}

/// Health-checked auto-registration with the Kubernetes source: the group
/// has a readiness `probe`, so the entry written to the API server is
/// annotated `proxy.istio.io/health-checks-enabled` and is not an endpoint
/// until the VM's agent reports it healthy on its xDS stream; each report
/// is written to the entry's `status` (condition `Healthy`, the probe's
/// error as the message when `False`), and the endpoint follows it.
#[test]
fn health_reports_are_written_to_the_auto_registered_entry() {
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use envoy_types::pb::google::rpc::Status as RpcStatus;
    let mesh = Mesh::start_kube(true, &[]);
    let (api, daemon) = (mesh.api(), &mesh.daemon);
    let envoy = mesh.sidecar();
    apply(daemon, &[&envoy], || {
        api.apply_yaml(&vm_group(
            "  probe: {httpGet: {path: /ready, port: 9080}}\n",
        ));
    });
    let hosts = || envoy.hosts("outbound|9080||vm.example.internal");
    let vm = mesh.block_on(e2e::ads_stream(daemon.xds_addr, VM_NODE, &VM_METADATA));
    let entry = || vm_entry(api);
    let written = e2e::eventually(SYNC, entry, || "no WorkloadEntry written".into());
    assert_eq!(
        written["metadata"]["annotations"]["proxy.istio.io/health-checks-enabled"],
        "true"
    );
    // Registered, not yet healthy: not an endpoint.
    e2e::wait_synced(daemon, &[&envoy], SYNC);
    assert!(hosts().is_empty(), "{:?}", hosts());

    let report = |error: Option<&str>| {
        let request = DiscoveryRequest {
            type_url: istiod::autoregister::HEALTH_TYPE.into(),
            error_detail: error.map(|m| RpcStatus {
                code: 13,
                message: m.into(),
                details: vec![],
            }),
            ..Default::default()
        };
        mesh.block_on(vm.requests.send(request)).unwrap();
    };
    let healthy = |status: &str| {
        let status = status.to_owned();
        move || {
            let e = entry()?;
            let c = e["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Healthy")?
                .clone();
            (c["status"] == status.as_str()).then_some(c)
        }
    };
    report(None);
    e2e::eventually(SYNC, healthy("True"), || format!("{:?}", entry()));
    e2e::eventually(
        SYNC,
        || (hosts() == ["127.0.1.4:9080"]).then_some(()),
        || format!("the VM is not an endpoint: {:?}", hosts()),
    );

    report(Some(
        "Get \"http://localhost:9080/ready\": connection refused",
    ));
    let condition = e2e::eventually(SYNC, healthy("False"), || format!("{:?}", entry()));
    assert_eq!(
        condition["message"],
        "Get \"http://localhost:9080/ready\": connection refused"
    );
    e2e::eventually(
        SYNC,
        || hosts().is_empty().then_some(()),
        || format!("the VM is still an endpoint: {:?}", hosts()),
    );
    assert_eq!(envoy.rejected(), 0);
}

/// The Gateway API's collections, whose CRDs a cluster may not have.
const GATEWAY_API: [&str; 12] = [
    "gateway.networking.k8s.io/v1/backendtlspolicies",
    "gateway.networking.x-k8s.io/v1alpha1/xbackendtrafficpolicies",
    "gateway.networking.k8s.io/v1/listenersets",
    "gateway.networking.x-k8s.io/v1alpha1/xlistenersets",
    "gateway.networking.k8s.io/v1/gatewayclasses",
    "gateway.networking.k8s.io/v1/gateways",
    "gateway.networking.k8s.io/v1/httproutes",
    "gateway.networking.k8s.io/v1/grpcroutes",
    "gateway.networking.k8s.io/v1alpha2/tcproutes",
    "gateway.networking.k8s.io/v1alpha2/tlsroutes",
    "gateway.networking.k8s.io/v1/tlsroutes",
    "gateway.networking.k8s.io/v1beta1/referencegrants",
];

#[test]
fn gateway_api_kinds_are_read_once_their_crds_are_installed() {
    // Without the Gateway API's CRDs (404 on their lists) the daemon is
    // ready all the same: `start_kube_with` waits for `/ready`.
    let mesh = Mesh::start_kube_with(false, &[], |api| {
        for c in GATEWAY_API {
            api.set_installed(c, false);
        }
    });
    let api = mesh.api();
    let asked = |api: &FakeApiServer| {
        api.requests()
            .iter()
            .filter(|r| r.contains("/apis/gateway.networking.k8s.io/v1/httproutes"))
            .count()
    };
    assert!(asked(api) >= 1, "the HTTPRoute list was asked for");
    // A pod of the deployment the Gateway gets (its label).
    let gw = mesh.proxy(
        e2e::GATEWAY,
        &[("gateway.networking.k8s.io/gateway-name", "bookinfo-gw")],
        15000,
    );

    // The CRDs installed, then a Gateway and an HTTPRoute: the daemon asks
    // again, deploys the gateway, and its pod serves the route.
    for c in GATEWAY_API {
        api.set_installed(c, true);
    }
    api.apply_yaml(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: bookinfo-gw, namespace: istio-system}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, port: 8080, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bookinfo, namespace: default}
spec:
  parentRefs: [{name: bookinfo-gw, namespace: istio-system}]
  hostnames: [bookinfo.example.com]
  rules:
  - matches: [{path: {type: Exact, value: /productpage}}]
    backendRefs: [{name: productpage, port: 9080}]
status:
  parents:
  - parentRef: {name: other-gw, namespace: istio-system}
    controllerName: example.com/other-controller
    conditions: [{type: Accepted, status: 'True', reason: Accepted, message: theirs, lastTransitionTime: '2026-01-01T00:00:00Z'}]
",
    );
    let get = || {
        http_get(
            "http://127.0.0.1:8080/productpage",
            &[("host", "bookinfo.example.com")],
        )
    };
    e2e::eventually(
        Duration::from_secs(40),
        || {
            get()
                .ok()
                .filter(|(s, b)| *s == 200 && b == "productpage v1")
        },
        || {
            format!(
                "{:?}; {}",
                get(),
                gw.admin("/config_dump").unwrap_or_default().len()
            )
        },
    );
    // Routes from the API: the path the HTTPRoute does not name is not routed.
    let (status, _) = http_get(
        "http://127.0.0.1:8080/elsewhere",
        &[("host", "bookinfo.example.com")],
    )
    .unwrap();
    assert_eq!(status, 404);
    assert_eq!(gw.rejected(), 0);

    // The leader writes their status, as `kubectl wait
    // --for=condition=programmed` expects it.
    let condition = |conditions: &serde_json::Value, type_: &str| {
        conditions
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == type_)
            .map(|c| c["status"].as_str().unwrap_or_default().to_owned())
    };
    let v1 = "gateway.networking.k8s.io/v1";
    let gateway = e2e::eventually(
        SYNC,
        || {
            api.get(v1, "Gateway", "istio-system", "bookinfo-gw")
                .filter(|g| {
                    condition(&g["status"]["conditions"], "Programmed").as_deref() == Some("True")
                })
        },
        || {
            format!(
                "{:?}",
                api.get(v1, "Gateway", "istio-system", "bookinfo-gw")
            )
        },
    );
    let listener = &gateway["status"]["listeners"][0];
    assert_eq!(listener["attachedRoutes"], 1, "{gateway}");
    assert!(
        gateway["status"]["conditions"][0]["lastTransitionTime"].is_string(),
        "{gateway}"
    );
    // The automated deployment: ServiceAccount, Deployment and Service
    // `bookinfo-gw-istio`, owned by the Gateway.
    let uid = gateway["metadata"]["uid"].clone();
    for (version, kind) in [
        ("v1", "ServiceAccount"),
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
    ] {
        let o = api
            .get(version, kind, "istio-system", "bookinfo-gw-istio")
            .unwrap_or_else(|| panic!("no {kind} deployed"));
        assert_eq!(o["metadata"]["ownerReferences"][0]["uid"], uid, "{o}");
        assert_eq!(
            o["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"],
            "bookinfo-gw"
        );
    }
    let deployment = api
        .get("apps/v1", "Deployment", "istio-system", "bookinfo-gw-istio")
        .unwrap();
    let template = &deployment["spec"]["template"];
    assert_eq!(
        template["metadata"]["annotations"]["inject.istio.io/templates"],
        "gateway"
    );
    assert_eq!(template["spec"]["containers"][0]["name"], "istio-proxy");
    let service = api
        .get("v1", "Service", "istio-system", "bookinfo-gw-istio")
        .unwrap();
    assert_eq!(
        service["spec"]["selector"],
        json!({"gateway.networking.k8s.io/gateway-name": "bookinfo-gw"})
    );
    let ports: Vec<(String, u64)> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["port"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [("status-port".to_owned(), 15021), ("http".to_owned(), 8080)]
    );
    let route = e2e::eventually(
        SYNC,
        || {
            api.get(v1, "HTTPRoute", "default", "bookinfo").filter(|r| {
                r["status"]["parents"]
                    .as_array()
                    .is_some_and(|p| p.len() == 2)
            })
        },
        || format!("{:?}", api.get(v1, "HTTPRoute", "default", "bookinfo")),
    );
    // Another controller's parent is kept; ours follows it.
    assert_eq!(
        route["status"]["parents"][0]["controllerName"],
        "example.com/other-controller"
    );
    let parent = &route["status"]["parents"][1];
    assert_eq!(parent["controllerName"], "istio.io/gateway-controller");
    assert_eq!(
        condition(&parent["conditions"], "Accepted").as_deref(),
        Some("True")
    );
    assert_eq!(
        condition(&parent["conditions"], "ResolvedRefs").as_deref(),
        Some("True")
    );
    // Status writes are not inputs: no snapshot follows them.
    let version = mesh.daemon.snapshots.borrow().version;
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(mesh.daemon.snapshots.borrow().version, version);

    // A second route: the Gateway's status is written again, and its
    // `Accepted` condition, unchanged, keeps its transition time.
    let accepted_at = |g: &serde_json::Value| {
        g["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Accepted")
            .map(|c| c["lastTransitionTime"].clone())
    };
    let before = accepted_at(&gateway);
    assert!(before.as_ref().is_some_and(|t| t.is_string()), "{gateway}");
    api.apply_yaml(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: second, namespace: default}
spec:
  parentRefs: [{name: bookinfo-gw, namespace: istio-system}]
  hostnames: [second.example.com]
  rules: [{backendRefs: [{name: ratings, port: 9080}]}]
",
    );
    let gateway = e2e::eventually(
        SYNC,
        || {
            api.get(v1, "Gateway", "istio-system", "bookinfo-gw")
                .filter(|g| g["status"]["listeners"][0]["attachedRoutes"] == 2)
        },
        || {
            format!(
                "{:?}",
                api.get(v1, "Gateway", "istio-system", "bookinfo-gw")
            )
        },
    );
    assert_eq!(accepted_at(&gateway), before, "{gateway}");

    // The Deployment deleted by hand comes back (the leader applies it
    // again every recheck interval, 1 s here).
    assert!(api.delete("apps/v1", "Deployment", "istio-system", "bookinfo-gw-istio"));
    e2e::eventually(
        SYNC,
        || api.get("apps/v1", "Deployment", "istio-system", "bookinfo-gw-istio"),
        || "the deleted Deployment did not come back".to_owned(),
    );

    // The experimental XBackendTrafficPolicy is watched too, and its
    // status written in its own group: the Service as the ancestor.
    let x = "gateway.networking.x-k8s.io/v1alpha1";
    api.apply_yaml(
        "apiVersion: gateway.networking.x-k8s.io/v1alpha1
kind: XBackendTrafficPolicy
metadata: {name: productpage, namespace: default}
spec:
  targetRefs: [{group: '', kind: Service, name: productpage}]
  retryConstraint: {budget: {percent: 10}}
",
    );
    let policy = e2e::eventually(
        SYNC,
        || {
            api.get(x, "XBackendTrafficPolicy", "default", "productpage")
                .filter(|p| p["status"]["ancestors"].is_array())
        },
        || {
            format!(
                "{:?}",
                api.get(x, "XBackendTrafficPolicy", "default", "productpage")
            )
        },
    );
    let ancestor = &policy["status"]["ancestors"][0];
    assert_eq!(ancestor["ancestorRef"]["name"], "productpage", "{policy}");
    assert_eq!(ancestor["controllerName"], "istio.io/mesh-controller");
    assert_eq!(
        condition(&ancestor["conditions"], "Accepted").as_deref(),
        Some("True")
    );
    // A ListenerSet for a Gateway that does not allow ListenerSets: its
    // status says so (`NotAllowed`).
    api.apply_yaml(
        "apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata: {name: extra, namespace: istio-system}
spec:
  parentRef: {name: bookinfo-gw}
  listeners: [{name: more, port: 8081, protocol: HTTP}]
",
    );
    let set = e2e::eventually(
        SYNC,
        || {
            api.get(v1, "ListenerSet", "istio-system", "extra")
                .filter(|s| s["status"]["conditions"].is_array())
        },
        || format!("{:?}", api.get(v1, "ListenerSet", "istio-system", "extra")),
    );
    assert_eq!(
        set["status"]["conditions"][0]["reason"], "NotAllowed",
        "{set}"
    );
    // Those writes are not inputs either.
    let version = mesh.daemon.snapshots.borrow().version;
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(mesh.daemon.snapshots.borrow().version, version);

    // A parametersRef ConfigMap customizes the deployment: more replicas,
    // and an autoscaler of its own.
    api.apply_yaml(
        "apiVersion: v1
kind: ConfigMap
metadata: {name: bookinfo-gw-options, namespace: istio-system}
data:
  deployment: |
    spec: {replicas: 3}
  horizontalPodAutoscaler: |
    spec: {minReplicas: 3, maxReplicas: 6}
  unrelated: dropped by the watch
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: bookinfo-gw, namespace: istio-system}
spec:
  gatewayClassName: istio
  infrastructure:
    parametersRef: {group: '', kind: ConfigMap, name: bookinfo-gw-options}
  listeners:
  - {name: http, port: 8080, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
  allowedListeners: {namespaces: {from: Same}}
",
    );
    let hpa = e2e::eventually(
        SYNC,
        || {
            api.get(
                "autoscaling/v2",
                "HorizontalPodAutoscaler",
                "istio-system",
                "bookinfo-gw-istio",
            )
        },
        || "no HorizontalPodAutoscaler deployed".to_owned(),
    );
    assert_eq!(hpa["spec"]["maxReplicas"], 6, "{hpa}");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "bookinfo-gw-istio");
    let deployment = api
        .get("apps/v1", "Deployment", "istio-system", "bookinfo-gw-istio")
        .unwrap();
    assert_eq!(deployment["spec"]["replicas"], 3, "{deployment}");
}

/// What a replica that stopped left behind, swept by the leader (Istio's
/// periodic WorkloadEntry cleanup, every ten grace periods: 10 s here):
/// an auto-registered entry still marked disconnected after the grace
/// period, and one marked connected longer than any connection lasts, are
/// deleted; a freshly connected one and one not auto-registered stay.
#[test]
fn abandoned_auto_registered_entries_are_swept_by_the_leader() {
    let mesh = Mesh::start_kube(false, &[]);
    let api = mesh.api();
    let now = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .expect("date");
    let entry = |name: &str, annotations: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: {name}
  namespace: default
  annotations: {{{annotations}}}
spec: {{address: 10.10.0.1, labels: {{app: vm-app}}}}
---
"
        )
    };
    let group = "istio.io/autoRegistrationGroup: vms";
    api.apply_yaml(&format!(
        "{}{}{}{}",
        entry(
            "gone",
            &format!("{group}, istio.io/disconnectedAt: '2026-01-01T00:00:00Z'")
        ),
        entry(
            "stale",
            &format!(
                "{group}, istio.io/workloadController: istiod-9, istio.io/connectedAt: '2026-01-01T00:00:00Z'"
            )
        ),
        entry(
            "live",
            &format!("{group}, istio.io/workloadController: istiod-0, istio.io/connectedAt: '{now}'")
        ),
        entry("manual", "istio.io/disconnectedAt: '2026-01-01T00:00:00Z'"),
    ));
    let present = |name: &str| {
        api.get("networking.istio.io/v1", "WorkloadEntry", "default", name)
            .is_some()
    };
    e2e::eventually(
        Duration::from_secs(30),
        || (!present("gone") && !present("stale")).then_some(()),
        || format!("gone: {}, stale: {}", present("gone"), present("stale")),
    );
    assert!(present("live") && present("manual"));
}

/// TLSRoute at the version the cluster serves: `v1` with Gateway API
/// 1.5's standard channel (which serves nothing else), `v1alpha2` before.
/// In a cluster serving only `v1` the daemon reads the route there and
/// writes its status there; in one serving only `v1alpha2`, there.
#[test]
fn tlsroutes_are_read_and_written_at_the_served_version() {
    for (served, absent) in [("v1", "v1alpha2"), ("v1alpha2", "v1")] {
        let mesh = Mesh::start_kube_with(false, &[], |api| {
            api.set_installed(
                &format!("gateway.networking.k8s.io/{absent}/tlsroutes"),
                false,
            );
        });
        let api = mesh.api();
        api.apply_yaml(&format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: tls-gw, namespace: istio-system}}
spec:
  gatewayClassName: istio
  listeners:
  - {{name: tls, port: 8443, protocol: TLS, tls: {{mode: Passthrough}}, allowedRoutes: {{namespaces: {{from: All}}}}}}
---
apiVersion: gateway.networking.k8s.io/{served}
kind: TLSRoute
metadata: {{name: secure, namespace: default}}
spec:
  parentRefs: [{{name: tls-gw, namespace: istio-system}}]
  hostnames: [secure.example.com]
  rules: [{{backendRefs: [{{name: productpage, port: 9080}}]}}]
"
        ));
        let version = format!("gateway.networking.k8s.io/{served}");
        let route = || api.get(&version, "TLSRoute", "default", "secure");
        let accepted = e2e::eventually(
            SYNC,
            || {
                route().and_then(|r| {
                    r["status"]["parents"][0]["conditions"]
                        .as_array()?
                        .iter()
                        .find(|c| c["type"] == "Accepted")
                        .map(|c| c["status"].clone())
                })
            },
            || format!("{served}: no status written: {:?}", route()),
        );
        assert_eq!(accepted, "True", "{served}: {:?}", route());
    }
}

/// `/debug/analyze`: `istioctl analyze` over what the daemon reads from
/// the API server: findings come and go with the objects, each pointing at
/// the object's API path; with analysis on (`--enable-analysis`), the
/// leader writes them to the objects' `status.validationMessages`.
#[test]
fn analysis_of_the_cluster_follows_the_api() {
    let _hosts = e2e::isolate();
    let rt = e2e::runtime();
    let api = rt.block_on(FakeApiServer::start());
    api.apply_yaml(&e2e::bookinfo_platform_yaml());
    let daemon = rt.block_on(e2e::start_kube_daemon_analysing(
        &api,
        Duration::from_millis(200),
    ));
    e2e::wait_ready(&daemon);
    let url = format!("http://{}/debug/analyze", daemon.monitoring_addr.unwrap());
    let status_of = |name: &str| {
        api.get("networking.istio.io/v1", "VirtualService", "default", name)
            .map(|o| o["status"]["validationMessages"].clone())
    };
    let analyze = || -> Vec<serde_json::Value> {
        let (status, body) = http_get(&url, &[]).unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    // Codes and objects of what is found, and one of each's text.
    let found = |wanted: &str| {
        e2e::eventually(
            SYNC,
            || {
                let messages = analyze();
                messages
                    .iter()
                    .any(|m| m["message"].as_str().is_some_and(|t| t.contains(wanted)))
                    .then_some(messages)
            },
            || format!("{wanted:?} never found: {:#?}", analyze()),
        )
    };
    let before = analyze();
    assert!(
        before.iter().all(|m| m["level"] != "Error"),
        "Bookinfo's platform alone has no errors: {before:#?}"
    );

    // Routes to subsets no DestinationRule defines.
    api.apply_yaml(&bookinfo_sample("virtual-service-all-v1.yaml"));
    let messages = found("\"reviews+v1\"");
    let reviews = messages
        .iter()
        .find(|m| m["message"].as_str().unwrap().contains("\"reviews+v1\""))
        .unwrap();
    assert_eq!(reviews["code"], "IST0101");
    assert_eq!(reviews["origin"], "VirtualService default/reviews");
    assert_eq!(
        reviews["reference"],
        "/apis/networking.istio.io/v1/namespaces/default/virtualservices/reviews"
    );
    // The leader writes it to the object's status, as istiod with
    // PILOT_ENABLE_ANALYSIS does.
    let written = e2e::eventually(
        SYNC,
        || status_of("reviews").filter(|m| m.is_array()),
        || format!("no validationMessages: {:?}", status_of("reviews")),
    );
    assert_eq!(
        written,
        json!([{
            "documentationUrl": "https://istio.io/latest/docs/reference/config/analysis/ist0101/",
            "level": "ERROR",
            "type": {"code": "IST0101", "name": "ReferencedResourceNotFound"},
        }])
    );

    // The DestinationRules come: those errors go; the subsets that select
    // none of the API's pods are found instead.
    api.apply_yaml(&bookinfo_sample("destination-rule-all.yaml"));
    let messages = found("The Subset v2-mysql defined");
    assert!(
        messages.iter().all(|m| !m["message"]
            .as_str()
            .unwrap()
            .contains("in destinationrule not found")),
        "{messages:#?}"
    );
    let ratings: Vec<&str> = messages
        .iter()
        .filter(|m| m["code"] == "IST0173" && m["origin"] == "DestinationRule default/ratings")
        .map(|m| m["message"].as_str().unwrap())
        .collect();
    assert_eq!(ratings.len(), 3, "v2, v2-mysql, v2-mysql-vm: {ratings:?}");
    assert!(
        !messages
            .iter()
            .any(|m| m["origin"] == "DestinationRule default/reviews"),
        "reviews v1-v3 all have pods: {messages:#?}"
    );
    // Its messages gone, the field is taken out of the status.
    e2e::eventually(
        SYNC,
        || status_of("reviews").filter(|m| m.is_null()),
        || format!("validationMessages kept: {:?}", status_of("reviews")),
    );

    // An object the API server took but the mesh cannot use.
    api.apply_yaml(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: broken, namespace: default}
spec:
  hosts: [details]
  http: [{route: [{destination: {host: details}, weight: 150}]}]
",
    );
    let messages = found("Schema validation error");
    let broken = messages.iter().find(|m| m["code"] == "IST0106").unwrap();
    assert_eq!(
        broken["origin"], "VirtualService default/broken",
        "{broken}"
    );
    let written = e2e::eventually(
        SYNC,
        || status_of("broken").filter(|m| m.is_array()),
        || format!("no validationMessages: {:?}", status_of("broken")),
    );
    assert_eq!(written[0]["type"]["code"], "IST0106", "{written}");
    drop(daemon);
}

/// `istiod analyze --kubeconfig`: istioctl's default mode, the cluster's
/// objects read from the API server (workloads as their pods), local
/// files applied over them, messages for one namespace or all.
#[test]
fn analyze_reads_the_cluster() {
    let rt = e2e::runtime();
    let api = rt.block_on(FakeApiServer::start());
    api.apply_yaml(&e2e::bookinfo_platform_yaml());
    api.apply_yaml(&bookinfo_sample("virtual-service-all-v1.yaml"));
    api.apply_yaml(
        "apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: elsewhere, namespace: other}
spec:
  hosts: [elsewhere]
  http: [{route: [{destination: {host: nowhere}}]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default, annotations: {sidecar.istio.io/inject: 'true'}}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: x}]}
",
    );
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: '{}'}}}}]
users: [{{name: me, user: {{}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: me, namespace: default}}}}]
current-context: fake
",
            api.url()
        ),
    )
    .unwrap();
    let analyze = |args: &[&str]| {
        let out = std::process::Command::new(e2e::istiod_binary())
            .arg("analyze")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    // The namespace `default`: its routes to subsets no DestinationRule
    // defines, each referenced by its API path; the Deployment's misplaced
    // annotation; nothing of `other`.
    let (code, stdout, stderr) = analyze(&[]);
    assert_eq!(code, Some(79), "{stdout}{stderr}");
    assert!(
        stdout.contains("Error [IST0101] (VirtualService default/reviews /apis/networking.istio.io/v1/namespaces/default/virtualservices/reviews) Referenced host+subset in destinationrule not found: \"reviews+v1\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("Warning [IST0107] (Deployment default/web /apis/apps/v1/namespaces/default/deployments/web) Misplaced annotation: sidecar.istio.io/inject can only be applied to Pod"),
        "{stdout}"
    );
    assert!(!stdout.contains("other/elsewhere"), "{stdout}");
    assert!(
        stderr.contains("when analyzing namespace: default."),
        "{stderr}"
    );

    // Every namespace.
    let (_, stdout, _) = analyze(&["-A"]);
    assert!(
        stdout.contains("(VirtualService other/elsewhere /apis/networking.istio.io/v1/namespaces/other/virtualservices/elsewhere) Referenced host not found: \"nowhere\""),
        "{stdout}"
    );

    // A local file applied over the cluster: the DestinationRules make the
    // subsets exist (those Bookinfo has pods for).
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, bookinfo_sample("destination-rule-reviews.yaml")).unwrap();
    let (_, stdout, _) = analyze(&[rules.to_str().unwrap()]);
    assert!(!stdout.contains("\"reviews+v1\""), "{stdout}");
    assert!(stdout.contains("\"ratings+v1\""), "{stdout}");
}

/// Kubernetes Ingresses from the API server: the leader writes the ones
/// the mesh serves their `status.loadBalancer` (the ingress gateway
/// Service's load balancer addresses and external IPs, as Istio's
/// ingress status), follows the Service's, and leaves other classes'
/// alone; its own status write does not come back as a new snapshot.
#[test]
fn served_ingresses_get_the_ingress_gateways_addresses() {
    let mesh = Mesh::start_kube(false, &[]);
    let (api, daemon) = (mesh.api(), &mesh.daemon);
    let ingress = |name: &str, class: &str| {
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": "default",
                         "annotations": {"kubernetes.io/ingress.class": class}},
            "spec": {"rules": [{"host": format!("{name}.example.com"), "http": {"paths": [
                {"path": "/", "pathType": "Prefix",
                 "backend": {"service": {"name": "productpage", "port": {"number": 9080}}}}
            ]}}]}
        })
    };
    api.apply(ingress("bookinfo", "istio"));
    api.apply(ingress("elsewhere", "nginx"));
    let gateway_service = |ip: &str| {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "istio-ingressgateway", "namespace": "istio-system"},
            "spec": {"type": "LoadBalancer", "externalIPs": ["192.0.2.9"],
                     "ports": [{"name": "http2", "port": 80}]},
            "status": {"loadBalancer": {"ingress": [{"ip": ip}]}}
        })
    };
    api.apply(gateway_service("198.51.100.7"));
    let v1 = "networking.k8s.io/v1";
    let addresses = |name: &str| {
        api.get(v1, "Ingress", "default", name)
            .map(|i| i["status"]["loadBalancer"]["ingress"].clone())
            .unwrap_or_default()
    };
    let written = |ips: [&str; 2]| json!([{"ip": ips[0]}, {"ip": ips[1]}]);
    e2e::eventually(
        SYNC,
        || (addresses("bookinfo") == written(["192.0.2.9", "198.51.100.7"])).then_some(()),
        || format!("{:?}", addresses("bookinfo")),
    );
    // Written once: the write itself is trimmed from the watch's input.
    let version = daemon.snapshots.borrow().version;
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        daemon.snapshots.borrow().version,
        version,
        "the status write made a snapshot"
    );
    // The load balancer's address changes: so does the Ingress's.
    api.apply(gateway_service("198.51.100.8"));
    e2e::eventually(
        SYNC,
        || (addresses("bookinfo") == written(["192.0.2.9", "198.51.100.8"])).then_some(()),
        || format!("{:?}", addresses("bookinfo")),
    );
    assert_eq!(
        addresses("elsewhere"),
        serde_json::Value::Null,
        "another class's Ingress"
    );
    // The served Ingress's Gateway and routes are in the snapshot.
    let snap = daemon.snapshots.borrow().clone();
    assert!(
        snap.gateways
            .iter()
            .any(|g| g.key() == "istio-system/bookinfo-istio-autogenerated-k8s-ingress-default")
    );
    assert!(
        snap.virtual_services
            .iter()
            .all(|v| !v.spec.hosts.contains(&"elsewhere.example.com".to_owned()))
    );
}
