//! What one sidecar's config weighs on the wire (encoded bytes per xDS
//! type) in the generated mesh (`load::mesh`, 1000 services by default),
//! without and with Istio's metrics (a proxy whose Envoy has the stats
//! access logger: the stats loggers on every connection manager and TCP
//! proxy, the metadata exchange's headers and filter, the clusters'
//! service metadata).
//!
//! `cargo run --release -p load --example config_size -- [SERVICES]`

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)] // measurement code

use translator::model::{MeshConfig, Proxy, Snapshot};

fn main() {
    let services: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("SERVICES: a number"))
        .unwrap_or(1000);
    let objects: Vec<_> = (0..services)
        .flat_map(|i| load::mesh::service_objects(i, 3, 90).expect("generated mesh"))
        .collect();
    let snap = Snapshot::build(1, &objects, MeshConfig::default());
    let mut proxy = Proxy::from_node_id(
        "sidecar~10.0.0.1~load-0.ns-0~ns-0.svc.cluster.local",
        None,
        Default::default(),
    )
    .expect("node ID");
    println!("services {services}: bytes per type (CDS, EDS, LDS, RDS)");
    for stats_logger in [false, true] {
        proxy.stats_logger = stats_logger;
        let out = translator::generate_encoded(&snap.clone(), &proxy);
        let size = |resources: &[translator::encoded::Encoded]| -> usize {
            resources.iter().map(|r| r.2.len()).sum()
        };
        println!(
            "metrics {stats_logger}: {} {} {} {}",
            size(&out.clusters),
            size(&out.endpoints),
            size(&out.listeners),
            size(&out.routes)
        );
        for l in &out.listeners {
            println!("  listener {}: {}", l.0, l.2.len());
        }
    }
}
