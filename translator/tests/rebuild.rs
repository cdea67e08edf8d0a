//! `Snapshot::rebuild` against `Snapshot::build`: whatever objects are
//! replaced, added or removed between two loads, the rebuilt snapshot has
//! the services a fresh build has, and the change set between two rebuilt
//! snapshots is the one between two fresh builds. Services whose inputs
//! (their `Service`, `EndpointSlice`s and endpoints' Pods) are the very
//! same objects are the previous snapshot's own `Arc`s; any other is built
//! again.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::collections::BTreeMap;
use std::sync::Arc;

use crds::document::{Object, parse_value, split_documents};
use translator::changes::ChangeSet;
use translator::model::{MeshConfig, Snapshot};

/// Objects by a name of the test's own, each parsed once and shared, as
/// the daemon's sources keep them.
#[derive(Clone, Default)]
struct Objects(BTreeMap<&'static str, Arc<Object>>);

impl Objects {
    /// Parses `yaml` (one document) as the object called `key`, replacing
    /// the object of that key if any.
    fn put(&mut self, key: &'static str, yaml: &str) {
        let (_, value) = split_documents(yaml).into_iter().next().unwrap();
        let object = parse_value(value.unwrap(), "default").into_iter().next();
        self.0.insert(key, Arc::new(object.unwrap().unwrap()));
    }

    fn remove(&mut self, key: &str) {
        self.0.remove(key);
    }

    fn rebuild(&self, version: u64, previous: &Snapshot) -> Snapshot {
        Snapshot::rebuild(version, self.0.values(), MeshConfig::default(), previous)
    }

    fn build(&self, version: u64) -> Snapshot {
        Snapshot::build(
            version,
            self.0.values().map(|o| &**o),
            MeshConfig::default(),
        )
    }
}

fn service(name: &str, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{clusterIP: 10.96.0.{port}, ports: [{{name: http, port: {port}}}]}}\n"
    )
}

/// A slice of service `name` with one endpoint per `(address, pod)`; a
/// pod of `None` has no `targetRef` (its Pod is found by address, if any).
fn slice(name: &str, endpoints: &[(&str, Option<&str>)]) -> String {
    let mut y = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n"
    );
    for (address, pod) in endpoints {
        match pod {
            Some(pod) => y.push_str(&format!(
                "- {{addresses: [{address}], targetRef: {{kind: Pod, name: {pod}}}}}\n"
            )),
            None => y.push_str(&format!("- {{addresses: [{address}]}}\n")),
        }
    }
    y
}

fn pod(name: &str, ip: &str, version: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: x, version: {version}}}}}\nspec: {{serviceAccountName: {name}}}\nstatus: {{podIP: {ip}}}\n"
    )
}

const A: &str = "a.default.svc.cluster.local";
const B: &str = "b.default.svc.cluster.local";

fn mesh() -> Objects {
    let mut o = Objects::default();
    o.put("svc-a", &service("a", 80));
    o.put(
        "slice-a",
        &slice(
            "a",
            &[
                ("10.0.0.1", Some("a-0")),
                ("10.0.0.2", None),
                ("10.0.0.3", None),
            ],
        ),
    );
    o.put("pod-a-0", &pod("a-0", "10.0.0.1", "v1"));
    o.put("pod-a-1", &pod("a-1", "10.0.0.2", "v2"));
    o.put("svc-b", &service("b", 81));
    o.put("slice-b", &slice("b", &[("10.0.1.1", Some("b-0"))]));
    o.put("pod-b-0", &pod("b-0", "10.0.1.1", "v1"));
    o
}

/// Checks `next` rebuilt from `previous` against fresh builds, and
/// returns which services are `previous`'s own (by hostname).
fn check(previous: (&Objects, &Snapshot), next: &Objects) -> (Snapshot, Vec<&'static str>) {
    let (before, old) = previous;
    let rebuilt = next.rebuild(old.version + 1, old);
    let fresh = next.build(old.version + 1);
    assert_eq!(
        rebuilt.services, fresh.services,
        "the services of a fresh build"
    );
    // Every workload address either snapshot knows serves the same ports.
    let addresses: std::collections::BTreeSet<&str> = [&rebuilt, &fresh, old]
        .iter()
        .flat_map(|s| s.services.values())
        .flat_map(|s| s.endpoints.iter().map(|e| e.address.as_str()))
        .collect();
    assert!(!addresses.is_empty());
    for address in addresses {
        assert_eq!(
            rebuilt.inbound_ports(address),
            fresh.inbound_ports(address),
            "{address}"
        );
    }
    assert_eq!(
        ChangeSet::between(old, &rebuilt),
        ChangeSet::between(&before.build(old.version), &fresh),
        "the change set of two fresh builds"
    );
    let kept = [A, B]
        .into_iter()
        .filter(|h| match (old.services.get(*h), rebuilt.services.get(*h)) {
            (Some(x), Some(y)) => Arc::ptr_eq(x, y),
            _ => false,
        })
        .collect();
    (rebuilt, kept)
}

#[test]
fn services_built_from_the_same_objects_are_reused_and_no_others() {
    let first = mesh();
    let empty = Snapshot::default();
    let (snap, kept) = check((&Objects::default(), &empty), &first);
    assert!(kept.is_empty(), "nothing to reuse from an empty snapshot");
    assert_eq!(snap.services.len(), 2);

    // The same objects: both services are the previous ones, and nothing changed.
    let (again, kept) = check((&first, &snap), &first);
    assert_eq!(kept, [A, B]);
    let changes = ChangeSet::between(&snap, &again);
    assert!(changes.changed_hosts.is_empty(), "{changes:?}");

    // An endpoint's Pod (by targetRef) relabelled: `a` again, `b` kept.
    let mut next = first.clone();
    next.put("pod-a-0", &pod("a-0", "10.0.0.1", "v3"));
    let (s1, kept) = check((&first, &again), &next);
    assert_eq!(kept, [B]);

    // A Pod appears at an address an endpoint had no Pod for.
    let mut next2 = next.clone();
    next2.put("pod-a-2", &pod("a-2", "10.0.0.3", "v1"));
    let (s2, kept) = check((&next, &s1), &next2);
    assert_eq!(kept, [B]);
    assert!(
        s2.services[A]
            .endpoints
            .iter()
            .any(|e| e.address == "10.0.0.3"
                && e.labels.get("version").map(String::as_str) == Some("v1"))
    );

    // The same text parsed again is a new object: built again, equal,
    // and not a change.
    let mut next3 = next2.clone();
    next3.put("slice-b", &slice("b", &[("10.0.1.1", Some("b-0"))]));
    let (s3, kept) = check((&next2, &s2), &next3);
    assert_eq!(kept, [A]);
    assert!(ChangeSet::between(&s2, &s3).changed_hosts.is_empty());

    // An endpoint added to `b`'s slice, and `b`'s Service replaced.
    let mut next4 = next3.clone();
    next4.put(
        "slice-b",
        &slice("b", &[("10.0.1.1", Some("b-0")), ("10.0.1.2", None)]),
    );
    let (s4, kept) = check((&next3, &s3), &next4);
    assert_eq!(kept, [A]);
    let mut next5 = next4.clone();
    next5.put("svc-b", &service("b", 82));
    let (s5, kept) = check((&next4, &s4), &next5);
    assert_eq!(kept, [A]);

    // A Pod by address removed; then a slice, then a Service.
    let mut next6 = next5.clone();
    next6.remove("pod-a-1");
    let (s6, kept) = check((&next5, &s5), &next6);
    assert_eq!(kept, [B]);
    let mut next7 = next6.clone();
    next7.remove("slice-a");
    let (s7, kept) = check((&next6, &s6), &next7);
    assert_eq!(kept, [B]);
    assert!(s7.services[A].endpoints.is_empty());
    let mut next8 = next7.clone();
    next8.remove("svc-a");
    let (s8, kept) = check((&next7, &s7), &next8);
    assert_eq!(kept, [B]);
    assert!(!s8.services.contains_key(A));

    // And from a snapshot built without shared objects: nothing reused.
    let (_, kept) = check((&next8, &next8.build(9)), &next8);
    assert!(kept.is_empty());
}

/// A service that a ServiceEntry host and a Kubernetes Service both
/// name is the Kubernetes one, reused or not.
#[test]
fn a_kubernetes_service_over_a_service_entry_host_is_reused_too() {
    let mut first = mesh();
    first.put(
        "se",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: se}}\nspec: {{hosts: [{A}], ports: [{{number: 80, name: http, protocol: HTTP}}], resolution: STATIC, endpoints: [{{address: 10.9.9.9}}]}}\n"
        ),
    );
    let (snap, _) = check((&Objects::default(), &Snapshot::default()), &first);
    assert!(snap.services[A].kubernetes);
    let (again, kept) = check((&first, &snap), &first);
    assert_eq!(kept, [A, B]);
    assert!(again.services[A].kubernetes);
}

/// The WorkloadEntries a Kubernetes Service selects are among its inputs:
/// one added, replaced or removed rebuilds that service, and only that
/// one; an entry it does not select rebuilds nothing.
#[test]
fn workload_entries_a_service_selects_are_among_its_inputs() {
    let mut first = mesh();
    first.put(
        "svc-a",
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.96.0.80, selector: {app: vm}, ports: [{name: http, port: 80, targetPort: 8080}]}\n",
    );
    let entry = |address: &str, app: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: vm}}\nspec: {{address: {address}, labels: {{app: {app}}}, serviceAccount: vm}}\n"
        )
    };
    let (snap, _) = check((&Objects::default(), &Snapshot::default()), &first);
    let (snap, kept) = check((&first, &snap), &first);
    assert_eq!(kept, [A, B]);

    let mut next = first.clone();
    next.put("we-vm", &entry("10.1.0.1", "vm"));
    let (s1, kept) = check((&first, &snap), &next);
    assert_eq!(kept, [B]);
    let vm = s1.services[A]
        .endpoints
        .iter()
        .find(|e| e.address == "10.1.0.1")
        .unwrap();
    assert_eq!(vm.target_port("http"), Some(8080));
    // The same entry: both kept; moved: `a` again.
    let (s2, kept) = check((&next, &s1), &next);
    assert_eq!(kept, [A, B]);
    let mut moved = next.clone();
    moved.put("we-vm", &entry("10.1.0.2", "vm"));
    let (s3, kept) = check((&next, &s2), &moved);
    assert_eq!(kept, [B]);
    // Relabelled so that `a` no longer selects it, then gone.
    let mut other = moved.clone();
    other.put("we-vm", &entry("10.1.0.2", "other"));
    let (s4, kept) = check((&moved, &s3), &other);
    assert_eq!(kept, [B]);
    assert!(
        s4.services[A]
            .endpoints
            .iter()
            .all(|e| e.address.starts_with("10.0.0."))
    );
    let mut gone = other.clone();
    gone.remove("we-vm");
    let (_, kept) = check((&other, &s4), &gone);
    assert_eq!(kept, [A, B], "an entry no service selected");
}
