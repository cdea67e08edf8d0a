//! The CA in the daemon: on its TLS port (Istio's 15012), a workload with a
//! service-account token gets a certificate for exactly its SPIFFE ID,
//! renews with that certificate instead of a token, cannot get anyone
//! else's; xDS is served on the same port; the daemon's serving
//! certificate carries Istio's DNS names and is rotated while serving.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ca::service::pb::IstioCertificateRequest;
use ca::service::pb::istio_certificate_service_client::IstioCertificateServiceClient;
use e2e::{ConfigDir, SIDECAR, runtime};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use istiod::secure::CaOptions;
use istiod::{Daemon, Options, Source};
use rcgen::{CertificateParams, KeyPair, SanType};
use tonic::Code;
use tonic::transport::Identity;

const ME: &str = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage";
const SERVING_TTL: Duration = Duration::from_secs(4);

/// A CSR for `uri` and its key, PEM.
fn csr(uri: &str) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    (
        params.serialize_request(&key).unwrap().pem().unwrap(),
        key.serialize_pem(),
    )
}

fn request(csr: String, bearer: Option<&str>) -> tonic::Request<IstioCertificateRequest> {
    let mut r = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: 3600,
        metadata: None,
    });
    if let Some(t) = bearer {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

fn uri_sans(cert_pem: &str) -> Vec<String> {
    let der = pem::parse(cert_pem).unwrap().into_contents();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap().value;
    san.general_names
        .iter()
        .map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => (*u).to_owned(),
            x509_parser::extensions::GeneralName::DNSName(d) => format!("DNS:{d}"),
            other => format!("{other:?}"),
        })
        .collect()
}

/// The serial number of the certificate the TLS port presents, as openssl sees it.
fn presented_serial(addr: std::net::SocketAddr) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} -servername istiod.istio-system.svc </dev/null 2>/dev/null \
             | openssl x509 -noout -serial"
        ))
        .output()
        .expect("openssl (scripts/setup installs it)");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        text.starts_with("serial="),
        "openssl saw no certificate: {text:?}"
    );
    text
}

#[test]
fn workloads_get_renew_and_are_refused_certificates_on_the_tls_port() {
    let _hosts = e2e::isolate();
    let rt = runtime();
    let cfg = ConfigDir::bookinfo_platform();
    let ca_dir = tempfile::tempdir().unwrap();
    let issuer = KeyPair::generate().unwrap();
    let issuer_pub = ca_dir.path().join("issuer.pem");
    std::fs::write(&issuer_pub, issuer.public_key_pem()).unwrap();
    let daemon = rt.block_on(async {
        Daemon::start(Options {
            source: Source::Folder(cfg.path().to_owned()),
            xds_addr: "127.0.0.1:0".parse().unwrap(),
            monitoring_addr: None,
            push_throttle: 10,
            workload_entry_grace: istiod::autoregister::DEFAULT_GRACE,
            keepalive: Default::default(),
            debounce: Default::default(),
            ca: Some(CaOptions {
                dir: ca_dir.path().join("cacerts"),
                trust_domain: "cluster.local".into(),
                token_issuer_keys: Some(issuer_pub.clone()),
                addr: "127.0.0.1:0".parse().unwrap(),
                namespace: "istio-system".into(),
                serving_ttl: SERVING_TTL,
                custom_hosts: Vec::new(),
            }),
            webhooks: None,
        })
        .await
        .unwrap()
    });
    let secure = daemon.secure.as_ref().unwrap();
    let root = std::fs::read_to_string(ca_dir.path().join("cacerts/root-cert.pem")).unwrap();
    assert_eq!(root, secure.authority.root_pem(), "the root is persisted");
    let token_for = |namespace: &str| {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        let claims = serde_json::json!({"sub": format!("system:serviceaccount:{namespace}:bookinfo-productpage"),
                                        "aud": "istio-ca", "exp": exp});
        let key =
            jsonwebtoken::EncodingKey::from_ec_pem(issuer.serialize_pem().as_bytes()).unwrap();
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
            &claims,
            &key,
        )
        .unwrap()
    };
    let token = token_for("default");

    rt.block_on(async {
        // Istio's DNS names on the serving certificate (checked by the TLS
        // client too: it verifies `istiod.istio-system.svc`).
        let chain = secure.serving.chain();
        let serving_pem = pem::encode(&pem::Pem::new("CERTIFICATE", chain[0].clone()));
        let names = uri_sans(&serving_pem);
        assert!(
            names.contains(&"DNS:istiod.istio-system.svc".to_string()),
            "{names:?}"
        );

        // A token gets a certificate for exactly the caller.
        let mut client =
            IstioCertificateServiceClient::new(e2e::secure_channel(secure.addr, &root, None).await);
        let (csr_pem, key_pem) = csr(ME);
        let chain = client
            .create_certificate(request(csr_pem, Some(&token)))
            .await
            .unwrap()
            .into_inner()
            .cert_chain;
        assert_eq!(uri_sans(&chain[0]), [ME]);
        assert_eq!(chain.last().unwrap(), &root);

        // No credentials at all.
        let status = client
            .create_certificate(request(csr(ME).0, None))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

        // Renewal with the certificate instead of a token; another
        // identity is refused.
        let identity = Identity::from_pem(chain.concat(), key_pem);
        let mut renewing = IstioCertificateServiceClient::new(
            e2e::secure_channel(secure.addr, &root, Some(identity)).await,
        );
        let renewed = renewing
            .create_certificate(request(csr(ME).0, None))
            .await
            .unwrap()
            .into_inner()
            .cert_chain;
        assert_eq!(uri_sans(&renewed[0]), [ME]);
        let status = renewing
            .create_certificate(request(
                csr("spiffe://cluster.local/ns/default/sa/bookinfo-reviews").0,
                None,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

        // xDS on the same port, authenticated as istiod does it: no
        // credentials, no stream; a token gets config for proxies of its
        // own namespace only.
        let first = || DiscoveryRequest {
            node: Some(Node {
                id: SIDECAR.into(),
                ..Default::default()
            }),
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            ..Default::default()
        };
        let mut ads = AggregatedDiscoveryServiceClient::new(
            e2e::secure_channel(secure.addr, &root, None).await,
        );
        let status = ads
            .stream_aggregated_resources(tokio_stream::iter([first()]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        let with_token = |account_ns: &str| {
            let mut req = tonic::Request::new(tokio_stream::iter([first()]));
            let token = token_for(account_ns);
            req.metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            req
        };
        let mut responses = ads
            .stream_aggregated_resources(with_token("default"))
            .await
            .unwrap()
            .into_inner();
        let cds = responses.message().await.unwrap().unwrap();
        assert!(cds.resources.len() > 3, "{} clusters", cds.resources.len());
        let mut responses = ads
            .stream_aggregated_resources(with_token("other"))
            .await
            .unwrap()
            .into_inner();
        let status = responses.message().await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("namespace default"), "{status:?}");
    });

    // Rotation: the presented certificate changes after half its lifetime,
    // and is the one the daemon holds.
    let before = presented_serial(secure.addr);
    std::thread::sleep(SERVING_TTL / 2 + Duration::from_millis(700));
    let after = presented_serial(secure.addr);
    assert_ne!(before, after, "the serving certificate was not rotated");
    let current = secure.serving.chain();
    let der = &current[0];
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let serial = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<String>();
    let digits = |s: &str| {
        s.trim_start_matches("serial=")
            .trim_start_matches('0')
            .to_owned()
    };
    assert_eq!(digits(&after), digits(&serial));
}
