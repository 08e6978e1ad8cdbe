//! What both ceremony drivers share on the wire: dt-ceremony's deadlines as timers, reading
//! the next message (size-checked, converted by dt-proto), mapping the state machines' error
//! codes to gRPC, and the caller of a ceremony stream (whose refusal is audited).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use dt_ceremony::error::ErrorCode;
use dt_proto::ProtoError;
use dt_types::audit::{AuditEvent, EventType};
use futures::Stream;
use tonic::{Status, Streaming};

use crate::caller::Caller;
use crate::error::{ApiError, ApiResult};
use crate::listener::Peer;
use crate::server::AuthServer;

/// dt-ceremony's deadlines (DESIGN.md §4), as the drivers' timers take them.
pub const FIRST_MESSAGE_DEADLINE: Duration =
    dt_ceremony::limits::FIRST_MESSAGE_TIMEOUT.unsigned_abs();

pub const CEREMONY_DEADLINE: Duration = dt_ceremony::limits::CEREMONY_TIMEOUT.unsigned_abs();

pub(crate) type CeremonyStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

pub fn status_for(code: ErrorCode, msg: String) -> Status {
    match code {
        ErrorCode::InvalidArgument => Status::invalid_argument(msg),
        ErrorCode::PermissionDenied => Status::permission_denied(msg),
        ErrorCode::FailedPrecondition => Status::failed_precondition(msg),
        ErrorCode::Unimplemented => Status::unimplemented(msg),
        ErrorCode::DeadlineExceeded => Status::deadline_exceeded(msg),
        ErrorCode::Internal => Status::internal(msg),
    }
}

/// The one wire helper of both ceremony drivers: reads the next message before
/// `deadline`, refuses it when its encoding is over dt-ceremony's message limit, and
/// converts it to the state machine's type (dt-proto checks shapes and field sizes).
pub(crate) async fn next_msg<P, T>(
    inbound: &mut Streaming<P>,
    deadline: tokio::time::Instant,
    what: &'static str,
) -> Result<T, Status>
where
    P: prost::Message + Default,
    T: TryFrom<P, Error = ProtoError>,
{
    let msg = tokio::time::timeout_at(deadline, inbound.message())
        .await
        .map_err(|_| Status::deadline_exceeded(format!("no {what} in time; start again")))??
        .ok_or_else(|| Status::cancelled(format!("the client closed the stream before {what}")))?;
    dt_proto::ceremony::check_message_len(what, &msg).map_err(|e| wire_status(what, e))?;
    T::try_from(msg).map_err(|e| wire_status(what, e))
}

/// A message that did not convert, as the peer sees it.
pub(crate) fn wire_status(what: &'static str, e: ProtoError) -> Status {
    match e {
        ProtoError::MessageTooLarge { .. } => Status::invalid_argument(e.to_string()),
        e => Status::invalid_argument(format!("malformed {what}: {e}")),
    }
}

/// Encodes a reply of the server half.
pub(crate) fn out<'a, R: 'a, P>(v: &'a R) -> Result<P, Status>
where
    P: TryFrom<&'a R, Error = ProtoError>,
{
    P::try_from(v).map_err(|e| ApiError::internal(e).into())
}

impl AuthServer {
    /// [`AuthServer::caller`] for a ceremony stream: a refused caller (locked user, removed
    /// user) leaves a failed ceremony event, so every ceremony attempt is in the log.
    pub(crate) async fn ceremony_caller(&self, peer: Peer, event: EventType) -> ApiResult<Caller> {
        let who = peer.identity.as_ref().map(|i| i.username.to_string());
        let remote = peer.addr.ip().to_string();
        match self.caller(peer).await {
            Ok(c) => Ok(c),
            Err(e) => {
                let mut ev = AuditEvent::new(event, false, self.env.now())
                    .message(e.to_string())
                    .remote_addr(remote);
                ev.user = who;
                self.audit.emit(ev).await?;
                Err(e)
            }
        }
    }

    /// The TPM evidence checker for the current cluster settings (the EK CA allow-list is
    /// validated when written, so an error here means storage was edited behind our back).
    pub(crate) fn tpm_verifier(
        &self,
        cap: &dt_types::ClusterAuthPreference,
    ) -> Option<Arc<dyn dt_ceremony::tpm::TpmVerifier>> {
        match dt_ceremony::tpm::AttestTpmVerifier::new(
            cap.spec.device_trust.ekcert_allowed_cas.clone(),
        ) {
            Ok(v) => Some(Arc::new(v)),
            Err(e) => {
                tracing::error!(error = %e, "ekcert_allowed_cas is unusable; refusing TPM devices");
                None
            }
        }
    }
}
