//! The runbook author's path: `themis runbook new | build | test | push | pull`.

pub mod build;
pub mod new;
pub mod oci;
pub mod test;
