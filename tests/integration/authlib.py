"""Helpers for the access-control tests (test_auth.py), stdlib + the openssl CLI.

- AuthNode: an itlib.Node started from a full YAML config (auth, http with TLS,
  allow lists and a private listener, audit, replication), whose requests may
  go over TLS (trusting a test CA) and from a chosen loopback source address
  (127.0.0.0/8 is all local on Linux, so a client can bind 127.0.0.2 or
  127.0.1.7 and the node sees that peer address).
- call(): one HTTP(S) request with optional Basic or Bearer credentials and a
  source address; returns itlib.Resp.
- Source addresses: new_src() hands out a fresh 127.0.x.y per call. georeg
  slows down an *address* after repeated failed logins, so a test that makes
  logins fail on purpose uses its own source address and never throttles the
  127.0.0.1 the shared node's other tests (and skopeo) come from.
- Tokens (token endpoint, JWT decoding), JWT forging with `openssl dgst`
  (ES256 signatures converted from DER to the JOSE r||s form), the audit API,
  certificates (scripts/gen-certs.sh) and certificate serials.
"""

import base64
import http.client as httpclient
import itertools
import json
import os
import re
import socket
import ssl
import subprocess
import time
import urllib.parse

import itlib
from itlib import Node, Resp, tail
from cluster import CERTS_SCRIPT, to_yaml

SLOW = 3.0 if itlib.ASAN else 1.0


# --------------------------------------------------------------------------
# source addresses

_src_counter = itertools.count(1)


def new_src():
    """A loopback address no other request of this run used: 127.0.{1..}.{1..250}."""
    i = next(_src_counter)
    return "127.0.%d.%d" % (1 + i // 250, 1 + i % 250)


# --------------------------------------------------------------------------
# HTTP

def basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(
        ("%s:%s" % (user, password)).encode()).decode()}


def bearer(token):
    return {"Authorization": "Bearer " + token}


def tls_context(ca):
    """A client context that trusts only ca (None: the system's roots)."""
    return ssl.create_default_context(cafile=ca)


def call(base, method, path, body=None, headers=None, ca=None, src=None,
         timeout=itlib.HTTP_TIMEOUT):
    """One request on a fresh connection to base ('http://127.0.0.1:P' or
    'https://...'); src: the local address to bind (default: the kernel's)."""
    u = urllib.parse.urlsplit(base)
    source = (src, 0) if src else None
    if u.scheme == "https":
        conn = httpclient.HTTPSConnection(u.hostname, u.port, timeout=timeout,
                                          context=tls_context(ca), source_address=source)
    else:
        conn = httpclient.HTTPConnection(u.hostname, u.port, timeout=timeout,
                                         source_address=source)
    try:
        hdrs = dict(headers or {})
        if body is None and method in ("POST", "PUT", "PATCH") and not any(
                k.lower() == "content-length" for k in hdrs):
            hdrs["Content-Length"] = "0"
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        try:
            data = r.read()
            incomplete = False
        except httpclient.IncompleteRead as e:
            data, incomplete = e.partial, True
        resp = Resp(r.status, r.reason, r.headers, data)
        resp.incomplete = incomplete
        return resp
    finally:
        conn.close()


def challenge(resp):
    """WWW-Authenticate 'Bearer realm="x",service="y",scope="z"' -> (scheme, {k: v})."""
    h = resp.header("WWW-Authenticate") or ""
    scheme, _, rest = h.partition(" ")
    return scheme, dict(re.findall(r'(\w+)="([^"]*)"', rest))


# --------------------------------------------------------------------------
# nodes

class AuthNode(Node):
    """A georeg node started with --config from sections (dicts): auth, http
    (merged over listen), audit, replication, storage. ca: the CA file that
    signs http.tls (requests then use https and trust only it). src: the default source address
    of this node's requests (for a listener that only allows some addresses)."""

    def __init__(self, workdir, name, sections, ca=None, src=None, port=None, env=None,
                 admin_password=None):
        super().__init__(workdir, name=name, port=port, env=env, target="georeg")
        self.sections = sections
        self.ca = ca
        self.src = src
        self.admin_password = admin_password
        self.config_path = os.path.join(workdir, "georeg.yml")

    @property
    def tls(self):
        return bool(self.sections.get("http", {}).get("tls"))

    @property
    def url(self):
        return "%s://127.0.0.1:%d" % ("https" if self.tls else "http", self.port)

    def _command(self):
        http_sec = dict({"listen": "127.0.0.1:%d" % self.port}, **self.sections.get("http", {}))
        cfg = {"node": {"name": self.name, "data_dir": self.data_dir, "log_level": "info"},
               "http": http_sec}
        for k, v in self.sections.items():
            if k not in ("node", "http"):
                cfg[k] = v
        # auth.mode has no default (issue 8 §9): a node without an auth section says none
        auth = dict(cfg.get("auth", {}))
        if "mode" not in auth:
            auth["mode"] = "none"
            # a test of another listener (e.g. dual-stack [::]) opts in to none there too
            if not http_sec["listen"].startswith(("127.", "localhost:", "[::1]:")):
                auth.setdefault("allow_none_off_loopback", True)
        cfg["auth"] = auth
        with open(self.config_path, "w") as f:
            f.write("# written by tests/integration/authlib.py\n" + to_yaml(cfg))
        return [itlib.GEOREG_BIN, "serve", "--config", self.config_path]

    def wait_ready(self, timeout=itlib.START_TIMEOUT):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("georeg exited with %s during startup; stderr:\n%s"
                                   % (self.proc.returncode, tail(self.log_path)))
            try:
                r = self.req("GET", "/readyz", timeout=2)
                if r.status == 200:
                    return
                last = r.status
            except (OSError, ssl.SSLError) as e:
                last = e
            time.sleep(0.05)
        self.kill9()
        raise RuntimeError("georeg not ready on %s after %.0fs (last: %r); stderr:\n%s"
                           % (self.url, timeout, last, tail(self.log_path)))

    def req(self, method, path, body=None, headers=None, src=None, auth=None, token=None,
            timeout=itlib.HTTP_TIMEOUT, base=None):
        """auth: (user, password) for Basic; token: a JWT for Bearer."""
        h = dict(headers or {})
        if auth:
            h.update(basic(*auth))
        if token:
            h.update(bearer(token))
        return call(base or self.url, method, path, body=body, headers=h, ca=self.ca,
                    src=src or self.src, timeout=timeout)

    @property
    def admin(self):
        return ("admin", self.admin_password)

    def log(self, n=8000):
        return tail(self.log_path, n)

    def log_count(self, event):
        return tail(self.log_path, 1 << 30).count("event=%s " % event)


# --------------------------------------------------------------------------
# tokens and identities

def get_token(node, scopes=(), creds=None, service=None, src=None, expect=200):
    """Asks node's token endpoint; returns (Resp, token or None)."""
    q = []
    if service is not None:
        q.append(("service", service))
    for s in scopes:
        q.append(("scope", s))
    path = "/_georeg/v1/token" + ("?" + urllib.parse.urlencode(q) if q else "")
    r = node.req("GET", path, auth=creds, src=src)
    if expect is not None:
        assert r.status == expect, r
    tok = r.json().get("token") if r.status == 200 else None
    return r, tok


def create_identity(node, kind, name, roles=(), scopes=(), expires=None, password=None,
                    creds=None):
    """POST /_georeg/v1/{users,tokens,service-principals}; returns the JSON answer."""
    path = {"user": "users", "token": "tokens", "sp": "service-principals"}[kind]
    body = {"name": name, "roles": list(roles), "scopes": list(scopes)}
    if expires:
        body["expires"] = expires
    if password:
        body["password"] = password
    r = node.req("POST", "/_georeg/v1/" + path, body=json.dumps(body).encode(),
                 headers={"Content-Type": "application/json"}, auth=creds or node.admin)
    assert r.status == 201, r
    return r.json()


def identities(node, kind="tokens", creds=None):
    r = node.req("GET", "/_georeg/v1/" + kind, auth=creds or node.admin)
    assert r.status == 200, r
    return {i["name"]: i for i in r.json()}


# --------------------------------------------------------------------------
# JWT

def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def jwt_decode(tok):
    """-> (header dict, claims dict, signature bytes)."""
    h, c, s = tok.split(".")
    return json.loads(b64url_decode(h)), json.loads(b64url_decode(c)), b64url_decode(s)


def jwt_encode_unsigned(header, claims):
    return "%s.%s" % (b64url(json.dumps(header, separators=(",", ":")).encode()),
                      b64url(json.dumps(claims, separators=(",", ":")).encode()))


def _der_int(data, i):
    assert data[i] == 0x02, "not an INTEGER"
    n = data[i + 1]
    return int.from_bytes(data[i + 2:i + 2 + n], "big"), i + 2 + n


def ecdsa_der_to_raw(der):
    """DER ECDSA-Sig-Value SEQUENCE{r, s} -> 64 bytes r||s (JOSE ES256)."""
    assert der[0] == 0x30
    i = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
    r, i = _der_int(der, i)
    s, _ = _der_int(der, i)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def es256_sign(signing_input, key_path):
    """ES256 signature of signing_input (str) with the P-256 key in key_path, by
    `openssl dgst -sha256 -sign`."""
    cp = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key_path],
                        input=signing_input.encode(), stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, timeout=30, check=True)
    return ecdsa_der_to_raw(cp.stdout)


def jwt_sign(header, claims, key_path):
    si = jwt_encode_unsigned(header, claims)
    return si + "." + b64url(es256_sign(si, key_path))


def new_ec_key(path):
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out",
                    path], check=True, timeout=30, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return path


# --------------------------------------------------------------------------
# audit

def audit(node, creds=None, **params):
    """One page of GET /_georeg/v1/audit: (entries, next, Resp)."""
    q = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    r = node.req("GET", "/_georeg/v1/audit" + ("?" + q if q else ""), auth=creds or node.admin)
    assert r.status == 200, r
    j = r.json()
    return j["entries"], j["next"], r


def audit_all(node, creds=None, **params):
    """Every entry matching params, following the `next` cursors."""
    out, cursor = [], None
    for _ in range(1000):
        p = dict(params)
        if cursor:
            p["cursor"] = cursor
        entries, cursor, _ = audit(node, creds=creds, **p)
        out += entries
        if not cursor:
            return out
    raise AssertionError("audit pagination did not end")


def pick(entries, **want):
    """Entries whose fields equal want (None values: the field is absent)."""
    out = []
    for e in entries:
        if all(e.get(k) == v for k, v in want.items()):
            out.append(e)
    return out


# --------------------------------------------------------------------------
# certificates

def gen_certs(d, *names):
    """scripts/gen-certs.sh: d/ca.pem and d/NAME.pem + d/NAME.key (SAN IP:127.0.0.1)."""
    itlib.run(["bash", CERTS_SCRIPT, d] + list(names), timeout=60)
    return {n: (os.path.join(d, n + ".pem"), os.path.join(d, n + ".key")) for n in names}


def cert_serial(pem):
    out = itlib.run(["openssl", "x509", "-noout", "-serial", "-in", pem], timeout=30).stdout
    return int(out.strip().split("=", 1)[1], 16)


def peer_serial(port, ca, src=None):
    """The serial of the certificate a new TLS connection to 127.0.0.1:port sees."""
    ctx = tls_context(ca)
    with socket.create_connection(("127.0.0.1", port), timeout=10,
                                  source_address=(src, 0) if src else None) as s:
        with ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
            return int(t.getpeercert()["serialNumber"], 16)


def replace_file(src, dst):
    """Atomically replaces dst with a copy of src."""
    tmp = dst + ".new"
    with open(src, "rb") as f, open(tmp, "wb") as g:
        g.write(f.read())
    os.replace(tmp, dst)


__all__ = ["AuthNode", "As", "call", "basic", "bearer", "challenge", "new_src", "get_token",
           "create_identity", "identities", "jwt_decode", "jwt_sign", "jwt_encode_unsigned",
           "b64url", "new_ec_key", "audit", "audit_all", "pick", "gen_certs", "cert_serial",
           "peer_serial", "replace_file", "tls_context", "SLOW"]


class As:
    """A view of a node whose requests carry credentials (Basic creds, a Bearer
    token) and a source address, for itlib's helpers (push_blob, make_image,
    put_manifest, get_manifest), which call node.req(method, path, body, headers)."""

    target = "georeg"

    def __init__(self, node, creds=None, token=None, src=None):
        self.node, self.creds, self.token, self.src = node, creds, token, src

    @property
    def url(self):
        return self.node.url

    def req(self, method, path, body=None, headers=None, **kw):
        return self.node.req(method, path, body=body, headers=headers, auth=self.creds,
                             token=self.token, src=self.src, **kw)
