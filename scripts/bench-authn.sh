#!/usr/bin/env bash
# Device authentication against real `devtrust start` processes, driven by
# `devtrust-bench authn --target` from its own process.
#
#   scripts/bench-authn.sh [--pinned] [--postgres] [--servers N] [-- BENCH ARGS...]
#
# --pinned     the auth server on core 0 (`taskset -c 0`), the load generator on core 1
#              (with --servers 2: server 1 on core 0, server 2 on core 1, bench unpinned)
# --postgres   a fresh PostgreSQL database (DEVTRUST_TEST_PG, default
#              "host=127.0.0.1 port=5432 user=postgres"); every server shares it
# --servers N  N auth servers on that one database (PostgreSQL only); clients are spread
#              over them round robin
# After `--`: more `devtrust-bench authn` flags (default: --clients 64 --seconds 5).
#
# Binaries: $DEVTRUST and $DEVTRUST_BENCH, or target/release/{devtrust,devtrust-bench}
# (`cargo build --release -p devtrust -p dt-bench`).
set -euo pipefail

pinned=0 postgres=0 servers=1
while [ $# -gt 0 ]; do
    case "$1" in
        --pinned) pinned=1 ;;
        --postgres) postgres=1 ;;
        --servers) servers="$2"; shift ;;
        --) shift; break ;;
        *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
    esac
    shift
done
bench_args=("$@")
[ ${#bench_args[@]} -gt 0 ] || bench_args=(--clients 64 --seconds 5)
if [ "$servers" -gt 1 ] && [ "$postgres" -ne 1 ]; then
    echo "--servers $servers needs --postgres (auth servers share state through PostgreSQL)" >&2
    exit 2
fi

# shellcheck source=bench-binaries.sh
source "$(dirname "$0")/bench-binaries.sh"

work="$(mktemp -d)"
pids=()
db=""
pg="${DEVTRUST_TEST_PG:-host=127.0.0.1 port=5432 user=postgres}"
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ -n "$db" ]; then
        psql "$pg dbname=postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

{
    echo "version: v1"
    if [ "$postgres" -eq 1 ]; then
        db="dt_bench_$$_$RANDOM"
        psql "$pg dbname=postgres" -qc "CREATE DATABASE $db" >/dev/null
        echo "storage:"
        echo "  type: postgres"
        echo "  conn: \"$pg dbname=$db\""
    fi
    echo "limits:"
    echo "  device_ceremonies_per_minute: 100000000"
} > "$work/devtrust.yaml"

addrs=()
for i in $(seq 1 "$servers"); do
    pin_cmd=()
    if [ "$pinned" -eq 1 ]; then pin_cmd=(taskset -c $(( (i - 1) % 2 ))); fi
    mkdir -p "$work/s$i"
    out="$work/s$i/stdout"
    DEVTRUST_LOG=warn "${pin_cmd[@]}" "$devtrust" start --data-dir "$work/s$i/data" \
        --listen 127.0.0.1:0 --config "$work/devtrust.yaml" > "$out" 2> "$work/s$i/log" &
    pids+=($!)
    addr=""
    for _ in $(seq 1 300); do
        addr="$(sed -n 's/^ *listen: *//p' "$out" | head -1)"
        [ -n "$addr" ] && break
        sleep 0.1
    done
    [ -n "$addr" ] || { echo "server $i did not start:"; cat "$work/s$i/log"; exit 1; }
    addrs+=("$addr")
done

bench_pin=()
cores=()
if [ "$pinned" -eq 1 ]; then
    cores=(--server-cores "$servers")
    [ "$servers" -eq 1 ] && bench_pin=(taskset -c 1)
fi
echo "load: $(uptime)"
targets="$(IFS=,; echo "${addrs[*]}")"
server_pids="$(IFS=,; echo "${pids[*]}")"
"${bench_pin[@]}" "$bench" authn --target "$targets" --data-dir "$work/s1/data" \
    --server-pid "$server_pids" "${cores[@]}" "${bench_args[@]}"
echo "load: $(uptime)"
