//! The primary's EndpointSlice (`kubernetes.primary_endpoint_slice: true`): an object
//! `<scope>-primary` labelled `kubernetes.io/service-name: <scope>-primary`, which a
//! selector-less Service of that name routes by. The member that runs as the primary puts its
//! `pod_ip` and `ports` in it as soon as it publishes that role, so routing follows a new
//! primary without waiting for the endpoint controller to see a Pod's label change (a Service
//! with a selector follows the role label; this one follows the agent directly).
//!
//! A member that stops running as the primary takes its address out, but only if the slice
//! still holds it (a compare-and-set on `resourceVersion`), so it never removes a newer
//! primary's. A primary that died cannot do that; its successor replaces the address with
//! its own when it publishes its role.
//!
//! Writes run in a task of their own, fed the latest wish through a `watch` channel: the HA
//! loop never waits for them, a failed write is retried every second until it lands or the
//! wish changes, and only the latest wish is ever written.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;

use super::errors::{bounded, classify};
use crate::config::{Kubernetes, KubernetesPort};
use crate::dcs::DcsError;

/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Tells the endpoint controllers the slice is not theirs.
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// How long to wait before trying a failed write again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// What this member wants the slice to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wish {
    /// Nothing asked yet (the member has not published a role).
    Unknown,
    /// This member runs as the primary: the slice holds its address.
    Here,
    /// This member does not: the slice must not hold its address.
    NotHere,
}

/// The slice's fixed parts, known from the configuration.
#[derive(Debug, Clone)]
pub(super) struct SliceSpec {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub address: String,
    pub address_type: &'static str,
    pub ports: Vec<KubernetesPort>,
}

impl SliceSpec {
    /// The slice of `scope`, or why the configuration cannot have one.
    pub(super) fn of(k: &Kubernetes, scope: &str) -> Result<SliceSpec, DcsError> {
        let Some(ip) = k.pod_ip.as_deref() else {
            return Err(DcsError::Failed(
                "kubernetes.primary_endpoint_slice needs kubernetes.pod_ip (PATRONI_KUBERNETES_POD_IP, the pod's status.podIP)".into(),
            ));
        };
        let address_type = match ip.trim().parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => "IPv4",
            Ok(IpAddr::V6(_)) => "IPv6",
            Err(_) => {
                return Err(DcsError::Failed(format!(
                    "kubernetes.pod_ip {ip:?} is not an IP address"
                )));
            }
        };
        let name = format!("{scope}-primary");
        let mut labels = super::labels::object_labels(k, scope);
        labels.insert(SERVICE_NAME.into(), name.clone());
        labels.insert(MANAGED_BY.into(), "pgwarden".into());
        let ports = if k.ports.is_empty() {
            // Patroni's default for its Endpoints.
            vec![KubernetesPort {
                name: Some("postgresql".into()),
                port: 5432,
                protocol: "TCP".into(),
            }]
        } else {
            k.ports.clone()
        };
        Ok(SliceSpec {
            name,
            labels,
            address: ip.trim().to_owned(),
            address_type,
            ports,
        })
    }

    /// The whole object, holding `addresses`.
    fn object(&self, addresses: Vec<String>, version: Option<String>) -> EndpointSlice {
        let endpoints = addresses
            .into_iter()
            .map(|a| Endpoint {
                addresses: vec![a],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    ..EndpointConditions::default()
                }),
                ..Endpoint::default()
            })
            .collect();
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(self.labels.clone()),
                resource_version: version,
                ..ObjectMeta::default()
            },
            address_type: self.address_type.into(),
            endpoints: Some(endpoints),
            ports: Some(
                self.ports
                    .iter()
                    .map(|p| EndpointPort {
                        name: p.name.clone(),
                        port: Some(i32::from(p.port)),
                        protocol: Some(p.protocol.clone()),
                        ..EndpointPort::default()
                    })
                    .collect(),
            ),
        }
    }
}

/// Whether `slice` holds `address`.
fn holds(slice: &EndpointSlice, address: &str) -> bool {
    slice
        .endpoints
        .iter()
        .flatten()
        .any(|e| e.addresses.iter().any(|a| a == address))
}

/// Makes the slice say what `wish` asks: one read, then at most one write, as a
/// compare-and-set on what was read (a 409 is a conflict: read again).
async fn apply(api: &Api<EndpointSlice>, spec: &SliceSpec, wish: Wish) -> Result<(), DcsError> {
    for _ in 0..3 {
        let current = api
            .get_opt(&spec.name)
            .await
            .map_err(|e| classify("read the primary EndpointSlice", e))?;
        let result = match (wish, current) {
            (Wish::Unknown, _) => return Ok(()),
            (Wish::Here, None) => {
                api.create(
                    &PostParams::default(),
                    &spec.object(vec![spec.address.clone()], None),
                )
                .await
            }
            (Wish::Here, Some(s)) => {
                let only_mine = s.endpoints.as_ref().is_some_and(|e| {
                    e.len() == 1 && e[0].addresses == std::slice::from_ref(&spec.address)
                });
                if only_mine {
                    return Ok(());
                }
                let version = s.metadata.resource_version.clone();
                api.replace(
                    &spec.name,
                    &PostParams::default(),
                    &spec.object(vec![spec.address.clone()], version),
                )
                .await
            }
            (Wish::NotHere, None) => return Ok(()),
            (Wish::NotHere, Some(s)) => {
                if !holds(&s, &spec.address) {
                    return Ok(());
                }
                let version = s.metadata.resource_version.clone();
                api.replace(
                    &spec.name,
                    &PostParams::default(),
                    &spec.object(Vec::new(), version),
                )
                .await
            }
        };
        match result {
            Ok(_) => return Ok(()),
            // Someone wrote in between (or created it first): look again.
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(classify("write the primary EndpointSlice", e)),
        }
    }
    Err(DcsError::Failed(
        "write the primary EndpointSlice: conflicting writes, 3 times".into(),
    ))
}

/// Keeps the slice as the latest wish asks until the sender goes.
pub(super) async fn keep(
    api: Api<EndpointSlice>,
    spec: SliceSpec,
    limit: Duration,
    mut wishes: watch::Receiver<Wish>,
) {
    loop {
        let wish = *wishes.borrow_and_update();
        let done = match bounded(limit, "primary EndpointSlice", apply(&api, &spec, wish)).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "could not update the primary EndpointSlice; retrying");
                false
            }
        };
        if done {
            if wishes.changed().await.is_err() {
                return;
            }
        } else {
            tokio::select! {
                _ = tokio::time::sleep(RETRY_EVERY) => {}
                r = wishes.changed() => if r.is_err() { return },
            }
        }
    }
}

/// The wish a member's published role makes: a running primary (or standby leader) wants the
/// slice, any other state does not.
pub(super) fn wish_of(member: &crate::dcs::Member) -> Wish {
    let running = member.state.as_deref() == Some("running");
    match member.role.as_deref() {
        Some("primary" | "master" | "standby_leader") if running => Wish::Here,
        _ => Wish::NotHere,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcs::Member;

    fn k(ip: Option<&str>) -> Kubernetes {
        Kubernetes {
            pod_ip: ip.map(str::to_owned),
            primary_endpoint_slice: true,
            ..Kubernetes::default()
        }
    }

    #[test]
    fn the_slice_needs_a_pod_ip_that_is_an_address() {
        let e = SliceSpec::of(&k(None), "pg").unwrap_err().to_string();
        assert!(e.contains("kubernetes.pod_ip"), "{e}");
        let e = SliceSpec::of(&k(Some("pod-0")), "pg")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an IP address"), "{e}");
        let s = SliceSpec::of(&k(Some("fd00::5")), "pg").unwrap();
        assert_eq!(s.address_type, "IPv6");
    }

    #[test]
    fn the_slice_names_its_service_and_defaults_to_postgresql_s_port() {
        let s = SliceSpec::of(&k(Some("10.0.0.5")), "pg").unwrap();
        assert_eq!(s.name, "pg-primary");
        assert_eq!(s.address_type, "IPv4");
        assert_eq!(s.labels[SERVICE_NAME], "pg-primary");
        assert_eq!(s.labels["cluster-name"], "pg");
        let o = s.object(vec!["10.0.0.5".into()], None);
        let ports = o.ports.unwrap();
        assert_eq!(ports[0].port, Some(5432));
        assert_eq!(ports[0].name.as_deref(), Some("postgresql"));
        assert!(holds(&s.object(vec!["10.0.0.5".into()], None), "10.0.0.5"));
        assert!(!holds(&s.object(Vec::new(), None), "10.0.0.5"));
    }

    #[test]
    fn only_a_running_primary_wants_the_slice() {
        let m = |state: &str, role: &str| Member {
            state: Some(state.into()),
            role: Some(role.into()),
            ..Member::default()
        };
        assert_eq!(wish_of(&m("running", "primary")), Wish::Here);
        assert_eq!(wish_of(&m("running", "standby_leader")), Wish::Here);
        assert_eq!(wish_of(&m("stopping", "primary")), Wish::NotHere);
        assert_eq!(wish_of(&m("running", "replica")), Wish::NotHere);
        assert_eq!(wish_of(&m("running", "demoted")), Wish::NotHere);
    }
}
