#!/usr/bin/env python3
"""Static checks of the files under deploy/, run by deploy/check.sh.

What promtool, systemd-analyze and kubernetes-validate cannot see: that every
wsgate metric the alerts and the dashboard query is one SPEC.md defines, that the
dashboard is well-formed Grafana JSON whose queries parse as PromQL, that the
Kubernetes shutdown budget covers shutdown_grace, and that the Dockerfile keeps
the promises its comments make. Each check prints one line; any failure exits 1.

Usage: check_files.py REPO_ROOT WORK_DIR
  WORK_DIR receives generated files (the dashboard's queries as a rules file for
  `promtool check rules`, the ConfigMap's gateway.toml for `wsgate check`).
"""

import json
import os
import re
import sys
import tomllib

import yaml

# SPEC.md, "Metrics": the contract. Histograms also expose _bucket/_sum/_count.
SPEC_COUNTERS_GAUGES = {
    "wsgate_connections_active",
    "wsgate_connections_total",
    "wsgate_messages_total",
    "wsgate_bytes_total",
    "wsgate_closes_total",
    "wsgate_heartbeat_timeouts_total",
    "wsgate_backend_up",
    "wsgate_rate_limited_total",
    "wsgate_config_reloads_total",
}
SPEC_HISTOGRAMS = {
    "wsgate_handshake_duration_seconds",
    "wsgate_connection_duration_seconds",
    "wsgate_heartbeat_rtt_seconds",
    "wsgate_health_check_duration_seconds",
}
SPEC_METRICS = SPEC_COUNTERS_GAUGES | {
    h + suffix for h in SPEC_HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")
}
METRIC_RE = re.compile(r"\bwsgate_[a-z0-9_]+")

# Panels the dashboard must keep (issue 7): title -> a metric its queries must use.
REQUIRED_PANELS = {
    "Active connections by backend": "wsgate_connections_active",
    "Messages /s by direction": "wsgate_messages_total",
    "Bytes /s by direction": "wsgate_bytes_total",
    "Closes /s by code and initiator": "wsgate_closes_total",
    "Heartbeat RTT": "wsgate_heartbeat_rtt_seconds_bucket",
    "Backend health by check": "wsgate_backend_up",
    "Handshake latency": "wsgate_handshake_duration_seconds_bucket",
    "Connection results /s": "wsgate_connections_total",
    "Rate limited /s": "wsgate_rate_limited_total",
    "Config reloads": "wsgate_config_reloads_total",
}

failures = []


def ok(msg):
    print(f"  ok   {msg}")


def fail(msg):
    print(f"  FAIL {msg}")
    failures.append(msg)


def check(cond, msg):
    (ok if cond else fail)(msg)


def duration_seconds(text):
    """A wsgate duration ("250ms", "30s", "5m", "1h") in seconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def unknown_metrics(exprs):
    return sorted({m for e in exprs for m in METRIC_RE.findall(e)} - SPEC_METRICS)


def check_alerts(root):
    print("alert rules (deploy/prometheus/alerts.yml)")
    with open(os.path.join(root, "deploy/prometheus/alerts.yml")) as f:
        doc = yaml.safe_load(f)
    rules = [r for g in doc["groups"] for r in g["rules"]]
    alerts = [r for r in rules if "alert" in r]
    bad = unknown_metrics(r["expr"] for r in rules)
    check(not bad, f"{len(rules)} rules use only SPEC metric names" + (f" (unknown: {bad})" if bad else ""))
    for r in alerts:
        missing = [k for k in ("summary", "description") if k not in r.get("annotations", {})]
        sev = r.get("labels", {}).get("severity")
        if missing or sev not in ("critical", "warning", "info"):
            fail(f"{r['alert']}: severity={sev!r}, missing annotations {missing}")
    ok(f"{len(alerts)} alerts carry a severity label and summary/description annotations")
    needed = {
        "no backend up": 'wsgate_backend_up{check="ws"}',
        "heartbeat timeouts": "wsgate_heartbeat_timeouts_total",
        "1014 closes": 'wsgate_closes_total{code="1014"}',
        "rate limiting": "wsgate_rate_limited_total",
        "connections near max": "wsgate_connections_active",
        "reload failed": 'wsgate_config_reloads_total{result="error"}',
        "handshake failures": 'wsgate_connections_total{result!="upgraded"}',
    }
    for what, needle in needed.items():
        check(any(needle in r["expr"] for r in alerts), f"an alert covers {what} ({needle})")


def dashboard_exprs(dash):
    """Every PromQL string in the dashboard: panel targets and query variables."""
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["refId"], t["expr"]))
    for v in dash["templating"]["list"]:
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"label_values\((.*),\s*\w+\)", q or "")
        if m:  # label_values(SELECTOR, label) is Grafana's; its selector is PromQL
            out.append((f"variable {v['name']}", "query", m.group(1)))
    return out


def grafana_to_promql(expr):
    """Grafana's template variables replaced by values PromQL accepts."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def check_dashboard(root, work):
    print("grafana dashboard (deploy/grafana/wsgate-dashboard.json)")
    path = os.path.join(root, "deploy/grafana/wsgate-dashboard.json")
    with open(path) as f:
        dash = json.load(f)  # raises on invalid JSON, which fails the run
    ok("valid JSON")
    inputs = {i["name"]: i for i in dash.get("__inputs", [])}
    check(inputs.get("DS_PROMETHEUS", {}).get("pluginId") == "prometheus",
          "declares the DS_PROMETHEUS datasource input")
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dash["panels"]]
    check(len(ids) == len(set(ids)), f"{len(ids)} panel ids are unique")
    ds_wrong = [p["title"] for p in panels
                if p.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}"
                or any(t.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}" for t in p["targets"])]
    check(not ds_wrong, "every panel and query uses ${DS_PROMETHEUS}" + (f" (not: {ds_wrong})" if ds_wrong else ""))
    # Panels must not overlap on the 24-column grid.
    cells = {}
    overlaps = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        if g["x"] + g["w"] > 24:
            overlaps.add(p["title"])
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    overlaps.add(f"{cells[(x, y)]} / {p['title']}")
                cells[(x, y)] = p["title"]
    check(not overlaps, "panels fit the grid without overlapping" + (f" ({sorted(overlaps)})" if overlaps else ""))
    by_title = {p["title"]: p for p in panels}
    for title, metric in REQUIRED_PANELS.items():
        p = by_title.get(title)
        check(p is not None and any(metric in t["expr"] for t in p["targets"]),
              f"panel {title!r} queries {metric}")
    exprs = dashboard_exprs(dash)
    bad = unknown_metrics(e for _, _, e in exprs)
    check(not bad, f"{len(exprs)} queries use only SPEC metric names" + (f" (unknown: {bad})" if bad else ""))
    # One recording rule per query, so `promtool check rules` (run by check.sh)
    # parses every dashboard query with Prometheus's own PromQL parser.
    rules = [{"record": f"wsgate_dashboard_check:q{i}", "expr": grafana_to_promql(e)}
             for i, (_, _, e) in enumerate(exprs)]
    out = os.path.join(work, "dashboard_queries.rules.yml")
    with open(out, "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, f, sort_keys=False)
    ok(f"wrote {len(rules)} queries to {out} for promtool")


def load_k8s(root):
    docs = {}
    kdir = os.path.join(root, "deploy/kubernetes")
    for name in sorted(os.listdir(kdir)):
        if name.endswith((".yaml", ".yml")):
            with open(os.path.join(kdir, name)) as f:
                docs[name] = [d for d in yaml.safe_load_all(f) if d is not None]
    return docs


def dep_of(objs):
    return objs[("Deployment", "wsgate")]


def check_kubernetes(root, work):
    print("kubernetes manifests (deploy/kubernetes/)")
    docs = load_k8s(root)
    ok(f"YAML parses: {', '.join(f'{n} ({len(d)} doc)' for n, d in docs.items())}")
    kust = docs.pop("kustomization.yaml")[0]
    check(sorted(kust["resources"]) == sorted(docs), "kustomization.yaml lists every manifest")
    objs = {(d["kind"], d["metadata"]["name"]): d for ds in docs.values() for d in ds}
    cm = objs[("ConfigMap", "wsgate-config")]
    toml_text = cm["data"]["gateway.toml"]
    cfg = tomllib.loads(toml_text)
    # `wsgate check` reads the files the config names: point token_file at a
    # copy of the Secret's token, as the pod would see it.
    token_file = cfg.get("admin", {}).get("token_file", "")
    if token_file:
        secret = objs[("Secret", "wsgate-admin")]
        local = os.path.join(work, "admin-token")
        with open(local, "w") as f:
            f.write(secret["stringData"]["token"] + "\n")
        toml_text = toml_text.replace(f'token_file = "{token_file}"', f'token_file = "{local}"')
        mounts = {m["name"]: m["mountPath"] for m in
                  dep_of(objs)["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
        check(os.path.dirname(token_file) == mounts.get("admin-token"),
              f"admin.token_file {token_file} is in the Secret's mount {mounts.get('admin-token')}")
    with open(os.path.join(work, "gateway.toml"), "w") as f:
        f.write(toml_text)
    check(cfg.get("admin", {}).get("listen") == "0.0.0.0:9090", "ConfigMap: admin.listen = 0.0.0.0:9090")
    check(cfg["server"]["listen"] == "0.0.0.0:8080", "ConfigMap: server.listen = 0.0.0.0:8080")
    check(len(cfg.get("backends", [])) >= 1, "ConfigMap: at least one [[backends]]")

    dep = objs[("Deployment", "wsgate")]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(ports == {"ws": 8080, "admin": 9090}, f"container ports ws=8080 admin=9090 ({ports})")
    check(c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}, "readiness probe: GET /readyz on admin")
    check(c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}, "liveness probe: GET /healthz on admin")
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = duration_seconds(cfg["server"].get("shutdown_grace", "30s"))
    tgps = pod["terminationGracePeriodSeconds"]
    check(tgps >= pre_stop + grace + 5,
          f"terminationGracePeriodSeconds {tgps} >= preStop {pre_stop} + shutdown_grace {grace:g} + 5 slack")
    sc, psc = c["securityContext"], pod["securityContext"]
    check(psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) != 0, "pod runs as non-root")
    check(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
          and sc.get("capabilities", {}).get("drop") == ["ALL"],
          "container: read-only root fs, no privilege escalation, all capabilities dropped")
    mount = next(m for m in c["volumeMounts"] if m["name"] == "config")
    check(mount["mountPath"] == "/etc/wsgate" and "subPath" not in mount and "/etc/wsgate/gateway.toml" in c["args"],
          "ConfigMap mounted as a directory at /etc/wsgate (no subPath: edits propagate)")
    svc = objs[("Service", "wsgate")]
    check([(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(80, "ws")], "Service wsgate: 80 -> ws (8080)")
    adm = objs[("Service", "wsgate-admin")]
    check([p["targetPort"] for p in adm["spec"]["ports"]] == ["admin"], "Service wsgate-admin exposes only the admin port")
    return grace


def check_systemd(root, grace):
    print("systemd unit (deploy/systemd/wsgate.service)")
    with open(os.path.join(root, "deploy/systemd/wsgate.service")) as f:
        unit = f.read()
    kv = {}
    for line in unit.splitlines():
        m = re.match(r"^(\w+)=(.*)$", line)
        if m:
            kv.setdefault(m.group(1), []).append(m.group(2))
    stop = duration_seconds(kv["TimeoutStopSec"][-1] + ("" if kv["TimeoutStopSec"][-1][-1].isalpha() else "s"))
    check(stop > grace, f"TimeoutStopSec {stop:g}s > shutdown_grace {grace:g}s")
    check(kv["ExecStart"] == ["/usr/local/bin/wsgate run -c /etc/wsgate/gateway.toml"], "ExecStart runs the config file")
    check(kv["ExecReload"] == ["/bin/kill -HUP $MAINPID"], "ExecReload sends SIGHUP")
    check(kv.get("LimitNOFILE") == ["1048576"], "LimitNOFILE=1048576")


def check_dockerfile(root):
    print("Dockerfile (deploy/docker/Dockerfile; read, not built)")
    import dockerfile  # BuildKit's own parser, via the `dockerfile` package

    cmds = dockerfile.parse_file(os.path.join(root, "deploy/docker/Dockerfile"))
    ok(f"parses with the BuildKit parser: {len(cmds)} instructions")
    froms = [c for c in cmds if c.cmd == "FROM"]
    check(len(froms) >= 2, f"multi-stage: {len(froms)} stages")
    final = cmds[cmds.index(froms[-1]):]
    users = [c.value[0] for c in final if c.cmd == "USER"]
    check(users and users[-1].split(":")[0] not in ("root", "0"), f"final stage runs as non-root ({users})")
    build = " ".join(" ".join(c.value) for c in cmds if c.cmd == "RUN")
    check("cargo build --release --locked -p wsgate" in build, "builds with cargo build --release --locked -p wsgate")
    ep = [c for c in final if c.cmd == "ENTRYPOINT"]
    check(ep and ep[-1].json and list(ep[-1].value) == ["wsgate"], 'ENTRYPOINT ["wsgate"] in exec form')
    cmd = [c for c in final if c.cmd == "CMD"]
    check(cmd and cmd[-1].json and list(cmd[-1].value) == ["run", "-c", "/etc/wsgate/gateway.toml"],
          'CMD ["run","-c","/etc/wsgate/gateway.toml"]')
    exposed = sorted(v for c in final if c.cmd == "EXPOSE" for v in c.value)
    check(exposed == ["8080", "9090"], f"EXPOSE 8080 9090 ({exposed})")
    check(os.path.exists(os.path.join(root, "deploy/docker/Dockerfile.dockerignore")),
          "Dockerfile.dockerignore beside the Dockerfile (BuildKit applies it for -f deploy/docker/Dockerfile)")


def main():
    root, work = sys.argv[1], sys.argv[2]
    check_alerts(root)
    check_dashboard(root, work)
    grace = check_kubernetes(root, work)
    check_systemd(root, grace)
    check_dockerfile(root)
    if failures:
        print(f"{len(failures)} static check(s) failed")
        sys.exit(1)


if __name__ == "__main__":
    main()
