//! Durations as Istio's CRDs write them: Go `time.ParseDuration` strings
//! such as `"5s"`, `"100ms"`, `"1.5s"`, `"1h30m"` (what the CRD's CEL rule
//! `duration(self)` accepts), which is also a superset of protobuf JSON's
//! `google.protobuf.Duration` form (`"0.5s"`).

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative span of time, parsed from a Go duration string.
///
/// Serialises back as whole seconds plus a fractional part (`"1.5s"`), the
/// protobuf JSON form Istio itself writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason}")]
pub struct DurationError {
    /// The string as written.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Duration {
    /// The span as a [`std::time::Duration`].
    pub fn as_std(self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    /// Parses `[0-9.]+unit` repeated, units `h`, `m`, `s`, `ms`, `us`/`µs`, `ns`;
    /// a bare `"0"` is zero. Negative durations are refused.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| DurationError {
            input: input.to_owned(),
            reason,
        };
        let s = input.trim();
        if s == "0" {
            return Ok(Duration(std::time::Duration::ZERO));
        }
        if s.is_empty() {
            return Err(err("empty"));
        }
        if s.starts_with('-') {
            return Err(err("negative durations are not allowed"));
        }
        let s = s.strip_prefix('+').unwrap_or(s);
        let mut total_nanos: f64 = 0.0;
        let mut rest = s;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| err("missing unit (h, m, s, ms, us, ns)"))?;
            if num_len == 0 {
                return Err(err("expected a number"));
            }
            let value: f64 = rest[..num_len]
                .parse()
                .map_err(|_| err("malformed number"))?;
            rest = &rest[num_len..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let nanos_per_unit = match &rest[..unit_len] {
                "h" => 3_600e9,
                "m" => 60e9,
                "s" => 1e9,
                "ms" => 1e6,
                "us" | "µs" | "μs" => 1e3,
                "ns" => 1.0,
                _ => return Err(err("unknown unit (use h, m, s, ms, us, ns)")),
            };
            total_nanos += value * nanos_per_unit;
            rest = &rest[unit_len..];
        }
        if !total_nanos.is_finite() || total_nanos > u64::MAX as f64 {
            return Err(err("out of range"));
        }
        Ok(Duration(std::time::Duration::from_nanos(
            total_nanos.round() as u64,
        )))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        let nanos = self.0.subsec_nanos();
        if nanos == 0 {
            write!(f, "{secs}s")
        } else {
            let frac = format!("{nanos:09}");
            write!(f, "{secs}.{}s", frac.trim_end_matches('0'))
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as Std;

    fn parse(s: &str) -> Result<Std, DurationError> {
        s.parse::<Duration>().map(Duration::as_std)
    }

    #[test]
    fn parses_istio_forms() {
        assert_eq!(parse("5s"), Ok(Std::from_secs(5)));
        assert_eq!(parse("100ms"), Ok(Std::from_millis(100)));
        assert_eq!(parse("0.5s"), Ok(Std::from_millis(500)));
        assert_eq!(parse("1h30m"), Ok(Std::from_secs(5400)));
        assert_eq!(parse("1m0.25s"), Ok(Std::from_millis(60_250)));
        assert_eq!(parse("7us"), Ok(Std::from_micros(7)));
        assert_eq!(parse("0"), Ok(Std::ZERO));
    }

    #[test]
    fn refuses_garbage() {
        for bad in ["", "5", "s", "5x", "-1s", "1.2.3s", "ms5"] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn displays_as_protobuf_json() {
        assert_eq!(Duration(Std::from_millis(1500)).to_string(), "1.5s");
        assert_eq!(Duration(Std::from_secs(7)).to_string(), "7s");
        assert_eq!(Duration(Std::from_micros(1)).to_string(), "0.000001s");
    }
}
