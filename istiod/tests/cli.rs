//! The `istiod` binary: what an operator sees on its command line and stderr.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ISTIOD: &str = env!("CARGO_BIN_EXE_istiod");

#[test]
fn bad_documents_are_logged_with_file_object_and_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("reviews.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n      weight: eighty\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("ok.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: ok\nspec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      zoneAwareLbSetting: {enabled: true}\n",
    )
    .unwrap();
    let mut child = Command::new(ISTIOD)
        .args(["--xds-addr", "127.0.0.1:0", "--config-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut error_line = None;
    let mut unsupported_line = None;
    let mut serving = false;
    while start.elapsed() < Duration::from_secs(10) && !(error_line.is_some() && serving) {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            if line.contains("invalid config skipped") {
                error_line = Some(line.clone());
            }
            if line.contains("config field not acted on") {
                unsupported_line = Some(line.clone());
            }
            serving |= line.contains("serving ADS");
            seen.push(line);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let line =
        error_line.unwrap_or_else(|| panic!("no error logged; stderr was:\n{}", seen.join("\n")));
    for part in [
        "ERROR",
        "reviews.yaml",
        "document=0",
        "VirtualService",
        "default/reviews",
        "spec.http[0].route[0].weight",
    ] {
        assert!(line.contains(part), "{part:?} missing from: {line}");
    }
    assert!(
        serving,
        "the daemon must keep serving the valid rest:\n{}",
        seen.join("\n")
    );
    // A field read but not acted on is named, never dropped silently.
    let line = unsupported_line
        .unwrap_or_else(|| panic!("no unsupported-field warning:\n{}", seen.join("\n")));
    for part in [
        "WARN",
        "ok.yaml",
        "DestinationRule",
        "spec.trafficPolicy.loadBalancer.zoneAwareLbSetting",
    ] {
        assert!(line.contains(part), "{part:?} missing from: {line}");
    }
}

#[test]
fn bad_flags_exit_with_ex_usage() {
    let out = Command::new(ISTIOD).arg("--no-such-flag").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = Command::new(ISTIOD)
        .args(["bootstrap", "--node-id", "not-an-istio-node-id"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid node id"));
    let out = Command::new(ISTIOD)
        .args([
            "--xds-addr",
            "127.0.0.1:0",
            "--config-dir",
            "/nonexistent/istiod-config",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/istiod-config"));
    // Keepalive times a deadline could overflow on, or a zero timeout.
    for (flag, value) in [
        ("--keepalive-interval-secs", "99999999999"),
        ("--keepalive-timeout-secs", "0"),
        (
            "--keepalive-max-server-connection-age-secs",
            "18446744073709551615",
        ),
    ] {
        let out = Command::new(ISTIOD).args([flag, value]).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{flag} {value}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(flag),
            "{flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn bootstrap_prints_json_envoy_reads() {
    let out = Command::new(ISTIOD)
        .args([
            "bootstrap",
            "--node-id",
            "sidecar~10.1.2.3~reviews-v1.default~default.svc.cluster.local",
            "--xds-addr",
            "istiod.istio-system.svc:15010",
            "--label",
            "app=reviews",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["node"]["id"],
        "sidecar~10.1.2.3~reviews-v1.default~default.svc.cluster.local"
    );
    assert_eq!(json["node"]["metadata"]["LABELS"]["app"], "reviews");
    assert_eq!(
        json["static_resources"]["clusters"][0]["type"],
        "STRICT_DNS"
    );
}

/// `istiod analyze` over Istio's Bookinfo samples: what `istioctl analyze`
/// tells a user who applies routes before their DestinationRules, and
/// that a consistent set passes.
#[test]
fn analyze_bookinfo_samples() {
    let bookinfo = crds::istio_testdata().join("samples/bookinfo");
    let run = |args: &[&str], files: &[&str]| {
        let out = Command::new(ISTIOD)
            .arg("analyze")
            .args(args)
            .args(files)
            .current_dir(&bookinfo)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let kube = "platform/kube/bookinfo.yaml";

    // Routes to subsets no DestinationRule defines: errors, exit 79.
    let (code, stdout, stderr) = run(
        &[],
        &[
            kube,
            "networking/bookinfo-gateway.yaml",
            "networking/virtual-service-all-v1.yaml",
        ],
    );
    assert_eq!(code, Some(79), "{stdout}{stderr}");
    for service in ["details", "productpage", "ratings", "reviews"] {
        let line = format!(
            "Error [IST0101] (VirtualService default/{service} networking/virtual-service-all-v1.yaml:"
        );
        let want = format!("Referenced host+subset in destinationrule not found: \"{service}+v1\"");
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&line) && l.ends_with(&want)),
            "{line} ... {want}\n{stdout}"
        );
    }
    assert!(
        stderr.starts_with("Error: Analyzers found issues"),
        "{stderr}"
    );

    // A consistent set: nothing to report, exit 0.
    let consistent = [
        kube,
        "networking/destination-rule-reviews.yaml",
        "networking/virtual-service-reviews-80-20.yaml",
    ];
    let (code, stdout, stderr) = run(&[], &consistent);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.starts_with("\u{2714} No validation issues found"),
        "{stdout}"
    );

    // The same with reviews-v3's pods relabelled: its subset selects none
    // (the workloads' pod templates are the pods checked).
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(bookinfo.join(kube)).unwrap();
    let relabelled = text.replace("version: v3", "version: v4");
    assert_ne!(relabelled, text);
    std::fs::write(dir.path().join("bookinfo.yaml"), relabelled).unwrap();
    let moved = dir.path().join("bookinfo.yaml");
    let (code, stdout, _) = run(
        &[],
        &[moved.to_str().unwrap(), consistent[1], consistent[2]],
    );
    assert_eq!(code, Some(79), "{stdout}");
    assert!(
        stdout.contains("(DestinationRule default/reviews networking/destination-rule-reviews.yaml:1) The Subset v3 defined in the DestinationRule does not select any pods."),
        "{stdout}"
    );

    // JSON, a threshold and a suppression: the subset errors suppressed,
    // the ingress warning kept, exit 0 (no error left).
    let (code, stdout, _) = run(
        &[
            "-o",
            "json",
            "--output-threshold",
            "warning",
            "-S",
            "IST0173=DestinationRule default/*",
        ],
        &[
            kube,
            "networking/bookinfo-gateway.yaml",
            "networking/destination-rule-all.yaml",
            "networking/virtual-service-all-v1.yaml",
        ],
    );
    assert_eq!(code, Some(0), "{stdout}");
    let messages: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        messages,
        serde_json::json!([{
            "code": "IST0140",
            "documentationUrl": "https://istio.io/latest/docs/reference/config/analysis/ist0140/",
            "level": "Warning",
            "message": "Subset in virtual service default/productpage has no effect on ingress gateway default/bookinfo requests",
            "origin": "VirtualService default/bookinfo",
            "reference": "networking/bookinfo-gateway.yaml:18",
        }])
    );

    // A path that is not there: named, EX_USAGE.
    let (code, _, stderr) = run(&[], &["no-such-file.yaml"]);
    assert_eq!(code, Some(64));
    assert!(stderr.contains("no-such-file.yaml"), "{stderr}");
}
