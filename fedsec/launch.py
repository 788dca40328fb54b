"""Starting the server and site parents: kits checked in a child, and one start for a whole local federation.

check_kits() runs load_kit() and the start checks of each kit's kind (a site's
policy and settings) in a forked child of this process and returns a verdict per
kit. The X.509, signature and YAML code those checks load stays in the child,
which exits: a site parent that runs for weeks never maps cryptography or
libyaml until a job needs them (and loads them then). Every check still runs,
and finishes, before the parent uses anything of the kit: check_kits() returns
only after the child has exited with its verdict, and the parent keeps the root
CA exactly as the child checked it (Kit.ca_pem).

launch() is `fedsec launch` (workspaces/start_fl.sh): the server and the sites
of one machine from one process that imports their code once and forks a parent
per kit, each in a session of its own, logging to <kit>/log.txt, its pid in
<kit>/daemon.pid and in <kit>/run/lock as a kit's start.sh leaves them (so each
kit's stop_fl.sh stops it by pid). It never forks after it started a thread, a
channel or a server: gRPC's state is made in each parent after its fork.

Every fork here happens while this process runs one thread (checked, else an
error), and each child leaves with os._exit, running nothing of the parent's.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fedsec import _fs, limits
from fedsec.errors import ConfigError, FedsecError, KitError
from fedsec.kit import CONFIG_FILES, Kit, from_json, load_kit, to_json
from fedsec.pki.identity import Kind

Verdict = Kit | FedsecError  # a checked kit, or why it was refused (a KitError or, for bad settings, a ConfigError)


def check_kit(root: Path, kind: Kind) -> Kit:
    """check_kits() for one kit; raises what refused it."""
    (verdict,) = check_kits([(root, kind)])
    if isinstance(verdict, FedsecError):
        raise verdict
    return verdict


def check_kits(requests: Sequence[tuple[Path, Kind]]) -> list[Verdict]:
    """load_kit(root) and kind's start checks for each (root, kind), in a forked child; a verdict per kit, in order.

    Raises KitError when the child ended without a verdict. Call it while this process runs one thread.
    """
    _only_thread("checking kits")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: check, answer, leave without running anything of the parent's (atexit, buffers)
        code = 1
        try:
            os.close(read_end)
            answer = json.dumps([_check(root, kind) for root, kind in requests]).encode()
            with os.fdopen(write_end, "wb") as out:
                out.write(answer)
            code = 0
        except BaseException:  # noqa: BLE001 - the child's top level: say why on stderr (the log), exit 1
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(write_end)
    bound = limits.MAX_KIT_RECORD_BYTES * len(requests)
    with os.fdopen(read_end, "rb") as answers:
        data = answers.read(bound + 1)
    _, status = os.waitpid(pid, 0)
    what = ", ".join(str(root) for root, _ in requests)
    if os.waitstatus_to_exitcode(status) != 0 or len(data) > bound:
        raise KitError(f"kit {what}: the process that checked it ended without a verdict (see the lines above)")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KitError(f"kit {what}: the process that checked it answered malformed data") from exc
    if not isinstance(doc, list) or len(doc) != len(requests) or not all(isinstance(v, dict) for v in doc):
        raise KitError(f"kit {what}: the process that checked it answered malformed data")
    return [_verdict(v) for v in doc]


def _verdict(doc: dict[str, Any]) -> Verdict:
    if "kit" in doc:
        return from_json(doc["kit"])
    error = ConfigError if doc.get("config") else KitError
    return error(str(doc.get("error")))


def _check(root: Path, kind: Kind) -> dict[str, Any]:
    """In the child: {"kit": the checked kit's record}, or {"error": why, "config": whether a ConfigError}."""
    try:
        kit = load_kit(root)
        if kit.kind is not kind:
            raise KitError(f"kit {kit.name}: is a {kit.kind.value} kit, not a {kind.value} kit")
        if kind is Kind.CLIENT:  # a broken policy or settings file stops the site at start, not at its first job
            from fedsec.site.policy import load_site_policy
            from fedsec.site.settings import load_site_settings

            load_site_policy(kit.root)
            load_site_settings(kit.root)
    except FedsecError as exc:
        return {"error": str(exc), "config": isinstance(exc, ConfigError)}
    return {"kit": to_json(kit)}


def _only_thread(what: str) -> None:
    """Refuse to fork while another thread runs (gRPC's and any lock's state would be copied half-made)."""
    if threading.active_count() != 1 or len(os.listdir("/proc/self/task")) != 1:
        raise FedsecError(f"{what}: this process runs more than one thread; it must not fork now")


def launch(roots: Sequence[Path], log_level: str) -> int:
    """Start a parent per kit in roots: the server's (at most one) first, then the sites'; return the exit status.

    Each parent is a child of this process in a session of its own; this process
    returns once all are forked: 0, or 1 when a kit was refused (its error is
    printed and appended to its log.txt, and it is not started).
    Raises ConfigError for more than one server kit (replicas start one by one, from their kits).
    """
    servers = [root for root in roots if (root / "startup" / CONFIG_FILES[Kind.SERVER]).is_file()]
    if len(servers) > 1:
        raise ConfigError(f"launch: {len(servers)} server kits given; start a server's replicas from their kits")
    sites = [root for root in roots if root not in servers]
    from fedsec.transport import tls  # noqa: F401 - gRPC and the wire code, imported once for every parent
    from fedsec.wire import fedsec_pb2_grpc  # noqa: F401

    failed = False
    for server in servers:  # first, so that it imports its own code while the sites' kits are checked
        running = _holder(server)
        if running is not None:
            failed = True
            _refused(server, ConfigError(f"{server.name} is already running from this kit (pid {running})"))
        else:
            _spawn(server, functools.partial(_run_server, server, log_level))
    checked = check_kits([(root, Kind.CLIENT) for root in sites]) if sites else []
    from fedsec.site.agent import run_site  # the sites' own code, once for every site

    for root, verdict in zip(sites, checked, strict=True):
        running = _holder(root)
        if running is not None:
            verdict = ConfigError(f"{root.name} is already running from this kit (pid {running})")
        if isinstance(verdict, FedsecError):
            failed = True
            _refused(root, verdict)
        else:
            _spawn(root, functools.partial(_run_site, verdict, run_site, log_level))
    return 1 if failed else 0


def _holder(root: Path) -> str | None:
    """The pid of the process that runs from kit root (it holds run/lock), or None; as a kit's start.sh asks."""
    import fcntl

    try:
        fd = os.open(root / "run" / "lock", os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
    finally:
        os.close(fd)  # releases the probe's lock, if it got it
    return None


def _run_server(root: Path, log_level: str) -> int:
    from fedsec import logs
    from fedsec.server.app import run_server

    logs.setup(log_level)
    # checked here, in-process: the server reads a certificate at every call, so it keeps the X.509 code anyway
    return run_server(load_kit(root))


def _run_site(kit: Kit, run_site: Callable[[Kit], int], log_level: str) -> int:
    from fedsec import logs

    logs.setup(log_level)
    return run_site(kit)


def _refused(root: Path, error: FedsecError) -> None:
    line = f"fedsec: error: {error}\n"
    sys.stderr.write(line)
    try:
        with (root / "log.txt").open("a") as log:
            log.write(line)
    except OSError:
        pass  # the kit folder itself is unusable: the line on stderr says so


def _spawn(root: Path, run: Callable[[], int]) -> None:
    """Fork a parent that calls run() in a session of its own, logging to root/log.txt; record its pid."""
    _only_thread(f"starting the parent of kit {root}")
    root = root.absolute()
    log_fd = os.open(root / "log.txt", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the parent of this kit, until it stops
        code = 1
        try:
            os.setsid()  # a Ctrl-C or a closed terminal meant for whoever started it never reaches it
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            os.close(null)
            os.close(log_fd)
            code = run()
        except FedsecError as exc:
            print(f"fedsec: error: {exc}", file=sys.stderr)
            code = exc.exit_code
        except KeyboardInterrupt:
            code = 130
        except BaseException:  # noqa: BLE001 - the process's top level: the traceback goes to its log
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(log_fd)
    _fs.write_atomic(root / "daemon.pid", f"{pid}\n".encode())
    print(f"started {root.name} (pid {pid}), log: {root / 'log.txt'}")
