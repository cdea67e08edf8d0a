//! `manifests/` is what `kubectl apply -f manifests/` installs. These tests
//! read it as the API server would: every object must be well-formed for
//! its kind (no misspelt field silently dropped), the RBAC must grant
//! exactly what the Kubernetes source watches (plus the leader Lease), and the Deployment must run
//! the daemon as the docs say.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// Every document of every `*.yaml` in `manifests/`, as kubectl reads the folder.
fn objects() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifests())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        })
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        for (i, doc) in crds::document::split_documents(&text) {
            let doc = doc.unwrap_or_else(|e| panic!("{name} document {i}: {e}"));
            out.push((format!("{name} document {i}"), doc));
        }
    }
    out
}

/// Reads `value` as `T` and back: a field `T` does not have (a typo) is lost
/// on the way and shows up as a difference.
fn round_trip<T: DeserializeOwned + Serialize>(origin: &str, value: &Value) {
    let typed: T =
        serde_path_to_error::deserialize(value.clone()).unwrap_or_else(|e| panic!("{origin}: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        &back, value,
        "{origin}: fields lost or changed when read as its kind"
    );
}

#[test]
fn every_manifest_is_a_well_formed_object_of_its_kind() {
    let mut kinds = BTreeMap::<String, usize>::new();
    for (origin, doc) in objects() {
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            "Namespace" => round_trip::<Namespace>(&origin, &doc),
            "ServiceAccount" => round_trip::<ServiceAccount>(&origin, &doc),
            "ClusterRole" => round_trip::<ClusterRole>(&origin, &doc),
            "ClusterRoleBinding" => round_trip::<ClusterRoleBinding>(&origin, &doc),
            "Role" => round_trip::<Role>(&origin, &doc),
            "RoleBinding" => round_trip::<RoleBinding>(&origin, &doc),
            "ConfigMap" => round_trip::<ConfigMap>(&origin, &doc),
            "Deployment" => round_trip::<Deployment>(&origin, &doc),
            "Service" => round_trip::<Service>(&origin, &doc),
            "CustomResourceDefinition" => round_trip::<CustomResourceDefinition>(&origin, &doc),
            "MutatingWebhookConfiguration" => {
                round_trip::<MutatingWebhookConfiguration>(&origin, &doc)
            }
            "ValidatingWebhookConfiguration" => {
                round_trip::<ValidatingWebhookConfiguration>(&origin, &doc)
            }
            other => panic!("{origin}: unexpected kind {other:?}"),
        }
        *kinds.entry(kind).or_default() += 1;
    }
    assert_eq!(kinds["CustomResourceDefinition"], 13);
    assert_eq!(kinds["Deployment"], 1);
}

#[test]
fn rbac_grants_exactly_what_the_daemon_reads_and_writes() {
    // (namespace or "" for cluster-wide, group, resource, verb)
    let mut granted = BTreeSet::new();
    let mut bound = BTreeSet::new();
    for (origin, doc) in objects() {
        let kind = doc["kind"].as_str().unwrap_or_default();
        let ns = match kind {
            "ClusterRole" => "",
            "Role" => doc["metadata"]["namespace"].as_str().unwrap(),
            "ClusterRoleBinding" | "RoleBinding" => {
                let subject = &doc["subjects"][0];
                assert_eq!(subject["name"], "istiod", "{origin}");
                assert_eq!(subject["namespace"], "istio-system", "{origin}");
                bound.insert(doc["roleRef"]["name"].as_str().unwrap().to_owned());
                continue;
            }
            _ => continue,
        };
        for rule in doc["rules"].as_array().unwrap() {
            for group in rule["apiGroups"].as_array().unwrap() {
                for resource in rule["resources"].as_array().unwrap() {
                    for verb in rule["verbs"].as_array().unwrap() {
                        granted.insert((
                            ns.to_owned(),
                            group.as_str().unwrap().to_owned(),
                            resource.as_str().unwrap().to_owned(),
                            verb.as_str().unwrap().to_owned(),
                        ));
                    }
                }
            }
        }
    }
    assert!(bound.contains("istiod") && bound.contains("istiod-istio-system"));
    let mut needed = BTreeSet::new();
    for w in istiod::sources::kube::watched() {
        for verb in ["list", "watch"] {
            needed.insert((
                w.namespace.clone().unwrap_or_default(),
                w.resource.group.clone(),
                w.resource.plural.clone(),
                verb.to_owned(),
            ));
        }
    }
    // Leader election (`istiod::leader`): the Lease, in the daemon's namespace.
    for verb in ["get", "create", "patch"] {
        needed.insert((
            "istio-system".into(),
            "coordination.k8s.io".into(),
            "leases".into(),
            verb.into(),
        ));
    }
    // The CA: its root Secret, TokenReview, the root ConfigMap in every namespace.
    for verb in ["get", "create"] {
        needed.insert((
            "istio-system".into(),
            String::new(),
            "secrets".into(),
            verb.into(),
        ));
    }
    needed.insert((
        String::new(),
        "authentication.k8s.io".into(),
        "tokenreviews".into(),
        "create".into(),
    ));
    // The webhooks' caBundle (`kube_ca::keep_webhook_ca_bundles`).
    for (_, plural, _) in istiod::kube_ca::WEBHOOK_CONFIGURATIONS {
        for verb in ["get", "patch"] {
            needed.insert((
                String::new(),
                "admissionregistration.k8s.io".into(),
                plural.into(),
                verb.into(),
            ));
        }
    }
    for verb in ["create", "patch"] {
        needed.insert((
            String::new(),
            String::new(),
            "configmaps".into(),
            verb.into(),
        ));
    }
    // Auto-registration (`istiod::autoregister`): the WorkloadEntries of
    // proxies that register themselves, in their namespaces.
    for verb in ["get", "create", "patch", "delete"] {
        needed.insert((
            String::new(),
            "networking.istio.io".into(),
            "workloadentries".into(),
            verb.into(),
        ));
    }
    // Managed Gateways' deployments (`istiod::gateway_controller`).
    for (group, plural) in [
        ("", "services"),
        ("", "serviceaccounts"),
        ("apps", "deployments"),
        ("autoscaling", "horizontalpodautoscalers"),
        ("policy", "poddisruptionbudgets"),
    ] {
        for verb in ["create", "patch"] {
            needed.insert((String::new(), group.into(), plural.into(), verb.into()));
        }
    }
    // The Gateway API's status (`istiod::gateway_controller`).
    const GATEWAY_API: &str = "gateway.networking.k8s.io";
    for (group, plural) in [
        (GATEWAY_API, "gatewayclasses"),
        (GATEWAY_API, "gateways"),
        (GATEWAY_API, "httproutes"),
        (GATEWAY_API, "grpcroutes"),
        (GATEWAY_API, "tcproutes"),
        (GATEWAY_API, "tlsroutes"),
        (GATEWAY_API, "backendtlspolicies"),
        (GATEWAY_API, "listenersets"),
        ("gateway.networking.x-k8s.io", "xbackendtrafficpolicies"),
        ("gateway.networking.x-k8s.io", "xlistenersets"),
        // And the Kubernetes Ingresses it serves (their addresses).
        ("networking.k8s.io", "ingresses"),
    ] {
        needed.insert((
            String::new(),
            group.into(),
            format!("{plural}/status"),
            "patch".into(),
        ));
    }
    // Analysis results in the Istio objects' status (`--enable-analysis`,
    // `istiod::analysis_status`): every Istio kind watched.
    for w in istiod::sources::kube::watched() {
        if w.resource.group.ends_with(".istio.io") {
            needed.insert((
                String::new(),
                w.resource.group.clone(),
                format!("{}/status", w.resource.plural),
                "patch".into(),
            ));
        }
    }
    assert_eq!(
        granted, needed,
        "RBAC and what the daemon reads and writes differ"
    );
}

#[test]
fn the_deployment_runs_the_daemon_as_documented() {
    let all = objects();
    let (_, doc) = all.iter().find(|(_, d)| d["kind"] == "Deployment").unwrap();
    let pod = &doc["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "istiod");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], 15014);
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--kubernetes"), "{args:?}");
    assert!(c["resources"]["requests"]["memory"].is_string());

    let (_, svc) = all.iter().find(|(_, d)| d["kind"] == "Service").unwrap();
    let ports: BTreeSet<(i64, i64)> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let port = p["port"].as_i64().unwrap();
            (port, p["targetPort"].as_i64().unwrap_or(port))
        })
        .collect();
    assert_eq!(
        ports,
        BTreeSet::from([(15010, 15010), (15012, 15012), (15014, 15014), (443, 15017)]),
        "Istio's ports"
    );

    assert!(args.contains(&"--webhook-addr=0.0.0.0:15017"), "{args:?}");
    let (_, mesh) = all
        .iter()
        .find(|(_, d)| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "istio")
        .unwrap();
    let cm: ConfigMap = serde_json::from_value(mesh.clone()).unwrap();
    assert!(crds::mesh::is_mesh_configmap(&cm));
    let parsed = crds::mesh::parse(&cm).unwrap();
    assert!(parsed.unsupported.is_empty(), "{:?}", parsed.unsupported);
}

#[test]
fn the_injector_configmap_carries_the_shipped_values_and_the_webhooks_istios_names() {
    let all = objects();
    let (_, cm) = all
        .iter()
        .find(|(_, d)| {
            d["kind"] == "ConfigMap" && d["metadata"]["name"] == "istio-sidecar-injector"
        })
        .unwrap();
    assert_eq!(
        cm["data"]["values"].as_str().unwrap(),
        webhook::inject::DEFAULT_VALUES
    );
    for (kind, _, name) in istiod::kube_ca::WEBHOOK_CONFIGURATIONS {
        let (_, hooks) = all
            .iter()
            .find(|(_, d)| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name} in manifests/webhooks.yaml"));
        for hook in hooks["webhooks"].as_array().unwrap() {
            let service = &hook["clientConfig"]["service"];
            assert_eq!(service["name"], "istiod");
            assert_eq!(service["port"], 443);
        }
    }
}

#[test]
fn the_kustomization_lists_every_manifest() {
    let text = std::fs::read_to_string(manifests().join("Kustomization")).unwrap();
    let k: Value = serde_yaml_ng::from_str(&text).unwrap();
    let listed: BTreeSet<&str> = k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let files: BTreeSet<String> = std::fs::read_dir(manifests())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    assert_eq!(
        listed,
        files.iter().map(String::as_str).collect::<BTreeSet<_>>()
    );
}
