"""The sites the server knows: when each was last heard from, and which are alive.

A site is alive while its heartbeats arrive within the heartbeat timeout.
Listeners hear every change of the alive set (the job manager forwards it to
running workflows). Heartbeats wait on `changed` for job assignments.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteInfo:
    name: str
    org: str
    last_seen: float  # time.monotonic()
    registered_at: float  # time.time()


class SiteRegistry:
    """Thread-safe table of sites; a background thread expires silent ones."""

    def __init__(self, timeout: float, on_change: Callable[[frozenset[str]], None]) -> None:
        self._timeout = timeout
        self._on_change = on_change
        self._lock = threading.Lock()
        self._sites: dict[str, SiteInfo] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._expire_loop, name="site-expiry", daemon=True)
        self._thread.start()

    def seen(self, name: str, org: str) -> None:
        """Record a call from site name (from its verified certificate)."""
        now = time.monotonic()
        with self._lock:
            known = name in self._sites
            registered = self._sites[name].registered_at if known else time.time()
            self._sites[name] = SiteInfo(name, org, now, registered)
        if not known:
            log.info("site=%s is alive", name)
            self._notify()

    def alive(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._sites)

    def sites(self) -> list[SiteInfo]:
        with self._lock:
            return sorted(self._sites.values(), key=lambda s: s.name)

    def close(self) -> None:
        self._stop.set()

    def _expire_loop(self) -> None:
        while not self._stop.wait(min(1.0, self._timeout / 4)):
            cutoff = time.monotonic() - self._timeout
            with self._lock:
                gone = [n for n, s in self._sites.items() if s.last_seen < cutoff]
                for name in gone:
                    del self._sites[name]
            for name in gone:
                log.warning("site=%s is gone: no heartbeat for %.0f s", name, self._timeout)
            if gone:
                self._notify()

    def _notify(self) -> None:
        self._on_change(self.alive())
