//! What a joined service stores: its live record (what it serves, until its heartbeats stop)
//! and the registration that binds its name to its key.

use std::collections::BTreeMap;

use dt_types::ServiceKind;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub(super) fn node_kind() -> ServiceKind {
    ServiceKind::Node
}

pub(super) fn is_node(k: &ServiceKind) -> bool {
    *k == ServiceKind::Node
}

/// A live joined service (an SSH node, or another kind of access point), as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    pub name: String,
    /// What it is; absent in the records of SSH nodes (as before kinds existed).
    #[serde(default = "node_kind", skip_serializing_if = "is_node")]
    pub kind: ServiceKind,
    pub addr: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub version: String,
    /// Hex SHA-256 of the node key's SubjectPublicKeyInfo: who may use this name.
    pub key_sha256: String,
    #[serde(with = "time::serde::rfc3339")]
    pub last_heartbeat: OffsetDateTime,
    /// What it serves (never set for an SSH node, which serves itself).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<ServedResourceRecord>,
}

/// One resource a joined service serves, of the service's own kind, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServedResourceRecord {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Where clients connect, HOST:PORT (the service's address when it sent none).
    pub addr: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// A resource served right now, and by what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedResource {
    pub kind: ServiceKind,
    pub resource: ServedResourceRecord,
    /// The name of the service serving it (for an SSH node: itself).
    pub service: String,
    pub version: String,
    pub last_heartbeat: OffsetDateTime,
}

impl NodeRecord {
    /// What this service serves: an SSH node itself, other kinds their resources.
    pub(super) fn served(&self) -> Vec<ServedResource> {
        let one = |resource: ServedResourceRecord| ServedResource {
            kind: self.kind,
            resource,
            service: self.name.clone(),
            version: self.version.clone(),
            last_heartbeat: self.last_heartbeat,
        };
        if self.kind == ServiceKind::Node {
            return vec![one(ServedResourceRecord {
                name: self.name.clone(),
                labels: self.labels.clone(),
                addr: self.addr.clone(),
                protocol: String::new(),
                description: String::new(),
            })];
        }
        self.resources.iter().cloned().map(one).collect()
    }
}

/// The name a node joined with, bound to its key until an admin removes it. Host
/// certificates are issued for this name only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRegistration {
    pub name: String,
    /// Hex SHA-256 of the node key's SubjectPublicKeyInfo.
    pub key_sha256: String,
    #[serde(with = "time::serde::rfc3339")]
    pub joined_at: OffsetDateTime,
    /// The join token it used (its name, not the secret).
    pub token: String,
    /// What joined; absent in the registrations of SSH nodes.
    #[serde(default = "node_kind", skip_serializing_if = "is_node")]
    pub kind: ServiceKind,
}
