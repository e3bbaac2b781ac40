#!/usr/bin/env bash
# Runs the JS client's tests: unit tests in Node (virtual clock, fake socket) and
# browser tests (headless Chromium -> real wsgate -> Node echo backend).
# Installs what it needs: Debian's chromium, the npm dev dependencies, the gateway binary.
#   WSGATE_TEST_DIRECT=1   browser tests talk to the backend directly (no gateway)
#   WSGATE_BIN=path        use this gateway binary instead of target/{debug,release}/wsgate
#   CHROMIUM=path          use this browser instead of /usr/bin/chromium
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$here"

if [ -z "${CHROMIUM:-}" ] && [ ! -x /usr/bin/chromium ]; then
  echo "== installing chromium (Debian package)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

if [ ! -d node_modules/playwright-core ] || [ ! -d node_modules/ws ]; then
  echo "== npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi

if [ "${WSGATE_TEST_DIRECT:-}" != 1 ] && [ -z "${WSGATE_BIN:-}" ] \
  && [ ! -x "$root/target/debug/wsgate" ] && [ ! -x "$root/target/release/wsgate" ]; then
  echo "== cargo build -p wsgate"
  (cd "$root" && cargo build -p wsgate)
fi

echo "== node --test"
# One file at a time: the browser tests time real reconnects on a 2-core machine.
exec node --test --test-concurrency=1 --test-timeout=120000 test/unit.test.js test/resume.test.js test/browser.test.js test/compression.test.js
