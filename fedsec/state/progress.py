"""A job's progress as admins see it: one document made from the typed records, nothing stored.

The document is what `get_job_meta` returns as progress_json and what a downloaded
result holds as progress.json: {"rounds": [{"round", "metrics", "sites", "rejected"
(, "failed")}], "final": {"metrics", "sites"} | null, and when there are any:
"refused": [{"round", "site", "reason"}], "sites_left": [{"site", "reason"}],
"site_restarts": {site: count}, "result": {"model", "round", "completed_rounds"}}.
The server parent makes it from its StateStore; the server job process from the
records it reported (fedsec.workflow.link), so both read the same. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fedsec.state.records import Participation, Refusal, ResultMeta, RoundKind, RoundRecord

_NO_PARTICIPATION = Participation()


def round_entry(record: RoundRecord) -> dict[str, Any]:
    """A training round as the document holds it."""
    entry: dict[str, Any] = {
        "round": record.number,
        "metrics": {k: float(record.metrics[k]) for k in sorted(record.metrics)},
        "sites": sorted(record.accepted),
        "rejected": sorted(record.refused),
    }
    if record.failed:
        entry["failed"] = sorted(record.failed)
    return entry


def refusal_entry(refusal: Refusal) -> dict[str, Any]:
    return {"round": refusal.round, "site": refusal.site, "reason": refusal.reason}


def result_entry(result: ResultMeta | None) -> dict[str, Any] | None:
    """The model a job kept: its file name in the result folder, its round and the rounds completed; None if none."""
    if result is None or not result.model_key or result.model_round is None:
        return None
    name = result.model_key.rsplit("/", 1)[-1]
    return {"model": name, "round": result.model_round, "completed_rounds": result.model_round + 1}


def progress_document(
    rounds: Iterable[RoundRecord],
    refusals: Iterable[Refusal],
    participation: Participation = _NO_PARTICIPATION,
    result: ResultMeta | None = None,
) -> dict[str, Any]:
    """The progress document (see the module docstring) of these records."""
    records = sorted(rounds, key=lambda r: r.number)
    final = [r for r in records if r.kind is RoundKind.EVALUATE]
    doc: dict[str, Any] = {
        "rounds": [round_entry(r) for r in records if r.kind is RoundKind.TRAIN],
        "final": None,
    }
    if final:
        doc["final"] = {
            "metrics": {k: float(v) for k, v in final[-1].metrics.items()},
            "sites": sorted(final[-1].accepted),
        }
    refused = [refusal_entry(r) for r in refusals]
    if refused:
        doc["refused"] = refused
    if participation.left:
        doc["sites_left"] = [{"site": s, "reason": r} for s, r in participation.left.items()]
    left = participation.left
    restarts = {s: n - (s in left) for s, n in sorted(participation.failures.items()) if n - (s in left)}
    if restarts:
        doc["site_restarts"] = restarts
    kept = result_entry(result)
    if kept is not None:
        doc["result"] = kept
    return doc
