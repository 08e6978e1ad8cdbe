//! PEM (RFC 7468) in and out: enough for certificates and PKCS#8 keys.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::error::{CaError, Result};

/// Label of an X.509 certificate PEM block.
pub const CERTIFICATE: &str = "CERTIFICATE";
/// Label of a PKCS#8 private key PEM block.
pub const PRIVATE_KEY: &str = "PRIVATE KEY";

/// Encodes `der` as one PEM block with `label`, 64 characters per line, ending in a newline.
pub fn to_pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    // Base64 output is ASCII, so byte chunks are char boundaries.
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// Decodes every PEM block labelled `label`, in order. Blocks with other labels and text
/// between blocks are skipped. Errors on a block that does not end or is not base64.
pub fn parse_pem_all(text: &str, label: &str) -> Result<Vec<Vec<u8>>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&begin) {
        let body_start = start + begin.len();
        let Some(body_len) = rest[body_start..].find(&end) else {
            return Err(CaError::malformed("pem", format!("no \"{end}\" line")));
        };
        let body: String = rest[body_start..body_start + body_len]
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let der = STANDARD
            .decode(body)
            .map_err(|e| CaError::malformed("pem", format!("bad base64 in {label}: {e}")))?;
        out.push(der);
        rest = &rest[body_start + body_len + end.len()..];
    }
    Ok(out)
}

/// Decodes the first PEM block labelled `label`.
pub fn parse_pem(text: &str, label: &str) -> Result<Vec<u8>> {
    parse_pem_all(text, label)?
        .into_iter()
        .next()
        .ok_or_else(|| CaError::malformed("pem", format!("no {label} block found")))
}

/// Decodes the first `CERTIFICATE` block.
pub fn parse_cert_pem(text: &str) -> Result<Vec<u8>> {
    parse_pem(text, CERTIFICATE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_line_length() {
        let der: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let pem = to_pem(CERTIFICATE, &der);
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(pem.ends_with("-----END CERTIFICATE-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64));
        assert_eq!(parse_cert_pem(&pem).unwrap(), der);
    }

    #[test]
    fn picks_blocks_by_label_in_order() {
        let text = format!(
            "junk\n{}{}{}",
            to_pem(PRIVATE_KEY, b"key"),
            to_pem(CERTIFICATE, b"one"),
            to_pem(CERTIFICATE, b"two")
        );
        assert_eq!(parse_pem(&text, PRIVATE_KEY).unwrap(), b"key");
        assert_eq!(
            parse_pem_all(&text, CERTIFICATE).unwrap(),
            vec![b"one".to_vec(), b"two".to_vec()]
        );
    }

    #[test]
    fn errors_are_specific() {
        assert!(matches!(
            parse_cert_pem("nothing here"),
            Err(CaError::Malformed { what: "pem", .. })
        ));
        assert!(parse_cert_pem("-----BEGIN CERTIFICATE-----\nAAAA\n").is_err());
        assert!(
            parse_cert_pem("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n")
                .is_err()
        );
    }
}
