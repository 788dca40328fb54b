"""Start-up cost of a job process under bubblewrap vs. without: median ms over N starts.

    PYTHONPATH=. python bench/isolation_bench.py [-n 20]

Runs `python -c pass` and `python -c "import fedsec.client"` both ways, with the
same whitelist of mounts a site uses (fedsec.site.sandbox.bwrap_argv).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedsec.site import sandbox


def _median_ms(argv: list[str], env: dict[str, str], cwd: Path, n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run(argv, env=env, cwd=cwd, check=True, stdin=subprocess.DEVNULL)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=20)
    n = parser.parse_args().n
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        kit, code, work = root / "kit", root / "kit/jobs/j/job", root / "kit/jobs/j/work"
        for folder in (code, work):
            folder.mkdir(parents=True)
        sock = root / "kit/jobs/j/s.sock"
        sock.touch()
        env = sandbox.script_env({}, work, [sandbox.fedsec_package_dir().parent])
        mounts = sandbox.JobMounts(code, work, sock, kit)
        for label, code_text in (("python -c pass", "pass"), ("import fedsec.client", "import fedsec.client")):
            command = [sys.executable, "-c", code_text]
            plain = _median_ms(command, env, work, n)
            boxed = _median_ms(sandbox.bwrap_argv(command, mounts), env, work, n)
            print(f"{label:24s} plain {plain:7.1f} ms   bwrap {boxed:7.1f} ms   cost {boxed - plain:+6.1f} ms  (n={n})")


if __name__ == "__main__":
    main()
