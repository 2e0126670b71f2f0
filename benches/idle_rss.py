#!/usr/bin/env python3
"""Idle memory of the release daemon driving two environments, outside CI
(needs Docker, git, the fixture image driftless-test/busybox:1 that the
integration tests build, and a release binary):

    cargo build --release && cp target/release/driftless /tmp/driftless-release
    python3 benches/idle_rss.py

Deploys two environments (one busybox httpd service each) from a local bare
repo, waits until both are healthy, idles 60 s (default 60 s poll), then
prints VmRSS, RssAnon and RssFile from /proc/PID/status. Cleans up its
projects.
"""
import json, os, socket, subprocess, tempfile, time, urllib.request

B = os.environ.get("DRIFTLESS_BIN", "/tmp/driftless-release")
W = tempfile.mkdtemp()
ENVS = ["rssa", "rssb"]


def git(*a, cwd=W):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a],
                   cwd=cwd, check=True, capture_output=True)


def port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


git("init", "-q", "--bare", "repo.git"); git("clone", "-q", "repo.git", "work")
envs = "".join(f"  {e}:\n    targets: [local]\n    health: {{ deadline: 30s, settle: 1s }}\n" for e in ENVS)
files = {
    "driftless.yaml": f"apiVersion: driftless/v1\ntargets:\n  local:\n    docker: {{}}\nenvironments:\n{envs}",
    "compose/www/index.html": "idle\n",
    "compose/s.yaml.j2": """name: dlt-{{ environment }}
services:
  web:
    image: driftless-test/busybox:1
    init: true
    command: [httpd, -f, -p, "8080", -h, /www]
    volumes: [ "./www/index.html:/www/index.html:ro" ]
""",
}
for e in ENVS:
    files[f"environments/{e}.yaml"] = "x: 1\n"
for k, v in files.items():
    p = os.path.join(W, "work", k); os.makedirs(os.path.dirname(p), exist_ok=True); open(p, "w").write(v)
git("add", "-A", cwd=W + "/work"); git("commit", "-qm", "v0", cwd=W + "/work")
git("push", "-q", "origin", "HEAD:main", cwd=W + "/work")

lp = port()
cfg = W + "/c.yaml"
open(cfg, "w").write(f"repo: {W}/repo.git\nstate_dir: {W}/state\nlisten: 127.0.0.1:{lp}\npoll_interval: 60s\n")
log = open(W + "/d.log", "a")
d = subprocess.Popen([B, "daemon", "--config", cfg], stdout=log, stderr=log)
try:
    deadline = time.time() + 120
    while True:
        try:
            st = json.load(urllib.request.urlopen(f"http://127.0.0.1:{lp}/api/v1/environments", timeout=2))
            outcomes = {r["env"]: r.get("last_outcome") for r in st["environments"]}
            if all(outcomes.get(e) == "healthy" for e in ENVS):
                break
        except OSError:
            pass
        if time.time() > deadline or d.poll() is not None:
            raise SystemExit(f"not both healthy; see {W}/d.log")
        time.sleep(0.5)
    time.sleep(60)
    status = open(f"/proc/{d.pid}/status").read().splitlines()
    print("idle after 60 s, two environments:",
          ", ".join(l.split(None, 1)[0] + " " + l.split(None, 1)[1].strip()
                    for l in status if l.startswith(("VmRSS", "RssAnon", "RssFile"))))
    print("binary:", os.path.getsize(B) // 1024, "KiB")
finally:
    d.terminate(); d.wait()
    for e in ENVS:
        ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project=dlt-{e}"],
                             capture_output=True, text=True).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
        subprocess.run(["docker", "network", "rm", f"dlt-{e}_default"], capture_output=True)
