//! Live sessions of an access point, so that a lock ends them.
//!
//! Each access point registers its live sessions (an SSH connection, a database connection,
//! a `kubectl exec`, a desktop...) with the identity that was verified when it started and
//! what it reaches ([`SessionTarget`]). [`enforce`] re-checks every session whenever the
//! cluster view changes (a lock arrives through the watch within milliseconds) and every
//! 500 ms (certificate expiry, lock TTLs): a session that a lock in force now matches, whose
//! certificate expired under `disconnect_expired_cert`, or (under `locking_mode: strict`) any
//! session while the view is stale, is removed from the registry and handed to the access
//! point's `end` function with the reason, which tells the client and closes it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dt_ca::Identity;
use dt_types::resource::LockingMode;
use time::OffsetDateTime;

use crate::access::{self, Ending, Freshness, SessionTarget};
use crate::view::SharedView;

/// What the registry needs to know of a live session.
pub trait LiveSession: Send + 'static {
    /// The identity verified when the session started.
    fn identity(&self) -> &Identity;
    /// What the session reaches.
    fn target(&self) -> &SessionTarget;
    /// Does it run anything right now? An idle one (an SSH connection with no channel open)
    /// is left alone: its next request is decided, and refused with the lock's message and an
    /// audit event, against the current view.
    fn is_active(&self) -> bool {
        true
    }
}

/// Live sessions by id.
pub struct SessionRegistry<S> {
    sessions: Mutex<HashMap<u64, S>>,
    next: AtomicU64,
}

impl<S> Default for SessionRegistry<S> {
    fn default() -> Self {
        SessionRegistry {
            sessions: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }
}

impl<S: LiveSession> SessionRegistry<S> {
    /// A fresh id for a session that is not registered yet.
    pub fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Run `f` over the sessions (to register, update or remove one).
    pub fn with<R>(&self, f: impl FnOnce(&mut HashMap<u64, S>) -> R) -> R {
        match self.sessions.lock() {
            Ok(mut g) => f(&mut g),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    pub fn insert(&self, id: u64, session: S) {
        self.with(|m| m.insert(id, session));
    }

    pub fn remove(&self, id: u64) -> Option<S> {
        self.with(|m| m.remove(&id))
    }

    /// How many sessions are live.
    pub fn len(&self) -> usize {
        self.with(|m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Remove and return the sessions that must end now, each with why.
    pub fn sweep(
        &self,
        view: &SharedView,
        now: OffsetDateTime,
        freshness: Freshness,
        noun: &str,
    ) -> Vec<(u64, S, Ending)> {
        if self.is_empty() {
            return Vec::new();
        }
        let verdicts: Vec<(u64, Ending)> = view.read(|v| {
            let stale = v.locking_mode() == LockingMode::Strict
                && v.age(now).is_none_or(|a| a > freshness.strict_max_age);
            self.with(|sessions| {
                sessions
                    .iter()
                    .filter(|(_, s)| s.is_active())
                    .filter_map(|(id, s)| {
                        let end = access::ending(v, s.identity(), s.target(), now).or_else(|| {
                            stale.then(|| Ending {
                                message: format!(
                                    "this {noun} cannot confirm the cluster's locks (locking_mode: strict); try again shortly"
                                ),
                                lock: None,
                            })
                        });
                        end.map(|e| (*id, e))
                    })
                    .collect()
            })
        });
        self.with(|sessions| {
            verdicts
                .into_iter()
                .filter_map(|(id, e)| sessions.remove(&id).map(|s| (id, s, e)))
                .collect()
        })
    }
}

/// Re-check the live sessions on every view change and every 500 ms, and end those that must
/// end with `end`. Runs until the view's change signal closes.
pub async fn enforce<S, F, Fut>(
    registry: Arc<SessionRegistry<S>>,
    view: Arc<SharedView>,
    freshness: Freshness,
    noun: &'static str,
    end: F,
) where
    S: LiveSession,
    F: Fn(u64, S, Ending) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut changed = view.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
        }
        let ended = registry.sweep(&view, OffsetDateTime::now_utc(), freshness, noun);
        // Concurrently: one slow client must not hold up the others' ending.
        futures::future::join_all(ended.into_iter().map(|(id, s, why)| end(id, s, why))).await;
    }
}
