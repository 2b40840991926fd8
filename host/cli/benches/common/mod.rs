//! `themis serve` started as an operator starts it, for the benches that measure through it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running `themis serve`, killed when dropped.
pub struct Served {
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `themis serve --config config` in `dir` with `env`, compiled components cached in `cache`;
/// returns once it listens.
pub fn serve(config: &Path, dir: &Path, env: &[(&str, &str)], cache: &Path) -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_themis"))
        .args(["serve", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .env("THEMIS_CACHE_DIR", cache)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("themis serve");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let url = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(url) = line.strip_prefix("themis serve: listening on ") {
                    break url.to_owned();
                }
            }
            _ => panic!("themis serve did not start"),
        }
    };
    // Its console output (escalations): read, or the pipe fills and the service blocks on it.
    std::thread::spawn(move || for _ in lines {});
    Served { child, url }
}
