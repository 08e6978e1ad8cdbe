//! The audit-chain API edge: `VerifyEvents` maps [`AuditSink::verify`]'s report to the wire.

use dt_proto::v1 as pb;
use time::OffsetDateTime;

use crate::audit::AuditSink;
use crate::error::{ApiError, ApiResult};

pub(crate) async fn verify_events(
    audit: &AuditSink,
    since_unix_ms: i64,
) -> ApiResult<pb::VerifyEventsResponse> {
    let since = if since_unix_ms > 0 {
        Some(
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(since_unix_ms) * 1_000_000)
                .map_err(|_| ApiError::InvalidArgument("bad --since".into()))?,
        )
    } else {
        None
    };
    let r = audit.verify(since).await.map_err(ApiError::from)?;
    let broken = r.broken.as_ref();
    Ok(pb::VerifyEventsResponse {
        checked: r.checked,
        first_id: r.first_id.clone().unwrap_or_default(),
        last_id: r.last_id.clone().unwrap_or_default(),
        anchor_id: r
            .anchor
            .as_ref()
            .map(|a| format!("{:020}", a.seq))
            .unwrap_or_default(),
        anchor_time: r
            .anchor
            .as_ref()
            .map(|a| dt_proto::chain::timestamp(a.time)),
        broken_id: broken.map(|b| b.id.clone()).unwrap_or_default(),
        broken_time: broken.and_then(|b| b.time).map(dt_proto::chain::timestamp),
        problem: broken.map(|b| b.problem.clone()).unwrap_or_default(),
    })
}
