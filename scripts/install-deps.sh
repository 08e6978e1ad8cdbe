#!/usr/bin/env bash
# Install what devtrust's build and tests need on Debian/Ubuntu, and make sure PostgreSQL
# runs on 127.0.0.1:5432 with trust auth for local tests. Safe to run repeatedly: it only
# installs what is missing. Needs root (or sudo) for apt-get.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
# wrk: the app benchmark's load generator (cargo bench -p dt-e2e --bench app).
for p in pkg-config libtss2-dev swtpm swtpm-tools tpm2-tools openssh-client openssh-server postgresql-client mariadb-client-core wrk; do
  have_pkg "$p" || need+=("$p")
done
if ! command -v pg_ctlcluster >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  need+=(postgresql)
fi
# The database-access tests start MariaDB servers of their own (mariadb-install-db, mariadbd).
if ! command -v mariadbd >/dev/null 2>&1 || ! command -v mariadb-install-db >/dev/null 2>&1; then
  need+=(mariadb-server)
fi
# The Kubernetes-access tests drive the real kubectl (exec over WebSocket needs 1.30+).
command -v kubectl >/dev/null 2>&1 || need+=(kubernetes-client)
if [ "${#need[@]}" -gt 0 ]; then
  echo "==> installing: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is not installed: install Rust (1.89 or newer) first, e.g. from your distribution or rustup" >&2
  exit 1
fi

# Python packages the interoperability tests use: paramiko reads dtsh's SSH key files as
# Ansible does; grpcio + grpcio-tools generate a client from crates/dt-proto/proto and
# cryptography signs as its device key (crates/dt-e2e/tests/python_client.rs). pip first; a
# Python that refuses pip installs (PEP 668) gets Debian's packages.
py_need=()
deb_need=()
for spec in paramiko:paramiko:python3-paramiko grpc:grpcio:python3-grpcio \
            grpc_tools:grpcio-tools:python3-grpc-tools cryptography:cryptography:python3-cryptography; do
  IFS=: read -r mod pkg deb <<<"$spec"
  python3 -c "import $mod" 2>/dev/null || { py_need+=("$pkg"); deb_need+=("$deb"); }
done
if [ "${#py_need[@]}" -gt 0 ]; then
  echo "==> installing Python packages: ${py_need[*]}"
  python3 -m pip install -q "${py_need[@]}" 2>/dev/null \
    || { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${deb_need[@]}" >/dev/null; }
fi

# The web UI's browser tests (crates/dt-e2e/tests/web_ui.rs): Debian's chromium driven by
# playwright-core from npm, which never downloads a browser of its own.
web_need=()
have_pkg chromium || web_need+=(chromium)
command -v node >/dev/null 2>&1 || web_need+=(nodejs)
command -v npm >/dev/null 2>&1 || web_need+=(npm)
if [ "${#web_need[@]}" -gt 0 ]; then
  echo "==> installing for the browser tests: ${web_need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${web_need[@]}" >/dev/null
fi
# The desktop access point's X server and the desktop tests' X client (crates/dt-desktop,
# crates/dt-e2e/tests/desktop_access.rs): Xvfb, xterm; x11-apps and xdotool for looking into
# a test desktop by hand (the product injects input through XTEST itself).
desk_need=()
for p in xvfb xterm x11-apps xdotool; do
  have_pkg "$p" || desk_need+=("$p")
done
if [ "${#desk_need[@]}" -gt 0 ]; then
  echo "==> installing for the desktop access point and its tests: ${desk_need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${desk_need[@]}" >/dev/null
fi
web_tests="$(cd "$(dirname "$0")/.." && pwd)/crates/dt-e2e/tests/web"
if [ ! -d "$web_tests/node_modules/playwright-core" ]; then
  echo "==> npm ci in $web_tests"
  (cd "$web_tests" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent)
fi

# PostgreSQL for the storage conformance suite and multi-server tests.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    ver=$(ls /etc/postgresql | sort -V | tail -1)
    hba="/etc/postgresql/$ver/main/pg_hba.conf"
    if [ -f "$hba" ] && ! grep -q "devtrust-test" "$hba"; then
      echo "==> allowing trust auth for local tests in $hba"
      $SUDO sed -i '1i host all all 127.0.0.1/32 trust # devtrust-test\nlocal all all trust # devtrust-test' "$hba"
    fi
    echo "==> starting PostgreSQL $ver"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  fi
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "PostgreSQL is not reachable on 127.0.0.1:5432; the PostgreSQL tests need it" >&2
  exit 1
fi
echo "==> system dependencies ready"
