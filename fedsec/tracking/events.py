"""Tracking events: what a SummaryWriter logs, as a frozen dataclass, on the wire and in a site's spool file.

This module owns the rules of a valid event, whoever made it: the training
script's writer checks its fields with the same functions before it queues
them, and the site and the server run every event that reaches them through
`from_proto` / `check_batch` / `from_json_line`. An event is identified by
(site, writer, seq); the dedupe on that key is the server's (its tracking db).
It must never import grpc, mlflow or numpy, nor pass on a field it did not check.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from fedsec import limits
from fedsec.errors import WireError
from fedsec.wire import fedsec_pb2

WRITER_ID_CHARS = 32  # secrets.token_hex(16)
MAX_SEQ = 2**64 - 1  # uint64 on the wire
MAX_STEP = 2**63 - 1  # int64 on the wire
# params and tags events: a JSON object of strings; the bounds are MLflow's (log_batch, key, param value).
MAX_PARAMS_PER_EVENT = 100
MAX_PARAM_KEY = 250  # characters
MAX_PARAM_VALUE = 6000  # characters (MLflow takes 6000 for a param, 8000 for a tag)
# An EventBatch always fits in one gRPC message: 64 KiB are left for job_id, site and framing.
MAX_BATCH_BYTES = limits.MAX_MESSAGE_BYTES - (64 << 10)
# A spool line: JSON with ASCII escapes takes at most 6 bytes per UTF-8 byte of text, 12 per tag character.
MAX_JSON_LINE_BYTES = 6 * limits.MAX_EVENT_TEXT + 12 * limits.MAX_EVENT_TAG + 1024
_EVENT_OVERHEAD = 128  # bytes of an encoded TrackingEvent besides its tag and text (measured: at most 93)

_WRITER_ID = re.compile(r"[0-9a-f]{32}")
_FIELDS = ("writer", "seq", "kind", "tag", "step", "wall_time", "value", "text")


class EventKind(enum.Enum):
    SCALAR = "scalar"  # tag, step, value
    TEXT = "text"  # tag, step, text
    PARAMS = "params"  # text: a JSON object of strings (MLflow params); no tag
    TAGS = "tags"  # text: a JSON object of strings (MLflow run tags); no tag


_MAPPING_KINDS = (EventKind.PARAMS, EventKind.TAGS)


@dataclass(frozen=True, slots=True)
class Event:
    """One logged value. `writer` is a random id per SummaryWriter; `seq` counts 0, 1, 2, ... per writer."""

    writer: str
    seq: int
    kind: EventKind
    tag: str
    step: int
    wall_time: float  # seconds since the epoch
    value: float = 0.0  # scalar events only
    text: str = ""  # text events; a JSON object of strings for params and tags events

    def key(self) -> tuple[str, int]:
        """(writer, seq): with the site, what identifies the event across resends."""
        return (self.writer, self.seq)

    def mapping(self) -> dict[str, str]:
        """The params or tags of a params/tags event that passed validation; ValueError for other kinds."""
        if self.kind not in _MAPPING_KINDS:
            raise ValueError(f"a {self.kind.value} event carries no params or tags")
        return {str(k): str(v) for k, v in json.loads(self.text).items()}


def quoted(text: str, limit: int = 60) -> str:
    """repr() of text, cut after limit characters: how error messages name a tag or a key."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def tag_problem(tag: str) -> str | None:
    """What is wrong with the tag of a scalar or text event, or None."""
    if not tag:
        return "the tag is empty"
    if len(tag) > limits.MAX_EVENT_TAG:
        return f"the tag is {len(tag)} characters long, more than {limits.MAX_EVENT_TAG}"
    if not tag.isprintable():
        return "the tag has a control or other non-printable character"
    return None


def text_problem(text: str) -> str | None:
    """What is wrong with the text of an event, or None: at most MAX_EVENT_TEXT bytes of UTF-8."""
    if len(text) > limits.MAX_EVENT_TEXT:  # before encoding: a character is at least one byte
        return f"the text is longer than {limits.MAX_EVENT_TEXT} bytes"
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return "the text is not valid Unicode (it has a lone surrogate)"
    if size > limits.MAX_EVENT_TEXT:
        return f"the text is {size} bytes of UTF-8, more than {limits.MAX_EVENT_TEXT}"
    return None


def param_problem(key: str, value: str) -> str | None:
    """What is wrong with one param or tag (key and value as strings), or None."""
    if not key:
        return "a key is empty"
    if len(key) > MAX_PARAM_KEY:
        return f"the key {quoted(key)} is longer than {MAX_PARAM_KEY} characters"
    if not key.isprintable():
        return f"the key {quoted(key)} has a control or other non-printable character"
    if len(value) > MAX_PARAM_VALUE:
        return f"the value of {quoted(key)} is {len(value)} characters long, more than {MAX_PARAM_VALUE}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"the value of {quoted(key)} is not valid Unicode (it has a lone surrogate)"
    return None


def mapping_problem(text: str) -> str | None:
    """What is wrong with the text of a params/tags event, or None: a JSON object of at most
    MAX_PARAMS_PER_EVENT strings, each key and value within the param bounds, no key twice."""
    problem = text_problem(text)
    if problem:
        return problem
    try:
        doc = json.loads(text, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:
        return f"the text is not a JSON object of strings ({exc})"
    if not isinstance(doc, dict):
        return "the text is not a JSON object of strings"
    if len(doc) > MAX_PARAMS_PER_EVENT:
        return f"{len(doc)} params in one event, more than {MAX_PARAMS_PER_EVENT}"
    for key, value in doc.items():
        if not isinstance(value, str):
            return f"the value of {quoted(key)} is not a string"
        problem = param_problem(key, value)
        if problem:
            return problem
    return None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        raise ValueError("a key appears twice")
    return doc


def event_problem(e: Event) -> str | None:
    """What is wrong with an event, or None."""
    if not _WRITER_ID.fullmatch(e.writer):
        return f"the writer id is not {WRITER_ID_CHARS} lowercase hex characters"
    if not 0 <= e.seq <= MAX_SEQ:
        return f"seq {e.seq} is out of range"
    if not 0 <= e.step <= MAX_STEP:
        return f"step {e.step} is out of range (0 to 2**63-1)"
    if not math.isfinite(e.wall_time):
        return f"the wall time {e.wall_time} is not finite"
    return _content_problem(e)


def _content_problem(e: Event) -> str | None:
    """What is wrong with the tag, value and text of an event for its kind, or None."""
    if e.kind in _MAPPING_KINDS:
        if e.tag:
            return f"a {e.kind.value} event has a tag"
    else:
        problem = tag_problem(e.tag)
        if problem:
            return problem
    if e.kind is EventKind.SCALAR:
        if not math.isfinite(e.value):
            return f"the value {e.value} of {quoted(e.tag)} is not finite"
        return "a scalar event has a text" if e.text else None
    if e.value != 0.0:
        return f"a {e.kind.value} event has a value"
    if e.kind is EventKind.TEXT:
        return text_problem(e.text)
    return mapping_problem(e.text)


def check_event(e: Event, where: str) -> Event:
    """e itself when it is valid; WireError naming where, the event and the problem otherwise."""
    problem = event_problem(e)
    if problem:
        raise WireError(f"{where}: event {e.seq}: {problem}")
    return e


def to_proto(e: Event) -> fedsec_pb2.TrackingEvent:
    return fedsec_pb2.TrackingEvent(
        writer=e.writer,
        seq=e.seq,
        kind=e.kind.value,
        tag=e.tag,
        step=e.step,
        wall_time=e.wall_time,
        value=e.value,
        text=e.text,
    )


def from_proto(m: fedsec_pb2.TrackingEvent, where: str) -> Event:
    """The event a message carries; WireError when it breaks a rule of this module."""
    try:
        kind = EventKind(m.kind)
    except ValueError:
        raise WireError(f"{where}: event {m.seq}: unknown kind {quoted(m.kind)}") from None
    e = Event(m.writer, m.seq, kind, m.tag, m.step, m.wall_time, m.value, m.text)
    return check_event(e, where)


def check_batch(batch: fedsec_pb2.EventBatch, where: str) -> list[Event]:
    """The events of a batch, each checked; WireError for a batch over MAX_EVENTS_PER_BATCH or a bad event.

    job_id and site are the caller's to check.
    """
    count = len(batch.events)
    if count > limits.MAX_EVENTS_PER_BATCH:
        raise WireError(f"{where}: {count} events in one batch, more than {limits.MAX_EVENTS_PER_BATCH}")
    return [from_proto(m, where) for m in batch.events]


def size_bound(e: Event) -> int:
    """An upper bound of the bytes the event takes inside an EventBatch."""
    return _EVENT_OVERHEAD + len(e.tag.encode("utf-8")) + len(e.text.encode("utf-8"))


def split_batches(events: Iterable[Event]) -> Iterator[list[Event]]:
    """The events, in order, in batches of at most MAX_EVENTS_PER_BATCH events and MAX_BATCH_BYTES."""
    batch: list[Event] = []
    size = 0
    for e in events:
        n = size_bound(e)
        if batch and (len(batch) >= limits.MAX_EVENTS_PER_BATCH or size + n > MAX_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(e)
        size += n
    if batch:
        yield batch


def pack_mapping(items: Sequence[tuple[str, str]]) -> list[str]:
    """The texts of the params/tags events that carry items, each within MAX_PARAMS_PER_EVENT and MAX_EVENT_TEXT.

    Each item must have passed param_problem; one item always fits in one event.
    """
    texts: list[str] = []
    chunk: dict[str, str] = {}
    size = 2  # {}
    for key, value in items:
        n = len(json.dumps(key, ensure_ascii=False).encode()) + len(json.dumps(value, ensure_ascii=False).encode()) + 2
        if chunk and (len(chunk) >= MAX_PARAMS_PER_EVENT or size + n > limits.MAX_EVENT_TEXT):
            texts.append(_mapping_text(chunk))
            chunk, size = {}, 2
        chunk[key] = value
        size += n
    if chunk:
        texts.append(_mapping_text(chunk))
    return texts


def _mapping_text(chunk: dict[str, str]) -> str:
    return json.dumps(chunk, ensure_ascii=False, separators=(",", ":"))


def to_json_line(e: Event) -> bytes:
    """The event as one line of ASCII JSON, newline included (a site's spool file). ValueError for NaN/Inf."""
    doc = {
        "writer": e.writer,
        "seq": e.seq,
        "kind": e.kind.value,
        "tag": e.tag,
        "step": e.step,
        "wall_time": e.wall_time,
        "value": e.value,
        "text": e.text,
    }
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode("ascii") + b"\n"


def from_json_line(line: bytes, where: str) -> Event:
    """The event of a spool line (its newline optional); WireError for a malformed line or an invalid event."""
    if len(line) > MAX_JSON_LINE_BYTES:
        raise WireError(f"{where}: an event line of {len(line)} bytes, more than {MAX_JSON_LINE_BYTES}")
    try:
        doc = json.loads(line, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise WireError(f"{where}: not a JSON event line: {exc}") from None
    if not isinstance(doc, dict):
        raise WireError(f"{where}: an event line is not a JSON object")
    if set(doc) != set(_FIELDS):
        missing = sorted(set(_FIELDS) - set(doc))
        unknown = sorted(set(doc) - set(_FIELDS))
        raise WireError(f"{where}: an event line with missing keys {missing} or unknown keys {unknown}")
    strings = {name: doc[name] for name in ("writer", "kind", "tag", "text")}
    for name, value in strings.items():
        if not isinstance(value, str):
            raise WireError(f"{where}: an event line's {name} is not a string")
    try:
        kind = EventKind(doc["kind"])
    except ValueError:
        raise WireError(f"{where}: an event line's kind {quoted(doc['kind'])} is unknown") from None
    e = Event(
        writer=doc["writer"],
        seq=_json_int(doc, "seq", where),
        kind=kind,
        tag=doc["tag"],
        step=_json_int(doc, "step", where),
        wall_time=_json_float(doc, "wall_time", where),
        value=_json_float(doc, "value", where),
        text=doc["text"],
    )
    return check_event(e, where)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _json_int(doc: dict[str, Any], name: str, where: str) -> int:
    value = doc[name]
    if type(value) is not int:  # not a bool, not a float
        raise WireError(f"{where}: an event line's {name} is not an integer")
    return value


def _json_float(doc: dict[str, Any], name: str, where: str) -> float:
    value = doc[name]
    if type(value) not in (int, float):
        raise WireError(f"{where}: an event line's {name} is not a number")
    try:
        return float(value)
    except OverflowError:
        raise WireError(f"{where}: an event line's {name} is out of range") from None
