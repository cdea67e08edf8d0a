//! TCP and TLS on a real Envoy: a weighted VirtualService `tcp` route splits
//! connections between two TCP echo backends (Istio's TCP traffic shifting
//! task), and so does a Gateway API TCPRoute on the Service; TLS routes picked by source labels and destination subnet; a
//! DestinationRule's PROXY protocol header and HTTP `CONNECT` tunnel reach
//! real servers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use e2e::{Mesh, assert_binomial};

const TCP_ECHO: &str = "apiVersion: v1
kind: Service
metadata: {name: tcp-echo, namespace: default}
spec:
  clusterIP: 10.96.0.30
  ports: [{name: tcp, port: 9000}]
---
apiVersion: v1
kind: Pod
metadata: {name: tcp-echo-v1, namespace: default, labels: {app: tcp-echo, version: v1}}
spec: {containers: [{name: tcp-echo, image: istio/tcp-echo-server}]}
status: {podIP: 127.0.2.1}
---
apiVersion: v1
kind: Pod
metadata: {name: tcp-echo-v2, namespace: default, labels: {app: tcp-echo, version: v2}}
spec: {containers: [{name: tcp-echo, image: istio/tcp-echo-server}]}
status: {podIP: 127.0.2.2}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: tcp-echo-1, namespace: default, labels: {kubernetes.io/service-name: tcp-echo}}
addressType: IPv4
ports: [{name: tcp, port: 9000}]
endpoints:
- {addresses: [127.0.2.1], targetRef: {kind: Pod, name: tcp-echo-v1}}
- {addresses: [127.0.2.2], targetRef: {kind: Pod, name: tcp-echo-v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: tcp-echo}
spec:
  host: tcp-echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
";

fn routes(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: tcp-echo}}
spec:
  hosts: [tcp-echo]
  tcp:
  - match: [{{port: 9000}}]
    route:
    - {{destination: {{host: tcp-echo, port: {{number: 9000}}, subset: v1}}, weight: {v1}}}
    - {{destination: {{host: tcp-echo, port: {{number: 9000}}, subset: v2}}, weight: {v2}}}
"
    )
}

/// Connects to the tcp-echo VIP, says hello, returns the echo's first line.
fn hello() -> String {
    hello_to("10.96.0.30:9000")
}

/// Two echo servers prefixing their version, like Istio's tcp-echo
/// sample, on the pod addresses of [`TCP_ECHO`].
fn start_echo_servers(mesh: &Mesh) {
    for (ip, version) in [("127.0.2.1", "v1"), ("127.0.2.2", "v2")] {
        mesh.block_on(async move {
            let listener = tokio::net::TcpListener::bind((ip, 9000)).await.unwrap();
            tokio::spawn(async move {
                use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
                while let Ok((conn, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let (r, mut w) = conn.into_split();
                        let mut lines = tokio::io::BufReader::new(r).lines();
                        while let Ok(Some(l)) = lines.next_line().await {
                            if w.write_all(format!("{version} {l}\n").as_bytes())
                                .await
                                .is_err()
                            {
                                break;
                            }
                        }
                    });
                }
            });
        });
    }
}

#[test]
fn weighted_tcp_routes_split_connections() {
    let mesh = Mesh::start(true, &[]);
    start_echo_servers(&mesh);
    let envoy = mesh.sidecar();
    mesh.apply(&[&envoy], "tcp-echo.yaml", TCP_ECHO);
    assert_shifts(&mesh, &envoy, "vs.yaml", routes);
    // Istio's TCP metrics counted every connection (20, then 300): opened
    // at the upstream connect, closed with their bytes ("hello\n" out,
    // "vN hello\n" back).
    let labels = [
        ("reporter", "source"),
        ("destination_service", "tcp-echo.default.svc.cluster.local"),
        ("request_protocol", "tcp"),
    ];
    let want = [
        ("istio_tcp_connections_opened_total", 320.0),
        ("istio_tcp_connections_closed_total", 320.0),
        ("istio_tcp_received_bytes_total", 320.0 * 6.0),
        ("istio_tcp_sent_bytes_total", 320.0 * 9.0),
    ];
    e2e::eventually(
        e2e::SYNC,
        || {
            let text = envoy.admin("/stats/prometheus")?;
            want.iter()
                .all(|(name, n)| e2e::istio_metric(&text, name, &labels) == Some(*n))
                .then_some(())
        },
        || {
            format!(
                "{want:?} not counted:\n{:?}",
                envoy.admin("/stats/prometheus")
            )
        },
    );
}

/// Istio's TCP traffic shifting steps with the routes `routes(v1, v2)`
/// written to `file`: every connection to v1, then 80/20.
fn assert_shifts(mesh: &Mesh, envoy: &e2e::Envoy, file: &str, routes: impl Fn(u32, u32) -> String) {
    mesh.apply(&[envoy], file, &routes(100, 0));
    for _ in 0..20 {
        assert_eq!(hello(), "v1 hello");
    }
    mesh.apply(&[envoy], file, &routes(80, 20));
    let n = 300;
    let v1 = (0..n).filter(|_| hello() == "v1 hello").count();
    assert_binomial(v1, n, 0.8, "connections to v1");
    assert_eq!(envoy.rejected(), 0);
}

/// The Gateway API form of the same task (GAMMA): a TCPRoute whose parent
/// is the `tcp-echo` Service shifts its connections between the Services
/// `tcp-echo-v1` and `tcp-echo-v2`.
#[test]
fn a_tcproute_on_a_service_shifts_mesh_connections() {
    let mesh = Mesh::start(true, &[]);
    start_echo_servers(&mesh);
    let envoy = mesh.sidecar();
    let versions = "apiVersion: v1
kind: Service
metadata: {name: tcp-echo-v1, namespace: default}
spec:
  clusterIP: 10.96.0.31
  selector: {app: tcp-echo, version: v1}
  ports: [{name: tcp, port: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: tcp-echo-v2, namespace: default}
spec:
  clusterIP: 10.96.0.32
  selector: {app: tcp-echo, version: v2}
  ports: [{name: tcp, port: 9000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: tcp-echo-v1-1, namespace: default, labels: {kubernetes.io/service-name: tcp-echo-v1}}
addressType: IPv4
ports: [{name: tcp, port: 9000}]
endpoints: [{addresses: [127.0.2.1], targetRef: {kind: Pod, name: tcp-echo-v1}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: tcp-echo-v2-1, namespace: default, labels: {kubernetes.io/service-name: tcp-echo-v2}}
addressType: IPv4
ports: [{name: tcp, port: 9000}]
endpoints: [{addresses: [127.0.2.2], targetRef: {kind: Pod, name: tcp-echo-v2}}]
";
    mesh.apply(
        &[&envoy],
        "tcp-echo.yaml",
        &format!("{TCP_ECHO}---\n{versions}"),
    );
    let route = |v1: u32, v2: u32| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {{name: tcp-echo, namespace: default}}
spec:
  parentRefs: [{{group: '', kind: Service, name: tcp-echo, port: 9000}}]
  rules:
  - backendRefs:
    - {{name: tcp-echo-v1, port: 9000, weight: {v1}}}
    - {{name: tcp-echo-v2, port: 9000, weight: {v2}}}
"
        )
    };
    assert_shifts(&mesh, &envoy, "route.yaml", route);
}

/// A server on `ip:port` that reads what a connection starts with (a
/// PROXY protocol header, v1 or v2, or none) and then echoes each line,
/// each answer prefixed with what it read first.
fn proxy_protocol_server(mesh: &Mesh, ip: &'static str, port: u16) {
    mesh.block_on(async move {
        let listener = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (r, mut w) = conn.into_split();
                    let mut r = tokio::io::BufReader::new(r);
                    let Ok(first) = r.fill_buf().await.map(|b| b.first().copied()) else {
                        return;
                    };
                    let header = match first {
                        Some(b'P') => {
                            let mut line = String::new();
                            if r.read_line(&mut line).await.is_err() {
                                return;
                            }
                            line.trim_end().to_owned()
                        }
                        // v2: the 12-byte signature, version and command,
                        // family, length, then (TCP over IPv4) addresses
                        // and ports.
                        Some(b'\r') => {
                            let mut head = [0u8; 16];
                            if r.read_exact(&mut head).await.is_err() {
                                return;
                            }
                            let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
                            let mut body = vec![0u8; len];
                            if r.read_exact(&mut body).await.is_err() || len < 12 {
                                return;
                            }
                            let ip = |b: &[u8]| std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]);
                            format!(
                                "PROXYv2 {:#04x} {:#04x} {} {} {} {}",
                                head[12],
                                head[13],
                                ip(&body[0..4]),
                                ip(&body[4..8]),
                                u16::from_be_bytes([body[8], body[9]]),
                                u16::from_be_bytes([body[10], body[11]]),
                            )
                        }
                        _ => "no header".to_owned(),
                    };
                    let mut lines = r.lines();
                    while let Ok(Some(l)) = lines.next_line().await {
                        if w.write_all(format!("{header} | {l}\n").as_bytes())
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                });
            }
        });
    });
}

/// Connects to `addr`, says hello, returns the first line of the answer.
fn hello_to(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"hello\n").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line.trim().to_owned()
}

/// DestinationRule `trafficPolicy.proxyProtocol`: the sidecar starts each
/// upstream connection with a PROXY protocol header naming the client and
/// the service address it called (v1, then v2), and the bytes follow.
#[test]
fn a_proxy_protocol_header_names_the_client_to_the_server() {
    let mesh = Mesh::start(true, &[]);
    proxy_protocol_server(&mesh, "127.0.2.7", 9000);
    let envoy = mesh.sidecar();
    let platform = "apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: default}
spec:
  clusterIP: 10.96.0.54
  ports: [{name: tcp, port: 9000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: legacy-1, namespace: default, labels: {kubernetes.io/service-name: legacy}}
addressType: IPv4
ports: [{name: tcp, port: 9000}]
endpoints: [{addresses: [127.0.2.7]}]
";
    mesh.apply(&[&envoy], "legacy.yaml", platform);
    assert_eq!(hello_to("10.96.0.54:9000"), "no header | hello");

    let rule = |version: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: legacy}}
spec:
  host: legacy
  trafficPolicy: {{proxyProtocol: {{version: {version}}}}}
"
        )
    };
    mesh.apply(&[&envoy], "dr.yaml", &rule("V1"));
    let got = hello_to("10.96.0.54:9000");
    // `PROXY TCP4 <client> <service address> <client port> <service port>`.
    assert!(
        got.starts_with("PROXY TCP4 127.0.0.1 10.96.0.54 ") && got.ends_with(" 9000 | hello"),
        "{got}"
    );

    mesh.apply(&[&envoy], "dr.yaml", &rule("V2"));
    let got = hello_to("10.96.0.54:9000");
    // Version 2, PROXY command (0x21); TCP over IPv4 (0x11).
    assert!(
        got.starts_with("PROXYv2 0x21 0x11 127.0.0.1 10.96.0.54 ")
            && got.ends_with(" 9000 | hello"),
        "{got}"
    );
    assert_eq!(envoy.rejected(), 0);
}

/// DestinationRule `trafficPolicy.tunnel` (Istio's egress through an HTTP
/// `CONNECT` proxy): TCP to an external host that a VirtualService routes
/// to the proxy's subset is carried in a tunnel the proxy is asked to open
/// to `targetHost:targetPort`.
#[test]
fn a_tunnel_carries_tcp_through_an_http_connect_proxy() {
    use std::sync::{Arc, Mutex};
    let mesh = Mesh::start(true, &[]);
    // The forward proxy: answers CONNECT with 200, then echoes each line
    // naming the target; anything else gets one line saying so.
    let asked: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = asked.clone();
    mesh.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.2.6:3128")
            .await
            .unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
            while let Ok((conn, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let (r, mut w) = conn.into_split();
                    let mut lines = tokio::io::BufReader::new(r).lines();
                    let Ok(Some(request)) = lines.next_line().await else {
                        return;
                    };
                    let Some(target) = request
                        .strip_prefix("CONNECT ")
                        .and_then(|r| r.split(' ').next())
                        .map(str::to_owned)
                    else {
                        let _ = w
                            .write_all(format!("no tunnel: {request}\n").as_bytes())
                            .await;
                        return;
                    };
                    // The request's headers, up to the empty line.
                    while let Ok(Some(h)) = lines.next_line().await {
                        if h.is_empty() {
                            break;
                        }
                    }
                    log.lock().unwrap().push(request);
                    if w.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.is_err() {
                        return;
                    }
                    while let Ok(Some(l)) = lines.next_line().await {
                        if w.write_all(format!("via {target}: {l}\n").as_bytes())
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                });
            }
        });
    });
    let envoy = mesh.sidecar();
    let config = |tunnel: &str| {
        format!(
            "apiVersion: v1
kind: Service
metadata: {{name: forward-proxy, namespace: default}}
spec:
  clusterIP: 10.96.0.52
  ports: [{{name: tcp-proxy, port: 3128}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: forward-proxy-1, namespace: default, labels: {{kubernetes.io/service-name: forward-proxy}}}}
addressType: IPv4
ports: [{{name: tcp-proxy, port: 3128}}]
endpoints: [{{addresses: [127.0.2.6]}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: external-db}}
spec:
  hosts: [db.example.com]
  addresses: [192.0.2.20]
  ports: [{{number: 5432, name: tcp, protocol: TCP}}]
  location: MESH_EXTERNAL
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: external-db}}
spec:
  hosts: [db.example.com]
  tcp:
  - route: [{{destination: {{host: forward-proxy.default.svc.cluster.local, subset: db, port: {{number: 3128}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: forward-proxy}}
spec:
  host: forward-proxy.default.svc.cluster.local
  subsets:
  - name: db
    trafficPolicy: {tunnel}
"
        )
    };
    mesh.apply(
        &[&envoy],
        "tunnel.yaml",
        &config("{tunnel: {protocol: CONNECT, targetHost: db.example.com, targetPort: 5432}}"),
    );
    assert_eq!(
        hello_to("192.0.2.20:5432"),
        "via db.example.com:5432: hello"
    );
    assert_eq!(
        asked.lock().unwrap().as_slice(),
        ["CONNECT db.example.com:5432 HTTP/1.1"]
    );
    // Without the tunnel the proxy gets the client's own bytes.
    mesh.apply(
        &[&envoy],
        "tunnel.yaml",
        &config("{connectionPool: {tcp: {maxConnections: 100}}}"),
    );
    assert_eq!(hello_to("192.0.2.20:5432"), "no tunnel: hello");
    assert_eq!(envoy.rejected(), 0);
}

/// `curl` to `https://api.tls.test:9443/` through the sidecar's capture
/// (the name resolved to the ServiceEntry's address), trusting only `ca`:
/// whether the backend that answered holds a certificate from that CA.
fn tls_reaches(ca: &std::path::Path) -> bool {
    std::process::Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "5", "--cacert"])
        .arg(ca)
        .args([
            "--resolve",
            "api.tls.test:9443:192.0.2.30",
            "https://api.tls.test:9443/",
        ])
        .output()
        .expect("curl (scripts/setup installs it)")
        .status
        .success()
}

/// A VirtualService `tls` route's `sourceLabels` and `destinationSubnets`
/// on a sidecar: the first route applies only to the proxies its labels
/// pick and to the destination addresses its subnets hold, else the next
/// route for the same SNI takes the connection. The two backends hold
/// certificates from different CAs, so the one curl trusts tells which
/// answered.
#[test]
fn tls_route_matches_pick_by_source_labels_and_destination_subnet() {
    use e2e::tls::{Pki, TlsServer};
    let (pki_a, pki_b) = (Pki::new(), Pki::new());
    let mesh = Mesh::start(true, &[]);
    let (a_cert, a_key) = pki_a.issue("api.tls.test");
    let (b_cert, b_key) = pki_b.issue("api.tls.test");
    let _a = TlsServer::start("127.0.3.1:9443", &a_cert, &a_key);
    let _b = TlsServer::start("127.0.3.2:9443", &b_cert, &b_key);
    let envoy = mesh.sidecar();
    let config = |labels: &str, subnet: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api}}
spec:
  hosts: [api.tls.test]
  addresses: [192.0.2.30]
  ports: [{{number: 9443, name: tls, protocol: TLS}}]
  location: MESH_EXTERNAL
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: a-backend}}
spec:
  hosts: [a.backend.internal]
  ports: [{{number: 9443, name: tls, protocol: TLS}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.3.1}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: b-backend}}
spec:
  hosts: [b.backend.internal]
  ports: [{{number: 9443, name: tls, protocol: TLS}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.3.2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api}}
spec:
  hosts: [api.tls.test]
  tls:
  - match: [{{sniHosts: [api.tls.test], sourceLabels: {labels}, destinationSubnets: [{subnet}]}}]
    route: [{{destination: {{host: a.backend.internal, port: {{number: 9443}}}}}}]
  - match: [{{sniHosts: [api.tls.test]}}]
    route: [{{destination: {{host: b.backend.internal, port: {{number: 9443}}}}}}]
"
        )
    };
    // productpage's sidecar, the connection's destination in the subnet.
    mesh.apply(
        &[&envoy],
        "tls.yaml",
        &config("{app: productpage}", "192.0.2.0/27"),
    );
    assert!(tls_reaches(&pki_a.ca()), "the first route, to a");
    assert!(!tls_reaches(&pki_b.ca()));
    // Labels of another workload: the second route.
    mesh.apply(
        &[&envoy],
        "tls.yaml",
        &config("{app: ratings}", "192.0.2.0/27"),
    );
    assert!(tls_reaches(&pki_b.ca()), "the second route, to b");
    // The right labels but a subnet without the destination: the second.
    mesh.apply(
        &[&envoy],
        "tls.yaml",
        &config("{app: productpage}", "192.0.2.64/27"),
    );
    assert!(tls_reaches(&pki_b.ca()), "the second route, to b");
    assert_eq!(envoy.rejected(), 0);
}
