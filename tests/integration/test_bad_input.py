"""Bad input, one case per test: each gets a clear OCI error and loses or
stores nothing."""

import json
import os
import socket

import pytest

from itlib import (IS_DISTRIBUTION, MT_OCI_CONFIG, MT_OCI_INDEX, MT_OCI_LAYER,
                   MT_OCI_MANIFEST, descriptor, get_manifest, location, make_image,
                   manifest_bytes, push_blob, put_manifest, sha256, split_url, start_upload,
                   with_query)


def _assert_error(r, status, code):
    assert r.status == status, r
    assert code in r.error_codes(), r
    # the OCI error body: {"errors":[{"code":..,"message":..,...}]}
    for e in r.json()["errors"]:
        assert isinstance(e.get("code"), str) and isinstance(e.get("message"), str), r


def _blob_absent(node, repo, digest):
    r = node.req("HEAD", "/v2/%s/blobs/%s" % (repo, digest))
    assert r.status == 404, "blob %s is stored: %r" % (digest, r)


# ---- uploads ----

def test_digest_mismatch_on_finish_stores_nothing(node, repo):
    data = os.urandom(20_000)
    wrong = sha256(b"something else entirely")
    loc = start_upload(node, repo)
    r = node.req("PATCH", loc, body=data, headers={"Content-Range": "0-19999",
                                                    "Content-Type": "application/octet-stream"})
    assert r.status == 202, r
    r = node.req("PUT", with_query(location(node.url, r), digest=wrong))
    _assert_error(r, 400, "DIGEST_INVALID")
    _blob_absent(node, repo, wrong)
    _blob_absent(node, repo, sha256(data))


@pytest.mark.georeg_only("Distribution 2.8 ignores ?digest= on POST")
def test_digest_mismatch_on_monolithic_post_stores_nothing(node, repo):
    data = os.urandom(5000)
    wrong = sha256(b"not this")
    r = node.req("POST", "/v2/%s/blobs/uploads/?digest=%s" % (repo, wrong), body=data,
                 headers={"Content-Type": "application/octet-stream"})
    _assert_error(r, 400, "DIGEST_INVALID")
    _blob_absent(node, repo, wrong)
    _blob_absent(node, repo, sha256(data))


def test_malformed_digest_on_finish_is_digest_invalid(node, repo):
    data = os.urandom(100)
    loc = start_upload(node, repo)
    r = node.req("PUT", with_query(loc, digest="sha256:not-hex"), body=data,
                 headers={"Content-Type": "application/octet-stream"})
    _assert_error(r, 400, "DIGEST_INVALID")
    _blob_absent(node, repo, sha256(data))


def test_malformed_digest_on_blob_get_is_digest_invalid(node, repo):
    push_blob(node, repo, b"exists")
    r = node.req("GET", "/v2/%s/blobs/sha256:xyz" % repo)
    _assert_error(r, 400, "DIGEST_INVALID")


@pytest.mark.georeg_only("Distribution 2.8 ignores Content-Range on PATCH")
def test_out_of_order_chunk_is_416(node, repo):
    data = os.urandom(3000)
    loc = start_upload(node, repo)
    r = node.req("PATCH", loc, body=data[:1000], headers={"Content-Range": "0-999"})
    assert r.status == 202, r
    loc = location(node.url, r)
    r = node.req("PATCH", loc, body=data[2000:], headers={"Content-Range": "2000-2999"})
    assert r.status == 416, r
    # the upload keeps what it had and can still be finished
    st = node.req("GET", loc)
    assert st.status == 204 and st.header("Range") == "0-999", st
    r = node.req("PATCH", loc, body=data[1000:], headers={"Content-Range": "1000-2999"})
    assert r.status == 202, r
    r = node.req("PUT", with_query(location(node.url, r), digest=sha256(data)))
    assert r.status == 201, r
    assert node.req("GET", "/v2/%s/blobs/%s" % (repo, sha256(data))).body == data


@pytest.mark.georeg_only("Distribution 2.8 ignores Content-Range on PATCH")
def test_repeated_chunk_is_416(node, repo):
    loc = start_upload(node, repo)
    r = node.req("PATCH", loc, body=b"a" * 100, headers={"Content-Range": "0-99"})
    assert r.status == 202, r
    r = node.req("PATCH", location(node.url, r), body=b"a" * 100,
                 headers={"Content-Range": "0-99"})
    assert r.status == 416, r


@pytest.mark.georeg_only("Distribution 2.8 ignores Content-Range on PATCH")
def test_first_chunk_not_at_zero_is_416(node, repo):
    loc = start_upload(node, repo)
    r = node.req("PATCH", loc, body=b"b" * 100, headers={"Content-Range": "100-199"})
    assert r.status == 416, r


def test_truncated_chunk_then_finish_stores_nothing(node, repo):
    """The client promises 10000 bytes, sends 5000 and hangs up."""
    data = os.urandom(10_000)
    loc = start_upload(node, repo)
    path = split_url(loc)[2]
    s = socket.create_connection(("127.0.0.1", node.port), timeout=10)
    s.sendall(("PATCH %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\n"
               "Content-Length: %d\r\n\r\n" % (path, node.host, len(data))).encode() + data[:5000])
    s.close()
    r = node.req("PUT", with_query(loc, digest=sha256(data)))
    assert r.status in (400, 404, 416), r
    assert r.status != 201
    _blob_absent(node, repo, sha256(data))


@pytest.mark.parametrize("method", ["GET", "PATCH", "PUT", "DELETE"])
def test_unknown_upload_id(node, repo, method):
    push_blob(node, repo, b"repo exists")
    path = "/v2/%s/blobs/uploads/00000000-0000-0000-0000-000000000000" % repo
    if method == "PUT":
        path += "?digest=" + sha256(b"x")
    r = node.req(method, path, body=b"x" if method in ("PATCH", "PUT") else None,
                 headers={"Content-Type": "application/octet-stream"})
    assert r.status == 404, r
    codes = {"BLOB_UPLOAD_UNKNOWN"}
    if IS_DISTRIBUTION:  # without its signed _state parameter it says INVALID
        codes.add("BLOB_UPLOAD_INVALID")
    assert codes & set(r.error_codes()), r


# ---- names, tags ----

BAD_NAMES = ["../x", "A/b", "a//b", "a/./b", "a/", "-a", "a-", "a___b", "a/.."]


@pytest.mark.georeg_only("Distribution's router answers 301/404 for unroutable names")
@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_repository_name(node, name):
    img_cfg = b"{}"
    for method, path, body, ctype in [
            ("GET", "/v2/%s/tags/list" % name, None, None),
            ("POST", "/v2/%s/blobs/uploads/" % name, None, None),
            ("GET", "/v2/%s/manifests/latest" % name, None, None),
            ("PUT", "/v2/%s/manifests/latest" % name, manifest_bytes(
                {"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
                 "config": descriptor(MT_OCI_CONFIG, img_cfg), "layers": []}), MT_OCI_MANIFEST),
            ("GET", "/v2/%s/blobs/%s" % (name, sha256(img_cfg)), None, None)]:
        r = node.req(method, path, body=body, headers={"Content-Type": ctype} if ctype else {})
        assert r.status == 400, (method, path, r)
        assert "NAME_INVALID" in r.error_codes(), (method, path, r)


@pytest.mark.georeg_only("Distribution's router answers 404 for unroutable tags")
@pytest.mark.parametrize("tag", [".bad", "-bad", "x" * 129, "a+b", "t%20t"])
def test_invalid_tag(node, repo, tag):
    img = make_image(node, repo, tag="good", layers=1)
    r = put_manifest(node, repo, tag, img["manifest"])
    _assert_error(r, 400, "TAG_INVALID")
    tags = node.req("GET", "/v2/%s/tags/list" % repo).json()["tags"]
    assert tags == ["good"], tags


def test_longest_valid_tag_is_accepted(node, repo):
    tag = "a" + "b" * 127
    img = make_image(node, repo, tag=tag, layers=1)
    assert get_manifest(node, repo, tag).body == img["manifest"]


# ---- manifests ----

def _big_manifest(node, repo, size):
    cfg = b'{"architecture":"amd64","os":"linux"}'
    push_blob(node, repo, cfg)
    m = {"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
         "config": descriptor(MT_OCI_CONFIG, cfg), "layers": [], "annotations": {"pad": ""}}
    base = len(manifest_bytes(m))
    m["annotations"]["pad"] = "p" * (size - base)
    b = manifest_bytes(m)
    assert len(b) == size
    return b


def test_manifest_over_4mib_is_rejected(node, repo):
    body = _big_manifest(node, repo, 4 * 1024 * 1024 + 1)
    r = put_manifest(node, repo, "big", body)
    if IS_DISTRIBUTION:  # Distribution says MANIFEST_INVALID "request body too large"
        _assert_error(r, 400, "MANIFEST_INVALID")
    else:
        _assert_error(r, 413, "SIZE_INVALID")
    assert get_manifest(node, repo, "big").status == 404
    assert get_manifest(node, repo, sha256(body), method="HEAD").status == 404


def test_manifest_just_under_4mib_is_accepted(node, repo):
    body = _big_manifest(node, repo, 4 * 1024 * 1024 - 64)
    r = put_manifest(node, repo, "nearly", body)
    assert r.status == 201, r
    g = get_manifest(node, repo, "nearly")
    assert g.status == 200 and g.body == body


def test_malformed_manifest_json(node, repo):
    r = put_manifest(node, repo, "bad", b'{"schemaVersion": 2, "mediaType": "application/vnd.oci')
    _assert_error(r, 400, "MANIFEST_INVALID")
    assert get_manifest(node, repo, "bad").status == 404


def test_manifest_that_is_not_an_object(node, repo):
    r = put_manifest(node, repo, "arr", b'["schemaVersion", 2]')
    _assert_error(r, 400, "MANIFEST_INVALID")


@pytest.mark.georeg_only("Distribution 2.8 answers 500 UNKNOWN")
def test_manifest_with_wrong_schema_version(node, repo):
    cfg = b'{"os":"linux"}'
    push_blob(node, repo, cfg)
    r = put_manifest(node, repo, "sv", manifest_bytes({
        "schemaVersion": 3, "mediaType": MT_OCI_MANIFEST,
        "config": descriptor(MT_OCI_CONFIG, cfg), "layers": []}))
    _assert_error(r, 400, "MANIFEST_INVALID")


def test_schema1_manifest_is_refused(node, repo):
    body = json.dumps({"schemaVersion": 1, "name": repo, "tag": "s1", "architecture": "amd64",
                       "fsLayers": [], "history": [], "signatures": []}).encode()
    r = put_manifest(node, repo, "s1", body,
                     "application/vnd.docker.distribution.manifest.v1+prettyjws")
    assert r.status in (400, 415), r
    assert {"MANIFEST_INVALID", "UNSUPPORTED"} & set(r.error_codes()), r
    assert get_manifest(node, repo, "s1").status == 404


def _missing_blob_status():
    return 400  # as Distribution and zot answer (issue 8)


def test_manifest_referencing_missing_config_blob(node, repo):
    push_blob(node, repo, b"repo exists")
    cfg = b'{"never":"pushed"}'
    body = manifest_bytes({"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
                           "config": descriptor(MT_OCI_CONFIG, cfg), "layers": []})
    r = put_manifest(node, repo, "nocfg", body)
    _assert_error(r, _missing_blob_status(), "MANIFEST_BLOB_UNKNOWN")
    assert get_manifest(node, repo, "nocfg").status == 404


def test_manifest_referencing_missing_layer(node, repo):
    cfg = b'{"os":"linux","architecture":"amd64"}'
    layer = os.urandom(500)
    push_blob(node, repo, cfg)
    body = manifest_bytes({"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
                           "config": descriptor(MT_OCI_CONFIG, cfg),
                           "layers": [descriptor(MT_OCI_LAYER, layer)]})
    r = put_manifest(node, repo, "nolayer", body)
    _assert_error(r, _missing_blob_status(), "MANIFEST_BLOB_UNKNOWN")
    assert get_manifest(node, repo, "nolayer").status == 404
    assert get_manifest(node, repo, sha256(body)).status == 404


def test_manifest_referencing_blob_of_another_repository(node, repo):
    """A blob in repo A does not satisfy a manifest pushed to repo B."""
    cfg = b'{"os":"linux","architecture":"arm64"}'
    push_blob(node, repo + "-other", cfg)
    push_blob(node, repo, b"repo exists")
    body = manifest_bytes({"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
                           "config": descriptor(MT_OCI_CONFIG, cfg), "layers": []})
    r = put_manifest(node, repo, "cross", body)
    _assert_error(r, _missing_blob_status(), "MANIFEST_BLOB_UNKNOWN")


def test_index_referencing_missing_child_manifest(node, repo):
    make_image(node, repo, tag="exists", layers=1)
    idx = manifest_bytes({"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": [
        descriptor(MT_OCI_MANIFEST, b'{"not":"pushed"}',
                   platform={"architecture": "amd64", "os": "linux"})]})
    r = put_manifest(node, repo, "idx", idx, MT_OCI_INDEX)
    assert r.status in (400, 404), r
    assert {"MANIFEST_BLOB_UNKNOWN", "MANIFEST_UNKNOWN"} & set(r.error_codes()), r
    assert get_manifest(node, repo, "idx").status == 404


def test_manifest_put_with_wrong_digest_reference(node, repo):
    """PUT /manifests/<digest> whose body hashes to something else."""
    img = make_image(node, repo, tag="v", layers=1)
    other = sha256(img["manifest"] + b" ")
    r = put_manifest(node, repo, other, img["manifest"])
    assert r.status == 400, r
    assert {"DIGEST_INVALID", "MANIFEST_INVALID"} & set(r.error_codes()), r
    assert get_manifest(node, repo, other).status == 404


def test_unsupported_digest_algorithm(node, repo):
    data = b"hello"
    loc = start_upload(node, repo)
    r = node.req("PUT", with_query(loc, digest="md5:5d41402abc4b2a76b9719d911017c592"),
                 body=data, headers={"Content-Type": "application/octet-stream"})
    assert r.status == 400, r
    assert {"DIGEST_INVALID", "UNSUPPORTED"} & set(r.error_codes()), r


@pytest.mark.georeg_only("Distribution 2.8 ignores Content-Range on PATCH")
def test_malformed_content_range(node, repo):
    loc = start_upload(node, repo)
    r = node.req("PATCH", loc, body=b"x" * 10, headers={"Content-Range": "bytes=zero-nine"})
    assert r.status in (400, 416), r


@pytest.mark.georeg_only("Distribution 2.8 answers 500")
def test_manifest_with_malformed_descriptor_digest(node, repo):
    push_blob(node, repo, b"repo exists")
    body = manifest_bytes({"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
                           "config": {"mediaType": MT_OCI_CONFIG, "digest": "sha256:zzz",
                                      "size": 2}, "layers": []})
    r = put_manifest(node, repo, "baddesc", body)
    assert r.status == 400, r
    assert {"MANIFEST_INVALID", "DIGEST_INVALID"} & set(r.error_codes()), r
    assert get_manifest(node, repo, "baddesc").status == 404


def test_manifest_of_unknown_media_type(node, repo):
    cfg = b'{"os":"linux"}'
    push_blob(node, repo, cfg)
    body = manifest_bytes({"schemaVersion": 2, "mediaType": "application/x-not-a-manifest",
                           "config": descriptor(MT_OCI_CONFIG, cfg), "layers": []})
    r = put_manifest(node, repo, "weird", body, "application/x-not-a-manifest")
    assert r.status in (400, 415), r
    assert {"MANIFEST_INVALID", "UNSUPPORTED"} & set(r.error_codes()), r
    assert get_manifest(node, repo, "weird").status == 404


@pytest.mark.georeg_only("Distribution 2.8 does not compare the body's mediaType with Content-Type")
def test_manifest_media_type_disagreeing_with_content_type(node, repo):
    cfg = b'{"os":"linux","architecture":"amd64"}'
    push_blob(node, repo, cfg)
    body = manifest_bytes({"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
                           "config": descriptor(MT_OCI_CONFIG, cfg), "layers": []})
    r = put_manifest(node, repo, "mismatch", body, MT_OCI_INDEX)
    _assert_error(r, 400, "MANIFEST_INVALID")
    assert get_manifest(node, repo, "mismatch").status == 404


def test_unknown_manifest_head_is_404_without_body(node, repo):
    make_image(node, repo, tag="x", layers=1)
    r = get_manifest(node, repo, "missing", method="HEAD")
    assert r.status == 404, r
    assert r.body == b""
