//! The agent's DNS proxy (Istio's `pkg/dns/client`, on with
//! `ISTIO_META_DNS_CAPTURE`): it answers the workload's `A` and `AAAA`
//! queries for the names of the mesh from the name table the daemon serves
//! ([`translator::nds`]), so that a ServiceEntry host without a DNS record
//! resolves to its address, and forwards every other query to the pod's
//! own resolver. Served on UDP and TCP at 127.0.0.1:15053, where
//! `istio-init --redirect-dns` (iptables) sends the pod's port-53 traffic
//! but the proxy's own.
//!
//! Names answered, as Istio's agent makes them (`generateAltHosts`): each
//! hostname of the table; for a Kubernetes Service of the cluster's
//! domain, `name.namespace` too, and `name` alone in the workload's own
//! namespace. Answers live 30 s (Istio's TTL). A known name without an
//! address of the asked family answers with no record (`NOERROR`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use translator::nds::NameTable;

/// Where Istio's agent serves DNS.
pub const DNS_ADDRESS: &str = "127.0.0.1:15053";

/// How long answers live (Istio's `defaultTTLInSeconds`).
const TTL_SECS: u32 = 30;

/// How long a forwarded query waits for the upstream resolver.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// The names the proxy answers for, lower case without the final dot, and
/// their addresses.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    names: HashMap<String, Vec<IpAddr>>,
}

impl Table {
    /// The names of `table` for a workload in `namespace`, with the cluster
    /// DNS `domain` (`cluster.local`).
    pub fn new(table: &NameTable, namespace: &str, domain: &str) -> Table {
        let mut names: HashMap<String, Vec<IpAddr>> = HashMap::new();
        let suffix = format!(".svc.{domain}");
        for (host, info) in &table.table {
            let ips: Vec<IpAddr> = info.ips.iter().filter_map(|ip| ip.parse().ok()).collect();
            if ips.is_empty() {
                continue;
            }
            let mut add = |name: String| {
                names.entry(name).or_insert_with(|| ips.clone());
            };
            let host = host.to_ascii_lowercase();
            let kubernetes = info.registry == "Kubernetes" && !info.shortname.is_empty();
            if kubernetes && host.ends_with(&suffix) {
                let short = info.shortname.to_ascii_lowercase();
                let ns = info.namespace.to_ascii_lowercase();
                add(format!("{short}.{ns}"));
                if ns == namespace {
                    add(short);
                }
            }
            add(host);
        }
        Table { names }
    }

    /// The addresses of `name` (any case, with or without the final dot),
    /// if it is one of the table's.
    pub fn lookup(&self, name: &str) -> Option<&[IpAddr]> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.names.get(&name).map(Vec::as_slice)
    }

    /// The answer to the DNS message `query` (wire format) from the table;
    /// `None` when the name is not the table's (or the message is not one
    /// plain query), to be forwarded.
    pub fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        let request = Message::from_vec(query).ok()?;
        let [q] = request.queries() else {
            return None;
        };
        if request.message_type() != MessageType::Query {
            return None;
        }
        let ips = self.lookup(&q.name().to_ascii())?;
        let mut response = Message::new();
        response
            .set_id(request.id())
            .set_message_type(MessageType::Response)
            .set_op_code(request.op_code())
            .set_recursion_desired(request.recursion_desired())
            .set_recursion_available(true)
            .set_response_code(ResponseCode::NoError)
            .add_query(q.clone());
        for ip in ips {
            let rdata = match (q.query_type(), ip) {
                (RecordType::A, IpAddr::V4(v4)) => RData::A(A(*v4)),
                (RecordType::AAAA, IpAddr::V6(v6)) => RData::AAAA(AAAA(*v6)),
                _ => continue,
            };
            response.add_answer(Record::from_rdata(q.name().clone(), TTL_SECS, rdata));
        }
        response.to_vec().ok()
    }
}

/// Serves DNS on UDP and TCP at `addr` from the table `table` holds,
/// forwarding what it does not know to `upstream` (over UDP), until `token`
/// is cancelled.
///
/// # Errors
/// A socket cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    upstream: SocketAddr,
    table: watch::Receiver<Arc<Table>>,
    token: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    let udp = Arc::new(
        UdpSocket::bind(addr)
            .await
            .with_context(|| format!("DNS on udp {addr}"))?,
    );
    let tcp = TcpListener::bind(addr)
        .await
        .with_context(|| format!("DNS on tcp {addr}"))?;
    info!(%addr, %upstream, "DNS proxy serving");
    Ok(tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                received = udp.recv_from(&mut buf) => {
                    let Ok((n, from)) = received else { continue };
                    let query = buf.get(..n).unwrap_or_default().to_vec();
                    let (udp, table) = (udp.clone(), table.clone());
                    tokio::spawn(async move {
                        if let Some(reply) = respond(&table, &query, upstream).await {
                            let _ = udp.send_to(&reply, from).await;
                        }
                    });
                }
                accepted = tcp.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    tokio::spawn(serve_tcp(stream, table.clone(), upstream));
                }
            }
        }
    }))
}

/// One TCP connection: length-prefixed queries, answered in turn.
async fn serve_tcp(
    mut stream: tokio::net::TcpStream,
    table: watch::Receiver<Arc<Table>>,
    upstream: SocketAddr,
) {
    loop {
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        let mut query = vec![0u8; usize::from(len)];
        if stream.read_exact(&mut query).await.is_err() {
            return;
        }
        let Some(reply) = respond(&table, &query, upstream).await else {
            return;
        };
        let Ok(len) = u16::try_from(reply.len()) else {
            return;
        };
        if stream.write_u16(len).await.is_err() || stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// The reply to `query`: the table's answer, else the upstream resolver's
/// (`None` when it does not answer in time).
async fn respond(
    table: &watch::Receiver<Arc<Table>>,
    query: &[u8],
    upstream: SocketAddr,
) -> Option<Vec<u8>> {
    let current = table.borrow().clone();
    if let Some(answer) = current.answer(query) {
        return Some(answer);
    }
    let forwarded = async {
        let local: SocketAddr = if upstream.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local).await?;
        socket.connect(upstream).await?;
        socket.send(query).await?;
        let mut buf = vec![0u8; 65_535];
        let n = socket.recv(&mut buf).await?;
        buf.truncate(n);
        Ok::<_, std::io::Error>(buf)
    };
    match tokio::time::timeout(UPSTREAM_TIMEOUT, forwarded).await {
        Ok(Ok(reply)) => Some(reply),
        Ok(Err(e)) => {
            warn!(%upstream, error = %e, "DNS query not forwarded");
            None
        }
        Err(_) => {
            debug!(%upstream, "upstream resolver did not answer in time");
            None
        }
    }
}

/// The first `nameserver` of a `resolv.conf` text, on port 53 (lines the
/// parser does not understand are skipped, as the C library does).
pub fn first_nameserver(resolv_conf: &str) -> Option<SocketAddr> {
    let (config, _) = resolv_conf::Config::parse_with_errors(resolv_conf.as_bytes());
    config
        .nameservers
        .first()
        .map(|ip| SocketAddr::new(IpAddr::from(ip), 53))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    use translator::nds::NameInfo;

    fn table() -> Table {
        let mut t = NameTable::default();
        t.table.insert(
            "reviews.default.svc.cluster.local".into(),
            NameInfo {
                ips: vec!["10.96.0.13".into(), "fd00::13".into()],
                registry: "Kubernetes".into(),
                shortname: "reviews".into(),
                namespace: "default".into(),
                alt_hosts: Vec::new(),
            },
        );
        t.table.insert(
            "ratings.other.svc.cluster.local".into(),
            NameInfo {
                ips: vec!["10.96.0.14".into()],
                registry: "Kubernetes".into(),
                shortname: "ratings".into(),
                namespace: "other".into(),
                alt_hosts: Vec::new(),
            },
        );
        t.table.insert(
            "db.internal".into(),
            NameInfo {
                ips: vec!["240.240.0.5".into()],
                registry: "External".into(),
                ..Default::default()
            },
        );
        Table::new(&t, "default", "cluster.local")
    }

    fn query(name: &str, kind: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(7)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        m.to_vec().unwrap()
    }

    fn answers(reply: &[u8]) -> (u16, ResponseCode, Vec<String>) {
        let m = Message::from_vec(reply).unwrap();
        let data = m
            .answers()
            .iter()
            .map(|r| format!("{} {}", r.ttl(), r.data()))
            .collect();
        (m.id(), m.response_code(), data)
    }

    #[test]
    fn names_and_their_short_forms_are_answered_from_the_table() {
        let t = table();
        for name in [
            "reviews.default.svc.cluster.local.",
            "REVIEWS.default.svc.cluster.local",
            "reviews.default.",
            "reviews.",
        ] {
            let reply = t.answer(&query(name, RecordType::A)).unwrap();
            assert_eq!(
                answers(&reply),
                (7, ResponseCode::NoError, vec!["30 10.96.0.13".to_owned()]),
                "{name}"
            );
        }
        let reply = t.answer(&query("reviews.", RecordType::AAAA)).unwrap();
        assert_eq!(answers(&reply).2, ["30 fd00::13"]);
        // Another namespace's service: `name.namespace`, not `name`.
        assert!(t.answer(&query("ratings.other.", RecordType::A)).is_some());
        assert!(t.answer(&query("ratings.", RecordType::A)).is_none());
        // A ServiceEntry host; no IPv6 address: no record, not an error.
        let reply = t.answer(&query("db.internal.", RecordType::A)).unwrap();
        assert_eq!(answers(&reply).2, ["30 240.240.0.5"]);
        let reply = t.answer(&query("db.internal.", RecordType::AAAA)).unwrap();
        assert_eq!(answers(&reply), (7, ResponseCode::NoError, Vec::new()));
        // Unknown names and garbage are forwarded.
        assert!(t.answer(&query("example.com.", RecordType::A)).is_none());
        assert!(t.answer(b"not dns").is_none());
    }

    #[test]
    fn the_first_nameserver_of_resolv_conf_is_the_upstream() {
        let text = "# generated\nsearch default.svc.cluster.local\nnameserver 10.96.0.10\nnameserver 8.8.8.8\noptions ndots:5\n";
        assert_eq!(
            first_nameserver(text),
            Some("10.96.0.10:53".parse().unwrap())
        );
        assert_eq!(first_nameserver("nameserver bogus\n"), None);
    }
}
