//! Patroni's ConfigMap layout (§3.3): `<scope>-config` (config, initialize, history),
//! `<scope>-failover` and `<scope>-sync`, each value an annotation.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::{Map, Value};

use crate::dcs::{Failover, SyncState};

/// The annotation on `<scope>-config` naming the member that claimed `initialize` while the
/// claim is open (pgwarden's; Patroni ignores it).
pub(super) const CLAIMANT: &str = "pgwarden/initialize-claimant";

/// The object names of one cluster.
#[derive(Debug, Clone)]
pub(super) struct Names {
    pub config: String,
    pub failover: String,
    pub sync: String,
}

impl Names {
    pub(super) fn new(scope: &str) -> Names {
        Names {
            config: format!("{scope}-config"),
            failover: format!("{scope}-failover"),
            sync: format!("{scope}-sync"),
        }
    }
}

fn annotations(cm: &ConfigMap) -> BTreeMap<String, String> {
    cm.metadata.annotations.clone().unwrap_or_default()
}

/// The raw `(key, value, resourceVersion)` entries of the cluster's ConfigMaps, for
/// `ClusterView::from_raw`. Values that do not parse are passed on for the model to report.
pub(super) fn raw_entries(
    names: &Names,
    cms: &BTreeMap<String, ConfigMap>,
) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let rv = |cm: &ConfigMap| cm.metadata.resource_version.clone().unwrap_or_default();
    if let Some(cm) = cms.get(&names.config) {
        let ann = annotations(cm);
        for key in ["config", "initialize", "history"] {
            if let Some(v) = ann.get(key) {
                out.push((key.to_owned(), v.clone(), rv(cm)));
            }
        }
    }
    if let Some(cm) = cms.get(&names.failover) {
        let ann = annotations(cm);
        let mut m = Map::new();
        for key in ["leader", "member", "scheduled_at"] {
            if let Some(v) = ann.get(key) {
                m.insert(key.into(), Value::String(v.clone()));
            }
        }
        // Present even when empty: the version lets a switchover request be compare-and-set.
        out.push(("failover".into(), Value::Object(m).to_string(), rv(cm)));
    }
    if let Some(cm) = cms.get(&names.sync) {
        let ann = annotations(cm);
        if ann.contains_key("leader") || ann.contains_key("sync_standby") {
            let mut m = Map::new();
            for key in ["leader", "sync_standby"] {
                if let Some(v) = ann.get(key) {
                    m.insert(key.into(), Value::String(v.clone()));
                }
            }
            if let Some(q) = ann.get("quorum") {
                let v = q
                    .trim()
                    .parse::<u64>()
                    .map(Value::from)
                    .unwrap_or_else(|_| Value::String(q.clone()));
                m.insert("quorum".into(), v);
            }
            out.push(("sync".into(), Value::Object(m).to_string(), rv(cm)));
        }
    }
    out
}

/// Annotation changes (null removes) for a failover request; an empty one clears the object.
pub(super) fn failover_annotations(f: &Failover) -> Map<String, Value> {
    let s = |v: &Option<String>| v.clone().map(Value::String).unwrap_or(Value::Null);
    let mut m = Map::new();
    m.insert("leader".into(), s(&f.leader));
    m.insert("member".into(), s(&f.member));
    m.insert("scheduled_at".into(), s(&f.scheduled_at));
    m
}

/// Annotation changes for the sync state.
pub(super) fn sync_annotations(s: &SyncState) -> Map<String, Value> {
    let str_or_null = |v: &Option<String>| v.clone().map(Value::String).unwrap_or(Value::Null);
    let mut m = Map::new();
    m.insert("leader".into(), str_or_null(&s.leader));
    m.insert("sync_standby".into(), str_or_null(&s.sync_standby));
    m.insert(
        "quorum".into(),
        s.quorum
            .map(|q| Value::String(q.to_string()))
            .unwrap_or(Value::Null),
    );
    m
}

/// A merge patch of annotations, optionally guarded by a `resourceVersion` (409 if it moved).
pub(super) fn annotation_patch(ann: &Map<String, Value>, rv: Option<&str>) -> Value {
    let mut meta = Map::new();
    meta.insert("annotations".into(), Value::Object(ann.clone()));
    if let Some(rv) = rv {
        meta.insert("resourceVersion".into(), Value::String(rv.to_owned()));
    }
    serde_json::json!({ "metadata": meta })
}

/// The non-null annotations, for creating the object.
pub(super) fn present(ann: &Map<String, Value>) -> BTreeMap<String, String> {
    ann.iter()
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcs::{ClusterView, Version};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn cm(name: &str, rv: &str, ann: &[(&str, &str)]) -> (String, ConfigMap) {
        (
            name.to_owned(),
            ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    resource_version: Some(rv.into()),
                    annotations: Some(
                        ann.iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                    ),
                    ..ObjectMeta::default()
                },
                ..ConfigMap::default()
            },
        )
    }

    fn view(cms: &BTreeMap<String, ConfigMap>) -> ClusterView {
        let raw = raw_entries(&Names::new("pg"), cms);
        ClusterView::from_raw(
            raw.iter()
                .map(|(k, v, rv)| (k.as_str(), v.as_str(), Version(rv.clone()))),
        )
    }

    #[test]
    fn patroni_annotations_parse() {
        let cms: BTreeMap<_, _> = [
            cm(
                "pg-config",
                "7",
                &[
                    ("config", r#"{"ttl":30}"#),
                    ("initialize", "123"),
                    ("history", "[[1,100,\"no recovery target specified\"]]"),
                ],
            ),
            cm("pg-failover", "8", &[("leader", "a"), ("member", "b")]),
            cm(
                "pg-sync",
                "9",
                &[("leader", "a"), ("sync_standby", "b"), ("quorum", "1")],
            ),
            cm("other-config", "1", &[("config", "{")]),
        ]
        .into_iter()
        .collect();
        let v = view(&cms);
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        assert_eq!(v.config.as_ref().unwrap().version, Version("7".into()));
        assert_eq!(v.initialize.as_deref(), Some("123"));
        assert_eq!(v.timeline(), 2);
        let f = v.failover.unwrap();
        assert_eq!(f.value.member.as_deref(), Some("b"));
        assert_eq!(f.version, Version("8".into()));
        let s = v.sync.unwrap().value;
        assert_eq!(s.quorum, Some(1));
        assert_eq!(s.members(), ["b"]);
    }

    #[test]
    fn empty_failover_keeps_its_version() {
        let cms: BTreeMap<_, _> = [cm("pg-failover", "3", &[])].into_iter().collect();
        let v = view(&cms);
        assert!(v.failover.is_none());
        assert_eq!(v.failover_version, Some(Version("3".into())));
    }

    #[test]
    fn writes_use_patroni_strings() {
        let a = failover_annotations(&Failover {
            leader: Some("a".into()),
            member: None,
            scheduled_at: None,
        });
        assert_eq!(
            Value::Object(a.clone()),
            serde_json::json!({"leader": "a", "member": null, "scheduled_at": null})
        );
        assert_eq!(present(&a).len(), 1);
        let s = sync_annotations(&SyncState {
            leader: Some("a".into()),
            sync_standby: None,
            quorum: Some(2),
        });
        assert_eq!(s["quorum"], "2");
        let p = annotation_patch(&a, Some("5"));
        assert_eq!(p["metadata"]["resourceVersion"], "5");
    }
}
