//! Times for the audit-chain messages (`VerifyEventsResponse`): the only place their
//! timestamps are converted, so the auth service and `dtctl` agree.

use prost_types::Timestamp;
use time::OffsetDateTime;

use crate::ProtoError;

/// A time for the wire.
pub fn timestamp(t: OffsetDateTime) -> Timestamp {
    crate::time_conv::to_proto(t)
}

/// A time from the wire; `field` names it in the error.
pub fn time(t: &Timestamp, field: &'static str) -> Result<OffsetDateTime, ProtoError> {
    crate::time_conv::from_proto(t, field)
}
