#!/usr/bin/python3
"""georeg failover drill (issue 9 section 9): `make drill`, or scripts/drill.sh [--quick].

Three regions on loopback (eu-west the initial primary, us-east, ap-south filtered
to prod/**), every node dialing every other through a fault proxy of its own, mutual
TLS: the integration harness's Cluster.regions (tests/integration/cluster.py). A
pusher thread pushes small images in a loop (alternately to prod/drill and
dev/drill) to whichever nodes the drill currently sends clients to, and records
every acknowledged push: node, repo, tag, digest, the time of the 201, the
Georeg-Replicated header and the epoch the node was at (its status read right
before and right after the push; the drill polls nothing else for it).

Scenarios, each with replication.sync off and on ({replicas: 1, timeout: 2s}), on a
fresh cluster each time:
  a  kill -9 the primary; promote by hand the most advanced eligible secondary
     (us-east); later the old primary is restarted and must rejoin as a secondary
  b  the same with etcd doing it: a real etcd (Debian's etcd-server) started by the
     drill, cluster.etcd on every node (lease TTL 2s); nobody calls promote: us-east
     wins the key when eu-west's lease lapses (SKIPPED, counted as skipped, when
     etcd is not installed)
  c  a partition isolates the primary; us-east is promoted while the pusher keeps
     pushing to both nodes that claim to be primary; heal; the old primary must be
     demoted and report what it acknowledged meanwhile as conflicts
  d  the primary is cut off, acknowledges writes nobody else sees, is killed;
     us-east is promoted; the old primary restarted (still cut off) must not be
     writable (confirming), then, healed, be demoted and report its lost tags
Per scenario one line `drill: scenario=X sync=on|off ...`:
  rto_s        kill (or partition) -> a push to the new primary acknowledged AND
               visible in the third region (ap-south)
  acked        acknowledged pushes (any node)
  missing      acknowledged pushes not served by the final primary at the end (RPO)
  conflicts_reported  of those, how many the nodes report as conflicts
               (GET /_georeg/v1/conflicts)
  lost         missing and not reported
  split_brain_acks    pushes acknowledged in an epoch by a node other than the one
               that epoch belongs to (two nodes acknowledging in one epoch)
  converge_s   last disturbance (restart or heal) -> the three regions serve the same
               (repo, tag, digest) sets (ap-south compared on its filter)
  digests_equal  they do at the end
Exit status 1 when, with sync on, an acknowledged push is lost (missing and not
reported, or missing although the 201 said a replica had it); when two nodes
acknowledged writes in one epoch; when a restarted old primary acknowledged a write,
was not demoted, or dropped a write it had acknowledged without reporting it as a
conflict (c, d); or when the regions do not converge within a generous bound. No other timing is
asserted: RTO is printed against its target (< 10 s by hand).

Every process the drill starts is stopped by PID at the end, also on failure,
SIGINT or SIGTERM (Cluster.close). A node that does not exit within 15 s of
SIGTERM gets its threads' stacks written next to its log (gdb) before it is killed;
`drill: teardown problems=N` counts such problems. Data and logs live in a
temporary directory, removed after a clean run (kept, and printed, otherwise or
with --keep).

Options beyond the defaults (issue 9's configuration) to explore the edges:
  --quick                  scenarios a and d, sync on, few pushes (test_drill.py)
  --latency-ms N           one-way latency on every replication link (a WAN)
  --us-east-latency-ms N   us-east lags: with sync `replicas: 1` the filtered
                           ap-south may be the only replica that acknowledged a
                           write, and promoting us-east then loses it (the drill
                           forces the promotion, says so, and FAILs the run)
  --sync-replicas eligible each node names the other primary-eligible region in
                           replication.sync.replicas instead of a count
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("GEOREG_BIN", os.path.join(ROOT, "build", "georeg"))
os.environ.setdefault("FAULTPROXY_BIN", os.path.join(ROOT, "build", "faultproxy"))
os.environ.setdefault("GEOREG_CERTS_SCRIPT", os.path.join(ROOT, "scripts", "gen-certs.sh"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import cluster as C  # noqa: E402
import itlib  # noqa: E402
from test_etcd_failover import ETCD, Etcd  # noqa: E402

EU, US, AP = "eu-west", "us-east", "ap-south"
NAMES = [EU, US, AP]
AP_FILTER = {"include": ["prod/**"]}
SYNC = {"replicas": 1, "timeout": "2s"}
SLOW = C.SLOW
BOUND = 90.0 * SLOW  # generous bound for any one wait (not an assertion on time)
RTO_TARGET = 10.0


def log(msg):
    print(msg, flush=True)


class Interrupted(BaseException):
    pass


def _on_signal(signum, frame):
    # once: a second signal during cleanup must not interrupt the cleanup
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted("signal %d" % signum)


def ap_view(state):
    """What ap-south must hold of a full state: its filter, prod/**."""
    return {x for x in state if x[0].startswith("prod/")}


def try_status(node):
    try:
        if not node.running():
            return None
        return node.status()
    except Exception:
        return None


# --------------------------------------------------------------------------
# the pusher

class Pusher(threading.Thread):
    """Pushes small images in a loop to the current targets (round robin) and
    records every acknowledged push."""

    def __init__(self, label, interval=0.01):
        super().__init__(daemon=True, name="pusher-" + label)
        self.label = label
        self.interval = interval
        self.lock = threading.Lock()
        self.targets = []
        self.acks = []       # dicts: node, repo, tag, digest, t, wall, epoch, replicated, ...
        self.refused = {}    # (node, status) -> count
        self.errors = {}     # (node, kind) -> count
        self.n = 0
        self.stop_ev = threading.Event()
        self.failure = None

    def set_targets(self, nodes):
        with self.lock:
            self.targets = list(nodes)

    def snapshot(self):
        with self.lock:
            return list(self.acks)

    def count(self, node=None, since=None):
        with self.lock:
            return sum(1 for a in self.acks if (node is None or a["node"] == node)
                       and (since is None or a["t"] >= since))

    def _bump(self, d, key):
        with self.lock:
            d[key] = d.get(key, 0) + 1

    def run(self):
        i = 0
        try:
            while not self.stop_ev.is_set():
                with self.lock:
                    targets = list(self.targets)
                if not targets:
                    time.sleep(0.02)
                    continue
                node = targets[i % len(targets)]
                i += 1
                self.push_one(node)
                self.stop_ev.wait(self.interval)
        except Exception:
            self.failure = traceback.format_exc()

    def push_one(self, node, record=True):
        """One image to node; returns the ack dict, or None when not acknowledged."""
        with self.lock:
            self.n += 1
            n = self.n
        repo = "prod/drill" if n % 2 else "dev/drill"
        tag = "%s-%05d" % (self.label, n)
        try:
            layer = os.urandom(512)
            itlib.push_blob(node, repo, layer)
            cfg = json.dumps({"architecture": "amd64", "os": "linux", "drill": tag,
                              "nonce": os.urandom(8).hex()}).encode()
            itlib.push_blob(node, repo, cfg)
        except AssertionError:
            self._bump(self.refused, (node.name, "blob"))
            return None
        except Exception as e:
            self._bump(self.errors, (node.name, type(e).__name__))
            return None
        m = itlib.manifest_bytes({"schemaVersion": 2, "mediaType": itlib.MT_OCI_MANIFEST,
                                  "config": itlib.descriptor(itlib.MT_OCI_CONFIG, cfg),
                                  "layers": [itlib.descriptor(itlib.MT_OCI_LAYER, layer)]})
        before = try_status(node)
        t_sent = time.monotonic()
        try:
            r = itlib.put_manifest(node, repo, tag, m)
        except Exception as e:
            self._bump(self.errors, (node.name, type(e).__name__))
            return None
        t = time.monotonic()
        wall = time.time()
        if r.status != 201:
            self._bump(self.refused, (node.name, r.status))
            return None
        after = try_status(node)
        cands = sorted({s["epoch"] for s in (before, after) if s and s["role"] == "primary"})
        ack = {"node": node.name, "repo": repo, "tag": tag, "digest": itlib.sha256(m),
               "t": t, "t_sent": t_sent, "wall": wall, "epochs": cands,
               "epoch": cands[0] if len(cands) == 1 else None,
               "replicated": r.header("Georeg-Replicated")}
        if record:
            with self.lock:
                self.acks.append(ack)
        return ack

    def stop(self):
        self.stop_ev.set()
        self.join(60)


# --------------------------------------------------------------------------
# one run of a scenario

class Run:
    def __init__(self, args, base, scenario, sync):
        self.args = args
        self.scenario = scenario
        self.sync = sync
        self.label = "%s%s" % (scenario, sync)
        self.dir = os.path.join(base, self.label)
        self.cl = C.Cluster(self.dir, label=self.label)
        self.pusher = None
        self.notes = []
        self.fail = []
        self.result = {}
        self.t0 = None
        self.closed = False
        self.hung = []
        self.problems = []
        self.conflicts_on = {}
        self.etcd = None

    def say(self, msg):
        log("  %s/%s: %s" % (self.scenario, self.sync, msg))

    # -- setup
    def start(self):
        for attempt in range(3):
            try:
                self._start_nodes()
                break
            except RuntimeError as e:
                # a port free_port() picked may be taken in the meantime (other runs
                # share the machine): a fresh cluster on other ports, as Cluster.add does
                if attempt == 2 or "during startup" not in str(e):
                    raise
                why = [x for x in str(e).splitlines() if "level=error" in x] or \
                    [str(e).splitlines()[0]]
                self.say("a node did not start (%s): again on other ports" % why[0][-200:])
                self.cl.close()
                self.cl = C.Cluster("%s-%d" % (self.dir, attempt + 1), label=self.label)
        self.eu, self.us, self.ap = (self.nodes[n] for n in NAMES)
        itlib.wait_until(lambda: self.eu.status()["writable"], BOUND, interval=0.05,
                         what="eu-west writable")
        for (a, b), fp in self.cl.links.items():
            ms = self.args.latency_ms
            if {a, b} == {EU, US}:
                ms += self.args.us_east_latency_ms
            if ms:
                fp.latency(ms)
        if self.args.latency_ms or self.args.us_east_latency_ms:
            self.say("one-way latency %d ms on every link, +%d ms between eu-west and us-east"
                     % (self.args.latency_ms, self.args.us_east_latency_ms))
        self.pusher = Pusher(self.label)
        self.pusher.set_targets([self.eu])
        self.pusher.start()

    def _start_nodes(self):
        repl = {}
        sr = self.args.sync_replicas
        if self.sync == "on" and sr != "eligible":
            repl["sync"] = dict(SYNC, replicas=sr)
        self.nodes = self.cl.regions(NAMES, EU, filters={AP: AP_FILTER}, start=False, **repl)
        if self.scenario == "b":
            self.etcd = Etcd(self.cl.base)
            self.etcd.start()
            itlib.LIVE.add(self.etcd)
            for n in NAMES:
                self.nodes[n].cluster["etcd"] = {
                    "endpoints": ["http://127.0.0.1:%d" % self.etcd.port], "ttl": "2s"}
        if self.sync == "on" and sr == "eligible":
            # each node names the other regions that may become primary (a node may
            # not name itself: it is not its own replica)
            for n in NAMES:
                self.nodes[n].repl["sync"] = dict(SYNC, replicas=[x for x in (EU, US)
                                                                  if x != n])
        for n in [US, AP, EU]:  # secondaries first, as Cluster.regions starts them
            self.nodes[n].start()

    def wait_acks(self, node, n, since=None, what=None):
        """Until the pusher has n acks from node (since a time); bounded."""
        itlib.wait_until(lambda: self.pusher.count(node.name, since) >= n, BOUND, interval=0.02,
                         what=what or "%d acknowledged pushes on %s" % (n, node.name))

    # -- promotion by hand
    def candidate(self, exclude):
        """The most advanced eligible secondary, by applied_seq (its own status)."""
        best = None
        for n in (self.us, self.ap):
            if n.name in exclude:
                continue
            st = try_status(n)
            if st is None:
                continue
            self.say("candidate %s role=%s applied_seq=%s eligible=%s" % (
                n.name, st["role"], st.get("applied_seq"), st["eligible"]))
            if st["role"] != "secondary" or not st["eligible"]:
                continue
            if best is None or st["applied_seq"] > best[1]:
                best = (n, st["applied_seq"])
        if best is None:
            raise RuntimeError("no eligible secondary to promote")
        return best[0]

    def promote(self, node, old_primary_cut_off):
        """POST /_georeg/v1/promote on node; forced only when the drill decides so
        (and says why). Returns the report."""
        def once(force):
            r = node.req("POST", "/_georeg/v1/promote" + ("?force=true" if force else ""),
                         timeout=60 * SLOW)
            rep = r.json()
            rows = ", ".join("%s(reachable=%s role=%s applied=%s ahead_by=%s%s)" % (
                x["name"], x.get("reachable"), x.get("role"), x.get("applied_seq"),
                x.get("ahead_by"), " error=" + x["error"] if x.get("error") else "")
                for x in rep.get("regions", []))
            self.say("promote %s%s -> HTTP %d promoted=%s epoch=%s refused=%s overridden=%s "
                     "behind_last_primary=%s regions: %s" % (
                         node.name, " --force" if force else "", r.status, rep.get("promoted"),
                         rep.get("epoch"), rep.get("refused"), rep.get("overridden"),
                         rep.get("behind_last_primary"), rows))
            return r.status, rep
        deadline = time.monotonic() + BOUND
        while True:
            st, rep = once(False)
            if st == 200:
                self.result["forced"] = "no"
                return rep
            refused = rep.get("refused") or []
            if any("may not become primary" in x for x in refused):
                raise RuntimeError("candidate %s refused: %s" % (node.name, refused))
            ahead = [x for x in rep.get("regions", []) if (x.get("ahead_by") or 0) > 0]
            live = [x for x in refused if "answers as the primary" in x]
            if not ahead or time.monotonic() > deadline:
                break
            # the candidate may still be applying what it received before the
            # failure: ask again while its applied seq moves, before overriding
            seen, t_moved = rep.get("applied_seq"), time.monotonic()
            while time.monotonic() - t_moved < 1.0 * SLOW and time.monotonic() < deadline:
                time.sleep(0.1)
                cur = (try_status(node) or {}).get("applied_seq")
                if cur != seen:
                    seen, t_moved = cur, time.monotonic()
            if seen == rep.get("applied_seq"):
                self.say("%s stays at applied_seq %s: nothing more is coming to it" % (
                    node.name, seen))
                break
        why = []
        if live:
            if not old_primary_cut_off:
                raise RuntimeError("promotion refused: a live primary answers and the drill "
                                   "did not cut it off: %s" % refused)
            why.append("the old primary still answers as primary, but the drill itself cut it "
                       "off from both other regions: it can reach no majority, and it is "
                       "demoted as soon as it hears of the promotion")
        for x in ahead:
            if x["name"] == self.eu.name:
                why.append("%s (the old primary) is ahead by %d events: they are reported as "
                           "conflicts when it rejoins" % (x["name"], x["ahead_by"]))
            else:
                why.append("%s holds %d events %s lacks but may never be primary (filtered) and "
                           "no eligible region holds more: forcing loses them" % (
                               x["name"], x["ahead_by"], node.name))
                self.notes.append("forced past %s ahead_by=%d" % (x["name"], x["ahead_by"]))
        other = [x for x in refused if "answers as the primary" not in x
                 and "holds" not in x]
        if other:
            raise RuntimeError("promotion refused for a reason the drill does not override: %s"
                               % other)
        self.say("forcing the promotion: " + "; ".join(why or ["(no reason given)"]))
        st, rep = once(True)
        if st != 200:
            raise RuntimeError("forced promotion refused: %s" % rep)
        self.result["forced"] = "yes"
        return rep

    def failover(self, old_cut_off):
        """Promotes the best candidate, sends the clients to it, measures RTO:
        returns the new primary."""
        new = self.candidate(exclude={self.eu.name})
        rep = self.promote(new, old_cut_off)
        self.t_promoted = time.monotonic()
        self.promotion_epoch = rep["epoch"]
        itlib.wait_until(lambda: (try_status(new) or {}).get("writable"), BOUND, interval=0.02,
                         what="%s writable" % new.name)
        self.say("%s writable %.2fs after the failure" % (new.name, time.monotonic() - self.t0))
        return new

    def measure_rto(self, new):
        """The first push acknowledged by new into prod/ (seen by ap-south), visible
        on ap-south: RTO from t0."""
        def first():
            for a in self.pusher.snapshot():
                if a["node"] == new.name and a["repo"].startswith("prod/") and a["t"] > self.t0:
                    return a
            return None
        a = itlib.wait_until(first, BOUND, interval=0.01, what="a prod push on " + new.name)
        itlib.wait_until(lambda: C.manifest(self.ap, a["repo"], a["tag"])[1] == a["digest"],
                         BOUND, interval=0.01, what="%s:%s on ap-south" % (a["repo"], a["tag"]))
        rto = time.monotonic() - self.t0
        self.say("RTO %.2fs (%s:%s acknowledged by %s %.2fs after the failure, visible on "
                 "ap-south)" % (rto, a["repo"], a["tag"], new.name, a["t"] - self.t0))
        self.result["rto_s"] = rto
        return rto

    # -- the end: convergence, RPO, split brain
    def converge(self, since):
        def equal():
            try:
                s = {n.name: C.state(n) for n in (self.eu, self.us, self.ap)}
            except Exception:
                return None
            if s[EU] == s[US] and s[AP] == ap_view(s[US]):
                return s
            return None
        try:
            s = itlib.wait_until(equal, BOUND * 2, interval=0.2, what="the regions converge")
            self.result["converge_s"] = time.monotonic() - since
            self.result["digests_equal"] = "yes"
            return s[US]
        except TimeoutError:
            self.result["converge_s"] = None
            self.result["digests_equal"] = "no"
            s = {}
            for n in (self.eu, self.us, self.ap):
                try:
                    s[n.name] = C.state(n)
                except Exception as e:
                    s[n.name] = set()
                    self.say("state of %s: %r" % (n.name, e))
            self.say("NOT converged after %.0fs: eu-west-us-east=%d us-east-eu-west=%d "
                     "ap-south vs filter(us-east): missing=%d extra=%d" % (
                         BOUND * 2, len(s[EU] - s[US]), len(s[US] - s[EU]),
                         len(ap_view(s[US]) - s[AP]), len(s[AP] - ap_view(s[US]))))
            self.fail.append("regions did not converge")
            return s[US]

    def conflicts(self, final_primary):
        """(repo, tag, old_digest) every node reports as a conflict."""
        out = set()
        self.conflicts_on = {}
        for n in (self.eu, self.us, self.ap):
            if n is final_primary or not n.running():
                continue
            r = n.req("GET", "/_georeg/v1/conflicts?all=true")
            if r.status != 200:
                continue
            mine = {(c["repo"], c["tag"], c["old_digest"]) for c in r.json().get("conflicts", [])}
            self.conflicts_on[n.name] = mine
            out |= mine
        return out

    def account(self, final, final_state, conflict_wait_for=()):
        """RPO, conflicts, split brain, from the pusher's record."""
        acks = self.pusher.snapshot()
        self.result["acked"] = len(acks)
        missing = [a for a in acks if (a["repo"], a["tag"], a["digest"]) not in final_state]
        # the old primary may still be writing its report when the states are equal
        want = {(a["repo"], a["tag"], a["digest"]) for a in missing}
        conf = set()
        try:
            conf = itlib.wait_until(lambda: (lambda c: c if want <= c else None)(
                self.conflicts(final)), 30 * SLOW if want else 0.5, interval=0.2,
                what="conflicts reported")
        except TimeoutError:
            conf = self.conflicts(final)
        reported = [a for a in missing if (a["repo"], a["tag"], a["digest"]) in conf]
        lost = [a for a in missing if (a["repo"], a["tag"], a["digest"]) not in conf]
        self.result["missing"] = len(missing)
        self.result["conflicts_reported"] = len(reported)
        self.result["lost"] = len(lost)
        sr = self.args.sync_replicas
        required = ((sr if isinstance(sr, int) else 1 if sr == "eligible" else len(sr))
                    if self.sync == "on" else None)
        synced_missing = [a for a in missing if required is not None
                          and a["replicated"] is not None and int(a["replicated"]) >= required]
        self.result["degraded_acks"] = (sum(1 for a in acks if a["replicated"] is not None
                                            and int(a["replicated"]) < required)
                                        if required is not None else None)
        shown = [a for a in missing if a in lost or a in synced_missing] + \
            [a for a in reported if a not in synced_missing][:3]
        for a in shown:
            self.say("missing on %s: %s:%s %s acknowledged by %s at epoch %s (%+.2fs from the "
                     "failure) Georeg-Replicated=%s %s" % (
                         final.name, a["repo"], a["tag"], a["digest"][:19], a["node"],
                         a["epoch"] if a["epoch"] is not None else a["epochs"],
                         a["t"] - self.t0, a["replicated"],
                         "reported as a conflict" if a in reported else "NOT REPORTED"))
        if len(missing) > len(shown):
            by = {}
            for a in missing:
                by[a["node"]] = by.get(a["node"], 0) + 1
            self.say("missing on %s: %d acknowledged pushes in all (%s), %d reported as "
                     "conflicts, %d not" % (final.name, len(missing), ", ".join(
                         "%d by %s" % (v, k) for k, v in sorted(by.items())), len(reported),
                         len(lost)))
        if self.sync == "on" and lost:
            self.fail.append("%d acknowledged push(es) lost with sync on (not reported)"
                             % len(lost))
        self.result["missing_replicated"] = (len(synced_missing) if required is not None
                                             else None)
        if synced_missing:
            self.fail.append("%d push(es) acknowledged as replicated (Georeg-Replicated >= %d) "
                             "missing on the new primary" % (len(synced_missing), required))
        # split brain: epoch -> the node it belongs to (the final primary's history;
        # epoch 1, node null: the initial primary)
        owner = {}
        for h in final.status()["history"]:
            owner[h["epoch"]] = h["node"] or EU
        sb = []
        unknown = 0
        for a in acks:
            if not a["epochs"]:
                unknown += 1
                continue
            if not any(owner.get(e) == a["node"] for e in a["epochs"]):
                sb.append(a)
        by_epoch = {}
        for a in acks:
            if a["epoch"] is not None:
                by_epoch.setdefault(a["epoch"], set()).add(a["node"])
        for e, ns in sorted(by_epoch.items()):
            if len(ns) > 1:
                self.say("epoch %d acknowledged by %s" % (e, sorted(ns)))
        for a in sb:
            self.say("split brain: %s:%s acknowledged by %s at epoch %s, which belongs to %s" % (
                a["repo"], a["tag"], a["node"], a["epochs"], owner.get(a["epochs"][0])))
        self.result["split_brain_acks"] = len(sb)
        self.result["epoch_unknown"] = unknown
        if sb:
            self.fail.append("%d push(es) acknowledged by two nodes in one epoch" % len(sb))
        return missing, reported, lost

    # -- the scenarios
    def scenario_a(self):
        a = self.args
        self.wait_acks(self.eu, a.before)
        self.t0 = time.monotonic()
        self.eu.kill9()
        self.say("killed eu-west (kill -9) after %d acknowledged pushes" % self.pusher.count())
        new = self.failover(old_cut_off=False)
        self.pusher.set_targets([new])
        self.measure_rto(new)
        self.wait_acks(new, a.after)
        self.pusher.stop()
        t = time.monotonic()
        self.eu.start()
        st = self.eu.status()
        self.say("eu-west restarted: role=%s confirming=%s writable=%s" % (
            st["role"], st["confirming"], st["writable"]))
        itlib.wait_until(lambda: self.eu.status()["role"] == "secondary", BOUND, interval=0.05,
                         what="eu-west demoted")
        self.say("eu-west demoted %.2fs after its restart" % (time.monotonic() - t))
        final_state = self.converge(t)
        self.account(new, final_state)

    def scenario_b(self):
        """kill -9 the primary; etcd (its lease lapses) makes us-east the primary."""
        a = self.args
        self.wait_acks(self.eu, a.before)
        self.t0 = time.monotonic()
        self.eu.kill9()
        self.say("killed eu-west (kill -9) after %d acknowledged pushes; waiting for etcd"
                 % self.pusher.count())
        itlib.wait_until(lambda: (try_status(self.us) or {}).get("writable"), BOUND,
                         interval=0.02, what="us-east promoted through etcd")
        st = self.us.status()
        self.promotion_epoch = st["epoch"]
        self.t_promoted = time.monotonic()
        self.say("us-east writable %.2fs after the kill (etcd elections=%s)" % (
            time.monotonic() - self.t0, (st.get("etcd") or {}).get("elections")))
        self.pusher.set_targets([self.us])
        self.measure_rto(self.us)
        self.wait_acks(self.us, a.after)
        self.pusher.stop()
        t = time.monotonic()
        self.eu.start()
        itlib.wait_until(lambda: self.eu.status()["role"] == "secondary", BOUND, interval=0.05,
                         what="eu-west demoted")
        self.say("eu-west demoted %.2fs after its restart" % (time.monotonic() - t))
        final_state = self.converge(t)
        self.account(self.us, final_state)

    def scenario_c(self):
        a = self.args
        self.wait_acks(self.eu, a.before)
        self.t0 = time.monotonic()
        self.cl.isolate(EU)
        self.say("partition: eu-west cut off from us-east and ap-south (blackhole) after %d "
                 "acknowledged pushes" % self.pusher.count())
        new = self.failover(old_cut_off=True)
        t_prom = self.t_promoted
        # the clients that still resolve eu-west keep pushing there: both claim primary
        self.pusher.set_targets([new, self.eu])
        self.measure_rto(new)
        self.wait_acks(new, a.after)
        if self.sync == "on":
            self.wait_acks(self.eu, 3, since=t_prom,
                           what="pushes acknowledged by the isolated eu-west")
        else:
            self.wait_acks(self.eu, min(a.after, 10), since=t_prom,
                           what="pushes acknowledged by the isolated eu-west")
        t = time.monotonic()
        self.cl.heal()
        self.say("healed")
        itlib.wait_until(lambda: self.eu.status()["role"] == "secondary", BOUND, interval=0.02,
                         what="eu-west demoted")
        self.say("eu-west demoted %.2fs after the heal" % (time.monotonic() - t))
        self.pusher.set_targets([new])
        self.wait_acks(new, 3, since=time.monotonic())
        self.pusher.stop()
        final_state = self.converge(t)
        missing, reported, lost = self.account(new, final_state)
        acks = self.pusher.snapshot()
        iso = [x for x in acks if x["node"] == EU and x["t_sent"] >= self.t0]
        iso_after = [x for x in iso if x["t"] >= t_prom]
        keys = self.conflicts_on.get(EU, set())  # reported on it, the old primary
        self.result["isolated_acks"] = len(iso)
        self.result["isolated_acks_after_promotion"] = len(iso_after)
        self.result["divergent_reported"] = sum(
            1 for x in iso if (x["repo"], x["tag"], x["digest"]) in keys)
        self.say("acknowledged by the isolated eu-west: %d after the partition, %d of them after "
                 "the promotion; divergent writes reported on it: %d" % (
                     len(iso), len(iso_after), self.result["divergent_reported"]))
        self._unreported_on_old(iso, final_state)

    def scenario_d(self):
        a = self.args
        self.wait_acks(self.eu, a.before)
        t_cut = time.monotonic()
        self.cl.isolate(EU)
        self.say("eu-west cut off (blackhole) after %d acknowledged pushes" % self.pusher.count())
        self.wait_acks(self.eu, a.unseen, since=t_cut,
                       what="%d pushes acknowledged by the cut-off eu-west" % a.unseen)
        self.pusher.set_targets([])
        time.sleep(0.05)
        self.t0 = time.monotonic()
        self.eu.kill9()
        unseen = [x for x in self.pusher.snapshot() if x["node"] == EU and x["t_sent"] >= t_cut]
        self.say("killed eu-west (kill -9) holding %d acknowledged pushes nobody else saw"
                 % len(unseen))
        new = self.failover(old_cut_off=True)
        self.pusher.set_targets([new])
        self.measure_rto(new)
        self.wait_acks(new, a.after)
        # the old primary comes back, still cut off: it must not take writes
        t = time.monotonic()
        self.eu.start()
        st = self.eu.status()
        self.say("eu-west restarted (still cut off): role=%s confirming=%s writable=%s "
                 "readyz=%d" % (st["role"], st["confirming"], st["writable"],
                                self.eu.req("GET", "/readyz").status))
        probes = [self.pusher.push_one(self.eu, record=False) for _ in range(5)]
        bad = [p for p in probes if p is not None]
        with self.pusher.lock:
            self.pusher.acks.extend(bad)
        self.result["restarted_writable"] = "yes" if (st["writable"] or bad) else "no"
        if st["writable"] or bad:
            self.fail.append("the restarted old primary was writable (%d of 5 probe pushes "
                             "acknowledged)" % len(bad))
        self.say("5 probe pushes to the restarted eu-west: %d acknowledged" % len(bad))
        self.cl.heal()
        t = time.monotonic()
        itlib.wait_until(lambda: self.eu.status()["role"] == "secondary", BOUND, interval=0.02,
                         what="eu-west demoted")
        self.say("healed; eu-west demoted %.2fs after the heal" % (time.monotonic() - t))
        self.wait_acks(new, 3, since=time.monotonic())
        self.pusher.stop()
        final_state = self.converge(t)
        missing, reported, lost = self.account(new, final_state)
        keys = self.conflicts_on.get(EU, set())  # reported on it, the old primary
        self.result["unseen_acks"] = len(unseen)
        self.result["unseen_reported"] = sum(1 for x in unseen
                                             if (x["repo"], x["tag"], x["digest"]) in keys)
        self.say("writes nobody else saw: %d acknowledged by eu-west, %d reported as conflicts "
                 "on it" % (len(unseen), self.result["unseen_reported"]))
        self._unreported_on_old(unseen, final_state)

    def _unreported_on_old(self, acks, final_state):
        """c and d: what the old primary acknowledged and the cluster dropped must be
        reported as a conflict on it (sync on or off)."""
        keys = self.conflicts_on.get(EU, set())
        bad = [x for x in acks if (x["repo"], x["tag"], x["digest"]) not in final_state
               and (x["repo"], x["tag"], x["digest"]) not in keys]
        if bad:
            self.fail.append("%d write(s) the old primary acknowledged were dropped without a "
                             "conflict on it (e.g. %s:%s)" % (len(bad), bad[0]["repo"],
                                                               bad[0]["tag"]))

    def execute(self):
        self.start()
        getattr(self, "scenario_" + self.scenario)()
        if self.pusher.failure:
            self.fail.append("pusher crashed: " + self.pusher.failure)

    def _stop_node(self, n):
        """SIGTERM by PID; a node that does not exit within the harness's bound gets
        its threads' stacks written next to its log (gdb) before the harness kills
        it (and records the problem)."""
        p = n.proc
        if p is None or p.poll() is not None:
            return n.stop()  # the harness reports a node that died on its own
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(itlib.STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            out = os.path.join(n.workdir, "hang-stacks.txt")
            self.say("%s (pid %d) still running %.0fs after SIGTERM: stacks -> %s" % (
                n.name, p.pid, itlib.STOP_TIMEOUT, out))
            try:
                with open(out, "w") as f:
                    subprocess.run(["gdb", "-p", str(p.pid), "-batch", "-ex",
                                    "thread apply all bt"], stdout=f, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, timeout=60)
            except Exception as e:
                self.say("no stacks: %r" % (e,))
            self.hung.append((n.name, out))
            n.problems.append("pid %d did not exit within %.0fs of SIGTERM; killed (stacks in %s)"
                              % (p.pid, itlib.STOP_TIMEOUT, out))
            n.kill9()
            return None
        n.proc = None
        itlib.LIVE.discard(n)
        if p.returncode != 0:
            n.problems.append("pid %d exited with code %s after SIGTERM" % (p.pid, p.returncode))
        return p.returncode

    def close(self):
        if self.pusher is not None and self.pusher.is_alive():
            self.pusher.stop()
        if self.closed:
            return []
        self.closed = True
        for n in reversed(self.cl.nodes):
            try:
                self._stop_node(n)
            except Exception as e:
                self.say("stopping %s: %r" % (n.name, e))
        problems = self.cl.close()  # the rest: proxies, anything left, the problems found
        if self.etcd is not None:
            self.etcd.stop()
            itlib.LIVE.discard(self.etcd)
        self.problems = problems
        for p in problems:
            self.say("teardown problem: " + p.splitlines()[0])
        return problems

    def line(self):
        r = self.result

        def f(k, fmt="%s"):
            v = r.get(k)
            return "-" if v is None else fmt % v
        parts = ["drill: scenario=%s sync=%s" % (self.scenario, self.sync),
                 "rto_s=" + f("rto_s", "%.2f"), "acked=" + f("acked"),
                 "missing=" + f("missing"), "conflicts_reported=" + f("conflicts_reported"),
                 "lost=" + f("lost"), "split_brain_acks=" + f("split_brain_acks"),
                 "converge_s=" + f("converge_s", "%.1f"),
                 "digests_equal=" + f("digests_equal"), "forced=" + f("forced")]
        if self.sync == "on":
            parts += ["missing_replicated=" + f("missing_replicated"),
                      "degraded_acks=" + f("degraded_acks")]
        if self.scenario == "c":
            parts += ["isolated_acks=" + f("isolated_acks"),
                      "isolated_acks_after_promotion=" + f("isolated_acks_after_promotion"),
                      "divergent_reported=" + f("divergent_reported")]
        if self.scenario == "d":
            parts += ["unseen_acks=" + f("unseen_acks"), "unseen_reported=" + f("unseen_reported"),
                      "restarted_writable=" + f("restarted_writable")]
        if r.get("epoch_unknown"):
            parts.append("epoch_unknown=%d" % r["epoch_unknown"])
        parts.append("FAIL" if self.fail else "ok")
        return " ".join(parts)


def node_log_excerpt(run, n=2500):
    out = []
    for node in run.cl.nodes:
        text = itlib.tail(node.log_path, 1 << 22).splitlines()
        keep = [x for x in text if any(k in x for k in (
            "PROMOT", "DEMOT", "DIVERG", "CONFLICT", "FORK", "RESYNC", "SYNC-", "FENCE",
            "CONFIRM", "==== start", "error", "ERROR"))]
        out.append("---- %s (%s)\n%s" % (node.name, node.log_path, "\n".join(keep)[-n:]))
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="a reduced run: scenarios a and d, sync on, few pushes")
    ap.add_argument("--scenarios", default=None, help="e.g. a,b,c,d (default all)")
    ap.add_argument("--sync", default=None, help="off,on (default both)")
    ap.add_argument("--before", type=int, default=None, help="acks before the failure")
    ap.add_argument("--after", type=int, default=None, help="acks by the new primary")
    ap.add_argument("--unseen", type=int, default=None,
                    help="d: acks by the cut-off primary before it is killed")
    ap.add_argument("--latency-ms", type=int, default=0,
                    help="one-way latency on every replication link (a WAN)")
    ap.add_argument("--us-east-latency-ms", type=int, default=0,
                    help="extra one-way latency between eu-west and us-east (us-east lags)")
    ap.add_argument("--sync-replicas", default="1",
                    help="replication.sync.replicas with sync on: a count (default 1), "
                         "names (the same on every node), or 'eligible': each node names the "
                         "other regions that may be primary")
    ap.add_argument("--keep", action="store_true", help="keep the data and logs")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    scen = (args.scenarios or ("a,d" if args.quick else "a,b,c,d")).split(",")
    syncs = (args.sync or ("on" if args.quick else "off,on")).split(",")
    args.before = args.before or (10 if args.quick else 40)
    args.after = args.after or (10 if args.quick else 40)
    args.unseen = args.unseen or (3 if args.quick else 8)
    sr = args.sync_replicas
    args.sync_replicas = (int(sr) if sr.isdigit() else sr if sr == "eligible"
                          else [x for x in sr.split(",") if x])

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)
    for b in (itlib.GEOREG_BIN, os.environ["FAULTPROXY_BIN"]):
        if not os.access(b, os.X_OK):
            log("drill: %s missing: run `make all build/faultproxy`" % b)
            return 2
    base = args.workdir or tempfile.mkdtemp(prefix="georeg-drill-")
    os.makedirs(base, exist_ok=True)
    log("drill: georeg %s, work dir %s, scenarios %s, sync %s (on: replicas %s, timeout %s), "
        "%d/%d pushes before/after%s" % (
            itlib.GEOREG_BIN, base, ",".join(scen), ",".join(syncs), args.sync_replicas,
            SYNC["timeout"], args.before, args.after, " (ASan)" if itlib.ASAN else ""))
    runs, lines, skipped, interrupted = [], [], 0, False
    t_start = time.monotonic()
    try:
        for sync in syncs:
            for s in scen:
                if s == "b" and not os.path.exists(ETCD):
                    lines.append("drill: etcd SKIPPED (etcd is not installed: "
                                 "scripts/install-deps.sh --test)")
                    log(lines[-1] + "  [scenario=b sync=%s]" % sync)
                    skipped += 1
                    continue
                run = Run(args, base, s, sync)
                runs.append(run)
                log("drill: -- scenario %s, sync %s" % (s, sync))
                try:
                    run.execute()
                except Interrupted:
                    raise
                except Exception as e:
                    run.fail.append("drill error: %s" % e)
                    log("  %s/%s: ERROR %s" % (s, sync, traceback.format_exc().rstrip()))
                finally:
                    run.close()
                if run.fail:
                    for f in run.fail:
                        log("  %s/%s: FAIL: %s" % (s, sync, f))
                    log(node_log_excerpt(run))
                lines.append(run.line())
                log(lines[-1])
    except Interrupted as e:
        interrupted = True
        log("drill: interrupted (%s): stopping every process it started" % e)
    finally:
        for run in runs:
            try:
                run.close()  # a second close is harmless: every node is stopped already
            except Exception:
                pass
        for x in list(itlib.LIVE):  # anything left (an interrupted start)
            try:
                x.kill9()
            except Exception:
                pass
    if interrupted:
        log("drill: data and logs kept in %s" % base)
        return 130
    failed = [r for r in runs if r.fail]
    log("")
    log("drill: results (%.0fs)" % (time.monotonic() - t_start))
    for x in lines:
        log(x)

    def vals(k, sync=None, sc=None):
        return [(r, r.result.get(k)) for r in runs if (sync is None or r.sync == sync)
                and (sc is None or r.scenario == sc) and r.result.get(k) is not None]
    rtos = [(r, v) for r, v in vals("rto_s") if r.scenario != "b"]
    log("drill: targets vs achieved")

    def row(what, target, achieved, verdict=""):
        log("  %-18s target %-18s achieved %s%s" % (what, target, achieved,
                                                     " -> " + verdict if verdict else ""))
    if rtos:
        worst = max(v for _, v in rtos)
        row("RTO by hand", "< %.0f s" % RTO_TARGET, "max %.2f s (%s)" % (
            worst, " ".join("%s/%s=%.2f" % (r.scenario, r.sync, v) for r, v in rtos)),
            "met" if worst < RTO_TARGET else "NOT MET")
    etcd_rtos = vals("rto_s", sc="b")
    if etcd_rtos:
        worst = max(v for _, v in etcd_rtos)
        row("RTO through etcd", "< %.0f s" % RTO_TARGET, "max %.2f s" % worst,
            "met" if worst < RTO_TARGET else "NOT MET")
    elif "b" in scen:
        row("RTO through etcd", "-", "SKIPPED (etcd is not installed)")
    on_lost = sum(v for _, v in vals("lost", "on"))
    on_missing = sum(v for _, v in vals("missing", "on"))
    on_repl = sum(v for _, v in vals("missing_replicated", "on"))
    if vals("lost", "on"):
        row("RPO sync on", "0 lost", "%d lost, %d acknowledged as replicated but missing (%d "
            "missing in all, %d of them reported as conflicts)" % (
                on_lost, on_repl, on_missing, on_missing - on_lost),
            "met" if on_lost == 0 and on_repl == 0 else "NOT MET")
    if vals("missing", "off"):
        row("RPO sync off", "- (the lag)", "%s missing (%s reported as conflicts, %s lost)" % (
            " ".join("%s=%d" % (r.scenario, v) for r, v in vals("missing", "off")),
            sum(v for _, v in vals("conflicts_reported", "off")),
            sum(v for _, v in vals("lost", "off"))))
    sb = sum(v for _, v in vals("split_brain_acks"))
    row("split brain", "0 acks", "%d" % sb, "met" if sb == 0 else "NOT MET")
    rw = [r for r in runs if r.result.get("restarted_writable") == "yes"]
    if vals("restarted_writable"):
        row("old primary back", "not writable", "%s" % ("writable in %s" % ", ".join(
            "%s/%s" % (r.scenario, r.sync) for r in rw) if rw else "not writable"),
            "met" if not rw else "NOT MET")
    conv = vals("converge_s")
    ne = [r for r in runs if r.result.get("digests_equal") != "yes"]
    row("convergence", "all equal", "%d/%d runs equal%s" % (
        len(runs) - len(ne), len(runs), (", max %.1f s" % max(v for _, v in conv)) if conv
        else ""), "met" if not ne else "NOT MET")
    hung = [(r, h) for r in runs for h in r.hung]
    for r, (name, path) in hung:
        log("drill: WARNING %s/%s: %s did not exit on SIGTERM (stacks in %s)" % (
            r.scenario, r.sync, name, path))
    log("drill: teardown problems=%d" % sum(len(r.problems) for r in runs))
    log("drill: passed=%d failed=%d skipped=%d" % (len(runs) - len(failed), len(failed), skipped))
    if failed or hung or any(r.problems for r in runs) or args.keep:
        log("drill: data and logs kept in %s" % base)
    elif not args.workdir:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
