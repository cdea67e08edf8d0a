//! Istio's analyzer test grid (`validation/analyzers/expected.yaml`, from
//! `pkg/config/analysis/analyzers/analyzers_test.go`): each case runs one
//! analyzer over Istio's input files, with istioctl's default ingress
//! gateway added as Istio's harness adds it, and must give exactly the
//! expected messages (name, code, level, object; duplicates count).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::collections::BTreeMap;

use analysis::{Input, Message, analyze, analyzer};

/// Our name for an analyzer that `expected.yaml` names by Istio's Go type.
fn our_name(istio: &str) -> &str {
    match istio {
        "serviceentry.ProtocolAddressesAnalyzer" => "serviceentry.Analyzer",
        "destinationrule.PodNotSelectedAnalyzer" => "destinationrule.SubsetSelectPodAnalyzer",
        s if s.starts_with("schemaValidation.") => "schema.ValidationAnalyzer",
        s => s,
    }
}

/// `(message name, code, level, object)`, as `expected.yaml` writes them:
/// the object as `Kind namespace/name`, or `Kind name` where the document
/// has no namespace (it is read into `default`).
type Finding = (String, String, String, String);

fn finding(m: &Message, unnamespaced: &[String]) -> Finding {
    let r = m
        .resource
        .as_ref()
        .expect("every fixture message names an object");
    let mut origin = r.friendly_name();
    let short = format!("{} {}", r.kind, r.name);
    if r.namespace.as_deref() == Some("default") && unnamespaced.contains(&short) {
        origin = short;
    }
    (
        m.kind.name.to_owned(),
        m.kind.code.to_owned(),
        m.kind.level.as_str().to_owned(),
        origin,
    )
}

#[test]
fn istio_analyzer_grid() {
    let dir = crds::istio_testdata().join("validation/analyzers");
    let expected: serde_json::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(dir.join("expected.yaml")).expect("expected.yaml"),
    )
    .expect("expected.yaml parses");
    let cases = expected["cases"].as_array().expect("cases");
    assert!(cases.len() >= 15, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let istio_analyzer = case["analyzer"].as_str().expect("analyzer");
        let Some(a) = analyzer(our_name(istio_analyzer)) else {
            failures.push(format!("{name}: no analyzer {istio_analyzer}"));
            continue;
        };
        let mut input = Input::new("default");
        let mut unnamespaced = Vec::new();
        for file in case["inputs"].as_array().expect("inputs") {
            let file = file.as_str().expect("file name");
            let text = std::fs::read_to_string(dir.join(file)).expect("input file");
            let before = input.entries.len();
            input.add_text(file, &text);
            for (_, doc) in crds::document::split_documents(&text) {
                let doc = doc.expect("fixture is YAML");
                if doc["metadata"]["namespace"].is_null() {
                    unnamespaced.push(format!(
                        "{} {}",
                        doc["kind"].as_str().unwrap_or_default(),
                        doc["metadata"]["name"].as_str().unwrap_or_default()
                    ));
                }
            }
            assert!(input.entries.len() > before, "{file}: nothing read");
        }
        if let Some(mesh) = case["meshConfig"].as_str() {
            let text = std::fs::read_to_string(dir.join(mesh)).expect("mesh config");
            input.set_mesh_config(&text).expect("mesh config parses");
        }
        input.add_default_ingress();
        // A document that does not fit its kind's schema at all is not
        // analysed here (it is the schema analyzer's IST0106); Istio reads
        // the rest of such a document. Its expected messages are left out,
        // and it must have been refused.
        let refused: Vec<String> = input
            .unreadable
            .iter()
            .filter_map(|m| m.resource.as_ref())
            .map(|r| r.friendly_name())
            .collect();
        let mut want: BTreeMap<Finding, usize> = BTreeMap::new();
        for e in case["expected"].as_array().expect("expected") {
            let field = |k: &str| e[k].as_str().expect(k).to_owned();
            let resource = field("resource");
            if refused.contains(&resource) {
                continue;
            }
            *want
                .entry((field("message"), field("code"), field("level"), resource))
                .or_default() += 1;
        }
        let messages = analyze(&input, &[a]);
        let mut got: BTreeMap<Finding, usize> = BTreeMap::new();
        for m in &messages {
            *got.entry(finding(m, &unnamespaced)).or_default() += 1;
        }
        if got != want {
            let texts: Vec<String> = messages.iter().map(|m| format!("  {m}")).collect();
            failures.push(format!(
                "{name} ({istio_analyzer}):\n want {want:?}\n got  {got:?}\n{}",
                texts.join("\n")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Every message type reported here is Istio's: the same name, code,
/// level and text as Istio's message catalogue
/// (`reference/analysis-messages.yaml`).
#[test]
fn message_types_are_istios() {
    let path = crds::istio_testdata().join("reference/analysis-messages.yaml");
    let catalogue: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(path).expect("catalogue")).expect("YAML");
    let by_code: BTreeMap<&str, &serde_json::Value> = catalogue["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| (m["code"].as_str().expect("code"), m))
        .collect();
    for t in analysis::message::ALL_TYPES {
        let istio = by_code
            .get(t.code)
            .unwrap_or_else(|| panic!("{} is not in Istio's catalogue", t.code));
        assert_eq!(istio["name"], t.name, "{}", t.code);
        assert_eq!(istio["level"], t.level.as_str(), "{}", t.code);
        assert_eq!(istio["template"], t.template, "{}", t.code);
    }
}

/// The texts of a case, as istioctl prints them (parameters as Istio's
/// analyzers pass them), over Istio's fixtures: each message points at the
/// field it is about (the destination's `host`, as Istio's `DestinationHost`
/// path, for its port and subset too), as istioctl's do.
#[test]
fn texts_as_istioctl_prints_them() {
    let dir = crds::istio_testdata().join("validation/analyzers");
    let mut input = Input::new("default");
    for file in [
        "virtualservice_destinationhosts.yaml",
        "virtualservice_destinationrules.yaml",
    ] {
        input.add_text(file, &std::fs::read_to_string(dir.join(file)).unwrap());
    }
    let names = [
        "virtualservice.DestinationHostAnalyzer",
        "virtualservice.DestinationRuleAnalyzer",
    ];
    let analyzers: Vec<_> = names.iter().map(|n| analyzer(n).unwrap()).collect();
    let lines: Vec<String> = analyze(&input, &analyzers)
        .iter()
        .map(|m| m.to_string())
        .collect();
    for want in [
        r#"Error [IST0112] (VirtualService default/reviews-2port-missing virtualservice_destinationhosts.yaml:212) This VirtualService routes to a service "reviews-2port" that exposes multiple ports [80 443]. Specifying a port in the destination is required to disambiguate."#,
        r#"Error [IST0101] (VirtualService default/reviews-bogusport virtualservice_destinationhosts.yaml:198) Referenced host:port not found: "reviews:999""#,
        r#"Error [IST0101] (VirtualService default/reviews-mirror-bogushost virtualservice_destinationhosts.yaml:186) Referenced mirror host not found: "reviews-bogus""#,
        r#"Error [IST0101] (VirtualService istio-system/cross-namespace-details virtualservice_destinationhosts.yaml:272) Referenced host not found: "details.default.svc.cluster.local""#,
        r#"Error [IST0101] (VirtualService default/reviews-mirror-bogussubset virtualservice_destinationrules.yaml:76) Referenced mirror+subset in destinationrule not found: "reviews+bogus""#,
    ] {
        assert!(
            lines.iter().any(|l| l == want),
            "{want}\nnot in\n{}",
            lines.join("\n")
        );
    }
}

/// The annotations the annotation analyzer knows are Istio's
/// (`reference/annotations.yaml`): the same names, kinds and deprecations.
#[test]
fn annotations_are_istios() {
    let path = crds::istio_testdata().join("reference/annotations.yaml");
    let reference: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(path).expect("annotations"))
            .expect("YAML");
    let theirs: Vec<(String, Vec<String>, bool)> = reference["annotations"]
        .as_array()
        .expect("annotations")
        .iter()
        .map(|a| {
            let kinds = a["resources"].as_array().map_or(Vec::new(), |r| {
                r.iter().map(|k| k.as_str().unwrap().to_owned()).collect()
            });
            (
                a["name"].as_str().unwrap().to_owned(),
                kinds,
                a["deprecated"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    let ours: Vec<(String, Vec<String>, bool)> = analysis::ANNOTATIONS
        .iter()
        .map(|(n, k, d)| {
            (
                (*n).to_owned(),
                k.iter().map(|s| (*s).to_owned()).collect(),
                *d,
            )
        })
        .collect();
    assert_eq!(ours, theirs);
}

/// Bad input never stops analysis: every Istio fixture and sample cut
/// short at many points (broken YAML, documents missing fields) is read
/// and analysed without a panic, what cannot be read reported as IST0106.
#[test]
fn truncated_files_are_reported_not_fatal() {
    let root = crds::istio_testdata();
    let mut files = crds::yaml_files(&root.join("validation/analyzers"));
    files.extend(crds::yaml_files(&root.join("samples/bookinfo/networking")));
    let mut cuts = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for end in (0..text.len())
            .step_by(53)
            .filter(|i| text.is_char_boundary(*i))
        {
            let mut input = Input::new("default");
            input.add_text("cut.yaml", &text[..end]);
            input.add_default_ingress();
            let messages = analyze(&input, analysis::ALL);
            for m in &messages {
                assert!(!m.text().contains("MISSING"), "{m}");
            }
            cuts += 1;
        }
    }
    assert!(cuts > 500, "only {cuts} cuts");
}
