#!/usr/bin/env bash
# Build devtrust and start the auth service on the embedded SQLite default.
#   scripts/quickstart.sh [DATA_DIR]      (default ./devtrust-data; listens on 127.0.0.1:3080)
# Stop it with Ctrl-C. In another terminal:
#   target/release/dtctl --data-dir=DATA_DIR users add alice --roles=access,editor --logins=$USER
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir="${1:-./devtrust-data}"
scripts/install-deps.sh
cargo build --release -p devtrust -p dtctl -p dtsh
echo "==> binaries: $(pwd)/target/release/{devtrust,dtctl,dtsh}"
exec target/release/devtrust start --data-dir "$data_dir" --listen "${DEVTRUST_LISTEN:-127.0.0.1:3080}"
