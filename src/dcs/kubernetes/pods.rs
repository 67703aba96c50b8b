//! Members are Pods: the member JSON in the `status` annotation, the role in a label.
//!
//! API economy: the agent touches its member every loop, but a Pod is patched only when
//! something other than the WAL positions changed, or a position moved by `threshold` bytes
//! (peers read exact positions through REST; the leader's optime travels on the Lease).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Map, Value};

use crate::dcs::Member;

/// The member JSON annotation (Patroni's name).
pub(super) const STATUS: &str = "status";

/// What this process last wrote to its Pod.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Written {
    pub member: Member,
    pub json: String,
    pub role: Option<String>,
}

fn without_positions(m: &Member) -> Member {
    Member {
        xlog_location: None,
        receive_lsn: None,
        replay_lsn: None,
        ..m.clone()
    }
}

fn moved(a: Option<u64>, b: Option<u64>, threshold: u64) -> bool {
    match (a, b) {
        (Some(x), Some(y)) => x.abs_diff(y) >= threshold.max(1),
        (None, None) => false,
        _ => true,
    }
}

/// Whether `new` must be written, given what was written last.
pub(super) fn needs_write(
    last: Option<&Written>,
    new: &Member,
    role: Option<&str>,
    threshold: u64,
) -> bool {
    let Some(w) = last else { return true };
    if w.role.as_deref() != role || without_positions(&w.member) != without_positions(new) {
        return true;
    }
    moved(w.member.xlog_location, new.xlog_location, threshold)
        || moved(w.member.receive_lsn, new.receive_lsn, threshold)
        || moved(w.member.replay_lsn, new.replay_lsn, threshold)
}

/// Whether the Pod as last seen still carries what this process wrote (a re-created Pod, or
/// someone editing it, makes the next touch write again).
pub(super) fn pod_matches(pod: &Pod, w: &Written, role_label: &str) -> bool {
    let ann = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(STATUS));
    let label = pod.metadata.labels.as_ref().and_then(|l| l.get(role_label));
    ann == Some(&w.json) && label.map(String::as_str) == w.role.as_deref()
}

/// One merge patch setting the member annotation (or removing it) and the role label.
pub(super) fn member_patch(json: Option<&str>, role_label: &str, role: Option<&str>) -> Value {
    let mut ann = Map::new();
    ann.insert(
        STATUS.into(),
        json.map(|s| Value::String(s.into())).unwrap_or(Value::Null),
    );
    let mut labels = Map::new();
    labels.insert(
        role_label.into(),
        role.map(|s| Value::String(s.into())).unwrap_or(Value::Null),
    );
    serde_json::json!({"metadata": {"annotations": ann, "labels": labels}})
}

/// `members/<pod>` raw entries from the cluster's Pods.
pub(super) fn raw_entries(pods: &BTreeMap<String, Pod>) -> Vec<(String, String, String)> {
    pods.iter()
        .filter_map(|(name, p)| {
            let json = p.metadata.annotations.as_ref()?.get(STATUS)?;
            Some((
                format!("members/{name}"),
                json.clone(),
                p.metadata.resource_version.clone().unwrap_or_default(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(role: &str, xlog: u64) -> Member {
        Member {
            state: Some("running".into()),
            role: Some(role.into()),
            xlog_location: Some(xlog),
            replay_lsn: Some(xlog),
            ..Member::default()
        }
    }

    fn written(member: Member) -> Written {
        Written {
            json: member.to_json(),
            member,
            role: Some("replica".into()),
        }
    }

    #[test]
    fn positions_alone_write_only_past_the_threshold() {
        let w = written(m("replica", 1000));
        assert!(!needs_write(
            Some(&w),
            &m("replica", 1000),
            Some("replica"),
            100
        ));
        assert!(!needs_write(
            Some(&w),
            &m("replica", 1099),
            Some("replica"),
            100
        ));
        assert!(needs_write(
            Some(&w),
            &m("replica", 1100),
            Some("replica"),
            100
        ));
        // Anything else is written at once.
        assert!(needs_write(
            Some(&w),
            &m("primary", 1000),
            Some("replica"),
            100
        ));
        assert!(needs_write(
            Some(&w),
            &m("replica", 1000),
            Some("primary"),
            100
        ));
        assert!(needs_write(None, &m("replica", 1000), Some("replica"), 100));
        let mut lost = m("replica", 1000);
        lost.replay_lsn = None;
        assert!(needs_write(Some(&w), &lost, Some("replica"), 100));
    }

    #[test]
    fn patch_sets_or_removes() {
        let p = member_patch(Some("{}"), "role", None);
        assert_eq!(
            p,
            serde_json::json!({"metadata": {"annotations": {"status": "{}"}, "labels": {"role": null}}})
        );
    }
}
