//! `host:port` strings, split the way Patroni's `split_host_port` does: on the last colon, with
//! brackets around IPv6 hosts optional and a comma-separated host list allowed (`127.0.0.1,::1:5432`).

use super::error::ConfigError;

/// Splits `value` into (hosts joined by commas, without brackets; port).
pub(crate) fn split_host_port(key: &str, value: &str) -> Result<(String, u16), ConfigError> {
    let not_host_port = || ConfigError::invalid(key, format!("'{value}' is not host:port"));
    let (host, port) = value.trim().rsplit_once(':').ok_or_else(not_host_port)?;
    let port = port.trim();
    if port.is_empty() || !port.chars().all(|c| c.is_ascii_digit()) {
        return Err(not_host_port());
    }
    let port = match port.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => p as u16,
        _ => {
            return Err(ConfigError::invalid(
                key,
                format!("port {port} is out of range 1..65535"),
            ));
        }
    };
    let hosts: Vec<&str> = host
        .split(',')
        .map(|h| h.trim().trim_start_matches('[').trim_end_matches(']'))
        .collect();
    Ok((hosts.join(","), port))
}

/// A wildcard listen address cannot be dialled by peers, so it cannot double as a connect address.
pub(crate) fn is_wildcard(host: &str) -> bool {
    matches!(host.trim(), "" | "0.0.0.0" | "::" | "*")
}

/// Validates an address others connect to: one concrete host and a port.
pub(crate) fn check_connect_address(key: &str, value: &str) -> Result<(), ConfigError> {
    let (host, _) = split_host_port(key, value)?;
    if host.contains(',') || is_wildcard(&host) {
        return Err(ConfigError::invalid(
            key,
            format!("'{value}' must name one host that other members can connect to"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_patroni() {
        assert_eq!(
            split_host_port("k", "0.0.0.0:8008").unwrap(),
            ("0.0.0.0".into(), 8008)
        );
        assert_eq!(
            split_host_port("k", "[::1]:5432").unwrap(),
            ("::1".into(), 5432)
        );
        assert_eq!(
            split_host_port("k", "127.0.0.1, [::1]:5432").unwrap(),
            ("127.0.0.1,::1".into(), 5432)
        );
        assert_eq!(
            split_host_port("restapi.listen", "abc")
                .unwrap_err()
                .to_string(),
            "config error: restapi.listen: 'abc' is not host:port"
        );
        assert_eq!(
            split_host_port("k", "h:0").unwrap_err().to_string(),
            "config error: k: port 0 is out of range 1..65535"
        );
        assert_eq!(
            split_host_port("k", "h:70000").unwrap_err().to_string(),
            "config error: k: port 70000 is out of range 1..65535"
        );
    }

    #[test]
    fn connect_address_must_be_concrete() {
        assert!(check_connect_address("k", "10.0.0.1:8008").is_ok());
        assert!(check_connect_address("k", "127.0.0.1:8008").is_ok());
        assert_eq!(
            check_connect_address("k", "0.0.0.0:8008")
                .unwrap_err()
                .to_string(),
            "config error: k: '0.0.0.0:8008' must name one host that other members can connect to"
        );
    }
}
