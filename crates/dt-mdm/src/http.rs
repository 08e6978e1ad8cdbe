//! A small HTTPS client for the MDM APIs (hyper 1 over tokio-rustls), and the retry policy
//! every MDM call follows.
//!
//! - TLS only, verified against `ca_file` when the config names one (a private Jamf server)
//!   or the system's CA bundle otherwise. No plain HTTP: credentials never travel in clear.
//! - Every request has a deadline ([`REQUEST_TIMEOUT`]) and every answer a size cap
//!   ([`MAX_BODY`]); a page beyond it is malformed, not a reason to run out of memory.
//! - [`decide`] is the pure retry policy: 429 waits `Retry-After` (capped), 5xx and
//!   transport errors back off exponentially, a 401 refreshes the token once, a second 401
//!   or a 403 stops with the credential to check.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};

/// The most one request (connect, TLS, headers and body) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest answer read (a page of 2000 Jamf computers is a few MB).
pub const MAX_BODY: usize = 64 * 1024 * 1024;
/// Where Debian (and most Linux) keeps the system's CA bundle.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0}")]
    Setup(String),
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: Bytes,
}

#[derive(Clone)]
pub struct HttpClient {
    tls: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpClient")
    }
}

/// A parsed `https://host[:port]/path?query`.
struct Target {
    host: String,
    port: u16,
    path_and_query: String,
    authority: String,
}

fn target(url: &str) -> Result<Target, HttpError> {
    let bad = |m: &str| HttpError::Transport {
        url: url.to_string(),
        message: m.to_string(),
    };
    let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad("only https:// URLs are used"));
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok(Target {
        port: authority.port_u16().unwrap_or(443),
        host,
        authority: authority.as_str().to_string(),
        path_and_query: uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into()),
    })
}

/// `Retry-After`: seconds, or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

impl HttpClient {
    /// Trust `ca_file` (PEM certificates) if given, else the system's CA bundle.
    pub fn new(ca_file: Option<&Path>) -> Result<HttpClient, HttpError> {
        let (path, what) = match ca_file {
            Some(p) => (p.to_path_buf(), "ca_file"),
            None => (
                Path::new(SYSTEM_CA_BUNDLE).to_path_buf(),
                "the system CA bundle",
            ),
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| HttpError::Setup(format!("cannot read {what} {}: {e}", path.display())))?;
        let certs = dt_ca::pem::parse_pem_all(&text, "CERTIFICATE")
            .map_err(|e| HttpError::Setup(format!("{what} {}: {e}", path.display())))?;
        let mut roots = rustls::RootCertStore::empty();
        let mut added = 0;
        for der in certs {
            if roots.add(CertificateDer::from(der)).is_ok() {
                added += 1;
            }
        }
        if added == 0 {
            return Err(HttpError::Setup(format!(
                "{what} {} holds no usable CA certificate (PEM \"BEGIN CERTIFICATE\")",
                path.display()
            )));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| HttpError::Setup(format!("tls: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(HttpClient {
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
        })
    }

    /// One request; the status is the caller's to judge.
    pub async fn send(
        &self,
        method: http::Method,
        url: &str,
        headers: &[(http::header::HeaderName, String)],
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<HttpResponse, HttpError> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.send_inner(method, url, headers, body))
            .await
            .map_err(|_| HttpError::Transport {
                url: redact(url),
                message: format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()),
            })?
    }

    async fn send_inner(
        &self,
        method: http::Method,
        url: &str,
        headers: &[(http::header::HeaderName, String)],
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<HttpResponse, HttpError> {
        let t = target(url)?;
        let err = |m: String| HttpError::Transport {
            url: redact(url),
            message: m,
        };
        let tcp = tokio::net::TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(|e| err(format!("cannot connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let name =
            ServerName::try_from(t.host.clone()).map_err(|_| err("invalid host name".into()))?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| err(format!("TLS: {e} (set ca_file for a private CA)")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| err(format!("HTTP: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = http::Request::builder()
            .method(method)
            .uri(t.path_and_query.as_str())
            .header(http::header::HOST, t.authority.as_str())
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("devtrust-mdm/", env!("CARGO_PKG_VERSION")),
            );
        for (k, v) in headers {
            req = req.header(k, v.as_str());
        }
        let payload = match body {
            Some((ct, b)) => {
                req = req.header(http::header::CONTENT_TYPE, ct);
                Bytes::from(b)
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(payload))
            .map_err(|e| err(format!("request: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| err(format!("HTTP: {e}")))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| err(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok(HttpResponse {
            status,
            retry_after,
            body,
        })
    }
}

/// A URL for messages: the query (filters, cursors) dropped.
pub fn redact(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_string()
}

/// How many times one call is tried.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base: Duration,
    pub max_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            base: Duration::from_millis(200),
            max_wait: Duration::from_secs(60),
        }
    }
}

/// What to do after an answer (or a transport error, `status == None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Done,
    /// Wait, then try again.
    Retry(Duration),
    /// Get a new token and try again (once).
    Refresh,
    /// 401 after a refresh, or 403: the credentials are refused.
    CredentialsRefused,
    /// Another 4xx, or retries exhausted.
    Fail,
}

/// The retry policy, pure. `attempt` counts from 0; `refreshed` says a token refresh already
/// happened for this call.
pub fn decide(
    status: Option<u16>,
    retry_after: Option<Duration>,
    attempt: u32,
    refreshed: bool,
    p: &RetryPolicy,
) -> Next {
    let backoff = || {
        let exp = p.base.saturating_mul(1u32 << attempt.min(16));
        exp.min(p.max_wait)
    };
    let out_of_attempts = attempt + 1 >= p.attempts;
    match status {
        Some(s) if (200..300).contains(&s) => Next::Done,
        Some(401) if !refreshed => Next::Refresh,
        Some(401 | 403) => Next::CredentialsRefused,
        _ if out_of_attempts => Next::Fail,
        Some(429) => Next::Retry(retry_after.unwrap_or_else(backoff).min(p.max_wait)),
        Some(s) if s >= 500 => Next::Retry(
            retry_after
                .map(|r| r.min(p.max_wait))
                .unwrap_or_else(backoff),
        ),
        None => Next::Retry(backoff()),
        Some(_) => Next::Fail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_policy() {
        let p = RetryPolicy {
            attempts: 4,
            base: Duration::from_millis(100),
            max_wait: Duration::from_secs(5),
        };
        assert_eq!(decide(Some(200), None, 0, false, &p), Next::Done);
        assert_eq!(decide(Some(401), None, 0, false, &p), Next::Refresh);
        assert_eq!(
            decide(Some(401), None, 1, true, &p),
            Next::CredentialsRefused
        );
        assert_eq!(
            decide(Some(403), None, 0, false, &p),
            Next::CredentialsRefused
        );
        // 429 honours Retry-After, capped.
        assert_eq!(
            decide(Some(429), Some(Duration::from_secs(2)), 0, false, &p),
            Next::Retry(Duration::from_secs(2))
        );
        assert_eq!(
            decide(Some(429), Some(Duration::from_secs(600)), 0, false, &p),
            Next::Retry(Duration::from_secs(5))
        );
        // 5xx and transport errors back off exponentially.
        assert_eq!(
            decide(Some(503), None, 0, false, &p),
            Next::Retry(Duration::from_millis(100))
        );
        assert_eq!(
            decide(None, None, 2, false, &p),
            Next::Retry(Duration::from_millis(400))
        );
        // ... until the attempts run out.
        assert_eq!(decide(Some(503), None, 3, false, &p), Next::Fail);
        assert_eq!(decide(Some(404), None, 0, false, &p), Next::Fail);
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn only_https_targets() {
        assert!(target("http://example.com/x").is_err());
        let t = target("https://127.0.0.1:8443/api/v1/x?page=1").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 8443));
        assert_eq!(t.path_and_query, "/api/v1/x?page=1");
        assert_eq!(redact("https://h/p?filter=secret"), "https://h/p");
    }
}
