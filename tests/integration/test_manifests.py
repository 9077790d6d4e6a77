"""Manifests (OCI and Docker, images and indexes), tags, catalog, referrers,
deletes."""

import json
import os
import uuid

import pytest

from itlib import (EMPTY_JSON, EMPTY_JSON_DIGEST, MT_DOCKER_CONFIG, MT_DOCKER_LAYER,
                   MT_DOCKER_LIST, MT_DOCKER_MANIFEST, MT_OCI_CONFIG, MT_OCI_EMPTY,
                   MT_OCI_INDEX, MT_OCI_MANIFEST, descriptor, get_manifest,
                   make_image, manifest_bytes, parse_link_next, push_blob, put_manifest,
                   sha256)


def test_put_and_get_manifest_by_tag_and_digest(node, repo):
    img = make_image(node, repo, tag="v1")
    m, d = img["manifest"], img["digest"]
    put = img["put"]
    assert put.header("Docker-Content-Digest") == d, put
    assert put.header("Location"), put
    for ref in ("v1", d):
        r = get_manifest(node, repo, ref)
        assert r.status == 200, r
        assert r.body == m, "manifest not returned byte-exact"
        assert r.header("Content-Type") == MT_OCI_MANIFEST, r
        assert r.header("Docker-Content-Digest") == d, r
        h = get_manifest(node, repo, ref, method="HEAD")
        assert h.status == 200, h
        assert int(h.header("Content-Length")) == len(m), h
        assert h.header("Docker-Content-Digest") == d, h
        assert h.header("Content-Type") == MT_OCI_MANIFEST, h
        assert h.body == b""


def test_manifest_bytes_are_kept_exactly(node, repo):
    """Whitespace and key order are the client's: the digest is of its bytes."""
    cfg = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    push_blob(node, repo, cfg)
    m = ('{\n   "schemaVersion" : 2,\n"mediaType":"%s",\n  "config": {"size": %d, '
         '"digest": "%s", "mediaType": "%s"},\n "layers": [ ]\n}\n\n'
         % (MT_OCI_MANIFEST, len(cfg), sha256(cfg), MT_OCI_CONFIG)).encode()
    r = put_manifest(node, repo, "odd", m)
    assert r.status == 201, r
    assert r.header("Docker-Content-Digest") == sha256(m), r
    g = get_manifest(node, repo, sha256(m))
    assert g.status == 200 and g.body == m, g


def test_docker_schema2_manifest(node, repo):
    layer = os.urandom(3000)
    cfg = json.dumps({"architecture": "amd64", "os": "linux",
                      "rootfs": {"type": "layers", "diff_ids": [sha256(layer)]}}).encode()
    push_blob(node, repo, layer)
    push_blob(node, repo, cfg)
    m = manifest_bytes({"schemaVersion": 2, "mediaType": MT_DOCKER_MANIFEST,
                        "config": descriptor(MT_DOCKER_CONFIG, cfg),
                        "layers": [descriptor(MT_DOCKER_LAYER, layer)]})
    r = put_manifest(node, repo, "d1", m, MT_DOCKER_MANIFEST)
    assert r.status == 201, r
    g = get_manifest(node, repo, "d1")
    assert g.status == 200 and g.body == m, g
    assert g.header("Content-Type") == MT_DOCKER_MANIFEST, g
    assert g.header("Docker-Content-Digest") == sha256(m)


def _index(children, media_type=MT_OCI_INDEX, child_type=MT_OCI_MANIFEST):
    plats = [{"architecture": a, "os": "linux"} for a in ("amd64", "arm64", "s390x")]
    return manifest_bytes({"schemaVersion": 2, "mediaType": media_type, "manifests": [
        descriptor(child_type, c, platform=plats[i]) for i, c in enumerate(children)]})


def test_oci_image_index(node, repo):
    a = make_image(node, repo, layers=1)
    b = make_image(node, repo, layers=2)
    idx = _index([a["manifest"], b["manifest"]])
    r = put_manifest(node, repo, "multi", idx, MT_OCI_INDEX)
    assert r.status == 201, r
    assert r.header("Docker-Content-Digest") == sha256(idx)
    g = get_manifest(node, repo, "multi")
    assert g.status == 200 and g.body == idx, g
    assert g.header("Content-Type") == MT_OCI_INDEX, g
    for child in (a, b):
        c = get_manifest(node, repo, child["digest"])
        assert c.status == 200 and c.body == child["manifest"]


def test_docker_manifest_list(node, repo):
    children = []
    for _ in range(2):
        layer = os.urandom(1000)
        cfg = json.dumps({"architecture": "amd64", "os": "linux", "n": uuid.uuid4().hex,
                          "rootfs": {"type": "layers", "diff_ids": [sha256(layer)]}}).encode()
        push_blob(node, repo, layer)
        push_blob(node, repo, cfg)
        m = manifest_bytes({"schemaVersion": 2, "mediaType": MT_DOCKER_MANIFEST,
                            "config": descriptor(MT_DOCKER_CONFIG, cfg),
                            "layers": [descriptor(MT_DOCKER_LAYER, layer)]})
        assert put_manifest(node, repo, sha256(m), m, MT_DOCKER_MANIFEST).status == 201
        children.append(m)
    lst = _index(children, MT_DOCKER_LIST, MT_DOCKER_MANIFEST)
    r = put_manifest(node, repo, "list", lst, MT_DOCKER_LIST)
    assert r.status == 201, r
    g = get_manifest(node, repo, "list")
    assert g.status == 200 and g.body == lst, g
    assert g.header("Content-Type") == MT_DOCKER_LIST


def test_tag_moves_to_new_manifest(node, repo):
    a = make_image(node, repo, tag="moving", layers=1)
    b = make_image(node, repo, layers=1)
    assert put_manifest(node, repo, "moving", b["manifest"]).status == 201
    g = get_manifest(node, repo, "moving")
    assert g.body == b["manifest"]
    assert get_manifest(node, repo, a["digest"]).body == a["manifest"]


def test_unknown_manifest_is_404_manifest_unknown(node, repo):
    make_image(node, repo, tag="exists", layers=1)
    for ref in ("nope", sha256(b"nothing")):
        r = get_manifest(node, repo, ref)
        assert r.status == 404, r
        assert "MANIFEST_UNKNOWN" in r.error_codes(), r


def test_tags_list_of_unknown_repository_is_404_name_unknown(node, repo):
    r = node.req("GET", "/v2/%s/tags/list" % repo)
    assert r.status == 404, r
    assert "NAME_UNKNOWN" in r.error_codes(), r


# ---- pagination ----

def _collect_pages(node, path, key, n):
    """Follows Link rel=next from path; returns (items, pages)."""
    items, pages = [], 0
    url = path
    for _ in range(100):
        r = node.req("GET", url)
        assert r.status == 200, r
        got = r.json()[key] or []
        assert len(got) <= n, "page larger than n=%d: %r" % (n, got)
        items += got
        pages += 1
        nxt = parse_link_next(r.header("Link"))
        if not nxt:
            return items, pages
        assert len(got) == n, "short page %r but a Link header %r" % (got, r.header("Link"))
        url = nxt
    raise AssertionError("pagination did not end after 100 pages")


@pytest.mark.georeg_only("Distribution 2.8 ignores n/last on tags/list")
def test_tags_list_pagination(node, repo):
    img = make_image(node, repo, layers=1)
    tags = ["t%02d" % i for i in range(7)] + ["a-first", "z.last", "Mixed_Case"]
    for t in tags:
        assert put_manifest(node, repo, t, img["manifest"]).status == 201
    full = node.req("GET", "/v2/%s/tags/list" % repo)
    assert full.status == 200, full
    body = full.json()
    assert body["name"] == repo
    assert sorted(body["tags"]) == sorted(tags)
    assert body["tags"] == sorted(body["tags"]), "tags not in lexical order: %r" % body["tags"]

    items, pages = _collect_pages(node, "/v2/%s/tags/list?n=3" % repo, "tags", 3)
    assert items == body["tags"]
    assert pages == 4

    r = node.req("GET", "/v2/%s/tags/list?n=2&last=t03" % repo)
    assert r.status == 200, r
    assert r.json()["tags"] == ["t04", "t05"], r
    assert parse_link_next(r.header("Link")), r

    r = node.req("GET", "/v2/%s/tags/list?last=t05" % repo)
    assert r.json()["tags"] == ["t06", "z.last"], r


def test_catalog_pagination(fresh_node):
    node = fresh_node
    names = sorted(["cat/a", "cat/b/c", "cat/bx", "cat/z", "other", "library/busybox", "x0"])
    for name in names:
        make_image(node, name, tag="latest", layers=1)
    full = node.req("GET", "/v2/_catalog")
    assert full.status == 200, full
    assert full.json()["repositories"] == names

    items, pages = _collect_pages(node, "/v2/_catalog?n=2", "repositories", 2)
    assert items == names
    assert pages == 4

    r = node.req("GET", "/v2/_catalog?n=2&last=cat/b/c")
    assert r.status == 200, r
    assert r.json()["repositories"] == ["cat/bx", "cat/z"]
    assert parse_link_next(r.header("Link")), r


# ---- deletes ----

def test_delete_manifest_by_digest(node, repo):
    img = make_image(node, repo, tag="del", layers=1)
    r = node.req("DELETE", "/v2/%s/manifests/%s" % (repo, img["digest"]))
    assert r.status == 202, r
    g = get_manifest(node, repo, img["digest"])
    assert g.status == 404, g
    assert "MANIFEST_UNKNOWN" in g.error_codes(), g
    g = get_manifest(node, repo, "del")
    assert g.status == 404, "tag still resolves after its manifest was deleted: %r" % g


@pytest.mark.georeg_only("Distribution 2.8 does not delete tags (DELETE by tag is UNSUPPORTED)")
def test_delete_tag(node, repo):
    img = make_image(node, repo, tag="keep", layers=1)
    assert put_manifest(node, repo, "drop", img["manifest"]).status == 201
    r = node.req("DELETE", "/v2/%s/manifests/drop" % repo)
    assert r.status == 202, r
    assert get_manifest(node, repo, "drop").status == 404
    assert get_manifest(node, repo, "keep").status == 200
    assert get_manifest(node, repo, img["digest"]).status == 200
    tags = node.req("GET", "/v2/%s/tags/list" % repo).json()["tags"]
    assert tags == ["keep"]


def test_delete_unknown_manifest_is_404(node, repo):
    make_image(node, repo, tag="x", layers=1)
    r = node.req("DELETE", "/v2/%s/manifests/%s" % (repo, sha256(b"nothing here")))
    assert r.status == 404, r
    assert "MANIFEST_UNKNOWN" in r.error_codes(), r


# ---- subject, referrers ----

def _artifact(node, repo, subject, artifact_type=None, config_type=None, payload=None,
              annotations=None):
    """Pushes an artifact manifest pointing at subject; returns (bytes, put response)."""
    payload = payload if payload is not None else os.urandom(200)
    push_blob(node, repo, payload)
    if config_type:
        cfg = json.dumps({"kind": config_type, "n": uuid.uuid4().hex}).encode()
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
    return body, r


@pytest.mark.georeg_only("Distribution 2.8 has no referrers API and sends no OCI-Subject")
def test_put_manifest_with_subject_returns_oci_subject(node, repo):
    subj = make_image(node, repo, tag="base", layers=1)
    _, r = _artifact(node, repo, subj, artifact_type="application/vnd.example.sbom")
    assert r.status == 201, r
    assert r.header("OCI-Subject") == subj["digest"], r


@pytest.mark.georeg_only("Distribution 2.8 has no referrers API")
def test_referrers_api_lists_artifacts_with_subject(node, repo):
    subj = make_image(node, repo, tag="base", layers=1)
    sbom, r1 = _artifact(node, repo, subj, artifact_type="application/vnd.example.sbom",
                         annotations={"org.example.k": "v"})
    sig, r2 = _artifact(node, repo, subj, config_type="application/vnd.example.sig.config")
    assert r1.status == 201 and r2.status == 201, (r1, r2)
    other = make_image(node, repo, layers=1)
    _artifact(node, repo, other, artifact_type="application/vnd.example.sbom")

    r = node.req("GET", "/v2/%s/referrers/%s" % (repo, subj["digest"]))
    assert r.status == 200, r
    assert r.header("Content-Type", "").startswith(MT_OCI_INDEX), r
    idx = r.json()
    assert idx["schemaVersion"] == 2
    assert idx.get("mediaType") == MT_OCI_INDEX
    by_digest = {d["digest"]: d for d in idx["manifests"]}
    assert set(by_digest) == {sha256(sbom), sha256(sig)}, idx
    d = by_digest[sha256(sbom)]
    assert d["mediaType"] == MT_OCI_MANIFEST
    assert d["size"] == len(sbom)
    assert d["artifactType"] == "application/vnd.example.sbom"
    assert d.get("annotations") == {"org.example.k": "v"}
    # without artifactType, the config's media type is the artifact type
    assert by_digest[sha256(sig)]["artifactType"] == "application/vnd.example.sig.config"
    assert r.header("OCI-Filters-Applied") in (None, ""), r


@pytest.mark.georeg_only("Distribution 2.8 has no referrers API")
def test_referrers_artifact_type_filter(node, repo):
    subj = make_image(node, repo, tag="base", layers=1)
    sbom, _ = _artifact(node, repo, subj, artifact_type="application/vnd.example.sbom")
    _artifact(node, repo, subj, artifact_type="application/vnd.example.sig")
    r = node.req("GET", "/v2/%s/referrers/%s?artifactType=application/vnd.example.sbom"
                 % (repo, subj["digest"]))
    assert r.status == 200, r
    assert r.header("OCI-Filters-Applied") == "artifactType", r
    assert [d["digest"] for d in r.json()["manifests"]] == [sha256(sbom)], r
    r = node.req("GET", "/v2/%s/referrers/%s?artifactType=application/vnd.none"
                 % (repo, subj["digest"]))
    assert r.status == 200, r
    assert r.json()["manifests"] == [], r


@pytest.mark.georeg_only("Distribution 2.8 has no referrers API")
def test_referrers_of_digest_without_referrers_is_empty_index(node, repo):
    make_image(node, repo, tag="base", layers=1)
    r = node.req("GET", "/v2/%s/referrers/%s" % (repo, sha256(b"no such manifest")))
    assert r.status == 200, r
    idx = r.json()
    assert idx["schemaVersion"] == 2 and idx["manifests"] == [], idx


@pytest.mark.georeg_only("Distribution 2.8 has no referrers API")
def test_referrers_forget_a_deleted_artifact(node, repo):
    subj = make_image(node, repo, tag="base", layers=1)
    art, _ = _artifact(node, repo, subj, artifact_type="application/vnd.example.sbom")
    assert node.req("DELETE", "/v2/%s/manifests/%s" % (repo, sha256(art))).status == 202
    r = node.req("GET", "/v2/%s/referrers/%s" % (repo, subj["digest"]))
    assert r.status == 200 and r.json()["manifests"] == [], r


@pytest.mark.georeg_only("Distribution 2.8 has no referrers API")
def test_referrers_with_invalid_digest_is_400(node, repo):
    make_image(node, repo, tag="base", layers=1)
    r = node.req("GET", "/v2/%s/referrers/sha256:nothex" % repo)
    assert r.status == 400, r
    assert "DIGEST_INVALID" in r.error_codes(), r


