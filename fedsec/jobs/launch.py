"""How a site hands a job to its warm job process: one line of JSON on a pipe (fedsec.site.launcher).

The site parent writes it, fedsec.client.warm reads it; both sides check it
against limits.MAX_WARM_SPEC_BYTES. It holds the job's token: it travels only
on that pipe, never in argv or a file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fedsec import limits
from fedsec.errors import JobError


@dataclass(frozen=True)
class JobSpec:
    """What the site parent hands its warm process: the script to run, its arguments, the job's environment."""

    script: Path
    args: tuple[str, ...]
    env: dict[str, str]

    def encode(self) -> bytes:
        """One line of JSON; raises JobError when it is larger than limits.MAX_WARM_SPEC_BYTES."""
        doc = {"script": str(self.script), "args": list(self.args), "env": self.env}
        line = json.dumps(doc, separators=(",", ":")).encode() + b"\n"
        if len(line) > limits.MAX_WARM_SPEC_BYTES:
            raise JobError(
                f"the job's start (script, arguments, environment) is over {limits.MAX_WARM_SPEC_BYTES} bytes"
            )
        return line


def decode_spec(line: bytes) -> JobSpec:
    """Parse JobSpec.encode()'s line; raises JobError naming what is wrong."""
    if len(line) > limits.MAX_WARM_SPEC_BYTES or not line.endswith(b"\n"):
        raise JobError(f"warm launcher: the job's start is not one line of at most {limits.MAX_WARM_SPEC_BYTES} bytes")
    try:
        doc = json.loads(line)
    except ValueError as exc:
        raise JobError(f"warm launcher: the job's start is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or set(doc) != {"script", "args", "env"}:
        raise JobError("warm launcher: the job's start must hold exactly script, args and env")
    script, args, env = doc["script"], doc["args"], doc["env"]
    if not isinstance(script, str) or not script.startswith("/"):
        raise JobError("warm launcher: script must be an absolute path")
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise JobError("warm launcher: args must be a list of strings")
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise JobError("warm launcher: env must map strings to strings")
    return JobSpec(Path(script), tuple(args), dict(env))
