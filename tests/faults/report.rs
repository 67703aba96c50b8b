//! The suite's report: a row per round, and a summary per backend, agent and mode, as Markdown.

use std::collections::BTreeMap;
use std::fmt::Write;

/// What the checker found in one round.
#[derive(Clone, Debug)]
pub struct RoundResult {
    pub seed: u64,
    pub round: usize,
    pub scenario: String,
    pub backend: &'static str,
    pub agent: &'static str,
    pub mode: &'static str,
    /// What the nemesis could not do, and what the operation answered.
    pub notes: String,
    /// Acknowledged writes missing from the primary (first found in this round).
    pub lost: usize,
    /// Acknowledged client writes in the round.
    pub acked: usize,
    pub two_writer_s: f64,
    pub to_primary_s: Option<f64>,
    pub longest_gap_s: f64,
    /// `None`: not whole within the checker's limit.
    pub to_whole_s: Option<f64>,
}

impl RoundResult {
    /// What must never happen, whatever the mode: the reason, when it did.
    pub fn violation(&self, loses_nothing: bool) -> Option<String> {
        let mut v = Vec::new();
        if self.two_writer_s > 0.0 {
            v.push(format!("two writers for {:.3} s", self.two_writer_s));
        }
        if loses_nothing && self.lost > 0 {
            v.push(format!("{} acknowledged writes lost", self.lost));
        }
        match (self.to_whole_s, self.to_primary_s) {
            (None, _) => v.push("never whole again".into()),
            (Some(_), None) => {
                v.push("whole, but no client write acknowledged after the heal".into())
            }
            _ => {}
        }
        (!v.is_empty()).then(|| {
            format!(
                "seed {} round {} ({}, {}, {}, {}): {}",
                self.seed,
                self.round,
                self.scenario,
                self.backend,
                self.agent,
                self.mode,
                v.join("; ")
            )
        })
    }
}

fn secs(v: Option<f64>) -> String {
    v.map_or("never".into(), |s| format!("{s:.2}"))
}

/// The whole report.
pub fn markdown(results: &[RoundResult], header: &str) -> String {
    let mut out = String::new();
    writeln!(out, "{header}\n").unwrap();
    writeln!(
        out,
        "| backend | agent | mode | rounds | acknowledged writes | lost | two-writer time (s) | time to a primary, median / max (s) | longest write gap, median / max (s) | time to whole, median / max (s) | never whole |"
    )
    .unwrap();
    writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|").unwrap();
    let mut groups: BTreeMap<(&str, &str, &str), Vec<&RoundResult>> = BTreeMap::new();
    for r in results {
        groups
            .entry((r.backend, r.agent, r.mode))
            .or_default()
            .push(r);
    }
    for ((b, a, m), rs) in &groups {
        let med_max = |mut v: Vec<f64>| -> String {
            if v.is_empty() {
                return "–".into();
            }
            v.sort_by(f64::total_cmp);
            format!("{:.2} / {:.2}", v[v.len() / 2], v[v.len() - 1])
        };
        writeln!(
            out,
            "| {b} | {a} | {m} | {} | {} | {} | {:.3} | {} | {} | {} | {} |",
            rs.len(),
            rs.iter().map(|r| r.acked).sum::<usize>(),
            rs.iter().map(|r| r.lost).sum::<usize>(),
            rs.iter().map(|r| r.two_writer_s).sum::<f64>(),
            med_max(rs.iter().filter_map(|r| r.to_primary_s).collect()),
            med_max(rs.iter().map(|r| r.longest_gap_s).collect()),
            med_max(rs.iter().filter_map(|r| r.to_whole_s).collect()),
            rs.iter().filter(|r| r.to_whole_s.is_none()).count(),
        )
        .unwrap();
    }
    writeln!(out, "\n### Every round\n").unwrap();
    writeln!(
        out,
        "| seed | round | scenario | backend | agent | mode | lost | two-writer (s) | to a primary (s) | longest gap (s) | to whole (s) | notes |"
    )
    .unwrap();
    writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|").unwrap();
    for r in results {
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {:.3} | {} | {:.2} | {} | {} |",
            r.seed,
            r.round,
            r.scenario,
            r.backend,
            r.agent,
            r.mode,
            r.lost,
            r.two_writer_s,
            secs(r.to_primary_s),
            r.longest_gap_s,
            secs(r.to_whole_s),
            // One table cell: a refusal may quote a whole HTML page.
            r.notes
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .replace('|', "/"),
        )
        .unwrap();
    }
    out
}
