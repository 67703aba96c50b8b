//! The leader lock as a `coordination.k8s.io/v1` Lease: building the records this member writes,
//! and judging expiry the way client-go does.
//!
//! Expiry is observer-local. Every observer remembers *when, on its own monotonic clock,* it last
//! saw the Lease change (a new `resourceVersion`); the holder counts as gone once
//! `leaseDurationSeconds` passed since then. `renewTime` is never compared with a wall clock, so a
//! skewed clock anywhere (or a `renewTime` forged far into the past or future) cannot make a live
//! holder look expired. The holder is safe because it stops acting as leader at
//! `send time of its last accepted renewal + ttl − margin`, which is never later than any
//! observer's `saw it change + ttl`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Map, Value};

use crate::dcs::{Status, Version};

/// Lease annotations carrying the leader's status, as Patroni's leader object does (§3.3).
pub(super) const OPTIME: &str = "optime";
pub(super) const SLOTS: &str = "slots";
pub(super) const RETAIN_SLOTS: &str = "retain_slots";
pub(super) const FAILSAFE: &str = "failsafe";

/// What an observer knows about the Lease's last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Observed {
    pub rv: String,
    pub holder: Option<String>,
    /// Which holding of the lock this version belongs to ([`instance`]).
    pub instance: Version,
    pub duration: Duration,
    /// When this process first saw this version.
    pub seen_at: Instant,
}

/// The expiry judge. Feed it every version of the Lease this process sees (watch events,
/// fresh reads, the answers to its own writes).
#[derive(Debug, Default)]
pub(super) struct Observer {
    last: Option<Observed>,
    /// The last version of a Lease that was then deleted (by hand: releases write an empty
    /// holder instead). Its holder may write until that version expires for this observer.
    deleted: Option<Observed>,
}

impl Observer {
    /// Records a sighting; returns whether the Lease changed. `None`: the Lease does not exist.
    pub(super) fn observe(
        &mut self,
        lease: Option<&Lease>,
        now: Instant,
        fallback: Duration,
    ) -> bool {
        let Some(l) = lease else {
            let had = self.last.take();
            if had.as_ref().is_some_and(|o| o.holder.is_some()) {
                self.deleted = had.clone();
            }
            return had.is_some();
        };
        self.deleted = None;
        let rv = l.metadata.resource_version.clone().unwrap_or_default();
        if self.last.as_ref().is_some_and(|o| o.rv == rv) {
            return false;
        }
        let spec = l.spec.as_ref();
        let duration = spec
            .and_then(|s| s.lease_duration_seconds)
            .and_then(|d| u64::try_from(d).ok())
            .filter(|d| *d > 0)
            .map(Duration::from_secs)
            .unwrap_or(fallback);
        self.last = Some(Observed {
            rv,
            holder: holder_of(l).map(str::to_owned),
            instance: instance(l),
            duration,
            seen_at: now,
        });
        true
    }

    /// The holder and its holding ([`instance`]), while the lock counts as held for this
    /// observer.
    pub(super) fn holder(&self, now: Instant) -> Option<(&str, Version)> {
        let o = self.last.as_ref()?;
        let h = o.holder.as_deref()?;
        (now < o.seen_at + o.duration).then(|| (h, o.instance.clone()))
    }

    /// The holder of a Lease deleted before it expired for this observer, until it would have.
    pub(super) fn vanished(&self, now: Instant) -> Option<&str> {
        let o = self.deleted.as_ref()?;
        (now < o.seen_at + o.duration).then_some(o.holder.as_deref()?)
    }

    /// When the current holder (or that of a deleted Lease) will count as gone, to wake the HA
    /// loop then.
    pub(super) fn expires_at(&self) -> Option<Instant> {
        let o = self.last.as_ref().or(self.deleted.as_ref())?;
        o.holder.as_ref()?;
        Some(o.seen_at + o.duration)
    }
}

/// The holder named in a Lease; an empty identity means released.
pub(super) fn holder_of(l: &Lease) -> Option<&str> {
    l.spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty())
}

/// The lock's version as the view shows it: the holding it belongs to, not the
/// `resourceVersion`, which moves with every renewal. A holding begins with a new `acquireTime`
/// ([`taken`]), so a release carrying the version of an earlier holding (one that arrives late)
/// never releases a later one, while one carrying a version seen before the holder's last
/// renewals still does, as on etcd, where a renewal does not move the key's revision. A Lease
/// without `acquireTime` (not written by pgwarden) falls back to its `resourceVersion`.
pub(super) fn instance(l: &Lease) -> Version {
    let acquired = l.spec.as_ref().and_then(|s| s.acquire_time.as_ref());
    Version(match acquired {
        Some(t) => format!("acquired {}", t.0),
        None => l.metadata.resource_version.clone().unwrap_or_default(),
    })
}

fn ttl_secs(ttl: Duration) -> i32 {
    let s = ttl.as_millis().max(1).div_ceil(1000);
    i32::try_from(s).unwrap_or(i32::MAX)
}

/// A new Lease held by `me` (used when none exists).
pub(super) fn fresh(
    name: &str,
    labels: BTreeMap<String, String>,
    me: &str,
    ttl: Duration,
    now: Timestamp,
) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(me.to_owned()),
            lease_duration_seconds: Some(ttl_secs(ttl)),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }),
    }
}

/// `prev` taken over (or renewed) by `me`: a new holder gets a new `acquireTime` and
/// `leaseTransitions + 1`; the same holder keeps both while it `continues` its holding (a
/// renewal), and gets a new `acquireTime` when it takes the lock again after it lapsed (a new
/// [`instance`]). The `resourceVersion` of `prev` stays in the object, so the update is a
/// compare-and-set.
pub(super) fn taken(
    prev: &Lease,
    me: &str,
    ttl: Duration,
    now: Timestamp,
    continues: bool,
) -> Lease {
    let mut l = prev.clone();
    let spec = l.spec.get_or_insert_with(LeaseSpec::default);
    let same = spec.holder_identity.as_deref() == Some(me);
    if !same {
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        spec.acquire_time = Some(MicroTime(now));
        spec.holder_identity = Some(me.to_owned());
    } else if !continues {
        spec.acquire_time = Some(MicroTime(now));
    }
    spec.lease_duration_seconds = Some(ttl_secs(ttl));
    spec.renew_time = Some(MicroTime(now));
    l
}

/// `prev` released: empty holder, as client-go's ReleaseOnCancel writes it, so observers see
/// the lock free at once instead of waiting for expiry.
pub(super) fn released(prev: &Lease, now: Timestamp) -> Lease {
    let mut l = prev.clone();
    let spec = l.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(now));
    l
}

/// Puts the leader's status into the Lease's annotations (Patroni's string forms).
pub(super) fn set_status(l: &mut Lease, status: &Status) {
    let ann = l.metadata.annotations.get_or_insert_with(BTreeMap::new);
    ann.insert(OPTIME.into(), status.optime.to_string());
    let mut json_or_remove = |key: &str, v: Option<String>| match v {
        Some(s) => {
            ann.insert(key.into(), s);
        }
        None => {
            ann.remove(key);
        }
    };
    json_or_remove(
        SLOTS,
        status
            .slots
            .as_ref()
            .and_then(|s| serde_json::to_string(s).ok()),
    );
    json_or_remove(
        RETAIN_SLOTS,
        status
            .retain_slots
            .as_ref()
            .and_then(|s| serde_json::to_string(s).ok()),
    );
}

/// Puts the `failsafe` value (compact JSON, as Patroni writes it) into the Lease's annotations.
pub(super) fn set_failsafe(l: &mut Lease, json: &str) {
    l.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(FAILSAFE.into(), json.to_owned());
}

/// The raw `status` value for [`crate::dcs::ClusterView::from_raw`], built from the
/// annotations. A value that does not parse is passed on as a string, so that the model reports
/// it as a problem instead of anyone acting on it.
pub(super) fn status_raw(l: &Lease) -> Option<String> {
    let ann = l.metadata.annotations.as_ref()?;
    let optime = ann.get(OPTIME)?;
    let mut m = Map::new();
    m.insert(
        "optime".into(),
        optime
            .trim()
            .parse::<u64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(optime.clone())),
    );
    for key in [SLOTS, RETAIN_SLOTS] {
        if let Some(raw) = ann.get(key) {
            let v =
                serde_json::from_str::<Value>(raw).unwrap_or_else(|_| Value::String(raw.clone()));
            m.insert(key.into(), v);
        }
    }
    Some(Value::Object(m).to_string())
}

/// The raw `failsafe` value, if annotated.
pub(super) fn failsafe_raw(l: &Lease) -> Option<String> {
    l.metadata.annotations.as_ref()?.get(FAILSAFE).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcs::ClusterView;

    fn lease(rv: &str, holder: Option<&str>, secs: i32) -> Lease {
        let mut l = fresh(
            "pg-leader",
            BTreeMap::new(),
            holder.unwrap_or(""),
            Duration::from_secs(secs as u64),
            Timestamp::UNIX_EPOCH,
        );
        l.metadata.resource_version = Some(rv.into());
        if holder.is_none() {
            l.spec.as_mut().unwrap().holder_identity = None;
        }
        l
    }

    #[test]
    fn expiry_counts_from_the_observed_change_not_renew_time() {
        let t0 = Instant::now();
        let mut o = Observer::default();
        // renewTime is the Unix epoch: a wall-clock judge would call this long expired.
        assert!(o.observe(Some(&lease("1", Some("a"), 30)), t0, Duration::from_secs(5)));
        assert_eq!(o.holder(t0 + Duration::from_secs(29)).unwrap().0, "a");
        // The same version seen again (re-list, fresh read) does not restart the clock.
        assert!(!o.observe(
            Some(&lease("1", Some("a"), 30)),
            t0 + Duration::from_secs(20),
            Duration::from_secs(5)
        ));
        assert!(o.holder(t0 + Duration::from_secs(30)).is_none());
        // A renewal (new version) does.
        assert!(o.observe(
            Some(&lease("2", Some("a"), 30)),
            t0 + Duration::from_secs(31),
            Duration::from_secs(5)
        ));
        assert!(o.holder(t0 + Duration::from_secs(60)).is_some());
        assert_eq!(o.expires_at(), Some(t0 + Duration::from_secs(61)));
    }

    #[test]
    fn released_or_missing_lease_has_no_holder() {
        let t0 = Instant::now();
        let mut o = Observer::default();
        o.observe(Some(&lease("1", None, 30)), t0, Duration::from_secs(5));
        assert!(o.holder(t0).is_none());
        assert!(o.expires_at().is_none());
        o.observe(Some(&lease("2", Some("a"), 30)), t0, Duration::from_secs(5));
        assert!(o.observe(None, t0, Duration::from_secs(5)));
        assert!(o.holder(t0).is_none());
    }

    #[test]
    fn a_deleted_lease_names_its_holder_until_it_would_have_expired() {
        let t0 = Instant::now();
        let mut o = Observer::default();
        o.observe(Some(&lease("1", Some("a"), 30)), t0, Duration::from_secs(5));
        o.observe(None, t0 + Duration::from_secs(10), Duration::from_secs(5));
        assert!(o.holder(t0 + Duration::from_secs(10)).is_none());
        assert_eq!(o.vanished(t0 + Duration::from_secs(29)), Some("a"));
        assert_eq!(o.vanished(t0 + Duration::from_secs(30)), None);
        assert_eq!(o.expires_at(), Some(t0 + Duration::from_secs(30)));
        // A Lease written again (taken or released) ends it.
        o.observe(
            Some(&lease("2", None, 30)),
            t0 + Duration::from_secs(11),
            Duration::from_secs(5),
        );
        assert_eq!(o.vanished(t0 + Duration::from_secs(12)), None);
    }

    #[test]
    fn transitions_count_holder_changes_only() {
        let now = Timestamp::UNIX_EPOCH;
        let l = lease("1", Some("a"), 30);
        let renewed = taken(&l, "a", Duration::from_secs(30), now, true);
        assert_eq!(renewed.spec.as_ref().unwrap().lease_transitions, Some(0));
        assert_eq!(renewed.metadata.resource_version.as_deref(), Some("1"));
        let stolen = taken(&l, "b", Duration::from_millis(2500), now, true);
        let s = stolen.spec.as_ref().unwrap();
        assert_eq!(s.lease_transitions, Some(1));
        assert_eq!(s.holder_identity.as_deref(), Some("b"));
        assert_eq!(s.lease_duration_seconds, Some(3));
        let free = released(&stolen, now);
        assert_eq!(holder_of(&free), None);
        let again = taken(&free, "b", Duration::from_secs(30), now, true);
        assert_eq!(again.spec.as_ref().unwrap().lease_transitions, Some(2));
    }

    #[test]
    fn a_holding_is_one_instance_from_acquisition_to_its_end() {
        // `lease` builds one acquired at the epoch.
        let t1 = Timestamp::from_second(1).unwrap();
        let l = lease("1", Some("a"), 30);
        let mut renewed = taken(&l, "a", Duration::from_secs(30), t1, true);
        renewed.metadata.resource_version = Some("2".into());
        assert_eq!(
            instance(&renewed),
            instance(&l),
            "a renewal keeps the instance"
        );
        let lapsed = taken(&l, "a", Duration::from_secs(30), t1, false);
        assert_ne!(
            instance(&lapsed),
            instance(&l),
            "taken again after it lapsed"
        );
        assert_eq!(lapsed.spec.as_ref().unwrap().lease_transitions, Some(0));
        let mut foreign = l.clone();
        foreign.spec.as_mut().unwrap().acquire_time = None;
        assert_eq!(instance(&foreign), Version("1".into()));
    }

    #[test]
    fn failsafe_travels_as_an_annotation() {
        let mut l = lease("1", Some("a"), 30);
        assert_eq!(failsafe_raw(&l), None);
        let topology: BTreeMap<String, String> = [
            ("b".to_owned(), "http://10.0.0.2:8008/patroni".to_owned()),
            ("a".to_owned(), "http://10.0.0.1:8008/patroni".to_owned()),
        ]
        .into();
        let json = serde_json::to_string(&topology).unwrap();
        set_failsafe(&mut l, &json);
        assert_eq!(
            l.metadata.annotations.as_ref().unwrap()["failsafe"],
            r#"{"a":"http://10.0.0.1:8008/patroni","b":"http://10.0.0.2:8008/patroni"}"#
        );
        let v = ClusterView::from_raw([(
            "failsafe",
            failsafe_raw(&l).unwrap().as_str(),
            Version("1".into()),
        )]);
        assert_eq!(v.failsafe, Some(topology));
        // A renewal keeps it.
        let renewed = taken(
            &l,
            "a",
            Duration::from_secs(30),
            Timestamp::UNIX_EPOCH,
            true,
        );
        assert_eq!(failsafe_raw(&renewed), failsafe_raw(&l));
    }

    #[test]
    fn status_travels_as_annotations() {
        let mut l = lease("1", Some("a"), 30);
        let st = Status {
            optime: 67108864,
            slots: Some([("m1".to_owned(), 5u64)].into_iter().collect()),
            retain_slots: None,
        };
        set_status(&mut l, &st);
        let ann = l.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann["optime"], "67108864");
        assert_eq!(ann["slots"], r#"{"m1":5}"#);
        let v = ClusterView::from_raw([(
            "status",
            status_raw(&l).unwrap().as_str(),
            Version("1".into()),
        )]);
        assert_eq!(v.status, Some(st));
        // A garbled optime is a problem, not a position.
        l.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("optime".into(), "x".into());
        let v = ClusterView::from_raw([(
            "status",
            status_raw(&l).unwrap().as_str(),
            Version("1".into()),
        )]);
        assert!(v.status.is_none());
        assert_eq!(v.problems.len(), 1);
    }
}
