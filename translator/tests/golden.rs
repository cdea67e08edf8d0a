//! Golden files of the translator's output, as canonical protobuf JSON
//! (every `Any` expanded), for one sidecar and one gateway on the Bookinfo
//! mesh: `examples/bookinfo/platform.yaml` plus Istio's own gateway, subset,
//! 80/20 and fault-injection samples.
//!
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p translator --test golden`
//! and review the diff.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::path::{Path, PathBuf};

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use translator::model::{MeshConfig, Proxy, Snapshot};
use translator::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, Output, ROUTE_TYPE};

const SAMPLES: [&str; 4] = [
    "bookinfo-gateway.yaml",
    "destination-rule-all.yaml",
    "virtual-service-reviews-80-20.yaml",
    "virtual-service-ratings-test-abort.yaml",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn snapshot() -> Snapshot {
    let mut texts =
        vec![std::fs::read_to_string(workspace().join("examples/bookinfo/platform.yaml")).unwrap()];
    let samples = crds::istio_testdata().join("samples/bookinfo/networking");
    texts.extend(
        SAMPLES
            .iter()
            .map(|s| std::fs::read_to_string(samples.join(s)).unwrap()),
    );
    Snapshot::build(1, &crds::objects_of(&texts), MeshConfig::default())
}

/// Envoy's descriptors, compiled from the `.proto` files envoy-types ships.
fn envoy_descriptors() -> DescriptorPool {
    // The registry copy of the envoy-types version in Cargo.lock.
    let lock = std::fs::read_to_string(workspace().join("Cargo.lock")).unwrap();
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"envoy-types\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("envoy-types in Cargo.lock");
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cargo"));
    let proto = std::fs::read_dir(cargo_home.join("registry/src"))
        .unwrap()
        .map(|d| {
            d.unwrap()
                .path()
                .join(format!("envoy-types-{version}/proto"))
        })
        .find(|p| p.is_dir())
        .expect("envoy-types sources in the cargo registry");
    let includes: Vec<PathBuf> = [
        "data-plane-api",
        "xds",
        "googleapis",
        "protoc-gen-validate",
        "cel-spec/proto",
    ]
    .iter()
    .map(|d| proto.join(d))
    .collect();
    let files = [
        "envoy/config/cluster/v3/cluster.proto",
        "envoy/config/endpoint/v3/endpoint.proto",
        "envoy/config/listener/v3/listener.proto",
        "envoy/config/route/v3/route.proto",
        "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
        "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto",
        "envoy/extensions/filters/http/router/v3/router.proto",
        "envoy/extensions/filters/http/fault/v3/fault.proto",
        "envoy/extensions/retry/host/previous_hosts/v3/previous_hosts.proto",
        "envoy/extensions/transport_sockets/tls/v3/tls.proto",
        "envoy/extensions/filters/http/cors/v3/cors.proto",
        "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
        "envoy/extensions/retry/priority/previous_priorities/v3/previous_priorities_config.proto",
        "envoy/extensions/filters/listener/original_dst/v3/original_dst.proto",
        "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto",
    ];
    let mut compiler = protox::Compiler::new(includes).unwrap();
    compiler.include_imports(true);
    compiler.open_files(files).unwrap();
    compiler.descriptor_pool()
}

fn to_json(pool: &DescriptorPool, output: &Output) -> serde_json::Value {
    let mut doc = serde_json::Map::new();
    for (key, type_url) in [
        ("clusters", CLUSTER_TYPE),
        ("endpoints", ENDPOINT_TYPE),
        ("listeners", LISTENER_TYPE),
        ("routes", ROUTE_TYPE),
    ] {
        let desc = pool
            .get_message_by_name(type_url.trim_start_matches("type.googleapis.com/"))
            .unwrap();
        let items = output
            .resources(type_url)
            .into_iter()
            .map(|(_, any)| {
                let msg = DynamicMessage::decode(desc.clone(), any.value.as_slice()).unwrap();
                serde_json::to_value(&msg).unwrap()
            })
            .collect();
        doc.insert(key.into(), serde_json::Value::Array(items));
    }
    serde_json::Value::Object(doc)
}

fn check(name: &str, proxy: &Proxy) {
    let output = translator::generate(&snapshot(), proxy);
    assert!(output.warnings.is_empty(), "{:?}", output.warnings);
    let json = to_json(&envoy_descriptors(), &output);
    let text = serde_json::to_string_pretty(&json).unwrap() + "\n";
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let golden = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    assert!(
        golden == text,
        "{} differs from the translator's output; run with UPDATE_GOLDEN=1 and review the diff",
        path.display()
    );
    // The encoding round-trips: what is sent is what the golden shows.
    for (_, any) in output.resources(LISTENER_TYPE) {
        let l =
            envoy_types::pb::envoy::config::listener::v3::Listener::decode(any.value.as_slice())
                .unwrap();
        assert!(!l.name.is_empty());
    }
}

#[test]
fn sidecar_golden() {
    let proxy = Proxy::from_node_id(
        "sidecar~127.0.1.1~productpage-v1.default~default.svc.cluster.local",
        None,
        [("app".to_string(), "productpage".to_string())].into(),
    )
    .unwrap();
    check("sidecar.json", &proxy);
}

#[test]
fn gateway_golden() {
    let proxy = Proxy::from_node_id(
        "router~127.0.0.1~istio-ingressgateway.istio-system~istio-system.svc.cluster.local",
        None,
        [("istio".to_string(), "ingressgateway".to_string())].into(),
    )
    .unwrap();
    check("gateway.json", &proxy);
}
