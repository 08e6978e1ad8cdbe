//! The errors of the node runtime, grouped by who is at fault: the operator (configuration,
//! the data dir), the auth service (refusals, reachability), or the platform (I/O).

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A flag or file the operator gave is wrong; the message says what to change.
    #[error("{0}")]
    Config(String),
    /// The data dir holds something this node cannot read.
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
    /// The SSH layer failed.
    #[error("ssh: {0}")]
    Ssh(String),
}

impl NodeError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        NodeError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<dt_client::ClientError> for NodeError {
    fn from(e: dt_client::ClientError) -> Self {
        NodeError::Auth(e.to_string())
    }
}

impl From<tonic::Status> for NodeError {
    fn from(s: tonic::Status) -> Self {
        NodeError::Auth(dt_client::ClientError::from_status(s).to_string())
    }
}

impl From<russh::Error> for NodeError {
    fn from(e: russh::Error) -> Self {
        NodeError::Ssh(e.to_string())
    }
}

impl From<dt_ca::CaError> for NodeError {
    fn from(e: dt_ca::CaError) -> Self {
        NodeError::Corrupt(e.to_string())
    }
}
