"""Issue 9 §6: automatic failover through etcd, with a real etcd (Debian's
etcd-server) started by the test on loopback and stopped by PID.

Three regions (eu primary, us, ap filtered); each node reaches etcd through a
fault proxy of its own, so a test can cut one node off etcd. The primary holds
<prefix>/primary under a lease (cluster.etcd.ttl 2s here); when the lease lapses
the eligible secondary wins the key and promotes itself; the old primary stops
taking writes when its own deadline for the lease passes, before anyone can win.
"""
import os
import shutil
import subprocess
import threading
import time

import pytest

import cluster as C
import itlib
from faultproxy import FaultProxy
from itlib import free_port, wait_until

pytestmark = pytest.mark.georeg_only("etcd failover is georeg's own")

TEST_ALARM = 420 if itlib.ASAN else 240
SLOW = C.SLOW
ETCD = os.environ.get("GEOREG_ETCD_BIN", shutil.which("etcd") or "/usr/bin/etcd")


class Etcd:
    def __init__(self, base):
        self.dir = os.path.join(base, "etcd")
        os.makedirs(self.dir, exist_ok=True)
        self.port, self.peer = free_port(), free_port()
        self.proc = None

    def start(self):
        c = "http://127.0.0.1:%d" % self.port
        p = "http://127.0.0.1:%d" % self.peer
        log = open(os.path.join(self.dir, "etcd.log"), "ab")
        self.proc = subprocess.Popen(
            [ETCD, "--name", "t", "--data-dir", os.path.join(self.dir, "data"),
             "--listen-client-urls", c, "--advertise-client-urls", c,
             "--listen-peer-urls", p, "--initial-advertise-peer-urls", p,
             "--initial-cluster", "t=" + p, "--logger=zap", "--log-level=error"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        wait_until(lambda: self._up(), 30, interval=0.1, what="etcd up")

    def _up(self):
        try:
            return itlib.http("http://127.0.0.1:%d" % self.port, "GET", "/health",
                              timeout=1).status == 200
        except OSError:
            return False

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()


@pytest.fixture
def etcd_cluster(tmp_path_factory, request):
    if not os.path.exists(ETCD):
        pytest.skip("etcd is not installed (scripts/install-deps.sh --test installs etcd-server)")
    made = []

    def make(names=("eu", "us", "ap"), ttl="2s"):
        cl = C.Cluster(str(tmp_path_factory.mktemp("etcd")), label=request.node.name)
        e = Etcd(cl.base)
        e.start()
        itlib.LIVE.add(e)
        made.append((cl, e))
        cl.etcd_links = {}
        for n in names:
            fp = FaultProxy(target_port=e.port,
                            log_path=os.path.join(cl.base, "faultproxy-etcd-%s.log" % n))
            fp.start()
            cl.proxies.append(fp)
            cl.etcd_links[n] = fp
        nodes = cl.regions(list(names), names[0], filters={"ap": {"include": ["prod/**"]}},
                           start=False)
        for n, node in nodes.items():
            node.cluster["etcd"] = {"endpoints": ["http://127.0.0.1:%d" % cl.etcd_links[n].port],
                                    "ttl": ttl}
        for n in list(names[1:]) + [names[0]]:
            nodes[n].start()
        return cl, e, nodes
    yield make
    for cl, e in made:
        problems = cl.close()
        e.stop()
        itlib.LIVE.discard(e)
        if problems:
            pytest.fail("node problems at teardown:\n  " + "\n  ".join(problems) + "\n" +
                        cl.logs(), pytrace=False)


def st(n):
    return n.status()


def writable(n):
    try:
        return st(n)["writable"]
    except (OSError, AssertionError):
        return False


def test_kill_the_primary_and_etcd_promotes_the_eligible_secondary(etcd_cluster):
    """kill -9 eu: its lease lapses, us (unfiltered) wins the key and promotes
    itself (ap is filtered and never campaigns); a push to us reaches ap. The
    time from the kill to that push being visible on ap is printed (the target
    is under 10 s), not asserted. Restarted, eu finds the key held by us: it
    never takes a write and becomes us's secondary."""
    cl, e, r = etcd_cluster()
    eu, us, ap = r["eu"], r["us"], r["ap"]
    wait_until(lambda: writable(eu), 30 * SLOW, what="eu writable (holds the key)")
    assert st(eu)["etcd"]["holder"] == "eu" and st(eu)["etcd"]["lease_valid"], st(eu)
    img = C.push_image(eu, "prod/e", "1")
    wait_until(lambda: C.manifest(ap, "prod/e", "1")[0] == 200, 30 * SLOW, what="replicated")

    t0 = time.monotonic()
    eu.kill9()
    wait_until(lambda: writable(us), 60 * SLOW, interval=0.1, what="us promoted by etcd")
    img2 = C.push_image(us, "prod/e", "2")
    wait_until(lambda: C.manifest(ap, "prod/e", "2")[1] == img2["digest"], 30 * SLOW,
               interval=0.05, what="visible on ap")
    rto = time.monotonic() - t0
    print("etcd failover: RTO %.2f s (kill -> push on us visible on ap)" % rto)
    s = st(us)
    assert s["role"] == "primary" and s["etcd"]["elections"] == 1, s
    assert st(ap)["role"] == "secondary" and st(ap)["epoch"] == s["epoch"]

    eu.start()
    for _ in range(20):
        assert not writable(eu)
        r2 = itlib.put_manifest(eu, "prod/e", "x", img["manifest"])
        assert r2.status == 403, r2
        time.sleep(0.1)
    wait_until(lambda: st(eu)["role"] == "secondary", 30 * SLOW, what="eu demoted")
    wait_until(lambda: C.manifest(eu, "prod/e", "2")[1] == img2["digest"], 30 * SLOW,
               what="eu follows us")


def test_a_primary_cut_off_from_etcd_stops_writing_before_another_wins(etcd_cluster):
    """eu loses etcd (its proxy cut) but not the regions. A pusher alternates
    between eu and us. eu's last acknowledged push comes before us's first: at no
    moment did two nodes take writes; eu becomes us's secondary."""
    cl, e, r = etcd_cluster()
    eu, us, ap = r["eu"], r["us"], r["ap"]
    wait_until(lambda: writable(eu), 30 * SLOW, what="eu writable")
    base = C.push_image(eu, "prod/c", "base")
    wait_until(lambda: C.manifest(us, "prod/c", "base")[0] == 200, 30 * SLOW, what="replicated")
    acks = {"eu": [], "us": []}
    stop = threading.Event()

    def pusher():
        i = 0
        while not stop.is_set():
            for n in (eu, us):
                try:
                    rr = itlib.put_manifest(n, "prod/c", "t%d" % i, base["manifest"])
                except OSError:
                    continue
                if rr.status == 201:
                    acks[n.name].append(time.monotonic())
                i += 1
            time.sleep(0.02)
    t = threading.Thread(target=pusher, daemon=True)
    t.start()
    try:
        time.sleep(0.5)
        cl.etcd_links["eu"].cut()
        wait_until(lambda: acks["us"], 60 * SLOW, interval=0.1, what="us takes writes")
        time.sleep(1.0)
    finally:
        stop.set()
        t.join(10)
    assert acks["eu"], "eu acknowledged nothing before the cut"
    assert max(acks["eu"]) < min(acks["us"]), (max(acks["eu"]), min(acks["us"]))
    cl.etcd_links["eu"].restore()
    wait_until(lambda: st(eu)["role"] == "secondary", 30 * SLOW, what="eu demoted")
    assert st(us)["role"] == "primary"


def test_etcd_config_is_validated(tmp_path):
    """cluster.etcd needs cluster.regions and a whole-second TTL from 2 s to 60 s."""
    for extra, want in (({"ttl": "1s"}, "TTL"), ({"ttl": "90s"}, "TTL")):
        cfg = os.path.join(str(tmp_path), "g.yml")
        with open(cfg, "w") as f:
            f.write(C.to_yaml({
                "node": {"name": "eu", "data_dir": str(tmp_path / "d")},
                "http": {"listen": "127.0.0.1:%d" % free_port()},
                "auth": {"mode": "none"},
                "replication": {"insecure": True},
                "cluster": {"initial_primary": "eu", "regions": [
                    {"name": "eu", "address": "tcp://127.0.0.1:%d" % free_port()}],
                    "etcd": dict({"endpoints": ["http://127.0.0.1:1"]}, **extra)}}))
        out = itlib.run([itlib.GEOREG_BIN, "serve", "--config", cfg], timeout=30, check=False)
        assert out.returncode != 0 and want in out.stderr, out
