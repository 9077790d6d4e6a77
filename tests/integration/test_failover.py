"""Issue 9: failover that loses nothing (promotion, fencing, the fork point,
divergence reports, honest state, shutdown).

Every test runs a cluster description (cluster.regions) over mutual TLS on
loopback; each node dials every other through a fault proxy of its own
(cluster.Cluster.regions), so a test can cut one direction of one pair, isolate
a region or black-hole it. Processes are real georeg nodes, stopped by PID at
teardown (conftest / cluster.close).

The reproductions of the issue:
- a replica ahead of the new primary, on the old primary's branch, was streamed
  into from its own sequence number (silent divergence, `locate` lying);
- an old primary, restarted, took writes at its old epoch (split brain);
- a replaced primary and the new one took a replica's connection from each
  other forever; nodes then hung on SIGTERM;
- a stale secondary said `in-sync`, `/readyz` was 200 on stale and fenced
  nodes, LAST_CONTACT moved with every redial.
"""
import json
import os
import signal
import time

import pytest

import cluster as C
import itlib
from itlib import wait_until
from test_replication import make_cluster  # noqa: F401  (the fixture: an empty Cluster)

pytestmark = pytest.mark.georeg_only("failover is georeg's own")

TEST_ALARM = 420 if itlib.ASAN else 220
SLOW = C.SLOW


def status(n):
    return n.status()


def promote(n, force=False, cli=False):
    """(HTTP status, report) of a promotion of n."""
    if cli:
        args = ["promote", "--json", "--url", n.url] + (["--force"] if force else [])
        out = C.georeg_cli(*args)
        rep = json.loads(out.stdout)
        return (200 if out.returncode == 0 else 409), rep
    r = n.req("POST", "/_georeg/v1/promote" + ("?force=true" if force else ""))
    return r.status, r.json()


def writable(n):
    return status(n)["writable"]


def wait_writable(n, timeout=30):
    wait_until(lambda: writable(n), timeout * SLOW, interval=0.1, what="%s writable" % n.name)


def primary_of(nodes):
    return [n.name for n in nodes if status(n)["role"] == "primary"]


def wait_state_equal(a, b, timeout=60):
    def same():
        try:
            return C.state(a) == C.state(b)
        except AssertionError:
            return False
    try:
        wait_until(same, timeout * SLOW, interval=0.3, what="%s == %s" % (a.name, b.name))
    except TimeoutError:
        raise AssertionError("%s and %s differ:\n %s\n %s\n%s" % (
            a.name, b.name, sorted(C.state(a)), sorted(C.state(b)),
            json.dumps([status(a), status(b)], indent=1)))


def push_n(node, repo, prefix, n):
    out = {}
    for i in range(n):
        img = C.push_image(node, repo, "%s%05d" % (prefix, i), layers=1, layer_size=2048)
        out["%s%05d" % (prefix, i)] = img["digest"]
    return out


def applied(n):
    st = status(n)
    return st["head_seq"] if st["role"] == "primary" else st["applied_seq"]


# --------------------------------------------------------------------------
# promotion


def test_promotion_refuses_a_behind_candidate_and_the_ahead_one_wins(make_cluster):
    """eu's link to us is cut, three images reach ap only, eu dies. Promoting us
    is refused (ap holds events us lacks: what would be lost is in the report);
    promoting ap succeeds at epoch 2, us follows it, catches up, and the next
    push reaches both. us is promoted by the CLI in a second round: refused the
    same way (exit 1)."""
    cl = make_cluster()
    r = cl.regions(["eu", "us", "ap"], "eu")
    eu, us, ap = r["eu"], r["us"], r["ap"]
    wait_writable(eu)
    C.push_image(eu, "prod/p", "base")
    wait_until(lambda: applied(us) == applied(eu) and applied(ap) == applied(eu), 30 * SLOW,
               what="in sync")
    cl.links[("eu", "us")].blackhole()
    push_n(eu, "prod/p", "x", 3)
    wait_until(lambda: applied(ap) == applied(eu), 30 * SLOW, what="ap has it")
    eu.kill9()

    st, rep = promote(us)
    assert st == 409 and rep["promoted"] is False, rep
    assert any("ap holds" in x for x in rep["refused"]), rep
    ap_row = [x for x in rep["regions"] if x["name"] == "ap"][0]
    assert ap_row["reachable"] and ap_row["ahead_by"] > 0, rep
    assert status(us)["role"] == "secondary" and status(us)["epoch"] == 1

    code, rep = promote(us, cli=True)
    assert code == 409 and rep["promoted"] is False, rep

    st, rep = promote(ap)
    assert st == 200 and rep["promoted"] is True and rep["epoch"] == 2, rep
    wait_writable(ap)  # confirmed by us (2 of 3)
    assert status(ap)["role"] == "primary"
    img = C.push_image(ap, "prod/p", "after")
    wait_state_equal(ap, us)
    assert C.manifest(us, "prod/p", "after")[1] == img["digest"]
    assert status(us)["epoch"] == 2
    h = status(us)["history"]
    assert h[-1]["epoch"] == 2 and h[-1]["node"] == "ap" and h[-1]["signed"] is True, h


def test_promotion_refuses_a_filtered_replica_even_forced(make_cluster):
    """ap holds a filtered replica: it may not be promoted, not even with --force;
    us may (eu is dead)."""
    cl = make_cluster()
    r = cl.regions(["eu", "us", "ap"], "eu", filters={"ap": {"include": ["prod/**"]}})
    eu, us, ap = r["eu"], r["us"], r["ap"]
    wait_writable(eu)
    C.push_image(eu, "prod/f", "1")
    C.push_image(eu, "dev/f", "1")
    wait_until(lambda: applied(us) == applied(eu) and applied(ap) == applied(eu), 30 * SLOW,
               what="in sync")
    eu.kill9()
    for force in (False, True):
        st, rep = promote(ap, force=force)
        assert st == 409 and rep["promoted"] is False, rep
        assert any("may not become primary" in x for x in rep["refused"]), rep
    assert status(ap)["role"] == "secondary"
    st, rep = promote(us)
    assert st == 200 and rep["promoted"] is True, rep
    wait_writable(us)
    C.push_image(us, "prod/f", "2")
    wait_until(lambda: C.manifest(ap, "prod/f", "2")[0] == 200, 30 * SLOW, what="ap follows us")
    assert C.manifest(ap, "dev/f", "1")[0] == 404  # still filtered


def test_promotion_with_a_live_primary_needs_force_and_demotes_it(make_cluster):
    """Promoting us while eu answers as the primary is refused; forced, us takes
    epoch 2 and tells eu, which verifies the record, becomes a secondary (pushes
    answer 403 DENIED naming us) and follows us; ap follows us too."""
    cl = make_cluster()
    r = cl.regions(["eu", "us", "ap"], "eu")
    eu, us, ap = r["eu"], r["us"], r["ap"]
    wait_writable(eu)
    base = C.push_image(eu, "prod/l", "1")
    wait_until(lambda: applied(us) == applied(eu), 30 * SLOW, what="us in sync")
    st, rep = promote(us)
    assert st == 409 and any("answers as the primary" in x for x in rep["refused"]), rep
    st, rep = promote(us, force=True)
    assert st == 200 and rep["promoted"] is True and rep["epoch"] == 2, rep
    wait_until(lambda: status(eu)["role"] == "secondary", 30 * SLOW, what="eu demoted")
    assert status(eu)["demotions"] >= 1
    r2 = itlib.put_manifest(eu, "prod/l", "2", base["manifest"])
    assert r2.status == 403 and r2.error_codes() == ["DENIED"], r2
    wait_writable(us)
    img = C.push_image(us, "prod/l", "3")
    for n in (eu, ap):
        wait_until(lambda n=n: C.manifest(n, "prod/l", "3")[1] == img["digest"], 30 * SLOW,
                   what="%s follows us" % n.name)
    assert primary_of([eu, us, ap]) == ["us"]
    m = eu.req("GET", "/metrics").body.decode()
    assert "georeg_repl_primary 0" in m and "georeg_repl_demotions_total 1" in m, m


# --------------------------------------------------------------------------
# the fork point


def test_a_replica_on_another_branch_is_resynced_not_streamed_into(make_cluster):
    """The issue's silent divergence. eu's link to us is cut; ten images reach ap
    only; eu dies; ap is cut off too. us is promoted (epoch 2, forced alone:
    `georeg fence clear`) and takes eleven images, so that its head passes ap's
    applied seq. When ap comes back it is 'behind' by sequence number but on
    another branch: the new primary finds the fork point, resyncs ap instead of
    streaming into it, and ap reports the ten tags it lost as conflicts. At the
    end ap serves exactly what us serves, and `georeg wait` on ap is honest."""
    cl = make_cluster()
    r = cl.regions(["eu", "us", "ap"], "eu")
    eu, us, ap = r["eu"], r["us"], r["ap"]
    wait_writable(eu)
    C.push_image(eu, "prod/div", "base")
    wait_until(lambda: applied(us) == applied(eu) and applied(ap) == applied(eu), 30 * SLOW,
               what="in sync")
    cl.links[("eu", "us")].blackhole()
    lost = push_n(eu, "prod/div", "a", 10)
    wait_until(lambda: applied(ap) == applied(eu), 30 * SLOW, what="ap has a*")
    ap_applied = applied(ap)
    eu.kill9()
    cl.isolate("ap")

    st, rep = promote(us)
    assert st == 200, rep  # eu dead, ap unreachable: nobody known to be ahead
    assert status(us)["confirming"] is True and not writable(us)
    out = C.georeg_cli("fence", "clear", "--url", us.url)
    assert out.returncode == 0, out
    wait_writable(us)
    kept = push_n(us, "prod/div", "b", 11)
    assert applied(us) > ap_applied, (applied(us), ap_applied)

    cl.heal("ap")
    wait_state_equal(us, ap)
    for t, d in kept.items():
        assert C.manifest(ap, "prod/div", t)[1] == d
    for t in lost:
        assert C.manifest(ap, "prod/div", t)[0] == 404, t
    rs = [x for x in status(us)["replicas"] if x["name"] == "ap"][0]
    assert rs["diverged"] >= 1, rs
    conf = ap.req("GET", "/_georeg/v1/conflicts").json()
    tags = sorted(c["tag"] for c in conf["conflicts"])
    assert tags == sorted(lost), conf
    assert all(c["new_digest"] is None for c in conf["conflicts"]), conf
    assert conf["divergences"] and conf["divergences"][0]["lost_events"] >= 10, conf
    out = C.georeg_cli("wait", "prod/div:b00003", "--regions", "ap", "--url", us.url,
                       "--timeout", "30s")
    assert out.returncode == 0, out
    assert C.manifest(ap, "prod/div", "b00003")[0] == 200
    loc = us.req("GET", "/_georeg/v1/locate/prod/div:a00003?regions=ap")
    assert loc.status == 404, loc


def test_old_primary_returns_fenced_then_demoted_and_reports_its_writes(make_cluster):
    """eu is isolated; us is promoted and takes writes; eu, still up, takes three
    pushes nobody else sees and moves a tag. Restarted, eu does not take writes
    (it was primary: confirming until a majority follows it), ever: it learns
    that us was promoted, becomes a secondary, is resynced from the fork point,
    and reports its three tags and the moved one as conflicts (API, CLI,
    metrics, audit). Resolving one is recorded. All three regions end equal."""
    cl = make_cluster()
    r = cl.regions(["eu", "us", "ap"], "eu")
    eu, us, ap = r["eu"], r["us"], r["ap"]
    wait_writable(eu)
    base = C.push_image(eu, "prod/sb", "v1")
    wait_until(lambda: applied(us) == applied(eu) and applied(ap) == applied(eu), 30 * SLOW,
               what="in sync")
    cl.isolate("eu")
    st, rep = promote(us)
    assert st == 200, rep
    wait_writable(us)
    x = push_n(us, "prod/sb", "x", 3)
    y = push_n(eu, "prod/sb", "y", 3)  # acknowledged by the isolated old primary
    moved = C.push_image(eu, "prod/sb", "v1")  # v1 moved on eu only

    eu.kill9()
    eu.start()
    st_eu = status(eu)
    assert st_eu["role"] == "primary" and st_eu["confirming"] and not st_eu["writable"], st_eu
    r2 = itlib.put_manifest(eu, "prod/sb", "z", base["manifest"])
    assert r2.status == 403 and r2.error_codes() == ["DENIED"], r2
    assert eu.req("GET", "/readyz").status == 503

    cl.heal("eu")
    wait_until(lambda: status(eu)["role"] == "secondary", 30 * SLOW, what="eu demoted")
    wait_state_equal(us, eu)
    wait_state_equal(us, ap)
    for t, d in x.items():
        assert C.manifest(eu, "prod/sb", t)[1] == d
    assert C.manifest(eu, "prod/sb", "v1")[1] == base["digest"]
    wait_until(lambda: eu.req("GET", "/_georeg/v1/conflicts").json()["conflicts"], 30 * SLOW,
               what="conflicts reported")
    conf = eu.req("GET", "/_georeg/v1/conflicts").json()
    got = {c["tag"]: (c["old_digest"], c["new_digest"]) for c in conf["conflicts"]}
    for t, d in y.items():
        assert got.get(t) == (d, None), (t, got)
    assert got.get("v1") == (moved["digest"], base["digest"]), got
    m = eu.req("GET", "/metrics").body.decode()
    assert "georeg_repl_conflicts 4" in m, m
    out = C.georeg_cli("conflicts", "--url", eu.url)
    assert out.returncode == 0 and "y00001" in out.stdout and "v1" in out.stdout, out
    c0 = [c for c in conf["conflicts"] if c["tag"] == "v1"][0]
    out = C.georeg_cli("conflicts", "resolve", str(c0["report"]), str(c0["n"]), "--keep-new",
                       "--url", eu.url)
    assert out.returncode == 0, out
    conf2 = eu.req("GET", "/_georeg/v1/conflicts").json()
    assert "v1" not in [c["tag"] for c in conf2["conflicts"]] and len(conf2["conflicts"]) == 3
    audit = eu.req("GET", "/_georeg/v1/audit?action=replication.refused").body.decode()
    assert "diverged" in audit, audit
    assert primary_of([eu, us, ap]) == ["us"]


def test_isolated_restarted_primary_never_takes_writes(make_cluster):
    """Split brain: eu, restarted while cut off from both regions, stays
    confirming; a hundred push attempts over several seconds are all refused
    403, none answered 201."""
    cl = make_cluster()
    r = cl.regions(["eu", "us", "ap"], "eu")
    eu = r["eu"]
    wait_writable(eu)
    img = C.push_image(eu, "prod/iso", "1")
    cl.isolate("eu", how="cut")
    eu.kill9()
    eu.start()
    codes = set()
    for i in range(100):
        codes.add(itlib.put_manifest(eu, "prod/iso", "t%d" % i, img["manifest"]).status)
        time.sleep(0.03)
    assert codes == {403}, codes
    assert status(eu)["confirming"] is True


# --------------------------------------------------------------------------
# honest state, shutdown


def test_state_is_honest_under_backlog_and_cut_off(make_cluster):
    """Under a backlog (a slow link) a secondary says how far behind it is
    (primary_head_seq beyond applied_seq, catching-up); cut off, its staleness
    grows, /readyz turns 503 past replication.max_staleness, and LAST_CONTACT
    stays the last message actually received while the primary redials."""
    cl = make_cluster()
    r = cl.regions(["eu", "us"], "eu", max_staleness="3s")
    eu, us = r["eu"], r["us"]
    wait_writable(eu)
    cl.links[("eu", "us")].rate(64 * 1024)
    for i in range(6):
        C.push_image(eu, "prod/slow", str(i), layers=1, layer_size=200_000)
    seen = []

    def behind():
        st = status(us)
        seen.append(st)
        return st["primary_head_seq"] > st["applied_seq"] and st["lag_events"] > 0
    wait_until(behind, 30 * SLOW, interval=0.1, what="us knows it is behind")
    cl.links[("eu", "us")].rate(0)
    wait_until(lambda: applied(us) == applied(eu), 60 * SLOW, what="caught up")
    assert us.req("GET", "/readyz").status == 200

    cl.links[("eu", "us")].cut()
    cl.links[("us", "eu")].cut()
    wait_until(lambda: status(us)["state"] == "disconnected", 30 * SLOW, what="cut")
    c1 = status(us)["last_contact"]
    time.sleep(2.5)  # the primary redials every few hundred ms meanwhile
    assert status(us)["last_contact"] == c1
    wait_until(lambda: us.req("GET", "/readyz").status == 503, 30 * SLOW, what="stale")
    body = us.req("GET", "/readyz").body
    assert b"stale" in body, body
    cl.links[("eu", "us")].restore()
    cl.links[("us", "eu")].restore()
    wait_until(lambda: us.req("GET", "/readyz").status == 200, 30 * SLOW, what="ready again")


def test_sigterm_exits_with_a_replaced_primary_and_a_stuck_link(make_cluster):
    """Two nodes that were primary, a replica between them, a link that
    swallows packets in the middle of a blob: every node exits 0 on SIGTERM
    (cluster.close checks the exit status of each)."""
    cl = make_cluster()
    r = cl.regions(["eu", "us", "ap"], "eu")
    eu, us, ap = r["eu"], r["us"], r["ap"]
    wait_writable(eu)
    C.push_image(eu, "prod/term", "1")
    st, rep = promote(us, force=True)
    assert st == 200, rep
    wait_until(lambda: status(eu)["role"] == "secondary", 30 * SLOW, what="eu demoted")
    wait_writable(us)
    cl.links[("us", "ap")].blackhole()
    C.push_image(us, "prod/term", "2", layers=1, layer_size=3 << 20)
    time.sleep(0.5)
    for n in (us, eu, ap):
        assert n.stop() == 0, n.name


# --------------------------------------------------------------------------
# the cluster description, reloaded


def test_cluster_description_reloads_without_a_restart(make_cluster):
    """eu and us run a description without ap. ap added to eu's description and
    SIGHUP: eu ships to it (within its filter). ap's filter widened through POST
    /_georeg/v1/cluster/reload: ap is resynced with it. ap removed: eu stops
    shipping to it and no longer lists it. A reload without this node itself, or
    of a broken file, is refused and changes nothing."""
    cl = make_cluster()
    r = cl.regions(["eu", "us", "ap"], "eu", filters={"ap": {"include": ["prod/**"]}},
                   start=False)
    eu, us, ap = r["eu"], r["us"], r["ap"]
    full = [dict(g) for g in eu.cluster["regions"]]
    for n in (eu, us):
        n.cluster["regions"] = [g for g in n.cluster["regions"] if g["name"] != "ap"]
    us.start()
    eu.start()
    wait_writable(eu)
    C.push_image(eu, "prod/rl", "1")
    C.push_image(eu, "dev/rl", "1")
    assert [x["name"] for x in status(eu)["replicas"]] == ["us"]
    ap.start()

    eu.cluster["regions"] = [dict(g) for g in full]
    eu.write_config()
    os.kill(eu.proc.pid, signal.SIGHUP)
    wait_until(lambda: C.manifest(ap, "prod/rl", "1")[0] == 200, 30 * SLOW,
               what="ap added by SIGHUP and shipped to")
    assert sorted(x["name"] for x in status(eu)["replicas"]) == ["ap", "us"]
    assert C.manifest(ap, "dev/rl", "1")[0] == 404  # outside its filter

    for g in eu.cluster["regions"]:
        if g["name"] == "ap":
            g["include"] = ["**"]
    eu.write_config()
    rr = eu.req("POST", "/_georeg/v1/cluster/reload")
    assert rr.status == 200 and rr.json()["changed"] == ["ap"], rr
    wait_until(lambda: C.manifest(ap, "dev/rl", "1")[0] == 200, 30 * SLOW,
               what="ap resynced with its wider filter")

    good = [dict(g) for g in eu.cluster["regions"]]
    eu.cluster["regions"] = [g for g in good if g["name"] != "eu"]
    eu.write_config()
    rr = eu.req("POST", "/_georeg/v1/cluster/reload")
    assert rr.status == 400 and rr.json()["reloaded"] is False, rr
    assert "eu" in rr.json()["error"], rr
    assert sorted(x["name"] for x in status(eu)["replicas"]) == ["ap", "us"]
    with open(eu.config_path, "a") as f:
        f.write("cluster: [not: a: map\n")
    rr = eu.req("POST", "/_georeg/v1/cluster/reload")
    assert rr.status == 400 and rr.json()["reloaded"] is False, rr

    eu.cluster["regions"] = [g for g in good if g["name"] != "ap"]
    eu.write_config()
    rr = eu.req("POST", "/_georeg/v1/cluster/reload")
    assert rr.status == 200 and rr.json()["removed"] == ["ap"], rr
    assert [x["name"] for x in status(eu)["replicas"]] == ["us"]
    before = applied(ap)
    img = C.push_image(eu, "prod/rl", "2")
    wait_until(lambda: C.manifest(us, "prod/rl", "2")[1] == img["digest"], 30 * SLOW,
               what="us still shipped to")
    time.sleep(1.0)
    assert applied(ap) == before and C.manifest(ap, "prod/rl", "2")[0] == 404
    assert status(eu)["voters"] == 2
