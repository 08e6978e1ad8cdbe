//! The auth side of joined services and bots: `NodeService`. "Node" is meant in the wide
//! sense: an SSH node, a database, Kubernetes, app or desktop access point, or the MDM sync
//! service ([`ServiceKind`]); each joins with a join token of its own type, and its
//! host-CA client certificate names its kind, which every later call is checked against.
//!
//! - **Join**: a service presents a join token of its kind (looked up by its SHA-256, like
//!   every join token) and its public key; it gets an X.509 client certificate naming its
//!   kind (host CA) and, for SSH nodes only, an SSH host certificate (the other kinds get an
//!   empty `ssh_host_cert`: nobody reaches them over SSH, and a host certificate would let a
//!   database access point pose as an SSH node to `dtsh ssh`). Registrations and records
//!   are per kind: SSH nodes keep `/node_registrations/<name>` and `/nodes/<name>`, other
//!   kinds live under their own prefixes ([`keys::service_record`]), so a database and a
//!   node may share a name. Join tokens are **reusable until they expire** (one token can
//!   join a fleet, and a node that lost its data dir can join again); `dtctl rm token/NAME`
//!   revokes one early. The first join registers the name with the service's key
//!   ([`NodeRegistration`]); a join under that name and kind with another key is refused
//!   until an admin runs `dtctl rm KIND/NAME` (which also refuses the old key from then
//!   on). Host certificates name the registered node only, never an address the client
//!   asks for.
//! - **Heartbeat**: the service's record (with the resources it serves, all of its own kind,
//!   validated like labels) expires a few heartbeats later, so `dtsh ls` lists only live
//!   resources. An SSH node serves itself; it may resend itself as its one resource (to
//!   change labels or address) but never another name: host certificates and name bindings
//!   are per node. The MDM service serves nothing. Heartbeats are liveness, not changes: no
//!   audit event.
//! - **Listing** (`ListNodes`, `ListServedResources`): only what the caller's roles let it
//!   reach ([`dt_authz::may_list`]): labels, allow and deny, as at connection time.
//! - **WatchCluster** (access points only; the MDM service does not need the roles and locks):
//!   a snapshot of what access decisions need (cluster auth preference, roles,
//!   locks, as stored) and then every change, from [`dt_store::Backend::watch`], with a
//!   keepalive every [`WATCH_KEEPALIVE`] so a node can tell a live view from a stale one.
//! - **Audit**: access points submit their session and access events; the auth service
//!   records the submitter (an SSH node as the event's `node`, any other kind as its
//!   `service`, kind and name; neither can speak for another one) and accepts only the event
//!   types an access point produces. The MDM service submits none.
//! - **Bots** (the service lives in `bots`): `AddBot` creates a bot user and a bot join
//!   token in one transaction; a login with that token (reusable until it expires) gets
//!   certificates marked `devtrust-bot`.
//!
//! Identity comes from the mTLS [`Peer`] only: [`Peer::node`] for joined services (host CA,
//! their kind), [`Peer::identity`] for users.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use dt_proto::v1 as pb;
use dt_proto::v1::node_service_server::NodeService;
use dt_store::{Condition, EventKind, Op, StoreError, WatchEvent};
use dt_types::audit::{AuditEvent, EventType, ServiceInfo};
use dt_types::resource::{Resource, TokenRole, TokenSpec};
use dt_types::{Kind, Role, ServiceKind, Verb};
use futures::Stream;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::caller::Caller;
use crate::caller::peer_of;
use crate::error::{ApiError, ApiResult};
use crate::keys;
use crate::listener::Peer;
use crate::resources::to_json;
use crate::server::AuthServer;
use crate::tokens::sha256_hex;

/// Node records: `/nodes/<name>` → [`NodeRecord`] JSON, expiring without heartbeats.
pub use crate::keys::NODES_PREFIX;
/// How long node certificates (SSH host and X.509 client) are valid.
pub const NODE_CERT_VALIDITY: time::Duration = time::Duration::days(365);
/// How often a watch stream says "still here" when nothing changes.
pub const WATCH_KEEPALIVE: Duration = Duration::from_secs(2);
/// Bounds of a heartbeat's time to live.
const MIN_HEARTBEAT_TTL: u64 = 3;
const MAX_HEARTBEAT_TTL: u64 = 600;
/// A node record before the first heartbeat.
const JOIN_RECORD_TTL: time::Duration = time::Duration::seconds(60);
/// Event types an access point may submit.
const NODE_EVENTS: [EventType; 16] = [
    EventType::SessionStart,
    EventType::SessionEnd,
    EventType::SessionTerminate,
    EventType::Exec,
    EventType::AccessDenied,
    EventType::DbSessionStart,
    EventType::DbSessionEnd,
    EventType::DbSessionQuery,
    EventType::KubeRequest,
    EventType::KubeExecStart,
    EventType::KubeExecEnd,
    EventType::AppSessionStart,
    EventType::AppSessionRequest,
    EventType::DesktopSessionStart,
    EventType::DesktopSessionEnd,
    EventType::DesktopClipboard,
];
const MAX_EVENTS_PER_SUBMIT: usize = 1000;
const MAX_EVENT_JSON: usize = 64 * 1024;
/// At most this many resources per heartbeat.
const MAX_SERVED_RESOURCES: usize = 1000;

/// The prefixes a node watches: what an SSH access decision reads.
pub fn watched_prefixes() -> Vec<String> {
    vec![
        keys::resource_prefix(Kind::ClusterAuthPreference),
        keys::resource_prefix(Kind::Role),
        keys::resource_prefix(Kind::Lock),
    ]
}

fn node_kind() -> ServiceKind {
    ServiceKind::Node
}

fn is_node(k: &ServiceKind) -> bool {
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
    fn served(&self) -> Vec<ServedResource> {
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

#[derive(Clone)]
pub struct GrpcNodes {
    pub srv: Arc<AuthServer>,
}

/// The joined node on the other end, or `Unauthenticated` with what to do.
fn node_of(peer: &Peer) -> ApiResult<Arc<dt_ca::NodeIdentity>> {
    let node = peer.node.clone().ok_or_else(|| {
        ApiError::Unauthenticated(
            "this call is for joined nodes (mutual TLS with the node certificate from `devtrust node start --token`)"
                .into(),
        )
    })?;
    // The TLS handshake checked the validity once; a connection can outlive it.
    if OffsetDateTime::now_utc() >= node.not_after {
        return Err(ApiError::Unauthenticated(format!(
            "the node certificate of {:?} expired; join the node again (`devtrust node start --token`)",
            node.name
        )));
    }
    Ok(node)
}

/// A joined access point (any kind but the MDM service), for the calls that serve access
/// decisions: the cluster watch and audit submission.
fn access_point_of(
    node: Arc<dt_ca::NodeIdentity>,
    what: &str,
) -> ApiResult<Arc<dt_ca::NodeIdentity>> {
    if node.kind.is_access_point() {
        Ok(node)
    } else {
        Err(ApiError::PermissionDenied(format!(
            "{what} is for access points; the {} service {:?} may not call it",
            node.kind, node.name
        )))
    }
}

fn invalid_join_token(kind: ServiceKind) -> ApiError {
    ApiError::Unauthenticated(format!(
        "invalid or expired join token for a {kind} (a token of another type does not join a {kind}); ask an admin for a new one (`dtctl tokens add --type={kind}`)"
    ))
}

/// The kind a join asks for: empty is an SSH node (clients from before kinds existed).
fn join_kind(kind: &str) -> ApiResult<ServiceKind> {
    if kind.is_empty() {
        return Ok(ServiceKind::Node);
    }
    ServiceKind::parse(kind).ok_or_else(|| {
        ApiError::InvalidArgument(format!(
            "unknown service kind {kind:?}; use node, db, kube, app, desktop or mdm"
        ))
    })
}

/// The resources a heartbeat says `node` serves, checked: all of its own kind, with valid
/// names, labels and addresses, no name twice. An SSH node may name only itself.
fn check_served(
    node: &dt_ca::NodeIdentity,
    service_addr: &str,
    resources: &[pb::ServedResource],
) -> ApiResult<Vec<ServedResourceRecord>> {
    if node.kind == ServiceKind::Mdm && !resources.is_empty() {
        return Err(ApiError::InvalidArgument(
            "the mdm service serves no resources; send none".into(),
        ));
    }
    if resources.len() > MAX_SERVED_RESOURCES {
        return Err(ApiError::InvalidArgument(format!(
            "at most {MAX_SERVED_RESOURCES} resources per heartbeat"
        )));
    }
    let mut out: Vec<ServedResourceRecord> = Vec::with_capacity(resources.len());
    for r in resources {
        if r.kind != node.kind.as_str() {
            return Err(ApiError::PermissionDenied(format!(
                "a {} service may serve only {} resources, not {:?} ({:?})",
                node.kind, node.kind, r.kind, r.name
            )));
        }
        dt_types::resource::validate_name(&r.name).map_err(|e| {
            ApiError::InvalidArgument(format!("served {} {:?}: {e}", node.kind, r.name))
        })?;
        if node.kind == ServiceKind::Node && r.name != node.name {
            return Err(ApiError::PermissionDenied(format!(
                "node {:?} may serve only itself, not {:?} (each node joins with its own name)",
                node.name, r.name
            )));
        }
        if out.iter().any(|o| o.name == r.name) {
            return Err(ApiError::InvalidArgument(format!(
                "{} {:?} is listed twice",
                node.kind, r.name
            )));
        }
        let labels: BTreeMap<String, String> = r
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        check_labels(&labels)?;
        let addr = if r.addr.is_empty() {
            service_addr.to_string()
        } else {
            addr_host(&r.addr)?;
            r.addr.clone()
        };
        if node.kind == ServiceKind::Db && !matches!(r.protocol.as_str(), "postgres" | "mysql") {
            return Err(ApiError::InvalidArgument(format!(
                "database {:?}: protocol {:?}; use postgres or mysql",
                r.name, r.protocol
            )));
        }
        for (what, v, max) in [
            ("protocol", &r.protocol, 253),
            ("description", &r.description, 1024),
        ] {
            if v.len() > max || v.chars().any(char::is_control) {
                return Err(ApiError::InvalidArgument(format!(
                    "{} {:?}: {what} is too long or has control characters",
                    node.kind, r.name
                )));
            }
        }
        out.push(ServedResourceRecord {
            name: r.name.clone(),
            labels,
            addr,
            protocol: r.protocol.clone(),
            description: r.description.clone(),
        });
    }
    Ok(out)
}

/// The node's SSH public key and TLS SubjectPublicKeyInfo must be the same P-256 key.
/// Returns the SSH key and the hex SHA-256 of the SPKI.
fn check_node_keys(
    ssh_public_key: &str,
    spki_der: &[u8],
) -> ApiResult<(ssh_key::PublicKey, String)> {
    let ssh = crate::login::check_client_keys("node", ssh_public_key, spki_der)?;
    Ok((ssh, hex(&Sha256::digest(spki_der))))
}

/// Hex SHA-256 of the SubjectPublicKeyInfo of a certificate.
fn cert_key_sha256(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    Some(hex(&Sha256::digest(cert.tbs_certificate.subject_pki.raw)))
}

fn check_labels(labels: &BTreeMap<String, String>) -> ApiResult<()> {
    if labels.len() > 64 {
        return Err(ApiError::InvalidArgument("at most 64 labels".into()));
    }
    for (k, v) in labels {
        let ok_key = !k.is_empty()
            && k.len() <= 63
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        if !ok_key {
            return Err(ApiError::InvalidArgument(format!(
                "label key {k:?}: use letters, digits and - _ . / (at most 63)"
            )));
        }
        if v.len() > 253 || v.chars().any(|c| c.is_control()) {
            return Err(ApiError::InvalidArgument(format!(
                "label {k}: value is too long or has control characters"
            )));
        }
    }
    Ok(())
}

/// `HOST:PORT` → HOST (without brackets).
fn addr_host(addr: &str) -> ApiResult<String> {
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| {
        ApiError::InvalidArgument(format!("node address {addr:?}: use HOST:PORT"))
    })?;
    port.parse::<u16>()
        .map_err(|_| ApiError::InvalidArgument(format!("node address {addr:?}: bad port")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ApiError::InvalidArgument(format!(
            "node address {addr:?}: bad host"
        )));
    }
    Ok(host.to_string())
}

fn kind_of_key(key: &str) -> Option<(Kind, &str)> {
    [Kind::ClusterAuthPreference, Kind::Role, Kind::Lock]
        .into_iter()
        .find_map(|k| {
            key.strip_prefix(&keys::resource_prefix(k))
                .map(|name| (k, name))
        })
}

/// Name the joined service an event is about or came from: an SSH node as `node` (as
/// always), any other kind as `service`. Whatever the submitter wrote there is replaced.
fn set_submitter(e: &mut AuditEvent, kind: ServiceKind, name: &str) {
    if kind == ServiceKind::Node {
        e.node = Some(name.to_string());
        e.service = None;
    } else {
        e.node = None;
        e.service = Some(ServiceInfo {
            kind,
            name: name.to_string(),
        });
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
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
        let live = tok
            .metadata
            .expires
            .is_none_or(|e| e > OffsetDateTime::now_utc());
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
                        AuditEvent::new(EventType::NodeJoin, false, OffsetDateTime::now_utc())
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
            return Err(ApiError::TooMany(format!(
                "too many failed joins from this address; try again in {} s",
                wait.as_secs().max(1)
            )));
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
            return Err(invalid_join_token(kind));
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
                return Err(ApiError::AlreadyExists(format!(
                    "a {kind} named {name:?} is already registered with another key; if this machine replaces it, an admin must remove the old one first (`dtctl rm {kind}/{name}`), then join again"
                )));
            }
        }
        let key = keys::service_record(kind, &name);
        let existing = self.backend.get(&key).await?;
        if let Some(item) = &existing
            && let Ok(rec) = serde_json::from_slice::<NodeRecord>(&item.value)
            && rec.key_sha256 != key_sha256
        {
            fail(format!("{kind} name {name:?} is online with another key")).await?;
            return Err(ApiError::AlreadyExists(format!(
                "a {kind} named {name:?} is online with another key; stop it or pick another --name"
            )));
        }
        let now = OffsetDateTime::now_utc();
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
        let condition = match &existing {
            Some(item) => Condition::Revision(key.clone(), item.revision),
            None => Condition::NotExists(key.clone()),
        };
        // Two machines joining one new name at once: one registration wins.
        let reg_condition = match &registration {
            Some(item) => Condition::Revision(reg_key.clone(), item.revision),
            None => Condition::NotExists(reg_key.clone()),
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
        match self
            .audit
            .write_with(
                vec![condition, reg_condition],
                vec![
                    Op::Put {
                        key,
                        value: to_json(&record)?,
                        expires: Some(now + JOIN_RECORD_TTL),
                    },
                    Op::Put {
                        key: reg_key,
                        value: to_json(&reg)?,
                        expires: None,
                    },
                ],
                event,
            )
            .await
        {
            Ok(_) => {}
            Err(StoreError::ConditionFailed { .. }) => {
                return Err(ApiError::Conflict(format!(
                    "{kind} {name:?} changed meanwhile; try again"
                )));
            }
            Err(e) => return Err(e.into()),
        }
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

    pub async fn node_heartbeat(
        &self,
        node: &dt_ca::NodeIdentity,
        peer: &Peer,
        req: pb::HeartbeatRequest,
    ) -> ApiResult<()> {
        let mut labels: BTreeMap<String, String> = req
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        check_labels(&labels)?;
        if !(node.kind == ServiceKind::Mdm && req.addr.is_empty()) {
            addr_host(&req.addr)?;
        }
        let mut addr = req.addr;
        let mut resources = check_served(node, &addr, &req.resources)?;
        if node.kind == ServiceKind::Node {
            // An SSH node serves itself: a resource it sends is itself (check_served made
            // sure), with the labels and address clients should see.
            if let Some(me) = resources.pop() {
                labels = me.labels;
                addr = me.addr;
            }
        }
        let key_sha256 = self.check_peer_node_key(node, peer).await?;
        let ttl = req.ttl_seconds.clamp(MIN_HEARTBEAT_TTL, MAX_HEARTBEAT_TTL);
        let now = OffsetDateTime::now_utc();
        let record = NodeRecord {
            name: node.name.clone(),
            kind: node.kind,
            addr,
            labels,
            version: req.version,
            key_sha256,
            last_heartbeat: now,
            resources,
        };
        self.backend
            .put(
                &keys::service_record(node.kind, &node.name),
                to_json(&record)?,
                Some(now + Duration::from_secs(ttl)),
            )
            .await?;
        Ok(())
    }

    /// A joined node's key must still be the one registered for its name: a removed node,
    /// or one whose name now belongs to another machine, is refused.
    async fn check_node_key(
        &self,
        kind: ServiceKind,
        name: &str,
        key_sha256: &str,
    ) -> ApiResult<()> {
        let refused = || {
            ApiError::Unauthenticated(format!(
                "{kind} {name:?} was removed or replaced by an admin; join again with a new token (`dtctl tokens add --type={kind}`)"
            ))
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
        let node = node_of(peer)?;
        self.check_peer_node_key(&node, peer).await?;
        Ok(node)
    }

    /// The key of the peer's certificate is the one registered for `node`'s name and kind;
    /// returns that key's SHA-256.
    async fn check_peer_node_key(
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

    /// `dtctl rm node/NAME`: forget the node's registration and live record, and refuse its
    /// key from now on, so the name is free for a machine with a new key.
    pub async fn remove_node(&self, caller: &Caller, name: &str) -> ApiResult<()> {
        self.remove_service(caller, ServiceKind::Node, name).await
    }

    /// `dtctl rm KIND/NAME` for a joined service of any kind (needs `delete` on `node`,
    /// the API's name for every joined service): as [`Self::remove_node`].
    pub async fn remove_service(
        &self,
        caller: &Caller,
        kind: ServiceKind,
        name: &str,
    ) -> ApiResult<()> {
        self.authorize(caller, "node", Verb::Delete)?;
        let reg_key = keys::service_registration(kind, name);
        let record_key = keys::service_record(kind, name);
        let reg = self.backend.get(&reg_key).await?;
        let record = self.backend.get(&record_key).await?;
        if reg.is_none() && record.is_none() {
            return Err(ApiError::NotFound(format!(
                "{kind} {name:?} not found (see `dtctl rm` for the kinds and `dtsh ls` for nodes)"
            )));
        }
        let mut keys_seen: Vec<String> = Vec::new();
        if let Some(r) = reg
            .as_ref()
            .and_then(|i| serde_json::from_slice::<NodeRegistration>(&i.value).ok())
        {
            keys_seen.push(r.key_sha256);
        }
        if let Some(r) = record
            .as_ref()
            .and_then(|i| serde_json::from_slice::<NodeRecord>(&i.value).ok())
            && !keys_seen.contains(&r.key_sha256)
        {
            keys_seen.push(r.key_sha256);
        }
        let mut conditions = Vec::new();
        let mut ops = Vec::new();
        for (key, item) in [(reg_key, &reg), (record_key, &record)] {
            if let Some(item) = item {
                conditions.push(Condition::Revision(key.clone(), item.revision));
                ops.push(Op::Delete { key });
            }
        }
        let now = OffsetDateTime::now_utc();
        for k in &keys_seen {
            ops.push(Op::Put {
                key: keys::removed_node_key(k),
                value: name.as_bytes().to_vec(),
                expires: Some(now + NODE_CERT_VALIDITY),
            });
        }
        let mut event = AuditEvent::new(EventType::ResourceDelete, true, now)
            .user(caller.name())
            .resource(kind.as_str(), name)
            .message(format!(
                "{kind} {name:?} removed; its key is refused from now on"
            ))
            .remote_addr(caller.peer.addr.ip().to_string());
        set_submitter(&mut event, kind, name);
        match self.audit.write_with(conditions, ops, event).await {
            Ok(_) => Ok(()),
            Err(StoreError::ConditionFailed { .. }) => Err(ApiError::Conflict(format!(
                "{kind} {name:?} changed meanwhile; try again"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Live nodes, by name (all of them: callers that list for a user filter with
    /// [`dt_authz::may_list`], see [`Self::list_nodes_for`]).
    pub async fn list_nodes(&self) -> ApiResult<Vec<NodeRecord>> {
        self.list_services(ServiceKind::Node).await
    }

    /// Live nodes the roles may reach (`dtsh ls`).
    pub async fn list_nodes_for(&self, roles: &[Role]) -> ApiResult<Vec<NodeRecord>> {
        let mut nodes = self.list_nodes().await?;
        nodes.retain(|n| dt_authz::may_list(roles, ServiceKind::Node, &n.labels));
        Ok(nodes)
    }

    /// Resources of `kind` served right now (every one; see [`Self::list_served_for`]),
    /// by name, then serving service.
    pub async fn list_served(&self, kind: ServiceKind) -> ApiResult<Vec<ServedResource>> {
        let mut out: Vec<ServedResource> = self
            .list_services(kind)
            .await?
            .iter()
            .flat_map(NodeRecord::served)
            .collect();
        out.sort_by(|a, b| (&a.resource.name, &a.service).cmp(&(&b.resource.name, &b.service)));
        Ok(out)
    }

    /// Resources of `kind` served right now that the roles may reach.
    pub async fn list_served_for(
        &self,
        kind: ServiceKind,
        roles: &[Role],
    ) -> ApiResult<Vec<ServedResource>> {
        let mut out = self.list_served(kind).await?;
        out.retain(|r| dt_authz::may_list(roles, kind, &r.resource.labels));
        Ok(out)
    }

    /// Live records of the joined services of `kind`, by name.
    async fn list_services(&self, kind: ServiceKind) -> ApiResult<Vec<NodeRecord>> {
        let prefix = keys::service_records_prefix(kind);
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self.backend.range(&prefix, cursor.as_deref(), 1000).await?;
            for item in page.items {
                match serde_json::from_slice::<NodeRecord>(&item.value) {
                    Ok(r) if r.kind == kind => out.push(r),
                    Ok(_) => {
                        tracing::warn!(key = %item.key, "skipping a service record of another kind")
                    }
                    Err(e) => {
                        tracing::warn!(key = %item.key, error = %e, "skipping unreadable node record")
                    }
                }
            }
            match page.next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The stored documents under the watched prefixes, as they are stored.
    async fn cluster_snapshot(&self) -> ApiResult<Vec<pb::ResourceJson>> {
        let mut out = Vec::new();
        for prefix in watched_prefixes() {
            let mut cursor: Option<String> = None;
            loop {
                let page = self.backend.range(&prefix, cursor.as_deref(), 1000).await?;
                for item in page.items {
                    if let Some((kind, _)) = kind_of_key(&item.key) {
                        out.push(pb::ResourceJson {
                            kind: kind.as_str().into(),
                            json: String::from_utf8_lossy(&item.value).into_owned(),
                        });
                    }
                }
                match page.next {
                    Some(n) => cursor = Some(n),
                    None => break,
                }
            }
        }
        Ok(out)
    }

    /// Record events an access point observed, as that access point.
    pub async fn submit_node_events(
        &self,
        node: &dt_ca::NodeIdentity,
        peer: &Peer,
        events: Vec<String>,
    ) -> ApiResult<u32> {
        if events.len() > MAX_EVENTS_PER_SUBMIT {
            return Err(ApiError::InvalidArgument(format!(
                "at most {MAX_EVENTS_PER_SUBMIT} events per call"
            )));
        }
        let mut parsed = Vec::with_capacity(events.len());
        for json in &events {
            if json.len() > MAX_EVENT_JSON {
                return Err(ApiError::InvalidArgument("audit event is too large".into()));
            }
            let mut e: AuditEvent = serde_json::from_str(json)
                .map_err(|e| ApiError::InvalidArgument(format!("malformed audit event: {e}")))?;
            if !NODE_EVENTS.contains(&e.event) {
                return Err(ApiError::PermissionDenied(format!(
                    "access points may not submit {} events",
                    e.event
                )));
            }
            e.code = e.event.code(e.success);
            set_submitter(&mut e, node.kind, &node.name);
            e.id.clear();
            e.prev_hash.clear();
            e.hash.clear();
            parsed.push(e);
        }
        let n = parsed.len() as u32;
        // One transaction for the whole batch (chained in order): an access point that
        // audits every statement sends hundreds at a time, and a commit each would cap it.
        if !parsed.is_empty() {
            self.audit
                .write_with_events(Vec::new(), Vec::new(), parsed)
                .await?;
        }
        tracing::debug!(node = %node.name, from = %peer.addr, n, "node audit events recorded");
        Ok(n)
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::ClusterEvent, Status>> + Send>>;

#[tonic::async_trait]
impl NodeService for GrpcNodes {
    async fn join_node(
        &self,
        req: Request<pb::JoinNodeRequest>,
    ) -> Result<Response<pb::JoinNodeResponse>, Status> {
        let peer = peer_of(&req)?;
        Ok(Response::new(
            self.srv.join_node(req.into_inner(), &peer).await?,
        ))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let peer = peer_of(&req)?;
        let node = node_of(&peer)?;
        self.srv
            .node_heartbeat(&node, &peer, req.into_inner())
            .await?;
        Ok(Response::new(pb::HeartbeatResponse {}))
    }

    async fn list_nodes(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let caller = self.srv.caller(peer_of(&req)?).await?;
        let nodes = self
            .srv
            .list_nodes_for(&caller.roles)
            .await?
            .into_iter()
            .map(|n| pb::NodeInfo {
                name: n.name,
                addr: n.addr,
                labels: n.labels.into_iter().collect(),
                version: n.version,
                last_heartbeat_unix: n.last_heartbeat.unix_timestamp(),
            })
            .collect();
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn list_served_resources(
        &self,
        req: Request<pb::ListServedResourcesRequest>,
    ) -> Result<Response<pb::ListServedResourcesResponse>, Status> {
        let caller = self.srv.caller(peer_of(&req)?).await?;
        let kind = match ServiceKind::parse(&req.get_ref().kind) {
            Some(k) if k.is_access_point() => k,
            _ => {
                return Err(ApiError::InvalidArgument(format!(
                    "kind {:?}: list node, db, kube, app or desktop",
                    req.get_ref().kind
                ))
                .into());
            }
        };
        let resources = self
            .srv
            .list_served_for(kind, &caller.roles)
            .await?
            .into_iter()
            .map(|r| pb::ServedResourceInfo {
                resource: Some(pb::ServedResource {
                    kind: r.kind.as_str().into(),
                    name: r.resource.name,
                    labels: r.resource.labels.into_iter().collect(),
                    addr: r.resource.addr,
                    protocol: r.resource.protocol,
                    description: r.resource.description,
                }),
                service: r.service,
                version: r.version,
                last_heartbeat_unix: r.last_heartbeat.unix_timestamp(),
            })
            .collect();
        Ok(Response::new(pb::ListServedResourcesResponse { resources }))
    }

    type WatchClusterStream = WatchStream;

    async fn watch_cluster(
        &self,
        req: Request<pb::WatchClusterRequest>,
    ) -> Result<Response<Self::WatchClusterStream>, Status> {
        let peer = peer_of(&req)?;
        let node = access_point_of(self.srv.live_node(&peer).await?, "the cluster watch")?;
        let srv = self.srv.clone();
        // Watch first, then read: a change between the two arrives as a change after the
        // snapshot, and applying it twice is harmless (puts replace, deletes remove).
        let mut watcher = srv
            .backend
            .watch(watched_prefixes())
            .await
            .map_err(ApiError::from)?;
        match watcher.recv().await {
            Some(WatchEvent::Init { .. }) => {}
            _ => {
                return Err(Status::unavailable(
                    "the auth service is shutting down; retry",
                ));
            }
        }
        let snapshot = srv.cluster_snapshot().await?;
        let (tx, rx) = mpsc::channel::<Result<pb::ClusterEvent, Status>>(64);
        tokio::spawn(async move {
            let first = pb::ClusterEvent {
                r#type: pb::cluster_event::Type::Snapshot as i32,
                resources: snapshot,
                server_time_unix_ms: now_ms(),
                ..Default::default()
            };
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            tracing::debug!(node = %node.name, "cluster watch started");
            let mut keepalive = tokio::time::interval(WATCH_KEEPALIVE);
            keepalive.tick().await;
            loop {
                let msg = tokio::select! {
                    _ = tx.closed() => break,
                    _ = keepalive.tick() => pb::ClusterEvent {
                        r#type: pb::cluster_event::Type::Keepalive as i32,
                        server_time_unix_ms: now_ms(),
                        ..Default::default()
                    },
                    ev = watcher.recv() => match ev {
                        None => {
                            let _ = tx
                                .send(Err(Status::unavailable("the cluster watch ended; reconnect")))
                                .await;
                            break;
                        }
                        Some(WatchEvent::Init { .. }) => continue,
                        Some(WatchEvent::Change { kind, item }) => {
                            let Some((k, name)) = kind_of_key(&item.key) else { continue };
                            match kind {
                                EventKind::Put => pb::ClusterEvent {
                                    r#type: pb::cluster_event::Type::Put as i32,
                                    resources: vec![pb::ResourceJson {
                                        kind: k.as_str().into(),
                                        json: String::from_utf8_lossy(&item.value).into_owned(),
                                    }],
                                    kind: k.as_str().into(),
                                    name: name.to_string(),
                                    server_time_unix_ms: now_ms(),
                                },
                                EventKind::Delete => pb::ClusterEvent {
                                    r#type: pb::cluster_event::Type::Delete as i32,
                                    kind: k.as_str().into(),
                                    name: name.to_string(),
                                    server_time_unix_ms: now_ms(),
                                    ..Default::default()
                                },
                            }
                        }
                    },
                };
                if tx.send(Ok(msg)).await.is_err() {
                    break;
                }
            }
            tracing::debug!(node = %node.name, "cluster watch ended");
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn submit_audit_events(
        &self,
        req: Request<pb::SubmitAuditEventsRequest>,
    ) -> Result<Response<pb::SubmitAuditEventsResponse>, Status> {
        let peer = peer_of(&req)?;
        let node = access_point_of(self.srv.live_node(&peer).await?, "audit submission")?;
        let accepted = self
            .srv
            .submit_node_events(&node, &peer, req.into_inner().events)
            .await?;
        Ok(Response::new(pb::SubmitAuditEventsResponse { accepted }))
    }

    async fn add_bot(
        &self,
        req: Request<pb::AddBotRequest>,
    ) -> Result<Response<pb::AddBotResponse>, Status> {
        let caller = self.srv.caller(peer_of(&req)?).await?;
        Ok(Response::new(
            self.srv.add_bot(&caller, req.into_inner()).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watched_keys_map_to_kinds() {
        assert_eq!(
            kind_of_key("/resources/lock/abc"),
            Some((Kind::Lock, "abc"))
        );
        assert_eq!(
            kind_of_key("/resources/cluster_auth_preference/cluster-auth-preference"),
            Some((Kind::ClusterAuthPreference, "cluster-auth-preference"))
        );
        assert_eq!(kind_of_key("/resources/user/alice"), None);
    }

    #[test]
    fn addresses_and_labels() {
        assert_eq!(addr_host("127.0.0.1:3022").unwrap(), "127.0.0.1");
        assert_eq!(addr_host("[::1]:22").unwrap(), "::1");
        assert!(addr_host("nohost").is_err());
        assert!(addr_host(":22").is_err());
        let mut l = BTreeMap::new();
        l.insert("env".to_string(), "prod".to_string());
        assert!(check_labels(&l).is_ok());
        l.insert("bad key".to_string(), "x".to_string());
        assert!(check_labels(&l).is_err());
    }
}
