"""Strict YAML/JSON -> frozen dataclasses.

load_yaml() and parse_yaml() read a bounded YAML document with the safe loader,
parse_json() a bounded JSON document: they are the one home of parsing text
from outside, and refuse, before building anything, a document nested deeper
than limits.MAX_YAML_DEPTH / MAX_JSON_DEPTH or holding an integer of more than
limits.MAX_INT_DIGITS digits (either would otherwise end in a RecursionError or
a ValueError deep inside the parser). build()
turns a mapping into a dataclass, checking every field's type and rejecting
unknown keys with a ConfigError that names the key's path
("participants[2].rol: unknown key"). It never evaluates anything a file says.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from fedsec import limits
from fedsec._fs import read_bounded
from fedsec.errors import ConfigError, FedsecError

T = TypeVar("T")
_NUMBER_LIKE = re.compile(r"[-+]?[0-9][0-9a-fA-FxXoObB_:.]*")  # a plain YAML scalar that may resolve to an int
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_LONG_INT = re.compile(rf"[0-9]{{{limits.MAX_INT_DIGITS + 1},}}")


def load_yaml(path: Path, what: str) -> Any:
    """Read and parse a YAML file of at most limits.MAX_CONFIG_FILE_BYTES."""
    data = read_bounded(path, limits.MAX_CONFIG_FILE_BYTES, f"{what} {path}")
    return parse_yaml(data, f"{what} {path}")


def parse_yaml(data: bytes, where: str) -> Any:
    """Parse YAML text with the safe loader; ConfigError with the line on failure.

    Refuses (ConfigError) a document nested deeper than limits.MAX_YAML_DEPTH or an
    integer of more than limits.MAX_INT_DIGITS digits, before any object is built.
    """
    import yaml  # at first use: a site parent, which parses no YAML until a job comes, never loads it

    try:
        text = data.decode("utf-8")
        _check_yaml_shape(text, where)
        return yaml.safe_load(text)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not UTF-8 text") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{where}: invalid YAML{at}: {problem}") from exc
    except (ValueError, OverflowError) as exc:  # a value the constructors cannot convert (a huge sexagesimal)
        raise ConfigError(f"{where}: invalid YAML: a value cannot be converted ({type(exc).__name__})") from exc


def _check_yaml_shape(text: str, where: str) -> None:
    """Walk the parser's events (no objects built, no recursion): bound nesting and integer digits."""
    import yaml

    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > limits.MAX_YAML_DEPTH:
                line = event.start_mark.line + 1 if event.start_mark else 0
                raise ConfigError(f"{where}: nested deeper than {limits.MAX_YAML_DEPTH} levels at line {line}")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        elif (
            isinstance(event, yaml.ScalarEvent)
            and event.implicit[0]
            and event.style is None
            and len(event.value) > limits.MAX_INT_DIGITS
            and _NUMBER_LIKE.fullmatch(event.value)
            and "." not in event.value  # a float converts whatever its length
        ):
            line = event.start_mark.line + 1 if event.start_mark else 0
            raise ConfigError(f"{where}: a number of more than {limits.MAX_INT_DIGITS} digits at line {line}")


def parse_json(
    text: str | bytes,
    where: str,
    *,
    limit: int = limits.MAX_META_JSON_BYTES,
    error: type[FedsecError] = ConfigError,
) -> Any:
    """Parse JSON text of at most limit bytes; raise error (ConfigError unless told) naming where on failure.

    Refuses text over limit, nesting deeper than limits.MAX_JSON_DEPTH, an integer of more
    than limits.MAX_INT_DIGITS digits, NaN and Infinity, and duplicate keys, before building
    anything from it.
    """
    if len(text) > limit:
        raise error(f"{where}: larger than {limit} bytes")
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        _check_json_shape(text, where, error)
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise error(f"{where}: not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise error(f"{where}: not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except ValueError as exc:  # from the hooks below, or int() refusing a long literal
        raise error(f"{where}: not valid JSON: {exc}") from exc


def _check_json_shape(text: str, where: str, error: type[FedsecError]) -> None:
    """Bound nesting and integer digits without recursion: strings removed, brackets counted."""
    bare = _JSON_STRING.sub('""', text)
    if _JSON_LONG_INT.search(bare):
        raise error(f"{where}: a number of more than {limits.MAX_INT_DIGITS} digits")
    depth = 0
    for char in bare:
        if char in "[{":
            depth += 1
            if depth > limits.MAX_JSON_DEPTH:
                raise error(f"{where}: nested deeper than {limits.MAX_JSON_DEPTH} levels")
        elif char in "]}":
            depth -= 1


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key[:40]!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def build(cls: type[T], raw: Any, path: str) -> T:
    """Build dataclass cls from mapping raw; path names raw in error messages."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or 'document'}: expected a mapping, got {_kind(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in raw:
        if key not in fields:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"{where}: unknown key (allowed: {', '.join(sorted(fields))})")
    values: dict[str, Any] = {}
    for name, field in fields.items():
        where = f"{path}.{name}" if path else name
        if name in raw:
            values[name] = _convert(hints[name], raw[name], where)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: required key is missing")
    return cls(**values)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _convert(tp: Any, value: Any, where: str) -> Any:
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(inner[0], value, where)
        raise TypeError(f"unsupported union {tp}")
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {_kind(value)}")
        return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_kind(value)}")
        return {_convert(args[0], k, f"{where}.{k}"): _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return build(tp, value, where)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        allowed = [m.value for m in tp]
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, allowed))}")
        return tp(value)
    return _scalar(tp, value, where)


# type -> (accepts value, what the message says was expected)
_SCALARS: dict[Any, tuple[Any, str]] = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    float: (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    str: (lambda v: isinstance(v, str), "a string"),
}


def _scalar(tp: Any, value: Any, where: str) -> Any:
    if tp not in _SCALARS:
        raise TypeError(f"unsupported field type {tp} at {where}")
    accepts, expected = _SCALARS[tp]
    if not accepts(value):
        raise ConfigError(f"{where}: expected {expected}, got {_kind(value)}")
    return float(value) if tp is float else value
