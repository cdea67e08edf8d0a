//! DNS proxying's control-plane half: the name table (NDS,
//! `istio.networking.nds.v1.NameTable`) Istio's agent asks for on its xDS
//! stream when its DNS proxy is on (`ISTIO_META_DNS_CAPTURE`), served to a
//! client that speaks as the agent does, and pushed again when a service
//! changes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use prost::Message;
use translator::nds::{NAME_TABLE_TYPE, NameInfo, NameTable};

use e2e::Mesh;

/// A ServiceEntry host without a DNS record, with the address `address`,
/// and a headless Service.
fn entries(address: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db, namespace: default}}
spec:
  hosts: [db.internal]
  addresses: [{address}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 5432, name: tcp-db, protocol: TCP}}]
  endpoints: [{{address: 127.0.1.40}}]
---
apiVersion: v1
kind: Service
metadata: {{name: stateful, namespace: default}}
spec:
  clusterIP: None
  ports: [{{name: http, port: 8080}}]
"
    )
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

/// As Istio's agent asks: the type alone, no names. The table has the
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
        let mut stream = e2e::ads_stream(
            xds,
            "sidecar~127.0.0.9~client.default~default.svc.cluster.local",
            &[("DNS_CAPTURE", "true")],
        )
        .await;
        stream
            .requests
            .send(DiscoveryRequest {
                type_url: NAME_TABLE_TYPE.into(),
                ..Default::default()
            })
            .await
            .unwrap();
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
    });
}
