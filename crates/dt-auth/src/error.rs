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

    pub fn status(&self) -> tonic::Status {
        let msg = self.to_string();
        match self {
            ApiError::Unauthenticated(_) => tonic::Status::unauthenticated(msg),
            ApiError::PermissionDenied(_) => tonic::Status::permission_denied(msg),
            ApiError::NotFound(_) => tonic::Status::not_found(msg),
            ApiError::AlreadyExists(_) => tonic::Status::already_exists(msg),
            ApiError::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
            ApiError::FailedPrecondition(_) => tonic::Status::failed_precondition(msg),
            ApiError::TooMany(_) => tonic::Status::resource_exhausted(msg),
            ApiError::Conflict(_) => tonic::Status::aborted(msg),
            ApiError::Refused(r) if r.is_taken() => tonic::Status::already_exists(msg),
            ApiError::Refused(_) => tonic::Status::aborted(msg),
            ApiError::Internal { .. } => tonic::Status::internal(msg),
        }
    }

    pub fn http_status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            ApiError::Unauthenticated(_) => S::UNAUTHORIZED,
            ApiError::PermissionDenied(_) => S::FORBIDDEN,
            ApiError::NotFound(_) => S::NOT_FOUND,
            ApiError::AlreadyExists(_) | ApiError::Conflict(_) | ApiError::Refused(_) => {
                S::CONFLICT
            }
            ApiError::InvalidArgument(_) => S::BAD_REQUEST,
            ApiError::FailedPrecondition(_) => S::PRECONDITION_FAILED,
            ApiError::TooMany(_) => S::TOO_MANY_REQUESTS,
            ApiError::Internal { .. } => S::INTERNAL_SERVER_ERROR,
        }
    }
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
