//! `istiod-load`: runs the real `istiod` binary on a generated mesh, connects
//! N simulated proxies (real ADS clients, SotW or Delta), and measures:
//! connect + initial config time, the time until every affected proxy has
//! a VirtualService change and an endpoint change (p50/p99/max), bytes
//! pushed, and the daemon's resident memory and CPU seconds.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use load::client::{Client, sidecar_node};
use load::{generation, mesh};
use translator::{ENDPOINT_TYPE, ROUTE_TYPE};

/// jemalloc, as the daemon: the simulated proxies share its two cores,
/// and run on the same allocator.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Measure the daemon under simulated proxies.
#[derive(Parser, Debug)]
#[command(about)]
struct Args {
    /// Services in the generated mesh (Istio's reference: 1000).
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Simulated proxies (Istio's reference: 2000).
    #[arg(long, default_value_t = 2000)]
    proxies: usize,
    /// Endpoints per service.
    #[arg(long, default_value_t = 3)]
    endpoints: usize,
    /// Use Delta xDS instead of State of the World.
    #[arg(long)]
    delta: bool,
    /// The istiod binary (default: beside this one).
    #[arg(long)]
    istiod: Option<PathBuf>,
    /// Endpoint changes to make, one after another (the first 2 s after
    /// the VirtualService change, each next one 0.3 s after the previous
    /// one has reached every proxy): the first is reported as it is, and
    /// with more, each change's p99, their median, and each one's CPU.
    #[arg(long, default_value_t = 1)]
    endpoint_changes: usize,
    /// Give up on any phase after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// Add an AuthorizationPolicy and a RequestAuthentication to every
    /// namespace (`mesh::security_yaml`): what securing the mesh costs.
    #[arg(long)]
    authz: bool,
    /// Add a mesh-wide Telemetry access log and one per namespace
    /// (`mesh::telemetry_yaml`): what the Telemetry API costs.
    #[arg(long)]
    telemetry: bool,
}

/// The daemon as a child process, stopped on drop: SIGTERM (a graceful
/// stop, which also lets a profiler wrapped around it write its report),
/// SIGKILL after 60 s.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let termed = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        while termed && Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Daemon {
    /// Resident memory, CPU seconds and page faults, from /proc.
    fn usage(&self) -> Usage {
        usage_of(self.0.id())
    }
}

/// What a process has used so far, from /proc.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    /// Resident memory, bytes (`VmRSS`).
    rss: u64,
    /// CPU seconds, user + system (in clock ticks of 10 ms).
    cpu: f64,
    /// Minor page faults (`minflt`): pages the kernel mapped (and zeroed)
    /// on first touch.
    faults: u64,
}

/// [`Usage`] of process `pid`; zeros for what cannot be read.
fn usage_of(pid: u32) -> Usage {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    // After the command's `)`: state, ppid, pgrp, session, tty_nr, tpgid,
    // flags, minflt (7), cminflt, majflt, cmajflt, utime (11), stime (12).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .take(13)
                .map(|f| f.parse().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default();
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    Usage {
        rss,
        cpu: (field(11) + field(12)) as f64 / 100.0,
        faults: field(7),
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn percentiles(v: Vec<Duration>) -> String {
    match (
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        percentile(&v, 1.0),
    ) {
        (Some(p50), Some(p99), Some(max)) => format!(
            "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        ),
        _ => "n/a".into(),
    }
}

/// The body of a GET of `url` (the daemon's monitoring port), read on a
/// blocking thread.
///
/// # Errors
/// When the request fails or the body is not text.
async fn get_text(url: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        Ok(ureq::get(&url).call()?.body_mut().read_to_string()?)
    })
    .await?
}

/// Per proxy, the daemon's own time from a change (its first config event)
/// to the proxy's ACK of all of it, read from `/debug/syncz` (`converged`:
/// the per-proxy sample of `pilot_proxy_convergence_time`), for the newest
/// snapshot any proxy has converged on.
///
/// # Errors
/// When the monitoring port does not answer, or a proxy has not ACKed that
/// snapshot.
async fn acked(mon_port: u16, proxies: usize) -> anyhow::Result<Vec<Duration>> {
    let url = format!("http://127.0.0.1:{mon_port}/debug/syncz");
    // Called once every proxy has the change; its ACKs may still be on the way.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let body = get_text(url.clone()).await?;
        let rows: Vec<serde_json::Value> = serde_json::from_str(&body)?;
        let converged: Vec<(u64, f64)> = rows
            .iter()
            .filter_map(|r| {
                let c = &r["converged"];
                Some((c["snapshot_version"].as_u64()?, c["seconds"].as_f64()?))
            })
            .collect();
        let newest = converged.iter().map(|c| c.0).max().unwrap_or_default();
        let times: Vec<Duration> = converged
            .iter()
            .filter(|c| c.0 == newest)
            .map(|c| Duration::from_secs_f64(c.1))
            .collect();
        if times.len() == proxies {
            return Ok(times);
        }
        if Instant::now() > deadline {
            bail!(
                "{} of {proxies} proxies have ACKed snapshot {newest}",
                times.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `q` quantile (0 to 1) of `v`, nearest rank; None when `v` is empty.
fn percentile(v: &[Duration], q: f64) -> Option<Duration> {
    let mut v = v.to_vec();
    v.sort();
    let at = ((v.len() as f64 - 1.0) * q).round() as usize;
    v.get(at).copied()
}

/// For each client, the time from `since` to its first response of
/// `type_url` that contains `name`.
async fn first_after(
    clients: &[Client],
    since: Instant,
    type_url: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let deadline = Instant::now() + timeout;
    loop {
        let times: Vec<Option<Duration>> = clients
            .iter()
            .map(|c| c.first_after(since, type_url, name).map(|at| at - since))
            .collect();
        let missing = times.iter().filter(|t| t.is_none()).count();
        if missing == 0 {
            return Ok(times.into_iter().flatten().collect());
        }
        if Instant::now() > deadline {
            bail!("{missing} of {} proxies never got {name}", clients.len());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The daemon's generation histograms ([`generation::WALL`],
/// [`generation::CPU`], [`generation::FAULTS`]), by kind, from `/metrics`.
///
/// # Errors
/// When the monitoring port does not answer or a histogram is malformed.
async fn generations(mon_port: u16) -> anyhow::Result<[generation::ByKind; 3]> {
    let body = get_text(format!("http://127.0.0.1:{mon_port}/metrics")).await?;
    Ok([
        generation::parse(&body, generation::WALL)?,
        generation::parse(&body, generation::CPU)?,
        generation::parse(&body, generation::FAULTS)?,
    ])
}

/// `wall ... | CPU ... | page faults ...` of what a phase added to the
/// three histograms.
fn generation_phase(before: &[generation::ByKind; 3], after: &[generation::ByKind; 3]) -> String {
    use generation::Unit;
    format!(
        "wall {} | CPU {} | page faults {}",
        generation::phase(&before[0], &after[0], Unit::Seconds),
        generation::phase(&before[1], &after[1], Unit::Seconds),
        generation::phase(&before[2], &after[2], Unit::Faults)
    )
}

fn bytes(clients: &[Client], since: Instant) -> usize {
    clients.iter().map(|c| c.bytes_after(since)).sum()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let timeout = Duration::from_secs(args.timeout_secs);
    let istiod = match &args.istiod {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("istiod"),
    };
    let dir = tempfile::tempdir()?;
    mesh::write(dir.path(), args.services, args.endpoints)?;
    if args.authz {
        std::fs::write(
            dir.path().join("security.yaml"),
            mesh::security_yaml(args.services),
        )?;
    }
    if args.telemetry {
        std::fs::write(
            dir.path().join("telemetry.yaml"),
            mesh::telemetry_yaml(args.services),
        )?;
    }
    let (xds_port, mon_port) = (free_port()?, free_port()?);
    let started = Instant::now();
    let daemon = Daemon(
        Command::new(&istiod)
            .arg("--config-dir")
            .arg(dir.path())
            .args(["--xds-addr", &format!("127.0.0.1:{xds_port}")])
            .args(["--monitoring-addr", &format!("127.0.0.1:{mon_port}")])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", istiod.display()))?,
    );
    while std::net::TcpStream::connect(("127.0.0.1", xds_port)).is_err() {
        if started.elapsed() > timeout {
            bail!("istiod did not start");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let load_time = started.elapsed();
    let rss_idle = daemon.usage().rss;
    let protocol = if args.delta { "Delta" } else { "SotW" };
    println!(
        "# istiod-load: {} services x {} endpoints, {} proxies, {protocol}",
        args.services, args.endpoints, args.proxies
    );
    println!(
        "daemon ready (config loaded) after {:.2} s, RSS {:.1} MiB",
        load_time.as_secs_f64(),
        rss_idle as f64 / 1048576.0
    );

    // Connect every proxy; namespaces as the mesh has them.
    let namespaces = args.services.div_ceil(mesh::PER_NAMESPACE).max(1);
    let addr = format!("http://127.0.0.1:{xds_port}");
    let t0 = Instant::now();
    let mut connecting = Vec::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(200));
    for j in 0..args.proxies {
        let (addr, gate) = (addr.clone(), gate.clone());
        let ns = format!("ns-{}", j % namespaces);
        let delta = args.delta;
        connecting.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            Client::connect(&addr, sidecar_node(&format!("load-{j}"), &ns), delta).await
        }));
    }
    let mut clients = Vec::new();
    for c in connecting {
        clients.push(c.await??);
    }
    while !clients.iter().all(Client::has_initial_config) {
        if t0.elapsed() > timeout {
            bail!("initial config did not arrive everywhere");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let initial = t0.elapsed();
    let connected = daemon.usage();
    let initial_bytes = bytes(&clients, t0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = daemon.usage().rss;
    println!(
        "connect + initial config, all proxies: {:.2} s; {:.1} MiB pushed; daemon CPU {:.2} s, {} page faults (start included)",
        initial.as_secs_f64(),
        initial_bytes as f64 / 1048576.0,
        connected.cpu,
        connected.faults
    );
    println!(
        "daemon RSS with proxies connected: {:.1} MiB ({:.1} KiB per proxy above idle)",
        rss_connected as f64 / 1048576.0,
        rss_connected.saturating_sub(rss_idle) as f64 / 1024.0 / args.proxies as f64
    );
    let generated = generations(mon_port).await?;
    println!(
        "per-proxy generation, connect (the daemon's account, istiod_xds_generation_seconds, _cpu_seconds and _page_faults, once per config key): {}",
        generation_phase(&Default::default(), &generated)
    );
    // Steady state: what the allocator keeps once the connect storm is over.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_steady = daemon.usage().rss;
    println!(
        "daemon RSS 5 s later: {:.1} MiB ({:.1} KiB per proxy above idle)",
        rss_steady as f64 / 1048576.0,
        rss_steady.saturating_sub(rss_idle) as f64 / 1024.0 / args.proxies as f64
    );

    // A VirtualService change (svc-0, visible to every proxy).
    let before_vs = daemon.usage();
    let t1 = Instant::now();
    mesh::replace(
        &mesh::file(dir.path(), 0),
        &mesh::service_yaml(0, args.endpoints, 50),
    )?;
    let vs = first_after(&clients, t1, ROUTE_TYPE, "8080", timeout).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_vs_usage = daemon.usage();
    println!(
        "VirtualService change -> every proxy has it: {} (incl. 100 ms debounce); {:.1} MiB pushed; daemon CPU {:.2} s, {} page faults",
        percentiles(vs),
        bytes(&clients, t1) as f64 / 1048576.0,
        after_vs_usage.cpu - before_vs.cpu,
        after_vs_usage.faults.saturating_sub(before_vs.faults)
    );
    println!(
        "VirtualService change -> every proxy ACKed (the daemon's account, /debug/syncz): {} (incl. 100 ms debounce)",
        percentiles(acked(mon_port, args.proxies).await?)
    );
    let after_vs = generations(mon_port).await?;
    println!(
        "per-proxy generation, VirtualService change: {}",
        generation_phase(&generated, &after_vs)
    );

    // Endpoint changes: svc-1 gets one more endpoint, then alternately
    // two more and one more than it started with.
    let cluster = format!(
        "outbound|8080||svc-1.{}.svc.cluster.local",
        mesh::namespace(1)
    );
    let (mut p99s, mut ack_p99s) = (Vec::new(), Vec::new());
    let (mut daemon_cpu, mut proxies_cpu, mut daemon_faults) = (Vec::new(), Vec::new(), Vec::new());
    // 2 s after the VirtualService change, so that the first endpoint
    // change is measured on its own rather than in the tail of a ~1 GB
    // push (the allocators of both processes give freed pages back for a
    // second after it).
    tokio::time::sleep(Duration::from_secs(2)).await;
    for k in 0..args.endpoint_changes.max(1) {
        let t2 = Instant::now();
        let before_eds = daemon.usage();
        let own_before = usage_of(std::process::id()).cpu;
        mesh::replace(
            &mesh::file(dir.path(), 1),
            &mesh::service_yaml(1, args.endpoints + 1 + k % 2, 90),
        )?;
        let eds = first_after(&clients, t2, ENDPOINT_TYPE, &cluster, timeout).await?;
        let after_debounce: Vec<Duration> = eds
            .iter()
            .map(|d| d.saturating_sub(Duration::from_millis(100)))
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after_eds = daemon.usage();
        let own_after = usage_of(std::process::id()).cpu;
        daemon_cpu.push(after_eds.cpu - before_eds.cpu);
        daemon_faults.push(after_eds.faults.saturating_sub(before_eds.faults));
        proxies_cpu.push(own_after - own_before);
        let acks: Vec<Duration> = acked(mon_port, args.proxies)
            .await?
            .iter()
            .map(|d| d.saturating_sub(Duration::from_millis(100)))
            .collect();
        p99s.extend(percentile(&after_debounce, 0.99));
        ack_p99s.extend(percentile(&acks, 0.99));
        if k == 0 {
            println!(
                "endpoint change -> every proxy has it: {}; after the 100 ms debounce: {}; {:.1} KiB pushed; daemon CPU {:.2} s",
                percentiles(eds),
                percentiles(after_debounce),
                bytes(&clients, t2) as f64 / 1024.0,
                after_eds.cpu - before_eds.cpu
            );
            println!(
                "endpoint change -> every proxy ACKed (the daemon's account, /debug/syncz), after the debounce: {}",
                percentiles(acks)
            );
        }
    }
    if p99s.len() > 1 {
        let each = |v: &[f64]| {
            let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
            let all: Vec<String> = v.iter().map(|c| format!("{c:.2}")).collect();
            format!("mean {mean:.3} s (each: {} s)", all.join(", "))
        };
        println!(
            "{} endpoint changes, CPU per change: daemon {}; simulated proxies {}",
            p99s.len(),
            each(&daemon_cpu),
            each(&proxies_cpu)
        );
        let faults: Vec<String> = daemon_faults.iter().map(u64::to_string).collect();
        println!(
            "{} endpoint changes, daemon page faults per change: mean {} (each: {})",
            p99s.len(),
            daemon_faults.iter().sum::<u64>() / daemon_faults.len().max(1) as u64,
            faults.join(", ")
        );
        for (what, p99s) in [("has it", &p99s), ("ACKed", &ack_p99s)] {
            let each: Vec<String> = p99s.iter().map(|d| d.as_millis().to_string()).collect();
            let mut sorted = p99s.clone();
            sorted.sort();
            println!(
                "{} endpoint changes, every proxy {what}, p99 after the debounce: median {} ms, best {} ms, worst {} ms (each: {} ms)",
                p99s.len(),
                sorted.get(sorted.len() / 2).map_or(0, Duration::as_millis),
                sorted.first().map_or(0, Duration::as_millis),
                sorted.last().map_or(0, Duration::as_millis),
                each.join(", ")
            );
        }
    }
    println!(
        "per-proxy generation, endpoint changes: {}",
        generation_phase(&after_vs, &generations(mon_port).await?)
    );
    let end = daemon.usage();
    println!(
        "daemon at the end: RSS {:.1} MiB, CPU {:.2} s, {} page faults in total",
        end.rss as f64 / 1048576.0,
        end.cpu,
        end.faults
    );
    // Once the pushes' buffers are freed and the allocator has given back
    // what it frees (jemalloc's 1 s decay, see .cargo/config.toml).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_settled = daemon.usage().rss;
    println!(
        "daemon RSS 5 s after the last change: {:.1} MiB",
        rss_settled as f64 / 1048576.0
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields of `/proc/PID/stat` read are the right ones: writing 40
    /// MiB of fresh memory (a mapping of its own under glibc) shows as that
    /// many page faults, and the resident memory holds it.
    #[test]
    fn usage_reads_faults_and_memory_of_a_process() {
        const FRESH: usize = 40 << 20;
        let before = usage_of(std::process::id());
        let fresh = std::hint::black_box(vec![1u8; FRESH]);
        let after = usage_of(std::process::id());
        assert_eq!(fresh.iter().map(|&b| b as usize).sum::<usize>(), FRESH);
        let pages = (FRESH / 4096) as u64;
        assert!(
            after.faults - before.faults >= pages / 2,
            "{before:?} -> {after:?}: fewer faults than 40 MiB of pages"
        );
        assert!(after.rss >= FRESH as u64, "{after:?}");
        assert!(after.cpu >= before.cpu);
    }
}
