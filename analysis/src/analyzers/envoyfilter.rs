//! EnvoyFilter checks: operations that do nothing where they are applied,
//! and relative operations whose outcome depends on order.

use crds::envoy_filter::{ApplyTo, EnvoyConfigObjectPatch, Operation};

use super::{each, pick};
use crate::input::Input;
use crate::message::{self, Message};

/// The name a patch is about: its value's `name`, else the filter its
/// listener match names.
fn instance_name(patch: &EnvoyConfigObjectPatch) -> String {
    let value = patch.patch.as_ref().and_then(|p| p.value.as_ref());
    if let Some(name) = value.and_then(|v| v.get("name")) {
        return name.to_string();
    }
    if value.is_none() {
        return String::new();
    }
    patch
        .match_
        .as_ref()
        .and_then(|m| m.listener.as_ref())
        .and_then(|l| l.filter_chain.as_ref())
        .and_then(|c| c.filter.as_ref())
        .and_then(|f| f.name.clone())
        .unwrap_or_default()
}

/// Istio's `envoyfilter.EnvoyPatchAnalyzer`, patch by patch: `ADD` or
/// `REMOVE` on `ROUTE_CONFIGURATION` / `HTTP_ROUTE` is ignored by istiod
/// (IST0153, IST0154); `REPLACE` works on `HTTP_FILTER` and
/// `NETWORK_FILTER` only (IST0152); a relative operation (`REMOVE`,
/// `REPLACE`, `INSERT_BEFORE`, `INSERT_AFTER`) in an EnvoyFilter without a
/// `priority` may apply before what it is relative to
/// (`EnvoyFilterUsesRelativeOperation`, IST0151), and, when an
/// EnvoyFilter read before matched the same name by `proxyVersion`, may
/// stop applying during an upgrade (IST0155).
pub fn patches(input: &Input, out: &mut Vec<Message>) {
    let mut versioned: Vec<String> = Vec::new();
    for (entry, filter) in each(input, pick::envoy_filter) {
        let unprioritised = filter.priority.unwrap_or(0) == 0;
        for patch in &filter.config_patches {
            let Some(p) = &patch.patch else {
                break;
            };
            let operation = p.operation.unwrap_or(Operation::Invalid);
            let name = instance_name(patch);
            let apply_to = patch.apply_to.unwrap_or(ApplyTo::Invalid);
            let routes = matches!(apply_to, ApplyTo::RouteConfiguration | ApplyTo::HttpRoute);
            let filters = matches!(apply_to, ApplyTo::HttpFilter | ApplyTo::NetworkFilter);
            let misuse = match operation {
                Operation::Add if routes => {
                    Some(message::ENVOY_FILTER_USES_ADD_OPERATION_INCORRECTLY)
                }
                Operation::Remove if routes => {
                    Some(message::ENVOY_FILTER_USES_REMOVE_OPERATION_INCORRECTLY)
                }
                Operation::Replace if !filters => {
                    Some(message::ENVOY_FILTER_USES_REPLACE_OPERATION_INCORRECTLY)
                }
                _ => None,
            };
            let relative = matches!(
                operation,
                Operation::Remove
                    | Operation::Replace
                    | Operation::InsertBefore
                    | Operation::InsertAfter
            );
            if let Some(kind) = misuse {
                out.push(Message::new(kind, Some(&entry.resource), Vec::new()));
            } else if relative && unprioritised {
                let kind = if versioned.contains(&name) {
                    message::ENVOY_FILTER_USES_RELATIVE_OPERATION_WITH_PROXY_VERSION
                } else {
                    message::ENVOY_FILTER_USES_RELATIVE_OPERATION
                };
                out.push(Message::new(kind, Some(&entry.resource), Vec::new()));
            }
            let by_version = patch
                .match_
                .as_ref()
                .and_then(|m| m.proxy.as_ref())
                .is_some_and(|p| p.proxy_version.as_deref().is_some_and(|v| !v.is_empty()));
            if by_version {
                versioned.push(name);
            }
        }
    }
}
