//! `dtctl devices ...`: the device inventory (DESIGN.md §2).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use dt_proto::v1 as pb;
use dt_proto::v1::device_trust_service_client::DeviceTrustServiceClient;
use dt_types::Device;
use dt_types::device::{DeviceProfile, DeviceSource, OsType, SourceOrigin};
use futures::StreamExt;
use tonic::transport::Channel;

use crate::{Global, connect_channel};
use dt_cli::{Format, api_err, parse_duration, table, to_yaml_docs};

#[derive(Subcommand)]
pub enum DevicesCmd {
    /// Register a device in the inventory.
    Add {
        /// macos, windows or linux
        #[arg(long)]
        os: String,
        /// The device's serial number (on the device: `dtsh device asset-tag`).
        #[arg(long)]
        asset_tag: String,
        /// Also create an enrollment token and print the dtsh command that uses it.
        #[arg(long)]
        enroll: bool,
        #[arg(long, value_parser = parse_duration, default_value = "1h")]
        enroll_ttl: Duration,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// List registered devices.
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Remove a device.
    Rm {
        #[arg(
            long,
            conflicts_with = "asset_tag",
            required_unless_present = "asset_tag"
        )]
        device_id: Option<String>,
        #[arg(long)]
        asset_tag: Option<String>,
    },
    /// Create an enrollment token for a registered device.
    Enroll {
        #[arg(
            long,
            conflicts_with = "asset_tag",
            required_unless_present = "asset_tag"
        )]
        device_id: Option<String>,
        #[arg(long)]
        asset_tag: Option<String>,
        /// The device's OS, when its asset tag exists for several.
        #[arg(long)]
        os: Option<String>,
        #[arg(long, value_parser = parse_duration, default_value = "1h")]
        ttl: Duration,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Import devices from a CSV file: columns `os,asset_tag`; other columns go into the
    /// device profile (model_identifier, os_version, os_build, os_usernames, assigned_user
    /// are recognized; os_usernames may list several separated by `;`). Every line that
    /// fails is reported by its number; a device listed twice fails on its second line.
    Import {
        file: PathBuf,
        /// Devices per request (four requests are in flight at once).
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Print a JSON summary instead of text.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

fn parse_os(os: &str) -> anyhow::Result<OsType> {
    OsType::parse(os).with_context(|| format!("unknown OS {os:?}: use macos, windows or linux"))
}

fn dref(
    device_id: Option<String>,
    asset_tag: Option<String>,
    os: Option<String>,
) -> anyhow::Result<pb::DeviceRef> {
    let os_type = match os {
        None => pb::OsType::Unspecified,
        Some(os) => pb::OsType::from(parse_os(&os)?),
    };
    Ok(pb::DeviceRef {
        device_id: device_id.unwrap_or_default(),
        asset_tag: asset_tag.unwrap_or_default(),
        os_type: os_type.into(),
    })
}

/// A device the server sent (dt-proto checks its shape).
fn from_wire(d: Option<pb::Device>) -> anyhow::Result<Device> {
    let d = d.context("the server sent no device")?;
    Device::try_from(d).context("the server sent a malformed device")
}

fn to_wire(d: &Device) -> anyhow::Result<pb::Device> {
    pb::Device::try_from(d).context("encoding the device")
}

async fn client(g: &Global) -> anyhow::Result<DeviceTrustServiceClient<Channel>> {
    Ok(DeviceTrustServiceClient::new(connect_channel(g).await?))
}

pub async fn run(g: &Global, cmd: DevicesCmd) -> anyhow::Result<()> {
    match cmd {
        DevicesCmd::Add {
            os,
            asset_tag,
            enroll,
            enroll_ttl,
            format,
        } => {
            let os = parse_os(&os)?;
            dt_types::device::validate_asset_tag(&asset_tag).map_err(anyhow::Error::msg)?;
            let d = dt_types::device::new_device(os, &asset_tag);
            let mut c = client(g).await?;
            let resp = c
                .create_device(pb::CreateDeviceRequest {
                    device: Some(to_wire(&d)?),
                    create_enroll_token: enroll,
                    enroll_token_ttl_seconds: enroll_ttl.as_secs(),
                })
                .await
                .map_err(api_err)?
                .into_inner();
            let d = from_wire(resp.device)?;
            if format == Format::Json {
                println!(
                    "{}",
                    serde_json::json!({
                        "device": d,
                        "enroll_token": resp.enroll_token.as_ref().map(|t| &t.token),
                    })
                );
                return Ok(());
            }
            println!(
                "Device {}/{} added to the inventory",
                d.spec.asset_tag, d.spec.os_type
            );
            if let Some(t) = resp.enroll_token {
                print_enroll_hint(&d.spec.asset_tag, &t.token);
            }
        }
        DevicesCmd::Ls { format } => {
            let mut c = client(g).await?;
            let mut devices = Vec::new();
            let mut page_token = String::new();
            loop {
                let resp = c
                    .list_devices(pb::ListDevicesRequest {
                        page_size: 200,
                        page_token,
                    })
                    .await
                    .map_err(api_err)?
                    .into_inner();
                for d in resp.devices {
                    devices.push(from_wire(Some(d))?);
                }
                if resp.next_page_token.is_empty() {
                    break;
                }
                page_token = resp.next_page_token;
            }
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&devices)?),
                Format::Yaml => {
                    let values: Vec<serde_json::Value> = devices
                        .iter()
                        .map(serde_json::to_value)
                        .collect::<Result<_, _>>()?;
                    print!("{}", to_yaml_docs(&values)?);
                }
                Format::Text => {
                    let rows: Vec<Vec<String>> = devices
                        .iter()
                        .map(|d| {
                            vec![
                                d.spec.asset_tag.clone(),
                                d.spec.os_type.to_string(),
                                d.spec
                                    .source
                                    .as_ref()
                                    .map(|s| s.name.clone())
                                    .unwrap_or_default(),
                                d.spec.enroll_status.display_name().to_string(),
                                d.spec.owner.clone().unwrap_or_default(),
                                d.metadata.name.clone(),
                            ]
                        })
                        .collect();
                    println!(
                        "{}",
                        table(
                            &[
                                "Asset Tag",
                                "OS",
                                "Source",
                                "Enroll Status",
                                "Owner",
                                "Device ID"
                            ],
                            &rows
                        )
                    );
                }
            }
        }
        DevicesCmd::Rm {
            device_id,
            asset_tag,
        } => {
            let shown = device_id.clone().or(asset_tag.clone()).unwrap_or_default();
            let mut c = client(g).await?;
            c.delete_device(dref(device_id, asset_tag, None)?)
                .await
                .map_err(api_err)?;
            println!("Device {shown:?} removed");
        }
        DevicesCmd::Enroll {
            device_id,
            asset_tag,
            os,
            ttl,
            format,
        } => {
            let mut c = client(g).await?;
            let r = dref(device_id, asset_tag, os)?;
            let d = from_wire(Some(
                c.get_device(r.clone()).await.map_err(api_err)?.into_inner(),
            ))?;
            let t = c
                .create_device_enroll_token(pb::CreateDeviceEnrollTokenRequest {
                    device: Some(r),
                    ttl_seconds: ttl.as_secs(),
                })
                .await
                .map_err(api_err)?
                .into_inner();
            if format == Format::Json {
                println!(
                    "{}",
                    serde_json::json!({"token": t.token, "device_id": t.device_id, "expires_unix": t.expires_unix})
                );
            } else {
                print_enroll_hint(&d.spec.asset_tag, &t.token);
            }
        }
        DevicesCmd::Import {
            file,
            batch,
            format,
        } => import(g, &file, batch.clamp(1, 1000), format).await?,
    }
    Ok(())
}

fn print_enroll_hint(tag: &str, token: &str) {
    println!("Run the command below on device {tag:?} to enroll it:\n");
    println!("dtsh device enroll --token={token}");
}

/// A minimal RFC 4180 reader: commas, double quotes, doubled quotes inside quotes.
pub fn parse_csv_line(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) if cur.is_empty() => quoted = true,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().map(|s| s.trim().to_string()).collect()
}

/// Turn one CSV row into a device, or say what is wrong with it.
pub fn row_to_device(headers: &[String], row: &[String]) -> Result<Device, String> {
    if row.len() != headers.len() {
        return Err(format!(
            "expected {} columns, found {}",
            headers.len(),
            row.len()
        ));
    }
    let get = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .map(|i| row[i].clone())
    };
    let os = get("os").unwrap_or_default();
    let os = OsType::parse(&os)
        .ok_or_else(|| format!("unknown os {os:?} (use macos, windows or linux)"))?;
    let tag = get("asset_tag").unwrap_or_default();
    dt_types::device::validate_asset_tag(&tag)?;
    let mut d = dt_types::device::new_device(os, &tag);
    let mut profile = DeviceProfile::default();
    let mut any = false;
    for (h, v) in headers.iter().zip(row) {
        if v.is_empty() || h == "os" || h == "asset_tag" {
            continue;
        }
        any = true;
        match h.as_str() {
            "model_identifier" => profile.model_identifier = v.clone(),
            "os_version" => profile.os_version = v.clone(),
            "os_build" => profile.os_build = v.clone(),
            "assigned_user" => profile.assigned_user = v.clone(),
            "os_usernames" => {
                profile.os_usernames = v
                    .split(';')
                    .map(|u| u.trim().to_string())
                    .filter(|u| !u.is_empty())
                    .collect()
            }
            other => {
                profile.extra.insert(other.to_string(), v.clone());
            }
        }
    }
    if any {
        d.spec.profile = Some(profile);
    }
    d.spec.source = Some(DeviceSource {
        name: "csv".into(),
        origin: SourceOrigin::Csv,
    });
    Ok(d)
}

/// Import requests in flight at once: the auth service prepares the devices of one while it
/// commits another's (one at a time, the import ran at half the speed).
const IMPORT_IN_FLIGHT: usize = 4;

async fn import(
    g: &Global,
    file: &std::path::Path,
    batch: usize,
    format: Format,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        bail!("{} is empty", file.display())
    };
    let headers: Vec<String> = parse_csv_line(header)
        .into_iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    if !headers.iter().any(|h| h == "os") || !headers.iter().any(|h| h == "asset_tag") {
        bail!(
            "{}: the first line must name the columns, including os and asset_tag",
            file.display()
        );
    }
    let rows: Vec<(usize, Vec<String>)> = lines.map(|(i, l)| (i + 1, parse_csv_line(l))).collect();
    let c = client(g).await?;
    let bar = if format == Format::Text {
        let pb = indicatif::ProgressBar::new(rows.len() as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} devices ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };
    let (mut ok, mut errors) = (0usize, Vec::<(usize, String)>::new());
    // Each chunk: its size and the devices to send with their lines (rows that do not read
    // as a device are reported now). A device listed twice is refused here, on its second
    // line: with requests in flight together, the server could otherwise take either line
    // first.
    let mut first_line = std::collections::HashMap::new();
    let mut chunks = Vec::new();
    for chunk in rows.chunks(batch) {
        let (mut send, mut lines_sent) = (Vec::new(), Vec::new());
        for (line, row) in chunk {
            match row_to_device(&headers, row) {
                Ok(d) => {
                    let tag = (d.spec.os_type, d.spec.asset_tag.clone());
                    if let Some(first) = first_line.get(&tag) {
                        errors.push((
                            *line,
                            format!("listed twice in this file (first on line {first})"),
                        ));
                        continue;
                    }
                    first_line.insert(tag, *line);
                    send.push(to_wire(&d)?);
                    lines_sent.push(*line);
                }
                Err(e) => errors.push((*line, e)),
            }
        }
        chunks.push((chunk.len(), send, lines_sent));
    }
    // Several requests in flight, answers taken in order. A request that fails as a whole
    // stops the import: nothing is sent after it, the requests already in flight are
    // answered and reported, and then the import fails with that request's error.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut answers = futures::stream::iter(chunks.into_iter().map(|(n, send, lines_sent)| {
        let (mut c, stop) = (c.clone(), stop.clone());
        async move {
            // `None`: not sent (nothing to send, or the import stopped).
            if send.is_empty() || stop.load(std::sync::atomic::Ordering::Acquire) {
                return (n, Ok(None), lines_sent);
            }
            let answer = c
                .bulk_create_devices(pb::BulkCreateDevicesRequest { devices: send })
                .await
                .map(|r| Some(r.into_inner().statuses));
            if answer.is_err() {
                stop.store(true, std::sync::atomic::Ordering::Release);
            }
            (n, answer, lines_sent)
        }
    }))
    .buffered(IMPORT_IN_FLIGHT);
    let (mut failure, mut not_sent) = (None, 0usize);
    while let Some((n, answer, lines_sent)) = answers.next().await {
        match answer {
            Ok(Some(statuses)) => {
                for (status, line) in statuses.iter().zip(&lines_sent) {
                    if status.ok {
                        ok += 1;
                    } else {
                        errors.push((*line, status.error.clone()));
                    }
                }
                bar.inc(n as u64);
            }
            Ok(None) if lines_sent.is_empty() => bar.inc(n as u64),
            Ok(None) => not_sent += lines_sent.len(),
            Err(status) => {
                not_sent += lines_sent.len();
                failure.get_or_insert(status);
            }
        }
    }
    bar.finish_and_clear();
    errors.sort();
    if format == Format::Json {
        println!(
            "{}",
            serde_json::json!({
                "imported": ok,
                "failed": errors.len(),
                "not_sent": not_sent,
                "errors": errors.iter().map(|(l, e)| serde_json::json!({"line": l, "error": e})).collect::<Vec<_>>(),
            })
        );
    } else {
        for (line, e) in &errors {
            eprintln!("{}:{line}: {e}", file.display());
        }
        let unsent = if not_sent > 0 {
            format!(", {not_sent} not sent")
        } else {
            String::new()
        };
        println!(
            "Imported {ok} devices, {} failed{unsent}, from {}",
            errors.len(),
            file.display()
        );
    }
    if let Some(status) = failure {
        return Err(api_err(status)).with_context(|| {
            format!(
                "the import stopped at a failed request: {not_sent} devices were not sent; \
                 run it again to import them (devices already imported are reported as taken)"
            )
        });
    }
    if !errors.is_empty() && ok == 0 {
        bail!("no device was imported");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_profile_columns() {
        assert_eq!(
            parse_csv_line(r#"linux,"A,B","say ""hi""""#),
            vec!["linux", "A,B", "say \"hi\""]
        );
        let headers: Vec<String> = [
            "os",
            "asset_tag",
            "model_identifier",
            "os_usernames",
            "site",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let d = row_to_device(
            &headers,
            &parse_csv_line("macos,C00AA,MacBookPro18,alice;bob,Lisbon"),
        )
        .unwrap();
        let p = d.spec.profile.unwrap();
        assert_eq!(p.model_identifier, "MacBookPro18");
        assert_eq!(p.os_usernames, vec!["alice", "bob"]);
        assert_eq!(p.extra.get("site").map(String::as_str), Some("Lisbon"));
        assert!(
            row_to_device(&headers, &parse_csv_line("beos,X,,,"))
                .unwrap_err()
                .contains("unknown os")
        );
        assert!(
            row_to_device(&headers, &parse_csv_line("linux,X"))
                .unwrap_err()
                .contains("columns")
        );
        assert!(row_to_device(&headers, &parse_csv_line("linux,a b,,,")).is_err());
    }
}
