//! Compiles the Envoy `.proto` files that envoy-types ships into a
//! descriptor set, so `/debug/config_dump` can render resources as Envoy's
//! own JSON. Without them (an unusual cargo layout) the build still
//! succeeds and config_dump lists names and sizes only.

use std::path::{Path, PathBuf};

const FILES: [&str; 17] = [
    "envoy/config/cluster/v3/cluster.proto",
    "envoy/config/endpoint/v3/endpoint.proto",
    "envoy/config/listener/v3/listener.proto",
    "envoy/config/route/v3/route.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/filters/http/fault/v3/fault.proto",
    "envoy/extensions/filters/http/cors/v3/cors.proto",
    "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto",
    "envoy/extensions/retry/host/previous_hosts/v3/previous_hosts.proto",
    "envoy/extensions/retry/priority/previous_priorities/v3/previous_priorities_config.proto",
    "envoy/extensions/transport_sockets/tls/v3/tls.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
    "envoy/extensions/access_loggers/file/v3/file.proto",
    "envoy/extensions/access_loggers/stats/v3/stats.proto",
    "envoy/extensions/filters/http/header_to_metadata/v3/header_to_metadata.proto",
];

fn envoy_protos() -> Option<PathBuf> {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let lock = std::fs::read_to_string(manifest.join("../Cargo.lock")).ok()?;
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"envoy-types\""))?
        .lines()
        .find_map(|l| l.strip_prefix("version = "))?
        .trim_matches('"')
        .to_owned();
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))?;
    std::fs::read_dir(home.join("registry/src"))
        .ok()?
        .flatten()
        .map(|d| d.path().join(format!("envoy-types-{version}/proto")))
        .find(|p| p.is_dir())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../Cargo.lock");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default())
        .join("envoy_descriptors.bin");
    let bytes = envoy_protos()
        .and_then(|proto| {
            let includes: Vec<PathBuf> = ["data-plane-api", "xds", "googleapis", "protoc-gen-validate", "cel-spec/proto"]
                .iter()
                .map(|d| proto.join(d))
                .collect();
            let mut compiler = protox::Compiler::new(includes).ok()?;
            compiler.include_imports(true);
            compiler.open_files(FILES).ok()?;
            Some(prost::Message::encode_to_vec(&compiler.file_descriptor_set()))
        })
        .unwrap_or_else(|| {
            println!("cargo:warning=Envoy protos not found: /debug/config_dump will list names and sizes only");
            Vec::new()
        });
    if let Err(e) = std::fs::write(&out, bytes) {
        println!("cargo:warning=cannot write {}: {e}", out.display());
    }
}
