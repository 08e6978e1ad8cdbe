#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test (unit, property, storage
# conformance on SQLite and PostgreSQL, software TPM, real binaries end to end).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export CARGO_TERM_COLOR=never
# A clean checkout gains nothing from incremental compilation, which here doubled the
# target dir (18 GB of incremental state next to 25 GB of artifacts).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings
echo "==> cargo test"
cargo test --workspace --all-features
echo "==> scripts/demo.sh (the seeds' getting-started guide, end to end)"
scripts/demo.sh
