//! CustomResourceDefinitions (`apiextensions.k8s.io/v1`) generated from this
//! crate's types, shaped like Istio's own (`manifests/charts/base/files/crd-all.gen.yaml`):
//! `networking.istio.io` kinds with versions `v1` (stored), `v1beta1` and
//! `v1alpha3` (served, same schema; EnvoyFilter `v1alpha3` alone), categories `istio-io` and
//! `networking-istio-io`; `security.istio.io` PeerAuthentication, RequestAuthentication and
//! AuthorizationPolicy with `v1` and `v1beta1`, `security-istio-io`;
//! `telemetry.istio.io` Telemetry with `v1` and `v1alpha1`,
//! `telemetry-istio-io`; `extensions.istio.io` WasmPlugin with
//! `v1alpha1`, `extensions-istio-io`; Istio's short names and printer columns, a
//! `status` subresource whose schema preserves unknown fields (the only
//! place Istio's networking CRDs do).
//!
//! The OpenAPI v3 schema is kube's structural rendering of the serde
//! types, with two things Istio does not have taken out: `default: []` /
//! `{}` on lists and maps (the API server would write them into every object) and
//! `nullable` (Istio rejects `null` fields). `istiod crds` prints
//! [`yaml`]; `manifests/crds.yaml` is its output, and a test fails when the
//! two drift apart.

use kube::CustomResourceExt;
use serde_json::{Value, json};

use crate::{
    AuthorizationPolicy, DestinationRule, EnvoyFilter, Gateway, PeerAuthentication,
    RequestAuthentication, ServiceEntry, Sidecar, Telemetry, VirtualService, WasmPlugin,
    WorkloadEntry, WorkloadGroup,
};

/// Category and served versions besides `v1` of the networking kinds.
const NETWORKING: (&str, &[&str]) = ("networking-istio-io", &["v1beta1", "v1alpha3"]);
/// Category and served versions besides `v1` of the security kinds.
const SECURITY: (&str, &[&str]) = ("security-istio-io", &["v1beta1"]);
/// Category and served versions besides `v1` of Telemetry.
const TELEMETRY: (&str, &[&str]) = ("telemetry-istio-io", &["v1alpha1"]);

/// Category of WasmPlugin (served as `v1alpha1` only, as Istio serves it).
const EXTENSIONS: (&str, &[&str]) = ("extensions-istio-io", &[]);

/// One printer column: `(name, JSONPath, type, description)`.
type Column = (&'static str, &'static str, &'static str, &'static str);

const AGE: Column = (
    "Age",
    ".metadata.creationTimestamp",
    "date",
    "Time since the object was created.",
);

/// The CRDs of every Istio kind this crate defines, in a stable order, as
/// JSON values (`apiVersion: apiextensions.k8s.io/v1`, `kind: CustomResourceDefinition`).
pub fn definitions() -> Vec<Value> {
    vec![
        shape(
            VirtualService::crd(),
            NETWORKING,
            &[
                (
                    "Gateways",
                    ".spec.gateways",
                    "string",
                    "The gateways the routes apply to.",
                ),
                (
                    "Hosts",
                    ".spec.hosts",
                    "string",
                    "The destination hosts the routes apply to.",
                ),
                AGE,
            ],
        ),
        shape(
            DestinationRule::crd(),
            NETWORKING,
            &[
                (
                    "Host",
                    ".spec.host",
                    "string",
                    "The service the policies apply to.",
                ),
                AGE,
            ],
        ),
        shape(
            ServiceEntry::crd(),
            NETWORKING,
            &[
                ("Hosts", ".spec.hosts", "string", "The hosts of the entry."),
                (
                    "Location",
                    ".spec.location",
                    "string",
                    "Inside or outside the mesh.",
                ),
                (
                    "Resolution",
                    ".spec.resolution",
                    "string",
                    "How endpoints are found.",
                ),
                AGE,
            ],
        ),
        shape(
            WorkloadEntry::crd(),
            NETWORKING,
            &[
                AGE,
                (
                    "Address",
                    ".spec.address",
                    "string",
                    "Address associated with the network endpoint.",
                ),
            ],
        ),
        shape(WorkloadGroup::crd(), NETWORKING, &[AGE]),
        shape(Gateway::crd(), NETWORKING, &[]),
        shape(Sidecar::crd(), NETWORKING, &[]),
        // Served as `v1alpha3` only, as Istio serves it.
        shape(EnvoyFilter::crd(), (NETWORKING.0, &[]), &[]),
        shape(
            PeerAuthentication::crd(),
            SECURITY,
            &[
                ("Mode", ".spec.mtls.mode", "string", "The mutual TLS mode."),
                AGE,
            ],
        ),
        shape(
            AuthorizationPolicy::crd(),
            SECURITY,
            &[
                ("Action", ".spec.action", "string", "The operation to take."),
                AGE,
            ],
        ),
        shape(RequestAuthentication::crd(), SECURITY, &[]),
        shape(Telemetry::crd(), TELEMETRY, &[AGE]),
        shape(WasmPlugin::crd(), EXTENSIONS, &[AGE]),
    ]
}

/// [`definitions`] as one multi-document YAML, with a header naming the generator.
pub fn yaml() -> String {
    let mut out = String::from(
        "# Istio networking CRDs, generated from the `crds` crate by `istiod crds`.\n\
         # Do not edit: change the types and regenerate.\n",
    );
    for crd in definitions() {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&crd).unwrap_or_else(|e| format!("# {e}\n")));
    }
    out
}

/// The `openAPIV3Schema` of `kind`'s stored version, or `None` for a kind not defined here.
pub fn schema(kind: &str) -> Option<Value> {
    definitions()
        .into_iter()
        .find(|c| c["spec"]["names"]["kind"] == kind)
        .map(|c| c["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone())
}

fn shape(
    crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    (category, older): (&str, &[&str]),
    columns: &[Column],
) -> Value {
    let mut crd = serde_json::to_value(crd).unwrap_or(Value::Null);
    let names = &mut crd["spec"]["names"];
    names["categories"] = json!(["istio-io", category]);
    names["listKind"] = json!(format!("{}List", names["kind"].as_str().unwrap_or("")));
    let Some(v1) = crd["spec"]["versions"]
        .as_array()
        .and_then(|v| v.first())
        .cloned()
    else {
        return crd;
    };
    let mut v1 = v1;
    let schema = &mut v1["schema"]["openAPIV3Schema"];
    // Istio's top level has no description or title, and does not require `spec`.
    if let Some(map) = schema.as_object_mut() {
        for key in ["description", "title", "required"] {
            map.remove(key);
        }
    }
    clean(schema);
    schema["properties"]["status"] = json!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    });
    v1["subresources"] = json!({"status": {}});
    if !columns.is_empty() {
        v1["additionalPrinterColumns"] = columns
            .iter()
            .map(|(name, path, ty, description)| {
                json!({"name": name, "jsonPath": path, "type": ty, "description": description})
            })
            .collect();
    }
    v1["served"] = true.into();
    v1["storage"] = true.into();
    let mut versions = vec![v1.clone()];
    for name in older {
        let mut v = v1.clone();
        v["name"] = (*name).into();
        v["storage"] = false.into();
        versions.push(v);
    }
    crd["spec"]["versions"] = versions.into();
    crd
}

/// Drops `default: []`, `default: {}` and `nullable` everywhere below `schema`.
fn clean(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if matches!(map.get("default"), Some(d) if *d == json!([]) || *d == json!({})) {
                map.remove("default");
            }
            map.remove("nullable");
            for v in map.values_mut() {
                clean(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(clean),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istios_versions_categories_and_one_stored_version() {
        let defs = definitions();
        assert_eq!(defs.len(), 13);
        let mut served = 0;
        for crd in &defs {
            let versions = crd["spec"]["versions"].as_array().unwrap();
            let names: Vec<_> = versions.iter().map(|v| v["name"].clone()).collect();
            let (category, expected) = match crd["spec"]["group"].as_str().unwrap() {
                "networking.istio.io" if crd["spec"]["names"]["kind"] == "EnvoyFilter" => {
                    ("networking-istio-io", vec!["v1alpha3"])
                }
                "networking.istio.io" => ("networking-istio-io", vec!["v1", "v1beta1", "v1alpha3"]),
                "telemetry.istio.io" => ("telemetry-istio-io", vec!["v1", "v1alpha1"]),
                "extensions.istio.io" => ("extensions-istio-io", vec!["v1alpha1"]),
                _ => ("security-istio-io", vec!["v1", "v1beta1"]),
            };
            assert_eq!(names, expected);
            served += versions.len();
            let stored = versions.iter().filter(|v| v["storage"] == true).count();
            assert_eq!(stored, 1);
            assert_eq!(
                crd["spec"]["names"]["categories"],
                json!(["istio-io", category])
            );
        }
        let text = yaml();
        assert!(
            !text.contains("nullable"),
            "Istio's schemas have no nullable"
        );
        // What a structural schema may not have (the API server refuses it).
        assert!(!text.contains("patternProperties:"), "not structural");
        assert!(
            !text.contains("additionalProperties: false"),
            "not structural"
        );
        // Unknown fields are preserved only under `status` and in an
        // EnvoyFilter patch's `value` and a WasmPlugin's `pluginConfig`
        // (each a `Struct`), as in Istio's CRDs.
        assert_eq!(
            text.matches("x-kubernetes-preserve-unknown-fields").count(),
            served + 2
        );
    }
}
