//! NDS: the name table Istio's agent answers DNS from (its DNS proxy,
//! `ISTIO_META_DNS_CAPTURE`), as istiod's `NdsGenerator` builds it
//! (`pkg/dns/server/name_table.go`): every service the proxy sees, by
//! hostname, with its addresses. The agent asks for the type
//! [`NAME_TABLE_TYPE`] on its xDS stream (one resource, named `""`) and
//! answers `A`/`AAAA` queries for those names (and a Kubernetes service's
//! short forms in the proxy's namespace and others) from it, so that a
//! ServiceEntry host without a DNS record resolves to its address; other
//! names go to the pod's own resolver.
//!
//! As Istio's: a service's addresses that are IPs (CIDRs left out), the
//! registry `Kubernetes` with the service's name and namespace (the agent
//! derives `name`, `name.namespace`, ...) or `External` for a ServiceEntry.
//! A ServiceEntry host without `addresses` has the one allocated to it
//! ([`crate::model::Service::vips_for`], Istio's IP auto-allocation).
//! Unlike Istio's, a service still without an address (a headless Service,
//! whose pod IPs Istio lists; a `resolution: NONE` entry) and wildcard
//! hosts are left out: the pod's resolver answers for them, so the table
//! changes only with services (never with endpoints).

use std::collections::BTreeMap;

use crate::model::{Proxy, Snapshot};

/// Type URL of NDS resources (`istio.networking.nds.v1.NameTable`).
pub const NAME_TABLE_TYPE: &str = "type.googleapis.com/istio.networking.nds.v1.NameTable";

/// `istio.networking.nds.v1.NameTable` (Istio's `pkg/dns/proto/nds.proto`):
/// hostnames to what the agent answers for them.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct NameTable {
    /// By hostname (sorted: the encoding is the same for the same table).
    #[prost(btree_map = "string, message", tag = "1")]
    pub table: BTreeMap<String, NameInfo>,
}

/// `NameTable.NameInfo`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct NameInfo {
    /// The host's IP addresses.
    #[prost(string, repeated, tag = "1")]
    pub ips: Vec<String>,
    /// The service registry: `Kubernetes` or `External` (ServiceEntries).
    #[prost(string, tag = "2")]
    pub registry: String,
    /// A Kubernetes service's name (for its short forms); else empty.
    #[prost(string, tag = "3")]
    pub shortname: String,
    /// A Kubernetes service's namespace; else empty.
    #[prost(string, tag = "4")]
    pub namespace: String,
    /// Other names of the host (none are made here).
    #[prost(string, repeated, tag = "5")]
    pub alt_hosts: Vec<String>,
}

impl prost::Name for NameTable {
    const NAME: &'static str = "NameTable";
    const PACKAGE: &'static str = "istio.networking.nds.v1";
    fn full_name() -> String {
        "istio.networking.nds.v1.NameTable".into()
    }
    fn type_url() -> String {
        NAME_TABLE_TYPE.into()
    }
}

/// The name table of `proxy`: the services it sees (visible to its
/// namespace, within its Sidecar's egress hosts) that have an IP address.
/// Empty unless its agent runs the DNS proxy ([`Proxy::dns_capture`]:
/// Istio's agent sets `ISTIO_META_DNS_CAPTURE`, whence the node metadata,
/// when it does), so that no other proxy's generation pays for it.
pub fn name_table(snap: &Snapshot, proxy: &Proxy) -> NameTable {
    let mut table = BTreeMap::new();
    if !proxy.dns_capture() {
        return NameTable { table };
    }
    for svc in snap.services_for(proxy) {
        if svc.hostname.contains('*') {
            continue;
        }
        let ips: Vec<String> = svc
            .vips_for(proxy)
            .filter(|a| a.parse::<std::net::IpAddr>().is_ok())
            .cloned()
            .collect();
        if ips.is_empty() {
            continue;
        }
        let info = if svc.kubernetes {
            NameInfo {
                ips,
                registry: "Kubernetes".into(),
                shortname: svc.name.clone(),
                namespace: svc.namespace.clone(),
                alt_hosts: Vec::new(),
            }
        } else {
            NameInfo {
                ips,
                registry: "External".into(),
                ..Default::default()
            }
        };
        table.entry(svc.hostname.clone()).or_insert(info);
    }
    NameTable { table }
}
