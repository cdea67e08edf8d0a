//! The admission webhooks (`/inject`, `/validate`, from the `webhook`
//! crate) served over TLS on Istio's 15017 (the `istiod` Service maps 443
//! to it), with the daemon's serving certificate from its CA (the same one
//! as 15012, rotated with it). TLS only: a plaintext caller gets nothing.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::secure::ServingCert;

/// Istio's webhook port.
pub const WEBHOOK_PORT: u16 = 15017;

/// What the webhooks are served with.
#[derive(Clone, Debug)]
pub struct WebhookOptions {
    /// Where to listen (Istio: `0.0.0.0:15017`).
    pub addr: SocketAddr,
    /// The injector's configuration.
    pub injection: webhook::inject::InjectionConfig,
    /// Istio's injection `policy`: `enabled` (true) or `disabled`.
    pub policy_enabled: bool,
    /// OpenShift (Istio's `PLATFORM=openshift`): the proxy runs with the
    /// uid and gid of its namespace's SCC ranges.
    pub openshift: bool,
}

/// TLS connections, handshakes done concurrently by a task of their own,
/// as axum's `Listener`.
struct TlsListener {
    connections: mpsc::Receiver<crate::secure::TlsConnection>,
    addr: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<crate::xds::read_ahead::ReadAhead>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.connections.recv().await {
            Some(c) => c,
            // The acceptor is gone (shutdown): wait for axum to be stopped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// Serves the webhooks on `opts.addr` with `serving`'s certificate until
/// `token` is cancelled; returns the bound address and the tasks.
///
/// # Errors
/// The address cannot be bound, or the TLS configuration is refused.
pub async fn start(
    opts: WebhookOptions,
    serving: Arc<ServingCert>,
    snapshots: tokio::sync::watch::Receiver<Arc<translator::model::Snapshot>>,
    token: CancellationToken,
) -> anyhow::Result<(SocketAddr, Vec<JoinHandle<()>>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_cert_resolver(serving);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .with_context(|| format!("cannot bind the webhook port {}", opts.addr))?;
    let addr = listener.local_addr()?;
    let (accepting, rx) = crate::secure::accept_tls(listener, acceptor, token.clone(), "webhooks");
    let mut tasks = vec![accepting];
    let openshift_namespaces = opts.openshift.then(|| {
        let lookup: webhook::server::NamespaceAnnotations =
            Arc::new(move |ns: &str| snapshots.borrow().namespace_annotations.get(ns).cloned());
        lookup
    });
    let router = webhook::server::router(webhook::server::Webhooks {
        injection: Arc::new(opts.injection),
        policy_enabled: opts.policy_enabled,
        openshift_namespaces,
    });
    let stop = token.clone();
    tasks.push(tokio::spawn(async move {
        let served = axum::serve(
            TlsListener {
                connections: rx,
                addr,
            },
            router,
        )
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
        if let Err(e) = served {
            error!(error = %e, "webhook server failed");
        }
    }));
    info!(%addr, "serving the admission webhooks (/inject, /validate) over TLS");
    Ok((addr, tasks))
}
