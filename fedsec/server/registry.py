"""The sites the server knows: when each was last heard from, and which are alive.

A site is alive while its heartbeats arrive within the heartbeat timeout.
Listeners hear every change of the alive set (the job manager forwards it to
running workflows). Sites an admin removed are refused by the fingerprint of
the certificate they had, kept in a file, until re-enabled or re-issued.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from fedsec import _fs
from fedsec.errors import AuthError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteInfo:
    name: str
    org: str
    last_seen: float  # time.monotonic()
    registered_at: float  # time.time()
    version: str = ""
    sys_info: str = "{}"
    running_jobs: tuple[str, ...] = field(default_factory=tuple)
    fingerprint: str = ""  # of the certificate it last connected with


@dataclass(frozen=True)
class _Removed:
    fingerprint: str  # of the certificate an admin removed
    org: str  # the site's org from that certificate ("" in files written before orgs were kept)


def _load_removed(path: Path) -> dict[str, _Removed]:
    """The removed sites file: {name: {fingerprint, org}}, or the older {name: fingerprint}."""
    if not path.exists():
        return {}
    doc = json.loads(path.read_text())
    return {
        name: _Removed(value, "") if isinstance(value, str) else _Removed(value["fingerprint"], value["org"])
        for name, value in doc.items()
    }


class SiteRegistry:
    """Thread-safe table of sites; a background thread expires silent ones."""

    def __init__(self, timeout: float, on_change: Callable[[frozenset[str]], None], removed_file: Path) -> None:
        self._timeout = timeout
        self._on_change = on_change
        self._lock = threading.Lock()
        self._sites: dict[str, SiteInfo] = {}
        self._removed_file = removed_file
        self._removed = _load_removed(removed_file)
        self._shutdown: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._expire_loop, name="site-expiry", daemon=True)
        self._thread.start()

    def check_allowed(self, name: str, fingerprint: str) -> None:
        """Raise AuthError when an admin removed this site's certificate."""
        with self._lock:
            if name in self._removed and self._removed[name].fingerprint == fingerprint:
                raise AuthError(f"site {name} was removed by an admin; re-enable it or re-issue its certificate")

    def seen(self, name: str, org: str, **changes: object) -> None:
        """Record a call from site name (from its verified certificate)."""
        now = time.monotonic()
        with self._lock:
            old = self._sites.get(name)
            base = old or SiteInfo(name, org, now, time.time())
            self._sites[name] = replace(base, last_seen=now, **changes)  # type: ignore[arg-type]
        if old is None:
            log.info("site=%s is alive", name)
            self._notify()

    def alive(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._sites)

    def sites(self) -> list[SiteInfo]:
        with self._lock:
            return sorted(self._sites.values(), key=lambda s: s.name)

    def get(self, name: str) -> SiteInfo | None:
        with self._lock:
            return self._sites.get(name)

    def fingerprint_of(self, name: str) -> str | None:
        with self._lock:
            site = self._sites.get(name)
            return site.fingerprint if site is not None else None

    def removed(self) -> set[str]:
        with self._lock:
            return set(self._removed)

    def org_of(self, name: str) -> str:
        """The org of a connected or removed site (from its certificate); "" when not known."""
        with self._lock:
            site = self._sites.get(name)
            if site is not None:
                return site.org
            gone = self._removed.get(name)
            return gone.org if gone is not None else ""

    def remove(self, name: str, fingerprint: str) -> None:
        with self._lock:
            site = self._sites.pop(name, None)
            self._removed[name] = _Removed(fingerprint, site.org if site else "")
            self._save_removed()
        self._notify()

    def enable(self, name: str) -> bool:
        with self._lock:
            found = self._removed.pop(name, None) is not None
            self._save_removed()
        return found

    def _save_removed(self) -> None:
        doc = {n: {"fingerprint": r.fingerprint, "org": r.org} for n, r in self._removed.items()}
        _fs.write_atomic(self._removed_file, json.dumps(doc).encode(), mode=0o600)

    def request_shutdown(self, names: set[str]) -> None:
        with self._lock:
            self._shutdown |= names

    def take_shutdown(self, name: str) -> bool:
        with self._lock:
            if name in self._shutdown:
                self._shutdown.discard(name)
                return True
            return False

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
