//! Egress on a real Envoy: ALLOW_ANY passes unknown destinations through,
//! REGISTRY_ONLY blocks them, and ServiceEntries (STATIC endpoints, DNS
//! resolution, and DYNAMIC_DNS resolving each request's own host) open
//! the way again. "The internet" is TEST-NET-1 inside
//! the test's own namespace; nothing leaves the machine.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::sync::Arc;
use std::time::Duration;

use e2e::tls::{Pki, TlsServer, tls_secret};
use e2e::{Mesh, add_local_address, http_request};

const EXTERNAL_IP: &str = "192.0.2.10";

/// The mesh config's `outboundTrafficPolicy: REGISTRY_ONLY`.
fn registry_only() -> String {
    e2e::mesh_config("outboundTrafficPolicy: {mode: REGISTRY_ONLY}")
}

/// An "external" HTTP server on 192.0.2.10:`port` answering `name`.
fn external_server(mesh: &Mesh, port: u16, name: &'static str) {
    external_server_at(mesh, EXTERNAL_IP, port, name);
}

/// An "external" HTTP server on `ip`:`port` answering `name`.
fn external_server_at(mesh: &Mesh, ip: &'static str, port: u16, name: &'static str) {
    mesh.block_on(async move {
        let body: Arc<str> = name.into();
        let router = axum::Router::new().fallback(move || {
            let body = body.clone();
            async move { body.to_string() }
        });
        let listener = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
    });
}

#[test]
fn registry_only_blocks_what_no_service_entry_opens() {
    let mesh = Mesh::start(true, &[]);
    add_local_address(EXTERNAL_IP);
    external_server(&mesh, 80, "api.example.com");
    external_server(&mesh, 8080, "dns.example.com");
    let envoy = mesh.sidecar();
    let get = |port: u16, host: &str| {
        http_request(&format!("http://{EXTERNAL_IP}:{port}/"), &[("host", host)])
    };

    // ALLOW_ANY (the default): unknown destinations pass through.
    let r = get(80, "api.example.com").unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "api.example.com"));

    // REGISTRY_ONLY: blocked.
    mesh.apply(&[&envoy], "mesh.yaml", &registry_only());
    let blocked = get(80, "api.example.com");
    assert!(
        blocked.is_err(),
        "TCP to an unknown destination is dropped: {blocked:?}"
    );

    // A ServiceEntry with a STATIC endpoint opens api.example.com on port 80.
    mesh.apply(&[&envoy], "se-static.yaml", API_ENTRY);
    let r = get(80, "api.example.com").unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "api.example.com"));
    // ... but only for that host: others on the same port get Istio's 502.
    assert_eq!(get(80, "other.example.com").unwrap().status, 502);

    // A DNS ServiceEntry: Envoy resolves the name itself (here from the
    // test's /etc/hosts).
    mesh.add_host(EXTERNAL_IP, "dns.example.com");
    mesh.apply(
        &[&envoy],
        "se-dns.yaml",
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dns}
spec:
  hosts: [dns.example.com]
  ports: [{number: 8080, name: http, protocol: HTTP}]
  location: MESH_EXTERNAL
  resolution: DNS
",
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let r = loop {
        let r = get(8080, "dns.example.com").unwrap();
        if r.status == 200 || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "dns.example.com"),
        "{r:?}"
    );
    assert_eq!(envoy.rejected(), 0);
}

/// The egress gateway's Service (ClusterIP 10.96.0.40, port `port` named
/// `name`), its pod at 127.0.4.1 (service account `default`) and its
/// EndpointSlice, as YAML documents ending in `---`.
fn egress_gateway_platform(name: &str, port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  clusterIP: 10.96.0.40
  ports: [{{name: {name}, port: {port}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: istio-egressgateway-1, namespace: istio-system, labels: {{istio: egressgateway}}}}
spec: {{serviceAccountName: default, containers: [{{name: istio-proxy, image: istio/proxyv2}}]}}
status: {{podIP: 127.0.4.1}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: istio-egressgateway-1, namespace: istio-system, labels: {{kubernetes.io/service-name: istio-egressgateway}}}}
addressType: IPv4
ports: [{{name: {name}, port: {port}}}]
endpoints: [{{addresses: [127.0.4.1], targetRef: {{kind: Pod, name: istio-egressgateway-1}}}}]
---
"
    )
}

/// The ServiceEntry `api`: api.example.com on port 80 at the "external"
/// 192.0.2.10, as a YAML document ending in `---`.
const API_ENTRY: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{address: 192.0.2.10}]
---
";

/// The egress gateway's proxy (admin port 15200), with its node agent
/// when the daemon runs a CA, connected and in sync.
fn egress_gateway(mesh: &Mesh) -> e2e::Envoy {
    mesh.proxy(
        "router~127.0.4.1~istio-egressgateway-1.istio-system~istio-system.svc.cluster.local",
        &[("istio", "egressgateway")],
        15200,
    )
}

/// Istio's egress gateway task: mesh traffic for an external host goes
/// through the egress gateway, which sends it out.
#[test]
fn egress_gateway_carries_mesh_traffic_out() {
    let mesh = Mesh::start(true, &[]);
    add_local_address(EXTERNAL_IP);
    external_server(&mesh, 80, "api.example.com");
    mesh.cfg.write(
        "egress.yaml",
        &(egress_gateway_platform("http", 8081)
            + API_ENTRY
            + "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: istio-egressgateway}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 8081, name: http, protocol: HTTP}
    hosts: [api.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api-through-egress-gateway}
spec:
  hosts: [api.example.com]
  gateways: [istio-egressgateway, mesh]
  http:
  - match: [{gateways: [mesh], port: 80}]
    route: [{destination: {host: istio-egressgateway.istio-system.svc.cluster.local, port: {number: 8081}}}]
  - match: [{gateways: [istio-egressgateway], port: 8081}]
    route: [{destination: {host: api.example.com, port: {number: 80}}}]
"),
    );
    assert_out_through_egress_gateway(&mesh, "istio-egressgateway");
}

/// The app's call to api.example.com, once the files are loaded: answered
/// by the external server, through the sidecar's cluster for the egress
/// gateway's Service `service` (port 8081, `istio-system`), then the
/// gateway's cluster for api.example.com.
fn assert_out_through_egress_gateway(mesh: &Mesh, service: &str) {
    mesh.wait_loaded(2);
    let sidecar = mesh.sidecar();
    let egress = egress_gateway(mesh);
    let r = http_request(
        &format!("http://{EXTERNAL_IP}/"),
        &[("host", "api.example.com")],
    )
    .unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "api.example.com"),
        "{r:?}"
    );
    assert_eq!(
        sidecar.stat(&format!(
            "cluster.outbound|8081||{service}.istio-system.svc.cluster.local.upstream_rq_200"
        )),
        1,
        "the sidecar sent the request to the egress gateway"
    );
    assert_eq!(
        egress.stat("cluster.outbound|80||api.example.com.upstream_rq_200"),
        1,
        "the egress gateway sent it out"
    );
    assert_eq!(sidecar.rejected() + egress.rejected(), 0);
}

/// The same task in Gateway API form, as Istio documents it: an HTTPRoute
/// whose parent is the `api` ServiceEntry sends the mesh's requests for
/// api.example.com to the egress Gateway's Service, and an HTTPRoute on
/// that Gateway's listener sends them out (an Istio `Hostname` backend).
#[test]
fn gateway_api_routes_mesh_traffic_out_through_an_egress_gateway() {
    let mesh = Mesh::start(true, &[]);
    add_local_address(EXTERNAL_IP);
    external_server(&mesh, 80, "api.example.com");
    mesh.cfg.write(
        "egress.yaml",
        &(egress_gateway_platform("http", 8081)
            + "apiVersion: v1
kind: Service
metadata: {name: api-egress-istio, namespace: istio-system}
spec:
  clusterIP: 10.96.0.41
  selector: {istio: egressgateway}
  ports: [{name: http, port: 8081}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-egress-istio-1, namespace: istio-system, labels: {kubernetes.io/service-name: api-egress-istio}}
addressType: IPv4
ports: [{name: http, port: 8081}]
endpoints: [{addresses: [127.0.4.1], targetRef: {kind: Pod, name: istio-egressgateway-1}}]
---
"
            + API_ENTRY
            + "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: api-egress, namespace: istio-system}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, hostname: api.example.com, port: 8081, protocol: HTTP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: direct-api-to-egress-gateway}
spec:
  parentRefs: [{kind: ServiceEntry, group: networking.istio.io, name: api}]
  rules: [{backendRefs: [{name: api-egress-istio, namespace: istio-system, port: 8081}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: forward-api-from-egress-gateway, namespace: istio-system}
spec:
  parentRefs: [{name: api-egress, sectionName: http}]
  hostnames: [api.example.com]
  rules: [{backendRefs: [{kind: Hostname, group: networking.istio.io, name: api.example.com, port: 80}]}]
"),
    );
    assert_out_through_egress_gateway(&mesh, "api-egress-istio");
}

/// An external server on 192.0.2.10:443 with api.example.com's
/// certificate from a test CA, demanding a client certificate from that
/// CA (its status page shows it); and the `client-credential` Secret, in
/// `namespace`, holding one (client.example.com) with the CA, as YAML.
fn external_mtls_server(namespace: &str) -> (TlsServer, String) {
    add_local_address(EXTERNAL_IP);
    let pki = Pki::new();
    let (server_cert, server_key) = pki.issue("api.example.com");
    let (client_cert, client_key) = pki.issue("client.example.com");
    let server = TlsServer::start_with(
        &format!("{EXTERNAL_IP}:443"),
        &server_cert,
        &server_key,
        Some(&pki.ca()),
    );
    let secret = tls_secret(
        namespace,
        "client-credential",
        &client_cert,
        &client_key,
        &pki.ca(),
    );
    (server, secret)
}

/// The app's plain HTTP call to api.example.com (captured by its sidecar).
fn call_api() -> e2e::Reply {
    http_request(
        &format!("http://{EXTERNAL_IP}/"),
        &[("host", "api.example.com")],
    )
    .unwrap()
}

/// Calls api.example.com until its status is one `wanted` takes (the
/// connection a sidecar holds lasts a request past a config change: the
/// update drains it); panics after 5 s with the statuses seen.
fn until_status(wanted: impl Fn(u16) -> bool) {
    let seen = std::cell::RefCell::new(Vec::new());
    e2e::eventually(
        Duration::from_secs(5),
        || {
            let status = call_api().status;
            seen.borrow_mut().push(status);
            wanted(status).then_some(())
        },
        || format!("{:?}", seen.borrow()),
    );
}

/// Istio's "mutual TLS origination with an egress gateway": the app calls
/// `http://api.example.com`; its sidecar carries the request to the egress
/// gateway over mesh mTLS (`ISTIO_MUTUAL`, SNI `api.example.com`), the
/// gateway terminates it with its own workload certificate (a Gateway
/// server in `ISTIO_MUTUAL`) and originates mTLS to the external server
/// with the client certificate of a `credentialName` Secret. The external
/// server (`openssl s_server`) demands that certificate and shows it.
#[test]
fn egress_gateway_originates_mutual_tls_with_a_credential_secret() {
    let mesh = Mesh::start(true, &[]);
    let (_external, secret) = external_mtls_server("istio-system");
    let gateway = |sans: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 8443, name: https, protocol: HTTPS}}
    hosts: [api.example.com]
    tls: {{mode: ISTIO_MUTUAL, subjectAltNames: [{sans}]}}
"
        )
    };
    let productpage = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage";
    mesh.cfg.write("gateway.yaml", &gateway(productpage));
    mesh.wait_loaded(2);
    mesh.cfg.write(
        "egress.yaml",
        &(egress_gateway_platform("https", 8443)
            + &secret
            + "
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}, {number: 443, name: https, protocol: HTTPS}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{address: 192.0.2.10}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: egressgateway-for-api}
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: api
    trafficPolicy:
      portLevelSettings:
      - port: {number: 8443}
        tls: {mode: ISTIO_MUTUAL, sni: api.example.com}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api-through-egress-gateway}
spec:
  hosts: [api.example.com]
  gateways: [istio-egressgateway, mesh]
  http:
  - match: [{gateways: [mesh], port: 80}]
    route: [{destination: {host: istio-egressgateway.istio-system.svc.cluster.local, subset: api, port: {number: 8443}}}]
  - match: [{gateways: [istio-egressgateway], port: 8443}]
    route: [{destination: {host: api.example.com, port: {number: 443}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: originate-mtls-for-api, namespace: istio-system}
spec:
  host: api.example.com
  trafficPolicy:
    portLevelSettings:
    - port: {number: 443}
      tls: {mode: MUTUAL, credentialName: client-credential, sni: api.example.com}
"),
    );
    mesh.wait_loaded(3);
    let sidecar = mesh.sidecar();
    let egress = egress_gateway(&mesh);

    // The external server saw the Secret's client certificate.
    let r = call_api();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        e2e::tls::first_certificate_sans(&r.body),
        ["client.example.com"]
    );
    // Both legs are TLS: sidecar to gateway, gateway to the server.
    let handshakes = [
        (
            &sidecar,
            "cluster.outbound|8443|api|istio-egressgateway.istio-system.svc.cluster.local.ssl.handshake",
        ),
        (&egress, "listener.0.0.0.0_8443.ssl.handshake"),
        (
            &egress,
            "cluster.outbound|443||api.example.com.ssl.handshake",
        ),
    ];
    for (envoy, stat) in handshakes {
        assert!(envoy.stat(stat) >= 1, "{stat}");
    }

    // The gateway's server takes only mesh clients: one without a
    // certificate from the mesh's root is refused in the handshake.
    let out = std::process::Command::new("curl")
        .args(["-sk", "--max-time", "5", "--resolve"])
        .arg("api.example.com:8443:127.0.4.1")
        .arg("https://api.example.com:8443/")
        .output()
        .expect("curl (scripts/setup installs it)");
    assert!(!out.status.success(), "a client without a mesh certificate");

    // ... and of those, only the identities its subjectAltNames name.
    mesh.apply(
        &[&sidecar, &egress],
        "gateway.yaml",
        &gateway("spiffe://cluster.local/ns/default/sa/someone-else"),
    );
    until_status(|s| s == 503);
    assert_eq!(call_api().status, 503);
    assert!(egress.stat("listener.0.0.0.0_8443.ssl.fail_verify_san") >= 1);
    mesh.apply(&[&sidecar, &egress], "gateway.yaml", &gateway(productpage));
    assert_eq!(call_api().status, 200);
    assert_eq!(sidecar.rejected() + egress.rejected(), 0);
}

/// ServiceEntry endpoint `weight`s split a service's requests in their
/// proportion (1:3 here), through a real sidecar.
#[test]
fn service_entry_endpoint_weights_split_traffic() {
    let mesh = Mesh::start(true, &[]);
    add_local_address(EXTERNAL_IP);
    add_local_address("192.0.2.11");
    external_server(&mesh, 80, "light");
    external_server_at(&mesh, "192.0.2.11", 80, "heavy");
    mesh.cfg.write(
        "se.yaml",
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{address: 192.0.2.10, weight: 1}, {address: 192.0.2.11, weight: 3}]
",
    );
    mesh.wait_loaded(2);
    let sidecar = mesh.sidecar();
    let n = 400;
    let counts = e2e::tally(&format!("http://{EXTERNAL_IP}/"), "api.example.com", &[], n);
    let heavy = counts.get("heavy").copied().unwrap_or(0);
    assert_eq!(
        heavy + counts.get("light").copied().unwrap_or(0),
        n,
        "{counts:?}"
    );
    e2e::assert_binomial(heavy, n, 0.75, "the endpoint weighted 3 of 4");
    assert_eq!(sidecar.rejected(), 0);
}

/// Istio's "mutual TLS origination for egress traffic", from the sidecar
/// itself: a DestinationRule whose `workloadSelector` picks productpage
/// gives its sidecar the client certificate of a `credentialName` Secret
/// in its namespace; the app's plain HTTP to port 80 leaves as mTLS to the
/// server's 443 (the ServiceEntry port's `targetPort`). Once the rule picks
/// another workload, productpage's sidecar no longer has the certificate.
#[test]
fn a_selected_sidecar_originates_mutual_tls_with_a_credential_secret() {
    let mesh = Mesh::start(true, &[]);
    let (_external, secret) = external_mtls_server("default");
    let rule = |app: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: originate-mtls}}
spec:
  host: api.example.com
  workloadSelector: {{matchLabels: {{app: {app}}}}}
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 80}}
      tls: {{mode: MUTUAL, credentialName: client-credential, sni: api.example.com}}
"
        )
    };
    mesh.cfg.write(
        "entry.yaml",
        &(secret
            + "
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 443}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{address: 192.0.2.10}]
"),
    );
    mesh.wait_loaded(2);
    mesh.cfg.write("rule.yaml", &rule("productpage"));
    mesh.wait_loaded(3);
    let sidecar = mesh.sidecar();
    let r = call_api();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        e2e::tls::first_certificate_sans(&r.body),
        ["client.example.com"]
    );
    assert!(sidecar.stat("cluster.outbound|80||api.example.com.ssl.handshake") >= 1);

    mesh.apply(&[&sidecar], "rule.yaml", &rule("someone-else"));
    until_status(|s| s != 200);
    assert_eq!(sidecar.rejected(), 0);
}

/// Istio's TLS origination from the sidecar (`SIMPLE`), and how the server
/// is verified, as Istio does by default since 1.20: against the rule's
/// `caCertificates`, else the proxy's system roots (which do not know the
/// test's CA), and by its certificate's name against the request's host
/// when the rule sets neither `sni` nor `subjectAltNames`;
/// `insecureSkipVerify` skips both.
#[test]
fn originated_tls_verifies_the_server_by_default() {
    let mesh = Mesh::start(true, &[]);
    add_local_address(EXTERNAL_IP);
    add_local_address("192.0.2.11");
    let pki = Pki::new();
    let (cert, key) = pki.issue("api.example.com");
    // Both servers present api.example.com's certificate; only one is it.
    let _api = TlsServer::start(&format!("{EXTERNAL_IP}:443"), &cert, &key);
    let _impostor = TlsServer::start("192.0.2.11:443", &cert, &key);
    // The CA where the proxy user can read it.
    let ca = mesh.cfg.path().join("test-ca.pem");
    std::fs::copy(pki.ca(), &ca).unwrap();
    let entry = |host: &str, ip: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {host}}}
spec:
  hosts: [{host}]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 443}}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{{address: {ip}}}]
---
"
        )
    };
    mesh.cfg.write(
        "entries.yaml",
        &(entry("api.example.com", EXTERNAL_IP) + &entry("impostor.example.com", "192.0.2.11")),
    );
    mesh.wait_loaded(2);
    let sidecar = mesh.sidecar();
    let rule = |tls: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: originate-tls}}
spec:
  host: '*.example.com'
  trafficPolicy: {{tls: {{mode: SIMPLE{tls}}}}}
"
        )
    };
    let status = |host: &str| {
        http_request(&format!("http://{EXTERNAL_IP}/"), &[("host", host)])
            .unwrap()
            .status
    };

    // No caCertificates: the system roots do not know the test's CA.
    mesh.apply(&[&sidecar], "rule.yaml", &rule(""));
    assert_eq!(status("api.example.com"), 503);
    // The rule's CA: the server is verified, and named as the host asked.
    mesh.apply(
        &[&sidecar],
        "rule.yaml",
        &rule(&format!(", caCertificates: {}", ca.display())),
    );
    assert_eq!(status("api.example.com"), 200);
    assert_eq!(
        status("impostor.example.com"),
        503,
        "a certificate of another name"
    );
    assert!(sidecar.stat("cluster.outbound|80||impostor.example.com.ssl.fail_verify_san") >= 1);
    // insecureSkipVerify: neither is checked.
    mesh.apply(
        &[&sidecar],
        "rule.yaml",
        &rule(", insecureSkipVerify: true"),
    );
    assert_eq!(status("impostor.example.com"), 200);
    assert_eq!(sidecar.rejected(), 0);
}

/// Sidecar `outboundTrafficPolicy.egressProxy` (Istio's egress proxy for
/// unknown traffic): under ALLOW_ANY, requests to destinations outside the
/// registry reach the named service instead of their own destination,
/// through the routes' catch-all host (a port some service has) and
/// through the catch-all TCP proxy (one none has).
#[test]
fn an_egress_proxy_takes_unknown_traffic() {
    let mesh = Mesh::start(true, &[]);
    add_local_address(EXTERNAL_IP);
    external_server(&mesh, 80, "direct");
    external_server(&mesh, 9080, "direct");
    // The egress proxy: a service in istio-system, its one endpoint a
    // server that names the host it was asked for.
    mesh.block_on(async {
        let router = axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
            let host = headers
                .get("host")
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            format!("proxied {host}")
        });
        let listener = tokio::net::TcpListener::bind("127.0.2.5:3128")
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
    });
    let envoy = mesh.sidecar();
    mesh.apply(
        &[&envoy],
        "egress-proxy.yaml",
        "apiVersion: v1
kind: Service
metadata: {name: egress-proxy, namespace: istio-system}
spec:
  clusterIP: 10.96.0.95
  ports: [{name: http-proxy, port: 3128}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: egress-proxy-1, namespace: istio-system, labels: {kubernetes.io/service-name: egress-proxy}}
addressType: IPv4
ports: [{name: http-proxy, port: 3128}]
endpoints: [{addresses: [127.0.2.5]}]
",
    );
    let get = |port: u16| {
        let r = http_request(
            &format!("http://{EXTERNAL_IP}:{port}/"),
            &[("host", "unknown.example.com")],
        )
        .unwrap();
        (r.status, r.body)
    };
    // ALLOW_ANY alone: straight through.
    assert_eq!(get(80), (200, "direct".into()));
    assert_eq!(get(9080), (200, "direct".into()));

    mesh.apply(
        &[&envoy],
        "sidecar.yaml",
        "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  outboundTrafficPolicy:
    mode: ALLOW_ANY
    egressProxy: {host: egress-proxy.istio-system.svc.cluster.local, port: {number: 3128}}
",
    );
    // Port 9080 (Bookinfo's): the route configuration's catch-all host;
    // port 80 (no service's): the catch-all TCP proxy.
    assert_eq!(get(9080), (200, "proxied unknown.example.com".into()));
    assert_eq!(get(80), (200, "proxied unknown.example.com".into()));
    // What the registry knows still goes to its own service.
    let known = http_request("http://10.96.0.13:9080/", &[("host", "reviews")]).unwrap();
    assert_eq!(known.status, 200, "{}", known.body);
    assert!(!known.body.starts_with("proxied"), "{}", known.body);

    // A Sidecar's policy without a mode is REGISTRY_ONLY (the proto's
    // default, as Istio takes the Sidecar's policy whole), though the
    // mesh's is ALLOW_ANY.
    mesh.apply(
        &[&envoy],
        "sidecar.yaml",
        "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  outboundTrafficPolicy: {}
",
    );
    let blocked = http_request(
        &format!("http://{EXTERNAL_IP}:80/"),
        &[("host", "unknown.example.com")],
    );
    assert!(blocked.is_err(), "{blocked:?}");
    assert_eq!(get(9080).0, 502);
    assert_eq!(envoy.rejected(), 0);
}

/// ServiceEntry `DYNAMIC_DNS` (Istio's dynamic forward proxy): a wildcard
/// host whose requests go where their own `Host` (HTTP) or SNI (TLS)
/// resolves at request time, whatever address the app dialled. Under
/// REGISTRY_ONLY, a request dialled to 192.0.2.10 for `two.dyn.example.com`
/// reaches 192.0.2.11, where that name resolves (the test's /etc/hosts);
/// so does a TLS connection whose SNI names it.
#[test]
fn dynamic_dns_resolves_each_requests_own_host() {
    let mesh = Mesh::start(true, &[]);
    add_local_address(EXTERNAL_IP);
    add_local_address("192.0.2.11");
    external_server(&mesh, 8081, "first");
    external_server_at(&mesh, "192.0.2.11", 8081, "second");
    mesh.add_host(EXTERNAL_IP, "one.dyn.example.com");
    mesh.add_host("192.0.2.11", "two.dyn.example.com");
    let pki = Pki::new();
    let (cert, key) = pki.issue("two.dyn.example.com");
    let _tls = TlsServer::start("192.0.2.11:8443", &cert, &key);
    let envoy = mesh.sidecar();
    mesh.apply(
        &[&envoy],
        "se-dynamic.yaml",
        &(registry_only()
            + "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dynamic}
spec:
  hosts: ['*.dyn.example.com']
  ports: [{number: 8081, name: http, protocol: HTTP}, {number: 8443, name: tls, protocol: TLS}]
  location: MESH_EXTERNAL
  resolution: DYNAMIC_DNS
"),
    );
    let get = |host: &str| {
        http_request(&format!("http://{EXTERNAL_IP}:8081/"), &[("host", host)]).unwrap()
    };
    // The Host carries the port, as clients write it off port 80.
    for (host, answer) in [
        ("one.dyn.example.com:8081", "first"),
        ("two.dyn.example.com:8081", "second"),
    ] {
        let r = get(host);
        assert_eq!((r.status, r.body.as_str()), (200, answer), "{host}");
    }
    // Not under the wildcard: REGISTRY_ONLY's 502.
    assert_eq!(get("other.example.com:8081").status, 502);
    // TLS: the SNI names the host (nothing listens on 192.0.2.10:8443).
    let page = e2e::tls::curl(
        &pki.ca(),
        ("two.dyn.example.com", EXTERNAL_IP),
        8443,
        "/",
        None,
    )
    .unwrap_or_else(|e| panic!("TLS by SNI: {e}"));
    assert!(page.contains("s_server"), "{page}");
    assert_eq!(envoy.rejected(), 0);
}
