"""What a client was told succeeded survives kill -9; uploads survive a
restart; SIGTERM is a graceful shutdown."""

import os
import socket
import time

import pytest

from itlib import (MT_OCI_INDEX, MT_OCI_MANIFEST, STOP_TIMEOUT, descriptor, get_manifest,
                   location, make_image, manifest_bytes, parse_status, push_blob,
                   push_blob_chunked, put_manifest, sha256, split_url, start_upload, with_query)

# sizes around plausible inline/file thresholds, and a few larger ones
BLOB_SIZES = [0, 1, 100, 4095, 4096, 65535, 65536, 65537, 262_144, 1 << 20, 5 << 20]


def _push_everything(node, prefix):
    """Pushes blobs, images, an index and tags; returns what was acknowledged."""
    acked = {"blobs": {}, "manifests": {}, "tags": {}}
    repo = prefix + "/blobs"
    for i, size in enumerate(BLOB_SIZES):
        data = os.urandom(size)
        if i % 2:
            d = push_blob_chunked(node, repo, data, chunk=max(1, size // 2))
        else:
            d = push_blob(node, repo, data)
        acked["blobs"][(repo, d)] = data
    children = []
    for i in range(3):
        r = prefix + "/img%d" % i
        img = make_image(node, r, tag="v%d" % i, layers=2, layer_size=70_000)
        for d, data in img["blobs"].items():
            acked["blobs"][(r, d)] = data
        acked["manifests"][(r, img["digest"])] = img["manifest"]
        acked["tags"][(r, "v%d" % i)] = img["digest"]
    r = prefix + "/multi"
    for _ in range(2):
        img = make_image(node, r, layers=1)
        children.append(img["manifest"])
        for d, data in img["blobs"].items():
            acked["blobs"][(r, d)] = data
        acked["manifests"][(r, img["digest"])] = img["manifest"]
    idx = manifest_bytes({"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": [
        descriptor(MT_OCI_MANIFEST, c, platform={"architecture": a, "os": "linux"})
        for c, a in zip(children, ("amd64", "arm64"))]})
    resp = put_manifest(node, r, "latest", idx, MT_OCI_INDEX)
    assert resp.status == 201, resp
    acked["manifests"][(r, sha256(idx))] = idx
    acked["tags"][(r, "latest")] = sha256(idx)
    return acked


def _verify(node, acked):
    for (repo, d), data in acked["blobs"].items():
        r = node.req("GET", "/v2/%s/blobs/%s" % (repo, d))
        assert r.status == 200, "acknowledged blob %s in %s lost: %r" % (d, repo, r)
        assert sha256(r.body) == d, "blob %s in %s corrupt after restart" % (d, repo)
        assert len(r.body) == len(data)
    for (repo, d), body in acked["manifests"].items():
        r = get_manifest(node, repo, d)
        assert r.status == 200, "acknowledged manifest %s in %s lost: %r" % (d, repo, r)
        assert sha256(r.body) == d and r.body == body
    for (repo, tag), d in acked["tags"].items():
        r = get_manifest(node, repo, tag)
        assert r.status == 200, "acknowledged tag %s:%s lost: %r" % (repo, tag, r)
        assert sha256(r.body) == d, "tag %s:%s points elsewhere after restart" % (repo, tag)
        tags = node.req("GET", "/v2/%s/tags/list" % repo).json()["tags"]
        assert tag in tags


def test_kill9_after_acknowledged_pushes_loses_nothing(fresh_node):
    node = fresh_node
    acked = _push_everything(node, "crash")
    # the last acknowledged change: a manifest delete, right before the kill
    gone = make_image(node, "crash/gone", tag="g", layers=1)
    r = node.req("DELETE", "/v2/crash/gone/manifests/%s" % gone["digest"])
    assert r.status == 202, r
    node.kill9()
    node.start()
    _verify(node, acked)
    assert get_manifest(node, "crash/gone", gone["digest"]).status == 404

    # and again: more pushes after recovery, another kill -9
    more = _push_everything(node, "crash2")
    node.kill9()
    node.start()
    _verify(node, acked)
    _verify(node, more)
    cat = node.req("GET", "/v2/_catalog").json()["repositories"]
    for repo in {r for r, _ in list(acked["blobs"]) + list(more["blobs"])}:
        assert repo in cat, "%s missing from the catalog after restart" % repo


def test_upload_in_progress_survives_restart(fresh_node):
    node = fresh_node
    repo = "resume/me"
    data = os.urandom(300_000)
    loc = start_upload(node, repo)
    r = node.req("PATCH", loc, body=data[:120_000], headers={
        "Content-Range": "0-119999", "Content-Type": "application/octet-stream"})
    assert r.status == 202, r
    loc = location(node.url, r)
    node.restart()  # SIGTERM, wait for exit, start on the same port and data
    st = node.req("GET", loc)
    assert st.status == 204, st
    assert st.header("Range") == "0-119999", st
    r = node.req("PATCH", loc, body=data[120_000:], headers={
        "Content-Range": "120000-299999", "Content-Type": "application/octet-stream"})
    assert r.status == 202, r
    r = node.req("PUT", with_query(location(node.url, r), digest=sha256(data)))
    assert r.status == 201, r
    g = node.req("GET", "/v2/%s/blobs/%s" % (repo, sha256(data)))
    assert g.status == 200 and g.body == data


def test_upload_in_progress_after_kill9_resumes_or_is_unknown(fresh_node):
    """After kill -9 an open upload either resumes at the acknowledged offset
    or is reported unknown; it never yields a wrong blob."""
    node = fresh_node
    repo = "resume/kill"
    data = os.urandom(200_000)
    loc = start_upload(node, repo)
    r = node.req("PATCH", loc, body=data[:100_000], headers={
        "Content-Range": "0-99999", "Content-Type": "application/octet-stream"})
    assert r.status == 202, r
    loc = location(node.url, r)
    node.kill9()
    node.start()
    st = node.req("GET", loc)
    if st.status == 404:
        assert "BLOB_UPLOAD_UNKNOWN" in st.error_codes() or node.target == "distribution", st
        return
    assert st.status == 204, st
    assert st.header("Range") == "0-99999", st
    r = node.req("PATCH", loc, body=data[100_000:], headers={
        "Content-Range": "100000-199999", "Content-Type": "application/octet-stream"})
    assert r.status == 202, r
    r = node.req("PUT", with_query(location(node.url, r), digest=sha256(data)))
    assert r.status == 201, r
    assert node.req("GET", "/v2/%s/blobs/%s" % (repo, sha256(data))).body == data


@pytest.mark.georeg_only("graceful-shutdown contract of georeg")
def test_sigterm_exits_zero(fresh_node):
    node = fresh_node
    push_blob(node, "term/x", b"some state")
    p = node.proc
    code = node.stop()
    assert code == 0, "exit code %s after SIGTERM" % code
    node.problems.clear()  # reported here already
    assert p.poll() is not None
    node.start()
    assert node.req("GET", "/v2/term/x/blobs/%s" % sha256(b"some state")).status == 200


@pytest.mark.georeg_only("graceful-shutdown contract of georeg")
def test_sigterm_lets_an_inflight_request_finish(fresh_node):
    node = fresh_node
    data = os.urandom(200_000)
    repo = "term/inflight"
    loc = start_upload(node, repo)
    path = split_url(loc)[2]
    s = socket.create_connection(("127.0.0.1", node.port), timeout=20)
    try:
        s.sendall(("PATCH %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\n"
                   "Content-Range: 0-%d\r\nContent-Length: %d\r\n\r\n"
                   % (path, node.host, len(data) - 1, len(data))).encode() + data[:100_000])
        time.sleep(0.3)
        node.proc.send_signal(15)  # SIGTERM while the body is half sent
        time.sleep(0.3)
        s.sendall(data[100_000:])
        resp = b""
        while b"\r\n\r\n" not in resp:
            chunk = s.recv(4096)
            if not chunk:
                break
            resp += chunk
        assert parse_status(resp) == 202, resp
    finally:
        s.close()
    p = node.proc
    try:
        code = p.wait(STOP_TIMEOUT)
    except Exception:
        code = None
    assert code == 0, "georeg did not exit 0 after SIGTERM (code %r)" % code
    node.proc = None
    node.start()
    st = node.req("GET", loc)
    assert st.status == 204 and st.header("Range") == "0-%d" % (len(data) - 1), st



@pytest.mark.georeg_only("Distribution 2.8 has no referrers API")
def test_referrers_survive_kill9(fresh_node):
    node = fresh_node
    repo = "crash/ref"
    subj = make_image(node, repo, tag="base", layers=1)
    push_blob(node, repo, b"{}")
    art = manifest_bytes({
        "schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
        "artifactType": "application/vnd.example.sbom",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(b"{}"),
                   "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.empty.v1+json",
                    "digest": sha256(b"{}"), "size": 2}],
        "subject": {"mediaType": MT_OCI_MANIFEST, "digest": subj["digest"],
                    "size": len(subj["manifest"])}})
    r = put_manifest(node, repo, sha256(art), art)
    assert r.status == 201, r
    node.kill9()
    node.start()
    r = node.req("GET", "/v2/%s/referrers/%s" % (repo, subj["digest"]))
    assert r.status == 200, r
    assert [d["digest"] for d in r.json()["manifests"]] == [sha256(art)], r
