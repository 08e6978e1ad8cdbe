//! Errors of a sync, grouped by who is at fault: the configuration, the MDM (its answers or
//! its refusal of our credentials), the network, or the auth service.

use crate::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum MdmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Setup(String),
    /// 401 after a token refresh, or 403, or a token endpoint that refused us.
    #[error("{mdm} refused the credentials ({status}) at {url}: check {what}")]
    CredentialsRefused {
        mdm: &'static str,
        status: u16,
        url: String,
        what: String,
    },
    /// The network or TLS failed, after retries.
    #[error("{0}")]
    Transport(String),
    /// An answer that is not what the API documents (not JSON, a missing field).
    #[error("{mdm} sent a malformed answer at {url}: {message}")]
    Malformed {
        mdm: &'static str,
        url: String,
        message: String,
    },
    /// Another HTTP status, or retries exhausted.
    #[error("{mdm} answered {status} at {url} (after {attempts} attempt(s)): {excerpt}")]
    Status {
        mdm: &'static str,
        status: u16,
        url: String,
        attempts: u32,
        excerpt: String,
    },
    /// Paging went past the cap: the MDM kept sending pages.
    #[error(
        "{mdm} kept sending pages: stopped after {pages} pages ({records} records); the sync did not complete (raise max_pages if the inventory is that large)"
    )]
    NeverEnding {
        mdm: &'static str,
        pages: u32,
        records: usize,
    },
    /// The auth service refused or failed a call.
    #[error("auth service: {0}")]
    Auth(String),
}

impl From<crate::http::HttpError> for MdmError {
    fn from(e: crate::http::HttpError) -> Self {
        match e {
            crate::http::HttpError::Setup(m) => MdmError::Setup(m),
            other => MdmError::Transport(other.to_string()),
        }
    }
}

impl From<tonic::Status> for MdmError {
    fn from(s: tonic::Status) -> Self {
        MdmError::Auth(format!("{:?}: {}", s.code(), s.message()))
    }
}
