"""fedsec.workflow.tracking.Tracker: a backend that fails is retried in the background and warned about, never fatal."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from fedsec.errors import JobError
from fedsec.tracking.events import Event, EventKind
from fedsec.tracking.receivers import Receiver, RunEnd
from fedsec.workflow.tracking import Tracker


class FakeReceiver:
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.metrics: dict[int, Mapping[str, float]] = {}
        self.models: list[Path | None] = []
        self.ended: RunEnd | None = None
        self.fail = False

    def site_events(self, site: str, events: Sequence[Event]) -> None:
        if self.fail:
            raise JobError("mlflow: down")
        self.events += [(site, e.seq) for e in events]

    def global_metrics(self, current_round: int, metrics: Mapping[str, float]) -> None:
        self.metrics[current_round] = metrics

    def final_model(self, path: Path | None) -> None:
        self.models.append(path)

    def close(self, end: RunEnd = RunEnd.FINISHED) -> None:
        self.ended = end


def wait(cond: object, what: str) -> None:
    import time

    assert callable(cond)
    deadline = time.monotonic() + 60
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def event(seq: int) -> Event:
    return Event("ab" * 16, seq, EventKind.SCALAR, "loss", seq, 1.7e9, 0.5)


def test_backend_down_at_start_is_retried_and_what_waited_is_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fedsec.workflow.tracking")
    receiver = FakeReceiver()
    tries: list[int] = []

    def opener() -> Sequence[Receiver]:
        tries.append(1)
        if len(tries) < 3:
            raise JobError("mlflow at http://h: open: connection refused")
        return [receiver]

    tracker = Tracker(tmp_path / "tracking.db", opener, "team", retry_seconds=(0.01,))
    tracker.global_metrics(0, {"acc": 0.5})  # the round's result stands while the backend is down
    wait(lambda: tracker.ready, "the receivers to open")
    assert len(tries) == 3
    assert tracker.site_events("site-1", [event(0), event(1)]) == (2, 0)
    tracker.final_model(None)
    tracker.close(RunEnd.FAILED)
    assert receiver.metrics == {0: {"acc": 0.5}}
    assert receiver.events == [("site-1", 0), ("site-1", 1)]
    assert receiver.ended is RunEnd.FAILED
    warnings = [r.getMessage() for r in caplog.records]
    assert any("backend team: cannot open it (try 1" in w and "the job goes on" in w for w in warnings)
    assert any("open after 3 tries" in w for w in warnings)


def test_events_refused_until_open_and_on_failure_then_taken_once(tmp_path: Path) -> None:
    receiver = FakeReceiver()
    opened: list[bool] = []

    def opener() -> Sequence[Receiver]:
        if not opened:
            opened.append(True)
            raise JobError("not yet")
        return [receiver]

    tracker = Tracker(tmp_path / "tracking.db", opener, "local", retry_seconds=(0.2,))
    with pytest.raises(JobError, match="not open yet; send the events again"):
        tracker.site_events("site-1", [event(0)])
    wait(lambda: tracker.ready, "the receivers to open")
    receiver.fail = True
    with pytest.raises(JobError, match="down"):
        tracker.site_events("site-1", [event(0)])
    receiver.fail = False
    assert tracker.site_events("site-1", [event(0)]) == (1, 0)  # not marked seen by the failed try
    assert tracker.site_events("site-1", [event(0)]) == (0, 1)
    tracker.close()
    assert receiver.ended is RunEnd.FINISHED


def test_backend_never_open_ends_quietly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def opener() -> Sequence[Receiver]:
        raise JobError("down")

    tracker = Tracker(tmp_path / "tracking.db", opener, "team", retry_seconds=(0.01,))
    tracker.global_metrics(0, {"acc": 1.0})
    tracker.close(RunEnd.KILLED)  # never raises
    assert any("never opened" in r.getMessage() for r in caplog.records)
