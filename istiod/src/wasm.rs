//! The agent's side of WasmPlugins (Istio's `pkg/wasm`): the daemon sends
//! a plugin's module as a remote source Envoy cannot fetch by itself
//! (`translator::wasm`), and the agent's xDS proxy ([`crate::xds_proxy`])
//! rewrites each ECDS resource that has one, on its way to Envoy, to a
//! local file it fetched first ([`ModuleCache`]).
//!
//! - `http://` and `https://` modules are fetched (the web PKI roots for
//!   HTTPS; redirects followed; at most [`MAX_MODULE_BYTES`]; within the
//!   source's timeout, Istio's 30 s); `oci://` images are pulled from
//!   their registry (`crate::oci`). Either is kept in the cache folder as
//!   `<sha256 of the URL>/<sha256 of the module>.wasm`. A module must
//!   start with Wasm's magic number and, when the plugin has a `sha256`,
//!   have that digest (an image: its manifest's digest).
//! - Fetched again as Istio's pull policy says: `Always` (and, with no
//!   policy, an image's `latest` tag) when the plugin's version changed,
//!   otherwise (`IfNotPresent`, unset) only when nothing for that URL and
//!   checksum is in the cache. A module another one replaced is deleted
//!   once nothing refers to it.
//! - The agent's own variables (`ISTIO_META_WASM_*`) are taken out of the
//!   VM's environment before Envoy sees it.
//! - A module that cannot be had (fetch failure, wrong digest, another
//!   scheme) turns the resource into an RBAC
//!   filter of the same name: one that allows everything when the plugin
//!   fails open, else one that denies everything, as Istio's agent does,
//!   so that Envoy never waits on the plugin forever and never runs
//!   without a plugin that may guard it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    AsyncDataSource, DataSource, TypedExtensionConfig, async_data_source, data_source,
};
use envoy_types::pb::envoy::extensions::wasm::v3::{FailurePolicy, PluginConfig, plugin_config};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use tokio::sync::Mutex;
use tracing::{info, warn};
use translator::wasm::{
    NO_CHECKSUM, PULL_POLICY_ENV, PULL_SECRET_ENV, RESOURCE_VERSION_ENV, WASM_HTTP_TYPE,
    WASM_NETWORK_TYPE,
};

/// The largest module fetched (bytes): 256 MiB.
pub const MAX_MODULE_BYTES: u64 = 256 << 20;

/// What a Wasm module starts with.
const WASM_MAGIC: [u8; 4] = *b"\0asm";

/// Where the agent keeps fetched modules by default, relative to the
/// proxy's working directory (Istio's `/var/lib/istio/data`).
pub const DEFAULT_CACHE_DIR: &str = "./var/lib/istio/data/wasm";

/// Fetched modules: the folder they are kept in, and which file holds
/// which (URL, checksum) at which plugin version.
#[derive(Debug)]
pub struct ModuleCache {
    dir: PathBuf,
    /// (URL, checksum or "") -> (file, plugin version it was fetched for).
    entries: Mutex<HashMap<(String, String), (PathBuf, String)>>,
}

/// How the module of one plugin is wanted.
struct Wanted<'a> {
    url: &'a str,
    /// Lowercase hex; empty: any.
    sha256: &'a str,
    timeout: Duration,
    /// `imagePullPolicy: Always`.
    always: bool,
    /// No pull policy set.
    default_policy: bool,
    version: &'a str,
    /// The plugin's pull secret (a Docker config), for images.
    pull_secret: Option<&'a str>,
}

impl ModuleCache {
    /// A cache keeping its files under `dir` (created when first needed).
    pub fn new(dir: PathBuf) -> Arc<ModuleCache> {
        Arc::new(ModuleCache {
            dir,
            entries: Mutex::default(),
        })
    }

    /// The local file of the module `wanted` asks for, fetched when the
    /// cache has none fit for it.
    async fn get(&self, wanted: &Wanted<'_>) -> Result<PathBuf, String> {
        let key = (wanted.url.to_owned(), wanted.sha256.to_owned());
        // An image's `latest` tag is pulled again whenever the plugin
        // changes (Istio's default policy for it).
        let always = wanted.always
            || (wanted.default_policy
                && wanted.url.strip_prefix("oci://").is_some_and(|image| {
                    crate::oci::Reference::parse(image).is_ok_and(|r| r.is_latest())
                }));
        let mut entries = self.entries.lock().await;
        if let Some((path, version)) = entries.get(&key) {
            let stale = always && version != wanted.version;
            if !stale && path.exists() {
                return Ok(path.clone());
            }
        }
        let timeout = wanted.timeout;
        let (scheme, rest) = wanted.url.split_once("://").unwrap_or(("", wanted.url));
        let bytes = match scheme {
            "http" | "https" => {
                let url = wanted.url.to_owned();
                let bytes = tokio::task::spawn_blocking(move || fetch(&url, timeout))
                    .await
                    .map_err(|e| format!("fetch task: {e}"))??;
                let digest = hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref());
                if !wanted.sha256.is_empty() && wanted.sha256 != digest {
                    return Err(format!(
                        "checksum mismatch: the module's SHA-256 is {digest}, the plugin wants {}",
                        wanted.sha256
                    ));
                }
                bytes
            }
            "oci" => {
                let image = crate::oci::Reference::parse(rest)?;
                let login = wanted.pull_secret.map(str::to_owned);
                let pulled = tokio::task::spawn_blocking(move || {
                    crate::oci::pull(&image, timeout, login.as_deref())
                })
                .await
                .map_err(|e| format!("pull task: {e}"))??;
                // An image's checksum is its manifest's digest.
                if !wanted.sha256.is_empty() && wanted.sha256 != pulled.digest {
                    return Err(format!(
                        "checksum mismatch: the image's digest is sha256:{}, the plugin wants {}",
                        pulled.digest, wanted.sha256
                    ));
                }
                pulled.module
            }
            other => {
                return Err(format!(
                    "{other}:// modules are not fetched (http://, https:// and oci:// are)"
                ));
            }
        };
        if !bytes.starts_with(&WASM_MAGIC) {
            return Err("not a Wasm module (no \\0asm magic number)".into());
        }
        let digest = hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref());
        let folder = self.dir.join(hex(ring::digest::digest(
            &ring::digest::SHA256,
            wanted.url.as_bytes(),
        )
        .as_ref()));
        let path = folder.join(format!("{digest}.wasm"));
        write_atomically(&folder, &path, &bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        info!(url = wanted.url, file = %path.display(), bytes = bytes.len(), "Wasm module fetched");
        // The module this one replaces (an `Always` pull of a moved tag, a
        // served file that changed) is deleted once nothing refers to it.
        if let Some((old, _)) = entries.insert(key, (path.clone(), wanted.version.to_owned()))
            && old != path
            && !entries.values().any(|(p, _)| *p == old)
        {
            let _ = std::fs::remove_file(&old);
        }
        Ok(path)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `bytes` to `path` through a temporary file in `folder`, so that
/// Envoy never reads half a module.
fn write_atomically(folder: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(folder)?;
    let tmp = path.with_extension("wasm.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// GETs `url` (blocking), following redirects, within `timeout`.
fn fetch(url: &str, timeout: Duration) -> Result<Vec<u8>, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .build()
        .into();
    let mut response = agent
        .get(url)
        .call()
        .map_err(|e| format!("GET {url}: {e}"))?;
    response
        .body_mut()
        .with_config()
        .limit(MAX_MODULE_BYTES)
        .read_to_vec()
        .map_err(|e| format!("GET {url}: {e}"))
}

/// One ECDS resource as it goes to Envoy: a Wasm filter whose module is
/// remote gets it as a local file, or becomes the RBAC filter that stands
/// in for it (module doc); anything else passes unchanged.
pub async fn localize(resource: Any, cache: &ModuleCache) -> Any {
    let Ok(mut ext) = TypedExtensionConfig::decode(resource.value.as_slice()) else {
        return resource;
    };
    let Some(typed) = ext.typed_config.take() else {
        return resource;
    };
    let network = match typed.type_url.as_str() {
        WASM_HTTP_TYPE => false,
        WASM_NETWORK_TYPE => true,
        _ => return resource,
    };
    // The HTTP and network filters carry the same `PluginConfig` (field 1).
    let Ok(mut config) = decode_plugin_config(network, &typed.value) else {
        return resource;
    };
    let Some(plugin_config::Vm::VmConfig(vm)) = config.vm.as_mut() else {
        return resource;
    };
    let Some(async_data_source::Specifier::Remote(remote)) =
        vm.code.as_ref().and_then(|c| c.specifier.clone())
    else {
        // A local file (`file://`): Envoy reads it.
        return resource;
    };
    let env = vm
        .environment_variables
        .get_or_insert_with(Default::default);
    let pull_secret = env.key_values.get(PULL_SECRET_ENV).cloned();
    let policy = env.key_values.get(PULL_POLICY_ENV).map(String::as_str);
    let always = policy == Some("Always");
    let default_policy = matches!(policy, None | Some("UNSPECIFIED_POLICY"));
    let version = env
        .key_values
        .get(RESOURCE_VERSION_ENV)
        .cloned()
        .unwrap_or_default();
    env.key_values.retain(|k, _| !k.starts_with("ISTIO_META_"));
    if env.key_values.is_empty() && env.host_env_keys.is_empty() {
        vm.environment_variables = None;
    }
    let uri = remote.http_uri.as_ref().map_or("", |u| u.uri.as_str());
    let timeout =
        remote
            .http_uri
            .as_ref()
            .and_then(|u| u.timeout)
            .map_or(Duration::from_secs(5), |d| {
                Duration::new(
                    u64::try_from(d.seconds).unwrap_or(0),
                    u32::try_from(d.nanos).unwrap_or(0),
                )
            });
    let sha256 = if remote.sha256 == NO_CHECKSUM {
        ""
    } else {
        remote.sha256.as_str()
    };
    let wanted = Wanted {
        url: uri,
        sha256,
        timeout,
        always,
        default_policy,
        version: &version,
        pull_secret: pull_secret.as_deref(),
    };
    // A pull secret the proxy was not given (Istio: "missing image pulling secret").
    let fetched = if pull_secret.as_deref() == Some("") {
        Err("the plugin's image pull secret is missing (or not for this proxy)".to_owned())
    } else {
        cache.get(&wanted).await
    };
    ext.typed_config = Some(match fetched {
        Ok(path) => {
            vm.code = Some(AsyncDataSource {
                specifier: Some(async_data_source::Specifier::Local(DataSource {
                    specifier: Some(data_source::Specifier::Filename(path.display().to_string())),
                    ..Default::default()
                })),
            });
            encode_plugin_config(network, config)
        }
        Err(error) => {
            // The daemon always sets the policy (`FAIL_CLOSED` by default).
            let open = config.failure_policy == FailurePolicy::FailOpen as i32;
            warn!(
                plugin = %ext.name, url = uri, %error,
                "Wasm module not available; its filter {} every request",
                if open { "allows" } else { "denies" }
            );
            stand_in(network, open)
        }
    });
    Any {
        type_url: TypedExtensionConfig::type_url(),
        value: ext.encode_to_vec(),
    }
}

fn decode_plugin_config(network: bool, bytes: &[u8]) -> Result<PluginConfig, prost::DecodeError> {
    use envoy_types::pb::envoy::extensions::filters::{http, network as net};
    let config = if network {
        net::wasm::v3::Wasm::decode(bytes)?.config
    } else {
        http::wasm::v3::Wasm::decode(bytes)?.config
    };
    Ok(config.unwrap_or_default())
}

fn encode_plugin_config(network: bool, config: PluginConfig) -> Any {
    use envoy_types::pb::envoy::extensions::filters::{http, network as net};
    if network {
        envoy_types::util::pack_any(net::wasm::v3::Wasm {
            config: Some(config),
        })
    } else {
        envoy_types::util::pack_any(http::wasm::v3::Wasm {
            config: Some(config),
        })
    }
}

/// The RBAC filter standing in for a module that cannot be had: no rules
/// (everything allowed) when `open`, else empty rules (nothing allowed),
/// with Istio's stat prefixes `wasm-default-allow` / `wasm-default-deny`.
fn stand_in(network: bool, open: bool) -> Any {
    use envoy_types::pb::envoy::config::rbac::v3::Rbac;
    use envoy_types::pb::envoy::extensions::filters::{http, network as net};
    let (rules, prefix) = if open {
        (None, "wasm-default-allow")
    } else {
        (Some(Rbac::default()), "wasm-default-deny")
    };
    if network {
        envoy_types::util::pack_any(net::rbac::v3::Rbac {
            rules,
            stat_prefix: prefix.into(),
            ..Default::default()
        })
    } else {
        envoy_types::util::pack_any(http::rbac::v3::Rbac {
            rules,
            rules_stat_prefix: prefix.into(),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use envoy_types::pb::envoy::config::core::v3::{HttpUri, RemoteDataSource};
    use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
    use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
    use envoy_types::pb::envoy::extensions::wasm::v3::{EnvironmentVariables, VmConfig};

    use super::*;

    const MODULE: &[u8] = b"\0asm\x01\0\0\0";

    /// Serves [`MODULE`] at `/m.wasm` on loopback, counting the requests,
    /// and at `/changing.wasm` a module that differs at each request.
    async fn serve() -> (String, Arc<AtomicUsize>) {
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let changes = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new()
            .route(
                "/m.wasm",
                axum::routing::get(move || {
                    counted.fetch_add(1, Ordering::SeqCst);
                    async { MODULE }
                }),
            )
            .route(
                "/changing.wasm",
                axum::routing::get(move || {
                    let n = changes.fetch_add(1, Ordering::SeqCst);
                    let mut module = MODULE.to_vec();
                    module.push(u8::try_from(n % 256).unwrap());
                    async move { module }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/m.wasm"), hits)
    }

    /// The ECDS resource of an HTTP plugin with a remote module.
    fn resource(url: &str, sha256: &str, env: &[(&str, &str)], policy: FailurePolicy) -> Any {
        let config = PluginConfig {
            name: "default.p".into(),
            failure_policy: policy as i32,
            vm: Some(plugin_config::Vm::VmConfig(VmConfig {
                runtime: "envoy.wasm.runtime.v8".into(),
                code: Some(AsyncDataSource {
                    specifier: Some(async_data_source::Specifier::Remote(RemoteDataSource {
                        http_uri: Some(HttpUri {
                            uri: url.into(),
                            ..Default::default()
                        }),
                        sha256: sha256.into(),
                        ..Default::default()
                    })),
                }),
                environment_variables: Some(EnvironmentVariables {
                    key_values: env
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            ..Default::default()
        };
        envoy_types::util::pack_any(TypedExtensionConfig {
            name: "extensions.istio.io/wasmplugin/default.p".into(),
            typed_config: Some(envoy_types::util::pack_any(Wasm {
                config: Some(config),
            })),
        })
    }

    /// What `localize` made of a resource: the local file and the VM's
    /// environment, or the stand-in's RBAC stat prefix.
    fn outcome(any: &Any) -> Result<(String, Vec<(String, String)>), String> {
        let ext = TypedExtensionConfig::decode(any.value.as_slice()).unwrap();
        assert_eq!(ext.name, "extensions.istio.io/wasmplugin/default.p");
        let typed = ext.typed_config.unwrap();
        if typed.type_url != WASM_HTTP_TYPE {
            use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac;
            return Err(Rbac::decode(typed.value.as_slice())
                .unwrap()
                .rules_stat_prefix);
        }
        let config = Wasm::decode(typed.value.as_slice())
            .unwrap()
            .config
            .unwrap();
        let Some(plugin_config::Vm::VmConfig(vm)) = config.vm else {
            panic!("vm")
        };
        let Some(async_data_source::Specifier::Local(DataSource {
            specifier: Some(data_source::Specifier::Filename(file)),
            ..
        })) = vm.code.unwrap().specifier
        else {
            panic!("a local file")
        };
        let env = vm
            .environment_variables
            .map(|e| e.key_values.into_iter().collect())
            .unwrap_or_default();
        Ok((file, env))
    }

    #[tokio::test]
    async fn modules_are_fetched_once_unless_always_and_checked() {
        let (url, hits) = serve().await;
        let dir = tempfile::tempdir().unwrap();
        let cache = ModuleCache::new(dir.path().to_owned());
        let digest = hex(ring::digest::digest(&ring::digest::SHA256, MODULE).as_ref());
        let env = [
            ("ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION", "v1"),
            ("MODE", "fast"),
        ];
        let (file, vm_env) = outcome(
            &localize(
                resource(&url, &digest, &env, FailurePolicy::FailClosed),
                &cache,
            )
            .await,
        )
        .unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), MODULE);
        assert!(file.ends_with(&format!("{digest}.wasm")), "{file}");
        // The agent's own variables are not Envoy's.
        assert_eq!(vm_env, [("MODE".to_owned(), "fast".to_owned())]);
        // Again (no checksum this time is another key; the same one is cached).
        let again = localize(
            resource(&url, &digest, &env, FailurePolicy::FailClosed),
            &cache,
        )
        .await;
        assert_eq!(outcome(&again).unwrap().0, file);
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        // `Always`: fetched again when the plugin's version changed only.
        let always = |version| {
            [
                ("ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION", version),
                ("ISTIO_META_WASM_IMAGE_PULL_POLICY", "Always"),
            ]
        };
        let r = localize(
            resource(&url, &digest, &always("v1"), FailurePolicy::FailClosed),
            &cache,
        )
        .await;
        assert_eq!(outcome(&r).unwrap().1, []);
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        localize(
            resource(&url, &digest, &always("v2"), FailurePolicy::FailClosed),
            &cache,
        )
        .await;
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        // A module replaced by another (`Always`, a new version): the old
        // file goes.
        let changing = url.replace("m.wasm", "changing.wasm");
        let first = localize(
            resource(
                &changing,
                NO_CHECKSUM,
                &always("v1"),
                FailurePolicy::FailClosed,
            ),
            &cache,
        )
        .await;
        let first = outcome(&first).unwrap().0;
        let second = localize(
            resource(
                &changing,
                NO_CHECKSUM,
                &always("v2"),
                FailurePolicy::FailClosed,
            ),
            &cache,
        )
        .await;
        let second = outcome(&second).unwrap().0;
        assert_ne!(first, second);
        assert!(
            !std::path::Path::new(&first).exists(),
            "{first} left behind"
        );
        assert!(std::path::Path::new(&second).exists());
        // Without a checksum (Istio's "nil"), whatever is served.
        let r = localize(
            resource(&url, NO_CHECKSUM, &[], FailurePolicy::FailClosed),
            &cache,
        )
        .await;
        assert_eq!(outcome(&r).unwrap().0, file);
        // A wrong checksum, a missing module, a scheme not fetched: stand-ins.
        let wrong = "1".repeat(64);
        let r = localize(
            resource(&url, &wrong, &[], FailurePolicy::FailClosed),
            &cache,
        )
        .await;
        assert_eq!(outcome(&r), Err("wasm-default-deny".into()));
        let r = localize(resource(&url, &wrong, &[], FailurePolicy::FailOpen), &cache).await;
        assert_eq!(outcome(&r), Err("wasm-default-allow".into()));
        let missing = url.replace("m.wasm", "none.wasm");
        let r = localize(
            resource(&missing, NO_CHECKSUM, &[], FailurePolicy::FailClosed),
            &cache,
        )
        .await;
        assert_eq!(outcome(&r), Err("wasm-default-deny".into()));
        let r = localize(
            resource(
                "ftp://registry.example/p",
                NO_CHECKSUM,
                &[],
                FailurePolicy::FailReload,
            ),
            &cache,
        )
        .await;
        assert_eq!(outcome(&r), Err("wasm-default-deny".into()));
        // Anything else passes as it is.
        let other = envoy_types::util::pack_any(TypedExtensionConfig {
            name: "x".into(),
            typed_config: Some(envoy_types::util::pack_any(Router::default())),
        });
        assert_eq!(localize(other.clone(), &cache).await, other);
    }
}
