//! Istio's `networking.istio.io` API types — VirtualService, DestinationRule,
//! ServiceEntry and Gateway — with serde (Istio's JSON names), schemars and
//! kube's `CustomResource`, plus [`document`]: the parser that turns one
//! YAML/JSON document (as `kubectl apply -f` takes it) into a typed object,
//! or into an error naming the object and the field.
//!
//! Every struct denies unknown fields, so a misspelt field is an error that
//! names it rather than a silently ignored setting. Files written against
//! `v1`, `v1beta1` or `v1alpha3` are all accepted (the schemas are the same).

pub mod authorization_policy;
mod common;
pub mod crd;
pub mod destination_rule;
pub mod document;
mod duration;
pub mod envoy_filter;
pub mod gateway;
pub mod gateway_api;
pub mod mesh;
pub mod peer_authentication;
pub mod request_authentication;
pub mod service_entry;
pub mod sidecar;
pub mod support;
pub mod telemetry;
pub mod validate;
pub mod virtual_service;
pub mod wasm_plugin;
pub mod workload_group;

pub use authorization_policy::{AuthorizationPolicy, AuthorizationPolicySpec};
pub use common::{
    Destination, LabelSelector, MatchLabelSelector, Percent, PortSelector, StringMatch,
};
pub use destination_rule::{DestinationRule, DestinationRuleSpec};
pub use document::{Object, ParseError};
pub use duration::{Duration, DurationError};
pub use envoy_filter::{EnvoyFilter, EnvoyFilterSpec};
pub use gateway::{Gateway, GatewaySpec};
pub use peer_authentication::{PeerAuthentication, PeerAuthenticationSpec};
pub use request_authentication::{RequestAuthentication, RequestAuthenticationSpec};
pub use service_entry::{ServiceEntry, ServiceEntrySpec, WorkloadEntry, WorkloadEntrySpec};
pub use sidecar::{Sidecar, SidecarSpec};
pub use telemetry::{Telemetry, TelemetrySpec};
pub use virtual_service::{VirtualService, VirtualServiceSpec};
pub use wasm_plugin::{WasmPlugin, WasmPluginSpec};
pub use workload_group::{WorkloadGroup, WorkloadGroupSpec};

/// The API group of every kind in this crate.
pub const NETWORKING_GROUP: &str = "networking.istio.io";

/// API versions of `networking.istio.io` that are read (all share one schema).
pub const NETWORKING_VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];

/// The API group of PeerAuthentication, RequestAuthentication and
/// AuthorizationPolicy.
pub const SECURITY_GROUP: &str = "security.istio.io";

/// API versions of `security.istio.io` that are read (one schema).
pub const SECURITY_VERSIONS: [&str; 2] = ["v1", "v1beta1"];

/// The API group of Telemetry.
pub const TELEMETRY_GROUP: &str = "telemetry.istio.io";

/// API versions of `telemetry.istio.io` that are read (one schema).
pub const TELEMETRY_VERSIONS: [&str; 2] = ["v1", "v1alpha1"];

/// Where Istio's own test files are (`ISTIO_TESTDATA`, default
/// `../shared/testdata/istio` beside the workspace). Panics with a loud
/// message when the folder is missing, so a test never passes silently
/// without its input.
#[cfg(any(test, feature = "testing"))]
pub fn istio_testdata() -> std::path::PathBuf {
    let dir = std::env::var_os("ISTIO_TESTDATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/istio")
        });
    assert!(
        dir.join("samples").is_dir(),
        "Istio test data not found at {} (set ISTIO_TESTDATA to the shared testdata/istio folder)",
        dir.display()
    );
    dir
}

/// The error that parsing and validating the first document of `yaml` (in
/// namespace `default`) ends with, as text. Panics when the document is
/// accepted, or when `yaml` holds no document (a test's mistake).
#[cfg(any(test, feature = "testing"))]
pub fn validation_error(yaml: &str) -> String {
    let Some((_, value)) = document::split_documents(yaml).into_iter().next() else {
        panic!("no document in {yaml}")
    };
    let result = value.map_err(|e| e.to_string()).and_then(|v| {
        document::parse_value(v, "default")
            .into_iter()
            .next()
            .ok_or_else(|| "no object".to_owned())?
            .and_then(|o| validate::validate(&o))
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => panic!("accepted: {yaml}"),
        Err(e) => e,
    }
}

/// Every object of the YAML `texts` (multi-document, `List`s unrolled,
/// namespace `default` where none is written), in order: a test's mesh.
/// Panics on a document that does not parse, naming it (a test's mistake).
#[cfg(any(test, feature = "testing"))]
pub fn objects_of<S: AsRef<str>>(texts: &[S]) -> Vec<Object> {
    let mut objects = Vec::new();
    for text in texts {
        for (i, value) in document::split_documents(text.as_ref()) {
            let value = value.unwrap_or_else(|e| panic!("document {i}: {e}"));
            for object in document::parse_value(value, "default") {
                objects.push(object.unwrap_or_else(|e| panic!("document {i}: {e}")));
            }
        }
    }
    objects
}

/// The field and reason that validation refuses the first object of
/// `yaml` with, `None` when it is accepted. Panics when `yaml` does not
/// parse (a test's mistake).
#[cfg(any(test, feature = "testing"))]
pub fn refusal(yaml: &str) -> Option<(String, String)> {
    let object = objects_of(&[yaml])
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no object in {yaml}"));
    match validate::validate(&object) {
        Ok(()) => None,
        Err(ParseError::InvalidField { field, reason, .. }) => Some((field, reason)),
        Err(e) => panic!("{e}"),
    }
}

/// Every `*.yaml` / `*.yml` file below `dir`, sorted (for tests over Istio's
/// files). Panics on an unreadable folder, naming it.
#[cfg(any(test, feature = "testing"))]
pub fn yaml_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for path in entries.flatten().map(|e| e.path()) {
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}
