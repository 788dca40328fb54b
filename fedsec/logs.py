"""Logging set-up, called only from entry points (the CLI and process mains), and rate-limited records.

Records are one line each: time, level, logger, message; messages carry
key=value context and never secrets or payloads. RateLimitedLog is the one
home of rate limiting: what a peer can make the server log (a refusal, an
undecodable message) goes through it, so no peer can flood the log.
"""

from __future__ import annotations

import logging
import secrets
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_MAX_KEYS = 4096  # distinct keys remembered; the oldest is forgotten first


def setup(level: str = "INFO") -> None:
    """Send fedsec's log records to stderr at the given level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


@dataclass(frozen=True)
class Ticket:
    """A RateLimiter's answer: whether to act now, how many events it held back before, and the window's id."""

    allowed: bool
    suppressed: int  # events held back in the window that just ended (when allowed)
    ident: str  # a short random id, the same for every event of one window


@dataclass
class _Window:
    started: float
    ident: str
    allowed: int = 1
    suppressed: int = 0


class RateLimiter:
    """At most burst events per key per interval seconds; keys bounded in number (least recently used forgotten).

    Thread-safe.
    """

    def __init__(self, interval: float = 60.0, max_keys: int = _MAX_KEYS, burst: int = 1) -> None:
        self.interval = interval
        self._burst = burst
        self._max_keys = max_keys
        self._windows: OrderedDict[Hashable, _Window] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, key: Hashable) -> Ticket:
        """Whether an event under key may act now; if not, it is counted for the next allowed one."""
        now = time.monotonic()
        with self._lock:
            window = self._windows.get(key)
            if window is not None and now - window.started < self.interval:
                self._windows.move_to_end(key)
                if window.allowed < self._burst:
                    window.allowed += 1
                    return Ticket(True, 0, window.ident)
                window.suppressed += 1
                return Ticket(False, 0, window.ident)
            suppressed = window.suppressed if window is not None else 0
            window = _Window(now, secrets.token_hex(6))  # not uuid: it costs every process platform's import
            self._windows[key] = window
            self._windows.move_to_end(key)
            while len(self._windows) > self._max_keys:
                self._windows.popitem(last=False)
        return Ticket(True, suppressed, window.ident)

    def __len__(self) -> int:
        return len(self._windows)


class RateLimitedLog:
    """A logger that writes at most burst lines per key per interval seconds.

    Events under a key within the interval after a logged one are counted, not
    written; the next line written under that key says how many were left out.
    """

    def __init__(
        self, logger: logging.Logger, interval: float = 60.0, max_keys: int = _MAX_KEYS, burst: int = 1
    ) -> None:
        self._logger = logger
        self.limiter = RateLimiter(interval, max_keys, burst)

    def log(
        self,
        level: int,
        key: Hashable,
        msg: str,
        *args: object,
        with_id: bool = False,
        traceback: tuple[RateLimiter, Hashable] | None = None,
    ) -> Ticket:
        """Log msg % args at level unless a line under key was written in the last interval seconds.

        with_id: end the line with id=<the ticket's id> (an error id a caller was told).
        traceback: (limiter, key): attach the current exception's traceback when that limiter allows it.
        """
        ticket = self.limiter.check(key)
        if not ticket.allowed:
            return ticket
        if with_id:
            msg += f" id={ticket.ident}"
        if ticket.suppressed:
            msg += f" ({ticket.suppressed} similar in the previous {self.limiter.interval:g} s not logged)"
        exc_info = traceback is not None and traceback[0].check(traceback[1]).allowed
        self._logger.log(level, msg, *args, exc_info=exc_info)
        return ticket
