//! Password-login throttling, shared by every auth server of a cluster through storage.
//!
//! What it guarantees:
//! - **Counted before checked.** An attempt is admitted (and counted) in storage before the
//!   password is verified, so parallel guesses cannot all pass a check that none of them has
//!   updated yet; an attempt whose server dies before the verdict stays counted.
//! - **Shared.** The bucket of a (user, address) pair is one storage item written with
//!   compare-and-swap, so failures on one auth server lock the user out on all of them.
//! - **Bounded without a reset.** At most `capacity` buckets (plus the attempts in flight)
//!   take failures in one window. When the table is full, pairs that have no bucket yet share
//!   one overflow bucket with the same limit; buckets that exist are never evicted, so a
//!   spray of random usernames cannot erase a lockout — at worst it locks out logins that
//!   land in the overflow bucket until its window ends (fail closed).
//! - **Audit without flooding, and nothing lost.** The first failure of a bucket and the one
//!   that locks it are audited one by one; every other admitted attempt and every refusal is
//!   counted in the bucket and summarized in one event, written in the same transaction that
//!   deletes the bucket: at the next successful login, or when the window has closed (by the
//!   next attempt, or by the periodic [`LoginThrottle::flush`] every auth server runs).
//!
//! What it does not do: slow down attempts below the limit (argon2 is the cost), or tell
//! known users from unknown ones (both get buckets, so lockouts do not enumerate users).

use std::time::Duration;

use dt_store::{Backend, Condition, Item, Op, StoreError};
use dt_types::audit::{AuditEvent, EventType};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::audit::AuditSink;
use crate::env::ServerEnv;

const PREFIX: &str = "/ratelimit/login/";
/// The bucket shared by the pairs that found the table full.
const OVERFLOW: &str = "/ratelimit/login/overflow";
/// How many buckets took their first failure in the current window.
const TABLE_SIZE: &str = "/ratelimit/login_table";
/// Compare-and-swap rounds before giving up (each lost round means another server wrote).
const MAX_ROUNDS: usize = 50;

/// One (user, address) pair's window, as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Bucket {
    user: String,
    remote: String,
    /// Window start, unix milliseconds.
    started_ms: i64,
    /// Attempts admitted in this window (the in-flight ones included).
    attempts: u32,
    /// Failures audited one by one.
    audited: u32,
    /// Whether the failure that reached the limit was audited.
    lock_audited: bool,
    /// Attempts refused while locked.
    refused: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct TableSize {
    started_ms: i64,
    buckets: u32,
}

/// An admitted login attempt. Finish it with [`LoginThrottle::fail`] or
/// [`LoginThrottle::succeed`]; an attempt dropped unfinished counts as a failure.
#[must_use]
#[derive(Debug)]
pub struct Attempt {
    key: String,
    user: String,
    remote: String,
}

/// The throttle's verdict before a password is checked.
#[derive(Debug)]
pub enum Admission {
    Admitted(Attempt),
    /// Too many failures: refuse without checking, for `wait`.
    Locked {
        wait: Duration,
    },
}

pub struct LoginThrottle {
    max_attempts: u32,
    window: Duration,
    capacity: u32,
    /// The auth server's clock ([`LoginThrottle::with_env`]; the system clock by default).
    clock: ServerEnv,
}

fn bucket_key(user: &str, remote: &str) -> String {
    format!(
        "{PREFIX}{}",
        crate::tokens::sha256_hex(&format!("{user}\n{remote}"))
    )
}

fn corrupt(key: &str, e: serde_json::Error) -> StoreError {
    StoreError::Invalid(format!(
        "login throttle state {key:?} is unreadable ({e}); delete that key to reset it"
    ))
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Invalid(e.to_string()))
}

fn time_of(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// A lost compare-and-swap: read again and retry.
fn lost_race(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::ConditionFailed { .. }
            | StoreError::RevisionMismatch(_)
            | StoreError::AlreadyExists(_)
            | StoreError::NotFound(_)
    )
}

fn too_contended() -> StoreError {
    StoreError::Invalid("login throttle state is too contended; try again".into())
}

impl LoginThrottle {
    /// `max_attempts` failures per (user, address) per `window`; at most `capacity` buckets.
    pub fn new(max_attempts: usize, window: Duration, capacity: usize) -> Self {
        LoginThrottle {
            max_attempts: u32::try_from(max_attempts).unwrap_or(u32::MAX).max(1),
            window,
            capacity: u32::try_from(capacity).unwrap_or(u32::MAX).max(1),
            clock: ServerEnv::system(),
        }
    }

    /// The same throttle on the auth server's clock `env` (windows, waits and the times
    /// its audit events carry).
    pub fn with_env(mut self, env: ServerEnv) -> Self {
        self.clock = env;
        self
    }

    fn now_ms(&self) -> i64 {
        (self.clock.now().unix_timestamp_nanos() / 1_000_000) as i64
    }

    fn window_ms(&self) -> i64 {
        i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX)
    }

    fn closed(&self, started_ms: i64, now: i64) -> bool {
        now.saturating_sub(started_ms) >= self.window_ms()
    }

    fn wait(&self, b: &Bucket, now: i64) -> Duration {
        let left = b.started_ms.saturating_add(self.window_ms()) - now;
        Duration::from_millis(u64::try_from(left).unwrap_or(0))
    }

    /// How often [`flush`](Self::flush) should run.
    pub fn flush_every(&self) -> Duration {
        (self.window / 10).clamp(Duration::from_millis(500), Duration::from_secs(30))
    }

    async fn read(
        &self,
        backend: &dyn Backend,
        key: &str,
    ) -> Result<Option<(Item, Bucket)>, StoreError> {
        let Some(item) = backend.get(key).await? else {
            return Ok(None);
        };
        let b = serde_json::from_slice(&item.value).map_err(|e| corrupt(key, e))?;
        Ok(Some((item, b)))
    }

    /// Whether the table is full for pairs without a bucket.
    async fn table_full(&self, backend: &dyn Backend) -> Result<bool, StoreError> {
        let Some(item) = backend.get(TABLE_SIZE).await? else {
            return Ok(false);
        };
        let t: TableSize =
            serde_json::from_slice(&item.value).map_err(|e| corrupt(TABLE_SIZE, e))?;
        Ok(!self.closed(t.started_ms, self.now_ms()) && t.buckets >= self.capacity)
    }

    /// Count one login attempt of `user` from `remote`, or refuse it.
    pub async fn admit(
        &self,
        backend: &dyn Backend,
        audit: &AuditSink,
        user: &str,
        remote: &str,
    ) -> Result<Admission, StoreError> {
        let own = bucket_key(user, remote);
        for _ in 0..MAX_ROUNDS {
            let now = self.now_ms();
            let mut key = own.clone();
            let mut current = self.read(backend, &key).await?;
            if current.is_none() && self.table_full(backend).await? {
                key = OVERFLOW.to_string();
                current = self.read(backend, &key).await?;
            }
            let attempt = Attempt {
                key: key.clone(),
                user: user.to_string(),
                remote: remote.to_string(),
            };
            let result = match current {
                Some((item, b)) if self.closed(b.started_ms, now) => {
                    self.close(backend, audit, &item, &b).await?;
                    continue;
                }
                Some((item, mut b)) if b.attempts >= self.max_attempts => {
                    b.refused = b.refused.saturating_add(1);
                    let wait = self.wait(&b, now);
                    backend
                        .update(&key, encode(&b)?, None, Some(item.revision))
                        .await
                        .map(|_| Admission::Locked { wait })
                }
                Some((item, mut b)) => {
                    b.attempts += 1;
                    backend
                        .update(&key, encode(&b)?, None, Some(item.revision))
                        .await
                        .map(|_| Admission::Admitted(attempt))
                }
                None => {
                    let shared = key == OVERFLOW;
                    let b = Bucket {
                        user: if shared { "*".into() } else { user.into() },
                        remote: if shared { "*".into() } else { remote.into() },
                        started_ms: now,
                        attempts: 1,
                        audited: 0,
                        lock_audited: false,
                        refused: 0,
                    };
                    backend
                        .create(&key, encode(&b)?, None)
                        .await
                        .map(|_| Admission::Admitted(attempt))
                }
            };
            match result {
                Ok(a) => return Ok(a),
                Err(e) if lost_race(&e) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(too_contended())
    }

    /// The attempt failed for `reason`: audit it if it is the bucket's first failure or the
    /// one that reached the limit; otherwise it stays counted for the summary.
    pub async fn fail(
        &self,
        backend: &dyn Backend,
        audit: &AuditSink,
        attempt: Attempt,
        reason: &str,
    ) -> Result<(), StoreError> {
        let event = |message: String| {
            AuditEvent::new(EventType::UserLogin, false, self.clock.now())
                .user(&attempt.user)
                .message(message)
                .remote_addr(&attempt.remote)
        };
        for _ in 0..MAX_ROUNDS {
            let Some((item, mut b)) = self.read(backend, &attempt.key).await? else {
                // The bucket was summarized and removed meanwhile (a concurrent success or
                // the window closing), perhaps counting this attempt as in flight: audit it
                // on its own anyway, so it is over-counted at worst, never lost.
                return audit.emit(event(reason.to_string())).await;
            };
            let mut conditions = vec![Condition::Revision(attempt.key.clone(), item.revision)];
            let mut ops = Vec::new();
            let first = b.audited == 0;
            let locks = b.attempts >= self.max_attempts && !b.lock_audited;
            if !first && !locks {
                // Counted at admission; the summary reports it.
                return Ok(());
            }
            if first && attempt.key != OVERFLOW {
                let (condition, op) = self.count_bucket(backend).await?;
                conditions.push(condition);
                ops.push(op);
            }
            let message = if locks {
                b.lock_audited = true;
                format!(
                    "{reason}; {} failed attempts, further logins refused for {} s (rate limited)",
                    b.attempts,
                    self.wait(&b, self.now_ms()).as_secs().max(1)
                )
            } else {
                reason.to_string()
            };
            b.audited += 1;
            ops.push(Op::Put {
                key: attempt.key.clone(),
                value: encode(&b)?,
                expires: None,
            });
            match audit.write_with(conditions, ops, event(message)).await {
                Ok(_) => return Ok(()),
                Err(e) if lost_race(&e) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(too_contended())
    }

    /// Condition and write that add one bucket to the table size.
    async fn count_bucket(&self, backend: &dyn Backend) -> Result<(Condition, Op), StoreError> {
        let now = self.now_ms();
        let (condition, size) = match backend.get(TABLE_SIZE).await? {
            Some(item) => {
                let t: TableSize =
                    serde_json::from_slice(&item.value).map_err(|e| corrupt(TABLE_SIZE, e))?;
                let size = if self.closed(t.started_ms, now) {
                    TableSize {
                        started_ms: now,
                        buckets: 1,
                    }
                } else {
                    TableSize {
                        buckets: t.buckets.saturating_add(1),
                        ..t
                    }
                };
                (Condition::Revision(TABLE_SIZE.into(), item.revision), size)
            }
            None => (
                Condition::NotExists(TABLE_SIZE.into()),
                TableSize {
                    started_ms: now,
                    buckets: 1,
                },
            ),
        };
        // Kept a little past its window so a closed window is seen as closed, then swept.
        let expires = OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(size.started_ms.saturating_add(self.window_ms())) * 1_000_000,
        )
        .ok()
        .map(|t| t + self.window);
        let op = Op::Put {
            key: TABLE_SIZE.into(),
            value: encode(&size)?,
            expires,
        };
        Ok((condition, op))
    }

    /// The attempt succeeded: the bucket's window ends here, with its summary.
    pub async fn succeed(
        &self,
        backend: &dyn Backend,
        audit: &AuditSink,
        attempt: Attempt,
    ) -> Result<(), StoreError> {
        for _ in 0..MAX_ROUNDS {
            let Some((item, mut b)) = self.read(backend, &attempt.key).await? else {
                return Ok(());
            };
            // This attempt was counted at admission; it was no failure.
            b.attempts = b.attempts.saturating_sub(1);
            let result = if attempt.key == OVERFLOW {
                // Shared by many pairs: one success does not clear the others' failures.
                backend
                    .update(&attempt.key, encode(&b)?, None, Some(item.revision))
                    .await
                    .map(|_| ())
            } else {
                self.close(backend, audit, &item, &b).await
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) if lost_race(&e) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(too_contended())
    }

    /// Delete the bucket stored as `item` (holding `b`), with one event for everything in it
    /// that was not audited yet. A lost race is reported as such.
    async fn close(
        &self,
        backend: &dyn Backend,
        audit: &AuditSink,
        item: &Item,
        b: &Bucket,
    ) -> Result<(), StoreError> {
        let unaudited = b.attempts.saturating_sub(b.audited);
        if unaudited == 0 && b.refused == 0 {
            return backend.delete(&item.key, Some(item.revision)).await;
        }
        let mut message = format!(
            "{unaudited} more failed login attempts and {} refused while rate limited, between {} and {} (aggregated)",
            b.refused,
            time_of(b.started_ms),
            time_of(
                self.now_ms()
                    .min(b.started_ms.saturating_add(self.window_ms()))
            )
        );
        if item.key == OVERFLOW {
            message.push_str(
                "; these users had no throttle state of their own because the table was full",
            );
        }
        let event = AuditEvent::new(EventType::UserLogin, false, self.clock.now())
            .user(&b.user)
            .message(message)
            .remote_addr(&b.remote);
        audit
            .write_with(
                vec![Condition::Revision(item.key.clone(), item.revision)],
                vec![Op::Delete {
                    key: item.key.clone(),
                }],
                event,
            )
            .await
            .map(|_| ())
    }

    /// Summarize and remove every bucket whose window has closed. Run periodically by every
    /// auth server; the revision conditions make each summary appear once.
    pub async fn flush(&self, backend: &dyn Backend, audit: &AuditSink) -> Result<u32, StoreError> {
        let mut closed = 0;
        let mut cursor: Option<String> = None;
        loop {
            let page = backend.range(PREFIX, cursor.as_deref(), 1000).await?;
            for item in &page.items {
                let b: Bucket = match serde_json::from_slice(&item.value) {
                    Ok(b) => b,
                    Err(e) => {
                        // Logins of that pair fail closed (admit reports it); the others go on.
                        tracing::warn!(error = %corrupt(&item.key, e), "skipping a throttle bucket");
                        continue;
                    }
                };
                if !self.closed(b.started_ms, self.now_ms()) {
                    continue;
                }
                match self.close(backend, audit, item, &b).await {
                    Ok(()) => closed += 1,
                    Err(e) if lost_race(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            match page.next {
                Some(n) => cursor = Some(n),
                None => return Ok(closed),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    async fn store() -> (tempfile::TempDir, Arc<dyn Backend>, Arc<AuditSink>) {
        let dir = tempfile::tempdir().unwrap();
        let b: Arc<dyn Backend> =
            dt_store::sqlite::SqliteBackend::open(&dir.path().join("t.db"), Default::default())
                .await
                .unwrap();
        let audit = Arc::new(AuditSink::new(b.clone()));
        (dir, b, audit)
    }

    /// Invariant `parallel_guesses_bounded`: however many attempts race, at most
    /// `max_attempts` are admitted per window.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parallel_attempts_never_exceed_the_limit() {
        let (_dir, b, audit) = store().await;
        let t = Arc::new(LoginThrottle::new(5, Duration::from_secs(60), 100));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..40 {
            let (t, b, audit) = (t.clone(), b.clone(), audit.clone());
            set.spawn(async move {
                match t
                    .admit(b.as_ref(), &audit, "eve", "10.0.0.1")
                    .await
                    .unwrap()
                {
                    Admission::Admitted(a) => {
                        t.fail(b.as_ref(), &audit, a, "invalid password")
                            .await
                            .unwrap();
                        1
                    }
                    Admission::Locked { .. } => 0,
                }
            });
        }
        let mut admitted = 0;
        while let Some(n) = set.join_next().await {
            admitted += n.unwrap();
        }
        assert_eq!(admitted, 5);
        // The first failure and the lockout (one event when the first failure finds the
        // bucket full already); the rest are counted for the summary.
        let (events, _) = audit.search(&Default::default(), None, 100).await.unwrap();
        assert!((1..=2).contains(&events.len()), "{events:#?}");
        assert!(
            events.iter().any(|e| e
                .message
                .as_deref()
                .is_some_and(|m| m.contains("rate limited"))),
            "{events:#?}"
        );
    }
}
