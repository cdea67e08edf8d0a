//! Istio's sidecar-injection goldens (`injection/inject/` of the shared
//! corpus, settings per case in `injection/cases.yaml`), through
//! `kube-inject`: every input document injected and compared with its
//! golden as parsed YAML. Go's typed serialisation adds empty objects
//! (`strategy: {}`, `resources: {}`), nulls (`creationTimestamp: null`),
//! a zero `status`, writes DeploymentConfig's `test: false`, drops zero
//! `minReadySeconds` / false `paused`; those are normalised on
//! both sides before comparing (see `normalise`), nothing else is.
//!
//! The test reports how many goldens match and lists the others; it fails
//! when fewer than `MIN_PASSING` match, or when a case that must be
//! rejected is not.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::path::PathBuf;

use serde_json::Value;
use webhook::inject::{InjectionConfig, kube_inject, set_path};

/// Goldens that match today; raise it as more do (never lower it).
const MIN_PASSING: usize = 55;

fn corpus() -> PathBuf {
    crds::istio_testdata().join("injection")
}

/// The injector config a case asks for: the chart defaults, its `iop`
/// overlay, its `set` flags, `mesh` fields and `env` switches.
fn config_for(case: &Value) -> InjectionConfig {
    let values = std::fs::read_to_string(corpus().join("chart/values.yaml")).unwrap();
    let mut cfg = InjectionConfig::from_chart_values(&values).unwrap();
    if let Some(iop) = case.get("iop").and_then(Value::as_str) {
        let text = std::fs::read_to_string(corpus().join("inject").join(iop)).unwrap();
        let iop: Value = serde_yaml_ng::from_str(&text).unwrap();
        if let Some(v) = iop.pointer("/spec/values") {
            merge(&mut cfg.values, v);
        }
        if let Some(m) = iop.pointer("/spec/meshConfig") {
            merge(&mut cfg.mesh, m);
        }
    }
    for flag in case
        .get("set")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let flag = flag.as_str().unwrap();
        let (path, value) = flag.split_once('=').unwrap();
        let value: Value = serde_yaml_ng::from_str(value).unwrap_or(Value::String(value.into()));
        let path = match path {
            "components.cni.enabled" => "pilot.cni.enabled".to_owned(),
            p if p.starts_with("values.cni.") => p.replacen("values.cni.", "pilot.cni.", 1),
            p if p.starts_with("values.") => p.trim_start_matches("values.").to_owned(),
            p if p.starts_with("meshConfig.") => {
                set_path(&mut cfg.mesh, p.trim_start_matches("meshConfig."), value);
                continue;
            }
            p => p.to_owned(),
        };
        set_path(&mut cfg.values, &path, value);
    }
    if let Some(m) = case.get("mesh") {
        merge(&mut cfg.mesh, m);
    }
    if case
        .pointer("/env/ENABLE_NATIVE_SIDECARS")
        .and_then(Value::as_str)
        == Some("false")
    {
        cfg.native_sidecars = false;
    }
    cfg
}

fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(e) if e.is_object() && v.is_object() => merge(e, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

fn documents(text: &str) -> Vec<Value> {
    // The iterator does not end after an error: stop at the first.
    serde_yaml_ng::Deserializer::from_str(text)
        .map_while(|d| serde::Deserialize::deserialize(d).ok())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// Drops what Go's typed serialisation adds or removes: the object's
/// `status`, nulls, empty objects, `minReadySeconds: 0`, and `paused` /
/// `test` when false (OpenShift's DeploymentConfig type omits the one and
/// always writes the other).
fn normalise(v: &mut Value) {
    if let Value::Object(m) = v {
        m.remove("status");
    }
    normalise_inner(v);
}

fn normalise_inner(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for v in m.values_mut() {
                normalise_inner(v);
            }
            m.retain(|k, v| {
                !(v.is_null()
                    || v.as_object().is_some_and(|o| o.is_empty())
                    || (k == "minReadySeconds" && v.as_i64() == Some(0))
                    || (matches!(k.as_str(), "paused" | "test") && v.as_bool() == Some(false)))
            });
        }
        Value::Array(a) => a.iter_mut().for_each(normalise_inner),
        _ => {}
    }
}

/// The first difference between two JSON trees, as a path.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys()) {
                let p = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => {
                        if let Some(d) = first_difference(u, v, &p) {
                            return Some(d);
                        }
                    }
                    (u, v) => return Some(format!("{p}: got {u:?}, want {v:?}")),
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                let names = |l: &Vec<Value>| {
                    l.iter()
                        .map(|i| {
                            i.get("name")
                                .map(|n| n.to_string())
                                .unwrap_or_else(|| i.to_string())
                        })
                        .collect::<Vec<_>>()
                };
                return Some(format!("{path}: got {:?}, want {:?}", names(x), names(y)));
            }
            x.iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (u, v))| first_difference(u, v, &format!("{path}[{i}]")))
        }
        _ if a == b => None,
        _ => Some(format!("{path}: got {a}, want {b}")),
    }
}

#[test]
fn injection_goldens() {
    let cases: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(corpus().join("cases.yaml")).unwrap())
            .unwrap();
    let cases = cases.get("cases").and_then(Value::as_array).unwrap();
    let (mut passed, mut failed, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    for case in cases {
        let input = case.get("input").and_then(Value::as_str).unwrap();
        if case.get("mode").and_then(Value::as_str) == Some("webhook-only") {
            continue;
        }
        let cfg = config_for(case);
        let text = std::fs::read_to_string(corpus().join("inject").join(input)).unwrap();
        let results: Vec<Result<Value, _>> = documents(&text)
            .iter()
            .map(|d| kube_inject(d, &cfg))
            .collect();
        if let Some(want) = case.get("expect_error").and_then(Value::as_str) {
            let got = results
                .iter()
                .find_map(|r| r.as_ref().err().map(|e| e.to_string()));
            match got {
                Some(e) if e.to_lowercase().contains(want) => {}
                other => errors.push(format!(
                    "{input}: expected an error with {want:?}, got {other:?}"
                )),
            }
            continue;
        }
        let Some(golden) = case.get("golden").and_then(Value::as_str) else {
            continue;
        };
        let want_text = std::fs::read_to_string(corpus().join("inject").join(golden)).unwrap();
        let mut want = documents(&want_text);
        let mut got: Vec<Value> = match results.into_iter().collect::<Result<_, _>>() {
            Ok(g) => g,
            Err(e) => {
                failed.push(format!("{golden}: injection failed: {e}"));
                continue;
            }
        };
        want.iter_mut().for_each(normalise);
        got.iter_mut().for_each(normalise);
        if got == want {
            passed.push(golden.to_owned());
        } else {
            let diff = got
                .iter()
                .zip(&want)
                .find_map(|(g, w)| first_difference(g, w, ""))
                .unwrap_or_else(|| format!("{} documents, want {}", got.len(), want.len()));
            failed.push(format!("{golden}: {diff}"));
        }
    }
    println!(
        "injection goldens: {} of {} match",
        passed.len(),
        passed.len() + failed.len()
    );
    for f in &failed {
        println!("  differs: {f}");
    }
    assert!(
        errors.is_empty(),
        "inputs that must be rejected: {errors:#?}"
    );
    assert!(
        passed.len() >= MIN_PASSING,
        "only {} goldens match (at least {MIN_PASSING} did before)",
        passed.len()
    );
}
