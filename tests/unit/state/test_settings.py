"""The kit's `store` setting, the DSN file it names, and the backend open_state picks by name."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from fedsec.errors import ConfigError, KitError, StoreUnavailableError
from fedsec.kit import ServerConfig, _load_config, load_kit
from fedsec.provision import load_project, provision
from fedsec.state import settings
from fedsec.state.settings import POSTGRES, SQLITE, StoreSettings, open_state, parse_store, read_dsn
from tests import pgserver
from tests.conftest import project_doc, write_project


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, StoreSettings()),
        ("sqlite", StoreSettings()),
        ({"sqlite": {}}, StoreSettings()),
        ({"postgres": {"dsn_file": "local/postgres.dsn"}}, StoreSettings(POSTGRES, "local/postgres.dsn")),
    ],
)
def test_parse_store(raw: Any, expected: StoreSettings) -> None:
    assert parse_store(raw, "server.store") == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("mysql", "'mysql' is not a store; use one of: sqlite, postgres"),
        ("org.example.MyStore", "is not a store"),
        ({"postgres": {}}, "dsn_file"),
        ({"postgres": {"dsn_file": "local/x.dsn", "password": "p"}}, "password: unknown key"),
        ({"postgres": {"dsn_file": "/etc/x.dsn"}}, "must name a file in the kit's local/ folder"),
        ({"postgres": {"dsn_file": "local/../startup/x.key"}}, "must name a file in the kit's local/ folder"),
        ({"postgres": {"dsn_file": "startup/x.dsn"}}, "must name a file in the kit's local/ folder"),
        ({"sqlite": {}, "postgres": {"dsn_file": "local/x.dsn"}}, "name exactly one store"),
        ({"sqlite": {"path": "/tmp/x"}}, "sqlite: takes no settings"),
        ({"redis": {}}, "redis: unknown key"),
        (3, "expected a mapping"),
    ],
)
def test_parse_store_refuses(raw: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_store(raw, "server.store")


def _dsn_file(kit: Path, text: str, mode: int) -> StoreSettings:
    (kit / "local").mkdir(parents=True, exist_ok=True)
    path = kit / "local" / "postgres.dsn"
    path.write_text(text)
    os.chmod(path, mode)
    return StoreSettings(POSTGRES, "local/postgres.dsn")


def test_read_dsn(tmp_path: Path) -> None:
    assert read_dsn(tmp_path, _dsn_file(tmp_path, "host=/run/pg dbname=fedsec password=s3cret\n", 0o600)) == (
        "host=/run/pg dbname=fedsec password=s3cret"
    )


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604, 0o660])
def test_a_dsn_file_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    with pytest.raises(
        ConfigError, match=rf"local/postgres.dsn .*mode {mode:04o} lets others read or change it: chmod 600"
    ):
        read_dsn(tmp_path, _dsn_file(tmp_path, "dbname=fedsec password=s3cret", mode))


@pytest.mark.parametrize(("text", "message"), [("", "one line"), ("a\nb", "one line"), ("x" * 5000, "larger")])
def test_a_bad_dsn_file_is_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        read_dsn(tmp_path, _dsn_file(tmp_path, text, 0o600))


def test_a_missing_dsn_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="local/postgres.dsn .*missing; write the DSN there, mode 0600"):
        read_dsn(tmp_path, StoreSettings(POSTGRES, "local/postgres.dsn"))


def test_a_symlinked_dsn_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_text("dbname=x")
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "postgres.dsn").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="not a regular file"):
        read_dsn(tmp_path, StoreSettings(POSTGRES, "local/postgres.dsn"))


def test_open_state_picks_the_backend_by_name(tmp_path: Path, pg: pgserver.PgServer) -> None:
    lite = open_state(tmp_path, StoreSettings())
    try:
        assert lite.backend == SQLITE and (tmp_path / settings.STORE_DIR / "jobs.db").stat().st_mode & 0o777 == 0o600
    finally:
        lite.close()
    remote = open_state(tmp_path, _dsn_file(tmp_path, pg.new_database(), 0o600))
    try:
        assert remote.backend == POSTGRES
    finally:
        remote.close()


def test_a_wrong_password_is_a_clear_error_without_the_dsn(tmp_path: Path, pg: pgserver.PgServer) -> None:
    dsn = pg.new_database().replace(pg.password, "wrong-password")
    with pytest.raises(StoreUnavailableError, match="cannot connect") as err:
        open_state(tmp_path, _dsn_file(tmp_path, dsn, 0o600))
    assert "wrong-password" not in str(err.value)


def test_provisioning_writes_the_store_setting_into_the_signed_server_config(tmp_path: Path) -> None:
    doc = project_doc()
    doc["participants"][0]["store"] = {"postgres": {"dsn_file": "local/postgres.dsn"}}
    prod = provision(load_project(write_project(tmp_path / "p.yml", doc)), tmp_path / "ws").prod_dir
    config = json.loads((prod / "server1" / "startup" / "fed_server.json").read_text())
    assert config["store"] == {"postgres": {"dsn_file": "local/postgres.dsn"}}
    kit = load_kit(prod / "server1")
    assert kit.config.store_settings == StoreSettings(POSTGRES, "local/postgres.dsn")  # type: ignore[union-attr]
    plain = provision(load_project(write_project(tmp_path / "q.yml", project_doc())), tmp_path / "ws2").prod_dir
    assert json.loads((plain / "server1" / "startup" / "fed_server.json").read_text())["store"] == "sqlite"


def test_provisioning_refuses_a_bad_store(tmp_path: Path) -> None:
    doc = project_doc()
    doc["participants"][0]["store"] = {"postgres": {"dsn_file": "/etc/passwd"}}
    with pytest.raises(ConfigError, match=r"participants\[0\].store.postgres.dsn_file: must name a file"):
        load_project(write_project(tmp_path / "p.yml", doc))


def test_a_kit_from_before_the_setting_uses_sqlite(tmp_path: Path) -> None:
    prod = provision(load_project(write_project(tmp_path / "p.yml", project_doc())), tmp_path / "ws").prod_dir
    path = prod / "server1" / "startup" / "fed_server.json"
    config = json.loads(path.read_text())
    del config["store"]  # as the kits provisioned before the setting have it
    path.write_text(json.dumps(config))
    loaded = _load_config(path, ServerConfig, "kit server1: startup/fed_server.json")
    assert isinstance(loaded, ServerConfig) and loaded.store_settings == StoreSettings()
    config["store"] = "mysql"
    path.write_text(json.dumps(config))
    with pytest.raises(KitError, match="store: 'mysql' is not a store"):
        _load_config(path, ServerConfig, "kit server1: startup/fed_server.json")
