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

# The long kill -9 trial of `themis serve` (seeded; CI runs 10 trials).
kill-serve trials="60" seed="":
    scripts/kill-serve {{trials}} {{seed}}

# Benchmarks: one step call against fork+exec of /bin/true, compile time, memory per instance.
# The workspace's own crates are optimised like its dependencies (the dev profile leaves them
# unoptimised for quick builds, which would measure debug code): one rebuild of ours, none of
# theirs.
bench name="step_call": runbooks
    CARGO_PROFILE_DEV_OPT_LEVEL=2 cargo bench -p themis --bench {{name}} --profile dev

# Format and lint.
lint:
    cargo fmt --all
    cargo clippy --workspace --all-targets -- -D warnings
