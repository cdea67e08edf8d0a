//! The node agent, the certificate half of Istio's `pilot-agent`: it
//! generates the workload's private key locally (it never leaves the pod),
//! gets a certificate for the workload's SPIFFE ID from the CA
//! (`IstioCertificateService/CreateCertificate` over TLS, authenticated by
//! the service-account token), re-issues at half of the lifetime, and
//! serves both to Envoy over SDS on a Unix socket: `default` (certificate
//! chain and key) and `ROOTCA` (the mesh root), as `ISTIO_MUTUAL` clusters
//! ask for them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use ca::SpiffeId;
use ca::service::pb::IstioCertificateRequest;
use ca::service::pb::istio_certificate_service_client::IstioCertificateServiceClient;
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};
use translator::policy::{ROOT_CA, WORKLOAD_CERT};

/// The type URL of SDS resources.
pub const SECRET_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// Where the service-account token comes from.
#[derive(Clone, Debug)]
pub enum TokenSource {
    /// A file, re-read for every request (projected tokens rotate), as
    /// `/var/run/secrets/tokens/istio-token` in Istio's injected pods.
    File(PathBuf),
    /// A fixed token.
    Static(String),
}

impl TokenSource {
    fn read(&self) -> anyhow::Result<String> {
        match self {
            TokenSource::File(p) => Ok(std::fs::read_to_string(p)
                .with_context(|| format!("token file {}", p.display()))?
                .trim()
                .to_owned()),
            TokenSource::Static(t) => Ok(t.clone()),
        }
    }
}

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// The CA's TLS address, `https://HOST:PORT` (Istio's `CA_ADDR`, port 15012).
    pub ca_addr: String,
    /// The root that the CA's serving certificate chains to (PEM).
    pub ca_root_pem: String,
    /// The name the CA's certificate is checked for (`istiod.istio-system.svc`).
    pub ca_server_name: String,
    /// The token that authenticates the workload.
    pub token: TokenSource,
    /// The identity to ask for.
    pub identity: SpiffeId,
    /// Requested certificate lifetime.
    pub ttl: Duration,
    /// Where SDS is served (a Unix socket path, created).
    pub sds_socket: PathBuf,
}

/// The workload's current certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadCert {
    /// Leaf and intermediates, PEM.
    pub chain_pem: String,
    /// The private key, PEM (generated here, never sent anywhere but Envoy).
    pub key_pem: String,
    /// The mesh root, PEM.
    pub root_pem: String,
    /// When the leaf expires.
    pub not_after: SystemTime,
    /// Counts issuances, from 1: the SDS version.
    pub version: u64,
}

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    /// The current certificate (`None` until the first is issued).
    pub cert: watch::Receiver<Option<Arc<WorkloadCert>>>,
}

/// Starts the agent: the certificate loop and the SDS server, until `token`
/// is cancelled.
///
/// # Errors
/// The SDS socket cannot be created.
pub async fn start(
    opts: AgentOptions,
    token: CancellationToken,
) -> anyhow::Result<(Agent, Vec<JoinHandle<()>>)> {
    let (tx, rx) = watch::channel(None);
    if let Some(dir) = opts.sds_socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&opts.sds_socket);
    let listener = tokio::net::UnixListener::bind(&opts.sds_socket)
        .with_context(|| format!("SDS socket {}", opts.sds_socket.display()))?;
    let mut tasks = Vec::new();
    let sds = SdsServer { cert: rx.clone() };
    let stop = token.clone();
    tasks.push(tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(SecretDiscoveryServiceServer::new(sds))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                stop.cancelled_owned(),
            )
            .await;
        if let Err(e) = served {
            warn!(error = %e, "SDS server failed");
        }
    }));
    let stop = token.clone();
    tasks.push(tokio::spawn(async move {
        let mut version = 0;
        let mut retry = Duration::from_millis(200);
        loop {
            let wait = match fetch(&opts).await {
                Ok(mut cert) => {
                    version += 1;
                    cert.version = version;
                    let left = cert
                        .not_after
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    info!(identity = %opts.identity, version, renew_in = ?left / 2, "workload certificate issued");
                    tx.send_replace(Some(Arc::new(cert)));
                    retry = Duration::from_millis(200);
                    left / 2
                }
                Err(e) => {
                    warn!(identity = %opts.identity, error = %format!("{e:#}"), retry_in = ?retry, "workload certificate not issued");
                    let wait = retry;
                    retry = (retry * 2).min(Duration::from_secs(30));
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => break,
            }
        }
    }));
    Ok((Agent { cert: rx }, tasks))
}

/// One issuance: a fresh key, a CSR for the identity, the CA's answer.
async fn fetch(opts: &AgentOptions) -> anyhow::Result<WorkloadCert> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = vec![rcgen::SanType::URI(opts.identity.to_string().try_into()?)];
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key)?.pem()?;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&opts.ca_root_pem))
        .domain_name(opts.ca_server_name.clone());
    let channel = tonic::transport::Endpoint::from_shared(opts.ca_addr.clone())?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("CA {}", opts.ca_addr))?;
    let mut request = Request::new(IstioCertificateRequest {
        csr,
        validity_duration: i64::try_from(opts.ttl.as_secs()).unwrap_or(i64::MAX),
        metadata: None,
    });
    let bearer = format!("Bearer {}", opts.token.read()?);
    request
        .metadata_mut()
        .insert("authorization", bearer.parse().context("token")?);
    let chain = IstioCertificateServiceClient::new(channel)
        .create_certificate(request)
        .await
        .map_err(|s| anyhow::anyhow!("CA refused: {:?}: {}", s.code(), s.message()))?
        .into_inner()
        .cert_chain;
    let (root, rest) = chain
        .split_last()
        .ok_or_else(|| anyhow::anyhow!("CA answered an empty chain"))?;
    let leaf = rest
        .first()
        .ok_or_else(|| anyhow::anyhow!("CA answered no leaf"))?;
    let der = pem::parse(leaf)?.into_contents();
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow::anyhow!("CA answered an unreadable certificate: {e}"))?;
    let not_after = SystemTime::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0));
    Ok(WorkloadCert {
        chain_pem: rest.concat(),
        key_pem: key.serialize_pem(),
        root_pem: root.clone(),
        not_after,
        version: 0,
    })
}

fn inline(pem: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(pem.as_bytes().to_vec())),
        ..Default::default()
    })
}

/// The SDS resource `name` from `cert`, if it is one the agent serves.
pub fn secret(name: &str, cert: &WorkloadCert) -> Option<Secret> {
    let r#type = match name {
        WORKLOAD_CERT => secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(&cert.chain_pem),
            private_key: inline(&cert.key_pem),
            ..Default::default()
        }),
        ROOT_CA => secret::Type::ValidationContext(CertificateValidationContext {
            trusted_ca: inline(&cert.root_pem),
            ..Default::default()
        }),
        _ => return None,
    };
    Some(Secret {
        name: name.to_owned(),
        r#type: Some(r#type),
    })
}

/// SDS over SotW: each stream gets the secrets it names, now and after
/// every rotation.
#[derive(Clone, Debug)]
struct SdsServer {
    cert: watch::Receiver<Option<Arc<WorkloadCert>>>,
}

fn response(names: &[String], cert: &WorkloadCert, nonce: u64) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: cert.version.to_string(),
        resources: names
            .iter()
            .filter_map(|n| secret(n, cert))
            .map(|s| Any {
                type_url: SECRET_TYPE.into(),
                value: s.encode_to_vec(),
            })
            .collect(),
        type_url: SECRET_TYPE.into(),
        nonce: nonce.to_string(),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for SdsServer {
    type StreamSecretsStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaSecretsStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        let mut requests = request.into_inner();
        let mut cert = self.cert.clone();
        tokio::spawn(async move {
            let mut names: Vec<String> = Vec::new();
            let mut sent: Option<u64> = None;
            let mut nonce = 0u64;
            loop {
                tokio::select! {
                    r = requests.next() => match r {
                        Some(Ok(req)) => {
                            let mut asked = req.resource_names.clone();
                            asked.sort();
                            if asked != names {
                                names = asked;
                                sent = None;
                            }
                        }
                        _ => break,
                    },
                    changed = cert.changed() => if changed.is_err() { break },
                }
                let current = cert.borrow().clone();
                if let Some(current) = current
                    && sent != Some(current.version)
                    && !names.is_empty()
                {
                    nonce += 1;
                    if tx
                        .send(Ok(response(&names, &current, nonce)))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    sent = Some(current.version);
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented(
            "the agent serves SDS over StreamSecrets",
        ))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let current = self.cert.borrow().clone();
        let current = current.ok_or_else(|| Status::unavailable("no workload certificate yet"))?;
        Ok(Response::new(response(
            &request.into_inner().resource_names,
            &current,
            0,
        )))
    }
}

/// The node metadata of `ISTIO_META_<KEY>` environment variables (Istio's
/// agent: each one is metadata `<KEY>`, e.g. `ISTIO_META_AUTO_REGISTER_GROUP`
/// is `AUTO_REGISTER_GROUP`), from `vars` (`std::env::vars()`).
pub fn istio_meta(
    vars: impl IntoIterator<Item = (String, String)>,
) -> std::collections::BTreeMap<String, String> {
    vars.into_iter()
        .filter_map(|(k, v)| {
            let key = k.strip_prefix("ISTIO_META_")?;
            (!key.is_empty()).then(|| (key.to_owned(), v))
        })
        .collect()
}

/// Reads a Kubernetes downward-API labels file (`/etc/istio/pod/labels`:
/// one `key="value"` per line, values quoted as Go's `%q`), as
/// `pilot-agent` reads the pod's labels for the node metadata `LABELS`.
/// Lines that do not parse are skipped.
pub fn parse_downward_labels(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            let value = value.trim().strip_prefix('"')?.strip_suffix('"')?;
            let mut out = String::with_capacity(value.len());
            let mut chars = value.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    match chars.next()? {
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        other => out.push(other),
                    }
                } else {
                    out.push(c);
                }
            }
            Some((key.trim().to_owned(), out))
        })
        .collect()
}

/// What the agent needs to run the sidecar's Envoy (`pilot-agent proxy
/// sidecar`'s part).
#[derive(Clone, Debug)]
pub struct EnvoyOptions {
    /// The Envoy binary.
    pub binary: PathBuf,
    /// Where the bootstrap is written (Istio: `/etc/istio/proxy/envoy-rev.json`).
    pub bootstrap_path: PathBuf,
    /// The bootstrap's settings (node ID, xDS address, labels, SDS socket).
    pub bootstrap: crate::bootstrap::BootstrapOptions,
}

/// Envoy's command line as Istio's `pilot-agent` writes it (its
/// `envoy.args`): the bootstrap; 45 s of draining, with listeners draining
/// at once (`immediate`); access logs flushed every second, not Envoy's 10 s
/// (Istio: "optimizes for UX while retaining performance"); no hot restart;
/// log level `warning`.
pub fn envoy_args(bootstrap_path: &std::path::Path) -> Vec<std::ffi::OsString> {
    let mut args = vec!["-c".into(), bootstrap_path.as_os_str().to_owned()];
    args.extend(
        [
            "--drain-time-s",
            "45",
            "--drain-strategy",
            "immediate",
            "--file-flush-interval-msec",
            "1000",
            "--disable-hot-restart",
            "-l",
            "warning",
        ]
        .map(Into::into),
    );
    args
}

/// Writes the bootstrap and starts Envoy on it ([`envoy_args`]); the
/// caller waits for or kills the child.
///
/// # Errors
/// The bootstrap cannot be made or written, or Envoy cannot be started.
pub fn spawn_envoy(opts: &EnvoyOptions) -> anyhow::Result<tokio::process::Child> {
    let json = crate::bootstrap::bootstrap(&opts.bootstrap)?;
    if let Some(dir) = opts.bootstrap_path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("bootstrap folder {}", dir.display()))?;
    }
    std::fs::write(&opts.bootstrap_path, json.to_string())
        .with_context(|| format!("bootstrap {}", opts.bootstrap_path.display()))?;
    let child = tokio::process::Command::new(&opts.binary)
        .args(envoy_args(&opts.bootstrap_path))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start Envoy {}", opts.binary.display()))?;
    info!(envoy = %opts.binary.display(), node = %opts.bootstrap.node_id, "Envoy started");
    Ok(child)
}

#[cfg(test)]
mod tests {
    use super::parse_downward_labels;

    #[test]
    fn downward_api_labels_are_unquoted() {
        let labels = parse_downward_labels(
            "app=\"reviews\"\nsecurity.istio.io/tlsMode=\"istio\"\nquote=\"a \\\"b\\\" \\\\c\"\nbroken\nunquoted=x\n",
        );
        assert_eq!(labels.len(), 3, "{labels:?}");
        assert_eq!(labels["app"], "reviews");
        assert_eq!(labels["security.istio.io/tlsMode"], "istio");
        assert_eq!(labels["quote"], "a \"b\" \\c");
    }
}
