"""fedsec.client.tracking.SummaryWriter, with transports injected in place of the site."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedsec import limits
from fedsec.client import tracking
from fedsec.client.tracking import SummaryWriter
from fedsec.errors import FedsecError
from fedsec.tracking.events import Event, EventKind, check_batch, to_proto
from fedsec.wire import fedsec_pb2

REPO = Path(__file__).resolve().parents[3]


class Site:
    """A transport that checks each batch as the site would, and keeps what it took."""

    def __init__(
        self, gate: threading.Event | None = None, failures: int = 0, delay: float = 0.0, gate_seconds: float = 2.0
    ) -> None:
        self.gate = gate
        self.gate_seconds = gate_seconds
        self.failures = failures
        self.delay = delay
        self.calls = 0
        self.batches: list[list[Event]] = []
        self._lock = threading.Lock()

    def __call__(self, events: list[Event]) -> None:
        with self._lock:
            self.calls += 1
            if self.calls <= self.failures:
                raise FedsecError("site unreachable")
        if self.gate is not None:
            self.gate.wait(self.gate_seconds)
        if self.delay:
            time.sleep(self.delay)
        batch = fedsec_pb2.EventBatch(job_id="job", events=[to_proto(e) for e in events])
        assert batch.ByteSize() <= limits.MAX_MESSAGE_BYTES
        assert check_batch(fedsec_pb2.EventBatch.FromString(batch.SerializeToString()), "site") == events
        with self._lock:
            self.batches.append(list(events))

    @property
    def events(self) -> list[Event]:
        with self._lock:
            return [e for b in self.batches for e in b]


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking, "RETRY_MIN_SECONDS", 0.01)
    monkeypatch.setattr(tracking, "RETRY_MAX_SECONDS", 0.05)


@pytest.fixture
def open_writer() -> Iterator[Callable[..., SummaryWriter]]:
    """Make writers (flush_secs 0.01 unless told); each is closed at the end of the test."""
    made: list[SummaryWriter] = []

    def make(site: Site, **kwargs: Any) -> SummaryWriter:
        kwargs.setdefault("flush_secs", 0.01)
        writer = SummaryWriter(transport=site, **kwargs)
        made.append(writer)
        return writer

    yield make
    for writer in made:
        writer.close(timeout=5)


def test_events_arrive_in_order_with_seq_and_one_writer_id(open_writer: Callable[..., SummaryWriter]) -> None:
    site = Site()
    writer = open_writer(site)
    assert re.fullmatch(r"[0-9a-f]{32}", writer.writer_id)
    for step in range(250):
        writer.add_scalar("train/loss", step / 2, step, walltime=1000.0 + step)
    writer.add_text("notes", "epoch 1\ndone", 3)
    writer.log_params({"lr": 0.01, "layers": 3})
    writer.set_tags({"team": "a"})
    writer.flush()
    events = site.events
    assert [e.seq for e in events] == list(range(253))
    assert {e.writer for e in events} == {writer.writer_id}
    assert [(e.tag, e.step, e.value, e.wall_time) for e in events[:250]] == [
        ("train/loss", s, s / 2, 1000.0 + s) for s in range(250)
    ]
    assert [e.kind for e in events[250:]] == [EventKind.TEXT, EventKind.PARAMS, EventKind.TAGS]
    assert (events[250].tag, events[250].step, events[250].text) == ("notes", 3, "epoch 1\ndone")
    assert events[251].mapping() == {"lr": "0.01", "layers": "3"}
    assert events[252].mapping() == {"team": "a"}
    assert writer.dropped == 0
    other = open_writer(site)
    assert other.writer_id != writer.writer_id


def test_step_none_is_zero_and_walltime_none_is_now(open_writer: Callable[..., SummaryWriter]) -> None:
    site = Site()
    writer = open_writer(site)
    before = time.time()
    writer.add_scalar("loss", 1.0)
    writer.flush()
    (event,) = site.events
    assert event.step == 0
    assert before <= event.wall_time <= time.time()


def test_add_scalars_fans_out(open_writer: Callable[..., SummaryWriter]) -> None:
    site = Site()
    writer = open_writer(site)
    writer.add_scalars("loss", {"train": 0.5, "val": np.float64(0.75)}, 4)
    writer.add_scalars("loss", {})
    writer.flush()
    events = site.events
    assert [(e.seq, e.tag, e.value, e.step) for e in events] == [(0, "loss/train", 0.5, 4), (1, "loss/val", 0.75, 4)]
    assert events[0].wall_time == events[1].wall_time


class FakeTensor:
    """A 0-d tensor as far as the writer can tell: something with .item()."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def item(self) -> Any:
        return self.value


def test_add_scalar_takes_numbers_and_things_with_item(open_writer: Callable[..., SummaryWriter]) -> None:
    site = Site()
    writer = open_writer(site)
    values: list[Any] = [
        3,
        0.5,
        np.float32(0.25),
        np.int64(7),
        np.float64(-2.5),
        np.array(1.5),
        FakeTensor(2.5),
        10**20,
    ]
    for value in values:
        writer.add_scalar("v", value, np.int64(1))
    writer.flush()
    assert [e.value for e in site.events] == [3.0, 0.5, 0.25, 7.0, -2.5, 1.5, 2.5, 1e20]
    assert all(type(e.value) is float and e.step == 1 for e in site.events)


class NoItem:
    pass


BAD_CALLS: list[tuple[str, Callable[[SummaryWriter], None], type[Exception], str]] = [
    ("str value", lambda w: w.add_scalar("loss", "1.0"), TypeError, "'loss' must be a number, not str"),
    ("None value", lambda w: w.add_scalar("loss", None), TypeError, "'loss' must be a number, not NoneType"),
    ("bool value", lambda w: w.add_scalar("loss", True), TypeError, "'loss' must be a number, not bool"),
    ("numpy bool", lambda w: w.add_scalar("loss", np.bool_(True)), TypeError, "'loss' must be a number, not bool"),
    ("complex", lambda w: w.add_scalar("loss", 1j), TypeError, "'loss' must be a number"),
    ("object", lambda w: w.add_scalar("loss", NoItem()), TypeError, "'loss' must be a number, not NoItem"),
    ("item str", lambda w: w.add_scalar("loss", FakeTensor("1")), TypeError, "'loss' must be a number, not str"),
    ("array", lambda w: w.add_scalar("loss", np.zeros(3)), TypeError, "'loss' is not a single number"),
    ("nan", lambda w: w.add_scalar("loss", float("nan")), ValueError, "'loss' is nan, not a finite number"),
    ("inf", lambda w: w.add_scalar("loss", np.float32("inf")), ValueError, "'loss' is inf"),
    ("item nan", lambda w: w.add_scalar("loss", FakeTensor(float("-inf"))), ValueError, "'loss' is -inf"),
    ("huge int", lambda w: w.add_scalar("loss", 10**400), ValueError, "'loss' is too large"),
    ("empty tag", lambda w: w.add_scalar("", 1.0), ValueError, "tag '': the tag is empty"),
    ("newline tag", lambda w: w.add_scalar("a\nb", 1.0), ValueError, r"tag 'a\\nb': .*non-printable"),
    ("long tag", lambda w: w.add_scalar("x" * 257, 1.0), ValueError, "257 characters long"),
    ("bytes tag", lambda w: w.add_scalar(b"loss", 1.0), TypeError, "tag must be a str, not bytes"),  # type: ignore[arg-type]
    ("negative step", lambda w: w.add_scalar("loss", 1.0, -1), ValueError, "step of 'loss' is -1"),
    ("huge step", lambda w: w.add_scalar("loss", 1.0, 2**63), ValueError, "step of 'loss'"),
    ("float step", lambda w: w.add_scalar("loss", 1.0, 1.5), TypeError, "step of 'loss' must be an int, not float"),  # type: ignore[arg-type]
    ("bool step", lambda w: w.add_scalar("loss", 1.0, True), TypeError, "step of 'loss' must be an int, not bool"),
    ("nan walltime", lambda w: w.add_scalar("loss", 1.0, 1, float("nan")), ValueError, "walltime of 'loss'"),
    ("str walltime", lambda w: w.add_scalar("loss", 1.0, 1, "now"), TypeError, "walltime of 'loss'"),  # type: ignore[arg-type]
    ("scalars, one bad", lambda w: w.add_scalars("loss", {"a": 1.0, "b": "x"}), TypeError, "'loss/b' must be a number"),
    ("scalars, bad key", lambda w: w.add_scalars("loss", {"a\n": 1.0}), ValueError, r"tag 'loss/a\\n'"),
    ("scalars, int key", lambda w: w.add_scalars("loss", {1: 1.0}), TypeError, "keys of 'loss' must be str"),  # type: ignore[dict-item]
    ("text not str", lambda w: w.add_text("notes", 5), TypeError, "text of 'notes' must be a str"),  # type: ignore[arg-type]
    ("text too long", lambda w: w.add_text("notes", "x" * (limits.MAX_EVENT_TEXT + 1)), ValueError, "tag 'notes'"),
    ("text surrogate", lambda w: w.add_text("notes", "\ud800"), ValueError, "lone surrogate"),
    ("params key", lambda w: w.log_params({1: "a"}), TypeError, "log_params: keys must be str"),  # type: ignore[dict-item]
    ("params empty key", lambda w: w.log_params({"": "a"}), ValueError, "log_params: a key is empty"),
    ("params value", lambda w: w.log_params({"a": "v" * 6001}), ValueError, "value of 'a' is 6001 characters"),
    ("params not mapping", lambda w: w.log_params([("a", "b")]), TypeError, "expected a mapping"),  # type: ignore[arg-type]
    ("tags key", lambda w: w.set_tags({"a\tb": 1}), ValueError, r"set_tags: the key 'a\\tb'"),
]


@pytest.mark.parametrize(("call", "error", "message"), [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_calls_raise_at_the_call_site_and_send_nothing(
    open_writer: Callable[..., SummaryWriter],
    call: Callable[[SummaryWriter], None],
    error: type[Exception],
    message: str,
) -> None:
    site = Site()
    writer = open_writer(site)
    with pytest.raises(error, match=message):
        call(writer)
    writer.flush(timeout=5)
    assert site.events == []
    assert writer.dropped == 0
    writer.add_scalar("loss", 1.0)
    writer.flush(timeout=5)
    assert [(e.seq, e.tag) for e in site.events] == [(0, "loss")]


def test_add_scalar_does_not_wait_for_the_site(open_writer: Callable[..., SummaryWriter]) -> None:
    gate = threading.Event()
    site = Site(gate=gate, gate_seconds=120.0)  # the first send blocks until the gate opens
    writer = open_writer(site)

    def add_all() -> None:
        for i in range(10_000):
            writer.add_scalar("loss", float(i), i)

    calls = threading.Thread(target=add_all)
    try:
        calls.start()
        calls.join(timeout=120)  # a bound for a broken writer, not a speed: the gate stays shut all along
        # every call returned while the site was still stuck in its first send
        assert not calls.is_alive(), "add_scalar waited for the site"
        assert site.events == []
    finally:
        gate.set()
    writer.flush(timeout=60)
    assert [e.seq for e in site.events] == list(range(10_000))
    assert all(len(b) <= limits.MAX_EVENTS_PER_BATCH for b in site.batches)


def test_failed_sends_are_retried_and_deliver_each_event_once_in_order(
    open_writer: Callable[..., SummaryWriter], caplog: pytest.LogCaptureFixture
) -> None:
    site = Site(failures=4)
    writer = open_writer(site)
    with caplog.at_level(logging.WARNING, logger="fedsec.client.tracking"):
        for i in range(2500):
            writer.add_scalar("loss", float(i), i)
        writer.flush(timeout=10)
    assert site.calls > 4
    assert [e.seq for e in site.events] == list(range(2500))
    assert [e.value for e in site.events] == [float(i) for i in range(2500)]
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 1 and "site unreachable" in retries[0].getMessage()


def test_a_full_queue_drops_the_newest_and_counts(
    open_writer: Callable[..., SummaryWriter], caplog: pytest.LogCaptureFixture
) -> None:
    gate = threading.Event()
    site = Site(gate=gate)
    writer = open_writer(site, max_queue=10)
    with caplog.at_level(logging.WARNING, logger="fedsec.client.tracking"):
        for i in range(15):
            writer.add_scalar("loss", float(i), i)
        assert writer.dropped == 5
        for i in range(1000):
            writer.add_text("notes", str(i))
        assert writer.dropped == 1005
    gate.set()
    writer.flush(timeout=10)
    assert [(e.seq, e.value) for e in site.events] == [(i, float(i)) for i in range(10)]
    warnings = [r.getMessage() for r in caplog.records if "queue full" in r.getMessage()]
    assert len(warnings) == 2  # one line per 1000 drops
    assert "tag=loss" in warnings[0] and "1 dropped" in warnings[0]
    assert "tag=notes" in warnings[1] and "1001 dropped" in warnings[1]
    writer.add_scalar("after", 1.0)  # room again: seqs go on without a gap
    writer.flush(timeout=10)
    assert site.events[-1].seq == 10


def test_flush_waits_for_the_site(open_writer: Callable[..., SummaryWriter]) -> None:
    site = Site(delay=0.2)
    writer = open_writer(site, flush_secs=30)
    for i in range(5):
        writer.add_scalar("loss", float(i))
    assert site.events == []
    writer.flush()
    assert len(site.events) == 5
    writer.flush()  # nothing new: returns at once


def test_flush_times_out_with_a_fedsec_error(open_writer: Callable[..., SummaryWriter]) -> None:
    gate = threading.Event()
    writer = open_writer(Site(gate=gate, failures=1))
    writer.add_scalar("loss", 1.0)
    with pytest.raises(FedsecError, match=r"1 events not handed to the site within 0.3 s"):
        writer.flush(timeout=0.3)
    gate.set()
    writer.flush(timeout=5)


def test_close_flushes_and_later_calls_raise() -> None:
    site = Site()
    writer = SummaryWriter("runs/ignored", transport=site, flush_secs=30)
    writer.add_scalar("loss", 1.0)
    writer.add_text("notes", "hi")
    writer.close()
    assert [e.seq for e in site.events] == [0, 1]
    calls: list[Callable[[], None]] = [
        lambda: writer.add_scalar("loss", 1.0),
        lambda: writer.add_scalars("loss", {"a": 1.0}),
        lambda: writer.add_text("notes", "x"),
        lambda: writer.log_params({"a": 1}),
        lambda: writer.set_tags({"a": 1}),
        writer.flush,
    ]
    for call in calls:
        with pytest.raises(ValueError, match="SummaryWriter is closed"):
            call()
    writer.close()  # a second close is a no-op
    assert len(site.events) == 2


def test_with_closes() -> None:
    site = Site()
    with SummaryWriter(transport=site, flush_secs=30) as writer:
        writer.add_scalar("loss", 1.0)
    assert len(site.events) == 1
    with pytest.raises(ValueError, match="closed"):
        writer.add_scalar("loss", 1.0)
    with pytest.raises(RuntimeError, match="boom"), SummaryWriter(transport=site) as other:
        other.add_scalar("loss", 2.0)
        raise RuntimeError("boom")
    assert len(site.events) == 2


def test_writer_is_thread_safe(open_writer: Callable[..., SummaryWriter]) -> None:
    site = Site()
    writer = open_writer(site)

    def log(name: str) -> None:
        for i in range(500):
            writer.add_scalar(name, float(i), i)

    threads = [threading.Thread(target=log, args=(f"t{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.flush(timeout=10)
    events = site.events
    assert [e.seq for e in events] == list(range(2000))
    for n in range(4):
        assert [e.value for e in events if e.tag == f"t{n}"] == [float(i) for i in range(500)]


def test_large_texts_go_in_batches_that_fit_a_message(open_writer: Callable[..., SummaryWriter]) -> None:
    site = Site()
    writer = open_writer(site, flush_secs=30)
    text = "é" * (limits.MAX_EVENT_TEXT // 2)
    for i in range(100):
        writer.add_text("notes", text, i)
    writer.flush(timeout=10)  # Site checks each batch's size
    assert len(site.batches) > 1
    assert [e.step for e in site.events] == list(range(100))


def test_params_and_tags_are_strings_split_in_events(open_writer: Callable[..., SummaryWriter]) -> None:
    site = Site()
    writer = open_writer(site)
    params = {f"p{i}": i for i in range(250)}
    writer.log_params({**params, "none": None, "text": "x\ny"})
    writer.set_tags({"owner": "site-1"})
    writer.log_params({})
    writer.flush()
    kinds = [e.kind for e in site.events]
    assert kinds == [EventKind.PARAMS] * 3 + [EventKind.TAGS]
    merged = {k: v for e in site.events[:3] for k, v in e.mapping().items()}
    assert merged == {**{k: str(v) for k, v in params.items()}, "none": "None", "text": "x\ny"}
    assert site.events[3].mapping() == {"owner": "site-1"}


def test_the_default_transport_is_the_client_api(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedsec.client import api

    site = Site()
    monkeypatch.setattr(api, "send_events", site)
    with SummaryWriter() as writer:
        writer.add_scalar("loss", 1.0)
    assert [e.tag for e in site.events] == ["loss"]


@pytest.mark.parametrize(
    "kwargs",
    [{"flush_secs": 0}, {"flush_secs": -1.0}, {"flush_secs": float("inf")}, {"max_queue": 0}, {"max_queue": 10**9}],
)
def test_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="SummaryWriter: (flush_secs|max_queue)"):
        SummaryWriter(transport=Site(), **kwargs)


SCRIPT = """
import gc, sys
from fedsec.client.tracking import SummaryWriter

def to_file(events):
    with open(sys.argv[1], "a") as f:
        f.writelines(f"{e.writer} {e.seq} {e.tag}\\n" for e in events)

kept = SummaryWriter(transport=to_file, flush_secs=60)
for i in range(50):
    kept.add_scalar("kept", float(i), i)
dropped = SummaryWriter(transport=to_file, flush_secs=60)
dropped.add_text("abandoned", "text")
del dropped
gc.collect()
print("exiting without close()")
"""


def test_interpreter_exit_flushes_writers_left_open(tmp_path: Path) -> None:
    out = tmp_path / "events.txt"
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    done = subprocess.run(
        [sys.executable, str(script), str(out)], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in out.read_text().splitlines()]
    by_tag: dict[str, list[int]] = {}
    for _, seq, tag in lines:
        by_tag.setdefault(tag, []).append(int(seq))
    assert by_tag == {"kept": list(range(50)), "abandoned": [0]}
    assert len({writer for writer, _, _ in lines}) == 2
