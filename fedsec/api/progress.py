"""RoundPrinter: a monitor_job callback printing each round's metrics once, refused updates, what the job does."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from fedsec.api.session import JobInfo

SUBMITTED = "submitted"


def status_line(info: JobInfo) -> str:
    """What a job is doing now, in one line: the sites it waits for, or its status and round."""
    if info.waiting is not None:
        return info.waiting.line()
    if info.finished:
        return f"job {info.job_id}: {info.status}"
    if info.status == SUBMITTED:
        return f"job {info.job_id}: submitted, waiting to be started"
    if info.current_round >= info.num_rounds:  # every round done: the sites evaluate the final model
        return f"job {info.job_id}: {info.status}, evaluating the final model"
    return f"job {info.job_id}: {info.status}, round {info.current_round + 1}/{info.num_rounds}"


class RoundPrinter:
    """Prints a line per completed round, and one for the final evaluation, to out (default stdout).

    A round's metrics are those the sites measured on the global model the round
    started from, before training. When a call brings no new round, a status line
    (status_line: "waiting for sites: 2 of 3 connected, site-3 missing", or the
    round under way) goes to status (default stderr), so that stdout holds only
    the rounds; monitor_job calls at least every 10 s, so a follower is never silent longer.
    Each update the server refused is printed to status once, when it is first seen
    ("site-2 round 0: update refused: tensor 'w' has shape (9, 1), the model has (8, 1)").
    """

    def __init__(self, out: TextIO | None = None, status: TextIO | None = None) -> None:
        self.printed: set[Any] = set()
        self._out = out
        self._status = status

    def __call__(self, info: JobInfo) -> None:
        for line in info.refusals:  # as they happen: a site's update that the server refused, and why
            if ("refused", line) not in self.printed:
                self.printed.add(("refused", line))
                print(line, file=self._status or sys.stderr, flush=True)
        new = False
        for entry in info.progress.get("rounds", []):
            new |= self._line(entry["round"], f"round {entry['round'] + 1}/{info.num_rounds}", entry.get("metrics", {}))
        final = info.progress.get("final")
        if final:
            new |= self._line("final", "final global model", final.get("metrics", {}))
        if not new and not info.finished:
            print(status_line(info), file=self._status or sys.stderr, flush=True)

    def _line(self, key: Any, label: str, metrics: dict[str, float]) -> bool:
        if key in self.printed:
            return False
        self.printed.add(key)
        text = f"{label}: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))
        print(text, file=self._out or sys.stdout, flush=True)
        return True
