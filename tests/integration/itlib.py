"""Helpers for georeg's integration tests (stdlib only).

- Node: one registry process (georeg, or CNCF Distribution as a reference
  when GEOREG_TEST_TARGET=distribution) on a loopback port, with its data dir
  and a stderr log file; start / stop / kill9 / restart.
- http(): one raw HTTP request, returning status, headers and body.
- OCI helpers: blobs, manifests, and OCI image layout directories built
  locally with tarfile/json/hashlib, for skopeo to copy.
"""

import gzip
import hashlib
import http.client as httpclient
import io
import json
import os
import re
import signal
import socket
import subprocess
import tarfile
import time
import urllib.parse

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TARGET = os.environ.get("GEOREG_TEST_TARGET", "georeg")
IS_DISTRIBUTION = TARGET == "distribution"
GEOREG_BIN = os.environ.get("GEOREG_BIN", os.path.join(REPO_ROOT, "build", "georeg"))
DISTRIBUTION_BIN = os.environ.get("DISTRIBUTION_BIN", "/usr/bin/docker-registry")
ASAN = os.environ.get("GEOREG_ASAN", "") not in ("", "0")
TOOLS_DIR = os.path.join(REPO_ROOT, "build", "tools")

# Waits are bounded everywhere; the ASan build starts and runs slower.
START_TIMEOUT = 60.0 if ASAN else 30.0
STOP_TIMEOUT = float(os.environ.get("GEOREG_STOP_TIMEOUT", "15"))
HTTP_TIMEOUT = float(os.environ.get("GEOREG_TEST_HTTP_TIMEOUT", "40" if ASAN else "20"))
TOOL_TIMEOUT = float(os.environ.get("GEOREG_TEST_TOOL_TIMEOUT", "120" if ASAN else "60"))

# every node process alive right now, so that an interrupted run (SIGTERM,
# SIGINT, SIGHUP) still kills them by PID
LIVE = set()

SANITIZER_PATTERNS = ("ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer")

MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_OCI_EMPTY = "application/vnd.oci.empty.v1+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

EMPTY_JSON = b"{}"
EMPTY_JSON_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


# --------------------------------------------------------------------------
# small utilities

def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def tail(path, n=4000):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - n))
            return f.read().decode("utf-8", "replace")
    except OSError as e:
        return "<cannot read %s: %s>" % (path, e)


# --------------------------------------------------------------------------
# HTTP

class Resp:
    def __init__(self, status, reason, headers, body):
        self.status = status
        self.reason = reason
        self.headers = headers  # http.client.HTTPMessage: case-insensitive get()
        self.body = body
        self.incomplete = False

    def header(self, name, default=None):
        return self.headers.get(name, default)

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def error_codes(self):
        try:
            return [e.get("code") for e in self.json().get("errors", [])]
        except Exception:
            return []

    def __repr__(self):
        b = self.body[:600]
        return "<Resp %d %s headers=%r body=%r%s>" % (
            self.status, self.reason, dict(self.headers.items()), b,
            "..." if len(self.body) > 600 else "")


def split_url(url):
    """'http://127.0.0.1:5000/v2/x?y' -> (host, port, '/v2/x?y')."""
    u = urllib.parse.urlsplit(url)
    path = u.path or "/"
    if u.query:
        path += "?" + u.query
    return u.hostname, u.port or 80, path


def http(base, method, path, body=None, headers=None, timeout=HTTP_TIMEOUT,
         chunked=False):
    """One request on a fresh connection.

    base: 'http://127.0.0.1:PORT'. path: '/v2/...' or an absolute URL (e.g. a
    Location header; it must point at 127.0.0.1). body: bytes, or an iterable
    of bytes with chunked=True (Transfer-Encoding: chunked).
    """
    if path.startswith("http://") or path.startswith("https://"):
        host, port, path = split_url(path)
        assert host in ("127.0.0.1", "localhost"), "refusing non-loopback URL %r" % host
    else:
        host, port, _ = split_url(base)
    conn = httpclient.HTTPConnection(host, port, timeout=timeout)
    try:
        hdrs = dict(headers or {})
        if chunked:
            conn.request(method, path, body=body, headers=hdrs, encode_chunked=True)
        else:
            if body is None and method in ("POST", "PUT", "PATCH") and not any(
                    k.lower() == "content-length" for k in hdrs):
                hdrs["Content-Length"] = "0"
            conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        incomplete = False
        try:
            data = r.read()
        except httpclient.IncompleteRead as e:
            data, incomplete = e.partial, True
        resp = Resp(r.status, r.reason, r.headers, data)
        resp.incomplete = incomplete  # body shorter than its Content-Length
        return resp
    finally:
        conn.close()


def raw_exchange(port, data, timeout=10.0, read_until_close=True):
    """Send raw bytes on a new connection and read the reply (until the
    server closes, or one full header block when read_until_close=False)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
            if not read_until_close and b"\r\n\r\n" in out:
                break
        return out
    finally:
        s.close()


def parse_status(raw):
    m = re.match(rb"HTTP/1\.[01] (\d{3})", raw)
    return int(m.group(1)) if m else None


def parse_link_next(link):
    """Link: </v2/x/tags/list?n=2&last=b>; rel="next" -> the URL."""
    if not link:
        return None
    m = re.search(r'<([^>]+)>\s*;\s*rel="?next"?', link)
    return m.group(1) if m else None


# --------------------------------------------------------------------------
# registry processes

class Node:
    """One registry process on 127.0.0.1:port with data in data_dir."""

    def __init__(self, workdir, name="it", port=None, env=None, target=TARGET, config=None):
        """config: None to start with --listen/--data/--name flags; or a
        dict of YAML text overrides, to start with --config FILE, e.g.
        {"listen": "127.0.0.1:1234"} to write another listen address."""
        self.config = config
        self.workdir = workdir
        self.name = name
        self.target = target
        self.port = port or free_port()
        self.data_dir = os.path.join(workdir, "data")
        self.log_path = os.path.join(workdir, "stderr.log")
        self.extra_env = dict(env or {})
        self.proc = None
        self.problems = []  # shutdown / sanitizer findings, checked at teardown
        self.starts = 0
        os.makedirs(self.data_dir, exist_ok=True)

    # -- properties
    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    @property
    def host(self):
        return "127.0.0.1:%d" % self.port

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    # -- process control
    def _command(self):
        if self.target == "distribution":
            cfg = os.path.join(self.workdir, "config.yml")
            with open(cfg, "w") as f:
                f.write(
                    "version: 0.1\n"
                    "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
                    "storage:\n  filesystem:\n    rootdirectory: %s\n"
                    "  delete:\n    enabled: true\n"
                    "  maintenance:\n    uploadpurging:\n      enabled: false\n"
                    "http:\n  addr: 127.0.0.1:%d\n  secret: georeg-integration-tests\n"
                    % (self.data_dir, self.port))
            return [DISTRIBUTION_BIN, "serve", cfg]
        if self.config is not None:
            cfg = os.path.join(self.workdir, "georeg.yml")
            with open(cfg, "w") as f:
                f.write("# written by the integration tests\n"
                        "node:\n  name: %s\n  data_dir: %s\n"
                        "http:\n  listen: %s\n"
                        "auth:\n  mode: %s\n  allow_none_off_loopback: %s\n"
                        % (self.name, self.data_dir,
                           self.config.get("listen", "127.0.0.1:%d" % self.port),
                           self.config.get("auth_mode", "none"),
                           "false" if self.config.get("listen", "127.").strip('"').startswith(
                               ("127.", "localhost:", "[::1]:")) else "true"))
            return [GEOREG_BIN, "serve", "--config", cfg]
        return [GEOREG_BIN, "serve", "--listen", "127.0.0.1:%d" % self.port,
                "--data", self.data_dir, "--name", self.name, "--auth", "none"]

    def start(self, timeout=START_TIMEOUT):
        assert not self.running(), "already running"
        env = dict(os.environ)
        env.update(self.extra_env)
        if ASAN:
            env["ASAN_OPTIONS"] = "detect_leaks=1"
            env.setdefault("LSAN_OPTIONS", "suppressions=" + os.path.join(
                os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lsan.supp"))
            env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        cmd = self._command()
        with open(self.log_path, "ab") as log:
            log.write(("\n==== start #%d: %s\n" % (self.starts + 1, " ".join(cmd))).encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, env=env, cwd=self.workdir)
        LIVE.add(self)
        self.starts += 1
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=START_TIMEOUT):
        path = "/v2/" if self.target == "distribution" else "/readyz"
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited with %s during startup; stderr:\n%s"
                                   % (self.target, self.proc.returncode, tail(self.log_path)))
            try:
                r = http(self.url, "GET", path, timeout=2)
                if r.status == 200:
                    return
                # up, but not ready for a reason of its state (a fenced or
                # confirming primary, a stale or resyncing secondary, a full
                # disk): started all the same; tests look at /readyz themselves
                if (r.status == 503 and path == "/readyz"
                        and b'"not ready"' not in r.body):
                    return
                last = r.status
            except OSError as e:
                last = e
            time.sleep(0.05)
        self.kill9()
        raise RuntimeError("%s not ready on %s after %.0fs (last: %r); stderr:\n%s"
                           % (self.target, self.url, timeout, last, tail(self.log_path)))

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM, wait, then SIGKILL. Returns the exit code. A graceful
        shutdown must exit 0; anything else is recorded as a problem."""
        try:
            return self._stop(timeout)
        finally:
            LIVE.discard(self)

    def _stop(self, timeout):
        if self.proc is None:
            return None
        p = self.proc
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
                self.problems.append("pid %d did not exit within %.0fs of SIGTERM; killed"
                                     % (p.pid, timeout))
                self.proc = None
                return p.returncode
            if p.returncode != 0 and self.target != "distribution":
                self.problems.append("pid %d exited with code %s after SIGTERM"
                                     % (p.pid, p.returncode))
        else:
            # it died on its own while the test ran
            self.problems.append("pid %d had already exited with code %s before stop"
                                 % (p.pid, p.returncode))
        self.proc = None
        return p.returncode

    def kill9(self):
        if self.proc is None:
            return
        p = self.proc
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(10)
        self.proc = None
        LIVE.discard(self)

    def restart(self, timeout=START_TIMEOUT):
        self.stop()
        return self.start(timeout)

    def sanitizer_findings(self):
        text = tail(self.log_path, 1 << 30)
        return [pat for pat in SANITIZER_PATTERNS if pat in text]

    def check(self):
        """Problems found for this node (shutdown codes, sanitizer reports)."""
        out = list(self.problems)
        found = self.sanitizer_findings()
        if found:
            out.append("sanitizer report(s) in stderr: %s" % ", ".join(found))
        return out

    # -- HTTP convenience
    def req(self, method, path, body=None, headers=None, **kw):
        return http(self.url, method, path, body=body, headers=headers, **kw)


# --------------------------------------------------------------------------
# registry operations over HTTP

def location(base, r):
    loc = r.header("Location")
    assert loc, "no Location header in %r" % r
    if loc.startswith("/"):
        return base + loc
    return loc


def with_query(url, **params):
    sep = "&" if "?" in url else "?"
    return url + sep + urllib.parse.urlencode(params)


def push_blob(node, repo, data, digest=None):
    """Monolithic single POST ?digest= upload. Returns the digest."""
    d = digest or sha256(data)
    if node.target == "distribution":
        # Distribution 2.8 has no single-request upload: POST, then PUT with the body.
        r = node.req("POST", "/v2/%s/blobs/uploads/" % repo)
        assert r.status == 202, r
        r = node.req("PUT", with_query(location(node.url, r), digest=d), body=data,
                     headers={"Content-Type": "application/octet-stream"})
    else:
        r = node.req("POST", "/v2/%s/blobs/uploads/?digest=%s" % (repo, d), body=data,
                     headers={"Content-Type": "application/octet-stream"})
    assert r.status == 201, r
    assert r.header("Docker-Content-Digest") in (None, d), r
    return d


def start_upload(node, repo):
    r = node.req("POST", "/v2/%s/blobs/uploads/" % repo)
    assert r.status == 202, r
    return location(node.url, r)


def push_blob_chunked(node, repo, data, chunk=None):
    loc = start_upload(node, repo)
    chunk = chunk or max(1, len(data) // 3)
    off = 0
    while off < len(data):
        part = data[off:off + chunk]
        r = node.req("PATCH", loc, body=part, headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": "%d-%d" % (off, off + len(part) - 1),
            "Content-Length": str(len(part))})
        assert r.status == 202, r
        loc = location(node.url, r)
        off += len(part)
    d = sha256(data)
    r = node.req("PUT", with_query(loc, digest=d))
    assert r.status == 201, r
    return d


def put_manifest(node, repo, ref, body, media_type=MT_OCI_MANIFEST):
    if not isinstance(body, bytes):
        body = json.dumps(body, separators=(",", ":")).encode()
    return node.req("PUT", "/v2/%s/manifests/%s" % (repo, ref), body=body,
                    headers={"Content-Type": media_type})


def get_manifest(node, repo, ref, accept=None, method="GET"):
    acc = accept or ", ".join([MT_OCI_MANIFEST, MT_OCI_INDEX, MT_DOCKER_MANIFEST, MT_DOCKER_LIST])
    return node.req(method, "/v2/%s/manifests/%s" % (repo, ref), headers={"Accept": acc})


def descriptor(media_type, data, **extra):
    d = {"mediaType": media_type, "digest": sha256(data), "size": len(data)}
    d.update(extra)
    return d


def manifest_bytes(obj):
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def make_image(node, repo, tag=None, layers=2, layer_size=4096, seed=None):
    """Uploads a config and random layers and puts an OCI manifest.
    Returns dict(manifest=bytes, digest=..., blobs={digest: bytes})."""
    blobs = {}
    layer_descs = []
    diff_ids = []
    for i in range(layers):
        lb = os.urandom(layer_size)
        blobs[push_blob(node, repo, lb)] = lb
        layer_descs.append(descriptor(MT_OCI_LAYER, lb))
        diff_ids.append(sha256(lb))
    cfg = json.dumps({"architecture": "amd64", "os": "linux",
                      "rootfs": {"type": "layers", "diff_ids": diff_ids},
                      "config": {}, "seed": seed or os.urandom(8).hex()}).encode()
    blobs[push_blob(node, repo, cfg)] = cfg
    m = manifest_bytes({"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
                        "config": descriptor(MT_OCI_CONFIG, cfg), "layers": layer_descs})
    ref = tag or sha256(m)
    r = put_manifest(node, repo, ref, m)
    assert r.status == 201, r
    return {"manifest": m, "digest": sha256(m), "blobs": blobs, "put": r}


# --------------------------------------------------------------------------
# OCI image layout directories (for skopeo), built locally

def _tar_bytes(files):
    """files: list of (name, bytes). Deterministic tar (fixed mtime/owner)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mtime = 1700000000
            ti.mode = 0o644
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def make_layer_tar(nfiles=3, size=2048, prefix="f"):
    return _tar_bytes([("%s/%s%d.bin" % (prefix, prefix, i), os.urandom(size))
                       for i in range(nfiles)])


class OCILayout:
    """An OCI image layout directory: oci-layout, index.json, blobs/sha256/."""

    def __init__(self, path):
        self.path = path
        os.makedirs(os.path.join(path, "blobs", "sha256"), exist_ok=True)
        with open(os.path.join(path, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        self.refs = []  # index.json manifests

    def add_blob(self, data):
        d = sha256(data)
        p = os.path.join(self.path, "blobs", "sha256", d.split(":", 1)[1])
        if not os.path.exists(p):
            with open(p, "wb") as f:
                f.write(data)
        return d

    def read_blob(self, digest):
        with open(os.path.join(self.path, "blobs", "sha256", digest.split(":", 1)[1]), "rb") as f:
            return f.read()

    def add_image(self, layers=3, gzip_layers=True, arch="amd64", layer_files=3, file_size=4096):
        """Config + layers + manifest; returns (manifest_bytes, info).
        gzip_layers: a bool, or one bool per layer (mixed gzip and plain tar)."""
        layer_descs, diff_ids, blobs = [], [], []
        if isinstance(gzip_layers, bool):
            gzip_layers = [gzip_layers] * layers
        for i in range(layers):
            raw = make_layer_tar(layer_files, file_size, prefix="l%d" % i)
            diff_ids.append(sha256(raw))
            if gzip_layers[i]:
                data = gzip.compress(raw, mtime=0)
                mt = MT_OCI_LAYER_GZIP
            else:
                data, mt = raw, MT_OCI_LAYER
            self.add_blob(data)
            blobs.append(sha256(data))
            layer_descs.append(descriptor(mt, data))
        cfg = json.dumps({
            "created": "2024-01-01T00:00:00Z", "architecture": arch, "os": "linux",
            "config": {"Env": ["PATH=/usr/bin"], "Labels": {"nonce": os.urandom(8).hex()}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "georeg test"}] * layers,
        }, sort_keys=True).encode()
        self.add_blob(cfg)
        m = json.dumps({"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
                        "config": descriptor(MT_OCI_CONFIG, cfg), "layers": layer_descs},
                       indent=2).encode()
        self.add_blob(m)
        return m, {"config": sha256(cfg), "layers": blobs, "digest": sha256(m),
                   "platform": {"architecture": arch, "os": "linux"}}

    def add_index(self, images):
        """images: list of (manifest_bytes, info). Returns index bytes."""
        idx = json.dumps({"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": [
            descriptor(MT_OCI_MANIFEST, m, platform=info["platform"]) for m, info in images]},
            indent=2).encode()
        self.add_blob(idx)
        return idx

    def tag(self, tag, data, media_type):
        self.refs.append(descriptor(media_type, data,
                                    annotations={"org.opencontainers.image.ref.name": tag}))
        with open(os.path.join(self.path, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": self.refs}, f)

    def load_index(self):
        with open(os.path.join(self.path, "index.json")) as f:
            return json.load(f)

    def manifest_for(self, tag):
        for d in self.load_index()["manifests"]:
            if d.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
                return d
        raise KeyError(tag)

    def all_blob_digests(self):
        return sorted("sha256:" + n for n in os.listdir(os.path.join(self.path, "blobs", "sha256")))

    def verify_blobs(self):
        """Every blob file's name is the digest of its content."""
        for d in self.all_blob_digests():
            assert sha256(self.read_blob(d)) == d, "corrupt blob %s in %s" % (d, self.path)


# --------------------------------------------------------------------------
# external tools

def run(cmd, timeout=TOOL_TIMEOUT, check=True, env=None, input=None, cwd=None):
    """Runs a command with a bounded time; returns CompletedProcess (text)."""
    e = dict(os.environ)
    if env:
        e.update(env)
    try:
        cp = subprocess.run(cmd, stdin=subprocess.DEVNULL if input is None else None,
                            input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            timeout=timeout, env=e, text=True, cwd=cwd)
    except subprocess.TimeoutExpired as ex:
        raise AssertionError("command timed out after %ss: %s\nstdout: %s\nstderr: %s"
                             % (timeout, " ".join(cmd), ex.stdout, ex.stderr))
    if check and cp.returncode != 0:
        raise AssertionError("command failed (%d): %s\nstdout: %s\nstderr: %s"
                             % (cp.returncode, " ".join(cmd), cp.stdout[-4000:], cp.stderr[-4000:]))
    return cp
