"""Attacks on failover (issue 9), w-attack: each test states what an adversary or
an unlucky operator does and what the node should then do. A failing test is a
finding (see the report); a passing one is something that held.

Same harness as test_failover.py (cluster.Cluster.regions: mutual TLS, one fault
proxy per direction of every pair, cl.links[(dialer, listener)])."""
import json
import os
import threading
import time

import pytest

import cluster as C
import itlib
from itlib import wait_until
from test_replication import make_cluster  # noqa: F401  (the fixture)
from test_failover import promote, status, writable, wait_writable, applied

pytestmark = pytest.mark.georeg_only("failover is georeg's own")

TEST_ALARM = 420 if itlib.ASAN else 240
SLOW = C.SLOW


def alive(n):
    return n.proc is not None and n.proc.poll() is None


def reload(n):
    n.write_config()
    r = n.req("POST", "/_georeg/v1/cluster/reload")
    return r.status, r.json()


def names(n):
    return sorted(x["name"] for x in status(n)["replicas"])


# --------------------------------------------------------------------------
# 1. a probe teaches an old primary its replacement, and it then never demotes


@pytest.mark.parametrize("probe", [True, False], ids=["after-a-probe", "control"])
def test_a_probe_that_teaches_the_old_primary_does_not_stop_it_demoting(make_cluster, probe):
    """eu (primary, writable) is cut off; us is promoted (forced) at epoch 2, ap
    follows it and takes its history; then us dies. The operator tries
    `promote` on ap (refused: eu answers as a live primary). That probe carries
    record 2 to eu, which learns it (epoch 2) but stays primary: a probe is only
    answered. Then eu's dialer reaches ap again: eu proves itself at epoch 2, ap
    refuses (eu is not the writer of epoch 2) and answers with its history, but
    the shipper (on_history) learns only from an answer whose epoch is HIGHER
    than its own, so eu never demotes and keeps taking writes. The control (no
    probe): the same answer at epoch 2 > 1 demotes eu."""
    cl = make_cluster()
    r = cl.regions(["eu", "us", "ap"], "eu")
    eu, us, ap = r["eu"], r["us"], r["ap"]
    wait_writable(eu)
    C.push_image(eu, "prod/pr", "base")
    wait_until(lambda: applied(us) == applied(eu) == applied(ap), 30 * SLOW, what="in sync")
    cl.isolate("eu", how="blackhole")
    time.sleep(5.0)  # ap's receiver drops eu's silent connection (4 s)
    st, rep = promote(us, force=True)
    assert st == 200 and rep["epoch"] == 2, rep
    wait_writable(us)
    img = C.push_image(us, "prod/pr", "us1")
    wait_until(lambda: C.manifest(ap, "prod/pr", "us1")[1] == img["digest"], 30 * SLOW,
               what="ap follows us")
    assert any(h.get("node") == "us" for h in status(ap)["history"]), status(ap)
    us.kill9()
    assert writable(eu)  # cut off, no lease: the documented exposure
    cl.links[("ap", "eu")].restore()
    if probe:
        # the probe teaches eu record 2: eu steps down at once (then nothing answers
        # as a live primary and the promotion of ap may go through)
        st, rep = promote(ap)
        assert st in (200, 409), rep
        wait_until(lambda: status(eu)["epoch"] >= 2, 15 * SLOW, what="eu learned epoch 2")
    cl.links[("eu", "ap")].restore()
    try:
        wait_until(lambda: status(eu)["role"] == "secondary", 25 * SLOW, interval=0.3,
                   what="eu demoted once it reaches ap")
    except TimeoutError:
        st = status(eu)
        try:
            got = C.push_image(eu, "prod/pr", "eu-after")["digest"] + " (201)"
        except AssertionError as e:
            got = "refused: %s" % str(e)[:200]
        raise AssertionError(
            "eu knows record 2 (us) and reaches ap, yet it stays primary, writable=%s "
            "epoch=%s, and a push to it: %s:\n%s" % (
                st["writable"], st["epoch"], got,
                json.dumps({k: st.get(k) for k in ("role", "epoch", "writable", "history",
                                                    "known_promotions")})))


# --------------------------------------------------------------------------
# 2. two operators force two promotions at once


@pytest.mark.xfail(reason='issue 9 follow-up: the loser of two promotions to one epoch stays confirming forever (history.c refuses a second record for an epoch)', strict=False, run=False)
def test_two_concurrent_forced_promotions(make_cluster):
    """eu dies; two operators promote us and ap at the same moment (--force).
    Safety: never both writable, and no acknowledged push on both. Liveness:
    eu comes back, one of them wins eu; the other one (same epoch, another
    record) should end up following the winner (the docs: "two promotions to one
    epoch ... are different branches", i.e. fork point and resync)."""
    cl = make_cluster()
    r = cl.regions(["eu", "us", "ap"], "eu")
    eu, us, ap = r["eu"], r["us"], r["ap"]
    wait_writable(eu)
    C.push_image(eu, "prod/cc", "base")
    wait_until(lambda: applied(us) == applied(eu) == applied(ap), 30 * SLOW, what="in sync")
    eu.kill9()
    out = {}

    def go(n):
        out[n.name] = promote(n, force=True)
    ts = [threading.Thread(target=go, args=(n,)) for n in (us, ap)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    reps = {k: v[1] for k, v in out.items()}
    promoted = sorted(k for k, v in out.items() if v[0] == 200)
    epochs = {k: v.get("epoch") for k, v in reps.items()}
    print("promotions", promoted, epochs)
    both = 0
    deadline = time.time() + 6
    while time.time() < deadline:
        both += writable(us) and writable(ap)
        time.sleep(0.1)
    assert both == 0, "us and ap both writable at once"
    eu.start()
    acked = {}
    deadline = time.time() + 20 * SLOW
    i = 0
    while time.time() < deadline:
        for n in (us, ap):
            try:
                rr = C.push_image(n, "prod/cc", "%s-%d" % (n.name, i), layers=1, layer_size=512)
                acked.setdefault(n.name, []).append(rr["digest"])
            except AssertionError:
                pass
        i += 1
        if len(acked) == 1 and sum(len(v) for v in acked.values()) > 3:
            break
        time.sleep(0.2)
    assert len(acked) <= 1, "pushes acknowledged by both: %s" % {k: len(v) for k, v in acked.items()}
    if len(promoted) < 2:
        return  # the race did not happen: nothing more to see
    winner = [n for n in (us, ap) if writable(n)]
    assert winner, [status(us), status(ap)]
    winner = winner[0]
    loser = ap if winner is us else us
    img = C.push_image(winner, "prod/cc", "after")
    try:
        wait_until(lambda: C.manifest(loser, "prod/cc", "after")[1] == img["digest"], 40 * SLOW,
                   interval=0.5, what="the loser follows the winner")
    except TimeoutError:
        st = status(loser)
        raise AssertionError(
            "%s (lost the race at epoch %s) never follows %s: role=%s confirming=%s "
            "writable=%s; its log says:\n%s" % (
                loser.name, st["epoch"], winner.name, st["role"], st["confirming"],
                st["writable"], "\n".join(l for l in winner.log(20000).splitlines()
                                          if "REPL-REFUSED" in l or "CONFLICT" in l)[-1500:]))


# --------------------------------------------------------------------------
# 3. a reload during a promotion


def test_reload_adding_a_region_during_a_promotion(make_cluster):
    """eu is dead; us is being promoted (its probe of eu takes the 2 s probe
    timeout) and meanwhile an operator reloads us's description with one more
    region. promote.c sizes its probe array by nreplicas once and reads
    r->nreplicas again in every later loop: the new slot is read past the end
    of the array (ASan: heap-buffer-overflow; without ASan a pthread_join or a
    free of heap garbage)."""
    cl = make_cluster()
    r = cl.regions(["eu", "us", "ap"], "eu")
    eu, us, ap = r["eu"], r["us"], r["ap"]
    wait_writable(eu)
    C.push_image(eu, "prod/rp", "base")
    wait_until(lambda: applied(us) == applied(eu), 30 * SLOW, what="us in sync")
    eu.kill9()
    out = {}

    def go():
        try:
            out["p"] = promote(us, force=True)
        except Exception as e:  # the node died under it
            out["p"] = ("error", repr(e))
    t = threading.Thread(target=go)
    t.start()
    time.sleep(0.6)
    us.cluster["regions"].append({"name": "zz", "url": "http://127.0.0.1:9",
                                  "address": "tls+tcp://127.0.0.1:9"})
    rs, rep = reload(us)
    t.join()
    assert alive(us), "us died during promote + reload:\n" + us.log(6000)
    assert rs == 200, rep
    assert out["p"][0] == 200, out


# --------------------------------------------------------------------------
# 4. a reload that fails half-way


def test_a_refused_reload_changes_nothing(make_cluster):
    """ap's filter is changed 31 times (32 versions, the most a region keeps).
    The next reload removes us and changes ap's filter again: refused ("filter
    changed too often"), and by reload.c's own rule a refused reload changes
    nothing. But the removal loop runs before the filter check: us is
    deactivated (no longer shipped to, not listed) while voters and the
    primaries list stay as before."""
    cl = make_cluster()
    r = cl.regions(["eu", "us", "ap"], "eu", filters={"ap": {"include": ["prod/**"]}})
    eu, us, ap = r["eu"], r["us"], r["ap"]
    wait_writable(eu)
    C.push_image(eu, "prod/rf", "1")
    for i in range(31):
        for g in eu.cluster["regions"]:
            if g["name"] == "ap":
                g["include"] = ["prod/**", "v%d/**" % i]
        rs, rep = reload(eu)
        assert rs == 200 and rep["changed"] == ["ap"], (i, rep)
    assert names(eu) == ["ap", "us"]
    for g in eu.cluster["regions"]:
        if g["name"] == "ap":
            g["include"] = ["prod/**", "last/**"]
    keep = [dict(g) for g in eu.cluster["regions"]]
    eu.cluster["regions"] = [g for g in keep if g["name"] != "us"]
    rs, rep = reload(eu)
    assert rs == 400 and rep["reloaded"] is False, rep
    st = status(eu)
    assert names(eu) == ["ap", "us"] and st["voters"] == 3, (rep, names(eu), st["voters"])


def test_remove_and_readd_a_region_quickly_under_pushes(make_cluster):
    """us removed and re-added ten times in a row while pushes go on: no crash
    (ASan), us ends up shipped to."""
    cl = make_cluster()
    r = cl.regions(["eu", "us", "ap"], "eu")
    eu, us, ap = r["eu"], r["us"], r["ap"]
    wait_writable(eu)
    full = [dict(g) for g in eu.cluster["regions"]]
    stop = threading.Event()
    errors = []

    def pusher():
        i = 0
        while not stop.is_set():
            try:
                C.push_image(eu, "prod/rr", "t%d" % i, layers=1, layer_size=1024)
            except Exception as e:
                errors.append(repr(e))
            i += 1
    t = threading.Thread(target=pusher)
    t.start()
    try:
        for i in range(10):
            eu.cluster["regions"] = [g for g in full if g["name"] != "us"]
            rs, rep = reload(eu)
            assert rs == 200, rep
            eu.cluster["regions"] = [dict(g) for g in full]
            rs, rep = reload(eu)
            assert rs == 200, rep
    finally:
        stop.set()
        t.join()
    assert alive(eu)
    img = C.push_image(eu, "prod/rr", "final")
    wait_until(lambda: C.manifest(us, "prod/rr", "final")[1] == img["digest"], 30 * SLOW,
               what="us shipped to after the reloads")
    assert not errors[:1], errors[:3]


# --------------------------------------------------------------------------
# 5. the conflicts API with odd input (held?)


def test_conflicts_api_odd_input(make_cluster):
    cl = make_cluster()
    r = cl.regions(["eu", "us", "ap"], "eu")
    eu = r["eu"]
    wait_writable(eu)
    for path in ["/_georeg/v1/conflicts/18446744073709551616/99999999999999999999999?resolve=keep-new",
                 "/_georeg/v1/conflicts/..%2f..%2f/1?resolve=keep-new",
                 "/_georeg/v1/conflicts/1/1?resolve=" + "x" * 5000,
                 "/_georeg/v1/conflicts/-1/-1?resolve=take-old",
                 "/_georeg/v1/conflicts/" + "9" * 3000 + "/1?resolve=retagged"]:
        rr = eu.req("POST", path)
        assert rr.status in (400, 404, 414, 431), (path[:80], rr.status)
    rr = eu.req("POST", "/_georeg/v1/conflicts")
    assert rr.status in (400, 404, 405), rr.status
    assert alive(eu)


# --------------------------------------------------------------------------
# 6. the base epoch has no record: any eligible node may claim it


@pytest.mark.xfail(reason='issue 9 follow-up: epoch 1 has no signed record, so two nodes configured as initial primary can both be followed', strict=False, run=False)
def test_two_nodes_that_believe_they_are_the_initial_primary(make_cluster):
    """An operator's typo: us's file says initial_primary: us, eu's and ap's say
    eu. Both start as primaries at epoch 1. Epoch 1 has no promotion record, so
    ap's receiver takes ANY eligible node proving epoch 1 as its writer
    (accept_peer: epoch == ours and no record known). ap follows us first: us
    is confirmed. A 6-second blip on us -> ap lets eu in: eu is confirmed too.
    Both stay writable at epoch 1, and their histories are identical (empty), so
    no fork is ever found."""
    cl = make_cluster()
    r = cl.regions(["eu", "us", "ap"], "eu", start=False)
    eu, us, ap = r["eu"], r["us"], r["ap"]
    us.cluster["initial_primary"] = "us"
    ap.start()
    us.start()
    wait_writable(us)
    eu.start()
    time.sleep(2.0)
    cl.links[("us", "ap")].blackhole()
    time.sleep(6.0)
    cl.links[("us", "ap")].restore()
    deadline = time.time() + 20 * SLOW
    both = False
    while time.time() < deadline and not both:
        both = writable(eu) and writable(us)
        time.sleep(0.2)
    if both:
        a = C.push_image(eu, "prod/two", "from-eu")
        b = C.push_image(us, "prod/two", "from-us")
        raise AssertionError("eu and us both writable at epoch %s/%s; pushes to both "
                             "answered 201 (%s, %s)" % (status(eu)["epoch"], status(us)["epoch"],
                                                         a["digest"][:19], b["digest"][:19]))


# --------------------------------------------------------------------------
# 7. the initial primary comes back with an empty (or older) data dir


def test_initial_primary_restarted_empty_does_not_wipe_the_cluster(make_cluster):
    """eu (initial primary, epoch 1, never failed over) loses its disk; the
    operator starts it again with the same config and an empty data dir. It is
    the primary again at epoch 1 (initial_primary), us and ap follow it (same
    epoch, no record to compare), and the fork point (empty history vs empty
    history, capped at eu's head 0) says they are ahead: diverged resync from
    an empty snapshot. Nothing in the confirmation checks that a majority is not
    AHEAD of the confirming primary. Expected: us and ap keep their images."""
    import shutil
    cl = make_cluster()
    r = cl.regions(["eu", "us", "ap"], "eu")
    eu, us, ap = r["eu"], r["us"], r["ap"]
    wait_writable(eu)
    imgs = [C.push_image(eu, "prod/keep", "t%d" % i) for i in range(3)]
    wait_until(lambda: applied(us) == applied(eu) == applied(ap), 30 * SLOW, what="in sync")
    before = C.state(us)
    assert len(before) >= 3
    eu.kill9()
    shutil.rmtree(eu.data_dir)
    os.makedirs(eu.data_dir)
    eu.start()
    time.sleep(12 * SLOW)
    st = status(eu)
    lost = {n.name: sorted(before - C.state(n)) for n in (us, ap)}
    assert not any(lost.values()), (
        "a primary restarted empty wiped its followers: lost %s; eu role=%s writable=%s; "
        "us conflicts=%s" % ({k: len(v) for k, v in lost.items()}, st["role"], st["writable"],
                             us.req("GET", "/_georeg/v1/conflicts").body[:400]))


# --------------------------------------------------------------------------
# 8. more promotions than a history keeps


@pytest.mark.xfail(reason='issue 9 follow-up: a receiver can wedge on a pipe nng does not release during rapid promotions, and the base epoch is not kept past 64 records', strict=False, run=False)
def test_sixty_five_promotions_do_not_make_every_replica_diverge(make_cluster):
    """us and eu are promoted in turn (forced, each time with the other one
    reachable and demoted), 65 times: the 65th record drops the oldest, so the
    new primary's in-memory base epoch is no longer 1. The base epoch is not on
    the wire (Promotion records only; on_history sets base_epoch = 1), so
    hist_fork disagrees at seq 1 with every replica: fork 0, a diverged resync
    and a divergence report on a replica that holds exactly the primary's log.
    (Observed instead, twice: after 6 and after 31 promotions a receiver wedges:
    REPL-PRIMARY-REPLACED with the same old_pipe hundreds of times, every new
    connection dropped at once, REPL-CLOSE-STUCK at shutdown; the new primary
    never confirms, or the old one is never demoted. The base-epoch defect is
    shown by tests/unit/test_history_attack.c.)"""
    cl = make_cluster()
    r = cl.regions(["eu", "us", "ap"], "eu")
    eu, us, ap = r["eu"], r["us"], r["ap"]
    wait_writable(eu)
    C.push_image(eu, "prod/many", "base")
    wait_until(lambda: applied(us) == applied(eu) == applied(ap), 30 * SLOW, what="in sync")
    cur, other = eu, us
    for i in range(66):
        n = other
        st, rep = promote(n, force=True)
        assert st == 200, (i, rep)
        wait_writable(n)
        try:
            wait_until(lambda: status(cur)["role"] == "secondary", 30 * SLOW, what="demoted")
        except TimeoutError:
            a, b = status(cur), status(n)
            got = {}
            for x in (cur, n):
                try:
                    got[x.name] = C.push_image(x, "prod/many", "both-%d" % i)["digest"][:19]
                except AssertionError as e:
                    got[x.name] = "refused"
            raise AssertionError(
                "promotion %d: %s (epoch %s) promoted, the old primary %s (epoch %s) never "
                "demoted: writable %s/%s, pushes %s; %s's receiver log: %s" % (
                    i, n.name, b["epoch"], cur.name, a["epoch"], b["writable"], a["writable"],
                    got, cur.name, [l for l in cur.log(200000).splitlines()
                                    if "PRIMARY-REPLACED" in l][-2:]))
        cur, other = n, cur
        if i == 60:
            assert not ap.req("GET", "/_georeg/v1/conflicts").json()["divergences"]
    C.push_image(cur, "prod/many", "after")
    wait_until(lambda: applied(ap) == applied(cur), 30 * SLOW, what="ap in sync")
    d = ap.req("GET", "/_georeg/v1/conflicts").json()["divergences"]
    hist = status(cur)["history"]
    assert not d, ("ap, which never held anything the primaries lacked, was resynced as "
                   "diverged: %s; primary history base %s, %d records" % (
                       json.dumps(d)[:600], hist[0], len(hist) - 1))


# --------------------------------------------------------------------------
# 9. a development cluster without keys (replication.insecure, tcp://)


@pytest.mark.xfail(reason='issue 9 follow-up: without keys a probe is taken as a hello, so promotion checks see no region', strict=False, run=False)
def test_insecure_cluster_promotion_still_refuses_a_live_primary(make_cluster):
    """Without keys a receiver answers a PeerHello with an Ack (no challenge),
    and accept_peer is called with probe=false for it. promote.c's probe waits
    for a challenge, takes the Ack as "refused" and counts the region as not
    answering: every region looks unreachable, so a promotion without --force
    succeeds next to a live primary (and the probe's hello made the receiver
    follow the candidate)."""
    cl = make_cluster()
    r = cl.regions(["eu", "us", "ap"], "eu", start=False)
    eu, us, ap = r["eu"], r["us"], r["ap"]
    for n in (eu, us, ap):
        n.repl.pop("tls", None)
        n.repl["insecure"] = True
        n.tls_mode = False
        for g in n.cluster["regions"]:
            g["address"] = g["address"].replace("tls+tcp://", "tcp://")
    for n in (ap, us, eu):
        n.start()
    wait_writable(eu)
    C.push_image(eu, "prod/dev", "1")
    wait_until(lambda: applied(us) == applied(eu), 30 * SLOW, what="us in sync")
    st, rep = promote(us)
    assert st == 409 and rep["promoted"] is False, (st, json.dumps(rep)[:800])


# --------------------------------------------------------------------------
# 10. a reload that moves this node's own region


def test_a_reload_moving_this_nodes_own_region_is_refused(make_cluster):
    """reload.c's header: "This node's own region may not move or go: that needs a
    restart". Going is refused; moving (a new address or listen for itself) is
    silently accepted (200, reloaded: true) and changes nothing: the operator is
    told it worked while the node keeps listening on the old address."""
    cl = make_cluster()
    r = cl.regions(["eu", "us", "ap"], "eu")
    eu = r["eu"]
    wait_writable(eu)
    for g in eu.cluster["regions"]:
        if g["name"] == "eu":
            g["address"] = "tls+tcp://127.0.0.1:%d" % itlib.free_port()
    rs, rep = reload(eu)
    assert rs == 400 and rep["reloaded"] is False, rep


def test_reload_storm_under_pushes(make_cluster):
    """40 reloads while pushes go on: each one changes ap's filter (the 32nd and
    later are refused: versions exhausted), and every other one also removes and
    re-adds us. No crash (ASan), pushes keep being acknowledged, us ends up
    shipped to."""
    cl = make_cluster()
    r = cl.regions(["eu", "us", "ap"], "eu", filters={"ap": {"include": ["prod/**"]}})
    eu, us, ap = r["eu"], r["us"], r["ap"]
    wait_writable(eu)
    full = [dict(g) for g in eu.cluster["regions"]]
    stop = threading.Event()
    codes = []

    def pusher():
        i = 0
        while not stop.is_set():
            try:
                C.push_image(eu, "prod/storm", "t%d" % i, layers=1, layer_size=1024)
                codes.append(201)
            except Exception as e:
                codes.append(repr(e)[:80])
            i += 1
    t = threading.Thread(target=pusher)
    t.start()
    answers = []
    try:
        for i in range(40):
            regs = [dict(g) for g in full]
            for g in regs:
                if g["name"] == "ap":
                    g["include"] = ["prod/**", "s%d/**" % i]
            eu.cluster["regions"] = [g for g in regs if g["name"] != "us" or i % 2]
            answers.append(reload(eu)[0])
    finally:
        stop.set()
        t.join()
    assert alive(eu)
    # every region back, ap with the filter in force (refused reloads changed nothing,
    # so a filter back to the first one would need one more version)
    now = {x["name"]: x for x in status(eu)["replicas"]}
    regs = [dict(g) for g in full]
    for g in regs:
        if g["name"] == "ap" and "ap" in now:
            g["include"] = now["ap"]["filter"]["include"]
    eu.cluster["regions"] = regs
    eu.write_config()
    rr = eu.req("POST", "/_georeg/v1/cluster/reload")
    assert rr.status == 200, rr
    img = C.push_image(eu, "prod/storm", "final")
    wait_until(lambda: C.manifest(us, "prod/storm", "final")[1] == img["digest"], 30 * SLOW,
               what="us shipped to after the storm")
    print("reload answers", answers, "pushes", codes.count(201), "of", len(codes))
