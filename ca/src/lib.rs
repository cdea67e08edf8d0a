//! The mesh's certificate authority, as istiod's built-in CA: a root of
//! trust that is either self-signed (ECDSA P-256, 10 years, persisted so a
//! restart keeps it) or plugged in from Istio's `cacerts` layout
//! (`ca-cert.pem`, `ca-key.pem`, `cert-chain.pem`, `root-cert.pem`), and
//! signing of certificate signing requests into workload certificates whose
//! only SAN is the caller's SPIFFE ID (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`).
//!
//! What [`Authority::sign`] refuses, each as a [`SignError`] naming the
//! reason: a CSR that does not parse or whose signature does not verify,
//! one that asks for any identity other than the caller's, and a lifetime
//! over the cap (Istio's `MAX_WORKLOAD_CERT_TTL`, default 90 days).
//!
//! RSA keys are read (Istio's sample `cacerts` are RSA 2048) but not
//! generated: the ring backend cannot generate RSA keys, so a self-signed
//! root is ECDSA P-256.

pub mod service;

use std::fmt;
use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

/// Default workload certificate lifetime (Istio `DEFAULT_WORKLOAD_CERT_TTL`): 24 hours.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest workload certificate lifetime (Istio `MAX_WORKLOAD_CERT_TTL`): 90 days.
pub const MAX_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// Lifetime of a self-signed root (Istio `CITADEL_SELF_SIGNED_CA_CERT_TTL`): 10 years.
pub const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A workload identity, `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    /// The trust domain (Istio's mesh `trustDomain`, default `cluster.local`).
    pub trust_domain: String,
    /// The workload's namespace.
    pub namespace: String,
    /// The workload's service account.
    pub service_account: String,
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl std::str::FromStr for SpiffeId {
    type Err = String;

    /// Parses `spiffe://td/ns/NS/sa/SA`; anything else is an error naming the input.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not spiffe://<trust-domain>/ns/<namespace>/sa/<account>");
        let rest = s.strip_prefix("spiffe://").ok_or_else(bad)?;
        match rest.split('/').collect::<Vec<_>>().as_slice() {
            [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty() => {
                Ok(SpiffeId {
                    trust_domain: (*td).to_owned(),
                    namespace: (*ns).to_owned(),
                    service_account: (*sa).to_owned(),
                })
            }
            _ => Err(bad()),
        }
    }
}

/// Why the CA could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file of the `cacerts` layout (or the persisted root) is missing or unreadable.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A certificate or key that does not parse, or a key that does not match.
    #[error("{what}: {reason}")]
    Invalid {
        /// Which input (`ca-cert.pem`, `ca-key.pem`, ...).
        what: String,
        /// What is wrong.
        reason: String,
    },
}

/// Why a CSR was refused. Nothing is issued in any of these cases.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// Not a PEM CSR, an unsupported extension, or a signature that does not verify.
    #[error("malformed CSR: {0}")]
    MalformedCsr(String),
    /// The CSR asks for names other than exactly the caller's identity.
    #[error("the CSR asks for {requested:?}, but the caller is {caller}")]
    IdentityMismatch {
        /// The SANs in the CSR.
        requested: Vec<String>,
        /// The authenticated identity.
        caller: String,
    },
    /// The requested lifetime exceeds the cap.
    #[error("requested TTL {requested:?} is greater than the max allowed TTL {max:?}")]
    TtlTooLong {
        /// As requested.
        requested: Duration,
        /// The cap.
        max: Duration,
    },
    /// The signing certificate expires before the requested lifetime ends.
    #[error("the CA certificate expires at {ca_not_after}, before the requested lifetime ends")]
    CaExpiresFirst {
        /// When the signing certificate expires (RFC 3339).
        ca_not_after: String,
    },
    /// Signing itself failed (an internal error).
    #[error("signing failed: {0}")]
    Signing(String),
}

/// The certificate authority: a signing certificate and key, the chain
/// from it up to the root, and the root.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// PEM of the signing certificate.
    signing_pem: String,
    /// PEM certificates between the signing certificate and the root (may be empty).
    intermediates: Vec<String>,
    /// PEM of the root.
    root_pem: String,
    /// The signing certificate's `notAfter`.
    signing_not_after: OffsetDateTime,
    /// Longest lifetime granted.
    pub max_ttl: Duration,
    /// Lifetime when the request names none.
    pub default_ttl: Duration,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("signing_not_after", &self.signing_not_after)
            .field("intermediates", &self.intermediates.len())
            .field("max_ttl", &self.max_ttl)
            .finish_non_exhaustive()
    }
}

fn invalid(what: &str, reason: impl fmt::Display) -> CaError {
    CaError::Invalid {
        what: what.to_owned(),
        reason: reason.to_string(),
    }
}

fn read(dir: &Path, name: &str) -> Result<String, CaError> {
    let path = dir.join(name);
    std::fs::read_to_string(&path).map_err(|source| CaError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// The PEM blocks of `text` that hold certificates, each re-encoded alone.
fn certificates(text: &str) -> Vec<String> {
    pem::parse_many(text)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| {
            pem::encode_config(
                &p,
                pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
            )
        })
        .collect()
}

/// A key from PEM: PKCS#8 (`PRIVATE KEY`), or PKCS#1 RSA (`RSA PRIVATE KEY`,
/// as Istio's sample `ca-key.pem`).
fn key_from_pem(text: &str) -> Result<KeyPair, CaError> {
    if let Ok(k) = KeyPair::from_pem(text) {
        return Ok(k);
    }
    let block = pem::parse(text).map_err(|e| invalid("ca-key.pem", e))?;
    match block.tag() {
        "RSA PRIVATE KEY" => {
            // ring reads PKCS#8 only: wrap the PKCS#1 key in a PrivateKeyInfo.
            let pkcs8 = pkcs1_to_pkcs8(block.contents());
            let der = rustls_pki_types::PrivatePkcs8KeyDer::from(pkcs8);
            KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_RSA_SHA256)
                .map_err(|e| invalid("ca-key.pem", e))
        }
        other => Err(invalid(
            "ca-key.pem",
            format!("unsupported key type {other:?}: use PKCS#8 (`openssl pkcs8 -topk8 -nocrypt`)"),
        )),
    }
}

/// PKCS#8 `PrivateKeyInfo` (RFC 5208) around a PKCS#1 RSA key:
/// `SEQUENCE { INTEGER 0, SEQUENCE { rsaEncryption, NULL }, OCTET STRING key }`.
fn pkcs1_to_pkcs8(pkcs1: &[u8]) -> Vec<u8> {
    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = body.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
        out.extend_from_slice(body);
        out
    }
    const RSA_ENCRYPTION: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut body = vec![0x02, 0x01, 0x00];
    body.extend_from_slice(&RSA_ENCRYPTION);
    body.extend(tlv(0x04, pkcs1));
    tlv(0x30, &body)
}

fn not_after(cert_pem: &str, what: &str) -> Result<OffsetDateTime, CaError> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|e| invalid(what, e))?;
    let cert = pem.parse_x509().map_err(|e| invalid(what, e))?;
    Ok(cert.validity().not_after.to_datetime())
}

fn random_serial() -> Result<SerialNumber, String> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| "no randomness for a serial number".to_owned())?;
    bytes[0] &= 0x7f; // positive
    Ok(SerialNumber::from_slice(&bytes))
}

impl Authority {
    /// A new self-signed root for `trust_domain` (ECDSA P-256, [`ROOT_TTL`];
    /// subject `O=<trust-domain>`, as Istio's self-signed CA), which also
    /// signs workload certificates. See [`Authority::to_pem`] to persist it.
    ///
    /// # Errors
    /// Key generation or signing failed (no system randomness).
    pub fn self_signed(trust_domain: &str) -> Result<Authority, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| invalid("root key", e))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + ROOT_TTL;
        params.serial_number = Some(random_serial().map_err(|e| invalid("root", e))?);
        let cert = params
            .self_signed(&key)
            .map_err(|e| invalid("root certificate", e))?;
        let pem = cert.pem();
        Authority::from_parts(&pem, key, Vec::new(), pem.clone())
    }

    /// The `cacerts` layout: `ca-cert.pem` (signing certificate), `ca-key.pem`
    /// (its key, PKCS#8 or PKCS#1 RSA), `cert-chain.pem` (the signing
    /// certificate and those above it, up to and possibly including the
    /// root) and `root-cert.pem`.
    ///
    /// # Errors
    /// A missing file, or a certificate or key that does not parse.
    pub fn from_cacerts(dir: &Path) -> Result<Authority, CaError> {
        let chain = read(dir, "cert-chain.pem").unwrap_or_default();
        Authority::from_pem(
            &read(dir, "ca-cert.pem")?,
            &read(dir, "ca-key.pem")?,
            &chain,
            &read(dir, "root-cert.pem")?,
        )
    }

    /// The `cacerts` layout from its four texts (as kept in a Secret:
    /// Istio's `istio-ca-secret` or `cacerts`); `chain` may be empty.
    ///
    /// # Errors
    /// A certificate or key that does not parse.
    pub fn from_pem(cert: &str, key: &str, chain: &str, root: &str) -> Result<Authority, CaError> {
        let key = key_from_pem(key)?;
        let root_block = certificates(root)
            .into_iter()
            .next()
            .ok_or_else(|| invalid("root-cert.pem", "no certificate"))?;
        let signing = certificates(cert)
            .into_iter()
            .next()
            .ok_or_else(|| invalid("ca-cert.pem", "no certificate"))?;
        // The chain between: cert-chain.pem without the signing cert and the root.
        let intermediates = certificates(chain)
            .into_iter()
            .filter(|c| *c != signing && *c != root_block)
            .collect();
        Authority::from_parts(&signing, key, intermediates, root_block)
    }

    /// Reads the CA persisted in `dir` (the `cacerts` layout, as written by
    /// [`Authority::to_pem`]), or creates a self-signed one there: the
    /// daemon's folder-mode equivalent of Istio's `istio-ca-secret`.
    ///
    /// # Errors
    /// An unreadable or invalid persisted CA, or a folder that cannot be written.
    pub fn load_or_create(dir: &Path, trust_domain: &str) -> Result<Authority, CaError> {
        if dir.join("ca-key.pem").exists() {
            return Authority::from_cacerts(dir);
        }
        let ca = Authority::self_signed(trust_domain)?;
        let io = |path: &Path, source| CaError::Io {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        for (name, text, mode) in ca.to_pem() {
            let path = dir.join(name);
            write_private(&path, &text, mode).map_err(|e| io(&path, e))?;
        }
        Ok(ca)
    }

    fn from_parts(
        signing_pem: &str,
        key: KeyPair,
        intermediates: Vec<String>,
        root_pem: String,
    ) -> Result<Authority, CaError> {
        let signing_not_after = not_after(signing_pem, "ca-cert.pem")?;
        let issuer =
            Issuer::from_ca_cert_pem(signing_pem, key).map_err(|e| invalid("ca-cert.pem", e))?;
        Ok(Authority {
            issuer,
            signing_pem: signing_pem.to_owned(),
            intermediates,
            root_pem,
            signing_not_after,
            max_ttl: MAX_TTL,
            default_ttl: DEFAULT_TTL,
        })
    }

    /// The root certificate, PEM: what every workload trusts (`ROOTCA` over
    /// SDS, the `istio-ca-root-cert` ConfigMap's `root-cert.pem`).
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The files of the `cacerts` layout for this CA, `(name, PEM, unix mode)`;
    /// the key is the only secret (mode 0600).
    pub fn to_pem(&self) -> Vec<(&'static str, String, u32)> {
        let mut chain = self.signing_pem.clone();
        for c in &self.intermediates {
            chain.push_str(c);
        }
        vec![
            ("ca-cert.pem", self.signing_pem.clone(), 0o644),
            ("ca-key.pem", self.issuer.key().serialize_pem(), 0o600),
            ("cert-chain.pem", chain, 0o644),
            ("root-cert.pem", self.root_pem.clone(), 0o644),
        ]
    }

    /// Signs `csr_pem` for `caller`, the authenticated identity, for `ttl`
    /// (`None` or zero: [`Authority::default_ttl`]). The certificate's only
    /// SAN is `caller`'s URI (marked critical: the subject is empty), key
    /// usages digital signature and key encipherment, extended key usages
    /// server and client auth, not a CA. Returns the chain as Istio's CA
    /// API does: leaf first, then intermediates, root last (PEM each).
    ///
    /// # Errors
    /// See [`SignError`]: the CSR must parse, verify, and ask for exactly
    /// `caller` (or nothing); the lifetime must be within the cap and end
    /// before the signing certificate does.
    pub fn sign(
        &self,
        csr_pem: &str,
        caller: &SpiffeId,
        ttl: Option<Duration>,
    ) -> Result<Vec<String>, SignError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| SignError::MalformedCsr(e.to_string()))?;
        let expected = caller.to_string();
        let requested: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(u) => u.as_str().to_owned(),
                SanType::DnsName(d) => format!("DNS:{}", d.as_str()),
                SanType::IpAddress(ip) => format!("IP:{ip}"),
                SanType::Rfc822Name(m) => format!("email:{}", m.as_str()),
                other => format!("{other:?}"),
            })
            .collect();
        if requested.iter().any(|r| *r != expected) {
            return Err(SignError::IdentityMismatch {
                requested,
                caller: expected,
            });
        }
        let ttl = ttl.filter(|t| !t.is_zero()).unwrap_or(self.default_ttl);
        if ttl > self.max_ttl {
            return Err(SignError::TtlTooLong {
                requested: ttl,
                max: self.max_ttl,
            });
        }
        let now = OffsetDateTime::now_utc();
        let end = now + ttl;
        if end > self.signing_not_after {
            return Err(SignError::CaExpiresFirst {
                ca_not_after: self
                    .signing_not_after
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
            });
        }
        let uri = expected
            .clone()
            .try_into()
            .map_err(|e: rcgen::Error| SignError::MalformedCsr(e.to_string()))?;
        let params = leaf_params(vec![SanType::URI(uri)], now, end)?;
        let request = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        };
        let leaf = request
            .signed_by(&self.issuer)
            .map_err(|e| SignError::Signing(e.to_string()))?;
        let mut chain = vec![leaf.pem()];
        if self.signing_pem != self.root_pem {
            chain.push(self.signing_pem.clone());
        }
        chain.extend(self.intermediates.iter().cloned());
        chain.push(self.root_pem.clone());
        Ok(chain)
    }
}

impl Authority {
    /// A server certificate for the daemon itself (its TLS ports: 15012
    /// xDS and CA, 15017 webhooks), with `dns_names` as DNS SANs (Istio's:
    /// `istiod.istio-system.svc`, ...), a fresh P-256 key, for `ttl`.
    /// Returns `(chain PEM: leaf, intermediates, root; key PEM)`.
    ///
    /// # Errors
    /// A name that is not a valid DNS name, or the CA expiring first.
    pub fn issue_server_cert(
        &self,
        dns_names: &[String],
        ttl: Duration,
    ) -> Result<(String, String), SignError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| SignError::Signing(e.to_string()))?;
        let sans = CertificateParams::new(dns_names.to_vec())
            .map_err(|e| SignError::MalformedCsr(format!("DNS names {dns_names:?}: {e}")))?
            .subject_alt_names;
        let now = OffsetDateTime::now_utc();
        let params = leaf_params(sans, now, (now + ttl).min(self.signing_not_after))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| SignError::Signing(e.to_string()))?;
        let mut chain = cert.pem();
        if self.signing_pem != self.root_pem {
            chain.push_str(&self.signing_pem);
        }
        for c in &self.intermediates {
            chain.push_str(c);
        }
        chain.push_str(&self.root_pem);
        Ok((chain, key.serialize_pem()))
    }
}

/// A leaf certificate's parameters: `sans` only (empty subject, so the SAN
/// is critical), digital signature and key encipherment, server and client
/// auth, not a CA, from a minute before `now` (slack for clocks behind
/// ours, as Istio's CA allows) to `not_after`, a random serial.
fn leaf_params(
    sans: Vec<SanType>,
    now: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, SignError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = not_after;
    params.serial_number = Some(random_serial().map_err(SignError::Signing)?);
    Ok(params)
}

/// Writes `text` to `path` with `mode`, replacing it.
fn write_private(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    f.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_round_trip_and_bad_ones_are_named() {
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
            .parse()
            .unwrap();
        assert_eq!(id.namespace, "default");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
        );
        for bad in [
            "spiffe://cluster.local/ns/default",
            "https://x/ns/a/sa/b",
            "spiffe:///ns/a/sa/b",
        ] {
            let e = bad.parse::<SpiffeId>().unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }
}
