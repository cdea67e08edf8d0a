//! `networking.istio.io` Gateway: a load balancer at the edge of the mesh.
//! Follows `istio.networking.v1.Gateway` field for field.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Istio `Gateway` spec.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "Gateway",
    namespaced,
    shortname = "gw"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    /// Servers (ports with hosts) exposed.
    #[serde(default)]
    pub servers: Vec<Server>,
    /// Labels of the gateway pods this configuration applies to.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
}

/// Istio `Server`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    /// Port the proxy listens on.
    pub port: Port,
    /// Address to bind to.
    #[serde(default)]
    pub bind: Option<String>,
    /// Hosts exposed, `[namespace/]dnsName`, wildcards allowed.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// TLS settings.
    #[serde(default)]
    pub tls: Option<ServerTlsSettings>,
    /// Loopback endpoint to forward to.
    #[serde(default)]
    pub default_endpoint: Option<String>,
    /// Server name (unique in the gateway).
    #[serde(default)]
    pub name: Option<String>,
}

/// Istio `Port` (Gateway form).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Port {
    /// Port number.
    pub number: u32,
    /// `HTTP`, `HTTPS`, `GRPC`, `HTTP2`, `MONGO`, `TCP`, `TLS`.
    #[serde(default)]
    pub protocol: String,
    /// Port name.
    #[serde(default)]
    pub name: String,
    /// Deprecated.
    #[serde(default)]
    pub target_port: Option<u32>,
}

/// Istio `ServerTLSSettings`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTlsSettings {
    /// Redirect plain HTTP to HTTPS.
    #[serde(default)]
    pub https_redirect: Option<bool>,
    /// TLS mode.
    #[serde(default)]
    pub mode: Option<ServerTlsMode>,
    /// Certificate file.
    #[serde(default)]
    pub server_certificate: Option<String>,
    /// Key file.
    #[serde(default)]
    pub private_key: Option<String>,
    /// CA bundle file for client certificates.
    #[serde(default)]
    pub ca_certificates: Option<String>,
    /// CRL file.
    #[serde(default)]
    pub ca_crl: Option<String>,
    /// Secret holding the certificate.
    #[serde(default)]
    pub credential_name: Option<String>,
    /// Several secrets (RSA + ECDSA).
    #[serde(default)]
    pub credential_names: Vec<String>,
    /// Several inline certificate files.
    #[serde(default)]
    pub tls_certificates: Vec<TlsCertificate>,
    /// Secret holding the CA bundle.
    #[serde(default)]
    pub ca_cert_credential_name: Option<String>,
    /// Accepted client SANs.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    /// Accepted client SPKI hashes.
    #[serde(default)]
    pub verify_certificate_spki: Vec<String>,
    /// Accepted client certificate hashes.
    #[serde(default)]
    pub verify_certificate_hash: Vec<String>,
    /// Minimum TLS version.
    #[serde(default)]
    pub min_protocol_version: Option<TlsProtocol>,
    /// Maximum TLS version.
    #[serde(default)]
    pub max_protocol_version: Option<TlsProtocol>,
    /// Cipher suites.
    #[serde(default)]
    pub cipher_suites: Vec<String>,
    /// ECDH curves.
    #[serde(default)]
    pub ecdh_curves: Vec<String>,
    /// Client certificates are verified, but one that fails (or none,
    /// under `OPTIONAL_MUTUAL`) is let through (Envoy's
    /// `trust_chain_verification: ACCEPT_UNTRUSTED`).
    #[serde(default)]
    pub insecure_skip_verify: Option<bool>,
}

/// Istio `ServerTLSSettings.TLSmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(missing_docs)]
pub enum ServerTlsMode {
    Passthrough,
    Simple,
    Mutual,
    AutoPassthrough,
    IstioMutual,
    OptionalMutual,
}

/// Istio `ServerTLSSettings.TLSProtocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[allow(missing_docs)]
pub enum TlsProtocol {
    #[serde(rename = "TLS_AUTO")]
    Auto,
    #[serde(rename = "TLSV1_0")]
    V1_0,
    #[serde(rename = "TLSV1_1")]
    V1_1,
    #[serde(rename = "TLSV1_2")]
    V1_2,
    #[serde(rename = "TLSV1_3")]
    V1_3,
}

/// Istio `ServerTLSSettings.TLSCertificate`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsCertificate {
    /// Certificate file.
    #[serde(default)]
    pub server_certificate: Option<String>,
    /// Key file.
    #[serde(default)]
    pub private_key: Option<String>,
    /// CA bundle file.
    #[serde(default)]
    pub ca_certificates: Option<String>,
}
