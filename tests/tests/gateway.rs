//! Ingress gateways on a real Envoy: HTTPS with a certificate from a
//! `credentialName` Secret (served over SDS), `httpsRedirect`, MUTUAL TLS,
//! a TLS server terminated then routed by a `tcp` route, TLS PASSTHROUGH
//! routed by SNI, and servers bound to their own addresses. Certificates come from a test CA made
//! with `openssl`; the client is `curl`, which verifies the chain and name.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e::tls::{Pki, TlsServer, tls_secret};
use e2e::{GATEWAY, GATEWAY_LABELS, Mesh, http_request};

/// `curl` over HTTPS to `host:port`, resolved to the gateway on 127.0.0.1
/// ([`e2e::tls::curl`]).
fn curl(
    ca: &Path,
    host: &str,
    port: u16,
    path: &str,
    client: Option<(&Path, &Path)>,
) -> Result<String, String> {
    e2e::tls::curl(ca, (host, "127.0.0.1"), port, path, client)
}

#[test]
fn https_from_a_credential_secret_with_redirect_and_mutual_tls() {
    let (pki, mesh, (cert, key)) = credential_mesh();
    let (client_cert, client_key) = pki.issue("client.example.com");
    let gateway_yaml = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bookinfo-gateway, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: [bookinfo.example.com]
    tls: {httpsRedirect: true}
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: [bookinfo.example.com]
    tls: {mode: SIMPLE, credentialName: bookinfo-credential}
  - port: {number: 9443, name: https-mtls, protocol: HTTPS}
    hosts: [bookinfo.example.com]
    tls: {mode: MUTUAL, credentialName: bookinfo-credential}
  - port: {number: 9444, name: tls, protocol: TLS}
    hosts: [bookinfo.example.com]
    tls: {mode: SIMPLE, credentialName: bookinfo-credential}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo}
spec:
  hosts: [bookinfo.example.com]
  gateways: [istio-system/bookinfo-gateway]
  http:
  - match: [{uri: {exact: /productpage}}]
    route: [{destination: {host: productpage, port: {number: 9080}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo-tls}
spec:
  hosts: [bookinfo.example.com]
  gateways: [istio-system/bookinfo-gateway]
  tcp:
  - match: [{port: 9444}]
    route: [{destination: {host: productpage, port: {number: 9080}}}]
";
    mesh.cfg.write("gateway.yaml", gateway_yaml);
    let gw = gateway(&mesh);

    // SIMPLE: the Secret's certificate is served and verifies against the CA.
    assert_eq!(
        curl(
            &pki.ca(),
            "bookinfo.example.com",
            8443,
            "/productpage",
            None
        ),
        Ok("productpage v1".into())
    );
    // A name the certificate does not cover fails verification.
    assert!(curl(&pki.ca(), "other.example.com", 8443, "/productpage", None).is_err());

    // httpsRedirect: plain HTTP is sent to HTTPS.
    let r = http_request(
        "http://127.0.0.1:8080/productpage",
        &[("host", "bookinfo.example.com")],
    )
    .unwrap();
    assert_eq!(r.status, 301, "{r:?}");
    assert!(
        r.headers
            .get("location")
            .is_some_and(|l| l.starts_with("https://bookinfo.example.com")),
        "{r:?}"
    );
    // The same with the port of a load balancer in front (80, where the
    // listener is on 8080): the route configuration ignores the `Host`
    // header's port, as Istio's gateway routes do.
    let r = http_request(
        "http://127.0.0.1:8080/productpage",
        &[("host", "bookinfo.example.com:80")],
    )
    .unwrap();
    assert_eq!(r.status, 301, "{r:?}");

    // MUTUAL: no client certificate, no entry; one from the CA, in.
    assert!(
        curl(
            &pki.ca(),
            "bookinfo.example.com",
            9443,
            "/productpage",
            None
        )
        .is_err()
    );
    assert_eq!(
        curl(
            &pki.ca(),
            "bookinfo.example.com",
            9443,
            "/productpage",
            Some((&client_cert, &client_key))
        ),
        Ok("productpage v1".into())
    );

    // A TLS server: the gateway terminates TLS with the Secret's
    // certificate, then proxies the bytes (here HTTP) by the tcp route.
    assert_eq!(
        curl(
            &pki.ca(),
            "bookinfo.example.com",
            9444,
            "/productpage",
            None
        ),
        Ok("productpage v1".into())
    );
    assert_eq!(gw.stat("listener.0.0.0.0_9444.ssl.handshake"), 1);
    assert_eq!(
        gw.stat("tcp.tls.9444.tls.bookinfo-gateway.istio-system.downstream_cx_total"),
        1,
        "the tcp_proxy carried it"
    );

    // MUTUAL with a pin (`verifyCertificateHash`): of two client
    // certificates from the CA, only the pinned one gets in.
    let (other_cert, other_key) = pki.issue("other-client.example.com");
    let fingerprint = String::from_utf8(
        Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(&client_cert)
            .output()
            .expect("openssl")
            .stdout,
    )
    .unwrap();
    let pin = fingerprint.trim().rsplit('=').next().unwrap().to_owned();
    // And its public key's pin, which Envoy takes as well (either matches).
    let spki = String::from_utf8(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl x509 -in {} -noout -pubkey | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | openssl enc -base64",
                client_cert.display()
            ))
            .output()
            .expect("openssl")
            .stdout,
    )
    .unwrap();
    let spki = spki.trim().to_owned();
    mesh.apply(
        &[&gw],
        "gateway.yaml",
        &gateway_yaml.replace(
            "tls: {mode: MUTUAL, credentialName: bookinfo-credential}",
            &format!(
                "tls: {{mode: MUTUAL, credentialNames: [bookinfo-credential], verifyCertificateHash: ['{pin}'], verifyCertificateSpki: ['{spki}']}}"
            ),
        ),
    );
    let mutual = |cert: &Path, key: &Path| {
        curl(
            &pki.ca(),
            "bookinfo.example.com",
            9443,
            "/productpage",
            Some((cert, key)),
        )
    };
    assert_eq!(
        mutual(&client_cert, &client_key),
        Ok("productpage v1".into())
    );
    assert!(mutual(&other_cert, &other_key).is_err());
    assert!(gw.stat("listener.0.0.0.0_9443.ssl.fail_verify_cert_hash") >= 1);

    // MUTUAL with the CA's revocation list in the Secret (`ca.crl`): the
    // revoked client is refused, the other still gets in.
    let crl = pki.revoke(&other_cert);
    mesh.cfg.write(
        "secret.yaml",
        &e2e::tls::tls_secret_with_crl(
            "istio-system",
            "bookinfo-credential",
            &cert,
            &key,
            &pki.ca(),
            &crl,
        ),
    );
    mesh.apply(&[&gw], "gateway.yaml", gateway_yaml);
    assert_eq!(
        mutual(&client_cert, &client_key),
        Ok("productpage v1".into())
    );
    assert!(mutual(&other_cert, &other_key).is_err());
    assert!(gw.stat("listener.0.0.0.0_9443.ssl.fail_verify_error") >= 1);

    // MUTUAL with `caCertCredentialName`: the clients a partner's CA
    // issued get in, the bookinfo CA's no longer do.
    let partner = Pki::new();
    let (partner_cert, partner_key) = partner.issue("partner.example.com");
    let partner_ca = std::fs::read_to_string(partner.ca()).unwrap();
    let indented: String = partner_ca.lines().map(|l| format!("    {l}\n")).collect();
    mesh.cfg.write(
        "partner-ca.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: partner-ca, namespace: istio-system}}\nstringData:\n  ca.crt: |\n{indented}"
        ),
    );
    mesh.apply(
        &[&gw],
        "gateway.yaml",
        &gateway_yaml.replace(
            "tls: {mode: MUTUAL, credentialName: bookinfo-credential}",
            "tls: {mode: MUTUAL, credentialName: bookinfo-credential, caCertCredentialName: partner-ca}",
        ),
    );
    assert_eq!(
        mutual(&partner_cert, &partner_key),
        Ok("productpage v1".into())
    );
    assert!(mutual(&client_cert, &client_key).is_err());
    assert_eq!(gw.rejected(), 0);
}

#[test]
fn passthrough_routes_tls_by_sni_to_the_right_backend() {
    let pki = Pki::new();
    let mesh = Mesh::start(false, &[]);
    let (a_cert, a_key) = pki.issue("a.passthrough.test");
    let (b_cert, b_key) = pki.issue("b.passthrough.test");
    let _a = TlsServer::start("127.0.3.1:9443", &a_cert, &a_key);
    let _b = TlsServer::start("127.0.3.2:9443", &b_cert, &b_key);
    mesh.cfg.write(
        "passthrough.yaml",
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a-backend}
spec:
  hosts: [a.internal]
  ports: [{number: 9443, name: tls, protocol: TLS}]
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints: [{address: 127.0.3.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b-backend}
spec:
  hosts: [b.internal]
  ports: [{number: 9443, name: tls, protocol: TLS}]
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints: [{address: 127.0.3.2}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: passthrough, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8444, name: tls, protocol: TLS}
    hosts: [\"*.passthrough.test\"]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: passthrough}
spec:
  hosts: [a.passthrough.test, b.passthrough.test]
  gateways: [istio-system/passthrough]
  tls:
  - match: [{sniHosts: [a.passthrough.test]}]
    route: [{destination: {host: a.internal, port: {number: 9443}}}]
  - match: [{sniHosts: [b.passthrough.test]}]
    route: [{destination: {host: b.internal, port: {number: 9443}}}]
",
    );
    let gw = gateway(&mesh);
    // The backends terminate TLS themselves: curl only verifies if the
    // gateway sent each SNI to the backend holding that name's certificate.
    for host in ["a.passthrough.test", "b.passthrough.test"] {
        let page = curl(&pki.ca(), host, 8444, "/", None).unwrap_or_else(|e| panic!("{host}: {e}"));
        assert!(page.contains("s_server"), "{host}: {page}");
    }
    assert!(
        curl(&pki.ca(), "c.passthrough.test", 8444, "/", None).is_err(),
        "no route for c"
    );
    assert_eq!(gw.rejected(), 0);
}

/// A Gateway server in `AUTO_PASSTHROUGH` mode (Istio's east-west
/// gateway): TLS whose SNI is Istio's `outbound_.<port>_.<subset>_.<host>`
/// is passed through to that service's endpoints, no VirtualService
/// needed; an SNI naming no service gets nowhere.
#[test]
fn auto_passthrough_sends_tls_where_its_sni_names() {
    let pki = Pki::new();
    let mesh = Mesh::start(false, &[]);
    let sni = "outbound_.9443_._.tls-echo.internal";
    let (cert, key) = pki.issue(sni);
    let _server = TlsServer::start("127.0.3.5:9443", &cert, &key);
    mesh.cfg.write(
        "east-west.yaml",
        &("apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: tls-echo}
spec:
  hosts: [tls-echo.internal]
  ports: [{number: 9443, name: tls, protocol: TLS}]
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints: [{address: 127.0.3.5}]
---
"
        .to_owned()
            + &e2e::east_west_gateway("'*.internal'")),
    );
    let gw = gateway(&mesh);
    let page = curl(&pki.ca(), sni, 15443, "/", None).unwrap_or_else(|e| panic!("{sni}: {e}"));
    assert!(page.contains("s_server"), "{page}");
    assert!(
        curl(
            &pki.ca(),
            "outbound_.9443_._.nope.internal",
            15443,
            "/",
            None
        )
        .is_err(),
        "no such service"
    );
    assert_eq!(gw.rejected(), 0);
}

/// Gateway `servers[].bind`: two servers on one port, each bound to its
/// own address, are two listeners with their own routes; an address
/// neither binds gets no answer on that port.
#[test]
fn servers_bound_to_addresses_listen_only_there() {
    let mesh = Mesh::start(false, &[]);
    let server = |name: &str, bind: &str, backend: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8090, name: http, protocol: HTTP}}
    bind: {bind}
    hosts: [\"*\"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: istio-system}}
spec:
  hosts: [\"*\"]
  gateways: [{name}]
  http:
  - route: [{{destination: {{host: {backend}.default.svc.cluster.local, port: {{number: 9080}}}}}}]
---
"
        )
    };
    let dir = e2e::socket_dir();
    let socket = dir.path().join("gateway.sock");
    mesh.cfg.write(
        "bound.yaml",
        &(server("inner", "127.0.5.1", "ratings")
            + &server("outer", "127.0.5.2", "details")
            + &server(
                "local",
                &format!("'unix://{}'", socket.display()),
                "reviews",
            )),
    );
    let gw = gateway(&mesh);
    let get = |ip: &str| http_request(&format!("http://{ip}:8090/"), &[]);
    assert_eq!(get("127.0.5.1").map(|r| r.body), Ok("ratings v1".into()));
    assert_eq!(get("127.0.5.2").map(|r| r.body), Ok("details v1".into()));
    assert!(get("127.0.5.3").is_err(), "nothing bound there");
    // A server bound to a unix domain socket: the gateway listens there.
    let answer = e2e::get_over_socket(&socket, "reviews").unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\r\n\r\nreviews v"), "{answer}");
    assert_eq!(gw.rejected(), 0);
}

/// `tls.tlsCertificates`: a SIMPLE server with an RSA and an ECDSA
/// certificate from files; Envoy presents the one the client's cipher
/// suites call for, and both verify.
#[test]
fn a_server_with_rsa_and_ecdsa_certificates_presents_what_the_client_takes() {
    let pki = Pki::new();
    let host = "multi.example.com";
    let (ec_cert, ec_key) = pki.issue(host);
    let (rsa_cert, rsa_key) = pki.issue_rsa(host);
    pki.share();
    let mesh = Mesh::start(false, &[]);
    let path = |p: &Path| p.display().to_string();
    mesh.cfg.write(
        "multi.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: multi, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8446, name: https, protocol: HTTPS}}
    hosts: [{host}]
    tls:
      mode: SIMPLE
      tlsCertificates:
      - {{serverCertificate: {}, privateKey: {}}}
      - {{serverCertificate: {}, privateKey: {}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: multi, namespace: istio-system}}
spec:
  hosts: [{host}]
  gateways: [multi]
  http:
  - route: [{{destination: {{host: productpage.default.svc.cluster.local, port: {{number: 9080}}}}}}]
",
            path(&rsa_cert),
            path(&rsa_key),
            path(&ec_cert),
            path(&ec_key)
        ),
    );
    let gw = gateway(&mesh);
    // The server's key, as openssl reports it, for a TLS 1.2 client
    // offering only `cipher`.
    let key_with = |cipher: &str| {
        let out = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                "127.0.0.1:8446",
                "-servername",
                host,
            ])
            .args([
                "-tls1_2",
                "-cipher",
                cipher,
                "-verify_return_error",
                "-CAfile",
            ])
            .arg(pki.ca())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            text.contains("Verify return code: 0 (ok)"),
            "{cipher}: {text}"
        );
        text.lines()
            .find_map(|l| l.strip_prefix("Server public key is "))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("{cipher}: {text}"))
    };
    assert_eq!(key_with("ECDHE-RSA-AES128-GCM-SHA256"), "2048 bit");
    assert_eq!(key_with("ECDHE-ECDSA-AES128-GCM-SHA256"), "256 bit");
    assert_eq!(
        curl(&pki.ca(), host, 8446, "/productpage", None),
        Ok("productpage v1".into())
    );
    assert_eq!(gw.rejected(), 0);
}

/// A test CA and a mesh with the Secret `istio-system/bookinfo-credential`:
/// a certificate for `bookinfo.example.com` from it (returned, with its
/// key), and its CA.
fn credential_mesh() -> (Pki, Mesh, (PathBuf, PathBuf)) {
    let pki = Pki::new();
    let (cert, key) = pki.issue("bookinfo.example.com");
    let mesh = Mesh::start(false, &[]);
    mesh.cfg.write(
        "secret.yaml",
        &tls_secret(
            "istio-system",
            "bookinfo-credential",
            &cert,
            &key,
            &pki.ca(),
        ),
    );
    (pki, mesh, (cert, key))
}

/// The ingress gateway proxy, connected once the test's files are loaded.
fn gateway(mesh: &Mesh) -> e2e::Envoy {
    mesh.wait_loaded(2);
    mesh.proxy(GATEWAY, &GATEWAY_LABELS, 15000)
}

/// The Kubernetes Gateway API on the ingress gateway: a `Gateway` (HTTP
/// and HTTPS listeners, the certificate a `certificateRefs` Secret) whose
/// Service selects the gateway pod, and an `HTTPRoute` from another
/// namespace with a weighted split, a segment-wise path prefix with its
/// prefix dropped by `URLRewrite`, a header match and header modifier, a
/// redirect, and a backend that does not exist (500); a wildcard listener
/// on the same port that leaves the exact listener's host to it (listener
/// isolation); and a `GRPCRoute`
/// on the same listener.
#[test]
fn gateway_api_gateway_and_httproute() {
    let (pki, mesh, _) = credential_mesh();
    mesh.cfg.write(
        "gateway-api.yaml",
        "apiVersion: v1
kind: Service
metadata: {name: bookinfo-gw-istio, namespace: istio-system}
spec:
  clusterIP: 10.96.0.90
  selector: {istio: ingressgateway}
  ports: [{name: http, port: 8080}, {name: https, port: 8443}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: bookinfo-gw, namespace: istio-system}
spec:
  gatewayClassName: istio
  listeners:
  - name: http
    port: 8080
    protocol: HTTP
    hostname: bookinfo.example.com
    allowedRoutes: {namespaces: {from: All}}
  - name: https
    port: 8443
    protocol: HTTPS
    hostname: bookinfo.example.com
    allowedRoutes: {namespaces: {from: All}}
    tls: {certificateRefs: [{name: bookinfo-credential}]}
  - name: a-wildcard
    port: 8080
    protocol: HTTP
    hostname: '*.example.com'
    allowedRoutes: {namespaces: {from: All}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: wildcard, namespace: default}
spec:
  parentRefs: [{name: bookinfo-gw, namespace: istio-system, sectionName: a-wildcard}]
  hostnames: [bookinfo.example.com, other.example.com]
  rules:
  - matches: [{path: {type: PathPrefix, value: /isolated}}]
    backendRefs: [{name: ratings, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bookinfo, namespace: default}
spec:
  parentRefs: [{name: bookinfo-gw, namespace: istio-system}]
  hostnames: [bookinfo.example.com]
  rules:
  - matches: [{path: {type: PathPrefix, value: /split}}]
    backendRefs:
    - {name: productpage, port: 9080, weight: 80}
    - {name: ratings, port: 9080, weight: 20}
  - matches: [{path: {type: PathPrefix, value: /api}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}
    backendRefs: [{name: details, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /header}, headers: [{name: x-canary, value: 'yes'}]}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-via, value: gateway-api}]}
    backendRefs: [{name: ratings, port: 9080}]
  - matches: [{path: {type: Exact, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /new}, statusCode: 301}
  - matches: [{path: {type: PathPrefix, value: /missing}}]
    backendRefs: [{name: nowhere, port: 9080}]
  - backendRefs: [{name: productpage, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: greeter, namespace: default}
spec:
  parentRefs: [{name: bookinfo-gw, namespace: istio-system, sectionName: http}]
  hostnames: [bookinfo.example.com]
  rules:
  - matches: [{method: {service: helloworld.Greeter, method: SayHello}}]
    backendRefs: [{name: ratings, port: 9080}]
",
    );
    let gw = gateway(&mesh);
    let url = |path: &str| format!("http://127.0.0.1:8080{path}");
    let host = "bookinfo.example.com";

    // The weighted split between two Services.
    let counts = e2e::tally(&url("/split"), host, &[], 200);
    let ratings = counts.get("ratings v1").copied().unwrap_or(0);
    assert_eq!(
        counts.get("productpage v1").copied().unwrap_or(0) + ratings,
        200,
        "{counts:?}"
    );
    e2e::assert_binomial(ratings, 200, 0.2, "ratings' share");

    // `PathPrefix: /api` matches whole segments, and the rewrite to `/`
    // drops the prefix: details sees `/v1/books`.
    let r = http_request(&url("/api/v1/books"), &[("host", host)]).unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "details v1"));
    assert_eq!(mesh.seen("/v1/books").len(), 1, "prefix dropped");
    let r = http_request(&url("/apiary"), &[("host", host)]).unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "productpage v1"));
    assert_eq!(mesh.seen("/apiary").len(), 1, "not rewritten");

    // The header match, and the header set on the way.
    let r = http_request(
        &url("/header/x-via"),
        &[("host", host), ("x-canary", "yes")],
    )
    .unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "gateway-api"));
    let r = http_request(&url("/header/x-via"), &[("host", host)]).unwrap();
    assert_eq!(r.body, "(none)", "productpage, untouched");

    // The redirect keeps the request's port (the Gateway API's rule).
    let r = http_request(&url("/old"), &[("host", host)]).unwrap();
    assert_eq!(r.status, 301, "{r:?}");
    assert_eq!(
        r.headers.get("location").map(String::as_str),
        Some("http://bookinfo.example.com:8080/new")
    );

    // A backend that does not exist: 500, not 503.
    let r = http_request(&url("/missing"), &[("host", host)]).unwrap();
    assert_eq!(r.status, 500, "{r:?}");

    // Listener isolation: the wildcard listener's route serves
    // other.example.com, but not bookinfo.example.com, which the `http`
    // listener names exactly (there, `/isolated` falls to the catch-all).
    let r = http_request(&url("/isolated"), &[("host", "other.example.com")]).unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "ratings v1"));
    let r = http_request(&url("/isolated"), &[("host", host)]).unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "productpage v1"));

    // The GRPCRoute, merged with the HTTPRoute on the same listener and
    // host, routes by gRPC service and method (the path `/<service>/<method>`).
    let r = http_request(&url("/helloworld.Greeter/SayHello"), &[("host", host)]).unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "ratings v1"));
    let r = http_request(&url("/helloworld.Greeter/SayBye"), &[("host", host)]).unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "productpage v1"));

    // HTTPS with the certificateRefs Secret.
    assert_eq!(
        curl(&pki.ca(), host, 8443, "/productpage", None),
        Ok("productpage v1".into())
    );
    assert_eq!(gw.rejected(), 0);
}

/// TCPRoutes and TLSRoutes on the ingress gateway (Istio's "Ingress
/// Gateways without TLS Termination" and TCP traffic shifting tasks, in
/// Gateway API form): a TLS listener passing TLS through to the backend its
/// SNI names (a TLSRoute per name, one to a Service, one to an Istio
/// `Hostname`), a TCP listener splitting connections 80/20, and a TLS
/// listener terminating TLS before a TCPRoute.
#[test]
fn gateway_api_tls_passthrough_tcp_and_terminated_tls() {
    let (pki, mesh, _) = credential_mesh();
    let (a_cert, a_key) = pki.issue("a.passthrough.test");
    let (b_cert, b_key) = pki.issue("b.passthrough.test");
    let _a = TlsServer::start("127.0.3.1:9443", &a_cert, &a_key);
    let _b = TlsServer::start("127.0.3.2:9443", &b_cert, &b_key);
    mesh.cfg.write(
        "gateway-api-l4.yaml",
        "apiVersion: v1
kind: Service
metadata: {name: l4-gw-istio, namespace: istio-system}
spec:
  clusterIP: 10.96.0.91
  selector: {istio: ingressgateway}
  ports: [{name: tls, port: 8444}, {name: tcp, port: 9000}, {name: tls-terminate, port: 9444}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a-backend, namespace: default}
spec:
  hosts: [a.internal]
  ports: [{number: 9443, name: tls, protocol: TLS}]
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints: [{address: 127.0.3.1}]
---
apiVersion: v1
kind: Service
metadata: {name: b-tls, namespace: default}
spec:
  clusterIP: 10.96.0.92
  ports: [{name: tls, port: 9443}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: b-tls-1, namespace: default, labels: {kubernetes.io/service-name: b-tls}}
addressType: IPv4
ports: [{name: tls, port: 9443}]
endpoints: [{addresses: [127.0.3.2]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: l4-gw, namespace: istio-system}
spec:
  gatewayClassName: istio
  listeners:
  - name: tls
    port: 8444
    protocol: TLS
    hostname: '*.passthrough.test'
    tls: {mode: Passthrough}
    allowedRoutes: {namespaces: {from: All}}
  - name: tcp
    port: 9000
    protocol: TCP
    allowedRoutes: {namespaces: {from: All}}
  - name: tls-terminate
    port: 9444
    protocol: TLS
    hostname: bookinfo.example.com
    tls: {certificateRefs: [{name: bookinfo-credential}]}
    allowedRoutes: {namespaces: {from: All}}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: a, namespace: default}
spec:
  parentRefs: [{name: l4-gw, namespace: istio-system}]
  hostnames: [a.passthrough.test]
  rules: [{backendRefs: [{group: networking.istio.io, kind: Hostname, name: a.internal, port: 9443}]}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: b, namespace: default}
spec:
  parentRefs: [{name: l4-gw, namespace: istio-system}]
  hostnames: [b.passthrough.test]
  rules: [{backendRefs: [{name: b-tls, port: 9443}]}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: shift, namespace: default}
spec:
  parentRefs: [{name: l4-gw, namespace: istio-system, sectionName: tcp}]
  rules:
  - backendRefs:
    - {name: productpage, port: 9080, weight: 80}
    - {name: ratings, port: 9080, weight: 20}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: terminated, namespace: default}
spec:
  parentRefs: [{name: l4-gw, namespace: istio-system, sectionName: tls-terminate}]
  rules: [{backendRefs: [{name: details, port: 9080}]}]
",
    );
    let gw = gateway(&mesh);

    // Passed through: curl verifies each name only if the gateway sent
    // its SNI to the backend holding that name's certificate.
    for host in ["a.passthrough.test", "b.passthrough.test"] {
        let page = curl(&pki.ca(), host, 8444, "/", None).unwrap_or_else(|e| panic!("{host}: {e}"));
        assert!(page.contains("s_server"), "{host}: {page}");
    }
    assert!(
        curl(&pki.ca(), "c.passthrough.test", 8444, "/", None).is_err(),
        "no TLSRoute for c"
    );

    // The TCP listener: HTTP inside TCP, each request its own connection,
    // split 80/20 per connection.
    let counts = e2e::tally("http://127.0.0.1:9000/", "anything", &[], 200);
    let ratings = counts.get("ratings v1").copied().unwrap_or(0);
    assert_eq!(
        counts.get("productpage v1").copied().unwrap_or(0) + ratings,
        200,
        "{counts:?}"
    );
    e2e::assert_binomial(ratings, 200, 0.2, "ratings' share of connections");

    // TLS terminated with the certificateRefs Secret, then TCP to details.
    assert_eq!(
        curl(&pki.ca(), "bookinfo.example.com", 9444, "/", None),
        Ok("details v1".into())
    );
    assert_eq!(gw.rejected(), 0);
}

/// A BackendTLSPolicy (Gateway API) on the ingress gateway: the route's
/// backend serves TLS only; the gateway originates TLS to it with the
/// policy's SNI name, verifying its certificate with the CA of a
/// ConfigMap (served over SDS as `configmap://<namespace>/<name>`). With a
/// name the certificate does not hold, the gateway refuses the backend.
#[test]
fn a_backend_tls_policy_makes_the_gateway_originate_verified_tls() {
    let pki = Pki::new();
    let mesh = Mesh::start(false, &[]);
    let (cert, key) = pki.issue("auth.example.com");
    let _backend = TlsServer::start("127.0.3.5:9443", &cert, &key);
    let ca_yaml = e2e::tls::ca_config_map("default", "backend-ca", &pki.ca());
    let policy = |hostname: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {{name: secure-backend, namespace: default}}
spec:
  targetRefs: [{{group: '', kind: Service, name: secure-backend}}]
  validation:
    caCertificateRefs: [{{group: '', kind: ConfigMap, name: backend-ca}}]
    hostname: {hostname}
"
        )
    };
    mesh.cfg
        .write("backend-tls.yaml", &secure_backend(&ca_yaml, ""));
    mesh.cfg.write("policy.yaml", &policy("auth.example.com"));
    let gw = gateway(&mesh);
    let get = || http_request("http://127.0.0.1:8080/", &[("host", "secure.example.com")]);
    // openssl's status page: the request reached it over TLS.
    let r = get().unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("s_server"), "{}", r.body);

    // A name the backend's certificate does not hold: refused.
    mesh.cfg.write("policy.yaml", &policy("other.example.com"));
    e2e::eventually(
        Duration::from_secs(10),
        || get().ok().filter(|r| r.status == 503),
        || format!("{:?}", get()),
    );
    // Without the policy the gateway speaks plain HTTP to a TLS port.
    mesh.cfg.remove("policy.yaml");
    e2e::eventually(
        Duration::from_secs(10),
        || get().ok().filter(|r| r.status != 200),
        || format!("{:?}", get()),
    );
    assert_eq!(gw.rejected(), 0);
}

/// The gateway `origin-gw` (HTTP on 8080, host `secure.example.com`,
/// `gateway_spec` added to its spec) routing to the Service
/// `secure-backend` (10.96.0.94:9443, its endpoint 127.0.3.5), with
/// `ca_yaml` (the backend's CA) beside them.
fn secure_backend(ca_yaml: &str, gateway_spec: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: origin-gw-istio, namespace: istio-system}}
spec:
  clusterIP: 10.96.0.93
  selector: {{istio: ingressgateway}}
  ports: [{{name: http, port: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: secure-backend, namespace: default}}
spec:
  clusterIP: 10.96.0.94
  ports: [{{name: http, port: 9443}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: secure-backend-1, namespace: default, labels: {{kubernetes.io/service-name: secure-backend}}}}
addressType: IPv4
ports: [{{name: http, port: 9443}}]
endpoints: [{{addresses: [127.0.3.5]}}]
---
{ca_yaml}---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: origin-gw, namespace: istio-system}}
spec:
  gatewayClassName: istio
  listeners:
  - {{name: http, port: 8080, protocol: HTTP, hostname: secure.example.com, allowedRoutes: {{namespaces: {{from: All}}}}}}
{gateway_spec}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: secure, namespace: default}}
spec:
  parentRefs: [{{name: origin-gw, namespace: istio-system}}]
  rules: [{{backendRefs: [{{name: secure-backend, port: 9443}}]}}]
"
    )
}

/// A Gateway's `spec.tls.backend.clientCertificateRef` (Gateway API 1.5)
/// on a real Envoy: a backend that demands a client certificate (openssl
/// `s_server -Verify`) refuses the gateway's TLS until the Gateway names
/// its client certificate Secret; then the request reaches it with that
/// certificate (its status page shows it).
#[test]
fn a_gateway_presents_its_backend_client_certificate() {
    let pki = Pki::new();
    let mesh = Mesh::start(false, &[]);
    let (cert, key) = pki.issue("auth.example.com");
    let _backend = TlsServer::start_with("127.0.3.5:9443", &cert, &key, Some(&pki.ca()));
    let (client_cert, client_key) = pki.issue("origin-gw.example.com");
    let ca_yaml = e2e::tls::ca_config_map("default", "backend-ca", &pki.ca());
    let client_secret = e2e::tls::tls_secret(
        "istio-system",
        "gw-client",
        &client_cert,
        &client_key,
        &pki.ca(),
    );
    mesh.cfg.write(
        "policy.yaml",
        &format!(
            "{client_secret}---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {{name: secure-backend, namespace: default}}
spec:
  targetRefs: [{{group: '', kind: Service, name: secure-backend}}]
  validation:
    caCertificateRefs: [{{group: '', kind: ConfigMap, name: backend-ca}}]
    hostname: auth.example.com
"
        ),
    );
    mesh.cfg
        .write("backend-tls.yaml", &secure_backend(&ca_yaml, ""));
    let gw = gateway(&mesh);
    let get = || http_request("http://127.0.0.1:8080/", &[("host", "secure.example.com")]);
    // No client certificate: the backend ends the handshake.
    let r = get().unwrap();
    assert_eq!(r.status, 503, "{r:?}");

    mesh.cfg.write(
        "backend-tls.yaml",
        &secure_backend(
            &ca_yaml,
            "  tls: {backend: {clientCertificateRef: {name: gw-client}}}\n",
        ),
    );
    let r = e2e::eventually(
        Duration::from_secs(10),
        || get().ok().filter(|r| r.status == 200),
        || format!("{:?}", get()),
    );
    assert_eq!(
        e2e::tls::first_certificate_sans(&r.body),
        ["origin-gw.example.com"]
    );
    assert_eq!(gw.rejected(), 0);
}

/// ListenerSets (Gateway API 1.5) on a real Envoy: a Gateway that allows
/// them (`allowedListeners`) gets, from a ListenerSet in another namespace,
/// an HTTPS listener with that namespace's own certificate (the
/// multi-tenant case ListenerSets exist for) and a route attached to the
/// ListenerSet: curl verifies the team's certificate and gets the
/// backend. Until the Gateway allows it, the listener is not served.
#[test]
fn a_listener_set_adds_an_https_listener_with_its_own_certificate() {
    let pki = Pki::new();
    let (cert, key) = pki.issue("team.example.com");
    let mesh = Mesh::start(false, &[]);
    let gateway_yaml = |allowed: &str| {
        format!(
            "apiVersion: v1
kind: Service
metadata: {{name: shared-gw-istio, namespace: istio-system}}
spec:
  clusterIP: 10.96.0.95
  selector: {{istio: ingressgateway}}
  ports: [{{name: http, port: 8080}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: shared-gw, namespace: istio-system}}
spec:
  gatewayClassName: istio
{allowed}  listeners:
  - {{name: http, port: 8080, protocol: HTTP, hostname: shared.example.com}}
"
        )
    };
    mesh.cfg.write("gateway.yaml", &gateway_yaml(""));
    mesh.cfg.write(
        "team.yaml",
        &format!(
            "{}---
apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata: {{name: team, namespace: default}}
spec:
  parentRef: {{name: shared-gw, namespace: istio-system}}
  listeners:
  - name: https
    port: 8443
    protocol: HTTPS
    hostname: team.example.com
    tls: {{certificateRefs: [{{name: team-cert}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: team, namespace: default}}
spec:
  parentRefs: [{{kind: ListenerSet, name: team, sectionName: https}}]
  rules: [{{backendRefs: [{{name: productpage, port: 9080}}]}}]
",
            tls_secret("default", "team-cert", &cert, &key, &pki.ca())
        ),
    );
    let gw = gateway(&mesh);
    // Not allowed: nothing listens on 8443.
    let get = || curl(&pki.ca(), "team.example.com", 8443, "/", None);
    assert!(get().is_err(), "{:?}", get());

    mesh.cfg.write(
        "gateway.yaml",
        &gateway_yaml("  allowedListeners: {namespaces: {from: All}}\n"),
    );
    let body = e2e::eventually(
        Duration::from_secs(10),
        || get().ok(),
        || format!("{:?}", get()),
    );
    assert_eq!(body, "productpage v1");
    assert_eq!(gw.rejected(), 0);
}

/// A GRPCRoute carrying real gRPC (HTTP/2 both ways) through the gateway:
/// its backend is the daemon's own xDS port (a gRPC server), reached by a
/// Service port named `grpc`; a tonic client opens an ADS stream through
/// the gateway and gets its first response, routed by service and method.
#[test]
fn a_grpcroute_carries_real_grpc_through_the_gateway() {
    let mesh = Mesh::start(false, &[]);
    let xds = mesh.daemon.xds_addr;
    let port = xds.port();
    mesh.cfg.write(
        "grpc.yaml",
        &format!(
            "apiVersion: v1
kind: Service
metadata: {{name: grpc-gw-istio, namespace: istio-system}}
spec:
  clusterIP: 10.96.0.95
  selector: {{istio: ingressgateway}}
  ports: [{{name: grpc, port: 8082}}]
---
apiVersion: v1
kind: Service
metadata: {{name: xds, namespace: default}}
spec:
  clusterIP: 10.96.0.96
  ports: [{{name: grpc, port: {port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: xds-1, namespace: default, labels: {{kubernetes.io/service-name: xds}}}}
addressType: IPv4
ports: [{{name: grpc, port: {port}}}]
endpoints: [{{addresses: ['{ip}']}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: grpc-gw, namespace: istio-system}}
spec:
  gatewayClassName: istio
  listeners:
  - {{name: grpc, port: 8082, protocol: HTTP, allowedRoutes: {{namespaces: {{from: All}}}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: ads, namespace: default}}
spec:
  parentRefs: [{{name: grpc-gw, namespace: istio-system}}]
  rules:
  - matches:
    - method: {{service: envoy.service.discovery.v3.AggregatedDiscoveryService, method: StreamAggregatedResources}}
    backendRefs: [{{name: xds, port: {port}}}]
",
            ip = xds.ip()
        ),
    );
    let gw = gateway(&mesh);
    let response = mesh.block_on(async {
        let mut stream = e2e::ads_stream(
            "127.0.0.1:8082".parse().unwrap(),
            "sidecar~127.0.0.9~client.default~default.svc.cluster.local",
            &[],
        )
        .await;
        tokio::time::timeout(Duration::from_secs(10), stream.responses.message()).await
    });
    let response = response
        .expect("a response within 10 s")
        .expect("a gRPC response, not an error")
        .expect("a message");
    assert_eq!(
        response.type_url,
        "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    );
    assert!(
        gw.stat(&format!(
            "cluster.outbound|{port}||xds.default.svc.cluster.local.upstream_cx_http2_total"
        )) >= 1
    );
    // Istio's metrics count the call (its stream ended when the client
    // dropped it) as gRPC, reported by the gateway as the source.
    let labels = [
        ("reporter", "source"),
        ("request_protocol", "grpc"),
        ("destination_service", "xds.default.svc.cluster.local"),
    ];
    e2e::eventually(
        e2e::SYNC,
        || {
            let text = gw.admin("/stats/prometheus")?;
            (e2e::istio_metric(&text, "istio_requests_total", &labels) == Some(1.0)).then_some(())
        },
        || format!("no gRPC call counted:\n{:?}", gw.admin("/stats/prometheus")),
    );
    assert_eq!(gw.rejected(), 0);
}

/// Policies attached to a Gateway API gateway by `targetRefs`, as Istio
/// documents for gateways: an AuthorizationPolicy, a RequestAuthentication
/// and a Telemetry naming the Gateway take effect on its pods (labelled
/// `gateway.networking.k8s.io/gateway-name`, their Service selecting them
/// by it), while the same policies naming another Gateway change nothing.
#[test]
fn policies_attach_to_a_gateway_api_gateway_by_target_refs() {
    let mesh = Mesh::start(false, &[]);
    mesh.cfg
        .write("gateway-api.yaml", e2e::BOOKINFO_GATEWAY_API);
    mesh.wait_loaded(2);
    let gw = mesh.proxy(GATEWAY, &e2e::BOOKINFO_GATEWAY_API_LABELS, 15000);
    let issuer = e2e::JwtIssuer::new("testing@secure.istio.io");
    let get = |path: &str, token: Option<&str>| {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("host", "bookinfo.example.com")];
        headers.extend(bearer.iter().map(|b| ("authorization", b.as_str())));
        http_request(&format!("http://127.0.0.1:8080{path}"), &headers)
            .unwrap()
            .status
    };
    assert_eq!(get("/productpage", None), 200);
    // The policies, for a Gateway named `gateway`.
    let policies = |gateway: &str| {
        let target =
            format!("{{group: gateway.networking.k8s.io, kind: Gateway, name: {gateway}}}");
        format!(
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-admin, namespace: istio-system}}
spec:
  targetRefs: [{target}]
  action: DENY
  rules: [{{to: [{{operation: {{paths: [/productpage/admin]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: istio-system}}
spec:
  targetRef: {target}
  jwtRules: [{{issuer: '{}', jwks: '{}'}}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: gateway-logs, namespace: istio-system}}
spec:
  targetRefs: [{target}]
  accessLogging: [{{providers: [{{name: envoy}}]}}]
",
            issuer.issuer, issuer.jwks
        )
    };

    // Naming another Gateway: nothing changes on this one.
    mesh.apply(&[&gw], "policies.yaml", &policies("other-gw"));
    assert_eq!(get("/productpage/admin", None), 200);
    assert_eq!(get("/productpage", Some("not.a.token")), 200);
    assert!(!gw.stdout().contains("/productpage"), "{}", gw.stdout());

    // Naming this one: the path is refused, a bad token too, and requests
    // are logged.
    mesh.apply(&[&gw], "policies.yaml", &policies("bookinfo-gw"));
    assert_eq!(get("/productpage/admin", None), 403);
    assert_eq!(get("/productpage", Some("not.a.token")), 401);
    let token = issuer.token("alice", serde_json::json!({}));
    assert_eq!(get("/productpage", Some(&token)), 200);
    e2e::eventually(
        Duration::from_secs(5),
        || {
            gw.stdout()
                .contains("\"GET /productpage/admin HTTP/1.1\" 403 ")
                .then_some(())
        },
        || {
            format!(
                "no access log line on the gateway's stdout: {:?}",
                gw.stdout()
            )
        },
    );
    assert_eq!(gw.rejected(), 0);
}

/// One HTTP/1.1 request on a fresh connection to the gateway on
/// 127.0.0.1:`port`, `preface` (a PROXY protocol header) written first:
/// the status and body of the answer, or why there was none.
fn request_after(preface: &str, port: u16, path: &str) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "{preface}GET {path} HTTP/1.1\r\nhost: bookinfo.example.com\r\nconnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no answer: {answer:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status: {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// EnvoyFilter `LISTENER_FILTER` patches on a real gateway, as an
/// ingress behind a load balancer that speaks the PROXY protocol needs
/// them: `INSERT_FIRST` of `envoy.filters.listener.proxy_protocol` makes
/// the gateway read the client's address from the PROXY header (the
/// backend sees it in `x-forwarded-for`) and refuse connections without
/// one; a `MERGE` by `listenerFilter` name allows those again; a `REMOVE`
/// by name takes the filter out.
#[test]
fn listener_filter_patches_make_the_gateway_read_the_proxy_protocol() {
    let mesh = Mesh::start(false, &[]);
    mesh.cfg.write(
        "gateway.yaml",
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ['*']}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge, namespace: istio-system}
spec:
  hosts: ['*']
  gateways: [edge]
  http: [{route: [{destination: {host: productpage.default.svc.cluster.local, port: {number: 9080}}}]}]
",
    );
    let gw = gateway(&mesh);
    let proxied = "PROXY TCP4 203.0.113.7 127.0.0.1 40000 8080\r\n";
    let plain = || request_after("", 8080, "/header/x-forwarded-for");
    let with_header = || request_after(proxied, 8080, "/header/x-forwarded-for");
    let ok = |from: &str| Ok((200, from.to_owned()));
    let refused = Ok((400, "Bad Request".to_owned()));
    // A changed listener filter is a new listener, which Envoy warms
    // before it takes the old one's place: wait for the first answer.
    let settled = |expect: &Result<(u16, String), String>, send: &dyn Fn() -> _| {
        e2e::eventually(
            Duration::from_secs(5),
            || (send() == *expect).then_some(()),
            || format!("wanted {expect:?}, got {:?}", send()),
        )
    };
    assert_eq!(plain(), ok("127.0.0.1"));
    assert_eq!(with_header(), refused, "a PROXY header is not HTTP");
    let patch = |operation: &str, value: &str| {
        format!(
            "apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: proxy-protocol, namespace: istio-system}}
spec:
  workloadSelector: {{labels: {{istio: ingressgateway}}}}
  configPatches:
  - applyTo: LISTENER_FILTER
    match: {{context: GATEWAY, listener: {{portNumber: 8080}}}}
    patch:
      operation: INSERT_FIRST
      value: {{name: envoy.filters.listener.proxy_protocol, typed_config: {{'@type': type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol}}}}
  - applyTo: LISTENER_FILTER
    match: {{context: GATEWAY, listener: {{portNumber: 8080, listenerFilter: envoy.filters.listener.proxy_protocol}}}}
    patch: {{operation: {operation}{value}}}
"
        )
    };
    // Inserted (the second patch merges nothing in): the client's address
    // is the header's, and a connection without one is refused.
    mesh.apply(&[&gw], "envoyfilter.yaml", &patch("MERGE", ", value: {}"));
    settled(&ok("203.0.113.7"), &with_header);
    assert!(plain().is_err(), "no PROXY header, no request");
    // Merged by name: connections without the header are taken again.
    mesh.apply(
        &[&gw],
        "envoyfilter.yaml",
        &patch(
            "MERGE",
            ", value: {typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol, allow_requests_without_proxy_protocol: true}}",
        ),
    );
    settled(&ok("127.0.0.1"), &plain);
    assert_eq!(with_header(), ok("203.0.113.7"));
    // Removed by name: as before.
    mesh.apply(&[&gw], "envoyfilter.yaml", &patch("REMOVE", ""));
    settled(&refused, &with_header);
    assert_eq!(plain(), ok("127.0.0.1"));
    assert_eq!(gw.rejected(), 0);
}

/// Client certificate validation on a Gateway API gateway (GEP-91, the
/// Gateway's `spec.tls.frontend` of Gateway API 1.5): with
/// `AllowValidOnly` the HTTPS listener takes a client certificate from
/// the CA in the ConfigMap `caCertificateRefs` names, and refuses a
/// connection without one, or with one from another CA (the server
/// certificate's own, which its Secret's `ca.crt` holds: the ConfigMap is
/// what decides); with `AllowInsecureFallback` both are let through.
#[test]
fn gateway_api_frontend_validation_verifies_client_certificates() {
    let (pki, mesh, _) = credential_mesh();
    let clients = Pki::new();
    let (client_cert, client_key) = clients.issue("client.example.com");
    let (stranger_cert, stranger_key) = pki.issue("stranger.example.com");
    let config = |mode: &str| {
        format!(
            "{}---
apiVersion: v1
kind: Service
metadata: {{name: mtls-gw-istio, namespace: istio-system}}
spec:
  clusterIP: 10.96.0.91
  selector: {{istio: ingressgateway}}
  ports: [{{name: https, port: 8443}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: mtls-gw, namespace: istio-system}}
spec:
  gatewayClassName: istio
  tls:
    frontend:
      default:
        validation: {{mode: {mode}, caCertificateRefs: [{{group: '', kind: ConfigMap, name: clients-ca}}]}}
  listeners:
  - name: https
    port: 8443
    protocol: HTTPS
    hostname: bookinfo.example.com
    allowedRoutes: {{namespaces: {{from: All}}}}
    tls: {{certificateRefs: [{{name: bookinfo-credential}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: bookinfo, namespace: default}}
spec:
  parentRefs: [{{name: mtls-gw, namespace: istio-system}}]
  rules: [{{backendRefs: [{{name: productpage, port: 9080}}]}}]
",
            e2e::tls::ca_config_map("istio-system", "clients-ca", &clients.ca())
        )
    };
    mesh.cfg
        .write("gateway-api.yaml", &config("AllowValidOnly"));
    let gw = gateway(&mesh);
    let get = |client: Option<(&Path, &Path)>| {
        curl(
            &pki.ca(),
            "bookinfo.example.com",
            8443,
            "/productpage",
            client,
        )
    };
    let client = Some((client_cert.as_path(), client_key.as_path()));
    let stranger = Some((stranger_cert.as_path(), stranger_key.as_path()));
    assert_eq!(get(client), Ok("productpage v1".to_owned()));
    assert!(get(None).is_err(), "no client certificate");
    assert!(get(stranger).is_err(), "a certificate of another CA");
    mesh.apply(&[&gw], "gateway-api.yaml", &config("AllowInsecureFallback"));
    assert_eq!(get(None), Ok("productpage v1".to_owned()));
    assert_eq!(get(stranger), Ok("productpage v1".to_owned()));
    assert_eq!(get(client), Ok("productpage v1".to_owned()));
    assert_eq!(gw.rejected(), 0);
}

/// Istio's "Kubernetes Ingress" task on a real Envoy: an Ingress of class
/// `istio` (its IngressClass names `istio.io/ingress-controller`) is
/// served by the ingress gateway pods on 80, and on 443 with its `tls`
/// Secret; its paths mean what the Ingress API says (`Prefix` by whole
/// path elements, `Exact` only the path); an Ingress of another class is
/// not served. As in Istio's default install, the gateway's Service maps
/// 80 and 443 to 8080 and 8443, where the unprivileged gateway listens
/// (Istio's port translation).
#[test]
fn a_kubernetes_ingress_is_served_by_the_ingress_gateway() {
    let (pki, mesh, _) = credential_mesh();
    mesh.cfg.write(
        "ingress.yaml",
        "apiVersion: v1
kind: Service
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  clusterIP: 10.96.0.80
  selector: {istio: ingressgateway}
  ports:
  - {name: http2, port: 80, targetPort: 8080}
  - {name: https, port: 443, targetPort: 8443}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: istio-ingressgateway-1
  namespace: istio-system
  labels: {kubernetes.io/service-name: istio-ingressgateway}
addressType: IPv4
ports: [{name: http2, port: 8080}, {name: https, port: 8443}]
endpoints: [{addresses: [127.0.0.1]}]
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: istio}
spec: {controller: istio.io/ingress-controller}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: bookinfo, namespace: default}
spec:
  ingressClassName: istio
  tls:
  - {hosts: [bookinfo.example.com], secretName: bookinfo-credential}
  rules:
  - host: bookinfo.example.com
    http:
      paths:
      - {path: /productpage, pathType: Prefix, backend: {service: {name: productpage, port: {number: 9080}}}}
      - {path: /reviews, pathType: Exact, backend: {service: {name: reviews, port: {name: http}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: elsewhere
  namespace: default
  annotations: {kubernetes.io/ingress.class: nginx}
spec:
  rules:
  - host: other.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: details, port: {number: 9080}}}}
",
    );
    let gw = gateway(&mesh);
    let get = |host: &str, path: &str| {
        http_request(&format!("http://127.0.0.1:8080{path}"), &[("host", host)])
            .map(|r| (r.status, r.body))
            .unwrap_or_else(|e| (0, e))
    };
    e2e::eventually(
        Duration::from_secs(10),
        || (get("bookinfo.example.com", "/productpage").0 == 200).then_some(()),
        || format!("{:?}", get("bookinfo.example.com", "/productpage")),
    );
    assert_eq!(
        get("bookinfo.example.com", "/productpage/reviews/1"),
        (200, "productpage v1".into())
    );
    // A prefix matches whole path elements only.
    assert_eq!(get("bookinfo.example.com", "/productpagex").0, 404);
    // Exact: the path and nothing under it.
    assert!(
        get("bookinfo.example.com", "/reviews")
            .1
            .starts_with("reviews v")
    );
    assert_eq!(get("bookinfo.example.com", "/reviews/1").0, 404);
    // The other class's Ingress is not Istio's to serve.
    assert_eq!(get("other.example.com", "/").0, 404);
    // HTTPS with the Ingress's Secret, verified by curl.
    assert_eq!(
        curl(
            &pki.ca(),
            "bookinfo.example.com",
            8443,
            "/productpage",
            None
        ),
        Ok("productpage v1".into())
    );
    assert_eq!(gw.rejected(), 0);
}
