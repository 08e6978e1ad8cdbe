//! The MDM sync wire ([`crate::v1::MdmSyncRun`], [`crate::v1::MdmSourceState`]...) to and
//! from `dt_types::mdm` and the device profile.

use dt_types::device::{DeviceProfile, SourceOrigin};
use dt_types::mdm::{SourceState, SyncCounts, SyncRequest, SyncRun};
use time::OffsetDateTime;

use crate::ProtoError;
use crate::v1 as pb;

/// Most items one `ApplyMdmBatch` may carry.
pub const MAX_BATCH: usize = 1000;

pub fn profile_to_proto(p: &DeviceProfile) -> pb::MdmProfile {
    pb::MdmProfile {
        model_identifier: p.model_identifier.clone(),
        os_version: p.os_version.clone(),
        os_build: p.os_build.clone(),
        os_usernames: p.os_usernames.clone(),
        assigned_user: p.assigned_user.clone(),
        extra: p.extra.clone().into_iter().collect(),
    }
}

pub fn profile_from_proto(p: Option<pb::MdmProfile>) -> DeviceProfile {
    let p = p.unwrap_or_default();
    DeviceProfile {
        model_identifier: p.model_identifier,
        os_version: p.os_version,
        os_build: p.os_build,
        os_usernames: p.os_usernames,
        assigned_user: p.assigned_user,
        extra: p.extra.into_iter().collect(),
    }
}

pub fn origin_str(o: SourceOrigin) -> &'static str {
    match o {
        SourceOrigin::Api => "api",
        SourceOrigin::Jamf => "jamf",
        SourceOrigin::Intune => "intune",
        SourceOrigin::Csv => "csv",
    }
}

pub fn origin_parse(s: &str) -> Option<SourceOrigin> {
    match s {
        "api" => Some(SourceOrigin::Api),
        "jamf" => Some(SourceOrigin::Jamf),
        "intune" => Some(SourceOrigin::Intune),
        "csv" => Some(SourceOrigin::Csv),
        _ => None,
    }
}

fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn from_ms(v: i64, field: &'static str) -> Result<OffsetDateTime, ProtoError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(v) * 1_000_000).map_err(|e| {
        ProtoError::Invalid {
            field,
            why: e.to_string(),
        }
    })
}

pub fn counts_to_proto(c: &SyncCounts) -> pb::MdmCounts {
    pb::MdmCounts {
        created: c.created,
        updated: c.updated,
        removed: c.removed,
        unchanged: c.unchanged,
        missing_kept: c.missing_kept,
        skipped: c.skipped.clone().into_iter().collect(),
    }
}

pub fn counts_from_proto(c: Option<pb::MdmCounts>) -> SyncCounts {
    let c = c.unwrap_or_default();
    SyncCounts {
        created: c.created,
        updated: c.updated,
        removed: c.removed,
        unchanged: c.unchanged,
        missing_kept: c.missing_kept,
        skipped: c.skipped.into_iter().collect(),
    }
}

pub fn run_to_proto(r: &SyncRun) -> pb::MdmSyncRun {
    pb::MdmSyncRun {
        kind: r.kind.clone(),
        started_unix_ms: ms(r.started),
        finished_unix_ms: ms(r.finished),
        ok: r.ok,
        dry_run: r.dry_run,
        counts: Some(counts_to_proto(&r.counts)),
        error: r.error.clone().unwrap_or_default(),
    }
}

pub fn run_from_proto(r: pb::MdmSyncRun) -> Result<SyncRun, ProtoError> {
    if !matches!(r.kind.as_str(), "full" | "partial") {
        return Err(ProtoError::Invalid {
            field: "run.kind",
            why: "must be full or partial".into(),
        });
    }
    if r.error.len() > 4096 {
        return Err(ProtoError::Oversized {
            field: "run.error",
            len: r.error.len(),
            max: 4096,
        });
    }
    Ok(SyncRun {
        kind: r.kind,
        started: from_ms(r.started_unix_ms, "run.started_unix_ms")?,
        finished: from_ms(r.finished_unix_ms, "run.finished_unix_ms")?,
        ok: r.ok,
        dry_run: r.dry_run,
        counts: counts_from_proto(r.counts),
        error: (!r.error.is_empty()).then_some(r.error),
    })
}

pub fn state_to_proto(s: &SourceState) -> pb::MdmSourceState {
    pb::MdmSourceState {
        name: s.name.clone(),
        origin: origin_str(s.origin).into(),
        service: s.service.clone(),
        last_full: s.last_full.as_ref().map(run_to_proto),
        last_partial: s.last_partial.as_ref().map(run_to_proto),
        cursor_unix_ms: s.cursor.map(ms).unwrap_or(0),
        last_error: s.last_error.clone().unwrap_or_default(),
        known: true,
    }
}

pub fn state_from_proto(s: pb::MdmSourceState) -> Result<Option<SourceState>, ProtoError> {
    if !s.known {
        return Ok(None);
    }
    Ok(Some(SourceState {
        origin: origin_parse(&s.origin).ok_or(ProtoError::Invalid {
            field: "origin",
            why: "unknown source origin".into(),
        })?,
        name: s.name,
        service: s.service,
        last_full: s.last_full.map(run_from_proto).transpose()?,
        last_partial: s.last_partial.map(run_from_proto).transpose()?,
        cursor: (s.cursor_unix_ms != 0)
            .then(|| from_ms(s.cursor_unix_ms, "cursor_unix_ms"))
            .transpose()?,
        last_error: (!s.last_error.is_empty()).then_some(s.last_error),
    }))
}

pub fn request_to_proto(r: &SyncRequest) -> pb::MdmSyncRequest {
    pb::MdmSyncRequest {
        id: r.id.clone(),
        source: r.source.clone(),
        full: r.full,
        dry_run: r.dry_run,
        requested_by: r.requested_by.clone(),
        requested_unix_ms: ms(r.requested_at),
        phase: r.phase.clone(),
        done: r.done,
        total: r.total,
        result: r.result.as_ref().map(run_to_proto),
    }
}

pub fn request_from_proto(r: pb::MdmSyncRequest) -> Result<SyncRequest, ProtoError> {
    Ok(SyncRequest {
        requested_at: from_ms(r.requested_unix_ms, "requested_unix_ms")?,
        result: r.result.map(run_from_proto).transpose()?,
        id: r.id,
        source: r.source,
        full: r.full,
        dry_run: r.dry_run,
        requested_by: r.requested_by,
        phase: r.phase,
        done: r.done,
        total: r.total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let mut counts = SyncCounts {
            created: 3,
            ..Default::default()
        };
        counts.add_skip("missing_serial", 2);
        let s = SourceState {
            name: "jamf-main".into(),
            origin: SourceOrigin::Jamf,
            service: "mdm1".into(),
            last_full: Some(SyncRun {
                kind: "full".into(),
                started: t,
                finished: t,
                ok: true,
                dry_run: false,
                counts,
                error: None,
            }),
            last_partial: None,
            cursor: Some(t),
            last_error: Some("x".into()),
        };
        assert_eq!(state_from_proto(state_to_proto(&s)).unwrap(), Some(s));
        assert_eq!(
            state_from_proto(pb::MdmSourceState::default()).unwrap(),
            None
        );
    }
}
