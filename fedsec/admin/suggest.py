"""'Did you mean ...': the closest command name or job id to what an admin mistyped (difflib).

This module owns only the matching; it asks no server and prints nothing.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

CUTOFF = 0.6  # difflib's ratio a candidate must reach to be suggested


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice closest to word, or None when none is close enough."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=CUTOFF)
    return found[0] if found else None


def closest_job(prefix: str, job_ids: Iterable[str]) -> str | None:
    """The job id whose start is closest to prefix (an id or a prefix matching none), or None.

    Each id is compared by its first len(prefix) characters, so a short prefix with
    one wrong character finds the id it was meant to start.
    """
    typed = prefix.lower()
    if not typed:
        return None
    starts: dict[str, str] = {}
    for job_id in job_ids:
        starts.setdefault(job_id[: len(typed)], job_id)
    found = closest(typed, starts)
    return starts[found] if found is not None else None
