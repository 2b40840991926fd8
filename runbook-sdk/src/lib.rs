//! # Writing a Themis runbook step
//!
//! A step is a WebAssembly component with four phases. Implement [`Step`] for your domain's
//! capability trait, export it with one macro, and build with
//! `cargo build --target wasm32-wasip2 --release`:
//!
//! ```ignore
//! use themis_runbook_sdk::prelude::*;
//!
//! #[derive(Default)]
//! struct ConsumerLagHigh;
//!
//! impl Step<dyn Kafka> for ConsumerLagHigh {
//!     fn precondition(&self, ctx: &Context, kafka: &dyn Kafka) -> Check { /* ... */ }
//!     fn action(&self, ctx: &Context, kafka: &dyn Kafka) -> Outcome { /* ... */ }
//!     fn postcondition(&self, ctx: &Context, kafka: &dyn Kafka) -> Check { /* ... */ }
//!     fn rollback(&self, ctx: &Context, kafka: &dyn Kafka) -> Check { /* ... */ }
//! }
//!
//! export_kafka_step!(ConsumerLagHigh);
//! ```
//!
//! The same step is unit-tested natively against [`mock::MockCaps`]: `cargo test`, no host.

pub mod bindings;
pub mod caps;
mod context;
pub mod mock;
pub mod samples;
mod verdict;

pub use context::{Context, ContextBuilder, ParamError};
pub use verdict::{Check, Outcome};

/// The WIT data types shared by every domain.
pub mod types {
    pub use crate::bindings::common::themis::runbook::types::{
        ActionResult, Alert, CapError, CheckResult, Pair, Param, ParamValue, StepContext,
        StepOutput,
    };
}

/// The branch an action takes unless it names another.
pub const DEFAULT_BRANCH: &str = "next";

/// The four phases of a runbook step, written against one domain's capabilities `C`
/// (`dyn caps::Kafka`, `dyn caps::Kubernetes` or `dyn caps::Postgres`).
///
/// Phases must be safe to call again: after a crash the host may re-check a postcondition, and
/// it re-checks preconditions after a human approves.
pub trait Step<C: ?Sized> {
    /// Is it safe and useful to act? A failing precondition stops the runbook before any action.
    fn precondition(&self, ctx: &Context, caps: &C) -> Check;
    /// The one change this step makes (or, for a diagnostic step, the measurement).
    fn action(&self, ctx: &Context, caps: &C) -> Outcome;
    /// Did the action have the effect it promised?
    fn postcondition(&self, ctx: &Context, caps: &C) -> Check;
    /// Undo the action. Runs when this or a later step fails after this step acted.
    fn rollback(&self, ctx: &Context, caps: &C) -> Check;
}

pub mod prelude {
    pub use crate::caps::{
        CapResult, Host, Kafka, Kubernetes, Level, Log, Metrics, Postgres, Sample,
    };
    pub use crate::types::{CapError, ParamValue};
    pub use crate::{
        Check, Context, Outcome, Step, export_kafka_step, export_kubernetes_step,
        export_postgres_step,
    };
}

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;
}

/// Shared body of the export macros: adapts a [`Step`] to the generated `Guest` trait.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_step {
    ($step:ty, $caps:path) => {
        #[doc(hidden)]
        pub struct __ThemisStepExport;

        impl $crate::bindings::common::exports::themis::runbook::step::Guest for __ThemisStepExport {
            fn precondition(ctx: $crate::types::StepContext) -> $crate::types::CheckResult {
                let step = <$step as ::core::default::Default>::default();
                let ctx = $crate::Context::new(ctx);
                <$step as $crate::Step<dyn $caps>>::precondition(&step, &ctx, &$crate::caps::Host)
                    .into_result()
            }
            fn action(ctx: $crate::types::StepContext) -> $crate::types::ActionResult {
                let step = <$step as ::core::default::Default>::default();
                let ctx = $crate::Context::new(ctx);
                <$step as $crate::Step<dyn $caps>>::action(&step, &ctx, &$crate::caps::Host)
                    .into_result()
            }
            fn postcondition(ctx: $crate::types::StepContext) -> $crate::types::CheckResult {
                let step = <$step as ::core::default::Default>::default();
                let ctx = $crate::Context::new(ctx);
                <$step as $crate::Step<dyn $caps>>::postcondition(&step, &ctx, &$crate::caps::Host)
                    .into_result()
            }
            fn rollback(ctx: $crate::types::StepContext) -> $crate::types::CheckResult {
                let step = <$step as ::core::default::Default>::default();
                let ctx = $crate::Context::new(ctx);
                <$step as $crate::Step<dyn $caps>>::rollback(&step, &ctx, &$crate::caps::Host)
                    .into_result()
            }
        }

        // Only components export: a native build (the step's unit tests) has no host to call it,
        // and its linker would reject the component-model symbol names.
        #[cfg(target_family = "wasm")]
        $crate::bindings::common::__export_step_world!(
            __ThemisStepExport with_types_in $crate::bindings::common
        );
    };
}

/// Export a `Step<dyn Kafka>` as a component of the `kafka-step` world.
#[macro_export]
macro_rules! export_kafka_step {
    ($step:ty) => {
        $crate::__export_step!($step, $crate::caps::Kafka);
    };
}

/// Export a `Step<dyn Kubernetes>` as a component of the `kubernetes-step` world.
#[macro_export]
macro_rules! export_kubernetes_step {
    ($step:ty) => {
        $crate::__export_step!($step, $crate::caps::Kubernetes);
    };
}

/// Export a `Step<dyn Postgres>` as a component of the `postgres-step` world.
#[macro_export]
macro_rules! export_postgres_step {
    ($step:ty) => {
        $crate::__export_step!($step, $crate::caps::Postgres);
    };
}
