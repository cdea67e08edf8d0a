//! Istio's VM integration, in miniature and for real: a "VM" (a network
//! namespace on the pod bridge that no Pod or EndpointSlice describes)
//! joins the mesh through its WorkloadEntry alone. It runs a node agent
//! with the identity its entry names and an Envoy sidecar (with
//! `istio-init`'s capture) that the daemon configures from the entry.
//!
//! The Kubernetes Service `ratings` selects the VM's entry beside its pod,
//! so productpage's plain calls to the ClusterIP reach both; auto mTLS
//! reaches the VM because its entry names a service account (Istio's TLS
//! mode of a WorkloadEntry). A ServiceEntry with a `workloadSelector`
//! gives the VM a host of its own. A second VM registers itself: its
//! proxy names a WorkloadGroup, and the daemon makes its WorkloadEntry
//! while it is connected.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::collections::BTreeMap;
use std::time::Duration;

use ca::SpiffeId;
use e2e::pods::{NODE_IP, Pod, create_pod_network, serve_echo};
use e2e::{ConfigDir, SYNC, http_request, isolate, start_agent_with_ttl};

/// ratings (ClusterIP 10.96.0.60, selecting `app: ratings`) with one pod
/// at 10.244.0.12 and the VM's WorkloadEntry at 10.244.0.30; productpage's
/// pod at 10.244.0.11.
const PLATFORM: &str = "
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: default}
spec:
  clusterIP: 10.96.0.60
  selector: {app: ratings}
  ports: [{name: http, port: 9080, targetPort: 9080}]
---
apiVersion: v1
kind: Pod
metadata:
  name: ratings-0
  namespace: default
  labels: {app: ratings, version: v1, security.istio.io/tlsMode: istio}
spec: {serviceAccountName: ratings, containers: [{name: ratings, image: ratings}]}
status: {podIP: 10.244.0.12}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ratings-1, namespace: default, labels: {kubernetes.io/service-name: ratings}}
addressType: IPv4
ports: [{name: http, port: 9080}]
endpoints: [{addresses: [10.244.0.12], targetRef: {kind: Pod, name: ratings-0, namespace: default}}]
---
apiVersion: v1
kind: Pod
metadata:
  name: productpage-0
  namespace: default
  labels: {app: productpage, security.istio.io/tlsMode: istio}
spec: {serviceAccountName: productpage, containers: [{name: productpage, image: productpage}]}
status: {podIP: 10.244.0.11}
";

/// The VM, as `istioctl x workload entry configure` leaves it described:
/// an address, labels and the service account its sidecar runs as.
const VM_ENTRY: &str = "
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ratings-vm, namespace: default}
spec:
  address: 10.244.0.30
  labels: {app: ratings, version: vm}
  serviceAccount: ratings-vm
";

/// A host of the VM's own, by its labels.
const VM_SERVICE: &str = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings-vm, namespace: default}
spec:
  hosts: [ratings.vm.internal]
  addresses: [10.96.0.70]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 9080}]
  workloadSelector: {labels: {version: vm}}
";

/// Everything to `ratings`' VM, by subset.
const TO_THE_VM: &str = "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: default}
spec:
  host: ratings
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: vm, labels: {version: vm}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http: [{route: [{destination: {host: ratings, subset: vm}}]}]
";

fn id(sa: &str) -> SpiffeId {
    SpiffeId {
        trust_domain: "cluster.local".into(),
        namespace: "default".into(),
        service_account: sa.into(),
    }
}

/// The `key=` line of an echo reply.
fn line<'a>(body: &'a str, key: &str) -> &'a str {
    body.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {body}"))
}

/// The label Istio's injector gives pods with a sidecar.
const MESH_LABEL: (&str, &str) = ("security.istio.io/tlsMode", "istio");

/// A test's world: the pod network with productpage's and ratings' pods
/// and a VM (each with `istio-init`'s capture), the daemon on the platform
/// and one more config file, and echo servers on ratings' pod and the VM.
/// (Fields drop in order: the daemon before its runtime, the network
/// namespaces last.)
struct World {
    daemon: istiod::Daemon,
    rt: tokio::runtime::Runtime,
    cfg: ConfigDir,
    client: Pod,
    pod: Pod,
    vm: Pod,
    _hosts: std::path::PathBuf,
}

impl World {
    /// The VM is `(name, ip)`; `file` is `(file name, YAML)`.
    fn start((vm_name, vm_ip): (&str, &str), (file, yaml): (&str, &str)) -> World {
        let hosts = isolate();
        create_pod_network();
        let client = Pod::create("productpage-0", "10.244.0.11");
        let pod = Pod::create("ratings-0", "10.244.0.12");
        let vm = Pod::create(vm_name, vm_ip);
        for p in [&client, &pod, &vm] {
            p.capture();
        }
        let cfg = ConfigDir::empty();
        cfg.write("platform.yaml", PLATFORM);
        cfg.write(file, yaml);
        let rt = e2e::runtime();
        let daemon = rt.block_on(e2e::start_daemon_at(
            cfg.path(),
            format!("{NODE_IP}:0").parse().unwrap(),
        ));
        serve_echo(&pod, rt.handle());
        serve_echo(&vm, rt.handle());
        World {
            daemon,
            rt,
            cfg,
            client,
            pod,
            vm,
            _hosts: hosts,
        }
    }

    /// `p`'s node agent (as service account `sa`) and sidecar, with
    /// `labels` and node `metadata`.
    fn sidecar(
        &self,
        p: &Pod,
        sa: &str,
        labels: &[(&str, &str)],
        metadata: &[(&str, &str)],
    ) -> e2e::Envoy {
        let socket = start_agent_with_ttl(
            self.rt.handle(),
            &self.daemon,
            id(sa),
            Duration::from_secs(3600),
        );
        p.start_sidecar_with(&socket, labels, metadata, self.daemon.xds_addr)
    }

    /// productpage's and ratings' pod's sidecars.
    fn pod_sidecars(&self) -> (e2e::Envoy, e2e::Envoy) {
        (
            self.sidecar(
                &self.client,
                "productpage",
                &[("app", "productpage"), MESH_LABEL],
                &[],
            ),
            self.sidecar(
                &self.pod,
                "ratings",
                &[("app", "ratings"), ("version", "v1"), MESH_LABEL],
                &[],
            ),
        )
    }
}

#[test]
fn a_vm_joins_the_mesh_through_its_workload_entry() {
    let world = World::start(("ratings-vm", "10.244.0.30"), ("vm.yaml", VM_ENTRY));
    let World {
        daemon,
        cfg,
        client,
        ..
    } = &world;

    // Each workload's agent and sidecar; the VM's proxy knows itself by
    // its address, namespace and labels only (no Pod describes it).
    let (client_envoy, pod_envoy) = world.pod_sidecars();
    let vm_envoy = world.sidecar(
        &world.vm,
        "ratings-vm",
        &[("app", "ratings"), ("version", "vm")],
        &[],
    );
    let envoys = [&client_envoy, &pod_envoy, &vm_envoy];
    e2e::wait_synced(daemon, &envoys, SYNC);

    let call = |url: &str, host: &str| {
        client
            .run(|| http_request(url, &[("host", host)]))
            .unwrap_or_else(|e| panic!("{url}: {e}"))
    };
    let ratings = "http://10.96.0.60:9080/ratings/0";

    // The Service's plain calls reach the pod and the VM, each over mTLS
    // that its sidecar terminated with its own identity.
    let mut by_workload: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for _ in 0..40 {
        let reply = call(ratings, "ratings");
        assert_eq!(reply.status, 200, "{}", reply.body);
        by_workload
            .entry(line(&reply.body, "pod=").to_owned())
            .or_default()
            .push(line(&reply.body, "xfcc=").to_owned());
    }
    assert_eq!(
        by_workload.keys().collect::<Vec<_>>(),
        ["ratings-0", "ratings-vm"],
        "both endpoints serve (2 x 0.5^40 to miss one by chance)"
    );
    let caller = "URI=spiffe://cluster.local/ns/default/sa/productpage";
    for (workload, account) in [("ratings-0", "ratings"), ("ratings-vm", "ratings-vm")] {
        let server = format!("By=spiffe://cluster.local/ns/default/sa/{account};");
        for xfcc in &by_workload[workload] {
            assert!(
                xfcc.contains(&server) && xfcc.contains(caller),
                "{workload}: {xfcc}"
            );
        }
    }
    assert!(
        vm_envoy.stat("listener.0.0.0.0_15006.ssl.handshake") > 0,
        "the VM's sidecar terminated the mTLS"
    );

    // Its entry's labels are a subset's: everything to the VM.
    e2e::apply(daemon, &envoys, || cfg.write("route.yaml", TO_THE_VM));
    for _ in 0..10 {
        let reply = call(ratings, "ratings");
        assert_eq!(line(&reply.body, "pod="), "ratings-vm", "{}", reply.body);
    }

    // A ServiceEntry selecting the VM gives it a host of its own (its
    // port 80 reaches the VM's 9080).
    e2e::apply(daemon, &envoys, || cfg.write("vm-service.yaml", VM_SERVICE));
    let own = "http://10.96.0.70/";
    let reply = call(own, "ratings.vm.internal");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(line(&reply.body, "pod="), "ratings-vm");

    // The VM leaves: its entry is removed. The Service has its pod only,
    // the ServiceEntry nothing to send to.
    e2e::apply(daemon, &envoys, || {
        cfg.remove("route.yaml");
        cfg.remove("vm.yaml");
    });
    for _ in 0..10 {
        let reply = call(ratings, "ratings");
        assert_eq!(line(&reply.body, "pod="), "ratings-0", "{}", reply.body);
    }
    let reply = call(own, "ratings.vm.internal");
    assert_eq!(reply.status, 503, "{}", reply.body);
    for envoy in envoys {
        assert_eq!(envoy.rejected(), 0);
    }
}

/// The VMs' group: each VM whose proxy names it gets a WorkloadEntry with
/// these labels and service account at its own address.
const VM_GROUP: &str = "
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: ratings-vms, namespace: default}
spec:
  metadata: {labels: {app: ratings, version: vm}}
  template: {serviceAccount: ratings-vm}
";

/// WorkloadEntry auto-registration (Istio's VM onboarding): no entry is
/// written for the VM; its proxy connects with node metadata
/// `AUTO_REGISTER_GROUP: ratings-vms`, and the daemon makes its entry from
/// the group, so the Service `ratings` selects it and productpage's calls
/// reach the VM over mTLS. Once the VM's proxy is gone for the grace period
/// (1 s in the tests, Istio's 10 s by default) the entry goes, and only
/// the pod serves.
#[test]
fn a_vm_registers_itself_in_its_workload_group() {
    let world = World::start(("ratings-vm-1", "10.244.0.31"), ("group.yaml", VM_GROUP));
    let World { daemon, client, .. } = &world;
    let (client_envoy, pod_envoy) = world.pod_sidecars();
    let ratings_hosts = || client_envoy.hosts("outbound|9080||ratings.default.svc.cluster.local");
    e2e::wait_synced(daemon, &[&client_envoy, &pod_envoy], SYNC);
    assert_eq!(ratings_hosts(), ["10.244.0.12:9080"]);

    let vm_envoy = world.sidecar(
        &world.vm,
        "ratings-vm",
        &[("app", "ratings")],
        &[("AUTO_REGISTER_GROUP", "ratings-vms")],
    );
    e2e::eventually(
        SYNC,
        || (ratings_hosts() == ["10.244.0.12:9080", "10.244.0.31:9080"]).then_some(()),
        || format!("the VM did not join ratings: {:?}", ratings_hosts()),
    );
    let registered = daemon.snapshots.borrow().services["ratings.default.svc.cluster.local"]
        .endpoints
        .iter()
        .any(|e| e.address == "10.244.0.31");
    assert!(registered, "the entry is an endpoint of the Service");
    e2e::wait_synced(daemon, &[&client_envoy, &pod_envoy, &vm_envoy], SYNC);

    let call = || {
        client
            .run(|| http_request("http://10.96.0.60:9080/ratings/0", &[("host", "ratings")]))
            .unwrap_or_else(|e| panic!("ratings: {e}"))
    };
    let mut seen = BTreeMap::new();
    for _ in 0..40 {
        let reply = call();
        assert_eq!(reply.status, 200, "{}", reply.body);
        let xfcc = line(&reply.body, "xfcc=").to_owned();
        seen.insert(line(&reply.body, "pod=").to_owned(), xfcc);
    }
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["ratings-0", "ratings-vm-1"],
        "both endpoints serve (2 x 0.5^40 to miss one by chance)"
    );
    assert!(
        seen["ratings-vm-1"].contains("By=spiffe://cluster.local/ns/default/sa/ratings-vm;"),
        "the VM's sidecar terminated the mTLS as the group's account: {}",
        seen["ratings-vm-1"]
    );

    // The VM goes: after the grace period its entry is removed.
    drop(vm_envoy);
    e2e::eventually(
        SYNC,
        || (ratings_hosts() == ["10.244.0.12:9080"]).then_some(()),
        || format!("the VM's entry stayed: {:?}", ratings_hosts()),
    );
    for _ in 0..10 {
        let reply = call();
        assert_eq!(line(&reply.body, "pod="), "ratings-0", "{}", reply.body);
    }
    assert_eq!(client_envoy.rejected() + pod_envoy.rejected(), 0);
}

/// A proxy naming a WorkloadGroup its namespace does not have is refused
/// (`FAILED_PRECONDITION`, naming the group), as istiod refuses the
/// connection when registration fails.
#[test]
fn a_proxy_naming_no_workload_group_is_refused() {
    let cfg = ConfigDir::empty();
    cfg.write("group.yaml", VM_GROUP);
    let rt = e2e::runtime();
    rt.block_on(async {
        let daemon = e2e::start_daemon(cfg.path()).await;
        let node = "sidecar~10.0.0.9~vm-1.default~default.svc.cluster.local";
        let mut refused =
            e2e::ads_stream(daemon.xds_addr, node, &[("AUTO_REGISTER_GROUP", "nope")]).await;
        let status = refused.responses.message().await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
        assert!(
            status.message().contains("no WorkloadGroup default/nope"),
            "{status:?}"
        );
        let mut served = e2e::ads_stream(
            daemon.xds_addr,
            node,
            &[("AUTO_REGISTER_GROUP", "ratings-vms")],
        )
        .await;
        let clusters = served.responses.message().await.unwrap().unwrap();
        assert!(!clusters.resources.is_empty());
    });
}

/// Istio's VM health checks: the WorkloadGroup has a readiness `probe`, so
/// the VM's auto-registered entry is health-checked and serves only once
/// the probe passes. The VM's agent runs the probe (here a command that
/// checks a file, `periodSeconds: 1`) and reports through its xDS proxy,
/// which the VM's Envoy connects to instead of the daemon: the entry is
/// registered unhealthy (productpage's sidecar is not sent it), becomes an
/// endpoint when the probe passes, and leaves EDS again when it fails.
#[test]
fn a_vm_serves_only_while_its_readiness_probe_passes() {
    use std::os::unix::fs::PermissionsExt;
    // The group, with a probe (the agent is given the one to run below).
    let group = format!("{VM_GROUP}  probe: {{exec: {{command: [/bin/true]}}}}\n");
    let world = World::start(("ratings-vm-1", "10.244.0.31"), ("group.yaml", &group));
    let World { daemon, client, .. } = &world;
    let (client_envoy, pod_envoy) = world.pod_sidecars();
    let ratings_hosts = || client_envoy.hosts("outbound|9080||ratings.default.svc.cluster.local");
    e2e::wait_synced(daemon, &[&client_envoy, &pod_envoy], SYNC);
    assert_eq!(ratings_hosts(), ["10.244.0.12:9080"]);

    // The VM's agent: the probe, as `istioctl x workload entry configure`
    // gives it the group's (here checking a file the test makes), and the
    // xDS proxy its Envoy connects to.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ready = dir.path().join("ready");
    let socket = dir.path().join("XDS");
    let token = tokio_util::sync::CancellationToken::new();
    let _stop = token.clone().drop_guard();
    let prober = istiod::health::Prober::parse(&format!(
        "{{exec: {{command: [test, -e, {}]}}, periodSeconds: 1}}",
        ready.display()
    ))
    .unwrap();
    let (report, health) = tokio::sync::watch::channel(None);
    world.rt.spawn(prober.run(report, token.clone()));
    let _proxy = {
        let _in_runtime = world.rt.enter();
        istiod::xds_proxy::serve(
            socket.clone(),
            &daemon.xds_addr.to_string(),
            health,
            istiod::wasm::ModuleCache::new(socket.with_file_name("wasm")),
            None,
            token.clone(),
        )
        .unwrap()
    };
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let sds = start_agent_with_ttl(
        world.rt.handle(),
        daemon,
        id("ratings-vm"),
        Duration::from_secs(3600),
    );
    let vm_envoy = world.vm.start_sidecar_through(
        &sds,
        Some(&socket),
        &[("app", "ratings")],
        &[("AUTO_REGISTER_GROUP", "ratings-vms")],
        daemon.xds_addr,
    );
    // Registered through the proxy, but not healthy yet: not an endpoint
    // productpage's sidecar is sent.
    let vm_endpoint = || {
        daemon.snapshots.borrow().services["ratings.default.svc.cluster.local"]
            .endpoints
            .iter()
            .find(|e| e.address == "10.244.0.31")
            .map(|e| e.ready)
    };
    e2e::eventually(
        SYNC,
        || vm_endpoint().is_some().then_some(()),
        || "the VM was not registered".to_owned(),
    );
    assert_eq!(vm_endpoint(), Some(false), "registered unhealthy");
    e2e::wait_synced(daemon, &[&client_envoy, &pod_envoy, &vm_envoy], SYNC);
    assert_eq!(ratings_hosts(), ["10.244.0.12:9080"]);

    // The probe passes: the VM serves.
    std::fs::write(&ready, "").unwrap();
    e2e::eventually(
        SYNC,
        || (ratings_hosts() == ["10.244.0.12:9080", "10.244.0.31:9080"]).then_some(()),
        || format!("the VM did not become an endpoint: {:?}", ratings_hosts()),
    );
    let mut seen = BTreeMap::new();
    for _ in 0..40 {
        let reply = client
            .run(|| http_request("http://10.96.0.60:9080/ratings/0", &[("host", "ratings")]))
            .unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
        *seen
            .entry(line(&reply.body, "pod=").to_owned())
            .or_insert(0) += 1;
    }
    assert!(seen.contains_key("ratings-vm-1"), "{seen:?}");

    // It fails: the VM leaves EDS, its proxy still connected.
    std::fs::remove_file(&ready).unwrap();
    e2e::eventually(
        SYNC,
        || (ratings_hosts() == ["10.244.0.12:9080"]).then_some(()),
        || format!("the VM stayed an endpoint: {:?}", ratings_hosts()),
    );
    assert_eq!(vm_endpoint(), Some(false));
    assert_eq!(
        client_envoy.rejected() + pod_envoy.rejected() + vm_envoy.rejected(),
        0
    );
}
