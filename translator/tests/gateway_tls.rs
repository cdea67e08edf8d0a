//! TLS settings: a gateway's `ISTIO_MUTUAL` and terminated `TLS` servers,
//! client `subjectAltNames`, the DestinationRule `credentialName` with
//! which an egress gateway originates TLS (and which a sidecar does not
//! get), and the identities a ServiceEntry declares for its servers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::transport_socket;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener, filter};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, UpstreamTlsContext, common_tls_context, secret,
    subject_alt_name_matcher::SanType,
};
use prost::Message;
use translator::model::{MeshConfig, Proxy, Snapshot};
use translator::{Output, generate};

/// The egress gateway's Service and an external host, `api.example.com`.
const PLATFORM: &str = "
apiVersion: v1
kind: Service
metadata: {name: istio-egressgateway, namespace: istio-system}
spec:
  clusterIP: 10.96.0.40
  ports: [{name: https, port: 443}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
  location: MESH_EXTERNAL
  resolution: DNS
---
apiVersion: v1
kind: Secret
metadata: {name: client-credential, namespace: istio-system}
stringData: {tls.crt: CERT, tls.key: KEY, ca.crt: CA}
";

fn snapshot(extra: &str) -> Snapshot {
    Snapshot::build(
        1,
        &crds::objects_of(&[PLATFORM, extra]),
        MeshConfig::default(),
    )
}

fn egress_gateway() -> Proxy {
    Proxy::from_node_id(
        "router~10.244.0.40~istio-egressgateway-0.istio-system~istio-system.svc.cluster.local",
        None,
        [("istio".to_owned(), "egressgateway".to_owned())].into(),
    )
    .unwrap()
}

fn sidecar() -> Proxy {
    Proxy::from_node_id(
        "sidecar~10.244.0.11~client.default~default.svc.cluster.local",
        None,
        Default::default(),
    )
    .unwrap()
}

fn listener<'a>(out: &'a Output, name: &str) -> &'a Listener {
    out.listeners
        .iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no listener {name}: {:?}", out.warnings))
}

fn cluster<'a>(out: &'a Output, name: &str) -> &'a Cluster {
    out.clusters
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no cluster {name}"))
}

fn downstream(chain: &FilterChain) -> DownstreamTlsContext {
    let Some(transport_socket::ConfigType::TypedConfig(any)) = chain
        .transport_socket
        .as_ref()
        .and_then(|t| t.config_type.as_ref())
    else {
        panic!("no TLS on {}", chain.name)
    };
    DownstreamTlsContext::decode(any.value.as_slice()).unwrap()
}

fn upstream(c: &Cluster) -> Option<UpstreamTlsContext> {
    let transport_socket::ConfigType::TypedConfig(any) =
        c.transport_socket.as_ref()?.config_type.as_ref()?;
    Some(UpstreamTlsContext::decode(any.value.as_slice()).unwrap())
}

/// The SDS names of the certificate and of the validation context, and
/// the SANs (value, type) checked besides it.
fn sds_names(common: &CommonTlsContext) -> (Vec<String>, String, Vec<(String, i32)>) {
    let certs = common
        .tls_certificate_sds_secret_configs
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let Some(common_tls_context::ValidationContextType::CombinedValidationContext(combined)) =
        &common.validation_context_type
    else {
        panic!("no combined validation context: {common:?}")
    };
    let sans = combined
        .default_validation_context
        .iter()
        .flat_map(|d| &d.match_typed_subject_alt_names)
        .map(|m| {
            let exact = match m.matcher.as_ref().and_then(|s| s.match_pattern.as_ref()) {
                Some(envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern::Exact(e)) => e.clone(),
                other => panic!("not exact: {other:?}"),
            };
            (exact, m.san_type)
        })
        .collect();
    let ca = combined
        .validation_context_sds_secret_config
        .as_ref()
        .unwrap()
        .name
        .clone();
    (certs, ca, sans)
}

const PRODUCTPAGE: &str = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage";

#[test]
fn istio_mutual_https_servers_use_the_gateways_workload_certificate() {
    let snap = snapshot(&format!(
        "
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: egress, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: [api.example.com]
    tls: {{mode: ISTIO_MUTUAL, subjectAltNames: ['{PRODUCTPAGE}']}}
"
    ));
    let out = generate(&snap, &egress_gateway());
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    let chain = &listener(&out, "0.0.0.0_443").filter_chains[0];
    let m = chain.filter_chain_match.as_ref().unwrap();
    assert_eq!(m.server_names, ["api.example.com"]);
    assert_eq!(m.transport_protocol, "tls");
    let ctx = downstream(chain);
    assert!(ctx.require_client_certificate.unwrap().value);
    let common = ctx.common_tls_context.unwrap();
    assert_eq!(common.alpn_protocols, ["h2", "http/1.1"]);
    assert!(common.tls_params.is_none(), "the mesh's TLS parameters");
    let (certs, ca, sans) = sds_names(&common);
    assert_eq!((certs, ca.as_str()), (vec!["default".to_owned()], "ROOTCA"));
    // Any SAN type may carry the name, as Envoy's untyped matcher.
    assert!(sans.contains(&(PRODUCTPAGE.to_owned(), SanType::Uri as i32)));
    assert!(sans.contains(&(PRODUCTPAGE.to_owned(), SanType::Dns as i32)));
    // The node agent serves those; the daemon sends no secret of its own.
    assert!(out.secrets.is_empty());
}

#[test]
fn terminated_tls_servers_route_by_tcp_routes() {
    let snap = snapshot(
        "
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: egress, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 443, name: tls, protocol: TLS}
    hosts: [api.example.com]
    tls: {mode: ISTIO_MUTUAL}
  - port: {number: 8443, name: tls-simple, protocol: TLS}
    hosts: [api.example.com]
    tls: {mode: SIMPLE, credentialName: client-credential}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: default}
spec:
  hosts: [api.example.com]
  gateways: [istio-system/egress]
  tcp:
  - route: [{destination: {host: api.example.com, port: {number: 443}}}]
",
    );
    let out = generate(&snap, &egress_gateway());
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    for (port, alpn) in [
        (443, vec!["istio-peer-exchange", "h2", "http/1.1"]),
        (8443, vec!["h2", "http/1.1"]),
    ] {
        let l = listener(&out, &format!("0.0.0.0_{port}"));
        assert!(
            l.listener_filters
                .iter()
                .any(|f| f.name == "envoy.filters.listener.tls_inspector")
        );
        let chain = &l.filter_chains[0];
        assert_eq!(
            chain.filter_chain_match.as_ref().unwrap().server_names,
            ["api.example.com"]
        );
        let ctx = downstream(chain);
        assert_eq!(ctx.common_tls_context.unwrap().alpn_protocols, alpn);
        let Some(filter::ConfigType::TypedConfig(any)) = &chain.filters[0].config_type else {
            panic!()
        };
        let tcp = TcpProxy::decode(any.value.as_slice()).unwrap();
        assert_eq!(
            tcp.cluster_specifier,
            Some(tcp_proxy::ClusterSpecifier::Cluster(
                "outbound|443||api.example.com".into()
            ))
        );
    }
    // Without a tcp route the TLS server is reported and left out.
    let snap = snapshot(
        "
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: egress, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 443, name: tls, protocol: TLS}
    hosts: [api.example.com]
    tls: {mode: ISTIO_MUTUAL}
",
    );
    let out = generate(&snap, &egress_gateway());
    assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
    assert_eq!(out.warnings[0].field, "spec.servers[0]");
    assert!(out.listeners.iter().all(|l| l.name != "0.0.0.0_443"));
}

/// Istio's "mutual TLS origination with an egress gateway": the rule for
/// the external host names the Secret holding the client certificate.
const ORIGINATE: &str = "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: originate, namespace: istio-system}
spec:
  host: api.example.com
  trafficPolicy:
    portLevelSettings:
    - port: {number: 443}
      tls: {mode: MUTUAL, credentialName: client-credential, sni: api.example.com}
";

#[test]
fn egress_gateways_originate_mtls_with_a_credential_secret() {
    let snap = snapshot(ORIGINATE);
    let out = generate(&snap, &egress_gateway());
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    let tls = upstream(cluster(&out, "outbound|443||api.example.com")).unwrap();
    assert_eq!(tls.sni, "api.example.com");
    let (certs, ca, sans) = sds_names(tls.common_tls_context.as_ref().unwrap());
    assert_eq!(certs, ["kubernetes://client-credential"]);
    assert_eq!(ca, "kubernetes://client-credential-cacert");
    assert!(sans.is_empty());
    // The daemon serves both from the Secret.
    let mut served: Vec<_> = out
        .secrets
        .iter()
        .map(|s| match &s.r#type {
            Some(secret::Type::TlsCertificate(c)) => {
                (s.name.clone(), c.certificate_chain.is_some())
            }
            Some(secret::Type::ValidationContext(v)) => (s.name.clone(), v.trusted_ca.is_some()),
            other => panic!("{other:?}"),
        })
        .collect();
    served.sort();
    assert_eq!(
        served,
        [
            ("kubernetes://client-credential".to_owned(), true),
            ("kubernetes://client-credential-cacert".to_owned(), true),
        ]
    );

    // A sidecar does not get the Secret: no TLS, as istiod (and no auto
    // mTLS either), whichever proxy built the service's clusters first.
    for first in [true, false] {
        let snap = snapshot(ORIGINATE);
        let (gw, sc) = if first {
            let gw = translator::generate_encoded(&snap, &egress_gateway());
            (gw, translator::generate_encoded(&snap, &sidecar()))
        } else {
            let sc = translator::generate_encoded(&snap, &sidecar());
            (translator::generate_encoded(&snap, &egress_gateway()), sc)
        };
        let decode = |enc: &translator::EncodedOutput| {
            let (_, _, bytes) = enc
                .clusters
                .iter()
                .find(|(n, ..)| &**n == "outbound|443||api.example.com")
                .unwrap();
            let any = prost_types_any(bytes);
            Cluster::decode(any.as_slice()).unwrap()
        };
        assert!(upstream(&decode(&gw)).is_some(), "the gateway originates");
        let plain = decode(&sc);
        assert!(plain.transport_socket.is_none() && plain.transport_socket_matches.is_empty());
    }
    let out = generate(&snap, &sidecar());
    assert!(out.secrets.is_empty());
}

/// The `value` of an encoded `Any` (field 2).
fn prost_types_any(bytes: &[u8]) -> Vec<u8> {
    envoy_types::pb::google::protobuf::Any::decode(bytes)
        .unwrap()
        .value
}

#[test]
fn a_missing_or_incomplete_credential_secret_is_reported_on_the_rule() {
    let snap = snapshot(&ORIGINATE.replace("client-credential", "nowhere"));
    let out = generate(&snap, &egress_gateway());
    assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
    let w = &out.warnings[0];
    assert_eq!(
        (w.kind, w.object.as_str(), w.field.as_str()),
        (
            "DestinationRule",
            "istio-system/originate",
            "spec.trafficPolicy.portLevelSettings[0].tls.credentialName"
        )
    );
    assert!(w.reason.contains("not found"), "{}", w.reason);

    // A CA-only Secret is enough for SIMPLE, not for MUTUAL.
    let ca_only = "
apiVersion: v1
kind: Secret
metadata: {name: ca-only, namespace: istio-system}
stringData: {ca.crt: CA}
";
    let simple = ORIGINATE
        .replace("client-credential", "ca-only")
        .replace("MUTUAL", "SIMPLE");
    let out = generate(
        &snapshot(&format!("{simple}---{ca_only}")),
        &egress_gateway(),
    );
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    assert_eq!(out.secrets.len(), 1);
    let mutual = ORIGINATE.replace("client-credential", "ca-only");
    let out = generate(
        &snapshot(&format!("{mutual}---{ca_only}")),
        &egress_gateway(),
    );
    assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
    assert!(out.warnings[0].reason.contains("tls.crt"));
}

#[test]
fn istio_mutual_servers_refuse_certificates_of_their_own() {
    let text = "
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: egress, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [api.example.com]
    tls: {mode: ISTIO_MUTUAL, credentialName: client-credential}
";
    let err = crds::validation_error(text);
    assert!(err.contains("spec.servers[0].tls.credentialName"), "{err}");
}

/// A ServiceEntry's `subjectAltNames` and its endpoints' service accounts
/// are the identities checked when a rule originates `SIMPLE` TLS without
/// SANs of its own, and under `ISTIO_MUTUAL`; a rule's own SANs win.
#[test]
fn service_entry_identities_stand_in_for_missing_subject_alt_names() {
    let entry = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vm, namespace: default}
spec:
  hosts: [vm.example.com]
  ports: [{number: 443, name: https, protocol: HTTPS}, {number: 8443, name: tls, protocol: TLS}]
  location: MESH_INTERNAL
  resolution: STATIC
  subjectAltNames: [vm.example.com]
  endpoints: [{address: 10.1.0.1, serviceAccount: vm-app}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: vm, namespace: default}
spec:
  host: vm.example.com
  trafficPolicy:
    tls: {mode: SIMPLE, caCertificates: /etc/ca.pem}
    portLevelSettings:
    - port: {number: 8443}
      tls: {mode: ISTIO_MUTUAL}
";
    let sans = |snap: &Snapshot, cluster_name: &str| -> Vec<String> {
        let out = generate(snap, &sidecar());
        let tls = upstream(cluster(&out, cluster_name)).unwrap();
        let common = tls.common_tls_context.unwrap();
        let matchers = match common.validation_context_type.unwrap() {
            common_tls_context::ValidationContextType::ValidationContext(v) => {
                v.match_typed_subject_alt_names
            }
            common_tls_context::ValidationContextType::CombinedValidationContext(c) => {
                c.default_validation_context
                    .unwrap()
                    .match_typed_subject_alt_names
            }
            other => panic!("{other:?}"),
        };
        let mut names: Vec<String> = matchers
            .into_iter()
            .filter_map(|m| match m.matcher?.match_pattern? {
                envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern::Exact(e) => Some(e),
                _ => None,
            })
            .collect();
        names.sort();
        names.dedup();
        names
    };
    let vm_app = "spiffe://cluster.local/ns/default/sa/vm-app";
    let snap = snapshot(entry);
    assert_eq!(
        sans(&snap, "outbound|443||vm.example.com"),
        [
            "spiffe://cluster.local/ns/default/sa/vm-app",
            "vm.example.com"
        ]
    );
    assert_eq!(
        sans(&snap, "outbound|8443||vm.example.com"),
        [vm_app, "vm.example.com"]
    );
    let own = snapshot(&entry.replace(
        "caCertificates: /etc/ca.pem}",
        "caCertificates: /etc/ca.pem, subjectAltNames: [other.example.com]}",
    ));
    assert_eq!(
        sans(&own, "outbound|443||vm.example.com"),
        ["other.example.com"]
    );
}

/// Istio's "mutual TLS origination for egress traffic": a rule with a
/// `workloadSelector` gives the sidecars it picks the `credentialName`
/// Secret of their namespace; other sidecars get neither the Secret nor
/// TLS. A change of a Secret regenerates the picked namespace's sidecars.
#[test]
fn a_workload_selector_gives_sidecars_a_credential_secret() {
    let rule = "
apiVersion: v1
kind: Secret
metadata: {name: client-credential, namespace: default}
stringData: {tls.crt: CERT, tls.key: KEY, ca.crt: CA}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: originate, namespace: default}
spec:
  host: api.example.com
  workloadSelector: {matchLabels: {app: curl}}
  trafficPolicy:
    portLevelSettings:
    - port: {number: 443}
      tls: {mode: MUTUAL, credentialName: client-credential}
";
    let snap = snapshot(rule);
    let labelled = |app: &str| {
        Proxy::from_node_id(
            "sidecar~10.244.0.11~client.default~default.svc.cluster.local",
            None,
            [("app".to_owned(), app.to_owned())].into(),
        )
        .unwrap()
    };
    let out = generate(&snap, &labelled("curl"));
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    let tls = upstream(cluster(&out, "outbound|443||api.example.com")).unwrap();
    let (certs, ca, _) = sds_names(tls.common_tls_context.as_ref().unwrap());
    assert_eq!(certs, ["kubernetes://client-credential"]);
    assert_eq!(ca, "kubernetes://client-credential-cacert");
    let mut names: Vec<&str> = out.secrets.iter().map(|s| s.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "kubernetes://client-credential",
            "kubernetes://client-credential-cacert"
        ]
    );
    let other = generate(&snap, &labelled("other"));
    assert!(upstream(cluster(&other, "outbound|443||api.example.com")).is_none());
    assert!(other.secrets.is_empty());

    // A new certificate in the Secret reaches the picked namespace's
    // sidecars (and the gateways), not the others'.
    let rotated = snapshot(&rule.replace("tls.crt: CERT", "tls.crt: CERT2"));
    let changes = translator::changes::ChangeSet::between(&snap, &rotated);
    assert_eq!(
        changes.effect(&labelled("other")),
        translator::changes::Effect::Full,
        "the whole namespace: the sidecars' labels are not read here"
    );
    assert_eq!(
        changes.effect(&egress_gateway()),
        translator::changes::Effect::Full
    );
    let elsewhere = Proxy::from_node_id(
        "sidecar~10.244.1.11~client.other~other.svc.cluster.local",
        None,
        Default::default(),
    )
    .unwrap();
    assert_eq!(
        changes.effect(&elsewhere),
        translator::changes::Effect::Nothing
    );
}

/// `credentialNames`: a certificate from each Secret (RSA and ECDSA, say),
/// the first Secret's CA for a MUTUAL server; client certificate pins go
/// with the SANs. Pins Envoy would refuse are refused by validation.
#[test]
fn several_credentials_and_client_pins() {
    let hash = "AB:".repeat(31) + "AB";
    let spki = "NvqYIYSbgK2vCJpQhObf77vv+bQWtc5ek5RIOwPiC9A=";
    let snap = snapshot(&format!(
        "
apiVersion: v1
kind: Secret
metadata: {{name: ecdsa, namespace: istio-system}}
stringData: {{tls.crt: EC, tls.key: ECKEY}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: ingress, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 8443, name: https, protocol: HTTPS}}
    hosts: [api.example.com]
    tls:
      mode: MUTUAL
      credentialNames: [client-credential, ecdsa]
      verifyCertificateHash: ['{hash}']
      verifyCertificateSpki: ['{spki}']
"
    ));
    let out = generate(&snap, &egress_gateway());
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    let ctx = downstream(&listener(&out, "0.0.0.0_8443").filter_chains[0]);
    let common = ctx.common_tls_context.unwrap();
    let (certs, ca, _) = sds_names(&common);
    assert_eq!(
        certs,
        ["kubernetes://client-credential", "kubernetes://ecdsa"]
    );
    assert_eq!(ca, "kubernetes://client-credential-cacert");
    let Some(common_tls_context::ValidationContextType::CombinedValidationContext(c)) =
        common.validation_context_type
    else {
        panic!()
    };
    let checks = c.default_validation_context.unwrap();
    assert_eq!(checks.verify_certificate_hash, [hash]);
    assert_eq!(checks.verify_certificate_spki, [spki]);

    for (field, value) in [
        ("verifyCertificateHash", "abc"),
        ("verifyCertificateSpki", "not base64"),
    ] {
        let text = format!(
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: g, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8443, name: https, protocol: HTTPS}}
    hosts: ['*']
    tls: {{mode: MUTUAL, credentialName: c, {field}: ['{value}']}}
"
        );
        let err = crds::validation_error(&text);
        assert!(
            err.contains(&format!("spec.servers[0].tls.{field}[0]")),
            "{err}"
        );
    }
}

/// Client certificate revocation on a MUTUAL server: a credential
/// Secret's `ca.crl` goes into its `-cacert` SDS secret with the CA;
/// with files, `caCrl` is the validation context's CRL file; `caCrl`
/// beside a credential is reported (Istio takes the Secret's).
#[test]
fn revocation_lists_reach_mutual_servers() {
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret;
    let gateway = |tls: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: ingress, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 8443, name: https, protocol: HTTPS}}
    hosts: [api.example.com]
    tls: {tls}
"
        )
    };
    let revoking = "apiVersion: v1
kind: Secret
metadata: {name: revoking, namespace: istio-system}
stringData: {tls.crt: CERT, tls.key: KEY, ca.crt: CA, ca.crl: CRL}
---
";
    let out = generate(
        &snapshot(&(revoking.to_owned() + &gateway("{mode: MUTUAL, credentialName: revoking}"))),
        &egress_gateway(),
    );
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    let ca = out
        .secrets
        .iter()
        .find(|s| s.name == "kubernetes://revoking-cacert")
        .unwrap();
    let Some(secret::Type::ValidationContext(v)) = &ca.r#type else {
        panic!("{ca:?}")
    };
    let bytes = |d: &Option<envoy_types::pb::envoy::config::core::v3::DataSource>| match d
        .as_ref()
        .and_then(|d| d.specifier.clone())
    {
        Some(Specifier::InlineBytes(b)) => b,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (bytes(&v.trusted_ca), bytes(&v.crl)),
        (b"CA".to_vec(), b"CRL".to_vec())
    );

    // Files: the CRL file beside the CA file.
    let out = generate(
        &snapshot(&gateway(
            "{mode: MUTUAL, serverCertificate: /etc/certs/tls.crt, privateKey: /etc/certs/tls.key, caCertificates: /etc/certs/ca.crt, caCrl: /etc/certs/ca.crl}",
        )),
        &egress_gateway(),
    );
    let ctx = downstream(&listener(&out, "0.0.0.0_8443").filter_chains[0]);
    let Some(common_tls_context::ValidationContextType::ValidationContext(v)) =
        ctx.common_tls_context.unwrap().validation_context_type
    else {
        panic!()
    };
    assert_eq!(
        v.crl.and_then(|d| d.specifier),
        Some(Specifier::Filename("/etc/certs/ca.crl".into()))
    );

    // `caCrl` beside a credential: reported, the Secret's list used.
    let out = generate(
        &snapshot(
            &(revoking.to_owned()
                + &gateway("{mode: MUTUAL, credentialName: revoking, caCrl: /etc/certs/ca.crl}")),
        ),
        &egress_gateway(),
    );
    assert!(
        out.warnings
            .iter()
            .any(|w| w.field == "spec.servers[0].tls.caCrl"),
        "{:?}",
        out.warnings
    );
}
