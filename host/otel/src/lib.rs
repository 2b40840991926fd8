//! OpenTelemetry export of what the host does, derived from the one place that already says it
//! all: the audit record stream. Every record becomes an OTel log record; the records of an
//! incident also become one trace — the incident, each agent state it passed through (triage,
//! escalation, execution, verification), each probe and runbook execution, each step phase and
//! each capability call, the selection (with the LLM call as a child carrying model and tokens)
//! and the policy decision.
//!
//! Trace and span ids are derived from the incident id and the records (a hash), not drawn at
//! random: a trace continues across the host's restarts, and a log record, a span and an audit
//! line about the same thing can be joined without carrying a context through the runtime.
//! What is exported is what the audit file holds, so it is redacted exactly as the file is.
//!
//! Configured by the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `…_LOGS_ENDPOINT`, `…_HEADERS`, `OTEL_SERVICE_NAME`,
//! `OTEL_SDK_DISABLED`); OTLP over HTTP with protobuf. With no endpoint nothing is built and
//! nothing is called: the host pays nothing.

mod emit;
pub mod ids;
pub mod map;

pub use emit::Exporter;
