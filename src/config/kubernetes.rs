//! The typed `kubernetes:` section (patroni-compat §5), plus pgwarden's Lease settings.
//!
//! `Config.kubernetes` keeps the raw mapping (so a dump shows what the operator wrote); the
//! backend reads it through [`Kubernetes::parse`], which is also run at load time so that a bad
//! section fails start-up with one line naming the key.

use std::collections::BTreeMap;

use serde_json::Value;

use super::error::ConfigError;
use super::value::{Obj, as_int, as_string};

/// One entry of `kubernetes.ports` (Patroni: `[{name: postgresql, port: 5432}]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesPort {
    /// Port name, as a Service's `targetPort` would name it.
    pub name: Option<String>,
    /// Port number.
    pub port: u16,
    /// `TCP` unless given.
    pub protocol: String,
}

/// The `kubernetes:` section, with Patroni's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kubernetes {
    /// Namespace of every object (Patroni's default `default`).
    pub namespace: String,
    /// Labels put on every object pgwarden creates, and part of the selector.
    pub labels: BTreeMap<String, String>,
    /// Label naming the cluster (`cluster-name`).
    pub scope_label: String,
    /// Label carrying the member's role on its Pod (`role`).
    pub role_label: String,
    /// Role label value of the lock holder (`primary`; Patroni 3 used `master`).
    pub leader_label_value: String,
    /// Role label value of a running replica (`replica`).
    pub follower_label_value: String,
    /// Role label value of a standby leader (`primary`).
    pub standby_leader_label_value: String,
    /// The pod's IP, for the primary EndpointSlice (needed when it is kept).
    pub pod_ip: Option<String>,
    /// Ports published in the primary EndpointSlice.
    pub ports: Vec<KubernetesPort>,
    /// Name of the Lease that is the leader lock; `None`: `<scope>-leader`.
    pub lease_name: Option<String>,
    /// A replica rewrites its Pod's `status` annotation for a WAL position alone only once a
    /// position moved by at least this many bytes (peers read exact positions through REST).
    pub position_threshold: u64,
    /// Keep an EndpointSlice `<scope>-primary` holding the leader's pod IP and `ports`, for a
    /// selector-less primary Service.
    pub primary_endpoint_slice: bool,
    /// Patroni's Endpoints mode. Accepted when loading (a Patroni config must load), refused by
    /// the backend: pgwarden keeps the lock in a Lease and the rest in ConfigMaps.
    pub use_endpoints: bool,
}

impl Default for Kubernetes {
    fn default() -> Self {
        Kubernetes {
            namespace: "default".into(),
            labels: BTreeMap::new(),
            scope_label: "cluster-name".into(),
            role_label: "role".into(),
            leader_label_value: "primary".into(),
            follower_label_value: "replica".into(),
            standby_leader_label_value: "primary".into(),
            pod_ip: None,
            ports: Vec::new(),
            lease_name: None,
            position_threshold: 16 * 1024 * 1024,
            primary_endpoint_slice: false,
            use_endpoints: false,
        }
    }
}

impl Kubernetes {
    /// Parses the raw section.
    pub fn parse(raw: &Value) -> Result<Kubernetes, ConfigError> {
        let o = Obj::new("kubernetes", Some(raw))?;
        let d = Kubernetes::default();
        let labels = o.string_map("labels")?.unwrap_or_default();
        let threshold = match o.int("position_threshold")? {
            None => d.position_threshold,
            Some(n) => u64::try_from(n).map_err(|_| {
                ConfigError::invalid(o.key("position_threshold"), "must not be negative")
            })?,
        };
        let non_empty = |key: &str, default: String| -> Result<String, ConfigError> {
            match o.string(key)? {
                Some(s) if s.trim().is_empty() => {
                    Err(ConfigError::invalid(o.key(key), "must not be empty"))
                }
                Some(s) => Ok(s),
                None => Ok(default),
            }
        };
        Ok(Kubernetes {
            namespace: non_empty("namespace", d.namespace)?,
            labels,
            scope_label: non_empty("scope_label", d.scope_label)?,
            role_label: non_empty("role_label", d.role_label)?,
            leader_label_value: non_empty("leader_label_value", d.leader_label_value)?,
            follower_label_value: non_empty("follower_label_value", d.follower_label_value)?,
            standby_leader_label_value: non_empty(
                "standby_leader_label_value",
                d.standby_leader_label_value,
            )?,
            pod_ip: o.string("pod_ip")?.filter(|s| !s.trim().is_empty()),
            ports: parse_ports(&o)?,
            lease_name: o.string("lease_name")?.filter(|s| !s.trim().is_empty()),
            position_threshold: threshold,
            primary_endpoint_slice: o.bool("primary_endpoint_slice")?.unwrap_or(false),
            use_endpoints: o.bool("use_endpoints")?.unwrap_or(false),
        })
    }
}

fn parse_ports(o: &Obj<'_>) -> Result<Vec<KubernetesPort>, ConfigError> {
    let Some(v) = o.get("ports") else {
        return Ok(Vec::new());
    };
    let path = o.key("ports");
    let Value::Array(items) = v else {
        return Err(ConfigError::wrong_type(path, "a list", v));
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let ipath = format!("{path}.{i}");
        let p = Obj::new(&ipath, Some(item))?;
        let port_key = p.key("port");
        let port = match p.get("port") {
            Some(v) => as_int(&port_key, v)?,
            None => return Err(ConfigError::missing(port_key)),
        };
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| ConfigError::invalid(&port_key, "is not a port number"))?;
        let protocol = match p.get("protocol") {
            Some(v) => as_string(&p.key("protocol"), v)?,
            None => "TCP".into(),
        };
        out.push(KubernetesPort {
            name: p.string("name")?,
            port,
            protocol,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_are_patronis() {
        let k = Kubernetes::parse(&json!({})).unwrap();
        assert_eq!(k, Kubernetes::default());
        assert_eq!(k.namespace, "default");
        assert_eq!(k.scope_label, "cluster-name");
        assert_eq!(k.leader_label_value, "primary");
    }

    #[test]
    fn full_section() {
        let k = Kubernetes::parse(&json!({
            "namespace": "db", "labels": {"application": "patroni"},
            "role_label": "pg-role", "leader_label_value": "master",
            "follower_label_value": "standby", "pod_ip": "10.0.0.5",
            "ports": [{"name": "postgresql", "port": "5432"}],
            "lease_name": "my-lock", "position_threshold": 1024,
            "primary_endpoint_slice": "on"
        }))
        .unwrap();
        assert_eq!(k.namespace, "db");
        assert_eq!(k.labels["application"], "patroni");
        assert_eq!(k.leader_label_value, "master");
        assert_eq!(k.ports[0].port, 5432);
        assert_eq!(k.ports[0].protocol, "TCP");
        assert_eq!(k.lease_name.as_deref(), Some("my-lock"));
        assert_eq!(k.position_threshold, 1024);
        assert!(k.primary_endpoint_slice);
    }

    #[test]
    fn errors_name_the_key() {
        let e = |v: Value| Kubernetes::parse(&v).unwrap_err().to_string();
        assert_eq!(
            e(json!({"ports": [{"name": "pg"}]})),
            "config error: kubernetes.ports.0.port: is required"
        );
        assert_eq!(
            e(json!({"ports": [{"port": 70000}]})),
            "config error: kubernetes.ports.0.port: is not a port number"
        );
        assert_eq!(
            e(json!({"role_label": ""})),
            "config error: kubernetes.role_label: must not be empty"
        );
    }
}
