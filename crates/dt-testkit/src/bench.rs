//! What the benchmarks (`harness = false`) share: knobs from the environment and latency
//! figures.

use std::time::Duration;

/// The number in the environment variable `name`, or `default` when it is unset or not a
/// number.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `p`-quantile (0.0..=1.0, nearest rank) of `sorted` (ascending); zero when empty.
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `d` in milliseconds, two decimals: `"1.25 ms"`.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_the_nearest_rank() {
        let v: Vec<Duration> = (1..=101).map(Duration::from_millis).collect();
        assert_eq!(pct(&v, 0.0), Duration::from_millis(1));
        assert_eq!(pct(&v, 0.5), Duration::from_millis(51));
        assert_eq!(pct(&v, 0.99), Duration::from_millis(100));
        assert_eq!(pct(&v, 1.0), Duration::from_millis(101));
        assert_eq!(pct(&[], 0.5), Duration::ZERO);
        assert_eq!(ms(Duration::from_micros(1250)), "1.25 ms");
    }
}
