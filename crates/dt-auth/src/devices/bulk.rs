//! Bulk registration of devices (`BulkCreateDevices`, `dtctl devices import`).

use dt_proto::v1 as pb;
use dt_store::{Condition, StoreError};
use dt_types::audit::{AuditEvent, EventType};
use dt_types::{Device, Kind, Verb};

use super::{MAX_BULK, device_from_proto, device_info, put_ops};
use crate::caller::Caller;
use crate::error::{ApiError, ApiResult};
use crate::keys;
use crate::server::AuthServer;

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
        // One transaction for the whole request (with one event per device): a per-device
        // transaction made imports fsync-bound. Known conflicts are read first; a conflict
        // that appears meanwhile drops just that device and the rest is retried.
        let now = self.env.now();
        let mut out: Vec<Option<pb::BulkCreateStatus>> = vec![None; items.len()];
        let failed = |tag: &str, error: String| pb::BulkCreateStatus {
            ok: false,
            device_id: String::new(),
            asset_tag: tag.to_string(),
            error,
        };
        let mut pending: Vec<(usize, Device)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, item) in items.into_iter().enumerate() {
            match device_from_proto(Some(item)) {
                Err(e) => out[i] = Some(failed("", e.to_string())),
                Ok(d) => {
                    let d = self.new_device(d, now);
                    let tag_key = keys::device_tag_index(d.spec.os_type, &d.spec.asset_tag);
                    if !seen.insert(tag_key.clone()) {
                        out[i] = Some(failed(
                            &d.spec.asset_tag,
                            "listed twice in this request".into(),
                        ));
                    } else if self.backend.get(&tag_key).await?.is_some() {
                        out[i] = Some(failed(
                            &d.spec.asset_tag,
                            format!(
                                "device {:?}/{} is already in the inventory",
                                d.spec.asset_tag, d.spec.os_type
                            ),
                        ));
                    } else {
                        pending.push((i, d));
                    }
                }
            }
        }
        while !pending.is_empty() {
            let mut conds = Vec::with_capacity(pending.len() * 2);
            let mut ops = Vec::with_capacity(pending.len() * 2);
            let mut events = Vec::with_capacity(pending.len());
            for (_, d) in &pending {
                conds.push(Condition::NotExists(keys::device_tag_index(
                    d.spec.os_type,
                    &d.spec.asset_tag,
                )));
                conds.push(Condition::NotExists(keys::resource(
                    Kind::Device,
                    &d.metadata.name,
                )));
                ops.extend(put_ops(d)?);
                events.push(
                    AuditEvent::new(EventType::DeviceCreate, true, now)
                        .user(caller.name())
                        .device(device_info(d))
                        .remote_addr(caller.peer.addr.ip().to_string()),
                );
            }
            match self.audit.write_with_events(conds, ops, events).await {
                Ok(_) => {
                    for (i, d) in pending.drain(..) {
                        out[i] = Some(pb::BulkCreateStatus {
                            ok: true,
                            device_id: d.metadata.name.clone(),
                            asset_tag: d.spec.asset_tag.clone(),
                            error: String::new(),
                        });
                    }
                }
                Err(StoreError::ConditionFailed { index, .. }) if index / 2 < pending.len() => {
                    let (i, d) = pending.remove(index / 2);
                    out[i] = Some(failed(
                        &d.spec.asset_tag,
                        format!(
                            "device {:?}/{} is already in the inventory",
                            d.spec.asset_tag, d.spec.os_type
                        ),
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
        // Refusals are audited too (one event each), after the successful write.
        let refusals: Vec<AuditEvent> = out
            .iter()
            .flatten()
            .filter(|st| !st.ok)
            .map(|st| {
                AuditEvent::new(EventType::DeviceCreate, false, now)
                    .user(caller.name())
                    .device(dt_types::audit::DeviceInfo {
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
