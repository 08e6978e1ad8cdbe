//! `dtctl events verify` and `dtctl events export` (docs/audit.md).
//!
//! `verify` asks the auth service to walk the hash chain and prints the first broken or
//! missing link; its exit code says whether the chain holds, so a cron job can alert.
//!
//! `export` streams events as JSON lines (the stored, hash-chained form, one per line) for a
//! SIEM. With `--cursor-file` it resumes after the last event a previous export wrote: the
//! cursor (an event id) is saved only after the events before it were written and flushed,
//! so a crash repeats at most one page and never skips one. `--follow` keeps polling.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use dt_proto::v1 as pb;

use crate::{Global, connect};
use dt_cli::{api_err, parse_duration};

/// The exit code of `dtctl events verify` when the chain is broken.
pub const EXIT_BROKEN: u8 = 4;

#[derive(Args)]
#[command(
    after_help = "Exit status: 0 when every link holds, 4 when the chain is broken (the first broken or missing link is printed), 1 on errors.\n\nNeeds `list` on event (the auditor role has it).\n\nExamples:\n  dtctl events verify\n  dtctl events verify --since=24h --format=json"
)]
pub struct VerifyArgs {
    /// Check only the links from the first event in this window on, e.g. 24h.
    #[arg(long, value_parser = parse_duration)]
    since: Option<Duration>,
    /// text, or json.
    #[arg(long, value_enum, default_value_t = VerifyFormat::Text)]
    format: VerifyFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VerifyFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Jsonl,
}

#[derive(Args)]
#[command(
    after_help = "Writes one event per line (JSON), oldest first, to stdout.\n\nWith --cursor-file, a later export resumes after the last event this one wrote (the file holds that event's id); --since applies only when there is no cursor yet.\n\nExamples:\n  dtctl events export --format=jsonl --since=24h > events.jsonl\n  dtctl events export --format=jsonl --cursor-file=/var/lib/siem/devtrust.cursor --follow | siem-forwarder"
)]
pub struct ExportArgs {
    /// Output format: jsonl (JSON lines).
    #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
    format: ExportFormat,
    /// Start with events newer than this, e.g. 24h (when no cursor says where to resume).
    #[arg(long, value_parser = parse_duration)]
    since: Option<Duration>,
    /// Keep the position here: resume after the last event written, and save it as events
    /// are written.
    #[arg(long)]
    cursor_file: Option<PathBuf>,
    /// Keep running, writing new events as they are recorded.
    #[arg(long)]
    follow: bool,
    /// With --follow, how often to ask for new events.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    poll: Duration,
}

fn since_ms(since: Option<Duration>) -> i64 {
    since
        .map(|d| (time::OffsetDateTime::now_utc() - d).unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(0) as i64
}

fn rfc3339(t: Option<time::OffsetDateTime>) -> String {
    t.and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
    .unwrap_or_default()
}

pub async fn verify(g: &Global, args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let mut c = connect(g).await?;
    let r = c
        .verify_events(pb::VerifyEventsRequest {
            since_unix_ms: since_ms(args.since),
        })
        .await
        .map_err(api_err)?
        .into_inner();
    let ok = r.broken_id.is_empty();
    if args.format == VerifyFormat::Json {
        let v = serde_json::json!({
            "ok": ok,
            "checked": r.checked,
            "first_id": r.first_id,
            "last_id": r.last_id,
            "anchor_id": (!r.anchor_id.is_empty()).then_some(&r.anchor_id),
            "broken": (!ok).then(|| serde_json::json!({
                "id": r.broken_id,
                "time": rfc3339(r.broken_time.as_ref().and_then(|t| dt_proto::chain::time(t, "broken_time").ok())),
                "problem": r.problem,
            })),
        });
        println!("{v}");
    } else if ok {
        let range = if r.checked == 0 {
            String::new()
        } else {
            format!(" ({} to {})", r.first_id, r.last_id)
        };
        println!(
            "The audit chain holds: {} events checked{range}.",
            r.checked
        );
        if !r.anchor_id.is_empty() {
            println!(
                "Events up to {} ({}) were removed by retention; the chain continues from its recorded hash.",
                r.anchor_id,
                rfc3339(
                    r.anchor_time
                        .as_ref()
                        .and_then(|t| dt_proto::chain::time(t, "anchor_time").ok())
                )
            );
        }
    } else {
        println!(
            "The audit chain is BROKEN at event {} ({}): {}.",
            r.broken_id,
            rfc3339(
                r.broken_time
                    .as_ref()
                    .and_then(|t| dt_proto::chain::time(t, "broken_time").ok())
            ),
            r.problem
        );
        println!(
            "{} events before it were checked and hold. Compare with an export taken earlier (dtctl events export) to see what changed.",
            r.checked
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_BROKEN)
    })
}

fn read_cursor(path: &PathBuf) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) if s.trim().is_empty() => Ok(None),
        Ok(s) => {
            let id = s.trim().to_string();
            if !id.bytes().all(|b| b.is_ascii_digit()) {
                anyhow::bail!(
                    "cursor file {} does not hold an event id ({id:?}); remove it to start over",
                    path.display()
                );
            }
            Ok(Some(id))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading cursor file {}", path.display())),
    }
}

/// Write the cursor so that a crash leaves either the old or the new one, never half.
fn write_cursor(path: &PathBuf, id: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{id}\n"))
        .with_context(|| format!("writing cursor file {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("saving cursor file {}", path.display()))?;
    Ok(())
}

pub async fn export(g: &Global, args: ExportArgs) -> anyhow::Result<ExitCode> {
    let ExportFormat::Jsonl = args.format;
    let mut c = connect(g).await?;
    let mut cursor = match &args.cursor_file {
        Some(p) => read_cursor(p)?,
        None => None,
    };
    // With a cursor, everything after it; otherwise the --since window.
    let since = if cursor.is_some() {
        0
    } else {
        since_ms(args.since)
    };
    let stdout = std::io::stdout();
    loop {
        let resp = c
            .search_events(pb::SearchEventsRequest {
                since_unix_ms: since,
                r#type: String::new(),
                user: String::new(),
                device: String::new(),
                limit: 1000,
                start_after: cursor.clone().unwrap_or_default(),
            })
            .await
            .map_err(api_err)?
            .into_inner();
        if let Some(last) = resp.events.last() {
            let mut out = stdout.lock();
            for e in &resp.events {
                out.write_all(&e.canonical_json)?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
            cursor = Some(last.id.clone());
            if let Some(p) = &args.cursor_file {
                write_cursor(p, &last.id)?;
            }
        }
        if resp.next.is_empty() {
            if !args.follow {
                return Ok(ExitCode::SUCCESS);
            }
            tokio::time::sleep(args.poll).await;
        }
    }
}
