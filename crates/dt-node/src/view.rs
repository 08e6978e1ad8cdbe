//! The node's view of the cluster is the runtime's ([`dt_agent::view`]); this module adds the
//! copy on disk that `devtrust openssh-principals` reads.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use dt_agent::view::{ClusterView, Doc, SharedView, ViewError};

/// The view on disk, for `devtrust openssh-principals` (a short-lived process sshd starts).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewFile {
    /// When the writer's watch last confirmed the view, unix milliseconds.
    pub confirmed_at_unix_ms: i64,
    /// The node the view is for (its name and labels take part in decisions). Checked on
    /// the way in: a file naming no valid node is refused, never read as some node.
    pub node_name: dt_types::NodeName,
    #[serde(default)]
    pub node_labels: std::collections::BTreeMap<String, String>,
    pub docs: Vec<Doc>,
}

impl ViewFile {
    pub fn from_view(v: &ClusterView, node: &crate::access::NodeFacts) -> Option<ViewFile> {
        if !v.is_loaded() {
            return None;
        }
        let at = v.confirmed_at()?;
        Some(ViewFile {
            confirmed_at_unix_ms: (at.unix_timestamp_nanos() / 1_000_000) as i64,
            node_name: node.name.clone(),
            node_labels: node.labels.clone(),
            docs: v.docs(),
        })
    }

    /// The node this view was written for.
    pub fn facts(&self) -> crate::access::NodeFacts {
        crate::access::NodeFacts {
            name: self.node_name.clone(),
            labels: self.node_labels.clone(),
        }
    }

    pub fn into_view(self) -> ClusterView {
        let at = OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(self.confirmed_at_unix_ms) * 1_000_000,
        )
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        ClusterView::from_snapshot(&self.docs, at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_keeps_unreadable_documents_unreadable() {
        let now = OffsetDateTime::now_utc();
        let docs = vec![
            Doc {
                kind: "lock".into(),
                json: "not json".into(),
            },
            Doc {
                kind: "role".into(),
                json:
                    r#"{"kind":"role","version":"v9","metadata":{"name":"b"},"spec":{"future":1}}"#
                        .into(),
            },
            Doc {
                kind: "cluster_auth_preference".into(),
                json: r#"{"kind":"cluster_auth_preference","metadata":{"name":"cluster-auth-preference"},"spec":{"bogus":1}}"#.into(),
            },
        ];
        let v = ClusterView::from_snapshot(&docs, now);
        let facts = crate::access::NodeFacts {
            name: "node1".parse().unwrap(),
            labels: Default::default(),
        };
        let file = ViewFile::from_view(&v, &facts).unwrap();
        // The node name is checked on the way in: a file naming no valid node is refused.
        let mut json = serde_json::to_value(&file).unwrap();
        assert_eq!(json["node_name"], "node1");
        json["node_name"] = "-node1".into();
        assert!(serde_json::from_value::<ViewFile>(json).is_err());
        let back = file.into_view();
        assert!(
            back.cluster_mode().is_err(),
            "unreadable cluster preference: deny"
        );
        assert!(back.active_locks(now).is_err());
        assert!(back.roles(&["b".into()]).is_err());
    }
}
