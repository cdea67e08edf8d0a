//! `istiod bootstrap`: the Envoy bootstrap a proxy needs to reach this
//! daemon over ADS with the right node identity, as Istio's agent writes it
//! (node ID `sidecar~IP~pod.ns~ns.svc.cluster.local`, metadata `NAMESPACE`,
//! `LABELS` and `NETWORK`, the `xds-grpc` cluster over HTTP/2).

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// What the bootstrap is made from.
#[derive(Clone, Debug)]
pub struct BootstrapOptions {
    /// Istio node ID, `TYPE~IP~POD.NS~NS.svc.cluster.local`.
    pub node_id: String,
    /// The daemon's xDS address, `HOST:PORT` (an IP or a DNS name), or
    /// `unix://PATH`: the agent's xDS proxy on a Unix socket
    /// ([`crate::xds_proxy`], Istio's `./etc/istio/proxy/XDS`).
    pub xds_addr: String,
    /// Envoy admin port, on 127.0.0.1 (Istio's is 15000).
    pub admin_port: u16,
    /// Workload labels (node metadata `LABELS`), e.g. `istio=ingressgateway` for a gateway.
    pub labels: BTreeMap<String, String>,
    /// `region/zone/subzone` of the proxy (node `locality`), empty if unknown.
    pub locality: String,
    /// The proxy's network (node metadata `NETWORK`, Istio's
    /// `ISTIO_META_NETWORK`), for Split Horizon EDS; empty: none.
    pub network: String,
    /// Delta (incremental) xDS instead of State of the World (Istio's
    /// sidecars use Delta by default since 1.22).
    pub delta: bool,
    /// The node agent's SDS Unix socket (the `sds-grpc` cluster serving the
    /// workload certificate `default` and the root `ROOTCA` for
    /// `ISTIO_MUTUAL`); Istio's path is [`ISTIO_SDS_SOCKET`].
    pub sds_socket: String,
    /// How Envoy checks that its xDS connection is alive.
    pub xds_keepalive: XdsKeepalive,
    /// Further node metadata, string values by key (Istio's agent turns
    /// each `ISTIO_META_<KEY>` variable into metadata `<KEY>`, e.g.
    /// `AUTO_REGISTER_GROUP`); the keys above are not overridden.
    pub metadata: BTreeMap<String, String>,
}

/// How Envoy checks that the daemon is still there (the `xds-grpc`
/// cluster's HTTP/2 `connection_keepalive`): a PING after `interval`
/// without a frame, the connection closed (and ADS reopened, to any
/// replica) when its ACK has not come within `timeout`. Without it, a
/// daemon whose node vanished leaves its proxies on a dead connection, with
/// no config updates, until TCP gives up (~15 minutes). Istio's agent keeps
/// its own connection to istiod with 30 s and 10 s, the default here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdsKeepalive {
    /// Quiet time before a PING (30 s).
    pub interval: std::time::Duration,
    /// How long its ACK is awaited (10 s).
    pub timeout: std::time::Duration,
}

impl Default for XdsKeepalive {
    fn default() -> Self {
        XdsKeepalive {
            interval: std::time::Duration::from_secs(30),
            timeout: std::time::Duration::from_secs(10),
        }
    }
}

/// Where Istio's node agent serves SDS, relative to the proxy's working directory.
pub const ISTIO_SDS_SOCKET: &str = "./var/run/secrets/workload-spiffe-uds/socket";

/// Why the bootstrap could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The node ID is not Istio's form.
    #[error(transparent)]
    NodeId(#[from] translator::model::InvalidNodeId),
    /// `--xds-addr` is not `HOST:PORT` or `unix://PATH`.
    #[error("invalid --xds-addr {0:?}: expected HOST:PORT or unix://PATH")]
    XdsAddr(String),
}

/// The bootstrap as JSON (which Envoy also reads as YAML).
///
/// # Errors
/// [`BootstrapError`] for a malformed node ID or xDS address.
pub fn bootstrap(opts: &BootstrapOptions) -> Result<Value, BootstrapError> {
    let proxy = translator::model::Proxy::from_node_id(&opts.node_id, None, opts.labels.clone())?;
    let xds = match opts.xds_addr.strip_prefix("unix://") {
        Some(path) if !path.is_empty() => ("STATIC", json!({ "pipe": { "path": path } })),
        Some(_) => return Err(BootstrapError::XdsAddr(opts.xds_addr.clone())),
        None => {
            let (host, port) = opts
                .xds_addr
                .rsplit_once(':')
                .and_then(|(h, p)| {
                    Some((
                        h.trim_start_matches('[').trim_end_matches(']'),
                        p.parse::<u16>().ok()?,
                    ))
                })
                .filter(|(h, _)| !h.is_empty())
                .ok_or_else(|| BootstrapError::XdsAddr(opts.xds_addr.clone()))?;
            let is_ip = host.parse::<std::net::IpAddr>().is_ok();
            (
                if is_ip { "STATIC" } else { "STRICT_DNS" },
                json!({ "socket_address": { "address": host, "port_value": port } }),
            )
        }
    };
    // Waited for however long it takes, as Istio's bootstrap does: with
    // Envoy's default of 15 s, a proxy that connects in a push storm stops
    // waiting for its clusters and listeners and starts without them.
    let ads = json!({ "ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3" });
    let mut locality = opts.locality.split('/');
    let mut metadata = json!({
        "NAMESPACE": proxy.namespace,
        "LABELS": opts.labels,
        "NAME": proxy.id.split('.').next().unwrap_or_default(),
        "GENERATOR": "envoy",
        "NETWORK": opts.network,
    });
    if let Some(fields) = metadata.as_object_mut() {
        for (key, value) in &opts.metadata {
            fields
                .entry(key.clone())
                .or_insert_with(|| Value::String(value.clone()));
        }
    }
    Ok(json!({
        "node": {
            "id": opts.node_id,
            "locality": {
                "region": locality.next().unwrap_or_default(),
                "zone": locality.next().unwrap_or_default(),
                "sub_zone": locality.next().unwrap_or_default(),
            },
            "cluster": format!("{}.{}", proxy.labels.get("app").cloned().unwrap_or_else(|| "istio-proxy".into()), proxy.namespace),
            "metadata": metadata,
        },
        "admin": {
            "address": { "socket_address": { "address": "127.0.0.1", "port_value": opts.admin_port } }
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": if opts.delta { "DELTA_GRPC" } else { "GRPC" },
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [ { "envoy_grpc": { "cluster_name": "xds-grpc" } } ]
            },
            "cds_config": ads,
            "lds_config": ads,
        },
        "static_resources": {
            "clusters": [
                xds_cluster(xds.0, xds.1, opts.xds_keepalive),
                grpc_cluster(
                    translator::policy::AGENT_SDS_CLUSTER,
                    "STATIC",
                    json!({ "pipe": { "path": opts.sds_socket } }),
                    json!({}),
                ),
            ]
        }
    }))
}

/// The `xds-grpc` cluster: gRPC to the daemon at `address`, with
/// `keepalive` PINGs, TCP keepalive after 300 s and circuit breakers that
/// never trip, as Istio's bootstrap has them.
fn xds_cluster(discovery: &str, address: Value, keepalive: XdsKeepalive) -> Value {
    let seconds = |d: std::time::Duration| format!("{}s", d.as_secs_f64());
    let limits = |priority: &str| {
        json!({
            "priority": priority,
            "max_connections": 100000,
            "max_pending_requests": 100000,
            "max_requests": 100000,
        })
    };
    let mut cluster = grpc_cluster(
        "xds-grpc",
        discovery,
        address,
        json!({
            "connection_keepalive": {
                "interval": seconds(keepalive.interval),
                "timeout": seconds(keepalive.timeout),
            }
        }),
    );
    cluster["upstream_connection_options"] = json!({ "tcp_keepalive": { "keepalive_time": 300 } });
    cluster["circuit_breakers"] = json!({ "thresholds": [limits("DEFAULT"), limits("HIGH")] });
    cluster
}

/// A static-resource cluster speaking gRPC (HTTP/2, with `http2`'s
/// `Http2ProtocolOptions`) to one `address`.
fn grpc_cluster(name: &str, discovery: &str, address: Value, http2: Value) -> Value {
    json!({
        "name": name,
        "type": discovery,
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": http2 }
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [ { "lb_endpoints": [ { "endpoint": { "address": address } } ] } ]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_bootstrap_carries_identity_labels_and_istio_meta() {
        let b = bootstrap(&BootstrapOptions {
            node_id: "router~10.0.0.9~ingress.istio-system~istio-system.svc.cluster.local".into(),
            xds_addr: "127.0.0.1:15010".into(),
            admin_port: 15000,
            labels: [("istio".to_string(), "ingressgateway".to_string())].into(),
            locality: "us-east/us-east-1a".into(),
            network: "network2".into(),
            delta: true,
            sds_socket: ISTIO_SDS_SOCKET.into(),
            xds_keepalive: Default::default(),
            metadata: crate::agent::istio_meta([
                (
                    "ISTIO_META_AUTO_REGISTER_GROUP".to_owned(),
                    "vms".to_owned(),
                ),
                ("ISTIO_META_NAMESPACE".to_owned(), "elsewhere".to_owned()),
                ("PATH".to_owned(), "/bin".to_owned()),
            ]),
        })
        .unwrap();
        assert_eq!(b["node"]["metadata"]["NAMESPACE"], "istio-system");
        assert_eq!(b["node"]["metadata"]["AUTO_REGISTER_GROUP"], "vms");
        assert!(b["node"]["metadata"].get("PATH").is_none());
        assert_eq!(b["node"]["metadata"]["LABELS"]["istio"], "ingressgateway");
        assert_eq!(b["node"]["locality"]["zone"], "us-east-1a");
        assert_eq!(b["node"]["metadata"]["NETWORK"], "network2");
        assert_eq!(
            b["dynamic_resources"]["ads_config"]["api_type"],
            "DELTA_GRPC"
        );
        let addr = &b["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"]
            [0]["endpoint"]["address"]["socket_address"];
        assert_eq!(addr["port_value"], 15010);
        let xds = &b["static_resources"]["clusters"][0];
        let http2 = &xds["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
            ["explicit_http_config"]["http2_protocol_options"];
        assert_eq!(http2["connection_keepalive"]["interval"], "30s");
        assert_eq!(http2["connection_keepalive"]["timeout"], "10s");
        assert_eq!(
            b["dynamic_resources"]["cds_config"]["initial_fetch_timeout"],
            "0s"
        );
    }

    #[test]
    fn bad_inputs_are_errors() {
        let mut o = BootstrapOptions {
            node_id: "nonsense".into(),
            xds_addr: "127.0.0.1:15010".into(),
            admin_port: 15000,
            labels: BTreeMap::new(),
            locality: String::new(),
            network: String::new(),
            delta: false,
            sds_socket: ISTIO_SDS_SOCKET.into(),
            xds_keepalive: Default::default(),
            metadata: BTreeMap::new(),
        };
        assert!(matches!(bootstrap(&o), Err(BootstrapError::NodeId(_))));
        o.node_id = "sidecar~1.2.3.4~a.b~b.svc.cluster.local".into();
        o.xds_addr = "no-port".into();
        assert!(matches!(bootstrap(&o), Err(BootstrapError::XdsAddr(_))));
        o.xds_addr = "unix://".into();
        assert!(matches!(bootstrap(&o), Err(BootstrapError::XdsAddr(_))));
        // The agent's xDS proxy: a pipe.
        o.xds_addr = "unix://./etc/istio/proxy/XDS".into();
        let b = bootstrap(&o).unwrap();
        let xds = &b["static_resources"]["clusters"][0];
        assert_eq!(xds["name"], "xds-grpc");
        assert_eq!(xds["type"], "STATIC");
        let address =
            &xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"];
        assert_eq!(address["pipe"]["path"], "./etc/istio/proxy/XDS");
    }
}
