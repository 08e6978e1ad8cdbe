//! Audit events a node observes (session.start, exec, session.end, session.terminate,
//! access.denied), queued in memory and sent to the auth service in order, in batches, with
//! retries while it is unreachable. The auth service stamps each event with the submitting
//! node's name; what the node fills in is the user, login, device, session and command.
//!
//! The queue is bounded ([`QUEUE_CAPACITY`]): when the auth service is gone for long enough
//! to fill it, new events are dropped with an error in the log rather than growing memory
//! without bound. (An on-disk spool is future work, noted in the threat model.)

use std::time::Duration;

use dt_proto::v1 as pb;
use dt_proto::v1::node_service_client::NodeServiceClient;
use dt_types::audit::{AuditEvent, EventType};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tonic::transport::Channel;

pub const QUEUE_CAPACITY: usize = 10_000;
const BATCH: usize = 200;

/// Where the node's audit events go.
#[derive(Clone)]
pub struct AuditQueue {
    tx: mpsc::Sender<AuditEvent>,
}

impl AuditQueue {
    /// A queue and its sender task (spawned on the current runtime).
    pub fn start(channel: Channel) -> AuditQueue {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(sender(NodeServiceClient::new(channel), rx));
        AuditQueue { tx }
    }

    /// A queue whose events go to `tx` (tests, and the OpenSSH helper's one-shot sends).
    pub fn from_sender(tx: mpsc::Sender<AuditEvent>) -> AuditQueue {
        AuditQueue { tx }
    }

    pub fn emit(&self, event: AuditEvent) {
        if let Err(e) = self.tx.try_send(event) {
            tracing::error!(error = %e, "audit queue is full or closed; dropping an audit event");
        }
    }
}

async fn sender(mut client: NodeServiceClient<Channel>, mut rx: mpsc::Receiver<AuditEvent>) {
    let mut batch: Vec<String> = Vec::new();
    let mut backoff = Duration::from_millis(200);
    loop {
        if batch.is_empty() {
            match rx.recv().await {
                Some(e) => batch.push(serde_json::to_string(&e).unwrap_or_default()),
                None => return,
            }
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(serde_json::to_string(&e).unwrap_or_default()),
                Err(_) => break,
            }
        }
        match client
            .submit_audit_events(pb::SubmitAuditEventsRequest {
                events: batch.clone(),
            })
            .await
        {
            Ok(_) => {
                batch.clear();
                backoff = Duration::from_millis(200);
            }
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::InvalidArgument | tonic::Code::PermissionDenied
                ) =>
            {
                tracing::error!(error = %s.message(), n = batch.len(), "the auth service refused audit events; dropping them");
                batch.clear();
            }
            Err(s) => {
                tracing::warn!(error = %s.message(), n = batch.len(), "cannot send audit events yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// A new event of a node-side type, timestamped now.
pub fn event(kind: EventType, success: bool) -> AuditEvent {
    AuditEvent::new(kind, success, OffsetDateTime::now_utc())
}
