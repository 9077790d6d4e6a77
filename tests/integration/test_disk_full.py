"""A full disk (issue 8 §6), on a real 24 MiB tmpfs mounted as the node's data
dir: writes answer 507 with the OCI error JSON (never 500), reads go on, /readyz
says 503 while the store refuses writes, writes resume by themselves when space
returns (RocksDB is reopened), an upload cut by ENOSPC leaves no partial file, and
audit entries lost meanwhile are counted. The test controls space with a filler
file of its own on the same tmpfs."""

import errno
import json
import os
import re
import subprocess

import pytest

from itlib import (Node, location, make_image, push_blob, put_manifest, get_manifest,
                   sha256, wait_until)

TMPFS_SIZE = "24m"


def _mount_tmpfs(path):
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + TMPFS_SIZE, "tmpfs", path],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (%s)" % r.stderr.strip())


def _umount(path):
    if subprocess.run(["umount", path], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", path], capture_output=True)


@pytest.fixture
def tmpfs_node(tmp_path):
    """A node whose data dir is a fresh 24 MiB tmpfs; min_free from the test."""
    made = []

    def make(min_free):
        work = str(tmp_path / ("n%d" % len(made)))
        os.makedirs(work)
        _mount_tmpfs(os.path.join(work, "data"))
        n = Node(work, name="full", env={"GEOREG_STORAGE_MIN_FREE": str(min_free)})
        made.append(n)
        n.start()
        return n

    yield make
    for n in made:
        try:
            n.stop()
        finally:
            _umount(n.data_dir)
    for n in made:
        assert not n.problems, n.problems


def _free(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _fill(node, leave=0):
    """Writes a filler file until fewer than `leave` bytes are free (0: until ENOSPC)."""
    path = os.path.join(node.data_dir, "filler.bin")
    with open(path, "ab") as f:
        while True:
            room = _free(node.data_dir) - leave
            if room <= 0:
                break
            try:
                f.write(b"\0" * min(room, 1 << 20))
                f.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                break
    return path


def _ballast(node, size=10 << 20):
    """Space the test takes first and gives back at the end (filler.bin)."""
    with open(os.path.join(node.data_dir, "filler.bin"), "wb") as f:
        f.write(b"\0" * size)


def _metric(node, name):
    body = node.req("GET", "/metrics").body.decode()
    m = re.search(r"^%s (\d+)$" % re.escape(name), body, re.M)
    assert m, name
    return int(m.group(1))


def _assert_507(r):
    assert r.status == 507, r
    assert r.header("Content-Type", "").startswith("application/json"), r
    errs = r.json()["errors"]
    assert errs and errs[0]["code"] and "insufficient storage" in errs[0]["message"], r


def _blob_push(node, repo, data):
    return node.req("POST", "/v2/%s/blobs/uploads/?digest=%s" % (repo, sha256(data)),
                    body=data, headers={"Content-Type": "application/octet-stream"})


def test_below_min_free_writes_are_refused_and_reads_go_on(tmpfs_node):
    node = tmpfs_node(8 << 20)
    img = make_image(node, "full/base", tag="v1", layers=2, layer_size=100_000)
    blob = os.urandom(300_000)
    d = push_blob(node, "full/base", blob)
    assert node.req("GET", "/readyz").status == 200
    _fill(node, leave=4 << 20)

    # every kind of write: 507 up front, nothing half-written
    _assert_507(_blob_push(node, "full/base", os.urandom(1000)))
    _assert_507(node.req("POST", "/v2/full/base/blobs/uploads/"))
    _assert_507(put_manifest(node, "full/base", "v2", img["manifest"]))
    r = node.req("GET", "/readyz")
    assert r.status == 503 and "refuses writes" in r.body.decode(), r
    assert node.req("GET", "/healthz").status == 200
    assert _metric(node, "georeg_store_space_refusals_total") >= 3

    # reads keep being served, byte for byte
    r = get_manifest(node, "full/base", "v1")
    assert r.status == 200 and r.body == img["manifest"], r
    r = node.req("GET", "/v2/full/base/blobs/" + d)
    assert r.status == 200 and r.body == blob, r
    # a DELETE (which frees space) is not refused by the reserve
    assert node.req("DELETE", "/v2/full/base/manifests/" + img["digest"]).status == 202

    # space returns: writes go on at once, readiness comes back
    os.unlink(os.path.join(node.data_dir, "filler.bin"))
    assert _blob_push(node, "full/base", os.urandom(1000)).status == 201
    assert node.req("GET", "/readyz").status == 200


def _fill_until_refused(node, repo, base):
    """Pushes manifests (RocksDB-only writes: no content file) until the node
    refuses one; returns {digest: body} it acknowledged."""
    acked = {}
    refused = None
    m = json.loads(base)
    for i in range(600):
        m["annotations"] = {"pad": os.urandom(30_000).hex()}
        body = json.dumps(m, separators=(",", ":")).encode()
        r = put_manifest(node, repo, "t%d" % i, body)
        if r.status == 201:
            acked[sha256(body)] = body
            continue
        _assert_507(r)  # never a 500
        refused = r
        break
    assert refused is not None, "600 manifests of 60 KB onto 24 MiB were all acknowledged"
    return acked


def _get_manifests(node, repo, acked):
    for dg, body in acked.items():
        r = get_manifest(node, repo, dg)
        assert r.status == 200 and r.body == body, (dg, r)


def test_disk_filled_by_another_process(tmpfs_node):
    """Another process takes the last byte: the node refuses writes with 507 (its
    own RocksDB writes stop at min_free/4; a background flush of RocksDB may still
    meet ENOSPC, which wedges the store), keeps serving reads, counts the audit
    entries it cannot store, and takes writes again, without a restart, once the
    space is back."""
    node = tmpfs_node(4 << 20)
    img = make_image(node, "full/a", tag="v1", layers=1, layer_size=200_000)
    big = os.urandom(400_000)
    big_d = push_blob(node, "full/a", big)
    _ballast(node)
    acked = _fill_until_refused(node, "full/a", img["manifest"])  # up to the reserve
    dropped_before = _metric(node, "georeg_audit_dropped_total")
    _fill(node)  # and now to ENOSPC
    assert _free(node.data_dir) < 64 << 10

    for i in range(5):
        _assert_507(_blob_push(node, "full/a", os.urandom(60_000)))
        _assert_507(put_manifest(node, "full/a", "x%d" % i, img["manifest"]))
    r = get_manifest(node, "full/a", "v1")
    assert r.status == 200 and r.body == img["manifest"], r
    r = node.req("GET", "/v2/full/a/blobs/" + big_d)
    assert r.status == 200 and r.body == big, r
    _get_manifests(node, "full/a", acked)
    assert node.req("GET", "/healthz").status == 200
    r = node.req("GET", "/readyz")
    assert r.status == 503, r
    # the refused pushes are audited, and those entries cannot be stored: counted
    wait_until(lambda: _metric(node, "georeg_audit_dropped_total") > dropped_before, 30,
               what="dropped audit entries counted")
    assert node.running()
    # RocksDB's own background flush may meet the full disk (that is the other
    # process's doing): then the store is wedged and must come back by itself
    wedged = _metric(node, "georeg_store_wedged")
    print("store wedged while full:", wedged)

    os.unlink(os.path.join(node.data_dir, "filler.bin"))
    last = []

    def resumed():
        last[:] = [_blob_push(node, "full/a", os.urandom(1000)), _free(node.data_dir)]
        return last[0].status == 201
    try:
        wait_until(resumed, 60, interval=0.5, what="writes resume after space returns")
    finally:
        print("last push:", last[0].status if last else None, "free:", last[1:])
    wait_until(lambda: node.req("GET", "/readyz").status == 200, 30, what="ready again")
    assert _metric(node, "georeg_store_wedged") == 0
    if wedged:
        log = open(node.log_path, errors="replace").read()
        assert "STORE-RESUMED" in log
    _get_manifests(node, "full/a", acked)
    make_image(node, "full/a", tag="v2", layers=1)
    assert get_manifest(node, "full/a", "v2").status == 200
    # the audit log is written again
    r = node.req("GET", "/_georeg/v1/audit?limit=1000")
    assert r.status == 200, r


def test_upload_cut_by_a_full_disk_leaves_no_partial_file(tmpfs_node):
    node = tmpfs_node(2 << 20)
    r = node.req("POST", "/v2/full/up/blobs/uploads/")
    assert r.status == 202, r
    loc = location(node.url, r)
    upload_id = loc.rstrip("/").split("/")[-1].split("?")[0]
    _fill(node, leave=3 << 20)  # above min_free when the PATCH starts, not after
    part = os.urandom(3 << 20)
    r = node.req("PATCH", loc, body=part, headers={
        "Content-Type": "application/octet-stream",
        "Content-Range": "0-%d" % (len(part) - 1), "Content-Length": str(len(part))})
    _assert_507(r)
    # the session and its bytes are gone: nothing partial left on the disk (the
    # upload is dropped when the request lets go of it, just after the answer)
    uploads = os.path.join(node.data_dir, "uploads")

    def left():
        return [f for f in os.listdir(uploads) if upload_id in f]
    try:
        wait_until(lambda: not left(), 15, interval=0.05, what="the partial upload dropped")
    except TimeoutError:
        raise AssertionError("partial upload left: %r" % left())
    r = node.req("GET", loc)
    assert r.status == 404 and r.error_codes() == ["BLOB_UPLOAD_UNKNOWN"], r
    os.unlink(os.path.join(node.data_dir, "filler.bin"))
    # a new upload of the same bytes goes through
    assert _blob_push(node, "full/up", part).status == 201
    r = node.req("GET", "/v2/full/up/blobs/" + sha256(part))
    assert r.status == 200 and r.body == part


def test_kill9_while_full_then_restart_keeps_everything_acknowledged(tmpfs_node):
    node = tmpfs_node(4 << 20)
    img = make_image(node, "full/k", tag="v1", layers=2, layer_size=80_000)
    _ballast(node)
    acked = _fill_until_refused(node, "full/k", img["manifest"])
    _fill(node)
    r = node.req("DELETE", "/v2/full/k/manifests/" + img["digest"])
    deleted = r.status == 202
    assert r.status in (202, 507), r
    node.kill9()
    os.unlink(os.path.join(node.data_dir, "filler.bin"))
    node.start()
    _get_manifests(node, "full/k", acked)
    r = get_manifest(node, "full/k", "v1")
    if deleted:
        assert r.status == 404, r  # acknowledged delete: stays deleted
    else:
        assert r.status == 200 and r.body == img["manifest"], r  # refused: still there
    assert _blob_push(node, "full/k", os.urandom(1000)).status == 201
    assert node.req("GET", "/readyz").status == 200
