//! An access point's view of the cluster: the cluster auth preference, roles and locks, exactly as
//! the auth service stored them, and how current that view is.
//!
//! Documents are read with the typed serde structs but **not** re-validated, so a value this
//! build does not know (a device-trust mode written by a newer server) is kept as
//! `DeviceTrustMode::Unknown` and denies, instead of being dropped. A document that does not
//! parse at all is remembered as unreadable, and anything it could have affected fails
//! closed: an unreadable role named by a certificate, an unreadable cluster auth preference,
//! or any unreadable lock denies access.

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::Duration;

use dt_types::resource::{CAP_NAME, CapSpec, LockingMode, Resource};
use dt_types::{ClusterAuthPreference, DeviceTrustMode, Lock, Role};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::watch;

/// One stored document: its kind (`role`, `lock`, `cluster_auth_preference`) and JSON text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Doc {
    pub kind: String,
    pub json: String,
}

/// Why the view cannot support a decision.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    #[error("this access point has no view of the cluster yet (is the auth service reachable?)")]
    NotLoaded,
    #[error("this access point cannot read {what}; denying until it can")]
    Unreadable { what: String },
}

/// The cluster as one node sees it.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    cap: Option<Result<ClusterAuthPreference, String>>,
    roles: BTreeMap<String, Result<Role, String>>,
    locks: BTreeMap<String, Result<Lock, String>>,
    /// A snapshot was applied (the view is complete, if maybe old).
    loaded: bool,
    /// When the view was last known to be current (the last message of a live watch).
    confirmed_at: Option<OffsetDateTime>,
    /// Bumped on every applied change; lets watchers of the view react to changes.
    generation: u64,
}

/// Parse a document into a typed resource without validating it; `Err` holds why it failed.
fn parse<S: dt_types::resource::Spec>(json: &str) -> Result<Resource<S>, String> {
    serde_json::from_str::<Resource<S>>(json).map_err(|e| e.to_string())
}

/// The name a document claims, even when the rest does not parse.
fn doc_name(json: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()?
        .pointer("/metadata/name")?
        .as_str()
        .map(str::to_owned)
}

impl ClusterView {
    /// A complete view from a snapshot.
    pub fn from_snapshot(docs: &[Doc], now: OffsetDateTime) -> Self {
        let mut v = ClusterView::default();
        for d in docs {
            v.put(d);
        }
        v.loaded = true;
        v.confirmed_at = Some(now);
        v.generation = 1;
        v
    }

    /// Replace the whole content with a snapshot, keeping the generation counter moving.
    pub fn replace_with_snapshot(&mut self, docs: &[Doc], now: OffsetDateTime) {
        let generation = self.generation + 1;
        *self = ClusterView::from_snapshot(docs, now);
        self.generation = generation;
    }

    /// Apply a created or changed document.
    pub fn put(&mut self, d: &Doc) {
        self.generation += 1;
        match d.kind.as_str() {
            "cluster_auth_preference" => {
                let parsed = parse::<CapSpec>(&d.json);
                // Only the one named document is the cluster's preference.
                match &parsed {
                    Ok(c) if c.metadata.name != CAP_NAME => {}
                    _ => self.cap = Some(parsed),
                }
            }
            "role" => {
                let parsed = parse(&d.json);
                let name = match &parsed {
                    Ok(r) => Some(r.metadata.name.clone()),
                    Err(_) => doc_name(&d.json),
                };
                if let Some(name) = name {
                    self.roles.insert(name, parsed);
                }
            }
            "lock" => {
                let parsed = parse(&d.json);
                let name = match &parsed {
                    Ok(l) => Some(l.metadata.name.clone()),
                    Err(_) => doc_name(&d.json),
                };
                // A lock without even a readable name still fails closed.
                let name = name.unwrap_or_else(|| format!("<unreadable {}>", self.locks.len()));
                self.locks.insert(name, parsed);
            }
            other => tracing::debug!(kind = other, "ignoring a document of another kind"),
        }
    }

    /// Apply a deletion.
    pub fn delete(&mut self, kind: &str, name: &str) {
        self.generation += 1;
        match kind {
            "cluster_auth_preference" if name == CAP_NAME => self.cap = None,
            "role" => {
                self.roles.remove(name);
            }
            "lock" => {
                self.locks.remove(name);
            }
            _ => {}
        }
    }

    /// The watch confirmed that the view is current at `now`.
    pub fn confirm(&mut self, now: OffsetDateTime) {
        self.confirmed_at = Some(now);
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn confirmed_at(&self) -> Option<OffsetDateTime> {
        self.confirmed_at
    }

    /// How old the view is: time since the watch last confirmed it (`None`: never).
    pub fn age(&self, now: OffsetDateTime) -> Option<Duration> {
        self.confirmed_at
            .map(|t| Duration::try_from(now - t).unwrap_or(Duration::ZERO))
    }

    /// The cluster-wide device-trust mode. A missing preference means the default
    /// (`optional`, what the auth service creates at first start); an unreadable one denies.
    pub fn cluster_mode(&self) -> Result<DeviceTrustMode, ViewError> {
        if !self.loaded {
            return Err(ViewError::NotLoaded);
        }
        match &self.cap {
            None => Ok(DeviceTrustMode::default()),
            Some(Ok(c)) => Ok(c.spec.device_trust.mode.clone()),
            Some(Err(_)) => Err(ViewError::Unreadable {
                what: "the cluster auth preference".into(),
            }),
        }
    }

    /// The cluster's `disconnect_expired_cert` (off unless set; on when unreadable, so an
    /// expired certificate's session ends rather than runs on).
    pub fn disconnect_expired_cert(&self) -> bool {
        match &self.cap {
            None => false,
            Some(Ok(c)) => c.spec.disconnect_expired_cert,
            Some(Err(_)) => true,
        }
    }

    /// The cluster's locking mode (`best_effort` unless set; `strict` when unreadable).
    pub fn locking_mode(&self) -> LockingMode {
        match &self.cap {
            None => LockingMode::default(),
            Some(Ok(c)) => c.spec.locking_mode,
            Some(Err(_)) => LockingMode::Strict,
        }
    }

    /// The roles named by an identity that exist in the view. A named role that exists but
    /// cannot be read fails closed; a role that does not exist grants and requires nothing.
    pub fn roles(&self, names: &[String]) -> Result<Vec<Role>, ViewError> {
        if !self.loaded {
            return Err(ViewError::NotLoaded);
        }
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            match self.roles.get(n) {
                Some(Ok(r)) => out.push(r.clone()),
                Some(Err(_)) => {
                    return Err(ViewError::Unreadable {
                        what: format!("role {n:?}"),
                    });
                }
                None => tracing::debug!(role = %n, "certificate names a role that does not exist"),
            }
        }
        Ok(out)
    }

    /// Locks in force at `now`. Any unreadable lock fails closed.
    pub fn active_locks(&self, now: OffsetDateTime) -> Result<Vec<Lock>, ViewError> {
        if !self.loaded {
            return Err(ViewError::NotLoaded);
        }
        let mut out = Vec::with_capacity(self.locks.len());
        for (name, l) in &self.locks {
            match l {
                Ok(l) if l.metadata.expires.is_none_or(|e| e > now) => out.push(l.clone()),
                Ok(_) => {}
                Err(_) => {
                    return Err(ViewError::Unreadable {
                        what: format!("lock {name:?}"),
                    });
                }
            }
        }
        Ok(out)
    }

    /// The documents of this view (for the on-disk cache of the OpenSSH helper).
    pub fn docs(&self) -> Vec<Doc> {
        fn json<T: Serialize>(v: &T) -> String {
            serde_json::to_string(v).unwrap_or_default()
        }
        let mut out = Vec::new();
        if let Some(Ok(c)) = &self.cap {
            out.push(Doc {
                kind: "cluster_auth_preference".into(),
                json: json(c),
            });
        }
        if let Some(Err(_)) = &self.cap {
            out.push(Doc {
                kind: "cluster_auth_preference".into(),
                json: "{\"unreadable\":true}".into(),
            });
        }
        for (name, r) in &self.roles {
            out.push(Doc {
                kind: "role".into(),
                json: match r {
                    Ok(r) => json(r),
                    Err(_) => format!(
                        "{{\"metadata\":{{\"name\":{}}},\"unreadable\":true}}",
                        json(name)
                    ),
                },
            });
        }
        for (name, l) in &self.locks {
            out.push(Doc {
                kind: "lock".into(),
                json: match l {
                    Ok(l) => json(l),
                    Err(_) => format!(
                        "{{\"metadata\":{{\"name\":{}}},\"unreadable\":true}}",
                        json(name)
                    ),
                },
            });
        }
        out
    }
}

/// The cluster view shared by every connection of an access point, with a change signal.
pub struct SharedView {
    inner: RwLock<ClusterView>,
    changed: watch::Sender<u64>,
}

impl Default for SharedView {
    fn default() -> Self {
        Self::new(ClusterView::default())
    }
}

impl SharedView {
    pub fn new(view: ClusterView) -> Self {
        let (changed, _) = watch::channel(view.generation());
        SharedView {
            inner: RwLock::new(view),
            changed,
        }
    }

    pub fn read<R>(&self, f: impl FnOnce(&ClusterView) -> R) -> R {
        match self.inner.read() {
            Ok(g) => f(&g),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    /// Change the view; watchers are told when the content changed.
    pub fn update(&self, f: impl FnOnce(&mut ClusterView)) {
        let generation = {
            let mut g = match self.inner.write() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            f(&mut g);
            g.generation()
        };
        self.changed.send_if_modified(|cur| {
            let changed = *cur != generation;
            *cur = generation;
            changed
        });
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str, mode: &str) -> Doc {
        Doc {
            kind: "role".into(),
            json: format!(
                r#"{{"kind":"role","version":"v7","metadata":{{"name":"{name}"}},"spec":{{"options":{{"device_trust_mode":"{mode}"}},"allow":{{"logins":["root"],"node_labels":{{"*":"*"}}}}}}}}"#
            ),
        }
    }

    #[test]
    fn unknown_modes_survive_and_unreadable_documents_fail_closed() {
        let now = OffsetDateTime::now_utc();
        let mut v = ClusterView::from_snapshot(&[role("a", "sometimes")], now);
        let roles = v.roles(&["a".into()]).unwrap();
        assert_eq!(
            roles[0].spec.options.device_trust_mode,
            Some(DeviceTrustMode::Unknown("sometimes".into()))
        );
        v.put(&Doc {
            kind: "role".into(),
            json: r#"{"kind":"role","version":"v9","metadata":{"name":"b"},"spec":{"future":1}}"#
                .into(),
        });
        assert!(matches!(
            v.roles(&["a".into(), "b".into()]),
            Err(ViewError::Unreadable { .. })
        ));
        // A role nobody has is ignored (it grants nothing).
        assert_eq!(v.roles(&["zzz".into()]).unwrap().len(), 0);
        v.put(&Doc {
            kind: "lock".into(),
            json: "not json".into(),
        });
        assert!(v.active_locks(now).is_err());
        v.put(&Doc {
            kind: "cluster_auth_preference".into(),
            json: r#"{"kind":"cluster_auth_preference","metadata":{"name":"cluster-auth-preference"},"spec":{"bogus":1}}"#.into(),
        });
        assert!(v.cluster_mode().is_err());
        assert_eq!(v.locking_mode(), LockingMode::Strict);
        assert!(
            v.disconnect_expired_cert(),
            "unreadable: sessions end at expiry"
        );
        // A copy through the documents keeps the failures.
        let back = ClusterView::from_snapshot(&v.docs(), now);
        assert!(back.cluster_mode().is_err());
        assert!(back.active_locks(now).is_err());
        assert!(back.roles(&["b".into()]).is_err());
    }

    #[test]
    fn empty_view_is_not_loaded_and_denies() {
        let v = ClusterView::default();
        assert_eq!(v.cluster_mode(), Err(ViewError::NotLoaded));
        assert!(v.age(OffsetDateTime::now_utc()).is_none());
    }
}
