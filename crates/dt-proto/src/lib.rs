//! The gRPC wire of devtrust: the generated prost/tonic types of `proto/*.proto`, and the
//! only place they meet the workspace's own types.
//!
//! Why a crate of its own: it is the one crate that knows both protobuf and the domain
//! (`dt-types` resources, `dt-ceremony` messages). Every conversion is a `TryFrom` here
//! that checks shapes (required fields, known enum values, a set `oneof`) and sizes (the
//! limits of `dt_ceremony::limits`, the same ones the state machines enforce), and fails
//! with a typed [`ProtoError`]. The auth service and the clients convert at their gRPC
//! handlers and never pass prost types further in; the state machines never see them.
//!
//! What it deliberately does not do: decide anything. A message that converts is
//! well-formed, not accepted; the state machines and services judge it.
//!
//! Modules: [`v1`] (generated), [`device`] (the device resource and inventory calls),
//! [`ceremony`] (the two device ceremonies), [`resource`] (other resources as canonical
//! documents), [`error`].

#[allow(clippy::all, clippy::unwrap_used, clippy::panic)]
pub mod v1 {
    tonic::include_proto!("devtrust.v1");
}

pub mod ceremony;
pub mod chain;
pub mod device;
pub mod error;
pub mod mdm;
pub mod resource;

mod time_conv;

pub use error::ProtoError;
