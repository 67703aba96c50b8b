//! The leader race: may this member take the lock? Patroni's healthiest-node rules (§4.3),
//! as pure functions over an observation and the peers' answers.

use crate::config::SyncMode;
use crate::dcs::{ClusterView, Failover};

use super::types::{Identity, PeerFacts, PeerReport, PgFacts, Policy};

/// Why this member may not (yet) race, or that it may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Take the lock.
    Healthiest,
    /// Do not; the text is the log message.
    NotHealthiest(String),
}

/// How a pending `failover` key shapes the race.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManualFailover<'a> {
    /// No key (or one we ignore).
    None,
    /// The key names this member: it takes over without the lag check.
    ToMe,
    /// The key names another member; it goes first while it is healthy.
    ToOther {
        /// The candidate.
        candidate: &'a str,
        /// The former leader, excluded from the race.
        former_leader: Option<&'a str>,
    },
    /// A switchover away from a leader without a named candidate: anyone but the former leader.
    AwayFrom(&'a str),
}

/// Classifies the `failover` key for a race. A scheduled switchover does not apply to a race.
pub fn manual_failover<'a>(me: &str, key: Option<&'a Failover>) -> ManualFailover<'a> {
    let Some(f) = key else {
        return ManualFailover::None;
    };
    match (f.member.as_deref(), f.leader.as_deref()) {
        (Some(c), _) if c == me => ManualFailover::ToMe,
        (Some(c), former) => ManualFailover::ToOther {
            candidate: c,
            former_leader: former,
        },
        (None, Some(l)) => ManualFailover::AwayFrom(l),
        (None, None) => ManualFailover::None,
    }
}

/// In a synchronous mode, what the `sync` key says about who may take over (see `ha::sync`):
/// a member that has heard from `quorum + 1` of the voters (itself included when it is one),
/// none of them ahead of it; and the leader that wrote the key, which holds every commit it
/// acknowledged itself (so it is out of scope; a former leader that is not a voter is not
/// compared either).
struct SyncScope<'a> {
    voters: Vec<&'a str>,
    quorum: usize,
}

/// The key's scope over this member's race; `None` when it has no say (asynchronous mode, no
/// key, this member wrote it, or `initialize` is a claim, not an identifier).
///
/// A bootstrap writes the key before `initialize`: its commits count from the moment the store
/// names its data directory. While `initialize` is only claimed (empty), no cluster is
/// registered and no commit counts yet; a key there was left by a bootstrap that lost its
/// claim and discarded its data, and must not hold back the member whose bootstrap won.
///
/// A member the key allows to take over holds every acknowledged commit: a voter by the key's
/// rule, the member that wrote it because it was the primary (or, having revoked the voters
/// before a promotion that did not happen, because it was allowed to take over then). Others'
/// WAL beyond its own was never acknowledged, so neither their positions nor the lag behind
/// the last leader's hold it back: an old primary ahead of a synchronous standby is not a
/// better candidate, only one that would have to be rewound.
fn sync_scope<'a>(me: &str, view: &'a ClusterView, mode: SyncMode) -> Option<SyncScope<'a>> {
    if mode == SyncMode::Off || view.initialize.as_deref() == Some("") {
        return None;
    }
    let s = &view.sync.as_ref()?.value;
    (s.leader.as_deref() != Some(me)).then(|| SyncScope {
        voters: s.members(),
        quorum: s.quorum.unwrap_or(0) as usize,
    })
}

/// Whether the `sync` key may let `name` take over (in a quorum, the votes decide at its own
/// race): a candidate it cannot is not waited for.
pub(super) fn may_take_over(name: &str, view: &ClusterView, mode: SyncMode) -> bool {
    match sync_scope(name, view, mode) {
        None => true,
        Some(s) if s.quorum + 1 > s.voters.len() => false,
        Some(s) => mode == SyncMode::Quorum || s.quorum > 0 || s.voters.contains(&name),
    }
}

/// A switchover (the key names the leader to move away from) in a synchronous mode: its
/// candidate takes over only as the `sync` key allows, like any racer. A failover (no leader
/// named) is the operator's call and goes to its candidate whatever the key says, as Patroni's.
fn sync_switchover(view: &ClusterView, mode: SyncMode) -> bool {
    mode != SyncMode::Off
        && view
            .failover
            .as_ref()
            .is_some_and(|f| f.value.leader.is_some())
}

/// Checks that need no peer: may this member race at all? `Ok(peers)` lists the members to
/// ask before taking the lock.
pub fn pre_race(
    me: &Identity,
    pg: &PgFacts,
    view: &ClusterView,
    policy: &Policy,
) -> Result<Vec<String>, String> {
    if me.nofailover {
        return Err("following a different leader because I am not allowed to promote".into());
    }
    if pg.in_recovery.is_none() {
        return Err("not racing: PostgreSQL status is unknown".into());
    }
    let manual = manual_failover(&me.name, view.failover.as_ref().map(|f| &f.value));
    // A vanished lock's former holder is always asked (see `judge`), even by a named candidate.
    let vanished: Vec<String> = view
        .vanished_leader
        .iter()
        .filter(|n| **n != me.name && view.members.get(*n).is_some_and(|m| m.api_url.is_some()))
        .cloned()
        .collect();
    match manual {
        ManualFailover::ToMe if !sync_switchover(view, policy.sync.mode) => return Ok(vanished),
        ManualFailover::AwayFrom(l)
        | ManualFailover::ToOther {
            former_leader: Some(l),
            ..
        } if l == me.name => {
            // The former leader steps aside while a switchover is in progress; it comes back
            // only if the candidate turns out unhealthy (handled in `judge`).
        }
        _ => {}
    }
    if policy.sync.mode != SyncMode::Off && view.unreadable("sync") {
        return Err("not racing: the sync key cannot be read".into());
    }
    let scope = sync_scope(&me.name, view, policy.sync.mode);
    if let Some(scope) = &scope {
        if scope.quorum + 1 > scope.voters.len() {
            return Err(
                "not racing: no synchronous standby is known to hold every acknowledged commit"
                    .into(),
            );
        }
        if policy.sync.mode == SyncMode::On
            && scope.quorum == 0
            && !scope.voters.contains(&me.name.as_str())
        {
            return Err(
                "following a different leader because I am not a synchronous standby".into(),
            );
        }
        // The votes come from the voters' answers: only those that can be asked count.
        let askable = scope
            .voters
            .iter()
            .filter(|v| {
                **v == me.name || view.members.get(**v).is_some_and(|m| m.api_url.is_some())
            })
            .count();
        if askable < scope.quorum + 1 {
            return Err(format!(
                "not racing: {askable} of the synchronous standbys {} can be asked; {} needed to \
                 be sure of every acknowledged commit",
                scope.voters.join(","),
                scope.quorum + 1
            ));
        }
    }
    if policy.check_timeline
        && let Some(mine) = pg.timeline
        && mine < view.timeline()
    {
        return Err(format!(
            "not healthy enough for leader race: my timeline {mine} is behind last known \
             cluster timeline {}",
            view.timeline()
        ));
    }
    let sync_eligible = policy.sync.mode != SyncMode::Off && view.sync.is_some();
    let lag_checked = matches!(manual, ManualFailover::None) && !sync_eligible;
    if lag_checked && let Some(status) = &view.status {
        let lag = status.optime.saturating_sub(pg.wal_position);
        if lag > policy.maximum_lag_on_failover {
            return Err(format!(
                "not healthy enough for leader race: my WAL position {} lags the last \
                     known leader position {} by {} bytes (maximum_lag_on_failover {})",
                pg.wal_position, status.optime, lag, policy.maximum_lag_on_failover
            ));
        }
    }
    // Voters are asked whatever their tags: their answers are votes.
    let voters: Vec<&str> = scope.map(|s| s.voters).unwrap_or_default();
    let peers = view
        .members
        .iter()
        .filter(|(name, m)| {
            *name != &me.name
                && m.api_url.is_some()
                && (!m.nofailover()
                    || view.vanished_leader.as_ref() == Some(*name)
                    || voters.contains(&name.as_str()))
        })
        .map(|(name, _)| name.clone())
        .collect();
    Ok(peers)
}

/// The decision once the peers have answered.
/// `wait_for_starting`: a peer still starting may be ahead of us; while this is true (the
/// caller bounds how long) the race waits for it to report its position. This is what keeps a
/// whole-cluster restart from electing whichever member came up first.
pub fn judge(
    me: &Identity,
    pg: &PgFacts,
    view: &ClusterView,
    peers: &PeerReport,
    wait_for_starting: bool,
    mode: SyncMode,
) -> Verdict {
    let manual = manual_failover(&me.name, view.failover.as_ref().map(|f| &f.value));
    if let Some(gone) = view.vanished_leader.as_deref()
        && gone != me.name
        && peers
            .get(gone)
            .is_none_or(|p| p.as_ref().is_none_or(|p| p.is_primary))
    {
        // Its lock went away before its lease ran out, and it has not said that it stopped: it
        // may still commit until its deadline (at most ttl after the lock vanished).
        return Verdict::NotHealthiest(format!(
            "the leader lock of {gone} vanished while {gone} may still be writable"
        ));
    }
    if manual == ManualFailover::ToMe && !sync_switchover(view, mode) {
        return Verdict::Healthiest;
    }
    let mut former_leader = None;
    if let ManualFailover::ToOther {
        candidate,
        former_leader: fl,
    } = manual
    {
        former_leader = fl;
        // In a synchronous switchover the candidate must also not be behind a voter (it
        // would refuse to take over itself).
        let behind_a_voter = |c: &PeerFacts| {
            let at = c.wal_point();
            sync_scope(candidate, view, mode).is_some_and(|s| {
                peers.iter().any(|(n, q)| {
                    s.voters.contains(&n.as_str())
                        && q.as_ref().is_some_and(|q| q.wal_point().ahead_of(at))
                }) || (s.voters.contains(&me.name.as_str()) && pg.wal_point().ahead_of(at))
            })
        };
        if let Some(Some(p)) = peers.get(candidate)
            && p.running
            && !p.nofailover
            && may_take_over(candidate, view, mode)
            && !behind_a_voter(p)
        {
            return Verdict::NotHealthiest(format!(
                "waiting for the failover candidate {candidate} to take over"
            ));
        }
    }
    if let ManualFailover::AwayFrom(l) = manual {
        former_leader = Some(l);
    }
    if former_leader == Some(me.name.as_str()) {
        // The former leader retakes the lock only when no other member is healthy.
        let someone_else = peers.iter().any(|(n, p)| {
            Some(n.as_str()) != former_leader
                && p.as_ref().is_some_and(|p| p.running && !p.nofailover)
                && may_take_over(n, view, mode)
        });
        if someone_else {
            return Verdict::NotHealthiest("stepping aside for a switchover".into());
        }
    }
    let scope = sync_scope(&me.name, view, mode);
    // The member that wrote the key (of a registered cluster) holds every commit it
    // acknowledged: others' positions do not hold it back.
    let key_writer = mode != SyncMode::Off
        && view.initialize.as_deref() != Some("")
        && view
            .sync
            .as_ref()
            .is_some_and(|s| s.value.leader.as_deref() == Some(me.name.as_str()));
    for (name, peer) in peers {
        let Some(p) = peer else { continue };
        if Some(name.as_str()) == former_leader {
            continue;
        }
        if let Some(scope) = &scope
            && !scope.voters.contains(&name.as_str())
        {
            // Only the voters' positions say where the acknowledged commits are.
            if p.is_primary && p.running {
                return Verdict::NotHealthiest(format!("Primary ({name}) is still alive"));
            }
            continue;
        }
        if key_writer && !(p.is_primary && p.running) {
            continue;
        }
        if p.starting && !p.nofailover && wait_for_starting {
            return Verdict::NotHealthiest(format!(
                "waiting for {name} to report its WAL position"
            ));
        }
        if p.is_primary && p.running {
            return Verdict::NotHealthiest(format!("Primary ({name}) is still alive"));
        }
        if p.ahead_of(pg) {
            return Verdict::NotHealthiest(format!(
                "Wal position of {name} is ahead of my wal position"
            ));
        }
        if p.level_with(pg)
            && p.failover_priority > me.failover_priority
            && manual != ManualFailover::ToMe
        {
            return Verdict::NotHealthiest(format!(
                "{name} has equally tolerable WAL position and priority {}, while this node has \
                 priority {}",
                p.failover_priority, me.failover_priority
            ));
        }
    }
    if let Some(scope) = &scope {
        let me_votes = usize::from(scope.voters.contains(&me.name.as_str()));
        let votes = me_votes
            + peers
                .iter()
                .filter(|(n, p)| {
                    scope.voters.contains(&n.as_str())
                        && p.as_ref()
                            .is_some_and(|p| !p.is_primary && !p.starting && !p.ahead_of(pg))
                })
                .count();
        if votes < scope.quorum + 1 {
            return Verdict::NotHealthiest(format!(
                "{votes} of the synchronous standbys {} answered and are not ahead of me; {} \
                 needed to be sure of every acknowledged commit",
                scope.voters.join(","),
                scope.quorum + 1
            ));
        }
    }
    Verdict::Healthiest
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcs::{Member, Status, Version, Versioned};
    use crate::ha::types::{DataDir, PeerFacts};
    use std::time::Duration;

    fn me() -> Identity {
        Identity {
            name: "a".into(),
            nofailover: false,
            failover_priority: 1,
            can_bootstrap: true,
        }
    }
    fn pg(pos: u64) -> PgFacts {
        PgFacts {
            data: DataDir::Ready {
                sysid: "1".into(),
                was_primary: false,
            },
            up: true,
            in_recovery: Some(true),
            timeline: Some(1),
            wal_position: pos,
            upstream: None,
            streaming: true,
            synchronous_standby_names: None,
            replication: Vec::new(),
            supervised: true,
        }
    }
    fn policy() -> Policy {
        Policy {
            ttl: Duration::from_secs(30),
            loop_wait: Duration::from_secs(10),
            retry_timeout: Duration::from_secs(10),
            maximum_lag_on_failover: 100,
            use_pg_rewind: true,
            remove_data_directory_on_rewind_failure: false,
            pause: false,
            use_slots: false,
            check_timeline: false,
            sync: Default::default(),
            failsafe_mode: false,
            primary_start_timeout: Duration::from_secs(300),
            handover_timeout: Duration::from_secs(10),
            safety_margin: Duration::from_secs(3),
        }
    }
    fn view() -> ClusterView {
        let mut v = ClusterView::default();
        for n in ["a", "b", "c"] {
            v.members.insert(
                n.into(),
                Member {
                    api_url: Some(format!("http://{n}/patroni")),
                    ..Member::default()
                },
            );
        }
        v.status = Some(Status {
            optime: 1000,
            ..Status::default()
        });
        v
    }
    fn peer(pos: u64, prio: i64) -> Option<PeerFacts> {
        Some(PeerFacts {
            is_primary: false,
            wal_position: pos,
            timeline: Some(1),
            nofailover: false,
            failover_priority: prio,
            running: true,
            starting: false,
        })
    }

    #[test]
    fn a_vanished_lock_is_taken_only_once_its_holder_said_it_stopped() {
        let mut v = view();
        v.vanished_leader = Some("b".into());
        // The former holder is asked, even by the candidate a switchover names.
        v.failover = Some(Versioned {
            value: Failover {
                leader: Some("b".into()),
                member: Some("a".into()),
                scheduled_at: None,
            },
            version: Version("1".into()),
        });
        assert_eq!(pre_race(&me(), &pg(995), &v, &policy()).unwrap(), vec!["b"]);
        let mut peers = PeerReport::new();
        peers.insert("b".into(), None);
        assert!(matches!(
            judge(&me(), &pg(995), &v, &peers, true, SyncMode::Off),
            Verdict::NotHealthiest(m) if m.contains("vanished")
        ));
        peers.insert("b".into(), peer(990, 1));
        assert_eq!(
            judge(&me(), &pg(995), &v, &peers, true, SyncMode::Off),
            Verdict::Healthiest
        );
    }

    #[test]
    fn lagging_member_may_not_race() {
        assert!(pre_race(&me(), &pg(800), &view(), &policy()).is_err());
        assert_eq!(
            pre_race(&me(), &pg(950), &view(), &policy()).unwrap(),
            vec!["b", "c"]
        );
    }

    #[test]
    fn with_check_timeline_a_member_behind_the_clusters_timeline_may_not_race() {
        let mut v = view();
        v.history = Some(vec![crate::dcs::HistoryLine::new(1, 5, "r", "t", "b")]);
        // Cluster timeline 2, ours 1: allowed without check_timeline, refused with it.
        assert!(pre_race(&me(), &pg(995), &v, &policy()).is_ok());
        let checked = Policy {
            check_timeline: true,
            ..policy()
        };
        let e = pre_race(&me(), &pg(995), &v, &checked).unwrap_err();
        assert!(e.contains("timeline 1 is behind"), "{e}");
        let on_tl2 = PgFacts {
            timeline: Some(2),
            ..pg(995)
        };
        assert!(pre_race(&me(), &on_tl2, &v, &checked).is_ok());
    }

    #[test]
    fn peer_ahead_or_alive_primary_wins() {
        let mut peers = PeerReport::new();
        peers.insert("b".into(), peer(990, 1));
        peers.insert("c".into(), None);
        assert_eq!(
            judge(&me(), &pg(995), &view(), &peers, true, SyncMode::Off),
            Verdict::Healthiest
        );
        peers.insert("b".into(), peer(999, 1));
        assert!(matches!(
            judge(&me(), &pg(995), &view(), &peers, true, SyncMode::Off),
            Verdict::NotHealthiest(_)
        ));
        peers.insert("b".into(), peer(995, 2));
        let Verdict::NotHealthiest(msg) =
            judge(&me(), &pg(995), &view(), &peers, true, SyncMode::Off)
        else {
            panic!("priority must decide")
        };
        assert!(msg.contains("priority 2"), "{msg}");
        let mut alive = peer(1, 1);
        if let Some(p) = alive.as_mut() {
            p.is_primary = true;
        }
        peers.insert("b".into(), alive);
        assert_eq!(
            judge(&me(), &pg(995), &view(), &peers, true, SyncMode::Off),
            Verdict::NotHealthiest("Primary (b) is still alive".into())
        );
    }

    #[test]
    fn failover_key_shapes_the_race() {
        let mut v = view();
        v.failover = Some(Versioned {
            value: Failover {
                leader: Some("c".into()),
                member: Some("b".into()),
                scheduled_at: None,
            },
            version: Version("1".into()),
        });
        let mut peers = PeerReport::new();
        peers.insert("b".into(), peer(10, 1));
        // The named candidate is healthy: wait for it, even though we are ahead.
        assert!(matches!(
            judge(&me(), &pg(995), &v, &peers, true, SyncMode::Off),
            Verdict::NotHealthiest(_)
        ));
        // The candidate is gone: race without it, and without the lag check.
        peers.insert("b".into(), None);
        assert!(pre_race(&me(), &pg(1), &v, &policy()).is_ok());
        assert_eq!(
            judge(&me(), &pg(995), &v, &peers, true, SyncMode::Off),
            Verdict::Healthiest
        );
        // The key names me.
        if let Some(f) = v.failover.as_mut() {
            f.value.member = Some("a".into());
        }
        assert_eq!(
            pre_race(&me(), &pg(1), &v, &policy()).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_starting_peer_is_waited_for_a_while() {
        let mut peers = PeerReport::new();
        let mut p = peer(0, 1);
        if let Some(p) = p.as_mut() {
            p.running = false;
            p.starting = true;
        }
        peers.insert("b".into(), p);
        assert!(matches!(
            judge(&me(), &pg(995), &view(), &peers, true, SyncMode::Off),
            Verdict::NotHealthiest(_)
        ));
        assert_eq!(
            judge(&me(), &pg(995), &view(), &peers, false, SyncMode::Off),
            Verdict::Healthiest
        );
    }

    #[test]
    fn nofailover_never_races() {
        let mut id = me();
        id.nofailover = true;
        assert!(pre_race(&id, &pg(1000), &view(), &policy()).is_err());
    }
    fn with_sync(standby: Option<&str>, quorum: Option<u64>) -> ClusterView {
        let mut v = view();
        v.members.insert("old".into(), Member::default());
        v.sync = Some(Versioned {
            value: crate::dcs::SyncState {
                leader: Some("old".into()),
                sync_standby: standby.map(str::to_owned),
                quorum,
            },
            version: Version("3".into()),
        });
        v
    }

    fn sync_policy(mode: SyncMode) -> Policy {
        Policy {
            sync: crate::ha::sync::SyncPolicy {
                mode,
                ..Default::default()
            },
            ..policy()
        }
    }

    #[test]
    fn on_only_a_listed_synchronous_standby_races() {
        let on = sync_policy(SyncMode::On);
        let listed = with_sync(Some("a"), None);
        assert!(pre_race(&me(), &pg(995), &listed, &on).is_ok());
        let other = with_sync(Some("b"), None);
        assert!(pre_race(&me(), &pg(995), &other, &on).is_err());
        let nobody = with_sync(None, None);
        assert!(pre_race(&me(), &pg(995), &nobody, &on).is_err());
        // Asynchronous mode ignores the key.
        assert!(pre_race(&me(), &pg(995), &other, &policy()).is_ok());
        // An asynchronous replica ahead does not stop the synchronous standby.
        let peers: PeerReport = [("b".to_string(), peer(2000, 1)), ("c".to_string(), None)]
            .into_iter()
            .collect();
        assert_eq!(
            judge(&me(), &pg(995), &listed, &peers, true, SyncMode::On),
            Verdict::Healthiest
        );
    }

    #[test]
    fn a_voter_on_a_later_timeline_is_ahead_whatever_the_positions() {
        // Found by the simulation (seed 11660, quorum mode): a former primary whose rewind
        // failed, left on timeline 1 at the same position as the only voter on timeline 2,
        // counted it as a vote and took over without the commits of timeline 2.
        let v = with_sync(Some("b"), Some(0));
        let on_timeline_2 = Some(PeerFacts {
            timeline: Some(2),
            ..peer(1000, 1).unwrap()
        });
        let peers: PeerReport = [("b".to_string(), on_timeline_2.clone())]
            .into_iter()
            .collect();
        assert!(matches!(
            judge(&me(), &pg(1000), &v, &peers, true, SyncMode::Quorum),
            Verdict::NotHealthiest(_)
        ));
        // On its timeline at the same position, the voter's answer is a vote.
        let mine = PgFacts {
            timeline: Some(2),
            ..pg(1000)
        };
        assert_eq!(
            judge(&me(), &mine, &v, &peers, true, SyncMode::Quorum),
            Verdict::Healthiest
        );
        // One order: a peer on an earlier timeline is not ahead, however far its WAL goes
        // (else two members could each find the other ahead, and nobody would lead).
        let old_and_long = PeerFacts {
            timeline: Some(1),
            ..peer(5000, 1).unwrap()
        };
        assert!(!old_and_long.ahead_of(&mine));
        assert!(on_timeline_2.as_ref().unwrap().ahead_of(&pg(5000)));
        // Nor is an earlier timeline at the same position level with us, where a higher
        // priority would win the tie (seed 23514: each deferred to the other).
        let earlier_same_place = PeerFacts {
            timeline: Some(1),
            failover_priority: 5,
            ..peer(1000, 1).unwrap()
        };
        assert!(!earlier_same_place.level_with(&mine));
        let peers: PeerReport = [("b".to_string(), Some(earlier_same_place))]
            .into_iter()
            .collect();
        assert_eq!(
            judge(&me(), &mine, &view(), &peers, true, SyncMode::Off),
            Verdict::Healthiest
        );
    }

    #[test]
    fn a_key_left_by_a_bootstrap_that_never_registered_has_no_say() {
        // `initialize` is only claimed: the key naming nobody was written by a bootstrap that
        // lost its claim; the member whose bootstrap won is not held back by it, nor does the
        // key's writer skip others' positions.
        let on = sync_policy(SyncMode::On);
        let mut v = with_sync(None, None);
        v.initialize = Some(String::new());
        assert!(pre_race(&me(), &pg(995), &v, &on).is_ok());
        assert!(may_take_over("a", &v, SyncMode::On));
        v.sync.as_mut().unwrap().value.leader = Some("a".into());
        let ahead: PeerReport = [("b".to_string(), peer(2000, 1)), ("c".to_string(), None)]
            .into_iter()
            .collect();
        assert!(matches!(
            judge(&me(), &pg(995), &v, &ahead, true, SyncMode::On),
            Verdict::NotHealthiest(_)
        ));
        // Registered, the same key blocks every member but its writer.
        let mut v = with_sync(None, None);
        v.initialize = Some("42".into());
        assert!(pre_race(&me(), &pg(995), &v, &on).is_err());
    }

    #[test]
    fn quorum_needs_enough_voters_not_ahead() {
        // Voters a, b, c with quorum 1: two of them (a itself and one more) must agree.
        let v = with_sync(Some("a,b,c"), Some(1));
        let q = sync_policy(SyncMode::Quorum);
        assert!(pre_race(&me(), &pg(995), &v, &q).is_ok());
        let none: PeerReport = [("b".to_string(), None), ("c".to_string(), None)]
            .into_iter()
            .collect();
        assert!(matches!(
            judge(&me(), &pg(995), &v, &none, true, SyncMode::Quorum),
            Verdict::NotHealthiest(_)
        ));
        let one: PeerReport = [("b".to_string(), peer(990, 1)), ("c".to_string(), None)]
            .into_iter()
            .collect();
        assert_eq!(
            judge(&me(), &pg(995), &v, &one, true, SyncMode::Quorum),
            Verdict::Healthiest
        );
        // A non-voter needs two voters.
        let v = with_sync(Some("b,c"), Some(1));
        assert!(matches!(
            judge(&me(), &pg(995), &v, &one, true, SyncMode::Quorum),
            Verdict::NotHealthiest(_)
        ));
        let two: PeerReport = [
            ("b".to_string(), peer(990, 1)),
            ("c".to_string(), peer(995, 1)),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            judge(&me(), &pg(995), &v, &two, true, SyncMode::Quorum),
            Verdict::Healthiest
        );
    }
    #[test]
    fn the_key_writer_ignores_unacknowledged_wal_and_switchovers_follow_the_key() {
        // `a` wrote the key (it revoked the voters for a promotion that did not happen): a
        // former primary further ahead holds nothing acknowledged that `a` lacks.
        let mut v = with_sync(None, None);
        v.sync.as_mut().unwrap().value.leader = Some("a".into());
        let on = sync_policy(SyncMode::On);
        assert!(pre_race(&me(), &pg(995), &v, &on).is_ok());
        let ahead: PeerReport = [("b".to_string(), peer(5000, 1))].into_iter().collect();
        assert_eq!(
            judge(&me(), &pg(995), &v, &ahead, true, SyncMode::On),
            Verdict::Healthiest
        );
        // A switchover to `a` while the key names `b` only: refused; a failover is the
        // operator's call.
        let mut v = with_sync(Some("b"), None);
        v.failover = Some(Versioned {
            value: Failover {
                leader: Some("old".into()),
                member: Some("a".into()),
                ..Failover::default()
            },
            version: Version("9".into()),
        });
        assert!(pre_race(&me(), &pg(995), &v, &on).is_err());
        v.failover.as_mut().unwrap().value.leader = None;
        assert!(pre_race(&me(), &pg(995), &v, &on).is_ok());
    }
}
