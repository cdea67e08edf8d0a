//! Istio's DNS proxying (`ISTIO_META_DNS_CAPTURE`): the name table (NDS,
//! `istio.networking.nds.v1.NameTable`) the agent asks for on its xDS
//! stream, served to a client that speaks as Istio's agent does and pushed
//! again when a service changes; and this project's agent answering a
//! sidecar pod's captured DNS from it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use prost::Message;
use translator::nds::{NAME_TABLE_TYPE, NameInfo, NameTable};

use e2e::Mesh;

/// The ServiceEntry of [`http_entry`] and a headless Service.
fn entries(address: &str) -> String {
    http_entry(address)
        + "---
apiVersion: v1
kind: Service
metadata: {name: stateful, namespace: default}
spec:
  clusterIP: None
  ports: [{name: http, port: 8080}]
"
}

/// An ADS stream of node `node` (with `metadata`) subscribed to the name
/// table as Istio's agent subscribes: by type alone.
async fn name_table_stream(
    xds: std::net::SocketAddr,
    node: &str,
    metadata: &[(&str, &str)],
) -> e2e::AdsStream {
    let stream = e2e::ads_stream(xds, node, metadata).await;
    stream
        .requests
        .send(DiscoveryRequest {
            type_url: NAME_TABLE_TYPE.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    stream
}

/// The next NDS response on `stream`, ACKed, decoded.
async fn next_table(stream: &mut e2e::AdsStream) -> NameTable {
    loop {
        let response: DiscoveryResponse =
            tokio::time::timeout(Duration::from_secs(10), stream.responses.message())
                .await
                .expect("a response within 10 s")
                .expect("not an error")
                .expect("a message");
        if response.type_url != NAME_TABLE_TYPE {
            continue;
        }
        stream
            .requests
            .send(DiscoveryRequest {
                type_url: NAME_TABLE_TYPE.into(),
                version_info: response.version_info.clone(),
                response_nonce: response.nonce.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        let [resource] = &response.resources[..] else {
            panic!("one name table: {response:?}")
        };
        assert_eq!(resource.type_url, NAME_TABLE_TYPE);
        return NameTable::decode(resource.value.as_slice()).unwrap();
    }
}

/// As Istio's agent asks (its node metadata `DNS_CAPTURE: true`): the type
/// alone, no names. The table has the
/// Kubernetes services the proxy sees (with their name and namespace, for
/// the agent's short forms) and the ServiceEntry's host with its address;
/// not the headless Service (the pod's resolver answers for it). A changed
/// address is pushed.
#[test]
fn the_agent_gets_the_name_table_and_its_changes() {
    let mesh = Mesh::start(false, &[]);
    mesh.cfg.write("entries.yaml", &entries("240.240.0.5"));
    mesh.wait_loaded(2);
    let xds = mesh.daemon.xds_addr;
    mesh.block_on(async {
        let mut stream = name_table_stream(
            xds,
            "sidecar~127.0.0.9~client.default~default.svc.cluster.local",
            &[("DNS_CAPTURE", "true")],
        )
        .await;
        let table = next_table(&mut stream).await;
        assert_eq!(
            table.table.get("reviews.default.svc.cluster.local"),
            Some(&NameInfo {
                ips: vec!["10.96.0.13".into()],
                registry: "Kubernetes".into(),
                shortname: "reviews".into(),
                namespace: "default".into(),
                alt_hosts: Vec::new(),
            })
        );
        assert_eq!(
            table.table.get("db.internal"),
            Some(&NameInfo {
                ips: vec!["240.240.0.5".into()],
                registry: "External".into(),
                ..Default::default()
            })
        );
        assert!(
            !table
                .table
                .contains_key("stateful.default.svc.cluster.local"),
            "{:?}",
            table.table.keys().collect::<Vec<_>>()
        );
        mesh.cfg.write("entries.yaml", &entries("240.240.0.6"));
        let table = next_table(&mut stream).await;
        assert_eq!(table.table["db.internal"].ips, ["240.240.0.6"]);
        // A proxy whose agent does not capture DNS gets an empty table:
        // no other proxy pays for building one.
        let mut other = name_table_stream(
            xds,
            "sidecar~127.0.0.8~other.default~default.svc.cluster.local",
            &[],
        )
        .await;
        assert!(next_table(&mut other).await.table.is_empty());
    });
}

/// A ServiceEntry `db.internal` at `address` (no DNS record anywhere) for
/// reviews-v1's pod on 9080.
fn http_entry(address: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db, namespace: default}}
spec:
  hosts: [db.internal]
  addresses: [{address}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.1.4}}]
"
    )
}

/// A TCP ServiceEntry without addresses, for reviews-v2's pod on 9080.
const TCP_ENTRY: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: tcp, namespace: default}
spec:
  hosts: [tcp.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: tcp, protocol: TCP}]
  endpoints: [{address: 127.0.1.5}]
";

/// Where allocated addresses come from (Istio's IP auto-allocation).
const ALLOCATED: &str = "240.240.0.0/16";

/// The cluster's resolver (kube-dns), as the pod's `resolv.conf` names it.
const CLUSTER_DNS: &str = "10.96.0.10";
/// Where the stand-in for kube-dns's own server listens (the agent forwards
/// there; in a pod it forwards to `CLUSTER_DNS`, its own traffic left
/// uncaptured by its uid).
const UPSTREAM: &str = "127.0.0.53:53";

/// A stand-in upstream resolver: `outside.example.com` is 192.0.2.99,
/// every other name does not exist.
async fn upstream_resolver() {
    use hickory_proto::op::{Message, MessageType, ResponseCode};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{RData, Record};
    let socket = tokio::net::UdpSocket::bind(UPSTREAM).await.unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut reply = Message::new();
            reply
                .set_id(query.id())
                .set_message_type(MessageType::Response)
                .add_queries(query.queries().to_vec());
            match query.queries().first() {
                Some(q) if q.name().to_ascii() == "outside.example.com." => {
                    reply.add_answer(Record::from_rdata(
                        q.name().clone(),
                        60,
                        RData::A(A::new(192, 0, 2, 99)),
                    ));
                }
                _ => {
                    reply.set_response_code(ResponseCode::NXDomain);
                }
            }
            let _ = socket.send_to(&reply.to_vec().unwrap(), from).await;
        }
    });
}

/// `istio-init --redirect-dns`: the pod's DNS to the cluster resolver goes
/// to the agent's port 15053 instead (ahead of the service range's capture
/// to Envoy).
fn capture_dns() {
    for proto in ["udp", "tcp"] {
        e2e::run(
            "iptables",
            &[
                "-t",
                "nat",
                "-I",
                "OUTPUT",
                "-p",
                proto,
                "-d",
                CLUSTER_DNS,
                "--dport",
                "53",
                "-j",
                "REDIRECT",
                "--to-ports",
                "15053",
            ],
        );
    }
}

/// A query for `name` (type `kind`) to `server` over UDP, or TCP with
/// `tcp`: (response code, the answers' addresses).
async fn resolve(
    server: &str,
    name: &str,
    kind: hickory_proto::rr::RecordType,
    tcp: bool,
) -> (hickory_proto::op::ResponseCode, Vec<String>) {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::Name;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut query = Message::new();
    query
        .set_id(42)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
    let bytes = query.to_vec().unwrap();
    let reply = if tcp {
        let mut stream = tokio::net::TcpStream::connect(server).await.unwrap();
        stream.write_u16(bytes.len() as u16).await.unwrap();
        stream.write_all(&bytes).await.unwrap();
        let len = stream.read_u16().await.unwrap();
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await.unwrap();
        buf
    } else {
        let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
        socket.send_to(&bytes, server).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        buf.truncate(n);
        buf
    };
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(reply.id(), 42);
    let ips = reply
        .answers()
        .iter()
        .map(|r| r.data().to_string())
        .collect();
    (reply.response_code(), ips)
}

/// Istio's DNS proxying, on a real sidecar: the agent asks the daemon for
/// the name table through its xDS proxy (Envoy never sees it) and answers
/// the pod's DNS, captured from the cluster resolver as `istio-init
/// --redirect-dns` does: a ServiceEntry host with no DNS record resolves to
/// the entry's address, over UDP and TCP, and the app's request to it goes
/// through the sidecar to the entry's endpoint; a TCP entry without
/// addresses gets one allocated, which its name resolves to and which the
/// sidecar listens for; a Service by its short name; other names are the
/// upstream resolver's answers. A changed address is answered once the
/// daemon pushes it.
#[test]
fn the_agents_dns_proxy_answers_mesh_names_and_forwards_the_rest() {
    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::RecordType;
    let mesh = Mesh::start(true, &[]);
    capture_dns();
    // As istio-init captures every address: the allocated range too.
    e2e::capture_range(ALLOCATED);
    mesh.cfg.write(
        "entries.yaml",
        &(http_entry("10.96.0.77") + "---\n" + TCP_ENTRY),
    );
    mesh.wait_loaded(2);
    let dir = e2e::socket_dir();
    let token = tokio_util::sync::CancellationToken::new();
    let (table, tables) = tokio::sync::watch::channel(std::sync::Arc::default());
    mesh.block_on(async {
        upstream_resolver().await;
        istiod::dns::serve(
            istiod::dns::DNS_ADDRESS.parse().unwrap(),
            UPSTREAM.parse().unwrap(),
            tables,
            token.clone(),
        )
        .await
        .unwrap();
    });
    mesh.agent_xds_proxy(
        dir.path(),
        Some(istiod::xds_proxy::DnsFeed {
            table,
            namespace: "default".into(),
            domain: "cluster.local".into(),
        }),
        &token,
    );
    // As the agent's `ISTIO_META_DNS_CAPTURE` makes it.
    e2e::use_node_metadata("DNS_CAPTURE", "true");
    let envoy = mesh.proxy(e2e::SIDECAR, &e2e::SIDECAR_LABELS, 15000);
    let dns = format!("{CLUSTER_DNS}:53");
    let db = mesh.block_on(async {
        let mut answer = resolve(&dns, "db.internal.", RecordType::A, false).await;
        for _ in 0..50 {
            if answer.1 == ["10.96.0.77"] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            answer = resolve(&dns, "db.internal.", RecordType::A, false).await;
        }
        answer
    });
    assert_eq!(db, (ResponseCode::NoError, vec!["10.96.0.77".to_owned()]));
    mesh.block_on(async {
        assert_eq!(
            resolve(&dns, "db.internal.", RecordType::A, true).await,
            (ResponseCode::NoError, vec!["10.96.0.77".to_owned()]),
            "over TCP"
        );
        assert_eq!(
            resolve(&dns, "db.internal.", RecordType::AAAA, false).await,
            (ResponseCode::NoError, Vec::new()),
            "no IPv6 address: no record"
        );
        assert_eq!(
            resolve(&dns, "reviews.", RecordType::A, false).await.1,
            ["10.96.0.13"],
            "a Service of the pod's namespace by its short name"
        );
        assert_eq!(
            resolve(&dns, "outside.example.com.", RecordType::A, false).await,
            (ResponseCode::NoError, vec!["192.0.2.99".to_owned()]),
            "forwarded"
        );
        assert_eq!(
            resolve(&dns, "nowhere.example.com.", RecordType::A, false)
                .await
                .0,
            ResponseCode::NXDomain,
            "forwarded"
        );
    });
    // The app connects to what it resolved: through the sidecar to the
    // entry's endpoint.
    let reply = e2e::http_request("http://10.96.0.77:9080/", &[("host", "db.internal")]).unwrap();
    assert_eq!((reply.status, reply.body.as_str()), (200, "reviews v1"));
    // A TCP entry without addresses has one allocated for this sidecar
    // (it captures DNS): its name resolves to it, and a connection to it
    // goes through the sidecar to the entry's endpoint.
    let (code, allocated) = mesh.block_on(resolve(&dns, "tcp.internal.", RecordType::A, false));
    assert_eq!(code, ResponseCode::NoError);
    let [allocated] = &allocated[..] else {
        panic!("{allocated:?}")
    };
    assert!(allocated.starts_with("240.240."), "{allocated}");
    let reply = e2e::http_request(&format!("http://{allocated}:9080/"), &[]).unwrap();
    assert_eq!((reply.status, reply.body.as_str()), (200, "reviews v2"));
    // A new address, once pushed, is the answer.
    mesh.cfg.write(
        "entries.yaml",
        &(http_entry("10.96.0.78") + "---\n" + TCP_ENTRY),
    );
    e2e::eventually(
        Duration::from_secs(10),
        || {
            let answer = mesh.block_on(resolve(&dns, "db.internal.", RecordType::A, false));
            (answer.1 == ["10.96.0.78"]).then_some(())
        },
        || "the new address was not answered".into(),
    );
    assert_eq!(envoy.rejected(), 0);
    token.cancel();
}
