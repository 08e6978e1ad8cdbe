//! gRPC connections over our own TLS (so the pin verifier decides trust) with an optional
//! client certificate (mTLS identity).

use std::sync::Arc;
use std::time::Duration;

use dt_proto::v1::auth_service_client::AuthServiceClient;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::trust::{PinVerifier, TrustPolicy};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server address {0:?}: use HOST:PORT, e.g. 127.0.0.1:3080")]
    BadAddress(String),
    #[error(
        "cannot reach the devtrust server at {addr}: {reason}; is `devtrust start` running there?"
    )]
    Unreachable { addr: String, reason: String },
    #[error("cannot verify the server at {addr}: {reason}")]
    Untrusted { addr: String, reason: String },
    #[error("{0}")]
    Tls(String),
    #[error("{0}")]
    Api(String),
}

impl ClientError {
    /// A server refusal with the server's own message (it already says what to do).
    pub fn from_status(s: tonic::Status) -> Self {
        let msg = s.message().to_string();
        match s.code() {
            tonic::Code::Unavailable => ClientError::Unreachable {
                addr: "the server".into(),
                reason: msg,
            },
            _ if msg.is_empty() => ClientError::Api(format!("request failed: {:?}", s.code())),
            _ => ClientError::Api(msg),
        }
    }
}

/// Who we are on the connection.
#[derive(Clone, Default)]
pub enum Identity {
    #[default]
    Anonymous,
    /// A client certificate (DER) and its PKCS#8 key (DER).
    Cert {
        cert_der: Vec<u8>,
        key_pkcs8_der: Vec<u8>,
    },
}

fn split_addr(addr: &str) -> Result<(String, u16), ClientError> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| ClientError::BadAddress(addr.into()))?;
    let port: u16 = port
        .parse()
        .map_err(|_| ClientError::BadAddress(addr.into()))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if host.is_empty() {
        return Err(ClientError::BadAddress(addr.into()));
    }
    Ok((host, port))
}

pub fn client_tls_config(
    policy: TrustPolicy,
    identity: &Identity,
) -> Result<(Arc<rustls::ClientConfig>, Arc<PinVerifier>), ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinVerifier::new(policy, provider.clone()));
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone());
    let mut cfg = match identity {
        Identity::Anonymous => builder.with_no_client_auth(),
        Identity::Cert {
            cert_der,
            key_pkcs8_der,
        } => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(cert_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8_der.clone())),
            )
            .map_err(|e| ClientError::Tls(format!("client certificate unusable: {e}")))?,
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok((Arc::new(cfg), verifier))
}

async fn dial(
    addr: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, std::io::Error> {
    let (host, port) = split_addr(addr)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connection timed out"))??;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(host)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    TlsConnector::from(tls).connect(name, tcp).await
}

/// TLS handshake only, recording the server's chain without trusting it: for trust on
/// first use, so the CLI can show the pin and ask.
pub async fn fetch_server_chain(addr: &str) -> Result<Vec<Vec<u8>>, ClientError> {
    let (cfg, verifier) = client_tls_config(TrustPolicy::Capture, &Identity::Anonymous)?;
    match dial(addr, cfg).await {
        Ok(_) => Err(ClientError::Tls(
            "server accepted an untrusted handshake".into(),
        )),
        Err(e) => verifier
            .captured_chain()
            .ok_or_else(|| ClientError::Unreachable {
                addr: addr.into(),
                reason: e.to_string(),
            }),
    }
}

/// Connect the gRPC client. Errors say whether the server is unreachable or untrusted.
pub async fn connect(
    addr: &str,
    policy: TrustPolicy,
    identity: Identity,
) -> Result<AuthServiceClient<Channel>, ClientError> {
    Ok(AuthServiceClient::new(
        channel(addr, policy, identity).await?,
    ))
}

/// A raw channel, for other generated service clients.
pub async fn channel(
    addr: &str,
    policy: TrustPolicy,
    identity: Identity,
) -> Result<Channel, ClientError> {
    split_addr(addr)?;
    let (cfg, verifier) = client_tls_config(policy, &identity)?;
    // The connector does TLS itself, so tonic sees a plain-scheme URI.
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|_| ClientError::BadAddress(addr.into()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    let target = addr.to_string();
    let connector = tower::service_fn(move |_uri: Uri| {
        let cfg = cfg.clone();
        let target = target.clone();
        async move { dial(&target, cfg).await.map(TokioIo::new) }
    });
    match endpoint.connect_with_connector(connector).await {
        Ok(ch) => Ok(ch),
        Err(e) => {
            let mut reason = e.to_string();
            let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
            while let Some(s) = src {
                reason = s.to_string();
                src = s.source();
            }
            if verifier.captured_chain().is_some() {
                Err(ClientError::Untrusted {
                    addr: addr.into(),
                    reason,
                })
            } else {
                Err(ClientError::Unreachable {
                    addr: addr.into(),
                    reason,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            split_addr("127.0.0.1:3080").unwrap(),
            ("127.0.0.1".into(), 3080)
        );
        assert_eq!(split_addr("[::1]:3080").unwrap(), ("::1".into(), 3080));
        assert!(split_addr("localhost").is_err());
        assert!(split_addr(":3080").is_err());
        assert!(split_addr("h:99999").is_err());
    }
}
