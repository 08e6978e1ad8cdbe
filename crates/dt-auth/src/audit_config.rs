//! The `audit:` section of `devtrust.yaml`, and the retention task it drives.
//!
//! ```yaml
//! audit:
//!   retention: 365d          # remove events older than this (the chain stays verifiable)
//!   retention_check: 1h      # how often to look (default 1h)
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
}

/// A validated `audit:` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditConfig {
    /// Remove events older than this; `None` keeps everything.
    pub retention: Option<Duration>,
    /// How often retention runs.
    pub retention_check: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            retention: None,
            retention_check: Duration::from_secs(3600),
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
        Ok(c)
    }
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
        for (bad, why) in [
            ("audit: {retention: forever}", "audit.retention"),
            ("audit: {retension: 1d}", "unknown field"),
            ("audit: {retention: 0s}", "at least 1s"),
        ] {
            let e = Config::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
