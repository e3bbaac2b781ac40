#!/usr/bin/env bash
# Runs every test of the project: the Rust workspace (gateway, bench, Rust
# client), the deploy/ checks (promtool, systemd-analyze), the Prometheus
# scrape test, the cluster tests on Redis, the browser tests of the JavaScript
# client and the real applications of tests/apps (npm and PyPI packages installed
# there). Installs what the tests need (Debian packages prometheus, redis-server and
# chromium, npm packages) when
# missing. Usage: ./test.sh
set -euo pipefail
cd "$(dirname "$0")"

need_apt=()
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${need_apt[@]}" >/dev/null 2>&1 || {
    apt-get update -q >/dev/null
    apt-get install -y -q "${need_apt[@]}" >/dev/null
  }
fi

echo "== deploy/ checks"
bash deploy/check.sh

echo "== cargo test (workspace)"
export WSGATE_REQUIRE_PROMETHEUS=1
export WSGATE_REQUIRE_REDIS=1
cargo build --workspace --all-targets
cargo test --workspace -- --test-threads=2

echo "== JavaScript client in headless Chromium"
bash clients/js/run-tests.sh

echo "== real applications behind wsgate (Socket.IO, SockJS, python-socketio, Chromium, SSE)"
bash tests/apps/run-tests.sh

echo "== all tests passed"
