//! Device enrollment tokens: issued to a registered, not-enrolled device; only their SHA-256 is stored.

use std::time::Duration;

use dt_ceremony::token::EnrollTokenRecord;
use dt_proto::v1 as pb;
use dt_store::Op;
use dt_types::Verb;
use dt_types::audit::{AuditEvent, EventType};
use dt_types::device::EnrollStatus;
use time::OffsetDateTime;

use super::{DEFAULT_ENROLL_TTL, MAX_ENROLL_TTL, device_info};
use crate::caller::Caller;
use crate::error::{ApiError, ApiResult};
use crate::keys;
use crate::plan;
use crate::server::AuthServer;

impl AuthServer {
    pub(super) fn token_ops(
        &self,
        device_id: &str,
        ttl: Duration,
        now: OffsetDateTime,
        previous_hash: Option<String>,
    ) -> ApiResult<(pb::DeviceEnrollToken, Vec<Op>)> {
        if ttl > MAX_ENROLL_TTL {
            return Err(ApiError::InvalidArgument(
                "enrollment token TTL is at most 7d".into(),
            ));
        }
        let ttl = if ttl.is_zero() {
            DEFAULT_ENROLL_TTL
        } else {
            ttl
        };
        // Only devices that passed validation get tokens: their names are device ids.
        let typed_id = dt_types::DeviceId::parse(device_id).map_err(ApiError::internal)?;
        let mut env = self.env.ceremony();
        let (token, record) = EnrollTokenRecord::issue(
            typed_id,
            now,
            time::Duration::try_from(ttl).map_err(ApiError::internal)?,
            &mut env,
        );
        // Keep the record a day past expiry so "expired" and "already used" stay
        // distinguishable in the audit log; the sweeper removes it after that.
        let keep_until = record.expires + time::Duration::days(1);
        let mut ops = Vec::new();
        if let Some(h) = previous_hash {
            ops.push(Op::Delete {
                key: keys::device_token(&h),
            });
        }
        ops.push(Op::Put {
            key: keys::device_token(&record.token_hash),
            value: serde_json::to_vec(&record).map_err(ApiError::internal)?,
            expires: Some(keep_until),
        });
        ops.push(Op::Put {
            key: keys::device_token_index(device_id),
            value: record.token_hash.clone().into_bytes(),
            expires: Some(keep_until),
        });
        Ok((
            pb::DeviceEnrollToken {
                token: token.expose().to_string(),
                expires_unix: record.expires.unix_timestamp(),
                device_id: device_id.to_string(),
            },
            ops,
        ))
    }

    pub async fn create_enroll_token(
        &self,
        caller: &Caller,
        r: &pb::DeviceRef,
        ttl: Duration,
    ) -> ApiResult<pb::DeviceEnrollToken> {
        self.authorize_device(
            caller,
            Verb::CreateEnrollToken,
            EventType::DeviceTokenCreate,
        )
        .await?;
        let now = self.env.now();
        let (d, rev) = match self.resolve_device(r).await {
            Ok(x) => x,
            Err(e) => {
                self.audit
                    .emit(
                        AuditEvent::new(EventType::DeviceTokenCreate, false, now)
                            .user(caller.name())
                            .message(e.to_string()),
                    )
                    .await?;
                return Err(e);
            }
        };
        if d.spec.enroll_status == EnrollStatus::Enrolled {
            let msg = format!(
                "device {:?} is already enrolled; un-enroll it first (`dtctl edit device/{}` and set enroll_status: not_enrolled)",
                d.spec.asset_tag, d.spec.asset_tag
            );
            self.audit
                .emit(
                    AuditEvent::new(EventType::DeviceTokenCreate, false, now)
                        .user(caller.name())
                        .device(device_info(&d))
                        .message(&msg),
                )
                .await?;
            return Err(ApiError::FailedPrecondition(msg));
        }
        let id = d.metadata.name.clone();
        let previous = self
            .backend
            .get(&keys::device_token_index(&id))
            .await?
            .map(|i| String::from_utf8_lossy(&i.value).to_string());
        let (token, ops) = self.token_ops(&id, ttl, now, previous)?;
        let event = AuditEvent::new(EventType::DeviceTokenCreate, true, now)
            .user(caller.name())
            .device(device_info(&d))
            .remote_addr(caller.peer.addr.ip().to_string());
        self.commit(plan::devices::device_changed(&id, rev, ops, vec![event]))
            .await?;
        Ok(token)
    }
}
