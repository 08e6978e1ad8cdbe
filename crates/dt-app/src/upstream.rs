//! The HTTP client to apps: plain HTTP, or HTTPS checked against the system's roots or an
//! app's own CA file (`ca_file`), or, only when the app's configuration opts in
//! (`insecure_skip_verify`), not checked at all.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Where the system keeps its trusted roots (Debian's ca-certificates).
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How an HTTPS app's certificate is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamTls {
    /// Against the system's roots ([`SYSTEM_ROOTS`]).
    System,
    /// Against the CA certificates in this PEM file.
    CaFile(std::path::PathBuf),
    /// Not at all (`insecure_skip_verify: true`; labs only).
    Insecure,
}

/// Why an app's TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot read CA certificates from {path}: {why}")]
    CaFile { path: String, why: String },
    #[error("{path} holds no CA certificate")]
    NoCa { path: String },
    #[error("tls: {0}")]
    Tls(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls client configuration for an HTTPS app.
pub fn client_config(tls: &UpstreamTls) -> Result<rustls::ClientConfig, UpstreamError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamError::Tls(e.to_string()))?;
    let mut cfg = match tls {
        UpstreamTls::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(dt_tls::Verifier::new(
                dt_tls::NoCheck,
                provider(),
            )))
            .with_no_client_auth(),
        UpstreamTls::System | UpstreamTls::CaFile(_) => {
            let path = match tls {
                UpstreamTls::CaFile(p) => p.clone(),
                _ => SYSTEM_ROOTS.into(),
            };
            let shown = path.display().to_string();
            use rustls::pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(&path).map_err(|e| UpstreamError::CaFile {
                path: shown.clone(),
                why: e.to_string(),
            })? {
                let cert = cert.map_err(|e| UpstreamError::CaFile {
                    path: shown.clone(),
                    why: e.to_string(),
                })?;
                // A system bundle may hold a certificate rustls cannot use: skip it.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(UpstreamError::NoCa { path: shown });
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// A connection to an app: TCP, or TLS over TCP.
pub enum Stream {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl Read for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl Write for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Connects to `http://` apps over TCP and to `https://` ones over TLS.
#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    tls: Option<tokio_rustls::TlsConnector>,
}

type Boxed = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<http::Uri> for Connector {
    type Response = Stream;
    type Error = Boxed;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, Boxed>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Boxed>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let mut http = self.http.clone();
        let tls = self.tls.clone();
        Box::pin(async move {
            let https = uri.scheme_str() == Some("https");
            let host = uri.host().unwrap_or_default().to_string();
            let tcp = http.call(uri).await?;
            if !https {
                return Ok(Stream::Plain(tcp));
            }
            let tls = tls.ok_or("this app is not configured for https")?;
            let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
                .map_err(|e| format!("{host:?} is not a TLS server name: {e}"))?
                .to_owned();
            let s = tls.connect(name, tcp.into_inner()).await?;
            Ok(Stream::Tls(Box::new(TokioIo::new(s))))
        })
    }
}

/// The HTTP(S) client of one app.
pub type AppClient = Client<Connector, Incoming>;

/// A client for an app at `uri` (https: with `tls`).
pub fn client(uri: &http::Uri, tls: &UpstreamTls) -> Result<AppClient, UpstreamError> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    http.enforce_http(false);
    let tls = if uri.scheme_str() == Some("https") {
        Some(tokio_rustls::TlsConnector::from(Arc::new(client_config(
            tls,
        )?)))
    } else {
        None
    };
    Ok(Client::builder(TokioExecutor::new()).build(Connector { http, tls }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = std::env::temp_dir().join(format!("dt-app-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_config(&UpstreamTls::CaFile(empty)).unwrap_err();
        assert!(err.to_string().contains("holds no CA certificate"), "{err}");
        let err = client_config(&UpstreamTls::CaFile(dir.join("missing.pem"))).unwrap_err();
        assert!(
            err.to_string().contains("cannot read CA certificates"),
            "{err}"
        );
        assert!(client_config(&UpstreamTls::Insecure).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
