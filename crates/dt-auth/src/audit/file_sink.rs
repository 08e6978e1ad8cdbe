//! The JSON-lines sink: every event this auth server writes, appended to a file as it is
//! committed (one stored event per line, with its chain hashes), rotated by size.
//!
//! It runs after the transaction commits, so the file never holds an event the database
//! does not; a failure to write the file is logged and never undoes or blocks the change
//! (the database stays the record; `dtctl events export` can fill a gap). With several auth
//! servers, each writes the events it committed: point each at its own file, or use
//! `dtctl events export --follow` for one stream of the whole cluster.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use dt_types::audit::AuditEvent;

/// Where and how big.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSinkConfig {
    pub path: PathBuf,
    /// Rotate when the file would grow past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`path.1` is the newest).
    pub keep: usize,
}

pub struct FileSink {
    config: FileSinkConfig,
    file: Mutex<Option<(File, u64)>>,
}

fn open(path: &Path) -> std::io::Result<(File, u64)> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    let len = f.metadata()?.len();
    Ok((f, len))
}

impl FileSink {
    pub fn new(config: FileSinkConfig) -> std::io::Result<FileSink> {
        let f = open(&config.path)?;
        Ok(FileSink {
            config,
            file: Mutex::new(Some(f)),
        })
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut p = self.config.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    fn rotate(&self) -> std::io::Result<(File, u64)> {
        if self.config.keep == 0 {
            std::fs::remove_file(&self.config.path)?;
        } else {
            for n in (1..self.config.keep).rev() {
                let from = self.rotated(n);
                if from.exists() {
                    std::fs::rename(&from, self.rotated(n + 1))?;
                }
            }
            std::fs::rename(&self.config.path, self.rotated(1))?;
        }
        open(&self.config.path)
    }

    /// Append committed events; errors are the caller's to log.
    pub fn write(&self, events: &[AuditEvent]) -> std::io::Result<()> {
        let mut buf = Vec::new();
        for e in events {
            serde_json::to_writer(&mut buf, e)?;
            buf.push(b'\n');
        }
        let mut guard = self
            .file
            .lock()
            .map_err(|_| std::io::Error::other("audit file sink poisoned"))?;
        let (mut f, mut len) = match guard.take() {
            Some(x) => x,
            None => open(&self.config.path)?,
        };
        if len > 0 && len + buf.len() as u64 > self.config.max_bytes {
            (f, len) = self.rotate()?;
        }
        f.write_all(&buf)?;
        f.flush()?;
        *guard = Some((f, len + buf.len() as u64));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dt_types::audit::EventType;

    #[test]
    fn appends_lines_and_rotates_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let sink = FileSink::new(FileSinkConfig {
            path: path.clone(),
            max_bytes: 600,
            keep: 2,
        })
        .unwrap();
        let t = time::OffsetDateTime::UNIX_EPOCH;
        for i in 0..20 {
            let mut e = AuditEvent::new(EventType::UserLogin, true, t).user(format!("u{i}"));
            e.id = format!("{i:020}");
            sink.write(&[e]).unwrap();
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let current = read(&path);
        let one = read(&dir.path().join("events.jsonl.1"));
        let two = read(&dir.path().join("events.jsonl.2"));
        assert!(!dir.path().join("events.jsonl.3").exists(), "keep: 2");
        for text in [&current, &one, &two] {
            assert!(!text.is_empty());
            assert!(text.len() <= 600, "{}", text.len());
            for l in text.lines() {
                let e: AuditEvent = serde_json::from_str(l).unwrap();
                assert_eq!(e.event, EventType::UserLogin);
            }
        }
        // Newest last in the current file, oldest kept in .2, in order across files.
        let all: Vec<String> = [two, one, current]
            .iter()
            .flat_map(|t| {
                t.lines()
                    .map(|l| serde_json::from_str::<AuditEvent>(l).unwrap().id)
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(all, sorted);
        assert_eq!(all.last().unwrap(), &format!("{:020}", 19));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "events are private to the service");
    }
}
