//! The auth side of the MDM inventory sync: `MdmService`.
//!
//! - **The MDM service** (a joined service of kind `mdm`, its key still registered) reads the
//!   devices of its source (`ListSourceDevices`), applies one batch of creates, updates and
//!   removals per call (`ApplyMdmBatch`: one transaction with one audit event per device,
//!   each naming the source), and reports each run (`ReportMdmSync`) into the source's sync
//!   state (`/mdm/sources/<name>`).
//! - **Ownership**: a source belongs to the first MDM service that writes it; another one is
//!   refused. A batch may only create devices of its own source and only update or remove
//!   devices whose source is its own: a device from another MDM, added by hand (`api`) or
//!   imported (`csv`) is skipped as `other_source`, whatever the service's planner thought.
//!   These checks are made here, on the stored devices, not trusted from the caller.
//! - **Removal** of an enrolled device writes the same revocation lock `dtctl devices rm`
//!   does (certificates augmented with it stop working).
//! - **On-demand syncs**: `dtctl mdm sync` writes a request (`/mdm/requests/<id>`, kept a
//!   day) that the service polls for (`ListMdmRequests`), reports progress into
//!   (`ReportMdmProgress`) and closes with its run; `dtctl` polls `GetMdmRequest` to draw
//!   its progress bar. `dtctl mdm status` reads the sync states.

use std::sync::Arc;

use dt_proto::mdm as wire;
use dt_proto::v1 as pb;
use dt_proto::v1::mdm_service_server::MdmService;
use dt_store::Op;
use dt_types::audit::{AuditEvent, EventType, ServiceInfo};
use dt_types::device::{DeviceSource, DeviceSpec, EnrollStatus, OsType, SourceOrigin};
use dt_types::mdm::{SourceState, SyncRequest};
use dt_types::resource::Resource;
use dt_types::{AnyResource, Device, Kind, ServiceKind, Verb};
use time::OffsetDateTime;
use tonic::{Request, Response, Status};

use crate::caller::{Caller, peer_of};
use crate::devices::{device_info, index_deletes, put_ops};
use crate::error::{ApiError, ApiResult};
use crate::keys;
use crate::listener::Peer;
use crate::plan::{self, PlanError, Refusal, mdm::BatchItem};
use crate::server::AuthServer;

/// How long an on-demand request (and its result) is kept.
const REQUEST_TTL: time::Duration = time::Duration::days(1);

pub struct GrpcMdm {
    pub srv: Arc<AuthServer>,
}

/// The joined MDM service on the other end.
pub struct MdmPeer {
    node: Arc<dt_ca::NodeIdentity>,
    peer: Peer,
}

impl MdmPeer {
    fn actor(&self) -> String {
        format!("mdm/{}", self.node.name)
    }
    /// The caller revocation locks are written for: the service, with no roles.
    fn as_caller(&self) -> Caller {
        Caller::service(self.actor(), self.peer.clone())
    }
}

fn check_source_name(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !matches!(name, "api" | "csv");
    if ok {
        Ok(())
    } else {
        Err(ApiError::InvalidArgument(format!(
            "invalid source name {name:?}: 1 to 64 letters, digits, '-', '_' or '.', not api or csv"
        )))
    }
}

fn mdm_origin(origin: &str) -> ApiResult<SourceOrigin> {
    match wire::origin_parse(origin) {
        Some(o @ (SourceOrigin::Jamf | SourceOrigin::Intune)) => Ok(o),
        _ => Err(ApiError::InvalidArgument(format!(
            "origin {origin:?}: an MDM source is jamf or intune"
        ))),
    }
}

fn device_to_wire(d: &Device, revision: i64) -> pb::MdmDevice {
    pb::MdmDevice {
        device_id: d.metadata.name.clone(),
        revision,
        os_type: d.spec.os_type.as_str().into(),
        serial: d.spec.asset_tag.clone(),
        source_name: d
            .spec
            .source
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_default(),
        source_origin: d
            .spec
            .source
            .as_ref()
            .map(|s| wire::origin_str(s.origin).to_string())
            .unwrap_or_default(),
        profile: d.spec.profile.as_ref().map(wire::profile_to_proto),
        has_profile: d.spec.profile.is_some(),
    }
}

fn skipped(reason: &str, detail: String, device_id: &str) -> pb::MdmItemResult {
    pb::MdmItemResult {
        ok: false,
        skip_reason: reason.into(),
        detail,
        device_id: device_id.into(),
    }
}

fn owner_of(d: &Device) -> String {
    match &d.spec.source {
        Some(s) => format!("source {:?} ({})", s.name, wire::origin_str(s.origin)),
        None => "no source (added by hand)".into(),
    }
}

/// One item of a batch that passed the checks, with what writing it takes.
struct Planned {
    /// (0: creates, 1: updates, 2: removes, index in that list)
    slot: (usize, usize),
    device_id: String,
    /// Its write, revocation included ([`plan::mdm::BatchItem`]).
    item: BatchItem,
}

impl AuthServer {
    async fn mdm_peer(&self, peer: Peer) -> ApiResult<MdmPeer> {
        let node = self.live_node(&peer).await?;
        if node.kind != ServiceKind::Mdm {
            return Err(ApiError::PermissionDenied(format!(
                "the MDM sync calls are for the MDM service; {} {:?} may not call them",
                node.kind, node.name
            )));
        }
        Ok(MdmPeer { node, peer })
    }

    async fn source_state(&self, name: &str) -> ApiResult<Option<(SourceState, i64)>> {
        let Some(item) = self.backend.get(&keys::mdm_source(name)).await? else {
            return Ok(None);
        };
        let s = serde_json::from_slice(&item.value).map_err(ApiError::internal)?;
        Ok(Some((s, item.revision)))
    }

    /// The source's state, checking that `who` may sync it (it claimed it, or nobody did).
    async fn owned_source(
        &self,
        who: &MdmPeer,
        name: &str,
        origin: Option<SourceOrigin>,
    ) -> ApiResult<Option<(SourceState, i64)>> {
        check_source_name(name)?;
        let st = self.source_state(name).await?;
        if let Some((s, _)) = &st {
            if s.service != who.node.name {
                return Err(ApiError::PermissionDenied(format!(
                    "source {name:?} is synced by the MDM service {:?}; give this one another source name",
                    s.service
                )));
            }
            if let Some(o) = origin
                && o != s.origin
            {
                return Err(ApiError::InvalidArgument(format!(
                    "source {name:?} is a {} source, not {}",
                    wire::origin_str(s.origin),
                    wire::origin_str(o)
                )));
            }
        }
        Ok(st)
    }

    /// Record `who` as the service of source `name` unless one already is (then
    /// [`AuthServer::owned_source`] decides again).
    async fn claim_source(&self, who: &MdmPeer, name: &str, origin: SourceOrigin) -> ApiResult<()> {
        let state = SourceState {
            name: name.to_string(),
            origin,
            service: who.node.name.clone(),
            last_full: None,
            last_partial: None,
            cursor: None,
            last_error: None,
        };
        let plan = plan::mdm::source_claimed(&state).map_err(ApiError::internal)?;
        match self.commit_unaudited(plan).await {
            // Claimed now, or by another service first: `owned_source` decides.
            Ok(_) | Err(ApiError::Refused(Refusal::SyncStateChanged)) => {}
            Err(e) => return Err(e),
        }
        self.owned_source(who, name, Some(origin)).await.map(|_| ())
    }

    pub async fn mdm_list_source_devices(
        &self,
        who: &MdmPeer,
        req: pb::ListSourceDevicesRequest,
    ) -> ApiResult<pb::ListSourceDevicesResponse> {
        self.owned_source(who, &req.source, None).await?;
        if !req.keys.is_empty() {
            if req.keys.len() > wire::MAX_BATCH {
                return Err(ApiError::InvalidArgument(format!(
                    "at most {} keys per call",
                    wire::MAX_BATCH
                )));
            }
            let mut devices = Vec::new();
            for k in &req.keys {
                let os = OsType::parse(&k.os_type).ok_or_else(|| {
                    ApiError::InvalidArgument(format!("unknown os_type {:?}", k.os_type))
                })?;
                if let Some((d, rev)) = self.device_by_tag(os, &k.serial).await? {
                    devices.push(device_to_wire(&d, rev));
                }
            }
            return Ok(pb::ListSourceDevicesResponse {
                devices,
                next_page_token: String::new(),
            });
        }
        let limit = match req.page_size {
            0 => 1000,
            n => (n as usize).min(1000),
        };
        let prefix = keys::resource_prefix(Kind::Device);
        let start =
            (!req.page_token.is_empty()).then(|| keys::resource(Kind::Device, &req.page_token));
        let page = self.backend.range(&prefix, start.as_deref(), limit).await?;
        let mut devices = Vec::new();
        for item in &page.items {
            match serde_json::from_slice::<Device>(&item.value) {
                Ok(d) if d.spec.source.as_ref().is_some_and(|s| s.name == req.source) => {
                    devices.push(device_to_wire(&d, item.revision))
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(key = %item.key, error = %e, "skipping unreadable device"),
            }
        }
        Ok(pb::ListSourceDevicesResponse {
            devices,
            next_page_token: page
                .next
                .map(|k| k.trim_start_matches(&prefix).to_string())
                .unwrap_or_default(),
        })
    }

    fn mdm_event(
        &self,
        who: &MdmPeer,
        event: EventType,
        d: &Device,
        source: &DeviceSource,
        what: &str,
        now: OffsetDateTime,
    ) -> AuditEvent {
        let mut e = AuditEvent::new(event, true, now)
            .user(who.actor())
            .device(device_info(d))
            .resource("device_source", source.name.clone())
            .message(format!(
                "{what} by the inventory sync from {} source {:?}",
                wire::origin_str(source.origin),
                source.name
            ))
            .remote_addr(who.peer.addr.ip().to_string());
        e.service = Some(ServiceInfo {
            kind: ServiceKind::Mdm,
            name: who.node.name.clone(),
        });
        e
    }

    pub async fn mdm_apply_batch(
        &self,
        who: &MdmPeer,
        req: pb::ApplyMdmBatchRequest,
    ) -> ApiResult<pb::ApplyMdmBatchResponse> {
        let origin = mdm_origin(&req.origin)?;
        if self
            .owned_source(who, &req.source, Some(origin))
            .await?
            .is_none()
            && !req.dry_run
        {
            // The first write claims the source for this service.
            self.claim_source(who, &req.source, origin).await?;
        }
        let n = req.creates.len() + req.updates.len() + req.removes.len();
        if n > wire::MAX_BATCH {
            return Err(ApiError::InvalidArgument(format!(
                "at most {} items per batch",
                wire::MAX_BATCH
            )));
        }
        let source = DeviceSource {
            name: req.source.clone(),
            origin,
        };
        let now = self.env.now();
        let mut out = pb::ApplyMdmBatchResponse {
            creates: vec![pb::MdmItemResult::default(); req.creates.len()],
            updates: vec![pb::MdmItemResult::default(); req.updates.len()],
            removes: vec![pb::MdmItemResult::default(); req.removes.len()],
        };
        let mut planned: Vec<Planned> = Vec::new();
        let mut seen_tags = std::collections::HashSet::new();
        for (i, c) in req.creates.iter().enumerate() {
            let Some(os) = OsType::parse(&c.os_type) else {
                out.creates[i] = skipped("refused", format!("unknown os_type {:?}", c.os_type), "");
                continue;
            };
            let tag_key = keys::device_tag_index(os, &c.serial);
            if !seen_tags.insert(tag_key.clone()) {
                out.creates[i] =
                    skipped("duplicate_serial", "listed twice in this batch".into(), "");
                continue;
            }
            if let Some((existing, _)) = self.device_by_tag(os, &c.serial).await? {
                let reason = if existing.spec.source.as_ref() == Some(&source) {
                    "conflict"
                } else {
                    "other_source"
                };
                out.creates[i] = skipped(
                    reason,
                    format!(
                        "device {:?}/{os} is already in the inventory from {}",
                        c.serial,
                        owner_of(&existing)
                    ),
                    &existing.metadata.name,
                );
                continue;
            }
            let id = dt_types::DeviceId::fresh().into_string();
            let d: Device = Resource::new(
                id.clone(),
                DeviceSpec {
                    os_type: os,
                    asset_tag: c.serial.clone(),
                    enroll_status: EnrollStatus::NotEnrolled,
                    create_time: Some(now),
                    update_time: Some(now),
                    credential: None,
                    collected_data: Vec::new(),
                    source: Some(source.clone()),
                    profile: Some(wire::profile_from_proto(c.profile.clone())),
                    owner: None,
                },
            );
            if let Err(e) = AnyResource::Device(d.clone()).validate() {
                out.creates[i] = skipped("refused", e.to_string(), "");
                continue;
            }
            let event = self.mdm_event(who, EventType::DeviceCreate, &d, &source, "created", now);
            planned.push(Planned {
                slot: (0, i),
                device_id: id.clone(),
                item: plan::mdm::device_created(&d, tag_key, put_ops(&d)?, event),
            });
        }
        // Updates and removals: the stored device, at the revision the planner saw, of
        // this source.
        let caller = who.as_caller();
        for (kind, items) in [
            (
                1usize,
                req.updates
                    .iter()
                    .map(|u| (&u.device_id, u.revision))
                    .collect::<Vec<_>>(),
            ),
            (
                2usize,
                req.removes
                    .iter()
                    .map(|r| (&r.device_id, r.revision))
                    .collect::<Vec<_>>(),
            ),
        ] {
            for (i, (id, rev)) in items.into_iter().enumerate() {
                let slot = if kind == 1 {
                    &mut out.updates[i]
                } else {
                    &mut out.removes[i]
                };
                let Some((current, cur_rev)) = self.get_device(id).await? else {
                    *slot = skipped("conflict", format!("device {id:?} is gone"), id);
                    continue;
                };
                if current.spec.source.as_ref() != Some(&source) {
                    *slot = skipped(
                        "other_source",
                        format!(
                            "device {:?} belongs to {}; the sync never changes it",
                            current.spec.asset_tag,
                            owner_of(&current)
                        ),
                        id,
                    );
                    continue;
                }
                if cur_rev != rev {
                    *slot = skipped(
                        "conflict",
                        format!(
                            "device {:?} changed meanwhile; the next sync retries",
                            current.spec.asset_tag
                        ),
                        id,
                    );
                    continue;
                }
                if kind == 1 {
                    let mut next = current.clone();
                    next.spec.profile =
                        Some(wire::profile_from_proto(req.updates[i].profile.clone()));
                    next.spec.update_time = Some(now);
                    if let Err(e) = AnyResource::Device(next.clone()).validate() {
                        *slot = skipped("refused", e.to_string(), id);
                        continue;
                    }
                    let put = Op::Put {
                        key: keys::resource(Kind::Device, id),
                        value: serde_json::to_vec(&next).map_err(ApiError::internal)?,
                        expires: None,
                    };
                    let event = self.mdm_event(
                        who,
                        EventType::DeviceUpdate,
                        &next,
                        &source,
                        "profile updated",
                        now,
                    );
                    planned.push(Planned {
                        slot: (1, i),
                        device_id: id.clone(),
                        item: plan::mdm::device_changed(id, rev, vec![put], vec![event]),
                    });
                } else {
                    let mut ops = index_deletes(&current);
                    ops.push(Op::Delete {
                        key: keys::resource(Kind::Device, id),
                    });
                    if let Some(item) = self.backend.get(&keys::device_token_index(id)).await? {
                        let hash = String::from_utf8_lossy(&item.value).to_string();
                        ops.push(Op::Delete {
                            key: keys::device_token(&hash),
                        });
                        ops.push(Op::Delete {
                            key: keys::device_token_index(id),
                        });
                    }
                    let revocation = self
                        .revocation(&caller, &current, "removed by the inventory sync", now)
                        .await?;
                    let mut events = vec![self.mdm_event(
                        who,
                        EventType::DeviceDelete,
                        &current,
                        &source,
                        "removed (the MDM no longer lists it)",
                        now,
                    )];
                    if let Some(r) = &revocation {
                        ops.push(r.op.clone());
                        events.push(r.event.clone());
                    }
                    planned.push(Planned {
                        slot: (2, i),
                        device_id: id.clone(),
                        item: plan::mdm::device_changed(id, rev, ops, events),
                    });
                }
            }
        }
        // One transaction for the batch. A condition that fails (a device changed since it
        // was read) drops that item as a conflict and the rest is written.
        if !req.dry_run {
            while !planned.is_empty() {
                let items: Vec<BatchItem> = planned.iter().map(|p| p.item.clone()).collect();
                match self.commit_plan(plan::mdm::batch(&items)).await {
                    // Revocation locks reach this server's cache as the batch commits.
                    Ok(_) => break,
                    Err(PlanError::Refused(owner)) => {
                        let p = planned.remove(owner);
                        let r = skipped(
                            "conflict",
                            "the device changed meanwhile; the next sync retries".into(),
                            &p.device_id,
                        );
                        match p.slot.0 {
                            0 => out.creates[p.slot.1] = r,
                            1 => out.updates[p.slot.1] = r,
                            _ => out.removes[p.slot.1] = r,
                        }
                    }
                    Err(PlanError::Store(e)) => return Err(e.into()),
                }
            }
        }
        for p in planned {
            let ok = pb::MdmItemResult {
                ok: true,
                skip_reason: String::new(),
                detail: String::new(),
                device_id: p.device_id,
            };
            match p.slot.0 {
                0 => out.creates[p.slot.1] = ok,
                1 => out.updates[p.slot.1] = ok,
                _ => out.removes[p.slot.1] = ok,
            }
        }
        Ok(out)
    }

    pub async fn mdm_report_sync(
        &self,
        who: &MdmPeer,
        req: pb::ReportMdmSyncRequest,
    ) -> ApiResult<()> {
        let origin = mdm_origin(&req.origin)?;
        let current = self.owned_source(who, &req.source, Some(origin)).await?;
        // No run: the service only claims the source (at start, before its first sync).
        let run = req
            .run
            .map(wire::run_from_proto)
            .transpose()
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let (mut state, state_rev) = match current {
            Some((s, rev)) => (s, Some(rev)),
            None => (
                SourceState {
                    name: req.source.clone(),
                    origin,
                    service: who.node.name.clone(),
                    last_full: None,
                    last_partial: None,
                    cursor: None,
                    last_error: None,
                },
                None,
            ),
        };
        let Some(run) = run else {
            return self.claim_source(who, &req.source, origin).await;
        };
        if !run.dry_run {
            state.last_error = run.error.clone();
            if run.ok && req.cursor_unix_ms != 0 {
                state.cursor = Some(
                    OffsetDateTime::from_unix_timestamp_nanos(
                        i128::from(req.cursor_unix_ms) * 1_000_000,
                    )
                    .map_err(|e| ApiError::InvalidArgument(format!("cursor: {e}")))?,
                );
            }
            if run.kind == "full" {
                state.last_full = Some(run.clone());
            } else {
                state.last_partial = Some(run.clone());
            }
        }
        let mut answered = None;
        if !req.request_id.is_empty()
            && let Some((mut r, rev)) = self.sync_request(&req.request_id).await?
            && r.source == req.source
        {
            r.phase = if run.ok { "done" } else { "failed" }.into();
            r.result = Some(run);
            let kept_until = r.requested_at + REQUEST_TTL;
            answered = Some((r, rev, kept_until));
        }
        let plan = plan::mdm::sync_reported(
            &req.source,
            &state,
            state_rev,
            answered.as_ref().map(|(r, rev, until)| (r, *rev, *until)),
        )
        .map_err(ApiError::internal)?;
        self.commit_unaudited(plan).await?;
        Ok(())
    }

    async fn sync_request(&self, id: &str) -> ApiResult<Option<(SyncRequest, i64)>> {
        if id.is_empty() || id.len() > 64 || id.contains('/') {
            return Err(ApiError::InvalidArgument(format!(
                "invalid request id {id:?}"
            )));
        }
        let Some(item) = self.backend.get(&keys::mdm_request(id)).await? else {
            return Ok(None);
        };
        Ok(Some((
            serde_json::from_slice(&item.value).map_err(ApiError::internal)?,
            item.revision,
        )))
    }

    async fn all_sync_requests(&self) -> ApiResult<Vec<SyncRequest>> {
        let mut out = Vec::new();
        let mut start: Option<String> = None;
        loop {
            let page = self
                .backend
                .range(keys::MDM_REQUESTS_PREFIX, start.as_deref(), 1000)
                .await?;
            for item in &page.items {
                if let Ok(r) = serde_json::from_slice::<SyncRequest>(&item.value) {
                    out.push(r);
                }
            }
            match page.next {
                Some(n) => start = Some(n),
                None => return Ok(out),
            }
        }
    }

    pub async fn mdm_list_requests(
        &self,
        who: &MdmPeer,
        sources: Vec<String>,
    ) -> ApiResult<Vec<SyncRequest>> {
        let mut mine = Vec::new();
        for s in &sources {
            if self.owned_source(who, s, None).await.is_ok() {
                mine.push(s.clone());
            }
        }
        let mut out: Vec<SyncRequest> = self
            .all_sync_requests()
            .await?
            .into_iter()
            .filter(|r| r.phase == "pending" && mine.contains(&r.source))
            .collect();
        out.sort_by_key(|r| r.requested_at);
        Ok(out)
    }

    pub async fn mdm_report_progress(
        &self,
        who: &MdmPeer,
        req: pb::ReportMdmProgressRequest,
    ) -> ApiResult<()> {
        let Some((mut r, rev)) = self.sync_request(&req.request_id).await? else {
            return Err(ApiError::NotFound(format!(
                "no sync request {:?}",
                req.request_id
            )));
        };
        self.owned_source(who, &r.source, None).await?;
        if r.finished() || !matches!(req.phase.as_str(), "fetching" | "applying") {
            return Ok(());
        }
        r.phase = req.phase;
        r.done = req.done;
        r.total = req.total;
        let kept_until = r.requested_at + REQUEST_TTL;
        let plan = plan::mdm::progress_reported(&r, rev, kept_until).map_err(ApiError::internal)?;
        // Progress is advisory: a lost race or a failed write is not the reporter's problem.
        let _ = self.commit_unaudited(plan).await;
        Ok(())
    }

    /// `dtctl mdm status`: every source's sync state.
    pub async fn mdm_status(&self, caller: &Caller) -> ApiResult<Vec<SourceState>> {
        self.authorize(caller, "device", Verb::List)?;
        let page = self
            .backend
            .range(keys::MDM_SOURCES_PREFIX, None, 1000)
            .await?;
        page.items
            .iter()
            .map(|i| serde_json::from_slice(&i.value).map_err(ApiError::internal))
            .collect()
    }

    /// `dtctl mdm sync NAME`: ask the source's MDM service for a sync now.
    pub async fn mdm_request_sync(
        &self,
        caller: &Caller,
        req: pb::RequestMdmSyncRequest,
    ) -> ApiResult<SyncRequest> {
        let now = self.env.now();
        if let Err(e) = self.authorize(caller, "device", Verb::Update) {
            self.audit
                .emit(
                    AuditEvent::new(EventType::AccessDenied, false, now)
                        .user(caller.name())
                        .resource("device_source", req.source.clone())
                        .message(format!("mdm sync request refused: {e}"))
                        .remote_addr(caller.peer.addr.ip().to_string()),
                )
                .await?;
            return Err(e);
        }
        check_source_name(&req.source)?;
        if self.source_state(&req.source).await?.is_none() {
            return Err(ApiError::NotFound(format!(
                "no MDM service syncs a source named {:?}; `dtctl mdm status` lists them",
                req.source
            )));
        }
        let r = SyncRequest {
            id: uuid::Uuid::new_v4().to_string(),
            source: req.source,
            full: req.full,
            dry_run: req.dry_run,
            requested_by: caller.name().to_string(),
            requested_at: now,
            phase: "pending".into(),
            done: 0,
            total: 0,
            result: None,
        };
        self.backend
            .create(
                &keys::mdm_request(&r.id),
                serde_json::to_vec(&r).map_err(ApiError::internal)?,
                Some(now + REQUEST_TTL),
            )
            .await?;
        Ok(r)
    }

    pub async fn mdm_get_request(&self, caller: &Caller, id: &str) -> ApiResult<SyncRequest> {
        self.authorize(caller, "device", Verb::List)?;
        self.sync_request(id)
            .await?
            .map(|(r, _)| r)
            .ok_or_else(|| ApiError::NotFound(format!("no sync request {id:?} (kept a day)")))
    }
}

#[tonic::async_trait]
impl MdmService for GrpcMdm {
    async fn list_source_devices(
        &self,
        req: Request<pb::ListSourceDevicesRequest>,
    ) -> Result<Response<pb::ListSourceDevicesResponse>, Status> {
        let who = self.srv.mdm_peer(peer_of(&req)?).await?;
        Ok(Response::new(
            self.srv
                .mdm_list_source_devices(&who, req.into_inner())
                .await?,
        ))
    }

    async fn apply_mdm_batch(
        &self,
        req: Request<pb::ApplyMdmBatchRequest>,
    ) -> Result<Response<pb::ApplyMdmBatchResponse>, Status> {
        let who = self.srv.mdm_peer(peer_of(&req)?).await?;
        Ok(Response::new(
            self.srv.mdm_apply_batch(&who, req.into_inner()).await?,
        ))
    }

    async fn get_mdm_source(
        &self,
        req: Request<pb::GetMdmSourceRequest>,
    ) -> Result<Response<pb::MdmSourceState>, Status> {
        let who = self.srv.mdm_peer(peer_of(&req)?).await?;
        let st = self
            .srv
            .owned_source(&who, &req.get_ref().source, None)
            .await?;
        Ok(Response::new(match st {
            Some((s, _)) => wire::state_to_proto(&s),
            None => pb::MdmSourceState::default(),
        }))
    }

    async fn report_mdm_sync(
        &self,
        req: Request<pb::ReportMdmSyncRequest>,
    ) -> Result<Response<pb::ReportMdmSyncResponse>, Status> {
        let who = self.srv.mdm_peer(peer_of(&req)?).await?;
        self.srv.mdm_report_sync(&who, req.into_inner()).await?;
        Ok(Response::new(pb::ReportMdmSyncResponse {}))
    }

    async fn list_mdm_requests(
        &self,
        req: Request<pb::ListMdmRequestsRequest>,
    ) -> Result<Response<pb::ListMdmRequestsResponse>, Status> {
        let who = self.srv.mdm_peer(peer_of(&req)?).await?;
        let reqs = self
            .srv
            .mdm_list_requests(&who, req.into_inner().sources)
            .await?;
        Ok(Response::new(pb::ListMdmRequestsResponse {
            requests: reqs.iter().map(wire::request_to_proto).collect(),
        }))
    }

    async fn report_mdm_progress(
        &self,
        req: Request<pb::ReportMdmProgressRequest>,
    ) -> Result<Response<pb::ReportMdmProgressResponse>, Status> {
        let who = self.srv.mdm_peer(peer_of(&req)?).await?;
        self.srv.mdm_report_progress(&who, req.into_inner()).await?;
        Ok(Response::new(pb::ReportMdmProgressResponse {}))
    }

    async fn get_mdm_status(
        &self,
        req: Request<pb::GetMdmStatusRequest>,
    ) -> Result<Response<pb::GetMdmStatusResponse>, Status> {
        let caller = self.srv.caller(peer_of(&req)?).await?;
        let states = self.srv.mdm_status(&caller).await?;
        Ok(Response::new(pb::GetMdmStatusResponse {
            sources: states.iter().map(wire::state_to_proto).collect(),
        }))
    }

    async fn request_mdm_sync(
        &self,
        req: Request<pb::RequestMdmSyncRequest>,
    ) -> Result<Response<pb::MdmSyncRequest>, Status> {
        let caller = self.srv.caller(peer_of(&req)?).await?;
        let r = self.srv.mdm_request_sync(&caller, req.into_inner()).await?;
        Ok(Response::new(wire::request_to_proto(&r)))
    }

    async fn get_mdm_request(
        &self,
        req: Request<pb::GetMdmRequestRequest>,
    ) -> Result<Response<pb::MdmSyncRequest>, Status> {
        let caller = self.srv.caller(peer_of(&req)?).await?;
        let r = self.srv.mdm_get_request(&caller, &req.get_ref().id).await?;
        Ok(Response::new(wire::request_to_proto(&r)))
    }
}
