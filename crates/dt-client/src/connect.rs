//! gRPC connections over our own TLS (so the pin verifier decides trust) with an optional
//! client certificate (mTLS identity).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dt_proto::v1::auth_service_client::AuthServiceClient;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::trust::{PinCheck, PinVerifier, TrustPolicy};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "invalid server address {0:?}: use HOST:PORT, e.g. 127.0.0.1:3080, or several as HOST:PORT,HOST:PORT"
    )]
    BadAddress(String),
    #[error(
        "cannot reach the devtrust server{}: {reason}; is `devtrust start` running there?",
        at(addr)
    )]
    Unreachable {
        /// The address dialled; empty when the connection broke after it was made.
        addr: String,
        reason: String,
    },
    #[error("cannot verify the server at {addr}: {reason}")]
    Untrusted { addr: String, reason: String },
    #[error("{0}")]
    Tls(String),
    #[error("{0}")]
    Api(String),
}

fn at(addr: &str) -> String {
    if addr.is_empty() {
        String::new()
    } else {
        format!(" at {addr}")
    }
}

impl ClientError {
    /// The server could not be reached or the connection broke: the operation may be
    /// repeated on another auth server ([`with_failover`]).
    pub fn is_transport(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }

    /// A server refusal with the server's own message (it already says what to do).
    pub fn from_status(s: tonic::Status) -> Self {
        let msg = s.message().to_string();
        if is_transport_status(&s) {
            return ClientError::Unreachable {
                addr: String::new(),
                reason: msg,
            };
        }
        match s.code() {
            tonic::Code::Unavailable => ClientError::Unreachable {
                addr: String::new(),
                reason: msg,
            },
            _ if msg.is_empty() => ClientError::Api(format!("request failed: {:?}", s.code())),
            _ => ClientError::Api(msg),
        }
    }
}

/// A status that tonic made up because the connection failed (the server never answered,
/// or went away mid-call), as opposed to one the server sent.
pub fn is_transport_status(s: &tonic::Status) -> bool {
    match s.code() {
        tonic::Code::Unavailable => true,
        tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Cancelled => {
            let m = s.message();
            [
                "transport error",
                "connection",
                "h2 protocol error",
                "broken pipe",
                "stream closed",
                "error reading a body",
                "operation was canceled",
            ]
            .iter()
            .any(|needle| m.contains(needle))
        }
        _ => false,
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

/// The auth servers of one cluster: `HOST:PORT`, or several as `HOST:PORT,HOST:PORT` (every
/// auth server of a cluster shares one CA, so one pin trusts them all). A connection goes to
/// the first that answers, starting with the one that answered last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthAddrs {
    list: Vec<(String, u16)>,
}

impl AuthAddrs {
    pub fn parse(text: &str) -> Result<AuthAddrs, ClientError> {
        let list = text
            .split(',')
            .map(str::trim)
            .map(|a| {
                if a.is_empty() {
                    Err(ClientError::BadAddress(text.into()))
                } else {
                    split_addr(a)
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AuthAddrs { list })
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

impl std::fmt::Display for AuthAddrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (host, port)) in self.list.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            if host.contains(':') {
                write!(f, "{sep}[{host}]:{port}")?;
            } else {
                write!(f, "{sep}{host}:{port}")?;
            }
        }
        Ok(())
    }
}

/// Dials the auth servers in turn: the one that answered last first, then the others. A
/// refused or timed-out address costs one attempt, so a killed server is skipped at once.
#[derive(Clone)]
struct Dialer {
    addrs: Arc<AuthAddrs>,
    preferred: Arc<AtomicUsize>,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

impl Dialer {
    fn new(addrs: AuthAddrs, tls: Arc<rustls::ClientConfig>, timeout: Duration) -> Dialer {
        // With several servers a dead one must not eat the whole connect budget.
        let timeout = if addrs.len() > 1 {
            timeout.min(FAILOVER_CONNECT_TIMEOUT)
        } else {
            timeout
        };
        Dialer {
            addrs: Arc::new(addrs),
            preferred: Arc::new(AtomicUsize::new(0)),
            tls,
            timeout,
        }
    }

    async fn dial(&self) -> Result<tokio_rustls::client::TlsStream<TcpStream>, std::io::Error> {
        let n = self.addrs.len();
        let start = self.preferred.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let (host, port) = &self.addrs.list[idx];
            match dial_one(host, *port, self.tls.clone(), self.timeout).await {
                Ok(s) => {
                    self.preferred.store(idx, Ordering::Relaxed);
                    return Ok(s);
                }
                Err(e) if n == 1 => return Err(e),
                Err(e) => failures.push(format!("{host}:{port}: {e}")),
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            format!("no auth server answered ({})", failures.join("; ")),
        ))
    }
}

/// How long one address of several may take to accept a connection.
const FAILOVER_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long an operation keeps retrying (on the next auth server) after its connection
/// failed: long enough for a client to notice a killed server and reach another.
pub const FAILOVER_WINDOW: Duration = Duration::from_secs(20);

/// Runs `op` again while it fails because the server could not be reached or the
/// connection broke ([`ClientError::is_transport`]), for up to [`FAILOVER_WINDOW`], with a
/// short backoff. `op` must be safe to repeat from its start (a login, a whole ceremony);
/// a refusal by the server is returned at once.
pub async fn with_failover<T, E, F, Fut>(
    is_transport: impl Fn(&E) -> bool,
    mut op: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + FAILOVER_WINDOW;
    let mut pause = Duration::from_millis(50);
    loop {
        match op().await {
            Err(e) if is_transport(&e) && tokio::time::Instant::now() + pause < deadline => {
                tracing::debug!("connection to the auth server failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

pub fn client_tls_config(
    policy: TrustPolicy,
    identity: &Identity,
) -> Result<(Arc<rustls::ClientConfig>, Arc<PinVerifier>), ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinVerifier::new(PinCheck::new(policy), provider.clone()));
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

static SOURCE_ADDRESS: std::sync::OnceLock<std::net::IpAddr> = std::sync::OnceLock::new();

/// Make this process's connections to the auth service leave from `ip` (`dtsh device
/// web-auth --bind-addr`, like `ssh -b`: on a host with several addresses, the one the
/// browser's traffic also leaves from). Returns false when one was already set.
pub fn set_source_address(ip: std::net::IpAddr) -> bool {
    SOURCE_ADDRESS.set(ip).is_ok()
}

async fn tcp_connect(host: &str, port: u16) -> Result<TcpStream, std::io::Error> {
    let Some(source) = SOURCE_ADDRESS.get().copied() else {
        return TcpStream::connect((host, port)).await;
    };
    let target = tokio::net::lookup_host((host, port))
        .await?
        .find(|a| a.is_ipv4() == source.is_ipv4())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                format!("{host} has no address of the family of the source address {source}"),
            )
        })?;
    let socket = if source.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(std::net::SocketAddr::new(source, 0))?;
    socket.connect(target).await
}

async fn dial_one(
    host: &str,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, std::io::Error> {
    let tcp = tokio::time::timeout(timeout, tcp_connect(host, port))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connection timed out"))??;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    TlsConnector::from(tls).connect(name, tcp).await
}

/// TLS handshake only, recording the server's chain without trusting it: for trust on
/// first use, so the CLI can show the pin and ask.
pub async fn fetch_server_chain(addr: &str) -> Result<Vec<Vec<u8>>, ClientError> {
    let addrs = AuthAddrs::parse(addr)?;
    let (cfg, verifier) = client_tls_config(TrustPolicy::Capture, &Identity::Anonymous)?;
    match Dialer::new(addrs, cfg, CONNECT_TIMEOUT).dial().await {
        Ok(_) => Err(ClientError::Tls(
            "server accepted an untrusted handshake".into(),
        )),
        Err(e) => verifier
            .check
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

/// A raw channel, for other generated service clients. `addr` may list several auth
/// servers ([`AuthAddrs`]); the channel reconnects to the next one when its server goes.
pub async fn channel(
    addr: &str,
    policy: TrustPolicy,
    identity: Identity,
) -> Result<Channel, ClientError> {
    let addrs = AuthAddrs::parse(addr)?;
    let (cfg, verifier) = client_tls_config(policy, &identity)?;
    let endpoint = endpoint(&addrs)?;
    let dialer = Dialer::new(addrs, cfg, CONNECT_TIMEOUT);
    match endpoint.connect_with_connector(connector(dialer)).await {
        Ok(ch) => Ok(ch),
        Err(e) => {
            let mut reason = e.to_string();
            let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
            while let Some(s) = src {
                reason = s.to_string();
                src = s.source();
            }
            if verifier.check.captured_chain().is_some() {
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

/// A channel that connects on first use and reconnects (to whichever listed auth server
/// answers) after failures, with HTTP/2 keep-alives so a dead server is noticed within
/// seconds: for long-running access points, which keep serving (failing closed) while the
/// auth service is away.
pub fn lazy_channel(
    addr: &str,
    policy: TrustPolicy,
    identity: Identity,
) -> Result<Channel, ClientError> {
    let addrs = AuthAddrs::parse(addr)?;
    let (cfg, _verifier) = client_tls_config(policy, &identity)?;
    let endpoint = endpoint(&addrs)?
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    let dialer = Dialer::new(addrs, cfg, LAZY_CONNECT_TIMEOUT);
    Ok(endpoint.connect_with_connector_lazy(connector(dialer)))
}

const LAZY_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn endpoint(addrs: &AuthAddrs) -> Result<Endpoint, ClientError> {
    // The connector does TLS itself and picks the server, so tonic sees a plain-scheme URI
    // of the first address (used only for the HTTP/2 :authority).
    let (host, port) = &addrs.list[0];
    let first = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok(Endpoint::from_shared(format!("http://{first}"))
        .map_err(|_| ClientError::BadAddress(first))?
        .connect_timeout(CONNECT_TIMEOUT * addrs.len() as u32)
        .tcp_nodelay(true))
}

fn connector(
    dialer: Dialer,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |_uri: Uri| {
        let dialer = dialer.clone();
        async move { dialer.dial().await.map(TokioIo::new) }
    })
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

    #[test]
    fn address_lists() {
        let a = AuthAddrs::parse("127.0.0.1:3080, 127.0.0.2:3081").unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a.to_string(), "127.0.0.1:3080,127.0.0.2:3081");
        assert_eq!(AuthAddrs::parse("[::1]:1").unwrap().to_string(), "[::1]:1");
        for bad in ["", "a:1,", ",a:1", "a:1,,b:2", "a:1,b"] {
            assert!(AuthAddrs::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_connection_failures_count_as_transport() {
        assert!(is_transport_status(&tonic::Status::unavailable("x")));
        assert!(is_transport_status(&tonic::Status::unknown(
            "h2 protocol error: error reading a body from connection"
        )));
        assert!(!is_transport_status(&tonic::Status::permission_denied(
            "connection refused by policy"
        )));
        assert!(!is_transport_status(&tonic::Status::unauthenticated(
            "invalid username or password"
        )));
        assert!(!is_transport_status(&tonic::Status::internal(
            "storage failed"
        )));
    }

    #[tokio::test]
    async fn failover_retries_transport_failures_only() {
        let mut calls = 0;
        let r: Result<u32, ClientError> = with_failover(ClientError::is_transport, || {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    Err(ClientError::Unreachable {
                        addr: "a".into(),
                        reason: "refused".into(),
                    })
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), 3);
        let mut calls = 0;
        let r: Result<u32, ClientError> = with_failover(ClientError::is_transport, || {
            calls += 1;
            async { Err(ClientError::Api("refused by the server".into())) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }

    #[tokio::test]
    async fn dialer_skips_a_dead_server() {
        // One listener that accepts, one address that refuses (a port we bound and closed).
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap();
        let accepted = tokio::spawn(async move { live.accept().await.is_ok() });
        let (cfg, _) = client_tls_config(TrustPolicy::Insecure, &Identity::Anonymous).unwrap();
        let addrs = AuthAddrs::parse(&format!("{dead_addr},{live_addr}")).unwrap();
        let dialer = Dialer::new(addrs, cfg, Duration::from_secs(2));
        // The TLS handshake fails (the listener speaks no TLS), but only after the live
        // server accepted the connection: the dead one was skipped.
        let _ = tokio::time::timeout(Duration::from_secs(2), dialer.dial()).await;
        assert!(accepted.await.unwrap());
        assert_eq!(
            dialer.preferred.load(Ordering::Relaxed),
            0,
            "TLS failed, so no preference moved"
        );
    }
}
