//! Egress on a real Envoy: ALLOW_ANY passes unknown destinations through,
//! REGISTRY_ONLY blocks them, and ServiceEntries (STATIC endpoints, DNS
//! resolution) open the way again. "The internet" is TEST-NET-1 inside
//! the test's own namespace; nothing leaves the machine.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::sync::Arc;

use e2e::{Mesh, add_local_address, http_request};

const EXTERNAL_IP: &str = "192.0.2.10";

/// The mesh config's `outboundTrafficPolicy: REGISTRY_ONLY`.
fn registry_only() -> String {
    e2e::mesh_config("outboundTrafficPolicy: {mode: REGISTRY_ONLY}")
}

/// An "external" HTTP server on 192.0.2.10:`port` answering `name`.
fn external_server(mesh: &Mesh, port: u16, name: &'static str) {
    mesh.block_on(async move {
        let body: Arc<str> = name.into();
        let router = axum::Router::new().fallback(move || {
            let body = body.clone();
            async move { body.to_string() }
        });
        let listener = tokio::net::TcpListener::bind((EXTERNAL_IP, port))
            .await
            .unwrap();
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
    mesh.apply(
        &[&envoy],
        "se-static.yaml",
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{address: 192.0.2.10}]
",
    );
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

/// Istio's egress gateway task: mesh traffic for an external host goes
/// through the egress gateway, which sends it out.
#[test]
fn egress_gateway_carries_mesh_traffic_out() {
    let mesh = Mesh::start(true, &[]);
    add_local_address(EXTERNAL_IP);
    external_server(&mesh, 80, "api.example.com");
    mesh.cfg.write(
        "egress.yaml",
        "apiVersion: v1
kind: Service
metadata: {name: istio-egressgateway, namespace: istio-system}
spec:
  clusterIP: 10.96.0.40
  ports: [{name: http, port: 8081}]
---
apiVersion: v1
kind: Pod
metadata: {name: istio-egressgateway-1, namespace: istio-system, labels: {istio: egressgateway}}
spec: {containers: [{name: istio-proxy, image: istio/proxyv2}]}
status: {podIP: 127.0.4.1}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: istio-egressgateway-1, namespace: istio-system, labels: {kubernetes.io/service-name: istio-egressgateway}}
addressType: IPv4
ports: [{name: http, port: 8081}]
endpoints: [{addresses: [127.0.4.1], targetRef: {kind: Pod, name: istio-egressgateway-1}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{address: 192.0.2.10}]
---
apiVersion: networking.istio.io/v1
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
",
    );
    mesh.wait_loaded(2);
    let sidecar = mesh.sidecar();
    let egress = mesh.proxy(
        "router~127.0.4.1~istio-egressgateway-1.istio-system~istio-system.svc.cluster.local",
        &[("istio", "egressgateway")],
        15200,
    );
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
    let count = |envoy: &e2e::Envoy, stat: &str| -> u64 {
        envoy
            .stats()
            .get(stat)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(
        count(
            &sidecar,
            "cluster.outbound|8081||istio-egressgateway.istio-system.svc.cluster.local.upstream_rq_200"
        ),
        1,
        "the sidecar sent the request to the egress gateway"
    );
    assert_eq!(
        count(
            &egress,
            "cluster.outbound|80||api.example.com.upstream_rq_200"
        ),
        1,
        "the egress gateway sent it out"
    );
    assert_eq!(sidecar.rejected() + egress.rejected(), 0);
}
