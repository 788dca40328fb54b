"""The admin shell (`fedsec admin`): a prompt-toolkit REPL on top of fedsec.api.Session.

This package is the only home of prompt_toolkit. It talks to the server only
through fedsec.api and never imports the server, site, workflow or client
packages. Its modules:

- this one:  the shared vocabulary: what the shell needs of a Session (AdminSession),
             UsageError, and the kinds of arguments that the prompt completes;
- commands:  the command table, parsing, the Session calls; `run_command` works without a terminal;
- render:    plain-text tables, job blocks and progress bars;
- suggest:   "did you mean": the closest command name or job id (difflib);
- shell:     the prompt (history, completion), the login banner and the loop for -c / piped input.

Importing this package imports neither prompt_toolkit nor grpc at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from fedsec.errors import ConfigError

if TYPE_CHECKING:
    from fedsec.api import JobInfo

ProgressFn = Callable[[int, int], None]


class AdminSession(Protocol):
    """What the shell needs of fedsec.api.Session (a fake one in tests)."""

    @property
    def admin(self) -> str: ...
    @property
    def role(self) -> str: ...

    on_relogin: Callable[[], None] | None

    def login(self) -> None: ...
    def list_jobs(
        self,
        *,
        name_prefix: str = ...,
        id_prefix: str = ...,
        max_results: int = ...,
        mine: bool = ...,
        reverse: bool = ...,
    ) -> list[JobInfo]: ...
    def get_job_meta(self, job_id: str, /) -> JobInfo: ...
    def submit_job(self, folder: Path, /, *, progress: ProgressFn | None = ...) -> str: ...
    def abort_job(self, job_id: str, /) -> JobInfo: ...
    def clone_job(self, job_id: str, /) -> str: ...
    def delete_job(self, job_id: str, /) -> None: ...
    def monitor_job(
        self, job_id: str, callback: Callable[[JobInfo], None] | None = ..., /, *, timeout: float | None = ...
    ) -> JobInfo: ...
    def download_job_result(
        self, job_id: str, /, *, dest: Path | None = ..., progress: ProgressFn | None = ...
    ) -> Path: ...
    def check_status(self, target: str, /, *, sites: Sequence[str] = ...) -> dict[str, Any]: ...
    def list_clients(self) -> list[dict[str, Any]]: ...
    def remove_client(self, site: str, /) -> None: ...
    def enable_client(self, site: str, /) -> None: ...
    def show_stats(self, job_id: str, /) -> dict[str, Any]: ...
    def show_errors(self, job_id: str, /) -> dict[str, Any]: ...
    def get_job_log(self, job_id: str, /, *, target: str = ...) -> str: ...
    def tail_job_log(
        self, job_id: str, site: str | None = ..., follow: bool = ..., /
    ) -> Generator[str, None, None]: ...
    def download_job_log(self, job_id: str, /, *, dest: Path | None = ..., follow: bool = ...) -> Path: ...
    def sys_info(self, *, target: str = ...) -> dict[str, Any]: ...
    def shutdown(self, target: str, /, *, sites: Sequence[str] = ...) -> dict[str, Any]: ...
    def version(self) -> dict[str, Any]: ...
    def show_audit(self, *, max_results: int = ...) -> list[dict[str, Any]]: ...


class UsageError(ConfigError):
    """A command line the shell cannot parse: an unknown command, a missing or bad argument (status 2)."""


class ArgKind(Enum):
    """What a positional argument is, so that the shell can complete it."""

    JOB = "job id"
    SITE = "site"
    SERVER_OR_SITE = "server or a site"
    SERVER_CLIENT = "server|client"
    SERVER_CLIENT_ALL = "server|client|all"
    FOLDER = "folder"
    PATH = "path"
    COMMAND = "command"
