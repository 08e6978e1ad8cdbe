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
echo "==> cargo build (every test, and the programs the end-to-end tests drive)"
# One build with the test run's own features, so the programs share its artifacts; the tests
# then take the programs from there (DEVTRUST_BIN_DIR) instead of building them again with
# the three packages' own feature set (dt_testkit::programs does that when run alone).
cargo build --workspace --all-features --bins --tests
echo "==> cargo test"
DEVTRUST_BIN_DIR="$(realpath -m "${CARGO_TARGET_DIR:-target}/debug")" \
  cargo test --workspace --all-features
echo "==> scripts/demo.sh (the seeds' getting-started guide, end to end)"
scripts/demo.sh
