"""FaultProxy: drive tests/tools/faultproxy from Python tests (stdlib only).

    with FaultProxy(target_port=node_b.port) as fp:
        node_a.peer = ("127.0.0.1", fp.port)
        fp.latency(50); fp.rate(10_000_000); fp.cut(); fp.restore()

The binary comes from $FAULTPROXY_BIN or /work/main/build/faultproxy. Ports
default to 0: the proxy binds free ports itself and reports them on its ready
line, so there is no race between picking a port and binding it.
"""

import os
import re
import signal
import socket
import subprocess
import tempfile
import time

DEFAULT_BIN = "/work/main/build/faultproxy"
_READY = re.compile(rb"faultproxy listening listen=(\S+):(\d+) target=\S+ control=(\S+):(\d+)")


class FaultProxyError(RuntimeError):
    """The proxy did not start, or answered a command with "err ..."."""


class FaultProxy:
    """One faultproxy process forwarding 127.0.0.1:port to target_host:target_port."""

    def __init__(self, target_port, target_host="127.0.0.1", listen_port=0, control_port=0,
                 host="127.0.0.1", binary=None, start_timeout=10.0, cmd_timeout=10.0,
                 log_path=None, extra_args=()):
        self.binary = binary or os.environ.get("FAULTPROXY_BIN") or DEFAULT_BIN
        self.target = (target_host, int(target_port))
        self.host = host
        self.port = int(listen_port)
        self.control_port = int(control_port)
        self.start_timeout = start_timeout
        self.cmd_timeout = cmd_timeout
        self.extra_args = list(extra_args)
        self.proc = None
        self._ctl = None
        self._rbuf = b""
        self._own_log = log_path is None
        self.log_path = log_path

    # ---- lifecycle ----

    def start(self):
        """Starts the process and waits for its ready line; returns self."""
        if self.proc is not None:
            return self
        if not os.access(self.binary, os.X_OK):
            raise FaultProxyError(f"faultproxy binary not found: {self.binary} "
                                  "(build it or set FAULTPROXY_BIN)")
        if self.log_path is None:
            fd, self.log_path = tempfile.mkstemp(prefix="faultproxy-", suffix=".log")
            os.close(fd)
        th, tp = self.target
        tgt = f"[{th}]:{tp}" if ":" in th else f"{th}:{tp}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        argv = [self.binary, "--listen", f"{host}:{self.port}", "--target", tgt,
                "--control", f"{host}:{self.control_port}"] + self.extra_args
        with open(self.log_path, "ab") as log:  # O_APPEND: our reads never move its offset
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log)
        try:
            self._wait_ready()
            self._ctl = socket.create_connection((self.host, self.control_port),
                                                 timeout=self.cmd_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self):
        deadline = time.monotonic() + self.start_timeout
        while True:
            with open(self.log_path, "rb") as f:
                m = _READY.search(f.read())
            if m:
                self.port = int(m.group(2))
                self.control_port = int(m.group(4))
                return
            if self.proc.poll() is not None:
                raise FaultProxyError(f"faultproxy exited with {self.proc.returncode}: "
                                      f"{self.log_text()}")
            if time.monotonic() > deadline:
                raise FaultProxyError(f"faultproxy not ready after {self.start_timeout}s: "
                                      f"{self.log_text()}")
            time.sleep(0.01)

    def stop(self, timeout=5.0):
        """SIGTERM by PID, bounded wait, then SIGKILL; returns the exit code."""
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=timeout)
            rc = self.proc.returncode
        if self._own_log and self.log_path and os.path.exists(self.log_path):
            os.unlink(self.log_path)
            self.log_path = None
        return rc

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def log_text(self):
        """The proxy's stderr so far (for failure messages)."""
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except (OSError, TypeError):
            return ""

    @property
    def address(self):
        return (self.host, self.port)

    # ---- control protocol ----

    def command(self, line):
        """Sends one command line; returns the reply after "ok", raises on "err"."""
        if self._ctl is None:
            raise FaultProxyError("faultproxy is not running")
        self._ctl.sendall(line.encode() + b"\n")
        while b"\n" not in self._rbuf:
            data = self._ctl.recv(4096)
            if not data:
                raise FaultProxyError(f"control connection closed after {line!r}")
            self._rbuf += data
        reply, self._rbuf = self._rbuf.split(b"\n", 1)
        reply = reply.decode()
        if reply == "ok" or reply.startswith("ok "):
            return reply[3:]
        raise FaultProxyError(f"{line!r}: {reply}")

    def latency(self, ms):
        """One-way delay added in both directions, in milliseconds (0 = none)."""
        self.command(f"latency {int(ms)}")

    def rate(self, bytes_per_s):
        """Bandwidth cap per direction per connection (0 = unlimited)."""
        self.command(f"rate {int(bytes_per_s)}")

    def cut(self):
        """Resets all connections and refuses new ones until restore()."""
        self.command("cut")

    def restore(self):
        """Ends cut() and blackhole()."""
        self.command("restore")

    def blackhole(self):
        """Keeps connections open but forwards nothing (and connects nothing) until restore()."""
        self.command("blackhole")

    def reset(self):
        """latency 0, rate 0, restore."""
        self.command("reset")

    def stats(self):
        """{"conns": N, "bytes_up": N, "bytes_down": N} (bytes forwarded so far)."""
        out = {}
        for field in self.command("stats").split():
            k, _, v = field.partition("=")
            out[k] = int(v)
        return out
