#!/usr/bin/env bash
# Instructions per device authentication, counted by valgrind's callgrind in a real
# `devtrust start` (SQLite) driven by `devtrust-bench authn --target`.
#
# Timings on a shared 2-core machine move by a fifth from hour to hour; instruction counts
# of the same binary and load do not. Use this to compare two builds' server-side work per
# ceremony (user space only: the kernel's share is not counted, and valgrind runs ring's
# portable P-256 and SHA code, so compare the non-crypto part; the script prints it).
#
#   scripts/callgrind-authn.sh [SECONDS]        (default 40; about 25 ceremonies/s; compare
#                                                runs of the same length)
#
# Binaries: $DEVTRUST and $DEVTRUST_BENCH, or target/release/{devtrust,devtrust-bench}
# (`cargo build --release -p devtrust -p dt-bench`). Needs valgrind (callgrind_control,
# callgrind_annotate). The profile is kept: its path is printed, for callgrind_annotate.
set -euo pipefail

seconds="${1:-40}"
# shellcheck source=bench-binaries.sh
source "$(dirname "$0")/bench-binaries.sh"
for t in valgrind callgrind_control callgrind_annotate; do
    command -v "$t" >/dev/null || { echo "$t is missing: apt-get install valgrind" >&2; exit 2; }
done

work=""
profiles=""
vpid=""
bpid=""
ok=0
cleanup() {
    for p in "$bpid" "$vpid"; do
        [ -n "$p" ] || continue
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    [ -z "$work" ] || rm -rf "$work"
    # The profile is kept (its path is printed) only when the run succeeded.
    [ "$ok" -eq 1 ] || [ -z "$profiles" ] || rm -rf "$profiles"
}
trap cleanup EXIT
work="$(mktemp -d)"
profiles="$(mktemp -d)"
profile="$profiles/callgrind.out"

# callgrind_control prints its errors on stdout and exits 0 either way: success is "OK.".
control() {
    local out
    out="$(callgrind_control "$@" "$vpid" 2>&1 || true)"
    grep -q 'OK\.' <<<"$out" || { echo "callgrind_control $*: $out" >&2; exit 1; }
}

printf 'version: v1\nlimits:\n  device_ceremonies_per_minute: 100000000\n' > "$work/devtrust.yaml"
: > "$work/stdout"
# Counting starts only once the bench has set up its users and devices.
DEVTRUST_LOG=warn valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$profile" "$devtrust" start --data-dir "$work/data" \
    --listen 127.0.0.1:0 --config "$work/devtrust.yaml" > "$work/stdout" 2> "$work/log" &
vpid=$!
addr=""
for _ in $(seq 1 600); do
    addr="$(sed -n 's/^ *listen: *//p' "$work/stdout" | head -1)"
    [ -n "$addr" ] && break
    kill -0 "$vpid" 2>/dev/null || break
    sleep 0.2
done
[ -n "$addr" ] || { echo "the server did not start under valgrind:" >&2; cat "$work/log" >&2; exit 1; }

: > "$work/bench"
"$bench" authn --target "$addr" --data-dir "$work/data" --clients 16 --seconds "$seconds" \
    > "$work/bench" 2>&1 &
bpid=$!
# The bench prints its table header when setup is done and the measured run starts (setup
# under valgrind takes well under ten minutes).
for _ in $(seq 1 3000); do
    grep -q "clients" "$work/bench" && break
    kill -0 "$bpid" 2>/dev/null || { cat "$work/bench" >&2; exit 1; }
    sleep 0.2
done
grep -q "clients" "$work/bench" || { echo "the bench's setup did not finish:" >&2; cat "$work/bench" >&2; exit 1; }
# Ceremonies that end between the header and this switch are counted in the bench's total
# but not in the instructions: a bias of well under 1 %, the same for every build.
control -i on
wait "$bpid" || { bpid=""; cat "$work/bench" >&2; exit 1; }
bpid=""
control -i off
control -d
kill "$vpid"
wait "$vpid" 2>/dev/null || true
vpid=""

auths="$(awk '$1 == 16 { print $2 }' "$work/bench")"
[ "${auths:-0}" -gt 0 ] || { echo "the bench counted no authentications:" >&2; cat "$work/bench" >&2; exit 1; }
# The dump asked for above (the file without a suffix is the rest, written at exit).
file="$profile.1"
[ -s "$file" ] || { echo "no callgrind dump at $file" >&2; exit 1; }
callgrind_annotate --inclusive=yes "$file" > "$work/annotated" 2> "$work/annotate.err" ||
    { cat "$work/annotate.err" >&2; exit 1; }
# The first line matching $1: its instruction count (0 when none does).
count() { awk -v re="$1" '$0 ~ re { gsub(",", "", $1); print $1; found = 1; exit } END { if (!found) print 0 }' "$work/annotated"; }
total="$(count 'PROGRAM TOTALS')"
verify="$(count 'EcdsaVerificationAlgorithm as ring::signature::VerificationAlgorithm>::verify')"
sign="$(count 'EcdsaKeyPair::sign [[]')"
[ "$total" -gt 0 ] || { echo "no PROGRAM TOTALS in the profile $file" >&2; exit 1; }
if [ "$verify" -eq 0 ] || [ "$sign" -eq 0 ]; then
    echo "warning: ring's P-256 verify or sign is not in the profile (renamed?): the rest includes it" >&2
fi
awk -v t="$total" -v v="$verify" -v s="$sign" -v n="$auths" -v f="$file" 'BEGIN {
    printf "%d authentications counted\n", n
    printf "instructions per authentication: %.0f (P-256 verify and sign %.0f, the rest %.0f)\n",
        t / n, (v + s) / n, (t - v - s) / n
    printf "profile: %s\n", f
}'
ok=1
