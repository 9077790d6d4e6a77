"""Distribution-spec details clients and the spec's current text expect (issue 8,
section 10): reads of references that cannot exist, missing blobs of a manifest,
the final PUT's Content-Range, several tags in one push, Docker-Content-Digest
on every read, and the referrers artifactType filter."""

import json
import os
import uuid

import pytest

import cluster as C
import itlib
from itlib import (EMPTY_JSON, EMPTY_JSON_DIGEST, MT_OCI_CONFIG, MT_OCI_EMPTY,
                   MT_OCI_INDEX, MT_OCI_LAYER, MT_OCI_MANIFEST, descriptor, get_manifest,
                   location, make_image, manifest_bytes, push_blob, put_manifest, sha256,
                   start_upload, wait_until, with_query)

pytestmark = pytest.mark.georeg_only("the current spec text; Distribution 2.8 predates it")
TEST_ALARM = 300 if itlib.ASAN else 120  # seconds for any one test (conftest's _bounded)


def _error(r, status, code):
    assert r.status == status, r
    if r.body:
        assert code in r.error_codes(), r


def _tags(node, repo):
    r = node.req("GET", "/v2/%s/tags/list" % repo)
    if r.status != 200:
        return None
    return r.json().get("tags") or []


# ---- GET/HEAD of a manifest that does not exist: 404 whatever the reference ----

# neither a valid tag nor a valid digest: nothing can be stored under them
BAD_REFS = ["-bad", ".bad", "a+b", "x" * 129, "sha256:nothex", "sha256:" + "A" * 64,
            "sha256:" + "0" * 63, "md5:" + "0" * 32, "sha256:", "a:b"]


@pytest.mark.parametrize("ref", BAD_REFS)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_read_of_invalid_reference_is_404_manifest_unknown(node, repo, method, ref):
    make_image(node, repo, tag="exists", layers=1)
    r = get_manifest(node, repo, ref, method=method)
    assert r.status == 404, r
    if method == "GET":
        assert r.error_codes() == ["MANIFEST_UNKNOWN"], r
    # the well-formed unknown ones agree
    for good in ("nope", sha256(b"never pushed")):
        assert get_manifest(node, repo, good, method=method).status == 404


@pytest.mark.parametrize("ref,code", [("-bad", "TAG_INVALID"), ("a+b", "TAG_INVALID"),
                                      ("sha256:nothex", "DIGEST_INVALID")])
def test_write_of_invalid_reference_is_still_400(node, repo, ref, code):
    img = make_image(node, repo, tag="exists", layers=1)
    _error(put_manifest(node, repo, ref, img["manifest"]), 400, code)
    _error(node.req("DELETE", "/v2/%s/manifests/%s" % (repo, ref)), 400, code)
    assert _tags(node, repo) == ["exists"]


# ---- a manifest whose blobs the repository lacks: 400 MANIFEST_BLOB_UNKNOWN ----

def test_manifest_with_missing_layer_is_400_manifest_blob_unknown(node, repo):
    cfg = b'{"os":"linux","architecture":"amd64"}'
    push_blob(node, repo, cfg)
    layer = os.urandom(300)  # never pushed
    body = manifest_bytes({"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
                           "config": descriptor(MT_OCI_CONFIG, cfg),
                           "layers": [descriptor(MT_OCI_LAYER, layer)]})
    r = put_manifest(node, repo, "t", body)
    _error(r, 400, "MANIFEST_BLOB_UNKNOWN")
    assert sha256(layer) in r.body.decode(), r  # names the missing blob
    assert get_manifest(node, repo, "t").status == 404
    assert get_manifest(node, repo, sha256(body)).status == 404


def test_blob_of_another_repository_is_400_manifest_blob_unknown(node, repo):
    """The blob exists in the registry, but not in this repository (an attacker
    referencing someone else's layer by digest)."""
    other = repo + "-other"
    img = make_image(node, other, tag="v1", layers=1)
    r = put_manifest(node, repo, "stolen", img["manifest"])
    _error(r, 400, "MANIFEST_BLOB_UNKNOWN")
    assert get_manifest(node, repo, "stolen").status == 404


def test_index_with_missing_child_is_400_manifest_blob_unknown(node, repo):
    child = make_image(node, repo, layers=1)
    absent = manifest_bytes({"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST, "x": 1})
    idx = manifest_bytes({"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": [
        descriptor(MT_OCI_MANIFEST, child["manifest"]), descriptor(MT_OCI_MANIFEST, absent)]})
    _error(put_manifest(node, repo, "multi", idx, MT_OCI_INDEX), 400, "MANIFEST_BLOB_UNKNOWN")
    assert get_manifest(node, repo, "multi").status == 404


# ---- the final PUT's Content-Range must continue the upload: 416 with Range ----

def _patch(node, loc, data, start):
    r = node.req("PATCH", loc, body=data, headers={
        "Content-Type": "application/octet-stream",
        "Content-Range": "%d-%d" % (start, start + len(data) - 1)})
    assert r.status == 202, r
    return location(node.url, r)


@pytest.mark.parametrize("start", [0, 50, 101, 5000])
def test_final_put_with_discontinuous_range_is_416(node, repo, start):
    first, last = os.urandom(100), os.urandom(100)
    loc = _patch(node, start_upload(node, repo), first, 0)
    d = sha256(first + last)
    r = node.req("PUT", with_query(loc, digest=d), body=last, headers={
        "Content-Type": "application/octet-stream",
        "Content-Range": "%d-%d" % (start, start + len(last) - 1)})
    _error(r, 416, "RANGE_INVALID")
    assert r.header("Range") == "0-99", r  # where the upload stands
    assert r.header("Location"), r
    # nothing was appended: the session goes on from 100
    st = node.req("GET", loc)
    assert st.status == 204 and st.header("Range") == "0-99", st
    r = node.req("PUT", with_query(loc, digest=d), body=last, headers={
        "Content-Type": "application/octet-stream", "Content-Range": "100-199"})
    assert r.status == 201, r
    g = node.req("GET", "/v2/%s/blobs/%s" % (repo, d))
    assert g.status == 200 and g.body == first + last, g


def test_final_put_range_longer_than_body_is_416(node, repo):
    first, last = os.urandom(100), os.urandom(10)
    loc = _patch(node, start_upload(node, repo), first, 0)
    r = node.req("PUT", with_query(loc, digest=sha256(first + last)), body=last, headers={
        "Content-Type": "application/octet-stream", "Content-Range": "100-199"})
    _error(r, 416, "RANGE_INVALID")
    assert r.header("Range") == "0-99", r


# ---- several tags in one push: PUT .../manifests/DIGEST?tag=a&tag=b ----

def _put_tags(node, repo, body, tags, ref=None):
    q = "&".join("tag=%s" % t for t in tags)
    return node.req("PUT", "/v2/%s/manifests/%s?%s" % (repo, ref or sha256(body), q),
                    body=body, headers={"Content-Type": MT_OCI_MANIFEST})


def _image_body(node, repo):
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "n": uuid.uuid4().hex}).encode()
    push_blob(node, repo, cfg)
    return manifest_bytes({"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
                           "config": descriptor(MT_OCI_CONFIG, cfg), "layers": []})


def _oci_tags(r):
    return r.headers.get_all("OCI-Tag") or []


def test_push_with_several_tags(node, repo):
    body = _image_body(node, repo)
    d = sha256(body)
    r = _put_tags(node, repo, body, ["v1", "v1.2", "latest", "v1"])
    assert r.status == 201, r
    assert r.header("Docker-Content-Digest") == d, r
    assert _oci_tags(r) == ["v1", "v1.2", "latest"], r  # one per tag, duplicates once
    for t in ("v1", "v1.2", "latest"):
        g = get_manifest(node, repo, t)
        assert g.status == 200 and g.body == body, (t, g)
    assert sorted(_tags(node, repo)) == ["latest", "v1", "v1.2"]
    # a later push moves some of them
    body2 = _image_body(node, repo)
    r = _put_tags(node, repo, body2, ["latest", "v2"])
    assert r.status == 201 and _oci_tags(r) == ["latest", "v2"], r
    assert get_manifest(node, repo, "latest").body == body2
    assert get_manifest(node, repo, "v1").body == body
    # deleting the first manifest takes its remaining tags along
    assert node.req("DELETE", "/v2/%s/manifests/%s" % (repo, d)).status == 202
    assert sorted(_tags(node, repo)) == ["latest", "v2"]


def test_push_by_digest_without_tag_has_no_oci_tag(node, repo):
    body = _image_body(node, repo)
    r = put_manifest(node, repo, sha256(body), body)
    assert r.status == 201 and _oci_tags(r) == [], r


def test_sixteen_tags_are_accepted(node, repo):
    body = _image_body(node, repo)
    tags = ["t%02d" % i for i in range(16)]
    r = _put_tags(node, repo, body, tags)
    assert r.status == 201 and _oci_tags(r) == tags, r
    assert sorted(_tags(node, repo)) == tags


@pytest.mark.parametrize("tags", [["good", "-bad"], ["ok1", "x" * 129, "ok2"], ["a+b"],
                                  ["t%02d" % i for i in range(17)], ["good", ""],
                                  ["good", "%2e"]])
def test_several_tags_one_invalid_stores_nothing(node, repo, tags):
    """Every tag is checked before anything is stored: no manifest, no tag."""
    make_image(node, repo, tag="base", layers=1)
    body = _image_body(node, repo)
    r = _put_tags(node, repo, body, tags)
    _error(r, 400, "TAG_INVALID")
    assert get_manifest(node, repo, sha256(body)).status == 404
    assert _tags(node, repo) == ["base"]


def test_several_tags_with_a_missing_blob_store_nothing(node, repo):
    make_image(node, repo, tag="base", layers=1)
    body = manifest_bytes({"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
                           "config": descriptor(MT_OCI_CONFIG, b'{"never":1}'), "layers": []})
    _error(_put_tags(node, repo, body, ["a", "b"]), 400, "MANIFEST_BLOB_UNKNOWN")
    assert _tags(node, repo) == ["base"]


def test_several_tags_on_a_digest_mismatch_store_nothing(node, repo):
    make_image(node, repo, tag="base", layers=1)
    body = _image_body(node, repo)
    _error(_put_tags(node, repo, body, ["a", "b"], ref=sha256(b"other")), 400, "DIGEST_INVALID")
    assert _tags(node, repo) == ["base"]


def test_several_tags_survive_kill9(fresh_node, repo):
    body = _image_body(fresh_node, repo)
    tags = ["k%d" % i for i in range(8)]
    assert _put_tags(fresh_node, repo, body, tags).status == 201
    fresh_node.kill9()
    fresh_node.start()
    assert sorted(_tags(fresh_node, repo)) == tags
    for t in tags:
        assert get_manifest(fresh_node, repo, t).body == body


@pytest.fixture
def pair(tmp_path_factory, request):
    cl = C.Cluster(str(tmp_path_factory.mktemp("cl")), label=request.node.name)
    try:
        s = cl.secondary("s1")
        p = cl.make_primary("p", [cl.replica(s)])
        C.wait_state(p, "s1", "in-sync")
    except BaseException:
        cl.close()
        raise
    yield p, s
    problems = cl.close()
    if problems:
        pytest.fail("node problems at teardown:\n  " + "\n  ".join(problems), pytrace=False)


def test_several_tags_replicate(pair, repo):
    p, s = pair
    body = _image_body(p, repo)
    tags = ["r%d" % i for i in range(5)]
    assert _put_tags(p, repo, body, tags).status == 201
    wait_until(lambda: sorted(_tags(s, repo) or []) == tags, 30 * C.SLOW,
               what="tags on the secondary")
    for t in tags:
        st, d, got = C.manifest(s, repo, t)
        assert st == 200 and d == sha256(body) and got == body, (t, st)
    # the secondary keeps refusing writes, ?tag= or not
    r = _put_tags(s, repo, body, ["nope"])
    assert r.status == 403, r


# ---- Docker-Content-Digest on every manifest and blob GET and HEAD ----

def test_docker_content_digest_on_every_read(node, repo):
    img = make_image(node, repo, tag="v1", layers=1, layer_size=5000)
    d = img["digest"]
    for method in ("GET", "HEAD"):
        for ref in ("v1", d):
            r = get_manifest(node, repo, ref, method=method)
            assert r.status == 200 and r.header("Docker-Content-Digest") == d, (method, ref, r)
        r = node.req(method, "/v2/%s/manifests/v1" % repo, headers={"If-None-Match": '"%s"' % d})
        assert r.status == 304 and r.header("Docker-Content-Digest") == d, r
        for bd, data in img["blobs"].items():
            r = node.req(method, "/v2/%s/blobs/%s" % (repo, bd))
            assert r.status == 200 and r.header("Docker-Content-Digest") == bd, (method, r)
            r = node.req(method, "/v2/%s/blobs/%s" % (repo, bd), headers={"Range": "bytes=1-3"})
            assert r.status == 206 and r.header("Docker-Content-Digest") == bd, (method, r)


# ---- referrers: artifactType filters on the field, not on the JSON text ----

def _artifact(node, repo, subject, artifact_type=None, config_type=None, annotations=None):
    payload = os.urandom(64)
    push_blob(node, repo, payload)
    if config_type:
        cfg = json.dumps({"n": uuid.uuid4().hex}).encode()
        push_blob(node, repo, cfg)
        config = descriptor(config_type, cfg)
    else:
        push_blob(node, repo, EMPTY_JSON)
        config = {"mediaType": MT_OCI_EMPTY, "digest": EMPTY_JSON_DIGEST, "size": 2}
    m = {"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST, "config": config,
         "layers": [descriptor("application/octet-stream", payload)],
         "subject": {"mediaType": MT_OCI_MANIFEST, "digest": subject["digest"],
                     "size": len(subject["manifest"])}}
    if artifact_type:
        m["artifactType"] = artifact_type
    if annotations:
        m["annotations"] = annotations
    body = manifest_bytes(m)
    r = put_manifest(node, repo, sha256(body), body)
    assert r.status == 201, r
    return sha256(body)


def _referrers(node, repo, subject, artifact_type):
    r = node.req("GET", "/v2/%s/referrers/%s?artifactType=%s" % (repo, subject, artifact_type))
    assert r.status == 200, r
    assert r.header("OCI-Filters-Applied") == "artifactType", r
    return sorted(x["digest"] for x in r.json()["manifests"])


def test_referrers_filter_ignores_annotation_named_artifact_type(node, repo):
    subj = make_image(node, repo, tag="base", layers=1)
    evil = "application/vnd.example.evil"
    decoy = _artifact(node, repo, subj, artifact_type="application/vnd.example.sbom",
                      annotations={"artifactType": evil, "x": '"artifactType":"%s"' % evil})
    real = _artifact(node, repo, subj, artifact_type=evil)
    by_cfg = _artifact(node, repo, subj, config_type="application/vnd.example.sig.config",
                       annotations={"artifactType": evil})
    assert _referrers(node, repo, subj["digest"], evil) == [real]
    assert _referrers(node, repo, subj["digest"], "application/vnd.example.sbom") == [decoy]
    # without artifactType the config's media type is the artifact type
    assert _referrers(node, repo, subj["digest"],
                      "application/vnd.example.sig.config") == [by_cfg]
    assert _referrers(node, repo, subj["digest"], "application/vnd.none") == []
    # a prefix of a type is not the type
    assert _referrers(node, repo, subj["digest"], "application/vnd.example") == []
