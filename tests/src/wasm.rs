//! A Proxy-Wasm plugin for the WasmPlugin tests, written in the WebAssembly
//! text format and assembled here (no Wasm toolchain needed): on each
//! request and each response it adds the header [`PLUGIN_HEADER`] with the
//! plugin's configuration (what a WasmPlugin's `pluginConfig` becomes,
//! JSON text) as its value. It speaks Proxy-Wasm ABI 0.2.1, the one
//! Envoy's V8 runtime runs.

/// The header the plugin adds to requests and responses.
pub const PLUGIN_HEADER: &str = "x-wasm-config";

/// The plugin's text: host calls `proxy_get_buffer_bytes` (the plugin
/// configuration, buffer type 7, read once in `proxy_on_configure`) and
/// `proxy_add_header_map_value` (map 0: request headers, 2: response
/// headers); memory handed to the host by a bump allocator
/// (`proxy_on_memory_allocate`), never freed (the configuration is read
/// once per VM).
const PLUGIN_WAT: &str = r#"(module
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes"
    (func $buffer (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 4096))
  (global $config (mut i32) (i32.const 0))
  (global $config_len (mut i32) (i32.const 0))
  (data (i32.const 16) "x-wasm-config")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $at))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (if (i32.gt_u (local.get $size) (i32.const 0))
      (then
        (drop (call $buffer (i32.const 7) (i32.const 0) (local.get $size)
          (i32.const 0) (i32.const 4)))
        (global.set $config (i32.load (i32.const 0)))
        (global.set $config_len (i32.load (i32.const 4)))))
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $add_header (i32.const 0) (i32.const 16) (i32.const 13)
      (global.get $config) (global.get $config_len)))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $add_header (i32.const 2) (i32.const 16) (i32.const 13)
      (global.get $config) (global.get $config_len)))
    (i32.const 0))
)"#;

/// The plugin's binary module.
pub fn header_plugin() -> Vec<u8> {
    wat::parse_str(PLUGIN_WAT).expect("the plugin's text assembles")
}

/// The lowercase hex SHA-256 of `bytes` (a WasmPlugin's `sha256`).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A container registry speaking the OCI distribution API on loopback
/// (plain HTTP), with the bearer token challenge real registries make: a
/// request without `Authorization: Bearer <token>` is answered 401 and a
/// `WWW-Authenticate` naming its token endpoint.
pub struct Registry {
    /// `127.0.0.1:<port>`.
    pub addr: std::net::SocketAddr,
    /// Repositories' manifests by `repository:tag` and by
    /// `repository@sha256:<hex>`, with their media type.
    manifests: Arc<Mutex<Manifests>>,
    /// Blobs by `sha256:<hex>`.
    blobs: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
}

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Manifests by reference: (media type, bytes).
type Manifests = BTreeMap<String, (String, Vec<u8>)>;

const TOKEN: &str = "pull-token";
/// The login the token endpoint wants for repositories under `private/`
/// (`Basic` of `puller:secret`).
const PRIVATE_LOGIN: &str = "Basic cHVsbGVyOnNlY3JldA==";

/// A Docker config (a `kubernetes.io/dockerconfigjson` Secret's
/// `.dockerconfigjson`) with the login for the registry at `addr`.
pub fn docker_config(addr: std::net::SocketAddr) -> String {
    format!(r#"{{"auths":{{"{addr}":{{"username":"puller","password":"secret"}}}}}}"#)
}
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

impl Registry {
    /// Starts it on the current runtime.
    pub async fn start() -> Registry {
        let manifests = Arc::new(Mutex::new(BTreeMap::new()));
        let blobs = Arc::new(Mutex::new(BTreeMap::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the registry");
        let addr = listener.local_addr().expect("its address");
        let (m, b) = (manifests.clone(), blobs.clone());
        let app = axum::Router::new()
            .route(
                "/token",
                axum::routing::get(
                    |axum::extract::RawQuery(query): axum::extract::RawQuery,
                     headers: axum::http::HeaderMap| async move {
                        use axum::response::IntoResponse;
                        let private = query.unwrap_or_default().contains("private");
                        let login = headers
                            .get(axum::http::header::AUTHORIZATION)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        if private && login.as_deref() != Some(PRIVATE_LOGIN) {
                            return axum::http::StatusCode::UNAUTHORIZED.into_response();
                        }
                        axum::Json(serde_json::json!({"token": TOKEN})).into_response()
                    },
                ),
            )
            .route(
                "/v2/{*path}",
                axum::routing::get(
                    move |axum::extract::Path(path): axum::extract::Path<String>,
                          headers: axum::http::HeaderMap| {
                        let (m, b) = (m.clone(), b.clone());
                        async move { serve_registry(addr, &path, &headers, &m, &b) }
                    },
                ),
            );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Registry {
            addr,
            manifests,
            blobs,
        }
    }

    fn blob(&self, bytes: Vec<u8>) -> serde_json::Value {
        let digest = format!("sha256:{}", sha256_hex(&bytes));
        let size = bytes.len();
        self.blobs
            .lock()
            .expect("blobs")
            .insert(digest.clone(), bytes);
        serde_json::json!({"digest": digest, "size": size})
    }

    fn manifest(
        &self,
        repository: &str,
        tag: &str,
        media: &str,
        body: &serde_json::Value,
    ) -> String {
        let bytes = serde_json::to_vec(body).expect("JSON");
        let digest = format!("sha256:{}", sha256_hex(&bytes));
        let mut m = self.manifests.lock().expect("manifests");
        m.insert(
            format!("{repository}@{digest}"),
            (media.to_owned(), bytes.clone()),
        );
        if !tag.is_empty() {
            m.insert(format!("{repository}:{tag}"), (media.to_owned(), bytes));
        }
        digest
    }

    /// Pushes `module` as a Wasm artifact (Istio's compat variant: the
    /// module is the image's one layer) at `repository:tag`; returns the
    /// manifest's digest (`sha256:<hex>`).
    pub fn push_artifact(&self, repository: &str, tag: &str, module: &[u8]) -> String {
        let mut config = self.blob(b"{}".to_vec());
        config["mediaType"] = "application/vnd.module.wasm.config.v1+json".into();
        let mut layer = self.blob(module.to_vec());
        layer["mediaType"] = "application/vnd.module.wasm.content.layer.v1+wasm".into();
        self.manifest(
            repository,
            tag,
            OCI_MANIFEST,
            &serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                "config": config, "layers": [layer]}),
        )
    }

    /// Pushes `module` as `plugin.wasm` in the gzipped tar layer of an
    /// image (Istio's Docker image variant), behind an image index with a
    /// `linux/arm64` entry (naming nothing) before the `linux/amd64` one,
    /// at `repository:tag`; returns the index's digest.
    pub fn push_image(&self, repository: &str, tag: &str, module: &[u8]) -> String {
        let mut tarball = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::default(),
        ));
        let mut header = tar::Header::new_gnu();
        header.set_size(module.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tarball
            .append_data(&mut header, "plugin.wasm", module)
            .expect("tar");
        let gz = tarball.into_inner().expect("tar").finish().expect("gzip");
        let mut config = self.blob(b"{\"architecture\":\"amd64\",\"os\":\"linux\"}".to_vec());
        config["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
        let mut layer = self.blob(gz);
        layer["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip".into();
        let image = self.manifest(
            repository,
            "",
            OCI_MANIFEST,
            &serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                "config": config, "layers": [layer]}),
        );
        let entry = |digest: &str, arch: &str| {
            serde_json::json!({"mediaType": OCI_MANIFEST, "digest": digest, "size": 1,
                               "platform": {"os": "linux", "architecture": arch}})
        };
        self.manifest(
            repository,
            tag,
            OCI_INDEX,
            &serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                "manifests": [entry(&format!("sha256:{}", "0".repeat(64)), "arm64"),
                                              entry(&image, "amd64")]}),
        )
    }
}

fn serve_registry(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &axum::http::HeaderMap,
    manifests: &Mutex<Manifests>,
    blobs: &Mutex<BTreeMap<String, Vec<u8>>>,
) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let (repository, kind, reference) = if let Some((r, m)) = path.split_once("/manifests/") {
        (r, "manifests", m)
    } else if let Some((r, b)) = path.split_once("/blobs/") {
        (r, "blobs", b)
    } else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {TOKEN}"));
    if !authorized {
        let challenge = format!(
            "Bearer realm=\"http://{addr}/token\",service=\"fake-registry\",scope=\"repository:{repository}:pull\""
        );
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, challenge)],
        )
            .into_response();
    }
    if kind == "blobs" {
        return match blobs.lock().expect("blobs").get(reference) {
            Some(b) => b.clone().into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        };
    }
    let key = if reference.starts_with("sha256:") {
        format!("{repository}@{reference}")
    } else {
        format!("{repository}:{reference}")
    };
    match manifests.lock().expect("manifests").get(&key) {
        Some((media, body)) => (
            [
                (header::CONTENT_TYPE, media.clone()),
                (
                    header::HeaderName::from_static("docker-content-digest"),
                    format!("sha256:{}", sha256_hex(body)),
                ),
            ],
            body.clone(),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
