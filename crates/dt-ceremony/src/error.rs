//! Error groups shared by both ceremonies, by blame (STYLE.md "Errors").
//!
//! The server halves' errors are `enroll::EnrollError` and `authn::AuthnError`; both embed
//! [`PeerMisbehaved`] for what a device did wrong. The client halves share [`ClientError`].
//! Every `Display` here is lowercase, says what to do next when there is something to do,
//! and is safe to send to the other side.

use dt_attest::p256::AttestError;

use crate::proof::ProverError;

/// A stable classification of a server-side ceremony error, for the one function per
/// edge that maps errors to the wire (gRPC status codes, HTTP statuses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The device sent something malformed or out of order.
    InvalidArgument,
    /// The device or user is not allowed (token, policy, proof, lock).
    PermissionDenied,
    /// The request is fine but the state forbids it (already enrolled, not enrolled...).
    FailedPrecondition,
    /// The server can't do this yet (TPM without a verifier).
    Unimplemented,
    /// The ceremony took too long.
    DeadlineExceeded,
    /// The server's own data is inconsistent; the log has the detail.
    Internal,
}

/// What the device (the peer of a server half) did wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerMisbehaved {
    #[error("unexpected {got} while waiting for {expected}: start the ceremony again")]
    UnexpectedMessage {
        expected: &'static str,
        got: &'static str,
    },
    #[error("{field} is {len} bytes, more than the {max} accepted")]
    OversizedField {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("invalid {field}: {why}")]
    InvalidField { field: &'static str, why: String },
    #[error("the challenge response is a {got} answer to a {expected} challenge")]
    WrongResponseKind {
        expected: &'static str,
        got: &'static str,
    },
    #[error("the device signature does not verify over this ceremony's challenge")]
    WrongSignature,
    #[error("the TPM returned the wrong activation secret: the EK and AK are not in the same TPM")]
    WrongActivationSecret,
    #[error("the device public key was refused: {0}")]
    InvalidPublicKey(AttestError),
    #[error("the certificates sent do not match the connection's identity: {0}")]
    CertificateMismatch(&'static str),
}

/// What the server (the peer of a client half) did wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServerMisbehaved {
    #[error("the server sent a {got} challenge for a {expected} credential")]
    WrongChallengeKind {
        expected: &'static str,
        got: &'static str,
    },
    #[error("the server sent a {len}-byte challenge; {expected} bytes are expected")]
    WrongChallengeLength { len: usize, expected: usize },
    #[error("the server's success message does not match this device: {0}")]
    SuccessMismatch(&'static str),
}

/// Errors of the client halves.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    ServerMisbehaved(#[from] ServerMisbehaved),
    #[error("the device credential could not answer the {request}: {source}")]
    Prover {
        request: &'static str,
        #[source]
        source: ProverError,
    },
    #[error("the device credential answered a {request} with a {got} proof")]
    WrongProofKind {
        request: &'static str,
        got: &'static str,
    },
    #[error("{field} is {len} bytes, more than the {max} the server accepts")]
    Oversized {
        field: &'static str,
        len: usize,
        max: usize,
    },
}
