//! Patroni's `watchdog` section: `mode` (off, automatic, required), `device` (default
//! `/dev/watchdog`) and `safety_margin` (seconds, default 5; -1 means half of ttl).
//!
//! pgwarden's default mode is `off`, unlike Patroni's `automatic`: opening a real watchdog
//! device arms a machine reset, which must be asked for.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::error::ConfigError;
use super::value::{Obj, as_string};

/// What to do with the watchdog device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchdogMode {
    /// No watchdog (pgwarden's default).
    Off,
    /// Use the device when it can be opened; carry on without it otherwise.
    Automatic,
    /// Refuse to start without a usable device.
    Required,
}

impl WatchdogMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WatchdogMode::Off => "off",
            WatchdogMode::Automatic => "automatic",
            WatchdogMode::Required => "required",
        }
    }

    /// The inverse of [`WatchdogMode::as_str`] (plus Patroni's spellings `auto`, `require`,
    /// `disable`, `disabled`), case-insensitively.
    pub fn from_name(s: &str) -> Option<WatchdogMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" | "disable" | "disabled" => Some(WatchdogMode::Off),
            "auto" | "automatic" => Some(WatchdogMode::Automatic),
            "require" | "required" => Some(WatchdogMode::Required),
            _ => None,
        }
    }
}

/// The typed `watchdog` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watchdog {
    pub mode: WatchdogMode,
    pub device: PathBuf,
    /// Seconds between the watchdog firing and the leader key expiring; -1: half of ttl.
    pub safety_margin: i64,
}

impl Default for Watchdog {
    fn default() -> Self {
        Watchdog {
            mode: WatchdogMode::Off,
            device: PathBuf::from("/dev/watchdog"),
            safety_margin: 5,
        }
    }
}

impl Watchdog {
    /// Parses `cfg.watchdog` (absent or null: the defaults).
    pub fn parse(raw: Option<&Value>) -> Result<Watchdog, ConfigError> {
        let obj = Obj::new("watchdog", raw)?;
        let mut w = Watchdog::default();
        if let Some(v) = obj.get("mode") {
            let key = obj.key("mode");
            w.mode = match v {
                // YAML 1.1 spells `mode: off` as a boolean
                Value::Bool(false) => WatchdogMode::Off,
                Value::String(s) => WatchdogMode::from_name(s).ok_or_else(|| bad_mode(&key))?,
                _ => return Err(bad_mode(&key)),
            };
        }
        if let Some(v) = obj.get("device") {
            let device = as_string(&obj.key("device"), v)?;
            if device.trim().is_empty() {
                return Err(ConfigError::invalid(obj.key("device"), "must not be empty"));
            }
            w.device = PathBuf::from(device);
        }
        if let Some(m) = obj.int("safety_margin")? {
            if m < -1 {
                return Err(ConfigError::invalid(
                    obj.key("safety_margin"),
                    "must be -1 (half of ttl) or a number of seconds >= 0",
                ));
            }
            w.safety_margin = m;
        }
        Ok(w)
    }

    /// The device's timeout for a lock of `ttl`: `ttl - safety_margin` (half of ttl for -1),
    /// at least one second.
    pub fn timeout(&self, ttl: Duration) -> Duration {
        let ttl = ttl.as_secs();
        let secs = if self.safety_margin < 0 {
            ttl / 2
        } else {
            ttl.saturating_sub(self.safety_margin as u64)
        };
        Duration::from_secs(secs.max(1))
    }

    /// At start-up (and by `--validate-config`), for `required`: the device must exist and be
    /// writable.
    pub fn check_startup(&self) -> Result<(), ConfigError> {
        if self.mode != WatchdogMode::Required {
            return Ok(());
        }
        self.writable().map_err(|e| {
            ConfigError::invalid(
                "watchdog.device",
                format!("watchdog.mode is required but {e}"),
            )
        })
    }

    /// The device exists and may be written: Patroni's health check of a required watchdog,
    /// made before every race. Checked with access(2) only: opening a watchdog device arms it.
    pub fn writable(&self) -> Result<(), String> {
        use std::os::unix::ffi::OsStrExt;
        let Ok(path) = std::ffi::CString::new(self.device.as_os_str().as_bytes()) else {
            return Err(format!("{} contains a NUL byte", self.device.display()));
        };
        // SAFETY: access(2) reads a valid NUL-terminated string.
        if unsafe { libc::access(path.as_ptr(), libc::W_OK) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(format!("{} cannot be written: {e}", self.device.display()));
        }
        Ok(())
    }
}

fn bad_mode(key: &str) -> ConfigError {
    ConfigError::invalid(key, "must be off, automatic or required")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> String {
        Watchdog::parse(Some(&v)).unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_off_dev_watchdog_and_five_seconds() {
        let w = Watchdog::parse(None).unwrap();
        assert_eq!(w, Watchdog::default());
        assert_eq!(w.mode, WatchdogMode::Off);
        assert_eq!(w.device, PathBuf::from("/dev/watchdog"));
        assert_eq!(w.safety_margin, 5);
        assert_eq!(Watchdog::parse(Some(&Value::Null)).unwrap(), w);
        assert_eq!(Watchdog::parse(Some(&json!({}))).unwrap(), w);
    }

    #[test]
    fn modes_and_patroni_spellings() {
        let mode = |v: Value| Watchdog::parse(Some(&json!({"mode": v}))).unwrap().mode;
        assert_eq!(mode(json!("automatic")), WatchdogMode::Automatic);
        assert_eq!(mode(json!("Auto")), WatchdogMode::Automatic);
        assert_eq!(mode(json!("required")), WatchdogMode::Required);
        assert_eq!(mode(json!("require")), WatchdogMode::Required);
        assert_eq!(mode(json!("off")), WatchdogMode::Off);
        assert_eq!(mode(json!(false)), WatchdogMode::Off);
        let w = Watchdog::parse(Some(&json!({
            "mode": "automatic", "device": "/tmp/wd", "safety_margin": "2"
        })))
        .unwrap();
        assert_eq!(w.device, PathBuf::from("/tmp/wd"));
        assert_eq!(w.safety_margin, 2);
    }

    #[test]
    fn errors_name_the_key() {
        assert_eq!(
            err(json!({"mode": "sometimes"})),
            "config error: watchdog.mode: must be off, automatic or required"
        );
        assert_eq!(
            err(json!({"mode": true})),
            "config error: watchdog.mode: must be off, automatic or required"
        );
        assert_eq!(
            err(json!({"mode": 3})),
            "config error: watchdog.mode: must be off, automatic or required"
        );
        assert_eq!(
            err(json!({"safety_margin": "soon"})),
            "config error: watchdog.safety_margin: expected an integer, got \"soon\""
        );
        assert_eq!(
            err(json!({"safety_margin": -2})),
            "config error: watchdog.safety_margin: must be -1 (half of ttl) or a number of seconds >= 0"
        );
        assert_eq!(
            err(json!({"device": ""})),
            "config error: watchdog.device: must not be empty"
        );
        assert_eq!(
            err(json!({"device": ["a"]})),
            "config error: watchdog.device: expected a string, got [\"a\"]"
        );
        assert_eq!(
            err(json!("on")),
            "config error: watchdog: expected a mapping, got \"on\""
        );
    }

    #[test]
    fn timeout_is_ttl_minus_margin() {
        let w = |m| Watchdog {
            safety_margin: m,
            ..Watchdog::default()
        };
        let s = Duration::from_secs;
        assert_eq!(w(5).timeout(s(30)), s(25));
        assert_eq!(w(-1).timeout(s(30)), s(15));
        assert_eq!(w(10).timeout(s(6)), s(1));
    }

    #[test]
    fn required_checks_the_device_without_opening_it() {
        let dir = std::env::temp_dir().join(format!("pgw-wd-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = Watchdog {
            mode: WatchdogMode::Required,
            device: dir.join("missing"),
            safety_margin: 5,
        };
        let e = missing.check_startup().unwrap_err().to_string();
        assert!(
            e.starts_with("config error: watchdog.device: watchdog.mode is required but "),
            "{e}"
        );
        assert!(e.contains("No such file"), "{e}");
        let automatic = Watchdog {
            mode: WatchdogMode::Automatic,
            ..missing.clone()
        };
        assert!(automatic.check_startup().is_ok());
        let file = dir.join("fake");
        std::fs::write(&file, b"").unwrap();
        let present = Watchdog {
            device: file,
            ..missing
        };
        assert!(present.check_startup().is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
