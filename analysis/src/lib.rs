//! Config analysis, as `istioctl analyze`: checks across objects that
//! validation of one object cannot make (a route to a host no service
//! has, a subset no DestinationRule defines, two Gateways claiming one
//! host and port of one workload, ...), reported as Istio's analysis
//! messages (`IST0101` ...; codes, levels and texts as Istio's
//! `pkg/config/analysis/msg/messages.yaml`).
//!
//! [`Input`] reads the objects (YAML files, or objects the daemon holds);
//! [`analyze`] runs [`ALL`] (or a chosen few) over them and gives the
//! [`Message`]s, sorted and without repeats. Each analyzer carries
//! Istio's name for it (`virtualservice.DestinationHostAnalyzer`) and
//! follows Istio's analyzer of that name (`pkg/config/analysis/analyzers`);
//! where this one differs, its docs say so.

mod analyzers;
mod hosts;
pub mod input;
mod lines;
pub mod message;

pub use analyzers::annotations::ANNOTATIONS;
pub use input::{Entry, Input};
pub use message::{Level, Message, MessageType, Param, Resource};

/// An analyzer: Istio's name and description for it, and the check.
#[derive(Clone, Copy)]
pub struct Analyzer {
    /// Istio's name (`gateway.ConflictingGatewayAnalyzer`).
    pub name: &'static str,
    /// What it checks.
    pub description: &'static str,
    run: fn(&Input, &mut Vec<Message>),
}

impl std::fmt::Debug for Analyzer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Every analyzer, by name.
pub const ALL: &[Analyzer] = &[
    Analyzer {
        name: "annotations.K8sAnalyzer",
        description: "Checks for misplaced and invalid Istio annotations in Kubernetes resources",
        run: analyzers::annotations::kubernetes,
    },
    Analyzer {
        name: "applicationUID.Analyzer",
        description: "Checks invalid application UID",
        run: analyzers::service::application_uid,
    },
    Analyzer {
        name: "authz.AuthorizationPoliciesAnalyzer",
        description: "Checks the validity of authorization policies",
        run: analyzers::authz::policies,
    },
    Analyzer {
        name: "deployment.MultiServiceAnalyzer",
        description: "Checks association between services and pods",
        run: analyzers::service::workload_services,
    },
    Analyzer {
        name: "deprecation.DeprecationAnalyzer",
        description: "Checks for deprecated Istio types and fields",
        run: analyzers::schema::deprecations,
    },
    Analyzer {
        name: "destinationrule.CaCertificateAnalyzer",
        description: "Checks if caCertificates is set when TLS mode is SIMPLE/MUTUAL",
        run: analyzers::destinationrule::ca_certificates,
    },
    Analyzer {
        name: "destinationrule.SubsetSelectPodAnalyzer",
        description: "Checks that a DestinationRule's host is a service and that each subset selects pods",
        run: analyzers::destinationrule::subsets_select_pods,
    },
    Analyzer {
        name: "envoyfilter.EnvoyPatchAnalyzer",
        description: "Checks an EnvoyFilter's patch operations against what they apply to, and their order",
        run: analyzers::envoyfilter::patches,
    },
    Analyzer {
        name: "gateway.CertificateAnalyzer",
        description: "Checks a gateway certificate",
        run: analyzers::gateway::duplicate_certificates,
    },
    Analyzer {
        name: "gateway.ConflictingGatewayAnalyzer",
        description: "Checks a gateway's selector, port number and hosts",
        run: analyzers::gateway::conflicting,
    },
    Analyzer {
        name: "gateway.IngressGatewayPortAnalyzer",
        description: "Checks a gateway's ports against the gateway's Kubernetes service ports",
        run: analyzers::gateway::ingress_ports,
    },
    Analyzer {
        name: "gateway.SecretAnalyzer",
        description: "Checks a gateway's referenced secrets for correctness",
        run: analyzers::gateway::secrets,
    },
    Analyzer {
        name: "injection.Analyzer",
        description: "Checks that namespaces enable or disable sidecar injection, with one label",
        run: analyzers::injection::namespaces,
    },
    Analyzer {
        name: "schema.ValidationAnalyzer",
        description: "Runs istiod's validation on every object read, and reports VirtualService rules that cannot match",
        run: analyzers::schema::validation,
    },
    Analyzer {
        name: "service.PortNameAnalyzer",
        description: "Checks the port names associated with each service",
        run: analyzers::service::port_names,
    },
    Analyzer {
        name: "serviceentry.Analyzer",
        description: "Checks that ServiceEntries with TCP ports have addresses",
        run: analyzers::serviceentry::protocol_addresses,
    },
    Analyzer {
        name: "serviceentry.ConflictingServiceEntryProtocolAnalyzer",
        description: "Checks if multiple ServiceEntries define the same host and port with different protocols",
        run: analyzers::serviceentry::conflicting_protocols,
    },
    Analyzer {
        name: "sidecar.DefaultSelectorAnalyzer",
        description: "Validates that there aren't multiple sidecar resources that have no selector",
        run: analyzers::selectors::default_selectors,
    },
    Analyzer {
        name: "sidecar.SelectorAnalyzer",
        description: "Validates that sidecars that define a workload selector match a workload and that there aren't multiple sidecar resources that select overlapping pods",
        run: analyzers::selectors::selectors,
    },
    Analyzer {
        name: "telemetry.DefaultSelectorAnalyzer",
        description: "Validates that there aren't multiple telemetry resources that have no selector",
        run: analyzers::selectors::telemetry_default_selectors,
    },
    Analyzer {
        name: "telemetry.ProviderAnalyzer",
        description: "Validates that providers in telemetry resource is valid",
        run: analyzers::selectors::telemetry_providers,
    },
    Analyzer {
        name: "telemetry.SelectorAnalyzer",
        description: "Validates that telemetries that define a selector match a workload and that there aren't multiple telemetry resources that select overlapping pods",
        run: analyzers::selectors::telemetry_selectors,
    },
    Analyzer {
        name: "virtualservice.ConflictingMeshGatewayHostsAnalyzer",
        description: "Checks if multiple virtual services associated with the mesh gateway have conflicting hosts",
        run: analyzers::virtualservice::conflicting_mesh_hosts,
    },
    Analyzer {
        name: "virtualservice.DestinationHostAnalyzer",
        description: "Checks the destination hosts associated with each virtual service",
        run: analyzers::virtualservice::destination_hosts,
    },
    Analyzer {
        name: "virtualservice.DestinationRuleAnalyzer",
        description: "Checks the destination rules associated with each virtual service",
        run: analyzers::virtualservice::destination_rules,
    },
    Analyzer {
        name: "virtualservice.GatewayAnalyzer",
        description: "Checks the gateways associated with each virtual service",
        run: analyzers::virtualservice::gateways,
    },
    Analyzer {
        name: "virtualservice.JWTClaimRouteAnalyzer",
        description: "Checks the VirtualService using JWT claim based routing has corresponding RequestAuthentication",
        run: analyzers::virtualservice::jwt_claim_routes,
    },
];

/// The warnings Istio's validation gives for `object` (its webhook
/// returns them with the admission, `kubectl apply` prints them): a
/// VirtualService's unreachable rules and ineffective matches, in Istio's
/// words. Empty for other kinds.
pub fn validation_warnings(object: &crds::Object) -> Vec<String> {
    match object {
        crds::Object::VirtualService(vs) => analyzers::schema::virtual_service_warnings(&vs.spec),
        _ => Vec::new(),
    }
}

/// The analyzer named `name` (Istio's name), if there is one.
pub fn analyzer(name: &str) -> Option<Analyzer> {
    ALL.iter().find(|a| a.name == name).copied()
}

/// The annotation by which an object suppresses messages about it: a
/// comma-separated list of codes (`IST0108,IST0103`), or `*` for all.
pub const SUPPRESS: &str = "galley.istio.io/analyze-suppress";

/// Runs `analyzers` over `input`. The messages come sorted by object
/// (namespace, kind, name), then code and text; a message given twice
/// (the same object, code and text) is given once, and those an object
/// suppresses by its [`SUPPRESS`] annotation are left out, as istioctl
/// does. A message about a field ([`Message::field`]) points at that
/// field's line in the file read, as istioctl's do; others at their
/// document's first line.
pub fn analyze(input: &Input, analyzers: &[Analyzer]) -> Vec<Message> {
    let mut out = Vec::new();
    for a in analyzers {
        (a.run)(input, &mut out);
    }
    let suppressed: std::collections::HashMap<&Resource, Vec<&str>> = input
        .entries
        .iter()
        .filter_map(|e| {
            let codes = e.object.metadata().annotations.as_ref()?.get(SUPPRESS)?;
            Some((&e.resource, codes.split(',').map(str::trim).collect()))
        })
        .collect();
    out.retain(|m| {
        let Some(codes) = m.resource.as_ref().and_then(|r| suppressed.get(r)) else {
            return true;
        };
        !codes.iter().any(|c| *c == "*" || *c == m.kind.code)
    });
    out.sort_by_cached_key(|m| {
        let r = m.resource.as_ref();
        (
            r.and_then(|r| r.namespace.clone()),
            r.map(|r| (r.kind.clone(), r.name.clone())),
            m.kind.code,
            m.text(),
        )
    });
    out.dedup_by(|a, b| a.kind == b.kind && a.resource == b.resource && a.params == b.params);
    // Point at the field, as istioctl does, where the message names one.
    for m in &mut out {
        if let (Some(field), Some(r)) = (&m.field, &mut m.resource)
            && let Some(reference) = r.reference.as_deref()
            && let Some(at) = input.field_reference(reference, field)
        {
            r.reference = Some(at);
        }
    }
    out
}
