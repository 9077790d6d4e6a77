"""Tests for the fault-injecting proxy (tests/tools/faultproxy.c) through its
Python helper. Run: /usr/bin/python3 -m pytest -q tests/tools

The binary is $FAULTPROXY_BIN, else /work/main/build/faultproxy, else it is
compiled from faultproxy.c into a temporary directory. Targets are small
threaded servers in this process. Timing assertions are one-sided bounds that
follow from how the proxy works (a delay or a token bucket cannot be beaten),
plus deliberately loose floors; every blocking call has a timeout and every
server and proxy is stopped at teardown.
"""

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from faultproxy import DEFAULT_BIN, FaultProxy, FaultProxyError  # noqa: E402

MIB = 1 << 20
IO_TIMEOUT = 30.0
# Floor for the throughput test, deliberately far below what loopback gives
# (about 1 GB/s on two cores) so a loaded machine cannot fail it; a proxy that
# slept per chunk instead of queueing would manage about 5 MB/s at 50 ms.
MIN_MBPS = float(os.environ.get("FAULTPROXY_MIN_MBPS", "100"))


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def proxy_bin(tmp_path_factory):
    env = os.environ.get("FAULTPROXY_BIN")
    if env:
        return env
    if os.access(DEFAULT_BIN, os.X_OK):
        return DEFAULT_BIN
    out = str(tmp_path_factory.mktemp("fpbin") / "faultproxy")
    cc = shutil.which("cc") or "cc"
    subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-Werror", "-std=c11", "-D_GNU_SOURCE",
                    "-o", out, os.path.join(HERE, "faultproxy.c"), "-luv"],
                   check=True, timeout=120)
    return out


class Server:
    """A threaded TCP server on 127.0.0.1:0 running handler(conn, server) per connection."""

    def __init__(self, handler):
        self.handler = handler
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.stopping = threading.Event()
        self.conns = []
        self.threads = []
        self.lock = threading.Lock()
        self.accepted = 0
        self.errors = []
        self.acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self.acceptor.start()

    def _accept_loop(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(IO_TIMEOUT)
            t = threading.Thread(target=self._run, args=(conn,), daemon=True)
            with self.lock:
                self.accepted += 1
                self.conns.append(conn)
                self.threads.append(t)
            t.start()

    def _run(self, conn):
        try:
            self.handler(conn, self)
        except OSError as e:
            if not self.stopping.is_set():
                self.errors.append(e)
        finally:
            conn.close()

    def close(self):
        self.stopping.set()
        self.acceptor.join(5)
        self.sock.close()
        with self.lock:
            conns, threads = list(self.conns), list(self.threads)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in threads:
            t.join(5)


def echo_handler(conn, srv):
    buf = bytearray(MIB)
    view = memoryview(buf)
    while True:
        n = conn.recv_into(buf)
        if n == 0:
            conn.shutdown(socket.SHUT_WR)
            return
        conn.sendall(view[:n])


def sink_handler(conn, srv):
    """Counts bytes until EOF, then answers with the count."""
    buf = bytearray(MIB)
    total = 0
    while True:
        n = conn.recv_into(buf)
        if n == 0:
            break
        total += n
    conn.sendall(b"%d\n" % total)


def source_handler(conn, srv):
    """Reads a decimal byte count and a newline, sends that many bytes, closes."""
    line = b""
    while not line.endswith(b"\n"):
        data = conn.recv(64)
        if not data:
            return
        line += data
    left = int(line)
    block = memoryview(bytes(MIB))
    while left > 0:
        n = min(left, len(block))
        conn.sendall(block[:n])
        left -= n


def hold_handler(conn, srv):
    """Accepts and never reads until the server stops."""
    srv.stopping.wait(120)


@pytest.fixture
def servers():
    started = []

    def make(handler):
        s = Server(handler)
        started.append(s)
        return s
    yield make
    for s in started:
        s.close()


@pytest.fixture
def proxies(proxy_bin):
    started = []

    def make(target_port, **kw):
        fp = FaultProxy(target_port, binary=proxy_bin, **kw).start()
        started.append(fp)
        return fp
    yield make
    for fp in started:
        rc = fp.stop()
        assert rc == 0, "faultproxy exited with %r: %s" % (rc, fp.log_text())


# ---------------------------------------------------------------- helpers

def connect(fp, timeout=IO_TIMEOUT):
    s = socket.create_connection(("127.0.0.1", fp.port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exact(s, n):
    out = bytearray()
    while len(out) < n:
        data = s.recv(n - len(out))
        if not data:
            raise EOFError("connection closed after %d of %d bytes" % (len(out), n))
        out += data
    return bytes(out)


def recv_line(s):
    out = b""
    while not out.endswith(b"\n"):
        data = s.recv(64)
        if not data:
            raise EOFError("connection closed before end of line: %r" % out)
        out += data
    return out


def ping(s, payload=b"ping"):
    t0 = time.perf_counter()
    s.sendall(payload)
    got = recv_exact(s, len(payload))
    assert got == payload
    return time.perf_counter() - t0


def closed_by_peer(s, timeout=10.0):
    """True when the peer closed or reset s (a read sees EOF or an error)."""
    s.settimeout(timeout)
    try:
        s.sendall(b"x")
        return s.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def refused(fp):
    """True when a new connection through fp is reset or closed at once (the
    reset may even reach connect() before it returns)."""
    try:
        s = connect(fp)
    except ConnectionError:
        return True
    try:
        return closed_by_peer(s)
    finally:
        s.close()


def wait_until(pred, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.02)


def upload(fp, nbytes, block=4 * MIB):
    """Sends nbytes to a sink through fp; returns (count the sink saw, seconds)."""
    s = connect(fp)
    data = memoryview(os.urandom(block))
    t0 = time.perf_counter()
    sent = 0
    while sent < nbytes:
        n = min(block, nbytes - sent)
        s.sendall(data[:n])
        sent += n
    s.shutdown(socket.SHUT_WR)
    count = int(recv_line(s))
    elapsed = time.perf_counter() - t0
    s.close()
    return count, elapsed


def download(fp, nbytes):
    s = connect(fp)
    t0 = time.perf_counter()
    s.sendall(b"%d\n" % nbytes)
    buf = bytearray(MIB)
    got = 0
    while True:
        n = s.recv_into(buf)
        if n == 0:
            break
        got += n
    elapsed = time.perf_counter() - t0
    s.close()
    return got, elapsed


# ---------------------------------------------------------------- tests

def test_stream_intact_both_ways(servers, proxies):
    """256 MiB of random bytes go through an echo target and come back
    unchanged; both half-closes are forwarded."""
    echo = servers(echo_handler)
    fp = proxies(echo.port)
    total = 256 * MIB
    s = connect(fp)
    sent_hash = hashlib.sha256()
    send_err = []

    def sender():
        try:
            left = total
            while left:
                block = os.urandom(min(MIB, left))
                sent_hash.update(block)
                s.sendall(block)
                left -= len(block)
            s.shutdown(socket.SHUT_WR)
        except OSError as e:
            send_err.append(e)

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    got_hash = hashlib.sha256()
    got = 0
    buf = bytearray(MIB)
    view = memoryview(buf)
    while True:
        n = s.recv_into(buf)
        if n == 0:
            break
        got_hash.update(view[:n])
        got += n
    t.join(IO_TIMEOUT)
    s.close()
    assert not send_err
    assert got == total
    assert got_hash.hexdigest() == sent_hash.hexdigest()
    st = wait_until(lambda: (lambda x: x if x["conns"] == 0 else None)(fp.stats()),
                    what="connection to close")
    assert st["bytes_up"] == total and st["bytes_down"] == total


def test_latency_delays_each_direction(servers, proxies):
    echo = servers(echo_handler)
    fp = proxies(echo.port)
    s = connect(fp)
    ping(s)
    fp.latency(40)
    rtts = [ping(s, b"ping%d" % i) for i in range(5)]
    # 40 ms one way, both ways: no round trip can be shorter than 80 ms
    assert min(rtts) >= 0.080, rtts
    assert max(rtts) < 5.0, rtts
    fp.latency(0)
    ping(s)
    # a new connection's data is delayed too
    fp.latency(25)
    s2 = connect(fp)
    assert ping(s2) >= 0.050
    fp.reset()
    s.close()
    s2.close()


@pytest.mark.parametrize("direction", ["up", "down"])
def test_rate_caps_throughput(servers, proxies, direction):
    rate = 2_000_000
    nbytes = 4_000_000
    if direction == "up":
        fp = proxies(servers(sink_handler).port)
        fp.rate(rate)
        got, elapsed = upload(fp, nbytes, block=MIB)
    else:
        fp = proxies(servers(source_handler).port)
        fp.rate(rate)
        got, elapsed = download(fp, nbytes)
    assert got == nbytes
    # the token bucket holds at most rate/20 bytes of burst
    floor = (nbytes - rate / 20) / rate
    assert elapsed >= floor * 0.98, (elapsed, floor)
    assert elapsed < floor * 10 + 5, (elapsed, floor)  # capped, not stuck
    fp.rate(0)


def test_cut_and_restore(servers, proxies):
    echo = servers(echo_handler)
    fp = proxies(echo.port)
    a = connect(fp)
    ping(a)
    b = connect(fp)
    ping(b)
    assert fp.stats()["conns"] == 2
    fp.cut()
    assert closed_by_peer(a)
    assert closed_by_peer(b)
    assert fp.stats()["conns"] == 0
    # new connections are refused (accepted by the kernel, then reset at once)
    for _ in range(3):
        assert refused(fp)
    fp.restore()
    d = connect(fp)
    ping(d)
    for s in (a, b, d):
        s.close()


def test_blackhole_holds_data_until_restore(servers, proxies):
    echo = servers(echo_handler)
    fp = proxies(echo.port)
    a = connect(fp)
    ping(a)
    accepted_before = echo.accepted
    fp.blackhole()
    a.sendall(b"held")
    a.settimeout(0.5)
    with pytest.raises(socket.timeout):
        a.recv(16)
    # a connection made during the blackhole is held, not connected or refused
    b = connect(fp)
    b.sendall(b"late")
    b.settimeout(0.5)
    with pytest.raises(socket.timeout):
        b.recv(16)
    assert echo.accepted == accepted_before
    assert fp.stats()["conns"] == 2
    fp.restore()
    a.settimeout(IO_TIMEOUT)
    b.settimeout(IO_TIMEOUT)
    assert recv_exact(a, 4) == b"held"
    assert recv_exact(b, 4) == b"late"
    ping(a)
    a.close()
    b.close()


@pytest.mark.parametrize("latency_ms", [0, 50])
def test_throughput_with_latency(servers, proxies, latency_ms):
    """A delay line, not a sleep: one connection stays fast at 50 ms."""
    fp = proxies(servers(sink_handler).port)
    fp.latency(latency_ms)
    nbytes = 1024 * MIB
    got, elapsed = upload(fp, nbytes)
    assert got == nbytes
    mbps = nbytes / elapsed / 1e6
    print("\nfaultproxy throughput latency=%dms: %.0f MB/s" % (latency_ms, mbps))
    assert elapsed >= latency_ms / 1000.0
    assert mbps > MIN_MBPS, "%.0f MB/s" % mbps


def _rss_bytes(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def test_buffer_cap_back_pressures_sender(servers, proxies):
    """With data parked in a long delay, reading stops at --buffer-cap: the
    sender blocks and the proxy's memory stays bounded."""
    cap = 16 * MIB
    holder = servers(hold_handler)
    fp = proxies(holder.port, extra_args=["--buffer-cap", str(cap)])
    fp.latency(60_000)
    s = connect(fp, timeout=1.0)
    block = memoryview(bytes(MIB))
    sent = 0
    blocked = False
    while sent < 1024 * MIB:
        try:
            sent += s.send(block)
        except socket.timeout:
            blocked = True
            break
    assert blocked, "sender never blocked after %d bytes" % sent
    # cap plus one read buffer, plus what the kernel buffers on the way in
    assert cap <= sent < cap + 64 * MIB, sent
    assert _rss_bytes(fp.proc.pid) < cap + 64 * MIB
    s.close()


def test_target_down_resets_client(proxies):
    probe = socket.create_server(("127.0.0.1", 0))
    dead_port = probe.getsockname()[1]
    probe.close()
    fp = proxies(dead_port)
    for _ in range(3):
        assert refused(fp)
    assert fp.stats()["conns"] == 0
    assert "FP-CONNECT-FAILED" in fp.log_text()


def test_control_protocol_errors(servers, proxies):
    fp = proxies(servers(echo_handler).port)
    for bad in ["latency", "latency -1", "latency 1x", "rate", "rate abc", "cut now",
                "frobnicate", ""]:
        with pytest.raises(FaultProxyError):
            fp.command(bad)
    assert fp.command("latency 5") == "latency=5"
    st = fp.stats()
    assert set(st) == {"conns", "bytes_up", "bytes_down"}
    # an over-long line gets an error and the control connection is closed
    c = socket.create_connection(("127.0.0.1", fp.control_port), timeout=IO_TIMEOUT)
    c.sendall(b"x" * 1000)
    assert recv_line(c).startswith(b"err ")
    c.close()
    fp.reset()


def test_sigterm_with_open_connections(servers, proxies, proxy_bin):
    echo = servers(echo_handler)
    fp = FaultProxy(echo.port, binary=proxy_bin).start()
    try:
        a = connect(fp)
        ping(a)
        fp.latency(10_000)
        a.sendall(b"queued")
        fp.blackhole()
        b = connect(fp)
        t0 = time.monotonic()
        rc = fp.stop(timeout=5)
        assert rc == 0, fp.log_text()
        assert time.monotonic() - t0 < 5
        assert closed_by_peer(a)
        assert closed_by_peer(b)
    finally:
        fp.stop()
