//! Removal (`dtctl rm KIND/NAME`): a joined service's registration and record go, and its key
//! is refused from then on.

use dt_types::audit::{AuditEvent, EventType};
use dt_types::{ServiceKind, Verb};

use super::checks::set_submitter;
use super::{NodeError, NodeRecord, NodeRegistration};
use crate::caller::Caller;
use crate::error::ApiResult;
use crate::keys;
use crate::plan;
use crate::server::AuthServer;

impl AuthServer {
    /// `dtctl rm node/NAME`: forget the node's registration and live record, and refuse its
    /// key from now on, so the name is free for a machine with a new key.
    pub async fn remove_node(&self, caller: &Caller, name: &str) -> ApiResult<()> {
        self.remove_service(caller, ServiceKind::Node, name).await
    }

    /// `dtctl rm KIND/NAME` for a joined service of any kind (needs `delete` on `node`,
    /// the API's name for every joined service): as [`Self::remove_node`].
    pub async fn remove_service(
        &self,
        caller: &Caller,
        kind: ServiceKind,
        name: &str,
    ) -> ApiResult<()> {
        self.authorize(caller, "node", Verb::Delete)?;
        let reg_key = keys::service_registration(kind, name);
        let record_key = keys::service_record(kind, name);
        let reg = self.backend.get(&reg_key).await?;
        let record = self.backend.get(&record_key).await?;
        if reg.is_none() && record.is_none() {
            return Err(NodeError::NotFound {
                kind,
                name: name.to_string(),
            }
            .into());
        }
        let mut keys_seen: Vec<String> = Vec::new();
        if let Some(r) = reg
            .as_ref()
            .and_then(|i| serde_json::from_slice::<NodeRegistration>(&i.value).ok())
        {
            keys_seen.push(r.key_sha256);
        }
        if let Some(r) = record
            .as_ref()
            .and_then(|i| serde_json::from_slice::<NodeRecord>(&i.value).ok())
            && !keys_seen.contains(&r.key_sha256)
        {
            keys_seen.push(r.key_sha256);
        }
        let now = self.env.now();
        let mut event = AuditEvent::new(EventType::ResourceDelete, true, now)
            .user(caller.name())
            .resource(kind.as_str(), name)
            .message(format!(
                "{kind} {name:?} removed; its key is refused from now on"
            ))
            .remote_addr(caller.peer.addr.ip().to_string());
        set_submitter(&mut event, kind, name);
        self.commit(plan::nodes::removed(
            kind,
            name,
            reg.as_ref().map(|i| i.revision),
            record.as_ref().map(|i| i.revision),
            &keys_seen,
            now,
            event,
        ))
        .await?;
        Ok(())
    }
}
