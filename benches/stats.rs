//! The few statistics every bench here reports, in one place: medians, a p10–p90 spread,
//! per-round ratios, and the machine's load. Shared by `pool.rs`, `call.rs`, `tail.rs` and the
//! A/B harness (which `ab.sh` builds with a copy of this file next to it).
#![allow(dead_code)] // each bench uses its own subset

/// The median (NaN for no samples).
pub fn median(xs: &[f64]) -> f64 {
    let mut xs = xs.to_vec();
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    if xs.is_empty() {
        f64::NAN
    } else if xs.len() % 2 == 0 {
        (xs[mid - 1] + xs[mid]) / 2.0
    } else {
        xs[mid]
    }
}

/// (p10, p90) of at least one sample.
pub fn spread(xs: &[f64]) -> (f64, f64) {
    let mut xs = xs.to_vec();
    xs.sort_by(f64::total_cmp);
    (xs[xs.len() / 10], xs[xs.len() * 9 / 10])
}

/// Each sample over the one of the same round in `base`.
pub fn ratios(xs: &[f64], base: &[f64]) -> Vec<f64> {
    xs.iter().zip(base).map(|(x, b)| x / b).collect()
}

/// The 1, 5 and 15 minute load averages, to print next to results taken on a shared machine.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "n/a".into())
}

/// The positive integer in the environment variable `name`, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}
