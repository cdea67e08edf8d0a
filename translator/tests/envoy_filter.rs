//! EnvoyFilter patches on what is generated for a sidecar and a gateway:
//! HTTP and network filters inserted, removed and merged by match and
//! context, clusters added and merged, routes merged, selection by
//! namespace and labels, and what cannot be read reported.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use envoy_types::pb::envoy::config::listener::v3::{
    FilterChain, Listener, filter, listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use prost::Message;
use translator::model::{MeshConfig, Proxy, Snapshot};
use translator::{Output, generate, generate_encoded};

/// reviews (HTTP 9080) with a pod at 10.244.0.12 (its sidecar has the
/// inbound side); ratings (HTTP 9080) elsewhere.
const PLATFORM: &str = "
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  clusterIP: 10.96.0.13
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Pod
metadata:
  name: reviews-0
  namespace: default
  labels: {app: reviews, security.istio.io/tlsMode: istio}
spec: {serviceAccountName: reviews, containers: [{name: app, image: app}]}
status: {podIP: 10.244.0.12}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: reviews-1, namespace: default, labels: {kubernetes.io/service-name: reviews}}
addressType: IPv4
ports: [{name: http, port: 9080}]
endpoints: [{addresses: [10.244.0.12], targetRef: {kind: Pod, name: reviews-0, namespace: default}}]
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: default}
spec:
  clusterIP: 10.96.0.14
  ports: [{name: http, port: 9080}]
---
";

const LUA: &str = "{name: envoy.filters.http.lua, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua, inlineCode: 'function envoy_on_response(h) h:headers():add(\"x-lua\", \"yes\") end'}}";

fn mesh(extra: &str) -> Snapshot {
    Snapshot::build(
        1,
        &crds::objects_of(&[PLATFORM, extra]),
        MeshConfig::default(),
    )
}

fn reviews() -> Proxy {
    Proxy::from_node_id(
        "sidecar~10.244.0.12~reviews-0.default~default.svc.cluster.local",
        None,
        [("app".to_owned(), "reviews".to_owned())].into(),
    )
    .unwrap()
}

fn envoy_filter(name: &str, ns: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n---\n"
    )
}

/// The HTTP filters of every connection manager of `listener` (its
/// default chain too), by chain name.
fn http_filters(listener: &Listener) -> Vec<(String, Vec<String>)> {
    listener
        .filter_chains
        .iter()
        .chain(listener.default_filter_chain.as_ref())
        .filter_map(|c: &FilterChain| {
            let f = c
                .filters
                .iter()
                .find(|f| f.name == "envoy.filters.network.http_connection_manager")?;
            let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                return None;
            };
            let hcm = HttpConnectionManager::decode(any.value.as_slice()).ok()?;
            Some((
                c.name.clone(),
                hcm.http_filters.into_iter().map(|h| h.name).collect(),
            ))
        })
        .collect()
}

fn listener<'a>(out: &'a Output, name: &str) -> &'a Listener {
    out.listeners
        .iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no listener {name}"))
}

#[test]
fn an_http_filter_is_inserted_before_the_router_on_the_inbound_side_only() {
    let snap = mesh(&envoy_filter(
        "lua",
        "default",
        &format!(
            "  workloadSelector: {{labels: {{app: reviews}}}}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_INBOUND
      listener:
        portNumber: 9080
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
            subFilter: {{name: envoy.filters.http.router}}
    patch: {{operation: INSERT_BEFORE, value: {LUA}}}"
        ),
    ));
    assert!(snap.warnings.is_empty(), "{:?}", snap.warnings);
    let out = generate(&snap, &reviews());
    let inbound = http_filters(listener(&out, "virtualInbound"));
    let on_9080: Vec<_> = inbound
        .iter()
        .filter(|(_, f)| f.contains(&"envoy.filters.http.lua".to_owned()))
        .collect();
    assert!(!on_9080.is_empty(), "{inbound:?}");
    for (_, filters) in &on_9080 {
        let lua = filters
            .iter()
            .position(|f| f == "envoy.filters.http.lua")
            .unwrap();
        assert_eq!(filters[lua + 1], "envoy.filters.http.router", "{filters:?}");
    }
    // Not on the outbound side.
    let outbound = http_filters(listener(&out, "0.0.0.0_9080"));
    assert!(
        outbound
            .iter()
            .all(|(_, f)| !f.contains(&"envoy.filters.http.lua".to_owned())),
        "{outbound:?}"
    );
    // Nor for a workload the selector does not pick.
    let other = Proxy::from_node_id(
        "sidecar~10.244.0.50~client-0.default~default.svc.cluster.local",
        None,
        [("app".to_owned(), "client".to_owned())].into(),
    )
    .unwrap();
    let out = generate(&snap, &other);
    assert!(out.listeners.iter().all(|l| {
        http_filters(l)
            .iter()
            .all(|(_, f)| !f.contains(&"envoy.filters.http.lua".to_owned()))
    }));
    // The encoded output (the daemon's) carries the same patch.
    let encoded = generate_encoded(&snap, &reviews());
    let inbound = encoded
        .listeners
        .iter()
        .find(|(name, ..)| &**name == "virtualInbound")
        .unwrap();
    let any = envoy_types::pb::google::protobuf::Any::decode(inbound.2.as_ref()).unwrap();
    let l = Listener::decode(any.value.as_slice()).unwrap();
    assert!(
        http_filters(&l)
            .iter()
            .any(|(_, f)| f.contains(&"envoy.filters.http.lua".to_owned()))
    );
}

#[test]
fn clusters_and_routes_are_merged_added_and_removed() {
    let snap = mesh(&envoy_filter(
        "mesh-wide",
        "istio-system",
        "  configPatches:
  - applyTo: CLUSTER
    match: {context: SIDECAR_OUTBOUND, cluster: {service: ratings.default.svc.cluster.local, portNumber: 9080}}
    patch: {operation: MERGE, value: {connect_timeout: 7s, per_connection_buffer_limit_bytes: 4096}}
  - applyTo: CLUSTER
    match: {context: SIDECAR_OUTBOUND}
    patch:
      operation: ADD
      value: {name: rate-limit-service, type: STRICT_DNS, connect_timeout: 1s, load_assignment: {cluster_name: rate-limit-service, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: ratelimit.example, port_value: 8081}}}}]}]}}
  - applyTo: CLUSTER
    match: {cluster: {name: 'outbound|9080||reviews.default.svc.cluster.local'}}
    patch: {operation: REMOVE}
  - applyTo: HTTP_ROUTE
    match: {context: SIDECAR_OUTBOUND, routeConfiguration: {portNumber: 9080, vhost: {name: 'ratings.default.svc.cluster.local:9080'}}}
    patch: {operation: MERGE, value: {request_headers_to_add: [{header: {key: x-patched, value: 'yes'}}]}}
  - applyTo: NETWORK_FILTER
    match: {context: SIDECAR_OUTBOUND, listener: {portNumber: 9080, filterChain: {filter: {name: envoy.filters.network.http_connection_manager}}}}
    patch: {operation: MERGE, value: {name: envoy.filters.network.http_connection_manager, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, server_name: patched-by-envoyfilter}}}",
    ));
    assert!(snap.warnings.is_empty(), "{:?}", snap.warnings);
    let out = generate(&snap, &reviews());
    let ratings = out
        .clusters
        .iter()
        .find(|c| c.name == "outbound|9080||ratings.default.svc.cluster.local")
        .unwrap();
    assert_eq!(ratings.connect_timeout.as_ref().map(|d| d.seconds), Some(7));
    assert_eq!(
        ratings
            .per_connection_buffer_limit_bytes
            .as_ref()
            .map(|v| v.value),
        Some(4096)
    );
    // Merged, not replaced: the generated settings stay.
    assert!(ratings.eds_cluster_config.is_some(), "{ratings:?}");
    assert!(out.clusters.iter().any(|c| c.name == "rate-limit-service"));
    assert!(
        !out.clusters
            .iter()
            .any(|c| c.name == "outbound|9080||reviews.default.svc.cluster.local")
    );
    // The route's virtual host got the header; the others did not.
    let rc = out.routes.iter().find(|r| r.name == "9080").unwrap();
    for vh in &rc.virtual_hosts {
        let patched = vh.routes.iter().all(|r| {
            r.request_headers_to_add
                .iter()
                .any(|h| h.header.as_ref().is_some_and(|h| h.key == "x-patched"))
        });
        assert_eq!(
            patched,
            vh.name == "ratings.default.svc.cluster.local:9080",
            "{}",
            vh.name
        );
    }
    // The connection manager's typed config merged as its own type: the
    // server name set, its route discovery and filters kept.
    let l = listener(&out, "0.0.0.0_9080");
    let chain = l
        .default_filter_chain
        .as_ref()
        .unwrap_or_else(|| &l.filter_chains[0]);
    let Some(filter::ConfigType::TypedConfig(any)) = &chain.filters[0].config_type else {
        panic!()
    };
    let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
    assert_eq!(hcm.server_name, "patched-by-envoyfilter");
    assert!(hcm.route_specifier.is_some());
    assert!(!hcm.http_filters.is_empty());
    // The gateway context is not a sidecar's: a gateway gets none of them.
    let gw = Proxy::from_node_id(
        "router~10.244.0.70~gw-0.istio-system~istio-system.svc.cluster.local",
        None,
        Default::default(),
    )
    .unwrap();
    let out = generate(&snap, &gw);
    assert!(!out.clusters.iter().any(|c| c.name == "rate-limit-service"));
}

#[test]
fn filters_are_removed_and_what_cannot_be_read_is_reported() {
    let snap = mesh(&format!(
        "{}{}",
        envoy_filter(
            "no-cors",
            "default",
            "  configPatches:
  - applyTo: HTTP_FILTER
    match: {listener: {filterChain: {filter: {name: envoy.filters.network.http_connection_manager, subFilter: {name: envoy.filters.http.cors}}}}}
    patch: {operation: REMOVE}",
        ),
        envoy_filter(
            "broken",
            "default",
            "  configPatches:
  - applyTo: HTTP_FILTER
    patch: {operation: INSERT_FIRST, value: {name: x, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua, noSuchField: 1}}}
  - applyTo: EXTENSION_CONFIG
    patch: {operation: MERGE, value: {name: y}}
  - applyTo: HTTP_FILTER
    match: {context: WAYPOINT}
    patch: {operation: REMOVE}
  - applyTo: EXTENSION_CONFIG
    patch: {operation: ADD, value: {name: z}}",
        ),
    ));
    let fields: Vec<&str> = snap
        .warnings
        .iter()
        .filter(|w| w.object == "default/broken")
        .map(|w| w.field.as_str())
        .collect();
    assert_eq!(
        fields,
        [
            "spec.configPatches[0].patch.value",
            "spec.configPatches[1].patch.operation",
            "spec.configPatches[2].match",
            "spec.configPatches[3].patch.value"
        ],
        "{:?}",
        snap.warnings
    );
    let out = generate(&snap, &reviews());
    for l in &out.listeners {
        for (chain, filters) in http_filters(l) {
            assert!(
                !filters.contains(&"envoy.filters.http.cors".to_owned()),
                "{chain}"
            );
            assert!(
                filters.contains(&"envoy.filters.http.router".to_owned()),
                "{chain}"
            );
        }
    }
}

/// `LISTENER_FILTER` patches by the listener filter's name (Istio's
/// `listenerFilter` match), `REMOVE` / `REPLACE` without a filter name
/// doing nothing (as Istio's: not every filter), and
/// `MERGE_AND_REPLACE_LIST` replacing lists, inside a typed config too.
#[test]
fn listener_filters_are_patched_and_merge_and_replace_list_replaces() {
    let baseline = generate(&mesh(""), &reviews());
    let snap = mesh(&envoy_filter(
        "listener-filters",
        "default",
        "  workloadSelector: {labels: {app: reviews}}
  configPatches:
  - applyTo: LISTENER_FILTER
    match: {context: SIDECAR_INBOUND, listener: {listenerFilter: envoy.filters.listener.tls_inspector}}
    patch: {operation: INSERT_AFTER, value: {name: envoy.filters.listener.http_inspector, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector}}}
  - applyTo: LISTENER_FILTER
    match: {context: SIDECAR_INBOUND, listener: {listenerFilter: envoy.filters.listener.tls_inspector}}
    patch: {operation: MERGE, value: {typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector, enable_ja3_fingerprinting: true}}}
  - applyTo: LISTENER_FILTER
    patch: {operation: REMOVE}
  - applyTo: HTTP_FILTER
    match: {context: SIDECAR_OUTBOUND}
    patch: {operation: REMOVE}
  - applyTo: NETWORK_FILTER
    patch: {operation: REPLACE, value: {name: envoy.filters.network.echo}}
  - applyTo: NETWORK_FILTER
    match: {context: SIDECAR_OUTBOUND, listener: {portNumber: 9080}}
    patch: {operation: INSERT_FIRST, value: {name: envoy.filters.network.connection_limit, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit, stat_prefix: limit, max_connections: 10}}}
  - applyTo: VIRTUAL_HOST
    match: {context: SIDECAR_OUTBOUND, routeConfiguration: {vhost: {name: 'ratings.default.svc.cluster.local:9080'}}}
    patch: {operation: MERGE_AND_REPLACE_LIST, value: {domains: [ratings.example]}}
  - applyTo: NETWORK_FILTER
    match: {context: SIDECAR_INBOUND, listener: {filterChain: {filter: {name: envoy.filters.network.http_connection_manager}}}}
    patch: {operation: MERGE_AND_REPLACE_LIST, value: {typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, http_filters: [{name: envoy.filters.http.router, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]}}}",
    ));
    assert!(snap.warnings.is_empty(), "{:?}", snap.warnings);
    let out = generate(&snap, &reviews());
    let inbound = listener(&out, "virtualInbound");
    let names: Vec<&str> = inbound
        .listener_filters
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "envoy.filters.listener.original_dst",
            "envoy.filters.listener.tls_inspector",
            "envoy.filters.listener.http_inspector"
        ]
    );
    let Some(listener_filter::ConfigType::TypedConfig(any)) =
        &inbound.listener_filters[1].config_type
    else {
        panic!("{:?}", inbound.listener_filters[1])
    };
    assert_eq!(
        TlsInspector::decode(any.value.as_slice())
            .unwrap()
            .enable_ja3_fingerprinting
            .map(|b| b.value),
        Some(true)
    );
    // The inbound connection managers' HTTP filters replaced by the list.
    for (chain, filters) in http_filters(inbound) {
        assert_eq!(filters, ["envoy.filters.http.router"], "{chain}");
    }
    // The outbound side: the unnamed REMOVE and REPLACE did nothing.
    let outbound = listener(&out, "0.0.0.0_9080");
    assert_eq!(
        http_filters(outbound),
        http_filters(listener(&baseline, "0.0.0.0_9080"))
    );
    assert!(!http_filters(outbound).is_empty());
    for l in &out.listeners {
        for c in l
            .filter_chains
            .iter()
            .chain(l.default_filter_chain.as_ref())
        {
            assert!(
                c.filters
                    .iter()
                    .all(|f| f.name != "envoy.filters.network.echo"),
                "{}",
                l.name
            );
        }
    }
    // A port's patch: that port's listener, not `virtualOutbound` (whose
    // chains match no destination port).
    let first_filters = |l: &Listener| -> Vec<String> {
        l.filter_chains
            .iter()
            .chain(l.default_filter_chain.as_ref())
            .filter_map(|c| c.filters.first().map(|f| f.name.clone()))
            .collect()
    };
    assert!(
        first_filters(outbound)
            .iter()
            .all(|f| f == "envoy.filters.network.connection_limit"),
        "{:?}",
        first_filters(outbound)
    );
    assert!(
        !first_filters(listener(&out, "virtualOutbound"))
            .contains(&"envoy.filters.network.connection_limit".to_owned()),
        "{:?}",
        first_filters(listener(&out, "virtualOutbound"))
    );
    // The virtual host's domains replaced, the others' kept.
    let rc = out.routes.iter().find(|r| r.name == "9080").unwrap();
    let domains = |rc: &envoy_types::pb::envoy::config::route::v3::RouteConfiguration,
                   name: &str| {
        rc.virtual_hosts
            .iter()
            .find(|vh| vh.name == name)
            .map(|vh| vh.domains.clone())
            .unwrap()
    };
    assert_eq!(
        domains(rc, "ratings.default.svc.cluster.local:9080"),
        ["ratings.example"]
    );
    let before = baseline.routes.iter().find(|r| r.name == "9080").unwrap();
    let reviews_vh = "reviews.default.svc.cluster.local:9080";
    assert_eq!(domains(rc, reviews_vh), domains(before, reviews_vh));
}

/// `match.proxy`: a patch for proxies whose `ISTIO_VERSION` matches
/// `proxyVersion` and whose node metadata carries the pairs named; a proxy
/// without a version matches no version. Proxies that differ there do not
/// share generated config.
#[test]
fn a_proxy_match_picks_proxies_by_version_and_metadata() {
    let snap = mesh(&envoy_filter(
        "versioned",
        "istio-system",
        &format!(
            "  configPatches:
  - applyTo: HTTP_FILTER
    match:
      proxy: {{proxyVersion: '^1\\.2[0-9].*', metadata: {{MESH_ID: mesh1}}}}
      listener: {{filterChain: {{filter: {{name: envoy.filters.network.http_connection_manager, subFilter: {{name: envoy.filters.http.router}}}}}}}}
    patch: {{operation: INSERT_BEFORE, value: {LUA}}}"
        ),
    ));
    assert!(snap.warnings.is_empty(), "{:?}", snap.warnings);
    let with = |pairs: &[(&str, &str)]| {
        let mut p = reviews();
        p.metadata = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        p
    };
    let has_lua = |proxy: &Proxy| {
        generate(&snap, proxy).listeners.iter().any(|l| {
            http_filters(l)
                .iter()
                .any(|(_, f)| f.contains(&"envoy.filters.http.lua".to_owned()))
        })
    };
    let matching = with(&[("ISTIO_VERSION", "1.26.2"), ("MESH_ID", "mesh1")]);
    assert!(has_lua(&matching));
    for other in [
        with(&[("ISTIO_VERSION", "1.19.0"), ("MESH_ID", "mesh1")]),
        with(&[("ISTIO_VERSION", "1.26.2"), ("MESH_ID", "mesh2")]),
        with(&[("MESH_ID", "mesh1")]),
    ] {
        assert!(!has_lua(&other), "{:?}", other.metadata);
        assert_ne!(other.config_key(&snap), matching.config_key(&snap));
    }
}

/// `targetRefs` to a Gateway API Gateway: the patch applies to that
/// gateway's pods (of the EnvoyFilter's namespace), not to sidecars.
#[test]
fn target_refs_attach_a_patch_to_a_gateway_api_gateways_pods() {
    let snap = mesh(&envoy_filter(
        "gw-cluster",
        "default",
        "  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]
  configPatches:
  - applyTo: CLUSTER
    patch: {operation: ADD, value: {name: added-for-gw, type: STATIC, connect_timeout: 1s}}",
    ));
    assert!(snap.warnings.is_empty(), "{:?}", snap.warnings);
    let pod = |gateway: &str, ns: &str| {
        Proxy::from_node_id(
            &format!("router~10.244.0.70~gw-0.{ns}~{ns}.svc.cluster.local"),
            None,
            [(
                "gateway.networking.k8s.io/gateway-name".to_owned(),
                gateway.to_owned(),
            )]
            .into(),
        )
        .unwrap()
    };
    let added = |proxy: &Proxy| {
        generate(&snap, proxy)
            .clusters
            .iter()
            .any(|c| c.name == "added-for-gw")
    };
    assert!(added(&pod("gw", "default")));
    assert!(!added(&pod("other", "default")));
    assert!(!added(&pod("gw", "elsewhere")));
    assert!(!added(&reviews()));
}

/// An EnvoyFilter changed regenerates the proxies of its namespace (of
/// every namespace, from the root namespace), and no others.
#[test]
fn an_envoy_filter_change_reaches_its_namespace() {
    use translator::changes::{ChangeSet, Effect};
    let filter = |ns: &str| {
        envoy_filter(
            "f",
            ns,
            "  configPatches:
  - applyTo: CLUSTER
    patch: {operation: REMOVE}",
        )
    };
    let before = mesh("");
    let elsewhere = Proxy::from_node_id(
        "sidecar~10.244.0.90~app-0.other~other.svc.cluster.local",
        None,
        Default::default(),
    )
    .unwrap();
    let changed = ChangeSet::between(&before, &mesh(&filter("default")));
    assert_eq!(changed.effect(&reviews()), Effect::Full);
    assert_eq!(changed.effect(&elsewhere), Effect::Nothing);
    let changed = ChangeSet::between(&before, &mesh(&filter("istio-system")));
    assert_eq!(changed.effect(&elsewhere), Effect::Full);
}
