"""Benchmark: wall time of `fedsec provision` and the size of the kits it writes.

Workload: `fedsec provision -p provision/secure_project.yml` (1 server, 8 sites,
1 admin = 10 participants) into a fresh workspace, run as a separate process
each time (Python start-up included, as a user sees it); median of --runs runs.
Prints the figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--project", default=str(ROOT / "provision/secure_project.yml"))
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            ws = Path(tmp) / f"ws{i}"
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "fedsec", "provision", "-p", args.project, "-w", str(ws)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            times.append(time.perf_counter() - start)
        prod = next(Path(tmp, "ws0").glob("*/prod_00"))
        kits = sorted(prod.iterdir())
        print(f"workload: fedsec provision -p {Path(args.project).name} ({len(kits)} participants), {args.runs} runs")
        print(f"wall time: median {statistics.median(times):.3f} s, min {min(times):.3f} s, max {max(times):.3f} s")
        for kit in kits:
            print(f"  kit {kit.name:<24} {_size(kit):>7} bytes")


if __name__ == "__main__":
    main()
