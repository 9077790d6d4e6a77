#!/usr/bin/env python3
"""Memory cost of idle upload sessions and idle connections (issue 8, section 5).

Starts one node (127.0.0.1, a fresh data dir), reads its RSS, opens N idle
upload sessions (POST, never finished), reads RSS again, opens M idle
keep-alive connections, reads RSS again, and prints the three figures.

  GEOREG_BIN=build/georeg python3 scripts/bench/idle-cost.py [sessions] [connections]
"""

import http.client
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

BIN = os.environ.get("GEOREG_BIN", os.path.join(os.path.dirname(__file__), "..", "..",
                                                "build", "georeg"))


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def main():
    nsess = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    nconn = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, nconn + 1024), hard))
    work = tempfile.mkdtemp(prefix="georeg-idle-")
    port = free_port()
    env = dict(os.environ, GEOREG_STORAGE_MAX_UPLOADS_PER_IDENTITY="0",
               GEOREG_STORAGE_MAX_UPLOADS=str(nsess),
               GEOREG_HTTP_MAX_CONNECTIONS_PER_ADDRESS="0")
    log = open(os.path.join(work, "log"), "wb")
    p = subprocess.Popen([BIN, "serve", "--listen", "127.0.0.1:%d" % port, "--data",
                          os.path.join(work, "d"), "--name", "idle", "--auth", "none"], stdout=log, stderr=log,
                         env=env)
    socks = []
    try:
        for _ in range(200):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/readyz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.05)
        time.sleep(6)  # one housekeeping round (malloc_trim) before the baseline
        base = rss_kib(p.pid)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for i in range(nsess):
            c.request("POST", "/v2/idle/app/blobs/uploads/", headers={"Content-Length": "0"})
            r = c.getresponse()
            r.read()
            assert r.status == 202, (i, r.status)
        c.close()
        time.sleep(6)
        after_sessions = rss_kib(p.pid)
        for _ in range(nconn):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            socks.append(s)
        # every connection answered once, so all of them are accepted and set up
        for s in socks:
            s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        for s in socks:
            got = b""
            while b"{}" not in got:
                got += s.recv(4096)
        time.sleep(6)
        after_conns = rss_kib(p.pid)
        fds = len(os.listdir("/proc/%d/fd" % p.pid))
        print("baseline_rss_kib=%d" % base)
        print("sessions=%d rss_kib=%d delta_mib=%.1f per_session_bytes=%d"
              % (nsess, after_sessions, (after_sessions - base) / 1024.0,
                 (after_sessions - base) * 1024 // max(nsess, 1)))
        print("connections=%d rss_kib=%d delta_mib=%.1f per_connection_bytes=%d open_fds=%d"
              % (nconn, after_conns, (after_conns - after_sessions) / 1024.0,
                 (after_conns - after_sessions) * 1024 // max(nconn, 1), fds))
    finally:
        for s in socks:
            s.close()
        p.terminate()
        p.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
