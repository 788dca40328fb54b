"""A job's result on the server: the global model its result folder keeps, and from which round.

Layout of a job's workspace (written by its workflow process): checkpoints/round_NNNNN.fsa (.fsh when the
model is encrypted) after each round, state.json ({"completed_rounds": N}), progress.json, and result/, the
folder an admin downloads. A completed job keeps its final model there; an aborted or failed job keeps the
global model of its last completed round: the workflow copies it as it ends, and the server parent does when
the workflow was killed before it could. progress.json's "result" entry says which model it is:
{"model": "global_model.fsa", "round": N (numbered from 0, as the rounds of progress.json),
"completed_rounds": N + 1}; no entry and no model when no round completed.

This module only copies files inside one workspace and never trusts a name it did not make.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fedsec import _fs, limits
from fedsec.errors import JobError

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
RESULT = "result"
STATE = "state.json"
PROGRESS = "progress.json"
MODEL_STEM = "global_model"
MODEL_SUFFIXES = (".fsa", ".fsh")  # plain, encrypted
_MAX_STATE_BYTES = 64 << 10
_MAX_PROGRESS_BYTES = limits.MAX_META_JSON_BYTES * 64
_MODEL = re.compile(r"global_model\.fs[ah]")


def checkpoint(workspace: Path, number: int, suffix: str) -> Path:
    """The checkpoint of round number (the global model after it)."""
    return workspace / CHECKPOINTS / f"round_{number:05d}{suffix}"


def completed_rounds(workspace: Path) -> int:
    """Rounds the workflow recorded as completed (state.json); 0 when none. JobError when state.json is malformed."""
    path = workspace / STATE
    if not path.exists():
        return 0
    try:
        value = json.loads(_fs.read_bounded(path, _MAX_STATE_BYTES, "workspace/state.json", JobError))
        count = value["completed_rounds"] if isinstance(value, dict) else None
    except (json.JSONDecodeError, KeyError) as exc:
        raise JobError("workspace/state.json: not a JSON object with completed_rounds") from exc
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise JobError("workspace/state.json: completed_rounds is not a count")
    return count


def keep_model(workspace: Path, number: int, model: Path) -> dict[str, Any]:
    """Copy model, the global model after round number, into result/ (replacing any other); return its entry.

    Raises OSError when the copy cannot be written (the result folder is then as before).
    """
    folder = workspace / RESULT
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    name = f"{MODEL_STEM}{model.suffix}"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(model, tmp)
        os.replace(tmp, folder / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for other in folder.iterdir():
        if other.name != name and _MODEL.fullmatch(other.name):
            other.unlink(missing_ok=True)
    return {"model": name, "round": number, "completed_rounds": number + 1}


def kept(workspace: Path) -> dict[str, Any] | None:
    """progress.json's result entry, when the result folder holds the model it names; None otherwise."""
    entry = _progress(workspace).get("result")
    if not isinstance(entry, dict) or not isinstance(entry.get("model"), str) or not _MODEL.fullmatch(entry["model"]):
        return None
    return entry if (workspace / RESULT / entry["model"]).is_file() else None


def keep_last_checkpoint(workspace: Path) -> dict[str, Any] | None:
    """Keep the last completed round's checkpoint as the result and note it in progress.json; return its entry.

    For a job whose workflow ended without doing so. None when no round completed (or its checkpoint is gone).
    Raises OSError when the result cannot be written, JobError when state.json is malformed.
    """
    done = completed_rounds(workspace)
    if done == 0:
        return None
    found = [p for s in MODEL_SUFFIXES if (p := checkpoint(workspace, done - 1, s)).is_file()]
    if not found:
        log.warning("the checkpoint of round %d is missing: the job keeps no model", done - 1)
        return None
    entry = keep_model(workspace, done - 1, found[0])
    progress = _progress(workspace)
    progress["result"] = entry
    progress.setdefault("rounds", [])
    _fs.write_atomic(workspace / PROGRESS, json.dumps(progress).encode(), mode=0o600)
    return entry


def _progress(workspace: Path) -> dict[str, Any]:
    path = workspace / PROGRESS
    if not path.exists():
        return {}
    try:
        value = json.loads(_fs.read_bounded(path, _MAX_PROGRESS_BYTES, "workspace/progress.json", JobError))
    except json.JSONDecodeError as exc:
        raise JobError("workspace/progress.json: not JSON") from exc
    return value if isinstance(value, dict) else {}
