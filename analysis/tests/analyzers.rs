//! The analyzers Istio's test grid does not cover here, each over a small
//! mesh written for it: the exact lines istioctl would print.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use analysis::{Input, analyze, analyzer};

/// The log lines `name` gives for `yaml` (read as `mesh.yaml`).
fn lines(name: &str, yaml: &str) -> Vec<String> {
    let mut input = Input::new("default");
    input.add_text("mesh.yaml", yaml);
    let a = analyzer(name).unwrap_or_else(|| panic!("no analyzer {name}"));
    analyze(&input, &[a])
        .iter()
        .map(|m| m.to_string())
        .collect()
}

#[test]
fn sidecar_selectors() {
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1, namespace: shop, labels: {app: reviews, version: v1}}
spec: {containers: [{name: app, image: x}]}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: by-app, namespace: shop}
spec:
  workloadSelector: {labels: {app: reviews}}
  egress: [{hosts: ["./*"]}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: by-version, namespace: shop}
spec:
  workloadSelector: {labels: {version: v1}}
  egress: [{hosts: ["./*"]}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: nobody, namespace: shop}
spec:
  workloadSelector: {labels: {app: ratings}}
  egress: [{hosts: ["./*"]}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default-a, namespace: shop}
spec: {egress: [{hosts: ["./*"]}]}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default-b, namespace: shop}
spec: {egress: [{hosts: ["istio-system/*"]}]}
"#;
    assert_eq!(
        lines("sidecar.SelectorAnalyzer", yaml),
        [
            r#"Error [IST0110] (Sidecar shop/by-app mesh.yaml:7) The Sidecars [by-app by-version] in namespace "shop" select the same workload pod "reviews-v1", which can lead to undefined behavior."#,
            r#"Error [IST0110] (Sidecar shop/by-version mesh.yaml:14) The Sidecars [by-app by-version] in namespace "shop" select the same workload pod "reviews-v1", which can lead to undefined behavior."#,
            r#"Error [IST0101] (Sidecar shop/nobody mesh.yaml:25) Referenced selector not found: "app=ratings""#,
        ]
    );
    assert_eq!(
        lines("sidecar.DefaultSelectorAnalyzer", yaml),
        [
            r#"Error [IST0111] (Sidecar shop/default-a mesh.yaml:28) The Sidecars [default-a default-b] in namespace "shop" have no workload selector, which can lead to undefined behavior."#,
            r#"Error [IST0111] (Sidecar shop/default-b mesh.yaml:33) The Sidecars [default-a default-b] in namespace "shop" have no workload selector, which can lead to undefined behavior."#,
        ]
    );
}

#[test]
fn mesh_virtual_services_for_one_host() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-a}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-b}
spec:
  hosts: [reviews.default.svc.cluster.local]
  gateways: [mesh, istio-system/ingress]
  http: [{route: [{destination: {host: reviews}}]}]
---
# Bound to a gateway only, and one exported to its namespace alone: no conflict.
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-ingress}
spec:
  hosts: [reviews]
  gateways: [istio-system/ingress]
  http: [{route: [{destination: {host: reviews}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-local}
spec:
  hosts: [reviews]
  exportTo: ["."]
  http: [{route: [{destination: {host: reviews}}]}]
"#;
    let conflict = "The VirtualServices default/reviews-a,default/reviews-b associated with mesh gateway define the same host */reviews.default.svc.cluster.local which can lead to undefined behavior. This can be fixed by merging the conflicting VirtualServices into a single resource.";
    assert_eq!(
        lines("virtualservice.ConflictingMeshGatewayHostsAnalyzer", yaml),
        [
            format!("Error [IST0109] (VirtualService default/reviews-a mesh.yaml:2) {conflict}"),
            format!("Error [IST0109] (VirtualService default/reviews-b mesh.yaml:9) {conflict}"),
        ]
    );
}

#[test]
fn gateway_secrets_in_the_workload_namespace() {
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: ingress, namespace: istio-system, labels: {istio: ingressgateway}}
spec: {containers: [{name: istio-proxy, image: x}]}
---
apiVersion: v1
kind: Secret
metadata: {name: present, namespace: istio-system}
type: kubernetes.io/tls
data: {tls.crt: eA==, tls.key: eA==}
---
apiVersion: v1
kind: Secret
metadata: {name: elsewhere, namespace: default}
type: kubernetes.io/tls
data: {tls.crt: eA==, tls.key: eA==}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: web, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["a.example.com"]
    tls: {mode: SIMPLE, credentialName: present}
  - port: {number: 8443, name: https-b, protocol: HTTPS}
    hosts: ["b.example.com"]
    tls: {mode: SIMPLE, credentialName: elsewhere}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: typo, namespace: default}
spec:
  selector: {istio: ingresgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
"#;
    assert_eq!(
        lines("gateway.SecretAnalyzer", yaml),
        [
            r#"Error [IST0101] (Gateway default/typo mesh.yaml:36) Referenced selector not found: "istio=ingresgateway""#,
            r#"Error [IST0101] (Gateway default/web mesh.yaml:30) Referenced credentialName not found: "elsewhere""#,
        ]
    );
}

#[test]
fn service_port_names_and_namespaces() {
    let yaml = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: injected, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: both, labels: {istio-injection: enabled, istio.io/rev: canary}}
---
apiVersion: v1
kind: Namespace
metadata: {name: ambient, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports:
  - {name: http-web, port: 80}
  - {name: web, port: 8080, targetPort: 9080}
  - {name: metrics, port: 9090, appProtocol: http}
  - {name: dns, port: 53, protocol: UDP}
  - {name: grpc-web-ui, port: 81}
  - {port: 5000, targetPort: api}
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec: {ports: [{name: dns-tcp, port: 53}]}
"#;
    assert_eq!(
        lines("service.PortNameAnalyzer", yaml),
        [
            "Info [IST0118] (Service shop/web mesh.yaml:29) Port name  (port: 5000, targetPort: api) doesn't follow the naming convention of Istio port.",
            "Info [IST0118] (Service shop/web mesh.yaml:25) Port name web (port: 8080, targetPort: 9080) doesn't follow the naming convention of Istio port.",
        ]
    );
    assert_eq!(
        lines("injection.Analyzer", yaml),
        [
            "Warning [IST0123] (Namespace both mesh.yaml:10) The namespace has more than one type of injection labels [istio-injection istio.io/rev], which may lead to undefined behavior. Make sure only one injection label exists.",
            "Info [IST0102] (Namespace shop mesh.yaml:2) The namespace is not enabled for Istio injection. Run 'kubectl label namespace shop istio-injection=enabled' to enable it, or 'kubectl label namespace shop istio-injection=disabled' to explicitly mark it as not needing injection.",
        ]
    );
}

#[test]
fn authorization_policies() {
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {containers: [{name: app, image: x}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  rules: [{from: [{source: {namespaces: [shop, "front*", "*-prod", other]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: empty}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-web, namespace: istio-system}
spec:
  selector: {matchLabels: {app: web}}
---
apiVersion: v1
kind: Namespace
metadata: {name: frontend}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop-prod}
"#;
    assert_eq!(
        lines("authz.AuthorizationPoliciesAnalyzer", yaml),
        [
            "Warning [IST0127] (AuthorizationPolicy empty/deny-all mesh.yaml:20) No matching workloads for this resource with the following labels: ",
            "Warning [IST0127] (AuthorizationPolicy shop/api mesh.yaml:14) No matching workloads for this resource with the following labels: app=api",
            r#"Error [IST0101] (AuthorizationPolicy shop/web mesh.yaml:12) Referenced namespace not found: "other""#,
        ]
    );
}

#[test]
fn an_object_suppresses_codes_by_annotation() {
    let yaml = |annotation: &str| {
        format!(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: db
  annotations: {{galley.istio.io/analyze-suppress: "{annotation}"}}
spec:
  hosts: [db.example.com]
  ports: [{{number: 5432, name: tcp, protocol: TCP}}]
  resolution: DNS
"#
        )
    };
    let found = |annotation: &str| lines("serviceentry.Analyzer", &yaml(annotation)).len();
    assert_eq!(found("IST0118"), 1, "another code");
    assert_eq!(found("IST0118, IST0134"), 0);
    assert_eq!(found("*"), 0);
}

#[test]
fn envoy_filter_operations() {
    let yaml = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: lua-v1, namespace: istio-system}
spec:
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      proxy: {proxyVersion: '^1\.2.*'}
      listener: {filterChain: {filter: {name: envoy.filters.network.http_connection_manager}}}
    patch:
      operation: INSERT_BEFORE
      value: {name: envoy.lua, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua, inlineCode: "x"}}
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: lua-v2, namespace: istio-system}
spec:
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      listener: {filterChain: {filter: {name: envoy.filters.network.http_connection_manager}}}
    patch:
      operation: REPLACE
      value: {name: envoy.lua, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua, inlineCode: "y"}}
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: ordered, namespace: istio-system}
spec:
  priority: 10
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      listener: {filterChain: {filter: {name: envoy.filters.network.http_connection_manager}}}
    patch:
      operation: INSERT_AFTER
      value: {name: envoy.other, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua, inlineCode: "z"}}
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: misused, namespace: istio-system}
spec:
  priority: 10
  configPatches:
  - applyTo: HTTP_ROUTE
    match: {routeConfiguration: {vhost: {name: "a:80"}}}
    patch: {operation: ADD, value: {name: r}}
  - applyTo: ROUTE_CONFIGURATION
    patch: {operation: REMOVE}
  - applyTo: CLUSTER
    patch: {operation: REPLACE, value: {name: c}}
"#;
    let relative = "This EnvoyFilter does not have a priority and has a relative patch operation set which can cause the EnvoyFilter not to be applied. Using the INSERT_FIRST of ADD option or setting the priority may help in ensuring the EnvoyFilter is applied correctly.";
    let versioned = "This EnvoyFilter does not have a priority and has a relative patch operation (NSTERT_BEFORE/AFTER, REPLACE, MERGE, DELETE) and proxyVersion set which can cause the EnvoyFilter not to be applied during an upgrade. Using the INSERT_FIRST or ADD option or setting the priority may help in ensuring the EnvoyFilter is applied correctly.";
    assert_eq!(
        lines("envoyfilter.EnvoyPatchAnalyzer", yaml),
        [
            format!("Warning [IST0151] (EnvoyFilter istio-system/lua-v1 mesh.yaml:2) {relative}"),
            format!("Warning [IST0155] (EnvoyFilter istio-system/lua-v2 mesh.yaml:15) {versioned}"),
            "Error [IST0152] (EnvoyFilter istio-system/misused mesh.yaml:40) The REPLACE operation is only valid for HTTP_FILTER and NETWORK_FILTER.".to_owned(),
            "Error [IST0153] (EnvoyFilter istio-system/misused mesh.yaml:40) The ADD operation will be ignored when applyTo is set to ROUTE_CONFIGURATION, or HTTP_ROUTE.".to_owned(),
            "Error [IST0154] (EnvoyFilter istio-system/misused mesh.yaml:40) The REMOVE operation will be ignored when applyTo is set to ROUTE_CONFIGURATION, or HTTP_ROUTE.".to_owned(),
        ]
    );
}

#[test]
fn telemetry_selectors_and_providers() {
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {containers: [{name: app, image: x}]}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: web-logs, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  accessLogging: [{}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: web-traces, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  tracing: [{randomSamplingPercentage: 10}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: shop-a, namespace: shop}
spec: {tracing: [{randomSamplingPercentage: 1}]}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: shop-b, namespace: shop}
spec: {accessLogging: [{providers: [{name: envoy}]}]}
"#;
    assert_eq!(
        lines("telemetry.SelectorAnalyzer", yaml),
        [
            r#"Error [IST0159] (Telemetry shop/web-logs mesh.yaml:7) The Telemetries [web-logs web-traces] in namespace "shop" select the same workload pod "web-1", which can lead to undefined behavior."#,
            r#"Error [IST0159] (Telemetry shop/web-traces mesh.yaml:14) The Telemetries [web-logs web-traces] in namespace "shop" select the same workload pod "web-1", which can lead to undefined behavior."#,
        ]
    );
    assert_eq!(
        lines("telemetry.DefaultSelectorAnalyzer", yaml),
        [
            r#"Error [IST0160] (Telemetry shop/shop-a mesh.yaml:21) The Telemetries [shop-a shop-b] in namespace "shop" have no workload selector, which can lead to undefined behavior."#,
            r#"Error [IST0160] (Telemetry shop/shop-b mesh.yaml:26) The Telemetries [shop-a shop-b] in namespace "shop" have no workload selector, which can lead to undefined behavior."#,
        ]
    );
    assert_eq!(
        lines("telemetry.ProviderAnalyzer", yaml),
        [
            r#"Warning [IST0157] (Telemetry shop/web-logs mesh.yaml:7) The Telemetry web-logs in namespace "shop" with empty providers will be ignored."#
        ]
    );
    // With a default access log provider in the mesh config, an entry
    // without providers uses it.
    let mesh = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\n\
                data:\n  mesh: |\n    defaultProviders: {accessLogging: [envoy]}\n---\n";
    assert!(lines("telemetry.ProviderAnalyzer", &format!("{mesh}{yaml}")).is_empty());
}

#[test]
fn jwt_claim_routes_need_request_authentication_on_the_gateway() {
    let yaml = |authn: &str| {
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: ingress-1, namespace: istio-system, labels: {{istio: ingressgateway}}}}
spec: {{containers: [{{name: istio-proxy, image: x}}]}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: web, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers: [{{port: {{number: 80, name: http, protocol: HTTP}}, hosts: ["*"]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: by-group, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [istio-system/web]
  http:
  - match: [{{headers: {{"@request.auth.claims.groups": {{exact: admin}}}}}}]
    route: [{{destination: {{host: admin}}}}]
  - route: [{{destination: {{host: web}}}}]
{authn}"#
        )
    };
    assert_eq!(
        lines("virtualservice.JWTClaimRouteAnalyzer", &yaml("")),
        [
            "Error [IST0149] (VirtualService default/by-group mesh.yaml:14) The virtual service uses the JWT claim based routing (key: @request.auth.claims.groups) but found no request authentication for the gateway (istio-system/web) pod (ingress-1). The request authentication must first be applied for the gateway pods to validate the JWT token and make the claims available for routing."
        ]
    );
    let authn = "---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  jwtRules: [{issuer: https://issuer.example.com, jwksUri: https://issuer.example.com/jwks}]
";
    assert!(lines("virtualservice.JWTClaimRouteAnalyzer", &yaml(authn)).is_empty());
}

#[test]
fn workloads_reached_through_several_services() {
    let yaml = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec: {containers: [{name: api, image: x}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  selector: {app: api}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: dns, port: 53}]
---
apiVersion: v1
kind: Service
metadata: {name: api-admin, namespace: shop}
spec:
  selector: {app: api}
  ports: [{name: http, port: 8000, targetPort: 8080}, {name: dns, port: 53, protocol: UDP}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: outside, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}, annotations: {sidecar.istio.io/inject: "false"}}
    spec: {containers: [{name: api, image: x}]}
"#;
    assert_eq!(
        lines("deployment.MultiServiceAnalyzer", yaml),
        [
            "Warning [IST0116] (Deployment shop/api mesh.yaml:2) This deployment api is associated with multiple services using port 53 but different protocols: [shop/api shop/api-admin]",
            r#"Warning [IST0137] (Deployment shop/api mesh.yaml:2) This deployment api is associated with multiple services [shop/api shop/api-admin] using targetPort "8080" but different ports: [80 8000]."#,
        ]
    );
}

#[test]
fn subsets_of_a_service_without_a_selector_go_by_its_endpoint_slices() {
    let yaml = |slice_pod: &str| {
        format!(
            r#"
apiVersion: v1
kind: Service
metadata: {{name: db, namespace: data}}
spec: {{ports: [{{name: tcp, port: 5432}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: db-1, namespace: data, labels: {{kubernetes.io/service-name: db}}}}
addressType: IPv4
ports: [{{name: tcp, port: 5432}}]
endpoints: [{{addresses: [10.0.0.5], targetRef: {{kind: Pod, name: {slice_pod}}}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: db-0, namespace: data, labels: {{role: primary}}}}
spec: {{containers: [{{name: db, image: x}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: cache-0, namespace: data, labels: {{role: replica}}}}
spec: {{containers: [{{name: cache, image: x}}]}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: db, namespace: data}}
spec:
  host: db
  subsets: [{{name: primary, labels: {{role: primary}}}}, {{name: replica, labels: {{role: replica}}}}]
"#
        )
    };
    let not_selected = |subset: &str| {
        format!(
            "Error [IST0173] (DestinationRule data/db mesh.yaml:24) The Subset {subset} defined in the DestinationRule does not select any pods. Which may lead to 503 UH (NoHealthyUpstream)."
        )
    };
    // The slice names db-0: the replica subset selects none of its pods
    // (cache-0 carries the labels but is not an endpoint of db).
    assert_eq!(
        lines("destinationrule.SubsetSelectPodAnalyzer", &yaml("db-0")),
        [not_selected("replica")]
    );
    assert_eq!(
        lines("destinationrule.SubsetSelectPodAnalyzer", &yaml("cache-0")),
        [not_selected("primary")]
    );
}

#[test]
fn istio_annotations_unknown_misplaced_and_deprecated() {
    let yaml = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  annotations: {sidecar.istio.io/proxyCPU: 100m, example.com/other: x}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  annotations: {sidecar.istio.io/inject: "true"}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
      annotations: {sidecar.istio.io/proxyCPUs: 100m, proxy.istio.io/config: "{}", traffic.sidecar.istio.io/excludeOutboundPorts: "5432"}
    spec: {containers: [{name: web, image: x}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: legacy
  namespace: shop
  annotations: {sidecar.istio.io/inject: "false"}
spec: {containers: [{name: app, image: x}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: both
  namespace: shop
  labels: {sidecar.istio.io/inject: "false"}
  annotations: {sidecar.istio.io/inject: "false"}
spec: {containers: [{name: app, image: x}]}
"#;
    assert_eq!(
        lines("annotations.K8sAnalyzer", yaml),
        [
            "Warning [IST0107] (Namespace shop mesh.yaml:6) Misplaced annotation: sidecar.istio.io/proxyCPU can only be applied to Pod",
            "Warning [IST0107] (Deployment shop/web mesh.yaml:13) Misplaced annotation: sidecar.istio.io/inject can only be applied to Pod",
            "Warning [IST0108] (Deployment shop/web mesh.yaml:19) Unknown annotation: sidecar.istio.io/proxyCPUs",
            r#"Info [IST0135] (Deployment shop/web mesh.yaml:13) Annotation "sidecar.istio.io/inject" has been deprecated in favor of the "sidecar.istio.io/inject" label and may not work in future Istio versions."#,
            r#"Info [IST0135] (Pod shop/legacy mesh.yaml:27) Annotation "sidecar.istio.io/inject" has been deprecated in favor of the "sidecar.istio.io/inject" label and may not work in future Istio versions."#,
        ]
    );
}

#[test]
fn pods_of_injected_namespaces_without_the_proxy() {
    let pod = |name: &str, ns: &str, extra: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}{extra}}}\nspec: {{containers: [{{name: app, image: x}}]}}\n"
        )
    };
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio-injection: enabled}}\n\
         ---\napiVersion: v1\nkind: Namespace\nmetadata: {name: canary, labels: {istio.io/rev: canary}}\n\
         ---\napiVersion: v1\nkind: Namespace\nmetadata: {name: plain, labels: {istio-injection: disabled}}\n",
    );
    yaml.push_str(&pod("old", "shop", ""));
    yaml.push_str(&pod("old", "canary", ""));
    yaml.push_str(&pod(
        "skipped",
        "shop",
        ", annotations: {sidecar.istio.io/inject: 'false'}",
    ));
    yaml.push_str(&pod(
        "labelled-out",
        "shop",
        ", labels: {sidecar.istio.io/inject: 'false'}",
    ));
    yaml.push_str(&pod("outside", "plain", ""));
    yaml.push_str(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {name: injected, namespace: shop}\n\
         spec: {containers: [{name: app, image: x}, {name: istio-proxy, image: proxyv2}]}\n\
         ---\napiVersion: v1\nkind: Pod\nmetadata: {name: native, namespace: shop}\n\
         spec: {initContainers: [{name: istio-proxy, image: proxyv2, restartPolicy: Always}], containers: [{name: app, image: x}]}\n\
         ---\napiVersion: v1\nkind: Pod\nmetadata: {name: host, namespace: shop}\n\
         spec: {hostNetwork: true, containers: [{name: app, image: x}]}\n",
    );
    let found: Vec<String> = lines("injection.Analyzer", &yaml)
        .into_iter()
        .filter(|l| l.contains("IST0103"))
        .collect();
    assert_eq!(
        found,
        [
            "Warning [IST0103] (Pod canary/old mesh.yaml:18) The pod canary/old is missing the Istio proxy. This can often be resolved by restarting or redeploying the workload.",
            "Warning [IST0103] (Pod shop/old mesh.yaml:13) The pod shop/old is missing the Istio proxy. This can often be resolved by restarting or redeploying the workload.",
        ]
    );
}

#[test]
fn gateways_sharing_a_certificate() {
    let gateway = |name: &str, selector: &str, tls: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: istio-system}}\nspec:\n  selector: {selector}\n  servers:\n  - port: {{number: 443, name: https, protocol: HTTPS}}\n    hosts: [\"{name}.example.com\"]\n    tls: {tls}\n"
        )
    };
    let yaml = [
        gateway(
            "shop",
            "{istio: ingressgateway}",
            "{mode: SIMPLE, credentialName: wildcard}",
        ),
        gateway(
            "blog",
            "{istio: ingressgateway, tier: web}",
            "{mode: SIMPLE, credentialName: wildcard}",
        ),
        gateway(
            "admin",
            "{istio: ingressgateway}",
            "{mode: SIMPLE, credentialName: admin}",
        ),
        gateway(
            "files",
            "{istio: ingressgateway}",
            "{mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem}",
        ),
        gateway(
            "files2",
            "{istio: ingressgateway}",
            "{mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem}",
        ),
        gateway(
            "other",
            "{istio: egressgateway}",
            "{mode: SIMPLE, credentialName: wildcard}",
        ),
    ]
    .concat();
    let duplicate = |a: &str, b: &str, line: u32| {
        format!(
            "Warning [IST0138] (Gateway istio-system/{a} mesh.yaml:{line}) Duplicate certificate in multiple gateways [istio-system/{a} istio-system/{b}] may cause 404s if clients re-use HTTP2 connections."
        )
    };
    // blog's selector carries shop's labels (shop's workload serves blog's
    // servers too), not the other way round; another workload's gateway
    // shares nothing.
    assert_eq!(
        lines("gateway.CertificateAnalyzer", &yaml),
        [
            duplicate("files", "files2", 32),
            duplicate("files2", "files", 42),
            duplicate("shop", "blog", 2),
        ]
    );
}

#[test]
fn deprecated_fault_delay_percent() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - fault: {delay: {fixedDelay: 7s, percent: 10}}
    route: [{destination: {host: ratings}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - fault: {delay: {fixedDelay: 7s, percentage: {value: 10}}}
    route: [{destination: {host: reviews}}]
"#;
    assert_eq!(
        lines("deprecation.DeprecationAnalyzer", yaml),
        [
            "Warning [IST0002] (VirtualService default/ratings mesh.yaml:2) Deprecated: HTTPRoute.fault.delay.percent is deprecated; use HTTPRoute.fault.delay.percentage"
        ]
    );
}

#[test]
fn tls_origination_without_a_ca_at_each_level() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: data}
spec:
  host: db.example.com
  trafficPolicy:
    tls: {mode: SIMPLE}
    portLevelSettings:
    - port: {number: 443}
      tls: {mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem}
    - port: {number: 8443}
      tls: {mode: SIMPLE, caCertificates: /ca.pem}
    - port: {number: 9443}
      tls: {mode: SIMPLE, credentialName: db-client}
"#;
    assert_eq!(
        lines("destinationrule.CaCertificateAnalyzer", yaml),
        [
            "Warning [IST0128] (DestinationRule data/db mesh.yaml:8) DestinationRule data/db in namespace data has TLS mode set to SIMPLE but no caCertificates are set to validate server identity for host: db.example.com",
            "Warning [IST0129] (DestinationRule data/db mesh.yaml:11) DestinationRule data/db in namespace data has TLS mode set to MUTUAL but no caCertificates are set to validate server identity for host: db.example.com at port number:443",
        ]
    );
}

/// IST0144 as Istio's `ApplicationUIDAnalyzer` cases: a Pod or a
/// Deployment whose pod or application container runs as UID 1337 (the
/// proxy's); the proxy's own container, another kind (a StatefulSet, which
/// Istio does not check) and Istio's control plane (labelled `istio`) are
/// left alone.
#[test]
fn application_uid() {
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: pod-sec-uid, namespace: default}
spec:
  securityContext: {runAsUser: 1337}
  containers: [{name: app, image: x}]
---
apiVersion: v1
kind: Pod
metadata: {name: con-sec-uid, namespace: default}
spec:
  containers:
  - {name: app, image: x, securityContext: {runAsUser: 1337}}
---
apiVersion: v1
kind: Pod
metadata: {name: proxy-only, namespace: default}
spec:
  containers:
  - {name: app, image: x, securityContext: {runAsUser: 1000}}
  - {name: istio-proxy, image: proxyv2, securityContext: {runAsUser: 1337}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: deploy-con-sec-uid, namespace: default}
spec:
  selector: {matchLabels: {app: helloworld}}
  template:
    metadata: {labels: {app: helloworld}}
    spec:
      containers:
      - {name: helloworld, image: x, securityContext: {runAsUser: 1337}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  template:
    metadata: {labels: {istio: ingressgateway}}
    spec:
      securityContext: {runAsUser: 1337}
      containers: [{name: istio-proxy, image: proxyv2}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: default}
spec:
  selector: {matchLabels: {app: db}}
  serviceName: db
  template:
    metadata: {labels: {app: db}}
    spec:
      securityContext: {runAsUser: 1337}
      containers: [{name: db, image: x}]
"#;
    let uid = "User ID (UID) 1337 is reserved for the sidecar proxy.";
    assert_eq!(
        lines("applicationUID.Analyzer", yaml),
        [
            format!("Warning [IST0144] (Deployment default/deploy-con-sec-uid mesh.yaml:24) {uid}"),
            format!("Warning [IST0144] (Pod default/con-sec-uid mesh.yaml:9) {uid}"),
            format!("Warning [IST0144] (Pod default/pod-sec-uid mesh.yaml:2) {uid}"),
        ]
    );
}

/// IST0125 as Istio's `inject.AnnotationValidation`: a pod annotation in
/// its place whose value the injector would refuse, in Istio's words
/// (Go's parse errors included); good values, `*` where Istio takes it,
/// and a misplaced annotation (IST0107 only) are not reported.
#[test]
fn invalid_annotation_values() {
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata:
  name: bad
  namespace: default
  annotations:
    sidecar.istio.io/interceptionMode: SOMETIMES
    status.sidecar.istio.io/port: "99999"
    readiness.status.sidecar.istio.io/periodSeconds: ten
    traffic.sidecar.istio.io/includeOutboundIPRanges: "10.0.0.0/8,10.1.2.3"
    traffic.sidecar.istio.io/excludeInboundPorts: "80, x"
    prometheus.istio.io/merge-metrics: "yes"
spec: {containers: [{name: app, image: x}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: good
  namespace: default
  annotations:
    sidecar.istio.io/interceptionMode: TPROXY
    traffic.sidecar.istio.io/includeOutboundIPRanges: "*"
    traffic.sidecar.istio.io/includeInboundPorts: "*"
    traffic.sidecar.istio.io/excludeOutboundPorts: "15020, 9090"
    traffic.sidecar.istio.io/excludeOutboundIPRanges: "10.0.0.0/8,fd00::/8"
    prometheus.istio.io/merge-metrics: "false"
spec: {containers: [{name: app, image: x}]}
---
apiVersion: v1
kind: Service
metadata:
  name: misplaced
  namespace: default
  annotations: {traffic.sidecar.istio.io/excludeInboundPorts: "x"}
spec: {ports: [{name: http, port: 80}]}
"#;
    // Each points at its annotation's line.
    let bad = |line: u32, text: &str| {
        format!("Warning [IST0125] (Pod default/bad mesh.yaml:{line}) Invalid annotation {text}")
    };
    let found: Vec<String> = lines("annotations.K8sAnalyzer", yaml);
    assert_eq!(
        found,
        [
            bad(
                13,
                "prometheus.istio.io/merge-metrics: strconv.ParseBool: parsing \"yes\": invalid syntax"
            ),
            bad(
                10,
                "readiness.status.sidecar.istio.io/periodSeconds: strconv.ParseUint: parsing \"ten\": invalid syntax"
            ),
            bad(
                8,
                "sidecar.istio.io/interceptionMode: interceptionMode invalid, use REDIRECT,TPROXY,NONE: SOMETIMES"
            ),
            bad(
                9,
                "status.sidecar.istio.io/port: excludeInboundPorts invalid: failed parsing port '99999': strconv.ParseUint: parsing \"99999\": value out of range"
            ),
            bad(
                12,
                "traffic.sidecar.istio.io/excludeInboundPorts: excludeInboundPorts invalid: failed parsing port ' x': failed parsing port ' x': strconv.ParseUint: parsing \"x\": invalid syntax"
            ),
            bad(
                11,
                "traffic.sidecar.istio.io/includeOutboundIPRanges: includeIPRanges invalid: failed parsing cidr '10.1.2.3': netip.ParsePrefix(\"10.1.2.3\"): no '/'"
            ),
            "Warning [IST0107] (Service default/misplaced mesh.yaml:35) Misplaced annotation: traffic.sidecar.istio.io/excludeInboundPorts can only be applied to Pod".to_owned(),
        ]
    );
}
