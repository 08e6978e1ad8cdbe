//! Checks shared by join and heartbeat (labels, addresses), and how an audit event names
//! the joined service it is about.

use std::collections::BTreeMap;

use dt_types::ServiceKind;
use dt_types::audit::{AuditEvent, ServiceInfo};

use crate::error::{ApiError, ApiResult};

pub(super) fn check_labels(labels: &BTreeMap<String, String>) -> ApiResult<()> {
    if labels.len() > 64 {
        return Err(ApiError::InvalidArgument("at most 64 labels".into()));
    }
    for (k, v) in labels {
        let ok_key = !k.is_empty()
            && k.len() <= 63
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        if !ok_key {
            return Err(ApiError::InvalidArgument(format!(
                "label key {k:?}: use letters, digits and - _ . / (at most 63)"
            )));
        }
        if v.len() > 253 || v.chars().any(|c| c.is_control()) {
            return Err(ApiError::InvalidArgument(format!(
                "label {k}: value is too long or has control characters"
            )));
        }
    }
    Ok(())
}

/// `HOST:PORT` → HOST (without brackets).
pub(super) fn addr_host(addr: &str) -> ApiResult<String> {
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| {
        ApiError::InvalidArgument(format!("node address {addr:?}: use HOST:PORT"))
    })?;
    port.parse::<u16>()
        .map_err(|_| ApiError::InvalidArgument(format!("node address {addr:?}: bad port")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ApiError::InvalidArgument(format!(
            "node address {addr:?}: bad host"
        )));
    }
    Ok(host.to_string())
}

/// Name the joined service an event is about or came from: an SSH node as `node` (as
/// always), any other kind as `service`. Whatever the submitter wrote there is replaced.
pub(super) fn set_submitter(e: &mut AuditEvent, kind: ServiceKind, name: &str) {
    if kind == ServiceKind::Node {
        e.node = Some(name.to_string());
        e.service = None;
    } else {
        e.node = None;
        e.service = Some(ServiceInfo {
            kind,
            name: name.to_string(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_labels() {
        assert_eq!(addr_host("127.0.0.1:3022").unwrap(), "127.0.0.1");
        assert_eq!(addr_host("[::1]:22").unwrap(), "::1");
        assert!(addr_host("nohost").is_err());
        assert!(addr_host(":22").is_err());
        let mut l = BTreeMap::new();
        l.insert("env".to_string(), "prod".to_string());
        assert!(check_labels(&l).is_ok());
        l.insert("bad key".to_string(), "x".to_string());
        assert!(check_labels(&l).is_err());
    }
}
