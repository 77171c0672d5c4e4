//! Latency histograms, summaries and writing results.

use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency recorded: one hour in microseconds (higher values saturate).
const MAX_MICROS: u64 = 3_600_000_000;

pub fn new_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).context("creating histogram")
}

/// Latency histograms shared by many subscriber tasks: a few shards behind
/// mutexes, fed in batches, merged once at the end. This keeps memory small
/// (one histogram per shard rather than per subscriber).
pub struct LatencySink {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl LatencySink {
    pub fn new(shards: usize) -> Result<Self> {
        let shards = (0..shards.max(1))
            .map(|_| new_histogram().map(Mutex::new))
            .collect::<Result<_>>()?;
        Ok(Self { shards })
    }

    /// Record a batch of latencies (µs) into shard `key % shards`.
    pub fn record_batch(&self, key: usize, micros: &[u64]) {
        if micros.is_empty() {
            return;
        }
        let shard = &self.shards[key % self.shards.len()];
        let mut h = match shard.lock() {
            Ok(h) => h,
            Err(poisoned) => poisoned.into_inner(),
        };
        for &v in micros {
            h.saturating_record(v.max(1));
        }
    }

    pub fn merged(&self) -> Result<Histogram<u64>> {
        let mut all = new_histogram()?;
        for shard in &self.shards {
            let h = match shard.lock() {
                Ok(h) => h,
                Err(poisoned) => poisoned.into_inner(),
            };
            all.add(&*h).context("merging histograms")?;
        }
        Ok(all)
    }
}

/// Percentiles of a histogram, in the histogram's unit.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            min: h.min(),
            mean: (h.mean() * 10.0).round() / 10.0,
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Round to 3 decimals for readable JSON.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `a / b`, or `None` when `b` is zero (JSON `null`).
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| round3(a / b))
}

/// Print the result as one JSON line on stdout and, if asked, also write it
/// (pretty-printed) to `json_out`.
pub fn emit<T: Serialize>(result: &T, json_out: Option<&Path>) -> Result<()> {
    let line = serde_json::to_string(result)?;
    println!("{line}");
    if let Some(path) = json_out {
        let pretty = serde_json::to_string_pretty(result)?;
        std::fs::write(path, pretty + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Keeps the first few distinct error messages and counts the rest.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ErrorSample {
    pub count: u64,
    pub first: Vec<String>,
}

impl ErrorSample {
    const KEEP: usize = 5;

    pub fn add(&mut self, msg: String) {
        self.count += 1;
        if self.first.len() < Self::KEEP && !self.first.contains(&msg) {
            self.first.push(msg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_merges_shards() -> Result<()> {
        let sink = LatencySink::new(4)?;
        sink.record_batch(0, &[100, 200]);
        sink.record_batch(1, &[300]);
        sink.record_batch(7, &[0, 400]); // 0 is recorded as 1
        let h = sink.merged()?;
        let p = Percentiles::from_histogram(&h);
        assert_eq!(p.count, 5);
        assert_eq!(p.min, 1);
        assert_eq!(p.p50, 200);
        assert!(p.max >= 400 && p.max < 401);
        Ok(())
    }

    #[test]
    fn saturates_huge_values() -> Result<()> {
        let sink = LatencySink::new(1)?;
        sink.record_batch(0, &[u64::MAX]);
        let p = Percentiles::from_histogram(&sink.merged()?);
        assert_eq!(p.count, 1);
        assert!(p.max >= MAX_MICROS);
        Ok(())
    }

    #[test]
    fn empty_percentiles() -> Result<()> {
        assert_eq!(
            Percentiles::from_histogram(&new_histogram()?),
            Percentiles::default()
        );
        Ok(())
    }

    #[test]
    fn error_sample_keeps_few() {
        let mut e = ErrorSample::default();
        for i in 0..10 {
            e.add(format!("e{}", i % 7));
        }
        assert_eq!(e.count, 10);
        assert_eq!(e.first.len(), 5);
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(1.0, 3.0), Some(0.333));
    }
}
