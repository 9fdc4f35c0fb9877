#!/usr/bin/env python3
"""Serve kith-api's discovery and OpenAPI v3 documents to real kubectl.

The documents come from `cargo test -p kith-api dump_documents -- --ignored` (pure
functions, no server); this script serves them from a throwaway http.server on
127.0.0.1 and runs pinned kubectl binaries against it, once with aggregated discovery
and once with the legacy per-group-version path. Plain http: kubectl sends no
credentials. Collections answer with empty lists so `kubectl get` can run; a tiny
object store answers `kubectl apply` so its validation handshake can be observed.

Usage: e2e/scripts/discovery-check.py [--keep-going]
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

KUBECTL_DIR = "/usr/lib/google-cloud-sdk/bin"
VERSIONS = ["1.30", "1.33"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def dump_documents(path):
    env = dict(os.environ, KITH_DUMP=path)
    subprocess.run(
        ["cargo", "test", "-q", "-p", "kith-api", "dump_documents", "--", "--ignored"],
        cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL,
    )
    tables = path + ".tables"
    subprocess.run(
        ["cargo", "test", "-q", "-p", "kith-api", "dump_tables", "--", "--ignored"],
        cwd=ROOT, env=dict(os.environ, KITH_DUMP_TABLES=tables), check=True, stdout=subprocess.DEVNULL,
    )
    with open(path) as f:
        docs = json.load(f)
    with open(tables) as f:
        docs["tables"] = json.load(f)
    return docs


class State:
    def __init__(self, docs):
        self.docs = docs
        self.aggregated = True
        self.requests = []
        # (method, path, query, content-type) of writes, for the apply checks
        self.writes = []
        self.objects = {}
        # resource plural per group-version -> kind, for the empty lists
        self.kinds = {}
        for url, doc in docs["plain"].items():
            if doc.get("kind") == "APIResourceList":
                for r in doc["resources"]:
                    if "/" not in r["name"]:
                        self.kinds[(url, r["name"])] = (doc["groupVersion"], r["kind"])


def make_handler(state):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def send_json(self, doc, content_type="application/json", code=200):
            body = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            url = urlsplit(self.path)
            accept = self.headers.get("Accept", "")
            state.requests.append((url.path, accept))
            docs = state.docs
            wants_agg = "as=APIGroupDiscoveryList" in accept and "v=v2;" in accept + ";"
            if state.aggregated and wants_agg and url.path in docs["aggregated"]:
                return self.send_json(docs["aggregated"][url.path], docs["aggregatedContentType"])
            if url.path in docs["plain"]:
                return self.send_json(docs["plain"][url.path])
            if url.path in docs.get("openapi", {}):
                return self.send_json(docs["openapi"][url.path])
            if url.path in state.objects:
                return self.send_json(state.objects[url.path])
            if "as=Table" in accept and url.path in docs["tables"]:
                return self.send_json(docs["tables"][url.path])
            m = re.match(r"^(/api/v1|/apis/[^/]+/[^/]+)(?:/namespaces/[^/]+)?/([a-z]+)$", url.path)
            if m and (m.group(1), m.group(2)) in state.kinds:
                gv, kind = state.kinds[(m.group(1), m.group(2))]
                return self.send_json({"kind": kind + "List", "apiVersion": gv,
                                       "metadata": {"resourceVersion": "1"}, "items": []})
            self.send_json({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": "not found", "reason": "NotFound", "code": 404}, code=404)

        def write(self, code):
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            state.writes.append((self.command, url.path, url.query, self.headers.get("Content-Type", "")))
            if self.command == "POST":
                path = url.path + "/" + body["metadata"]["name"]
                body["metadata"].setdefault("namespace", "default")
                body["metadata"]["resourceVersion"] = "1"
                body["metadata"]["uid"] = "00000000-0000-0000-0000-000000000001"
                state.objects[path] = body
                return self.send_json(body, code=201)
            if url.path in state.objects:
                return self.send_json(state.objects[url.path])
            if "as=Table" in accept and url.path in docs["tables"]:
                return self.send_json(docs["tables"][url.path])
            self.send_json({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": "not found", "reason": "NotFound", "code": 404}, code=404)

        def do_POST(self):
            self.write(201)

        def do_PATCH(self):
            self.write(200)

    return Handler


DEPLOYMENT = """apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: app
        image: nginx:1.27
        ports:
        - containerPort: 80
"""


def check_tables(c, version):
    print(f"kubectl {version}, Tables")
    want = {
        ("pods",): [["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
                    ["web-7d4b9c-x2x", "1/2", "Running", "0", "3m"],
                    ["crashy", "0/1", "CrashLoopBackOff", "5", "(5m", "ago)", "120m"]],
        ("pods", "-o", "wide"): [["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED", "NODE",
                                  "READINESS", "GATES"],
                                 ["web-7d4b9c-x2x", "1/2", "Running", "0", "3m", "10.42.0.7", "box-1", "<none>",
                                  "<none>"]],
        ("svc",): [["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"],
                   ["web", "NodePort", "10.43.0.12", "<none>", "80:30080/TCP,53/UDP", "45s"]],
        ("deploy", "-o", "wide"): [["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "CONTAINERS", "IMAGES",
                                    "SELECTOR"],
                                   ["web", "3/3", "2", "3", "5h", "app", "nginx:1.27", "app=web"]],
    }
    for args, rows in want.items():
        p = c.kubectl(version, "get", *args, "-n", "default")
        got = [line.split() for line in p.stdout.splitlines()]
        c.expect(got[:len(rows)] == rows, f"get {' '.join(args)}: {got}")
    p = c.kubectl(version, "get", "pods", "-n", "default", "--show-labels")
    c.expect("app=web" in p.stdout, "get pods --show-labels reads labels from the row objects")


def check_openapi(c, state, version):
    print(f"kubectl {version}, OpenAPI v3")
    state.requests.clear()
    p = c.kubectl(version, "explain", "deployment.spec.template.spec.containers")
    out = p.stdout
    c.expect("KIND:" in out and "Deployment" in out and re.search(r"FIELD:\s+containers <\[\]Container>", out),
             "explain deployment.spec.template.spec.containers: kind and field header")
    c.expect(re.search(r"^\s+image\s+<string>", out, re.M) is not None
             and re.search(r"^\s+ports\s+<\[\]ContainerPort>", out, re.M) is not None,
             "explain lists container fields (image <string>, ports <[]ContainerPort>)")
    c.expect(any(r[0] == "/openapi/v3/apis/apps/v1" for r in state.requests), "explain fetched /openapi/v3/apis/apps/v1")

    p = c.kubectl(version, "explain", "pods")
    c.expect("KIND:" in p.stdout and "Pod" in p.stdout and re.search(r"^\s+spec\s+<PodSpec>", p.stdout, re.M),
             "explain pods shows spec <PodSpec>")
    p = c.kubectl(version, "explain", "cj.spec.jobTemplate.spec.template.spec.containers.resources.limits")
    c.expect("map[string]Quantity" in p.stdout or "<map[string]" in p.stdout,
             f"explain cronjob ... resources.limits: {p.stdout.splitlines()[:3]}")
    p = c.kubectl(version, "explain", "leases.spec.holderIdentity")
    c.expect("holderIdentity" in p.stdout and "<string>" in p.stdout, "explain leases.spec.holderIdentity")

    # apply --validate=strict (the default): kubectl must find fieldValidation on the patch
    # operation and leave validation to the server, instead of failing to download OpenAPI.
    state.objects.clear()
    state.writes.clear()
    for attempt, manifest in [("create", DEPLOYMENT), ("patch", DEPLOYMENT.replace("replicas: 2", "replicas: 3"))]:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(manifest)
        p = c.kubectl(version, "apply", "-f", f.name)
        c.expect(p.returncode == 0, f"apply ({attempt}) succeeded: {p.stdout.strip()} {p.stderr.strip()}")
    posts = [w for w in state.writes if w[0] == "POST"]
    patches = [w for w in state.writes if w[0] == "PATCH"]
    c.expect(len(posts) == 1 and "fieldValidation=Strict" in posts[0][2],
             f"apply create: POST with fieldValidation=Strict ({posts})")
    c.expect(len(patches) == 1 and "fieldValidation=Strict" in patches[0][2]
             and patches[0][3] == "application/strategic-merge-patch+json",
             f"apply update: strategic merge PATCH with fieldValidation=Strict ({patches})")
    c.expect(not any(r[0].startswith("/openapi/v2") for r in state.requests), "no fallback to /openapi/v2")
    state.writes.clear()
    p = c.kubectl(version, "apply", "--server-side", "-f", f.name)
    c.expect(p.returncode == 0 and state.writes and state.writes[0][3] == "application/apply-patch+yaml"
             and "fieldValidation=Strict" in state.writes[0][2],
             f"apply --server-side: {state.writes}")
    os.unlink(f.name)


class Checker:
    def __init__(self, port, keep_going):
        self.port = port
        self.failures = 0
        self.keep_going = keep_going

    def kubectl(self, version, *args, check=True):
        cache = tempfile.mkdtemp(prefix="kith-kubectl-cache-")
        env = dict(os.environ, KUBECONFIG="/dev/null", HOME=cache)
        cmd = [f"{KUBECTL_DIR}/kubectl.{version}", "--server", f"http://127.0.0.1:{self.port}",
               "--cache-dir", cache, *args]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        if check and p.returncode != 0:
            self.fail(f"kubectl.{version} {' '.join(args)} exited {p.returncode}: {p.stderr.strip()}")
        return p

    def expect(self, cond, what):
        if cond:
            print(f"  ok   {what}")
        else:
            self.fail(what)

    def fail(self, what):
        print(f"  FAIL {what}")
        self.failures += 1
        if not self.keep_going:
            sys.exit(1)


def check_discovery(c, state, version, mode):
    print(f"kubectl {version}, {mode} discovery")
    state.requests.clear()
    p = c.kubectl(version, "version", "-o", "json")
    server = json.loads(p.stdout or "{}").get("serverVersion", {})
    c.expect(server.get("minor") == "33", f"version: serverVersion.minor=33 ({server.get('gitVersion')})")

    state.requests.clear()
    p = c.kubectl(version, "api-resources", "--no-headers")
    rows = {}
    for line in p.stdout.splitlines():
        cols = line.split()
        if len(cols) == 4:  # no short name: NAME APIVERSION NAMESPACED KIND
            cols.insert(1, "")
        if len(cols) == 5:
            rows[(cols[2], cols[0])] = cols
    for gv, name, short, namespaced, kind in [
        ("v1", "pods", "po", "true", "Pod"),
        ("v1", "namespaces", "ns", "false", "Namespace"),
        ("v1", "nodes", "no", "false", "Node"),
        ("v1", "services", "svc", "true", "Service"),
        ("v1", "secrets", "", "true", "Secret"),
        ("v1", "persistentvolumeclaims", "pvc", "true", "PersistentVolumeClaim"),
        ("apps/v1", "deployments", "deploy", "true", "Deployment"),
        ("apps/v1", "statefulsets", "sts", "true", "StatefulSet"),
        ("batch/v1", "cronjobs", "cj", "true", "CronJob"),
        ("coordination.k8s.io/v1", "leases", "", "true", "Lease"),
        ("discovery.k8s.io/v1", "endpointslices", "", "true", "EndpointSlice"),
        ("events.k8s.io/v1", "events", "ev", "true", "Event"),
    ]:
        got = rows.get((gv, name))
        c.expect(got == [name, short, gv, namespaced, kind], f"api-resources {gv} {name}: {got}")
    paths = {r[0] for r in state.requests}
    if mode == "aggregated":
        c.expect(not any(p.startswith("/api/v1") or p.startswith("/apis/apps") for p in paths),
                 f"aggregated: no per-group-version requests ({sorted(paths)})")
    else:
        c.expect("/apis/apps/v1" in paths and "/api/v1" in paths, "legacy: fetched /api/v1 and /apis/apps/v1")

    p = c.kubectl(version, "api-resources", "--categories=all", "--no-headers")
    names = sorted(line.split()[0] for line in p.stdout.splitlines() if line.strip())
    want = sorted(["pods", "services", "deployments", "replicasets", "daemonsets", "statefulsets", "jobs", "cronjobs"])
    c.expect(names == want, f"category all = {names}")

    state.requests.clear()
    c.kubectl(version, "get", "all", "-n", "default")
    listed = sorted({r[0].rsplit("/", 1)[1] for r in state.requests if "/namespaces/default/" in r[0]})
    c.expect(listed == want, f"get all lists {listed}")

    state.requests.clear()
    c.kubectl(version, "get", "deploy,sts,cj,po,svc,pvc", "-n", "default")
    listed = sorted({r[0] for r in state.requests if "/namespaces/default/" in r[0]})
    c.expect("/apis/apps/v1/namespaces/default/deployments" in listed
             and "/apis/batch/v1/namespaces/default/cronjobs" in listed
             and "/api/v1/namespaces/default/persistentvolumeclaims" in listed,
             f"short names resolve: {listed}")

    p = c.kubectl(version, "get", "nodes")
    c.expect(p.returncode == 0, "get nodes (cluster-scoped)")


def main():
    keep_going = "--keep-going" in sys.argv
    with tempfile.TemporaryDirectory() as tmp:
        docs = dump_documents(os.path.join(tmp, "docs.json"))
    state = State(docs)
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    c = Checker(server.server_address[1], keep_going)
    try:
        for version in VERSIONS:
            for mode in ["aggregated", "legacy"]:
                state.aggregated = mode == "aggregated"
                check_discovery(c, state, version, mode)
            state.aggregated = True
            check_tables(c, version)
            check_openapi(c, state, version)
    finally:
        server.shutdown()
    print("all checks passed" if c.failures == 0 else f"{c.failures} check(s) failed")
    sys.exit(1 if c.failures else 0)


if __name__ == "__main__":
    main()
