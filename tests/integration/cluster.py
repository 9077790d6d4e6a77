"""Multi-region helpers for georeg's replication tests (stdlib only).

- RegionNode: an itlib.Node started from a full YAML config (node, http,
  replication sections), so a test can run primaries and secondaries.
- Cluster: a set of regions on loopback for one test or one module: makes the
  mTLS certificates (scripts/gen-certs.sh), starts secondaries, fault proxies
  (tests/tools/faultproxy) and recording relays in front of them, then the
  primary; close() stops every process it started, by PID, and reports unclean
  shutdowns and sanitizer findings of the georeg nodes.
- Replication status, waiting for convergence, and comparing what two nodes
  serve: the set of (repo, tag, digest), manifests and blob digests.
- Relay: a Python TCP relay that records the bytes each side sent, and
  sp_frames()/pb_*(): enough of nng's SP framing and of protobuf encoding to
  replay a captured replication stream and to forge Envelopes by hand.
"""

import hashlib
import http.client as httpclient
import json
import os
import socket
import struct
import sys
import threading
import time

import itlib
from itlib import Node, free_port, tail, wait_until

sys.path.insert(0, os.path.join(itlib.REPO_ROOT, "tests", "tools"))
from faultproxy import FaultProxy  # noqa: E402

CERTS_SCRIPT = os.environ.get("GEOREG_CERTS_SCRIPT",
                              os.path.join(itlib.REPO_ROOT, "scripts", "gen-certs.sh"))
# Under ASan everything is 2-3x slower; waits scale with this.
SLOW = 3.0 if itlib.ASAN else 1.0
HEARTBEAT = "200ms"

MT_ALL = ", ".join([itlib.MT_OCI_MANIFEST, itlib.MT_OCI_INDEX, itlib.MT_DOCKER_MANIFEST,
                    itlib.MT_DOCKER_LIST])


# --------------------------------------------------------------------------
# YAML (the subset georeg's config reader takes: block maps, block sequences
# of maps, flow sequences of strings, double-quoted scalars)

def _scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return json.dumps(str(v))


def to_yaml(obj, indent=0):
    pad = "  " * indent
    out = []
    for k, v in obj.items():
        if isinstance(v, dict):
            out.append("%s%s:\n%s" % (pad, k, to_yaml(v, indent + 1)))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            out.append("%s%s:\n" % (pad, k))
            for item in v:
                body = to_yaml(item, indent + 2).splitlines(True)
                first = body[0].lstrip()
                out.append("%s  - %s" % (pad, first))
                out.extend(body[1:])
        elif isinstance(v, list):
            out.append("%s%s: [%s]\n" % (pad, k, ", ".join(_scalar(x) for x in v)))
        else:
            out.append("%s%s: %s\n" % (pad, k, _scalar(v)))
    return "".join(out)


# --------------------------------------------------------------------------
# processes

class RegionNode(Node):
    """A georeg node started with --config: node, http and replication sections.
    `repl` is the replication section (a dict, written as YAML at each start)."""

    def __init__(self, workdir, name, repl, port=None, env=None, http_extra=None,
                 cluster=None):
        super().__init__(workdir, name=name, port=port, env=env, target="georeg")
        self.repl = repl
        self.cluster = cluster  # a cluster section (cluster.regions), or None
        self.http_extra = dict(http_extra or {})
        self.config_path = os.path.join(workdir, "georeg.yml")

    @property
    def role(self):
        return self.repl.get("role", "primary")

    def _command(self):
        cfg = {
            "node": {"name": self.name, "data_dir": self.data_dir, "log_level": "info"},
            "http": dict({"listen": self.host}, **self.http_extra),
            "replication": self.repl,
            "auth": {"mode": "none"},
        }
        if self.cluster:
            cfg["cluster"] = self.cluster
        with open(self.config_path, "w") as f:
            f.write("# written by tests/integration/cluster.py\n" + to_yaml(cfg))
        return [itlib.GEOREG_BIN, "serve", "--config", self.config_path]

    def write_config(self):
        """Rewrites the config file from self.repl / self.cluster (for a reload)."""
        self._command()

    def log(self, n=8000):
        return tail(self.log_path, n)

    def status(self):
        r = self.req("GET", "/_georeg/v1/replication")
        assert r.status == 200, r
        return r.json()


class _LiveProxy:
    """Puts a FaultProxy or Relay in itlib.LIVE, so that an interrupted run
    (conftest's signal handler) stops it too."""

    def __init__(self, p):
        self.p = p

    def kill9(self):
        self.p.stop()


class Relay:
    """A TCP relay 127.0.0.1:port -> 127.0.0.1:target_port that records, per
    connection, the bytes the client sent (up) and the server sent (down).
    One thread accepts; two threads per connection copy. stop() closes all."""

    def __init__(self, target_port):
        self.target_port = target_port
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.lsock.settimeout(0.1)
        self.port = self.lsock.getsockname()[1]
        self.conns = []  # dicts: up, down (bytearrays), open (bool)
        self.lock = threading.Lock()
        self.stopping = False
        self.recording = True
        self.socks = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self):
        while not self.stopping:
            try:
                c, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                s = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                c.close()
                continue
            c.settimeout(None)
            s.settimeout(None)
            rec = {"up": bytearray(), "down": bytearray(), "open": 2}
            with self.lock:
                self.conns.append(rec)
                self.socks += [c, s]
            for src, dst, key in ((c, s, "up"), (s, c, "down")):
                t = threading.Thread(target=self._pump, args=(src, dst, rec, key), daemon=True)
                self.threads.append(t)
                t.start()

    def _pump(self, src, dst, rec, key):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self.lock:
                    if self.recording:
                        rec[key] += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self.lock:
                rec["open"] -= 1
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def snapshot(self, i, key="up"):
        with self.lock:
            return bytes(self.conns[i][key])

    def open_connections(self):
        with self.lock:
            return sum(1 for c in self.conns if c["open"] > 0)

    def stop(self):
        self.stopping = True
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.lock:
            socks = list(self.socks)
        for s in socks:
            try:
                s.close()
            except OSError:
                pass
        for t in self.threads:
            t.join(5)


PRIMARY_NAMES = ("p", "eu")


class Cluster:
    """Regions on loopback. Secondaries first (they listen), then what sits in
    front of them (fault proxies, relays), then the primary that dials them."""

    def __init__(self, base_dir, label="cluster"):
        self.base = base_dir
        self.label = label
        self.nodes = []
        self.proxies = []
        self.relays = []
        self.primary = None
        os.makedirs(base_dir, exist_ok=True)

    # -- certificates
    def certs(self, *names, ca="ca"):
        """Certificates for names from the CA named ca (a directory per CA):
        returns {name: {cert, key, ca}}."""
        d = os.path.join(self.base, "tls-" + ca)
        itlib.run(["bash", CERTS_SCRIPT, d] + list(names), timeout=60)
        return {n: {"cert": os.path.join(d, n + ".pem"), "key": os.path.join(d, n + ".key"),
                    "client_cert": os.path.join(d, n + "-client.pem"),
                    "ca": os.path.join(d, "ca.pem")} for n in names}

    def tls(self, name, ca="ca", trust=None):
        """The replication.tls section for name: its cert from CA `ca`, trusting
        CA `trust` (default: the same CA)."""
        own = self.certs(name, ca=ca)[name]
        if trust and trust != ca:
            own = dict(own, ca=os.path.join(self.base, "tls-" + trust, "ca.pem"))
            if not os.path.exists(own["ca"]):
                self.certs("_ca_only", ca=trust)
        return own

    # -- nodes
    def _workdir(self, name):
        d = os.path.join(self.base, name)
        os.makedirs(d, exist_ok=True)
        return d

    def add(self, node, start=True, repick=None):
        """Registers node and starts it. repick(node) chooses new ports: when
        the first start fails because a port free_port() picked was taken in
        the meantime (other test runs share the machine), it is tried again."""
        self.nodes.append(node)
        if start:
            for attempt in range(3):
                try:
                    node.start()
                    break
                except RuntimeError as e:
                    if attempt == 2 or repick is None or "during startup" not in str(e):
                        raise
                    repick(node)
        return node

    def secondary(self, name, tls=True, ca="ca", trust=None, start=True, **repl):
        """A secondary listening on a fresh loopback port (tls+tcp:// with a
        certificate of CA `ca` unless tls=False: plain tcp:// with insecure)."""
        # the names the tests give their primaries: only those may command it
        cfg = {"role": "secondary", "heartbeat": HEARTBEAT, "primaries": list(PRIMARY_NAMES)}
        if tls:
            cfg["tls"] = self.tls(name, ca=ca, trust=trust)
        else:
            cfg["insecure"] = True
        cfg.update(repl)
        n = RegionNode(self._workdir(name), name, cfg)
        n.tls_mode = tls

        def pick(node, first=False):
            if not first:
                node.port = free_port()
            node.repl_port = free_port()
            node.repl["listen"] = "%s://127.0.0.1:%d" % ("tls+tcp" if tls else "tcp",
                                                        node.repl_port)
        pick(n, first=True)
        return self.add(n, start, repick=pick)

    def proxy(self, sec):
        """A fault proxy in front of secondary sec's replication port."""
        p = FaultProxy(target_port=sec.repl_port,
                       log_path=os.path.join(self.base, "faultproxy-%s.log" % sec.name))
        p.start()
        self.proxies.append(p)
        itlib.LIVE.add(_LiveProxy(p))
        return p

    def relay(self, sec):
        """A recording Python relay in front of secondary sec's replication port."""
        r = Relay(sec.repl_port)
        self.relays.append(r)
        itlib.LIVE.add(_LiveProxy(r))
        return r

    @staticmethod
    def replica(sec, via=None, **filt):
        """A replicas: entry for secondary sec, dialed directly or through via
        (a FaultProxy or Relay); filt: include, exclude, include_tags, exclude_tags."""
        port = via.port if via is not None else sec.repl_port
        scheme = "tls+tcp" if sec.tls_mode else "tcp"
        d = {"name": sec.name, "address": "%s://127.0.0.1:%d" % (scheme, port)}
        d.update({k: v for k, v in filt.items() if v is not None})
        return d

    def make_primary(self, name, replicas, tls=True, ca="ca", trust=None, start=True, **repl):
        port = free_port()
        cfg = {"role": "primary", "heartbeat": HEARTBEAT}
        if tls:
            cfg["tls"] = self.tls(name, ca=ca, trust=trust)
        if not tls or any(r["address"].startswith("tcp://") for r in replicas):
            cfg["insecure"] = True
        cfg.update(repl)
        if replicas:
            cfg["replicas"] = replicas
        n = RegionNode(self._workdir(name), name, cfg, port=port,
                       http_extra={"public_url": "http://127.0.0.1:%d" % port})
        if self.primary is None:
            self.primary = n

        def pick(node):
            node.port = free_port()
            node.http_extra["public_url"] = node.url
        return self.add(n, start, repick=pick)

    def regions(self, names, initial, filters=None, eligible=None, start=True, **repl):
        """A cluster description over mutual TLS: every node gets the same regions
        (name, url, address, filter), except that each one dials every other
        through a fault proxy of its own (self.links[(dialer, listener)]), so that
        a test can cut any one direction of any one pair. Secondaries start first;
        returns {name: RegionNode}."""
        filters = filters or {}
        eligible = eligible or {}
        tls = {n: self.tls(n) for n in names}
        self.links = getattr(self, "links", {})
        for attempt in range(5):
            ports = {n: (free_port(), free_port()) for n in names}  # http, replication
            # free_port() may hand out the same port twice (it is free until bound)
            while len({p for pair in ports.values() for p in pair}) < 2 * len(names):
                ports = {n: (free_port(), free_port()) for n in names}
            made = []
            for a in names:
                for b in names:
                    if a != b:
                        # a log of its own per attempt: a stopped proxy's ready line
                        # must not be taken for the new one's
                        fp = FaultProxy(target_port=ports[b][1], log_path=os.path.join(
                            self.base, "faultproxy-%s-%s%s.log" % (
                                a, b, "-%d" % attempt if attempt else "")))
                        fp.start()
                        made.append(((a, b), fp))
            # a proxy's ports come from the kernel after ours were picked (and not
            # yet bound): on a clash, all again
            taken = {p for pair in ports.values() for p in pair}
            if attempt < 4 and any(fp.port in taken or fp.control_port in taken
                                   for _, fp in made):
                for _, fp in made:
                    fp.stop()
                continue
            for key, fp in made:
                self.proxies.append(fp)
                itlib.LIVE.add(_LiveProxy(fp))
                self.links[key] = fp
            break
        out = {}
        for a in names:
            regions = []
            for b in names:
                port = ports[b][1] if a == b else self.links[(a, b)].port
                g = {"name": b, "url": "http://127.0.0.1:%d" % ports[b][0],
                     "address": "tls+tcp://127.0.0.1:%d" % port}
                g.update(filters.get(b, {}))
                if b in eligible:
                    g["primary_eligible"] = eligible[b]
                regions.append(g)
            cfg = {"heartbeat": HEARTBEAT, "tls": tls[a]}
            cfg.update(repl)
            n = RegionNode(self._workdir(a), a, cfg, port=ports[a][0],
                           cluster={"initial_primary": initial, "regions": regions})
            n.repl_port = ports[a][1]
            n.tls_mode = True
            out[a] = n
            self.nodes.append(n)
        if start:
            for a in [x for x in names if x != initial] + [initial]:
                out[a].start()
        self.primary = out[initial]
        return out

    def isolate(self, name, how="blackhole"):
        """Cuts (or black-holes) every link from and to region name."""
        for (a, b), fp in self.links.items():
            if name in (a, b):
                getattr(fp, how)()

    def heal(self, name=None):
        for (a, b), fp in self.links.items():
            if name is None or name in (a, b):
                fp.restore()

    def node(self, name):
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    # -- teardown
    def close(self):
        """Stops everything (nodes by PID: SIGTERM, then SIGKILL), returns the
        list of problems found (unclean exits, sanitizer reports)."""
        problems = []
        for n in reversed(self.nodes):
            try:
                n.stop()
            except Exception as e:
                problems.append("%s: stop failed: %r" % (n.name, e))
                try:
                    n.kill9()
                except Exception:
                    pass
        for p in self.proxies + self.relays:
            try:
                p.stop()
            except Exception as e:
                problems.append("proxy stop failed: %r" % (e,))
        for lp in [x for x in list(itlib.LIVE) if isinstance(x, _LiveProxy)]:
            if lp.p in self.proxies or lp.p in self.relays:
                itlib.LIVE.discard(lp)
        for n in self.nodes:
            for p in n.check():
                problems.append("%s (%s, log %s): %s" % (n.name, n.url, n.log_path, p))
        return problems

    def logs(self, n=6000):
        return "\n".join("---- %s (%s)\n%s" % (x.name, x.log_path, tail(x.log_path, n))
                         for x in self.nodes)


# --------------------------------------------------------------------------
# replication status

def replica(primary, name):
    for r in primary.status()["replicas"]:
        if r["name"] == name:
            return r
    raise KeyError(name)


def in_sync(primary, names=None):
    """The primary's status when every named replica acknowledged its head."""
    st = primary.status()
    head = st["head_seq"]
    for r in st["replicas"]:
        if names is not None and r["name"] not in names:
            continue
        if r["acked_seq"] < head or r["lag_events"] != 0:
            return None
    return st


def wait_in_sync(primary, names=None, timeout=30.0, cluster=None):
    """Waits until the named replicas (default all) acknowledged everything."""
    try:
        return wait_until(lambda: in_sync(primary, names), timeout * SLOW, interval=0.05,
                          what="replicas %s in sync" % (names or "all"))
    except TimeoutError:
        raise AssertionError("replicas did not converge within %.0fs: %s\n%s"
                             % (timeout * SLOW, json.dumps(primary.status(), indent=1),
                                cluster.logs() if cluster else primary.log()))


def wait_state(primary, name, states, timeout=20.0):
    states = (states,) if isinstance(states, str) else tuple(states)
    try:
        return wait_until(lambda: (lambda r: r if r["state"] in states else None)(
            replica(primary, name)), timeout * SLOW, interval=0.05,
            what="replica %s in state %s" % (name, states))
    except TimeoutError:
        raise AssertionError("replica %s not in %s after %.0fs: %s"
                             % (name, states, timeout * SLOW, replica(primary, name)))


# --------------------------------------------------------------------------
# content of a node

def catalog(node):
    out, url = [], "/v2/_catalog?n=1000"
    while url:
        r = node.req("GET", url)
        assert r.status == 200, r
        out += r.json().get("repositories") or []
        url = itlib.parse_link_next(r.header("Link"))
    return out


def tags(node, repo):
    out, url = [], "/v2/%s/tags/list?n=1000" % repo
    while url:
        r = node.req("GET", url)
        if r.status == 404:
            return []
        assert r.status == 200, r
        out += r.json().get("tags") or []
        url = itlib.parse_link_next(r.header("Link"))
    return sorted(out)


def manifest(node, repo, ref):
    """(status, digest, body) of GET manifest."""
    r = node.req("GET", "/v2/%s/manifests/%s" % (repo, ref), headers={"Accept": MT_ALL})
    return r.status, r.header("Docker-Content-Digest"), r.body


def state(node, repos=None):
    """The set of (repo, tag, digest) a node serves, for repos (default: its catalog)."""
    out = set()
    for repo in (catalog(node) if repos is None else repos):
        for t in tags(node, repo):
            st, d, body = manifest(node, repo, t)
            assert st == 200, (node.name, repo, t, st, body[:300])
            assert itlib.sha256(body) == d, "manifest digest mismatch on %s %s:%s" % (
                node.name, repo, t)
            out.add((repo, t, d))
    return out


def blob_digest(node, repo, digest, timeout=itlib.HTTP_TIMEOUT * 3):
    """Streams a blob and returns (status, sha256 of what came, size)."""
    conn = httpclient.HTTPConnection("127.0.0.1", node.port, timeout=timeout)
    try:
        conn.request("GET", "/v2/%s/blobs/%s" % (repo, digest))
        r = conn.getresponse()
        h, n = hashlib.sha256(), 0
        while True:
            b = r.read(1 << 20)
            if not b:
                break
            h.update(b)
            n += len(b)
        return r.status, "sha256:" + h.hexdigest(), n
    finally:
        conn.close()


def verify_image(node, repo, ref, seen=None):
    """Every blob (and child manifest) the manifest at repo:ref references is
    served by node under repo, with content matching its digest and size.
    Returns the set of blob digests checked."""
    seen = set() if seen is None else seen
    st, d, body = manifest(node, repo, ref)
    assert st == 200, (node.name, repo, ref, st)
    assert itlib.sha256(body) == d
    m = json.loads(body)
    descs = []
    if "manifests" in m:
        for c in m["manifests"]:
            verify_image(node, repo, c["digest"], seen)
    else:
        descs = [m["config"]] + m.get("layers", [])
    for desc in descs:
        if desc["digest"] in seen:
            continue
        st, got, size = blob_digest(node, repo, desc["digest"])
        assert st == 200, "%s: blob %s of %s@%s: HTTP %d" % (node.name, desc["digest"], repo,
                                                             d, st)
        assert got == desc["digest"] and size == desc["size"], (
            "%s: blob %s of %s@%s has digest %s size %d" % (node.name, desc["digest"], repo, d,
                                                            got, size))
        seen.add(desc["digest"])
    return seen


def files_named(root, hexdigest):
    """Paths under root whose file name is hexdigest (content files of a blob)."""
    hits = []
    for dp, _, fns in os.walk(root):
        hits += [os.path.join(dp, f) for f in fns if f == hexdigest]
    return hits


# --------------------------------------------------------------------------
# pushing

def push_image(node, repo, tag, layers=2, layer_size=4096, shared=()):
    """A config, random layers (plus the shared ones, bytes pushed again) and an
    OCI manifest tagged tag. Returns itlib.make_image's dict."""
    blobs = {}
    descs = []
    for lb in list(shared) + [os.urandom(layer_size) for _ in range(layers)]:
        blobs[itlib.push_blob(node, repo, lb)] = lb
        descs.append(itlib.descriptor(itlib.MT_OCI_LAYER, lb))
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "nonce": os.urandom(8).hex(),
                      "rootfs": {"type": "layers",
                                 "diff_ids": [d["digest"] for d in descs]}}).encode()
    blobs[itlib.push_blob(node, repo, cfg)] = cfg
    m = itlib.manifest_bytes({"schemaVersion": 2, "mediaType": itlib.MT_OCI_MANIFEST,
                              "config": itlib.descriptor(itlib.MT_OCI_CONFIG, cfg),
                              "layers": descs})
    r = itlib.put_manifest(node, repo, tag, m)
    assert r.status == 201, r
    return {"manifest": m, "digest": itlib.sha256(m), "blobs": blobs}


def georeg_cli(*args, timeout=90):
    return itlib.run([itlib.GEOREG_BIN] + list(args), timeout=timeout, check=False)


# --------------------------------------------------------------------------
# nng SP framing and hand-made protobuf

SP_HANDSHAKE_PAIR1 = b"\x00SP\x00\x00\x11\x00\x00"  # SP, protocol pair1 (0x11), reserved


def sp_frames(data):
    """Splits a TCP byte stream of an nng connection into (handshake, frames,
    rest): frames are the payloads of complete 8-byte-length-prefixed messages."""
    hs, off, frames = data[:8], 8, []
    while off + 8 <= len(data):
        (n,) = struct.unpack(">Q", data[off:off + 8])
        if off + 8 + n > len(data):
            break
        frames.append(data[off + 8:off + 8 + n])
        off += 8 + n
    return hs, frames, data[off:]


def sp_frame(payload):
    return struct.pack(">Q", len(payload)) + payload


def pb_varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pb_int(field, v):
    return pb_varint(field << 3) + pb_varint(v)


def pb_bytes(field, data):
    if isinstance(data, str):
        data = data.encode()
    return pb_varint(field << 3 | 2) + pb_varint(len(data)) + data


def pb_read(data):
    """Decodes one protobuf message level: [(field, wiretype, value)]."""
    out, i = [], 0

    def varint():
        nonlocal i
        v, shift = 0, 0
        while True:
            b = data[i]
            i += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return v
    while i < len(data):
        key = varint()
        f, wt = key >> 3, key & 7
        if wt == 0:
            out.append((f, wt, varint()))
        elif wt == 2:
            n = varint()
            out.append((f, wt, bytes(data[i:i + n])))
            i += n
        elif wt == 1:
            out.append((f, wt, data[i:i + 8]))
            i += 8
        elif wt == 5:
            out.append((f, wt, data[i:i + 4]))
            i += 4
        else:
            raise ValueError("wire type %d" % wt)
    return out


# replication.proto field numbers
EV_BLOB_LINK, EV_MANIFEST_PUT, EV_TAG_DELETE = 1, 3, 5


def pb_event(seq, type_, repo="", digest="", tag="", media_type="", body=b"", size=0,
             time_ms=None):
    m = pb_int(1, seq) + pb_int(2, time_ms or int(time.time() * 1000)) + pb_int(3, type_)
    for f, v in ((4, repo), (5, digest), (6, tag), (7, media_type), (8, body)):
        if v:
            m += pb_bytes(f, v)
    if size:
        m += pb_int(9, size)
    return m


def pb_envelope(body_field, body, msg_id=1, epoch=1, sender="mallory", version=1):
    """Envelope{version, sender, epoch, msg_id, <body_field>: body}."""
    return (pb_int(1, version) + pb_bytes(2, sender) + pb_int(3, epoch) + pb_int(4, msg_id) +
            pb_bytes(body_field, body))


ENV_BATCH, ENV_CHUNK, ENV_ACK, ENV_HEARTBEAT, ENV_RESYNC_BEGIN = 10, 13, 14, 15, 17
ENV_PEER_HELLO, ENV_PEER_CHALLENGE, ENV_PEER_PROOF = 19, 20, 21
ENV_HAVE_QUERY = 11
EV_META_PUT, EV_META_DELETE = 6, 7


def message_parts(frame):
    """(envelope bytes, bulk payload) of one replication message. frame is an
    SP frame's payload: [u32 pair1 hop count][u32 big-endian envelope length]
    [Envelope][bulk bytes, e.g. a blob chunk's data] (replication/wire.c)."""
    body = frame[4:]
    (n,) = struct.unpack(">I", body[:4])
    return body[4:4 + n], body[4 + n:]


def env_fields(frame):
    """{field: value} of the Envelope in one replication message (an SP frame's
    payload, as sp_frames() returns them)."""
    return {f: v for f, _, v in pb_read(message_parts(frame)[0])}


def message(envelope, bulk=b"", hops=1):
    """An SP frame payload carrying envelope (+ bulk bytes), as wire.c frames it."""
    return struct.pack(">I", hops) + struct.pack(">I", len(envelope)) + envelope + bulk


class SPClient:
    """A raw TCP connection that speaks nng's SP framing to a pair1 socket:
    sends a handshake and frames, and reads the peer's frames in a thread."""

    def __init__(self, port, handshake=SP_HANDSHAKE_PAIR1, timeout=10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = bytearray()
        self.lock = threading.Lock()
        self.closed = False
        if handshake:
            self.sock.sendall(handshake)
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        # The socket keeps the timeout it was made with: changing it here, while
        # send() runs on the test's thread, raced (a send on a non-blocking
        # descriptor with no timeout raised BlockingIOError). A quiet peer is a
        # timeout, not an end.
        try:
            while True:
                try:
                    d = self.sock.recv(65536)
                except socket.timeout:
                    continue
                if not d:
                    break
                with self.lock:
                    self.buf += d
        except OSError:
            pass
        self.closed = True

    def send(self, data):
        """Sends data; False when the peer had already closed the connection
        (a refusal, for a test that sends garbage)."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def frames(self):
        with self.lock:
            data = bytes(self.buf)
        if len(data) < 8:
            return []
        return sp_frames(data)[1]

    def wait_frames(self, n, timeout=10.0):
        deadline = time.monotonic() + timeout * SLOW
        while time.monotonic() < deadline:
            f = self.frames()
            if len(f) >= n or self.closed:
                return f
            time.sleep(0.02)
        return self.frames()

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.t.join(5)

