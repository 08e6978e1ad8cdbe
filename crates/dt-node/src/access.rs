//! The two checks every SSH login passes, both without I/O:
//!
//! 1. [`authenticate`]: the certificate chains to the user CA, is a user certificate, is
//!    within its validity, carries a well-formed devtrust identity, and names the requested
//!    login as a principal (russh checks none of the CA, the type or the principals).
//! 2. [`decide`]: the runtime's decision ([`dt_agent::access::decide`]) for an SSH target:
//!    the certificate has not expired since the connection was authenticated (every channel
//!    asks again), then `dt_authz::decide` over the node's view, with `{{internal.logins}}`
//!    taken from the certificate's login traits (never its principals): locks, the cluster's
//!    device-trust mode, roles' logins and node labels (deny first), and the device-trust
//!    mode of every granting role, with bots told apart from humans. Anything the view
//!    cannot answer (not loaded yet, unreadable documents, stale under `locking_mode:
//!    strict`) denies.
//!
//! A device counts as verified only when the certificate carried all three device values
//! **and** was verified against the user CA: `authenticate` returns the identity only after
//! that check, so a forged certificate never reaches `decide`.
//!
//! [`Denial::description`] is the text an SSH client sees (the description of a channel open
//! failure with reason `administratively prohibited`); `dtsh` turns it into the messages of
//! DESIGN.md §6.

use std::collections::BTreeMap;

use dt_authz::Target;
use dt_ca::{Identity, SshCertRefusal, SshUserCaKey};
use dt_types::NodeName;
use ssh_key::Certificate;
use time::OffsetDateTime;

pub use dt_agent::access::{
    ACCESS_DENIED_PREFIX, Denial, Freshness, TRUSTED_DEVICE_SUFFIX, device_info, principal, subject,
};

use crate::view::ClusterView;

/// The node an access decision is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFacts {
    /// The node's name, as its host identity (issued at join) states it.
    pub name: NodeName,
    pub labels: BTreeMap<String, String>,
}

impl NodeFacts {
    /// The decision's target: `login` on this node.
    pub fn target<'a>(&'a self, login: &'a str) -> Target<'a> {
        Target::Ssh {
            node: self.name.as_str(),
            labels: &self.labels,
            login,
        }
    }
}

/// Check the certificate for `login`. The error is the audit message.
pub fn authenticate(
    ca: &SshUserCaKey,
    cert: &Certificate,
    login: &str,
    now: OffsetDateTime,
) -> Result<Identity, String> {
    ca.verify_for_login(cert, login, now).map_err(|e| match e {
        SshCertRefusal::Certificate(ca_err) => format!("certificate refused: {ca_err}"),
        other @ SshCertRefusal::WrongPrincipal { .. } => format!("certificate refused: {other}"),
    })
}

/// The access decision for a verified identity asking for `login` on `node`.
pub fn decide(
    view: &ClusterView,
    id: &Identity,
    login: &str,
    node: &NodeFacts,
    now: OffsetDateTime,
    freshness: Freshness,
) -> Result<(), Denial> {
    dt_agent::access::decide(view, id, &node.target(login), now, freshness)
}
