//! The errors of the access-point runtime, grouped by who is at fault: the operator
//! (configuration, the data dir), the auth service (refusals, reachability), the access
//! point's own protocol layer, or the platform (I/O).

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A flag or file the operator gave is wrong; the message says what to change.
    #[error("{0}")]
    Config(String),
    /// The data dir holds something this access point cannot read.
    #[error("{0}")]
    Corrupt(String),
    /// The auth service refused (its message says why) or could not be reached.
    #[error("{0}")]
    Auth(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The access point's protocol layer (SSH, PostgreSQL, ...) failed; the message names it.
    #[error("{0}")]
    Protocol(String),
}

impl AgentError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        AgentError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<dt_client::ClientError> for AgentError {
    fn from(e: dt_client::ClientError) -> Self {
        AgentError::Auth(e.to_string())
    }
}

impl From<tonic::Status> for AgentError {
    fn from(s: tonic::Status) -> Self {
        AgentError::Auth(dt_client::ClientError::from_status(s).to_string())
    }
}

impl From<dt_ca::CaError> for AgentError {
    fn from(e: dt_ca::CaError) -> Self {
        AgentError::Corrupt(e.to_string())
    }
}
