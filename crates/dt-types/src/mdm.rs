//! What the auth service keeps about each MDM source the inventory syncs from (`dtctl mdm
//! status`), and the on-demand sync requests (`dtctl mdm sync`) with their progress.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::device::SourceOrigin;

/// The counts of one sync.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncCounts {
    pub created: u64,
    pub updated: u64,
    pub removed: u64,
    pub unchanged: u64,
    /// This source's devices the MDM no longer lists, kept (`on_missing: NOOP`, or a full
    /// sync that did not complete).
    pub missing_kept: u64,
    /// Skipped records by reason (`missing_serial`, `unsupported_os`, `duplicate_serial`,
    /// `other_source`, `conflict`...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub skipped: BTreeMap<String, u64>,
}

impl SyncCounts {
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }
    pub fn add_skip(&mut self, reason: &str, n: u64) {
        *self.skipped.entry(reason.to_string()).or_default() += n;
    }
}

/// One sync run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncRun {
    /// `full` or `partial`.
    pub kind: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub finished: OffsetDateTime,
    /// Every page arrived and every planned change was applied.
    pub ok: bool,
    #[serde(default)]
    pub dry_run: bool,
    pub counts: SyncCounts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The sync state of one source: `/mdm/sources/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceState {
    pub name: String,
    pub origin: SourceOrigin,
    /// The MDM service that syncs this source (the first one to sync it claims it).
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_full: Option<SyncRun>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_partial: Option<SyncRun>,
    /// Where the next partial sync starts: records changed at or after this time.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub cursor: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// An on-demand sync (`dtctl mdm sync NAME`) and its progress: `/mdm/requests/<id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    pub id: String,
    pub source: String,
    pub full: bool,
    pub dry_run: bool,
    pub requested_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub requested_at: OffsetDateTime,
    /// `pending`, `fetching`, `applying`, `done`, `failed`.
    pub phase: String,
    pub done: u64,
    pub total: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<SyncRun>,
}

impl SyncRequest {
    pub fn finished(&self) -> bool {
        matches!(self.phase.as_str(), "done" | "failed")
    }
}
