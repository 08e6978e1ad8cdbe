//! The device trust ceremonies — enrollment and authentication — as pure state machines.
//!
//! Why a crate of its own: the ceremonies are where a device proves it holds its credential,
//! and every rule that decides whether a device becomes trusted lives here, in code that
//! does no I/O. It reads no clock and no randomness of its own (both come through [`Env`]),
//! opens no socket and touches no database, so every rule is tested in memory, client and
//! server wired together, with messages tampered, reordered, duplicated and dropped.
//!
//! How it is used: an async driver (the auth service for the server halves, `dtsh` for the
//! client halves) reads a message with a deadline, loads what the step needs, calls the
//! state's `handle`, persists what `handle` returns **in one transaction**, then replies.
//! Each state is an `Expect<Message>` struct consumed by its `handle`, so a state can't be
//! used twice and a message can't be handled by the wrong state.
//!
//! What it guarantees:
//! - an enrollment token is spent at the first `EnrollInit` that presents it, and the
//!   driver learns so from the returned value (`TokenDisposition`), success or failure;
//! - every token problem reads `invalid device enrollment token`, so nobody can probe the
//!   inventory with tokens;
//! - a device record is only ever marked enrolled after a proof of possession over a fresh
//!   32-byte challenge (or a TPM credential activation plus quote, through [`tpm::TpmVerifier`]);
//! - an authentication only ever asks for augmented certificates after a proof with the
//!   credential stored at enrollment, for the user of the mTLS connection;
//! - errors are grouped by blame and their `Display` is safe to send to the client.
//!
//! What it deliberately does not do: parse or sign certificates (the driver asks `dt-ca`),
//! load or store anything, enforce access (that is `dt-authz`), or talk to a TPM.
//!
//! Modules: [`enroll`] and [`authn`], each with a `server` and a `client` half; [`messages`]
//! (the wire vocabulary, mapped to protobuf by `dt-proto`); [`token`] (enrollment tokens);
//! [`tpm`] (TPM message shapes and the verifier trait); [`proof`] (what a device signer
//! answers); [`drift`] (collected-data comparison); [`error`] (blame groups shared by both
//! ceremonies).

pub mod authn;
pub mod drift;
pub mod enroll;
pub mod env;
pub mod error;
pub mod limits;
pub mod messages;
pub mod proof;
pub mod token;
pub mod tpm;

pub use env::{Env, SystemEnv};
pub use error::{ClientError, ErrorCode, PeerMisbehaved, ServerMisbehaved};
pub use proof::{Proof, ProofRequest, ProverError};
pub use token::{EnrollToken, EnrollTokenRecord, TokenDisposition, TokenProblem, hash_token};
