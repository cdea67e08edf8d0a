//! How xDS connections are kept alive, on a real Envoy, with test-sized
//! times. The daemon's side (istiod's keepalive options,
//! [`istiod::xds::Keepalive`]): a proxy that stops answering is let go,
//! with its state, and a connection past its maximum age is replaced by a
//! new one without the proxy losing its config. Envoy's side (the
//! bootstrap's [`istiod::bootstrap::XdsKeepalive`]): a daemon that goes
//! silent is given up and reconnected to.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::time::{Duration, Instant};

use e2e::{
    ConfigDir, Envoy, SIDECAR, SIDECAR_LABELS, SYNC, isolate, metric, runtime, start_agent,
    start_daemon_with, use_sds_socket, wait_synced,
};
use istiod::Daemon;
use istiod::xds::Keepalive;

/// A daemon on the example platform with `keepalive`, and productpage's
/// sidecar connected to it and in sync.
fn start(keepalive: Keepalive) -> (tokio::runtime::Runtime, ConfigDir, Daemon, Envoy) {
    let _hosts = isolate();
    let rt = runtime();
    let cfg = ConfigDir::bookinfo_platform();
    let daemon = rt.block_on(start_daemon_with(
        cfg.path(),
        "127.0.0.1:0".parse().unwrap(),
        keepalive,
    ));
    // Its node agent: the workload certificate its mTLS clusters wait for.
    let socket = start_agent(
        rt.handle(),
        &daemon,
        ca::SpiffeId {
            trust_domain: "cluster.local".into(),
            namespace: "default".into(),
            service_account: "bookinfo-productpage".into(),
        },
    );
    use_sds_socket(&socket);
    let envoy = Envoy::start(SIDECAR, &SIDECAR_LABELS, daemon.xds_addr, 15000);
    wait_synced(&daemon, &[&envoy], SYNC);
    (rt, cfg, daemon, envoy)
}

/// Neither PINGs nor a maximum age: the daemon keeps every connection.
fn kept() -> Keepalive {
    Keepalive {
        interval: None,
        max_connection_age: None,
        ..Default::default()
    }
}

/// `pilot_xds`: the proxies the daemon holds a stream for.
fn connected(daemon: &Daemon) -> f64 {
    metric(
        &e2e::daemon_metrics(daemon),
        "pilot_xds{version=\"1.40.0\"}",
    )
}

/// A frozen proxy (SIGSTOP: its socket open, nothing read or answered)
/// gets PINGs it does not answer; the daemon closes its connection and
/// forgets it within the interval and the timeout. Woken up, it
/// reconnects and is in sync again.
#[test]
fn a_proxy_that_stops_answering_is_let_go() {
    let (_rt, _cfg, daemon, envoy) = start(Keepalive {
        interval: Some(Duration::from_secs(1)),
        timeout: Duration::from_secs(1),
        max_connection_age: None,
        ..Default::default()
    });
    assert_eq!(connected(&daemon), 1.0);
    envoy.pause();
    let frozen = Instant::now();
    while daemon.sync.rows().contains_key(SIDECAR) {
        assert!(
            frozen.elapsed() < Duration::from_secs(10),
            "the daemon still holds the frozen proxy"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(connected(&daemon), 0.0);
    envoy.resume();
    wait_synced(&daemon, &[&envoy], SYNC);
    assert_eq!(connected(&daemon), 1.0);
}

/// With no keepalive PINGs, the same frozen proxy is held: what lets it
/// go above is the keepalive, not something else.
#[test]
fn without_pings_a_frozen_proxy_is_held() {
    let (_rt, _cfg, daemon, envoy) = start(kept());
    envoy.pause();
    std::thread::sleep(Duration::from_secs(4));
    let held = daemon.sync.rows().contains_key(SIDECAR);
    envoy.resume();
    assert!(held, "the daemon let go of a proxy without keepalive");
    assert_eq!(connected(&daemon), 1.0);
}

/// A connection past its maximum age gets a GOAWAY and its stream ends
/// after the grace: Envoy opens a new connection (not a new stream on the
/// old one, which would keep it on the same replica), gets its config
/// again and keeps serving; the daemon holds one stream for it, not two.
#[test]
fn an_aged_connection_is_replaced_by_a_new_one() {
    let (_rt, _cfg, daemon, envoy) = start(Keepalive {
        interval: None,
        max_connection_age: Some(Duration::from_secs(2)),
        max_connection_age_grace: Duration::from_secs(1),
        ..Default::default()
    });
    const CONNECTIONS: &str = "cluster.xds-grpc.upstream_cx_total";
    assert_eq!(envoy.stat(CONNECTIONS), 1);
    // Age 2 s, grace 1 s, spread at most 0.2 s: the first replacement
    // within ~3.2 s (and Envoy's reconnect backoff).
    envoy.wait_for(Duration::from_secs(15), "a new xDS connection", |e| {
        e.stat(CONNECTIONS) >= 2
    });
    wait_synced(&daemon, &[&envoy], SYNC);
    assert_eq!(envoy.stat("control_plane.connected_state"), 1);
    assert_eq!(connected(&daemon), 1.0);
    let clusters = envoy.admin("/clusters").unwrap();
    assert!(clusters.contains("outbound|9080||reviews.default.svc.cluster.local"));
    assert_eq!(envoy.rejected(), 0);
}

/// Drops every packet from the daemon's xDS port in the test's namespace
/// (`true`), or stops dropping them: the daemon looks gone to Envoy, its
/// connection open and silent.
fn silence_daemon(daemon: &Daemon, on: bool) {
    let port = daemon.xds_addr.port().to_string();
    let op = if on { "-I" } else { "-D" };
    e2e::run(
        "iptables",
        &[op, "INPUT", "-p", "tcp", "--sport", &port, "-j", "DROP"],
    );
}

fn envoy_connected(envoy: &Envoy) -> bool {
    envoy.stat("control_plane.connected_state") == 1
}

/// The other side: Envoy's own PINGs on `xds-grpc` (the bootstrap's
/// `connection_keepalive`). When the daemon goes silent, Envoy closes the
/// connection within the interval and the timeout (no config updates
/// would come on it), and reconnects once the daemon answers again.
#[test]
fn a_proxy_lets_go_of_a_silent_daemon_and_reconnects() {
    e2e::use_xds_keepalive(istiod::bootstrap::XdsKeepalive {
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
    });
    let (_rt, _cfg, daemon, envoy) = start(kept());
    assert!(envoy_connected(&envoy));
    silence_daemon(&daemon, true);
    envoy.wait_for(Duration::from_secs(10), "the connection given up", |e| {
        !envoy_connected(e)
    });
    silence_daemon(&daemon, false);
    envoy.wait_for(SYNC, "a new connection", envoy_connected);
    wait_synced(&daemon, &[&envoy], SYNC);
    assert!(envoy.stat("cluster.xds-grpc.upstream_cx_total") >= 2);
}

/// With the default 30 s interval, the same 4 s of silence leaves Envoy
/// connected: what gave up above is the keepalive.
#[test]
fn without_its_pings_a_proxy_waits_on_a_silent_daemon() {
    let (_rt, _cfg, daemon, envoy) = start(kept());
    silence_daemon(&daemon, true);
    std::thread::sleep(Duration::from_secs(4));
    let connected = envoy_connected(&envoy);
    silence_daemon(&daemon, false);
    assert!(connected, "Envoy gave up without keepalive PINGs");
}
