"""Secure by default (issue 8 §9): auth.mode has no default, `none` only when stated
and, off loopback, only with a second opt-in; token mode without any identity
that can administer the registry warns at start; the shipped deploy configs run
token auth.

Each refused start is a real `georeg serve` that must exit 2 by itself with the
reason on stderr (bounded by a timeout; killed by PID if it does not)."""

import os
import subprocess

import pytest

import itlib
from authlib import AuthNode, to_yaml
from itlib import GEOREG_BIN, REPO_ROOT, TOOL_TIMEOUT, free_port

pytestmark = pytest.mark.georeg_only("georeg's start-up checks")


def serve_refused(tmp_path, cfg=None, args=(), env=None):
    """Runs georeg serve (with cfg written as YAML when given); it must exit 2.
    Returns stderr."""
    argv = [GEOREG_BIN, "serve"]
    if cfg is not None:
        path = tmp_path / "georeg.yml"
        path.write_text(to_yaml(cfg))
        argv += ["--config", str(path)]
    argv += list(args)
    e = dict(os.environ)
    e.pop("GEOREG_AUTH_MODE", None)
    e.update(env or {})
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, env=e, cwd=str(tmp_path))
    try:
        _, err = p.communicate(timeout=TOOL_TIMEOUT)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        pytest.fail("georeg serve %s did not exit by itself; it should refuse to start" % argv)
    err = err.decode(errors="replace")
    assert p.returncode == 2, "exit %s, stderr:\n%s" % (p.returncode, err)
    assert "AddressSanitizer" not in err and "runtime error:" not in err, err
    return err


def base_cfg(tmp_path, listen=None, **sections):
    cfg = {"node": {"name": "sd", "data_dir": str(tmp_path / "data")},
           "http": {"listen": listen or "127.0.0.1:%d" % free_port()}}
    for k, v in sections.items():
        cfg[k] = dict(cfg.get(k, {}), **v)
    return cfg


def test_no_auth_mode_refuses_to_start(tmp_path):
    err = serve_refused(tmp_path, base_cfg(tmp_path))
    assert "auth.mode is not set" in err
    assert not (tmp_path / "data").exists(), "the store was opened before the config was checked"


def test_no_auth_mode_with_quick_flags_refuses_to_start(tmp_path):
    err = serve_refused(tmp_path, None, ["--listen", "127.0.0.1:%d" % free_port(),
                                         "--data", str(tmp_path / "d"), "--name", "x"])
    assert "auth.mode is not set" in err


def test_unknown_auth_mode_refused(tmp_path):
    err = serve_refused(tmp_path, None, ["--listen", "127.0.0.1:%d" % free_port(),
                                         "--data", str(tmp_path / "d"), "--auth", "off"])
    assert "expected token, basic or none" in err
    err = serve_refused(tmp_path, base_cfg(tmp_path, auth={"mode": "off"}))
    assert "auth.mode" in err


@pytest.mark.parametrize("where", ["public", "private"])
def test_none_off_loopback_needs_a_second_opt_in(tmp_path, where):
    if where == "public":
        cfg = base_cfg(tmp_path, listen="0.0.0.0:%d" % free_port(),
                       http={"insecure": True}, auth={"mode": "none"})
    else:
        cfg = base_cfg(tmp_path, http={"insecure": True, "private": {
            "listen": "0.0.0.0:%d" % free_port()}}, auth={"mode": "none"})
    err = serve_refused(tmp_path, cfg)
    assert "auth.mode none on 0.0.0.0:" in err and "auth.allow_none_off_loopback" in err
    # the environment is a statement too, and gets the same answer
    err = serve_refused(tmp_path, base_cfg(tmp_path, listen="[::]:%d" % free_port(),
                                           http={"insecure": True}),
                        env={"GEOREG_AUTH_MODE": "none"})
    assert "auth.allow_none_off_loopback" in err


def test_none_off_loopback_with_opt_in_starts_and_warns(tmp_path):
    port = free_port()
    n = AuthNode(str(tmp_path), "sd", {
        "http": {"listen": "0.0.0.0:%d" % port, "insecure": True},
        "auth": {"mode": "none", "allow_none_off_loopback": True}}, port=port)
    try:
        n.start()
        assert n.req("GET", "/v2/").status == 200
        assert n.log_count("AUTH-NONE") == 1
    finally:
        n.stop()


def test_none_on_loopback_stated_starts(tmp_path):
    n = AuthNode(str(tmp_path), "sd", {"auth": {"mode": "none"}})
    try:
        n.start()
        assert n.req("GET", "/v2/").status == 200
        assert n.log_count("AUTH-NONE") == 1
    finally:
        n.stop()


def test_token_mode_without_admin_warns(tmp_path):
    n = AuthNode(str(tmp_path), "sd", {"auth": {"mode": "token"}})
    try:
        n.start()
        assert n.log_count("AUTH-NO-ADMIN") == 1
        r = n.req("GET", "/v2/")
        assert r.status == 401  # nobody gets in, and the operator was told why
    finally:
        n.stop()


def test_token_mode_with_admin_does_not_warn(tmp_path):
    pw = tmp_path / "admin.pw"
    pw.write_text("correct horse battery\n")
    n = AuthNode(str(tmp_path), "sd", {"auth": {"mode": "token",
                                               "admin_password_file": str(pw)}})
    try:
        n.start()
        assert n.log_count("AUTH-NO-ADMIN") == 0
        assert n.req("GET", "/v2/", auth=("admin", "correct horse battery")).status == 200
    finally:
        n.stop()


def test_disabled_admin_and_no_other_admin_warns(tmp_path):
    pw = tmp_path / "admin.pw"
    pw.write_text("correct horse battery\n")
    n = AuthNode(str(tmp_path), "sd", {"auth": {"mode": "basic", "admin_enabled": False,
                                               "admin_password_file": str(pw)}})
    try:
        n.start()
        assert n.log_count("AUTH-NO-ADMIN") == 1
    finally:
        n.stop()


def test_deploy_configs_run_token_auth():
    """The shipped configs (deploy/config/*.yaml, what docker-compose mounts) state
    token auth with an admin password file; make compose-test exercises them."""
    d = os.path.join(REPO_ROOT, "deploy", "config")
    names = sorted(f for f in os.listdir(d) if f.endswith(".yaml"))
    assert names
    for f in names:
        text = open(os.path.join(d, f)).read()
        lines = [l.split("#")[0].rstrip() for l in text.splitlines()]
        i = lines.index("auth:")
        block = []
        for l in lines[i + 1:]:
            if l and not l.startswith(" "):
                break
            block.append(l.strip())
        assert "mode: token" in block, (f, block)
        assert any(l.startswith("admin_password_file: ") for l in block), (f, block)
        assert "allow_none_off_loopback" not in text, f
