# Developer recipes. `just` itself: `pip install rust-just` (or `cargo install just`).

# List the recipes.
default:
    @just --list

# Build every step component for wasm32-wasip2 into its runbook's components/ folder.
runbooks:
    scripts/build-runbooks

# The whole test suite (what CI runs): components, rustfmt, clippy, every test.
test:
    scripts/test

# The demo: validate the shipped runbooks, run the playbook's diagnosis in the sandbox.
demo:
    scripts/demo

# Validate runbook bundles (default: all shipped ones).
validate *dirs="runbooks/kafka/check-broker-health runbooks/kafka/restart-consumer-group runbooks/kafka/scale-consumer":
    cargo run --quiet --bin themis -- runbook validate {{dirs}}

# Run one scenario file against its mocks.
run scenario:
    cargo run --quiet --bin themis -- run --scenario {{scenario}}

# The long kill -9 trial (default 200 kills; CI runs one per audited point).
kill-loop trials="200":
    scripts/kill-loop {{trials}}

# Benchmarks: one step call against fork+exec of /bin/true, compile time, memory per instance.
bench: runbooks
    cargo bench -p themis --bench step_call

# Format and lint.
lint:
    cargo fmt --all
    cargo clippy --workspace --all-targets -- -D warnings
