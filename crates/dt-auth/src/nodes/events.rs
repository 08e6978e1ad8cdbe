//! Event ingest: access points submit the session and access events they observed, under
//! their own name.

use dt_types::audit::{AuditEvent, EventType};

use super::checks::set_submitter;
use crate::error::{ApiError, ApiResult};
use crate::listener::Peer;
use crate::server::AuthServer;

/// Event types an access point may submit.
const NODE_EVENTS: [EventType; 16] = [
    EventType::SessionStart,
    EventType::SessionEnd,
    EventType::SessionTerminate,
    EventType::Exec,
    EventType::AccessDenied,
    EventType::DbSessionStart,
    EventType::DbSessionEnd,
    EventType::DbSessionQuery,
    EventType::KubeRequest,
    EventType::KubeExecStart,
    EventType::KubeExecEnd,
    EventType::AppSessionStart,
    EventType::AppSessionRequest,
    EventType::DesktopSessionStart,
    EventType::DesktopSessionEnd,
    EventType::DesktopClipboard,
];
const MAX_EVENTS_PER_SUBMIT: usize = 1000;
const MAX_EVENT_JSON: usize = 64 * 1024;

impl AuthServer {
    /// Record events an access point observed, as that access point.
    pub async fn submit_node_events(
        &self,
        node: &dt_ca::NodeIdentity,
        peer: &Peer,
        events: Vec<String>,
    ) -> ApiResult<u32> {
        if events.len() > MAX_EVENTS_PER_SUBMIT {
            return Err(ApiError::InvalidArgument(format!(
                "at most {MAX_EVENTS_PER_SUBMIT} events per call"
            )));
        }
        let mut parsed = Vec::with_capacity(events.len());
        for json in &events {
            if json.len() > MAX_EVENT_JSON {
                return Err(ApiError::InvalidArgument("audit event is too large".into()));
            }
            let mut e: AuditEvent = serde_json::from_str(json)
                .map_err(|e| ApiError::InvalidArgument(format!("malformed audit event: {e}")))?;
            if !NODE_EVENTS.contains(&e.event) {
                return Err(ApiError::PermissionDenied(format!(
                    "access points may not submit {} events",
                    e.event
                )));
            }
            e.code = e.event.code(e.success);
            set_submitter(&mut e, node.kind, &node.name);
            e.id.clear();
            e.prev_hash.clear();
            e.hash.clear();
            parsed.push(e);
        }
        let n = parsed.len() as u32;
        // One transaction for the whole batch (chained in order): an access point that
        // audits every statement sends hundreds at a time, and a commit each would cap it.
        if !parsed.is_empty() {
            self.audit
                .write_with_events(Vec::new(), Vec::new(), parsed)
                .await?;
        }
        tracing::debug!(node = %node.name, from = %peer.addr, n, "node audit events recorded");
        Ok(n)
    }
}
