//! Typed audit events (DESIGN.md §7): what happened, to whom, on which device, and whether it
//! succeeded. The audit trail is separate from diagnostics logs; events are persisted by the
//! auth service and read back with `dtctl events ls`.
//!
//! Nothing secret belongs here: an event never holds a password, token, key or signature.
//! Fields are typed (no free-form maps) so that a new field is a deliberate decision.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Every kind of audit event, with its stable wire name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "user.login")]
    UserLogin,
    #[serde(rename = "user.create")]
    UserCreate,
    #[serde(rename = "user.update")]
    UserUpdate,
    #[serde(rename = "user.delete")]
    UserDelete,
    #[serde(rename = "user.password_change")]
    UserPasswordChange,
    #[serde(rename = "resource.create")]
    ResourceCreate,
    #[serde(rename = "resource.update")]
    ResourceUpdate,
    #[serde(rename = "resource.delete")]
    ResourceDelete,
    #[serde(rename = "cert.create")]
    CertCreate,
    #[serde(rename = "join_token.create")]
    JoinTokenCreate,
    #[serde(rename = "device.create")]
    DeviceCreate,
    #[serde(rename = "device.delete")]
    DeviceDelete,
    #[serde(rename = "device.token.create")]
    DeviceTokenCreate,
    #[serde(rename = "device.enroll")]
    DeviceEnroll,
    #[serde(rename = "device.authenticate")]
    DeviceAuthenticate,
    #[serde(rename = "device.update")]
    DeviceUpdate,
    #[serde(rename = "device.webtoken.create")]
    DeviceWebTokenCreate,
    #[serde(rename = "device.authenticate.confirm")]
    DeviceAuthenticateConfirm,
    #[serde(rename = "node.join")]
    NodeJoin,
    #[serde(rename = "session.start")]
    SessionStart,
    #[serde(rename = "session.end")]
    SessionEnd,
    #[serde(rename = "session.terminate")]
    SessionTerminate,
    #[serde(rename = "exec")]
    Exec,
    #[serde(rename = "access.denied")]
    AccessDenied,
    /// A database session began (after the access decision allowed it).
    #[serde(rename = "db.session.start")]
    DbSessionStart,
    #[serde(rename = "db.session.end")]
    DbSessionEnd,
    /// An app session began: the first request of a user's certificate (or app session)
    /// to an app, after the decision allowed it.
    #[serde(rename = "app.session.start")]
    AppSessionStart,
    /// One request forwarded to an app (method, path, status).
    #[serde(rename = "app.session.request")]
    AppSessionRequest,
    /// One statement a client sent (PostgreSQL Query or Parse; MySQL COM_QUERY or
    /// COM_STMT_PREPARE), its text in `command`.
    #[serde(rename = "db.session.query")]
    DbSessionQuery,
    /// One request through a Kubernetes access point: verb, resource, namespace and the
    /// API server's response code.
    #[serde(rename = "kube.request")]
    KubeRequest,
    /// A `kubectl exec` (or attach, port-forward) stream through a Kubernetes access point.
    #[serde(rename = "kube.exec.start")]
    KubeExecStart,
    #[serde(rename = "kube.exec.end")]
    KubeExecEnd,
    /// A desktop session began (after the access decision allowed it), with the device.
    #[serde(rename = "desktop.session.start")]
    DesktopSessionStart,
    /// A desktop session ended; `message` says why (a lock, the session command exiting).
    #[serde(rename = "desktop.session.end")]
    DesktopSessionEnd,
    /// Clipboard text crossed a desktop session: direction and size in `message`, never the
    /// text.
    #[serde(rename = "desktop.clipboard")]
    DesktopClipboard,
    #[serde(rename = "lock.create")]
    LockCreate,
    #[serde(rename = "lock.delete")]
    LockDelete,
}

impl EventType {
    pub const ALL: [EventType; 37] = [
        EventType::UserLogin,
        EventType::UserCreate,
        EventType::UserUpdate,
        EventType::UserDelete,
        EventType::UserPasswordChange,
        EventType::ResourceCreate,
        EventType::ResourceUpdate,
        EventType::ResourceDelete,
        EventType::CertCreate,
        EventType::JoinTokenCreate,
        EventType::DeviceCreate,
        EventType::DeviceDelete,
        EventType::DeviceTokenCreate,
        EventType::DeviceEnroll,
        EventType::DeviceAuthenticate,
        EventType::DeviceUpdate,
        EventType::DeviceWebTokenCreate,
        EventType::DeviceAuthenticateConfirm,
        EventType::NodeJoin,
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
        EventType::LockCreate,
        EventType::LockDelete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::UserLogin => "user.login",
            EventType::UserCreate => "user.create",
            EventType::UserUpdate => "user.update",
            EventType::UserDelete => "user.delete",
            EventType::UserPasswordChange => "user.password_change",
            EventType::ResourceCreate => "resource.create",
            EventType::ResourceUpdate => "resource.update",
            EventType::ResourceDelete => "resource.delete",
            EventType::CertCreate => "cert.create",
            EventType::JoinTokenCreate => "join_token.create",
            EventType::DeviceCreate => "device.create",
            EventType::DeviceDelete => "device.delete",
            EventType::DeviceTokenCreate => "device.token.create",
            EventType::DeviceEnroll => "device.enroll",
            EventType::DeviceAuthenticate => "device.authenticate",
            EventType::DeviceUpdate => "device.update",
            EventType::DeviceWebTokenCreate => "device.webtoken.create",
            EventType::DeviceAuthenticateConfirm => "device.authenticate.confirm",
            EventType::NodeJoin => "node.join",
            EventType::SessionStart => "session.start",
            EventType::SessionEnd => "session.end",
            EventType::SessionTerminate => "session.terminate",
            EventType::Exec => "exec",
            EventType::AccessDenied => "access.denied",
            EventType::DbSessionStart => "db.session.start",
            EventType::DbSessionEnd => "db.session.end",
            EventType::DbSessionQuery => "db.session.query",
            EventType::KubeRequest => "kube.request",
            EventType::KubeExecStart => "kube.exec.start",
            EventType::KubeExecEnd => "kube.exec.end",
            EventType::AppSessionStart => "app.session.start",
            EventType::AppSessionRequest => "app.session.request",
            EventType::DesktopSessionStart => "desktop.session.start",
            EventType::DesktopSessionEnd => "desktop.session.end",
            EventType::DesktopClipboard => "desktop.clipboard",
            EventType::LockCreate => "lock.create",
            EventType::LockDelete => "lock.delete",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Stable event code; the last letter is `I` (info) on success, `W` (warning) on
    /// failure. Device events use DT001..DT008 as DESIGN.md §7 fixes.
    pub fn code(self, success: bool) -> String {
        let base = match self {
            EventType::DeviceCreate => "DT001",
            EventType::DeviceDelete => "DT002",
            EventType::DeviceTokenCreate => "DT003",
            EventType::DeviceEnroll => "DT004",
            EventType::DeviceAuthenticate => "DT005",
            EventType::DeviceUpdate => "DT006",
            EventType::DeviceWebTokenCreate => "DT007",
            EventType::DeviceAuthenticateConfirm => "DT008",
            EventType::UserLogin => "U1000",
            EventType::UserCreate => "U1001",
            EventType::UserUpdate => "U1002",
            EventType::UserDelete => "U1003",
            EventType::UserPasswordChange => "U1004",
            EventType::ResourceCreate => "R2001",
            EventType::ResourceUpdate => "R2002",
            EventType::ResourceDelete => "R2003",
            EventType::CertCreate => "C3000",
            EventType::JoinTokenCreate => "J4000",
            EventType::NodeJoin => "J4001",
            EventType::SessionStart => "S5000",
            EventType::SessionEnd => "S5001",
            EventType::SessionTerminate => "S5002",
            EventType::Exec => "S5003",
            EventType::AccessDenied => "A6000",
            EventType::DbSessionStart => "DB7000",
            EventType::DbSessionEnd => "DB7001",
            EventType::DbSessionQuery => "DB7002",
            EventType::KubeRequest => "K8000",
            EventType::KubeExecStart => "K8001",
            EventType::KubeExecEnd => "K8002",
            EventType::AppSessionStart => "AP8000",
            EventType::AppSessionRequest => "AP8001",
            EventType::DesktopSessionStart => "DK9000",
            EventType::DesktopSessionEnd => "DK9001",
            EventType::DesktopClipboard => "DK9002",
            EventType::LockCreate => "L7000",
            EventType::LockDelete => "L7001",
        };
        format!("{base}{}", if success { "I" } else { "W" })
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The device an event concerns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceInfo {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub device_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub asset_tag: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub os_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub credential_id: String,
}

/// A certificate an event concerns (never the certificate itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertInfo {
    /// `user`, `bot`, `host`, `tls-server`.
    pub cert_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub serial: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logins: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

/// A joined service an event concerns, by kind and name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceInfo {
    pub kind: crate::ServiceKind,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    /// Unique id; assigned by the sink if empty.
    #[serde(default)]
    pub id: String,
    pub event: EventType,
    pub code: String,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub success: bool,
    /// The acting user (or `system`, or the node for node events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Why it failed, or a human summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<CertInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The joined service (other than an SSH node, which is `node`) that observed or
    /// submitted the event: a database, Kubernetes, app or desktop access point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_addr: Option<String>,
    /// Hash chain: hex SHA-256 of the previous event's `hash` (empty for the first).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prev_hash: String,
    /// Hex SHA-256 over `prev_hash` and this event without `hash` (see [`AuditEvent::chain_hash`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
}

impl AuditEvent {
    pub fn new(event: EventType, success: bool, time: OffsetDateTime) -> Self {
        AuditEvent {
            id: String::new(),
            event,
            code: event.code(success),
            time,
            success,
            user: None,
            message: None,
            resource_kind: None,
            resource_name: None,
            device: None,
            cert: None,
            login: None,
            node: None,
            service: None,
            session_id: None,
            command: None,
            exit_code: None,
            lock: None,
            remote_addr: None,
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }
    pub fn resource(mut self, kind: impl Into<String>, name: impl Into<String>) -> Self {
        self.resource_kind = Some(kind.into());
        self.resource_name = Some(name.into());
        self
    }
    pub fn device(mut self, device: DeviceInfo) -> Self {
        self.device = Some(device);
        self
    }
    pub fn cert(mut self, cert: CertInfo) -> Self {
        self.cert = Some(cert);
        self
    }
    pub fn remote_addr(mut self, addr: impl Into<String>) -> Self {
        self.remote_addr = Some(addr.into());
        self
    }

    /// The hash this event should carry given `prev_hash`: SHA-256 over the canonical JSON
    /// of the event with `hash` emptied. Tampering with any stored event breaks the chain
    /// from there on.
    pub fn chain_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        // Hashed with `hash` empty: the appender calls this on an event whose hash is not
        // set yet (no copy needed); a verifier passes the stored event.
        let json = if self.hash.is_empty() {
            serde_json::to_vec(self)
        } else {
            let mut copy = self.clone();
            copy.hash.clear();
            serde_json::to_vec(&copy)
        };
        hex::encode(Sha256::digest(json.unwrap_or_default()))
    }

    /// This event serialized once, without its place in the chain (id, `prev_hash`, `hash`),
    /// for [`UnchainedJson::chain`]: what an appender prepares before it holds the chain.
    pub fn unchained_json(&self) -> Result<UnchainedJson, serde_json::Error> {
        let json = if self.id.is_empty() && self.prev_hash.is_empty() && self.hash.is_empty() {
            serde_json::to_vec(self)?
        } else {
            let mut copy = self.clone();
            copy.id.clear();
            copy.prev_hash.clear();
            copy.hash.clear();
            serde_json::to_vec(&copy)?
        };
        // `{"id":"",` then the other fields and `}`: `id` is the first field and always
        // written; `prev_hash` and `hash`, the last two, are left out when empty.
        let middle = json
            .strip_prefix(UNCHAINED_HEAD)
            .and_then(|rest| rest.strip_suffix(b"}"))
            .filter(|m| !m.is_empty())
            .ok_or_else(|| {
                <serde_json::Error as serde::ser::Error>::custom(
                    "an audit event did not serialize as {\"id\":\"\",...}",
                )
            })?;
        Ok(UnchainedJson {
            middle: middle.to_vec(),
        })
    }
}

const UNCHAINED_HEAD: &[u8] = b"{\"id\":\"\",";

/// An audit event's JSON without its id, `prev_hash` and `hash`
/// ([`AuditEvent::unchained_json`]). [`chain`](Self::chain) gives the stored JSON and the
/// hash exactly as setting those fields, [`AuditEvent::chain_hash`] and `serde_json::to_vec`
/// would, with a copy and one SHA-256 instead of two serializations: so the part of an
/// append that must wait for the chain head is short.
#[derive(Clone, Debug)]
pub struct UnchainedJson {
    /// The fields after `"id":"",` up to the closing brace (never empty).
    middle: Vec<u8>,
}

impl UnchainedJson {
    /// The event's hash and its stored JSON, as event `id` after `prev_hash` (empty for the
    /// first event of a chain). `id` and `prev_hash` must need no JSON escaping (the sink's
    /// ids are digits, hashes are hex); other text is refused with `None`.
    pub fn chain(&self, id: &str, prev_hash: &str) -> Option<(String, Vec<u8>)> {
        use sha2::{Digest, Sha256};
        let plain = |t: &str| t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !plain(id) || !plain(prev_hash) {
            return None;
        }
        let mut json = Vec::with_capacity(self.middle.len() + id.len() + 2 * 64 + 40);
        json.extend_from_slice(b"{\"id\":\"");
        json.extend_from_slice(id.as_bytes());
        json.extend_from_slice(b"\",");
        json.extend_from_slice(&self.middle);
        if !prev_hash.is_empty() {
            json.extend_from_slice(b",\"prev_hash\":\"");
            json.extend_from_slice(prev_hash.as_bytes());
            json.push(b'"');
        }
        json.push(b'}');
        let hash = hex::encode(Sha256::digest(&json));
        json.pop();
        json.extend_from_slice(b",\"hash\":\"");
        json.extend_from_slice(hash.as_bytes());
        json.extend_from_slice(b"\"}");
        Some((hash, json))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_codes_are_unique() {
        let mut codes = std::collections::HashSet::new();
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
            assert!(codes.insert(t.code(true)), "duplicate code for {t}");
        }
        assert_eq!(EventType::DeviceEnroll.code(true), "DT004I");
        assert_eq!(EventType::DeviceEnroll.code(false), "DT004W");
    }

    /// The prepared path gives byte for byte what setting the fields, `chain_hash` and
    /// `to_vec` give, for events with few and with many fields, first in a chain or not.
    #[test]
    fn unchained_json_chains_like_the_event() {
        let t = OffsetDateTime::UNIX_EPOCH;
        let small = AuditEvent::new(EventType::UserLogin, false, t);
        let full = AuditEvent::new(EventType::DeviceAuthenticate, true, t)
            .user("al\"ice\\")
            .device(DeviceInfo {
                device_id: "d-1".into(),
                asset_tag: "tag \u{e9}\n".into(),
                ..Default::default()
            })
            .message("a \"quoted\" message </script>")
            .remote_addr("::1".to_string());
        let mut stale = full.clone();
        stale.id = "00000000000000000007".into();
        stale.prev_hash = "ab".repeat(32);
        stale.hash = "cd".repeat(32);
        for (event, prev) in [
            (&small, String::new()),
            (&small, "0f".repeat(32)),
            (&full, String::new()),
            (&full, "e3".repeat(32)),
            (&stale, "12".repeat(32)),
        ] {
            let id = "00000000000000000042";
            let mut expected = event.clone();
            expected.id = id.into();
            expected.prev_hash = prev.clone();
            expected.hash = String::new();
            expected.hash = expected.chain_hash();
            let (hash, json) = event.unchained_json().unwrap().chain(id, &prev).unwrap();
            assert_eq!(hash, expected.hash);
            assert_eq!(
                String::from_utf8(json.clone()).unwrap(),
                String::from_utf8(serde_json::to_vec(&expected).unwrap()).unwrap()
            );
            let back: AuditEvent = serde_json::from_slice(&json).unwrap();
            assert_eq!(back.chain_hash(), back.hash, "the stored event verifies");
        }
        let prepared = small.unchained_json().unwrap();
        assert!(
            prepared.chain("4\"2", "").is_none(),
            "an id that needs escaping"
        );
        assert!(prepared.chain("42", "a\\b").is_none());
    }

    #[test]
    fn chain_hash_changes_with_content() {
        let t = OffsetDateTime::UNIX_EPOCH;
        let a = AuditEvent::new(EventType::UserLogin, true, t).user("alice");
        let b = AuditEvent::new(EventType::UserLogin, true, t).user("mallory");
        assert_ne!(a.chain_hash(), b.chain_hash());
        let mut c = a.clone();
        c.hash = "anything".into();
        assert_eq!(a.chain_hash(), c.chain_hash(), "hash field excluded");
    }
}
