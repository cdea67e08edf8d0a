//! Persistent (strong sticky) sessions, as Istio builds them for a Service
//! or ServiceEntry labelled `istio.io/persistent-session` (a cookie) or
//! `istio.io/persistent-session-header` (a header)
//! ([`crate::model::PersistentSession`]):
//! - an empty Envoy stateful session filter (`StatefulSession {}`, which
//!   does nothing by itself) before the router of each outbound and gateway
//!   HTTP connection manager whose routes have a session (Istio's
//!   `EmptySessionFilter`; never on a sidecar's inbound);
//! - on the virtual host of such a service (a sidecar's outbound), or on a
//!   gateway's virtual host whose host is the service a VirtualService
//!   routes to, a `StatefulSessionPerRoute` with the session's cookie or
//!   header (Istio's `MaybeBuildStatefulSessionFilterConfig`);
//! - the service's own cluster lets a session reach `DRAINING` endpoints
//!   (`override_host_status`), and a cookie session's service keeps its
//!   draining endpoints in EDS ([`crate::model::Endpoint::draining`]).
//!
//! Istio adds the filter only when istiod runs with
//! `PILOT_ENABLE_PERSISTENT_SESSION_FILTER=true`; here the label is enough
//! (a mesh without such labels gets none of this).

use std::collections::HashMap;

use crds::VirtualServiceSpec;
use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
use envoy_types::pb::envoy::config::route::v3::VirtualHost;
use envoy_types::pb::envoy::extensions::filters::http::stateful_session::v3::{
    StatefulSession, StatefulSessionPerRoute, stateful_session_per_route,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::extensions::http::stateful_session::cookie::v3::CookieBasedSessionState;
use envoy_types::pb::envoy::extensions::http::stateful_session::header::v3::HeaderBasedSessionState;
use envoy_types::pb::envoy::r#type::http::v3::Cookie;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use prost::Message as _;

use crate::model::{Config, PersistentSession, Proxy, Snapshot};

/// Name of Envoy's stateful session filter
/// (`envoy.filters.http.stateful_session`).
pub const STATEFUL_SESSION_FILTER: &str = "envoy.filters.http.stateful_session";

/// The connection manager's stateful session filter: empty, so that each
/// virtual host with a session turns it on ([`per_host`]).
pub(crate) fn empty_filter() -> HttpFilter {
    HttpFilter {
        name: STATEFUL_SESSION_FILTER.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
            StatefulSession::default(),
        ))),
        ..Default::default()
    }
}

/// Envoy's session state for `session`: the cookie (its name and path, no
/// TTL: a browser session cookie, as Istio's newest) or the header.
fn session_state(session: &PersistentSession) -> TypedExtensionConfig {
    match session {
        PersistentSession::Cookie { name, path } => TypedExtensionConfig {
            name: "envoy.http.stateful_session.cookie".into(),
            typed_config: Some(pack_any(CookieBasedSessionState {
                cookie: Some(Cookie {
                    name: name.clone(),
                    path: path.clone(),
                    ..Default::default()
                }),
            })),
        },
        PersistentSession::Header(name) => TypedExtensionConfig {
            name: "envoy.http.stateful_session.header".into(),
            typed_config: Some(pack_any(HeaderBasedSessionState { name: name.clone() })),
        },
    }
}

/// A virtual host's `typed_per_filter_config` turning the filter on with
/// `session`.
pub(crate) fn per_host(session: &PersistentSession) -> HashMap<String, Any> {
    let per_route = StatefulSessionPerRoute {
        r#override: Some(stateful_session_per_route::Override::StatefulSession(
            StatefulSession {
                session_state: Some(session_state(session)),
                ..Default::default()
            },
        )),
    };
    [(STATEFUL_SESSION_FILTER.to_owned(), pack_any(per_route))].into()
}

/// [`per_host`] as the encoded `typed_per_filter_config` field (15) of a
/// `VirtualHost`, for the route configuration's encoder: the message's own
/// encoding with only that field set.
pub(crate) fn per_host_field(session: &PersistentSession) -> Vec<u8> {
    VirtualHost {
        typed_per_filter_config: per_host(session),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Whether a route configuration's virtual hosts turn the filter on (its
/// connection manager then carries [`empty_filter`]).
pub(crate) fn used_by(hosts: &[VirtualHost]) -> bool {
    hosts.iter().any(|vh| {
        vh.typed_per_filter_config
            .contains_key(STATEFUL_SESSION_FILTER)
    })
}

/// The session of a gateway's virtual host `host` of VirtualService `vs`,
/// as Istio's `buildGatewayHTTPRouteConfig` finds it: the service named
/// `host` when `vs` sends (or mirrors) HTTP requests to that host (short
/// names resolved in the VirtualService's namespace), and the gateway
/// sees it. A host that is not a destination (`bookinfo.example.com`
/// routing to `productpage`) has none.
pub(crate) fn of_gateway_host<'a>(
    snap: &'a Snapshot,
    proxy: &Proxy,
    vs: &Config<VirtualServiceSpec>,
    host: &str,
) -> Option<&'a PersistentSession> {
    let host = snap.resolve_host(host, &vs.namespace);
    let routed = vs.spec.http.iter().any(|r| {
        r.route
            .iter()
            .map(|d| &d.destination)
            .chain(r.mirror.iter())
            .chain(r.mirrors.iter().map(|m| &m.destination))
            .any(|d| snap.resolve_host(&d.host, &vs.namespace) == host)
    });
    if !routed {
        return None;
    }
    snap.service_for(proxy, &host)?.persistent_session.as_ref()
}
