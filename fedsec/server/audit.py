"""The audit trail of admin commands, kept in the server's state (fedsec.state), append-only.

Every admin command, allowed or refused, is appended (time, admin, role, org,
command, arguments, outcome, detail) before the call returns. Nothing here ever
changes or removes an entry. A trail kept by an older fedsec in the file
audit/audit.log (JSON lines) is copied into the state once, when the server first
starts with this version, and the file is renamed audit.log.imported.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from fedsec.pki.certs import Identity
from fedsec.state.interface import StateStore
from fedsec.state.records import AuditEntry

log = logging.getLogger(__name__)

MAX_ARG_CHARS = 512
MAX_DETAIL_CHARS = 1024
_IMPORTED = ".imported"


class AuditLog:
    """The audit trail (see the module docstring). Raises JobError when the state cannot be written."""

    def __init__(self, state: StateStore, legacy: Path | None = None) -> None:
        self._state = state
        if legacy is not None and legacy.exists():
            self._import(legacy)

    def _import(self, path: Path) -> None:
        count = 0
        with path.open("r", encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    doc = json.loads(line)
                    entry = AuditEntry(
                        float(doc["time"]), str(doc["admin"]), str(doc["org"]), str(doc["role"]),
                        str(doc["command"]), {str(k): str(v) for k, v in dict(doc["args"]).items()},
                        str(doc["outcome"]), str(doc.get("detail", "")),
                    )  # fmt: skip
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line of a server that died mid-write
                self._state.append_audit(entry)
                count += 1
        os.replace(path, path.with_name(path.name + _IMPORTED))
        log.info("audit: %d entries of %s copied into the server's state", count, path.name)

    def record(self, who: Identity, command: str, args: dict[str, Any], outcome: str, detail: str = "") -> None:
        entry = AuditEntry(
            time=round(time.time(), 3),
            admin=who.name,
            org=who.org,
            role=who.role.value if who.role else "",
            command=command,
            args={k: str(v)[:MAX_ARG_CHARS] for k, v in args.items()},
            outcome=outcome,
            detail=detail[:MAX_DETAIL_CHARS],
        )
        self._state.append_audit(entry)

    def tail(self, count: int) -> list[dict[str, Any]]:
        """The last count entries, oldest first, as the admin API returns them."""
        return [
            {
                "time": e.time,
                "admin": e.admin,
                "org": e.org,
                "role": e.role,
                "command": e.command,
                "args": dict(e.args),
                "outcome": e.outcome,
                "detail": e.detail,
            }
            for e in self._state.audit_tail(count)
        ]

    def close(self) -> None:
        """Nothing to release: the state belongs to the server (kept for the server's shutdown order)."""
