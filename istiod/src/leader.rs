//! Leader election among the daemon's replicas, for the work only one may
//! do (writing ConfigMaps such as `istio-ca-root-cert`, patching webhook
//! configurations): a `coordination.k8s.io/v1` Lease named [`LEASE`] in the
//! daemon's namespace, held through kube-lease-manager (server-side apply:
//! a replica that applies the holder field while another owns it gets a
//! conflict, so at most one holds it).
//!
//! Serving xDS never depends on leadership: every replica serves. The
//! holder renews every [`DURATION_SECS`] − [`GRACE_SECS`] seconds; when it
//! stops (or shuts down, which releases the Lease at once) another replica
//! takes over within [`DURATION_SECS`].

use std::time::Duration;

use kube_lease_manager::{LeaseManagerBuilder, LeaseParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The Lease's name. Not Istio's own `istio-leader`, so this daemon and an
/// istiod in the same namespace do not take each other's leadership.
pub const LEASE: &str = "istiod-rs-leader";
/// How long a Lease is valid without renewal, seconds (client-go's default).
pub const DURATION_SECS: u64 = 15;
/// How long before expiry the holder renews, seconds.
pub const GRACE_SECS: u64 = 5;

/// This replica's identity: the pod name (`POD_NAME`, as Istio's
/// manifests set it from the downward API), else the host name plus the
/// process ID.
pub fn identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        })
}

/// Campaigns for the Lease until `token` is cancelled, publishing on
/// `leader` whether this replica holds it. API errors are logged and
/// retried; on cancellation a held Lease is released.
pub async fn campaign(
    client: kube::Client,
    namespace: String,
    identity: String,
    leader: watch::Sender<bool>,
    token: CancellationToken,
) {
    let mut retry = Duration::from_millis(200);
    let manager = loop {
        let built = LeaseManagerBuilder::new(client.clone(), LEASE)
            .with_namespace(namespace.clone())
            .with_parameters(LeaseParams::new(
                identity.clone(),
                DURATION_SECS,
                GRACE_SECS,
            ))
            .build()
            .await;
        match built {
            Ok(m) => break m,
            Err(e) => {
                warn!(lease = LEASE, error = %e, "leader election cannot start; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = token.cancelled() => return,
                }
                retry = (retry * 2).min(Duration::from_secs(30));
            }
        }
    };
    let (mut state, task) = manager.watch().await;
    loop {
        tokio::select! {
            changed = state.changed() => {
                if changed.is_err() {
                    break;
                }
                let is_leader = *state.borrow_and_update();
                info!(lease = LEASE, %identity, is_leader, "leadership changed");
                leader.send_replace(is_leader);
            }
            _ = token.cancelled() => break,
        }
    }
    // Closing the channel makes the manager release the Lease and stop.
    drop(state);
    leader.send_replace(false);
    match tokio::time::timeout(Duration::from_secs(5), task).await {
        Ok(Ok(Ok(_))) => info!(lease = LEASE, "lease released"),
        Ok(Ok(Err(e))) => warn!(lease = LEASE, error = %e, "lease not released"),
        Ok(Err(e)) => warn!(lease = LEASE, error = %e, "leader election task failed"),
        Err(_) => warn!(lease = LEASE, "lease release timed out"),
    }
}
