//! The daemon's check of access log formats (`translator::log_format`)
//! against Envoy's own parser: every operator it knows, with and without
//! arguments and a length, and the malformed formats it refuses, each given
//! to `envoy --mode validate` in a file access logger. They must agree: a
//! format the daemon lets through and Envoy refuses would be NACKed by
//! every proxy, and one it refuses and Envoy takes would be a user's log
//! format replaced by Istio's default for nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::collections::BTreeMap;

use translator::log_format::{check, operators};

/// Arguments Envoy takes for each operator (others: `x-a`, a header name
/// and a plain word).
fn sample_args(name: &str) -> &'static str {
    match name {
        "GRPC_STATUS" => "NUMBER",
        "REQUESTED_SERVER_NAME" => "SNI_ONLY",
        "QUERY_PARAMS" => "ORIG",
        "PATH" => "WQ:ORIG",
        "METADATA" => "ROUTE:a",
        "FILTER_STATE" | "UPSTREAM_FILTER_STATE" => "a:FIELD:b",
        "CEL" => "request.path",
        "COALESCE" => {
            r#"{"operators":["REQUESTED_SERVER_NAME",{"command":"REQ","param":":authority"}]}"#
        }
        "COMMON_DURATION" => "DS_RX_BEG:DS_TX_END:ms",
        _ => "x-a",
    }
}

/// Formats malformed in other ways than an operator's table entry.
const MALFORMED: &[&str] = &[
    "100%",
    "%REQ(:PATH",
    "%req(:path)%",
    "%REQ(:PATH):%",
    "%REQ(:PATH):5:6%",
    "%RESPONSE_CODE%x%",
    "% %",
    "%BOGUS%",
    "%REQ(a b)%",
    "%REQ(a:b)%",
    "%REQ(a)(b)x)%",
    "%REQ(a?b?c)%",
    "%RESP(é)%",
    "%GRPC_STATUS(x)%",
    "%QUERY_PARAMS(RAW)%",
    "%PATH(XQ)%",
    "%PATH(NQ:DECODED)%",
    "%METADATA(NODE:a)%",
    "%METADATA%",
    "%FILTER_STATE(a:FIELD)%",
    "%FILTER_STATE(a:PLAIN:b)%",
    "%FILTER_STATE(a:BOGUS)%",
    "%FILTER_STATE(:PLAIN)%",
    "%ENVIRONMENT()%",
];

/// Formats well formed in ways the table does not show.
const WELL_FORMED: &[&str] = &[
    "plain, 100%% sure",
    "%%%START_TIME%",
    "%START_TIME(%Y-%m-%dT%H:%M:%S)%",
    "%RESPONSE_CODE()%",
    "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH):10% %REQ(?a)% %REQ(a?)%",
    "%REQ_WITHOUT_QUERY% %REQ_WITHOUT_QUERY(X-ENVOY-ORIGINAL-PATH?:PATH):10%",
    "%FILTER_STATE(a)% %FILTER_STATE(a:TYPED)% %METADATA(ROUTE)%",
    "%PATH(NQ):5% %PATH(WQ:ORIG_OR_PATH)%",
    "%REQ(a):99999999999%",
];

/// A bootstrap whose one listener logs each format with the file access
/// logger, as the daemon configures it (the `req_without_query` formatter
/// beside every format, which the daemon adds when a format names it).
fn config(formats: &[&str]) -> serde_json::Value {
    let logs: Vec<serde_json::Value> = formats
        .iter()
        .map(|f| {
            serde_json::json!({
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": "/dev/null",
                    "log_format": {
                        "text_format_source": {"inline_string": format!("{f}\n")},
                        "formatters": [{
                            "name": "envoy.formatter.req_without_query",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery"}
                        }]
                    }
                }
            })
        })
        .collect();
    serde_json::json!({"static_resources": {
        "listeners": [{
            "name": "logs",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.tcp_proxy",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                    "stat_prefix": "logs",
                    "cluster": "none",
                    "access_log": logs
                }
            }]}]
        }],
        "clusters": [{"name": "none", "load_assignment": {"cluster_name": "none"}}]
    }})
}

/// Envoy's verdict on these formats together: `Ok`, or its error.
fn envoy_validates(dir: &std::path::Path, index: usize, formats: &[&str]) -> Result<(), String> {
    let path = dir.join(format!("formats-{index}.json"));
    std::fs::write(&path, config(formats).to_string()).unwrap();
    let out = std::process::Command::new(e2e::envoy_binary())
        .args(["--mode", "validate", "--log-level", "critical", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

#[test]
fn the_daemons_format_check_agrees_with_envoy() {
    let dir = tempfile::tempdir().unwrap();
    let mut formats: Vec<String> = Vec::new();
    for name in operators() {
        let args = sample_args(name);
        formats.extend([
            format!("%{name}%"),
            format!("%{name}({args})%"),
            format!("%{name}:5%"),
            format!("%{name}({args}):5%"),
        ]);
    }
    formats.extend(MALFORMED.iter().chain(WELL_FORMED).map(|f| f.to_string()));
    let (accepted, refused): (Vec<&str>, Vec<&str>) = formats
        .iter()
        .map(String::as_str)
        .partition(|f| check(f).is_ok());
    for f in MALFORMED {
        assert!(refused.contains(f), "{f} is not refused");
    }
    for f in WELL_FORMED {
        assert!(accepted.contains(f), "{f}: {:?}", check(f));
    }
    assert!(
        accepted.len() > 200 && refused.len() > 300,
        "{} / {}",
        accepted.len(),
        refused.len()
    );

    // What the daemon lets through, Envoy takes: all at once, else one by
    // one to name them.
    if envoy_validates(dir.path(), 0, &accepted).is_err() {
        let refused_by_envoy: BTreeMap<&str, String> = accepted
            .iter()
            .filter_map(|f| Some((*f, envoy_validates(dir.path(), 0, &[f]).err()?)))
            .collect();
        panic!("passed by the daemon, refused by Envoy: {refused_by_envoy:#?}");
    }
    // What the daemon refuses, Envoy refuses, each on its own (in as many
    // threads as there are cores: ~0.1 s a run).
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let taken_by_envoy: Vec<(&str, String)> = std::thread::scope(|s| {
        let chunks: Vec<_> = refused
            .chunks(refused.len().div_ceil(threads))
            .enumerate()
            .map(|(i, chunk)| {
                let dir = dir.path();
                s.spawn(move || {
                    chunk
                        .iter()
                        .filter(|f| envoy_validates(dir, i + 1, &[f]).is_ok())
                        .map(|f| (*f, check(f).unwrap_err()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        chunks.into_iter().flat_map(|c| c.join().unwrap()).collect()
    });
    assert!(
        taken_by_envoy.is_empty(),
        "refused by the daemon, taken by Envoy: {taken_by_envoy:#?}"
    );
}

/// CEL access log filters (Telemetry `accessLogging[].filter`): Envoy takes
/// these...
const CEL_TAKEN: &[&str] = &[
    "response.code >= 400",
    "request.headers['x-log'] == 'yes' || response.code == 503",
    "request.path.startsWith('/api') && !request.path.contains('health')",
    "matches(request.path, '^/a') || request.path.endsWith('.json')",
    "size(request.path) > 3 && [1].size() == 1 && {'a': 1}.size() == 1",
    "has(request.headers.x) ? int(response.code) > 1 : uint(1u) > 0u",
    "duration('1s') < request.duration && timestamp('2020-01-01T00:00:00Z') < request.time",
    "request.time.getHours('UTC') > 1 && request.time.getDayOfWeek() >= 0",
    "type(request.path) == string && dyn(1) == 1 && double('1.5') > 1.0",
    "xds.node.id == 'a' && response.code % 2 == 0 && 1 in [1, 2]",
];

/// ...and refuses these (the daemon refuses them naming the field, rather
/// than letting every proxy it applies to NACK its listeners).
const CEL_REFUSED: &[&str] = &[
    "response.code >=",
    "foo(1)",
    "string(response.code) == '200'",
    "request.path.lowerAscii() == 'a'",
    "[1, 2].exists(x, x > 1)",
    "request.headers.all(h, h == 'x')",
    "has(request.headers['x'])",
    "math.greatest(1, 2) > 0",
];

/// A bootstrap whose one listener logs through each CEL filter.
fn cel_config(expressions: &[&str]) -> serde_json::Value {
    let mut config = config(&["%RESPONSE_CODE%"]);
    let log = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["access_log"][0]
        .clone();
    let logs: Vec<serde_json::Value> = expressions
        .iter()
        .map(|e| {
            let mut log = log.clone();
            log["filter"] = serde_json::json!({"extension_filter": {
                "name": "envoy.access_loggers.extension_filters.cel",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                    "expression": e
                }
            }});
            log
        })
        .collect();
    config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["access_log"] = logs.into();
    config
}

#[test]
fn the_daemons_cel_check_agrees_with_envoy() {
    let dir = tempfile::tempdir().unwrap();
    let validate = |name: &str, expressions: &[&str]| {
        let path = dir.path().join(name);
        std::fs::write(&path, cel_config(expressions).to_string()).unwrap();
        std::process::Command::new(e2e::envoy_binary())
            .args(["--mode", "validate", "--log-level", "critical", "-c"])
            .arg(&path)
            .output()
            .unwrap()
            .status
            .success()
    };
    for e in CEL_TAKEN {
        assert_eq!(crds::validate::check_cel(e), Ok(()), "{e}");
    }
    assert!(
        validate("taken.json", CEL_TAKEN),
        "Envoy refuses one of {CEL_TAKEN:#?}"
    );
    for (i, e) in CEL_REFUSED.iter().enumerate() {
        assert!(
            crds::validate::check_cel(e).is_err(),
            "{e} passes the daemon"
        );
        assert!(
            !validate(&format!("refused-{i}.json"), &[e]),
            "Envoy takes {e}"
        );
    }
}
