//! TCP routing on a real Envoy: a weighted VirtualService `tcp` route
//! splits connections between two TCP echo backends (Istio's TCP traffic
//! shifting task).

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
    let mut s = TcpStream::connect("10.96.0.30:9000").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"hello\n").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line.trim().to_owned()
}

#[test]
fn weighted_tcp_routes_split_connections() {
    let mesh = Mesh::start(true, &[]);
    // Two echo servers prefixing their version, like Istio's tcp-echo sample.
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
    let envoy = mesh.sidecar();
    mesh.apply(&[&envoy], "tcp-echo.yaml", TCP_ECHO);
    mesh.apply(&[&envoy], "vs.yaml", &routes(100, 0));
    for _ in 0..20 {
        assert_eq!(hello(), "v1 hello");
    }

    mesh.apply(&[&envoy], "vs.yaml", &routes(80, 20));
    let n = 300;
    let v1 = (0..n).filter(|_| hello() == "v1 hello").count();
    assert_binomial(v1, n, 0.8, "connections to v1");
    assert_eq!(envoy.rejected(), 0);
}
