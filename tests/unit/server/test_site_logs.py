"""The server's store of sites' job logs: appends by offset per run, the cap, restarts, readers' cursors."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsec import limits
from fedsec.errors import WireError
from fedsec.server.site_logs import RESTART_MARKER, JobLogs, capped_note, clean_text


def test_a_retried_piece_is_stored_once(tmp_path: Path) -> None:
    logs = JobLogs(tmp_path)
    assert logs.append("site-1", "run1", 0, b"line 1\n", False).offset == 7
    assert logs.append("site-1", "run1", 0, b"line 1\n", False).offset == 7  # the ack was lost: sent again
    assert logs.append("site-1", "run1", 4, b" 1\nline 2\n", False).offset == 14  # overlaps what is there
    piece = logs.read("site-1", 0, 1000, from_start=True, whole_lines=True)
    assert piece.text == "line 1\nline 2\n"
    assert (piece.offset, piece.more, piece.closed) == (14, False, False)


def test_a_piece_past_the_end_is_refused_with_where_to_send_from(tmp_path: Path) -> None:
    logs = JobLogs(tmp_path)
    logs.append("site-1", "run1", 0, b"abc\n", False)
    done = logs.append("site-1", "run1", 10, b"later\n", False)
    assert (done.offset, done.full) == (4, False)
    assert logs.append("site-1", "run2", 5, b"x", False).offset == 0  # a new run starts at its start
    assert logs.read("site-1", 0, 100, from_start=True, whole_lines=False).text == "abc\n"


def test_a_restarted_script_is_a_new_run_after_a_marker(tmp_path: Path) -> None:
    logs = JobLogs(tmp_path)
    logs.append("site-1", "run1", 0, b"first run, no newline", True)
    assert logs.append("site-1", "run2", 0, b"second\n", False).offset == 7
    text = logs.read("site-1", None, 1000, from_start=True, whole_lines=False).text
    assert text == "first run, no newline\n" + RESTART_MARKER.decode() + "second\n"
    assert logs.append("site-1", "run1", 21, b"late", False).full  # the ended run takes nothing more


def test_the_last_piece_closes_the_log(tmp_path: Path) -> None:
    logs = JobLogs(tmp_path)
    logs.append("site-1", "r", 0, b"a\npartial", False)
    assert logs.read("site-1", 0, 100, from_start=True, whole_lines=True).text == "a\n"  # the line is not done
    assert logs.append("site-1", "r", 9, b" line", True).full  # the run ended: the site sends no more
    piece = logs.read("site-1", 2, 100, from_start=False, whole_lines=True)
    assert (piece.text, piece.closed) == ("partial line", True)


def test_the_cap_per_site_and_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_SITE_JOB_LOG_BYTES", 10)
    logs = JobLogs(tmp_path)
    done = logs.append("site-1", "r", 0, b"0123456\n89abcdef\n", False)
    assert (done.offset, done.full) == (10, True)
    assert (tmp_path / "site_logs" / "site-1.log").read_bytes() == b"0123456\n89"
    tail = logs.tail("site-1", 100)
    assert tail == "0123456\n89" + capped_note()
    assert logs.append("site-2", "r", 0, b"other site\n", False).offset == 10  # each site has its own


def test_a_tail_starts_at_a_line(tmp_path: Path) -> None:
    logs = JobLogs(tmp_path)
    logs.append("site-1", "r", 0, b"".join(b"line %d\n" % i for i in range(100)), False)
    piece = logs.read("site-1", None, 20, from_start=False, whole_lines=True)
    assert piece.text == "line 98\nline 99\n"
    assert logs.read("site-1", piece.offset, 20, from_start=False, whole_lines=True).text == ""


def test_a_reader_gets_at_most_its_limit_and_is_told_of_more(tmp_path: Path) -> None:
    logs = JobLogs(tmp_path)
    logs.append("site-1", "r", 0, b"aaaa\nbbbb\ncccc\n", False)
    first = logs.read("site-1", 0, 8, from_start=True, whole_lines=True)
    assert (first.text, first.more) == ("aaaa\n", True)
    second = logs.read("site-1", first.offset, 100, from_start=True, whole_lines=True)
    assert (second.text, second.more) == ("bbbb\ncccc\n", False)


def test_job_code_cannot_send_terminal_controls() -> None:
    assert clean_text(b"ok\x1b[2J\r\nbar\rbaz\tq\x00\xff\n") == "ok\ufffd[2J\nbar\nbaz\tq\ufffd\ufffd\n"


@pytest.mark.parametrize(
    ("site", "run", "data", "message"),
    [
        ("../x", "r", b"", "site"),
        ("site-1", "", b"", "run id"),
        ("site-1", "a/b", b"", "run id"),
        ("site-1", "r", b"x" * (limits.MAX_LOG_CHUNK_BYTES + 1), "a piece of more than"),
    ],
)
def test_malformed_pieces_are_refused(tmp_path: Path, site: str, run: str, data: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        JobLogs(tmp_path).append(site, run, 0, data, False)
    assert not list(tmp_path.rglob("*.log"))


def test_a_site_inventing_runs_stops_being_written_to(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_SITE_LOG_RUNS", 3)
    logs = JobLogs(tmp_path)
    for n in range(3):
        assert not logs.append("site-1", f"run{n}", 0, b"x\n", False).full
    state = tmp_path / "site_logs" / "site-1.json"
    size, saved = logs.size("site-1"), state.read_bytes()
    for n in range(3, 50):  # a new run id per call: nothing written, not even the state
        assert logs.append("site-1", f"run{n}", 0, b"x\n", False).full
    assert logs.size("site-1") == size and state.read_bytes() == saved
    assert logs.append("site-1", "run2", 2, b"more\n", False).offset == 7  # the run being appended goes on
    assert logs.append("site-2", "run0", 0, b"y\n", False).offset == 2  # each site counts its own


def test_a_full_log_takes_no_new_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_SITE_JOB_LOG_BYTES", 10)
    logs = JobLogs(tmp_path)
    assert logs.append("site-1", "a", 0, b"0123456789abc", False).full
    state = (tmp_path / "site_logs" / "site-1.json").read_bytes()
    assert logs.append("site-1", "b", 0, b"x", False).full
    assert (tmp_path / "site_logs" / "site-1.json").read_bytes() == state  # no switch recorded
