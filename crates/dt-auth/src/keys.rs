//! The storage key layout, in one place. Every key the auth service reads or writes is built
//! here, so indexes and their records can't drift apart.

use dt_types::Kind;

pub const CLUSTER_NAME: &str = "/cluster/name";
pub const USER_CA: &str = "/cluster/ca/user";
pub const HOST_CA: &str = "/cluster/ca/host";
pub const AUDIT_HEAD: &str = "/audit/head";
pub const AUDIT_EVENTS: &str = "/audit/events/";

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

/// Join tokens (node, bot), by SHA-256 hex of the token → the token resource name.
pub fn join_token_index(hash: &str) -> String {
    format!("/index/join_token/{hash}")
}

pub fn audit_event(seq: u64) -> String {
    format!("{AUDIT_EVENTS}{seq:020}")
}
