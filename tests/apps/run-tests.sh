#!/usr/bin/env bash
# Real applications behind wsgate: Socket.IO 4 (Node), SockJS, an HTML page +
# JSON API + WebSocket app in headless Chromium, server-sent events, and
# python-socketio on uvicorn; each with two backend instances.
# The same tests run through wsgate, then through nginx configured as
# Socket.IO's docs say (the reference behaviour).
# Installs what it needs: Debian's chromium and nginx, the npm packages (into
# node_modules here) and the Python packages (into .venv here), both
# git-ignored; builds the gateway binary when missing.
#   WSGATE_BIN=path   use this gateway binary instead of target/{debug,release}/wsgate
#   CHROMIUM=path     use this browser instead of /usr/bin/chromium
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$here"

if [ -z "${CHROMIUM:-}" ] && [ ! -x /usr/bin/chromium ]; then
  echo "== installing chromium (Debian package)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

if ! command -v nginx >/dev/null 2>&1; then
  echo "== installing nginx (Debian package)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null \
    || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
fi

if [ ! -d node_modules/socket.io ] || [ ! -d node_modules/sockjs-client ] || [ ! -d node_modules/playwright-core ]; then
  echo "== npm ci (tests/apps)"
  npm ci --no-audit --no-fund --loglevel=error
fi

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import socketio, uvicorn, aiohttp' 2>/dev/null; then
  echo "== python venv (tests/apps/.venv)"
  python3 -m venv .venv 2>/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv .venv
  }
  .venv/bin/pip install -q -r requirements.txt
fi

if [ -z "${WSGATE_BIN:-}" ] && [ ! -x "$root/target/debug/wsgate" ] && [ ! -x "$root/target/release/wsgate" ]; then
  echo "== cargo build -p wsgate"
  (cd "$root" && cargo build -p wsgate)
fi

echo "== node --test (tests/apps, through wsgate)"
node --test --test-concurrency=1 --test-timeout=120000 node.test.js python.test.js
echo "== node --test (tests/apps, the same through nginx)"
FRONT=nginx node --test --test-concurrency=1 --test-timeout=120000 node.test.js python.test.js
