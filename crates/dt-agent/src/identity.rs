//! A joined service's identity in its data directory, all files `0600` in a `0700` directory:
//!
//! ```text
//! DATA_DIR/node.json             kind, name, cluster, auth server, how to trust it, validity
//! DATA_DIR/key.pem               the service key (PKCS#8): SSH host key and TLS client key
//! DATA_DIR/ssh_host_cert.pub     SSH host certificate (host CA; SSH nodes only)
//! DATA_DIR/tls.crt               X.509 client certificate (host CA, role = the kind)
//! DATA_DIR/user-ca.pub           the user CA's SSH key: sshd's TrustedUserCAKeys
//! DATA_DIR/user-ca.pem           the user CA's certificate (TLS client certificates of users)
//! DATA_DIR/host-ca.pem           the host CA certificate
//! DATA_DIR/cluster-view.json     the cached cluster view (OpenSSH mode)
//! DATA_DIR/audit/                the audit spool (events not yet acknowledged)
//! ```
//!
//! The file keeps its historical name `node.json` for every kind, so data dirs of SSH nodes
//! joined by earlier versions load unchanged (their `kind` defaults to `node`).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use dt_ca::ClientKey;
use dt_client::TrustPolicy;
use dt_types::ServiceKind;
use serde::{Deserialize, Serialize};

use crate::error::AgentError;

/// What `node.json` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceMeta {
    /// What joined; `node` for data dirs written before other kinds existed.
    #[serde(default = "node_kind")]
    pub kind: ServiceKind,
    pub name: String,
    pub cluster: String,
    pub auth_server: String,
    /// Pin of the auth server's CA (`sha256:...`); empty with `insecure`.
    pub ca_pin: String,
    #[serde(default)]
    pub insecure: bool,
    pub valid_until_unix: i64,
}

fn node_kind() -> ServiceKind {
    ServiceKind::Node
}

impl ServiceMeta {
    pub fn trust(&self) -> TrustPolicy {
        if self.insecure {
            TrustPolicy::Insecure
        } else {
            TrustPolicy::Pin(self.ca_pin.clone())
        }
    }
}

/// A joined service's identity, loaded.
pub struct ServiceIdentity {
    pub meta: ServiceMeta,
    pub key: ClientKey,
    /// SSH nodes only.
    pub ssh_host_cert: Option<ssh_key::Certificate>,
    pub tls_cert_der: Vec<u8>,
    pub user_ca_ssh: String,
    /// The user CA's X.509 certificate: what access points that take TLS client
    /// certificates from users (databases, Kubernetes, apps) verify them with. `None` for
    /// data dirs of SSH nodes joined before it was kept.
    pub user_ca_der: Option<Vec<u8>>,
    pub host_ca_der: Vec<u8>,
}

impl ServiceIdentity {
    /// The user CA's X.509 certificate, which every access point that takes users' TLS
    /// client certificates needs; a data dir without it says how to get one.
    pub fn user_ca(&self) -> Result<Vec<u8>, AgentError> {
        self.user_ca_der.clone().ok_or_else(|| {
            AgentError::Corrupt(
                "this data dir keeps no user CA certificate (joined by an older version): remove it and join again"
                    .into(),
            )
        })
    }
}

/// The paths of a data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    pub dir: PathBuf,
}

impl DataDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DataDir { dir: dir.into() }
    }
    pub fn meta(&self) -> PathBuf {
        self.dir.join("node.json")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
    pub fn ssh_host_cert(&self) -> PathBuf {
        self.dir.join("ssh_host_cert.pub")
    }
    pub fn tls_cert(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }
    pub fn user_ca(&self) -> PathBuf {
        self.dir.join("user-ca.pub")
    }
    pub fn user_ca_x509(&self) -> PathBuf {
        self.dir.join("user-ca.pem")
    }
    pub fn host_ca(&self) -> PathBuf {
        self.dir.join("host-ca.pem")
    }
    pub fn view_cache(&self) -> PathBuf {
        self.dir.join("cluster-view.json")
    }
    pub fn audit_spool(&self) -> PathBuf {
        self.dir.join("audit")
    }

    pub fn exists(&self) -> bool {
        self.meta().exists()
    }

    /// Create the directory (0700) if needed, and tighten it if it is open to others.
    pub fn ensure(&self) -> Result<(), AgentError> {
        let io = |e| AgentError::io(&self.dir, e);
        if !self.dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .map_err(io)?;
        }
        let mode = std::fs::metadata(&self.dir)
            .map_err(io)?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io)?;
        }
        Ok(())
    }

    pub fn save(&self, id: &ServiceIdentity) -> Result<(), AgentError> {
        self.ensure()?;
        let meta = serde_json::to_vec_pretty(&id.meta)
            .map_err(|e| AgentError::Corrupt(format!("node.json: {e}")))?;
        write_private(&self.key(), id.key.to_pkcs8_pem().as_bytes())?;
        if let Some(cert) = &id.ssh_host_cert {
            let cert = cert
                .to_openssh()
                .map_err(|e| AgentError::Corrupt(format!("host certificate: {e}")))?;
            write_private(&self.ssh_host_cert(), format!("{cert}\n").as_bytes())?;
        }
        write_private(
            &self.tls_cert(),
            dt_ca::pem::to_pem("CERTIFICATE", &id.tls_cert_der).as_bytes(),
        )?;
        write_private(
            &self.user_ca(),
            format!("{}\n", id.user_ca_ssh.trim()).as_bytes(),
        )?;
        write_private(
            &self.host_ca(),
            dt_ca::pem::to_pem("CERTIFICATE", &id.host_ca_der).as_bytes(),
        )?;
        if let Some(der) = &id.user_ca_der {
            write_private(
                &self.user_ca_x509(),
                dt_ca::pem::to_pem("CERTIFICATE", der).as_bytes(),
            )?;
        }
        // Last, so a crash halfway leaves no node.json pointing at missing files.
        write_private(&self.meta(), &meta)
    }

    pub fn load(&self) -> Result<ServiceIdentity, AgentError> {
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| AgentError::io(p, e));
        let corrupt = |p: &Path, e: &dyn std::fmt::Display| {
            AgentError::Corrupt(format!(
                "{}: {e}; remove the data dir and join again",
                p.display()
            ))
        };
        let meta: ServiceMeta =
            serde_json::from_str(&read(&self.meta())?).map_err(|e| corrupt(&self.meta(), &e))?;
        let key =
            ClientKey::from_pkcs8_pem(&read(&self.key())?).map_err(|e| corrupt(&self.key(), &e))?;
        let ssh_host_cert = if meta.kind == ServiceKind::Node {
            Some(
                ssh_key::Certificate::from_openssh(read(&self.ssh_host_cert())?.trim())
                    .map_err(|e| corrupt(&self.ssh_host_cert(), &e))?,
            )
        } else {
            None
        };
        let tls_cert_der = dt_ca::pem::parse_cert_pem(&read(&self.tls_cert())?)
            .map_err(|e| corrupt(&self.tls_cert(), &e))?;
        let user_ca_ssh = read(&self.user_ca())?.trim().to_string();
        let host_ca_der = dt_ca::pem::parse_cert_pem(&read(&self.host_ca())?)
            .map_err(|e| corrupt(&self.host_ca(), &e))?;
        let user_ca_der = match std::fs::read_to_string(self.user_ca_x509()) {
            Ok(pem) => Some(
                dt_ca::pem::parse_cert_pem(&pem).map_err(|e| corrupt(&self.user_ca_x509(), &e))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(AgentError::io(&self.user_ca_x509(), e)),
        };
        Ok(ServiceIdentity {
            meta,
            key,
            ssh_host_cert,
            tls_cert_der,
            user_ca_ssh,
            user_ca_der,
            host_ca_der,
        })
    }
}

/// Write a file readable only by its owner, atomically (temp file, then rename).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AgentError> {
    let io = |e| AgentError::io(path, e);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
