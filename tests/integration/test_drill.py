"""The failover drill (scripts/drill.py, `make drill`) in its reduced form:
`drill.py --quick` runs scenarios a (kill -9 the primary, promote by hand) and d
(the old primary returns with writes nobody else saw) with sync on and few pushes,
on its own clusters (every process stopped by PID by the drill itself). Checked:
its exit status, one `drill:` line per scenario that says ok, and the etcd
scenario absent (it is not part of --quick). No timing is asserted."""

import os
import re
import signal
import subprocess
import sys

import pytest

import itlib

pytestmark = pytest.mark.georeg_only("the drill runs georeg's failover")

TEST_ALARM = 400 if itlib.ASAN else 150
DRILL = os.path.join(itlib.REPO_ROOT, "scripts", "drill.py")


def test_quick_drill_passes(tmp_path):
    if not os.access(itlib.GEOREG_BIN, os.X_OK):
        pytest.fail("georeg binary not found: %s (run make)" % itlib.GEOREG_BIN)
    p = subprocess.Popen([sys.executable, DRILL, "--quick", "--workdir", str(tmp_path)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = p.communicate(timeout=TEST_ALARM - 40)
    except subprocess.TimeoutExpired:
        out = None
    finally:
        if p.poll() is None:
            # the drill stops every process it started on SIGTERM, by PID
            p.send_signal(signal.SIGTERM)
            try:
                p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
    if out is None:
        pytest.fail("drill --quick did not finish within %ds" % (TEST_ALARM - 40))
    assert p.returncode == 0, "drill --quick exited %d:\n%s" % (p.returncode, out[-12000:])
    lines = [x for x in out.splitlines() if re.match(r"drill: scenario=[a-d] sync=", x)]
    # each scenario's line is printed when it ends and again in the results
    got = sorted({x.split()[1] + " " + x.split()[2] for x in lines})
    assert got == ["scenario=a sync=on", "scenario=d sync=on"], out[-8000:]
    for x in lines:
        assert x.endswith(" ok") and " FAIL" not in x, x
        f = dict(kv.split("=", 1) for kv in x.split()[1:] if "=" in kv)
        assert f["lost"] == "0" and f["split_brain_acks"] == "0", x
        assert f["digests_equal"] == "yes", x
        assert int(f["acked"]) > 0, x
    d = [x for x in lines if "scenario=d" in x][0]
    assert "restarted_writable=no" in d, d
    assert re.search(r"^drill: passed=2 failed=0 skipped=0$", out, re.M), out[-4000:]
    # every node exited 0 on SIGTERM, as every integration test demands of its nodes
    # (a node still running 15 s after SIGTERM has its stacks in hang-stacks.txt
    # next to its log, in the drill's work dir under tmp_path)
    hung = re.findall(r"^drill: WARNING .*$", out, re.M)
    assert re.search(r"^drill: teardown problems=0$", out, re.M), (
        "georeg nodes did not stop cleanly:\n%s\n%s" % ("\n".join(hung), out[-8000:]))
