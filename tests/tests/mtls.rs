//! `ISTIO_MUTUAL` from a real sidecar: the node agent gets productpage's
//! certificate from the daemon's CA (token-authenticated, key generated
//! locally) and serves it to Envoy over SDS; Envoy originates mTLS with
//! Istio's SNI, presents that certificate, and accepts only a server whose
//! SPIFFE ID is the destination's service account. The server is
//! `openssl s_server` demanding a client certificate from the same CA; its
//! status page echoes the certificate Envoy presented.
//! The same mTLS crosses networks through an east-west gateway (Split
//! Horizon EDS).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ca::SpiffeId;
use e2e::{
    ConfigDir, Envoy, SIDECAR, SIDECAR_LABELS, SYNC, capture_outbound, http_get, wait_synced,
};
use rcgen::{CertificateParams, KeyPair, SanType};

/// A Service `name` (ClusterIP `vip`, port 9080) whose one pod, at `ip`,
/// runs as service account `name`.
fn service(name: &str, vip: &str, ip: &str) -> String {
    format!(
        "
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  clusterIP: {vip}
  ports: [{{name: http, port: 9080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}-0, namespace: default, labels: {{app: {name}}}}}
spec: {{serviceAccountName: {name}, containers: [{{name: {name}, image: {name}}}]}}
status: {{podIP: {ip}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: 9080}}]
endpoints: [{{addresses: [{ip}], targetRef: {{kind: Pod, name: {name}-0, namespace: default}}}}]
---
"
    )
}

/// Mesh-wide `ISTIO_MUTUAL`, by a wildcard host.
const MTLS: &str = "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: mtls, namespace: default}
spec:
  host: '*.default.svc.cluster.local'
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
";

fn id(sa: &str) -> SpiffeId {
    SpiffeId {
        trust_domain: "cluster.local".into(),
        namespace: "default".into(),
        service_account: sa.into(),
    }
}

/// An `openssl s_server` with a certificate for `identity` from `authority`,
/// demanding a client certificate from the same root; killed on drop.
struct MtlsServer(Child);

impl MtlsServer {
    fn start(dir: &Path, addr: &str, authority: &ca::Authority, identity: &SpiffeId) -> MtlsServer {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into().unwrap())];
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let chain = authority.sign(&csr, identity, None).unwrap();
        let name = addr.replace([':', '.'], "-");
        let (cert, key_path, root) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
            dir.join("root.pem"),
        );
        std::fs::write(&cert, chain[..chain.len() - 1].concat()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        std::fs::write(&root, authority.root_pem()).unwrap();
        let child = Command::new("openssl")
            .args([
                "s_server", "-quiet", "-www", "-Verify", "1", "-accept", addr,
            ])
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key_path)
            .arg("-CAfile")
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "s_server on {addr} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        MtlsServer(child)
    }
}

impl Drop for MtlsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_sidecar_originates_istio_mutual_with_its_agent_issued_identity() {
    let _hosts = e2e::isolate();
    capture_outbound();
    let rt = e2e::runtime();
    let cfg = ConfigDir::bookinfo_platform();
    // `vault`'s pod presents its service account's identity; `impostor`'s
    // pod presents vault's, not its own.
    let platform = service("vault", "10.96.0.60", "127.0.1.60")
        + &service("impostor", "10.96.0.61", "127.0.1.61")
        + MTLS;
    cfg.write("mtls.yaml", &platform);
    let work = tempfile::tempdir().unwrap();
    let daemon = rt.block_on(e2e::start_daemon(cfg.path()));
    let secure = daemon.secure.as_ref().unwrap();
    let _vault = MtlsServer::start(
        work.path(),
        "127.0.1.60:9080",
        &secure.authority,
        &id("vault"),
    );
    let _impostor = MtlsServer::start(
        work.path(),
        "127.0.1.61:9080",
        &secure.authority,
        &id("vault"),
    );

    // productpage's node agent.
    let me = id("bookinfo-productpage");
    let socket = e2e::start_agent(rt.handle(), &daemon, me.clone());
    e2e::use_sds_socket(&socket);
    let envoy = Envoy::start(SIDECAR, &SIDECAR_LABELS, daemon.xds_addr, 15000);
    wait_synced(&daemon, &[&envoy], SYNC);

    // Through the sidecar, over mTLS: the server saw productpage's identity.
    let (status, page) = http_get("http://10.96.0.60:9080/", &[("host", "vault")]).unwrap();
    assert_eq!(status, 200, "{page}");
    assert_eq!(e2e::tls::first_certificate_sans(&page), [me.to_string()]);
    let dump = envoy
        .admin("/config_dump?resource=dynamic_active_clusters")
        .unwrap();
    assert!(
        dump.contains("outbound_.9080_._.vault.default.svc.cluster.local"),
        "Istio's SNI"
    );

    // A server presenting another service's identity is refused.
    let (status, page) = http_get("http://10.96.0.61:9080/", &[("host", "impostor")]).unwrap();
    assert_eq!(status, 503, "{page}");
    assert_eq!(envoy.rejected(), 0);
}

/// Multi-network (Split Horizon EDS) on real Envoys: `remote`'s one pod is
/// in network2 (its `topology.istio.io/network` label), whose east-west
/// gateway (an `AUTO_PASSTHROUGH` server on 15443, itself in network2) is
/// the mesh networks' gateway at 127.0.0.1:15443. productpage's sidecar,
/// in network1, gets the gateway as `remote`'s endpoint, not the pod; its
/// request goes over Istio mTLS through the gateway (its SNI-DNAT cluster
/// counts the connection) and the server sees productpage's identity; so
/// it does with the gateway named by DNS (the daemon resolves it). A
/// sidecar whose `REQUESTED_NETWORK_VIEW` leaves network2 out does not
/// reach it. With the gateway gone from `meshNetworks`, the pod is reached
/// directly.
#[test]
fn another_networks_endpoint_is_reached_through_its_gateway() {
    let etc_hosts = e2e::isolate();
    capture_outbound();
    let rt = e2e::runtime();
    let cfg = ConfigDir::bookinfo_platform();
    let networks = |gateways: &str| {
        format!(
            "apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  meshNetworks: |
    networks:
      network2:
        endpoints: [{{fromCidr: 127.0.1.0/24}}]
        gateways: [{gateways}]
"
        )
    };
    let platform = service("remote", "10.96.0.62", "127.0.1.62").replace(
        "labels: {app: remote}}",
        "labels: {app: remote, topology.istio.io/network: network2}}",
    ) + MTLS
        + "---\n"
        + &e2e::east_west_gateway("'*.local'");
    assert!(platform.contains("topology.istio.io/network: network2"));
    cfg.write("remote.yaml", &platform);
    cfg.write(
        "networks.yaml",
        &networks("{address: 127.0.0.1, port: 15443}"),
    );
    let work = tempfile::tempdir().unwrap();
    let daemon = rt.block_on(e2e::start_daemon(cfg.path()));
    let (_remote, gateway, envoy, me) = two_networks(
        &rt,
        &daemon,
        work.path(),
        (e2e::GATEWAY, &e2e::GATEWAY_LABELS, "istio-ingressgateway"),
    );
    let hosts = |e: &Envoy| e.hosts("outbound|9080||remote.default.svc.cluster.local");
    let through = reached_through(&envoy, &gateway, &me);

    // The gateway by DNS name, resolved by the daemon (this test's
    // /etc/hosts names it 127.0.0.2, where the gateway listens too).
    let mut names = std::fs::OpenOptions::new()
        .append(true)
        .open(&etc_hosts)
        .unwrap();
    std::io::Write::write_all(&mut names, b"127.0.0.2 eastwest.mesh.internal\n").unwrap();
    cfg.write(
        "networks.yaml",
        &networks("{address: eastwest.mesh.internal, port: 15443}"),
    );
    e2e::eventually(
        SYNC,
        || (hosts(&envoy) == ["127.0.0.2:15443"]).then_some(()),
        || format!("not through the named gateway: {:?}", hosts(&envoy)),
    );
    let before = gateway.stat(through);
    let (status, page) = http_get("http://10.96.0.62:9080/", &[("host", "remote")]).unwrap();
    assert_eq!(status, 200, "{page}");
    assert!(gateway.stat(through) > before, "{through}");

    // A sidecar whose `REQUESTED_NETWORK_VIEW` is its own network alone
    // gets no way to network2's pod: no endpoint, no answer.
    drop(envoy);
    e2e::use_node_metadata("REQUESTED_NETWORK_VIEW", "network1");
    let envoy = Envoy::start(SIDECAR, &SIDECAR_LABELS, daemon.xds_addr, 15000);
    wait_synced(&daemon, &[&envoy, &gateway], SYNC);
    assert!(hosts(&envoy).is_empty(), "{:?}", hosts(&envoy));
    let (status, _) = http_get("http://10.96.0.62:9080/", &[("host", "remote")]).unwrap();
    assert_eq!(status, 503);

    // One network again: the pod directly.
    e2e::apply(&daemon, &[&envoy, &gateway], || {
        cfg.write("networks.yaml", &networks(""));
    });
    assert_eq!(hosts(&envoy), ["127.0.1.62:9080"]);
    let (status, page) = http_get("http://10.96.0.62:9080/", &[("host", "remote")]).unwrap();
    assert_eq!(status, 200, "{page}");
    assert_eq!(envoy.rejected() + gateway.rejected(), 0);
}

/// The same with a Gateway API east-west gateway, as Istio's multi-network
/// install with the Gateway API: a Gateway labelled
/// `topology.istio.io/network: network2` with a TLS passthrough listener on
/// 15443 (auto-passthrough) and the address 127.0.0.1 is network2's
/// gateway; productpage's sidecar in network1 reaches `remote`'s pod in
/// network2 through it, over Istio mTLS, without any `meshNetworks`.
#[test]
fn a_gateway_api_east_west_gateway_carries_mtls_across_networks() {
    let _etc_hosts = e2e::isolate();
    capture_outbound();
    let rt = e2e::runtime();
    let cfg = ConfigDir::bookinfo_platform();
    let platform = service("remote", "10.96.0.62", "127.0.1.62").replace(
        "labels: {app: remote}}",
        "labels: {app: remote, topology.istio.io/network: network2}}",
    ) + MTLS
        + "---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: eastwest
  namespace: istio-system
  labels: {topology.istio.io/network: network2}
spec:
  gatewayClassName: istio
  addresses: [{type: IPAddress, value: 127.0.0.1}]
  listeners:
  - {name: cross-network, port: 15443, protocol: TLS, tls: {mode: Passthrough}}
---
apiVersion: v1
kind: Service
metadata:
  name: eastwest-istio
  namespace: istio-system
  labels: {topology.istio.io/network: network2}
spec:
  clusterIP: 10.96.0.63
  selector: {gateway.networking.k8s.io/gateway-name: eastwest}
  ports: [{name: cross-network, port: 15443}]
";
    cfg.write("remote.yaml", &platform);
    let work = tempfile::tempdir().unwrap();
    let daemon = rt.block_on(e2e::start_daemon(cfg.path()));
    let (_remote, gateway, envoy, me) = two_networks(
        &rt,
        &daemon,
        work.path(),
        (
            "router~127.0.0.1~eastwest-istio-0.istio-system~istio-system.svc.cluster.local",
            &[("gateway.networking.k8s.io/gateway-name", "eastwest")],
            "eastwest-istio",
        ),
    );
    reached_through(&envoy, &gateway, &me);
    assert_eq!(envoy.rejected() + gateway.rejected(), 0);
}

/// The two networks' proxies, for `remote`'s pod in network2 (its Istio
/// mTLS server started here, in `work`): network2's east-west gateway
/// (node ID, labels, service account in `istio-system`) and productpage's
/// sidecar in network1, each with its node agent (the gateway's clusters
/// under ISTIO_MUTUAL wait for a certificate), connected and in sync.
fn two_networks(
    rt: &tokio::runtime::Runtime,
    daemon: &istiod::Daemon,
    work: &Path,
    (node, labels, account): (&str, &[(&str, &str)], &str),
) -> (MtlsServer, Envoy, Envoy, SpiffeId) {
    let secure = daemon.secure.as_ref().unwrap();
    let remote = MtlsServer::start(work, "127.0.1.62:9080", &secure.authority, &id("remote"));
    let gateway_id = SpiffeId {
        namespace: "istio-system".into(),
        ..id(account)
    };
    let socket = e2e::start_agent(rt.handle(), daemon, gateway_id);
    e2e::use_sds_socket(&socket);
    e2e::use_network("network2");
    let gateway = Envoy::start(node, labels, daemon.xds_addr, 15100);
    let me = id("bookinfo-productpage");
    let socket = e2e::start_agent(rt.handle(), daemon, me.clone());
    e2e::use_sds_socket(&socket);
    e2e::use_network("network1");
    let envoy = Envoy::start(SIDECAR, &SIDECAR_LABELS, daemon.xds_addr, 15000);
    wait_synced(daemon, &[&envoy, &gateway], SYNC);
    (remote, gateway, envoy, me)
}

/// The sidecar `envoy` has `gateway` as `remote`'s endpoint, and its
/// request reaches the pod over Istio mTLS through it: the server saw the
/// sidecar's identity `me`, the gateway's SNI-DNAT cluster counted the
/// connection (the stat's name, returned).
fn reached_through(envoy: &Envoy, gateway: &Envoy, me: &SpiffeId) -> &'static str {
    let hosts = envoy.hosts("outbound|9080||remote.default.svc.cluster.local");
    assert_eq!(hosts, ["127.0.0.1:15443"]);
    let (status, page) = http_get("http://10.96.0.62:9080/", &[("host", "remote")]).unwrap();
    assert_eq!(status, 200, "{page}");
    assert_eq!(e2e::tls::first_certificate_sans(&page), [me.to_string()]);
    let through = "cluster.outbound_.9080_._.remote.default.svc.cluster.local.upstream_cx_total";
    assert!(gateway.stat(through) >= 1, "{through}");
    through
}
