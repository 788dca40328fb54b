"""local/site_settings.yml: the defaults, a good file, and a table of bad ones."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedsec.errors import ConfigError
from fedsec.site.settings import Isolation, SiteSettings, load_site_settings


def _write(kit: Path, text: str, mode: int = 0o600) -> Path:
    path = kit / "local" / "site_settings.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_missing_file_is_the_defaults(tmp_path: Path) -> None:
    assert load_site_settings(tmp_path) == SiteSettings()


def test_good_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    kit = tmp_path / "kit"
    _write(kit, f"datasets:\n  digits: {data}\nisolation: bwrap\n", 0o644)
    settings = load_site_settings(kit)
    assert settings.datasets == {"digits": str(data.resolve())}
    assert settings.isolation is Isolation.BWRAP
    assert settings.job_retention_days == 30  # the default


def test_warm_launcher(tmp_path: Path) -> None:
    assert load_site_settings(tmp_path).warm_launcher is False  # the default: no idle job process
    _write(tmp_path, "warm_launcher: true\n")
    assert load_site_settings(tmp_path).warm_launcher is True


def test_job_retention_days(tmp_path: Path) -> None:
    _write(tmp_path, "job_retention_days: 90\n")
    assert load_site_settings(tmp_path).job_retention_days == 90


@pytest.mark.parametrize(
    ("text", "mode", "message"),
    [
        ("isolation: auto\n", 0o666, "mode 0666"),
        ("isolation: auto\n", 0o640, "mode 0640"),
        ("isolaton: auto\n", 0o600, "isolaton: unknown key"),
        ("isolation: docker\n", 0o600, "'docker' is not one of"),
        ("datasets: [a]\n", 0o600, "datasets: expected a mapping"),
        ("datasets:\n  a: relative/path\n", 0o600, "must be an absolute path"),
        ("datasets:\n  a: /no/such/folder/x\n", 0o600, "does not exist"),
        ("datasets:\n  ../a: /usr\n", 0o600, "is not safe"),
        ("datasets:\n  a: 3\n", 0o600, "expected a string"),
        ("datasets:\n  a: {kit}/startup\n", 0o600, "overlaps the site's kit"),
        ("datasets:\n  a: {root}\n", 0o600, "overlaps the site's kit"),
        ("[unclosed\n", 0o600, "invalid YAML"),
        ("job_retention_days: 0\n", 0o600, "job_retention_days: 0 is not a number of days in 1..36500"),
        ("job_retention_days: 36501\n", 0o600, "job_retention_days: 36501 is not a number of days"),
        ("job_retention_days: soon\n", 0o600, "job_retention_days: expected an integer"),
        ("warm_launcher: yes please\n", 0o600, "warm_launcher: expected true or false"),
        ("warm_launcher: 1\n", 0o600, "warm_launcher: expected true or false"),
        ("warm_laucher: true\n", 0o600, "warm_laucher: unknown key"),
    ],
)
def test_bad_files(tmp_path: Path, text: str, mode: int, message: str) -> None:
    kit = tmp_path / "kit"
    (kit / "startup").mkdir(parents=True)
    _write(kit, text.format(kit=kit, root=tmp_path), mode)
    with pytest.raises(ConfigError, match=message) as err:
        load_site_settings(kit)
    assert "site_settings.yml" in str(err.value)


def test_a_link_is_refused(tmp_path: Path) -> None:
    target = _write(tmp_path / "elsewhere", "isolation: none\n")
    (tmp_path / "kit" / "local").mkdir(parents=True)
    (tmp_path / "kit" / "local" / "site_settings.yml").symlink_to(target)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_site_settings(tmp_path / "kit")


def test_owned_by_another_user_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, "isolation: none\n")
    owner = path.stat().st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)  # the site runs as someone else than the file's owner
    with pytest.raises(ConfigError, match="not by the user that runs fedsec"):
        load_site_settings(tmp_path)
