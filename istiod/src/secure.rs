//! The daemon's TLS port (Istio's 15012): the CA API
//! (`istio.v1.auth.IstioCertificateService`) and xDS, over TLS with a
//! serving certificate the daemon's own CA issues for Istio's DNS names
//! (`istiod.<ns>.svc`, ...), re-issued at half of its lifetime and swapped
//! in without a restart. Client certificates are optional; when presented
//! they must chain to the CA's root (that is how a workload renews with its
//! still-valid certificate instead of a token).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use ca::Authority;
use ca::service::{Authenticator, CaService, ClientCertOr};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// How the CA and the TLS port run.
#[derive(Clone, Debug)]
pub struct CaOptions {
    /// Where the root lives: Istio's `cacerts` layout (`ca-cert.pem`,
    /// `ca-key.pem`, `cert-chain.pem`, `root-cert.pem`), plugged in by the
    /// user. When absent, a self-signed root is kept in the `istio-ca-secret`
    /// Secret with the Kubernetes source, else created and kept here.
    pub dir: PathBuf,
    /// SPIFFE trust domain (Istio's mesh `trustDomain`), e.g. `cluster.local`.
    pub trust_domain: String,
    /// PEM public keys of the service-account token issuer, for verifying
    /// tokens locally; `None`: the API server's TokenReview with the
    /// Kubernetes source, else client certificates only.
    pub token_issuer_keys: Option<PathBuf>,
    /// Where the TLS port listens (Istio's 15012; port 0 picks one).
    pub addr: SocketAddr,
    /// The daemon's namespace, for its DNS names.
    pub namespace: String,
    /// Lifetime of the daemon's serving certificate; re-issued at half.
    pub serving_ttl: Duration,
    /// More names (DNS names or IP addresses) for the serving certificate,
    /// as Istio's `ISTIOD_CUSTOM_HOST`: for callers that reach the daemon
    /// by another name, e.g. an API server calling the webhooks by URL.
    pub custom_hosts: Vec<String>,
}

/// The daemon's DNS names, as in Istio's istiod certificate.
pub fn dns_names(namespace: &str) -> Vec<String> {
    vec![
        format!("istiod.{namespace}.svc"),
        format!("istiod.{namespace}.svc.cluster.local"),
        format!("istiod.{namespace}"),
        "istiod".into(),
    ]
}

/// Refuses every token: the daemon was given no issuer keys to check them.
#[derive(Debug, Clone, Copy)]
pub struct NoTokens;

#[tonic::async_trait]
impl Authenticator for NoTokens {
    async fn authenticate(
        &self,
        _metadata: &tonic::metadata::MetadataMap,
        _peer_certs: Option<&[Vec<u8>]>,
    ) -> Result<ca::SpiffeId, tonic::Status> {
        Err(tonic::Status::unauthenticated(
            "no client certificate, and this daemon verifies no tokens (start it with --token-issuer-key)",
        ))
    }
}

/// The certificate presented by the TLS port, swappable while serving.
#[derive(Debug)]
pub struct ServingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

impl ServingCert {
    /// The certificate chain currently presented, DER, leaf first.
    pub fn chain(&self) -> Vec<Vec<u8>> {
        self.current
            .read()
            .map(|c| c.cert.iter().map(|d| d.to_vec()).collect())
            .unwrap_or_default()
    }
}

fn certified_key(chain_pem: &str, key_pem: &str) -> anyhow::Result<Arc<CertifiedKey>> {
    let certs = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("serving certificate chain")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("serving key")?;
    let provider = rustls::crypto::ring::default_provider();
    let signer = provider
        .key_provider
        .load_private_key(key)
        .context("serving key")?;
    Ok(Arc::new(CertifiedKey::new(certs, signer)))
}

fn issue(authority: &Authority, opts: &CaOptions) -> anyhow::Result<Arc<CertifiedKey>> {
    let (chain, key) = authority
        .issue_server_cert(
            &dns_names(&opts.namespace)
                .into_iter()
                .chain(opts.custom_hosts.iter().cloned())
                .collect::<Vec<_>>(),
            opts.serving_ttl,
        )
        .context("issuing the serving certificate")?;
    certified_key(&chain, &key)
}

/// A running TLS port.
#[derive(Debug)]
pub struct SecurePort {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The certificate it presents.
    pub serving: Arc<ServingCert>,
    /// The CA.
    pub authority: Arc<Authority>,
}

/// Loads (or creates) the CA, binds the TLS port and serves the CA API and
/// `ads` on it until `token` is cancelled. Returns the port and its tasks.
///
/// # Errors
/// An unusable CA folder or token key file, or an address that cannot be bound.
pub async fn start(
    opts: &CaOptions,
    ads: crate::xds::AdsServer,
    token: CancellationToken,
    kube: Option<kube::Client>,
) -> anyhow::Result<(SecurePort, Vec<JoinHandle<()>>)> {
    // Plugged-in `cacerts` files win; else, with an API server, the root
    // kept in `istio-ca-secret`; else one kept in the folder.
    let plugged = opts.dir.join("ca-key.pem").exists();
    let authority = match (&kube, plugged) {
        (Some(client), false) => {
            crate::kube_ca::load_or_create_secret(client, &opts.namespace, &opts.trust_domain)
                .await
                .context("CA root in the istio-ca-secret Secret")?
        }
        _ => {
            let (dir, td) = (opts.dir.clone(), opts.trust_domain.clone());
            tokio::task::spawn_blocking(move || Authority::load_or_create(&dir, &td))
                .await
                .context("CA load task")?
                .with_context(|| format!("CA folder {}", opts.dir.display()))?
        }
    };
    let authority = Arc::new(authority);
    let serving = Arc::new(ServingCert {
        current: RwLock::new(issue(&authority, opts)?),
    });

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(authority.root_pem().as_bytes()) {
        roots
            .add(cert.context("root certificate")?)
            .context("root certificate")?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .context("client certificate verifier")?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(serving.clone());
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .with_context(|| format!("cannot bind the TLS port {}", opts.addr))?;
    let addr = listener.local_addr()?;
    let mut tasks = Vec::new();

    let (accepting, conn_rx) = accept_tls(listener, acceptor, token.clone(), "TLS port");
    tasks.push(accepting);

    let authenticator = ClientCertOr {
        trust_domain: opts.trust_domain.clone(),
        fallback: token_authenticator(opts, kube)?,
    };
    let ads = ads.authenticated(Arc::new(authenticator.clone()));
    let ca_service = CaService::new(authority.clone(), authenticator).into_server();
    let stop = token.clone();
    tasks.push(tokio::spawn(async move {
        let served = ads
            .server()
            .add_service(ca_service)
            .add_service(ads.into_service())
            .serve_with_incoming_shutdown(
                tokio_stream::StreamExt::map(ReceiverStream::new(conn_rx), |(tls, _)| {
                    Ok::<_, std::io::Error>(tls)
                }),
                stop.cancelled_owned(),
            )
            .await;
        if let Err(e) = served {
            error!(error = %e, "TLS port failed");
        }
    }));

    // Rotation: re-issue at half of the lifetime.
    let (rotating, ca, o, stop) = (
        serving.clone(),
        authority.clone(),
        opts.clone(),
        token.clone(),
    );
    tasks.push(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(o.serving_ttl / 2) => {}
                _ = stop.cancelled() => break,
            }
            match issue(&ca, &o) {
                Ok(next) => {
                    if let Ok(mut current) = rotating.current.write() {
                        *current = next;
                    }
                    info!(ttl = ?o.serving_ttl, "serving certificate rotated");
                }
                Err(e) => error!(error = %e, "serving certificate not rotated; retrying at the next half-life"),
            }
        }
    }));
    info!(%addr, names = ?dns_names(&opts.namespace), "serving the CA API and xDS over TLS");
    Ok((
        SecurePort {
            addr,
            serving,
            authority,
        },
        tasks,
    ))
}

/// A TLS connection and its peer.
pub(crate) type TlsConnection = (
    tokio_rustls::server::TlsStream<crate::xds::read_ahead::ReadAhead>,
    SocketAddr,
);

/// Accepts on `listener` until `token` is cancelled, each handshake in a
/// task of its own (10 s at most; a failed one is logged and dropped), and
/// hands the connections on. `what` names the port in logs.
pub(crate) fn accept_tls(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    token: CancellationToken,
    what: &'static str,
) -> (JoinHandle<()>, mpsc::Receiver<TlsConnection>) {
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = token.cancelled() => break,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(port = what, error = %e, "accept failed");
                    continue;
                }
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(
                    Duration::from_secs(10),
                    // rustls reads 4 KiB at a time: read ahead below it,
                    // as on the plaintext xDS port.
                    acceptor.accept(crate::xds::read_ahead::ReadAhead::new(tcp)),
                )
                .await;
                match handshake {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, peer)).await;
                    }
                    Ok(Err(e)) => debug!(port = what, %peer, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(port = what, %peer, "TLS handshake timed out"),
                }
            });
        }
    });
    (task, rx)
}

/// The token check for callers without a client certificate: the issuer
/// keys if given, else the API server's TokenReview when there is one.
fn token_authenticator(opts: &CaOptions, kube: Option<kube::Client>) -> anyhow::Result<Tokens> {
    if let (None, Some(client)) = (&opts.token_issuer_keys, kube) {
        return Ok(Tokens::Review(crate::kube_ca::TokenReviewAuthenticator {
            client,
            trust_domain: opts.trust_domain.clone(),
        }));
    }
    match &opts.token_issuer_keys {
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("token issuer keys {}", path.display()))?;
            let jwt = ca::service::JwtAuthenticator::from_pem(&pem, &opts.trust_domain)
                .with_context(|| format!("token issuer keys {}", path.display()))?;
            Ok(Tokens::Jwt(jwt))
        }
        None => Ok(Tokens::None(NoTokens)),
    }
}

/// Which token check is configured.
#[derive(Debug, Clone)]
pub enum Tokens {
    /// Verified locally against the issuer's public keys.
    Jwt(ca::service::JwtAuthenticator),
    /// Verified by the API server (TokenReview).
    Review(crate::kube_ca::TokenReviewAuthenticator),
    /// None: client certificates only.
    None(NoTokens),
}

#[tonic::async_trait]
impl Authenticator for Tokens {
    async fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        peer_certs: Option<&[Vec<u8>]>,
    ) -> Result<ca::SpiffeId, tonic::Status> {
        match self {
            Tokens::Jwt(j) => j.authenticate(metadata, peer_certs).await,
            Tokens::Review(r) => r.authenticate(metadata, peer_certs).await,
            Tokens::None(n) => n.authenticate(metadata, peer_certs).await,
        }
    }
}
