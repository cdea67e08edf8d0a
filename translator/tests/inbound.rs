//! The sidecar's inbound side (`virtualInbound`, PeerAuthentication) and
//! auto mTLS on the client side, on a small hand-written mesh.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener, filter};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use prost::Message;
use translator::changes::{ChangeSet, Effect};
use translator::inbound::{PeerMode, VIRTUAL_INBOUND, peer_policy};
use translator::model::{MeshConfig, Proxy, Snapshot};
use translator::{Output, generate};

/// reviews (HTTP 9080 -> 9080, TCP 9090 -> 9091) with one pod at
/// 10.244.0.12 that has a sidecar; ratings' pod at 10.244.0.13 has none.
const PLATFORM: &str = "
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  clusterIP: 10.96.0.13
  ports: [{name: http, port: 9080}, {name: tcp-stats, port: 9090}]
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
ports: [{name: http, port: 9080}, {name: tcp-stats, port: 9091}]
endpoints: [{addresses: [10.244.0.12], targetRef: {kind: Pod, name: reviews-0, namespace: default}}]
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: default}
spec:
  clusterIP: 10.96.0.14
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Pod
metadata: {name: ratings-0, namespace: default, labels: {app: ratings}}
spec: {serviceAccountName: ratings, containers: [{name: app, image: app}]}
status: {podIP: 10.244.0.13}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ratings-1, namespace: default, labels: {kubernetes.io/service-name: ratings}}
addressType: IPv4
ports: [{name: http, port: 9080}]
endpoints: [{addresses: [10.244.0.13], targetRef: {kind: Pod, name: ratings-0, namespace: default}}]
";

fn mesh_with(platform: &str, extra: &str, mesh: MeshConfig) -> Snapshot {
    Snapshot::build(1, &crds::objects_of(&[platform, extra]), mesh)
}

fn mesh(extra: &str) -> Snapshot {
    mesh_with(PLATFORM, extra, MeshConfig::default())
}

/// The sidecar of reviews-0.
fn reviews() -> Proxy {
    proxy("10.244.0.12", "reviews-0", &[("app", "reviews")])
}

fn proxy(ip: &str, pod: &str, labels: &[(&str, &str)]) -> Proxy {
    Proxy::from_node_id(
        &format!("sidecar~{ip}~{pod}.default~default.svc.cluster.local"),
        None,
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
    .unwrap()
}

fn pa(name: &str, ns: &str, body: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {body}\n---\n"
    )
}

fn virtual_inbound(out: &Output) -> &Listener {
    out.listeners
        .iter()
        .find(|l| l.name == VIRTUAL_INBOUND)
        .unwrap()
}

/// The chains matching destination port `port` (None: the passthrough ones).
fn chains(out: &Output, port: Option<u32>) -> Vec<&FilterChain> {
    virtual_inbound(out)
        .filter_chains
        .iter()
        .filter(|c| {
            c.filter_chain_match
                .as_ref()
                .unwrap()
                .destination_port
                .map(|p| p.value)
                == port
        })
        .collect()
}

/// (transport protocol, TLS terminated) of each chain.
fn shape(chains: &[&FilterChain]) -> Vec<(String, bool)> {
    chains
        .iter()
        .map(|c| {
            (
                c.filter_chain_match
                    .as_ref()
                    .unwrap()
                    .transport_protocol
                    .clone(),
                c.transport_socket.is_some(),
            )
        })
        .collect()
}

#[test]
fn peer_authentication_levels_resolve_as_istio() {
    let p = reviews();
    let mode = |extra: &str| peer_policy(&mesh(extra), &p);
    assert_eq!(mode("").mode, PeerMode::Permissive, "Istio's default");
    let strict_mesh = pa("default", "istio-system", "{mtls: {mode: STRICT}}");
    assert_eq!(mode(&strict_mesh).mode, PeerMode::Strict);
    // The namespace overrides the mesh; UNSET inherits.
    let ns_disable = pa("ns", "default", "{mtls: {mode: DISABLE}}");
    assert_eq!(
        mode(&format!("{strict_mesh}{ns_disable}")).mode,
        PeerMode::Disable
    );
    let ns_unset = pa("ns", "default", "{mtls: {mode: UNSET}}");
    assert_eq!(
        mode(&format!("{strict_mesh}{ns_unset}")).mode,
        PeerMode::Strict
    );
    // A workload policy overrides both, with port-level modes.
    let workload = pa(
        "reviews",
        "default",
        "{selector: {matchLabels: {app: reviews}}, mtls: {mode: PERMISSIVE}, portLevelMtls: {9080: {mode: STRICT}, 9091: {mode: UNSET}}}",
    );
    let policy = mode(&format!("{strict_mesh}{ns_disable}{workload}"));
    assert_eq!(policy.mode, PeerMode::Permissive);
    assert_eq!(policy.for_port(9080), PeerMode::Strict);
    assert_eq!(
        policy.for_port(9091),
        PeerMode::Permissive,
        "UNSET inherits"
    );
    // Selectors that don't match, and selectors in the root namespace,
    // are not the mesh policy.
    let other = pa(
        "other",
        "default",
        "{selector: {matchLabels: {app: ratings}}, mtls: {mode: STRICT}}",
    );
    assert_eq!(mode(&other).mode, PeerMode::Permissive);
    let root_selected = pa(
        "sel",
        "istio-system",
        "{selector: {matchLabels: {app: reviews}}, mtls: {mode: STRICT}}",
    );
    assert_eq!(mode(&root_selected).mode, PeerMode::Permissive);
}

#[test]
fn virtual_inbound_chains_follow_the_mode() {
    let permissive = generate(&mesh(""), &reviews());
    let l = virtual_inbound(&permissive);
    assert!(format!("{:?}", l.address).contains("PortValue(15006)"));
    let tls = |t: &str, term: bool| (t.to_owned(), term);
    // PERMISSIVE: mesh mTLS (by Istio's ALPN), foreign TLS and plaintext.
    assert_eq!(
        shape(&chains(&permissive, Some(9080))),
        vec![
            tls("tls", true),
            tls("tls", false),
            tls("raw_buffer", false)
        ]
    );
    let mtls = chains(&permissive, Some(9080))[0];
    assert!(
        mtls.filter_chain_match
            .as_ref()
            .unwrap()
            .application_protocols
            .contains(&"istio-peer-exchange".to_owned())
    );
    // The TCP port is served on its target port 9091, not 9090.
    assert_eq!(chains(&permissive, Some(9091)).len(), 3);
    assert!(chains(&permissive, Some(9090)).is_empty());
    assert_eq!(chains(&permissive, None).len(), 3, "passthrough");

    let strict = generate(
        &mesh(&pa("default", "istio-system", "{mtls: {mode: STRICT}}")),
        &reviews(),
    );
    assert_eq!(shape(&chains(&strict, Some(9080))), vec![tls("tls", true)]);
    assert_eq!(shape(&chains(&strict, None)), vec![tls("tls", true)]);

    let disable = generate(
        &mesh(&pa("default", "default", "{mtls: {mode: DISABLE}}")),
        &reviews(),
    );
    assert_eq!(shape(&chains(&disable, Some(9080))), vec![tls("", false)]);

    // The HTTP chain appends the caller's identity to XFCC and routes to
    // the inbound cluster, which exists.
    let filter = &mtls.filters[0];
    let Some(filter::ConfigType::TypedConfig(any)) = &filter.config_type else {
        panic!("typed config")
    };
    let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
    assert_eq!(
        hcm.forward_client_cert_details,
        http_connection_manager::ForwardClientCertDetails::AppendForward as i32
    );
    assert!(hcm.set_current_client_cert_details.unwrap().uri);
    assert!(
        permissive
            .clusters
            .iter()
            .any(|c| c.name == "inbound|9080||")
    );
    assert!(
        permissive
            .clusters
            .iter()
            .any(|c| c.name == "inbound|9091||")
    );
}

#[test]
fn workloads_without_services_get_only_passthrough_chains() {
    let out = generate(&mesh(""), &proxy("10.244.0.99", "client", &[]));
    let l = virtual_inbound(&out);
    assert!(
        l.filter_chains
            .iter()
            .all(|c| c.name.starts_with(VIRTUAL_INBOUND)),
        "{:?}",
        l.filter_chains.iter().map(|c| &c.name).collect::<Vec<_>>()
    );
    assert!(!out.clusters.iter().any(|c| c.name.starts_with("inbound|")));
}

#[test]
fn auto_mtls_only_to_endpoints_with_a_sidecar() {
    let client = proxy("10.244.0.99", "client", &[]);
    let reviews_cluster = "outbound|9080||reviews.default.svc.cluster.local";
    let ratings_cluster = "outbound|9080||ratings.default.svc.cluster.local";
    let out = generate(&mesh(""), &client);
    let cluster = |out: &Output, name: &str| out.clusters.iter().find(|c| c.name == name).cloned();
    let reviews_c = cluster(&out, reviews_cluster).unwrap();
    assert_eq!(reviews_c.transport_socket_matches.len(), 1);
    assert_eq!(reviews_c.transport_socket_matches[0].name, "tlsMode-istio");
    assert!(reviews_c.transport_socket.is_none(), "plaintext otherwise");
    let cla = out
        .endpoints
        .iter()
        .find(|c| c.cluster_name == reviews_cluster)
        .unwrap();
    let md = cla.endpoints[0].lb_endpoints[0].metadata.as_ref().unwrap();
    assert!(
        md.filter_metadata
            .contains_key("envoy.transport_socket_match")
    );
    // ratings' pod has no sidecar: plaintext.
    assert!(
        cluster(&out, ratings_cluster)
            .unwrap()
            .transport_socket_matches
            .is_empty()
    );
    // A DestinationRule's TLS settings win; so does the mesh switch.
    let disable = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r, namespace: default}\nspec: {host: reviews, trafficPolicy: {tls: {mode: DISABLE}}}\n";
    let out = generate(&mesh(disable), &client);
    assert!(
        cluster(&out, reviews_cluster)
            .unwrap()
            .transport_socket_matches
            .is_empty()
    );
    // A server whose PeerAuthentication is DISABLE gets plaintext, as
    // Istio's auto mTLS decides per endpoint.
    let out = generate(
        &mesh(&pa(
            "r",
            "default",
            "{selector: {matchLabels: {app: reviews}}, mtls: {mode: DISABLE}}",
        )),
        &client,
    );
    assert!(
        cluster(&out, reviews_cluster)
            .unwrap()
            .transport_socket_matches
            .is_empty()
    );
    let off = MeshConfig {
        auto_mtls: false,
        ..MeshConfig::default()
    };
    let out = generate(&mesh_with(PLATFORM, "", off), &client);
    assert!(
        cluster(&out, reviews_cluster)
            .unwrap()
            .transport_socket_matches
            .is_empty()
    );
}

#[test]
fn inbound_changes_reach_the_workloads_they_concern() {
    let old = mesh("");
    // A PeerAuthentication: a full push to every sidecar (its clients'
    // auto mTLS depends on it too), nothing to gateways.
    let new = mesh(&pa("default", "default", "{mtls: {mode: STRICT}}"));
    let changes = ChangeSet::between(&old, &new);
    assert_eq!(changes.effect(&reviews()), Effect::Full);
    let mut elsewhere = reviews();
    elsewhere.namespace = "other".into();
    assert_eq!(changes.effect(&elsewhere), Effect::Full);
    let gateway = Proxy::from_node_id(
        "router~10.244.0.50~gw.istio-system~istio-system.svc.cluster.local",
        None,
        Default::default(),
    )
    .unwrap();
    assert_eq!(changes.effect(&gateway), Effect::Nothing);

    // A new endpoint of reviews: the workload at that address gets a new
    // inbound port (a full push), other proxies new endpoints only.
    let extra_slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: reviews-2, namespace: default, labels: {kubernetes.io/service-name: reviews}}\naddressType: IPv4\nports: [{name: http, port: 9080}]\nendpoints: [{addresses: [10.244.0.77]}]\n";
    let new = mesh(extra_slice);
    let changes = ChangeSet::between(&old, &new);
    assert_eq!(
        changes.effect(&proxy("10.244.0.77", "reviews-1", &[])),
        Effect::Full
    );
    assert!(matches!(changes.effect(&reviews()), Effect::Endpoints(_)));
}

/// The mesh config's `rootNamespace` (where mesh-wide PeerAuthentications
/// and Sidecars live), `trustDomain` and `trustDomainAliases` (the SPIFFE
/// IDs clients expect of servers, and servers accept of clients).
#[test]
fn root_namespace_and_trust_domains_follow_the_mesh_config() {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        DownstreamTlsContext, common_tls_context,
    };
    let configmap = |mesh: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: |\n    {mesh}\n---\n"
        )
    };
    let strict_in = |ns: &str| pa("default", ns, "{mtls: {mode: STRICT}}");
    let p = reviews();
    let mode = |extra: &str| peer_policy(&mesh(extra), &p).mode;
    // In istio-system by default; elsewhere once the mesh config says so.
    assert_eq!(mode(&strict_in("istio-system")), PeerMode::Strict);
    assert_eq!(mode(&strict_in("mesh-root")), PeerMode::Permissive);
    let moved = configmap("{rootNamespace: mesh-root}");
    assert_eq!(
        mode(&format!("{moved}{}", strict_in("mesh-root"))),
        PeerMode::Strict
    );
    assert_eq!(
        mode(&format!("{moved}{}", strict_in("istio-system"))),
        PeerMode::Permissive
    );
    // A Sidecar there is mesh-wide, and a change to it reaches every sidecar.
    let sidecar = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: mesh-root}\nspec: {egress: [{hosts: ['./ratings.default.svc.cluster.local']}]}\n---\n";
    let scoped = mesh(&format!("{moved}{sidecar}"));
    let clusters: Vec<String> = generate(&scoped, &p)
        .clusters
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert!(
        clusters.iter().all(|c| !c.contains("reviews.default")),
        "{clusters:?}"
    );
    let before = mesh(&moved);
    assert_eq!(
        ChangeSet::between(&before, &scoped).effect(&p),
        Effect::Full
    );

    // Trust domain and aliases: the SANs ratings' clients expect of
    // reviews, and the prefixes reviews' inbound accepts.
    let domains = mesh(&configmap(
        "{trustDomain: new.example, trustDomainAliases: [cluster.local, old.example]}",
    ));
    let out = generate(
        &domains,
        &proxy("10.244.0.13", "ratings-0", &[("app", "ratings")]),
    );
    let cluster = out
        .clusters
        .iter()
        .find(|c| c.name == "outbound|9080||reviews.default.svc.cluster.local")
        .unwrap();
    let tls = cluster.transport_socket_matches[0]
        .transport_socket
        .as_ref()
        .and_then(|t| match &t.config_type {
            Some(ConfigType::TypedConfig(any)) => Some(
                envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext::decode(
                    any.value.as_slice(),
                )
                .unwrap(),
            ),
            _ => None,
        })
        .unwrap();
    let text = format!("{tls:?}");
    for td in ["new.example", "cluster.local", "old.example"] {
        assert!(
            text.contains(&format!("spiffe://{td}/ns/default/sa/reviews")),
            "{td}: {text}"
        );
    }
    let out = generate(&domains, &p);
    let tls = chains(&out, Some(9080))
        .into_iter()
        .find_map(|c| match &c.transport_socket.as_ref()?.config_type {
            Some(ConfigType::TypedConfig(any)) => {
                Some(DownstreamTlsContext::decode(any.value.as_slice()).unwrap())
            }
            _ => None,
        })
        .unwrap();
    let Some(common_tls_context::ValidationContextType::CombinedValidationContext(v)) =
        tls.common_tls_context.unwrap().validation_context_type
    else {
        panic!("no validation context");
    };
    let prefixes: Vec<String> = v
        .default_validation_context
        .unwrap()
        .match_typed_subject_alt_names
        .iter()
        .map(|m| format!("{:?}", m.matcher.as_ref().unwrap().match_pattern))
        .collect();
    assert_eq!(prefixes.len(), 3, "{prefixes:?}");
    assert!(
        prefixes[0].contains("spiffe://new.example/")
            && prefixes[2].contains("spiffe://old.example/")
    );
}

fn ap(name: &str, ns: &str, body: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {body}\n---\n"
    )
}

/// The RBAC configs on a chain, in filter order: (action, policy names,
/// the policies as text, dry-run policy names), from the HTTP connection
/// manager's filters or the chain's network filters.
fn rbac_on(chain: &FilterChain) -> Vec<(i32, Vec<String>, String, Vec<String>)> {
    use envoy_types::pb::envoy::config::rbac::v3::Rbac;
    use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter;
    use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
    let summary = |rules: Option<Rbac>, shadow: Option<Rbac>| {
        let mut names: Vec<String> = rules
            .iter()
            .flat_map(|r| r.policies.keys().cloned())
            .collect();
        names.sort();
        let mut dry: Vec<String> = shadow
            .iter()
            .flat_map(|r| r.policies.keys().cloned())
            .collect();
        dry.sort();
        let action = rules.as_ref().or(shadow.as_ref()).map_or(-1, |r| r.action);
        (action, names, format!("{rules:?}"), dry)
    };
    let mut out = Vec::new();
    for f in &chain.filters {
        let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            continue;
        };
        match f.name.as_str() {
            "envoy.filters.network.rbac" => {
                let r = NetworkRbac::decode(any.value.as_slice()).unwrap();
                assert_eq!(r.stat_prefix, "tcp.");
                out.push(summary(r.rules, r.shadow_rules));
            }
            "envoy.filters.network.http_connection_manager" => {
                let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
                let names: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
                assert_eq!(
                    names.last(),
                    Some(&"envoy.filters.http.router"),
                    "{names:?}"
                );
                for hf in &hcm.http_filters {
                    if hf.name != "envoy.filters.http.rbac" {
                        continue;
                    }
                    let Some(http_filter::ConfigType::TypedConfig(any)) = &hf.config_type else {
                        panic!("{hf:?}")
                    };
                    let r = HttpRbac::decode(any.value.as_slice()).unwrap();
                    out.push(summary(r.rules, r.shadow_rules));
                }
            }
            _ => {}
        }
    }
    out
}

/// AuthorizationPolicies on reviews' inbound, as istiod's authz builder
/// writes them: which apply, filter order, HTTP-only fields on TCP chains.
#[test]
fn authorization_policies_become_rbac_filters_on_the_inbound_chains() {
    const ALLOW: i32 = 0;
    const DENY: i32 = 1;
    const LOG: i32 = 2;
    let p = reviews();
    let on = |extra: &str, port: Option<u32>| {
        let out = generate(&mesh(extra), &p);
        chains(&out, port)
            .into_iter()
            .map(rbac_on)
            .collect::<Vec<_>>()
    };
    // No policy, no filter.
    assert!(on("", Some(9080)).iter().all(Vec::is_empty));
    assert!(on("", None).iter().all(Vec::is_empty));

    let allow = ap(
        "viewer",
        "default",
        "{selector: {matchLabels: {app: reviews}}, rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/productpage]}}], to: [{operation: {methods: [GET], paths: ['/reviews*']}}]}, {from: [{source: {namespaces: [monitoring]}}], to: [{operation: {ports: ['9091']}}]}]}",
    );
    // Every chain of the HTTP port (mTLS, foreign TLS, plaintext): one
    // ALLOW filter with both rules.
    for chain in on(&allow, Some(9080)) {
        let [(action, names, text, dry)] = &chain[..] else {
            panic!("{chain:?}")
        };
        assert_eq!(*action, ALLOW);
        assert!(dry.is_empty());
        if names.len() == 2 {
            assert_eq!(
                names,
                &[
                    "ns[default]-policy[viewer]-rule[0]",
                    "ns[default]-policy[viewer]-rule[1]"
                ]
            );
            assert!(
                text.contains("Exact(\"spiffe://cluster.local/ns/default/sa/productpage\")"),
                "{text}"
            );
            assert!(text.contains("Prefix(\"/reviews\")"), "{text}");
            assert!(text.contains(".*/ns/monitoring/.*"), "{text}");
        } else {
            // The foreign TLS chain is a TCP proxy: methods and paths
            // cannot be checked there, so the first rule is left out.
            assert_eq!(names, &["ns[default]-policy[viewer]-rule[1]"]);
        }
    }
    // The TCP port and the passthrough chains: the HTTP rule left out.
    for port in [Some(9091), None] {
        for chain in on(&allow, port) {
            let [(action, names, _, _)] = &chain[..] else {
                panic!("{chain:?}")
            };
            assert_eq!(*action, ALLOW);
            assert_eq!(names, &["ns[default]-policy[viewer]-rule[1]"]);
        }
    }

    // DENY, AUDIT and ALLOW together: Istio's order. A DENY rule on TCP
    // keeps what it can check (it refuses more, never less).
    let deny = ap(
        "no-delete",
        "default",
        "{action: DENY, rules: [{to: [{operation: {methods: [DELETE], ports: ['9091']}}]}]}",
    );
    let audit = ap("audit", "istio-system", "{action: AUDIT, rules: [{}]}");
    let all = format!("{allow}{deny}{audit}");
    let http = &on(&all, Some(9080))[0];
    let actions: Vec<i32> = http.iter().map(|(a, ..)| *a).collect();
    assert_eq!(actions, [LOG, DENY, ALLOW]);
    assert!(http[1].2.contains("\":method\""), "{}", http[1].2);
    let tcp = &on(&all, Some(9091))[0];
    assert_eq!(tcp.len(), 3);
    assert!(!tcp[1].2.contains(":method"), "{}", tcp[1].2);
    assert!(tcp[1].2.contains("DestinationPort(9091)"), "{}", tcp[1].2);

    // Scope: another workload's selector, another namespace's policy and a
    // policy for a gateway (targetRef) do not apply; the root namespace's do.
    for other in [
        ap(
            "r",
            "default",
            "{selector: {matchLabels: {app: ratings}}, rules: [{}]}",
        ),
        ap("o", "other", "{rules: [{}]}"),
        ap(
            "g",
            "default",
            "{targetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: gw}, rules: [{}]}",
        ),
    ] {
        assert!(on(&other, Some(9080)).iter().all(Vec::is_empty), "{other}");
    }
    let root = on(&ap("mesh", "istio-system", "{}"), Some(9080));
    // No rules: one policy that never matches (ALLOW: nothing gets in).
    assert_eq!(root[0][0].1, ["ns[istio-system]-policy[mesh]-rule[0]"]);
    assert!(root[0][0].2.contains("NotRule"), "{}", root[0][0].2);

    // CUSTOM without an authorizer in the mesh config: its rules deny.
    let custom = on(
        &ap(
            "ext",
            "default",
            "{action: CUSTOM, provider: {name: opa}, rules: [{to: [{operation: {paths: ['/admin*']}}]}]}",
        ),
        Some(9080),
    );
    assert_eq!(custom[0][0].0, DENY);
    // A dry run decides nothing: shadow rules only.
    let dry = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: trial, namespace: default, annotations: {istio.io/dry-run: 'true'}}\nspec: {}\n---\n";
    let shadow = &on(dry, Some(9080))[0][0];
    assert!(shadow.1.is_empty() && shadow.3 == ["ns[default]-policy[trial]-rule[0]"]);
    assert!(shadow.2 == "None", "{}", shadow.2);

    // `cluster.local` stands for the mesh's trust domain, whatever it is.
    let moved = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  mesh: '{trustDomain: new.example}'\n---\n";
    let text = &on(&format!("{moved}{allow}"), Some(9080))[0][0].2;
    assert!(
        text.contains("spiffe://new.example/ns/default/sa/productpage"),
        "{text}"
    );
    assert!(!text.contains("spiffe://cluster.local/"), "{text}");
    // Path templates: Envoy's URI template matcher, as Istio writes it.
    let templated = mesh(&ap(
        "t",
        "default",
        "{rules: [{to: [{operation: {paths: ['/reviews/{*}/votes/{**}']}}]}]}",
    ));
    assert!(templated.warnings.is_empty(), "{:?}", templated.warnings);
    let chain = generate(&templated, &p);
    let rbac = &rbac_on(chains(&chain, Some(9080))[0])[0];
    assert_eq!(rbac.1, ["ns[default]-policy[t]-rule[0]"]);
    assert!(
        rbac.2
            .contains("envoy.path.match.uri_template.uri_template_matcher"),
        "{}",
        rbac.2
    );
    // Trust domain aliases: a principal in one matches in each.
    let configmap = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  mesh: '{trustDomain: new.example, trustDomainAliases: [cluster.local]}'\n---\n";
    let aliased = on(&format!("{configmap}{allow}"), Some(9080));
    for td in ["new.example", "cluster.local"] {
        let text = &aliased[0][0].2;
        assert!(
            text.contains(&format!("spiffe://{td}/ns/default/sa/productpage")),
            "{td}: {text}"
        );
    }
}

/// The authorizers' service and the mesh config naming them, as Istio's
/// ext authz task writes them (one HTTP, one gRPC provider).
const AUTHORIZERS: &str = "apiVersion: v1
kind: Service
metadata: {name: ext-authz, namespace: foo}
spec:
  clusterIP: 10.96.0.50
  ports: [{name: http, port: 8000}, {name: grpc, port: 9000}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    extensionProviders:
    - name: http
      envoyExtAuthzHttp:
        service: ext-authz.foo.svc.cluster.local
        port: 8000
        statusOnError: '503'
        includeRequestHeadersInCheck: [x-ext-authz]
        includeAdditionalHeadersInCheck: {x-origin: sidecar}
        headersToUpstreamOnAllow: ['x-ext-authz-*']
        headersToDownstreamOnDeny: ['x-ext-authz-*']
    - name: grpc
      envoyExtAuthzGrpc: {service: foo/ext-authz.foo.svc.cluster.local, port: '9000', failOpen: true}
    - name: broken
      envoyExtAuthzHttp: {service: ext-authz.foo.svc.cluster.local, port: 8000, statusOnError: 'abc'}
    - name: elsewhere
      envoyExtAuthzGrpc: {service: nowhere.foo.svc.cluster.local, port: 9000}
---
";

/// The HTTP filter names on a chain, and the `ext_authz` config among them.
fn http_filters(
    chain: &FilterChain,
) -> (
    Vec<String>,
    Option<envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::ExtAuthz>,
) {
    use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::ExtAuthz;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter;
    let mut names = Vec::new();
    let mut ext = None;
    for f in &chain.filters {
        let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            continue;
        };
        if f.name != "envoy.filters.network.http_connection_manager" {
            names.push(f.name.clone());
            continue;
        }
        let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
        for hf in &hcm.http_filters {
            names.push(hf.name.clone());
            if hf.name == "envoy.filters.http.ext_authz"
                && let Some(http_filter::ConfigType::TypedConfig(any)) = &hf.config_type
            {
                ext = Some(ExtAuthz::decode(any.value.as_slice()).unwrap());
            }
        }
    }
    (names, ext)
}

/// CUSTOM AuthorizationPolicies on reviews' inbound, as istiod's custom
/// builder writes them: the rules as RBAC shadow rules selecting what the
/// provider's `ext_authz` filter checks; a provider that cannot be used
/// denies instead, and is reported.
#[test]
fn custom_policies_ask_the_external_authorizer() {
    use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::ext_authz::Services;
    const DENY: i32 = 1;
    let custom = |provider: &str| {
        ap(
            &format!("ext-{provider}"),
            "default",
            &format!(
                "{{action: CUSTOM, provider: {{name: {provider}}}, rules: [{{to: [{{operation: {{paths: ['/admin*']}}}}]}}]}}"
            ),
        )
    };
    let p = reviews();

    // An HTTP provider: the shadow rules, then ext_authz, before the router.
    let snap = mesh(&format!("{AUTHORIZERS}{}", custom("http")));
    let out = generate(&snap, &p);
    let http_chain = chains(&out, Some(9080))[0];
    let (names, ext) = http_filters(http_chain);
    assert_eq!(
        names,
        [
            "envoy.filters.http.rbac",
            "envoy.filters.http.ext_authz",
            "envoy.filters.http.router"
        ]
    );
    let rbac = rbac_on(http_chain);
    assert_eq!(rbac[0].0, DENY);
    assert!(rbac[0].1.is_empty(), "nothing enforced by RBAC: {rbac:?}");
    assert_eq!(
        rbac[0].3,
        ["istio-ext-authz-http-ns[default]-policy[ext-http]-rule[0]"]
    );
    let ext = ext.unwrap();
    let enabled = format!("{:?}", ext.filter_enabled_metadata);
    assert!(
        enabled.contains("istio_ext_authz_shadow_effective_policy_id")
            && enabled.contains("Prefix(\"istio-ext-authz\")"),
        "{enabled}"
    );
    assert_eq!(ext.status_on_error.unwrap().code, 503);
    assert!(format!("{:?}", ext.allowed_headers).contains("Exact(\"x-ext-authz\")"));
    let Some(Services::HttpService(service)) = &ext.services else {
        panic!("{ext:?}")
    };
    let uri = service.server_uri.as_ref().unwrap();
    assert_eq!(
        format!("{:?}", uri.http_upstream_type),
        "Some(Cluster(\"outbound|8000||ext-authz.foo.svc.cluster.local\"))"
    );
    assert_eq!(uri.timeout.unwrap().seconds, 600);
    let response = format!("{:?}", service.authorization_response);
    assert!(response.contains("Prefix(\"x-ext-authz-\")"), "{response}");
    assert_eq!(
        service
            .authorization_request
            .as_ref()
            .unwrap()
            .headers_to_add[0]
            .key,
        "x-origin"
    );
    // An HTTP authorizer cannot check a TCP connection: nothing there.
    assert!(rbac_on(chains(&out, Some(9091))[0]).is_empty());
    assert!(
        snap.warnings.iter().all(|w| w.kind == "ConfigMap"),
        "{:?}",
        snap.warnings
    );

    // A gRPC provider checks TCP connections too (network ext_authz).
    let out = generate(&mesh(&format!("{AUTHORIZERS}{}", custom("grpc"))), &p);
    let (_, ext) = http_filters(chains(&out, Some(9080))[0]);
    let ext = ext.unwrap();
    assert!(ext.failure_mode_allow);
    let Some(Services::GrpcService(grpc)) = &ext.services else {
        panic!("{ext:?}")
    };
    let target = format!("{:?}", grpc.target_specifier);
    assert!(
        target.contains("cluster_name: \"outbound|9000||ext-authz.foo.svc.cluster.local\"")
            && target.contains("authority: \"ext-authz.foo.svc.cluster.local\""),
        "{target}"
    );
    let (names, _) = http_filters(chains(&out, Some(9091))[0]);
    assert_eq!(
        &names[..2],
        [
            "envoy.filters.network.rbac",
            "envoy.filters.network.ext_authz"
        ]
    );
    // On TCP the path cannot be checked: the DENY-shaped rule keeps what it
    // can (every connection is checked).
    assert_eq!(
        rbac_on(chains(&out, Some(9091))[0])[0].3,
        ["istio-ext-authz-grpc-ns[default]-policy[ext-grpc]-rule[0]"]
    );

    // CUSTOM comes before DENY and ALLOW.
    let deny = ap("no", "default", "{action: DENY, rules: [{}]}");
    let out = generate(&mesh(&format!("{AUTHORIZERS}{}{deny}", custom("grpc"))), &p);
    let (names, _) = http_filters(chains(&out, Some(9080))[0]);
    assert_eq!(
        names,
        [
            "envoy.filters.http.rbac",
            "envoy.filters.http.ext_authz",
            "envoy.filters.http.rbac",
            "envoy.filters.http.router"
        ]
    );

    // Providers that cannot be used: the rules deny what they match, and
    // the policy is reported by field.
    for (provider, why) in [
        (
            "opa",
            "no envoyExtAuthzHttp or envoyExtAuthzGrpc extension provider is named \"opa\"",
        ),
        ("broken", "is not valid (envoyExtAuthzHttp.statusOnError"),
        (
            "elsewhere",
            "no service nowhere.foo.svc.cluster.local with port 9000",
        ),
    ] {
        let snap = mesh(&format!("{AUTHORIZERS}{}", custom(provider)));
        let rbac = rbac_on(chains(&generate(&snap, &p), Some(9080))[0]);
        assert_eq!(rbac.len(), 1, "{provider}: {rbac:?}");
        assert_eq!(rbac[0].0, DENY);
        assert_eq!(
            rbac[0].1,
            [format!(
                "istio-ext-authz-{provider}-ns[default]-policy[ext-{provider}]-rule[0]-deny-due-to-bad-CUSTOM-action"
            )]
        );
        let w = snap
            .warnings
            .iter()
            .find(|w| w.kind == "AuthorizationPolicy")
            .unwrap_or_else(|| panic!("{provider}: {:?}", snap.warnings));
        assert_eq!(w.field, "spec.provider.name");
        assert!(w.reason.contains(why), "{provider}: {}", w.reason);
    }
    // The broken provider itself is reported where it is written.
    let snap = mesh(AUTHORIZERS);
    assert!(
        snap.warnings.iter().any(|w| w.kind == "ConfigMap"
            && w.field == "data.mesh.extensionProviders[2].envoyExtAuthzHttp.statusOnError"),
        "{:?}",
        snap.warnings
    );
    // Two providers for one workload: both deny (istiod's rule), and each
    // policy is reported naming the other.
    let two = mesh(&format!(
        "{AUTHORIZERS}{}{}",
        custom("http"),
        custom("grpc")
    ));
    let reported: Vec<(&str, &str)> = two
        .warnings
        .iter()
        .filter(|w| w.kind == "AuthorizationPolicy")
        .map(|w| (w.object.as_str(), w.field.as_str()))
        .collect();
    assert_eq!(
        reported,
        [
            ("default/ext-grpc", "spec.provider.name"),
            ("default/ext-http", "spec.provider.name")
        ]
    );
    // Not when their selectors cannot pick the same workload.
    let apart = mesh(&format!(
        "{AUTHORIZERS}{}{}",
        ap(
            "a",
            "default",
            "{selector: {matchLabels: {app: reviews}}, action: CUSTOM, provider: {name: http}, rules: [{}]}"
        ),
        ap(
            "b",
            "default",
            "{selector: {matchLabels: {app: ratings}}, action: CUSTOM, provider: {name: grpc}, rules: [{}]}"
        )
    ));
    assert!(
        apart
            .warnings
            .iter()
            .all(|w| w.kind != "AuthorizationPolicy"),
        "{:?}",
        apart.warnings
    );
    let out = generate(&two, &p);
    let rbac = rbac_on(chains(&out, Some(9080))[0]);
    assert_eq!(rbac.len(), 1);
    assert_eq!(rbac[0].1.len(), 2);
    assert!(
        rbac[0]
            .1
            .iter()
            .all(|n| n.ends_with("-deny-due-to-bad-CUSTOM-action"))
    );
    // A dry run is not supported for CUSTOM: left out, reported.
    let dry = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: trial, namespace: default, annotations: {istio.io/dry-run: 'true'}}\nspec: {action: CUSTOM, provider: {name: http}, rules: [{}]}\n---\n";
    let snap = mesh(&format!("{AUTHORIZERS}{dry}"));
    assert!(rbac_on(chains(&generate(&snap, &p), Some(9080))[0]).is_empty());
    assert!(
        snap.warnings
            .iter()
            .any(|w| w.object == "default/trial" && w.field.starts_with("metadata.annotations")),
        "{:?}",
        snap.warnings
    );
}

#[test]
fn authorization_policy_changes_reach_their_namespace() {
    let old = mesh("");
    let mut elsewhere = reviews();
    elsewhere.namespace = "other".into();
    let new = mesh(&ap("p", "default", "{rules: [{}]}"));
    let changes = ChangeSet::between(&old, &new);
    assert_eq!(changes.effect(&reviews()), Effect::Full);
    assert_eq!(changes.effect(&elsewhere), Effect::Nothing);
    // The root namespace's reach every sidecar.
    let new = mesh(&ap("p", "istio-system", "{rules: [{}]}"));
    assert_eq!(
        ChangeSet::between(&old, &new).effect(&elsewhere),
        Effect::Full
    );
}

/// RequestAuthentication on reviews' inbound: Envoy's JWT filter before
/// RBAC, Istio's providers and requirement, and request principals read
/// from the verified payload; a `jwksUri` outside the mesh reported.
#[test]
fn request_authentication_becomes_the_jwt_filter() {
    use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::JwtAuthentication;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter;
    let ra = |name: &str, rules: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: {name}, namespace: default}}\nspec: {{selector: {{matchLabels: {{app: reviews}}}}, jwtRules: {rules}}}\n---\n"
        )
    };
    let jwks = r#"'{"keys": [{"kty": "EC", "crv": "P-256", "x": "a", "y": "b"}]}'"#;
    let config = format!(
        "{}{}{}",
        ra(
            "b",
            &format!(
                "[{{issuer: z.example, jwks: {jwks}, fromHeaders: [{{name: x-jwt, prefix: 'T '}}], outputClaimToHeaders: [{{header: x-sub, claim: sub}}]}}]"
            )
        ),
        ra(
            "a",
            "[{issuer: a.example, jwksUri: 'https://keys.example/jwks', presence: REQUIRED}]"
        ),
        ap(
            "jwt",
            "default",
            "{rules: [{from: [{source: {requestPrincipals: ['a.example/*']}}], when: [{key: 'request.auth.claims[groups]', values: [admin]}]}]}",
        ),
    );
    let snap = mesh(&config);
    let out = generate(&snap, &reviews());
    let chain = chains(&out, Some(9080))[0];
    let Some(filter::ConfigType::TypedConfig(any)) = &chain.filters[0].config_type else {
        panic!()
    };
    let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
    let names: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "envoy.filters.http.jwt_authn",
            "envoy.filters.http.rbac",
            "envoy.filters.http.router"
        ]
    );
    let Some(http_filter::ConfigType::TypedConfig(any)) = &hcm.http_filters[0].config_type else {
        panic!()
    };
    let jwt = JwtAuthentication::decode(any.value.as_slice()).unwrap();
    // Sorted by issuer: a.example is origins-0.
    assert_eq!(jwt.providers["origins-0"].issuer, "a.example");
    let z = &jwt.providers["origins-1"];
    assert_eq!(z.issuer, "z.example");
    assert_eq!(z.payload_in_metadata, "payload");
    assert_eq!(z.from_headers[0].value_prefix, "T ");
    assert_eq!(z.claim_to_headers[0].header_name, "x-sub");
    assert!(format!("{:?}", z.jwks_source_specifier).contains("InlineString"));
    let remote = format!("{:?}", jwt.providers["origins-0"].jwks_source_specifier);
    assert!(
        remote.contains("outbound|443||keys.example")
            && remote.contains("https://keys.example/jwks"),
        "{remote}"
    );
    // Two providers: one of them, or each valid where present; origins-0
    // is REQUIRED (no allow_missing for it).
    let rule = format!("{:?}", jwt.rules[0]);
    assert_eq!(rule.matches("AllowMissing").count(), 1, "{rule}");
    assert!(jwt.bypass_cors_preflight);
    // The host of the jwksUri is not in the mesh: reported.
    assert!(
        snap.warnings
            .iter()
            .any(|w| w.field == "spec.jwtRules[0].jwksUri" && w.reason.contains("keys.example")),
        "{:?}",
        snap.warnings
    );
    // The RBAC rule reads the payload: iss exact, sub any, groups as a
    // string or a list.
    let rbac = &rbac_on(chain)[0].2;
    for part in [
        "filter: \"envoy.filters.http.jwt_authn\"",
        "Key(\"payload\")",
        "Key(\"iss\")",
        "Exact(\"a.example\")",
        "Key(\"groups\")",
        "ListMatch",
    ] {
        assert!(rbac.contains(part), "{part}: {rbac}");
    }
    // A TCP chain has no JWT: the ALLOW rule cannot apply there.
    assert!(rbac_on(chains(&out, Some(9091))[0])[0].1.is_empty());
}

/// The HTTP connection manager of a chain.
fn hcm_of(chain: &FilterChain) -> HttpConnectionManager {
    chain
        .filters
        .iter()
        .find_map(|f| match &f.config_type {
            Some(filter::ConfigType::TypedConfig(any))
                if f.name == "envoy.filters.network.http_connection_manager" =>
            {
                Some(HttpConnectionManager::decode(any.value.as_slice()).unwrap())
            }
            _ => None,
        })
        .unwrap()
}

/// (path, CEL filter) of each access log of an HTTP connection manager.
fn logs_of(hcm: &HttpConnectionManager) -> Vec<(String, Option<String>)> {
    use envoy_types::pb::envoy::config::accesslog::v3::{
        access_log, access_log_filter, extension_filter,
    };
    use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
    use envoy_types::pb::envoy::extensions::access_loggers::filters::cel::v3::ExpressionFilter;
    hcm.access_log
        .iter()
        .map(|log| {
            let Some(access_log::ConfigType::TypedConfig(any)) = &log.config_type else {
                panic!("{log:?}")
            };
            let path = FileAccessLog::decode(any.value.as_slice()).unwrap().path;
            let filter = log.filter.as_ref().map(|f| {
                let Some(access_log_filter::FilterSpecifier::ExtensionFilter(ext)) =
                    &f.filter_specifier
                else {
                    panic!("{f:?}")
                };
                let Some(extension_filter::ConfigType::TypedConfig(any)) = &ext.config_type else {
                    panic!("{ext:?}")
                };
                ExpressionFilter::decode(any.value.as_slice())
                    .unwrap()
                    .expression
            });
            (path, filter)
        })
        .collect()
}

/// The Telemetry API on reviews' sidecar, as istiod computes it: the
/// mesh-wide, namespace and workload levels, the client (outbound) and
/// server (inbound) sides, providers inherited and turned off, filters,
/// tracing providers, sampling and tags; unknown providers reported.
#[test]
fn telemetry_decides_access_logs_and_tracing_per_side() {
    let telemetry = |name: &str, ns: &str, spec: &str| {
        format!(
            "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n---\n"
        )
    };
    let p = reviews();
    // (inbound HCM, outbound HCM) of reviews' sidecar.
    let sides = |snap: &Snapshot| {
        let out = generate(snap, &p);
        let inbound = hcm_of(chains(&out, Some(9080))[0]);
        let outbound = out
            .listeners
            .iter()
            .find(|l| l.name == "0.0.0.0_9080")
            .and_then(|l| l.default_filter_chain.as_ref())
            .map(hcm_of)
            .unwrap();
        (inbound, outbound)
    };
    let stdout = || vec![("/dev/stdout".to_owned(), None)];

    // No Telemetry, no accessLogFile: no logs.
    let (inbound, outbound) = sides(&mesh(""));
    assert!(inbound.access_log.is_empty() && outbound.access_log.is_empty());

    // Mesh-wide, with the built-in provider: both sides log to stdout.
    let mesh_wide = telemetry(
        "mesh-default",
        "istio-system",
        "{accessLogging: [{providers: [{name: envoy}]}]}",
    );
    let (inbound, outbound) = sides(&mesh(&mesh_wide));
    assert_eq!(logs_of(&inbound), stdout());
    assert_eq!(logs_of(&outbound), stdout());

    // The workload turns it off (providers inherited); another workload
    // (ratings' namespace-mate with other labels) is not touched.
    let off = telemetry(
        "quiet",
        "default",
        "{selector: {matchLabels: {app: reviews}}, accessLogging: [{disabled: true}]}",
    );
    let (inbound, outbound) = sides(&mesh(&format!("{mesh_wide}{off}")));
    assert!(inbound.access_log.is_empty() && outbound.access_log.is_empty());
    let ratings = proxy("10.244.0.13", "ratings-0", &[("app", "ratings")]);
    let out = generate(&mesh(&format!("{mesh_wide}{off}")), &ratings);
    let l = out
        .listeners
        .iter()
        .find(|l| l.name == "0.0.0.0_9080")
        .unwrap();
    assert_eq!(
        logs_of(&hcm_of(l.default_filter_chain.as_ref().unwrap())),
        stdout()
    );

    // The namespace logs only errors of what it serves. As in Istio's
    // `mergeLogs`, a provider's filter is the last one set for it, so the
    // mesh-wide entry (both sides) now logs client-side errors too.
    let server = telemetry(
        "errors",
        "default",
        "{accessLogging: [{match: {mode: SERVER}, providers: [{name: envoy}], filter: {expression: 'response.code >= 400'}}]}",
    );
    let (inbound, outbound) = sides(&mesh(&format!("{mesh_wide}{server}")));
    assert_eq!(
        logs_of(&inbound),
        [(
            "/dev/stdout".to_owned(),
            Some("response.code >= 400".to_owned())
        )]
    );
    assert_eq!(logs_of(&outbound), logs_of(&inbound));
    // Without the mesh-wide entry the client side logs nothing.
    let (_, outbound) = sides(&mesh(&server));
    assert!(outbound.access_log.is_empty(), "{:?}", logs_of(&outbound));

    // A file provider of the mesh config as the mesh default.
    let file = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  mesh: '{extensionProviders: [{name: file, envoyFileAccessLog: {path: /var/log/access.log, logFormat: {labels: {code: \"%RESPONSE_CODE%\"}}}}], defaultProviders: {accessLogging: [file]}}'\n---\n";
    let (inbound, _) = sides(&mesh(file));
    assert_eq!(
        logs_of(&inbound),
        [("/var/log/access.log".to_owned(), None)]
    );

    // Tracing: a zipkin provider named by the mesh-wide Telemetry, its
    // sampling and tags; the workload's disableSpanReporting on the server
    // side only.
    let zipkin = "apiVersion: v1\nkind: Service\nmetadata: {name: zipkin, namespace: istio-system}\nspec:\n  clusterIP: 10.96.0.90\n  ports: [{name: http, port: 9411}]\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  mesh: '{extensionProviders: [{name: zipkin, zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}}]}'\n---\n";
    let (inbound, outbound) = sides(&mesh(zipkin));
    assert!(
        inbound.tracing.is_none() && outbound.tracing.is_none(),
        "no default provider"
    );
    let traced = telemetry(
        "mesh-default",
        "istio-system",
        "{tracing: [{providers: [{name: zipkin}], randomSamplingPercentage: 50, customTags: {team: {literal: {value: bookinfo}}, user: {header: {name: x-user}}}}]}",
    );
    let (inbound, outbound) = sides(&mesh(&format!("{zipkin}{traced}")));
    // Routes carry Istio's decorators (the spans' names) though the mesh
    // config names no default provider.
    let routes = generate(&mesh(&format!("{zipkin}{traced}")), &p).routes;
    assert!(
        routes
            .iter()
            .flat_map(|r| &r.virtual_hosts)
            .flat_map(|v| &v.routes)
            .any(|r| r.decorator.is_some())
    );
    for hcm in [&inbound, &outbound] {
        let t = hcm.tracing.as_ref().unwrap();
        assert_eq!(t.random_sampling.unwrap().value, 50.0);
        let tags: Vec<&str> = t.custom_tags.iter().map(|t| t.tag.as_str()).collect();
        assert_eq!(
            tags,
            [
                "istio.canonical_revision",
                "istio.canonical_service",
                "istio.namespace",
                "team",
                "user"
            ]
        );
    }
    let quiet = telemetry(
        "quiet",
        "default",
        "{selector: {matchLabels: {app: reviews}}, tracing: [{match: {mode: SERVER}, disableSpanReporting: true}]}",
    );
    let (inbound, outbound) = sides(&mesh(&format!("{zipkin}{traced}{quiet}")));
    assert!(inbound.tracing.is_none());
    assert!(outbound.tracing.is_some());

    // Providers that are not defined are reported by field.
    let snap = mesh(&telemetry(
        "t",
        "default",
        "{tracing: [{providers: [{name: jaeger}]}], accessLogging: [{providers: [{name: otel}]}]}",
    ));
    let fields: Vec<&str> = snap
        .warnings
        .iter()
        .filter(|w| w.kind == "Telemetry")
        .map(|w| w.field.as_str())
        .collect();
    assert_eq!(
        fields,
        [
            "spec.tracing[0].providers[0].name",
            "spec.accessLogging[0].providers[0].name"
        ]
    );
    // A change reaches its namespace's sidecars (the root namespace's all).
    let changes = ChangeSet::between(&mesh(""), &mesh(&off));
    assert_eq!(changes.effect(&p), Effect::Full);
    let mut elsewhere = reviews();
    elsewhere.namespace = "other".into();
    assert_eq!(changes.effect(&elsewhere), Effect::Nothing);
    let changes = ChangeSet::between(&mesh(""), &mesh(&mesh_wide));
    assert_eq!(changes.effect(&elsewhere), Effect::Full);
}

/// Sidecar `ingress`: the ports it lists are the ones served (instead of
/// the services' target ports), each sent to its `defaultEndpoint` (or
/// the original destination), with the listener's or the Sidecar's
/// inbound connection pool.
#[test]
fn sidecar_ingress_listeners_replace_the_service_ports() {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType,
    };
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint;
    let sidecar = "
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: reviews, namespace: default}
spec:
  workloadSelector: {labels: {app: reviews}}
  ingress:
  - port: {number: 9080, protocol: HTTP, name: http}
    defaultEndpoint: 127.0.0.1:8080
    connectionPool: {tcp: {maxConnections: 7}}
  - port: {number: 7000, name: tcp-admin}
    defaultEndpoint: 0.0.0.0:7001
  - port: {number: 6000, protocol: TCP, name: raw}
  - port: {number: 5000, protocol: HTTP, name: http-uds}
    defaultEndpoint: unix:///var/run/app.sock
  inboundConnectionPool: {http: {http1MaxPendingRequests: 5}}
";
    let snap = mesh(sidecar);
    let out = generate(&snap, &reviews());
    // 9091 (a service's target port) is not listed: passthrough only.
    assert!(chains(&out, Some(9091)).is_empty());
    for port in [9080, 7000, 6000, 5000] {
        assert!(!chains(&out, Some(port)).is_empty(), "{port}");
    }
    let cluster = |name: &str| out.clusters.iter().find(|c| c.name == name).unwrap();
    let target = |name: &str| {
        let cla = cluster(name).load_assignment.as_ref().unwrap();
        let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) =
            &cla.endpoints[0].lb_endpoints[0].host_identifier
        else {
            panic!()
        };
        let Some(address::Address::SocketAddress(sa)) = &ep.address.as_ref().unwrap().address
        else {
            panic!()
        };
        let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else {
            panic!()
        };
        (sa.address.clone(), port)
    };
    let limits = |name: &str| {
        let t = &cluster(name).circuit_breakers.as_ref().unwrap().thresholds[0];
        (
            t.max_connections.unwrap().value,
            t.max_pending_requests.unwrap().value,
        )
    };
    let statik = Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32));
    // On loopback: no bind to 127.0.0.6; the listener's own pool.
    let app = cluster("inbound|9080||");
    assert_eq!(app.cluster_discovery_type, statik);
    assert_eq!(target("inbound|9080||"), ("127.0.0.1".into(), 8080));
    assert!(app.upstream_bind_config.is_none());
    assert_eq!(limits("inbound|9080||"), (7, u32::MAX));
    // The workload's own address, from 127.0.0.6; the Sidecar's pool.
    assert_eq!(target("inbound|7000||"), ("10.244.0.12".into(), 7001));
    assert!(cluster("inbound|7000||").upstream_bind_config.is_some());
    assert_eq!(limits("inbound|7000||"), (u32::MAX, 5));
    // A unix domain socket: Envoy's pipe, without a bind.
    let uds = cluster("inbound|5000||");
    assert_eq!(uds.cluster_discovery_type, statik);
    assert!(uds.upstream_bind_config.is_none());
    let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) =
        &uds.load_assignment.as_ref().unwrap().endpoints[0].lb_endpoints[0].host_identifier
    else {
        panic!("{uds:?}")
    };
    assert!(
        matches!(&ep.address.as_ref().unwrap().address, Some(address::Address::Pipe(p)) if p.path == "/var/run/app.sock"),
        "{ep:?}"
    );
    // No endpoint: the original destination.
    assert_eq!(
        cluster("inbound|6000||").cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(
            DiscoveryType::OriginalDst as i32
        ))
    );
    // An HTTP port's chain routes to its cluster; a TCP one proxies.
    let hcm = |port: u32| {
        chains(&out, Some(port)).iter().any(|c| {
            c.filters
                .iter()
                .any(|f| f.name.contains("http_connection_manager"))
        })
    };
    assert!(hcm(9080) && !hcm(7000));

    // Two workloads alike but for their address get their own config (the
    // 0.0.0.0 endpoint is each one's address).
    let other = proxy("10.244.0.77", "reviews-1", &[("app", "reviews")]);
    assert_ne!(reviews().config_key(&snap), other.config_key(&snap));
    let without = mesh(&sidecar.replace("0.0.0.0:7001", "127.0.0.1:7001"));
    let (a, b) = (reviews().config_key(&without), other.config_key(&without));
    assert_eq!(a.own_address, None);
    assert_eq!(b.own_address, None);
}

/// Sidecar ingress `tls`: where PeerAuthentication disables mTLS on the
/// port, the port has one chain that terminates it with the files named
/// (then TCP for a `TLS` port, HTTP for `HTTPS`); elsewhere it is
/// ignored and reported, as Istio ignores it; settings the mode cannot
/// work with are reported and the port gets no chain of its own.
#[test]
fn sidecar_ingress_tls_is_terminated_where_mtls_is_disabled() {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        DownstreamTlsContext, common_tls_context,
    };
    let config = |protocol: &str, tls: &str, peer: &str| {
        format!(
            "{}apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: reviews, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: reviews}}}}
  ingress:
  - port: {{number: 9443, protocol: {protocol}, name: p}}
    defaultEndpoint: 127.0.0.1:8443
    tls: {tls}
",
            pa(
                "reviews",
                "default",
                &format!(
                    "{{selector: {{matchLabels: {{app: reviews}}}}, portLevelMtls: {{9443: {{mode: {peer}}}}}}}"
                )
            )
        )
    };
    let files =
        "serverCertificate: /etc/c.pem, privateKey: /etc/k.pem, caCertificates: /etc/ca.pem";
    let tls_warnings = |out: &Output| {
        out.warnings
            .iter()
            .filter(|w| w.kind == "Sidecar")
            .map(|w| (w.field.clone(), w.reason.clone()))
            .collect::<Vec<_>>()
    };

    let out = generate(
        &mesh(&config(
            "TLS",
            &format!("{{mode: MUTUAL, {files}}}"),
            "DISABLE",
        )),
        &reviews(),
    );
    let port = chains(&out, Some(9443));
    assert_eq!(shape(&port), [("tls".to_owned(), true)]);
    assert!(tls_warnings(&out).is_empty(), "{:?}", out.warnings);
    let first = &port[0].filters[0];
    assert!(
        first.name.contains("tcp_proxy"),
        "TLS is TCP inside: {first:?}"
    );
    let Some(envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
        any,
    )) = &port[0].transport_socket.as_ref().unwrap().config_type
    else {
        panic!()
    };
    let ctx = DownstreamTlsContext::decode(any.value.as_slice()).unwrap();
    assert_eq!(ctx.require_client_certificate.map(|b| b.value), Some(true));
    let common = ctx.common_tls_context.unwrap();
    assert_eq!(common.tls_certificates.len(), 1);
    let Some(common_tls_context::ValidationContextType::ValidationContext(v)) =
        common.validation_context_type
    else {
        panic!("MUTUAL verifies clients against caCertificates")
    };
    assert!(format!("{:?}", v.trusted_ca).contains("/etc/ca.pem"));

    // HTTPS: HTTP inside.
    let out = generate(
        &mesh(&config(
            "HTTPS",
            &format!("{{mode: SIMPLE, {files}}}"),
            "DISABLE",
        )),
        &reviews(),
    );
    let port = chains(&out, Some(9443));
    assert!(port[0].filters[0].name.contains("http_connection_manager"));

    // Under PERMISSIVE the settings are ignored: Istio's chains, reported.
    let out = generate(
        &mesh(&config(
            "HTTPS",
            &format!("{{mode: SIMPLE, {files}}}"),
            "PERMISSIVE",
        )),
        &reviews(),
    );
    assert_eq!(
        shape(&chains(&out, Some(9443))),
        [
            ("tls".to_owned(), true),
            ("tls".to_owned(), false),
            ("raw_buffer".to_owned(), false)
        ]
    );
    let warned = tls_warnings(&out);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!(warned[0].0, "spec.ingress[0].tls");
    assert!(warned[0].1.contains("it is PERMISSIVE there"), "{warned:?}");

    // MUTUAL without caCertificates: reported, no chain for the port.
    let out = generate(
        &mesh(&config(
            "HTTPS",
            "{mode: MUTUAL, serverCertificate: /etc/c.pem, privateKey: /etc/k.pem}",
            "DISABLE",
        )),
        &reviews(),
    );
    assert!(chains(&out, Some(9443)).is_empty());
    let warned = tls_warnings(&out);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!(warned[0].0, "spec.ingress[0].tls.caCertificates");
    assert!(warned[0].1.contains("port skipped"), "{warned:?}");
}

#[test]
fn sidecar_ingress_is_validated_as_istio_does() {
    let problem = |ingress: &str| {
        let text = format!(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: s}}\nspec:\n  ingress: {ingress}\n"
        );
        crds::refusal(&text).map(|(field, reason)| format!("{field}: {reason}"))
    };
    assert_eq!(
        problem(
            "[{port: {number: 80, name: http}, defaultEndpoint: '[::1]:8080'}, {port: {number: 81, name: b}, defaultEndpoint: ':81'}]"
        ),
        None
    );
    let dup = problem("[{port: {number: 80, name: a}}, {port: {number: 80, name: b}}]").unwrap();
    assert!(
        dup.contains("spec.ingress[1].port.number") && dup.contains("unique"),
        "{dup}"
    );
    let elsewhere =
        problem("[{port: {number: 80, name: a}, defaultEndpoint: '10.0.0.1:80'}]").unwrap();
    assert!(
        elsewhere.contains("spec.ingress[0].defaultEndpoint"),
        "{elsewhere}"
    );
    let no_port =
        problem("[{port: {number: 80, name: a}, defaultEndpoint: '127.0.0.1:http'}]").unwrap();
    assert!(
        no_port.contains("spec.ingress[0].defaultEndpoint"),
        "{no_port}"
    );
}
