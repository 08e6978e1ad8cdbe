//! Secondary indexes over the audit log, so `dtctl events ls --since=1h --type=T --user=U`
//! reads the few events it returns instead of every stored event.
//!
//! The indexes are items in the same store, written in the same transaction as the event
//! (empty values; the key is the index): `/audit/idx/type/<type>/<id>`,
//! `/audit/idx/user/<user>/<id>`, and `/audit/idx/device/<device id or asset tag>/<id>`.
//! Both backends keep items in key order (SQLite and PostgreSQL primary keys), so one index
//! is one range read. Time needs no index: event ids grow with time, so `--since` is a
//! binary search over the ids (below). Earlier builds also wrote `/audit/idx/time/...`
//! entries that nothing read; retention still removes them with their events.
//!
//! Events stored before the indexes existed are found by reading them all: `/audit/idx/from`
//! names the first event written with indexes, set once when a server with indexes first
//! starts, and searches read the older ones in order.
//!
//! With `--since`, the search starts at the first event (by id) whose time index entry is at
//! or after that time; every result's time is still checked. An event written with an older
//! time than an event before it (clock skew between auth servers) can be left out of a
//! `--since` search that starts just after it.

use dt_store::{Condition, Op, StoreError};
use dt_types::audit::AuditEvent;

use super::{AuditSink, EventFilter};
use crate::keys;

pub const INDEX_PREFIX: &str = "/audit/idx/";
/// The first event id written with indexes.
pub const INDEX_FROM: &str = "/audit/idx-from";

/// Index components must not contain the key separator.
fn part(s: &str) -> String {
    s.replace('%', "%25").replace('/', "%2F")
}

fn seq_str(seq: u64) -> String {
    keys::audit_event_id(seq)
}

/// The index keys of one event, without the event id they end with (each ends in `/`):
/// known before the event has its place in the log.
pub(crate) fn index_prefixes(e: &AuditEvent) -> Vec<String> {
    let mut out = vec![format!("{INDEX_PREFIX}type/{}/", part(e.event.as_str()))];
    if let Some(u) = &e.user {
        out.push(format!("{INDEX_PREFIX}user/{}/", part(u)));
    }
    if let Some(d) = &e.device {
        if !d.device_id.is_empty() {
            out.push(format!("{INDEX_PREFIX}device/{}/", part(&d.device_id)));
        }
        if !d.asset_tag.is_empty() && d.asset_tag != d.device_id {
            out.push(format!("{INDEX_PREFIX}device/{}/", part(&d.asset_tag)));
        }
    }
    out
}

/// The index keys of one event.
pub(crate) fn index_keys(e: &AuditEvent, seq: u64) -> Vec<String> {
    let id = seq_str(seq);
    index_prefixes(e)
        .into_iter()
        .map(|prefix| prefix + &id)
        .collect()
}

/// Every index key an event may have been stored with, by this build or an earlier one
/// (which also wrote a time index): what retention deletes with the event.
pub(crate) fn stored_index_keys(e: &AuditEvent, seq: u64) -> Vec<String> {
    let ms = (e.time.unix_timestamp_nanos() / 1_000_000).max(0);
    let mut out = index_keys(e, seq);
    out.push(format!("{INDEX_PREFIX}time/{ms:016}/{}", seq_str(seq)));
    out
}

/// How far out of order (by time) events may have been numbered for `--since` to find them.
const SINCE_SKEW_MS: i128 = 5 * 60 * 1000;

fn seq_of_index_key(key: &str) -> Option<u64> {
    key.rsplit('/').next()?.parse().ok()
}

impl AuditSink {
    /// Mark where indexed events start (once per cluster): events after the current head
    /// are written with indexes by this build.
    pub async fn init_index(&self) -> Result<(), StoreError> {
        for _ in 0..20 {
            if self.backend.get(INDEX_FROM).await?.is_some() {
                return Ok(());
            }
            let head = self.load_head().await?;
            let head_cond = match head.revision {
                Some(rev) => Condition::Revision(keys::AUDIT_HEAD.into(), rev),
                None => Condition::NotExists(keys::AUDIT_HEAD.into()),
            };
            match self
                .backend
                .atomic_write(
                    vec![Condition::NotExists(INDEX_FROM.into()), head_cond],
                    vec![Op::Put {
                        key: INDEX_FROM.into(),
                        value: seq_str(head.seq + 1).into_bytes(),
                        expires: None,
                    }],
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(StoreError::ConditionFailed { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Invalid(
            "audit log is too contended to start its index; try again".into(),
        ))
    }

    async fn index_from(&self) -> Result<Option<u64>, StoreError> {
        Ok(self
            .backend
            .get(INDEX_FROM)
            .await?
            .and_then(|i| String::from_utf8(i.value).ok())
            .and_then(|s| s.trim().parse().ok()))
    }

    /// A lower bound on the ids of events at or after `filter.since`.
    ///
    /// Events are stamped when they are made and numbered when they commit, so a later
    /// number can carry a slightly earlier time (concurrent requests; the clocks of several
    /// auth servers). Assuming no event is stamped more than [`SINCE_SKEW_MS`] before one
    /// numbered ahead of it, a binary search over ids finds `L` with event `L - 1` stamped
    /// before `since - skew`: every event before it is then stamped before `since`. The
    /// events from `L` on are checked against `since` itself. About log2(n) reads.
    async fn first_seq_since(&self, filter: &EventFilter) -> Result<u64, StoreError> {
        let Some(since) = filter.since else {
            return Ok(0);
        };
        let threshold = since - time::Duration::milliseconds(SINCE_SKEW_MS as i64);
        let head = self.load_head().await?.seq;
        let anchor = self.anchor().await?.map(|a| a.seq).unwrap_or(0);
        // Invariant: events before `lo` are stamped before the threshold (or gone); events
        // from `hi` on are stamped at or after it (or beyond the head).
        let (mut lo, mut hi) = (anchor + 1, head + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let at_or_after = match self.backend.get(&keys::audit_event(mid)).await? {
                Some(i) => serde_json::from_slice::<AuditEvent>(&i.value)
                    .map(|e| e.time >= threshold)
                    .unwrap_or(false),
                None => false,
            };
            if at_or_after {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
    }

    /// An indexed search: `Ok(None)` when the log has no index (use the full read).
    pub(crate) async fn search_indexed(
        &self,
        filter: &EventFilter,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Option<(Vec<AuditEvent>, Option<String>)>, StoreError> {
        let Some(from) = self.index_from().await? else {
            return Ok(None);
        };
        // The most selective index the filter names; with only --since, the event ids.
        let prefix = if let Some(u) = &filter.user {
            format!("{INDEX_PREFIX}user/{}/", part(u))
        } else if let Some(d) = &filter.device {
            format!("{INDEX_PREFIX}device/{}/", part(d))
        } else if let Some(t) = filter.event {
            format!("{INDEX_PREFIX}type/{}/", part(t.as_str()))
        } else if filter.since.is_some() {
            keys::AUDIT_EVENTS.to_string()
        } else {
            return Ok(None);
        };
        let after: u64 = start_after.and_then(|s| s.parse().ok()).unwrap_or(0);
        let lowest = after
            .saturating_add(1)
            .max(self.first_seq_since(filter).await?);
        let mut out = Vec::new();
        // Events from before the index: read in order, as before.
        if lowest < from {
            let mut cursor = Some(format!("{}{}", keys::AUDIT_EVENTS, seq_str(lowest - 1)));
            'old: loop {
                let page = self
                    .backend
                    .range(keys::AUDIT_EVENTS, cursor.as_deref(), 1000)
                    .await?;
                for item in &page.items {
                    let Some(seq) = seq_of_index_key(&item.key) else {
                        continue;
                    };
                    if seq >= from {
                        break 'old;
                    }
                    if let Ok(e) = serde_json::from_slice::<AuditEvent>(&item.value)
                        && filter.matches(&e)
                    {
                        out.push(e);
                        if out.len() >= limit {
                            let next = out.last().map(|e| e.id.clone());
                            return Ok(Some((out, next)));
                        }
                    }
                }
                match page.next {
                    Some(n) => cursor = Some(n),
                    None => break,
                }
            }
        }
        let mut cursor = Some(format!("{prefix}{}", seq_str(lowest.max(from) - 1)));
        loop {
            let page = self.backend.range(&prefix, cursor.as_deref(), 1000).await?;
            for item in &page.items {
                let Some(seq) = seq_of_index_key(&item.key) else {
                    continue;
                };
                let e = if prefix == keys::AUDIT_EVENTS {
                    serde_json::from_slice::<AuditEvent>(&item.value).ok()
                } else {
                    match self.backend.get(&keys::audit_event(seq)).await? {
                        Some(i) => serde_json::from_slice::<AuditEvent>(&i.value).ok(),
                        None => None,
                    }
                };
                let Some(e) = e else { continue };
                if filter.matches(&e) {
                    out.push(e);
                    if out.len() >= limit {
                        let next = out.last().map(|e| e.id.clone());
                        return Ok(Some((out, next)));
                    }
                }
            }
            match page.next {
                Some(n) => cursor = Some(n),
                None => return Ok(Some((out, None))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dt_types::audit::{DeviceInfo, EventType};

    #[test]
    fn keys_name_the_event_and_escape_separators() {
        let t = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let mut e = AuditEvent::new(EventType::DeviceAuthenticate, true, t).user("a/b%c");
        e.device = Some(DeviceInfo {
            device_id: "d1".into(),
            asset_tag: "TAG".into(),
            os_type: String::new(),
            credential_id: String::new(),
        });
        let k = index_keys(&e, 7);
        assert_eq!(
            k,
            vec![
                "/audit/idx/type/device.authenticate/00000000000000000007",
                "/audit/idx/user/a%2Fb%25c/00000000000000000007",
                "/audit/idx/device/d1/00000000000000000007",
                "/audit/idx/device/TAG/00000000000000000007",
            ]
        );
        for key in &k {
            assert_eq!(seq_of_index_key(key), Some(7));
        }
    }
}
