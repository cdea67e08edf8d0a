//! Persistent sessions (Istio's `istio.io/persistent-session` and
//! `istio.io/persistent-session-header` Service labels): the stateful
//! session filter, each virtual host's session, the service's cluster
//! letting sessions reach draining endpoints, and which draining endpoints
//! EDS keeps, on Bookinfo's platform.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::path::Path;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::HealthStatus;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::http::stateful_session::v3::{
    StatefulSession, StatefulSessionPerRoute, stateful_session_per_route,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::http::stateful_session::cookie::v3::CookieBasedSessionState;
use envoy_types::pb::envoy::extensions::http::stateful_session::header::v3::HeaderBasedSessionState;
use prost::Message;
use translator::model::{MeshConfig, Proxy, Snapshot};
use translator::session::STATEFUL_SESSION_FILTER;
use translator::{Output, generate};

/// Bookinfo's platform with `edits` (text, replacement) applied, and `extra`.
fn bookinfo(edits: &[(&str, &str)], extra: &str) -> Snapshot {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut platform =
        std::fs::read_to_string(root.join("examples/bookinfo/platform.yaml")).unwrap();
    for (from, to) in edits {
        assert!(platform.contains(from), "{from:?} not in the platform");
        platform = platform.replacen(from, to, 1);
    }
    Snapshot::build(
        1,
        &crds::objects_of(&[platform.as_str(), extra]),
        MeshConfig::default(),
    )
}

const REVIEWS_LABELS: &str = "labels: {app: reviews, service: reviews}";
const RATINGS_LABELS: &str = "labels: {app: ratings, service: ratings}";
/// reviews-v3's endpoint, then shutting down while it still serves.
const V3_READY: &str = "- addresses: [\"127.0.1.6\"]\n  conditions: {ready: true}";
const V3_DRAINING: &str =
    "- addresses: [\"127.0.1.6\"]\n  conditions: {ready: false, serving: true, terminating: true}";

fn sidecar() -> Proxy {
    Proxy::from_node_id(
        "sidecar~10.1.0.9~client.default~default.svc.cluster.local",
        None,
        Default::default(),
    )
    .unwrap()
}

fn gateway() -> Proxy {
    Proxy::from_node_id(
        "router~10.1.0.5~istio-ingressgateway-1.istio-system~istio-system.svc.cluster.local",
        None,
        [("istio".to_owned(), "ingressgateway".to_owned())].into(),
    )
    .unwrap()
}

/// The HTTP filter names of the connection manager of `listener`'s
/// default chain (or first chain).
fn http_filters(listener: &Listener) -> Vec<String> {
    let chain = listener
        .default_filter_chain
        .as_ref()
        .or(listener.filter_chains.first())
        .unwrap();
    let f = chain
        .filters
        .iter()
        .find(|f| f.name == "envoy.filters.network.http_connection_manager")
        .unwrap();
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        panic!("no typed config")
    };
    let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
    if let Some(f) = hcm
        .http_filters
        .iter()
        .find(|f| f.name == STATEFUL_SESSION_FILTER)
    {
        // Empty: the virtual hosts turn it on.
        let Some(
            envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType::TypedConfig(any),
        ) = &f.config_type
        else {
            panic!("no typed config")
        };
        assert_eq!(
            StatefulSession::decode(any.value.as_slice()).unwrap(),
            StatefulSession::default()
        );
    }
    hcm.http_filters.into_iter().map(|f| f.name).collect()
}

fn listener<'a>(out: &'a Output, name: &str) -> &'a Listener {
    out.listeners.iter().find(|l| l.name == name).unwrap()
}

fn vhost<'a>(out: &'a Output, route: &str, name: &str) -> &'a VirtualHost {
    let rc: &RouteConfiguration = out.routes.iter().find(|r| r.name == route).unwrap();
    rc.virtual_hosts
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no virtual host {name} in {route}"))
}

/// A virtual host's session: the cookie's (name, path) or the header's
/// name (with an empty path); `None` without one.
fn session_of(vh: &VirtualHost) -> Option<(String, String)> {
    let any = vh.typed_per_filter_config.get(STATEFUL_SESSION_FILTER)?;
    let per_route = StatefulSessionPerRoute::decode(any.value.as_slice()).unwrap();
    let Some(stateful_session_per_route::Override::StatefulSession(s)) = per_route.r#override
    else {
        panic!("not a session: {per_route:?}")
    };
    let state = s.session_state.unwrap();
    let value = state.typed_config.unwrap().value;
    Some(match state.name.as_str() {
        "envoy.http.stateful_session.cookie" => {
            let cookie = CookieBasedSessionState::decode(value.as_slice())
                .unwrap()
                .cookie
                .unwrap();
            assert!(cookie.ttl.is_none(), "a session cookie has no TTL");
            (cookie.name, cookie.path)
        }
        "envoy.http.stateful_session.header" => (
            HeaderBasedSessionState::decode(value.as_slice())
                .unwrap()
                .name,
            String::new(),
        ),
        other => panic!("session state {other}"),
    })
}

fn cluster<'a>(out: &'a Output, name: &str) -> &'a Cluster {
    out.clusters.iter().find(|c| c.name == name).unwrap()
}

fn override_statuses(c: &Cluster) -> Option<Vec<HealthStatus>> {
    let set = c.common_lb_config.as_ref()?.override_host_status.as_ref()?;
    Some(
        set.statuses
            .iter()
            .map(|s| HealthStatus::try_from(*s).unwrap())
            .collect(),
    )
}

/// Each endpoint of an EDS cluster: (address, health status).
fn endpoints(out: &Output, cluster: &str) -> Vec<(String, HealthStatus)> {
    let cla = out
        .endpoints
        .iter()
        .find(|c| c.cluster_name == cluster)
        .unwrap_or_else(|| panic!("no assignment for {cluster}"));
    let mut eps: Vec<(String, HealthStatus)> = cla
        .endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .map(|e| {
            use envoy_types::pb::envoy::config::core::v3::address::Address;
            use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
            let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                panic!("no endpoint")
            };
            let Some(Address::SocketAddress(sa)) = ep.address.as_ref().unwrap().address.as_ref()
            else {
                panic!("no socket address")
            };
            (
                sa.address.clone(),
                HealthStatus::try_from(e.health_status).unwrap(),
            )
        })
        .collect();
    eps.sort_by(|a, b| a.0.cmp(&b.0));
    eps
}

const REVIEWS: &str = "outbound|9080||reviews.default.svc.cluster.local";
const RATINGS: &str = "outbound|9080||ratings.default.svc.cluster.local";
const SESSION_STATUSES: [HealthStatus; 4] = [
    HealthStatus::Healthy,
    HealthStatus::Draining,
    HealthStatus::Unknown,
    HealthStatus::Degraded,
];

#[test]
fn a_mesh_without_session_labels_gets_no_session_filter_and_drops_draining_endpoints() {
    let out = generate(&bookinfo(&[(V3_READY, V3_DRAINING)], ""), &sidecar());
    let filters = http_filters(listener(&out, "0.0.0.0_9080"));
    assert!(
        !filters.iter().any(|f| f == STATEFUL_SESSION_FILTER),
        "{filters:?}"
    );
    assert_eq!(
        session_of(vhost(
            &out,
            "9080",
            "reviews.default.svc.cluster.local:9080"
        )),
        None
    );
    assert_eq!(
        endpoints(&out, REVIEWS),
        [
            ("127.0.1.4".to_owned(), HealthStatus::Unknown),
            ("127.0.1.5".to_owned(), HealthStatus::Unknown),
        ],
        "a not-ready endpoint is left out"
    );
    assert!(
        out.clusters.iter().all(|c| override_statuses(c).is_none()),
        "no cluster overrides host statuses"
    );
}

#[test]
fn a_cookie_session_turns_on_the_filter_for_its_host_and_keeps_draining_endpoints() {
    let snap = bookinfo(
        &[
            (
                REVIEWS_LABELS,
                "labels: {app: reviews, istio.io/persistent-session: sticky:/app}",
            ),
            (V3_READY, V3_DRAINING),
        ],
        "",
    );
    let out = generate(&snap, &sidecar());
    // The filter, empty, just before the router.
    let filters = http_filters(listener(&out, "0.0.0.0_9080"));
    let at = filters
        .iter()
        .position(|f| f == STATEFUL_SESSION_FILTER)
        .unwrap();
    assert_eq!(filters[at + 1], "envoy.filters.http.router", "{filters:?}");
    // Reviews' virtual host carries the cookie; the others none.
    assert_eq!(
        session_of(vhost(
            &out,
            "9080",
            "reviews.default.svc.cluster.local:9080"
        )),
        Some(("sticky".into(), "/app".into()))
    );
    assert_eq!(
        session_of(vhost(
            &out,
            "9080",
            "ratings.default.svc.cluster.local:9080"
        )),
        None
    );
    // Its own cluster lets sessions reach draining endpoints; its subsets'
    // clusters and other services' do not (as Istio's).
    assert_eq!(
        override_statuses(cluster(&out, REVIEWS)),
        Some(SESSION_STATUSES.to_vec())
    );
    assert_eq!(override_statuses(cluster(&out, RATINGS)), None);
    // The draining endpoint stays, marked DRAINING.
    assert_eq!(
        endpoints(&out, REVIEWS),
        [
            ("127.0.1.4".to_owned(), HealthStatus::Unknown),
            ("127.0.1.5".to_owned(), HealthStatus::Unknown),
            ("127.0.1.6".to_owned(), HealthStatus::Draining),
        ]
    );
    // The inbound never has the filter (Istio's sidecar inbound class).
    let inbound = out
        .listeners
        .iter()
        .find(|l| l.name == "virtualInbound")
        .unwrap();
    for chain in &inbound.filter_chains {
        let names = format!("{chain:?}");
        assert!(!names.contains(STATEFUL_SESSION_FILTER), "{}", chain.name);
    }
}

#[test]
fn the_cookie_path_defaults_to_the_root_and_the_cookie_label_wins_over_the_header_label() {
    let snap = bookinfo(
        &[(
            REVIEWS_LABELS,
            "labels: {app: reviews, istio.io/persistent-session: sticky, istio.io/persistent-session-header: x-session}",
        )],
        "",
    );
    let out = generate(&snap, &sidecar());
    assert_eq!(
        session_of(vhost(
            &out,
            "9080",
            "reviews.default.svc.cluster.local:9080"
        )),
        Some(("sticky".into(), "/".into()))
    );
}

#[test]
fn a_header_session_overrides_host_statuses_but_keeps_no_draining_endpoint() {
    let ratings_draining = (
        "- addresses: [\"127.0.1.3\"]\n  conditions: {ready: true}",
        "- addresses: [\"127.0.1.3\"]\n  conditions: {ready: true}\n- addresses: [\"127.0.1.7\"]\n  conditions: {ready: false, serving: true, terminating: true}",
    );
    let snap = bookinfo(
        &[
            (
                RATINGS_LABELS,
                "labels: {app: ratings, istio.io/persistent-session-header: x-session}",
            ),
            ratings_draining,
        ],
        "",
    );
    let out = generate(&snap, &sidecar());
    assert_eq!(
        session_of(vhost(
            &out,
            "9080",
            "ratings.default.svc.cluster.local:9080"
        )),
        Some(("x-session".into(), String::new()))
    );
    assert_eq!(
        override_statuses(cluster(&out, RATINGS)),
        Some(SESSION_STATUSES.to_vec())
    );
    // Istio keeps draining endpoints for the cookie label only.
    assert_eq!(
        endpoints(&out, RATINGS),
        [("127.0.1.3".to_owned(), HealthStatus::Unknown)]
    );
}

#[test]
fn the_draining_label_marks_a_ready_pod_draining_or_leaves_it_out() {
    let v1_draining = (
        "labels: {app: reviews, version: v1}",
        "labels: {app: reviews, version: v1, istio.io/draining: \"true\"}",
    );
    // Without a session: the labelled pod is left out though it is ready.
    let out = generate(&bookinfo(&[v1_draining], ""), &sidecar());
    let addresses: Vec<String> = endpoints(&out, REVIEWS).into_iter().map(|e| e.0).collect();
    assert_eq!(addresses, ["127.0.1.5", "127.0.1.6"]);
    // With a cookie session: kept, draining.
    let snap = bookinfo(
        &[
            v1_draining,
            (
                REVIEWS_LABELS,
                "labels: {app: reviews, istio.io/persistent-session: sticky}",
            ),
        ],
        "",
    );
    let out = generate(&snap, &sidecar());
    assert_eq!(
        endpoints(&out, REVIEWS)[0],
        ("127.0.1.4".to_owned(), HealthStatus::Draining)
    );
}

#[test]
fn a_service_entrys_labels_ask_for_a_session_too() {
    let entry = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: api
  namespace: default
  labels: {istio.io/persistent-session-header: x-api-session}
spec:
  hosts: [api.example.com]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{name: http, number: 8080, protocol: HTTP}]
  endpoints: [{address: 10.1.2.3}, {address: 10.1.2.4}]
";
    let out = generate(&bookinfo(&[], entry), &sidecar());
    assert_eq!(
        session_of(vhost(&out, "8080", "api.example.com:8080")),
        Some(("x-api-session".into(), String::new()))
    );
    assert!(
        http_filters(listener(&out, "0.0.0.0_8080"))
            .iter()
            .any(|f| f == STATEFUL_SESSION_FILTER)
    );
}

/// On a gateway, as Istio's `buildGatewayHTTPRouteConfig`: the virtual
/// host of a VirtualService host that is itself the labelled service the
/// routes go to; a host that only routes to it (`*`) gets none, and a
/// listener whose hosts have none has no filter.
#[test]
fn a_gateway_host_that_is_the_routed_service_carries_its_session() {
    let gateways = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ['*']
  - port: {number: 8080, name: http-alt, protocol: HTTP}
    hosts: [front.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  gateways: [gw]
  http:
  - route: [{destination: {host: reviews}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: front, namespace: default}
spec:
  hosts: ['*']
  gateways: [gw]
  http:
  - route: [{destination: {host: reviews}}]
";
    let snap = bookinfo(
        &[(
            REVIEWS_LABELS,
            "labels: {app: reviews, istio.io/persistent-session: sticky}",
        )],
        gateways,
    );
    let out = generate(&snap, &gateway());
    assert_eq!(
        session_of(vhost(
            &out,
            "http.80",
            "reviews.default.svc.cluster.local:80"
        )),
        Some(("sticky".into(), "/".into()))
    );
    assert_eq!(session_of(vhost(&out, "http.80", "*:80")), None);
    assert!(
        http_filters(listener(&out, "0.0.0.0_80"))
            .iter()
            .any(|f| f == STATEFUL_SESSION_FILTER)
    );
    let alt = http_filters(listener(&out, "0.0.0.0_8080"));
    assert!(!alt.iter().any(|f| f == STATEFUL_SESSION_FILTER), "{alt:?}");
    assert_eq!(
        override_statuses(cluster(&out, REVIEWS)),
        Some(SESSION_STATUSES.to_vec())
    );
}
