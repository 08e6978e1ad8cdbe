//! A devtrust SSH client (russh) for `dtsh ssh`, the tests and the benchmark: it verifies the
//! node by its **host certificate** (issued by the cluster's host CA, naming the node), logs
//! in with the user's certificate, and keeps the description of a refused channel, which is
//! where a node says why access was denied.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, AuthResult, DisconnectReason};
use russh::keys::{Certificate, PrivateKey, PublicKey};
use russh::{ChannelMsg, ChannelOpenFailure};
use ssh_key::certificate::CertType;
use ssh_key::{Algorithm, EcdsaCurve, HashAlg};

/// What a login needs.
#[derive(Clone)]
pub struct ClientCreds {
    pub key: Arc<PrivateKey>,
    pub cert: Certificate,
    /// The cluster's host CA (SSH public key).
    pub host_ca: PublicKey,
}

impl ClientCreds {
    /// From the files of a dtsh profile: the OpenSSH private key, the certificate and the
    /// `@cert-authority * KEY` line of its `known_hosts`.
    pub fn from_texts(key: &str, cert: &str, known_hosts: &str) -> Result<Self, String> {
        let key = PrivateKey::from_openssh(key).map_err(|e| format!("private key: {e}"))?;
        let cert =
            Certificate::from_openssh(cert.trim()).map_err(|e| format!("certificate: {e}"))?;
        let ca_line = known_hosts
            .lines()
            .find_map(|l| l.trim().strip_prefix("@cert-authority * "))
            .ok_or("known_hosts has no @cert-authority line")?;
        let host_ca =
            PublicKey::from_openssh(ca_line.trim()).map_err(|e| format!("host CA: {e}"))?;
        Ok(ClientCreds {
            key: Arc::new(key),
            cert,
            host_ca,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SshClientError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("the node at {addr} could not prove it is {node}: {reason}")]
    HostRejected {
        addr: String,
        node: String,
        reason: String,
    },
    #[error(
        "the node refused your certificate for login {login:?} (expired, from another cluster, or not valid for that login); check `dtsh status` and log in again"
    )]
    AuthRefused { login: String },
    /// The node refused the session; `reason_code` 1 is "administratively prohibited".
    #[error("rejected: {description}")]
    ChannelRejected {
        reason_code: u32,
        description: String,
    },
    #[error("{0}")]
    Ssh(String),
}

#[derive(Default)]
struct Shared {
    open_failure: Option<(u32, String)>,
    host_error: Option<String>,
    disconnect: Option<String>,
}

struct Handler {
    host_ca: PublicKey,
    node: String,
    shared: Arc<Mutex<Shared>>,
    /// Signalled when a channel open failure (with its description) was noted: russh
    /// reports the failure to the caller before it runs the handler callback.
    noted: Arc<tokio::sync::Notify>,
}

impl Handler {
    fn note(&self, f: impl FnOnce(&mut Shared)) {
        if let Ok(mut s) = self.shared.lock() {
            f(&mut s)
        }
    }

    fn check_host(&self, key: &russh::keys::PublicKeyOrCertificate) -> Result<(), String> {
        let russh::keys::PublicKeyOrCertificate::Certificate(cert) = key else {
            return Err("it presented a plain host key, not a host certificate".into());
        };
        if cert.cert_type() != CertType::Host {
            return Err("its certificate is not a host certificate".into());
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let fp = self.host_ca.fingerprint(HashAlg::Sha256);
        cert.validate_at(now, [&fp])
            .map_err(|e| format!("its host certificate is not valid for this cluster: {e}"))?;
        if !cert.valid_principals().iter().any(|p| p == &self.node) {
            return Err(format!(
                "its host certificate names {:?}, not {:?}",
                cert.valid_principals(),
                self.node
            ));
        }
        Ok(())
    }
}

impl client::Handler for Handler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        match self.check_host(key) {
            Ok(()) => Ok(true),
            Err(e) => {
                self.note(|s| s.host_error = Some(e));
                Ok(false)
            }
        }
    }

    async fn channel_open_failure(
        &mut self,
        _channel: russh::ChannelId,
        reason: ChannelOpenFailure,
        description: &str,
        _language: &str,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let d = description.to_string();
        self.note(|s| s.open_failure = Some((reason.code(), d)));
        self.noted.notify_one();
        Ok(())
    }

    async fn disconnected(
        &mut self,
        reason: DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        match reason {
            DisconnectReason::ReceivedDisconnect(info) => {
                let m = info.message.clone();
                self.note(|s| s.disconnect = Some(m));
                Ok(())
            }
            DisconnectReason::Error(e) => Err(e),
        }
    }
}

/// A connected, authenticated client.
pub struct Connection {
    handle: client::Handle<Handler>,
    shared: Arc<Mutex<Shared>>,
    noted: Arc<tokio::sync::Notify>,
}

/// The client configuration: certificate host keys from our CA only.
fn config() -> Arc<client::Config> {
    let mut preferred = russh::Preferred::default();
    let p256 = Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP256,
    };
    preferred.host_key_certificates = vec![p256.clone()].into();
    preferred.key = vec![p256].into();
    Arc::new(client::Config {
        preferred,
        nodelay: true,
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        ..Default::default()
    })
}

/// Connect to `addr`, verify it is `node`, and log in as `login`.
pub async fn connect(
    addr: &str,
    node: &str,
    creds: &ClientCreds,
    login: &str,
) -> Result<Connection, SshClientError> {
    let shared = Arc::new(Mutex::new(Shared::default()));
    let noted = Arc::new(tokio::sync::Notify::new());
    let handler = Handler {
        host_ca: creds.host_ca.clone(),
        node: node.to_string(),
        shared: shared.clone(),
        noted: noted.clone(),
    };
    let mut handle = match tokio::time::timeout(
        Duration::from_secs(15),
        client::connect(config(), addr, handler),
    )
    .await
    {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            let host_error = shared.lock().ok().and_then(|s| s.host_error.clone());
            return Err(match host_error {
                Some(reason) => SshClientError::HostRejected {
                    addr: addr.into(),
                    node: node.into(),
                    reason,
                },
                None => SshClientError::Connect {
                    addr: addr.into(),
                    reason: e.to_string(),
                },
            });
        }
        Err(_) => {
            return Err(SshClientError::Connect {
                addr: addr.into(),
                reason: "timed out".into(),
            });
        }
    };
    let auth = handle
        .authenticate_openssh_cert(login, creds.key.clone(), creds.cert.clone())
        .await
        .map_err(|e| SshClientError::Ssh(e.to_string()))?;
    match auth {
        AuthResult::Success => Ok(Connection {
            handle,
            shared,
            noted,
        }),
        AuthResult::Failure { .. } => Err(SshClientError::AuthRefused {
            login: login.to_string(),
        }),
    }
}

impl Connection {
    /// Open a session channel; a refusal carries the node's description.
    pub async fn open_session(&self) -> Result<russh::Channel<client::Msg>, SshClientError> {
        match self.handle.channel_open_session().await {
            Ok(c) => Ok(c),
            Err(russh::Error::ChannelOpenFailure(reason)) => {
                let take = || {
                    self.shared
                        .lock()
                        .ok()
                        .and_then(|mut s| s.open_failure.take())
                };
                let mut noted = take();
                if noted.is_none() {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(2), self.noted.notified()).await;
                    noted = take();
                }
                let (reason_code, description) =
                    noted.unwrap_or((reason.code(), reason.description().to_string()));
                Err(SshClientError::ChannelRejected {
                    reason_code,
                    description,
                })
            }
            Err(e) => Err(SshClientError::Ssh(e.to_string())),
        }
    }

    /// The reason the server gave when it disconnected, if it did.
    pub fn disconnect_reason(&self) -> Option<String> {
        self.shared.lock().ok().and_then(|s| s.disconnect.clone())
    }

    pub async fn close(self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}

/// What a non-interactive command produced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// `None` when the channel closed without an exit status.
    pub exit_status: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Run `command` (no PTY), feeding `stdin`, and collect its output.
pub async fn exec(
    conn: &Connection,
    command: &str,
    stdin: &[u8],
) -> Result<ExecOutput, SshClientError> {
    let mut ch = conn.open_session().await?;
    ch.exec(true, command)
        .await
        .map_err(|e| SshClientError::Ssh(e.to_string()))?;
    if !stdin.is_empty() {
        ch.data(stdin)
            .await
            .map_err(|e| SshClientError::Ssh(e.to_string()))?;
    }
    ch.eof()
        .await
        .map_err(|e| SshClientError::Ssh(e.to_string()))?;
    let mut out = ExecOutput::default();
    while let Some(msg) = ch.wait().await {
        match msg {
            ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
            ChannelMsg::ExtendedData { data, .. } => out.stderr.extend_from_slice(&data),
            ChannelMsg::ExitStatus { exit_status } => out.exit_status = Some(exit_status),
            ChannelMsg::Failure => {
                return Err(SshClientError::Ssh(
                    "the node refused to run the command".into(),
                ));
            }
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    Ok(out)
}
