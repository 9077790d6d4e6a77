"""Base endpoint, blob pulls, every upload flavour, mount, Range, delete."""

import hashlib
import os
import re
import socket

import pytest

from itlib import (HTTP_TIMEOUT, location, parse_status, push_blob, sha256, start_upload,
                   with_query)
import itlib


def test_v2_base_endpoint(node):
    r = node.req("GET", "/v2/")
    assert r.status == 200, r
    assert r.header("Docker-Distribution-API-Version") == "registry/2.0", r


@pytest.mark.georeg_only("georeg's own health endpoints")
def test_healthz_and_readyz(node):
    assert node.req("GET", "/healthz").status == 200
    assert node.req("GET", "/readyz").status == 200


def test_unknown_blob_is_404_blob_unknown(node, repo):
    push_blob(node, repo, b"make the repository exist")
    r = node.req("GET", "/v2/%s/blobs/%s" % (repo, sha256(b"never pushed")))
    assert r.status == 404, r
    assert "BLOB_UNKNOWN" in r.error_codes(), r


def test_unknown_blob_head_is_404_without_body(node, repo):
    push_blob(node, repo, b"make the repository exist")
    r = node.req("HEAD", "/v2/%s/blobs/%s" % (repo, sha256(b"never pushed")))
    assert r.status == 404, r
    assert r.body == b""


@pytest.mark.georeg_only("Distribution 2.8 answers 202 to POST ?digest= (no single-request upload)")
def test_monolithic_single_post(node, repo):
    data = os.urandom(100_000)
    d = sha256(data)
    r = node.req("POST", "/v2/%s/blobs/uploads/?digest=%s" % (repo, d), body=data,
                 headers={"Content-Type": "application/octet-stream"})
    assert r.status == 201, r
    assert r.header("Docker-Content-Digest") == d, r
    assert r.header("Location"), r
    g = node.req("GET", "/v2/%s/blobs/%s" % (repo, d))
    assert g.status == 200, g
    assert g.body == data
    assert g.header("Docker-Content-Digest") == d
    assert int(g.header("Content-Length")) == len(data)


def test_monolithic_post_then_put(node, repo):
    data = os.urandom(50_000)
    loc = start_upload(node, repo)
    r = node.req("PUT", with_query(loc, digest=sha256(data)), body=data,
                 headers={"Content-Type": "application/octet-stream"})
    assert r.status == 201, r
    assert r.header("Docker-Content-Digest") == sha256(data), r
    assert node.req("GET", "/v2/%s/blobs/%s" % (repo, sha256(data))).body == data


def test_head_blob(node, repo):
    data = os.urandom(12345)
    d = push_blob(node, repo, data)
    r = node.req("HEAD", "/v2/%s/blobs/%s" % (repo, d))
    assert r.status == 200, r
    assert int(r.header("Content-Length")) == len(data)
    assert r.header("Docker-Content-Digest") == d
    assert r.body == b""


def test_chunked_upload_with_content_range(node, repo):
    data = os.urandom(300_000)
    r = node.req("POST", "/v2/%s/blobs/uploads/" % repo)
    assert r.status == 202, r
    loc = location(node.url, r)
    off = 0
    for size in (100_000, 150_000, 50_000):
        part = data[off:off + size]
        r = node.req("PATCH", loc, body=part, headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": "%d-%d" % (off, off + size - 1),
            "Content-Length": str(size)})
        assert r.status == 202, r
        off += size
        assert r.header("Range") == "0-%d" % (off - 1), r
        loc = location(node.url, r)
        st = node.req("GET", loc)
        assert st.status == 204, st
        assert st.header("Range") == "0-%d" % (off - 1), st
    r = node.req("PUT", with_query(loc, digest=sha256(data)))
    assert r.status == 201, r
    assert r.header("Docker-Content-Digest") == sha256(data)
    g = node.req("GET", "/v2/%s/blobs/%s" % (repo, sha256(data)))
    assert g.status == 200 and g.body == data


def test_chunked_upload_last_chunk_in_put(node, repo):
    data = os.urandom(80_000)
    loc = start_upload(node, repo)
    r = node.req("PATCH", loc, body=data[:50_000], headers={
        "Content-Type": "application/octet-stream", "Content-Range": "0-49999"})
    assert r.status == 202, r
    loc = location(node.url, r)
    r = node.req("PUT", with_query(loc, digest=sha256(data)), body=data[50_000:],
                 headers={"Content-Type": "application/octet-stream"})
    assert r.status == 201, r
    assert node.req("GET", "/v2/%s/blobs/%s" % (repo, sha256(data))).body == data


def test_streamed_patch_with_content_length(node, repo):
    data = os.urandom(200_000)
    loc = start_upload(node, repo)
    r = node.req("PATCH", loc, body=data, headers={"Content-Type": "application/octet-stream"})
    assert r.status == 202, r
    assert r.header("Range") == "0-%d" % (len(data) - 1), r
    r = node.req("PUT", with_query(location(node.url, r), digest=sha256(data)))
    assert r.status == 201, r
    assert node.req("GET", "/v2/%s/blobs/%s" % (repo, sha256(data))).body == data


def test_streamed_patch_transfer_encoding_chunked(node, repo):
    pieces = [os.urandom(n) for n in (1, 4096, 65536, 3, 100_000, 17)]
    data = b"".join(pieces)
    loc = start_upload(node, repo)
    r = node.req("PATCH", loc, body=iter(pieces), chunked=True,
                 headers={"Content-Type": "application/octet-stream"})
    assert r.status == 202, r
    assert r.header("Range") == "0-%d" % (len(data) - 1), r
    r = node.req("PUT", with_query(location(node.url, r), digest=sha256(data)))
    assert r.status == 201, r
    assert node.req("GET", "/v2/%s/blobs/%s" % (repo, sha256(data))).body == data


def test_large_streamed_blob_roundtrip(node, repo):
    """24 MiB streamed in 1 MiB chunks, read back and re-hashed."""
    h = hashlib.sha256()
    rnd = os.urandom(1 << 20)

    def gen():
        for i in range(24):
            piece = bytes([i]) + rnd[1:]
            h.update(piece)
            yield piece

    loc = start_upload(node, repo)
    r = node.req("PATCH", loc, body=gen(), chunked=True,
                 headers={"Content-Type": "application/octet-stream"}, timeout=2 * HTTP_TIMEOUT)
    assert r.status == 202, r
    d = "sha256:" + h.hexdigest()
    r = node.req("PUT", with_query(location(node.url, r), digest=d), timeout=2 * HTTP_TIMEOUT)
    assert r.status == 201, r
    g = node.req("GET", "/v2/%s/blobs/%s" % (repo, d), timeout=2 * HTTP_TIMEOUT)
    assert g.status == 200
    assert len(g.body) == 24 << 20
    assert sha256(g.body) == d


def _expect_continue(node, request_line, data):
    """Sends headers with Expect: 100-continue, waits (bounded) for the
    interim 100, then the body; returns the final status line's code."""
    s = socket.create_connection(("127.0.0.1", node.port), timeout=HTTP_TIMEOUT)
    try:
        s.sendall(("%s HTTP/1.1\r\nHost: %s\r\n"
                   "Content-Type: application/octet-stream\r\nContent-Length: %d\r\n"
                   "Expect: 100-continue\r\n\r\n" % (request_line, node.host, len(data))).encode())
        s.settimeout(10)
        interim = b""
        while b"\r\n\r\n" not in interim:
            chunk = s.recv(4096)
            assert chunk, "connection closed before 100 Continue: %r" % interim
            interim += chunk
        assert parse_status(interim) == 100, interim
        resp = interim.split(b"\r\n\r\n", 1)[1]
        s.sendall(data)
        while b"\r\n\r\n" not in resp:
            chunk = s.recv(4096)
            assert chunk, "connection closed before the final response: %r" % resp
            resp += chunk
        return parse_status(resp), resp
    finally:
        s.close()


def test_expect_100_continue_on_patch(node, repo):
    data = os.urandom(30_000)
    loc = start_upload(node, repo)
    path = itlib.split_url(loc)[2]
    status, resp = _expect_continue(node, "PATCH " + path, data)
    assert status == 202, resp
    m = re.search(rb"(?im)^location:\s*(\S+)", resp)
    assert m, resp
    loc = m.group(1).decode()
    if loc.startswith("/"):
        loc = node.url + loc
    r = node.req("PUT", with_query(loc, digest=sha256(data)))
    assert r.status == 201, r
    assert node.req("GET", "/v2/%s/blobs/%s" % (repo, sha256(data))).body == data


@pytest.mark.georeg_only("Distribution 2.8 has no single-request POST upload")
def test_expect_100_continue_on_monolithic_post(node, repo):
    data = os.urandom(30_000)
    d = sha256(data)
    status, resp = _expect_continue(
        node, "POST /v2/%s/blobs/uploads/?digest=%s" % (repo, d), data)
    assert status == 201, resp
    assert node.req("GET", "/v2/%s/blobs/%s" % (repo, d)).body == data


def test_keepalive_serves_several_requests_on_one_connection(node, repo):
    data = os.urandom(5000)
    d = push_blob(node, repo, data)
    conn = itlib.httpclient.HTTPConnection("127.0.0.1", node.port, timeout=HTTP_TIMEOUT)
    try:
        for i in range(5):
            conn.request("GET", "/v2/%s/blobs/%s" % (repo, d))
            r = conn.getresponse()
            assert r.status == 200
            assert r.read() == data
            conn.request("HEAD", "/v2/%s/blobs/%s" % (repo, d))
            r = conn.getresponse()
            assert r.status == 200
            r.read()
    finally:
        conn.close()


def test_upload_status_and_cancel(node, repo):
    loc = start_upload(node, repo)
    r = node.req("PATCH", loc, body=b"x" * 1000, headers={"Content-Range": "0-999"})
    assert r.status == 202, r
    loc = location(node.url, r)
    st = node.req("GET", loc)
    assert st.status == 204, st
    assert st.header("Range") == "0-999", st
    r = node.req("DELETE", loc)
    assert r.status == 204, r
    r = node.req("GET", loc)
    assert r.status == 404, r
    assert "BLOB_UPLOAD_UNKNOWN" in r.error_codes(), r


def test_cross_repo_mount(node, repo):
    src = repo + "-src"
    data = os.urandom(40_000)
    d = push_blob(node, src, data)
    r = node.req("POST", "/v2/%s/blobs/uploads/?mount=%s&from=%s" % (repo, d, src))
    assert r.status == 201, r
    assert r.header("Docker-Content-Digest") == d, r
    assert r.header("Location"), r
    g = node.req("GET", "/v2/%s/blobs/%s" % (repo, d))
    assert g.status == 200 and g.body == data, g


def test_mount_of_missing_blob_falls_back_to_upload(node, repo):
    src = repo + "-src"
    push_blob(node, src, b"something else")
    data = os.urandom(1000)
    d = sha256(data)
    r = node.req("POST", "/v2/%s/blobs/uploads/?mount=%s&from=%s" % (repo, d, src))
    assert r.status == 202, r
    r = node.req("PUT", with_query(location(node.url, r), digest=d), body=data,
                 headers={"Content-Type": "application/octet-stream"})
    assert r.status == 201, r
    assert node.req("GET", "/v2/%s/blobs/%s" % (repo, d)).body == data


def test_blob_is_not_served_from_a_repository_without_it(node, repo):
    d = push_blob(node, repo + "-a", os.urandom(2000))
    push_blob(node, repo + "-b", b"other")
    r = node.req("GET", "/v2/%s-b/blobs/%s" % (repo, d))
    assert r.status == 404, r
    assert "BLOB_UNKNOWN" in r.error_codes(), r


def test_same_blob_pushed_twice_is_deduplicated(node, repo):
    data = os.urandom(3000)
    d1 = push_blob(node, repo, data)
    d2 = push_blob(node, repo, data)
    assert d1 == d2
    assert node.req("GET", "/v2/%s/blobs/%s" % (repo, d1)).body == data


@pytest.mark.parametrize("rng,start,end", [
    ("bytes=0-0", 0, 0),
    ("bytes=100-199", 100, 199),
    ("bytes=9990-", 9990, 9999),
    ("bytes=-10", 9990, 9999),
    ("bytes=5000-20000", 5000, 9999),
])
def test_range_read(node, repo, rng, start, end):
    data = os.urandom(10_000)
    d = push_blob(node, repo, data)
    r = node.req("GET", "/v2/%s/blobs/%s" % (repo, d), headers={"Range": rng})
    assert r.status == 206, r
    assert r.header("Content-Range") == "bytes %d-%d/%d" % (start, end, len(data)), r
    assert r.body == data[start:end + 1]
    assert int(r.header("Content-Length")) == end - start + 1


def test_range_read_unsatisfiable_is_416(node, repo):
    data = os.urandom(1000)
    d = push_blob(node, repo, data)
    r = node.req("GET", "/v2/%s/blobs/%s" % (repo, d), headers={"Range": "bytes=5000-6000"})
    assert r.status == 416, r


def test_delete_blob(node, repo):
    data = os.urandom(2048)
    d = push_blob(node, repo, data)
    r = node.req("DELETE", "/v2/%s/blobs/%s" % (repo, d))
    assert r.status == 202, r
    r = node.req("HEAD", "/v2/%s/blobs/%s" % (repo, d))
    assert r.status == 404, r
    r = node.req("GET", "/v2/%s/blobs/%s" % (repo, d))
    assert r.status == 404, r
    assert "BLOB_UNKNOWN" in r.error_codes(), r


def test_concurrent_uploads_to_one_repository(node, repo):
    """Several upload sessions open at once, interleaved, all finish right."""
    blobs = [os.urandom(20_000 + i) for i in range(4)]
    locs = [start_upload(node, repo) for _ in blobs]
    for half in (0, 1):
        for i, data in enumerate(blobs):
            a, b = (0, 10_000) if half == 0 else (10_000, len(data))
            r = node.req("PATCH", locs[i], body=data[a:b], headers={
                "Content-Range": "%d-%d" % (a, b - 1),
                "Content-Type": "application/octet-stream"})
            assert r.status == 202, r
            locs[i] = location(node.url, r)
    for i, data in enumerate(blobs):
        r = node.req("PUT", with_query(locs[i], digest=sha256(data)))
        assert r.status == 201, r
    for data in blobs:
        assert node.req("GET", "/v2/%s/blobs/%s" % (repo, sha256(data))).body == data




def test_blob_location_header_points_at_the_blob(node, repo):
    data = os.urandom(777)
    loc = start_upload(node, repo)
    r = node.req("PUT", with_query(loc, digest=sha256(data)), body=data,
                 headers={"Content-Type": "application/octet-stream"})
    assert r.status == 201, r
    g = node.req("GET", location(node.url, r))
    assert g.status == 200 and g.body == data, g


def test_pipelined_requests_on_one_connection(node, repo):
    a, b = os.urandom(1000), os.urandom(2000)
    da, db = push_blob(node, repo, a), push_blob(node, repo, b)
    req = "".join("GET /v2/%s/blobs/%s HTTP/1.1\r\nHost: %s\r\n\r\n" % (repo, d, node.host)
                  for d in (da, db, da))
    req += "GET /v2/ HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % node.host
    raw = itlib.raw_exchange(node.port, req.encode(), timeout=HTTP_TIMEOUT)
    # parse the four responses in order
    bodies = []
    rest = raw
    for _ in range(4):
        head, _, rest = rest.partition(b"\r\n\r\n")
        assert parse_status(head) == 200, raw[:500]
        m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        assert m, head
        n = int(m.group(1))
        bodies.append(rest[:n])
        rest = rest[n:]
    assert bodies[0] == a and bodies[1] == b and bodies[2] == a
    assert rest == b""


def test_raw_chunked_body_with_extensions_and_trailer(node, repo):
    data = os.urandom(5000)
    loc = start_upload(node, repo)
    path = itlib.split_url(loc)[2]
    body = (b"a;name=value\r\n" + data[:10] + b"\r\n"
            + b"FA0\r\n" + data[10:4010] + b"\r\n"
            + (b"%x\r\n" % (len(data) - 4010)) + data[4010:] + b"\r\n"
            + b"0\r\nX-Trailer: yes\r\n\r\n")
    raw = itlib.raw_exchange(node.port, (
        "PATCH %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" % (path, node.host)
    ).encode() + body, timeout=HTTP_TIMEOUT)
    assert parse_status(raw) == 202, raw[:500]
    m = re.search(rb"(?im)^location:\s*(\S+)", raw)
    loc = m.group(1).decode()
    loc = node.url + loc if loc.startswith("/") else loc
    r = node.req("PUT", with_query(loc, digest=sha256(data)))
    assert r.status == 201, r
    assert node.req("GET", "/v2/%s/blobs/%s" % (repo, sha256(data))).body == data


def test_parallel_clients(node, repo):
    """8 threads each push and pull their own blobs at the same time."""
    import threading
    errors = []

    def worker(i):
        try:
            for j in range(3):
                data = os.urandom(200_000 + i * 1000 + j)
                d = push_blob(node, "%s-%d" % (repo, i), data) if j % 2 == 0 else \
                    itlib.push_blob_chunked(node, "%s-%d" % (repo, i), data, chunk=65536)
                g = node.req("GET", "/v2/%s-%d/blobs/%s" % (repo, i, d))
                assert g.status == 200 and g.body == data, g
        except Exception as e:  # reported below
            errors.append("worker %d: %r" % (i, e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(4 * HTTP_TIMEOUT)
        assert not t.is_alive(), "a client thread did not finish"
    assert not errors, errors


def test_deleted_blob_can_be_pushed_again(node, repo):
    data = os.urandom(3333)
    d = push_blob(node, repo, data)
    assert node.req("DELETE", "/v2/%s/blobs/%s" % (repo, d)).status == 202
    assert node.req("HEAD", "/v2/%s/blobs/%s" % (repo, d)).status == 404
    push_blob(node, repo, data)
    assert node.req("GET", "/v2/%s/blobs/%s" % (repo, d)).body == data
