//! The Pod role label, derived from the member JSON alone so the agent needs no extra call.

use crate::config::Kubernetes;
use crate::dcs::Member;

/// The role label's value for a member, or `None` to remove the label.
///
/// As Patroni: only a running PostgreSQL gets a label (a Service must not route to a stopped
/// one); a primary gets `leader_label_value`, a standby leader `standby_leader_label_value`, a
/// replica `follower_label_value`, any other running role its raw name.
pub(super) fn role_value(m: &Member, k: &Kubernetes) -> Option<String> {
    if m.state.as_deref() != Some("running") {
        return None;
    }
    match m.role.as_deref()? {
        "primary" | "master" => Some(k.leader_label_value.clone()),
        "standby_leader" => Some(k.standby_leader_label_value.clone()),
        "replica" => Some(k.follower_label_value.clone()),
        "" => None,
        other => Some(other.to_owned()),
    }
}

/// The label selector for the cluster's objects: the configured labels plus `scope_label=scope`.
pub(super) fn selector(k: &Kubernetes, scope: &str) -> String {
    let mut parts: Vec<String> = k
        .labels
        .iter()
        .filter(|(key, _)| **key != k.scope_label)
        .map(|(key, v)| format!("{key}={v}"))
        .collect();
    parts.push(format!("{}={scope}", k.scope_label));
    parts.join(",")
}

/// Labels for objects pgwarden creates.
pub(super) fn object_labels(
    k: &Kubernetes,
    scope: &str,
) -> std::collections::BTreeMap<String, String> {
    let mut l = k.labels.clone();
    l.insert(k.scope_label.clone(), scope.to_owned());
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(state: &str, role: &str) -> Member {
        Member {
            state: Some(state.into()),
            role: Some(role.into()),
            ..Member::default()
        }
    }

    #[test]
    fn labels_follow_role_and_state() {
        let k = Kubernetes::default();
        assert_eq!(
            role_value(&member("running", "primary"), &k).as_deref(),
            Some("primary")
        );
        assert_eq!(
            role_value(&member("running", "master"), &k).as_deref(),
            Some("primary")
        );
        assert_eq!(
            role_value(&member("running", "replica"), &k).as_deref(),
            Some("replica")
        );
        assert_eq!(
            role_value(&member("running", "demoted"), &k).as_deref(),
            Some("demoted")
        );
        assert_eq!(role_value(&member("stopped", "primary"), &k), None);
        assert_eq!(role_value(&member("starting", "replica"), &k), None);
        let k3 = Kubernetes {
            leader_label_value: "master".into(),
            ..Kubernetes::default()
        };
        assert_eq!(
            role_value(&member("running", "primary"), &k3).as_deref(),
            Some("master")
        );
    }

    #[test]
    fn selector_has_scope_last() {
        let mut k = Kubernetes::default();
        k.labels.insert("application".into(), "patroni".into());
        assert_eq!(selector(&k, "pg"), "application=patroni,cluster-name=pg");
        assert_eq!(object_labels(&k, "pg").len(), 2);
    }
}
