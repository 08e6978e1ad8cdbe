//! Client side of the devtrust API, shared by `dtsh` and `dtctl`: TLS trust (CA pin, trust on
//! first use, or explicit `--insecure`), the on-disk profile, and gRPC connections.
//!
//! What it guarantees: the server is never trusted silently. A connection either verifies
//! the server certificate against a CA whose SubjectPublicKeyInfo hash equals a known pin,
//! or the caller asked for `--insecure` and was warned.

pub mod access_point;
pub mod connect;
pub mod devices;
pub mod profile;
pub mod session;
pub mod ssh_client;
pub mod trust;

pub use connect::{ClientError, Identity, connect};
pub use profile::{Profile, ProfileStore};
pub use session::Session;
pub use trust::{TrustPolicy, spki_pin};
