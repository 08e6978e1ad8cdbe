//! The access point's own credentials to an API server, from a kubeconfig file: the
//! current context's cluster (`server`, `certificate-authority[-data]`, `tls-server-name`)
//! and user (`client-certificate[-data]` + `client-key[-data]`, or `token`/`tokenFile`).
//!
//! Kubeconfig is Kubernetes' format, so unknown keys are ignored (kubectl writes many); but
//! what this access point cannot honour is refused at start rather than ignored: a user
//! with an `exec` or `auth-provider` plugin, `insecure-skip-tls-verify`, a server that is
//! not `https://`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    clusters: Vec<Named<RawCluster>>,
    #[serde(default)]
    users: Vec<NamedUser>,
    #[serde(default)]
    contexts: Vec<Named<RawContext>>,
    #[serde(rename = "current-context", default)]
    current_context: String,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "context")]
    value: T,
}

#[derive(Deserialize)]
struct NamedUser {
    name: String,
    user: RawUser,
}

#[derive(Deserialize)]
struct RawCluster {
    server: String,
    #[serde(rename = "certificate-authority", default)]
    ca_file: Option<String>,
    #[serde(rename = "certificate-authority-data", default)]
    ca_data: Option<String>,
    #[serde(rename = "tls-server-name", default)]
    tls_server_name: Option<String>,
    #[serde(rename = "insecure-skip-tls-verify", default)]
    insecure: bool,
}

#[derive(Deserialize)]
struct RawContext {
    cluster: String,
    user: String,
}

#[derive(Deserialize)]
struct RawUser {
    #[serde(rename = "client-certificate", default)]
    cert_file: Option<String>,
    #[serde(rename = "client-certificate-data", default)]
    cert_data: Option<String>,
    #[serde(rename = "client-key", default)]
    key_file: Option<String>,
    #[serde(rename = "client-key-data", default)]
    key_data: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(rename = "tokenFile", default)]
    token_file: Option<String>,
    #[serde(default)]
    exec: Option<serde::de::IgnoredAny>,
    #[serde(rename = "auth-provider", default)]
    auth_provider: Option<serde::de::IgnoredAny>,
}

/// A bearer token; never printed.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

/// How to reach one API server.
#[derive(Clone)]
pub struct Upstream {
    /// `https://HOST:PORT` plus any path prefix, without a trailing `/`.
    pub server: String,
    /// `HOST:PORT` to dial.
    pub authority: String,
    pub server_name: ServerName<'static>,
    pub tls: Arc<rustls::ClientConfig>,
    pub token: Option<Token>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("server", &self.server)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// The part of `server` after the authority (`""` or `/prefix`).
    pub fn base_path(&self) -> &str {
        let rest = self.server.trim_start_matches("https://");
        rest.find('/').map(|i| &rest[i..]).unwrap_or("")
    }
}

/// Read the kubeconfig at `path` (its current context).
pub fn load(path: &Path) -> Result<Upstream, KubeconfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| KubeconfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    parse(&text, dir).map_err(|message| KubeconfigError::Invalid {
        path: path.to_path_buf(),
        message,
    })
}

fn b64(what: &str, s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| format!("{what} is not base64: {e}"))
}

fn data_or_file(
    what: &str,
    data: &Option<String>,
    file: &Option<String>,
    dir: &Path,
) -> Result<Option<Vec<u8>>, String> {
    match (data, file) {
        (Some(d), _) => b64(what, d).map(Some),
        (None, Some(f)) => {
            let p = dir.join(f);
            std::fs::read(&p)
                .map(Some)
                .map_err(|e| format!("{what} file {}: {e}", p.display()))
        }
        (None, None) => Ok(None),
    }
}

/// Parse kubeconfig text; relative file paths are taken from `dir`.
pub fn parse(text: &str, dir: &Path) -> Result<Upstream, String> {
    let raw: Raw = serde_saphyr::from_str(text).map_err(|e| format!("not a kubeconfig: {e}"))?;
    let ctx_name = if raw.current_context.is_empty() {
        match raw.contexts.as_slice() {
            [one] => one.name.clone(),
            _ => return Err("no current-context, and not exactly one context".into()),
        }
    } else {
        raw.current_context.clone()
    };
    let ctx = raw
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)
        .ok_or_else(|| format!("context {ctx_name:?} is not defined"))?;
    let cluster = raw
        .clusters
        .iter()
        .find(|c| c.name == ctx.value.cluster)
        .ok_or_else(|| format!("cluster {:?} is not defined", ctx.value.cluster))?;
    let user = raw
        .users
        .iter()
        .find(|u| u.name == ctx.value.user)
        .ok_or_else(|| format!("user {:?} is not defined", ctx.value.user))?;
    let c = &cluster.value;
    let u = &user.user;
    if c.insecure {
        return Err("insecure-skip-tls-verify is refused: give the API server's CA (certificate-authority-data)".into());
    }
    if u.exec.is_some() || u.auth_provider.is_some() {
        return Err(format!(
            "user {:?} uses an exec or auth-provider plugin; the access point needs a client certificate or a bearer token (e.g. a service account token)",
            user.name
        ));
    }
    let server = c.server.trim_end_matches('/').to_string();
    let rest = server
        .strip_prefix("https://")
        .ok_or_else(|| format!("server {server:?} must be https://"))?;
    let authority_part = rest.split('/').next().unwrap_or(rest);
    let (host, authority) = if let Some(h) = authority_part.strip_prefix('[') {
        let host = h.split(']').next().unwrap_or(h).to_string();
        let authority = if authority_part.contains("]:") {
            authority_part.to_string()
        } else {
            format!("{authority_part}:443")
        };
        (host, authority)
    } else if let Some((h, _)) = authority_part.rsplit_once(':') {
        (h.to_string(), authority_part.to_string())
    } else {
        (authority_part.to_string(), format!("{authority_part}:443"))
    };
    let name = c.tls_server_name.clone().unwrap_or(host);
    let server_name =
        ServerName::try_from(name.clone()).map_err(|e| format!("server name {name:?}: {e}"))?;
    let ca = data_or_file("certificate-authority", &c.ca_data, &c.ca_file, dir)?
        .ok_or("the cluster has no certificate-authority-data (or certificate-authority): the access point verifies the API server")?;
    let mut roots = rustls::RootCertStore::empty();
    let mut n = 0;
    for cert in CertificateDer::pem_slice_iter(&ca) {
        let cert = cert.map_err(|e| format!("certificate-authority: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("certificate-authority: {e}"))?;
        n += 1;
    }
    if n == 0 {
        return Err("certificate-authority holds no certificate".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let cert = data_or_file("client-certificate", &u.cert_data, &u.cert_file, dir)?;
    let key = data_or_file("client-key", &u.key_data, &u.key_file, dir)?;
    let token = match (&u.token, &u.token_file) {
        (Some(t), _) => Some(t.trim().to_string()),
        (None, Some(f)) => {
            let p = dir.join(f);
            Some(
                std::fs::read_to_string(&p)
                    .map_err(|e| format!("tokenFile {}: {e}", p.display()))?
                    .trim()
                    .to_string(),
            )
        }
        (None, None) => None,
    };
    let mut tls = match (cert, key) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("client-certificate: {e}"))?;
            let key =
                PrivateKeyDer::from_pem_slice(&key).map_err(|e| format!("client-key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate and key: {e}"))?
        }
        (None, None) if token.as_deref().is_some_and(|t| !t.is_empty()) => {
            builder.with_no_client_auth()
        }
        (None, None) => {
            return Err(format!(
                "user {:?} has neither a client certificate and key nor a token",
                user.name
            ));
        }
        _ => return Err("a client certificate needs its key, and a key its certificate".into()),
    };
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Upstream {
        server,
        authority,
        server_name,
        tls: Arc::new(tls),
        token: token.filter(|t| !t.is_empty()).map(Token),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(user: &str, cluster_extra: &str) -> String {
        let ca = dt_ca::CertAuthority::generate(
            "t",
            dt_ca::CaKind::Host,
            time::OffsetDateTime::now_utc(),
        )
        .unwrap()
        .cert_pem();
        let ca = base64::engine::general_purpose::STANDARD.encode(ca);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://10.0.0.1:6443/\n    certificate-authority-data: {ca}\n{cluster_extra}users:\n- name: u\n  user:\n{user}contexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n"
        )
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        let dir = Path::new(".");
        let e = parse(&cfg("    exec: {command: aws}\n", ""), dir)
            .err()
            .unwrap();
        assert!(e.contains("exec or auth-provider"), "{e}");
        let e = parse(
            &cfg("    token: abc\n", "    insecure-skip-tls-verify: true\n"),
            dir,
        )
        .err()
        .unwrap();
        assert!(e.contains("insecure-skip-tls-verify is refused"), "{e}");
        let e = parse(&cfg("    username: a\n", ""), dir).err().unwrap();
        assert!(e.contains("neither a client certificate"), "{e}");
        assert!(parse("just: text", dir).is_err());
        let e = parse(
            &cfg("    token: abc\n", "").replace("https://", "http://"),
            dir,
        )
        .err()
        .unwrap();
        assert!(e.contains("must be https://"), "{e}");
        let up = parse(&cfg("    token: abc\n", ""), dir).unwrap();
        assert_eq!(up.authority, "10.0.0.1:6443");
        assert_eq!(up.base_path(), "");
        assert_eq!(format!("{:?}", up.token), "Some(<secret>)");
    }
}
