//! Istio's analysis messages: the catalogue entries used here (name, IST
//! code, level and message template, as Istio's
//! `pkg/config/analysis/msg/messages.yaml`), and a reported [`Message`].

use std::fmt;

/// How serious a message is (Istio's `diag.Level`), least first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Level {
    /// Worth knowing; nothing is wrong.
    Info,
    /// Likely a mistake; the config still applies.
    Warning,
    /// The config does not do what it says.
    Error,
}

impl Level {
    /// `Info`, `Warning` or `Error`, as istioctl prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "Info",
            Level::Warning => "Warning",
            Level::Error => "Error",
        }
    }

    /// Parses `Info`, `Warning` or `Error` (any case), as istioctl's
    /// `--failure-threshold` / `--output-threshold` take them.
    ///
    /// # Errors
    /// The text, when it is none of these.
    pub fn parse(text: &str) -> Result<Level, String> {
        match text.to_ascii_lowercase().as_str() {
            "info" => Ok(Level::Info),
            "warning" | "warn" => Ok(Level::Warning),
            "error" => Ok(Level::Error),
            _ => Err(format!("{text:?} is not a level (Info, Warning or Error)")),
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A kind of message: Istio's `diag.MessageType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MessageType {
    /// Istio's name for it, e.g. `ReferencedResourceNotFound`.
    pub name: &'static str,
    /// Its code, e.g. `IST0101`.
    pub code: &'static str,
    /// Its level.
    pub level: Level,
    /// Its text, a Go format string (`%s`, `%q`, `%v`, `%d`) filled with
    /// the message's parameters in order.
    pub template: &'static str,
}

macro_rules! message_types {
    ($($(#[$doc:meta])* $konst:ident = $name:literal, $code:literal, $level:ident, $template:literal;)*) => {
        $(
            $(#[$doc])*
            pub const $konst: MessageType = MessageType {
                name: $name,
                code: $code,
                level: Level::$level,
                template: $template,
            };
        )*
        /// Every message type this crate reports.
        pub const ALL_TYPES: &[MessageType] = &[$($konst),*];
    };
}

message_types! {
    /// A deprecated field or kind.
    DEPRECATED = "Deprecated", "IST0002", Warning,
        "Deprecated: %s";
    /// A reference (host, subset, gateway, selector, ...) names nothing.
    REFERENCED_RESOURCE_NOT_FOUND = "ReferencedResourceNotFound", "IST0101", Error,
        "Referenced %s not found: %q";
    /// A namespace that neither enables nor disables injection.
    NAMESPACE_NOT_INJECTED = "NamespaceNotInjected", "IST0102", Info,
        "The namespace is not enabled for Istio injection. Run 'kubectl label namespace %s istio-injection=enabled' to enable it, or 'kubectl label namespace %s istio-injection=disabled' to explicitly mark it as not needing injection.";
    /// A pod of an injected namespace without Istio's proxy.
    POD_MISSING_PROXY = "PodMissingProxy", "IST0103", Warning,
        "The pod %s is missing the Istio proxy. This can often be resolved by restarting or redeploying the workload.";
    /// The object does not pass istiod's validation.
    SCHEMA_VALIDATION_ERROR = "SchemaValidationError", "IST0106", Error,
        "Schema validation error: %v";
    /// An Istio annotation on a kind that does not read it.
    MISPLACED_ANNOTATION = "MisplacedAnnotation", "IST0107", Warning,
        "Misplaced annotation: %s can only be applied to %s";
    /// An annotation in Istio's namespaces that Istio does not define.
    UNKNOWN_ANNOTATION = "UnknownAnnotation", "IST0108", Warning,
        "Unknown annotation: %s";
    /// VirtualServices bound to the mesh gateway define the same host.
    CONFLICTING_MESH_GATEWAY_VIRTUAL_SERVICE_HOSTS = "ConflictingMeshGatewayVirtualServiceHosts", "IST0109", Error,
        "The VirtualServices %s associated with mesh gateway define the same host %s which can lead to undefined behavior. This can be fixed by merging the conflicting VirtualServices into a single resource.";
    /// Sidecars whose selectors pick the same pod.
    CONFLICTING_SIDECAR_WORKLOAD_SELECTORS = "ConflictingSidecarWorkloadSelectors", "IST0110", Error,
        "The Sidecars %v in namespace %q select the same workload pod %q, which can lead to undefined behavior.";
    /// Several Sidecars of a namespace without a selector.
    MULTIPLE_SIDECARS_WITHOUT_WORKLOAD_SELECTORS = "MultipleSidecarsWithoutWorkloadSelectors", "IST0111", Error,
        "The Sidecars %v in namespace %q have no workload selector, which can lead to undefined behavior.";
    /// A destination without a port on a service with several.
    VIRTUAL_SERVICE_DESTINATION_PORT_SELECTOR_REQUIRED = "VirtualServiceDestinationPortSelectorRequired", "IST0112", Error,
        "This VirtualService routes to a service %q that exposes multiple ports %v. Specifying a port in the destination is required to disambiguate.";
    /// A workload whose Services give one port different L4 protocols.
    DEPLOYMENT_ASSOCIATED_TO_MULTIPLE_SERVICES = "DeploymentAssociatedToMultipleServices", "IST0116", Warning,
        "This deployment %s is associated with multiple services using port %d but different protocols: %v";
    /// A service port whose name gives no protocol.
    PORT_NAME_IS_NOT_UNDER_NAMING_CONVENTION = "PortNameIsNotUnderNamingConvention", "IST0118", Info,
        "Port name %s (port: %d, targetPort: %s) doesn't follow the naming convention of Istio port.";
    /// A selector that matches no workload.
    NO_MATCHING_WORKLOADS_FOUND = "NoMatchingWorkloadsFound", "IST0127", Warning,
        "No matching workloads for this resource with the following labels: %s";
    /// A namespace with both injection labels.
    NAMESPACE_MULTIPLE_INJECTION_LABELS = "NamespaceMultipleInjectionLabels", "IST0123", Warning,
        "The namespace has more than one type of injection labels %v, which may lead to undefined behavior. Make sure only one injection label exists.";
    /// TLS origination without a CA to check the server (top level).
    NO_SERVER_CERTIFICATE_VERIFICATION_DESTINATION_LEVEL = "NoServerCertificateVerificationDestinationLevel", "IST0128", Warning,
        "DestinationRule %s in namespace %s has TLS mode set to %s but no caCertificates are set to validate server identity for host: %s";
    /// TLS origination without a CA to check the server (a port's).
    NO_SERVER_CERTIFICATE_VERIFICATION_PORT_LEVEL = "NoServerCertificateVerificationPortLevel", "IST0129", Warning,
        "DestinationRule %s in namespace %s has TLS mode set to %s but no caCertificates are set to validate server identity for host: %s at port %s";
    /// A workload whose Services reach one target port from different ports.
    DEPLOYMENT_CONFLICTING_PORTS = "DeploymentConflictingPorts", "IST0137", Warning,
        "This deployment %s is associated with multiple services %v using targetPort %q but different ports: %v.";
    /// A route rule no request can reach.
    VIRTUAL_SERVICE_UNREACHABLE_RULE = "VirtualServiceUnreachableRule", "IST0130", Warning,
        "VirtualService rule %v not used (%s).";
    /// A match an earlier one already takes.
    VIRTUAL_SERVICE_INEFFECTIVE_MATCH = "VirtualServiceIneffectiveMatch", "IST0131", Info,
        "VirtualService rule %v match %v is not used (duplicate/overlapping match in rule %v).";
    /// A VirtualService's hosts that its gateway does not serve.
    VIRTUAL_SERVICE_HOST_NOT_FOUND_IN_GATEWAY = "VirtualServiceHostNotFoundInGateway", "IST0132", Warning,
        "one or more host %v defined in VirtualService %s not found in Gateway %s.";
    /// A ServiceEntry TCP port without addresses.
    SERVICE_ENTRY_ADDRESSES_REQUIRED = "ServiceEntryAddressesRequired", "IST0134", Warning,
        "ServiceEntry addresses are required for this protocol.";
    /// A deprecated Istio annotation.
    DEPRECATED_ANNOTATION = "DeprecatedAnnotation", "IST0135", Info,
        "Annotation %q has been deprecated%s and may not work in future Istio versions.";
    /// Gateways of one workload presenting one certificate.
    GATEWAY_DUPLICATE_CERTIFICATE = "GatewayDuplicateCertificate", "IST0138", Warning,
        "Duplicate certificate in multiple gateways %v may cause 404s if clients re-use HTTP2 connections.";
    /// A gateway route's destination without a subset, where a mesh route uses subsets.
    INGRESS_ROUTE_RULES_NOT_AFFECTED = "IngressRouteRulesNotAffected", "IST0140", Warning,
        "Subset in virtual service %s has no effect on ingress gateway %s requests";
    /// Routing by JWT claims on a gateway no RequestAuthentication covers.
    JWT_CLAIM_BASED_ROUTING_WITHOUT_REQUEST_AUTHN = "JwtClaimBasedRoutingWithoutRequestAuthN", "IST0149", Error,
        "The virtual service uses the JWT claim based routing (key: %s) but found no request authentication for the gateway (%s) pod (%s). The request authentication must first be applied for the gateway pods to validate the JWT token and make the claims available for routing.";
    /// An EnvoyFilter with a relative operation and no priority.
    ENVOY_FILTER_USES_RELATIVE_OPERATION = "EnvoyFilterUsesRelativeOperation", "IST0151", Warning,
        "This EnvoyFilter does not have a priority and has a relative patch operation set which can cause the EnvoyFilter not to be applied. Using the INSERT_FIRST of ADD option or setting the priority may help in ensuring the EnvoyFilter is applied correctly.";
    /// REPLACE on something other than a filter.
    ENVOY_FILTER_USES_REPLACE_OPERATION_INCORRECTLY = "EnvoyFilterUsesReplaceOperationIncorrectly", "IST0152", Error,
        "The REPLACE operation is only valid for HTTP_FILTER and NETWORK_FILTER.";
    /// ADD on a route configuration or route.
    ENVOY_FILTER_USES_ADD_OPERATION_INCORRECTLY = "EnvoyFilterUsesAddOperationIncorrectly", "IST0153", Error,
        "The ADD operation will be ignored when applyTo is set to ROUTE_CONFIGURATION, or HTTP_ROUTE.";
    /// REMOVE on a route configuration or route.
    ENVOY_FILTER_USES_REMOVE_OPERATION_INCORRECTLY = "EnvoyFilterUsesRemoveOperationIncorrectly", "IST0154", Error,
        "The REMOVE operation will be ignored when applyTo is set to ROUTE_CONFIGURATION, or HTTP_ROUTE.";
    /// A relative operation without priority on a filter another EnvoyFilter matches by proxy version.
    ENVOY_FILTER_USES_RELATIVE_OPERATION_WITH_PROXY_VERSION = "EnvoyFilterUsesRelativeOperationWithProxyVersion", "IST0155", Warning,
        "This EnvoyFilter does not have a priority and has a relative patch operation (NSTERT_BEFORE/AFTER, REPLACE, MERGE, DELETE) and proxyVersion set which can cause the EnvoyFilter not to be applied during an upgrade. Using the INSERT_FIRST or ADD option or setting the priority may help in ensuring the EnvoyFilter is applied correctly.";
    /// A Telemetry access log without providers where the mesh has no default.
    INVALID_TELEMETRY_PROVIDER = "InvalidTelemetryProvider", "IST0157", Warning,
        "The Telemetry %v in namespace %q with empty providers will be ignored.";
    /// Telemetries whose selectors pick the same pod.
    CONFLICTING_TELEMETRY_WORKLOAD_SELECTORS = "ConflictingTelemetryWorkloadSelectors", "IST0159", Error,
        "The Telemetries %v in namespace %q select the same workload pod %q, which can lead to undefined behavior.";
    /// Several Telemetries of a namespace without a selector.
    MULTIPLE_TELEMETRIES_WITHOUT_WORKLOAD_SELECTORS = "MultipleTelemetriesWithoutWorkloadSelectors", "IST0160", Error,
        "The Telemetries %v in namespace %q have no workload selector, which can lead to undefined behavior.";
    /// An Istio annotation whose value the injector refuses.
    INVALID_ANNOTATION = "InvalidAnnotation", "IST0125", Warning,
        "Invalid annotation %s: %s";
    /// An application running as the proxy's UID.
    INVALID_APPLICATION_UID = "InvalidApplicationUID", "IST0144", Warning,
        "User ID (UID) 1337 is reserved for the sidecar proxy.";
    /// Gateways of one workload serving one host on one port.
    CONFLICTING_GATEWAYS = "ConflictingGateways", "IST0145", Error,
        "Conflict with gateways %s (workload selector %s, port %s, hosts %v).";
    /// A gateway port its workload's Service does not expose.
    GATEWAY_PORT_NOT_DEFINED_ON_SERVICE = "GatewayPortNotDefinedOnService", "IST0162", Warning,
        "The gateway is listening on a target port (port %d) that is not defined in the Service associated with its workload instances (Pod selector %s). If you need to access the gateway port through the gateway Service, it will not be available.";
    /// A subset no pod carries the labels of.
    DESTINATION_RULE_SUBSET_NOT_SELECT_PODS = "DestinationRuleSubsetNotSelectPods", "IST0173", Error,
        "The Subset %s defined in the DestinationRule does not select any pods. Which may lead to 503 UH (NoHealthyUpstream).";
    /// A DestinationRule whose host is no service.
    UNKNOWN_DESTINATION_RULE_HOST = "UnknownDestinationRuleHost", "IST0174", Warning,
        "The host %s defined in the DestinationRule does not match any services in the mesh.";
    /// ServiceEntries giving one host and port different protocols.
    CONFLICTING_SERVICE_ENTRY_PROTOCOL = "ConflictingServiceEntryProtocol", "IST0177", Warning,
        "Multiple ServiceEntries (%s) define the same host %q and port %d with conflicting protocols (%s).";
}

/// A parameter of a message, as Go's `fmt` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Param {
    /// A string: as is for `%s`/`%v`, quoted for `%q`.
    Str(String),
    /// An integer (`%d`, `%v`).
    Int(i64),
    /// A list, `[a b c]` (`%v` of a Go slice).
    List(Vec<String>),
}

impl From<&str> for Param {
    fn from(s: &str) -> Param {
        Param::Str(s.to_owned())
    }
}

impl From<String> for Param {
    fn from(s: String) -> Param {
        Param::Str(s)
    }
}

impl From<u32> for Param {
    fn from(n: u32) -> Param {
        Param::Int(n.into())
    }
}

/// Fills a Go format string (`%s`, `%v`, `%q`, `%d`, `%%`) with `params` in
/// order, as Go's `fmt.Sprintf` prints strings, integers and string or
/// integer slices. A missing parameter prints Go's `%!v(MISSING)`.
pub fn render(template: &str, params: &[Param]) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut params = params.iter();
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(verb) = chars.next() else {
            out.push('%');
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        match params.next() {
            None => out.push_str(&format!("%!{verb}(MISSING)")),
            Some(Param::Str(s)) if verb == 'q' => out.push_str(&go_quote(s)),
            Some(Param::Str(s)) => out.push_str(s),
            Some(Param::Int(n)) => out.push_str(&n.to_string()),
            Some(Param::List(items)) if verb == 'q' => {
                let quoted: Vec<String> = items.iter().map(|s| go_quote(s)).collect();
                out.push_str(&format!("[{}]", quoted.join(" ")));
            }
            Some(Param::List(items)) => out.push_str(&format!("[{}]", items.join(" "))),
        }
    }
    out
}

/// A string as Go's `%q` prints it: double quotes, `\"`, `\\` and control
/// characters escaped.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The object a message is about, and where it was read.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Resource {
    /// Its kind (`VirtualService`).
    pub kind: String,
    /// Its namespace; `None` for cluster-scoped kinds.
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
    /// Where it was read: `file:line` (the line its document starts on),
    /// or `None` (not from a file).
    pub reference: Option<String>,
}

impl Resource {
    /// Istio's `FriendlyName`: `Kind namespace/name`, or `Kind name` for a
    /// cluster-scoped object.
    pub fn friendly_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }
}

/// One finding: its type, the object it is about, and its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// What kind of finding.
    pub kind: MessageType,
    /// The object; `None` for a finding about no single object (a file
    /// that is not YAML).
    pub resource: Option<Resource>,
    /// The parameters of `kind.template`, in order.
    pub params: Vec<Param>,
    /// The field it is about, as a path into its object
    /// (`spec.http[0].route[0].destination.host`; a key with dots in
    /// brackets and quotes: `metadata.annotations["a.istio.io/b"]`): the
    /// reference then points at that field's line ([`crate::analyze`]).
    pub field: Option<String>,
}

/// Istio's documentation of each code:
/// `https://istio.io/latest/docs/reference/config/analysis/<code>/`.
pub const DOCUMENTATION_URL: &str = "https://istio.io/latest/docs/reference/config/analysis";

impl Message {
    /// A message of `kind` about `resource`.
    pub fn new(kind: MessageType, resource: Option<&Resource>, params: Vec<Param>) -> Message {
        Message {
            kind,
            resource: resource.cloned(),
            params,
            field: None,
        }
    }

    /// The message about the field at `path` of its object.
    pub fn at(mut self, path: impl Into<String>) -> Message {
        self.field = Some(path.into());
        self
    }

    /// The text: the template filled with the parameters.
    pub fn text(&self) -> String {
        render(self.kind.template, &self.params)
    }

    /// Where the page explaining this code is.
    pub fn documentation_url(&self) -> String {
        format!(
            "{DOCUMENTATION_URL}/{}/",
            self.kind.code.to_ascii_lowercase()
        )
    }

    /// The message as istioctl's JSON and YAML output give it: `code`,
    /// `documentationUrl`, `level`, `message`, and `origin` (the friendly
    /// name) and `reference` (`file:line`) when known.
    pub fn to_json(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        out.insert("code".into(), self.kind.code.into());
        out.insert("documentationUrl".into(), self.documentation_url().into());
        out.insert("level".into(), self.kind.level.as_str().into());
        out.insert("message".into(), self.text().into());
        if let Some(r) = &self.resource {
            out.insert("origin".into(), r.friendly_name().into());
            if let Some(reference) = &r.reference {
                out.insert("reference".into(), reference.clone().into());
            }
        }
        serde_json::Value::Object(out)
    }
}

/// istioctl's log line: `Error [IST0101] (VirtualService default/reviews
/// bookinfo.yaml:12) Referenced host not found: "reviews"`.
impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]", self.kind.level, self.kind.code)?;
        if let Some(r) = &self.resource {
            write!(f, " ({}", r.friendly_name())?;
            if let Some(reference) = &r.reference {
                write!(f, " {reference}")?;
            }
            f.write_str(")")?;
        }
        write!(f, " {}", self.text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_go_verbs() {
        let text = render(
            "a %s b %q c %v d %d e %v %% f %s",
            &[
                "x".into(),
                Param::Str("say \"hi\"".into()),
                Param::List(vec!["80".into(), "443".into()]),
                Param::Int(7),
                Param::Str("plain".into()),
            ],
        );
        assert_eq!(
            text,
            r#"a x b "say \"hi\"" c [80 443] d 7 e plain % f %!s(MISSING)"#
        );
    }

    #[test]
    fn log_line_and_json_as_istioctl() {
        let resource = Resource {
            kind: "VirtualService".into(),
            namespace: Some("default".into()),
            name: "reviews".into(),
            reference: Some("bookinfo.yaml:3".into()),
        };
        let m = Message::new(
            REFERENCED_RESOURCE_NOT_FOUND,
            Some(&resource),
            vec!["host".into(), "reviews-bogus".into()],
        );
        assert_eq!(
            m.to_string(),
            r#"Error [IST0101] (VirtualService default/reviews bookinfo.yaml:3) Referenced host not found: "reviews-bogus""#
        );
        assert_eq!(
            m.to_json(),
            serde_json::json!({
                "code": "IST0101",
                "documentationUrl": "https://istio.io/latest/docs/reference/config/analysis/ist0101/",
                "level": "Error",
                "message": "Referenced host not found: \"reviews-bogus\"",
                "origin": "VirtualService default/reviews",
                "reference": "bookinfo.yaml:3",
            })
        );
        let cluster_scoped = Resource {
            namespace: None,
            reference: None,
            kind: "Namespace".into(),
            name: "default".into(),
        };
        assert_eq!(cluster_scoped.friendly_name(), "Namespace default");
    }
}
