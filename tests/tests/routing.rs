//! HTTP routing features on a real Envoy, from one VirtualService with a
//! delegate: rewrite, redirect, direct response, CORS, response headers,
//! case-insensitive paths, per-route statistics, query and without-header
//! matches, and paths normalised before they are matched.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use e2e::{Mesh, http_request, mesh_config};

const REVIEWS: &str = "http://10.96.0.13:9080";

const CONFIG: &str = r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /old/}}]
    rewrite: {uri: /new/}
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{uri: {exact: /moved}}]
    redirect: {uri: /elsewhere, authority: reviews.example.com, redirectCode: 308}
  - match: [{uri: {exact: /teapot}}]
    directResponse: {status: 418, body: {string: "short and stout"}}
  - match: [{uri: {exact: /large}}]
    directResponse: {status: 200, body: {string: "LARGE_BODY"}}
  - match: [{uri: {exact: /bytes}}]
    directResponse: {status: 200, body: {bytes: "aGVsbG8sIGJ5dGVz"}}
  - match: [{uri: {prefix: /api/}}]
    delegate: {name: reviews-api}
  - match: [{uri: {exact: /case}, ignoreUriCase: true, statPrefix: case-route}]
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{queryParams: {variant: {exact: "3"}}, withoutHeaders: {x-legacy: {exact: "1"}}}]
    route: [{destination: {host: reviews, subset: v3}}]
  - corsPolicy:
      allowOrigins: [{exact: "https://shop.example.com"}]
      allowMethods: [GET]
    headers:
      response:
        set: {x-routed-by: istiod-rs}
    route: [{destination: {host: reviews, subset: v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-api}
spec:
  http:
  - match: [{uri: {prefix: /api/v2}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v3}}]
"#;

#[test]
fn one_virtual_service_exercises_istio_http_routing() {
    let mesh = Mesh::start(true, &[]);
    let envoy = mesh.sidecar();
    // A body over Envoy's default limit (4096 bytes): the route
    // configuration allows Istio's 1 MiB, or Envoy refuses all of it.
    let large = "x".repeat(6000);
    mesh.apply(
        &[&envoy],
        "reviews.yaml",
        &CONFIG.replace("LARGE_BODY", &large),
    );
    let get = |path: &str, headers: &[(&str, &str)]| {
        let mut h = vec![("host", "reviews")];
        h.extend_from_slice(headers);
        http_request(&format!("{REVIEWS}{path}"), &h).unwrap()
    };

    // rewrite: the backend sees the new prefix.
    let r = get("/old/page", &[]);
    assert_eq!((r.status, r.body.as_str()), (200, "reviews v1"));
    assert_eq!(
        mesh.seen("/new/page").len(),
        1,
        "rewritten path reaches the backend"
    );
    assert!(mesh.seen("/old/").is_empty());

    // redirect.
    let r = get("/moved", &[]);
    assert_eq!(r.status, 308);
    assert_eq!(
        r.headers.get("location").map(String::as_str),
        Some("http://reviews.example.com/elsewhere")
    );

    // directResponse.
    let r = get("/teapot", &[]);
    assert_eq!((r.status, r.body.as_str()), (418, "short and stout"));
    let r = get("/large", &[]);
    assert_eq!((r.status, r.body.len()), (200, large.len()));
    let r = get("/bytes", &[]);
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "hello, bytes"),
        "decoded"
    );
    // Paths are normalised before routing (Istio's `normalize_path`):
    // `/x/../teapot` is `/teapot`.
    let r = get("/x/../teapot", &[]);
    assert_eq!((r.status, r.body.as_str()), (418, "short and stout"));
    assert_eq!(
        get("//teapot", &[]).body,
        "reviews v1",
        "slashes not merged"
    );

    // delegate: the child's routes, under the parent's /api/ match.
    assert_eq!(get("/api/v2/x", &[]).body, "reviews v2");
    assert_eq!(get("/api/other", &[]).body, "reviews v3");

    // ignoreUriCase.
    assert_eq!(get("/CaSe", &[]).body, "reviews v2");
    // statPrefix: that route's own statistics.
    let stats = envoy.stats();
    let per_route: Vec<_> = stats
        .iter()
        .filter(|(k, _)| k.ends_with(".route.case-route.upstream_rq_total"))
        .collect();
    assert_eq!(per_route.len(), 1, "{per_route:?}");
    assert_eq!(per_route[0].1, "1");

    // queryParams + withoutHeaders.
    assert_eq!(get("/q?variant=3", &[]).body, "reviews v3");
    assert_eq!(get("/q?variant=3", &[("x-legacy", "1")]).body, "reviews v1");

    // CORS and response headers on the catch-all route.
    let r = get("/", &[("origin", "https://shop.example.com")]);
    assert_eq!(r.body, "reviews v1");
    assert_eq!(
        r.headers
            .get("access-control-allow-origin")
            .map(String::as_str),
        Some("https://shop.example.com")
    );
    assert_eq!(
        r.headers.get("x-routed-by").map(String::as_str),
        Some("istiod-rs")
    );
    let r = get("/", &[("origin", "https://evil.example.com")]);
    assert_eq!(r.headers.get("access-control-allow-origin"), None);

    // `Expect: 100-continue` reaches the app, which decides (Istio's
    // `proxy_100_continue`; otherwise Envoy answers it and drops the header).
    let r = get("/header/expect", &[("expect", "100-continue")]);
    assert_eq!((r.status, r.body.as_str()), (200, "100-continue"));
    // The app learns which attempt it serves (Istio's
    // `include_request_attempt_count` on every virtual host).
    assert_eq!(get("/header/x-envoy-attempt-count", &[]).body, "1");

    // The mesh config's pathNormalization: MERGE_SLASHES merges `//`;
    // NONE routes the path as it came.
    let mesh_config = |normalization: &str| {
        mesh_config(&format!(
            "pathNormalization: {{normalization: {normalization}}}"
        ))
    };
    mesh.apply(&[&envoy], "mesh.yaml", &mesh_config("MERGE_SLASHES"));
    assert_eq!(get("//teapot", &[]).status, 418);
    mesh.apply(&[&envoy], "mesh.yaml", &mesh_config("NONE"));
    assert_eq!(get("/x/../teapot", &[]).body, "reviews v1");
    assert_eq!(envoy.rejected(), 0);
}

#[test]
fn a_sidecar_resource_limits_what_the_proxy_can_reach() {
    let mesh = Mesh::start(true, &[]);
    let envoy = mesh.sidecar();
    assert_eq!(
        http_request(&format!("{REVIEWS}/"), &[("host", "reviews")])
            .unwrap()
            .status,
        200
    );
    mesh.apply(
        &[&envoy],
        "sidecar.yaml",
        "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  egress: [{hosts: [\"./ratings.default.svc.cluster.local\"]}]
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
",
    );
    let ratings = http_request("http://10.96.0.12:9080/", &[("host", "ratings")]).unwrap();
    assert_eq!((ratings.status, ratings.body.as_str()), (200, "ratings v1"));
    // reviews is out of scope: no route, no cluster, and under the Sidecar's
    // REGISTRY_ONLY Istio's 502.
    let reviews = http_request(&format!("{REVIEWS}/"), &[("host", "reviews")]).unwrap();
    assert_eq!(reviews.status, 502, "{reviews:?}");
    let clusters = envoy.admin("/clusters").unwrap();
    assert!(!clusters.contains("outbound|9080||reviews.default.svc.cluster.local"));

    // An egress listener for port 9080 with ratings only, and a catch-all
    // for the namespace: reviews is imported (its cluster is there) but
    // port 9080 routes ratings alone.
    mesh.apply(
        &[&envoy],
        "sidecar.yaml",
        "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  egress:
  - {port: {number: 9080, protocol: HTTP, name: http}, hosts: [\"./ratings.default.svc.cluster.local\"]}
  - {hosts: [\"./*\"]}
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
",
    );
    let ratings = http_request("http://10.96.0.12:9080/", &[("host", "ratings")]).unwrap();
    assert_eq!((ratings.status, ratings.body.as_str()), (200, "ratings v1"));
    let reviews = http_request(&format!("{REVIEWS}/"), &[("host", "reviews")]).unwrap();
    assert_eq!(reviews.status, 502, "{reviews:?}");
    let clusters = envoy.admin("/clusters").unwrap();
    assert!(clusters.contains("outbound|9080||reviews.default.svc.cluster.local"));
    assert_eq!(envoy.rejected(), 0);
}

/// A Sidecar egress listener with `captureMode: NONE` (Istio's sidecar
/// without iptables): no capture at all, the app calls the sidecar on
/// `127.0.0.1:9080` itself and its routes take it to reviews; with a
/// `bind` the listener is there instead.
#[test]
fn an_egress_listener_without_capture_is_called_directly() {
    let mesh = Mesh::start(false, &[]);
    let envoy = mesh.sidecar();
    let egress = |more: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: no-iptables, namespace: default}}
spec:
  egress:
  - port: {{number: 9080, protocol: HTTP, name: http}}
    captureMode: NONE
    hosts: [\"./*\"]{more}
  - hosts: [\"istio-system/*\"]
"
        )
    };
    mesh.apply(&[&envoy], "sidecar.yaml", &egress(""));
    let reviews = http_request("http://127.0.0.1:9080/", &[("host", "reviews")]).unwrap();
    assert_eq!(reviews.status, 200, "{reviews:?}");
    assert!(reviews.body.starts_with("reviews v"), "{reviews:?}");
    mesh.apply(&[&envoy], "sidecar.yaml", &egress("\n    bind: 127.0.0.7"));
    let ratings = http_request("http://127.0.0.7:9080/", &[("host", "ratings")]).unwrap();
    assert_eq!((ratings.status, ratings.body.as_str()), (200, "ratings v1"));
    assert!(http_request("http://127.0.0.1:9080/", &[("host", "reviews")]).is_err());
    assert_eq!(envoy.rejected(), 0);
}

/// An HTTP/1.1 app on the unix domain socket `path`: each request on its
/// own connection, answered `uds app, host <Host header>`.
fn serve_on_socket(path: &std::path::Path) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    // Envoy, running as the proxy uid, connects to it.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(&conn);
                let mut host = String::new();
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("host")
                    {
                        host = value.trim().to_owned();
                    }
                    line.clear();
                }
                let body = format!("uds app, host {host}");
                let _ = write!(
                    &conn,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
}

/// Unix domain sockets, as Istio programs them (Envoy's `Pipe`
/// addresses): a ServiceEntry endpoint `unix://PATH` (an app on a socket
/// of the proxy's host, `resolution: STATIC`), a Sidecar egress listener
/// bound to `unix://PATH` (the app calls the sidecar on a socket, and its
/// routes take the call on), and a Sidecar ingress listener whose
/// `defaultEndpoint` is the app's socket.
#[test]
fn unix_domain_sockets_are_endpoints_and_listeners() {
    let mesh = Mesh::start(false, &[]);
    let envoy = mesh.sidecar();
    let dir = e2e::socket_dir();
    let app = dir.path().join("app.sock");
    let egress = dir.path().join("egress.sock");
    serve_on_socket(&app);
    mesh.apply(
        &[&envoy],
        "uds.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: uds-app, namespace: default}}
spec:
  hosts: [uds.example.local]
  location: MESH_EXTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 'unix://{app}'}}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: uds, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: productpage}}}}
  ingress:
  - port: {{number: 9085, protocol: HTTP, name: http-uds}}
    defaultEndpoint: 'unix://{app}'
    captureMode: NONE
  egress:
  - port: {{number: 80, protocol: HTTP, name: http}}
    bind: 'unix://{egress}'
    hosts: [./uds.example.local]
  - hosts: [./*, istio-system/*]
",
            app = app.display(),
            egress = egress.display()
        ),
    );
    assert_eq!(envoy.rejected(), 0);
    // The app calls its sidecar on the egress socket; the ServiceEntry's
    // socket endpoint answers.
    let answer = e2e::get_over_socket(&egress, "uds.example.local").unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.ends_with("uds app, host uds.example.local"),
        "{answer}"
    );
    // The ingress listener on the pod address sends to the app's socket.
    let reply = http_request("http://127.0.0.1:9085/", &[("host", "productpage")]).unwrap();
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "uds app, host productpage")
    );
}

/// A Sidecar ingress listener with `captureMode: NONE`: reviews-v1's
/// sidecar listens on its pod address, port 9085, itself (no iptables
/// would hand it the traffic) and sends what comes to the app at
/// `0.0.0.0:9080`, the pod's own address.
#[test]
fn an_ingress_listener_without_capture_listens_on_the_pod_address() {
    let mesh = Mesh::start(false, &[]);
    let envoy = mesh.proxy(
        "sidecar~127.0.1.4~reviews-v1.default~default.svc.cluster.local",
        &[("app", "reviews"), ("version", "v1")],
        15000,
    );
    mesh.apply(
        &[&envoy],
        "sidecar.yaml",
        "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: reviews, namespace: default}
spec:
  workloadSelector: {labels: {app: reviews}}
  ingress:
  - port: {number: 9085, protocol: HTTP, name: http-direct}
    defaultEndpoint: 0.0.0.0:9080
    captureMode: NONE
",
    );
    let reply = http_request("http://127.0.1.4:9085/", &[]).unwrap();
    assert_eq!((reply.status, reply.body.as_str()), (200, "reviews v1"));
    assert_eq!(envoy.rejected(), 0);
}

/// A Sidecar ingress listener with `tls` (Istio's TLS termination at the
/// sidecar for clients outside the mesh): where PeerAuthentication
/// disables mTLS on the port, reviews-v1's sidecar terminates TLS with a
/// certificate from files on 9443 and sends the requests inside to the
/// app; with `MUTUAL` a client certificate from the CA is required. Once
/// the port is back under `PERMISSIVE`, the settings are ignored, as
/// Istio ignores them: TLS is no longer terminated and plaintext reaches
/// the app.
#[test]
fn a_sidecar_terminates_tls_for_clients_outside_the_mesh() {
    let pki = e2e::tls::Pki::new();
    let host = "reviews.example.com";
    let (cert, key) = pki.issue(host);
    let (client_cert, client_key) = pki.issue("client.example.com");
    pki.share();
    let mesh = Mesh::start(false, &[]);
    let envoy = mesh.proxy(
        "sidecar~127.0.1.4~reviews-v1.default~default.svc.cluster.local",
        &[("app", "reviews"), ("version", "v1")],
        15000,
    );
    let config = |mode: &str, peer: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: reviews, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: reviews}}}}
  ingress:
  - port: {{number: 9443, protocol: HTTPS, name: https}}
    defaultEndpoint: 0.0.0.0:9080
    captureMode: NONE
    tls: {{mode: {mode}, serverCertificate: {}, privateKey: {}, caCertificates: {}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: reviews, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  portLevelMtls: {{9443: {{mode: {peer}}}}}
",
            cert.display(),
            key.display(),
            pki.ca().display()
        )
    };
    let get = |client: Option<(&std::path::Path, &std::path::Path)>| {
        e2e::tls::curl(&pki.ca(), (host, "127.0.1.4"), 9443, "/", client)
    };
    mesh.apply(&[&envoy], "sidecar.yaml", &config("SIMPLE", "DISABLE"));
    assert_eq!(get(None), Ok("reviews v1".into()));
    assert!(
        http_request("http://127.0.1.4:9443/", &[]).is_err(),
        "TLS only"
    );

    mesh.apply(&[&envoy], "sidecar.yaml", &config("MUTUAL", "DISABLE"));
    assert!(get(None).is_err(), "MUTUAL needs a client certificate");
    assert_eq!(
        get(Some((&client_cert, &client_key))),
        Ok("reviews v1".into())
    );

    mesh.apply(&[&envoy], "sidecar.yaml", &config("SIMPLE", "PERMISSIVE"));
    assert!(get(None).is_err(), "the sidecar's TLS settings are ignored");
    let plain = http_request("http://127.0.1.4:9443/", &[]).unwrap();
    assert_eq!((plain.status, plain.body.as_str()), (200, "reviews v1"));
    assert_eq!(envoy.rejected(), 0);
}

/// A folder for access log files: Envoy runs as the proxy user, so it is
/// writable by everyone.
fn log_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// The mesh config's `accessLogFile`: every request through the sidecar is
/// a line in Istio's default format (method, path, status, the cluster it
/// went to), or a JSON object with `accessLogEncoding: JSON`.
#[test]
fn access_logs_follow_the_mesh_config() {
    let mesh = Mesh::start(true, &[]);
    let envoy = mesh.sidecar();
    let dir = log_dir();
    let log = |name: &str, encoding: &str, format: &str| {
        let path = dir.path().join(name);
        mesh.apply(
            &[&envoy],
            "mesh.yaml",
            &mesh_config(&format!(
                "accessLogFile: {}\naccessLogEncoding: {encoding}\naccessLogFormat: '{format}'",
                path.display()
            )),
        );
        path
    };
    // The first line naming `path` in `file`, within 5 s.
    let line = |file: &std::path::Path, path: &str| {
        let read = || std::fs::read_to_string(file).unwrap_or_default();
        e2e::eventually(
            std::time::Duration::from_secs(5),
            || read().lines().find(|l| l.contains(path)).map(str::to_owned),
            || {
                format!(
                    "no access log line for {path} in {}: {:?}",
                    file.display(),
                    read()
                )
            },
        )
    };
    let get =
        |path: &str| http_request(&format!("{REVIEWS}{path}"), &[("host", "reviews")]).unwrap();

    let text = log("access.log", "TEXT", "");
    assert_eq!(get("/logged/text").status, 200);
    let l = line(&text, "/logged/text");
    assert!(l.contains("\"GET /logged/text HTTP/1.1\" 200 "), "{l}");
    assert!(
        l.contains("outbound|9080||reviews.default.svc.cluster.local"),
        "{l}"
    );

    let json = log("access.json", "JSON", "");
    assert_eq!(get("/logged/json").status, 200);
    let l: serde_json::Value = serde_json::from_str(&line(&json, "/logged/json")).unwrap();
    assert_eq!(l["method"], "GET");
    assert_eq!(l["path"], "/logged/json");
    assert_eq!(l["response_code"], 200);
    assert_eq!(
        l["upstream_cluster"],
        "outbound|9080||reviews.default.svc.cluster.local"
    );

    // A format of its own, with the operator that needs a formatter
    // extension (the daemon configures it beside the format, as Istio).
    let custom = log(
        "custom.log",
        "TEXT",
        "custom %REQ_WITHOUT_QUERY(:PATH)% %RESPONSE_CODE%",
    );
    assert_eq!(get("/logged/custom?token=secret").status, 200);
    assert_eq!(line(&custom, "/logged/custom"), "custom /logged/custom 200");
    // One Envoy would refuse is reported by the daemon, and Istio's
    // default line is written instead: no proxy NACKs it.
    let refused = log("refused.log", "TEXT", "%BOGUS% %RESPONSE_CODE%");
    assert_eq!(get("/logged/refused").status, 200);
    let l = line(&refused, "/logged/refused");
    assert!(l.contains("\"GET /logged/refused HTTP/1.1\" 200 "), "{l}");
    let reported = mesh.daemon.snapshots.borrow().warnings.iter().any(|w| {
        let w = w.to_string();
        w.contains("data.mesh.accessLogFormat") && w.contains("`%BOGUS%`")
    });
    assert!(reported, "{:?}", mesh.daemon.snapshots.borrow().warnings);
    assert_eq!(envoy.rejected(), 0);
}

/// The Telemetry API's access logging (Istio's "Envoy access logs" task
/// with a provider of its own): a mesh-wide Telemetry names an
/// `envoyFileAccessLog` provider and Istio's built-in `envoy` (the proxy's
/// stdout) with a CEL filter, so only failed requests are logged;
/// productpage's own Telemetry turns its logs off.
#[test]
fn telemetry_decides_what_the_sidecar_logs() {
    let mesh = Mesh::start(true, &[]);
    let envoy = mesh.sidecar();
    let dir = log_dir();
    let file = dir.path().join("telemetry.log");
    mesh.apply(
        &[&envoy],
        "mesh.yaml",
        &mesh_config(&format!(
            "extensionProviders:\n- name: file\n  envoyFileAccessLog:\n    path: {}\n    logFormat: {{text: 'telemetry %REQ(:PATH)% %RESPONSE_CODE%'}}",
            file.display()
        )),
    );
    let get =
        |path: &str| http_request(&format!("{REVIEWS}{path}"), &[("host", "reviews")]).unwrap();
    // Before any Telemetry: no log.
    assert_eq!(get("/status/500").status, 500);
    mesh.apply(
        &[&envoy],
        "telemetry.yaml",
        "apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  accessLogging:
  - providers: [{name: file}, {name: envoy}]
    filter: {expression: 'response.code >= 400'}
",
    );
    assert_eq!(get("/logged/ok").status, 200);
    assert_eq!(get("/status/404").status, 404);
    let read = || std::fs::read_to_string(&file).unwrap_or_default();
    let text = e2e::eventually(
        std::time::Duration::from_secs(5),
        || Some(read()).filter(|t| t.contains("/status/404")),
        || format!("no access log line for /status/404: {:?}", read()),
    );
    // Only the failed request, in the provider's format (the requests are
    // logged in order: the 200 before it was filtered out).
    assert_eq!(text, "telemetry /status/404 404\n");
    // And Istio's built-in provider: its default line on the proxy's stdout.
    e2e::eventually(
        std::time::Duration::from_secs(5),
        || {
            envoy
                .stdout()
                .contains("\"GET /status/404 HTTP/1.1\" 404 ")
                .then_some(())
        },
        || {
            format!(
                "no access log line on the proxy's stdout: {:?}",
                envoy.stdout()
            )
        },
    );
    assert!(!envoy.stdout().contains("/logged/ok"));

    // productpage's own Telemetry turns its logs off.
    mesh.apply(
        &[&envoy],
        "quiet.yaml",
        "apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: quiet, namespace: default}
spec:
  selector: {matchLabels: {app: productpage}}
  accessLogging: [{disabled: true}]
",
    );
    assert_eq!(get("/status/503").status, 503);
    // Envoy flushes its logs every 200 ms here (`--file-flush-interval-msec`).
    std::thread::sleep(std::time::Duration::from_secs(1));
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    assert_eq!(text, "telemetry /status/404 404\n");
    assert!(!envoy.stdout().contains("/status/503"));
    assert_eq!(envoy.rejected(), 0);
}

/// The mesh config's `discoverySelectors`: with a selector that `default`
/// (labelled `istio-injection: enabled`) does not match, its services
/// leave the sidecar's config and reviews is not routed; with one it
/// matches (`matchExpressions`), they are back.
#[test]
fn discovery_selectors_scope_the_mesh() {
    let mesh = Mesh::start(true, &[]);
    let envoy = mesh.sidecar();
    let reviews = || http_request(&format!("{REVIEWS}/"), &[("host", "reviews")]);
    let cluster = "outbound|9080||reviews.default.svc.cluster.local";
    assert_eq!(reviews().unwrap().status, 200);
    mesh.apply(
        &[&envoy],
        "mesh.yaml",
        &mesh_config("discoverySelectors: [{matchLabels: {istio-injection: disabled}}]"),
    );
    assert!(!envoy.admin("/clusters").unwrap().contains(cluster));
    // No listener for 9080 is left: the connection is passed through to
    // the ClusterIP (ALLOW_ANY), which nothing serves in the test's network.
    let out = reviews();
    assert!(out.is_err(), "reached reviews out of scope: {out:?}");
    mesh.apply(
        &[&envoy],
        "mesh.yaml",
        &mesh_config(
            "discoverySelectors: [{matchExpressions: [{key: istio-injection, operator: In, values: [enabled]}]}]",
        ),
    );
    assert!(envoy.admin("/clusters").unwrap().contains(cluster));
    let back = reviews().unwrap();
    assert!(
        back.status == 200 && back.body.starts_with("reviews v"),
        "{back:?}"
    );
    assert_eq!(envoy.rejected(), 0);
}

/// The mesh config's default `exportTo`: a VirtualService for reviews in
/// another namespace applies to productpage's sidecar until
/// `defaultVirtualServiceExportTo: ['.']` keeps it in its own namespace;
/// `defaultServiceExportTo: ['~']` takes every service out of sight.
#[test]
fn mesh_export_defaults_scope_what_the_sidecar_sees() {
    let mesh = Mesh::start(true, &[]);
    let envoy = mesh.sidecar();
    mesh.apply(
        &[&envoy],
        "shop.yaml",
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-tagged, namespace: shop}
spec:
  hosts: [reviews.default.svc.cluster.local]
  http:
  - headers: {response: {set: {x-routed-from: shop}}}
    route: [{destination: {host: reviews.default.svc.cluster.local}}]
",
    );
    let tag = || {
        let r = http_request(&format!("{REVIEWS}/"), &[("host", "reviews")]).unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        r.headers.get("x-routed-from").cloned()
    };
    assert_eq!(tag().as_deref(), Some("shop"));
    mesh.apply(
        &[&envoy],
        "mesh.yaml",
        &mesh_config("defaultVirtualServiceExportTo: ['.']"),
    );
    assert_eq!(tag(), None);
    mesh.apply(
        &[&envoy],
        "mesh.yaml",
        &mesh_config("defaultServiceExportTo: ['~']"),
    );
    let cluster = "outbound|9080||reviews.default.svc.cluster.local";
    assert!(!envoy.admin("/clusters").unwrap().contains(cluster));
    assert_eq!(envoy.rejected(), 0);
}

/// The Gateway API for mesh traffic (GAMMA): an HTTPRoute whose parent is
/// the `reviews` Service steers productpage's sidecar: a header match to
/// ratings, the rest split between reviews and details.
#[test]
fn an_httproute_on_a_service_routes_mesh_traffic() {
    let mesh = Mesh::start(true, &[]);
    let envoy = mesh.sidecar();
    mesh.apply(
        &[&envoy],
        "reviews-route.yaml",
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: default}
spec:
  parentRefs: [{group: '', kind: Service, name: reviews, port: 9080}]
  rules:
  - matches: [{headers: [{name: end-user, value: jason}]}]
    backendRefs: [{name: ratings, port: 9080}]
  - backendRefs:
    - {name: reviews, port: 9080, weight: 50}
    - {name: details, port: 9080, weight: 50}
",
    );
    let r = http_request(
        &format!("{REVIEWS}/"),
        &[("host", "reviews"), ("end-user", "jason")],
    )
    .unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "ratings v1"));
    let counts = e2e::tally(&format!("{REVIEWS}/"), "reviews", &[], 200);
    let details = counts.get("details v1").copied().unwrap_or(0);
    let reviews: usize = counts
        .iter()
        .filter(|(k, _)| k.starts_with("reviews v"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(details + reviews, 200, "{counts:?}");
    e2e::assert_binomial(details, 200, 0.5, "details' share");
    assert_eq!(envoy.rejected(), 0);
}

/// EnvoyFilter, as Istio's users write them: a Lua filter inserted before
/// the router of productpage's outbound connection managers (its response
/// header seen by the caller), then Envoy's local rate limit on the same
/// side (a bucket of two requests: the third is refused with 429), both
/// selected by productpage's labels; an EnvoyFilter selecting another
/// workload changes nothing.
#[test]
fn envoy_filters_patch_the_sidecar() {
    let mesh = Mesh::start(true, &[]);
    let envoy = mesh.sidecar();
    let get = || http_request(&format!("{REVIEWS}/"), &[("host", "reviews")]).unwrap();
    assert_eq!(get().headers.get("x-envoyfilter"), None);
    let patch = |selector: &str, value: &str| {
        format!(
            "apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: outbound-patch, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: {selector}}}}}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_OUTBOUND
      listener:
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
            subFilter: {{name: envoy.filters.http.router}}
    patch:
      operation: INSERT_BEFORE
      value: {value}
"
        )
    };
    let lua = "{name: envoy.filters.http.lua, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua, inlineCode: 'function envoy_on_response(h) h:headers():add(\"x-envoyfilter\", \"lua\") end'}}";
    // Selecting another workload: nothing.
    mesh.apply(&[&envoy], "envoyfilter.yaml", &patch("ratings", lua));
    assert_eq!(get().headers.get("x-envoyfilter"), None);
    // Selecting productpage: the Lua filter runs on its calls.
    mesh.apply(&[&envoy], "envoyfilter.yaml", &patch("productpage", lua));
    let r = get();
    assert_eq!(r.status, 200);
    assert!(r.body.starts_with("reviews v"), "{}", r.body);
    assert_eq!(
        r.headers.get("x-envoyfilter").map(String::as_str),
        Some("lua")
    );
    // Envoy's local rate limit instead: two requests a minute.
    let ratelimit = "{name: envoy.filters.http.local_ratelimit, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit, stat_prefix: http_local_rate_limiter, token_bucket: {max_tokens: 2, tokens_per_fill: 2, fill_interval: 60s}, filter_enabled: {runtime_key: local_rate_limit_enabled, default_value: {numerator: 100, denominator: HUNDRED}}, filter_enforced: {runtime_key: local_rate_limit_enforced, default_value: {numerator: 100, denominator: HUNDRED}}}}";
    mesh.apply(
        &[&envoy],
        "envoyfilter.yaml",
        &patch("productpage", ratelimit),
    );
    let statuses: Vec<u16> = (0..3).map(|_| get().status).collect();
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(
        get().headers.get("x-envoyfilter"),
        None,
        "the Lua patch is gone"
    );
    assert_eq!(envoy.rejected(), 0);
}
