"""Issue 8, sections 1 and 4: replication peers are who they claim, only the
primary commands, epochs are not taken from heartbeats, and a resync makes a
secondary's identities exactly the primary's.

The attacker's tests send well-formed forgeries (a META_PUT of an identity with
a `**` grant and every action, a heartbeat with epoch 1000000) to a
secondary's replication port: with another node's valid certificate, with a
certificate from a foreign CA, and over plain tcp. Each is refused, counted in
georeg_repl_refused_total, audited, and the victim is unchanged (its users,
its epoch; pushes through the real primary still replicate).

Nodes run in token mode with an admin password (authlib.AuthNode); the raw
peers speak nng's SP framing (cluster.py's helpers), over TLS where needed.
"""
import base64
import hashlib
import json
import os
import re
import socket
import ssl
import struct
import subprocess
import time
import uuid

import pytest

import cluster as C
import itlib
from authlib import SLOW, AuthNode, create_identity
from conftest import NodeManager, _check_binary
from itlib import run, wait_until

pytestmark = pytest.mark.georeg_only("replication trust is georeg's own")

TEST_ALARM = 300 if itlib.ASAN else 150  # seconds for any one test (conftest's _bounded)
CERTS = os.environ.get("GEOREG_CERTS_SCRIPT",
                       os.path.join(itlib.REPO_ROOT, "scripts", "gen-certs.sh"))


def uid():
    return uuid.uuid4().hex[:8]


class Nodes:
    """AuthNodes (token mode, admin password file) with replication sections;
    stopped by PID at close."""

    def __init__(self, tmp_path_factory, label):
        self.tmp = tmp_path_factory
        self.mgr = NodeManager(tmp_path_factory, label)
        self.base = str(tmp_path_factory.mktemp("trust-" + uid()))

    def certs(self, ca, *names, san=None):
        d = os.path.join(self.base, "tls-" + ca)
        env = {"GEOREG_CERT_SAN": san} if san else None
        run(["bash", CERTS, d] + list(names), timeout=60, env=env)
        return {n: {"cert": os.path.join(d, n + ".pem"), "key": os.path.join(d, n + ".key"),
                    "client_cert": os.path.join(d, n + "-client.pem"),
                    "ca": os.path.join(d, "ca.pem")} for n in names}

    def __call__(self, name, replication, start=True):
        _check_binary()
        workdir = str(self.tmp.mktemp(re.sub(r"[^A-Za-z0-9_]", "_", name)[:30]))
        password = "pw-" + uuid.uuid4().hex
        pwfile = os.path.join(workdir, "admin.password")
        with open(pwfile, "w") as f:
            f.write(password + "\n")
        sections = {"auth": {"mode": "token", "admin_password_file": pwfile},
                    "replication": dict({"heartbeat": "200ms"}, **replication)}
        n = AuthNode(workdir, name, sections, admin_password=password)
        n.password_file = pwfile
        self.mgr.nodes.append(n)
        if start:
            n.start()
        return n

    def close(self):
        self.mgr.close()


@pytest.fixture
def nodes(tmp_path_factory, request):
    f = Nodes(tmp_path_factory, request.node.name)
    yield f
    f.close()


# --------------------------------------------------------------------------
# helpers

def repl_status(n):
    r = n.req("GET", "/_georeg/v1/replication", auth=n.admin)
    assert r.status == 200, r
    return r.json()


def refused(n):
    return repl_status(n)["refused"]


def metric_refused(n, reason):
    r = n.req("GET", "/metrics", auth=n.admin)
    assert r.status == 200, r
    m = re.search(r'^georeg_repl_refused_total\{reason="%s"\} (\d+)$' % reason,
                  r.body.decode(), re.M)
    assert m, r.body.decode()[:2000]
    return int(m.group(1))


def users(n):
    r = n.req("GET", "/_georeg/v1/users", auth=n.admin)
    assert r.status == 200, r
    return sorted(u["name"] for u in r.json())


def login(n, creds):
    return n.req("GET", "/v2/", auth=creds).status


def audit_refusals(n):
    r = n.req("GET", "/_georeg/v1/audit?format=jsonl&action=replication.refused&limit=1000",
              auth=n.admin)
    assert r.status == 200, r
    return [json.loads(ln) for ln in r.body.decode().splitlines() if ln.strip()]


def forged_identity(name):
    """An identity record exactly as auth_put_identity writes it, with a `**`
    grant of every action (bits 63) and a secret the attacker knows."""
    salt = os.urandom(16)
    dk = hashlib.pbkdf2_hmac("sha256", b"owned", salt, 100000, 32)
    secret = "pbkdf2-sha256$100000$%s$%s" % (base64.b64encode(salt).decode(),
                                             base64.b64encode(dk).decode())
    rec = {"name": name, "kind": "user", "secret": secret, "disabled": False, "expires": 0,
           "created": int(time.time()), "created_by": "admin",
           "grants": [{"repo": "**", "actions": "pull,push,delete,metadata_read,import,admin",
                       "bits": 63}]}
    return json.dumps(rec, separators=(",", ":")).encode()


def forgeries(seq, sender="eu", epoch=1):
    """The two well-formed forgeries: a META_PUT of a `**` admin identity and a
    heartbeat with epoch 1000000."""
    ev = C.pb_event(seq, C.EV_META_PUT, tag="id/mallory", body=forged_identity("mallory"))
    meta = C.pb_envelope(C.ENV_BATCH, C.pb_bytes(1, ev), msg_id=11, sender=sender, epoch=epoch)
    hb = C.pb_envelope(C.ENV_HEARTBEAT, C.pb_int(1, seq + 10) + C.pb_int(2, int(time.time() * 1000)),
                       msg_id=12, sender=sender, epoch=1000000)
    return [meta, hb]


def proof_signature(key, nonce, receiver, sender, epoch):
    """What wire_proof_sign signs, signed with key (DER ECDSA over SHA-256)."""
    m = (b"georeg-repl-proof-v1\0" + nonce + receiver.encode() + b"\0" + sender.encode() +
         b"\0" + struct.pack(">Q", epoch))
    cp = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=m,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30, check=True)
    return cp.stdout


class TLSPeer:
    """A raw replication peer over TLS with a client certificate of its own
    choosing: the SP handshake, then frames; reads synchronously."""

    def __init__(self, port, cert, key):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the attacker trusts anything
        ctx.load_cert_chain(cert, key)
        raw = socket.create_connection(("127.0.0.1", port), timeout=5 * SLOW)
        self.sock = ctx.wrap_socket(raw)
        self.data = b""
        self.sock.sendall(C.SP_HANDSHAKE_PAIR1)

    def send(self, env):
        self.sock.sendall(C.sp_frame(C.message(env)))

    def frames(self, n, timeout=10.0):
        deadline = time.monotonic() + timeout * SLOW
        while time.monotonic() < deadline:
            if len(self.data) >= 8 and len(C.sp_frames(self.data)[1]) >= n:
                break
            try:
                d = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not d:
                break
            self.data += d
        return C.sp_frames(self.data)[1] if len(self.data) >= 8 else []

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def body_of(frame, field):
    v = C.env_fields(frame).get(field)
    return None if v is None else {k: x for k, _, x in C.pb_read(v)}


def ack_error(frame):
    a = body_of(frame, C.ENV_ACK)
    return a.get(4, b"") if a else b""


def tls_pair(nodes, sec_tls_name="us-east", **sec_extra):
    """A primary eu (TLS) and its secondary us-east; returns (pri, sec, certs)."""
    certs = nodes.certs("ca", "eu", "us-east", "ap")
    port = itlib.free_port()
    sec = nodes("us-east", dict({"role": "secondary",
                                 "listen": "tls+tcp://127.0.0.1:%d" % port,
                                 "tls": certs[sec_tls_name], "primaries": ["eu"]}, **sec_extra))
    sec.repl_port = port
    pri = nodes("eu", {"role": "primary", "tls": certs["eu"],
                       "replicas": [{"name": "us-east",
                                     "address": "tls+tcp://127.0.0.1:%d" % port}]})
    return pri, sec, certs


def wait_synced(pri, sec):
    wait_until(lambda: repl_status(sec)["applied_seq"] == repl_status(pri)["head_seq"] and
               repl_status(sec)["applied_seq"] > 0, 30 * SLOW, interval=0.1, what="in sync")


def push_and_see(pri, sec, label):
    """A push through the real primary still reaches the secondary."""
    img = itlib.make_image(_As(pri), "trust/app", label)
    wait_synced(pri, sec)
    r = sec.req("GET", "/v2/trust/app/manifests/" + label, auth=sec.admin,
                headers={"Accept": itlib.MT_OCI_MANIFEST})
    assert r.status == 200 and r.body == img["manifest"], r


def _As(n):
    from authlib import As
    return As(n, n.admin)


# --------------------------------------------------------------------------
# §1: forgeries

def test_forgeries_with_another_nodes_certificate_are_refused(nodes):
    """ap holds a valid certificate of the cluster CA (ap is a secondary, not
    allowed to be primary). As itself it may not command us-east; claiming to be
    eu, its proof (ap's certificate, ap's signature) does not verify; its
    META_PUT of a `**` admin identity and its epoch-1000000 heartbeat are refused
    on the unauthenticated connection. Counted, audited, nothing changed."""
    pri, sec, certs = tls_pair(nodes)
    create_identity(pri, "user", "alice", roles=["pull"], password="alice-pw-1234567")
    wait_until(lambda: "alice" in users(sec), 30 * SLOW, interval=0.1, what="alice replicated")
    push_and_see(pri, sec, "before")
    users0, epoch0 = users(sec), repl_status(sec)["epoch"]
    seq = repl_status(sec)["applied_seq"] + 1
    ap = certs["ap"]
    # the secondary has one primary connection, and a new one replaces it (a
    # half-open one after a partition must not lock the primary out): with eu
    # connected, eu's redial would replace the attacker at once
    pri.stop()
    before = refused(sec)

    # 1. as itself
    peer = TLSPeer(sec.repl_port, ap["client_cert"], ap["key"])
    peer.send(C.pb_envelope(C.ENV_PEER_HELLO, b"", msg_id=1, sender="ap"))
    for env in forgeries(seq, sender="ap"):
        peer.send(env)
    fr = peer.frames(3)
    peer.close()
    assert len(fr) >= 3, fr
    assert b"may not command" in ack_error(fr[0]), fr[0]
    assert all(b"refused" in ack_error(f) for f in fr[1:3]), fr

    # 2. claiming to be eu, proving with its own certificate and key
    peer = TLSPeer(sec.repl_port, ap["client_cert"], ap["key"])
    peer.send(C.pb_envelope(C.ENV_PEER_HELLO, b"", msg_id=1, sender="eu"))
    fr = peer.frames(1)
    ch = body_of(fr[0], C.ENV_PEER_CHALLENGE) if fr else None
    assert ch and len(ch[1]) == 32, fr
    sig = proof_signature(ap["key"], ch[1], "us-east", "eu", 1)
    with open(ap["client_cert"], "rb") as f:
        pem = f.read()
    peer.send(C.pb_envelope(C.ENV_PEER_PROOF, C.pb_bytes(1, pem) + C.pb_bytes(2, sig) +
                            C.pb_bytes(3, "us-east"), msg_id=2, sender="eu"))
    for env in forgeries(seq, sender="eu"):
        peer.send(env)
    fr = peer.frames(4)
    peer.close()
    assert len(fr) >= 4, fr
    assert b"does not name the sender" in ack_error(fr[1]), fr[1]
    assert all(b"not authenticated" in ack_error(f) for f in fr[2:4]), fr

    after = refused(sec)
    assert after["not_primary"] >= before["not_primary"] + 1, after
    assert after["bad_proof"] >= before["bad_proof"] + 1, after
    assert after["unauthenticated"] >= before["unauthenticated"] + 4, after
    assert metric_refused(sec, "bad_proof") == after["bad_proof"]
    wait_until(lambda: len(audit_refusals(sec)) >= 7, 15 * SLOW, interval=0.2,
               what="refusals audited")
    details = " ".join(e.get("detail", "") for e in audit_refusals(sec))
    assert "not_primary" in details and "bad_proof" in details and "unauthenticated" in details

    # the victim is unchanged, and the real primary still commands it
    assert users(sec) == users0 and "mallory" not in users0
    assert login(sec, ("mallory", "owned")) == 401
    assert repl_status(sec)["epoch"] == epoch0 == 1
    pri.start()
    st = repl_status(pri)
    assert st["writable"] is True and st["epoch"] == 1, st
    push_and_see(pri, sec, "after")
    assert repl_status(sec)["epoch"] == 1


def test_forgeries_from_a_foreign_ca_and_plain_tcp_are_refused(nodes):
    """A certificate for eu from another CA, and plain tcp on the TLS port: the
    TLS handshake fails, nothing is read; the refusals are counted
    (reason="tls") and audited; us-east is unchanged and follows eu."""
    pri, sec, certs = tls_pair(nodes)
    push_and_see(pri, sec, "before")
    users0 = users(sec)
    seq = repl_status(sec)["applied_seq"] + 1
    evil = nodes.certs("evil", "eu")["eu"]
    pri.stop()  # its redial would replace the attacker's connection
    tls0 = metric_refused(sec, "tls")

    try:
        peer = TLSPeer(sec.repl_port, evil["client_cert"], evil["key"])
        peer.send(C.pb_envelope(C.ENV_PEER_HELLO, b"", msg_id=1, sender="eu"))
        for env in forgeries(seq):
            peer.send(env)
        fr = peer.frames(1, timeout=3)
        peer.close()
        assert fr == [], fr
    except (ssl.SSLError, OSError):
        pass  # refused in the handshake
    wait_until(lambda: metric_refused(sec, "tls") > tls0, 15 * SLOW, interval=0.2,
               what="foreign CA counted")
    tls1 = metric_refused(sec, "tls")

    c = C.SPClient(sec.repl_port)
    c.send(C.sp_frame(C.message(C.pb_envelope(C.ENV_PEER_HELLO, b"", msg_id=1, sender="eu"))))
    for env in forgeries(seq):
        c.send(C.sp_frame(C.message(env)))
    time.sleep(0.5)
    assert c.frames() == []
    c.close()
    wait_until(lambda: metric_refused(sec, "tls") > tls1, 15 * SLOW, interval=0.2,
               what="plain tcp counted")
    wait_until(lambda: any("tls" in e.get("detail", "") for e in audit_refusals(sec)),
               15 * SLOW, interval=0.2, what="tls refusal audited")

    assert users(sec) == users0
    assert login(sec, ("mallory", "owned")) == 401
    assert repl_status(sec)["epoch"] == 1
    pri.start()
    push_and_see(pri, sec, "after")


def test_forgeries_over_plain_tcp_need_the_proof_too(nodes):
    """replication.insecure (loopback only) with keys configured: the proof is
    still required. A peer claiming eu without it gets a challenge and nothing
    else: its META_PUT and its epoch-1000000 heartbeat are refused."""
    certs = nodes.certs("ca", "eu", "us-east")
    port = itlib.free_port()
    sec = nodes("us-east", {"role": "secondary", "listen": "tcp://127.0.0.1:%d" % port,
                            "insecure": True, "tls": certs["us-east"], "primaries": ["eu"]})
    users0 = users(sec)
    c = C.SPClient(port)
    c.send(C.sp_frame(C.message(C.pb_envelope(C.ENV_PEER_HELLO, b"", msg_id=1, sender="eu"))))
    for env in forgeries(1):
        c.send(C.sp_frame(C.message(env)))
    fr = c.wait_frames(3)
    c.close()
    assert len(fr) >= 3, fr
    assert body_of(fr[0], C.ENV_PEER_CHALLENGE), fr[0]
    assert all(b"not authenticated" in ack_error(f) for f in fr[1:3]), fr
    assert refused(sec)["unauthenticated"] >= 2
    wait_until(lambda: len(audit_refusals(sec)) >= 2, 15 * SLOW, interval=0.2, what="audited")
    assert users(sec) == users0
    assert repl_status(sec)["epoch"] == 1 and repl_status(sec)["applied_seq"] == 0


def test_insecure_replication_off_loopback_is_refused_at_start(nodes):
    """replication.insecure with a non-loopback address: the node does not start."""
    n = nodes("bad", {"role": "secondary", "listen": "tcp://0.0.0.0:%d" % itlib.free_port(),
                      "insecure": True}, start=False)
    nodes.mgr.nodes.remove(n)  # never runs: nothing to stop
    cp = run(n._command(), check=False, timeout=30)
    assert cp.returncode != 0 and "only on loopback" in cp.stderr, cp.stderr[-2000:]


def test_dialer_refuses_a_replica_whose_certificate_names_another_node(nodes):
    """us-east presents a certificate of the cluster CA for DNS:wrong.example:
    eu's dialer refuses it (TLS server name), ships nothing, and says so."""
    wrong = nodes.certs("ca", "wrongcert", san="DNS:wrong.example")["wrongcert"]
    pri, sec, certs = None, None, None
    certs = nodes.certs("ca", "eu", "us-east")
    port = itlib.free_port()
    sec = nodes("us-east", {"role": "secondary", "listen": "tls+tcp://127.0.0.1:%d" % port,
                            "tls": dict(certs["us-east"], cert=wrong["cert"], key=wrong["key"]),
                            "primaries": ["eu"]})
    pri = nodes("eu", {"role": "primary", "tls": certs["eu"],
                       "replicas": [{"name": "us-east",
                                     "address": "tls+tcp://127.0.0.1:%d" % port}]})
    itlib.make_image(_As(pri), "trust/app", "1")
    time.sleep(3.0)  # several dial attempts
    r = [x for x in repl_status(pri)["replicas"] if x["name"] == "us-east"][0]
    assert r["state"] == "unreachable" and r["acked_seq"] == 0, r
    assert repl_status(sec)["applied_seq"] == 0


# --------------------------------------------------------------------------
# §4: resync

def test_resync_drops_identities_deleted_on_the_primary(nodes):
    """bob is deleted on the primary while us-east is down and the log is
    trimmed past it; us-east's snapshot resync must drop bob: 401 there too."""
    pri, sec, certs = tls_pair(nodes)
    pri.sections["replication"]["log_retention"] = 1
    create_identity(pri, "user", "bob", roles=["pull"], password="bob-pw-1234567")
    create_identity(pri, "user", "carol", roles=["pull"], password="carol-pw-1234567")
    wait_until(lambda: "bob" in users(sec), 30 * SLOW, interval=0.1, what="bob replicated")
    assert login(sec, ("bob", "bob-pw-1234567")) == 200
    sec.stop()
    pri.stop()
    pri.start()  # with log_retention 1
    r = pri.req("DELETE", "/_georeg/v1/users/bob", auth=pri.admin)
    assert r.status == 204, r
    for i in range(3):
        itlib.make_image(_As(pri), "trust/app", "t%d" % i)
    wait_until(lambda: repl_status(pri)["log_first_seq"] >= repl_status(pri)["head_seq"],
               30 * SLOW, interval=0.2, what="log trimmed")
    assert login(pri, ("bob", "bob-pw-1234567")) == 401
    sec.start()
    wait_synced(pri, sec)
    wait_until(lambda: [x for x in repl_status(pri)["replicas"]
                        if x["name"] == "us-east"][0]["resync"]["count"] >= 1,
               30 * SLOW, interval=0.2, what="resync happened")
    assert "bob" not in users(sec) and "carol" in users(sec)
    assert login(sec, ("bob", "bob-pw-1234567")) == 401
    assert login(sec, ("carol", "carol-pw-1234567")) == 200


def test_after_the_hello_sender_epoch_and_metadata_are_checked(nodes):
    """On a development listener without keys (loopback, insecure), a peer
    that passed the hello as eu is still held to it: a message from another
    sender, an epoch other than the one it said hello with (1000000), a
    metadata key outside id/ and an identity record the admin API would not
    write are each refused and counted; nothing changes."""
    port = itlib.free_port()
    sec = nodes("us-east", {"role": "secondary", "listen": "tcp://127.0.0.1:%d" % port,
                            "insecure": True, "primaries": ["eu"]})
    users0 = users(sec)
    before = refused(sec)
    bad_id = json.dumps({"name": "mallory", "kind": "user", "secret": "plaintext",
                         "grants": [{"repo": "**", "bits": 63}]}).encode()
    msgs = [
        C.pb_envelope(C.ENV_PEER_HELLO, b"", msg_id=1, sender="eu"),
        C.pb_envelope(C.ENV_HEARTBEAT, C.pb_int(1, 5), msg_id=2, sender="mallory"),
        C.pb_envelope(C.ENV_HEARTBEAT, C.pb_int(1, 5), msg_id=3, sender="eu", epoch=1000000),
        C.pb_envelope(C.ENV_BATCH, C.pb_bytes(1, C.pb_event(1, C.EV_META_PUT, tag="x/evil",
                                                             body=b"{}")), msg_id=4, sender="eu"),
        C.pb_envelope(C.ENV_BATCH, C.pb_bytes(1, C.pb_event(1, C.EV_META_PUT, tag="id/mallory",
                                                             body=bad_id)), msg_id=5, sender="eu"),
    ]
    c = C.SPClient(port)
    for m in msgs:
        c.send(C.sp_frame(C.message(m)))
    fr = c.wait_frames(len(msgs))
    c.close()
    assert len(fr) >= len(msgs), fr
    errs = [ack_error(f) for f in fr[:len(msgs)]]
    assert errs[0] == b"", errs
    assert b"sender" in errs[1] and b"epoch 1000000" in errs[2], errs
    assert b"unknown metadata key" in errs[3] and b"refused" in errs[4], errs
    after = refused(sec)
    assert after["sender"] == before["sender"] + 1, after
    assert after["epoch"] == before["epoch"] + 1, after
    assert after["meta"] == before["meta"] + 2, after
    assert users(sec) == users0 and login(sec, ("mallory", "plaintext")) == 401
    st = repl_status(sec)
    assert st["epoch"] == 1 and st["applied_seq"] == 0, st
