//! `dtsh device ...` and the device steps of `dtsh login`: collect, enroll, authenticate.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use dt_ceremony::messages::UserCertificates;
use dt_ceremony::token::EnrollToken;
use dt_client::Session;
use dt_client::connect::with_failover;
use dt_client::{Profile, ProfileStore};
use dt_device::{Collected, DeviceKeys, SoftwareKeys};
use tonic::transport::Channel;

use dt_cli::{Format, is_transport};

#[derive(Subcommand)]
pub enum DeviceCmd {
    /// Enroll this device: with a token from an admin, or --current-device to register and
    /// enroll it in one step (needs the create, create_enroll_token and enroll verbs).
    Enroll {
        #[arg(
            long,
            conflicts_with = "current_device",
            required_unless_present = "current_device"
        )]
        token: Option<String>,
        #[arg(long)]
        current_device: bool,
    },
    /// Prove this device to the cluster now; your certificates then carry it.
    Authenticate,
    /// Authenticate this device for a web UI session: URL is the page's devtrust:// link.
    /// Opens the confirmation page in the browser (--no-browser prints its URL last).
    WebAuth {
        url: String,
        #[arg(long)]
        no_browser: bool,
        /// Connect to the auth service from this local address (like `ssh -b`).
        #[arg(long, value_name = "IP")]
        bind_addr: Option<std::net::IpAddr>,
    },
    /// Print this device's asset tag (its serial number), for `dtctl devices add`.
    AssetTag,
    /// Print what this device reports about itself.
    Collect {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Print this device's credential (id and public key).
    Keyget {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

/// The credential store of this device: the TPM when one is reachable (`DTSH_TPM_TCTI`, e.g.
/// `swtpm:host=127.0.0.1,port=2321`, or `/dev/tpmrm0`), otherwise a software key under
/// `$DTSH_DEVICE_HOME`. `DTSH_DEVICE_KEYSTORE=software|tpm` forces one;
/// `DTSH_TPM_EVENT_LOG=FILE` sends FILE as the firmware event log (labs and tests).
pub fn device_keys() -> anyhow::Result<Box<dyn DeviceKeys>> {
    let forced = std::env::var("DTSH_DEVICE_KEYSTORE").unwrap_or_default();
    match forced.as_str() {
        "" | "tpm" | "software" => {}
        other => bail!("DTSH_DEVICE_KEYSTORE={other:?}: use tpm or software"),
    }
    #[cfg(feature = "tpm")]
    if forced != "software" {
        match dt_device::tpm::tcti_from_env() {
            Ok(tcti) => {
                let home = dt_device::resolve_device_home(|v| std::env::var_os(v))?;
                let mut store = dt_device::tpm::TpmKeyStore::new(tcti, home.join("tpm"));
                if let Some(log) = std::env::var_os(dt_device::tpm::EVENT_LOG_ENV) {
                    store = store.with_event_log_path(log);
                }
                return Ok(Box::new(store));
            }
            Err(e) if forced == "tpm" => {
                bail!("DTSH_DEVICE_KEYSTORE=tpm, but no TPM is usable: {e}")
            }
            Err(_) => {}
        }
    }
    if forced == "tpm" {
        bail!("DTSH_DEVICE_KEYSTORE=tpm, but this dtsh was built without the tpm feature");
    }
    Ok(Box::new(SoftwareKeys::from_env()?))
}

pub(crate) fn collect_device() -> anyhow::Result<Collected> {
    let c = dt_device::collect().context("cannot collect this device's data")?;
    for w in &c.warnings {
        eprintln!("WARNING: {w}");
    }
    Ok(c)
}

/// The logged-in profile and an mTLS channel with its identity.
pub async fn profile_channel(store: &ProfileStore) -> anyhow::Result<(Profile, Channel)> {
    let session = Session::current(store).await?;
    Ok((session.profile().clone(), session.channel()))
}

pub(crate) fn current_certs(
    store: &ProfileStore,
    profile: &Profile,
) -> anyhow::Result<UserCertificates> {
    let f = store.files(&profile.proxy);
    let x509 = dt_ca::pem::parse_cert_pem(&std::fs::read_to_string(f.tls_cert())?)?;
    let ssh = std::fs::read_to_string(f.ssh_cert())?;
    Ok(UserCertificates {
        x509_der: x509,
        ssh_authorized_key: Some(ssh.trim().to_string()),
    })
}

/// Run device authentication and swap the augmented certificates into the profile. A
/// ceremony cut short by a lost connection runs again from the start (on another auth
/// server when several are listed): each run answers its own fresh challenge.
pub async fn authenticate(
    store: &ProfileStore,
    profile: &Profile,
    channel: Channel,
) -> anyhow::Result<()> {
    with_failover(is_transport, || {
        authenticate_once(store, profile, channel.clone())
    })
    .await
}

async fn authenticate_once(
    store: &ProfileStore,
    profile: &Profile,
    channel: Channel,
) -> anyhow::Result<()> {
    let keys = device_keys()?;
    let Some(cred) = keys.credential()? else {
        bail!(
            "this device has no credential: enroll it first (`dtsh device enroll --current-device`, or with a token from an admin)"
        );
    };
    let collected = collect_device()?;
    let certs = current_certs(store, profile)?;
    let new = dt_client::devices::authenticate(
        channel,
        certs,
        cred.id.to_string(),
        cred.attestation_type,
        collected.data,
        dt_device::prover(keys.as_ref()),
    )
    .await
    .context("device authentication failed")?;
    let ssh = new
        .ssh_authorized_key
        .context("the server returned no SSH certificate")?;
    store.save_certs(&store.files(&profile.proxy), &ssh, &new.x509_der)?;
    Ok(())
}

/// Enroll with a token (possibly empty: auto-enrollment). Returns the enrolled device.
async fn enroll_with(
    channel: Channel,
    token: &str,
    collected: &Collected,
) -> anyhow::Result<dt_types::Device> {
    let keys = device_keys()?;
    let (cred, _) = keys.credential_or_create()?;
    let payload = keys.enroll_payload(&cred)?;
    let d = dt_client::devices::enroll(
        channel,
        EnrollToken::new(token),
        cred.id.to_string(),
        collected.data.clone(),
        payload,
        dt_device::prover(keys.as_ref()),
    )
    .await?;
    Ok(d)
}

/// A fresh login certificate is needed for augmentation: re-read it after enrollment.
async fn authenticate_after_enroll(store: &ProfileStore) -> anyhow::Result<()> {
    let (profile, ch) = profile_channel(store).await?;
    authenticate(store, &profile, ch).await
}

pub async fn run(cmd: DeviceCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        DeviceCmd::AssetTag => {
            let c = collect_device()?;
            println!("{}", c.data.serial_number);
        }
        DeviceCmd::Collect { format } => {
            let c = collect_device()?;
            if format == Format::Json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"data": c.data, "notes": c.notes, "warnings": c.warnings})
                    )?
                );
            } else {
                let d = &c.data;
                println!(
                    "Serial number:   {} (from {})",
                    d.serial_number, d.serial_source
                );
                println!(
                    "OS:              {} {} {}",
                    d.os_type.map(|o| o.display_name()).unwrap_or("?"),
                    d.os_version,
                    d.os_build
                );
                println!("Model:           {}", d.model_identifier);
                println!("Hostname:        {}", d.hostname);
                println!("User:            {}", d.os_username);
                for n in &c.notes {
                    println!("Note: {n}");
                }
            }
        }
        DeviceCmd::Keyget { format } => {
            let keys = device_keys()?;
            let Some(cred) = keys.credential()? else {
                bail!("this device has no credential yet; `dtsh device enroll` creates one");
            };
            use base64::Engine;
            let pk = base64::engine::general_purpose::STANDARD.encode(&cred.public_key_der);
            if format == Format::Json {
                println!(
                    "{}",
                    serde_json::json!({"credential_id": cred.id, "public_key_der": pk, "attestation_type": cred.attestation_type})
                );
            } else {
                println!("Credential ID:    {}", cred.id);
                println!(
                    "Attestation type: {}",
                    serde_json::to_value(cred.attestation_type)?
                        .as_str()
                        .unwrap_or("?")
                );
                println!("Public key (PKIX DER, base64): {pk}");
            }
        }
        DeviceCmd::WebAuth {
            url,
            no_browser,
            bind_addr,
        } => return crate::web::web_auth(&url, no_browser, bind_addr).await,
        DeviceCmd::Authenticate => {
            let store = ProfileStore::from_env();
            let (profile, ch) = profile_channel(&store).await?;
            authenticate(&store, &profile, ch).await?;
            println!("Device authenticated; your certificates now carry it (see `dtsh status`).");
        }
        DeviceCmd::Enroll {
            token,
            current_device,
        } => {
            let store = ProfileStore::from_env();
            let session = Session::current(&store).await?;
            let ch = session.channel();
            let collected = collect_device()?;
            for n in &collected.notes {
                eprintln!("Note: {n}");
            }
            let os = collected.data.os_type.context("unknown OS")?;
            let tag = collected.data.serial_number.clone();
            let (token, registered) = match (token, current_device) {
                (Some(t), _) => (t, false),
                (None, _) => self_enroll_token(&session, os, &tag).await?,
            };
            let d = enroll_with(ch, &token, &collected).await?;
            let what = if registered {
                "registered and enrolled"
            } else {
                "enrolled"
            };
            println!("Device {:?}/{} {what}", d.spec.asset_tag, d.spec.os_type);
            // Authenticate right away so no new login is needed.
            match authenticate_after_enroll(&store).await {
                Ok(()) => {}
                Err(e) => eprintln!(
                    "WARNING: enrolled, but device authentication failed: {e:#}; run `dtsh device authenticate`"
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--current-device`: register this device if it is missing, then get a token for it.
async fn self_enroll_token(
    session: &Session,
    os: dt_types::device::OsType,
    tag: &str,
) -> anyhow::Result<(String, bool)> {
    session.register_device(os, tag, 300).await.context(
        "cannot register this device (self-enrollment needs the create, create_enroll_token and enroll verbs on device, e.g. the editor or device-admin role)",
    )
}

/// The device part of `dtsh login`: learn the cluster's requirements, auto-enroll where
/// enabled, authenticate an enrolled device, and say plainly when trust is missing.
pub async fn after_login(store: &ProfileStore) -> anyhow::Result<()> {
    let session = Session::current(store).await?;
    let (profile, ch) = (session.profile().clone(), session.channel());
    let who = session.who_am_i().await?;
    let mode = dt_proto::resource::trust_mode_from_proto(who.device_trust_mode);
    if mode == dt_types::resource::DeviceTrustMode::Off {
        return Ok(());
    }
    let keys = device_keys()?;
    let mut enrolled_here = keys.credential()?.is_some();
    let auto_disabled =
        std::env::var("DTSH_DEVICE_AUTO_ENROLL_DISABLED").is_ok_and(|v| v == "1" || v == "true");
    if !enrolled_here && who.auto_enroll && !auto_disabled && !who.bot {
        match collect_device() {
            Ok(collected) => match enroll_with(ch.clone(), "", &collected).await {
                Ok(d) => {
                    eprintln!(
                        "Device {:?}/{} enrolled automatically",
                        d.spec.asset_tag, d.spec.os_type
                    );
                    enrolled_here = true;
                }
                Err(e) => eprintln!("WARNING: this device is not trusted: {e:#}"),
            },
            Err(e) => eprintln!("WARNING: this device is not trusted: {e:#}"),
        }
    }
    if enrolled_here {
        if let Err(e) = authenticate(store, &profile, ch).await {
            eprintln!("WARNING: this device is not trusted for this session: {e:#}");
        } else {
            return Ok(());
        }
    }
    if who.device_required {
        eprintln!(
            "WARNING: your roles or the cluster require a trusted device (mode {}), and this device is not trusted.",
            mode.as_str()
        );
        eprintln!(
            "Enroll it with `dtsh device enroll --current-device`, or ask an admin for a token (`dtctl devices enroll --asset-tag=$(dtsh device asset-tag)`)."
        );
    }
    Ok(())
}
