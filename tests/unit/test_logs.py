from __future__ import annotations

import logging
import time

import pytest

from fedsec import logs


def test_one_line_per_key_per_interval(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    limited = logs.RateLimitedLog(logging.getLogger("t"), interval=60.0)
    with caplog.at_level(logging.INFO, logger="t"):
        first = limited.log(logging.INFO, "site-1", "site=%s registered", "site-1")
        repeats = [limited.log(logging.INFO, "site-1", "site=%s registered", "site-1") for _ in range(1000)]
        other = limited.log(logging.INFO, "site-2", "site=%s registered", "site-2")
        clock[0] += 61
        later = limited.log(logging.INFO, "site-1", "site=%s registered", "site-1")
    assert first.allowed and other.allowed and later.allowed
    assert not any(r.allowed for r in repeats)
    assert {r.ident for r in repeats} == {first.ident} and later.ident != first.ident
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "site=site-1 registered",
        "site=site-2 registered",
        "site=site-1 registered (1000 similar in the previous 60 s not logged)",
    ]


def test_keys_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    limited = logs.RateLimitedLog(logging.getLogger("t"), interval=60.0, max_keys=2)
    with caplog.at_level(logging.INFO, logger="t"):
        for key in ("a", "b", "c", "a"):
            limited.log(logging.INFO, key, "key=%s", key)
    assert len(limited.limiter) == 2
    assert [r.getMessage() for r in caplog.records] == ["key=a", "key=b", "key=c", "key=a"]  # a was forgotten


def test_ids_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    limited = logs.RateLimitedLog(logging.getLogger("t"), interval=60.0)
    tracebacks = logs.RateLimiter(interval=60.0)
    with caplog.at_level(logging.INFO, logger="t"):
        for key in ("a", "b"):
            try:
                raise ValueError("boom")
            except ValueError:
                ticket = limited.log(logging.ERROR, key, "failed", with_id=True, traceback=(tracebacks, "rpc"))
            assert caplog.records[-1].getMessage() == f"failed id={ticket.ident}"
    assert [bool(r.exc_info) for r in caplog.records] == [True, False]  # one traceback per limiter window


def test_a_burst_per_window(caplog: pytest.LogCaptureFixture) -> None:
    limited = logs.RateLimitedLog(logging.getLogger("t"), interval=60.0, burst=3)
    with caplog.at_level(logging.INFO, logger="t"):
        tickets = [limited.log(logging.INFO, "site-1", "registered") for _ in range(100)]
    assert [t.allowed for t in tickets[:4]] == [True, True, True, False]
    assert len(caplog.records) == 3
