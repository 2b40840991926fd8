//! `metrics.query` against a real Prometheus that scrapes itself: each result type, NaN as
//! unknown, a missing series as nothing, Prometheus' errors as capability errors.

use std::time::{Duration, Instant};
use themis_backend_prometheus::{PrometheusBackend, PrometheusSettings};
use themis_caps::MetricsCaps;
use themis_caps::types::CapError;
use themis_testkit::services;

const SELF_SCRAPE: &str = "global: { scrape_interval: 1s, evaluation_interval: 1s }
scrape_configs:
  - job_name: prometheus
    static_configs: [ { targets: ['127.0.0.1:PORT'] } ]
";

#[tokio::test(flavor = "multi_thread")]
async fn every_result_type_and_error_reads_as_the_capability_says() {
    // The scrape target is Prometheus itself; its port is only known once started, so the
    // first queries below need no scrape and `up` is read last.
    let Some(prom) = services::prometheus(&SELF_SCRAPE.replace("PORT", "9"), &[]).await else {
        return;
    };
    let backend = PrometheusBackend::new(PrometheusSettings::new(prom.url.clone()))
        .unwrap_or_else(|e| panic!("{e}"));

    let v = backend.query("vector(3)").await;
    assert!(
        matches!(&v, Ok(s) if s.len() == 1 && s[0].value == 3.0 && s[0].labels.is_empty()),
        "{v:?}"
    );
    let v = backend
        .query("label_replace(vector(1), \"job\", \"pg\", \"\", \"\")")
        .await;
    assert!(
        matches!(&v, Ok(s) if s[0].labels.iter().any(|p| p.key == "job" && p.value == "pg")),
        "{v:?}"
    );
    let scalar = backend.query("scalar(vector(2))").await;
    assert!(
        matches!(&scalar, Ok(s) if s.len() == 1 && s[0].value == 2.0),
        "{scalar:?}"
    );
    // 0/0 has no value: NaN, which a rule must read as unknown — never as 0.
    let nan = backend.query("0/0").await;
    assert!(
        matches!(&nan, Ok(s) if s.len() == 1 && s[0].value.is_nan()),
        "{nan:?}"
    );
    // A series that does not exist is no sample at all.
    assert_eq!(
        backend.query("no_such_metric_anywhere").await,
        Ok(Vec::new())
    );

    let bad = backend.query("sum(").await;
    assert!(
        matches!(&bad, Err(CapError::InvalidArgument(m)) if m.contains("bad_data")),
        "{bad:?}"
    );
    let string = backend.query("\"text\"").await;
    assert!(
        matches!(string, Err(CapError::InvalidArgument(_))),
        "{string:?}"
    );

    // The target at port 9 is down: `up` is 0 there, a real sample (not unknown). A range
    // selector gives a matrix; the newest point stands for each series.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let up = backend.query("up[30s]").await;
        if let Ok(samples) = &up
            && let Some(s) = samples.first()
        {
            assert_eq!(s.value, 0.0);
            assert!(
                s.labels
                    .iter()
                    .any(|p| p.key == "job" && p.value == "prometheus")
            );
            break;
        }
        assert!(Instant::now() < until, "no `up` series after 20 s: {up:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A server that is not there: unavailable, after the read's retries.
    let gone = format!("http://127.0.0.1:{}", services::free_port());
    let gone =
        PrometheusBackend::new(PrometheusSettings::new(gone)).unwrap_or_else(|e| panic!("{e}"));
    let r = gone.query("up").await;
    assert!(matches!(r, Err(CapError::Unavailable(_))), "{r:?}");
    // The doctor reads the version.
    let doctor = backend.doctor().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(doctor.version.starts_with('2'), "{doctor:?}");
}

#[test]
fn a_url_that_is_not_http_is_refused_at_configuration() {
    assert!(PrometheusBackend::new(PrometheusSettings::new("ftp://x")).is_err());
    assert!(PrometheusBackend::new(PrometheusSettings::new("not a url")).is_err());
}
