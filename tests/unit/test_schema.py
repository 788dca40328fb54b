from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fedsec import _fs, _schema, limits
from fedsec.errors import ConfigError, WireError


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


BAD_YAML = [
    ("nested lists", b"a: " + b"[" * 10_000 + b"]" * 10_000, "nested deeper than 32 levels at line 1"),
    ("nested mappings", b"".join(b"  " * i + b"k:\n" for i in range(40)) + b"  " * 40 + b"v\n", "nested deeper"),
    ("a 200,000-digit integer", b"a: " + b"9" * 200_000, "a number of more than 100 digits at line 1"),
    ("a long hex integer", b"a: 0x" + b"f" * 5_000, "a number of more than 100 digits"),
    ("a long sexagesimal", b"a: 1" + b":30" * 3_000, "a number of more than 100 digits"),
    ("not UTF-8", b"a: \xff\n", "not UTF-8 text"),
]


@pytest.mark.parametrize(("case", "text", "message"), BAD_YAML, ids=[b[0] for b in BAD_YAML])
def test_parse_yaml_refuses_what_would_crash_the_parser(case: str, text: bytes, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^meta.yml: {message}"):
        _schema.parse_yaml(text, "meta.yml")


def test_parse_yaml_keeps_long_strings_and_floats() -> None:
    text = b"a: '" + b"9" * 5_000 + b"'\nb: 1." + b"5" * 5_000 + b"\nc: [[[1]]]\n"
    doc = _schema.parse_yaml(text, "x")
    assert doc["a"] == "9" * 5_000 and doc["b"] == pytest.approx(14 / 9) and doc["c"] == [[[1]]]


BAD_JSON = [
    ("too large", "[" + "1," * 40_000 + "1]", "larger than 65536 bytes"),
    ("nested", "[" * 10_000 + "]" * 10_000, "nested deeper than 32 levels"),
    ("nested objects", '{"a":' * 33 + "1" + "}" * 33, "nested deeper than 32 levels"),
    ("a long integer", '{"n": ' + "9" * 5_000 + "}", "a number of more than 100 digits"),
    ("not JSON", "{", "not JSON: Expecting property name"),
    ("NaN", '{"n": NaN}', "not valid JSON: NaN is not a number JSON allows"),
    ("duplicate keys", '{"n": 1, "n": 2}', "not valid JSON: duplicate key 'n'"),
    ("not UTF-8", b'{"n": "\xff"}', "not UTF-8 text"),
]


@pytest.mark.parametrize(("case", "text", "message"), BAD_JSON, ids=[b[0] for b in BAD_JSON])
def test_parse_json_refuses(case: str, text: str | bytes, message: str) -> None:
    with pytest.raises(WireError, match=f"^result meta: {message}"):
        _schema.parse_json(text, "result meta", error=WireError)


def test_parse_json_reads_brackets_inside_strings_as_text() -> None:
    text = '{"a": "' + "[" * 100 + '", "b": "\\"[[[", "c": [[1]]}'
    assert _schema.parse_json(text, "x") == {"a": "[" * 100, "b": '"[[[', "c": [[1]]}
    with pytest.raises(ConfigError, match="^x: nested deeper"):
        _schema.parse_json("[" * 33 + "]" * 33, "x")
