//! Agentless OpenSSH servers: `devtrust openssh-principals`, sshd's
//! `AuthorizedPrincipalsCommand`, and `devtrust openssh-setup`, which prints the sshd_config
//! lines.
//!
//! sshd runs the helper for every user certificate offered (twice per successful login),
//! with `%u` (the login), `%k` (the certificate, base64) and `%t` (its type). The helper
//! verifies the certificate against the cluster's user CA (sshd does too, with
//! `TrustedUserCAKeys`; this is defence in depth), then makes the **same decision** as a
//! devtrust node ([`crate::access::decide`]: device trust, roles, locks) from the view that
//! `devtrust node start --openssh` keeps in the data dir. It prints the login when access is
//! allowed and nothing otherwise (sshd then refuses the certificate). It fails closed: a
//! missing, unreadable or too old view (`--max-age`) denies.
//!
//! What OpenSSH users see on a denial is sshd's `Permission denied (publickey)`; the reason
//! is on the helper's stderr (sshd's log) and in the `access.denied` audit event, which the
//! helper sends to the auth service with a short deadline (best effort: sshd is waiting).

use std::path::{Path, PathBuf};
use std::time::Duration;

use dt_ca::SshUserCaKey;
use dt_proto::v1 as pb;
use dt_proto::v1::node_service_client::NodeServiceClient;
use dt_types::audit::{AuditEvent, EventType};
use time::OffsetDateTime;

use crate::NodeError;
use crate::access::{self, Freshness};
use crate::agent::tls_identity;
use crate::identity::DataDir;
use crate::view::ViewFile;

/// Default for `--max-age`.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(30);
/// How long the helper waits to deliver its audit event.
const AUDIT_DEADLINE: Duration = Duration::from_secs(2);

/// One invocation of the helper.
#[derive(Clone, Debug)]
pub struct PrincipalsQuery {
    pub data_dir: PathBuf,
    pub max_age: Duration,
    /// `%u`
    pub login: String,
    /// `%k`
    pub cert_b64: String,
    /// `%t`
    pub cert_type: String,
}

/// The outcome: the principal to print, or why nothing is printed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrincipalsAnswer {
    Allow(String),
    Deny {
        reason: String,
        event: Box<AuditEvent>,
    },
}

/// Decide without side effects (the CLI prints, logs and sends the audit event).
pub fn principals(q: &PrincipalsQuery, now: OffsetDateTime) -> PrincipalsAnswer {
    let deny = |reason: String, id: Option<&dt_ca::Identity>, lock: Option<String>| {
        let mut e = AuditEvent::new(EventType::AccessDenied, false, now).message(reason.clone());
        e.login = Some(q.login.clone());
        e.lock = lock;
        if let Some(id) = id {
            e = e.user(id.username.clone());
            if let Some(d) = access::device_info(id) {
                e = e.device(d);
            }
        }
        PrincipalsAnswer::Deny {
            reason,
            event: Box::new(e),
        }
    };
    let dir = DataDir::new(&q.data_dir);
    let user_ca = match std::fs::read_to_string(dir.user_ca())
        .map_err(|e| e.to_string())
        .and_then(|line| SshUserCaKey::from_openssh(&line).map_err(|e| e.to_string()))
    {
        Ok(k) => k,
        Err(e) => {
            return deny(
                format!("openssh helper: cannot read the user CA: {e}"),
                None,
                None,
            );
        }
    };
    let file: ViewFile = match std::fs::read(dir.view_cache())
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(f) => f,
        Err(e) => {
            return deny(
                format!(
                    "openssh helper: no cluster view in {} ({e}); is `devtrust node start --openssh` running?",
                    dir.view_cache().display()
                ),
                None,
                None,
            );
        }
    };
    let facts = file.facts();
    let view = file.into_view();
    let age = view.age(now).unwrap_or(Duration::MAX);
    if age > q.max_age {
        return deny(
            format!(
                "openssh helper: the cluster view is {} s old (limit {} s); is `devtrust node start --openssh` running and connected?",
                age.as_secs(),
                q.max_age.as_secs()
            ),
            None,
            None,
        );
    }
    let text = format!("{} {}", q.cert_type.trim(), q.cert_b64.trim());
    let cert = match ssh_key::Certificate::from_openssh(&text) {
        Ok(c) => c,
        Err(e) => return deny(format!("certificate refused: unreadable ({e})"), None, None),
    };
    let id = match access::authenticate(&user_ca, &cert, &q.login, now) {
        Ok(id) => id,
        Err(why) => {
            return deny(
                format!(
                    "{why} (certificate key id {:?}, not trusted)",
                    cert.key_id()
                ),
                None,
                None,
            );
        }
    };
    match access::decide(&view, &id, &q.login, &facts, now, Freshness::default()) {
        Ok(()) => PrincipalsAnswer::Allow(q.login.clone()),
        Err(d) => {
            let mut ans = deny(
                d.audit_message(&facts.target(&q.login)),
                Some(&id),
                d.lock().map(str::to_owned),
            );
            if let PrincipalsAnswer::Deny { event, .. } = &mut ans {
                event.node = Some(facts.name.to_string());
            }
            ans
        }
    }
}

/// Send one audit event as this node, within a short deadline.
pub async fn send_event(data_dir: &Path, event: AuditEvent) -> Result<(), NodeError> {
    let dir = DataDir::new(data_dir);
    let id = dir.load()?;
    let send = async {
        let channel =
            dt_client::connect::channel(&id.meta.auth_server, id.meta.trust(), tls_identity(&id))
                .await?;
        NodeServiceClient::new(channel)
            .submit_audit_events(pb::SubmitAuditEventsRequest {
                events: vec![serde_json::to_string(&event).unwrap_or_default()],
            })
            .await?;
        Ok::<(), NodeError>(())
    };
    tokio::time::timeout(AUDIT_DEADLINE, send)
        .await
        .map_err(|_| NodeError::Auth("the auth service did not answer in time".into()))?
}

/// Write the OpenSSH form of the node key (for sshd's `HostKey`) and return the sshd_config
/// lines for this data dir.
pub fn setup(data_dir: &Path, helper: &Path, max_age: Duration) -> Result<String, NodeError> {
    let dir = DataDir::new(data_dir);
    let id = dir.load()?;
    let host_key = data_dir.join("ssh_host_key");
    let key_text = id.key.ssh_private_key_openssh()?;
    crate::identity::write_private(&host_key, key_text.as_bytes())?;
    let abs = |p: PathBuf| std::fs::canonicalize(&p).unwrap_or(p);
    let d = abs(data_dir.to_path_buf());
    Ok(format!(
        "# devtrust: agentless OpenSSH access for node {name:?} (cluster {cluster:?}).
# Keep `devtrust node start --openssh --data-dir={d}` running: it keeps the cluster view
# this helper decides from. The helper and every parent directory must be owned by root and
# not writable by group or others.
TrustedUserCAKeys {d}/user-ca.pub
AuthorizedPrincipalsCommand {helper} openssh-principals --data-dir={d} --max-age={max}s %u %k %t
AuthorizedPrincipalsCommandUser root
HostKey {d}/ssh_host_key
HostCertificate {d}/ssh_host_cert.pub
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
",
        name = id.meta.name,
        cluster = id.meta.cluster,
        d = d.display(),
        helper = helper.display(),
        max = max_age.as_secs(),
    ))
}
