//! Patroni's etcd key layout and endpoint spelling: pure string work, no I/O.

use crate::dcs::DcsError;

/// The cluster's key prefix, `/<namespace>/<scope>/`, with runs of `/` collapsed as Patroni does
/// (`re.sub('/+', '/', ...)`); an empty namespace gives `/<scope>/`.
pub(super) fn cluster_prefix(namespace: &str, scope: &str) -> String {
    let joined = format!("/{namespace}/{scope}/");
    let mut out = String::with_capacity(joined.len());
    for c in joined.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

/// The key relative to the cluster prefix (`leader`, `members/m0`), if it lies under it.
pub(super) fn relative<'a>(prefix: &str, full: &'a [u8]) -> Option<&'a [u8]> {
    full.strip_prefix(prefix.as_bytes())
}

/// Endpoints as etcd-client wants them: `http://host:port`. Accepts bare `host:port`, trailing
/// slashes and comma-separated lists (Patroni's `hosts: a:2379,b:2379`).
pub(super) fn normalize_endpoints(raw: &[String]) -> Result<Vec<String>, DcsError> {
    let out: Vec<String> = raw
        .iter()
        .flat_map(|e| e.split(','))
        .map(|e| e.trim().trim_end_matches('/'))
        .filter(|e| !e.is_empty())
        .map(|e| {
            if e.contains("://") {
                e.to_owned()
            } else {
                format!("http://{e}")
            }
        })
        .collect();
    if out.is_empty() {
        return Err(DcsError::Failed("no etcd endpoints configured".into()));
    }
    Ok(out)
}

/// A lease TTL in whole seconds, rounded up so the lease never lives shorter than asked.
pub(super) fn ttl_secs(ttl: std::time::Duration) -> i64 {
    let ms = ttl.as_millis().max(1);
    i64::try_from(ms.div_ceil(1000)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn prefix_is_normalised_like_patroni() {
        assert_eq!(cluster_prefix("/service", "batman"), "/service/batman/");
        assert_eq!(cluster_prefix("/service/", "batman"), "/service/batman/");
        assert_eq!(cluster_prefix("service", "batman"), "/service/batman/");
        assert_eq!(cluster_prefix("//a//b/", "c"), "/a/b/c/");
        assert_eq!(cluster_prefix("", "batman"), "/batman/");
        assert_eq!(cluster_prefix("/", "batman"), "/batman/");
    }

    #[test]
    fn relative_keys() {
        let p = "/service/batman/";
        assert_eq!(
            relative(p, b"/service/batman/members/a"),
            Some(&b"members/a"[..])
        );
        assert_eq!(relative(p, b"/service/batmanx/leader"), None);
    }

    #[test]
    fn endpoints_get_a_scheme() {
        let eps = normalize_endpoints(&[
            "127.0.0.1:2379".into(),
            "http://10.0.0.1:2379/".into(),
            " a:1, b:2 ".into(),
        ])
        .unwrap();
        assert_eq!(
            eps,
            [
                "http://127.0.0.1:2379",
                "http://10.0.0.1:2379",
                "http://a:1",
                "http://b:2"
            ]
        );
        assert!(normalize_endpoints(&[" ".into()]).is_err());
    }

    #[test]
    fn ttl_rounds_up() {
        assert_eq!(ttl_secs(Duration::from_secs(30)), 30);
        assert_eq!(ttl_secs(Duration::from_millis(2500)), 3);
        assert_eq!(ttl_secs(Duration::ZERO), 1);
    }
}
