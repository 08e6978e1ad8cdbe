//! The `devtrust mdm start --config FILE` file: a `jamf_service` and/or an `intune_service`
//! section (the shapes of the seeds' product), parsed strictly (`deny_unknown_fields`: a
//! typo is an error) into raw types, then validated into [`MdmConfig`].
//!
//! Secrets are named by file (`client_secret_file`, `password_file`) and read at load time;
//! an unreadable or empty file is an error that names the file. The secret values live in
//! [`Secret`] (whose `Debug` prints `<secret>`) and never reach a log or an error message.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dt_types::Secret;
use dt_types::device::SourceOrigin;
use dt_types::duration::DurationStr;
use serde::Deserialize;

/// The default Jamf filter: only computers Jamf manages.
pub const DEFAULT_JAMF_FILTER: &str = "general.remoteManagement.managed==true";
pub const DEFAULT_PARTIAL_PERIOD: Duration = Duration::from_secs(6 * 3600);
pub const DEFAULT_FULL_PERIOD: Duration = Duration::from_secs(24 * 3600);
/// Jamf Pro answers at most 2000 computers per page.
pub const MAX_JAMF_PAGE_SIZE: u32 = 2000;
pub const DEFAULT_PAGE_SIZE: u32 = 1000;
/// Pages one sync may read before it gives up (a page that never ends).
pub const DEFAULT_MAX_PAGES: u32 = 10_000;
pub const DEFAULT_GRAPH_ENDPOINT: &str = "https://graph.microsoft.com";
pub const DEFAULT_LOGIN_ENDPOINT: &str = "https://login.microsoftonline.com";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{section}.{field}: {message}")]
    Invalid {
        section: &'static str,
        field: &'static str,
        message: String,
    },
    #[error("{section}.{field}: the secret file {path} is empty; write the secret into it")]
    EmptySecret {
        section: &'static str,
        field: &'static str,
        path: PathBuf,
    },
    #[error("{section}.{field}: cannot read the secret file {path}: {source}")]
    SecretFile {
        section: &'static str,
        field: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the config has neither a jamf_service nor an intune_service section; add one")]
    Empty,
}

// ---- raw file shapes ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    jamf_service: Option<RawJamf>,
    #[serde(default)]
    intune_service: Option<RawIntune>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJamf {
    name: String,
    api_endpoint: String,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_secret_file: Option<PathBuf>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password_file: Option<PathBuf>,
    #[serde(default)]
    page_size: Option<u32>,
    #[serde(default)]
    max_pages: Option<u32>,
    #[serde(default)]
    inventory: Vec<RawInventory>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInventory {
    #[serde(default)]
    filter_rsql: Option<String>,
    #[serde(default)]
    sync_period_partial: Option<DurationStr>,
    #[serde(default)]
    sync_period_full: Option<DurationStr>,
    #[serde(default)]
    on_missing: Option<OnMissing>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntune {
    name: String,
    tenant: String,
    client_id: String,
    client_secret_file: PathBuf,
    #[serde(default)]
    graph_endpoint: Option<String>,
    #[serde(default)]
    login_endpoint: Option<String>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    page_size: Option<u32>,
    #[serde(default)]
    max_pages: Option<u32>,
    #[serde(default)]
    sync_period_partial: Option<DurationStr>,
    #[serde(default)]
    sync_period_full: Option<DurationStr>,
    #[serde(default)]
    on_missing: Option<OnMissing>,
}

// ---- validated ----

/// What a full sync that completed does with this source's devices the MDM no longer lists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum OnMissing {
    /// Keep them (the default).
    #[default]
    #[serde(rename = "NOOP", alias = "noop")]
    Noop,
    /// Remove them from the inventory (revoking what was augmented with them).
    #[serde(rename = "DELETE", alias = "delete")]
    Delete,
}

/// How often each kind of sync runs; zero turns it off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub partial: Duration,
    pub full: Duration,
    pub on_missing: OnMissing,
}

#[derive(Clone, Debug)]
pub enum JamfCredentials {
    /// OAuth client credentials (an API client): `/api/oauth/token`.
    Client {
        client_id: String,
        secret: Secret<String>,
        secret_file: PathBuf,
    },
    /// A Jamf account: `/api/v1/auth/token` with basic authentication.
    Account {
        username: String,
        password: Secret<String>,
        password_file: PathBuf,
    },
}

impl JamfCredentials {
    /// What an operator should check when the MDM refuses the credentials.
    pub fn describe(&self) -> String {
        match self {
            JamfCredentials::Client {
                client_id,
                secret_file,
                ..
            } => format!(
                "jamf_service.client_id ({client_id:?}) and jamf_service.client_secret_file ({})",
                secret_file.display()
            ),
            JamfCredentials::Account {
                username,
                password_file,
                ..
            } => format!(
                "jamf_service.username ({username:?}) and jamf_service.password_file ({})",
                password_file.display()
            ),
        }
    }
}

#[derive(Clone, Debug)]
pub struct JamfConfig {
    pub name: String,
    pub api_endpoint: String,
    pub ca_file: Option<PathBuf>,
    pub credentials: JamfCredentials,
    pub filter_rsql: String,
    pub page_size: u32,
    pub max_pages: u32,
    pub schedule: Schedule,
}

#[derive(Clone, Debug)]
pub struct IntuneConfig {
    pub name: String,
    pub tenant: String,
    pub client_id: String,
    pub client_secret: Secret<String>,
    pub client_secret_file: PathBuf,
    pub graph_endpoint: String,
    pub login_endpoint: String,
    pub ca_file: Option<PathBuf>,
    pub page_size: u32,
    pub max_pages: u32,
    pub schedule: Schedule,
}

impl IntuneConfig {
    pub fn describe_credentials(&self) -> String {
        format!(
            "intune_service.tenant ({:?}), intune_service.client_id ({:?}) and intune_service.client_secret_file ({})",
            self.tenant,
            self.client_id,
            self.client_secret_file.display()
        )
    }
}

/// One configured source, whichever MDM it is.
#[derive(Clone, Debug)]
pub enum SourceConfig {
    Jamf(JamfConfig),
    Intune(IntuneConfig),
}

impl SourceConfig {
    pub fn name(&self) -> &str {
        match self {
            SourceConfig::Jamf(j) => &j.name,
            SourceConfig::Intune(i) => &i.name,
        }
    }
    pub fn origin(&self) -> SourceOrigin {
        match self {
            SourceConfig::Jamf(_) => SourceOrigin::Jamf,
            SourceConfig::Intune(_) => SourceOrigin::Intune,
        }
    }
    pub fn schedule(&self) -> Schedule {
        match self {
            SourceConfig::Jamf(j) => j.schedule,
            SourceConfig::Intune(i) => i.schedule,
        }
    }
}

#[derive(Clone, Debug)]
pub struct MdmConfig {
    pub sources: Vec<SourceConfig>,
    /// Insecure settings noticed at load (a secret file others may read...), to print loudly.
    pub warnings: Vec<String>,
}

impl MdmConfig {
    /// Read and validate `path`; relative file names inside resolve against its directory.
    pub fn load(path: &Path) -> Result<MdmConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        MdmConfig::parse(&text, base).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parse `text`, reading secret files relative to `base`.
    pub fn parse(text: &str, base: &Path) -> Result<MdmConfig, ConfigError> {
        let raw: RawFile = serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("config"),
            message: e.to_string(),
        })?;
        let mut warnings = Vec::new();
        let mut sources = Vec::new();
        if let Some(j) = raw.jamf_service {
            sources.push(SourceConfig::Jamf(jamf(j, base, &mut warnings)?));
        }
        if let Some(i) = raw.intune_service {
            sources.push(SourceConfig::Intune(intune(i, base, &mut warnings)?));
        }
        if sources.is_empty() {
            return Err(ConfigError::Empty);
        }
        if let [a, b] = sources.as_slice()
            && a.name() == b.name()
        {
            return Err(ConfigError::Invalid {
                section: "intune_service",
                field: "name",
                message: format!(
                    "{:?} is already jamf_service's name; each source needs its own",
                    b.name()
                ),
            });
        }
        Ok(MdmConfig { sources, warnings })
    }
}

fn invalid(section: &'static str, field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        section,
        field,
        message: message.into(),
    }
}

/// Source names: what `dtctl devices ls` shows and `dtctl mdm sync NAME` takes.
pub fn validate_source_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "{name:?} may hold only letters, digits, '-', '_' and '.'"
        ));
    }
    if matches!(name, "api" | "csv") {
        return Err(format!(
            "{name:?} is the name of manual and imported devices; choose another"
        ));
    }
    Ok(())
}

/// `https://host[:port][/path]` without a trailing slash. Plain HTTP is refused: the MDM's
/// credentials and the inventory would cross the network in clear.
fn endpoint(section: &'static str, field: &'static str, url: &str) -> Result<String, ConfigError> {
    let u = url.trim().trim_end_matches('/');
    let Some(rest) = u.strip_prefix("https://") else {
        return Err(invalid(
            section,
            field,
            format!("{url:?} must start with https:// (credentials never travel in clear)"),
        ));
    };
    if rest.is_empty() || rest.contains(['?', '#', ' ']) {
        return Err(invalid(
            section,
            field,
            format!("{url:?} is not a base URL like https://example.jamfcloud.com"),
        ));
    }
    Ok(u.to_string())
}

fn read_secret(
    section: &'static str,
    field: &'static str,
    file: &Path,
    base: &Path,
    warnings: &mut Vec<String>,
) -> Result<(Secret<String>, PathBuf), ConfigError> {
    let path = base.join(file);
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::SecretFile {
        section,
        field,
        path: path.clone(),
        source,
    })?;
    let value = text.trim_end_matches(['\r', '\n']).to_string();
    if value.trim().is_empty() {
        return Err(ConfigError::EmptySecret {
            section,
            field,
            path,
        });
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(&path)
            && meta.permissions().mode() & 0o077 != 0
        {
            warnings.push(format!(
                "{section}.{field}: {} may be read by other users; chmod 600 it",
                path.display()
            ));
        }
    }
    Ok((Secret::new(value), path))
}

fn schedule(
    section: &'static str,
    partial: Option<DurationStr>,
    full: Option<DurationStr>,
    on_missing: Option<OnMissing>,
) -> Result<Schedule, ConfigError> {
    let s = Schedule {
        partial: partial.map_or(DEFAULT_PARTIAL_PERIOD, |d| d.0),
        full: full.map_or(DEFAULT_FULL_PERIOD, |d| d.0),
        on_missing: on_missing.unwrap_or_default(),
    };
    for (field, d) in [
        ("sync_period_partial", s.partial),
        ("sync_period_full", s.full),
    ] {
        if !d.is_zero() && d < Duration::from_secs(1) {
            return Err(invalid(section, field, "must be 0s (off) or at least 1s"));
        }
    }
    Ok(s)
}

fn page_size(section: &'static str, v: Option<u32>, max: u32) -> Result<u32, ConfigError> {
    match v {
        None => Ok(DEFAULT_PAGE_SIZE.min(max)),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(invalid(
            section,
            "page_size",
            format!("{n} is out of range 1..={max}"),
        )),
    }
}

fn max_pages(section: &'static str, v: Option<u32>) -> Result<u32, ConfigError> {
    match v {
        None => Ok(DEFAULT_MAX_PAGES),
        Some(0) => Err(invalid(section, "max_pages", "must be at least 1")),
        Some(n) => Ok(n),
    }
}

fn jamf(j: RawJamf, base: &Path, warnings: &mut Vec<String>) -> Result<JamfConfig, ConfigError> {
    const S: &str = "jamf_service";
    validate_source_name(&j.name).map_err(|m| invalid(S, "name", m))?;
    let api_endpoint = endpoint(S, "api_endpoint", &j.api_endpoint)?;
    let credentials = match (
        j.client_id,
        j.client_secret_file,
        j.username,
        j.password_file,
    ) {
        (Some(client_id), Some(file), None, None) => {
            if client_id.trim().is_empty() {
                return Err(invalid(S, "client_id", "is empty"));
            }
            let (secret, secret_file) =
                read_secret(S, "client_secret_file", &file, base, warnings)?;
            JamfCredentials::Client {
                client_id,
                secret,
                secret_file,
            }
        }
        (None, None, Some(username), Some(file)) => {
            if username.trim().is_empty() {
                return Err(invalid(S, "username", "is empty"));
            }
            let (password, password_file) = read_secret(S, "password_file", &file, base, warnings)?;
            JamfCredentials::Account {
                username,
                password,
                password_file,
            }
        }
        _ => {
            return Err(invalid(
                S,
                "client_id",
                "give either client_id + client_secret_file (an API client) or username + password_file, not both",
            ));
        }
    };
    let inv = match j.inventory.len() {
        0 => RawInventory {
            filter_rsql: None,
            sync_period_partial: None,
            sync_period_full: None,
            on_missing: None,
        },
        1 => j.inventory.into_iter().next().ok_or(ConfigError::Empty)?,
        _ => {
            return Err(invalid(
                S,
                "inventory",
                "only one inventory entry is supported; combine the filters with ';' (RSQL and)",
            ));
        }
    };
    let filter_rsql = inv
        .filter_rsql
        .map(|f| f.trim().to_string())
        .unwrap_or_else(|| DEFAULT_JAMF_FILTER.into());
    if filter_rsql.len() > 4096 || filter_rsql.chars().any(char::is_control) {
        return Err(invalid(
            S,
            "inventory.filter_rsql",
            "must be one line of at most 4096 bytes",
        ));
    }
    Ok(JamfConfig {
        name: j.name,
        api_endpoint,
        ca_file: j.ca_file.map(|f| base.join(f)),
        credentials,
        filter_rsql,
        page_size: page_size(S, j.page_size, MAX_JAMF_PAGE_SIZE)?,
        max_pages: max_pages(S, j.max_pages)?,
        schedule: schedule(
            S,
            inv.sync_period_partial,
            inv.sync_period_full,
            inv.on_missing,
        )?,
    })
}

fn intune(
    i: RawIntune,
    base: &Path,
    warnings: &mut Vec<String>,
) -> Result<IntuneConfig, ConfigError> {
    const S: &str = "intune_service";
    validate_source_name(&i.name).map_err(|m| invalid(S, "name", m))?;
    let tenant_ok = !i.tenant.is_empty()
        && i.tenant.len() <= 128
        && i.tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'));
    if !tenant_ok {
        return Err(invalid(
            S,
            "tenant",
            "must be the tenant id (a GUID) or its domain (contoso.onmicrosoft.com)",
        ));
    }
    if i.client_id.trim().is_empty() {
        return Err(invalid(S, "client_id", "is empty"));
    }
    let (client_secret, client_secret_file) = read_secret(
        S,
        "client_secret_file",
        &i.client_secret_file,
        base,
        warnings,
    )?;
    Ok(IntuneConfig {
        name: i.name,
        tenant: i.tenant,
        client_id: i.client_id,
        client_secret,
        client_secret_file,
        graph_endpoint: endpoint(
            S,
            "graph_endpoint",
            i.graph_endpoint
                .as_deref()
                .unwrap_or(DEFAULT_GRAPH_ENDPOINT),
        )?,
        login_endpoint: endpoint(
            S,
            "login_endpoint",
            i.login_endpoint
                .as_deref()
                .unwrap_or(DEFAULT_LOGIN_ENDPOINT),
        )?,
        ca_file: i.ca_file.map(|f| base.join(f)),
        page_size: page_size(S, i.page_size, 1000)?,
        max_pages: max_pages(S, i.max_pages)?,
        schedule: schedule(S, i.sync_period_partial, i.sync_period_full, i.on_missing)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with_secret() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("secret"), "s3cr3t-value\n").unwrap();
        d
    }

    #[test]
    fn the_issue_example_parses() {
        let d = dir_with_secret();
        let cfg = MdmConfig::parse(
            r#"
jamf_service:
  name: jamf-main
  api_endpoint: https://example.jamfcloud.com/
  client_id: abc
  client_secret_file: secret
  inventory:
    - filter_rsql: general.remoteManagement.managed==true
      sync_period_partial: 6h
      sync_period_full: 24h
      on_missing: DELETE
intune_service:
  name: intune-main
  tenant: contoso.onmicrosoft.com
  client_id: def
  client_secret_file: secret
"#,
            d.path(),
        )
        .unwrap();
        assert_eq!(cfg.sources.len(), 2);
        let SourceConfig::Jamf(j) = &cfg.sources[0] else {
            panic!("jamf first")
        };
        assert_eq!(j.api_endpoint, "https://example.jamfcloud.com");
        assert_eq!(j.schedule.on_missing, OnMissing::Delete);
        assert_eq!(j.schedule.partial, Duration::from_secs(6 * 3600));
        let JamfCredentials::Client { secret, .. } = &j.credentials else {
            panic!("client credentials")
        };
        assert_eq!(secret.expose(), "s3cr3t-value");
        // The secret never prints.
        assert!(!format!("{cfg:?}").contains("s3cr3t"));
        let SourceConfig::Intune(i) = &cfg.sources[1] else {
            panic!("intune second")
        };
        assert_eq!(i.graph_endpoint, DEFAULT_GRAPH_ENDPOINT);
        assert_eq!(i.schedule.on_missing, OnMissing::Noop);
    }

    #[test]
    fn bad_configs_are_refused_with_what_to_fix() {
        let d = dir_with_secret();
        let cases = [
            (
                "jamf_service: {name: j, api_endpoint: https://x, client_id: a, client_secret_file: secret, typo: 1}",
                "typo",
            ),
            (
                "jamf_service: {name: j, api_endpoint: http://x, client_id: a, client_secret_file: secret}",
                "https://",
            ),
            (
                "jamf_service: {name: j, api_endpoint: https://x, client_id: a, client_secret_file: missing}",
                "missing",
            ),
            (
                "jamf_service: {name: j, api_endpoint: https://x, client_id: a, client_secret_file: secret, username: u, password_file: secret}",
                "not both",
            ),
            (
                "jamf_service: {name: api, api_endpoint: https://x, client_id: a, client_secret_file: secret}",
                "manual",
            ),
            (
                "jamf_service: {name: j, api_endpoint: https://x, client_id: a, client_secret_file: secret, inventory: [{on_missing: SOMETIMES}]}",
                "SOMETIMES",
            ),
            (
                "jamf_service: {name: j, api_endpoint: https://x, client_id: a, client_secret_file: secret, inventory: [{sync_period_full: 6 hours}]}",
                "duration",
            ),
            (
                "intune_service: {name: i, tenant: 'a/b', client_id: a, client_secret_file: secret}",
                "tenant",
            ),
            ("{}", "neither"),
        ];
        for (text, want) in cases {
            let err = MdmConfig::parse(text, d.path()).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err} lacks {want:?}");
        }
    }

    #[test]
    fn an_empty_secret_file_is_named() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("empty"), "\n").unwrap();
        let err = MdmConfig::parse(
            "jamf_service: {name: j, api_endpoint: https://x, username: u, password_file: empty}",
            d.path(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("empty") && err.contains("password_file"),
            "{err}"
        );
    }
}
