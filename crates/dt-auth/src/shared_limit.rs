//! Operations per key per window, counted in storage so that every auth server of a cluster
//! shares one count (issue 11: limits are the cluster's, not a process's). Used for device
//! ceremonies per user (every ceremony counts), and for failed node joins and bot logins per
//! address (only failures count: [`SharedRateLimiter::check`] before, `take` on a failure,
//! [`SharedRateLimiter::clear`] on a success).
//!
//! How: each key's window is one storage counter ([`Backend::count_use`]), whose name holds
//! the window's number and which expires with the window. The store counts atomically, so
//! the count is exact across servers (no two admissions get the same number) and
//! admissions of one key do not retry against each other. A counter is one statement in a
//! table of its own that is not crash-durable, so an admission costs no commit of the
//! cluster's state and no fsync: the price is that a crash of the storage may forget the
//! current window's counts, once. (Before, an admission created one item among
//! `per_window` slot items: exact too, but one durable group-committed write per device
//! ceremony, a quarter of the auth server's CPU per ceremony on SQLite.)
//!
//! Guarantees: at most `per_window` admissions per key in each fixed window (windows are
//! aligned to the epoch), counted before the operation runs, so an operation whose server
//! dies stays counted.
//!
//! Clock: windows follow the system clock, not the auth server's `ServerEnv`, because the
//! store expires counters by its own (system) clock: a window computed from a test's fixed
//! clock would expire the moment it was written and never hold.

use std::time::Duration;

use dt_store::{Backend, StoreError};
use time::OffsetDateTime;

pub struct SharedRateLimiter {
    prefix: &'static str,
    per_window: u64,
    window: Duration,
}

fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// The current window of a key: its counter's name, the time left, and its end.
struct Window {
    counter: String,
    left: Duration,
    ends: OffsetDateTime,
}

impl SharedRateLimiter {
    /// `per_window` operations per key per `window`, counted under `prefix`.
    pub fn new(prefix: &'static str, per_window: usize, window: Duration) -> Self {
        SharedRateLimiter {
            prefix,
            per_window: u64::try_from(per_window).unwrap_or(u64::MAX).max(1),
            window,
        }
    }

    fn window(&self, key: &str) -> Window {
        let len = i64::try_from(self.window.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        let now = now_ms();
        let index = now.div_euclid(len);
        let end = (index + 1).saturating_mul(len);
        Window {
            counter: format!("{}{}/{index}", self.prefix, crate::tokens::sha256_hex(key)),
            left: Duration::from_millis(u64::try_from(end - now).unwrap_or(0)),
            ends: OffsetDateTime::from_unix_timestamp_nanos(i128::from(end) * 1_000_000)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
        }
    }

    /// Without counting: `Ok(Err(wait))` while `key`'s window is full.
    pub async fn check(
        &self,
        backend: &dyn Backend,
        key: &str,
    ) -> Result<Result<(), Duration>, StoreError> {
        let w = self.window(key);
        if backend.uses(&w.counter).await? >= self.per_window {
            return Ok(Err(w.left));
        }
        Ok(Ok(()))
    }

    /// Forget `key`'s count in the current window (a success after failures).
    pub async fn clear(&self, backend: &dyn Backend, key: &str) -> Result<(), StoreError> {
        backend.reset_uses(&self.window(key).counter).await
    }

    /// Count one operation for `key`: `Ok(Err(wait))` when the window is full (nothing is
    /// counted), `Ok(Ok(()))` when admitted.
    pub async fn take(
        &self,
        backend: &dyn Backend,
        key: &str,
    ) -> Result<Result<(), Duration>, StoreError> {
        let w = self.window(key);
        match backend
            .count_use(&w.counter, self.per_window, w.ends)
            .await?
        {
            Some(_) => Ok(Ok(())),
            None => Ok(Err(w.left)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A limiter whose fresh window has just begun, so a test's takes all fall in it.
    async fn fresh(per_window: usize) -> SharedRateLimiter {
        let lim = SharedRateLimiter::new("/ratelimit/test/", per_window, Duration::from_secs(10));
        tokio::time::sleep(lim.window("any").left).await;
        lim
    }

    async fn sqlite() -> (tempfile::TempDir, Arc<dyn Backend>) {
        let dir = tempfile::tempdir().unwrap();
        let b: Arc<dyn Backend> =
            dt_store::sqlite::SqliteBackend::open(&dir.path().join("t.db"), Default::default())
                .await
                .unwrap();
        (dir, b)
    }

    #[tokio::test]
    async fn two_limiters_on_one_store_share_the_count() {
        let (_dir, store) = sqlite().await;
        // Two auth servers: two limiters, one storage.
        let a = fresh(3).await;
        let b = SharedRateLimiter::new("/ratelimit/test/", 3, Duration::from_secs(10));
        assert!(a.take(store.as_ref(), "alice").await.unwrap().is_ok());
        assert!(b.take(store.as_ref(), "alice").await.unwrap().is_ok());
        assert!(a.take(store.as_ref(), "alice").await.unwrap().is_ok());
        let wait = b.take(store.as_ref(), "alice").await.unwrap().unwrap_err();
        assert!(
            wait <= Duration::from_secs(10) && wait > Duration::from_secs(5),
            "{wait:?}"
        );
        // Other keys have their own window.
        assert!(b.take(store.as_ref(), "bob").await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn racing_takes_never_exceed_the_limit() {
        let (_dir, store) = sqlite().await;
        let lim = Arc::new(fresh(5).await);
        let mut tasks = Vec::new();
        for _ in 0..30 {
            let (lim, store) = (lim.clone(), store.clone());
            tasks.push(tokio::spawn(async move {
                lim.take(store.as_ref(), "carol").await.unwrap().is_ok()
            }));
        }
        let mut admitted = 0;
        for t in tasks {
            admitted += usize::from(t.await.unwrap());
        }
        assert_eq!(admitted, 5);
    }

    #[tokio::test]
    async fn a_window_that_ended_starts_again() {
        let (_dir, store) = sqlite().await;
        let lim = SharedRateLimiter::new("/ratelimit/test/", 1, Duration::from_millis(300));
        // Start at the beginning of a window so both takes fall in it.
        let w = lim.window("dan");
        tokio::time::sleep(w.left).await;
        assert!(lim.take(store.as_ref(), "dan").await.unwrap().is_ok());
        assert!(lim.take(store.as_ref(), "dan").await.unwrap().is_err());
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(lim.take(store.as_ref(), "dan").await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn hundreds_of_concurrent_takes_of_one_key_all_succeed_under_a_high_limit() {
        // A bot running many ceremonies at once must not lose to its own contention.
        let (_dir, store) = sqlite().await;
        let lim = Arc::new(SharedRateLimiter::new(
            "/ratelimit/test/",
            1_000_000,
            Duration::from_secs(60),
        ));
        let mut tasks = Vec::new();
        for _ in 0..300 {
            let (lim, store) = (lim.clone(), store.clone());
            tasks.push(tokio::spawn(async move {
                lim.take(store.as_ref(), "bot").await.unwrap().is_ok()
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap());
        }
    }

    #[tokio::test]
    async fn failures_counted_with_check_and_cleared_on_success() {
        let (_dir, store) = sqlite().await;
        let lim = fresh(2).await;
        let s = store.as_ref();
        assert!(lim.check(s, "1.2.3.4").await.unwrap().is_ok());
        lim.take(s, "1.2.3.4").await.unwrap().unwrap();
        assert!(lim.check(s, "1.2.3.4").await.unwrap().is_ok());
        lim.take(s, "1.2.3.4").await.unwrap().unwrap();
        assert!(lim.check(s, "1.2.3.4").await.unwrap().is_err());
        lim.clear(s, "1.2.3.4").await.unwrap();
        assert!(lim.check(s, "1.2.3.4").await.unwrap().is_ok());
        lim.clear(s, "never-seen").await.unwrap();
    }
}
