//! Per-key failure rate limiting (node joins, bot logins, device ceremonies). In memory and
//! per process: with several auth servers an attacker gets at most N attempts per server per
//! window, which the docs state. Password logins use the cluster-wide
//! [`crate::login_throttle`] instead.
//!
//! Bounded without a reset: at most [`MAX_KEYS`] keys are tracked. When the map is full,
//! keys whose window has passed are dropped; if it is still full, a new key shares one
//! overflow entry (and its limit) with every other new key. A spray of distinct keys can
//! never make the limiter forget a key it tracks.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys tracked per limiter.
pub const MAX_KEYS: usize = 100_000;
/// The entry shared by new keys while the map is full (not a valid name or address).
const OVERFLOW: &str = "\0overflow";

/// The key under which `key` is tracked in `map`: itself, or the overflow entry when the map
/// is full even after dropping entries with nothing inside `window`.
fn slot<'a>(
    map: &mut HashMap<String, Vec<Instant>>,
    key: &'a str,
    capacity: usize,
    window: Duration,
    now: Instant,
) -> &'a str {
    if map.contains_key(key) || map.len() < capacity {
        return key;
    }
    map.retain(|_, list| list.iter().any(|t| now.duration_since(*t) < window));
    if map.len() < capacity { key } else { OVERFLOW }
}

pub struct FailureLimiter {
    max_failures: usize,
    window: Duration,
    capacity: usize,
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl FailureLimiter {
    pub fn new(max_failures: usize, window: Duration) -> Self {
        Self::with_capacity(max_failures, window, MAX_KEYS)
    }

    pub fn with_capacity(max_failures: usize, window: Duration, capacity: usize) -> Self {
        FailureLimiter {
            max_failures,
            window,
            capacity: capacity.max(1),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(wait)` while the key has too many recent failures.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let key = if !map.contains_key(key) && map.len() >= self.capacity {
            OVERFLOW
        } else {
            key
        };
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
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let key = slot(&mut map, key, self.capacity, self.window, now);
        map.entry(key.to_string()).or_default().push(now);
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
    capacity: usize,
    events: Mutex<HashMap<String, Vec<Instant>>>,
}

impl RateLimiter {
    pub fn new(per_window: usize, window: Duration) -> Self {
        RateLimiter {
            per_window,
            window,
            capacity: MAX_KEYS,
            events: Mutex::new(HashMap::new()),
        }
    }

    /// Count one event for `key`; `Err(wait)` if over the limit (the event is not counted).
    pub fn take(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut map = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let key = slot(&mut map, key, self.capacity, self.window, now);
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
    fn a_spray_of_new_keys_never_resets_a_lockout() {
        let l = FailureLimiter::with_capacity(3, Duration::from_secs(60), 10);
        for _ in 0..3 {
            l.record_failure("alice");
        }
        for i in 0..1000 {
            l.record_failure(&format!("spray-{i}"));
        }
        assert!(
            l.check("alice").is_err(),
            "alice's lockout survives the spray"
        );
        // New keys share the overflow entry, which the spray has locked too (fail closed).
        assert!(l.check("fresh").is_err());
        assert!(
            l.check("spray-1").is_ok(),
            "tracked keys keep their own state"
        );
    }

    #[test]
    fn rate_limiter_counts_successes() {
        let r = RateLimiter::new(2, Duration::from_secs(60));
        assert!(r.take("u").is_ok());
        assert!(r.take("u").is_ok());
        assert!(r.take("u").is_err());
    }
}
