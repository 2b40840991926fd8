//! TLS and SASL settings reach librdkafka: the client speaks TLS to a real TLS server (OpenSSL's
//! `s_server`) that holds a certificate for 127.0.0.1, checks it against the configured CA (a
//! server whose certificate chains elsewhere is refused, and the error says why), and sends its
//! Kafka requests inside the TLS session. No broker with TLS or SASL runs here (librdkafka's mock
//! cluster speaks plaintext only), so what follows the handshake is not tested against a broker.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;
use themis_backend_kafka::{
    KafkaBackend, KafkaSasl, KafkaSecurity, KafkaSettings, KafkaTls, SaslMechanism,
};
use themis_caps::KafkaCaps;
use themis_caps::types::CapError;

fn openssl_present() -> bool {
    Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A self-signed certificate for 127.0.0.1 (and localhost): `<name>.pem`, `<name>.key`.
fn certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl req");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// OpenSSL's TLS server for one connection, listening once it returns; it prints what it
/// receives, and ends when its input closes.
struct TlsServer {
    child: Child,
    output: BufReader<ChildStdout>,
}

fn tls_server(cert: &Path, key: &Path, port: u16) -> TlsServer {
    let mut child = Command::new("openssl")
        .args(["s_server", "-naccept", "1", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(cert)
        .arg("-key")
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server");
    let mut output = BufReader::new(child.stdout.take().expect("stdout"));
    // It says ACCEPT once it listens (a connection to find out would be its one connection).
    let mut line = String::new();
    while line.trim() != "ACCEPT" {
        line.clear();
        let read = output.read_line(&mut line).expect("s_server output");
        assert!(read > 0, "s_server ended before listening");
    }
    TlsServer { child, output }
}

/// Close the server's input, wait for it, and return what it printed.
fn finish(mut server: TlsServer) -> String {
    drop(server.child.stdin.take());
    let mut out = String::new();
    let _ = server.output.read_to_string(&mut out);
    let _ = server.child.kill();
    let _ = server.child.wait();
    out
}

fn settings(port: u16, client_id: &str, ca: &Path) -> KafkaSettings {
    let mut s = KafkaSettings::new(format!("127.0.0.1:{port}"));
    s.client_id = client_id.into();
    s.timeout = Duration::from_secs(3);
    s.security = KafkaSecurity {
        tls: Some(KafkaTls {
            ca_file: Some(ca.to_path_buf()),
            ..KafkaTls::default()
        }),
        sasl: None,
    };
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_is_spoken_with_the_configured_ca_and_a_server_it_does_not_vouch_for_is_refused() {
    if !openssl_present() {
        assert!(
            std::env::var_os("THEMIS_REQUIRE_SERVICES").is_none(),
            "the openssl command is required (Debian's openssl)"
        );
        eprintln!("skipped: no openssl");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = certificate(dir.path(), "broker");
    let (other, _) = certificate(dir.path(), "other-ca");

    // The configured CA vouches for the server: the handshake completes and the Kafka request
    // (its header names the client) arrives inside the session. The server is no broker, so the
    // call itself is unavailable.
    let port = free_port();
    let server = tls_server(&cert, &key, port);
    let backend =
        KafkaBackend::new("kafka", settings(port, "themis-tls-check", &cert)).expect("client");
    let call = backend.describe_cluster().await;
    assert!(matches!(call, Err(CapError::Unavailable(_))), "{call:?}");
    let seen = finish(server);
    assert!(
        seen.contains("themis-tls-check"),
        "the Kafka request went inside TLS: {seen}"
    );

    // A CA that does not vouch for the server: no session, and the error says why.
    let port = free_port();
    let server = tls_server(&cert, &key, port);
    let backend =
        KafkaBackend::new("kafka", settings(port, "themis-wrong-ca", &other)).expect("client");
    let Err(CapError::Unavailable(why)) = backend.describe_cluster().await else {
        panic!("a server the CA does not vouch for was accepted");
    };
    let seen = finish(server);
    assert!(!seen.contains("themis-wrong-ca"), "{seen}");
    assert!(why.contains("certificate verify failed"), "{why}");
}

#[test]
fn sasl_plain_never_goes_in_clear_text_and_scram_is_built_in() {
    let sasl = |mechanism| KafkaSasl {
        mechanism,
        username: "themis".into(),
        password: "s3cret-password".into(),
    };
    let mut s = KafkaSettings::new("127.0.0.1:9");
    s.security.sasl = Some(sasl(SaslMechanism::Plain));
    let Err(why) = KafkaBackend::new("kafka", s.clone()) else {
        panic!("PLAIN without TLS was accepted");
    };
    assert!(why.contains("clear text"), "{why}");
    assert!(
        !format!("{s:?}").contains("s3cret"),
        "the password is never printed"
    );
    // SCRAM needs librdkafka built with OpenSSL: the client is made (it connects lazily).
    for mechanism in [SaslMechanism::ScramSha256, SaslMechanism::ScramSha512] {
        let mut s = KafkaSettings::new("127.0.0.1:9");
        s.security.sasl = Some(sasl(mechanism));
        assert_eq!(s.security.protocol(), "sasl_plaintext");
        KafkaBackend::new("kafka", s).unwrap_or_else(|e| panic!("{mechanism:?}: {e}"));
    }
    assert_eq!(
        SaslMechanism::parse("scram-sha-512"),
        Some(SaslMechanism::ScramSha512)
    );
    assert_eq!(SaslMechanism::parse("GSSAPI"), None);
}
