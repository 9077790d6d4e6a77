"""Crash loop (issue 8 §7): four writers push blobs (monolithic and chunked),
manifests under new tags, move a tag, push untagged manifests by digest and
DELETE them, and re-push what exists; the node is SIGKILLed at a random point
every 1-3 s. After every restart: every acknowledged push is there, every
acknowledged delete stays deleted (by digest, GET and HEAD).

GEOREG_CRASH_ROUNDS sets the number of kills (CI default 6; run 50+ locally)."""

import os
import random
import threading
import time

import pytest

from itlib import get_manifest, make_image, push_blob, push_blob_chunked, put_manifest, sha256

ROUNDS = int(os.environ.get("GEOREG_CRASH_ROUNDS", "6"))
TEST_ALARM = 120 + ROUNDS * 60


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.blobs = {}        # (repo, digest) -> size
        self.manifests = {}    # (repo, digest) -> body, acknowledged and not deleted
        self.tags = {}         # (repo, tag) -> set of acceptable digests
        self.deleted = set()   # (repo, digest), acknowledged deletes
        self.uncertain = set()  # (repo, digest) whose delete was in flight at a kill
        self.killing = False
        self.errors = []


def _w_blobs(node, st, rnd):
    repo = "cl/blobs"
    while True:
        data = os.urandom(rnd.choice([1, 900, 30_000, 64_000, 70_000, 300_000]))
        d = (push_blob if rnd.random() < 0.5 else push_blob_chunked)(node, repo, data)
        with st.lock:
            st.blobs[(repo, d)] = len(data)


def _w_tags(node, st, rnd):
    repo = "cl/tags"
    while True:
        tag = "t%s" % os.urandom(5).hex()
        img = make_image(node, repo, tag=tag, layers=1, layer_size=rnd.choice([500, 20_000]))
        with st.lock:
            st.manifests[(repo, img["digest"])] = img["manifest"]
            st.tags[(repo, tag)] = {img["digest"]}


def _w_moves(node, st, rnd):
    repo = "cl/move"
    imgs = [make_image(node, repo, layers=1, layer_size=300) for _ in range(3)]
    with st.lock:
        for img in imgs:
            st.manifests[(repo, img["digest"])] = img["manifest"]
    while True:
        img = rnd.choice(imgs)
        key = (repo, "moving")
        with st.lock:
            before = set(st.tags.get(key, set()))
            st.tags[key] = before | {img["digest"]}  # in flight: either is fine
        r = put_manifest(node, repo, "moving", img["manifest"])
        assert r.status == 201, r
        with st.lock:
            st.tags[key] = {img["digest"]}


def _w_deletes(node, st, rnd):
    repo = "cl/del"
    while True:
        img = make_image(node, repo, layers=1, layer_size=rnd.choice([200, 9_000]))
        key = (repo, img["digest"])
        with st.lock:
            st.manifests[key] = img["manifest"]
        if rnd.random() < 0.3:  # idempotent re-push
            r = put_manifest(node, repo, img["digest"], img["manifest"])
            assert r.status == 201, r
        with st.lock:
            del st.manifests[key]
            st.uncertain.add(key)
        r = node.req("DELETE", "/v2/%s/manifests/%s" % key)
        assert r.status == 202, r
        with st.lock:
            st.uncertain.discard(key)
            st.deleted.add(key)


def _run_writer(fn, node, st, seed):
    rnd = random.Random(seed)
    try:
        fn(node, st, rnd)
    except Exception as e:  # the kill ends every writer
        with st.lock:
            if not st.killing:
                st.errors.append("%s failed while the node was up: %r" % (fn.__name__, e))


def _verify(node, st, rnd, rnd_no):
    with st.lock:
        deleted = sorted(st.deleted)
        manifests = dict(st.manifests)
        tags = {k: set(v) for k, v in st.tags.items()}
        blobs = dict(st.blobs)
    for repo, d in deleted:
        for method in ("GET", "HEAD"):
            r = get_manifest(node, repo, d, method=method)
            assert r.status == 404, ("round %d: deleted manifest %s in %s answers %d (%s)"
                                     % (rnd_no, d, repo, r.status, method))
    for (repo, d), body in manifests.items():
        r = get_manifest(node, repo, d)
        assert r.status == 200 and r.body == body, (
            "round %d: acknowledged manifest %s in %s: %r" % (rnd_no, d, repo, r))
    for (repo, tag), ok in tags.items():
        r = get_manifest(node, repo, tag)
        assert r.status == 200 and sha256(r.body) in ok, (
            "round %d: acknowledged tag %s:%s: %r" % (rnd_no, repo, tag, r))
    keys = sorted(blobs)
    for repo, d in rnd.sample(keys, min(300, len(keys))):
        r = node.req("HEAD", "/v2/%s/blobs/%s" % (repo, d))
        assert r.status == 200 and int(r.header("Content-Length")) == blobs[(repo, d)], (
            "round %d: acknowledged blob %s in %s: %r" % (rnd_no, d, repo, r))


@pytest.mark.georeg_only("crash loop of georeg's store")
def test_deletes_stay_deleted_across_a_crash_loop(fresh_node):
    node = fresh_node
    st = State()
    seed = int(os.environ.get("GEOREG_CRASH_SEED", str(int(time.time()))))
    rnd = random.Random(seed)
    print("crash loop seed=%d rounds=%d" % (seed, ROUNDS))
    for round_no in range(1, ROUNDS + 1):
        st.killing = False
        threads = [threading.Thread(target=_run_writer, args=(fn, node, st, seed * 10 + i + round_no * 100),
                                    daemon=True)
                   for i, fn in enumerate((_w_blobs, _w_tags, _w_moves, _w_deletes))]
        for t in threads:
            t.start()
        time.sleep(rnd.uniform(1.0, 3.0))
        with st.lock:
            st.killing = True
        node.kill9()
        for t in threads:
            t.join(60)
            assert not t.is_alive(), "a writer did not stop after the kill"
        assert not st.errors, st.errors
        node.start()
        _verify(node, st, rnd, round_no)
    with st.lock:
        print("crash loop: %d deleted, %d manifests, %d tags, %d blobs checked" %
              (len(st.deleted), len(st.manifests), len(st.tags), len(st.blobs)))
    assert st.deleted, "the loop deleted nothing: it tested nothing"
