//! Every Istio sample in the shared corpus parses into typed objects.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use crds::document::{parse_value, split_documents};

#[test]
fn every_istio_sample_parses() {
    let root = crds::istio_testdata().join("samples");
    let files = crds::yaml_files(&root);
    assert!(
        files.len() >= 25,
        "expected Istio's samples, found {}",
        files.len()
    );
    let mut networking = 0;
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (index, value) in split_documents(&text) {
            let value = match value {
                Ok(v) => v,
                Err(e) => {
                    failures.push(format!("{}[{index}]: {e}", file.display()));
                    continue;
                }
            };
            for object in parse_value(value, "default") {
                match object {
                    Ok(o) => {
                        if matches!(
                            o.kind(),
                            "VirtualService" | "DestinationRule" | "ServiceEntry" | "Gateway"
                        ) {
                            networking += 1;
                        }
                    }
                    // Deployments, ServiceAccounts ... are not read by the control plane.
                    Err(e) if e.is_unsupported_kind() => {}
                    Err(e) => failures.push(format!("{}[{index}]: {e}", file.display())),
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "samples that failed to parse:\n{}",
        failures.join("\n")
    );
    assert!(
        networking >= 40,
        "only {networking} Istio networking objects found"
    );
    println!(
        "{} files, {networking} Istio networking objects parsed",
        files.len()
    );
}
