//! The measurement protocol and its statistics.
//!
//! Protocol (methodology: `benches/README.md`): one untimed warm-up, then `samples` timed
//! samples; while the coefficient of variation (sample stddev / mean) is above `cv_limit`, more
//! samples are taken, up to `max_factor` x `samples`; the result is `noisy` if the CV is still
//! above the limit. The reported figure is the median; min, max, mean and CV come with it.

use serde::{Deserialize, Serialize};

/// How many samples to take and when a result counts as noisy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Protocol {
    /// Untimed warm-up runs.
    pub warmup: u32,
    /// Timed samples taken in any case (at least 1).
    pub samples: u32,
    /// Upper bound on samples, as a multiple of `samples`.
    pub max_factor: u32,
    /// CV above which more samples are taken and the result is marked noisy.
    pub cv_limit: f64,
}

impl Protocol {
    /// Two samples, no warm-up, never extended: for tests that check what a kernel computes,
    /// not how fast.
    #[cfg(test)]
    pub(crate) fn smoke_test() -> Self {
        Self {
            warmup: 0,
            samples: 2,
            max_factor: 1,
            cv_limit: 1.0,
        }
    }
}

impl Default for Protocol {
    fn default() -> Self {
        Self {
            warmup: 1,
            samples: 5,
            max_factor: 4,
            cv_limit: 0.03,
        }
    }
}

impl Protocol {
    /// A protocol with `samples` samples and the default warm-up, limit and factor.
    pub fn with_samples(samples: u32) -> Self {
        Self {
            samples,
            ..Self::default()
        }
    }
}

/// Statistics over the timed samples of one figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Median (the reported figure).
    pub median: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Coefficient of variation: sample standard deviation / mean (0 for one sample).
    pub cv: f64,
    /// Number of timed samples.
    pub samples: usize,
    /// Whether the CV stayed above the protocol's limit after the extra samples.
    pub noisy: bool,
}

impl Summary {
    /// Summarizes samples (`None` when empty or any sample is not finite). `noisy` is false;
    /// [`run`] sets it.
    pub fn of(samples: &[f64]) -> Option<Self> {
        if samples.is_empty() || samples.iter().any(|x| !x.is_finite()) {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let mean = sorted.iter().sum::<f64>() / n as f64;
        let cv = if n < 2 || mean == 0.0 {
            0.0
        } else {
            let var = sorted.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            var.sqrt() / mean.abs()
        };
        Some(Self {
            median: percentile_sorted(&sorted, 50.0),
            min: sorted[0],
            max: sorted[n - 1],
            mean,
            cv,
            samples: n,
            noisy: false,
        })
    }
}

/// The `p`-th percentile (0..=100) of sorted data, linear interpolation between closest ranks
/// (the median of an even count is the mean of the middle two). Empty input gives NaN.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let rank = (p.clamp(0.0, 100.0) / 100.0) * (n - 1) as f64;
            let lo = rank.floor() as usize;
            let hi = rank.ceil() as usize;
            let frac = rank - lo as f64;
            sorted[lo] + (sorted[hi] - sorted[lo]) * frac
        }
    }
}

/// Sorts a copy and takes its percentile.
pub fn percentile(data: &[f64], p: f64) -> f64 {
    let mut sorted = data.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile_sorted(&sorted, p)
}

/// Runs the protocol: `sample` performs one run and returns its figure (higher or lower is
/// better, the protocol does not care). Errors stop the run.
pub fn run<E>(
    protocol: &Protocol,
    mut sample: impl FnMut() -> Result<f64, E>,
) -> Result<(Summary, Vec<f64>), E>
where
    E: From<NonFinite>,
{
    for _ in 0..protocol.warmup {
        sample()?;
    }
    let base = protocol.samples.max(1) as usize;
    let limit = base * protocol.max_factor.max(1) as usize;
    let mut values = Vec::with_capacity(limit);
    loop {
        let v = sample()?;
        if !v.is_finite() {
            return Err(NonFinite(v).into());
        }
        values.push(v);
        if values.len() < base {
            continue;
        }
        let summary = Summary::of(&values).ok_or(NonFinite(f64::NAN))?;
        if summary.cv <= protocol.cv_limit || values.len() >= limit {
            let noisy = summary.cv > protocol.cv_limit;
            return Ok((Summary { noisy, ..summary }, values));
        }
    }
}

/// A sample was NaN or infinite (e.g. a zero-length timing).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("a sample was not a finite number ({0})")]
pub struct NonFinite(pub f64);

impl From<NonFinite> for crate::BenchError {
    fn from(err: NonFinite) -> Self {
        Self::Verification(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_known_values() {
        let s = Summary::of(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).unwrap();
        assert_eq!(s.median, 4.5);
        assert_eq!(s.min, 2.0);
        assert_eq!(s.max, 9.0);
        assert_eq!(s.mean, 5.0);
        // sample stddev = sqrt(32/7)
        assert!((s.cv - (32.0f64 / 7.0).sqrt() / 5.0).abs() < 1e-12);
        assert_eq!(s.samples, 8);
    }

    #[test]
    fn summary_rejects_empty_and_nan() {
        assert!(Summary::of(&[]).is_none());
        assert!(Summary::of(&[1.0, f64::NAN]).is_none());
        let one = Summary::of(&[3.0]).unwrap();
        assert_eq!((one.median, one.cv), (3.0, 0.0));
    }

    #[test]
    fn percentiles_interpolate() {
        let d: Vec<f64> = (1..=100).map(f64::from).collect();
        assert!((percentile(&d, 50.0) - 50.5).abs() < 1e-12);
        assert!((percentile(&d, 99.0) - 99.01).abs() < 1e-9);
        assert_eq!(percentile(&d, 0.0), 1.0);
        assert_eq!(percentile(&d, 100.0), 100.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn stable_samples_stop_at_base_count() {
        let mut calls = 0;
        let (s, v) = run::<crate::BenchError>(&Protocol::default(), || {
            calls += 1;
            Ok(10.0)
        })
        .unwrap();
        assert_eq!(calls, 6); // warm-up + 5
        assert_eq!(v.len(), 5);
        assert!(!s.noisy);
    }

    #[test]
    fn noisy_samples_extend_to_four_times_and_flag() {
        let mut i = 0u32;
        let (s, v) = run::<crate::BenchError>(&Protocol::default(), || {
            i += 1;
            Ok(if i.is_multiple_of(2) { 10.0 } else { 20.0 })
        })
        .unwrap();
        assert_eq!(v.len(), 20);
        assert!(s.noisy);
    }

    #[test]
    fn non_finite_sample_is_an_error() {
        let r = run::<crate::BenchError>(&Protocol::default(), || Ok(f64::INFINITY));
        assert!(r.is_err());
    }
}
