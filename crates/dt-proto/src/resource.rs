//! Resources other than devices, and audit events: typed envelopes (kind, name, revision;
//! type, time, outcome) around the canonical document, which dt-types defines and reads.
//!
//! Why documents and not one protobuf message per resource: roles, users, locks and the
//! cluster auth preference are written by people in YAML, versioned (`version: v7`), and
//! read strictly (unknown fields are errors) by dt-types; a second schema in protobuf would
//! drift from it. The envelope's fields let a client in any language route, filter and
//! compare-and-swap without parsing the document.

use dt_types::audit::AuditEvent;
use dt_types::resource::{AnyResource, DeviceTrustMode};

use crate::time_conv::{from_proto, to_proto};
use crate::{ProtoError, v1 as pb};

/// A resource as the wire carries it, with its storage revision (also written into the
/// document's `metadata.revision`, where `dtctl edit` finds it).
pub fn resource_document(r: &AnyResource, revision: i64) -> pb::ResourceDocument {
    let mut r = r.clone();
    r.metadata_mut().revision = Some(revision.to_string());
    pb::ResourceDocument {
        kind: r.kind().as_str().into(),
        name: r.name().into(),
        revision,
        canonical_json: r.to_json_value().to_string().into_bytes(),
    }
}

/// Reads one document (UTF-8 JSON) strictly and validates it, as `dtctl create -f` does.
pub fn parse_document(canonical_json: &[u8]) -> Result<AnyResource, ProtoError> {
    let value: serde_json::Value =
        serde_json::from_slice(canonical_json).map_err(|e| ProtoError::Invalid {
            field: "canonical_json",
            why: format!("not a JSON document: {e}"),
        })?;
    AnyResource::from_json_value(value).map_err(|e| ProtoError::Document(e.to_string()))
}

/// The document, checked against its envelope: a kind or name that disagrees is refused.
impl TryFrom<pb::ResourceDocument> for AnyResource {
    type Error = ProtoError;
    fn try_from(d: pb::ResourceDocument) -> Result<Self, ProtoError> {
        let r = parse_document(&d.canonical_json)?;
        if !d.kind.is_empty() && d.kind != r.kind().as_str() {
            return Err(ProtoError::Invalid {
                field: "kind",
                why: format!("{:?} but the document is a {}", d.kind, r.kind()),
            });
        }
        if !d.name.is_empty() && d.name != r.name() {
            return Err(ProtoError::Invalid {
                field: "name",
                why: format!("{:?} but the document is named {:?}", d.name, r.name()),
            });
        }
        Ok(r)
    }
}

impl TryFrom<&AuditEvent> for pb::AuditEventDocument {
    type Error = ProtoError;
    fn try_from(e: &AuditEvent) -> Result<Self, ProtoError> {
        Ok(pb::AuditEventDocument {
            id: e.id.clone(),
            r#type: e.event.as_str().into(),
            code: e.code.clone(),
            time: Some(to_proto(e.time)),
            success: e.success,
            user: e.user.clone().unwrap_or_default(),
            canonical_json: serde_json::to_vec(e)
                .map_err(|err| ProtoError::Document(err.to_string()))?,
        })
    }
}

/// The event, checked against its envelope (type, time and outcome must agree).
impl TryFrom<pb::AuditEventDocument> for AuditEvent {
    type Error = ProtoError;
    fn try_from(d: pb::AuditEventDocument) -> Result<Self, ProtoError> {
        let e: AuditEvent = serde_json::from_slice(&d.canonical_json)
            .map_err(|err| ProtoError::Document(format!("unreadable audit event: {err}")))?;
        let time = d.time.as_ref().map(|t| from_proto(t, "time")).transpose()?;
        if e.event.as_str() != d.r#type
            || e.success != d.success
            || time.is_some_and(|t| t != e.time)
        {
            return Err(ProtoError::Invalid {
                field: "canonical_json",
                why: "the event disagrees with its envelope (type, time or outcome)".into(),
            });
        }
        Ok(e)
    }
}

impl From<&DeviceTrustMode> for pb::DeviceTrustMode {
    fn from(m: &DeviceTrustMode) -> Self {
        match m {
            DeviceTrustMode::Off => pb::DeviceTrustMode::Off,
            DeviceTrustMode::Optional => pb::DeviceTrustMode::Optional,
            DeviceTrustMode::Required => pb::DeviceTrustMode::Required,
            DeviceTrustMode::RequiredForHumans => pb::DeviceTrustMode::RequiredForHumans,
            DeviceTrustMode::Unknown(_) => pb::DeviceTrustMode::Unspecified,
        }
    }
}

/// A mode from the wire; one this build does not know reads as `Unknown` (which every
/// decision treats as the strictest).
pub fn trust_mode_from_proto(value: i32) -> DeviceTrustMode {
    match pb::DeviceTrustMode::try_from(value) {
        Ok(pb::DeviceTrustMode::Off) => DeviceTrustMode::Off,
        Ok(pb::DeviceTrustMode::Optional) => DeviceTrustMode::Optional,
        Ok(pb::DeviceTrustMode::Required) => DeviceTrustMode::Required,
        Ok(pb::DeviceTrustMode::RequiredForHumans) => DeviceTrustMode::RequiredForHumans,
        Ok(pb::DeviceTrustMode::Unspecified) | Err(_) => {
            DeviceTrustMode::Unknown(format!("unknown ({value})"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dt_types::audit::EventType;
    use time::macros::datetime;

    const ROLE: &str = r#"{"kind":"role","version":"v7","metadata":{"name":"ops"},"spec":{"allow":{"logins":["root"]},"deny":{}}}"#;

    #[test]
    fn a_document_survives_the_round_trip_with_its_revision() {
        let r = parse_document(ROLE.as_bytes()).unwrap();
        let wire = resource_document(&r, 7);
        assert_eq!(
            (wire.kind.as_str(), wire.name.as_str(), wire.revision),
            ("role", "ops", 7)
        );
        let back = AnyResource::try_from(wire).unwrap();
        assert_eq!(back.name(), "ops");
        let mut r = r;
        r.metadata_mut().revision = Some("7".into());
        assert_eq!(back, r);
    }

    #[test]
    fn a_document_that_disagrees_with_its_envelope_is_refused() {
        let mut wire = resource_document(&parse_document(ROLE.as_bytes()).unwrap(), 1);
        wire.name = "admin".into();
        assert!(matches!(
            AnyResource::try_from(wire.clone()).unwrap_err(),
            ProtoError::Invalid { field: "name", .. }
        ));
        wire.name.clear();
        wire.kind = "user".into();
        assert!(matches!(
            AnyResource::try_from(wire).unwrap_err(),
            ProtoError::Invalid { field: "kind", .. }
        ));
        assert!(matches!(
            parse_document(b"{\"kind\":\"role\",\"version\":\"v7\",\"metadata\":{\"name\":\"x\"},\"spec\":{\"typo\":1}}")
                .unwrap_err(),
            ProtoError::Document(_)
        ));
        assert!(matches!(
            parse_document(b"\"just a string").unwrap_err(),
            ProtoError::Invalid {
                field: "canonical_json",
                ..
            }
        ));
    }

    #[test]
    fn audit_events_keep_their_envelope_honest() {
        let e = AuditEvent::new(
            EventType::DeviceEnroll,
            false,
            datetime!(2026-12-06 10:00 UTC),
        )
        .user("alice")
        .message("invalid device enrollment token");
        let wire = pb::AuditEventDocument::try_from(&e).unwrap();
        assert_eq!(wire.r#type, "device.enroll");
        assert_eq!(wire.user, "alice");
        assert_eq!(AuditEvent::try_from(wire.clone()).unwrap(), e);
        let mut lying = wire;
        lying.success = true;
        assert!(AuditEvent::try_from(lying).is_err());
    }

    #[test]
    fn trust_modes_fail_closed_when_unknown() {
        for m in [
            DeviceTrustMode::Off,
            DeviceTrustMode::Optional,
            DeviceTrustMode::Required,
            DeviceTrustMode::RequiredForHumans,
        ] {
            assert_eq!(
                trust_mode_from_proto(pb::DeviceTrustMode::from(&m).into()),
                m
            );
        }
        assert!(matches!(
            trust_mode_from_proto(0),
            DeviceTrustMode::Unknown(_)
        ));
        assert!(matches!(
            trust_mode_from_proto(99),
            DeviceTrustMode::Unknown(_)
        ));
    }
}
