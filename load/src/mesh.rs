//! A generated mesh written as a config folder: `services` Services (port
//! 8080, `http`) spread over namespaces of 100, each with `endpoints` pods
//! (labels `app`, `version` v1/v2) and an EndpointSlice. The pods are as
//! Istio's sidecar injector leaves them (label `security.istio.io/tlsMode:
//! istio`) and run as the service's own service account, so every cluster
//! has auto mTLS (a `tlsMode-istio` transport socket match with Istio's SNI
//! and the SPIFFE ID) and every endpoint its `tlsMode` metadata. Every
//! fifth service also has a DestinationRule (subsets v1, v2) and a
//! VirtualService (90/10). One file per service, so a change touches one
//! file.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Services per namespace.
pub const PER_NAMESPACE: usize = 100;

/// The namespace of service `i`.
pub fn namespace(i: usize) -> String {
    format!("ns-{}", i / PER_NAMESPACE)
}

/// The file holding service `i`.
pub fn file(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("svc-{i}.yaml"))
}

/// Whether service `i` has a VirtualService and DestinationRule.
pub fn routed(i: usize) -> bool {
    i.is_multiple_of(5)
}

/// Service `i` with `endpoints` endpoints, and its routing when [`routed`];
/// `split` is the VirtualService's v1 weight (v2 gets the rest).
pub fn service_yaml(i: usize, endpoints: usize, split: u32) -> String {
    let ns = namespace(i);
    let name = format!("svc-{i}");
    let vip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  clusterIP: {vip}\n  ports: [{{name: http, port: 8080}}]\n"
    );
    let mut slice = format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n"
    );
    for e in 0..endpoints {
        let ip = format!("10.{}.{}.{}", 100 + i / 250, i % 250, e + 1);
        let version = if e % 2 == 0 { "v1" } else { "v2" };
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}-{e}, namespace: {ns}, labels: {{app: {name}, version: {version}, security.istio.io/tlsMode: istio}}}}\nspec: {{serviceAccountName: {name}}}\nstatus: {{podIP: {ip}}}\n"
        );
        let _ = writeln!(
            slice,
            "- {{addresses: [{ip}], targetRef: {{kind: Pod, name: {name}-{e}}}}}"
        );
    }
    y.push_str(&slice);
    if routed(i) {
        let _ = write!(
            y,
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  host: {name}\n  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: [{name}]\n  http:\n  - route:\n    - {{destination: {{host: {name}, subset: v1}}, weight: {split}}}\n    - {{destination: {{host: {name}, subset: v2}}, weight: {}}}\n",
            100 - split
        );
    }
    y
}

/// Service `i` as [`service_yaml`] writes it, parsed as the daemon's
/// folder source parses it (for benchmarks and tests that build a
/// snapshot without the daemon).
///
/// # Errors
/// If a generated document does not parse (a bug in [`service_yaml`]).
pub fn service_objects(
    i: usize,
    endpoints: usize,
    split: u32,
) -> anyhow::Result<Vec<crds::document::Object>> {
    let mut objects = Vec::new();
    for (index, value) in crds::document::split_documents(&service_yaml(i, endpoints, split)) {
        let value = value.map_err(|e| anyhow::anyhow!("service {i}, document {index}: {e}"))?;
        for object in crds::document::parse_value(value, "default") {
            objects.push(object.map_err(|e| anyhow::anyhow!("service {i}: {e}"))?);
        }
    }
    Ok(objects)
}

/// Per namespace of a mesh of `services`, what a secured mesh carries: an
/// AuthorizationPolicy letting in only its own namespace and
/// `istio-system`, refusing one header value and requiring a verified
/// token on `/admin`, and a RequestAuthentication with an inline key.
pub fn security_yaml(services: usize) -> String {
    const JWKS: &str = r#"{"keys": [{"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
    let mut y = String::new();
    for n in 0..services.div_ceil(PER_NAMESPACE) {
        let ns = format!("ns-{n}");
        let _ = write!(
            y,
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: namespace, namespace: {ns}}}\nspec:\n  rules:\n  - from: [{{source: {{namespaces: [{ns}, istio-system]}}}}]\n    to: [{{operation: {{notPaths: ['/admin*']}}}}]\n  - from: [{{source: {{requestPrincipals: ['issuer.example/*']}}}}]\n    to: [{{operation: {{paths: ['/admin*']}}}}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny, namespace: {ns}}}\nspec:\n  action: DENY\n  rules: [{{when: [{{key: 'request.headers[x-block]', values: ['yes']}}]}}]\n---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: {ns}}}\nspec:\n  jwtRules: [{{issuer: issuer.example, jwks: '{JWKS}'}}]\n"
        );
    }
    y
}

/// Telemetry for a mesh of `services` (`--telemetry`, and the generation
/// benchmark's observed mesh): a mesh-wide Telemetry logging every request
/// with Istio's built-in `envoy` provider, and per namespace one logging
/// only failed requests served, so each proxy's access logs are merged
/// from two levels on both sides.
#[must_use]
pub fn telemetry_yaml(services: usize) -> String {
    let mut y = String::from(
        "---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: mesh-default, namespace: istio-system}\nspec:\n  accessLogging: [{providers: [{name: envoy}]}]\n",
    );
    for n in 0..services.div_ceil(PER_NAMESPACE) {
        let _ = write!(
            y,
            "---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: errors, namespace: ns-{n}}}\nspec:\n  accessLogging:\n  - match: {{mode: SERVER}}\n    providers: [{{name: envoy}}]\n    filter: {{expression: 'response.code >= 400'}}\n"
        );
    }
    y
}

/// Writes the whole mesh into `dir`.
///
/// # Errors
/// When a file cannot be written.
pub fn write(dir: &Path, services: usize, endpoints: usize) -> std::io::Result<()> {
    for i in 0..services {
        std::fs::write(file(dir, i), service_yaml(i, endpoints, 90))?;
    }
    Ok(())
}

/// Rewrites a file the way an editor does (write aside, rename over), so
/// the watcher sees one complete change.
///
/// # Errors
/// When the file cannot be written.
pub fn replace(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    use translator::model::{MeshConfig, Proxy, Snapshot};

    use super::*;

    /// The mesh is what an injected mesh gives a sidecar: every cluster
    /// with Istio's auto mTLS match naming the service's SPIFFE ID, and
    /// every endpoint marked `tlsMode: istio`.
    #[test]
    fn pods_are_injected_workloads_with_auto_mtls() {
        let objects: Vec<_> = (0..10)
            .flat_map(|i| service_objects(i, 3, 90).unwrap())
            .collect();
        let snap = Snapshot::build(1, &objects, MeshConfig::default());
        let proxy = Proxy::from_node_id(
            "sidecar~10.0.0.1~load-0.ns-0~ns-0.svc.cluster.local",
            None,
            Default::default(),
        )
        .unwrap();
        let out = translator::generate(&snap, &proxy);
        let outbound: Vec<_> = out
            .clusters
            .iter()
            .filter(|c| c.name.starts_with("outbound|"))
            .collect();
        // Ten services, two with subsets v1 and v2.
        assert_eq!(outbound.len(), 14);
        for c in outbound {
            let m = c.transport_socket_matches.first();
            assert_eq!(
                m.map(|m| m.name.as_str()),
                Some("tlsMode-istio"),
                "{}",
                c.name
            );
            let host = c.name.rsplit('|').next().unwrap();
            let account = host.split('.').next().unwrap();
            // The UpstreamTlsContext, as packed in the socket's `Any`.
            let tls = match m.and_then(|m| m.transport_socket.as_ref()?.config_type.as_ref()) {
                Some(ConfigType::TypedConfig(any)) => any.value.clone(),
                None => panic!("{}: no TLS context", c.name),
            };
            let san = format!("spiffe://cluster.local/ns/ns-0/sa/{account}");
            assert!(
                tls.windows(san.len()).any(|w| w == san.as_bytes()),
                "{}: no {san}",
                c.name
            );
        }
        assert_eq!(out.endpoints.len(), 14);
        // The mesh's objects and those of `yaml`, which must parse and
        // validate.
        let with = |yaml: String| {
            let mut all = objects.clone();
            for (_, value) in crds::document::split_documents(&yaml) {
                for o in crds::document::parse_value(value.unwrap(), "default") {
                    let o = o.unwrap();
                    crds::validate::validate(&o).unwrap();
                    all.push(o);
                }
            }
            all
        };
        // The proxy's config in a mesh of `all`, which must raise no
        // warning, and its encoded `virtualInbound`.
        let generated = |all: &[crds::document::Object]| {
            let snap = Snapshot::build(2, all, MeshConfig::default());
            assert!(snap.warnings.is_empty(), "{:?}", snap.warnings);
            let out = translator::generate(&snap, &proxy);
            let inbound = out
                .listeners
                .iter()
                .find(|l| l.name == "virtualInbound")
                .map(prost::Message::encode_to_vec)
                .unwrap();
            (out, inbound)
        };
        let has = |bytes: &[u8], s: &str| bytes.windows(s.len()).any(|w| w == s.as_bytes());
        // Secured: every namespace's policies apply.
        let secured = with(security_yaml(10));
        assert_eq!(secured.len(), objects.len() + 3);
        let (out, inbound) = generated(&secured);
        assert!(has(&inbound, "envoy.filters.network.rbac"));
        for cla in &out.endpoints {
            for e in cla.endpoints.iter().flat_map(|g| &g.lb_endpoints) {
                let md = e.metadata.as_ref().unwrap();
                assert!(
                    md.filter_metadata
                        .contains_key("envoy.transport_socket_match")
                );
            }
        }
        // Observed: the Telemetry resources apply.
        let observed = with(telemetry_yaml(10));
        assert_eq!(observed.len(), objects.len() + 2);
        let (_, inbound) = generated(&observed);
        assert!(has(&inbound, "envoy.access_loggers.extension_filters.cel"));
    }
}
