//! Host start with 30 signed step components: cold compiled-component cache vs warm.
//!
//! Ten bundles of three steps each, every component distinct (a shipped step component with a
//! unique custom section appended, so each has its own digest and its own compilation), all
//! signed with one key. A "start" is what `themis` does before it can take an alert: make the
//! sandbox (engine, linkers, cache), verify every bundle, compile or load every component and
//! pre-instantiate it.
//!
//! cargo bench -p themis --bench startup

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use themis_core::trust::TrustPolicy;
use themis_core::trust::bundle::{SIGNATURE_FILE, SignatureFile};
use themis_core::trust::keys::SecretKey;
use themis_sandbox::loaded::LoadedRunbook;
use themis_sandbox::{Sandbox, SandboxConfig};

const BUNDLES: usize = 10;
const STEPS: usize = 3;
const ROUNDS: usize = 3;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A component with a custom section `themis-bench` holding `tag`: same code, new digest.
fn distinct(base: &[u8], tag: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"themis-bench";
    let mut body = Vec::new();
    leb(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend_from_slice(tag.as_bytes());
    let mut out = base.to_vec();
    out.push(0); // custom section
    leb(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

fn make_bundles(root: &Path, key: &SecretKey) -> Vec<PathBuf> {
    let base =
        std::fs::read(repo().join("runbooks/kafka/check-broker-health/components/brokers-up.wasm"))
            .expect("components built: run scripts/build-runbooks");
    (0..BUNDLES)
        .map(|b| {
            let dir = root.join(format!("bench-{b}"));
            std::fs::create_dir_all(dir.join("components")).expect("mkdir");
            let mut manifest = format!(
                "id: bench-{b}\nversion: 1.0.0\ndomain: kafka\ndescription: startup benchmark bundle\nsteps:\n"
            );
            for s in 0..STEPS {
                std::fs::write(
                    dir.join(format!("components/s{s}.wasm")),
                    distinct(&base, &format!("{b}-{s}")),
                )
                .expect("write component");
                let next = if s + 1 < STEPS {
                    format!("s{}", s + 1)
                } else {
                    "end".into()
                };
                manifest.push_str(&format!(
                    "  - {{ id: s{s}, component: components/s{s}.wasm, capabilities: [kafka.describe-cluster], on: {{ next: {next} }} }}\n"
                ));
            }
            std::fs::write(dir.join("manifest.yaml"), manifest).expect("write manifest");
            let runbook = themis_core::manifest::Runbook::load(&dir).expect("valid bundle");
            std::fs::write(
                dir.join(SIGNATURE_FILE),
                SignatureFile::sign(&runbook, key).to_json(),
            )
            .expect("sign");
            dir
        })
        .collect()
}

/// One host start; returns its duration and how many components were compiled.
fn start(cache: &Path, bundles: &[PathBuf], trust: &TrustPolicy) -> (Duration, u64, u64) {
    let t = Instant::now();
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: Some(cache.to_path_buf()),
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    for dir in bundles {
        LoadedRunbook::load(&sandbox, dir, trust).expect("loads");
    }
    let elapsed = t.elapsed();
    let stats = sandbox.stats();
    (elapsed, stats.compiles, stats.cache_hits)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let work = tempfile::tempdir().expect("tempdir");
    let key = SecretKey::generate().expect("key");
    let trust = TrustPolicy::trusting([key.public("bench")]);
    let bundles = make_bundles(work.path(), &key);

    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let (mut cold_compiles, mut warm_compiles, mut warm_hits) = (0, 0, 0);
    for round in 0..ROUNDS {
        let cache = work.path().join(format!("cache-{round}"));
        let (d, compiles, _) = start(&cache, &bundles, &trust);
        cold.push(d);
        cold_compiles = compiles;
        let (d, compiles, hits) = start(&cache, &bundles, &trust);
        warm.push(d);
        warm_compiles = compiles;
        warm_hits = hits;
    }
    let (cold, warm) = (median(cold), median(warm));
    let components = BUNDLES * STEPS;
    println!("host start, {components} signed components in {BUNDLES} bundles, median of {ROUNDS}");
    println!(
        "{:<12} {:>10} {:>10} {:>10} {:>14}",
        "cache", "start ms", "compiled", "from cache", "vs cold"
    );
    println!(
        "{:<12} {:>10.1} {:>10} {:>10} {:>14}",
        "cold",
        ms(cold),
        cold_compiles,
        0,
        "1.00"
    );
    println!(
        "{:<12} {:>10.1} {:>10} {:>10} {:>14}",
        "warm",
        ms(warm),
        warm_compiles,
        warm_hits,
        format!("{:.3} (1/{:.0})", ms(warm) / ms(cold), ms(cold) / ms(warm))
    );
    println!(
        "target: warm start <= 300 ms -> {}",
        if ms(warm) <= 300.0 { "met" } else { "NOT met" }
    );
}
