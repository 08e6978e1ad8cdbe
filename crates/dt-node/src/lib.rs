//! devtrust's SSH access point (`devtrust node start`) and its agentless OpenSSH helper
//! (`devtrust openssh-principals`).
//!
//! Why a crate of its own: it is the only place that links an SSH server (russh) and spawns
//! login sessions, and it must stay free of client device code (it never depends on
//! `dt-device`; a test checks it). Everything that is not SSH (joining, the watched view of
//! the cluster, the decision, ending sessions on a lock, the audit spool) is the shared
//! access-point runtime, `dt-agent`: this crate is the SSH front on it.
//!
//! What it guarantees:
//! - **Certificates only.** A login needs an OpenSSH user certificate that chains to the
//!   cluster's user CA, is a user certificate, is within its validity and names the login
//!   as a principal ([`access::authenticate`]; russh checks none of these itself).
//! - **One decision.** Access is `dt_authz::check_ssh` over the node's live view of the
//!   cluster ([`access::decide`]): locks, the cluster's device-trust mode, roles' logins and
//!   node labels (deny first), every granting role's device-trust mode, bots apart from
//!   humans. A device counts only when the certificate carried all three device values and
//!   was verified by the user CA. Fail closed: no view yet, an unreadable role, lock or
//!   cluster preference, an unknown mode, or (with `locking_mode: strict`) a stale view all
//!   deny.
//! - **Live view.** The node watches the auth service (snapshot, then changes, with
//!   keepalives) and reconnects with backoff ([`agent`]); locks that arrive end the live
//!   sessions they target ([`server::enforce_locks`]).
//! - **Audit.** session.start, exec, session.end, session.terminate and access.denied, with
//!   the device (id, asset tag, credential id) when the certificate had one ([`audit`]).
//!
//! What it deliberately does not do: port, agent or X11 forwarding, subsystems (sftp),
//! session recording, PAM, supplementary groups of the login user (see [`users`]), or
//! rotating its own certificates (they are valid for a year; join again to renew).
//!
//! Run as root, the node starts sessions as the login user. Run as an ordinary user, it can
//! serve only that user's own login ([`users::RunAs`]).

pub mod access;
pub mod agent;
pub mod metrics;
pub mod openssh;
pub mod server;
pub mod session;
pub mod users;
pub mod view;

// The access-point runtime this node runs on (joining, the view, audit, identity).
/// The node's errors are the runtime's (SSH failures are its `Protocol` errors).
pub use dt_agent::AgentError as NodeError;
pub use dt_agent::{audit, identity};
