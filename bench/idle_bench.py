"""Benchmark: start-up time and idle memory of the parents (server and sites), no job.

Workload: provision/secure_project.yml (1 server, 8 sites) provisioned into a temporary
folder with free ports on 127.0.0.1 and started with a copy of workspaces/start_fl.sh:
  a. seconds from running `start_fl.sh N PROD` to its exit (every site registered: it
     waits for that) and to the server logging the last site registered; median of
     --starts fresh starts, stopped between; and the CPU seconds each parent used until
     then (from /proc), which a loaded machine does not stretch, and what start_fl.sh
     and its `fedsec launch` used (the imports every parent shares, the sites' kit checks).
  b. VmRSS (MiB) of the idle server parent and each site parent --idle-seconds after all
     registered, and the site parents' warm job launchers (if the sites keep one); and how
     that splits: private (anonymous: the Python objects and native heaps) and file-backed
     (pages of the shared libraries it touched, shared with every process that maps them:
     on a host of several parents, and reclaimable), with the private memory (USS) a
     parent alone costs and its proportional share of what it shares (PSS).
  c. which heavy native libraries each parent has mapped (from /proc/PID/maps).
Prints the figures; asserts nothing about time.
Run: .venv/bin/python bench/idle_bench.py [--sites 8] [--starts 3] [--warm-launcher]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # so that `python bench/NAME.py` finds the bench package

from bench.federation import SERVER, Federation, children, cpu_seconds, memory_mib  # noqa: E402

HEAVY = {  # a native library in /proc/PID/maps -> the Python package that loaded it
    "_multiarray_umath": "numpy",
    "_yaml": "yaml (libyaml)",
    "_rust.abi3": "cryptography",
    "cygrpc": "grpc",
    "libtorch": "torch",
    "tenseal": "tenseal",
    "_sqlite3": "sqlite3",
    "_ssl.": "ssl",
}


def mapped(pid: int) -> list[str]:
    """The heavy packages whose native library pid has mapped."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return []
    return sorted({name for needle, name in HEAVY.items() if needle in maps})


def rss_split(pid: int) -> tuple[float, float, float, float]:
    """(RssAnon, RssFile + RssShmem, USS, PSS) of pid in MiB, from /proc; zeros once it has gone."""
    values = {
        "RssAnon:": 0.0, "RssFile:": 0.0, "RssShmem:": 0.0, "Private_Clean:": 0.0, "Private_Dirty:": 0.0, "Pss:": 0.0
    }  # fmt: skip
    try:
        text = Path(f"/proc/{pid}/status").read_text() + Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0.0, 0.0, 0.0, 0.0
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key + ":" in values and rest.split():
            values[key + ":"] = int(rest.split()[0]) / 1024
    uss = values["Private_Clean:"] + values["Private_Dirty:"]
    return values["RssAnon:"], values["RssFile:"] + values["RssShmem:"], uss, values["Pss:"]


def spread(values: list[float], unit: str, fmt: str = ".2f") -> str:
    if not values:
        return "-"
    return (
        f"median {statistics.median(values):{fmt}} {unit}, min {min(values):{fmt}} {unit}, "
        f"max {max(values):{fmt}} {unit}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sites", type=int, default=8)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--warm-launcher", choices=("default", "on", "off"), default="default")
    args = parser.parse_args()
    sites = [f"site-{i}" for i in range(1, args.sites + 1)]
    with tempfile.TemporaryDirectory(prefix="fedsec-idle-bench-") as tmp, Federation(Path(tmp)) as fed:
        if args.warm_launcher != "default":
            fed.set_warm_launcher(sites, args.warm_launcher == "on")
        print(f"workload: secure_project, server + {args.sites} sites on 127.0.0.1, kits in {fed.prod}")
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the start")
        script: list[float] = []
        to_all: list[float] = []
        server_rss: list[float] = []
        site_rss: list[float] = []
        launcher_rss: list[float] = []
        script_cpu: list[float] = []
        split: dict[str, list[tuple[float, float, float, float]]] = {"server parent": [], "site parent": []}
        server_cpu: list[float] = []
        site_cpu: list[float] = []
        libs: dict[str, list[str]] = {}
        for i in range(args.starts):
            if i:
                fed.stop()
            offset = fed.server_log.stat().st_size if fed.server_log.exists() else 0
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            began = fed.start(args.sites)
            script.append(time.time() - began)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            script_cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            registered = fed.wait_registered(sites, offset)
            to_all.append(max(registered.values()) - began)
            server_cpu.append(cpu_seconds(fed.pid(SERVER)) or 0.0)
            site_cpu.extend(cpu_seconds(fed.pid(s)) or 0.0 for s in sites)
            if args.warm_launcher == "on":  # until every ready job process has imported its framework
                ready = "warm job process: ready"
                while not all(
                    any(ready in p.read_text() for p in (fed.kit(s) / "jobs").glob(".warm-*/log.txt")) for s in sites
                ):
                    time.sleep(0.2)
            time.sleep(args.idle_seconds)  # the idle state being measured, not a wait for a condition
            server_rss.append(memory_mib(fed.pid(SERVER))[0])
            site_pids = [fed.pid(s) for s in sites]
            site_rss.extend(memory_mib(p)[0] for p in site_pids)
            split["server parent"].append(rss_split(fed.pid(SERVER)))
            split["site parent"].extend(rss_split(p) for p in site_pids)
            launcher_rss.extend(_tree_rss(children(site_pids, "bwrap") + children(site_pids, "launcher")))
            libs = {"server parent": mapped(fed.pid(SERVER)), "site parent": mapped(site_pids[0])}
        print(f"a. start_fl.sh {args.sites} ({args.starts} fresh starts):")
        print(f"     until start_fl.sh returned (all registered): {spread(script, 's')}")
        print(f"     until the server logged the last registration: {spread(to_all, 's')}")
        print(f"     CPU of start_fl.sh and its fedsec launch (shared imports, kit checks): {spread(script_cpu, 's')}")
        print(f"     CPU used until then, server parent: {spread(server_cpu, 's')}")
        print(f"     CPU used until then, each site parent: {spread(site_cpu, 's')}")
        need = statistics.median(script_cpu) + statistics.median(server_cpu) + args.sites * statistics.median(site_cpu)
        print(f"     (all that CPU over {os.cpu_count()} idle cores: at least {need / (os.cpu_count() or 1):.2f} s)")
        print(f"     load average {os.getloadavg()[0]:.2f} now: other work on this machine stretches the wall times")
        print(f"b. idle VmRSS {args.idle_seconds:g} s after all registered, no job:")
        print(f"     server parent:  {spread(server_rss, 'MiB', '.1f')}")
        print(f"     site parent:    {spread(site_rss, 'MiB', '.1f')}  ({len(site_rss)} samples)")
        for role, values in split.items():
            anon, file, uss, pss = (statistics.median(v[i] for v in values) for i in range(4))
            print(
                f"     {role}: {anon:.1f} MiB anonymous + {file:.1f} MiB file-backed (shared);"
                f" private (USS) {uss:.1f} MiB, proportional (PSS) {pss:.1f} MiB"
            )
        if launcher_rss:
            print(f"     warm launcher (its whole process tree, per site): {spread(launcher_rss, 'MiB', '.1f')}")
        else:
            print("     warm launcher: none (warm_launcher off)")
        print("c. heavy native libraries mapped at idle:")
        for role, names in libs.items():
            print(f"     {role:<14} {', '.join(names) or '-'}")


def _tree_rss(roots: list[int]) -> list[float]:
    """The summed VmRSS of each root and all its descendants, MiB."""
    out = []
    for root in roots:
        total, todo = 0.0, [root]
        while todo:
            pid = todo.pop()
            total += memory_mib(pid)[0]
            todo.extend(children([pid], ""))
        out.append(total)
    return out


if __name__ == "__main__":
    main()
