"""A warm job process: Python and the ML framework imported, waiting for the one job it will run.

A site that keeps a warm launcher (site settings `warm_launcher: true`, see
fedsec.site.launcher) starts `python -P -m fedsec.client.warm` in the sandbox
of the *next* job, before that job exists: its own bubblewrap with its own
(still empty) job folder, work folder and socket folder bound, nothing of the
kit. Here it imports torch (numpy when torch is not installed) and the client
API, then blocks on its stdin, a pipe from the site parent, for one line of
JSON: the script, its arguments and the job's own environment (socket, token,
job id, site, data sets). It then runs the script as `python SCRIPT ARGS`
would, in this same process, and exits with it as fedsec.client.runscript
does (without tearing down the framework's modules).

It runs exactly one job and no code of any job before it: it never forks, so
nothing of an earlier job (memory, open files, threads) can reach a later one,
and no job can reach the next one's sandbox. It never reads anything but its
stdin before the script runs; a closed stdin (the site stops) means exit 0.
"""

from __future__ import annotations

import importlib
import os
import sys

from fedsec import limits
from fedsec.client import runscript
from fedsec.jobs.launch import JobSpec, decode_spec

FRAMEWORKS = ("torch", "numpy")  # the first one installed is imported while waiting


def preload() -> str:
    """Import the first installed framework of FRAMEWORKS and the client API; the framework's name or ''."""
    importlib.import_module("fedsec.client")
    for name in FRAMEWORKS:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        return name
    return ""


def run(spec: JobSpec) -> int:
    """Run spec's script as `python SCRIPT ARGS` would, in this process (argv, sys.path[0], environment,
    stdin); the exit status it asks for (fedsec.client.runscript.run)."""
    null = os.open(os.devnull, os.O_RDONLY)  # the pipe from the site is done with: the script reads nothing
    os.dup2(null, 0)
    os.close(null)
    os.environ.update(spec.env)
    importlib.invalidate_caches()  # the job's code was written after this process looked at its folders
    return runscript.run(spec.script, spec.args)


READY = "fedsec warm job process: ready"  # its first line in the job's log, once the framework is imported


def main() -> int:
    framework = preload()
    print(f"{READY} ({framework or 'no framework'} imported)", flush=True)
    line = sys.stdin.buffer.readline(limits.MAX_WARM_SPEC_BYTES + 1)
    if not line:
        return 0  # the site stopped, or replaced this process, before giving it a job
    spec = decode_spec(line)
    runscript.finish(spec.script, run(spec))
    return 0  # not reached: finish ends the process


if __name__ == "__main__":
    sys.exit(main())
