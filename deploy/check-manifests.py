#!/usr/bin/env python3
"""Checks of deploy/kubernetes that a schema cannot make (scripts/deploy-check.sh).

    check-manifests.py policy DIR
        Cross-checks the manifests against each other and against the turnd.toml
        in the ConfigMap: hostNetwork and cluster DNS, probes on the admin
        listener, terminationGracePeriodSeconds longer than drain-timeout,
        Prometheus annotations on the metrics port, securityContext, selectors
        of the PDB, Services and ServiceMonitor, Secret keys, the Redis Service
        named by redis-userdb, and kustomization.yaml listing every manifest.

    check-manifests.py extract DIR OUT [--pending-option NAME]... [--pending-flag FLAG]...
        Writes what the DaemonSet's pod would run, for starting turnd here:
        OUT/turnd.toml (the ConfigMap's), OUT/args (one argument a line, $(VAR)
        expanded as the kubelet would, with the node's address 127.0.0.1),
        OUT/env (NAME=VALUE lines for the container's environment), and
        OUT/checks.json (probes, metrics endpoint, grace period). Options and
        flags named as pending are left out of the copies (and listed on stdout).

    check-manifests.py http URL STATUS [HEADER: VALUE]...
        GET URL (as the kubelet would) and exit 0 when the answer has STATUS.

    check-manifests.py dns READYFILE NAME...
        A DNS server on 127.0.0.1:53 (UDP; run it in a private network
        namespace) that answers an A query for each NAME with 127.0.0.1 and
        NXDOMAIN for anything else, and writes READYFILE once it listens. For checking that the static binary in the
        scratch image resolves names (redis.turnd.svc) through the
        /etc/resolv.conf it is given. Runs until killed.

Needs PyYAML (the kubernetes-validate venv has it) and Python 3.11 (tomllib).
"""

import ipaddress
import json
import os
import re
import sys
import tomllib
import urllib.error
import urllib.request

import yaml

# Files not in kustomization.yaml's resources on purpose (see each file).
OPTIONAL = {"servicemonitor.yaml", "service-loadbalancer.yaml"}
# Values the kubelet would give the downward API fields, for a run here.
FIELD_VALUES = {
    "spec.nodeName": "deploy-check-node",
    "status.hostIP": "127.0.0.1",
    "status.podIP": "127.0.0.1",
    "metadata.name": "turnd-deploy-check",
    "metadata.namespace": "turnd",
}

failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def load(dirname):
    """{filename: [resource, ...]} for every *.yaml but kustomization.yaml."""
    out = {}
    for name in sorted(os.listdir(dirname)):
        if name.endswith(".yaml") and name != "kustomization.yaml":
            with open(os.path.join(dirname, name)) as f:
                out[name] = [d for d in yaml.safe_load_all(f) if d]
    return out


def find(files, kind, name=None):
    for docs in files.values():
        for d in docs:
            if d["kind"] == kind and (name is None or d["metadata"]["name"] == name):
                return d
    raise SystemExit(f"check-manifests: no {kind} {name or ''} in the manifests")


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def turnd_container(ds):
    cs = [c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "turnd"]
    if not cs:
        raise SystemExit("check-manifests: the DaemonSet has no container named turnd")
    return cs[0]


def config_of(files):
    cm = find(files, "ConfigMap", "turnd")
    return cm, tomllib.loads(cm["data"]["turnd.toml"])


def arg_value(args, flag):
    for a in args:
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def policy(dirname):
    files = load(dirname)
    with open(os.path.join(dirname, "kustomization.yaml")) as f:
        kust = yaml.safe_load(f)
    ns = kust.get("namespace")
    check(ns == "turnd", f"kustomization namespace is turnd ({ns})")
    listed = set(kust.get("resources", []))
    present = set(files)
    check(listed <= present, f"kustomization resources exist: {sorted(listed - present) or 'all'}")
    missing = present - listed - OPTIONAL
    check(not missing, f"every manifest is in kustomization or optional: {sorted(missing) or 'yes'}")
    for name, docs in files.items():
        for d in docs:
            if d["kind"] != "Namespace":
                got = d["metadata"].get("namespace")
                check(got == ns, f"{name}: {d['kind']}/{d['metadata']['name']} in namespace {ns} ({got})")

    cm, conf = config_of(files)
    ds = find(files, "DaemonSet", "turnd")
    pod = ds["spec"]["template"]["spec"]
    labels = ds["spec"]["template"]["metadata"]["labels"]
    c = turnd_container(ds)
    args = c.get("args", [])

    check(matches(ds["spec"]["selector"]["matchLabels"], labels), "DaemonSet selector matches its pods")
    check(pod.get("hostNetwork") is True, "hostNetwork: relay ports are the node's own")
    check(pod.get("dnsPolicy") == "ClusterFirstWithHostNet",
          "dnsPolicy ClusterFirstWithHostNet (cluster DNS with hostNetwork)")

    # Draining: SIGTERM starts it; the grace period must outlast it.
    drain = conf.get("drain-timeout", 0)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    check(drain > 0, f"drain-timeout set in the ConfigMap ({drain} s)")
    check(grace > drain, f"terminationGracePeriodSeconds {grace} > drain-timeout {drain}")
    pre = c.get("lifecycle", {}).get("preStop")
    check(pre is None, "no preStop hook delaying the SIGTERM that starts the drain")

    # The config file the pod reads is the ConfigMap's.
    cfg = arg_value(args, "--config")
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    cfg_ok = False
    for vname, path in mounts.items():
        v = vols.get(vname, {})
        if v.get("configMap", {}).get("name") == cm["metadata"]["name"] and cfg:
            for item in v["configMap"].get("items", [{"key": "turnd.toml", "path": "turnd.toml"}]):
                if item["key"] == "turnd.toml" and os.path.join(path, item["path"]) == cfg:
                    cfg_ok = True
    check(cfg_ok, f"--config ({cfg}) is the ConfigMap's turnd.toml as mounted")

    # Every $(VAR) in the args is defined in env; Secret keys exist.
    env = {e["name"]: e for e in c.get("env", [])}
    used = {v for a in args for v in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", a)}
    check(used <= set(env), f"args' $(VARS) defined in env: {sorted(used - set(env)) or 'all'}")
    for e in env.values():
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            sec = find(files, "Secret", ref["name"])
            keys = set(sec.get("stringData", {})) | set(sec.get("data", {}))
            check(ref["key"] in keys, f"env {e['name']}: Secret {ref['name']} has key {ref['key']}")
    check("TURND_ADMIN_TOKEN" in env, "admin token from the Secret (turns the admin listener and probes on)")

    # Probes: the admin listener serves /healthz and /readyz.
    admin = conf.get("admin-listen", "127.0.0.1:9642")
    admin_ip, admin_port = admin.rsplit(":", 1)
    admin_ip = admin_ip.strip("[]")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        g = c.get(probe, {}).get("httpGet", {})
        check(g.get("path") == path, f"{probe} on {path} ({g.get('path')})")
        check(str(g.get("port")) == admin_port, f"{probe} port {g.get('port')} is admin-listen's ({admin})")
        host = g.get("host")
        if ipaddress.ip_address(admin_ip).is_loopback:
            check(host == admin_ip, f"{probe} host {host}: admin-listen is on loopback, which hostNetwork shares")
    sp = c.get("startupProbe", {}).get("httpGet")
    if sp:
        check(str(sp.get("port")) == admin_port and sp.get("path") == "/healthz", "startupProbe on /healthz")

    # Metrics: on, on the node's address, and where the annotations say.
    ann = ds["spec"]["template"]["metadata"].get("annotations", {})
    mport = str(conf.get("prometheus-port", 9641))
    check(conf.get("prometheus") is True, "prometheus = true in the ConfigMap")
    check(ann.get("prometheus.io/scrape") == "true", "prometheus.io/scrape annotation")
    check(ann.get("prometheus.io/port") == mport, f"prometheus.io/port is prometheus-port ({mport})")
    check(ann.get("prometheus.io/path", "/metrics") == "/metrics", "prometheus.io/path /metrics")
    maddr = arg_value(args, "--prometheus-address") or conf.get("prometheus-address", "127.0.0.1")
    check(maddr == "$(HOST_IP)" or not ipaddress.ip_address(maddr).is_loopback,
          f"metrics reachable by Prometheus (prometheus-address {maddr})")
    ports = {p["name"]: p for p in c.get("ports", [])}
    check(str(ports.get("metrics", {}).get("containerPort")) == mport, "container port 'metrics' is prometheus-port")
    lport = conf.get("listening-port", 3478)
    for pname, proto in (("turn-udp", "UDP"), ("turn-tcp", "TCP")):
        p = ports.get(pname, {})
        check(p.get("containerPort") == lport and p.get("protocol") == proto,
              f"container port {pname} is listening-port {lport}/{proto}")
    check(arg_value(args, "--relay-ip") == "$(HOST_IP)" or "relay-ip" in conf or "external-ip" in conf,
          "relay-ip is the node's address (or set in the ConfigMap)")

    # securityContext.
    psc = pod.get("securityContext", {})
    csc = c.get("securityContext", {})
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    check(psc.get("runAsNonRoot") is True or csc.get("runAsNonRoot") is True, "runAsNonRoot")
    check(uid is not None and uid != 0, f"runAsUser non-root ({uid})")
    check(csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
    check(csc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation false")
    caps = csc.get("capabilities", {})
    check(caps.get("drop") == ["ALL"], "capabilities drop ALL")
    tls = conf.get("tls-listening-port", [])
    tls = tls if isinstance(tls, list) else [tls]
    low = [p for p in [lport, int(mport), int(admin_port), *tls] if p < 1024]
    want = {"NET_BIND_SERVICE"} if low else set()
    check(set(caps.get("add", [])) == want,
          f"capabilities add {sorted(want) or 'nothing'} (ports below 1024: {low or 'none'})")
    res = c.get("resources", {})
    check("cpu" in res.get("requests", {}) and "memory" in res.get("requests", {}), "cpu and memory requests")
    check("memory" in res.get("limits", {}), "memory limit")

    # PDB, metrics Service, ServiceMonitor select the relays.
    pdb = find(files, "PodDisruptionBudget", "turnd")
    check(matches(pdb["spec"]["selector"]["matchLabels"], labels), "PodDisruptionBudget selects the relay pods")
    svc = find(files, "Service", "turnd-metrics")
    check(matches(svc["spec"]["selector"], labels), "Service turnd-metrics selects the relay pods")
    sport = {p["name"]: p for p in svc["spec"]["ports"]}.get("metrics", {})
    check(sport.get("targetPort") in ports and str(sport.get("port")) == mport,
          "Service turnd-metrics port 'metrics' targets the container's metrics port")
    sm = find(files, "ServiceMonitor", "turnd")
    check(sm["apiVersion"] == "monitoring.coreos.com/v1", "ServiceMonitor apiVersion monitoring.coreos.com/v1")
    check(matches(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"]),
          "ServiceMonitor selects Service turnd-metrics")
    check(ns in sm["spec"].get("namespaceSelector", {}).get("matchNames", []), "ServiceMonitor namespaceSelector")
    check(all(e.get("port") in {p["name"] for p in svc["spec"]["ports"]} for e in sm["spec"]["endpoints"]),
          "ServiceMonitor endpoints name a port of the Service")
    lb = find(files, "Service", "turnd")
    check(matches(lb["spec"]["selector"], labels) and lb["spec"].get("externalTrafficPolicy") == "Local",
          "LoadBalancer Service selects the relays and keeps client addresses (externalTrafficPolicy Local)")
    check({p["port"] for p in lb["spec"]["ports"]} == {lport}, "LoadBalancer Service carries only listening-port")

    # Redis: the Service that redis-userdb and redis-statsdb name.
    for opt in ("redis-userdb", "redis-statsdb"):
        url = conf.get(opt)
        check(url is not None, f"{opt} set in the ConfigMap")
        m = re.match(r"redis://(?:[^@/]*@)?([^:/]+)(?::(\d+))?/", url or "")
        if m:
            parts = m.group(1).split(".")
            rsvc = find(files, "Service", parts[0])
            rns = parts[1] if len(parts) > 1 else ns
            rport = int(m.group(2) or 6379)
            check(rns == rsvc["metadata"]["namespace"] and rport in {p["port"] for p in rsvc["spec"]["ports"]},
                  f"{opt} names Service {parts[0]}.{rns}:{rport}")
            sts = find(files, "StatefulSet", parts[0])
            check(matches(rsvc["spec"]["selector"], sts["spec"]["template"]["metadata"]["labels"]),
                  f"Service {parts[0]} selects the Redis pod")
        else:
            check(False, f"{opt} is a redis://HOST[:PORT]/DB URL naming a Service of these manifests ({url})")

    if failures:
        print(f"check-manifests: {len(failures)} check(s) failed", file=sys.stderr)
        return 1
    print("check-manifests: every policy check passed")
    return 0


def extract(dirname, out, pending_options, pending_flags):
    files = load(dirname)
    cm, conf = config_of(files)
    text = cm["data"]["turnd.toml"]
    kept = []
    for line in text.splitlines():
        key = line.split("=", 1)[0].strip()
        if "=" in line and not line.lstrip().startswith("#") and key in pending_options:
            print(f"PENDING option left out: {line.strip()}")
            continue
        kept.append(line)
    with open(os.path.join(out, "turnd.toml"), "w") as f:
        f.write("\n".join(kept) + "\n")

    ds = find(files, "DaemonSet", "turnd")
    c = turnd_container(ds)
    env = {}
    for e in c.get("env", []):
        vf = e.get("valueFrom", {})
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "fieldRef" in vf:
            env[e["name"]] = FIELD_VALUES[vf["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in vf:
            ref = vf["secretKeyRef"]
            sec = find(files, "Secret", ref["name"])
            env[e["name"]] = sec.get("stringData", {})[ref["key"]]
        else:
            raise SystemExit(f"check-manifests: env {e['name']}: unsupported source {vf}")

    def expand(a):
        return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), a)

    args = []
    for a in c.get("args", []):
        if a.split("=", 1)[0] in pending_flags:
            print(f"PENDING flag left out: {a}")
            continue
        a = expand(a)
        if a.startswith("--config="):
            a = "--config=" + os.path.join(out, "turnd.toml")
        args.append(a)
    with open(os.path.join(out, "args"), "w") as f:
        f.write("\n".join(args) + "\n")
    with open(os.path.join(out, "env"), "w") as f:
        f.write("".join(f"{k}={v}\n" for k, v in env.items()))

    probes = []
    for name in ("startupProbe", "livenessProbe", "readinessProbe"):
        g = c.get(name, {}).get("httpGet")
        if g:
            host = g.get("host", FIELD_VALUES["status.podIP"])
            headers = [f"{h['name']}: {h['value']}" for h in g.get("httpHeaders", [])]
            probes.append({"name": name, "url": f"http://{host}:{g['port']}{g['path']}", "headers": headers})
    ann = ds["spec"]["template"]["metadata"]["annotations"]
    checks = {
        "probes": probes,
        "metrics": f"http://{FIELD_VALUES['status.hostIP']}:{ann['prometheus.io/port']}"
        f"{ann.get('prometheus.io/path', '/metrics')}",
        "listening_port": conf.get("listening-port", 3478),
        "grace_seconds": ds["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30),
        "drain_timeout": conf.get("drain-timeout", 0),
    }
    with open(os.path.join(out, "checks.json"), "w") as f:
        json.dump(checks, f, indent=1)
    return 0


def http(url, status, headers):
    req = urllib.request.Request(url)
    for h in headers:
        k, v = h.split(":", 1)
        req.add_header(k.strip(), v.strip())
    try:
        with urllib.request.urlopen(req, timeout=3) as r:
            code, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        code, body = e.code, e.read()
    except OSError as e:
        print(f"GET {url}: {e}")
        return 1
    print(f"GET {url}: {code} {body[:60]!r}{'...' if len(body) > 60 else ''}")
    return 0 if code == int(status) else 1


def dns(readyfile, names):
    import socket
    import struct

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 53))
    with open(readyfile, "w") as f:
        f.write("ready\n")
    while True:
        q, peer = sock.recvfrom(512)
        if len(q) < 12:
            continue
        tid, _flags, qd = struct.unpack("!HHH", q[:6])
        end = 12
        while end < len(q) and q[end] != 0:
            end += q[end] + 1
        question = q[12:end + 5]
        qtype = struct.unpack("!H", q[end + 1:end + 3])[0] if end + 3 <= len(q) else 0
        name = []
        i = 12
        while i < end:
            name.append(q[i + 1:i + 1 + q[i]].decode(errors="replace"))
            i += q[i] + 1
        answers = b""
        known = ".".join(name).lower() in names
        if qd == 1 and qtype == 1 and known:
            answers = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 5, 4) + bytes([127, 0, 0, 1])
        print(f"dns: {'.'.join(name)} type {qtype} -> "
              f"{'127.0.0.1' if answers else 'no address' if known else 'NXDOMAIN'}", flush=True)
        # QR, RD, RA; NXDOMAIN for unknown names (the resolver then tries the
        # next search domain).
        flags = 0x8180 if known else 0x8183
        header = struct.pack("!HHHHHH", tid, flags, 1, 1 if answers else 0, 0, 0)
        sock.sendto(header + question + answers, peer)


def main(argv):
    if len(argv) >= 3 and argv[1] == "policy":
        return policy(argv[2])
    if len(argv) >= 4 and argv[1] == "extract":
        opts, flags, rest = set(), set(), argv[4:]
        while rest:
            if rest[0] == "--pending-option" and len(rest) > 1:
                opts.add(rest[1])
            elif rest[0] == "--pending-flag" and len(rest) > 1:
                flags.add(rest[1])
            else:
                raise SystemExit(f"check-manifests: unknown argument {rest[0]}")
            rest = rest[2:]
        return extract(argv[2], argv[3], opts, flags)
    if len(argv) >= 3 and argv[1] == "dns":
        return dns(argv[2], {n.lower() for n in argv[3:]})
    if len(argv) >= 4 and argv[1] == "http":
        return http(argv[2], argv[3], argv[4:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
