"""Geo-replication against real processes on loopback (issue 3's list).

A primary ships to secondaries over nng (mutual TLS unless a test needs to
see the bytes); tests/tools/faultproxy sits between them where a test adds
latency or cuts a link, and a recording Python relay where a test captures
the stream to replay it. Helpers are in cluster.py.

- One module-scoped three-region cluster (eu primary; us takes everything; ap
  takes prod/** and base/* but not **/tmp-* nor tags *-dev) serves the tests
  that only add content in their own repositories: skopeo round trip and
  `georeg wait`, filters, tag moves and deletes, pushes to secondaries.
- Tests that kill, cut, fence, trim or replay get a cluster of their own.

Every wait is bounded (scaled by 3 under ASan), every test has an overall
alarm, and every process is stopped by PID at teardown; a georeg that does not
exit 0 on SIGTERM, or whose stderr holds a sanitizer report, fails the test.

Under ASan (GEOREG_ASAN=1) the push storm is smaller and the large-layer test
moves 32 MiB in 256 KiB chunks instead of 128 MiB in 1 MiB chunks: the same
128 chunks, so the same round-trip bound.
"""

import datetime
import json
import math
import os
import subprocess
import threading
import time
import uuid

import pytest

import cluster as C
import itlib
from itlib import OCILayout, MT_OCI_INDEX, MT_OCI_MANIFEST, run, sha256, wait_until

pytestmark = pytest.mark.georeg_only("replication is georeg's own")

ASAN = itlib.ASAN
SLOW = C.SLOW
TEST_ALARM = 300 if ASAN else 120  # seconds for any one test (conftest's _bounded)
MIB = 1 << 20


# --------------------------------------------------------------------------
# fixtures

def _close(cl):
    problems = cl.close()
    if problems:
        pytest.fail("node problems at teardown:\n  " + "\n  ".join(problems) + "\n" +
                    cl.logs(), pytrace=False)


@pytest.fixture
def make_cluster(tmp_path_factory, request):
    """Function-scoped: make_cluster() -> an empty Cluster, closed at teardown."""
    made = []

    def make():
        itlib_check_binary()
        cl = C.Cluster(str(tmp_path_factory.mktemp("cl")), label=request.node.name)
        made.append(cl)
        return cl
    yield make
    for cl in made:
        _close(cl)


def itlib_check_binary():
    if not os.access(itlib.GEOREG_BIN, os.X_OK):
        pytest.fail("georeg binary not found: %s (run make)" % itlib.GEOREG_BIN)


AP_FILTER = {"include": ["prod/**", "base/*"], "exclude": ["**/tmp-*"],
             "exclude_tags": ["*-dev"]}


@pytest.fixture(scope="module")
def region3(tmp_path_factory):
    """eu (primary) -> us (everything), ap (AP_FILTER), over mutual TLS."""
    itlib_check_binary()
    cl = C.Cluster(str(tmp_path_factory.mktemp("region3")), label="region3")
    try:
        us = cl.secondary("us")
        ap = cl.secondary("ap")
        eu = cl.make_primary("eu", [cl.replica(us), cl.replica(ap, **AP_FILTER)])
        C.wait_state(eu, "us", "in-sync")
        C.wait_state(eu, "ap", "in-sync")
    except BaseException:
        _close(cl)
        raise
    cl.eu, cl.us, cl.ap = eu, us, ap
    yield cl
    _close(cl)


def uid():
    return uuid.uuid4().hex[:8]


def skopeo_run(skopeo, *args, check=True):
    return run([skopeo, "--insecure-policy", *args], check=check)


def same_state(a, b, repos):
    sa, sb = C.state(a, repos), C.state(b, repos)
    assert sa == sb, "%s and %s differ:\n only on %s: %s\n only on %s: %s" % (
        a.name, b.name, a.name, sorted(sa - sb), b.name, sorted(sb - sa))
    return sa


# --------------------------------------------------------------------------
# the module cluster

def test_skopeo_push_replicates_byte_identical_and_georeg_wait(region3, skopeo, tmp_path):
    """skopeo push to the primary; `georeg wait` (started before the push)
    returns once both secondaries hold it, and then both serve it; pulled back
    from each secondary with skopeo, manifest and blobs are byte-identical."""
    eu, us, ap = region3.eu, region3.us, region3.ap
    repo = "prod/app-" + uid()
    src = OCILayout(str(tmp_path / "src"))
    m, info = src.add_image(layers=3, gzip_layers=[True, False, True], file_size=30_000)
    src.tag("1", m, MT_OCI_MANIFEST)
    images = [src.add_image(layers=2, arch=a, file_size=8_000) for a in ("amd64", "arm64")]
    idx = src.add_index(images)
    src.tag("multi", idx, MT_OCI_INDEX)

    # georeg wait before the image exists: it polls until pushed, then waits
    waiter = subprocess.Popen([itlib.GEOREG_BIN, "wait", "%s:1" % repo, "--regions", "us,ap",
                               "--timeout", "60s", "--url", eu.url],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        skopeo_run(skopeo, "copy", "--preserve-digests", "--dest-tls-verify=false",
                   "oci:%s:1" % src.path, "docker://%s/%s:1" % (eu.host, repo))
        out, err = waiter.communicate(timeout=60 * SLOW)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait(10)
    assert waiter.returncode == 0, (waiter.returncode, out, err)
    assert "is in every requested region" in out, out
    # what `wait` promised holds right now, on both
    for sec in (us, ap):
        st, d, body = C.manifest(sec, repo, "1")
        assert st == 200 and d == info["digest"] and body == m, (sec.name, st, d)

    skopeo_run(skopeo, "copy", "--all", "--preserve-digests", "--dest-tls-verify=false",
               "oci:%s:multi" % src.path, "docker://%s/%s:multi" % (eu.host, repo))
    cp = C.georeg_cli("wait", "%s:multi" % repo, "--regions", "us,ap", "--timeout", "60s",
                      "--url", eu.url)
    assert cp.returncode == 0, cp
    # locate agrees
    r = eu.req("GET", "/_georeg/v1/locate/%s/manifests/multi?regions=us,ap&wait=10s" % repo)
    assert r.status == 200, r
    loc = r.json()
    assert loc["complete"] is True, loc
    assert {x["name"]: x["holds"] for x in loc["regions"]} == {"us": True, "ap": True}, loc

    for sec in (us, ap):
        for tag, flags in (("1", []), ("multi", ["--all"])):
            dst = OCILayout(str(tmp_path / ("out-%s-%s" % (sec.name, tag))))
            skopeo_run(skopeo, "copy", *flags, "--preserve-digests", "--src-tls-verify=false",
                       "docker://%s/%s:%s" % (sec.host, repo, tag), "oci:%s:%s" % (dst.path, tag))
            want = info["digest"] if tag == "1" else sha256(idx)
            assert dst.manifest_for(tag)["digest"] == want, (sec.name, tag)
            dst.verify_blobs()
            got = dst.all_blob_digests()
            assert got, dst.path
            for d in got:  # every blob pulled is byte-identical to what was pushed
                assert dst.read_blob(d) == src.read_blob(d), (sec.name, tag, d)
            if tag == "1":
                assert set(got) == {info["digest"], info["config"], *info["layers"]}
            else:
                expect = {sha256(idx)}
                for im, inf in images:
                    expect |= {inf["digest"], inf["config"], *inf["layers"]}
                assert set(got) == expect, (sec.name, set(got) ^ expect)


def test_filters(region3):
    """ap takes prod/** and base/* minus **/tmp-* and tags *-dev: excluded
    repositories never appear there (catalog, manifests, blobs - not even the
    blob's file on disk), but do on us; a blob that an included repository
    mounted from an excluded one travels; base/* is one path segment."""
    eu, us, ap = region3.eu, region3.us, region3.ap
    u = uid()
    dev, tmp, deep = "dev/tool-" + u, "prod/team/tmp-scratch-" + u, "base/os-%s/deep" % u
    svc, base = "prod/svc-" + u, "base/os-" + u
    big_dev = os.urandom(100_000)  # > storage.inline_max: a content file
    excluded = {
        dev: C.push_image(eu, dev, "1", shared=[big_dev]),
        tmp: C.push_image(eu, tmp, "1", layer_size=80_000),
        deep: C.push_image(eu, deep, "1"),
    }
    # a layer first pushed to the excluded dev/..., then mounted into prod/...
    shared = os.urandom(90_000)
    sd = itlib.push_blob(eu, dev, shared)
    r = eu.req("POST", "/v2/%s/blobs/uploads/?mount=%s&from=%s" % (svc, sd, dev))
    assert r.status == 201, r
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "n": u}).encode()
    itlib.push_blob(eu, svc, cfg)
    svc_m = itlib.manifest_bytes({"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
                                  "config": itlib.descriptor(itlib.MT_OCI_CONFIG, cfg),
                                  "layers": [itlib.descriptor(itlib.MT_OCI_LAYER, shared)]})
    assert itlib.put_manifest(eu, svc, "1", svc_m).status == 201
    dev_tagged = C.push_image(eu, svc, "1.0-dev")
    included = {base: C.push_image(eu, base, "1")}
    C.wait_in_sync(eu)

    ap_cat, us_cat = set(C.catalog(ap)), set(C.catalog(us))
    for repo, img in excluded.items():
        assert repo not in ap_cat, repo
        assert repo in us_cat, repo
        assert C.tags(ap, repo) == []
        for ref in ("1", img["digest"]):
            assert C.manifest(ap, repo, ref)[0] == 404, (repo, ref)
            assert C.manifest(us, repo, ref)[0] == 200, (repo, ref)
        for d in img["blobs"]:
            assert C.blob_digest(ap, repo, d)[0] == 404, (repo, d)
            assert C.blob_digest(us, repo, d)[:2] == (200, d), (repo, d)
        C.verify_image(us, repo, "1")
    # the excluded repository's big layer never reached ap's disk; it did reach us's
    hexd = sha256(big_dev).split(":")[1]
    assert C.files_named(ap.data_dir, hexd) == []
    assert C.files_named(us.data_dir, hexd) != []
    assert C.blob_digest(ap, svc, sha256(big_dev))[0] == 404

    # included: the mounted layer travelled; the *-dev tag did not
    assert svc in ap_cat and base in ap_cat
    C.verify_image(ap, svc, "1")
    C.verify_image(ap, base, "1")
    assert C.manifest(ap, svc, "1")[1] == sha256(svc_m)
    assert C.tags(ap, svc) == ["1"]
    assert C.tags(us, svc) == ["1", "1.0-dev"]
    assert C.manifest(ap, svc, "1.0-dev")[0] == 404
    assert C.manifest(us, svc, "1.0-dev")[1] == dev_tagged["digest"]
    same_state(eu, us, [dev, tmp, deep, svc, base])
    same_state(eu, ap, [base])

    # locate and `georeg wait` know about the filter
    r = eu.req("GET", "/_georeg/v1/locate/%s/manifests/1?regions=us,ap" % dev)
    loc = {x["name"]: x for x in r.json()["regions"]}
    assert loc["us"]["holds"] is True and loc["ap"]["included"] is False, loc
    assert loc["ap"]["holds"] is False, loc
    cp = C.georeg_cli("wait", "%s:1" % dev, "--regions", "us,ap", "--timeout", "1s",
                      "--url", eu.url)
    assert cp.returncode == 1, cp
    assert "excluded by filter" in cp.stdout, cp


def test_tag_moves_and_deletes_replicate(region3):
    eu, us, ap = region3.eu, region3.us, region3.ap
    repo = "prod/moves-" + uid()
    x = C.push_image(eu, repo, "t1")
    assert itlib.put_manifest(eu, repo, "t2", x["manifest"]).status == 201
    y = C.push_image(eu, repo, "keep")
    C.wait_in_sync(eu)
    for sec in (us, ap):
        assert same_state(eu, sec, [repo]) == {(repo, "t1", x["digest"]),
                                              (repo, "t2", x["digest"]),
                                              (repo, "keep", y["digest"])}

    # tag move: t1 -> y
    assert itlib.put_manifest(eu, repo, "t1", y["manifest"]).status == 201
    C.wait_in_sync(eu)
    for sec in (us, ap):
        assert C.manifest(sec, repo, "t1")[1] == y["digest"], sec.name
        same_state(eu, sec, [repo])

    # tag delete: t2 goes, x itself stays
    r = eu.req("DELETE", "/v2/%s/manifests/t2" % repo)
    assert r.status == 202, r
    C.wait_in_sync(eu)
    for sec in (us, ap):
        assert C.tags(sec, repo) == ["keep", "t1"], sec.name
        assert C.manifest(sec, repo, x["digest"])[0] == 200, sec.name

    # manifest delete: y goes with its tags t1 and keep; x still there, untagged
    r = eu.req("DELETE", "/v2/%s/manifests/%s" % (repo, y["digest"]))
    assert r.status == 202, r
    C.wait_in_sync(eu)
    for sec in (us, ap):
        assert C.manifest(sec, repo, y["digest"])[0] == 404, sec.name
        assert C.manifest(sec, repo, "t1")[0] == 404, sec.name
        assert C.tags(sec, repo) == [], sec.name
        assert C.manifest(sec, repo, x["digest"])[0] == 200, sec.name
        assert same_state(eu, sec, [repo]) == set()


def test_push_to_secondary_is_denied_naming_the_primary(region3, skopeo, tmp_path):
    eu, us, ap = region3.eu, region3.us, region3.ap
    repo = "prod/denied-" + uid()
    img = C.push_image(eu, repo, "1")
    C.wait_in_sync(eu)
    data = b"not on a secondary"
    for sec in (us, ap):
        before = C.catalog(sec)
        for method, path, body, hdrs in (
                ("POST", "/v2/%s/blobs/uploads/" % repo, None, {}),
                ("POST", "/v2/%s/blobs/uploads/?digest=%s" % (repo, sha256(data)), data,
                 {"Content-Type": "application/octet-stream"}),
                ("PUT", "/v2/%s/manifests/2" % repo, img["manifest"],
                 {"Content-Type": MT_OCI_MANIFEST}),
                ("DELETE", "/v2/%s/manifests/1" % repo, None, {}),
                ("DELETE", "/v2/%s/manifests/%s" % (repo, img["digest"]), None, {}),
                ("DELETE", "/v2/%s/blobs/%s" % (repo, next(iter(img["blobs"]))), None, {})):
            r = sec.req(method, path, body=body, headers=hdrs)
            assert r.status == 403, (sec.name, method, path, r)
            assert r.error_codes() == ["DENIED"], r
            msg = r.json()["errors"][0]["message"]
            assert eu.url in msg, (sec.name, msg)
        assert C.catalog(sec) == before
        assert C.tags(sec, repo) == ["1"]
        assert C.manifest(sec, repo, "1")[1] == img["digest"]
    # a real client gets the message too
    src = OCILayout(str(tmp_path / "src"))
    m, _ = src.add_image(layers=1)
    src.tag("x", m, MT_OCI_MANIFEST)
    cp = skopeo_run(skopeo, "copy", "--dest-tls-verify=false", "oci:%s:x" % src.path,
                    "docker://%s/%s:x" % (us.host, repo), check=False)
    assert cp.returncode != 0, cp
    assert "denied" in cp.stderr.lower() and eu.url in cp.stderr, cp.stderr


# --------------------------------------------------------------------------
# clusters of their own

STORM_THREADS = 4 if ASAN else 6
STORM_IMAGES = 6 if ASAN else 12


def test_secondary_killed_during_push_storm_converges(make_cluster):
    """Concurrent pushes (new images, tag moves, tag deletes, some to a
    repository the secondary's filter excludes); the secondary is killed with
    -9 a third of the way in and restarted while the storm goes on. It
    converges: its (repo, tag, digest) set equals the primary's for the
    included repositories, every blob digest verifies, lag returns to zero."""
    cl = make_cluster()
    s = cl.secondary("s1")
    p = cl.make_primary("p", [cl.replica(s, include=["storm/**"])])
    C.wait_state(p, "s1", "in-sync")

    base = os.urandom(40_000)
    total = STORM_THREADS * STORM_IMAGES
    done = [0]
    errors = []
    lock = threading.Lock()

    def pusher(i):
        try:
            for j in range(STORM_IMAGES):
                repo = ("noise/r%d" if j % 4 == 1 else "storm/r%d") % i
                big = j % 2 == 0
                C.push_image(p, repo, "v%d" % j, layers=1 if big else 2,
                             layer_size=300_000 if big else 6_000, shared=[base])
                # move "latest" to this image
                st, d, body = C.manifest(p, repo, "v%d" % j)
                assert st == 200
                assert itlib.put_manifest(p, repo, "latest", body).status == 201
                if j % 4 == 3:
                    r = p.req("DELETE", "/v2/%s/manifests/v%d" % (repo, j - 2))
                    assert r.status in (202, 404), r
                with lock:
                    done[0] += 1
        except BaseException as e:  # reported by the main thread
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=pusher, args=(i,), daemon=True)
               for i in range(STORM_THREADS)]
    for t in threads:
        t.start()
    wait_until(lambda: done[0] >= total // 3 or errors, 60 * SLOW, what="a third of the storm")
    before = C.replica(p, "s1")
    s.kill9()
    time.sleep(0.3)
    s.start()
    for t in threads:
        t.join(120 * SLOW)
        assert not t.is_alive(), "pusher thread stuck"
    assert not errors, errors
    assert done[0] == total

    st = C.wait_in_sync(p, ["s1"], timeout=60, cluster=cl)
    included = sorted(r for r in C.catalog(p) if r.startswith("storm/"))
    assert len(included) == STORM_THREADS
    assert sorted(C.catalog(s)) == included  # and no noise/*
    got = same_state(p, s, included)
    assert len(got) > total // 2
    blobs = set()
    for repo, tag, d in got:
        blobs |= C.verify_image(s, repo, d)
    assert sha256(base) in blobs
    r = st["replicas"][0]
    assert (r["lag_events"], r["lag_bytes"], r["lag_seconds"]) == (0, 0, 0.0), r
    sst = wait_until(lambda: (lambda x: x if x["applied_seq"] == st["head_seq"] and
                              x["lag_events"] == 0 and x["state"] == "in-sync" else None)(
        s.status()), 10 * SLOW, what="secondary reports in-sync")
    assert sst["staleness_seconds"] == 0.0, sst
    print("storm: %d pushes, %d events; at the kill the replica had acked %d, %d behind (%s)"
          % (total, st["head_seq"], before["acked_seq"], before["lag_events"], before["state"]))


@pytest.mark.parametrize("fault", ["cut", "blackhole"])
def test_link_fault_lag_grows_then_converges(make_cluster, fault):
    """The proxy cuts the link (resets and refuses connections) or black-holes
    it (connections stay open, nothing moves): the replica turns unreachable,
    and lag grows in events, bytes and seconds while the primary keeps taking
    pushes; after restore the replica converges."""
    cl = make_cluster()
    s = cl.secondary("s")
    fp = cl.proxy(s)
    p = cl.make_primary("p", [cl.replica(s, via=fp)])
    repo = "prod/cut-" + uid()
    C.push_image(p, repo, "0")
    C.wait_in_sync(p, cluster=cl)

    getattr(fp, fault)()
    # cut: the pipe closes at once; blackhole: 4 silent heartbeats, then redial
    C.wait_state(p, "s", "unreachable", timeout=15)
    a = C.push_image(p, repo, "a", layers=2, layer_size=50_000)
    r1 = C.replica(p, "s")
    assert r1["state"] == "unreachable", r1
    assert r1["lag_events"] >= 4, r1  # 3 blobs + the manifest
    assert r1["lag_bytes"] >= 100_000 + len(a["manifest"]), r1
    time.sleep(1.2)
    b = C.push_image(p, repo, "b", layers=1, layer_size=30_000)
    r2 = C.replica(p, "s")
    assert r2["state"] == "unreachable", r2
    assert r2["lag_events"] >= r1["lag_events"] + 3, (r1, r2)
    assert r2["lag_bytes"] >= r1["lag_bytes"] + 30_000, (r1, r2)
    assert r2["lag_seconds"] >= r1["lag_seconds"] + 1.0, (r1, r2)
    assert r2["last_contact_seconds_ago"] > r1["last_contact_seconds_ago"], (r1, r2)
    assert r2["acked_seq"] == r1["acked_seq"]
    # the secondary, for its part, knows it lost its primary, and that it is
    # growing stale (it cannot know the primary's head any more)
    wait_until(lambda: s.status()["state"] == "disconnected", 10 * SLOW,
               what="secondary reports disconnected")
    s1 = s.status()
    time.sleep(1.0)
    s2 = s.status()
    assert s2["state"] == "disconnected", s2
    # it was current when it last heard the primary (the link was cut in sync):
    # it has been stale at least since then (1 s of slack for the heartbeat)
    silent = _seconds(s2["now"]) - _seconds(s2["last_contact"])
    assert s2["staleness_seconds"] is not None, s2
    assert s2["staleness_seconds"] >= silent - 1.0, (
        "secondary cut off %.1fs ago reports staleness %.1fs" % (silent,
                                                               s2["staleness_seconds"]))
    assert s2["staleness_seconds"] >= s1["staleness_seconds"] + 0.9, (s1, s2)
    assert C.manifest(s, repo, "a")[0] == 404

    fp.restore()
    C.wait_in_sync(p, timeout=30, cluster=cl)
    C.wait_state(p, "s", "in-sync")
    same_state(p, s, [repo])
    for img in (a, b):
        C.verify_image(s, repo, img["digest"])


def test_resync_after_log_trimmed_past_cursor(make_cluster):
    """log_retention 5: the secondary is offline while more than 5 events are
    committed and the log is trimmed past its cursor. On return it is rebuilt
    from a snapshot (resync count goes up) and converges - including what was
    deleted while it was away."""
    cl = make_cluster()
    s = cl.secondary("s")
    p = cl.make_primary("p", [cl.replica(s)], log_retention=5)
    repo, other = "prod/rs-" + uid(), "prod/rs-other-" + uid()
    gone = C.push_image(p, repo, "gone")
    moved = C.push_image(p, repo, "moved")
    C.wait_in_sync(p, cluster=cl)
    r0 = C.replica(p, "s")
    s.stop()
    C.wait_state(p, "s", "unreachable")

    r = p.req("DELETE", "/v2/%s/manifests/%s" % (repo, gone["digest"]))
    assert r.status == 202, r
    newer = C.push_image(p, repo, "new", layer_size=100_000)
    assert itlib.put_manifest(p, repo, "moved", newer["manifest"]).status == 201
    for i in range(3):
        C.push_image(p, other, "v%d" % i)
    head = p.status()["head_seq"]
    assert head - r0["acked_seq"] > 5
    # trimming runs every 5 s
    st = wait_until(lambda: (lambda x: x if x["log_first_seq"] > r0["acked_seq"] + 1 else None)(
        p.status()), 15 * SLOW, what="log trimmed past the replica's cursor")
    assert st["log_first_seq"] > r0["acked_seq"] + 1

    s.start()
    C.wait_in_sync(p, timeout=40, cluster=cl)
    r1 = C.replica(p, "s")
    assert r1["resync"]["count"] >= r0["resync"]["count"] + 1, (r0, r1)
    assert r1["resync"]["total_bytes"] > 0 and r1["resync"]["sent_bytes"] > 0, r1
    same_state(p, s, [repo, other])
    assert sorted(C.catalog(s)) == sorted(C.catalog(p))
    assert C.manifest(s, repo, gone["digest"])[0] == 404
    assert C.manifest(s, repo, "gone")[0] == 404
    assert C.manifest(s, repo, "moved")[1] == newer["digest"]
    for repo_, tag, d in C.state(s):
        C.verify_image(s, repo_, d)
    assert s.req("GET", "/readyz").status == 200
    # and it continues from the log
    after = C.push_image(p, other, "after")
    C.wait_in_sync(p, cluster=cl)
    assert C.manifest(s, other, "after")[1] == after["digest"]
    assert C.replica(p, "s")["resync"]["count"] == r1["resync"]["count"]


def _replicate_layer(p, repo, tag, size, cl):
    """Pushes a random layer of size bytes and a manifest to p; returns (seconds
    from the layer's commit on p to the replica's ack of the manifest, blob
    digest, manifest digest)."""
    data = os.urandom(size)
    d = itlib.push_blob(p, repo, data)
    t0 = time.monotonic()
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "tag": tag}).encode()
    itlib.push_blob(p, repo, cfg)
    m = itlib.manifest_bytes({"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
                              "config": itlib.descriptor(itlib.MT_OCI_CONFIG, cfg),
                              "layers": [itlib.descriptor(itlib.MT_OCI_LAYER, data)]})
    del data
    assert itlib.put_manifest(p, repo, tag, m).status == 201
    wait_until(lambda: C.in_sync(p), 120 * SLOW, interval=0.01, what="large layer replicated")
    return time.monotonic() - t0, d, sha256(m)


def test_large_layer_over_100ms_rtt_is_pipelined(make_cluster):
    """With 50 ms added each way (100 ms round trip), a 128 MiB layer - 128
    chunks of 1 MiB - replicates in far fewer than one round trip per chunk.

    Bound (about round trips, not machine speed): a shipper that waited for
    each chunk's ack would spend at least chunks x RTT = 128 x 0.1 s = 12.8 s
    more than the same transfer without latency. The same layer size is first
    replicated through the proxy with no latency (the machine's own cost,
    measured, not assumed); with the latency it may take at most a quarter of
    the stop-and-wait penalty more: extra < chunks x RTT / 4 = 3.2 s. Times run
    from the layer's commit on the primary to the replica's ack of the manifest
    that follows it. Under ASan: 32 MiB in 256 KiB chunks - the same 128 chunks
    and the same bound."""
    size, chunk = (32 * MIB, 256 * 1024) if ASAN else (128 * MIB, MIB)
    one_way_ms = 50
    rtt = 2 * one_way_ms / 1000.0
    chunks = math.ceil(size / chunk)
    bound = chunks * rtt / 4

    cl = make_cluster()
    s = cl.secondary("s")
    fp = cl.proxy(s)
    p = cl.make_primary("p", [cl.replica(s, via=fp)], chunk_size="%dKiB" % (chunk // 1024))
    C.wait_state(p, "s", "in-sync", timeout=20)
    repo = "prod/big-" + uid()

    base, d0, m0 = _replicate_layer(p, repo, "no-latency", size, cl)
    fp.latency(one_way_ms)
    # the link really has the round trip now: a small image takes at least one
    t0 = time.monotonic()
    C.push_image(p, repo, "small", layers=1, layer_size=1000)
    C.wait_in_sync(p, cluster=cl)
    small = time.monotonic() - t0
    assert small >= rtt, "latency not in effect: %.3fs" % small

    took, d, m = _replicate_layer(p, repo, "big", size, cl)
    print("large layer: %d MiB in %d chunks: %.2fs without latency, %.2fs over %.0f ms RTT; "
          "extra %.2fs, bound %.2fs (chunks x RTT / 4; stop-and-wait would add >= %.1fs); "
          "small image over the RTT: %.3fs" % (size // MIB, chunks, base, took, rtt * 1000,
                                              took - base, bound, chunks * rtt, small))
    assert took - base < bound, (
        "%d chunks over a %.0f ms round trip took %.2fs, %.2fs more than without latency: "
        "not under chunks x RTT / 4 = %.2fs, so not pipelined"
        % (chunks, rtt * 1000, took, took - base, bound))
    for dg, md, tag in ((d0, m0, "no-latency"), (d, m, "big")):
        assert C.blob_digest(s, repo, dg)[:3] == (200, dg, size)
        assert C.manifest(s, repo, tag)[1] == md


def test_peer_with_certificate_from_another_ca_is_refused(make_cluster):
    """Mutual TLS both ways: a secondary whose certificate comes from another
    CA gets nothing from the real primary (its catalog stays empty, the replica
    stays unreachable), and a primary with such a certificate cannot ship to a
    real secondary; the real pair works alongside."""
    cl = make_cluster()
    good = cl.secondary("us")
    rogue_sec = cl.secondary("rogue", ca="evil", trust="ca")  # trusts the cluster CA
    p = cl.make_primary("eu", [cl.replica(good), cl.replica(rogue_sec)])
    rogue_p = cl.make_primary("mallory", [cl.replica(good)], ca="evil", trust="ca")
    ok = C.push_image(p, "prod/ok", "1")
    evil = C.push_image(rogue_p, "prod/evil", "1")
    C.wait_in_sync(p, ["us"], cluster=cl)
    time.sleep(3.0)  # several dial attempts (100 ms backoff doubling up to 2 s)

    assert C.catalog(rogue_sec) == []
    assert rogue_sec.status()["applied_seq"] == 0
    r = C.replica(p, "rogue")
    assert r["state"] == "unreachable" and r["acked_seq"] == 0, r
    r = C.replica(rogue_p, "us")
    assert r["state"] == "unreachable" and r["acked_seq"] == 0, r
    assert C.catalog(good) == ["prod/ok"]
    assert C.manifest(good, "prod/ok", "1")[1] == ok["digest"]
    assert C.manifest(good, "prod/evil", evil["digest"])[0] == 404
    gs = good.status()
    assert gs["primary"] == "eu" and gs["applied_seq"] == p.status()["head_seq"], gs


def test_stale_epoch_is_refused_and_does_not_fence_the_primary(make_cluster):
    """A secondary at epoch 5 refuses the epoch-1 primary and counts it; the
    primary learns nothing from its acks (issue 8: a primary is never fenced by
    an ack): it keeps taking pushes at epoch 1 and ships nothing to s."""
    cl = make_cluster()
    s = cl.secondary("s", epoch=5, start=False)
    p = cl.make_primary("p", [cl.replica(s)])
    img = C.push_image(p, "prod/epoch", "1")
    s.start()
    wait_until(lambda: s.status()["stale_epoch_rejects"] >= 1, 15 * SLOW,
               what="stale epoch refused")
    wait_until(lambda: "epoch" in C.replica(p, "s")["last_error"], 15 * SLOW,
               what="primary sees the refusal")
    st = p.status()
    assert st["writable"] is True and st["epoch"] == 1 and st["fenced"] is False, st
    assert itlib.put_manifest(p, "prod/epoch", "2", img["manifest"]).status == 201
    assert s.status()["epoch"] == 5
    time.sleep(2.0)
    ss = s.status()
    assert ss["applied_seq"] == 0, ("stale primary shipped to the secondary", ss)
    assert C.catalog(s) == [], "stale primary shipped to the secondary"


def test_operator_fence_persists_until_cleared_or_promoted(make_cluster):
    """An operator fences a primary (POST /_georeg/v1/replication/fence): pushes
    answer 403 DENIED, nothing is shipped, and it stays fenced across a restart.
    `georeg fence clear` lifts it; fenced again, a promotion with
    replication.epoch: 6 lifts it too, and its secondary at epoch 5 follows it
    (a step of 1, within the bound)."""
    cl = make_cluster()
    s = cl.secondary("s", epoch=5, start=False)
    p = cl.make_primary("p", [cl.replica(s)], epoch=5)
    img = C.push_image(p, "prod/fence", "1")
    s.start()
    C.wait_in_sync(p, cluster=cl)
    r = p.req("GET", "/_georeg/v1/replication/fence")
    assert r.status == 200 and json.loads(r.body)["fenced"] is False, r
    r = p.req("POST", "/_georeg/v1/replication/fence")
    assert r.status == 200 and json.loads(r.body)["fenced"] is True, r
    r = itlib.put_manifest(p, "prod/fence", "2", img["manifest"])
    assert r.status == 403 and r.error_codes() == ["DENIED"], r
    assert C.tags(p, "prod/fence") == ["1"]  # reads still served

    p.restart()
    st = p.status()
    assert st["writable"] is False and st["fenced"] is True, st
    assert itlib.put_manifest(p, "prod/fence", "2", img["manifest"]).status == 403
    m = p.req("GET", "/metrics").body.decode()
    assert "georeg_repl_fenced 1" in m

    out = itlib.run([itlib.GEOREG_BIN, "fence", "clear", "--url", p.url], timeout=30)
    assert out.returncode == 0 and '"fenced":false' in out.stdout, out
    assert itlib.put_manifest(p, "prod/fence", "2", img["manifest"]).status == 201
    C.wait_in_sync(p, cluster=cl)

    assert p.req("POST", "/_georeg/v1/replication/fence").status == 200
    p.stop()
    p.repl["epoch"] = 6
    p.start()
    st = p.status()
    assert st["writable"] is True and st["epoch"] == 6, st
    assert itlib.put_manifest(p, "prod/fence", "3", img["manifest"]).status == 201
    C.wait_in_sync(p, cluster=cl)
    assert s.status()["epoch"] == 6
    same_state(p, s, ["prod/fence"])


def _seconds(iso):
    """'2026-11-28T23:42:00.266Z' -> seconds since the epoch."""
    return datetime.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def _recorded_cluster(cl):
    """s (plain tcp) <- recording relay <- p."""
    s = cl.secondary("s", tls=False)
    relay = cl.relay(s)
    p = cl.make_primary("p", [cl.replica(s, via=relay)], tls=False)
    C.wait_state(p, "s", "in-sync")
    return s, relay, p


def _secondary_view(s):
    st = s.status()
    cat = sorted(C.catalog(s))
    return {"applied_seq": st["applied_seq"], "catalog": cat, "state": C.state(s, cat)}


def _replay(port, handshake, frames):
    """Sends handshake + frames verbatim on a new connection; waits for at
    least one reply per frame (an ack each), returns the reply frames."""
    c = C.SPClient(port, handshake=handshake)
    # an ack per frame, and a have-reply more for each have-query
    want = len(frames) + sum(1 for f in frames if C.ENV_HAVE_QUERY in C.env_fields(f))
    try:
        c.send(b"".join(C.sp_frame(f) for f in frames))
        return c.wait_frames(want, timeout=15)
    finally:
        c.close()


def _stop_primary(p, relay):
    p.stop()
    wait_until(lambda: relay.open_connections() == 0, 10 * SLOW,
               what="relay connections closed")


def test_replayed_batch_changes_nothing(make_cluster):
    """The primary->secondary byte stream of a push is recorded; after later
    changes (a tag move, a tag delete, another repository) it is replayed
    verbatim on a new connection - SP handshake, heartbeats, have-queries,
    chunks, event batches. The secondary acknowledges and changes nothing."""
    cl = make_cluster()
    s, relay, p = _recorded_cluster(cl)
    repo = "prod/replay-" + uid()
    a = C.push_image(p, repo, "t", layer_size=80_000)
    assert itlib.put_manifest(p, repo, "keep", a["manifest"]).status == 201
    C.wait_in_sync(p, cluster=cl)
    hs, frames, _ = C.sp_frames(relay.snapshot(0))
    kinds = {k for f in frames for k in C.env_fields(f)}
    assert {C.ENV_BATCH, C.ENV_CHUNK, C.ENV_HEARTBEAT} <= kinds, kinds

    b = C.push_image(p, repo, "b")
    assert itlib.put_manifest(p, repo, "t", b["manifest"]).status == 201
    assert p.req("DELETE", "/v2/%s/manifests/keep" % repo).status == 202
    C.push_image(p, repo + "-2", "x")
    C.wait_in_sync(p, cluster=cl)
    _stop_primary(p, relay)
    before = _secondary_view(s)
    assert (repo, "t", b["digest"]) in before["state"]

    replies = _replay(s.repl_port, hs, frames)
    acks = [C.env_fields(f) for f in replies]
    assert sum(1 for x in acks if C.ENV_ACK in x) >= len(frames), (len(replies), len(frames))
    after = _secondary_view(s)
    assert after == before, ("replaying a captured batch changed the secondary:\n"
                             " before: %r\n after:  %r" % (before, after))
    # and it still follows the real primary
    p.start()
    c = C.push_image(p, repo, "c")
    C.wait_in_sync(p, cluster=cl)
    assert C.manifest(s, repo, "c")[1] == c["digest"]
    same_state(p, s, [repo, repo + "-2"])


def test_replayed_resync_changes_nothing(make_cluster):
    """The stream of a snapshot resync (ResyncBegin, snapshot records,
    ResyncEnd) is recorded; after later changes it is replayed. The secondary
    must not roll back to the old snapshot nor drop anything."""
    cl = make_cluster()
    s = cl.secondary("s", tls=False)
    relay = cl.relay(s)
    p = cl.make_primary("p", [cl.replica(s, via=relay)], tls=False, log_retention=2)
    repo = "prod/rr-" + uid()
    C.push_image(p, repo, "0")
    C.wait_in_sync(p, cluster=cl)
    s.stop()
    C.wait_state(p, "s", "unreachable")
    C.push_image(p, repo, "1")
    wait_until(lambda: p.status()["log_first_seq"] > C.replica(p, "s")["acked_seq"] + 1,
               15 * SLOW, what="log trimmed")
    n = len(relay.conns)
    s.start()
    C.wait_in_sync(p, cluster=cl)
    assert C.replica(p, "s")["resync"]["count"] >= 1
    idx = next(i for i in range(n, len(relay.conns))
               if C.ENV_RESYNC_BEGIN in {k for f in C.sp_frames(relay.snapshot(i))[1]
                                         for k in C.env_fields(f)})
    hs, frames, _ = C.sp_frames(relay.snapshot(idx))

    later = C.push_image(p, repo, "2")
    assert itlib.put_manifest(p, repo, "0", later["manifest"]).status == 201
    C.wait_in_sync(p, cluster=cl)
    _stop_primary(p, relay)
    before = _secondary_view(s)
    _replay(s.repl_port, hs, frames)
    after = _secondary_view(s)
    assert after == before, ("replaying a captured resync changed the secondary:\n"
                             " before: %r\n after:  %r" % (before, after))


def test_forged_messages_are_refused(make_cluster):
    """With the primary away, raw connections to the secondary's replication
    port send: bytes without an SP handshake; garbage frames after a valid
    handshake; a frame announcing 2^40 bytes; hand-encoded Envelopes with a
    manifest whose digest does not match its bytes, a manifest whose blobs are
    missing, an event that skips sequence numbers, an invalid repository name,
    and a blob whose chunks do not hash to the digest followed by the event
    linking it; then a 5 MiB blob (hashed behind the writes) whose chunks do
    not hash to the digest they claim. The secondary refuses each, stays consistent and keeps
    serving, and then follows the real primary again."""
    cl = make_cluster()
    s = cl.secondary("s", tls=False)
    p = cl.make_primary("p", [cl.replica(s)], tls=False)
    repo = "prod/forge-" + uid()
    img = C.push_image(p, repo, "1")
    C.wait_in_sync(p, cluster=cl)
    p.stop()
    time.sleep(0.5)
    before = _secondary_view(s)
    applied = before["applied_seq"]
    bad0 = s.status()["bad_messages"]

    def still_fine():
        assert s.req("GET", "/readyz").status == 200
        assert _secondary_view(s) == before
        C.verify_image(s, repo, "1")

    # 1. no SP handshake at all
    c = C.SPClient(s.repl_port, handshake=None)
    c.send(os.urandom(4096))
    wait_until(lambda: c.closed, 10 * SLOW, what="connection without handshake dropped")
    c.close()
    still_fine()

    # 2. garbage frames after a valid handshake, then a frame of 2^40 bytes
    c = C.SPClient(s.repl_port)
    for n in (1, 3, 4, 37, 500):
        c.send(C.sp_frame(b"\x00\x00\x00\x01" + os.urandom(n)))
    c.send(C.sp_frame(b"\x00\x00\x00\x01" + b"\xff" * 64))
    # envelope length fields that lie: past the message's end, 4 GiB, truncated
    c.send(C.sp_frame(b"\x00\x00\x00\x01" + b"\x00\x0f\x42\x40" + b"x" * 10))
    c.send(C.sp_frame(b"\x00\x00\x00\x01" + b"\xff\xff\xff\xff"))
    c.send(C.sp_frame(b"\x00\x00\x00\x01" + b"\x00\x00"))
    c.wait_frames(1, timeout=2)
    c.send(b"\x00\x00\x01\x00\x00\x00\x00\x00" + os.urandom(1000))
    wait_until(lambda: c.closed, 10 * SLOW, what="oversized frame: connection dropped")
    c.close()
    still_fine()
    assert s.status()["bad_messages"] > bad0

    # 3. hand-encoded Envelopes (epoch 1, like the primary's)
    cfg = next(d for d in img["blobs"])  # a blob the secondary has
    fake_body = itlib.manifest_bytes({
        "schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
        "config": {"mediaType": itlib.MT_OCI_CONFIG, "digest": cfg,
                   "size": len(img["blobs"][cfg])},
        "layers": []})
    missing = os.urandom(3000)
    missing_body = itlib.manifest_bytes({
        "schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
        "config": {"mediaType": itlib.MT_OCI_CONFIG, "digest": cfg,
                   "size": len(img["blobs"][cfg])},
        "layers": [itlib.descriptor(itlib.MT_OCI_LAYER, missing)]})
    bogus = os.urandom(100_000)
    claimed = sha256(b"something else entirely")
    nxt = applied + 1
    forged = [
        # a manifest whose digest does not match its bytes
        (C.ENV_BATCH, C.pb_bytes(1, C.pb_event(nxt, C.EV_MANIFEST_PUT, repo=repo,
                                                digest=sha256(b"not the body"), tag="1",
                                                media_type=MT_OCI_MANIFEST, body=fake_body))),
        # digest right, but it references a blob the secondary does not have
        (C.ENV_BATCH, C.pb_bytes(1, C.pb_event(nxt, C.EV_MANIFEST_PUT, repo=repo,
                                                digest=sha256(missing_body), tag="1",
                                                media_type=MT_OCI_MANIFEST,
                                                body=missing_body))),
        # a sequence gap: a tag delete far ahead
        (C.ENV_BATCH, C.pb_bytes(1, C.pb_event(nxt + 5, C.EV_TAG_DELETE, repo=repo, tag="1"))),
        # an invalid repository name
        (C.ENV_BATCH, C.pb_bytes(1, C.pb_event(nxt, C.EV_TAG_DELETE, repo="../../etc",
                                                tag="1"))),
        # chunks that do not hash to their digest, then the event linking it
        (C.ENV_CHUNK, C.pb_bytes(1, claimed) + C.pb_int(2, len(bogus)) + C.pb_int(3, 0) +
         C.pb_int(5, 1), bogus),
        (C.ENV_BATCH, C.pb_bytes(1, C.pb_event(nxt, C.EV_BLOB_LINK, repo=repo + "-x",
                                                digest=claimed, size=len(bogus)))),
        # a snapshot record (seq 0) outside a resync
        (C.ENV_BATCH, C.pb_bytes(1, C.pb_event(0, C.EV_TAG_DELETE, repo=repo, tag="1"))),
    ]
    # from a peer that has passed the hello as the primary "p" (this listener has
    # no keys, so the claimed name is all; test_repl_trust covers the proof): the
    # content itself must be refused
    c = C.SPClient(s.repl_port)
    c.send(C.sp_frame(C.message(C.pb_envelope(C.ENV_PEER_HELLO, b"", msg_id=100, sender="p"))))
    for i, (field, body, *bulk) in enumerate(forged):
        c.send(C.sp_frame(C.message(C.pb_envelope(field, body, msg_id=i + 1, sender="p"),
                                    *bulk)))
    replies = c.wait_frames(len(forged) + 1, timeout=10)[1:]
    c.close()
    acks = [C.env_fields(f).get(C.ENV_ACK) for f in replies]
    acks = [{k: v for k, _, v in C.pb_read(a)} for a in acks if a is not None]
    assert len(acks) >= len(forged), (len(replies), acks)
    # Ack: applied_seq 1, blob_failed 3, error 4. Each refused with a reason; the
    # bad chunk is reported as a failed blob, to be resent.
    for i, a in enumerate(acks[:len(forged)]):
        assert a.get(1, 0) == applied, (i, a)
        if forged[i][0] == C.ENV_CHUNK:
            assert a.get(3) == claimed.encode(), (i, a)
        else:
            assert a.get(4), (i, a)
    assert b"does not match" in acks[0][4], acks[0]
    still_fine()
    assert C.manifest(s, repo, sha256(missing_body))[0] == 404
    assert C.catalog(s) == before["catalog"]
    assert C.blob_digest(s, repo + "-x", claimed)[0] == 404
    assert C.files_named(s.data_dir, claimed.split(":")[1]) == []

    # 4. a blob big enough to be hashed behind the writes (>= 4 MiB: the
    # receiver's deferred-hash path), in 1 MiB chunks that do not hash to the
    # digest they claim: every chunk is taken, the last one reports the blob as
    # failed, and nothing is stored
    big = os.urandom(5 * MIB + 123)
    claimed_big = sha256(b"yet another thing")
    offs = list(range(0, len(big), MIB))
    c = C.SPClient(s.repl_port)
    c.send(C.sp_frame(C.message(C.pb_envelope(C.ENV_PEER_HELLO, b"", msg_id=99, sender="p"))))
    for i, off in enumerate(offs):
        last = off + MIB >= len(big)
        body = (C.pb_bytes(1, claimed_big) + C.pb_int(2, len(big)) + C.pb_int(3, off) +
                (C.pb_int(5, 1) if last else b""))
        c.send(C.sp_frame(C.message(C.pb_envelope(C.ENV_CHUNK, body, msg_id=100 + i,
                                                  sender="p"), big[off:off + MIB])))
    replies = c.wait_frames(len(offs) + 1, timeout=30 * SLOW)[1:]
    c.close()
    acks = [C.env_fields(f).get(C.ENV_ACK) for f in replies]
    acks = [{k: v for k, _, v in C.pb_read(a)} for a in acks if a is not None]
    assert len(acks) >= len(offs), (len(replies), len(offs))
    assert all(not a.get(3) and not a.get(4) for a in acks[:len(offs) - 1]), acks
    assert acks[len(offs) - 1].get(3) == claimed_big.encode(), acks[len(offs) - 1]
    still_fine()
    assert C.files_named(s.data_dir, claimed_big.split(":")[1]) == []
    assert C.files_named(s.data_dir, sha256(big).split(":")[1]) == []
    # the digest it computed is that of every byte, in order (the helper thread
    # hashed all six chunks before finish compared)
    assert "want=%s got=%s" % (claimed_big, sha256(big)) in s.log(200000), s.log()

    # the real primary takes over again
    p.start()
    more = C.push_image(p, repo, "2")
    C.wait_in_sync(p, cluster=cl)
    assert C.manifest(s, repo, "2")[1] == more["digest"]
    same_state(p, s, [repo])
