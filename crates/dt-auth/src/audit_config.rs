//! The `audit:` section of `devtrust.yaml`, and the retention task it drives.
//!
//! ```yaml
//! audit:
//!   retention: 365d          # remove events older than this (the chain stays verifiable)
//!   retention_check: 1h      # how often to look (default 1h)
//!   jsonl_file: /var/log/devtrust/events.jsonl   # append every event as it is committed
//!   jsonl_max_size: 100MB    # rotate past this size (default 100MB)
//!   jsonl_keep: 5            # rotated files kept: events.jsonl.1 ... .5 (default 5)
//! ```

use std::sync::Weak;
use std::time::Duration;

use serde::Deserialize;

use crate::server::AuthServer;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAudit {
    #[serde(default)]
    retention: Option<String>,
    #[serde(default)]
    retention_check: Option<String>,
    #[serde(default)]
    jsonl_file: Option<std::path::PathBuf>,
    #[serde(default)]
    jsonl_max_size: Option<String>,
    #[serde(default)]
    jsonl_keep: Option<usize>,
}

/// A validated `audit:` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditConfig {
    /// Remove events older than this; `None` keeps everything.
    pub retention: Option<Duration>,
    /// How often retention runs.
    pub retention_check: Duration,
    /// The JSON-lines sink, when configured.
    pub jsonl: Option<crate::audit::FileSinkConfig>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            retention: None,
            retention_check: Duration::from_secs(3600),
            jsonl: None,
        }
    }
}

impl TryFrom<RawAudit> for AuditConfig {
    type Error = String;

    fn try_from(raw: RawAudit) -> Result<Self, String> {
        let mut c = AuditConfig::default();
        if let Some(r) = raw.retention {
            let d = dt_types::duration::parse_duration(&r)
                .map_err(|e| format!("audit.retention: {e}"))?;
            if d < Duration::from_secs(1) {
                return Err("audit.retention must be at least 1s".into());
            }
            c.retention = Some(d);
        }
        if let Some(r) = raw.retention_check {
            let d = dt_types::duration::parse_duration(&r)
                .map_err(|e| format!("audit.retention_check: {e}"))?;
            if d < Duration::from_millis(100) {
                return Err("audit.retention_check must be at least 100ms".into());
            }
            c.retention_check = d;
        }
        match raw.jsonl_file {
            Some(path) => {
                let max_bytes = match raw.jsonl_max_size {
                    Some(s) => parse_size(&s).map_err(|e| format!("audit.jsonl_max_size: {e}"))?,
                    None => 100 * 1000 * 1000,
                };
                c.jsonl = Some(crate::audit::FileSinkConfig {
                    path,
                    max_bytes,
                    keep: raw.jsonl_keep.unwrap_or(5),
                });
            }
            None if raw.jsonl_max_size.is_some() || raw.jsonl_keep.is_some() => {
                return Err(
                    "audit.jsonl_max_size and audit.jsonl_keep need audit.jsonl_file".into(),
                );
            }
            None => {}
        }
        Ok(c)
    }
}

/// `100MB`, `512KB`, `1GB`, or bytes; at least 1KB.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = t[..digits]
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 100MB"))?;
    let mult = match t[digits..].trim() {
        "" | "B" => 1,
        "KB" => 1000,
        "MB" => 1000 * 1000,
        "GB" => 1000 * 1000 * 1000,
        _ => {
            return Err(format!(
                "{s:?} is not a size like 100MB (units: B, KB, MB, GB)"
            ));
        }
    };
    let v = n
        .checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if v < 1000 {
        return Err(format!("{s:?} is below 1KB"));
    }
    Ok(v)
}

/// Open the JSON-lines sink, when configured.
pub(crate) fn file_sink(c: &AuditConfig) -> std::io::Result<Option<crate::audit::FileSink>> {
    c.jsonl.clone().map(crate::audit::FileSink::new).transpose()
}

/// Apply `audit.retention` now, then every `retention_check`, until the server is dropped.
/// Several auth servers on one database may run it at once: each removal is one
/// transaction that deletes a prefix and moves the anchor, so they only repeat each other.
pub(crate) fn spawn_retention(srv: Weak<AuthServer>) {
    let Some(s) = srv.upgrade() else { return };
    let Some(keep) = s.config.audit.retention else {
        return;
    };
    let every = s.config.audit.retention_check;
    drop(s);
    tokio::spawn(async move {
        loop {
            let Some(s) = srv.upgrade() else { return };
            let before = time::OffsetDateTime::now_utc() - keep;
            match s.audit.remove_before(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "audit retention"),
                Err(e) => {
                    tracing::warn!(error = %e, "audit retention failed; retrying later")
                }
            }
            drop(s);
            tokio::time::sleep(every).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn audit_section_parses_and_refuses_typos() {
        let c = Config::parse("audit: {retention: 365d, retention_check: 10m}").unwrap();
        assert_eq!(c.audit.retention, Some(Duration::from_secs(365 * 86400)));
        assert_eq!(c.audit.retention_check, Duration::from_secs(600));
        assert_eq!(Config::parse("").unwrap().audit, AuditConfig::default());
        let c =
            Config::parse("audit: {jsonl_file: /var/log/e.jsonl, jsonl_max_size: 5MB}").unwrap();
        let j = c.audit.jsonl.unwrap();
        assert_eq!(j.max_bytes, 5_000_000);
        assert_eq!(j.keep, 5);
        for (bad, why) in [
            ("audit: {retention: forever}", "audit.retention"),
            ("audit: {retension: 1d}", "unknown field"),
            ("audit: {retention: 0s}", "at least 1s"),
            ("audit: {jsonl_max_size: 1MB}", "need audit.jsonl_file"),
            (
                "audit: {jsonl_file: /x, jsonl_max_size: lots}",
                "not a size",
            ),
        ] {
            let e = Config::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
