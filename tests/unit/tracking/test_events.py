"""fedsec.tracking.events: the rules of a valid event, on the wire and in a spool line."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from typing import Any

import pytest

from fedsec import limits
from fedsec.errors import WireError
from fedsec.tracking.events import (
    MAX_BATCH_BYTES,
    MAX_JSON_LINE_BYTES,
    MAX_PARAM_KEY,
    MAX_PARAM_VALUE,
    MAX_PARAMS_PER_EVENT,
    MAX_SEQ,
    MAX_STEP,
    Event,
    EventKind,
    check_batch,
    check_event,
    from_json_line,
    from_proto,
    mapping_problem,
    pack_mapping,
    size_bound,
    split_batches,
    to_json_line,
    to_proto,
)
from fedsec.wire import fedsec_pb2

WRITER = "0123456789abcdef" * 2
SCALAR = Event(WRITER, 3, EventKind.SCALAR, "train/loss", 7, 1.7e9, 0.25)
TEXT = Event(WRITER, 4, EventKind.TEXT, "notes", 7, 1.7e9, text="line 1\nline 2 — ünïcode ✓\t\x00")
PARAMS = Event(WRITER, 5, EventKind.PARAMS, "", 0, 1.7e9, text=json.dumps({"lr": "0.01", "model": "cnn"}))
TAGS = Event(WRITER, 6, EventKind.TAGS, "", 0, 1.7e9, text=json.dumps({"team": "a\nb"}))

VALID = [
    SCALAR,
    TEXT,
    PARAMS,
    TAGS,
    replace(SCALAR, seq=0, step=0, wall_time=0.0, value=-1e300),
    replace(SCALAR, seq=MAX_SEQ, step=MAX_STEP, tag="é" * limits.MAX_EVENT_TAG),
    replace(TEXT, text=""),
    replace(TEXT, text="x" * limits.MAX_EVENT_TEXT),
    replace(PARAMS, text=json.dumps({f"k{i}": "v" * MAX_PARAM_VALUE for i in range(5)})),
    replace(PARAMS, text=json.dumps({"k" * MAX_PARAM_KEY: ""})),
    replace(TAGS, text="{}"),
]


def _line(e: Event) -> bytes:
    """The spool line of any event, NaN and out-of-range numbers included (to_json_line refuses NaN)."""
    doc = {**asdict(e), "kind": e.kind.value}
    return json.dumps(doc).encode() + b"\n"


@pytest.mark.parametrize("e", VALID, ids=range(len(VALID)))
def test_valid_events_round_trip(e: Event) -> None:
    assert check_event(e, "test") is e
    assert from_proto(to_proto(e), "test") == e
    line = to_json_line(e)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    line.decode("ascii")
    assert from_json_line(line, "test") == e
    assert from_json_line(line.rstrip(b"\n"), "test") == e
    batch = fedsec_pb2.EventBatch(job_id="job", site="site-1", events=[to_proto(e)])
    assert check_batch(fedsec_pb2.EventBatch.FromString(batch.SerializeToString()), "test") == [e]


def _params(doc: Any) -> dict[str, Any]:
    return {"kind": EventKind.PARAMS, "tag": "", "text": doc if isinstance(doc, str) else json.dumps(doc)}


TAG_RE = "non-printable"
BAD: list[tuple[dict[str, Any], str]] = [
    ({"writer": WRITER.upper()}, "writer id"),
    ({"writer": WRITER[:-1]}, "writer id"),
    ({"writer": WRITER + "0"}, "writer id"),
    ({"writer": WRITER[:-1] + "\n"}, "writer id"),
    ({"writer": "g" * 32}, "writer id"),
    ({"writer": ""}, "writer id"),
    ({"seq": -1}, "seq -1"),
    ({"seq": MAX_SEQ + 1}, "seq"),
    ({"step": -1}, "step -1"),
    ({"step": MAX_STEP + 1}, "step"),
    ({"wall_time": math.inf}, "wall time|Infinity"),
    ({"wall_time": math.nan}, "wall time|NaN"),
    ({"tag": ""}, "tag is empty"),
    ({"tag": "loss\nval"}, TAG_RE),
    ({"tag": "loss\x00"}, TAG_RE),
    ({"tag": "loss\x1b[31m"}, TAG_RE),
    ({"tag": "a\u202eb"}, TAG_RE),  # a bidi override
    ({"tag": "x" * (limits.MAX_EVENT_TAG + 1)}, "characters long"),
    ({"value": math.nan}, "not finite|NaN"),
    ({"value": -math.inf}, "not finite|Infinity"),
    ({"text": "x"}, "scalar event has a text"),
    ({"kind": EventKind.TEXT, "text": "x" * (limits.MAX_EVENT_TEXT + 1)}, "longer than"),
    ({"kind": EventKind.TEXT, "text": "é" * (limits.MAX_EVENT_TEXT // 2 + 1)}, "bytes of UTF-8"),
    ({"kind": EventKind.TEXT, "text": "a\ud800"}, "lone surrogate"),
    ({"kind": EventKind.TEXT, "value": 1.0}, "has a value"),
    ({**_params({"a": "1"}), "tag": "x"}, "has a tag"),
    ({**_params({"a": "1"}), "value": 2.0}, "has a value"),
    (_params([]), "JSON object"),
    (_params("not json"), "JSON object"),
    (_params("[" * 60_000), "JSON object"),
    (_params({"a": 1}), "not a string"),
    (_params({"a": None}), "not a string"),
    (_params({"a": {"b": "c"}}), "not a string"),
    (_params('{"a":"1","a":"2"}'), "twice"),
    (_params({f"k{i}": "v" for i in range(MAX_PARAMS_PER_EVENT + 1)}), "more than 100"),
    (_params({"": "v"}), "key is empty"),
    (_params({"k" * (MAX_PARAM_KEY + 1): "v"}), "longer than 250"),
    (_params({"a\nb": "v"}), TAG_RE),
    (_params({"a": "v" * (MAX_PARAM_VALUE + 1)}), "more than 6000"),
    (_params('{"a":"\\ud800"}'), "lone surrogate"),
    ({**_params({"a": "1"}), "kind": EventKind.TAGS, "text": "[1]"}, "JSON object"),
]


@pytest.mark.parametrize(("changes", "problem"), BAD, ids=[f"{i}-{p}" for i, (_, p) in enumerate(BAD)])
def test_bad_events_are_refused_everywhere(changes: dict[str, Any], problem: str) -> None:
    base = SCALAR if changes.get("kind", EventKind.SCALAR) is EventKind.SCALAR else replace(SCALAR, value=0.0)
    e = replace(base, **changes)
    with pytest.raises(WireError, match=problem):
        check_event(e, "events of site-1")
    with pytest.raises(WireError, match=problem):
        from_json_line(_line(e), "spool of job j")
    try:
        message = to_proto(e)
    except ValueError:  # not representable in the message at all (a negative seq, a lone surrogate)
        return
    with pytest.raises(WireError, match=f"events of site-1: event .*{problem}"):
        from_proto(message, "events of site-1")
    with pytest.raises(WireError, match=problem):
        check_batch(fedsec_pb2.EventBatch(events=[to_proto(SCALAR), message]), "events of site-1")


@pytest.mark.parametrize("kind", ["histogram", "", "SCALAR", "scalar "])
def test_unknown_kind_is_refused(kind: str) -> None:
    message = to_proto(SCALAR)
    message.kind = kind
    with pytest.raises(WireError, match="unknown kind"):
        from_proto(message, "test")
    doc = json.loads(to_json_line(SCALAR))
    doc["kind"] = kind
    with pytest.raises(WireError, match="kind .* is unknown"):
        from_json_line(json.dumps(doc).encode(), "test")


def test_batch_size_is_bounded() -> None:
    events = [to_proto(replace(SCALAR, seq=i)) for i in range(limits.MAX_EVENTS_PER_BATCH + 1)]
    assert len(check_batch(fedsec_pb2.EventBatch(events=events[:-1]), "test")) == limits.MAX_EVENTS_PER_BATCH
    with pytest.raises(WireError, match=f"{limits.MAX_EVENTS_PER_BATCH + 1} events in one batch"):
        check_batch(fedsec_pb2.EventBatch(events=events), "test")


def _doc(**changes: Any) -> bytes:
    doc = json.loads(to_json_line(SCALAR))
    doc.update(changes)
    return json.dumps(doc, separators=(",", ":")).encode()


def _without(key: str) -> bytes:
    doc = json.loads(to_json_line(SCALAR))
    del doc[key]
    return json.dumps(doc).encode()


BAD_LINES: list[tuple[bytes, str]] = [
    (b"", "not a JSON event line"),
    (b"\n", "not a JSON event line"),
    (b"not json\n", "not a JSON event line"),
    (b"\xff\xfe{}\n", "not a JSON event line"),
    (to_json_line(SCALAR)[:-5], "not a JSON event line"),
    (to_json_line(SCALAR) + to_json_line(SCALAR), "not a JSON event line"),
    (b"[]\n", "not a JSON object"),
    (b"null\n", "not a JSON object"),
    (_without("text"), r"missing keys \['text'\]"),
    (_doc(site="site-1"), r"unknown keys \['site'\]"),
    (_doc(seq="3"), "seq is not an integer"),
    (_doc(seq=3.0), "seq is not an integer"),
    (_doc(seq=True), "seq is not an integer"),
    (_doc(step=None), "step is not an integer"),
    (_doc(value="1"), "value is not a number"),
    (_doc(value=False), "value is not a number"),
    (_doc(wall_time=[1]), "wall_time is not a number"),
    (_doc(value=10**400), "value is out of range"),
    (_doc(writer=5), "writer is not a string"),
    (_doc(tag=None), "tag is not a string"),
    (_doc(kind=1), "kind is not a string"),
    (_doc(text={"a": "b"}), "text is not a string"),
    (_doc(seq=1).replace(b'"seq":1', b'"seq":' + b"9" * 5000), "not a JSON event line"),
    (_doc(wall_time=1).replace(b'"wall_time":1', b'"wall_time":1e999'), "wall time inf is not finite"),
    (_doc(value=1).replace(b'"value":1', b'"value":-Infinity'), "not a JSON event line"),
    (b"[" * 100_000, "not a JSON event line"),
    (b" " * (MAX_JSON_LINE_BYTES + 1), f"more than {MAX_JSON_LINE_BYTES}"),
]


@pytest.mark.parametrize(("line", "problem"), BAD_LINES, ids=[p[:30] for _, p in BAD_LINES])
def test_bad_spool_lines_are_refused(line: bytes, problem: str) -> None:
    with pytest.raises(WireError, match=f"^spool of job j: .*{problem}"):
        from_json_line(line, "spool of job j")


def test_to_json_line_refuses_nan() -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        to_json_line(replace(SCALAR, value=math.nan))


def test_the_longest_valid_line_is_within_the_line_bound() -> None:
    worst = replace(TEXT, tag="\U0001f600" * limits.MAX_EVENT_TAG, text="\x01" * limits.MAX_EVENT_TEXT)
    line = to_json_line(worst)
    assert len(line) <= MAX_JSON_LINE_BYTES
    assert from_json_line(line, "test") == worst


def test_size_bound_covers_the_encoded_event() -> None:
    worst = [
        replace(SCALAR, seq=MAX_SEQ, step=MAX_STEP, wall_time=-1.5, value=-1.5, tag="\U0001f600" * 256),
        replace(TEXT, seq=MAX_SEQ, step=MAX_STEP, text="\U0001f600" * (limits.MAX_EVENT_TEXT // 4)),
        replace(PARAMS, seq=MAX_SEQ),
    ]
    for e in worst:
        assert fedsec_pb2.EventBatch(events=[to_proto(e)]).ByteSize() <= size_bound(e)


def test_split_batches_keeps_order_and_fits_a_message() -> None:
    big = [replace(TEXT, seq=i, text="x" * limits.MAX_EVENT_TEXT) for i in range(150)]
    small = [replace(SCALAR, seq=150 + i) for i in range(2500)]
    batches = list(split_batches(big + small))
    assert [e for b in batches for e in b] == big + small
    for batch in batches:
        assert len(batch) <= limits.MAX_EVENTS_PER_BATCH
        size = fedsec_pb2.EventBatch(job_id="j" * 64, site="s" * 64, events=[to_proto(e) for e in batch]).ByteSize()
        assert size <= MAX_BATCH_BYTES < limits.MAX_MESSAGE_BYTES
    assert list(split_batches([])) == []


def test_pack_mapping_splits_by_count_and_size() -> None:
    many = [(f"key{i}", str(i)) for i in range(250)]
    texts = pack_mapping(many)
    assert [len(json.loads(t)) for t in texts] == [100, 100, 50]
    large = [(f"key{i}", "\x01" * MAX_PARAM_VALUE) for i in range(20)]  # 6 bytes of JSON per character
    texts = pack_mapping(large)
    assert len(texts) > 1
    for pairs, packed in ((many, pack_mapping(many)), (large, texts)):
        for text in packed:
            assert mapping_problem(text) is None
            assert len(text.encode()) <= limits.MAX_EVENT_TEXT
        merged = {k: v for t in packed for k, v in json.loads(t).items()}
        assert merged == dict(pairs)
    assert pack_mapping([]) == []


def test_mapping_and_key() -> None:
    assert PARAMS.mapping() == {"lr": "0.01", "model": "cnn"}
    assert TAGS.mapping() == {"team": "a\nb"}
    assert SCALAR.key() == (WRITER, 3)
    with pytest.raises(ValueError, match="carries no params"):
        SCALAR.mapping()
