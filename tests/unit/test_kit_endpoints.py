"""The server endpoints of a site's or an admin's kit: one (`server`, as kits always had) or a list (`servers`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedsec import limits
from fedsec.errors import KitError
from fedsec.kit import ServerEndpoint, load_kit
from fedsec.pki import certs, signing

CONFIG = {"site-1": "fed_client.json", "admin@acme.org": "fed_admin.json", "server1": "fed_server.json"}


def _resign(prod: Path, kit_name: str, change: dict[str, Any], drop: tuple[str, ...] = ()) -> Path:
    """Change the kit's config and sign it again with the project's root CA: only the content is wrong."""
    kit = prod / kit_name
    path = kit / "startup" / CONFIG[kit_name]
    doc = json.loads(path.read_text())
    doc.update(change)
    for key in drop:
        doc.pop(key)
    path.write_text(json.dumps(doc))
    state = prod.parent / "state"
    ca_key = certs.load_key((state / "rootCA.key").read_bytes(), "test CA key")
    files = json.loads((kit / signing.SIGNATURE_FILE).read_text())["files"]
    (kit / signing.SIGNATURE_FILE).write_bytes(signing.sign(kit, files, ca_key))
    return kit


def _end(host: str, port: int, name: str = "server1") -> dict[str, Any]:
    return {"name": name, "host": host, "port": port}


@pytest.mark.parametrize("kit_name", ["site-1", "admin@acme.org"])
def test_a_kit_of_one_endpoint_reads_as_a_list_of_one(prod: Path, kit_name: str) -> None:
    config = load_kit(prod / kit_name).config
    port = 18002 if kit_name == "site-1" else 18003
    assert config.endpoints == (ServerEndpoint("server1", "localhost", port),)  # type: ignore[union-attr]


@pytest.mark.parametrize("kit_name", ["site-1", "admin@acme.org"])
def test_servers_are_read_in_order(prod: Path, kit_name: str) -> None:
    servers = [_end("b.example.org", 2), _end("a.example.org", 1)]
    kit = _resign(prod, kit_name, {"servers": servers}, drop=("server",))
    assert load_kit(kit).config.endpoints == (  # type: ignore[union-attr]
        ServerEndpoint("server1", "b.example.org", 2),
        ServerEndpoint("server1", "a.example.org", 1),
    )


_TOO_MANY = [_end(f"h{i}", 1000 + i) for i in range(limits.MAX_SERVER_REPLICAS + 1)]
BAD: list[tuple[str, dict[str, Any], tuple[str, ...], str]] = [
    ("both", {"servers": [_end("a", 1)]}, (), "names both server and servers"),
    ("neither", {}, ("server",), "names no server (neither server nor servers)"),
    ("empty list", {"servers": []}, ("server",), "names no server"),
    (
        "two servers",
        {"servers": [_end("a", 1), _end("b", 2, "server2")]},
        ("server",),
        "servers[1] names server 'server2'",
    ),
    ("listed twice", {"servers": [_end("a", 1), _end("A", 1)]}, ("server",), "servers[1]: A:1 is listed twice"),
    ("bad port", {"servers": [_end("a", 1), _end("b", 70000)]}, ("server",), "servers[1].port: 70000 is not a port"),
    ("unsafe host", {"servers": [_end("a/b", 1)]}, ("server",), "servers[0].host name 'a/b' is not safe"),
    ("too many", {"servers": _TOO_MANY}, ("server",), f"more than {limits.MAX_SERVER_REPLICAS} endpoints"),
    ("not a list", {"servers": _end("a", 1)}, ("server",), "servers: expected a list"),
    ("unknown key", {"servers": [{**_end("a", 1), "replica": "x"}]}, ("server",), "servers[0].replica: unknown key"),
]


@pytest.mark.parametrize(("label", "change", "drop", "message"), BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("kit_name", ["site-1", "admin@acme.org"])
def test_bad_endpoints_are_refused_naming_the_file(
    prod: Path, kit_name: str, label: str, change: dict[str, Any], drop: tuple[str, ...], message: str
) -> None:
    kit = _resign(prod, kit_name, change, drop)
    with pytest.raises(KitError) as info:
        load_kit(kit)
    assert f"startup/{CONFIG[kit_name]}" in str(info.value)
    assert message in str(info.value)


def test_a_server_kit_names_its_replica(prod: Path) -> None:
    config = load_kit(_resign(prod, "server1", {"replica": "server1-b"})).config
    assert config.label == "server1 (replica server1-b)"  # type: ignore[union-attr]
    with pytest.raises(KitError, match="replica name '../x' is not safe"):
        load_kit(_resign(prod, "server1", {"replica": "../x"}))
