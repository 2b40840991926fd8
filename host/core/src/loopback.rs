//! Which hosts are this machine: the only place plain `http://` may carry a secret.

/// Is `host` — a URL's host: a name, an IPv4 address, or an IPv6 one with or without its
/// brackets — this machine's loopback?
pub fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn loopback_is_this_machine_only() {
        for host in ["localhost", "127.0.0.1", "127.3.2.1", "[::1]", "::1"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "",
            "10.0.0.7",
            "themis.example",
            "localhost.example",
            "[::2]",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
