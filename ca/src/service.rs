//! Istio's CA API over gRPC: `istio.v1.auth.IstioCertificateService/CreateCertificate`
//! (request: `csr` PEM, `validity_duration` seconds, `metadata`; response:
//! `cert_chain`, leaf first, root last), served by [`CaService`].
//!
//! Every call is authenticated first ([`Authenticator`]); the CSR may ask
//! only for the caller's identity. Statuses: no or bad credentials
//! `UNAUTHENTICATED`; another identity `PERMISSION_DENIED`; a malformed CSR
//! or a lifetime over the cap `INVALID_ARGUMENT`.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::{Authority, CaError, SignError, SpiffeId};

/// The generated messages, client and server of `istio.v1.auth`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("istio.v1.auth");
}

use pb::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use pb::{IstioCertificateRequest, IstioCertificateResponse};

/// The audience a Kubernetes service-account token must carry to be
/// accepted by the CA (Istio's `istio-ca`).
pub const AUDIENCE: &str = "istio-ca";

/// Decides who is calling, from the request's metadata (a bearer token)
/// and its TLS client certificate chain (DER, leaf first), if any.
#[tonic::async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// The caller's identity.
    ///
    /// # Errors
    /// `UNAUTHENTICATED` with the reason when the credentials are missing or
    /// not valid.
    async fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        peer_certs: Option<&[Vec<u8>]>,
    ) -> Result<SpiffeId, Status>;
}

/// The SPIFFE ID in a certificate's URI SAN (DER), if it has exactly one.
pub fn spiffe_id_of(cert_der: &[u8]) -> Option<SpiffeId> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let first = uris.next()?;
    if uris.next().is_some() {
        return None;
    }
    first.parse().ok()
}

/// A still-valid client certificate from this CA (renewal, as Istio allows)
/// first, then `A` for everything else. The TLS layer has already verified
/// the client chain against the CA's root and its validity period; this
/// reads the SPIFFE ID from the leaf and checks its trust domain.
#[derive(Debug, Clone)]
pub struct ClientCertOr<A> {
    /// Only identities of this trust domain are accepted from certificates.
    pub trust_domain: String,
    /// For callers without a client certificate.
    pub fallback: A,
}

#[tonic::async_trait]
impl<A: Authenticator> Authenticator for ClientCertOr<A> {
    async fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        peer_certs: Option<&[Vec<u8>]>,
    ) -> Result<SpiffeId, Status> {
        if let Some(leaf) = peer_certs.and_then(|c| c.first()) {
            return match spiffe_id_of(leaf) {
                Some(id) if id.trust_domain == self.trust_domain => Ok(id),
                _ => Err(Status::unauthenticated(format!(
                    "client certificate carries no SPIFFE ID of trust domain {:?}",
                    self.trust_domain
                ))),
            };
        }
        self.fallback.authenticate(metadata, None).await
    }
}

/// Verifies Kubernetes service-account JWTs locally, against the issuer's
/// public keys (what a folder-mode daemon is configured with; in a cluster,
/// the API server's TokenReview does this). The token comes as
/// `authorization: Bearer <jwt>`; it must be signed by one of the keys,
/// unexpired, with audience [`AUDIENCE`] and subject
/// `system:serviceaccount:<namespace>:<name>`.
#[derive(Clone)]
pub struct JwtAuthenticator {
    keys: Vec<(Algorithm, DecodingKey)>,
    trust_domain: String,
}

impl std::fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthenticator")
            .field("keys", &self.keys.len())
            .field("trust_domain", &self.trust_domain)
            .finish()
    }
}

impl JwtAuthenticator {
    /// Keys from PEM public keys (`BEGIN PUBLIC KEY`, RSA or EC P-256, as
    /// the API server's `--service-account-key-file`), for identities in
    /// `trust_domain`.
    ///
    /// # Errors
    /// A PEM block that is neither an RSA nor a P-256 public key.
    pub fn from_pem(pem_text: &str, trust_domain: &str) -> Result<Self, CaError> {
        let mut keys = Vec::new();
        for block in pem::parse_many(pem_text).unwrap_or_default() {
            let one = pem::encode(&block);
            let key = DecodingKey::from_rsa_pem(one.as_bytes())
                .map(|k| (Algorithm::RS256, k))
                .or_else(|_| {
                    DecodingKey::from_ec_pem(one.as_bytes()).map(|k| (Algorithm::ES256, k))
                })
                .map_err(|e| CaError::Invalid {
                    what: "token issuer key".into(),
                    reason: e.to_string(),
                })?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(CaError::Invalid {
                what: "token issuer key".into(),
                reason: "no PEM public key".into(),
            });
        }
        Ok(JwtAuthenticator {
            keys,
            trust_domain: trust_domain.to_owned(),
        })
    }

    /// Checks one token; the identity or why not.
    pub fn verify(&self, token: &str) -> Result<SpiffeId, String> {
        #[derive(serde::Deserialize)]
        struct Claims {
            sub: String,
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("not a JWT: {e}"))?;
        let mut last = "no key for its algorithm".to_owned();
        for (alg, key) in &self.keys {
            if *alg != header.alg {
                continue;
            }
            let mut validation = Validation::new(*alg);
            validation.set_audience(&[AUDIENCE]);
            validation.set_required_spec_claims(&["exp", "aud", "sub"]);
            validation.leeway = 0;
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => {
                    let sub = data.claims.sub;
                    return service_account_identity(&sub, &self.trust_domain)
                        .ok_or_else(|| format!("subject {sub:?} is not a service account"));
                }
                Err(e) => {
                    last = match e.kind() {
                        jsonwebtoken::errors::ErrorKind::InvalidAudience => {
                            format!("audience is not {AUDIENCE:?}")
                        }
                        jsonwebtoken::errors::ErrorKind::ExpiredSignature => "expired".into(),
                        jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                            "signature does not verify".into()
                        }
                        other => format!("{other:?}"),
                    }
                }
            }
        }
        Err(last)
    }
}

/// The identity of a Kubernetes user name `system:serviceaccount:<ns>:<name>`
/// (a token's `sub`, a TokenReview's user), if it is a service account.
pub fn service_account_identity(username: &str, trust_domain: &str) -> Option<SpiffeId> {
    let (ns, sa) = username
        .strip_prefix("system:serviceaccount:")?
        .split_once(':')?;
    (!ns.is_empty() && !sa.is_empty() && !sa.contains(':')).then(|| SpiffeId {
        trust_domain: trust_domain.to_owned(),
        namespace: ns.to_owned(),
        service_account: sa.to_owned(),
    })
}

/// Refusal for a call without a bearer token.
pub fn no_credentials() -> Status {
    Status::unauthenticated("no credentials: send `authorization: Bearer <service account token>`")
}

/// The bearer token of `authorization`, if any.
pub fn bearer(metadata: &tonic::metadata::MetadataMap) -> Option<&str> {
    metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

#[tonic::async_trait]
impl Authenticator for JwtAuthenticator {
    async fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        _peer_certs: Option<&[Vec<u8>]>,
    ) -> Result<SpiffeId, Status> {
        let token = bearer(metadata).ok_or_else(no_credentials)?;
        self.verify(token)
            .map_err(|reason| Status::unauthenticated(format!("token refused: {reason}")))
    }
}

/// The gRPC service: authenticate, then [`Authority::sign`].
pub struct CaService<A> {
    authority: Arc<Authority>,
    authenticator: A,
}

impl<A: Authenticator> CaService<A> {
    /// Serves `authority`, authenticating callers with `authenticator`.
    pub fn new(authority: Arc<Authority>, authenticator: A) -> Self {
        CaService {
            authority,
            authenticator,
        }
    }

    /// As a tonic service, ready for a `Server` router.
    pub fn into_server(self) -> IstioCertificateServiceServer<Self> {
        IstioCertificateServiceServer::new(self)
    }
}

fn status(e: &SignError) -> Status {
    match e {
        SignError::IdentityMismatch { .. } => Status::permission_denied(e.to_string()),
        SignError::MalformedCsr(_) | SignError::TtlTooLong { .. } => {
            Status::invalid_argument(e.to_string())
        }
        SignError::CaExpiresFirst { .. } => Status::failed_precondition(e.to_string()),
        SignError::Signing(_) => Status::internal(e.to_string()),
    }
}

#[tonic::async_trait]
impl<A: Authenticator> IstioCertificateService for CaService<A> {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let peer_certs: Option<Vec<Vec<u8>>> = request
            .peer_certs()
            .map(|certs| certs.iter().map(|c| c.to_vec()).collect());
        let caller = match self
            .authenticator
            .authenticate(request.metadata(), peer_certs.as_deref())
            .await
        {
            Ok(c) => c,
            Err(s) => {
                warn!(
                    reason = s.message(),
                    "certificate request refused: not authenticated"
                );
                return Err(s);
            }
        };
        let req = request.into_inner();
        let ttl = u64::try_from(req.validity_duration)
            .map_err(|_| Status::invalid_argument("validity_duration must not be negative"))?;
        let ttl = (ttl > 0).then(|| Duration::from_secs(ttl));
        match self.authority.sign(&req.csr, &caller, ttl) {
            Ok(cert_chain) => {
                info!(identity = %caller, ttl_secs = ttl.map(|t| t.as_secs()), "certificate issued");
                Ok(Response::new(IstioCertificateResponse { cert_chain }))
            }
            Err(e) => {
                warn!(identity = %caller, error = %e, "certificate request refused");
                Err(status(&e))
            }
        }
    }
}
