//! Test PKI and TLS servers: a throwaway CA made with `openssl`, the
//! certificates it issues, Kubernetes TLS Secrets holding them, and
//! `openssl s_server` as a TLS backend.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A throwaway CA and the certificates it issues.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Default for Pki {
    fn default() -> Pki {
        Pki::new()
    }
}

/// Runs `openssl` with `args` in `dir`; panics with its complaint if it fails.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (scripts/setup installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    /// A new CA (P-256, valid two days).
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        openssl(
            dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=istiod-e2e test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Pki { dir }
    }

    /// The CA's certificate (PEM file).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A certificate for DNS name `name`, signed by the CA: (cert, key),
    /// a P-256 key.
    pub fn issue(&self, name: &str) -> (PathBuf, PathBuf) {
        self.issue_as(
            name,
            name,
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
        )
    }

    /// As [`Pki::issue`] with an RSA 2048 key (files `<name>-rsa.*`).
    pub fn issue_rsa(&self, name: &str) -> (PathBuf, PathBuf) {
        self.issue_as(name, &format!("{name}-rsa"), &["-newkey", "rsa:2048"])
    }

    /// Makes the CA's folder and files readable by every user (Envoy runs
    /// as the proxy user and reads certificate files named in its config).
    pub fn share(&self) {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        mode(self.dir.path(), 0o755);
        for entry in std::fs::read_dir(self.dir.path()).unwrap() {
            mode(&entry.unwrap().path(), 0o644);
        }
    }

    /// A certificate for `name` in files named `stem`, its key made by
    /// `newkey` (`openssl req` arguments).
    fn issue_as(&self, name: &str, stem: &str, newkey: &[&str]) -> (PathBuf, PathBuf) {
        let d = self.dir.path();
        std::fs::write(
            d.join(format!("{stem}.ext")),
            format!(
                "subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n"
            ),
        )
        .unwrap();
        let (key, csr, crt, ext) = (
            format!("{stem}.key"),
            format!("{stem}.csr"),
            format!("{stem}.crt"),
            format!("{stem}.ext"),
        );
        let subject = format!("/CN={name}");
        let mut req = vec!["req", "-new"];
        req.extend_from_slice(newkey);
        req.extend_from_slice(&["-nodes", "-keyout", &key, "-out", &csr, "-subj", &subject]);
        openssl(d, &req);
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "1",
                "-extfile",
                &ext,
            ],
        );
        (d.join(crt), d.join(key))
    }

    /// Revokes `cert` (one this CA issued) and returns the CA's revocation
    /// list (PEM file) listing every certificate revoked so far.
    pub fn revoke(&self, cert: &Path) -> PathBuf {
        let d = self.dir.path();
        if !d.join("ca.cnf").exists() {
            std::fs::write(
                d.join("ca.cnf"),
                "[ca]\ndefault_ca = own\n[own]\ndatabase = index.txt\ncrlnumber = crlnumber\ndefault_md = sha256\ndefault_crl_days = 1\n",
            )
            .unwrap();
            std::fs::write(d.join("index.txt"), "").unwrap();
            std::fs::write(d.join("crlnumber"), "01\n").unwrap();
        }
        let cert = cert.to_string_lossy();
        let ca_args = ["-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.crt"];
        let mut revoke = vec!["ca", "-revoke", cert.as_ref()];
        revoke.extend(ca_args);
        openssl(d, &revoke);
        let mut crl = vec!["ca", "-gencrl", "-out", "ca.crl"];
        crl.extend(ca_args);
        openssl(d, &crl);
        d.join("ca.crl")
    }
}

/// A `kubernetes.io/tls` Secret with `tls.crt`, `tls.key` and `ca.crt`.
pub fn tls_secret(ns: &str, name: &str, cert: &Path, key: &Path, ca: &Path) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}  ca.crt: |\n{}",
        indented(cert),
        indented(key),
        indented(ca)
    )
}

/// [`tls_secret`] with the CA's revocation list `crl` as `ca.crl`.
pub fn tls_secret_with_crl(
    ns: &str,
    name: &str,
    cert: &Path,
    key: &Path,
    ca: &Path,
    crl: &Path,
) -> String {
    tls_secret(ns, name, cert, key, ca) + &format!("  ca.crl: |\n{}", indented(crl))
}

/// A ConfigMap `ns/name` whose `ca.crt` is the PEM file `ca` (what Gateway
/// API's `caCertificateRefs` name).
pub fn ca_config_map(ns: &str, name: &str, ca: &Path) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {ns}}}\ndata:\n  ca.crt: |\n{}",
        indented(ca)
    )
}

/// The PEM file at `path`, each line indented for a YAML block scalar
/// under `stringData`.
fn indented(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect()
}

/// `curl` over HTTPS to `host:port` at address `at` (`(host, at)`: the
/// name the client asks for, resolved to `at`), verifying the server
/// against `ca`, with a client certificate and key if given: Ok(body) or
/// Err(curl's complaint).
pub fn curl(
    ca: &Path,
    (host, at): (&str, &str),
    port: u16,
    path: &str,
    client: Option<(&Path, &Path)>,
) -> Result<String, String> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--fail", "--max-time", "5", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("{host}:{port}:{at}")]);
    if let Some((cert, key)) = client {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    let out = cmd
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .expect("curl (scripts/setup installs it)");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// An `openssl s_server` on `addr`, killed on drop.
pub struct TlsServer(Child);

impl TlsServer {
    /// Serves `cert` and `key` on `addr`; its status page (`-www`)
    /// answers any GET.
    pub fn start(addr: &str, cert: &Path, key: &Path) -> TlsServer {
        TlsServer::start_with(addr, cert, key, None)
    }

    /// As [`TlsServer::start`], demanding a client certificate issued by
    /// `client_ca` when given (the status page then shows it, PEM).
    pub fn start_with(addr: &str, cert: &Path, key: &Path, client_ca: Option<&Path>) -> TlsServer {
        let mut cmd = Command::new("openssl");
        cmd.args(["s_server", "-quiet", "-www", "-accept", addr, "-cert"])
            .arg(cert)
            .arg("-key")
            .arg(key);
        if let Some(ca) = client_ca {
            cmd.args(["-Verify", "1", "-CAfile"]).arg(ca);
        }
        let server = TlsServer(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("openssl s_server"),
        );
        let addr: std::net::SocketAddrV4 = addr.parse().expect("an IPv4 address and port");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !listening(addr) {
            assert!(
                std::time::Instant::now() < deadline,
                "s_server on {addr} did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        server
    }
}

/// Whether a TCP socket listens on `addr` in this thread's network
/// namespace (read from `/proc/thread-self/net/tcp` rather than by
/// connecting, which a sidecar's capture may redirect).
fn listening(addr: std::net::SocketAddrV4) -> bool {
    // `0A02000C0:01BB`: the address as the kernel holds it (network
    // order read as a little-endian number), the port big-endian.
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(addr.ip().octets()),
        addr.port()
    );
    std::fs::read_to_string("/proc/thread-self/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .any(|line| {
            let mut fields = line.split_whitespace().skip(1);
            // Field 4 is the state; 0A is LISTEN.
            fields.next() == Some(local.as_str()) && fields.nth(1) == Some("0A")
        })
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The DNS names and URIs among the SANs of the first certificate in
/// `page` (the client certificate `openssl s_server -www` shows), in
/// order. Panics when the page holds no certificate.
pub fn first_certificate_sans(page: &str) -> Vec<String> {
    let block = pem::parse_many(page)
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.tag() == "CERTIFICATE")
        .unwrap_or_else(|| panic!("no certificate in the page:\n{page}"));
    let (_, cert) = x509_parser::parse_x509_certificate(block.contents()).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap().value;
    san.general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d)
            | x509_parser::extensions::GeneralName::URI(d) => Some((*d).to_owned()),
            _ => None,
        })
        .collect()
}
