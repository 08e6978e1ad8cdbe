//! An in-memory view of the cluster state every API call reads — users, roles, the cluster
//! auth preference and locks — kept fresh by the storage change feed (`Backend::watch`), so
//! a request does not re-read them from storage.
//!
//! Consistency: each entry carries the storage revision it came from and only a newer
//! revision replaces it, so watch events and this server's own writes (applied at once when
//! a plan commits, [`crate::plan::WritePlan`]) can arrive in any order. Writes made through another auth server arrive by
//! the watch (LISTEN/NOTIFY on PostgreSQL). While the watch is down the cache is empty and
//! readers fall back to storage, so a broken feed never serves stale locks. A stored
//! document that does not parse is kept as unreadable (not as absent), so readers refuse to
//! decide on it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use dt_store::{Backend, EventKind, WatchEvent};
use dt_types::resource::{CAP_NAME, CapSpec, LockSpec, Resource, RoleSpec, UserSpec};
use dt_types::{ClusterAuthPreference, Kind, Lock, Role, User};
use time::OffsetDateTime;

use crate::keys;

/// A cached document: parsed, `None` when deleted, or the parse error when it is stored but
/// unreadable (readers refuse to decide on it: fail closed).
type Doc<T> = Result<Option<T>, String>;

#[derive(Default)]
struct Snapshot {
    /// key -> (revision, document)
    roles: HashMap<String, (i64, Doc<Role>)>,
    users: HashMap<String, (i64, Doc<User>)>,
    cap: Option<(i64, Doc<ClusterAuthPreference>)>,
    locks: HashMap<String, (i64, Doc<Lock>)>,
}

#[derive(Default)]
pub struct ClusterCache {
    state: RwLock<Option<Snapshot>>,
}

fn name_of(key: &str, kind: Kind) -> Option<&str> {
    key.strip_prefix(&keys::resource_prefix(kind))
}

/// Keep the newer of two revisions.
fn upsert<T>(slot: &mut HashMap<String, (i64, Doc<T>)>, name: &str, rev: i64, value: Doc<T>) {
    match slot.get(name) {
        Some((have, _)) if *have > rev => {}
        _ => {
            slot.insert(name.to_string(), (rev, value));
        }
    }
}

/// Parse a stored value (`None`: deleted), keeping the error of an unreadable one.
fn parse<S: dt_types::resource::Spec>(value: Option<&[u8]>) -> Doc<Resource<S>> {
    value
        .map(|v| serde_json::from_slice::<Resource<S>>(v).map_err(|e| e.to_string()))
        .transpose()
}

impl Snapshot {
    fn apply(&mut self, key: &str, rev: i64, value: Option<&[u8]>) {
        if let Some(name) = name_of(key, Kind::Role) {
            upsert(&mut self.roles, name, rev, parse::<RoleSpec>(value));
        } else if let Some(name) = name_of(key, Kind::User) {
            upsert(&mut self.users, name, rev, parse::<UserSpec>(value));
        } else if let Some(name) = name_of(key, Kind::Lock) {
            upsert(&mut self.locks, name, rev, parse::<LockSpec>(value));
        } else if name_of(key, Kind::ClusterAuthPreference) == Some(CAP_NAME) {
            let parsed = parse::<CapSpec>(value);
            if self.cap.as_ref().is_none_or(|(have, _)| *have <= rev) {
                self.cap = Some((rev, parsed));
            }
        }
    }
}

pub fn watched_prefixes() -> Vec<String> {
    [
        Kind::Role,
        Kind::User,
        Kind::Lock,
        Kind::ClusterAuthPreference,
    ]
    .into_iter()
    .map(keys::resource_prefix)
    .collect()
}

impl ClusterCache {
    /// Follow the change feed until the backend closes.
    pub fn spawn(self: &Arc<Self>, backend: Arc<dyn Backend>) -> tokio::task::JoinHandle<()> {
        let cache = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(50);
            loop {
                match cache.follow(backend.as_ref()).await {
                    Ok(()) => backoff = Duration::from_millis(50),
                    Err(e) => tracing::debug!(error = %e, "cluster cache: watch failed; retrying"),
                }
                cache.clear();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        })
    }

    async fn follow(&self, backend: &dyn Backend) -> Result<(), dt_store::StoreError> {
        let mut watcher = backend.watch(watched_prefixes()).await?;
        match watcher.recv().await {
            Some(WatchEvent::Init { .. }) => {}
            _ => return Ok(()),
        }
        // Everything after Init is queued in the watcher; load the current state, then
        // replay the queue (revisions make the replay idempotent).
        let mut snap = Snapshot::default();
        for prefix in watched_prefixes() {
            let mut cursor: Option<String> = None;
            loop {
                let page = backend.range(&prefix, cursor.as_deref(), 1000).await?;
                for item in &page.items {
                    snap.apply(&item.key, item.revision, Some(&item.value));
                }
                match page.next {
                    Some(n) => cursor = Some(n),
                    None => break,
                }
            }
        }
        self.set(Some(snap));
        while let Some(ev) = watcher.recv().await {
            if let WatchEvent::Change { kind, item } = ev {
                let value = (kind == EventKind::Put).then_some(item.value.as_slice());
                self.apply(&item.key, item.revision, value);
            }
        }
        Ok(())
    }

    fn set(&self, snap: Option<Snapshot>) {
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = snap;
    }

    pub fn clear(&self) {
        self.set(None);
    }

    /// Apply a write (or a deletion, `value: None`) made at `revision`. Keys outside the
    /// cached kinds are ignored.
    pub fn apply(&self, key: &str, revision: i64, value: Option<&[u8]>) {
        if let Some(s) = self
            .state
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            s.apply(key, revision, value);
        }
    }

    /// `None` while the cache is not following the feed; `Some(Err(why))` when the role is
    /// stored but unreadable.
    pub fn role(&self, name: &str) -> Option<Doc<Role>> {
        let g = self.state.read().unwrap_or_else(|p| p.into_inner());
        let s = g.as_ref()?;
        Some(s.roles.get(name).map_or(Ok(None), |(_, r)| r.clone()))
    }

    /// `None` while the cache is not following the feed; `Some(Err(why))` when the user is
    /// stored but unreadable. A user whose `metadata.expires` is not after `now` is absent,
    /// as storage says of it (the store's sweep removes it from the cache a little later).
    pub fn user(&self, name: &str, now: OffsetDateTime) -> Option<Doc<User>> {
        let g = self.state.read().unwrap_or_else(|p| p.into_inner());
        let s = g.as_ref()?;
        Some(match s.users.get(name) {
            Some((_, Ok(Some(u)))) if u.metadata.expires.is_some_and(|e| e <= now) => Ok(None),
            Some((_, doc)) => doc.clone(),
            None => Ok(None),
        })
    }

    /// Whether [`Self::apply`] keeps `key` (so a writer need only pass those).
    pub fn caches(key: &str) -> bool {
        watched_prefixes()
            .iter()
            .any(|p| key.starts_with(p.as_str()))
    }

    pub fn cap(&self) -> Option<Doc<ClusterAuthPreference>> {
        let g = self.state.read().unwrap_or_else(|p| p.into_inner());
        let s = g.as_ref()?;
        Some(s.cap.as_ref().map_or(Ok(None), |(_, c)| c.clone()))
    }

    /// All stored locks, or the name and parse error of the first unreadable one.
    pub fn locks(&self) -> Option<Result<Vec<Lock>, (String, String)>> {
        let g = self.state.read().unwrap_or_else(|p| p.into_inner());
        let s = g.as_ref()?;
        let mut out = Vec::with_capacity(s.locks.len());
        for (name, (_, doc)) in &s.locks {
            match doc {
                Ok(Some(l)) => out.push(l.clone()),
                Ok(None) => {}
                Err(why) => return Some(Err((name.clone(), why.clone()))),
            }
        }
        Some(Ok(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock_json(name: &str, user: &str) -> Vec<u8> {
        let l: Lock = Resource::new(
            name,
            LockSpec {
                target: dt_types::LockTarget {
                    user: Some(user.into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        serde_json::to_vec(&l).unwrap()
    }

    #[test]
    fn newer_revisions_win_in_any_arrival_order() {
        let c = ClusterCache::default();
        c.set(Some(Snapshot::default()));
        let key = keys::resource(Kind::Lock, "l1");
        c.apply(&key, 7, Some(&lock_json("l1", "bob")));
        c.apply(&key, 5, Some(&lock_json("l1", "alice"))); // older: ignored
        let locks = c.locks().unwrap().unwrap();
        assert_eq!(locks[0].spec.target.user.as_deref(), Some("bob"));
        c.apply(&key, 9, None); // deleted
        assert!(c.locks().unwrap().unwrap().is_empty());
        c.apply(&key, 8, Some(&lock_json("l1", "carol"))); // older than the delete
        assert!(c.locks().unwrap().unwrap().is_empty());
    }

    #[test]
    fn an_unreadable_document_is_kept_as_unreadable_not_absent() {
        let c = ClusterCache::default();
        c.set(Some(Snapshot::default()));
        c.apply(&keys::resource(Kind::Lock, "bad"), 3, Some(b"{not json"));
        assert!(matches!(c.locks(), Some(Err((name, _))) if name == "bad"));
        c.apply(&keys::resource(Kind::Role, "r"), 4, Some(b"[]"));
        assert!(matches!(c.role("r"), Some(Err(_))));
        assert!(matches!(c.role("other"), Some(Ok(None))));
        c.apply(
            &keys::resource(Kind::ClusterAuthPreference, CAP_NAME),
            5,
            Some(b"1"),
        );
        assert!(matches!(c.cap(), Some(Err(_))));
        // Fixing the document restores it.
        c.apply(&keys::resource(Kind::Lock, "bad"), 6, None);
        assert!(c.locks().unwrap().unwrap().is_empty());
    }

    #[test]
    fn an_unfollowed_cache_answers_none() {
        let c = ClusterCache::default();
        assert!(c.locks().is_none() && c.cap().is_none() && c.role("access").is_none());
        assert!(c.user("alice", OffsetDateTime::now_utc()).is_none());
    }

    #[test]
    fn users_are_kept_by_revision_and_a_removal_is_remembered() {
        let now = OffsetDateTime::now_utc();
        let c = ClusterCache::default();
        c.set(Some(Snapshot::default()));
        let key = keys::resource(Kind::User, "alice");
        let user: User = Resource::new(
            "alice",
            UserSpec {
                roles: vec!["access".into()],
                ..Default::default()
            },
        );
        let alice = serde_json::to_vec(&user).unwrap();
        let alice = alice.as_slice();
        assert!(matches!(c.user("alice", now), Some(Ok(None))), "unknown");
        c.apply(&key, 5, Some(alice));
        let got = c.user("alice", now).unwrap().unwrap().unwrap();
        assert_eq!(got.metadata.name, "alice");
        c.apply(&key, 7, None);
        assert!(matches!(c.user("alice", now), Some(Ok(None))), "removed");
        // The write of revision 5 arriving late (by the watch) does not bring her back.
        c.apply(&key, 5, Some(alice));
        assert!(
            matches!(c.user("alice", now), Some(Ok(None))),
            "a stale write"
        );
        c.apply(&key, 8, Some(b"{broken"));
        assert!(
            matches!(c.user("alice", now), Some(Err(_))),
            "unreadable: refuse"
        );
        assert!(ClusterCache::caches(&key));
    }

    #[test]
    fn an_expired_user_is_absent() {
        let now = OffsetDateTime::now_utc();
        let c = ClusterCache::default();
        c.set(Some(Snapshot::default()));
        let mut user: User = Resource::new("carol", UserSpec::default());
        user.metadata.expires = Some(now + time::Duration::minutes(5));
        c.apply(
            &keys::resource(Kind::User, "carol"),
            3,
            Some(&serde_json::to_vec(&user).unwrap()),
        );
        assert!(
            c.user("carol", now).unwrap().unwrap().is_some(),
            "not yet expired"
        );
        let later = now + time::Duration::minutes(5);
        assert!(
            matches!(c.user("carol", later), Some(Ok(None))),
            "expired at its instant"
        );
        assert!(!ClusterCache::caches("/resources/device/d1"));
    }

    #[tokio::test]
    async fn follows_storage_changes() {
        let dir = tempfile::tempdir().unwrap();
        let tuning = dt_store::Tuning {
            poll_every: Duration::from_millis(20),
            ..Default::default()
        };
        let b: Arc<dyn Backend> =
            dt_store::sqlite::SqliteBackend::open(&dir.path().join("db"), tuning)
                .await
                .unwrap();
        let key = keys::resource(Kind::Lock, "l1");
        b.put(&key, lock_json("l1", "alice"), None).await.unwrap();
        let c = Arc::new(ClusterCache::default());
        let task = c.spawn(b.clone());
        let wait = |want: usize| {
            let c = c.clone();
            async move {
                for _ in 0..200 {
                    if c.locks().is_some_and(|l| l.is_ok_and(|l| l.len() == want)) {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                false
            }
        };
        assert!(wait(1).await, "initial snapshot loaded");
        b.put(
            &keys::resource(Kind::Lock, "l2"),
            lock_json("l2", "bob"),
            None,
        )
        .await
        .unwrap();
        assert!(wait(2).await, "a new lock arrives by the watch");
        b.delete(&key, None).await.unwrap();
        assert!(wait(1).await, "a deleted lock leaves");
        task.abort();
        b.close().await;
    }
}
