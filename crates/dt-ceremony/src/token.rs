//! Device enrollment tokens (DESIGN.md §4): 32 random bytes, base64url without padding,
//! stored only as the hex SHA-256 of that text, one per device, default TTL 1 h, spent at
//! the first `EnrollInit` that presents them.
//!
//! Every problem with a token — unknown, expired, already spent, for another device or
//! another OS — is reported to the client as the same `invalid device enrollment token`;
//! [`TokenProblem`] keeps the reason for the audit log only.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dt_types::DeviceId;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use time::{Duration, OffsetDateTime};

use crate::env::{Env, random_array};
use crate::limits::MAX_TOKEN_LEN;

/// Random bytes in a token.
pub const TOKEN_BYTES: usize = 32;
/// Length of a token's text: base64url of 32 bytes, no padding.
pub const TOKEN_TEXT_LEN: usize = 43;
/// How long a token lives unless the admin says otherwise.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::hours(1);

/// The secret a device presents. `Debug` and `Display` print `<secret>`; serde writes the
/// text (it travels inside `EnrollInit`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EnrollToken(String);

impl EnrollToken {
    /// A fresh token from the environment's randomness.
    pub fn generate(env: &mut (impl Env + ?Sized)) -> Self {
        let bytes: [u8; TOKEN_BYTES] = random_array(env);
        EnrollToken(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Wraps a token the user typed (`dtsh device enroll --token=...`).
    pub fn new(text: impl Into<String>) -> Self {
        EnrollToken(text.into().trim().to_string())
    }

    /// The token text. Every call site is greppable; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The hex SHA-256 under which the token's record is stored.
    pub fn hash(&self) -> String {
        hash_token(&self.0)
    }

    /// True for the shape we issue: 43 base64url characters decoding to 32 bytes.
    pub fn is_well_formed(&self) -> bool {
        self.0.len() == TOKEN_TEXT_LEN
            && URL_SAFE_NO_PAD
                .decode(&self.0)
                .is_ok_and(|b| b.len() == TOKEN_BYTES)
    }

    /// The key a driver looks the token's record up by, or `None` when the token is not
    /// worth a lookup (too long or not our shape). A driver passing `None` as the record
    /// still gets the generic token error from the state machine.
    pub fn lookup_hash(&self) -> Option<String> {
        (self.0.len() <= MAX_TOKEN_LEN && self.is_well_formed()).then(|| self.hash())
    }
}

impl fmt::Debug for EnrollToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

impl fmt::Display for EnrollToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

/// Hex SHA-256 of a token's text: how tokens are stored (never in clear).
pub fn hash_token(token: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        token.as_bytes(),
    ))
}

/// Compares two token hashes in constant time (no early exit on the first differing byte).
pub fn hashes_equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A stored enrollment token, as the driver loaded it by [`EnrollToken::lookup_hash`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollTokenRecord {
    /// Hex SHA-256 of the token text.
    pub token_hash: String,
    /// The device (inventory id) the token was issued for.
    pub device_id: DeviceId,
    #[serde(with = "time::serde::rfc3339")]
    pub expires: OffsetDateTime,
    /// When an `EnrollInit` presented it; a spent token never works again.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub spent_at: Option<OffsetDateTime>,
}

impl EnrollTokenRecord {
    /// Issues a token for `device_id`, valid for `ttl` from `now`. The caller shows the
    /// token once and stores only the record.
    pub fn issue(
        device_id: DeviceId,
        now: OffsetDateTime,
        ttl: Duration,
        env: &mut (impl Env + ?Sized),
    ) -> (EnrollToken, EnrollTokenRecord) {
        let token = EnrollToken::generate(env);
        let record = EnrollTokenRecord {
            token_hash: token.hash(),
            device_id,
            expires: now + ttl,
            spent_at: None,
        };
        (token, record)
    }
}

/// Why a token was refused. For the audit log; the client only ever sees
/// `invalid device enrollment token`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenProblem {
    /// Not our shape, or longer than the limit.
    Malformed,
    /// No record under its hash.
    Unknown,
    /// The driver's record is not this token's (a driver bug, refused all the same).
    HashMismatch,
    Expired,
    AlreadySpent,
    /// The collected serial number (or the record's device) is not the token's device.
    OtherDevice,
    /// The collected OS is not the token's device's OS.
    OtherOs,
}

impl fmt::Display for TokenProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenProblem::Malformed => "malformed token",
            TokenProblem::Unknown => "unknown token",
            TokenProblem::HashMismatch => "token record does not match the token",
            TokenProblem::Expired => "token expired",
            TokenProblem::AlreadySpent => "token already used",
            TokenProblem::OtherDevice => "token issued for another device",
            TokenProblem::OtherOs => "token issued for a device with another OS",
        })
    }
}

/// What the driver must do with the token record after `EnrollInit`, whatever the result
/// of the ceremony. Ignoring it is a compile warning.
#[must_use = "persist the token disposition: a token is spent at Init even if enrollment fails"]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenDisposition {
    /// Mark the record spent at `spent_at` (or delete it), in the same transaction as
    /// anything else this step returns.
    Consume {
        token_hash: String,
        spent_at: OffsetDateTime,
    },
    /// Nothing to write: no live record matched.
    Untouched,
}

/// Checks the presented token against the record the driver found. Only the token itself
/// is checked here (shape, hash, expiry, spent); which device it is for is checked by the
/// ceremony once the device is known.
pub(crate) fn assess<'r>(
    presented: &EnrollToken,
    record: Option<&'r EnrollTokenRecord>,
    now: OffsetDateTime,
) -> Result<&'r EnrollTokenRecord, TokenProblem> {
    if presented.expose().len() > MAX_TOKEN_LEN || !presented.is_well_formed() {
        return Err(TokenProblem::Malformed);
    }
    let record = record.ok_or(TokenProblem::Unknown)?;
    if !hashes_equal(&presented.hash(), &record.token_hash.to_ascii_lowercase()) {
        return Err(TokenProblem::HashMismatch);
    }
    if record.spent_at.is_some() {
        return Err(TokenProblem::AlreadySpent);
    }
    if now >= record.expires {
        return Err(TokenProblem::Expired);
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct CounterEnv(u8);
    impl Env for CounterEnv {
        fn now(&self) -> OffsetDateTime {
            OffsetDateTime::UNIX_EPOCH
        }
        fn random_bytes(&mut self, out: &mut [u8]) {
            for b in out {
                self.0 = self.0.wrapping_add(1);
                *b = self.0;
            }
        }
    }

    #[test]
    fn tokens_are_43_base64url_characters_and_distinct() {
        let mut env = CounterEnv(0);
        let a = EnrollToken::generate(&mut env);
        let b = EnrollToken::generate(&mut env);
        assert_eq!(a.expose().len(), TOKEN_TEXT_LEN);
        assert!(a.is_well_formed());
        assert!(
            a.expose()
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_ne!(a, b);
    }

    #[test]
    fn hash_is_hex_sha256_of_the_text() {
        // echo -n abc | sha256sum
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(hashes_equal(&hash_token("abc"), &hash_token("abc")));
        assert!(!hashes_equal(&hash_token("abc"), &hash_token("abd")));
        assert!(!hashes_equal("ab", "abc"));
    }

    #[test]
    fn debug_and_display_hide_the_token() {
        let t = EnrollToken::new("supersecret");
        assert_eq!(format!("{t:?} {t}"), "<secret> <secret>");
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"supersecret\"");
    }

    #[test]
    fn assess_reports_each_problem() {
        let mut env = CounterEnv(7);
        let now = OffsetDateTime::UNIX_EPOCH + Duration::days(1);
        let (token, record) =
            EnrollTokenRecord::issue(DeviceId::fresh(), now, DEFAULT_TOKEN_TTL, &mut env);
        assert_eq!(assess(&token, Some(&record), now), Ok(&record));
        assert_eq!(assess(&token, None, now), Err(TokenProblem::Unknown));
        assert_eq!(
            assess(&EnrollToken::new("short"), Some(&record), now),
            Err(TokenProblem::Malformed)
        );
        let other = EnrollToken::generate(&mut env);
        assert_eq!(
            assess(&other, Some(&record), now),
            Err(TokenProblem::HashMismatch)
        );
        assert_eq!(
            assess(&token, Some(&record), now + DEFAULT_TOKEN_TTL),
            Err(TokenProblem::Expired)
        );
        let spent = EnrollTokenRecord {
            spent_at: Some(now),
            ..record.clone()
        };
        assert_eq!(
            assess(&token, Some(&spent), now),
            Err(TokenProblem::AlreadySpent)
        );
        assert_eq!(token.lookup_hash(), Some(record.token_hash.clone()));
        assert_eq!(EnrollToken::new("x".repeat(500)).lookup_hash(), None);
    }
}
