//! ADS on the wire: responses written, and requests read, here rather
//! than by tonic's codec.
//!
//! Every resource is encoded once per generated config (a `google.protobuf.Any`
//! as [`Bytes`]) and shared by every response that carries it: a response is
//! a list of pieces, small framing bytes of its own and shared resources, and
//! the HTTP/2 body copies them into chunks of at most [`CHUNK_BYTES`] only as
//! hyper asks for data (that is, as the proxy's flow-control window opens).
//!
//! Why not `DiscoveryResponse` through tonic's encoder: that needs one copy
//! of every resource per proxy to build the message, a second to encode it,
//! and tonic keeps each stream's encode buffer at the size of the largest
//! message that stream ever sent (its `BytesMut` is reused, never shrunk). At
//! 1000 services that buffer alone was ~1 MiB per connected proxy.
//!
//! The messages are Envoy's `envoy.service.discovery.v3.DiscoveryResponse`
//! (fields 1 `version_info`, 2 `resources`, 4 `type_url`, 5 `nonce`) and
//! `DeltaDiscoveryResponse` (1 `system_version_info`, 2 `resources` of
//! `Resource` {1 `version`, 2 `resource`, 3 `name`}, 4 `type_url`, 5 `nonce`,
//! 6 `removed_resources`), each framed as gRPC does (1 byte compressed flag,
//! 4 bytes big-endian length).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::{Body as _, Frame};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tokio::sync::mpsc;
use tonic::Status;

/// The largest chunk the body hands to hyper (bytes). Resources at least
/// this large are handed on as they are, without a copy.
pub(crate) const CHUNK_BYTES: usize = 64 * 1024;

/// One resource as sent: its name, its version (a hash of its encoding) and
/// the encoded `google.protobuf.Any` ([`translator::encoded::Encoded`]).
pub(crate) use translator::encoded::Encoded as EncodedResource;

/// A part of a message: bytes of the message's own, or a shared resource.
#[derive(Debug)]
enum Piece {
    /// `own[start..end]`.
    Own(usize, usize),
    Shared(Bytes),
}

/// One gRPC message, framed, as pieces to be copied out in chunks.
#[derive(Debug, Default)]
pub(crate) struct Message {
    own: Vec<u8>,
    pieces: Vec<Piece>,
    /// The encoded message's length (without the 5-byte gRPC header).
    len: usize,
    /// Where the body is: next piece, and offset inside it.
    at: (usize, usize),
    /// Bytes handed out so far, header included.
    sent: usize,
}

impl Message {
    fn new() -> Message {
        // The gRPC header is written when the length is known.
        Message {
            own: vec![0; 5],
            pieces: vec![Piece::Own(0, 5)],
            ..Default::default()
        }
    }

    /// Appends bytes of the message's own (joined with the previous ones
    /// when they are adjacent).
    fn own(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.own.len();
        write(&mut self.own);
        let end = self.own.len();
        self.len += end - start;
        match self.pieces.last_mut() {
            Some(Piece::Own(_, e)) if *e == start => *e = end,
            _ => self.pieces.push(Piece::Own(start, end)),
        }
    }

    fn shared(&mut self, bytes: Bytes) {
        self.len += bytes.len();
        self.pieces.push(Piece::Shared(bytes));
    }

    /// A `string` field (left out when empty, as proto3 does).
    fn string(&mut self, tag: u32, s: &str) {
        if !s.is_empty() {
            self.own(|b| field(b, tag, s.as_bytes()));
        }
    }

    /// Writes the gRPC header now that the length is known.
    ///
    /// # Errors
    /// `RESOURCE_EXHAUSTED` for a message over gRPC's 4 GiB frame limit.
    fn finish(mut self) -> Result<Message, Status> {
        let len = u32::try_from(self.len).map_err(|_| {
            Status::resource_exhausted(format!(
                "response of {} bytes is over gRPC's 4 GiB message limit",
                self.len
            ))
        })?;
        self.own[1..5].copy_from_slice(&len.to_be_bytes());
        Ok(self)
    }

    /// The whole framed message in one buffer (tests, and decoding it back).
    #[cfg(test)]
    pub(crate) fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for p in &self.pieces {
            match p {
                Piece::Own(s, e) => out.extend_from_slice(&self.own[*s..*e]),
                Piece::Shared(b) => out.extend_from_slice(b),
            }
        }
        out
    }

    /// The next chunk of at most [`CHUNK_BYTES`] (a large shared resource
    /// is handed on whole), None at the end.
    fn next_chunk(&mut self) -> Option<Bytes> {
        let (mut i, mut off) = self.at;
        if let Some(Piece::Shared(b)) = self.pieces.get(i)
            && off == 0
            && b.len() >= CHUNK_BYTES
        {
            self.at = (i + 1, 0);
            self.sent += b.len();
            return Some(b.clone());
        }
        let mut chunk = BytesMut::new();
        while let Some(p) = self.pieces.get(i) {
            let bytes: &[u8] = match p {
                Piece::Own(s, e) => &self.own[*s..*e],
                Piece::Shared(b) if chunk.is_empty() || b.len() < CHUNK_BYTES => b,
                Piece::Shared(_) => break,
            };
            if chunk.capacity() == 0 {
                chunk.reserve(CHUNK_BYTES.min(5 + self.len - self.sent));
            }
            let take = (bytes.len() - off).min(CHUNK_BYTES - chunk.len());
            chunk.put_slice(&bytes[off..off + take]);
            off += take;
            if off == bytes.len() {
                (i, off) = (i + 1, 0);
            }
            if chunk.len() == CHUNK_BYTES {
                break;
            }
        }
        self.at = (i, off);
        self.sent += chunk.len();
        (!chunk.is_empty()).then(|| chunk.freeze())
    }
}

/// A length-delimited field's key and length (its bytes follow).
fn header(b: &mut Vec<u8>, tag: u32, len: usize) {
    encode_key(tag, WireType::LengthDelimited, b);
    encode_varint(len as u64, b);
}

/// A length-delimited field, whole.
fn field(b: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    header(b, tag, bytes.len());
    b.extend_from_slice(bytes);
}

/// A State-of-the-World `DiscoveryResponse` carrying `resources` (each an
/// encoded `Any`, shared, not copied).
///
/// # Errors
/// `RESOURCE_EXHAUSTED` when the message is over gRPC's 4 GiB limit.
pub(crate) fn sotw_response<'a>(
    version_info: &str,
    type_url: &str,
    nonce: &str,
    resources: impl IntoIterator<Item = &'a Bytes>,
) -> Result<Message, Status> {
    let mut m = Message::new();
    m.string(1, version_info);
    for any in resources {
        m.own(|b| header(b, 2, any.len()));
        m.shared(any.clone());
    }
    m.string(4, type_url);
    m.string(5, nonce);
    m.finish()
}

/// The version string of a resource in Delta xDS: its hash in hex.
pub(crate) fn delta_version(version: u64) -> String {
    format!("{version:016x}")
}

/// A Delta `DeltaDiscoveryResponse` carrying `resources` as `Resource`s
/// (name, version in hex, the shared encoded `Any`) and `removed` names.
///
/// # Errors
/// `RESOURCE_EXHAUSTED` when the message is over gRPC's 4 GiB limit.
pub(crate) fn delta_response<'a>(
    system_version_info: &str,
    type_url: &str,
    nonce: &str,
    resources: impl IntoIterator<Item = &'a EncodedResource>,
    removed: &[String],
) -> Result<Message, Status> {
    let mut m = Message::new();
    m.string(1, system_version_info);
    for (name, version, any) in resources {
        let version = delta_version(*version);
        let size = |tag: u32, len: usize| key_len(tag) + encoded_len_varint(len as u64) + len;
        let len = size(1, version.len()) + size(2, any.len()) + size(3, name.len());
        m.own(|b| {
            header(b, 2, len);
            field(b, 1, version.as_bytes());
            header(b, 2, any.len());
        });
        m.shared(any.clone());
        m.own(|b| field(b, 3, name.as_bytes()));
    }
    m.string(4, type_url);
    m.string(5, nonce);
    for name in removed {
        // Repeated strings: each one, even empty, is written.
        m.own(|b| field(b, 6, name.as_bytes()));
    }
    m.finish()
}

/// The largest request accepted (bytes): gRPC's default receive limit, as
/// istiod's (`ISTIO_GPRC_MAXRECVMSGSIZE`, 4 MiB).
pub(crate) const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// The requests of one stream, decoded from the HTTP/2 request body as
/// gRPC frames it. Bytes of a message split over DATA frames are gathered in
/// a buffer that is let go as soon as it is empty, so a connection does not
/// keep the size of the largest request it ever got (a SotW EDS request
/// names every cluster: ~65 KiB at 1000 services).
pub(crate) struct Requests<T: Decode> {
    body: tonic::body::Body,
    buf: BytesMut,
    done: bool,
    /// What the decoder keeps between the stream's messages.
    memory: T::Memory,
}

impl<T: Decode> Requests<T> {
    pub(crate) fn new(body: tonic::body::Body) -> Requests<T> {
        Requests {
            body,
            buf: BytesMut::new(),
            done: false,
            memory: T::Memory::default(),
        }
    }
}

/// The length of the gRPC message whose 5-byte header (compressed flag,
/// length big-endian) starts `bytes`; None when fewer than 5 bytes.
fn message_len(bytes: &[u8]) -> Option<usize> {
    let h = bytes.get(..5)?;
    Some(u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize)
}

impl<T: Decode> Requests<T> {
    /// The next whole message in the buffer, if there is one.
    fn take(&mut self) -> Option<Result<T, Status>> {
        let header = self.buf.get(..5)?;
        if header[0] != 0 {
            return Some(Err(Status::unimplemented(
                "compressed requests are not supported (send grpc-encoding identity)",
            )));
        }
        let len = message_len(header)?;
        if len > MAX_REQUEST_BYTES {
            return Some(Err(Status::resource_exhausted(format!(
                "request of {len} bytes is over the limit of {MAX_REQUEST_BYTES}"
            ))));
        }
        if self.buf.len() < 5 + len {
            self.buf.reserve(5 + len - self.buf.len());
            return None;
        }
        // Decoded from shared bytes, so that `bytes` fields are slices of
        // them rather than copies.
        let frame = self.buf.split_to(5 + len).freeze();
        let decoded = T::decode(frame.slice(5..), &mut self.memory)
            .map_err(|e| Status::invalid_argument(format!("malformed request: {e}")));
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        Some(decoded)
    }
}

impl<T: Decode> futures::Stream for Requests<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(next) = self.take() {
                if next.is_err() {
                    self.done = true;
                    self.buf = BytesMut::new();
                }
                return Poll::Ready(Some(next));
            }
            if self.done {
                return Poll::Ready(if self.buf.is_empty() {
                    None
                } else {
                    self.buf = BytesMut::new();
                    Some(Err(Status::internal(
                        "request stream ended inside a message",
                    )))
                });
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        // A message's first bytes: room for all of it at
                        // once (a SotW ACK spans several DATA frames).
                        if self.buf.is_empty()
                            && let Some(len) = message_len(&data)
                        {
                            self.buf.reserve(len.min(MAX_REQUEST_BYTES) + 5);
                        }
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(status)) => {
                    self.done = true;
                    self.buf = BytesMut::new();
                    return Poll::Ready(Some(Err(status)));
                }
                None => self.done = true,
            }
        }
    }
}

/// Envoy's `envoy.service.discovery.v3.DiscoveryRequest` as the server
/// reads it, but for `resource_names` (3) and `resource_locators` (7,
/// not read): the same fields and numbers.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SotwHead {
    /// The version the proxy last accepted.
    #[prost(string, tag = "1")]
    pub version_info: String,
    /// The proxy (first request of a stream).
    #[prost(message, optional, tag = "2")]
    pub node: Option<envoy_types::pb::envoy::config::core::v3::Node>,
    /// The resource type.
    #[prost(string, tag = "4")]
    pub type_url: String,
    /// The nonce of the response this request answers.
    #[prost(string, tag = "5")]
    pub response_nonce: String,
    /// Set when the response was rejected (NACK).
    #[prost(message, optional, tag = "6")]
    pub error_detail: Option<envoy_types::pb::google::rpc::Status>,
}

/// A SotW `DiscoveryRequest`: its other fields decoded, and its
/// `resource_names` left in the received bytes.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct SotwRequest {
    /// Every field but the names.
    pub head: SotwHead,
    /// The names.
    pub names: SotwNames,
}

/// The `resource_names` of a SotW request, undecoded. A SotW EDS ACK names
/// every cluster again (~1400 names, ~65 KiB at 1000 services) on every
/// endpoint push, almost always the same list as before:
/// [`SotwNames::digest`] tells whether it is, without decoding a name;
/// [`SotwNames::names`] decodes them when it is not.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct SotwNames {
    /// The encoded request.
    raw: Bytes,
    /// XXH3-128 of the names' encoding, in order.
    digest: u128,
}

impl Decode for SotwRequest {
    type Memory = KnownNames;

    /// One walk over the fields: the names hashed where they lie, every
    /// other field merged into the head. (Decoding the head with prost and
    /// walking again for the names stepped over ~1400 names twice per ACK.)
    /// A list of names that `known` holds is not walked at all.
    fn decode(raw: Bytes, known: &mut KnownNames) -> Result<Self, prost::DecodeError> {
        use prost::Message as _;
        use prost::encoding::{DecodeContext, WireType, decode_key, skip_field};
        let mut head = SotwHead::default();
        // Runs of consecutive name fields (usually one): their bytes are
        // hashed as one slice, the fields' own encoding (key, length,
        // bytes), which tells lists apart whatever their names hold.
        let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
        // The digest of the first run, when `known` recognised it.
        let mut recognised = None;
        let mut buf: &[u8] = &raw;
        while !buf.is_empty() {
            let start = raw.len() - buf.len();
            let mut end = start;
            if runs.is_empty()
                && let Some((len, digest)) = known.recognise(&raw, start)
            {
                end = start + len;
                recognised = Some(digest);
            }
            if end == start {
                end = names_run(&raw, start);
            }
            if end > start {
                buf = &raw[end..];
            } else {
                let (tag, wire_type) = decode_key(&mut buf)?;
                if tag != 3 || wire_type != WireType::LengthDelimited {
                    head.merge_field(tag, wire_type, &mut buf, DecodeContext::default())?;
                    continue;
                }
                // A name `name_at` did not take (a key of more than one
                // byte, or a name that does not fit): read here, and
                // refused if it does not fit.
                skip_field(wire_type, tag, &mut buf, DecodeContext::default())?;
                end = raw.len() - buf.len();
            }
            match runs.last_mut() {
                Some(r) if r.end == start => r.end = end,
                _ => runs.push(start..end),
            }
        }
        let digest = match (runs.as_slice(), recognised) {
            ([one], Some(digest)) => {
                known.remember(one.len(), digest);
                digest
            }
            ([one], None) => {
                let digest = xxhash_rust::xxh3::xxh3_128(&raw[one.clone()]);
                known.remember(one.len(), digest);
                digest
            }
            (runs, _) => {
                // The same digest as of the runs end to end.
                let mut hasher = xxhash_rust::xxh3::Xxh3::new();
                for r in runs {
                    hasher.update(&raw[r.clone()]);
                }
                hasher.digest128()
            }
        };
        Ok(SotwRequest {
            head,
            names: SotwNames { digest, raw },
        })
    }
}

/// Lists of names a SotW stream sent before, as one run of `resource_names`
/// fields: their length in bytes and digest, for the most recently read
/// (at most [`KnownNames::HELD`], of at least [`KnownNames::WORTH`] bytes). Envoy
/// repeats its EDS list (every cluster, ~1400 names at 1000 services) in
/// every ACK, and stepping over the names again cost half of reading the
/// ACK: a run that starts where the names do, ends where the next field
/// does, and hashes to a known digest is the known list, validated when it
/// was first read, and is hashed but not walked.
#[derive(Debug, Default)]
pub(crate) struct KnownNames {
    /// (bytes, digest), the most recent first.
    lists: Vec<(usize, u128)>,
}

impl KnownNames {
    /// Lists held (a stream has one large one, EDS, in practice).
    const HELD: usize = 2;
    /// Shorter lists are walked each time: it costs about what a probe
    /// does. (Bookinfo's EDS list, ~15 clusters, is ~700 bytes: real
    /// Envoys in the end-to-end tests go through the probe.)
    const WORTH: usize = 256;

    /// The length and digest of a known list whose run starts at `at` of
    /// `raw`, if one does: the byte after it must end the run (the end of
    /// the message, or a key other than a name's `0x1a`) before its bytes
    /// are hashed.
    fn recognise(&self, raw: &[u8], at: usize) -> Option<(usize, u128)> {
        if raw.get(at) != Some(&0x1a) {
            return None;
        }
        self.lists.iter().find_map(|&(len, digest)| {
            let end = at.checked_add(len).filter(|&end| end <= raw.len())?;
            if raw.get(end) == Some(&0x1a) {
                return None;
            }
            (xxhash_rust::xxh3::xxh3_128(&raw[at..end]) == digest).then_some((len, digest))
        })
    }

    /// Holds a list of `len` bytes read in one run, and its digest, as
    /// the most recent.
    fn remember(&mut self, len: usize, digest: u128) {
        if len < Self::WORTH || self.lists.first() == Some(&(len, digest)) {
            return;
        }
        self.lists.retain(|&(l, _)| l != len);
        self.lists.insert(0, (len, digest));
        self.lists.truncate(Self::HELD);
    }
}

/// The `resource_names` field at `at`, if it is one with the one-byte key
/// `0x1a` (field 3, length-delimited) and its name is all there: the
/// name's byte range (without key and length). A SotW EDS ACK is ~1400 of
/// them; stepping over them with this rather than through prost's
/// `decode_key` and `skip_field` for each (`skip_field` was ~4 % of the
/// daemon's CPU in a SotW endpoint push) is docs/PERFORMANCE.md's step 44.
fn name_at(raw: &[u8], at: usize) -> Option<std::ops::Range<usize>> {
    if raw.get(at) != Some(&0x1a) {
        return None;
    }
    let mut rest = raw.get(at + 1..)?;
    let len = prost::encoding::decode_varint(&mut rest).ok()?;
    let start = raw.len() - rest.len();
    let end = usize::try_from(len)
        .ok()
        .and_then(|l| start.checked_add(l))
        .filter(|&end| end <= raw.len())?;
    Some(start..end)
}

/// The end of the run of [`name_at`] fields that starts at `at` (`at`
/// itself when none does). Anything else, a name that does not fit
/// included, ends the run, for the caller to read field by field.
fn names_run(raw: &[u8], mut at: usize) -> usize {
    while let Some(name) = name_at(raw, at) {
        at = name.end;
    }
    at
}

/// Calls `f` with the byte range of each `resource_names` value of `raw`
/// (the name itself, without its key and length), in order.
fn names_in(
    raw: &[u8],
    mut f: impl FnMut(std::ops::Range<usize>),
) -> Result<(), prost::DecodeError> {
    use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
    let mut buf = raw;
    while !buf.is_empty() {
        if let Some(name) = name_at(raw, raw.len() - buf.len()) {
            buf = &raw[name.end..];
            f(name);
            continue;
        }
        let (tag, wire_type) = decode_key(&mut buf)?;
        if tag == 3 && wire_type == WireType::LengthDelimited {
            // A name `name_at` did not take (a longer key): the value
            // starts after its length; `skip_field` checks it is all there.
            let mut value = buf;
            decode_varint(&mut value)?;
            let value = raw.len() - value.len();
            skip_field(wire_type, tag, &mut buf, DecodeContext::default())?;
            f(value..raw.len() - buf.len());
        } else {
            skip_field(wire_type, tag, &mut buf, DecodeContext::default())?;
        }
    }
    Ok(())
}

impl SotwNames {
    /// Whether the request names nothing.
    pub(crate) fn is_empty(&self) -> bool {
        let mut any = false;
        // The bytes were walked when decoded: no error here.
        let _ = names_in(&self.raw, |_| any = true);
        !any
    }

    /// A digest of the names as sent (their order included): equal
    /// digests, equal lists.
    pub(crate) fn digest(&self) -> u128 {
        self.digest
    }

    /// The names, sorted and unique, as slices of the received bytes.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` when a name is not UTF-8 (a `string` field).
    pub(crate) fn names(&self) -> Result<Vec<Bytes>, Status> {
        let mut names = Vec::new();
        // The bytes were walked when decoded: no error here.
        let _ = names_in(&self.raw, |value| names.push(self.raw.slice(value)));
        if let Some(bad) = names.iter().find(|n| std::str::from_utf8(n).is_err()) {
            return Err(Status::invalid_argument(format!(
                "resource name is not UTF-8: {}",
                String::from_utf8_lossy(bad)
            )));
        }
        names.sort_unstable();
        names.dedup();
        Ok(names)
    }
}

/// How a request type is read from one gRPC message's bytes.
pub(crate) trait Decode: Sized {
    /// What the decoder keeps from one message of a stream to the next.
    type Memory: Default + Send + Sync + Unpin + 'static;

    /// Decodes `raw` (shared, so that fields can be slices of it), the
    /// stream's `memory` at hand.
    ///
    /// # Errors
    /// When `raw` is not a valid encoding of the message.
    fn decode(raw: Bytes, memory: &mut Self::Memory) -> Result<Self, prost::DecodeError>;
}

impl Decode for envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest {
    type Memory = ();

    fn decode(raw: Bytes, (): &mut ()) -> Result<Self, prost::DecodeError> {
        prost::Message::decode(raw)
    }
}

/// What a connection sends: messages, then possibly a final error status.
/// Boxed: a channel holds slots in blocks of 32, allocated when created, so
/// each connection's costs 32 x the slot size (80 bytes unboxed).
pub(crate) type Outgoing = mpsc::Sender<Result<Box<Message>, Status>>;

/// The response body of one ADS stream: the messages received on the
/// channel, chunked as hyper asks for data; ends with the gRPC status in
/// the trailers (`OK` when the connection closes the channel, the error it
/// sent otherwise).
#[derive(Debug)]
pub(crate) struct ResponseBody {
    rx: mpsc::Receiver<Result<Box<Message>, Status>>,
    current: Option<Message>,
    done: bool,
}

impl ResponseBody {
    pub(crate) fn new(rx: mpsc::Receiver<Result<Box<Message>, Status>>) -> ResponseBody {
        ResponseBody {
            rx,
            current: None,
            done: false,
        }
    }
}

fn trailers(status: &Status) -> Frame<Bytes> {
    let mut headers = http::HeaderMap::new();
    if status.add_header(&mut headers).is_err() {
        headers.insert(Status::GRPC_STATUS, http::HeaderValue::from_static("13"));
    }
    Frame::trailers(headers)
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        loop {
            if let Some(m) = &mut self.current {
                if let Some(chunk) = m.next_chunk() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                self.current = None;
            }
            if self.done {
                return Poll::Ready(None);
            }
            match ready!(self.rx.poll_recv(cx)) {
                Some(Ok(m)) => self.current = Some(*m),
                Some(Err(status)) => {
                    self.done = true;
                    return Poll::Ready(Some(Ok(trailers(&status))));
                }
                None => {
                    self.done = true;
                    return Poll::Ready(Some(Ok(trailers(&Status::ok("")))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.current.is_none()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
    };
    use envoy_types::pb::google::protobuf::Any;
    use prost::Message as _;
    use std::sync::Arc;

    fn any(type_url: &str, len: usize) -> (Any, Bytes) {
        let a = Any {
            type_url: type_url.into(),
            value: (0..len).map(|i| (i % 251) as u8).collect(),
        };
        let b = Bytes::from(a.encode_to_vec());
        (a, b)
    }

    /// The message body without the gRPC header, after checking the header.
    fn unframe(m: &Message) -> Vec<u8> {
        let v = m.to_vec();
        assert_eq!(v[0], 0, "not compressed");
        let len = u32::from_be_bytes([v[1], v[2], v[3], v[4]]) as usize;
        assert_eq!(len, v.len() - 5, "the header gives the message's length");
        v[5..].to_vec()
    }

    /// A SotW request read on a stream of its own.
    fn sotw(raw: Bytes) -> Result<SotwRequest, prost::DecodeError> {
        <SotwRequest as Decode>::decode(raw, &mut KnownNames::default())
    }

    #[test]
    fn sotw_decodes_as_envoys_discovery_response() {
        let (a1, b1) = any("type.googleapis.com/envoy.config.cluster.v3.Cluster", 10);
        let (a2, b2) = any("type.googleapis.com/envoy.config.cluster.v3.Cluster", 300);
        let m = sotw_response("7", "t", "7-1", [&b1, &b2]).unwrap();
        let decoded = DiscoveryResponse::decode(unframe(&m).as_slice()).unwrap();
        assert_eq!(
            decoded,
            DiscoveryResponse {
                version_info: "7".into(),
                resources: vec![a1, a2],
                type_url: "t".into(),
                nonce: "7-1".into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn delta_decodes_as_envoys_delta_discovery_response() {
        let (a1, b1) = any("t", 5);
        let (a2, b2) = any("t", 200_000);
        let resources: Vec<EncodedResource> = vec![
            (Arc::from("a"), 0xabc, b1),
            (Arc::from("outbound|80||b.default.svc.cluster.local"), 1, b2),
        ];
        let removed = vec!["gone".to_owned(), String::new()];
        let m = delta_response("3", "t", "3-9", &resources, &removed).unwrap();
        let decoded = DeltaDiscoveryResponse::decode(unframe(&m).as_slice()).unwrap();
        assert_eq!(
            decoded,
            DeltaDiscoveryResponse {
                system_version_info: "3".into(),
                resources: vec![
                    Resource {
                        name: "a".into(),
                        version: "0000000000000abc".into(),
                        resource: Some(a1),
                        ..Default::default()
                    },
                    Resource {
                        name: "outbound|80||b.default.svc.cluster.local".into(),
                        version: "0000000000000001".into(),
                        resource: Some(a2),
                        ..Default::default()
                    },
                ],
                type_url: "t".into(),
                nonce: "3-9".into(),
                removed_resources: removed,
                ..Default::default()
            }
        );
    }

    #[test]
    fn chunks_rebuild_the_message_and_large_resources_are_not_copied() {
        let (_, small) = any("t", 40_000);
        let (_, large) = any("t", 3 * CHUNK_BYTES);
        let mut m = sotw_response("1", "t", "n", [&small, &small, &large, &small]).unwrap();
        let whole = m.to_vec();
        let mut chunks = Vec::new();
        while let Some(c) = m.next_chunk() {
            assert!(c.len() <= CHUNK_BYTES || c.len() == large.len());
            chunks.push(c);
        }
        assert_eq!(chunks.concat(), whole);
        assert!(
            chunks.iter().any(|c| c.as_ptr() == large.as_ptr()),
            "the large resource is handed on as it is"
        );
        assert_eq!(m.next_chunk(), None);
        assert_eq!(m.sent, whole.len());
    }

    /// A request body whose DATA frames are `frames`.
    fn body(frames: Vec<Vec<u8>>) -> tonic::body::Body {
        let frames = frames
            .into_iter()
            .map(|f| Ok::<_, Status>(Frame::data(Bytes::from(f))));
        tonic::body::Body::new(http_body_util::StreamBody::new(futures::stream::iter(
            frames,
        )))
    }

    fn framed(request: &DiscoveryRequest) -> Vec<u8> {
        let msg = request.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        out.extend_from_slice(&msg);
        out
    }

    #[tokio::test]
    async fn requests_split_over_frames_or_sharing_one_are_read_whole() {
        use futures::StreamExt;
        let names: Vec<String> = (0..2000)
            .map(|i| format!("outbound|8080||svc-{i:04}.ns.svc.cluster.local"))
            .collect();
        let big = DiscoveryRequest {
            type_url: "eds".into(),
            resource_names: names.clone(),
            ..Default::default()
        };
        let small = DiscoveryRequest {
            type_url: "cds".into(),
            response_nonce: "1-1".into(),
            ..Default::default()
        };
        // The big one in 16 KiB frames (as h2 sends it), then two in one frame.
        let mut frames: Vec<Vec<u8>> = framed(&big).chunks(16 * 1024).map(<[u8]>::to_vec).collect();
        frames.push([framed(&small), framed(&small)].concat());
        let got: Vec<Result<SotwRequest, Status>> =
            Requests::<SotwRequest>::new(body(frames)).collect().await;
        assert_eq!(got.len(), 3);
        let big = got[0].as_ref().unwrap();
        assert_eq!(big.head.type_url, "eds");
        assert_eq!(big.names.names().unwrap(), names);
        for small in &got[1..] {
            let small = small.as_ref().unwrap();
            assert_eq!(
                (
                    small.head.type_url.as_str(),
                    small.head.response_nonce.as_str()
                ),
                ("cds", "1-1")
            );
            assert!(small.names.names().unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn truncated_oversized_and_compressed_requests_are_refused() {
        use futures::StreamExt;
        let read = |frames| async move {
            Requests::<SotwRequest>::new(body(frames))
                .collect::<Vec<_>>()
                .await
        };
        let whole = framed(&DiscoveryRequest {
            type_url: "cds".into(),
            ..Default::default()
        });
        let got = read(vec![whole[..whole.len() - 1].to_vec()]).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].as_ref().unwrap_err().code(), tonic::Code::Internal);
        let mut oversized = vec![0];
        oversized.extend_from_slice(&(MAX_REQUEST_BYTES as u32 + 1).to_be_bytes());
        let got = read(vec![oversized]).await;
        assert_eq!(got.len(), 1, "nothing is read after a refusal");
        assert_eq!(
            got[0].as_ref().unwrap_err().code(),
            tonic::Code::ResourceExhausted
        );
        let mut compressed = whole.clone();
        compressed[0] = 1;
        let got = read(vec![compressed]).await;
        assert_eq!(
            got[0].as_ref().unwrap_err().code(),
            tonic::Code::Unimplemented
        );
    }

    #[test]
    fn sotw_requests_read_as_envoys_discovery_request() {
        let sent = DiscoveryRequest {
            version_info: "3".into(),
            resource_names: vec!["b".into(), "a".into(), "b".into()],
            type_url: "t".into(),
            response_nonce: "3-1".into(),
            error_detail: Some(envoy_types::pb::google::rpc::Status {
                code: 3,
                message: "no".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let read = sotw(Bytes::from(sent.encode_to_vec())).unwrap();
        assert_eq!(
            read.names.names().unwrap(),
            [Bytes::from("a"), Bytes::from("b")]
        );
        let head = read.head;
        assert_eq!(
            (
                head.version_info.as_str(),
                head.type_url.as_str(),
                head.response_nonce.as_str()
            ),
            ("3", "t", "3-1")
        );
        assert_eq!(head.error_detail.unwrap().message, "no");
        // resource_names: one name, not UTF-8.
        let bad = sotw(Bytes::from_static(&[0x1a, 2, 0xff, 0xfe])).unwrap();
        assert_eq!(
            bad.names.names().unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        // A name longer than the message is refused when the request is read.
        assert!(sotw(Bytes::from_static(&[0x1a, 9, b'a'])).is_err());
        // Names of two-byte lengths, the last one cut short.
        let long = "x".repeat(200);
        let mut sent = DiscoveryRequest {
            resource_names: vec![long.clone(), "a".into()],
            response_nonce: "7".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let read = sotw(Bytes::from(sent.clone())).unwrap();
        assert_eq!(
            read.names.names().unwrap(),
            [Bytes::from("a"), Bytes::from(long.clone())]
        );
        assert_eq!(read.head.response_nonce, "7");
        sent.extend_from_slice(&[0x1a, 200, 1, b'x']);
        assert!(sotw(Bytes::from(sent)).is_err());
    }

    #[test]
    fn the_digest_tells_name_lists_apart_and_reads_nothing_else() {
        let digest = |names: &[&str], nonce: &str| {
            let request = DiscoveryRequest {
                resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
                response_nonce: nonce.into(),
                ..Default::default()
            };
            sotw(Bytes::from(request.encode_to_vec()))
                .unwrap()
                .names
                .digest()
        };
        let ab = digest(&["a", "b"], "1");
        assert_eq!(ab, digest(&["a", "b"], "2"), "the nonce is not a name");
        assert_ne!(ab, digest(&["ab"], "1"));
        assert_ne!(ab, digest(&["a", "b", ""], "1"));
        assert_ne!(
            ab,
            digest(&["b", "a"], "1"),
            "order counts: a new list is read"
        );
        assert_ne!(ab, digest(&[], "1"));
        // Names with another field between them: the same list.
        let mut split = vec![0x1a, 1, b'a'];
        split.extend_from_slice(&[0x2a, 1, b'9']); // response_nonce
        split.extend_from_slice(&[0x1a, 1, b'b']);
        let split = sotw(Bytes::from(split)).unwrap();
        assert_eq!(split.names.digest(), ab);
        assert_eq!(split.head.response_nonce, "9");
    }

    #[test]
    fn a_known_list_of_names_is_recognised_and_any_other_is_read() {
        let request = |names: &[String], nonce: &str| {
            Bytes::from(
                DiscoveryRequest {
                    version_info: "4".into(),
                    resource_names: names.to_vec(),
                    type_url: "t".into(),
                    response_nonce: nonce.into(),
                    ..Default::default()
                }
                .encode_to_vec(),
            )
        };
        // Names start after `version_info` (key, length, "4").
        let at = 3;
        let eds: Vec<String> = (0..100)
            .map(|i| format!("outbound|80||svc-{i:03}.ns.svc.cluster.local"))
            .collect();
        let mut known = KnownNames::default();
        let first = <SotwRequest as Decode>::decode(request(&eds, "1"), &mut known).unwrap();
        let again = request(&eds, "22");
        let (len, digest) = known.recognise(&again, at).expect("the list is known");
        assert_eq!(len, eds.iter().map(|n| 2 + n.len()).sum::<usize>());
        assert_eq!(digest, first.names.digest());
        let read = <SotwRequest as Decode>::decode(again.clone(), &mut known).unwrap();
        assert_eq!(read.names.digest(), digest);
        assert_eq!(read.head.response_nonce, "22", "the fields after the names");
        assert_eq!(read.names.names().unwrap().len(), 100);
        assert_eq!(sotw(again).unwrap(), read, "as read on a new stream");

        // Lists it is not: one name changed (the same length), one more,
        // one fewer. Each is read, and has the digest a new stream gives it.
        let mut changed = eds.clone();
        changed[50] = changed[50].replace("svc-050", "svc-950");
        let mut more = eds.clone();
        more.push("outbound|80||extra".into());
        let fewer = &eds[..99];
        for (list, what) in [
            (&changed[..], "changed"),
            (&more[..], "more"),
            (fewer, "fewer"),
        ] {
            let raw = request(list, "3");
            assert!(known.recognise(&raw, at).is_none(), "{what}");
            let read = <SotwRequest as Decode>::decode(raw.clone(), &mut KnownNames::default());
            let read = read.unwrap();
            assert_ne!(read.names.digest(), digest, "{what}");
            assert_eq!(sotw(raw).unwrap(), read, "{what}");
        }
        // Short lists are not held; at most two are.
        let mut known = KnownNames::default();
        let _ = <SotwRequest as Decode>::decode(request(&eds[..2], "1"), &mut known).unwrap();
        assert!(known.lists.is_empty());
        for list in [&eds[..], &eds[..90], &eds[..80]] {
            let _ = <SotwRequest as Decode>::decode(request(list, "1"), &mut known).unwrap();
        }
        assert_eq!(known.lists.len(), 2);
        assert!(known.recognise(&request(&eds[..80], "5"), at).is_some());
        assert!(known.recognise(&request(&eds, "5"), at).is_none());
        // A list recognised is the most recent again: read the 90 names
        // (recognised), then all 100, and the 90 are still held.
        for list in [&eds[..90], &eds[..]] {
            let _ = <SotwRequest as Decode>::decode(request(list, "6"), &mut known).unwrap();
        }
        assert!(known.recognise(&request(&eds[..90], "7"), at).is_some());
        assert!(known.recognise(&request(&eds[..80], "7"), at).is_none());
    }

    #[tokio::test]
    async fn the_body_ends_with_the_status_in_trailers() {
        use http_body_util::BodyExt;
        let (tx, rx) = mpsc::channel(4);
        let (_, b) = any("t", 100);
        tx.send(sotw_response("1", "t", "n", [&b]).map(Box::new))
            .await
            .unwrap();
        tx.send(Err(Status::permission_denied("not yours")))
            .await
            .unwrap();
        drop(tx);
        let collected = ResponseBody::new(rx).collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers.get("grpc-status").unwrap(), "7");
        // Percent-encoded, as gRPC carries messages in trailers.
        assert_eq!(trailers.get("grpc-message").unwrap(), "not%20yours");
        let data = collected.to_bytes();
        // header, version "1", the resource (key, length, Any), type URL, nonce
        assert_eq!(data.len(), 5 + 3 + 2 + b.len() + 3 + 3);
    }
}
