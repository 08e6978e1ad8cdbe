//! Per-key failure rate limiting (login attempts, device ceremonies). In memory and per
//! process: with several auth servers an attacker gets at most N attempts per server per
//! window, which the docs state.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct FailureLimiter {
    max_failures: usize,
    window: Duration,
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl FailureLimiter {
    pub fn new(max_failures: usize, window: Duration) -> Self {
        FailureLimiter {
            max_failures,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(wait)` while the key has too many recent failures.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let Some(list) = map.get_mut(key) else {
            return Ok(());
        };
        list.retain(|t| now.duration_since(*t) < self.window);
        if list.len() >= self.max_failures {
            let oldest = list.iter().min().copied().unwrap_or(now);
            return Err(self.window.saturating_sub(now.duration_since(oldest)));
        }
        Ok(())
    }

    pub fn record_failure(&self, key: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            // Bound memory under a spray of distinct keys: forget the oldest state.
            map.clear();
        }
        map.entry(key.to_string()).or_default().push(Instant::now());
    }

    pub fn reset(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// Rate of successful operations per key (e.g. device ceremonies per user).
pub struct RateLimiter {
    per_window: usize,
    window: Duration,
    events: Mutex<HashMap<String, Vec<Instant>>>,
}

impl RateLimiter {
    pub fn new(per_window: usize, window: Duration) -> Self {
        RateLimiter {
            per_window,
            window,
            events: Mutex::new(HashMap::new()),
        }
    }

    /// Count one event for `key`; `Err(wait)` if over the limit (the event is not counted).
    pub fn take(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut map = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            map.clear();
        }
        let list = map.entry(key.to_string()).or_default();
        list.retain(|t| now.duration_since(*t) < self.window);
        if list.len() >= self.per_window {
            let oldest = list.iter().min().copied().unwrap_or(now);
            return Err(self.window.saturating_sub(now.duration_since(oldest)));
        }
        list.push(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_out_after_max_failures_and_resets() {
        let l = FailureLimiter::new(3, Duration::from_secs(60));
        for _ in 0..3 {
            assert!(l.check("alice").is_ok());
            l.record_failure("alice");
        }
        assert!(l.check("alice").is_err());
        assert!(l.check("bob").is_ok(), "other keys unaffected");
        l.reset("alice");
        assert!(l.check("alice").is_ok());
    }

    #[test]
    fn rate_limiter_counts_successes() {
        let r = RateLimiter::new(2, Duration::from_secs(60));
        assert!(r.take("u").is_ok());
        assert!(r.take("u").is_ok());
        assert!(r.take("u").is_err());
    }
}
