"""Header size limit, header timeout (slow clients), idle timeout."""

import select
import socket
import time

import pytest

from itlib import parse_status, raw_exchange


def _get(host, extra=""):
    return ("GET /v2/ HTTP/1.1\r\nHost: %s\r\n%sConnection: close\r\n\r\n" % (host, extra)).encode()


def test_headers_below_the_limit_are_served(node):
    raw = raw_exchange(node.port, _get(node.host, "X-Pad: %s\r\n" % ("a" * 8192)))
    assert parse_status(raw) == 200, raw[:300]


@pytest.mark.georeg_only("Distribution (Go) allows 1 MiB of headers")
def test_oversized_single_header_is_431(node):
    raw = raw_exchange(node.port, _get(node.host, "X-Big: %s\r\n" % ("a" * 20000)))
    assert parse_status(raw) == 431, raw[:300]
    assert node.req("GET", "/v2/").status == 200


@pytest.mark.georeg_only("Distribution (Go) allows 1 MiB of headers")
def test_oversized_header_block_of_many_headers_is_431(node):
    extra = "".join("X-H%03d: %s\r\n" % (i, "b" * 100) for i in range(200))
    raw = raw_exchange(node.port, _get(node.host, extra))
    assert parse_status(raw) == 431, raw[:300]
    assert node.req("GET", "/v2/").status == 200


@pytest.mark.georeg_only("oversized URL: georeg's header limit")
def test_oversized_request_line_is_rejected(node):
    raw = raw_exchange(node.port, ("GET /v2/%s/tags/list HTTP/1.1\r\nHost: %s\r\n\r\n"
                                   % ("a" * 20000, node.host)).encode())
    assert parse_status(raw) in (414, 431), raw[:300]
    assert node.req("GET", "/v2/").status == 200


def _closed(sock, replies):
    """True when the peer closed (after whatever reply it sent)."""
    r, _, _ = select.select([sock], [], [], 0)
    if not r:
        return False
    try:
        data = sock.recv(65536)
    except (ConnectionResetError, OSError):
        return True
    if not data:
        return True
    replies.append(data)
    return False


@pytest.mark.georeg_only("GEOREG_HTTP_HEADER_TIMEOUT is georeg's")
def test_slow_header_client_is_cut_off_while_others_are_served(node_factory):
    node = node_factory(env={"GEOREG_HTTP_HEADER_TIMEOUT": "2s"})
    # one byte per second: this request would take ~70 s to send
    request = _get(node.host, "X-Slow: %s\r\n" % ("s" * 30))
    slow = socket.create_connection(("127.0.0.1", node.port), timeout=5)
    t0 = time.monotonic()
    cut_after = None
    served = 0
    replies = []
    try:
        for i in range(len(request)):
            try:
                slow.sendall(request[i:i + 1])
            except (BrokenPipeError, ConnectionResetError):
                cut_after = time.monotonic() - t0
                break
            # another client is served normally meanwhile
            r = node.req("GET", "/v2/", timeout=5)
            assert r.status == 200, r
            served += 1
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                if _closed(slow, replies):
                    cut_after = time.monotonic() - t0
                    break
                time.sleep(0.05)
            if cut_after is not None:
                break
            assert time.monotonic() - t0 < 20, "slow client still connected after 20 s"
    finally:
        slow.close()
    assert cut_after is not None, "the slow client sent its whole request without being cut off"
    assert served >= 1
    reply = b"".join(replies)
    if reply:
        assert parse_status(reply) in (400, 408), reply[:200]
    # and the node keeps serving
    assert node.req("GET", "/v2/").status == 200


@pytest.mark.georeg_only("GEOREG_HTTP_IDLE_TIMEOUT is georeg's")
def test_idle_keepalive_connection_is_closed_after_idle_timeout(node_factory):
    node = node_factory(env={"GEOREG_HTTP_IDLE_TIMEOUT": "2s"})
    s = socket.create_connection(("127.0.0.1", node.port), timeout=5)
    try:
        s.sendall(("GET /v2/ HTTP/1.1\r\nHost: %s\r\n\r\n" % node.host).encode())
        resp = b""
        while b"\r\n\r\n" not in resp:
            resp += s.recv(4096)
        assert parse_status(resp) == 200, resp
        s.settimeout(15)
        t0 = time.monotonic()
        closed = False
        while time.monotonic() - t0 < 15:
            try:
                chunk = s.recv(4096)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
        assert closed, "idle keep-alive connection still open after 15 s"
    finally:
        s.close()


@pytest.mark.georeg_only("GEOREG_HTTP_MAX_CONNECTIONS is georeg's")
def test_connections_over_the_cap_do_not_wedge_the_node(node_factory):
    node = node_factory(env={"GEOREG_HTTP_MAX_CONNECTIONS": "8",
                             "GEOREG_HTTP_HEADER_TIMEOUT": "2s"})
    socks = []
    try:
        for _ in range(20):
            try:
                socks.append(socket.create_connection(("127.0.0.1", node.port), timeout=5))
            except OSError:
                break
    finally:
        for s in socks:
            s.close()
    # once they are gone the node serves again (bounded wait)
    deadline = time.monotonic() + 15
    last = None
    while time.monotonic() < deadline:
        try:
            last = node.req("GET", "/v2/", timeout=3)
            if last.status == 200:
                break
        except OSError as e:
            last = e
        time.sleep(0.2)
    assert getattr(last, "status", None) == 200, last
    assert node.running()
