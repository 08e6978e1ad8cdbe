//! The sync driver: fetch every page from the MDM, read what the inventory holds for the
//! source, plan ([`crate::plan`]), apply in batches (each batch one transaction on the auth
//! service, with its audit events), report the run. And the service loop: periodic full and
//! partial syncs, and the on-demand ones `dtctl mdm sync` asks for.
//!
//! Order matters for safety: nothing is written before every page arrived, so a failed fetch
//! (credentials refused, a malformed page, a page that never ends) writes nothing, and
//! removals (`on_missing: DELETE`) come after every create and update applied.

use std::sync::Arc;
use std::time::Duration;

use dt_proto::mdm as wire;
use dt_proto::v1 as pb;
use dt_proto::v1::mdm_service_client::MdmServiceClient;
use dt_types::device::{DeviceSource, OsType};
use dt_types::mdm::{SourceState, SyncCounts, SyncRun};
use time::OffsetDateTime;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::config::SourceConfig;
use crate::error::MdmError;
use crate::plan::{Current, Plan, SyncKind, plan};
use crate::source::MdmClient;

/// Items per `ApplyMdmBatch` (one transaction each).
pub const BATCH: usize = 500;
/// A partial sync starts this long before the previous sync started, so a record the MDM
/// stamped with a slightly late clock is not missed.
pub const CURSOR_SKEW: Duration = Duration::from_secs(300);
/// How often the service asks for on-demand sync requests.
pub const REQUEST_POLL: Duration = Duration::from_millis(250);

/// One sync to run.
#[derive(Clone, Debug)]
pub struct SyncJob {
    pub kind: SyncKind,
    pub dry_run: bool,
    /// The `dtctl mdm sync` request this answers.
    pub request_id: Option<String>,
}

fn device_from_wire(d: pb::MdmDevice) -> Option<Current> {
    Some(Current {
        id: d.device_id,
        revision: d.revision,
        os: OsType::parse(&d.os_type)?,
        serial: d.serial,
        source: (!d.source_name.is_empty()).then(|| DeviceSource {
            name: d.source_name,
            origin: wire::origin_parse(&d.source_origin).unwrap_or_default(),
        }),
        profile: d.has_profile.then(|| wire::profile_from_proto(d.profile)),
    })
}

async fn list_source(
    auth: &mut MdmServiceClient<Channel>,
    source: &str,
) -> Result<Vec<Current>, MdmError> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let r = auth
            .list_source_devices(pb::ListSourceDevicesRequest {
                source: source.into(),
                keys: vec![],
                page_token: token,
                page_size: 1000,
            })
            .await?
            .into_inner();
        out.extend(r.devices.into_iter().filter_map(device_from_wire));
        if r.next_page_token.is_empty() {
            return Ok(out);
        }
        token = r.next_page_token;
    }
}

async fn lookup(
    auth: &mut MdmServiceClient<Channel>,
    source: &str,
    keys: Vec<(OsType, String)>,
) -> Result<Vec<Current>, MdmError> {
    let mut out = Vec::new();
    for chunk in keys.chunks(1000) {
        let r = auth
            .list_source_devices(pb::ListSourceDevicesRequest {
                source: source.into(),
                keys: chunk
                    .iter()
                    .map(|(os, serial)| pb::MdmKey {
                        os_type: os.as_str().into(),
                        serial: serial.clone(),
                    })
                    .collect(),
                page_token: String::new(),
                page_size: 0,
            })
            .await?
            .into_inner();
        out.extend(r.devices.into_iter().filter_map(device_from_wire));
    }
    Ok(out)
}

fn tally(counts: &mut SyncCounts, results: &[pb::MdmItemResult], ok_field: fn(&mut SyncCounts)) {
    for r in results {
        if r.ok {
            ok_field(counts);
        } else {
            counts.add_skip(
                if r.skip_reason.is_empty() {
                    "refused"
                } else {
                    &r.skip_reason
                },
                1,
            );
        }
    }
}

/// Apply `p` in batches; the counts of what applied (or, dry-run, would apply).
async fn apply(
    auth: &mut MdmServiceClient<Channel>,
    cfg: &SourceConfig,
    p: &Plan,
    dry_run: bool,
    progress: &watch::Sender<(String, u64, u64)>,
) -> Result<SyncCounts, MdmError> {
    let mut counts = SyncCounts {
        unchanged: p.unchanged,
        missing_kept: p.missing_kept,
        ..Default::default()
    };
    for s in &p.skips {
        counts.add_skip(s.reason.as_str(), 1);
        tracing::info!(source = cfg.name(), what = %s.what, reason = s.reason.as_str(), detail = %s.detail, "record skipped");
    }
    let total = (p.creates.len() + p.updates.len() + p.removes.len()) as u64;
    let mut done = 0u64;
    let origin = wire::origin_str(cfg.origin()).to_string();
    let base = pb::ApplyMdmBatchRequest {
        source: cfg.name().into(),
        origin,
        dry_run,
        ..Default::default()
    };
    // Creates and updates first...
    let upserts: Vec<either::Upsert<'_>> = p
        .creates
        .iter()
        .map(either::Upsert::Create)
        .chain(p.updates.iter().map(either::Upsert::Update))
        .collect();
    for chunk in upserts.chunks(BATCH) {
        let mut req = base.clone();
        for u in chunk {
            match u {
                either::Upsert::Create(d) => req.creates.push(pb::MdmCreate {
                    os_type: d.os.as_str().into(),
                    serial: d.serial.clone(),
                    profile: Some(wire::profile_to_proto(&d.profile)),
                }),
                either::Upsert::Update(u) => req.updates.push(pb::MdmUpdate {
                    device_id: u.id.clone(),
                    revision: u.revision,
                    profile: Some(wire::profile_to_proto(&u.device.profile)),
                }),
            }
        }
        let r = auth.apply_mdm_batch(req).await?.into_inner();
        tally(&mut counts, &r.creates, |c| c.created += 1);
        tally(&mut counts, &r.updates, |c| c.updated += 1);
        done += chunk.len() as u64;
        let _ = progress.send(("applying".into(), done, total));
    }
    // ... then removals, only once everything else applied.
    for chunk in p.removes.chunks(BATCH) {
        let mut req = base.clone();
        req.removes = chunk
            .iter()
            .map(|r| pb::MdmRemove {
                device_id: r.id.clone(),
                revision: r.revision,
            })
            .collect();
        let r = auth.apply_mdm_batch(req).await?.into_inner();
        tally(&mut counts, &r.removes, |c| c.removed += 1);
        done += chunk.len() as u64;
        let _ = progress.send(("applying".into(), done, total));
    }
    Ok(counts)
}

mod either {
    use crate::plan::Update;
    use crate::record::MdmDevice;
    pub enum Upsert<'a> {
        Create(&'a MdmDevice),
        Update(&'a Update),
    }
}

/// Run one sync of `cfg` and report it to the auth service. Never fails: a failure is the
/// run's `error` (and the source's `last_error`).
pub async fn run_sync(
    auth: &mut MdmServiceClient<Channel>,
    mdm: &mut MdmClient,
    cfg: &SourceConfig,
    job: SyncJob,
) -> SyncRun {
    let started = OffsetDateTime::now_utc();
    let (progress, mut progress_rx) = watch::channel(("fetching".to_string(), 0u64, 0u64));
    // Progress reaches `dtctl mdm sync` through the request record, at most 10 times a second.
    let reporter = job.request_id.clone().map(|id| {
        let mut auth = auth.clone();
        tokio::spawn(async move {
            while progress_rx.changed().await.is_ok() {
                let (phase, done, total) = progress_rx.borrow_and_update().clone();
                let _ = auth
                    .report_mdm_progress(pb::ReportMdmProgressRequest {
                        request_id: id.clone(),
                        phase,
                        done,
                        total,
                    })
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });
    let _ = progress.send(("fetching".into(), 0, 0));
    let result = sync_inner(auth, mdm, cfg, &job, &progress).await;
    drop(progress);
    if let Some(r) = reporter {
        let _ = r.await;
    }
    let (kind, counts, error, cursor) = match result {
        Ok((kind, counts)) => (kind, counts, None, Some(started - CURSOR_SKEW)),
        Err((kind, counts, e)) => (kind, counts, Some(e.to_string()), None),
    };
    let run = SyncRun {
        kind: kind.as_str().into(),
        started,
        finished: OffsetDateTime::now_utc(),
        ok: error.is_none(),
        dry_run: job.dry_run,
        counts,
        error,
    };
    match &run.error {
        None => {
            tracing::info!(source = cfg.name(), kind = %run.kind, dry_run = run.dry_run, counts = ?run.counts, "sync done")
        }
        Some(e) => tracing::warn!(source = cfg.name(), kind = %run.kind, error = %e, "sync failed"),
    }
    let report = pb::ReportMdmSyncRequest {
        source: cfg.name().into(),
        origin: wire::origin_str(cfg.origin()).into(),
        run: Some(wire::run_to_proto(&run)),
        cursor_unix_ms: match cursor {
            Some(c) if !job.dry_run => (c.unix_timestamp_nanos() / 1_000_000) as i64,
            _ => 0,
        },
        request_id: job.request_id.clone().unwrap_or_default(),
    };
    if let Err(e) = auth.report_mdm_sync(report).await {
        tracing::warn!(source = cfg.name(), error = %e.message(), "cannot report the sync to the auth service");
    }
    run
}

type Failed = (SyncKind, SyncCounts, MdmError);

async fn sync_inner(
    auth: &mut MdmServiceClient<Channel>,
    mdm: &mut MdmClient,
    cfg: &SourceConfig,
    job: &SyncJob,
    progress: &watch::Sender<(String, u64, u64)>,
) -> Result<(SyncKind, SyncCounts), Failed> {
    let fail = |kind, e: MdmError| (kind, SyncCounts::default(), e);
    let state = auth
        .get_mdm_source(pb::GetMdmSourceRequest {
            source: cfg.name().into(),
        })
        .await
        .map_err(|e| fail(job.kind, e.into()))?
        .into_inner();
    let state: Option<SourceState> =
        wire::state_from_proto(state).map_err(|e| fail(job.kind, MdmError::Auth(e.to_string())))?;
    // A partial sync needs a cursor; the first sync of a source is a full one.
    let (kind, since) = match (job.kind, state.as_ref().and_then(|s| s.cursor)) {
        (SyncKind::Partial, Some(c)) => (SyncKind::Partial, Some(c)),
        _ => (SyncKind::Full, None),
    };
    let p = progress.clone();
    let on_page = move |done: u64, total: u64| {
        let _ = p.send(("fetching".into(), done, total));
    };
    let fetched = mdm
        .fetch(since, &on_page)
        .await
        .map_err(|e| fail(kind, e))?;
    let source = DeviceSource {
        name: cfg.name().into(),
        origin: cfg.origin(),
    };
    let current = match kind {
        SyncKind::Full => list_source(auth, cfg.name()).await,
        SyncKind::Partial => {
            let keys = fetched
                .records
                .iter()
                .filter_map(|r| r.as_ref().ok())
                .map(|d| (d.os, d.serial.clone()))
                .collect();
            lookup(auth, cfg.name(), keys).await
        }
    }
    .map_err(|e| fail(kind, e))?;
    let p = plan(
        &source,
        &current,
        fetched.records,
        kind,
        cfg.schedule().on_missing,
        true,
    );
    let counts = apply(auth, cfg, &p, job.dry_run, progress)
        .await
        .map_err(|e| fail(kind, e))?;
    Ok((kind, counts))
}

/// The service: for every configured source, periodic full and partial syncs (a period of
/// zero turns one off; a source never synced gets a full sync at once), and the on-demand
/// syncs `dtctl mdm sync` requests. Runs until `shutdown` turns true.
pub async fn serve(
    channel: Channel,
    sources: Vec<SourceConfig>,
    policy: Option<crate::http::RetryPolicy>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), MdmError> {
    let mut clients = Vec::new();
    for s in &sources {
        let c = MdmClient::new(s.clone())?;
        clients.push(match policy {
            Some(p) => c.with_policy(p),
            None => c,
        });
    }
    let mut auth = MdmServiceClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    let names: Vec<String> = sources.iter().map(|s| s.name().to_string()).collect();
    let now = tokio::time::Instant::now();
    let mut next_full: Vec<Option<tokio::time::Instant>> = Vec::new();
    let mut next_partial: Vec<Option<tokio::time::Instant>> = Vec::new();
    for s in &sources {
        let sched = s.schedule();
        let known = auth
            .get_mdm_source(pb::GetMdmSourceRequest {
                source: s.name().into(),
            })
            .await
            .ok()
            .and_then(|r| wire::state_from_proto(r.into_inner()).ok().flatten());
        if known.is_none() {
            // Claim the source now, so `dtctl mdm sync NAME` and `dtctl mdm status` know it
            // before its first sync.
            if let Err(e) = auth
                .report_mdm_sync(pb::ReportMdmSyncRequest {
                    source: s.name().into(),
                    origin: wire::origin_str(s.origin()).into(),
                    run: None,
                    cursor_unix_ms: 0,
                    request_id: String::new(),
                })
                .await
            {
                // Refused for good (another service owns the name...): stop. Unreachable:
                // the first sync claims it later.
                if matches!(
                    e.code(),
                    tonic::Code::PermissionDenied
                        | tonic::Code::InvalidArgument
                        | tonic::Code::Unauthenticated
                ) {
                    return Err(MdmError::Auth(format!(
                        "cannot register source {:?}: {}",
                        s.name(),
                        e.message()
                    )));
                }
                tracing::warn!(source = s.name(), error = %e.message(), "cannot register the source yet");
            }
        }
        let since_full = known
            .as_ref()
            .and_then(|k| k.last_full.as_ref())
            .map(|r| Duration::try_from(OffsetDateTime::now_utc() - r.started).unwrap_or_default());
        next_full.push((!sched.full.is_zero()).then(|| match since_full {
            Some(age) => now + sched.full.saturating_sub(age),
            None => now,
        }));
        next_partial.push((!sched.partial.is_zero()).then(|| now + sched.partial));
    }
    let sources = Arc::new(sources);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(REQUEST_POLL) => {}
            _ = shutdown.wait_for(|s| *s) => return Ok(()),
        }
        // On-demand first.
        match auth
            .list_mdm_requests(pb::ListMdmRequestsRequest {
                sources: names.clone(),
            })
            .await
        {
            Ok(r) => {
                for req in r.into_inner().requests {
                    let Some(i) = names.iter().position(|n| *n == req.source) else {
                        continue;
                    };
                    let job = SyncJob {
                        kind: if req.full {
                            SyncKind::Full
                        } else {
                            SyncKind::Partial
                        },
                        dry_run: req.dry_run,
                        request_id: Some(req.id.clone()),
                    };
                    run_sync(&mut auth, &mut clients[i], &sources[i], job).await;
                }
            }
            Err(e) => tracing::warn!(error = %e.message(), "cannot read sync requests"),
        }
        for i in 0..sources.len() {
            let sched = sources[i].schedule();
            let now = tokio::time::Instant::now();
            let kind = if next_full[i].is_some_and(|t| now >= t) {
                SyncKind::Full
            } else if next_partial[i].is_some_and(|t| now >= t) {
                SyncKind::Partial
            } else {
                continue;
            };
            let job = SyncJob {
                kind,
                dry_run: false,
                request_id: None,
            };
            run_sync(&mut auth, &mut clients[i], &sources[i], job).await;
            let now = tokio::time::Instant::now();
            if kind == SyncKind::Full {
                next_full[i] = (!sched.full.is_zero()).then(|| now + sched.full);
            }
            next_partial[i] = (!sched.partial.is_zero()).then(|| now + sched.partial);
        }
    }
}
