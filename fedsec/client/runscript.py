"""`python -P -m fedsec.client.runscript SCRIPT [ARGS]`: a job's script, run as `python SCRIPT ARGS` would.

A site starts each job's script through this module (the warm job process,
fedsec.client.warm, calls run() the same way): the script runs as the
`__main__` module, with argv, sys.path[0] (the script's folder) and the exit
status of `python SCRIPT ARGS`; an exception it does not catch prints its
traceback and exits 1, as there.

What differs is the end. Once the script returns (or raises SystemExit with a
number), the process ends with fedsec._proc.end_process: its threads are
joined and atexit handlers run while its globals still exist, then its globals
and the modules imported from its folder are cleared, so their objects'
finalisers run, and stdout and stderr are flushed; the interpreter's teardown
of every other module is skipped. With torch loaded that teardown alone takes
0.6-1 s of CPU, which every site paid at the end of every job while the server
waited for the scripts to end.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from importlib.machinery import SourceFileLoader
from pathlib import Path

from fedsec import _proc


def run(script: Path, args: tuple[str, ...]) -> int:
    """Run script with args as `python SCRIPT ARGS` would, as this process's __main__; the exit status it asks for.

    An exception the script raises (SystemExit whose code is not a number included) propagates,
    so the interpreter reports it as it would for `python SCRIPT ARGS`.
    """
    sys.argv = [str(script), *args]
    sys.path.insert(0, str(script.parent))
    loader = SourceFileLoader("__main__", str(script))  # any file name, as python SCRIPT takes it
    spec = importlib.util.spec_from_file_location("__main__", script, loader=loader)
    if spec is None:
        raise SystemExit(f"python: can't open file {str(script)!r}")
    main = importlib.util.module_from_spec(spec)
    sys.modules["__main__"] = main  # the script's globals live as long as the process, as under python SCRIPT
    try:
        loader.exec_module(main)
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        raise
    return 0


def clear_job_modules(folder: Path) -> None:
    """Clear __main__ and the modules imported from folder (the job's code), as the interpreter's teardown would."""
    root = os.path.realpath(folder)
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None)
        if name == "__main__" or (isinstance(origin, str) and os.path.realpath(origin).startswith(root + os.sep)):
            del sys.modules[name]
            vars(module).clear()


def finish(script: Path, code: int) -> None:
    """End the process after script returned code (fedsec._proc.end_process, clearing the script's modules)."""
    _proc.end_process(code, lambda: clear_job_modules(script.parent))


def main() -> int:
    if len(sys.argv) < 2:
        print("usage: python -P -m fedsec.client.runscript SCRIPT [ARGS]", file=sys.stderr)
        return 2
    script = Path(sys.argv[1])
    code = run(script, tuple(sys.argv[2:]))
    finish(script, code)
    return code  # not reached: finish ends the process


if __name__ == "__main__":
    sys.exit(main())
