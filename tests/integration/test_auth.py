"""Access control against real processes (issue 5's list): token and basic
auth with skopeo, repository-scoped tokens, expiry, revocation, forged JWTs,
service names, the disabled admin, the failed-login slowdown, TLS listeners and
their reload on SIGHUP, CIDR allow lists and the private endpoint, the audit
log and its query API, identities replicated to a secondary, and the CLI.

- One module-scoped token-mode node (`tnode`, anonymous pull on public/**)
  serves the tests that only add identities and repositories of their own.
- Tests that need another configuration, restart a node or count failed logins
  get nodes of their own (`make_node`).
- georeg slows down an address after repeated failed logins, so every request
  meant to fail authentication comes from a loopback address of its own
  (authlib.new_src()); skopeo and the passing requests come from 127.0.0.1.
- Audit checks select entries by the request's source address, repository or
  actor, so the shared node's other traffic does not disturb "exactly these".

Helpers are in authlib.py; nodes are stopped by PID at teardown (conftest's
NodeManager: a non-zero exit after SIGTERM or a sanitizer report fails).
"""

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import time
import uuid

import pytest

import itlib
from authlib import (SLOW, As, AuthNode, audit, audit_all, basic, call, cert_serial, challenge,
                     create_identity, gen_certs, get_token, identities, jwt_decode,
                     jwt_encode_unsigned, jwt_sign, new_ec_key, new_src, peer_serial, pick,
                     replace_file, tls_context)
from conftest import NodeManager, _check_binary
from itlib import MT_OCI_MANIFEST, OCILayout, get_manifest, make_image, run, wait_until

pytestmark = pytest.mark.georeg_only("access control is georeg's own")

TEST_ALARM = 240 if itlib.ASAN else 90  # seconds for any one test (conftest's _bounded)
MIB = 1 << 20


# --------------------------------------------------------------------------
# fixtures

class AuthNodes:
    """Makes AuthNodes (token mode, an admin password file) and stops them at close."""

    def __init__(self, tmp_path_factory, label):
        self.tmp = tmp_path_factory
        self.mgr = NodeManager(tmp_path_factory, label)

    def __call__(self, name="auth", auth=None, start=True, ca=None, src=None, port=None,
                 **sections):
        _check_binary()
        workdir = str(self.tmp.mktemp(re.sub(r"[^A-Za-z0-9_]", "_", name)[:30]))
        password = "pw-" + uuid.uuid4().hex
        pwfile = os.path.join(workdir, "admin.password")
        with open(pwfile, "w") as f:
            f.write(password + "\n")
        a = {"mode": "token", "admin_password_file": pwfile}
        a.update(auth or {})
        sections["auth"] = a
        n = AuthNode(workdir, name, sections, ca=ca, src=src, port=port,
                     admin_password=password)
        n.password_file = pwfile
        n.auto_port = port is None
        self.mgr.nodes.append(n)
        if start:
            self.start(n)
        return n

    @staticmethod
    def start(n):
        """n.start(); when the port free_port() chose was taken meanwhile by some
        other socket (a client's ephemeral port), again on another one."""
        for attempt in range(3):
            try:
                return n.start()
            except RuntimeError as e:
                if not n.auto_port or "Address already in use" not in str(e) or attempt == 2:
                    raise
                n.port = itlib.free_port()

    def close(self):
        self.mgr.close()


@pytest.fixture
def make_node(tmp_path_factory, request):
    f = AuthNodes(tmp_path_factory, request.node.name)
    yield f
    f.close()


@pytest.fixture(scope="module")
def tnode(tmp_path_factory):
    """The shared token-mode node; anyone may pull public/**."""
    f = AuthNodes(tmp_path_factory, "test_auth_shared")
    n = f("shared", auth={"anonymous_pull": ["public/**"]})
    yield n
    f.close()


def uid():
    return uuid.uuid4().hex[:8]


def sk(skopeo, *args, check=True):
    return run([skopeo, "--insecure-policy", *args], check=check)


def layout(tmp_path, tag="v1", layers=3):
    lay = OCILayout(str(tmp_path / ("src-" + uid())))
    m, info = lay.add_image(layers=layers, file_size=8000)
    lay.tag(tag, m, MT_OCI_MANIFEST)
    return lay, m, info


def assert_not_logged(node, *secrets):
    text = itlib.tail(node.log_path, 1 << 30)
    for s in secrets:
        assert s and s not in text, "a secret appears in %s" % node.log_path


REFUSED = re.compile(r"(?i)unauthori[sz]ed|denied|authentication required|"
                     r"invalid username/password")


# --------------------------------------------------------------------------
# skopeo with credentials: token mode and basic mode

def _skopeo_round_trip(node, skopeo, tmp_path, repo):
    """skopeo login (stored credentials) + push, --dest-creds push of a second
    tag, --src-creds pull; checks the content and the audit entries."""
    user, pw = node.admin
    lay, m, info = layout(tmp_path)
    authfile = str(tmp_path / ("auth-%s.json" % uid()))
    cp = sk(skopeo, "login", "--tls-verify=false", "--authfile", authfile, "-u", user,
            "-p", pw, node.host)
    assert "Login Succeeded" in cp.stdout + cp.stderr
    with open(authfile) as f:
        assert node.host in json.load(f)["auths"]
    sk(skopeo, "copy", "--preserve-digests", "--dest-tls-verify=false", "--dest-authfile",
       authfile, "oci:%s:v1" % lay.path, "docker://%s/%s:v1" % (node.host, repo))
    sk(skopeo, "copy", "--preserve-digests", "--dest-tls-verify=false", "--dest-creds",
       "%s:%s" % (user, pw), "oci:%s:v1" % lay.path, "docker://%s/%s:v2" % (node.host, repo))
    out = OCILayout(str(tmp_path / ("out-" + uid())))
    sk(skopeo, "copy", "--preserve-digests", "--src-tls-verify=false", "--src-creds",
       "%s:%s" % (user, pw), "docker://%s/%s:v1" % (node.host, repo), "oci:%s:v1" % out.path)
    assert out.manifest_for("v1")["digest"] == info["digest"]
    assert out.all_blob_digests() == lay.all_blob_digests()
    out.verify_blobs()
    # without credentials skopeo is refused, in both directions
    cp = sk(skopeo, "copy", "--dest-tls-verify=false", "oci:%s:v1" % lay.path,
            "docker://%s/%s:v3" % (node.host, repo), check=False)
    assert cp.returncode != 0 and REFUSED.search(cp.stderr), cp.stderr
    cp = sk(skopeo, "inspect", "--tls-verify=false", "--raw",
            "docker://%s/%s:v1" % (node.host, repo), check=False)
    assert cp.returncode != 0 and REFUSED.search(cp.stderr), cp.stderr
    cp = sk(skopeo, "inspect", "--tls-verify=false", "--raw", "--creds", "%s:%s" % (user, pw),
            "docker://%s/%s:v2" % (node.host, repo))
    assert cp.stdout.encode() == m

    # audit: one push per tag, one push.blob per blob (the v2 copy found them all),
    # one pull per manifest GET (skopeo copy out, skopeo inspect), all by admin
    entries = audit_all(node, repo=repo)
    pushes = pick(entries, action="push")
    assert [(e["ref"], e["digest"], e["actor"], e["status"], e["result"]) for e in pushes] == [
        ("v1", info["digest"], "admin", 201, "ok"), ("v2", info["digest"], "admin", 201, "ok")]
    blobs = pick(entries, action="push.blob")
    assert sorted(e["digest"] for e in blobs) == sorted([info["config"]] + info["layers"])
    assert all(e["actor"] == "admin" and e["result"] == "ok" for e in blobs), blobs
    pulls = pick(entries, action="pull")
    assert [(e["ref"], e["digest"], e["actor"], e["result"]) for e in pulls] == [
        ("v1", info["digest"], "admin", "ok"), ("v2", info["digest"], "admin", "ok")], pulls
    assert all(e["addr"] == "127.0.0.1" for e in entries), entries
    # the anonymous attempts were refused before anything was recorded for the repository
    assert set(e["action"] for e in entries) == {"push", "push.blob", "pull"}, entries
    assert_not_logged(node, pw)
    return info


def test_token_mode_skopeo_login_push_pull(tnode, skopeo, tmp_path):
    repo = "tok/app-" + uid()
    r = tnode.req("GET", "/v2/")
    assert r.status == 401 and r.error_codes() == ["UNAUTHORIZED"], r
    scheme, ch = challenge(r)
    assert scheme == "Bearer", r
    assert ch["realm"] == tnode.url + "/_georeg/v1/token" and ch["service"] == "georeg", ch
    r = tnode.req("GET", "/v2/%s/manifests/v1" % repo)
    assert r.status == 401, r
    assert challenge(r)[1]["scope"] == "repository:%s:pull" % repo, r
    r = tnode.req("POST", "/v2/%s/blobs/uploads/" % repo)
    assert r.status == 401, r
    assert challenge(r)[1]["scope"] in ("repository:%s:push" % repo,
                                        "repository:%s:pull,push" % repo), r
    _skopeo_round_trip(tnode, skopeo, tmp_path, repo)


def test_basic_mode_skopeo_login_push_pull(make_node, skopeo, tmp_path):
    node = make_node("basic", auth={"mode": "basic"})
    repo = "bas/app-" + uid()
    r = node.req("GET", "/v2/")
    assert r.status == 401 and r.error_codes() == ["UNAUTHORIZED"], r
    assert challenge(r)[0] == "Basic", r
    # basic mode issues no tokens and takes no bearer tokens
    r = node.req("GET", "/_georeg/v1/token?service=georeg", auth=node.admin)
    assert r.status == 405 and r.error_codes() == ["UNSUPPORTED"], r
    r = node.req("GET", "/v2/", token="e30.e30.AAAA", src=new_src())
    assert r.status == 401, r
    assert node.req("GET", "/v2/", auth=node.admin).status == 200
    _skopeo_round_trip(node, skopeo, tmp_path, repo)


def test_skopeo_wrong_password_refused(make_node, skopeo, tmp_path):
    """skopeo login with a wrong password fails (own node: it is a failed login
    from 127.0.0.1) and leaves one failed-login audit entry."""
    node = make_node("wrongpw")
    cp = sk(skopeo, "login", "--tls-verify=false", "--authfile", str(tmp_path / "a.json"),
            "-u", "admin", "-p", "not-the-password", node.host, check=False)
    assert cp.returncode != 0 and REFUSED.search(cp.stderr), cp.stderr
    fails = pick(audit_all(node, action="login"), status=401)
    assert len(fails) == 1 and fails[0]["result"] == "denied", fails
    assert fails[0]["addr"] == "127.0.0.1"
    # the name the failed login claimed is kept (never the secret); the actor stays "-"
    assert fails[0]["actor"] == "-" and fails[0]["claimed"] == "admin", fails
    assert not any("not-the-password" in json.dumps(e) for e in audit_all(node)), fails


def test_anonymous_pull_glob(tnode):
    pub, priv = "public/img-" + uid(), "private/img-" + uid()
    admin = As(tnode, tnode.admin)
    ip = make_image(admin, pub, "1")
    make_image(admin, priv, "1")
    r = get_manifest(tnode, pub, "1")
    assert r.status == 200 and r.body == ip["manifest"], r
    blob = sorted(ip["blobs"])[0]
    assert tnode.req("GET", "/v2/%s/blobs/%s" % (pub, blob)).status == 200
    r = get_manifest(tnode, priv, "1")
    assert r.status == 401 and challenge(r)[1]["scope"] == "repository:%s:pull" % priv, r
    # anonymous may not push to the anonymous-pull repositories
    r = tnode.req("POST", "/v2/%s/blobs/uploads/" % pub)
    assert r.status == 401, r
    # an anonymous token gets pull on public/** only
    r, tok = get_token(tnode, ["repository:%s:pull,push" % pub, "repository:%s:pull" % priv])
    assert jwt_decode(tok)[1]["access"] == [
        {"type": "repository", "name": pub, "actions": ["pull"]}]
    assert jwt_decode(tok)[1]["sub"] == ""
    assert get_manifest(As(tnode, token=tok), pub, "1").status == 200
    r = get_manifest(As(tnode, token=tok), priv, "1")
    assert r.status == 401, r


# --------------------------------------------------------------------------
# repository-scoped tokens

def test_token_scoped_to_team_a_pull(tnode, skopeo, tmp_path):
    x = uid()
    a_repo, b_repo = "team-a/app-" + x, "team-b/app-" + x
    lay, m, info = layout(tmp_path)
    for repo in (a_repo, b_repo):
        sk(skopeo, "copy", "--preserve-digests", "--dest-tls-verify=false", "--dest-creds",
           "admin:" + tnode.admin_password, "oci:%s:v1" % lay.path,
           "docker://%s/%s:1" % (tnode.host, repo))
    ia = {"digest": info["digest"], "manifest": m, "blobs": [info["config"]] + info["layers"]}
    made = create_identity(tnode, "token", "team-a-ro-" + x, scopes=["team-a/**:pull"])
    name, secret = made["name"], made["secret"]
    assert made["kind"] == "token" and made["expires"] == 0
    creds = "%s:%s" % (name, secret)

    # skopeo: pulls team-a, refused on team-b and on any push
    out = OCILayout(str(tmp_path / "out"))
    sk(skopeo, "copy", "--preserve-digests", "--src-tls-verify=false", "--src-creds", creds,
       "docker://%s/%s:1" % (tnode.host, a_repo), "oci:%s:1" % out.path)
    assert out.manifest_for("1")["digest"] == ia["digest"]
    out.verify_blobs()
    cp = sk(skopeo, "copy", "--src-tls-verify=false", "--src-creds", creds,
            "docker://%s/%s:1" % (tnode.host, b_repo), "oci:%s:b" % out.path, check=False)
    assert cp.returncode != 0 and REFUSED.search(cp.stderr), cp.stderr
    for repo in (a_repo, b_repo, "other/x-" + x):
        cp = sk(skopeo, "copy", "--dest-tls-verify=false", "--dest-creds", creds,
                "oci:%s:v1" % lay.path, "docker://%s/%s:2" % (tnode.host, repo), check=False)
        assert cp.returncode != 0 and REFUSED.search(cp.stderr), (repo, cp.stderr)

    # the same over HTTP with the token as Basic credentials: 403 DENIED
    src = new_src()
    tb = As(tnode, (name, secret), src=src)
    assert get_manifest(tb, a_repo, "1").status == 200
    blob = sorted(ia["blobs"])[0]
    assert tb.req("GET", "/v2/%s/blobs/%s" % (a_repo, blob)).status == 200
    r = get_manifest(tb, b_repo, "1")
    assert r.status == 403 and r.error_codes() == ["DENIED"], r
    r = tb.req("POST", "/v2/%s/blobs/uploads/" % a_repo)
    assert r.status == 403 and r.error_codes() == ["DENIED"], r
    r = itlib.put_manifest(tb, a_repo, "3", ia["manifest"])
    assert r.status == 403 and r.error_codes() == ["DENIED"], r
    r = tb.req("DELETE", "/v2/%s/manifests/%s" % (a_repo, ia["digest"]))
    assert r.status == 403 and r.error_codes() == ["DENIED"], r
    # the catalog shows only what the token may read
    r = tb.req("GET", "/v2/_catalog?n=10000")
    assert r.status == 200, r
    cat = r.json()["repositories"]
    assert a_repo in cat and b_repo not in cat, cat
    # admin API: not for a token
    r = tb.req("GET", "/_georeg/v1/users")
    assert r.status == 403, r

    # bearer: the token endpoint grants only pull on team-a, whatever is asked
    r, tok = get_token(tnode, ["repository:%s:pull,push" % a_repo,
                               "repository:%s:pull" % b_repo,
                               "repository:%s:*" % a_repo], creds=(name, secret), src=src)
    claims = jwt_decode(tok)[1]
    assert claims["sub"] == name and claims["aud"] == "georeg", claims
    assert claims["access"] == [{"type": "repository", "name": a_repo, "actions": ["pull"]}] * 2, \
        claims
    tk = As(tnode, token=tok, src=src)
    assert get_manifest(tk, a_repo, "1").status == 200
    for r in (get_manifest(tk, b_repo, "1"), tk.req("POST", "/v2/%s/blobs/uploads/" % a_repo)):
        assert r.status == 401 and r.error_codes() == ["UNAUTHORIZED"], r
        scheme, ch = challenge(r)
        assert scheme == "Bearer" and ch.get("error") == "insufficient_scope", r

    # audit: exactly the requests above from src, in order
    got = [(e["action"], e.get("repo"), e["status"], e["actor"])
           for e in audit_all(tnode) if e["addr"] == src]
    assert got == [
        ("pull", a_repo, 200, name),
        ("denied", b_repo, 403, name),
        ("denied", a_repo, 403, name),
        ("denied", a_repo, 403, name),
        ("denied", a_repo, 403, name),
        ("denied", None, 403, name),
        ("login", None, 200, name),
        ("pull", a_repo, 200, name),
        ("denied", b_repo, 401, name),
        ("denied", a_repo, 401, name),
    ], got
    assert_not_logged(tnode, secret, tok)


def test_expired_tokens_refused(make_node):
    """A token identity past --expires is refused (Basic, bearer, token endpoint);
    a JWT past its exp (auth.token_ttl: 2s) is refused."""
    node = make_node("expiry", auth={"token_ttl": "2s"})
    repo = "exp/app-" + uid()
    img = make_image(As(node, node.admin), repo, "1")
    made = create_identity(node, "token", "short-" + uid(), scopes=["exp/**:pull"],
                           expires="3s")
    name, secret = made["name"], made["secret"]
    assert abs(made["expires"] - (time.time() + 3)) <= 2, made
    src = new_src()
    # before expiry: works as Basic and through a JWT
    assert get_manifest(As(node, (name, secret), src=src), repo, "1").status == 200
    r, tok = get_token(node, ["repository:%s:pull" % repo], creds=(name, secret), src=src)
    assert r.json()["expires_in"] == 2, r
    assert get_manifest(As(node, token=tok, src=src), repo, "1").status == 200
    _, admin_tok = get_token(node, ["repository:%s:pull" % repo], creds=node.admin)
    claims = jwt_decode(admin_tok)[1]
    assert claims["exp"] - claims["iat"] == 2, claims
    assert get_manifest(As(node, token=admin_tok), repo, "1").status == 200

    wait_until(lambda: time.time() >= max(made["expires"], claims["exp"]) + 0.2, 10,
               interval=0.05, what="expiry")
    r = get_manifest(As(node, (name, secret), src=src), repo, "1")
    assert r.status == 401 and r.error_codes() == ["UNAUTHORIZED"], r
    r = get_manifest(As(node, token=tok, src=src), repo, "1")
    assert r.status == 401 and r.error_codes() == ["UNAUTHORIZED"], r
    r, _ = get_token(node, ["repository:%s:pull" % repo], creds=(name, secret), src=src,
                     expect=401)
    # the admin's JWT expired by itself; a new one works
    r = get_manifest(As(node, token=admin_tok, src=src), repo, "1")
    assert r.status == 401 and r.error_codes() == ["UNAUTHORIZED"], r
    _, admin_tok2 = get_token(node, ["repository:%s:pull" % repo], creds=node.admin)
    r = get_manifest(As(node, token=admin_tok2), repo, "1")
    assert r.status == 200 and r.body == img["manifest"], r

    got = [(e["action"], e["status"], e.get("detail")) for e in audit_all(node)
           if e["addr"] == src]
    assert got[:3] == [("pull", 200, None), ("login", 200, "token issued"), ("pull", 200, None)]
    assert [g[:2] for g in got[3:]] == [("login", 401)] * 4, got
    assert "expired" in got[3][2] and "expired" in got[5][2], got


def test_revoked_token_refused(tnode):
    x = uid()
    repo = "rev/app-" + x
    make_image(As(tnode, tnode.admin), repo, "1")
    src = new_src()
    toks = {}
    for how in ("verb", "delete"):
        made = create_identity(tnode, "token", "rev-%s-%s" % (how, x), scopes=["rev/**:pull"])
        creds = (made["name"], made["secret"])
        assert get_manifest(As(tnode, creds, src=src), repo, "1").status == 200
        _, jwt = get_token(tnode, ["repository:%s:pull" % repo], creds=creds, src=src)
        assert get_manifest(As(tnode, token=jwt, src=src), repo, "1").status == 200
        toks[how] = (creds, jwt)
    r = tnode.req("POST", "/_georeg/v1/tokens/%s/revoke" % toks["verb"][0][0], auth=tnode.admin)
    assert r.status == 204, r
    r = tnode.req("DELETE", "/_georeg/v1/tokens/%s" % toks["delete"][0][0], auth=tnode.admin)
    assert r.status == 204, r
    listed = identities(tnode, "tokens")
    for how, (creds, jwt) in toks.items():
        assert listed[creds[0]]["disabled"] is True, listed[creds[0]]
        assert "secret" not in listed[creds[0]]
        r = get_manifest(As(tnode, creds, src=src), repo, "1")
        assert r.status == 401 and r.error_codes() == ["UNAUTHORIZED"], (how, r)
        r = get_manifest(As(tnode, token=jwt, src=src), repo, "1")
        assert r.status == 401 and r.error_codes() == ["UNAUTHORIZED"], (how, r)
        get_token(tnode, ["repository:%s:pull" % repo], creds=creds, src=src, expect=401)
    changes = [(e["ref"], e["detail"], e["actor"], e["status"])
               for e in audit_all(tnode, action="identity.change")
               if e["ref"] in (toks["verb"][0][0], toks["delete"][0][0])]
    assert changes == [(toks["verb"][0][0], "created", "admin", 201),
                       (toks["delete"][0][0], "created", "admin", 201),
                       (toks["verb"][0][0], "revoke", "admin", 204),
                       (toks["delete"][0][0], "revoked", "admin", 204)], changes
    fails = [e for e in audit_all(tnode, action="login") if e["addr"] == src and
             e["status"] == 401]
    assert len(fails) == 6 and all("revoked" in e["detail"] for e in fails[0::3]), fails


# --------------------------------------------------------------------------
# forged JWTs and service names

def test_forged_and_resigned_jwt_refused(tnode, tmp_path):
    x = uid()
    a_repo, b_repo = "forge-a/app-" + x, "forge-b/app-" + x
    admin = As(tnode, tnode.admin)
    make_image(admin, a_repo, "1")
    make_image(admin, b_repo, "1")
    made = create_identity(tnode, "token", "forge-" + x, scopes=["forge-a/**:pull"])
    creds = (made["name"], made["secret"])
    _, tok = get_token(tnode, ["repository:%s:pull" % a_repo], creds=creds)
    hdr, claims, sig = jwt_decode(tok)
    assert hdr["alg"] == "ES256" and len(sig) == 64, hdr
    assert get_manifest(As(tnode, token=tok), a_repo, "1").status == 200

    evil = dict(claims, access=[{"type": "repository", "name": b_repo,
                                 "actions": ["pull", "push"]}])
    own_key = new_ec_key(str(tmp_path / "own.key"))
    real_key = os.path.join(tnode.data_dir, "auth", "token-signing.pem")
    forged = {
        # payload changed, the node's signature kept
        "payload-modified": jwt_encode_unsigned(hdr, evil) + "." + tok.split(".")[2],
        "sub-changed": jwt_encode_unsigned(hdr, dict(evil, sub="admin")) + "." +
        tok.split(".")[2],
        # signed with another P-256 key, same header (kid) as the node's
        "own-key": jwt_sign(hdr, evil, own_key),
        "own-key-original-claims": jwt_sign(hdr, claims, own_key),
        # no signature at all
        "alg-none": jwt_encode_unsigned(dict(hdr, alg="none"), evil) + ".",
        "sig-stripped": jwt_encode_unsigned(hdr, evil) + ".",
        "garbage": "not.a.jwt",
    }
    src = new_src()
    for what, t in forged.items():
        r = get_manifest(As(tnode, token=t, src=src), b_repo, "1")
        assert r.status == 401 and r.error_codes() == ["UNAUTHORIZED"], (what, r)
    # a changed payload re-signed with the node's real key passes the signature
    # check but still grants only what the identity holds now (issue 8 §2): b_repo
    # is refused as insufficient scope, while a re-signed token for a_repo works, so
    # the refusals above are the signature check, not an encoding mistake of ours
    control = jwt_sign(hdr, evil, real_key)
    r = get_manifest(As(tnode, token=control, src=src), b_repo, "1")
    assert r.status == 401 and "does not grant" in r.json()["errors"][0]["message"], r
    control2 = jwt_sign(hdr, dict(claims, jti="resigned"), real_key)
    r = get_manifest(As(tnode, token=control2, src=src), a_repo, "1")
    assert r.status == 200, r
    got = [(e["action"], e["status"], e["actor"]) for e in audit_all(tnode) if e["addr"] == src]
    assert got == [("login", 401, "-")] * len(forged) + [("denied", 401, creds[0]),
                                                         ("pull", 200, creds[0])], got


def test_token_for_another_service_refused(make_node):
    """Nodes B and C share A's signing key; B's auth.service differs, C's is A's.
    A's token is refused by B (audience) and accepted by C (the control)."""
    a = make_node("svc-a", auth={"service": "registry-a"})
    b = make_node("svc-b", auth={"service": "registry-b"}, start=False)
    c = make_node("svc-c", auth={"service": "registry-a"}, start=False)
    for n in (b, c):
        os.makedirs(os.path.join(n.data_dir, "auth"), mode=0o700, exist_ok=True)
        shutil.copy(os.path.join(a.data_dir, "auth", "token-signing.pem"),
                    os.path.join(n.data_dir, "auth", "token-signing.pem"))
        n.admin_password = a.admin_password
        with open(n.password_file, "w") as f:
            f.write(a.admin_password + "\n")
        make_node.start(n)
    repo = "svc/app-" + uid()
    for n in (a, b, c):
        make_image(As(n, n.admin), repo, "1")
    assert challenge(b.req("GET", "/v2/"))[1]["service"] == "registry-b"
    _, tok = get_token(a, ["repository:%s:pull" % repo], creds=a.admin, service="registry-a")
    assert jwt_decode(tok)[1]["aud"] == "registry-a"
    assert get_manifest(As(a, token=tok), repo, "1").status == 200
    src = new_src()
    r = get_manifest(As(b, token=tok, src=src), repo, "1")
    assert r.status == 401 and r.error_codes() == ["UNAUTHORIZED"], r
    assert get_manifest(As(c, token=tok), repo, "1").status == 200
    # B's own tokens work on B; B will not issue one for registry-a
    _, tb = get_token(b, ["repository:%s:pull" % repo], creds=b.admin)
    assert jwt_decode(tb)[1]["aud"] == "registry-b"
    assert get_manifest(As(b, token=tb), repo, "1").status == 200
    r, _ = get_token(b, ["repository:%s:pull" % repo], creds=b.admin, service="registry-a",
                     src=src, expect=403)
    assert r.error_codes() == ["DENIED"], r
    got = [(e["action"], e["status"]) for e in audit_all(b) if e["addr"] == src]
    assert got == [("login", 401), ("login", 403)], got


# --------------------------------------------------------------------------
# the built-in admin, failed logins

def test_disabled_admin_refused(make_node):
    node = make_node("noadmin")
    ops = create_identity(node, "user", "ops", roles=["admin"])
    ops_creds = ("ops", ops["secret"])
    node.stop()
    node.sections["auth"]["admin_enabled"] = False
    make_node.start(node)
    assert "AUTH-ADMIN-DISABLED" in node.log()
    src = new_src()
    r = node.req("GET", "/v2/", auth=node.admin, src=src)
    assert r.status == 401 and r.error_codes() == ["UNAUTHORIZED"], r
    get_token(node, ["repository:x/y:pull"], creds=node.admin, src=src, expect=401)
    r = node.req("GET", "/_georeg/v1/users", auth=node.admin, src=src)
    assert r.status == 401, r
    # another admin-role user still works
    assert node.req("GET", "/v2/", auth=ops_creds).status == 200
    got = [(e["action"], e["status"], e["detail"]) for e in
           audit_all(node, creds=ops_creds) if e["addr"] == src]
    assert got == [("login", 401, "account disabled")] * 3, got
    assert [e.get("claimed") for e in audit_all(node, creds=ops_creds)
            if e["addr"] == src] == ["admin"] * 3


def test_wrong_passwords_slowed_down(make_node):
    """After FAIL_FREE (5) failures in a minute, the address is blocked for a time
    that grows (2 s, 4 s, ... up to 30 s); while blocked every attempt, even with
    the right password, gets 429 with Retry-After; other addresses are not."""
    node = make_node("slowdown")
    src = new_src()
    wrong = ("admin", "wrong-password")
    for i in range(5):
        r = node.req("GET", "/v2/", auth=wrong, src=src)
        assert r.status == 401, (i, r)
    r = node.req("GET", "/v2/", auth=wrong, src=src)  # the 6th failure starts the block
    assert r.status in (401, 429), r
    sixth = r.status
    t0 = time.monotonic()
    r = node.req("GET", "/v2/", auth=wrong, src=src)
    assert r.status == 429 and r.error_codes() == ["TOOMANYREQUESTS"], r
    ra1 = int(r.header("Retry-After"))
    assert 1 <= ra1 <= 30, r
    # the right password is slowed down too, and so is the token endpoint
    r = node.req("GET", "/v2/", auth=node.admin, src=src)
    assert r.status == 429, r
    r, _ = get_token(node, [], creds=node.admin, src=src, expect=429)
    assert r.header("Retry-After"), r
    # another address is not
    assert node.req("GET", "/v2/", auth=node.admin, src=new_src()).status == 200

    polls = []

    def blocked_for(start, creds):
        """Polls with creds until the answer is no longer 429; returns (seconds
        blocked, that answer). polls gets one 429 per refused poll."""
        while True:
            r = node.req("GET", "/v2/", auth=creds, src=src)
            if r.status != 429:
                return time.monotonic() - start, r
            polls.append(429)
            assert time.monotonic() - start < 40, "blocked for more than 40 s"
            time.sleep(0.1)

    # the first block ends; the next failure blocks for longer
    b1, r = blocked_for(t0, wrong)
    assert r.status == 401, r
    n1 = len(polls)
    t1 = time.monotonic()
    r = node.req("GET", "/v2/", auth=wrong, src=src)
    assert r.status == 429, r
    ra2 = int(r.header("Retry-After"))
    # the second block ends: the right password works again
    b2, r = blocked_for(t1, node.admin)
    assert r.status == 200, r
    assert b2 > b1 + 1, (b1, b2)
    assert ra2 > ra1, "Retry-After should grow with the block: %d then %d" % (ra1, ra2)
    # a client that waits Retry-After is not refused again; nor waits much longer
    assert b1 - 1 <= ra1 <= b1 + 1 and b2 - 1 <= ra2 <= b2 + 1, (ra1, b1, ra2, b2)
    # audit: every refused attempt, none of the passing ones
    got = [(e["action"], e["status"]) for e in audit_all(node) if e["addr"] == src]
    statuses = [401] * 5 + [sixth] + [429] * 3 + [429] * n1 + [401, 429] + \
        [429] * (len(polls) - n1)
    assert got == [("login", s) for s in statuses], got
    assert all(e["result"] == "denied" for e in audit_all(node, action="login")
               if e["addr"] == src and e["status"] == 401)
    assert node.log_count("AUTH-SLOWDOWN") >= 2
    assert_not_logged(node, "wrong-password", node.admin_password)


# --------------------------------------------------------------------------
# TLS

def _pki(tmp_path, *names):
    d = str(tmp_path / "pki")
    certs = gen_certs(d, *names)
    return d, os.path.join(d, "ca.pem"), certs


def test_tls_listener_skopeo_cert_dir(make_node, skopeo, tmp_path):
    d, ca, certs = _pki(tmp_path, "reg")
    cert, key = certs["reg"]
    node = make_node("tls", http={"tls": {"cert": cert, "key": key}}, ca=ca)
    assert node.url.startswith("https://")
    # the token realm a client is sent to is on this TLS listener
    scheme, ch = challenge(node.req("GET", "/v2/"))
    assert scheme == "Bearer" and ch["realm"] == node.url + "/_georeg/v1/token", ch
    # plain HTTP on the TLS port gets no registry answer
    try:
        r = itlib.http("http://127.0.0.1:%d" % node.port, "GET", "/v2/", timeout=5)
        assert r.status not in (200, 401), r
    except (OSError, itlib.httpclient.HTTPException):
        pass
    certdir = tmp_path / "certs.d"
    certdir.mkdir()
    shutil.copy(ca, str(certdir / "ca.crt"))
    user, pw = node.admin
    repo = "tls/app-" + uid()
    lay, m, info = layout(tmp_path)
    dst = "docker://%s/%s:v1" % (node.host, repo)
    # without the CA, skopeo refuses the certificate
    cp = sk(skopeo, "copy", "--dest-creds", "%s:%s" % (user, pw), "oci:%s:v1" % lay.path, dst,
            check=False)
    assert cp.returncode != 0 and re.search(r"(?i)x509|certificate", cp.stderr), cp.stderr
    sk(skopeo, "copy", "--preserve-digests", "--dest-cert-dir", str(certdir), "--dest-creds",
       "%s:%s" % (user, pw), "oci:%s:v1" % lay.path, dst)
    out = OCILayout(str(tmp_path / "out"))
    sk(skopeo, "copy", "--src-cert-dir", str(certdir), "--src-creds", "%s:%s" % (user, pw),
       dst, "oci:%s:v1" % out.path)
    assert out.manifest_for("v1")["digest"] == info["digest"]
    out.verify_blobs()
    # the CLI over TLS with --ca (and refused without it)
    cli = [itlib.GEOREG_BIN, "user", "list", "--url", node.url, "--user", "admin",
           "--password-file", node.password_file]
    cp = run(cli + ["--ca", ca])
    assert cp.stdout.splitlines()[0].split()[:2] == ["NAME", "KIND"], cp.stdout
    assert run(cli, check=False).returncode != 0


def _read_headers(t):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = t.recv(65536)
        assert chunk, "connection closed in the headers: %r" % data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in
               (ln.split(":", 1) for ln in lines[1:])}
    return status, headers, rest


def test_tls_certificate_reload_on_sighup_during_pull(make_node, tmp_path):
    d, ca, certs = _pki(tmp_path, "one", "two")
    live_cert, live_key = os.path.join(d, "live.pem"), os.path.join(d, "live.key")
    replace_file(certs["one"][0], live_cert)
    replace_file(certs["one"][1], live_key)
    s1, s2 = cert_serial(certs["one"][0]), cert_serial(certs["two"][0])
    assert s1 != s2
    node = make_node("reload", http={"tls": {"cert": live_cert, "key": live_key}}, ca=ca)
    assert peer_serial(node.port, ca) == s1
    repo = "tls/big-" + uid()
    size = (16 if itlib.ASAN else 48) * MIB
    data = os.urandom(size)
    digest = itlib.push_blob(As(node, node.admin), repo, data)
    del data

    # a pull with a slow reader: a small receive buffer, 1 MiB read, then a pause
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    sock.settimeout(itlib.HTTP_TIMEOUT)
    sock.connect(("127.0.0.1", node.port))
    t = tls_context(ca).wrap_socket(sock, server_hostname="127.0.0.1")
    try:
        assert int(t.getpeercert()["serialNumber"], 16) == s1
        auth = basic(*node.admin)["Authorization"]
        t.sendall(("GET /v2/%s/blobs/%s HTTP/1.1\r\nHost: %s\r\nAuthorization: %s\r\n\r\n"
                   % (repo, digest, node.host, auth)).encode())
        status, headers, body = _read_headers(t)
        assert status == 200 and int(headers["content-length"]) == size, (status, headers)
        h = hashlib.sha256(body)
        got = len(body)
        while got < MIB:
            chunk = t.recv(65536)
            assert chunk
            h.update(chunk)
            got += len(chunk)

        # swap in a new certificate from the same CA and reload while the pull waits
        replace_file(certs["two"][0], live_cert)
        replace_file(certs["two"][1], live_key)
        os.kill(node.pid, signal.SIGHUP)
        wait_until(lambda: node.log_count("HTTP-TLS-RELOADED") >= 1, 10 * SLOW,
                   what="HTTP-TLS-RELOADED in the log")
        assert peer_serial(node.port, ca) == s2
        assert node.req("GET", "/v2/", auth=node.admin).status == 200
        # a reload that fails (certificate and key do not match) keeps serving two
        replace_file(certs["one"][0], live_cert)
        os.kill(node.pid, signal.SIGHUP)
        wait_until(lambda: "event=HTTP-TLS-LOAD " in node.log(), 10 * SLOW,
                   what="HTTP-TLS-LOAD error in the log")
        assert peer_serial(node.port, ca) == s2

        # the pull in flight completes with the old session and the right bytes
        while got < size:
            chunk = t.recv(1 << 20)
            assert chunk, "connection closed after %d of %d bytes" % (got, size)
            h.update(chunk)
            got += len(chunk)
        assert got == size and "sha256:" + h.hexdigest() == digest
        assert int(t.getpeercert()["serialNumber"], 16) == s1
    finally:
        t.close()
    assert node.log_count("HTTP-TLS-RELOADED") == 1


# --------------------------------------------------------------------------
# network rules

def _refused(url, src):
    """The answer a listener gives a client from src: 403 + DENIED expected."""
    r = call_from(url, src)
    assert r.status == 403 and r.error_codes() == ["DENIED"], (src, r)
    return r


def call_from(url, src, auth=None):
    return call(url, "GET", "/v2/", headers=basic(*auth) if auth else None, src=src)


def test_network_allow_list_and_private_listener(make_node):
    priv = itlib.free_port()
    node = make_node("cidr", src="127.0.0.2", http={
        "allow": ["127.0.0.2/32"],
        "private": {"listen": "127.0.0.1:%d" % priv, "allow": ["127.0.0.1/32", "127.0.9.0/24"]}})
    pub_url, priv_url = node.url, "http://127.0.0.1:%d" % priv
    # the public listener: 127.0.0.1 refused with 403, 127.0.0.2 served
    for _ in range(10):
        _refused(pub_url, "127.0.0.1")
    assert call_from(pub_url, "127.0.0.2").status == 401
    assert call_from(pub_url, "127.0.0.2", auth=node.admin).status == 200
    # a client that sends nothing still reads the refusal
    with socket.create_connection(("127.0.0.1", node.port), timeout=10,
                                  source_address=("127.0.0.1", 0)) as s:
        raw = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            raw += chunk
    assert itlib.parse_status(raw) == 403 and b'"DENIED"' in raw, raw
    _refused(pub_url, "127.0.0.3")
    # the private listener: its own list
    assert call_from(priv_url, "127.0.0.1", auth=node.admin).status == 200
    assert call_from(priv_url, "127.0.9.77", auth=node.admin).status == 200
    _refused(priv_url, "127.0.0.2")
    # every refusal is audited with the address and the listener
    got = [(e["addr"], e["detail"], e["status"], e["result"]) for e in
           audit_all(node, action="network.refused")]
    assert got == [("127.0.0.1", "public", 403, "denied")] * 11 + [
        ("127.0.0.3", "public", 403, "denied"), ("127.0.0.2", "private", 403, "denied")], got


def test_public_listener_disabled(make_node):
    """The private-endpoint pattern: http.enabled false, only the private listener."""
    pub, priv = itlib.free_port(), itlib.free_port()
    node = make_node("private-only", port=priv, http={
        "listen": "127.0.0.1:%d" % pub, "enabled": False,
        "private": {"listen": "127.0.0.1:%d" % priv, "allow": ["127.0.0.0/8"]}})
    assert node.url == "http://127.0.0.1:%d" % priv
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", pub), timeout=5).close()
    assert node.req("GET", "/v2/", auth=node.admin).status == 200
    # the token realm clients are sent to is the listener that serves
    assert challenge(node.req("GET", "/v2/"))[1]["realm"] == node.url + "/_georeg/v1/token"
    _, tok = get_token(node, ["repository:p/q:pull"], creds=node.admin)
    assert node.req("GET", "/v2/", token=tok).status == 200


# --------------------------------------------------------------------------
# the audit log

def _entry(e):
    return (e["action"], e.get("repo"), e.get("ref"), e.get("digest"), e["actor"], e["status"],
            e["result"])


def test_audit_entries_filters_and_pagination(make_node):
    node = make_node("audit")
    repo, other = "aud/app", "aud/other"
    src = new_src()
    adm = As(node, node.admin, src=src)
    # phase 1: every kind of action, from src
    img = make_image(adm, repo, "1", layers=1)
    blobs = list(img["blobs"])  # layer, then config (pushed in that order)
    assert get_manifest(adm, repo, "1").status == 200
    assert get_manifest(adm, repo, "1", method="HEAD").status == 200  # HEAD: not audited
    r = adm.req("DELETE", "/v2/%s/manifests/%s" % (repo, img["digest"]))
    assert r.status == 202, r
    r = adm.req("DELETE", "/v2/%s/blobs/%s" % (repo, blobs[0]))
    assert r.status == 202, r
    assert node.req("GET", "/v2/", auth=("admin", "wrong-password"), src=src).status == 401
    get_token(node, ["repository:%s:pull" % repo], creds=node.admin, src=src)
    r = node.req("POST", "/_georeg/v1/users", auth=node.admin, src=src,
                 body=json.dumps({"name": "puller", "roles": ["pull"]}).encode())
    assert r.status == 201, r
    puller = ("puller", r.json()["secret"])
    r = node.req("POST", "/v2/%s/blobs/uploads/" % repo, auth=puller, src=src)
    assert r.status == 403, r
    r = node.req("GET", "/_georeg/v1/audit", auth=puller, src=src)
    assert r.status == 403, r
    assert node.req("GET", "/_georeg/v1/audit", src=src).status == 401
    expected1 = [
        ("push.blob", repo, None, blobs[0], "admin", 201, "ok"),
        ("push.blob", repo, None, blobs[1], "admin", 201, "ok"),
        ("push", repo, "1", img["digest"], "admin", 201, "ok"),
        ("pull", repo, "1", img["digest"], "admin", 200, "ok"),
        ("delete", repo, img["digest"], None, "admin", 202, "ok"),
        ("delete.blob", repo, None, blobs[0], "admin", 202, "ok"),
        ("login", None, None, None, "-", 401, "denied"),
        ("login", None, None, None, "admin", 200, "ok"),
        ("identity.change", None, "puller", None, "admin", 201, "ok"),
        ("denied", repo, None, None, "puller", 403, "denied"),
        ("denied", None, None, None, "puller", 403, "denied"),
    ]
    all1 = audit_all(node)
    assert [_entry(e) for e in all1 if e["addr"] == src] == expected1, \
        [_entry(e) for e in all1 if e["addr"] == src]
    for e in all1:
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$", e["ts"]), e
    assert [e["ts"] for e in all1] == sorted(e["ts"] for e in all1)

    # phase 2, after a whole-second boundary: a push to another repository
    boundary = int(time.time()) + 1
    time.sleep(max(0.0, boundary - time.time()) + 0.05)
    img2 = make_image(As(node, node.admin), other, "2", layers=1)
    all2 = audit_all(node)
    phase2 = all2[len(all1):]
    assert all2[:len(all1)] == all1
    assert [e["action"] for e in phase2] == ["push.blob", "push.blob", "push"], phase2

    # filters
    assert [_entry(e) for e in audit_all(node, repo=repo)] == [
        x for x in expected1 if x[1] == repo]
    assert audit_all(node, repo=other) == phase2
    assert all(e["actor"] == "puller" for e in audit_all(node, actor="puller"))
    assert len(audit_all(node, actor="puller")) == 2
    assert [e["digest"] for e in audit_all(node, action="push.blob", repo=repo)] == blobs
    assert [e["digest"] for e in audit_all(node, action="push")] == [img["digest"], img2["digest"]]
    assert audit_all(node, action="pull", actor="admin", repo=repo)[0]["ref"] == "1"
    assert audit_all(node, action="no-such-action") == []
    # since / until (unix seconds and RFC 3339)
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(boundary))
    assert audit_all(node, since=boundary) == phase2
    assert audit_all(node, since=iso) == phase2
    assert audit_all(node, until=boundary) == all1
    assert audit_all(node, until=iso) == all1
    assert audit_all(node, since=boundary, until=boundary + 3600) == phase2
    assert audit_all(node, since=boundary + 3600) == []
    r = node.req("GET", "/_georeg/v1/audit?since=yesterday", auth=node.admin)
    assert r.status == 400, r

    # pagination: limit + cursor, and the Link header
    pages, cursor = [], None
    while True:
        entries, cursor, r = audit(node, limit=3, **({"cursor": cursor} if cursor else {}))
        pages.append(entries)
        if cursor is None:
            assert r.header("Link") is None, r
            break
        assert len(entries) == 3
        link = itlib.parse_link_next(r.header("Link"))
        assert link and "cursor=" + cursor in link, r
        # following the Link gives the same next page
        via_link = node.req("GET", link, auth=node.admin).json()["entries"]
        assert via_link == audit(node, limit=3, cursor=cursor)[0]
    assert [e for p in pages for e in p] == all2
    assert len(pages) == (len(all2) + 2) // 3
    # a filtered query paginates over matching entries; its Link keeps the filter
    entries, cursor, r = audit(node, limit=1, action="push")
    assert [e["digest"] for e in entries] == [img["digest"]] and cursor, entries
    assert audit(node, limit=1, action="push", cursor=cursor)[0][0]["digest"] == img2["digest"]
    link = itlib.parse_link_next(r.header("Link"))
    assert link, r
    nxt = node.req("GET", link, auth=node.admin).json()["entries"]
    assert [(e["action"], e["digest"]) for e in nxt] == [("push", img2["digest"])], (link, nxt)
    # JSON lines export, and the CLI
    r = node.req("GET", "/_georeg/v1/audit?format=jsonl&limit=10000", auth=node.admin)
    assert r.status == 200 and r.header("Content-Type") == "application/x-ndjson", r
    assert [json.loads(ln) for ln in r.body.decode().splitlines()] == all2
    cp = run([itlib.GEOREG_BIN, "audit", "--url", node.url, "--user", "admin", "--password-file",
              node.password_file, "--repo", repo, "--action", "push.blob"])
    assert [json.loads(ln)["digest"] for ln in cp.stdout.splitlines()] == blobs
    cp = run([itlib.GEOREG_BIN, "audit", "--since", str(boundary), "--limit", "2"],
             env={"GEOREG_URL": node.url, "GEOREG_USER": "admin",
                  "GEOREG_PASSWORD": node.admin_password})
    assert [json.loads(ln) for ln in cp.stdout.splitlines()] == phase2[:2]
    assert_not_logged(node, node.admin_password, puller[1], "wrong-password")


# --------------------------------------------------------------------------
# identities replicate

def test_token_from_primary_works_on_secondary_until_revoked(make_node):
    rport = itlib.free_port()
    sec = make_node("sec", replication={
        "role": "secondary", "listen": "tcp://127.0.0.1:%d" % rport, "insecure": True,
        "heartbeat": "200ms"})
    pri = make_node("pri", replication={
        "role": "primary", "insecure": True, "heartbeat": "200ms",
        "replicas": [{"name": "sec", "address": "tcp://127.0.0.1:%d" % rport}]})
    cli = [itlib.GEOREG_BIN, "token", "--url", pri.url, "--user", "admin",
           "--password-file", pri.password_file]
    name = "geo-ci-" + uid()
    cp = run(cli + ["create", name, "--scope", "geo/**:pull"])
    secret = cp.stdout.rstrip("\n").splitlines()[-1]
    img = make_image(As(pri, pri.admin), "geo/app", "1")
    # identities are managed on the primary only
    r = sec.req("POST", "/_georeg/v1/tokens", auth=sec.admin,
                body=json.dumps({"name": "local", "scopes": ["geo/**:pull"]}).encode())
    assert r.status == 403 and r.error_codes() == ["DENIED"], r

    def on_secondary():
        toks = identities(sec, "tokens")
        return (name in toks and not toks[name]["disabled"] and
                get_manifest(As(sec, sec.admin), "geo/app", "1").status == 200)
    wait_until(on_secondary, 30 * SLOW, interval=0.1, what="token and image on the secondary")
    tok_creds = (name, secret)
    r = get_manifest(As(sec, tok_creds), "geo/app", "1")
    assert r.status == 200 and r.body == img["manifest"], r
    _, jwt = get_token(sec, ["repository:geo/app:pull"], creds=tok_creds)
    assert get_manifest(As(sec, token=jwt), "geo/app", "1").status == 200
    pulls = audit_all(sec, action="pull", actor=name)
    assert len(pulls) == 2 and all(e["repo"] == "geo/app" for e in pulls), pulls

    run(cli + ["revoke", name])
    wait_until(lambda: identities(sec, "tokens")[name]["disabled"], 30 * SLOW, interval=0.1,
               what="the revocation on the secondary")
    src = new_src()
    r = get_manifest(As(sec, tok_creds, src=src), "geo/app", "1")
    assert r.status == 401 and r.error_codes() == ["UNAUTHORIZED"], r
    r = get_manifest(As(sec, token=jwt, src=src), "geo/app", "1")
    assert r.status == 401 and r.error_codes() == ["UNAUTHORIZED"], r
    get_token(sec, ["repository:geo/app:pull"], creds=tok_creds, src=src, expect=401)
    r = get_manifest(As(pri, tok_creds, src=src), "geo/app", "1")
    assert r.status == 401, r
    assert_not_logged(sec, secret)
    assert_not_logged(pri, secret)


# --------------------------------------------------------------------------
# the CLI

def test_cli_users_and_tokens(tnode, tmp_path):
    x = uid()
    flags = ["--url", tnode.url, "--user", "admin", "--password-file", tnode.password_file]
    env = {"GEOREG_URL": tnode.url, "GEOREG_USER": "admin",
           "GEOREG_PASSWORD": tnode.admin_password}

    def georeg(*args, check=True, use_env=False):
        return run([itlib.GEOREG_BIN] + list(args) + ([] if use_env else flags),
                   check=check, env=env if use_env else None)

    # user add with a password file: no secret printed
    pwf = str(tmp_path / "alice.pw")
    with open(pwf, "w") as f:
        f.write("alice-password-" + x + "\n")
    alice = "alice-" + x
    cp = georeg("user", "add", alice, "--new-password-file", pwf, "--role", "pull",
                "--scope", "cli-%s/**:push" % x)
    assert cp.stdout.splitlines() == ["created user %s" % alice], cp.stdout
    alice_creds = (alice, "alice-password-" + x)
    # user add without one: the generated secret alone on the last line
    bob = "bob-" + x
    cp = georeg("user", "add", bob, "--role", "push")
    bob_secret = cp.stdout.splitlines()[-1]
    assert re.fullmatch(r"[A-Za-z0-9_-]{20,}", bob_secret), cp.stdout

    # token create: the secret alone on the last line; it is the password of NAME
    tname = "ci-" + x
    cp = georeg("token", "create", tname, "--scope", "cli-%s/**:pull,push" % x,
                "--expires", "30d")
    lines = cp.stdout.rstrip("\n").split("\n")
    secret = lines[-1]
    assert re.fullmatch(r"[A-Za-z0-9_-]{20,}", secret) and secret not in "\n".join(lines[:-1]), \
        cp.stdout
    assert any(ln.startswith("expires ") for ln in lines), cp.stdout
    repo = "cli-%s/app" % x
    img = make_image(As(tnode, (tname, secret)), repo, "1")
    assert get_manifest(As(tnode, alice_creds), repo, "1").status == 200
    make_image(As(tnode, alice_creds), repo, "alice")  # her scope: push on cli-x/**
    r = itlib.put_manifest(As(tnode, (tname, secret)), "elsewhere-%s/app" % x, "1",
                           img["manifest"])
    assert r.status == 403, r

    # a service principal for a pipeline: client id and generated secret
    spn = "pipeline-" + x
    cp = georeg("sp", "create", spn, "--scope", "cli-%s/**:push" % x)
    sp_secret = cp.stdout.rstrip("\n").split("\n")[-1]
    make_image(As(tnode, (spn, sp_secret)), repo, "sp")
    sps = json.loads(georeg("sp", "list", "--json").stdout)
    assert [(i["kind"], i["disabled"]) for i in sps if i["name"] == spn] == [("sp", False)], sps

    # token list (credentials from GEOREG_* variables), table and --json
    cp = georeg("token", "list", use_env=True)
    row = [ln.split() for ln in cp.stdout.splitlines() if ln.split()[:1] == [tname]]
    assert row and row[0][1:3] == ["token", "active"], cp.stdout
    assert "cli-%s/**:pull,push" % x in row[0], row
    listed = {i["name"]: i for i in json.loads(georeg("token", "list", "--json").stdout)}
    assert listed[tname]["grants"][0]["repo"] == "cli-%s/**" % x
    assert listed[tname]["expires"] > time.time() + 29 * 86400
    assert "secret" not in listed[tname]
    users = {i["name"] for i in json.loads(georeg("user", "list", "--json").stdout)}
    assert {alice, bob} <= users and tname not in users

    # revoke
    cp = georeg("token", "revoke", tname)
    assert cp.stdout.strip() == "token %s: revoke" % tname, cp.stdout
    row = [ln.split() for ln in georeg("token", "list").stdout.splitlines()
           if ln.split()[:1] == [tname]]
    assert row[0][2] == "revoked", row
    src = new_src()
    assert get_manifest(As(tnode, (tname, secret), src=src), repo, "1").status == 401
    # disable / enable / delete a user: Basic credentials and the JWTs already issued
    _, bob_jwt = get_token(tnode, ["repository:%s:pull" % repo], creds=(bob, bob_secret))
    assert get_manifest(As(tnode, token=bob_jwt), repo, "1").status == 200
    georeg("user", "disable", bob)
    assert tnode.req("GET", "/v2/", auth=(bob, bob_secret), src=src).status == 401
    assert get_manifest(As(tnode, token=bob_jwt, src=src), repo, "1").status == 401
    georeg("user", "enable", bob)
    assert tnode.req("GET", "/v2/", auth=(bob, bob_secret)).status == 200
    assert get_manifest(As(tnode, token=bob_jwt), repo, "1").status == 200
    georeg("user", "delete", alice)
    assert alice not in {i["name"] for i in json.loads(georeg("user", "list", "--json").stdout)}
    assert tnode.req("GET", "/v2/", auth=alice_creds, src=src).status == 401
    # errors: unknown identity, a non-admin caller, wrong admin password
    assert georeg("user", "delete", "nobody-" + x, check=False).returncode != 0
    bobpw = str(tmp_path / "bob.pw")
    with open(bobpw, "w") as f:
        f.write(bob_secret + "\n")
    cp = run([itlib.GEOREG_BIN, "token", "list", "--url", tnode.url, "--user", bob,
              "--password-file", bobpw], check=False)
    assert cp.returncode == 3, (cp.returncode, cp.stderr)
    badpw = str(tmp_path / "bad.pw")
    with open(badpw, "w") as f:
        f.write("definitely-wrong\n")
    cp = run([itlib.GEOREG_BIN, "token", "list", "--url", tnode.url, "--user", "admin",
              "--password-file", badpw], check=False)
    assert cp.returncode == 3 and "UNAUTHORIZED" in cp.stderr, (cp.returncode, cp.stderr)

    # the audit CLI shows these identity changes, by admin
    cp = georeg("audit", "--actor", "admin", "--action", "identity.change")
    changes = [(e["ref"], e["detail"]) for e in map(json.loads, cp.stdout.splitlines())
               if e["ref"] in (alice, bob, tname)]
    assert changes == [(alice, "created"), (bob, "created"), (tname, "created"),
                       (tname, "revoke"), (bob, "disable"), (bob, "enable"),
                       (alice, "deleted")], changes
    assert_not_logged(tnode, secret, bob_secret, sp_secret, "alice-password-" + x)


# --------------------------------------------------------------------------
# issue 8 §2: grants mean exactly what they say

def test_scoped_admin_is_not_registry_admin(tnode):
    """team-a/**:admin administers team-a, not the registry: no users, no audit log."""
    x = uid()
    create_identity(tnode, "user", "sa-" + x, scopes=["t8a-%s/**:admin" % x], password="pw-" + x)
    me = ("sa-" + x, "pw-" + x)
    body = json.dumps({"name": "evil-" + x, "roles": ["admin"], "scopes": ["**:admin"],
                       "password": "x" * 12}).encode()
    r = tnode.req("POST", "/_georeg/v1/users", body=body,
                  headers={"Content-Type": "application/json"}, auth=me)
    assert r.status == 403, r
    assert tnode.req("GET", "/_georeg/v1/audit", auth=me).status == 403
    assert tnode.req("GET", "/_georeg/v1/users", auth=me).status == 403
    # a "*" repository-scoped grant neither
    create_identity(tnode, "user", "ss-" + x, scopes=["t8a-%s/**:*" % x], password="pw-" + x)
    assert tnode.req("GET", "/_georeg/v1/users", auth=("ss-" + x, "pw-" + x)).status == 403
    # the built-in admin still is
    assert tnode.req("GET", "/_georeg/v1/users", auth=tnode.admin).status == 200


def test_catalog_same_through_basic_and_bearer(tnode):
    x = uid()
    adm = As(tnode, tnode.admin)
    mine, others = ["t8c-%s/app" % x], ["t8c-%s-fin/payroll" % x, "t8c-%s-b/secret" % x]
    for repo in mine + others:
        make_image(adm, repo, "1", layers=1)
    name, pw = "cat-" + x, "pw-" + x
    create_identity(tnode, "user", name, scopes=["t8c-%s/**:pull" % x], password=pw)
    r = tnode.req("GET", "/v2/_catalog?n=10000", auth=(name, pw))
    basic_cat = [c for c in r.json()["repositories"] if c.startswith("t8c-%s" % x)]
    assert basic_cat == mine, basic_cat
    _, tok = get_token(tnode, ["registry:catalog:*"], creds=(name, pw))
    r = tnode.req("GET", "/v2/_catalog?n=10000", token=tok)
    assert r.status == 200, r
    bearer_cat = [c for c in r.json()["repositories"] if c.startswith("t8c-")]
    assert bearer_cat == mine, bearer_cat
    # the bearer catalog token pulls nothing
    r = tnode.req("GET", "/v2/%s/manifests/1" % mine[0], token=tok)
    assert r.status == 401, r


def test_catalog_paging_does_not_leak(tnode):
    x = uid()
    adm = As(tnode, tnode.admin)
    readable = ["t8p-%s/a%d" % (x, i) for i in range(3)]
    hidden = ["t8p-%s/b%d" % (x, i) for i in range(3)] + ["t8p-%s/zz" % x]
    for repo in readable + hidden:
        make_image(adm, repo, "1", layers=1)
    name, pw = "pg-" + x, "pw-" + x
    create_identity(tnode, "user", name, scopes=["t8p-%s/a*:pull" % x], password=pw)
    seen, links = [], []
    path = "/v2/_catalog?n=1&last=t8p-%s" % x
    for _ in range(10):
        r = tnode.req("GET", path, auth=(name, pw))
        assert r.status == 200, r
        seen += r.json()["repositories"]
        link = r.headers.get("Link")
        if not link:
            break
        links.append(link)
        path = re.search(r"<([^>]+)>", link).group(1)
    seen = [s for s in seen if s.startswith("t8p-%s/" % x)]
    assert seen == readable, seen
    for link in links:
        for h in hidden:
            assert h not in link, link


def test_metadata_read_lists_tags_and_locates(tnode):
    x = uid()
    repo = "t8m-%s/app" % x
    make_image(As(tnode, tnode.admin), repo, "1", layers=1)
    name, pw = "md-" + x, "pw-" + x
    create_identity(tnode, "user", name, scopes=["t8m-%s/**:metadata_read" % x], password=pw)
    r = tnode.req("GET", "/v2/%s/tags/list" % repo, auth=(name, pw))
    assert r.status == 200 and r.json()["tags"] == ["1"], r
    r = tnode.req("GET", "/_georeg/v1/locate/%s/manifests/1" % repo, auth=(name, pw))
    assert r.status != 403 and r.status != 401, r
    # metadata_read is not pull
    r = tnode.req("GET", "/v2/%s/manifests/1" % repo, auth=(name, pw))
    assert r.status == 403, r


def test_token_loses_rights_when_identity_narrowed(tnode):
    x = uid()
    repo = "t8n-%s/app" % x
    make_image(As(tnode, tnode.admin), repo, "1", layers=1)
    name, pw = "nar-" + x, "pw-" + x
    create_identity(tnode, "user", name, scopes=["t8n-%s/**:pull" % x], password=pw)
    _, tok = get_token(tnode, ["repository:%s:pull" % repo], creds=(name, pw))
    assert tnode.req("GET", "/v2/%s/manifests/1" % repo, token=tok).status == 200
    # narrow the user: delete it and create it again with other grants (POST replaces)
    assert tnode.req("DELETE", "/_georeg/v1/users/" + name, auth=tnode.admin).status in (200, 204)
    create_identity(tnode, "user", name, scopes=["elsewhere/**:pull"], password=pw)
    r = tnode.req("GET", "/v2/%s/manifests/1" % repo, token=tok)
    assert r.status == 401, r


def test_one_message_for_every_failed_login(make_node):
    n = make_node("onemsg")
    x = uid()
    create_identity(n, "user", "dis-" + x, scopes=["**:pull"], password="pw-dis-" + x)
    r = n.req("POST", "/_georeg/v1/users/dis-%s/disable" % x, auth=n.admin)
    assert r.status in (200, 204), r
    msgs = set()
    for user, pw in (("nobody-" + x, "wrong"), ("dis-" + x, "wrong"),
                     ("dis-" + x, "pw-dis-" + x), ("admin", "wrong")):
        r = n.req("GET", "/v2/", auth=(user, pw), src=new_src())
        assert r.status == 401, r
        msgs.add(r.json()["errors"][0]["message"])
    assert len(msgs) == 1, msgs


def test_import_action_is_exactly_pull_and_push(tnode):
    """`import` (documented: pull and push of the repository, mounts included) grants
    neither delete, nor other repositories, nor registry-wide rights."""
    x = uid()
    src, dst, other = "t8i-%s/src" % x, "t8i-%s/dst" % x, "t8i-%s-other/app" % x
    adm = As(tnode, tnode.admin)
    img = make_image(adm, src, "1", layers=1)
    make_image(adm, other, "1", layers=1)
    layer = next(d for d, b in img["blobs"].items() if len(b) == 4096)
    name, pw = "imp-" + x, "pw-" + x
    create_identity(tnode, "user", name, scopes=["t8i-%s/**:import" % x], password=pw)
    me = As(tnode, (name, pw))
    # pull and push
    assert tnode.req("GET", "/v2/%s/manifests/1" % src, auth=(name, pw),
                     headers={"Accept": MT_OCI_MANIFEST}).status == 200
    make_image(me, dst, "1", layers=1)
    # a cross-repository mount between repositories it may import into
    r = tnode.req("POST", "/v2/%s/blobs/uploads/?mount=%s&from=%s" % (dst, layer, src),
                  auth=(name, pw))
    assert r.status == 201, r
    # ... but not from one it may not read: an ordinary upload session (202), no blob
    lo = json.loads(get_manifest(adm, other, "1").body)["layers"][0]["digest"]
    r = tnode.req("POST", "/v2/%s/blobs/uploads/?mount=%s&from=%s" % (dst, lo, other),
                  auth=(name, pw))
    assert r.status == 202, r
    assert tnode.req("HEAD", "/v2/%s/blobs/%s" % (dst, lo), auth=(name, pw)).status == 404
    # no delete, no other repository, no registry-wide rights
    assert tnode.req("DELETE", "/v2/%s/manifests/%s" % (src, img["digest"]),
                     auth=(name, pw)).status == 403
    assert tnode.req("GET", "/v2/%s/manifests/1" % other, auth=(name, pw),
                     headers={"Accept": MT_OCI_MANIFEST}).status == 403
    assert tnode.req("GET", "/_georeg/v1/users", auth=(name, pw)).status == 403
    assert tnode.req("GET", "/_georeg/v1/audit", auth=(name, pw)).status == 403
