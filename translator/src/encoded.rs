//! Resources encoded for the wire, and the snapshot's memos of what is
//! built per service (its clusters and load assignments, its default
//! route), shared by every proxy generated from that snapshot, as istiod's
//! XDS cache shares CDS, EDS and RDS parts across proxies.

// foldhash rather than SipHash: looked up per service for every proxy.
use hashbrown::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use crds::destination_rule::DestinationRuleSpec;
use prost::encoding::WireType;

use crate::model::{Config, Service};

/// One resource as sent: its name, its version (XXH3-64 of the encoding)
/// and the encoded `google.protobuf.Any` (`type_url`, then `value`).
pub type Encoded = (Arc<str>, u64, Bytes);

/// The version of a resource: XXH3-64 of its encoded `Any`. The same bytes
/// give the same version in every process (no seed), so a proxy that
/// reconnects to another replica keeps what it has (Delta xDS
/// `initial_resource_versions`).
pub fn version_of(any: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(any)
}

/// `message` as a `google.protobuf.Any` of `type_url`, named `name`: the
/// same bytes as `Any { type_url, value: message.encode_to_vec() }`
/// encoded, written once instead of twice.
pub fn encode<M: prost::Message>(type_url: &str, name: &str, message: &M) -> Encoded {
    let len = message.encoded_len();
    let mut buf = any_head(type_url, len);
    // Cannot fail: a `Vec` grows to whatever is written.
    let _ = message.encode(&mut buf);
    finish(name, buf)
}

/// A message of `len` bytes that `write` writes, as an `Any` of
/// `type_url`, named `name` (as [`encode`], for messages written by hand).
/// `write` must write exactly `len` bytes; a debug build checks it.
pub(crate) fn encode_with(
    type_url: &str,
    name: &str,
    len: usize,
    write: impl FnOnce(&mut Vec<u8>),
) -> Encoded {
    let mut buf = any_head(type_url, len);
    let start = buf.len();
    write(&mut buf);
    debug_assert_eq!(buf.len() - start, len, "{name}: hand-written length");
    finish(name, buf)
}

// Helpers for messages written by hand (`encode_with`): the lengths and
// heads prost writes, for fields of tags 1-15 (one key byte).

/// The encoded length of a `string` field of a low tag (1-15) holding `s`;
/// 0 when empty (proto3 leaves it out).
pub(crate) fn string_len(s: &str) -> usize {
    if s.is_empty() { 0 } else { nested_len(s.len()) }
}

/// The encoded length of a length-delimited field of a low tag (1-15)
/// whose content is `len` bytes.
pub(crate) fn nested_len(len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// The length of a `google.protobuf.UInt32Value` holding `v`.
pub(crate) fn uint32_len(v: u32) -> usize {
    if v == 0 {
        0
    } else {
        1 + prost::encoding::encoded_len_varint(u64::from(v))
    }
}

/// A base-128 varint, as protobuf writes integers, lengths and keys.
/// The same bytes as prost's `encode_varint`, pushed onto the `Vec`
/// directly: prost's goes through `BufMut::put_u8` a byte at a time, and
/// was ~5 % of a snapshot's first config key (perf, release build).
#[inline]
pub(crate) fn put_varint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push((v as u8) | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

/// A field's key: its number `tag` and wire type.
#[inline]
pub(crate) fn put_key(b: &mut Vec<u8>, tag: u32, wire_type: WireType) {
    put_varint(b, u64::from(tag << 3 | wire_type as u32));
}

/// The head (key and length) of a length-delimited field.
#[inline]
pub(crate) fn put_head(b: &mut Vec<u8>, tag: u32, len: usize) {
    put_key(b, tag, WireType::LengthDelimited);
    put_varint(b, len as u64);
}

/// A `string` field (left out when empty, as proto3 does).
pub(crate) fn put_string(b: &mut Vec<u8>, tag: u32, s: &str) {
    if !s.is_empty() {
        put_head(b, tag, s.len());
        b.extend_from_slice(s.as_bytes());
    }
}

/// An `Any`'s `type_url` field and the head of its `value` field, for a
/// value of `len` bytes to follow, in a buffer with room for it.
fn any_head(type_url: &str, len: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(type_url.len() + len + 12);
    put_head(&mut buf, 1, type_url.len());
    buf.extend_from_slice(type_url.as_bytes());
    if len > 0 {
        // As prost's `Any`: an empty `value` is left out.
        put_head(&mut buf, 2, len);
    }
    buf
}

fn finish(name: &str, buf: Vec<u8>) -> Encoded {
    let bytes = Bytes::from(buf);
    (Arc::from(name), version_of(&bytes), bytes)
}

/// One service's encoded clusters (every port: the whole service, then each
/// subset) and the load assignments of its EDS clusters.
#[derive(Debug, Default)]
pub(crate) struct ServiceResources {
    pub(crate) clusters: Vec<Encoded>,
    pub(crate) assignments: Vec<Encoded>,
}

/// What was built for one service seen through one DestinationRule, by
/// one more detail `D` (a locality, a port), for the first proxy that needed
/// it, and shared with every later proxy that needs the same. The rest of
/// what it is made from (mesh settings, PeerAuthentications) is the
/// snapshot's own.
///
/// It lives in its [`crate::model::Snapshot`] and keys on the addresses of
/// that snapshot's service and rule, so a snapshot must not be changed
/// after generating from it (the daemon builds one per change). A clone
/// starts empty.
pub(crate) struct Memo<D, V> {
    entries: Mutex<Entries<D, V>>,
}

/// By (service address, rule address or 0).
type Entries<D, V> = HashMap<(usize, usize), Vec<MemoEntry<D, V>>>;

struct MemoEntry<D, V> {
    /// Held so that the service's address is not reused while it keys
    /// an entry (and to find it again in the next snapshot).
    service: Arc<Service>,
    detail: D,
    value: Arc<V>,
}

/// What a service's clusters depend on of the proxy besides the rule that
/// applies: its locality (`region/zone/subzone`, for locality load
/// balancing) and, only for a rule whose client TLS names a
/// `credentialName`, whether the proxy gets that Secret (a gateway, or a
/// workload the rule selects; see `cluster::gets_credentials`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClusterView {
    pub(crate) locality: String,
    pub(crate) credentials: bool,
    /// The proxy's values of the label keys `failoverPriority` compares
    /// (`Snapshot::failover_keys`, sorted), for a rule (or mesh) that has
    /// one; empty otherwise, so that other services' entries stay shared.
    pub(crate) labels: Vec<(String, String)>,
    /// The proxy is a gateway with an `AUTO_PASSTHROUGH` server: each
    /// cluster also comes as Istio's SNI-DNAT cluster
    /// (`outbound_.<port>_.<subset>_.<host>`).
    pub(crate) sni_dnat: bool,
    /// The proxy's network, in a mesh with network gateways (Split
    /// Horizon EDS: other networks' endpoints come as their gateways);
    /// empty otherwise, or when the proxy names none.
    pub(crate) network: String,
    /// The proxy's `REQUESTED_NETWORK_VIEW` when `network` is set (the
    /// networks reached through gateways; empty: all).
    pub(crate) network_view: Vec<String>,
    /// The clusters carry Istio's `istio` metadata naming their service
    /// (for the labels of Istio's metrics, [`crate::metrics`]): the proxy
    /// makes them ([`crate::model::Proxy::stats_logger`]).
    pub(crate) service_metadata: bool,
}

/// Each service's [`ServiceResources`] by [`ClusterView`]: proxies in ten
/// namespaces that see a service through the same rule share one entry.
pub(crate) type ClusterMemo = Memo<ClusterView, ServiceResources>;

impl<D, V> Memo<D, V> {
    /// The value for `service` seen through `rule` with `detail`:
    /// memoised, else `build()` (run outside the lock; when two proxies
    /// build at once, the first stored is kept).
    pub(crate) fn get_or_build<Q>(
        &self,
        service: &Arc<Service>,
        rule: Option<&Config<DestinationRuleSpec>>,
        detail: &Q,
        build: impl FnOnce() -> V,
    ) -> Arc<V>
    where
        Q: ?Sized + PartialEq + ToOwned<Owned = D>,
        D: std::borrow::Borrow<Q>,
    {
        let key = (
            Arc::as_ptr(service).addr(),
            rule.map_or(0, |r| std::ptr::from_ref(r).addr()),
        );
        let find = |entries: &Entries<D, V>| {
            entries
                .get(&key)?
                .iter()
                .find(|e| e.detail.borrow() == detail)
                .map(|e| e.value.clone())
        };
        if let Ok(entries) = self.entries.lock()
            && let Some(found) = find(&entries)
        {
            return found;
        }
        let built = Arc::new(build());
        let Ok(mut entries) = self.entries.lock() else {
            return built;
        };
        if let Some(found) = find(&entries) {
            return found;
        }
        // Usually the only entry of its key: a vector of one, not of four.
        entries
            .entry(key)
            .or_insert_with(|| Vec::with_capacity(1))
            .push(MemoEntry {
                service: service.clone(),
                detail: detail.to_owned(),
                value: built.clone(),
            });
        built
    }

    /// Copies in the entries of `prev` (the previous snapshot's memo) that
    /// still hold: those whose service `service_now` finds unchanged in
    /// this snapshot and whose rule `rule_now` maps to an unchanged rule of
    /// this snapshot (by address; 0, no rule, to 0). The caller checks
    /// that nothing else they are made from changed.
    pub(crate) fn inherit(
        &self,
        prev: &Memo<D, V>,
        service_now: impl Fn(&Service) -> Option<Arc<Service>>,
        rule_now: impl Fn(usize) -> Option<usize>,
    ) where
        D: Clone,
    {
        let (Ok(prev), Ok(mut entries)) = (prev.entries.lock(), self.entries.lock()) else {
            return;
        };
        entries.reserve(prev.len());
        for (&(_, rule), list) in prev.iter() {
            let Some(rule) = rule_now(rule) else { continue };
            for e in list {
                let Some(service) = service_now(&e.service) else {
                    continue;
                };
                entries
                    .entry((Arc::as_ptr(&service).addr(), rule))
                    .or_default()
                    .push(MemoEntry {
                        service,
                        detail: e.detail.clone(),
                        value: e.value.clone(),
                    });
            }
        }
    }

    /// Room for `n` keys in all, made before a generation inserts them
    /// one by one: the table is allocated once at its size, rather than
    /// grown by doubling and rehashed at each step (at 1000 services the
    /// two memos' tables took 0.25 MiB of allocations per first config key
    /// as they grew, and take 0.12 MiB at their size). Nothing is done when
    /// the room is there already.
    pub(crate) fn reserve(&self, n: usize) {
        if let Ok(mut entries) = self.entries.lock() {
            let missing = n.saturating_sub(entries.len());
            entries.reserve(missing);
        }
    }

    /// Whether nothing is held (a poisoned lock counts as empty).
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.lock().map_or(true, |e| e.is_empty())
    }

    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.entries
            .lock()
            .map(|e| e.values().map(Vec::len).sum())
            .unwrap_or(0)
    }
}

impl<D, V> Default for Memo<D, V> {
    fn default() -> Self {
        Memo {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<D, V> Clone for Memo<D, V> {
    fn clone(&self) -> Self {
        Memo::default()
    }
}

impl<D, V> std::fmt::Debug for Memo<D, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memo")
            .field("entries", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::google::protobuf::Any;
    use prost::Message;

    use super::*;

    #[test]
    fn encodes_as_prost_any() {
        let cluster = Cluster {
            name: "outbound|80||a".into(),
            ..Default::default()
        };
        for message in [cluster, Cluster::default()] {
            let any = Any {
                type_url: crate::CLUSTER_TYPE.into(),
                value: message.encode_to_vec(),
            };
            let (name, version, bytes) = encode(crate::CLUSTER_TYPE, "n", &message);
            assert_eq!(&*name, "n");
            assert_eq!(bytes.as_ref(), any.encode_to_vec().as_slice());
            assert_eq!(version, version_of(&any.encode_to_vec()));
        }
    }

    #[test]
    fn varints_and_keys_as_prost_writes_them() {
        let mut values = vec![
            0,
            1,
            127,
            128,
            255,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
        ];
        values.extend((1..64).map(|shift| 1u64 << shift));
        values.push(u64::MAX);
        for v in values {
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            put_varint(&mut ours, v);
            prost::encoding::encode_varint(v, &mut theirs);
            assert_eq!(ours, theirs, "varint {v}");
        }
        for tag in [1, 15, 16, 43, 2047, 2048, (1 << 29) - 1] {
            for wire_type in [WireType::Varint, WireType::LengthDelimited] {
                let (mut ours, mut theirs) = (Vec::new(), Vec::new());
                put_key(&mut ours, tag, wire_type);
                prost::encoding::encode_key(tag, wire_type, &mut theirs);
                assert_eq!(ours, theirs, "key {tag} {wire_type:?}");
            }
        }
    }
}
