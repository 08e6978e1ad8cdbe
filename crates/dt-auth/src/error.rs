//! API errors and the one mapping from them to gRPC status codes (and HTTP statuses).
//! Messages are for the person at the other end: lowercase, what happened, what to do.
//! Internal details (storage errors) are logged with a request id, never sent.

use dt_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// Rate limits.
    #[error("{0}")]
    TooMany(String),
    /// Lost a compare-and-swap (someone else changed the resource).
    #[error("{0}")]
    Conflict(String),
    /// A guarded write refused: a name taken (already exists) or a lost race (conflict).
    #[error(transparent)]
    Refused(#[from] crate::plan::Refusal),
    /// A joined service's call refused (join, identity, removal).
    #[error(transparent)]
    Node(#[from] crate::nodes::NodeError),
    /// A user name from outside (a request, a certificate) that is not one.
    #[error(transparent)]
    InvalidName(#[from] dt_types::NameError),
    /// A service (not a user) asked for what only a user does.
    #[error("{service} is a service, not a user; only a signed-in user can do this")]
    NotAUser { service: String },
    #[error("internal error (request {id}); the server log has details")]
    Internal { id: String },
}

impl ApiError {
    /// Log `err` with a fresh id and return an error that only names the id.
    pub fn internal(err: impl std::fmt::Display) -> ApiError {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        tracing::error!(request_id = %id, error = %err, "internal error");
        ApiError::Internal { id }
    }

    /// What kind of failure this is (the gRPC code and HTTP status follow from it).
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            ApiError::PermissionDenied(_) => ErrorCode::PermissionDenied,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::AlreadyExists(_) => ErrorCode::AlreadyExists,
            ApiError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            ApiError::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
            ApiError::TooMany(_) => ErrorCode::TooMany,
            ApiError::Conflict(_) => ErrorCode::Conflict,
            ApiError::Refused(r) => r.code(),
            ApiError::Node(e) => e.code(),
            ApiError::InvalidName(_) => ErrorCode::InvalidArgument,
            ApiError::NotAUser { .. } => ErrorCode::PermissionDenied,
            ApiError::Internal { .. } => ErrorCode::Internal,
        }
    }

    pub fn status(&self) -> tonic::Status {
        let msg = self.to_string();
        match self.code() {
            ErrorCode::Unauthenticated => tonic::Status::unauthenticated(msg),
            ErrorCode::PermissionDenied => tonic::Status::permission_denied(msg),
            ErrorCode::NotFound => tonic::Status::not_found(msg),
            ErrorCode::AlreadyExists => tonic::Status::already_exists(msg),
            ErrorCode::InvalidArgument => tonic::Status::invalid_argument(msg),
            ErrorCode::FailedPrecondition => tonic::Status::failed_precondition(msg),
            ErrorCode::TooMany => tonic::Status::resource_exhausted(msg),
            ErrorCode::Conflict => tonic::Status::aborted(msg),
            ErrorCode::Internal => tonic::Status::internal(msg),
        }
    }

    pub fn http_status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self.code() {
            ErrorCode::Unauthenticated => S::UNAUTHORIZED,
            ErrorCode::PermissionDenied => S::FORBIDDEN,
            ErrorCode::NotFound => S::NOT_FOUND,
            ErrorCode::AlreadyExists | ErrorCode::Conflict => S::CONFLICT,
            ErrorCode::InvalidArgument => S::BAD_REQUEST,
            ErrorCode::FailedPrecondition => S::PRECONDITION_FAILED,
            ErrorCode::TooMany => S::TOO_MANY_REQUESTS,
            ErrorCode::Internal => S::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The kinds of API failure, one per gRPC code the service answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    Unauthenticated,
    PermissionDenied,
    NotFound,
    AlreadyExists,
    InvalidArgument,
    FailedPrecondition,
    /// Rate limits.
    TooMany,
    /// Lost a compare-and-swap (someone else changed the resource).
    Conflict,
    Internal,
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        e.status()
    }
}

/// Storage failures seen by API calls since the process started (`/metrics`).
pub static STORAGE_ERRORS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if !matches!(e, StoreError::RevisionMismatch(_)) {
            STORAGE_ERRORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        match e {
            StoreError::RevisionMismatch(_) => ApiError::Conflict(
                "the resource was changed by someone else since you read it; read it again and retry"
                    .into(),
            ),
            other => ApiError::internal(other),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
