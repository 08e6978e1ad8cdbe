//! The user's profile on disk (`$DTSH_HOME`, default `~/.dtsh`): which server, who, and the
//! key and certificates, laid out so plain OpenSSH can use them:
//!
//! ```text
//! ~/.dtsh/current-profile            the proxy address of the active profile
//! ~/.dtsh/keys/<proxy>/profile.json  server, user, cluster, CA pin
//! ~/.dtsh/keys/<proxy>/key           OpenSSH private key (0600)
//! ~/.dtsh/keys/<proxy>/key-cert.pub  SSH user certificate (ssh picks it up next to `key`)
//! ~/.dtsh/keys/<proxy>/key.pem       the same key as PKCS#8 for TLS (0600)
//! ~/.dtsh/keys/<proxy>/tls.crt       X.509 client certificate
//! ~/.dtsh/keys/<proxy>/host-ca.pem   the server's CA (its pin is in profile.json)
//! ~/.dtsh/keys/<proxy>/known_hosts   @cert-authority line for devtrust nodes
//! ```

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use dt_types::UserName;
use serde::{Deserialize, Serialize};

use crate::connect::Identity;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub proxy: String,
    pub username: UserName,
    pub cluster: String,
    /// Pin of the server's CA; empty with `insecure`.
    pub ca_pin: String,
    #[serde(default)]
    pub insecure: bool,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub logins: Vec<String>,
    pub valid_until_unix: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is damaged ({why}); run `dtsh logout` and log in again")]
    Corrupt { path: PathBuf, why: String },
    #[error("not logged in: run `dtsh login --proxy=HOST:PORT --user=NAME`")]
    NotLoggedIn,
}

pub struct ProfileStore {
    pub home: PathBuf,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ProfileError + '_ {
    move |source| ProfileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Write a file atomically (temp + rename) with `mode`.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ProfileError> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The files that make up one logged-in profile.
pub struct ProfileFiles {
    pub dir: PathBuf,
}

impl ProfileFiles {
    pub fn key(&self) -> PathBuf {
        self.dir.join("key")
    }
    pub fn ssh_cert(&self) -> PathBuf {
        self.dir.join("key-cert.pub")
    }
    pub fn key_pem(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
    pub fn tls_cert(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }
    pub fn host_ca(&self) -> PathBuf {
        self.dir.join("host-ca.pem")
    }
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }
    pub fn profile_json(&self) -> PathBuf {
        self.dir.join("profile.json")
    }
}

/// What a login returns, to be saved.
pub struct LoginMaterial<'a> {
    pub key_openssh: &'a str,
    pub key_pkcs8_pem: &'a str,
    pub ssh_cert: &'a str,
    pub tls_cert_der: &'a [u8],
    pub host_ca_der: &'a [u8],
    pub host_ca_ssh: &'a str,
}

impl ProfileStore {
    /// `$DTSH_HOME`, else `$HOME/.dtsh`.
    pub fn from_env() -> ProfileStore {
        let home = std::env::var_os("DTSH_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".dtsh")))
            .unwrap_or_else(|| PathBuf::from(".dtsh"));
        ProfileStore { home }
    }

    pub fn files(&self, proxy: &str) -> ProfileFiles {
        let safe: String = proxy
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        ProfileFiles {
            dir: self.home.join("keys").join(safe),
        }
    }

    pub fn save(
        &self,
        profile: &Profile,
        m: &LoginMaterial<'_>,
    ) -> Result<ProfileFiles, ProfileError> {
        let f = self.files(&profile.proxy);
        write_file(&f.key(), m.key_openssh.as_bytes(), 0o600)?;
        write_file(&f.key_pem(), m.key_pkcs8_pem.as_bytes(), 0o600)?;
        self.save_certs(&f, m.ssh_cert, m.tls_cert_der)?;
        write_file(
            &f.host_ca(),
            dt_ca::pem::to_pem("CERTIFICATE", m.host_ca_der).as_bytes(),
            0o600,
        )?;
        write_file(
            &f.known_hosts(),
            format!("@cert-authority * {}\n", m.host_ca_ssh.trim()).as_bytes(),
            0o600,
        )?;
        self.save_profile(profile)?;
        write_file(
            &self.home.join("current-profile"),
            profile.proxy.as_bytes(),
            0o600,
        )?;
        Ok(f)
    }

    pub fn save_profile(&self, profile: &Profile) -> Result<(), ProfileError> {
        let f = self.files(&profile.proxy);
        let json = serde_json::to_vec_pretty(profile).map_err(|e| ProfileError::Corrupt {
            path: f.profile_json(),
            why: e.to_string(),
        })?;
        write_file(&f.profile_json(), &json, 0o600)
    }

    /// Replace the certificates (after device augmentation), keeping the key.
    pub fn save_certs(
        &self,
        f: &ProfileFiles,
        ssh_cert: &str,
        tls_cert_der: &[u8],
    ) -> Result<(), ProfileError> {
        write_file(
            &f.ssh_cert(),
            format!("{}\n", ssh_cert.trim()).as_bytes(),
            0o600,
        )?;
        write_file(
            &f.tls_cert(),
            dt_ca::pem::to_pem("CERTIFICATE", tls_cert_der).as_bytes(),
            0o600,
        )
    }

    pub fn current(&self) -> Result<Profile, ProfileError> {
        let cur = self.home.join("current-profile");
        let proxy = match std::fs::read_to_string(&cur) {
            Ok(p) => p.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ProfileError::NotLoggedIn);
            }
            Err(e) => return Err(io(&cur)(e)),
        };
        self.load(&proxy)
    }

    pub fn load(&self, proxy: &str) -> Result<Profile, ProfileError> {
        let path = self.files(proxy).profile_json();
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ProfileError::NotLoggedIn);
            }
            Err(e) => return Err(io(&path)(e)),
        };
        serde_json::from_slice(&text).map_err(|e| ProfileError::Corrupt {
            path,
            why: e.to_string(),
        })
    }

    /// The mTLS identity of a profile.
    pub fn identity(&self, profile: &Profile) -> Result<Identity, ProfileError> {
        let f = self.files(&profile.proxy);
        let cert_pem = std::fs::read_to_string(f.tls_cert()).map_err(io(&f.tls_cert()))?;
        let key_pem = std::fs::read_to_string(f.key_pem()).map_err(io(&f.key_pem()))?;
        let cert_der =
            dt_ca::pem::parse_cert_pem(&cert_pem).map_err(|e| ProfileError::Corrupt {
                path: f.tls_cert(),
                why: e.to_string(),
            })?;
        let key =
            dt_ca::ClientKey::from_pkcs8_pem(&key_pem).map_err(|e| ProfileError::Corrupt {
                path: f.key_pem(),
                why: e.to_string(),
            })?;
        Ok(Identity::Cert {
            cert_der,
            key_pkcs8_der: key.pkcs8_der().to_vec(),
        })
    }

    /// Forget every profile (keys included).
    pub fn remove_all(&self) -> Result<bool, ProfileError> {
        let keys = self.home.join("keys");
        let existed = keys.exists();
        if existed {
            std::fs::remove_dir_all(&keys).map_err(io(&keys))?;
        }
        let cur = self.home.join("current-profile");
        if cur.exists() {
            std::fs::remove_file(&cur).map_err(io(&cur))?;
        }
        Ok(existed)
    }
}
