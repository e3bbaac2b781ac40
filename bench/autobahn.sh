#!/usr/bin/env bash
# bench/autobahn.sh [CASES] [OUTDIR]
# Autobahn|Testsuite (fuzzingclient) through the gateway: a release build of
# wsgate in front of Autobahn's own strict echo server (`wstest -m
# testeeserver`), then the same cases straight against that echo server, so
# every deviation can be put on the gateway or on the backend.
#   CASES   default "1.*,2.*,3.*,4.*,5.*,6.*,7.*,10.*" (issue 13 item 10)
#   OUTDIR  default /tmp/ab-wsgate; gets wsgate/ and direct/ report dirs
# Env: AB_DIR (the Python 3 port, default ../shared/autobahn next to the
#      repo), AB_VENV (default /tmp/ab-py3), BACKEND=websockets to use the
#      Python `websockets` echo server instead, WSGATE_BIN=path to test a
#      binary already built instead of `cargo build --release`.
# Takes about 2-4 minutes on two cores; not part of ./test.sh for that reason.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
AB=${AB_DIR:-$ROOT/../shared/autobahn}
export AB_VENV=${AB_VENV:-/tmp/ab-py3}
CASES=${1:-"1.*,2.*,3.*,4.*,5.*,6.*,7.*,10.*"}
OUT=${2:-/tmp/ab-wsgate}
[ -d "$AB" ] || { echo "no Autobahn port at $AB (set AB_DIR)" >&2; exit 1; }
"$AB/setup.sh" "$AB_VENV" >/dev/null

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 100); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 never opened" >&2; return 1
}

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

BPORT=$(free_port); GPORT=$(free_port); APORT=$(free_port)
if [ "${BACKEND:-testee}" = websockets ]; then
  "$AB_VENV/bin/python" "$AB/echo_server.py" "127.0.0.1:$BPORT" & pids+=($!)
else
  (cd /tmp && exec "$AB_VENV/bin/wstest" -m testeeserver -w "ws://127.0.0.1:$BPORT" >/dev/null 2>&1) & pids+=($!)
fi
wait_port "$BPORT"

if [ -n "${WSGATE_BIN:-}" ]; then
  BIN=$WSGATE_BIN
else
  (cd "$ROOT" && nice -n 10 cargo build --release --quiet --bin wsgate)
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/wsgate
fi
mkdir -p "$OUT"
# Health checks off: a check's upgrade would be one more client of the echo
# server; heartbeats off: unsolicited pings would be unexpected events in
# the cases. Everything else is the default config.
cat > "$OUT/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:$GPORT"
[admin]
listen = "127.0.0.1:$APORT"
[heartbeat]
client_interval = "0s"
backend_interval = "0s"
[limits]
max_message_bytes = 16777216
[health]
http_path = ""
ws_path = ""
[[backends]]
name = "echo"
url = "ws://127.0.0.1:$BPORT"
TOML
"$BIN" check -c "$OUT/gateway.toml"
RUST_LOG=warn "$BIN" run -c "$OUT/gateway.toml" > "$OUT/wsgate.log" 2>&1 & pids+=($!)
wait_port "$GPORT"

echo "== through wsgate (ws://127.0.0.1:$GPORT -> echo on $BPORT)"
"$AB/run.sh" "ws://127.0.0.1:$GPORT" wsgate "$CASES" "$OUT/wsgate" || true
echo "== direct (ws://127.0.0.1:$BPORT)"
"$AB/run.sh" "ws://127.0.0.1:$BPORT" direct "$CASES" "$OUT/direct" || true
echo "== cases whose outcome differs (wsgate vs direct)"
"$AB_VENV/bin/python" "$AB/compare.py" "$OUT/wsgate" "$OUT/direct" || true
