//! `dtsh kube ls|login|logout|credentials`.
//!
//! `dtsh kube login NAME` writes a kubectl context named after the cluster into
//! `$KUBECONFIG` (its first file) or `~/.kube/config`, and makes it current:
//!
//! - the cluster entry points at the access point (`https://ADDR/kube/NAME`) and pins the
//!   access point's serving certificate, taken from a TLS handshake with it and accepted
//!   only when its key is the key the cluster's host CA certified as the `kube` access
//!   point serving NAME (the handshake proves the access point holds it);
//! - the user entry runs `dtsh kube credentials` (the exec credential plugin,
//!   `client.authentication.k8s.io/v1`), which hands kubectl this profile's certificate and
//!   key: the certificate carries the device when the login authenticated one;
//! - `--kube-user`/`--kube-group` become the context's `as`/`as-groups` (kubectl then sends
//!   them as impersonation requests, which the access point decides).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use base64::Engine;
use clap::Subcommand;
use dt_client::{Profile, ProfileStore};
use dt_proto::v1 as pb;
use dt_types::ServiceKind;
use serde_json::{Value, json};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use dt_cli::{Format, table};

#[derive(Subcommand)]
pub enum KubeCmd {
    /// List the Kubernetes clusters your roles let you reach.
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Add a kubectl context for NAME (to $KUBECONFIG or ~/.kube/config) and make it current.
    Login {
        /// The cluster's name (`dtsh kube ls`).
        name: String,
        /// The Kubernetes user to impersonate (when your roles allow several).
        #[arg(long)]
        kube_user: Option<String>,
        /// Kubernetes groups to impersonate (default: every group your roles allow).
        #[arg(long = "kube-group")]
        kube_groups: Vec<String>,
    },
    /// Remove the kubectl context of NAME (or of every devtrust cluster).
    Logout { name: Option<String> },
    /// The exec credential plugin kubectl runs: prints an ExecCredential with this
    /// profile's certificate and key.
    #[command(hide = true)]
    Credentials,
}

/// Marks the kubeconfig entries dtsh wrote, so logout removes only those.
const USER_PREFIX: &str = "devtrust-";

fn kubeconfig_path() -> anyhow::Result<PathBuf> {
    if let Some(k) = std::env::var_os("KUBECONFIG").filter(|k| !k.is_empty()) {
        let first = std::env::split_paths(&k).next();
        if let Some(p) = first.filter(|p| !p.as_os_str().is_empty()) {
            return Ok(p);
        }
    }
    let home = std::env::var_os("HOME").context("neither KUBECONFIG nor HOME is set")?;
    Ok(PathBuf::from(home).join(".kube").join("config"))
}

fn load_kubeconfig(path: &std::path::Path) -> anyhow::Result<Value> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => {
            let v: Value = serde_saphyr::from_str(&t)
                .with_context(|| format!("{} is not a kubeconfig", path.display()))?;
            Ok(v)
        }
        Ok(_) => Ok(json!({})),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(json!({})),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn save_kubeconfig(path: &std::path::Path, v: &Value) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = serde_saphyr::to_string(v)?;
    dt_client::profile::write_file(path, text.as_bytes(), 0o600)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Replace (or add) the entry `name` of the list `key`.
fn upsert(cfg: &mut Value, key: &str, name: &str, entry: Value) {
    if !cfg[key].is_array() {
        cfg[key] = json!([]);
    }
    if let Some(list) = cfg[key].as_array_mut() {
        list.retain(|e| e["name"] != name);
        list.push(entry);
    }
}

fn remove(cfg: &mut Value, key: &str, keep: impl Fn(&Value) -> bool) {
    if let Some(list) = cfg[key].as_array_mut() {
        list.retain(keep);
    }
}

/// Accepts the access point's serving certificate only when the host CA certified its key
/// as the `kube` access point `service`; keeps it for the kubeconfig.
#[derive(Debug)]
struct PinServing {
    host_ca_der: Vec<u8>,
    service: String,
    seen: Arc<Mutex<Option<Vec<u8>>>>,
}

impl dt_tls::CheckServer for PinServing {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
        _provider: &rustls::crypto::CryptoProvider,
    ) -> Result<(), rustls::Error> {
        let err = |m: String| rustls::Error::General(m);
        let now = time::OffsetDateTime::from_unix_timestamp(now.as_secs() as i64)
            .map_err(|e| err(e.to_string()))?;
        let service_cert = intermediates.first().ok_or_else(|| {
            err("the access point did not present its host-CA certificate".into())
        })?;
        let id =
            dt_ca::verify_service_cert_by_ca_cert(&self.host_ca_der, service_cert.as_ref(), now)
                .map_err(|e| err(format!("the access point's certificate is refused: {e}")))?;
        if id.kind != ServiceKind::Kube || id.name != self.service {
            return Err(err(format!(
                "expected the kube access point {:?}, but the certificate names {} {:?}",
                self.service, id.kind, id.name
            )));
        }
        let a = dt_ca::cert_spki_der(end_entity.as_ref()).map_err(|e| err(e.to_string()))?;
        let b = dt_ca::cert_spki_der(service_cert.as_ref()).map_err(|e| err(e.to_string()))?;
        if a != b {
            return Err(err(
                "the access point's serving certificate is not for the key the host CA certified"
                    .into(),
            ));
        }
        if let Ok(mut g) = self.seen.lock() {
            *g = Some(end_entity.as_ref().to_vec());
        }
        Ok(())
    }
}

/// The access point's serving certificate, verified as described in the module doc.
async fn serving_cert(
    store: &ProfileStore,
    profile: &Profile,
    addr: &str,
    service: &str,
) -> anyhow::Result<Vec<u8>> {
    let f = store.files(&profile.proxy);
    let host_ca = dt_ca::pem::parse_cert_pem(
        &std::fs::read_to_string(f.host_ca())
            .context("the profile keeps no host CA: log in again")?,
    )?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let seen = Arc::new(Mutex::new(None));
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(dt_tls::Verifier::new(
            PinServing {
                host_ca_der: host_ca,
                service: service.to_string(),
                seen: seen.clone(),
            },
            provider,
        )))
        .with_no_client_auth();
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .with_context(|| format!("the access point at {addr} does not answer"))?
    .with_context(|| format!("cannot reach the access point at {addr}"))?;
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            dt_client::access_point::server_name(dt_client::access_point::KUBE_PIN_SERVER_NAME),
            tcp,
        )
        .await
        .with_context(|| format!("TLS with the access point at {addr}"))?;
    let der = seen.lock().ok().and_then(|g| g.clone());
    der.context("the access point presented no certificate")
}

pub async fn run(cmd: KubeCmd) -> anyhow::Result<ExitCode> {
    let store = ProfileStore::from_env();
    match cmd {
        KubeCmd::Credentials => credentials(&store),
        KubeCmd::Ls { format } => {
            let profile = store.current()?;
            let rs = crate::app::served(&store, &profile, ServiceKind::Kube).await?;
            let rows: Vec<&pb::ServedResource> =
                rs.iter().filter_map(|d| d.resource.as_ref()).collect();
            match format {
                Format::Json | Format::Yaml => {
                    let v: Vec<Value> = rows
                        .iter()
                        .map(|r| json!({"name": r.name, "addr": r.addr, "labels": r.labels, "description": r.description}))
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&v)?);
                }
                Format::Text => {
                    let current = load_kubeconfig(&kubeconfig_path()?)
                        .ok()
                        .and_then(|c| c["current-context"].as_str().map(str::to_owned))
                        .unwrap_or_default();
                    let table_rows: Vec<Vec<String>> = rows
                        .iter()
                        .map(|r| {
                            let mut labels: Vec<String> =
                                r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                            labels.sort();
                            let sel = if r.name == current { "*" } else { "" };
                            vec![r.name.clone(), labels.join(","), sel.into()]
                        })
                        .collect();
                    print!(
                        "{}",
                        table(&["Kube Cluster Name", "Labels", "Selected"], &table_rows)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        KubeCmd::Login {
            name,
            kube_user,
            kube_groups,
        } => {
            let profile = store.current()?;
            let rs = crate::app::served(&store, &profile, ServiceKind::Kube).await?;
            let Some(info) = rs
                .iter()
                .find(|i| i.resource.as_ref().is_some_and(|r| r.name == name))
            else {
                let names: Vec<String> = rs
                    .iter()
                    .filter_map(|i| i.resource.as_ref().map(|r| r.name.clone()))
                    .collect();
                bail!(
                    "Kubernetes cluster {name:?} is not online, or your roles do not let you reach it (you can reach: {})",
                    if names.is_empty() {
                        "none".into()
                    } else {
                        names.join(", ")
                    }
                );
            };
            let r = info.resource.as_ref().context("malformed listing")?;
            let serving = serving_cert(&store, &profile, &r.addr, &info.service).await?;
            let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
            let ca_pem = dt_ca::pem::to_pem("CERTIFICATE", &serving);
            let path = kubeconfig_path()?;
            let mut cfg = load_kubeconfig(&path)?;
            if !cfg.is_object() {
                bail!("{} is not a kubeconfig", path.display());
            }
            cfg["apiVersion"] = json!("v1");
            cfg["kind"] = json!("Config");
            let cluster = json!({
                "server": format!("https://{}{}{name}", r.addr, dt_client::access_point::KUBE_PATH_PREFIX),
                "certificate-authority-data": b64(ca_pem.as_bytes()),
            });
            upsert(
                &mut cfg,
                "clusters",
                &name,
                json!({"name": name, "cluster": cluster}),
            );
            let exe = std::env::current_exe().context("cannot tell where dtsh is")?;
            let mut env = Vec::new();
            if let Some(h) = std::env::var_os("DTSH_HOME") {
                env.push(json!({"name": "DTSH_HOME", "value": h.to_string_lossy()}));
            }
            let user_name = format!("{USER_PREFIX}{}-{name}", profile.username);
            let mut user = json!({
                "exec": {
                    "apiVersion": "client.authentication.k8s.io/v1",
                    "command": exe.to_string_lossy(),
                    "args": ["kube", "credentials"],
                    "env": env,
                    "interactiveMode": "Never",
                    "provideClusterInfo": false,
                },
            });
            if let Some(u) = &kube_user {
                user["as"] = json!(u);
            }
            if !kube_groups.is_empty() {
                user["as-groups"] = json!(kube_groups);
            }
            upsert(
                &mut cfg,
                "users",
                &user_name,
                json!({"name": user_name, "user": user}),
            );
            upsert(
                &mut cfg,
                "contexts",
                &name,
                json!({"name": name, "context": {"cluster": name, "user": user_name}}),
            );
            cfg["current-context"] = json!(name);
            save_kubeconfig(&path, &cfg)?;
            println!(
                "Logged into Kubernetes cluster {name:?}. kubectl context {name:?} in {} is current. Try: kubectl version",
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        KubeCmd::Logout { name } => {
            let path = kubeconfig_path()?;
            let mut cfg = load_kubeconfig(&path)?;
            let ours: Vec<String> = cfg["contexts"]
                .as_array()
                .map(|l| {
                    l.iter()
                        .filter(|c| {
                            c["context"]["user"]
                                .as_str()
                                .is_some_and(|u| u.starts_with(USER_PREFIX))
                        })
                        .filter_map(|c| c["name"].as_str().map(str::to_owned))
                        .filter(|n| name.as_ref().is_none_or(|want| want == n))
                        .collect()
                })
                .unwrap_or_default();
            if ours.is_empty() {
                println!("No devtrust kubectl context to remove");
                return Ok(ExitCode::SUCCESS);
            }
            let users: Vec<String> = cfg["contexts"]
                .as_array()
                .map(|l| {
                    l.iter()
                        .filter(|c| {
                            c["name"]
                                .as_str()
                                .is_some_and(|n| ours.iter().any(|o| o == n))
                        })
                        .filter_map(|c| c["context"]["user"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            remove(&mut cfg, "contexts", |c| {
                !c["name"]
                    .as_str()
                    .is_some_and(|n| ours.iter().any(|o| o == n))
            });
            remove(&mut cfg, "clusters", |c| {
                !c["name"]
                    .as_str()
                    .is_some_and(|n| ours.iter().any(|o| o == n))
            });
            remove(&mut cfg, "users", |u| {
                !u["name"]
                    .as_str()
                    .is_some_and(|n| users.iter().any(|o| o == n))
            });
            if cfg["current-context"]
                .as_str()
                .is_some_and(|c| ours.iter().any(|o| o == c))
            {
                cfg["current-context"] = json!("");
            }
            save_kubeconfig(&path, &cfg)?;
            println!("Logged out of Kubernetes cluster(s) {}", ours.join(", "));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `client.authentication.k8s.io/v1` ExecCredential with the profile's certificate and key.
fn credentials(store: &ProfileStore) -> anyhow::Result<ExitCode> {
    let profile = store.current().context("not logged in: run `dtsh login`")?;
    let f = store.files(&profile.proxy);
    let cert = std::fs::read_to_string(f.tls_cert())
        .context("no certificate in the profile: run `dtsh login`")?;
    let key =
        std::fs::read_to_string(f.key_pem()).context("no key in the profile: run `dtsh login`")?;
    let der = dt_ca::pem::parse_cert_pem(&cert)?;
    let id = dt_ca::parse_x509_identity(&der)?;
    let now = time::OffsetDateTime::now_utc();
    if id.is_expired(now) {
        bail!("your devtrust certificate expired: run `dtsh login`");
    }
    // kubectl's TLS stack cannot parse devtrust certificates: it gets a plain certificate
    // for the same key first, and sends the devtrust one behind it (see the kube access point's `tls` module).
    let client_key = dt_ca::ClientKey::from_pkcs8_pem(&key)?;
    let front = dt_ca::self_signed_client_cert(
        &client_key,
        id.username.as_str(),
        now - time::Duration::minutes(5),
        id.not_after,
    )?;
    let cert = format!("{}{}", dt_ca::pem::to_pem("CERTIFICATE", &front), cert);
    let expires = id
        .not_after
        .format(&time::format_description::well_known::Rfc3339)?;
    let cred = json!({
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {
            "clientCertificateData": cert,
            "clientKeyData": key,
            "expirationTimestamp": expires,
        },
    });
    println!("{cred}");
    Ok(ExitCode::SUCCESS)
}
