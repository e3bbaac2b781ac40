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
#   bench/compare.sh tls [--quick] [--rounds N] [--duration SECS] [--idle-conns N]
#                    (wss:// in front, TLS 1.3, one ECDSA P-256 certificate for all:
#                     full handshakes/s, CPU per handshake, memory per idle connection)
#   bench/compare.sh storm [--quick] [--rounds N] [--conns N] [--restart proxy|backends|both]
#                    [--tls]  (reconnect storm: N clients, the proxy or the backends
#                     restarted, every client reconnects at once with no backoff;
#                     --tls: over wss://, as in tls mode)
#   bench/compare.sh syscalls [--quick] [--rounds N] [--rate MSGS] [--window SECS] [--strace]
#                    (syscalls per relayed 64 B message, by kind: at a fixed rate
#                     and saturated)
#   tls, storm and syscalls also take --targets (direct is left out), --no-build, --keep.
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
case ${1:-} in
  scale | deflate | tls | storm | syscalls) MODE=$1; shift ;;
esac

TLS=0   # 1: every proxy listens with TLS (tls mode, storm --tls); backends stay ws://
QUICK=0 ROUNDS="" DURATION="" IDLE_CONNS="" TARGETS="" BUILD=1 KEEP=0 ONLY=
SCALE_CONNS="" SCALE_HOLD="" CLIENT_INTERVAL=1s BACKEND_INTERVAL=30s
STORM_RESTART=both SYS_RATE=10000 SYS_WINDOW="" SYS_TOOL=perf
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
    --restart) STORM_RESTART=$2; shift ;;
    --rate) SYS_RATE=$2; shift ;;
    --window) SYS_WINDOW=$2; shift ;;
    --strace) SYS_TOOL=strace ;;
    --tls) TLS=1 ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
  shift
done

if [[ $QUICK == 1 ]]; then
  : "${ROUNDS:=2}" "${DURATION:=2}" "${IDLE_CONNS:=2000}"
  WARMUP=0.5 IDLE_HOLD=3 STORM_TIMEOUT=60
  : "${SCALE_CONNS:=2000}" "${SCALE_HOLD:=20}" "${SYS_WINDOW:=3}"
else
  [[ $MODE == storm || $MODE == syscalls ]] && : "${ROUNDS:=3}"
  : "${ROUNDS:=5}" "${DURATION:=10}" "${IDLE_CONNS:=9000}"
  WARMUP=2 IDLE_HOLD=6 STORM_TIMEOUT=120
  : "${SCALE_CONNS:=9000}" "${SCALE_HOLD:=60}" "${SYS_WINDOW:=5}"
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
    sleep 0.02
  done
}

start_echo() {
  local port
  for port in $ECHO1 $ECHO2; do
    "$ECHO" --listen "127.0.0.1:$port" --workers $ECHO_WORKERS 2>>"$WORK/echo-$port.log" &
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
    listen 127.0.0.1:$NGINX_PORT$([[ $TLS == 1 ]] && echo " ssl") backlog=4096;
$([[ $TLS == 1 ]] && printf '    %s\n' "ssl_certificate $CERT;" "ssl_certificate_key $CERT_KEY;" \
  "ssl_protocols TLSv1.3;" "ssl_session_tickets off;" "ssl_session_cache off;")
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
  nginx -p "$d" -c "$d/nginx.conf" 2>>"$d/logs/stderr.log" &
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
$([[ $TLS == 1 ]] && echo "  tune.ssl.cachesize 0")
defaults
  mode http
  maxconn 9980
  timeout connect 5s
  timeout client 3600s
  timeout server 3600s
  timeout tunnel 1h
  timeout http-request 10s
frontend fe
  bind 127.0.0.1:$HAPROXY_PORT$([[ $TLS == 1 ]] && echo " ssl crt $CERT_BUNDLE ssl-min-ver TLSv1.3 no-tls-tickets")
  default_backend be
backend be
  balance url_param client_id
  hash-type consistent
  server b1 127.0.0.1:$ECHO1
  server b2 127.0.0.1:$ECHO2
EOF
  haproxy -db -f "$d/haproxy.cfg" >>"$d/stdout.log" 2>>"$d/stderr.log" &
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
  if [[ $TLS == 1 ]]; then
    printf '\n[server.tls]\ncert = "%s"\nkey = "%s"\n' "$CERT" "$CERT_KEY" >>"$1"
  fi
}

start_wsgate() { # client_interval backend_interval
  local d=$WORK/wsgate
  mkdir -p "$d"
  [[ -x $WSGATE ]] || { log "no $WSGATE: wsgate skipped"; return 1; }
  write_wsgate_config "$d/wsgate.toml" "${1:-30s}" "${2:-30s}"
  WSGATE_WORKERS=$WORKERS RUST_LOG=${RUST_LOG:-warn} "$WSGATE" run -c "$d/wsgate.toml" \
    >>"$d/stdout.log" 2>>"$d/stderr.log" &
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
    >>"$d/stdout.log" 2>>"$d/stderr.log" &
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

port_of() {
  case $1 in
    nginx) echo $NGINX_PORT ;;
    haproxy) echo $HAPROXY_PORT ;;
    wsgate) echo $WSGATE_PORT ;;
    wsgate_passthrough) echo $WSGATE_PT_PORT ;;
  esac
}

# Load generator arguments for a target: its URL(s), and the certificate under TLS
# (the backends, hence "direct", stay ws://).
urls_of() {
  if [[ $1 == direct ]]; then
    echo "--url ws://127.0.0.1:$ECHO1/ --url ws://127.0.0.1:$ECHO2/"
  elif [[ $TLS == 1 ]]; then
    echo "--url wss://127.0.0.1:$(port_of "$1")/ --ca $CA_CERT"
  else
    echo "--url ws://127.0.0.1:$(port_of "$1")/"
  fi
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

# Waits (up to $3 s) until the load generator $2 has printed READY into file $1.
wait_ready() { # out_file pid seconds
  local deadline=$((SECONDS + $3))
  until grep -q '^READY' "$1" 2>/dev/null; do
    if ! kill -0 "$2" 2>/dev/null || ((SECONDS > deadline)); then return 1; fi
    sleep 0.2
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
  local t=$1 n=$2 hold=$3 name=${4:-idle} out=$WORK/idle-$1.out before during lp
  local -a pids
  read -r -a pids <<<"$(pids_of "$t")"
  settle_sockets
  before=$(mem_json "${pids[@]}")
  "$LOAD" --workers $LOAD_WORKERS idle $(urls_of "$t") $(pid_args "$t") --conns "$n" \
    --hold "${hold}s" ${5:-} >"$out" 2>>"$LOG_ERR" &
  lp=$!
  STARTED+=($lp)
  wait_ready "$out" $lp 180 || true
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

start_target() {
  case $1 in
    direct) true ;;
    nginx) start_nginx ;;
    haproxy) start_haproxy ;;
    wsgate) start_wsgate 30s 30s ;;
  esac
}

# Installs and builds what is missing, starts the echo backends and the targets of $1
# (each must pass a one-echo sanity check); the usable ones end up in ACTIVE. Starts
# the count of other processes' CPU (see finish).
setup() { # targets
  install_proxies
  build
  ECHO_PIDS=()
  start_echo
  ACTIVE=""
  local t
  for t in $1; do
    { start_target "$t" && sanity "$t" && ACTIVE+=" $t"; } || log "$t left out of this run"
  done
  BUSY0=$(machine_busy_ticks) T0=$SECONDS
}

# Records the machine info and the share of CPU other processes used since setup,
# keeps the raw results as bench/results/$1-last.*, and has report.py write the
# section of RESULTS.md for report mode $2 (no report when $2 is empty).
finish() { # results_name [report_mode]
  times >"$WORK/times"
  FOREIGN=$(foreign_load "$BUSY0" "$T0") || FOREIGN=""
  log "other processes used $FOREIGN of the machine's CPU during the measurements"
  machine_info >"$WORK/meta.tsv"
  cp "$RESULTS" "$BENCH_DIR/results/$1-last.jsonl"
  cp "$WORK/meta.tsv" "$BENCH_DIR/results/$1-last.meta.tsv"
  [[ -z ${2:-} ]] || python3 "$BENCH_DIR/report.py" "$2" "$RESULTS" "$WORK/meta.tsv" "$BENCH_DIR/RESULTS.md"
}

compare_main() {
  setup "$TARGETS"
  log "targets:$ACTIVE; rounds $ROUNDS x ${DURATION}s; idle $IDLE_CONNS conns"
  local t
  # Memory first, on fresh processes, so earlier traffic does not hide growth.
  if [[ $ONLY != http ]]; then
    for t in $ACTIVE; do run_idle "$t" "$IDLE_CONNS" "$IDLE_HOLD"; done
  fi
  local r
  for ((r = 1; r <= ROUNDS; r++)); do
    log "round $r/$ROUNDS"
    run_round $r
  done
  if [[ $ONLY == http ]]; then finish compare-http; else finish compare compare; fi
}

# permessage-deflate on both legs: compressed 4 KiB JSON-like echo through nginx and
# HAProxy (blind), wsgate "inspect" (inflates every message both ways) and wsgate
# "passthrough"; idle memory per connection with deflate negotiated, next to wsgate's
# uncompressed figure.
# shellcheck disable=SC2046
deflate_main() {
  setup "nginx haproxy wsgate"
  start_wsgate_passthrough && sanity wsgate_passthrough && ACTIVE+=" wsgate_passthrough" \
    || log "wsgate passthrough left out"
  log "deflate targets:$ACTIVE; rounds $ROUNDS x ${DURATION}s; idle $IDLE_CONNS conns"
  local t r
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
  finish deflate deflate
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
  BUSY0=$(machine_busy_ticks) T0=$SECONDS
  sleep 1
  before=$(mem_json "$WSGATE_PID")
  log "scale: $n idle connections through wsgate, heartbeat client $CLIENT_INTERVAL backend $BACKEND_INTERVAL, hold ${hold}s"
  "$LOAD" --workers $LOAD_WORKERS idle --url "ws://127.0.0.1:$WSGATE_PORT/" --conns "$n" \
    --hold "${hold}s" --pids "$WSGATE_PID" >"$out" 2>>"$LOG_ERR" &
  lp=$!
  STARTED+=($lp)
  local t_ready
  wait_ready "$out" $lp 180 || true
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
  finish scale scale
}

# ------------------------------------------------------------------ tls

# One ECDSA P-256 certificate for 127.0.0.1, made for this run by a throw-away CA
# (also P-256), used by every proxy: CERT + CERT_KEY (PKCS#8) for nginx and wsgate,
# CERT_BUNDLE (both) for HAProxy. The load generator trusts CA_CERT.
make_cert() {
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  CA_CERT=$WORK/ca.pem CERT=$WORK/cert.pem CERT_KEY=$WORK/key.pem CERT_BUNDLE=$WORK/bundle.pem
  printf '%s\n' subjectAltName=IP:127.0.0.1 basicConstraints=CA:FALSE \
    extendedKeyUsage=serverAuth >"$WORK/leaf.ext"
  {
    openssl req -x509 "${ec[@]}" -days 2 -keyout "$WORK/ca.key" -out "$CA_CERT" \
      -subj /CN=wsgate-bench-ca &&
      openssl req "${ec[@]}" -keyout "$CERT_KEY" -out "$WORK/leaf.csr" -subj /CN=127.0.0.1 &&
      openssl x509 -req -in "$WORK/leaf.csr" -CA "$CA_CERT" -CAkey "$WORK/ca.key" \
        -CAcreateserial -days 2 -extfile "$WORK/leaf.ext" -out "$CERT"
  } >"$WORK/openssl.log" 2>&1 || { cat "$WORK/openssl.log" >&2; exit 1; }
  cat "$CERT" "$CERT_KEY" >"$CERT_BUNDLE"
}

# wss:// in front of every proxy (backends stay ws://): idle memory per TLS connection
# first, on fresh processes, then interleaved rounds of full TLS handshakes.
# shellcheck disable=SC2046
tls_main() {
  TLS=1
  make_cert
  setup "${TARGETS//direct/}"
  log "tls targets:$ACTIVE; rounds $ROUNDS x ${DURATION}s; idle $IDLE_CONNS conns"
  local t r
  for t in $ACTIVE; do run_idle "$t" "$IDLE_CONNS" "$IDLE_HOLD" idle_tls; done
  for ((r = 1; r <= ROUNDS; r++)); do
    log "round $r/$ROUNDS"
    for t in $ACTIVE; do
      run_load "$t" handshakes_tls "$r" -- handshakes $(urls_of "$t") $(pid_args "$t") \
        --concurrency 32 --duration "${DURATION}s"
    done
  done
  finish tls tls
}

# ------------------------------------------------------------------ storm

main_pid_of() {
  case $1 in
    nginx) echo "$NGINX_PID" ;;
    haproxy) echo "$HAPROXY_PID" ;;
    wsgate) echo "$WSGATE_PID" ;;
  esac
}

# Stops the target's process by PID and starts it again as soon as nothing listens
# on its port any more (what a restart in place does); the old process may still be
# finishing (wsgate drains: its listeners close first, then 1001 to every client and
# the wait for the close handshakes; its admin port is shared with SO_REUSEPORT, so a
# new process starts beside it). SIGTERM everywhere: nginx does a fast shutdown and
# HAProxy a hard stop, both closing every connection (their graceful stops, SIGQUIT
# and SIGUSR1, keep WebSocket tunnels open to the old process for hours). The old
# process is reaped by reap_old (killed if still there after 30 s).
restart_proxy() { # target
  local pid port deadline=$((SECONDS + 30))
  pid=$(main_pid_of "$1")
  port=$(port_of "$1")
  kill -TERM "$pid"
  while [[ -n $(ss -Hltn "sport = :$port" 2>/dev/null) ]] && ((SECONDS < deadline)); do
    sleep 0.005
  done
  EXITED_AT=$(date +%s.%N)
  OLD_PIDS+=("$pid")
  start_target "$1"
}

OLD_PIDS=()
reap_old() {
  local p
  for p in "${OLD_PIDS[@]}"; do stop_wait "$p" 30; done
  OLD_PIDS=()
}

# Waits up to $2 s for our child $1 to exit (a zombie has exited: it stays ours, and
# its PID unused, until `wait`), kills it if it has not, and reaps it.
stop_wait() { # pid seconds
  local deadline=$((SECONDS + $2))
  while [[ $(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) == [RSDT] ]] &&
    ((SECONDS < deadline)); do
    sleep 0.01
  done
  [[ $(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) == Z ]] || kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# Kills both echo backends by PID (their sockets close with the process) and starts
# them again at once; the proxy stays up.
restart_backends() {
  local p
  for p in "${ECHO_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${ECHO_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  ECHO_PIDS=()
  start_echo
}

# One storm: SCALE_CONNS clients through target $1, then restart_$2, then wait until
# every client is back (the load generator's own time limit bounds it).
# shellcheck disable=SC2046
run_storm() { # target proxy|backends round
  local t=$1 what=$2 r=$3 out=$WORK/storm-$1-$2-$3.out lp t_restart t_up res
  # A fresh proxy for every storm: what an earlier storm left (nginx's servers
  # marked failed after a backend restart, say) must not shape this one.
  restart_proxy "$t" && sanity "$t" || log "$t: the fresh proxy fails its sanity check"
  settle_sockets
  "$LOAD" --workers $LOAD_WORKERS storm $(urls_of "$t") --conns "$SCALE_CONNS" \
    --timeout "${STORM_TIMEOUT}s" >"$out" 2>>"$LOG_ERR" &
  lp=$!
  STARTED+=($lp)
  if wait_ready "$out" $lp 180; then
    sleep 1
    t_restart=$(date +%s.%N) EXITED_AT=0
    "restart_$what" "$t" || log "$t did not come back after the $what restart"
    t_up=$(date +%s.%N)
  else
    log "$t: the storm clients did not connect"
    t_restart=0 t_up=0 EXITED_AT=0
  fi
  wait $lp || true
  reap_old
  res=$(grep '^{' "$out" | tail -1) || true
  [[ -n $res ]] || res='{"error":"storm load failed"}'
  record "$t" "storm_$what" "$r" "$res" \
    "\"restart_unix\":$t_restart,\"exit_unix\":$EXITED_AT,\"up_unix\":$t_up"
  log "  $t storm_$what: $(cut -c1-300 <<<"$res")"
}

storm_main() {
  local whats t r what
  case $STORM_RESTART in
    proxy | backends) whats=$STORM_RESTART ;;
    both) whats="proxy backends" ;;
    *) log "--restart: proxy, backends or both"; exit 2 ;;
  esac
  [[ $TLS == 0 ]] || make_cert
  setup "${TARGETS//direct/}"
  log "storm targets:$ACTIVE; $SCALE_CONNS clients; restart: $whats; rounds $ROUNDS; TLS $TLS"
  for ((r = 1; r <= ROUNDS; r++)); do
    log "round $r/$ROUNDS"
    for what in $whats; do
      for t in $ACTIVE; do run_storm "$t" "$what" "$r"; done
    done
  done
  if [[ $TLS == 1 ]]; then finish storm-tls storm; else finish storm storm; fi
}

# ------------------------------------------------------------------ syscalls

# Syscalls counted one by one (those of an event loop relaying data, and a few of
# memory and timers); perf also counts all syscalls (raw_syscalls:sys_enter), and
# report.py shows the rest as "other".
SYSCALLS="read readv recvfrom recvmsg recvmmsg write writev sendto sendmsg sendmmsg
  epoll_wait epoll_pwait epoll_pwait2 epoll_ctl futex sched_yield io_uring_enter
  accept4 close shutdown madvise mmap munmap mprotect brk getrandom setsockopt
  getsockopt getsockname getpeername clock_nanosleep nanosleep clock_gettime
  gettimeofday timer_settime setitimer rt_sigprocmask getpid"

# Every thread of the target's processes.
tids_of() { local p; for p in $(pids_of "$1"); do ls "/proc/$p/task"; done; }

# Counts the syscalls of target $1's processes (all threads) for $2 seconds; prints
# one JSON object {"syscall": count, ..., "total": n}.
count_syscalls() { # target seconds
  local f=$WORK/syscalls.out
  if [[ $SYS_TOOL == strace ]]; then
    local -a args=()
    local tid
    for tid in $(tids_of "$1"); do args+=(-p "$tid"); done
    timeout -s INT "$2" strace -c -f -o "$f" "${args[@]}" 2>/dev/null || true
  else
    local ev=raw_syscalls:sys_enter s
    for s in $SYSCALLS; do
      [[ -d /sys/kernel/tracing/events/syscalls/sys_enter_$s ]] && ev+=",syscalls:sys_enter_$s"
    done
    perf stat -x, -o "$f" -e "$ev" -p "$(pids_of "$1" | xargs | tr ' ' ',')" \
      -- sleep "$2" 2>/dev/null || true
  fi
  python3 "$BENCH_DIR/report.py" "parse-$SYS_TOOL" "$f"
}

# 64 B echo through target $1 while SYS_WINDOW seconds of it are counted, starting 2 s
# in: "rate" = the latency test's load (SYS_RATE msg/s in all, 64 connections, each
# message alone), "saturated" = the 64 B throughput test's (64 connections, 16 in
# flight each: as fast as the machine goes, so reads and writes can batch).
# shellcheck disable=SC2046
run_syscalls() { # target round rate|saturated
  local t=$1 r=$2 kind=$3 out=$WORK/sys-$1-$2-$3.out lp counts res
  local -a load=(latency --rate "$SYS_RATE" --warmup 1s)
  [[ $kind == saturated ]] && load=(throughput --inflight 16 --warmup 2s)
  "$LOAD" --workers $LOAD_WORKERS "${load[@]}" $(urls_of "$t") --conns 64 --size 64 \
    --duration "$((SYS_WINDOW + 5))s" >"$out" 2>>"$LOG_ERR" &
  lp=$!
  STARTED+=($lp)
  sleep 2
  counts=$(count_syscalls "$t" "$SYS_WINDOW") || counts='{}'
  wait $lp || true
  res=$(grep '^{' "$out" | tail -1) || true
  [[ -n $res ]] || res='{"error":"load failed"}'
  record "$t" "syscalls_$kind" "$r" "$res" \
    "\"syscalls\":${counts:-"{}"},\"window_s\":$SYS_WINDOW,\"tool\":\"$SYS_TOOL\""
  log "  $t syscalls_$kind: $(cut -c1-300 <<<"$counts")"
}

syscalls_main() {
  local t r
  if [[ $SYS_TOOL == strace ]] && ! command -v strace >/dev/null; then
    apt-get install -y -q strace >/dev/null
  fi
  if [[ $SYS_TOOL == perf ]] && ! command -v perf >/dev/null; then
    log "perf is missing (apt-get install linux-perf), or use --strace"
    exit 1
  fi
  setup "${TARGETS//direct/}"
  log "syscalls targets:$ACTIVE; $SYS_RATE msg/s, ${SYS_WINDOW}s counted with $SYS_TOOL; rounds $ROUNDS"
  for ((r = 1; r <= ROUNDS; r++)); do
    log "round $r/$ROUNDS"
    for t in $ACTIVE; do run_syscalls "$t" "$r" rate; done
    for t in $ACTIVE; do run_syscalls "$t" "$r" saturated; done
  done
  finish "syscalls-$SYS_TOOL" syscalls
}

case $MODE in
  compare) compare_main ;;
  scale) scale_main ;;
  deflate) deflate_main ;;
  tls) tls_main ;;
  storm) storm_main ;;
  syscalls) syscalls_main ;;
esac
