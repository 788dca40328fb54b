"""RoundPrinter: a monitor_job callback that prints each round's metrics once, as it completes."""

from __future__ import annotations

from typing import Any

from fedsec.api.session import JobInfo


class RoundPrinter:
    """Prints a line per completed round, and one for the final evaluation.

    A round's metrics are those the sites measured on the global model the round
    started from, before training.
    """

    def __init__(self) -> None:
        self.printed: set[Any] = set()

    def __call__(self, info: JobInfo) -> None:
        for entry in info.progress.get("rounds", []):
            self._line(entry["round"], f"round {entry['round'] + 1}/{info.num_rounds}", entry.get("metrics", {}))
        final = info.progress.get("final")
        if final:
            self._line("final", "final global model", final.get("metrics", {}))

    def _line(self, key: Any, label: str, metrics: dict[str, float]) -> None:
        if key not in self.printed:
            self.printed.add(key)
            print(f"{label}: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())), flush=True)
