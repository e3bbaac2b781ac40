#!/usr/bin/env bash
# Topic fan-out through a wsgate cluster: one redis-server, three wsgate
# gateways (release build, one worker each) and the echo backend, which
# subscribes every connection to topic "bench" in its 101
# (Wsgate-Topics). Then wsgate-bench-fanout opens the subscribers over the
# three gateways and measures (see src/bin/wsgate-bench-fanout.rs):
#   - time from one publish until the last of N subscribers has it;
#   - messages/s and deliveries/s sustained for a topic of 1,000 subscribers;
#   - gateway CPU per delivery.
# Writes bench/results/fanout-last.json. Everything on 127.0.0.1; every
# process started here is stopped by PID on exit.
# Usage: bench/fanout.sh [--quick] [--subscribers N] [--no-build]
set -euo pipefail
cd "$(dirname "$0")/.."

subs=9000 rounds=20 rate_subs=1000 rate_msgs=2000 build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) subs=1500 rounds=10 rate_msgs=500 ;;
    --subscribers) subs="$2"; shift ;;
    --no-build) build=0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

command -v redis-server >/dev/null 2>&1 || {
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q redis-server >/dev/null 2>&1 || { apt-get update -q >/dev/null; apt-get install -y -q redis-server >/dev/null; }
}
if [ "$build" = 1 ]; then
  cargo build --release -p wsgate -p wsgate-bench
fi
target="${CARGO_TARGET_DIR:-target}/release"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work=$(mktemp -d /tmp/wsgate-fanout.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # url, substring
  for _ in $(seq 1 200); do
    if python3 - "$1" "$2" <<'PY' 2>/dev/null; then return 0; fi
import sys, urllib.request
body = urllib.request.urlopen(sys.argv[1], timeout=1).read().decode()
sys.exit(0 if sys.argv[2] in body else 1)
PY
    sleep 0.1
  done
  echo "timed out waiting for $1 to show $2" >&2; exit 1
}

token=fanout-bench-token-0123456789
rp=$(port) bp=$(port)
redis-server --port "$rp" --bind 127.0.0.1 --save "" --appendonly no --protected-mode no >"$work/redis.log" 2>&1 &
pids+=($!)
"$target/wsgate-bench-echo" --listen "127.0.0.1:$bp" --workers 1 --topics bench 2>"$work/echo.log" &
pids+=($!)

gw_args=() gpids=()
for n in a b c; do
  wp=$(port) ap=$(port)
  cat >"$work/$n.toml" <<TOML
[server]
listen = "127.0.0.1:$wp"
max_connections = 100000
[admin]
listen = "127.0.0.1:$ap"
token = "$token"
[health]
http_path = ""
[[backends]]
name = "echo"
url = "ws://127.0.0.1:$bp"
[cluster]
redis_url = "redis://127.0.0.1:$rp"
node = "gw-$n"
key_prefix = "fanout:"
TOML
  WSGATE_WORKERS=1 RUST_LOG=warn "$target/wsgate" run -c "$work/$n.toml" >"$work/$n.out" 2>"$work/$n.log" &
  pids+=($!) gpids+=(--pids $!)
  gw_args+=(--gateway "ws://127.0.0.1:$wp" --admin "127.0.0.1:$ap")
  wait_http "http://127.0.0.1:$ap/metrics" "wsgate_cluster_up 1"
done

mkdir -p bench/results
"$target/wsgate-bench-fanout" "${gw_args[@]}" "${gpids[@]}" --token "$token" \
  --subscribers "$subs" --rounds "$rounds" --rate-subscribers "$rate_subs" --rate-messages "$rate_msgs" \
  | tee bench/results/fanout-last.json
