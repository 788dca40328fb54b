"""The audit trail: kept in the server's state; a trail an older fedsec kept in audit/audit.log is imported once."""

from __future__ import annotations

import json
from pathlib import Path

from fedsec.pki.certs import Identity, Kind, Role
from fedsec.server.audit import AuditLog
from fedsec.state.sqlite import open_sqlite

WHO = Identity("admin@acme.org", "acme", Kind.ADMIN, Role.PROJECT_ADMIN)


def test_entries_are_kept_in_the_state_and_survive_reopening(tmp_path: Path) -> None:
    state = open_sqlite(tmp_path / "jobs.db")
    audit = AuditLog(state)
    audit.record(WHO, "abort_job", {"job": "x" * 600}, "refused", "d" * 2000)
    state.close()
    [entry] = AuditLog(open_sqlite(tmp_path / "jobs.db")).tail(10)
    assert (entry["admin"], entry["org"], entry["role"], entry["command"]) == (
        "admin@acme.org", "acme", "project_admin", "abort_job"
    )  # fmt: skip
    assert len(entry["args"]["job"]) == 512 and len(entry["detail"]) == 1024 and entry["outcome"] == "refused"


def test_an_older_audit_log_file_is_imported_once(tmp_path: Path) -> None:
    legacy = tmp_path / "audit" / "audit.log"
    legacy.parent.mkdir()
    old = {"time": 5.0, "admin": "a@b.org", "org": "b", "role": "lead", "command": "submit_job",
           "args": {"job": "j"}, "outcome": "allowed", "detail": ""}  # fmt: skip
    legacy.write_text(json.dumps(old) + "\n" + '{"time": 6.0, "adm')  # a torn last line
    state = open_sqlite(tmp_path / "jobs.db")
    audit = AuditLog(state, legacy=legacy)
    audit.record(WHO, "list_jobs", {}, "allowed")
    assert [e["command"] for e in audit.tail(10)] == ["submit_job", "list_jobs"]
    assert audit.tail(10)[0] == old
    assert not legacy.exists() and legacy.with_name("audit.log.imported").exists()
    AuditLog(state, legacy=legacy)  # the next start finds nothing to import
    assert len(audit.tail(10)) == 2
    state.close()
