"""Logging set-up, called only from entry points (the CLI and process mains).

Records are one line each: time, level, logger, message; messages carry
key=value context and never secrets or payloads.
"""

from __future__ import annotations

import logging
import sys

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup(level: str = "INFO") -> None:
    """Send fedsec's log records to stderr at the given level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
