//! Which hosts are this machine: the only place plain `http://` may carry a secret.

/// Is `host` — a URL's host: a name, an IPv4 address, or an IPv6 one with or without its
/// brackets — this machine's loopback?
///
/// An IPv4 address written as IPv6 (`::ffff:127.0.0.1`) is the IPv4 address; the unspecified
/// address (`0.0.0.0`, `::`) is this machine too, as a destination on Linux. Other names that
/// only a resolver makes local (`*.localhost`, `localhost.`) are not trusted to be.
pub fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.to_canonical())
            .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn loopback_is_this_machine_only() {
        for host in [
            "localhost",
            "LocalHost",
            "127.0.0.1",
            "127.3.2.1",
            "[::1]",
            "::1",
            "[::ffff:127.0.0.1]",
            "::ffff:7f00:2",
            "0.0.0.0",
            "[::]",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "",
            "10.0.0.7",
            "themis.example",
            "localhost.example",
            "[::2]",
            "[::ffff:10.0.0.7]",
            "db.localhost",
            "localhost.",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
