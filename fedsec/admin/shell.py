"""The `fedsec admin` shell: log in with an admin kit, then read commands from a prompt, -c options or stdin.

This module owns the terminal side: the prompt-toolkit PromptSession (history
in the kit, mode 0600; completion of command names, job ids, site names and
targets), the login banner, confirmations, and the loop for piped input. What
each command does lives in fedsec.admin.commands; this module never calls a
Session method for a command itself, and never lets a traceback reach the
terminal.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
from prompt_toolkit.completion import CompleteEvent, Completer, Completion, PathCompleter
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory

from fedsec.admin import AdminSession, ArgKind, commands
from fedsec.admin.commands import COMMANDS, Context, Result
from fedsec.errors import EXIT_OK, EXIT_RUNTIME, FedsecError
from fedsec.kit import AdminConfig

log = logging.getLogger(__name__)

HISTORY_FILE = ".fedsec_admin_history"
CACHE_SECONDS = 5.0  # job ids and site names for completion are fetched at most this often
COMPLETION_JOBS = 100


def arg_kind(name: str, before: Sequence[str]) -> ArgKind | None:
    """What the next word of command `name` is, given the words typed after the command name."""
    command = COMMANDS.get(name)
    if command is None or not command.completes:
        return None
    positionals = 0
    skip = False
    for word in before:
        if skip:
            skip = False
        elif word.startswith("-"):
            skip = word in command.value_options
        else:
            positionals += 1
    if skip:
        return None  # completing an option's value
    if positionals < len(command.completes):
        return command.completes[positionals]
    return command.completes[-1] if command.repeat_last else None


class _Cached:
    """A value fetched from the server at most every CACHE_SECONDS; on a failure, the last value (or empty)."""

    def __init__(self, fetch: Callable[[], list[tuple[str, str]]], clock: Callable[[], float]) -> None:
        self._fetch = fetch
        self._clock = clock
        self._at: float | None = None
        self._value: list[tuple[str, str]] = []

    def get(self) -> list[tuple[str, str]]:
        now = self._clock()
        if self._at is None or now - self._at >= CACHE_SECONDS:
            self._at = now
            try:
                self._value = self._fetch()
            except FedsecError as exc:  # completion must never break the prompt
                log.debug("completion: cannot fetch: %s", exc)
        return self._value


class AdminCompleter(Completer):
    """Completes command names, then each command's arguments: job ids, site names, targets, paths."""

    def __init__(self, session: AdminSession, clock: Callable[[], float] = time.monotonic) -> None:
        self._jobs = _Cached(
            lambda: [(j.job_id, f"{j.name} {j.status}") for j in session.list_jobs(max_results=COMPLETION_JOBS)],
            clock,
        )
        self._sites = _Cached(
            lambda: [
                (str(c["name"]), "removed" if c.get("removed") else str(c.get("org", "")))
                for c in session.list_clients()
            ],
            clock,
        )
        self._folders = PathCompleter(only_directories=True, expanduser=True)
        self._paths = PathCompleter(expanduser=True)

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterator[Completion]:
        text = document.text_before_cursor
        words = text.split()
        current = "" if not words or text[-1].isspace() else words[-1]
        typed = words if not current else words[:-1]
        if not typed:
            yield from self._choices([(n, "") for n in COMMANDS], current)
            return
        kind = arg_kind(typed[0], typed[1:])
        if kind in (ArgKind.FOLDER, ArgKind.PATH):
            paths = self._folders if kind is ArgKind.FOLDER else self._paths
            yield from paths.get_completions(Document(current), complete_event)
        elif kind is not None:
            yield from self._choices(self._candidates(kind), current)

    def _candidates(self, kind: ArgKind) -> list[tuple[str, str]]:
        if kind is ArgKind.JOB:
            return self._jobs.get()
        if kind is ArgKind.SITE:
            return self._sites.get()
        if kind is ArgKind.SERVER_OR_SITE:
            return [("server", ""), *self._sites.get()]
        if kind is ArgKind.SERVER_CLIENT:
            return [("server", ""), ("client", "")]
        if kind is ArgKind.SERVER_CLIENT_ALL:
            return [("server", ""), ("client", ""), ("all", "")]
        if kind is ArgKind.COMMAND:
            return [(n, "") for n in COMMANDS]
        return []

    @staticmethod
    def _choices(candidates: Iterable[tuple[str, str]], current: str) -> Iterator[Completion]:
        for value, meta in candidates:
            if value.startswith(current):
                yield Completion(value, start_position=-len(current), display_meta=meta or None)


def open_history(path: Path) -> FileHistory:
    """The shell's history file, created (or narrowed) to mode 0600: past commands name jobs, sites and folders."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)
    return FileHistory(str(path))


def _guarded(session: AdminSession, line: str, ctx: Context) -> Result:
    """commands.execute, with a bug in a command turned into one error line too (this is the process's top level)."""
    try:
        return commands.execute(session, line, ctx)
    except Exception as exc:  # never a traceback on the terminal; the detail is in the log at DEBUG
        log.debug("command %r failed", line, exc_info=True)
        ctx.err.write(f"error: internal error: {type(exc).__name__}: {exc}\n")
        return Result(EXIT_RUNTIME)


def run_lines(session: AdminSession, lines: Iterable[str], out: TextIO, err: TextIO, *, as_json: bool = False) -> int:
    """Run commands without a terminal: plain text (or a JSON document per command), no prompt.

    Stops at the first command that fails and returns its status.
    """
    for line in lines:
        if not line.strip():
            continue
        result = _guarded(session, line, Context(out, err, interactive=False, as_json=as_json))
        if result.code != EXIT_OK or result.leave:
            return result.code
    return EXIT_OK


def _confirm(question: str) -> bool:
    answer: str = PromptSession[str]().prompt(f"{question} [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def run_interactive(session: AdminSession, history: Path, out: TextIO) -> int:
    """The prompt loop: until bye or Ctrl-D; Ctrl-C clears the line or interrupts a command."""
    prompt: PromptSession[str] = PromptSession(
        history=open_history(history),
        completer=AdminCompleter(session),
        complete_while_typing=False,  # complete on Tab only: completing job ids asks the server
        auto_suggest=AutoSuggestFromHistory(),
    )
    ctx = Context(out, out, interactive=True, confirm=_confirm)
    out.write("type 'help' for the commands, 'bye' or Ctrl-D to leave\n")
    while True:
        try:
            line = prompt.prompt(f"{session.admin}> ")
        except KeyboardInterrupt:
            continue
        except EOFError:
            out.write("bye\n")
            return EXIT_OK
        try:
            result = _guarded(session, line, ctx)
        except KeyboardInterrupt:
            out.write("\ninterrupted\n")
            continue
        if result.leave:
            return EXIT_OK


def banner(session: AdminSession, config: AdminConfig, server_address: str) -> str:
    return f"logged in as {session.admin} ({session.role}) to project {config.project} at {server_address}\n"


def run_admin(kit_dir: Path, lines: Sequence[str] = (), *, as_json: bool = False) -> int:
    """`fedsec admin`: log in with the kit, then run `lines` (-c), stdin when it is not a terminal, or the prompt.

    as_json: each command of -c or stdin writes one JSON document (one line) instead of text.
    Raises KitError for a bad kit and a FedsecError when the login fails; the CLI prints them.
    """
    from fedsec.api import Session

    interactive = not lines and not as_json and sys.stdin.isatty() and sys.stdout.isatty()
    with Session(kit_dir) as session:
        err = sys.stdout if interactive else sys.stderr
        session.on_relogin = lambda: print("session expired; logged in again", file=err, flush=True)
        session.on_failover = lambda left, now: print(
            f"the server at {left} does not answer; now using {now}", file=err, flush=True
        )
        session.login()
        if not interactive:
            return run_lines(session, lines or sys.stdin, sys.stdout, sys.stderr, as_json=as_json)
        config = session.kit.config
        if isinstance(config, AdminConfig):
            sys.stdout.write(banner(session, config, session.server_address))
        return run_interactive(session, session.kit.root / HISTORY_FILE, sys.stdout)
