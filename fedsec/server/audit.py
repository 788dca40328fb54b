"""The append-only audit log of admin commands: one JSON object per line.

Every admin command, allowed or refused, is appended (time, admin, role,
org, command, arguments, outcome, detail) with O_APPEND and flushed before
the call returns. Nothing here ever rewrites or truncates the file.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from fedsec.pki.certs import Identity

MAX_ARG_CHARS = 512
MAX_DETAIL_CHARS = 1024


class AuditLog:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._path = path
        self._lock = threading.Lock()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def record(self, who: Identity, command: str, args: dict[str, Any], outcome: str, detail: str = "") -> None:
        entry = {
            "time": round(time.time(), 3),
            "admin": who.name,
            "org": who.org,
            "role": who.role.value if who.role else "",
            "command": command,
            "args": {k: str(v)[:MAX_ARG_CHARS] for k, v in args.items()},
            "outcome": outcome,
            "detail": detail[:MAX_DETAIL_CHARS],
        }
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        with self._lock:
            os.write(self._fd, line)
            os.fsync(self._fd)

    def tail(self, count: int) -> list[dict[str, Any]]:
        """The last count entries, oldest first."""
        with self._path.open("r", encoding="utf-8") as f:
            lines = deque(f, maxlen=max(1, count))
        return [json.loads(line) for line in lines if line.strip()]

    def close(self) -> None:
        os.close(self._fd)
