//! Translation rules, one behaviour each, on small hand-written meshes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use crds::document::{parse_value, split_documents};
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::{Pipe, address};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, filter};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route, route_action};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use prost::Message;
use translator::model::{MeshConfig, Proxy, Snapshot};
use translator::{Output, generate};

const PLATFORM: &str = "
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  clusterIP: 10.96.0.13
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: mongodb, namespace: default}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: tcp-mongo, port: 27017}]
";

fn mesh(extra: &str, mesh: MeshConfig) -> Snapshot {
    Snapshot::build(1, &crds::objects_of(&[PLATFORM, extra]), mesh)
}

fn sidecar(labels: &[(&str, &str)]) -> Proxy {
    Proxy::from_node_id(
        "sidecar~127.0.0.1~client.default~default.svc.cluster.local",
        None,
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
    .unwrap()
}

/// The `istio` mesh ConfigMap whose `mesh` key is `mesh` (one line of YAML).
fn mesh_configmap(mesh: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: |\n    {mesh}\n"
    )
}

/// The first filter of `chain`, decoded as `M` (its typed config).
fn first_filter<M: Message + Default>(chain: &FilterChain) -> M {
    let Some(filter::ConfigType::TypedConfig(any)) = &chain.filters[0].config_type else {
        panic!("no typed config: {chain:?}")
    };
    M::decode(any.value.as_slice()).unwrap()
}

/// The tracer `t` names (Envoy's extension name) and its config, decoded
/// as `M`.
fn tracer<M: Message + Default>(
    t: envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing,
) -> (String, M) {
    use envoy_types::pb::envoy::config::trace::v3::tracing;
    let provider = t.provider.expect("a tracer");
    let Some(tracing::http::ConfigType::TypedConfig(any)) = provider.config_type else {
        panic!("no typed config: {}", provider.name)
    };
    (provider.name, M::decode(any.value.as_slice()).unwrap())
}

/// The Zipkin collector's Service in `istio-system` (port 9411).
const ZIPKIN_SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: zipkin, namespace: istio-system}
spec:
  clusterIP: 10.96.0.90
  ports: [{name: http-query, port: 9411}]
";

/// The cluster `name` in `out`.
fn cluster<'a>(
    out: &'a Output,
    name: &str,
) -> &'a envoy_types::pb::envoy::config::cluster::v3::Cluster {
    out.clusters
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no cluster {name}"))
}

/// The HTTP connection manager of the sidecar's outbound listener for
/// port 9080.
fn hcm_9080(
    out: &Output,
) -> envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager{
    let listener = out
        .listeners
        .iter()
        .find(|l| l.name == "0.0.0.0_9080")
        .unwrap();
    first_filter(listener.default_filter_chain.as_ref().unwrap())
}

fn route_config<'a>(out: &'a Output, name: &str) -> &'a RouteConfiguration {
    out.routes.iter().find(|r| r.name == name).unwrap()
}

fn reviews_routes(out: &Output) -> Vec<route::Action> {
    route_config(out, "9080")
        .virtual_hosts
        .iter()
        .find(|v| v.name == "reviews.default.svc.cluster.local:9080")
        .unwrap()
        .routes
        .iter()
        .map(|r| r.action.clone().unwrap())
        .collect()
}

/// Istio's domains for a service seen from its own namespace, without
/// `:port` variants: the route configuration ignores the `Host` header's
/// port, as Istio's sidecar routes have since 1.16.
#[test]
fn default_route_and_istio_domains() {
    let out = generate(&mesh("", MeshConfig::default()), &sidecar(&[]));
    let rc = route_config(&out, "9080");
    assert!(rc.ignore_port_in_host_matching);
    let vh = rc
        .virtual_hosts
        .iter()
        .find(|v| v.name == "reviews.default.svc.cluster.local:9080")
        .unwrap();
    assert_eq!(
        vh.domains,
        [
            "reviews.default.svc.cluster.local",
            "reviews.default.svc",
            "reviews.default",
            "reviews",
            "10.96.0.13",
        ]
    );
    let Some(route::Action::Route(a)) = &vh.routes[0].action else {
        panic!()
    };
    assert_eq!(
        a.cluster_specifier,
        Some(route_action::ClusterSpecifier::Cluster(
            "outbound|9080||reviews.default.svc.cluster.local".into()
        ))
    );
}

#[test]
fn short_names_only_in_the_same_namespace() {
    let other = Proxy::from_node_id(
        "sidecar~127.0.0.1~c.other~other.svc.cluster.local",
        None,
        Default::default(),
    )
    .unwrap();
    let out = generate(&mesh("", MeshConfig::default()), &other);
    let vh = &route_config(&out, "9080").virtual_hosts[0];
    assert!(!vh.domains.contains(&"reviews".to_string()));
    assert!(vh.domains.contains(&"reviews.default".to_string()));
}

#[test]
fn redirect_and_direct_response() {
    let vs = "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, authority: example.com, redirectCode: 302}
  - match: [{uri: {prefix: /binary}}]
    directResponse: {status: 200, body: {bytes: AAEC/w==}}
  - directResponse: {status: 418, body: {string: teapot}}
";
    let out = generate(&mesh(vs, MeshConfig::default()), &sidecar(&[]));
    let actions = reviews_routes(&out);
    let route::Action::Redirect(r) = &actions[0] else {
        panic!("{:?}", actions[0])
    };
    assert_eq!(r.host_redirect, "example.com");
    assert_eq!(r.response_code, 1, "302 is Envoy's FOUND");
    let body = |i: usize| {
        let route::Action::DirectResponse(d) = &actions[i] else {
            panic!("{:?}", actions[i])
        };
        (d.status, d.body.clone().unwrap().specifier.unwrap())
    };
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    // `bytes` are base64, sent decoded.
    assert_eq!(body(1), (200, Specifier::InlineBytes(vec![0, 1, 2, 255])));
    assert_eq!(body(2), (418, Specifier::InlineString("teapot".into())));
    // Bytes that are not base64 are refused by validation, naming them.
    let bad = vs.replace("AAEC/w==", "not*base64");
    let err = crds::validation_error(&bad);
    assert!(
        err.contains("spec.http[1].directResponse.body.bytes"),
        "{err}"
    );
}

#[test]
fn source_labels_select_routes_per_proxy() {
    let vs = "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{sourceLabels: {app: productpage}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]
";
    let snap = mesh(vs, MeshConfig::default());
    assert_eq!(
        reviews_routes(&generate(&snap, &sidecar(&[("app", "productpage")]))).len(),
        2
    );
    assert_eq!(
        reviews_routes(&generate(&snap, &sidecar(&[("app", "other")]))).len(),
        1
    );
}

#[test]
fn weights_zero_everywhere_are_refused_with_the_field() {
    let vs = "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 0}
    - {destination: {host: reviews, subset: v2}, weight: 0}
";
    let out = generate(&mesh(vs, MeshConfig::default()), &sidecar(&[]));
    assert!(reviews_routes(&out).is_empty());
    let w: Vec<_> = out
        .warnings
        .iter()
        .filter(|w| w.field == "spec.http[0].route")
        .collect();
    assert_eq!(w.len(), 1, "{:?}", out.warnings);
    assert_eq!(w[0].object, "default/reviews");
}

#[test]
fn registry_only_sends_unknown_traffic_to_the_blackhole() {
    let snap = mesh(
        "",
        MeshConfig {
            allow_any: false,
            ..Default::default()
        },
    );
    let out = generate(&snap, &sidecar(&[]));
    let vh = route_config(&out, "9080")
        .virtual_hosts
        .last()
        .unwrap()
        .clone();
    assert_eq!(vh.name, "block_all");
    let Some(route::Action::DirectResponse(d)) = &vh.routes[0].action else {
        panic!("{:?}", vh.routes[0])
    };
    assert_eq!(
        d.status, 502,
        "Istio answers 502 for hosts outside the registry"
    );
    // And TCP to unknown destinations goes nowhere.
    let outbound = out
        .listeners
        .iter()
        .find(|l| l.name == "virtualOutbound")
        .unwrap();
    let tcp: TcpProxy = first_filter(&outbound.filter_chains[0]);
    assert_eq!(
        tcp.cluster_specifier,
        Some(tcp_proxy::ClusterSpecifier::Cluster(
            "BlackHoleCluster".into()
        ))
    );
}

/// `loadBalancer.warmup` as Istio's `setWarmup`: the window, the curve's
/// aggression (default 1) and minimum weight (default 10 %); with only
/// `warmupDurationSecs`, the window alone.
#[test]
fn warmup_sets_the_slow_start_curve() {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::LbConfig;
    let slow_start = |lb: &str| {
        let dr = format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r, namespace: default}}\nspec: {{host: reviews, trafficPolicy: {{loadBalancer: {lb}}}}}\n"
        );
        let out = generate(&mesh(&dr, MeshConfig::default()), &sidecar(&[]));
        let c = cluster(&out, "outbound|9080||reviews.default.svc.cluster.local");
        match c.lb_config.clone() {
            Some(LbConfig::RoundRobinLbConfig(rr)) => rr.slow_start_config.unwrap(),
            Some(LbConfig::LeastRequestLbConfig(lr)) => lr.slow_start_config.unwrap(),
            other => panic!("{other:?}"),
        }
    };
    let s = slow_start(
        "{simple: ROUND_ROBIN, warmup: {duration: 30s, minimumPercent: 25, aggression: 2}}",
    );
    assert_eq!(s.slow_start_window.map(|d| d.seconds), Some(30));
    assert_eq!(s.aggression.map(|a| a.default_value), Some(2.0));
    assert_eq!(s.min_weight_percent.map(|p| p.value), Some(25.0));
    let s = slow_start("{warmup: {duration: 30s}}");
    assert_eq!(
        (
            s.aggression.map(|a| a.default_value),
            s.min_weight_percent.map(|p| p.value)
        ),
        (Some(1.0), Some(10.0))
    );
    let s = slow_start("{simple: ROUND_ROBIN, warmupDurationSecs: 20s}");
    assert_eq!(s.slow_start_window.map(|d| d.seconds), Some(20));
    assert!(s.aggression.is_none() && s.min_weight_percent.is_none());
}

/// Sidecar `outboundTrafficPolicy.egressProxy`: under ALLOW_ANY, what
/// is outside the registry goes to that service (the catch-all TCP proxy,
/// and the routes' `allow_any` host) instead of passing through.
#[test]
fn an_egress_proxy_takes_traffic_outside_the_registry() {
    let sidecar_resource = |mode: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: default}}
spec:
  outboundTrafficPolicy:
    mode: {mode}
    egressProxy: {{host: reviews, subset: egress, port: {{number: 9080}}}}
"
        )
    };
    let out = generate(
        &mesh(&sidecar_resource("ALLOW_ANY"), MeshConfig::default()),
        &sidecar(&[]),
    );
    let proxy = "outbound|9080|egress|reviews.default.svc.cluster.local";
    // A Sidecar without `egress` imports every service (Istio's `*/*`).
    assert!(
        out.clusters
            .iter()
            .any(|c| c.name == "outbound|9080||reviews.default.svc.cluster.local")
    );
    let outbound = out
        .listeners
        .iter()
        .find(|l| l.name == "virtualOutbound")
        .unwrap();
    let tcp: TcpProxy = first_filter(&outbound.filter_chains[0]);
    assert_eq!(
        tcp.cluster_specifier,
        Some(tcp_proxy::ClusterSpecifier::Cluster(proxy.into()))
    );
    let vh = route_config(&out, "9080")
        .virtual_hosts
        .iter()
        .find(|v| v.name == "allow_any")
        .unwrap();
    let Some(route::Action::Route(action)) = &vh.routes[0].action else {
        panic!("{:?}", vh.routes[0])
    };
    assert_eq!(
        action.cluster_specifier,
        Some(route_action::ClusterSpecifier::Cluster(proxy.into()))
    );
    // Only with ALLOW_ANY, as Istio's validation.
    let refused = crds::refusal(&sidecar_resource("REGISTRY_ONLY")).unwrap();
    assert_eq!(refused.0, "spec.outboundTrafficPolicy.egressProxy");
}

#[test]
fn tcp_services_get_a_listener_on_their_vip() {
    let out = generate(&mesh("", MeshConfig::default()), &sidecar(&[]));
    let l = out
        .listeners
        .iter()
        .find(|l| l.name == "10.96.0.20_27017")
        .unwrap();
    assert_eq!(l.bind_to_port.map(|b| b.value), Some(false));
    assert!(out.routes.iter().all(|r| r.name != "27017"));
}

/// ServiceEntry `DYNAMIC_DNS` (Istio's dynamic forward proxy): the
/// wildcard host's cluster is Envoy's dynamic forward proxy cluster on
/// the DNS cache `<host>_dfp_dns_cache` (IPv4), the HTTP port's connection
/// manager has the DFP filter on the same cache, and a second such host on
/// the port is reported (one cache per connection manager).
#[test]
fn dynamic_dns_entries_are_dynamic_forward_proxy_clusters() {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, LbPolicy};
    use envoy_types::pb::envoy::extensions::clusters::dynamic_forward_proxy::v3::{
        ClusterConfig, cluster_config,
    };
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    let entry = |name: &str, host: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: ['{host}']
  ports: [{{number: 8081, name: http, protocol: HTTP}}]
  resolution: DYNAMIC_DNS
---
"
        )
    };
    let snap = mesh(&entry("dyn", "*.dyn.example.com"), MeshConfig::default());
    let out = generate(&snap, &sidecar(&[]));
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    let c = cluster(&out, "outbound|8081||*.dyn.example.com");
    assert_eq!(c.lb_policy, LbPolicy::ClusterProvided as i32);
    let Some(ClusterDiscoveryType::ClusterType(custom)) = &c.cluster_discovery_type else {
        panic!("not a custom cluster type: {c:?}");
    };
    assert_eq!(custom.name, "envoy.clusters.dynamic_forward_proxy");
    let config =
        ClusterConfig::decode(custom.typed_config.as_ref().unwrap().value.as_slice()).unwrap();
    let Some(cluster_config::ClusterImplementationSpecifier::DnsCacheConfig(cache)) =
        config.cluster_implementation_specifier
    else {
        panic!("no DNS cache")
    };
    assert_eq!(cache.name, "*.dyn.example.com_dfp_dns_cache");
    let listener = out
        .listeners
        .iter()
        .find(|l| l.name == "0.0.0.0_8081")
        .unwrap();
    let chain = listener.default_filter_chain.as_ref().unwrap();
    let hcm: HttpConnectionManager = first_filter(chain);
    assert_eq!(
        hcm.http_filters[0].name,
        "envoy.filters.http.dynamic_forward_proxy"
    );
    let two = mesh(
        &(entry("dyn", "*.dyn.example.com") + &entry("other", "*.other.example.com")),
        MeshConfig::default(),
    );
    let out = generate(&two, &sidecar(&[]));
    let warned: Vec<&str> = out.warnings.iter().map(|w| w.field.as_str()).collect();
    assert_eq!(warned, ["spec.resolution"]);
}

/// A `resolution: DNS` ServiceEntry for `httpbin.example.com:80`.
const HTTPBIN_DNS: &str = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin-ext}
spec:
  hosts: [httpbin.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
";

#[test]
fn dns_service_entries_are_strict_dns_clusters() {
    let se = HTTPBIN_DNS;
    let out = generate(&mesh(se, MeshConfig::default()), &sidecar(&[]));
    let c = cluster(&out, "outbound|80||httpbin.example.com");
    assert_eq!(
        c.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32))
    );
    assert!(
        out.endpoints.iter().all(|e| e.cluster_name != c.name),
        "DNS clusters carry their own endpoints"
    );
    let vh = route_config(&out, "80")
        .virtual_hosts
        .iter()
        .find(|v| v.domains.contains(&"httpbin.example.com".to_string()));
    assert!(vh.is_some());
}

/// The mesh config's `dnsRefreshRate` (60 s by default, as Istio's, not
/// Envoy's 5 s) on DNS clusters, with the record's TTL respected, and its
/// `pathNormalization` on every HTTP connection manager; a rate Envoy
/// would refuse is reported and the default kept.
#[test]
#[allow(deprecated)] // Cluster's DNS fields, as Istio writes them
fn mesh_config_sets_dns_refresh_and_path_normalization() {
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        http_connection_manager::PathWithEscapedSlashesAction,
    };
    let se = HTTPBIN_DNS;
    let mesh_config = |text: &str| format!("{se}\n---\n{}", mesh_configmap(text));
    let dns = |snap: &Snapshot| {
        let out = generate(snap, &sidecar(&[]));
        let c = out
            .clusters
            .into_iter()
            .find(|c| c.name == "outbound|80||httpbin.example.com")
            .unwrap();
        (c.dns_refresh_rate.map(|d| d.seconds), c.respect_dns_ttl)
    };
    let hcm = |snap: &Snapshot| {
        let h = hcm_9080(&generate(snap, &sidecar(&[])));
        (
            h.normalize_path.map(|b| b.value),
            h.merge_slashes,
            h.path_with_escaped_slashes_action,
        )
    };
    let default = mesh(se, MeshConfig::default());
    assert_eq!(dns(&default), (Some(60), true));
    assert_eq!(
        hcm(&default),
        (
            Some(true),
            false,
            PathWithEscapedSlashesAction::KeepUnchanged as i32
        )
    );

    let set = mesh(
        &mesh_config(
            "{dnsRefreshRate: 5m, pathNormalization: {normalization: DECODE_AND_MERGE_SLASHES}}",
        ),
        MeshConfig::default(),
    );
    assert!(set.warnings.is_empty(), "{:?}", set.warnings);
    assert_eq!(dns(&set), (Some(300), true));
    assert_eq!(
        hcm(&set),
        (
            Some(true),
            true,
            PathWithEscapedSlashesAction::UnescapeAndForward as i32
        )
    );
    let none = mesh(
        &mesh_config("{pathNormalization: {normalization: NONE}}"),
        MeshConfig::default(),
    );
    assert_eq!(
        hcm(&none),
        (
            Some(false),
            false,
            PathWithEscapedSlashesAction::KeepUnchanged as i32
        )
    );

    let zero = mesh(&mesh_config("{dnsRefreshRate: 0s}"), MeshConfig::default());
    assert_eq!(dns(&zero), (Some(60), true));
    assert!(
        zero.warnings
            .iter()
            .any(|w| w.to_string().contains("data.mesh.dnsRefreshRate")),
        "{:?}",
        zero.warnings
    );
}

#[test]
fn gateway_server_hosts_scope_virtual_services_by_namespace() {
    let cfg = "
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: [\"default/*\"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: in-default, namespace: default}
spec:
  hosts: [a.example.com]
  gateways: [istio-system/gw]
  http: [{route: [{destination: {host: reviews}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: in-other, namespace: other}
spec:
  hosts: [b.example.com]
  gateways: [istio-system/gw]
  http: [{route: [{destination: {host: reviews.default.svc.cluster.local}}]}]
";
    let gw = Proxy::from_node_id(
        "router~127.0.0.1~gw.istio-system~istio-system.svc.cluster.local",
        None,
        [("istio".to_string(), "ingressgateway".to_string())].into(),
    )
    .unwrap();
    let out = generate(&mesh(cfg, MeshConfig::default()), &gw);
    let rc = route_config(&out, "http.8080");
    let names: Vec<_> = rc.virtual_hosts.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["a.example.com:8080"]);
    assert_eq!(out.listeners.len(), 1);
    assert_eq!(out.listeners[0].name, "0.0.0.0_8080");
}

#[test]
fn unselected_gateways_configure_nothing() {
    let out = generate(
        &mesh(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  selector: {istio: egressgateway}\n  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]\n",
            MeshConfig::default(),
        ),
        &Proxy::from_node_id(
            "router~127.0.0.1~gw.istio-system~istio-system.svc.cluster.local",
            None,
            [("istio".to_string(), "ingressgateway".to_string())].into(),
        )
        .unwrap(),
    );
    assert!(out.listeners.is_empty() && out.routes.is_empty());
}

#[test]
fn undefined_subsets_are_reported_by_field() {
    let vs = "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews, subset: v9}}]
";
    let out = generate(&mesh(vs, MeshConfig::default()), &sidecar(&[]));
    assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
    assert_eq!(
        out.warnings[0].field,
        "spec.http[0].route[0].destination.subset"
    );
    assert!(out.warnings[0].reason.contains("v9"));
    assert_eq!(
        reviews_routes(&out).len(),
        1,
        "the route stays, as in Istio"
    );
}

#[test]
fn export_to_hides_config_from_other_namespaces() {
    let cfg = "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  exportTo: [\".\"]
  http: [{route: [{destination: {host: reviews, subset: v1}}]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  exportTo: [\".\"]
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: private, namespace: default}
spec:
  hosts: [private.example.com]
  exportTo: [\".\"]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
";
    let snap = mesh(cfg, MeshConfig::default());
    let inside = generate(&snap, &sidecar(&[]));
    let other = Proxy::from_node_id(
        "sidecar~127.0.0.1~c.other~other.svc.cluster.local",
        None,
        Default::default(),
    )
    .unwrap();
    let outside = generate(&snap, &other);
    let names = |o: &Output| {
        o.clusters
            .iter()
            .map(|c| c.name.clone())
            .collect::<Vec<_>>()
    };
    assert!(
        names(&inside).contains(&"outbound|9080|v1|reviews.default.svc.cluster.local".to_string())
    );
    assert!(names(&inside).contains(&"outbound|80||private.example.com".to_string()));
    assert!(
        !names(&outside)
            .contains(&"outbound|9080|v1|reviews.default.svc.cluster.local".to_string())
    );
    assert!(!names(&outside).contains(&"outbound|80||private.example.com".to_string()));
    // The VirtualService applies inside only: outside gets the default route.
    let route = |o: &Output| {
        let rc = o.routes.iter().find(|r| r.name == "9080").unwrap();
        let vh = rc
            .virtual_hosts
            .iter()
            .find(|v| v.name.starts_with("reviews."))
            .unwrap();
        vh.routes[0].name.clone()
    };
    assert_ne!(route(&inside), "default");
    assert_eq!(route(&outside), "default");
}

#[test]
fn locality_failover_priorities_and_distribute_weights() {
    use crds::destination_rule::{
        LoadBalancerSettings, LocalityDistribute, LocalityFailover, LocalityLbSetting,
        OutlierDetection,
    };
    use translator::policy::Effective;
    let localities = ["r1/z1", "r1/z2", "r2/z1", "r3/z1"];
    let mut policy = Effective {
        load_balancer: Some(LoadBalancerSettings {
            locality_lb_setting: Some(LocalityLbSetting {
                failover: vec![LocalityFailover {
                    from: Some("r1".into()),
                    to: Some("r2".into()),
                }],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    // Istio applies locality load balancing only with outlier detection.
    assert_eq!(policy.locality_plan("r1/z1", &[], &localities), None);
    policy.outlier_detection = Some(OutlierDetection::default());
    let plan = policy.locality_plan("r1/z1", &[], &localities).unwrap();
    let priority = |l: &str| plan.by_locality[l].0;
    assert_eq!(
        [
            priority("r1/z1"),
            priority("r1/z2"),
            priority("r2/z1"),
            priority("r3/z1")
        ],
        [0, 1, 2, 3],
        "same zone, same region, failover region, the rest"
    );
    assert!(!plan.weighted);
    // No locality for the proxy: nothing to prefer.
    assert_eq!(policy.locality_plan("", &[], &localities), None);

    // distribute: a weight shared by the localities its pattern matches.
    policy.load_balancer.as_mut().unwrap().locality_lb_setting = Some(LocalityLbSetting {
        distribute: vec![LocalityDistribute {
            from: Some("r1/z1/*".into()),
            to: [("r1/*".to_string(), 80), ("r2/z1/*".to_string(), 20)].into(),
        }],
        ..Default::default()
    });
    let plan = policy.locality_plan("r1/z1", &[], &localities).unwrap();
    assert!(plan.weighted);
    let weight = |l: &str| plan.by_locality[l].1;
    assert_eq!(
        [
            weight("r1/z1"),
            weight("r1/z2"),
            weight("r2/z1"),
            weight("r3/z1")
        ],
        [Some(40), Some(40), Some(20), Some(0)]
    );
}

#[test]
fn sidecar_egress_hosts_scope_what_a_proxy_gets() {
    let cfg = "
apiVersion: v1
kind: Service
metadata: {name: ledger, namespace: finance}
spec:
  clusterIP: 10.96.9.9
  ports: [{name: http, port: 9080}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  egress: [{hosts: [\"./*\"]}]
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: auditor, namespace: default}
spec:
  workloadSelector: {labels: {app: auditor}}
  egress: [{hosts: [\"finance/*\"]}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: istio-system}
spec:
  egress: [{hosts: [\"*/ledger.finance.svc.cluster.local\"]}]
";
    let snap = mesh(cfg, MeshConfig::default());
    let hosts = |o: &Output| {
        let mut h: Vec<String> = o
            .clusters
            .iter()
            .filter_map(|c| c.name.rsplit_once('|').map(|(_, h)| h.to_owned()))
            .collect();
        h.dedup();
        h
    };
    // The namespace's Sidecar: its own namespace only, and REGISTRY_ONLY.
    let out = generate(&snap, &sidecar(&[]));
    assert_eq!(
        hosts(&out),
        [
            "mongodb.default.svc.cluster.local",
            "reviews.default.svc.cluster.local"
        ]
    );
    assert_eq!(
        route_config(&out, "9080")
            .virtual_hosts
            .last()
            .unwrap()
            .name,
        "block_all"
    );
    // A workload's own Sidecar wins over the namespace's.
    let out = generate(&snap, &sidecar(&[("app", "auditor")]));
    assert_eq!(hosts(&out), ["ledger.finance.svc.cluster.local"]);
    // Elsewhere, the root namespace's Sidecar applies.
    let other = Proxy::from_node_id(
        "sidecar~127.0.0.1~c.other~other.svc.cluster.local",
        None,
        Default::default(),
    )
    .unwrap();
    assert_eq!(
        hosts(&generate(&snap, &other)),
        ["ledger.finance.svc.cluster.local"]
    );
    // Gateways are not scoped by Sidecars.
    let gw = Proxy::from_node_id(
        "router~127.0.0.1~gw.default~default.svc.cluster.local",
        None,
        Default::default(),
    )
    .unwrap();
    assert_eq!(hosts(&generate(&snap, &gw)).len(), 3);
    // The cache key tells the three sidecar scopes apart.
    assert_ne!(
        sidecar(&[]).config_key(&snap),
        sidecar(&[("app", "auditor")]).config_key(&snap)
    );
}

#[test]
fn duplicate_filter_chain_matches_keep_the_first_and_warn() {
    let se = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db-a}
spec:
  hosts: [db-a.example.com]
  addresses: [192.168.0.0/16]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 192.168.1.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db-b}
spec:
  hosts: [db-b.example.com]
  addresses: [192.168.0.0/16]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 192.168.1.2}]
";
    let out = generate(&mesh(se, MeshConfig::default()), &sidecar(&[]));
    let l = out
        .listeners
        .iter()
        .find(|l| l.name == "0.0.0.0_5432")
        .unwrap();
    assert_eq!(l.filter_chains.len(), 1, "{:?}", l.filter_chains);
    let w: Vec<_> = out
        .warnings
        .iter()
        .filter(|w| w.object == "0.0.0.0_5432")
        .collect();
    assert_eq!(w.len(), 1, "{:?}", out.warnings);
    assert_eq!(
        (w[0].kind, w[0].field.as_str()),
        ("ServiceEntry", "spec.hosts")
    );
    assert!(
        w[0].reason.contains("192.168.0.0/16_5432"),
        "{}",
        w[0].reason
    );
}

#[test]
fn service_entry_endpoint_localities_drive_locality_failover() {
    let se = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db.example.com]
  ports: [{number: 9000, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 192.168.1.1, locality: region1/zone1}
  - {address: 192.168.1.2, locality: region1/zone2}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db}
spec:
  host: db.example.com
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1}
    loadBalancer: {localityLbSetting: {enabled: true}}
";
    let snap = mesh(se, MeshConfig::default());
    let mut proxy = sidecar(&[]);
    proxy.locality = "region1/zone1".into();
    let out = generate(&snap, &proxy);
    let cla = out
        .endpoints
        .iter()
        .find(|e| e.cluster_name == "outbound|9000||db.example.com")
        .unwrap();
    let priorities: Vec<_> = cla
        .endpoints
        .iter()
        .map(|g| {
            let l = g.locality.clone().unwrap();
            (format!("{}/{}", l.region, l.zone), g.priority)
        })
        .collect();
    assert_eq!(
        priorities,
        [
            ("region1/zone1".to_string(), 0),
            ("region1/zone2".to_string(), 1)
        ]
    );
}

#[test]
fn headless_services_go_to_the_pod_the_client_chose() {
    let headless = "
apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec:
  clusterIP: None
  ports: [{name: http, port: 8080}]
";
    let out = generate(&mesh(headless, MeshConfig::default()), &sidecar(&[]));
    let c = cluster(&out, "outbound|8080||db.default.svc.cluster.local");
    assert_eq!(
        c.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(
            DiscoveryType::OriginalDst as i32
        ))
    );
    // Still routed by name on the port's HTTP listener.
    let vh = route_config(&out, "8080").virtual_hosts.iter().find(|v| {
        v.domains
            .contains(&"db.default.svc.cluster.local".to_string())
    });
    assert!(vh.is_some());
}

/// Endpoints read their pod's labels and service account through the Pod
/// kept in part; equal label maps are one map, and the endpoints of one
/// EndpointSlice share its port map.
#[test]
fn endpoints_share_equal_labels_and_their_slice_ports() {
    let mut pods = String::new();
    for (i, version) in ["v1", "v1", "v2"].iter().enumerate() {
        pods.push_str(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: reviews-{i}, labels: {{app: reviews, version: {version}}}}}\n\
             spec: {{serviceAccountName: bookinfo-reviews, containers: [{{name: c, image: i}}]}}\n\
             status: {{podIP: 10.1.0.{i}}}\n---\n"
        ));
    }
    let snap = mesh(
        &format!(
            "{pods}apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: reviews-1, labels: {{kubernetes.io/service-name: reviews}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 9080}}]\n\
             endpoints:\n- addresses: [10.1.0.0]\n  targetRef: {{kind: Pod, name: reviews-0}}\n\
             - addresses: [10.1.0.1]\n- addresses: [10.1.0.2]\n  targetRef: {{kind: Pod, name: reviews-2}}\n"
        ),
        MeshConfig::default(),
    );
    let eps = &snap.services["reviews.default.svc.cluster.local"].endpoints;
    assert_eq!(eps.len(), 3);
    // The second endpoint has no targetRef: its pod is found by IP.
    assert_eq!(eps[1].labels.get("version").map(String::as_str), Some("v1"));
    assert_eq!(eps[2].labels.get("version").map(String::as_str), Some("v2"));
    assert!(std::sync::Arc::ptr_eq(&eps[0].labels, &eps[1].labels));
    assert!(!std::sync::Arc::ptr_eq(&eps[0].labels, &eps[2].labels));
    assert!(
        eps.windows(2)
            .all(|w| std::sync::Arc::ptr_eq(&w[0].ports, &w[1].ports))
    );
    assert_eq!(eps[0].ports.get("http"), Some(&9080));
    assert!(
        eps.iter()
            .all(|e| e.service_account.as_deref() == Some("bookinfo-reviews"))
    );
}

/// Envoy refuses a route configuration in which two virtual hosts share a
/// domain: a domain claimed twice (here a VIP) stays with the first service
/// in hostname order only, and each host keeps its other domains.
#[test]
fn a_domain_claimed_twice_goes_to_the_first_service() {
    let snap = mesh(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext}\n\
         spec:\n  hosts: [reviews.example.com]\n  addresses: [10.96.0.13]\n  location: MESH_EXTERNAL\n  resolution: DNS\n  ports: [{number: 9080, name: http, protocol: HTTP}]\n",
        MeshConfig::default(),
    );
    let out = generate(&snap, &sidecar(&[]));
    let rc = route_config(&out, "9080");
    let owners = |domain: &str| -> Vec<&str> {
        rc.virtual_hosts
            .iter()
            .filter(|v| v.domains.iter().any(|d| d == domain))
            .map(|v| v.name.as_str())
            .collect()
    };
    assert_eq!(
        owners("10.96.0.13"),
        ["reviews.default.svc.cluster.local:9080"]
    );
    assert_eq!(owners("reviews.example.com"), ["reviews.example.com:9080"]);
}

/// The access log format on mongodb's TCP proxy (a sidecar's outbound
/// listener `10.96.0.20_27017`).
fn tcp_log_format(
    snap: &Snapshot,
) -> (
    String,
    envoy_types::pb::envoy::config::core::v3::SubstitutionFormatString,
) {
    use envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType;
    use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
        FileAccessLog, file_access_log,
    };
    let out = generate(snap, &sidecar(&[]));
    let listener = out
        .listeners
        .iter()
        .find(|l| l.name == "10.96.0.20_27017")
        .unwrap();
    let tcp: TcpProxy = first_filter(&listener.filter_chains[0]);
    assert_eq!(tcp.access_log.len(), 1);
    let Some(ConfigType::TypedConfig(file)) = &tcp.access_log[0].config_type else {
        panic!("no file access log");
    };
    let file = FileAccessLog::decode(file.value.as_slice()).unwrap();
    let Some(file_access_log::AccessLogFormat::LogFormat(f)) = file.access_log_format else {
        panic!("no format");
    };
    (file.path, f)
}

/// The warnings on the mesh config's `accessLogFormat`.
fn format_warnings(snap: &Snapshot) -> Vec<String> {
    snap.warnings
        .iter()
        .map(|w| w.to_string())
        .filter(|w| w.contains("data.mesh.accessLogFormat"))
        .collect()
}

/// The mesh config's `accessLogFile` reaches TCP proxies as well as HTTP
/// connection managers; a JSON `accessLogFormat` that is not an object of
/// strings is reported and Istio's default fields are used.
#[test]
fn access_log_on_tcp_proxies_and_a_bad_json_format_reported() {
    use envoy_types::pb::envoy::config::core::v3::substitution_format_string;
    let config = mesh_configmap(
        "{accessLogFile: /dev/stdout, accessLogEncoding: JSON, accessLogFormat: '[1, 2]'}",
    );
    let snap = mesh(&config, MeshConfig::default());
    assert_eq!(format_warnings(&snap).len(), 1, "{:?}", snap.warnings);
    let (path, f) = tcp_log_format(&snap);
    assert_eq!(path, "/dev/stdout");
    let Some(substitution_format_string::Format::JsonFormat(json)) = f.format else {
        panic!("not JSON");
    };
    assert!(
        json.fields.contains_key("response_code") && json.fields.contains_key("upstream_cluster")
    );
}

/// A format with a command operator Envoy would refuse (every proxy would
/// NACK every listener carrying it) is reported, naming the operator, and
/// Istio's default used instead; `%REQ_WITHOUT_QUERY%` gets its formatter
/// extension, as Istio configures it.
#[test]
fn an_access_log_format_envoy_would_refuse_is_reported() {
    use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format;
    let with = |encoding: &str, format: &str| {
        mesh(
            &mesh_configmap(&format!(
                "{{accessLogFile: /dev/stdout, accessLogEncoding: {encoding}, accessLogFormat: '{format}'}}"
            )),
            MeshConfig::default(),
        )
    };
    let text =
        |f: &envoy_types::pb::envoy::config::core::v3::SubstitutionFormatString| match &f.format {
            Some(Format::TextFormatSource(source)) => format!("{:?}", source.specifier),
            other => panic!("not text: {other:?}"),
        };

    let bogus = with("TEXT", "%START_TIME% %BOGUS% %RESPONSE_CODE%");
    let warnings = format_warnings(&bogus);
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].contains("`%BOGUS%` at byte 13")
            && warnings[0].contains("Istio's default format"),
        "{warnings:?}"
    );
    let (_, f) = tcp_log_format(&bogus);
    assert!(
        text(&f).contains("%UPSTREAM_TRANSPORT_FAILURE_REASON%"),
        "{f:?}"
    );

    let json = with(
        "JSON",
        r#"{"code": "%RESPONSE_CODE%", "host": "%UPSTREAM_HOST:10%"}"#,
    );
    let warnings = format_warnings(&json);
    assert!(
        warnings.len() == 1 && warnings[0].contains("field `host`: `%UPSTREAM_HOST:10%`"),
        "{warnings:?}"
    );
    let (_, f) = tcp_log_format(&json);
    let Some(Format::JsonFormat(fields)) = &f.format else {
        panic!("not JSON: {f:?}");
    };
    assert!(fields.fields.contains_key("upstream_cluster"), "{fields:?}");

    let good = with(
        "TEXT",
        "%REQ_WITHOUT_QUERY(X-ENVOY-ORIGINAL-PATH?:PATH)% %RESPONSE_CODE%",
    );
    assert!(format_warnings(&good).is_empty(), "{:?}", good.warnings);
    let (_, f) = tcp_log_format(&good);
    assert!(text(&f).contains("%REQ_WITHOUT_QUERY("), "{f:?}");
    assert_eq!(f.formatters.len(), 1);
    assert_eq!(f.formatters[0].name, "envoy.formatter.req_without_query");
    let (_, f) = tcp_log_format(&with("TEXT", "%RESPONSE_CODE%"));
    assert!(f.formatters.is_empty());
}

/// The mesh config's `discoverySelectors`, as istiod's discovery namespace
/// filter: a namespace whose labels no selector matches is left out with
/// everything in it (its services, its VirtualServices), so a change there
/// reaches no proxy; labelling it brings it in.
#[test]
fn discovery_selectors_leave_unselected_namespaces_out() {
    use translator::changes::{ChangeSet, Effect};
    let scoped = "discoverySelectors: [{matchLabels: {mesh: 'on'}}]";
    let shop_with = |shop_labels: &str, endpoint: &str, mesh_config: &str| {
        format!(
            "apiVersion: v1
kind: Namespace
metadata: {{name: default, labels: {{mesh: 'on'}}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {shop_labels}}}
---
apiVersion: v1
kind: Service
metadata: {{name: cart, namespace: shop}}
spec:
  clusterIP: 10.96.1.1
  ports: [{{name: http, port: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: cart-1, namespace: shop, labels: {{kubernetes.io/service-name: cart}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints: [{{addresses: [{endpoint}]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: cart, namespace: shop}}
spec:
  hosts: [cart]
  http: [{{route: [{{destination: {{host: cart}}}}], timeout: 3s}}]
---
{}",
            mesh_configmap(mesh_config)
        )
    };
    let shop = |shop_labels: &str, endpoint: &str| shop_with(shop_labels, endpoint, scoped);
    let cart = "cart.shop.svc.cluster.local";
    let out_of_scope = mesh(&shop("{}", "10.1.0.1"), MeshConfig::default());
    assert!(
        out_of_scope
            .services
            .contains_key("reviews.default.svc.cluster.local")
    );
    assert!(!out_of_scope.services.contains_key(cart));
    assert!(out_of_scope.virtual_services.is_empty());
    // The root certificate goes to the selected namespaces only.
    assert_eq!(out_of_scope.namespaces, ["default"]);
    let out = generate(&out_of_scope, &sidecar(&[]));
    assert!(!out.clusters.iter().any(|c| c.name.contains(cart)));
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);

    // An endpoint change in the unselected namespace is no change at all.
    let moved = mesh(&shop("{}", "10.1.0.2"), MeshConfig::default());
    let changes = ChangeSet::between(&out_of_scope, &moved);
    assert_eq!(changes.effect(&sidecar(&[])), Effect::Nothing);
    assert!(changes.changed_hosts.is_empty());

    // Labelled, the namespace is in: its service and its route.
    let in_scope = mesh(&shop("{mesh: 'on'}", "10.1.0.2"), MeshConfig::default());
    assert!(in_scope.services.contains_key(cart));
    assert_eq!(in_scope.virtual_services.len(), 1);
    assert_eq!(in_scope.namespaces, ["default", "shop"]);
    let out = generate(&in_scope, &sidecar(&[]));
    assert!(
        out.clusters
            .iter()
            .any(|c| c.name == format!("outbound|8080||{cart}"))
    );
    assert_eq!(
        ChangeSet::between(&moved, &in_scope).effect(&sidecar(&[])),
        Effect::Full
    );

    // Without selectors every namespace is in, labelled or not.
    let all = mesh(&shop_with("{}", "10.1.0.1", "{}"), MeshConfig::default());
    assert!(all.services.contains_key(cart));
}

/// The mesh config's `defaultServiceExportTo`, `defaultVirtualServiceExportTo`
/// and `defaultDestinationRuleExportTo`: the `exportTo` of what sets none.
#[test]
fn mesh_export_defaults_apply_to_what_sets_no_export_to() {
    use translator::changes::{ChangeSet, Effect};
    let shop = "
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  clusterIP: 10.96.1.1
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata:
  name: catalog
  namespace: shop
  annotations: {networking.istio.io/exportTo: '*'}
spec:
  clusterIP: 10.96.1.2
  ports: [{name: http, port: 8080}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payments, namespace: shop}
spec:
  hosts: [payments.example.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-from-shop, namespace: shop}
spec:
  hosts: [reviews.default.svc.cluster.local]
  http: [{route: [{destination: {host: reviews.default.svc.cluster.local}}], timeout: 7s}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-from-shop, namespace: shop}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 7}}}
";
    let with = |mesh_config: &str| {
        mesh(
            &format!("{shop}---\n{}", mesh_configmap(mesh_config)),
            MeshConfig::default(),
        )
    };
    // What the default namespace's sidecar gets.
    let seen = |snap: &Snapshot| {
        let out = generate(snap, &sidecar(&[]));
        let names: Vec<String> = out.clusters.iter().map(|c| c.name.clone()).collect();
        let has = |host: &str| names.iter().any(|n| n.ends_with(&format!("|{host}")));
        let reviews = cluster(&out, "outbound|9080||reviews.default.svc.cluster.local");
        let max_connections = reviews
            .circuit_breakers
            .as_ref()
            .and_then(|b| b.thresholds.first())
            .and_then(|t| t.max_connections)
            .map(|v| v.value);
        let timeout = reviews_routes(&out).iter().find_map(|a| match a {
            route::Action::Route(r) => r.timeout.map(|t| t.seconds),
            _ => None,
        });
        (
            has("cart.shop.svc.cluster.local"),
            has("catalog.shop.svc.cluster.local"),
            has("payments.example.com"),
            timeout == Some(7),
            max_connections == Some(7),
        )
    };
    let everywhere = with("{}");
    assert_eq!(seen(&everywhere), (true, true, true, true, true));
    let own_namespace = with(
        "{defaultServiceExportTo: ['.'], defaultVirtualServiceExportTo: ['.'], defaultDestinationRuleExportTo: ['.']}",
    );
    // `catalog` exports itself everywhere; the rest stays in `shop`.
    assert_eq!(seen(&own_namespace), (false, true, false, false, false));
    assert_eq!(
        ChangeSet::between(&everywhere, &own_namespace).effect(&sidecar(&[])),
        Effect::Full
    );
    // Named namespaces, and `~` (none).
    let named = with(
        "{defaultServiceExportTo: [default], defaultVirtualServiceExportTo: ['~'], defaultDestinationRuleExportTo: [shop, default]}",
    );
    assert_eq!(seen(&named), (true, true, true, false, true));

    // Rebuilt from the snapshot before (services whose objects did not
    // change are taken over), the new defaults still apply.
    let objects = |mesh_config: &str| -> Vec<std::sync::Arc<crds::document::Object>> {
        let text = format!(
            "{PLATFORM}\n---\n{shop}---\n{}",
            mesh_configmap(mesh_config)
        );
        split_documents(&text)
            .into_iter()
            .flat_map(|(_, v)| parse_value(v.unwrap(), "default"))
            .map(|o| std::sync::Arc::new(o.unwrap()))
            .collect()
    };
    let before = objects("{}");
    let mut after = objects("{defaultServiceExportTo: ['.']}");
    // The same objects but the mesh config, as the sources share them.
    for (a, b) in after.iter_mut().zip(&before) {
        if !matches!(&**a, crds::document::Object::ConfigMap(_)) {
            *a = b.clone();
        }
    }
    let first = Snapshot::rebuild(1, &before, MeshConfig::default(), &Snapshot::default());
    let second = Snapshot::rebuild(2, &after, MeshConfig::default(), &first);
    assert!(seen(&first).0 && !seen(&second).0);
}

/// The mesh config's connection and retry defaults: `connectTimeout`,
/// `tcpKeepalive` (merged field by field under a DestinationRule's),
/// `h2UpgradePolicy` (HTTP/1.1 ports only; a rule's policy wins) and
/// `defaultHttpRetryPolicy` (routes that set no `retries`).
#[test]
fn mesh_connection_and_retry_defaults() {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
        HttpProtocolOptions, http_protocol_options,
    };
    let rules = "
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: default}
spec:
  clusterIP: 10.96.0.12
  ports: [{name: http, port: 9080}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: mongodb, namespace: default}
spec:
  host: mongodb
  trafficPolicy: {connectionPool: {tcp: {connectTimeout: 2s, tcpKeepalive: {interval: 10s}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /own}}]
    retries: {attempts: 1, retryOn: reset}
    route: [{destination: {host: reviews}}]
  - route: [{destination: {host: reviews}}]
";
    let settings = "{connectTimeout: 3s, tcpKeepalive: {time: 300s, probes: 3}, h2UpgradePolicy: UPGRADE, defaultHttpRetryPolicy: {attempts: 5, retryOn: '503'}}";
    let snap = mesh(
        &format!("{rules}---\n{}", mesh_configmap(settings)),
        MeshConfig::default(),
    );
    assert!(snap.warnings.is_empty(), "{:?}", snap.warnings);
    let out = generate(&snap, &sidecar(&[]));
    let reviews = cluster(&out, "outbound|9080||reviews.default.svc.cluster.local");
    let mongodb = cluster(&out, "outbound|27017||mongodb.default.svc.cluster.local");
    let secs = |c: &Cluster| c.connect_timeout.unwrap().seconds;
    assert_eq!(
        (
            secs(reviews),
            secs(mongodb),
            secs(cluster(&out, "PassthroughCluster"))
        ),
        (3, 2, 3)
    );
    let keepalive = |c: &Cluster| {
        let k = c
            .upstream_connection_options
            .as_ref()
            .and_then(|o| o.tcp_keepalive.as_ref())
            .unwrap();
        (
            k.keepalive_probes.map(|v| v.value),
            k.keepalive_time.map(|v| v.value),
            k.keepalive_interval.map(|v| v.value),
        )
    };
    assert_eq!(keepalive(reviews), (Some(3), Some(300), None));
    assert_eq!(keepalive(mongodb), (Some(3), Some(300), Some(10)));
    let h2 = |c: &Cluster| {
        c.typed_extension_protocol_options
            .values()
            .map(|any| HttpProtocolOptions::decode(any.value.as_slice()).unwrap())
            .any(|o| {
                matches!(
                    o.upstream_protocol_options,
                    Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(e))
                        if matches!(e.protocol_config, Some(http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(_)))
                )
            })
    };
    // The HTTP port is upgraded; the TCP one is not.
    assert!(h2(reviews) && !h2(mongodb));

    let retries = |out: &Output, host: &str| -> Vec<Option<(u32, String, Vec<u32>)>> {
        route_config(out, "9080")
            .virtual_hosts
            .iter()
            .find(|v| v.name == format!("{host}:9080"))
            .unwrap()
            .routes
            .iter()
            .map(|r| match &r.action {
                Some(route::Action::Route(a)) => a.retry_policy.as_ref().map(|p| {
                    (
                        p.num_retries.map_or(0, |n| n.value),
                        p.retry_on.clone(),
                        p.retriable_status_codes.clone(),
                    )
                }),
                other => panic!("{other:?}"),
            })
            .collect()
    };
    let mesh_policy = Some((5, "retriable-status-codes".to_string(), vec![503]));
    // The VirtualService's own retries, then the mesh's for its route
    // without; the default route of a service without a VirtualService.
    assert_eq!(
        retries(&out, "reviews.default.svc.cluster.local"),
        [Some((1, "reset".into(), vec![])), mesh_policy.clone()]
    );
    assert_eq!(
        retries(&out, "ratings.default.svc.cluster.local"),
        [mesh_policy]
    );
    // `attempts: 0`: no retries anywhere a route sets none.
    let off = mesh(
        &format!(
            "{rules}---\n{}",
            mesh_configmap("{defaultHttpRetryPolicy: {attempts: 0}}")
        ),
        MeshConfig::default(),
    );
    let out = generate(&off, &sidecar(&[]));
    assert_eq!(retries(&out, "ratings.default.svc.cluster.local"), [None]);
    // A rule's DO_NOT_UPGRADE wins over the mesh's UPGRADE.
    let kept = mesh(
        &format!(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews
  trafficPolicy: {{connectionPool: {{http: {{h2UpgradePolicy: DO_NOT_UPGRADE}}}}}}
---
{}",
            mesh_configmap("{h2UpgradePolicy: UPGRADE}")
        ),
        MeshConfig::default(),
    );
    let out = generate(&kept, &sidecar(&[]));
    let reviews = cluster(&out, "outbound|9080||reviews.default.svc.cluster.local");
    assert!(!h2(reviews));
}

/// An OpenTelemetry extension provider (Istio's `otelConfig`): the
/// tracer exports over OTLP/gRPC to the collector's outbound cluster (its
/// hostname the authority), or over OTLP/HTTP with `http` (the URI the
/// hostname and path, the headers added, a timeout Envoy requires); the
/// service name is the proxy's `app.namespace`, so proxies of other apps
/// get configs of their own.
#[test]
fn an_opentelemetry_provider_exports_over_grpc_or_http() {
    use envoy_types::pb::envoy::config::core::v3::{grpc_service, http_uri};
    use envoy_types::pb::envoy::config::trace::v3::OpenTelemetryConfig;
    let collector = "apiVersion: v1
kind: Service
metadata: {name: otel, namespace: istio-system}
spec:
  clusterIP: 10.96.0.91
  ports: [{name: grpc-otlp, port: 4317}, {name: http-otlp, port: 4318}]
";
    let otel = |p: &Proxy, provider: &str| {
        let settings = mesh_configmap(&format!(
            "{{extensionProviders: [{{name: otel, opentelemetry: {provider}}}], defaultProviders: {{tracing: [otel]}}}}"
        ));
        let snap = mesh(
            &format!("{collector}---\n{settings}"),
            MeshConfig::default(),
        );
        let warnings: Vec<String> = snap.warnings.iter().map(|w| w.to_string()).collect();
        let t = hcm_9080(&generate(&snap, p)).tracing.unwrap();
        let tag_length = t.max_path_tag_length.map(|l| l.value);
        let (name, config) = tracer::<OpenTelemetryConfig>(t);
        assert_eq!(name, "envoy.tracers.opentelemetry");
        (config, tag_length, warnings, snap)
    };
    let client = sidecar(&[("app", "client")]);
    let (grpc, tag_length, warnings, snap) = otel(
        &client,
        "{service: otel.istio-system.svc.cluster.local, port: 4317, maxTagLength: 99, grpc: {timeout: 2s, initialMetadata: [{name: x-tenant, value: a}]}, resourceDetectors: {environment: {}}}",
    );
    assert_eq!(grpc.service_name, "client.default");
    assert_eq!(tag_length, Some(99));
    let service = grpc.grpc_service.unwrap();
    let Some(grpc_service::TargetSpecifier::EnvoyGrpc(target)) = service.target_specifier else {
        panic!("not Envoy's gRPC client")
    };
    assert_eq!(
        (target.cluster_name.as_str(), target.authority.as_str()),
        (
            "outbound|4317||otel.istio-system.svc.cluster.local",
            "otel.istio-system.svc.cluster.local"
        )
    );
    assert_eq!(service.timeout.map(|t| t.seconds), Some(2));
    assert_eq!(service.initial_metadata[0].key, "x-tenant");
    assert!(grpc.http_service.is_none());
    assert!(warnings.is_empty(), "{warnings:?}");
    let detectors: Vec<&str> = grpc
        .resource_detectors
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(
        detectors,
        ["envoy.tracers.opentelemetry.resource_detectors.environment"]
    );
    assert!(grpc.sampler.is_none());
    // Another app's proxy: another config key, another service name.
    let other = sidecar(&[("app", "other")]);
    assert_ne!(client.config_key(&snap), other.config_key(&snap));

    let (http, _, warnings, _) = otel(
        &client,
        "{service: istio-system/otel.istio-system.svc.cluster.local, port: 4318, http: {path: v1/traces, headers: [{name: authorization, value: token}]}}",
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(http.grpc_service.is_none());
    let service = http.http_service.unwrap();
    let uri = service.http_uri.unwrap();
    assert_eq!(uri.uri, "otel.istio-system.svc.cluster.local/v1/traces");
    assert_eq!(
        uri.http_upstream_type,
        Some(http_uri::HttpUpstreamType::Cluster(
            "outbound|4318||otel.istio-system.svc.cluster.local".into()
        ))
    );
    assert_eq!(
        uri.timeout.map(|t| t.seconds),
        Some(5),
        "Envoy requires one"
    );
    assert_eq!(
        service.request_headers_to_add[0]
            .header
            .as_ref()
            .unwrap()
            .key,
        "authorization"
    );

    // A Dynatrace sampler reusing the OTLP/HTTP export: the collector's
    // host and cluster at `api/v2/samplingConfiguration`, its headers; the
    // sampler decides, so random sampling is 100 %.
    let (dt, _, warnings, snap) = otel(
        &client,
        "{service: otel.istio-system.svc.cluster.local, port: 4318, http: {path: /v1/traces, timeout: 3s, headers: [{name: authorization, value: Api-Token t}]}, resourceDetectors: {environment: {}, dynatrace: {}}, dynatraceSampler: {tenant: abc, clusterId: -7, rootSpansPerMinute: 500}}",
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(dt.resource_detectors.len(), 2);
    let sampler = dt.sampler.unwrap();
    assert_eq!(
        sampler.name,
        "envoy.tracers.opentelemetry.samplers.dynatrace"
    );
    let config = envoy_types::pb::envoy::extensions::tracers::opentelemetry::samplers::v3::DynatraceSamplerConfig::decode(
        sampler.typed_config.unwrap().value.as_slice(),
    )
    .unwrap();
    assert_eq!(
        (
            config.tenant.as_str(),
            config.cluster_id,
            config.root_spans_per_minute
        ),
        ("abc", -7, 500)
    );
    let api = config.http_service.unwrap();
    let uri = api.http_uri.unwrap();
    assert_eq!(
        uri.uri,
        "otel.istio-system.svc.cluster.local/api/v2/samplingConfiguration"
    );
    assert_eq!(uri.timeout.map(|t| t.seconds), Some(3));
    assert_eq!(
        api.request_headers_to_add[0].header.as_ref().unwrap().value,
        "Api-Token t"
    );
    let t = hcm_9080(&generate(&snap, &client)).tracing.unwrap();
    assert_eq!(t.random_sampling.map(|p| p.value), Some(100.0));

    // Over gRPC, without an API service of its own: reported, no sampler.
    let (plain, _, warnings, _) = otel(
        &client,
        "{service: otel.istio-system.svc.cluster.local, port: 4317, dynatraceSampler: {tenant: abc}}",
    );
    assert!(plain.sampler.is_none());
    assert!(
        warnings.len() == 1 && warnings[0].contains("opentelemetry.dynatraceSampler"),
        "{warnings:?}"
    );
}

/// A Zipkin extension provider named in `defaultProviders.tracing`: every
/// HTTP connection manager gets the Zipkin tracer to the collector's
/// cluster, `defaultConfig.tracing.sampling` and Istio's tags; routes get
/// a decorator (the span's name). Without the collector's service the
/// proxies are not traced (Envoy would refuse a tracer without its cluster).
#[test]
fn a_zipkin_provider_traces_http_connection_managers() {
    use envoy_types::pb::envoy::config::trace::v3::ZipkinConfig;
    let zipkin = ZIPKIN_SERVICE;
    let settings = mesh_configmap(
        "{extensionProviders: [{name: zipkin, zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}}], defaultProviders: {tracing: [zipkin], metrics: [prometheus]}, defaultConfig: {tracing: {sampling: 50}, holdApplicationUntilProxyStarts: true}}",
    );
    let snap = mesh(&format!("{zipkin}---\n{settings}"), MeshConfig::default());
    let warned: Vec<String> = snap.warnings.iter().map(|w| w.to_string()).collect();
    // What is not acted on is reported: the proxy settings the injector
    // does not take from here (the metrics provider is read).
    assert!(
        warned.len() == 1
            && warned[0].contains("data.mesh.defaultConfig.holdApplicationUntilProxyStarts"),
        "{warned:?}"
    );
    let p = sidecar(&[
        ("app", "client"),
        ("service.istio.io/canonical-name", "client"),
    ]);
    let out = generate(&snap, &p);
    let hcm = hcm_9080(&out);
    let t = hcm.tracing.unwrap();
    assert_eq!(t.random_sampling.map(|p| p.value), Some(50.0));
    assert_eq!(t.client_sampling.map(|p| p.value), Some(100.0));
    let tags: Vec<String> = t
        .custom_tags
        .iter()
        .map(|t| format!("{}={:?}", t.tag, t.r#type))
        .collect();
    assert_eq!(tags.len(), 3);
    assert!(
        tags[1].starts_with("istio.canonical_service=") && tags[1].contains("\"client\""),
        "{tags:?}"
    );
    let (name, z) = tracer::<ZipkinConfig>(t);
    assert_eq!(name, "envoy.tracers.zipkin");
    assert_eq!(
        (
            z.collector_cluster.as_str(),
            z.collector_endpoint.as_str(),
            z.trace_id_128bit
        ),
        (
            "outbound|9411||zipkin.istio-system.svc.cluster.local",
            "/api/v2/spans",
            true
        )
    );
    assert!(out.clusters.iter().any(|c| c.name == z.collector_cluster));
    // The default route's decorator; a VirtualService route's names its
    // single destination and the path it matches.
    let vhost = |out: &Output, host: &str| {
        route_config(out, "9080")
            .virtual_hosts
            .iter()
            .find(|v| v.name == format!("{host}:9080"))
            .unwrap()
            .routes
            .iter()
            .map(|r| r.decorator.as_ref().map(|d| d.operation.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        vhost(&out, "reviews.default.svc.cluster.local"),
        [Some("reviews.default.svc.cluster.local:9080/*".to_string())]
    );
    let vs = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /api/}}]
    route: [{destination: {host: reviews}}]
  - route: [{destination: {host: reviews}, weight: 50}, {destination: {host: mongodb}, weight: 50}]
";
    let routed = mesh(
        &format!("{zipkin}---\n{settings}---\n{vs}"),
        MeshConfig::default(),
    );
    assert_eq!(
        vhost(&generate(&routed, &p), "reviews.default.svc.cluster.local"),
        [
            Some("reviews.default.svc.cluster.local:9080/api/*".to_string()),
            Some("reviews:9080/*".to_string())
        ]
    );

    // A Sidecar scoping the collector out of the proxy's config: no tracer
    // (Envoy would refuse one without its cluster).
    let scoped = mesh(
        &format!(
            "{zipkin}---\n{settings}---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: default, namespace: default}}\nspec: {{egress: [{{hosts: ['./*']}}]}}\n"
        ),
        MeshConfig::default(),
    );
    let out = generate(&scoped, &p);
    assert!(!out.clusters.iter().any(|c| c.name.contains("zipkin")));
    assert!(hcm_9080(&out).tracing.is_none());
    // No collector service: no tracer (and no decorator matters).
    let alone = mesh(&settings, MeshConfig::default());
    let out = generate(&alone, &p);
    let hcm = hcm_9080(&out);
    assert!(hcm.tracing.is_none());
    // A provider that is not there is reported.
    let unnamed = mesh(
        &mesh_configmap("{defaultProviders: {tracing: [jaeger]}}"),
        MeshConfig::default(),
    );
    assert!(
        unnamed.warnings.iter().any(|w| w
            .to_string()
            .contains("no extension provider is named \"jaeger\"")),
        "{:?}",
        unnamed.warnings
    );
}

/// `connectionPool.http.useClientProtocol`: the upstream speaks whatever
/// the downstream spoke (Envoy's `use_downstream_protocol_config`), also
/// over the mesh's `h2UpgradePolicy: UPGRADE`; `maxConcurrentStreams`
/// caps the streams of an HTTP/2 upstream connection.
#[test]
fn client_protocol_and_concurrent_streams_of_a_destination_rule() {
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
        UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
    };
    let rules = "
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: default}
spec:
  clusterIP: 10.96.0.12
  ports: [{name: grpc, port: 9090}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy: {connectionPool: {http: {useClientProtocol: true, maxConcurrentStreams: 7}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: default}
spec:
  host: ratings
  trafficPolicy: {connectionPool: {http: {maxConcurrentStreams: 5}}}
";
    let snap = mesh(
        &format!(
            "{rules}---\n{}",
            mesh_configmap("{h2UpgradePolicy: UPGRADE}")
        ),
        MeshConfig::default(),
    );
    let out = generate(&snap, &sidecar(&[]));
    let upstream = |name: &str| {
        let c = cluster(&out, name);
        let any = &c.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        HttpProtocolOptions::decode(any.value.as_slice())
            .unwrap()
            .upstream_protocol_options
            .unwrap()
    };
    let UpstreamProtocolOptions::UseDownstreamProtocolConfig(d) =
        upstream("outbound|9080||reviews.default.svc.cluster.local")
    else {
        panic!("reviews: the downstream's protocol")
    };
    assert!(d.http_protocol_options.is_some());
    let streams = d.http2_protocol_options.unwrap().max_concurrent_streams;
    assert_eq!(streams.unwrap().value, 7);
    // An HTTP/2 (gRPC) port: explicit HTTP/2 with the cap.
    let UpstreamProtocolOptions::ExplicitHttpConfig(e) =
        upstream("outbound|9090||ratings.default.svc.cluster.local")
    else {
        panic!("ratings: explicit")
    };
    let Some(ProtocolConfig::Http2ProtocolOptions(h2)) = e.protocol_config else {
        panic!("ratings: HTTP/2")
    };
    assert_eq!(h2.max_concurrent_streams.unwrap().value, 5);
}

/// A DestinationRule's `workloadSelector`: the workloads of its namespace
/// it picks use it for their outbound traffic, before the rule for every
/// workload; others (and other namespaces) keep that one. The encoded
/// path, whose memos key on the rule, agrees, and the selector's label
/// keys tell proxies' configs apart.
#[test]
fn workload_selectors_pick_a_destination_rule_per_workload() {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;
    let rules = "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-for-canary, namespace: default}
spec:
  host: reviews
  workloadSelector: {matchLabels: {track: canary}}
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
";
    let snap = mesh(rules, MeshConfig::default());
    assert!(snap.label_keys.contains("track"));
    let other_ns = Proxy::from_node_id(
        "sidecar~10.244.0.30~client.other~other.svc.cluster.local",
        None,
        [("track".to_owned(), "canary".to_owned())].into(),
    )
    .unwrap();
    let proxies = [
        (sidecar(&[("track", "canary")]), LbPolicy::RoundRobin),
        (sidecar(&[("track", "stable")]), LbPolicy::Random),
        (other_ns, LbPolicy::Random),
    ];
    let reviews = "outbound|9080||reviews.default.svc.cluster.local";
    // Each in turn through the memoised path, then as messages.
    for (proxy, want) in &proxies {
        let encoded = translator::generate_encoded(&snap, proxy);
        let (_, _, bytes) = encoded
            .clusters
            .iter()
            .find(|(n, ..)| &**n == reviews)
            .unwrap();
        let any = envoy_types::pb::google::protobuf::Any::decode(bytes.as_ref()).unwrap();
        let c = envoy_types::pb::envoy::config::cluster::v3::Cluster::decode(any.value.as_slice())
            .unwrap();
        assert_eq!(c.lb_policy, *want as i32, "{}", proxy.id);
        let out = generate(&snap, proxy);
        assert_eq!(cluster(&out, reviews).lb_policy, *want as i32);
    }
}

/// ServiceEntry `ports[].targetPort`: the endpoints receive the port there
/// (an endpoint's own `ports` entry wins).
#[test]
fn service_entry_target_ports_are_the_endpoints_ports() {
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint;
    let entry = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 443}]
  resolution: STATIC
  endpoints: [{address: 192.0.2.10}, {address: 192.0.2.11, ports: {http: 8443}}]
";
    let out = generate(&mesh(entry, MeshConfig::default()), &sidecar(&[]));
    let cla = out
        .endpoints
        .iter()
        .find(|c| c.cluster_name == "outbound|80||api.example.com")
        .unwrap();
    let ports: Vec<u32> = cla
        .endpoints
        .iter()
        .flat_map(|g| &g.lb_endpoints)
        .map(|e| {
            let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                panic!()
            };
            let Some(address::Address::SocketAddress(sa)) =
                ep.address.as_ref().unwrap().address.as_ref()
            else {
                panic!()
            };
            match sa.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(p)) => p,
                _ => panic!(),
            }
        })
        .collect();
    assert_eq!(ports, [443, 8443]);
}

/// A port level replaces all of the policy's load balancer, pool, outlier
/// detection and TLS, set or not: what it leaves out takes the defaults
/// (Istio's `MergeTrafficPolicy`, "port level policies do not inherit").
#[test]
fn port_level_settings_do_not_inherit_the_top_level() {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;
    let dr = "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: r, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 10}}
    outlierDetection: {consecutive5xxErrors: 3}
    portLevelSettings:
    - port: {number: 9080}
      loadBalancer: {simple: ROUND_ROBIN}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {outlierDetection: {consecutive5xxErrors: 7}}
";
    let out = generate(&mesh(dr, MeshConfig::default()), &sidecar(&[]));
    let max_connections = |c: &envoy_types::pb::envoy::config::cluster::v3::Cluster| {
        c.circuit_breakers.as_ref().unwrap().thresholds[0]
            .max_connections
            .map(|m| m.value)
    };
    let whole = cluster(&out, "outbound|9080||reviews.default.svc.cluster.local");
    assert_eq!(whole.lb_policy, LbPolicy::RoundRobin as i32);
    assert!(whole.outlier_detection.is_none(), "{whole:?}");
    assert_ne!(max_connections(whole), Some(10));
    // The subset's own outlier detection comes after the top level's port
    // level, and stays.
    let v1 = cluster(&out, "outbound|9080|v1|reviews.default.svc.cluster.local");
    assert_eq!(v1.lb_policy, LbPolicy::RoundRobin as i32);
    assert_eq!(
        v1.outlier_detection
            .as_ref()
            .and_then(|o| o.consecutive_5xx)
            .map(|c| c.value),
        Some(7)
    );
    assert_ne!(max_connections(v1), Some(10));
}

/// The transport socket inside an `upstream_proxy_protocol` socket, and
/// the header version it sends.
fn proxy_protocol_of(
    socket: &envoy_types::pb::envoy::config::core::v3::TransportSocket,
) -> (i32, String) {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    use envoy_types::pb::envoy::extensions::transport_sockets::proxy_protocol::v3::ProxyProtocolUpstreamTransport;
    assert_eq!(
        socket.name,
        "envoy.transport_sockets.upstream_proxy_protocol"
    );
    let Some(ConfigType::TypedConfig(any)) = &socket.config_type else {
        panic!("{socket:?}")
    };
    let pp = ProxyProtocolUpstreamTransport::decode(any.value.as_slice()).unwrap();
    (
        pp.config.unwrap().version,
        pp.transport_socket.unwrap().name,
    )
}

/// `trafficPolicy.proxyProtocol` wraps the cluster's transport socket
/// (plaintext when it has none) and its auto mTLS match, as Istio's
/// `applyUpstreamProxyProtocol`; a subset's setting wins over the top
/// level's; the version defaults to V1.
#[test]
fn proxy_protocol_wraps_plaintext_tls_and_auto_mtls() {
    use envoy_types::pb::envoy::config::core::v3::proxy_protocol_config::Version;
    let rules = "
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1, namespace: default, labels: {app: reviews, version: v1, security.istio.io/tlsMode: istio}}
spec: {serviceAccountName: reviews, containers: [{name: reviews, image: reviews}]}
status: {podIP: 10.244.0.30}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: reviews-1, namespace: default, labels: {kubernetes.io/service-name: reviews}}
addressType: IPv4
ports: [{name: http, port: 9080}]
endpoints: [{addresses: [10.244.0.30], targetRef: {kind: Pod, name: reviews-v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy: {proxyProtocol: {}}
  subsets:
  - {name: v1, labels: {version: v1}, trafficPolicy: {proxyProtocol: {version: V2}}}
  - {name: tls, labels: {version: v1}, trafficPolicy: {tls: {mode: SIMPLE, sni: reviews.example}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: mongodb, namespace: default}
spec:
  host: mongodb
  trafficPolicy: {proxyProtocol: {version: V2}}
";
    let snap = mesh(rules, MeshConfig::default());
    assert!(snap.warnings.is_empty(), "{:?}", snap.warnings);
    let out = generate(&snap, &sidecar(&[]));
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    let raw = "envoy.transport_sockets.raw_buffer".to_owned();
    let tls = "envoy.transport_sockets.tls".to_owned();
    // Plaintext: the header, then the bytes as they are.
    let mongo = cluster(&out, "outbound|27017||mongodb.default.svc.cluster.local");
    assert_eq!(
        proxy_protocol_of(mongo.transport_socket.as_ref().unwrap()),
        (Version::V2 as i32, raw.clone())
    );
    // Auto mTLS: both the plaintext default and the `tlsMode: istio` match.
    for (name, version) in [
        (
            "outbound|9080||reviews.default.svc.cluster.local",
            Version::V1,
        ),
        (
            "outbound|9080|v1|reviews.default.svc.cluster.local",
            Version::V2,
        ),
    ] {
        let c = cluster(&out, name);
        assert_eq!(
            proxy_protocol_of(c.transport_socket.as_ref().unwrap()),
            (version as i32, raw.clone()),
            "{name}"
        );
        assert_eq!(c.transport_socket_matches.len(), 1, "{name}");
        let m = &c.transport_socket_matches[0];
        assert_eq!(
            proxy_protocol_of(m.transport_socket.as_ref().unwrap()),
            (version as i32, tls.clone()),
            "{name}"
        );
    }
    // TLS the rule originates: inside the header.
    let c = cluster(&out, "outbound|9080|tls|reviews.default.svc.cluster.local");
    assert_eq!(
        proxy_protocol_of(c.transport_socket.as_ref().unwrap()),
        (Version::V1 as i32, tls)
    );
    // And what the daemon sends is the same, byte for byte.
    let encoded: Vec<_> = translator::generate_encoded(&snap, &sidecar(&[]))
        .take(translator::CLUSTER_TYPE)
        .into_iter()
        .filter(|e| e.0.contains("reviews") || e.0.contains("mongodb"))
        .collect();
    assert_eq!(encoded.len(), 4);
    for e in encoded {
        let c = cluster(&out, &e.0);
        assert_eq!(
            e.2,
            translator::encoded::encode(translator::CLUSTER_TYPE, &c.name, c).2,
            "{}",
            e.0
        );
    }
}

/// The `tcp_proxy` of the sidecar's listener `name`.
fn tcp_proxy_of(out: &Output, name: &str) -> TcpProxy {
    let l = out
        .listeners
        .iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no listener {name}"));
    first_filter(&l.filter_chains[0])
}

/// `trafficPolicy.tunnel` (Istio's `tunnelingconfig.Apply`): a TCP route
/// whose one destination is a subset with a tunnel opens it through that
/// destination (`targetHost:targetPort`, `CONNECT` or `POST`); the top
/// level's tunnel applies to the whole service; weighted routes get none.
#[test]
fn a_tunnel_carries_tcp_through_its_destination() {
    let rules = |route: &str| {
        format!(
            "
apiVersion: v1
kind: Service
metadata: {{name: proxy, namespace: default}}
spec:
  clusterIP: 10.96.0.21
  ports: [{{name: tcp-connect, port: 3128}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: proxy, namespace: default}}
spec:
  host: proxy
  trafficPolicy: {{tunnel: {{targetHost: 'fd00::1', targetPort: 443, protocol: POST}}}}
  subsets:
  - {{name: ext, trafficPolicy: {{tunnel: {{targetHost: db.example.com, targetPort: 5432}}}}}}
  - {{name: plain}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: mongodb, namespace: default}}
spec:
  hosts: [mongodb]
  tcp: [{{route: {route}}}]
"
        )
    };
    let tunnel = |route: &str| {
        let snap = mesh(&rules(route), MeshConfig::default());
        assert!(snap.warnings.is_empty(), "{:?}", snap.warnings);
        let out = generate(&snap, &sidecar(&[]));
        tcp_proxy_of(&out, "10.96.0.20_27017")
            .tunneling_config
            .map(|t| (t.hostname, t.use_post))
    };
    assert_eq!(
        tunnel("[{destination: {host: proxy, subset: ext, port: {number: 3128}}}]"),
        Some(("db.example.com:5432".to_owned(), false))
    );
    // A subset without a tunnel does not take the top level's.
    assert_eq!(
        tunnel("[{destination: {host: proxy, subset: plain, port: {number: 3128}}}]"),
        None
    );
    assert_eq!(
        tunnel("[{destination: {host: proxy, port: {number: 3128}}}]"),
        Some(("[fd00::1]:443".to_owned(), true))
    );
    assert_eq!(
        tunnel(
            "[{destination: {host: proxy, subset: ext, port: {number: 3128}}, weight: 50}, {destination: {host: mongodb}, weight: 50}]"
        ),
        None
    );
    // The proxy's own listener tunnels too (its rule's top level).
    let out = generate(
        &mesh(
            &rules("[{destination: {host: mongodb}}]"),
            MeshConfig::default(),
        ),
        &sidecar(&[]),
    );
    assert_eq!(
        tcp_proxy_of(&out, "10.96.0.21_3128")
            .tunneling_config
            .map(|t| t.hostname),
        Some("[fd00::1]:443".to_owned())
    );
    assert!(
        tcp_proxy_of(&out, "10.96.0.20_27017")
            .tunneling_config
            .is_none()
    );
}

/// Istio's `validateTunnelSettings`, and `tunnel` with `proxyProtocol`.
#[test]
fn tunnel_settings_are_validated_by_field() {
    let rule = |tp: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r, namespace: default}}\nspec: {{host: proxy, trafficPolicy: {tp}}}\n"
        )
    };
    for (tp, field) in [
        (
            "{tunnel: {targetHost: a.example, targetPort: 443}, proxyProtocol: {}}",
            "spec.trafficPolicy.tunnel",
        ),
        (
            "{tunnel: {targetHost: a.example, targetPort: 443, protocol: GET}}",
            "spec.trafficPolicy.tunnel.protocol",
        ),
        (
            "{tunnel: {targetHost: 'not a host', targetPort: 443}}",
            "spec.trafficPolicy.tunnel.targetHost",
        ),
        (
            "{tunnel: {targetHost: a.example, targetPort: 70000}}",
            "spec.trafficPolicy.tunnel.targetPort",
        ),
    ] {
        let refused = crds::refusal(&rule(tp));
        assert_eq!(refused.as_ref().map(|r| r.0.as_str()), Some(field), "{tp}");
    }
    for ok in [
        "{tunnel: {targetHost: A.Example.com., targetPort: 443, protocol: CONNECT}}",
        "{tunnel: {targetHost: 192.0.2.1, targetPort: 1}}",
        "{proxyProtocol: {version: V2}}",
    ] {
        assert_eq!(crds::refusal(&rule(ok)), None, "{ok}");
    }
    // An unknown version is refused when read, naming the field.
    let (_, value) = split_documents(&rule("{proxyProtocol: {version: V3}}"))
        .pop()
        .unwrap();
    let err = parse_value(value.unwrap(), "default")
        .pop()
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(err.contains("version") && err.contains("V3"), "{err}");
}

/// `trafficPolicy.retryBudget` (Istio's `applyRetryBudget`): the circuit
/// breaker's retry budget, with the documented defaults (20 %, at least 3
/// concurrent retries, 0 meaning the default), a subset's own budget
/// winning.
#[test]
fn a_retry_budget_limits_concurrent_retries() {
    let dr = "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: r, namespace: default}
spec:
  host: reviews
  trafficPolicy: {retryBudget: {minRetryConcurrency: 0, budgetInterval: 10s}}
  subsets:
  - {name: v1, labels: {version: v1}, trafficPolicy: {retryBudget: {percent: 5.5, minRetryConcurrency: 1}}}
";
    let snap = mesh(dr, MeshConfig::default());
    assert!(snap.warnings.is_empty(), "{:?}", snap.warnings);
    let out = generate(&snap, &sidecar(&[]));
    let budget = |name: &str| {
        let b = cluster(&out, name)
            .circuit_breakers
            .as_ref()
            .unwrap()
            .thresholds[0]
            .retry_budget
            .unwrap();
        (
            b.budget_percent.unwrap().value,
            b.min_retry_concurrency.unwrap().value,
            b.budget_interval.map(|d| d.seconds),
        )
    };
    assert_eq!(
        budget("outbound|9080||reviews.default.svc.cluster.local"),
        (20.0, 3, Some(10))
    );
    assert_eq!(
        budget("outbound|9080|v1|reviews.default.svc.cluster.local"),
        (5.5, 1, None)
    );
    assert!(
        cluster(&out, "outbound|27017||mongodb.default.svc.cluster.local")
            .circuit_breakers
            .as_ref()
            .unwrap()
            .thresholds[0]
            .retry_budget
            .is_none()
    );
    let refused = crds::refusal(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec: {host: reviews, trafficPolicy: {retryBudget: {percent: 120}}}\n",
    );
    assert_eq!(
        refused.map(|r| r.0),
        Some("spec.trafficPolicy.retryBudget.percent".to_owned())
    );
}

/// A Sidecar's `outboundTrafficPolicy` is taken whole, as Istio's sidecar
/// scope takes it: without a `mode` it is the proto's default,
/// `REGISTRY_ONLY`, whatever the mesh's; without the policy, the mesh's
/// mode stands. A Sidecar with nothing in it is refused, as by istiod.
#[test]
fn a_sidecar_outbound_policy_without_a_mode_is_registry_only() {
    let fallback = |sidecar_spec: &str| {
        let text = format!(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: default, namespace: default}}\nspec: {sidecar_spec}\n"
        );
        let out = generate(&mesh(&text, MeshConfig::default()), &sidecar(&[]));
        let outbound = out
            .listeners
            .iter()
            .find(|l| l.name == "virtualOutbound")
            .unwrap();
        let tcp: TcpProxy = first_filter(&outbound.filter_chains[0]);
        match tcp.cluster_specifier {
            Some(tcp_proxy::ClusterSpecifier::Cluster(c)) => c,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(fallback("{outboundTrafficPolicy: {}}"), "BlackHoleCluster");
    assert_eq!(
        fallback("{outboundTrafficPolicy: {mode: ALLOW_ANY}}"),
        "PassthroughCluster"
    );
    assert_eq!(
        fallback("{egress: [{hosts: ['./*']}]}"),
        "PassthroughCluster"
    );
    assert_eq!(
        crds::refusal(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default}\nspec: {}\n"
        ),
        Some((
            "spec".to_owned(),
            "sidecar: empty configuration provided".to_owned()
        ))
    );
}

/// Istio's `validateLocalityLbSetting`: a topology label in
/// `failoverPriority` beside `failover` is refused, naming the field.
#[test]
fn failover_priority_with_failover_cannot_name_a_topology_label() {
    let rule = |lb: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r}}\nspec: {{host: reviews, trafficPolicy: {{loadBalancer: {{localityLbSetting: {lb}}}}}}}\n"
        )
    };
    assert_eq!(
        crds::refusal(&rule(
            "{failover: [{from: r1, to: r2}], failoverPriority: [topology.kubernetes.io/zone]}"
        ))
        .map(|r| r.0),
        Some("spec.trafficPolicy.loadBalancer.localityLbSetting.failoverPriority".to_owned())
    );
    assert_eq!(
        crds::refusal(&rule(
            "{failover: [{from: r1, to: r2}], failoverPriority: [rack]}"
        )),
        None
    );
}

/// `connectionPool.http.http2KeepAlive`: Envoy's `connection_keepalive` on
/// an HTTP/2 upstream (20 s timeout when only the interval is set);
/// durations under 1 ms refused, as Istio's CRD.
#[test]
fn http2_keepalive_pings_http2_upstreams() {
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
        HttpProtocolOptions, http_protocol_options,
    };
    let rules = "
apiVersion: v1
kind: Service
metadata: {name: grpc, namespace: default}
spec:
  clusterIP: 10.96.0.40
  ports: [{name: grpc, port: 9090}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: grpc, namespace: default}
spec:
  host: grpc
  trafficPolicy: {connectionPool: {http: {http2KeepAlive: {interval: 30s}}}}
";
    let out = generate(&mesh(rules, MeshConfig::default()), &sidecar(&[]));
    let c = cluster(&out, "outbound|9090||grpc.default.svc.cluster.local");
    let any = &c.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    let opts = HttpProtocolOptions::decode(any.value.as_slice()).unwrap();
    let Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(e)) =
        opts.upstream_protocol_options
    else {
        panic!("{opts:?}")
    };
    let Some(http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(h2)) =
        e.protocol_config
    else {
        panic!("{e:?}")
    };
    let k = h2.connection_keepalive.unwrap();
    assert_eq!(
        (k.interval.map(|d| d.seconds), k.timeout.map(|d| d.seconds)),
        (Some(30), Some(20))
    );
    assert_eq!(
        crds::refusal(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec: {host: grpc, trafficPolicy: {portLevelSettings: [{port: {number: 9090}, connectionPool: {http: {http2KeepAlive: {timeout: 0s}}}}]}}\n"
        )
        .map(|r| r.0),
        Some(
            "spec.trafficPolicy.portLevelSettings[0].connectionPool.http.http2KeepAlive.timeout"
                .to_owned()
        )
    );
}

/// A `datadog` extension provider (Istio's `datadogConfig`): Envoy's
/// Datadog tracer to the agent's outbound cluster, named for the proxy's
/// `app.namespace`, with the provider's `maxTagLength`; a field not acted
/// on is reported.
#[test]
fn a_datadog_provider_traces_to_the_agent() {
    use envoy_types::pb::envoy::config::trace::v3::DatadogConfig;
    let agent = "apiVersion: v1
kind: Service
metadata: {name: datadog-agent, namespace: datadog}
spec:
  clusterIP: 10.96.0.91
  ports: [{name: http-trace, port: 8126}]
";
    let settings = mesh_configmap(
        "{extensionProviders: [{name: dd, datadog: {service: datadog-agent.datadog.svc.cluster.local, port: 8126, maxTagLength: 99, flavour: x}}], defaultProviders: {tracing: [dd]}}",
    );
    let snap = mesh(&format!("{agent}---\n{settings}"), MeshConfig::default());
    let warned: Vec<String> = snap.warnings.iter().map(|w| w.field.clone()).collect();
    assert_eq!(warned, ["data.mesh.extensionProviders[0].datadog.flavour"]);
    let out = generate(&snap, &sidecar(&[("app", "client")]));
    let t = hcm_9080(&out).tracing.unwrap();
    assert_eq!(t.max_path_tag_length.map(|l| l.value), Some(99));
    let (name, dd) = tracer::<DatadogConfig>(t);
    assert_eq!(name, "envoy.tracers.datadog");
    assert_eq!(
        (
            dd.collector_cluster.as_str(),
            dd.service_name.as_str(),
            dd.collector_hostname.as_str()
        ),
        (
            "outbound|8126||datadog-agent.datadog.svc.cluster.local",
            "client.default",
            "datadog-agent.datadog.svc.cluster.local"
        )
    );
}

/// A `skywalking` extension provider: Envoy's SkyWalking tracer over gRPC
/// to the OAP server's outbound cluster (its hostname the authority), the
/// access token as the backend token, and a span per upstream request
/// (`spawn_upstream_span`, Istio's child spans for SkyWalking).
#[test]
fn a_skywalking_provider_streams_to_the_oap_server() {
    use envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
    use envoy_types::pb::envoy::config::trace::v3::{
        SkyWalkingConfig, client_config::BackendTokenSpecifier,
    };
    let oap = "apiVersion: v1
kind: Service
metadata: {name: oap, namespace: istio-system}
spec:
  clusterIP: 10.96.0.94
  ports: [{name: grpc, port: 11800}]
";
    let settings = mesh_configmap(
        "{extensionProviders: [{name: sw, skywalking: {service: oap.istio-system.svc.cluster.local, port: 11800, accessToken: t0k}}], defaultProviders: {tracing: [sw]}}",
    );
    let snap = mesh(&format!("{oap}---\n{settings}"), MeshConfig::default());
    assert!(snap.warnings.is_empty(), "{:?}", snap.warnings);
    let t = hcm_9080(&generate(&snap, &sidecar(&[]))).tracing.unwrap();
    assert_eq!(t.spawn_upstream_span.map(|b| b.value), Some(true));
    let (name, sw) = tracer::<SkyWalkingConfig>(t);
    assert_eq!(name, "envoy.tracers.skywalking");
    let Some(TargetSpecifier::EnvoyGrpc(grpc)) = sw.grpc_service.unwrap().target_specifier else {
        panic!("not Envoy's gRPC client")
    };
    assert_eq!(
        (grpc.cluster_name.as_str(), grpc.authority.as_str()),
        (
            "outbound|11800||oap.istio-system.svc.cluster.local",
            "oap.istio-system.svc.cluster.local"
        )
    );
    assert_eq!(
        sw.client_config.unwrap().backend_token_specifier,
        Some(BackendTokenSpecifier::BackendToken("t0k".into()))
    );
}

/// An `envoyOtelAls` provider (Istio's `openTelemetryLog`): Envoy's
/// OpenTelemetry access logger over gRPC to the collector's outbound
/// cluster, Istio's default log name and text line as the body, the
/// labels as attributes (one Envoy would refuse reported and left out),
/// without built-in labels; no logger where the collector is not visible.
#[test]
fn an_otel_access_log_provider_sends_log_records() {
    use envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType;
    use envoy_types::pb::envoy::extensions::access_loggers::open_telemetry::v3::OpenTelemetryAccessLogConfig;
    use envoy_types::pb::opentelemetry::proto::common::v1::any_value::Value;
    let collector = "apiVersion: v1
kind: Service
metadata: {name: otel, namespace: observability}
spec:
  clusterIP: 10.96.0.95
  ports: [{name: grpc-otlp, port: 4317}]
";
    let settings = mesh_configmap(
        "{extensionProviders: [{name: logs, envoyOtelAls: {service: otel.observability.svc.cluster.local, port: 4317, logFormat: {labels: {path: '%REQ_WITHOUT_QUERY(:PATH)%', bad: '%NOT_AN_OPERATOR%'}}}}], defaultProviders: {accessLogging: [logs]}}",
    );
    let snap = mesh(
        &format!("{collector}---\n{settings}"),
        MeshConfig::default(),
    );
    let warned: Vec<&str> = snap.warnings.iter().map(|w| w.field.as_str()).collect();
    assert_eq!(
        warned,
        ["data.mesh.extensionProviders[0].envoyOtelAls.logFormat.labels.bad"]
    );
    let out = generate(&snap, &sidecar(&[]));
    let listener = out
        .listeners
        .iter()
        .find(|l| l.name == "10.96.0.20_27017")
        .unwrap();
    let tcp: TcpProxy = first_filter(&listener.filter_chains[0]);
    assert_eq!(tcp.access_log.len(), 1);
    assert_eq!(
        tcp.access_log[0].name,
        "envoy.access_loggers.open_telemetry"
    );
    let Some(ConfigType::TypedConfig(any)) = &tcp.access_log[0].config_type else {
        panic!("no config");
    };
    let otel = OpenTelemetryAccessLogConfig::decode(any.value.as_slice()).unwrap();
    assert_eq!(otel.log_name, "otel_envoy_accesslog");
    assert!(otel.disable_builtin_labels);
    let Some(Value::StringValue(body)) = otel.body.and_then(|b| b.value) else {
        panic!("no body")
    };
    assert_eq!(body, translator::model::ISTIO_TEXT_LOG_FORMAT);
    let attributes: Vec<(String, Option<Value>)> = otel
        .attributes
        .unwrap()
        .values
        .into_iter()
        .map(|kv| (kv.key, kv.value.and_then(|v| v.value)))
        .collect();
    assert_eq!(
        attributes,
        [(
            "path".to_owned(),
            Some(Value::StringValue("%REQ_WITHOUT_QUERY(:PATH)%".into()))
        )]
    );
    assert_eq!(
        otel.formatters
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>(),
        ["envoy.formatter.req_without_query"]
    );
    let Some(envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier::EnvoyGrpc(g)) =
        otel.grpc_service.and_then(|g| g.target_specifier)
    else {
        panic!("not Envoy's gRPC client")
    };
    assert_eq!(
        g.cluster_name,
        "outbound|4317||otel.observability.svc.cluster.local"
    );
    // Without the collector's service, no logger (Envoy would refuse it).
    let alone = mesh(&settings, MeshConfig::default());
    let out = generate(&alone, &sidecar(&[]));
    let listener = out
        .listeners
        .iter()
        .find(|l| l.name == "10.96.0.20_27017")
        .unwrap();
    let tcp: TcpProxy = first_filter(&listener.filter_chains[0]);
    assert!(tcp.access_log.is_empty());
}

/// `envoyHttpAls` and `envoyTcpAls` providers (Istio's
/// `httpGrpcAccessLogFromTelemetry` / `tcpGrpcAccessLogFromTelemetry`):
/// Envoy's gRPC access loggers to the service's outbound cluster, API V3,
/// Istio's default log names and peer filter state objects, the HTTP one
/// with its header lists; headers on the TCP one and unknown fields are
/// reported.
#[test]
fn grpc_access_log_providers_stream_to_the_service() {
    use envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType;
    use envoy_types::pb::envoy::extensions::access_loggers::grpc::v3::{
        HttpGrpcAccessLogConfig, TcpGrpcAccessLogConfig,
    };
    let service = "apiVersion: v1
kind: Service
metadata: {name: als, namespace: observability}
spec:
  clusterIP: 10.96.0.96
  ports: [{name: grpc-als, port: 9811}]
";
    let settings = mesh_configmap(
        "{extensionProviders: [{name: h, envoyHttpAls: {service: als.observability.svc.cluster.local, port: 9811, additionalRequestHeadersToLog: [x-a], additionalResponseTrailersToLog: [grpc-status], bufferSize: 3}}, {name: t, envoyTcpAls: {service: observability/als.observability.svc.cluster.local, port: 9811, logName: conns, filterStateObjectsToLog: [my.state], additionalRequestHeadersToLog: [x-a]}}], defaultProviders: {accessLogging: [h, t]}}",
    );
    let snap = mesh(&format!("{service}---\n{settings}"), MeshConfig::default());
    let warned: Vec<&str> = snap.warnings.iter().map(|w| w.field.as_str()).collect();
    assert_eq!(
        warned,
        [
            "data.mesh.extensionProviders[0].envoyHttpAls.bufferSize",
            "data.mesh.extensionProviders[1].envoyTcpAls"
        ]
    );
    let out = generate(&snap, &sidecar(&[]));
    let listener = out
        .listeners
        .iter()
        .find(|l| l.name == "10.96.0.20_27017")
        .unwrap();
    let tcp: TcpProxy = first_filter(&listener.filter_chains[0]);
    let names: Vec<&str> = tcp.access_log.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "envoy.access_loggers.http_grpc",
            "envoy.access_loggers.tcp_grpc"
        ]
    );
    let config = |i: usize| match &tcp.access_log[i].config_type {
        Some(ConfigType::TypedConfig(any)) => any.value.clone(),
        None => panic!("no config"),
    };
    let http = HttpGrpcAccessLogConfig::decode(config(0).as_slice()).unwrap();
    assert_eq!(http.additional_request_headers_to_log, ["x-a"]);
    assert_eq!(http.additional_response_trailers_to_log, ["grpc-status"]);
    let common = http.common_config.unwrap();
    assert_eq!(common.log_name, "http_envoy_accesslog");
    assert_eq!(common.transport_api_version, 2, "V3");
    assert_eq!(
        common.filter_state_objects_to_log,
        [
            "wasm.upstream_peer",
            "wasm.upstream_peer_id",
            "wasm.downstream_peer",
            "wasm.downstream_peer_id"
        ]
    );
    let Some(envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier::EnvoyGrpc(g)) =
        common.grpc_service.and_then(|g| g.target_specifier)
    else {
        panic!("not Envoy's gRPC client")
    };
    assert_eq!(
        g.cluster_name,
        "outbound|9811||als.observability.svc.cluster.local"
    );
    let tcp_log = TcpGrpcAccessLogConfig::decode(config(1).as_slice()).unwrap();
    let common = tcp_log.common_config.unwrap();
    assert_eq!(common.log_name, "conns");
    assert_eq!(common.filter_state_objects_to_log, ["my.state"]);
}

/// Telemetry `enableIstioTags: false` leaves Istio's tags off the spans,
/// and `useRequestIdForTraceSampling` sets the connection managers' UUID
/// request ID extension (unset: Envoy's default, not written).
#[test]
fn telemetry_sets_istio_tags_and_request_id_sampling() {
    use envoy_types::pb::envoy::extensions::request_id::uuid::v3::UuidRequestIdConfig;
    let zipkin = ZIPKIN_SERVICE;
    let settings = mesh_configmap(
        "{extensionProviders: [{name: zipkin, zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}}], defaultProviders: {tracing: [zipkin]}}",
    );
    let telemetry = "apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: t, namespace: default}
spec:
  tracing: [{enableIstioTags: false, useRequestIdForTraceSampling: false}]
";
    let hcm = |extra: &str| {
        let snap = mesh(
            &format!("{zipkin}---\n{settings}---\n{extra}"),
            MeshConfig::default(),
        );
        hcm_9080(&generate(&snap, &sidecar(&[])))
    };
    let plain = hcm("");
    assert!(plain.request_id_extension.is_none());
    assert!(
        plain
            .tracing
            .unwrap()
            .custom_tags
            .iter()
            .any(|t| t.tag == "istio.namespace")
    );
    let set = hcm(telemetry);
    assert!(set.tracing.unwrap().custom_tags.is_empty());
    let ext = set.request_id_extension.unwrap().typed_config.unwrap();
    let uuid = UuidRequestIdConfig::decode(ext.value.as_slice()).unwrap();
    assert_eq!(
        uuid.use_request_id_for_trace_sampling.map(|b| b.value),
        Some(false)
    );
}

/// Sidecar `egress[].port`: a listener naming a port gives that port its
/// own hosts (the catch-all listener no longer serves it); the clusters
/// are every listener's services; Istio's listener rules are validated.
#[test]
fn sidecar_egress_ports_scope_each_port_to_its_listener() {
    let cfg = "
apiVersion: v1
kind: Service
metadata: {name: ledger, namespace: finance}
spec:
  clusterIP: 10.96.9.9
  ports: [{name: http, port: 9080}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  egress:
  - {port: {number: 9080, protocol: HTTP, name: http}, hosts: [\"finance/*\"]}
  - {hosts: [\"./*\"]}
";
    let snap = mesh(cfg, MeshConfig::default());
    assert!(snap.warnings.is_empty(), "{:?}", snap.warnings);
    let out = generate(&snap, &sidecar(&[]));
    let mut clusters: Vec<&str> = out
        .clusters
        .iter()
        .filter_map(|c| c.name.rsplit_once('|').map(|(_, h)| h))
        .collect();
    clusters.dedup();
    assert_eq!(
        clusters,
        [
            "ledger.finance.svc.cluster.local",
            "mongodb.default.svc.cluster.local",
            "reviews.default.svc.cluster.local"
        ]
    );
    let hosts: Vec<&str> = route_config(&out, "9080")
        .virtual_hosts
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    assert!(
        hosts.iter().any(|h| h.starts_with("ledger.finance"))
            && !hosts.iter().any(|h| h.starts_with("reviews.default")),
        "{hosts:?}"
    );
    // Other ports: the catch-all listener's hosts.
    assert!(out.listeners.iter().any(|l| l.name == "10.96.0.20_27017"));
    let sidecar_rule = |egress: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: s}}\nspec: {{egress: {egress}}}\n"
        )
    };
    for (egress, field) in [
        (
            "[{hosts: ['./*']}, {port: {number: 80}, hosts: ['./*']}]",
            "spec.egress[0]",
        ),
        ("[{hosts: ['./*']}, {hosts: ['*/*']}]", "spec.egress[0]"),
        (
            "[{port: {number: 80}, hosts: ['./*']}, {port: {number: 80}, hosts: ['*/*']}]",
            "spec.egress[1].port.number",
        ),
    ] {
        assert_eq!(
            crds::refusal(&sidecar_rule(egress)).map(|r| r.0),
            Some(field.to_owned()),
            "{egress}"
        );
    }
}

/// `trafficPolicy.tunnel` on a gateway: a TCP server's route to a subset
/// with a tunnel opens it with `POST` when the rule says so (Istio's
/// `tunnelingconfig.Apply` on gateways as on sidecars).
#[test]
fn a_gateway_tcp_route_tunnels_through_its_destination() {
    let cfg = "
apiVersion: v1
kind: Service
metadata: {name: proxy, namespace: default}
spec:
  clusterIP: 10.96.0.21
  ports: [{name: tcp-connect, port: 3128}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: proxy, namespace: default}
spec:
  host: proxy
  subsets:
  - {name: ext, trafficPolicy: {tunnel: {protocol: POST, targetHost: db.example.com, targetPort: 5432}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 5432, name: tcp, protocol: TCP}
    hosts: [\"*\"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: istio-system}
spec:
  hosts: [\"*\"]
  gateways: [gw]
  tcp: [{route: [{destination: {host: proxy.default.svc.cluster.local, subset: ext, port: {number: 3128}}}]}]
";
    let gw = Proxy::from_node_id(
        "router~127.0.0.1~gw.istio-system~istio-system.svc.cluster.local",
        None,
        [("istio".to_string(), "egressgateway".to_string())].into(),
    )
    .unwrap();
    let snap = mesh(cfg, MeshConfig::default());
    assert!(snap.warnings.is_empty(), "{:?}", snap.warnings);
    let out = generate(&snap, &gw);
    let tcp: TcpProxy = first_filter(&out.listeners[0].filter_chains[0]);
    assert_eq!(
        tcp.cluster_specifier,
        Some(tcp_proxy::ClusterSpecifier::Cluster(
            "outbound|3128|ext|proxy.default.svc.cluster.local".into()
        ))
    );
    let t = tcp.tunneling_config.unwrap();
    assert_eq!(
        (t.hostname.as_str(), t.use_post),
        ("db.example.com:5432", true)
    );
}

/// Sidecar egress `bind` and `captureMode: NONE` (Istio's sidecar without
/// iptables): the port's listener is `<bind>_<port>` (127.0.0.1 by
/// default under NONE), a real socket under NONE; a TCP service there is
/// its default chain instead of a `<vip>_<port>` listener (one per bound
/// port, the first by hostname: another is reported); a `unix://` bind is
/// a socket (Envoy's `Pipe`) the listener binds, as nothing is captured to
/// it.
#[test]
fn egress_listeners_bind_where_the_sidecar_says() {
    let extra = "
apiVersion: v1
kind: Service
metadata: {name: mongo-2, namespace: default}
spec:
  clusterIP: 10.96.0.21
  ports: [{name: tcp-mongo, port: 27017}]
---
apiVersion: v1
kind: Service
metadata: {name: stats, namespace: default}
spec:
  clusterIP: 10.96.0.22
  ports: [{name: http-stats, port: 9090}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: no-iptables, namespace: default}
spec:
  egress:
  - port: {number: 27017, protocol: TCP, name: mongo}
    captureMode: NONE
    hosts: [./mongodb.default.svc.cluster.local, ./mongo-2.default.svc.cluster.local]
  - port: {number: 9080, protocol: HTTP, name: http}
    bind: 127.0.0.9
    hosts: [./*]
  - port: {number: 9090, protocol: HTTP, name: sock}
    bind: unix:///var/run/egress.sock
    hosts: [./*]
";
    let out = generate(&mesh(extra, MeshConfig::default()), &sidecar(&[]));
    let names: Vec<&str> = out.listeners.iter().map(|l| l.name.as_str()).collect();
    assert!(names.contains(&"127.0.0.1_27017"), "{names:?}");
    assert!(
        !names.iter().any(|n| n.starts_with("10.96.0.2")),
        "{names:?}"
    );
    let mongo = out
        .listeners
        .iter()
        .find(|l| l.name == "127.0.0.1_27017")
        .unwrap();
    assert_eq!(mongo.bind_to_port, None, "a real socket");
    let Some(chain) = &mongo.default_filter_chain else {
        panic!("{mongo:?}")
    };
    let tcp: TcpProxy = first_filter(chain);
    assert_eq!(
        tcp.cluster_specifier,
        Some(tcp_proxy::ClusterSpecifier::Cluster(
            "outbound|27017||mongo-2.default.svc.cluster.local".into()
        ))
    );
    let http = out
        .listeners
        .iter()
        .find(|l| l.name == "127.0.0.9_9080")
        .unwrap();
    assert_eq!(http.bind_to_port.map(|b| b.value), Some(false), "captured");
    let fields: Vec<(&str, &str)> = out
        .warnings
        .iter()
        .map(|w| (w.field.as_str(), w.reason.as_str()))
        .collect();
    assert!(
        fields
            .iter()
            .any(|(f, r)| *f == "spec.egress[].bind" && r.contains("mongodb.default")),
        "{fields:?}"
    );
    assert!(
        !fields.iter().any(|(_, r)| r.contains("unix")),
        "{fields:?}"
    );
    let socket = out
        .listeners
        .iter()
        .find(|l| l.name == "unix:///var/run/egress.sock_9090")
        .unwrap_or_else(|| panic!("{names:?}"));
    assert_eq!(socket.bind_to_port, None, "a real socket");
    assert_eq!(
        socket.address.as_ref().and_then(|a| a.address.clone()),
        Some(address::Address::Pipe(Pipe {
            path: "/var/run/egress.sock".into(),
            mode: 0
        }))
    );
    assert!(socket.default_filter_chain.is_some(), "{socket:?}");
}

/// `loadBalancer.backendUtilization` is Envoy's client-side weighted round
/// robin, field for field (the penalty a percentage), with the rule's
/// warmup as its slow start.
#[test]
fn backend_utilization_is_client_side_weighted_round_robin() {
    use envoy_types::pb::envoy::extensions::load_balancing_policies::client_side_weighted_round_robin::v3::ClientSideWeightedRoundRobin;
    let rule = "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      backendUtilization:
        weightExpirationPeriod: 3m
        weightStabilizationPeriod: 5s
        weightUpdatePeriod: 0.5s
        errorUtilizationPenaltyPercent: 50
        metricNamesForComputingUtilization: [named_metrics.gpu]
      warmup: {duration: 30s}
";
    let out = generate(&mesh(rule, MeshConfig::default()), &sidecar(&[]));
    let c = out
        .clusters
        .iter()
        .find(|c| c.name == "outbound|9080||reviews.default.svc.cluster.local")
        .unwrap();
    let policy = c.load_balancing_policy.as_ref().unwrap();
    let ext = policy.policies[0].typed_extension_config.as_ref().unwrap();
    assert_eq!(
        ext.name,
        "envoy.load_balancing_policies.client_side_weighted_round_robin"
    );
    let w =
        ClientSideWeightedRoundRobin::decode(ext.typed_config.as_ref().unwrap().value.as_slice())
            .unwrap();
    let secs = |d: Option<envoy_types::pb::google::protobuf::Duration>| {
        d.map(|d| d.seconds as f64 + f64::from(d.nanos) / 1e9)
    };
    assert_eq!(secs(w.weight_expiration_period), Some(180.0));
    assert_eq!(secs(w.blackout_period), Some(5.0));
    assert_eq!(secs(w.weight_update_period), Some(0.5));
    assert_eq!(w.error_utilization_penalty.map(|p| p.value), Some(0.5));
    assert_eq!(
        w.metric_names_for_computing_utilization,
        ["named_metrics.gpu"]
    );
    let slow = w.slow_start_config.unwrap();
    assert_eq!(secs(slow.slow_start_window), Some(30.0));
}

/// Istio's metrics: only for a proxy whose Envoy has the stats access
/// logger; one logger per event (a request's end, a TCP connection's
/// connect, its end) on every HTTP connection manager, with Istio's names
/// and labels; its clusters carry Istio's service metadata. A Telemetry
/// naming another provider, or turning every metric off, leaves them out;
/// one removing a tag and adding a CEL one changes that metric alone.
#[test]
fn istio_metrics_are_stats_loggers_for_proxies_that_have_them() {
    use envoy_types::pb::envoy::extensions::access_loggers::stats::v3::Config as Stats;
    let stats_in =
        |logs: &[envoy_types::pb::envoy::config::accesslog::v3::AccessLog]| -> Vec<Stats> {
            logs.iter()
            .filter(|l| l.name == "envoy.access_loggers.stats")
            .map(|l| match &l.config_type {
                Some(envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType::TypedConfig(any)) => {
                    Stats::decode(any.value.as_slice()).unwrap()
                }
                None => panic!("no config"),
            })
            .collect()
        };
    let stats_of = |out: &Output| stats_in(&hcm_9080(out).access_log);
    let snap = mesh("", MeshConfig::default());
    let mut p = sidecar(&[("app", "client")]);
    assert!(stats_of(&generate(&snap, &p)).is_empty());
    assert!(
        generate(&snap, &p)
            .clusters
            .iter()
            .all(|c| c.metadata.is_none())
    );

    p.stats_logger = true;
    let out = generate(&snap, &p);
    // The connection manager gets the HTTP metrics' logger, the TCP
    // proxies (mongodb's port) those of the TCP metrics.
    let loggers = stats_of(&out);
    assert_eq!(loggers.len(), 1, "{loggers:?}");
    let tcp_chain = out
        .listeners
        .iter()
        .filter(|l| l.name.ends_with("_27017"))
        .flat_map(|l| &l.filter_chains)
        .find(|c| {
            c.filters
                .first()
                .is_some_and(|f| f.name == "envoy.filters.network.tcp_proxy")
        })
        .unwrap();
    let tcp_loggers = stats_in(&first_filter::<TcpProxy>(tcp_chain).access_log);
    assert_eq!(tcp_loggers.len(), 2, "{tcp_loggers:?}");
    let names: Vec<&str> = loggers
        .iter()
        .chain(&tcp_loggers)
        .flat_map(|l| {
            l.counters
                .iter()
                .filter_map(|c| c.stat.as_ref())
                .chain(l.histograms.iter().filter_map(|h| h.stat.as_ref()))
        })
        .map(|s| s.name.as_str())
        .collect();
    for metric in translator::metrics::Metric::ALL {
        assert!(names.contains(&metric.stat_name()), "{names:?}");
    }
    let requests = loggers[0].counters[0].stat.as_ref().unwrap();
    assert_eq!(requests.name, "istio_requests_total");
    let tag = |s: &envoy_types::pb::envoy::extensions::access_loggers::stats::v3::config::Stat,
               name: &str| {
        s.tags
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.value_format.clone())
    };
    assert_eq!(tag(requests, "reporter").as_deref(), Some("source"));
    assert_eq!(
        tag(requests, "response_code").as_deref(),
        Some("%RESPONSE_CODE%")
    );
    // The peer's workload: over HTTP from its headers, over TCP unknown.
    assert!(
        tag(requests, "destination_workload")
            .is_some_and(|f| f.contains(translator::metrics::PEER_NAMESPACE))
    );
    let closed = tcp_loggers
        .iter()
        .flat_map(|l| &l.counters)
        .filter_map(|c| c.stat.as_ref())
        .find(|s| s.name == "istio_tcp_connections_closed_total")
        .unwrap();
    assert_eq!(
        tag(closed, "destination_workload").as_deref(),
        Some("unknown")
    );
    assert_eq!(tag(closed, "request_protocol").as_deref(), Some("tcp"));
    assert!(
        tag(requests, "source_workload")
            .is_some_and(|f| f.contains("xds.node.metadata.WORKLOAD_NAME"))
    );
    let reviews = out
        .clusters
        .iter()
        .find(|c| c.name == "outbound|9080||reviews.default.svc.cluster.local")
        .unwrap();
    let metadata = &reviews.metadata.as_ref().unwrap().filter_metadata;
    let text = format!("{:?}", metadata["istio"]);
    assert!(text.contains("reviews.default.svc.cluster.local"), "{text}");
    assert!(metadata.contains_key(translator::metrics::PEER_NAMESPACE));
    // A MESH_EXTERNAL entry's cluster names its service, but its
    // workloads are not sent the client's labels.
    let external = format!("{HTTPBIN_DNS}  location: MESH_EXTERNAL\n");
    let with_entry = generate(&mesh(&external, MeshConfig::default()), &p);
    let httpbin = with_entry
        .clusters
        .iter()
        .find(|c| c.name == "outbound|80||httpbin.example.com")
        .unwrap();
    let metadata = &httpbin.metadata.as_ref().unwrap().filter_metadata;
    assert!(format!("{:?}", metadata["istio"]).contains("httpbin.example.com"));
    assert!(!metadata.contains_key(translator::metrics::PEER_NAMESPACE));
    // The metadata exchange: the route configuration sends the workload's
    // labels, the connection manager reads the server's from its answer.
    let route = out.routes.iter().find(|r| r.name == "9080").unwrap();
    let sent: Vec<&str> = route
        .request_headers_to_add
        .iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| h.key.as_str())
        .collect();
    assert_eq!(sent.len(), 7, "{sent:?}");
    assert!(sent.contains(&"x-istio-peer-workload"), "{sent:?}");
    let hcm = hcm_9080(&out);
    let filters: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert!(
        filters.contains(&"envoy.filters.http.header_to_metadata"),
        "{filters:?}"
    );
    p.stats_logger = false;
    let plain = generate(&snap, &p);
    let route = plain.routes.iter().find(|r| r.name == "9080").unwrap();
    assert!(route.request_headers_to_add.is_empty());
    p.stats_logger = true;

    let with = |telemetry: &str| {
        let snap = mesh(telemetry, MeshConfig::default());
        stats_of(&generate(&snap, &p))
    };
    let header = "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: mesh-default, namespace: istio-system}\nspec:\n  metrics:\n";
    assert!(with(&format!("{header}  - providers: [{{name: stackdriver}}]\n")).is_empty());
    assert!(with(&format!("{header}  - overrides: [{{disabled: true}}]\n")).is_empty());
    let changed = with(&format!(
        "{header}  - overrides:\n    - match: {{metric: REQUEST_COUNT, mode: CLIENT}}\n      tagOverrides: {{request_host: {{value: request.host}}, source_app: {{operation: REMOVE}}}}\n"
    ));
    let requests = changed[0].counters[0].stat.as_ref().unwrap();
    assert_eq!(
        tag(requests, "request_host").as_deref(),
        Some("%CEL(request.host)%")
    );
    assert_eq!(tag(requests, "source_app"), None);
    let duration = changed[0].histograms[0].stat.as_ref().unwrap();
    assert!(tag(duration, "source_app").is_some());
    // A server-side override leaves the client side alone.
    let server_only = with(&format!(
        "{header}  - overrides: [{{match: {{mode: SERVER}}, disabled: true}}]\n"
    ));
    assert_eq!(server_only.len(), 1);
}
