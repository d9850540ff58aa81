"""The server's settings: served names, loopback hosts, and the CLI's defaults taken from them."""
import pytest

from bge_ref import server as server_module

from .serving import HOSTED

pytestmark = pytest.mark.quick  # needs the serve extra and its clients, no torch


def test_served_names_and_loopback():
    assert server_module.served_names("BAAI/bge-large-en-v1.5", "/cache/x") == ["BAAI/bge-large-en-v1.5", HOSTED]
    assert server_module.served_names(None, "BAAI/bge-small-en-v1.5") == ["BAAI/bge-small-en-v1.5"]
    assert all(map(server_module.is_loopback, ["127.0.0.1", "::1", "localhost"]))
    assert not any(map(server_module.is_loopback, ["0.0.0.0", "192.168.1.2", "example.org"]))
