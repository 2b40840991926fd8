//! The capability imports a guest calls. Every call goes through [`StepState::invoke`]: checked
//! against the step's grant and the destructive list, bounded by the call timeout, recorded.

use super::state::{CallMode, CallOutcome, CapabilityCall, LogLine, StepState};
use crate::capability::{self, Effect};
use crate::wit::{k8s, kafka, log, metrics, postgres, types};
use serde::Serialize;
use serde_json::{Value, json};
use std::future::Future;
use std::time::Instant;
use types::{CapError, Pair};

impl StepState {
    async fn invoke<T, F>(
        &mut self,
        capability: &'static str,
        args: Value,
        call: F,
    ) -> Result<T, CapError>
    where
        T: Serialize,
        F: Future<Output = Result<T, CapError>> + Send,
    {
        let started = Instant::now();
        if let Err(denial) = self.grant.check(capability) {
            let reason = denial.to_string();
            tracing::warn!(capability, step = %self.grant.step_id, %reason, "capability call refused");
            self.calls.push(CapabilityCall {
                capability: capability.into(),
                args,
                outcome: CallOutcome::Denied {
                    reason: reason.clone(),
                },
                mode: CallMode::Refused,
                duration_us: elapsed_us(started),
            });
            return Err(CapError::Denied(reason));
        }
        let result = match tokio::time::timeout(self.call_timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(CapError::Unavailable(format!(
                "{capability} did not answer within {} ms (the host's call timeout)",
                self.call_timeout.as_millis()
            ))),
        };
        let mutates = capability::lookup(capability).is_some_and(|c| c.effect == Effect::Mutate);
        let mode = if mutates && self.backends.dry_run {
            CallMode::WouldDo
        } else {
            CallMode::Performed
        };
        let outcome = match &result {
            Ok(value) => CallOutcome::Ok {
                result: serde_json::to_value(value).unwrap_or(Value::Null),
            },
            Err(error) => CallOutcome::Error {
                error: serde_json::to_value(error).unwrap_or(Value::Null),
            },
        };
        self.calls.push(CapabilityCall {
            capability: capability.into(),
            args,
            outcome,
            mode,
            duration_us: elapsed_us(started),
        });
        result
    }
}

fn elapsed_us(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// `call!(self, "kafka.consumer-lag", kafka, consumer_lag(group, topic))`: clone the domain's
/// backend, render the arguments for the record, and invoke.
macro_rules! call {
    ($state:ident, $name:literal, $domain:ident, $method:ident($($arg:ident),*)) => {{
        let backend = $state.backends.$domain.clone();
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
by_value!(i32, u32, f64);

impl types::Host for StepState {}

impl log::Host for StepState {
    async fn emit(&mut self, level: log::Level, message: String, fields: Vec<Pair>) {
        let level = format!("{level:?}").to_lowercase();
        tracing::debug!(step = %self.grant.step_id, %level, %message, "step log");
        self.logs.push(LogLine {
            level,
            message,
            fields: fields.into_iter().map(|p| (p.key, p.value)).collect(),
        });
    }
}

impl metrics::Host for StepState {
    async fn query(&mut self, promql: String) -> Result<Vec<metrics::Sample>, CapError> {
        call!(self, "metrics.query", metrics, query(promql))
    }
}

impl kafka::Host for StepState {
    async fn describe_cluster(&mut self) -> Result<kafka::ClusterInfo, CapError> {
        call!(self, "kafka.describe-cluster", kafka, describe_cluster())
    }
    async fn describe_consumer_group(
        &mut self,
        group: String,
    ) -> Result<kafka::ConsumerGroup, CapError> {
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
    ) -> Result<Vec<kafka::PartitionLag>, CapError> {
        call!(
            self,
            "kafka.consumer-lag",
            kafka,
            consumer_lag(group, topic)
        )
    }
    async fn list_topics(&mut self) -> Result<Vec<kafka::TopicInfo>, CapError> {
        call!(self, "kafka.list-topics", kafka, list_topics())
    }
    async fn describe_consumers(
        &mut self,
        group: String,
    ) -> Result<kafka::ConsumerWorkload, CapError> {
        call!(
            self,
            "kafka.describe-consumers",
            kafka,
            describe_consumers(group)
        )
    }
    async fn broker_config(&mut self, broker_id: i32) -> Result<Vec<Pair>, CapError> {
        call!(self, "kafka.broker-config", kafka, broker_config(broker_id))
    }
    async fn restart_consumers(
        &mut self,
        group: String,
    ) -> Result<kafka::ConsumerWorkload, CapError> {
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
    ) -> Result<kafka::ConsumerWorkload, CapError> {
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
    ) -> Result<(), CapError> {
        call!(
            self,
            "kafka.set-broker-config",
            kafka,
            set_broker_config(broker_id, key, value)
        )
    }
    async fn broker_restart(&mut self, broker_id: i32) -> Result<(), CapError> {
        call!(
            self,
            "kafka.broker-restart",
            kafka,
            broker_restart(broker_id)
        )
    }
}

impl k8s::Host for StepState {
    async fn get_deployment(
        &mut self,
        namespace: String,
        name: String,
    ) -> Result<k8s::Deployment, CapError> {
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
    ) -> Result<Vec<k8s::Pod>, CapError> {
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
    ) -> Result<Vec<String>, CapError> {
        call!(
            self,
            "k8s.pod-logs",
            kubernetes,
            pod_logs(namespace, pod, tail_lines)
        )
    }
    async fn rollout_restart(&mut self, namespace: String, name: String) -> Result<(), CapError> {
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
    ) -> Result<(), CapError> {
        call!(
            self,
            "k8s.scale-deployment",
            kubernetes,
            scale_deployment(namespace, name, replicas)
        )
    }
    async fn delete_pod(&mut self, namespace: String, name: String) -> Result<(), CapError> {
        call!(
            self,
            "k8s.delete-pod",
            kubernetes,
            delete_pod(namespace, name)
        )
    }
}

impl postgres::Host for StepState {
    async fn activity(
        &mut self,
        min_query_seconds: f64,
    ) -> Result<Vec<postgres::Backend>, CapError> {
        call!(
            self,
            "postgres.activity",
            postgres,
            activity(min_query_seconds)
        )
    }
    async fn blockers(&mut self) -> Result<Vec<postgres::LockWait>, CapError> {
        call!(self, "postgres.blockers", postgres, blockers())
    }
    async fn replication_lag(&mut self) -> Result<Vec<postgres::Replica>, CapError> {
        call!(
            self,
            "postgres.replication-lag",
            postgres,
            replication_lag()
        )
    }
    async fn cancel_backend(&mut self, pid: i32) -> Result<bool, CapError> {
        call!(
            self,
            "postgres.cancel-backend",
            postgres,
            cancel_backend(pid)
        )
    }
    async fn terminate_backend(&mut self, pid: i32) -> Result<bool, CapError> {
        call!(
            self,
            "postgres.terminate-backend",
            postgres,
            terminate_backend(pid)
        )
    }
}
