//! The MDM API clients: Jamf Pro and Microsoft Intune (Graph).
//!
//! **Jamf Pro**: a bearer token from `POST /api/oauth/token` (an API client's OAuth client
//! credentials) or `POST /api/v1/auth/token` (basic authentication with a Jamf account);
//! then `GET /api/v1/computers-inventory?section=GENERAL&section=HARDWARE&
//! section=OPERATING_SYSTEM&section=USER_AND_LOCATION&section=LOCAL_USER_ACCOUNTS&page=N&
//! page-size=M&sort=id:asc&filter=RSQL` until `page * page-size >= totalCount`. A partial sync
//! adds `general.reportDate>="CURSOR"` to the filter.
//!
//! **Intune**: a bearer token from `POST {login_endpoint}/{tenant}/oauth2/v2.0/token` (client
//! credentials, scope `{graph_endpoint}/.default`); then `GET {graph_endpoint}/v1.0/
//! deviceManagement/managedDevices?$select=...&$top=M` following `@odata.nextLink`, which must
//! stay on the Graph endpoint (the token is never sent elsewhere). A partial sync filters
//! `lastSyncDateTime ge CURSOR`.
//!
//! Tokens are refreshed before they expire and once on a 401; a second 401 or a 403 stops
//! the sync with the credential to check. 429 and 5xx are retried ([`crate::http::decide`]).
//! A sync that reads more than `max_pages` pages stops: a page that never ends fails the
//! sync cleanly instead of running forever.

use std::time::{Duration, Instant};

use base64::Engine;
use dt_types::Secret;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::{IntuneConfig, JamfConfig, JamfCredentials, SourceConfig};
use crate::error::MdmError;
use crate::http::{HttpClient, Next, RetryPolicy, decide, redact};
use crate::record::{self, MdmDevice, Skip};

pub const JAMF_SECTIONS: [&str; 5] = [
    "GENERAL",
    "HARDWARE",
    "OPERATING_SYSTEM",
    "USER_AND_LOCATION",
    "LOCAL_USER_ACCOUNTS",
];
pub const INTUNE_SELECT: &str =
    "id,deviceName,operatingSystem,osVersion,serialNumber,model,userPrincipalName,lastSyncDateTime";

/// What a fetch read: one entry per record, kept or skipped.
#[derive(Debug, Default)]
pub struct Fetched {
    pub records: Vec<Result<MdmDevice, Skip>>,
    pub pages: u32,
}

struct Token {
    value: Secret<String>,
    refresh_at: Instant,
}

/// A client of one configured MDM.
pub struct MdmClient {
    cfg: SourceConfig,
    http: HttpClient,
    token: Option<Token>,
    policy: RetryPolicy,
}

/// What a query value may hold unescaped: RFC 3986 unreserved characters.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn urlenc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, QUERY_VALUE).to_string()
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// Refresh a token this long before it expires: a fifth of its life, at most 60 s.
fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 5).min(Duration::from_secs(60))
}

impl MdmClient {
    pub fn new(cfg: SourceConfig) -> Result<MdmClient, MdmError> {
        let ca = match &cfg {
            SourceConfig::Jamf(j) => j.ca_file.clone(),
            SourceConfig::Intune(i) => i.ca_file.clone(),
        };
        Ok(MdmClient {
            http: HttpClient::new(ca.as_deref())?,
            cfg,
            token: None,
            policy: RetryPolicy::default(),
        })
    }

    /// Shorter waits (tests and benches).
    pub fn with_policy(mut self, policy: RetryPolicy) -> MdmClient {
        self.policy = policy;
        self
    }

    fn mdm(&self) -> &'static str {
        match self.cfg {
            SourceConfig::Jamf(_) => "Jamf Pro",
            SourceConfig::Intune(_) => "Microsoft Intune",
        }
    }

    fn credentials(&self) -> String {
        match &self.cfg {
            SourceConfig::Jamf(j) => j.credentials.describe(),
            SourceConfig::Intune(i) => i.describe_credentials(),
        }
    }

    /// A request with retries (no token: the token endpoints themselves).
    async fn call(
        &self,
        method: http::Method,
        url: &str,
        headers: &[(http::header::HeaderName, String)],
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<crate::http::HttpResponse, MdmError> {
        let mut attempt = 0;
        loop {
            let r = self
                .http
                .send(method.clone(), url, headers, body.clone())
                .await;
            let (status, retry_after) = match &r {
                Ok(resp) => (Some(resp.status), resp.retry_after),
                Err(_) => (None, None),
            };
            // A token endpoint's 401 is a refusal already: nothing to refresh.
            match decide(status, retry_after, attempt, true, &self.policy) {
                Next::Done => return r.map_err(MdmError::from),
                Next::Retry(wait) => {
                    tracing::warn!(url = %redact(url), ?status, wait_ms = wait.as_millis() as u64, "MDM call failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Next::Refresh | Next::CredentialsRefused => {
                    return Err(MdmError::CredentialsRefused {
                        mdm: self.mdm(),
                        status: status.unwrap_or_default(),
                        url: redact(url),
                        what: self.credentials(),
                    });
                }
                Next::Fail => {
                    return Err(match r {
                        Err(e) => e.into(),
                        Ok(resp) => MdmError::Status {
                            mdm: self.mdm(),
                            status: resp.status,
                            url: redact(url),
                            attempts: attempt + 1,
                            excerpt: excerpt(&resp.body),
                        },
                    });
                }
            }
        }
    }

    async fn new_token(&self) -> Result<Token, MdmError> {
        let form = |pairs: &[(&str, &str)]| {
            form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs)
                .finish()
                .into_bytes()
        };
        const FORM: &str = "application/x-www-form-urlencoded";
        let (url, resp) = match &self.cfg {
            SourceConfig::Jamf(j) => match &j.credentials {
                JamfCredentials::Client {
                    client_id, secret, ..
                } => {
                    let url = format!("{}/api/oauth/token", j.api_endpoint);
                    let body = form(&[
                        ("client_id", client_id),
                        ("grant_type", "client_credentials"),
                        ("client_secret", secret.expose()),
                    ]);
                    let r = self
                        .call(http::Method::POST, &url, &[], Some((FORM, body)))
                        .await?;
                    (url, r)
                }
                JamfCredentials::Account {
                    username, password, ..
                } => {
                    let url = format!("{}/api/v1/auth/token", j.api_endpoint);
                    let basic = base64::engine::general_purpose::STANDARD
                        .encode(format!("{username}:{}", password.expose()));
                    let r = self
                        .call(
                            http::Method::POST,
                            &url,
                            &[(http::header::AUTHORIZATION, format!("Basic {basic}"))],
                            None,
                        )
                        .await?;
                    (url, r)
                }
            },
            SourceConfig::Intune(i) => {
                let url = format!("{}/{}/oauth2/v2.0/token", i.login_endpoint, i.tenant);
                let scope = format!("{}/.default", i.graph_endpoint);
                let body = form(&[
                    ("client_id", &i.client_id),
                    ("scope", &scope),
                    ("client_secret", i.client_secret.expose()),
                    ("grant_type", "client_credentials"),
                ]);
                let r = self
                    .call(http::Method::POST, &url, &[], Some((FORM, body)))
                    .await?;
                (url, r)
            }
        };
        let v: Value = serde_json::from_slice(&resp.body).map_err(|e| MdmError::Malformed {
            mdm: self.mdm(),
            url: redact(&url),
            message: format!("token answer: {e}"),
        })?;
        let malformed = |m: &str| MdmError::Malformed {
            mdm: self.mdm(),
            url: redact(&url),
            message: m.to_string(),
        };
        // OAuth answers `access_token` + `expires_in` (seconds); Jamf's legacy endpoint
        // `token` + `expires` (a time).
        let (value, lifetime) = if let Some(t) = v.get("access_token").and_then(Value::as_str) {
            let secs = v
                .get("expires_in")
                .and_then(|e| e.as_u64().or_else(|| e.as_str()?.parse().ok()))
                .unwrap_or(300);
            (t.to_string(), Duration::from_secs(secs))
        } else if let Some(t) = v.get("token").and_then(Value::as_str) {
            let expires = v
                .get("expires")
                .and_then(Value::as_str)
                .and_then(|e| OffsetDateTime::parse(e, &Rfc3339).ok())
                .ok_or_else(|| malformed("the token answer has no valid `expires`"))?;
            let left = (expires - OffsetDateTime::now_utc()).max(time::Duration::ZERO);
            (
                t.to_string(),
                Duration::try_from(left).unwrap_or(Duration::ZERO),
            )
        } else {
            return Err(malformed("the token answer has no access_token"));
        };
        if value.is_empty() {
            return Err(malformed("the token is empty"));
        }
        Ok(Token {
            value: Secret::new(value),
            refresh_at: Instant::now() + lifetime.saturating_sub(refresh_margin(lifetime)),
        })
    }

    async fn bearer(&mut self, force: bool) -> Result<String, MdmError> {
        let fresh = self
            .token
            .as_ref()
            .is_some_and(|t| !force && Instant::now() < t.refresh_at);
        if !fresh {
            self.token = Some(self.new_token().await?);
        }
        Ok(self
            .token
            .as_ref()
            .map(|t| format!("Bearer {}", t.value.expose()))
            .unwrap_or_default())
    }

    /// GET a JSON document with the bearer token: refresh before expiry and once on 401,
    /// retry 429 and 5xx.
    async fn get_json(&mut self, url: &str) -> Result<Value, MdmError> {
        let mut attempt = 0;
        let mut refreshed = false;
        loop {
            let auth = self.bearer(false).await?;
            let r = self
                .http
                .send(
                    http::Method::GET,
                    url,
                    &[(http::header::AUTHORIZATION, auth)],
                    None,
                )
                .await;
            let (status, retry_after) = match &r {
                Ok(resp) => (Some(resp.status), resp.retry_after),
                Err(_) => (None, None),
            };
            match decide(status, retry_after, attempt, refreshed, &self.policy) {
                Next::Done => {
                    let resp = r?;
                    return serde_json::from_slice(&resp.body).map_err(|e| MdmError::Malformed {
                        mdm: self.mdm(),
                        url: redact(url),
                        message: format!("not JSON: {e}"),
                    });
                }
                Next::Refresh => {
                    tracing::info!(url = %redact(url), "MDM token refused; getting a new one");
                    self.bearer(true).await?;
                    refreshed = true;
                }
                Next::Retry(wait) => {
                    tracing::warn!(url = %redact(url), ?status, wait_ms = wait.as_millis() as u64, "MDM call failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Next::CredentialsRefused => {
                    return Err(MdmError::CredentialsRefused {
                        mdm: self.mdm(),
                        status: status.unwrap_or_default(),
                        url: redact(url),
                        what: format!(
                            "{} and that the API client may read computers",
                            self.credentials()
                        ),
                    });
                }
                Next::Fail => {
                    return Err(match r {
                        Err(e) => e.into(),
                        Ok(resp) => MdmError::Status {
                            mdm: self.mdm(),
                            status: resp.status,
                            url: redact(url),
                            attempts: attempt + 1,
                            excerpt: excerpt(&resp.body),
                        },
                    });
                }
            }
        }
    }

    /// Read the inventory: all of it, or (with `since`) what changed since then.
    /// `progress(records so far, total if known)`.
    pub async fn fetch(
        &mut self,
        since: Option<OffsetDateTime>,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<Fetched, MdmError> {
        match self.cfg.clone() {
            SourceConfig::Jamf(j) => self.fetch_jamf(&j, since, progress).await,
            SourceConfig::Intune(i) => self.fetch_intune(&i, since, progress).await,
        }
    }

    async fn fetch_jamf(
        &mut self,
        j: &JamfConfig,
        since: Option<OffsetDateTime>,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<Fetched, MdmError> {
        let filter = jamf_filter(&j.filter_rsql, since);
        let sections: String = JAMF_SECTIONS
            .iter()
            .map(|s| format!("section={s}&"))
            .collect();
        let mut out = Fetched::default();
        let mut page: u32 = 0;
        loop {
            if page >= j.max_pages {
                return Err(MdmError::NeverEnding {
                    mdm: "Jamf Pro",
                    pages: page,
                    records: out.records.len(),
                });
            }
            let mut url = format!(
                "{}/api/v1/computers-inventory?{sections}page={page}&page-size={}&sort={}",
                j.api_endpoint,
                j.page_size,
                urlenc("id:asc")
            );
            if !filter.is_empty() {
                url.push_str(&format!("&filter={}", urlenc(&filter)));
            }
            let v = self.get_json(&url).await?;
            let malformed = |m: &str| MdmError::Malformed {
                mdm: "Jamf Pro",
                url: redact(&url),
                message: m.to_string(),
            };
            let total = v
                .get("totalCount")
                .and_then(Value::as_u64)
                .ok_or_else(|| malformed("no totalCount"))?;
            let results = v
                .get("results")
                .and_then(Value::as_array)
                .ok_or_else(|| malformed("no results array"))?;
            out.pages += 1;
            let n = results.len();
            out.records.extend(results.iter().map(record::from_jamf));
            progress(out.records.len() as u64, total);
            page += 1;
            if n == 0 || u64::from(page) * u64::from(j.page_size) >= total {
                return Ok(out);
            }
        }
    }

    async fn fetch_intune(
        &mut self,
        i: &IntuneConfig,
        since: Option<OffsetDateTime>,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<Fetched, MdmError> {
        let mut url = format!(
            "{}/v1.0/deviceManagement/managedDevices?$select={}&$top={}",
            i.graph_endpoint,
            urlenc(INTUNE_SELECT),
            i.page_size
        );
        if let Some(t) = since {
            url.push_str(&format!(
                "&$filter={}",
                urlenc(&format!("lastSyncDateTime ge {}", rfc3339(t)))
            ));
        }
        let mut out = Fetched::default();
        let origin = format!("{}/", i.graph_endpoint);
        loop {
            if out.pages >= i.max_pages {
                return Err(MdmError::NeverEnding {
                    mdm: "Microsoft Intune",
                    pages: out.pages,
                    records: out.records.len(),
                });
            }
            let v = self.get_json(&url).await?;
            let values =
                v.get("value")
                    .and_then(Value::as_array)
                    .ok_or_else(|| MdmError::Malformed {
                        mdm: "Microsoft Intune",
                        url: redact(&url),
                        message: "no value array".into(),
                    })?;
            out.pages += 1;
            out.records.extend(values.iter().map(record::from_intune));
            progress(out.records.len() as u64, 0);
            match v.get("@odata.nextLink").and_then(Value::as_str) {
                None => return Ok(out),
                Some(next) if next.starts_with(&origin) && next != url => url = next.to_string(),
                Some(next) => {
                    return Err(MdmError::Malformed {
                        mdm: "Microsoft Intune",
                        url: redact(&url),
                        message: format!(
                            "@odata.nextLink {:?} leaves {} or repeats the page; not followed",
                            redact(next),
                            i.graph_endpoint
                        ),
                    });
                }
            }
        }
    }
}

/// The Jamf filter of a sync: the configured one, and for a partial sync only what Jamf
/// received an inventory report for since `since`.
pub fn jamf_filter(base: &str, since: Option<OffsetDateTime>) -> String {
    let base = base.trim();
    match since {
        None => base.to_string(),
        Some(t) => {
            let clause = format!("general.reportDate>=\"{}\"", rfc3339(t));
            if base.is_empty() {
                clause
            } else if base.contains(',') {
                format!("({base});{clause}")
            } else {
                format!("{base};{clause}")
            }
        }
    }
}

/// The start of an error body, for messages (never a token: the APIs do not echo them).
fn excerpt(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let s: String = s.chars().filter(|c| !c.is_control()).take(200).collect();
    if s.is_empty() { "(empty)".into() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_filters() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        assert_eq!(
            jamf_filter("general.remoteManagement.managed==true", Some(t)),
            "general.remoteManagement.managed==true;general.reportDate>=\"2023-11-14T22:13:20Z\""
        );
        assert_eq!(
            jamf_filter("a==1,b==2", Some(t)),
            "(a==1,b==2);general.reportDate>=\"2023-11-14T22:13:20Z\""
        );
        assert_eq!(jamf_filter("a==1", None), "a==1");
    }

    #[test]
    fn tokens_refresh_early() {
        assert_eq!(
            refresh_margin(Duration::from_secs(300)),
            Duration::from_secs(60)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(5)),
            Duration::from_secs(1)
        );
    }
}
