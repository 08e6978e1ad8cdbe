//! Refusals as `metav1.Status` bodies, the error shape `kubectl` prints
//! (`Error from server (Forbidden): <message>`).

use serde_json::json;

/// Why the access point answers instead of the API server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: u16,
    /// `Forbidden`, `Unauthorized`, `NotFound`, `BadRequest`, `ServiceUnavailable`...
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn forbidden(message: impl Into<String>) -> Refusal {
        Refusal {
            code: 403,
            reason: "Forbidden",
            message: message.into(),
        }
    }
    pub fn unauthorized(message: impl Into<String>) -> Refusal {
        Refusal {
            code: 401,
            reason: "Unauthorized",
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> Refusal {
        Refusal {
            code: 404,
            reason: "NotFound",
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Refusal {
        Refusal {
            code: 400,
            reason: "BadRequest",
            message: message.into(),
        }
    }
    pub fn unavailable(message: impl Into<String>) -> Refusal {
        Refusal {
            code: 503,
            reason: "ServiceUnavailable",
            message: message.into(),
        }
    }
    pub fn gateway_timeout(message: impl Into<String>) -> Refusal {
        Refusal {
            code: 504,
            reason: "Timeout",
            message: message.into(),
        }
    }

    /// The `metav1.Status` JSON.
    pub fn body(&self) -> String {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
        .to_string()
    }

    /// A watch stream's last event, when a lock ends it.
    pub fn watch_event(&self) -> String {
        format!("{{\"type\":\"ERROR\",\"object\":{}}}\n", self.body())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn status_body_is_what_kubectl_reads() {
        let r = super::Refusal::forbidden("access denied to \"x\"");
        let v: serde_json::Value = serde_json::from_str(&r.body()).unwrap();
        assert_eq!(v["kind"], "Status");
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "Forbidden");
        assert_eq!(v["code"], 403);
        assert_eq!(v["message"], "access denied to \"x\"");
        let e: serde_json::Value = serde_json::from_str(r.watch_event().trim()).unwrap();
        assert_eq!(e["type"], "ERROR");
        assert_eq!(e["object"]["code"], 403);
    }
}
