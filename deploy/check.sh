#!/usr/bin/env bash
# Checks everything under deploy/ with the real tools:
#   promtool check config / check rules / test rules   (deploy/prometheus)
#   promtool check rules on every Grafana dashboard query (PromQL parse)
#   systemd-analyze verify + security --offline          (deploy/systemd)
#   kubernetes-validate --strict against API 1.30 and latest (deploy/kubernetes)
#   wsgate check -c on the ConfigMap's gateway.toml      (when a wsgate binary is built)
#   BuildKit's parser on the Dockerfile                  (no Docker engine needed)
#   deploy/check_files.py: SPEC metric names, shutdown budget, dashboard structure
#
# Usage: deploy/check.sh   (from the repo root; works from anywhere)
# Installs what is missing: Debian packages with apt-get (root or sudo), Python
# packages into a cached virtualenv (${XDG_CACHE_HOME:-~/.cache}/wsgate-deploy-check).
# Exits non-zero on the first failed check. Takes well under 2 minutes once the
# packages are in place; a fresh machine spends most of that installing them.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

step() { printf '\n== %s\n' "$*"; }
note() { printf '   %s\n' "$*"; }

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

# apt-get install, running `apt-get update` only when the first attempt fails (a
# fresh machine has empty or stale package lists; a warm one needs no update).
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if ! $SUDO apt-get install -y -q --no-install-recommends "$@" >"$WORK/apt.log" 2>&1; then
        note "apt-get install $* failed; running apt-get update and retrying"
        $SUDO apt-get update -q >"$WORK/apt.log" 2>&1 || { cat "$WORK/apt.log"; return 1; }
        $SUDO apt-get install -y -q --no-install-recommends "$@" >"$WORK/apt.log" 2>&1 \
            || { cat "$WORK/apt.log"; return 1; }
    fi
}

step "tools"
# promtool ships in Debian's prometheus package. (On a host running systemd, the
# package also enables a prometheus service on :9090, the port wsgate's admin
# listener defaults to; containers and CI have no init to start it.)
if ! command -v promtool >/dev/null 2>&1; then
    note "installing prometheus (for promtool)"
    apt_install prometheus
fi
note "$(promtool --version 2>&1 | head -n1)"

if ! command -v systemd-analyze >/dev/null 2>&1; then
    note "installing systemd (for systemd-analyze)"
    apt_install systemd || note "could not install systemd"
fi

# Python: a virtualenv with PyYAML, kubernetes-validate (offline Kubernetes JSON
# schemas) and dockerfile (BuildKit's Dockerfile parser), cached across runs.
PY_BASE=$(command -v python3 || true)
if [ -z "$PY_BASE" ]; then
    apt_install python3 python3-venv
    PY_BASE=$(command -v python3)
fi
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/wsgate-deploy-check"
PY_PACKAGES=(pyyaml kubernetes-validate dockerfile)
if ! "$VENV/bin/python" -c 'import yaml, kubernetes_validate, dockerfile' >/dev/null 2>&1; then
    note "creating $VENV with ${PY_PACKAGES[*]}"
    rm -rf "$VENV"
    if ! "$PY_BASE" -m venv "$VENV" >/dev/null 2>&1; then
        # Debian's python3 has no venv module without python3-venv.
        apt_install python3-venv
        rm -rf "$VENV"
        "$PY_BASE" -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PY_PACKAGES[@]}"
fi
PY="$VENV/bin/python"
note "$("$PY" --version), kubernetes-validate $("$PY" -m pip show kubernetes-validate 2>/dev/null | sed -n 's/^Version: //p')"

step "prometheus: promtool check config deploy/prometheus/prometheus.yml"
promtool check config deploy/prometheus/prometheus.yml

step "prometheus: promtool check rules deploy/prometheus/alerts.yml"
promtool check rules deploy/prometheus/alerts.yml

step "prometheus: promtool test rules deploy/prometheus/alerts_test.yml"
promtool test rules deploy/prometheus/alerts_test.yml

step "static checks (deploy/check_files.py)"
"$PY" deploy/check_files.py "$ROOT" "$WORK"

step "grafana: every dashboard query parses as PromQL (promtool check rules)"
promtool check rules "$WORK/dashboard_queries.rules.yml"

step "kubernetes: kubernetes-validate --strict (API 1.30, the minimum for preStop sleep, and latest)"
K8S_FILES=(deploy/kubernetes/configmap.yaml deploy/kubernetes/secret.yaml deploy/kubernetes/deployment.yaml
           deploy/kubernetes/service.yaml deploy/kubernetes/pdb.yaml)
"$VENV/bin/kubernetes-validate" --strict -k 1.30.0 "${K8S_FILES[@]}"
"$VENV/bin/kubernetes-validate" --strict "${K8S_FILES[@]}"

step "kubernetes: wsgate check -c on the ConfigMap's gateway.toml"
# The most recently built of the usual places (a stale release build must not
# judge a config written for newer code).
WSGATE_BIN=""
for b in target/release/wsgate target/debug/wsgate /usr/local/bin/wsgate; do
    if [ -x "$b" ] && { [ -z "$WSGATE_BIN" ] || [ "$b" -nt "$WSGATE_BIN" ]; }; then WSGATE_BIN=$b; fi
done
if [ -n "$WSGATE_BIN" ] && "$WSGATE_BIN" check -c "$WORK/gateway.toml"; then
    note "$WSGATE_BIN accepts it"
elif [ -n "$WSGATE_BIN" ] && ! "$WSGATE_BIN" --help 2>/dev/null | grep -qw check; then
    note "SKIP: $WSGATE_BIN has no 'check' command yet"
elif [ -n "$WSGATE_BIN" ]; then
    echo "FAIL: $WSGATE_BIN check rejects deploy/kubernetes/configmap.yaml's gateway.toml" >&2
    exit 1
else
    note "SKIP: no wsgate binary built (cargo build -p wsgate first to include this check)"
fi

step "systemd: systemd-analyze verify deploy/systemd/wsgate.service"
if ! command -v systemd-analyze >/dev/null 2>&1; then
    note "SKIP: systemd-analyze is not available on this machine"
else
    # verify insists that ExecStart's binary exists. Where wsgate is not installed,
    # verify a copy whose /usr/local/bin/wsgate points at a stub executable: every
    # directive is still checked, only the install path is not.
    mkdir -p "$WORK/systemd"
    unit="$WORK/systemd/wsgate.service"
    if [ -x /usr/local/bin/wsgate ]; then
        cp deploy/systemd/wsgate.service "$unit"
    else
        printf '#!/bin/sh\nexit 0\n' >"$WORK/systemd/wsgate-stub"
        chmod +x "$WORK/systemd/wsgate-stub"
        sed "s#/usr/local/bin/wsgate#$WORK/systemd/wsgate-stub#g" deploy/systemd/wsgate.service >"$unit"
        note "(/usr/local/bin/wsgate not installed: ExecStart points at a stub for this check)"
    fi
    # A trivial unit first: if even that fails, this machine (a container without
    # the systemd tree, say) cannot run verify at all, which is not the unit's fault.
    printf '[Service]\nExecStart=/bin/true\n' >"$WORK/systemd/wsgate-probe.service"
    if ! systemd-analyze verify "$WORK/systemd/wsgate-probe.service" >"$WORK/probe.log" 2>&1; then
        note "SKIP: systemd-analyze verify cannot run here (a trivial unit fails too):"
        sed 's/^/     /' "$WORK/probe.log"
    else
        # verify exits 0 on some findings (warnings), so any output is a failure too.
        if ! systemd-analyze verify "$unit" >"$WORK/verify.log" 2>&1 || [ -s "$WORK/verify.log" ]; then
            sed 's/^/   /' "$WORK/verify.log"
            echo "FAIL: systemd-analyze verify reported problems (above)" >&2
            exit 1
        fi
        note "verify: no findings"
        if systemd-analyze security --offline=true "$unit" >"$WORK/security.log" 2>&1; then
            note "$(grep -o 'Overall exposure level.*' "$WORK/security.log")"
        fi
    fi
fi

step "docker"
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    note "a Docker engine is available; build with: docker build -f deploy/docker/Dockerfile -t wsgate ."
    note "(not built here: a release build takes far longer than this check's budget)"
else
    note "SKIP docker build: no Docker engine on this machine. The Dockerfile was parsed and"
    note "checked statically above; build with: docker build -f deploy/docker/Dockerfile -t wsgate ."
fi

printf '\ndeploy checks passed\n'
