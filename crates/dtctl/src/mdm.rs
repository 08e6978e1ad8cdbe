//! `dtctl mdm status` and `dtctl mdm sync NAME [--full] [--dry-run]`: the inventory sync
//! from Jamf Pro or Intune, as operators see it.
//!
//! A sync request is a record on the auth service that the source's MDM service picks up
//! (it asks four times a second), reports progress into, and closes with the run's counts; this
//! command polls it to draw the progress bar (on a terminal) and prints the summary.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;
use dt_proto::mdm as wire;
use dt_proto::v1 as pb;
use dt_proto::v1::mdm_service_client::MdmServiceClient;
use dt_types::mdm::{SourceState, SyncRun};
use serde_json::json;

use crate::{Global, connect_channel};
use dt_cli::{Format, api_err, parse_duration};

#[derive(Subcommand)]
pub enum MdmCmd {
    /// Each MDM source: its MDM service, last full and partial sync (counts: created,
    /// updated, removed, unchanged, skipped by reason), and the last error.
    Status {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Run a sync of source NAME now (a partial one unless --full) through its MDM service
    /// (`devtrust mdm start`), wait for it, and print what it did. With --dry-run nothing is
    /// written: the counts say what a real sync would do.
    ///
    /// Exit code 0 when the sync completed, 1 when it failed (the message says why: refused
    /// credentials name the setting to check).
    Sync {
        /// The source name (jamf_service.name or intune_service.name).
        name: String,
        /// A full sync (every device; may remove what the MDM no longer lists, with
        /// on_missing: DELETE).
        #[arg(long)]
        full: bool,
        /// Judge every change, write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Give up waiting after this long (the sync goes on).
        #[arg(long, value_parser = parse_duration, default_value = "10m")]
        timeout: Duration,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

fn time_str(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn run_json(r: &SyncRun) -> serde_json::Value {
    json!({
        "kind": r.kind,
        "started": time_str(r.started),
        "finished": time_str(r.finished),
        "ok": r.ok,
        "dry_run": r.dry_run,
        "counts": r.counts,
        "error": r.error,
    })
}

/// `created 3, updated 1, removed 0, unchanged 40, skipped 2 (missing_serial 1, ...)`.
pub fn counts_line(r: &SyncRun) -> String {
    let c = &r.counts;
    let mut s = format!(
        "created {}, updated {}, removed {}, unchanged {}",
        c.created, c.updated, c.removed, c.unchanged
    );
    if c.missing_kept > 0 {
        s.push_str(&format!(", missing kept {}", c.missing_kept));
    }
    s.push_str(&format!(", skipped {}", c.skipped_total()));
    if !c.skipped.is_empty() {
        let parts: Vec<String> = c.skipped.iter().map(|(k, v)| format!("{k} {v}")).collect();
        s.push_str(&format!(" ({})", parts.join(", ")));
    }
    s
}

fn run_text(r: &Option<SyncRun>) -> String {
    match r {
        None => "never".into(),
        Some(r) => format!(
            "{} {}{}: {}{}",
            time_str(r.finished),
            if r.ok { "ok" } else { "FAILED" },
            if r.dry_run { " (dry run)" } else { "" },
            counts_line(r),
            r.error
                .as_ref()
                .map(|e| format!("\n      error: {e}"))
                .unwrap_or_default()
        ),
    }
}

pub async fn run(g: &Global, cmd: MdmCmd) -> anyhow::Result<ExitCode> {
    let mut c = MdmServiceClient::new(connect_channel(g).await?);
    match cmd {
        MdmCmd::Status { format } => {
            let resp = c
                .get_mdm_status(pb::GetMdmStatusRequest {})
                .await
                .map_err(api_err)?
                .into_inner();
            let states: Vec<SourceState> = resp
                .sources
                .into_iter()
                .filter_map(|s| wire::state_from_proto(s).ok().flatten())
                .collect();
            match format {
                Format::Json | Format::Yaml => {
                    let v: Vec<serde_json::Value> = states
                        .iter()
                        .map(|s| {
                            json!({
                                "name": s.name,
                                "origin": wire::origin_str(s.origin),
                                "service": s.service,
                                "last_full": s.last_full.as_ref().map(run_json),
                                "last_partial": s.last_partial.as_ref().map(run_json),
                                "cursor": s.cursor.map(time_str),
                                "last_error": s.last_error,
                            })
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&v)?);
                }
                Format::Text => {
                    if states.is_empty() {
                        println!(
                            "No MDM source has synced yet. Start one with `devtrust mdm start --config FILE`."
                        );
                    }
                    for s in &states {
                        println!(
                            "{} ({}), synced by mdm/{}",
                            s.name,
                            wire::origin_str(s.origin),
                            s.service
                        );
                        println!("  last full sync:    {}", run_text(&s.last_full));
                        println!("  last partial sync: {}", run_text(&s.last_partial));
                        if let Some(e) = &s.last_error {
                            println!("  last error:        {e}");
                        }
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        MdmCmd::Sync {
            name,
            full,
            dry_run,
            timeout,
            format,
        } => {
            let req = c
                .request_mdm_sync(pb::RequestMdmSyncRequest {
                    source: name.clone(),
                    full,
                    dry_run,
                })
                .await
                .map_err(api_err)?
                .into_inner();
            let show_bar = format == Format::Text && std::io::stderr().is_terminal();
            let bar = if show_bar {
                let b = indicatif::ProgressBar::new(0);
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg:10} {bar:40} {pos}/{len} ({elapsed})",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                b.set_message("waiting");
                b
            } else {
                indicatif::ProgressBar::hidden()
            };
            let deadline = tokio::time::Instant::now() + timeout;
            let done = loop {
                let r = c
                    .get_mdm_request(pb::GetMdmRequestRequest { id: req.id.clone() })
                    .await
                    .map_err(api_err)?
                    .into_inner();
                let r = wire::request_from_proto(r)?;
                if r.finished() {
                    break r;
                }
                bar.set_message(r.phase.clone());
                bar.set_length(r.total.max(r.done));
                bar.set_position(r.done);
                if tokio::time::Instant::now() >= deadline {
                    bar.finish_and_clear();
                    bail!(
                        "the sync of {name:?} did not finish within {}s (phase {}); is `devtrust mdm start` running for it? The request stays open for a day.",
                        timeout.as_secs(),
                        r.phase
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            bar.finish_and_clear();
            let Some(run) = done.result else {
                bail!("the sync of {name:?} ended without a result");
            };
            match format {
                Format::Json | Format::Yaml => {
                    let mut v = run_json(&run);
                    v["source"] = json!(name);
                    v["request_id"] = json!(done.id);
                    println!("{}", serde_json::to_string_pretty(&v)?);
                }
                Format::Text => {
                    if run.ok {
                        println!(
                            "{} sync of {name}{} done: {}",
                            run.kind,
                            if run.dry_run {
                                " (dry run, nothing written)"
                            } else {
                                ""
                            },
                            counts_line(&run)
                        );
                    } else {
                        println!("{} sync of {name} FAILED: {}", run.kind, counts_line(&run));
                    }
                }
            }
            if run.ok {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "ERROR: {}",
                    run.error.as_deref().unwrap_or("the sync failed")
                );
                Ok(ExitCode::FAILURE)
            }
        }
    }
}
