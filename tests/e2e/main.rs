//! End-to-end tests: real step components in the real sandbox, real manifests, the real CLI.
//! Components are built by `scripts/build-runbooks` (the test command runs it first).

mod agents;
mod authoring;
mod browser;
mod cli;
mod common;
mod foundations;
mod guard;
mod hardening;
mod kafka_playbook;
mod kill_serve;
mod kube;
mod llm;
mod llm_real;
mod manifests;
mod metrics;
mod openai_mock;
mod otel;
mod page;
mod playbook;
mod proposals;
mod registry;
mod restore;
mod resume;
mod sandbox;
mod scenarios;
mod serve;
mod store_postgres;
mod trust;
mod verify;
