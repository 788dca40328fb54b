"""run_recipe(): a recipe run end to end from Python, the way a job.py runs it.

It exports the recipe into a temporary folder, submits it with the admin kit, follows it round
by round (printing the RoundPrinter lines job.py prints), downloads the result and returns a
JobResult with the final model loaded. `fedsec.api.FedAvgRecipe` (likewise FedProxRecipe,
FedOptRecipe and ScaffoldRecipe) is fedsec.jobs' recipe with `run(admin_kit)` added, which calls run_recipe(): the
running lives here, because jobs/ sits below api/ and never imports it. Nothing here is
printed except those progress lines.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from numpy.typing import NDArray

from fedsec.api.progress import RoundPrinter
from fedsec.api.session import JobInfo, Session
from fedsec.jobs import recipe as job_recipes
from fedsec.wire import model_file

COMPLETED = "finished:completed"


@dataclass(frozen=True)
class JobResult:
    """What a run ended with: its status and reason, the downloaded result folder and the final model.

    model holds the global model's arrays by name when the result has a plain one
    (global_model.safetensors); it is None for an HE job (the model stays encrypted:
    `fedsec he decrypt`) and for a job that ended before any global model was kept.
    """

    job_id: str
    status: str
    reason: str
    result: Path
    model: dict[str, NDArray[Any]] | None = field(default=None, repr=False)

    @property
    def completed(self) -> bool:
        return self.status == COMPLETED


def run_recipe(
    recipe: job_recipes.FedAvgRecipe,
    admin_kit: str | Path,
    *,
    dest: str | Path | None = None,
    progress: Callable[[JobInfo], None] | None = None,
    echo: Callable[[str], None] | None = print,
    poll: float = 1.0,
    timeout: float | None = None,
) -> JobResult:
    """Submit recipe with admin_kit, follow it to its end, download its result into dest/<job id>.

    dest defaults to the admin kit's transfer/ folder. progress is called on each change of the
    job (default: a RoundPrinter, the lines job.py prints); echo gets the submitted/finished/downloaded
    lines (None: silent). Returns the JobResult whatever the job's end (check .completed).
    Raises JobError (export, submit, timeout, a download that cannot be written), AuthError,
    KitError, WireError as Session does.
    """
    say = echo or (lambda _line: None)
    with tempfile.TemporaryDirectory(prefix="fedsec-run-") as tmp, Session(admin_kit) as session:
        job_id = session.submit_job(recipe.export(Path(tmp) / recipe.name))
        say(f"submitted job {job_id}")
        info = session.monitor_job(
            job_id, callback=progress if progress is not None else RoundPrinter(), poll=poll, timeout=timeout
        )
        say(f"job {job_id}: {info.status} {info.reason}".rstrip())
        folder = session.download_job_result(job_id, dest)
        say(f"result downloaded to {folder}")
    plain = folder / f"{model_file.GLOBAL_MODEL}{model_file.SAFETENSORS_SUFFIX}"
    model = model_file.read_safetensors(plain) if plain.is_file() else None
    return JobResult(job_id=job_id, status=info.status, reason=info.reason, result=folder, model=model)


class _Runs:
    """run(admin_kit) for a recipe of fedsec.jobs: submit, follow round by round, download (run_recipe)."""

    def run(
        self,
        admin_kit: str | Path,
        *,
        dest: str | Path | None = None,
        progress: Callable[[JobInfo], None] | None = None,
        echo: Callable[[str], None] | None = print,
        poll: float = 1.0,
        timeout: float | None = None,
    ) -> JobResult:
        """Submit this recipe with admin_kit, follow it round by round, download its result: run_recipe(self, ...)."""
        assert isinstance(self, job_recipes.FedAvgRecipe)
        return run_recipe(self, admin_kit, dest=dest, progress=progress, echo=echo, poll=poll, timeout=timeout)


class FedAvgRecipe(_Runs, job_recipes.FedAvgRecipe):
    """fedsec.jobs.FedAvgRecipe that also runs itself: `recipe.run(admin_kit)`."""


class FedProxRecipe(_Runs, job_recipes.FedProxRecipe):
    """fedsec.jobs.FedProxRecipe that also runs itself: `recipe.run(admin_kit)`."""


class FedOptRecipe(_Runs, job_recipes.FedOptRecipe):
    """fedsec.jobs.FedOptRecipe that also runs itself: `recipe.run(admin_kit)`."""


class ScaffoldRecipe(_Runs, job_recipes.ScaffoldRecipe):
    """fedsec.jobs.ScaffoldRecipe that also runs itself: `recipe.run(admin_kit)`."""
