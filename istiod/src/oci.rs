//! Pulling a WasmPlugin's module from an OCI registry (`oci://` URLs and
//! URLs without a scheme), as Istio's agent pulls it (`pkg/wasm/imagefetcher.go`)
//! over the OCI distribution API:
//!
//! - **Reference**: `REGISTRY/REPOSITORY[:TAG|@sha256:DIGEST]`; a first
//!   component without a `.` or `:` (and not `localhost`) is a Docker Hub
//!   repository (`index.docker.io`, `library/` for a single name); no tag
//!   is `latest`. Loopback and `localhost` registries are spoken to over
//!   plain HTTP (as go-containerregistry does), all others over HTTPS.
//! - **Authentication**: the registry's challenge answered: `Bearer
//!   realm=..., service=..., scope=...` with a token fetched from the realm,
//!   `Basic` with the login; the login is the plugin's pull secret's entry
//!   for the registry (a Docker config's `auths`: `auth`, or `username` and
//!   `password`), else none (anonymous).
//! - **Manifest**: an OCI or Docker image manifest; an index (manifest
//!   list) gives the `linux/amd64` entry, else its first. Its digest (the
//!   `Docker-Content-Digest` header, else the SHA-256 of its bytes) is what
//!   a WasmPlugin's `sha256` names.
//! - **Module**: the layer of a Wasm artifact (a media type ending in
//!   `+wasm`, `application/wasm`), else the file `plugin.wasm` of the
//!   image's (gzipped) tar layers (Istio's Docker image variant). Each blob
//!   read is checked against its digest.

use std::io::Read;
use std::time::Duration;

use serde_json::Value;

use crate::wasm::MAX_MODULE_BYTES;

/// The media types a manifest is asked for in.
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// A pulled module: its bytes and the digest of the image's manifest
/// (lowercase hex, without `sha256:`).
#[derive(Debug)]
pub(crate) struct Pulled {
    pub module: Vec<u8>,
    pub digest: String,
}

/// An image reference, parsed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Reference {
    /// `host[:port]`.
    pub registry: String,
    pub repository: String,
    /// A tag, or `sha256:<hex>`.
    pub reference: String,
}

impl Reference {
    /// Parses `image` (without `oci://`).
    pub fn parse(image: &str) -> Result<Reference, String> {
        let (name, reference) = match image.split_once('@') {
            Some((n, d)) => (n, d.to_owned()),
            None => {
                let slash = image.rfind('/').map_or(0, |i| i + 1);
                match image[slash..].rfind(':') {
                    Some(colon) => (
                        &image[..slash + colon],
                        image[slash + colon + 1..].to_owned(),
                    ),
                    None => (image, "latest".to_owned()),
                }
            }
        };
        let (first, rest) = name.split_once('/').unwrap_or(("", name));
        let (registry, repository) =
            if first.contains('.') || first.contains(':') || first == "localhost" {
                (first.to_owned(), rest.to_owned())
            } else if first.is_empty() {
                ("index.docker.io".to_owned(), format!("library/{rest}"))
            } else {
                ("index.docker.io".to_owned(), name.to_owned())
            };
        if repository.is_empty() || reference.is_empty() {
            return Err(format!("{image:?} is not an image reference"));
        }
        Ok(Reference {
            registry,
            repository,
            reference,
        })
    }

    /// Whether the tag is `latest` (pulled again each time, as Istio's
    /// default pull policy has it).
    pub fn is_latest(&self) -> bool {
        self.reference == "latest"
    }

    fn base(&self) -> String {
        let host = self
            .registry
            .rsplit_once(':')
            .map_or(self.registry.as_str(), |(h, _)| h);
        let plain = host == "localhost"
            || host == "[::1]"
            || host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|a| a.is_loopback());
        let scheme = if plain { "http" } else { "https" };
        format!("{scheme}://{}/v2/{}", self.registry, self.repository)
    }
}

/// A registry session: the agent, the login (`Basic` credentials,
/// base64 of `user:password`), and the `Authorization` value once the
/// registry's challenge was answered.
struct Session {
    agent: ureq::Agent,
    login: Option<String>,
    authorization: Option<String>,
}

/// The `Basic` credentials (base64 of `user:password`) for `registry` in
/// a Docker config (`{"auths": {"<registry>": {"auth": ...}}}`); keys may
/// carry a scheme and a path (`https://index.docker.io/v1/`).
pub(crate) fn login_for(docker_config: &str, registry: &str) -> Result<Option<String>, String> {
    use base64::Engine;
    let config: Value =
        serde_json::from_str(docker_config).map_err(|e| format!("the pull secret: {e}"))?;
    let hub = |r: &str| matches!(r, "index.docker.io" | "docker.io" | "registry-1.docker.io");
    let entry = config
        .get("auths")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .find(|(key, _)| {
            let host = key.split_once("://").map_or(key.as_str(), |(_, h)| h);
            let host = host.split('/').next().unwrap_or_default();
            host == registry || (hub(host) && hub(registry))
        })
        .map(|(_, v)| v);
    let Some(entry) = entry else {
        return Ok(None);
    };
    if let Some(auth) = entry.get("auth").and_then(Value::as_str) {
        return Ok(Some(auth.to_owned()));
    }
    let field = |k: &str| entry.get(k).and_then(Value::as_str).unwrap_or_default();
    Ok(Some(base64::engine::general_purpose::STANDARD.encode(
        format!("{}:{}", field("username"), field("password")),
    )))
}

impl Session {
    /// GETs `url` accepting `accept`, answering a bearer challenge once.
    /// Returns the body (at most [`MAX_MODULE_BYTES`]) and the
    /// `Docker-Content-Digest` header.
    fn get(&mut self, url: &str, accept: &str) -> Result<(Vec<u8>, Option<String>), String> {
        for attempt in 0..2 {
            let mut request = self.agent.get(url).header("Accept", accept);
            if let Some(authorization) = &self.authorization {
                request = request.header("Authorization", authorization);
            }
            let mut response = request.call().map_err(|e| format!("GET {url}: {e}"))?;
            let status = response.status().as_u16();
            if status == 401 && attempt == 0 {
                let challenge = response
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                self.authorization = Some(self.answer(&challenge)?);
                continue;
            }
            if status != 200 {
                return Err(format!("GET {url}: HTTP {status}"));
            }
            let digest = response
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = response
                .body_mut()
                .with_config()
                .limit(MAX_MODULE_BYTES)
                .read_to_vec()
                .map_err(|e| format!("GET {url}: {e}"))?;
            return Ok((body, digest));
        }
        Err(format!("GET {url}: refused after authenticating"))
    }

    /// The `Authorization` answering `challenge`: `Basic` with the login,
    /// or `Bearer` with a token from the challenge's realm (asked with the
    /// login, if any).
    fn answer(&self, challenge: &str) -> Result<String, String> {
        if challenge.starts_with("Basic") {
            let login = self.login.as_ref().ok_or(
                "the registry wants a login, and the plugin's pull secret has none for it",
            )?;
            return Ok(format!("Basic {login}"));
        }
        let params = challenge
            .strip_prefix("Bearer ")
            .ok_or_else(|| format!("unauthorized, with no bearer challenge ({challenge:?})"))?;
        let mut realm = None;
        let mut query = Vec::new();
        for part in split_params(params) {
            let Some((k, v)) = part.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"');
            match k.trim() {
                "realm" => realm = Some(v.to_owned()),
                k @ ("service" | "scope") => query.push((k.to_owned(), v.to_owned())),
                _ => {}
            }
        }
        let realm = realm.ok_or("a bearer challenge without a realm")?;
        let mut request = self.agent.get(&realm);
        for (k, v) in &query {
            request = request.query(k, v);
        }
        if let Some(login) = &self.login {
            request = request.header("Authorization", &format!("Basic {login}"));
        }
        let mut response = request
            .call()
            .map_err(|e| format!("token from {realm}: {e}"))?;
        if response.status().as_u16() != 200 {
            return Err(format!("token from {realm}: HTTP {}", response.status()));
        }
        let body = response
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| format!("token from {realm}: {e}"))?;
        let json: Value =
            serde_json::from_slice(&body).map_err(|e| format!("token from {realm}: {e}"))?;
        json.get("token")
            .or_else(|| json.get("access_token"))
            .and_then(Value::as_str)
            .map(|t| format!("Bearer {t}"))
            .ok_or_else(|| format!("token from {realm}: no token in the answer"))
    }
}

/// Splits `a="x,y",b=z` at the commas outside quotes.
fn split_params(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Pulls the module of `image` (blocking), within `timeout`, with the
/// pull secret `docker_config` (a Docker config's JSON) if any.
pub(crate) fn pull(
    image: &Reference,
    timeout: Duration,
    docker_config: Option<&str>,
) -> Result<Pulled, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let login = match docker_config {
        Some(config) => login_for(config, &image.registry)?,
        None => None,
    };
    let mut session = Session {
        agent,
        login,
        authorization: None,
    };
    let base = image.base();
    let (body, header) = session.get(&format!("{base}/manifests/{}", image.reference), ACCEPT)?;
    let digest = header
        .and_then(|d| d.strip_prefix("sha256:").map(str::to_owned))
        .unwrap_or_else(|| sha256_hex(&body));
    let mut manifest: Value =
        serde_json::from_slice(&body).map_err(|e| format!("the image's manifest: {e}"))?;
    if let Some(entries) = manifest.get("manifests").and_then(Value::as_array) {
        let platform = |e: &Value, key: &str| {
            e.pointer(&format!("/platform/{key}"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let chosen = entries
            .iter()
            .find(|e| {
                platform(e, "os").as_deref() == Some("linux")
                    && platform(e, "architecture").as_deref() == Some("amd64")
            })
            .or_else(|| entries.first())
            .and_then(|e| e.get("digest").and_then(Value::as_str))
            .ok_or("an image index without manifests")?
            .to_owned();
        let (body, _) = session.get(&format!("{base}/manifests/{chosen}"), ACCEPT)?;
        check_digest(&chosen, &body)?;
        manifest =
            serde_json::from_slice(&body).map_err(|e| format!("the image's manifest: {e}"))?;
    }
    let layers = manifest
        .get("layers")
        .and_then(Value::as_array)
        .ok_or("the image's manifest has no layers")?;
    let blob = |session: &mut Session, layer: &Value| -> Result<Vec<u8>, String> {
        let digest = layer
            .get("digest")
            .and_then(Value::as_str)
            .ok_or("a layer without a digest")?;
        let (bytes, _) = session.get(&format!("{base}/blobs/{digest}"), "*/*")?;
        check_digest(digest, &bytes)?;
        Ok(bytes)
    };
    let media = |layer: &Value| {
        layer
            .get("mediaType")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    // A Wasm artifact: the module is a layer.
    if let Some(layer) = layers.iter().find(|l| {
        let m = media(l);
        m.ends_with("+wasm") || m == "application/wasm"
    }) {
        return Ok(Pulled {
            module: blob(&mut session, layer)?,
            digest,
        });
    }
    // An image: `plugin.wasm` in one of its layers.
    for layer in layers {
        let bytes = blob(&mut session, layer)?;
        let gzipped = bytes.starts_with(&[0x1f, 0x8b]);
        let found = if gzipped {
            plugin_in_tar(flate2::read::GzDecoder::new(bytes.as_slice()))?
        } else {
            plugin_in_tar(bytes.as_slice())?
        };
        if let Some(module) = found {
            return Ok(Pulled { module, digest });
        }
    }
    Err("the image has no Wasm layer and no plugin.wasm".into())
}

fn check_digest(digest: &str, bytes: &[u8]) -> Result<(), String> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex == sha256_hex(bytes) => Ok(()),
        Some(_) => Err(format!("the blob {digest} does not have that digest")),
        None => Err(format!("{digest:?}: only sha256 digests are checked")),
    }
}

/// The file `plugin.wasm` (at the root) of a tar stream, if there.
fn plugin_in_tar(reader: impl Read) -> Result<Option<Vec<u8>>, String> {
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(|e| format!("a layer: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("a layer: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("a layer: {e}"))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_owned();
        if path == "plugin.wasm" {
            if entry.size() > MAX_MODULE_BYTES {
                return Err("plugin.wasm is too large".into());
            }
            let mut module = Vec::new();
            entry
                .read_to_end(&mut module)
                .map_err(|e| format!("plugin.wasm: {e}"))?;
            return Ok(Some(module));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn references_parse_as_docker_names_them() {
        let r = |s: &str| Reference::parse(s).unwrap();
        assert_eq!(
            r("ghcr.io/istio/wasm/headers:1.0"),
            Reference {
                registry: "ghcr.io".into(),
                repository: "istio/wasm/headers".into(),
                reference: "1.0".into()
            }
        );
        let hub = r("someone/plugin");
        assert_eq!(
            (hub.registry.as_str(), hub.repository.as_str()),
            ("index.docker.io", "someone/plugin")
        );
        assert!(hub.is_latest());
        assert_eq!(r("plugin:2").repository, "library/plugin");
        let pinned = r("localhost:5000/p@sha256:abc");
        assert_eq!(
            (pinned.registry.as_str(), pinned.reference.as_str()),
            ("localhost:5000", "sha256:abc")
        );
        assert_eq!(pinned.base(), "http://localhost:5000/v2/p");
        assert_eq!(r("127.0.0.1:5000/p:1").base(), "http://127.0.0.1:5000/v2/p");
        assert_eq!(r("ghcr.io/p:1").base(), "https://ghcr.io/v2/p");
        assert!(Reference::parse("ghcr.io/").is_err());
        // Pull secrets: the registry's entry, by host (Docker Hub's aliases too).
        let config = r#"{"auths": {"https://index.docker.io/v1/": {"auth": "aHViOnB3"},
                                   "ghcr.io": {"username": "u", "password": "p"}}}"#;
        assert_eq!(
            login_for(config, "index.docker.io").unwrap().unwrap(),
            "aHViOnB3"
        );
        assert_eq!(login_for(config, "ghcr.io").unwrap().unwrap(), "dTpw");
        assert_eq!(login_for(config, "quay.io").unwrap(), None);
        assert!(login_for("{", "ghcr.io").is_err());
        assert_eq!(
            split_params(r#"realm="https://a/token",service="reg",scope="repository:x:pull,push""#),
            [
                r#"realm="https://a/token""#,
                r#"service="reg""#,
                r#"scope="repository:x:pull,push""#
            ]
        );
    }
}
