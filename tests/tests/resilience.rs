//! Traffic management on a real Envoy: retries and retry budgets, timeouts,
//! HTTP/2 keepalive, fault injection, mirroring, circuit breaking, outlier
//! detection and consistent hashing, each configured from the
//! VirtualService / DestinationRule YAML an Istio user writes, checked
//! against what Istio's documentation says.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use e2e::{Envoy, Mesh, assert_binomial, http_request, tally};

const RATINGS: &str = "http://10.96.0.12:9080";
const REVIEWS: &str = "http://10.96.0.13:9080";

/// Writes `vs.yaml`: a VirtualService `host` for `host` with the `http:`
/// list `http` (YAML, indented two spaces), and waits until `envoy` has it.
fn route(mesh: &Mesh, envoy: &Envoy, host: &str, http: &str) {
    let vs = format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {host}}}\nspec:\n  hosts: [{host}]\n  http:\n{http}"
    );
    mesh.apply(&[envoy], "vs.yaml", &vs);
}

const REVIEWS_SUBSETS: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
";

#[test]
fn retries_recover_from_as_many_failures_as_attempts() {
    let mesh = Mesh::start(true, &[]);
    let envoy = mesh.sidecar();
    // `attempts` counts retries: a request gets attempts + 1 tries.
    route(
        &mesh,
        &envoy,
        "ratings",
        "  - retries: {attempts: 3, retryOn: \"503\"}\n    route: [{destination: {host: ratings}}]\n",
    );
    let ok = http_request(&format!("{RATINGS}/flaky/3/a"), &[("host", "ratings")]).unwrap();
    assert_eq!((ok.status, ok.body.as_str()), (200, "ratings v1"));
    assert_eq!(mesh.seen("/flaky/3/a").len(), 4, "1 try + 3 retries");
    let failed = http_request(&format!("{RATINGS}/flaky/4/b"), &[("host", "ratings")]).unwrap();
    assert_eq!(failed.status, 503);
    assert_eq!(mesh.seen("/flaky/4/b").len(), 4);

    // attempts: 0 disables retries altogether.
    route(
        &mesh,
        &envoy,
        "ratings",
        "  - retries: {attempts: 0}\n    route: [{destination: {host: ratings}}]\n",
    );
    let failed = http_request(&format!("{RATINGS}/flaky/1/c"), &[("host", "ratings")]).unwrap();
    assert_eq!(failed.status, 503);
    assert_eq!(mesh.seen("/flaky/1/c").len(), 1);
}

/// DestinationRule `retryBudget`: with no share of the load for retries
/// (`percent: 0`) and one retry at a time (`minRetryConcurrency: 1`),
/// ten requests failing together are not all retried: Envoy counts the
/// retries it refused (`upstream_rq_retry_overflow`) and the backend sees
/// fewer attempts. Without the budget every request gets its three
/// retries.
#[test]
fn a_retry_budget_caps_concurrent_retries() {
    retry_budget_caps_retries(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - retries: {attempts: 3, retryOn: \"503\"}
    route: [{destination: {host: ratings}}]
",
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  trafficPolicy:
    retryBudget: {percent: 0, minRetryConcurrency: 1}
",
    );
}

/// The same with the Gateway API: an HTTPRoute for the Service (mesh
/// traffic) retrying 503s three times, then an XBackendTrafficPolicy
/// whose `retryConstraint` leaves no budget (`percent: 0`, one retry at a
/// time: Istio reads `minRetryRate.count` as the minimum concurrency).
#[test]
fn a_backend_traffic_policy_caps_concurrent_retries() {
    retry_budget_caps_retries(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ratings, namespace: default}
spec:
  parentRefs: [{group: '', kind: Service, name: ratings, port: 9080}]
  rules:
  - retry: {attempts: 3, codes: [503]}
    backendRefs: [{name: ratings, port: 9080}]
",
        "apiVersion: gateway.networking.x-k8s.io/v1alpha1
kind: XBackendTrafficPolicy
metadata: {name: ratings, namespace: default}
spec:
  targetRefs: [{group: '', kind: Service, name: ratings}]
  retryConstraint:
    budget: {percent: 0}
    minRetryRate: {count: 1, interval: 1s}
",
    );
}

/// Applies `routes` (three retries of 503s to ratings): ten requests
/// failing together each get their retries; then `budget`: fewer
/// attempts reach the backend and Envoy counts the retries it refused.
fn retry_budget_caps_retries(routes: &str, budget: &str) {
    let mesh = Mesh::start(true, &[]);
    let envoy = mesh.sidecar();
    mesh.apply(&[&envoy], "routes.yaml", routes);
    let overflow =
        "cluster.outbound|9080||ratings.default.svc.cluster.local.upstream_rq_retry_overflow";
    // Ten requests at once, each answered 503 after 300 ms.
    let burst = |key: &str| {
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..10)
                .map(|i| {
                    let url = format!("{RATINGS}/slow-fail/300/{key}{i}");
                    s.spawn(move || http_request(&url, &[("host", "ratings")]).unwrap().status)
                })
                .collect();
            for w in workers {
                assert_eq!(w.join().unwrap(), 503);
            }
        });
        mesh.seen(&format!("/slow-fail/300/{key}")).len()
    };
    assert_eq!(burst("free"), 40, "1 try + 3 retries each");
    assert_eq!(envoy.stat(overflow), 0);

    mesh.apply(&[&envoy], "budget.yaml", budget);
    let attempts = burst("budget");
    assert!(attempts < 40, "{attempts} attempts");
    assert!(envoy.stat(overflow) > 0, "no retry refused");
    assert_eq!(envoy.rejected(), 0);
}

/// An HTTP/2 server on `addr` that settles the connection (SETTINGS and
/// its acknowledgement) and then answers nothing: no response, and no PING
/// acknowledgement. Counts the PINGs it gets.
fn silent_h2_server(
    mesh: &Mesh,
    addr: &'static str,
) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    let pings = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = pings.clone();
    mesh.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut conn, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut preface = [0u8; 24];
                    if conn.read_exact(&mut preface).await.is_err() {
                        return;
                    }
                    loop {
                        // Frame header: length (3), type, flags, stream (4).
                        let mut head = [0u8; 9];
                        if conn.read_exact(&mut head).await.is_err() {
                            return;
                        }
                        let len = usize::from(head[0]) << 16
                            | usize::from(head[1]) << 8
                            | usize::from(head[2]);
                        let mut payload = vec![0u8; len];
                        if conn.read_exact(&mut payload).await.is_err() {
                            return;
                        }
                        match (head[3], head[4] & 1) {
                            // The client's SETTINGS: ours, and its ACK.
                            (4, 0) => {
                                let frames =
                                    [[0, 0, 0, 4, 0, 0, 0, 0, 0], [0, 0, 0, 4, 1, 0, 0, 0, 0]]
                                        .concat();
                                if conn.write_all(&frames).await.is_err() {
                                    return;
                                }
                            }
                            (6, 0) => {
                                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                            _ => {}
                        }
                    }
                });
            }
        });
    });
    pings
}

/// DestinationRule `connectionPool.http.http2KeepAlive`: the sidecar
/// PINGs its HTTP/2 upstream connections and closes one whose PING goes
/// unanswered, so a request to an upstream that went silent ends (503)
/// instead of waiting for ever (Istio routes have no timeout by default).
#[test]
fn http2_keepalive_closes_a_silent_upstream() {
    let mesh = Mesh::start(true, &[]);
    let pings = silent_h2_server(&mesh, "127.0.2.8:8080");
    let envoy = mesh.sidecar();
    mesh.apply(
        &[&envoy],
        "silent.yaml",
        "apiVersion: v1
kind: Service
metadata: {name: silent, namespace: default}
spec:
  clusterIP: 10.96.0.56
  ports: [{name: http2, port: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: silent-1, namespace: default, labels: {kubernetes.io/service-name: silent}}
addressType: IPv4
ports: [{name: http2, port: 8080}]
endpoints: [{addresses: [127.0.2.8]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: silent}
spec:
  host: silent
  trafficPolicy:
    connectionPool:
      http: {http2KeepAlive: {interval: 300ms, timeout: 300ms}}
",
    );
    let started = Instant::now();
    let r = http_request("http://10.96.0.56:8080/", &[("host", "silent")]).unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(pings.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert!(
        envoy.stat(
            "cluster.outbound|8080||silent.default.svc.cluster.local.http2.keepalive_timeout"
        ) >= 1
    );
    assert_eq!(envoy.rejected(), 0);
}

/// A GET and how long it took.
fn timed_get(url: &str, host: &str) -> (e2e::Reply, Duration) {
    let start = Instant::now();
    let r = http_request(url, &[("host", host)]).unwrap();
    (r, start.elapsed())
}

#[test]
fn timeouts_answer_504_at_the_configured_time() {
    let mesh = Mesh::start(true, &[]);
    let envoy = mesh.sidecar();
    route(
        &mesh,
        &envoy,
        "ratings",
        "  - timeout: 1s\n    route: [{destination: {host: ratings}}]\n",
    );
    let (r, took) = timed_get(&format!("{RATINGS}/delay/5000"), "ratings");
    assert_eq!(r.status, 504);
    assert!(
        (Duration::from_millis(950)..Duration::from_millis(2000)).contains(&took),
        "timeout 1s answered after {took:?}"
    );
    // Faster than the timeout: fine.
    let r = http_request(&format!("{RATINGS}/delay/100"), &[("host", "ratings")]).unwrap();
    assert_eq!(r.status, 200);

    // perTryTimeout: each of the 2 tries is cut at 400ms, then 504.
    route(
        &mesh,
        &envoy,
        "ratings",
        "  - retries: {attempts: 1, perTryTimeout: 400ms, retryOn: gateway-error}\n    route: [{destination: {host: ratings}}]\n",
    );
    let (r, took) = timed_get(&format!("{RATINGS}/delay/3000"), "ratings");
    assert_eq!(r.status, 504);
    assert!(
        (Duration::from_millis(750)..Duration::from_millis(1600)).contains(&took),
        "2 tries of 400ms answered after {took:?}"
    );
    assert_eq!(mesh.seen("/delay/3000").len(), 2);
}

#[test]
fn half_the_requests_are_aborted_with_a_50_percent_fault() {
    let mesh = Mesh::start(true, &[]);
    let envoy = mesh.sidecar();
    route(
        &mesh,
        &envoy,
        "ratings",
        "  - fault: {abort: {httpStatus: 500, percentage: {value: 50}}}\n    route: [{destination: {host: ratings}}]\n",
    );
    let n = 400;
    let counts = tally(&format!("{RATINGS}/"), "ratings", &[], n);
    let aborted = counts.get("status 500").copied().unwrap_or(0);
    assert_eq!(
        aborted + counts.get("ratings v1").copied().unwrap_or(0),
        n,
        "{counts:?}"
    );
    assert_binomial(aborted, n, 0.5, "aborted");
    // Aborted requests never reached the backend.
    assert_eq!(mesh.seen("/").len(), n - aborted);
}

#[test]
fn mirrored_requests_reach_the_shadow_and_never_the_caller() {
    let mesh = Mesh::start(true, &[]);
    let envoy = mesh.sidecar();
    mesh.apply(&[&envoy], "dr.yaml", REVIEWS_SUBSETS);
    route(
        &mesh,
        &envoy,
        "reviews",
        "  - route: [{destination: {host: reviews, subset: v1}}]\n    mirror: {host: reviews, subset: v2}\n    mirrorPercentage: {value: 100}\n",
    );
    let counts = tally(&format!("{REVIEWS}/mirror-all"), "reviews:9080", &[], 30);
    assert_eq!(counts, BTreeMap::from([("reviews v1".to_string(), 30)]));
    let deadline = Instant::now() + Duration::from_secs(5);
    while mesh
        .seen("/mirror-all")
        .iter()
        .filter(|s| s.version == "v2")
        .count()
        < 30
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let shadows: Vec<_> = mesh
        .seen("/mirror-all")
        .into_iter()
        .filter(|s| s.version == "v2")
        .collect();
    assert_eq!(shadows.len(), 30, "every request is mirrored");
    assert!(
        shadows.iter().all(|s| s.host == "reviews-shadow:9080"),
        "Envoy marks mirrored requests with a -shadow host: {:?}",
        shadows.first()
    );

    // mirrorPercentage: 25.
    route(
        &mesh,
        &envoy,
        "reviews",
        "  - route: [{destination: {host: reviews, subset: v1}}]\n    mirror: {host: reviews, subset: v2}\n    mirrorPercentage: {value: 25}\n",
    );
    let n = 400;
    let counts = tally(&format!("{REVIEWS}/mirror-some"), "reviews", &[], n);
    assert_eq!(counts, BTreeMap::from([("reviews v1".to_string(), n)]));
    std::thread::sleep(Duration::from_millis(500));
    let mirrored = mesh
        .seen("/mirror-some")
        .iter()
        .filter(|s| s.version == "v2")
        .count();
    assert_binomial(mirrored, n, 0.25, "mirrored");
}

#[test]
fn circuit_breaker_sheds_load_beyond_the_connection_pool() {
    let mesh = Mesh::start(true, &[]);
    let envoy = mesh.sidecar();
    // Istio's circuit-breaking task, on ratings.
    mesh.apply(
        &[&envoy],
        "dr.yaml",
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}
",
    );
    let replies: Vec<_> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    http_request(&format!("{RATINGS}/delay/500"), &[("host", "ratings")]).unwrap()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let shed: Vec<_> = replies.iter().filter(|r| r.status == 503).collect();
    assert!(ok >= 1, "some requests get through: {replies:?}");
    assert!(
        !shed.is_empty(),
        "8 concurrent requests on 1 connection + 1 pending must overflow"
    );
    assert!(
        shed.iter()
            .all(|r| r.headers.get("x-envoy-overloaded").map(String::as_str) == Some("true")),
        "overflowed requests carry x-envoy-overloaded: {shed:?}"
    );
    assert_eq!(ok + shed.len(), replies.len());
}

/// A mesh whose sidecar has reviews' DestinationRule eject an endpoint at
/// its first error, checked every second, for three minutes, all of them
/// if need be; `more` adds fields to its `outlierDetection`.
fn ejecting_mesh(more: &str) -> (Mesh, Envoy) {
    let mesh = Mesh::start(true, &[]);
    let envoy = mesh.sidecar();
    mesh.apply(
        &[&envoy],
        "dr.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
  trafficPolicy:
    outlierDetection: {{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 3m, maxEjectionPercent: 100{more}}}
"
        ),
    );
    (mesh, envoy)
}

/// Hosts of reviews' cluster that `envoy`'s outlier detection ejected.
fn ejections(envoy: &Envoy) -> u64 {
    envoy
        .stats()
        .get("cluster.outbound|9080||reviews.default.svc.cluster.local.outlier_detection.ejections_enforced_total")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn outlier_detection_ejects_the_failing_endpoint() {
    let (_mesh, envoy) = ejecting_mesh("");
    // v1 answers 503 to this path; v2 and v3 are healthy.
    let warmup = tally(&format!("{REVIEWS}/fail-on/v1"), "reviews", &[], 30);
    assert!(
        warmup.get("status 503").copied().unwrap_or(0) <= 2,
        "v1 is ejected after its first 5xx: {warmup:?}"
    );
    let after = tally(&format!("{REVIEWS}/fail-on/v1"), "reviews", &[], 60);
    assert_eq!(after.get("status 503"), None, "{after:?}");
    let versions: BTreeSet<_> = after.keys().cloned().collect();
    assert_eq!(
        versions,
        BTreeSet::from(["reviews v2".to_string(), "reviews v3".to_string()])
    );
    assert_eq!(ejections(&envoy), 1);
}

/// `outlierDetectionHttpErrorCodes`: only the listed statuses count as the
/// errors `consecutive5xxErrors` counts. With `[404, 429]`, v1's 503s eject
/// nothing (they would without the list), while its first 429 ejects it.
#[test]
fn outlier_detection_counts_only_the_listed_statuses() {
    let (_mesh, envoy) = ejecting_mesh(", outlierDetectionHttpErrorCodes: [404, 429]");
    let ejections = || ejections(&envoy);
    // 503s from v1 are not errors here: v1 keeps answering (Envoy's default
    // retries may hide some of them, not all of 60).
    let sick = tally(&format!("{REVIEWS}/fail-on/v1"), "reviews", &[], 60);
    assert!(sick.contains_key("status 503"), "{sick:?}");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(ejections(), 0, "a 503 is not a listed error");
    // A 429 from v1 is: it is ejected, and only v2 and v3 answer.
    let _ = tally(&format!("{REVIEWS}/fail-on/v1/429"), "reviews", &[], 30);
    e2e::eventually(
        std::time::Duration::from_secs(5),
        || (ejections() == 1).then_some(()),
        || format!("v1 was not ejected: {} ejections", ejections()),
    );
    let after = tally(&format!("{REVIEWS}/fail-on/v1/429"), "reviews", &[], 60);
    let versions: BTreeSet<_> = after.keys().cloned().collect();
    assert_eq!(
        versions,
        BTreeSet::from(["reviews v2".to_string(), "reviews v3".to_string()]),
        "{after:?}"
    );
    assert_eq!(envoy.rejected(), 0);
}

#[test]
fn consistent_hash_pins_each_user_to_one_endpoint() {
    let mesh = Mesh::start(true, &[]);
    let envoy = mesh.sidecar();
    mesh.apply(
        &[&envoy],
        "dr.yaml",
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user}
",
    );
    let mut seen_versions = BTreeSet::new();
    for user in ["ann", "bob", "cy", "dee", "eve", "fay", "gus", "hal"] {
        let counts = tally(&format!("{REVIEWS}/"), "reviews", &[("x-user", user)], 20);
        assert_eq!(
            counts.len(),
            1,
            "user {user} moved between endpoints: {counts:?}"
        );
        seen_versions.extend(counts.into_keys());
    }
    assert!(
        seen_versions.len() > 1,
        "8 users all hashed to one endpoint: {seen_versions:?}"
    );
}

/// A gRPC caller's own deadline (`grpc-timeout`) is enforced by its
/// sidecar, as Istio's routes let it be: on a route without a timeout
/// (`max_grpc_timeout: 0s`) and, capped at the route's timeout, on one
/// with a timeout (`max_stream_duration`). The proxy answers in gRPC's
/// terms: `grpc-status: 14`, `upstream request timeout` when the route's
/// timer fired (Envoy maps its 504 to `UNAVAILABLE`), or `grpc-status: 4`
/// (`DEADLINE_EXCEEDED`), `downstream duration timeout` when the stream's.
/// A plain request on the same route waits for the app.
#[test]
fn a_grpc_deadline_is_enforced_by_the_sidecar() {
    let mesh = Mesh::start(true, &[]);
    let envoy = mesh.sidecar();
    let timed_out = |r: &e2e::Reply| {
        let header = |name: &str| r.headers.get(name).map(String::as_str);
        matches!(
            (header("grpc-status"), header("grpc-message")),
            (Some("14"), Some("upstream request timeout"))
                | (Some("4"), Some("downstream duration timeout"))
        )
    };
    let grpc = |path: &str, deadline: &str| {
        let start = Instant::now();
        let r = http_request(
            &format!("{RATINGS}{path}"),
            &[
                ("host", "ratings"),
                ("content-type", "application/grpc"),
                ("grpc-timeout", deadline),
            ],
        )
        .unwrap();
        (r, start.elapsed())
    };
    let (r, took) = grpc("/delay/3000", "300m");
    assert!(timed_out(&r), "{r:?}");
    assert!(
        took < Duration::from_millis(2000),
        "answered after {took:?}"
    );
    let (r, took) = timed_get(&format!("{RATINGS}/delay/1000"), "ratings");
    assert_eq!(r.status, 200);
    assert!(took >= Duration::from_millis(950), "{took:?}");

    // With a route timeout of 1s, a longer deadline is capped at it.
    route(
        &mesh,
        &envoy,
        "ratings",
        "  - timeout: 1s\n    route: [{destination: {host: ratings}}]\n",
    );
    let (r, took) = grpc("/delay/3000", "300m");
    assert!(timed_out(&r), "{r:?}");
    assert!(took < Duration::from_millis(900), "answered after {took:?}");
    let (r, took) = grpc("/delay/5000", "60S");
    assert!(timed_out(&r), "{r:?}");
    assert!(
        (Duration::from_millis(950)..Duration::from_millis(2500)).contains(&took),
        "capped at 1s, answered after {took:?}"
    );
}

/// The mesh config's `defaultHttpRetryPolicy` (the retries of routes that
/// set none, here ratings' default route) and `h2UpgradePolicy` (HTTP/2 to
/// the upstreams of HTTP/1.1 ports), and a rule's `useClientProtocol`
/// (the client's protocol instead).
#[test]
fn the_mesh_config_sets_default_retries_and_the_upstream_protocol() {
    let mesh = Mesh::start(true, &[]);
    let envoy = mesh.sidecar();
    let get =
        |path: &str| http_request(&format!("{RATINGS}{path}"), &[("host", "ratings")]).unwrap();
    // Istio's default policy does not retry an app's 503.
    assert_eq!(get("/flaky/1/a").status, 503);
    assert_eq!(mesh.seen("/flaky/1/a").len(), 1);
    assert_eq!(get("/version").body, "HTTP/1.1");
    mesh.apply(
        &[&envoy],
        "mesh.yaml",
        &e2e::mesh_config(
            "defaultHttpRetryPolicy: {attempts: 3, retryOn: '503'}\nh2UpgradePolicy: UPGRADE",
        ),
    );
    let ok = get("/flaky/3/b");
    assert_eq!((ok.status, ok.body.as_str()), (200, "ratings v1"));
    assert_eq!(mesh.seen("/flaky/3/b").len(), 4, "1 try + 3 retries");
    assert_eq!(get("/version").body, "HTTP/2.0");
    // A rule's `useClientProtocol`: the upstream speaks the client's
    // protocol, whatever the mesh's policy.
    mesh.apply(
        &[&envoy],
        "client-protocol.yaml",
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  trafficPolicy: {connectionPool: {http: {useClientProtocol: true, maxConcurrentStreams: 10}}}
",
    );
    assert_eq!(get("/version").body, "HTTP/1.1");
    let h2c = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", "--http2-prior-knowledge"])
        .args(["-H", "host: ratings", &format!("{RATINGS}/version")])
        .output()
        .expect("curl (scripts/setup installs it)");
    assert_eq!(String::from_utf8_lossy(&h2c.stdout), "HTTP/2.0", "{h2c:?}");
    e2e::apply(&mesh.daemon, &[&envoy], || {
        mesh.cfg.remove("client-protocol.yaml")
    });
    // `attempts: 0` turns retries off.
    mesh.apply(
        &[&envoy],
        "mesh.yaml",
        &e2e::mesh_config("defaultHttpRetryPolicy: {attempts: 0}"),
    );
    assert_eq!(get("/flaky/1/c").status, 503);
    assert_eq!(mesh.seen("/flaky/1/c").len(), 1);
    assert_eq!(envoy.rejected(), 0);
}

/// The mesh config's `connectTimeout` bounds the wait for an upstream that
/// never answers (its SYNs dropped by iptables): Envoy's 503 comes at the
/// mesh's 0.5 s, not the default 10 s. Its `tcpKeepalive` is in the
/// cluster Envoy runs.
#[test]
fn the_mesh_connect_timeout_bounds_a_silent_upstream() {
    let mesh = Mesh::start(true, &[]);
    let envoy = mesh.sidecar();
    e2e::run(
        "iptables",
        &["-A", "OUTPUT", "-d", "127.0.9.9", "-j", "DROP"],
    );
    mesh.apply(
        &[&envoy],
        "silent.yaml",
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: silent}
spec:
  hosts: [silent.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.9.9}]
",
    );
    mesh.apply(
        &[&envoy],
        "mesh.yaml",
        &e2e::mesh_config(
            "connectTimeout: 0.5s\ntcpKeepalive: {time: 300s, probes: 3}\ndefaultHttpRetryPolicy: {attempts: 0}",
        ),
    );
    let (r, took) = timed_get("http://10.96.0.99:80/", "silent.example.com");
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("connection timeout"), "{r:?}");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "answered after {took:?}"
    );
    let dump = envoy
        .admin("/config_dump?resource=dynamic_active_clusters")
        .unwrap();
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let silent = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["cluster"])
        .find(|c| c["name"] == "outbound|80||silent.example.com")
        .unwrap_or_else(|| panic!("no silent cluster: {dump}"));
    assert_eq!(silent["connect_timeout"], "0.500s", "{silent}");
    let keepalive = &silent["upstream_connection_options"]["tcp_keepalive"];
    assert_eq!(
        (&keepalive["keepalive_time"], &keepalive["keepalive_probes"]),
        (&serde_json::json!(300), &serde_json::json!(3)),
        "{silent}"
    );
    assert_eq!(envoy.rejected(), 0);
}

/// DestinationRule `loadBalancer.warmup` (slow start): an endpoint that
/// joins is ramped up, from `minimumPercent` of its weight. Here the
/// first endpoint has left its 10 s window when the second joins, which
/// then takes half its share (`minimumPercent: 50`: 1 in 3 requests)
/// where Istio's default curve (10 %) gives it 1 in 11.
#[test]
fn a_joining_endpoint_warms_up_from_the_minimum_percent() {
    let mesh = Mesh::start(true, &[]);
    let envoy = mesh.sidecar();
    let service = |endpoints: &str| {
        format!(
            "apiVersion: v1
kind: Service
metadata: {{name: warm, namespace: default}}
spec:
  clusterIP: 10.96.0.71
  ports: [{{name: http, port: 9080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: warm-1, namespace: default, labels: {{kubernetes.io/service-name: warm}}}}
addressType: IPv4
ports: [{{name: http, port: 9080}}]
endpoints: [{endpoints}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: warm, namespace: default}}
spec:
  host: warm
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
      warmup: {{duration: 10s, minimumPercent: 50, aggression: 1}}
"
        )
    };
    mesh.apply(&[&envoy], "warm.yaml", &service("{addresses: [127.0.1.4]}"));
    // The first endpoint leaves its window.
    std::thread::sleep(Duration::from_secs(11));
    mesh.apply(
        &[&envoy],
        "warm.yaml",
        &service("{addresses: [127.0.1.4]}, {addresses: [127.0.1.5]}"),
    );
    let n = 150;
    let counts = tally("http://10.96.0.71:9080/", "warm", &[], n);
    let joined: usize = counts
        .iter()
        .filter(|(body, _)| body.contains("v2"))
        .map(|(_, k)| *k)
        .sum();
    assert_eq!(counts.values().sum::<usize>(), n, "{counts:?}");
    // 1 in 3 (50 % weight against 100 %); Envoy's scheduler is
    // deterministic, so the bounds are wide only for timing.
    assert!(
        (35..=65).contains(&joined),
        "the joining endpoint got {joined} of {n}: {counts:?}"
    );
    assert_eq!(envoy.rejected(), 0);
}

/// DestinationRule `loadBalancer.backendUtilization`: Envoy weighs
/// reviews' endpoints by the ORCA load reports of their responses
/// (`endpoint-load-metrics`): v1 reports utilization 0.9, v2 and v3 0.1,
/// so once the weights are in v1 gets about 1 request in 19 (weights
/// qps/utilization: 11 against 100 each), not the 1 in 3 of round robin.
#[test]
fn backend_utilization_weighs_endpoints_by_their_load_reports() {
    let mesh = Mesh::start(true, &[]);
    let envoy = mesh.sidecar();
    mesh.apply(
        &[&envoy],
        "dr.yaml",
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      backendUtilization: {weightStabilizationPeriod: 0s, weightUpdatePeriod: 0.1s}
",
    );
    let url = format!("{REVIEWS}/load/v1");
    // Reports from every endpoint, then a weight update.
    let warm = tally(&url, "reviews", &[], 30);
    assert_eq!(warm.values().sum::<usize>(), 30, "{warm:?}");
    std::thread::sleep(Duration::from_millis(300));
    let n = 200;
    let counts = tally(&url, "reviews", &[], n);
    let busy = counts.get("reviews v1").copied().unwrap_or(0);
    assert_eq!(counts.values().sum::<usize>(), n, "{counts:?}");
    // Expected ~10 of 200; round robin would give ~67.
    assert!(
        busy <= 30,
        "the loaded endpoint got {busy} of {n}: {counts:?}"
    );
    assert!(counts.len() == 3, "every endpoint still served: {counts:?}");
    assert_eq!(envoy.rejected(), 0);
}

/// A `sticky` Service (10.96.0.72) over the three reviews pods with
/// `labels` (YAML flow map entries), and each pod's EndpointSlice
/// `conditions` (`ready` / `serving` / `terminating`).
fn sticky_service(labels: &str, conditions: [&str; 3]) -> String {
    let endpoints: Vec<String> = ["127.0.1.4", "127.0.1.5", "127.0.1.6"]
        .iter()
        .zip(conditions)
        .map(|(ip, c)| format!("{{addresses: [{ip}], conditions: {{{c}}}}}"))
        .collect();
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: sticky, namespace: default, labels: {{{labels}}}}}
spec:
  clusterIP: 10.96.0.72
  ports: [{{name: http, port: 9080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: sticky-1, namespace: default, labels: {{kubernetes.io/service-name: sticky}}}}
addressType: IPv4
ports: [{{name: http, port: 9080}}]
endpoints: [{}]
",
        endpoints.join(", ")
    )
}

const STICKY: &str = "http://10.96.0.72:9080/";
const READY: &str = "ready: true";

/// The versions of `n` answers from `sticky` to requests with `headers`.
fn sticky_versions(headers: &[(&str, &str)], n: usize) -> BTreeMap<String, usize> {
    tally(STICKY, "sticky", headers, n)
}

/// Istio's persistent sessions (`istio.io/persistent-session` on the
/// Service): the sidecar answers a request without a session with the
/// cookie naming the endpoint that served it, and sends every request
/// carrying that cookie there, where the load balancer alone spreads them.
/// When that pod starts shutting down (its endpoint not ready, still
/// serving and terminating), the session keeps reaching it while new
/// requests go to the others: Envoy has it as a DRAINING host.
#[test]
fn a_persistent_session_keeps_to_its_endpoint_even_while_it_drains() {
    let mesh = Mesh::start(true, &[]);
    let envoy = mesh.sidecar();
    let labels = "istio.io/persistent-session: sticky-session";
    mesh.apply(
        &[&envoy],
        "sticky.yaml",
        &sticky_service(labels, [READY; 3]),
    );
    // Without a session the requests spread, each answer starting one.
    let spread = sticky_versions(&[], 30);
    assert!(spread.len() > 1, "{spread:?}");
    let first = http_request(STICKY, &[("host", "sticky")]).unwrap();
    let set_cookie = first.headers.get("set-cookie").expect("a session cookie");
    let (cookie, attributes) = set_cookie.split_once(';').unwrap_or((set_cookie, ""));
    assert!(cookie.starts_with("sticky-session="), "{set_cookie}");
    assert!(attributes.contains("Path=/"), "{set_cookie}");
    let session = [("cookie", cookie)];
    assert_eq!(
        sticky_versions(&session, 30),
        BTreeMap::from([(first.body.clone(), 30)]),
        "the session moved"
    );
    // The session's pod shuts down.
    let pinned = ["reviews v1", "reviews v2", "reviews v3"]
        .iter()
        .position(|v| *v == first.body)
        .unwrap();
    let mut conditions = [READY; 3];
    conditions[pinned] = "ready: false, serving: true, terminating: true";
    mesh.apply(
        &[&envoy],
        "sticky.yaml",
        &sticky_service(labels, conditions),
    );
    let cluster = "outbound|9080||sticky.default.svc.cluster.local";
    let ip = format!("127.0.1.{}", 4 + pinned);
    envoy.wait_for(Duration::from_secs(10), "a draining host", |e| {
        e.admin("/clusters").unwrap_or_default().lines().any(|l| {
            l.starts_with(&format!("{cluster}::{ip}:9080::health_flags::"))
                && l.contains("eds_status_draining")
        })
    });
    assert_eq!(
        sticky_versions(&session, 20),
        BTreeMap::from([(first.body.clone(), 20)]),
        "the session left its draining endpoint"
    );
    let fresh = sticky_versions(&[], 30);
    assert!(
        !fresh.contains_key(&first.body) && fresh.len() == 2,
        "new requests reached the draining endpoint: {fresh:?}"
    );
    assert_eq!(envoy.rejected(), 0);
}

/// The header form (`istio.io/persistent-session-header`): the session
/// travels in the named header, which the sidecar adds to the answer and
/// the client sends back; without the label the header is neither set nor
/// obeyed.
#[test]
fn a_header_session_keeps_to_its_endpoint() {
    let mesh = Mesh::start(true, &[]);
    let envoy = mesh.sidecar();
    mesh.apply(
        &[&envoy],
        "sticky.yaml",
        &sticky_service("istio.io/persistent-session-header: x-session", [READY; 3]),
    );
    let first = http_request(STICKY, &[("host", "sticky")]).unwrap();
    let session = first.headers.get("x-session").expect("a session header");
    assert_eq!(
        sticky_versions(&[("x-session", session)], 30),
        BTreeMap::from([(first.body.clone(), 30)]),
        "the session moved"
    );
    mesh.apply(
        &[&envoy],
        "sticky.yaml",
        &sticky_service("app: sticky", [READY; 3]),
    );
    let plain = http_request(STICKY, &[("host", "sticky")]).unwrap();
    assert!(!plain.headers.contains_key("x-session"), "{plain:?}");
    let spread = sticky_versions(&[("x-session", session)], 30);
    assert!(
        spread.len() > 1,
        "a header without the label still pinned: {spread:?}"
    );
    assert_eq!(envoy.rejected(), 0);
}
