//! WasmPlugins: real Envoys run a real Proxy-Wasm plugin
//! ([`e2e::wasm::header_plugin`]) that the daemon configures over ECDS,
//! where and in the phase the plugin asks for; remote modules are fetched
//! by the agent's xDS proxy, and a module that cannot be had fails as the
//! plugin's `failStrategy` says.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use e2e::wasm::{PLUGIN_HEADER, header_plugin, sha256_hex};
use e2e::{GATEWAY, Mesh, SIDECAR, SIDECAR_LABELS, http_request};

const REVIEWS: &str = "http://10.96.0.13:9080";

/// The WasmPlugin `headers` of `namespace` with the module at `url` and
/// the rest of its spec (YAML lines, indented two spaces).
fn plugin(namespace: &str, url: &str, rest: &str) -> String {
    format!(
        "apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: headers, namespace: {namespace}}}
spec:
  url: {url}
{rest}"
    )
}

/// (status, the plugin's header as the backend got it, as the client got it).
fn call(url: &str, host: &str) -> (u16, String, Option<String>) {
    let r = http_request(&format!("{url}/header/{PLUGIN_HEADER}"), &[("host", host)]).unwrap();
    (r.status, r.body, r.headers.get(PLUGIN_HEADER).cloned())
}

#[test]
fn a_wasm_plugin_runs_in_the_gateway_where_and_when_it_asks() {
    let mesh = Mesh::start(false, &[]);
    mesh.cfg
        .write("gateway-api.yaml", e2e::BOOKINFO_GATEWAY_API);
    mesh.wait_loaded(2);
    let gw = mesh.proxy(GATEWAY, &e2e::BOOKINFO_GATEWAY_API_LABELS, 15000);
    let get = || call("http://127.0.0.1:8080", "bookinfo.example.com");
    assert_eq!(get(), (200, "(none)".into(), None));
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("headers.wasm");
    std::fs::write(&module, header_plugin()).unwrap();
    let url = format!("file://{}", module.display());
    let target =
        "  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: bookinfo-gw}]
  pluginConfig: {greeting: hi}
";
    // The plugin on the gateway, with `rest` (spec lines) added.
    let set = |rest: &str| {
        mesh.apply(
            &[&gw],
            "wasm.yaml",
            &plugin("istio-system", &url, &format!("{target}{rest}")),
        );
    };
    // On the gateway's requests and responses, with its configuration.
    set("");
    let config = r#"{"greeting":"hi"}"#;
    assert_eq!(get(), (200, config.into(), Some(config.into())));
    // `match`: a gateway's listeners are the client side, and its port 8080.
    set("  match: [{mode: SERVER}]\n");
    assert_eq!(get(), (200, "(none)".into(), None));
    set("  match: [{mode: CLIENT, ports: [{number: 9999}]}]\n");
    assert_eq!(get(), (200, "(none)".into(), None));
    set("  match: [{mode: CLIENT, ports: [{number: 9999}]}, {ports: [{number: 8080}]}]\n");
    assert_eq!(get().1, config);
    // `phase`: a policy allowing only requests carrying the plugin's
    // header. Run after authorization (the default), the plugin has not
    // added it yet when the policy looks: denied.
    mesh.cfg.write(
        "authz.yaml",
        &format!(
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: wasm-header, namespace: istio-system}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: bookinfo-gw}}]
  rules: [{{when: [{{key: 'request.headers[{PLUGIN_HEADER}]', values: ['*']}}]}}]
"
        ),
    );
    set("");
    assert_eq!(get().0, 403);
    // In the AUTHN phase it runs before the policy: allowed.
    set("  phase: AUTHN\n");
    assert_eq!(get(), (200, config.into(), Some(config.into())));
    // Gone with its WasmPlugin.
    mesh.cfg.remove("authz.yaml");
    mesh.apply(&[&gw], "wasm.yaml", "");
    assert_eq!(get(), (200, "(none)".into(), None));
    assert_eq!(gw.rejected(), 0);
}

#[test]
fn remote_modules_are_fetched_by_the_agent_and_fail_as_the_plugin_says() {
    let mesh = Mesh::start(true, &[]);
    // The module, served over HTTP on loopback.
    let module = header_plugin();
    let digest = sha256_hex(&module);
    let addr = mesh.block_on(async move {
        let app = axum::Router::new().route(
            "/headers.wasm",
            axum::routing::get(move || {
                let module = module.clone();
                async move { module }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    });
    let agent = through_agent(&mesh);
    let (envoy, dir) = (&agent.envoy, agent.dir.path());
    let set = |text: &str| mesh.apply(&[envoy], "wasm.yaml", text);
    let get = || call(REVIEWS, "reviews");
    assert_eq!(get(), (200, "(none)".into(), None));
    let url = format!("http://{addr}/headers.wasm");
    let with = |rest: &str| {
        plugin(
            "default",
            &url,
            &format!(
                "  selector: {{matchLabels: {{app: productpage}}}}
  pluginConfig: {{greeting: remote}}
  match: [{{mode: CLIENT}}]
{rest}"
            ),
        )
    };
    let config = r#"{"greeting":"remote"}"#;
    set(&with(&format!("  sha256: {digest}\n")));
    assert_eq!(get(), (200, config.into(), Some(config.into())));
    let fetched: Vec<_> = walk(&dir.join("wasm"));
    assert_eq!(fetched.len(), 1, "{fetched:?}");
    assert!(
        fetched[0].ends_with(format!("{digest}.wasm")),
        "{fetched:?}"
    );
    // A module that is not the one the checksum names is not run: the
    // plugin fails closed (by default), every request denied.
    let wrong = "0".repeat(64);
    set(&with(&format!("  sha256: {wrong}\n")));
    let (status, _, header) = get();
    assert_eq!((status, header), (403, None));
    // Failing open, the requests go through without it.
    set(&with(&format!(
        "  sha256: {wrong}\n  failStrategy: FAIL_OPEN\n"
    )));
    assert_eq!(get(), (200, "(none)".into(), None));
    // A module that is not there fails too.
    set(&plugin(
        "default",
        &format!("http://{addr}/missing.wasm"),
        "  selector: {matchLabels: {app: productpage}}\n",
    ));
    assert_eq!(get().0, 403);
    // And without a checksum, the module as served.
    set(&with(""));
    assert_eq!(get(), (200, config.into(), Some(config.into())));
    // A network plugin runs before the HTTP connection manager: when its
    // module cannot be had, the connections are closed (failing closed)
    // or let through (failing open).
    // (Another name: Envoy takes one type of filter per ECDS name.)
    let network = |url: &str, rest: &str| {
        plugin(
            "default",
            url,
            &format!("  selector: {{matchLabels: {{app: productpage}}}}\n  type: NETWORK\n{rest}"),
        )
        .replace("name: headers", "name: tcp")
    };
    let missing = format!("http://{addr}/missing.wasm");
    set(&network(&missing, ""));
    let refused = http_request(&format!("{REVIEWS}/"), &[("host", "reviews")]);
    assert!(refused.is_err(), "{:?}", refused.map(|r| r.status));
    set(&network(&missing, "  failStrategy: FAIL_OPEN\n"));
    assert_eq!(get(), (200, "(none)".into(), None));
    // The module as a network filter (it has no network callbacks: the
    // bytes pass as they are).
    set(&network(&url, ""));
    assert_eq!(get(), (200, "(none)".into(), None));
    assert_eq!(envoy.rejected(), 0);
}

#[test]
fn envoy_filters_add_extension_configs_served_over_ecds() {
    let mesh = Mesh::start(true, &[]);
    let envoy = mesh.sidecar();
    let lua = |value: &str| {
        format!(
            "apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: ecds, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: productpage}}}}
  configPatches:
  - applyTo: EXTENSION_CONFIG
    patch:
      operation: ADD
      value:
        name: my-lua
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
          default_source_code: {{inline_string: 'function envoy_on_response(h) h:headers():add(\"x-ecds\", \"{value}\") end'}}
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_OUTBOUND
      listener: {{filterChain: {{filter: {{name: envoy.filters.network.http_connection_manager, subFilter: {{name: envoy.filters.http.router}}}}}}}}
    patch:
      operation: INSERT_BEFORE
      value:
        name: my-lua
        config_discovery:
          config_source: {{ads: {{}}, initial_fetch_timeout: 0s}}
          type_urls: [type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua]
"
        )
    };
    let get = || {
        http_request(&format!("{REVIEWS}/"), &[("host", "reviews")])
            .unwrap()
            .headers
            .get("x-ecds")
            .cloned()
    };
    assert_eq!(get(), None);
    mesh.apply(&[&envoy], "ecds.yaml", &lua("one"));
    assert_eq!(get().as_deref(), Some("one"));
    // A new version of the extension config alone: the listeners stay.
    let listeners = envoy.stat("listener_manager.listener_create_success");
    mesh.apply(&[&envoy], "ecds.yaml", &lua("two"));
    assert_eq!(get().as_deref(), Some("two"));
    assert_eq!(
        envoy.stat("listener_manager.listener_create_success"),
        listeners
    );
    assert_eq!(envoy.rejected(), 0);
}

/// productpage's sidecar getting its xDS through an agent's xDS proxy,
/// which keeps the modules it fetches in `dir/wasm`; stopped on drop.
struct ThroughAgent {
    envoy: e2e::Envoy,
    dir: tempfile::TempDir,
    token: tokio_util::sync::CancellationToken,
}

impl Drop for ThroughAgent {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

fn through_agent(mesh: &Mesh) -> ThroughAgent {
    // Envoy runs as the proxy user: it reaches the socket and reads the
    // modules the agent fetched.
    let dir = e2e::socket_dir();
    let token = tokio_util::sync::CancellationToken::new();
    mesh.agent_xds_proxy(dir.path(), None, &token);
    let envoy = mesh.proxy(SIDECAR, &SIDECAR_LABELS, 15000);
    ThroughAgent { envoy, dir, token }
}

#[test]
fn oci_images_are_pulled_by_the_agent() {
    let mesh = Mesh::start(true, &[]);
    let registry = mesh.block_on(e2e::wasm::Registry::start());
    let module = header_plugin();
    let artifact = registry.push_artifact("plugins/headers", "v1", &module);
    let index = registry.push_image("plugins/headers-image", "v1", &module);
    registry.push_artifact("private/headers", "v1", &module);
    let agent = through_agent(&mesh);
    let envoy = &agent.envoy;
    let set = |text: &str| mesh.apply(&[envoy], "wasm.yaml", text);
    let get = || call(REVIEWS, "reviews");
    let addr = registry.addr;
    let with = |url: &str, rest: &str| {
        plugin(
            "default",
            url,
            &format!(
                "  selector: {{matchLabels: {{app: productpage}}}}
  pluginConfig: {{greeting: oci}}
{rest}"
            ),
        )
    };
    let config = r#"{"greeting":"oci"}"#;
    // No scheme: an OCI image, its checksum the manifest's digest.
    let digest = artifact.trim_start_matches("sha256:");
    set(&with(
        &format!("{addr}/plugins/headers:v1"),
        &format!("  sha256: {digest}\n"),
    ));
    assert_eq!(get(), (200, config.into(), Some(config.into())));
    // Another image's digest: not run, the plugin fails closed.
    let other = index.trim_start_matches("sha256:");
    set(&with(
        &format!("oci://{addr}/plugins/headers:v1"),
        &format!("  sha256: {other}\n"),
    ));
    assert_eq!(get().0, 403);
    // An image (behind an index) with the module as `plugin.wasm` in a layer.
    set(&with(&format!("oci://{addr}/plugins/headers-image:v1"), ""));
    assert_eq!(get(), (200, config.into(), Some(config.into())));
    // Pinned by digest; a tag that is not there fails.
    set(&with(
        &format!("oci://{addr}/plugins/headers@{artifact}"),
        "",
    ));
    assert_eq!(get(), (200, config.into(), Some(config.into())));
    set(&with(&format!("oci://{addr}/plugins/headers:v2"), ""));
    assert_eq!(get().0, 403);
    // A private repository: refused anonymously, pulled with the login of
    // the plugin's `imagePullSecret`.
    let private = format!("oci://{addr}/private/headers:v1");
    set(&with(&private, ""));
    assert_eq!(get().0, 403);
    let login = e2e::wasm::docker_config(addr);
    mesh.cfg.write(
        "pull-secret.yaml",
        &format!(
            "apiVersion: v1
kind: Secret
metadata: {{name: registry-login, namespace: default}}
type: kubernetes.io/dockerconfigjson
stringData: {{.dockerconfigjson: '{login}'}}
"
        ),
    );
    set(&with(&private, "  imagePullSecret: registry-login\n"));
    assert_eq!(get(), (200, config.into(), Some(config.into())));
    // The daemon's config dump shows the plugin, not the login.
    let (status, dump) = e2e::http_get(
        &format!(
            "http://{}/debug/config_dump?proxyID=productpage-v1.default",
            mesh.daemon.monitoring_addr.unwrap()
        ),
        &[],
    )
    .unwrap();
    assert_eq!(status, 200, "{dump}");
    assert!(dump.contains("private/headers:v1"), "{dump}");
    assert!(dump.contains("(redacted)"), "{dump}");
    assert!(!dump.contains("puller"), "{dump}");
    assert_eq!(envoy.rejected(), 0);
}

/// Every file below `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
