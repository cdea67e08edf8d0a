//! Delta (incremental) xDS with a real Envoy, as Istio's sidecars use it:
//! resources removed from config are removed from Envoy, a reconnect picks
//! up what changed meanwhile, and a NACK is recorded.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::collections::BTreeMap;

use e2e::{Mesh, NACKED_VIRTUAL_SERVICE, SYNC, tally, use_delta_xds, wait_for_nack, wait_synced};

const REVIEWS: &str = "http://10.96.0.13:9080/";

fn clusters(envoy: &e2e::Envoy) -> Vec<String> {
    envoy
        .admin("/clusters")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split("::").next())
        .map(str::to_owned)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[test]
fn removals_reconnects_and_nacks_over_delta() {
    use_delta_xds();
    let mut mesh = Mesh::start(
        true,
        &[
            ("destination-rule-reviews.yaml", "dr.yaml"),
            ("virtual-service-reviews-v3.yaml", "vs.yaml"),
        ],
    );
    let envoy = mesh.sidecar();
    assert_eq!(
        tally(REVIEWS, "reviews", &[], 10),
        BTreeMap::from([("reviews v3".to_string(), 10)])
    );
    let v3 = "outbound|9080|v3|reviews.default.svc.cluster.local".to_string();
    assert!(clusters(&envoy).contains(&v3));

    // Removal: without the DestinationRule its subset clusters go away.
    mesh.apply(&[&envoy], "vs.yaml", "");
    e2e::apply(&mesh.daemon, &[&envoy], || mesh.cfg.remove("dr.yaml"));
    envoy.wait_for(SYNC, "subset clusters removed", |e| {
        !clusters(e).contains(&v3)
    });
    assert_eq!(
        tally(REVIEWS, "reviews", &[], 60).len(),
        3,
        "all versions again"
    );

    // Reconnect: the daemon goes away, config changes, a new daemon comes.
    mesh.restart_daemon(|cfg| {
        cfg.add_sample("destination-rule-reviews.yaml", "dr.yaml");
        cfg.add_sample("virtual-service-reviews-v2-v3.yaml", "vs.yaml");
    });
    wait_synced(&mesh.daemon, &[&envoy], std::time::Duration::from_secs(40));
    let counts = tally(REVIEWS, "reviews", &[], 40);
    assert!(
        counts
            .keys()
            .all(|k| k == "reviews v2" || k == "reviews v3"),
        "{counts:?}"
    );

    // NACK: recorded, and the last good config stays.
    mesh.cfg.write("vs.yaml", NACKED_VIRTUAL_SERVICE);
    let nack = wait_for_nack(&mesh.daemon, &envoy, translator::ROUTE_TYPE);
    assert!(nack.contains("program size"), "{nack}");
    let counts = tally(REVIEWS, "reviews", &[], 20);
    assert!(
        counts
            .keys()
            .all(|k| k == "reviews v2" || k == "reviews v3"),
        "{counts:?}"
    );
}
