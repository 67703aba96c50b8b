//! `pg_controldata` parsing and the data directory state.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;

use super::error::tail;
use super::lsn::parse_lsn;

/// The fields of `pg_control` the agent needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Controldata {
    pub sysid: String,
    /// "in production", "shut down", "shut down in recovery", "in archive recovery",
    /// "in crash recovery", "shutting down", "starting up".
    pub cluster_state: String,
    /// Latest checkpoint's TimeLineID.
    pub timeline: u64,
    pub checkpoint_lsn: u64,
    pub min_recovery_end_lsn: u64,
    pub data_checksums: bool,
    pub wal_log_hints: bool,
}

impl Controldata {
    /// Cleanly shut down (no crash recovery needed before pg_rewind).
    pub fn is_clean_shutdown(&self) -> bool {
        self.cluster_state == "shut down" || self.cluster_state == "shut down in recovery"
    }
}

/// What is in the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataDirState {
    /// Missing or empty directory.
    Empty,
    Initialized(Controldata),
    /// Something is there but `pg_controldata` cannot make sense of it.
    Invalid(String),
}

/// Parses `LANG=C pg_controldata` output.
pub fn parse_controldata(text: &str) -> Result<Controldata, String> {
    let map: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    let get = |k: &str| {
        map.get(k)
            .copied()
            .ok_or_else(|| format!("pg_controldata output lacks {k:?}"))
    };
    let lsn = |k: &str| {
        get(k).and_then(|v| parse_lsn(v).ok_or_else(|| format!("bad LSN {v:?} for {k:?}")))
    };
    let timeline = get("Latest checkpoint's TimeLineID")?;
    Ok(Controldata {
        sysid: get("Database system identifier")?.to_string(),
        cluster_state: get("Database cluster state")?.to_string(),
        timeline: timeline
            .parse()
            .map_err(|_| format!("bad timeline {timeline:?}"))?,
        checkpoint_lsn: lsn("Latest checkpoint location")?,
        min_recovery_end_lsn: lsn("Minimum recovery ending location")?,
        data_checksums: get("Data page checksum version")? != "0",
        wal_log_hints: get("wal_log_hints setting")? == "on",
    })
}

/// Inspects `data_dir` (runs `pg_controldata` with `LANG=C`; the agent's runtime has one
/// thread, so the child is awaited, never waited for).
pub async fn data_dir_state(bin_dir: &Path, data_dir: &Path) -> DataDirState {
    match std::fs::read_dir(data_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return DataDirState::Empty,
        Err(e) => return DataDirState::Invalid(format!("cannot read {}: {e}", data_dir.display())),
        Ok(mut entries) => {
            if entries.next().is_none() {
                return DataDirState::Empty;
            }
        }
    }
    if !data_dir.join("global/pg_control").is_file() {
        return DataDirState::Invalid(format!("{} has no global/pg_control", data_dir.display()));
    }
    let out = tokio::process::Command::new(bin_dir.join("pg_controldata"))
        .arg(data_dir)
        .env("LANG", "C")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .await;
    match out {
        Err(e) => DataDirState::Invalid(format!("cannot run pg_controldata: {e}")),
        Ok(o) if !o.status.success() => DataDirState::Invalid(format!(
            "pg_controldata failed ({}): {}",
            o.status,
            tail(&String::from_utf8_lossy(&o.stderr))
        )),
        Ok(o) => match parse_controldata(&String::from_utf8_lossy(&o.stdout)) {
            Ok(c) => DataDirState::Initialized(c),
            Err(e) => DataDirState::Invalid(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("fixtures/controldata_pg15.txt");

    #[test]
    fn parses_pg15_fixture() {
        let c = parse_controldata(FIXTURE).unwrap();
        assert_eq!(c.sysid, "7711605359193064637");
        assert_eq!(c.cluster_state, "shut down");
        assert!(c.is_clean_shutdown());
        assert_eq!(c.timeline, 1);
        assert_eq!(c.checkpoint_lsn, 0x17414F8);
        assert_eq!(c.min_recovery_end_lsn, 0);
        assert!(c.data_checksums);
        assert!(!c.wal_log_hints);
    }

    #[test]
    fn parses_states_with_spaces_and_rejects_garbage() {
        let t = FIXTURE
            .replace(
                "Database cluster state:               shut down",
                "Database cluster state:               in archive recovery",
            )
            .replace(
                "Latest checkpoint's TimeLineID:       1",
                "Latest checkpoint's TimeLineID:       12",
            )
            .replace(
                "wal_log_hints setting:                off",
                "wal_log_hints setting:                on",
            )
            .replace(
                "Minimum recovery ending location:     0/0",
                "Minimum recovery ending location:     1/A0000028",
            );
        let c = parse_controldata(&t).unwrap();
        assert_eq!(c.cluster_state, "in archive recovery");
        assert!(!c.is_clean_shutdown());
        assert_eq!(c.timeline, 12);
        assert!(c.wal_log_hints);
        assert_eq!(c.min_recovery_end_lsn, (1u64 << 32) | 0xA0000028);
        assert!(parse_controldata("garbage").is_err());
        assert!(parse_controldata(&FIXTURE.replace("0/17414F8", "zz")).is_err());
    }

    #[tokio::test]
    async fn missing_and_empty_dirs_are_empty() {
        let base = std::env::temp_dir().join(format!("pgw-cd-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        assert_eq!(
            data_dir_state(Path::new("/nonexistent"), &base).await,
            DataDirState::Empty
        );
        std::fs::create_dir_all(&base).unwrap();
        assert_eq!(
            data_dir_state(Path::new("/nonexistent"), &base).await,
            DataDirState::Empty
        );
        std::fs::write(base.join("junk"), "x").unwrap();
        assert!(matches!(
            data_dir_state(Path::new("/nonexistent"), &base).await,
            DataDirState::Invalid(_)
        ));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
