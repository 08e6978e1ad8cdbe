//! Why a joined service's call (or an admin's removal of one) was refused. The text is what
//! the client sees; [`NodeError::code`] is its status.

use dt_types::ServiceKind;

use crate::error::ErrorCode;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The peer presented no node certificate.
    #[error(
        "this call is for joined nodes (mutual TLS with the node certificate from `devtrust node start --token`)"
    )]
    NotJoined,
    /// The node certificate expired while its connection stayed open.
    #[error(
        "the node certificate of {name:?} expired; join the node again (`devtrust node start --token`)"
    )]
    CertificateExpired { name: String },
    /// A call only access points make, from a service that is none (the MDM service).
    #[error("{call} is for access points; the {kind} service {name:?} may not call it")]
    NotAnAccessPoint {
        call: &'static str,
        kind: ServiceKind,
        name: String,
    },
    /// No live join token of the kind asked for matches.
    #[error(
        "invalid or expired join token for a {kind} (a token of another type does not join a {kind}); ask an admin for a new one (`dtctl tokens add --type={kind}`)"
    )]
    InvalidJoinToken { kind: ServiceKind },
    /// A join asked for a kind that does not exist.
    #[error("unknown service kind {kind:?}; use node, db, kube, app, desktop or mdm")]
    UnknownKind { kind: String },
    /// Too many failed joins from one address.
    #[error("too many failed joins from this address; try again in {wait_secs} s")]
    TooManyJoins { wait_secs: u64 },
    /// The name is registered to another key.
    #[error(
        "a {kind} named {name:?} is already registered with another key; if this machine replaces it, an admin must remove the old one first (`dtctl rm {kind}/{name}`), then join again"
    )]
    RegisteredToAnotherKey { kind: ServiceKind, name: String },
    /// The name is live with another key.
    #[error("a {kind} named {name:?} is online with another key; stop it or pick another --name")]
    OnlineWithAnotherKey { kind: ServiceKind, name: String },
    /// The service's key is no longer the one registered for its name.
    #[error(
        "{kind} {name:?} was removed or replaced by an admin; join again with a new token (`dtctl tokens add --type={kind}`)"
    )]
    RemovedOrReplaced { kind: ServiceKind, name: String },
    /// `dtctl rm KIND/NAME` of a service that never joined.
    #[error("{kind} {name:?} not found (see `dtctl rm` for the kinds and `dtsh ls` for nodes)")]
    NotFound { kind: ServiceKind, name: String },
}

impl NodeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            NodeError::NotJoined
            | NodeError::CertificateExpired { .. }
            | NodeError::InvalidJoinToken { .. }
            | NodeError::RemovedOrReplaced { .. } => ErrorCode::Unauthenticated,
            NodeError::NotAnAccessPoint { .. } => ErrorCode::PermissionDenied,
            NodeError::UnknownKind { .. } => ErrorCode::InvalidArgument,
            NodeError::TooManyJoins { .. } => ErrorCode::TooMany,
            NodeError::RegisteredToAnotherKey { .. } | NodeError::OnlineWithAnotherKey { .. } => {
                ErrorCode::AlreadyExists
            }
            NodeError::NotFound { .. } => ErrorCode::NotFound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ApiError;

    #[test]
    fn node_errors_keep_their_text_and_code_at_the_edge() {
        let e = ApiError::from(NodeError::InvalidJoinToken {
            kind: ServiceKind::Db,
        });
        let s = e.status();
        assert_eq!(s.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            s.message(),
            "invalid or expired join token for a db (a token of another type does not join a db); ask an admin for a new one (`dtctl tokens add --type=db`)"
        );
        let e = ApiError::from(NodeError::RegisteredToAnotherKey {
            kind: ServiceKind::Node,
            name: "n1".into(),
        });
        assert_eq!(e.status().code(), tonic::Code::AlreadyExists);
        assert_eq!(e.http_status(), http::StatusCode::CONFLICT);
        assert!(e.to_string().contains("`dtctl rm node/n1`"));
        assert_eq!(
            ApiError::from(NodeError::TooManyJoins { wait_secs: 7 })
                .status()
                .message(),
            "too many failed joins from this address; try again in 7 s"
        );
    }
}
