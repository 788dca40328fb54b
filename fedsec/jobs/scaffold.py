"""`fedsec job new`: write a job folder to start from, from a template shipped with the package.

A template (fedsec/jobs/templates/<name>/, package data) is job.py (builds a FedAvgRecipe and
runs it with fedsec.api.run_recipe), client.py (the training script: fedsec.client's
init/receive/send and SummaryWriter) and model.py. Each runs as written on a `fedsec poc`
federation, on data that needs no download. Files are stored as ``*.py.in`` so the package's
own checks do not take them for fedsec modules; ``{{name}}`` becomes the job's name.

This module only copies text: it never imports or runs a template's code.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fedsec import _fs
from fedsec.errors import ConfigError

TEMPLATES = ("numpy", "pytorch", "sklearn")
DEFAULT_TEMPLATE = "numpy"
_SUFFIX = ".in"
_NAME_MARK = "{{name}}"


def new_job(folder: Path, template: str = DEFAULT_TEMPLATE) -> list[Path]:
    """Write the job folder `folder` (its name is the job's name) from template; return the files written.

    All or nothing, and never over anything: raises ConfigError for an unknown template, an unsafe
    job name, or a folder that exists.
    """
    if template not in TEMPLATES:
        raise ConfigError(f"job new: no template {template!r}; choose one of {', '.join(TEMPLATES)}")
    name = _fs.check_name("job", folder.name)
    source = resources.files("fedsec.jobs").joinpath("templates", template)
    files = sorted((entry.name.removesuffix(_SUFFIX), entry.read_text(encoding="utf-8"))
                   for entry in source.iterdir() if entry.name.endswith(_SUFFIX))  # fmt: skip
    if not files:
        raise ConfigError(f"job new: template {template!r} is missing from this installation of fedsec")
    with _fs.staged_dir(folder, "job folder") as staging:
        for file_name, text in files:
            _fs.write_atomic(staging / file_name, text.replace(_NAME_MARK, name).encode())
    return [folder / file_name for file_name, _ in files]
