//! Semantic checks on single objects, beyond the schema: what istiod's
//! validation rejects because the mesh could not use it. Used by the folder
//! source now and by the `/validate` webhook later.
//!
//! Only the rules implemented so far are listed; each error names the field.

use crate::document::{Object, ParseError};
use crate::service_entry::Resolution;

/// Checks one parsed object.
///
/// # Errors
/// The first problem found, as [`ParseError::InvalidField`].
pub fn validate(object: &Object) -> Result<(), ParseError> {
    let problems = match object {
        Object::VirtualService(vs) => virtual_service(&vs.spec),
        Object::DestinationRule(dr) => destination_rule(&dr.spec),
        Object::Gateway(gw) => gateway(&gw.spec),
        Object::ServiceEntry(se) => service_entry(&se.spec),
        Object::WorkloadEntry(we) => {
            let mut p = Problems::new();
            workload_entry(&mut p, "spec", &we.spec);
            p
        }
        Object::WorkloadGroup(wg) => workload_group(&wg.spec),
        Object::Sidecar(sc) => sidecar(&sc.spec),
        Object::PeerAuthentication(pa) => peer_authentication(&pa.spec),
        Object::AuthorizationPolicy(ap) => authorization_policy(&ap.spec),
        Object::RequestAuthentication(ra) => request_authentication(&ra.spec),
        Object::Telemetry(t) => telemetry(&t.spec),
        Object::EnvoyFilter(ef) => envoy_filter(&ef.spec),
        Object::WasmPlugin(wp) => wasm_plugin(&wp.spec),
        Object::ConfigMap(cm) if crate::mesh::is_mesh_configmap(cm) => {
            crate::mesh::parse(cm)?;
            Vec::new()
        }
        _ => Vec::new(),
    };
    match problems.into_iter().next() {
        None => Ok(()),
        Some((field, reason)) => {
            let meta = object.metadata();
            Err(ParseError::InvalidField {
                kind: object.kind().to_owned(),
                name: format!(
                    "{}/{}",
                    meta.namespace.as_deref().unwrap_or("default"),
                    meta.name.as_deref().unwrap_or("")
                ),
                field,
                reason,
            })
        }
    }
}

type Problems = Vec<(String, String)>;

/// RE2 and Rust's `regex` share their syntax but for a few escapes; a
/// pattern this parser refuses would be refused by Envoy's RE2 too.
fn check_regex(p: &mut Problems, field: String, pattern: &str) {
    if let Err(e) = regex_syntax::Parser::new().parse(pattern) {
        let reason = e
            .to_string()
            .lines()
            .last()
            .unwrap_or("invalid")
            .trim()
            .to_owned();
        p.push((field, format!("invalid regex {pattern:?}: {reason}")));
    }
}

fn check_match(p: &mut Problems, field: String, m: &crate::StringMatch) {
    if let crate::StringMatch::Regex(r) = m {
        check_regex(p, format!("{field}.regex"), r);
    }
}

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A fully qualified domain name as Istio's `ValidateFQDN`: at most 255
/// characters of dot-separated DNS-1123 labels (either case), a trailing
/// dot allowed.
fn fqdn(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    s.len() <= 255 && s.split('.').all(|l| dns_label(&l.to_ascii_lowercase()))
}

fn virtual_service(spec: &crate::VirtualServiceSpec) -> Problems {
    let mut p = Problems::new();
    // Without hosts a VirtualService can only be a delegate, and a delegate
    // may not be bound to gateways (Istio's rule).
    if spec.hosts.is_empty() && !spec.gateways.is_empty() {
        p.push(("spec.hosts".into(), "at least one host is required".into()));
    }
    for (i, h) in spec.hosts.iter().enumerate() {
        if h.is_empty() {
            p.push((format!("spec.hosts[{i}]"), "empty host".into()));
        }
    }
    for (i, http) in spec.http.iter().enumerate() {
        let f = format!("spec.http[{i}]");
        let actions = [
            !http.route.is_empty(),
            http.redirect.is_some(),
            http.direct_response.is_some(),
            http.delegate.is_some(),
        ];
        match actions.iter().filter(|a| **a).count() {
            0 => p.push((
                format!("{f}.route"),
                "one of route, redirect, directResponse or delegate is required".into(),
            )),
            1 => {}
            _ => p.push((
                f.clone(),
                "route, redirect, directResponse and delegate are mutually exclusive".into(),
            )),
        }
        if let Some(body) = http.direct_response.as_ref().and_then(|d| d.body.as_ref())
            && let Err(e) = body.to_bytes()
        {
            p.push((format!("{f}.directResponse.body.bytes"), e));
        }
        if http.route.len() > 1 {
            let total: i64 = http
                .route
                .iter()
                .map(|d| i64::from(d.weight.unwrap_or(0)))
                .sum();
            if total != 100 {
                p.push((
                    format!("{f}.route"),
                    format!("total destination weight {total} != 100"),
                ));
            }
        }
        for (j, m) in http.matches.iter().enumerate() {
            let mf = format!("{f}.match[{j}]");
            for (name, sm) in [
                ("uri", &m.uri),
                ("scheme", &m.scheme),
                ("method", &m.method),
                ("authority", &m.authority),
            ] {
                if let Some(sm) = sm {
                    check_match(&mut p, format!("{mf}.{name}"), sm);
                }
            }
            for (map, name) in [
                (&m.headers, "headers"),
                (&m.query_params, "queryParams"),
                (&m.without_headers, "withoutHeaders"),
            ] {
                for (k, sm) in map {
                    check_match(&mut p, format!("{mf}.{name}.{k}"), sm);
                }
            }
        }
        if let Some(rr) = http
            .rewrite
            .as_ref()
            .and_then(|r| r.uri_regex_rewrite.as_ref())
        {
            check_regex(
                &mut p,
                format!("{f}.rewrite.uriRegexRewrite.match"),
                &rr.pattern,
            );
        }
        if let Some(cors) = &http.cors_policy {
            for (j, o) in cors.allow_origins.iter().enumerate() {
                check_match(&mut p, format!("{f}.corsPolicy.allowOrigins[{j}]"), o);
            }
        }
        for (j, d) in http.route.iter().enumerate() {
            if d.destination.host.is_empty() {
                p.push((
                    format!("{f}.route[{j}].destination.host"),
                    "required".into(),
                ));
            }
            if let Some(w) = d.weight
                && !(0..=100).contains(&w)
            {
                // (also caught by the total, but this names the destination)
                p.push((
                    format!("{f}.route[{j}].weight"),
                    format!("weight {w} is not in 0..=100"),
                ));
            }
            if let Some(s) = &d.destination.subset
                && !dns_label(s)
            {
                p.push((
                    format!("{f}.route[{j}].destination.subset"),
                    format!("{s:?} is not a DNS-1123 label"),
                ));
            }
        }
        if let Some(t) = http.timeout
            && t.as_std() < std::time::Duration::from_millis(1)
            && !t.as_std().is_zero()
        {
            p.push((format!("{f}.timeout"), "must be at least 1ms".into()));
        }
    }
    p
}

fn destination_rule(spec: &crate::DestinationRuleSpec) -> Problems {
    let mut p = Problems::new();
    if spec.host.is_empty() {
        p.push(("spec.host".into(), "required".into()));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, s) in spec.subsets.iter().enumerate() {
        if !dns_label(&s.name) {
            p.push((
                format!("spec.subsets[{i}].name"),
                format!("{:?} is not a DNS-1123 label", s.name),
            ));
        }
        if !seen.insert(&s.name) {
            p.push((
                format!("spec.subsets[{i}].name"),
                format!("duplicate subset {:?}", s.name),
            ));
        }
        if let Some(tp) = &s.traffic_policy {
            traffic_policy(&mut p, &format!("spec.subsets[{i}].trafficPolicy"), tp);
        }
    }
    if let Some(tp) = &spec.traffic_policy {
        traffic_policy(&mut p, "spec.trafficPolicy", tp);
    }
    p
}

/// A traffic policy's retry budget percentage, load balancer (top level
/// and per port), and tunnel as Istio's `validateTunnelSettings` (with
/// `proxyProtocol` refused beside it).
fn traffic_policy(p: &mut Problems, field: &str, tp: &crate::destination_rule::TrafficPolicy) {
    let pools = tp
        .connection_pool
        .iter()
        .map(|pool| (format!("{field}.connectionPool"), pool))
        .chain(
            tp.port_level_settings
                .iter()
                .enumerate()
                .filter_map(|(i, l)| {
                    let pool = l.connection_pool.as_ref()?;
                    Some((
                        format!("{field}.portLevelSettings[{i}].connectionPool"),
                        pool,
                    ))
                }),
        );
    for (at, pool) in pools {
        let Some(k) = pool.http.as_ref().and_then(|h| h.http2_keep_alive.as_ref()) else {
            continue;
        };
        for (name, d) in [("interval", k.interval), ("timeout", k.timeout)] {
            if d.is_some_and(|d| d.as_std() < std::time::Duration::from_millis(1)) {
                p.push((
                    format!("{at}.http.http2KeepAlive.{name}"),
                    "must be a valid duration greater than 1ms".into(),
                ));
            }
        }
    }
    if let Some(percent) = tp.retry_budget.as_ref().and_then(|b| b.percent)
        && !(0.0..=100.0).contains(&percent)
    {
        p.push((
            format!("{field}.retryBudget.percent"),
            format!("Invalid value: {percent}: must be between 0 and 100"),
        ));
    }
    if let Some(t) = &tp.tunnel {
        if tp.proxy_protocol.is_some() {
            p.push((
                format!("{field}.tunnel"),
                "tunnel and proxyProtocol must not be set together".into(),
            ));
        }
        if let Some(proto) = t.protocol.as_deref()
            && !matches!(proto, "" | "CONNECT" | "POST")
        {
            p.push((
                format!("{field}.tunnel.protocol"),
                format!("{proto:?}: must be \"CONNECT\" or \"POST\""),
            ));
        }
        if t.target_host.parse::<std::net::IpAddr>().is_err() && !fqdn(&t.target_host) {
            p.push((
                format!("{field}.tunnel.targetHost"),
                format!("{:?} is neither an FQDN nor an IP address", t.target_host),
            ));
        }
        if !(1..=65535).contains(&t.target_port) {
            p.push((
                format!("{field}.tunnel.targetPort"),
                format!("{} is not a port", t.target_port),
            ));
        }
    }
    if let Some(lb) = &tp.load_balancer {
        load_balancer(p, &format!("{field}.loadBalancer"), lb);
    }
    // HTTP statuses counted as errors, as Istio's CRD bounds them.
    let outliers = tp
        .outlier_detection
        .iter()
        .map(|o| (format!("{field}.outlierDetection"), o))
        .chain(
            tp.port_level_settings
                .iter()
                .enumerate()
                .filter_map(|(i, l)| {
                    Some((
                        format!("{field}.portLevelSettings[{i}].outlierDetection"),
                        l.outlier_detection.as_ref()?,
                    ))
                }),
        );
    for (at, o) in outliers {
        for (j, code) in o.outlier_detection_http_error_codes.iter().enumerate() {
            if !(100..=599).contains(code) {
                p.push((
                    format!("{at}.outlierDetectionHttpErrorCodes[{j}]"),
                    format!("{code} is not an HTTP status (100-599)"),
                ));
            }
        }
    }
    for (i, port) in tp.port_level_settings.iter().enumerate() {
        if let Some(lb) = &port.load_balancer {
            load_balancer(
                p,
                &format!("{field}.portLevelSettings[{i}].loadBalancer"),
                lb,
            );
        }
    }
}

/// Slow start (`warmup`) as Istio's CRD constrains it: a `duration`,
/// `minimumPercent` within 0..=100, `aggression` at least 1; and, as
/// Istio's `validateLocalityLbSetting`, no topology label in
/// `failoverPriority` beside `failover`.
fn load_balancer(
    p: &mut Problems,
    field: &str,
    lb: &crate::destination_rule::LoadBalancerSettings,
) {
    if let Some(l) = &lb.locality_lb_setting
        && !l.failover.is_empty()
        && let Some(topology) = l.failover_priority.iter().find(|k| {
            matches!(
                k.as_str(),
                "topology.kubernetes.io/region"
                    | "topology.kubernetes.io/zone"
                    | "topology.istio.io/subzone"
            )
        })
    {
        p.push((
            format!("{field}.localityLbSetting.failoverPriority"),
            format!("can not simultaneously set failover and topology label {topology:?} in failover_priority"),
        ));
    }
    let Some(w) = &lb.warmup else { return };
    if w.duration.is_none() {
        p.push((format!("{field}.warmup.duration"), "Required value".into()));
    }
    if let Some(m) = w.minimum_percent
        && !(0.0..=100.0).contains(&m)
    {
        p.push((
            format!("{field}.warmup.minimumPercent"),
            format!("Invalid value: {m}: must be between 0 and 100"),
        ));
    }
    if let Some(a) = w.aggression
        && a < 1.0
    {
        p.push((
            format!("{field}.warmup.aggression"),
            format!("Invalid value: {a}: must be at least 1"),
        ));
    }
}

fn gateway(spec: &crate::GatewaySpec) -> Problems {
    let mut p = Problems::new();
    if spec.servers.is_empty() {
        p.push((
            "spec.servers".into(),
            "at least one server is required".into(),
        ));
    }
    for (i, s) in spec.servers.iter().enumerate() {
        if !(1..=65535).contains(&s.port.number) {
            p.push((
                format!("spec.servers[{i}].port.number"),
                format!("{} is not a port", s.port.number),
            ));
        }
        if s.hosts.is_empty() {
            p.push((
                format!("spec.servers[{i}].hosts"),
                "at least one host is required".into(),
            ));
        }
        // What Envoy takes for client certificate pins, or it refuses the
        // listener: a SHA-256 in hex (colons allowed), and a SHA-256 of the
        // public key in base64.
        if let Some(tls) = &s.tls {
            for (j, hash) in tls.verify_certificate_hash.iter().enumerate() {
                let hex: String = hash.chars().filter(|c| *c != ':').collect();
                if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    p.push((
                        format!("spec.servers[{i}].tls.verifyCertificateHash[{j}]"),
                        format!("{hash:?} is not a SHA-256 in hex"),
                    ));
                }
            }
            for (j, spki) in tls.verify_certificate_spki.iter().enumerate() {
                if !is_base64_sha256(spki) {
                    p.push((
                        format!("spec.servers[{i}].tls.verifyCertificateSpki[{j}]"),
                        format!("{spki:?} is not a SHA-256 in base64"),
                    ));
                }
            }
        }
        // Istio's `validateTLSOptions`: ISTIO_MUTUAL uses the gateway's own
        // workload certificate, nothing else.
        if let Some(tls) = &s.tls
            && tls.mode == Some(crate::gateway::ServerTlsMode::IstioMutual)
        {
            let set = [
                ("serverCertificate", tls.server_certificate.is_some()),
                ("privateKey", tls.private_key.is_some()),
                ("caCertificates", tls.ca_certificates.is_some()),
                ("tlsCertificates", !tls.tls_certificates.is_empty()),
                ("credentialName", tls.credential_name.is_some()),
                ("credentialNames", !tls.credential_names.is_empty()),
            ];
            for (field, _) in set.iter().filter(|(_, set)| *set) {
                p.push((
                    format!("spec.servers[{i}].tls.{field}"),
                    "ISTIO_MUTUAL uses the gateway's workload certificate and cannot have one of its own".into(),
                ));
            }
        }
    }
    p
}

/// Whether `v` is 32 bytes in padded base64 (44 characters, the last `=`,
/// and the bits past the 32nd byte zero).
fn is_base64_sha256(v: &str) -> bool {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = v.as_bytes();
    let value = |c: u8| ALPHABET.iter().position(|a| *a == c);
    b.len() == 44
        && b[43] == b'='
        && b[..43].iter().all(|c| value(*c).is_some())
        && value(b[42]).is_some_and(|v| v % 4 == 0)
}

/// Istio's checks of a Sidecar ingress listener's `tls` (the sidecar
/// terminates it with certificate files of its own): no Secrets, no mesh
/// modes, and only on an `HTTPS` or `TLS` port.
fn ingress_tls(
    p: &mut Problems,
    at: &str,
    port: &crate::gateway::Port,
    tls: &crate::gateway::ServerTlsSettings,
) {
    use crate::gateway::ServerTlsMode;
    let unsupported = [
        ("subjectAltNames", !tls.subject_alt_names.is_empty()),
        ("httpsRedirect", tls.https_redirect == Some(true)),
        ("credentialName", tls.credential_name.is_some()),
        ("credentialNames", !tls.credential_names.is_empty()),
        ("tlsCertificates", !tls.tls_certificates.is_empty()),
    ];
    for (field, _) in unsupported.iter().filter(|(_, set)| *set) {
        p.push((
            format!("{at}.tls.{field}"),
            format!("sidecar: {field} is not supported in ingress tls"),
        ));
    }
    let mesh_mode = match tls.mode {
        Some(ServerTlsMode::IstioMutual) => Some("ISTIO_MUTUAL"),
        Some(ServerTlsMode::AutoPassthrough) => Some("AUTO_PASSTHROUGH"),
        _ => None,
    };
    if let Some(mode) = mesh_mode {
        p.push((
            format!("{at}.tls.mode"),
            format!("configuration is invalid: cannot set mode to {mode} in sidecar ingress tls"),
        ));
    }
    let protocol = port.protocol.to_ascii_uppercase();
    if protocol != "HTTPS" && protocol != "TLS" {
        p.push((
            format!("{at}.port.protocol"),
            "server cannot have TLS settings for non HTTPS/TLS ports".into(),
        ));
    }
}

fn sidecar(spec: &crate::SidecarSpec) -> Problems {
    let mut p = Problems::new();
    if spec.egress.is_empty()
        && spec.ingress.is_empty()
        && spec.outbound_traffic_policy.is_none()
        && spec.inbound_connection_pool.is_none()
    {
        p.push((
            "spec".into(),
            "sidecar: empty configuration provided".into(),
        ));
    }
    if let Some(policy) = &spec.outbound_traffic_policy
        && let Some(proxy) = &policy.egress_proxy
    {
        if policy.mode != Some(crate::mesh::OutboundMode::AllowAny) {
            p.push((
                "spec.outboundTrafficPolicy.egressProxy".into(),
                "sidecar: egress_proxy must be set only with ALLOW_ANY outbound_traffic_policy mode"
                    .into(),
            ));
        }
        if proxy.host.is_empty() || proxy.host.contains('*') {
            p.push((
                "spec.outboundTrafficPolicy.egressProxy.host".into(),
                "a service's host, without wildcards, is required".into(),
            ));
        }
    }
    let mut ports = std::collections::BTreeSet::new();
    for (i, ingress) in spec.ingress.iter().enumerate() {
        let at = format!("spec.ingress[{i}]");
        let number = ingress.port.number;
        if !(1..=65535).contains(&number) {
            p.push((
                format!("{at}.port.number"),
                format!("{number}: port must be between 1-65535"),
            ));
        }
        if !ports.insert(number) {
            p.push((
                format!("{at}.port.number"),
                "sidecar: ports on IP bound listeners must be unique".into(),
            ));
        }
        if let Some(tls) = &ingress.tls {
            ingress_tls(&mut p, &at, &ingress.port, tls);
        }
        let Some(endpoint) = ingress
            .default_endpoint
            .as_deref()
            .filter(|e| !e.is_empty())
        else {
            continue;
        };
        if let Some(path) = endpoint.strip_prefix("unix://") {
            if let Some(why) = socket_path_problem(path) {
                p.push((format!("{at}.defaultEndpoint"), why.into()));
            }
            continue;
        }
        let form_ok = endpoint.rsplit_once(':').is_some_and(|(host, port)| {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            ["", "127.0.0.1", "0.0.0.0", "::1", "::"].contains(&host)
                && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p))
        });
        if !form_ok {
            p.push((
                format!("{at}.defaultEndpoint"),
                "sidecar: defaultEndpoint must be of form 127.0.0.1:<port>,0.0.0.0:<port>,[::1]:port,[::]:port,unix://filepath or unset".into(),
            ));
        }
    }
    // Istio's egress listener rules: one catch-all (no port) at most, and
    // last; a port bound once.
    let mut egress_ports = std::collections::BTreeSet::new();
    let catch_alls = spec.egress.iter().filter(|e| e.port.is_none()).count();
    for (i, e) in spec.egress.iter().enumerate() {
        match &e.port {
            None if catch_alls > 1 => p.push((
                format!("spec.egress[{i}]"),
                "sidecar: egress can have only one listener with empty port".into(),
            )),
            None if i + 1 != spec.egress.len() => p.push((
                format!("spec.egress[{i}]"),
                "sidecar: the egress listener with empty port should be the last listener in the list".into(),
            )),
            Some(port) if !egress_ports.insert(port.number) => p.push((
                format!("spec.egress[{i}].port.number"),
                "sidecar: ports on IP bound listeners must be unique".into(),
            )),
            _ => {}
        }
    }
    for (i, e) in spec.egress.iter().enumerate() {
        if e.hosts.is_empty() {
            p.push((
                format!("spec.egress[{i}].hosts"),
                "at least one host is required".into(),
            ));
        }
        for (j, h) in e.hosts.iter().enumerate() {
            match h.split_once('/') {
                Some((ns, host)) if !ns.is_empty() && !host.is_empty() => {}
                _ => p.push((
                    format!("spec.egress[{i}].hosts[{j}]"),
                    format!("{h:?} must be namespace/dnsName (e.g. ./*, istio-system/*)"),
                )),
            }
        }
    }
    p
}

/// Istio's PeerAuthentication rules: port-level modes only with a
/// workload selector, ports within 1..=65535.
fn peer_authentication(spec: &crate::PeerAuthenticationSpec) -> Problems {
    let mut p = Problems::new();
    let selected = spec
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    if !spec.port_level_mtls.is_empty() && !selected {
        p.push((
            "spec.portLevelMtls".into(),
            "portLevelMtls requires selector".into(),
        ));
    }
    for port in spec.port_level_mtls.keys() {
        if !(1..=65535).contains(port) {
            p.push((
                format!("spec.portLevelMtls.{port}"),
                format!("{port}: port must be between 1-65535"),
            ));
        }
    }
    p
}

fn service_entry(spec: &crate::ServiceEntrySpec) -> Problems {
    let mut p = Problems::new();
    if spec.hosts.is_empty() {
        p.push(("spec.hosts".into(), "at least one host is required".into()));
    }
    for (i, host) in spec.hosts.iter().enumerate() {
        if host == "*" {
            p.push((
                format!("spec.hosts[{i}]"),
                "hostname cannot be wildcard".into(),
            ));
        }
    }
    let resolution = spec.resolution.unwrap_or(Resolution::None);
    for (i, address) in spec.addresses.iter().enumerate() {
        if address.contains('/') && !matches!(resolution, Resolution::None | Resolution::Static) {
            p.push((
                format!("spec.addresses[{i}]"),
                "CIDR addresses are allowed only for NONE/STATIC resolution types".into(),
            ));
        }
    }
    if let Some(sel) = &spec.workload_selector {
        if !spec.endpoints.is_empty() {
            p.push((
                "spec.workloadSelector".into(),
                "only one of WorkloadSelector or Endpoints can be set".into(),
            ));
        }
        for (k, v) in &sel.labels {
            if k.contains('*') || v.contains('*') {
                p.push((
                    format!("spec.workloadSelector.labels.{k}"),
                    "wildcard is not supported in selector".into(),
                ));
            }
        }
    }
    for (i, endpoint) in spec.endpoints.iter().enumerate() {
        let at = format!("spec.endpoints[{i}]");
        workload_entry(&mut p, &at, endpoint);
        let address = endpoint.address.as_deref().unwrap_or("");
        if resolution == Resolution::Static
            && !address.is_empty()
            && !address.starts_with("unix://")
            && address.parse::<std::net::IpAddr>().is_err()
        {
            p.push((
                format!("{at}.address"),
                format!("endpoint address {address:?} is not a valid IP address"),
            ));
        }
        if matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin)
            && address.starts_with("unix://")
        {
            p.push((
                format!("{at}.address"),
                format!("endpoint address {address:?} is not a valid FQDN or an IP address"),
            ));
        }
    }
    if resolution == Resolution::Static
        && spec.endpoints.iter().any(|e| {
            e.address
                .as_deref()
                .is_some_and(|a| a.starts_with("unix://"))
        })
        && spec.ports.len() != 1
    {
        p.push((
            "spec.ports".into(),
            "exactly 1 service port required for unix endpoints".into(),
        ));
    }
    if resolution == Resolution::None && !spec.endpoints.is_empty() {
        p.push((
            "spec.endpoints".into(),
            "NONE mode cannot set endpoints".into(),
        ));
    }
    if resolution == Resolution::DnsRoundRobin && spec.endpoints.len() > 1 {
        p.push((
            "spec.endpoints".into(),
            "DNS_ROUND_ROBIN mode cannot have multiple endpoints".into(),
        ));
    }
    let mut names = std::collections::BTreeSet::new();
    let mut numbers = std::collections::BTreeSet::new();
    for (i, port) in spec.ports.iter().enumerate() {
        if !(1..=65535).contains(&port.number) {
            p.push((
                format!("spec.ports[{i}].number"),
                format!("{}: port must be between 1-65535", port.number),
            ));
        }
        if let Some(t) = port.target_port
            && !(1..=65535).contains(&t)
        {
            p.push((
                format!("spec.ports[{i}].targetPort"),
                format!("{t}: port must be between 1-65535"),
            ));
        }
        if let Some(name) = &port.name
            && !names.insert(name)
        {
            p.push((
                format!("spec.ports[{i}].name"),
                format!("Duplicate value: {name:?}"),
            ));
        }
        if !numbers.insert(port.number) {
            p.push((
                format!("spec.ports[{i}].number"),
                format!("{}: port number cannot be duplicated", port.number),
            ));
        }
    }
    p
}

/// What is wrong with the path of a `unix://` address (Istio's words), if
/// anything: it must be absolute or an abstract socket (`@name`), and not
/// a directory.
fn socket_path_problem(path: &str) -> Option<&'static str> {
    if !(path.starts_with('/') || path.starts_with('@')) {
        Some("UDS must be an absolute path or abstract socket")
    } else if path.ends_with('/') {
        Some("UDS may not be a dir")
    } else {
        None
    }
}

/// Istio's `ValidateWorkloadGroup`: the template has no address (each
/// workload's own is used); its ports and locality as a WorkloadEntry's.
fn workload_group(spec: &crate::WorkloadGroupSpec) -> Problems {
    let mut p = Problems::new();
    if spec
        .template
        .address
        .as_deref()
        .is_some_and(|a| !a.is_empty())
    {
        p.push((
            "spec.template.address".into(),
            "address is not allowed in the template".into(),
        ));
    }
    let mut template = spec.template.clone();
    // Checked as an entry with some address, the template's own refused above.
    template.address = Some("0.0.0.0".into());
    workload_entry(&mut p, "spec.template", &template);
    if let Some(probe) = &spec.probe {
        readiness_probe(&mut p, probe);
    }
    p
}

/// Istio's `validateReadinessProbe`: timings not negative; exactly one of
/// `httpGet` (a port in 1-65535, scheme `HTTP` or `HTTPS`, header names
/// that are HTTP tokens), `tcpSocket` (a port in 1-65535) and `exec` (a
/// command); a `grpc` check is refused (Istio's agent runs none).
fn readiness_probe(p: &mut Problems, probe: &crate::workload_group::ReadinessProbe) {
    let at = "spec.probe";
    for (name, v) in [
        ("periodSeconds", probe.period_seconds),
        ("initialDelaySeconds", probe.initial_delay_seconds),
        ("timeoutSeconds", probe.timeout_seconds),
        ("successThreshold", probe.success_threshold),
        ("failureThreshold", probe.failure_threshold),
    ] {
        if v.is_some_and(|v| v < 0) {
            p.push((format!("{at}.{name}"), "must be non-negative".into()));
        }
    }
    let port = |p: &mut Problems, field: &str, port: u32| {
        if !(1..=65535).contains(&port) {
            p.push((
                format!("{at}.{field}"),
                format!("port {port} is not in 1-65535"),
            ));
        }
    };
    let methods = [
        probe.http_get.is_some(),
        probe.tcp_socket.is_some(),
        probe.exec.is_some(),
        probe.grpc.is_some(),
    ];
    if methods.iter().filter(|m| **m).count() > 1 {
        p.push((
            at.into(),
            "only one of httpGet, tcpSocket, exec and grpc may be set".into(),
        ));
    }
    if let Some(h) = &probe.http_get {
        port(p, "httpGet.port", h.port);
        if let Some(s) = h.scheme.as_deref()
            && !matches!(s, "" | "HTTP" | "HTTPS")
        {
            p.push((
                format!("{at}.httpGet.scheme"),
                format!("{s:?}: must be one of \"HTTPS\", \"HTTP\""),
            ));
        }
        for (i, header) in h.http_headers.iter().enumerate() {
            let name = header.name.as_deref().unwrap_or("");
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                p.push((
                    format!("{at}.httpGet.httpHeaders[{i}].name"),
                    format!("{name:?} is not a valid HTTP header name"),
                ));
            }
        }
    } else if let Some(t) = &probe.tcp_socket {
        port(p, "tcpSocket.port", t.port);
    } else if let Some(e) = &probe.exec {
        if e.command.is_empty() {
            p.push((
                format!("{at}.exec.command"),
                "exec.command is required".into(),
            ));
        }
    } else if probe.grpc.is_some() {
        p.push((
            format!("{at}.grpc"),
            "unknown health check method: gRPC probes are not run by Istio's agent".into(),
        ));
    } else {
        p.push((
            at.into(),
            "one of httpGet, tcpSocket or exec is required".into(),
        ));
    }
}

/// A byte of an HTTP token (RFC 9110 `tchar`), what a header name is made of.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Istio's WorkloadEntry rules (its CRD's validations and
/// `validateWorkloadEntry`), for a WorkloadEntry (`at` is `spec`) and each
/// inline ServiceEntry endpoint: an address unless a network is named; a
/// `unix://` address an absolute path or an abstract socket, not a
/// directory, and without ports; port names as Kubernetes port names,
/// numbers in 1-65535; a locality of at most three non-empty parts.
fn workload_entry(p: &mut Problems, at: &str, we: &crate::WorkloadEntrySpec) {
    let address = we.address.as_deref().unwrap_or("");
    if address.is_empty() && we.network.as_deref().unwrap_or("").is_empty() {
        p.push((format!("{at}.address"), "Address is required".into()));
    }
    if let Some(path) = address.strip_prefix("unix://") {
        if let Some(why) = socket_path_problem(path) {
            p.push((format!("{at}.address"), why.into()));
        }
        if !we.ports.is_empty() {
            p.push((format!("{at}.ports"), "UDS may not include ports".into()));
        }
    }
    for (name, port) in &we.ports {
        let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
        let valid = name.len() < 63
            && alnum(name.chars().next())
            && alnum(name.chars().last())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !valid {
            p.push((
                format!("{at}.ports"),
                format!("port name {name:?} must be valid"),
            ));
        }
        if !(1..=65535).contains(port) {
            p.push((
                format!("{at}.ports.{name}"),
                format!("{port}: port must be between 1-65535"),
            ));
        }
    }
    if let Some(locality) = we.locality.as_deref().filter(|l| !l.is_empty()) {
        let parts: Vec<&str> = locality.split('/').collect();
        if parts.len() > 3 || parts.contains(&"") {
            p.push((
                format!("{at}.locality"),
                format!("{locality:?} must use region/zone/subzone form"),
            ));
        }
    }
}

/// The `when` keys Istio knows (`request.headers[...]`,
/// `request.auth.claims[...]` and `experimental.envoy.filters.*` by prefix).
const CONDITION_KEYS: [&str; 10] = [
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "destination.ip",
    "destination.port",
    "connection.sni",
];

/// Istio's `ValidateEnvoyFilter`: a selector with labels only (no
/// wildcards); each patch with an `applyTo`, a `patch` with an
/// `operation`, and a `value` unless it removes; a `proxyVersion` that is a
/// regular expression; a match of the kind `applyTo` patches (a listener
/// match for listener, filter chain, network and HTTP filter patches; a
/// route configuration match for route patches; a cluster match for
/// cluster patches); a filter match with a name, a sub-filter match only
/// for HTTP filters, inside the HTTP connection manager, with a name. (That
/// a `value` is an Envoy object of the patched kind is checked where the
/// Envoy types are known: `translator::envoy_filter`.)
fn envoy_filter(spec: &crate::EnvoyFilterSpec) -> Problems {
    use crate::envoy_filter::{ApplyTo, Operation};
    let mut p = Problems::new();
    if let Some(sel) = &spec.workload_selector {
        for (k, v) in &sel.labels {
            if k.is_empty() || k.contains('*') || v.contains('*') {
                p.push((
                    "spec.workloadSelector.labels".into(),
                    format!("{k}={v}: empty keys and wildcards are not supported in a selector"),
                ));
            }
        }
    }
    if spec.workload_selector.is_some() && !spec.target_refs.is_empty() {
        p.push((
            "spec.workloadSelector".into(),
            "only one of targetRefs or workloadSelector can be set".into(),
        ));
    }
    for (i, cp) in spec.config_patches.iter().enumerate() {
        let at = format!("spec.configPatches[{i}]");
        let Some(apply_to) = cp.apply_to.filter(|a| *a != ApplyTo::Invalid) else {
            p.push((format!("{at}.applyTo"), "missing applyTo".into()));
            continue;
        };
        let Some(patch) = &cp.patch else {
            p.push((format!("{at}.patch"), "missing patch".into()));
            continue;
        };
        let Some(operation) = patch.operation.filter(|o| *o != Operation::Invalid) else {
            p.push((
                format!("{at}.patch.operation"),
                "missing patch operation".into(),
            ));
            continue;
        };
        if operation != Operation::Remove && patch.value.is_none() {
            p.push((
                format!("{at}.patch.value"),
                "missing patch value for non-remove operation".into(),
            ));
            continue;
        }
        let Some(m) = &cp.match_ else { continue };
        if let Some(version) = m.proxy.as_ref().and_then(|x| x.proxy_version.as_deref())
            && let Err(e) = regex_syntax::Parser::new().parse(version)
        {
            p.push((
                format!("{at}.match.proxy.proxyVersion"),
                format!("invalid regex for proxy version: {e}"),
            ));
            continue;
        }
        let objects =
            m.listener.is_some() || m.route_configuration.is_some() || m.cluster.is_some();
        match apply_to {
            ApplyTo::Listener
            | ApplyTo::FilterChain
            | ApplyTo::NetworkFilter
            | ApplyTo::HttpFilter
                if objects =>
            {
                let Some(listener) = &m.listener else {
                    p.push((
                        format!("{at}.match"),
                        "applyTo for listener class objects cannot have non listener match".into(),
                    ));
                    continue;
                };
                let Some(filter) = listener
                    .filter_chain
                    .as_ref()
                    .and_then(|c| c.filter.as_ref())
                else {
                    continue;
                };
                let field = format!("{at}.match.listener.filterChain.filter");
                if filter.name.as_deref().unwrap_or("").is_empty() {
                    p.push((
                        format!("{field}.name"),
                        "filter match has no name to match on".into(),
                    ));
                } else if let Some(sub) = &filter.sub_filter {
                    if apply_to != ApplyTo::HttpFilter {
                        p.push((
                            format!("{field}.subFilter"),
                            "subfilter match can be used with applyTo HTTP_FILTER only".into(),
                        ));
                    } else if !matches!(
                        filter.name.as_deref(),
                        Some(
                            "envoy.filters.network.http_connection_manager"
                                | "envoy.http_connection_manager"
                        )
                    ) {
                        p.push((
                            format!("{field}.name"),
                            "subfilter match requires filter match with envoy.filters.network.http_connection_manager".into(),
                        ));
                    } else if sub.name.as_deref().unwrap_or("").is_empty() {
                        p.push((
                            format!("{field}.subFilter.name"),
                            "subfilter match has no name to match on".into(),
                        ));
                    }
                }
            }
            ApplyTo::RouteConfiguration | ApplyTo::VirtualHost | ApplyTo::HttpRoute
                if objects && m.route_configuration.is_none() =>
            {
                p.push((
                    format!("{at}.match"),
                    "applyTo for http route class objects cannot have non route configuration match".into(),
                ));
            }
            ApplyTo::Cluster if objects && m.cluster.is_none() => {
                p.push((
                    format!("{at}.match"),
                    "applyTo for cluster class objects cannot have non cluster match".into(),
                ));
            }
            _ => {}
        }
    }
    p
}

/// Istio's rules for a policy's attachment (`validateOneOfSelectorType`,
/// `validatePolicyTargetReference`): at most one of `selector`, `targetRef`
/// and `targetRefs`; each reference named, in the policy's own namespace
/// (no `namespace`), and to a kind a policy attaches to: a Gateway API
/// `Gateway` or `GatewayClass` (group `gateway.networking.k8s.io`), a
/// `Service` (the core group, `""`), or a `ServiceEntry`
/// (`networking.istio.io`).
fn targeting(
    selector: Option<&crate::MatchLabelSelector>,
    target_ref: Option<&crate::authorization_policy::PolicyTargetReference>,
    target_refs: &[crate::authorization_policy::PolicyTargetReference],
) -> Problems {
    const KINDS: [(&str, &str); 4] = [
        ("gateway.networking.k8s.io", "Gateway"),
        ("gateway.networking.k8s.io", "GatewayClass"),
        ("", "Service"),
        ("networking.istio.io", "ServiceEntry"),
    ];
    let mut p = Problems::new();
    let set = [
        selector.is_some(),
        target_ref.is_some(),
        !target_refs.is_empty(),
    ];
    if set.iter().filter(|s| **s).count() > 1 {
        let field = if selector.is_some() {
            "spec.selector"
        } else {
            "spec.targetRef"
        };
        p.push((
            field.into(),
            "only one of selector, targetRef and targetRefs can be set".into(),
        ));
    }
    let refs = target_ref
        .map(|r| ("spec.targetRef".to_owned(), r))
        .into_iter()
        .chain(
            target_refs
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("spec.targetRefs[{i}]"), r)),
        );
    for (at, r) in refs {
        if r.name.is_empty() {
            p.push((format!("{at}.name"), "required".into()));
        }
        if r.namespace.as_deref().is_some_and(|n| !n.is_empty()) {
            p.push((
                format!("{at}.namespace"),
                "must not be set: a policy attaches only in its own namespace".into(),
            ));
        }
        let group = r.group.as_deref().unwrap_or("");
        if !KINDS.contains(&(group, r.kind.as_str())) {
            p.push((
                format!("{at}.kind"),
                format!(
                    "{group}/{} is not a kind a policy attaches to: gateway.networking.k8s.io/Gateway, gateway.networking.k8s.io/GatewayClass, /Service or networking.istio.io/ServiceEntry",
                    r.kind
                ),
            ));
        }
    }
    p
}

/// Istio's AuthorizationPolicy rules: `selector` or `targetRef(s)`, not
/// both; a `provider` exactly with `CUSTOM`; no empty source, operation or
/// value; known condition keys with values; addresses, CIDRs and ports
/// that parse.
fn authorization_policy(spec: &crate::AuthorizationPolicySpec) -> Problems {
    use crate::authorization_policy::Action;
    let mut p = targeting(
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
    );
    let custom = spec.action == Some(Action::Custom);
    match (&spec.provider, custom) {
        (None, true) => p.push((
            "spec.provider".into(),
            "a CUSTOM policy needs a provider".into(),
        )),
        (Some(_), false) => p.push((
            "spec.provider".into(),
            "provider is only for the CUSTOM action".into(),
        )),
        (Some(pr), true) if pr.name.is_empty() => {
            p.push(("spec.provider.name".into(), "required".into()))
        }
        _ => {}
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        for (j, from) in rule.from.iter().enumerate() {
            let field = format!("{at}.from[{j}].source");
            let Some(s) = &from.source else {
                p.push((field, "required".into()));
                continue;
            };
            let lists: [(&str, &[String]); 14] = [
                ("principals", &s.principals),
                ("notPrincipals", &s.not_principals),
                ("requestPrincipals", &s.request_principals),
                ("notRequestPrincipals", &s.not_request_principals),
                ("namespaces", &s.namespaces),
                ("notNamespaces", &s.not_namespaces),
                ("serviceAccounts", &s.service_accounts),
                ("notServiceAccounts", &s.not_service_accounts),
                ("trustDomains", &s.trust_domains),
                ("notTrustDomains", &s.not_trust_domains),
                ("ipBlocks", &s.ip_blocks),
                ("notIpBlocks", &s.not_ip_blocks),
                ("remoteIpBlocks", &s.remote_ip_blocks),
                ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
            ];
            check_lists(&mut p, &field, &lists, |name, v| {
                if name.ends_with("pBlocks") || name.ends_with("IpBlocks") {
                    check_cidr(v)
                } else {
                    Ok(())
                }
            });
        }
        for (j, to) in rule.to.iter().enumerate() {
            let field = format!("{at}.to[{j}].operation");
            let Some(o) = &to.operation else {
                p.push((field, "required".into()));
                continue;
            };
            let lists: [(&str, &[String]); 8] = [
                ("hosts", &o.hosts),
                ("notHosts", &o.not_hosts),
                ("ports", &o.ports),
                ("notPorts", &o.not_ports),
                ("methods", &o.methods),
                ("notMethods", &o.not_methods),
                ("paths", &o.paths),
                ("notPaths", &o.not_paths),
            ];
            check_lists(&mut p, &field, &lists, |name, v| {
                if name.ends_with("orts") {
                    check_port(v)
                } else if name.ends_with("aths") {
                    check_path_template(v)
                } else {
                    Ok(())
                }
            });
        }
        for (j, c) in rule.when.iter().enumerate() {
            let field = format!("{at}.when[{j}]");
            let key = c.key.as_str();
            let bracketed = |prefix: &str| {
                key.strip_prefix(prefix)
                    .and_then(|k| k.strip_prefix('['))
                    .is_some_and(|k| k.len() > 1 && k.ends_with(']'))
            };
            let known = CONDITION_KEYS.contains(&key)
                || bracketed("request.headers")
                || bracketed("request.auth.claims")
                || key.starts_with("experimental.envoy.filters.");
            if !known {
                p.push((format!("{field}.key"), format!("unknown attribute {key:?}")));
                continue;
            }
            let lists: [(&str, &[String]); 2] =
                [("values", &c.values), ("notValues", &c.not_values)];
            check_lists(&mut p, &field, &lists, |_, v| match key {
                "source.ip" | "remote.ip" | "destination.ip" => check_cidr(v),
                "destination.port" => check_port(v),
                _ => Ok(()),
            });
        }
    }
    p
}

/// A path template as Istio accepts it (`CheckValidPathTemplate`), so that
/// Envoy's URI template matcher accepts it too: `{*}` (one segment) and
/// `{**}` (any number) only as whole segments, nothing templated after
/// `{**}`, no other braces, and in a templated path only segments of
/// RFC 3986 `pchar`s. A path without `{*}` or `{**}` is not a template.
pub fn check_path_template(path: &str) -> Result<(), String> {
    let templated = path.contains("{*}") || path.contains("{**}");
    if templated && !path.starts_with('/') {
        return Err(format!("{path:?}: a path template begins with /"));
    }
    let mut any_seen = false;
    for segment in path.trim_matches('/').split('/') {
        match segment {
            "{*}" | "{**}" if any_seen => {
                return Err(format!("{path:?}: {{**}} must be the last operator"));
            }
            "{*}" => continue,
            "{**}" => {
                any_seen = true;
                continue;
            }
            _ => {}
        }
        if segment.contains(['{', '}']) {
            return Err(format!(
                "{path:?}: '{{' and '}}' only as the whole segments {{*}} and {{**}}"
            ));
        }
        // `*` is left out: Envoy would read it as an operator.
        let pchar = |c: char| c.is_ascii_alphanumeric() || "-._~!$&'()+,;=:@%".contains(c);
        if templated && (segment.is_empty() || !segment.chars().all(pchar)) {
            return Err(format!(
                "{path:?}: the segment {segment:?} is not a valid literal of a path template"
            ));
        }
    }
    Ok(())
}

/// Istio's Telemetry rules: `selector` or `targetRef(s)`, not both;
/// providers named; a sampling percentage from 0 to 100; custom tags named,
/// of exactly one kind, with a value or a name; access log filters that
/// are CEL expressions Envoy takes ([`check_cel`]; Envoy refuses a
/// listener whose filter it cannot build).
/// The scheme of a WasmPlugin `url` (`""` when it has none: an OCI image
/// reference, as Istio reads it).
pub fn wasm_url_scheme(url: &str) -> &str {
    url.split_once("://").map_or("", |(scheme, _)| scheme)
}

/// Istio's WasmPlugin rules (its CRD's and `ValidateWasmPlugin`'s): a `url`
/// of scheme `oci` (or none), `http`, `https` or `file`; a `sha256` of 64
/// lowercase hex digits; `selector` or `targetRef(s)`, not both;
/// environment variables named, once each, a `value` only `INLINE`; match
/// ports 1-65535; `pluginName` and `imagePullSecret` not empty when set.
fn wasm_plugin(spec: &crate::WasmPluginSpec) -> Problems {
    use crate::wasm_plugin::EnvValueSource;
    let mut p = targeting(
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
    );
    let scheme = wasm_url_scheme(&spec.url);
    if spec.url.is_empty() {
        p.push(("spec.url".into(), "required".into()));
    } else if !["", "oci", "http", "https", "file"].contains(&scheme) {
        p.push((
            "spec.url".into(),
            format!("url must have schema one of [http, https, file, oci], not {scheme:?}"),
        ));
    } else if spec.url.len() == scheme.len() + 3 {
        p.push(("spec.url".into(), "names no module after the scheme".into()));
    }
    if let Some(sha) = spec.sha256.as_deref().filter(|s| !s.is_empty())
        && (sha.len() != 64 || !sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    {
        p.push((
            "spec.sha256".into(),
            "must be 64 lowercase hex digits (a SHA-256)".into(),
        ));
    }
    for (field, value, max) in [
        ("spec.pluginName", spec.plugin_name.as_deref(), 256),
        (
            "spec.imagePullSecret",
            spec.image_pull_secret.as_deref(),
            253,
        ),
    ] {
        if let Some(v) = value
            && (v.is_empty() || v.len() > max)
        {
            p.push((field.into(), format!("must be 1 to {max} characters")));
        }
    }
    let env = spec.vm_config.as_ref().map_or(&[][..], |vm| &vm.env);
    for (i, e) in env.iter().enumerate() {
        let at = format!("spec.vmConfig.env[{i}]");
        if e.name.is_empty() {
            p.push((format!("{at}.name"), "required".into()));
        } else if env[..i].iter().any(|o| o.name == e.name) {
            p.push((format!("{at}.name"), format!("{:?} is set twice", e.name)));
        }
        if e.value_from == Some(EnvValueSource::Host) && e.value.is_some() {
            p.push((
                format!("{at}.value"),
                "value may only be set when valueFrom is INLINE".into(),
            ));
        }
    }
    for (i, m) in spec.match_.iter().enumerate() {
        for (j, port) in m.ports.iter().enumerate() {
            if !(1..=65535).contains(&port.number) {
                p.push((
                    format!("spec.match[{i}].ports[{j}].number"),
                    "must be 1-65535".into(),
                ));
            }
        }
    }
    p
}

fn telemetry(spec: &crate::TelemetrySpec) -> Problems {
    let mut p = targeting(
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
    );
    let mut unnamed = |field: String, providers: &[crate::telemetry::ProviderRef]| {
        if let Some(j) = providers.iter().position(|r| r.name.is_empty()) {
            p.push((format!("{field}.providers[{j}].name"), "required".into()));
        }
    };
    for (i, t) in spec.tracing.iter().enumerate() {
        unnamed(format!("spec.tracing[{i}]"), &t.providers);
    }
    for (i, m) in spec.metrics.iter().enumerate() {
        unnamed(format!("spec.metrics[{i}]"), &m.providers);
    }
    for (i, a) in spec.access_logging.iter().enumerate() {
        unnamed(format!("spec.accessLogging[{i}]"), &a.providers);
    }
    for (i, t) in spec.tracing.iter().enumerate() {
        let at = format!("spec.tracing[{i}]");
        if let Some(pct) = t.random_sampling_percentage
            && !(0.0..=100.0).contains(&pct)
        {
            p.push((
                format!("{at}.randomSamplingPercentage"),
                format!("{pct} is not in [0.0, 100.0]"),
            ));
        }
        for (name, tag) in &t.custom_tags {
            let field = format!("{at}.customTags.{name}");
            if name.is_empty() {
                p.push((field.clone(), "a tag name may not be empty".into()));
            }
            let kinds = [
                tag.literal.is_some(),
                tag.environment.is_some(),
                tag.header.is_some(),
                tag.formatter.is_some(),
            ];
            let empty = match (&tag.literal, &tag.environment, &tag.header, &tag.formatter) {
                (Some(l), ..) => l.value.is_empty().then_some("literal.value"),
                (_, Some(e), ..) => e.name.is_empty().then_some("environment.name"),
                (_, _, Some(h), _) => h.name.is_empty().then_some("header.name"),
                (.., Some(f)) => f.value.is_empty().then_some("formatter.value"),
                _ => None,
            };
            if kinds.iter().filter(|k| **k).count() != 1 {
                p.push((
                    field,
                    "exactly one of literal, environment, header and formatter".into(),
                ));
            } else if let Some(sub) = empty {
                p.push((format!("{field}.{sub}"), "may not be empty".into()));
            }
        }
    }
    for (i, a) in spec.access_logging.iter().enumerate() {
        if let Some(f) = &a.filter
            && let Err(e) = check_cel(&f.expression)
        {
            p.push((format!("spec.accessLogging[{i}].filter.expression"), e));
        }
    }
    for (i, m) in spec.metrics.iter().enumerate() {
        for (j, o) in m.overrides.iter().enumerate() {
            let at = format!("spec.metrics[{i}].overrides[{j}]");
            if let Some(name) = o.match_.as_ref().and_then(|s| s.metric.as_deref())
                && !ISTIO_METRICS.contains(&name)
            {
                p.push((
                    format!("{at}.match.metric"),
                    format!(
                        "{name:?} is not one of Istio's metrics ({})",
                        ISTIO_METRICS.join(", ")
                    ),
                ));
            }
            for (tag, t) in &o.tag_overrides {
                let field = format!("{at}.tagOverrides.{tag}");
                if tag.is_empty() {
                    p.push((field.clone(), "a tag name may not be empty".into()));
                }
                match t.operation.as_deref().unwrap_or("UPSERT") {
                    "REMOVE" if t.value.is_some() => {
                        p.push((format!("{field}.value"), "must be empty for REMOVE".into()));
                    }
                    "REMOVE" => {}
                    "UPSERT" => match t.value.as_deref() {
                        None | Some("") => {
                            p.push((format!("{field}.value"), "required for UPSERT".into()));
                        }
                        Some(value) => {
                            if let Err(e) = check_cel(value) {
                                p.push((format!("{field}.value"), e));
                            }
                        }
                    },
                    other => p.push((
                        format!("{field}.operation"),
                        format!("{other:?} is not UPSERT or REMOVE"),
                    )),
                }
            }
        }
    }
    p
}

/// `MetricSelector.IstioMetric`'s values.
const ISTIO_METRICS: &[&str] = &[
    "ALL_METRICS",
    "REQUEST_COUNT",
    "REQUEST_DURATION",
    "REQUEST_SIZE",
    "RESPONSE_SIZE",
    "TCP_OPENED_CONNECTIONS",
    "TCP_CLOSED_CONNECTIONS",
    "TCP_SENT_BYTES",
    "TCP_RECEIVED_BYTES",
    "GRPC_REQUEST_MESSAGES",
    "GRPC_RESPONSE_MESSAGES",
];

/// The functions Envoy's CEL (cel-cpp's standard functions; comprehension
/// macros and string extensions off) lets an expression call, as a global
/// (`size(x)`) or on a target (`x.size()`); Envoy refuses an expression
/// calling any other (`string(x)`, `x.lowerAscii()`, `l.exists(...)`).
const ENVOY_CEL_FUNCTIONS: &[&str] = &[
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "int",
    "uint",
    "double",
    "bytes",
    "bool",
    "duration",
    "timestamp",
    "type",
    "dyn",
    "has",
    "getDate",
    "getDayOfMonth",
    "getDayOfWeek",
    "getDayOfYear",
    "getFullYear",
    "getHours",
    "getMilliseconds",
    "getMinutes",
    "getMonth",
    "getSeconds",
];

/// Whether Envoy takes `expression` as a CEL filter: it parses, and calls
/// only [`ENVOY_CEL_FUNCTIONS`] (`has` on a field selection). The reason
/// otherwise.
pub fn check_cel(expression: &str) -> Result<(), String> {
    use cel_parser::ast::{Expression as E, Member};
    fn walk(e: &E) -> Result<(), String> {
        match e {
            E::FunctionCall(f, target, args) => {
                let E::Ident(name) = &**f else {
                    return Err("calls something that is not a function name".into());
                };
                if !ENVOY_CEL_FUNCTIONS.contains(&name.as_str()) {
                    return Err(format!(
                        "Envoy's CEL has no function {name}() (comprehensions and string extensions are not enabled)"
                    ));
                }
                if name.as_str() == "has"
                    && (target.is_some()
                        || !matches!(args.as_slice(), [E::Member(_, m)] if matches!(**m, Member::Attribute(_))))
                {
                    return Err(
                        "has() takes one field selection, e.g. has(request.headers.x)".into(),
                    );
                }
                target.iter().try_for_each(|t| walk(t))?;
                args.iter().try_for_each(walk)
            }
            E::Arithmetic(a, _, b) | E::Relation(a, _, b) | E::Or(a, b) | E::And(a, b) => {
                walk(a)?;
                walk(b)
            }
            E::Ternary(a, b, c) => {
                walk(a)?;
                walk(b)?;
                walk(c)
            }
            E::Unary(_, a) => walk(a),
            E::Member(a, m) => {
                walk(a)?;
                match &**m {
                    Member::Attribute(_) => Ok(()),
                    Member::Index(i) => walk(i),
                    Member::Fields(fields) => fields.iter().try_for_each(|(_, v)| walk(v)),
                }
            }
            E::List(items) => items.iter().try_for_each(walk),
            E::Map(entries) => entries.iter().try_for_each(|(k, v)| {
                walk(k)?;
                walk(v)
            }),
            E::Atom(_) | E::Ident(_) => Ok(()),
        }
    }
    let ast = cel_parser::parse(expression).map_err(|e| format!("not a CEL expression: {e}"))?;
    walk(&ast)
}

/// Istio's RequestAuthentication rules: `selector` or `targetRef(s)`, not
/// both; every rule with an issuer, at most one of `jwks` and `jwksUri`
/// (an `http(s)://` URL), a `jwks` that is a JSON Web Key Set, named
/// headers and claims, a timeout of at least 1 ms.
fn request_authentication(spec: &crate::RequestAuthenticationSpec) -> Problems {
    let mut p = targeting(
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
    );
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        let at = format!("spec.jwtRules[{i}]");
        if rule.issuer.is_empty() {
            p.push((format!("{at}.issuer"), "issuer must be set".into()));
        }
        let uri = rule.jwks_uri.as_ref().or(rule.jwks_uri_snake.as_ref());
        let set = [
            rule.jwks_uri.is_some(),
            rule.jwks_uri_snake.is_some(),
            rule.jwks.is_some(),
        ];
        if set.iter().filter(|s| **s).count() > 1 {
            p.push((at.clone(), "only one of jwks or jwksUri can be set".into()));
        }
        if let Some(uri) = uri {
            let scheme_ok = uri
                .split_once("://")
                .is_some_and(|(s, rest)| matches!(s, "http" | "https") && !rest.is_empty());
            if !scheme_ok {
                p.push((
                    format!("{at}.jwksUri"),
                    format!("{uri:?}: url must have scheme http:// or https://"),
                ));
            }
        }
        if let Some(jwks) = &rule.jwks
            && let Err(why) = check_jwks(jwks)
        {
            p.push((format!("{at}.jwks"), why));
        }
        for (j, h) in rule.from_headers.iter().enumerate() {
            if h.name.is_empty() {
                p.push((format!("{at}.fromHeaders[{j}].name"), "required".into()));
            }
        }
        for (j, c) in rule.output_claim_to_headers.iter().enumerate() {
            if c.header.is_empty() || c.claim.is_empty() {
                p.push((
                    format!("{at}.outputClaimToHeaders[{j}]"),
                    "header and claim are required".into(),
                ));
            }
        }
        if rule
            .timeout
            .is_some_and(|t| t.as_std() < std::time::Duration::from_millis(1))
        {
            p.push((
                format!("{at}.timeout"),
                "must be a valid duration greater than 1ms".into(),
            ));
        }
    }
    p
}

/// A JSON Web Key Set as Envoy's JWT filter reads it: a non-empty `keys`
/// list whose keys have a known `kty` and its members (RFC 7518), in
/// base64url. Envoy refuses a config whose inline keys do not parse, so
/// one bad key set would hold back every update of the workloads it
/// applies to.
fn check_jwks(jwks: &str) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_str(jwks).map_err(|e| format!("not JSON: {e}"))?;
    let keys = v
        .get("keys")
        .and_then(|k| k.as_array())
        .filter(|k| !k.is_empty())
        .ok_or("not a JSON Web Key Set (a JSON object with a non-empty `keys` list)")?;
    let base64url = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'='))
    };
    for (i, key) in keys.iter().enumerate() {
        let members: &[&str] = match key.get("kty").and_then(|k| k.as_str()) {
            Some("EC") => &["crv", "x", "y"],
            Some("RSA") => &["n", "e"],
            Some("oct") => &["k"],
            Some("OKP") => &["crv", "x"],
            other => return Err(format!("keys[{i}]: unknown kty {other:?}")),
        };
        for m in members {
            let value = key.get(*m).and_then(|v| v.as_str()).unwrap_or("");
            if *m != "crv" && !base64url(value) {
                return Err(format!("keys[{i}].{m}: missing or not base64url"));
            }
            if *m == "crv" && value.is_empty() {
                return Err(format!("keys[{i}].crv: missing"));
            }
        }
    }
    Ok(())
}

/// A source, operation or condition: at least one list set, no empty
/// value, each value as `check` wants it.
fn check_lists(
    p: &mut Problems,
    field: &str,
    lists: &[(&str, &[String])],
    check: impl Fn(&str, &str) -> Result<(), String>,
) {
    if lists.iter().all(|(_, l)| l.is_empty()) {
        p.push((field.to_owned(), "must not be empty".into()));
    }
    for (name, list) in lists {
        for (k, v) in list.iter().enumerate() {
            let at = format!("{field}.{name}[{k}]");
            if v.is_empty() {
                p.push((at, "empty value".into()));
            } else if let Err(why) = check(name, v) {
                p.push((at, why));
            }
        }
    }
}

fn check_cidr(v: &str) -> Result<(), String> {
    let (addr, len) = v.split_once('/').map_or((v, None), |(a, l)| (a, Some(l)));
    let ip: std::net::IpAddr = addr
        .parse()
        .map_err(|_| format!("{v:?} is not an IP address or CIDR"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match len.map(str::parse::<u32>) {
        None => Ok(()),
        Some(Ok(l)) if l <= max => Ok(()),
        Some(_) => Err(format!("{v:?}: bad prefix length")),
    }
}

fn check_port(v: &str) -> Result<(), String> {
    match v.parse::<u32>() {
        Ok(port) if port <= 65535 => Ok(()),
        _ => Err(format!("{v:?} is not a port (0-65535)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::{parse_value, split_documents};

    fn check(yaml: &str) -> Result<(), ParseError> {
        let (_, v) = split_documents(yaml).remove(0);
        validate(&parse_value(v.unwrap(), "default").remove(0).unwrap())
    }

    fn field_of(r: Result<(), ParseError>) -> String {
        match r {
            Err(ParseError::InvalidField { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    const HEAD: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [reviews]\n  http:\n";

    #[test]
    fn unix_socket_endpoints_are_checked_as_istio_does() {
        let se = |resolution: &str, ports: &str| {
            check(&format!(
                "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: e}}\nspec: {{hosts: [uds.local], resolution: {resolution}, ports: [{ports}], endpoints: [{{address: 'unix:///var/run/a.sock'}}]}}\n"
            ))
        };
        let one = "{number: 80, name: http, protocol: HTTP}";
        let two =
            "{number: 80, name: http, protocol: HTTP}, {number: 81, name: http-2, protocol: HTTP}";
        assert!(se("STATIC", one).is_ok(), "{:?}", se("STATIC", one));
        assert_eq!(field_of(se("STATIC", two)), "spec.ports");
        assert_eq!(field_of(se("DNS", one)), "spec.endpoints[0].address");
    }

    #[test]
    fn envoy_filters_are_checked_as_istio_does() {
        let ef = |spec: &str| {
            check(&format!(
                "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {{name: f}}\nspec: {spec}\n"
            ))
        };
        let hcm = "envoy.filters.network.http_connection_manager";
        for good in [
            "{configPatches: [{applyTo: HTTP_FILTER, patch: {operation: REMOVE}}]}".to_owned(),
            format!("{{workloadSelector: {{labels: {{app: a}}}}, configPatches: [{{applyTo: HTTP_FILTER, match: {{context: SIDECAR_INBOUND, listener: {{filterChain: {{filter: {{name: {hcm}, subFilter: {{name: envoy.filters.http.router}}}}}}}}}}, patch: {{operation: INSERT_BEFORE, value: {{name: x}}}}}}]}}"),
            "{configPatches: [{applyTo: CLUSTER, match: {cluster: {service: a.b.svc.cluster.local}}, patch: {operation: MERGE, value: {connect_timeout: 1s}}}]}".to_owned(),
        ] {
            assert!(ef(&good).is_ok(), "{good}: {:?}", ef(&good));
        }
        for (bad, field) in [
            ("{configPatches: [{patch: {operation: REMOVE}}]}".to_owned(), "spec.configPatches[0].applyTo"),
            ("{configPatches: [{applyTo: CLUSTER}]}".to_owned(), "spec.configPatches[0].patch"),
            ("{configPatches: [{applyTo: CLUSTER, patch: {value: {}}}]}".to_owned(), "spec.configPatches[0].patch.operation"),
            ("{configPatches: [{applyTo: CLUSTER, patch: {operation: ADD}}]}".to_owned(), "spec.configPatches[0].patch.value"),
            ("{configPatches: [{applyTo: CLUSTER, match: {listener: {name: l}}, patch: {operation: REMOVE}}]}".to_owned(), "spec.configPatches[0].match"),
            ("{configPatches: [{applyTo: VIRTUAL_HOST, match: {cluster: {name: c}}, patch: {operation: REMOVE}}]}".to_owned(), "spec.configPatches[0].match"),
            ("{configPatches: [{applyTo: HTTP_FILTER, match: {cluster: {name: c}}, patch: {operation: REMOVE}}]}".to_owned(), "spec.configPatches[0].match"),
            ("{configPatches: [{applyTo: HTTP_FILTER, match: {listener: {filterChain: {filter: {subFilter: {name: r}}}}}, patch: {operation: REMOVE}}]}".to_owned(), "spec.configPatches[0].match.listener.filterChain.filter.name"),
            ("{configPatches: [{applyTo: NETWORK_FILTER, match: {listener: {filterChain: {filter: {name: x, subFilter: {name: r}}}}}, patch: {operation: REMOVE}}]}".to_owned(), "spec.configPatches[0].match.listener.filterChain.filter.subFilter"),
            ("{configPatches: [{applyTo: HTTP_FILTER, match: {listener: {filterChain: {filter: {name: envoy.filters.network.tcp_proxy, subFilter: {name: r}}}}}, patch: {operation: REMOVE}}]}".to_owned(), "spec.configPatches[0].match.listener.filterChain.filter.name"),
            ("{configPatches: [{applyTo: CLUSTER, match: {proxy: {proxyVersion: '(unclosed'}}, patch: {operation: REMOVE}}]}".to_owned(), "spec.configPatches[0].match.proxy.proxyVersion"),
            ("{workloadSelector: {labels: {app: '*'}}}".to_owned(), "spec.workloadSelector.labels"),
        ] {
            assert_eq!(field_of(ef(&bad)), field, "{bad}");
        }
        // Only `v1alpha3`, as Istio serves it.
        let (_, v) = split_documents(
            "apiVersion: networking.istio.io/v1\nkind: EnvoyFilter\nmetadata: {name: f}\nspec: {}\n",
        )
        .remove(0);
        let parsed = parse_value(v.unwrap(), "default").remove(0);
        assert!(
            matches!(parsed, Err(ParseError::UnsupportedKind { .. })),
            "{parsed:?}"
        );
    }

    #[test]
    fn workload_groups_are_checked_as_istio_does() {
        let wg = |spec: &str| {
            check(&format!(
                "apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata: {{name: g}}\nspec: {spec}\n"
            ))
        };
        for good in [
            "{template: {serviceAccount: a}}",
            "{template: {}, probe: {httpGet: {port: 8080, path: /ready, scheme: HTTPS, httpHeaders: [{name: X-Probe, value: v}]}, periodSeconds: 5}}",
            "{template: {}, probe: {tcpSocket: {port: 5432}}}",
            "{template: {}, probe: {exec: {command: [cat, /ready]}}}",
        ] {
            assert!(wg(good).is_ok(), "{good}: {:?}", wg(good));
        }
        for (bad, field) in [
            ("{template: {address: 10.0.0.1}}", "spec.template.address"),
            ("{template: {}, probe: {periodSeconds: 5}}", "spec.probe"),
            (
                "{template: {}, probe: {tcpSocket: {port: 0}}}",
                "spec.probe.tcpSocket.port",
            ),
            (
                "{template: {}, probe: {httpGet: {port: 80, scheme: FTP}}}",
                "spec.probe.httpGet.scheme",
            ),
            (
                "{template: {}, probe: {httpGet: {port: 80, httpHeaders: [{name: 'a b'}]}}}",
                "spec.probe.httpGet.httpHeaders[0].name",
            ),
            (
                "{template: {}, probe: {exec: {command: []}}}",
                "spec.probe.exec.command",
            ),
            (
                "{template: {}, probe: {grpc: {port: 9090}}}",
                "spec.probe.grpc",
            ),
            (
                "{template: {}, probe: {exec: {command: ['true']}, failureThreshold: -1}}",
                "spec.probe.failureThreshold",
            ),
            (
                "{template: {}, probe: {exec: {command: ['true']}, tcpSocket: {port: 1}}}",
                "spec.probe",
            ),
        ] {
            assert_eq!(field_of(wg(bad)), field, "{bad}");
        }
    }

    #[test]
    fn outlier_detection_error_codes_are_http_statuses() {
        let dr = |policy: &str| {
            check(&format!(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r}}\nspec:\n  host: reviews\n  trafficPolicy: {policy}\n"
            ))
        };
        assert!(dr("{outlierDetection: {outlierDetectionHttpErrorCodes: [429, 503]}}").is_ok());
        assert_eq!(
            field_of(dr(
                "{outlierDetection: {outlierDetectionHttpErrorCodes: [429, 99]}}"
            )),
            "spec.trafficPolicy.outlierDetection.outlierDetectionHttpErrorCodes[1]"
        );
        assert_eq!(
            field_of(dr(
                "{portLevelSettings: [{port: {number: 9080}, outlierDetection: {outlierDetectionHttpErrorCodes: [600]}}]}"
            )),
            "spec.trafficPolicy.portLevelSettings[0].outlierDetection.outlierDetectionHttpErrorCodes[0]"
        );
    }

    #[test]
    fn sidecar_ingress_tls_is_checked_as_istio_does() {
        let sc = |port: &str, tls: &str| {
            check(&format!(
                "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: s}}\nspec:\n  ingress:\n  - port: {port}\n    defaultEndpoint: 127.0.0.1:8080\n    tls: {tls}\n"
            ))
        };
        let https = "{number: 8443, protocol: HTTPS, name: https}";
        let files = "serverCertificate: /c.pem, privateKey: /k.pem";
        assert!(sc(https, &format!("{{mode: SIMPLE, {files}}}")).is_ok());
        assert!(
            sc(
                "{number: 8443, protocol: TLS, name: t}",
                &format!("{{mode: SIMPLE, {files}}}")
            )
            .is_ok()
        );
        for (tls, field) in [
            (
                "{mode: SIMPLE, credentialName: c}",
                "spec.ingress[0].tls.credentialName",
            ),
            (
                "{mode: SIMPLE, credentialNames: [c]}",
                "spec.ingress[0].tls.credentialNames",
            ),
            (
                "{mode: SIMPLE, tlsCertificates: [{serverCertificate: /c, privateKey: /k}]}",
                "spec.ingress[0].tls.tlsCertificates",
            ),
            ("{mode: ISTIO_MUTUAL}", "spec.ingress[0].tls.mode"),
            ("{mode: AUTO_PASSTHROUGH}", "spec.ingress[0].tls.mode"),
            (
                &format!("{{mode: MUTUAL, {files}, subjectAltNames: [a]}}"),
                "spec.ingress[0].tls.subjectAltNames",
            ),
            (
                &format!("{{mode: SIMPLE, {files}, httpsRedirect: true}}"),
                "spec.ingress[0].tls.httpsRedirect",
            ),
        ] {
            assert_eq!(field_of(sc(https, tls)), field, "{tls}");
        }
        assert_eq!(
            field_of(sc(
                "{number: 8080, protocol: HTTP, name: http}",
                &format!("{{mode: SIMPLE, {files}}}")
            )),
            "spec.ingress[0].port.protocol"
        );
    }

    #[test]
    fn port_level_peer_authentication_needs_a_selector() {
        let pa = |spec: &str| {
            check(&format!(
                "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: p}}\nspec: {spec}\n"
            ))
        };
        assert!(pa("{mtls: {mode: STRICT}}").is_ok());
        assert_eq!(
            field_of(pa("{portLevelMtls: {8080: {mode: DISABLE}}}")),
            "spec.portLevelMtls"
        );
        assert!(
            pa("{selector: {matchLabels: {app: a}}, portLevelMtls: {8080: {mode: DISABLE}}}")
                .is_ok()
        );
        assert_eq!(
            field_of(pa(
                "{selector: {matchLabels: {app: a}}, portLevelMtls: {0: {mode: DISABLE}}}"
            )),
            "spec.portLevelMtls.0"
        );
    }

    #[test]
    fn authorization_policies_are_checked_as_istio_does() {
        let ap = |spec: &str| {
            check(&format!(
                "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p}}\nspec: {spec}\n"
            ))
        };
        assert!(ap("{}").is_ok());
        // The kinds a policy attaches to.
        assert!(
            ap("{targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: g}, {group: gateway.networking.k8s.io, kind: GatewayClass, name: istio-waypoint}, {group: '', kind: Service, name: s}, {group: networking.istio.io, kind: ServiceEntry, name: e}]}")
                .is_ok()
        );
        assert!(
            ap("{action: DENY, rules: [{from: [{source: {notPrincipals: ['*'], ipBlocks: [10.0.0.0/8]}}], to: [{operation: {methods: [GET], ports: ['8080']}}], when: [{key: 'request.headers[x-user]', values: [alice]}, {key: destination.port, notValues: ['9090']}]}]}")
                .is_ok()
        );
        // Istio's path templates, as its task writes them.
        assert!(
            ap("{rules: [{to: [{operation: {paths: ['/store/{*}/inventory', '/api/{**}', '/a/{**}/b.json', '/prefix*']}}]}]}")
                .is_ok()
        );
        for (spec, field) in [
            ("{action: CUSTOM}", "spec.provider"),
            ("{provider: {name: opa}}", "spec.provider"),
            (
                "{selector: {matchLabels: {app: a}}, targetRef: {kind: Gateway, name: g}}",
                "spec.selector",
            ),
            (
                "{targetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: g}, targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: h}]}",
                "spec.targetRef",
            ),
            (
                "{targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: ''}]}",
                "spec.targetRefs[0].name",
            ),
            (
                "{targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: g, namespace: other}]}",
                "spec.targetRefs[0].namespace",
            ),
            (
                "{targetRefs: [{kind: Gateway, name: g}]}",
                "spec.targetRefs[0].kind",
            ),
            (
                "{targetRef: {group: apps, kind: Deployment, name: g}}",
                "spec.targetRef.kind",
            ),
            ("{rules: [{from: [{}]}]}", "spec.rules[0].from[0].source"),
            (
                "{rules: [{to: [{operation: {}}]}]}",
                "spec.rules[0].to[0].operation",
            ),
            (
                "{rules: [{from: [{source: {ipBlocks: [10.0.0.0/40]}}]}]}",
                "spec.rules[0].from[0].source.ipBlocks[0]",
            ),
            (
                "{rules: [{to: [{operation: {ports: [http]}}]}]}",
                "spec.rules[0].to[0].operation.ports[0]",
            ),
            (
                "{rules: [{to: [{operation: {paths: ['']}}]}]}",
                "spec.rules[0].to[0].operation.paths[0]",
            ),
            (
                "{rules: [{to: [{operation: {paths: ['/a/{**}/{*}']}}]}]}",
                "spec.rules[0].to[0].operation.paths[0]",
            ),
            (
                "{rules: [{to: [{operation: {notPaths: ['/ok', '/a/{id}/{*}']}}]}]}",
                "spec.rules[0].to[0].operation.notPaths[1]",
            ),
            (
                "{rules: [{to: [{operation: {paths: ['/a/b*/{*}']}}]}]}",
                "spec.rules[0].to[0].operation.paths[0]",
            ),
            (
                "{rules: [{when: [{key: source.color, values: [red]}]}]}",
                "spec.rules[0].when[0].key",
            ),
            (
                "{rules: [{when: [{key: 'request.headers[]', values: [a]}]}]}",
                "spec.rules[0].when[0].key",
            ),
            (
                "{rules: [{when: [{key: source.ip}]}]}",
                "spec.rules[0].when[0]",
            ),
            (
                "{rules: [{when: [{key: destination.port, values: ['70000']}]}]}",
                "spec.rules[0].when[0].values[0]",
            ),
        ] {
            assert_eq!(field_of(ap(spec)), field, "{spec}");
        }
    }

    #[test]
    fn telemetries_are_checked_as_istio_does() {
        let t = |spec: &str| {
            check(&format!(
                "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: t}}\nspec: {spec}\n"
            ))
        };
        assert!(
            t("{accessLogging: [{providers: [{name: envoy}], filter: {expression: 'response.code >= 400'}}], tracing: [{randomSamplingPercentage: 10, customTags: {team: {literal: {value: a}}, user: {header: {name: x-user, defaultValue: none}}}}]}")
                .is_ok()
        );
        for (spec, field) in [
            (
                "{selector: {matchLabels: {app: a}}, targetRefs: [{kind: Gateway, name: g}]}",
                "spec.selector",
            ),
            (
                "{tracing: [{providers: [{name: ''}]}]}",
                "spec.tracing[0].providers[0].name",
            ),
            (
                "{tracing: [{randomSamplingPercentage: 101}]}",
                "spec.tracing[0].randomSamplingPercentage",
            ),
            (
                "{tracing: [{customTags: {a: {literal: {value: x}, header: {name: y}}}}]}",
                "spec.tracing[0].customTags.a",
            ),
            (
                "{tracing: [{customTags: {a: {header: {name: ''}}}}]}",
                "spec.tracing[0].customTags.a.header.name",
            ),
            (
                "{accessLogging: [{filter: {expression: 'response.code >='}}]}",
                "spec.accessLogging[0].filter.expression",
            ),
            (
                "{accessLogging: [{filter: {expression: 'string(response.code) == \"200\"'}}]}",
                "spec.accessLogging[0].filter.expression",
            ),
        ] {
            assert_eq!(field_of(t(spec)), field, "{spec}");
        }
    }

    #[test]
    fn request_authentications_are_checked_as_istio_does() {
        let ra = |spec: &str| {
            check(&format!(
                "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: r}}\nspec: {spec}\n"
            ))
        };
        let jwks = r#"'{"keys": [{"kty": "EC", "crv": "P-256", "x": "a", "y": "b"}]}'"#;
        assert!(
            ra(&format!(
                "{{jwtRules: [{{issuer: a, jwks: {jwks}, fromHeaders: [{{name: x-jwt}}]}}]}}"
            ))
            .is_ok()
        );
        assert!(ra("{jwtRules: [{issuer: a, jwksUri: 'https://idp.example/keys'}]}").is_ok());
        for (spec, field) in [
            (
                "{jwtRules: [{jwksUri: 'https://a/k'}]}",
                "spec.jwtRules[0].issuer",
            ),
            (
                "{jwtRules: [{issuer: a, jwksUri: 'ftp://a/k'}]}",
                "spec.jwtRules[0].jwksUri",
            ),
            (
                "{jwtRules: [{issuer: a, jwks: '{}'}]}",
                "spec.jwtRules[0].jwks",
            ),
            (
                r#"{jwtRules: [{issuer: a, jwks: '{"keys": [{"kty": "EC", "crv": "P-256", "x": "a+b"}]}'}]}"#,
                "spec.jwtRules[0].jwks",
            ),
            (
                "{jwtRules: [{issuer: a, jwks: 'x', jwksUri: 'https://a/k'}]}",
                "spec.jwtRules[0]",
            ),
            (
                "{jwtRules: [{issuer: a, fromHeaders: [{name: ''}]}]}",
                "spec.jwtRules[0].fromHeaders[0].name",
            ),
            (
                "{jwtRules: [{issuer: a, timeout: 0s}]}",
                "spec.jwtRules[0].timeout",
            ),
        ] {
            assert_eq!(field_of(ra(spec)), field, "{spec}");
        }
    }

    #[test]
    fn weights_must_total_100() {
        let r = check(&format!(
            "{HEAD}  - route:\n    - {{destination: {{host: reviews, subset: v1}}, weight: 70}}\n    - {{destination: {{host: reviews, subset: v2}}, weight: 20}}\n"
        ));
        assert_eq!(field_of(r), "spec.http[0].route");
        assert!(check(&format!(
            "{HEAD}  - route:\n    - {{destination: {{host: reviews, subset: v1}}, weight: 80}}\n    - {{destination: {{host: reviews, subset: v2}}, weight: 20}}\n"
        ))
        .is_ok());
    }

    #[test]
    fn regexes_are_checked() {
        let r = check(&format!(
            "{HEAD}  - match: [{{headers: {{cookie: {{regex: \"^(.*?;)?(user=jason\"}}}}}}]\n    route: [{{destination: {{host: reviews}}}}]\n"
        ));
        assert_eq!(field_of(r), "spec.http[0].match[0].headers.cookie.regex");
        assert!(check(&format!(
            "{HEAD}  - match: [{{headers: {{cookie: {{regex: \"^(.*?;)?(user=jason)(;.*)?$\"}}}}}}]\n    route: [{{destination: {{host: reviews}}}}]\n"
        ))
        .is_ok());
    }

    #[test]
    fn negative_durations_are_refused_by_the_parser() {
        let (_, v) = split_documents(&format!(
            "{HEAD}  - timeout: -1s\n    route: [{{destination: {{host: reviews}}}}]\n"
        ))
        .remove(0);
        let err = parse_value(v.unwrap(), "default").remove(0).unwrap_err();
        assert!(err.to_string().contains("spec.http[0].timeout"), "{err}");
        assert!(err.to_string().contains("negative"), "{err}");
    }
}
