#!/usr/bin/env bash
# Browser end-to-end tests: builds the server (unless CONSULT_SERVER_BIN names one already
# built, as scripts/test.sh does after `cargo test`), installs playwright-core (no browser download:
# Debian's chromium is used), and runs the tests inside a fresh network namespace that has only
# a loopback interface, so every packet of the test stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(cd .. && pwd)
if [ -z "${CONSULT_SERVER_BIN:-}" ] || [ ! -x "$CONSULT_SERVER_BIN" ]; then
  cargo build --locked -p consult-signaling --bin consult-server
  CONSULT_SERVER_BIN="$root/target/debug/consult-server"
fi
export CONSULT_SERVER_BIN
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent
if unshare --net true 2>/dev/null; then
  exec unshare --net -- bash -c 'ip link set lo up && exec node --test --test-concurrency=1 tests/'
fi
if [ "${CONSULT_E2E_NO_NETNS:-}" = 1 ]; then
  echo "warning: no network namespace; running on the host's loopback" >&2
  exec node --test --test-concurrency=1 tests/
fi
echo "browser tests need a network namespace (run as root), or CONSULT_E2E_NO_NETNS=1" >&2
exit 1
