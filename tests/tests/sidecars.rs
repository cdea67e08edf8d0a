//! Mesh mTLS between two real sidecars, as in a cluster: three "pods"
//! (network namespaces on a bridge the test creates, no route out).
//! productpage and reviews each have a node agent (certificate from the
//! daemon's CA, served over SDS) and an Envoy sidecar with `istio-init`'s
//! capture (outbound to 15001, inbound to 15006); `outsider` has neither.
//!
//! The app in productpage makes a plain HTTP call to reviews' ClusterIP;
//! the sidecars carry it over mTLS (auto mTLS: reviews' pod carries
//! `security.istio.io/tlsMode: istio`), and reviews' app sees who called in
//! `x-forwarded-client-cert`. PeerAuthentication decides what reviews'
//! inbound accepts from the outsider.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::time::{Duration, Instant};

use ca::SpiffeId;
use e2e::pods::{NODE_IP, Pod, create_pod_network, serve_echo, serve_echo_at};
use e2e::{
    ConfigDir, Envoy, Reply, SYNC, http_request, isolate, start_agent_with_ttl, wait_synced,
};
use istiod::Daemon;

const REVIEWS_VIP: &str = "10.96.0.50";

/// productpage (client) and reviews (server) pods with sidecars, and their
/// Services; reviews' app is served on its pod port 9080.
const PLATFORM: &str = "
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  clusterIP: 10.96.0.50
  ports: [{name: http, port: 9080}, {name: http-ws, port: 9090}]
---
apiVersion: v1
kind: Pod
metadata:
  name: reviews-0
  namespace: default
  labels: {app: reviews, security.istio.io/tlsMode: istio}
spec: {serviceAccountName: reviews, containers: [{name: reviews, image: reviews}]}
status: {podIP: 10.244.0.12}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: reviews-1, namespace: default, labels: {kubernetes.io/service-name: reviews}}
addressType: IPv4
ports: [{name: http, port: 9080}, {name: http-ws, port: 9090}]
endpoints: [{addresses: [10.244.0.12], targetRef: {kind: Pod, name: reviews-0, namespace: default}}]
---
apiVersion: v1
kind: Pod
metadata:
  name: productpage-0
  namespace: default
  labels: {app: productpage, security.istio.io/tlsMode: istio}
spec: {serviceAccountName: productpage, containers: [{name: productpage, image: productpage}]}
status: {podIP: 10.244.0.11}
---
apiVersion: v1
kind: Service
metadata: {name: details, namespace: default}
spec:
  clusterIP: 10.96.0.51
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Pod
metadata:
  name: details-0
  namespace: default
  labels: {app: details, security.istio.io/tlsMode: istio}
spec: {serviceAccountName: details, containers: [{name: details, image: details}]}
status: {podIP: 10.244.0.14}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: details-1, namespace: default, labels: {kubernetes.io/service-name: details}}
addressType: IPv4
ports: [{name: http, port: 9080}]
endpoints: [{addresses: [10.244.0.14], targetRef: {kind: Pod, name: details-0, namespace: default}}]
";

/// `default/<sa>`'s identity in `trust_domain`.
fn id_in(trust_domain: &str, sa: &str) -> SpiffeId {
    SpiffeId {
        trust_domain: trust_domain.into(),
        namespace: "default".into(),
        service_account: sa.into(),
    }
}

/// A WebSocket server of `pod` on its port 9090, in the raw: it answers
/// an HTTP/1.1 `Upgrade: websocket` request with `101 Switching
/// Protocols` (the XFCC header it got in `x-xfcc`), then sends back every
/// byte it receives. Anything else gets a 400.
fn serve_websocket_echo(pod: &Pod) {
    use std::io::{Read, Write};
    let listener = pod.run(|| std::net::TcpListener::bind("0.0.0.0:9090").unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let head = read_head(&mut conn);
                let header = |name: &str| {
                    head.lines()
                        .filter_map(|l| l.split_once(':'))
                        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.trim().to_owned())
                };
                if !header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
                    let _ =
                        conn.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
                    return;
                }
                let xfcc = header("x-forwarded-client-cert").unwrap_or_default();
                let reply = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nx-xfcc: {xfcc}\r\n\r\n"
                );
                if conn.write_all(reply.as_bytes()).is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = conn.read(&mut buf) {
                    if conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// An HTTP/1.1 message head, read a byte at a time up to its blank line
/// (so that nothing after it is consumed).
fn read_head(conn: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

struct PodMesh {
    cfg: ConfigDir,
    daemon: Daemon,
    client: Pod,
    server: Pod,
    outsider: Pod,
    client_envoy: Envoy,
    server_envoy: Envoy,
    rt_handle: tokio::runtime::Handle,
    // Dropped last: stops the daemon's, agents' and app's tasks.
    _rt: tokio::runtime::Runtime,
}

impl PodMesh {
    /// Pods, daemon, agents (certificates living `ttl`), sidecars, and
    /// reviews' app, all in sync.
    fn start(ttl: Duration) -> PodMesh {
        PodMesh::start_in(ttl, "cluster.local")
    }

    /// As [`PodMesh::start`], the CA issuing in `trust_domain`
    /// (`--trust-domain`).
    fn start_in(ttl: Duration, trust_domain: &str) -> PodMesh {
        let _hosts = isolate();
        create_pod_network();
        let client = Pod::create("productpage-0", "10.244.0.11");
        let server = Pod::create("reviews-0", "10.244.0.12");
        let outsider = Pod::create("outsider", "10.244.0.13");
        client.capture();
        server.capture();

        let cfg = ConfigDir::empty();
        cfg.write("platform.yaml", PLATFORM);
        let rt = e2e::runtime();
        let daemon = rt.block_on(e2e::start_daemon_in(
            cfg.path(),
            format!("{NODE_IP}:0").parse().unwrap(),
            trust_domain,
        ));

        serve_echo(&server, rt.handle());
        serve_websocket_echo(&server);

        let sidecar = |pod: &Pod, sa: &str| {
            let socket = start_agent_with_ttl(rt.handle(), &daemon, id_in(trust_domain, sa), ttl);
            let labels = [("app", sa), ("security.istio.io/tlsMode", "istio")];
            // As Istio's agent names the workload (the injector's
            // `ISTIO_META_WORKLOAD_NAME`).
            pod.start_sidecar_with(&socket, &labels, &[("WORKLOAD_NAME", sa)], daemon.xds_addr)
        };
        let client_envoy = sidecar(&client, "productpage");
        let server_envoy = sidecar(&server, "reviews");
        wait_synced(&daemon, &[&client_envoy, &server_envoy], SYNC);
        PodMesh {
            cfg,
            daemon,
            client,
            server,
            outsider,
            client_envoy,
            server_envoy,
            rt_handle: rt.handle().clone(),
            _rt: rt,
        }
    }

    /// The client app's plain call to reviews' ClusterIP.
    fn call_reviews(&self) -> Result<Reply, String> {
        let url = format!("http://{REVIEWS_VIP}:9080/reviews/0");
        self.client.run(|| http_request(&url, &[]))
    }

    /// The outsider's plain call straight to reviews' pod.
    fn outsider_call(&self) -> Result<Reply, String> {
        let url = format!("http://{}:9080/", self.server.ip);
        self.outsider.run(|| http_request(&url, &[]))
    }

    /// Writes a config file and waits until both sidecars have it.
    fn apply(&self, file: &str, text: &str) {
        e2e::apply(
            &self.daemon,
            &[&self.client_envoy, &self.server_envoy],
            || self.cfg.write(file, text),
        );
    }
}

const SERVER_HANDSHAKES: &str = "listener.0.0.0.0_15006.ssl.handshake";
const CLIENT_HANDSHAKES: &str =
    "cluster.outbound|9080||reviews.default.svc.cluster.local.ssl.handshake";

/// The certificate reviews' sidecar presents on its pod port, as
/// `openssl s_client` (in the outsider pod, offering Istio's ALPN) sees it:
/// its URI SANs, and whether it verifies against the daemon's root.
fn presented_certificate(mesh: &PodMesh) -> (Vec<String>, bool, String) {
    let connect = format!("{}:9080", mesh.server.ip);
    let out = mesh.outsider.run(|| {
        std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &connect,
                "-alpn",
                "istio",
                "-showcerts",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl s_client (see scripts/setup)")
    });
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let first = pem::parse_many(text.as_bytes())
        .unwrap()
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no certificate from reviews' sidecar:\n{text}"));
    let (_, cert) = x509_parser::parse_x509_certificate(first.contents()).unwrap();
    let sans = cert
        .subject_alternative_name()
        .unwrap()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let root_pem = mesh
        .daemon
        .secure
        .as_ref()
        .unwrap()
        .authority
        .root_pem()
        .to_owned();
    let root_der = pem::parse(root_pem.as_bytes()).unwrap();
    let (_, root) = x509_parser::parse_x509_certificate(root_der.contents()).unwrap();
    let verified = cert.verify_signature(Some(root.public_key())).is_ok();
    (sans, verified, cert.raw_serial_as_string())
}

#[test]
fn sidecars_speak_mutual_tls_and_peer_authentication_decides_plaintext() {
    let mesh = PodMesh::start(Duration::from_secs(3600));

    // The app's plain call arrives over mTLS: reviews' app sees the
    // caller's SPIFFE ID, added by its sidecar.
    let reply = mesh.call_reviews().unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        reply
            .body
            .contains("By=spiffe://cluster.local/ns/default/sa/reviews"),
        "{}",
        reply.body
    );
    assert!(
        reply
            .body
            .contains("URI=spiffe://cluster.local/ns/default/sa/productpage"),
        "{}",
        reply.body
    );
    // The sidecar reaches its app from Istio's inbound source address.
    assert!(reply.body.contains("peer=127.0.0.6"), "{}", reply.body);
    // TLS on the wire: both ends counted a handshake.
    assert!(mesh.client_envoy.stat(CLIENT_HANDSHAKES) >= 1);
    assert!(mesh.server_envoy.stat(SERVER_HANDSHAKES) >= 1);

    // What reviews' pod port presents: its SPIFFE ID, from the daemon's root.
    let (sans, verified, _) = presented_certificate(&mesh);
    assert_eq!(sans, vec!["spiffe://cluster.local/ns/default/sa/reviews"]);
    assert!(verified, "not signed by the daemon's root");

    // PERMISSIVE (the default): a plaintext caller from outside the mesh
    // gets through, without a client identity.
    let reply = mesh.outsider_call().unwrap();
    assert_eq!(reply.status, 200);
    assert!(reply.body.contains("xfcc=\n"), "{}", reply.body);

    // STRICT for the namespace: the plaintext caller fails, mTLS works.
    mesh.apply(
        "strict.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: default}\nspec: {mtls: {mode: STRICT}}\n",
    );
    let refused = mesh.outsider_call();
    assert!(
        refused.is_err(),
        "plaintext got through STRICT: {refused:?}"
    );
    let reply = mesh.call_reviews().unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.contains("URI=spiffe://"), "{}", reply.body);

    // A port-level exception for the workload: 9080 PERMISSIVE again.
    mesh.apply(
        "reviews-port.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: reviews, namespace: default}\nspec: {selector: {matchLabels: {app: reviews}}, portLevelMtls: {9080: {mode: PERMISSIVE}}}\n",
    );
    assert_eq!(mesh.outsider_call().unwrap().status, 200);
    assert_eq!(mesh.call_reviews().unwrap().status, 200);

    // DISABLE for the workload: the client's auto mTLS turns to plaintext.
    mesh.apply(
        "reviews-port.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: reviews, namespace: default}\nspec: {selector: {matchLabels: {app: reviews}}, mtls: {mode: DISABLE}}\n",
    );
    let reply = mesh.call_reviews().unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.contains("xfcc=\n"), "{}", reply.body);
}

/// A TCP echo on `port` of `pod` (one line back per connection).
fn serve_tcp_echo(pod: &Pod, port: u16) {
    let listener = pod.run(|| std::net::TcpListener::bind(("0.0.0.0", port)).unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                use std::io::{BufRead, Write};
                let mut line = String::new();
                let mut reader = std::io::BufReader::new(&conn);
                if reader.read_line(&mut line).is_ok() {
                    let _ = (&conn).write_all(line.as_bytes());
                }
            });
        }
    });
}

/// Sends one line to `addr` from `pod`; the line echoed back, or why not.
fn tcp_echo(pod: &Pod, addr: &str) -> Result<String, String> {
    use std::io::{BufRead, Write};
    pod.run(|| {
        let conn = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        (&conn).write_all(b"ping\n").map_err(|e| e.to_string())?;
        let mut line = String::new();
        std::io::BufReader::new(&conn)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        if line.is_empty() {
            Err("closed".into())
        } else {
            Ok(line)
        }
    })
}

/// `attempt` until `done` says its result is the one expected, at most
/// five times 200 ms apart (a connection opened before a listener update
/// serves one more request on the chain it replaced); the last result.
fn settled<T>(attempt: impl Fn() -> T, done: impl Fn(&T) -> bool) -> T {
    let mut last = attempt();
    for _ in 0..5 {
        if done(&last) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        last = attempt();
    }
    last
}

/// AuthorizationPolicies on reviews, enforced by its sidecar: Istio's
/// `ALLOW` by peer identity, method and path (mTLS gives the identity;
/// the plaintext outsider has none), a source address and port for plain
/// TCP, a `DENY` on a request header checked before it, and everything
/// open again once they are gone.
#[test]
fn authorization_policies_decide_who_reaches_reviews() {
    let mesh = PodMesh::start(Duration::from_secs(3600));
    serve_tcp_echo(&mesh.server, 7070);
    let reviews_tcp = format!("{}:7070", mesh.server.ip);
    let call = |path: &str, headers: &[(&str, &str)]| {
        let url = format!("http://{REVIEWS_VIP}:9080{path}");
        mesh.client.run(|| http_request(&url, headers)).unwrap()
    };
    // Open: no policy.
    assert_eq!(mesh.call_reviews().unwrap().status, 200);
    assert_eq!(mesh.outsider_call().unwrap().status, 200);
    assert_eq!(tcp_echo(&mesh.outsider, &reviews_tcp), Ok("ping\n".into()));

    mesh.apply(
        "authz.yaml",
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-viewer, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/productpage]}}]
    to: [{operation: {methods: [GET], paths: ['/reviews/*']}}]
  - from: [{source: {ipBlocks: [10.244.0.13/32]}}]
    to: [{operation: {ports: ['7070']}}]
",
    );
    // productpage, by its SPIFFE ID over mTLS, on the allowed paths only
    // (once its pooled connection to reviews, on the chain the update
    // replaced, has drained: one request, as Envoy answers it with a
    // GOAWAY).
    let denied = settled(|| call("/ratings/0", &[]), |r| r.status == 403);
    assert_eq!(denied.status, 403, "{denied:?}");
    assert_eq!(mesh.call_reviews().unwrap().status, 200);
    assert_eq!(denied.body, "RBAC: access denied");
    // The outsider has no identity: its HTTP call is refused; its plain
    // TCP to 7070 is allowed by address and port.
    let outsider = mesh.outsider_call().unwrap();
    assert_eq!(outsider.status, 403, "{outsider:?}");
    assert_eq!(tcp_echo(&mesh.outsider, &reviews_tcp), Ok("ping\n".into()));
    assert!(
        mesh.server_envoy
            .stat("http.inbound_0.0.0.0_9080.rbac.denied")
            >= 2
    );

    // A namespace-wide DENY on a header, checked before the ALLOW.
    mesh.apply(
        "deny.yaml",
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-mallory, namespace: default}
spec:
  action: DENY
  rules:
  - when: [{key: 'request.headers[x-user]', values: [mallory]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: trial, namespace: default, annotations: {istio.io/dry-run: 'true'}}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ['/reviews/1']}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit, namespace: default}
spec:
  action: AUDIT
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: default}
spec:
  action: CUSTOM
  provider: {name: opa}
  rules:
  - to: [{operation: {paths: ['/reviews/admin*']}}]
",
    );
    let denied = settled(
        || call("/reviews/0", &[("x-user", "alice,mallory")]),
        |r| r.status == 403,
    );
    assert_eq!(denied.status, 403, "{denied:?}");
    assert_eq!(call("/reviews/0", &[("x-user", "alice")]).status, 200);
    // A dry run decides nothing, and counts what it would have refused.
    assert_eq!(call("/reviews/1", &[]).status, 200);
    assert_eq!(
        mesh.server_envoy
            .stat("http.inbound_0.0.0.0_9080.rbac.istio_dry_run_deny_.shadow_denied"),
        1
    );
    // CUSTOM without an authorizer: what it names is refused.
    assert_eq!(call("/reviews/admin", &[]).status, 403);
    // The DENY rule's header cannot be read on a TCP chain: Istio's rule
    // drops the condition there, so it refuses every connection.
    let refused = tcp_echo(&mesh.outsider, &reviews_tcp);
    assert!(refused.is_err(), "{refused:?}");

    // Gone: open again.
    mesh.apply("authz.yaml", "");
    mesh.apply("deny.yaml", "");
    assert_eq!(mesh.outsider_call().unwrap().status, 200);
    let open = settled(
        || call("/ratings/0", &[("x-user", "mallory")]),
        |r| r.status == 200,
    );
    assert_eq!(open.status, 200, "{open:?}");
    assert_eq!(tcp_echo(&mesh.outsider, &reviews_tcp), Ok("ping\n".into()));
    assert_eq!(
        mesh.client_envoy.rejected() + mesh.server_envoy.rejected(),
        0
    );
}

/// The CA issuing in `example.org` (`--trust-domain`): both sidecars
/// expect each other's identity there, and mTLS works. The mesh config
/// moving the mesh to another trust domain makes those identities
/// foreign (the client's sidecar refuses reviews' certificate) until the
/// old domain is listed in `trustDomainAliases`, as in a migration.
#[test]
fn identities_follow_the_trust_domain_and_its_aliases() {
    let mesh = PodMesh::start_in(Duration::from_secs(3600), "example.org");
    let reply = mesh.call_reviews().unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        reply
            .body
            .contains("URI=spiffe://example.org/ns/default/sa/productpage"),
        "{}",
        reply.body
    );
    mesh.apply("mesh.yaml", &e2e::mesh_config("trustDomain: new.example"));
    let refused = mesh.call_reviews().unwrap();
    assert_eq!(refused.status, 503, "{refused:?}");
    let warned = mesh.daemon.snapshots.borrow().warnings.iter().any(|w| {
        let w = w.to_string();
        w.contains("data.mesh.trustDomain") && w.contains("example.org")
    });
    assert!(warned, "{:?}", mesh.daemon.snapshots.borrow().warnings);
    mesh.apply(
        "mesh.yaml",
        &e2e::mesh_config("trustDomain: new.example\ntrustDomainAliases: [example.org]"),
    );
    let reply = mesh.call_reviews().unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    // An AuthorizationPolicy naming `cluster.local/...`, as policies are
    // usually written: that stands for the mesh's trust domain and its
    // aliases, so productpage (in `example.org`) is let in, and only it.
    let allow = |sa: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  selector: {{matchLabels: {{app: reviews}}}}\n  rules: [{{from: [{{source: {{principals: [cluster.local/ns/default/sa/{sa}]}}}}]}}]\n"
        )
    };
    mesh.apply("authz.yaml", &allow("ratings"));
    let refused = settled(|| mesh.call_reviews().unwrap(), |r| r.status == 403);
    assert_eq!(refused.status, 403, "{refused:?}");
    mesh.apply("authz.yaml", &allow("productpage"));
    let reply = settled(|| mesh.call_reviews().unwrap(), |r| r.status == 200);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        mesh.client_envoy.rejected() + mesh.server_envoy.rejected(),
        0
    );
}

/// A WebSocket from productpage's app to reviews' ClusterIP: both
/// sidecars let the upgrade through (Istio's `upgrade_configs`; Envoy
/// answers 403 without it), over mTLS between them, and the connection
/// then carries bytes both ways.
/// Istio's standard metrics on real sidecars, as Istio's telemetry
/// reports them: productpage's outbound counts its calls as
/// `reporter="source"`, reviews' inbound as `reporter="destination"`, each
/// with both workloads' labels (the peer's told in headers that neither
/// app sees), the peer's SPIFFE ID, the destination service and the mTLS
/// between them; a Telemetry's overrides add a tag (a CEL expression),
/// remove one, and turn a metric off on one side.
#[test]
fn istio_metrics_count_calls_on_both_sidecars() {
    let mesh = PodMesh::start(Duration::from_secs(3600));
    for _ in 0..3 {
        let reply = mesh.call_reviews().unwrap();
        assert_eq!(reply.status, 200);
        // The workloads' headers to each other stop at the sidecars.
        assert!(reply.body.contains("\nexchange=\n"), "{}", reply.body);
        assert!(
            !reply.headers.keys().any(|h| h.starts_with("x-istio-peer")),
            "{reply:?}"
        );
    }
    let exposition = |envoy: &Envoy| envoy.admin("/stats/prometheus").unwrap();
    let reviews = "reviews.default.svc.cluster.local";
    let spiffe = |sa: &str| format!("spiffe://cluster.local/ns/default/sa/{sa}");
    let (productpage_id, reviews_id) = (spiffe("productpage"), spiffe("reviews"));
    let source = [
        ("reporter", "source"),
        ("source_workload", "productpage"),
        ("source_workload_namespace", "default"),
        ("source_app", "productpage"),
        ("source_canonical_service", "productpage"),
        ("source_canonical_revision", "latest"),
        ("source_principal", productpage_id.as_str()),
        ("destination_principal", reviews_id.as_str()),
        // Told by reviews' sidecar in its response.
        ("destination_workload", "reviews"),
        ("destination_workload_namespace", "default"),
        ("destination_app", "reviews"),
        ("destination_canonical_service", "reviews"),
        ("destination_service", reviews),
        ("destination_service_name", "reviews"),
        ("destination_service_namespace", "default"),
        ("request_protocol", "http"),
        ("response_code", "200"),
        ("response_flags", "-"),
    ];
    let destination = [
        ("reporter", "destination"),
        ("destination_workload", "reviews"),
        ("destination_app", "reviews"),
        ("destination_principal", reviews_id.as_str()),
        ("source_principal", productpage_id.as_str()),
        // Told by productpage's sidecar in its request.
        ("source_workload", "productpage"),
        ("source_workload_namespace", "default"),
        ("source_app", "productpage"),
        ("source_canonical_revision", "latest"),
        ("destination_service", reviews),
        ("connection_security_policy", "mutual_tls"),
        ("request_protocol", "http"),
        ("response_code", "200"),
    ];
    // Histograms reach the admin's exposition at Envoy's stats flush
    // (every 5 s).
    let expect = |envoy: &Envoy, name: &str, labels: &[(&str, &str)], want: f64| {
        e2e::eventually(
            Duration::from_secs(15),
            || (e2e::istio_metric(&exposition(envoy), name, labels) == Some(want)).then_some(()),
            || format!("not {want} of {name} {labels:?}:\n{}", exposition(envoy)),
        );
    };
    let (client, server) = (&mesh.client_envoy, &mesh.server_envoy);
    expect(client, "istio_requests_total", &source, 3.0);
    expect(server, "istio_requests_total", &destination, 3.0);
    expect(
        client,
        "istio_request_duration_milliseconds_count",
        &source,
        3.0,
    );
    expect(server, "istio_request_bytes_count", &destination, 3.0);
    assert!(
        e2e::istio_metric(&exposition(client), "istio_response_bytes_sum", &source)
            .is_some_and(|b| b > 0.0),
        "{}",
        exposition(client)
    );

    // Mesh-wide overrides: the request's host as a tag, no `source_app`,
    // and no durations on the client side.
    mesh.apply(
        "telemetry.yaml",
        "apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: REQUEST_COUNT}
      tagOverrides:
        request_host: {value: request.host}
        source_app: {operation: REMOVE}
    - match: {metric: REQUEST_DURATION, mode: CLIENT}
      disabled: true
",
    );
    assert_eq!(mesh.call_reviews().unwrap().status, 200);
    let with_host = [("reporter", "source"), ("request_host", "10.96.0.50:9080")];
    expect(client, "istio_requests_total", &with_host, 1.0);
    let text = exposition(client);
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("envoy_istiocustom_istio_requests_total") && l.contains("request_host=")
        })
        .unwrap();
    assert!(!line.contains("source_app="), "{line}");
    // The server's durations go on; the client's stopped at three.
    let destination_only = [("reporter", "destination")];
    expect(
        server,
        "istio_request_duration_milliseconds_count",
        &destination_only,
        4.0,
    );
    assert_eq!(
        e2e::istio_metric(
            &exposition(client),
            "istio_request_duration_milliseconds_count",
            &[("reporter", "source")]
        ),
        Some(3.0)
    );
    assert_eq!(
        mesh.client_envoy.rejected() + mesh.server_envoy.rejected(),
        0
    );
}

#[test]
fn a_websocket_crosses_both_sidecars() {
    use std::io::{Read, Write};
    let mesh = PodMesh::start(Duration::from_secs(3600));
    let (head, echoed) = mesh.client.run(|| {
        let mut conn = std::net::TcpStream::connect((REVIEWS_VIP, 9090)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        conn.write_all(
            b"GET /chat HTTP/1.1\r\nhost: reviews:9090\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
              sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .unwrap();
        let head = read_head(&mut conn);
        let mut echoed = Vec::new();
        if head.starts_with("HTTP/1.1 101") {
            for message in [&b"ping through the mesh"[..], b"and back again"] {
                conn.write_all(message).unwrap();
                let mut got = vec![0u8; message.len()];
                conn.read_exact(&mut got).unwrap();
                echoed.push(String::from_utf8(got).unwrap());
            }
        }
        (head, echoed)
    });
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(echoed, ["ping through the mesh", "and back again"]);
    // The upgrade went through reviews' sidecar over mTLS: it named the caller.
    assert!(
        head.contains("URI=spiffe://cluster.local/ns/default/sa/productpage"),
        "{head}"
    );
}

#[test]
fn certificates_rotate_without_failing_a_request() {
    // Certificates live 4 s; the agents renew every 2 s.
    let mesh = PodMesh::start(Duration::from_secs(4));
    // Strict, and a new upstream connection (handshake) per request.
    mesh.apply(
        "strict.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: default}\nspec: {mtls: {mode: STRICT}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: default}\nspec: {host: reviews, trafficPolicy: {connectionPool: {http: {maxRequestsPerConnection: 1}}}}\n",
    );
    let (_, _, first_serial) = presented_certificate(&mesh);
    let handshakes_before = mesh.server_envoy.stat(SERVER_HANDSHAKES);
    let start = Instant::now();
    let mut served = 0;
    // Three lifetimes: every certificate in use at the start has expired.
    while start.elapsed() < Duration::from_secs(12) {
        let reply = mesh.call_reviews();
        match reply {
            Ok(r) if r.status == 200 && r.body.contains("URI=spiffe://") => served += 1,
            other => panic!(
                "request {served} failed at {:?}: {other:?}",
                start.elapsed()
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (sans, verified, last_serial) = presented_certificate(&mesh);
    assert_ne!(first_serial, last_serial, "the certificate was not rotated");
    assert!(verified);
    assert_eq!(sans, vec!["spiffe://cluster.local/ns/default/sa/reviews"]);
    let handshakes = mesh.server_envoy.stat(SERVER_HANDSHAKES) - handshakes_before;
    assert!(
        handshakes >= served,
        "{handshakes} handshakes for {served} requests"
    );
}

/// A Sidecar's `ingress` (Istio's way to front an app that listens on
/// loopback only): reviews' port 9080 is sent to its app on
/// `127.0.0.1:8080`, still behind the mTLS the sidecar terminates.
#[test]
fn a_sidecar_ingress_listener_fronts_an_app_on_loopback() {
    let mesh = PodMesh::start(Duration::from_secs(3600));
    serve_echo_at(&mesh.server, "127.0.0.1:8080", &mesh.rt_handle);
    // Without it, the original destination: the app on the pod address,
    // which sees the sidecar's 127.0.0.6.
    let reply = mesh.call_reviews().unwrap();
    assert!(reply.body.contains("peer=127.0.0.6"), "{}", reply.body);

    mesh.apply(
        "ingress.yaml",
        "
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: reviews, namespace: default}
spec:
  workloadSelector: {labels: {app: reviews}}
  ingress:
  - port: {number: 9080, protocol: HTTP, name: http}
    defaultEndpoint: 127.0.0.1:8080
  - port: {number: 7000, protocol: TCP, name: tcp-admin}
    defaultEndpoint: 0.0.0.0:9080
",
    );
    let reply = mesh.call_reviews().unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body.contains("peer=127.0.0.1\n"), "{}", reply.body);
    assert!(
        reply
            .body
            .contains("URI=spiffe://cluster.local/ns/default/sa/productpage"),
        "{}",
        reply.body
    );
    // Its other service port (9090) is no longer served on its own: the
    // passthrough chains take it, to the original destination.
    let clusters = mesh
        .server_envoy
        .admin("/config_dump?resource=dynamic_active_clusters")
        .unwrap();
    assert!(clusters.contains("\"inbound|9080||\""));
    assert!(!clusters.contains("\"inbound|9090||\""));
    // `0.0.0.0:9080`: port 7000, where nothing listens, reaches the app on
    // the pod's own address, from the sidecar's 127.0.0.6.
    let url = format!("http://{}:7000/", mesh.server.ip);
    let reply = mesh.outsider.run(|| http_request(&url, &[])).unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body.contains("peer=127.0.0.6\n"), "{}", reply.body);
    assert_eq!(mesh.server_envoy.rejected(), 0);
}

#[test]
fn the_agent_subcommand_runs_a_working_sidecar() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let mesh = PodMesh::start(Duration::from_secs(3600));
    let details = Pod::create("details-0", "10.244.0.14");
    details.capture();
    serve_echo(&details, &mesh.rt_handle);

    // What the injected pod's volumes hold: the token, the mesh root, the
    // downward-API labels; the proxy user (1337) writes the rest.
    let pod_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(pod_dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let write = |name: &str, text: &str| {
        let path = pod_dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        path
    };
    let token = write(
        "istio-token",
        &e2e::service_account_token("default", "details"),
    );
    let secure = mesh.daemon.secure.as_ref().unwrap();
    let root = write("root-cert.pem", secure.authority.root_pem());
    let labels = write(
        "labels",
        "app=\"details\"\nsecurity.istio.io/tlsMode=\"istio\"\n",
    );
    let dir = pod_dir.path();
    let delta = std::env::var("XDS_PROTOCOL").is_ok_and(|p| p == "delta");
    let mut agent = details.run(|| {
        std::process::Command::new(e2e::istiod_binary())
            .arg("agent")
            .args(["--ca-addr", &format!("https://{}", secure.addr)])
            .arg("--ca-root")
            .arg(&root)
            .arg("--token-file")
            .arg(&token)
            .args(["--namespace", "default", "--service-account", "details"])
            .arg("--sds-socket")
            .arg(dir.join("socket"))
            .arg("--xds-socket")
            .arg(dir.join("XDS"))
            .arg("--wasm-cache-dir")
            .arg(dir.join("wasm"))
            .arg("--envoy")
            .arg(e2e::envoy_binary())
            .arg("--bootstrap-out")
            .arg(dir.join("envoy-rev.json"))
            .args(["--xds-addr", &mesh.daemon.xds_addr.to_string()])
            .args(["--instance-ip", &details.ip, "--pod-name", "details-0"])
            .arg("--labels-file")
            .arg(&labels)
            .args(["--delta", &delta.to_string()])
            .uid(e2e::PROXY_UID)
            .gid(e2e::PROXY_UID)
            .spawn()
            .unwrap()
    });

    // productpage's app reaches details through both sidecars, over mTLS
    // with details' agent-issued identity.
    let url = "http://10.96.0.51:9080/details/0";
    let start = Instant::now();
    let reply = loop {
        let reply = mesh.client.run(|| http_request(url, &[]));
        match reply {
            Ok(r) if r.status == 200 && r.body.contains("xfcc=By=") => break r,
            other => {
                assert!(
                    start.elapsed() < SYNC,
                    "details' sidecar never served: {other:?}"
                );
                assert!(agent.try_wait().unwrap().is_none(), "the agent exited");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    assert!(
        reply
            .body
            .contains("By=spiffe://cluster.local/ns/default/sa/details"),
        "{}",
        reply.body
    );
    assert!(
        reply
            .body
            .contains("URI=spiffe://cluster.local/ns/default/sa/productpage"),
        "{}",
        reply.body
    );

    // SIGTERM (the kubelet's): the agent stops Envoy and exits cleanly.
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = agent.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let refused = mesh.client.run(|| http_request(url, &[]));
    assert!(
        refused.as_ref().map_or(true, |r| r.status != 200),
        "details still served after its sidecar stopped: {refused:?}"
    );
}

/// A `CUSTOM` AuthorizationPolicy on a workload (Istio's external
/// authorization task, on reviews' own sidecar): its inbound asks the
/// HTTP authorizer the mesh config names (a service whose endpoint is the
/// node) before the app sees a request the rules select, and answers with
/// the authorizer's refusal.
#[test]
fn a_custom_policy_asks_the_external_authorizer_on_a_sidecars_inbound() {
    let mesh = PodMesh::start(Duration::from_secs(3600));
    let asked: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let seen = asked.clone();
    let authorizer = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push(req.uri().path().to_owned());
            if req
                .headers()
                .get("x-ext-authz")
                .is_some_and(|v| v == "allow")
            {
                (axum::http::StatusCode::OK, "allowed")
            } else {
                (
                    axum::http::StatusCode::FORBIDDEN,
                    "denied by the authorizer",
                )
            }
        }
    });
    let listener = std::net::TcpListener::bind((NODE_IP, 8000)).unwrap();
    listener.set_nonblocking(true).unwrap();
    mesh.rt_handle.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let _ = axum::serve(listener, authorizer).await;
    });
    mesh.apply(
        "ext-authz.yaml",
        &format!(
            "apiVersion: v1
kind: Service
metadata: {{name: ext-authz, namespace: default}}
spec:
  clusterIP: 10.96.0.80
  ports: [{{name: http, port: 8000}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: ext-authz-1, namespace: default, labels: {{kubernetes.io/service-name: ext-authz}}}}
addressType: IPv4
ports: [{{name: http, port: 8000}}]
endpoints: [{{addresses: [{NODE_IP}]}}]
---
{}---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ext-authz, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  action: CUSTOM
  provider: {{name: sample-ext-authz-http}}
  rules:
  - to: [{{operation: {{paths: ['/reviews/*']}}}}]
",
            e2e::mesh_config(
                "extensionProviders:
- name: sample-ext-authz-http
  envoyExtAuthzHttp:
    service: ext-authz.default.svc.cluster.local
    port: 8000
    includeRequestHeadersInCheck: [x-ext-authz]"
            )
        ),
    );
    let call = |path: &str, headers: &[(&str, &str)]| {
        let url = format!("http://{REVIEWS_VIP}:9080{path}");
        mesh.client.run(|| http_request(&url, headers)).unwrap()
    };
    let denied = settled(|| call("/reviews/1", &[]), |r| r.status == 403);
    assert_eq!(
        (denied.status, denied.body.as_str()),
        (403, "denied by the authorizer")
    );
    let allowed = call("/reviews/2", &[("x-ext-authz", "allow")]);
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    assert!(allowed.body.contains("URI=spiffe://"), "{}", allowed.body);
    // Not selected by the rules: not asked.
    assert_eq!(call("/ratings/0", &[]).status, 200);
    let asked = asked.lock().unwrap().clone();
    assert!(
        asked.iter().all(|p| p.starts_with("/reviews/")) && asked.contains(&"/reviews/2".into()),
        "{asked:?}"
    );
    assert_eq!(mesh.server_envoy.rejected(), 0);
}
