//! The node's connection to the auth service: our own TLS (so the CA pin decides trust, as
//! for `dtsh`), the node certificate as client identity, and a **lazy** channel that
//! reconnects by itself: a node starts (and keeps serving, failing closed) while the auth
//! service is down, and picks the connection up again when it comes back.

use std::sync::Arc;
use std::time::Duration;

use dt_client::{Identity, TrustPolicy};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::NodeError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn split_addr(addr: &str) -> Result<(String, u16), NodeError> {
    let bad = || {
        NodeError::Config(format!(
            "auth server {addr:?}: use HOST:PORT, e.g. 127.0.0.1:3080"
        ))
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host, port))
}

/// A channel to the auth service that connects on first use and reconnects after failures.
pub fn lazy_channel(
    addr: &str,
    policy: TrustPolicy,
    identity: Identity,
) -> Result<Channel, NodeError> {
    let (host, port) = split_addr(addr)?;
    let (cfg, _verifier) = dt_client::connect::client_tls_config(policy, &identity)?;
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|_| NodeError::Config(format!("auth server {addr:?} is not an address")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    let cfg: Arc<rustls::ClientConfig> = cfg;
    let connector = tower::service_fn(move |_uri: Uri| {
        let cfg = cfg.clone();
        let host = host.clone();
        async move {
            let tcp =
                tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port)))
                    .await
                    .map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "connection timed out")
                    })??;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from(host).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
            })?;
            let tls = TlsConnector::from(cfg).connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}
