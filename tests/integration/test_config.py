"""Starting a node from a YAML config file, and GEOREG_* overrides."""

import os
import socket

import pytest

from itlib import free_port, push_blob

pytestmark = pytest.mark.georeg_only("georeg's configuration")


def test_serve_with_config_file(node_factory):
    node = node_factory(config={})
    d = push_blob(node, "cfg/x", b"from a config file")
    assert node.req("GET", "/v2/cfg/x/blobs/%s" % d).body == b"from a config file"
    assert os.listdir(node.data_dir), "nothing written to the configured data_dir"


def test_environment_overrides_config_file(node_factory):
    other = free_port()
    node = node_factory(config={"listen": "127.0.0.1:%d" % other}, start=False)
    # the file says `other`; the environment says the node's own port
    node.extra_env["GEOREG_HTTP_LISTEN"] = "127.0.0.1:%d" % node.port
    node.start()
    assert node.req("GET", "/v2/").status == 200
    with socket.socket() as s:
        s.settimeout(1)
        assert s.connect_ex(("127.0.0.1", other)) != 0, "the file's listen address is in use"
