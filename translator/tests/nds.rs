//! The agent's name table (NDS) and ServiceEntry address allocation, as
//! Istio's IP auto-allocation gives addresses to hosts without any for
//! proxies that capture DNS.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use translator::model::{MeshConfig, Proxy, Snapshot};
use translator::nds::name_table;

/// A TCP ServiceEntry `host` (`name` in `default`) without addresses,
/// resolution `resolution`, with `labels`.
fn entry(name: &str, host: &str, resolution: &str, labels: &str) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default, labels: {{{labels}}}}}
spec:
  hosts: [{host}]
  location: MESH_INTERNAL
  resolution: {resolution}
  ports: [{{number: 5432, name: tcp, protocol: TCP}}]
  endpoints: [{{address: 10.1.2.3}}]
"
    )
}

fn snapshot(texts: &[String]) -> Snapshot {
    Snapshot::build(1, &crds::objects_of(texts), MeshConfig::default())
}

fn sidecar(dns_capture: bool) -> Proxy {
    let mut p = Proxy::from_node_id(
        "sidecar~10.1.0.9~client.default~default.svc.cluster.local",
        None,
        Default::default(),
    )
    .unwrap();
    if dns_capture {
        p.metadata.insert("DNS_CAPTURE".into(), "true".into());
    }
    p
}

fn listeners(snap: &Snapshot, proxy: &Proxy) -> Vec<String> {
    translator::generate(snap, proxy)
        .listeners
        .into_iter()
        .map(|l| l.name)
        .filter(|n| n.ends_with("_5432"))
        .collect()
}

#[test]
fn an_entry_without_addresses_gets_one_for_proxies_that_capture_dns() {
    let snap = snapshot(&[entry("db", "db.internal", "STATIC", "")]);
    let db = &snap.services["db.internal"];
    assert!(db.vips.is_empty());
    let [address] = &db.auto_vips[..] else {
        panic!("{:?}", db.auto_vips)
    };
    assert!(address.starts_with("240.240."), "{address}");
    // A proxy that captures DNS: a listener on the address, the name
    // answered with it.
    let capturing = sidecar(true);
    assert_eq!(listeners(&snap, &capturing), [format!("{address}_5432")]);
    assert_eq!(
        name_table(&snap, &capturing).table["db.internal"].ips,
        std::slice::from_ref(address)
    );
    // Another proxy: neither (as without allocation).
    let plain = sidecar(false);
    assert!(listeners(&snap, &plain).is_empty());
    assert!(name_table(&snap, &plain).table.is_empty());
}

#[test]
fn an_address_stays_with_its_host_and_opted_out_entries_get_none() {
    let one = snapshot(&[entry("db", "db.internal", "STATIC", "")]);
    let more = snapshot(&[
        entry("db", "db.internal", "STATIC", ""),
        entry("cache", "cache.internal", "DNS", ""),
        entry(
            "opted-out",
            "quiet.internal",
            "STATIC",
            "networking.istio.io/enable-autoallocate-ip: 'false'",
        ),
        entry("passthrough", "pass.internal", "NONE", ""),
    ]);
    assert_eq!(
        one.services["db.internal"].auto_vips,
        more.services["db.internal"].auto_vips
    );
    assert_eq!(more.services["cache.internal"].auto_vips.len(), 1);
    assert_ne!(
        more.services["cache.internal"].auto_vips,
        more.services["db.internal"].auto_vips
    );
    assert!(more.services["quiet.internal"].auto_vips.is_empty());
    assert!(more.services["pass.internal"].auto_vips.is_empty());
}
