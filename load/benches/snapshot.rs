//! What precedes a push after a config change, at 1000 services (the
//! generated mesh of `load::mesh`, one file per service): reading the
//! config folder when one file changed, building the snapshot (from
//! scratch, and again from the previous one, `Snapshot::rebuild`), and the
//! change set between the two. The daemon runs these one after the other
//! before it pushes anything, so each adds to every proxy's convergence
//! time. `cargo bench -p load --bench snapshot`; figures in
//! docs/PERFORMANCE.md.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)] // benchmark code

use criterion::{Criterion, criterion_group, criterion_main};
use istiod::sources::file::{ParseCache, load_dir};
use translator::changes::ChangeSet;
use translator::model::{MeshConfig, Snapshot};

/// The daemon's allocator (istiod's default `jemalloc` feature).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const SERVICES: usize = 1000;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    load::mesh::write(dir.path(), SERVICES, 3).unwrap();
    let mut cache = ParseCache::default();
    let before = load_dir(dir.path(), &mut cache).unwrap();
    // Files changed less than a second before they were read are read
    // again on the next load; after this, only changed files are.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    drop(load_dir(dir.path(), &mut cache).unwrap());
    let first = Snapshot::rebuild(
        1,
        before.shared_objects(),
        MeshConfig::default(),
        &Snapshot::default(),
    );
    // One service's endpoints changed, as the load tool changes them.
    let path = load::mesh::file(dir.path(), 1);
    load::mesh::replace(&path, &load::mesh::service_yaml(1, 4, 90)).unwrap();
    let after = load_dir(dir.path(), &mut cache).unwrap();
    let next = Snapshot::rebuild(2, after.shared_objects(), MeshConfig::default(), &first);

    let mut group = c.benchmark_group("snapshot");
    group.sample_size(30);
    // Every file is looked at (`stat`); the changed one, written less
    // than a second ago, is read again and found unchanged by its digest
    // (the daemon parses it too, once, which this leaves out).
    group.bench_function("read_folder", |b| {
        b.iter(|| load_dir(dir.path(), &mut cache).unwrap())
    });
    group.bench_function("build", |b| {
        b.iter(|| Snapshot::build(2, after.objects(), MeshConfig::default()))
    });
    group.bench_function("rebuild_one_changed", |b| {
        b.iter(|| Snapshot::rebuild(2, after.shared_objects(), MeshConfig::default(), &first))
    });
    group.bench_function("change_set", |b| {
        b.iter(|| {
            let changes = ChangeSet::between(&first, &next);
            next.inherit_memos(&first, &changes);
            changes
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
