"""The admin shell's command layer without a terminal: parsing, Session calls, exit statuses, rendering, completion."""

from __future__ import annotations

import io
import json
import os
import re
import stat
import time
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from fedsec.admin import ArgKind, commands, render
from fedsec.admin.commands import COMMANDS, help_text, run_command
from fedsec.admin.shell import AdminCompleter, arg_kind, open_history, run_lines
from fedsec.api import JobInfo, SiteWait
from fedsec.api.session import site_wait
from fedsec.errors import AuthError, JobError

ProgressFn = Callable[[int, int], None]
T0 = time.mktime((2024, 5, 6, 7, 8, 9, 0, 0, -1))  # a local time, so that the rendered text is known
JOB_A = "3f2a9c0e-1111-4a4a-9b9b-000000000001"
JOB_B = "3f2b0000-2222-4b4b-8c8c-000000000002"


def job(job_id: str = JOB_A, **changes: Any) -> JobInfo:
    fields: dict[str, Any] = {
        "job_id": job_id,
        "name": "linear",
        "status": "running",
        "submitter": "admin@acme.org",
        "submitter_org": "acme",
        "submit_time": T0,
        "start_time": T0 + 5,
        "end_time": None,
        "reason": "",
        "current_round": 3,
        "num_rounds": 5,
        "meta": {"min_clients": 2, "sites": ["site-1", "site-2"]},
        "progress": {"rounds": [{"round": 0, "metrics": {"mse": 0.5}, "sites": ["site-1"], "rejected": []}]},
    }
    fields.update(changes)
    return JobInfo(**fields)


class FakeSession:
    """Records every call; returns canned values; raises `fail` from the method named in `fail_on`."""

    def __init__(self) -> None:
        self.admin = "admin@acme.org"
        self.role = "project_admin"
        self.on_relogin: Callable[[], None] | None = None
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.jobs = [job(JOB_A), job(JOB_B, name="mnist", status="finished:completed", end_time=T0 + 65)]
        self.fail_on = ""
        self.fail: Exception = AuthError("refused")
        self.interrupt_follow = False  # tail_job_log -f: Ctrl-C after the second line

    def _rec(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append((name, args, kwargs))
        if name == self.fail_on:
            raise self.fail

    def login(self) -> None:
        self._rec("login")

    def list_jobs(
        self,
        name_prefix: str = "",
        id_prefix: str = "",
        max_results: int = 0,
        mine: bool = False,
        reverse: bool = False,
    ) -> list[JobInfo]:
        self._rec(
            "list_jobs",
            name_prefix=name_prefix,
            id_prefix=id_prefix,
            max_results=max_results,
            mine=mine,
            reverse=reverse,
        )
        return list(self.jobs)

    def get_job_meta(self, job_id: str) -> JobInfo:
        self._rec("get_job_meta", job_id)
        return self.jobs[0]

    def submit_job(self, folder: str | Path, progress: ProgressFn | None = None) -> str:
        self._rec("submit_job", folder, progress=progress)
        if progress is not None:
            for done in (0, 512, 1024):
                progress(done, 1024)
        return JOB_A

    def abort_job(self, job_id: str) -> JobInfo:
        self._rec("abort_job", job_id)
        return job(job_id, status="finished:aborted")

    def clone_job(self, job_id: str) -> str:
        self._rec("clone_job", job_id)
        return JOB_B

    def delete_job(self, job_id: str) -> None:
        self._rec("delete_job", job_id)

    def monitor_job(
        self, job_id: str, callback: Callable[[JobInfo], None] | None = None, *, timeout: float | None = None
    ) -> JobInfo:
        self._rec("monitor_job", job_id, timeout=timeout)
        waiting = SiteWait(3, ("site-1", "site-2", "site-3"), ("site-1", "site-2"))
        steps = [
            job(job_id, status="submitted", current_round=0, progress={}, waiting=waiting),
            job(job_id, status="running", current_round=0, progress={}),
            job(job_id, status="finished:completed", progress={"rounds": [{"round": 0, "metrics": {"mse": 0.5}}]}),
        ]
        for info in steps:
            if callback is not None:
                callback(info)
        return steps[-1]

    def download_job_result(
        self, job_id: str, dest: str | Path | None = None, progress: ProgressFn | None = None
    ) -> Path:
        self._rec("download_job_result", job_id, dest=dest, progress=progress)
        if progress is not None:
            progress(2048, 2048)
        return Path(dest) if dest else Path("/kit/transfer") / job_id

    def check_status(self, target: str, sites: Sequence[str] = ()) -> dict[str, Any]:
        self._rec("check_status", target, sites=tuple(sites))
        if target == "server":
            return {
                "server": "server1",
                "status": "running",
                "uptime": 3725.0,
                "running_jobs": [JOB_A],
                "sites_alive": 3,
            }
        return {"sites": [{"name": "site-1", "org": "acme", "alive": True, "last_seen": 2.0, "running_jobs": [JOB_A]}]}

    def list_clients(self) -> list[dict[str, Any]]:
        self._rec("list_clients")
        return [
            {"name": "site-1", "org": "acme", "last_seen": 1.0, "registered_at": T0, "removed": False},
            {"name": "site-2", "org": "beta", "last_seen": 400.0, "registered_at": T0, "removed": True},
        ]

    def remove_client(self, site: str) -> None:
        self._rec("remove_client", site)

    def enable_client(self, site: str) -> None:
        self._rec("enable_client", site)

    def show_stats(self, job_id: str) -> dict[str, Any]:
        self._rec("show_stats", job_id)
        rounds = [
            {"round": 0, "metrics": {"mse": 0.5}, "sites": ["site-1", "site-2"], "rejected": []},
            {"round": 1, "metrics": {"mse": 0.125, "acc": 0.9}, "sites": ["site-2"], "rejected": ["site-1"]},
        ]
        return {
            "rounds": rounds,
            "final": {"metrics": {"mse": 0.01}},
            "status": "running",
            "current_round": 2,
            "num_rounds": 5,
        }

    def show_errors(self, job_id: str) -> dict[str, Any]:
        self._rec("show_errors", job_id)
        refused = ["site-1 round 0: update refused: tensor 'w' has shape (9, 1), the model has (8, 1)"]
        return {"reason": "site-2 failed", "sites": {"site-2": "Traceback\n  RuntimeError: boom"}, "refused": refused}

    def get_job_log(self, job_id: str, target: str = "server") -> str:
        self._rec("get_job_log", job_id, target=target)
        return "line 1\nline 2"

    def tail_job_log(self, job_id: str, site: str | None = None, follow: bool = False) -> Generator[str, None, None]:
        self._rec("tail_job_log", job_id, site, follow)
        yield "site-1: epoch 1 loss 0.5"
        if follow:
            yield "site-1: epoch 2 loss 0.25"
            if self.interrupt_follow:
                raise KeyboardInterrupt
            yield "site-2: done"

    def download_job_log(self, job_id: str, dest: Path | None = None, follow: bool = False) -> Path:
        self._rec("download_job_log", job_id, dest=dest, follow=follow)
        return (dest or Path("/kit/transfer")) / f"{job_id}.logs"

    def sys_info(self, target: str = "server") -> dict[str, Any]:
        self._rec("sys_info", target=target)
        return {"name": target, "python": "3.11.7", "cpu": {"count": 16}}

    def shutdown(self, target: str, sites: Sequence[str] = ()) -> dict[str, Any]:
        self._rec("shutdown", target, sites=tuple(sites))
        return {"stopping": [target, *sites]}

    def version(self) -> dict[str, Any]:
        self._rec("version")
        return {"server": "0.1.0", "sites": {"site-1": "0.1.0", "site-2": "0.1.0"}}

    def show_audit(self, max_results: int = 50) -> list[dict[str, Any]]:
        self._rec("show_audit", max_results=max_results)
        return [
            {
                "time": T0,
                "admin": "admin@acme.org",
                "role": "project_admin",
                "command": "abort_job",
                "args": [JOB_A],
                "outcome": "ok",
                "detail": "",
            }
        ]


def run(
    line: str, session: FakeSession | None = None, interactive: bool = False, confirm: bool | None = None
) -> tuple[int, str, FakeSession]:
    s = session or FakeSession()
    out = io.StringIO()
    ask = None if confirm is None else (lambda question: bool(confirm))
    code = run_command(s, line, out, interactive, confirm=ask)
    return code, out.getvalue(), s


# ---- parsing: each command calls its Session method with the right arguments --------------------------------------

CALLS: list[tuple[str, tuple[str, tuple[Any, ...], dict[str, Any]]]] = [
    (
        "list_jobs",
        ("list_jobs", (), {"name_prefix": "", "id_prefix": "", "max_results": 0, "mine": False, "reverse": False}),
    ),
    (
        "list_jobs -n lin -u -r -m 5 3f2",
        ("list_jobs", (), {"name_prefix": "lin", "id_prefix": "3f2", "max_results": 5, "mine": True, "reverse": True}),
    ),
    (
        "list_jobs --name=mn --mine --reverse --max 2",
        ("list_jobs", (), {"name_prefix": "mn", "id_prefix": "", "max_results": 2, "mine": True, "reverse": True}),
    ),
    ("get_job_meta 3f2a", ("get_job_meta", ("3f2a",), {})),
    ("abort_job " + JOB_A, ("abort_job", (JOB_A,), {})),
    ("clone_job " + JOB_A, ("clone_job", (JOB_A,), {})),
    ("delete_job -y " + JOB_A, ("delete_job", (JOB_A,), {})),
    ("download_job " + JOB_A, ("download_job_result", (JOB_A,), {"dest": None, "progress": None})),
    (
        "download_job " + JOB_A + " /tmp/out",
        ("download_job_result", (JOB_A,), {"dest": Path("/tmp/out"), "progress": None}),
    ),
    ("check_status server", ("check_status", ("server",), {"sites": ()})),
    ("check_status client", ("check_status", ("client",), {"sites": ()})),
    ("check_status client site-1 site-2", ("check_status", ("client",), {"sites": ("site-1", "site-2")})),
    ("list_clients", ("list_clients", (), {})),
    ("remove_client site-2", ("remove_client", ("site-2",), {})),
    ("enable_client site-2", ("enable_client", ("site-2",), {})),
    ("show_stats " + JOB_A, ("show_stats", (JOB_A,), {})),
    ("show_errors " + JOB_A, ("show_errors", (JOB_A,), {})),
    ("get_job_log " + JOB_A, ("get_job_log", (JOB_A,), {"target": "server"})),
    ("get_job_log " + JOB_A + " site-1", ("get_job_log", (JOB_A,), {"target": "site-1"})),
    ("tail_job_log " + JOB_A, ("tail_job_log", (JOB_A, None, False), {})),
    ("tail_job_log " + JOB_A + " site-1 --follow", ("tail_job_log", (JOB_A, "site-1", True), {})),
    ("tail_job_log -f " + JOB_A, ("tail_job_log", (JOB_A, None, True), {})),
    ("download_job_log " + JOB_A, ("download_job_log", (JOB_A,), {"dest": None, "follow": False})),
    (
        "download_job_log " + JOB_A + " /tmp/out -f",
        ("download_job_log", (JOB_A,), {"dest": Path("/tmp/out"), "follow": True}),
    ),
    ("sys_info server", ("sys_info", (), {"target": "server"})),
    ("sys_info site-3", ("sys_info", (), {"target": "site-3"})),
    ("shutdown server", ("shutdown", ("server",), {"sites": ()})),
    ("shutdown client site-1", ("shutdown", ("client",), {"sites": ("site-1",)})),
    ("shutdown all", ("shutdown", ("all",), {"sites": ()})),
    ("version", ("version", (), {})),
    ("show_audit", ("show_audit", (), {"max_results": 50})),
    ("show_audit -m 7", ("show_audit", (), {"max_results": 7})),
    ("  'get_job_meta'   \"3f2a\"  # a comment", ("get_job_meta", ("3f2a",), {})),
]


@pytest.mark.parametrize(("line", "call"), CALLS, ids=[c[0] for c in CALLS])
def test_command_calls_session(line: str, call: tuple[str, tuple[Any, ...], dict[str, Any]]) -> None:
    code, out, s = run(line)
    assert code == 0, out
    assert s.calls == [call]
    assert out.endswith("\n") and "error" not in out


def test_submit_job_expands_the_folder() -> None:
    code, out, s = run("submit_job ~/jobs/linear")
    assert code == 0
    assert s.calls == [("submit_job", (Path.home() / "jobs/linear",), {"progress": None})]
    assert out == f"submitted job {JOB_A}\n"


def test_wait_job_says_what_the_job_waits_for() -> None:
    code, out, s = run(f"wait_job -t 60 {JOB_A}")
    assert code == 0, out
    assert s.calls == [("monitor_job", (JOB_A,), {"timeout": 60.0})]
    assert out.splitlines() == [
        "waiting for sites: 2 of 3 connected, site-3 missing",
        f"job {JOB_A}: running, round 1/5",
        "round 1/5: mse 0.5000",
        f"job {JOB_A}: finished:completed",
    ]


def test_site_wait_lines() -> None:
    clients = [
        {"name": "site-1", "alive": True, "removed": False},
        {"name": "site-2", "alive": True, "removed": False},
        {"name": "site-4", "alive": False, "removed": True},
    ]
    named = site_wait({"min_clients": 3, "sites": ["site-1", "site-2", "site-3"]}, clients)
    assert named is not None and named.line() == "waiting for sites: 2 of 3 connected, site-3 missing"
    anyone = site_wait({"min_clients": 3, "sites": []}, clients)
    assert anyone is not None and anyone.line() == "waiting for sites: 2 of 3 connected (site-1, site-2)"
    some = site_wait({"min_clients": 2, "sites": ["site-1", "site-3", "site-4"]}, clients)
    assert some is not None
    assert some.line() == "waiting for sites: 1 of 3 connected, site-3, site-4 missing; the job starts with 2"
    assert site_wait({"min_clients": 2, "sites": []}, clients) is None


def test_every_command_is_covered_by_the_call_table() -> None:
    covered = {line.split()[0].strip("'") for line, _ in CALLS} | {"submit_job", "wait_job", "help", "bye"}
    assert covered == set(COMMANDS)


# ---- usage errors, unknown commands and failures -----------------------------------------------------------------

USAGE_ERRORS = [
    ("get_job_meta", "usage: get_job_meta ID (the following arguments are required: ID)"),
    ("get_job_meta a b", "usage: get_job_meta ID (unrecognized arguments: b)"),
    ("list_jobs -m lots", "invalid int value: 'lots'"),
    ("list_jobs -m -1", "MAX must be 0"),
    ("list_jobs --bogus", "unrecognized arguments: --bogus"),
    ("list_jobs -n", "expected one argument"),
    ("check_status sever", "invalid choice: 'sever'"),
    ("check_status server site-1", "sites go with 'client' only"),
    ("shutdown everything", "invalid choice: 'everything'"),
    ("shutdown all site-1", "sites go with 'client' only"),
    ("submit_job", "the following arguments are required: FOLDER"),
    ("sys_info", "the following arguments are required: server|SITE"),
    ("remove_client", "the following arguments are required: SITE"),
    ("show_audit -m 0", "MAX must be 1 or more"),
    ("version now", "unrecognized arguments: now"),
    ("list_jobs 'unclosed", "cannot read the line: No closing quotation"),
    ("help nothing", "unknown command 'nothing' (try 'help')"),
]


@pytest.mark.parametrize(("line", "message"), USAGE_ERRORS, ids=[u[0] for u in USAGE_ERRORS])
def test_usage_error_is_one_line_and_status_2(line: str, message: str) -> None:
    code, out, s = run(line)
    assert code == 2
    assert out.startswith("error: ") and out.count("\n") == 1, out
    assert message in out
    assert not [c for c in s.calls if c[0] != "login"]


def test_usage_error_shows_the_usage() -> None:
    _, out, _ = run("list_jobs -m x")
    assert out.startswith("error: usage: list_jobs [-n NAME_PREFIX] [-d] [-u] [-r] [-m MAX] [ID_PREFIX] (")


def test_unknown_command_is_status_2() -> None:
    code, out, s = run("lst_jobs -d")
    assert (code, out) == (2, "error: unknown command 'lst_jobs' (did you mean 'list_jobs'?)\n")
    assert s.calls == []
    code, out, s = run("frobnicate")
    assert (code, out) == (2, "error: unknown command 'frobnicate' (try 'help')\n")


def test_job_id_that_matches_nothing_suggests_the_closest() -> None:
    s = FakeSession()
    s.fail_on, s.fail = "get_job_meta", JobError("get_job_meta: job 3f2a9c1e: no such job")
    code, out, _ = run("get_job_meta 3f2a9c1e", s)
    assert (code, out) == (1, f"error: get_job_meta: job 3f2a9c1e: no such job (did you mean {JOB_A}?)\n")
    s.fail = JobError("get_job_meta: job zzzzzzzz: no such job")
    code, out, _ = run("get_job_meta zzzzzzzz", s)
    assert (code, out) == (1, "error: get_job_meta: job zzzzzzzz: no such job\n")
    s.fail = JobError("get_job_meta: job 3f2a9c1e: ambiguous, 2 jobs have ids starting with it")
    code, out, _ = run("get_job_meta 3f2a9c1e", s)
    assert "did you mean" not in out


def test_delete_job_asks_first() -> None:
    code, out, s = run(f"delete_job {JOB_A}", interactive=True, confirm=False)
    assert (code, out, s.calls) == (0, "not deleted\n", [])
    code, out, s = run(f"delete_job {JOB_A}", interactive=True, confirm=True)
    assert (code, out, s.calls) == (0, f"deleted job {JOB_A}\n", [("delete_job", (JOB_A,), {})])
    code, out, s = run(f"delete_job --yes {JOB_A}", interactive=True, confirm=False)
    assert code == 0 and s.calls == [("delete_job", (JOB_A,), {})]


def test_delete_job_without_a_terminal_needs_yes() -> None:
    code, out, s = run(f"delete_job {JOB_A}", interactive=False)
    assert code == 2 and out.startswith("error: usage: delete_job ID -y") and s.calls == []


def test_shutdown_yes_does_not_ask() -> None:
    code, _, s = run("shutdown -y server", interactive=True, confirm=False)
    assert code == 0 and [c[0] for c in s.calls] == ["shutdown"]


def test_check_status_without_argument_shows_server_and_sites() -> None:
    code, out, s = run("check_status")
    assert code == 0, out
    assert s.calls == [("check_status", ("server",), {"sites": ()}), ("check_status", ("client",), {"sites": ()})]
    assert help_text("check_status").startswith("usage: check_status [server|client] [SITES ...]\n")


def test_json_output_one_document_per_command() -> None:
    out, err = io.StringIO(), io.StringIO()
    lines = ["list_jobs", "get_job_meta 3f2a", "delete_job -y 3f2a", "version", "help get_job_meta", "lst_jobs"]
    code = run_lines(FakeSession(), lines, out, err, as_json=True)
    assert code == 2
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(d["command"], d["status"]) for d in docs] == [
        ("list_jobs", 0), ("get_job_meta", 0), ("delete_job", 0), ("version", 0), ("help", 0), ("lst_jobs", 2)
    ]  # fmt: skip
    assert [j["job_id"] for j in docs[0]["result"]] == [JOB_A, JOB_B]
    assert docs[1]["result"]["status"] == "running" and docs[1]["result"]["num_rounds"] == 5
    assert docs[2]["result"] == {"deleted": "3f2a"}
    assert docs[4]["result"]["usage"] == "get_job_meta ID"
    assert docs[5]["error"] == "unknown command 'lst_jobs' (did you mean 'list_jobs'?)"
    assert err.getvalue() == "error: unknown command 'lst_jobs' (did you mean 'list_jobs'?)\n"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_json_output(name: str) -> None:
    words = {
        "check_status": "check_status client site-1",
        "remove_client": "remove_client site-2",
        "enable_client": "enable_client site-2",
        "sys_info": "sys_info server",
        "shutdown": "shutdown -y server",
        "delete_job": f"delete_job -y {JOB_A}",
        "help": "help",
        "list_jobs": "list_jobs",
        "list_clients": "list_clients",
        "version": "version",
        "show_audit": "show_audit",
        "submit_job": "submit_job /tmp/job",
        "bye": "bye",
    }.get(name, f"{name} {JOB_A}")
    out, err = io.StringIO(), io.StringIO()
    assert run_lines(FakeSession(), [words], out, err, as_json=True) == 0, err.getvalue()
    assert "error" not in err.getvalue()
    (doc,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert doc["command"] == name and doc["status"] == 0 and "result" in doc


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (
            AuthError("abort_job: admin@acme.org (lead) may not abort_job"),
            "error: abort_job: admin@acme.org (lead) may not abort_job",
        ),
        (JobError("abort_job: no job 3f2a"), "error: abort_job: no job 3f2a"),
        (FileNotFoundError(2, "No such file or directory", "/no/such"), "error: /no/such: No such file or directory"),
    ],
)
def test_runtime_failure_is_one_error_line_and_status_1(error: Exception, line: str) -> None:
    s = FakeSession()
    s.fail_on, s.fail = "abort_job", error
    code, out, _ = run("abort_job 3f2a", s)
    assert (code, out) == (1, line + "\n")


def test_errors_go_to_err_when_given() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert run_command(FakeSession(), "nope", out, False, err=err) == 2
    assert out.getvalue() == "" and err.getvalue().startswith("error: unknown command")


def test_blank_line_does_nothing() -> None:
    assert run("   ")[:2] == (0, "")


def test_bye_leaves() -> None:
    result = commands.execute(FakeSession(), "bye", commands.Context(io.StringIO(), io.StringIO(), True))
    assert result == commands.Result(0, leave=True)
    assert not commands.execute(FakeSession(), "version", commands.Context(io.StringIO(), io.StringIO(), True)).leave


# ---- help ----------------------------------------------------------------------------------------------------------


def test_help_lists_every_command() -> None:
    code, out, _ = run("help")
    assert code == 0
    listed = [line.split()[0] for line in out.splitlines()[1:] if line and not line.startswith("'")]
    assert listed == list(COMMANDS)
    assert out.splitlines()[0].split() == ["COMMAND", "DESCRIPTION"]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_command_shows_usage_and_description(name: str) -> None:
    code, out, _ = run(f"help {name}")
    assert code == 0
    usage, summary = out.splitlines()
    assert usage.startswith(f"usage: {name}")
    assert summary == COMMANDS[name].summary


def test_help_usage_of_list_jobs() -> None:
    assert (
        run("help list_jobs")[1].splitlines()[0]
        == "usage: list_jobs [-n NAME_PREFIX] [-d] [-u] [-r] [-m MAX] [ID_PREFIX]"
    )


# ---- interactive behaviour: confirmation and progress -------------------------------------------------------------


def test_shutdown_asks_when_interactive() -> None:
    code, out, s = run("shutdown all", interactive=True, confirm=False)
    assert (code, out, s.calls) == (0, "not shut down\n", [])
    code, out, s = run("shutdown all", interactive=True, confirm=True)
    assert code == 0 and s.calls == [("shutdown", ("all",), {"sites": ()})]
    assert out == "stopping:  all\n"


def test_shutdown_does_not_ask_when_not_interactive() -> None:
    code, _, s = run("shutdown server", interactive=False, confirm=False)
    assert code == 0 and [c[0] for c in s.calls] == ["shutdown"]


def test_submit_shows_progress_when_interactive() -> None:
    code, out, s = run("submit_job /jobs/linear", interactive=True)
    assert code == 0 and s.calls[0][2]["progress"] is not None
    assert "\ruploading [" in out and "100% 1.0 KiB/1.0 KiB\n" in out
    assert out.endswith(f"submitted job {JOB_A}\n")


def test_download_shows_progress_when_interactive() -> None:
    code, out, _ = run(f"download_job {JOB_A}", interactive=True)
    assert code == 0
    assert out == f"\rdownloading [{'#' * 30}] 100% 2.0 KiB/2.0 KiB\ndownloaded job {JOB_A} to /kit/transfer/{JOB_A}\n"


def test_no_progress_when_not_interactive() -> None:
    _, out, _ = run(f"download_job {JOB_A} /tmp/x")
    assert out == f"downloaded job {JOB_A} to /tmp/x\n"


# ---- rendering -----------------------------------------------------------------------------------------------------


def test_list_jobs_table() -> None:
    code, out, _ = run("list_jobs")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("JOB ID" + " " * (len(JOB_A) - 6 + 2) + "NAME")
    for header in render.JOB_HEADERS:
        assert header in lines[0]
    assert len(lines) == 3
    # columns are aligned: every field starts where its header does
    start = lines[0].index("STATUS")
    assert lines[1][start:].startswith("running") and lines[2][start:].startswith("finished:completed")
    assert lines[1].startswith(JOB_A) and "3/5" in lines[1] and "2024-05-06 07:08:09" in lines[1]
    assert lines[2].endswith("1m 00s")  # started at +5 s, ended at +65 s
    assert all(line == line.rstrip() for line in lines)


def test_list_jobs_empty_prints_the_header() -> None:
    s = FakeSession()
    s.jobs = []
    assert run("list_jobs", s)[1] == "  ".join(render.JOB_HEADERS) + "\n"


def test_list_jobs_detailed() -> None:
    code, out, _ = run("list_jobs -d")
    assert code == 0
    blocks = out.split("\n\n")
    assert len(blocks) == 2
    first = dict(line.split(":", 1) for line in blocks[0].splitlines())
    assert first["job id"].strip() == JOB_A
    assert first["submitter"].strip() == "admin@acme.org (acme)"
    assert first["submitted"].strip() == "2024-05-06 07:08:09"
    assert first["round"].strip() == "3/5"
    assert first["meta.min_clients"].strip() == "2"
    assert first["meta.sites"].strip() == "site-1, site-2"
    assert first["round 0"].strip() == "mse=0.5"
    assert {"name", "status", "reason", "started", "ended", "duration"} <= set(first)


def test_multi_line_reason_stays_in_its_column() -> None:
    s = FakeSession()
    s.jobs = [job(status="finished:failed", reason="site-2: failed:\nTraceback\n\n  RuntimeError: boom\n")]
    lines = run("get_job_meta 3f2a", s)[1].splitlines()
    at = lines.index("reason:            site-2: failed:")
    assert lines[at + 1 : at + 4] == [" " * 19 + "Traceback", "", " " * 21 + "RuntimeError: boom"]
    assert lines[at + 4].startswith("round:")


def test_empty_job_log() -> None:
    s = FakeSession()
    s.get_job_log = lambda job_id, target="server": ""  # type: ignore[method-assign]
    assert run("get_job_log 3f2a site-1", s)[1] == ""
    assert run("get_job_log 3f2a site-1", s, interactive=True)[1] == "(the log of job 3f2a from site-1 is empty)\n"


def test_duration_of_running_job_counts_to_now() -> None:
    assert render.job_duration(job(), now=T0 + 5 + 3725) == "1h 02m"
    assert render.job_duration(job(start_time=None)) == "-"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.4, "59s"), (60, "1m 00s"), (3599, "59m 59s"), (7260, "2h 01m"), (90000, "1d 01h")],
)
def test_fmt_duration(seconds: float, text: str) -> None:
    assert render.fmt_duration(seconds) == text


def test_show_stats_table() -> None:
    _, out, _ = run("show_stats " + JOB_A)
    lines = out.splitlines()
    assert lines[0] == f"job {JOB_A}: running, round 2/5"
    assert lines[1].split() == ["ROUND", "SITES", "REJECTED", "mse", "acc"]
    assert lines[2].split() == ["0", "site-1,site-2", "-", "0.5", "-"]
    assert lines[3].split() == ["1", "site-2", "site-1", "0.125", "0.9"]
    assert lines[4] == "final: mse=0.01"


def test_show_errors_blocks() -> None:
    _, out, _ = run("show_errors " + JOB_A)
    assert out == (
        f"job {JOB_A}: site-2 failed\nsite-2:\n    Traceback\n      RuntimeError: boom\n"
        "site-1 round 0: update refused: tensor 'w' has shape (9, 1), the model has (8, 1)\n"
    )


def test_get_job_meta_shows_refused_updates() -> None:
    refused = [{"round": 1, "site": "site-2", "reason": "tensor 'w' is not in the model"}]
    block = render.job_block(job(progress={"refused": refused}))
    assert "refused:" in block
    assert "site-2 round 1: update refused: tensor 'w' is not in the model" in block


def test_check_status_server_and_sites() -> None:
    _, out, _ = run("check_status server")
    assert out.splitlines() == [
        "server:        server1",
        "status:        running",
        "uptime:        1h 02m",
        f"running jobs:  {JOB_A}",
        "sites alive:   3",
    ]
    _, out, _ = run("check_status client")
    assert out.splitlines()[0].split("  ")[0] == "SITE"
    assert out.splitlines()[1].split() == ["site-1", "acme", "yes", "2s", "ago", JOB_A]


def test_list_clients_table() -> None:
    _, out, _ = run("list_clients")
    lines = out.splitlines()
    assert [h.strip() for h in re.split(r"\s{2,}", lines[0])] == ["SITE", "ORG", "LAST SEEN", "REGISTERED", "STATE"]
    assert lines[1].split() == ["site-1", "acme", "1s", "ago", "2024-05-06", "07:08:09", "enabled"]
    assert lines[2].split() == ["site-2", "beta", "6m", "40s", "ago", "2024-05-06", "07:08:09", "removed"]


def test_sys_info_version_audit_log() -> None:
    assert run("sys_info site-1")[1] == "name:       site-1\npython:     3.11.7\ncpu.count:  16\n"
    assert run("version")[1] == "server: 0.1.0\nSITE    VERSION\nsite-1  0.1.0\nsite-2  0.1.0\n"
    audit = run("show_audit")[1].splitlines()
    assert audit[0].split() == ["TIME", "ADMIN", "ROLE", "COMMAND", "ARGS", "OUTCOME", "DETAIL"]
    assert audit[1].split() == ["2024-05-06", "07:08:09", "admin@acme.org", "project_admin", "abort_job", JOB_A, "ok"]
    assert run(f"get_job_log {JOB_A}")[1] == "line 1\nline 2\n"


def test_table_cuts_long_cells_and_keeps_one_line_per_row() -> None:
    text = render.table(("A", "B"), [["x" * 100, "two\nlines"]])
    row = text.splitlines()[1]
    assert len(text.splitlines()) == 2 and row.endswith("two lines") and "..." in row
    assert len(row.split("  ")[0]) == render.MAX_CELL


def test_fmt_ago_accepts_epoch_times() -> None:
    assert render.fmt_ago(T0 - 30, now=T0) == "30s ago"
    assert render.fmt_ago(None) == "never"


# ---- completion and the non-interactive loop ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "kind"),
    [
        (["abort_job"], ArgKind.JOB),
        (["abort_job", JOB_A], None),
        (["list_jobs", "-d"], ArgKind.JOB),
        (["list_jobs", "-n"], None),
        (["list_jobs", "-n", "lin"], ArgKind.JOB),
        (["check_status"], ArgKind.SERVER_CLIENT),
        (["check_status", "client", "site-1"], ArgKind.SITE),
        (["shutdown"], ArgKind.SERVER_CLIENT_ALL),
        (["get_job_log", JOB_A], ArgKind.SERVER_OR_SITE),
        (["submit_job"], ArgKind.FOLDER),
        (["download_job", JOB_A], ArgKind.PATH),
        (["help"], ArgKind.COMMAND),
        (["version"], None),
        (["nope"], None),
    ],
)
def test_arg_kind(words: list[str], kind: ArgKind | None) -> None:
    assert arg_kind(words[0], words[1:]) is kind


def complete(completer: AdminCompleter, text: str) -> list[str]:
    return [c.text for c in completer.get_completions(Document(text), CompleteEvent(completion_requested=True))]


def test_completer_commands_jobs_sites_targets() -> None:
    s = FakeSession()
    now = [100.0]
    completer = AdminCompleter(s, clock=lambda: now[0])
    assert complete(completer, "li") == ["list_jobs", "list_clients"]
    assert complete(completer, "abort_job 3f2a") == [JOB_A]
    assert complete(completer, "abort_job 3f2") == [JOB_A, JOB_B]
    assert complete(completer, "check_status ") == ["server", "client"]
    assert complete(completer, "check_status client site-") == ["site-1", "site-2"]
    assert complete(completer, "get_job_log x s") == ["server", "site-1", "site-2"]
    assert complete(completer, "shutdown a") == ["all"]
    assert complete(completer, "help show_") == ["show_stats", "show_errors", "show_audit"]
    assert complete(completer, "version ") == []
    # job ids come from one cached list_jobs(max_results=100), refreshed at most every 5 s
    list_calls = [c for c in s.calls if c[0] == "list_jobs"]
    assert len(list_calls) == 1 and list_calls[0][2]["max_results"] == 100
    complete(completer, "abort_job ")
    now[0] += 5.0
    complete(completer, "abort_job ")
    assert len([c for c in s.calls if c[0] == "list_jobs"]) == 2


def test_completer_survives_a_failing_server() -> None:
    s = FakeSession()
    s.fail_on = "list_jobs"
    assert complete(AdminCompleter(s), "abort_job ") == []


def test_completer_paths(tmp_path: Path) -> None:
    (tmp_path / "job-linear").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    completer = AdminCompleter(FakeSession())
    assert complete(completer, f"submit_job {tmp_path}/") == ["job-linear"]
    assert sorted(complete(completer, f"download_job {JOB_A} {tmp_path}/")) == ["job-linear", "notes.txt"]


def test_run_lines_stops_at_first_failure() -> None:
    s = FakeSession()
    out, err = io.StringIO(), io.StringIO()
    code = run_lines(s, ["# setup", "", "version", "lst_jobs", "list_clients"], out, err)
    assert code == 2 and [c[0] for c in s.calls] == ["version"]
    assert err.getvalue() == "error: unknown command 'lst_jobs' (did you mean 'list_jobs'?)\n"
    s.fail_on = "version"
    assert run_lines(s, ["list_clients", "version", "list_clients"], out, err) == 1
    assert run_lines(FakeSession(), ["version", "bye", "nope"], out, err) == 0


def test_run_lines_turns_a_bug_into_one_line() -> None:
    s = FakeSession()
    s.fail_on, s.fail = "version", KeyError("server")
    out, err = io.StringIO(), io.StringIO()
    assert run_lines(s, ["version"], out, err) == 1
    assert err.getvalue() == "error: internal error: KeyError: 'server'\n"


def test_history_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / ".fedsec_admin_history"
    open_history(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    os.chmod(path, 0o644)
    open_history(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_tail_job_log_prints_lines_as_they_come() -> None:
    assert run(f"tail_job_log {JOB_A}")[1] == "site-1: epoch 1 loss 0.5\n"
    lines = ["site-1: epoch 1 loss 0.5", "site-1: epoch 2 loss 0.25", "site-2: done"]
    assert run(f"tail_job_log {JOB_A} -f")[1].splitlines() == lines


def test_ctrl_c_stops_following_and_the_shell_goes_on() -> None:
    s = FakeSession()
    s.interrupt_follow = True
    code, out, _ = run(f"tail_job_log {JOB_A} --follow", s, interactive=True)
    assert code == 0
    assert out.splitlines() == ["site-1: epoch 1 loss 0.5", "site-1: epoch 2 loss 0.25", "stopped following"]
    assert run("version", s)[0] == 0


def test_log_commands_have_help() -> None:
    assert help_text("tail_job_log").startswith("usage: tail_job_log [-f] ID [SITE]\n")
    assert "Ctrl-C" in help_text("tail_job_log")
    assert help_text("download_job_log").startswith("usage: download_job_log [-f] ID [DEST]\n")


HOSTILE = "ok\x1b]52;c;cm0gLXJmIH4=\x07\x1b[2J\x9b31m\x00end"  # clipboard write, clear screen, C1 CSI, NUL


@pytest.mark.parametrize("line", ["get_job_log " + JOB_A + " site-1", "tail_job_log " + JOB_A, "show_errors " + JOB_A])
def test_text_from_sites_sends_no_control_character_to_the_terminal(line: str) -> None:
    class Hostile(FakeSession):
        def get_job_log(self, job_id: str, target: str = "server") -> str:
            return HOSTILE

        def tail_job_log(
            self, job_id: str, site: str | None = None, follow: bool = False
        ) -> Generator[str, None, None]:
            yield "site-1: " + HOSTILE

        def show_errors(self, job_id: str) -> dict[str, Any]:
            return {"reason": HOSTILE, "sites": {"site-2": HOSTILE}, "refused": [HOSTILE]}

    for interactive in (False, True):
        code, out, _ = run(line, Hostile(), interactive=interactive)
        assert code == 0
        assert "ok" in out and "end" in out
        assert not any(c in out for c in "\x1b\x07\x9b\x00"), repr(out)
