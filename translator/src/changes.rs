//! What differs between two snapshots, and what that means for one proxy:
//! nothing, new endpoints for some services (EDS only), or a full
//! regeneration. This is how a change reaches only the proxies it can
//! affect: by namespace visibility (`exportTo`), gateway selection and kind.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::model::{Config, Proxy, ProxyKind, Service, Snapshot, exported_to};

/// The differences between a snapshot and the one before it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChangeSet {
    /// The version these changes are relative to.
    pub from_version: u64,
    /// Services whose endpoints alone changed, by hostname (new state).
    pub endpoints: BTreeMap<String, Arc<Service>>,
    /// Services added, removed or otherwise changed: (namespace, exportTo).
    pub services: Vec<(String, Vec<String>)>,
    /// VirtualServices and DestinationRules changed: (namespace, exportTo).
    pub configs: Vec<(String, Vec<String>)>,
    /// Selectors of Gateways changed (old and new).
    pub gateway_selectors: Vec<BTreeMap<String, String>>,
    /// Namespaces of Sidecar resources changed.
    pub sidecar_namespaces: BTreeSet<String>,
    /// Namespaces of PeerAuthentications changed.
    pub peer_auth_namespaces: BTreeSet<String>,
    /// Namespaces of AuthorizationPolicies and RequestAuthentications
    /// changed (the root namespace's apply to every workload).
    pub authz_namespaces: BTreeSet<String>,
    /// Namespaces of Telemetry resources, EnvoyFilters or WasmPlugins
    /// changed (the root namespace's apply to every workload).
    pub telemetry_namespaces: BTreeSet<String>,
    /// Workload addresses whose served ports changed (their sidecars'
    /// `virtualInbound`).
    pub inbound_addresses: BTreeSet<String>,
    /// Hostnames of the services added, removed or changed in any way
    /// (endpoints included).
    pub changed_hosts: BTreeSet<String>,
    /// DestinationRules added, removed or changed: (namespace, name).
    pub changed_rules: BTreeSet<(String, String)>,
    /// The mesh config changed.
    pub mesh: bool,
    /// A Secret changed.
    pub secrets: bool,
    /// A ConfigMap CA that a `configmap://` credential names changed (rare:
    /// every proxy is regenerated).
    pub config_map_cas: bool,
    /// Namespaces of DestinationRules whose `workloadSelector` picks
    /// sidecars that get `credentialName` Secrets, and of WasmPlugins with
    /// an `imagePullSecret` (a Secret change regenerates their proxies, as
    /// it does every gateway).
    pub credential_namespaces: BTreeSet<String>,
    /// The mesh config's `rootNamespace` (a Sidecar there is mesh-wide).
    pub root_namespace: String,
}

/// What a change set means for one proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing it can see changed.
    Nothing,
    /// Only the endpoints of these services (hostnames) changed: EDS only.
    Endpoints(BTreeSet<String>),
    /// Regenerate everything.
    Full,
}

impl ChangeSet {
    /// The changes from `old` to `new`.
    pub fn between(old: &Snapshot, new: &Snapshot) -> ChangeSet {
        let mut c = ChangeSet {
            from_version: old.version,
            mesh: old.mesh != new.mesh,
            secrets: old.secrets != new.secrets,
            config_map_cas: old.config_map_cas != new.config_map_cas,
            root_namespace: new.mesh.root_namespace.clone(),
            ..Default::default()
        };
        let hosts: BTreeSet<&String> = old.services.keys().chain(new.services.keys()).collect();
        for host in hosts {
            match (old.services.get(host), new.services.get(host)) {
                // The same service (see `Snapshot::rebuild`), or an equal one.
                (Some(a), Some(b)) if Arc::ptr_eq(a, b) || a == b => continue,
                (Some(a), Some(b)) if without_endpoints(a) == without_endpoints(b) => {
                    c.endpoints.insert(host.clone(), b.clone());
                }
                (a, b) => {
                    for s in [a, b].into_iter().flatten() {
                        c.services.push((s.namespace.clone(), s.export_to.clone()));
                    }
                }
            }
            c.changed_hosts.insert(host.clone());
        }
        diff(&old.virtual_services, &new.virtual_services, |cfg| {
            c.configs
                .push((cfg.namespace.clone(), cfg.spec.export_to.clone()))
        });
        if c.secrets {
            c.credential_namespaces = [old, new]
                .iter()
                .flat_map(|snap| &snap.destination_rules)
                .filter(|dr| dr.spec.workload_selector.is_some() && dr.spec.names_credential())
                .map(|dr| dr.namespace.clone())
                .collect();
            // A WasmPlugin's pull secret goes to its namespace's proxies.
            c.credential_namespaces.extend(
                [old, new]
                    .iter()
                    .flat_map(|snap| &snap.wasm_plugins)
                    .filter(|p| p.spec.image_pull_secret.is_some())
                    .map(|p| p.namespace.clone()),
            );
        }
        diff(&old.destination_rules, &new.destination_rules, |cfg| {
            c.configs
                .push((cfg.namespace.clone(), cfg.spec.export_to.clone()));
            c.changed_rules
                .insert((cfg.namespace.clone(), cfg.name.clone()));
        });
        diff(&old.gateways, &new.gateways, |cfg| {
            c.gateway_selectors.push(cfg.spec.selector.clone())
        });
        diff(&old.sidecars, &new.sidecars, |cfg| {
            c.sidecar_namespaces.insert(cfg.namespace.clone());
        });
        diff(
            &old.peer_authentications,
            &new.peer_authentications,
            |cfg| {
                c.peer_auth_namespaces.insert(cfg.namespace.clone());
            },
        );
        diff(
            &old.authorization_policies,
            &new.authorization_policies,
            |cfg| {
                c.authz_namespaces.insert(cfg.namespace.clone());
            },
        );
        diff(
            &old.request_authentications,
            &new.request_authentications,
            |cfg| {
                c.authz_namespaces.insert(cfg.namespace.clone());
            },
        );
        diff(&old.telemetries, &new.telemetries, |cfg| {
            c.telemetry_namespaces.insert(cfg.namespace.clone());
        });
        // An EnvoyFilter patches anything of its namespace's workloads (or,
        // from the root namespace, of every workload).
        diff(&old.envoy_filters, &new.envoy_filters, |cfg| {
            c.telemetry_namespaces.insert(cfg.namespace.clone());
        });
        // A WasmPlugin: its namespace's workloads' filters and extension configs.
        diff(&old.wasm_plugins, &new.wasm_plugins, |cfg| {
            c.telemetry_namespaces.insert(cfg.namespace.clone());
        });
        c.inbound_addresses = old.inbound_changes(new);
        c
    }

    /// What these changes mean for `proxy`.
    pub fn effect(&self, proxy: &Proxy) -> Effect {
        let ns = proxy.namespace.as_str();
        let router = proxy.kind == ProxyKind::Router;
        // A Sidecar of the proxy's namespace, or a mesh-wide one, may change its scope.
        let sidecar_changed = !router
            && (self.sidecar_namespaces.contains(ns)
                || self.sidecar_namespaces.contains(&self.root_namespace));
        // Its inbound (the ports it serves), or any PeerAuthentication: those
        // decide its own inbound and, through auto mTLS, its clients'
        // clusters; they change rarely, so every sidecar is regenerated.
        // A gateway's: the Services its pod serves, whose ports translate
        // its servers' ([`crate::model::Snapshot::gateway_ports`]).
        let inbound_changed = self.inbound_addresses.contains(&proxy.ip)
            || (!router && !self.peer_auth_namespaces.is_empty());
        // An AuthorizationPolicy or RequestAuthentication of its namespace or
        // the mesh's: a sidecar's inbound filters, a gateway's listeners'.
        let authz_changed = self.authz_namespaces.contains(ns)
            || self.authz_namespaces.contains(&self.root_namespace);
        // A Telemetry (or an EnvoyFilter, a WasmPlugin) of its namespace or
        // the mesh's: its tracing and access logs (anything, for an
        // EnvoyFilter; its filters and extension configs, for a WasmPlugin).
        let telemetry_changed = self.telemetry_namespaces.contains(ns)
            || self.telemetry_namespaces.contains(&self.root_namespace);
        let full = self.mesh
            || self.config_map_cas
            || sidecar_changed
            || authz_changed
            || telemetry_changed
            || inbound_changed
            || self
                .services
                .iter()
                .any(|(owner, export)| exported_to(export, owner, ns))
            || self
                .configs
                .iter()
                .any(|(owner, export)| exported_to(export, owner, ns))
            || (self.secrets && (router || self.credential_namespaces.contains(ns)))
            || (router
                && self.gateway_selectors.iter().any(|sel| {
                    !sel.is_empty() && sel.iter().all(|(k, v)| proxy.labels.get(k) == Some(v))
                }));
        if full {
            return Effect::Full;
        }
        let hosts: BTreeSet<String> = self
            .endpoints
            .iter()
            .filter(|(_, s)| exported_to(&s.export_to, &s.namespace, ns))
            .map(|(h, _)| h.clone())
            .collect();
        if hosts.is_empty() {
            Effect::Nothing
        } else {
            Effect::Endpoints(hosts)
        }
    }
}

/// The service without its endpoints, but with what of them the clusters
/// carry: the service accounts behind them (`ISTIO_MUTUAL` SAN checks) and
/// whether any is in the mesh (auto mTLS), so a change of those is not an
/// endpoint-only change.
fn without_endpoints(s: &Service) -> (Service, BTreeSet<String>, bool) {
    let accounts = s
        .endpoints
        .iter()
        .filter_map(|e| e.service_account.clone())
        .collect();
    (
        Service {
            endpoints: Vec::new(),
            ..s.clone()
        },
        accounts,
        s.endpoints.iter().any(crate::model::Endpoint::in_mesh),
    )
}

/// Calls `changed` for every config added, removed or modified (both sides
/// of a modification, as either may have been visible).
fn diff<S: PartialEq>(old: &[Config<S>], new: &[Config<S>], mut changed: impl FnMut(&Config<S>)) {
    let key = |c: &Config<S>| (c.namespace.clone(), c.name.clone());
    let old_by: BTreeMap<_, _> = old.iter().map(|c| (key(c), c)).collect();
    let new_by: BTreeMap<_, _> = new.iter().map(|c| (key(c), c)).collect();
    for (k, o) in &old_by {
        match new_by.get(k) {
            Some(n) if n == o => {}
            Some(n) => {
                changed(o);
                changed(n);
            }
            None => changed(o),
        }
    }
    for (k, n) in &new_by {
        if !old_by.contains_key(k) {
            changed(n);
        }
    }
}
