#!/usr/bin/env python3
"""Capture the request bodies real kubectl sends for `kubectl create <kind>`.

kubectl 1.32+ sends protobuf for typed creates. This serves just enough legacy discovery
on 127.0.0.1 (plain http, so kubectl sends no credentials), saves every POST body, and
answers the POST with a minimal JSON object so kubectl exits cleanly. For each case it also
runs the same command with `-o json --dry-run=client` to get the JSON kubectl would print,
which becomes the expected decoding of the captured body.

Usage: capture-protobuf.py OUT_DIR [KUBECTL]
Writes OUT_DIR/<case>.pb and OUT_DIR/<case>.json, and logs requests to stderr.
"""

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# (group, version, kind, plural, namespaced)
RESOURCES = [
    ("", "v1", "Namespace", "namespaces", False),
    ("", "v1", "ConfigMap", "configmaps", True),
    ("", "v1", "Secret", "secrets", True),
    ("", "v1", "Service", "services", True),
    ("", "v1", "ServiceAccount", "serviceaccounts", True),
    ("apps", "v1", "Deployment", "deployments", True),
    ("batch", "v1", "Job", "jobs", True),
    ("batch", "v1", "CronJob", "cronjobs", True),
]

VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]

# (case name, kubectl create arguments)
CASES = [
    ("namespace", ["namespace", "x"]),
    ("configmap", ["configmap", "c", "--from-literal=a=b", "--from-literal=multi=line1\nline2"]),
    ("configmap-binary", ["configmap", "cb", "--from-file=blob={out}/blob.bin", "--from-literal=t=x"]),
    ("namespace-save-config", ["namespace", "y", "--save-config"]),
    ("secret", ["secret", "generic", "s", "--from-literal=k=v", "--type=Opaque"]),
    ("secret-docker-registry", ["secret", "docker-registry", "reg", "--docker-server=r.example.com",
                                "--docker-username=u", "--docker-password=p"]),
    ("secret-custom", ["secret", "generic", "s2", "--from-literal=bin=\x01\x02\xff", "--type=example.com/custom"]),
    ("service", ["service", "clusterip", "s", "--tcp=80:8080"]),
    ("service-nodeport", ["service", "nodeport", "np", "--tcp=80:8080", "--node-port=30080"]),
    ("service-headless", ["service", "clusterip", "h", "--clusterip=None", "--tcp=53:dns"]),
    ("service-externalname", ["service", "externalname", "e", "--external-name=example.com", "--tcp=443"]),
    ("service-loadbalancer", ["service", "loadbalancer", "lb", "--tcp=80:8080,443:8443"]),
    ("serviceaccount", ["serviceaccount", "sa"]),
    ("deployment", ["deployment", "d", "--image=nginx", "--replicas=3", "--port=80"]),
    ("deployment-multi", ["deployment", "m", "--image=nginx:1.27", "--image=busybox:1.36"]),
    ("deployment-command", ["deployment", "dc", "--image=busybox", "--save-config", "--", "sleep", "3600"]),
    ("job", ["job", "j", "--image=busybox", "--", "echo", "hi"]),
    ("job-no-command", ["job", "j2", "--image=busybox"]),
    ("cronjob", ["cronjob", "cj", "--image=busybox", "--schedule=*/1 * * * *", "--restart=OnFailure", "--", "echo", "hi"]),
]


def discovery(path):
    """Legacy discovery documents, or None for paths we do not serve."""
    if path == "/version":
        return {"major": "1", "minor": "33", "gitVersion": "v1.33.1", "platform": "linux/amd64"}
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}
    if path == "/apis":
        groups = sorted({g for g, *_ in RESOURCES if g})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            {"name": g, "versions": [{"groupVersion": f"{g}/v1", "version": "v1"}],
             "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"}} for g in groups]}
    for group in {g for g, *_ in RESOURCES}:
        gv = f"{group}/v1" if group else "v1"
        prefix = f"/apis/{gv}" if group else "/api/v1"
        if path == prefix:
            return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": [
                {"name": plural, "singularName": kind.lower(), "namespaced": ns, "kind": kind, "verbs": VERBS}
                for g, _, kind, plural, ns in RESOURCES if g == group]}
    return None


class Handler(BaseHTTPRequestHandler):
    captured = []  # (path, content-type, body)

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.command, self.path))

    def reply(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        doc = discovery(self.path.split("?")[0])
        if doc is None:
            self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                             "reason": "NotFound", "code": 404, "message": "not found"})
        else:
            self.reply(200, doc)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        Handler.captured.append((self.path, self.headers.get("Content-Type"), body))
        path = self.path.split("?")[0].strip("/").split("/")
        plural = path[-1]
        for g, v, kind, p, _ in RESOURCES:
            if p == plural:
                api_version = f"{g}/{v}" if g else v
                self.reply(201, {"apiVersion": api_version, "kind": kind,
                                 "metadata": {"name": "captured", "namespace": "default"}})
                return
        self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404})


def main():
    out = sys.argv[1]
    kubectl = sys.argv[2] if len(sys.argv) > 2 else "/usr/lib/google-cloud-sdk/bin/kubectl.1.33"
    os.makedirs(out, exist_ok=True)
    # Not valid UTF-8, so `create configmap --from-file` puts it in binaryData.
    with open(os.path.join(out, "blob.bin"), "wb") as f:
        f.write(bytes([0, 1, 2, 0xFE, 0xFF]))
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = [kubectl, "--server", f"http://127.0.0.1:{server.server_address[1]}",
            "--namespace", "default", "--cache-dir", os.path.join(out, ".cache")]
    env = dict(os.environ, KUBECONFIG="/dev/null")
    for name, args in CASES:
        args = [a.replace("{out}", out) for a in args]
        Handler.captured.clear()
        run = subprocess.run(base + ["create"] + args, env=env, capture_output=True, text=True)
        sys.stderr.write(f"== {name}: rc={run.returncode} {run.stdout.strip()} {run.stderr.strip()}\n")
        posts = list(Handler.captured)
        if len(posts) != 1:
            sys.exit(f"{name}: expected one POST, got {len(posts)}")
        path, ctype, body = posts[0]
        sys.stderr.write(f"   POST {path} {ctype} {len(body)} bytes\n")
        with open(os.path.join(out, f"{name}.pb"), "wb") as f:
            f.write(body)
        # Flags must precede "--", after which everything is the container command.
        cut = args.index("--") if "--" in args else len(args)
        dry_args = args[:cut] + ["-o", "json", "--dry-run=client"] + args[cut:]
        dry = subprocess.run(base + ["create"] + dry_args,
                             env=env, capture_output=True, text=True, check=True)
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            f.write(dry.stdout)
    os.remove(os.path.join(out, "blob.bin"))
    server.shutdown()


if __name__ == "__main__":
    main()
