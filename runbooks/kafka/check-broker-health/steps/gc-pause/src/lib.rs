//! Does a broker suffer long JVM GC pauses? Reads the longest recent pause per broker and that
//! broker's CPU. Read-only: a long pause is a finding (branch `gc-pause-high`), not a failure.

use themis_runbook_sdk::prelude::*;
use themis_runbook_sdk::samples;

#[derive(Default)]
pub struct GcPause;

impl Step<dyn Kafka> for GcPause {
    fn precondition(&self, ctx: &Context, kafka: &dyn Kafka) -> Check {
        let (query, threshold) = match (
            ctx.param_str("gc_pause_query"),
            ctx.param_i64("gc_pause_threshold_ms"),
        ) {
            (Ok(q), Ok(t)) => (q, t),
            (Err(e), _) | (_, Err(e)) => return Check::fail(e.to_string()),
        };
        if threshold <= 0 {
            return Check::fail("gc_pause_threshold_ms must be positive");
        }
        match kafka.query(query) {
            Ok(s) if !s.is_empty() => {
                Check::pass("GC pause metrics are available").evidence("brokers_reporting", s.len())
            }
            Ok(_) => Check::fail(
                "the GC pause query returned no samples: check gc_pause_query against your metric names",
            ),
            Err(e) => Check::fail(format!("cannot query GC pauses: {e:?}")),
        }
    }

    fn action(&self, ctx: &Context, kafka: &dyn Kafka) -> Outcome {
        let (Ok(query), Ok(threshold_ms)) = (
            ctx.param_str("gc_pause_query"),
            ctx.param_i64("gc_pause_threshold_ms"),
        ) else {
            return Outcome::failed("gc_pause_query and gc_pause_threshold_ms are required");
        };
        let pauses = match kafka.query(query) {
            Ok(s) => s,
            Err(e) => return Outcome::failed(format!("cannot query GC pauses: {e:?}")),
        };
        let Some(worst) = samples::max(&pauses) else {
            return Outcome::failed("no GC pause samples");
        };
        let broker = samples::label(worst, "broker").unwrap_or("?").to_owned();
        let pause_ms = (worst.value * 1000.0).round() as i64;
        // CPU is context for the human, not part of the verdict: a missing CPU metric is noted.
        let cpu = ctx
            .param_str("cpu_query")
            .ok()
            .and_then(|q| kafka.query(q).ok())
            .and_then(|s| {
                s.into_iter()
                    .find(|s| samples::label(s, "broker") == Some(broker.as_str()))
            })
            .map(|s| format!("{:.0}%", s.value * 100.0))
            .unwrap_or_else(|| "unknown".into());
        kafka.log(
            Level::Info,
            "longest GC pause",
            &[("broker", &broker), ("pause_ms", &pause_ms.to_string())],
        );
        let out = if pause_ms >= threshold_ms {
            Outcome::ok(format!(
                "broker {broker}: {pause_ms} ms GC pause (threshold {threshold_ms} ms), CPU {cpu}"
            ))
            .branch("gc-pause-high")
            .output("finding", "gc-pause-high")
            .output("broker", &broker)
            .output("gc_pause_ms", pause_ms)
        } else {
            Outcome::ok(format!(
                "longest GC pause {pause_ms} ms on broker {broker}, under {threshold_ms} ms"
            ))
        };
        out.evidence("broker", &broker)
            .evidence("gc_pause_ms", pause_ms)
            .evidence("threshold_ms", threshold_ms)
            .evidence("cpu", cpu)
    }

    fn postcondition(&self, _ctx: &Context, _kafka: &dyn Kafka) -> Check {
        Check::pass("measurement recorded")
    }

    fn rollback(&self, _ctx: &Context, _kafka: &dyn Kafka) -> Check {
        Check::nothing_to_undo()
    }
}

themis_runbook_sdk::export_kafka_step!(GcPause);

#[cfg(test)]
mod tests {
    use super::*;
    use themis_runbook_sdk::mock::MockCaps;
    use themis_runbook_sdk::samples::sample;

    fn ctx() -> Context {
        Context::builder("KafkaConsumerLag")
            .param("gc_pause_query", ParamValue::Text("gc_pause".into()))
            .param("cpu_query", ParamValue::Text("cpu".into()))
            .param("gc_pause_threshold_ms", ParamValue::Integer(1000))
            .build()
    }

    #[test]
    fn a_long_pause_is_a_finding_with_the_broker_and_its_cpu() {
        let caps = MockCaps::new()
            .on_args(
                "metrics.query",
                "gc_pause",
                Ok(vec![
                    sample(&[("broker", "1")], 2.5),
                    sample(&[("broker", "2")], 0.1),
                ]),
            )
            .on_args(
                "metrics.query",
                "cpu",
                Ok(vec![sample(&[("broker", "1")], 0.95)]),
            );
        let out = GcPause.action(&ctx(), &caps);
        assert!(out.is_ok());
        assert_eq!(out.branch_label(), "gc-pause-high");
        assert_eq!(out.output_value("broker"), Some("1"));
        assert_eq!(out.evidence_value("gc_pause_ms"), Some("2500"));
        assert_eq!(out.evidence_value("cpu"), Some("95%"));
    }

    #[test]
    fn short_pauses_take_the_default_branch() {
        // No CPU metric: the step still decides, and says the CPU is unknown.
        let caps = MockCaps::new().on_args(
            "metrics.query",
            "gc_pause",
            Ok(vec![sample(&[("broker", "1")], 0.2)]),
        );
        let out = GcPause.action(&ctx(), &caps);
        assert_eq!(out.branch_label(), "next");
        assert_eq!(out.evidence_value("cpu"), Some("unknown"));
    }

    #[test]
    fn no_metric_fails_the_precondition_and_says_what_to_check() {
        let caps = MockCaps::new().on("metrics.query", Ok(Vec::<Sample>::new()));
        let check = GcPause.precondition(&ctx(), &caps);
        assert!(!check.passed());
        assert!(check.summary().contains("gc_pause_query"));
    }
}
