//! Round-trip-time histogram and the printed results (a table for people, a
//! `RESULT {json}` line for scripts).

use serde_json::{json, Value};

/// RTT histogram with 1 µs buckets up to 200 ms, plus the exact maximum.
pub struct Histogram {
    buckets: Vec<u32>,
    over: u64,
    count: u64,
    max_us: u64,
}

const HIST_US: usize = 200_000;

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    pub fn new() -> Self {
        Histogram {
            buckets: vec![0; HIST_US],
            over: 0,
            count: 0,
            max_us: 0,
        }
    }

    #[inline]
    pub fn record(&mut self, us: u64) {
        self.count += 1;
        self.max_us = self.max_us.max(us);
        match self.buckets.get_mut(us as usize) {
            Some(b) => *b += 1,
            None => self.over += 1,
        }
    }

    /// The smallest value (µs) at or under which a fraction `q` of samples lie.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let want = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (us, &n) in self.buckets.iter().enumerate() {
            seen += u64::from(n);
            if seen >= want {
                return Some(us as u64);
            }
        }
        Some(self.max_us)
    }

    pub fn max(&self) -> Option<u64> {
        (self.count > 0).then_some(self.max_us)
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The fraction of values below `v` (`None` when empty).
    pub fn fraction_below(&self, v: u64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let end = (v as usize).min(self.buckets.len());
        let below: u64 = self.buckets[..end].iter().map(|&n| u64::from(n)).sum();
        Some(below as f64 / self.count as f64)
    }
}

/// Formats an optional number, "-" when absent.
pub fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// Prints `RESULT {json}` on its own line.
pub fn emit(v: &Value) {
    println!("RESULT {v}");
}

/// Rounds to `d` decimals for JSON.
pub fn r(v: f64, d: i32) -> Value {
    let m = 10f64.powi(d);
    if v.is_finite() {
        json!((v * m).round() / m)
    } else {
        Value::Null
    }
}
