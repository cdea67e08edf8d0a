//! Bookinfo end to end: Istio's own Bookinfo samples, served by the daemon
//! from a config folder, configure real Envoys that route real HTTP between
//! real backends, each test inside its own network namespace.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use e2e::{
    GATEWAY, GATEWAY_LABELS, Mesh, NACKED_VIRTUAL_SERVICE, SYNC, apply, assert_binomial,
    bookinfo_sample, http_get, istio_testdata, metric, tally, wait_for_nack, wait_synced,
};

/// ClusterIPs from `examples/bookinfo/platform.yaml`.
const REVIEWS: &str = "http://10.96.0.13:9080/reviews/0";
const RATINGS: &str = "http://10.96.0.12:9080/ratings/0";

#[test]
fn gateway_routes_productpage_and_404s_the_rest() {
    let mesh = Mesh::start(false, &[("bookinfo-gateway.yaml", "gateway.yaml")]);
    let gw = mesh.proxy(GATEWAY, &GATEWAY_LABELS, 15000);
    gw.wait_for(SYNC, "the 8080 listener", |e| {
        e.stats()
            .get("listener_manager.total_listeners_active")
            .map(String::as_str)
            == Some("1")
    });

    assert_eq!(
        http_get("http://127.0.0.1:8080/productpage", &[]),
        Ok((200, "productpage v1".into()))
    );
    assert_eq!(
        http_get("http://127.0.0.1:8080/api/v1/products/1", &[]),
        Ok((200, "productpage v1".into()))
    );
    let (status, _) = http_get("http://127.0.0.1:8080/not-in-the-virtualservice", &[]).unwrap();
    assert_eq!(status, 404);
    assert_eq!(gw.rejected(), 0);
}

/// AuthorizationPolicies on the ingress gateway (Istio's ingress access
/// control): an `ALLOW` by method and path (a path template among them),
/// and a `DENY` by client address
/// and header checked before it; a policy for other workloads does not
/// touch the gateway.
#[test]
fn authorization_policies_guard_the_ingress_gateway() {
    let mesh = Mesh::start(false, &[("bookinfo-gateway.yaml", "gateway.yaml")]);
    let gw = mesh.proxy(GATEWAY, &GATEWAY_LABELS, 15000);
    let get = |path: &str, headers: &[(&str, &str)]| {
        http_get(&format!("http://127.0.0.1:8080{path}"), headers).unwrap()
    };
    gw.wait_for(SYNC, "the 8080 listener", |_| {
        get("/productpage", &[]).0 == 200
    });
    assert_eq!(get("/api/v1/products/1", &[]).0, 200);

    mesh.apply(
        &[&gw],
        "authz.yaml",
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ingress, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  rules:
  - to: [{operation: {methods: [GET], paths: [/productpage, /static/*, '/api/v1/products/{*}/reviews']}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: block, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules:
  - from: [{source: {ipBlocks: [127.0.0.0/8]}}]
    when: [{key: 'request.headers[x-block]', values: ['yes']}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: others, namespace: istio-system}
spec:
  selector: {matchLabels: {app: productpage}}
  rules: []
",
    );
    assert_eq!(get("/productpage", &[]), (200, "productpage v1".into()));
    assert_eq!(
        get("/api/v1/products/1", &[]),
        (403, "RBAC: access denied".into())
    );
    // A path template (Envoy's URI template matcher): one segment.
    assert_eq!(get("/api/v1/products/1/reviews", &[]).0, 200);
    assert_eq!(get("/api/v1/products/1/2/reviews", &[]).0, 403);
    assert_eq!(get("/productpage", &[("x-block", "yes")]).0, 403);
    assert_eq!(gw.stat("http.outbound_0.0.0.0_8080.rbac.denied"), 3);
    assert_eq!(gw.rejected(), 0);
}

/// RequestAuthentication and AuthorizationPolicy on the ingress gateway,
/// as Istio's "authorization with JWT" task: an invalid token is refused
/// (401), a missing one passes until a policy asks for a request
/// principal; then only the principal and claim it names get in.
#[test]
fn tokens_are_verified_and_authorize_at_the_ingress_gateway() {
    let mesh = Mesh::start(false, &[("bookinfo-gateway.yaml", "gateway.yaml")]);
    let gw = mesh.proxy(GATEWAY, &GATEWAY_LABELS, 15000);
    let issuer = e2e::JwtIssuer::new("testing@secure.istio.io");
    let stranger = e2e::JwtIssuer::new("testing@secure.istio.io");
    let get = |token: Option<&str>| {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer
            .iter()
            .map(|b| ("authorization", b.as_str()))
            .collect();
        http_get("http://127.0.0.1:8080/productpage", &headers)
            .unwrap()
            .0
    };
    gw.wait_for(SYNC, "the 8080 listener", |_| get(None) == 200);
    let quote = |s: &str| format!("'{s}'");
    mesh.apply(
        &[&gw],
        "jwt.yaml",
        &format!(
            "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  jwtRules:
  - issuer: {}
    jwks: {}
",
            quote(&issuer.issuer),
            quote(&issuer.jwks)
        ),
    );
    let alice = issuer.token("alice", serde_json::json!({"groups": ["dev", "admin"]}));
    let bob = issuer.token("bob", serde_json::json!({"groups": "dev"}));
    assert_eq!(get(Some(&alice)), 200);
    assert_eq!(get(None), 200, "no token: passes, unauthenticated");
    assert_eq!(get(Some("not.a.token")), 401);
    assert_eq!(
        get(Some(&stranger.token("alice", serde_json::json!({})))),
        401,
        "signed by another key"
    );

    mesh.apply(
        &[&gw],
        "authz.yaml",
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  rules:
  - from: [{source: {requestPrincipals: ['testing@secure.istio.io/*']}}]
    when: [{key: 'request.auth.claims[groups]', values: [admin]}]
",
    );
    assert_eq!(get(Some(&alice)), 200, "a principal in the group");
    assert_eq!(get(None), 403, "no principal");
    assert_eq!(get(Some(&bob)), 403, "not in the group");
    assert_eq!(gw.rejected(), 0);
    // Both in force, as `/debug/configz` shows them.
    let monitoring = format!("http://{}", mesh.daemon.monitoring_addr.unwrap());
    let (_, configz) = http_get(&format!("{monitoring}/debug/configz"), &[]).unwrap();
    for kind in [
        "\"RequestAuthentication\"",
        "\"AuthorizationPolicy\"",
        "require-jwt",
    ] {
        assert!(configz.contains(kind), "{kind}: {configz}");
    }
}

#[test]
fn sidecar_routes_as_the_bookinfo_samples_say() {
    let mesh = Mesh::start(
        true,
        &[
            ("destination-rule-all.yaml", "destination-rules.yaml"),
            ("virtual-service-all-v1.yaml", "vs.yaml"),
        ],
    );
    let (cfg, daemon) = (&mesh.cfg, &mesh.daemon);
    let envoy = mesh.sidecar();

    // virtual-service-all-v1.yaml: only v1.
    let counts = tally(REVIEWS, "reviews:9080", &[], 50);
    assert_eq!(counts, BTreeMap::from([("reviews v1".to_string(), 50)]));

    // virtual-service-reviews-80-20.yaml: 80/20 between v1 and v2.
    apply(daemon, &[&envoy], || {
        cfg.add_sample("virtual-service-reviews-80-20.yaml", "vs.yaml")
    });
    let n = 500;
    let counts = tally(REVIEWS, "reviews", &[], n);
    let v1 = counts.get("reviews v1").copied().unwrap_or(0);
    let v2 = counts.get("reviews v2").copied().unwrap_or(0);
    assert_eq!(v1 + v2, n, "only v1 and v2 may answer: {counts:?}");
    assert_binomial(v1, n, 0.8, "reviews v1");

    // virtual-service-reviews-jason-v2-v3.yaml: jason -> v2, everyone else -> v3.
    apply(daemon, &[&envoy], || {
        cfg.add_sample("virtual-service-reviews-jason-v2-v3.yaml", "vs.yaml")
    });
    let jason = tally(
        REVIEWS,
        "reviews.default.svc.cluster.local:9080",
        &[("end-user", "jason")],
        30,
    );
    assert_eq!(jason, BTreeMap::from([("reviews v2".to_string(), 30)]));
    let others = tally(REVIEWS, "reviews.default", &[("end-user", "someone")], 30);
    assert_eq!(others, BTreeMap::from([("reviews v3".to_string(), 30)]));

    // virtual-service-ratings-test-abort.yaml: jason gets the injected 500.
    apply(daemon, &[&envoy], || {
        cfg.add_sample("virtual-service-ratings-test-abort.yaml", "vs.yaml")
    });
    let jason = tally(RATINGS, "ratings:9080", &[("end-user", "jason")], 20);
    assert_eq!(jason, BTreeMap::from([("status 500".to_string(), 20)]));
    let others = tally(RATINGS, "ratings:9080", &[], 20);
    assert_eq!(others, BTreeMap::from([("ratings v1".to_string(), 20)]));

    // virtual-service-ratings-test-delay.yaml, with 2s instead of 7s. Envoy's
    // timers fire up to a few milliseconds early, hence the 1.9s floor.
    let delay = bookinfo_sample("virtual-service-ratings-test-delay.yaml");
    assert!(
        delay.contains("fixedDelay: 7s"),
        "the sample changed upstream"
    );
    apply(daemon, &[&envoy], || {
        cfg.write(
            "vs.yaml",
            &delay.replace("fixedDelay: 7s", "fixedDelay: 2s"),
        )
    });
    for _ in 0..3 {
        let start = Instant::now();
        let answer = http_get(RATINGS, &[("host", "ratings"), ("end-user", "jason")]);
        let took = start.elapsed();
        assert_eq!(answer, Ok((200, "ratings v1".into())));
        assert!(
            took >= Duration::from_millis(1900),
            "jason's request took {took:?}, expected the 2s delay"
        );
        let start = Instant::now();
        assert_eq!(
            http_get(RATINGS, &[("host", "ratings")]),
            Ok((200, "ratings v1".into()))
        );
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "other users must not be delayed"
        );
    }
    assert_eq!(envoy.rejected(), 0);
}

/// Two services claim one VIP: Bookinfo's `reviews` (ClusterIP 10.96.0.13)
/// and a ServiceEntry given the same address. Envoy refuses a route
/// configuration that lists a domain in two virtual hosts, so the daemon
/// leaves the VIP's domains to the first service (as istiod does): a real
/// Envoy must ACK the result, route the VIP to `reviews`, and still have
/// the ServiceEntry's own host.
#[test]
fn a_vip_claimed_by_two_services_is_accepted_and_routes_to_the_first() {
    let mesh = Mesh::start(true, &[]);
    let (cfg, daemon) = (&mesh.cfg, &mesh.daemon);
    let envoy = mesh.sidecar();
    apply(daemon, &[&envoy], || {
        cfg.write(
            "shared-vip.yaml",
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: reviews-elsewhere}\n\
             spec:\n  hosts: [reviews.example.com]\n  addresses: [10.96.0.13]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  \
             ports: [{number: 9080, name: http, protocol: HTTP}]\n  endpoints: [{address: 127.0.0.1}]\n",
        )
    });
    assert_eq!(envoy.rejected(), 0, "the route configuration was refused");
    let dump = envoy
        .admin("/config_dump?resource=dynamic_route_configs")
        .unwrap();
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let hosts: BTreeMap<String, Vec<String>> = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["route_config"]["name"] == "9080")
        .flat_map(|c| c["route_config"]["virtual_hosts"].as_array().unwrap())
        .map(|v| {
            let domains = v["domains"].as_array().unwrap();
            let domains = domains.iter().map(|d| d.as_str().unwrap().to_owned());
            (v["name"].as_str().unwrap().to_owned(), domains.collect())
        })
        .collect();
    let owners = |domain: &str| -> Vec<&str> {
        hosts
            .iter()
            .filter(|(_, domains)| domains.iter().any(|d| d == domain))
            .map(|(name, _)| name.as_str())
            .collect()
    };
    assert_eq!(
        owners("10.96.0.13"),
        ["reviews.default.svc.cluster.local:9080"]
    );
    assert_eq!(owners("reviews.example.com"), ["reviews.example.com:9080"]);

    // The domains carry no port; Envoy drops the `Host` header's port
    // before matching (`ignore_port_in_host_matching`, as Istio's).
    let counts = tally(REVIEWS, "10.96.0.13:9080", &[], 12);
    assert!(
        counts.keys().all(|k| k.starts_with("reviews v")),
        "the VIP goes to Bookinfo's reviews: {counts:?}"
    );
}

#[test]
fn editing_a_file_changes_routing_within_two_seconds() {
    let mesh = Mesh::start(
        true,
        &[
            ("destination-rule-reviews.yaml", "destination-rules.yaml"),
            ("virtual-service-reviews-test-v2.yaml", "vs.yaml"),
        ],
    );
    let (cfg, daemon) = (&mesh.cfg, &mesh.daemon);
    let envoy = mesh.sidecar();
    // virtual-service-reviews-test-v2.yaml: jason -> v2, others -> v1.
    assert_eq!(
        tally(REVIEWS, "reviews", &[], 10),
        BTreeMap::from([("reviews v1".to_string(), 10)])
    );

    // Edit in place: send everyone to v3. Nothing is restarted.
    let edited = std::time::Instant::now();
    cfg.add_sample("virtual-service-reviews-v3.yaml", "vs.yaml");
    loop {
        if tally(REVIEWS, "reviews", &[], 1).contains_key("reviews v3") {
            break;
        }
        assert!(
            edited.elapsed() < Duration::from_secs(2),
            "the edit did not reach Envoy within 2s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = edited.elapsed();
    assert_eq!(
        tally(REVIEWS, "reviews", &[], 20),
        BTreeMap::from([("reviews v3".to_string(), 20)])
    );
    println!("edit -> Envoy routing changed in {took:?}");

    // Deleting the VirtualService falls back to the default route over all versions.
    apply(daemon, &[&envoy], || cfg.remove("vs.yaml"));
    let counts = tally(REVIEWS, "reviews", &[], 60);
    assert_eq!(
        counts.len(),
        3,
        "all three versions answer without a VirtualService: {counts:?}"
    );

    // Both edits went through the debouncer, were counted as config
    // triggers, and Envoy's ACK of them was timed as convergence.
    let monitoring = format!("http://{}", daemon.monitoring_addr.unwrap());
    let metrics = e2e::daemon_metrics(daemon);
    assert!(metric(&metrics, "pilot_debounce_time_count") >= 2.0);
    assert!(metric(&metrics, "pilot_push_triggers{type=\"config\"}") >= 2.0);
    assert!(metric(&metrics, "pilot_proxy_convergence_time_count") >= 1.0);
    // syncz shows the proxy's own sample: the snapshot it has all of, and
    // how long after the change (the debounce included) its ACK came.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let converged = loop {
        let row = syncz_row(&monitoring, &envoy.node_id);
        if row["converged"]["snapshot_version"] == row["snapshot_version"] {
            break row["converged"]["seconds"].as_f64().unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "syncz never showed the last snapshot converged: {row}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        (0.1..5.0).contains(&converged),
        "from the removal (debounced 100 ms) to Envoy's ACK: {converged} s"
    );
}

/// A weight written as a word, an unknown field, no hosts, weights not
/// summing to 100, an invalid regex, a negative duration: (file, text, field).
const BAD_DOCUMENTS: [(&str, &str, &str); 6] = [
    (
        "bad-weight.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: weight-as-word\nspec:\n  hosts: [details]\n  http:\n  - route:\n    - destination: {host: details, subset: v1}\n      weight: eighty\n",
        "spec.http[0].route[0].weight",
    ),
    (
        "bad-field.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: unknown-field\nspec:\n  hosts: [details]\n  http:\n  - route:\n    - destination: {host: details, subset: v1}\n    retrys: {attempts: 3}\n",
        "retrys",
    ),
    (
        "no-hosts.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: no-hosts\nspec:\n  http:\n  - route:\n    - destination: {host: reviews, subset: v3}\n",
        "spec.hosts",
    ),
    (
        "bad-total.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: total-90\nspec:\n  hosts: [details]\n  http:\n  - route:\n    - {destination: {host: details, subset: v1}, weight: 70}\n    - {destination: {host: details, subset: v1}, weight: 20}\n",
        "spec.http[0].route",
    ),
    (
        "bad-regex.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: bad-regex\nspec:\n  hosts: [details]\n  http:\n  - match: [{uri: {regex: \"/details/(\"}}]\n    route: [{destination: {host: details}}]\n",
        "spec.http[0].match[0].uri.regex",
    ),
    (
        "bad-duration.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: negative-timeout\nspec:\n  hosts: [details]\n  http:\n  - timeout: -5s\n    route: [{destination: {host: details}}]\n",
        "spec.http[0].timeout",
    ),
];

#[test]
fn bad_documents_are_reported_and_the_rest_still_serves() {
    let mesh = Mesh::start(
        true,
        &[
            ("destination-rule-all.yaml", "destination-rules.yaml"),
            ("virtual-service-all-v1.yaml", "vs.yaml"),
        ],
    );
    let daemon = &mesh.daemon;
    let envoy = mesh.sidecar();
    // Bad documents arrive beside the valid ones while the mesh runs.
    apply(daemon, &[&envoy], || {
        for (file, text, _) in BAD_DOCUMENTS {
            mesh.cfg.write(file, text);
        }
    });
    let start = Instant::now();
    while daemon.errors.borrow().len() < BAD_DOCUMENTS.len() && start.elapsed() < SYNC {
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_synced(daemon, &[&envoy], SYNC);
    let errors: Vec<String> = daemon
        .errors
        .borrow()
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(errors.len(), BAD_DOCUMENTS.len(), "{errors:#?}");
    for (file, _, field) in BAD_DOCUMENTS {
        let error = errors
            .iter()
            .find(|e| e.contains(file))
            .unwrap_or_else(|| panic!("no error names {file}: {errors:#?}"));
        assert!(error.contains("VirtualService default/"), "{error}");
        assert!(error.contains(field), "{field} missing from: {error}");
    }
    // The valid rest applies: reviews -> v1 as virtual-service-all-v1.yaml says.
    assert_eq!(
        tally(REVIEWS, "reviews", &[], 20),
        BTreeMap::from([("reviews v1".to_string(), 20)])
    );
    assert_eq!(envoy.rejected(), 0);
}

#[test]
fn every_istio_networking_sample_is_acked_by_envoy() {
    let mesh = Mesh::start(true, &[]);
    let (cfg, daemon) = (&mesh.cfg, &mesh.daemon);
    let sidecar = mesh.sidecar();
    let gateway = mesh.proxy(GATEWAY, &GATEWAY_LABELS, 15100);

    // Every file of Istio's samples that holds networking config.
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "yaml")
                && std::fs::read_to_string(&p)
                    .unwrap()
                    .contains("networking.istio.io")
            {
                out.push(p);
            }
        }
    }
    let root = istio_testdata().join("samples");
    let mut paths = Vec::new();
    walk(&root, &mut paths);
    paths.sort();
    let samples: Vec<(String, String)> = paths
        .iter()
        .map(|p| {
            (
                p.strip_prefix(&root).unwrap().display().to_string(),
                std::fs::read_to_string(p).unwrap(),
            )
        })
        .collect();
    assert!(
        samples.len() >= 25,
        "expected Istio's samples in {}",
        root.display()
    );
    for (sample, text) in &samples {
        apply(daemon, &[&sidecar, &gateway], || {
            cfg.write("sample.yaml", text)
        });
        let errors = daemon.errors.borrow().clone();
        assert!(errors.is_empty(), "{sample}: {errors:?}");
        assert_eq!(
            sidecar.rejected() + gateway.rejected(),
            0,
            "{sample} was rejected by Envoy"
        );
    }
    // All at once, too.
    apply(daemon, &[&sidecar, &gateway], || {
        cfg.remove("sample.yaml");
        let all: Vec<&str> = samples.iter().map(|(_, t)| t.as_str()).collect();
        cfg.write("all.yaml", &all.join("\n---\n"));
    });
    assert_eq!(sidecar.rejected() + gateway.rejected(), 0);
    println!("{} samples ACKed by a sidecar and a gateway", samples.len());
}

#[test]
fn envoy_keeps_its_config_while_the_daemon_is_away_and_resyncs_after() {
    let mut mesh = Mesh::start(
        true,
        &[
            ("destination-rule-reviews.yaml", "destination-rules.yaml"),
            ("virtual-service-reviews-v2-v3.yaml", "vs.yaml"),
        ],
    );
    let envoy = mesh.sidecar();
    let counts = tally(REVIEWS, "reviews", &[], 40);
    assert!(
        counts
            .keys()
            .all(|k| k == "reviews v2" || k == "reviews v3"),
        "{counts:?}"
    );

    mesh.restart_daemon(|cfg| {
        // No control plane: the proxy serves with its last config.
        let counts = tally(REVIEWS, "reviews", &[], 40);
        assert!(
            counts
                .keys()
                .all(|k| k == "reviews v2" || k == "reviews v3"),
            "{counts:?}"
        );
        // Config changes while the daemon is away.
        cfg.add_sample("virtual-service-reviews-v3.yaml", "vs.yaml");
    });
    // Envoy reconnects with its old version and no nonce, and is sent everything.
    wait_synced(&mesh.daemon, &[&envoy], Duration::from_secs(40));
    assert_eq!(
        tally(REVIEWS, "reviews", &[], 20),
        BTreeMap::from([("reviews v3".to_string(), 20)])
    );
    assert_eq!(envoy.rejected(), 0);
}

#[test]
fn a_nacked_config_is_recorded_and_envoy_keeps_its_last_good_one() {
    let mesh = Mesh::start(
        true,
        &[
            ("destination-rule-reviews.yaml", "destination-rules.yaml"),
            ("virtual-service-reviews-v3.yaml", "vs.yaml"),
        ],
    );
    let daemon = &mesh.daemon;
    let envoy = mesh.sidecar();
    // A valid config only Envoy can tell it refuses.
    mesh.cfg.write("vs.yaml", NACKED_VIRTUAL_SERVICE);
    let nack = wait_for_nack(daemon, &envoy, translator::ROUTE_TYPE);
    assert!(nack.contains("program size"), "{nack}");
    assert!(envoy.rejected() > 0);

    // The NACK is visible on the monitoring port, as in istiod.
    let monitoring = format!("http://{}", daemon.monitoring_addr.unwrap());
    let row = syncz_row(&monitoring, &envoy.node_id);
    assert!(
        row["route_nack"].as_str().unwrap().contains("program size"),
        "{row}"
    );
    assert_eq!(row["synced"], false);
    let metrics = e2e::daemon_metrics(daemon);
    assert_eq!(
        metric(&metrics, "pilot_total_xds_rejects{type=\"rds\"}"),
        1.0
    );
    assert_eq!(metric(&metrics, "pilot_xds{version=\"1.40.0\"}"), 1.0);
    assert!(metric(&metrics, "pilot_xds_pushes{type=\"cds\"}") >= 1.0);
    assert!(
        metric(&metrics, "pilot_xds_pushes{type=\"rds\"}") >= 2.0,
        "first RDS and the NACKed one"
    );
    // The proxy's first config came from a snapshot with nothing
    // memoised, and the edited VirtualService's from one that took over
    // what the snapshot before built: each timed on both clocks (the
    // daemon's own metrics).
    for kind in ["first_key", "full"] {
        for name in [
            format!("istiod_xds_generation_seconds_count{{kind=\"{kind}\"}}"),
            format!("istiod_xds_generation_cpu_seconds_count{{kind=\"{kind}\"}}"),
        ] {
            assert!(metric(&metrics, &name) >= 1.0, "{name}: {metrics}");
        }
    }
    // What the daemon would send the proxy, as Envoy's JSON.
    let (status, dump) = http_get(
        &format!("{monitoring}/debug/config_dump?proxyID=productpage-v1.default"),
        &[],
    )
    .unwrap();
    assert_eq!(status, 200, "{dump}");
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let listeners: Vec<&str> = dump["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["name"].as_str())
        .collect();
    assert!(listeners.contains(&"virtualOutbound"), "{dump}");
    assert_eq!(
        dump["listeners"][0]["address"]["socketAddress"]["address"],
        "0.0.0.0"
    );
    let (_, registry) = http_get(&format!("{monitoring}/debug/registryz"), &[]).unwrap();
    assert!(
        registry.contains("reviews.default.svc.cluster.local"),
        "{registry}"
    );
    let (_, configz) = http_get(&format!("{monitoring}/debug/configz"), &[]).unwrap();
    assert!(configz.contains("\"VirtualService\""), "{configz}");
    assert_eq!(
        http_get(&format!("{monitoring}/ready"), &[]).unwrap().0,
        200
    );
    // The last accepted routes still apply.
    assert_eq!(
        tally(REVIEWS, "reviews", &[], 10),
        BTreeMap::from([("reviews v3".to_string(), 10)])
    );

    // Fixed: accepted again.
    apply(daemon, &[&envoy], || {
        mesh.cfg
            .add_sample("virtual-service-reviews-test-v2.yaml", "vs.yaml")
    });
    assert_eq!(
        tally(REVIEWS, "reviews", &[], 10),
        BTreeMap::from([("reviews v1".to_string(), 10)])
    );
}

/// The `/debug/syncz` row of proxy `node_id` (the monitoring port must answer 200).
fn syncz_row(monitoring: &str, node_id: &str) -> serde_json::Value {
    let (status, syncz) = http_get(&format!("{monitoring}/debug/syncz"), &[]).unwrap();
    assert_eq!(status, 200, "{syncz}");
    let syncz: serde_json::Value = serde_json::from_str(&syncz).unwrap();
    syncz
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["proxy"] == node_id)
        .unwrap_or_else(|| panic!("no syncz row for {node_id}: {syncz}"))
        .clone()
}

/// An event that changes nothing the daemon reads (an editor's hidden
/// temporary file; a file written again with the text it had) publishes
/// no snapshot, so no proxy is pushed, as istiod drops an update whose
/// object is unchanged; a real change still publishes one.
#[test]
fn events_that_change_nothing_read_publish_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cfg = e2e::ConfigDir::bookinfo_platform();
    let mut daemon = rt.block_on(e2e::start_daemon(cfg.path()));
    let version = || daemon.snapshots.borrow().version;
    let debounced = || metric(&daemon.metrics.encode(), "pilot_debounce_time_count");
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < SYNC, "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert_eq!(version(), 1);
    let platform = std::fs::read_to_string(cfg.path().join("platform.yaml")).unwrap();
    let no_op = |what: &str, change: &dyn Fn()| {
        let before = debounced();
        change();
        // The daemon saw the event (its debounce ended), then read the folder.
        wait(what, &|| debounced() > before);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(version(), 1, "{what} published a snapshot");
    };
    no_op("a hidden file", &|| {
        std::fs::write(cfg.path().join(".vs.yaml.swp"), "x").unwrap()
    });
    no_op("the same text", &|| cfg.write("platform.yaml", &platform));
    let exposition = daemon.metrics.encode();
    assert!(
        !exposition.contains("pilot_push_triggers{"),
        "no push was triggered:\n{exposition}"
    );
    cfg.add_sample("destination-rule-all.yaml", "dr.yaml");
    wait("the real change is published", &|| version() == 2);
    rt.block_on(daemon.shutdown());
}

/// The external authorizers' Service (HTTP on 8000, gRPC on 9000), its one
/// endpoint the test's authorizers at 127.0.2.2; a Gateway with an HTTP
/// server routing everything to productpage and a TCP server forwarding
/// to it.
const EXT_AUTHZ: &str = "apiVersion: v1
kind: Service
metadata: {name: ext-authz, namespace: default}
spec:
  clusterIP: 10.96.0.91
  ports: [{name: http, port: 8000}, {name: grpc, port: 9000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ext-authz-1, namespace: default, labels: {kubernetes.io/service-name: ext-authz}}
addressType: IPv4
ports: [{name: http, port: 8000}, {name: grpc, port: 9000}]
endpoints: [{addresses: [127.0.2.2]}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ['*']
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ['*']
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge, namespace: default}
spec:
  hosts: ['*']
  gateways: [edge]
  http:
  - route: [{destination: {host: productpage, port: {number: 9080}}}]
  tcp:
  - match: [{port: 31400}]
    route: [{destination: {host: productpage, port: {number: 9080}}}]
";

/// What the test's authorizers were asked: (transport, path checked or
/// `tcp`).
type Checks = std::sync::Arc<std::sync::Mutex<Vec<(&'static str, String)>>>;

/// The gRPC authorizer (`envoy.service.auth.v3.Authorization`), as
/// Istio's ext-authz sample decides: a request with `x-ext-authz: allow`
/// passes (with `x-ext-authz-check-result: allowed` added), others get
/// 403; a TCP connection (no HTTP attributes) is refused.
struct GrpcAuthorizer(Checks);

#[tonic::async_trait]
impl envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization
    for GrpcAuthorizer
{
    async fn check(
        &self,
        request: tonic::Request<envoy_types::pb::envoy::service::auth::v3::CheckRequest>,
    ) -> Result<
        tonic::Response<envoy_types::pb::envoy::service::auth::v3::CheckResponse>,
        tonic::Status,
    > {
        use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
        use envoy_types::pb::envoy::service::auth::v3::{
            CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response,
        };
        let http = request
            .get_ref()
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let header = |value: &str| HeaderValueOption {
            header: Some(HeaderValue {
                key: "x-ext-authz-check-result".into(),
                value: value.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (code, response) = match http {
            None => {
                self.0.lock().unwrap().push(("grpc", "tcp".into()));
                (7, None)
            }
            Some(h) => {
                self.0.lock().unwrap().push(("grpc", h.path.clone()));
                if h.headers.get("x-ext-authz").map(String::as_str) == Some("allow") {
                    let ok = OkHttpResponse {
                        headers: vec![header("allowed")],
                        ..Default::default()
                    };
                    (0, Some(check_response::HttpResponse::OkResponse(ok)))
                } else {
                    let denied = DeniedHttpResponse {
                        status: Some(envoy_types::pb::envoy::r#type::v3::HttpStatus { code: 403 }),
                        headers: vec![header("denied")],
                        body: "denied by the gRPC authorizer".into(),
                    };
                    (
                        7,
                        Some(check_response::HttpResponse::DeniedResponse(denied)),
                    )
                }
            }
        };
        Ok(tonic::Response::new(CheckResponse {
            status: Some(envoy_types::pb::google::rpc::Status {
                code,
                ..Default::default()
            }),
            http_response: response,
            ..Default::default()
        }))
    }
}

/// Starts both authorizers on 127.0.2.2: HTTP on 8000 (the same decision,
/// answered with the status; it records the path and the
/// `x-ext-authz-origin` header the provider adds), gRPC on 9000.
fn start_authorizers(mesh: &Mesh) -> Checks {
    let checks: Checks = Checks::default();
    let seen = checks.clone();
    let http = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let seen = seen.clone();
        async move {
            let origin = req
                .headers()
                .get("x-ext-authz-origin")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            seen.lock()
                .unwrap()
                .push(("http", format!("{} {origin}", req.uri().path())));
            let allowed = req
                .headers()
                .get("x-ext-authz")
                .is_some_and(|v| v == "allow");
            let (status, result) = if allowed {
                (axum::http::StatusCode::OK, "allowed")
            } else {
                (axum::http::StatusCode::FORBIDDEN, "denied")
            };
            (
                status,
                [("x-ext-authz-check-result", result)],
                format!("{result} by the HTTP authorizer"),
            )
        }
    });
    let grpc =
        envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer::new(
            GrpcAuthorizer(checks.clone()),
        );
    mesh.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.2.2:8000")
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, http).await;
        });
        let listener = tokio::net::TcpListener::bind("127.0.2.2:9000")
            .await
            .unwrap();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(grpc)
                .serve_with_incoming(incoming)
                .await;
        });
    });
    checks
}

/// `CUSTOM` AuthorizationPolicies on the ingress gateway, as Istio's
/// external authorization task: the requests the rules select are checked
/// by the provider the mesh config names (HTTP, then gRPC), which lets
/// them through with the headers it adds or refuses them with its own
/// status, headers and body; requests the rules do not select are not
/// checked; a gRPC provider checks TCP connections too.
#[test]
fn custom_policies_ask_the_external_authorizer_at_the_ingress_gateway() {
    let mesh = Mesh::start(false, &[]);
    let checks = start_authorizers(&mesh);
    mesh.cfg.write("edge.yaml", EXT_AUTHZ);
    let gw = mesh.proxy(GATEWAY, &GATEWAY_LABELS, 15000);
    let get = |path: &str, headers: &[(&str, &str)]| {
        e2e::http_request(&format!("http://127.0.0.1:8080{path}"), headers).unwrap()
    };
    gw.wait_for(SYNC, "the 8080 listener", |_| {
        get("/productpage", &[]).status == 200
    });
    assert_eq!(
        http_get("http://127.0.0.1:31400/productpage", &[]),
        Ok((200, "productpage v1".into())),
        "the TCP server, before any policy"
    );
    mesh.apply(
        &[&gw],
        "mesh.yaml",
        &e2e::mesh_config(
            "extensionProviders:
- name: sample-ext-authz-http
  envoyExtAuthzHttp:
    service: ext-authz.default.svc.cluster.local
    port: 8000
    pathPrefix: /check
    includeRequestHeadersInCheck: [x-ext-authz]
    includeAdditionalHeadersInCheck: {x-ext-authz-origin: ingress}
    includeRequestBodyInCheck: {maxRequestBytes: 1024, allowPartialMessage: true}
    headersToUpstreamOnAllow: [x-ext-authz-check-result]
    headersToDownstreamOnDeny: [x-ext-authz-check-result]
- name: sample-ext-authz-grpc
  envoyExtAuthzGrpc: {service: ext-authz.default.svc.cluster.local, port: 9000}",
        ),
    );
    let policy = |provider: &str| {
        format!(
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ext-authz, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: CUSTOM
  provider: {{name: {provider}}}
  rules:
  - to: [{{operation: {{paths: ['/header/*']}}}}]
"
        )
    };
    mesh.apply(&[&gw], "ext-authz.yaml", &policy("sample-ext-authz-http"));
    // Selected and allowed: the app sees the header the authorizer added.
    let allowed = get(
        "/header/x-ext-authz-check-result",
        &[("x-ext-authz", "allow")],
    );
    assert_eq!((allowed.status, allowed.body.as_str()), (200, "allowed"));
    // Selected and denied: the authorizer's status, header and body.
    let denied = get(
        "/header/x-ext-authz-check-result",
        &[("x-ext-authz", "deny")],
    );
    assert_eq!(
        (denied.status, denied.body.as_str()),
        (403, "denied by the HTTP authorizer")
    );
    assert_eq!(denied.headers["x-ext-authz-check-result"], "denied");
    // Not selected by the rules: not checked.
    assert_eq!(get("/productpage", &[]).status, 200);
    assert_eq!(
        *checks.lock().unwrap(),
        [
            (
                "http",
                "/check/header/x-ext-authz-check-result ingress".to_owned()
            ),
            (
                "http",
                "/check/header/x-ext-authz-check-result ingress".to_owned()
            ),
        ],
        "checked once per selected request, under the path prefix, with the additional header"
    );
    // An HTTP provider cannot check TCP: the TCP server is untouched.
    assert_eq!(
        http_get("http://127.0.0.1:31400/productpage", &[])
            .unwrap()
            .0,
        200
    );

    checks.lock().unwrap().clear();
    mesh.apply(&[&gw], "ext-authz.yaml", &policy("sample-ext-authz-grpc"));
    let allowed = get(
        "/header/x-ext-authz-check-result",
        &[("x-ext-authz", "allow")],
    );
    assert_eq!((allowed.status, allowed.body.as_str()), (200, "allowed"));
    let denied = get("/header/x-ext-authz-check-result", &[]);
    assert_eq!(
        (denied.status, denied.body.as_str()),
        (403, "denied by the gRPC authorizer")
    );
    assert_eq!(get("/productpage", &[]).status, 200);
    // The TCP chain cannot read paths: the rule selects every connection,
    // and the authorizer refuses them.
    assert!(
        http_get("http://127.0.0.1:31400/productpage", &[]).is_err(),
        "the TCP connection is closed"
    );
    assert_eq!(
        *checks.lock().unwrap(),
        [
            ("grpc", "/header/x-ext-authz-check-result".to_owned()),
            ("grpc", "/header/x-ext-authz-check-result".to_owned()),
            ("grpc", "tcp".to_owned()),
        ]
    );
    // Envoy's counts: the network filter's (stat prefix `tcp.`, as Istio
    // sets it), and the unselected requests, for which the HTTP filter was
    // disabled.
    assert_eq!(gw.stat("ext_authz.tcp..denied"), 1);
    assert_eq!(gw.stat("http.outbound_0.0.0.0_8080.ext_authz.disabled"), 2);
    assert_eq!(gw.rejected(), 0);

    // A provider the mesh config does not define: the selected requests are
    // refused by RBAC, the others still pass.
    mesh.apply(&[&gw], "ext-authz.yaml", &policy("undefined"));
    let refused = get(
        "/header/x-ext-authz-check-result",
        &[("x-ext-authz", "allow")],
    );
    assert_eq!(
        (refused.status, refused.body.as_str()),
        (403, "RBAC: access denied")
    );
    assert_eq!(get("/productpage", &[]).status, 200);
    assert_eq!(gw.rejected(), 0);
}
