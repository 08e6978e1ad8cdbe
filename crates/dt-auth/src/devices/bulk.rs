//! Bulk registration of devices (`BulkCreateDevices`, `dtctl devices import`).
//!
//! Each device is its own audit request (its plan, [`plan::devices::device_created`]: its
//! guards, its writes and its `DeviceCreate` event), and all of them are handed to the
//! group commit at once ([`AuditSink::write_many`](crate::audit::AuditSink::write_many)):
//! they are committed
//! together (one transaction for up to 1024 requests, with whatever else is queued), yet
//! each is checked on its own. So a device whose asset tag (or id) is taken, also by a
//! concurrent request, is refused alone, without a read per device before the write nor a
//! retry of the others, and a device is never stored without its event.

use std::collections::HashSet;

use dt_proto::v1 as pb;
use dt_types::audit::{AuditEvent, DeviceInfo, EventType};
use dt_types::{Device, Verb};

use super::{MAX_BULK, device_from_proto, device_info, put_ops};
use crate::audit::Request;
use crate::caller::Caller;
use crate::error::{ApiError, ApiResult};
use crate::keys;
use crate::plan::{self, Guard, PlanError, Refusal, WritePlan};
use crate::server::AuthServer;

fn failed(tag: &str, error: String) -> pb::BulkCreateStatus {
    pb::BulkCreateStatus {
        ok: false,
        device_id: String::new(),
        asset_tag: tag.to_string(),
        error,
    }
}

impl AuthServer {
    /// One status per input, in order; a bad item does not stop the others.
    pub async fn bulk_create_devices(
        &self,
        caller: &Caller,
        items: Vec<pb::Device>,
    ) -> ApiResult<Vec<pb::BulkCreateStatus>> {
        self.authorize_device(caller, Verb::Create, EventType::DeviceCreate)
            .await?;
        if items.len() > MAX_BULK {
            return Err(ApiError::InvalidArgument(format!(
                "at most {MAX_BULK} devices per request"
            )));
        }
        let now = self.env.now();
        let addr = caller.peer.addr.ip().to_string();
        let mut out: Vec<Option<pb::BulkCreateStatus>> = vec![None; items.len()];
        let mut pending: Vec<(usize, Device, Vec<Guard<Refusal>>)> =
            Vec::with_capacity(items.len());
        let mut requests = Vec::with_capacity(items.len());
        let mut seen = HashSet::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let d = match device_from_proto(Some(item)) {
                Ok(d) => self.new_device(d, now),
                Err(e) => {
                    out[i] = Some(failed("", e.to_string()));
                    continue;
                }
            };
            let tag_key = keys::device_tag_index(d.spec.os_type, &d.spec.asset_tag);
            if !seen.insert(tag_key.clone()) {
                out[i] = Some(failed(
                    &d.spec.asset_tag,
                    "listed twice in this request".into(),
                ));
                continue;
            }
            let event = AuditEvent::new(EventType::DeviceCreate, true, now)
                .user(caller.name())
                .device(device_info(&d))
                .remote_addr(addr.clone());
            let WritePlan {
                guards,
                ops,
                events,
            } = plan::devices::device_created(&d, put_ops(&d)?, event);
            requests.push(Request {
                conditions: guards.iter().map(|g| g.condition.clone()).collect(),
                ops,
                events,
            });
            pending.push((i, d, guards));
        }
        let results = self.audit.write_many(requests).await;
        let mut storage_error = None;
        for ((i, d, guards), result) in pending.into_iter().zip(results) {
            out[i] = Some(match plan::guard_outcome(&guards, result) {
                Ok(_) => pb::BulkCreateStatus {
                    ok: true,
                    error: String::new(),
                    asset_tag: d.spec.asset_tag,
                    device_id: d.metadata.name,
                },
                Err(PlanError::Refused(taken)) => failed(&d.spec.asset_tag, taken.to_string()),
                Err(PlanError::Store(e)) => {
                    let e = ApiError::from(e);
                    let status = failed(&d.spec.asset_tag, e.to_string());
                    storage_error.get_or_insert(e);
                    status
                }
            });
        }
        // Storage failed and nothing was created: the request failed as a whole. (When some
        // devices were created, every device's status says what became of it.)
        if let Some(e) = storage_error
            && !out.iter().flatten().any(|st| st.ok)
        {
            return Err(e);
        }
        // Refusals are audited too (one event each), after the successful write.
        let refusals: Vec<AuditEvent> = out
            .iter()
            .flatten()
            .filter(|st| !st.ok)
            .map(|st| {
                AuditEvent::new(EventType::DeviceCreate, false, now)
                    .user(caller.name())
                    .device(DeviceInfo {
                        asset_tag: st.asset_tag.clone(),
                        ..Default::default()
                    })
                    .message(st.error.clone())
            })
            .collect();
        if !refusals.is_empty() {
            self.audit
                .write_with_events(vec![], vec![], refusals)
                .await?;
        }
        Ok(out
            .into_iter()
            .map(|st| st.unwrap_or_else(|| failed("", "not processed".into())))
            .collect())
    }
}
