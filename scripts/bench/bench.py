#!/usr/bin/python3
"""georeg benchmark harness (issue 4): `make bench` -> scripts/bench/run.sh -> here.

Runs the same workloads against georeg, CNCF Distribution 2.8 and nginx (static
files + WebDAV PUT), all on loopback, on the same generated data, interleaving
the servers round by round, and prints one table with the ratios
georeg/Distribution and georeg/nginx beside the issue's targets. Writes
bench-results/bench-<time>.json (+ .md) and, on full runs, the generated section
of docs/BENCHMARKS.md.

Environment:
  QUICK=1          one round, short wrk runs, small growth and replication sets
  ROUNDS=N         rounds (default 3, QUICK 1)
  BENCH_DOCS=0|1   update docs/BENCHMARKS.md (default: 1 on full runs, 0 on QUICK)
  BENCH_PERF=1     perf-record georeg during the first manifest GET run
  BENCH_ONLY=a,b   run only these sections: skopeo,mono,put,get,limits,rss,growth,repl
  BENCH_KEEP=1     keep the run directory (build/bench/run) afterwards
  BENCH_BUDGET_S=N seconds bench.py may use (default 540, QUICK 420); replication
                   rounds after the first are skipped, with a note, past it

No assertions on numbers: the exit code is non-zero only if the harness itself
failed (a server did not start, a request that sets up data failed, ...).
Stdlib only; every process it starts is stopped by PID, also on failure.
"""

import hashlib
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BENCH_DIR = os.path.join(ROOT, "build", "bench")
DATA_DIR = os.path.join(BENCH_DIR, "data")
RUN_DIR = os.path.join(BENCH_DIR, "run")
RESULTS_DIR = os.path.join(ROOT, "bench-results")
DOC_PATH = os.path.join(ROOT, "docs", "BENCHMARKS.md")
GEOREG_BUILT = os.path.join(ROOT, "build", "georeg")
GEOREG = os.path.join(RUN_DIR, "bin", "georeg")  # a copy: a rebuild during the run cannot mix binaries
WRK_GET = os.path.join(ROOT, "scripts", "bench", "wrk", "get.lua")
WRK_POP = os.path.join(ROOT, "scripts", "bench", "wrk", "populate.lua")
TCPSTREAM = os.path.join(BENCH_DIR, "tcpstream")
NNGSTREAM = os.path.join(BENCH_DIR, "nngstream")
FAULTPROXY = os.path.join(BENCH_DIR, "faultproxy")
FAULTPROXY_PY_DIR = os.path.join(ROOT, "tests", "tools")

QUICK = os.environ.get("QUICK", "") not in ("", "0")
ROUNDS = int(os.environ.get("ROUNDS") or (1 if QUICK else 3))
WRK_D = 3 if QUICK else 10          # figures 3 and 4: wrk -t2 -c64 -d10s
WRK_BIG_D = 3 if QUICK else 5       # figure 5: 64 MiB GETs, wrk -t2 -c8
GROWTH_D = 2 if QUICK else 3        # growth: manifest GET, wrk -t2 -c64, twice per round
GROWTH_TAGS = 5000 if QUICK else 100000
GROWTH_REPOS = 500 if QUICK else 10000
SMALL_TAGS = 10
SMALL_REPOS = 10
REPL_PUSHES = 30 if QUICK else 200
REPL_WAIT_S = 30 if QUICK else 60
PAGE_D = 1                           # growth: one page, wrk -t1 -c1 -d1s, p50
IDLE_CONNS = 1000
BUDGET_S = int(os.environ.get("BENCH_BUDGET_S") or (420 if QUICK else 540))  # bench.py's share of 10 min
DOCS = os.environ.get("BENCH_DOCS", "0" if QUICK else "1") == "1"
PERF = os.environ.get("BENCH_PERF", "") == "1"
ONLY = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))
KEEP = os.environ.get("BENCH_KEEP", "") == "1"

MIB = 1024 * 1024
SERVERS = ["georeg", "distribution", "nginx"]
GROWTH = ["small", "big"]
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
ACCEPT = ("application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, "
          "application/vnd.docker.distribution.manifest.v2+json")
DATA_VERSION = "bench-data-v1"
LAYERS = [("1KiB", 1024), ("1MiB", MIB), ("64MiB", 64 * MIB)]
MONO_SIZE = 256 * MIB
MONO_BLOBS = 3

T0 = time.monotonic()


def log(msg):
    print(f"[bench {time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def want(section):
    return not ONLY or section in ONLY


class BenchError(RuntimeError):
    pass


# ---------------------------------------------------------------- processes

class Procs:
    """Every long-running process the harness starts; stop_all() ends them by PID."""

    def __init__(self):
        self.items = []  # [name, Popen, extra pids (nginx workers)]
        self.slow_stops = []

    def start(self, name, argv, log_path, env=None, cwd=None):
        with open(log_path, "ab") as f:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                 env=env, cwd=cwd, start_new_session=True, preexec_fn=_die_with_parent)
        self.items.append([name, p, set()])
        self._record(p.pid, name)
        return p

    @staticmethod
    def _record(pid, name):
        """run.sh reads RUN_DIR/pids after we exit and SIGKILLs any of them still
        alive with the same start time (only after a kill -9 of this process)."""
        try:
            with open(f"/proc/{pid}/stat") as f:
                start = f.read().rsplit(")", 1)[1].split()[19]
            with open(os.path.join(RUN_DIR, "pids"), "a") as f:
                f.write(f"{pid} {start} {name}\n")
        except (OSError, IndexError):
            pass

    def remember_children(self, p):
        for item in self.items:
            if item[1] is p:
                for c in children(p.pid):
                    if c not in item[2]:
                        item[2].add(c)
                        self._record(c, item[0] + "-child")

    def stop(self, p, timeout=15.0):
        for item in list(self.items):
            if item[1] is not p:
                continue
            extra = item[2] | set(children(p.pid))
            if p.poll() is None:
                t = time.monotonic()
                try:
                    p.send_signal(signal.SIGTERM)
                    p.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=timeout)
                    self.slow_stops.append(f"{item[0]} (pid {p.pid}) did not exit within {timeout:.0f} s "
                                           "of SIGTERM and was killed")
                except ProcessLookupError:
                    pass
                else:
                    if time.monotonic() - t > 3:
                        self.slow_stops.append(f"{item[0]} (pid {p.pid}) took {time.monotonic() - t:.1f} s "
                                               "to exit after SIGTERM")
            for pid in extra:  # nginx workers if the master died first
                try:
                    if os.path.exists(f"/proc/{pid}"):
                        os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.items.remove(item)
            return p.returncode
        return p.poll()

    def stop_all(self):
        for item in reversed(list(self.items)):
            try:
                self.stop(item[1])
            except Exception as e:  # keep stopping the others
                print(f"bench: stopping {item[0]} (pid {item[1].pid}): {e}", file=sys.stderr)


PROCS = Procs()


def _die_with_parent():
    """In the child before exec: SIGKILL it if bench.py dies without cleaning up (kill -9)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def proc_status_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError):
            pass
    return total


def wait_quiet(pids, timeout=30.0, window=0.5, max_ticks=2):
    """Waits until the processes use less than max_ticks of CPU per window
    (RocksDB flushes and compactions after a bulk load, Go GC, ...)."""
    deadline = time.monotonic() + timeout
    last = cpu_ticks(pids)
    while time.monotonic() < deadline:
        time.sleep(window)
        now = cpu_ticks(pids)
        if now - last <= max_ticks:
            return True
        last = now
    return False


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path, n=20):
    try:
        with open(path, "rb") as f:
            return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
    except OSError:
        return ""


# ---------------------------------------------------------------- HTTP client

class Http:
    """One keep-alive connection; reconnects once if the server closed it."""

    def __init__(self, port, timeout=120):
        self.port = port
        self.timeout = timeout
        self.c = None

    def req(self, method, path, body=None, headers=None):
        for attempt in (0, 1):
            if self.c is None:
                self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                self.c.request(method, path, body=body, headers=headers or {})
                r = self.c.getresponse()
                data = r.read()
                if r.getheader("Connection", "").lower() == "close":
                    self.close()
                return r.status, r.headers, data
            except (ConnectionError, http.client.HTTPException, socket.timeout, OSError):
                self.close()
                if attempt or (body is not None and hasattr(body, "read")):
                    raise

    def close(self):
        if self.c is not None:
            self.c.close()
            self.c = None


def wait_http(port, path, proc, log_path, timeout=30.0, ok=(200,)):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"server on :{port} exited with {proc.returncode}:\n{tail(log_path)}")
        try:
            st, _, _ = Http(port, timeout=2).req("GET", path)
            if st in ok:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise BenchError(f"server on :{port} not ready after {timeout}s ({path}):\n{tail(log_path)}")


def location_path(loc):
    u = urllib.parse.urlsplit(loc)
    return u.path + ("?" + u.query if u.query else "")


def with_digest(path, digest):
    return path + ("&" if "?" in path else "?") + "digest=" + urllib.parse.quote(digest, safe=":")


def upload_blob(h, repo, digest, path=None, data=None):
    st, hd, body = h.req("POST", f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
    if st != 202:
        raise BenchError(f"POST upload {repo}: HTTP {st} {body[:200]!r}")
    loc = location_path(hd["Location"])
    if path is not None:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            st, _, body = h.req("PUT", with_digest(loc, digest), body=f, headers={
                "Content-Type": "application/octet-stream", "Content-Length": str(size)})
    else:
        st, _, body = h.req("PUT", with_digest(loc, digest), body=data, headers={
            "Content-Type": "application/octet-stream"})
    if st != 201:
        raise BenchError(f"PUT blob {repo}@{digest}: HTTP {st} {body[:200]!r}")


def put_manifest(h, repo, ref, data, media=OCI_MANIFEST):
    st, _, body = h.req("PUT", f"/v2/{repo}/manifests/{ref}", body=data,
                        headers={"Content-Type": media})
    if st != 201:
        raise BenchError(f"PUT manifest {repo}:{ref}: HTTP {st} {body[:200]!r}")


def run(argv, timeout, env=None, check=True):
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=timeout, env=env)
    if check and r.returncode != 0:
        raise BenchError(f"{' '.join(argv)} -> {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r


# ---------------------------------------------------------------- statistics

def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def pct(xs, p):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    k = max(0, min(len(xs) - 1, int(round(p / 100.0 * len(xs) + 0.5)) - 1))
    return xs[k]


# ---------------------------------------------------------------- data

def gen_random_file(path, size, key_hex):
    """Deterministic incompressible bytes: AES-128-CTR keystream of key_hex."""
    h = hashlib.sha256()
    tmp = path + ".tmp"
    p = subprocess.Popen(["openssl", "enc", "-aes-128-ctr", "-nosalt", "-K", key_hex,
                          "-iv", "0" * 32, "-in", "/dev/zero"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        left = size
        with open(tmp, "wb") as out:
            while left:
                chunk = p.stdout.read(min(left, 4 * MIB))
                if not chunk:
                    raise BenchError("openssl keystream ended early")
                h.update(chunk)
                out.write(chunk)
                left -= len(chunk)
    finally:
        p.kill()
        p.wait()
    os.replace(tmp, path)
    return "sha256:" + h.hexdigest()


def make_data():
    """The deterministic image (config + 1 KiB, 1 MiB, 64 MiB layers) as an OCI
    layout for skopeo, plus MONO_BLOBS distinct 256 MiB blobs. Cached in
    build/bench/data; regenerated when missing or from another version."""
    meta_path = os.path.join(DATA_DIR, "data.json")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("version") == DATA_VERSION and all(
                os.path.getsize(b["path"]) == b["size"] for b in meta["blobs"].values()):
            return meta
    except (OSError, ValueError, KeyError):
        pass
    log("generating benchmark data (once; cached in build/bench/data)")
    shutil.rmtree(DATA_DIR, ignore_errors=True)
    oci = os.path.join(DATA_DIR, "oci")
    bdir = os.path.join(oci, "blobs", "sha256")
    os.makedirs(bdir)
    os.makedirs(os.path.join(DATA_DIR, "mono"))
    blobs = {}

    def put_file(name, tmp_path, digest, size):
        final = os.path.join(bdir, digest.split(":")[1])
        os.replace(tmp_path, final)
        blobs[name] = {"digest": digest, "size": size, "path": final}

    layers = []
    for i, (name, size) in enumerate(LAYERS):
        tmp = os.path.join(DATA_DIR, f"layer-{name}")
        d = gen_random_file(tmp, size, "%032x" % (0xB0 + i))
        put_file("layer-" + name, tmp, d, size)
        layers.append({"mediaType": OCI_LAYER, "digest": d, "size": size})
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/bin"], "Labels": {"org.georeg.bench": DATA_VERSION}},
        "rootfs": {"type": "layers", "diff_ids": [l["digest"] for l in layers]},
        "history": [{"created": "2026-01-01T00:00:00Z", "created_by": "bench"}] * len(layers),
    }, separators=(",", ":"), sort_keys=True).encode()
    cd = "sha256:" + hashlib.sha256(config).hexdigest()
    tmp = os.path.join(DATA_DIR, "config.tmp")
    with open(tmp, "wb") as f:
        f.write(config)
    put_file("config", tmp, cd, len(config))
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": cd, "size": len(config)},
        "layers": layers,
    }, separators=(",", ":")).encode()
    md = "sha256:" + hashlib.sha256(manifest).hexdigest()
    tmp = os.path.join(DATA_DIR, "manifest.tmp")
    with open(tmp, "wb") as f:
        f.write(manifest)
    put_file("manifest", tmp, md, len(manifest))
    with open(os.path.join(oci, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(oci, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                   "manifests": [{"mediaType": OCI_MANIFEST, "digest": md, "size": len(manifest),
                                  "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}, f)
    for i in range(MONO_BLOBS):
        path = os.path.join(DATA_DIR, "mono", f"blob{i}")
        d = gen_random_file(path, MONO_SIZE, "%032x" % (0xC0 + i))
        blobs[f"mono{i}"] = {"digest": d, "size": MONO_SIZE, "path": path}
    meta = {"version": DATA_VERSION, "blobs": blobs, "oci": oci,
            "image_bytes": sum(b["size"] for k, b in blobs.items() if not k.startswith("mono"))}
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=1)
    return meta


# ---------------------------------------------------------------- servers

class Server:
    def __init__(self, name, port, proc, log_path, pids_fn):
        self.name, self.port, self.proc, self.log_path = name, port, proc, log_path
        self._pids = pids_fn

    def pids(self):
        return self._pids()

    def rss_mib(self):
        return sum(proc_status_kib(p, "VmRSS") for p in self.pids()) / 1024.0

    def hwm_mib(self):
        return sum(proc_status_kib(p, "VmHWM") for p in self.pids()) / 1024.0

    def alive(self):
        return self.proc.poll() is None

    def check_alive(self):
        if not self.alive():
            raise BenchError(f"{self.name} exited with {self.proc.returncode} during the run:\n"
                             f"{tail(self.log_path)}")


def georeg_env(extra=None):
    env = dict(os.environ)
    env.setdefault("GEOREG_NODE_LOG_LEVEL", "warn")
    env.setdefault("GEOREG_HTTP_MAX_CONNECTIONS", "4096")
    # every load generator and the idle-connection figure come from 127.0.0.1
    env.setdefault("GEOREG_HTTP_MAX_CONNECTIONS_PER_ADDRESS", "0")
    env.update(extra or {})
    return env


def start_georeg(name, data_dir, extra_env=None):
    port = free_port()
    log_path = os.path.join(RUN_DIR, f"{name}.log")
    argv = [GEOREG, "serve", "--listen", f"127.0.0.1:{port}", "--data", data_dir, "--name", "bench",
            "--auth", "none"]
    note_cmd("server_georeg", argv, {k: v for k, v in georeg_env(extra_env).items()
                                     if k.startswith("GEOREG_")})
    p = PROCS.start(name, argv, log_path, env=georeg_env(extra_env))
    wait_http(port, "/readyz", p, log_path)
    return Server(name, port, p, log_path, lambda: [p.pid])


def start_distribution():
    port = free_port()
    root = os.path.join(RUN_DIR, "distribution")
    os.makedirs(root, exist_ok=True)
    cfg = os.path.join(RUN_DIR, "distribution.yml")
    with open(cfg, "w") as f:
        f.write(f"""version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:{port}
""")
    log_path = os.path.join(RUN_DIR, "distribution.log")
    note_cmd("server_distribution", ["/usr/bin/docker-registry", "serve", cfg])
    note_config("distribution.yml", cfg)
    p = PROCS.start("distribution", ["/usr/bin/docker-registry", "serve", cfg], log_path)
    wait_http(port, "/v2/", p, log_path)
    return Server("distribution", port, p, log_path, lambda: [p.pid])


def start_nginx():
    port = free_port()
    prefix = os.path.join(RUN_DIR, "nginx")
    for d in ("root", "dav", "tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        os.makedirs(os.path.join(prefix, d), exist_ok=True)
    conf = os.path.join(prefix, "nginx.conf")
    user = "user root;\n" if os.geteuid() == 0 else ""
    with open(conf, "w") as f:
        f.write(f"""{user}worker_processes auto;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    types {{ }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {prefix}/root;
        location = /v2/ {{
            add_header Docker-Distribution-API-Version registry/2.0;
            default_type application/json;
            return 200 '{{}}';
        }}
        location ~ ^/v2/.+/manifests/ {{
            default_type {OCI_MANIFEST};
        }}
        location /v2/ {{
            default_type application/octet-stream;
        }}
        location /upload/ {{
            root {prefix}/dav;
            dav_methods PUT;
            create_full_put_path on;
            client_max_body_size 0;
        }}
    }}
}}
""")
    log_path = os.path.join(RUN_DIR, "nginx.log")
    argv = ["/usr/sbin/nginx", "-p", prefix, "-c", conf, "-e", f"{prefix}/error.log"]
    note_cmd("server_nginx", argv)
    note_config("nginx.conf", conf)
    p = PROCS.start("nginx", argv, log_path)
    wait_http(port, "/v2/", p, log_path)
    time.sleep(0.2)
    PROCS.remember_children(p)
    return Server("nginx", port, p, log_path, lambda: [p.pid] + children(p.pid))


def manifest_for(cfg_digest, cfg_size, layers, annotation=None):
    m = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
         "config": {"mediaType": OCI_CONFIG, "digest": cfg_digest, "size": cfg_size},
         "layers": layers}
    if annotation:
        m["annotations"] = {"bench.n": annotation}
    return json.dumps(m, separators=(",", ":")).encode()


def small_config():
    cfg = json.dumps({"architecture": "amd64", "os": "linux",
                      "rootfs": {"type": "layers", "diff_ids": []}}, separators=(",", ":")).encode()
    return cfg, "sha256:" + hashlib.sha256(cfg).hexdigest()


def preload_registry(srv, data, tags=SMALL_TAGS):
    """bench/img with the image under `tags` tags (latest, t1..)."""
    b = data["blobs"]
    h = Http(srv.port)
    for name in ("config", "layer-1KiB", "layer-1MiB", "layer-64MiB"):
        upload_blob(h, "bench/img", b[name]["digest"], path=b[name]["path"])
    with open(b["manifest"]["path"], "rb") as f:
        man = f.read()
    for t in ["latest"] + [f"t{i}" for i in range(1, tags)]:
        put_manifest(h, "bench/img", t, man)
    h.close()


def preload_nginx(srv, data, tags=SMALL_TAGS):
    root = os.path.join(RUN_DIR, "nginx", "root", "v2", "bench", "img")
    os.makedirs(os.path.join(root, "manifests"), exist_ok=True)
    os.makedirs(os.path.join(root, "blobs"), exist_ok=True)
    b = data["blobs"]
    for name in ("config", "layer-1KiB", "layer-1MiB", "layer-64MiB"):
        os.link(b[name]["path"], os.path.join(root, "blobs", b[name]["digest"]))
    mpath = b["manifest"]["path"]
    for ref in ["latest"] + [f"t{i}" for i in range(1, tags)] + [b["manifest"]["digest"]]:
        os.link(mpath, os.path.join(root, "manifests", ref))


def verify_gets(srv, data):
    """The GET figures are only worth something if every server answers them right."""
    h = Http(srv.port)
    b = data["blobs"]
    st, hd, body = h.req("GET", "/v2/bench/img/manifests/latest", headers={"Accept": ACCEPT})
    if st != 200 or body != open(b["manifest"]["path"], "rb").read():
        raise BenchError(f"{srv.name}: manifest GET returned {st}")
    ct = hd.get("Content-Type", "")
    if ct.split(";")[0].strip() != OCI_MANIFEST:
        raise BenchError(f"{srv.name}: manifest Content-Type {ct!r}")
    st, _, body = h.req("GET", f"/v2/bench/img/blobs/{b['layer-1KiB']['digest']}")
    if st != 200 or len(body) != 1024:
        raise BenchError(f"{srv.name}: 1 KiB blob GET returned {st} ({len(body)} bytes)")
    h.close()


# ---------------------------------------------------------------- measurements

COMMANDS = {}   # figure -> one exact command line as run (for docs/BENCHMARKS.md)
CONFIGS = {}    # config file name -> its text, as run


def note_config(name, path):
    if name not in CONFIGS:
        with open(path) as f:
            CONFIGS[name] = f.read().replace(ROOT + "/", "")


def note_cmd(fig, argv, env=None):
    if fig not in COMMANDS:
        pre = " ".join(f"{k}={v}" for k, v in (env or {}).items())
        argv = [str(a).replace(ROOT + "/", "") for a in argv]  # relative to the repository
        COMMANDS[fig] = (pre + " " if pre else "") + " ".join(
            a if re.fullmatch(r"[\w@%+=:,./-]+", a) else "'" + a + "'" for a in argv)


def wrk(fig, port, path, threads, conns, secs, timeout="10s"):
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{secs}s", "--latency", f"--timeout", timeout,
            "-s", WRK_GET, f"http://127.0.0.1:{port}{path}"]
    note_cmd(fig, argv)
    r = run(argv, timeout=secs + 60)
    m = re.search(r"^BENCHJSON (\{.*\})$", r.stdout, re.M)
    if not m:
        raise BenchError(f"wrk printed no summary:\n{r.stdout}\n{r.stderr}")
    j = json.loads(m.group(1))
    dur = j["duration_us"] / 1e6
    j["rps"] = j["requests"] / dur
    j["mib_s"] = j["bytes"] / dur / MIB
    j["errors"] = j["connect_errors"] + j["read_errors"] + j["write_errors"] + j["status_errors"] + j["timeouts"]
    return j


def skopeo_env(tmp):
    """A fresh blob-info cache per run: as root, containers/image keeps it in
    /var/lib/containers/cache; with _CONTAINERS_ROOTLESS_UID set it uses
    $XDG_DATA_HOME/containers/cache instead, which we point into a temp dir."""
    env = dict(os.environ)
    env["_CONTAINERS_ROOTLESS_UID"] = str(os.getuid() or 1000)
    env["XDG_DATA_HOME"] = os.path.join(tmp, "xdg")
    env["HOME"] = tmp
    os.makedirs(env["XDG_DATA_HOME"], exist_ok=True)
    return env


def skopeo_copy(fig, src, dst, data):
    tmp = tempfile.mkdtemp(prefix="skopeo-", dir=RUN_DIR)
    try:
        env = skopeo_env(tmp)
        argv = ["skopeo", "copy", "--quiet", "--insecure-policy", "--preserve-digests",
                "--src-tls-verify=false" if src.startswith("docker:") else None,
                "--dest-tls-verify=false" if dst.startswith("docker:") else None,
                src, dst.replace("@TMP@", tmp)]
        argv = [a for a in argv if a]
        note_cmd(fig, argv, {"_CONTAINERS_ROOTLESS_UID": env["_CONTAINERS_ROOTLESS_UID"],
                             "XDG_DATA_HOME": "$(mktemp -d)"})
        t = time.monotonic()
        run(argv, timeout=300, env=env)
        el = time.monotonic() - t
        return data["image_bytes"] / el / MIB
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def mono_push(srv, blob, round_no):
    """POST, then PUT ?digest= with the 256 MiB body streamed by curl (-T).
    nginx: one WebDAV PUT of the same bytes. Timed from before POST to curl's exit."""
    h = Http(srv.port)
    t = time.monotonic()
    if srv.name == "nginx":
        url = f"http://127.0.0.1:{srv.port}/upload/r{round_no}.bin"
        ok = ("201", "204")
    else:
        st, hd, body = h.req("POST", "/v2/bench/mono/blobs/uploads/", headers={"Content-Length": "0"})
        if st != 202:
            raise BenchError(f"{srv.name}: POST upload: {st} {body[:200]!r}")
        url = f"http://127.0.0.1:{srv.port}" + with_digest(location_path(hd["Location"]), blob["digest"])
        ok = ("201",)
    argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Expect:",
            "-H", "Content-Type: application/octet-stream", "-T", blob["path"], url]
    note_cmd("mono_push_" + ("nginx" if srv.name == "nginx" else "registry"), argv)
    r = run(argv, timeout=300)
    el = time.monotonic() - t
    h.close()
    if r.stdout.strip() not in ok:
        raise BenchError(f"{srv.name}: monolithic PUT returned {r.stdout!r} {r.stderr!r}")
    os.sync()  # untimed: dirty pages of the servers that do not fsync do not leak into later figures
    return blob["size"] / el / MIB


def openssl_sha256():
    argv = ["openssl", "speed", "-evp", "sha256", "-bytes", "16384", "-seconds", "2"]
    note_cmd("sha256", argv)
    r = run(argv, timeout=60)
    m = re.search(r"^sha256\s+([\d.]+)k\s*$", r.stdout, re.M | re.I)
    if not m:
        raise BenchError(f"cannot parse openssl speed output:\n{r.stdout}")
    return float(m.group(1)) * 1000 / MIB


def disk_write_fsync(blob):
    """dd of a 256 MiB blob into the run dir with conv=fsync: what a server that
    makes a pushed blob durable (georeg) can do at most on this disk."""
    out = os.path.join(RUN_DIR, "dd-test")
    argv = ["dd", f"if={blob['path']}", f"of={out}", "bs=1M", "conv=fsync"]
    note_cmd("disk", argv)
    try:
        r = run(argv, timeout=120)
    finally:
        if os.path.exists(out):
            os.unlink(out)
    m = re.search(r"copied, ([\d.]+) s", r.stderr)
    if not m:
        raise BenchError(f"cannot parse dd output: {r.stderr}")
    return blob["size"] / float(m.group(1)) / MIB


def tcp_stream():
    argv = [TCPSTREAM, "2", str(256 * 1024)]
    note_cmd("tcp", argv)
    return json.loads(run(argv, timeout=60).stdout)["mib_per_s"]


def nng_stream(malloc="georeg"):
    """The replication transport's ceiling: nng pair1 over tcp, 1 MiB messages, with
    georeg's malloc settings ("georeg") or glibc's ("default")."""
    port = free_port()
    argv = [NNGSTREAM, f"tcp://127.0.0.1:{port}", malloc]
    note_cmd("nng", argv)
    return json.loads(run(argv, timeout=60).stdout)["mib_per_s"]


def hold_connections(port, n):
    """Opens n keep-alive connections, sends GET /v2/ on each, reads the answer, holds."""
    socks = []
    req = f"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        socks.append(s)
        s.sendall(req)
    for s in socks:
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise BenchError(f"server on :{port} closed an idle-test connection")
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        need = int(m.group(1)) if m else 0
        while len(rest) < need:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
        if not head.startswith(b"HTTP/1.1 200"):
            raise BenchError(f"idle-test GET /v2/ on :{port}: {head[:60]!r}")
    return socks


# ---------------------------------------------------------------- growth

def populate_wrk(port, mode, n, repo, prefix, cfg_digest, cfg_size, fig=None):
    env = dict(os.environ, POP_MODE=mode, POP_N=str(n), POP_REPO=repo, POP_PREFIX=prefix,
               POP_CFG=cfg_digest, POP_CFGSIZE=str(cfg_size))
    argv = ["wrk", "-t1", "-c8", "-d600s", "--timeout", "30s", "-s", WRK_POP, f"http://127.0.0.1:{port}"]
    note_cmd(fig or "populate_" + mode, argv, {"POP_MODE": mode, "POP_N": n, "POP_REPO": repo,
                                        "POP_PREFIX": prefix})
    r = run(argv, timeout=900, env=env, check=False)
    if r.returncode != 0:
        raise BenchError(f"populate {mode}: wrk exit {r.returncode}: {r.stderr[-1000:]}")


def list_all(h, path, key):
    out, last = [], None
    while True:
        q = path + "?n=10000" + (f"&last={urllib.parse.quote(last, safe='')}" if last else "")
        st, _, body = h.req("GET", q)
        if st != 200:
            raise BenchError(f"GET {q}: {st}")
        page = json.loads(body).get(key) or []
        out += page
        if len(page) < 10000:
            return out
        last = page[-1]


def populate_growth(srv, data, ntags, nrepos):
    """bench/img with ntags tags in total and nrepos repositories in the catalog.
    The first SMALL_TAGS tags and the image come from preload_registry; the rest
    are small distinct manifests sharing one config blob (fast to push)."""
    preload_registry(srv, data)
    h = Http(srv.port)
    cfg, cd = small_config()
    upload_blob(h, "bench/img", cd, data=cfg)
    extra_tags = ntags - SMALL_TAGS
    extra_repos = nrepos - 1
    if extra_tags >= 1000:
        populate_wrk(srv.port, "tags", extra_tags, "bench/img", "p", cd, len(cfg))
    if extra_repos >= 1000:
        populate_wrk(srv.port, "mount", extra_repos, "bench/img", "bench/r", cd, len(cfg))
        populate_wrk(srv.port, "repos", extra_repos, "bench/img", "bench/r", cd, len(cfg))
    # verify, and fill whatever is missing (or everything, for small sets) with Python
    have = set(list_all(h, "/v2/bench/img/tags/list", "tags"))
    for i in range(extra_tags):
        t = "p%06d" % i
        if t not in have:
            put_manifest(h, "bench/img", t, manifest_for(cd, len(cfg), [], t))
    repos = set(list_all(h, "/v2/_catalog", "repositories"))
    for i in range(extra_repos):
        r = "bench/r%06d" % i
        if r not in repos:
            st, _, body = h.req("POST", f"/v2/{r}/blobs/uploads/?mount={cd}&from=bench/img",
                                headers={"Content-Length": "0"})
            if st != 201:
                raise BenchError(f"mount into {r}: {st} {body[:200]!r}")
            put_manifest(h, r, "latest", manifest_for(cd, len(cfg), [], r))
    ntag = len(list_all(h, "/v2/bench/img/tags/list", "tags"))
    nrep = len(list_all(h, "/v2/_catalog", "repositories"))
    h.close()
    if ntag != ntags or nrep != nrepos:
        raise BenchError(f"growth instance has {ntag} tags / {nrep} repos, wanted {ntags} / {nrepos}")
    return {"tags": ntag, "repos": nrep}


def tag_put_rate(srv, prefix):
    """New-tag manifest PUTs per second (small manifests, wrk -t1 -c8): the rate
    at which a registry can be populated, and what a push of a tagged image ends with."""
    n = 300 if QUICK else 1000
    h = Http(srv.port)
    cfg, cd = small_config()
    upload_blob(h, "bench/tagrate", cd, data=cfg)
    h.close()
    t = time.monotonic()
    populate_wrk(srv.port, "tags", n, "bench/tagrate", prefix, cd, len(cfg), fig="tag_put")
    return n / (time.monotonic() - t)


# ---------------------------------------------------------------- replication

class Pair:
    """A primary and one secondary georeg on loopback, optionally through faultproxy."""

    def __init__(self, tag, via_proxy=False):
        self.tag = tag
        self.dir = os.path.join(RUN_DIR, f"repl-{tag}")
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        self.via_proxy = via_proxy
        self.fp = None
        self.procs = []

    def start(self):
        self.p_port, self.s_port, self.r_port = free_port(), free_port(), free_port()
        target = self.r_port
        if self.via_proxy:
            sys.path.insert(0, FAULTPROXY_PY_DIR)
            from faultproxy import FaultProxy  # tests/tools/faultproxy.py
            self.fp = FaultProxy(target_port=self.r_port, binary=FAULTPROXY,
                                 log_path=os.path.join(self.dir, "faultproxy.log"))
            self.fp.start()
            target = self.fp.port
        with open(os.path.join(self.dir, "secondary.yaml"), "w") as f:
            f.write(f"node: {{name: us, data_dir: {self.dir}/us}}\n"
                    f"http: {{listen: 127.0.0.1:{self.s_port}}}\n"
                    f"replication: {{role: secondary, listen: \"tcp://127.0.0.1:{self.r_port}\", "
                    f"insecure: true}}\nauth: {{mode: none}}\n")
        with open(os.path.join(self.dir, "primary.yaml"), "w") as f:
            f.write(f"node: {{name: eu, data_dir: {self.dir}/eu}}\n"
                    f"http: {{listen: 127.0.0.1:{self.p_port}}}\n"
                    "replication:\n  role: primary\n  insecure: true\n  replicas:\n"
                    f"    - {{name: us, address: \"tcp://127.0.0.1:{target}\"}}\n"
                    "auth: {mode: none}\n")
        for role, port in (("secondary", self.s_port), ("primary", self.p_port)):
            lp = os.path.join(self.dir, f"{role}.log")
            argv = [GEOREG, "serve", "--config", os.path.join(self.dir, f"{role}.yaml")]
            note_cmd(f"server_replication_{role}", argv)
            note_config(f"replication {'proxied ' if self.via_proxy else ''}{role}.yaml",
                        os.path.join(self.dir, f"{role}.yaml"))
            p = PROCS.start(f"{self.tag}-{role}", argv, lp, env=georeg_env())
            self.procs.append(p)
            wait_http(port, "/readyz", p, lp)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            st = self.status()
            reps = st.get("replicas") or []
            if reps and reps[0].get("state") == "in-sync":
                return self
            time.sleep(0.05)
        raise BenchError(f"replica never in-sync: {self.status()}\n"
                         f"{tail(os.path.join(self.dir, 'primary.log'))}")

    def status(self):
        st, _, body = Http(self.p_port, timeout=10).req("GET", "/_georeg/v1/replication")
        return json.loads(body) if st == 200 else {}

    def stop(self):
        for p in reversed(self.procs):
            PROCS.stop(p)
        self.procs = []
        if self.fp is not None:
            self.fp.stop()
            self.fp = None
        if not KEEP:
            shutil.rmtree(self.dir, ignore_errors=True)


def repl_small_pushes(pair, n, start_index):
    """n pushes (unique 1 KiB layer + manifest) to the primary; for each, the time
    from the manifest PUT's 201 to a 200 for the same manifest on the secondary."""
    p, s = Http(pair.p_port), Http(pair.s_port)
    cfg, cd = small_config()
    upload_blob(p, "bench/small", cd, data=cfg)
    out = []
    for i in range(start_index, start_index + n):
        layer = (b"georeg-bench-small-push-%08d-" % i).ljust(1024, b".")
        ld = "sha256:" + hashlib.sha256(layer).hexdigest()
        upload_blob(p, "bench/small", ld, data=layer)
        man = manifest_for(cd, len(cfg), [{"mediaType": OCI_LAYER, "digest": ld, "size": len(layer)}])
        put_manifest(p, "bench/small", f"s{i}", man)
        t = time.monotonic()
        while True:
            st, _, _ = s.req("GET", f"/v2/bench/small/manifests/s{i}", headers={"Accept": ACCEPT})
            el = time.monotonic() - t
            if st == 200:
                break
            if el > 10:
                el = None
                break
            time.sleep(0.001)
        out.append(None if el is None else el * 1000)
    p.close()
    s.close()
    return out


def repl_big(pair, blob):
    """Pushes a 256 MiB blob to the primary; MiB/s from the 201 until the secondary
    serves it (HEAD 200). If that takes longer than REPL_WAIT_S, the rate is taken
    from the primary's bytes_sent and marked partial."""
    h = Http(pair.p_port)
    st, hd, body = h.req("POST", "/v2/bench/big/blobs/uploads/", headers={"Content-Length": "0"})
    if st != 202:
        raise BenchError(f"replication POST: {st}")
    url = f"http://127.0.0.1:{pair.p_port}" + with_digest(location_path(hd["Location"]), blob["digest"])
    sent0 = (pair.status().get("replicas") or [{}])[0].get("bytes_sent", 0)
    argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Expect:",
            "-H", "Content-Type: application/octet-stream", "-T", blob["path"], url]
    note_cmd("replication_push", argv)
    t0 = time.monotonic()
    r = run(argv, timeout=300)
    t = time.monotonic()
    push_s = round(t - t0, 2)
    if r.stdout.strip() != "201":
        raise BenchError(f"replication push: {r.stdout!r}")
    s = Http(pair.s_port)
    while True:
        st, _, _ = s.req("HEAD", f"/v2/bench/big/blobs/{blob['digest']}")
        el = time.monotonic() - t
        if st == 200:
            s.close()
            return {"mib_s": blob["size"] / el / MIB, "seconds": el, "partial": False, "push_s": push_s}
        if el > REPL_WAIT_S:
            rep = (pair.status().get("replicas") or [{}])[0]
            sent = rep.get("bytes_sent", 0) - sent0
            s.close()
            return {"mib_s": sent / el / MIB, "seconds": el, "partial": True, "replica": rep,
                    "push_s": push_s}
        time.sleep(0.005)


# ---------------------------------------------------------------- report

def fmt(v, unit=""):
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    if abs(v) >= 100:
        s = f"{v:,.0f}"
    elif abs(v) >= 10:
        s = f"{v:.1f}"
    elif abs(v) >= 1:
        s = f"{v:.2f}"
    else:
        s = f"{v:.3f}"
    return s


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def verdict(ok):
    return "—" if ok is None else ("meets" if ok else "**misses**")


def build_tables(R):
    med = lambda fig, srv: median(R["samples"].get(fig, {}).get(srv, []))
    rows = []

    def row(label, fig, unit, target, check, servers=SERVERS, note="", ratios=True):
        vals = {s: med(fig, s) if s in servers else None for s in SERVERS}
        g, d, n = vals["georeg"], vals["distribution"], vals["nginx"]
        ok = check(g, d, n) if g is not None else None
        rd, rn = (ratio(g, d), ratio(g, n)) if ratios else (None, None)
        rows.append([label, unit, fmt(g), fmt(d), fmt(n), fmt(rd), fmt(rn), target + note, verdict(ok)])

    local = median(R["samples"].get("skopeo_local", {}).get("skopeo", []))
    if "skopeo_push" in R["samples"]:
        g = med("skopeo_push", "georeg")
        row("skopeo push (fresh blob-info cache)", "skopeo_push", "MiB/s", "≥ 0.9× skopeo local copy",
            lambda g, d, n: None if local is None else g >= 0.9 * local,
            servers=["georeg", "distribution"],
            note=f" ({fmt(local)}): georeg/local {fmt(ratio(g, local))}")
    if "skopeo_pull" in R["samples"]:
        g = med("skopeo_pull", "georeg")
        row("skopeo pull (fresh blob-info cache)", "skopeo_pull", "MiB/s", "≥ 0.9× skopeo local copy",
            lambda g, d, n: None if local is None else g >= 0.9 * local,
            note=f" ({fmt(local)}): georeg/local {fmt(ratio(g, local))}")
    if "mono_push" in R["samples"]:
        row("monolithic 256 MiB push, curl (nginx: WebDAV PUT)", "mono_push", "MiB/s",
            "≥ 2× Distribution and ≥ 0.8× nginx",
            lambda g, d, n: (d is None or g >= 2 * d) and (n is None or g >= 0.8 * n))
    if "tag_put_rps" in R["samples"]:
        row("manifest PUT, new tag, wrk -t1 -c8", "tag_put_rps", "req/s", "(none)", lambda g, d, n: None,
            servers=["georeg", "distribution"])
    if "manifest_rps" in R["samples"]:
        row("manifest GET by tag, wrk -t2 -c64", "manifest_rps", "req/s", "≥ 0.7× nginx",
            lambda g, d, n: None if n is None else g >= 0.7 * n)
        row("manifest GET p99", "manifest_p99", "ms", "≤ 2× nginx's",
            lambda g, d, n: None if n is None else g <= 2 * n)
    if "blob1k_rps" in R["samples"]:
        row("1 KiB blob GET, wrk -t2 -c64", "blob1k_rps", "req/s", "≥ 0.7× nginx",
            lambda g, d, n: None if n is None else g >= 0.7 * n)
        row("1 KiB blob GET p99", "blob1k_p99", "ms", "(none)", lambda g, d, n: None)
    if "blob64m_mibs" in R["samples"]:
        row("64 MiB blob GET, wrk -t2 -c8", "blob64m_mibs", "MiB/s", "≥ 0.8× nginx",
            lambda g, d, n: None if n is None else g >= 0.8 * n)
    if "rss_idle" in R["samples"]:
        row("RSS idle (after preload)", "rss_idle", "MiB", "(none)", lambda g, d, n: None)
    if "rss_peak" in R["samples"]:
        row("RSS peak during the run (VmHWM)", "rss_peak", "MiB", "≤ 0.25× Distribution's",
            lambda g, d, n: None if d is None else g <= 0.25 * d)
    if "rss_conns" in R["samples"]:
        row(f"RSS with {IDLE_CONNS} idle keep-alive connections (end of run)", "rss_conns", "MiB",
            "< 64 MiB", lambda g, d, n: g < 64)
        row(f"… of which the {IDLE_CONNS} connections added", "rss_conns_delta", "MiB", "(none)",
            lambda g, d, n: None, ratios=False)
    main = rows

    lim = []
    sha = median(R["samples"].get("sha256", {}).get("openssl", []))
    tcp = median(R["samples"].get("tcp", {}).get("tcpstream", []))
    if sha is not None:
        lim.append(["SHA-256, one core (openssl speed -evp sha256, 16 KiB blocks)", "MiB/s", fmt(sha)])
    if tcp is not None:
        lim.append(["loopback TCP, one stream (tcpstream, 256 KiB writes)", "MiB/s", fmt(tcp)])
    nng = median(R["samples"].get("nng", {}).get("nngstream", []))
    if nng is not None:
        lim.append(["nng pair1 over tcp, 1 MiB messages, no processing, georeg's malloc "
                    "settings (nngstream georeg)", "MiB/s", fmt(nng)])
    nngd = median(R["samples"].get("nng", {}).get("nngstream_default_malloc", []))
    if nngd is not None:
        lim.append(["… the same with glibc's default malloc settings (nngstream default)",
                    "MiB/s", fmt(nngd)])
    disk = median(R["samples"].get("disk", {}).get("dd", []))
    if disk is not None:
        lim.append(["disk: write + fsync of 256 MiB (dd bs=1M conv=fsync)", "MiB/s", fmt(disk)])
    if local is not None:
        lim.append(["skopeo oci: → oci: local copy of the image", "MiB/s", fmt(local)])

    rep = []
    vis = R["samples"].get("repl_visible_ms", {}).get("georeg", [])
    if vis:
        done = [x for x in vis if x is not None]
        lost = len(vis) - len(done)
        p99 = pct(done, 99) if not lost else None
        rep.append([f"201 → pullable on secondary, median ({len(vis)} pushes)", "ms", fmt(median(done)),
                    "", "", "—"])
        rep.append(["201 → pullable on secondary, p99", "ms", fmt(p99) if p99 is not None else f"{lost} timed out",
                    "", "< 100 ms", verdict(p99 is not None and p99 < 100)])
    for fig, label, k in (("repl_tput_direct", "256 MiB layer, direct (no proxy)", None),
                          ("repl_tput_0", "256 MiB layer through faultproxy, +0 ms", 0.5),
                          ("repl_tput_50", "256 MiB layer through faultproxy, +50 ms each way", 0.3)):
        xs = R["samples"].get(fig, {}).get("georeg", [])
        if not xs and fig == "repl_tput_50" and R.get("repl_pending"):
            rep.append([label, "MiB/s", "pending", "", R["repl_pending"], "—"])
            continue
        if not xs:
            continue
        v = median(xs)
        partial = any(R["samples"].get(fig + "_partial", {}).get("georeg", []))
        r_ = ratio(v, tcp)
        rep.append([label + (" (partial: timed out)" if partial else ""), "MiB/s", fmt(v),
                    fmt(r_), f"≥ {k}× loopback stream" if k else "(reference)",
                    verdict(None if k is None or r_ is None else r_ >= k)])

    gro = []
    for fig, label, unit, hib in (("g_manifest_rps", "manifest GET req/s, wrk -t2 -c64", "req/s", True),
                                  ("g_tags100", "tags list page n=100 (first page), wrk -c1 p50", "ms", False),
                                  ("g_tags10", "tags list page n=10 (same entries both sides), p50", "ms", False),
                                  ("g_tagsmid", "tags list page n=10 deep in the list (last=), p50", "ms", False),
                                  ("g_cat100", "catalog page n=100 (first page), wrk -c1 p50", "ms", False),
                                  ("g_cat10", "catalog page n=10 (same entries both sides), p50", "ms", False)):
        if fig not in R["samples"]:
            continue
        a = median(R["samples"][fig].get("small", []))
        b = median(R["samples"][fig].get("big", []))
        r_ = ratio(b, a)
        ok = None if r_ is None else (r_ >= 0.9 if hib else r_ <= 1.1)
        gro.append([label, unit, fmt(a), fmt(b), fmt(r_), "within 10%", verdict(ok)])
    return main, lim, rep, gro


def md_table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def render(R):
    main, lim, rep, gro = build_tables(R)
    m = R["meta"]
    parts = [f"Run {m['date']} on {m['machine']['cpus']} cores ({m['machine']['cpu_model']}), "
             f"{m['machine']['mem_gib']:.1f} GiB RAM, kernel {m['machine']['kernel']}; "
             f"georeg {m['georeg_commit']}; {m['rounds']} interleaved round(s), medians"
             f"{' (QUICK mode)' if m['quick'] else ''}; total {m['elapsed_s']:.0f} s. "
             f"Other processes on the machine used {m['other_load_cores']:.2f} cores on average "
             f"during the run (load average {m['loadavg_start_end'][0]:.1f} at the start, "
             f"{m['loadavg_start_end'][1]:.1f} at the end)."]
    if main:
        parts.append(md_table(["figure", "unit", "georeg", "Distribution", "nginx", "georeg/Distribution",
                               "georeg/nginx", "target", "vs target"], main))
    if lim:
        parts.append("Limits of this machine:\n\n" + md_table(["limit", "unit", "value"], lim))
    if rep:
        parts.append("Replication (primary + one secondary on loopback):\n\n" +
                     md_table(["figure", "unit", "georeg", "ratio to loopback stream", "target", "vs target"], rep))
    if gro:
        parts.append(f"Growth (georeg; data dirs on tmpfs for both instances): {SMALL_TAGS} tags / "
                     f"{SMALL_REPOS} repos versus {R.get('growth', {}).get('tags', GROWTH_TAGS):,} tags / "
                     f"{R.get('growth', {}).get('repos', GROWTH_REPOS):,} repos:\n\n" +
                     md_table(["figure", "unit", f"{SMALL_TAGS} tags", "100,000 tags" if not QUICK
                               else f"{GROWTH_TAGS:,} tags", "big/small", "target", "vs target"], gro))
    if R.get("notes"):
        parts.append("Notes:\n\n" + "\n".join(f"- {n}" for n in R["notes"]))
    return "\n\n".join(parts) + "\n"


def cpu_busy_seconds():
    """Busy CPU seconds of the whole machine since boot (all cores, /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds():
    """CPU seconds of this process and every child it has waited for (servers, wrk, ...)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def machine_info():
    cpu_model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) / 1024 / 1024
    return {"cpus": os.cpu_count(), "cpu_model": cpu_model, "mem_gib": mem,
            "kernel": platform.release(), "os": platform.platform()}


def versions():
    def first(argv, pat=None):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            s = (r.stdout + r.stderr).strip().splitlines()
            return s[0] if s else ""
        except (OSError, subprocess.TimeoutExpired):
            return ""
    return {"distribution": first(["/usr/bin/docker-registry", "--version"]),
            "nginx": first(["/usr/sbin/nginx", "-v"]),
            "wrk": first(["wrk", "-v"]), "skopeo": first(["skopeo", "--version"]),
            "curl": first(["curl", "--version"]), "openssl": first(["openssl", "version"])}


def git_commit():
    try:
        c = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                           text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return c + ("+dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def update_docs(R, table_md):
    begin, end = "<!-- bench:begin (generated by scripts/bench/bench.py) -->", "<!-- bench:end -->"
    cmds = "\n".join(f"    {k}: {v}" for k, v in sorted(COMMANDS.items()))
    block = (f"{begin}\n\n## Latest run\n\n{table_md}\n"
             f"Versions: " + "; ".join(f"{k} `{v}`" for k, v in R["meta"]["versions"].items()) + "\n\n"
             f"Exact commands of this run (ports are picked free per run):\n\n{cmds}\n\n"
             + "".join(f"<details><summary>{name}</summary>\n\n```\n{text.rstrip()}\n```\n\n</details>\n\n"
                       for name, text in sorted(CONFIGS.items()))
             + end)
    try:
        with open(DOC_PATH) as f:
            text = f.read()
    except OSError:
        text = "# Benchmarks\n\n" + begin + "\n" + end + "\n"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    os.makedirs(os.path.dirname(DOC_PATH), exist_ok=True)
    with open(DOC_PATH, "w") as f:
        f.write(text)


# ---------------------------------------------------------------- main

def add(R, fig, who, v):
    R["samples"].setdefault(fig, {}).setdefault(who, []).append(v)


def rotate(xs, r):
    r %= len(xs)
    return xs[r:] + xs[:r]


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < min(hard, 16384):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 16384), hard))
    for tool in ("wrk", "skopeo", "curl", "openssl", "/usr/bin/docker-registry", "/usr/sbin/nginx"):
        if not shutil.which(tool):
            raise BenchError(f"{tool} not found (scripts/install-deps.sh --bench installs it)")
    for f in (GEOREG_BUILT, TCPSTREAM):
        if not os.access(f, os.X_OK):
            raise BenchError(f"{f} missing (run via scripts/bench/run.sh)")
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    os.makedirs(RUN_DIR)
    os.makedirs(os.path.dirname(GEOREG))
    shutil.copy2(GEOREG_BUILT, GEOREG)
    os.makedirs(RESULTS_DIR, exist_ok=True)
    shm = None
    R = {"samples": {}, "wrk": [], "notes": [], "phases": {}}
    R["meta"] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "quick": QUICK, "rounds": ROUNDS,
                 "machine": machine_info(), "versions": versions(), "georeg_commit": git_commit(),
                 "georeg_sha256": hashlib.sha256(open(GEOREG_BUILT, "rb").read()).hexdigest()[:16],
                 "settings": {"wrk_d": WRK_D, "wrk_big_d": WRK_BIG_D, "growth_d": GROWTH_D,
                              "growth_tags": GROWTH_TAGS, "growth_repos": GROWTH_REPOS,
                              "repl_pushes": REPL_PUSHES, "page_d": PAGE_D}}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    busy0, own0, load0 = cpu_busy_seconds(), own_cpu_seconds(), os.getloadavg()[0]
    try:
        data = make_data()
        R["meta"]["image_bytes"] = data["image_bytes"]
        b = data["blobs"]

        def phase(name):
            R["phases"][name] = round(time.monotonic() - T0, 1)
            log(name)

        need_main = any(want(s) for s in ("skopeo", "mono", "put", "get", "rss"))
        srv = {}
        if need_main:
            phase("starting georeg, Distribution, nginx")
            srv["georeg"] = start_georeg("georeg", os.path.join(RUN_DIR, "georeg"))
            srv["distribution"] = start_distribution()
            srv["nginx"] = start_nginx()
            preload_registry(srv["georeg"], data)
            preload_registry(srv["distribution"], data)
            preload_nginx(srv["nginx"], data)
            for s in SERVERS:
                verify_gets(srv[s], data)
        grow = {}
        if want("growth"):
            phase(f"growth: populating {GROWTH_TAGS:,} tags and {GROWTH_REPOS:,} repos (georeg)")
            base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else RUN_DIR
            if base == RUN_DIR:
                R["notes"].append("growth instances on disk: /dev/shm not writable")
            shm = tempfile.mkdtemp(prefix="georeg-bench-", dir=base)
            with open(os.path.join(RUN_DIR, "tmpdirs"), "a") as f:
                f.write(shm + "\n")  # run.sh removes it if we die without cleanup
            grow["small"] = start_georeg("growth-small", os.path.join(shm, "small"))
            grow["big"] = start_georeg("growth-big", os.path.join(shm, "big"))
            t = time.monotonic()
            R["growth_small"] = populate_growth(grow["small"], data, SMALL_TAGS, SMALL_REPOS)
            R["growth"] = populate_growth(grow["big"], data, GROWTH_TAGS, GROWTH_REPOS)
            R["growth"]["populate_s"] = round(time.monotonic() - t, 1)
            R["growth"]["puts_per_s"] = round((GROWTH_TAGS + 2 * GROWTH_REPOS) / (time.monotonic() - t))
            log(f"populated in {R['growth']['populate_s']} s")
        all_srv = list(srv.values()) + list(grow.values())
        log("waiting for the servers to go quiet")
        wait_quiet([p for s in all_srv for p in s.pids()])
        if need_main:
            for s in SERVERS:
                add(R, "rss_idle", s, srv[s].rss_mib())

        for r in range(ROUNDS):
            order = rotate(SERVERS, r)
            log(f"round {r + 1}/{ROUNDS}, order {', '.join(order)}")
            if want("skopeo"):
                phase(f"r{r + 1} skopeo")
                add(R, "skopeo_local", "skopeo",
                    skopeo_copy("skopeo_local", f"oci:{data['oci']}:latest", "oci:@TMP@/local:latest", data))
                for s in order:
                    if s != "nginx":
                        add(R, "skopeo_push", s, skopeo_copy(
                            "skopeo_push", f"oci:{data['oci']}:latest",
                            f"docker://127.0.0.1:{srv[s].port}/bench/push{r}:latest", data))
                for s in order:
                    add(R, "skopeo_pull", s, skopeo_copy(
                        "skopeo_pull", f"docker://127.0.0.1:{srv[s].port}/bench/img:latest",
                        "oci:@TMP@/pull:latest", data))
            if want("mono"):
                phase(f"r{r + 1} monolithic push")
                for s in order:
                    add(R, "mono_push", s, mono_push(srv[s], b[f"mono{r % MONO_BLOBS}"], r))
            if want("put"):
                phase(f"r{r + 1} manifest PUT rate")
                for s in order:
                    if s != "nginx":
                        add(R, "tag_put_rps", s, tag_put_rate(srv[s], f"q{r}-"))
            if want("get"):
                phase(f"r{r + 1} manifest GET")
                for s in order:
                    perf = None
                    if PERF and r == 0 and s == "georeg" and shutil.which("perf"):
                        perf = subprocess.Popen(["perf", "record", "-g", "-o",
                                                 os.path.join(RUN_DIR, "perf-manifest.data"),
                                                 "-p", str(srv[s].proc.pid), "--", "sleep", str(WRK_D)],
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    j = wrk("manifest_get", srv[s].port, "/v2/bench/img/manifests/latest", 2, 64, WRK_D)
                    if perf:
                        perf.wait(timeout=60)
                    R["wrk"].append({"fig": "manifest", "server": s, "round": r, **j})
                    add(R, "manifest_rps", s, j["rps"])
                    add(R, "manifest_p99", s, j["lat_p99_us"] / 1000)
                phase(f"r{r + 1} 1 KiB blob GET")
                for s in order:
                    j = wrk("blob1k_get", srv[s].port, f"/v2/bench/img/blobs/{b['layer-1KiB']['digest']}",
                            2, 64, WRK_D)
                    R["wrk"].append({"fig": "blob1k", "server": s, "round": r, **j})
                    add(R, "blob1k_rps", s, j["rps"])
                    add(R, "blob1k_p99", s, j["lat_p99_us"] / 1000)
                phase(f"r{r + 1} 64 MiB blob GET")
                for s in order:
                    j = wrk("blob64m_get", srv[s].port, f"/v2/bench/img/blobs/{b['layer-64MiB']['digest']}",
                            2, 8, WRK_BIG_D, timeout="60s")
                    R["wrk"].append({"fig": "blob64m", "server": s, "round": r, **j})
                    add(R, "blob64m_mibs", s, j["mib_s"])
            if want("limits"):
                phase(f"r{r + 1} limits")
                add(R, "sha256", "openssl", openssl_sha256())
                add(R, "tcp", "tcpstream", tcp_stream())
                add(R, "nng", "nngstream", nng_stream("georeg"))
                add(R, "nng", "nngstream_default_malloc", nng_stream("default"))
                add(R, "disk", "dd", disk_write_fsync(b["mono0"]))
            if want("growth"):
                phase(f"r{r + 1} growth")
                # small and big alternate for every page (AB, BA by round) and for the
                # GET load (ABBA), so drift and the other load on the machine hit
                # both alike; pages on quiet servers first, then the GET load (it
                # leaves audit flushes behind)
                ab = rotate(GROWTH, r)
                abba = ab + ab[::-1]
                for fig, paths in (("g_tags100", {"small": "/v2/bench/img/tags/list?n=100"}),
                                   ("g_tags10", {"small": "/v2/bench/img/tags/list?n=10"}),
                                   # deep in the list: 10 entries on big, the 9 after "latest" on small
                                   ("g_tagsmid", {"small": "/v2/bench/img/tags/list?n=10&last=latest",
                                                  "big": "/v2/bench/img/tags/list?n=10&last=p%06d"
                                                         % (GROWTH_TAGS // 2)}),
                                   ("g_cat100", {"small": "/v2/_catalog?n=100"}),
                                   ("g_cat10", {"small": "/v2/_catalog?n=10"})):
                    for g in ab:
                        wait_quiet(grow[g].pids(), timeout=10, window=0.2, max_ticks=1)
                        path = paths.get(g, paths["small"])
                        j = wrk("growth_page", grow[g].port, path, 1, 1, PAGE_D)
                        if j["errors"]:
                            raise BenchError(f"growth {g}: {path}: {j['errors']} errors")
                        add(R, fig, g, j["lat_p50_us"] / 1000)
                        add(R, fig + "_p99", g, j["lat_p99_us"] / 1000)
                for g in abba:
                    j = wrk("growth_manifest_get", grow[g].port, "/v2/bench/img/manifests/latest",
                            2, 64, GROWTH_D)
                    R["wrk"].append({"fig": "growth_manifest", "server": g, "round": r, **j})
                    add(R, "g_manifest_rps", g, j["rps"])
            for s in all_srv:
                s.check_alive()

        if want("rss") and need_main:
            phase(f"RSS peak and with {IDLE_CONNS} idle connections")
            for s in SERVERS:
                add(R, "rss_peak", s, srv[s].hwm_mib())
            for s in SERVERS:
                before = srv[s].rss_mib()
                socks = hold_connections(srv[s].port, IDLE_CONNS)
                try:
                    time.sleep(1.0)
                    add(R, "rss_conns", s, srv[s].rss_mib())
                    add(R, "rss_conns_delta", s, srv[s].rss_mib() - before)
                finally:
                    for so in socks:
                        so.close()
                time.sleep(0.5)
            if grow:
                R["growth_rss_mib"] = {g: grow[g].rss_mib() for g in GROWTH}

        for s in all_srv:
            s.check_alive()
        for s in all_srv:
            PROCS.stop(s.proc)

        if want("repl"):
            have_proxy = os.access(FAULTPROXY, os.X_OK) and os.path.exists(
                os.path.join(FAULTPROXY_PY_DIR, "faultproxy.py"))
            if not have_proxy:
                R["repl_pending"] = "tests/tools/faultproxy not available"
            per_round = [REPL_PUSHES // ROUNDS + (1 if i < REPL_PUSHES % ROUNDS else 0) for i in range(ROUNDS)]
            idx = 0
            for r in range(ROUNDS):
                if r > 0 and time.monotonic() - T0 > BUDGET_S - 40:
                    R["notes"].append(f"replication rounds {r + 1}-{ROUNDS} skipped: the run reached "
                                      f"{time.monotonic() - T0:.0f} s of its {BUDGET_S} s budget "
                                      "(the machine was slow)")
                    break
                phase(f"r{r + 1} replication")
                tm = {}
                R.setdefault("repl_timing", []).append(tm)

                def step(name, fn):
                    t = time.monotonic()
                    try:
                        return fn()
                    finally:
                        tm[name] = round(time.monotonic() - t, 2)

                def big256(pair, name, fig, blob):
                    """One 256 MiB layer: its replication rate under repl_tput_<fig>."""
                    res = step(f"{name}_256", lambda: repl_big(pair, blob))
                    tm[f"{name}_push_s"] = res["push_s"]
                    add(R, f"repl_tput_{fig}", "georeg", res["mib_s"])
                    add(R, f"repl_tput_{fig}_partial", "georeg", res["partial"])

                pair = Pair(f"direct{r}")
                try:
                    step("direct_start", pair.start)
                    for v in step("small_pushes", lambda: repl_small_pushes(pair, per_round[r], idx)):
                        add(R, "repl_visible_ms", "georeg", v)
                    idx += per_round[r]
                    big256(pair, "direct", "direct", b[f"mono{r % MONO_BLOBS}"])
                    R.setdefault("repl_status", []).append(pair.status())
                finally:
                    step("direct_stop", pair.stop)
                if not have_proxy:
                    continue
                pair = Pair(f"proxy{r}", via_proxy=True)
                try:
                    step("proxy_start", pair.start)
                    pair.fp.latency(0)
                    big256(pair, "proxy0", "0", b[f"mono{r % MONO_BLOBS}"])
                    pair.fp.latency(50)
                    big256(pair, "proxy50", "50", b[f"mono{(r + 1) % MONO_BLOBS}"])
                    R.setdefault("repl_status", []).append(pair.status())
                finally:
                    step("proxy_stop", pair.stop)
                log("replication steps (s): " + ", ".join(f"{k} {v}" for k, v in tm.items()))
    finally:
        PROCS.stop_all()
        if shm:
            shutil.rmtree(shm, ignore_errors=True)
        if not KEEP:
            shutil.rmtree(RUN_DIR, ignore_errors=True)

    R["notes"] += PROCS.slow_stops
    drate = median(R["samples"].get("tag_put_rps", {}).get("distribution", []))
    if want("growth") and "growth" in R:
        R["notes"].append(
            "Distribution growth figures skipped: populating it needs "
            f"{GROWTH_TAGS + 2 * GROWTH_REPOS:,} requests (tag PUTs, blob mounts, repo manifests)"
            + (f", about {(GROWTH_TAGS + 2 * GROWTH_REPOS) / drate:,.0f} s at its measured "
               f"{drate:,.0f} tag PUTs/s" if drate else "")
            + f", which does not fit the 10-minute budget. georeg's growth instances run on tmpfs "
            f"(populated at {R['growth']['puts_per_s']:,} requests/s in {R['growth']['populate_s']} s); "
            "reads come from the page cache either way.")
    R["meta"]["elapsed_s"] = time.monotonic() - T0
    # how busy the rest of the machine was: busy CPU time of all processes minus ours
    other = max(0.0, (cpu_busy_seconds() - busy0) - (own_cpu_seconds() - own0))
    R["meta"]["other_load_cores"] = other / R["meta"]["elapsed_s"]
    R["meta"]["loadavg_start_end"] = [load0, os.getloadavg()[0]]
    R["commands"] = COMMANDS
    R["configs"] = CONFIGS
    R["medians"] = {fig: {who: median(v) if not fig.endswith("_partial") else any(v)
                          for who, v in d.items()} for fig, d in R["samples"].items()}
    table = render(R)
    print()
    print(table)
    jpath = os.path.join(RESULTS_DIR, f"bench-{stamp}{'-quick' if QUICK else ''}.json")
    with open(jpath, "w") as f:
        json.dump(R, f, indent=1, default=str)
    with open(jpath[:-5] + ".md", "w") as f:
        f.write(table)
    latest = os.path.join(RESULTS_DIR, "latest.json")
    try:
        if os.path.lexists(latest):
            os.unlink(latest)
        os.symlink(os.path.basename(jpath), latest)
    except OSError:
        pass
    if DOCS and not ONLY:
        update_docs(R, table)
        log(f"updated {os.path.relpath(DOC_PATH, ROOT)}")
    log(f"results: {os.path.relpath(jpath, ROOT)} (total {R['meta']['elapsed_s']:.0f} s)")
    return 0


def _on_signal(signum, frame):
    print(f"bench: signal {signum}: stopping what was started", file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    # SIGINT too: run.sh starts us in the background, where a non-interactive
    # shell leaves SIGINT ignored, so Python would not raise KeyboardInterrupt
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _on_signal)
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        sys.exit(130)
