//! Network gateways by DNS name, resolved by the daemon as istiod resolves
//! them: a `meshNetworks` gateway whose `address` is a hostname, and a
//! gateway Service whose load balancer has a `hostname` (AWS's load
//! balancers) rather than an IP.
//!
//! The translator notes such names while building a snapshot
//! ([`translator::model::Networks::hostnames`]); this task resolves them
//! when new ones appear and again every refresh period, and when what they
//! resolve to changes it signals the config source's event channel, so
//! the next snapshot (built with [`Resolved::current`]) has the gateways'
//! addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};
use translator::model::Snapshot;

/// How often the names are resolved again (istiod re-resolves its gateway
/// names periodically; 30 s here).
pub const REFRESH: Duration = Duration::from_secs(30);

/// The names and the IPs they resolved to, shared with the publisher.
#[derive(Debug, Default)]
pub struct Resolved {
    map: Mutex<Arc<BTreeMap<String, Vec<String>>>>,
    changed: Mutex<Option<mpsc::Sender<()>>>,
}

impl Resolved {
    /// An empty map.
    pub fn new() -> Arc<Resolved> {
        Arc::default()
    }

    /// IPs by name, as last resolved (an empty list: resolved to nothing).
    pub fn current(&self) -> Arc<BTreeMap<String, Vec<String>>> {
        self.map.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Signals `events` (the config source's channel) when the map changes.
    pub fn notify(&self, events: mpsc::Sender<()>) {
        if let Ok(mut changed) = self.changed.lock() {
            *changed = Some(events);
        }
    }

    /// Stores `map`; true (and the source signalled) when it differs.
    fn store(&self, map: BTreeMap<String, Vec<String>>) -> bool {
        let Ok(mut current) = self.map.lock() else {
            return false;
        };
        if **current == map {
            return false;
        }
        *current = Arc::new(map);
        drop(current);
        if let Some(tx) = self.changed.lock().ok().and_then(|c| c.clone()) {
            let _ = tx.try_send(());
        }
        true
    }
}

/// Resolves the names each published snapshot notes, when they change and
/// every `refresh`, until `token` is cancelled.
pub fn spawn(
    resolved: Arc<Resolved>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    refresh: Duration,
    token: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut names: BTreeSet<String> = BTreeSet::new();
        let mut tick = tokio::time::interval(refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let wanted = snapshots.borrow_and_update().mesh.networks.hostnames.clone();
                    if wanted == names {
                        continue;
                    }
                    names = wanted;
                }
                _ = tick.tick() => {}
            }
            if names.is_empty() && resolved.current().is_empty() {
                continue;
            }
            let mut map = BTreeMap::new();
            for name in &names {
                map.insert(name.clone(), resolve(name).await);
            }
            if resolved.store(map) {
                debug!(names = names.len(), "network gateway names resolved anew");
            }
        }
    })
}

/// The IPs `name` resolves to (the system resolver: `/etc/hosts`, then
/// DNS), sorted; none when it does not resolve (logged).
async fn resolve(name: &str) -> Vec<String> {
    match tokio::net::lookup_host((name, 0)).await {
        Ok(addrs) => {
            let ips: BTreeSet<String> = addrs.map(|a| a.ip().to_string()).collect();
            ips.into_iter().collect()
        }
        Err(e) => {
            warn!(%name, error = %e, "network gateway name does not resolve");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn names_resolve_and_a_change_is_signalled_once() {
        let resolved = Resolved::new();
        let (tx, mut rx) = mpsc::channel(1);
        resolved.notify(tx);
        assert_eq!(
            resolve("localhost").await.first().map(String::as_str),
            Some("127.0.0.1")
        );
        assert!(resolve("no-such-name.invalid").await.is_empty());
        let map = BTreeMap::from([("localhost".to_owned(), vec!["127.0.0.1".to_owned()])]);
        assert!(resolved.store(map.clone()));
        assert!(rx.try_recv().is_ok());
        assert!(!resolved.store(map), "the same addresses: nothing to do");
        assert!(rx.try_recv().is_err());
        assert_eq!(resolved.current()["localhost"], ["127.0.0.1"]);
    }
}
