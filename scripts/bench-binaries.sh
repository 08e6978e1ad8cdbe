# Sourced by the bench scripts: sets $root, $devtrust and $bench, the release programs to
# run ($DEVTRUST and $DEVTRUST_BENCH, or target/release/{devtrust,devtrust-bench};
# CARGO_TARGET_DIR is honoured), and stops with what to build when one is missing.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
devtrust="${DEVTRUST:-$target_dir/release/devtrust}"
bench="${DEVTRUST_BENCH:-$target_dir/release/devtrust-bench}"
for b in "$devtrust" "$bench"; do
    [ -x "$b" ] || { echo "$b is missing: cargo build --release -p devtrust -p dt-bench" >&2; exit 2; }
done
