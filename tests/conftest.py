"""Shared fixtures: project files and provisioned workspaces in tmp_path."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from fedsec.provision import load_project, provision

if TYPE_CHECKING:
    from tests import pgserver

BASE_PROJECT: dict[str, Any] = {
    "api_version": 1,
    "name": "testproj",
    "description": "test federation",
    "participants": [
        {
            "name": "server1",
            "type": "server",
            "org": "acme",
            "host_names": ["localhost", "127.0.0.1"],
            "fl_port": 18002,
            "admin_port": 18003,
        },
        {"name": "site-1", "type": "client", "org": "acme"},
        {"name": "site-2", "type": "client", "org": "beta"},
        {"name": "admin@acme.org", "type": "admin", "org": "acme", "role": "project_admin"},
    ],
}


def project_doc(**changes: Any) -> dict[str, Any]:
    """A fresh copy of the base project with top-level keys changed."""
    doc = copy.deepcopy(BASE_PROJECT)
    doc.update(changes)
    return doc


def write_project(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def prod(tmp_path: Path) -> Path:
    """A provisioned prod_00 of the base project."""
    yml = write_project(tmp_path / "project.yml", project_doc())
    return provision(load_project(yml), tmp_path / "ws").prod_dir


@pytest.fixture(scope="session")
def pg() -> Iterator[pgserver.PgServer]:
    """A real PostgreSQL server for the session (tests/pgserver.py); each test takes a database of its own."""
    from tests import pgserver  # psycopg only in the sessions that use it

    server = pgserver.start()
    try:
        yield server
    finally:
        server.stop()
