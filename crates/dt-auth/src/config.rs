//! The daemon's static configuration (`devtrust.yaml`). Unknown keys are errors; values are
//! validated into [`Config`] before anything starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:3080";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/devtrust";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    cluster_name: Option<String>,
    #[serde(default)]
    data_dir: Option<PathBuf>,
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    public_addrs: Vec<String>,
    #[serde(default)]
    storage: Option<RawStorage>,
    #[serde(default)]
    log: Option<RawLog>,
    #[serde(default)]
    limits: Option<RawLimits>,
    #[serde(default)]
    audit: Option<crate::audit_config::RawAudit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default)]
    device_ceremonies_per_minute: Option<usize>,
    #[serde(default)]
    login_failures_per_5m: Option<usize>,
    #[serde(default)]
    login_failure_window: Option<String>,
    #[serde(default)]
    login_throttle_buckets: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    conn: Option<String>,
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default)]
    statement_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    level: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageConfig {
    /// Embedded SQLite; `None` = `<data_dir>/devtrust.db`.
    Sqlite { path: Option<PathBuf> },
    /// libpq-style connection string.
    Postgres { conn: String },
}

impl StorageConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            StorageConfig::Sqlite { .. } => "sqlite",
            StorageConfig::Postgres { .. } => "postgres",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub cluster_name: Option<String>,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Extra DNS names / IPs for the TLS server certificate.
    pub public_addrs: Vec<String>,
    pub storage: StorageConfig,
    /// PostgreSQL: `statement_timeout` of every connection.
    pub storage_statement_timeout: std::time::Duration,
    pub log_format: LogFormat,
    pub log_level: String,
    /// Device enrollments + authentications per user per minute.
    pub device_ceremonies_per_minute: usize,
    /// Failed logins per user and address within 5 minutes before refusing.
    pub login_failures_per_5m: usize,
    /// The window `login_failures_per_5m` counts in (5 minutes unless shortened in tests).
    pub login_failure_window: std::time::Duration,
    /// (user, address) pairs tracked per window, cluster-wide; beyond, pairs share one bucket.
    pub login_throttle_buckets: usize,
    /// `audit:`: retention and the JSON-lines sink (docs/audit.md).
    pub audit: crate::audit_config::AuditConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cluster_name: None,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            // INVARIANT: DEFAULT_LISTEN is a literal socket address.
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 3080))),
            public_addrs: Vec::new(),
            storage: StorageConfig::Sqlite { path: None },
            storage_statement_timeout: dt_store::postgres::DEFAULT_STATEMENT_TIMEOUT,
            log_format: LogFormat::Text,
            log_level: "info".into(),
            device_ceremonies_per_minute: 30,
            login_failures_per_5m: 5,
            login_failure_window: std::time::Duration::from_secs(300),
            login_throttle_buckets: 10_000,
            audit: Default::default(),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Invalid(message) => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            // Without the source snippet: `devtrust check` reports one line (the line and
            // column are in the message).
            serde_saphyr::from_str(text)
                .map_err(|e| ConfigError::Invalid(e.without_snippet().to_string()))?
        };
        Config::try_from(raw)
    }

    pub fn sqlite_path(&self) -> Option<PathBuf> {
        match &self.storage {
            StorageConfig::Sqlite { path } => Some(
                path.clone()
                    .unwrap_or_else(|| self.data_dir.join("devtrust.db")),
            ),
            StorageConfig::Postgres { .. } => None,
        }
    }
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, Self::Error> {
        let mut c = Config::default();
        if let Some(v) = raw.version
            && v != "v1"
        {
            return Err(ConfigError::Invalid(format!(
                "unsupported version {v:?} (use v1)"
            )));
        }
        if let Some(name) = raw.cluster_name {
            dt_types::resource::validate_name(&name)
                .map_err(|e| ConfigError::Invalid(format!("cluster_name: {e}")))?;
            c.cluster_name = Some(name);
        }
        if let Some(d) = raw.data_dir {
            c.data_dir = d;
        }
        if let Some(l) = raw.listen {
            c.listen = l.parse().map_err(|_| {
                ConfigError::Invalid(format!(
                    "listen: {l:?} is not an address like 127.0.0.1:3080"
                ))
            })?;
        }
        c.public_addrs = raw.public_addrs;
        if let Some(s) = raw.storage {
            c.storage = match s.kind.as_str() {
                "sqlite" => {
                    if s.conn.is_some() || s.statement_timeout.is_some() {
                        return Err(ConfigError::Invalid(
                            "storage.conn and storage.statement_timeout are for postgres; sqlite takes an optional storage.path"
                                .into(),
                        ));
                    }
                    StorageConfig::Sqlite { path: s.path }
                }
                "postgres" | "postgresql" => {
                    let conn = s.conn.filter(|c| !c.trim().is_empty()).ok_or_else(|| {
                        ConfigError::Invalid(
                            "storage.conn is required for postgres, e.g. \"host=127.0.0.1 user=postgres dbname=devtrust\"".into(),
                        )
                    })?;
                    if s.path.is_some() {
                        return Err(ConfigError::Invalid("storage.path is for sqlite".into()));
                    }
                    if let Some(t) = &s.statement_timeout {
                        let t = dt_types::duration::parse_duration(t).map_err(|e| {
                            ConfigError::Invalid(format!("storage.statement_timeout: {e}"))
                        })?;
                        if t < std::time::Duration::from_millis(100) {
                            return Err(ConfigError::Invalid(
                                "storage.statement_timeout must be at least 100ms".into(),
                            ));
                        }
                        c.storage_statement_timeout = t;
                    }
                    StorageConfig::Postgres { conn }
                }
                other => {
                    return Err(ConfigError::Invalid(format!(
                        "storage.type {other:?} is not supported (use sqlite or postgres)"
                    )));
                }
            };
        }
        if let Some(log) = raw.log {
            if let Some(f) = log.format {
                c.log_format = match f.as_str() {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    other => {
                        return Err(ConfigError::Invalid(format!(
                            "log.format {other:?} (use text or json)"
                        )));
                    }
                };
            }
            if let Some(l) = log.level {
                if !["error", "warn", "info", "debug", "trace"].contains(&l.as_str()) {
                    return Err(ConfigError::Invalid(format!(
                        "log.level {l:?} (use error, warn, info, debug or trace)"
                    )));
                }
                c.log_level = l;
            }
        }
        if let Some(a) = raw.audit {
            c.audit =
                crate::audit_config::AuditConfig::try_from(a).map_err(ConfigError::Invalid)?;
        }
        if let Some(l) = raw.limits {
            if let Some(n) = l.device_ceremonies_per_minute {
                if n == 0 {
                    return Err(ConfigError::Invalid(
                        "limits.device_ceremonies_per_minute must be at least 1".into(),
                    ));
                }
                c.device_ceremonies_per_minute = n;
            }
            if let Some(n) = l.login_failures_per_5m {
                if n == 0 {
                    return Err(ConfigError::Invalid(
                        "limits.login_failures_per_5m must be at least 1".into(),
                    ));
                }
                c.login_failures_per_5m = n;
            }
            if let Some(w) = l.login_failure_window {
                let w = dt_types::duration::parse_duration(&w).map_err(|e| {
                    ConfigError::Invalid(format!("limits.login_failure_window: {e}"))
                })?;
                if w < std::time::Duration::from_secs(1) {
                    return Err(ConfigError::Invalid(
                        "limits.login_failure_window must be at least 1s".into(),
                    ));
                }
                c.login_failure_window = w;
            }
            if let Some(n) = l.login_throttle_buckets {
                if n == 0 {
                    return Err(ConfigError::Invalid(
                        "limits.login_throttle_buckets must be at least 1".into(),
                    ));
                }
                c.login_throttle_buckets = n;
            }
        }
        Ok(c)
    }
}

/// The annotated sample printed by `devtrust configure`.
pub const SAMPLE: &str = r#"# devtrust.yaml — static configuration of the devtrust auth service.
# Validate with: devtrust check --config devtrust.yaml
# Unknown keys are errors, so a typo never silently does nothing.
version: v1

# Name of the cluster, shown by `dtsh status` and embedded in certificates.
# Default: this machine's hostname. Fixed at first start.
# cluster_name: example

# Where CA keys, the TLS certificate, the local admin identity and (by default) the
# SQLite database live. Files holding keys are created with mode 0600.
data_dir: /var/lib/devtrust

# One TLS listener serves gRPC (dtsh, dtctl, nodes) and the HTTPS JSON API.
listen: 127.0.0.1:3080

# Extra DNS names or IPs clients use to reach this server (added to the TLS certificate).
public_addrs: []

# Storage: embedded SQLite (default, nothing to install) ...
storage:
  type: sqlite
  # path: /var/lib/devtrust/devtrust.db
# ... or PostgreSQL, for several auth servers sharing one cluster state:
# storage:
#   type: postgres
#   conn: "host=127.0.0.1 port=5432 user=postgres dbname=devtrust sslmode=verify-full sslrootcert=/etc/devtrust/pg-ca.pem"
#   statement_timeout: 30s   # per connection; a stuck query fails instead of hanging

log:
  format: text   # text | json
  level: info    # error | warn | info | debug | trace

# Rate limits, counted in storage and shared by all auth servers of the cluster.
limits:
  device_ceremonies_per_minute: 30   # device enrollments + authentications
  login_failures_per_5m: 5           # failed logins per user and address (and failed
                                     # node joins and bot logins per address)
  # login_failure_window: 5m         # the window of login_failures_per_5m
  # login_throttle_buckets: 10000    # user/address pairs tracked per window; beyond,
  #                                  # new pairs share one bucket (and its lockout)
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_is_valid() {
        let c = Config::parse(SAMPLE).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:3080");
        assert_eq!(c.storage.kind(), "sqlite");
    }

    #[test]
    fn postgres_storage() {
        let c = Config::parse("storage: {type: postgres, conn: 'host=127.0.0.1 user=postgres'}")
            .unwrap();
        assert_eq!(
            c.storage,
            StorageConfig::Postgres {
                conn: "host=127.0.0.1 user=postgres".into()
            }
        );
    }

    #[test]
    fn throttle_and_statement_timeout_settings() {
        let c = Config::parse(
            "storage: {type: postgres, conn: 'host=h', statement_timeout: 2s}\nlimits: {login_failure_window: 1m, login_throttle_buckets: 7}",
        )
        .unwrap();
        assert_eq!(
            c.storage_statement_timeout,
            std::time::Duration::from_secs(2)
        );
        assert_eq!(c.login_failure_window, std::time::Duration::from_secs(60));
        assert_eq!(c.login_throttle_buckets, 7);
        let d = Config::parse("").unwrap();
        assert_eq!(
            d.storage_statement_timeout,
            std::time::Duration::from_secs(30)
        );
        assert_eq!(d.login_failure_window, std::time::Duration::from_secs(300));
    }

    #[test]
    fn refuses_bad_input_with_the_reason() {
        for (text, want) in [
            ("listne: 1.2.3.4:5", "listne"),
            ("listen: nowhere", "not an address"),
            ("storage: {type: mysql}", "not supported"),
            ("storage: {type: postgres}", "storage.conn is required"),
            ("storage: {type: sqlite, cnn: x}", "cnn"),
            ("log: {format: xml}", "log.format"),
            ("version: v9", "unsupported version"),
            (
                "storage: {type: sqlite, statement_timeout: 5s}",
                "statement_timeout are for postgres",
            ),
            (
                "storage: {type: postgres, conn: x, statement_timeout: 10ms}",
                "at least 100ms",
            ),
            (
                "limits: {login_failure_window: soon}",
                "login_failure_window",
            ),
            ("limits: {login_throttle_buckets: 0}", "at least 1"),
        ] {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
            assert_eq!(err.lines().count(), 1, "{text}: one line, got {err}");
        }
    }
}
