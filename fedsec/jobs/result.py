"""A job's result on the server: the global model its result folder keeps, and from which round.

Layout of a job's workspace (written by its workflow process): checkpoints/round_NNNNN.fsa (.fsh when the
model is encrypted) after each round, and result/, the folder an admin downloads. A completed job keeps its
final model there; an aborted or failed job keeps the global model of its last completed round: the workflow
copies it as it ends, and the server parent does when the workflow was killed before it could. Which model
it is and how many rounds were completed is the job's state, kept by the server parent (fedsec.state: the
job's current_round and its ResultMeta), never a file here: a kept model's entry is
{"model": "global_model.fsa", "round": N (numbered from 0), "completed_rounds": N + 1}.

This module only copies files inside one workspace and never trusts a name it did not make.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
RESULT = "result"
MODEL_STEM = "global_model"
MODEL_SUFFIXES = (".fsa", ".fsh")  # plain, encrypted
_MODEL = re.compile(r"global_model\.fs[ah]")


def checkpoint(workspace: Path, number: int, suffix: str) -> Path:
    """The checkpoint of round number (the global model after it)."""
    return workspace / CHECKPOINTS / f"round_{number:05d}{suffix}"


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


def kept_model(workspace: Path, name: str) -> Path | None:
    """The result folder's model called name, if name is one this module makes and the file is there."""
    if not _MODEL.fullmatch(name):
        return None
    path = workspace / RESULT / name
    return path if path.is_file() else None


def keep_last_checkpoint(workspace: Path, completed_rounds: int) -> dict[str, Any] | None:
    """Keep the checkpoint of the last of completed_rounds rounds as the result; return its entry.

    For a job whose workflow ended without doing so. None when no round completed (or its checkpoint is gone).
    Raises OSError when the result cannot be written.
    """
    if completed_rounds <= 0:
        return None
    found = [p for s in MODEL_SUFFIXES if (p := checkpoint(workspace, completed_rounds - 1, s)).is_file()]
    if not found:
        log.warning("the checkpoint of round %d is missing: the job keeps no model", completed_rounds - 1)
        return None
    return keep_model(workspace, completed_rounds - 1, found[0])
