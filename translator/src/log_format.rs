//! Envoy's access log format strings (`SubstitutionFormatString`), checked
//! as Envoy 1.40 parses them, so that a mesh config `accessLogFormat` Envoy
//! would refuse is reported by the daemon rather than NACKed by every
//! proxy for every listener that carries it.
//!
//! A format is text with command operators: `%NAME%`, `%NAME(args)%`,
//! `%NAME:length%` or `%NAME(args):length%`; `%%` is a literal `%`. Names
//! are `[A-Z0-9_]+`; `args` may hold any character but a newline and ends
//! at the first `)` followed by `%` or `:digits%`; empty parentheses are no
//! arguments. Each operator takes arguments or not, needs them or not, and
//! allows a length or not; the table below is the Envoy 1.40 build's own
//! answers (`envoy --mode validate` on every operator, with and without
//! arguments and a length; `scripts/log-operators` repeats it). The
//! arguments of the header operators (`REQ`, `RESP`, ...), `PATH`,
//! `QUERY_PARAMS`, `GRPC_STATUS`, `REQUESTED_SERVER_NAME`, `METADATA` and
//! `FILTER_STATE` are checked as Envoy checks them; those of `CEL`,
//! `COALESCE`, `COMMON_DURATION` and the rest only for presence.

/// What a format uses that needs an extension formatter configured beside it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Uses {
    /// `%REQ_WITHOUT_QUERY(...)%`: needs `envoy.formatter.req_without_query`
    /// (Istio adds it when the format names it).
    pub req_without_query: bool,
}

/// How an operator takes arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Args {
    /// None (`()` is none).
    No,
    /// Optional, of any form.
    Optional,
    /// Required, of any form.
    Required,
    /// Required header names: one, or two alternatives (`A?B`).
    Headers,
    /// Optional header names (`REQ_WITHOUT_QUERY`).
    OptionalHeaders,
    /// `WQ` or `NQ`, then optionally `:ORIG`, `:PATH` or `:ORIG_OR_PATH`.
    Path,
    /// Optional, one of these.
    OneOf(&'static [&'static str]),
    /// `TYPE[:key...]`, the type one of Envoy's metadata kinds.
    Metadata,
    /// `key:PLAIN`, `key:TYPED` or `key:FIELD:name` (or just `key`).
    FilterState,
}

/// Operators that take no arguments and no length.
const PLAIN: &[&str] = &[
    "ACCESS_LOG_TYPE",
    "BYTES_RECEIVED",
    "BYTES_RETRANSMITTED",
    "BYTES_SENT",
    "CONNECTION_ID",
    "CONNECTION_TERMINATION_DETAILS",
    "CUSTOM_FLAGS",
    "DOWNSTREAM_CX_RTT",
    "DOWNSTREAM_DECOMPRESSED_HEADER_BYTES_RECEIVED",
    "DOWNSTREAM_DECOMPRESSED_HEADER_BYTES_SENT",
    "DOWNSTREAM_DETECTED_CLOSE_TYPE",
    "DOWNSTREAM_DIRECT_LOCAL_ADDRESS",
    "DOWNSTREAM_DIRECT_LOCAL_ADDRESS_ENDPOINT_ID",
    "DOWNSTREAM_DIRECT_LOCAL_PORT",
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS",
    "DOWNSTREAM_DIRECT_REMOTE_PORT",
    "DOWNSTREAM_HANDSHAKE_DURATION",
    "DOWNSTREAM_HEADER_BYTES_RECEIVED",
    "DOWNSTREAM_HEADER_BYTES_SENT",
    "DOWNSTREAM_LOCAL_ADDRESS",
    "DOWNSTREAM_LOCAL_ADDRESS_ENDPOINT_ID",
    "DOWNSTREAM_LOCAL_CLOSE_REASON",
    "DOWNSTREAM_LOCAL_DNS_SAN",
    "DOWNSTREAM_LOCAL_EMAIL_SAN",
    "DOWNSTREAM_LOCAL_IP_SAN",
    "DOWNSTREAM_LOCAL_OTHERNAME_SAN",
    "DOWNSTREAM_LOCAL_PORT",
    "DOWNSTREAM_LOCAL_SUBJECT",
    "DOWNSTREAM_LOCAL_URI_SAN",
    "DOWNSTREAM_PEER_CERT",
    "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_1",
    "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_256",
    "DOWNSTREAM_PEER_CHAIN_SERIALS",
    "DOWNSTREAM_PEER_DNS_SAN",
    "DOWNSTREAM_PEER_EMAIL_SAN",
    "DOWNSTREAM_PEER_FINGERPRINT_1",
    "DOWNSTREAM_PEER_FINGERPRINT_256",
    "DOWNSTREAM_PEER_IP_SAN",
    "DOWNSTREAM_PEER_ISSUER",
    "DOWNSTREAM_PEER_ISSUER_FINGERPRINT_256",
    "DOWNSTREAM_PEER_ISSUER_SERIAL",
    "DOWNSTREAM_PEER_OTHERNAME_SAN",
    "DOWNSTREAM_PEER_SERIAL",
    "DOWNSTREAM_PEER_SUBJECT",
    "DOWNSTREAM_PEER_URI_SAN",
    "DOWNSTREAM_REMOTE_ADDRESS",
    "DOWNSTREAM_REMOTE_PORT",
    "DOWNSTREAM_TLS_CIPHER",
    "DOWNSTREAM_TLS_GROUP",
    "DOWNSTREAM_TLS_SESSION_ID",
    "DOWNSTREAM_TLS_VERSION",
    "DOWNSTREAM_TRANSPORT_FAILURE_REASON",
    "DOWNSTREAM_WIRE_BYTES_RECEIVED",
    "DOWNSTREAM_WIRE_BYTES_SENT",
    "DURATION",
    "FILTER_CHAIN_NAME",
    "GRPC_STATUS_NUMBER",
    "HOSTNAME",
    "LISTENER_NAME",
    "LOCAL_REPLY_BODY",
    "PACKETS_RETRANSMITTED",
    "PROTOCOL",
    "REQUEST_DURATION",
    "REQUEST_HEADERS_BYTES",
    "REQUEST_TX_DURATION",
    "RESPONSE_CODE",
    "RESPONSE_DURATION",
    "RESPONSE_FLAGS",
    "RESPONSE_FLAGS_LONG",
    "RESPONSE_HEADERS_BYTES",
    "RESPONSE_TRAILERS_BYTES",
    "RESPONSE_TX_DURATION",
    "ROUNDTRIP_DURATION",
    "ROUTE_NAME",
    "ROUTE_RESOLUTION_COUNT",
    "ROUTE_RESOLUTION_TIME_US",
    "SPAN_ID",
    "STREAM_ID",
    "TLS_JA3_FINGERPRINT",
    "TLS_JA4_FINGERPRINT",
    "TRACE_ID",
    "UNIQUE_ID",
    "UPSTREAM_CLUSTER",
    "UPSTREAM_CLUSTER_RAW",
    "UPSTREAM_CONNECTION_ID",
    "UPSTREAM_CONNECTION_IDS_ATTEMPTED",
    "UPSTREAM_CONNECTION_POOL_READY_DURATION",
    "UPSTREAM_DECOMPRESSED_HEADER_BYTES_RECEIVED",
    "UPSTREAM_DECOMPRESSED_HEADER_BYTES_SENT",
    "UPSTREAM_DETECTED_CLOSE_TYPE",
    "UPSTREAM_HEADER_BYTES_RECEIVED",
    "UPSTREAM_HEADER_BYTES_SENT",
    "UPSTREAM_HOST",
    "UPSTREAM_HOSTS_ATTEMPTED",
    "UPSTREAM_HOSTS_ATTEMPTED_WITHOUT_PORT",
    "UPSTREAM_HOST_NAME",
    "UPSTREAM_HOST_NAMES_ATTEMPTED",
    "UPSTREAM_HOST_NAMES_ATTEMPTED_WITHOUT_PORT",
    "UPSTREAM_HOST_NAME_WITHOUT_PORT",
    "UPSTREAM_LOCAL_ADDRESS",
    "UPSTREAM_LOCAL_CLOSE_REASON",
    "UPSTREAM_LOCAL_DNS_SAN",
    "UPSTREAM_LOCAL_IP_SAN",
    "UPSTREAM_LOCAL_PORT",
    "UPSTREAM_LOCAL_URI_SAN",
    "UPSTREAM_PEER_CERT",
    "UPSTREAM_PEER_DNS_SAN",
    "UPSTREAM_PEER_IP_SAN",
    "UPSTREAM_PEER_ISSUER",
    "UPSTREAM_PEER_SUBJECT",
    "UPSTREAM_PEER_URI_SAN",
    "UPSTREAM_PROTOCOL",
    "UPSTREAM_REMOTE_ADDRESS",
    "UPSTREAM_REMOTE_ADDRESS_ENDPOINT_ID",
    "UPSTREAM_REMOTE_PORT",
    "UPSTREAM_REQUEST_ATTEMPT_COUNT",
    "UPSTREAM_SERVER_NAME",
    "UPSTREAM_TLS_CIPHER",
    "UPSTREAM_TLS_GROUP",
    "UPSTREAM_TLS_SESSION_ID",
    "UPSTREAM_TLS_VERSION",
    "UPSTREAM_TRANSPORT_FAILURE_REASON",
    "UPSTREAM_WIRE_BYTES_RECEIVED",
    "UPSTREAM_WIRE_BYTES_SENT",
    "VIRTUAL_CLUSTER_NAME",
];

/// The other operators: how each takes arguments, and whether it allows a
/// length.
const WITH_ARGS: &[(&str, Args, bool)] = &[
    // Optional arguments (a time format, an address mask, an option), no length.
    (
        "DOWNSTREAM_DIRECT_LOCAL_ADDRESS_WITHOUT_PORT",
        Args::Optional,
        false,
    ),
    (
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT",
        Args::Optional,
        false,
    ),
    (
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
        Args::Optional,
        false,
    ),
    ("DOWNSTREAM_PEER_CERT_V_END", Args::Optional, false),
    ("DOWNSTREAM_PEER_CERT_V_START", Args::Optional, false),
    (
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
        Args::Optional,
        false,
    ),
    ("EMIT_TIME", Args::Optional, false),
    ("EMIT_TIME_LOCAL", Args::Optional, false),
    ("RESPONSE_CODE_DETAILS", Args::Optional, false),
    ("START_TIME", Args::Optional, false),
    ("START_TIME_LOCAL", Args::Optional, false),
    ("UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT", Args::Optional, false),
    ("UPSTREAM_PEER_CERT_V_END", Args::Optional, false),
    ("UPSTREAM_PEER_CERT_V_START", Args::Optional, false),
    (
        "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
        Args::Optional,
        false,
    ),
    // Options from a fixed set.
    (
        "GRPC_STATUS",
        Args::OneOf(&["CAMEL_STRING", "SNAKE_STRING", "NUMBER"]),
        false,
    ),
    (
        "REQUESTED_SERVER_NAME",
        Args::OneOf(&["SNI_ONLY", "SNI_FIRST", "HOST_FIRST"]),
        false,
    ),
    ("QUERY_PARAMS", Args::OneOf(&["ORIG", "DECODED"]), true),
    ("PATH", Args::Path, true),
    // Header names.
    ("REQ", Args::Headers, true),
    ("RESP", Args::Headers, true),
    ("TRAILER", Args::Headers, true),
    ("REQUEST_HEADER", Args::Headers, true),
    ("RESPONSE_HEADER", Args::Headers, true),
    ("RESPONSE_TRAILER", Args::Headers, true),
    ("STREAM_INFO_REQ", Args::Headers, true),
    ("REQ_WITHOUT_QUERY", Args::OptionalHeaders, true),
    // Other required arguments.
    ("CEL", Args::Required, true),
    ("DYNAMIC_METADATA", Args::Required, true),
    ("ENVIRONMENT", Args::Required, true),
    ("QUERY_PARAM", Args::Required, true),
    ("FILTER_STATE", Args::FilterState, true),
    ("UPSTREAM_FILTER_STATE", Args::FilterState, true),
    ("CLUSTER_METADATA", Args::Required, false),
    ("UPSTREAM_METADATA", Args::Required, false),
    ("METADATA", Args::Metadata, true),
    ("COALESCE", Args::Required, true),
    ("COMMON_DURATION", Args::Required, false),
];

/// The metadata kinds `%METADATA(KIND:...)%` reads.
const METADATA_KINDS: &[&str] = &[
    "DYNAMIC",
    "CLUSTER",
    "ROUTE",
    "UPSTREAM_HOST",
    "LISTENER",
    "VIRTUAL_HOST",
];

/// Every command operator Envoy 1.40 knows, by name.
pub fn operators() -> impl Iterator<Item = &'static str> {
    PLAIN
        .iter()
        .copied()
        .chain(WITH_ARGS.iter().map(|(name, _, _)| *name))
}

/// Operators whose arguments are checked for presence only (their forms:
/// a CEL expression, a JSON object of operators, two time points and a
/// precision); Envoy may still refuse them.
pub const ARGUMENTS_UNCHECKED: &[&str] = &[
    "CEL",
    "COALESCE",
    "COMMON_DURATION",
    "CLUSTER_METADATA",
    "UPSTREAM_METADATA",
    "DYNAMIC_METADATA",
    "ENVIRONMENT",
    "QUERY_PARAM",
];

/// Checks a format string.
///
/// # Errors
/// The first problem, naming the operator and its byte offset, as Envoy
/// would refuse it: no valid operator at a `%`, an operator Envoy does not
/// know, arguments missing or not allowed, a length not allowed, or
/// arguments of the wrong form.
pub fn check(format: &str) -> Result<Uses, String> {
    let bytes = format.as_bytes();
    let mut uses = Uses::default();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            i += 1;
            continue;
        }
        if bytes.get(i + 1) == Some(&b'%') {
            i += 2;
            continue;
        }
        let Some(command) = command_at(format, i) else {
            let rest: String = format[i..].chars().take(24).collect();
            return Err(format!(
                "no command operator at byte {i} (`{rest}`): a `%` starts `%NAME%`, \
                 `%NAME(args)%` or `%NAME(args):length%`; `%%` is a `%`"
            ));
        };
        let at = |problem: String| format!("`{}` at byte {i}: {problem}", command.text);
        let (args, length) =
            spec(command.name).ok_or_else(|| at("not a command operator Envoy knows".into()))?;
        if command.length && !length {
            return Err(at(format!("{} takes no length", command.name)));
        }
        check_args(command.name, args, command.args).map_err(at)?;
        uses.req_without_query |= command.name == "REQ_WITHOUT_QUERY";
        i = command.end;
    }
    Ok(uses)
}

/// One command operator as written.
struct Command<'a> {
    /// The whole operator, `%` to `%`.
    text: &'a str,
    name: &'a str,
    /// Inside the parentheses; `None` without them or when empty.
    args: Option<&'a str>,
    /// Whether a `:length` follows.
    length: bool,
    /// The offset after its closing `%`.
    end: usize,
}

/// The operator starting with the `%` at `start`, as Envoy's pattern
/// `%([A-Z0-9_]+)(\((.*?)\))?(:[0-9]+)?%` (`.` not a newline) matches it.
fn command_at(format: &str, start: usize) -> Option<Command<'_>> {
    let bytes = format.as_bytes();
    let name_end = start
        + 1
        + bytes[start + 1..]
            .iter()
            .take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || **b == b'_')
            .count();
    if name_end == start + 1 {
        return None;
    }
    let name = &format[start + 1..name_end];
    // After the name (or the closing parenthesis): `%`, or `:digits%`.
    let tail = |from: usize| -> Option<(usize, bool)> {
        match bytes.get(from)? {
            b'%' => Some((from + 1, false)),
            b':' => {
                let digits = bytes[from + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                (digits > 0 && bytes.get(from + 1 + digits) == Some(&b'%'))
                    .then_some((from + 2 + digits, true))
            }
            _ => None,
        }
    };
    let (args, (end, length)) = if bytes.get(name_end) == Some(&b'(') {
        // The shortest arguments after which the operator can end.
        let open = name_end + 1;
        let close = (open..bytes.len())
            .take_while(|&k| bytes[k] != b'\n')
            .filter(|&k| bytes[k] == b')')
            .find(|&k| tail(k + 1).is_some())?;
        let args = &format[open..close];
        ((!args.is_empty()).then_some(args), tail(close + 1)?)
    } else {
        (None, tail(name_end)?)
    };
    Some(Command {
        text: &format[start..end],
        name,
        args,
        length,
        end,
    })
}

/// How `name` takes arguments and whether it allows a length; `None`: not
/// an operator.
fn spec(name: &str) -> Option<(Args, bool)> {
    if PLAIN.contains(&name) {
        return Some((Args::No, false));
    }
    WITH_ARGS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, args, length)| (*args, *length))
}

fn check_args(name: &str, spec: Args, args: Option<&str>) -> Result<(), String> {
    let needed = || args.ok_or_else(|| format!("{name} needs arguments"));
    match spec {
        Args::No if args.is_some() => Err(format!("{name} takes no arguments")),
        Args::No | Args::Optional => Ok(()),
        Args::Required => needed().map(drop),
        Args::Headers => headers(needed()?),
        Args::OptionalHeaders => args.map_or(Ok(()), headers),
        Args::OneOf(options) => match args {
            Some(a) if !options.contains(&a) => Err(format!(
                "{name} takes one of {}, not `{a}`",
                options.join(", ")
            )),
            _ => Ok(()),
        },
        Args::Path => args.map_or(Ok(()), path),
        Args::Metadata => {
            let kind = needed()?.split(':').next().unwrap_or_default();
            if METADATA_KINDS.contains(&kind) {
                Ok(())
            } else {
                Err(format!(
                    "METADATA reads one of {}, not `{kind}`",
                    METADATA_KINDS.join(", ")
                ))
            }
        }
        Args::FilterState => {
            let mut parts = needed()?.split(':');
            let key = parts.next().unwrap_or_default();
            match (key, parts.next(), parts.next()) {
                ("", _, _) => Err(format!("{name} needs a key")),
                (_, None | Some("PLAIN" | "TYPED"), None) => Ok(()),
                (_, Some("FIELD"), Some(f)) if !f.is_empty() => Ok(()),
                (_, Some("FIELD" | "PLAIN" | "TYPED"), _) => Err(format!(
                    "{name}: FIELD, and only FIELD, is followed by a field name"
                )),
                (_, other, _) => Err(format!(
                    "{name} serialises as PLAIN, TYPED or FIELD, not `{}`",
                    other.unwrap_or_default()
                )),
            }
        }
    }
}

/// `PATH`'s options: `WQ` (with the query) or `NQ` (without), then
/// optionally where the path comes from.
fn path(args: &str) -> Result<(), String> {
    let (query, source) = args.split_once(':').unwrap_or((args, ""));
    if !["WQ", "NQ"].contains(&query) {
        return Err(format!("PATH takes WQ or NQ, not `{query}`"));
    }
    if !["", "ORIG", "PATH", "ORIG_OR_PATH"].contains(&source) {
        return Err(format!(
            "PATH's source is ORIG, PATH or ORIG_OR_PATH, not `{source}`"
        ));
    }
    Ok(())
}

/// Header names as the header operators take them: one, or two
/// alternatives separated by `?`, each an HTTP token (RFC 9110 `tchar`s),
/// a pseudo-header's leading `:` allowed.
fn headers(args: &str) -> Result<(), String> {
    let names: Vec<&str> = args.split('?').collect();
    if names.len() > 2 {
        return Err(format!("`{args}` names more than two alternative headers"));
    }
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    for name in names {
        let bare = name.strip_prefix(':').unwrap_or(name);
        if let Some(c) = bare.chars().find(|c| !tchar(*c)) {
            return Err(format!("`{name}` is not a header name (`{c}`)"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_default_formats_pass() {
        assert_eq!(
            check(crate::model::ISTIO_TEXT_LOG_FORMAT),
            Ok(Uses::default())
        );
        for (_, v) in crate::model::ISTIO_JSON_LOG_FIELDS {
            assert_eq!(check(v), Ok(Uses::default()), "{v}");
        }
    }

    #[test]
    fn operators_parse_as_envoy_parses_them() {
        for ok in [
            "plain text, 100%% sure",
            "%START_TIME(%s)% %START_TIME()%",
            "%REQ(:PATH):10% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
            "%FILTER_STATE(a:FIELD:f)% %METADATA(ROUTE)% %PATH(NQ:ORIG):5%",
        ] {
            assert_eq!(check(ok), Ok(Uses::default()), "{ok}");
        }
        assert_eq!(
            check("%REQ_WITHOUT_QUERY(:PATH)%"),
            Ok(Uses {
                req_without_query: true
            })
        );
        for (bad, says) in [
            ("100%", "no command operator at byte 3"),
            ("%REQ(:PATH", "no command operator at byte 0"),
            ("%req(:path)%", "no command operator"),
            ("%REQ(:PATH):%", "no command operator"),
            ("%BOGUS%", "`%BOGUS%` at byte 0: not a command operator"),
            ("x %UPSTREAM_HOST:5%", "UPSTREAM_HOST takes no length"),
            ("%RESPONSE_CODE(x)%", "takes no arguments"),
            ("%REQ()%", "REQ needs arguments"),
            ("%REQ(a?b?c)%", "more than two"),
            ("%REQ(a b)%", "not a header name"),
            // REQ with `a)(b)x`: its arguments end at the last `)` before `%`.
            ("%REQ(a)(b)x)%", "`a)(b)x` is not a header name (`)`)"),
            ("%GRPC_STATUS(x)%", "GRPC_STATUS takes one of"),
            ("%FILTER_STATE(a:FIELD)%", "FIELD, and only FIELD"),
            ("%FILTER_STATE(a:BOGUS)%", "not `BOGUS`"),
            ("%METADATA(NODE:a)%", "METADATA reads one of"),
            ("%PATH(XQ)%", "PATH takes WQ or NQ"),
        ] {
            let e = check(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
