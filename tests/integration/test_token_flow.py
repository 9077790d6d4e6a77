"""The token endpoint's OAuth2 POST flow (issue 8 §3: clients built on containerd
log in): grant_type=password and grant_type=refresh_token forms as containerd's
`ctr`, BuildKit, nerdctl and kubelets send them, refresh tokens (offline access),
the attacker's side of each (wrong passwords, forged, replayed, garbage and
stale refresh tokens, broken and oversized forms), scope narrowed to grants,
the catalog's challenge, and the real clients (`ctr` against a private
containerd, buildkitd + buildctl) pushing and pulling in token mode.

- One module-scoped token-mode node (`tnode`) serves the tests that only add
  identities and repositories of their own; tests that restart a node or fill
  the refresh token store get their own (`make_node`).
- Requests meant to fail authentication come from a loopback address of their
  own (authlib.new_src()): georeg slows down an address that keeps failing, and
  the passing requests come from 127.0.0.1.
- Every process a test starts (georeg, containerd, buildkitd) is stopped by PID
  at its end; everything talks to 127.0.0.1 only; no assertion is timed.
"""

import http.client as httpclient
import json
import os
import shutil
import signal
import subprocess
import tarfile
import urllib.parse
import uuid

import pytest

import itlib
from authlib import As, audit_all, basic, challenge, create_identity, jwt_decode, new_src, pick
from itlib import MT_OCI_MANIFEST, OCILayout, get_manifest, make_image, run, wait_until
from test_auth import AuthNodes, assert_not_logged

pytestmark = pytest.mark.georeg_only("the token endpoint is georeg's own")

TEST_ALARM = 420 if itlib.ASAN else 200  # seconds for any one test (conftest's _bounded)
TOKEN = "/_georeg/v1/token"
FORM = "application/x-www-form-urlencoded"


# --------------------------------------------------------------------------
# fixtures and helpers

@pytest.fixture
def make_node(tmp_path_factory, request):
    f = AuthNodes(tmp_path_factory, request.node.name)
    yield f
    f.close()


@pytest.fixture(scope="module")
def tnode(tmp_path_factory):
    f = AuthNodes(tmp_path_factory, "test_token_flow_shared")
    n = f("tokenflow")
    yield n
    f.close()


def uid():
    return uuid.uuid4().hex[:8]


def post_token(node, fields=None, raw=None, src=None, content_type=FORM, headers=None):
    """POSTs a token form (fields: a list of pairs or a dict, or raw bytes)."""
    body = raw if raw is not None else urllib.parse.urlencode(fields or []).encode()
    h = dict(headers or {})
    if content_type:
        h["Content-Type"] = content_type
    return node.req("POST", TOKEN, body=body, headers=h, src=src)


def password_grant(node, user, password, scope=None, offline=False, src=None, service="georeg"):
    f = [("grant_type", "password"), ("username", user), ("password", password),
         ("client_id", "georeg-tests"), ("service", service)]
    if scope:
        f.append(("scope", scope))
    if offline:
        f.append(("access_type", "offline"))
    return post_token(node, f, src=src)


def refresh_grant(node, refresh, scope=None, offline=False, src=None):
    f = [("grant_type", "refresh_token"), ("refresh_token", refresh),
         ("client_id", "georeg-tests"), ("service", "georeg")]
    if scope:
        f.append(("scope", scope))
    if offline:
        f.append(("access_type", "offline"))
    return post_token(node, f, src=src)


def access_of(tok):
    """{repository name: set of actions} from a JWT's access claim."""
    return {a["name"]: set(a["actions"]) for a in jwt_decode(tok)[1]["access"]}


def user(node, prefix, scopes, password=None):
    name = "%s-%s" % (prefix, uid())
    pw = password or "pw-" + uid() + uid()
    create_identity(node, "user", name, scopes=scopes, password=pw)
    return name, pw


def assert_refused(r, status, oauth):
    """An error answer: the OCI error JSON (the project's convention) with OAuth2's
    error field, and never a token."""
    assert r.status == status, r
    j = r.json()
    assert j["errors"][0]["code"] == {400: "UNSUPPORTED", 401: "UNAUTHORIZED",
                                      403: "DENIED", 413: "SIZE_INVALID"}[status], r
    if oauth:
        assert j.get("error") == oauth, r
    assert "token" not in j and "access_token" not in j and "refresh_token" not in j, r


# --------------------------------------------------------------------------
# password grant

def test_password_grant_issues_a_scoped_token(tnode):
    x = uid()
    name, pw = user(tnode, "pg", ["tf-%s/**:pull,push" % x])
    repo = "tf-%s/app" % x
    r = password_grant(tnode, name, pw,
                       scope="repository:%s:pull,push repository:elsewhere-%s/b:pull" % (repo, x))
    assert r.status == 200, r
    j = r.json()
    assert j["access_token"] and j["token"] == j["access_token"], j
    assert isinstance(j["expires_in"], int) and j["expires_in"] > 0, j
    assert j["issued_at"].endswith("Z"), j
    assert j["scope"] == "repository:%s:pull,push" % repo, j
    assert "refresh_token" not in j, j  # not asked for (no access_type=offline)
    assert r.header("Cache-Control") == "no-store", r
    claims = jwt_decode(j["access_token"])[1]
    assert claims["sub"] == name and claims["aud"] == "georeg", claims
    assert access_of(j["access_token"]) == {repo: {"pull", "push"}}, claims
    # the token works for what it grants
    tb = As(tnode, token=j["access_token"])
    make_image(tb, repo, "v1")
    assert get_manifest(tb, repo, "v1").status == 200
    # the login is audited like the GET flow's
    e = pick(audit_all(tnode, actor=name), action="login", status=200)
    assert e and e[0]["detail"] == "token issued (password grant)", e
    assert_not_logged(tnode, pw)


def test_password_grant_wrong_credentials_are_401_not_an_empty_token(tnode):
    name, pw = user(tnode, "pgbad", ["tf-bad/**:pull"])
    src = new_src()
    for u, p in ((name, pw + "x"), (name, ""), ("nobody-" + uid(), pw)):
        if not p:
            continue
        r = password_grant(tnode, u, p, scope="repository:tf-bad/a:pull", src=src)
        assert_refused(r, 401, "invalid_grant")
        assert r.json()["errors"][0]["message"] == "unknown user or wrong password", r
    # the failed logins are audited with the name they claimed, never the secret
    e = [a for a in audit_all(tnode) if a.get("addr") == src and a["action"] == "login"]
    assert len(e) == 2 and all(a["status"] == 401 and a["result"] == "denied" for a in e), e
    assert e[0].get("claimed") == name, e
    assert_not_logged(tnode, pw + "x")


def test_password_grant_disabled_identity_is_401(tnode):
    name, pw = user(tnode, "pgdis", ["tf-dis/**:pull"])
    r = tnode.req("POST", "/_georeg/v1/users/%s/disable" % name, auth=tnode.admin)
    assert r.status in (200, 204), r
    assert_refused(password_grant(tnode, name, pw, src=new_src()), 401, "invalid_grant")


def test_malformed_token_requests_are_400(tnode):
    name, pw = user(tnode, "pgform", ["tf-form/**:pull"])
    src = new_src()
    cases = [
        ("no grant_type", [("username", name), ("password", pw)], FORM),
        ("unknown grant_type", [("grant_type", "client_credentials"), ("client_id", "x")], FORM),
        ("authorization_code", [("grant_type", "authorization_code"), ("code", "abc")], FORM),
        ("password grant without password", [("grant_type", "password"), ("username", name)], FORM),
        ("password grant without username", [("grant_type", "password"), ("password", pw)], FORM),
        ("refresh grant without refresh_token", [("grant_type", "refresh_token")], FORM),
        ("a repeated username", [("grant_type", "password"), ("username", "admin"),
                                 ("username", name), ("password", pw)], FORM),
        ("a JSON body", None, "application/json"),
        ("no content type", [("grant_type", "password"), ("username", name),
                             ("password", pw)], None),
    ]
    for what, fields, ct in cases:
        raw = json.dumps({"grant_type": "password", "username": name,
                          "password": pw}).encode() if fields is None else None
        r = post_token(tnode, fields, raw=raw, content_type=ct, src=src)
        assert r.status == 400, (what, r)
        assert_refused(r, 400, None)
        assert r.json()["error"] in ("invalid_request", "unsupported_grant_type"), (what, r)
    r = post_token(tnode, [("grant_type", "implicit")], src=src)
    assert r.json()["error"] == "unsupported_grant_type", r
    # broken form encoding: a bad %-escape, an encoded NUL, an over-long field
    for raw in (b"grant_type=password&username=" + name.encode() + b"&password=%zz",
                b"grant_type=password&username=a%00b&password=x",
                b"grant_type=password&username=" + b"u" * 300 + b"&password=x",
                b"grant_type=pass%2", b"grant_type=password&user%zzname=x&password=y"):
        r = post_token(tnode, raw=raw, src=src)
        assert_refused(r, 400, "invalid_request")
    # none of these was a login attempt that could be guessed at
    assert not [a for a in audit_all(tnode) if a.get("addr") == src and a["status"] == 200]


def test_oversized_form_is_refused_and_the_connection_stays_sane(tnode):
    name, pw = user(tnode, "pgbig", ["tf-big/**:pull"])
    conn = httpclient.HTTPConnection("127.0.0.1", tnode.port, timeout=itlib.HTTP_TIMEOUT)
    try:
        # 16 KiB: refused before it is kept, read and dropped; the connection serves on
        body = urllib.parse.urlencode([("grant_type", "password"), ("username", name),
                                       ("password", pw), ("scope", "x" * 16384)]).encode()
        conn.request("POST", TOKEN, body=body, headers={"Content-Type": FORM})
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status == 413, (resp.status, data)
        assert json.loads(data)["errors"][0]["code"] == "SIZE_INVALID", data
        assert b"token" not in data
        conn.request("POST", TOKEN, body=urllib.parse.urlencode(
            [("grant_type", "password"), ("username", name), ("password", pw)]).encode(),
            headers={"Content-Type": FORM})
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status == 200 and json.loads(data)["access_token"], data
    finally:
        conn.close()
    # 1 MiB: refused unread (the connection may close); the node serves on
    r = post_token(tnode, raw=b"grant_type=password&password=" + b"p" * (1 << 20))
    assert r.status == 413, r
    assert password_grant(tnode, name, pw).status == 200


# --------------------------------------------------------------------------
# scope handling (the GET flow's)

def test_scope_is_narrowed_to_the_grants(tnode):
    x = uid()
    name, pw = user(tnode, "sc", ["tf-sc-%s/ro/**:pull" % x, "tf-sc-%s/rw/**:push" % x])
    ro, rw = "tf-sc-%s/ro/a" % x, "tf-sc-%s/rw/b" % x
    scope = ("repository:%s:pull,push,delete repository:%s:push,pull repository:tf-other/c:pull "
             "registry:catalog:*" % (ro, rw))
    r = password_grant(tnode, name, pw, scope=scope)
    assert r.status == 200, r
    j = r.json()
    assert access_of(j["access_token"]) == {ro: {"pull"}, rw: {"pull", "push"}, "catalog": {"*"}}
    assert set(j["scope"].split(" ")) == {"repository:%s:pull" % ro,
                                         "repository:%s:pull,push" % rw, "registry:catalog:*"}, j
    # scope= repeated, as the GET flow takes it, and the same answer through GET
    r2 = post_token(tnode, [("grant_type", "password"), ("username", name), ("password", pw),
                            ("scope", "repository:%s:pull,push,delete" % ro),
                            ("scope", "repository:%s:push,pull" % rw)])
    assert access_of(r2.json()["access_token"]) == {ro: {"pull"}, rw: {"pull", "push"}}
    q = urllib.parse.urlencode([("scope", "repository:%s:pull,push,delete" % ro),
                                ("scope", "repository:%s:push,pull" % rw)])
    r3 = tnode.req("GET", TOKEN + "?" + q, auth=(name, pw))
    assert r3.status == 200 and access_of(r3.json()["token"]) == access_of(r2.json()["access_token"])
    # another service: refused like the GET flow refuses it
    r4 = password_grant(tnode, name, pw, scope="repository:%s:pull" % ro, service="elsewhere")
    assert_refused(r4, 403, "invalid_scope")


def test_get_flow_unchanged(tnode):
    name, pw = user(tnode, "get", ["tf-get/**:pull"])
    r = tnode.req("GET", TOKEN + "?service=georeg&scope=repository:tf-get/a:pull", auth=(name, pw))
    assert r.status == 200 and access_of(r.json()["token"]) == {"tf-get/a": {"pull"}}, r
    assert "refresh_token" not in r.json()
    # credentials in a GET query are not read: this is an anonymous token
    q = urllib.parse.urlencode({"grant_type": "password", "username": name, "password": pw,
                                "scope": "repository:tf-get/a:pull"})
    r = tnode.req("GET", TOKEN + "?" + q)
    assert r.status == 200 and jwt_decode(r.json()["token"])[1]["sub"] == "", r
    r = tnode.req("GET", TOKEN, auth=(name, pw + "x"), src=new_src())
    assert r.status == 401, r


# --------------------------------------------------------------------------
# refresh tokens

def offline_login(node, name, pw, scope=None):
    r = password_grant(node, name, pw, scope=scope, offline=True)
    assert r.status == 200, r
    j = r.json()
    assert j.get("refresh_token", "").startswith("grr1."), j
    return j


def test_refresh_token_grant(tnode):
    x = uid()
    name, pw = user(tnode, "rt", ["tf-rt-%s/**:pull,push" % x])
    j = offline_login(tnode, name, pw)
    rt = j["refresh_token"]
    e = pick(audit_all(tnode, actor=name), action="login", status=200)
    assert e[0]["detail"] == "token and refresh token issued (password grant)", e
    # the refresh token gets access tokens for other scopes, as often as asked
    for i in range(3):
        repo = "tf-rt-%s/r%d" % (x, i)
        r = refresh_grant(tnode, rt, scope="repository:%s:pull,push" % repo)
        assert r.status == 200, r
        k = r.json()
        assert jwt_decode(k["access_token"])[1]["sub"] == name
        assert access_of(k["access_token"]) == {repo: {"pull", "push"}}, k
        assert k["scope"] == "repository:%s:pull,push" % repo
        assert "refresh_token" not in k, k
        make_image(As(tnode, token=k["access_token"]), repo, "v1")
    # with access_type=offline the answer repeats the (unrotated) refresh token
    r = refresh_grant(tnode, rt, scope="repository:tf-rt-%s/r0:pull" % x, offline=True)
    assert r.status == 200 and r.json()["refresh_token"] == rt, r
    e = pick(audit_all(tnode, actor=name), action="login", status=200)
    assert len([a for a in e if a["detail"] == "token issued (refresh token)"]) == 4, e
    # a refresh token is neither logged nor a bearer credential
    assert_not_logged(tnode, rt, rt[5:])
    r = tnode.req("GET", "/v2/tf-rt-%s/r0/tags/list" % x, token=rt, src=new_src())
    assert r.status == 401, r
    r = tnode.req("GET", "/v2/tf-rt-%s/r0/tags/list" % x, auth=(name, rt), src=new_src())
    assert r.status == 401, r


def test_refresh_tokens_forged_garbage_and_replayed_elsewhere_are_401(tnode):
    name, pw = user(tnode, "rtf", ["tf-rtf/**:pull"])
    j = offline_login(tnode, name, pw)
    rt, at = j["refresh_token"], j["access_token"]
    flipped = rt[:-1] + ("A" if rt[-1] != "A" else "B")
    srcs = []
    for bad in ("grr1." + "A" * 43, flipped, rt[:-1], rt + "A", "garbage", "grr1.", at[:127],
                "\u00e9t\u00e9", "' OR 1=1 --"):
        srcs.append(new_src())
        r = refresh_grant(tnode, bad, scope="repository:tf-rtf/a:pull", src=srcs[-1])
        assert_refused(r, 401, "invalid_grant")
    # an access token (a JWT, too long for the field) is no refresh token
    r = refresh_grant(tnode, at, scope="repository:tf-rtf/a:pull", src=new_src())
    assert r.status in (400, 401), r
    assert "access_token" not in r.json()
    # the failures are audited as failed logins, and an address that keeps trying is
    # slowed down like a password guesser
    e = [a for a in audit_all(tnode) if a.get("addr") in srcs and a["action"] == "login"]
    assert len(e) == len(srcs) and all(a["status"] == 401 for a in e), e
    src = new_src()
    got = [refresh_grant(tnode, "grr1." + uid() * 5, src=src).status for _ in range(8)]
    assert got[0] == 401 and got[-1] == 429, got
    # the genuine one still works
    assert refresh_grant(tnode, rt, scope="repository:tf-rtf/a:pull").status == 200


def test_refresh_token_of_a_deleted_or_recreated_identity_is_401(tnode):
    name, pw = user(tnode, "rtdel", ["tf-rtdel/**:pull,push"])
    rt = offline_login(tnode, name, pw)["refresh_token"]
    assert refresh_grant(tnode, rt, scope="repository:tf-rtdel/a:pull").status == 200
    r = tnode.req("DELETE", "/_georeg/v1/users/" + name, auth=tnode.admin)
    assert r.status in (200, 204), r
    assert_refused(refresh_grant(tnode, rt, scope="repository:tf-rtdel/a:pull", src=new_src()),
                   401, "invalid_grant")
    # the same name and password again: a new identity; the old refresh token is replayed
    create_identity(tnode, "user", name, scopes=["tf-rtdel/**:pull,push"], password=pw)
    assert_refused(refresh_grant(tnode, rt, scope="repository:tf-rtdel/a:pull", src=new_src()),
                   401, "invalid_grant")
    e = [a for a in audit_all(tnode) if a["action"] == "login" and a["status"] == 401 and
         "identity" in a.get("detail", "")]
    assert e, "the refused refresh is audited with its reason"
    assert password_grant(tnode, name, pw).status == 200


def test_refresh_token_of_a_narrowed_identity_yields_at_most_its_grants(tnode):
    x = uid()
    name, pw = user(tnode, "rtn", ["tf-rtn-%s/**:pull,push" % x])
    repo = "tf-rtn-%s/a" % x
    j = offline_login(tnode, name, pw, scope="repository:%s:pull,push" % repo)
    rt, at = j["refresh_token"], j["access_token"]
    make_image(As(tnode, token=at), repo, "v1")
    # narrowed to pull only (identities are replaced as a whole, with the same password)
    create_identity(tnode, "user", name, scopes=["tf-rtn-%s/**:pull" % x], password=pw)
    # a replaced identity is a new incarnation: its old refresh token yields nothing
    r = refresh_grant(tnode, rt, scope="repository:%s:pull,push" % repo, src=new_src())
    assert_refused(r, 401, "invalid_grant")
    # the access token of before is cut to the current grants at use
    r = tnode.req("PUT", "/v2/%s/manifests/v2" % repo, body=b"{}",
                  headers={"Content-Type": MT_OCI_MANIFEST}, token=at)
    assert r.status == 401, r
    assert get_manifest(As(tnode, token=at), repo, "v1").status == 200
    # a new login gets the narrowed scope
    k = password_grant(tnode, name, pw, scope="repository:%s:pull,push" % repo).json()
    assert access_of(k["access_token"]) == {repo: {"pull"}}, k
    # disabled: the refresh token ends for good
    rt2 = offline_login(tnode, name, pw)["refresh_token"]
    tnode.req("POST", "/_georeg/v1/users/%s/disable" % name, auth=tnode.admin)
    assert_refused(refresh_grant(tnode, rt2, src=new_src()), 401, "invalid_grant")
    tnode.req("POST", "/_georeg/v1/users/%s/enable" % name, auth=tnode.admin)
    assert_refused(refresh_grant(tnode, rt2, src=new_src()), 401, "invalid_grant")
    assert password_grant(tnode, name, pw).status == 200


def test_refresh_tokens_do_not_survive_a_restart(make_node):
    n = make_node("rtrestart")
    name, pw = user(n, "rtr", ["tf-rtr/**:pull"])
    rt = offline_login(n, name, pw)["refresh_token"]
    n.stop()
    AuthNodes.start(n)
    assert_refused(refresh_grant(n, rt, src=new_src()), 401, "invalid_grant")
    # the client falls back to the password grant
    assert offline_login(n, name, pw)["refresh_token"] != rt


def test_refresh_token_store_is_bounded(make_node):
    n = make_node("rtbound")
    name, pw = user(n, "rtb", ["tf-rtb/**:pull"])
    body = urllib.parse.urlencode([("grant_type", "password"), ("username", name),
                                   ("password", pw), ("access_type", "offline")]).encode()
    conn = httpclient.HTTPConnection("127.0.0.1", n.port, timeout=itlib.HTTP_TIMEOUT)
    tokens = []
    try:
        for _ in range(4096 + 2):
            conn.request("POST", TOKEN, body=body, headers={"Content-Type": FORM})
            resp = conn.getresponse()
            data = resp.read()
            assert resp.status == 200, data
            tokens.append(json.loads(data)["refresh_token"])
    finally:
        conn.close()
    assert len(set(tokens)) == len(tokens)
    # the two oldest were evicted by the newest two; the rest still work
    for old in tokens[:2]:
        assert_refused(refresh_grant(n, old, src=new_src()), 401, "invalid_grant")
    for t in (tokens[2], tokens[-1]):
        assert refresh_grant(n, t, scope="repository:tf-rtb/a:pull").status == 200


# --------------------------------------------------------------------------
# challenges

def test_catalog_challenge_names_its_scope(tnode):
    r = tnode.req("GET", "/v2/_catalog")
    assert r.status == 401, r
    scheme, ch = challenge(r)
    assert scheme == "Bearer" and ch["scope"] == "registry:catalog:*", r
    assert ch["realm"].endswith(TOKEN) and ch["service"] == "georeg", r
    # the others stay as they were
    scheme, ch = challenge(tnode.req("GET", "/v2/"))
    assert scheme == "Bearer" and "scope" not in ch, ch
    scheme, ch = challenge(tnode.req("GET", "/v2/tf-ch/a/manifests/v1"))
    assert ch["scope"] == "repository:tf-ch/a:pull", ch
    scheme, ch = challenge(tnode.req("GET", "/v2/tf-ch/a/tags/list"))
    assert ch["scope"] == "repository:tf-ch/a:pull", ch
    # the scope the challenge names gets a token that lists the catalog
    name, pw = user(tnode, "cat", ["tf-cat-%s/**:pull" % uid()])
    j = password_grant(tnode, name, pw, scope="registry:catalog:*").json()
    assert j["scope"] == "registry:catalog:*", j
    r = tnode.req("GET", "/v2/_catalog", token=j["access_token"])
    assert r.status == 200, r
    # an anonymous token does not
    anon = tnode.req("GET", TOKEN + "?scope=registry:catalog:*").json()["token"]
    r = tnode.req("GET", "/v2/_catalog", token=anon)
    assert r.status == 401 and challenge(r)[1]["scope"] == "registry:catalog:*", r


# --------------------------------------------------------------------------
# real clients: containerd's ctr and BuildKit

def oci_tarball(path, tag):
    """A tiny single-layer OCI image as an OCI layout tar (what `ctr images import`
    reads); returns the manifest's digest."""
    lay = OCILayout(str(path) + ".d")
    m, _ = lay.add_image(layers=1, file_size=1024, arch="amd64")
    lay.tag(tag, m, MT_OCI_MANIFEST)
    with tarfile.open(str(path), "w") as t:
        for f in sorted(os.listdir(lay.path)):
            t.add(os.path.join(lay.path, f), arcname=f)
    return itlib.sha256(m)


class Daemon:
    """A background daemon (containerd, buildkitd) stopped by PID."""

    def __init__(self, cmd, log_path, env=None):
        e = dict(os.environ)
        e.update(env or {})
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=e, start_new_session=True)

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()

    def tail(self):
        return itlib.tail(self.log_path, 4000)


def need(tool):
    p = shutil.which(tool) or (os.path.join(itlib.TOOLS_DIR, tool)
                               if os.access(os.path.join(itlib.TOOLS_DIR, tool), os.X_OK) else None)
    if not p:
        pytest.skip("%s is not installed (apt-get install containerd runc; "
                    "scripts/install-test-tools.sh builds buildkitd and buildctl)" % tool)
    return p


@pytest.fixture
def containerd(tmp_path):
    binary, ctr = need("containerd"), need("ctr")
    d = tmp_path / "containerd"
    d.mkdir()
    sock = str(d / "c.sock")
    cfg = d / "config.toml"
    cfg.write_text('version = 2\nroot = "%s"\nstate = "%s"\n'
                   'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",'
                   ' "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs",'
                   ' "io.containerd.snapshotter.v1.devmapper"]\n'
                   '[grpc]\n  address = "%s"\n[ttrpc]\n  address = "%s.ttrpc"\n'
                   '[debug]\n  address = ""\n[metrics]\n  address = ""\n'
                   % (d / "root", d / "state", sock, sock))
    dm = Daemon([binary, "--config", str(cfg)], str(d / "containerd.log"))
    try:
        wait_until(lambda: not dm.alive() or (os.path.exists(sock) and run(
            [ctr, "--address", sock, "version"], check=False).returncode == 0),
            itlib.START_TIMEOUT, interval=0.2, what="containerd ready")
        assert dm.alive(), dm.tail()
        yield lambda *args, **kw: run([ctr, "--address", sock, "--namespace", "georeg-tests",
                                       *args], **kw)
    finally:
        dm.stop()


def test_ctr_push_and_pull_with_token_auth(tnode, containerd, tmp_path):
    x = uid()
    name, pw = user(tnode, "ctr", ["ctr-%s/**:pull,push" % x])
    host = "127.0.0.1:%d" % tnode.port
    ref = "%s/ctr-%s/app:v1" % (host, x)
    tar = tmp_path / "img.tar"
    digest = oci_tarball(tar, "v1")
    containerd("images", "import", "--no-unpack", "--base-name", ref.rsplit(":", 1)[0], str(tar))
    assert ref in containerd("images", "ls", "-q").stdout.split()
    before = len(audit_all(tnode, actor=name))
    cp = containerd("images", "push", "--plain-http", "--user", "%s:%s" % (name, pw), ref)
    assert "error" not in cp.stderr.lower(), cp.stderr
    r = get_manifest(As(tnode, creds=(name, pw)), "ctr-%s/app" % x, "v1")
    assert r.status == 200 and itlib.sha256(r.body) == digest, r
    # ctr logged in with the POST form: audited as a password grant, not an empty token
    logins = pick(audit_all(tnode, actor=name)[before:], action="login", status=200)
    assert any(a["detail"] == "token issued (password grant)" for a in logins), logins
    # pull it back after removing the local copy (and its content)
    containerd("images", "rm", ref)
    containerd("content", "rm", digest, check=False)
    assert digest not in containerd("content", "ls", "-q").stdout
    before = len(audit_all(tnode, actor=name))
    cp = containerd("images", "pull", "--plain-http", "--user", "%s:%s" % (name, pw),
                    "--platform", "linux/amd64", "--snapshotter", "native", ref, check=False)
    assert cp.returncode == 0, cp.stderr
    assert digest in containerd("content", "ls", "-q").stdout
    logins = pick(audit_all(tnode, actor=name)[before:], action="login", status=200)
    assert any(a["detail"] == "token issued (password grant)" for a in logins), logins
    # wrong password: ctr is refused (no empty token to push with)
    cp = containerd("images", "push", "--plain-http", "--user", "%s:%s" % (name, pw + "x"), ref,
                    check=False)
    assert cp.returncode != 0, cp.stdout
    assert_not_logged(tnode, pw)


def test_buildkit_push_and_pull_with_token_auth(tnode, tmp_path):
    buildkitd, buildctl, _ = need("buildkitd"), need("buildctl"), need("runc")
    x = uid()
    name, pw = user(tnode, "bk", ["bk-%s/**:pull,push" % x])
    host = "127.0.0.1:%d" % tnode.port
    d = tmp_path / "bk"
    (d / "ctx").mkdir(parents=True)
    (d / "ctx" / "hello.txt").write_text("hello from buildkit %s\n" % x)
    (d / "ctx" / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /hello.txt\n")
    dc = d / "docker"
    dc.mkdir()
    (dc / "config.json").write_text(json.dumps({"auths": {host: {
        "auth": basic(name, pw)["Authorization"].split(" ", 1)[1]}}}))
    (d / "buildkitd.toml").write_text('[registry."%s"]\n  http = true\n  insecure = true\n' % host)
    sock = "unix://%s" % (d / "bk.sock")
    env = {"DOCKER_CONFIG": str(dc)}
    dm = Daemon([buildkitd, "--root", str(d / "root"), "--addr", sock, "--config",
                 str(d / "buildkitd.toml"), "--oci-worker=true", "--containerd-worker=false",
                 "--oci-worker-binary", need("runc")], str(d / "buildkitd.log"), env=env)
    try:
        wait_until(lambda: not dm.alive() or run([buildctl, "--addr", sock, "debug", "workers"],
                                                  check=False).returncode == 0,
                   itlib.START_TIMEOUT, interval=0.3, what="buildkitd ready")
        assert dm.alive(), dm.tail()
        ref = "%s/bk-%s/app:v1" % (host, x)

        def build(ctx, output):
            return run([buildctl, "--addr", sock, "build", "--frontend", "dockerfile.v0",
                        "--local", "context=" + str(ctx), "--local", "dockerfile=" + str(ctx),
                        "--output", output], env=env, check=False, timeout=itlib.TOOL_TIMEOUT * 2)

        cp = build(d / "ctx", "type=image,name=%s,push=true,registry.insecure=true" % ref)
        assert cp.returncode == 0, cp.stderr[-4000:] + dm.tail()
        r = get_manifest(As(tnode, creds=(name, pw)), "bk-%s/app" % x, "v1",
                         accept="application/vnd.oci.image.manifest.v1+json,"
                                "application/vnd.docker.distribution.manifest.v2+json,"
                                "application/vnd.oci.image.index.v1+json")
        assert r.status == 200, r
        logins = pick(audit_all(tnode, actor=name), action="login", status=200)
        assert any("password grant" in a["detail"] for a in logins), logins
        # pull it back: build FROM the pushed image, to a local tar
        (d / "ctx2").mkdir()
        (d / "ctx2" / "Dockerfile").write_text("FROM %s\n" % ref)
        out = d / "out"
        cp = build(d / "ctx2", "type=local,dest=%s" % out)
        assert cp.returncode == 0, cp.stderr[-4000:] + dm.tail()
        assert (out / "hello.txt").read_text() == "hello from buildkit %s\n" % x
        # wrong credentials: the push is refused
        (dc / "config.json").write_text(json.dumps({"auths": {host: {
            "auth": basic(name, pw + "x")["Authorization"].split(" ", 1)[1]}}}))
        cp = build(d / "ctx", "type=image,name=%s/bk-%s/app:v2,push=true,registry.insecure=true"
                   % (host, x))
        assert cp.returncode != 0
        assert get_manifest(As(tnode, creds=(name, pw)), "bk-%s/app" % x, "v2").status == 404
    finally:
        dm.stop()
