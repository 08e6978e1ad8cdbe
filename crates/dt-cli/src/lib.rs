//! What the three programs share: output formats, error reporting, time display.

use std::process::ExitCode;

use time::OffsetDateTime;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
    Yaml,
}

/// Print `ERROR: <message>` (with its causes) to stderr and map to exit code 1.
pub fn report(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("ERROR: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Human time: `2026-11-24 14:00:05 +0000 UTC`.
pub fn fmt_time(t: OffsetDateTime) -> String {
    let f = time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second] [offset_hour sign:mandatory][offset_minute]"
    );
    format!(
        "{} UTC",
        t.to_offset(time::UtcOffset::UTC)
            .format(&f)
            .unwrap_or_default()
    )
}

/// `12h0m0s` style, as the seeds print validity.
pub fn fmt_remaining(d: time::Duration) -> String {
    let s = d.whole_seconds().max(0);
    format!("{}h{}m{}s", s / 3600, (s % 3600) / 60, s % 60)
}

/// Parse a human duration flag (`90s`, `12h`, `1h30m`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    dt_types::duration::parse_duration(s).map_err(|e| e.to_string())
}

/// A simple aligned table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join(" ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![
        line(headers.iter().map(|h| h.to_string()).collect()),
        line(widths.iter().map(|w| "-".repeat(*w)).collect()),
    ];
    out.extend(rows.iter().map(|r| line(r.clone())));
    out.join("\n")
}

/// Render resources (generic JSON values) as YAML documents separated by `---`.
pub fn to_yaml_docs(values: &[serde_json::Value]) -> anyhow::Result<String> {
    let mut out = String::new();
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_saphyr::to_string(v)?);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

/// The operation failed because no auth server could be reached or the connection broke,
/// so it may be repeated on another ([`dt_client::connect::with_failover`]).
pub fn is_transport(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<dt_client::ClientError>()
            .is_some_and(dt_client::ClientError::is_transport)
            || c.downcast_ref::<tonic::Status>()
                .is_some_and(dt_client::connect::is_transport_status)
    })
}

/// Turn a gRPC failure into an error whose message is the server's guidance.
pub fn api_err(s: tonic::Status) -> anyhow::Error {
    anyhow::Error::new(dt_client::ClientError::from_status(s))
}
