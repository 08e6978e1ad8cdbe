//! The change-feed fan-out shared by both backends.
//!
//! One task per backend instance owns a cursor `(revision, idx)` into the events table and
//! all local watchers. It reads `events` past the cursor whenever it is woken (a local
//! write, a PostgreSQL notification, a new watcher) or the fallback poll fires, and pushes
//! each event to the matching watchers with `try_send`, dropping any watcher whose buffer
//! is full. Because writers commit in revision order, reading "everything after the
//! cursor" never skips a committed event.

use std::sync::Arc;

use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::common::{Background, backend_msg, closed, from_ms, stopped};
use crate::{EventKind, Item, Result, Tuning, WatchEvent, Watcher};

/// How many events one read of the change table returns at most.
const BATCH: usize = 1000;

/// One row of the change table.
#[derive(Clone, Debug)]
pub(crate) struct StoredEvent {
    pub revision: i64,
    pub idx: i32,
    pub kind: EventKind,
    pub key: String,
    pub value: Vec<u8>,
    pub expires: Option<i64>,
}

pub(crate) const KIND_PUT: i16 = 0;
pub(crate) const KIND_DELETE: i16 = 1;

pub(crate) fn kind_from_code(code: i64) -> Result<EventKind> {
    match code {
        c if c == i64::from(KIND_PUT) => Ok(EventKind::Put),
        c if c == i64::from(KIND_DELETE) => Ok(EventKind::Delete),
        other => Err(backend_msg(format!(
            "unknown event kind {other} in change table"
        ))),
    }
}

/// Whose values a read of the change table must return.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Wanted {
    /// Every event's (a watcher watches everything).
    All,
    /// Only those of keys under one of these prefixes (none when empty); the value of any
    /// other event may come back empty. Why: a watched cluster rarely watches what it
    /// writes most (an auth server's cache watches roles, locks and settings, while every
    /// device authentication writes its device, about 3 KiB), and every auth server reads
    /// every event, its own and the others'.
    Under(Vec<String>),
}

/// Where the hub reads events from.
#[async_trait::async_trait]
pub(crate) trait EventSource: Send + Sync + 'static {
    /// Events with `(revision, idx) > (revision, idx)`, in that order, at most `limit`,
    /// with the values `wanted` asks for (and possibly others).
    async fn events_after(
        &self,
        revision: i64,
        idx: i32,
        limit: usize,
        wanted: &Wanted,
    ) -> Result<Vec<StoredEvent>>;
}

struct Register {
    prefixes: Vec<String>,
    reply: oneshot::Sender<Result<Watcher>>,
}

/// Handle to the fan-out task.
pub(crate) struct Hub {
    cmd: mpsc::Sender<Register>,
}

impl Hub {
    /// Start the fan-out task. `head` is the committed revision at startup: only events
    /// after it are delivered. `wake` is notified by local writes and notifications.
    pub(crate) fn start(
        bg: &Background,
        source: Arc<dyn EventSource>,
        head: i64,
        tuning: &Tuning,
        wake: Arc<Notify>,
    ) -> Hub {
        let (cmd, cmd_rx) = mpsc::channel(64);
        let task = Task {
            source,
            cursor: (head, i32::MAX),
            watchers: Vec::new(),
            buffer: tuning.watcher_buffer.max(1),
        };
        let stop = bg.subscribe();
        bg.spawn(task.run(cmd_rx, wake, stop, tuning.poll_every));
        Hub { cmd }
    }

    pub(crate) async fn watch(&self, prefixes: Vec<String>) -> Result<Watcher> {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Register { prefixes, reply })
            .await
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}

struct Subscriber {
    prefixes: Vec<String>,
    tx: mpsc::Sender<WatchEvent>,
}

impl Subscriber {
    fn wants(&self, key: &str) -> bool {
        self.prefixes.is_empty() || self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }
}

struct Task {
    source: Arc<dyn EventSource>,
    cursor: (i64, i32),
    watchers: Vec<Subscriber>,
    buffer: usize,
}

impl Task {
    async fn run(
        mut self,
        mut cmd: mpsc::Receiver<Register>,
        wake: Arc<Notify>,
        mut stop: watch::Receiver<bool>,
        poll_every: std::time::Duration,
    ) {
        let mut tick = tokio::time::interval(poll_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = stopped(&mut stop) => break,
                reg = cmd.recv() => match reg {
                    None => break,
                    Some(reg) => self.register(reg).await,
                },
                () = wake.notified() => self.pump_logged().await,
                _ = tick.tick() => self.pump_logged().await,
            }
        }
        // Dropping the senders ends every watcher.
        self.watchers.clear();
    }

    async fn register(&mut self, reg: Register) {
        // Catch up first, so the watch starts at (or after) every write that completed
        // before `watch` was called, and `Init` is consistent with the cursor.
        let result = match self.pump().await {
            Ok(()) => {
                let (tx, rx) = mpsc::channel(self.buffer);
                match tx.try_send(WatchEvent::Init {
                    revision: self.cursor.0,
                }) {
                    Ok(()) => {
                        self.watchers.push(Subscriber {
                            prefixes: reg.prefixes,
                            tx,
                        });
                        Ok(Watcher { rx })
                    }
                    Err(_) => Err(backend_msg("could not start watcher")),
                }
            }
            Err(e) => Err(e),
        };
        // The caller may have gone away; then the watcher is simply dropped.
        let _ = reg.reply.send(result);
    }

    /// A failed read ends every watcher: a watcher must never look current while changes
    /// may be passing it by (storage unreachable for longer than the change table keeps
    /// rows would lose them for good). Watchers reconnect and reload, as after any end.
    async fn pump_logged(&mut self) {
        if let Err(e) = self.pump().await {
            tracing::warn!(
                error = %e,
                watchers = self.watchers.len(),
                "dt-store: reading the change table failed; ending the watches (they start again from a fresh read)"
            );
            self.watchers.clear();
        }
    }

    /// The values the current watchers can want.
    fn wanted(&self) -> Wanted {
        let mut prefixes = Vec::new();
        for w in &self.watchers {
            if w.prefixes.is_empty() || w.prefixes.iter().any(String::is_empty) {
                return Wanted::All;
            }
            prefixes.extend(w.prefixes.iter().cloned());
        }
        prefixes.sort();
        prefixes.dedup();
        Wanted::Under(prefixes)
    }

    /// Read and fan out everything after the cursor.
    async fn pump(&mut self) -> Result<()> {
        self.watchers.retain(|w| !w.tx.is_closed());
        let wanted = self.wanted();
        loop {
            let batch = self
                .source
                .events_after(self.cursor.0, self.cursor.1, BATCH, &wanted)
                .await?;
            let full = batch.len() >= BATCH;
            for ev in batch {
                self.cursor = (ev.revision, ev.idx);
                self.fan_out(ev);
            }
            if !full {
                return Ok(());
            }
            tokio::task::yield_now().await;
        }
    }

    fn fan_out(&mut self, ev: StoredEvent) {
        if self.watchers.is_empty() {
            return;
        }
        let item = Item {
            key: ev.key,
            value: ev.value,
            revision: ev.revision,
            // An unrepresentable expiry cannot come from this crate; deliver the change
            // rather than skip it.
            expires: match ev.kind {
                EventKind::Put => ev.expires.and_then(|ms| from_ms(ms).ok()),
                EventKind::Delete => None,
            },
        };
        let event = WatchEvent::Change {
            kind: ev.kind,
            item,
        };
        let key = match &event {
            WatchEvent::Change { item, .. } => item.key.as_str(),
            WatchEvent::Init { .. } => "",
        };
        self.watchers.retain(|w| {
            if !w.wants(key) {
                return !w.tx.is_closed();
            }
            match w.tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::info!("dt-store: closing a watcher that fell behind");
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A change table with nothing new in it, or one that cannot be read.
    struct Source {
        broken: bool,
    }

    #[async_trait::async_trait]
    impl EventSource for Source {
        async fn events_after(
            &self,
            _: i64,
            _: i32,
            _: usize,
            _: &Wanted,
        ) -> Result<Vec<StoredEvent>> {
            if self.broken {
                return Err(backend_msg("storage unreachable"));
            }
            Ok(Vec::new())
        }
    }

    fn task(watching: &[&[&str]]) -> Task {
        let watchers = watching
            .iter()
            .map(|prefixes| Subscriber {
                prefixes: prefixes.iter().map(|p| (*p).to_string()).collect(),
                tx: mpsc::channel(1).0,
            })
            .collect();
        Task {
            source: Arc::new(Source { broken: false }),
            cursor: (0, 0),
            watchers,
            buffer: 1,
        }
    }

    #[tokio::test]
    async fn a_failed_read_of_the_change_table_ends_every_watch() {
        let (tx, mut rx) = mpsc::channel(4);
        let mut t = task(&[]);
        t.watchers.push(Subscriber {
            prefixes: vec!["/a/".into()],
            tx,
        });
        t.pump_logged().await;
        assert_eq!(t.watchers.len(), 1, "a good read keeps the watch");
        t.source = Arc::new(Source { broken: true });
        t.pump_logged().await;
        assert!(rx.recv().await.is_none(), "the watch ended");
    }

    #[test]
    fn the_values_wanted_are_those_under_some_watchers_prefix() {
        assert_eq!(task(&[]).wanted(), Wanted::Under(vec![]));
        assert_eq!(
            task(&[&["/b/", "/a/"], &["/a/"]]).wanted(),
            Wanted::Under(vec!["/a/".into(), "/b/".into()])
        );
        // A watcher of everything, by an empty list or an empty prefix, wants every value.
        assert_eq!(task(&[&["/a/"], &[]]).wanted(), Wanted::All);
        assert_eq!(task(&[&["/a/", ""]]).wanted(), Wanted::All);
    }
}
