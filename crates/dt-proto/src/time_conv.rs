//! `google.protobuf.Timestamp` <-> `time::OffsetDateTime` (UTC on the wire).

use prost_types::Timestamp;
use time::OffsetDateTime;

use crate::ProtoError;

pub(crate) fn to_proto(t: OffsetDateTime) -> Timestamp {
    Timestamp {
        seconds: t.unix_timestamp(),
        // `nanosecond()` is below 1e9, which always fits an i32.
        nanos: i32::try_from(t.nanosecond()).unwrap_or(0),
    }
}

pub(crate) fn from_proto(t: &Timestamp, field: &'static str) -> Result<OffsetDateTime, ProtoError> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(ProtoError::Invalid {
            field,
            why: "nanos must be in 0..1e9".into(),
        });
    }
    let nanos = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|_| ProtoError::Invalid {
        field,
        why: "out of range".into(),
    })
}

pub(crate) fn opt_to_proto(t: Option<OffsetDateTime>) -> Option<Timestamp> {
    t.map(to_proto)
}

pub(crate) fn opt_from_proto(
    t: Option<&Timestamp>,
    field: &'static str,
) -> Result<Option<OffsetDateTime>, ProtoError> {
    t.map(|t| from_proto(t, field)).transpose()
}
