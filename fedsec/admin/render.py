"""Plain-text rendering of what the admin commands return: aligned tables, job blocks, progress bars.

This module owns how the shell shows things. It only formats values it is
given (JobInfo records and the dicts the Session returns) into strings; it
never calls the server, never reads the terminal and never uses colour, so the
same text works in a terminal, a pipe and a test.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TextIO, cast

from fedsec.api import JobInfo

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
MAX_CELL = 60  # longer cells are cut so that a table stays readable
NONE = "-"


def fmt_time(epoch: float | None) -> str:
    """A local time as YYYY-MM-DD HH:MM:SS, or '-' when unknown."""
    if not epoch:
        return NONE
    return time.strftime(TIME_FORMAT, time.localtime(epoch))


def fmt_duration(seconds: float | None) -> str:
    """A duration such as 45s, 3m 05s, 2h 04m or 3d 01h; '-' when unknown."""
    if seconds is None:
        return NONE
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def fmt_ago(value: float | None, now: float | None = None) -> str:
    """How long ago: value is seconds ago, or an epoch time (anything past 2001) that is turned into one."""
    if value is None:
        return "never"
    if value > 1e9:
        value = (time.time() if now is None else now) - value
    return f"{fmt_duration(value)} ago"


def fmt_bytes(n: float) -> str:
    """A byte count in B, KiB, MiB or GiB."""
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def fmt_value(value: Any) -> str:
    """One value as text: floats to 6 significant digits, lists comma-joined, dicts as compact JSON."""
    if value is None:
        return NONE
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | tuple):
        return ", ".join(fmt_value(v) for v in value) if value else "none"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return str(value)


def _cell(text: str, cut: bool) -> str:
    text = " ".join(text.split())  # a cell is one line
    return text if len(text) <= MAX_CELL or not cut else text[: MAX_CELL - 3] + "..."


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, cut: bool = True) -> str:
    """An aligned table: a header line, then one line per row; columns two spaces apart, no trailing blanks.

    Cells are made one line; with cut, those longer than MAX_CELL end in '...'.
    """
    body = [[_cell(c, cut) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    lines = []
    for row in [list(headers), *body]:
        line = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
        lines.append(line.rstrip())
    return "\n".join(lines) + "\n"


def key_values(pairs: Iterable[tuple[str, str]]) -> str:
    """'key:  value' lines with the values aligned; a value's further lines are indented to its column."""
    items = list(pairs)
    if not items:
        return ""
    width = max(len(k) for k, _ in items) + 1
    out = []
    for key, value in items:
        first, *rest = value.rstrip().splitlines() or [""]
        out.append(f"{(key + ':').ljust(width)}  {first}".rstrip())
        out += [(" " * (width + 2) + line).rstrip() for line in rest]
    return "\n".join(out) + "\n"


def flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested dicts as ('a.b', 'value') pairs in their order."""
    pairs: list[tuple[str, str]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            pairs += flatten(value, name + ".")
        else:
            pairs.append((name, fmt_value(value)))
    return pairs


# ---- jobs -------------------------------------------------------------------------------------------------------


def job_round(info: JobInfo) -> str:
    return f"{info.current_round}/{info.num_rounds}" if info.num_rounds else NONE


def job_duration(info: JobInfo, now: float | None = None) -> str:
    """Run time: start to end, or start to now while the job runs."""
    if info.start_time is None:
        return NONE
    end = info.end_time
    if end is None:
        if info.finished:
            return NONE
        end = time.time() if now is None else now
    return fmt_duration(end - info.start_time)


JOB_HEADERS = ("JOB ID", "NAME", "STATUS", "ROUND", "SUBMITTER", "SUBMITTED", "DURATION")


def jobs_table(jobs: Sequence[JobInfo], now: float | None = None) -> str:
    rows = [
        [j.job_id, j.name, j.status, job_round(j), j.submitter, fmt_time(j.submit_time), job_duration(j, now)]
        for j in jobs
    ]
    return table(JOB_HEADERS, rows)


def _metrics(metrics: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={fmt_value(v)}" for k, v in metrics.items()) or NONE


def job_block(info: JobInfo, now: float | None = None) -> str:
    """Every field of a job, one per line."""
    submitter = f"{info.submitter} ({info.submitter_org})" if info.submitter_org else info.submitter
    pairs = [
        ("job id", info.job_id),
        ("name", info.name),
        ("status", info.status),
        ("reason", info.reason or NONE),
        ("round", job_round(info)),
        ("submitter", submitter),
        ("submitted", fmt_time(info.submit_time)),
        ("started", fmt_time(info.start_time)),
        ("ended", fmt_time(info.end_time)),
        ("duration", job_duration(info, now)),
    ]
    pairs += [(f"meta.{k}", v) for k, v in flatten(info.meta)]
    rounds = info.progress.get("rounds") or []
    if rounds:
        last = rounds[-1]
        pairs.append(("rounds done", str(len(rounds))))
        pairs.append((f"round {last.get('round', len(rounds) - 1)}", _metrics(last.get("metrics") or {})))
    final = info.progress.get("final")
    if isinstance(final, Mapping):
        pairs.append(("final", _metrics(final.get("metrics") or final)))
    if info.refusals:
        pairs.append(("refused", "\n".join(info.refusals)))
    return key_values(pairs)


def stats(job_id: str, data: Mapping[str, Any]) -> str:
    """show_stats: a status line, a table of rounds with their metrics, and the final metrics."""
    head = f"job {job_id}: {data.get('status', '?')}"
    if data.get("num_rounds"):
        head += f", round {data.get('current_round', 0)}/{data['num_rounds']}"
    rounds: list[Mapping[str, Any]] = list(data.get("rounds") or [])
    names: list[str] = []
    for r in rounds:
        names += [k for k in (r.get("metrics") or {}) if k not in names]
    rows = [
        [
            str(r.get("round", i)),
            ",".join(r.get("sites") or []) or NONE,
            ",".join(r.get("rejected") or []) or NONE,
            *[fmt_value((r.get("metrics") or {}).get(n)) for n in names],
        ]
        for i, r in enumerate(rounds)
    ]
    text = head + "\n" + (table(["ROUND", "SITES", "REJECTED", *names], rows) if rounds else "no rounds finished yet\n")
    final = data.get("final")
    if isinstance(final, Mapping):
        text += f"final: {_metrics(final.get('metrics') or final)}\n"
    return text


def _indented(text: str) -> str:
    """Text whose lines after the first are indented by four spaces."""
    return "\n    ".join(text.rstrip().splitlines())


def errors(job_id: str, data: Mapping[str, Any]) -> str:
    """show_errors: the job's reason, each site's error text (indented), then a line per refused update."""
    reason = str(data.get("reason") or "")
    sites: Mapping[str, Any] = data.get("sites") or {}
    refused: Sequence[Any] = data.get("refused") or []
    if not reason and not sites and not refused:
        return f"job {job_id}: no errors reported\n"
    text = f"job {job_id}: {_indented(reason) or 'no reason recorded'}\n"
    for site, error in sites.items():
        text += f"{site}:\n    {_indented(str(error))}\n"
    for line in refused:
        text += f"{line}\n"
    return text


# ---- sites, server, audit ---------------------------------------------------------------------------------------


def server_status(data: Mapping[str, Any]) -> str:
    pairs = []
    for key, value in data.items():
        label = key.replace("_", " ")
        pairs.append((label, fmt_duration(float(value)) if key == "uptime" else fmt_value(value)))
    return key_values(pairs)


def sites_status(data: Mapping[str, Any], now: float | None = None) -> str:
    rows = [
        [
            str(s.get("name", "?")),
            str(s.get("org", "")),
            fmt_value(bool(s.get("alive"))),
            fmt_ago(s.get("last_seen"), now),
            fmt_value(list(s.get("running_jobs") or [])),
        ]
        for s in data.get("sites") or []
    ]
    return table(("SITE", "ORG", "ALIVE", "LAST SEEN", "RUNNING JOBS"), rows)


def clients_table(clients: Sequence[Mapping[str, Any]], now: float | None = None) -> str:
    rows = [
        [
            str(c.get("name", "?")),
            str(c.get("org", "")),
            fmt_ago(c.get("last_seen"), now),
            fmt_time(c.get("registered_at")),
            "removed" if c.get("removed") else "enabled",
        ]
        for c in clients
    ]
    return table(("SITE", "ORG", "LAST SEEN", "REGISTERED", "STATE"), rows)


def version(data: Mapping[str, Any]) -> str:
    text = f"server: {fmt_value(data.get('server'))}\n"
    sites: Mapping[str, Any] = data.get("sites") or {}
    if sites:
        text += table(("SITE", "VERSION"), [[name, fmt_value(v)] for name, v in sites.items()])
    return text


def audit_table(records: Sequence[Mapping[str, Any]]) -> str:
    def when(value: Any) -> str:
        return fmt_time(float(value)) if isinstance(value, int | float) else fmt_value(value)

    rows = [
        [
            when(r.get("time")),
            fmt_value(r.get("admin")),
            fmt_value(r.get("role")),
            fmt_value(r.get("command")),
            " ".join(map(str, r["args"])) if isinstance(r.get("args"), list) else fmt_value(r.get("args") or ""),
            fmt_value(r.get("outcome")),
            fmt_value(r.get("detail") or ""),
        ]
        for r in records
    ]
    return table(("TIME", "ADMIN", "ROLE", "COMMAND", "ARGS", "OUTCOME", "DETAIL"), rows)


# ---- progress ---------------------------------------------------------------------------------------------------


class ProgressBar:
    """A one-line progress bar redrawn in place with '\\r'; a Session progress callback (bytes done, total)."""

    def __init__(self, out: TextIO, label: str, width: int = 30) -> None:
        self._out = out
        self._label = label
        self._width = width
        self._shown: tuple[int, int] | None = None

    def __call__(self, done: int, total: int) -> None:
        frac = min(1.0, done / total) if total > 0 else 1.0
        key = (int(frac * 100), done == total)
        if key == self._shown:
            return  # redraw only when the percentage moves
        self._shown = key
        filled = int(frac * self._width)
        bar = "#" * filled + "." * (self._width - filled)
        self._out.write(f"\r{self._label} [{bar}] {frac:4.0%} {fmt_bytes(done)}/{fmt_bytes(total)}")
        self._out.flush()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """End the bar's line (if one was drawn)."""
        if self._shown is not None:
            self._out.write("\n")
            self._out.flush()
            self._shown = None


_UNSAFE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # ESC, CSI and every control but \t \n \r


class _TerminalSafe:
    """A text stream that writes to another with every control character but tab, newline and carriage
    return replaced by U+FFFD: text from sites and job code (errors, logs, metrics' names) cannot send
    escape sequences to the admin's terminal, whatever the server let through."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def write(self, text: str) -> int:
        self._out.write(_UNSAFE.sub("\ufffd", text))
        return len(text)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, getvalue...: the stream's own
        return getattr(self._out, name)


def terminal_safe(out: TextIO) -> TextIO:
    """out, writing no control character but tab, newline and carriage return (see _TerminalSafe)."""
    return out if isinstance(out, _TerminalSafe) else cast(TextIO, _TerminalSafe(out))
