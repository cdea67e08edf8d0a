//! ServiceEntry checks: TCP ports without addresses, and one host and port
//! given different protocols.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::{each, full_name, namespace, pick};
use crate::hosts::scopes;
use crate::input::{Entry, Input};
use crate::message::{self, Message};

/// Whether the mesh's proxies allocate addresses to ServiceEntries
/// themselves: `defaultConfig.proxyMetadata` with `ISTIO_META_DNS_CAPTURE`
/// and `ISTIO_META_DNS_AUTO_ALLOCATE` both `"true"`.
fn auto_allocated(input: &Input) -> bool {
    let metadata = input
        .mesh
        .default_config
        .as_ref()
        .and_then(|c| c.proxy_side.get("proxyMetadata"));
    let on = |key: &str| metadata.and_then(|m| m.get(key)).and_then(|v| v.as_str()) == Some("true");
    on("ISTIO_META_DNS_CAPTURE") && on("ISTIO_META_DNS_AUTO_ALLOCATE")
}

/// A ServiceEntry without `addresses` has no address to tell its TCP ports
/// apart by: each port whose protocol is TCP or unset is
/// `ServiceEntryAddressesRequired` (IST0134), unless the proxies allocate
/// addresses (DNS capture with auto-allocation in the mesh config).
pub fn protocol_addresses(input: &Input, out: &mut Vec<Message>) {
    if auto_allocated(input) {
        return;
    }
    for (entry, se) in each(input, pick::service_entry) {
        if !se.addresses.is_empty() {
            continue;
        }
        for port in &se.ports {
            let protocol = port.protocol.as_deref().unwrap_or_default();
            if protocol.is_empty() || protocol.eq_ignore_ascii_case("TCP") {
                out.push(Message::new(
                    message::SERVICE_ENTRY_ADDRESSES_REQUIRED,
                    Some(&entry.resource),
                    Vec::new(),
                ));
            }
        }
    }
}

/// A host and port in a scope (a namespace, or `*`): `(scope, host, port)`.
type HostPort<'a> = (String, &'a str, u32);

/// ServiceEntries visible in one namespace (or everywhere) that give the
/// same host and port different protocols are each
/// `ConflictingServiceEntryProtocol` (IST0177), once, naming all of them
/// (`namespace/name`, sorted) and the protocols (upper case, sorted).
pub fn conflicting_protocols(input: &Input, out: &mut Vec<Message>) {
    let mut index: BTreeMap<HostPort<'_>, Vec<(String, &Entry)>> = BTreeMap::new();
    for (entry, se) in each(input, pick::service_entry) {
        for scope in scopes(&se.export_to, namespace(entry)) {
            for host in &se.hosts {
                for port in &se.ports {
                    let protocol = port
                        .protocol
                        .clone()
                        .unwrap_or_default()
                        .to_ascii_uppercase();
                    index
                        .entry((scope.clone(), host.as_str(), port.number))
                        .or_default()
                        .push((protocol, entry));
                }
            }
        }
    }
    let mut reported = HashSet::new();
    for ((scope, host, port), entries) in &index {
        let mut all: Vec<&(String, &Entry)> = entries.iter().collect();
        if scope != "*"
            && let Some(everywhere) = index.get(&("*".to_owned(), *host, *port))
        {
            all.extend(everywhere);
        }
        let protocols: BTreeSet<&str> = all.iter().map(|(p, _)| p.as_str()).collect();
        if protocols.len() < 2 {
            continue;
        }
        let names: BTreeSet<String> = all.iter().map(|(_, e)| full_name(e)).collect();
        let names = names.into_iter().collect::<Vec<_>>().join(", ");
        let protocols = protocols.into_iter().collect::<Vec<_>>().join(", ");
        for (_, e) in all {
            if !reported.insert(full_name(e)) {
                continue;
            }
            out.push(Message::new(
                message::CONFLICTING_SERVICE_ENTRY_PROTOCOL,
                Some(&e.resource),
                vec![
                    names.clone().into(),
                    (*host).into(),
                    (*port).into(),
                    protocols.clone().into(),
                ],
            ));
        }
    }
}
