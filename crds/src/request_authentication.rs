//! `security.istio.io` RequestAuthentication: which JSON Web Tokens a
//! workload's proxy validates. Follows
//! `istio.security.v1.RequestAuthentication` field for field.
//!
//! A request with a token that fails validation is refused (401); one
//! without a token passes, unauthenticated, unless a rule's `presence` is
//! `REQUIRED`. Who may do what is then an AuthorizationPolicy's
//! `requestPrincipals` (`<iss>/<sub>`) and `request.auth.*` conditions.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::MatchLabelSelector;
use crate::authorization_policy::PolicyTargetReference;

/// Istio `RequestAuthentication` spec. Scope as AuthorizationPolicy's: the
/// root namespace without a `selector` (the mesh), a namespace, or the
/// workloads its `selector` picks.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "RequestAuthentication",
    namespaced,
    shortname = "ra"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthenticationSpec {
    /// The workloads this applies to (`matchLabels`); none: the namespace.
    #[serde(default)]
    pub selector: Option<MatchLabelSelector>,
    /// A Gateway API gateway or a waypoint's service (instead of `selector`).
    #[serde(default)]
    pub target_ref: Option<PolicyTargetReference>,
    /// Several of `targetRef`.
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetReference>,
    /// The tokens accepted, one issuer each.
    #[serde(default)]
    pub jwt_rules: Vec<JwtRule>,
}

/// Istio `JWTRule`: one issuer, its keys and where its tokens are found.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    /// The `iss` a token must carry.
    #[serde(default)]
    pub issuer: String,
    /// Accepted `aud` values; none: any.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Where the JSON Web Key Set is served (`https://...`).
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// `jwksUri` as older files spell it.
    #[serde(default, rename = "jwks_uri")]
    pub jwks_uri_snake: Option<String>,
    /// The JSON Web Key Set itself, as a JSON string.
    #[serde(default)]
    pub jwks: Option<String>,
    /// Headers the token is read from; none: `Authorization: Bearer <token>`.
    #[serde(default)]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters the token is read from (default `access_token`).
    #[serde(default)]
    pub from_params: Vec<String>,
    /// Cookies the token is read from.
    #[serde(default)]
    pub from_cookies: Vec<String>,
    /// A header to carry the verified payload (base64url JSON) upstream.
    #[serde(default)]
    pub output_payload_to_header: Option<String>,
    /// Keep the token in the request sent upstream (default: removed).
    #[serde(default)]
    pub forward_original_token: Option<bool>,
    /// Claims copied into request headers.
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// How long fetching `jwksUri` may take (default 5 s).
    #[serde(default)]
    pub timeout: Option<crate::Duration>,
    /// Claims holding space-separated values (besides `scope` and
    /// `permission`), matched per value.
    #[serde(default)]
    pub space_delimited_claims: Vec<String>,
    /// `OPTIONAL` (default: a request without a token passes) or `REQUIRED`.
    #[serde(default)]
    pub presence: Option<Presence>,
}

/// Istio `JWTHeader`: a header and the prefix before the token.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtHeader {
    /// The header's name.
    pub name: String,
    /// Stripped before the token (`Bearer `).
    #[serde(default)]
    pub prefix: Option<String>,
}

/// Istio `ClaimToHeader`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimToHeader {
    /// The header written.
    pub header: String,
    /// The claim copied (a string, number or boolean claim).
    pub claim: String,
}

/// Istio `JWTRule.Presence`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Presence {
    /// A request without a token passes (unauthenticated).
    Optional,
    /// A request without a token is refused (401).
    Required,
}
