//! The storage key layout, in one place. Every key the auth service reads or writes is built
//! here, so indexes and their records can't drift apart.

use dt_types::{Kind, ServiceKind};

pub const CLUSTER_NAME: &str = "/cluster/name";
pub const USER_CA: &str = "/cluster/ca/user";
pub const HOST_CA: &str = "/cluster/ca/host";
pub const DB_CA: &str = "/cluster/ca/db";
pub const JWT_CA: &str = "/cluster/ca/jwt";
pub const AUDIT_HEAD: &str = "/audit/head";
pub const AUDIT_EVENTS: &str = "/audit/events/";
/// Everything of the audit log: events, their indexes and the chain head.
pub const AUDIT_PREFIX: &str = "/audit/";
/// Rate-limit slots and counters.
pub const RATELIMIT_PREFIX: &str = "/ratelimit/";

/// Lookup indexes (device by tag, owner or credential, tokens, removed node keys): read
/// by key, never followed.
pub const LOOKUP_PREFIX: &str = "/index/";
/// Device resources: rewritten by every device authentication (about 3 KiB each).
pub const DEVICE_PREFIX: &str = "/resources/device/";

/// Written without change events (`dt_store::Tuning::unwatched_prefixes`): the most written
/// keys, which no watcher reads. A device authentication writes its device, a dozen audit
/// items and their indexes; a bulk import writes a device, its indexes and its event per
/// entry; with change rows, each device document was stored twice. Anything a node, the
/// cache or a second auth server must follow (roles, users, locks, settings: see
/// [`crate::cache::watched_prefixes`]) stays out of these prefixes, and the store refuses
/// a watch that overlaps them.
pub const UNWATCHED: [&str; 4] = [AUDIT_PREFIX, RATELIMIT_PREFIX, LOOKUP_PREFIX, DEVICE_PREFIX];

pub fn resource_prefix(kind: Kind) -> String {
    format!("/resources/{}/", kind.as_str())
}

pub fn resource(kind: Kind, name: &str) -> String {
    format!("/resources/{}/{name}", kind.as_str())
}

pub fn password(user: &str) -> String {
    format!("/secrets/password/{user}")
}

/// Signup / reset tokens, by SHA-256 hex of the token.
pub fn signup_token(hash: &str) -> String {
    format!("/secrets/signup/{hash}")
}

/// The live signup token of a user (one per user) → its hash, so a reset or a removal can
/// revoke it.
pub fn signup_token_index(user: &str) -> String {
    format!("/index/signup_token/{user}")
}

/// Join tokens (node, bot), by SHA-256 hex of the token → the token resource name.
pub fn join_token_index(hash: &str) -> String {
    format!("/index/join_token/{hash}")
}

/// The id of audit event `seq`: its sequence number in 20 zero-padded digits (every `u64`
/// fits), so ids sort as numbers do. Written digit by digit: the group commit makes one per
/// event and one per index entry, and `format!("{seq:020}")` cost more than the rest of it.
pub fn audit_event_id(seq: u64) -> String {
    let mut digits = [b'0'; 20];
    let mut n = seq;
    for d in digits.iter_mut().rev() {
        // `n % 10` is below 10.
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    digits.iter().map(|&d| char::from(d)).collect()
}

pub fn audit_event(seq: u64) -> String {
    [AUDIT_EVENTS, &audit_event_id(seq)].concat()
}

/// Device by (os, asset tag) → device id. The uniqueness of (os_type, asset_tag).
pub fn device_tag_index(os: dt_types::device::OsType, tag: &str) -> String {
    format!("/index/device_tag/{}/{tag}", os.as_str())
}

/// Devices by owner: `/index/device_owner/<owner>/<id>`.
pub fn device_owner_index(owner: &str, id: &str) -> String {
    format!("/index/device_owner/{owner}/{id}")
}

/// Device credential id → device id. Makes a credential usable by one device only.
pub fn device_credential_index(credential_id: &str) -> String {
    format!("/index/device_cred/{credential_id}")
}

/// Device credential public key (SHA-256 hex of its stored encoding) → device id. Makes one
/// key usable by one device only, whatever credential id a client announces.
pub fn device_key_index(key_hash: &str) -> String {
    format!("/index/device_key/{key_hash}")
}

/// Enrollment token record by SHA-256 hex of the token.
pub fn device_token(hash: &str) -> String {
    format!("/secrets/device_token/{hash}")
}

/// The live enrollment token of a device (one per device) → its hash.
pub fn device_token_index(device_id: &str) -> String {
    format!("/index/device_token/{device_id}")
}

/// A node's registration: the name bound to the key it first joined with (no expiry; `dtctl
/// rm node/NAME` removes it).
pub fn node_registration(name: &str) -> String {
    format!("/node_registrations/{name}")
}

/// Live SSH node records: `/nodes/<name>`, expiring without heartbeats.
pub const NODES_PREFIX: &str = "/nodes/";

/// Where the live records of joined services of `kind` are: SSH nodes keep the keys they
/// had before other kinds existed (`/nodes/`); every other kind has its own space
/// (`/services/<kind>/`), so a database and a node may share a name.
pub fn service_records_prefix(kind: ServiceKind) -> String {
    match kind {
        ServiceKind::Node => NODES_PREFIX.to_string(),
        other => format!("/services/{other}/"),
    }
}

/// The live record of the joined service `name` of `kind` (see [`service_records_prefix`]).
pub fn service_record(kind: ServiceKind, name: &str) -> String {
    format!("{}{name}", service_records_prefix(kind))
}

/// The registration (name bound to key) of a joined service: [`node_registration`] for SSH
/// nodes, `/service_registrations/<kind>/<name>` for the other kinds.
pub fn service_registration(kind: ServiceKind, name: &str) -> String {
    match kind {
        ServiceKind::Node => node_registration(name),
        other => format!("/service_registrations/{other}/{name}"),
    }
}

/// Keys of removed nodes (hex SHA-256 of the SPKI), refused until their certificates expire.
pub fn removed_node_key(key_sha256: &str) -> String {
    format!("/index/removed_node_key/{key_sha256}")
}

/// MDM sync state per source: `/mdm/sources/<name>` → `dt_types::mdm::SourceState` JSON.
pub const MDM_SOURCES_PREFIX: &str = "/mdm/sources/";
pub fn mdm_source(name: &str) -> String {
    format!("{MDM_SOURCES_PREFIX}{name}")
}

/// On-demand sync requests (`dtctl mdm sync`) with their progress: `/mdm/requests/<id>`.
pub const MDM_REQUESTS_PREFIX: &str = "/mdm/requests/";
pub fn mdm_request(id: &str) -> String {
    format!("{MDM_REQUESTS_PREFIX}{id}")
}

#[cfg(test)]
mod tests {

    /// The hand-written id is `{seq:020}`, at both ends of the range and between.
    #[test]
    fn audit_event_ids_are_twenty_zero_padded_digits() {
        for seq in [
            0,
            1,
            9,
            10,
            99_999,
            1 << 32,
            u64::MAX / 10,
            u64::MAX - 1,
            u64::MAX,
        ]
        .into_iter()
        .chain((0..64).map(|i| 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i + 1)))
        {
            assert_eq!(audit_event_id(seq), format!("{seq:020}"));
            assert_eq!(audit_event(seq), format!("{AUDIT_EVENTS}{seq:020}"));
        }
    }
    use super::*;

    #[test]
    fn device_prefix_is_the_device_resource_prefix() {
        assert_eq!(DEVICE_PREFIX, resource_prefix(Kind::Device));
        assert!(resource(Kind::Device, "d1").starts_with(DEVICE_PREFIX));
        assert!(device_tag_index(dt_types::device::OsType::Linux, "T").starts_with(LOOKUP_PREFIX));
    }

    /// What the cluster cache and the nodes follow must get change rows: a watched prefix
    /// inside (or around) an unwatched one would miss writes.
    #[test]
    fn nothing_watched_is_unwatched() {
        let watched = crate::cache::watched_prefixes()
            .into_iter()
            .chain(crate::nodes::watch::watched_prefixes());
        for w in watched {
            for u in UNWATCHED {
                assert!(
                    !w.starts_with(u) && !u.starts_with(w.as_str()),
                    "{w} overlaps the unwatched {u}"
                );
            }
        }
    }
}
