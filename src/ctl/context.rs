//! What every command needs: the configuration file, the store, and a REST client.
//!
//! Like patronictl, the configuration is a Patroni YAML file (`-c`, `PATRONICTL_CONFIG_FILE`,
//! default `~/.config/patroni/patronictl.yaml`) of which only `scope`, `namespace`, `etcd3` or
//! `kubernetes` (credentials as the agent's: the pod's service account, else `KUBECONFIG`),
//! `restapi.authentication`, `restapi.cafile` and `ctl` matter; `-d/--dcs-url` (`DCS_URL`)
//! overrides the store. REST calls to members serving https trust `ctl.cacert` else
//! `restapi.cafile` (else the system's roots), present `ctl.certfile`/`ctl.keyfile` when set, and
//! skip verification with `-k/--insecure` or `ctl.insecure` (patroni-compat §1.2).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::CtlError;
use crate::dcs::etcd::{EtcdDcs, EtcdSettings};
use crate::dcs::kubernetes::{KubernetesDcs, KubernetesSettings};
use crate::dcs::{ClusterView, Dcs, Member};

/// The loaded configuration.
#[derive(Debug, Clone, Default)]
pub struct CtlConfig {
    /// `scope`.
    pub scope: Option<String>,
    /// `namespace` (default `/service`).
    pub namespace: String,
    /// etcd endpoints (`http://host:port`).
    pub etcd: Vec<String>,
    /// The `kubernetes` section, when the cluster keeps its state in Kubernetes (credentials:
    /// the pod's service account, else `KUBECONFIG`, as the agent's).
    pub kubernetes: Option<crate::config::Kubernetes>,
    /// Basic auth for REST calls (`ctl.authentication`, else `restapi.authentication`).
    pub auth: Option<(String, String)>,
    /// Skip server certificate checks (`-k/--insecure` or `ctl.insecure`).
    pub insecure: bool,
    /// TLS settings of REST calls.
    pub tls: crate::api::tls::ClientTls,
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn auth_at(v: &Value, section: &str) -> Option<(String, String)> {
    let a = str_at(v, &[section, "authentication"])?;
    let u = a.get("username")?.as_str()?.to_owned();
    let p = a
        .get("password")
        .map(|p| p.as_str().map_or_else(|| p.to_string(), str::to_owned))?;
    Some((u, p))
}

fn string_at(v: &Value, path: &[&str]) -> Option<String> {
    str_at(v, path)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Patroni's rule for patronictl's REST calls: CA `ctl.cacert` else `restapi.cafile`, client
/// certificate `ctl.certfile` with `ctl.keyfile` (else the key inside `certfile`).
fn client_tls_of(raw: &Value, insecure: bool) -> crate::api::tls::ClientTls {
    let ca = string_at(raw, &["ctl", "cacert"])
        .map(|p| ("ctl.cacert".to_owned(), p))
        .or_else(|| {
            string_at(raw, &["restapi", "cafile"]).map(|p| ("restapi.cafile".to_owned(), p))
        });
    let cert = string_at(raw, &["ctl", "certfile"]).map(|c| {
        let k = string_at(raw, &["ctl", "keyfile"]).unwrap_or_else(|| c.clone());
        (c, k)
    });
    crate::api::tls::ClientTls {
        ca,
        cert,
        key_prefix: "ctl".into(),
        insecure,
    }
}

fn hosts_of(v: &Value) -> Vec<String> {
    let proto = v.get("protocol").and_then(Value::as_str).unwrap_or("http");
    let list: Vec<String> = match (v.get("hosts"), v.get("host")) {
        (Some(Value::String(s)), _) => s.split(',').map(|h| h.trim().to_owned()).collect(),
        (Some(Value::Array(a)), _) => a
            .iter()
            .filter_map(|h| h.as_str().map(str::to_owned))
            .collect(),
        (_, Some(Value::String(h))) => vec![h.clone()],
        _ => Vec::new(),
    };
    list.into_iter()
        .filter(|h| !h.is_empty())
        .map(|h| {
            if h.contains("://") {
                h
            } else {
                format!("{proto}://{h}")
            }
        })
        .collect()
}

impl CtlConfig {
    /// Reads the file (a missing default file is fine), applies the process's `PATRONI_*`
    /// variables over it (as patronictl does: a member configured by its environment alone,
    /// in a container say, is reached by `patronictl list` run beside it) and `--dcs-url`.
    pub fn load(
        file: Option<PathBuf>,
        dcs_url: Option<&str>,
        insecure: bool,
    ) -> Result<CtlConfig, CtlError> {
        CtlConfig::load_with_env(file, dcs_url, insecure, &crate::config::process_env())
    }

    /// As [`CtlConfig::load`], with the environment given.
    fn load_with_env(
        file: Option<PathBuf>,
        dcs_url: Option<&str>,
        insecure: bool,
        env: &std::collections::BTreeMap<String, String>,
    ) -> Result<CtlConfig, CtlError> {
        let explicit = file.is_some();
        let path = file.unwrap_or_else(|| {
            let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
            PathBuf::from(home).join(".config/patroni/patronictl.yaml")
        });
        let mut raw = match std::fs::read_to_string(&path) {
            Ok(t) => super::yaml::load(&t)
                .map_err(|e| CtlError::msg(format!("{}: {e}", path.display())))?,
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => Value::Null,
            Err(e) => {
                return Err(CtlError::msg(format!(
                    "Could not read the configuration file {}: {e}",
                    path.display()
                )));
            }
        };
        crate::config::apply_env_overrides(&mut raw, env)
            .map_err(|e| CtlError::msg(e.to_string()))?;
        let mut c = CtlConfig {
            scope: raw.get("scope").and_then(Value::as_str).map(str::to_owned),
            namespace: raw
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or("/service")
                .to_owned(),
            etcd: raw.get("etcd3").map(hosts_of).unwrap_or_default(),
            kubernetes: match raw.get("kubernetes") {
                Some(k) => Some(
                    crate::config::Kubernetes::parse(k)
                        .map_err(|e| CtlError::msg(format!("config error: {e}")))?,
                ),
                None => None,
            },
            auth: auth_at(&raw, "ctl").or_else(|| auth_at(&raw, "restapi")),
            insecure,
            tls: crate::api::tls::ClientTls::default(),
        };
        let insecure = insecure
            || str_at(&raw, &["ctl", "insecure"])
                .is_some_and(|v| v.as_bool() == Some(true) || v.as_str() == Some("true"));
        c.insecure = insecure;
        c.tls = client_tls_of(&raw, insecure);
        if let Some(url) = dcs_url {
            c.apply_dcs_url(url)?;
        }
        Ok(c)
    }

    /// `etcd3://host:port[/namespace]` (also `etcd://`, or a bare `host:port`).
    fn apply_dcs_url(&mut self, url: &str) -> Result<(), CtlError> {
        let (scheme, rest) = url.split_once("://").unwrap_or(("etcd3", url));
        if !matches!(scheme, "etcd3" | "etcd") {
            return Err(CtlError::msg(format!(
                "Unsupported DCS in --dcs-url {url}: pgwarden ctl supports etcd3"
            )));
        }
        let (hostport, ns) = rest
            .split_once('/')
            .map_or((rest, None), |(h, n)| (h, Some(n)));
        if hostport.is_empty() {
            return Err(CtlError::msg(format!("--dcs-url {url} names no host")));
        }
        let hostport = if hostport.contains(':') {
            hostport.to_owned()
        } else {
            format!("{hostport}:2379")
        };
        self.etcd = vec![format!("http://{hostport}")];
        if let Some(ns) = ns.filter(|n| !n.is_empty()) {
            self.namespace = format!("/{ns}");
        }
        Ok(())
    }
}

/// A connected command context.
pub struct Ctx {
    /// The configuration.
    pub cfg: CtlConfig,
    /// The cluster name.
    pub scope: String,
    /// The store.
    pub dcs: Arc<dyn Dcs>,
    /// REST client.
    pub http: reqwest::Client,
}

impl Ctx {
    /// Connects to the store of cluster `scope` (or the configured one).
    pub async fn connect(cfg: CtlConfig, scope: Option<&str>) -> Result<Ctx, CtlError> {
        let scope = scope
            .map(str::to_owned)
            .or_else(|| cfg.scope.clone())
            .ok_or_else(|| CtlError::msg("Cluster name required: give it as an argument or set scope in the configuration"))?;
        let dcs: Arc<dyn Dcs> = match (&cfg.kubernetes, cfg.etcd.is_empty()) {
            // etcd wins when both are given: an explicit --dcs-url says etcd.
            (_, false) => Arc::new(
                EtcdDcs::connect(EtcdSettings {
                    endpoints: cfg.etcd.clone(),
                    namespace: cfg.namespace.clone(),
                    scope: scope.clone(),
                    name: "patronictl".into(),
                    ttl: Duration::from_secs(30),
                    retry_timeout: Duration::from_secs(10),
                    username: None,
                    password: None,
                })
                .await
                .map_err(|e| CtlError::msg(e.to_string()))?,
            ),
            (Some(k), true) => Arc::new(
                KubernetesDcs::connect(KubernetesSettings {
                    // patronictl publishes nothing: no primary EndpointSlice to keep.
                    k8s: crate::config::Kubernetes {
                        primary_endpoint_slice: false,
                        ..k.clone()
                    },
                    scope: scope.clone(),
                    // Not a member: the name is never written (no Pod is touched).
                    name: "patronictl".into(),
                    ttl: Duration::from_secs(30),
                    retry_timeout: Duration::from_secs(10),
                })
                .await
                .map_err(|e| CtlError::msg(e.to_string()))?,
            ),
            (None, true) => {
                return Err(CtlError::msg(
                    "Can not find suitable configuration of distributed configuration store\nAvailable implementations: etcd3, kubernetes",
                ));
            }
        };
        let builder = cfg
            .tls
            .apply(reqwest::Client::builder())
            .map_err(|e| CtlError::msg(e.to_string()))?;
        let http = builder
            .no_proxy()
            .timeout(Duration::from_secs(300))
            .connect_timeout(Duration::from_secs(5))
            .user_agent(format!(
                "Patroni/{} pgwarden-ctl",
                crate::api::state::VERSION
            ))
            .build()
            .map_err(|e| CtlError::msg(e.to_string()))?;
        Ok(Ctx {
            cfg,
            scope,
            dcs,
            http,
        })
    }

    /// A fresh read of the cluster.
    pub async fn cluster(&self) -> Result<ClusterView, CtlError> {
        self.dcs
            .load(true)
            .await
            .map_err(|e| CtlError::msg(e.to_string()))
    }

    /// A REST call to a member: `(status, body)`.
    pub async fn request(
        &self,
        m: &Member,
        method: reqwest::Method,
        endpoint: &str,
        body: Option<&Value>,
    ) -> Result<(u16, String), String> {
        let base = m.api_url.as_deref().ok_or("member has no api_url")?;
        let url = match base.rsplit_once('/') {
            Some((root, _)) if base.matches('/').count() >= 3 => format!("{root}/{endpoint}"),
            _ => format!("{}/{endpoint}", base.trim_end_matches('/')),
        };
        let mut rq = self.http.request(method, url);
        if let Some((u, p)) = &self.cfg.auth {
            rq = rq.basic_auth(u, Some(p));
        }
        if let Some(b) = body {
            rq = rq
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let r = rq.send().await.map_err(|e| e.to_string())?;
        let code = r.status().as_u16();
        Ok((code, r.text().await.unwrap_or_default()))
    }
}

/// Asks a yes/no question on the terminal (`[y/N]`).
pub fn confirm(question: &str) -> bool {
    let answer = prompt(&format!("{question} [y/N]"), "");
    matches!(answer.to_lowercase().as_str(), "y" | "yes")
}

/// Reads one answer line; an empty answer (or end of input) gives `default`.
pub fn prompt(question: &str, default: &str) -> String {
    use std::io::Write;
    if default.is_empty() {
        print!("{question}: ");
    } else {
        print!("{question} [{default}]: ");
    }
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    let line = line.trim();
    if line.is_empty() {
        default.to_owned()
    } else {
        line.to_owned()
    }
}

/// `2024-05-01 10:00:00`: patronictl's timestamp prefix.
pub fn timestamp() -> String {
    chrono::Local::now()
        .format("%Y-%m-%d %H:%M:%S.%f")
        .to_string()[..19]
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_overrides_the_file_or_stands_alone() {
        let env: std::collections::BTreeMap<String, String> = [
            ("PATRONI_SCOPE", "pg"),
            ("PATRONI_ETCD3_HOSTS", "127.0.0.1:2379,127.0.0.2:2379"),
            ("PATRONI_RESTAPI_USERNAME", "u"),
            ("PATRONI_RESTAPI_PASSWORD", "p"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let file = std::env::temp_dir().join(format!("ctl-env-{}.yaml", std::process::id()));
        // An empty file (as a missing default one): the environment alone.
        std::fs::write(&file, "").unwrap();
        let c = CtlConfig::load_with_env(Some(file.clone()), None, false, &env);
        let c = c.expect("loads from the environment");
        assert_eq!(c.scope.as_deref(), Some("pg"));
        assert_eq!(c.etcd, ["http://127.0.0.1:2379", "http://127.0.0.2:2379"]);
        assert_eq!(c.auth, Some(("u".into(), "p".into())));
        // The environment wins over the file; what it does not set comes from the file.
        std::fs::write(
            &file,
            "scope: other\nnamespace: /ns\netcd3:\n  hosts: a:1\n",
        )
        .unwrap();
        let c = CtlConfig::load_with_env(Some(file.clone()), None, false, &env);
        let _ = std::fs::remove_file(&file);
        let c = c.expect("loads file and environment");
        assert_eq!(c.scope.as_deref(), Some("pg"));
        assert_eq!(c.namespace, "/ns");
        assert_eq!(c.etcd.len(), 2);
    }
}
