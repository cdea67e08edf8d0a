//! Config analysis at 1000 services (the generated mesh of `load::mesh`:
//! 3000 pods, 200 DestinationRules and VirtualServices, a secured mesh's
//! AuthorizationPolicies and RequestAuthentications): reading the objects
//! into an `analysis::Input` (each validated, as `/debug/analyze` and the
//! leader's `--enable-analysis` do), and running every analyzer.
//! `cargo bench -p load --bench analyze`; figures in docs/PERFORMANCE.md.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)] // benchmark code

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

/// The daemon's allocator (istiod's default `jemalloc` feature).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const SERVICES: usize = 1000;

fn objects() -> Vec<crds::document::Object> {
    let mut out: Vec<_> = (0..SERVICES)
        .flat_map(|i| load::mesh::service_objects(i, 3, 90).unwrap())
        .collect();
    for (_, value) in crds::document::split_documents(&load::mesh::security_yaml(SERVICES)) {
        out.extend(
            crds::document::parse_value(value.unwrap(), "default")
                .into_iter()
                .map(Result::unwrap),
        );
    }
    out
}

fn input(objects: &[crds::document::Object]) -> analysis::Input {
    let mut input = analysis::Input::new("default");
    for o in objects {
        input.add_object(o.clone(), None);
    }
    input
}

fn bench(c: &mut Criterion) {
    let objects = objects();
    let mut group = c.benchmark_group("analysis");
    group.sample_size(10);
    group.bench_function("input/1000", |b| b.iter(|| input(&objects)));
    group.bench_function("analyze/1000", |b| {
        b.iter_batched(
            || input(&objects),
            |input| analysis::analyze(&input, analysis::ALL),
            BatchSize::LargeInput,
        )
    });
    group.finish();
    let messages = analysis::analyze(&input(&objects), analysis::ALL);
    eprintln!("{} objects, {} messages", objects.len(), messages.len());
}

criterion_group!(benches, bench);
criterion_main!(benches);
