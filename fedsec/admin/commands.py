"""The admin commands: the table of commands, their argument parsing, the Session calls and exit statuses.

This module owns what each shell command means. `run_command(session, line,
out, interactive)` parses one line with shlex and the command's own small
argparse parser, calls the Session and writes plain text (through render) to
out. It works without a terminal, so tests drive it with a fake session; it
never imports prompt_toolkit and never prints a traceback: a usage error is
one `error: usage: ...` line (status 2), a refused or failed call one
`error: ...` line (status 1, or 2 when the server or the job folder calls
the input bad: the FedsecError's exit code). A mistyped command or a job id
that names no job gets a "did you mean" (fedsec.admin.suggest). With
Context.as_json each command writes one JSON document (one line) instead:
{"command", "status", "result"} or {"command", "status", "error"}. Commands
that destroy (delete_job, shutdown) ask first at a terminal; -y skips it, and
delete_job without a terminal needs -y.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from fedsec.admin import AdminSession, ArgKind, UsageError, render, suggest
from fedsec.errors import EXIT_OK, EXIT_RUNTIME, FedsecError, JobError

if TYPE_CHECKING:
    from fedsec.api import JobInfo

Confirm = Callable[[str], bool]
COMPLETED = "finished:completed"
NO_SUCH_JOB = "no such job"  # the server's message ends so for an id or prefix that names no job
SUGGEST_JOBS = 200  # the latest jobs a mistyped job id is compared with


@dataclass(frozen=True)
class Context:
    """Where a command writes, and whether a person is at a terminal (progress bars, confirmations)."""

    out: TextIO
    err: TextIO
    interactive: bool
    confirm: Confirm | None = None
    as_json: bool = False  # one JSON document per command on out, instead of text
    data: list[Any] = field(default_factory=list)  # what the command wrote, for its JSON document

    def __post_init__(self) -> None:  # whatever a command writes, no escape sequence reaches the terminal
        object.__setattr__(self, "out", render.terminal_safe(self.out))
        object.__setattr__(self, "err", render.terminal_safe(self.err))


@dataclass(frozen=True)
class Result:
    """A command's exit status, and whether the shell should end (bye)."""

    code: int
    leave: bool = False


Handler = Callable[[AdminSession, argparse.Namespace, Context], int]


class _Parser(argparse.ArgumentParser):
    """An argparse parser that raises UsageError instead of exiting."""

    def __init__(self, prog: str, description: str) -> None:
        super().__init__(
            prog=prog,
            description=description,
            add_help=False,
            exit_on_error=False,
            formatter_class=lambda prog: argparse.HelpFormatter(prog, width=200),
        )

    def usage_line(self) -> str:
        return " ".join(self.format_usage().removeprefix("usage:").split())

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"usage: {self.usage_line()} ({message})")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise UsageError(message.strip() if message else f"usage: {self.usage_line()}")

    def parse(self, argv: Sequence[str]) -> argparse.Namespace:
        try:
            return self.parse_args(argv)
        except argparse.ArgumentError as exc:
            self.error(str(exc))


@dataclass(frozen=True)
class Command:
    """One shell command: its parser, what it does, and how its positionals complete."""

    name: str
    summary: str
    handler: Handler
    add_args: Callable[[argparse.ArgumentParser], object] = lambda p: None
    completes: tuple[ArgKind, ...] = ()
    repeat_last: bool = False  # the last positional takes several values (sites)
    value_options: frozenset[str] = field(default_factory=frozenset)  # options that take a value

    def parser(self) -> _Parser:
        p = _Parser(self.name, self.summary)
        self.add_args(p)
        return p


# ---- handlers ---------------------------------------------------------------------------------------------------


def _write(ctx: Context, text: str, data: Any = None) -> int:
    """Write text, or keep data (default: {"message": text}) for the command's JSON document."""
    if ctx.as_json:
        ctx.data.append({"message": text.rstrip("\n")} if data is None else data)
        return EXIT_OK
    ctx.out.write(text if text.endswith("\n") or not text else text + "\n")
    return EXIT_OK


def job_dict(info: JobInfo) -> dict[str, Any]:
    """A job as plain JSON data."""
    return dataclasses.asdict(info)


def _list_jobs(s: AdminSession, a: argparse.Namespace, ctx: Context) -> int:
    if a.max < 0:
        raise UsageError("usage: list_jobs: -m MAX must be 0 (no limit) or more")
    jobs = s.list_jobs(name_prefix=a.name, id_prefix=a.id_prefix, max_results=a.max, mine=a.mine, reverse=a.reverse)
    if ctx.as_json:
        return _write(ctx, "", [job_dict(j) for j in jobs])
    if not a.detailed:
        return _write(ctx, render.jobs_table(jobs))
    if not jobs:
        return _write(ctx, "no jobs")
    return _write(ctx, "\n".join(render.job_block(j) for j in jobs))


def _get_job_meta(s: AdminSession, a: argparse.Namespace, ctx: Context) -> int:
    info = s.get_job_meta(a.id)
    return _write(ctx, render.job_block(info), job_dict(info))


def _submit_job(s: AdminSession, a: argparse.Namespace, ctx: Context) -> int:
    with render.ProgressBar(ctx.out, "uploading") as bar:
        job_id = s.submit_job(Path(a.folder).expanduser(), progress=bar if ctx.interactive else None)
    return _write(ctx, f"submitted job {job_id}", {"job_id": job_id})


def _abort_job(s: AdminSession, a: argparse.Namespace, ctx: Context) -> int:
    info = s.abort_job(a.id)
    return _write(ctx, f"job {info.job_id}: {info.status}", job_dict(info))


def _clone_job(s: AdminSession, a: argparse.Namespace, ctx: Context) -> int:
    new_id = s.clone_job(a.id)
    return _write(ctx, f"cloned job {a.id} as job {new_id}", {"job_id": new_id, "cloned_from": a.id})


def _delete_job(s: AdminSession, a: argparse.Namespace, ctx: Context) -> int:
    if not a.yes:
        if not ctx.interactive or ctx.confirm is None:
            raise UsageError("usage: delete_job ID -y (without a terminal to ask, deleting needs -y)")
        if not ctx.confirm(f"delete job {a.id} and its results?"):
            return _write(ctx, "not deleted")
    s.delete_job(a.id)
    return _write(ctx, f"deleted job {a.id}", {"deleted": a.id})


def _wait_job(s: AdminSession, a: argparse.Namespace, ctx: Context) -> int:
    from fedsec.api.progress import RoundPrinter  # the lines job.py prints; fedsec.api is imported by then

    timeout = a.timeout if a.timeout and a.timeout > 0 else None
    lines = ctx.err if ctx.as_json else ctx.out  # JSON: the document alone on out
    info = s.monitor_job(a.id, RoundPrinter(lines, lines), timeout=timeout)
    _write(ctx, f"job {info.job_id}: {info.status} {info.reason}".rstrip(), job_dict(info))
    return EXIT_OK if info.status == COMPLETED else EXIT_RUNTIME


def _download_job(s: AdminSession, a: argparse.Namespace, ctx: Context) -> int:
    dest = Path(a.dest).expanduser() if a.dest else None
    with render.ProgressBar(ctx.out, "downloading") as bar:
        path = s.download_job_result(a.id, dest=dest, progress=bar if ctx.interactive else None)
    return _write(ctx, f"downloaded job {a.id} to {path}", {"job_id": a.id, "path": str(path)})


def _check_status(s: AdminSession, a: argparse.Namespace, ctx: Context) -> int:
    if a.target in ("server", None):
        if a.sites:
            raise UsageError("usage: check_status [server|client [SITES...]] (sites go with 'client' only)")
        server = s.check_status("server", sites=())
        if a.target == "server":
            return _write(ctx, render.server_status(server), server)
        sites = s.check_status("client", sites=())
        text = render.server_status(server) + "\n" + render.sites_status(sites)
        return _write(ctx, text, {"server": server, "sites": sites})
    sites = s.check_status("client", sites=tuple(a.sites))
    return _write(ctx, render.sites_status(sites), sites)


def _list_clients(s: AdminSession, a: argparse.Namespace, ctx: Context) -> int:
    clients = s.list_clients()
    return _write(ctx, render.clients_table(clients), clients)


def _remove_client(s: AdminSession, a: argparse.Namespace, ctx: Context) -> int:
    s.remove_client(a.site)
    text = f"removed site {a.site}: its connections are refused until enable_client {a.site}"
    return _write(ctx, text, {"site": a.site, "removed": True})


def _enable_client(s: AdminSession, a: argparse.Namespace, ctx: Context) -> int:
    s.enable_client(a.site)
    return _write(ctx, f"enabled site {a.site}", {"site": a.site, "removed": False})


def _show_stats(s: AdminSession, a: argparse.Namespace, ctx: Context) -> int:
    stats = s.show_stats(a.id)
    return _write(ctx, render.stats(a.id, stats), stats)


def _show_errors(s: AdminSession, a: argparse.Namespace, ctx: Context) -> int:
    errors = s.show_errors(a.id)
    return _write(ctx, render.errors(a.id, errors), errors)


def _get_job_log(s: AdminSession, a: argparse.Namespace, ctx: Context) -> int:
    text = s.get_job_log(a.id, target=a.target)
    empty = f"(the log of job {a.id} from {a.target} is empty)" if ctx.interactive else ""
    return _write(ctx, text or empty, {"job_id": a.id, "target": a.target, "log": text})


def _tail_job_log(s: AdminSession, a: argparse.Namespace, ctx: Context) -> int:
    lines = s.tail_job_log(a.id, a.site, a.follow)
    got: list[str] = []
    try:
        for line in lines:
            if ctx.as_json:
                got.append(line)
            else:
                ctx.out.write(line + "\n")
                ctx.out.flush()
    except KeyboardInterrupt:  # Ctrl-C ends following, not the shell
        lines.close()
        if not ctx.as_json:
            ctx.out.write("stopped following\n")
    if ctx.as_json:
        return _write(ctx, "", {"job_id": a.id, "site": a.site, "lines": got})
    if not got and ctx.interactive and not a.follow:
        ctx.out.write(f"(no site has sent its log of job {a.id} yet)\n")
    return EXIT_OK


def _download_job_log(s: AdminSession, a: argparse.Namespace, ctx: Context) -> int:
    dest = Path(a.dest).expanduser() if a.dest else None
    try:
        path = s.download_job_log(a.id, dest=dest, follow=a.follow)
    except KeyboardInterrupt:
        return _write(ctx, "stopped following; what was written so far stays in the job's .logs folder")
    return _write(ctx, f"downloaded the logs of job {a.id} to {path}", {"job_id": a.id, "path": str(path)})


def _sys_info(s: AdminSession, a: argparse.Namespace, ctx: Context) -> int:
    info = s.sys_info(target=a.target)
    return _write(ctx, render.key_values(render.flatten(info)), info)


def _shutdown(s: AdminSession, a: argparse.Namespace, ctx: Context) -> int:
    if a.sites and a.target != "client":
        raise UsageError("usage: shutdown server|client [SITES...]|all (sites go with 'client' only)")
    what = {"server": "the server", "all": "the server and every site"}.get(
        a.target, ", ".join(a.sites) if a.sites else "every site"
    )
    if not a.yes and ctx.interactive and ctx.confirm is not None and not ctx.confirm(f"shut down {what}?"):
        return _write(ctx, "not shut down")
    result = s.shutdown(a.target, sites=tuple(a.sites))
    return _write(ctx, render.key_values(render.flatten(result)) or f"shut down {what}", result)


def _version(s: AdminSession, a: argparse.Namespace, ctx: Context) -> int:
    versions = s.version()
    return _write(ctx, render.version(versions), versions)


def _show_audit(s: AdminSession, a: argparse.Namespace, ctx: Context) -> int:
    if a.max < 1:
        raise UsageError("usage: show_audit [-m MAX] (MAX must be 1 or more)")
    records = s.show_audit(max_results=a.max)
    return _write(ctx, render.audit_table(records), records)


def _help(s: AdminSession, a: argparse.Namespace, ctx: Context) -> int:
    if a.command is None:
        data: dict[str, Any] = {"commands": {c.name: c.summary for c in COMMANDS.values()}}
    else:
        command = _lookup(a.command)
        data = {"command": command.name, "usage": command.parser().usage_line(), "summary": command.summary}
    return _write(ctx, help_text(a.command), data)


def _bye(s: AdminSession, a: argparse.Namespace, ctx: Context) -> int:
    return _write(ctx, "", {}) if ctx.as_json else EXIT_OK


# ---- the table --------------------------------------------------------------------------------------------------


def _id(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", metavar="ID", help="a job id")


def _site(p: argparse.ArgumentParser) -> None:
    p.add_argument("site", metavar="SITE")


def _list_jobs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--name", metavar="NAME_PREFIX", default="", help="jobs whose name starts with this")
    p.add_argument("-d", "--detailed", action="store_true", help="every field of each job")
    p.add_argument("-u", "--mine", action="store_true", help="only the jobs I submitted")
    p.add_argument("-r", "--reverse", action="store_true", help="oldest first")
    p.add_argument("-m", "--max", metavar="MAX", type=int, default=0, help="at most MAX jobs")
    p.add_argument("id_prefix", metavar="ID_PREFIX", nargs="?", default="")


def _wait_args(p: argparse.ArgumentParser) -> None:
    _id(p)
    p.add_argument("-t", "--timeout", metavar="SECONDS", type=float, default=0.0, help="give up after SECONDS")


def _download_args(p: argparse.ArgumentParser) -> None:
    _id(p)
    p.add_argument("dest", metavar="DEST", nargs="?", default=None)


def _yes(p: argparse.ArgumentParser) -> None:
    p.add_argument("-y", "--yes", action="store_true", help="do not ask first (needed without a terminal)")


def _delete_args(p: argparse.ArgumentParser) -> None:
    _id(p)
    _yes(p)


def _check_status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="server|client", choices=("server", "client"), nargs="?", default=None)
    p.add_argument("sites", metavar="SITES", nargs="*")


def _shutdown_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="server|client|all", choices=("server", "client", "all"))
    p.add_argument("sites", metavar="SITES", nargs="*")
    _yes(p)


def _job_log_args(p: argparse.ArgumentParser) -> None:
    _id(p)
    p.add_argument("target", metavar="server|SITE", nargs="?", default="server")


def _follow(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--follow", action="store_true", help="go on with new lines until the job ends (Ctrl-C stops)")


def _tail_args(p: argparse.ArgumentParser) -> None:
    _id(p)
    p.add_argument("site", metavar="SITE", nargs="?", default=None)
    _follow(p)


def _download_log_args(p: argparse.ArgumentParser) -> None:
    _download_args(p)
    _follow(p)


_J = (ArgKind.JOB,)
COMMANDS: dict[str, Command] = {
    c.name: c
    for c in [
        Command(
            "list_jobs",
            "list jobs, newest first (-n name prefix, -d detailed, -u mine, -r reverse, -m max)",
            _list_jobs,
            _list_jobs_args,
            _J,
            value_options=frozenset({"-n", "--name", "-m", "--max"}),
        ),
        Command("get_job_meta", "show every field of a job (an id or a unique id prefix)", _get_job_meta, _id, _J),
        Command(
            "submit_job",
            "submit a job folder; prints the new job's id",
            _submit_job,
            lambda p: p.add_argument("folder", metavar="FOLDER"),
            (ArgKind.FOLDER,),
        ),
        Command("abort_job", "abort a submitted or running job", _abort_job, _id, _J),
        Command("clone_job", "submit a copy of a job; prints the new job's id", _clone_job, _id, _J),
        Command(
            "wait_job",
            "follow a job to its end: its rounds, the sites it waits for, a line at least every 10 s (-t timeout)",
            _wait_job,
            _wait_args,
            _J,
            value_options=frozenset({"-t", "--timeout"}),
        ),
        Command(
            "delete_job",
            "delete a finished job and its results; asks first (-y: do not ask)",
            _delete_job,
            _delete_args,
            _J,
        ),
        Command(
            "download_job",
            "download a finished job's results into DEST/ID (default DEST: the kit's transfer/)",
            _download_job,
            _download_args,
            (ArgKind.JOB, ArgKind.PATH),
        ),
        Command(
            "check_status",
            "status of the server and the sites (no argument), the server, or the sites (all or those named)",
            _check_status,
            _check_status_args,
            (ArgKind.SERVER_CLIENT, ArgKind.SITE),
            repeat_last=True,
        ),
        Command("list_clients", "list the sites the server knows", _list_clients),
        Command(
            "remove_client", "refuse a site's connections until it is enabled", _remove_client, _site, (ArgKind.SITE,)
        ),
        Command("enable_client", "accept a removed site again", _enable_client, _site, (ArgKind.SITE,)),
        Command("show_stats", "a job's rounds and their metrics", _show_stats, _id, _J),
        Command("show_errors", "a job's failure reason and the sites' errors", _show_errors, _id, _J),
        Command(
            "get_job_log",
            "the end of a job's log from the server (default) or a site (running, failed or aborted jobs too)",
            _get_job_log,
            _job_log_args,
            (ArgKind.JOB, ArgKind.SERVER_OR_SITE),
        ),
        Command(
            "tail_job_log",
            "the last lines of the sites' logs of a job (one SITE, or every site's, each line led by its"
            " name); -f: then each new line as the sites send it, until the job ends (Ctrl-C stops)",
            _tail_job_log,
            _tail_args,
            (ArgKind.JOB, ArgKind.SITE),
        ),
        Command(
            "download_job_log",
            "write each site's whole log of a job, and the server's, into DEST/ID.logs/ (default DEST: the kit's"
            " transfer/); -f: go on writing until the job ends (Ctrl-C stops)",
            _download_job_log,
            _download_log_args,
            (ArgKind.JOB, ArgKind.PATH),
        ),
        Command(
            "sys_info",
            "system information of the server or a site",
            _sys_info,
            lambda p: p.add_argument("target", metavar="server|SITE"),
            (ArgKind.SERVER_OR_SITE,),
        ),
        Command(
            "shutdown",
            "stop the server, sites (all or those named) or everything; asks first (-y: do not ask)",
            _shutdown,
            _shutdown_args,
            (ArgKind.SERVER_CLIENT_ALL, ArgKind.SITE),
            repeat_last=True,
        ),
        Command("version", "fedsec versions of the server and the sites", _version),
        Command(
            "show_audit",
            "the latest audit records (-m max, default 50)",
            _show_audit,
            lambda p: p.add_argument("-m", "--max", metavar="MAX", type=int, default=50),
            value_options=frozenset({"-m", "--max"}),
        ),
        Command(
            "help",
            "list the commands, or show one command's usage",
            _help,
            lambda p: p.add_argument("command", metavar="CMD", nargs="?", default=None),
            (ArgKind.COMMAND,),
        ),
        Command("bye", "leave the shell (Ctrl-D too)", _bye),
    ]
}


def help_text(name: str | None = None) -> str:
    """The command table, or one command's usage and description. Raises UsageError for an unknown name."""
    if name is None:
        rows = [[c.name, c.summary] for c in COMMANDS.values()]
        return render.table(("COMMAND", "DESCRIPTION"), rows, cut=False) + "'help CMD' shows a command's usage.\n"
    command = _lookup(name)
    return f"usage: {command.parser().usage_line()}\n{command.summary}\n"


def _lookup(name: str) -> Command:
    command = COMMANDS.get(name)
    if command is None:
        near = suggest.closest(name, COMMANDS)
        hint = f"did you mean {near!r}?" if near is not None else "try 'help'"
        raise UsageError(f"unknown command {name!r} ({hint})")
    return command


def _with_job_hint(session: AdminSession, command: Command, args: argparse.Namespace, exc: JobError) -> JobError:
    """exc, with "did you mean JOB_ID?" when a job id or prefix named no job but is close to one."""
    typed = getattr(args, "id", None)
    if not command.completes or command.completes[0] is not ArgKind.JOB or not isinstance(typed, str):
        return exc
    if not str(exc).endswith(NO_SUCH_JOB):
        return exc
    try:
        near = suggest.closest_job(typed, [j.job_id for j in session.list_jobs(max_results=SUGGEST_JOBS)])
    except FedsecError:  # a hint only: the error stands without it
        return exc
    return JobError(f"{exc} (did you mean {near}?)") if near is not None else exc


def split_line(line: str) -> list[str]:
    """The words of a command line, shell-quoted. Raises UsageError for unbalanced quotes."""
    try:
        return shlex.split(line, comments=True)
    except ValueError as exc:
        raise UsageError(f"cannot read the line: {exc}") from exc


def execute(session: AdminSession, line: str, ctx: Context) -> Result:
    """Run one command line; write its output or one `error: ...` line. Never raises a FedsecError or OSError."""
    ctx.data.clear()
    try:
        words = split_line(line)
        if not words:
            return Result(EXIT_OK)
        command = _lookup(words[0])
        args = command.parser().parse(words[1:])
        try:
            code = command.handler(session, args, ctx)
        except JobError as exc:
            raise _with_job_hint(session, command, args, exc) from exc
        _document(ctx, words, code)
        return Result(code, leave=command.name == "bye")
    except FedsecError as exc:  # UsageError and other bad input: 2; a refused or failed call: 1
        return _failed(ctx, line, exc.exit_code, str(exc))
    except OSError as exc:  # a local file: the job folder, the download destination
        where = f"{exc.filename}: " if exc.filename else ""
        return _failed(ctx, line, EXIT_RUNTIME, f"{where}{exc.strerror or exc}")
    finally:
        ctx.out.flush()


def _document(ctx: Context, words: Sequence[str], code: int, error: str | None = None) -> None:
    """With as_json: the command's one JSON document on out: {"command", "status", "result" or "error"}."""
    if not ctx.as_json:
        return
    doc: dict[str, Any] = {"command": words[0] if words else "", "status": code}
    if error is not None:
        doc["error"] = error
    else:
        doc["result"] = ctx.data[0] if len(ctx.data) == 1 else ctx.data
    ctx.out.write(json.dumps(doc, default=str) + "\n")


def _failed(ctx: Context, line: str, code: int, message: str) -> Result:
    ctx.err.write(f"error: {message}\n")
    try:
        words = split_line(line)
    except UsageError:
        words = line.split()[:1]
    _document(ctx, words, code, message)
    return Result(code)


def run_command(
    session: AdminSession,
    line: str,
    out: TextIO,
    interactive: bool,
    *,
    err: TextIO | None = None,
    confirm: Confirm | None = None,
    as_json: bool = False,
) -> int:
    """Run one command line against session, writing to out (errors to err, default out); return its status."""
    return execute(session, line, Context(out, err or out, interactive, confirm, as_json)).code
