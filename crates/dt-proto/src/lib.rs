//! The gRPC wire: generated prost/tonic types for the devtrust API. Prost types stop at the
//! gRPC edge — the auth service and the client convert to `dt-types` right here or at their
//! handlers, and nothing else in the workspace names them.

#[allow(clippy::all, clippy::unwrap_used, clippy::panic)]
pub mod v1 {
    tonic::include_proto!("devtrust.v1");
}
