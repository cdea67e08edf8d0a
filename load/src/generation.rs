//! The daemon's own account of per-proxy generation: the histograms
//! `istiod_xds_generation_seconds` (wall clock),
//! `istiod_xds_generation_cpu_seconds` (the generating thread's CPU
//! time) and `istiod_xds_generation_page_faults` (its minor page faults),
//! by `kind` (`first_key`, `full`, `endpoints`), read from its `/metrics`
//! text, and what a phase of the load run added to them.

use std::collections::BTreeMap;
use std::fmt::Write;

/// One `kind` of the histogram: cumulative bucket counts by upper bound
/// (in the histogram's unit, seconds or faults, in increasing order,
/// `+Inf` last), the sum of the samples and their count.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Generations {
    /// `(le, cumulative count)`.
    pub buckets: Vec<(f64, u64)>,
    /// All samples together (seconds or faults).
    pub sum: f64,
    /// Samples.
    pub count: u64,
}

/// Each kind's histogram, by kind.
pub type ByKind = BTreeMap<String, Generations>;

/// The wall-clock histogram.
pub const WALL: &str = "istiod_xds_generation_seconds";
/// The CPU-time histogram.
pub const CPU: &str = "istiod_xds_generation_cpu_seconds";
/// The page-fault histogram.
pub const FAULTS: &str = "istiod_xds_generation_page_faults";

/// How a histogram's samples are shown: seconds as milliseconds, or
/// counts (page faults) as they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Seconds, shown as `1.50 ms`.
    Seconds,
    /// Page faults, shown as `130 faults`.
    Faults,
}

impl Unit {
    fn show(self, v: f64) -> String {
        match self {
            Unit::Seconds => format!("{:.2} ms", v * 1e3),
            Unit::Faults => format!("{v:.0} faults"),
        }
    }
}

/// Every `kind` of the histogram `name` ([`WALL`], [`CPU`], [`FAULTS`]) in a
/// Prometheus text exposition (kinds without a sample yet are absent).
///
/// # Errors
/// A line of the histogram whose value or `le` is not a number.
pub fn parse(text: &str, name: &str) -> anyhow::Result<BTreeMap<String, Generations>> {
    let mut kinds: BTreeMap<String, Generations> = BTreeMap::new();
    for line in text.lines() {
        // `name_sum`, `name_count`, `name_bucket`; not another metric
        // that `name` is the start of.
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !["_sum", "_count", "_bucket"]
            .iter()
            .any(|s| rest.starts_with(s))
        {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = value
            .parse()
            .map_err(|e| anyhow::anyhow!("{name}: value of `{line}`: {e}"))?;
        let (series_name, labels) = series.split_once('{').unwrap_or((series, ""));
        let label = |key: &str| {
            labels
                .trim_end_matches('}')
                .split(',')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix("=\""))
                .map(|v| v.trim_end_matches('"').to_owned())
        };
        let Some(kind) = label("kind") else { continue };
        let entry = kinds.entry(kind).or_default();
        match series_name.strip_prefix(name) {
            Some("_sum") => entry.sum = value,
            Some("_count") => entry.count = value as u64,
            Some("_bucket") => {
                let le = label("le").unwrap_or_default();
                let le: f64 = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse()
                        .map_err(|e| anyhow::anyhow!("{name}: `le` of `{line}`: {e}"))?
                };
                entry.buckets.push((le, value as u64));
            }
            _ => {}
        }
    }
    for g in kinds.values_mut() {
        g.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    Ok(kinds)
}

impl Generations {
    /// What was added since `before` (the same histogram read earlier).
    pub fn since(&self, before: Option<&Generations>) -> Generations {
        let Some(before) = before else {
            return self.clone();
        };
        Generations {
            buckets: self
                .buckets
                .iter()
                .map(|&(le, n)| {
                    let was = before.buckets.iter().find(|b| b.0 == le).map_or(0, |b| b.1);
                    (le, n.saturating_sub(was))
                })
                .collect(),
            sum: self.sum - before.sum,
            count: self.count.saturating_sub(before.count),
        }
    }

    /// The upper bound (in the histogram's unit) of the bucket holding the `q` quantile
    /// (0 to 1); None without samples.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q * self.count as f64).ceil().max(1.0) as u64;
        self.buckets.iter().find(|b| b.1 >= rank).map(|b| b.0)
    }

    /// `N, mean X ms, p50 <= Y ms, p99 <= Z ms` (one sample: its
    /// value), in `unit`.
    pub fn summary(&self, unit: Unit) -> String {
        let mean = unit.show(self.sum / self.count.max(1) as f64);
        if self.count == 1 {
            return format!("1, {mean}");
        }
        let mut out = format!("{}, mean {mean}", self.count);
        for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
            if let Some(b) = self.quantile_bound(q) {
                let _ = write!(out, ", {name} <= {}", unit.show(b));
            }
        }
        out
    }
}

/// Each kind's samples added between `before` and `after`, summarised
/// in `unit` (`first_key 1, 1.52 ms; full 9, mean 0.81 ms, ...`); kinds
/// without new samples are left out, and `none` is said when there are
/// none at all.
pub fn phase(
    before: &BTreeMap<String, Generations>,
    after: &BTreeMap<String, Generations>,
    unit: Unit,
) -> String {
    let parts: Vec<String> = after
        .iter()
        .map(|(kind, g)| (kind, g.since(before.get(kind))))
        .filter(|(_, g)| g.count > 0)
        .map(|(kind, g)| format!("{kind} {}", g.summary(unit)))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const TEXT: &str = "\
# HELP istiod_xds_generation_seconds Seconds one proxy config took.
# TYPE istiod_xds_generation_seconds histogram
istiod_xds_generation_seconds_sum{kind=\"full\"} 0.0045
istiod_xds_generation_seconds_count{kind=\"full\"} 4
istiod_xds_generation_seconds_bucket{le=\"0.001\",kind=\"full\"} 3
istiod_xds_generation_seconds_bucket{le=\"0.002\",kind=\"full\"} 4
istiod_xds_generation_seconds_bucket{le=\"+Inf\",kind=\"full\"} 4
istiod_xds_generation_seconds_sum{kind=\"first_key\"} 0.0015
istiod_xds_generation_seconds_count{kind=\"first_key\"} 1
istiod_xds_generation_seconds_bucket{le=\"0.001\",kind=\"first_key\"} 0
istiod_xds_generation_seconds_bucket{le=\"0.002\",kind=\"first_key\"} 1
istiod_xds_generation_seconds_bucket{le=\"+Inf\",kind=\"first_key\"} 1
istiod_xds_generation_cpu_seconds_sum{kind=\"full\"} 0.004
istiod_xds_generation_cpu_seconds_count{kind=\"full\"} 4
istiod_xds_generation_page_faults_sum{kind=\"full\"} 330
istiod_xds_generation_page_faults_count{kind=\"full\"} 2
istiod_xds_generation_page_faults_bucket{le=\"100\",kind=\"full\"} 1
istiod_xds_generation_page_faults_bucket{le=\"500\",kind=\"full\"} 2
istiod_xds_generation_page_faults_bucket{le=\"+Inf\",kind=\"full\"} 2
pilot_xds_pushes{type=\"cds\"} 7
";

    #[test]
    fn reads_each_kind_and_its_quantiles() {
        let kinds = parse(TEXT, WALL).unwrap();
        assert_eq!(kinds.len(), 2);
        assert_eq!(kinds["full"].sum, 0.0045, "not the CPU histogram's");
        assert_eq!(parse(TEXT, CPU).unwrap()["full"].sum, 0.004);
        let full = &kinds["full"];
        assert_eq!(full.count, 4);
        assert_eq!(full.buckets.last(), Some(&(f64::INFINITY, 4)));
        assert_eq!(full.quantile_bound(0.5), Some(0.001));
        assert_eq!(full.quantile_bound(0.99), Some(0.002));
        assert_eq!(kinds["first_key"].summary(Unit::Seconds), "1, 1.50 ms");
        assert_eq!(
            full.summary(Unit::Seconds),
            "4, mean 1.12 ms, p50 <= 1.00 ms, p99 <= 2.00 ms"
        );
        let faults = &parse(TEXT, FAULTS).unwrap()["full"];
        assert_eq!(
            faults.summary(Unit::Faults),
            "2, mean 165 faults, p50 <= 100 faults, p99 <= 500 faults"
        );
    }

    #[test]
    fn a_phase_is_what_it_added() {
        let before = parse(TEXT, WALL).unwrap();
        let after = parse(
            &TEXT
                .replace("_sum{kind=\"full\"} 0.0045", "_sum{kind=\"full\"} 0.0075")
                .replace("_count{kind=\"full\"} 4", "_count{kind=\"full\"} 5")
                .replace(
                    "le=\"+Inf\",kind=\"full\"} 4",
                    "le=\"+Inf\",kind=\"full\"} 5",
                ),
            WALL,
        )
        .unwrap();
        // One more full generation, of 3 ms (past every finite bound);
        // the first key did not change.
        assert_eq!(phase(&before, &after, Unit::Seconds), "full 1, 3.00 ms");
        assert_eq!(phase(&after, &after, Unit::Seconds), "none");
    }

    #[test]
    fn a_bad_value_is_an_error_naming_the_line() {
        let err = parse(
            "istiod_xds_generation_seconds_count{kind=\"full\"} many",
            WALL,
        )
        .unwrap_err();
        assert!(err.to_string().contains("many"), "{err}");
    }
}
