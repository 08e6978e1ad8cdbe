//! The auth service's state, its first start, and the helpers every handler uses to read
//! resources. First start is race-safe: CAs and the cluster name are written with
//! create-if-absent, so two servers starting on one empty database end with one CA.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dt_ca::{CaKind, CertAuthority, ClientKey, StoredCa};
use dt_store::{Backend, StoreError};
use dt_types::audit::{AuditEvent, EventType};
use dt_types::resource::{CAP_NAME, Resource, Spec};
use dt_types::{ClusterAuthPreference, Kind, Lock, Role};
use time::OffsetDateTime;

use crate::audit::AuditSink;
use crate::config::{Config, StorageConfig};
use crate::error::{ApiError, ApiResult};
use crate::keys;
use crate::presets;
use crate::shared_limit::SharedRateLimiter;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The built-in identity of `dtctl --data-dir` on the auth host. Not a stored user; no
/// user can be created with this name.
pub const LOCAL_ADMIN: &str = "local-admin";

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("storage: {0}")]
    Storage(#[from] StoreError),
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate authority: {0}")]
    Ca(#[from] dt_ca::CaError),
    #[error("{0}")]
    Invalid(String),
}

/// The key `/readyz` reads: any read proves storage answers; this one never exists.
pub const READY_PROBE_KEY: &str = "/readyz/probe";

pub struct AuthServer {
    pub backend: Arc<dyn Backend>,
    /// Roles, cluster auth preference and locks, following the change feed.
    pub cache: Arc<crate::cache::ClusterCache>,
    pub cluster_name: String,
    pub user_ca: CertAuthority,
    pub host_ca: CertAuthority,
    /// Trusted by database servers only (`dtctl auth sign --format=db`).
    pub db_ca: CertAuthority,
    /// Signs the JWTs app access points forward (`/.well-known/jwks.json` publishes it).
    pub jwt_ca: CertAuthority,
    pub audit: AuditSink,
    /// Failed node joins and bot logins per address, counted in storage for the cluster.
    pub login_failures: SharedRateLimiter,
    /// Password logins, in storage: shared by the cluster's auth servers.
    pub login_throttle: crate::login_throttle::LoginThrottle,
    /// Device ceremonies per user, counted in storage for the whole cluster.
    pub device_ceremonies: SharedRateLimiter,
    pub config: Config,
    /// Launch codes and app sessions of browsers reaching apps (in memory, like web sessions).
    pub app_sessions: crate::app_sessions::AppSessions,
    /// Counters and histograms for `/metrics`.
    pub metrics: crate::metrics::AuthMetrics,
    /// The clock and randomness the ceremony drivers use.
    pub env: crate::env::ServerEnv,
}

/// Files written to the data dir at start.
pub struct DataDirFiles {
    pub tls_cert_chain_der: Vec<Vec<u8>>,
    pub tls_key_pkcs8_der: Vec<u8>,
}

pub async fn open_backend(config: &Config) -> Result<Arc<dyn Backend>, StartError> {
    let tuning = dt_store::Tuning {
        unwatched_prefixes: keys::UNWATCHED.iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    };
    Ok(match &config.storage {
        StorageConfig::Sqlite { .. } => {
            let path = config
                .sqlite_path()
                .unwrap_or_else(|| config.data_dir.join("devtrust.db"));
            let b: Arc<dyn Backend> = dt_store::sqlite::SqliteBackend::open(&path, tuning).await?;
            b
        }
        StorageConfig::Postgres { conn } => {
            let b: Arc<dyn Backend> = dt_store::postgres::PostgresBackend::connect_with(
                conn,
                tuning,
                config.storage_statement_timeout,
            )
            .await?;
            b
        }
    })
}

fn default_cluster_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| dt_types::resource::validate_name(s).is_ok())
        .unwrap_or_else(|| "devtrust".to_string())
}

/// Create `key` with `value` unless it exists; return what is stored either way.
async fn create_or_get(
    backend: &dyn Backend,
    key: &str,
    value: Vec<u8>,
) -> Result<Vec<u8>, StoreError> {
    match backend.create(key, value.clone(), None).await {
        Ok(_) => Ok(value),
        Err(StoreError::AlreadyExists(_)) => backend
            .get(key)
            .await?
            .map(|i| i.value)
            .ok_or_else(|| StoreError::Invalid(format!("{key} vanished during first start"))),
        Err(e) => Err(e),
    }
}

async fn load_or_create_ca(
    backend: &dyn Backend,
    key: &str,
    cluster: &str,
    kind: CaKind,
) -> Result<CertAuthority, StartError> {
    if let Some(item) = backend.get(key).await? {
        let stored: StoredCa = serde_json::from_slice(&item.value)
            .map_err(|e| StartError::Invalid(format!("stored CA {key} is corrupt: {e}")))?;
        return Ok(CertAuthority::from_stored(&stored)?);
    }
    let fresh = CertAuthority::generate(cluster, kind, OffsetDateTime::now_utc())?;
    let value = serde_json::to_vec(&fresh.to_stored())
        .map_err(|e| StartError::Invalid(format!("serializing CA: {e}")))?;
    let stored_bytes = create_or_get(backend, key, value).await?;
    let stored: StoredCa = serde_json::from_slice(&stored_bytes)
        .map_err(|e| StartError::Invalid(format!("stored CA {key} is corrupt: {e}")))?;
    Ok(CertAuthority::from_stored(&stored)?)
}

impl AuthServer {
    /// Open storage and make sure the cluster exists (name, CAs, presets).
    pub async fn bootstrap(config: Config) -> Result<Arc<AuthServer>, StartError> {
        Self::bootstrap_in(config, crate::env::ServerEnv::system()).await
    }

    /// [`AuthServer::bootstrap`] with the clock and randomness `env` (tests fix the clock
    /// with [`crate::env::ServerEnv::fixed`]).
    pub async fn bootstrap_in(
        config: Config,
        env: crate::env::ServerEnv,
    ) -> Result<Arc<AuthServer>, StartError> {
        create_private_dir(&config.data_dir)?;
        let backend = open_backend(&config).await?;
        Self::bootstrap_with_env(config, backend, env).await
    }

    pub async fn bootstrap_with(
        config: Config,
        backend: Arc<dyn Backend>,
    ) -> Result<Arc<AuthServer>, StartError> {
        Self::bootstrap_with_env(config, backend, crate::env::ServerEnv::system()).await
    }

    /// [`AuthServer::bootstrap_with`] with the clock and randomness `env` (tests fix the
    /// clock with [`crate::env::ServerEnv::fixed`]).
    pub async fn bootstrap_with_env(
        config: Config,
        backend: Arc<dyn Backend>,
        env: crate::env::ServerEnv,
    ) -> Result<Arc<AuthServer>, StartError> {
        let wanted = config
            .cluster_name
            .clone()
            .unwrap_or_else(default_cluster_name);
        let stored = create_or_get(
            backend.as_ref(),
            keys::CLUSTER_NAME,
            wanted.clone().into_bytes(),
        )
        .await?;
        let cluster_name = String::from_utf8(stored)
            .map_err(|_| StartError::Invalid("stored cluster name is not UTF-8".into()))?;
        if let Some(configured) = &config.cluster_name
            && configured != &cluster_name
        {
            return Err(StartError::Invalid(format!(
                "cluster_name {configured:?} in the config differs from this cluster's name {cluster_name:?}; remove cluster_name from the config or use the stored one"
            )));
        }
        let user_ca =
            load_or_create_ca(backend.as_ref(), keys::USER_CA, &cluster_name, CaKind::User).await?;
        let host_ca =
            load_or_create_ca(backend.as_ref(), keys::HOST_CA, &cluster_name, CaKind::Host).await?;
        let db_ca =
            load_or_create_ca(backend.as_ref(), keys::DB_CA, &cluster_name, CaKind::Db).await?;
        let jwt_ca =
            load_or_create_ca(backend.as_ref(), keys::JWT_CA, &cluster_name, CaKind::Jwt).await?;

        let now = env.now();
        for mut role in presets::roles() {
            role.metadata
                .labels
                .insert("devtrust/preset".into(), "true".into());
            let value =
                serde_json::to_vec(&role).map_err(|e| StartError::Invalid(e.to_string()))?;
            match backend
                .create(&keys::resource(Kind::Role, role.name()), value, None)
                .await
            {
                Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let cap = presets::default_cap();
        let value = serde_json::to_vec(&cap).map_err(|e| StartError::Invalid(e.to_string()))?;
        match backend
            .create(
                &keys::resource(Kind::ClusterAuthPreference, CAP_NAME),
                value,
                None,
            )
            .await
        {
            Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
        tracing::debug!(cluster = %cluster_name, at = %now, "cluster ready");

        let file_sink = crate::audit_config::file_sink(&config.audit)
            .map_err(|e| StartError::Invalid(format!("audit.jsonl_file: {e}")))?;
        let cache = Arc::new(crate::cache::ClusterCache::default());
        cache.spawn(backend.clone());
        let srv = Arc::new(AuthServer {
            metrics: crate::metrics::AuthMetrics::new(cache.clone()),
            cache,
            audit: AuditSink::new(backend.clone()),
            backend,
            cluster_name,
            user_ca,
            host_ca,
            db_ca,
            jwt_ca,
            login_failures: SharedRateLimiter::new(
                "/ratelimit/join/",
                config.login_failures_per_5m,
                Duration::from_secs(300),
            ),
            login_throttle: crate::login_throttle::LoginThrottle::new(
                config.login_failures_per_5m,
                config.login_failure_window,
                config.login_throttle_buckets,
            )
            .with_env(env.clone()),
            device_ceremonies: SharedRateLimiter::new(
                "/ratelimit/ceremony/",
                config.device_ceremonies_per_minute,
                Duration::from_secs(60),
            ),
            config,
            app_sessions: Default::default(),
            env,
        });
        if let Some(f) = file_sink {
            srv.audit.set_file_sink(f);
        }
        srv.audit.init_index().await?;
        spawn_throttle_flush(Arc::downgrade(&srv));
        crate::audit_config::spawn_retention(Arc::downgrade(&srv));
        Ok(srv)
    }

    /// Count one failed join or bot login from `key`; a full window only means the next
    /// attempt is refused.
    pub async fn record_failure(&self, key: &str) -> ApiResult<()> {
        let _full = self.login_failures.take(self.backend.as_ref(), key).await?;
        Ok(())
    }

    /// Admit one device ceremony for `who`: `Ok(Err(message))` when the user had too many
    /// in the last minute on any auth server of the cluster.
    pub async fn ceremony_budget(&self, who: &str) -> ApiResult<Result<(), String>> {
        Ok(self
            .device_ceremonies
            .take(self.backend.as_ref(), who)
            .await?
            .map_err(|wait| {
                format!(
                    "too many device ceremonies for {who}; try again in {} s",
                    wait.as_secs().max(1)
                )
            }))
    }

    /// Issue this process's TLS server certificate and (re)write the local admin identity.
    pub fn write_data_dir(&self, extra_sans: &[String]) -> Result<DataDirFiles, StartError> {
        let dir = &self.config.data_dir;
        create_private_dir(dir)?;
        let now = OffsetDateTime::now_utc();

        // TLS server certificate: fresh key each start, signed by the host CA.
        let key = ClientKey::generate()?;
        let mut dns = vec!["localhost".to_string()];
        let mut ips: Vec<IpAddr> =
            vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()];
        let host = default_cluster_name();
        if !dns.contains(&host) {
            dns.push(host);
        }
        let listen_ip = self.config.listen.ip();
        if !listen_ip.is_unspecified() && !ips.contains(&listen_ip) {
            ips.push(listen_ip);
        }
        for san in self.config.public_addrs.iter().chain(extra_sans) {
            let host = san.rsplit_once(':').map(|(h, _)| h).unwrap_or(san);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            match host.parse::<IpAddr>() {
                Ok(ip) if !ips.contains(&ip) => ips.push(ip),
                Ok(_) => {}
                Err(_) if !dns.iter().any(|d| d == host) => dns.push(host.to_string()),
                Err(_) => {}
            }
        }
        let not_after = now + time::Duration::days(365);
        let cert = self
            .host_ca
            .issue_tls_server_cert(&key.spki_der(), &dns, &ips, not_after)?;
        write_private(&dir.join("tls.key"), key.to_pkcs8_pem().as_bytes())?;
        write_public(
            &dir.join("tls.crt"),
            format!(
                "{}{}",
                dt_ca::pem::to_pem("CERTIFICATE", &cert),
                self.host_ca.cert_pem()
            )
            .as_bytes(),
        )?;

        // Local admin identity for `dtctl --data-dir`.
        self.write_local_admin(now)?;

        Ok(DataDirFiles {
            tls_cert_chain_der: vec![cert, self.host_ca.cert_der().to_vec()],
            tls_key_pkcs8_der: key.pkcs8_der().to_vec(),
        })
    }

    fn write_local_admin(&self, now: OffsetDateTime) -> Result<(), StartError> {
        let dir = self.config.data_dir.join("admin");
        create_private_dir(&dir)?;
        let key = ClientKey::generate()?;
        let username = dt_types::UserName::parse(LOCAL_ADMIN)
            .map_err(|e| StartError::Invalid(format!("local admin name: {e}")))?;
        let id = dt_ca::Identity {
            username,
            roles: vec!["editor".into()],
            logins: vec![],
            bot: false,
            trait_logins: vec![],
            device: None,
            not_before: now - time::Duration::minutes(1),
            not_after: now + time::Duration::days(365),
        };
        let cert = self.user_ca.issue_x509_client_cert(&key.spki_der(), &id)?;
        write_private(&dir.join("key.pem"), key.to_pkcs8_pem().as_bytes())?;
        write_public(
            &dir.join("cert.pem"),
            dt_ca::pem::to_pem("CERTIFICATE", &cert).as_bytes(),
        )?;
        write_public(&dir.join("host-ca.pem"), self.host_ca.cert_pem().as_bytes())?;
        Ok(())
    }

    // --- resource helpers -------------------------------------------------------------

    pub async fn get_resource<S: Spec>(&self, name: &str) -> ApiResult<Option<(Resource<S>, i64)>> {
        match self.backend.get(&keys::resource(S::KIND, name)).await? {
            Some(item) => self.parse_resource(item).await.map(Some),
            None => Ok(None),
        }
    }

    /// A user as every API call checks its caller: from the cluster cache while it follows
    /// the change feed (this server's own writes reach it at once), else from storage. A
    /// user the cache does not hold is looked up in storage, which has the last word: one
    /// just created through another auth server may not have reached this cache yet. An
    /// expired user is absent, as storage (which expires items by the system clock) says.
    pub async fn user_of_caller(&self, name: &str) -> ApiResult<Option<dt_types::User>> {
        match self.cache.user(name, OffsetDateTime::now_utc()) {
            Some(Ok(Some(user))) => Ok(Some(user)),
            Some(Err(why)) => Err(self
                .refuse_unusable(Kind::User, name, &format!("unreadable: {why}"))
                .await),
            Some(Ok(None)) | None => Ok(self
                .get_resource::<dt_types::resource::UserSpec>(name)
                .await?
                .map(|(user, _)| user)),
        }
    }

    /// The resource an index entry names (its value is the resource's name), in one read.
    pub async fn get_resource_indexed<S: Spec>(
        &self,
        index_key: &str,
    ) -> ApiResult<Option<(Resource<S>, i64)>> {
        let prefix = keys::resource_prefix(S::KIND);
        match self.backend.get_indexed(index_key, &prefix).await? {
            Some(item) => self.parse_resource(item).await.map(Some),
            None => Ok(None),
        }
    }

    /// A stored resource, or a refusal (audited) when it does not parse.
    async fn parse_resource<S: Spec>(&self, item: dt_store::Item) -> ApiResult<(Resource<S>, i64)> {
        match serde_json::from_slice::<Resource<S>>(&item.value) {
            Ok(r) => Ok((r, item.revision)),
            Err(e) => {
                let prefix = keys::resource_prefix(S::KIND);
                let name = item.key.strip_prefix(&prefix).unwrap_or(&item.key);
                Err(self
                    .refuse_unusable(S::KIND, name, &format!("unreadable: {e}"))
                    .await)
            }
        }
    }

    pub async fn list_resources<S: Spec>(&self) -> ApiResult<Vec<Resource<S>>> {
        let prefix = keys::resource_prefix(S::KIND);
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self.backend.range(&prefix, cursor.as_deref(), 1000).await?;
            for item in page.items {
                match serde_json::from_slice::<Resource<S>>(&item.value) {
                    Ok(r) => out.push(r),
                    Err(e) => {
                        tracing::warn!(key = %item.key, error = %e, "skipping unreadable resource")
                    }
                }
            }
            match page.next {
                Some(n) => cursor = Some(n),
                None => return Ok(out),
            }
        }
    }

    /// The roles with these names that exist. A missing role grants nothing (logged); a
    /// stored role that does not parse refuses the call (fail closed), naming it.
    pub async fn resolve_roles(&self, names: &[String]) -> ApiResult<Vec<Role>> {
        let mut roles = Vec::with_capacity(names.len());
        for name in names {
            let found = match self.cache.role(name) {
                Some(Ok(cached)) => cached,
                Some(Err(why)) => {
                    return Err(self
                        .refuse_unusable(Kind::Role, name, &format!("unreadable: {why}"))
                        .await);
                }
                None => self
                    .get_resource::<dt_types::resource::RoleSpec>(name)
                    .await?
                    .map(|(r, _)| r),
            };
            match found {
                Some(r) => roles.push(r),
                None => {
                    tracing::warn!(role = %name, "identity names a role that does not exist; it grants nothing")
                }
            }
        }
        Ok(roles)
    }

    /// The roles of a certificate's identity. Roles it names that do not exist grant nothing
    /// and are recorded (log and audit). Only the local admin (`dtctl --data-dir`, root on
    /// the auth host) has a built-in fallback: when the stored `editor` is missing or
    /// unreadable it keeps the built-in one, so it can always repair storage.
    pub async fn identity_roles(&self, identity: &dt_ca::Identity) -> ApiResult<Vec<Role>> {
        let resolved = self.resolve_roles(&identity.roles).await;
        if identity.username == LOCAL_ADMIN {
            return Ok(match resolved {
                Ok(roles) if roles.iter().any(|r| r.metadata.name == "editor") => roles,
                Ok(_) => vec![presets::editor_fallback()],
                Err(e) => {
                    tracing::warn!(error = %e, "local admin: using the built-in editor role");
                    vec![presets::editor_fallback()]
                }
            });
        }
        let roles = resolved?;
        let missing = missing_roles(&identity.roles, &roles);
        if !missing.is_empty() {
            let msg = format!(
                "certificate names role(s) {} that do not exist; they grant nothing",
                quote_list(&missing)
            );
            tracing::warn!(user = %identity.username, "{msg}");
            self.audit
                .emit(
                    AuditEvent::new(EventType::AccessDenied, false, self.env.now())
                        .user(identity.username.as_str())
                        .message(msg),
                )
                .await?;
        }
        Ok(roles)
    }

    /// Refuse a call because a stored document a decision needs is unusable (`problem`:
    /// "missing" or "unreadable: why"): logged, audited, and an error for the caller that
    /// names the document and says how to fix it. The parse error stays in the log and the
    /// audit event.
    pub async fn refuse_unusable(&self, kind: Kind, name: &str, problem: &str) -> ApiError {
        tracing::error!(%kind, name, problem, "stored document unusable; refusing the call");
        let event = AuditEvent::new(EventType::AccessDenied, false, self.env.now())
            .resource(kind.as_str(), name)
            .message(format!("refused: {kind}/{name} in storage is {problem}"));
        if let Err(e) = self.audit.emit(event).await {
            tracing::error!(error = %e, "could not record the refusal");
        }
        let what = problem.split(':').next().unwrap_or(problem);
        let fix = match kind {
            // The cluster auth preference can only be replaced, not removed.
            Kind::ClusterAuthPreference => {
                "`dtctl --data-dir DIR create --force -f FILE` with a valid one".to_string()
            }
            _ => format!(
                "`dtctl --data-dir DIR create --force -f FILE`, or `dtctl --data-dir DIR rm {kind}/{name}`"
            ),
        };
        ApiError::FailedPrecondition(format!(
            "the auth service refuses this call: {kind}/{name} in storage is {what}; an admin must fix it on the auth host ({fix})"
        ))
    }

    /// The cluster auth preference. Missing or unreadable: refused, never the defaults.
    pub async fn cap(&self) -> ApiResult<ClusterAuthPreference> {
        let found = match self.cache.cap() {
            Some(Ok(cached)) => cached,
            Some(Err(why)) => {
                return Err(self
                    .refuse_unusable(
                        Kind::ClusterAuthPreference,
                        CAP_NAME,
                        &format!("unreadable: {why}"),
                    )
                    .await);
            }
            None => self
                .get_resource::<dt_types::resource::CapSpec>(CAP_NAME)
                .await?
                .map(|(c, _)| c),
        };
        match found {
            Some(cap) => Ok(cap),
            None => Err(self
                .refuse_unusable(Kind::ClusterAuthPreference, CAP_NAME, "missing")
                .await),
        }
    }

    /// Locks in force now. One unreadable lock refuses the call (it could target anyone).
    pub async fn active_locks(&self) -> ApiResult<Vec<Lock>> {
        let now = self.env.now();
        let all = match self.cache.locks() {
            Some(Ok(cached)) => cached,
            Some(Err((name, why))) => {
                return Err(self
                    .refuse_unusable(Kind::Lock, &name, &format!("unreadable: {why}"))
                    .await);
            }
            None => self.all_locks().await?,
        };
        Ok(all
            .into_iter()
            .filter(|l| l.metadata.expires.is_none_or(|e| e > now))
            .collect())
    }

    /// Every stored lock, read from storage; an unreadable one refuses the call.
    async fn all_locks(&self) -> ApiResult<Vec<Lock>> {
        let prefix = keys::resource_prefix(Kind::Lock);
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self.backend.range(&prefix, cursor.as_deref(), 1000).await?;
            for item in page.items {
                match serde_json::from_slice::<Lock>(&item.value) {
                    Ok(l) => out.push(l),
                    Err(e) => {
                        let name = item.key.strip_prefix(&prefix).unwrap_or(&item.key);
                        return Err(self
                            .refuse_unusable(Kind::Lock, name, &format!("unreadable: {e}"))
                            .await);
                    }
                }
            }
            match page.next {
                Some(n) => cursor = Some(n),
                None => return Ok(out),
            }
        }
    }
}

/// The role names in `named` that are not among `found`.
pub fn missing_roles<'a>(named: &'a [String], found: &[Role]) -> Vec<&'a str> {
    named
        .iter()
        .filter(|n| !found.iter().any(|r| &r.metadata.name == *n))
        .map(String::as_str)
        .collect()
}

fn quote_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Summarize closed login-throttle windows until the server is dropped.
fn spawn_throttle_flush(srv: std::sync::Weak<AuthServer>) {
    tokio::spawn(async move {
        loop {
            let Some(every) = srv.upgrade().map(|s| s.login_throttle.flush_every()) else {
                return;
            };
            tokio::time::sleep(every).await;
            let Some(s) = srv.upgrade() else { return };
            if let Err(e) = s.login_throttle.flush(s.backend.as_ref(), &s.audit).await {
                tracing::warn!(error = %e, "login throttle: summarizing closed windows failed; retrying");
            }
        }
    });
}

pub fn create_private_dir(path: &Path) -> Result<(), StartError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |source| StartError::DataDir {
        path: path.to_path_buf(),
        source,
    };
    if !path.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(err)?;
    }
    let meta = std::fs::metadata(path).map_err(err)?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StartError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| StartError::DataDir {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Write a file readable only by its owner (keys, certificates of identities).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StartError> {
    write_with_mode(path, bytes, 0o600)
}

/// Files in the data dir are all 0600: the directory is private anyway, and a uniform rule
/// is easier to audit.
pub fn write_public(path: &Path, bytes: &[u8]) -> Result<(), StartError> {
    write_with_mode(path, bytes, 0o600)
}
