"""Recipes: build a job folder from Python, so a job's job.py stays a few lines.

FedAvgRecipe takes a model (anything with state_dict(), or a mapping of
arrays), a training script and the workflow settings, checks them all at
construction, and export() writes a job folder that load_job_folder accepts.
FedProxRecipe, FedOptRecipe and ScaffoldRecipe are the same with the job's strategy
section set (fedprox and its mu; fedopt, its server optimizer and settings; scaffold and its server_lr).
The model is converted by duck typing (.detach().cpu().numpy()), so this module
never imports torch; it never imports or runs the training script either.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from fedsec import _fs, _schema
from fedsec.errors import ConfigError, JobError, WireError
from fedsec.jobs import control
from fedsec.jobs.meta import (
    APP_DIR,
    CONFIG_FILE,
    CUSTOM_DIR,
    FORMAT,
    META_FILE,
    AppConfig,
    JobMeta,
    WorkflowKind,
    check_job,
    check_meta,
    load_job_folder,
    parse_app_config,
    to_yaml,
)
from fedsec.wire import arrays

INITIAL_MODEL_FILE = "initial_model.fsa"
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")


class SupportsStateDict(Protocol):
    """A model that can list its weights: a torch.nn.Module, for one."""

    def state_dict(self) -> Mapping[str, Any]: ...


class FedAvgRecipe:
    """A FedAvg job: a model, a training script run on every sampled site, and the round settings.

    Raises JobError at construction for any bad argument: an unsafe name, bounds
    (num_rounds, min_clients, sample_fraction, timeouts), a missing script or
    custom file, clashing file names, or a model that is not a mapping of
    numeric arrays. The model's weights are copied when the recipe is made.
    """

    def __init__(
        self,
        name: str,
        model: SupportsStateDict | Mapping[str, Any],
        train_script: str | Path,
        num_rounds: int,
        min_clients: int,
        *,
        script_args: Sequence[str] = (),
        custom_files: Sequence[str | Path] = (),
        sites: Sequence[str] = (),
        sample_fraction: float = 1.0,
        sample_seed: int | None = None,
        round_timeout: float = 600.0,
        start_timeout: float = 120.0,
        evaluate_final: bool = True,
        he: bool = False,
        he_clip: float = 4.0,
        he_max_examples: int = 1,
        he_max_clients: int = 16,
        tracking_backend: str = "local",
        tensorboard: bool = False,
    ) -> None:
        self._where = f"{type(self).__name__} {name!r}"
        for arg, value in (("script_args", script_args), ("custom_files", custom_files), ("sites", sites)):
            if isinstance(value, str | bytes):
                raise JobError(f"{self._where}: {arg}: give a list, not a single string")
        self.train_script = Path(train_script)
        self.custom_files = tuple(Path(p) for p in custom_files)
        raw_meta = {"format": FORMAT, "name": name, "min_clients": min_clients, "sites": list(sites)}
        raw_config = {
            "workflow": {
                "kind": WorkflowKind.FEDAVG.value,
                "num_rounds": num_rounds,
                "sample_fraction": sample_fraction,
                **({} if sample_seed is None else {"sample_seed": sample_seed}),
                "round_timeout": round_timeout,
                "start_timeout": start_timeout,
                "evaluate_final": evaluate_final,
            },
            "script": {"path": self.train_script.name, "args": list(script_args)},
            "initial_model": INITIAL_MODEL_FILE,
            "he": {"enabled": he, "clip": he_clip, "max_examples": he_max_examples, "max_clients": he_max_clients},
            "tracking": {"backend": tracking_backend, "tensorboard": tensorboard},
            "strategy": self._strategy_section(),
        }
        try:
            self.meta: JobMeta = _schema.build(JobMeta, raw_meta, "")
            check_meta(self.meta)
            self.app_config: AppConfig = parse_app_config(raw_config)
            check_job(self.meta, self.app_config)
        except ConfigError as exc:
            raise JobError(f"{self._where}: {exc}") from exc
        self._check_files()
        self.initial_model = model_arrays(model, f"{self._where}: model")

    @property
    def name(self) -> str:
        return self.meta.name

    def _strategy_section(self) -> dict[str, Any]:
        """app/config.yml's strategy section for this recipe's strategy."""
        return {"name": "fedavg"}

    def export(self, folder: str | Path) -> Path:
        """Write the job folder at folder, which must not exist; all or nothing. Returns folder.

        Raises JobError if folder exists, a file cannot be copied or written, or the
        result does not load (which would be a bug in this recipe).
        """
        folder = Path(folder)
        with _fs.staged_dir(folder, f"{self._where}: export:", JobError) as staging:
            self._write(staging)
            load_job_folder(staging)
        return folder

    def _check_files(self) -> None:
        if not self.train_script.is_file():
            raise JobError(f"{self._where}: train_script {self.train_script} is missing or not a file")
        seen = {self.train_script.name: "train_script"}
        for path in self.custom_files:
            if not path.exists():
                raise JobError(f"{self._where}: custom_files: {path} is missing")
            if not (path.is_file() or path.is_dir()):
                raise JobError(f"{self._where}: custom_files: {path} is not a file or a folder")
            if path.name in seen:
                raise JobError(f"{self._where}: custom_files: {path} has the same name as {seen[path.name]}")
            seen[path.name] = str(path)

    def _write(self, root: Path) -> None:
        """Write the job folder's content under root (which exists)."""
        _fs.write_atomic(root / META_FILE, to_yaml(self.meta))
        _fs.write_atomic(root / CONFIG_FILE, to_yaml(self.app_config))
        model_path = root / APP_DIR / INITIAL_MODEL_FILE
        try:
            arrays.write_file(model_path, self.initial_model, f"{self._where}: initial model")
        except WireError as exc:
            raise JobError(str(exc)) from exc
        custom = root / CUSTOM_DIR
        custom.mkdir(parents=True)
        for path in (self.train_script, *self.custom_files):
            try:
                if path.is_dir():
                    shutil.copytree(path, custom / path.name, ignore=_IGNORED)
                else:
                    shutil.copyfile(path, custom / path.name)
            except OSError as exc:  # shutil.Error is an OSError
                raise JobError(f"{self._where}: cannot copy {path}: {exc}") from exc


class FedProxRecipe(FedAvgRecipe):
    """A FedProx job: FedAvg on the server, and mu sent to the sites with each task.

    The training script adds mu/2 * ||w - w_global||^2 to its loss (fedsec.client.torch_io.proximal_term,
    with mu from fedsec.client.strategy_settings()). The other arguments are FedAvgRecipe's; JobError
    for a mu outside [0, 1e6].
    """

    def __init__(self, *args: Any, mu: float, **kwargs: Any) -> None:
        self._mu = mu
        super().__init__(*args, **kwargs)

    def _strategy_section(self) -> dict[str, Any]:
        return {"name": "fedprox", "mu": self._mu}


class FedOptRecipe(FedAvgRecipe):
    """A FedOpt job: a server optimizer (adam, yogi, adagrad or avgm) steps the global model each round.

    Settings left as None take their defaults (fedsec.jobs.meta.FEDOPT_DEFAULTS); one the optimizer does
    not take (beta2 for avgm, momentum for adam) is a JobError, as are bounds, and with he=True a tau below
    the HE fixed-point step (fedsec.jobs.meta.check_fedopt_he).
    The other arguments are FedAvgRecipe's.
    """

    def __init__(
        self,
        *args: Any,
        optimizer: str = "adam",
        server_lr: float | None = None,
        beta1: float | None = None,
        beta2: float | None = None,
        tau: float | None = None,
        momentum: float | None = None,
        **kwargs: Any,
    ) -> None:
        given = {"server_lr": server_lr, "beta1": beta1, "beta2": beta2, "tau": tau, "momentum": momentum}
        self._section: dict[str, Any] = {"name": "fedopt", "optimizer": optimizer}
        self._section.update({key: value for key, value in given.items() if value is not None})
        super().__init__(*args, **kwargs)

    def _strategy_section(self) -> dict[str, Any]:
        return dict(self._section)


class ScaffoldRecipe(FedAvgRecipe):
    """A SCAFFOLD job: control variates correct each site's local steps for the drift of its data.

    The server steps the global model x <- x + server_lr * mean(y_i - x) (server_lr, default 1.0) and
    the global control variate c <- c + sum(delta_c_i) / N; the training script corrects each gradient
    step with fedsec.client.scaffold.Scaffold. sites must be listed (N is their number); he=True runs it
    with the control variates encrypted too. The other arguments are FedAvgRecipe's; JobError for a
    server_lr outside (0, 1e6], no sites, or a model whose control variates go over a limit (at export).
    """

    def __init__(self, *args: Any, server_lr: float | None = None, **kwargs: Any) -> None:
        self._section: dict[str, Any] = {"name": "scaffold"}
        if server_lr is not None:
            self._section["server_lr"] = server_lr
        super().__init__(*args, **kwargs)
        specs = arrays.specs_of(self.initial_model, f"{self._where}: model")
        try:
            control.check_model(specs, self.app_config.he.enabled, f"{self._where}: model")
        except ConfigError as exc:
            raise JobError(str(exc)) from exc

    def _strategy_section(self) -> dict[str, Any]:
        return dict(self._section)


def model_arrays(model: SupportsStateDict | Mapping[str, Any], where: str) -> dict[str, NDArray[Any]]:
    """A copy of model's weights as numpy arrays, checked storable in the array container.

    Tensors are converted by duck typing: value.detach().cpu().numpy() when the value
    has detach, np.asarray otherwise. Raises JobError naming the tensor.
    """
    if isinstance(model, Mapping):
        state: Mapping[str, Any] = model
    elif callable(getattr(model, "state_dict", None)):
        state = model.state_dict()
    else:
        raise JobError(
            f"{where}: expected a model with state_dict() or a mapping of arrays, got {type(model).__name__}"
        )
    out: dict[str, NDArray[Any]] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise JobError(f"{where}: tensor names must be strings, got {key!r}")
        try:
            array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
            out[key] = np.array(array, copy=True)
        except (TypeError, ValueError, RuntimeError) as exc:  # bfloat16 and other dtypes numpy lacks
            raise JobError(f"{where}: tensor {key!r} cannot be converted to a numpy array: {exc}") from exc
    if not out:
        raise JobError(f"{where}: the model has no tensors")
    try:
        arrays.specs_of(out, where)
    except WireError as exc:
        raise JobError(str(exc)) from exc
    return out
