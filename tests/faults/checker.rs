//! What the checker concludes from the workload's record, and whether the cluster is whole.
//! The figures are defined here once:
//! - **lost writes**: acknowledged ids missing from the primary once the cluster is whole;
//! - **two-writer time**: how long two members were seen accepting writes at once. A member
//!   accepts writes from one acknowledged probe write to the next when no attempt in between
//!   failed, and for 25 ms either side of every acknowledged one; the figure is the time
//!   covered by two members at once (so two writes 50 ms apart on two members count, which
//!   errs on the side of reporting);
//! - **time to a primary**: from the heal to the first client write acknowledged after it;
//! - **longest gap**: the longest time without an acknowledged client write in the round;
//! - **time to whole**: from the heal until every member answers, one is a primary streaming to
//!   all the others, each of them streams, and the store names that primary as the holder of
//!   the leader lock (read by the test from the store itself: `until_whole` in faults.rs).

use std::collections::HashSet;

use super::cluster::member_io;
use super::workload::{Endpoint, ProbeAttempt};

/// Half the width of the window around one acknowledged probe write.
const ACK_SLACK: f64 = 0.025;

/// Seconds during which two members accepted writes, and the intervals where they did.
pub fn two_writer_time(probes: &[ProbeAttempt], members: usize) -> (f64, Vec<(f64, f64)>) {
    let mut covers: Vec<Vec<(f64, f64)>> = vec![Vec::new(); members];
    for (m, cover) in covers.iter_mut().enumerate() {
        let mut prev: Option<f64> = None;
        for p in probes.iter().filter(|p| p.member == m) {
            match p.acked {
                Some(t) => {
                    cover.push((t - ACK_SLACK, t + ACK_SLACK));
                    if let Some(a) = prev {
                        cover.push((a, t));
                    }
                    prev = Some(t);
                }
                None => prev = None,
            }
        }
    }
    let merged: Vec<Vec<(f64, f64)>> = covers.into_iter().map(merge).collect();
    let mut both = Vec::new();
    for a in 0..members {
        for b in a + 1..members {
            both.extend(intersect(&merged[a], &merged[b]));
        }
    }
    let both = merge(both);
    (both.iter().fold(0.0, |sum, (s, e)| sum + (e - s)), both)
}

/// Sorted, overlapping intervals joined.
fn merge(mut v: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out: Vec<(f64, f64)> = Vec::new();
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// The intersection of two merged interval lists.
fn intersect(a: &[(f64, f64)], b: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        let (s, e) = (a[i].0.max(b[j].0), a[i].1.min(b[j].1));
        if s < e {
            out.push((s, e));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// The acknowledged ids missing from `present`, in order.
pub fn lost(acks: &[(i64, f64)], present: &HashSet<i64>) -> Vec<i64> {
    let mut l: Vec<i64> = acks
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !present.contains(id))
        .collect();
    l.sort_unstable();
    l
}

/// Seconds from `t` to the first acknowledgement at or after it.
pub fn first_ack_after(acks: &[(i64, f64)], t: f64) -> Option<f64> {
    acks.iter()
        .map(|(_, at)| *at)
        .filter(|at| *at >= t)
        .min_by(f64::total_cmp)
        .map(|at| at - t)
}

/// The longest time in `[from, to]` without an acknowledgement.
pub fn longest_gap(acks: &[(i64, f64)], from: f64, to: f64) -> f64 {
    let mut times: Vec<f64> = acks
        .iter()
        .map(|(_, at)| *at)
        .filter(|at| *at >= from && *at <= to)
        .collect();
    times.sort_by(f64::total_cmp);
    let mut last = from;
    let mut gap: f64 = 0.0;
    for t in times {
        gap = gap.max(t - last);
        last = t;
    }
    gap.max(to - last)
}

/// The cluster is whole: every member answers, exactly one is a primary, it streams to all
/// the others and each of them streams. The primary's index, or what is missing.
pub async fn whole(members: &[Endpoint]) -> Result<usize, String> {
    let mut primary = None;
    for (i, m) in members.iter().enumerate() {
        let rec = member_io::sql(&m.host, m.port, "SELECT pg_is_in_recovery()::text")
            .await
            .map_err(|e| format!("m{i}: {e}"))?;
        if rec.first().map(String::as_str) == Some("false") {
            if let Some(p) = primary {
                return Err(format!("m{p} and m{i} are both primaries"));
            }
            primary = Some(i);
        } else {
            let st = member_io::sql(&m.host, m.port, "SELECT status FROM pg_stat_wal_receiver")
                .await
                .map_err(|e| format!("m{i}: {e}"))?;
            if st.first().map(String::as_str) != Some("streaming") {
                return Err(format!("m{i}: wal receiver {st:?}"));
            }
        }
    }
    let p = primary.ok_or("no primary")?;
    let streaming = member_io::sql(
        &members[p].host,
        members[p].port,
        "SELECT count(*)::text FROM pg_stat_replication WHERE state = 'streaming'",
    )
    .await
    .map_err(|e| format!("m{p}: {e}"))?;
    match streaming.first().and_then(|n| n.parse::<usize>().ok()) {
        Some(n) if n == members.len() - 1 => Ok(p),
        n => Err(format!("m{p} streams to {n:?} replicas")),
    }
}

/// The ids the primary at `ep` holds.
pub async fn ids_on(ep: &Endpoint) -> Result<HashSet<i64>, String> {
    let rows = member_io::sql(&ep.host, ep.port, "SELECT id::text FROM fault_writes").await?;
    rows.iter()
        .map(|r| r.parse::<i64>().map_err(|e| e.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(member: usize, _sent: f64, acked: Option<f64>) -> ProbeAttempt {
        ProbeAttempt { member, acked }
    }

    #[test]
    fn one_writer_after_another_is_no_overlap() {
        // m0 writes until 1.0, then fails; m1 writes from 1.3.
        let mut v = Vec::new();
        for k in 0..=20 {
            v.push(p(0, k as f64 * 0.05, Some(k as f64 * 0.05 + 0.001)));
        }
        v.push(p(0, 1.05, None));
        for k in 26..40 {
            v.push(p(1, k as f64 * 0.05, Some(k as f64 * 0.05 + 0.001)));
        }
        assert_eq!(two_writer_time(&v, 2).0, 0.0);
    }

    #[test]
    fn two_members_writing_together_are_counted() {
        let mut v = Vec::new();
        for k in 0..=20 {
            v.push(p(0, k as f64 * 0.05, Some(k as f64 * 0.05)));
            if k >= 10 {
                v.push(p(1, k as f64 * 0.05, Some(k as f64 * 0.05)));
            }
        }
        let (t, spans) = two_writer_time(&v, 2);
        assert!((t - 0.55).abs() < 1e-9, "{t} {spans:?}");
    }

    #[test]
    fn a_failed_attempt_ends_a_writing_span() {
        let v = vec![
            p(0, 0.0, Some(0.0)),
            p(0, 0.5, None),
            p(0, 1.0, Some(1.0)),
            p(1, 0.5, Some(0.5)),
        ];
        assert_eq!(two_writer_time(&v, 2).0, 0.0);
    }

    #[test]
    fn gaps_and_losses() {
        let acks = vec![(1, 0.1), (2, 0.2), (3, 2.2), (4, 2.3)];
        assert!((longest_gap(&acks, 0.0, 3.0) - 2.0).abs() < 1e-9);
        assert!((first_ack_after(&acks, 1.0).unwrap() - 1.2).abs() < 1e-9);
        let present: HashSet<i64> = [1, 2, 4].into();
        assert_eq!(lost(&acks, &present), vec![3]);
    }
}
