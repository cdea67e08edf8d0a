//! `istiod`: the daemon, and `istiod bootstrap` for proxies.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use istiod::bootstrap::{BootstrapOptions, bootstrap};
use istiod::push::DebounceConfig;
use istiod::sources::kube::KubeSource;
use istiod::{Daemon, Options, Source};

/// A Rust istiod: Istio config in, Envoy xDS out.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Folder of Kubernetes/Istio YAML to serve and watch (default: the embedded Bookinfo example).
    #[arg(long, env = "ISTIOD_CONFIG_DIR", conflicts_with_all = ["kubernetes", "kubeconfig"])]
    config_dir: Option<PathBuf>,
    /// Watch the Kubernetes API (in cluster: the pod's service account; out
    /// of cluster: `KUBECONFIG` or ~/.kube/config).
    #[arg(long, env = "ISTIOD_KUBERNETES")]
    kubernetes: bool,
    /// Watch the Kubernetes API of this kubeconfig's current context (implies `--kubernetes`).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// With the Kubernetes API: the leader analyses the config (as
    /// `istioctl analyze`) and writes each Istio object's messages to its
    /// `status.validationMessages` (Istio's `PILOT_ENABLE_ANALYSIS`).
    #[arg(long, env = "PILOT_ENABLE_ANALYSIS")]
    enable_analysis: bool,
    /// Run the CA (and the TLS port) with its root in this folder: Istio's
    /// `cacerts` files if present, else a self-signed root created there.
    #[arg(long, env = "ISTIOD_CA_DIR")]
    ca_dir: Option<PathBuf>,
    /// SPIFFE trust domain of the identities the CA issues (Istio's mesh `trustDomain`).
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// PEM public key(s) of the service-account token issuer, to verify
    /// workloads' tokens (audience `istio-ca`) without an API server.
    #[arg(long, requires = "ca_dir")]
    token_issuer_key: Option<PathBuf>,
    /// TLS port for the CA API and xDS (Istio's 15012); with `--ca-dir`.
    #[arg(long, default_value = "127.0.0.1:15012")]
    secure_addr: SocketAddr,
    /// More names (DNS names or IPs, comma-separated) in the daemon's serving
    /// certificate, as Istio's `ISTIOD_CUSTOM_HOST`.
    #[arg(long, env = "ISTIOD_CUSTOM_HOST", value_delimiter = ',')]
    custom_host: Vec<String>,
    /// Serve the admission webhooks (`/inject`, `/validate`) over TLS here
    /// (Istio's 15017); needs `--ca-dir` (the certificate comes from the CA).
    #[arg(long, requires = "ca_dir")]
    webhook_addr: Option<SocketAddr>,
    /// The injector's values (the istio-discovery chart's `values.yaml`,
    /// or the `values` of the `istio-sidecar-injector` ConfigMap); default:
    /// the ones this project ships (`webhook/src/values.yaml`).
    #[arg(long, env = "INJECTION_VALUES")]
    injection_values: Option<PathBuf>,
    /// Istio's injection policy: inject unless a pod opts out (`enabled`),
    /// or only pods that opt in (`disabled`).
    #[arg(long, default_value = "enabled", value_parser = ["enabled", "disabled"])]
    injection_policy: String,
    /// The platform (Istio's `PLATFORM`): `openshift` runs injected proxies
    /// with the uid and gid of their namespace's SCC ranges.
    #[arg(long, env = "PLATFORM", default_value = "", value_parser = ["", "openshift"])]
    platform: String,
    /// The daemon's namespace, where the mesh ConfigMap `istio` is read (Istio `POD_NAMESPACE`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "istio-system")]
    namespace: String,
    /// ADS (xDS) listen address; Istio's plaintext port is 15010.
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds_addr: SocketAddr,
    /// Monitoring listen address (`/metrics`, `/ready`, `/debug/*`); Istio's is 15014.
    #[arg(long, default_value = "127.0.0.1:15014")]
    monitoring_addr: SocketAddr,
    /// Quiet period before a change is pushed, milliseconds (Istio `PILOT_DEBOUNCE_AFTER`).
    #[arg(long, env = "PILOT_DEBOUNCE_AFTER_MS", default_value_t = 100)]
    debounce_after_ms: u64,
    /// Longest delay of a push after the first change, milliseconds (Istio `PILOT_DEBOUNCE_MAX`).
    #[arg(long, env = "PILOT_DEBOUNCE_MAX_MS", default_value_t = 10_000)]
    debounce_max_ms: u64,
    /// Most proxies generated and pushed to at once (Istio `PILOT_PUSH_THROTTLE`).
    #[arg(long, env = "PILOT_PUSH_THROTTLE", default_value_t = 100)]
    push_throttle: usize,
    /// Seconds an auto-registered WorkloadEntry outlives its proxy's last
    /// connection, at most a year (Istio `PILOT_WORKLOAD_ENTRY_GRACE_PERIOD`).
    #[arg(long, env = "PILOT_WORKLOAD_ENTRY_GRACE_PERIOD_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=YEAR_SECS))]
    workload_entry_grace_period_secs: u64,
    /// Seconds without a frame from a proxy before an HTTP/2 PING checks
    /// it is alive; 0 sends none; at most a year (istiod's
    /// `--keepaliveInterval`).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=YEAR_SECS))]
    keepalive_interval_secs: u64,
    /// Seconds a PING's ACK is awaited before the connection is closed,
    /// 1 to a year (istiod's `--keepaliveTimeout`).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=YEAR_SECS))]
    keepalive_timeout_secs: u64,
    /// Seconds after which a proxy's connection is closed (a GOAWAY, its
    /// stream ended 10 s later) so that it reconnects, maybe to another
    /// replica; 0: never; at most a year (istiod's
    /// `--keepaliveMaxServerConnectionAge`).
    #[arg(long, default_value_t = 1800, value_parser = clap::value_parser!(u64).range(0..=YEAR_SECS))]
    keepalive_max_server_connection_age_secs: u64,
    #[command(subcommand)]
    command: Option<Command>,
}

/// The longest keepalive time the flags take (a year, in seconds): far
/// enough to mean "practically never", near enough that a deadline
/// computed from it cannot overflow.
const YEAR_SECS: u64 = 365 * 24 * 3600;

/// `istiod agent`'s flags.
#[derive(clap::Args, Debug)]
struct AgentArgs {
    /// The CA's TLS address (Istio's `CA_ADDR`).
    #[arg(
        long,
        env = "CA_ADDR",
        default_value = "https://istiod.istio-system.svc:15012"
    )]
    ca_addr: String,
    /// The root certificate the CA's serving certificate chains to (PEM file).
    #[arg(long, default_value = "./var/run/secrets/istio/root-cert.pem")]
    ca_root: PathBuf,
    /// The name the CA's certificate is checked for.
    #[arg(long, default_value = "istiod.istio-system.svc")]
    ca_server_name: String,
    /// The service-account token (audience `istio-ca`), re-read for every request.
    #[arg(long, default_value = "./var/run/secrets/tokens/istio-token")]
    token_file: PathBuf,
    /// The workload's namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: String,
    /// The workload's service account.
    #[arg(long, env = "SERVICE_ACCOUNT")]
    service_account: String,
    /// The trust domain.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Requested certificate lifetime, seconds (Istio's default: 24 h).
    #[arg(long, default_value_t = 86_400)]
    ttl_secs: u64,
    /// Where SDS is served.
    #[arg(long, default_value = istiod::bootstrap::ISTIO_SDS_SOCKET)]
    sds_socket: PathBuf,
    /// Also run the sidecar: this Envoy binary, on a bootstrap written to
    /// `--bootstrap-out` (what `pilot-agent proxy sidecar` does). The
    /// agent exits with Envoy.
    #[arg(long, env = "ENVOY_BIN")]
    envoy: Option<PathBuf>,
    /// Where the bootstrap is written.
    #[arg(long, default_value = "./etc/istio/proxy/envoy-rev.json")]
    bootstrap_out: PathBuf,
    /// The daemon's xDS address for Envoy, `HOST:PORT` (Istio's `discoveryAddress`).
    #[arg(
        long,
        env = "DISCOVERY_ADDRESS",
        default_value = "istiod.istio-system.svc:15010"
    )]
    xds_addr: String,
    /// The pod's IP (node ID), from the downward API.
    #[arg(long, env = "INSTANCE_IP", default_value = "")]
    instance_ip: String,
    /// The pod's name (node ID), from the downward API.
    #[arg(long, env = "POD_NAME", default_value = "")]
    pod_name: String,
    /// The pod's labels, a downward-API file (`key="value"` lines).
    #[arg(long, default_value = "./etc/istio/pod/labels")]
    labels_file: PathBuf,
    /// Envoy's admin port (on 127.0.0.1).
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
    /// Delta xDS (Istio's default) instead of State of the World.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    delta: bool,
    /// The workload's network (node metadata `NETWORK`), as the injector
    /// sets it for a multi-network mesh.
    #[arg(long, env = "ISTIO_META_NETWORK", default_value = "")]
    network: String,
    /// The workload's readiness probe (YAML or JSON, a WorkloadGroup's
    /// `probe`; Istio's `defaultConfig.readinessProbe`, as `istioctl x
    /// workload entry configure` writes it for a VM). When set, the agent
    /// checks the application and reports its health to the daemon through
    /// its xDS proxy, which Envoy then connects to on `--xds-socket`.
    #[arg(long, env = "ISTIO_READINESS_PROBE")]
    readiness_probe: Option<String>,
    /// Where the agent's xDS proxy is served to Envoy (with `--envoy` or
    /// `--readiness-probe`; Envoy's xDS then goes through the agent, as in
    /// Istio, which fetches WasmPlugins' modules for it).
    #[arg(long, default_value = istiod::xds_proxy::ISTIO_XDS_SOCKET)]
    xds_socket: PathBuf,
    /// Where the agent keeps the WasmPlugin modules it fetches.
    #[arg(long, env = "WASM_CACHE_DIR", default_value = istiod::wasm::DEFAULT_CACHE_DIR)]
    wasm_cache_dir: PathBuf,
    /// The DNS proxy (Istio's `ISTIO_META_DNS_CAPTURE`): the agent asks
    /// the daemon for the name table through its xDS proxy and answers the
    /// workload's queries for the mesh's names on `--dns-address`
    /// (`istio-init --redirect-dns` sends port 53 there).
    #[arg(long, env = "ISTIO_META_DNS_CAPTURE", default_value_t = false, action = clap::ArgAction::Set)]
    dns_capture: bool,
    /// Where the DNS proxy listens (UDP and TCP).
    #[arg(long, default_value = istiod::dns::DNS_ADDRESS)]
    dns_address: std::net::SocketAddr,
    /// The resolver other names go to; default: the first `nameserver` of
    /// `/etc/resolv.conf`.
    #[arg(long)]
    dns_upstream: Option<std::net::SocketAddr>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the node agent: get this workload's certificate from the CA and
    /// serve it (and the root) to Envoy over SDS on a Unix socket.
    Agent(Box<AgentArgs>),
    /// Inject the sidecar into the workloads of a manifest (`istioctl
    /// kube-inject`): YAML in (a file, or `-` for stdin), YAML out. Uses the
    /// same injection as the `/inject` webhook.
    KubeInject {
        /// The manifest (`-`: standard input).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// The injector's values (default: the shipped ones).
        #[arg(long, env = "INJECTION_VALUES")]
        injection_values: Option<PathBuf>,
        /// The mesh's trust domain.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
    },
    /// Analyse Istio config in YAML files and folders (`istioctl analyze`):
    /// cross-object checks reported as Istio's IST messages. Exit code 79
    /// when a message reaches `--failure-threshold`.
    Analyze {
        /// Files and folders (read recursively); `-` is standard input.
        #[arg(required_unless_present_any = ["list_analyzers", "kubernetes", "kubeconfig"])]
        paths: Vec<PathBuf>,
        /// Namespace of objects written without one.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// A MeshConfig YAML file (istioctl's `--meshConfigFile`).
        #[arg(long = "mesh-config", alias = "meshConfigFile")]
        mesh_config: Option<PathBuf>,
        /// Print messages at this level and above: Info, Warning, Error.
        #[arg(long, default_value = "Info", value_parser = analysis::Level::parse)]
        output_threshold: analysis::Level,
        /// Exit with 79 on messages at this level and above.
        #[arg(long, default_value = "Error", value_parser = analysis::Level::parse)]
        failure_threshold: analysis::Level,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "log")]
        output: istiod::analyze::Format,
        /// Leave out messages: `CODE=Kind namespace/name`, `*` matching any
        /// text (repeatable), e.g. `IST0134=ServiceEntry default/*`.
        #[arg(short = 'S', long)]
        suppress: Vec<String>,
        /// List the analyzers and exit.
        #[arg(short = 'L', long)]
        list_analyzers: bool,
        /// Analyse the cluster (in cluster: the pod's service account; out
        /// of cluster: `KUBECONFIG` or ~/.kube/config), the files given
        /// applied over its objects.
        #[arg(short = 'k', long)]
        kubernetes: bool,
        /// Analyse the cluster of this kubeconfig's current context (implies
        /// `--kubernetes`).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// With a cluster: report on every namespace, not only `--namespace`.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Print the CustomResourceDefinitions of the Istio kinds this daemon reads
    /// (YAML, as committed in `manifests/crds.yaml`).
    Crds,
    /// Print an Envoy bootstrap (JSON) that connects a proxy to this daemon.
    Bootstrap {
        /// Istio node ID, e.g. `sidecar~10.96.1.5~productpage-v1.default~default.svc.cluster.local`.
        #[arg(long)]
        node_id: String,
        /// The daemon's xDS address, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:15010")]
        xds_addr: String,
        /// Envoy admin port on 127.0.0.1.
        #[arg(long, default_value_t = 15000)]
        admin_port: u16,
        /// Workload label KEY=VALUE (repeatable), e.g. `istio=ingressgateway`.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// The proxy's locality, `region/zone/subzone` (for locality load balancing).
        #[arg(long, default_value = "")]
        locality: String,
        /// The proxy's network (node metadata `NETWORK`), in a multi-network mesh.
        #[arg(long, default_value = "")]
        network: String,
        /// Use Delta (incremental) xDS, as Istio's sidecars do, instead of State of the World.
        #[arg(long)]
        delta: bool,
        /// The node agent's SDS socket (workload certificates for `ISTIO_MUTUAL`).
        #[arg(long, default_value = istiod::bootstrap::ISTIO_SDS_SOCKET)]
        sds_socket: String,
        /// Further node metadata KEY=VALUE (repeatable), e.g.
        /// `AUTO_REGISTER_GROUP=vms` to register in that WorkloadGroup.
        #[arg(long = "meta", value_parser = parse_label)]
        meta: Vec<(String, String)>,
    },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// EX_USAGE: a bad flag or config.
const EX_USAGE: u8 = 64;

/// jemalloc rather than glibc's malloc: at 1000 services / 2000 proxies it
/// cut the daemon's CPU for a VirtualService push by a third
/// (docs/PERFORMANCE.md). Built to return freed pages within a second
/// (`.cargo/config.toml`).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EX_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Some(Command::Agent(args)) => {
            let AgentArgs {
                ca_addr,
                ca_root,
                ca_server_name,
                token_file,
                namespace,
                service_account,
                trust_domain,
                ttl_secs,
                sds_socket,
                envoy,
                bootstrap_out,
                xds_addr,
                instance_ip,
                pod_name,
                labels_file,
                admin_port,
                delta,
                network,
                readiness_probe,
                xds_socket,
                wasm_cache_dir,
                dns_capture,
                dns_address,
                dns_upstream,
            } = *args;
            let dns_upstream = match (dns_capture, dns_upstream) {
                (false, _) => None,
                (true, Some(a)) => Some(a),
                (true, None) => match std::fs::read_to_string("/etc/resolv.conf")
                    .ok()
                    .as_deref()
                    .and_then(istiod::dns::first_nameserver)
                {
                    Some(a) => Some(a),
                    None => {
                        eprintln!(
                            "istiod agent: --dns-capture: no nameserver in /etc/resolv.conf; give --dns-upstream"
                        );
                        return ExitCode::from(EX_USAGE);
                    }
                },
            };
            let dns_namespace = namespace.clone();
            let prober = match readiness_probe
                .as_deref()
                .map(istiod::health::Prober::parse)
                .transpose()
            {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("istiod agent: --readiness-probe: {e}");
                    return ExitCode::from(EX_USAGE);
                }
            };
            // Envoy's xDS goes through the agent when the agent starts it
            // (or checks the workload's health).
            let daemon_xds = xds_addr.clone();
            let proxied = prober.is_some() || envoy.is_some() || dns_capture;
            let xds_addr = if proxied {
                format!("unix://{}", xds_socket.display())
            } else {
                xds_addr
            };
            let envoy = envoy.map(|binary| istiod::agent::EnvoyOptions {
                binary,
                bootstrap_path: bootstrap_out,
                bootstrap: BootstrapOptions {
                    node_id: format!(
                        "sidecar~{instance_ip}~{pod_name}.{namespace}~{namespace}.svc.cluster.local"
                    ),
                    xds_addr,
                    admin_port,
                    labels: std::fs::read_to_string(&labels_file)
                        .map(|t| istiod::agent::parse_downward_labels(&t))
                        .unwrap_or_default(),
                    locality: String::new(),
                    network,
                    delta,
                    sds_socket: sds_socket.display().to_string(),
                    metadata: {
                        let mut m = istiod::agent::istio_meta(std::env::vars());
                        if dns_capture {
                            // The daemon sends the name table to such proxies.
                            m.insert("DNS_CAPTURE".into(), "true".into());
                        }
                        m
                    },
                    xds_keepalive: Default::default(),
                },
            });
            let run = || -> anyhow::Result<u8> {
                let ca_root_pem = std::fs::read_to_string(&ca_root)
                    .map_err(|e| anyhow::anyhow!("--ca-root {}: {e}", ca_root.display()))?;
                let opts = istiod::agent::AgentOptions {
                    ca_addr,
                    ca_root_pem,
                    ca_server_name,
                    token: istiod::agent::TokenSource::File(token_file),
                    identity: ca::SpiffeId {
                        trust_domain,
                        namespace,
                        service_account,
                    },
                    ttl: std::time::Duration::from_secs(ttl_secs),
                    sds_socket,
                };
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async {
                    let token = tokio_util::sync::CancellationToken::new();
                    let (agent, mut tasks) = istiod::agent::start(opts, token.clone()).await?;
                    // Without checks the sender goes at once: no health reported.
                    let (report, health) = tokio::sync::watch::channel(None);
                    if let Some(prober) = prober {
                        tasks.push(tokio::spawn(prober.run(report, token.clone())));
                    }
                    if proxied {
                        let mut feed = None;
                        if let Some(upstream) = dns_upstream {
                            let (table, tables) =
                                tokio::sync::watch::channel(std::sync::Arc::default());
                            tasks.push(
                                istiod::dns::serve(dns_address, upstream, tables, token.clone())
                                    .await?,
                            );
                            feed = Some(istiod::xds_proxy::DnsFeed {
                                table,
                                namespace: dns_namespace,
                                domain: translator::model::DEFAULT_DOMAIN.to_owned(),
                            });
                        }
                        tasks.push(istiod::xds_proxy::serve(
                            xds_socket,
                            &daemon_xds,
                            health,
                            istiod::wasm::ModuleCache::new(wasm_cache_dir),
                            feed,
                            token.clone(),
                        )?);
                    }
                    let mut child = None;
                    if let Some(envoy) = &envoy {
                        // Envoy starts once there is a certificate to serve it.
                        let mut cert = agent.cert.clone();
                        cert.wait_for(Option::is_some).await?;
                        child = Some(istiod::agent::spawn_envoy(envoy)?);
                    }
                    let code = match child.as_mut() {
                        Some(c) => tokio::select! {
                            status = c.wait() => {
                                let status = status?;
                                tracing::warn!(%status, "Envoy exited");
                                u8::try_from(status.code().unwrap_or(1)).unwrap_or(1)
                            }
                            r = shutdown_signal() => { r?; 0 }
                        },
                        None => {
                            shutdown_signal().await?;
                            0
                        }
                    };
                    if let Some(mut c) = child {
                        let _ = c.kill().await;
                    }
                    token.cancel();
                    for t in tasks {
                        let _ = t.await;
                    }
                    Ok(code)
                })
            };
            match run() {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!("istiod agent: {e:#}");
                    ExitCode::from(EX_USAGE)
                }
            }
        }
        Some(Command::KubeInject {
            file,
            injection_values,
            trust_domain,
        }) => match kube_inject(&file, injection_values.as_deref(), &trust_domain) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("istiod kube-inject: {e:#}");
                ExitCode::from(EX_USAGE)
            }
        },
        Some(Command::Analyze {
            paths,
            namespace,
            mesh_config,
            output_threshold,
            failure_threshold,
            output,
            suppress,
            list_analyzers,
            kubernetes,
            kubeconfig,
            all_namespaces,
        }) => {
            if list_analyzers {
                for a in analysis::ALL {
                    println!("{}: {}", a.name, a.description);
                }
                return ExitCode::SUCCESS;
            }
            let options = istiod::analyze::Options {
                paths,
                namespace,
                mesh_config,
                output_threshold,
                failure_threshold,
                format: output,
                suppress,
                cluster: (kubernetes || kubeconfig.is_some()).then_some(kubeconfig),
                all_namespaces,
            };
            match istiod::analyze::run(&options) {
                Ok(report) => {
                    print!("{}", report.stdout);
                    eprint!("{}", report.stderr);
                    ExitCode::from(report.code)
                }
                Err(e) => {
                    eprintln!("istiod analyze: {e:#}");
                    ExitCode::from(EX_USAGE)
                }
            }
        }
        Some(Command::Crds) => {
            print!("{}", crds::crd::yaml());
            ExitCode::SUCCESS
        }
        Some(Command::Bootstrap {
            node_id,
            xds_addr,
            admin_port,
            labels,
            locality,
            network,
            delta,
            sds_socket,
            meta,
        }) => {
            let opts = BootstrapOptions {
                node_id,
                xds_addr,
                admin_port,
                labels: labels.into_iter().collect::<BTreeMap<_, _>>(),
                locality,
                network,
                delta,
                sds_socket,
                xds_keepalive: Default::default(),
                metadata: meta.into_iter().collect(),
            };
            match bootstrap(&opts) {
                Ok(json) => {
                    println!("{json:#}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("istiod bootstrap: {e}");
                    ExitCode::from(EX_USAGE)
                }
            }
        }
        None => {
            let kube = (cli.kubernetes || cli.kubeconfig.is_some()).then(|| {
                (
                    cli.kubeconfig.clone(),
                    cli.namespace.clone(),
                    cli.enable_analysis,
                )
            });
            let webhooks = match webhook_options(&cli) {
                Ok(w) => w,
                Err(e) => {
                    eprintln!("istiod: {e:#}");
                    return ExitCode::from(EX_USAGE);
                }
            };
            let opts = Options {
                // Replaced by the Kubernetes source in `run` when `kube` is set.
                source: match cli.config_dir {
                    Some(dir) => Source::Folder(dir),
                    None => Source::Embedded,
                },
                xds_addr: cli.xds_addr,
                monitoring_addr: Some(cli.monitoring_addr),
                push_throttle: cli.push_throttle.max(1),
                workload_entry_grace: std::time::Duration::from_secs(
                    cli.workload_entry_grace_period_secs,
                ),
                keepalive: {
                    use std::time::Duration;
                    let some = |secs| (secs > 0).then(|| Duration::from_secs(secs));
                    istiod::xds::Keepalive {
                        interval: some(cli.keepalive_interval_secs),
                        timeout: Duration::from_secs(cli.keepalive_timeout_secs),
                        max_connection_age: some(cli.keepalive_max_server_connection_age_secs),
                        ..Default::default()
                    }
                },
                debounce: DebounceConfig {
                    quiet: std::time::Duration::from_millis(cli.debounce_after_ms),
                    max: std::time::Duration::from_millis(cli.debounce_max_ms),
                },
                webhooks,
                ca: cli.ca_dir.map(|dir| istiod::secure::CaOptions {
                    dir,
                    trust_domain: cli.trust_domain.clone(),
                    token_issuer_keys: cli.token_issuer_key.clone(),
                    addr: cli.secure_addr,
                    namespace: cli.namespace.clone(),
                    serving_ttl: ca::DEFAULT_TTL,
                    custom_hosts: cli.custom_host.clone(),
                }),
            };
            match run(opts, kube) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("istiod: {e:#}");
                    ExitCode::from(EX_USAGE)
                }
            }
        }
    }
}

/// The injector's configuration: `path`'s values, else the shipped ones.
fn injection_config(
    path: Option<&std::path::Path>,
    trust_domain: &str,
) -> anyhow::Result<webhook::inject::InjectionConfig> {
    let mut cfg = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("--injection-values {}: {e}", p.display()))?;
            webhook::inject::InjectionConfig::from_chart_values(&text)
                .map_err(|e| anyhow::anyhow!("--injection-values {}: {e}", p.display()))?
        }
        None => webhook::inject::InjectionConfig::defaults(trust_domain)?,
    };
    cfg.mesh["trustDomain"] = serde_json::Value::String(trust_domain.to_owned());
    Ok(cfg)
}

fn webhook_options(cli: &Cli) -> anyhow::Result<Option<istiod::webhooks::WebhookOptions>> {
    let Some(addr) = cli.webhook_addr else {
        return Ok(None);
    };
    Ok(Some(istiod::webhooks::WebhookOptions {
        addr,
        injection: injection_config(cli.injection_values.as_deref(), &cli.trust_domain)?,
        policy_enabled: cli.injection_policy == "enabled",
        openshift: cli.platform == "openshift",
    }))
}

/// `kube-inject`: every document of the manifest injected, as YAML.
fn kube_inject(
    file: &std::path::Path,
    values: Option<&std::path::Path>,
    trust_domain: &str,
) -> anyhow::Result<String> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
    };
    let cfg = injection_config(values, trust_domain)?;
    let mut out = String::new();
    for (i, doc) in crds::document::split_documents(&text)
        .into_iter()
        .enumerate()
    {
        let (_, value) = doc;
        let value = value.map_err(|e| anyhow::anyhow!("document {}: {e}", i + 1))?;
        let injected = webhook::inject::kube_inject(&value, &cfg)
            .map_err(|e| anyhow::anyhow!("document {}: {e}", i + 1))?;
        out.push_str(&serde_yaml_ng::to_string(&injected)?);
        out.push_str("---\n");
    }
    Ok(out)
}

/// SIGTERM (what the kubelet sends) or SIGINT.
async fn shutdown_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}

/// Runs the daemon until SIGTERM or SIGINT. With `kube` (kubeconfig,
/// namespace, whether to write analysis status) the source is the
/// Kubernetes API, whose client config is read here.
fn run(mut opts: Options, kube: Option<(Option<PathBuf>, String, bool)>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        if let Some((kubeconfig, namespace, analysis)) = kube {
            let mut source = KubeSource::infer(kubeconfig.as_deref(), namespace).await?;
            source.analysis_interval =
                analysis.then_some(istiod::analysis_status::DEFAULT_INTERVAL);
            opts.source = Source::Kubernetes(Box::new(source));
        }
        let mut daemon = Daemon::start(opts).await?;
        shutdown_signal().await?;
        tracing::info!("shutting down");
        tokio::time::timeout(std::time::Duration::from_secs(5), daemon.shutdown())
            .await
            .ok();
        Ok(())
    })
}
