"""Fixtures for georeg's integration tests.

Environment:
  GEOREG_BIN           the binary (default build/georeg)
  GEOREG_ASAN=1        the binary is an ASan/UBSan build: stderr is scanned for
                       sanitizer reports and a non-zero exit after SIGTERM fails
  GEOREG_TEST_TARGET   'georeg' (default) or 'distribution' to run the same
                       tests against CNCF Distribution (/usr/bin/docker-registry)
                       as a reference; georeg-specific tests are then skipped.

Every process a fixture starts is stopped by PID at teardown (SIGTERM, 15 s,
then SIGKILL).
"""

import os
import re
import shutil
import signal
import uuid

import pytest

import itlib
from itlib import Node


def _kill_live_nodes(signum=None, frame=None):
    for n in list(itlib.LIVE):
        try:
            n.kill9()
        except Exception:
            pass
    if signum is not None:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def pytest_configure(config):
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _kill_live_nodes)
    config.addinivalue_line("markers", "slow: a test that takes more than a few seconds")
    config.addinivalue_line(
        "markers", "georeg_only(reason): georeg-specific behaviour; skipped when "
        "GEOREG_TEST_TARGET=distribution")


def pytest_unconfigure(config):
    _kill_live_nodes()


def pytest_runtest_setup(item):
    m = item.get_closest_marker("georeg_only")
    if m is not None and itlib.IS_DISTRIBUTION:
        reason = m.args[0] if m.args else m.kwargs.get("reason", "georeg-specific")
        pytest.skip("distribution reference run: " + reason)


def _check_binary():
    if itlib.IS_DISTRIBUTION:
        if not os.access(itlib.DISTRIBUTION_BIN, os.X_OK):
            pytest.fail("GEOREG_TEST_TARGET=distribution but %s is missing "
                        "(apt-get install docker-registry)" % itlib.DISTRIBUTION_BIN)
    elif not os.access(itlib.GEOREG_BIN, os.X_OK):
        pytest.fail("georeg binary not found or not executable: %s (run `make`, or set "
                    "GEOREG_BIN)" % itlib.GEOREG_BIN)


class NodeManager:
    """Starts nodes and, at close, stops every one of them and reports
    unclean shutdowns and sanitizer findings."""

    def __init__(self, tmp_factory, label):
        self.tmp_factory = tmp_factory
        self.label = label
        self.nodes = []

    def new(self, name="it", env=None, start=True, port=None, config=None):
        _check_binary()
        workdir = str(self.tmp_factory.mktemp(re.sub(r"[^A-Za-z0-9_]", "_", self.label)[:40]))
        n = Node(workdir, name=name, env=env, port=port, config=config)
        self.nodes.append(n)
        if start:
            n.start()
        return n

    def close(self):
        problems = []
        for n in self.nodes:
            try:
                n.stop()
            except Exception as e:  # keep stopping the others
                problems.append("%s: stop failed: %r" % (n.url, e))
                try:
                    n.kill9()
                except Exception:
                    pass
            for p in n.check():
                problems.append("%s (%s, log %s): %s" % (n.target, n.url, n.log_path, p))
        if problems:
            logs = "\n".join("---- %s\n%s" % (n.log_path, itlib.tail(n.log_path, 6000))
                             for n in self.nodes if n.check())
            pytest.fail("node problems at teardown:\n  " + "\n  ".join(problems) + "\n" + logs,
                        pytrace=False)


@pytest.fixture(autouse=True)
def _bounded(request):
    """In a module that sets TEST_ALARM (seconds), fails a test that runs longer
    than that, fixtures included (they still stop every process they started)."""
    limit = getattr(request.module, "TEST_ALARM", None)
    if not limit:
        yield
        return

    def on_alarm(signum, frame):
        raise TimeoutError("test exceeded %ds" % limit)
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(limit)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture
def node_factory(tmp_path_factory, request):
    """Function-scoped: node_factory(name=..., env={...}) -> started Node."""
    mgr = NodeManager(tmp_path_factory, request.node.name)
    yield mgr.new
    mgr.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory, request):
    """One node shared by the tests of a module (they use distinct repos)."""
    mgr = NodeManager(tmp_path_factory, request.module.__name__)
    n = mgr.new()
    yield n
    mgr.close()


@pytest.fixture
def fresh_node(node_factory):
    """A node of its own for a test that restarts, kills or counts."""
    return node_factory()


@pytest.fixture
def repo(request):
    """A repository name unique to this test."""
    base = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    return "it/%s-%s" % (base or "t", uuid.uuid4().hex[:8])


# ---- external tools: missing ones make the test SKIP, loudly ----

def _tool(name, path=None):
    p = path if path and os.access(path, os.X_OK) else shutil.which(name)
    if not p:
        pytest.skip("SKIPPED: %s is not installed%s" % (
            name, " (run scripts/install-test-tools.sh)" if path else ""))
    return p


@pytest.fixture(scope="session")
def skopeo():
    return _tool("skopeo")


@pytest.fixture(scope="session")
def oras():
    return _tool("oras", os.path.join(itlib.TOOLS_DIR, "oras"))


@pytest.fixture(scope="session")
def docker():
    p = shutil.which("docker")
    if not p:
        pytest.skip("SKIPPED: docker CLI is not installed")
    try:
        cp = itlib.run([p, "info", "--format", "{{json .RegistryConfig.InsecureRegistryCIDRs}}"],
                       timeout=30, check=False)
    except AssertionError as e:
        pytest.skip("SKIPPED: Docker engine does not answer: %s" % e)
    if cp.returncode != 0:
        pytest.skip("SKIPPED: Docker engine not available: %s" % cp.stderr.strip()[:300])
    if "127.0.0.0/8" not in cp.stdout:
        pytest.skip("SKIPPED: Docker engine does not treat 127.0.0.0/8 as insecure (%s)"
                    % cp.stdout.strip())
    return p
