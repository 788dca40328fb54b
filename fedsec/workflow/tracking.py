"""The job's tracking sink: drops events it already has, then writes the rest to the receivers.

Sites may send an event again after a restart; (site, writer, seq) identifies
it, and tracking.db in the job's workspace remembers what was written. An
event is marked written only after every receiver took it, in one
transaction, so a failed write is retried by the site and nothing is lost.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedsec.errors import JobError
from fedsec.tracking.events import Event

log = logging.getLogger(__name__)


class Tracker:
    def __init__(self, db_path: Path, receivers: Sequence[Any]) -> None:
        self._receivers = list(receivers)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS seen (site TEXT, writer TEXT, seq INTEGER, PRIMARY KEY (site, writer, seq))"
            )
        except sqlite3.Error as exc:
            raise JobError(f"tracking database {db_path}: {exc}") from exc

    def site_events(self, site: str, events: Sequence[Event]) -> tuple[int, int]:
        """Write the events not seen before; (stored, duplicates). JobError when a receiver fails."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                fresh = []
                for event in events:
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO seen VALUES (?, ?, ?)", (site, event.writer, event.seq)
                    )
                    if cur.rowcount == 1:
                        fresh.append(event)
                if fresh:
                    for receiver in self._receivers:
                        receiver.site_events(site, fresh)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return len(fresh), len(events) - len(fresh)

    def global_metrics(self, current_round: int, metrics: Mapping[str, float]) -> None:
        for receiver in self._receivers:
            try:
                receiver.global_metrics(current_round, metrics)
            except JobError as exc:  # the round's result stands; the metrics are also in progress.json
                log.warning("tracking: global metrics of round %d not written: %s", current_round, exc)

    def final_model(self, path: Path | None) -> None:
        for receiver in self._receivers:
            try:
                receiver.final_model(path)
            except JobError as exc:
                log.warning("tracking: final model not logged: %s", exc)

    def close(self) -> None:
        for receiver in self._receivers:
            receiver.close()
        self._db.close()
