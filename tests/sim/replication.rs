//! The replication model: which WAL each member holds, which commits the primary's clients were
//! told are committed, and the WAL senders a primary reports (`pg_stat_replication`).
//!
//! WAL is a line of positions on a branch: initdb starts a branch, a promotion forks one off
//! the branch the member was on at its position. A member holds a commit `(branch, lsn)` when
//! that position is on its own line: its branch up to its position, or an ancestor up to where
//! the line forked off it. A replica copying from its upstream takes the upstream's line (when
//! it had diverged, that is what pg_rewind would leave it with).

use std::collections::BTreeMap;

use pgwarden::postgres::ReplicationRow;
use pgwarden::postgres::sync_names;

#[derive(Debug, Default)]
pub struct Wal {
    /// Each branch's parent and the position it forked off at (`None`: an initdb).
    branches: Vec<Option<(usize, u64)>>,
    /// The highest acknowledged commit on each branch.
    pub acks: BTreeMap<usize, u64>,
}

impl Wal {
    /// A branch for a new system (initdb).
    pub fn root(&mut self) -> usize {
        self.branches.push(None);
        self.branches.len() - 1
    }

    /// A branch forked off `from` at `at` (a promotion).
    pub fn fork(&mut self, from: usize, at: u64) -> usize {
        self.branches.push(Some((from, at)));
        self.branches.len() - 1
    }

    /// The line `(branch, pos)` includes position `x` of branch `b`.
    pub fn holds(&self, line: (usize, u64), b: usize, x: u64) -> bool {
        let (mut cur, mut limit) = line;
        loop {
            if cur == b {
                return x <= limit;
            }
            match self.branches.get(cur).copied().flatten() {
                Some((parent, fork)) => {
                    cur = parent;
                    limit = limit.min(fork);
                }
                None => return false,
            }
        }
    }

    /// Records that commits on `branch` up to `lsn` were acknowledged.
    pub fn ack(&mut self, branch: usize, lsn: u64) {
        let a = self.acks.entry(branch).or_insert(0);
        *a = (*a).max(lsn);
    }

    /// The first acknowledged commit the line lacks.
    pub fn missing_ack(&self, line: (usize, u64)) -> Option<(usize, u64)> {
        self.acks
            .iter()
            .map(|(b, x)| (*b, *x))
            .find(|(b, x)| !self.holds(line, *b, *x))
    }
}

/// A standby streaming from a primary: its name and how far it has the primary's line.
pub struct Standby {
    pub name: String,
    pub pos: u64,
}

/// What a primary whose `synchronous_standby_names` is `names`, at `wal`, has acknowledged to
/// its clients, given its standbys: up to where `num` listed ones have it (all of it when
/// asynchronous, nothing when too few are there).
pub fn acknowledged(names: &str, wal: u64, standbys: &[Standby]) -> Option<u64> {
    let Some(parsed) = sync_names::parse(names) else {
        // `*`: any standby.
        return standbys.iter().map(|s| s.pos.min(wal)).max();
    };
    if parsed.num == 0 {
        return Some(wal);
    }
    let mut listed: Vec<u64> = standbys
        .iter()
        .filter(|s| parsed.names.contains(&s.name))
        .map(|s| s.pos.min(wal))
        .collect();
    listed.sort_unstable_by(|a, b| b.cmp(a));
    listed.get(parsed.num - 1).copied()
}

/// The primary's `pg_stat_replication`.
pub fn rows(names: &str, standbys: &[Standby]) -> Vec<ReplicationRow> {
    let parsed = sync_names::parse(names);
    let quorum = names.trim_start().to_ascii_uppercase().starts_with("ANY");
    standbys
        .iter()
        .map(|s| {
            let listed = parsed
                .as_ref()
                .is_some_and(|p| p.num > 0 && p.names.contains(&s.name));
            ReplicationRow {
                usename: "replicator".into(),
                application_name: s.name.clone(),
                client_addr: None,
                state: "streaming".into(),
                sync_state: match (listed, quorum) {
                    (false, _) => "async",
                    (true, true) => "quorum",
                    (true, false) => "sync",
                }
                .into(),
                sync_priority: 0,
                ack_lsn: Some(s.pos),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fork_holds_its_parent_up_to_the_fork_only() {
        let mut w = Wal::default();
        let a = w.root();
        let b = w.fork(a, 500);
        assert!(w.holds((b, 900), a, 500));
        assert!(!w.holds((b, 900), a, 600));
        assert!(w.holds((b, 900), b, 900));
        assert!(!w.holds((a, 900), b, 600));
        let other = w.root();
        assert!(!w.holds((other, 900), a, 1));
    }

    #[test]
    fn acknowledgements_follow_the_list() {
        let s = |n: &str, pos| Standby {
            name: n.into(),
            pos,
        };
        let st = [s("m1", 900), s("m2", 800)];
        assert_eq!(acknowledged("", 1000, &st), Some(1000));
        assert_eq!(acknowledged("m2", 1000, &st), Some(800));
        assert_eq!(acknowledged("2 (m1,m2)", 1000, &st), Some(800));
        assert_eq!(acknowledged("ANY 1 (m1,m2)", 1000, &st), Some(900));
        assert_eq!(acknowledged("m3", 1000, &st), None);
    }
}
