//! A proxy that lets go of a type while a response of it is on its way: a
//! gateway's last `credentialName` Secret dropped, Envoy removes its SDS
//! watch and says so in a request whose nonce the next response already
//! made stale. Envoy takes that response without answering it (it watches
//! nothing of the type), so the daemon must not wait for an ACK: the
//! proxy is in sync once it said it watches nothing (SotW, a raw stream).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::{Struct, Value, value};
use istiod::{Daemon, Options};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;

const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const NODE: &str = "router~10.0.0.9~gw-0.istio-system~istio-system.svc.cluster.local";

fn config(cert: &str) -> String {
    format!(
        "apiVersion: v1
kind: Secret
metadata: {{name: cred, namespace: istio-system}}
stringData: {{tls.crt: {cert}, tls.key: KEY}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8443, name: https, protocol: HTTPS}}
    hosts: ['*']
    tls: {{mode: SIMPLE, credentialName: cred}}
"
    )
}

#[tokio::test]
async fn a_type_the_proxy_lets_go_of_is_not_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gw.yaml"), config("CERT")).unwrap();
    let daemon = Daemon::start(Options {
        source: istiod::Source::Folder(dir.path().to_owned()),
        xds_addr: "127.0.0.1:0".parse().unwrap(),
        monitoring_addr: None,
        debounce: Default::default(),
        ca: None,
        webhooks: None,
        push_throttle: 100,
        workload_entry_grace: istiod::autoregister::DEFAULT_GRACE,
        keepalive: Default::default(),
    })
    .await
    .unwrap();
    let node = Node {
        id: NODE.into(),
        metadata: Some(Struct {
            fields: [(
                "LABELS".to_owned(),
                Value {
                    kind: Some(value::Kind::StructValue(Struct {
                        fields: [(
                            "istio".to_owned(),
                            Value {
                                kind: Some(value::Kind::StringValue("ingressgateway".into())),
                            },
                        )]
                        .into(),
                    })),
                },
            )]
            .into(),
        }),
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<DiscoveryRequest>(16);
    let request = |type_url: &str, names: &[&str], nonce: &str, version: &str| DiscoveryRequest {
        node: Some(node.clone()),
        type_url: type_url.into(),
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        response_nonce: nonce.into(),
        version_info: version.into(),
        ..Default::default()
    };
    for t in [translator::CLUSTER_TYPE, translator::LISTENER_TYPE] {
        tx.send(request(t, &[], "", "")).await.unwrap();
    }
    let mut responses =
        AggregatedDiscoveryServiceClient::connect(format!("http://{}", daemon.xds_addr))
            .await
            .unwrap()
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
    let mut next = async || -> DiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(10), responses.next())
            .await
            .expect("a response")
            .unwrap()
            .unwrap()
    };
    // ACK what comes (as Envoy would), asking for the Secret once the
    // listener that names it is in.
    let secret = "kubernetes://cred";
    let mut secret_nonce = String::new();
    while secret_nonce.is_empty() {
        let r = next().await;
        let names: &[&str] = if r.type_url == SECRET_TYPE {
            &[secret]
        } else {
            &[]
        };
        tx.send(request(&r.type_url, names, &r.nonce, &r.version_info))
            .await
            .unwrap();
        if r.type_url == translator::LISTENER_TYPE {
            tx.send(request(SECRET_TYPE, &[secret], "", ""))
                .await
                .unwrap();
        }
        if r.type_url == SECRET_TYPE {
            secret_nonce = r.nonce;
        }
    }

    // The Secret changes: a new response of it goes out...
    std::fs::write(dir.path().join("gw.yaml"), config("CERT2")).unwrap();
    loop {
        let r = next().await;
        if r.type_url == SECRET_TYPE {
            break;
        }
        tx.send(request(&r.type_url, &[], &r.nonce, &r.version_info))
            .await
            .unwrap();
    }
    // ... while the proxy, not having seen it, lets go of the type.
    tx.send(request(SECRET_TYPE, &[], &secret_nonce, ""))
        .await
        .unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let version = daemon.snapshots.borrow().version;
        let synced = daemon.sync.rows().get(NODE).is_some_and(|s| {
            s.snapshot_version == version && s.in_sync() && s.types.get(SECRET_TYPE).is_none()
        });
        if synced {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still waiting: {:?}",
            daemon.sync.rows().get(NODE)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
