//! What can be wrong with a protobuf message before anyone looks at its meaning.

/// A message that does not convert. `Display` is lowercase, names the field, and is safe
/// to send back to the peer (it never includes the field's value).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// A required field or `oneof` was not set.
    #[error("{field} is missing")]
    Missing { field: &'static str },
    /// An enum field holds a value this build does not know (or `*_UNSPECIFIED` where a
    /// value is required).
    #[error("{field} has an unknown value ({value})")]
    UnknownEnum { field: &'static str, value: i32 },
    /// A field is larger than its limit.
    #[error("{field} is {len} bytes, more than the {max} accepted")]
    Oversized {
        field: &'static str,
        len: usize,
        max: usize,
    },
    /// A repeated field has more entries than its limit.
    #[error("{field} has {len} entries, more than the {max} accepted")]
    TooMany {
        field: &'static str,
        len: usize,
        max: usize,
    },
    /// A whole ceremony message is larger than [`dt_ceremony::limits::MAX_CEREMONY_MESSAGE_LEN`].
    #[error("{message} is too large: {len} bytes, more than the {max} accepted")]
    MessageTooLarge {
        message: &'static str,
        len: usize,
        max: usize,
    },
    /// A field is present and the right size but its content is wrong (an out-of-range
    /// time, stored data that is not what it should be).
    #[error("invalid {field}: {why}")]
    Invalid { field: &'static str, why: String },
    /// A credential id that is not one (`dt_types::CredentialId`'s rule).
    #[error("invalid {field}: {source}")]
    CredentialId {
        field: &'static str,
        #[source]
        source: dt_types::CredentialIdError,
    },
    /// A device id that is not one (a UUID, `dt_types::DeviceId`).
    #[error("invalid {field}: {source}")]
    DeviceId {
        field: &'static str,
        #[source]
        source: dt_types::DeviceIdError,
    },
    /// A resource document or audit event that is not what dt-types reads (the text is
    /// dt-types' own error: kind, name and what is wrong).
    #[error("{0}")]
    Document(String),
}

pub(crate) fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), ProtoError> {
    if len > max {
        return Err(ProtoError::Oversized { field, len, max });
    }
    Ok(())
}

pub(crate) fn check_count(field: &'static str, len: usize, max: usize) -> Result<(), ProtoError> {
    if len > max {
        return Err(ProtoError::TooMany { field, len, max });
    }
    Ok(())
}

pub(crate) fn required<T>(v: Option<T>, field: &'static str) -> Result<T, ProtoError> {
    v.ok_or(ProtoError::Missing { field })
}
