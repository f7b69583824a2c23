//! What a run measured, as a human table and as one JSON line.
//!
//! Invariants: latencies are recorded in microseconds into HDR histograms
//! of 3 significant digits covering 1 µs to 10 minutes (larger values are
//! clamped to the top, never dropped); a summary of an empty histogram is
//! all zeros; the JSON line is a single line and holds every number the
//! table shows.

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

/// The largest latency a histogram holds, in microseconds (10 minutes).
const MAX_MICROS: u64 = 600_000_000;

/// A latency histogram in microseconds.
#[derive(Clone, Debug)]
pub struct Latency {
    histogram: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl Latency {
    /// An empty histogram.
    pub fn new() -> Self {
        Latency {
            histogram: Histogram::new_with_bounds(1, MAX_MICROS, 3)
                .expect("static histogram bounds are valid"),
        }
    }

    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(MAX_MICROS)
            .clamp(1, MAX_MICROS);
        self.histogram.saturating_record(micros);
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.histogram.add(&other.histogram);
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The summary: count, percentiles, max and mean in milliseconds.
    pub fn summary(&self) -> Summary {
        let ms = |micros: u64| micros as f64 / 1000.0;
        if self.histogram.is_empty() {
            return Summary::default();
        }
        Summary {
            count: self.histogram.len(),
            p50: ms(self.histogram.value_at_quantile(0.50)),
            p90: ms(self.histogram.value_at_quantile(0.90)),
            p99: ms(self.histogram.value_at_quantile(0.99)),
            p999: ms(self.histogram.value_at_quantile(0.999)),
            max: ms(self.histogram.max()),
            mean: self.histogram.mean() / 1000.0,
        }
    }
}

/// Percentiles of one latency histogram, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest value.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Summary {
    fn to_json(self) -> Value {
        json!({
            "count": self.count,
            "p50": round3(self.p50),
            "p90": round3(self.p90),
            "p99": round3(self.p99),
            "p999": round3(self.p999),
            "max": round3(self.max),
            "mean": round3(self.mean),
        })
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The outcome of one workload run.
#[derive(Clone, Debug)]
pub struct Report {
    /// The workload's name (`put`, `range`, `txn`, `watch`, `lease`,
    /// `registry`).
    pub workload: String,
    /// Its variant, e.g. `lease` for puts with a lease, `serializable`.
    pub variant: String,
    /// The endpoints driven.
    pub endpoints: Vec<String>,
    /// Concurrent clients.
    pub clients: usize,
    /// gRPC connections they share.
    pub conns: usize,
    /// Operations that succeeded (the throughput's numerator).
    pub ops: u64,
    /// Operations that failed.
    pub errors: u64,
    /// The first error seen, if any.
    pub first_error: Option<String>,
    /// Wall time of the measured phase.
    pub elapsed: Duration,
    /// What the main latency measures (`put`, `grant`, `put-to-event`, ...).
    pub latency_name: String,
    /// Latency of the main operation.
    pub latency: Latency,
    /// Latencies of other operations (keep-alive round trip, put-to-event,
    /// ...), by name.
    pub latencies: Vec<(String, Latency)>,
    /// Further counts (delivered, lost, duplicate, keys lost, ...), by name.
    pub counts: Vec<(String, Value)>,
}

impl Report {
    /// An empty report of `workload`/`variant`.
    pub fn new(
        workload: &str,
        variant: &str,
        endpoints: &[String],
        clients: usize,
        conns: usize,
    ) -> Self {
        Report {
            workload: workload.to_string(),
            variant: variant.to_string(),
            endpoints: endpoints.to_vec(),
            clients,
            conns,
            ops: 0,
            errors: 0,
            first_error: None,
            elapsed: Duration::ZERO,
            latency_name: workload.to_string(),
            latency: Latency::new(),
            latencies: Vec::new(),
            counts: Vec::new(),
        }
    }

    /// Successful operations per second of the measured phase.
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ops as f64 / secs
        } else {
            0.0
        }
    }

    /// Adds a named count.
    pub fn count(&mut self, name: &str, value: impl Into<Value>) {
        self.counts.push((name.to_string(), value.into()));
    }

    /// The value of a named count, if present.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.counts.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> Value {
        let mut latencies = Map::new();
        for (name, latency) in &self.latencies {
            latencies.insert(name.clone(), latency.summary().to_json());
        }
        let mut counts = Map::new();
        for (name, value) in &self.counts {
            counts.insert(name.clone(), value.clone());
        }
        json!({
            "workload": self.workload,
            "variant": self.variant,
            "endpoints": self.endpoints,
            "clients": self.clients,
            "conns": self.conns,
            "ops": self.ops,
            "errors": self.errors,
            "first_error": self.first_error,
            "seconds": round3(self.elapsed.as_secs_f64()),
            "throughput": round3(self.throughput()),
            "latency_name": self.latency_name,
            "latency_ms": self.latency.summary().to_json(),
            "latencies_ms": latencies,
            "counts": counts,
        })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let variant = if self.variant.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.variant)
        };
        writeln!(
            f,
            "{}{variant}: {} clients on {} connections to {}",
            self.workload,
            self.clients,
            self.conns,
            self.endpoints.join(",")
        )?;
        writeln!(
            f,
            "  {} ok, {} errors in {:.3} s: {:.1} ops/s",
            self.ops,
            self.errors,
            self.elapsed.as_secs_f64(),
            self.throughput()
        )?;
        if let Some(error) = &self.first_error {
            writeln!(f, "  first error: {error}")?;
        }
        writeln!(
            f,
            "  {:<16} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max", "mean"
        )?;
        let main = (self.latency_name.clone(), self.latency.clone());
        for (name, latency) in std::iter::once(&main).chain(self.latencies.iter()) {
            let s = latency.summary();
            writeln!(
                f,
                "  {:<16} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                name, s.count, s.p50, s.p90, s.p99, s.p999, s.max, s.mean
            )?;
        }
        for (name, value) in &self.counts {
            writeln!(f, "  {name}: {value}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_known_values() {
        let mut latency = Latency::new();
        for ms in 1..=100u64 {
            latency.record(Duration::from_millis(ms));
        }
        let s = latency.summary();
        assert_eq!(s.count, 100);
        assert!((s.p50 - 50.0).abs() < 0.1, "{s:?}");
        assert!((s.p99 - 99.0).abs() < 0.1, "{s:?}");
        assert!((s.max - 100.0).abs() < 0.1, "{s:?}");
        assert!((s.mean - 50.5).abs() < 0.1, "{s:?}");
    }

    #[test]
    fn empty_and_out_of_range() {
        assert_eq!(Latency::new().summary(), Summary::default());
        let mut latency = Latency::new();
        latency.record(Duration::ZERO);
        latency.record(Duration::from_secs(3600));
        let s = latency.summary();
        assert_eq!(s.count, 2);
        assert!(s.max >= 599_000.0, "{s:?}");
    }

    #[test]
    fn json_line_holds_the_table() {
        let mut report = Report::new("put", "lease", &["http://a".into()], 4, 2);
        report.ops = 10;
        report.elapsed = Duration::from_secs(2);
        report.latency.record(Duration::from_millis(3));
        report.count("lost", 0);
        let line = report.to_json().to_string();
        assert!(!line.contains('\n'));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["throughput"], 5.0);
        assert_eq!(v["latency_ms"]["count"], 1);
        assert_eq!(v["counts"]["lost"], 0);
        assert!(report.to_string().contains("5.0 ops/s"));
    }
}
