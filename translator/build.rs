//! Compiles every Envoy `v3` `.proto` file that envoy-types ships into one
//! descriptor set: EnvoyFilter patch values (Envoy's JSON, with `@type`
//! naming any typed config) are read against it, and the daemon's
//! `/debug/config_dump` renders resources as Envoy's own JSON with it.
//! Without the files (an unusual cargo layout) the build still succeeds:
//! EnvoyFilter patches are then reported and left out, and config_dump
//! lists names and sizes only.

use std::path::{Path, PathBuf};

fn envoy_protos() -> Option<PathBuf> {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let lock = std::fs::read_to_string(manifest.join("../Cargo.lock")).ok()?;
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"envoy-types\""))?
        .lines()
        .find_map(|l| l.strip_prefix("version = "))?
        .trim_matches('"')
        .to_owned();
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))?;
    std::fs::read_dir(home.join("registry/src"))
        .ok()?
        .flatten()
        .map(|d| d.path().join(format!("envoy-types-{version}/proto")))
        .find(|p| p.is_dir())
}

/// The `.proto` files below `dir` in a `v3` folder, relative to `root`.
fn collect_v3(dir: &Path, root: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_v3(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "proto")
            && path.parent().is_some_and(|p| p.ends_with("v3"))
            && let Ok(relative) = path.strip_prefix(root)
        {
            out.push(relative.to_string_lossy().into_owned());
        }
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../Cargo.lock");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default())
        .join("envoy_descriptors.bin");
    let bytes = envoy_protos()
        .and_then(|proto| {
            let includes: Vec<PathBuf> = ["data-plane-api", "xds", "googleapis", "protoc-gen-validate", "cel-spec/proto", "opentelemetry-proto", "client_model", "ratelimit"]
                .iter()
                .map(|d| proto.join(d))
                .collect();
            let root = proto.join("data-plane-api");
            let mut files = Vec::new();
            collect_v3(&root.join("envoy"), &root, &mut files);
            files.sort();
            // Together, as one set; a file whose relative names resolve
            // into a package another file of the set brought in (protox
            // resolves against everything opened, protoc per file and its
            // imports) is compiled on its own, with only its imports.
            let mut compiler = protox::Compiler::new(includes.clone()).ok()?;
            compiler.include_imports(true);
            let alone: Vec<&String> = files
                .iter()
                .filter(|f| compiler.open_file(f).is_err())
                .collect();
            let mut set = compiler.file_descriptor_set();
            let mut names: std::collections::HashSet<String> =
                set.file.iter().filter_map(|f| f.name.clone()).collect();
            let mut failed = 0;
            for f in alone {
                let mut own = protox::Compiler::new(includes.clone()).ok()?;
                own.include_imports(true);
                // One such file (the dynamic forward proxy cluster's) does
                // not resolve even alone: left out.
                if own.open_file(f).is_err() {
                    failed += 1;
                    continue;
                }
                for file in own.file_descriptor_set().file {
                    if file.name.as_ref().is_some_and(|n| names.insert(n.clone())) {
                        set.file.push(file);
                    }
                }
            }
            if failed * 10 > files.len() {
                return None;
            }
            Some(prost::Message::encode_to_vec(&set))
        })
        .unwrap_or_else(|| {
            println!("cargo:warning=Envoy protos not found: EnvoyFilter patches are left out, /debug/config_dump lists names and sizes only");
            Vec::new()
        });
    if let Err(e) = std::fs::write(&out, bytes) {
        println!("cargo:warning=cannot write {}: {e}", out.display());
    }
}
