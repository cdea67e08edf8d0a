//! Tracing on a real Envoy: a Zipkin extension provider named in the mesh
//! config's `defaultProviders.tracing` has productpage's sidecar post spans
//! (Zipkin v2 JSON) to a collector in the mesh, named by the route's
//! decorator and tagged as Istio tags them, and pass the trace context on
//! to the app; a Telemetry resource adds its custom tags. OpenTelemetry
//! (gRPC and HTTP), Datadog and SkyWalking providers reach their
//! collectors, and so do access logs sent as OpenTelemetry log records or
//! to Envoy's gRPC access log service.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::{Mesh, http_request, mesh_config};

const REVIEWS: &str = "http://10.96.0.13:9080";

/// The collector's Service in `istio-system`, its one endpoint the test's
/// collector at 127.0.2.1.
const ZIPKIN: &str = "apiVersion: v1
kind: Service
metadata: {name: zipkin, namespace: istio-system}
spec:
  clusterIP: 10.96.0.90
  ports: [{name: http-query, port: 9411}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: zipkin-1, namespace: istio-system, labels: {kubernetes.io/service-name: zipkin}}
addressType: IPv4
ports: [{name: http-query, port: 9411}]
endpoints: [{addresses: [127.0.2.1]}]
";

/// Starts a Zipkin collector on 127.0.2.1:9411 keeping every span posted
/// to `/api/v2/spans`.
fn start_collector(mesh: &Mesh) -> Arc<Mutex<Vec<serde_json::Value>>> {
    let spans: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let kept = spans.clone();
    let app = axum::Router::new().route(
        "/api/v2/spans",
        axum::routing::post(move |body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                if let Ok(serde_json::Value::Array(posted)) = serde_json::from_slice(&body) {
                    kept.lock().unwrap().extend(posted);
                }
                axum::http::StatusCode::ACCEPTED
            }
        }),
    );
    mesh.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.2.1:9411")
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
    });
    spans
}

/// Writes the collector's Service (`service`, YAML) and the mesh config
/// naming the extension provider `name` (`kind`: its provider, YAML) the
/// default tracing provider, every request sampled when `all_sampled`
/// (else Istio's default 1 %).
fn use_tracing_provider(mesh: &Mesh, service: &str, name: &str, kind: &str, all_sampled: bool) {
    let sampling = if all_sampled {
        "\ndefaultConfig: {tracing: {sampling: 100}}"
    } else {
        ""
    };
    mesh.cfg.write("collector.yaml", service);
    mesh.cfg.write(
        "mesh.yaml",
        &mesh_config(&format!(
            "extensionProviders: [{{name: {name}, {kind}}}]\ndefaultProviders: {{tracing: [{name}]}}{sampling}"
        )),
    );
}

/// The `zipkin` extension provider sending to [`ZIPKIN`].
const ZIPKIN_PROVIDER: &str =
    "zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}";

/// Waits until the daemon has loaded the mesh config's tracing (or
/// OpenTelemetry access log) provider, the collector's service `host`
/// and, when `telemetry`, a Telemetry resource.
fn wait_for_collector(mesh: &Mesh, host: &str, telemetry: bool) {
    e2e::eventually(
        e2e::SYNC,
        || {
            let snap = mesh.daemon.snapshots.borrow();
            ((snap.mesh.tracing.is_some()
                || !snap.mesh.otel_log_providers.is_empty()
                || !snap.mesh.grpc_log_providers.is_empty())
                && snap.services.contains_key(host)
                && (!telemetry || !snap.telemetries.is_empty()))
            .then_some(())
        },
        || format!("the daemon did not load the collector's config ({host})"),
    );
}

/// Telemetry `disableContextPropagation`: the sidecar still reports its
/// spans, but passes no trace context on to the app.
#[test]
fn context_propagation_can_be_turned_off() {
    let mesh = Mesh::start(true, &[]);
    let spans = start_collector(&mesh);
    use_tracing_provider(&mesh, ZIPKIN, "zipkin", ZIPKIN_PROVIDER, true);
    mesh.cfg.write(
        "telemetry.yaml",
        "apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing: [{disableContextPropagation: true}]
",
    );
    wait_for_collector(&mesh, "zipkin.istio-system.svc.cluster.local", true);
    let envoy = mesh.sidecar();
    for i in 0..5 {
        let r = http_request(
            &format!("{REVIEWS}/header/x-b3-traceid?n={i}"),
            &[("host", "reviews")],
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "(none)"), "{r:?}");
    }
    assert_eq!(five_spans(&spans).len(), 5);
    assert_eq!(envoy.rejected(), 0);
}

/// The first five spans the collector got (Envoy's Zipkin tracer posts
/// once it holds five, or every 5 s).
fn five_spans(spans: &Mutex<Vec<serde_json::Value>>) -> Vec<serde_json::Value> {
    e2e::eventually(
        Duration::from_secs(10),
        || {
            let posted = spans.lock().unwrap().clone();
            (posted.len() >= 5).then_some(posted)
        },
        || format!("the collector got {:?}", spans.lock().unwrap()),
    )
}

#[test]
fn spans_reach_the_zipkin_collector() {
    let mesh = Mesh::start(true, &[]);
    let spans = start_collector(&mesh);
    use_tracing_provider(&mesh, ZIPKIN, "zipkin", ZIPKIN_PROVIDER, true);
    wait_for_collector(&mesh, "zipkin.istio-system.svc.cluster.local", false);
    let envoy = mesh.sidecar();

    // Envoy's Zipkin tracer posts once it holds 5 spans (or every 5 s).
    let mut trace_ids = Vec::new();
    for i in 0..5 {
        let r = http_request(
            &format!("{REVIEWS}/header/x-b3-traceid?n={i}"),
            &[("host", "reviews")],
        )
        .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        // The app got the trace context: a 128-bit trace ID.
        assert_eq!(r.body.len(), 32, "{r:?}");
        trace_ids.push(r.body);
    }
    let posted = five_spans(&spans);
    for span in &posted {
        assert_eq!(
            span["name"], "reviews.default.svc.cluster.local:9080/*",
            "{span}"
        );
        assert_eq!(span["kind"], "CLIENT", "{span}");
        let tags = &span["tags"];
        assert_eq!(tags["istio.namespace"], "default", "{span}");
        assert_eq!(tags["istio.canonical_service"], "unknown", "{span}");
        assert_eq!(
            tags["upstream_cluster"], "outbound|9080||reviews.default.svc.cluster.local",
            "{span}"
        );
        assert!(
            trace_ids.iter().any(|id| span["traceId"] == *id.as_str()),
            "{span} is not one of the traces the app saw: {trace_ids:?}"
        );
    }

    // A mesh-wide Telemetry adds a tag to every span (the provider is
    // inherited from the mesh config's default).
    spans.lock().unwrap().clear();
    mesh.apply(
        &[&envoy],
        "telemetry.yaml",
        "apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing:
  - randomSamplingPercentage: 100
    customTags:
      team: {literal: {value: bookinfo}}
      user: {header: {name: x-user, defaultValue: nobody}}
",
    );
    for i in 0..5 {
        let r = http_request(
            &format!("{REVIEWS}/tagged?n={i}"),
            &[("host", "reviews"), ("x-user", "jason")],
        )
        .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    }
    let posted = five_spans(&spans);
    for span in &posted {
        assert_eq!(span["tags"]["team"], "bookinfo", "{span}");
        assert_eq!(span["tags"]["user"], "jason", "{span}");
        assert_eq!(span["tags"]["istio.namespace"], "default", "{span}");
    }
    assert_eq!(envoy.rejected(), 0);
}

/// Telemetry `useRequestIdForTraceSampling` and `enableIstioTags`: with
/// half the requests sampled, each of 20 request IDs sent three times is
/// traced three times or not at all while the decision follows the
/// request ID; when it does not, Envoy leaves it to the tracer (Zipkin's
/// traces them all); without Istio's tags the spans carry none.
#[test]
fn request_id_sampling_and_istio_tags_follow_the_telemetry() {
    let mesh = Mesh::start(true, &[]);
    let spans = start_collector(&mesh);
    use_tracing_provider(&mesh, ZIPKIN, "zipkin", ZIPKIN_PROVIDER, false);
    let telemetry = |by_request_id: bool| {
        format!(
            "apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  tracing:
  - randomSamplingPercentage: 50
    useRequestIdForTraceSampling: {by_request_id}
    enableIstioTags: false
"
        )
    };
    mesh.cfg.write("telemetry.yaml", &telemetry(true));
    wait_for_collector(&mesh, "zipkin.istio-system.svc.cluster.local", true);
    let envoy = mesh.sidecar();
    // Spans per request ID, once Envoy has flushed (every 5 s at the latest).
    let traced_per_id = |round: u32| -> Vec<usize> {
        spans.lock().unwrap().clear();
        // Envoy reads the sampling decision from the ID's leading hex
        // digits: spread them.
        let ids: Vec<String> = (0..20u32)
            .map(|i| {
                let lead = i.wrapping_mul(2_654_435_761).wrapping_add(round);
                format!("{lead:08x}-0000-4000-8000-{i:012x}")
            })
            .collect();
        for id in &ids {
            for _ in 0..3 {
                let r = http_request(
                    &format!("{REVIEWS}/sampled"),
                    &[("host", "reviews"), ("x-request-id", id.as_str())],
                )
                .unwrap();
                assert_eq!(r.status, 200, "{r:?}");
            }
        }
        std::thread::sleep(Duration::from_secs(6));
        let posted = spans.lock().unwrap().clone();
        for span in &posted {
            let tags = span["tags"].as_object().cloned().unwrap_or_default();
            assert!(
                !tags.keys().any(|k| k.starts_with("istio.")),
                "no Istio tags: {span}"
            );
        }
        ids.iter()
            .map(|id| {
                posted
                    .iter()
                    .filter(|s| {
                        s["tags"]["guid:x-request-id"]
                            .as_str()
                            .is_some_and(|g| g[..8] == id[..8] && g[24..] == id[24..])
                    })
                    .count()
            })
            .collect()
    };
    let by_id = traced_per_id(1);
    assert!(
        by_id.iter().all(|n| *n == 0 || *n == 3) && by_id.contains(&3) && by_id.contains(&0),
        "one decision per request ID, about half of them traced: {by_id:?}"
    );
    // Not from the request ID: Envoy leaves the decision to the tracer,
    // and Zipkin's samples every request.
    mesh.apply(&[&envoy], "telemetry.yaml", &telemetry(false));
    let by_tracer = traced_per_id(2);
    assert_eq!(by_tracer, [3; 20]);
    assert_eq!(envoy.rejected(), 0);
}

/// The OpenTelemetry collector's Service: OTLP/gRPC on 4317 and
/// OTLP/HTTP on 4318, its one endpoint the test's collector at 127.0.2.2.
const OTEL: &str = "apiVersion: v1
kind: Service
metadata: {name: otel-collector, namespace: istio-system}
spec:
  clusterIP: 10.96.0.91
  ports: [{name: grpc-otlp, port: 4317}, {name: http-otlp, port: 4318}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: otel-collector-1, namespace: istio-system, labels: {kubernetes.io/service-name: otel-collector}}
addressType: IPv4
ports: [{name: grpc-otlp, port: 4317}, {name: http-otlp, port: 4318}]
endpoints: [{addresses: [127.0.2.2]}]
";

/// One export the collector got: path, content type and `x-tenant`
/// headers, body.
type Export = (String, String, String, Vec<u8>);

/// Starts an OTLP collector on 127.0.2.2 (4317 and 4318, HTTP/1.1 and
/// h2c) keeping every request: it answers OTLP/HTTP with an empty
/// `ExportTraceServiceResponse`, gRPC with a trailers-only OK.
fn start_otlp_collector(mesh: &Mesh) -> Arc<Mutex<Vec<Export>>> {
    start_recorder(mesh, "127.0.2.2", &[4317, 4318])
}

/// A server on `ip` at each of `ports` (HTTP/1.1 and h2c) keeping every
/// request it gets, as [`start_otlp_collector`] answers them.
fn start_recorder(mesh: &Mesh, ip: &'static str, ports: &[u16]) -> Arc<Mutex<Vec<Export>>> {
    let exports: Arc<Mutex<Vec<Export>>> = Arc::default();
    for &port in ports {
        let kept = exports.clone();
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let kept = kept.clone();
                async move {
                    let kind = headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let grpc = kind.starts_with("application/grpc");
                    let tenant = headers
                        .get("x-tenant")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    kept.lock().unwrap().push((
                        uri.path().to_owned(),
                        kind.clone(),
                        tenant,
                        body.to_vec(),
                    ));
                    let mut reply = axum::response::Response::new(axum::body::Body::empty());
                    let h = reply.headers_mut();
                    if grpc {
                        h.insert("content-type", "application/grpc".parse().unwrap());
                        h.insert("grpc-status", "0".parse().unwrap());
                    } else {
                        h.insert("content-type", "application/x-protobuf".parse().unwrap());
                    }
                    reply
                }
            },
        );
        mesh.block_on(async {
            let listener = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
        });
    }
    exports
}

/// Five requests to reviews through the sidecar, on path `/<what>`.
fn five_requests(what: &str) {
    for i in 0..5 {
        let r = http_request(&format!("{REVIEWS}/{what}?n={i}"), &[("host", "reviews")]).unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    }
}

/// The first request `exports` got whose body names `what`, waited for
/// (Envoy's OpenTelemetry tracer exports every 5 s, Datadog's every 2 s).
fn first_export(exports: &Mutex<Vec<Export>>, what: &str) -> Export {
    e2e::eventually(
        Duration::from_secs(15),
        || {
            let got = exports.lock().unwrap();
            got.iter().find(|(.., body)| holds(body, what)).cloned()
        },
        || {
            let got = exports.lock().unwrap();
            let seen: Vec<_> = got.iter().map(|(p, k, _, b)| (p, k, b.len())).collect();
            format!("no export naming {what}: {seen:?}")
        },
    )
}

/// Whether `body` holds `needle` (a protobuf string field is its bytes).
fn holds(body: &[u8], needle: &str) -> bool {
    body.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn spans_reach_an_opentelemetry_collector_over_grpc_and_http() {
    let mesh = Mesh::start(true, &[]);
    let exports = start_otlp_collector(&mesh);
    mesh.cfg.write("otel.yaml", OTEL);
    let provider = |exporter: &str| {
        mesh_config(&format!(
            "extensionProviders: [{{name: otel, opentelemetry: {{service: otel-collector.istio-system.svc.cluster.local, {exporter}}}}}]\n\
             defaultProviders: {{tracing: [otel]}}\n\
             defaultConfig: {{tracing: {{sampling: 100}}}}"
        ))
    };
    mesh.cfg.write("mesh.yaml", &provider("port: 4317"));
    wait_for_collector(
        &mesh,
        "otel-collector.istio-system.svc.cluster.local",
        false,
    );
    let envoy = mesh.sidecar();
    five_requests("over-grpc");
    let (path, kind, _, body) = first_export(&exports, "/over-grpc");
    assert_eq!(
        path,
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    );
    assert!(kind.starts_with("application/grpc"), "{kind}");
    // The resource's service name is the proxy's `app.namespace`; the
    // span's name the route's decorator.
    assert!(holds(&body, "productpage.default"));
    assert!(holds(&body, "reviews.default.svc.cluster.local:9080/*"));
    assert!(
        !holds(&body, "e2e-environment"),
        "no resource detector asked for"
    );

    // OTLP/HTTP: protobuf posted to the provider's path.
    mesh.apply(
        &[&envoy],
        "mesh.yaml",
        &provider("port: 4318, http: {path: /v1/traces, timeout: 3s, headers: [{name: x-tenant, value: bookinfo}]}"),
    );
    five_requests("over-http");
    let (path, kind, tenant, body) = first_export(&exports, "/over-http");
    assert_eq!(path, "/v1/traces");
    assert_eq!(kind, "application/x-protobuf");
    assert_eq!(tenant, "bookinfo", "the provider's header");
    assert!(holds(&body, "productpage.default"));
    assert_eq!(envoy.rejected(), 0);
}

/// The Datadog agent's Service in `istio-system`, its one endpoint the
/// test's recorder at 127.0.2.3.
const DATADOG: &str = "apiVersion: v1
kind: Service
metadata: {name: datadog-agent, namespace: istio-system}
spec:
  clusterIP: 10.96.0.92
  ports: [{name: http-trace, port: 8126}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: datadog-agent-1, namespace: istio-system, labels: {kubernetes.io/service-name: datadog-agent}}
addressType: IPv4
ports: [{name: http-trace, port: 8126}]
endpoints: [{addresses: [127.0.2.3]}]
";

/// A `datadog` extension provider: the sidecar sends its spans to the
/// agent's trace endpoint (msgpack, whose strings are their bytes), named
/// for the proxy's `app.namespace`.
#[test]
fn spans_reach_a_datadog_agent() {
    let mesh = Mesh::start(true, &[]);
    let traces = start_recorder(&mesh, "127.0.2.3", &[8126]);
    use_tracing_provider(
        &mesh,
        DATADOG,
        "dd",
        "datadog: {service: datadog-agent.istio-system.svc.cluster.local, port: 8126}",
        true,
    );
    wait_for_collector(&mesh, "datadog-agent.istio-system.svc.cluster.local", false);
    let envoy = mesh.sidecar();
    five_requests("to-datadog");
    let (path, kind, _, body) = first_export(&traces, "/to-datadog");
    assert_eq!(path, "/v0.4/traces");
    assert_eq!(kind, "application/msgpack");
    assert!(holds(&body, "productpage.default"));
    assert_eq!(envoy.rejected(), 0);
}

/// The SkyWalking OAP server's Service in `istio-system`, its one endpoint
/// the test's recorder at 127.0.2.4.
const SKYWALKING: &str = "apiVersion: v1
kind: Service
metadata: {name: skywalking-oap, namespace: istio-system}
spec:
  clusterIP: 10.96.0.93
  ports: [{name: grpc, port: 11800}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: skywalking-oap-1, namespace: istio-system, labels: {kubernetes.io/service-name: skywalking-oap}}
addressType: IPv4
ports: [{name: grpc, port: 11800}]
endpoints: [{addresses: [127.0.2.4]}]
";

/// A gRPC server at `addr` (h2c) keeping each call's path, its
/// `authentication` metadata and every byte of its request stream as it
/// comes (SkyWalking's segment report and Envoy's access log stream are
/// client streams that stay open), answering OK when the stream ends.
fn start_stream_recorder(mesh: &Mesh, addr: &'static str) -> Arc<Mutex<Vec<Export>>> {
    let calls: Arc<Mutex<Vec<Export>>> = Arc::default();
    let kept = calls.clone();
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let kept = kept.clone();
        async move {
            use tokio_stream::StreamExt;
            let (parts, body) = request.into_parts();
            let token = parts
                .headers
                .get("authentication")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let at = {
                let mut calls = kept.lock().unwrap();
                calls.push((
                    parts.uri.path().to_owned(),
                    String::new(),
                    token,
                    Vec::new(),
                ));
                calls.len() - 1
            };
            let mut chunks = body.into_data_stream();
            while let Some(Ok(chunk)) = chunks.next().await {
                kept.lock().unwrap()[at].3.extend_from_slice(&chunk);
            }
            let mut reply = axum::response::Response::new(axum::body::Body::empty());
            let h = reply.headers_mut();
            h.insert("content-type", "application/grpc".parse().unwrap());
            h.insert("grpc-status", "0".parse().unwrap());
            reply
        }
    });
    mesh.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
    });
    calls
}

/// A `skywalking` extension provider: the sidecar streams its segments to
/// the OAP server's `TraceSegmentReportService` over gRPC, with the
/// provider's access token, naming the proxy's service.
#[test]
fn segments_reach_a_skywalking_oap_server() {
    let mesh = Mesh::start(true, &[]);
    let calls = start_stream_recorder(&mesh, "127.0.2.4:11800");
    use_tracing_provider(
        &mesh,
        SKYWALKING,
        "sw",
        "skywalking: {service: skywalking-oap.istio-system.svc.cluster.local, port: 11800, accessToken: s3cret}",
        true,
    );
    wait_for_collector(
        &mesh,
        "skywalking-oap.istio-system.svc.cluster.local",
        false,
    );
    let envoy = mesh.sidecar();
    five_requests("to-skywalking");
    let (path, _, token, body) = first_export(&calls, "/to-skywalking");
    assert_eq!(path, "/skywalking.v3.TraceSegmentReportService/collect");
    assert_eq!(token, "s3cret");
    assert!(holds(&body, "productpage.default"));
    assert_eq!(envoy.rejected(), 0);
}

/// Writes the log service's Service (`service`, YAML), the mesh config's
/// `extensionProviders` (`providers`, a YAML list) and a mesh-wide
/// Telemetry logging to `names` (a YAML list of provider references).
fn use_log_providers(mesh: &Mesh, service: &str, providers: &str, names: &str) {
    mesh.cfg.write("log-service.yaml", service);
    mesh.cfg.write(
        "mesh.yaml",
        &mesh_config(&format!("extensionProviders: {providers}")),
    );
    mesh.cfg.write(
        "telemetry.yaml",
        &format!(
            "apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  accessLogging: [{{providers: {names}}}]
"
        ),
    );
}

/// An `envoyOtelAls` provider named by a Telemetry resource's
/// `accessLogging`: each request's log record reaches the OpenTelemetry
/// collector over OTLP/gRPC, its body and attributes the provider's
/// formats.
#[test]
fn access_logs_reach_an_opentelemetry_collector() {
    let mesh = Mesh::start(true, &[]);
    let exports = start_otlp_collector(&mesh);
    use_log_providers(
        &mesh,
        OTEL,
        "[{name: otel-logs, envoyOtelAls: {service: otel-collector.istio-system.svc.cluster.local, port: 4317, logName: mesh-logs, logFormat: {text: 'served %REQ(:PATH)% %RESPONSE_CODE%', labels: {upstream: '%UPSTREAM_CLUSTER%'}}}}]",
        "[{name: otel-logs}]",
    );
    wait_for_collector(&mesh, "otel-collector.istio-system.svc.cluster.local", true);
    let envoy = mesh.sidecar();
    five_requests("logged");
    let (path, kind, _, body) = first_export(&exports, "served /logged?n=0 200");
    assert_eq!(
        path,
        "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
    );
    assert!(kind.starts_with("application/grpc"), "{kind}");
    assert!(holds(&body, "upstream"));
    assert!(holds(
        &body,
        "outbound|9080||reviews.default.svc.cluster.local"
    ));
    assert_eq!(envoy.rejected(), 0);
}

/// The gRPC access log service's Service in `istio-system`, its one
/// endpoint the test's recorder at 127.0.2.5.
const ALS: &str = "apiVersion: v1
kind: Service
metadata: {name: als, namespace: istio-system}
spec:
  clusterIP: 10.96.0.94
  ports: [{name: grpc-als, port: 9811}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: als-1, namespace: istio-system, labels: {kubernetes.io/service-name: als}}
addressType: IPv4
ports: [{name: grpc-als, port: 9811}]
endpoints: [{addresses: [127.0.2.5]}]
";

/// `envoyHttpAls` and `envoyTcpAls` providers named by a Telemetry
/// resource's `accessLogging`: the sidecar streams each request's entry
/// to Envoy's gRPC access log service under each provider's log name, the
/// HTTP one with the request header the provider adds.
#[test]
fn access_logs_reach_a_grpc_access_log_service() {
    let mesh = Mesh::start(true, &[]);
    let calls = start_stream_recorder(&mesh, "127.0.2.5:9811");
    use_log_providers(
        &mesh,
        ALS,
        "[{name: http-als, envoyHttpAls: {service: als.istio-system.svc.cluster.local, port: 9811, logName: mesh-http, additionalRequestHeadersToLog: [x-tenant]}}, \
          {name: tcp-als, envoyTcpAls: {service: istio-system/als.istio-system.svc.cluster.local, port: 9811, logName: mesh-tcp}}]",
        "[{name: http-als}, {name: tcp-als}]",
    );
    wait_for_collector(&mesh, "als.istio-system.svc.cluster.local", true);
    let envoy = mesh.sidecar();
    for i in 0..5 {
        let r = http_request(
            &format!("{REVIEWS}/streamed?n={i}"),
            &[("host", "reviews"), ("x-tenant", "bookinfo")],
        )
        .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    }
    let (path, _, _, body) = first_export(&calls, "/streamed?n=0");
    assert_eq!(
        path,
        "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"
    );
    assert!(holds(&body, "mesh-http"), "the HTTP log's name");
    assert!(holds(&body, "x-tenant") && holds(&body, "bookinfo"));
    let (path, ..) = first_export(&calls, "mesh-tcp");
    assert_eq!(
        path,
        "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"
    );
    assert_eq!(envoy.rejected(), 0);
}

/// An OpenTelemetry provider's `resourceDetectors.environment` and
/// `dynatraceSampler`: the proxy's `OTEL_RESOURCE_ATTRIBUTES` become
/// attributes of the exported resource, and with the sampler deciding
/// every request reaches it (the mesh's default 1 % sampling is not
/// applied), so all five are traced and exported over OTLP/HTTP; the
/// sampler fetches its configuration from the exporter's host.
#[test]
fn resource_detectors_and_a_dynatrace_sampler_shape_opentelemetry_spans() {
    let mesh = Mesh::start(true, &[]);
    let exports = start_otlp_collector(&mesh);
    mesh.cfg.write("otel.yaml", OTEL);
    mesh.cfg.write(
        "mesh.yaml",
        &mesh_config(
            "extensionProviders: [{name: otel, opentelemetry: {service: otel-collector.istio-system.svc.cluster.local, port: 4318, http: {path: /v1/traces, timeout: 3s}, resourceDetectors: {environment: {}}, dynatraceSampler: {tenant: e2e, clusterId: 1}}}]\n\
             defaultProviders: {tracing: [otel]}",
        ),
    );
    wait_for_collector(
        &mesh,
        "otel-collector.istio-system.svc.cluster.local",
        false,
    );
    e2e::use_envoy_env(
        "OTEL_RESOURCE_ATTRIBUTES",
        "deployment.environment=e2e-environment",
    );
    let envoy = mesh.sidecar();
    five_requests("sampled");
    for i in 0..5 {
        let (path, _, _, body) = first_export(&exports, &format!("/sampled?n={i}"));
        assert_eq!(path, "/v1/traces");
        assert!(holds(&body, "deployment.environment"));
        assert!(holds(&body, "e2e-environment"));
    }
    // The sampler fetches its configuration from the collector's host.
    e2e::eventually(
        Duration::from_secs(15),
        || {
            let got = exports.lock().unwrap();
            got.iter()
                .any(|(path, ..)| path == "/api/v2/samplingConfiguration")
                .then_some(())
        },
        || "the Dynatrace sampler fetched no sampling configuration".into(),
    );
    assert_eq!(envoy.rejected(), 0);
}
