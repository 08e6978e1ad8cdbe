//! An access point's connection to the auth service: our own TLS (so the CA pin decides
//! trust, as for `dtsh`), the service certificate as client identity, and a **lazy** channel
//! that reconnects by itself: it starts (and keeps serving, failing closed) while the auth
//! service is down, and picks the connection up again when it comes back. With several auth
//! servers (`--auth-server=A,B`) it reconnects to whichever answers.

use dt_client::{Identity, TrustPolicy};
use tonic::transport::Channel;

use crate::error::AgentError;

/// A channel to the auth service that connects on first use and reconnects after failures.
pub fn lazy_channel(
    addr: &str,
    policy: TrustPolicy,
    identity: Identity,
) -> Result<Channel, AgentError> {
    dt_client::connect::lazy_channel(addr, policy, identity).map_err(|e| match e {
        dt_client::ClientError::BadAddress(a) => AgentError::Config(format!(
            "auth server {a:?}: use HOST:PORT, or several as HOST:PORT,HOST:PORT"
        )),
        other => other.into(),
    })
}
