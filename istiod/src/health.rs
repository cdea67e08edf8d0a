//! The agent's application health checks, for workloads outside Kubernetes
//! (Istio's `pkg/istio-agent/health`): the WorkloadGroup's readiness
//! `probe` run against the application, and the result reported to the
//! daemon over the proxy's xDS stream ([`crate::xds_proxy`]), which sets
//! the workload's WorkloadEntry `Healthy` condition.
//!
//! - **Checks**: `httpGet` (a `GET` of `scheme://host:port/path` with
//!   `httpHeaders` and `User-Agent: istio-probe/1.0`, over TLS for `HTTPS`
//!   without verifying the certificate, as Istio's prober; a status in
//!   [200, 400) is healthy; host `localhost` by default), `tcpSocket` (a
//!   connection opens; host `localhost` by default), `exec` (the command
//!   exits 0). Each is bounded by `timeoutSeconds`.
//! - **Timing** (Istio's `fillInDefaults`): a first check after
//!   `initialDelaySeconds` (0), then one every `periodSeconds` (10);
//!   `timeoutSeconds` 1; thresholds at least 1.
//! - **Reports only on a change** (Istio's `PerformApplicationHealthCheck`):
//!   healthy after `successThreshold` successes in a row (the first report),
//!   unhealthy after `failureThreshold` failures in a row once it was
//!   healthy, with the check's error as the message. Until the first
//!   success nothing is reported: a health-checked entry starts unhealthy.

use std::time::Duration;

use crds::workload_group::ReadinessProbe;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// The workload's health, as last concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// The success threshold was reached.
    Healthy,
    /// The failure threshold was reached; the last check's error.
    Unhealthy(String),
}

/// What is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Check {
    /// `GET http(s)://host:port/path` with these headers (name, value).
    Http {
        /// HTTPS: the server's certificate is not verified (Istio's
        /// prober: `InsecureSkipVerify`).
        tls: bool,
        host: String,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    /// A TCP connection to `host:port`.
    Tcp { host: String, port: u16 },
    /// A command and its arguments.
    Exec(Vec<String>),
}

/// A readiness probe with Istio's defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prober {
    check: Check,
    initial_delay: Duration,
    timeout: Duration,
    period: Duration,
    success_threshold: u32,
    failure_threshold: u32,
}

/// Why a probe cannot be run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProbeError {
    /// None of `httpGet`, `tcpSocket` and `exec` is set.
    #[error("the probe has no httpGet, tcpSocket or exec check")]
    NoCheck,
    /// A check this agent does not run.
    #[error("{0}")]
    Unsupported(String),
    /// A port outside 1-65535.
    #[error("{field}: port {port} is not in 1-65535")]
    Port {
        /// The field (`httpGet.port`).
        field: &'static str,
        /// The value.
        port: u32,
    },
}

impl Prober {
    /// The prober for `probe` (a WorkloadGroup's `probe`, or the mesh
    /// config's `defaultConfig.readinessProbe` that `istioctl x workload
    /// entry configure` writes).
    ///
    /// # Errors
    /// [`ProbeError`] for a probe without a check, with a gRPC check (Istio's
    /// agent runs none either), a scheme other than HTTP(S), or a bad port.
    pub fn new(probe: &ReadinessProbe) -> Result<Prober, ProbeError> {
        let port = |field: &'static str, port: u32| {
            u16::try_from(port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or(ProbeError::Port { field, port })
        };
        let check = if let Some(h) = &probe.http_get {
            let scheme = h.scheme.as_deref().unwrap_or("HTTP").to_ascii_lowercase();
            let tls = match scheme.as_str() {
                "" | "http" => false,
                "https" => true,
                other => {
                    return Err(ProbeError::Unsupported(format!(
                        "httpGet.scheme {other}: HTTP or HTTPS"
                    )));
                }
            };
            let path = h.path.clone().filter(|p| !p.is_empty()).unwrap_or_default();
            Check::Http {
                tls,
                host: host_or_localhost(h.host.as_deref()),
                port: port("httpGet.port", h.port)?,
                path: if path.starts_with('/') {
                    path
                } else {
                    format!("/{path}")
                },
                headers: h
                    .http_headers
                    .iter()
                    .filter_map(|x| Some((x.name.clone()?, x.value.clone().unwrap_or_default())))
                    .collect(),
            }
        } else if let Some(t) = &probe.tcp_socket {
            Check::Tcp {
                host: host_or_localhost(t.host.as_deref()),
                port: port("tcpSocket.port", t.port)?,
            }
        } else if let Some(e) = &probe.exec {
            if e.command.is_empty() {
                return Err(ProbeError::NoCheck);
            }
            Check::Exec(e.command.clone())
        } else if probe.grpc.is_some() {
            return Err(ProbeError::Unsupported(
                "grpc: gRPC probes are not run by the agent (nor by Istio's)".into(),
            ));
        } else {
            return Err(ProbeError::NoCheck);
        };
        let secs = |v: Option<i32>, default: u64| {
            Duration::from_secs(
                v.and_then(|v| u64::try_from(v).ok())
                    .filter(|v| *v > 0)
                    .unwrap_or(default),
            )
        };
        let threshold = |v: Option<i32>| v.and_then(|v| u32::try_from(v).ok()).unwrap_or(1).max(1);
        Ok(Prober {
            check,
            initial_delay: secs(probe.initial_delay_seconds, 0),
            timeout: secs(probe.timeout_seconds, 1),
            period: secs(probe.period_seconds, 10),
            success_threshold: threshold(probe.success_threshold),
            failure_threshold: threshold(probe.failure_threshold),
        })
    }

    /// The prober for a probe written as YAML or JSON.
    ///
    /// # Errors
    /// The text is not a `ReadinessProbe` (the field named), or [`Prober::new`]'s.
    pub fn parse(text: &str) -> anyhow::Result<Prober> {
        let probe: ReadinessProbe =
            serde_path_to_error::deserialize(serde_yaml_ng::Deserializer::from_str(text))
                .map_err(|e| anyhow::anyhow!("{}: {}", e.path(), e.inner()))?;
        Ok(Prober::new(&probe)?)
    }

    /// One check, bounded by the timeout.
    ///
    /// # Errors
    /// Why the workload is not healthy (a refused connection, a status, an
    /// exit code, the timeout).
    pub async fn check(&self) -> Result<(), String> {
        match tokio::time::timeout(self.timeout, self.check_unbounded()).await {
            Ok(result) => result,
            Err(_) => Err(format!("timed out after {:?}", self.timeout)),
        }
    }

    async fn check_unbounded(&self) -> Result<(), String> {
        match &self.check {
            Check::Tcp { host, port } => tokio::net::TcpStream::connect((host.as_str(), *port))
                .await
                .map(drop)
                .map_err(|e| format!("dial {host}:{port}: {e}")),
            Check::Exec(command) => {
                let status = tokio::process::Command::new(&command[0])
                    .args(&command[1..])
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .status()
                    .await
                    .map_err(|e| format!("{}: {e}", command[0]))?;
                if status.success() {
                    Ok(())
                } else {
                    Err(format!("{}: {status}", command[0]))
                }
            }
            Check::Http {
                tls,
                host,
                port,
                path,
                headers,
            } => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(|e| format!("dial {host}:{port}: {e}"))?;
                if *tls {
                    let name = rustls::pki_types::ServerName::try_from(host.clone())
                        .map_err(|e| format!("{host}: {e}"))?;
                    let stream = tokio_rustls::TlsConnector::from(insecure_tls())
                        .connect(name, stream)
                        .await
                        .map_err(|e| format!("TLS to {host}:{port}: {e}"))?;
                    http_get(stream, (host, *port), path, headers).await
                } else {
                    http_get(stream, (host, *port), path, headers).await
                }
            }
        }
    }

    /// Runs the checks until `token` is cancelled, publishing each change
    /// of the conclusion on `report` (the module's rules).
    pub async fn run(self, report: watch::Sender<Option<Health>>, token: CancellationToken) {
        info!(check = ?self.check, delay = ?self.initial_delay, "application health checks start");
        tokio::select! {
            () = tokio::time::sleep(self.initial_delay) => {}
            () = token.cancelled() => return,
        }
        let mut interval = tokio::time::interval(self.period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut successes, mut failures, mut healthy) = (0, 0, false);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                () = token.cancelled() => return,
            }
            match self.check().await {
                Ok(()) => {
                    (successes, failures) = (successes + 1, 0);
                    if successes >= self.success_threshold && !healthy {
                        info!("application health check: healthy");
                        healthy = true;
                        report.send_replace(Some(Health::Healthy));
                    }
                }
                Err(e) => {
                    debug!(error = %e, "application health check failed");
                    (successes, failures) = (0, failures + 1);
                    if failures >= self.failure_threshold && healthy {
                        info!(error = %e, "application health check: unhealthy");
                        healthy = false;
                        report.send_replace(Some(Health::Unhealthy(e)));
                    }
                }
            }
        }
    }
}

fn host_or_localhost(host: Option<&str>) -> String {
    host.filter(|h| !h.is_empty())
        .unwrap_or("localhost")
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned()
}

/// A TLS client that accepts any server certificate, as Istio's HTTPS
/// prober (`InsecureSkipVerify`): a probe checks the application answers,
/// not who it is.
fn insecure_tls() -> std::sync::Arc<rustls::ClientConfig> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(std::sync::Arc::new(AnyCertificate(provider)))
                .with_no_client_auth()
        });
    match config {
        Ok(c) => std::sync::Arc::new(c),
        // The ring provider supports the default versions: not reached.
        Err(_) => std::sync::Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        ),
    }
}

/// Accepts any certificate; signatures are still checked, so that the
/// handshake itself is sound.
#[derive(Debug)]
struct AnyCertificate(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `GET path` of `host:port` over `stream` (one HTTP/1.1 connection, no
/// keep-alive, as Istio's prober); a status in [200, 400) is healthy.
async fn http_get<S>(
    stream: S,
    (host, port): (&str, u16),
    path: &str,
    headers: &[(String, String)],
) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::Empty;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("{host}:{port}: {e}"))?;
    let driver = tokio::spawn(connection);
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut request = http::Request::get(path).header(http::header::HOST, authority);
    let named = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    if !named("user-agent") {
        request = request.header(http::header::USER_AGENT, "istio-probe/1.0");
    }
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("host")
            && let Some(h) = request.headers_mut()
        {
            h.remove(http::header::HOST);
        }
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("GET {path}: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("GET {path}: {e}"));
    driver.abort();
    let status = response?.status();
    if (200..400).contains(&status.as_u16()) {
        Ok(())
    } else {
        Err(format!(
            "status code was not from [200,400), bad code {}",
            status.as_u16()
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn probe(yaml: &str) -> Result<Prober, ProbeError> {
        Prober::new(&serde_yaml_ng::from_str(yaml).unwrap())
    }

    #[test]
    fn istios_defaults_fill_in_the_probe() {
        let p = probe("{httpGet: {port: 8080}}").unwrap();
        assert_eq!(
            p.check,
            Check::Http {
                tls: false,
                host: "localhost".into(),
                port: 8080,
                path: "/".into(),
                headers: vec![]
            }
        );
        assert_eq!(
            (p.initial_delay, p.timeout, p.period),
            (
                Duration::ZERO,
                Duration::from_secs(1),
                Duration::from_secs(10)
            )
        );
        assert_eq!((p.success_threshold, p.failure_threshold), (1, 1));
        let p = probe("{tcpSocket: {port: 5432, host: db}, periodSeconds: 2, failureThreshold: 3, initialDelaySeconds: 5}").unwrap();
        assert_eq!(
            p.check,
            Check::Tcp {
                host: "db".into(),
                port: 5432
            }
        );
        assert_eq!((p.period, p.failure_threshold), (Duration::from_secs(2), 3));
        assert_eq!(p.initial_delay, Duration::from_secs(5));
        for (bad, why) in [
            ("{}", ProbeError::NoCheck),
            ("{exec: {command: []}}", ProbeError::NoCheck),
            (
                "{tcpSocket: {port: 70000}}",
                ProbeError::Port {
                    field: "tcpSocket.port",
                    port: 70000,
                },
            ),
        ] {
            assert_eq!(probe(bad).unwrap_err(), why, "{bad}");
        }
        assert!(matches!(
            probe("{grpc: {port: 9090}}"),
            Err(ProbeError::Unsupported(_))
        ));
        assert!(matches!(
            probe("{httpGet: {port: 443, scheme: FTP}}"),
            Err(ProbeError::Unsupported(_))
        ));
        let https = probe("{httpGet: {port: 443, scheme: HTTPS}}").unwrap();
        assert!(matches!(https.check, Check::Http { tls: true, .. }));
    }

    #[tokio::test]
    async fn checks_reach_the_application() {
        // An application answering 200 on /ready and 503 elsewhere.
        let app = axum::Router::new()
            .route("/ready", axum::routing::get(|| async { "ok" }))
            .fallback(|| async { (http::StatusCode::SERVICE_UNAVAILABLE, "no") });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let http = |path: &str| {
            probe(&format!(
                "{{httpGet: {{host: 127.0.0.1, port: {port}, path: {path}}}}}"
            ))
            .unwrap()
        };
        assert_eq!(http("/ready").check().await, Ok(()));
        let bad = http("/other").check().await.unwrap_err();
        assert!(bad.contains("bad code 503"), "{bad}");
        let tcp = probe(&format!("{{tcpSocket: {{host: 127.0.0.1, port: {port}}}}}")).unwrap();
        assert_eq!(tcp.check().await, Ok(()));
        // A port nothing listens on (just freed).
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let free = closed.local_addr().unwrap().port();
        drop(closed);
        let refused = probe(&format!("{{tcpSocket: {{host: 127.0.0.1, port: {free}}}}}")).unwrap();
        assert!(refused.check().await.is_err());
        assert_eq!(
            probe("{exec: {command: ['true']}}").unwrap().check().await,
            Ok(())
        );
        assert!(
            probe("{exec: {command: ['false']}}")
                .unwrap()
                .check()
                .await
                .is_err()
        );
        let slow = probe("{exec: {command: [sleep, '5']}, timeoutSeconds: 1}").unwrap();
        assert_eq!(slow.check().await, Err("timed out after 1s".into()));
    }

    #[tokio::test]
    async fn an_https_probe_takes_any_certificate() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A server with a self-signed certificate for another name.
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["app.internal".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut buf = vec![0; 4096];
                let n = tls.read(&mut buf).await.unwrap_or(0);
                let asked = String::from_utf8_lossy(&buf[..n]).into_owned();
                let status = if asked.starts_with("GET /healthz ") {
                    "204 No Content"
                } else {
                    "500 Oops"
                };
                let reply =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = tls.write_all(reply.as_bytes()).await;
                let _ = tls.shutdown().await;
            }
        });
        let https = |path: &str| {
            probe(&format!(
                "{{httpGet: {{host: 127.0.0.1, port: {port}, path: {path}, scheme: HTTPS}}}}"
            ))
            .unwrap()
        };
        assert_eq!(https("/healthz").check().await, Ok(()));
        let bad = https("/other").check().await.unwrap_err();
        assert!(bad.contains("bad code 500"), "{bad}");
        // Plain HTTP to the TLS port fails.
        let plain = probe(&format!(
            "{{httpGet: {{host: 127.0.0.1, port: {port}, path: /healthz}}}}"
        ))
        .unwrap();
        assert!(plain.check().await.is_err());
    }

    #[tokio::test]
    async fn only_changes_past_the_thresholds_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("ready");
        let prober = Prober {
            check: Check::Exec(vec!["test".into(), "-e".into(), flag.display().to_string()]),
            initial_delay: Duration::ZERO,
            timeout: Duration::from_secs(1),
            period: Duration::from_millis(50),
            success_threshold: 2,
            failure_threshold: 2,
        };
        let (tx, mut rx) = watch::channel(None);
        let token = CancellationToken::new();
        tokio::spawn(prober.run(tx, token.clone()));
        // Failing from the start: nothing is reported (the entry starts unhealthy).
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(*rx.borrow_and_update(), None);
        std::fs::write(&flag, "").unwrap();
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), Some(Health::Healthy));
        std::fs::remove_file(&flag).unwrap();
        rx.changed().await.unwrap();
        let Some(Health::Unhealthy(why)) = rx.borrow_and_update().clone() else {
            panic!("not unhealthy");
        };
        assert!(why.contains("exit status: 1"), "{why}");
        token.cancel();
    }
}
