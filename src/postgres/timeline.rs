//! PostgreSQL's timeline history files (`pg_wal/0000000N.history`): where each earlier timeline
//! ended and why. The leader copies them into the store's `history` key, as Patroni does.

use super::{PgError, Postgres, parse_lsn};

/// One line of a timeline history file: `timeline` ended at `lsn` for `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineSwitch {
    pub timeline: u64,
    pub lsn: u64,
    pub reason: String,
}

/// Parses a history file: `parentTLI<TAB>switchpoint<TAB>reason` lines, `#` comments and
/// blank lines ignored. Any other line is an error naming it: a history we cannot read is
/// never copied in part.
pub fn parse_timeline_history(text: &str) -> Result<Vec<TimelineSwitch>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.splitn(3, char::is_whitespace);
        let timeline = fields.next().and_then(|t| t.parse::<u64>().ok());
        let lsn = fields.next().and_then(parse_lsn);
        let (Some(timeline), Some(lsn)) = (timeline, lsn) else {
            return Err(format!("timeline history line is not valid: {line:?}"));
        };
        let reason = fields.next().unwrap_or("").trim().to_owned();
        out.push(TimelineSwitch {
            timeline,
            lsn,
            reason,
        });
    }
    Ok(out)
}

impl Postgres {
    /// The switches that led to `timeline`, oldest first; empty on timeline 1.
    pub fn timeline_history(&self, timeline: u64) -> Result<Vec<TimelineSwitch>, PgError> {
        if timeline <= 1 {
            return Ok(Vec::new());
        }
        let path = self
            .settings
            .data_dir
            .join("pg_wal")
            .join(format!("{timeline:08X}.history"));
        let text = std::fs::read_to_string(&path)
            .map_err(|e| PgError::io(format!("reading {}", path.display()), e))?;
        parse_timeline_history(&text).map_err(PgError::InvalidDataDir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_file_parses_and_a_bad_line_is_named() {
        let text = "1\t0/3000060\tno recovery target specified\n\n\
                    2\t0/5000108\tno recovery target specified\n";
        let h = parse_timeline_history(text).unwrap();
        assert_eq!(
            h,
            vec![
                TimelineSwitch {
                    timeline: 1,
                    lsn: 0x3000060,
                    reason: "no recovery target specified".into()
                },
                TimelineSwitch {
                    timeline: 2,
                    lsn: 0x5000108,
                    reason: "no recovery target specified".into()
                },
            ]
        );
        let e = parse_timeline_history("1\tnot-an-lsn\tx\n").unwrap_err();
        assert!(e.contains("not-an-lsn"), "{e}");
    }
}
