//! Istio's control-plane metrics (`pilot_*`), with Istio's names and
//! meanings, plus process metrics; encoded for `/metrics` on the monitoring
//! port (Istio's 15014).
//!
//! Three metrics are this daemon's own, and named so (`istiod_` rather
//! than `pilot_`): `istiod_xds_generation_seconds`,
//! `istiod_xds_generation_cpu_seconds` and
//! `istiod_xds_generation_page_faults`, the translator's time per
//! generated config (wall clock, and the generating thread's CPU time,
//! which istiod counts inside `pilot_xds_push_time`) and the minor page
//! faults the thread took meanwhile (the memory the kernel had to
//! provide, a large part of that CPU time on a VM).
//!
//! Istio exports counters without the `_total` suffix (`pilot_xds_pushes`);
//! [`Metrics::encode`] does the same so dashboards and alerts written for
//! istiod work unchanged.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `type` label: `cds`, `eds`, `lds`, `rds`, `sds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    /// The xDS type, short form (a constant: labelling a push allocates
    /// nothing).
    pub r#type: &'static str,
}

/// `version` label of `pilot_xds`: the proxy's build version.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    /// Envoy's version (`1.40.0`), or `unknown`.
    pub version: String,
}

/// `kind` label of `istiod_xds_generation_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GenerationLabel {
    /// `first_key`: a full config from a snapshot with nothing memoised
    /// (every service's clusters, load assignments and default routes
    /// built); `full`: a full config, with what another config key or the
    /// snapshot before memoised read from the memo; `endpoints`: the load
    /// assignments of an endpoint-only change.
    pub kind: &'static str,
}

/// Bucket bounds of `istiod_xds_generation_seconds`, seconds: a quarter
/// of a millisecond apart up to 2 ms (the per-proxy generation target of
/// docs/PERFORMANCE.md), then wider up to 0.25 s.
const GENERATION_BUCKETS: [f64; 19] = [
    0.000_25, 0.000_5, 0.000_75, 0.001, 0.001_25, 0.001_5, 0.001_75, 0.002, 0.002_5, 0.003, 0.004,
    0.005, 0.007_5, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25,
];

/// Bucket bounds of `istiod_xds_generation_page_faults`, faults (4 KiB
/// pages each): ~130 is a 0.5 MiB config written into fresh pages.
const FAULT_BUCKETS: [f64; 15] = [
    10.0, 25.0, 50.0, 100.0, 150.0, 200.0, 300.0, 400.0, 500.0, 750.0, 1000.0, 1500.0, 2000.0,
    3000.0, 5000.0,
];

fn seconds_histogram() -> Histogram {
    // 1 ms .. ~33 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Every metric the daemon exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `pilot_xds`: connected proxies, by proxy version.
    pub xds_clients: Family<VersionLabel, Gauge>,
    /// `pilot_xds_pushes`: responses sent, by type.
    pub pushes: Family<TypeLabel, Counter>,
    /// `pilot_xds_push_time`: seconds from a snapshot to a response being sent, by type.
    pub push_time: Family<TypeLabel, Histogram>,
    /// `pilot_proxy_convergence_time`: seconds from a config change to a proxy having ACKed all of it.
    pub convergence: Histogram,
    /// `pilot_proxy_queue_time`: seconds a proxy's push waited after the snapshot was published.
    pub queue_time: Histogram,
    /// `pilot_push_triggers`: config changes that led to pushes, by type.
    pub triggers: Family<TypeLabel, Counter>,
    /// `pilot_total_xds_rejects`: NACKs, by type.
    pub rejects: Family<TypeLabel, Counter>,
    /// `pilot_xds_config_size_bytes`: size of each response, bytes, by type.
    pub config_size: Family<TypeLabel, Histogram>,
    /// `pilot_debounce_time`: seconds from the first change to the push (debounce).
    pub debounce_time: Histogram,
    /// `istiod_xds_generation_seconds`: seconds the translator took for one
    /// generated config (once per config key and snapshot; the proxies
    /// that share it are not counted again), by [`GenerationLabel`].
    pub generation_time: Family<GenerationLabel, Histogram>,
    /// `istiod_xds_generation_cpu_seconds`: the same generations' CPU
    /// seconds, on the generating thread (without the time it waited for a
    /// core; with the kernel's, such as page faults).
    pub generation_cpu: Family<GenerationLabel, Histogram>,
    /// `istiod_xds_generation_page_faults`: the minor page faults the
    /// generating thread took during the same generations (each a 4 KiB
    /// page the kernel mapped and zeroed; `getrusage(RUSAGE_THREAD)`).
    pub generation_faults: Family<GenerationLabel, Histogram>,
    resident_memory: Gauge,
    cpu_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    open_fds: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let xds_clients = Family::<VersionLabel, Gauge>::default();
        let pushes = Family::<TypeLabel, Counter>::default();
        let push_time = Family::<TypeLabel, Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        let convergence = seconds_histogram();
        let queue_time = seconds_histogram();
        let triggers = Family::<TypeLabel, Counter>::default();
        let rejects = Family::<TypeLabel, Counter>::default();
        let config_size = Family::<TypeLabel, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(64.0, 4.0, 12))) as fn() -> Histogram,
        );
        let debounce_time = seconds_histogram();
        let generation_histogram = || {
            Family::<GenerationLabel, Histogram>::new_with_constructor(
                (|| Histogram::new(GENERATION_BUCKETS)) as fn() -> Histogram,
            )
        };
        let (generation_time, generation_cpu) = (generation_histogram(), generation_histogram());
        let generation_faults = Family::<GenerationLabel, Histogram>::new_with_constructor(
            (|| Histogram::new(FAULT_BUCKETS)) as fn() -> Histogram,
        );
        let resident_memory = Gauge::default();
        let cpu_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let open_fds = Gauge::default();
        registry.register(
            "pilot_xds",
            "Number of endpoints connected to this pilot using XDS.",
            xds_clients.clone(),
        );
        registry.register(
            "pilot_xds_pushes",
            "Pilot build and send errors for lds, rds, cds and eds.",
            pushes.clone(),
        );
        registry.register(
            "pilot_xds_push_time",
            "Total time in seconds Pilot takes to push lds, rds, cds and eds.",
            push_time.clone(),
        );
        registry.register(
            "pilot_proxy_convergence_time",
            "Delay in seconds between config change and a proxy receiving all required configuration.",
            convergence.clone(),
        );
        registry.register(
            "pilot_proxy_queue_time",
            "Time in seconds, a proxy is in the push queue before being dequeued.",
            queue_time.clone(),
        );
        registry.register(
            "pilot_push_triggers",
            "Total number of times a push was triggered, labeled by reason for the push.",
            triggers.clone(),
        );
        registry.register(
            "pilot_total_xds_rejects",
            "Total number of XDS responses from pilot rejected by proxy.",
            rejects.clone(),
        );
        registry.register(
            "pilot_xds_config_size_bytes",
            "Distribution of configuration sizes pushed to clients",
            config_size.clone(),
        );
        registry.register("pilot_debounce_time", "Delay in seconds between the first config enters debouncing and the merged push request is pushed into the push queue.", debounce_time.clone());
        registry.register(
            "istiod_xds_generation_seconds",
            "Seconds one proxy config took to generate, by kind (first_key, full, endpoints); counted once per config key and snapshot.",
            generation_time.clone(),
        );
        registry.register(
            "istiod_xds_generation_cpu_seconds",
            "CPU seconds of the generating thread for one proxy config, by kind (first_key, full, endpoints).",
            generation_cpu.clone(),
        );
        registry.register(
            "istiod_xds_generation_page_faults",
            "Minor page faults of the generating thread for one proxy config, by kind (first_key, full, endpoints).",
            generation_faults.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            resident_memory.clone(),
        );
        registry.register(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            cpu_seconds.clone(),
        );
        registry.register(
            "process_open_fds",
            "Number of open file descriptors.",
            open_fds.clone(),
        );
        Metrics {
            registry,
            xds_clients,
            pushes,
            push_time,
            convergence,
            queue_time,
            triggers,
            rejects,
            config_size,
            debounce_time,
            generation_time,
            generation_cpu,
            generation_faults,
            resident_memory,
            cpu_seconds,
            open_fds,
        }
    }

    /// The Prometheus text exposition, process metrics read now, counters
    /// under Istio's names (no `_total`).
    pub fn encode(&self) -> String {
        self.read_process();
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            return String::new();
        }
        text.lines()
            .map(|line| {
                // `name_total{labels} value` / `name_total value` -> `name...`
                match line.split_once(['{', ' ']) {
                    Some((name, _)) if !line.starts_with('#') && name.ends_with("_total") => {
                        line.replacen(name, name.trim_end_matches("_total"), 1)
                    }
                    _ => line.to_owned(),
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    }

    fn read_process(&self) {
        // /proc/self/stat: utime and stime (fields 14, 15) in clock ticks; RSS (24) in pages.
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
            && let Some((_, rest)) = stat.rsplit_once(')')
        {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            // After the command name, field 3 (state) is index 0.
            let ticks = num(11) + num(12);
            self.cpu_seconds.set(ticks as f64 / 100.0);
            let rss_pages = num(21);
            self.resident_memory
                .set(i64::try_from(rss_pages * 4096).unwrap_or(i64::MAX));
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds
                .set(i64::try_from(dir.count()).unwrap_or(i64::MAX));
        }
    }

    /// Records one generation of `kind` (see [`GenerationLabel`]) timed
    /// by `timer`, started right before it on the same thread: its wall
    /// and CPU seconds, and its page faults.
    pub fn observe_generation(&self, kind: &'static str, timer: GenerationTimer) {
        let label = GenerationLabel { kind };
        self.generation_time
            .get_or_create(&label)
            .observe(secs(timer.wall.elapsed()));
        if let (Some(start), Some(now)) = (timer.cpu, thread_cpu()) {
            self.generation_cpu
                .get_or_create(&label)
                .observe(secs(now.saturating_sub(start)));
        }
        if let (Some(start), Some(now)) = (timer.faults, thread_faults()) {
            self.generation_faults
                .get_or_create(&label)
                .observe(now.saturating_sub(start) as f64);
        }
    }

    /// The `type` label of an xDS type URL.
    pub fn type_label(type_url: &str) -> TypeLabel {
        let short = match type_url {
            translator::CLUSTER_TYPE => "cds",
            translator::ENDPOINT_TYPE => "eds",
            translator::LISTENER_TYPE => "lds",
            translator::ROUTE_TYPE => "rds",
            translator::SECRET_TYPE => "sds",
            translator::EXTENSION_CONFIG_TYPE => "ecds",
            translator::NAME_TABLE_TYPE => "nds",
            _ => "other",
        };
        TypeLabel { r#type: short }
    }
}

/// The start of one generation, for [`Metrics::observe_generation`]:
/// the wall clock, the thread's CPU clock and its page-fault count.
#[derive(Debug)]
pub struct GenerationTimer {
    wall: std::time::Instant,
    cpu: Option<Duration>,
    faults: Option<u64>,
}

impl GenerationTimer {
    /// Both clocks and the fault count, now.
    pub fn start() -> GenerationTimer {
        GenerationTimer {
            wall: std::time::Instant::now(),
            cpu: thread_cpu(),
            faults: thread_faults(),
        }
    }
}

/// The calling thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`); None where
/// the clock cannot be read.
fn thread_cpu() -> Option<Duration> {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .ok()
        .map(Duration::from)
}

/// The minor page faults the calling thread has taken
/// (`getrusage(RUSAGE_THREAD)`'s `ru_minflt`); None where it cannot be
/// read.
fn thread_faults() -> Option<u64> {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_THREAD)
        .ok()
        .and_then(|u| u64::try_from(u.minor_page_faults()).ok())
}

/// Seconds as a histogram sample.
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_use_istio_names() {
        let m = Metrics::new();
        m.pushes
            .get_or_create(&Metrics::type_label(translator::CLUSTER_TYPE))
            .inc();
        m.rejects
            .get_or_create(&Metrics::type_label(translator::ROUTE_TYPE))
            .inc();
        let text = m.encode();
        assert!(text.contains("pilot_xds_pushes{type=\"cds\"} 1"), "{text}");
        assert!(
            text.contains("pilot_total_xds_rejects{type=\"rds\"} 1"),
            "{text}"
        );
        assert!(!text.contains("_total{"), "{text}");
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
    }

    #[test]
    fn a_generation_is_timed_on_both_clocks() {
        let m = Metrics::new();
        let timer = GenerationTimer::start();
        // Work the thread's CPU clock can see.
        let spun: u64 = (0..200_000u64).map(std::hint::black_box).sum();
        assert!(spun > 0);
        // And memory the kernel has to provide: 40 MiB written. An
        // allocation this large is a fresh mapping whatever freed before
        // it (over glibc's 32 MiB ceiling for serving large blocks from
        // its heap; jemalloc's dedicated arena keeps nothing freed).
        const FRESH: usize = 40 << 20;
        let fresh = std::hint::black_box(vec![1u8; FRESH]);
        assert_eq!(fresh.iter().map(|&b| b as usize).sum::<usize>(), FRESH);
        m.observe_generation("first_key", timer);
        let text = m.encode();
        for name in [
            "istiod_xds_generation_seconds_count{kind=\"first_key\"} 1",
            "istiod_xds_generation_cpu_seconds_count{kind=\"first_key\"} 1",
            "istiod_xds_generation_page_faults_count{kind=\"first_key\"} 1",
        ] {
            assert!(text.contains(name), "{name}: {text}");
        }
        let sum = |metric: &str| -> f64 {
            let prefix = format!("{metric}_sum{{kind=\"first_key\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .and_then(|v| v.parse().ok())
                .unwrap_or_default()
        };
        assert!(sum("istiod_xds_generation_cpu_seconds") > 0.0, "{text}");
        assert!(sum("istiod_xds_generation_page_faults") >= 1.0, "{text}");
    }
}
