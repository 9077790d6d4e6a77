"""Real clients against the node: skopeo, the Docker engine, oras.

A test whose client (or the Docker engine) is missing is skipped with a
'SKIPPED: <why>' reason, shown by `pytest -rs`; it never passes silently.
"""

import io
import subprocess
import json
import os
import re
import tarfile
import uuid


from itlib import (IS_DISTRIBUTION, MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_OCI_MANIFEST,
                   TOOL_TIMEOUT, OCILayout, get_manifest, make_image, run, sha256)


# ---------------------------------------------------------------- skopeo

def _skopeo(skopeo, *args, timeout=TOOL_TIMEOUT):
    return run([skopeo, "--insecure-policy", *args], timeout=timeout)


def _image_layout(tmp_path, tag="v1"):
    lay = OCILayout(str(tmp_path / ("src-" + uuid.uuid4().hex[:6])))
    m, info = lay.add_image(layers=4, gzip_layers=[True, False, True, True], file_size=20_000)
    lay.tag(tag, m, MT_OCI_MANIFEST)
    return lay, m, info


def _index_layout(tmp_path, tag="multi"):
    lay = OCILayout(str(tmp_path / ("idx-" + uuid.uuid4().hex[:6])))
    images = [lay.add_image(layers=2, arch=a, file_size=10_000) for a in ("amd64", "arm64")]
    idx = lay.add_index(images)
    lay.tag(tag, idx, MT_OCI_INDEX)
    return lay, idx, images


def _assert_blob(node, repo, digest):
    r = node.req("GET", "/v2/%s/blobs/%s" % (repo, digest))
    assert r.status == 200, r
    assert sha256(r.body) == digest


def test_skopeo_copy_multilayer_image_in_and_out(node, skopeo, tmp_path):
    lay, m, info = _image_layout(tmp_path)
    repo = "sk/img-%s" % uuid.uuid4().hex[:6]
    _skopeo(skopeo, "copy", "--preserve-digests", "--dest-tls-verify=false",
            "oci:%s:v1" % lay.path, "docker://%s/%s:v1" % (node.host, repo))
    # the registry holds the very same manifest and blobs
    r = get_manifest(node, repo, "v1")
    assert r.status == 200, r
    assert r.body == m
    assert r.header("Docker-Content-Digest") == info["digest"]
    for d in [info["config"]] + info["layers"]:
        _assert_blob(node, repo, d)
    # and back out
    out = OCILayout(str(tmp_path / "out"))
    _skopeo(skopeo, "copy", "--preserve-digests", "--src-tls-verify=false",
            "docker://%s/%s:v1" % (node.host, repo), "oci:%s:v1" % out.path)
    assert out.manifest_for("v1")["digest"] == info["digest"]
    assert out.read_blob(info["digest"]) == m
    assert out.all_blob_digests() == lay.all_blob_digests()
    out.verify_blobs()


def test_skopeo_copy_multiarch_index_in_and_out(node, skopeo, tmp_path):
    lay, idx, images = _index_layout(tmp_path)
    repo = "sk/multi-%s" % uuid.uuid4().hex[:6]
    _skopeo(skopeo, "copy", "--all", "--preserve-digests", "--dest-tls-verify=false",
            "oci:%s:multi" % lay.path, "docker://%s/%s:multi" % (node.host, repo))
    r = get_manifest(node, repo, "multi")
    assert r.status == 200, r
    assert r.body == idx
    assert r.header("Content-Type") == MT_OCI_INDEX
    for m, info in images:
        c = get_manifest(node, repo, info["digest"])
        assert c.status == 200 and c.body == m, c
        for d in [info["config"]] + info["layers"]:
            _assert_blob(node, repo, d)
    out = OCILayout(str(tmp_path / "out"))
    _skopeo(skopeo, "copy", "--all", "--preserve-digests", "--src-tls-verify=false",
            "docker://%s/%s:multi" % (node.host, repo), "oci:%s:multi" % out.path)
    assert out.manifest_for("multi")["digest"] == sha256(idx)
    assert out.all_blob_digests() == lay.all_blob_digests()
    out.verify_blobs()


def test_skopeo_inspect(node, skopeo, tmp_path):
    lay, m, info = _image_layout(tmp_path)
    repo = "sk/inspect-%s" % uuid.uuid4().hex[:6]
    ref = "docker://%s/%s:v1" % (node.host, repo)
    _skopeo(skopeo, "copy", "--preserve-digests", "--dest-tls-verify=false",
            "oci:%s:v1" % lay.path, ref)
    out = json.loads(_skopeo(skopeo, "inspect", "--tls-verify=false", ref).stdout)
    assert out["Digest"] == info["digest"]
    assert out["Layers"] == info["layers"]
    assert out["Architecture"] == "amd64" and out["Os"] == "linux"
    assert "v1" in out.get("RepoTags", ["v1"])
    raw = _skopeo(skopeo, "inspect", "--raw", "--tls-verify=false", ref).stdout
    assert raw.encode() == m
    cfg = json.loads(_skopeo(skopeo, "inspect", "--config", "--raw", "--tls-verify=false",
                             ref).stdout)
    assert cfg["rootfs"]["diff_ids"] and cfg["architecture"] == "amd64"


def test_skopeo_list_tags(node, skopeo, tmp_path):
    lay, m, info = _image_layout(tmp_path)
    repo = "sk/tags-%s" % uuid.uuid4().hex[:6]
    for tag in ("v1", "v2", "latest"):
        _skopeo(skopeo, "copy", "--preserve-digests", "--dest-tls-verify=false",
                "oci:%s:v1" % lay.path, "docker://%s/%s:%s" % (node.host, repo, tag))
    out = json.loads(_skopeo(skopeo, "list-tags", "--tls-verify=false",
                             "docker://%s/%s" % (node.host, repo)).stdout)
    assert sorted(out["Tags"]) == ["latest", "v1", "v2"]


def test_skopeo_delete(node, skopeo, tmp_path):
    repo = "sk/del-%s" % uuid.uuid4().hex[:6]
    lay1, m1, info1 = _image_layout(tmp_path, tag="keep")
    lay2, m2, info2 = _image_layout(tmp_path, tag="drop")
    _skopeo(skopeo, "copy", "--preserve-digests", "--dest-tls-verify=false",
            "oci:%s:keep" % lay1.path, "docker://%s/%s:keep" % (node.host, repo))
    _skopeo(skopeo, "copy", "--preserve-digests", "--dest-tls-verify=false",
            "oci:%s:drop" % lay2.path, "docker://%s/%s:drop" % (node.host, repo))
    _skopeo(skopeo, "delete", "--tls-verify=false", "docker://%s/%s:drop" % (node.host, repo))
    assert get_manifest(node, repo, info2["digest"]).status == 404
    assert get_manifest(node, repo, "drop").status == 404
    assert get_manifest(node, repo, "keep").body == m1
    cp = run([skopeo, "--insecure-policy", "inspect", "--tls-verify=false",
              "docker://%s/%s:drop" % (node.host, repo)], check=False)
    assert cp.returncode != 0


# ---------------------------------------------------------------- docker

def _rootfs_tar(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mode = 0o644
            ti.mtime = 1700000000
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def test_docker_push_and_pull(node, docker, tmp_path):
    content = os.urandom(300_000)
    tarball = tmp_path / "rootfs.tar"
    tarball.write_bytes(_rootfs_tar({"hello.bin": content,
                                     "etc/motd": b"georeg integration test\n"}))
    repo = "dk/img-%s" % uuid.uuid4().hex[:6]
    ref = "%s/%s:v1" % (node.host, repo)
    created = []
    try:
        image_id = run([docker, "import", str(tarball), ref], timeout=TOOL_TIMEOUT).stdout.strip()
        created.append(ref)
        push = run([docker, "push", ref], timeout=2 * TOOL_TIMEOUT)
        m = re.search(r"digest: (sha256:[0-9a-f]{64})", push.stdout)
        assert m, push.stdout
        digest = m.group(1)
        r = get_manifest(node, repo, "v1")
        assert r.status == 200, r
        assert sha256(r.body) == digest
        assert r.header("Content-Type") == MT_DOCKER_MANIFEST
        man = json.loads(r.body)
        assert man["config"]["digest"] == image_id
        for layer in man["layers"]:
            _assert_blob(node, repo, layer["digest"])

        run([docker, "rmi", ref], timeout=60)
        created.remove(ref)
        cp = run([docker, "image", "inspect", ref], check=False, timeout=30)
        assert cp.returncode != 0, "image still present after rmi"

        run([docker, "pull", ref], timeout=2 * TOOL_TIMEOUT)
        created.append(ref)
        info = json.loads(run([docker, "image", "inspect", ref], timeout=30).stdout)[0]
        assert info["Id"] == image_id
        assert "%s/%s@%s" % (node.host, repo, digest) in info.get("RepoDigests", [])

        # the pulled filesystem holds the bytes we imported
        cid = run([docker, "create", ref, "/none"], timeout=60).stdout.strip()
        try:
            out = tmp_path / "cp.tar"
            with open(out, "wb") as f:
                subprocess.run([docker, "cp", cid + ":/hello.bin", "-"], stdout=f,
                               stderr=subprocess.PIPE, timeout=60, check=True)
            with tarfile.open(out) as tf:
                assert tf.extractfile("hello.bin").read() == content
        finally:
            run([docker, "rm", "-f", cid], check=False, timeout=60)
    finally:
        for r in created:
            run([docker, "rmi", "-f", r], check=False, timeout=60)


# ---------------------------------------------------------------- oras

def test_oras_push_and_pull(node, oras, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    files = {"readme.txt": b"hello from georeg tests\n", "data.bin": os.urandom(150_000)}
    for name, data in files.items():
        (src / name).write_bytes(data)
    repo = "or/art-%s" % uuid.uuid4().hex[:6]
    ref = "%s/%s:v1" % (node.host, repo)
    run([oras, "push", "--plain-http", "--artifact-type", "application/vnd.georeg.test",
         ref, "readme.txt:text/plain", "data.bin:application/octet-stream"], cwd=str(src))
    r = get_manifest(node, repo, "v1")
    assert r.status == 200, r
    man = json.loads(r.body)
    assert man.get("artifactType") == "application/vnd.georeg.test" or \
        man["config"]["mediaType"] == "application/vnd.georeg.test", man
    titles = {la["annotations"]["org.opencontainers.image.title"]: la for la in man["layers"]}
    assert set(titles) == set(files)
    for name, data in files.items():
        assert titles[name]["digest"] == sha256(data)
    out = tmp_path / "out"
    out.mkdir()
    run([oras, "pull", "--plain-http", ref, "-o", str(out)])
    for name, data in files.items():
        assert (out / name).read_bytes() == data


def _discover(oras, ref, *extra):
    cp = run([oras, "discover", "--plain-http", "--format", "json", *extra, ref])
    doc = json.loads(cp.stdout)
    # oras >= 1.3: {"referrers": [...]}; older: {"manifests": [...]}
    return doc.get("referrers", doc.get("manifests")) or []


def test_oras_attach_and_discover(node, oras, tmp_path):
    repo = "or/subj-%s" % uuid.uuid4().hex[:6]
    subj = make_image(node, repo, tag="v1", layers=1)
    ref = "%s/%s:v1" % (node.host, repo)
    d = tmp_path / "att"
    d.mkdir()
    (d / "sig.txt").write_bytes(b"signature-ish\n")
    (d / "sbom.json").write_bytes(b'{"sbom": true}\n')
    run([oras, "attach", "--plain-http", "--artifact-type", "application/vnd.georeg.sig",
         ref, "sig.txt:text/plain"], cwd=str(d))
    run([oras, "attach", "--plain-http", "--artifact-type", "application/vnd.georeg.sbom",
         ref, "sbom.json:application/json"], cwd=str(d))
    refs = _discover(oras, ref)
    types = sorted(x.get("artifactType") for x in refs)
    assert types == ["application/vnd.georeg.sbom", "application/vnd.georeg.sig"], refs
    only = _discover(oras, ref, "--artifact-type", "application/vnd.georeg.sig")
    assert [x.get("artifactType") for x in only] == ["application/vnd.georeg.sig"], only
    if not IS_DISTRIBUTION:
        # the same through the referrers API
        r = node.req("GET", "/v2/%s/referrers/%s" % (repo, subj["digest"]))
        assert r.status == 200, r
        api = sorted(x["digest"] for x in r.json()["manifests"])
        assert api == sorted(x["digest"] for x in refs)
    # the referrer's content comes back with oras pull
    sig = [x for x in refs if x.get("artifactType") == "application/vnd.georeg.sig"][0]
    out = tmp_path / "pulled"
    out.mkdir()
    run([oras, "pull", "--plain-http", "%s/%s@%s" % (node.host, repo, sig["digest"]),
         "-o", str(out)])
    assert (out / "sig.txt").read_bytes() == b"signature-ish\n"


