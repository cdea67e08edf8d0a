//! Pods as the kubelet and a CNI make them, in miniature: each pod is a
//! network namespace with an `eth0` (one end of a veth pair) and its own
//! address on a bridge in the test's namespace (the "node", `10.244.0.1`).
//! Nothing has a route out: the pods reach each other and the node, and
//! the service range through their sidecar's capture only.
//!
//! Code runs "in" a pod with [`Pod::run`]: on a thread that has joined the
//! pod's namespace. Processes it starts (Envoy, `iptables`, `openssl`)
//! and sockets it opens belong to the pod; an [`crate::Envoy`] started
//! there remembers it, so its admin API is reached from inside the pod.

use std::cell::RefCell;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use nix::sched::{CloneFlags, setns, unshare};

use crate::run;

/// The node's address on the pod bridge.
pub const NODE_IP: &str = "10.244.0.1";
/// The pod network (one /24 on one bridge).
pub const POD_PREFIX_LEN: u8 = 24;
const BRIDGE: &str = "cni0";

thread_local! {
    static NETNS: RefCell<Option<Arc<OwnedFd>>> = const { RefCell::new(None) };
}

/// The pod namespace the current thread runs in ([`Pod::run`]), if any.
pub(crate) fn current_netns() -> Option<Arc<OwnedFd>> {
    NETNS.with(|n| n.borrow().clone())
}

/// Runs `f` on a thread in the network namespace `netns`.
pub(crate) fn in_netns<T: Send>(netns: &Arc<OwnedFd>, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(netns.as_ref(), CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("cannot enter the pod's network namespace: {e}"));
            NETNS.with(|n| *n.borrow_mut() = Some(Arc::clone(netns)));
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// Creates the node's pod bridge (`cni0`, [`NODE_IP`]) in the current
/// (the test's own) namespace. Once per test, before [`Pod::create`].
pub fn create_pod_network() {
    run("ip", &["link", "add", BRIDGE, "type", "bridge"]);
    run(
        "ip",
        &[
            "addr",
            "add",
            &format!("{NODE_IP}/{POD_PREFIX_LEN}"),
            "dev",
            BRIDGE,
        ],
    );
    run("ip", &["link", "set", BRIDGE, "up"]);
}

/// A pod: a network namespace on the node's bridge.
pub struct Pod {
    /// Its name (for messages).
    pub name: String,
    /// Its address on the pod network.
    pub ip: String,
    netns: Arc<OwnedFd>,
}

impl Pod {
    /// A new pod at `ip` (in `10.244.0.0/24`, not [`NODE_IP`]) with `lo`
    /// and `eth0` up; called from the test's namespace after
    /// [`create_pod_network`].
    pub fn create(name: &str, ip: &str) -> Pod {
        let netns: OwnedFd = std::thread::spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("cannot create a network namespace (needs root): {e}"));
            std::fs::File::open("/proc/thread-self/ns/net")
                .expect("the new namespace")
                .into()
        })
        .join()
        .expect("namespace thread");
        // The node's end is named after the pod's last octet (15 bytes max).
        let host_end = format!("veth{}", ip.rsplit('.').next().unwrap_or(ip));
        let pod_ns = format!("/proc/{}/fd/{}", std::process::id(), netns.as_raw_fd());
        run(
            "ip",
            &[
                "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &pod_ns,
            ],
        );
        run("ip", &["link", "set", &host_end, "master", BRIDGE, "up"]);
        let pod = Pod {
            name: name.to_owned(),
            ip: ip.to_owned(),
            netns: Arc::new(netns),
        };
        pod.run(|| {
            run("ip", &["link", "set", "lo", "up"]);
            run(
                "ip",
                &[
                    "addr",
                    "add",
                    &format!("{ip}/{POD_PREFIX_LEN}"),
                    "dev",
                    "eth0",
                ],
            );
            run("ip", &["link", "set", "eth0", "up"]);
        });
        pod
    }

    /// Runs `f` in the pod (on a thread in its network namespace) and
    /// returns what it returns; a panic in `f` is the caller's.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.netns, f)
    }

    /// This pod's Envoy sidecar, in namespace `default` (node ID
    /// `sidecar~IP~NAME.default~default.svc.cluster.local`, `labels` its
    /// workload labels), its certificate from the node agent serving
    /// `sds_socket`, its config from the daemon at `xds_addr`; its admin API
    /// on 15000 inside the pod.
    pub fn start_sidecar(
        &self,
        sds_socket: &std::path::Path,
        labels: &[(&str, &str)],
        xds_addr: std::net::SocketAddr,
    ) -> crate::Envoy {
        self.start_sidecar_with(sds_socket, labels, &[], xds_addr)
    }

    /// As [`Pod::start_sidecar`], with further node `metadata` (e.g.
    /// `AUTO_REGISTER_GROUP`, as a VM's agent sets it).
    pub fn start_sidecar_with(
        &self,
        sds_socket: &std::path::Path,
        labels: &[(&str, &str)],
        metadata: &[(&str, &str)],
        xds_addr: std::net::SocketAddr,
    ) -> crate::Envoy {
        self.start_sidecar_through(sds_socket, None, labels, metadata, xds_addr)
    }

    /// As [`Pod::start_sidecar_with`]; with `xds_socket`, Envoy's xDS goes
    /// through the agent's xDS proxy there ([`crate::use_xds_socket`]).
    pub fn start_sidecar_through(
        &self,
        sds_socket: &std::path::Path,
        xds_socket: Option<&std::path::Path>,
        labels: &[(&str, &str)],
        metadata: &[(&str, &str)],
        xds_addr: std::net::SocketAddr,
    ) -> crate::Envoy {
        let node_id = format!(
            "sidecar~{}~{}.default~default.svc.cluster.local",
            self.ip, self.name
        );
        self.run(|| {
            crate::use_sds_socket(sds_socket);
            if let Some(socket) = xds_socket {
                crate::use_xds_socket(socket);
            }
            for (key, value) in metadata {
                crate::use_node_metadata(key, value);
            }
            crate::Envoy::start(&node_id, labels, xds_addr, 15000)
        })
    }

    /// What `istio-init` sets up in a pod with a sidecar: outbound capture
    /// ([`crate::capture_outbound`]) and inbound capture
    /// ([`capture_inbound`]).
    pub fn capture(&self) {
        self.run(|| {
            crate::capture_outbound();
            capture_inbound();
        });
    }
}

/// Istio's inbound capture, in the current namespace: TCP arriving for the
/// pod goes to the sidecar's 15006, except the ports Istio excludes (the
/// agent's 15020 and 15021, Envoy's Prometheus 15090).
pub fn capture_inbound() {
    run("iptables", &["-t", "nat", "-N", "ISTIO_INBOUND"]);
    run(
        "iptables",
        &[
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "-j",
            "ISTIO_INBOUND",
        ],
    );
    for port in ["15020", "15021", "15090"] {
        run(
            "iptables",
            &[
                "-t",
                "nat",
                "-A",
                "ISTIO_INBOUND",
                "-p",
                "tcp",
                "--dport",
                port,
                "-j",
                "RETURN",
            ],
        );
    }
    run(
        "iptables",
        &[
            "-t",
            "nat",
            "-A",
            "ISTIO_INBOUND",
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            "15006",
        ],
    );
}

/// The app of `pod` on its port 9080, on `rt`: answers any request with
/// the address it was called from, the XFCC header it got and the pod's
/// name, one `key=value` line each (`peer=`, `xfcc=`, `pod=`).
pub fn serve_echo(pod: &Pod, rt: &tokio::runtime::Handle) {
    serve_echo_at(pod, "0.0.0.0:9080", rt);
}

/// [`serve_echo`] listening on `addr` (`127.0.0.1:8080`: an app that
/// only its sidecar can reach).
pub fn serve_echo_at(pod: &Pod, addr: &str, rt: &tokio::runtime::Handle) {
    let listener = pod.run(|| std::net::TcpListener::bind(addr).unwrap());
    listener.set_nonblocking(true).unwrap();
    let name = pod.name.clone();
    rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let app = axum::Router::new().fallback(
            move |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<
                std::net::SocketAddr,
            >,
                  headers: axum::http::HeaderMap| async move {
                let xfcc = headers
                    .get("x-forwarded-client-cert")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                // The metadata exchange's headers, which the sidecar
                // takes out before the app.
                let exchange: Vec<&str> = headers
                    .keys()
                    .map(|k| k.as_str())
                    .filter(|k| k.starts_with("x-istio-peer"))
                    .collect();
                format!(
                    "peer={}\nxfcc={xfcc}\npod={name}\nexchange={}\n",
                    peer.ip(),
                    exchange.join(",")
                )
            },
        );
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await;
    });
}
