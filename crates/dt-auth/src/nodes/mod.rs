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

mod checks;
mod error;
mod events;
mod grpc;
mod heartbeat;
mod identity;
mod join;
mod listing;
mod records;
mod removal;
pub(crate) mod watch;

pub use error::NodeError;
pub use grpc::GrpcNodes;
pub use records::{NodeRecord, NodeRegistration, ServedResource, ServedResourceRecord};
pub use watch::{WATCH_KEEPALIVE, watched_prefixes};

/// Node records: `/nodes/<name>` → [`NodeRecord`] JSON, expiring without heartbeats.
pub use crate::keys::NODES_PREFIX;
/// How long node certificates (SSH host and X.509 client) are valid.
pub const NODE_CERT_VALIDITY: time::Duration = time::Duration::days(365);
