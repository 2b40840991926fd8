//! Which imports a step component may have. Pure: given the import names a component declares
//! and its domain, accept or name the first import that is not allowed.
//!
//! Allowed: the domain's own capability interface, the shared `types`, `metrics` and `log`, and
//! the part of WASI the Rust standard library links (cli, io, clocks, random, filesystem). The
//! host gives those nothing to reach: no preopened directory, no environment, no arguments, no
//! inherited stdio. Everything else (`wasi:sockets`, `wasi:http`, another domain's interface, an
//! unknown package) is refused before the component is ever instantiated.

use themis_core::capability::Domain;

const THEMIS_PACKAGE: &str = "themis:runbook";
/// Major.minor of the WIT package this host implements; a component built against another
/// minor of 0.x is not compatible.
const THEMIS_VERSION_PREFIX: &str = "0.1.";
const SHARED_INTERFACES: &[&str] = &["types", "metrics", "log"];
const WASI_INTERFACES: &[&str] = &[
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
];

/// The first import of a component that its domain's world does not provide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedImport {
    pub import: String,
    pub domain: Domain,
}

impl std::fmt::Display for RefusedImport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "imports `{}`, which the {} world does not provide; a {} step may import only {THEMIS_PACKAGE}/{{{}, types, metrics, log}}@0.1 and the sandboxed WASI subset (cli, io, clocks, random, filesystem without preopens)",
            self.import,
            self.domain.world(),
            self.domain,
            self.domain.interface()
        )
    }
}

pub fn check(domain: Domain, imports: &[String]) -> Result<(), RefusedImport> {
    match imports.iter().find(|name| !allowed(domain, name)) {
        Some(name) => Err(RefusedImport {
            import: name.clone(),
            domain,
        }),
        None => Ok(()),
    }
}

fn allowed(domain: Domain, import: &str) -> bool {
    let (path, version) = import.split_once('@').unwrap_or((import, ""));
    if let Some(interface) = path
        .strip_prefix(THEMIS_PACKAGE)
        .and_then(|rest| rest.strip_prefix('/'))
    {
        return version.starts_with(THEMIS_VERSION_PREFIX)
            && (SHARED_INTERFACES.contains(&interface) || interface == domain.interface());
    }
    // WASI 0.2.x: any patch release is link-compatible.
    version.starts_with("0.2.") && WASI_INTERFACES.contains(&path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_domain_gets_its_own_interface_shared_ones_and_wasi_basics() {
        let ok = names(&[
            "wasi:cli/stderr@0.2.6",
            "wasi:io/streams@0.2.0",
            "themis:runbook/types@0.1.0",
            "themis:runbook/metrics@0.1.0",
            "themis:runbook/kafka@0.1.0",
        ]);
        assert_eq!(check(Domain::Kafka, &ok), Ok(()));
    }

    #[test]
    fn sockets_http_other_domains_and_versions_are_refused_by_name() {
        for (domain, bad) in [
            (Domain::Kafka, "wasi:sockets/tcp@0.2.6"),
            (Domain::Kafka, "wasi:http/outgoing-handler@0.2.6"),
            (Domain::Kafka, "themis:runbook/k8s@0.1.0"),
            (Domain::Postgres, "themis:runbook/kafka@0.1.0"),
            (Domain::Kafka, "themis:runbook/kafka@0.2.0"),
            (Domain::Kafka, "wasi:cli/stderr@0.3.0"),
            (Domain::Kafka, "acme:evil/thing"),
        ] {
            let list = names(&["themis:runbook/log@0.1.0", bad]);
            let err = check(domain, &list).expect_err(bad);
            assert_eq!(err.import, bad);
            assert!(err.to_string().contains(bad));
        }
    }
}
