//! Every Istio sample in the shared corpus parses into typed objects.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::path::Path;

use crds::document::{parse_value, split_documents};

fn yaml_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

#[test]
fn every_istio_sample_parses() {
    let root = crds::istio_testdata().join("samples");
    let mut files = Vec::new();
    yaml_files(&root, &mut files);
    files.sort();
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
