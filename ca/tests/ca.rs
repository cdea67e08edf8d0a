//! The CA against X.509 as a verifier sees it (x509-parser): chains that
//! verify, exactly the caller's SPIFFE ID, the requested lifetime, the
//! right usages; Istio's sample `cacerts` honoured; and every refusal.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::time::Duration;

use ca::{Authority, SignError, SpiffeId};
use proptest::prelude::*;
use rcgen::{CertificateParams, KeyPair, SanType};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId {
        trust_domain: "cluster.local".into(),
        namespace: ns.into(),
        service_account: sa.into(),
    }
}

/// A CSR for `sans` (URIs, or `DNS:name`), with a fresh P-256 key.
fn csr(sans: &[&str]) -> String {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = sans
        .iter()
        .map(|s| match s.strip_prefix("DNS:") {
            Some(d) => SanType::DnsName(d.try_into().unwrap()),
            None => SanType::URI((*s).try_into().unwrap()),
        })
        .collect();
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn der(pem_text: &str) -> Vec<u8> {
    pem::parse(pem_text).unwrap().into_contents()
}

/// Checks `chain` (leaf first, root last) link by link, and returns facts
/// about the leaf: its URI SANs, whether the SAN extension is critical,
/// and its lifetime.
fn check_chain(chain: &[String]) -> (Vec<String>, bool, Duration) {
    let ders: Vec<Vec<u8>> = chain.iter().map(|c| der(c)).collect();
    let certs: Vec<X509Certificate> = ders
        .iter()
        .map(|d| X509Certificate::from_der(d).unwrap().1)
        .collect();
    for pair in certs.windows(2) {
        pair[0]
            .verify_signature(Some(pair[1].public_key()))
            .expect("each certificate verifies against the next");
        assert_eq!(pair[0].issuer(), pair[1].subject());
    }
    let root = certs.last().unwrap();
    root.verify_signature(None)
        .expect("the root is self-signed");
    let leaf = &certs[0];
    assert!(!leaf.is_ca());
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let mut uris = Vec::new();
    let mut critical = false;
    for ext in leaf.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            critical = ext.critical;
            for name in &san.general_names {
                match name {
                    GeneralName::URI(u) => uris.push((*u).to_owned()),
                    other => panic!("unexpected SAN {other:?}"),
                }
            }
        }
    }
    let v = leaf.validity();
    let lifetime = (v.not_after.to_datetime() - v.not_before.to_datetime()).unsigned_abs();
    (uris, critical, lifetime)
}

#[test]
fn a_self_signed_root_signs_the_callers_identity_only() {
    let authority = Authority::self_signed("cluster.local").unwrap();
    let caller = id("default", "bookinfo-reviews");
    let chain = authority
        .sign(&csr(&[&caller.to_string()]), &caller, None)
        .unwrap();
    assert_eq!(chain.len(), 2, "leaf and root");
    assert_eq!(chain[1], authority.root_pem());
    let (uris, critical, lifetime) = check_chain(&chain);
    assert_eq!(uris, [caller.to_string()]);
    assert!(critical, "an empty subject makes the SAN critical");
    // 24 h by default, plus the one minute of clock-skew slack before now.
    assert_eq!(lifetime, ca::DEFAULT_TTL + Duration::from_secs(60));
    // A CSR without SANs gets the caller's identity too.
    let chain = authority.sign(&csr(&[]), &caller, None).unwrap();
    assert_eq!(check_chain(&chain).0, [caller.to_string()]);
}

#[test]
fn istios_sample_cacerts_are_honoured() {
    let dir = crds::istio_testdata().join("ca");
    let authority = Authority::from_cacerts(&dir).unwrap();
    let root = std::fs::read_to_string(dir.join("root-cert.pem")).unwrap();
    let signing = std::fs::read_to_string(dir.join("ca-cert.pem")).unwrap();
    let caller = SpiffeId {
        trust_domain: "trust-domain-foo".into(),
        namespace: "foo".into(),
        service_account: "foo".into(),
    };
    let chain = authority
        .sign(
            &csr(&[&caller.to_string()]),
            &caller,
            Some(Duration::from_secs(3600)),
        )
        .unwrap();
    assert_eq!(chain.len(), 3, "leaf, Istio CA, Root CA");
    assert_eq!(der(&chain[1]), der(&signing));
    assert_eq!(der(&chain[2]), der(&root));
    let (uris, _, lifetime) = check_chain(&chain);
    assert_eq!(uris, [caller.to_string()]);
    assert_eq!(lifetime, Duration::from_secs(3600 + 60));
}

#[test]
fn refusals_name_the_reason_and_issue_nothing() {
    let authority = Authority::self_signed("cluster.local").unwrap();
    let caller = id("default", "productpage");
    let other = id("default", "reviews").to_string();
    let mine = caller.to_string();

    let e = authority.sign(&csr(&[&other]), &caller, None).unwrap_err();
    assert!(matches!(e, SignError::IdentityMismatch { .. }), "{e}");
    assert!(e.to_string().contains("sa/reviews"), "{e}");
    let e = authority
        .sign(&csr(&[&mine, &other]), &caller, None)
        .unwrap_err();
    assert!(matches!(e, SignError::IdentityMismatch { .. }), "{e}");
    let e = authority
        .sign(&csr(&[&mine, "DNS:productpage.default.svc"]), &caller, None)
        .unwrap_err();
    assert!(matches!(e, SignError::IdentityMismatch { .. }), "{e}");

    let e = authority
        .sign(
            &csr(&[&mine]),
            &caller,
            Some(Duration::from_secs(91 * 24 * 3600)),
        )
        .unwrap_err();
    assert!(matches!(e, SignError::TtlTooLong { .. }), "{e}");

    for garbage in [
        "",
        "not a csr",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ] {
        let e = authority.sign(garbage, &caller, None).unwrap_err();
        assert!(matches!(e, SignError::MalformedCsr(_)), "{garbage:?}: {e}");
    }
    // A CSR whose signature does not match its content.
    let good = csr(&[&mine]);
    let mut bytes = der(&good);
    let n = bytes.len();
    bytes[n - 5] ^= 0x55;
    let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", bytes));
    let e = authority.sign(&tampered, &caller, None).unwrap_err();
    assert!(matches!(e, SignError::MalformedCsr(_)), "{e}");
}

#[test]
fn a_persisted_root_survives_a_restart_and_its_key_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let first = Authority::load_or_create(dir.path(), "cluster.local").unwrap();
    let again = Authority::load_or_create(dir.path(), "cluster.local").unwrap();
    assert_eq!(first.root_pem(), again.root_pem());
    let mode = std::fs::metadata(dir.path().join("ca-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // What the first signs, the second's root verifies.
    let caller = id("a", "b");
    let chain = again
        .sign(&csr(&[&caller.to_string()]), &caller, None)
        .unwrap();
    assert_eq!(chain.last().unwrap(), first.root_pem());
    check_chain(&chain);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn any_identity_and_lifetime_within_the_cap(
        ns in "[a-z][a-z0-9-]{0,20}",
        sa in "[a-z][a-z0-9-]{0,20}",
        secs in 60u64..=ca::MAX_TTL.as_secs(),
    ) {
        static AUTHORITY: std::sync::OnceLock<Authority> = std::sync::OnceLock::new();
        let authority = AUTHORITY.get_or_init(|| Authority::self_signed("cluster.local").unwrap());
        let caller = id(&ns, &sa);
        let chain = authority
            .sign(&csr(&[&caller.to_string()]), &caller, Some(Duration::from_secs(secs)))
            .unwrap();
        let (uris, critical, lifetime) = check_chain(&chain);
        prop_assert_eq!(uris, vec![caller.to_string()]);
        prop_assert!(critical);
        prop_assert_eq!(lifetime, Duration::from_secs(secs + 60));
    }
}
