//! WorkloadEntry (Istio's VMs in the mesh): the endpoints it is of the
//! Kubernetes Services and the ServiceEntries (`workloadSelector`) of its
//! namespace that select it, with Istio's port choice, identity and TLS
//! mode, and its own sidecar's inbound side.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use envoy_types::pb::envoy::config::core::v3::{TransportSocket, transport_socket};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use prost::Message;
use translator::generate;
use translator::model::{Endpoint, MeshConfig, Proxy, Snapshot};

/// `ratings` selects `app: ratings` (HTTP 9080 -> 8080, `grpc` 7070 ->
/// the named `grpc-port`); its one pod has a sidecar. `headless` and
/// `manual` (no selector) select the same labels' workloads, or nothing.
const PLATFORM: &str = "
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: default}
spec:
  clusterIP: 10.96.0.14
  selector: {app: ratings}
  ports:
  - {name: http, port: 9080, targetPort: 8080}
  - {name: grpc, port: 7070, targetPort: grpc-port}
  - {name: udp-dns, port: 53, protocol: UDP}
---
apiVersion: v1
kind: Pod
metadata:
  name: ratings-0
  namespace: default
  labels: {app: ratings, security.istio.io/tlsMode: istio}
spec: {serviceAccountName: ratings, containers: [{name: app, image: app}]}
status: {podIP: 10.244.0.13}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ratings-1, namespace: default, labels: {kubernetes.io/service-name: ratings}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: grpc, port: 7070}]
endpoints: [{addresses: [10.244.0.13], targetRef: {kind: Pod, name: ratings-0, namespace: default}}]
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: default}
spec:
  clusterIP: None
  selector: {app: ratings}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: manual, namespace: default}
spec:
  clusterIP: 10.96.0.15
  ports: [{name: http, port: 9080}]
";

fn mesh(extra: &str) -> Snapshot {
    Snapshot::build(
        1,
        &crds::objects_of(&[PLATFORM, extra]),
        MeshConfig::default(),
    )
}

fn entry(name: &str, namespace: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n---\n"
    )
}

fn endpoints<'a>(snap: &'a Snapshot, host: &str) -> Vec<&'a Endpoint> {
    snap.services[host].endpoints.iter().collect()
}

fn find<'a>(snap: &'a Snapshot, host: &str, address: &str) -> Option<&'a Endpoint> {
    snap.services[host]
        .endpoints
        .iter()
        .find(|e| e.address == address)
}

const RATINGS: &str = "ratings.default.svc.cluster.local";

#[test]
fn a_kubernetes_service_selects_workload_entries_of_its_namespace() {
    let snap = mesh(
        &(entry(
            "vm-1",
            "default",
            "{address: 10.1.0.1, labels: {app: ratings, version: vm}, serviceAccount: ratings-vm, ports: {grpc-port: 17070}, locality: us-east/a, weight: 3}",
        ) + &entry(
            "vm-2",
            "default",
            "{address: 10.1.0.2, labels: {app: ratings}, ports: {http: 18080}}",
        ) + &entry(
            "other-ns",
            "shop",
            "{address: 10.1.0.3, labels: {app: ratings}}",
        ) + &entry(
            "other-app",
            "default",
            "{address: 10.1.0.4, labels: {app: reviews}}",
        ) + &entry(
            "by-name",
            "default",
            "{address: vm.example.com, labels: {app: ratings}}",
        ) + &entry("no-labels", "default", "{address: 10.1.0.5}")),
    );
    let addresses: Vec<&str> = endpoints(&snap, RATINGS)
        .iter()
        .map(|e| e.address.as_str())
        .collect();
    // The pod from its slice, then the entries by name; not another
    // namespace's, not another app's, not a hostname.
    assert_eq!(addresses, ["10.244.0.13", "10.1.0.1", "10.1.0.2"]);

    let vm1 = find(&snap, RATINGS, "10.1.0.1").unwrap();
    // A numeric targetPort; a named one through the entry's port of that name.
    assert_eq!(vm1.target_port("http"), Some(8080));
    assert_eq!(vm1.target_port("grpc"), Some(17070));
    assert_eq!(vm1.target_port("udp-dns"), None, "UDP ports are left out");
    assert_eq!(vm1.locality, "us-east/a");
    assert_eq!(vm1.weight, 3);
    assert_eq!(vm1.service_account.as_deref(), Some("ratings-vm"));
    assert!(
        vm1.in_mesh(),
        "a service account and no tlsMode label: a sidecar"
    );
    assert_eq!(vm1.labels["version"], "vm");

    let vm2 = find(&snap, RATINGS, "10.1.0.2").unwrap();
    // The entry's port of the service port's name wins over the number;
    // without the named target port it is no endpoint of `grpc`.
    assert_eq!(vm2.target_port("http"), Some(18080));
    assert_eq!(vm2.target_port("grpc"), None);
    assert!(!vm2.in_mesh(), "no service account: no sidecar");

    // A headless service and one without a selector select no entry.
    assert!(endpoints(&snap, "headless.default.svc.cluster.local").is_empty());
    assert!(endpoints(&snap, "manual.default.svc.cluster.local").is_empty());

    // The VM's sidecar serves the ports it is an endpoint of.
    let ports: Vec<u32> = snap
        .inbound_ports("10.1.0.1")
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, [8080, 17070]);
}

#[test]
fn auto_mtls_and_identity_reach_a_workload_entry_with_a_sidecar() {
    let client = Proxy::from_node_id(
        "sidecar~10.244.0.99~client.default~default.svc.cluster.local",
        None,
        Default::default(),
    )
    .unwrap();
    let snap = mesh(&entry(
        "vm-1",
        "default",
        "{address: 10.1.0.1, labels: {app: ratings, security.istio.io/tlsMode: disabled}, serviceAccount: ratings-vm}",
    ));
    let out = generate(&snap, &client);
    let cluster = |out: &translator::Output| {
        out.clusters
            .iter()
            .find(|c| c.name == "outbound|9080||ratings.default.svc.cluster.local")
            .cloned()
            .unwrap()
    };
    // The label says no sidecar: only the pod takes mTLS, and the SANs
    // still name every identity the endpoints may present.
    let c = cluster(&out);
    assert_eq!(c.transport_socket_matches.len(), 1);
    let Some(TransportSocket {
        config_type: Some(transport_socket::ConfigType::TypedConfig(tls)),
        ..
    }) = &c.transport_socket_matches[0].transport_socket
    else {
        panic!("{c:?}")
    };
    let tls = UpstreamTlsContext::decode(tls.value.as_slice()).unwrap();
    let sans = format!("{:?}", tls.common_tls_context);
    assert!(
        sans.contains("spiffe://cluster.local/ns/default/sa/ratings-vm")
            && sans.contains("spiffe://cluster.local/ns/default/sa/ratings\""),
        "{sans}"
    );
    let cla = out
        .endpoints
        .iter()
        .find(|c| c.cluster_name == "outbound|9080||ratings.default.svc.cluster.local")
        .unwrap();
    let mtls: Vec<bool> = cla
        .endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .map(|e| {
            e.metadata.as_ref().is_some_and(|m| {
                m.filter_metadata
                    .contains_key("envoy.transport_socket_match")
            })
        })
        .collect();
    assert_eq!(mtls, [true, false]);

    // Without the label, its service account says it has a sidecar.
    let snap = mesh(&entry(
        "vm-1",
        "default",
        "{address: 10.1.0.1, labels: {app: ratings}, serviceAccount: ratings-vm}",
    ));
    let out = generate(&snap, &client);
    let cla = out
        .endpoints
        .iter()
        .find(|c| c.cluster_name == "outbound|9080||ratings.default.svc.cluster.local")
        .unwrap();
    assert!(cla.endpoints.iter().flat_map(|l| &l.lb_endpoints).all(|e| {
        e.metadata.as_ref().is_some_and(|m| {
            m.filter_metadata
                .contains_key("envoy.transport_socket_match")
        })
    }));
}

/// A ServiceEntry of `namespace` selecting `app: db`, with `resolution`.
fn selecting_entry(namespace: &str, resolution: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db, namespace: {namespace}}}
spec:
  hosts: [db.vm.internal]
  addresses: [240.0.0.10]
  location: MESH_INTERNAL
  resolution: {resolution}
  ports: [{{number: 5432, name: tcp-db, protocol: TCP, targetPort: 15432}}, {{number: 80, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: db}}}}
---
"
    )
}

const DB: &str = "db.vm.internal";

#[test]
fn a_service_entry_selects_workload_entries_and_ready_pods() {
    let pods = "
apiVersion: v1
kind: Pod
metadata: {name: db-pod, namespace: default, labels: {app: db, security.istio.io/tlsMode: istio}}
spec: {serviceAccountName: db, containers: [{name: db, image: db, ports: [{name: tcp-db, containerPort: 25432}]}]}
status: {podIP: 10.244.0.20}
---
apiVersion: v1
kind: Pod
metadata: {name: db-starting, namespace: default, labels: {app: db}}
spec: {containers: [{name: db, image: db}]}
status: {podIP: 10.244.0.21, conditions: [{type: Ready, status: 'False'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db-elsewhere, namespace: shop, labels: {app: db}}
spec: {containers: [{name: db, image: db}]}
status: {podIP: 10.244.0.22}
---
";
    let snap = mesh(
        &(selecting_entry("default", "STATIC")
            + pods
            + &entry(
                "db-vm",
                "default",
                "{address: 10.1.0.10, labels: {app: db}, ports: {http: 8080}}",
            )
            + &entry(
                "db-dns",
                "default",
                "{address: db.example.com, labels: {app: db}}",
            )
            + &entry(
                "db-other",
                "shop",
                "{address: 10.1.0.11, labels: {app: db}}",
            )),
    );
    let found: Vec<(&str, Option<u32>, Option<u32>)> = endpoints(&snap, DB)
        .iter()
        .map(|e| {
            (
                e.address.as_str(),
                e.target_port("tcp-db"),
                e.target_port("http"),
            )
        })
        .collect();
    // Entries first, by name, then ready pods by name: the entry's own
    // port of a name, else `targetPort`, else the number; the pod's named
    // container port likewise. No hostname under STATIC, nothing from
    // another namespace, no pod that is not ready.
    assert_eq!(
        found,
        [
            ("10.1.0.10", Some(15432), Some(8080)),
            ("10.244.0.20", Some(25432), Some(80)),
        ]
    );
    let pod = find(&snap, DB, "10.244.0.20").unwrap();
    assert!(pod.in_mesh());
    assert_eq!(pod.service_account.as_deref(), Some("db"));

    // Under DNS resolution a hostname entry is an endpoint too, and the
    // entry's host is not resolved itself.
    let snap = mesh(
        &(selecting_entry("default", "DNS")
            + &entry(
                "db-dns",
                "default",
                "{address: db.example.com, labels: {app: db}}",
            )),
    );
    let addresses: Vec<&str> = endpoints(&snap, DB)
        .iter()
        .map(|e| e.address.as_str())
        .collect();
    assert_eq!(addresses, ["db.example.com"]);

    // A selector that matches nothing: no endpoints, not the host.
    let snap = mesh(&selecting_entry("shop", "DNS"));
    assert!(endpoints(&snap, DB).is_empty());
}

/// Unix domain sockets (`unix:///PATH`, Istio's `AddressFamilyUnix`): a
/// STATIC ServiceEntry's inline endpoint is Envoy's `Pipe` at PATH in the
/// load assignment (the same bytes from the daemon's own encoder as from
/// prost); a WorkloadEntry on a socket is selected by no ServiceEntry
/// here (Istio selects it for DNS ones only, which cannot resolve it), and
/// that is reported.
#[test]
fn socket_endpoints_are_pipes_and_selected_socket_entries_are_reported() {
    use envoy_types::pb::envoy::config::core::v3::address;
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint;
    let snap = mesh(
        &(selecting_entry("default", "STATIC")
            + &entry(
                "db-uds",
                "default",
                "{address: 'unix:///var/run/db.sock', labels: {app: db}}",
            )
            + "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: uds, namespace: default}
spec:
  hosts: [uds.example.local]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 'unix:///var/run/app.sock'}]
"),
    );
    assert!(endpoints(&snap, DB).is_empty());
    let warnings: Vec<(&str, &str)> = snap
        .warnings
        .iter()
        .map(|w| (w.object.as_str(), w.field.as_str()))
        .collect();
    assert_eq!(warnings, [("default/db", "spec.workloadSelector")]);
    assert!(
        snap.warnings[0]
            .reason
            .contains("WorkloadEntry default/db-uds"),
        "{}",
        snap.warnings[0]
    );
    let client = Proxy::from_node_id(
        "sidecar~10.244.0.99~client.default~default.svc.cluster.local",
        None,
        Default::default(),
    )
    .unwrap();
    let name = "outbound|80||uds.example.local";
    let cla = generate(&snap, &client)
        .endpoints
        .into_iter()
        .find(|c| c.cluster_name == name)
        .unwrap();
    let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) =
        &cla.endpoints[0].lb_endpoints[0].host_identifier
    else {
        panic!("{cla:?}")
    };
    assert!(
        matches!(&ep.address.as_ref().unwrap().address, Some(address::Address::Pipe(p)) if p.path == "/var/run/app.sock"),
        "{ep:?}"
    );
    let encoded = translator::generate_encoded(&snap, &client)
        .endpoints
        .into_iter()
        .find(|(n, ..)| &**n == name)
        .unwrap();
    assert_eq!(
        encoded.2,
        translator::encoded::encode(translator::ENDPOINT_TYPE, name, &cla).2
    );
}

#[test]
fn workload_entries_are_validated_as_istio_does() {
    let entry = |spec: &str| {
        crds::refusal(&format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: vm}}\nspec: {spec}\n"
        ))
    };
    assert_eq!(
        entry("{address: 10.1.0.1, ports: {http: 80}, locality: a/b/c}"),
        None
    );
    assert_eq!(
        entry("{network: net-2}"),
        None,
        "reached through its network"
    );
    let field = |spec: &str| entry(spec).unwrap().0;
    assert_eq!(
        entry("{labels: {app: a}}").unwrap(),
        ("spec.address".into(), "Address is required".into())
    );
    assert_eq!(
        field("{address: 10.1.0.1, ports: {http: 0}}"),
        "spec.ports.http"
    );
    assert_eq!(
        field("{address: 10.1.0.1, ports: {-http: 80}}"),
        "spec.ports"
    );
    assert_eq!(
        field("{address: 10.1.0.1, locality: a//c}"),
        "spec.locality"
    );
    assert_eq!(
        entry("{address: 'unix://@db', ports: {http: 80}}")
            .unwrap()
            .1,
        "UDS may not include ports"
    );
    // An inline endpoint of a STATIC entry must be an IP address.
    let inline = crds::refusal(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: e}\nspec: {hosts: [a.example], ports: [{number: 80, name: http}], resolution: STATIC, endpoints: [{address: a.example}]}\n",
    );
    assert_eq!(inline.unwrap().0, "spec.endpoints[0].address");
}

/// A health-checked WorkloadEntry (`proxy.istio.io/health-checks-enabled`,
/// set by auto-registration when its WorkloadGroup has a `probe`) serves
/// only while its `Healthy` condition is `True` (Istio's `isHealthy`): a new
/// one without the condition, or one whose probe failed, is left out of
/// EDS, for a Kubernetes Service and a ServiceEntry alike, while an entry
/// without the annotation always serves.
#[test]
fn a_health_checked_entry_serves_only_while_healthy() {
    let checked = |name: &str, address: &str, health: Option<&str>| {
        let status = health.map_or(String::new(), |h| {
            format!("status: {{conditions: [{{type: Healthy, status: '{h}'}}]}}\n")
        });
        format!(
            "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: {name}
  namespace: default
  annotations: {{proxy.istio.io/health-checks-enabled: 'true'}}
spec: {{address: {address}, labels: {{app: ratings}}}}
{status}---
"
        )
    };
    let eds = |snap: &Snapshot, cluster: &str| -> Vec<String> {
        let sidecar = Proxy::from_node_id(
            "sidecar~10.244.0.99~client-0.default~default.svc.cluster.local",
            None,
            Default::default(),
        )
        .unwrap();
        let out = generate(snap, &sidecar);
        let cla = out
            .endpoints
            .iter()
            .find(|c| c.cluster_name == cluster)
            .unwrap_or_else(|| panic!("no {cluster}"));
        let mut addresses: Vec<String> = cla
            .endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .map(|e| format!("{:?}", e.host_identifier))
            .filter_map(|text| {
                [
                    "10.0.0.1",
                    "10.0.0.2",
                    "10.0.0.3",
                    "10.0.0.4",
                    "10.244.0.13",
                ]
                .into_iter()
                .find(|a| text.contains(&format!("\"{a}\"")))
                .map(str::to_owned)
            })
            .collect();
        addresses.sort();
        addresses
    };
    let snap = mesh(&format!(
        "{}{}{}{}",
        checked("new", "10.0.0.1", None),
        checked("up", "10.0.0.2", Some("True")),
        checked("down", "10.0.0.3", Some("False")),
        entry(
            "plain",
            "default",
            "{address: 10.0.0.4, labels: {app: ratings}}"
        ),
    ));
    assert_eq!(
        eds(&snap, "outbound|9080||ratings.default.svc.cluster.local"),
        ["10.0.0.2", "10.0.0.4", "10.244.0.13"]
    );
    // Every entry is still known (its own proxy's inbound keeps its place).
    assert!(find(&snap, "ratings.default.svc.cluster.local", "10.0.0.1").is_some());

    // The identity of an entry not serving yet is already among the
    // cluster's SANs, so that its turning healthy changes EDS only (as the
    // change set says): the clients' TLS accepts it once it is sent.
    let vm = |health: Option<&str>| {
        mesh(&checked("vm", "10.0.0.5", health).replace(
            "labels: {app: ratings}",
            "labels: {app: ratings}, serviceAccount: ratings-vm",
        ))
    };
    let (before, after) = (vm(None), vm(Some("True")));
    let sidecar = Proxy::from_node_id(
        "sidecar~10.244.0.99~client-0.default~default.svc.cluster.local",
        None,
        Default::default(),
    )
    .unwrap();
    let cluster = generate(&before, &sidecar)
        .clusters
        .into_iter()
        .find(|c| c.name == "outbound|9080||ratings.default.svc.cluster.local")
        .unwrap();
    let Some(TransportSocket {
        config_type: Some(transport_socket::ConfigType::TypedConfig(tls)),
        ..
    }) = &cluster.transport_socket_matches[0].transport_socket
    else {
        panic!("{cluster:?}")
    };
    let sans = format!(
        "{:?}",
        UpstreamTlsContext::decode(tls.value.as_slice())
            .unwrap()
            .common_tls_context
    );
    assert!(
        sans.contains("spiffe://cluster.local/ns/default/sa/ratings-vm"),
        "{sans}"
    );
    let changes = translator::changes::ChangeSet::between(&before, &after);
    assert!(
        matches!(
            changes.effect(&sidecar),
            translator::changes::Effect::Endpoints(_)
        ),
        "{:?}",
        changes.effect(&sidecar)
    );

    // A ServiceEntry selecting them takes the same rule.
    let se = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings-vms, namespace: default}
spec:
  hosts: [ratings.vm.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: ratings}}
---
";
    let snap = mesh(&format!(
        "{se}{}{}",
        checked("down", "10.0.0.3", Some("False")),
        checked("up", "10.0.0.2", Some("True")),
    ));
    assert_eq!(
        eds(&snap, "outbound|9080||ratings.vm.internal"),
        ["10.0.0.2", "10.244.0.13"]
    );
}
