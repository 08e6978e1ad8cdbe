//! JSON Web Tokens signed by the cluster's JWT CA (ES256, RFC 7515/7518/7519), and the JSON
//! Web Key (RFC 7517) apps verify them with. An app access point forwards one with every
//! request (`devtrust-jwt-assertion`), so the app learns who is calling, from which device,
//! without trusting the network in between.
//!
//! The claims are the caller's JSON object; this module adds nothing to them and checks
//! only the signature and the time claims it is asked to ([`verify`]).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::signature::{self as ring_sig};
use serde::{Deserialize, Serialize};

use crate::authority::{CaKind, CertAuthority};
use crate::error::{CaError, Result};

/// A public key as a JWK (EC P-256), with the key id the tokens name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    pub crv: String,
    pub x: String,
    pub y: String,
    pub alg: String,
    #[serde(rename = "use")]
    pub use_: String,
    pub kid: String,
}

impl Jwk {
    /// The uncompressed point (`04 || x || y`).
    pub fn point(&self) -> Result<Vec<u8>> {
        let x = B64
            .decode(&self.x)
            .map_err(|e| CaError::malformed("jwk x", e.to_string()))?;
        let y = B64
            .decode(&self.y)
            .map_err(|e| CaError::malformed("jwk y", e.to_string()))?;
        if self.kty != "EC" || self.crv != "P-256" || x.len() != 32 || y.len() != 32 {
            return Err(CaError::malformed("jwk", "not an EC P-256 key".to_string()));
        }
        let mut p = vec![4];
        p.extend(x);
        p.extend(y);
        Ok(p)
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    typ: String,
    kid: String,
}

impl CertAuthority {
    /// This CA's public key as a JWK; its `kid` is the CA's pin without the `sha256:`.
    pub fn jwk(&self) -> Jwk {
        let point = self.key.point();
        Jwk {
            kty: "EC".into(),
            crv: "P-256".into(),
            x: B64.encode(&point[1..33]),
            y: B64.encode(&point[33..65]),
            alg: "ES256".into(),
            use_: "sig".into(),
            kid: self.pin().trim_start_matches("sha256:").to_string(),
        }
    }

    /// A compact JWS over `claims` (a JSON object, serialized by the caller).
    pub fn sign_jwt(&self, claims_json: &[u8]) -> Result<String> {
        self.require_kind("signing a JWT", CaKind::Jwt)?;
        let header = Header {
            alg: "ES256".into(),
            typ: "JWT".into(),
            kid: self.jwk().kid,
        };
        let header = serde_json_header(&header);
        let input = format!("{}.{}", B64.encode(header), B64.encode(claims_json));
        let sig = self.key.sign_fixed(input.as_bytes())?;
        Ok(format!("{input}.{}", B64.encode(sig)))
    }
}

/// The header's JSON (fixed field order; no serde_json dependency in this crate).
fn serde_json_header(h: &Header) -> Vec<u8> {
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "{{\"alg\":\"{}\",\"typ\":\"{}\",\"kid\":\"{}\"}}",
        esc(&h.alg),
        esc(&h.typ),
        esc(&h.kid)
    )
    .into_bytes()
}

/// Check a compact JWS's ES256 signature against one of `keys` (by `kid`); returns the
/// claims' JSON bytes. Apps do this (and then check `exp`, `aud` and the rest themselves).
pub fn verify(token: &str, keys: &[Jwk]) -> Result<Vec<u8>> {
    let bad = |why: &str| CaError::malformed("jwt", why.to_string());
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("not three dot-separated parts"));
    };
    let header = B64.decode(h).map_err(|_| bad("header is not base64url"))?;
    let kid = json_string_field(&header, "kid").ok_or_else(|| bad("header names no kid"))?;
    if json_string_field(&header, "alg").as_deref() != Some("ES256") {
        return Err(bad("alg is not ES256"));
    }
    let key = keys
        .iter()
        .find(|k| k.kid == kid)
        .ok_or_else(|| bad("no key with this kid"))?;
    let sig = B64
        .decode(s)
        .map_err(|_| bad("signature is not base64url"))?;
    let point = key.point()?;
    ring_sig::UnparsedPublicKey::new(&ring_sig::ECDSA_P256_SHA256_FIXED, &point)
        .verify(format!("{h}.{c}").as_bytes(), &sig)
        .map_err(|_| bad("signature does not verify"))?;
    B64.decode(c).map_err(|_| bad("claims are not base64url"))
}

/// A top-level string field of a small flat JSON object (the JWS header).
fn json_string_field(json: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(json).ok()?;
    let needle = format!("\"{name}\"");
    let at = text.find(&needle)? + needle.len();
    let rest = text[at..].trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    let end = rest.find('"')?;
    Some(rest[..end].to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use time::OffsetDateTime;

    #[test]
    fn a_signed_token_verifies_and_any_change_does_not() {
        let ca = CertAuthority::generate("c", CaKind::Jwt, OffsetDateTime::now_utc()).unwrap();
        let jwk = ca.jwk();
        let t = ca.sign_jwt(br#"{"sub":"alice","exp":1}"#).unwrap();
        assert_eq!(
            verify(&t, std::slice::from_ref(&jwk)).unwrap(),
            br#"{"sub":"alice","exp":1}"#
        );

        // Another claim body with the same signature.
        let parts: Vec<&str> = t.split('.').collect();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(br#"{"sub":"bob","exp":1}"#),
            parts[2]
        );
        assert!(verify(&forged, std::slice::from_ref(&jwk)).is_err());
        // Another CA's key.
        let other = CertAuthority::generate("c", CaKind::Jwt, OffsetDateTime::now_utc()).unwrap();
        let mut wrong = other.jwk();
        wrong.kid = jwk.kid.clone();
        assert!(verify(&t, &[wrong]).is_err());
        // alg none.
        let none = format!(
            "{}.{}.",
            B64.encode(br#"{"alg":"none","kid":"x"}"#),
            parts[1]
        );
        assert!(verify(&none, &[jwk]).is_err());
    }

    #[test]
    fn only_the_jwt_ca_signs_tokens() {
        let user = CertAuthority::generate("c", CaKind::User, OffsetDateTime::now_utc()).unwrap();
        assert!(user.sign_jwt(b"{}").is_err());
    }
}
