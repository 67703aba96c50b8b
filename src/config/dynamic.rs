//! The dynamic configuration: the DCS `config` key (seeded from `bootstrap.dcs`), typed with
//! Patroni's defaults and its timing sanity rules.

use std::time::Duration;

use serde_json::{Map, Value};

use super::error::ConfigError;
use super::value::{Obj, as_int};

/// `synchronous_mode`: `off`, `on` (also boolean true) or `quorum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    #[default]
    Off,
    On,
    Quorum,
}

impl SyncMode {
    /// `synchronous_mode` of a dynamic configuration as stored, read leniently (a value
    /// [`DynamicConfig`] would reject counts as off): the API and the core act on whatever
    /// another agent wrote, as Patroni does.
    pub fn of(config: Option<&Map<String, Value>>) -> SyncMode {
        match config.and_then(|c| c.get("synchronous_mode")) {
            Some(Value::String(s)) if s.eq_ignore_ascii_case("quorum") => SyncMode::Quorum,
            Some(v) if crate::dcs::model::truthy(v) => SyncMode::On,
            _ => SyncMode::Off,
        }
    }
}

/// The dynamic configuration, typed, with Patroni's defaults (see the reference, §0).
#[derive(Debug, Clone, PartialEq)]
pub struct DynamicConfig {
    pub ttl: Duration,
    pub loop_wait: Duration,
    pub retry_timeout: Duration,
    pub maximum_lag_on_failover: u64,
    pub maximum_lag_on_syncnode: i64,
    pub primary_start_timeout: Duration,
    pub primary_stop_timeout: Duration,
    pub primary_race_backoff: Duration,
    /// `shutdown_handover_timeout` (pgwarden's own; Patroni ignores it): how long at most a
    /// member told to stop spends handing over (a leader, to a member that takes the lock; a
    /// synchronous standby, leaving the `sync` key) before it stops anyway. 0: no hand-over.
    /// Keep it, plus PostgreSQL's stop, under the pod's termination grace period.
    pub shutdown_handover_timeout: Duration,
    pub synchronous_mode: SyncMode,
    pub synchronous_mode_strict: bool,
    pub synchronous_node_count: u32,
    pub failsafe_mode: bool,
    pub check_timeline: bool,
    pub pause: bool,
    /// 0 keeps the whole history.
    pub max_timelines_history: u32,
    pub member_slots_ttl: Duration,
    pub use_pg_rewind: bool,
    pub use_slots: bool,
    pub parameters: Map<String, Value>,
    pub pg_hba: Option<Vec<String>>,
    pub pg_ident: Option<Vec<String>>,
    pub recovery_conf: Map<String, Value>,
    pub standby_cluster: Option<Value>,
    pub slots: Option<Value>,
    pub ignore_slots: Option<Value>,
    /// The input, with `ttl`/`loop_wait`/`retry_timeout` rewritten when they were adjusted (Patroni
    /// does the same, so the adjusted values are what ends up in the DCS).
    pub raw: Map<String, Value>,
}

impl Default for DynamicConfig {
    fn default() -> Self {
        DynamicConfig {
            ttl: Duration::from_secs(30),
            loop_wait: Duration::from_secs(10),
            retry_timeout: Duration::from_secs(10),
            maximum_lag_on_failover: 1_048_576,
            maximum_lag_on_syncnode: -1,
            primary_start_timeout: Duration::from_secs(300),
            primary_stop_timeout: Duration::ZERO,
            primary_race_backoff: Duration::ZERO,
            shutdown_handover_timeout: Duration::from_secs(10),
            synchronous_mode: SyncMode::Off,
            synchronous_mode_strict: false,
            synchronous_node_count: 1,
            failsafe_mode: false,
            check_timeline: false,
            pause: false,
            max_timelines_history: 0,
            member_slots_ttl: Duration::from_secs(1800),
            use_pg_rewind: false,
            use_slots: true,
            parameters: Map::new(),
            pg_hba: None,
            pg_ident: None,
            recovery_conf: Map::new(),
            standby_cluster: None,
            slots: None,
            ignore_slots: None,
            raw: Map::new(),
        }
    }
}

impl DynamicConfig {
    /// Parses the DCS `config` document. Numbers may be strings (`"30"`), as Patroni casts with `int()`;
    /// timeouts are seconds, `member_slots_ttl` also takes units (`30min`). Errors name the key
    /// relative to the document (callers add a prefix such as `bootstrap.dcs`).
    pub fn from_json(m: &Map<String, Value>) -> Result<DynamicConfig, ConfigError> {
        let root_value = Value::Object(m.clone());
        let o = Obj::new("", Some(&root_value))?;
        let d = DynamicConfig::default();

        let secs = |key: &str, default: Duration| -> Result<Duration, ConfigError> {
            match o.int(key)? {
                None => Ok(default),
                Some(s) if s >= 0 => Ok(Duration::from_secs(s as u64)),
                Some(s) => Err(ConfigError::invalid(
                    key,
                    format!("must not be negative, got {s}"),
                )),
            }
        };
        // `master_*` are the pre-3.0 names; the new name wins when both are present.
        let aliased = |new: &str, old: &str, default: Duration| {
            if o.contains(new) {
                secs(new, default)
            } else {
                secs(old, default)
            }
        };
        let unsigned = |key: &str, default: u64| -> Result<u64, ConfigError> {
            match o.int(key)? {
                None => Ok(default),
                Some(v) if v >= 0 => Ok(v as u64),
                Some(v) => Err(ConfigError::invalid(
                    key,
                    format!("must not be negative, got {v}"),
                )),
            }
        };

        let (ttl, loop_wait, retry_timeout, adjusted) = adjust_timeouts(
            o.int("ttl")?.unwrap_or(30),
            o.int("loop_wait")?.unwrap_or(10),
            o.int("retry_timeout")?.unwrap_or(10),
        );

        let synchronous_mode = match o.get("synchronous_mode") {
            None => SyncMode::Off,
            Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("quorum") => SyncMode::Quorum,
            Some(v) => match super::value::as_bool("synchronous_mode", v) {
                Ok(true) => SyncMode::On,
                Ok(false) => SyncMode::Off,
                Err(_) => {
                    return Err(ConfigError::wrong_type(
                        "synchronous_mode",
                        "on, off or quorum",
                        v,
                    ));
                }
            },
        };
        let synchronous_node_count = match o.int("synchronous_node_count")? {
            None => 1,
            Some(n) if n >= 1 => u32::try_from(n).unwrap_or(u32::MAX),
            Some(n) => {
                tracing::warn!("synchronous_node_count={n} can't be smaller than 1, adjusting...");
                1
            }
        };
        let member_slots_ttl = match o.get("member_slots_ttl") {
            None => d.member_slots_ttl,
            Some(v) => parse_seconds_with_unit(v).ok_or_else(|| {
                ConfigError::wrong_type("member_slots_ttl", "a duration like 1800 or \"30min\"", v)
            })?,
        };

        let pg_value = o.get("postgresql");
        let pg = Obj::new("postgresql", pg_value)?;

        let mut raw = m.clone();
        if adjusted {
            raw.insert("ttl".into(), Value::from(ttl));
            raw.insert("loop_wait".into(), Value::from(loop_wait));
            raw.insert("retry_timeout".into(), Value::from(retry_timeout));
        }

        Ok(DynamicConfig {
            ttl: Duration::from_secs(ttl),
            loop_wait: Duration::from_secs(loop_wait),
            retry_timeout: Duration::from_secs(retry_timeout),
            maximum_lag_on_failover: unsigned(
                "maximum_lag_on_failover",
                d.maximum_lag_on_failover,
            )?,
            maximum_lag_on_syncnode: o
                .int("maximum_lag_on_syncnode")?
                .unwrap_or(d.maximum_lag_on_syncnode),
            primary_start_timeout: aliased(
                "primary_start_timeout",
                "master_start_timeout",
                d.primary_start_timeout,
            )?,
            primary_stop_timeout: aliased(
                "primary_stop_timeout",
                "master_stop_timeout",
                d.primary_stop_timeout,
            )?,
            primary_race_backoff: secs("primary_race_backoff", d.primary_race_backoff)?,
            shutdown_handover_timeout: secs(
                "shutdown_handover_timeout",
                d.shutdown_handover_timeout,
            )?,
            synchronous_mode,
            synchronous_mode_strict: o.bool("synchronous_mode_strict")?.unwrap_or(false),
            synchronous_node_count,
            failsafe_mode: o.bool("failsafe_mode")?.unwrap_or(false),
            check_timeline: o.bool("check_timeline")?.unwrap_or(false),
            pause: o.bool("pause")?.unwrap_or(false),
            max_timelines_history: u32::try_from(unsigned("max_timelines_history", 0)?)
                .unwrap_or(u32::MAX),
            member_slots_ttl,
            use_pg_rewind: pg.bool("use_pg_rewind")?.unwrap_or(false),
            use_slots: pg.bool("use_slots")?.unwrap_or(true),
            parameters: pg.raw_map("parameters")?,
            pg_hba: pg.string_list("pg_hba")?,
            pg_ident: pg.string_list("pg_ident")?,
            recovery_conf: pg.raw_map("recovery_conf")?,
            standby_cluster: o.get("standby_cluster").cloned(),
            slots: o.get("slots").cloned(),
            ignore_slots: o.get("ignore_slots").cloned(),
            raw,
        })
    }
}

/// Patroni's `_validate_and_adjust_timeouts`: raise each value to its minimum, then enforce
/// `loop_wait + 2*retry_timeout <= ttl` by lowering `loop_wait`, and if even `loop_wait = 1` does not
/// fit, also lowering `retry_timeout` to `(ttl-1)/2`. Returns (ttl, loop_wait, retry_timeout, changed).
fn adjust_timeouts(ttl: i64, loop_wait: i64, retry_timeout: i64) -> (u64, u64, u64, bool) {
    let at_least = |name: &str, value: i64, min: i64| {
        if value < min {
            tracing::warn!("{name}={value} can't be smaller than {min}, adjusting...");
            min
        } else {
            value
        }
    };
    let (ttl0, lw0, rt0) = (ttl, loop_wait, retry_timeout);
    let mut loop_wait = at_least("loop_wait", loop_wait, 1);
    // Patroni 4 raises ttl to 20 s and retry_timeout to 3 s; Patroni 3.0.2 accepted less, and
    // so does pgwarden: its safety rests on the leader's own deadline (measured from when a
    // renewal was sent), not on generous timings. Short timings are what fast failover needs.
    let mut retry_timeout = at_least("retry_timeout", retry_timeout, 1);
    let ttl = at_least("ttl", ttl, 4);
    if 1 + 2 * retry_timeout > ttl {
        let new_retry = (ttl - 1) / 2;
        tracing::warn!(
            "Violated the rule \"loop_wait + 2*retry_timeout <= ttl\", where ttl={ttl}. \
             Adjusting loop_wait from {loop_wait} to 1 and retry_timeout from {retry_timeout} to {new_retry}"
        );
        loop_wait = 1;
        retry_timeout = new_retry;
    } else if loop_wait + 2 * retry_timeout > ttl {
        let new_loop = ttl - 2 * retry_timeout;
        tracing::warn!(
            "Violated the rule \"loop_wait + 2*retry_timeout <= ttl\", where ttl={ttl} and \
             retry_timeout={retry_timeout}. Adjusting loop_wait from {loop_wait} to {new_loop}"
        );
        loop_wait = new_loop;
    }
    let changed = (ttl, loop_wait, retry_timeout) != (ttl0, lw0, rt0);
    // All three are now >= 1, so the casts cannot wrap.
    (ttl as u64, loop_wait as u64, retry_timeout as u64, changed)
}

/// Seconds from an integer (or integer string) or a number with a unit: ms, s, min, h, d.
fn parse_seconds_with_unit(v: &Value) -> Option<Duration> {
    if let Ok(n) = as_int("", v) {
        return u64::try_from(n).ok().map(Duration::from_secs);
    }
    let s = v.as_str()?.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let num: u64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "ms" => return Some(Duration::from_millis(num)),
        "s" => num,
        "min" => num.checked_mul(60)?,
        "h" => num.checked_mul(3600)?,
        "d" => num.checked_mul(86400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<DynamicConfig, ConfigError> {
        match v {
            Value::Object(m) => DynamicConfig::from_json(&m),
            _ => unreachable!(),
        }
    }

    #[test]
    fn defaults_match_patroni() {
        let d = parse(json!({})).unwrap();
        assert_eq!(d, DynamicConfig::default());
        assert_eq!(d.ttl, Duration::from_secs(30));
        assert_eq!(d.loop_wait, Duration::from_secs(10));
        assert_eq!(d.retry_timeout, Duration::from_secs(10));
        assert_eq!(d.maximum_lag_on_failover, 1_048_576);
        assert_eq!(d.maximum_lag_on_syncnode, -1);
        assert_eq!(d.primary_start_timeout, Duration::from_secs(300));
        assert_eq!(d.primary_stop_timeout, Duration::ZERO);
        assert_eq!(d.synchronous_mode, SyncMode::Off);
        assert_eq!(d.synchronous_node_count, 1);
        assert_eq!(d.member_slots_ttl, Duration::from_secs(1800));
        assert!(d.use_slots);
        assert!(!d.use_pg_rewind);
        // pgwarden's own.
        assert_eq!(d.shutdown_handover_timeout, Duration::from_secs(10));
    }

    #[test]
    fn shutdown_handover_timeout_takes_seconds_and_refuses_negatives() {
        let d = parse(json!({"shutdown_handover_timeout": "25"})).unwrap();
        assert_eq!(d.shutdown_handover_timeout, Duration::from_secs(25));
        let d = parse(json!({"shutdown_handover_timeout": 0})).unwrap();
        assert_eq!(d.shutdown_handover_timeout, Duration::ZERO);
        let e = parse(json!({"shutdown_handover_timeout": -1})).unwrap_err();
        assert!(e.to_string().contains("shutdown_handover_timeout"), "{e}");
    }

    #[test]
    fn strings_aliases_and_units() {
        let d = parse(json!({
            "ttl": "40", "loop_wait": 5, "retry_timeout": "7",
            "master_start_timeout": 10, "primary_stop_timeout": "3", "master_stop_timeout": 99,
            "synchronous_mode": "quorum", "synchronous_node_count": "2",
            "member_slots_ttl": "30min", "failsafe_mode": "on", "pause": true,
            "postgresql": {"use_pg_rewind": true, "use_slots": "false",
                           "parameters": {"max_connections": 200}, "pg_hba": ["local all all trust"]}
        }))
        .unwrap();
        assert_eq!(d.ttl, Duration::from_secs(40));
        assert_eq!(d.retry_timeout, Duration::from_secs(7));
        assert_eq!(d.primary_start_timeout, Duration::from_secs(10));
        assert_eq!(d.primary_stop_timeout, Duration::from_secs(3));
        assert_eq!(d.synchronous_mode, SyncMode::Quorum);
        assert_eq!(d.synchronous_node_count, 2);
        assert_eq!(d.member_slots_ttl, Duration::from_secs(1800));
        assert!(d.failsafe_mode && d.pause && d.use_pg_rewind && !d.use_slots);
        assert_eq!(d.parameters["max_connections"], json!(200));
        assert_eq!(d.pg_hba, Some(vec!["local all all trust".to_string()]));
        assert_eq!(
            parse(json!({"synchronous_mode": true}))
                .unwrap()
                .synchronous_mode,
            SyncMode::On
        );
        assert_eq!(
            parse(json!({"synchronous_mode": "off"}))
                .unwrap()
                .synchronous_mode,
            SyncMode::Off
        );
        assert_eq!(
            parse(json!({"member_slots_ttl": 0}))
                .unwrap()
                .member_slots_ttl,
            Duration::ZERO
        );
    }

    #[test]
    fn minimums_are_enforced() {
        let d = parse(json!({"ttl": 2, "loop_wait": 0, "retry_timeout": 0})).unwrap();
        assert_eq!(d.ttl, Duration::from_secs(4));
        assert_eq!(d.loop_wait, Duration::from_secs(1));
        assert_eq!(d.retry_timeout, Duration::from_secs(1));
        assert_eq!(d.raw["ttl"], json!(4));
    }

    #[test]
    fn invariant_lowers_loop_wait_first() {
        // 15 + 2*10 > 30, so loop_wait drops to 30 - 2*10 = 10.
        let d = parse(json!({"ttl": 30, "loop_wait": 15, "retry_timeout": 10})).unwrap();
        assert_eq!(d.loop_wait, Duration::from_secs(10));
        assert_eq!(d.retry_timeout, Duration::from_secs(10));
        assert_eq!(d.raw["loop_wait"], json!(10));
    }

    #[test]
    fn invariant_then_lowers_retry_timeout() {
        let d = parse(json!({"ttl": 20, "loop_wait": 10, "retry_timeout": 15})).unwrap();
        assert_eq!(d.ttl, Duration::from_secs(20));
        assert_eq!(d.loop_wait, Duration::from_secs(1));
        assert_eq!(d.retry_timeout, Duration::from_secs(9));
        // Unchanged input leaves raw untouched.
        let d = parse(json!({"ttl": "30"})).unwrap();
        assert_eq!(d.raw["ttl"], json!("30"));
    }

    #[test]
    fn type_errors_name_the_key() {
        assert_eq!(
            parse(json!({"ttl": "abc"})).unwrap_err().to_string(),
            "config error: ttl: expected an integer, got \"abc\""
        );
        assert_eq!(
            parse(json!({"postgresql": {"use_slots": "maybe"}}))
                .unwrap_err()
                .to_string(),
            "config error: postgresql.use_slots: expected a boolean, got \"maybe\""
        );
        assert_eq!(
            parse(json!({"maximum_lag_on_failover": -1}))
                .unwrap_err()
                .to_string(),
            "config error: maximum_lag_on_failover: must not be negative, got -1"
        );
        assert_eq!(
            parse(json!({"synchronous_mode": "sometimes"}))
                .unwrap_err()
                .to_string(),
            "config error: synchronous_mode: expected on, off or quorum, got \"sometimes\""
        );
    }
}
