#!/usr/bin/env bash
# wsgate vs nginx vs HAProxy vs direct, side by side in one run (see bench/README.md).
#
#   bench/compare.sh [--quick] [--rounds N] [--duration SECS] [--idle-conns N]
#                    [--targets "direct nginx haproxy wsgate"] [--no-build] [--keep]
#                    [--only http]   (only the keep-alive HTTP tests; RESULTS.md untouched)
#   bench/compare.sh scale [--quick] [--conns N] [--hold SECS]
#                    [--client-interval 1s] [--backend-interval 30s]
#   bench/compare.sh deflate [--quick] [--rounds N] [--duration SECS] [--idle-conns N]
#                    (permessage-deflate on both legs: nginx, HAProxy, wsgate "inspect"
#                     and wsgate "passthrough"; 4 KiB JSON-like messages)
#
# Everything runs on loopback (127.0.0.0/8); every process this script starts is
# stopped by PID on exit. Results: bench/RESULTS.md (sections replaced in place) and
# raw JSON lines in bench/results/.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
cd "$ROOT"
CMDLINE="bench/$(basename "$0") $*"

MODE=compare
if [[ ${1:-} == scale ]]; then MODE=scale; shift; fi
if [[ ${1:-} == deflate ]]; then MODE=deflate; shift; fi

QUICK=0 ROUNDS="" DURATION="" IDLE_CONNS="" TARGETS="" BUILD=1 KEEP=0 ONLY=
SCALE_CONNS="" SCALE_HOLD="" CLIENT_INTERVAL=1s BACKEND_INTERVAL=30s
while [[ $# -gt 0 ]]; do
  case $1 in
    --quick) QUICK=1 ;;
    --rounds) ROUNDS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --idle-conns) IDLE_CONNS=$2; shift ;;
    --targets) TARGETS=$2; shift ;;
    --no-build) BUILD=0 ;;
    --keep) KEEP=1 ;;
    --only) ONLY=$2; shift ;;
    --conns) SCALE_CONNS=$2; shift ;;
    --hold) SCALE_HOLD=$2; shift ;;
    --client-interval) CLIENT_INTERVAL=$2; shift ;;
    --backend-interval) BACKEND_INTERVAL=$2; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
  shift
done

if [[ $QUICK == 1 ]]; then
  : "${ROUNDS:=2}" "${DURATION:=2}" "${IDLE_CONNS:=2000}"
  WARMUP=0.5 IDLE_HOLD=3
  : "${SCALE_CONNS:=2000}" "${SCALE_HOLD:=20}"
else
  : "${ROUNDS:=5}" "${DURATION:=10}" "${IDLE_CONNS:=9000}"
  WARMUP=2 IDLE_HOLD=6
  : "${SCALE_CONNS:=9000}" "${SCALE_HOLD:=60}"
fi
: "${TARGETS:=direct nginx haproxy wsgate}"

# Ports (loopback only).
ECHO1=18001 ECHO2=18002 NGINX_PORT=18081 HAPROXY_PORT=18082 WSGATE_PORT=18083 WSGATE_ADMIN=19093
WSGATE_PT_PORT=18084 WSGATE_PT_ADMIN=19094   # wsgate with permessage_deflate = "passthrough"
WORKERS=2          # proxy worker processes/threads for every proxy
ECHO_WORKERS=1     # tokio threads per echo backend (two backends)
LOAD_WORKERS=2     # tokio threads of the load generator

ulimit -n 20000
REL=$ROOT/target/release
LOAD=$REL/wsgate-bench-load
ECHO=$REL/wsgate-bench-echo
WSGATE=${WSGATE_BIN:-$REL/wsgate}   # WSGATE_BIN: compare another build
WORK=$(mktemp -d /tmp/wsgate-bench.XXXXXX)
mkdir -p "$BENCH_DIR/results"
STARTED=()

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

cleanup() {
  local p
  for p in "${STARTED[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${STARTED[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  if [[ $KEEP == 1 ]]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ setup

install_proxies() {
  local need=()
  command -v nginx >/dev/null || need+=(nginx-light)
  command -v haproxy >/dev/null || need+=(haproxy)
  [[ ${#need[@]} -eq 0 ]] && return
  log "installing ${need[*]}"
  apt-get update -q >/dev/null
  apt-get install -y -q "${need[@]}" >/dev/null || apt-get install -y -q nginx haproxy >/dev/null
}

build() {
  [[ $BUILD == 1 ]] || return 0
  log "cargo build --release -p wsgate -p wsgate-bench"
  if ! cargo build --release -p wsgate -p wsgate-bench 2>"$WORK/build.log"; then
    log "wsgate does not build (see $WORK/build.log); building the harness alone"
    cargo build --release -p wsgate-bench 2>>"$WORK/build.log" || { cat "$WORK/build.log" >&2; exit 1; }
  fi
}

wait_port() { # port [seconds [pid that must stay alive]]
  local deadline=$((SECONDS + ${2:-15}))
  until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
    ((SECONDS < deadline)) || return 1
    [[ -z ${3:-} ]] || kill -0 "$3" 2>/dev/null || return 1
    sleep 0.1
  done
}

start_echo() {
  local port
  for port in $ECHO1 $ECHO2; do
    "$ECHO" --listen "127.0.0.1:$port" --workers $ECHO_WORKERS 2>"$WORK/echo-$port.log" &
    STARTED+=($!)
    ECHO_PIDS+=($!)
  done
  wait_port $ECHO1 && wait_port $ECHO2 || { log "echo backends did not start"; exit 1; }
}

start_nginx() {
  local d=$WORK/nginx
  mkdir -p "$d/logs" "$d/tmp"
  cat >"$d/nginx.conf" <<EOF
worker_processes $WORKERS;
worker_rlimit_nofile 20000;
daemon off;
master_process on;
pid $d/nginx.pid;
error_log $d/logs/error.log warn;
events { worker_connections 20000; }
http {
  access_log off;
  client_body_temp_path $d/tmp/body;
  proxy_temp_path $d/tmp/proxy;
  fastcgi_temp_path $d/tmp/fastcgi;
  uwsgi_temp_path $d/tmp/uwsgi;
  scgi_temp_path $d/tmp/scgi;
  # Plain HTTP: no Connection header upstream, so the keepalive pool below is used
  # (nginx's documented setup for upstream keep-alive).
  map \$http_upgrade \$connection_upgrade { default upgrade; '' ''; }
  upstream echo {
    hash \$arg_client_id consistent;
    server 127.0.0.1:$ECHO1;
    server 127.0.0.1:$ECHO2;
    keepalive 64;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT backlog=4096;
    location / {
      proxy_pass http://echo;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_set_header Host \$host;
      proxy_connect_timeout 5s;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
    }
  }
}
EOF
  nginx -p "$d" -c "$d/nginx.conf" 2>"$d/logs/stderr.log" &
  NGINX_PID=$!
  STARTED+=($NGINX_PID)
  wait_port $NGINX_PORT 15 $NGINX_PID || { log "nginx did not start:"; cat "$d/logs/"* >&2; return 1; }
}

start_haproxy() {
  local d=$WORK/haproxy
  mkdir -p "$d"
  cat >"$d/haproxy.cfg" <<EOF
global
  nbthread $WORKERS
  # 2 fds per proxied connection + a few: must stay under the 20000 hard fd limit.
  maxconn 9980
  tune.bufsize 16384
defaults
  mode http
  maxconn 9980
  timeout connect 5s
  timeout client 3600s
  timeout server 3600s
  timeout tunnel 1h
  timeout http-request 10s
frontend fe
  bind 127.0.0.1:$HAPROXY_PORT
  default_backend be
backend be
  balance url_param client_id
  hash-type consistent
  server b1 127.0.0.1:$ECHO1
  server b2 127.0.0.1:$ECHO2
EOF
  haproxy -db -f "$d/haproxy.cfg" >"$d/stdout.log" 2>"$d/stderr.log" &
  HAPROXY_PID=$!
  STARTED+=($HAPROXY_PID)
  wait_port $HAPROXY_PORT 15 $HAPROXY_PID || { log "haproxy did not start:"; cat "$d/stderr.log" >&2; return 1; }
}

write_wsgate_config() { # file client_interval backend_interval [port admin_port permessage_deflate]
  cat >"$1" <<EOF
[server]
listen = "127.0.0.1:${4:-$WSGATE_PORT}"
max_connections = 100000

[admin]
listen = "127.0.0.1:${5:-$WSGATE_ADMIN}"

[limits]
permessage_deflate = "${6:-inspect}"

[routing]
client_id = ["query:client_id"]

[health]
http_path = ""

[heartbeat]
client_interval = "$2"
backend_interval = "$3"

[[backends]]
name = "b1"
url = "ws://127.0.0.1:$ECHO1"

[[backends]]
name = "b2"
url = "ws://127.0.0.1:$ECHO2"
EOF
}

start_wsgate() { # client_interval backend_interval
  local d=$WORK/wsgate
  mkdir -p "$d"
  [[ -x $WSGATE ]] || { log "no $WSGATE: wsgate skipped"; return 1; }
  write_wsgate_config "$d/wsgate.toml" "${1:-30s}" "${2:-30s}"
  WSGATE_WORKERS=$WORKERS RUST_LOG=${RUST_LOG:-warn} "$WSGATE" run -c "$d/wsgate.toml" \
    >"$d/stdout.log" 2>"$d/stderr.log" &
  WSGATE_PID=$!
  STARTED+=($WSGATE_PID)
  wait_port $WSGATE_PORT 20 $WSGATE_PID || { log "wsgate did not start:"; tail -20 "$d/stderr.log" >&2; return 1; }
}

# wsgate with permessage_deflate = "passthrough", beside the default one.
start_wsgate_passthrough() {
  local d=$WORK/wsgate-passthrough
  mkdir -p "$d"
  [[ -x $WSGATE ]] || return 1
  write_wsgate_config "$d/wsgate.toml" 30s 30s $WSGATE_PT_PORT $WSGATE_PT_ADMIN passthrough
  WSGATE_WORKERS=$WORKERS RUST_LOG=${RUST_LOG:-warn} "$WSGATE" run -c "$d/wsgate.toml" \
    >"$d/stdout.log" 2>"$d/stderr.log" &
  WSGATE_PT_PID=$!
  STARTED+=($WSGATE_PT_PID)
  wait_port $WSGATE_PT_PORT 20 $WSGATE_PT_PID || { log "wsgate (passthrough) did not start:"; tail -20 "$d/stderr.log" >&2; return 1; }
}

# Every process that belongs to a target (for CPU and memory accounting).
pids_of() {
  case $1 in
    direct) echo "" ;;
    nginx) echo "$NGINX_PID $(pgrep -P "$NGINX_PID" | tr '\n' ' ')" ;;
    haproxy) echo "$HAPROXY_PID $(pgrep -P "$HAPROXY_PID" | tr '\n' ' ')" ;;
    wsgate) echo "$WSGATE_PID" ;;
    wsgate_passthrough) echo "$WSGATE_PT_PID" ;;
  esac
}

urls_of() {
  case $1 in
    direct) echo "--url ws://127.0.0.1:$ECHO1/ --url ws://127.0.0.1:$ECHO2/" ;;
    nginx) echo "--url ws://127.0.0.1:$NGINX_PORT/" ;;
    haproxy) echo "--url ws://127.0.0.1:$HAPROXY_PORT/" ;;
    wsgate) echo "--url ws://127.0.0.1:$WSGATE_PORT/" ;;
    wsgate_passthrough) echo "--url ws://127.0.0.1:$WSGATE_PT_PORT/" ;;
  esac
}

pid_args() { local p; p=$(pids_of "$1" | xargs | tr ' ' ','); [[ -n $p ]] && echo "--pids $p"; true; }

# "rss_kb pss_kb" summed over the given PIDs (smaps_rollup).
mem_of() {
  local rss=0 pss=0 p r s
  for p in "$@"; do
    [[ -r /proc/$p/smaps_rollup ]] || continue
    read -r r s < <(awk '/^Rss:/{r=$2} /^Pss:/{s=$2} END{print r+0, s+0}' "/proc/$p/smaps_rollup")
    rss=$((rss + r)); pss=$((pss + s))
  done
  echo "$rss $pss"
}

# JSON snapshot of the proxy's memory and the kernel's socket memory.
mem_json() { # pids...
  local rss pss sock slab tcp sslab
  read -r rss pss < <(mem_of "$@")
  sock=$(awk '$1=="TCP:"{for(i=2;i<NF;i++) if($i=="mem") print $(i+1)}' /proc/net/sockstat)
  tcp=$(awk '$1=="TCP:"{for(i=2;i<NF;i++) if($i=="inuse") print $(i+1)}' /proc/net/sockstat)
  slab=$(awk '$1=="Slab:"{print $2}' /proc/meminfo)
  # Slab caches a TCP socket's kernel objects live in (dentry left out: too noisy on
  # a machine where builds run; it adds ~192 B per socket).
  sslab=$(awk 'BEGIN { split("TCP request_sock_TCP sock_inode_cache eventpoll_epi eventpoll_pwq filp tcp_bind_bucket tcp_bind2_bucket skbuff_head_cache", n, " "); for (i in n) want[n[i]] = 1 }
    ($1 in want) { s += $2 * $4 } END { printf "%d", s / 1024 }' /proc/slabinfo 2>/dev/null || echo 0)
  echo "{\"rss_kb\":$rss,\"pss_kb\":$pss,\"sock_mem_pages\":${sock:-0},\"tcp_inuse\":${tcp:-0},\"slab_kb\":${slab:-0},\"sock_slab_kb\":${sslab:-0}}"
}

sanity() { # target: one short handshake run must succeed
  local out
  # shellcheck disable=SC2046
  out=$("$LOAD" --workers 1 handshakes $(urls_of "$1") --concurrency 2 --duration 0.3s 2>/dev/null | tail -1) || true
  if ! grep -q '"errors":0' <<<"$out" || grep -q '"completed":0' <<<"$out"; then
    log "$1 fails a basic echo: $out"
    return 1
  fi
}

machine_info() {
  local cpu kernel ngv hav wsv rv
  # (|| true: an early-exiting reader may SIGPIPE the writer, and pipefail is on)
  cpu=$(lscpu 2>/dev/null | awk -F: '/Model name/{gsub(/^ +/,"",$2); print $2; exit}') || true
  kernel=$(uname -sr)
  ngv=$(nginx -v 2>&1 | head -1) || true
  hav=$(haproxy -v 2>/dev/null | head -1 | sed 's/ - https.*//') || true
  wsv=$([[ -x $WSGATE ]] && "$WSGATE" --version 2>/dev/null | head -1 || echo "not built") || true
  rv=$(rustc -V)
  printf '%s\t%s\n' cpu "$cpu" kernel "$kernel" nginx "$ngv" haproxy "$hav" wsgate "$wsv" \
    rustc "$rv" cores "$(nproc)" command "$CMDLINE"
  [[ -z ${FOREIGN:-} ]] || printf 'foreign\t%s\n' "$FOREIGN"
}

# Busy CPU ticks of the whole machine (user nice system irq softirq steal).
machine_busy_ticks() { awk '$1=="cpu" {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }

# CPU ticks used by this script's processes: reaped children (bash `times`) plus the
# live long-running ones (echo backends, proxies with their workers). The caller must
# run `times >"$WORK/times"` first, in the main shell: a subshell has its own counters.
our_ticks() {
  local reaped live=0 p t
  reaped=$(tail -1 "$WORK/times" | python3 -c '
import re, sys
tot = 0.0
for m, s in re.findall(r"(\d+)m([\d.]+)s", sys.stdin.read()):
    tot += int(m) * 60 + float(s)
print(int(tot * 100))')
  for p in "${ECHO_PIDS[@]}" $(for t in $ACTIVE; do pids_of "$t"; done); do
    t=$(cpu_ticks "$p" 2>/dev/null) && live=$((live + t))
  done
  echo $((reaped + live))
}

# "x%": share of the machine's CPU used by other processes since machine_busy_ticks=$1
# at SECONDS=$2. Large values mean the figures are disturbed.
foreign_load() {
  local busy ours
  busy=$(( $(machine_busy_ticks) - $1 ))
  ours=$(our_ticks)
  python3 -c "print(f'{max(0, ($busy - $ours)) * 100 / (max(1, $SECONDS - $2) * 100 * $(nproc)):.0f}%')"
}

# ------------------------------------------------------------------ tests

RESULTS=$WORK/results.jsonl
LOG_ERR=$WORK/load.err

record() { # target test round json [extra-json-fields]
  echo "{\"target\":\"$1\",\"test\":\"$2\",\"round\":$3${5:+,$5},\"result\":$4}" >>"$RESULTS"
}

run_load() { # target test round -- load args...
  local t=$1 test=$2 r=$3 out
  shift 4
  out=$(timeout 300 "$LOAD" --workers $LOAD_WORKERS "$@" 2>>"$LOG_ERR" | tail -1) || true
  [[ -n $out ]] || out='{"error":"load generator failed"}'
  record "$t" "$test" "$r" "$out"
  log "  $t $test: $(cut -c1-200 <<<"$out")"
}

# shellcheck disable=SC2046
run_round() { # round
  local r=$1 t size
  [[ $ONLY == http ]] || run_ws_round "$r"
  # Plain HTTP over keep-alive connections: a small GET and a 64 KiB response.
  local path name
  for path in / /64k; do
    name=http_small
    [[ $path == /64k ]] && name=http_64k
    for t in $ACTIVE; do
      run_load "$t" "$name" "$r" -- http $(urls_of "$t") $(pid_args "$t") \
        --conns 64 --path "$path" --duration "${DURATION}s" --warmup "${WARMUP}s"
    done
  done
}

# shellcheck disable=SC2046
run_ws_round() { # round
  local r=$1 t size
  for size in 64 4096 65536; do
    for t in $ACTIVE; do
      run_load "$t" "throughput_$size" "$r" -- throughput $(urls_of "$t") $(pid_args "$t") \
        --conns 64 --inflight 16 --size $size --duration "${DURATION}s" --warmup "${WARMUP}s"
    done
  done
  for t in $ACTIVE; do
    run_load "$t" latency "$r" -- latency $(urls_of "$t") $(pid_args "$t") \
      --conns 64 --rate 10000 --size 64 --duration "${DURATION}s" --warmup "${WARMUP}s"
  done
  for t in $ACTIVE; do
    run_load "$t" handshakes "$r" -- handshakes $(urls_of "$t") $(pid_args "$t") \
      --concurrency 32 --duration "${DURATION}s"
  done
}

tcp_inuse() { awk '$1=="TCP:"{for(i=2;i<NF;i++) if($i=="inuse") print $(i+1)}' /proc/net/sockstat; }

# Waits (up to 30 s) until the previous test's sockets are gone: the TCP socket count
# has not dropped for 1.5 s. Kernel memory deltas are machine-wide.
settle_sockets() {
  local last cur stable=0 deadline=$((SECONDS + 30))
  last=$(tcp_inuse)
  while ((stable < 3 && SECONDS < deadline)); do
    sleep 0.5
    cur=$(tcp_inuse)
    if ((cur < last)); then stable=0; else stable=$((stable + 1)); fi
    last=$cur
  done
}

# Idle connections through target $1 ($2 = count, $3 = hold seconds, $4 = test name).
# Samples memory before, 2 s after READY, and records all of it.
# shellcheck disable=SC2046
run_idle() {
  local t=$1 n=$2 hold=$3 name=${4:-idle} out=$WORK/idle-$1.out before during lp deadline
  local -a pids
  read -r -a pids <<<"$(pids_of "$t")"
  settle_sockets
  before=$(mem_json "${pids[@]}")
  "$LOAD" --workers $LOAD_WORKERS idle $(urls_of "$t") $(pid_args "$t") --conns "$n" \
    --hold "${hold}s" ${5:-} >"$out" 2>>"$LOG_ERR" &
  lp=$!
  STARTED+=($lp)
  deadline=$((SECONDS + 180))
  until grep -q '^READY' "$out" 2>/dev/null; do
    if ! kill -0 $lp 2>/dev/null || ((SECONDS > deadline)); then break; fi
    sleep 0.2
  done
  sleep 2
  read -r -a pids <<<"$(pids_of "$t")"
  during=$(mem_json "${pids[@]}")
  wait $lp || true
  local res
  res=$(grep '^{' "$out" | tail -1) || true
  [[ -n $res ]] || res='{"error":"idle load failed"}'
  record "$t" "$name" 1 "$res" "\"before\":$before,\"during\":$during"
  log "  $t $name: before $before during $during -> $(cut -c1-160 <<<"$res")"
}

# ------------------------------------------------------------------ modes

compare_main() {
  install_proxies
  build
  ECHO_PIDS=()
  start_echo
  ACTIVE=""
  local t
  for t in $TARGETS; do
    case $t in
      direct) ACTIVE+=" direct" ;;
      nginx) start_nginx && sanity nginx && ACTIVE+=" nginx" ;;
      haproxy) start_haproxy && sanity haproxy && ACTIVE+=" haproxy" ;;
      wsgate) start_wsgate 30s 30s && sanity wsgate && ACTIVE+=" wsgate" ;;
    esac || log "$t left out of this run"
  done
  log "targets:$ACTIVE; rounds $ROUNDS x ${DURATION}s; idle $IDLE_CONNS conns"
  local busy0 t0=$SECONDS
  busy0=$(machine_busy_ticks)
  # Memory first, on fresh processes, so earlier traffic does not hide growth.
  if [[ $ONLY != http ]]; then
    for t in $ACTIVE; do run_idle "$t" "$IDLE_CONNS" "$IDLE_HOLD"; done
  fi
  local r
  for ((r = 1; r <= ROUNDS; r++)); do
    log "round $r/$ROUNDS"
    run_round $r
  done
  times >"$WORK/times"
  FOREIGN=$(foreign_load "$busy0" "$t0") || FOREIGN=""
  log "other processes used $FOREIGN of the machine's CPU during the measurements"
  machine_info >"$WORK/meta.tsv"
  if [[ $ONLY == http ]]; then
    cp "$RESULTS" "$BENCH_DIR/results/compare-http-last.jsonl"
    cp "$WORK/meta.tsv" "$BENCH_DIR/results/compare-http-last.meta.tsv"
    return
  fi
  cp "$RESULTS" "$BENCH_DIR/results/compare-last.jsonl"
  cp "$WORK/meta.tsv" "$BENCH_DIR/results/compare-last.meta.tsv"
  python3 "$BENCH_DIR/report.py" compare "$RESULTS" "$WORK/meta.tsv" "$BENCH_DIR/RESULTS.md"
}

# permessage-deflate on both legs: compressed 4 KiB JSON-like echo through nginx and
# HAProxy (blind), wsgate "inspect" (inflates every message both ways) and wsgate
# "passthrough"; idle memory per connection with deflate negotiated, next to wsgate's
# uncompressed figure.
# shellcheck disable=SC2046
deflate_main() {
  install_proxies
  build
  ECHO_PIDS=()
  start_echo
  ACTIVE=""
  start_nginx && sanity nginx && ACTIVE+=" nginx" || log "nginx left out"
  start_haproxy && sanity haproxy && ACTIVE+=" haproxy" || log "haproxy left out"
  start_wsgate 30s 30s && sanity wsgate && ACTIVE+=" wsgate" || log "wsgate left out"
  start_wsgate_passthrough && sanity wsgate_passthrough && ACTIVE+=" wsgate_passthrough" \
    || log "wsgate passthrough left out"
  log "deflate targets:$ACTIVE; rounds $ROUNDS x ${DURATION}s; idle $IDLE_CONNS conns"
  local busy0 t0=$SECONDS t r
  busy0=$(machine_busy_ticks)
  # Memory first, on fresh processes: wsgate uncompressed, then everyone with deflate.
  run_idle wsgate "$IDLE_CONNS" "$IDLE_HOLD" idle_plain
  # A fresh wsgate for the deflate figure, so memory freed by the first run does not
  # hide growth.
  if [[ $ACTIVE == *" wsgate "* || $ACTIVE == *" wsgate" ]]; then
    kill -TERM "$WSGATE_PID" 2>/dev/null || true
    wait "$WSGATE_PID" 2>/dev/null || true
    start_wsgate 30s 30s && sanity wsgate || { log "wsgate did not restart"; ACTIVE=${ACTIVE/ wsgate / }; }
    settle_sockets
  fi
  for t in $ACTIVE; do run_idle "$t" "$IDLE_CONNS" "$IDLE_HOLD" idle_deflate --deflate; done
  for ((r = 1; r <= ROUNDS; r++)); do
    log "round $r/$ROUNDS"
    for t in $ACTIVE; do
      run_load "$t" deflate_4096 "$r" -- throughput $(urls_of "$t") $(pid_args "$t") --deflate \
        --conns 64 --inflight 16 --size 4096 --duration "${DURATION}s" --warmup "${WARMUP}s"
    done
  done
  times >"$WORK/times"
  FOREIGN=$(foreign_load "$busy0" "$t0") || FOREIGN=""
  log "other processes used $FOREIGN of the machine's CPU during the measurements"
  machine_info >"$WORK/meta.tsv"
  cp "$RESULTS" "$BENCH_DIR/results/deflate-last.jsonl"
  cp "$WORK/meta.tsv" "$BENCH_DIR/results/deflate-last.meta.tsv"
  python3 "$BENCH_DIR/report.py" deflate "$RESULTS" "$WORK/meta.tsv" "$BENCH_DIR/RESULTS.md"
}

scrape_heartbeats() { # -> "client_count backend_count" of wsgate_heartbeat_rtt_seconds
  local m
  m=$(curl -s --max-time 3 "http://127.0.0.1:$WSGATE_ADMIN/metrics" 2>/dev/null) || true
  awk '
    /^wsgate_heartbeat_rtt_seconds_count/ {
      if ($0 ~ /peer="client"/) c += $NF; else if ($0 ~ /peer="backend"/) b += $NF }
    END { printf "%d %d\n", c, b }' <<<"$m"
}

cpu_ticks() { # pid -> utime+stime in clock ticks
  awk '{s=$0; sub(/.*\) /,"",s); split(s,f," "); print f[12]+f[13]}' "/proc/$1/stat"
}

scale_main() {
  build
  [[ -x $WSGATE ]] || { log "scale test needs target/release/wsgate"; exit 1; }
  ECHO_PIDS=()
  start_echo
  start_wsgate "$CLIENT_INTERVAL" "$BACKEND_INTERVAL" || exit 1
  sanity wsgate || exit 1
  settle_sockets
  local n=$SCALE_CONNS hold=$SCALE_HOLD out=$WORK/scale.out lp before during late
  ACTIVE=wsgate
  local busy0 t0=$SECONDS
  busy0=$(machine_busy_ticks)
  sleep 1
  before=$(mem_json "$WSGATE_PID")
  log "scale: $n idle connections through wsgate, heartbeat client $CLIENT_INTERVAL backend $BACKEND_INTERVAL, hold ${hold}s"
  "$LOAD" --workers $LOAD_WORKERS idle --url "ws://127.0.0.1:$WSGATE_PORT/" --conns "$n" \
    --hold "${hold}s" --pids "$WSGATE_PID" >"$out" 2>>"$LOG_ERR" &
  lp=$!
  STARTED+=($lp)
  local deadline=$((SECONDS + 180)) t_ready
  until grep -q '^READY' "$out" 2>/dev/null; do
    if ! kill -0 $lp 2>/dev/null || ((SECONDS > deadline)); then break; fi
    sleep 0.2
  done
  t_ready=$SECONDS
  # Steady state: skip the first 5 s after READY (connect burst, first heartbeats).
  sleep 5
  during=$(mem_json "$WSGATE_PID")
  local c0 c1 hb0 hb1 w0 w1 win
  c0=$(cpu_ticks "$WSGATE_PID")
  hb0=$(scrape_heartbeats)
  w0=$(date +%s.%N)
  win=$((hold - 5 - (SECONDS - t_ready) - 3))
  ((win < 5)) && win=5
  sleep "$win"
  c1=$(cpu_ticks "$WSGATE_PID")
  hb1=$(scrape_heartbeats)
  w1=$(date +%s.%N)
  late=$(mem_json "$WSGATE_PID")
  wait $lp || true
  local res
  res=$(grep '^{' "$out" | tail -1) || true
  [[ -n $res ]] || res='{"error":"idle load failed"}'
  local extra
  extra=$(printf '"conns":%s,"client_interval":"%s","backend_interval":"%s","before":%s,"during":%s,"late":%s,"cpu_ticks":%s,"window_s":%s,"heartbeats_before":"%s","heartbeats_after":"%s"' \
    "$n" "$CLIENT_INTERVAL" "$BACKEND_INTERVAL" "$before" "$during" "$late" "$((c1 - c0))" \
    "$(python3 -c "print(round($w1 - $w0, 3))")" "$hb0" "$hb1")
  record wsgate scale 1 "$res" "$extra"
  log "scale: $(tail -1 "$RESULTS" | cut -c1-400)"
  times >"$WORK/times"
  FOREIGN=$(foreign_load "$busy0" "$t0") || FOREIGN=""
  machine_info >"$WORK/meta.tsv"
  cp "$RESULTS" "$BENCH_DIR/results/scale-last.jsonl"
  cp "$WORK/meta.tsv" "$BENCH_DIR/results/scale-last.meta.tsv"
  python3 "$BENCH_DIR/report.py" scale "$RESULTS" "$WORK/meta.tsv" "$BENCH_DIR/RESULTS.md"
}

case $MODE in
  compare) compare_main ;;
  scale) scale_main ;;
  deflate) deflate_main ;;
esac
