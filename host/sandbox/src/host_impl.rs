//! The capability imports a guest calls. Every call goes through [`StepState::invoke`]: counted
//! against the phase's budget, checked against the step's grant (granted? a mutation outside
//! `action`/`rollback`? outside the plan's targets? over the manifest's cap? destructive without
//! an approval for this execution?), journalled before it reaches a backend if it mutates,
//! bounded by the call timeout and in the size of what it returns, recorded.

use crate::convert::{Conv, to_guest};
use crate::journal::CallIntent;
use crate::limits::{LogAdmit, truncate};
use crate::record::{CallMode, CallOutcome, CapabilityCall, LogLine};
use crate::state::StepState;
use crate::wit::{k8s, kafka, log, metrics, postgres, types};
use serde::Serialize;
use serde_json::{Value, json};
use std::future::Future;
use std::time::Instant;
use themis_caps::{CapError, CapResult};
use themis_core::bounded::{bound, bound_serialised};

/// A mutating call whose intent (or result) could not be recorded: the step is stopped.
#[derive(Debug, thiserror::Error)]
#[error(
    "the audit could not record {capability} ({why}); the host stopped the step rather than act unrecorded"
)]
pub struct JournalFailed {
    pub capability: String,
    pub why: String,
}

type GuestResult<W> = wasmtime::Result<Result<W, types::CapError>>;

impl StepState {
    async fn invoke<P, W, F>(
        &mut self,
        capability: &'static str,
        args: Value,
        call: F,
    ) -> GuestResult<W>
    where
        P: Serialize + Conv<W>,
        F: Future<Output = CapResult<P>> + Send,
    {
        let started = Instant::now();
        let limits = self.budget.limits;
        if let Err(exceeded) = self.budget.take_call() {
            self.refuse(capability, args, exceeded.to_string(), started);
            return Err(wasmtime::Error::new(exceeded));
        }
        // Arguments often come from alert labels or a model: each must be what its kind allows
        // (a Kubernetes name, a Kafka name, an id) before any backend sees it.
        if let Err(reason) = themis_core::capability::check_args(capability, &args) {
            self.refuse(capability, args, reason.clone(), started);
            return Ok(Err(types::CapError::InvalidArgument(reason)));
        }
        let grant = &self.env.grant;
        let allowed = match grant.check(capability, &args, self.env.counts.get(capability)) {
            Ok(allowed) => allowed,
            Err(denial) => {
                let reason = denial.to_string();
                // One warning per phase: a loop of refused calls must not flood the host's logs.
                if self.budget.denials == 0 {
                    tracing::warn!(capability, step = %grant.step_id, %reason, "capability call refused");
                }
                self.budget.denials += 1;
                self.refuse(capability, args, reason.clone(), started);
                return Ok(Err(types::CapError::Denied(reason)));
            }
        };
        // The phase's backstop drops whatever is in flight when it fires, the call's record
        // with it. A call gets only the time left before then (less room to record its
        // result); a mutation that might not finish in it is not started at all, since one cut
        // off would leave the system changed and the audit not saying how.
        let left = self
            .hard_stop
            .saturating_duration_since(Instant::now())
            .saturating_sub(crate::state::record_margin(self.call_timeout));
        if allowed.mutates && left < self.call_timeout {
            let reason = format!(
                "the phase ran past its deadline in earlier calls ({} ms left before the host stops it, a change may take {} ms): not started",
                left.as_millis(),
                self.call_timeout.as_millis()
            );
            self.refuse(capability, args, reason.clone(), started);
            return Ok(Err(types::CapError::Unavailable(reason)));
        }
        let timeout = left.min(self.call_timeout);
        let dry_run = self.env.backends.is_dry_run();
        let intent = allowed.mutates.then(|| CallIntent {
            execution_id: grant.execution_id.clone(),
            runbook: grant.runbook_id.clone(),
            step: grant.step_id.clone(),
            phase: grant.phase,
            capability: capability.into(),
            args: bound(args.clone(), limits.recorded_value_bytes),
            destructive: allowed.destructive,
            dry_run,
            approval: grant.approval.clone(),
        });
        if let Some(intent) = &intent
            && let Err(why) = self.env.journal.intent(intent).await
        {
            self.refuse(capability, args, format!("not journalled: {why}"), started);
            return Err(wasmtime::Error::new(JournalFailed {
                capability: capability.into(),
                why,
            }));
        }
        self.env.counts.bump(capability);
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) if timeout < self.call_timeout => Err(CapError::Unavailable(format!(
                "{capability} did not answer within the {} ms the phase had left",
                timeout.as_millis()
            ))),
            Err(_) => Err(CapError::Unavailable(format!(
                "{capability} did not answer within {} ms (the host's call timeout)",
                self.call_timeout.as_millis()
            ))),
        };
        let (result, outcome) = match result {
            Ok(value) => {
                let json = serde_json::to_value(&value).unwrap_or(Value::Null);
                // Serialised once: its length is the size check, and the record reuses it.
                let bytes = serde_json::to_vec(&json).unwrap_or_default();
                let size = bytes.len();
                if size > limits.result_bytes {
                    let error = CapError::Failed(format!(
                        "{capability} answered {size} bytes, more than the {} a step may receive",
                        limits.result_bytes
                    ));
                    let outcome = CallOutcome::Error {
                        error: serde_json::to_value(&error).unwrap_or(Value::Null),
                    };
                    (Err(error), outcome)
                } else {
                    let outcome = CallOutcome::Ok {
                        result: bound_serialised(json, &bytes, limits.recorded_value_bytes),
                    };
                    (Ok(value), outcome)
                }
            }
            Err(error) => {
                let outcome = CallOutcome::Error {
                    error: bound(
                        serde_json::to_value(&error).unwrap_or(Value::Null),
                        limits.recorded_value_bytes,
                    ),
                };
                (Err(error), outcome)
            }
        };
        let record = CapabilityCall {
            capability: capability.into(),
            args: bound(args, limits.recorded_value_bytes),
            outcome,
            mode: if allowed.mutates && dry_run {
                CallMode::WouldDo
            } else {
                CallMode::Performed
            },
            duration_us: elapsed_us(started),
        };
        if let Some(intent) = &intent
            && let Err(why) = self.env.journal.outcome(intent, &record).await
        {
            self.calls.push(record);
            return Err(wasmtime::Error::new(JournalFailed {
                capability: capability.into(),
                why,
            }));
        }
        self.calls.push(record);
        Ok(to_guest(result))
    }

    /// Record a call the host refused. Only the first refusals of a phase are kept one by one.
    fn refuse(&mut self, capability: &str, args: Value, reason: String, started: Instant) {
        if self.calls.len() > self.budget.limits.calls_per_phase as usize {
            return;
        }
        self.calls.push(CapabilityCall {
            capability: capability.into(),
            args: bound(args, self.budget.limits.recorded_value_bytes),
            outcome: CallOutcome::Denied { reason },
            mode: CallMode::Refused,
            duration_us: elapsed_us(started),
        });
    }
}

fn elapsed_us(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// `call!(self, "kafka.consumer-lag", kafka, consumer_lag(group, topic))`: clone the domain's
/// backend, render the arguments for the record, and invoke.
macro_rules! call {
    ($state:ident, $name:literal, $domain:ident, $method:ident($($arg:ident),*)) => {{
        let backend = $state.env.backends.$domain().clone();
        let args = json!({ $(stringify!($arg): &$arg),* });
        $state
            .invoke($name, args, async move { backend.$method($(call!(@ref $arg)),*).await })
            .await
    }};
    (@ref $arg:ident) => { $arg.borrow_arg() };
}

/// Backend traits take `&str` where WIT gives `String`; numbers pass by value.
trait BorrowArg {
    type Out<'a>
    where
        Self: 'a;
    fn borrow_arg(&self) -> Self::Out<'_>;
}

impl BorrowArg for String {
    type Out<'a> = &'a str;
    fn borrow_arg(&self) -> &str {
        self
    }
}

macro_rules! by_value {
    ($($t:ty),*) => {$(
        impl BorrowArg for $t {
            type Out<'a> = $t;
            fn borrow_arg(&self) -> $t {
                *self
            }
        }
    )*};
}
by_value!(i32, i64, u32, f64);

impl types::Host for StepState {}

impl log::Host for StepState {
    async fn emit(
        &mut self,
        level: log::Level,
        message: String,
        fields: Vec<types::Pair>,
    ) -> wasmtime::Result<()> {
        let max = self.budget.limits.log_line_bytes;
        let (message, mut cut) = truncate(message, max);
        let mut kept_fields = Vec::new();
        let mut bytes = message.len();
        for field in fields.into_iter().take(32) {
            let (key, k_cut) = truncate(field.key, 128);
            let (value, v_cut) = truncate(field.value, max);
            cut |= k_cut || v_cut;
            bytes += key.len() + value.len();
            kept_fields.push((key, value));
        }
        if let LogAdmit::Drop = self.budget.admit_log(self.logs.len(), bytes) {
            return Ok(());
        }
        if cut {
            self.budget.logs_truncated += 1;
        }
        let level = format!("{level:?}").to_lowercase();
        // The message itself goes to the audit (redacted there), not to the host's own log.
        tracing::debug!(step = %self.env.grant.step_id, %level, bytes = message.len(), "step log");
        self.logs.push(LogLine {
            level,
            message,
            fields: kept_fields,
        });
        Ok(())
    }
}

impl metrics::Host for StepState {
    async fn query(&mut self, promql: String) -> GuestResult<Vec<metrics::Sample>> {
        call!(self, "metrics.query", metrics, query(promql))
    }
}

impl kafka::Host for StepState {
    async fn describe_cluster(&mut self) -> GuestResult<kafka::ClusterInfo> {
        call!(self, "kafka.describe-cluster", kafka, describe_cluster())
    }
    async fn describe_consumer_group(
        &mut self,
        group: String,
    ) -> GuestResult<kafka::ConsumerGroup> {
        call!(
            self,
            "kafka.describe-consumer-group",
            kafka,
            describe_consumer_group(group)
        )
    }
    async fn consumer_lag(
        &mut self,
        group: String,
        topic: String,
    ) -> GuestResult<Vec<kafka::PartitionLag>> {
        call!(
            self,
            "kafka.consumer-lag",
            kafka,
            consumer_lag(group, topic)
        )
    }
    async fn list_topics(&mut self) -> GuestResult<Vec<kafka::TopicInfo>> {
        call!(self, "kafka.list-topics", kafka, list_topics())
    }
    async fn describe_consumers(&mut self, group: String) -> GuestResult<kafka::ConsumerWorkload> {
        call!(
            self,
            "kafka.describe-consumers",
            kafka,
            describe_consumers(group)
        )
    }
    async fn broker_config(&mut self, broker_id: i32) -> GuestResult<Vec<types::Pair>> {
        call!(self, "kafka.broker-config", kafka, broker_config(broker_id))
    }
    async fn restart_consumers(&mut self, group: String) -> GuestResult<kafka::ConsumerWorkload> {
        call!(
            self,
            "kafka.restart-consumers",
            kafka,
            restart_consumers(group)
        )
    }
    async fn scale_consumers(
        &mut self,
        group: String,
        replicas: u32,
    ) -> GuestResult<kafka::ConsumerWorkload> {
        call!(
            self,
            "kafka.scale-consumers",
            kafka,
            scale_consumers(group, replicas)
        )
    }
    async fn set_broker_config(
        &mut self,
        broker_id: i32,
        key: String,
        value: String,
    ) -> GuestResult<()> {
        call!(
            self,
            "kafka.set-broker-config",
            kafka,
            set_broker_config(broker_id, key, value)
        )
    }
    async fn broker_restart(&mut self, broker_id: i32) -> GuestResult<()> {
        call!(
            self,
            "kafka.broker-restart",
            kafka,
            broker_restart(broker_id)
        )
    }
    async fn partition_leadership(&mut self) -> GuestResult<Vec<kafka::PartitionLeader>> {
        call!(
            self,
            "kafka.partition-leadership",
            kafka,
            partition_leadership()
        )
    }
    async fn elect_preferred_leaders(&mut self, topic: String) -> GuestResult<u32> {
        call!(
            self,
            "kafka.elect-preferred-leaders",
            kafka,
            elect_preferred_leaders(topic)
        )
    }
}

impl k8s::Host for StepState {
    async fn get_statefulset(
        &mut self,
        namespace: String,
        name: String,
    ) -> GuestResult<k8s::StatefulSet> {
        call!(
            self,
            "k8s.get-statefulset",
            kubernetes,
            get_statefulset(namespace, name)
        )
    }
    async fn list_events(
        &mut self,
        namespace: String,
        object: String,
    ) -> GuestResult<Vec<k8s::Event>> {
        call!(
            self,
            "k8s.list-events",
            kubernetes,
            list_events(namespace, object)
        )
    }
    async fn get_deployment(
        &mut self,
        namespace: String,
        name: String,
    ) -> GuestResult<k8s::Deployment> {
        call!(
            self,
            "k8s.get-deployment",
            kubernetes,
            get_deployment(namespace, name)
        )
    }
    async fn list_pods(
        &mut self,
        namespace: String,
        selector: String,
    ) -> GuestResult<Vec<k8s::Pod>> {
        call!(
            self,
            "k8s.list-pods",
            kubernetes,
            list_pods(namespace, selector)
        )
    }
    async fn pod_logs(
        &mut self,
        namespace: String,
        pod: String,
        tail_lines: u32,
    ) -> GuestResult<Vec<String>> {
        call!(
            self,
            "k8s.pod-logs",
            kubernetes,
            pod_logs(namespace, pod, tail_lines)
        )
    }
    async fn pod_owner(
        &mut self,
        namespace: String,
        pod: String,
    ) -> GuestResult<Option<k8s::Workload>> {
        call!(self, "k8s.pod-owner", kubernetes, pod_owner(namespace, pod))
    }
    async fn rollout_history(
        &mut self,
        namespace: String,
        name: String,
    ) -> GuestResult<Vec<k8s::Revision>> {
        call!(
            self,
            "k8s.rollout-history",
            kubernetes,
            rollout_history(namespace, name)
        )
    }
    async fn rollout_undo(
        &mut self,
        namespace: String,
        name: String,
        to_revision: i64,
    ) -> GuestResult<()> {
        call!(
            self,
            "k8s.rollout-undo",
            kubernetes,
            rollout_undo(namespace, name, to_revision)
        )
    }
    async fn rollout_restart(&mut self, namespace: String, name: String) -> GuestResult<()> {
        call!(
            self,
            "k8s.rollout-restart",
            kubernetes,
            rollout_restart(namespace, name)
        )
    }
    async fn scale_deployment(
        &mut self,
        namespace: String,
        name: String,
        replicas: u32,
    ) -> GuestResult<()> {
        call!(
            self,
            "k8s.scale-deployment",
            kubernetes,
            scale_deployment(namespace, name, replicas)
        )
    }
    async fn delete_pod(&mut self, namespace: String, name: String) -> GuestResult<()> {
        call!(
            self,
            "k8s.delete-pod",
            kubernetes,
            delete_pod(namespace, name)
        )
    }
}

impl postgres::Host for StepState {
    async fn activity(&mut self, min_query_seconds: f64) -> GuestResult<Vec<postgres::Backend>> {
        call!(
            self,
            "postgres.activity",
            postgres,
            activity(min_query_seconds)
        )
    }
    async fn blockers(&mut self) -> GuestResult<Vec<postgres::LockWait>> {
        call!(self, "postgres.blockers", postgres, blockers())
    }
    async fn replication_lag(&mut self) -> GuestResult<Vec<postgres::Replica>> {
        call!(
            self,
            "postgres.replication-lag",
            postgres,
            replication_lag()
        )
    }
    async fn connection_usage(
        &mut self,
        min_idle_seconds: f64,
    ) -> GuestResult<postgres::ConnectionSlots> {
        call!(
            self,
            "postgres.connection-usage",
            postgres,
            connection_usage(min_idle_seconds)
        )
    }
    async fn cancel_backend(&mut self, pid: i32) -> GuestResult<bool> {
        call!(
            self,
            "postgres.cancel-backend",
            postgres,
            cancel_backend(pid)
        )
    }
    async fn terminate_backend(&mut self, pid: i32) -> GuestResult<bool> {
        call!(
            self,
            "postgres.terminate-backend",
            postgres,
            terminate_backend(pid)
        )
    }
}
