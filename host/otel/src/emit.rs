//! The I/O edge: mapped spans and log records handed to the OpenTelemetry SDK's batch
//! processors and OTLP/HTTP exporters (protobuf), configured by the standard variables.

use crate::map::{Attr, Attrs, LogPlan, Mapper, SpanPlan};
use opentelemetry::logs::{AnyValue, LogRecord, Logger, LoggerProvider, Severity};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::{SdkLogger, SdkLoggerProvider};
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, SpanData, SpanEvents, SpanLinks, SpanProcessor,
};
use std::sync::Mutex;
use themis_agent::audit::Record;

const SCOPE: &str = "themis";

/// Audit records out as OTLP traces and logs.
pub struct Exporter {
    mapper: Mutex<Mapper>,
    spans: Option<BatchSpanProcessor>,
    logs: Option<(SdkLoggerProvider, SdkLogger)>,
    scope: InstrumentationScope,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Exporter {
    /// The exporter the standard variables ask for; `None` when they name no endpoint (or
    /// `OTEL_SDK_DISABLED=true`): then nothing is built and the host pays nothing.
    pub fn from_env() -> Result<Option<Exporter>, String> {
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let any = env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
        let traces = any || env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
        let logs = any || env("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT").is_some();
        if !traces && !logs {
            return Ok(None);
        }
        // Resource::builder() also reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
        let mut resource = Resource::builder();
        if env("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("themis");
        }
        let resource = resource.build();
        let spans = if traces {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .build()
                .map_err(|e| format!("OTLP trace exporter: {e}"))?;
            let mut processor = BatchSpanProcessor::builder(exporter).build();
            processor.set_resource(&resource);
            Some(processor)
        } else {
            None
        };
        let logs = if logs {
            let exporter = opentelemetry_otlp::LogExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .build()
                .map_err(|e| format!("OTLP log exporter: {e}"))?;
            let provider = SdkLoggerProvider::builder()
                .with_resource(resource)
                .with_batch_exporter(exporter)
                .build();
            let logger = provider.logger(SCOPE);
            Some((provider, logger))
        } else {
            None
        };
        Ok(Some(Exporter {
            mapper: Mutex::new(Mapper::new()),
            spans,
            logs,
            scope: InstrumentationScope::builder(SCOPE)
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        }))
    }

    /// One audit record, as written (after redaction): its log record, and the spans it closes.
    pub fn record(&self, record: &Record) {
        let mapped = self
            .mapper
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(record);
        if let Some(processor) = &self.spans {
            for span in mapped.spans {
                processor.on_end(self.span_data(span));
            }
        }
        if let (Some((_, logger)), Some(log)) = (&self.logs, mapped.log) {
            emit_log(logger, log);
        }
    }

    /// Export what is buffered and stop (at the service's exit).
    pub fn shutdown(&self) {
        if let Some(processor) = &self.spans
            && let Err(e) = processor.shutdown()
        {
            tracing::warn!("OTLP traces not flushed at exit: {e}");
        }
        if let Some((provider, _)) = &self.logs
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!("OTLP logs not flushed at exit: {e}");
        }
    }

    fn span_data(&self, plan: SpanPlan) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(plan.trace),
                SpanId::from_bytes(plan.id),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: plan.parent.map_or(SpanId::INVALID, SpanId::from_bytes),
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: plan.name.into(),
            start_time: plan.start,
            end_time: plan.end,
            attributes: key_values(plan.attributes),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: match plan.error {
                Some(description) => Status::error(description),
                None => Status::Ok,
            },
            instrumentation_scope: self.scope.clone(),
        }
    }
}

fn value(a: Attr) -> Value {
    match a {
        Attr::Text(s) => Value::from(s),
        Attr::Int(i) => Value::from(i),
        Attr::Float(f) => Value::from(f),
        Attr::Bool(b) => Value::from(b),
    }
}

fn key_values(attrs: Attrs) -> Vec<KeyValue> {
    attrs
        .into_iter()
        .map(|(k, v)| KeyValue::new(k, value(v)))
        .collect()
}

fn emit_log(logger: &SdkLogger, plan: LogPlan) {
    let mut record = logger.create_log_record();
    record.set_timestamp(plan.time);
    record.set_observed_timestamp(plan.time);
    record.set_severity_number(Severity::Info);
    record.set_severity_text("INFO");
    record.set_event_name("themis.audit");
    record.set_body(AnyValue::from(plan.body));
    for (k, v) in plan.attributes {
        let v: AnyValue = match v {
            Attr::Text(s) => s.into(),
            Attr::Int(i) => i.into(),
            Attr::Float(f) => f.into(),
            Attr::Bool(b) => b.into(),
        };
        record.add_attribute(k, v);
    }
    if let Some((trace, span)) = plan.context {
        record.set_trace_context(
            TraceId::from_bytes(trace),
            SpanId::from_bytes(span),
            Some(TraceFlags::SAMPLED),
        );
    }
    logger.emit(record);
}
