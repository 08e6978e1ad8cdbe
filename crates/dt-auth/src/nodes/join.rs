//! Join: a service with a join token of its kind gets its certificates, and its name is
//! registered with its key.

use dt_proto::v1 as pb;
use dt_types::ServiceKind;
use dt_types::audit::{AuditEvent, EventType};
use dt_types::resource::{Resource, TokenRole, TokenSpec};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::checks::{addr_host, check_labels, set_submitter};
use super::{NODE_CERT_VALIDITY, NodeError, NodeRecord, NodeRegistration};
use crate::error::{ApiError, ApiResult};
use crate::keys;
use crate::listener::Peer;
use crate::plan;
use crate::server::AuthServer;
use crate::tokens::sha256_hex;

/// The kind a join asks for: empty is an SSH node (clients from before kinds existed).
pub(super) fn join_kind(kind: &str) -> ApiResult<ServiceKind> {
    if kind.is_empty() {
        return Ok(ServiceKind::Node);
    }
    ServiceKind::parse(kind).ok_or_else(|| {
        NodeError::UnknownKind {
            kind: kind.to_string(),
        }
        .into()
    })
}

/// The node's SSH public key and TLS SubjectPublicKeyInfo must be the same P-256 key.
/// Returns the SSH key and the hex SHA-256 of the SPKI.
pub(super) fn check_node_keys(
    ssh_public_key: &str,
    spki_der: &[u8],
) -> ApiResult<(ssh_key::PublicKey, String)> {
    let ssh = crate::login::check_client_keys("node", ssh_public_key, spki_der)?;
    Ok((ssh, hex::encode(Sha256::digest(spki_der))))
}

impl AuthServer {
    /// The live join token `token` for `role`, checked in constant time against its hash.
    pub(crate) async fn find_join_token(
        &self,
        token: &str,
        role: TokenRole,
    ) -> ApiResult<Option<(Resource<TokenSpec>, i64)>> {
        let hash = sha256_hex(token);
        let Some(index) = self.backend.get(&keys::join_token_index(&hash)).await? else {
            return Ok(None);
        };
        let name = String::from_utf8(index.value).map_err(ApiError::internal)?;
        let Some((tok, rev)) = self.get_resource::<TokenSpec>(&name).await? else {
            return Ok(None);
        };
        let same: bool = tok.spec.token_hash.as_bytes().ct_eq(hash.as_bytes()).into();
        let live = tok.metadata.expires.is_none_or(|e| e > self.env.now());
        if !same || !live || !tok.spec.roles.contains(&role) {
            return Ok(None);
        }
        Ok(Some((tok, rev)))
    }

    pub async fn join_node(
        &self,
        req: pb::JoinNodeRequest,
        peer: &Peer,
    ) -> ApiResult<pb::JoinNodeResponse> {
        let remote = peer.addr.ip().to_string();
        let name = req.name.trim().to_string();
        let fail = |why: String| {
            let remote = remote.clone();
            let name = name.clone();
            async move {
                self.audit
                    .emit(
                        AuditEvent::new(EventType::NodeJoin, false, self.env.now())
                            .user(if name.is_empty() {
                                "unknown"
                            } else {
                                name.as_str()
                            })
                            .message(why)
                            .remote_addr(remote),
                    )
                    .await
                    .map_err(ApiError::from)
            }
        };
        let limiter_key = format!("node-join@{remote}");
        if let Err(wait) = self
            .login_failures
            .check(self.backend.as_ref(), &limiter_key)
            .await?
        {
            fail("too many failed joins (rate limited)".into()).await?;
            return Err(NodeError::TooManyJoins {
                wait_secs: wait.as_secs().max(1),
            }
            .into());
        }
        let kind = join_kind(&req.kind)?;
        dt_types::resource::validate_name(&name)
            .map_err(|e| ApiError::InvalidArgument(format!("{kind} name: {e}")))?;
        check_labels(
            &req.labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )?;
        // The MDM service has no listener clients dial.
        if !(kind == ServiceKind::Mdm && req.addr.is_empty()) {
            addr_host(&req.addr)?;
        }
        let (ssh_key, key_sha256) = check_node_keys(&req.ssh_public_key, &req.tls_public_key_der)?;
        let Some((token, _)) = self
            .find_join_token(&req.token, TokenRole::for_service(kind))
            .await?
        else {
            self.record_failure(&limiter_key).await?;
            fail(format!("invalid or expired {kind} join token")).await?;
            return Err(NodeError::InvalidJoinToken { kind }.into());
        };
        let reg_key = keys::service_registration(kind, &name);
        let registration = self.backend.get(&reg_key).await?;
        if let Some(item) = &registration {
            let same_key = serde_json::from_slice::<NodeRegistration>(&item.value)
                .is_ok_and(|r| r.key_sha256 == key_sha256);
            if !same_key {
                fail(format!(
                    "refused: {kind} name {name:?} is registered with another key"
                ))
                .await?;
                return Err(NodeError::RegisteredToAnotherKey { kind, name }.into());
            }
        }
        let key = keys::service_record(kind, &name);
        let existing = self.backend.get(&key).await?;
        if let Some(item) = &existing
            && let Ok(rec) = serde_json::from_slice::<NodeRecord>(&item.value)
            && rec.key_sha256 != key_sha256
        {
            fail(format!("{kind} name {name:?} is online with another key")).await?;
            return Err(NodeError::OnlineWithAnotherKey { kind, name }.into());
        }
        let now = self.env.now();
        let not_after = now + NODE_CERT_VALIDITY;
        // SSH host certificates for SSH nodes only, for the registered name only: never an
        // address or host name the joining client asks for (a token must not mint
        // certificates for other hosts), and never for a database or app access point,
        // which `dtsh ssh` would then take for a node.
        let ssh_host_cert = if kind == ServiceKind::Node {
            let principals = vec![name.clone(), format!("{name}.{}", self.cluster_name)];
            self.host_ca
                .issue_ssh_host_cert(&ssh_key, &name, &principals, not_after)
                .map_err(ApiError::internal)?
                .to_openssh()
                .map_err(ApiError::internal)?
        } else {
            String::new()
        };
        let tls_cert = self
            .host_ca
            .issue_node_client_cert(&req.tls_public_key_der, &name, kind, not_after)
            .map_err(ApiError::internal)?;
        let record = NodeRecord {
            name: name.clone(),
            kind,
            addr: req.addr.clone(),
            labels: req
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            version: String::new(),
            key_sha256,
            last_heartbeat: now,
            resources: Vec::new(),
        };
        let reg = NodeRegistration {
            name: name.clone(),
            key_sha256: record.key_sha256.clone(),
            joined_at: now,
            token: token.name().to_string(),
            kind,
        };
        let mut event = AuditEvent::new(EventType::NodeJoin, true, now)
            .user(&name)
            .resource("token", token.name())
            .message(format!("{kind} {name:?} joined at {}", req.addr))
            .remote_addr(&remote);
        set_submitter(&mut event, kind, &name);
        let plan = plan::nodes::joined(
            &record,
            existing.as_ref().map(|item| item.revision),
            &reg,
            registration.as_ref().map(|item| item.revision),
            event,
        )
        .map_err(ApiError::internal)?;
        self.commit(plan).await?;
        self.login_failures
            .clear(self.backend.as_ref(), &limiter_key)
            .await?;
        Ok(pb::JoinNodeResponse {
            ssh_host_cert,
            tls_cert_der: tls_cert,
            user_ca_ssh_public_key: self.user_ca.ssh_public_key_openssh(),
            user_ca_cert_der: self.user_ca.cert_der().to_vec(),
            host_ca_cert_der: self.host_ca.cert_der().to_vec(),
            host_ca_ssh_public_key: self.host_ca.ssh_public_key_openssh(),
            cluster_name: self.cluster_name.clone(),
            valid_until_unix: not_after.unix_timestamp(),
        })
    }
}
