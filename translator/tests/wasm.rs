//! WasmPlugins in what a sidecar is sent: their filters by phase and
//! priority around Istio's security filters (HTTP and network), the
//! workloads and sides they apply to, and their ECDS resources.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use envoy_types::pb::envoy::config::core::v3::{async_data_source, data_source};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener, filter};
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_filter,
};
use envoy_types::pb::envoy::extensions::wasm::v3::{FailurePolicy, plugin_config};
use envoy_types::pb::google::protobuf::StringValue;
use prost::Message;
use translator::model::{MeshConfig, Proxy, Snapshot};
use translator::wasm::{RESOURCE_PREFIX, WASM_HTTP_TYPE, WASM_NETWORK_TYPE};
use translator::{Output, generate, generate_encoded};

/// reviews (HTTP 9080, TCP 9000) with a pod at 10.244.0.12, a JWT
/// RequestAuthentication and an ALLOW AuthorizationPolicy for it.
const PLATFORM: &str = "
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  clusterIP: 10.96.0.13
  selector: {app: reviews}
  ports: [{name: http, port: 9080}, {name: tcp, port: 9000}]
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
ports: [{name: http, port: 9080}, {name: tcp, port: 9000}]
endpoints: [{addresses: [10.244.0.12], targetRef: {kind: Pod, name: reviews-0, namespace: default}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  jwtRules: [{issuer: issuer.example, jwks: '{\"keys\": []}'}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  rules: [{from: [{source: {namespaces: [default]}}]}]
---
";

fn plugin(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n---\n"
    )
}

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

fn listener<'a>(out: &'a Output, name: &str) -> &'a Listener {
    out.listeners
        .iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no listener {name}"))
}

fn chain(l: &Listener, port: u32) -> &FilterChain {
    l.filter_chains
        .iter()
        .chain(l.default_filter_chain.as_ref())
        .find(|c| {
            c.filter_chain_match
                .as_ref()
                .and_then(|m| m.destination_port)
                .is_none_or(|p| p.value == port)
                && c.filters
                    .iter()
                    .any(|f| f.name.contains("http_connection_manager") || port != 9080)
        })
        .unwrap_or_else(|| panic!("no chain for {port} in {}", l.name))
}

/// The HTTP filter names of the connection manager of `chain`, plugins
/// shortened to `<namespace>.<name>`.
fn http_filters(chain: &FilterChain) -> Vec<String> {
    let f = chain
        .filters
        .iter()
        .find(|f| f.name == "envoy.filters.network.http_connection_manager")
        .expect("an HTTP connection manager");
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        panic!("typed")
    };
    let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
    hcm.http_filters
        .into_iter()
        .map(|h| {
            if let Some(http_filter::ConfigType::ConfigDiscovery(d)) = &h.config_type {
                assert_eq!(
                    d.type_urls,
                    [
                        WASM_HTTP_TYPE,
                        "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
                    ]
                );
            }
            h.name.trim_start_matches(RESOURCE_PREFIX).to_owned()
        })
        .collect()
}

fn network_filters(chain: &FilterChain) -> Vec<String> {
    chain
        .filters
        .iter()
        .map(|f| f.name.trim_start_matches(RESOURCE_PREFIX).to_owned())
        .collect()
}

#[test]
fn http_plugins_stand_in_their_phase_by_priority_around_the_security_filters() {
    let url = "  url: file:///plugins/p.wasm\n";
    let snap = mesh(
        &[
            plugin("default", "a", &format!("{url}  phase: AUTHN")),
            plugin("default", "b", &format!("{url}  phase: AUTHZ")),
            plugin("default", "c", &format!("{url}  phase: STATS")),
            plugin("default", "d", url),
            plugin(
                "default",
                "e",
                &format!("{url}  phase: AUTHN\n  priority: 10"),
            ),
            plugin("istio-system", "f", url),
            plugin("istio-system", "g", &format!("{url}  priority: -5")),
            // Not reviews.
            plugin(
                "default",
                "h",
                &format!("{url}  selector: {{matchLabels: {{app: ratings}}}}"),
            ),
            plugin("other", "i", url),
            // Another side, another port.
            plugin("default", "j", &format!("{url}  match: [{{mode: CLIENT}}]")),
            plugin(
                "default",
                "k",
                &format!("{url}  match: [{{ports: [{{number: 1234}}]}}]"),
            ),
        ]
        .concat(),
    );
    assert!(snap.warnings.is_empty(), "{:?}", snap.warnings);
    let out = generate(&snap, &reviews());
    let inbound = http_filters(chain(listener(&out, "virtualInbound"), 9080));
    assert_eq!(
        inbound,
        [
            "default.e",
            "default.a",
            "envoy.filters.http.jwt_authn",
            "default.b",
            "envoy.filters.http.rbac",
            "default.c",
            // The root namespace's first, then by priority.
            "istio-system.g",
            "istio-system.f",
            "default.d",
            "envoy.filters.http.router",
        ]
        .map(String::from)
    );
    let outbound = http_filters(chain(listener(&out, "0.0.0.0_9080"), 9080));
    assert_eq!(
        outbound,
        [
            "default.e",
            "default.a",
            "default.b",
            "default.c",
            "istio-system.g",
            "istio-system.f",
            "default.d",
            "default.j",
            "envoy.filters.http.cors",
            "envoy.filters.http.fault",
            "envoy.filters.http.router",
        ]
        .map(String::from)
    );
    // Every plugin that applies has its ECDS resource, whatever its side.
    let mut names: Vec<&str> = out
        .extension_configs
        .iter()
        .map(|c| c.name.trim_start_matches(RESOURCE_PREFIX))
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "default.a",
            "default.b",
            "default.c",
            "default.d",
            "default.e",
            "default.j",
            "default.k",
            "istio-system.f",
            "istio-system.g"
        ]
    );
    // The encoded form carries the same.
    let encoded = generate_encoded(&snap, &reviews());
    assert_eq!(encoded.extension_configs.len(), out.extension_configs.len());
}

#[test]
fn network_plugins_stand_around_the_network_rbac_and_before_the_connection_manager() {
    let url = "  url: file:///plugins/p.wasm\n  type: NETWORK\n";
    let snap = mesh(
        &[
            plugin("default", "n1", &format!("{url}  phase: AUTHZ")),
            plugin("default", "n2", url),
            plugin("default", "h", "  url: file:///plugins/p.wasm"),
        ]
        .concat(),
    );
    let out = generate(&snap, &reviews());
    let inbound = listener(&out, "virtualInbound");
    let tcp = inbound
        .filter_chains
        .iter()
        .find(|c| {
            c.filter_chain_match
                .as_ref()
                .and_then(|m| m.destination_port)
                .is_some_and(|p| p.value == 9000)
        })
        .unwrap();
    assert_eq!(
        network_filters(tcp),
        [
            "default.n1",
            "envoy.filters.network.rbac",
            "default.n2",
            "envoy.filters.network.tcp_proxy"
        ]
    );
    let http = chain(inbound, 9080);
    assert_eq!(
        network_filters(http),
        [
            "default.n1",
            "default.n2",
            "envoy.filters.network.http_connection_manager"
        ]
    );
    // The HTTP plugin is no network filter, the network ones no HTTP filter.
    assert!(http_filters(http).contains(&"default.h".to_owned()));
    assert!(
        !http_filters(http)
            .iter()
            .any(|f| f.starts_with("default.n"))
    );
    // Outbound too, but not on the passthrough chains.
    let outbound = listener(&out, "virtualOutbound");
    assert!(outbound.filter_chains.iter().all(|c| {
        !network_filters(c)
            .iter()
            .any(|f| f.starts_with("default.n"))
    }));
    let n1 = out
        .extension_configs
        .iter()
        .find(|c| c.name.ends_with("default.n1"))
        .unwrap();
    assert_eq!(
        n1.typed_config.as_ref().unwrap().type_url,
        WASM_NETWORK_TYPE
    );
}

#[test]
fn the_ecds_resource_is_istios_wasm_filter() {
    let snap = mesh(&[
        plugin(
            "default",
            "remote",
            "  url: https://modules.example/p.wasm
  pluginName: my-root
  pluginConfig: {b: [1, 2], a: x}
  failStrategy: FAIL_OPEN
  imagePullPolicy: Always
  vmConfig: {env: [{name: MODE, value: fast}, {name: POD_NAME, valueFrom: HOST}]}",
        ),
        plugin(
            "default",
            "local",
            "  url: file:///plugins/p.wasm\n  sha256: 0000000000000000000000000000000000000000000000000000000000000000",
        ),
        plugin(
            "default",
            "image",
            "  url: registry.example/plugins/p:1.0\n  imagePullSecret: registry-login",
        ),
        "apiVersion: v1
kind: Secret
metadata: {name: registry-login, namespace: default}
type: kubernetes.io/dockerconfigjson
stringData: {.dockerconfigjson: '{\"auths\": {}}'}
---
"
        .into(),
        // The mesh's, with its namespace's login: not for reviews' proxy.
        plugin(
            "istio-system",
            "mesh",
            "  url: registry.example/plugins/p:1.0\n  imagePullSecret: login",
        ),
        "apiVersion: v1
kind: Secret
metadata: {name: login, namespace: istio-system}
type: kubernetes.io/dockerconfigjson
stringData: {.dockerconfigjson: '{\"auths\": {\"mesh\": {}}}'}
---
"
        .into(),
        // A login that is not there: reported.
        plugin(
            "default",
            "nologin",
            "  url: registry.example/plugins/p:1.0\n  imagePullSecret: missing",
        ),
    ]
    .concat());
    assert_eq!(snap.warnings.len(), 1, "{:?}", snap.warnings);
    assert_eq!(snap.warnings[0].field, "spec.imagePullSecret");
    assert_eq!(snap.warnings[0].object, "default/nologin");
    let out = generate(&snap, &reviews());
    let wasm = |name: &str| {
        let c = out
            .extension_configs
            .iter()
            .find(|c| c.name == format!("{RESOURCE_PREFIX}default.{name}"))
            .unwrap();
        let any = c.typed_config.as_ref().unwrap();
        assert_eq!(any.type_url, WASM_HTTP_TYPE);
        let config = Wasm::decode(any.value.as_slice()).unwrap().config.unwrap();
        let Some(plugin_config::Vm::VmConfig(vm)) = config.vm.clone() else {
            panic!("vm config")
        };
        (config, vm)
    };
    let (config, vm) = wasm("remote");
    assert_eq!(config.name, "default.remote");
    assert_eq!(config.root_id, "my-root");
    assert_eq!(config.failure_policy, FailurePolicy::FailOpen as i32);
    let configuration = config.configuration.unwrap();
    assert_eq!(
        StringValue::decode(configuration.value.as_slice())
            .unwrap()
            .value,
        r#"{"a":"x","b":[1,2]}"#
    );
    assert_eq!(vm.runtime, "envoy.wasm.runtime.v8");
    let Some(async_data_source::Specifier::Remote(remote)) = vm.code.unwrap().specifier else {
        panic!("a remote source")
    };
    let uri = remote.http_uri.unwrap();
    assert_eq!(uri.uri, "https://modules.example/p.wasm");
    assert_eq!(remote.sha256, "nil");
    assert_eq!(uri.timeout.unwrap().seconds, 30);
    let env = vm.environment_variables.unwrap();
    assert_eq!(env.host_env_keys, ["POD_NAME"]);
    assert_eq!(env.key_values["MODE"], "fast");
    assert_eq!(
        env.key_values["ISTIO_META_WASM_IMAGE_PULL_POLICY"],
        "Always"
    );
    assert_eq!(
        env.key_values["ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION"].len(),
        16
    );
    let (config, vm) = wasm("local");
    assert_eq!(config.failure_policy, FailurePolicy::FailClosed as i32);
    assert!(config.configuration.is_none());
    let Some(async_data_source::Specifier::Local(local)) = vm.code.unwrap().specifier else {
        panic!("a local source")
    };
    assert_eq!(
        local.specifier,
        Some(data_source::Specifier::Filename("/plugins/p.wasm".into()))
    );
    let login = |vm: &envoy_types::pb::envoy::extensions::wasm::v3::VmConfig| {
        vm.environment_variables.as_ref().unwrap().key_values["ISTIO_META_WASM_IMAGE_PULL_SECRET"]
            .clone()
    };
    let mesh_plugin = out
        .extension_configs
        .iter()
        .find(|c| c.name.ends_with("istio-system.mesh"))
        .unwrap();
    let mesh_config = Wasm::decode(mesh_plugin.typed_config.as_ref().unwrap().value.as_slice())
        .unwrap()
        .config
        .unwrap();
    let Some(plugin_config::Vm::VmConfig(mesh_vm)) = mesh_config.vm else {
        panic!("vm config")
    };
    assert_eq!(login(&mesh_vm), "");
    assert_eq!(login(&wasm("nologin").1), "");
    let (_, vm) = wasm("image");
    assert_eq!(login(&vm), r#"{"auths": {}}"#);
    let Some(async_data_source::Specifier::Remote(remote)) = vm.code.unwrap().specifier else {
        panic!("a remote source")
    };
    assert_eq!(
        remote.http_uri.unwrap().uri,
        "oci://registry.example/plugins/p:1.0"
    );
}
