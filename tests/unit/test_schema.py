from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fedsec import _fs, _schema, limits
from fedsec.errors import ConfigError


class Color(enum.Enum):
    RED = "red"


@dataclass(frozen=True)
class Inner:
    n: int


@dataclass(frozen=True)
class Outer:
    name: str
    items: tuple[Inner, ...]
    color: Color
    ratio: float = 1.0
    flag: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def test_build_nested() -> None:
    got = _schema.build(Outer, {"name": "a", "items": [{"n": 1}, {"n": 2}], "color": "red", "ratio": 2}, "")
    assert got == Outer("a", (Inner(1), Inner(2)), Color.RED, 2.0)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"name": "a", "items": [], "color": "red", "bogus": 1}, "bogus: unknown key"),
        ({"name": "a", "items": [{"n": 1, "m": 2}], "color": "red"}, "items[0].m: unknown key"),
        ({"name": "a", "items": [{"n": "1"}], "color": "red"}, "items[0].n: expected an integer"),
        ({"name": "a", "items": [{"n": True}], "color": "red"}, "items[0].n: expected an integer"),
        ({"name": "a", "items": [], "color": "blue"}, "color: 'blue' is not one of red"),
        ({"name": "a", "items": []}, "color: required key is missing"),
        ({"name": 3, "items": [], "color": "red"}, "name: expected a string"),
        ({"name": "a", "items": {}, "color": "red"}, "items: expected a list"),
        ({"name": "a", "items": [], "color": "red", "flag": "yes"}, "flag: expected true or false"),
        ([1, 2], "document: expected a mapping"),
    ],
)
def test_build_rejects(raw: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _schema.build(Outer, raw, "")


def test_load_yaml_bounds_and_syntax(tmp_path: Path) -> None:
    big = tmp_path / "big.yml"
    big.write_bytes(b"a: 1\n" * (limits.MAX_CONFIG_FILE_BYTES // 5 + 1))
    with pytest.raises(ConfigError, match="larger than the limit"):
        _schema.load_yaml(big, "test file")
    bad = tmp_path / "bad.yml"
    bad.write_text("a: [1, 2\nb: 3\n")
    with pytest.raises(ConfigError, match="invalid YAML at line"):
        _schema.load_yaml(bad, "test file")
    with pytest.raises(ConfigError, match="cannot read"):
        _schema.load_yaml(tmp_path / "missing.yml", "test file")


def test_yaml_never_builds_objects(tmp_path: Path) -> None:
    evil = tmp_path / "evil.yml"
    evil.write_text("a: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        _schema.load_yaml(evil, "test file")


@pytest.mark.parametrize("name", ["site-1", "a", "Site_2.x", "0abc"])
def test_safe_names(name: str) -> None:
    assert _fs.check_name("site", name) == name


@pytest.mark.parametrize("name", ["", "../x", "a/b", "a..b", ".hidden", "-x", "a b", "x" * 65, "é", "a\\b"])
def test_unsafe_names(name: str) -> None:
    with pytest.raises(ConfigError, match="site name"):
        _fs.check_name("site", name)


def test_write_secret_mode(tmp_path: Path) -> None:
    path = tmp_path / "k" / "secret.key"
    _fs.write_secret(path, b"x")
    assert path.stat().st_mode & 0o777 == 0o600
    assert not list(path.parent.glob(".*tmp"))
