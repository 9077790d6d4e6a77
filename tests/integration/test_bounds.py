"""Bounded resources and HTTP strictness (issue 8, sections 5, 8, 10 and 11):
upload sessions without idle descriptors and under caps, locate waits parked on
the event loop, a per-address connection cap, one node per port, requests
that are not HTTP/1.x refused, IPv4 allow lists on a dual-stack listener, and
the request log with X-Request-Id."""

import json
import os
import re
import resource
import socket
import subprocess
import threading
import time

import pytest

from itlib import (GEOREG_BIN, START_TIMEOUT, Node, http, manifest_bytes, descriptor,
                   parse_status, push_blob, put_manifest, raw_exchange, sha256, tail,
                   wait_until, EMPTY_JSON, EMPTY_JSON_DIGEST, MT_OCI_CONFIG, MT_OCI_MANIFEST)

pytestmark = pytest.mark.georeg_only("georeg's limits, config keys and request log")

TEST_ALARM = 600


def _fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def _metric(node, name):
    r = node.req("GET", "/metrics")
    m = re.search(r"^%s (\d+)" % re.escape(name), r.body.decode(), re.M)
    return int(m.group(1)) if m else None


def _post_upload(node, repo="bounds/app", headers=None):
    return node.req("POST", "/v2/%s/blobs/uploads/" % repo, headers=headers)


class LimitedNode(Node):
    """A node started under RLIMIT_NOFILE = 1024, as under `ulimit -n 1024`."""

    def _command(self):
        return ["prlimit", "--nofile=1024:1024", "--"] + super()._command()


# ---- section 5: uploads ----

def test_idle_upload_sessions_hold_no_descriptor_under_ulimit_1024(tmp_path):
    """1,100 open sessions under ulimit -n 1024: before, every session held a
    descriptor and new connections and pushes failed; now they hold none."""
    n = LimitedNode(str(tmp_path), name="fd",
                    env={"GEOREG_STORAGE_MAX_UPLOADS_PER_IDENTITY": "0"}).start()
    try:
        before = _fds(n.pid)
        for i in range(1100):
            r = _post_upload(n)
            assert r.status == 202, (i, r.status, r.body[:200])
        # no descriptor per idle session (a few for RocksDB files may come and go)
        assert _fds(n.pid) < before + 64, (before, _fds(n.pid))
        push_blob(n, "bounds/app", b"after 1100 sessions" * 100)
        assert n.req("GET", "/v2/").status == 200
    finally:
        n.stop()
    assert not n.check()


def test_upload_session_reopens_its_file_per_request(node):
    """A chunked upload still works when its file is closed between requests."""
    r = _post_upload(node)
    assert r.status == 202
    loc = r.header("Location")
    data = b"x" * 5000 + b"y" * 7000
    r = node.req("PATCH", loc, body=data[:5000],
                 headers={"Content-Type": "application/octet-stream",
                          "Content-Range": "0-4999"})
    assert r.status == 202, r.body
    loc = r.header("Location")
    sep = "&" if "?" in loc else "?"
    r = node.req("PUT", loc + sep + "digest=" + sha256(data), body=data[5000:],
                 headers={"Content-Type": "application/octet-stream"})
    assert r.status == 201, r.body
    assert node.req("GET", "/v2/bounds/app/blobs/" + sha256(data)).body == data


def test_uploads_per_identity_cap_answers_429_with_retry_after(node_factory):
    n = node_factory("cap", env={"GEOREG_STORAGE_MAX_UPLOADS_PER_IDENTITY": "5"})
    locs = []
    for _ in range(5):
        r = _post_upload(n)
        assert r.status == 202
        locs.append(r.header("Location"))
    r = _post_upload(n)
    assert r.status == 429, r.body
    assert r.header("Retry-After") == "30"
    assert "TOOMANYREQUESTS" in r.error_codes()
    # a monolithic POST?digest= opens a session too: refused the same way
    data = b"monolithic"
    r = n.req("POST", "/v2/bounds/app/blobs/uploads/?digest=" + sha256(data), body=data,
              headers={"Content-Type": "application/octet-stream"})
    assert r.status == 429, r.body
    # a session given back makes room again
    assert n.req("DELETE", locs[0]).status == 204
    assert _post_upload(n).status == 202


def test_one_identity_at_its_cap_does_not_block_another(tmp_path_factory, request):
    """The attacker's case: alice opens sessions until refused; bob (same address)
    still uploads, and the refusal is counted per identity, not per address."""
    from test_auth import AuthNodes
    from authlib import create_identity
    f = AuthNodes(tmp_path_factory, request.node.name)
    try:
        n = f("idcap", auth={"mode": "basic"}, storage={"max_uploads_per_identity": 3},
              http={"access_log": True})
        creds = {}
        for who in ("alice", "bob"):
            made = create_identity(n, "user", who, scopes=["bounds/**:pull,push"])
            creds[who] = (who, made["secret"])
        path = "/v2/bounds/app/blobs/uploads/"
        for _ in range(3):
            assert n.req("POST", path, auth=creds["alice"]).status == 202
        r = n.req("POST", path, auth=creds["alice"])
        assert r.status == 429 and r.header("Retry-After") == "30", r
        r = n.req("POST", path, auth=creds["bob"])
        assert r.status == 202, r
        # the request log names who was refused
        wait_until(lambda: re.search(r"event=HTTP-REQ method=POST .*status=429 .*actor=alice ",
                                     tail(n.log_path, 1 << 20)), 30, what="logged refusal")
    finally:
        f.close()


def test_uploads_per_node_cap_answers_429(node_factory):
    n = node_factory("nodecap", env={"GEOREG_STORAGE_MAX_UPLOADS": "4",
                                         "GEOREG_STORAGE_MAX_UPLOADS_PER_IDENTITY": "0"})
    for _ in range(4):
        assert _post_upload(n).status == 202
    r = _post_upload(n)
    assert r.status == 429 and r.header("Retry-After") == "30", r.body
    # the count survives a restart (sessions are persisted and counted at open)
    n.restart()
    assert _post_upload(n).status == 429


def test_idle_upload_sessions_are_purged_after_the_idle_timeout(node_factory):
    n = node_factory("idle", env={"GEOREG_STORAGE_UPLOAD_IDLE_TIMEOUT": "2s",
                                      "GEOREG_STORAGE_MAX_UPLOADS_PER_IDENTITY": "2"})
    locs = [_post_upload(n).header("Location") for _ in range(2)]
    assert _post_upload(n).status == 429
    wait_until(lambda: all(n.req("GET", l).status == 404 for l in locs), 60,
               interval=0.5, what="idle sessions purged")
    assert _post_upload(n).status == 202


# ---- section 5: locate waits ----

def _locate(node, ref, wait="30s", timeout=60):
    return node.req("GET", "/_georeg/v1/locate/bounds/app/manifests/%s?wait=%s" % (ref, wait),
                    timeout=timeout)


def _push_image(node, tag):
    push_blob(node, "bounds/app", EMPTY_JSON)
    body = manifest_bytes({"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
                           "config": descriptor(MT_OCI_CONFIG, EMPTY_JSON), "layers": []})
    r = put_manifest(node, "bounds/app", tag, body)
    assert r.status == 201, r.body


def test_many_locate_waiters_park_without_starving_the_pool(node):
    """40 waiters (before: the fifth got 429 and four held pool threads asleep)
    all wait; pushes and pulls are served meanwhile; all complete on the push."""
    results = []

    def waiter():
        results.append(_locate(node, "v40"))

    threads = [threading.Thread(target=waiter) for _ in range(40)]
    for t in threads:
        t.start()
    wait_until(lambda: _metric(node, "georeg_locate_waiters") == 40, 30,
               what="40 parked waiters")
    # the pool is free: blob pushes and manifest reads go through
    for i in range(10):
        push_blob(node, "bounds/app", b"busy pool %d" % i)
    _push_image(node, "v40")
    for t in threads:
        t.join(60)
    assert len(results) == 40
    assert all(r.status == 200 and r.json()["complete"] for r in results), \
        [(r.status, r.body[:100]) for r in results if r.status != 200][:3]
    assert _metric(node, "georeg_locate_waiters") == 0


def test_locate_waiters_are_dropped_when_the_client_goes_away(node):
    socks = []
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", node.port), timeout=10)
        s.sendall(("GET /_georeg/v1/locate/bounds/app/manifests/gone?wait=600s HTTP/1.1\r\n"
                   "Host: %s\r\n\r\n" % node.host).encode())
        socks.append(s)
    wait_until(lambda: _metric(node, "georeg_locate_waiters") == 20, 30, what="20 waiters")
    for s in socks:
        s.close()
    wait_until(lambda: _metric(node, "georeg_locate_waiters") == 0, 30,
               what="waiters dropped with their clients")


def test_parked_waiters_answer_when_the_node_stops(node_factory):
    """SIGTERM with waiters parked: they are answered at once (not after their
    10-minute wait or the drain timeout) and the node exits 0."""
    n = node_factory("stopwait")
    socks = []
    for _ in range(10):
        s = socket.create_connection(("127.0.0.1", n.port), timeout=30)
        s.sendall(("GET /_georeg/v1/locate/bounds/app/manifests/never?wait=600s HTTP/1.1\r\n"
                   "Host: %s\r\n\r\n" % n.host).encode())
        socks.append(s)
    wait_until(lambda: _metric(n, "georeg_locate_waiters") == 10, 30, what="10 waiters")
    try:
        assert n.stop(timeout=20) == 0  # the answers wait in the socket buffers
        for s in socks:
            out = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                out += chunk
            assert parse_status(out) == 404, out[:200]  # answered: the manifest is unknown
    finally:
        for s in socks:
            s.close()


# ---- section 5: connections per address ----

def test_connections_per_address_are_capped(node_factory):
    n = node_factory("percap", env={"GEOREG_HTTP_MAX_CONNECTIONS_PER_ADDRESS": "8"})
    held = []
    get = ("GET /v2/ HTTP/1.1\r\nHost: %s\r\n\r\n" % n.host).encode()
    try:
        for _ in range(8):
            s = socket.create_connection(("127.0.0.1", n.port), timeout=10)
            held.append(s)
            s.sendall(get)  # served: the connection is counted once this answers
            out = b""
            while b"\r\n\r\n{}" not in out:
                chunk = s.recv(4096)
                assert chunk, "closed"
                out += chunk
            assert parse_status(out) == 200, out[:200]
        extra = raw_exchange(n.port, get)
        assert parse_status(extra) == 503, extra[:200]
        assert b"too many connections from this address" in extra
    finally:
        for s in held:
            s.close()
    wait_until(lambda: n.req("GET", "/v2/").status == 200, 30, what="served again")


# ---- section 8: one node per port ----

def test_second_node_on_a_busy_port_fails_with_address_in_use(node, tmp_path):
    data = tmp_path / "second"
    data.mkdir()
    p = subprocess.Popen([GEOREG_BIN, "serve", "--listen", "127.0.0.1:%d" % node.port,
                          "--data", str(data / "d"), "--name", "second", "--auth", "none"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, err = p.communicate(timeout=START_TIMEOUT)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(10)
        pytest.fail("a second node started on a port in use")
    assert p.returncode != 0
    assert b"address in use" in err.lower() or b"address already in use" in err.lower(), err
    assert node.req("GET", "/v2/").status == 200


# ---- section 10: HTTP strictness ----

def _raw(node, data):
    return raw_exchange(node.port, data, timeout=10)


def test_http11_request_without_host_is_400(node):
    raw = _raw(node, b"GET /v2/ HTTP/1.1\r\n\r\n")
    assert parse_status(raw) == 400, raw[:200]
    assert b"Host" in raw
    # HTTP/1.0 has no Host requirement
    assert parse_status(_raw(node, b"GET /v2/ HTTP/1.0\r\n\r\n")) == 200


def test_space_before_colon_is_400(node):
    raw = _raw(node, ("GET /v2/ HTTP/1.1\r\nHost: %s\r\nX-Thing : 1\r\n\r\n"
                      % node.host).encode())
    assert parse_status(raw) == 400, raw[:200]


def test_http09_request_line_is_refused_at_once(node):
    s = socket.create_connection(("127.0.0.1", node.port), timeout=5)
    try:
        s.sendall(b"GET /v2/\r\n")
        out = b""
        while True:  # bounded by the socket timeout, well below the header timeout
            chunk = s.recv(4096)
            if not chunk:
                break
            out += chunk
    finally:
        s.close()
    assert parse_status(out) == 400, out[:200]
    assert b"HTTP/0.9" in out


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/3.0"])
def test_other_http_versions_are_505(node, version):
    raw = _raw(node, b"GET /v2/ " + version + b"\r\nHost: x\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 505"), raw[:200]


def test_overflowing_chunk_size_is_400_and_close(node):
    s = socket.create_connection(("127.0.0.1", node.port), timeout=10)
    try:
        s.sendall(("POST /v2/bounds/app/blobs/uploads/ HTTP/1.1\r\nHost: %s\r\n"
                   "Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffffff\r\n"
                   % node.host).encode())
        out = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break  # closed by the server: no hang
            out += chunk
    finally:
        s.close()
    assert parse_status(out) == 400, out[:200]
    assert b"Connection: close" in out


def test_ipv4_allow_list_on_a_dual_stack_listener(tmp_path):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with open("/proc/sys/net/ipv6/bindv6only") as f:
            if f.read().strip() != "0":
                pytest.skip("[::] is IPv6-only here")
    except OSError:
        pass
    allowed = Node(str(tmp_path / "a"), name="v6a", config={}, env={
        "GEOREG_HTTP_ALLOW": "127.0.0.1/32", "GEOREG_HTTP_INSECURE": "true"})
    allowed.config = {"listen": "\"[::]:%d\"" % allowed.port}
    allowed.start()
    try:
        assert allowed.req("GET", "/v2/").status == 200
    finally:
        allowed.stop()
    denied = Node(str(tmp_path / "d"), name="v6d", config={}, env={
        "GEOREG_HTTP_ALLOW": "10.0.0.0/8", "GEOREG_HTTP_INSECURE": "true"})
    denied.config = {"listen": "\"[::]:%d\"" % denied.port}
    denied.proc = None
    # not ready-able: /readyz is refused too, so start it by hand
    env = dict(os.environ)
    env.update(denied.extra_env)
    cmd = denied._command()
    with open(denied.log_path, "ab") as log:
        denied.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                       env=env, cwd=denied.workdir)
    try:
        def refused():
            try:
                return http(denied.url, "GET", "/v2/", timeout=2).status == 403
            except OSError:
                return False
        wait_until(refused, START_TIMEOUT, what="403 for an address outside the list")
    finally:
        denied.stop()
    assert not allowed.check() and not denied.check()


# ---- section 11: request log and request id ----

def test_request_log_and_request_id(node_factory):
    n = node_factory("log", env={"GEOREG_HTTP_ACCESS_LOG": "true"})
    r = n.req("GET", "/v2/", headers={"X-Request-Id": "trace-42.a"})
    assert r.header("X-Request-Id") == "trace-42.a"
    r = n.req("GET", "/v2/nope/manifests/latest", headers={"X-Request-Id": "bad id\x01"[:6]})
    generated = r.header("X-Request-Id")
    assert generated and generated != "bad id"
    r2 = n.req("GET", "/v2/")
    assert r2.header("X-Request-Id") not in (None, generated)

    def logged():
        t = tail(n.log_path, 1 << 20)
        return ("request_id=trace-42.a" in t and "request_id=%s" % generated in t)
    wait_until(logged, 30, what="request log lines")
    t = tail(n.log_path, 1 << 20)
    line = [l for l in t.splitlines() if "request_id=%s" % generated in l][0]
    for key in ("event=HTTP-REQ", "method=GET", 'path="/v2/nope/manifests/latest"',
                "status=404", "bytes=", "ms=", "actor=-"):
        assert key in line, line
    # a target with a quote, a backslash and bytes beyond ASCII stays one escaped field
    import socket
    with socket.create_connection(("127.0.0.1", n.port), timeout=10) as s:
        s.sendall(b'GET /v2/x"y\\z/\xc3\xa9/tags/list?a="b" HTTP/1.1\r\nHost: x\r\n'
                  b'X-Request-Id: esc-1\r\nConnection: close\r\n\r\n')
        while s.recv(65536):
            pass
    wait_until(lambda: "request_id=esc-1" in tail(n.log_path, 1 << 20), 30, what="escaped line")
    line = [l for l in tail(n.log_path, 1 << 20).splitlines() if "request_id=esc-1" in l][0]
    assert 'path="/v2/x%22y%5Cz/%C3%A9/tags/list" ' in line, line


def test_request_log_is_off_by_default(node):
    node.req("GET", "/v2/", headers={"X-Request-Id": "quiet-1"})
    node.req("GET", "/v2/")  # a second request, so the first one's line would be out
    assert "request_id=quiet-1" not in tail(node.log_path, 1 << 20)


# An IPv6 client usually holds a whole /64, so the per-address cap counts prefixes.
# Other addresses than ::1 need a network of the test's own: a network namespace
# (iproute2) with its own loopback holding fd00:6:4:1::1, ::2 and fd00:6:4:2::1.
_V6_CLIENT = r'''
import json, socket, sys, time
port, deadline = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
def conn(src):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.settimeout(10)
    s.bind((src, 0))
    s.connect(("fd00:6:4:1::1", port))
    s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
    out = b""
    while b"\r\n\r\n" not in out or (b" 200 " in out[:13] and not out.endswith(b"{}")):
        c = s.recv(4096)
        if not c:
            break
        out += c
    return s, int(out[9:12]) if out[:5] == b"HTTP/" else 0
while True:  # the node starts meanwhile
    try:
        s, st = conn("fd00:6:4:2::1")
        s.close()
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
time.sleep(0.5)  # the probe connection's slot is released
held, res = [], {}
for i in range(2):
    s, st = conn("fd00:6:4:1::1")
    held.append(s)
    res["same_addr_%d" % i] = st
s, res["same_64_other_addr"] = conn("fd00:6:4:1::2")
s.close()
s, res["other_64"] = conn("fd00:6:4:2::1")
s.close()
print(json.dumps(res))
'''


def test_ipv6_clients_are_capped_per_64(tmp_path):
    ns = "georeg-t-%d" % os.getpid()
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode != 0:
        pytest.skip("cannot create a network namespace (ip netns add) here")
    node = None
    try:
        for cmd in (["link", "set", "lo", "up"],
                    ["addr", "add", "fd00:6:4:1::1/64", "dev", "lo", "nodad"],
                    ["addr", "add", "fd00:6:4:1::2/64", "dev", "lo", "nodad"],
                    ["addr", "add", "fd00:6:4:2::1/64", "dev", "lo", "nodad"]):
            subprocess.run(["ip", "-n", ns] + cmd, check=True, capture_output=True)
        port = 5000
        env = dict(os.environ, GEOREG_HTTP_MAX_CONNECTIONS_PER_ADDRESS="2",
                   GEOREG_HTTP_INSECURE="true", GEOREG_AUTH_ALLOW_NONE_OFF_LOOPBACK="true")
        log = open(tmp_path / "node.log", "wb")
        # ip netns exec execs the program: node.pid is georeg's own PID
        node = subprocess.Popen(["ip", "netns", "exec", ns, GEOREG_BIN, "serve", "--listen",
                                 "[::]:%d" % port, "--data", str(tmp_path / "d"), "--auth",
                                 "none"], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                env=env)
        cp = subprocess.run(["ip", "netns", "exec", ns, "/usr/bin/python3", "-c", _V6_CLIENT,
                             str(port), str(START_TIMEOUT)], capture_output=True, text=True,
                            timeout=START_TIMEOUT + 60)
        assert cp.returncode == 0, cp.stderr + open(tmp_path / "node.log").read()
        res = json.loads(cp.stdout)
        assert res == {"same_addr_0": 200, "same_addr_1": 200, "same_64_other_addr": 503,
                       "other_64": 200}, res
    finally:
        rc = None
        if node is not None:
            node.terminate()
            try:
                rc = node.wait(15)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    assert rc == 0, "georeg exited %s after SIGTERM" % rc
