//! Looks for ambient authority from inside the sandbox and reports what it found: environment
//! variables, arguments, files, the clock it is allowed, and whether stdout reaches anyone.

use themis_runbook_sdk::prelude::*;

#[derive(Default)]
struct Ambient;

impl Step<dyn Kafka> for Ambient {
    fn precondition(&self, _: &Context, _: &dyn Kafka) -> Check {
        let root = match std::fs::read_dir("/") {
            Ok(entries) => format!("listed {} entries", entries.count()),
            Err(e) => format!("denied: {e}"),
        };
        let passwd = match std::fs::read_to_string("/etc/passwd") {
            Ok(_) => "read".to_string(),
            Err(e) => format!("denied: {e}"),
        };
        println!("if the host inherited stdout, this line would show");
        Check::pass("looked around")
            .evidence("env_vars", std::env::vars().count())
            .evidence("args", std::env::args().count())
            .evidence("read_dir_root", root)
            .evidence("read_etc_passwd", passwd)
    }
    fn action(&self, _: &Context, _: &dyn Kafka) -> Outcome {
        Outcome::ok("ok")
    }
    fn postcondition(&self, _: &Context, _: &dyn Kafka) -> Check {
        Check::pass("ok")
    }
    fn rollback(&self, _: &Context, _: &dyn Kafka) -> Check {
        Check::pass("ok")
    }
}

export_kafka_step!(Ambient);
