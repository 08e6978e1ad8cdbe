//! What a service's refused write tells the client, and how a service commits a plan.

use dt_types::device::OsType;
use dt_types::{Kind, ServiceKind};

use super::{PlanError, WritePlan, guard_outcome};
use crate::cache::ClusterCache;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::server::AuthServer;

/// Why a service's guarded write was refused: something changed between the read and the
/// write, or the name is taken. The text is what the client sees.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `dtctl users add` of a name that exists.
    #[error("user {name:?} already exists; use `dtctl users reset {name}` for a new signup token")]
    UserExists { name: String },
    /// A user (or its signup token) changed during a reset.
    #[error("user changed meanwhile; try again")]
    UserChanged,
    /// A created or edited resource changed since the editor read it.
    #[error("{kind} {name:?} was changed by someone else meanwhile; read it again and retry")]
    ResourceEdited { kind: Kind, name: String },
    /// A removed resource (or its user's signup token) changed meanwhile.
    #[error("{kind} {name:?} changed meanwhile; try again")]
    ResourceChanged { kind: Kind, name: String },
    /// `dtctl bots add` of a user name that exists.
    #[error("user {name:?} already exists; pick another bot name")]
    BotNameTaken { name: String },
    /// A fresh token's name is taken (astronomically unlikely).
    #[error("token collision; try again")]
    TokenCollision,
    /// A joined service's registration or record changed during a join or a removal.
    #[error("{kind} {name:?} changed meanwhile; try again")]
    ServiceChanged { kind: ServiceKind, name: String },
    /// A new device's asset tag and OS is taken.
    #[error("device {asset_tag:?}/{os_type} is already in the inventory")]
    DeviceExists { asset_tag: String, os_type: OsType },
    /// A new device's id (chosen by the client) is another device's.
    #[error(
        "device id {id} is already another device's: leave the id out and the inventory picks a fresh one"
    )]
    DeviceIdTaken { id: String },
    /// A device changed between the read and the write (an edit, a removal, a token).
    #[error("device {id:?} changed meanwhile; try again")]
    DeviceChanged { id: String },
    /// An MDM source's sync state (or the sync request) changed during a report.
    #[error("the sync state changed meanwhile; report again")]
    SyncStateChanged,
}

impl Refusal {
    /// A name that is taken "already exists"; a lost race is a conflict.
    pub fn code(&self) -> ErrorCode {
        match self {
            Refusal::UserExists { .. }
            | Refusal::BotNameTaken { .. }
            | Refusal::DeviceExists { .. }
            | Refusal::DeviceIdTaken { .. } => ErrorCode::AlreadyExists,
            _ => ErrorCode::Conflict,
        }
    }
}

impl From<PlanError<Refusal>> for ApiError {
    fn from(e: PlanError<Refusal>) -> Self {
        match e {
            PlanError::Refused(r) => ApiError::Refused(r),
            PlanError::Store(e) => e.into(),
        }
    }
}

/// The writes of `ops` the cluster cache keeps: (key, value, or `None` for a deletion).
fn cached_writes(ops: &[dt_store::Op]) -> Vec<(String, Option<Vec<u8>>)> {
    ops.iter()
        .filter_map(|op| match op {
            dt_store::Op::Put { key, value, .. } if ClusterCache::caches(key) => {
                Some((key.clone(), Some(value.clone())))
            }
            dt_store::Op::Delete { key } if ClusterCache::caches(key) => Some((key.clone(), None)),
            _ => None,
        })
        .collect()
}

impl AuthServer {
    /// A service's plan: its guards, writes and events in one audited transaction; returns
    /// the revision written, or the refusal of the guard that no longer held.
    pub(crate) async fn commit(&self, plan: WritePlan<Refusal>) -> ApiResult<i64> {
        Ok(self.commit_plan(plan).await?)
    }

    /// [`Self::commit`] for any kind of refusal (the caller decides what it means).
    pub(crate) async fn commit_plan<R: Clone>(
        &self,
        plan: WritePlan<R>,
    ) -> Result<i64, PlanError<R>> {
        let conditions = plan.conditions();
        let WritePlan {
            guards,
            ops,
            events,
        } = plan;
        let cached = cached_writes(&ops);
        let result = self.audit.write_with_events(conditions, ops, events).await;
        let rev = guard_outcome(&guards, result)?;
        self.apply_to_cache(cached, rev);
        Ok(rev)
    }

    /// This server's next request sees a committed plan's writes to cached kinds (users,
    /// roles, locks, settings) at once, not only when the change feed delivers them: a
    /// removed user or a new lock must be refused by the very next call.
    fn apply_to_cache(&self, writes: Vec<(String, Option<Vec<u8>>)>, revision: i64) {
        for (key, value) in writes {
            self.cache.apply(&key, revision, value.as_deref());
        }
    }

    /// A plan without audit events (liveness and sync bookkeeping), written directly.
    pub(crate) async fn commit_unaudited(&self, plan: WritePlan<Refusal>) -> ApiResult<i64> {
        debug_assert!(plan.events.is_empty(), "an audited plan written unaudited");
        let conditions = plan.conditions();
        let cached = cached_writes(&plan.ops);
        let result = self.backend.atomic_write(conditions, plan.ops).await;
        let rev = guard_outcome(&plan.guards, result)?;
        self.apply_to_cache(cached, rev);
        Ok(rev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dt_store::StoreError;

    #[test]
    fn refusals_say_what_they_said_and_map_to_their_codes() {
        let taken = Refusal::UserExists { name: "bob".into() };
        assert_eq!(
            taken.to_string(),
            "user \"bob\" already exists; use `dtctl users reset bob` for a new signup token"
        );
        assert_eq!(
            ApiError::Refused(taken).status().code(),
            tonic::Code::AlreadyExists
        );
        let raced = Refusal::ServiceChanged {
            kind: ServiceKind::Db,
            name: "pg".into(),
        };
        assert_eq!(raced.to_string(), "db \"pg\" changed meanwhile; try again");
        let e = ApiError::Refused(raced);
        assert_eq!(e.status().code(), tonic::Code::Aborted);
        assert_eq!(e.http_status(), http::StatusCode::CONFLICT);
        // A storage failure is not a refusal.
        let store: ApiError = PlanError::<Refusal>::Store(StoreError::Invalid("x".into())).into();
        assert!(matches!(store, ApiError::Internal { .. }));
    }
}
