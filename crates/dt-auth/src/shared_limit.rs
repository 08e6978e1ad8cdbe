//! Operations per key per window, counted in storage so that every auth server of a cluster
//! shares one count (issue 11: limits are the cluster's, not a process's). Used for device
//! ceremonies per user (every ceremony counts), and for failed node joins and bot logins per
//! address (only failures count: [`SharedRateLimiter::check`] before, `take` on a failure,
//! [`SharedRateLimiter::clear`] on a success).
//!
//! What it guarantees: at most `per_window` operations per key in each fixed window, across
//! all auth servers, since each admission is a compare-and-swap on one storage item (lost
//! races read again). Counted before the operation runs, so an operation whose server dies
//! stays counted. The item expires with its window, so storage holds only live windows.
//! An unreadable count fails closed (the operation is refused with the key to delete).
//!
//! What it costs: one read and one conditional write per admitted operation.

use std::time::Duration;

use dt_store::{Backend, Condition, Op, StoreError};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Compare-and-swap rounds before giving up (each lost round means another writer won).
const MAX_ROUNDS: usize = 50;

#[derive(Debug, Serialize, Deserialize)]
struct Window {
    /// Window start, unix milliseconds.
    started_ms: i64,
    count: u32,
}

fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// An unreadable count fails closed, naming the key to delete.
fn decode(item_key: &str, value: &[u8]) -> Result<Window, StoreError> {
    serde_json::from_slice(value).map_err(|e| {
        StoreError::Invalid(format!(
            "rate limit state {item_key:?} is unreadable ({e}); delete that key to reset it"
        ))
    })
}

pub struct SharedRateLimiter {
    prefix: &'static str,
    per_window: u32,
    window: Duration,
}

impl SharedRateLimiter {
    /// `per_window` operations per key per `window`, stored under `prefix`.
    pub fn new(prefix: &'static str, per_window: usize, window: Duration) -> Self {
        SharedRateLimiter {
            prefix,
            per_window: u32::try_from(per_window).unwrap_or(u32::MAX).max(1),
            window,
        }
    }

    fn item_key(&self, key: &str) -> String {
        format!("{}{}", self.prefix, crate::grpc::sha256_hex(key))
    }

    /// Without counting: `Ok(Err(wait))` while `key`'s window is full.
    pub async fn check(
        &self,
        backend: &dyn Backend,
        key: &str,
    ) -> Result<Result<(), Duration>, StoreError> {
        let item_key = self.item_key(key);
        let Some(item) = backend.get(&item_key).await? else {
            return Ok(Ok(()));
        };
        let w = decode(&item_key, &item.value)?;
        let window_ms = i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX);
        let left = w.started_ms + window_ms - now_ms();
        if left > 0 && w.count >= self.per_window {
            return Ok(Err(Duration::from_millis(u64::try_from(left).unwrap_or(0))));
        }
        Ok(Ok(()))
    }

    /// Forget `key`'s count (a success after failures).
    pub async fn clear(&self, backend: &dyn Backend, key: &str) -> Result<(), StoreError> {
        match backend.delete(&self.item_key(key), None).await {
            Ok(_) | Err(StoreError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Count one operation for `key`: `Ok(Err(wait))` when the window is full (nothing is
    /// counted), `Ok(Ok(()))` when admitted.
    pub async fn take(
        &self,
        backend: &dyn Backend,
        key: &str,
    ) -> Result<Result<(), Duration>, StoreError> {
        let item_key = self.item_key(key);
        let window_ms = i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX);
        for round in 0..MAX_ROUNDS {
            let now_ms = now_ms();
            let stored = backend.get(&item_key).await?;
            let (current, condition) = match &stored {
                Some(item) => (
                    decode(&item_key, &item.value)?,
                    Condition::Revision(item_key.clone(), item.revision),
                ),
                None => (
                    Window {
                        started_ms: now_ms,
                        count: 0,
                    },
                    Condition::NotExists(item_key.clone()),
                ),
            };
            let window = if now_ms - current.started_ms >= window_ms {
                Window {
                    started_ms: now_ms,
                    count: 0,
                }
            } else {
                current
            };
            if window.count >= self.per_window {
                let left = window.started_ms + window_ms - now_ms;
                return Ok(Err(Duration::from_millis(u64::try_from(left).unwrap_or(0))));
            }
            let next = Window {
                started_ms: window.started_ms,
                count: window.count + 1,
            };
            let expires = OffsetDateTime::from_unix_timestamp_nanos(
                i128::from(next.started_ms + window_ms) * 1_000_000,
            )
            .ok();
            let value =
                serde_json::to_vec(&next).map_err(|e| StoreError::Invalid(e.to_string()))?;
            let put = Op::Put {
                key: item_key.clone(),
                value,
                expires,
            };
            match backend.atomic_write(vec![condition], vec![put]).await {
                Ok(_) => return Ok(Ok(())),
                Err(StoreError::ConditionFailed { .. } | StoreError::RevisionMismatch(_)) => {
                    // Another auth server (or request) counted first: spread the retries.
                    let pause = 1 + (round as u64 * 7 + (now_ms as u64 % 5)) % 10;
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Invalid(format!(
            "rate limit state {item_key:?} is too contended; try again"
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

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
        let a = SharedRateLimiter::new("/ratelimit/test/", 3, Duration::from_secs(60));
        let b = SharedRateLimiter::new("/ratelimit/test/", 3, Duration::from_secs(60));
        assert!(a.take(store.as_ref(), "alice").await.unwrap().is_ok());
        assert!(b.take(store.as_ref(), "alice").await.unwrap().is_ok());
        assert!(a.take(store.as_ref(), "alice").await.unwrap().is_ok());
        let wait = b.take(store.as_ref(), "alice").await.unwrap().unwrap_err();
        assert!(wait <= Duration::from_secs(60) && wait > Duration::from_secs(50));
        // Other keys have their own window.
        assert!(b.take(store.as_ref(), "bob").await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn racing_takes_never_exceed_the_limit() {
        let (_dir, store) = sqlite().await;
        let lim = Arc::new(SharedRateLimiter::new(
            "/ratelimit/test/",
            5,
            Duration::from_secs(60),
        ));
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
    async fn a_window_that_ended_starts_again_and_corrupt_state_fails_closed() {
        let (_dir, store) = sqlite().await;
        let lim = SharedRateLimiter::new("/ratelimit/test/", 1, Duration::from_millis(200));
        assert!(lim.take(store.as_ref(), "dan").await.unwrap().is_ok());
        assert!(lim.take(store.as_ref(), "dan").await.unwrap().is_err());
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(lim.take(store.as_ref(), "dan").await.unwrap().is_ok());
        let key = lim.item_key("eve");
        store.put(&key, b"not json".to_vec(), None).await.unwrap();
        let err = lim.take(store.as_ref(), "eve").await.unwrap_err();
        assert!(err.to_string().contains("unreadable"), "{err}");
        assert!(lim.check(store.as_ref(), "eve").await.is_err());
    }

    #[tokio::test]
    async fn failures_counted_with_check_and_cleared_on_success() {
        let (_dir, store) = sqlite().await;
        let lim = SharedRateLimiter::new("/ratelimit/test/", 2, Duration::from_secs(60));
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
