//! Synchronous replication, the leader's half (Patroni §4.10): which standbys must acknowledge
//! a commit (`synchronous_standby_names`, "ssn") and which members the `sync` key names as
//! voters for the next leader, changed one step at a time in an order that keeps the key true.
//!
//! # The rule every step keeps
//! A commit is acknowledged once `k` of the standbys listed in ssn (`S`) have it (PostgreSQL's
//! `FIRST k` picks which `k` by priority, but that choice moves as standbys come and go, so
//! it proves no more than `ANY k`). The key names voters `V` and a quorum `q`: a member may take
//! over only after `q + 1` voters (itself included when it is one) have answered and none of
//! them is ahead of it (`race`). In `synchronous_mode: on` the key has no quorum (`q = 0`) and
//! ssn needs every listed standby (`k = |S|`): any single voter will do. Every acknowledged
//! commit is then on some voter of every such set of `q + 1` when both hold:
//! * for commits acknowledged under the ssn in force: `q + k ≥ |V| + |S \ V|`
//!   ([`compatible`]; in `on` it says `V ⊆ S`);
//! * for earlier ones, which are at or before the primary's position when that ssn was first
//!   seen in force (the [`Mark`]): at least `|V| − q` voters have reached the mark, or the key
//!   only lost voters and did not lower its quorum ([`history_kept`]).
//!
//! So when a change of ssn would break the first rule, the key shrinks first (a member leaves
//! the key before it leaves ssn); a member joins the key only once PostgreSQL reports it
//! synchronous at or past the mark. While the key names nobody who may take over (`q + 1 >
//! |V|`) both rules hold trivially: no member but the leader itself may be promoted.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::config::SyncMode;
use crate::dcs::{ClusterView, SyncState};
use crate::postgres::ReplicationRow;
use crate::postgres::sync_names::{self, Parsed, SyncRule};

use super::types::{MonoTime, PgFacts};

/// The synchronous replication settings in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncPolicy {
    /// `synchronous_mode`.
    pub mode: SyncMode,
    /// `synchronous_mode_strict`: with no standby to wait for, commits wait anyway.
    pub strict: bool,
    /// `synchronous_node_count`: how many standbys acknowledge each commit.
    pub node_count: u32,
    /// `maximum_lag_on_syncnode`: a standby further behind than this is replaced (≤ 0: never).
    pub maximum_lag_on_syncnode: i64,
}

impl Default for SyncPolicy {
    fn default() -> Self {
        SyncPolicy {
            mode: SyncMode::Off,
            strict: false,
            node_count: 1,
            maximum_lag_on_syncnode: -1,
        }
    }
}

/// How long after setting ssn the leader waits before taking its mark: a server reload
/// reaches every process within milliseconds, and until then a WAL sender still on the old
/// list may acknowledge a commit for the standbys that list names.
pub const SETTLE: Duration = Duration::from_secs(1);

/// The primary's WAL position when the ssn in force was first seen (once settled): every
/// commit acknowledged under an earlier list is at or before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// The ssn value.
    pub names: String,
    /// The primary's flush position then.
    pub lsn: u64,
    /// When it was taken.
    pub at: MonoTime,
}

/// The next change, one at a time.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Write the `sync` key.
    Key(SyncState),
    /// Set ssn; `None` gives it back to the configuration.
    Names(Option<String>),
    /// Nothing to change now; the text says what it waits for, if anything.
    Settled(Option<String>),
}

/// Voters and quorum, as the key says them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Voters {
    names: BTreeSet<String>,
    quorum: usize,
}

impl Voters {
    fn none() -> Self {
        Voters {
            names: BTreeSet::new(),
            quorum: 0,
        }
    }

    fn of(key: &SyncState) -> Self {
        Voters {
            names: key.members().into_iter().map(str::to_owned).collect(),
            quorum: key.quorum.unwrap_or(0) as usize,
        }
    }

    /// No set of `quorum + 1` voters exists: nobody but the leader may take over.
    fn blocks_takeover(&self) -> bool {
        self.quorum + 1 > self.names.len()
    }

    fn key(&self, me: &str, quorum_mode: bool) -> SyncState {
        SyncState {
            leader: Some(me.to_owned()),
            sync_standby: (!self.names.is_empty())
                .then(|| self.names.iter().cloned().collect::<Vec<_>>().join(",")),
            quorum: (quorum_mode || self.quorum > 0).then_some(self.quorum as u64),
        }
    }
}

/// Commits acknowledged under `ssn` are on one of every `quorum + 1` voters; `None` is a list
/// whose standbys cannot be known.
fn compatible(v: &Voters, ssn: Option<&Parsed>) -> bool {
    if v.blocks_takeover() {
        return true;
    }
    let Some(s) = ssn else { return false };
    let outside = s.names.iter().filter(|n| !v.names.contains(*n)).count();
    v.quorum + s.num >= v.names.len() + outside
}

/// The smallest quorum for `names` that keeps every list of `lists` [`compatible`].
fn quorum_for(names: &BTreeSet<String>, lists: &[&Parsed]) -> usize {
    lists
        .iter()
        .map(|s| {
            let outside = s.names.iter().filter(|n| !names.contains(*n)).count();
            (names.len() + outside).saturating_sub(s.num)
        })
        .max()
        .unwrap_or(0)
}

/// Moving from `old` to `new` keeps the commits acknowledged before the mark on one of every
/// `quorum + 1` new voters: `confirmed` have reached the mark.
fn history_kept(new: &Voters, old: &Voters, confirmed: &BTreeSet<String>) -> bool {
    new.blocks_takeover()
        || (new.names.is_subset(&old.names) && new.quorum >= old.quorum)
        || new.names.intersection(confirmed).count() + new.quorum >= new.names.len()
}

/// The leader's next step. `overridden`: ssn was set by an earlier step (not by the
/// configuration).
pub fn leader_step(
    me: &str,
    policy: &SyncPolicy,
    view: &ClusterView,
    pg: &PgFacts,
    mark: Option<&Mark>,
    overridden: bool,
    now: MonoTime,
) -> Step {
    let ours = view
        .sync
        .as_ref()
        .map(|s| &s.value)
        .filter(|s| s.leader.as_deref() == Some(me));
    let quorum_mode = policy.mode == SyncMode::Quorum;
    if view.unreadable("sync") {
        return Step::Settled(Some(
            "the sync key cannot be read: synchronous replication left as it is".into(),
        ));
    }
    if policy.mode == SyncMode::Off {
        if ours.is_some_and(|k| !Voters::of(k).blocks_takeover()) {
            return Step::Key(Voters::none().key(me, false));
        }
        return match overridden {
            true => Step::Names(None),
            false => Step::Settled(None),
        };
    }
    let Some(observed) = pg.synchronous_standby_names.as_deref() else {
        return Step::Settled(Some(
            "synchronous_standby_names in force is not known".into(),
        ));
    };
    let Some(key) = ours else {
        // Ours from now on, naming nobody until a standby is confirmed.
        return Step::Key(Voters::none().key(me, quorum_mode));
    };
    let current = Voters::of(key);
    let in_force = sync_names::parse(observed);
    let picked = candidates(me, policy, view, pg, &current.names);
    let (rule, num) = match policy.mode {
        SyncMode::Quorum => (
            SyncRule::Quorum,
            (policy.node_count as usize).min(picked.len()),
        ),
        _ => (SyncRule::Priority, picked.len()),
    };
    let desired = sync_names::render(rule, num, &picked, policy.strict);
    let target = sync_names::parse(&desired).expect("rendered names parse");
    let shrink = |lists: &[&Parsed]| {
        let names: BTreeSet<String> = current
            .names
            .iter()
            .filter(|n| lists.iter().all(|s| s.names.contains(*n)))
            .cloned()
            .collect();
        let quorum = current.quorum.max(quorum_for(&names, lists));
        Step::Key(Voters { names, quorum }.key(me, quorum_mode))
    };
    if !compatible(&current, in_force.as_ref()) {
        return match &in_force {
            Some(s) => shrink(&[s, &target]),
            None => Step::Key(Voters::none().key(me, quorum_mode)),
        };
    }
    // In quorum mode a standby joins through a wider list first: `ANY n` with `n` as large
    // as the key in force needs, so that the key never has to name nobody who may take over
    // on the way (shrinking it to a higher quorum would, until the new voter is confirmed).
    let wide = (quorum_mode && !compatible(&current, Some(&target)))
        .then(|| widened(&current, &target, &picked, policy.strict))
        .flatten();
    let wide_in_force = wide.as_ref().is_some_and(|(w, _)| observed == w.as_str());
    if observed != desired && !wide_in_force {
        if compatible(&current, Some(&target)) {
            return Step::Names(Some(desired));
        }
        if let Some((w, _)) = wide {
            return Step::Names(Some(w));
        }
        let s = in_force.as_ref().expect("compatible with a known list");
        return shrink(&[s, &target]);
    }
    // ssn is what we want, or the wider list on the way to it: let the key catch up with it.
    let confirmed = confirmed(pg, observed, mark, now);
    let grown = if picked.is_empty() {
        Voters::none()
    } else if quorum_mode {
        // Through the wider list the key takes the target's quorum at once: compatible with
        // both lists, so the list can then narrow to the target.
        let names = match &wide {
            Some((_, w)) if wide_in_force => w.names.iter().cloned().collect(),
            _ => target.names.iter().cloned().collect(),
        };
        let quorum = target.names.len() - target.num;
        Voters { names, quorum }
    } else {
        let keep = current.quorum == 0;
        Voters {
            names: target
                .names
                .iter()
                .filter(|n| confirmed.contains(*n) || (keep && current.names.contains(*n)))
                .cloned()
                .collect(),
            quorum: 0,
        }
    };
    if grown == current {
        let waiting: Vec<&str> = picked
            .iter()
            .filter(|n| !grown.names.contains(*n))
            .map(String::as_str)
            .collect();
        return Step::Settled((!waiting.is_empty()).then(|| {
            format!(
                "waiting for {} to be reported synchronous and holding every acknowledged commit",
                waiting.join(",")
            )
        }));
    }
    if !history_kept(&grown, &current, &confirmed) {
        let wanted = grown.names.len() - grown.quorum;
        return Step::Settled(Some(format!(
            "waiting for {wanted} synchronous standbys to confirm they hold every acknowledged commit"
        )));
    }
    Step::Key(grown.key(me, quorum_mode))
}

/// In quorum mode, the list that takes `picked` (the target's standbys) with as many
/// acknowledgements as the `current` key needs to stay true for it; `None` when the target
/// drops a voter (the key shrinks first then) or needs no more than it has.
fn widened(
    current: &Voters,
    target: &Parsed,
    picked: &[String],
    strict: bool,
) -> Option<(String, Parsed)> {
    if !current.names.iter().all(|n| target.names.contains(n)) {
        return None;
    }
    let needed = target.names.len().saturating_sub(current.quorum);
    if needed <= target.num || needed > picked.len() {
        return None;
    }
    let rendered = sync_names::render(SyncRule::Quorum, needed, picked, strict);
    let parsed = sync_names::parse(&rendered)?;
    compatible(current, Some(&parsed)).then_some((rendered, parsed))
}

/// Standbys PostgreSQL reports synchronous under `names` and at or past the mark taken for
/// them, seen in a later observation than the mark.
fn confirmed(pg: &PgFacts, names: &str, mark: Option<&Mark>, now: MonoTime) -> BTreeSet<String> {
    let Some(m) = mark.filter(|m| m.names == names && now > m.at) else {
        return BTreeSet::new();
    };
    pg.replication
        .iter()
        .filter(|r| matches!(r.sync_state.as_str(), "sync" | "quorum"))
        .filter(|r| r.ack_lsn.is_some_and(|l| l >= m.lsn))
        .map(|r| r.application_name.clone())
        .collect()
}

/// The standbys that should acknowledge commits, best first, at most `node_count` in `on`:
/// members streaming from us, running, not `nosync`; by `sync_priority`, then the current
/// voters, then how synchronous PostgreSQL reports them, then position; `nofailover` members
/// last. `maximum_lag_on_syncnode` drops laggards.
fn candidates(
    me: &str,
    policy: &SyncPolicy,
    view: &ClusterView,
    pg: &PgFacts,
    voters: &BTreeSet<String>,
) -> Vec<String> {
    fn rank(r: &ReplicationRow) -> u8 {
        match r.sync_state.as_str() {
            "sync" => 3,
            "quorum" => 2,
            "potential" => 1,
            _ => 0,
        }
    }
    let mut seen = BTreeSet::new();
    let mut c: Vec<(&ReplicationRow, i64, bool, u64)> = pg
        .replication
        .iter()
        .filter_map(|r| {
            let name = r.application_name.as_str();
            let m = view.members.get(name)?;
            let lsn = r.ack_lsn?;
            let usable = name != me && m.may_be_sync_standby();
            (usable && seen.insert(name)).then_some((r, m.sync_priority(), m.nofailover(), lsn))
        })
        .collect();
    c.sort_by(|a, b| {
        let current = |r: &ReplicationRow| voters.contains(&r.application_name);
        (b.1, current(b.0), rank(b.0), b.3)
            .cmp(&(a.1, current(a.0), rank(a.0), a.3))
            .then_with(|| a.0.application_name.cmp(&b.0.application_name))
    });
    c.sort_by_key(|x| x.2);
    if policy.maximum_lag_on_syncnode > 0 {
        let max = match c.len() {
            0 | 1 => pg.wal_position,
            _ => c.iter().map(|x| x.3).max().unwrap_or(0),
        };
        c.retain(|x| max.saturating_sub(x.3) <= policy.maximum_lag_on_syncnode as u64);
    }
    let take = match policy.mode {
        SyncMode::Quorum => c.len(),
        _ => policy.node_count.max(1) as usize,
    };
    c.into_iter()
        .take(take)
        .map(|x| x.0.application_name.clone())
        .collect()
}

/// The mark to keep after this observation: the one we have while ssn is unchanged, a new
/// one when it changed and has had [`SETTLE`] since we set it (`set_at`), none when unknown.
pub fn next_mark(
    mark: Option<Mark>,
    pg: &PgFacts,
    set_at: Option<MonoTime>,
    now: MonoTime,
) -> Option<Mark> {
    let names = pg.synchronous_standby_names.as_ref()?;
    if mark.as_ref().is_some_and(|m| &m.names == names) {
        return mark;
    }
    if set_at.is_some_and(|t| now < t + SETTLE) {
        return None;
    }
    Some(Mark {
        names: names.clone(),
        lsn: pg.wal_position,
        at: now,
    })
}

/// Standbys that have stopped confirming WAL. A standby cut off from the primary keeps its WAL
/// sender, and with it its place in ssn, until `wal_sender_timeout` (a minute by default):
/// meanwhile every commit waits for it, in `on` mode as in strict. So the leader follows each
/// standby's acknowledged position while its own is ahead, on its own monotonic clock, and
/// takes one whose position has not moved for a while as gone, as its WAL sender soon will be.
/// A standby that confirms again (its position moves) is a candidate again at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Per standby behind the primary: the position it acknowledges, first seen when.
    behind: BTreeMap<String, (u64, MonoTime)>,
}

impl Progress {
    /// Takes in one observation of the primary. A standby with two WAL senders (a new one
    /// beside the one its old connection left) counts by the one further on.
    pub fn observe(&mut self, pg: &PgFacts, now: MonoTime) {
        let mut best: BTreeMap<&str, u64> = BTreeMap::new();
        for r in &pg.replication {
            if let Some(lsn) = r.ack_lsn {
                let b = best.entry(r.application_name.as_str()).or_insert(lsn);
                *b = (*b).max(lsn);
            }
        }
        self.behind = best
            .into_iter()
            .filter(|(_, lsn)| *lsn < pg.wal_position)
            .map(|(name, lsn)| {
                let since = match self.behind.get(name) {
                    Some((seen, at)) if *seen == lsn => *at,
                    _ => now,
                };
                (name.to_owned(), (lsn, since))
            })
            .collect();
    }

    /// Forgets everything: not a primary, or nothing known of its WAL senders.
    pub fn clear(&mut self) {
        self.behind.clear();
    }

    /// Standbys behind the primary whose position has not moved for `limit`.
    pub fn stalled(&self, limit: Duration, now: MonoTime) -> BTreeSet<&str> {
        self.behind
            .iter()
            .filter(|(_, (_, since))| now.since(*since) >= limit)
            .map(|(name, _)| name.as_str())
            .collect()
    }
}

/// Of the `stalled` standbys, those the leader stops waiting for: all of them, unless the mode
/// is strict and no other standby could be waited for instead. Commits would then wait for
/// the strict placeholder, which gains nothing, and a standby coming back would have to be
/// listed again before they go on; kept listed, it acknowledges them as soon as its link
/// heals (its WAL sender lingers, see [`Progress`]).
pub fn not_waited_for<'a>(
    stalled: BTreeSet<&'a str>,
    me: &str,
    policy: &SyncPolicy,
    view: &ClusterView,
    pg: &PgFacts,
) -> BTreeSet<&'a str> {
    if !policy.strict || stalled.is_empty() {
        return stalled;
    }
    let rest = without_standbys(pg, &stalled);
    match candidates(me, policy, view, &rest, &BTreeSet::new()).is_empty() {
        true => BTreeSet::new(),
        false => stalled,
    }
}

/// `pg` as the leader's synchronous steps see it: without the WAL senders of `gone`.
pub fn without_standbys<'a>(pg: &'a PgFacts, gone: &BTreeSet<&str>) -> Cow<'a, PgFacts> {
    if gone.is_empty() {
        return Cow::Borrowed(pg);
    }
    let mut seen = pg.clone();
    seen.replication
        .retain(|r| !gone.contains(r.application_name.as_str()));
    Cow::Owned(seen)
}

/// How long a standby may go without confirming WAL the primary has before the leader takes it
/// as gone: a cycle to see it, and as long as an operation of the store may be retried (20 s
/// with Patroni's defaults, against `wal_sender_timeout`'s 60 s).
pub fn stall_limit(loop_wait: Duration, retry_timeout: Duration) -> Duration {
    loop_wait + retry_timeout
}

/// Before the store names this member's data directory as the cluster's, in a synchronous
/// mode: the key taken over, naming nobody, unless it is ours already.
pub fn ownership(me: &str, policy: &SyncPolicy, view: &ClusterView) -> Option<SyncState> {
    let ours = view
        .sync
        .as_ref()
        .is_some_and(|s| s.value.leader.as_deref() == Some(me));
    (policy.mode != SyncMode::Off && !ours)
        .then(|| Voters::none().key(me, policy.mode == SyncMode::Quorum))
}

/// Before this member becomes the primary in a synchronous mode: the `sync` key naming nobody,
/// unless it already does and is ours.
pub fn revocation(me: &str, policy: &SyncPolicy, view: &ClusterView) -> Option<SyncState> {
    if policy.mode == SyncMode::Off {
        return None;
    }
    let done = view.sync.as_ref().is_some_and(|s| {
        s.value.leader.as_deref() == Some(me) && Voters::of(&s.value).blocks_takeover()
    });
    (!done).then(|| Voters::none().key(me, policy.mode == SyncMode::Quorum))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcs::{Member, Version, Versioned};
    use crate::ha::types::DataDir;

    const PH: &str = sync_names::STRICT_PLACEHOLDER;

    fn policy(mode: SyncMode) -> SyncPolicy {
        SyncPolicy {
            mode,
            ..SyncPolicy::default()
        }
    }

    fn view(key: Option<(&str, Option<&str>, Option<u64>)>) -> ClusterView {
        let mut v = ClusterView::default();
        for n in ["a", "b", "c", "d"] {
            let m = Member {
                state: Some("running".into()),
                ..Member::default()
            };
            v.members.insert(n.into(), m);
        }
        v.sync = key.map(|(leader, standby, quorum)| Versioned {
            value: SyncState {
                leader: Some(leader.into()),
                sync_standby: standby.map(str::to_owned),
                quorum,
            },
            version: Version("7".into()),
        });
        v
    }

    /// Primary `a` at 1000 with ssn `names` in force and these WAL senders.
    fn pg(names: &str, rows: &[(&str, &str, u64)]) -> PgFacts {
        PgFacts {
            data: DataDir::Ready {
                sysid: "1".into(),
                was_primary: true,
            },
            up: true,
            in_recovery: Some(false),
            timeline: Some(1),
            wal_position: 1000,
            upstream: None,
            streaming: false,
            synchronous_standby_names: Some(names.into()),
            replication: rows
                .iter()
                .map(|(n, state, lsn)| ReplicationRow {
                    usename: "r".into(),
                    application_name: (*n).into(),
                    client_addr: None,
                    state: "streaming".into(),
                    sync_state: (*state).into(),
                    sync_priority: 1,
                    ack_lsn: Some(*lsn),
                })
                .collect(),
            supervised: true,
        }
    }

    fn key(standby: Option<&str>, quorum: Option<u64>) -> Step {
        Step::Key(SyncState {
            leader: Some("a".into()),
            sync_standby: standby.map(str::to_owned),
            quorum,
        })
    }

    fn step(p: &SyncPolicy, v: &ClusterView, pg: &PgFacts, mark: Option<&Mark>) -> Step {
        leader_step(
            "a",
            p,
            v,
            pg,
            mark,
            true,
            MonoTime(Duration::from_secs(100)),
        )
    }

    fn mark(names: &str, lsn: u64) -> Mark {
        Mark {
            names: names.into(),
            lsn,
            at: MonoTime(Duration::from_secs(90)),
        }
    }

    #[test]
    fn on_lists_a_standby_then_names_it_once_it_is_synchronous_at_the_mark() {
        let p = policy(SyncMode::On);
        // No key yet: take it, naming nobody.
        assert_eq!(step(&p, &view(None), &pg("", &[]), None), key(None, None));
        let v = view(Some(("a", None, None)));
        let rows = [("b", "async", 1000), ("c", "async", 900)];
        assert_eq!(
            step(&p, &v, &pg("", &rows), None),
            Step::Names(Some("b".into()))
        );
        // Listed, but not yet seen synchronous past the mark: the key waits.
        let rows = [("b", "sync", 990), ("c", "async", 900)];
        assert!(matches!(
            step(&p, &v, &pg("b", &rows), Some(&mark("b", 1000))),
            Step::Settled(Some(_))
        ));
        let rows = [("b", "sync", 1000), ("c", "async", 900)];
        assert_eq!(
            step(&p, &v, &pg("b", &rows), Some(&mark("b", 1000))),
            key(Some("b"), None)
        );
        // A mark taken in this very observation proves nothing yet.
        let fresh = Mark {
            at: MonoTime(Duration::from_secs(100)),
            ..mark("b", 1000)
        };
        assert!(matches!(
            step(&p, &v, &pg("b", &rows), Some(&fresh)),
            Step::Settled(Some(_))
        ));
    }

    #[test]
    fn a_standby_leaves_the_key_before_it_leaves_the_list() {
        let p = policy(SyncMode::On);
        let v = view(Some(("a", Some("b"), None)));
        // b went away: the key first, then the list (empty, or the placeholder when strict).
        assert_eq!(step(&p, &v, &pg("b", &[]), None), key(None, None));
        let emptied = view(Some(("a", None, None)));
        assert_eq!(
            step(&p, &emptied, &pg("b", &[]), None),
            Step::Names(Some(String::new()))
        );
        let strict = SyncPolicy {
            strict: true,
            ..p.clone()
        };
        assert_eq!(
            step(&strict, &emptied, &pg("b", &[]), None),
            Step::Names(Some(PH.into()))
        );
        // c preferred over b (sync_priority): b leaves the key, then the list changes.
        let mut v = view(Some(("a", Some("b"), None)));
        v.members.get_mut("c").unwrap().tags = Some(
            serde_json::json!({"sync_priority": 5})
                .as_object()
                .unwrap()
                .clone(),
        );
        let rows = [("b", "sync", 1000), ("c", "async", 1000)];
        assert_eq!(step(&p, &v, &pg("b", &rows), None), key(None, None));
    }

    #[test]
    fn nosync_members_and_laggards_are_never_chosen() {
        let mut v = view(Some(("a", None, None)));
        v.members.get_mut("b").unwrap().tags = Some(
            serde_json::json!({"nosync": true})
                .as_object()
                .unwrap()
                .clone(),
        );
        let p = SyncPolicy {
            maximum_lag_on_syncnode: 50,
            node_count: 2,
            ..policy(SyncMode::On)
        };
        let rows = [
            ("b", "async", 1000),
            ("c", "async", 1000),
            ("d", "async", 900),
        ];
        assert_eq!(
            step(&p, &v, &pg("", &rows), None),
            Step::Names(Some("c".into()))
        );
    }

    #[test]
    fn quorum_lists_every_standby_and_publishes_the_quorum_once_confirmed() {
        let p = policy(SyncMode::Quorum);
        let v = view(Some(("a", None, Some(0))));
        let rows = [("b", "async", 1000), ("c", "async", 1000)];
        assert_eq!(
            step(&p, &v, &pg("", &rows), None),
            Step::Names(Some("ANY 1 (b,c)".into()))
        );
        let rows = [("b", "quorum", 1000), ("c", "quorum", 800)];
        assert_eq!(
            step(
                &p,
                &v,
                &pg("ANY 1 (b,c)", &rows),
                Some(&mark("ANY 1 (b,c)", 1000))
            ),
            key(Some("b,c"), Some(1))
        );
        // A third standby: ANY 1 (b,c,d) would let a commit be acknowledged by d alone while
        // b and c could elect each other. Raising the key's quorum to 2 first would let
        // nobody take over meanwhile; instead the list takes d with two acknowledgements...
        let v = view(Some(("a", Some("b,c"), Some(1))));
        let rows = [
            ("b", "quorum", 1000),
            ("c", "quorum", 1000),
            ("d", "async", 1000),
        ];
        assert_eq!(
            step(&p, &v, &pg("ANY 1 (b,c)", &rows), None),
            Step::Names(Some("ANY 2 (b,c,d)".into()))
        );
        // ...the key takes d and the target's quorum once a voter has every earlier commit...
        let wide = [
            ("b", "quorum", 1000),
            ("c", "quorum", 1000),
            ("d", "quorum", 1000),
        ];
        let m = mark("ANY 2 (b,c,d)", 1000);
        assert_eq!(
            step(&p, &v, &pg("ANY 2 (b,c,d)", &wide), Some(&m)),
            key(Some("b,c,d"), Some(2))
        );
        // ...and the list narrows to the target. At no step did the key block a takeover.
        let v = view(Some(("a", Some("b,c,d"), Some(2))));
        assert_eq!(
            step(&p, &v, &pg("ANY 2 (b,c,d)", &wide), Some(&m)),
            Step::Names(Some("ANY 1 (b,c,d)".into()))
        );
    }

    #[test]
    fn quorum_takes_a_second_standby_without_blocking_a_takeover() {
        // The bench's case: a new leader with one voter (b, quorum 0) and c back. The key
        // used to go to {b} with quorum 1 (nobody may take over) for a couple of seconds.
        let p = policy(SyncMode::Quorum);
        let v = view(Some(("a", Some("b"), Some(0))));
        let rows = [("b", "quorum", 1000), ("c", "async", 1000)];
        assert_eq!(
            step(&p, &v, &pg("ANY 1 (b)", &rows), None),
            Step::Names(Some("ANY 2 (b,c)".into()))
        );
        let both = [("b", "quorum", 1000), ("c", "quorum", 1000)];
        let m = mark("ANY 2 (b,c)", 1000);
        // Not before a voter is confirmed past the mark.
        assert!(matches!(
            step(&p, &v, &pg("ANY 2 (b,c)", &both), None),
            Step::Settled(Some(_))
        ));
        assert_eq!(
            step(&p, &v, &pg("ANY 2 (b,c)", &both), Some(&m)),
            key(Some("b,c"), Some(1))
        );
        let v = view(Some(("a", Some("b,c"), Some(1))));
        assert_eq!(
            step(&p, &v, &pg("ANY 2 (b,c)", &both), Some(&m)),
            Step::Names(Some("ANY 1 (b,c)".into()))
        );
    }

    #[test]
    fn quorum_shrinks_the_list_before_lowering_the_quorum() {
        let p = policy(SyncMode::Quorum);
        let v = view(Some(("a", Some("b,c"), Some(1))));
        // c went away: ANY 1 (b) is safe under the key as it is...
        let rows = [("b", "quorum", 1000)];
        assert_eq!(
            step(&p, &v, &pg("ANY 1 (b,c)", &rows), None),
            Step::Names(Some("ANY 1 (b)".into()))
        );
        // ...and the key lowers its quorum once b has everything up to the mark.
        let m = mark("ANY 1 (b)", 1000);
        assert_eq!(
            step(&p, &v, &pg("ANY 1 (b)", &rows), Some(&m)),
            key(Some("b"), Some(0))
        );
        let behind = [("b", "quorum", 999)];
        assert!(matches!(
            step(&p, &v, &pg("ANY 1 (b)", &behind), Some(&m)),
            Step::Settled(Some(_))
        ));
    }

    #[test]
    fn an_unknown_list_empties_the_key_and_off_hands_the_list_back() {
        let p = policy(SyncMode::On);
        let v = view(Some(("a", Some("b"), None)));
        assert_eq!(step(&p, &v, &pg("*", &[]), None), key(None, None));
        let off = policy(SyncMode::Off);
        assert_eq!(step(&off, &v, &pg("b", &[]), None), key(None, None));
        let emptied = view(Some(("a", None, None)));
        assert_eq!(step(&off, &emptied, &pg("b", &[]), None), Step::Names(None));
        assert_eq!(
            leader_step(
                "a",
                &off,
                &emptied,
                &pg("", &[]),
                None,
                false,
                MonoTime::ZERO
            ),
            Step::Settled(None)
        );
    }

    #[test]
    fn a_new_primary_revokes_the_former_voters_first() {
        let p = policy(SyncMode::On);
        let v = view(Some(("b", Some("a"), None)));
        assert_eq!(
            revocation("a", &p, &v),
            Some(SyncState {
                leader: Some("a".into()),
                sync_standby: None,
                quorum: None,
            })
        );
        assert_eq!(revocation("a", &p, &view(Some(("a", None, None)))), None);
        assert_eq!(revocation("a", &policy(SyncMode::Off), &v), None);
    }

    #[test]
    fn the_mark_waits_for_the_list_to_settle() {
        let p = pg("b", &[]);
        let t = |s| MonoTime(Duration::from_secs(s));
        assert_eq!(next_mark(None, &p, Some(t(10)), t(10)), None);
        let m = next_mark(None, &p, Some(t(10)), t(11)).unwrap();
        assert_eq!((m.lsn, m.at), (1000, t(11)));
        // Kept while the list is unchanged.
        let later = PgFacts {
            wal_position: 2000,
            ..p.clone()
        };
        assert_eq!(next_mark(Some(m.clone()), &later, None, t(20)), Some(m));
    }

    #[test]
    fn a_standby_whose_position_stands_still_behind_the_primary_is_taken_as_gone() {
        let limit = Duration::from_secs(3);
        let t = |s| MonoTime(Duration::from_secs(s));
        let mut p = Progress::default();
        // b behind at 900 from 10 on; c at the primary's position; d moving.
        p.observe(&pg("b", &[("b", "sync", 900), ("c", "async", 1000)]), t(10));
        p.observe(
            &pg(
                "b",
                &[
                    ("b", "sync", 900),
                    ("c", "async", 1000),
                    ("d", "async", 950),
                ],
            ),
            t(12),
        );
        assert!(p.stalled(limit, t(12)).is_empty());
        p.observe(
            &pg(
                "b",
                &[
                    ("b", "sync", 900),
                    ("c", "async", 1000),
                    ("d", "async", 960),
                ],
            ),
            t(13),
        );
        assert_eq!(p.stalled(limit, t(13)), BTreeSet::from(["b"]));
        let facts = pg("b", &[("b", "sync", 900), ("c", "async", 1000)]);
        let seen = without_standbys(&facts, &p.stalled(limit, t(13)));
        let names: Vec<&str> = seen
            .replication
            .iter()
            .map(|r| r.application_name.as_str())
            .collect();
        assert_eq!(names, ["c"]);
        // With b out of sight, the leader moves to c as if b had gone.
        let v = view(Some(("a", Some("b"), None)));
        assert_eq!(
            step(&policy(SyncMode::On), &v, &seen, None),
            key(None, None)
        );
        // A second WAL sender for b (it connected again) that moves: b counts by it.
        p.observe(
            &pg(
                "b",
                &[("b", "sync", 900), ("b", "sync", 980), ("c", "async", 1000)],
            ),
            t(14),
        );
        assert!(p.stalled(limit, t(16)).is_empty());
        // An idle primary: a standby at its position is not behind, however long.
        p.observe(&pg("b", &[("b", "sync", 1000)]), t(18));
        assert!(p.stalled(limit, t(60)).is_empty());
        // Forgotten when no longer a primary.
        p.observe(&pg("b", &[("b", "sync", 900)]), t(20));
        p.clear();
        p.observe(&pg("b", &[("b", "sync", 900)]), t(30));
        assert!(p.stalled(limit, t(31)).is_empty());
    }
}
