//! Times per-proxy generation as the daemon runs it (encoded, memoised)
//! one generation at a time, for figures that hold on a VM whose speed
//! drifts: each generation runs on a fresh copy of the snapshot of the
//! generated mesh (`load::mesh`, 1000 services), and the fastest, the
//! 10th percentile and the median are printed (microseconds).
//!
//! `cargo run --release -p load --example generation_time -- [N] [first|next] [K]`
//! - N: generations (default 200);
//! - `first`: a snapshot's first config key, nothing memoised (default);
//! - `next`: a sidecar in another namespace, once the first key is
//!   generated (and dropped) on the same copy;
//! - K: how many of the last copies (each with the memo its generation
//!   filled) are kept alive after their generation (default 0), as
//!   criterion's batches keep a batch's copies: with K > 0 a generation
//!   allocates into memory that was not just freed (cache-cold, and past
//!   some K fresh from the kernel), as the daemon does when other work
//!   ran since the last snapshot.
//!
//! Each generation here follows its own preparation, as criterion's
//! `encoded_first_key_alone` (`benches/generate.rs`) times it, with which
//! it agrees; criterion's batched `encoded_first_key` prepares a tenth of
//! a sample's snapshots at once and is slower (docs/PERFORMANCE.md,
//! seventh session). This prints the fastest and the median as well, and
//! times the next config key the same way.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)] // measurement code

use translator::model::{MeshConfig, Proxy, Snapshot};

/// The daemon's allocator (istiod's default `jemalloc` feature).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn sidecar(namespace: &str, ip: &str) -> Proxy {
    Proxy::from_node_id(
        &format!("sidecar~{ip}~load-0.{namespace}~{namespace}.svc.cluster.local"),
        None,
        Default::default(),
    )
    .expect("node ID")
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .map(|a| a.parse().expect("N: a number of generations"))
        .unwrap_or(200);
    let next = match args.next().as_deref() {
        None | Some("first") => false,
        Some("next") => true,
        Some(other) => panic!("expected `first` or `next`, not {other:?}"),
    };
    let objects: Vec<_> = (0..1000)
        .flat_map(|i| load::mesh::service_objects(i, 3, 90).expect("generated mesh"))
        .collect();
    let snap = Snapshot::build(1, &objects, MeshConfig::default());
    let first = sidecar("ns-0", "10.0.0.1");
    let other = sidecar("ns-1", "10.0.0.2");
    let keep: usize = args
        .next()
        .map(|a| a.parse().expect("K: a number of copies kept"))
        .unwrap_or(0);
    let mut kept = std::collections::VecDeque::with_capacity(keep + 1);
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let copy = snap.clone();
        let proxy = if next {
            drop(translator::generate_encoded(&copy, &first));
            &other
        } else {
            &first
        };
        let start = std::time::Instant::now();
        drop(std::hint::black_box(translator::generate_encoded(
            &copy, proxy,
        )));
        times.push(start.elapsed().as_secs_f64() * 1e6);
        if keep > 0 {
            kept.push_back(copy);
            if kept.len() > keep {
                drop(kept.pop_front());
            }
        }
    }
    times.sort_by(f64::total_cmp);
    if let (Some(min), Some(p10), Some(median)) =
        (times.first(), times.get(n / 10), times.get(n / 2))
    {
        println!("min {min:.0} p10 {p10:.0} median {median:.0} us");
    }
}
