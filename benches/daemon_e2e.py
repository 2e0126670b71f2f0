#!/usr/bin/env python3
"""End-to-end daemon measurements, outside CI (needs Docker, git, the fixture
image driftless-test/busybox:1 that the integration tests build, and a
release binary):

    cargo build --release && cp target/release/driftless /tmp/driftless-release
    python3 benches/daemon_e2e.py

Prints: local `git push` into a bare repo -> the new page served (file
watch path, includes stopping and starting the container); idle RSS and CPU
over 60 s with the default 60 s poll; webhook sent -> "applying" logged
(watch off). Cleans up its project.
"""
import subprocess, time, os, json, hmac, hashlib, urllib.request, tempfile, datetime, statistics, socket
B=os.environ.get("DRIFTLESS_BIN", "/tmp/driftless-release")
W=tempfile.mkdtemp(); os.chdir(W)
def git(*a, cwd=None): return subprocess.run(["git","-c","user.name=t","-c","user.email=t@t",*a],cwd=cwd or W,check=True,capture_output=True,text=True).stdout.strip()
def port():
    s=socket.socket(); s.bind(("127.0.0.1",0)); p=s.getsockname()[1]; s.close(); return p
git("init","-q","--bare","repo.git"); git("clone","-q","repo.git","work")
wp=port(); lp=port()
man=f"""apiVersion: driftless/v1
targets:
  local:
    docker: {{}}
environments:
  benchlat:
    targets: [local]
    health: {{ deadline: 30s, settle: 1s }}
    drift_interval: 1h
"""
def stack(page):
    return {"driftless.yaml":man,"environments/benchlat.yaml":"x: 1\n",
    "compose/www/index.html":page+"\n",
    "compose/s.yaml":f"""name: dlt-bench-lat
services:
  web:
    image: driftless-test/busybox:1
    init: true
    command: [httpd, -f, -p, "8080", -h, /www]
    ports: ["127.0.0.1:{wp}:8080"]
    volumes: [ "./www/index.html:/www/index.html:ro" ]
"""}
def commit(files,msg):
    for k,v in files.items():
        p=os.path.join(W,"work",k); os.makedirs(os.path.dirname(p),exist_ok=True); open(p,"w").write(v)
    git("add","-A",cwd=W+"/work"); git("commit","-qm",msg,cwd=W+"/work")
def push(): git("push","-q","origin","HEAD:main",cwd=W+"/work")
def page():
    try: return urllib.request.urlopen(f"http://127.0.0.1:{wp}/index.html",timeout=1).read().decode().strip()
    except Exception: return None
commit(stack("v0"),"v0"); push()
def start(watch):
    log=open(W+f"/d{watch}.log","a")
    env=dict(os.environ, DRIFTLESS_LOG="info", DRIFTLESS_WEBHOOK_SECRET="bench-secret-123", DRIFTLESS_LOG_FORMAT="json")
    cfg=W+"/c.yaml"; open(cfg,"w").write(f"repo: {W}/repo.git\nstate_dir: {W}/state\nlisten: 127.0.0.1:{lp}\npoll_interval: 60s\nwatch: {str(watch).lower()}\nverify_poll: 250ms\n")
    return subprocess.Popen([B,"daemon","--config",cfg],stdout=log,stderr=log,env=env)
def wait_page(want,timeout=60):
    t=time.time()
    while time.time()-t<timeout:
        if page()==want: return True
        time.sleep(0.02)
    raise SystemExit(f"page never became {want}")
p=start(True); wait_page("v0")
time.sleep(3)
# push -> containers updated (file watch)
lat=[]
for i in range(1,9):
    commit(stack(f"v{i}"),f"v{i}"); t=time.time(); push(); wait_page(f"v{i}"); lat.append(time.time()-t); time.sleep(2.5)
print("git push -> page updated (s):", ["%.2f"%x for x in lat], "median %.2f"%statistics.median(lat))
# idle
time.sleep(20)
st=open(f"/proc/{p.pid}/status").read()
rss=[l for l in st.splitlines() if l.startswith(("VmRSS","VmHWM"))]
t1=sum(map(int,open(f"/proc/{p.pid}/stat").read().split()[13:15])); time.sleep(60); t2=sum(map(int,open(f"/proc/{p.pid}/stat").read().split()[13:15]))
print("idle:", rss, "cpu over 60s: %.2fs (%.2f%%)"%((t2-t1)/100,(t2-t1)/100/60*100))
p.terminate(); p.wait()
# webhook -> apply start (watch off)
p=start(False); time.sleep(4)
logf=W+"/dFalse.log"
def applying_count(): return sum(1 for l in open(logf) if '"applying"' in l)
lat=[]
for i in range(20,28):
    commit(stack(f"v{i}"),f"v{i}"); push()
    n=applying_count()
    body=json.dumps({"ref":"refs/heads/main"}).encode()
    sig="sha256="+hmac.new(b"bench-secret-123",body,hashlib.sha256).hexdigest()
    req=urllib.request.Request(f"http://127.0.0.1:{lp}/hooks/github",data=body,headers={"x-github-event":"push","x-github-delivery":f"b{i}","content-type":"application/json","x-hub-signature-256":sig})
    t=datetime.datetime.now(datetime.timezone.utc); urllib.request.urlopen(req).read()
    while applying_count()==n: time.sleep(0.005)
    line=[l for l in open(logf) if '"applying"' in l][-1]
    ts=datetime.datetime.fromisoformat(json.loads(line)["timestamp"].replace("Z","+00:00"))
    lat.append((ts-t).total_seconds()*1000); wait_page(f"v{i}"); time.sleep(2.5)
print("webhook -> apply started (ms):", ["%.1f"%x for x in lat], "median %.1f"%statistics.median(lat), "max %.1f"%max(lat))
p.terminate(); p.wait()
subprocess.run("docker rm -f $(docker ps -aq --filter label=com.docker.compose.project=dlt-bench-lat) >/dev/null 2>&1; docker network rm dlt-bench-lat_default >/dev/null 2>&1",shell=True)
