//! Audit events an access point observes (session start and end, commands or queries,
//! terminations, refusals), sent to the auth service in order, in batches, with retries while
//! it is unreachable. The auth service stamps each event with the submitting service; what
//! the access point fills in is the user, the resource, the device, the session.
//!
//! **Nothing is lost when the access point crashes** ([`AuditQueue::spooled`]): every event is
//! appended to a spool file in the data dir before [`AuditQueue::emit`] returns, and removed
//! only once the auth service acknowledged it. After a crash (SIGKILL included: the write is in
//! the kernel before `emit` returns) the next start sends what was not acknowledged. Delivery
//! is at least once: a crash between the auth service's acknowledgement and the spool's
//! record of it sends that batch again.
//!
//! Spool layout (`DATA_DIR/audit/`):
//!
//! ```text
//! spool.jsonl   one event per line: "<seq> <event json>", seq strictly increasing
//! acked         the highest seq the auth service acknowledged (written, then renamed)
//! ```
//!
//! When every spooled event is acknowledged the spool file is emptied (after `acked` is
//! written, so a crash in between leaves only acknowledged lines behind). The file is
//! fsynced once per batch sent; a power loss can lose what was written since the last batch.
//! The spool is bounded ([`SPOOL_MAX_BYTES`]): beyond it, new events are dropped with an error
//! in the log rather than filling the disk.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dt_proto::v1 as pb;
use dt_proto::v1::node_service_client::NodeServiceClient;
use dt_types::audit::{AuditEvent, EventType};
use time::OffsetDateTime;
use tokio::sync::{Notify, mpsc};
use tonic::transport::Channel;

use crate::error::AgentError;
use crate::identity::write_private;

/// In-memory queue bound (the one-shot senders of the OpenSSH helper).
pub const QUEUE_CAPACITY: usize = 10_000;
/// The spool's size bound.
pub const SPOOL_MAX_BYTES: u64 = 256 * 1024 * 1024;
const BATCH: usize = 200;

/// Where an access point's audit events go.
#[derive(Clone)]
pub struct AuditQueue {
    inner: Sink,
}

#[derive(Clone)]
enum Sink {
    Memory(mpsc::Sender<AuditEvent>),
    Spool(Arc<Spool>),
}

impl AuditQueue {
    /// A durable queue spooled in `dir`, and its sender task (spawned on the current
    /// runtime). Events a previous run left unacknowledged are sent first.
    pub fn spooled(dir: &Path, channel: Channel) -> Result<AuditQueue, AgentError> {
        let spool = Arc::new(Spool::open(dir)?);
        let backlog = spool.pending();
        if backlog > 0 {
            tracing::info!(
                events = backlog,
                "audit spool holds events from an earlier run; sending them"
            );
        }
        tokio::spawn(spool_sender(NodeServiceClient::new(channel), spool.clone()));
        Ok(AuditQueue {
            inner: Sink::Spool(spool),
        })
    }

    /// A queue whose events go to `tx` (tests, and the OpenSSH helper's one-shot sends).
    pub fn from_sender(tx: mpsc::Sender<AuditEvent>) -> AuditQueue {
        AuditQueue {
            inner: Sink::Memory(tx),
        }
    }

    pub fn emit(&self, event: AuditEvent) {
        match &self.inner {
            Sink::Memory(tx) => {
                if let Err(e) = tx.try_send(event) {
                    tracing::error!(error = %e, "audit queue is full or closed; dropping an audit event");
                }
            }
            Sink::Spool(s) => {
                if let Err(e) = s.append(&event) {
                    tracing::error!(error = %e, "cannot spool an audit event; dropping it");
                }
            }
        }
    }

    /// Events spooled and not yet acknowledged (0 for an in-memory queue).
    pub fn pending(&self) -> u64 {
        match &self.inner {
            Sink::Memory(_) => 0,
            Sink::Spool(s) => s.pending(),
        }
    }
}

/// A new event of an access-point type, timestamped now.
pub fn event(kind: EventType, success: bool) -> AuditEvent {
    AuditEvent::new(kind, success, OffsetDateTime::now_utc())
}

/// The on-disk spool.
pub struct Spool {
    dir: PathBuf,
    state: Mutex<SpoolState>,
    wake: Notify,
}

struct SpoolState {
    file: File,
    /// Bytes in the file.
    len: u64,
    /// The last seq written.
    written: u64,
    /// The last seq acknowledged.
    acked: u64,
    /// File offset of the first line not yet handed to the sender.
    read_at: u64,
}

impl Spool {
    fn spool_path(dir: &Path) -> PathBuf {
        dir.join("spool.jsonl")
    }
    fn acked_path(dir: &Path) -> PathBuf {
        dir.join("acked")
    }

    /// Open (or create) the spool in `dir` and find where the last run stopped.
    pub fn open(dir: &Path) -> Result<Spool, AgentError> {
        let io = |p: &Path, e| AgentError::io(p, e);
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let acked_path = Self::acked_path(dir);
        let acked = match std::fs::read_to_string(&acked_path) {
            Ok(s) => s.trim().parse::<u64>().map_err(|_| {
                AgentError::Corrupt(format!(
                    "{}: not a sequence number; remove it to resend the whole spool",
                    acked_path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io(&acked_path, e)),
        };
        let path = Self::spool_path(dir);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        // Find the last seq written and the first unacknowledged line. A torn last line (a
        // crash in the middle of a write) is cut off.
        let mut reader = BufReader::new(&file);
        let (mut offset, mut written, mut read_at, mut good_len) = (0u64, acked, None, 0u64);
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line).map_err(|e| io(&path, e))? as u64;
            if n == 0 {
                break;
            }
            match parse_line(&line) {
                Some((seq, _)) if line.ends_with('\n') => {
                    written = written.max(seq);
                    if seq > acked && read_at.is_none() {
                        read_at = Some(offset);
                    }
                    good_len = offset + n;
                }
                _ => {
                    tracing::warn!(
                        path = %path.display(),
                        offset,
                        "audit spool: dropping a torn or unreadable line"
                    );
                    break;
                }
            }
            offset += n;
        }
        if good_len < offset {
            file.set_len(good_len).map_err(|e| io(&path, e))?;
        }
        Ok(Spool {
            dir: dir.to_path_buf(),
            state: Mutex::new(SpoolState {
                file,
                len: good_len,
                written,
                acked,
                read_at: read_at.unwrap_or(good_len),
            }),
            wake: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SpoolState> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Append one event (one `write` of one whole line).
    pub fn append(&self, event: &AuditEvent) -> Result<(), AgentError> {
        let json = serde_json::to_string(event)
            .map_err(|e| AgentError::Corrupt(format!("audit event: {e}")))?;
        let mut st = self.lock();
        if st.len > SPOOL_MAX_BYTES {
            return Err(AgentError::Config(format!(
                "the audit spool in {} is full ({} MiB); is the auth service reachable?",
                self.dir.display(),
                SPOOL_MAX_BYTES >> 20
            )));
        }
        let seq = st.written + 1;
        let line = format!("{seq} {json}\n");
        let path = Self::spool_path(&self.dir);
        st.file
            .write_all(line.as_bytes())
            .map_err(|e| AgentError::io(&path, e))?;
        st.written = seq;
        st.len += line.len() as u64;
        drop(st);
        self.wake.notify_one();
        Ok(())
    }

    /// Events written and not yet acknowledged.
    pub fn pending(&self) -> u64 {
        let st = self.lock();
        st.written - st.acked
    }

    /// The next batch to send: up to `max` events after the last one handed out, with the seq
    /// of the last. Re-reads from the first unacknowledged event after [`Spool::rewind`].
    fn next_batch(&self, max: usize) -> Result<Option<(u64, Vec<String>)>, AgentError> {
        let mut st = self.lock();
        if st.read_at >= st.len {
            return Ok(None);
        }
        let path = Self::spool_path(&self.dir);
        let io = |e| AgentError::io(&path, e);
        let mut reader = BufReader::new(st.file.try_clone().map_err(io)?);
        reader.seek(SeekFrom::Start(st.read_at)).map_err(io)?;
        let mut events = Vec::new();
        let mut last = 0;
        let mut line = String::new();
        let mut offset = st.read_at;
        while events.len() < max && offset < st.len {
            line.clear();
            let n = reader.read_line(&mut line).map_err(io)? as u64;
            if n == 0 {
                break;
            }
            offset += n;
            if let Some((seq, json)) = parse_line(&line)
                && seq > st.acked
            {
                events.push(json.to_string());
                last = seq;
            }
        }
        st.read_at = offset;
        Ok((!events.is_empty()).then_some((last, events)))
    }

    /// The auth service acknowledged everything up to `seq`.
    fn ack(&self, seq: u64) -> Result<(), AgentError> {
        let mut st = self.lock();
        let path = Self::spool_path(&self.dir);
        st.file.sync_data().map_err(|e| AgentError::io(&path, e))?;
        write_private(&Self::acked_path(&self.dir), format!("{seq}\n").as_bytes())?;
        st.acked = seq;
        if st.acked == st.written {
            // Everything is delivered: start the file afresh.
            st.file.set_len(0).map_err(|e| AgentError::io(&path, e))?;
            st.len = 0;
            st.read_at = 0;
        }
        Ok(())
    }

    /// A batch failed: hand out everything unacknowledged again, from the start.
    fn rewind(&self) {
        let mut st = self.lock();
        st.read_at = 0;
    }
}

fn parse_line(line: &str) -> Option<(u64, &str)> {
    let (seq, json) = line.trim_end_matches('\n').split_once(' ')?;
    Some((seq.parse().ok()?, json))
}

async fn spool_sender(mut client: NodeServiceClient<Channel>, spool: Arc<Spool>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let batch = match spool.next_batch(BATCH) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the audit spool; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                spool.rewind();
                continue;
            }
        };
        let Some((last, events)) = batch else {
            // Nothing to send: wait for the next event (or look again now and then, in case a
            // notification raced with the read).
            let _ = tokio::time::timeout(Duration::from_secs(1), spool.wake.notified()).await;
            continue;
        };
        let n = events.len();
        match client
            .submit_audit_events(pb::SubmitAuditEventsRequest { events })
            .await
        {
            Ok(_) => {
                if let Err(e) = spool.ack(last) {
                    tracing::error!(error = %e, "cannot record delivered audit events; they may be sent again");
                }
                backoff = Duration::from_millis(200);
            }
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::InvalidArgument | tonic::Code::PermissionDenied
                ) =>
            {
                // Sending them again would fail the same way and block every later event.
                tracing::error!(error = %s.message(), n, "the auth service refused audit events; dropping them");
                if let Err(e) = spool.ack(last) {
                    tracing::error!(error = %e, "cannot record refused audit events");
                }
            }
            Err(s) => {
                tracing::warn!(error = %s.message(), n, pending = spool.pending(), "cannot send audit events yet; retrying");
                spool.rewind();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: u32) -> AuditEvent {
        event(EventType::SessionStart, true).message(format!("event {n}"))
    }

    fn drain(s: &Spool) -> Vec<String> {
        let mut out = Vec::new();
        while let Some((last, batch)) = s.next_batch(3).unwrap() {
            out.extend(batch);
            s.ack(last).unwrap();
        }
        out
    }

    #[test]
    fn unacknowledged_events_survive_a_reopen_and_acknowledged_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path()).unwrap();
        for n in 0..5 {
            s.append(&ev(n)).unwrap();
        }
        let (last, first) = s.next_batch(2).unwrap().unwrap();
        assert_eq!(first.len(), 2);
        s.ack(last).unwrap();
        // Handed out but not acknowledged: a crash here must resend it.
        let _ = s.next_batch(1).unwrap().unwrap();
        drop(s);
        let s = Spool::open(dir.path()).unwrap();
        assert_eq!(s.pending(), 3);
        let rest = drain(&s);
        assert_eq!(rest.len(), 3);
        assert!(rest[0].contains("event 2"), "{rest:?}");
        assert!(rest[2].contains("event 4"), "{rest:?}");
        // All delivered: the file is emptied and nothing comes back.
        assert_eq!(
            std::fs::metadata(Spool::spool_path(dir.path()))
                .unwrap()
                .len(),
            0
        );
        drop(s);
        let s = Spool::open(dir.path()).unwrap();
        assert_eq!(s.pending(), 0);
        assert!(s.next_batch(10).unwrap().is_none());
        // Sequence numbers keep growing after the file was emptied.
        s.append(&ev(9)).unwrap();
        let (last, _) = s.next_batch(10).unwrap().unwrap();
        assert_eq!(last, 6);
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path()).unwrap();
        s.append(&ev(1)).unwrap();
        s.append(&ev(2)).unwrap();
        drop(s);
        let mut f = OpenOptions::new()
            .append(true)
            .open(Spool::spool_path(dir.path()))
            .unwrap();
        f.write_all(b"3 {\"type\":\"sess").unwrap();
        drop(f);
        let s = Spool::open(dir.path()).unwrap();
        assert_eq!(s.pending(), 2);
        s.append(&ev(3)).unwrap();
        let all = drain(&s);
        assert_eq!(all.len(), 3);
        assert!(all[2].contains("event 3"));
    }

    #[test]
    fn a_failed_batch_is_handed_out_again() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path()).unwrap();
        for n in 0..4 {
            s.append(&ev(n)).unwrap();
        }
        let (_, b1) = s.next_batch(10).unwrap().unwrap();
        s.rewind();
        let (_, b2) = s.next_batch(10).unwrap().unwrap();
        assert_eq!(b1, b2);
    }

    #[test]
    fn a_garbled_ack_file_is_an_error_that_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("acked"), "lots").unwrap();
        let err = Spool::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("remove it"), "{err}");
    }
}
