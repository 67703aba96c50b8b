//! Scripted scenarios of the core alone: each drives `HaCore::step` by hand and checks the
//! actions, in the calling order the module documents.

use std::time::Duration;

use super::*;
use crate::dcs::model::Leader;
use crate::dcs::{ClusterView, Failover, Member, Version, Versioned};

const S: Duration = Duration::from_secs(1);

fn me() -> Identity {
    Identity {
        name: "a".into(),
        nofailover: false,
        failover_priority: 1,
        can_bootstrap: true,
    }
}

fn policy() -> Policy {
    Policy {
        ttl: 30 * S,
        loop_wait: 10 * S,
        retry_timeout: 10 * S,
        maximum_lag_on_failover: 1 << 20,
        use_pg_rewind: true,
        remove_data_directory_on_rewind_failure: false,
        pause: false,
        use_slots: false,
        check_timeline: false,
        sync: Default::default(),
        failsafe_mode: false,
        primary_start_timeout: Duration::from_secs(300),
        handover_timeout: Duration::from_secs(10),
        safety_margin: 3 * S,
    }
}

fn at(secs: u64) -> MonoTime {
    MonoTime(Duration::from_secs(secs))
}

fn primary() -> PgFacts {
    PgFacts {
        data: DataDir::Ready {
            sysid: "42".into(),
            was_primary: true,
        },
        up: true,
        in_recovery: Some(false),
        timeline: Some(1),
        wal_position: 1000,
        upstream: None,
        streaming: false,
        synchronous_standby_names: None,
        replication: Vec::new(),
        supervised: true,
    }
}

fn replica(upstream: Option<&str>) -> PgFacts {
    PgFacts {
        data: DataDir::Ready {
            sysid: "42".into(),
            was_primary: false,
        },
        in_recovery: Some(true),
        upstream: upstream.map(str::to_owned),
        streaming: upstream.is_some(),
        supervised: true,
        ..primary()
    }
}

fn view(leader: Option<&str>) -> ClusterView {
    let mut v = ClusterView {
        initialize: Some("42".into()),
        ..ClusterView::default()
    };
    for n in ["a", "b", "c"] {
        let m = Member {
            api_url: Some(format!("http://{n}/patroni")),
            role: Some(
                if Some(n) == leader {
                    "primary"
                } else {
                    "replica"
                }
                .into(),
            ),
            timeline: Some(1),
            ..Member::default()
        };
        v.members.insert(n.into(), m);
    }
    v.leader = leader.map(|l| Leader {
        name: l.into(),
        version: Version("1".into()),
    });
    v
}

fn observe(
    core: &mut HaCore,
    dcs: Option<ClusterView>,
    pg: PgFacts,
    now: MonoTime,
) -> Vec<(ActionId, Action)> {
    core.step(
        Input::Observed(Box::new(Observation {
            dcs,
            pg,
            policy: policy(),
            watchdog: WatchdogState::Unneeded,
            switchover_at: Countdown::Unscheduled,
        })),
        now,
    )
}

fn complete(
    core: &mut HaCore,
    id: ActionId,
    outcome: Outcome,
    now: MonoTime,
) -> Vec<(ActionId, Action)> {
    core.step(Input::Completed { id, outcome }, now)
}

/// The store's answer to a lock operation sent at `sent_at`.
fn answered(held: bool, sent_at: MonoTime) -> Outcome {
    Outcome::Lock {
        held,
        answered: true,
        sent_at,
    }
}

/// A peer that answered: running, `wal_position`, not primary.
fn peer_at(wal_position: u64) -> PeerFacts {
    PeerFacts {
        is_primary: false,
        wal_position,
        timeline: Some(1),
        nofailover: false,
        failover_priority: 1,
        running: true,
        starting: false,
    }
}

/// `pg`, stopped.
fn down(pg: PgFacts) -> PgFacts {
    PgFacts {
        up: false,
        in_recovery: None,
        ..pg
    }
}

/// The release of the lock instance `view` shows.
fn release_1() -> Action {
    Action::ReleaseLock {
        version: Some(Version("1".into())),
    }
}

fn actions(v: &[(ActionId, Action)]) -> Vec<Action> {
    v.iter().map(|(_, a)| a.clone()).collect()
}

/// Makes `core` the leader with a lease renewed at `sent`. (It is observed as a replica: a
/// primary without a confirmed lease would be stopped at once.)
fn lead(core: &mut HaCore, sent: MonoTime) {
    let out = observe(core, Some(view(Some("a"))), replica(None), sent);
    let (id, a) = out.first().cloned().expect("an action");
    assert!(matches!(a, Action::RenewLock { .. }), "{a:?}");
    complete(core, id, answered(true, sent), sent);
}

#[test]
fn the_lease_deadline_counts_from_the_send_time() {
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    // ttl 30 − margin 3, from the send time, whenever the answer came.
    assert_eq!(core.lease_deadline(), Some(at(127)));
    assert!(core.holds_lock(at(126)));
    assert!(!core.holds_lock(at(127)));
}

#[test]
fn a_leader_that_cannot_renew_stops_postgres_at_its_deadline_first() {
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    // Renewals fail (no answer); the store cannot be read.
    let out = observe(&mut core, None, primary(), at(110));
    assert!(out.is_empty(), "nothing to do before the deadline: {out:?}");
    let out = core.step(Input::Tick, at(127));
    assert_eq!(actions(&out), vec![Action::StopNow]);
    assert_eq!(core.lease_deadline(), None);
}

#[test]
fn a_store_that_says_the_lock_is_gone_stops_postgres_at_once() {
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    let out = observe(&mut core, Some(view(Some("a"))), primary(), at(110));
    let (id, _) = out[0].clone();
    let out = complete(&mut core, id, answered(false, at(110)), at(110));
    assert_eq!(actions(&out), vec![Action::StopNow]);
}

#[test]
fn a_primary_sees_another_holder_and_demotes() {
    let mut core = HaCore::new(me());
    let out = observe(&mut core, Some(view(Some("b"))), primary(), at(1));
    assert_eq!(actions(&out), vec![Action::StopNow]);
}

#[test]
fn a_replica_races_after_probing_and_promotes_after_the_lock() {
    let mut core = HaCore::new(me());
    let out = observe(&mut core, Some(view(None)), replica(Some("b")), at(50));
    let (probe, a) = out[0].clone();
    assert_eq!(
        a,
        Action::ProbePeers {
            names: vec!["b".into(), "c".into()]
        }
    );
    let mut report = PeerReport::new();
    report.insert("b".into(), None);
    let behind = peer_at(10);
    report.insert("c".into(), Some(behind));
    let out = complete(&mut core, probe, Outcome::Peers(report), at(50));
    let (lock, a) = out[0].clone();
    assert_eq!(a, Action::AcquireLock);
    let out = complete(&mut core, lock, answered(true, at(50)), at(50));
    assert_eq!(actions(&out), vec![Action::Promote]);
    assert_eq!(core.task_in_flight(), Some(&Action::Promote));
}

/// A leader since 0 whose replica is being promoted (observed at 3): the promotion's id.
fn promoting(core: &mut HaCore) -> ActionId {
    lead(core, at(0));
    let out = observe(core, Some(view(Some("a"))), replica(None), at(3));
    let (id, a) = out.last().cloned().expect("promote");
    assert_eq!(out.len(), 1, "no renewal due yet: {out:?}");
    assert_eq!(a, Action::Promote);
    id
}

#[test]
fn a_failed_promotion_releases_the_lock_only_once_postgres_is_down() {
    let mut core = HaCore::new(me());
    let id = promoting(&mut core);
    let out = complete(&mut core, id, Outcome::Failed("boom".into()), at(6));
    assert_eq!(actions(&out), vec![Action::StopNow]);
    complete(&mut core, out[0].0, Outcome::Ok, at(6));
    // Still up: no release yet, stop again.
    let out = observe(&mut core, Some(view(Some("a"))), replica(None), at(7));
    assert_eq!(actions(&out), vec![Action::StopNow]);
    complete(&mut core, out[0].0, Outcome::Ok, at(7));
    let down = down(replica(None));
    let out = observe(&mut core, Some(view(Some("a"))), down, at(8));
    assert_eq!(actions(&out), vec![release_1()]);
}

#[test]
fn a_shutdown_stops_a_server_started_since_the_last_observation() {
    let mut core = HaCore::new(me());
    let out = observe(&mut core, Some(view(Some("b"))), down(replica(None)), at(1));
    let (id, a) = out.last().cloned().expect("start");
    assert!(matches!(a, Action::StartReplica { .. }), "{a:?}");
    assert!(complete(&mut core, id, Outcome::Ok, at(2)).is_empty());
    // The last observation says it is down; the start since says otherwise.
    let out = core.step(Input::Shutdown, at(3));
    assert_eq!(actions(&out), vec![Action::StopGraceful]);
    assert!(!core.is_finished());
}

#[test]
fn a_promotion_not_yet_observed_is_stopped_when_the_lease_lapses_during_shutdown() {
    let mut core = HaCore::new(me());
    let id = promoting(&mut core);
    assert!(complete(&mut core, id, Outcome::Ok, at(4)).is_empty());
    // Asked to stop before any observation shows it writable: the fast stop hangs.
    let out = core.step(Input::Shutdown, at(5));
    assert_eq!(actions(&out), vec![Action::StopGraceful]);
    let out = core.step(Input::Tick, at(27));
    assert_eq!(actions(&out), vec![Action::StopNow]);
}

#[test]
fn a_switchover_stops_gracefully_then_hands_the_lock_over() {
    let mut core = HaCore::new(me());
    lead(&mut core, at(0));
    let mut v = view(Some("a"));
    v.failover = Some(Versioned {
        value: Failover {
            leader: Some("a".into()),
            member: Some("b".into()),
            scheduled_at: None,
        },
        version: Version("7".into()),
    });
    let out = observe(&mut core, Some(v), primary(), at(10));
    let probe = out
        .iter()
        .find(|(_, a)| matches!(a, Action::ProbePeers { .. }))
        .cloned()
        .expect("probe");
    let mut report = PeerReport::new();
    let fit = peer_at(1000);
    report.insert("b".into(), Some(fit));
    let out = complete(&mut core, probe.0, Outcome::Peers(report), at(10));
    let (stop, a) = out[0].clone();
    assert_eq!(a, Action::StopGraceful);
    let out = complete(&mut core, stop, Outcome::Ok, at(11));
    assert_eq!(actions(&out), vec![release_1()]);
    assert_eq!(core.lease_deadline(), None);
}

/// A new member's PostgreSQL: no data directory yet.
fn empty_dir() -> PgFacts {
    PgFacts {
        data: DataDir::Empty,
        up: false,
        in_recovery: None,
        ..primary()
    }
}

#[test]
fn a_fresh_member_bootstraps_only_after_winning_initialize() {
    let mut core = HaCore::new(me());
    let out = observe(&mut core, Some(ClusterView::default()), empty_dir(), at(0));
    let (claim, a) = out[0].clone();
    assert_eq!(a, Action::ClaimInitialize);
    let out = complete(&mut core, claim, Outcome::Ok, at(0));
    let (boot, a) = out[0].clone();
    assert_eq!(a, Action::Bootstrap);
    // initdb done: the lock comes before PostgreSQL starts as a primary.
    let out = complete(&mut core, boot, Outcome::Ok, at(2));
    let (lock, a) = out[0].clone();
    assert_eq!(a, Action::AcquireLock);
    let out = complete(&mut core, lock, answered(true, at(2)), at(2));
    // The claim is confirmed before the first start (it may have expired during initdb).
    let (confirm, a) = out[0].clone();
    assert_eq!(a, Action::ClaimInitialize);
    let out = complete(&mut core, confirm, Outcome::Ok, at(2));
    assert_eq!(
        actions(&out),
        vec![Action::StartPrimary { bootstrapped: true }]
    );
}

/// A new member's bootstrap up to the second claim on initialize (claim, initdb at 40, lock):
/// the id of that claim.
fn bootstrap_until_the_second_claim(core: &mut HaCore) -> ActionId {
    let out = observe(core, Some(ClusterView::default()), empty_dir(), at(0));
    let out = complete(core, out[0].0, Outcome::Ok, at(0));
    let out = complete(core, out[0].0, Outcome::Ok, at(40));
    let out = complete(core, out[0].0, answered(true, at(40)), at(40));
    let (confirm, a) = out[0].clone();
    assert_eq!(a, Action::ClaimInitialize);
    confirm
}

/// The data directory a bootstrap has just made (system identifier 1), PostgreSQL down.
fn fresh_data_dir() -> PgFacts {
    PgFacts {
        data: DataDir::Ready {
            sysid: "1".into(),
            was_primary: false,
        },
        up: false,
        in_recovery: None,
        ..primary()
    }
}

#[test]
fn a_bootstrap_whose_claim_was_taken_meanwhile_is_discarded() {
    let mut core = HaCore::new(me());
    let confirm = bootstrap_until_the_second_claim(&mut core);
    // Cut off from the store while initdb ran: our claim expired and another member claimed.
    let out = complete(&mut core, confirm, Outcome::Declined, at(40));
    let acts = actions(&out);
    assert!(
        matches!(
            acts.as_slice(),
            [Action::ReleaseLock { .. }, Action::RemoveDataDir]
        ),
        "{acts:?}"
    );
    assert_eq!(core.lease_deadline(), None);
    // Nothing of ours is ever written as the cluster's identity, nor started as a primary.
    let mut v = view(None);
    v.initialize = Some(String::new());
    let out = observe(&mut core, Some(v), fresh_data_dir(), at(41));
    assert!(
        !actions(&out).iter().any(|a| matches!(
            a,
            Action::WriteInitialize { .. } | Action::StartPrimary { .. }
        )),
        "{out:?}"
    );
}

/// A new member that claimed initialize and ran initdb (done at 40) while the store was out of
/// reach (from 30): the core and its fresh data directory.
fn bootstrapped_with_the_store_away() -> (HaCore, PgFacts) {
    let mut core = HaCore::new(me());
    let out = observe(&mut core, Some(ClusterView::default()), empty_dir(), at(0));
    let out = complete(&mut core, out[0].0, Outcome::Ok, at(0));
    let (bootstrap, _) = out[0].clone();
    let fresh = fresh_data_dir();
    assert!(observe(&mut core, None, fresh.clone(), at(30)).is_empty());
    assert!(complete(&mut core, bootstrap, Outcome::Ok, at(40)).is_empty());
    (core, fresh)
}

#[test]
fn a_bootstrap_that_ends_with_the_store_away_starts_as_the_primary_or_not_at_all() {
    let (mut core, fresh) = bootstrapped_with_the_store_away();
    // The store is back; our claim expired meanwhile and nobody else claimed. The new cluster
    // is never started read-only (the race could promote it unconfirmed), nor adopted.
    let mut v = view(None);
    v.initialize = None;
    let out = observe(&mut core, Some(v), fresh, at(50));
    let acts = actions(&out);
    assert!(matches!(acts.as_slice(), [Action::AcquireLock]), "{acts:?}");
    let out = complete(&mut core, out[0].0, answered(true, at(50)), at(50));
    let (confirm, a) = out[0].clone();
    assert_eq!(a, Action::ClaimInitialize);
    let out = complete(&mut core, confirm, Outcome::Ok, at(50));
    assert_eq!(
        actions(&out),
        vec![Action::StartPrimary { bootstrapped: true }]
    );
}

#[test]
fn a_bootstrapped_member_does_not_take_a_lock_that_vanished_while_its_holder_may_write() {
    let (mut core, fresh) = bootstrapped_with_the_store_away();
    // b's lock was deleted by hand: b may commit until its own deadline.
    let mut v = view(None);
    v.initialize = Some(String::new());
    v.vanished_leader = Some("b".into());
    let out = observe(&mut core, Some(v.clone()), fresh.clone(), at(50));
    assert!(actions(&out).is_empty(), "{out:?}");
    assert!(core.message().contains("vanished"), "{}", core.message());
    // Once the store has forgotten it (b's deadline passed), the lock is taken.
    v.vanished_leader = None;
    let out = observe(&mut core, Some(v), fresh, at(80));
    assert_eq!(actions(&out), vec![Action::AcquireLock]);
}

#[test]
fn a_declined_claim_for_the_cluster_that_bears_our_identifier_discards_nothing() {
    let mut core = HaCore::new(me());
    let confirm = bootstrap_until_the_second_claim(&mut core);
    // Meanwhile the store shows our identifier as the cluster's (we adopted our own cluster
    // after the claim expired): the claim is declined because there is nothing left to claim.
    let mut v = view(Some("a"));
    v.initialize = Some("1".into());
    observe(&mut core, Some(v), fresh_data_dir(), at(41));
    let out = complete(&mut core, confirm, Outcome::Declined, at(41));
    assert!(
        !actions(&out)
            .iter()
            .any(|a| matches!(a, Action::ReleaseLock { .. } | Action::RemoveDataDir)),
        "{out:?}"
    );
}

#[test]
fn a_member_of_another_cluster_refuses_to_run() {
    let mut core = HaCore::new(me());
    let mut v = view(Some("b"));
    v.initialize = Some("777".into());
    let down = down(replica(None));
    let out = observe(&mut core, Some(v), down, at(0));
    assert!(
        matches!(actions(&out).as_slice(), [Action::Fatal { .. }]),
        "{out:?}"
    );
}

#[test]
fn a_former_primary_rewinds_once_the_new_leader_has_checkpointed() {
    let mut core = HaCore::new(me());
    let mut v = view(Some("b"));
    let down = down(primary());
    if let Some(m) = v.members.get_mut("b") {
        m.checkpoint_after_promote = Some(false);
    }
    let out = observe(&mut core, Some(v.clone()), down.clone(), at(0));
    assert!(
        out.is_empty(),
        "waits for the post-promote checkpoint: {out:?}"
    );
    if let Some(m) = v.members.get_mut("b") {
        m.checkpoint_after_promote = None;
    }
    let out = observe(&mut core, Some(v), down, at(1));
    assert_eq!(actions(&out), vec![Action::Rewind { from: "b".into() }]);
}

fn observe_with(
    core: &mut HaCore,
    dcs: Option<ClusterView>,
    pg: PgFacts,
    policy: Policy,
    now: MonoTime,
) -> Vec<(ActionId, Action)> {
    core.step(
        Input::Observed(Box::new(Observation {
            dcs,
            pg,
            policy,
            watchdog: WatchdogState::Unneeded,
            switchover_at: Countdown::Unscheduled,
        })),
        now,
    )
}

/// The policy after `ttl` was lowered to 5 s (margin 1 s).
fn short_ttl() -> Policy {
    Policy {
        ttl: 5 * S,
        loop_wait: S,
        retry_timeout: S,
        safety_margin: S,
        ..policy()
    }
}

fn paused() -> Policy {
    Policy {
        pause: true,
        ..policy()
    }
}

#[test]
fn a_shorter_ttl_shortens_the_deadline_at_the_next_renewal() {
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    assert_eq!(core.lease_deadline(), Some(at(127)));
    // `ttl` lowered to 5 (margin 1): the renewal moves the lock to a 5 s lease, so the
    // deadline must follow it down, not stay at the old ttl's.
    let short = short_ttl();
    let out = observe_with(
        &mut core,
        Some(view(Some("a"))),
        primary(),
        short.clone(),
        at(105),
    );
    let (id, a) = out[0].clone();
    assert!(matches!(a, Action::RenewLock { .. }), "{a:?}");
    complete(&mut core, id, answered(true, at(105)), at(105));
    assert_eq!(core.lease_deadline(), Some(at(109)));
    // Cut off from then on: PostgreSQL stops at 109, before anyone could take a 5 s lock.
    let out = core.step(Input::Tick, at(109));
    assert_eq!(actions(&out), vec![Action::StopNow]);
}

#[test]
fn a_renewal_answered_after_its_own_deadline_stops_postgres_at_once() {
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    let short = short_ttl();
    let out = observe_with(&mut core, Some(view(Some("a"))), primary(), short, at(105));
    let (id, _) = out[0].clone();
    // Sent at 105 with a 5 s lease, answered at 110: held, but its deadline (109) has passed.
    let out = complete(&mut core, id, answered(true, at(105)), at(110));
    assert_eq!(actions(&out), vec![Action::StopNow]);
    assert_eq!(core.lease_deadline(), None);
}

#[test]
fn a_vanished_lock_stops_a_writable_leader_at_once() {
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    // The lock is seen as ours ...
    let out = observe(&mut core, Some(view(Some("a"))), primary(), at(101));
    assert!(!actions(&out).contains(&Action::StopNow), "{out:?}");
    // ... then it is gone (deleted by hand): stop now, do not race for it while writable.
    let out = observe(&mut core, Some(view(None)), primary(), at(102));
    assert_eq!(actions(&out), vec![Action::StopNow]);
    assert_eq!(core.lease_deadline(), None);
}

#[test]
fn a_paused_leader_that_cannot_renew_still_stops_at_its_deadline() {
    let mut core = HaCore::new(me());
    let out = observe_with(
        &mut core,
        Some(view(Some("a"))),
        replica(None),
        paused(),
        at(100),
    );
    let (id, _) = out[0].clone();
    complete(&mut core, id, answered(true, at(100)), at(100));
    let out = observe_with(&mut core, None, primary(), paused(), at(110));
    assert!(out.is_empty(), "{out:?}");
    // The store stays out of reach: after a resume the others could take the lapsed lock.
    let out = core.step(Input::Tick, at(127));
    assert_eq!(actions(&out), vec![Action::StopNow]);
}

#[test]
fn a_paused_primary_stops_when_another_member_holds_the_lock() {
    let mut core = HaCore::new(me());
    let out = observe_with(&mut core, Some(view(Some("b"))), primary(), paused(), at(1));
    assert_eq!(actions(&out), vec![Action::StopNow]);
}

fn unsupervised(pg: PgFacts) -> PgFacts {
    PgFacts {
        supervised: false,
        ..pg
    }
}

#[test]
fn an_unsupervised_replica_is_restarted_under_pgwarden_before_it_races() {
    let mut core = HaCore::new(me());
    let out = observe(
        &mut core,
        Some(view(None)),
        unsupervised(replica(None)),
        at(1),
    );
    assert_eq!(actions(&out), vec![Action::StopGraceful]);
    let (id, _) = out[0].clone();
    let out = complete(&mut core, id, Outcome::Ok, at(2));
    assert!(out.is_empty(), "a restart, not a hand-over: {out:?}");
    let down = down(replica(None));
    let out = observe(&mut core, Some(view(None)), down, at(3));
    assert_eq!(actions(&out), vec![Action::StartReplica { upstream: None }]);
}

#[test]
fn an_unsupervised_replica_in_pause_is_never_promoted() {
    let mut core = HaCore::new(me());
    let out = observe_with(
        &mut core,
        Some(view(Some("a"))),
        unsupervised(replica(None)),
        paused(),
        at(1),
    );
    let (id, a) = out[0].clone();
    assert!(matches!(a, Action::RenewLock { .. }), "{a:?}");
    let out = complete(&mut core, id, answered(true, at(1)), at(1));
    assert!(!actions(&out).contains(&Action::Promote), "{out:?}");
    let out = observe_with(
        &mut core,
        Some(view(Some("a"))),
        unsupervised(replica(None)),
        paused(),
        at(2),
    );
    assert!(!actions(&out).contains(&Action::Promote), "{out:?}");
}

#[test]
fn a_renewal_with_a_shorter_ttl_shortens_the_deadline_even_unanswered() {
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    assert_eq!(core.lease_deadline(), Some(at(127)));
    let short = short_ttl();
    let out = observe_with(&mut core, Some(view(Some("a"))), primary(), short, at(105));
    let (id, a) = out[0].clone();
    assert!(matches!(a, Action::RenewLock { .. }), "{a:?}");
    // It may land and move the lock to a 5 s lease even if its answer is lost.
    assert_eq!(core.lease_deadline(), Some(at(109)));
    let lost = Outcome::Lock {
        held: false,
        answered: false,
        sent_at: at(105),
    };
    complete(&mut core, id, lost, at(106));
    let out = core.step(Input::Tick, at(109));
    assert_eq!(actions(&out), vec![Action::StopNow]);
}

fn observe_wd(
    core: &mut HaCore,
    dcs: Option<ClusterView>,
    pg: PgFacts,
    watchdog: WatchdogState,
    now: MonoTime,
) -> Vec<(ActionId, Action)> {
    core.step(
        Input::Observed(Box::new(Observation {
            dcs,
            pg,
            policy: policy(),
            watchdog,
            switchover_at: Countdown::Unscheduled,
        })),
        now,
    )
}

fn unusable() -> WatchdogState {
    WatchdogState::Unusable("broken".into())
}

/// A replica that has won the race (the peers are behind) and holds the lock: the outcome's
/// actions.
fn win_race(core: &mut HaCore, watchdog: WatchdogState, now: MonoTime) -> Vec<(ActionId, Action)> {
    let out = observe_wd(core, Some(view(None)), replica(Some("b")), watchdog, now);
    let (probe, a) = out[0].clone();
    assert!(matches!(a, Action::ProbePeers { .. }), "{a:?}");
    let report = PeerReport::from([
        ("b".to_string(), Some(peer_at(10))),
        ("c".to_string(), Some(peer_at(10))),
    ]);
    let out = complete(core, probe, Outcome::Peers(report), now);
    let (lock, a) = out[0].clone();
    assert_eq!(a, Action::AcquireLock);
    complete(core, lock, answered(true, now), now)
}

#[test]
fn a_required_watchdog_is_active_before_the_promotion() {
    let mut core = HaCore::new(me());
    // Holding the lock, the device not opened yet (the fence opens it once armed): wait.
    let out = win_race(&mut core, WatchdogState::Ready, at(50));
    assert!(!actions(&out).contains(&Action::Promote), "{out:?}");
    assert!(core.holds_lock(at(50)));
    let out = observe_wd(
        &mut core,
        Some(view(Some("a"))),
        replica(None),
        WatchdogState::Ready,
        at(50),
    );
    assert!(!actions(&out).contains(&Action::Promote), "{out:?}");
    assert!(
        core.message().contains("waiting for the watchdog"),
        "{}",
        core.message()
    );
    // Active: promote.
    let out = observe_wd(
        &mut core,
        Some(view(Some("a"))),
        replica(None),
        WatchdogState::Active,
        at(51),
    );
    assert_eq!(actions(&out), vec![Action::Promote]);
}

#[test]
fn a_required_watchdog_that_cannot_be_activated_gives_the_lock_back_and_backs_off() {
    let mut core = HaCore::new(me());
    win_race(&mut core, WatchdogState::Ready, at(50));
    // Opening the device failed: the replica stays a replica and the lock goes now.
    let out = observe_wd(
        &mut core,
        Some(view(Some("a"))),
        replica(None),
        unusable(),
        at(50),
    );
    assert_eq!(actions(&out), vec![release_1()]);
    assert!(
        core.message()
            .contains("not promoting self because the watchdog")
    );
    complete(&mut core, out[0].0, Outcome::Ok, at(50));
    // Writable again (the device answers access(2)): no race for ttl.
    let out = observe_wd(
        &mut core,
        Some(view(None)),
        replica(Some("b")),
        WatchdogState::Ready,
        at(60),
    );
    assert!(out.is_empty(), "{out:?}");
    assert!(
        core.message().contains("trying again in 20s"),
        "{}",
        core.message()
    );
    let out = observe_wd(
        &mut core,
        Some(view(None)),
        replica(Some("b")),
        WatchdogState::Ready,
        at(80),
    );
    assert!(
        matches!(actions(&out)[..], [Action::ProbePeers { .. }]),
        "{out:?}"
    );
}

/// A leader at 100 whose primary runs with an active watchdog (observed at 101).
fn watched_primary() -> HaCore {
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    let out = observe_wd(
        &mut core,
        Some(view(Some("a"))),
        primary(),
        WatchdogState::Active,
        at(101),
    );
    assert!(!actions(&out).contains(&Action::StopNow), "{out:?}");
    core
}

#[test]
fn a_primary_whose_required_watchdog_fails_is_demoted() {
    let mut core = watched_primary();
    let out = observe_wd(
        &mut core,
        Some(view(Some("a"))),
        primary(),
        unusable(),
        at(102),
    );
    assert_eq!(actions(&out), vec![Action::StopNow]);
    assert!(
        core.message()
            .contains("demoting self because the watchdog")
    );
    complete(&mut core, out[0].0, Outcome::Ok, at(102));
    let down = down(primary());
    let out = observe_wd(&mut core, Some(view(Some("a"))), down, unusable(), at(103));
    assert_eq!(actions(&out), vec![release_1()]);
}

#[test]
fn a_primary_whose_required_watchdog_fails_stops_even_without_the_store() {
    // Found by the simulation: the cycle used to keep such a primary until its lease deadline.
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    let out = observe_wd(&mut core, None, primary(), unusable(), at(102));
    assert_eq!(actions(&out), vec![Action::StopNow]);
    assert_eq!(core.lease_deadline(), None);
}

#[test]
fn an_unusable_watchdog_keeps_a_member_out_of_the_race_and_the_bootstrap() {
    let mut core = HaCore::new(me());
    let out = observe_wd(
        &mut core,
        Some(view(None)),
        replica(Some("b")),
        unusable(),
        at(1),
    );
    assert!(out.is_empty(), "{out:?}");
    assert!(
        core.message()
            .starts_with("not racing: the required watchdog")
    );
    let empty = PgFacts {
        data: DataDir::Empty,
        up: false,
        in_recovery: None,
        ..replica(None)
    };
    let fresh = ClusterView::default();
    let out = observe_wd(&mut core, Some(fresh), empty, unusable(), at(2));
    assert!(out.is_empty(), "{out:?}");
    assert!(core.message().starts_with("not bootstrapping"));
}

#[test]
fn in_pause_the_watchdog_demotes_nobody() {
    // Patroni turns the watchdog off while paused.
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    let obs = Observation {
        dcs: Some(view(Some("a"))),
        pg: primary(),
        policy: paused(),
        watchdog: unusable(),
        switchover_at: Countdown::Unscheduled,
    };
    let out = core.step(Input::Observed(Box::new(obs)), at(101));
    assert!(!actions(&out).contains(&Action::StopNow), "{out:?}");
}

fn request(core: &mut HaCore, id: u64, request: Request, now: MonoTime) -> Vec<(ActionId, Action)> {
    core.step(
        Input::Requested {
            id: RequestId(id),
            request,
        },
        now,
    )
}

#[test]
fn a_leader_keeps_renewing_through_its_own_restart() {
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    observe(&mut core, Some(view(Some("a"))), primary(), at(101));
    let out = request(&mut core, 7, Request::Restart, at(101));
    let (task, a) = out[0].clone();
    assert_eq!(
        a,
        Action::Restart {
            primary: true,
            upstream: None
        }
    );
    // While it runs the loop goes on: renewals are sent, a second request is refused.
    let down = down(primary());
    let out = observe(&mut core, Some(view(Some("a"))), down.clone(), at(110));
    assert!(
        matches!(actions(&out)[..], [Action::RenewLock { .. }]),
        "{out:?}"
    );
    complete(&mut core, out[0].0, answered(true, at(110)), at(110));
    assert_eq!(core.lease_deadline(), Some(at(137)));
    let out = request(&mut core, 8, Request::Restart, at(111));
    assert_eq!(
        actions(&out),
        vec![Action::Answer {
            id: RequestId(8),
            result: Err("restart already in progress".into())
        }]
    );
    let out = complete(&mut core, task, Outcome::Ok, at(112));
    assert_eq!(
        actions(&out),
        vec![Action::Answer {
            id: RequestId(7),
            result: Ok(())
        }]
    );
}

#[test]
fn a_restart_whose_lease_lapses_is_stopped() {
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    observe(&mut core, Some(view(Some("a"))), primary(), at(101));
    request(&mut core, 1, Request::Restart, at(101));
    // Cut off: no renewal lands; at the deadline the restart (which ends writable) is stopped.
    let out = core.step(Input::Tick, at(127));
    assert_eq!(actions(&out), vec![Action::StopNow]);
}

#[test]
fn a_replica_restarts_as_a_replica_of_its_upstream() {
    let mut core = HaCore::new(me());
    observe(&mut core, Some(view(Some("b"))), replica(Some("b")), at(1));
    let out = request(&mut core, 1, Request::Restart, at(2));
    assert_eq!(
        actions(&out),
        vec![Action::Restart {
            primary: false,
            upstream: Some("b".into())
        }]
    );
    let out = complete(&mut core, out[0].0, Outcome::Failed("boom".into()), at(3));
    assert_eq!(
        actions(&out),
        vec![Action::Answer {
            id: RequestId(1),
            result: Err("restart failed".into())
        }]
    );
}

#[test]
fn reinitialize_is_for_replicas_of_a_cluster_with_a_leader() {
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    let out = request(&mut core, 1, Request::Reinitialize, at(101));
    assert_eq!(
        actions(&out),
        vec![Action::Answer {
            id: RequestId(1),
            result: Err("I am the leader, can not reinitialize".into())
        }]
    );
    let mut core = HaCore::new(me());
    observe(&mut core, Some(view(None)), replica(None), at(1));
    let out = request(&mut core, 2, Request::Reinitialize, at(1));
    assert_eq!(
        actions(&out),
        vec![Action::Answer {
            id: RequestId(2),
            result: Err("Cluster has no leader, can not reinitialize".into())
        }]
    );
    let mut core = HaCore::new(me());
    observe(&mut core, Some(view(Some("b"))), replica(Some("b")), at(1));
    let out = request(&mut core, 3, Request::Reinitialize, at(2));
    assert_eq!(actions(&out), vec![Action::Reinitialize]);
    let out = complete(&mut core, out[0].0, Outcome::Ok, at(3));
    assert_eq!(
        actions(&out),
        vec![Action::Answer {
            id: RequestId(3),
            result: Ok(())
        }]
    );
}

#[test]
fn a_config_change_during_a_task_is_applied_once_the_task_ends() {
    let with_config = |version: &str| ClusterView {
        config: Some(Versioned {
            value: serde_json::Map::new(),
            version: Version(version.into()),
        }),
        ..view(Some("b"))
    };
    let mut core = HaCore::new(me());
    let out = observe(&mut core, Some(with_config("1")), replica(Some("b")), at(1));
    assert_eq!(
        actions(&out),
        vec![Action::ApplyConfig {
            version: Version("1".into())
        }]
    );
    complete(&mut core, out[0].0, Outcome::Ok, at(1));
    let out = observe(&mut core, Some(with_config("1")), replica(Some("b")), at(2));
    assert!(out.is_empty(), "applied already: {out:?}");
    let out = request(&mut core, 1, Request::Restart, at(3));
    let task = out[0].0;
    // Changed while the restart holds PostgreSQL: not now ...
    let out = observe(&mut core, Some(with_config("2")), replica(Some("b")), at(4));
    assert!(out.is_empty(), "{out:?}");
    let out = complete(&mut core, task, Outcome::Ok, at(5));
    complete(&mut core, out[0].0, Outcome::Ok, at(5)); // the answer to the request
    // ... but at the first cycle after it.
    let out = observe(&mut core, Some(with_config("2")), replica(Some("b")), at(6));
    assert_eq!(
        actions(&out),
        vec![Action::ApplyConfig {
            version: Version("2".into())
        }]
    );
}

#[test]
fn a_failed_action_waits_for_the_next_cycle_to_be_tried_again() {
    // Found by the fault suite: a replica on a full disk failed to write its config after a
    // change, was observed again at once, failed again... a store read every few ms.
    let with_config = ClusterView {
        config: Some(Versioned {
            value: serde_json::Map::new(),
            version: Version("1".into()),
        }),
        ..view(Some("b"))
    };
    let mut core = HaCore::new(me());
    let out = observe(
        &mut core,
        Some(with_config.clone()),
        replica(Some("b")),
        at(1),
    );
    let failed = Outcome::Failed("writing postgresql.conf: No space left on device".into());
    complete(&mut core, out[0].0, failed, at(1));
    assert!(
        !core.take_cycle_now(),
        "a failure must not call for a cycle at once"
    );
    // The next regular cycle tries it again...
    assert_eq!(core.next_wakeup(), at(1) + policy().loop_wait);
    let out = observe(&mut core, Some(with_config), replica(Some("b")), at(11));
    assert!(
        matches!(actions(&out)[..], [Action::ApplyConfig { .. }]),
        "{out:?}"
    );
    // ... and a success calls for the cycle that follows from it.
    complete(&mut core, out[0].0, Outcome::Ok, at(11));
    assert!(core.take_cycle_now());
    assert!(!core.take_cycle_now(), "asked once per completion");
}

fn observe_schedule(
    core: &mut HaCore,
    countdown: Countdown,
    now: MonoTime,
) -> Vec<(ActionId, Action)> {
    let mut v = view(Some("a"));
    v.failover = Some(Versioned {
        value: Failover {
            leader: Some("a".into()),
            member: Some("b".into()),
            scheduled_at: Some("2026-12-02T10:00:00+00:00".into()),
        },
        version: Version("7".into()),
    });
    core.step(
        Input::Observed(Box::new(Observation {
            dcs: Some(v),
            pg: primary(),
            policy: policy(),
            watchdog: WatchdogState::Unneeded,
            switchover_at: countdown,
        })),
        now,
    )
}

#[test]
fn a_scheduled_switchover_waits_for_its_time_then_runs() {
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    // 4 s ahead: wait, and wake up exactly then (before the next cycle would).
    let out = observe_schedule(&mut core, Countdown::In(4 * S), at(101));
    assert!(
        !actions(&out)
            .iter()
            .any(|a| matches!(a, Action::ProbePeers { .. })),
        "{out:?}"
    );
    assert!(
        core.message().starts_with("Awaiting switchover at"),
        "{}",
        core.message()
    );
    assert_eq!(core.next_wakeup(), at(105));
    // Its time: the switchover starts (the candidate is probed).
    let out = observe_schedule(&mut core, Countdown::Passed(Duration::ZERO), at(105));
    assert!(
        actions(&out)
            .iter()
            .any(|a| matches!(a, Action::ProbePeers { .. })),
        "{out:?}"
    );
}

#[test]
fn a_stale_or_unreadable_scheduled_switchover_is_not_run() {
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    // 1.5 × loop_wait late (15 s) still runs; later is stale and cleared.
    let out = observe_schedule(&mut core, Countdown::Passed(16 * S), at(101));
    assert_eq!(
        actions(&out),
        vec![Action::ClearFailover {
            version: Some(Version("7".into()))
        }]
    );
    complete(&mut core, out[0].0, Outcome::Ok, at(101));
    let out = observe_schedule(&mut core, Countdown::Unreadable, at(102));
    assert!(out.is_empty(), "never acted on: {out:?}");
    assert!(
        core.message().contains("unreadable time"),
        "{}",
        core.message()
    );
}

#[test]
fn a_primary_leader_keeps_a_slot_for_every_other_member() {
    let slots = Policy {
        use_slots: true,
        ..policy()
    };
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    let out = observe_with(
        &mut core,
        Some(view(Some("a"))),
        primary(),
        slots.clone(),
        at(101),
    );
    let ensure = Action::EnsureSlots {
        members: vec!["b".into(), "c".into()],
    };
    assert_eq!(actions(&out), vec![ensure.clone()]);
    complete(&mut core, out[0].0, Outcome::Ok, at(101));
    let out = observe_with(
        &mut core,
        Some(view(Some("a"))),
        primary(),
        slots.clone(),
        at(102),
    );
    assert!(out.is_empty(), "made already: {out:?}");
    // A member joins: made again.
    let mut v = view(Some("a"));
    v.members.insert("d".into(), Member::default());
    let out = observe_with(&mut core, Some(v), primary(), slots.clone(), at(103));
    assert_eq!(
        actions(&out),
        vec![Action::EnsureSlots {
            members: vec!["b".into(), "c".into(), "d".into()]
        }]
    );
    // A replica holder (promotion pending) makes none; nor does use_slots: false.
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    let out = observe_with(
        &mut core,
        Some(view(Some("a"))),
        primary(),
        policy(),
        at(101),
    );
    assert!(!actions(&out).contains(&ensure), "{out:?}");
}

#[test]
fn a_failed_watchdog_stops_a_primary_without_waiting_for_the_next_observation() {
    let mut core = watched_primary();
    let out = core.step(Input::Watchdog(unusable()), at(102));
    assert_eq!(actions(&out), vec![Action::StopNow]);
    assert_eq!(core.lease_deadline(), None);
    // A replica holder is left to the next cycle (which gives the lock back).
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    assert!(core.step(Input::Watchdog(unusable()), at(101)).is_empty());
}

#[test]
fn a_start_as_primary_that_ends_after_the_lease_is_stopped() {
    let mut core = HaCore::new(me());
    let id = promoting(&mut core);
    // The lease lapses while the promotion runs (its stop came before the server was up).
    let out = core.step(Input::Tick, at(27));
    assert_eq!(actions(&out), vec![Action::StopNow]);
    let out = complete(&mut core, id, Outcome::Ok, at(28));
    assert_eq!(actions(&out), vec![Action::StopNow]);
}

#[test]
fn a_primary_whose_watchdog_failed_stops_before_renewing() {
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    // A renewal is due (loop_wait passed); the stop must not wait behind it.
    let out = observe_wd(
        &mut core,
        Some(view(Some("a"))),
        primary(),
        unusable(),
        at(115),
    );
    assert_eq!(actions(&out).first(), Some(&Action::StopNow), "{out:?}");
    assert!(
        !actions(&out)
            .iter()
            .any(|a| matches!(a, Action::RenewLock { .. })),
        "{out:?}"
    );
}

#[test]
fn a_leader_copies_missing_timeline_switches_into_history_until_the_store_has_them() {
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    let on_tl3 = PgFacts {
        timeline: Some(3),
        ..primary()
    };
    // After a promotion (or a failed write, or a wiped store): written, and again next cycle
    // while the store still lacks it.
    let mut v = view(Some("a"));
    v.history = Some(vec![crate::dcs::HistoryLine::new(1, 5, "r", "t", "b")]);
    for t in [101, 111] {
        let out = observe(&mut core, Some(v.clone()), on_tl3.clone(), at(t));
        assert!(
            actions(&out).contains(&Action::WriteHistory { timeline: 3 }),
            "{out:?}"
        );
        complete(&mut core, out[0].0, Outcome::Failed("x".into()), at(t));
    }
    // Recorded: nothing more to write.
    v.history
        .as_mut()
        .unwrap()
        .push(crate::dcs::HistoryLine::new(2, 9, "r", "t", "a"));
    let out = observe(&mut core, Some(v.clone()), on_tl3.clone(), at(121));
    assert!(
        !actions(&out)
            .iter()
            .any(|a| matches!(a, Action::WriteHistory { .. })),
        "{out:?}"
    );
    // A history value nobody can read is never written over; a replica writes none.
    v.history = None;
    v.problems.push(crate::dcs::model::Problem {
        key: "history".into(),
        error: "not JSON".into(),
    });
    let out = observe(&mut core, Some(v), on_tl3, at(131));
    assert!(
        !actions(&out)
            .iter()
            .any(|a| matches!(a, Action::WriteHistory { .. })),
        "{out:?}"
    );
}

#[test]
fn a_holder_that_writes_initialize_seeds_a_missing_config_but_never_an_unreadable_one() {
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    // A wiped store: initialize and config gone, the leader still holds the lock.
    let mut v = view(Some("a"));
    v.initialize = None;
    let out = observe(&mut core, Some(v.clone()), primary(), at(101));
    let acts = actions(&out);
    assert!(
        acts.contains(&Action::WriteInitialize { sysid: "42".into() })
            && acts.contains(&Action::SeedConfig),
        "{acts:?}"
    );
    for (id, _) in out {
        complete(&mut core, id, Outcome::Ok, at(101));
    }
    v.problems.push(crate::dcs::model::Problem {
        key: "config".into(),
        error: "config is not valid JSON".into(),
    });
    let out = observe(&mut core, Some(v), primary(), at(111));
    let acts = actions(&out);
    assert!(!acts.contains(&Action::SeedConfig), "{acts:?}");
}

#[test]
fn in_synchronous_mode_a_new_leader_revokes_the_former_voters_before_promoting() {
    use crate::dcs::SyncState;
    let sync = sync_on();
    let v = with_sync_key(view(None), "b", Some("a"));
    let mut core = HaCore::new(me());
    let out = observe_with(
        &mut core,
        Some(v.clone()),
        replica(Some("b")),
        sync.clone(),
        at(50),
    );
    let (probe, _) = out[0].clone();
    let report: PeerReport = [("b".to_string(), None), ("c".to_string(), None)]
        .into_iter()
        .collect();
    let out = complete(&mut core, probe, Outcome::Peers(report), at(50));
    let (lock, a) = out[0].clone();
    assert_eq!(a, Action::AcquireLock);
    let out = complete(&mut core, lock, answered(true, at(50)), at(50));
    let (revoke, a) = out[0].clone();
    assert_eq!(
        a,
        Action::WriteSync {
            value: SyncState {
                leader: Some("a".into()),
                sync_standby: None,
                quorum: None,
            },
            version: Some(Version("5".into())),
        }
    );
    assert!(!actions(&out).contains(&Action::Promote), "{out:?}");
    let out = complete(&mut core, revoke, Outcome::Ok, at(50));
    assert_eq!(actions(&out), vec![Action::Promote]);
}

fn failsafe() -> Policy {
    Policy {
        failsafe_mode: true,
        ..policy()
    }
}

/// The view a leader in failsafe mode sees: everyone in the `failsafe` key.
fn failsafe_view(leader: Option<&str>) -> ClusterView {
    let mut v = view(leader);
    v.failsafe = Some(
        ["a", "b", "c"]
            .iter()
            .map(|n| (n.to_string(), format!("http://{n}/patroni")))
            .collect(),
    );
    v
}

/// `a` leads a primary in failsafe mode since 100 (lease until 127); the store goes away at 110
/// and the members are asked to confirm: the round's id.
fn failsafe_round(core: &mut HaCore) -> ActionId {
    lead(core, at(100));
    observe_with(
        core,
        Some(failsafe_view(Some("a"))),
        primary(),
        failsafe(),
        at(100),
    );
    let out = observe_with(core, None, primary(), failsafe(), at(110));
    let (id, a) = out.last().cloned().expect("a round of confirmations");
    assert_eq!(
        a,
        Action::ConfirmFailsafe {
            members: vec![
                ("b".into(), "http://b/patroni".into()),
                ("c".into(), "http://c/patroni".into())
            ]
        }
    );
    id
}

/// Every member confirmed the round sent at `sent_at`.
fn confirmed_at(sent_at: MonoTime) -> Outcome {
    Outcome::Failsafe {
        refused: vec![],
        sent_at,
    }
}

/// [`failsafe_round`], confirmed by every member at 111.
fn failsafe_confirmed(core: &mut HaCore) {
    let id = failsafe_round(core);
    complete(core, id, confirmed_at(at(110)), at(111));
}

#[test]
fn a_primary_cut_off_from_the_store_stays_while_every_member_confirms_it() {
    let mut core = HaCore::new(me());
    failsafe_confirmed(&mut core);
    // From the round's send time, as a renewal: 110 + 30 − 3.
    assert_eq!(core.lease_deadline(), Some(at(137)));
    assert!(core.failsafe_active());
    assert!(core.message().contains("failsafe mode is enabled"));
}

#[test]
fn a_primary_that_one_member_does_not_confirm_stops_at_its_lease_deadline() {
    let mut core = HaCore::new(me());
    let id = failsafe_round(&mut core);
    let refused = Outcome::Failsafe {
        refused: vec!["c".into()],
        sent_at: at(110),
    };
    complete(&mut core, id, refused, at(111));
    assert_eq!(core.lease_deadline(), Some(at(127)));
    assert!(!core.failsafe_active());
    assert_eq!(
        actions(&core.step(Input::Tick, at(127))),
        vec![Action::StopNow]
    );
}

#[test]
fn a_confirmation_answered_after_the_deadline_extends_nothing() {
    let mut core = HaCore::new(me());
    let id = failsafe_round(&mut core);
    let out = complete(&mut core, id, confirmed_at(at(110)), at(128));
    assert_eq!(actions(&out), vec![Action::StopNow]);
    assert_eq!(core.lease_deadline(), None);
}

#[test]
fn without_failsafe_mode_nobody_is_asked() {
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    observe(
        &mut core,
        Some(failsafe_view(Some("a"))),
        primary(),
        at(100),
    );
    let out = observe(&mut core, None, primary(), at(110));
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn a_failsafe_leader_takes_its_expired_lock_again_when_the_store_returns() {
    let mut core = HaCore::new(me());
    failsafe_confirmed(&mut core);
    // The store let the lock expire meanwhile: no leader, and nothing says it was deleted.
    let out = observe_with(
        &mut core,
        Some(failsafe_view(None)),
        primary(),
        failsafe(),
        at(130),
    );
    let (lock, a) = out[0].clone();
    assert_eq!(a, Action::AcquireLock, "{out:?}");
    let out = complete(&mut core, lock, answered(true, at(130)), at(130));
    assert!(!actions(&out).contains(&Action::StopNow), "{out:?}");
    assert_eq!(core.lease_deadline(), Some(at(157)));
}

#[test]
fn a_failsafe_leader_whose_lock_another_member_took_stops_at_once() {
    let mut core = HaCore::new(me());
    failsafe_confirmed(&mut core);
    let out = observe_with(
        &mut core,
        Some(failsafe_view(Some("b"))),
        primary(),
        failsafe(),
        at(130),
    );
    assert_eq!(actions(&out), vec![Action::StopNow]);
}

#[test]
fn a_leader_publishes_the_failsafe_key_when_the_members_change() {
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    let mut v = failsafe_view(Some("a"));
    v.failsafe.as_mut().unwrap().remove("c");
    let out = observe_with(&mut core, Some(v), primary(), failsafe(), at(100));
    let want = failsafe_view(None).failsafe.unwrap();
    assert!(
        actions(&out).contains(&Action::WriteFailsafe { value: want }),
        "{out:?}"
    );
}

fn ask_failsafe(core: &mut HaCore, from: &str, now: MonoTime) -> Result<(), String> {
    let ping = Request::Failsafe {
        leader: from.into(),
        ttl: None,
    };
    let out = request(core, 9, ping, now);
    match out.as_slice() {
        [(id, Action::Answer { result, .. })] => {
            complete(core, *id, Outcome::Ok, now);
            result.clone()
        }
        _ => panic!("one answer: {out:?}"),
    }
}

#[test]
fn a_replica_that_confirmed_a_leader_does_not_race_for_a_ttl() {
    let mut core = HaCore::new(me());
    // Not at start: an agent in failsafe mode holds off for a ttl after its first look.
    observe(&mut core, Some(view(Some("b"))), replica(Some("b")), at(10));
    observe_with(
        &mut core,
        Some(failsafe_view(Some("b"))),
        replica(Some("b")),
        failsafe(),
        at(50),
    );
    assert_eq!(ask_failsafe(&mut core, "b", at(60)), Ok(()));
    // The store let b's lock expire: no race before 60 + 30.
    let out = observe_with(
        &mut core,
        Some(failsafe_view(None)),
        replica(Some("b")),
        failsafe(),
        at(89),
    );
    assert!(out.is_empty(), "{out:?}");
    assert!(core.message().contains("failsafe"), "{}", core.message());
    let out = observe_with(
        &mut core,
        Some(failsafe_view(None)),
        replica(Some("b")),
        failsafe(),
        at(90),
    );
    assert!(
        matches!(actions(&out).first(), Some(Action::ProbePeers { .. })),
        "{out:?}"
    );
    // Racing now: it confirms nobody until the race is decided.
    assert!(ask_failsafe(&mut core, "b", at(90)).is_err());
}

#[test]
fn a_leader_never_confirms_another() {
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    assert_eq!(
        ask_failsafe(&mut core, "b", at(101)),
        Err("Running as a leader".into())
    );
}

/// `a`, missing from the failsafe key (which lists `b` and `z`, a member without a member
/// key), probes for the race: the probe's id.
fn unlisted_race(core: &mut HaCore) -> ActionId {
    observe(core, Some(view(Some("b"))), replica(Some("b")), at(10));
    let mut v = failsafe_view(None);
    let key = v.failsafe.as_mut().unwrap();
    key.remove("a");
    key.remove("c");
    key.insert("z".into(), "http://z/patroni".into());
    let out = observe_with(core, Some(v), replica(Some("b")), failsafe(), at(50));
    let (id, a) = out[0].clone();
    assert_eq!(
        a,
        Action::ProbePeers {
            names: vec!["b".into(), "c".into(), "z".into()]
        }
    );
    id
}

#[test]
fn a_member_missing_from_the_failsafe_key_races_only_once_every_listed_member_answered() {
    let mut core = HaCore::new(me());
    let probe = unlisted_race(&mut core);
    let mut report = PeerReport::new();
    report.insert("b".into(), Some(peer_at(10)));
    report.insert("c".into(), Some(peer_at(10)));
    report.insert("z".into(), None);
    let out = complete(&mut core, probe, Outcome::Peers(report.clone()), at(51));
    assert!(out.is_empty(), "{out:?}");
    assert!(core.message().contains("z, which is, did not answer"));
    // A listed member running as a primary may be a leader kept up by failsafe mode.
    let probe = unlisted_race(&mut core);
    let primary_z = PeerFacts {
        is_primary: true,
        ..peer_at(10)
    };
    report.insert("z".into(), Some(primary_z));
    let out = complete(&mut core, probe, Outcome::Peers(report.clone()), at(51));
    assert!(out.is_empty(), "{out:?}");
    // Every listed member answered as a replica: z is not judged as a racer (it is ahead).
    let probe = unlisted_race(&mut core);
    report.insert("z".into(), Some(peer_at(2000)));
    let out = complete(&mut core, probe, Outcome::Peers(report), at(51));
    assert_eq!(actions(&out), vec![Action::AcquireLock]);
}

#[test]
fn an_agent_in_failsafe_mode_holds_off_for_a_ttl_after_it_starts() {
    // It may have confirmed a leader just before it restarted: that leader counts on it.
    let mut core = HaCore::new(me());
    let out = observe_with(
        &mut core,
        Some(failsafe_view(None)),
        replica(None),
        failsafe(),
        at(5),
    );
    assert!(out.is_empty(), "{out:?}");
    let out = observe_with(
        &mut core,
        Some(failsafe_view(None)),
        replica(None),
        failsafe(),
        at(35),
    );
    assert!(
        matches!(actions(&out).first(), Some(Action::ProbePeers { .. })),
        "{out:?}"
    );
}

#[test]
fn an_unanswered_renewal_asks_for_confirmations_even_while_reads_come_from_a_cache() {
    // A frozen API server: the watch-fed cache still answers reads, renewals time out.
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    let out = observe_with(
        &mut core,
        Some(failsafe_view(Some("a"))),
        primary(),
        failsafe(),
        at(110),
    );
    let (renew, a) = out[0].clone();
    assert!(matches!(a, Action::RenewLock { .. }), "{out:?}");
    let unanswered = Outcome::Lock {
        held: false,
        answered: false,
        sent_at: at(110),
    };
    let out = complete(&mut core, renew, unanswered, at(113));
    assert!(
        matches!(actions(&out).as_slice(), [Action::ConfirmFailsafe { .. }]),
        "{out:?}"
    );
    complete(&mut core, out[0].0, confirmed_at(at(113)), at(113));
    assert_eq!(core.lease_deadline(), Some(at(140)));
    assert!(core.failsafe_active());
}

/// The store's view of a cluster led by `a` whose replicas `b` and `c` run and stream.
fn view_with_running_replicas() -> ClusterView {
    let mut v = view(Some("a"));
    for (n, m) in v.members.iter_mut() {
        m.state = Some("running".into());
        m.xlog_location = Some(if n == "a" { 1000 } else { 990 });
    }
    v.status = Some(crate::dcs::Status {
        optime: 1000,
        ..Default::default()
    });
    v
}

/// `synchronous_mode: on`, the rest as [`policy`].
fn sync_on() -> Policy {
    Policy {
        sync: crate::ha::sync::SyncPolicy {
            mode: crate::config::SyncMode::On,
            ..Default::default()
        },
        ..policy()
    }
}

/// b leads, every member running, and its sync key names `standby`.
fn b_leads_with_sync_standby(standby: Option<&str>) -> ClusterView {
    let mut v = view(Some("b"));
    for m in v.members.values_mut() {
        m.state = Some("running".into());
    }
    with_sync_key(v, "b", standby)
}

/// We run as a replica of b, with `synchronous_mode: on`, and observe `v` at `t`.
fn seen_as_bs_replica(core: &mut HaCore, v: ClusterView, t: u64) -> Vec<(ActionId, Action)> {
    observe_with(core, Some(v), replica(Some("b")), sync_on(), at(t))
}

/// `v` with a `sync` key (version 5) of `leader` naming `standby`.
fn with_sync_key(mut v: ClusterView, leader: &str, standby: Option<&str>) -> ClusterView {
    v.sync = Some(Versioned {
        value: crate::dcs::SyncState {
            leader: Some(leader.into()),
            sync_standby: standby.map(str::to_owned),
            quorum: None,
        },
        version: Version("5".into()),
    });
    v
}

fn start_timeout(secs: u64) -> Policy {
    Policy {
        primary_start_timeout: Duration::from_secs(secs),
        ..policy()
    }
}

#[test]
fn with_primary_start_timeout_0_a_crashed_primary_hands_over_instead_of_restarting() {
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    let out = observe_with(
        &mut core,
        Some(view_with_running_replicas()),
        down(primary()),
        start_timeout(0),
        at(101),
    );
    assert!(actions(&out).contains(&release_1()), "{out:?}");
    assert!(
        !actions(&out)
            .iter()
            .any(|a| matches!(a, Action::StartPrimary { .. })),
        "{out:?}"
    );
    // Nobody could take over: it restarts, whatever the timeout.
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    let out = observe_with(
        &mut core,
        Some(view(Some("a"))),
        down(primary()),
        start_timeout(0),
        at(101),
    );
    assert!(
        actions(&out).contains(&Action::StartPrimary {
            bootstrapped: false
        }),
        "{out:?}"
    );
}

#[test]
fn a_start_as_the_primary_that_outlasts_primary_start_timeout_is_stopped_and_handed_over() {
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    let v = view_with_running_replicas();
    let out = observe_with(
        &mut core,
        Some(v.clone()),
        down(primary()),
        start_timeout(5),
        at(101),
    );
    assert!(
        actions(&out).contains(&Action::StartPrimary {
            bootstrapped: false
        }),
        "{out:?}"
    );
    let out = observe_with(
        &mut core,
        Some(v.clone()),
        down(primary()),
        start_timeout(5),
        at(105),
    );
    assert!(!actions(&out).contains(&Action::StopNow), "{out:?}");
    let out = observe_with(
        &mut core,
        Some(v),
        down(primary()),
        start_timeout(5),
        at(106),
    );
    assert_eq!(actions(&out), vec![Action::StopNow]);
    assert_eq!(core.lease_deadline(), None);
}

#[test]
fn a_leader_shutting_down_stays_until_another_member_holds_the_lock() {
    // Racers take a released lock only once its holder has said it is not a primary: an
    // agent that exited at once would make them wait for the lock's ttl.
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    observe(&mut core, Some(view(Some("a"))), primary(), at(100));
    let out = core.step(Input::Shutdown, at(101));
    let (stop, a) = out[0].clone();
    assert_eq!(a, Action::StopGraceful);
    let out = complete(&mut core, stop, Outcome::Ok, at(102));
    assert_eq!(actions(&out), vec![release_1()]);
    complete(&mut core, out[0].0, Outcome::Ok, at(102));
    assert!(!core.is_finished() && core.wants_observation());
    observe(&mut core, Some(view(None)), down(primary()), at(103));
    assert!(!core.is_finished(), "nobody holds the lock yet");
    observe(&mut core, Some(view(Some("b"))), down(primary()), at(104));
    assert!(core.is_finished());
    // Nobody takes over: it goes at the bound (`shutdown_handover_timeout` after it was told
    // to stop, 10 s here, and never more than ttl after the release).
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    observe(&mut core, Some(view(Some("a"))), primary(), at(100));
    let out = core.step(Input::Shutdown, at(101));
    let out = complete(&mut core, out[0].0, Outcome::Ok, at(102));
    complete(&mut core, out[0].0, Outcome::Ok, at(102));
    core.step(Input::Tick, at(110));
    assert!(!core.is_finished());
    core.step(Input::Tick, at(111));
    assert!(core.is_finished());
}

#[test]
fn with_shutdown_handover_timeout_0_a_leader_stops_and_goes_at_once() {
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    let no_handover = Policy {
        handover_timeout: Duration::ZERO,
        ..policy()
    };
    observe_with(
        &mut core,
        Some(view(Some("a"))),
        primary(),
        no_handover,
        at(100),
    );
    let out = core.step(Input::Shutdown, at(101));
    assert_eq!(actions(&out), vec![Action::StopGraceful]);
    let out = complete(&mut core, out[0].0, Outcome::Ok, at(102));
    assert_eq!(actions(&out), vec![release_1()]);
    assert!(
        core.is_finished(),
        "no waiting for another member to take the lock"
    );
}

#[test]
fn a_synchronous_leader_told_to_stop_waits_for_its_key_to_name_a_standby() {
    let sync = sync_on();
    let key = |standby: Option<&str>| with_sync_key(view(Some("a")), "a", standby);
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    observe_with(&mut core, Some(key(None)), primary(), sync.clone(), at(100));
    // The key names nobody (it is moving to a new standby): stopping now, nobody could race.
    let out = core.step(Input::Shutdown, at(101));
    assert!(!actions(&out).contains(&Action::StopGraceful), "{out:?}");
    assert!(core.wants_observation());
    let out = observe_with(
        &mut core,
        Some(key(Some("b"))),
        primary(),
        sync.clone(),
        at(102),
    );
    assert!(actions(&out).contains(&Action::StopGraceful), "{out:?}");
    // A key that never settles: the stop goes ahead at the bound (5 s, or ttl/2 if less).
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    observe_with(&mut core, Some(key(None)), primary(), sync.clone(), at(100));
    core.step(Input::Shutdown, at(101));
    let out = core.step(Input::Tick, at(106));
    assert!(actions(&out).contains(&Action::StopGraceful), "{out:?}");
}

#[test]
fn a_synchronous_standby_told_to_stop_waits_until_another_standby_replaces_it() {
    let sync = sync_on();
    // b leads; a (us) is its synchronous standby, c a running replica that may replace us.
    let (key, see) = (b_leads_with_sync_standby, seen_as_bs_replica);
    // Listed in the key at 100, told to stop at 101: what it does about it.
    let told_to_stop = || {
        let mut core = HaCore::new(me());
        see(&mut core, key(Some("a")), 100);
        let out = core.step(Input::Shutdown, at(101));
        (core, out)
    };
    let (mut core, out) = told_to_stop();
    assert_eq!(actions(&out), vec![Action::ReleaseSync]);
    // Out of the key, which names nobody yet: the leader has still to list c in
    // synchronous_standby_names, and commits would wait for us if we stopped now.
    let out = see(&mut core, key(None), 102);
    assert!(!actions(&out).contains(&Action::StopGraceful), "{out:?}");
    let out = see(&mut core, key(Some("c")), 103);
    assert_eq!(actions(&out), vec![Action::StopGraceful]);

    // Nobody could replace us (c is stopped): out of the key is enough.
    let mut alone = key(None);
    alone.members.get_mut("c").unwrap().state = Some("stopped".into());
    let (mut core, _) = told_to_stop();
    let out = see(&mut core, alone, 102);
    assert_eq!(actions(&out), vec![Action::StopGraceful]);

    // Never past the bound: 2 × loop_wait, and shutdown_handover_timeout (10 s here).
    let (mut core, _) = told_to_stop();
    see(&mut core, key(None), 102);
    let bound = 101 + (2 * sync.loop_wait).min(sync.handover_timeout).as_secs();
    let out = core.step(Input::Tick, at(bound - 1));
    assert!(!actions(&out).contains(&Action::StopGraceful), "{out:?}");
    let out = core.step(Input::Tick, at(bound));
    assert_eq!(actions(&out), vec![Action::StopGraceful]);
}

#[test]
fn a_replica_told_to_stop_decides_on_a_view_read_after_it_was_told() {
    // b leads, c is its synchronous standby; we (a) are another running replica.
    let (key, see) = (b_leads_with_sync_standby, seen_as_bs_replica);
    let mut core = HaCore::new(me());
    see(&mut core, key(Some("c")), 100);
    // Our view says c; the leader may have listed us since: no stop before a fresh view, and
    // the leader is told not to list us.
    let out = core.step(Input::Shutdown, at(101));
    assert_eq!(actions(&out), vec![Action::ReleaseSync]);
    assert!(core.wants_observation());
    // It did: the key names us now. We leave it as a synchronous standby does.
    let out = see(&mut core, key(Some("a")), 101);
    assert!(!actions(&out).contains(&Action::StopGraceful), "{out:?}");
    let out = see(&mut core, key(Some("c")), 102);
    assert_eq!(actions(&out), vec![Action::StopGraceful]);

    // The fresh view still names c: we stop at once.
    let mut core = HaCore::new(me());
    see(&mut core, key(Some("c")), 100);
    core.step(Input::Shutdown, at(101));
    let out = see(&mut core, key(Some("c")), 101);
    assert_eq!(actions(&out), vec![Action::StopGraceful]);

    // Asynchronous replication: nothing to wait for.
    let mut core = HaCore::new(me());
    observe(
        &mut core,
        Some(view(Some("b"))),
        replica(Some("b")),
        at(100),
    );
    let out = core.step(Input::Shutdown, at(101));
    assert_eq!(actions(&out), vec![Action::StopGraceful]);
}

/// Primary `a` at `wal` with ssn `b` in force (strict `on`), b acknowledging `b_at` and c
/// streaming at the primary's position.
fn primary_with_standbys(wal: u64, b_at: u64) -> PgFacts {
    let row = |name: &str, sync_state: &str, lsn: u64| crate::postgres::ReplicationRow {
        usename: "replicator".into(),
        application_name: name.into(),
        client_addr: None,
        state: "streaming".into(),
        sync_state: sync_state.into(),
        sync_priority: 1,
        ack_lsn: Some(lsn),
    };
    PgFacts {
        wal_position: wal,
        synchronous_standby_names: Some("b".into()),
        replication: vec![row("b", "sync", b_at), row("c", "async", wal)],
        ..primary()
    }
}

/// Leader `a` in strict `on` mode with `b` its synchronous standby: `b` keeps confirming, a
/// cycle behind, then stops at 1100 (its WAL sender lives on) while `others` (streaming at
/// the primary's position, as `primary_with_standbys`'s c) do not. Returns the actions and
/// message of the cycle one second before the stall limit, then of the one at the limit.
fn b_stalls(others: bool) -> [(Vec<(ActionId, Action)>, String); 2] {
    let strict = Policy {
        sync: crate::ha::sync::SyncPolicy {
            mode: crate::config::SyncMode::On,
            strict: true,
            ..Default::default()
        },
        loop_wait: S,
        retry_timeout: 2 * S,
        ..policy()
    };
    let mut core = HaCore::new(me());
    lead(&mut core, at(100));
    let mut v = view(Some("a"));
    for m in v.members.values_mut() {
        m.state = Some("running".into());
    }
    let v = with_sync_key(v, "a", Some("b"));
    let facts = |wal: u64, b_at: u64| {
        let mut pg = primary_with_standbys(wal, b_at);
        if !others {
            pg.replication.retain(|r| r.application_name == "b");
        }
        pg
    };
    // Each observation as the primary, its lease renewal answered.
    let mut seen = |pg: PgFacts, t: u64| {
        let out = observe_with(&mut core, Some(v.clone()), pg, strict.clone(), at(t));
        for (id, a) in &out {
            if matches!(a, Action::RenewLock { .. }) {
                complete(&mut core, *id, answered(true, at(t)), at(t));
            }
        }
        (out, core.message.clone())
    };
    for (t, wal) in [(101, 1100), (102, 1200)] {
        let (out, _) = seen(facts(wal, wal - 100), t);
        assert_eq!(sync_changes(&out), vec![], "at {t}: {out:?}");
    }
    // First seen still at 1100 at 102.
    let limit = crate::ha::sync::stall_limit(strict.loop_wait, strict.retry_timeout);
    let stalled_at = 102;
    [
        seen(facts(1300, 1100), stalled_at + limit.as_secs() - 1),
        seen(facts(1300, 1100), stalled_at + limit.as_secs()),
    ]
}

/// The changes of synchronous replication among `out`: key writes and ssn settings.
fn sync_changes(out: &[(ActionId, Action)]) -> Vec<Action> {
    actions(out)
        .into_iter()
        .filter(|a| {
            matches!(
                a,
                Action::WriteSync { .. } | Action::SetSyncStandbyNames { .. }
            )
        })
        .collect()
}

#[test]
fn a_synchronous_standby_that_stops_confirming_is_replaced_before_its_wal_sender_times_out() {
    let [(before, _), (out, message)] = b_stalls(true);
    // Commits wait for b, but not for long.
    assert_eq!(sync_changes(&before), vec![], "{before:?}");
    // The key lets go of b first (then ssn moves to c, as when a standby leaves).
    let key = actions(&out)
        .into_iter()
        .find_map(|a| match a {
            Action::WriteSync { value, .. } => Some(value),
            _ => None,
        })
        .expect("the sync key rewritten");
    assert_eq!(key.sync_standby, None, "{out:?}");
    assert!(message.contains("b confirmed no WAL"), "{message}");
}

/// With no other standby, strict mode would make commits wait for its placeholder instead:
/// b stays listed and named, so the commits waiting go through as soon as its link heals.
#[test]
fn in_strict_mode_a_stalled_standby_with_no_other_to_replace_it_stays_listed() {
    let [_, (out, message)] = b_stalls(false);
    assert_eq!(sync_changes(&out), vec![], "{out:?}");
    assert!(message.contains("b confirmed no WAL"), "{message}");
    assert!(message.contains("still waited for"), "{message}");
}
