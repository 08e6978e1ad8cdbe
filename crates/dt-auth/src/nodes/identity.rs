//! Who is on the other end: a joined service's certificate, still valid, whose key is still
//! the one registered for its name and kind.

use std::sync::Arc;

use dt_types::ServiceKind;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::{NodeError, NodeRegistration};
use crate::error::{ApiError, ApiResult};
use crate::keys;
use crate::listener::Peer;
use crate::server::AuthServer;

/// The joined node on the other end, or `Unauthenticated` with what to do.
/// `now` is the server's clock ([`crate::env::ServerEnv::now`]).
pub(super) fn node_of(peer: &Peer, now: OffsetDateTime) -> ApiResult<Arc<dt_ca::NodeIdentity>> {
    let node = peer.node.clone().ok_or(NodeError::NotJoined)?;
    // The TLS handshake checked the validity once; a connection can outlive it.
    if now >= node.not_after {
        return Err(NodeError::CertificateExpired {
            name: node.name.clone(),
        }
        .into());
    }
    Ok(node)
}

/// A joined access point (any kind but the MDM service), for the calls that serve access
/// decisions: the cluster watch and audit submission.
pub(super) fn access_point_of(
    node: Arc<dt_ca::NodeIdentity>,
    call: &'static str,
) -> ApiResult<Arc<dt_ca::NodeIdentity>> {
    if node.kind.is_access_point() {
        Ok(node)
    } else {
        Err(NodeError::NotAnAccessPoint {
            call,
            kind: node.kind,
            name: node.name.clone(),
        }
        .into())
    }
}

/// Hex SHA-256 of the SubjectPublicKeyInfo of a certificate.
pub(super) fn cert_key_sha256(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    Some(hex::encode(Sha256::digest(
        cert.tbs_certificate.subject_pki.raw,
    )))
}

impl AuthServer {
    /// A joined node's key must still be the one registered for its name: a removed node,
    /// or one whose name now belongs to another machine, is refused.
    pub(super) async fn check_node_key(
        &self,
        kind: ServiceKind,
        name: &str,
        key_sha256: &str,
    ) -> ApiResult<()> {
        let refused = || -> ApiError {
            NodeError::RemovedOrReplaced {
                kind,
                name: name.to_string(),
            }
            .into()
        };
        if self
            .backend
            .get(&keys::removed_node_key(key_sha256))
            .await?
            .is_some()
        {
            return Err(refused());
        }
        match self
            .backend
            .get(&keys::service_registration(kind, name))
            .await?
        {
            Some(item)
                if !serde_json::from_slice::<NodeRegistration>(&item.value)
                    .is_ok_and(|r| r.key_sha256 == key_sha256) =>
            {
                Err(refused())
            }
            Some(_) => Ok(()),
            // Nodes joined before registrations existed have none: accepted. Every other
            // kind was registered from its first join, so a missing one was removed.
            None if kind == ServiceKind::Node => Ok(()),
            None => Err(refused()),
        }
    }

    /// The joined service on the other end whose key is still registered for its name
    /// and kind.
    pub(crate) async fn live_node(&self, peer: &Peer) -> ApiResult<Arc<dt_ca::NodeIdentity>> {
        let node = node_of(peer, self.env.now())?;
        self.check_peer_node_key(&node, peer).await?;
        Ok(node)
    }

    /// The key of the peer's certificate is the one registered for `node`'s name and kind;
    /// returns that key's SHA-256.
    pub(super) async fn check_peer_node_key(
        &self,
        node: &dt_ca::NodeIdentity,
        peer: &Peer,
    ) -> ApiResult<String> {
        let key_sha256 = peer
            .cert_der
            .as_deref()
            .and_then(|d| cert_key_sha256(d))
            .ok_or_else(|| ApiError::internal("node certificate without a key"))?;
        self.check_node_key(node.kind, &node.name, &key_sha256)
            .await?;
        Ok(key_sha256)
    }
}
