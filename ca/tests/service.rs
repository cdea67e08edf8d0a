//! `IstioCertificateService/CreateCertificate` over real gRPC on loopback:
//! a caller with a valid service-account token gets its certificate; every
//! refusal comes back with its status and reason, and nothing is issued.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ca::Authority;
use ca::service::pb::IstioCertificateRequest;
use ca::service::pb::istio_certificate_service_client::IstioCertificateServiceClient;
use ca::service::{CaService, JwtAuthenticator};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{CertificateParams, KeyPair, SanType};
use tonic::Code;
use tonic::transport::Channel;

struct Issuer {
    key: EncodingKey,
    public_pem: String,
}

fn issuer() -> Issuer {
    let kp = KeyPair::generate().unwrap();
    Issuer {
        key: EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap(),
        public_pem: kp.public_key_pem(),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(issuer: &Issuer, sub: &str, aud: &str, exp: u64) -> String {
    let claims = serde_json::json!({"sub": sub, "aud": [aud], "exp": exp, "iss": "https://kubernetes.default.svc"});
    jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &issuer.key).unwrap()
}

fn csr(uri: &str) -> String {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    params.serialize_request(&key).unwrap().pem().unwrap()
}

async fn serve(
    authenticator: JwtAuthenticator,
) -> (IstioCertificateServiceClient<Channel>, Arc<Authority>) {
    let authority = Arc::new(Authority::self_signed("cluster.local").unwrap());
    let service = CaService::new(authority.clone(), authenticator).into_server();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (IstioCertificateServiceClient::new(channel), authority)
}

fn request(csr: String, ttl: i64, bearer: Option<&str>) -> tonic::Request<IstioCertificateRequest> {
    let mut r = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: ttl,
        metadata: None,
    });
    if let Some(t) = bearer {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

const ME: &str = "spiffe://cluster.local/ns/default/sa/productpage";
const SUB: &str = "system:serviceaccount:default:productpage";

#[tokio::test]
async fn a_workload_with_its_token_gets_its_certificate() {
    let iss = issuer();
    let auth = JwtAuthenticator::from_pem(&iss.public_pem, "cluster.local").unwrap();
    let (mut client, authority) = serve(auth).await;
    let good = token(&iss, SUB, "istio-ca", now() + 600);
    let chain = client
        .create_certificate(request(csr(ME), 3600, Some(&good)))
        .await
        .unwrap()
        .into_inner()
        .cert_chain;
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1], authority.root_pem());
    let der = pem::parse(&chain[0]).unwrap().into_contents();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap().value;
    assert_eq!(format!("{:?}", san.general_names), format!("[URI({ME:?})]"));
    let v = cert.validity();
    assert_eq!(
        (v.not_after.to_datetime() - v.not_before.to_datetime()).whole_seconds(),
        3600 + 60
    );
}

#[tokio::test]
async fn refusals_carry_their_status_and_reason() {
    let iss = issuer();
    let auth = JwtAuthenticator::from_pem(&iss.public_pem, "cluster.local").unwrap();
    let (mut client, _) = serve(auth).await;
    let good = token(&iss, SUB, "istio-ca", now() + 600);
    let forger = issuer();
    let cases: Vec<(&str, tonic::Request<IstioCertificateRequest>, Code, &str)> = vec![
        (
            "no credentials",
            request(csr(ME), 0, None),
            Code::Unauthenticated,
            "no credentials",
        ),
        (
            "another audience",
            request(
                csr(ME),
                0,
                Some(&token(&iss, SUB, "kubernetes", now() + 600)),
            ),
            Code::Unauthenticated,
            "audience",
        ),
        (
            "expired",
            request(csr(ME), 0, Some(&token(&iss, SUB, "istio-ca", now() - 60))),
            Code::Unauthenticated,
            "expired",
        ),
        (
            "forged",
            request(
                csr(ME),
                0,
                Some(&token(&forger, SUB, "istio-ca", now() + 600)),
            ),
            Code::Unauthenticated,
            "signature",
        ),
        (
            "garbage token",
            request(csr(ME), 0, Some("abc")),
            Code::Unauthenticated,
            "not a JWT",
        ),
        (
            "another identity",
            request(
                csr("spiffe://cluster.local/ns/default/sa/reviews"),
                0,
                Some(&good),
            ),
            Code::PermissionDenied,
            "sa/reviews",
        ),
        (
            "malformed CSR",
            request("hello".into(), 0, Some(&good)),
            Code::InvalidArgument,
            "malformed CSR",
        ),
        (
            "over-long TTL",
            request(csr(ME), 91 * 24 * 3600, Some(&good)),
            Code::InvalidArgument,
            "max allowed TTL",
        ),
        (
            "negative TTL",
            request(csr(ME), -5, Some(&good)),
            Code::InvalidArgument,
            "negative",
        ),
    ];
    for (what, req, code, reason) in cases {
        let status = client.create_certificate(req).await.unwrap_err();
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(
            status.message().contains(reason),
            "{what}: {}",
            status.message()
        );
    }
}
