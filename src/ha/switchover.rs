//! Who a switchover may hand over to, as the store shows it (Patroni's `is_failover_possible`
//! before it asks the members). One rule for both places that need it: the REST API refuses an
//! impossible request with 412 and the leader's core drops a request that became impossible,
//! before either probes anyone.

use crate::config::SyncMode;
use crate::dcs::model::ClusterView;

/// Why no member can take over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoCandidate {
    /// Synchronous mode: the named candidate of a switchover is not a synchronous standby.
    NotSyncStandby,
    /// The named candidate has no member key.
    Unknown,
    /// Synchronous mode, no candidate named, and no synchronous standby.
    NoSyncStandby,
    /// No candidate named and no member but the leader with a REST API to ask.
    OnlyLeader,
}

impl NoCandidate {
    /// Patroni's words for it, `action` being "switchover" or "failover".
    pub fn message(self, action: &str) -> String {
        match self {
            NoCandidate::NotSyncStandby => "candidate name does not match with sync_standby".into(),
            NoCandidate::Unknown => "candidate does not exists".into(),
            NoCandidate::NoSyncStandby => {
                format!("{action} is not possible: can not find sync_standby")
            }
            NoCandidate::OnlyLeader => {
                format!("{action} is not possible: cluster does not have members except leader")
            }
        }
    }
}

/// The members worth asking whether they can take over from `leader` (`None`: a failover with
/// no leader): the `requested` one if it exists; else, in synchronous mode, the synchronous
/// standbys; else every other member with a REST API. A switchover in synchronous mode may
/// only name a synchronous standby. Tags are not judged here: the members' own answers say
/// whether they may be promoted.
pub fn candidates<'v>(
    view: &'v ClusterView,
    leader: Option<&str>,
    requested: Option<&str>,
    switchover: bool,
) -> Result<Vec<&'v str>, NoCandidate> {
    let mode = SyncMode::of(view.config.as_ref().map(|c| &c.value));
    let sync: Vec<&str> = view
        .sync
        .as_ref()
        .map(|s| s.value.members())
        .unwrap_or_default();
    let names = view.members.iter().map(|(n, m)| (n.as_str(), m));
    let found: Vec<&str> = match requested {
        Some(c) => {
            if switchover && mode == SyncMode::On && !sync.contains(&c) {
                return Err(NoCandidate::NotSyncStandby);
            }
            names.filter(|(n, _)| *n == c).map(|(n, _)| n).collect()
        }
        None if mode == SyncMode::On => names
            .filter(|(n, _)| sync.contains(n))
            .map(|(n, _)| n)
            .collect(),
        None => names
            .filter(|(n, m)| leader.is_none() || (Some(*n) != leader && m.api_url.is_some()))
            .map(|(n, _)| n)
            .collect(),
    };
    if found.is_empty() {
        return Err(match requested {
            Some(_) => NoCandidate::Unknown,
            None if mode == SyncMode::On => NoCandidate::NoSyncStandby,
            None => NoCandidate::OnlyLeader,
        });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcs::model::{Member, SyncState, Version, Versioned};

    fn view(sync_mode: bool, standby: Option<&str>) -> ClusterView {
        let mut v = ClusterView::default();
        for (n, api) in [("a", true), ("b", true), ("c", false)] {
            let m = Member {
                api_url: api.then(|| format!("http://{n}:8008/patroni")),
                ..Member::default()
            };
            v.members.insert(n.into(), m);
        }
        if sync_mode {
            let mut c = serde_json::Map::new();
            c.insert("synchronous_mode".into(), true.into());
            v.config = Some(Versioned {
                value: c,
                version: Version("1".into()),
            });
            v.sync = Some(Versioned {
                value: SyncState {
                    leader: Some("a".into()),
                    sync_standby: standby.map(str::to_owned),
                    ..SyncState::default()
                },
                version: Version("1".into()),
            });
        }
        v
    }

    #[test]
    fn every_other_member_with_an_api_or_the_one_named() {
        let v = view(false, None);
        assert_eq!(candidates(&v, Some("a"), None, true), Ok(vec!["b"]));
        assert_eq!(candidates(&v, Some("a"), Some("c"), true), Ok(vec!["c"]));
        assert_eq!(
            candidates(&v, Some("a"), Some("x"), true),
            Err(NoCandidate::Unknown)
        );
        // A failover without a leader asks everyone.
        assert_eq!(candidates(&v, None, None, false), Ok(vec!["a", "b", "c"]));
    }

    #[test]
    fn only_the_leader_left() {
        let mut v = view(false, None);
        v.members.remove("b");
        let e = candidates(&v, Some("a"), None, true).unwrap_err();
        assert_eq!(e, NoCandidate::OnlyLeader);
        assert_eq!(
            e.message("switchover"),
            "switchover is not possible: cluster does not have members except leader"
        );
    }

    #[test]
    fn synchronous_mode_hands_over_to_a_synchronous_standby_only() {
        let v = view(true, Some("b"));
        assert_eq!(candidates(&v, Some("a"), None, true), Ok(vec!["b"]));
        assert_eq!(
            candidates(&v, Some("a"), Some("c"), true),
            Err(NoCandidate::NotSyncStandby)
        );
        // A failover may name any member.
        assert_eq!(candidates(&v, Some("a"), Some("c"), false), Ok(vec!["c"]));
        let none = view(true, None);
        assert_eq!(
            candidates(&none, Some("a"), None, true),
            Err(NoCandidate::NoSyncStandby)
        );
    }
}
