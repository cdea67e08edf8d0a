//! Per-proxy generation cost: the full config (CDS, EDS, LDS, RDS) of one
//! sidecar for the generated mesh of `load::mesh` at 100 and 1000 services
//! (as prost messages; and encoded, as the daemon generates it, for a
//! snapshot's first config key and for the next, also in a mesh secured
//! with AuthorizationPolicies and RequestAuthentications), and the endpoint-only
//! regeneration for one service (encoded, as the daemon runs it).
//! `cargo bench -p load --bench generate`; figures in docs/PERFORMANCE.md.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)] // benchmark code

use std::collections::BTreeSet;

use criterion::measurement::WallTime;
use criterion::{
    BatchSize, BenchmarkGroup, BenchmarkId, Criterion, criterion_group, criterion_main,
};
use translator::model::{MeshConfig, Proxy, Snapshot};

/// The daemon's allocator (istiod's default `jemalloc` feature).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn objects(services: usize) -> Vec<crds::document::Object> {
    (0..services).flat_map(|i| objects_of(i, 90)).collect()
}

/// Service `i` of the generated mesh, its VirtualService (every fifth
/// service has one) sending `split` % to v1.
fn objects_of(i: usize, split: u32) -> Vec<crds::document::Object> {
    load::mesh::service_objects(i, 3, split).unwrap()
}

fn snapshot(services: usize) -> Snapshot {
    Snapshot::build(1, &objects(services), MeshConfig::default())
}

/// Benchmarks `run` on a snapshot made by `setup` for each sample, outside
/// the timing; what `run` returns is dropped inside it.
fn on_fresh_snapshot<S, O>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    services: usize,
    setup: impl Fn() -> S,
    run: impl Fn(&mut S) -> O,
) {
    on_fresh_snapshot_in(group, name, services, BatchSize::SmallInput, setup, run);
}

/// As [`on_fresh_snapshot`], with the batching chosen: `SmallInput`
/// prepares a tenth of a sample's snapshots at a time, all kept until the
/// batch ends; `PerIteration` prepares each right before it is timed.
fn on_fresh_snapshot_in<S, O>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    services: usize,
    batching: BatchSize,
    setup: impl Fn() -> S,
    run: impl Fn(&mut S) -> O,
) {
    group.bench_function(BenchmarkId::new(name, services), |b| {
        b.iter_batched_ref(&setup, |s| drop(std::hint::black_box(run(s))), batching)
    });
}

fn bench(c: &mut Criterion) {
    let proxy = Proxy::from_node_id(
        "sidecar~10.0.0.1~load-0.ns-0~ns-0.svc.cluster.local",
        None,
        Default::default(),
    )
    .unwrap();
    let other = Proxy::from_node_id(
        "sidecar~10.0.0.2~load-1.ns-1~ns-1.svc.cluster.local",
        None,
        Default::default(),
    )
    .unwrap();
    let mut group = c.benchmark_group("generate");
    group.sample_size(20);
    for services in [100, 1000] {
        let snap = snapshot(services);
        group.bench_with_input(BenchmarkId::new("full", services), &snap, |b, snap| {
            b.iter(|| translator::generate(snap, &proxy))
        });
        // What the daemon runs: resources encoded for the wire. First for
        // a snapshot's first config key (every service's clusters built),
        // then for a proxy in another namespace once one config is
        // generated (its listeners and routes built, the clusters and load
        // assignments read from the snapshot's memo). Each sample starts
        // from a fresh copy of the snapshot (made outside the timing); the
        // output is dropped inside it, as in `full`.
        on_fresh_snapshot(
            &mut group,
            "encoded_first_key",
            services,
            || snap.clone(),
            |s| translator::generate_encoded(s, &proxy),
        );
        // The same, each snapshot prepared right before its generation
        // (criterion's `PerIteration`): no other copy's memos in between,
        // as `load/examples/generation_time.rs` times it.
        on_fresh_snapshot_in(
            &mut group,
            "encoded_first_key_alone",
            services,
            BatchSize::PerIteration,
            || snap.clone(),
            |s| translator::generate_encoded(s, &proxy),
        );
        on_fresh_snapshot(
            &mut group,
            "encoded_next_key",
            services,
            || {
                let s = snap.clone();
                drop(translator::generate_encoded(&s, &proxy));
                s
            },
            |s| translator::generate_encoded(s, &other),
        );
        // The same in a secured mesh (`load::mesh::security_yaml`: two
        // AuthorizationPolicies and a RequestAuthentication per namespace):
        // every inbound chain gets JWT and RBAC filters.
        let with = |yaml: String| {
            let mut all = objects(services);
            for (_, value) in crds::document::split_documents(&yaml) {
                all.extend(
                    crds::document::parse_value(value.unwrap(), "default")
                        .into_iter()
                        .map(Result::unwrap),
                );
            }
            Snapshot::build(1, &all, MeshConfig::default())
        };
        let secured = with(load::mesh::security_yaml(services));
        on_fresh_snapshot(
            &mut group,
            "encoded_next_key_secured",
            services,
            || {
                let s = secured.clone();
                drop(translator::generate_encoded(&s, &proxy));
                s
            },
            |s| translator::generate_encoded(s, &other),
        );
        // And with Telemetry (`load::mesh::telemetry_yaml`: a mesh-wide
        // access log and one per namespace for failed requests served):
        // every listener's access logs merged from two levels.
        let observed = with(load::mesh::telemetry_yaml(services));
        on_fresh_snapshot(
            &mut group,
            "encoded_next_key_observed",
            services,
            || {
                let s = observed.clone();
                drop(translator::generate_encoded(&s, &proxy));
                s
            },
            |s| translator::generate_encoded(s, &other),
        );
        let objs = objects(services);
        // After a change (one VirtualService's weights) to a snapshot that
        // had generated one config: the change's first config key, with
        // what the snapshot before memoised taken over; and what taking
        // it over costs once the change set is known.
        let changed: Vec<_> = objects_of(0, 70)
            .into_iter()
            .chain((1..services).flat_map(|i| objects_of(i, 90)))
            .collect();
        let warm = snap.clone();
        drop(translator::generate_encoded(&warm, &proxy));
        let after_change = || {
            let next = Snapshot::build(2, &changed, MeshConfig::default());
            let changes = translator::changes::ChangeSet::between(&warm, &next);
            (next, changes)
        };
        on_fresh_snapshot(
            &mut group,
            "encoded_first_key_after_change",
            services,
            || {
                let (next, changes) = after_change();
                next.inherit_memos(&warm, &changes);
                next
            },
            |s| translator::generate_encoded(s, &proxy),
        );
        on_fresh_snapshot(
            &mut group,
            "inherit_memos",
            services,
            after_change,
            |(next, changes)| next.inherit_memos(&warm, changes),
        );
        group.bench_with_input(
            BenchmarkId::new("snapshot_build", services),
            &objs,
            |b, objs| b.iter(|| Snapshot::build(2, objs, MeshConfig::default())),
        );
        let next = Snapshot::build(2, &objs, MeshConfig::default());
        group.bench_with_input(
            BenchmarkId::new("change_set", services),
            &next,
            |b, next| b.iter(|| translator::changes::ChangeSet::between(&snap, next)),
        );
        // An endpoint change as the daemon handles it: the load
        // assignments of one service, encoded, for the first config key
        // (a fresh snapshot, so nothing memoised).
        let hosts: BTreeSet<String> = ["svc-1.ns-0.svc.cluster.local".to_string()].into();
        on_fresh_snapshot(
            &mut group,
            "endpoints_of_one_service",
            services,
            || snap.clone(),
            |s| translator::generate_endpoints_encoded(s, &proxy, &hosts),
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
