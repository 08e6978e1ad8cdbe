//! The access-point runtime: what every devtrust access point (the SSH node, and the
//! database, Kubernetes, app and desktop access points) runs on, so that none of them
//! re-implements joining, the cluster view, the decision, ending sessions or audit.
//!
//! - **Join** with a typed join token (`node`, `db`, `kube`, `app`, `desktop`, `mdm`) and keep
//!   the identity in the data dir ([`identity`], [`runtime::join`]).
//! - **Heartbeat** the resources served, with their labels, so `dtsh` lists them
//!   ([`runtime::Served`]).
//! - **The watched cluster view** (roles, locks, the cluster auth preference; revoked devices
//!   are locks) that fails closed while not loaded, on unreadable documents and, under
//!   `locking_mode: strict`, when stale ([`view`], [`runtime`]).
//! - **One decision** per request through `dt_authz::decide`, for every kind ([`access`]).
//! - **Live sessions** end with the lock's message when a matching lock appears
//!   ([`sessions`]).
//! - **Audit** through an on-disk spool that survives a crash of the access point and a
//!   restart of the auth service ([`audit`]).
//!
//! It never depends on client device code (`dt-device`) or on storage drivers; a test in
//! `dt-types` checks it.

pub mod access;
pub mod audit;
pub mod client;
pub mod error;
pub mod identity;
pub mod runtime;
pub mod sessions;
pub mod view;

pub use error::AgentError;
pub use runtime::{JoinRequest, Runtime, RuntimeConfig, Served};
