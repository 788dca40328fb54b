"""Server replicas in project.yml: parsing and validation, one kit per replica, endpoint lists in the other kits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from fedsec import limits
from fedsec.errors import ConfigError
from fedsec.kit import AdminConfig, ClientConfig, ServerConfig, ServerEndpoint, load_kit
from fedsec.pki import certs
from fedsec.provision import load_project, provision
from fedsec.provision.project import Replica, parse_project
from fedsec.provision.templates import SAMPLE_PROJECT
from tests.conftest import BASE_PROJECT, project_doc, write_project

REPLICAS = [
    {"name": "server1-a", "host": "fl-a.example.org"},
    {"name": "server1-b", "host": "fl-b.example.org", "fl_port": 28002, "admin_port": 28003},
]


def _with_replicas(replicas: Any, **server: Any) -> dict[str, Any]:
    parts = [dict(p) for p in BASE_PROJECT["participants"]]
    parts[0].update(server, replicas=replicas)
    return project_doc(participants=parts)


def test_without_replicas_the_server_is_its_one_replica() -> None:
    project = parse_project(project_doc())
    assert project.replicas == (Replica("server1", "localhost", 18002, 18003),)
    assert project.server_names == ("localhost", "127.0.0.1")


def test_replicas_resolve_in_order_with_the_servers_ports_as_default() -> None:
    project = parse_project(_with_replicas(REPLICAS))
    assert project.replicas == (
        Replica("server1-a", "fl-a.example.org", 18002, 18003),
        Replica("server1-b", "fl-b.example.org", 28002, 28003),
    )
    assert project.server_names == ("localhost", "127.0.0.1", "fl-a.example.org", "fl-b.example.org")


def test_replicas_on_one_host_on_other_ports() -> None:
    replicas = [
        {"name": "r1", "host": "localhost"},
        {"name": "r2", "host": "localhost", "fl_port": 18004, "admin_port": 18005},
    ]
    project = parse_project(_with_replicas(replicas))
    assert [r.fl_port for r in project.replicas] == [18002, 18004]
    assert project.server_names == ("localhost", "127.0.0.1")  # no name twice


_MANY_HOSTS = [{"name": f"r{i}", "host": f"h{i}.example.org"} for i in range(limits.MAX_SERVER_REPLICAS)]
BAD_REPLICAS: list[tuple[str, Any, str]] = [
    ("empty list", [], "participants[0].replicas: the list is empty (leave it out"),
    ("not a list", {"name": "a"}, "participants[0].replicas: expected a list"),
    (
        "too many",
        [
            {"name": f"r{i}", "host": "localhost", "fl_port": 20000 + 2 * i, "admin_port": 20001 + 2 * i}
            for i in range(9)
        ],
        f"participants[0].replicas: more than {limits.MAX_SERVER_REPLICAS}",
    ),
    ("unknown key", [{"name": "a", "host": "h", "port": 1}], "participants[0].replicas[0].port: unknown key"),
    ("no host", [{"name": "a"}], "participants[0].replicas[0].host: required key is missing"),
    ("unsafe name", [{"name": "../a", "host": "h"}], "participants[0].replicas[0].name"),
    ("unsafe host", [{"name": "a", "host": "h/x"}], "participants[0].replicas[0].host"),
    (
        "the name of a site",
        [{"name": "site-1", "host": "h"}],
        "participants[0].replicas[0].name: 'site-1' is a duplicate of participants[1]",
    ),
    (
        "the server's own name",
        [{"name": "Server1", "host": "h"}],
        "participants[0].replicas[0].name: 'Server1' is a duplicate of participants[0]",
    ),
    (
        "two replicas of one name",
        [{"name": "a", "host": "h1"}, {"name": "A", "host": "h2"}],
        "participants[0].replicas[1].name: 'A' is a duplicate of participants[0].replicas[0]",
    ),
    (
        "same host and ports",
        [{"name": "a", "host": "h"}, {"name": "b", "host": "H"}],
        "participants[0].replicas[1].fl_port: H:18002 is taken already by participants[0].replicas[0].fl_port",
    ),
    (
        "fl port of one is the admin port of another",
        [{"name": "a", "host": "h"}, {"name": "b", "host": "h", "fl_port": 18003, "admin_port": 18009}],
        "participants[0].replicas[1].fl_port: h:18003 is taken already by participants[0].replicas[0].admin_port",
    ),
    (
        "one replica's two ports",
        [{"name": "a", "host": "h", "admin_port": 18002}],
        "participants[0].replicas[0].admin_port: h:18002 is taken already by participants[0].replicas[0].fl_port",
    ),
    ("port out of range", [{"name": "a", "host": "h", "fl_port": 0}], "replicas[0].fl_port: 0 is not a port number"),
    ("port not a number", [{"name": "a", "host": "h", "fl_port": "1"}], "replicas[0].fl_port: expected an integer"),
    (
        "too many names",
        _MANY_HOSTS[: limits.MAX_HOST_NAMES - 1],
        f"participants[0]: host_names and the replicas' hosts make more than {limits.MAX_HOST_NAMES} names",
    ),
]


@pytest.mark.parametrize(("label", "replicas", "message"), BAD_REPLICAS, ids=[b[0] for b in BAD_REPLICAS])
def test_bad_replicas_are_refused_naming_the_place(tmp_path: Path, label: str, replicas: Any, message: str) -> None:
    if label == "too many names":  # more hosts than MAX_HOST_NAMES, within MAX_SERVER_REPLICAS replicas
        doc = _with_replicas(_MANY_HOSTS, host_names=[f"n{i}.example.org" for i in range(limits.MAX_HOST_NAMES - 2)])
    else:
        doc = _with_replicas(replicas)
    path = write_project(tmp_path / "p.yml", doc)
    with pytest.raises(ConfigError) as info:
        load_project(path)
    assert message in str(info.value)


def _san(kit: Path, name: str) -> list[str]:
    cert = certs.load_cert((kit / "startup" / f"{name}.crt").read_bytes(), "test")
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in ext.get_values_for_type(x509.DNSName)] + [
        str(v) for v in ext.get_values_for_type(x509.IPAddress)
    ]


def test_one_kit_per_replica_each_the_same_server(tmp_path: Path) -> None:
    path = write_project(tmp_path / "p.yml", _with_replicas(REPLICAS))
    prod = provision(load_project(path), tmp_path / "ws").prod_dir
    assert sorted(p.name for p in prod.iterdir()) == ["admin@acme.org", "server1-a", "server1-b", "site-1", "site-2"]
    keys = set()
    for replica, fl, admin_port in (("server1-a", 18002, 18003), ("server1-b", 28002, 28003)):
        kit = load_kit(prod / replica)
        assert isinstance(kit.config, ServerConfig)
        assert kit.identity == certs.Identity("server1", "acme", certs.Kind.SERVER)  # one server identity
        assert (kit.config.replica, kit.config.fl_port, kit.config.admin_port) == (replica, fl, admin_port)
        assert kit.config.host_names == ("localhost", "127.0.0.1", "fl-a.example.org", "fl-b.example.org")
        assert sorted(_san(prod / replica, "server1")) == sorted(kit.config.host_names)
        assert (prod / replica / "startup" / "start.sh").read_text().count(f"server {replica} of") == 1
        keys.add(kit.key_path.read_bytes())
    assert len(keys) == 2  # a key of its own per replica

    site = load_kit(prod / "site-1").config
    assert isinstance(site, ClientConfig)
    assert site.server is None
    assert site.endpoints == (
        ServerEndpoint("server1", "fl-a.example.org", 18002),
        ServerEndpoint("server1", "fl-b.example.org", 28002),
    )
    admin = load_kit(prod / "admin@acme.org").config
    assert isinstance(admin, AdminConfig)
    assert admin.endpoints == (
        ServerEndpoint("server1", "fl-a.example.org", 18003),
        ServerEndpoint("server1", "fl-b.example.org", 28003),
    )


def test_a_project_without_replicas_writes_its_kits_as_before(prod: Path) -> None:
    site = json.loads((prod / "site-1" / "startup" / "fed_client.json").read_text())
    assert site["server"] == {"name": "server1", "host": "localhost", "port": 18002}
    assert "servers" not in site
    admin = json.loads((prod / "admin@acme.org" / "startup" / "fed_admin.json").read_text())
    assert admin["server"] == {"name": "server1", "host": "localhost", "port": 18003}
    assert "servers" not in admin
    server = json.loads((prod / "server1" / "startup" / "fed_server.json").read_text())
    assert "replica" not in server
    assert load_kit(prod / "server1").config == ServerConfig(
        "fedsec-kit/1", "testproj", "server1", "acme", ("localhost", "127.0.0.1"), 18002, 18003
    )


def test_the_sample_projects_replicas_parse_once_uncommented() -> None:
    lines = SAMPLE_PROJECT.splitlines()
    start = lines.index("    # replicas:")
    lines[start : start + 3] = [line.replace("# ", "", 1) for line in lines[start : start + 3]]
    project = parse_project(yaml.safe_load("\n".join(lines)))
    assert [r.name for r in project.replicas] == ["server1-a", "server1-b"]
    assert parse_project(yaml.safe_load(SAMPLE_PROJECT)).replicas[0].name == "server1"
