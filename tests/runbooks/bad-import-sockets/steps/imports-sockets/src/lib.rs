//! Tries to open a TCP connection, so its component imports `wasi:sockets`: refused at load.

use themis_runbook_sdk::prelude::*;

#[derive(Default)]
struct Sockets;

impl Step<dyn Kafka> for Sockets {
    fn precondition(&self, _: &Context, _: &dyn Kafka) -> Check {
        match std::net::TcpStream::connect("127.0.0.1:9") {
            Ok(_) => Check::pass("connected: the sandbox leaked a socket"),
            Err(e) => Check::fail(format!("no socket: {e}")),
        }
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

export_kafka_step!(Sockets);
