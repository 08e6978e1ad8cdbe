#!/usr/bin/env bash
# The seeds' "Getting Started with Device Trust", end to end on one machine:
#
#   1. start the auth service (SQLite in a temp dir) and join an SSH node
#   2. add a user; `dtsh ssh` works
#   3. the user gets the preset require-trusted-device role → access denied
#   4. `dtsh device enroll --current-device` → `dtsh ssh` works again
#   5. cluster-wide `required` → a user without a trusted device is refused
#   6. lock the device → refused with the lock message; remove the lock → works
#
# Every step is printed; any surprise exits non-zero. Binaries come from $DEVTRUST_BIN
# (default: target/debug, built here when missing). Devices use software credentials
# (`allow_software_credentials: true`), as labs and CI have no TPM.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${DEVTRUST_BIN:-target/debug}"
if [ ! -x "$BIN/devtrust" ] || [ ! -x "$BIN/dtctl" ] || [ ! -x "$BIN/dtsh" ]; then
  echo "==> building the binaries"
  cargo build -p devtrust -p dtctl -p dtsh
fi
BIN="$(cd "$BIN" && pwd)"

WORK="$(mktemp -d -t devtrust-demo.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "${KEEP_DEMO_DIR:-0}" = 1 ]; then echo "(kept $WORK)"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

step() { printf '\n==> %s\n' "$*"; }
fail() { echo "DEMO FAILED: $*" >&2; for f in "$WORK"/*.log; do echo "--- $f" >&2; tail -n 20 "$f" >&2; done; exit 1; }
show() { printf '$ %s\n' "$*"; }

# run CMD...: show it, run it, fail unless it succeeds; its output is in $OUT.
run() {
  show "$*"
  if ! OUT="$("$@" 2>&1)"; then echo "$OUT"; fail "command failed: $*"; fi
  [ -n "$OUT" ] && echo "$OUT"
  return 0
}
# refused WANT CMD...: the command must fail and print the line WANT (exactly).
refused() {
  local want="$1"; shift
  show "$*"
  local out rc=0
  out="$("$@" 2>&1)" || rc=$?
  echo "$out"
  [ "$rc" -ne 0 ] || fail "expected a refusal from: $*"
  grep -qxF -- "$want" <<<"$out" || fail "expected the line: $want"
}
# eventually CMD...: retry for up to 10 s (the node applies cluster changes within ms,
# but the demo must not race them).
eventually() {
  for _ in $(seq 1 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}
wait_line() { # FILE PREFIX: wait for a line starting with PREFIX; print the rest
  for _ in $(seq 1 300); do
    if grep -q "^$2" "$1" 2>/dev/null; then grep -m1 "^$2" "$1" | sed "s/^$2[[:space:]]*//"; return 0; fi
    sleep 0.1
  done
  fail "no '$2' in $1"
}

LOGIN="$(id -un)"
export DTSH_HOME="$WORK/alice"
export DTSH_DEVICE_HOME="$WORK/alice-device"
export DTSH_DEVICE_KEYSTORE=software
dtctl() { "$BIN/dtctl" --data-dir="$WORK/auth" "$@"; }
dtsh() { "$BIN/dtsh" "$@"; }
bob() { DTSH_HOME="$WORK/bob" DTSH_DEVICE_HOME="$WORK/bob-device" "$BIN/dtsh" "$@"; }

step "Start the auth service (SQLite in $WORK/auth)"
"$BIN/devtrust" start --data-dir "$WORK/auth" --listen 127.0.0.1:0 >"$WORK/auth.out" 2>"$WORK/auth.log" &
PIDS+=($!)
ADDR="$(wait_line "$WORK/auth.out" "  listen:")"
PIN="$(wait_line "$WORK/auth.out" "  CA pin:")"
cat "$WORK/auth.out"

step "Lab setting: devices without a TPM may enroll (software credentials)"
cat >"$WORK/cap.yaml" <<EOF
kind: cluster_auth_preference
version: v2
metadata: {name: cluster-auth-preference}
spec:
  device_trust: {mode: optional, allow_software_credentials: true}
EOF
run dtctl create -f "$WORK/cap.yaml" --force

step "Join an SSH node (server1) with a node join token"
TOKEN="$(dtctl tokens add --type=node --format=text)"
"$BIN/devtrust" node start --auth-server="$ADDR" --token="$TOKEN" --ca-pin="$PIN" \
  --name=server1 --listen=127.0.0.1:0 --labels=env=demo --heartbeat=2s \
  --data-dir="$WORK/node" >"$WORK/node.out" 2>"$WORK/node.log" &
PIDS+=($!)
wait_line "$WORK/node.out" "  listen:" >/dev/null
cat "$WORK/node.out"

step "Add alice (roles access, editor; login $LOGIN) and log in"
run dtctl users add alice --roles=access,editor --logins="$LOGIN"
SIGNUP="$(sed -n 's/.*--signup-token=\([^ ]*\).*/\1/p' <<<"$OUT")"
run dtsh login --proxy="$ADDR" --user=alice --signup-token="$SIGNUP" --password-stdin --ca-pin="$PIN" <<<"alice-demo-password"
eventually dtsh ls || fail "dtsh ls"
eventually bash -c "'$BIN/dtsh' ls | grep -q server1" || fail "server1 is not listed"
run dtsh ls

step "dtsh ssh works"
run dtsh ssh "$LOGIN@server1" echo "hello from \$DEVTRUST_NODE"
[ "$OUT" = "hello from server1" ] || fail "unexpected output"
rc=0; dtsh ssh "$LOGIN@server1" 'exit 3' || rc=$?
[ "$rc" -eq 3 ] || fail "the remote exit code did not come back (got $rc)"
echo "(the remote exit code 3 came back)"

step "Step 1/2: alice gets the preset require-trusted-device role"
cat >"$WORK/alice.yaml" <<EOF
kind: user
version: v2
metadata: {name: alice}
spec: {roles: [access, editor, require-trusted-device], traits: {logins: [$LOGIN]}}
EOF
run dtctl create -f "$WORK/alice.yaml" --force
run dtsh logout
run dtsh login --proxy="$ADDR" --user=alice --password-stdin --ca-pin="$PIN" <<<"alice-demo-password"
refused "ERROR: access denied to $LOGIN connecting to server1" dtsh ssh "$LOGIN@server1" true

step "Why? dtctl access explain runs the node's decision (exit 3: denied)"
show dtctl access explain --user=alice --node=server1 --login="$LOGIN" --no-device
rc=0; OUT="$(dtctl access explain --user=alice --node=server1 --login="$LOGIN" --no-device 2>&1)" || rc=$?
echo "$OUT"
[ "$rc" -eq 3 ] || fail "access explain should deny with exit 3 (got $rc)"
grep -q 'role "require-trusted-device" requires a trusted device' <<<"$OUT" || fail "explain does not name the role"

step "Step 2/2: enroll this device"
run dtsh device enroll --current-device
grep -q "registered and enrolled" <<<"$OUT" || fail "expected 'registered and enrolled'"
run dtsh status
grep -q "devtrust-device-id" <<<"$OUT" || fail "the certificates do not carry the device"
run dtsh ssh "$LOGIN@server1" echo "trusted device: ok"

step "Cluster-wide: device_trust.mode required"
sed -i 's/mode: optional/mode: required/' "$WORK/cap.yaml"
run dtctl create -f "$WORK/cap.yaml" --force
run dtctl users add bob --roles=access --logins="$LOGIN"
SIGNUP="$(sed -n 's/.*--signup-token=\([^ ]*\).*/\1/p' <<<"$OUT")"
run bob login --proxy="$ADDR" --user=bob --signup-token="$SIGNUP" --password-stdin --ca-pin="$PIN" <<<"bob-demo-password"
eventually bash -c "! DTSH_HOME='$WORK/bob' '$BIN/dtsh' ssh '$LOGIN@server1' true" || fail "bob was not refused"
refused "ERROR: ssh: rejected: administratively prohibited (unauthorized device)" bob ssh "$LOGIN@server1" true
run dtsh ssh "$LOGIN@server1" echo "alice, on her trusted device: ok"

step "Lock alice's device"
TAG="$(dtsh device asset-tag)"
show dtctl get "device/$TAG" --format=json
OUT="$(dtctl get "device/$TAG" --format=json)" || fail "dtctl get device/$TAG"
DEVICE_ID="$(sed -n 's/.*"name": *"\([0-9a-f-]\{36\}\)".*/\1/p' <<<"$OUT" | head -n1)"
[ -n "$DEVICE_ID" ] || fail "no device id"
echo "device id: $DEVICE_ID"
run dtctl lock --device="$DEVICE_ID" --ttl=12h
LOCK="$(sed -n 's/Created a lock with name "\(.*\)"\./\1/p' <<<"$OUT")"
eventually bash -c "! '$BIN/dtsh' ssh '$LOGIN@server1' true" || fail "the lock did not apply"
refused "ERROR: ssh: rejected: administratively prohibited (lock targeting Device:\"$DEVICE_ID\" is in force)" \
  dtsh ssh "$LOGIN@server1" true
show dtctl access explain --user=alice --device="$DEVICE_ID" --node=server1 --login="$LOGIN" --format=json
rc=0; OUT="$(dtctl access explain --user=alice --device="$DEVICE_ID" --node=server1 --login="$LOGIN" --format=json 2>&1)" || rc=$?
echo "$OUT"
[ "$rc" -eq 3 ] && grep -q '"decision": "deny"' <<<"$OUT" || fail "access explain should see the lock"

step "Remove the lock"
run dtctl rm "lock/$LOCK"
eventually dtsh ssh "$LOGIN@server1" true || fail "still locked"
run dtsh ssh "$LOGIN@server1" echo "unlocked: ok"
run dtctl access explain --user=alice --device="$DEVICE_ID" --node=server1 --login="$LOGIN"
grep -q '^ALLOW: ' <<<"$OUT" || fail "access explain should allow alice on her device"

step "The audit trail"
run dtctl events ls --type=access.denied
run dtctl events ls --type=session.end

printf '\nDEMO OK: every step behaved as the guide says.\n'
