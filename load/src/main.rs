//! `istiod-load`: see the crate docs; measures the real daemon under N
//! simulated proxies (placeholder until the full tool lands).
fn main() {}
