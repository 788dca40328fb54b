"""The job folder format: meta.yml and app/config.yml, loaded into frozen dataclasses.

A job folder is::

    <job>/
      meta.yml               format, name, sites, min_clients
      app/config.yml         workflow, script, initial_model, he, tracking, strategy
      app/initial_model.fsa  initial global weights in the fedsec array container
      app/custom/            the training script and the modules it imports

load_job_folder() validates all of it (unknown keys, bounds, names, that the
files it names exist inside the folder, that the initial model's header is a
valid array container) and raises JobError naming the folder, the file and the
key. This module reads YAML with the safe loader only and never imports or runs
anything from a job; it never writes.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from fedsec import _fs, _schema, limits
from fedsec.errors import ConfigError, HEError, JobError, WireError
from fedsec.he import params as he_params
from fedsec.tracking.backends import LOCAL, check_backend_name

FORMAT = "fedsec-job/1"
META_FILE = "meta.yml"
APP_DIR = "app"
CONFIG_FILE = f"{APP_DIR}/config.yml"
CUSTOM_DIR = f"{APP_DIR}/custom"
MAX_TIMEOUT = 7 * 24 * 3600.0  # seconds; a round or a start wait longer than a week is a mistake


class WorkflowKind(enum.Enum):
    """The server-side workflows a job can ask for, by short name."""

    FEDAVG = "fedavg"


class StrategyKind(enum.Enum):
    """The strategies a job can ask for in app/config.yml's strategy section, by short name."""

    FEDAVG = "fedavg"
    FEDPROX = "fedprox"
    FEDOPT = "fedopt"
    SCAFFOLD = "scaffold"


class ServerOptimizer(enum.Enum):
    """FedOpt's server optimizers (Reddi et al., "Adaptive Federated Optimization"; Hsu et al. for avgm)."""

    ADAM = "adam"
    YOGI = "yogi"
    ADAGRAD = "adagrad"
    AVGM = "avgm"


_ADAPTIVE = {"server_lr": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3}
# each optimizer's settings and their defaults; a setting not listed for the chosen optimizer is an error
FEDOPT_DEFAULTS: dict[ServerOptimizer, dict[str, float]] = {
    ServerOptimizer.ADAM: _ADAPTIVE,
    ServerOptimizer.YOGI: _ADAPTIVE,
    ServerOptimizer.ADAGRAD: {"server_lr": 0.1, "beta1": 0.0, "tau": 1e-3},
    ServerOptimizer.AVGM: {"server_lr": 1.0, "momentum": 0.9},
}
SCAFFOLD_DEFAULTS: dict[str, float] = {"server_lr": 1.0}


@dataclass(frozen=True)
class StrategyConfig:
    """config.yml's strategy section (or just its name: `strategy: fedavg`).

    fedavg: no settings. fedprox: mu (required), the weight of the proximal term mu/2 * ||w - w_global||^2
    the sites add to their loss. fedopt: optimizer (required: adam, yogi, adagrad or avgm) and its
    settings, each with a default (FEDOPT_DEFAULTS): server_lr, beta1, beta2, tau for adam and yogi;
    server_lr, beta1, tau for adagrad; server_lr, momentum for avgm. scaffold: server_lr (default 1.0),
    the global step x <- x + server_lr * mean(y_i - x); it needs meta.yml's sites (their number N scales
    the control-variate update). A setting the chosen strategy (or optimizer) does not take is an error.
    settings() gives the effective values.
    """

    name: StrategyKind = StrategyKind.FEDAVG
    mu: float | None = None
    optimizer: ServerOptimizer | None = None
    server_lr: float | None = None
    beta1: float | None = None
    beta2: float | None = None
    tau: float | None = None
    momentum: float | None = None

    def task_meta(self) -> dict[str, float | str]:
        """What each task says of the strategy ({"name": ..., and settings()}); a site refuses a task that differs."""
        return {"name": self.name.value, **self.settings()}

    def settings(self) -> dict[str, float | str]:
        """The effective settings of the chosen strategy, defaults filled in (no name)."""
        if self.name is StrategyKind.FEDPROX:
            return {"mu": float(self.mu or 0.0)}
        if self.name is StrategyKind.FEDOPT and self.optimizer is not None:
            out: dict[str, float | str] = {"optimizer": self.optimizer.value}
            for key, default in FEDOPT_DEFAULTS[self.optimizer].items():
                value = getattr(self, key)
                out[key] = float(default if value is None else value)
            return out
        if self.name is StrategyKind.SCAFFOLD:
            return {
                key: float(default if self.server_lr is None else self.server_lr)
                for key, default in SCAFFOLD_DEFAULTS.items()
            }
        return {}


@dataclass(frozen=True, kw_only=True)
class JobMeta:
    """meta.yml: who runs the job. An empty sites tuple means every connected site."""

    format: str
    name: str
    sites: tuple[str, ...] = ()
    min_clients: int


@dataclass(frozen=True)
class WorkflowConfig:
    """config.yml's workflow section.

    Each round samples max(min_clients, ceil(sample_fraction * live sites)) sites, drawn with a
    generator seeded by the round and sample_seed (the job's id when none is given): two jobs with
    the same sample_seed and sites sample alike, round by round (to compare them).

    round_timeout: how long each sampled site has to answer a round, counted for
    each site from when it received its task (a site that never asks for it has
    round_timeout from the round's opening); the round closes once every sampled
    site answered, left, or is past its own deadline.
    start_timeout: how long the workflow waits for min_clients sites to connect.
    ready_timeout: how long the server's workflow process may take, from its
    start, to serve (open its socket); past it the server stops it and fails
    the job with that cause and the process's last output.
    max_site_restarts: how many times a site whose training script died may
    start it again (it rejoins at the next round); one more failure and the site
    leaves the job. The job fails only when fewer than min_clients sites remain.
    """

    kind: WorkflowKind
    num_rounds: int
    sample_fraction: float = 1.0
    sample_seed: int | None = None
    round_timeout: float = 600.0
    start_timeout: float = 120.0
    evaluate_final: bool = True
    ready_timeout: float = 120.0
    max_site_restarts: int = 1


@dataclass(frozen=True)
class ScriptConfig:
    """config.yml's script section: path is relative to app/custom/."""

    path: str
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class HEConfig:
    """config.yml's he section: homomorphic encryption of the updates (the project must provision it).

    Each site's weight is min(num_examples, max_examples) / max_examples; values are
    clipped to [-clip, clip] before they are quantised (fedsec.he.params).
    """

    enabled: bool = False
    clip: float = 4.0
    max_examples: int = 1
    max_clients: int = 16  # the most sites one round sums: fewer give a finer fixed point


@dataclass(frozen=True)
class TrackingConfig:
    """config.yml's tracking section: which of the server's tracking backends gets the sites' events.

    backend is a name the server's operator gives (fedsec.tracking.backends); "local", the default, is the
    server's embedded MLflow store. A job never names a path, a database or a host.
    """

    backend: str = LOCAL
    tensorboard: bool = False


@dataclass(frozen=True)
class AppConfig:
    """app/config.yml: initial_model is relative to app/."""

    workflow: WorkflowConfig
    script: ScriptConfig
    initial_model: str
    he: HEConfig = field(default_factory=HEConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)


def load_job_folder(folder: Path) -> tuple[JobMeta, AppConfig]:
    """Read and validate a job folder.

    Raises JobError("job folder X: meta.yml: min_clients: ...") on the first problem.
    """
    if not folder.is_dir():
        raise JobError(f"job folder {folder}: not a folder")
    try:
        meta = parse_meta(_read_yaml(folder, META_FILE))
        config = parse_app_config(_read_yaml(folder, CONFIG_FILE))
        _check_inside(folder, f"{CUSTOM_DIR}/{config.script.path}", f"{CONFIG_FILE}: script.path")
        model = _check_inside(folder, f"{APP_DIR}/{config.initial_model}", f"{CONFIG_FILE}: initial_model")
        _check_model(model, f"{CONFIG_FILE}: initial_model: {APP_DIR}/{config.initial_model}")
        check_job(meta, config)
        if config.strategy.name is StrategyKind.SCAFFOLD:
            _check_scaffold_model(
                model, config.he.enabled, f"{CONFIG_FILE}: initial_model: {APP_DIR}/{config.initial_model}"
            )
    except ConfigError as exc:
        raise JobError(f"job folder {folder}: {exc}") from exc
    return meta, config


def check_job(meta: JobMeta, config: AppConfig) -> None:
    """Check what meta.yml and app/config.yml decide together; ConfigError naming the file and key."""
    if config.strategy.name is StrategyKind.SCAFFOLD and not meta.sites:
        raise ConfigError(
            f"{META_FILE}: sites: scaffold needs the job's sites listed: their number N scales the update of the "
            "global control variate (c <- c + sum(delta_c_i) / N)"
        )


def parse_meta(raw: Any) -> JobMeta:
    """Build and validate a JobMeta from parsed YAML or JSON; raises ConfigError prefixed 'meta.yml: '."""
    try:
        meta = _schema.build(JobMeta, raw, "")
        check_meta(meta)
    except ConfigError as exc:
        raise ConfigError(f"{META_FILE}: {exc}") from exc
    return meta


def check_meta(meta: JobMeta) -> None:
    """Check the bounds and names of meta; raises ConfigError naming the key."""
    if meta.format != FORMAT:
        raise ConfigError(f"format: {meta.format!r} is not supported (this fedsec reads {FORMAT})")
    if len(meta.name) > limits.MAX_JOB_NAME:
        raise ConfigError(f"name: longer than {limits.MAX_JOB_NAME} characters")
    _fs.check_name("job", meta.name)
    if len(meta.sites) > limits.MAX_PARTICIPANTS:
        raise ConfigError(f"sites: more than {limits.MAX_PARTICIPANTS}")
    seen: dict[str, int] = {}
    for i, site in enumerate(meta.sites):
        _fs.check_name(f"sites[{i}]", site)
        key = site.lower()  # site names are file names: case-only differences clash too
        if key in seen:
            raise ConfigError(f"sites[{i}]: {site!r} is a duplicate of sites[{seen[key]}]")
        seen[key] = i
    if meta.min_clients < 1:
        raise ConfigError(f"min_clients: must be at least 1, got {meta.min_clients}")
    if meta.min_clients > limits.MAX_PARTICIPANTS:
        raise ConfigError(f"min_clients: more than {limits.MAX_PARTICIPANTS}")
    if meta.sites and meta.min_clients > len(meta.sites):
        raise ConfigError(f"min_clients: {meta.min_clients} is more than the {len(meta.sites)} sites listed")
    if len(meta_to_json(meta).encode()) > limits.MAX_META_JSON_BYTES:
        raise ConfigError(f"larger than {limits.MAX_META_JSON_BYTES} bytes as JSON")


def parse_app_config(raw: Any) -> AppConfig:
    """Build and validate an AppConfig (not the files it names); raises ConfigError prefixed 'app/config.yml: '."""
    try:
        _refuse_mlflow_uri(raw)
        if isinstance(raw, dict) and isinstance(raw.get("strategy"), str):  # `strategy: fedavg`: the name alone
            raw = {**raw, "strategy": {"name": raw["strategy"]}}
        config = _schema.build(AppConfig, raw, "")
        check_workflow(config.workflow)
        check_script(config.script)
        check_relative_path("initial_model", config.initial_model)
        check_he(config.he)
        check_tracking(config.tracking)
        check_strategy(config.strategy)
        if config.he.enabled and config.strategy.name is StrategyKind.FEDOPT:
            check_fedopt_he(config.strategy, config.he)
        if config.he.enabled and not config.workflow.evaluate_final:
            raise ConfigError("he.enabled: needs workflow.evaluate_final (that task brings the sites the final model)")
    except ConfigError as exc:
        raise ConfigError(f"{CONFIG_FILE}: {exc}") from exc
    return config


def check_workflow(workflow: WorkflowConfig) -> None:
    """Check the bounds of a workflow section; raises ConfigError naming the key."""
    if not 1 <= workflow.num_rounds <= limits.MAX_ROUNDS:
        raise ConfigError(f"workflow.num_rounds: must be between 1 and {limits.MAX_ROUNDS}, got {workflow.num_rounds}")
    if not 0.0 < workflow.sample_fraction <= 1.0:  # also refuses NaN
        raise ConfigError(f"workflow.sample_fraction: must be in (0, 1], got {workflow.sample_fraction}")
    if workflow.sample_seed is not None and not 0 <= workflow.sample_seed < 2**63:
        raise ConfigError(f"workflow.sample_seed: must be in [0, 2**63), got {workflow.sample_seed}")
    for key in ("round_timeout", "start_timeout", "ready_timeout"):
        value = getattr(workflow, key)
        if not (math.isfinite(value) and 0.0 < value <= MAX_TIMEOUT):
            raise ConfigError(f"workflow.{key}: must be more than 0 and at most {MAX_TIMEOUT:.0f} seconds, got {value}")
    if not 0 <= workflow.max_site_restarts <= limits.MAX_SITE_RESTARTS:
        raise ConfigError(
            f"workflow.max_site_restarts: must be between 0 and {limits.MAX_SITE_RESTARTS}, "
            f"got {workflow.max_site_restarts}"
        )


def check_strategy(strategy: StrategyConfig) -> None:
    """Check a strategy section: the settings its strategy takes and their bounds; ConfigError naming the key."""
    name = strategy.name.value
    given = {f.name for f in dataclasses.fields(strategy) if f.name != "name" and getattr(strategy, f.name) is not None}
    allowed: set[str] = set()
    if strategy.name is StrategyKind.FEDPROX:
        allowed = {"mu"}
        if strategy.mu is None:
            raise ConfigError("strategy.mu: fedprox needs mu, the weight of its proximal term (e.g. 0.01)")
    elif strategy.name is StrategyKind.SCAFFOLD:
        allowed = set(SCAFFOLD_DEFAULTS)
    elif strategy.name is StrategyKind.FEDOPT:
        if strategy.optimizer is None:
            raise ConfigError("strategy.optimizer: fedopt needs an optimizer: adam, yogi, adagrad or avgm")
        allowed = {"optimizer", *FEDOPT_DEFAULTS[strategy.optimizer]}
        name = f"fedopt with optimizer {strategy.optimizer.value}"
    for key in sorted(given - allowed):
        raise ConfigError(f"strategy.{key}: not a setting of {name}")
    bounds = {  # key -> (low, high, low included, high included)
        "mu": (0.0, 1e6, True, True),
        "server_lr": (0.0, 1e6, False, True),
        "beta1": (0.0, 1.0, True, False),
        "beta2": (0.0, 1.0, True, False),
        "tau": (0.0, 1.0, False, True),
        "momentum": (0.0, 1.0, True, False),
    }
    for key in sorted(given & set(bounds)):
        value = getattr(strategy, key)
        low, high, low_in, high_in = bounds[key]
        above = value >= low if low_in else value > low
        below = value <= high if high_in else value < high
        if not (math.isfinite(value) and above and below):
            span = f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
            raise ConfigError(f"strategy.{key}: must be in {span}, got {value}")


def _refuse_mlflow_uri(raw: Any) -> None:
    """The tracking.mlflow_uri of older jobs, refused with what to write instead."""
    tracking = raw.get("tracking") if isinstance(raw, dict) else None
    if isinstance(tracking, dict) and "mlflow_uri" in tracking:
        raise ConfigError(
            "tracking.mlflow_uri: a job no longer says where its tracking data goes; name one of the server's "
            f"tracking backends instead (tracking: {{backend: {LOCAL}}} for its embedded store, or a name its "
            "operator lists)"
        )


def check_fedopt_he(strategy: StrategyConfig, he: HEConfig) -> None:
    """Refuse a fedopt strategy that the HE fixed point cannot carry; ConfigError naming the key.

    Under HE the sites step the optimizer (fedsec.fedopt) on the decrypted average of their weight
    differences, quantised in steps of 2**-f (f from he.clip and he.max_clients, fedsec.he.params);
    the optimizer's state and the global model are encrypted exactly (fedsec.he.sealed), so only the
    pseudo-gradient meets the fixed point. The adaptive optimizers divide by sqrt(v) + tau: with tau
    below one step they would turn quantisation noise on a still weight into a whole server_lr step.
    avgm divides by nothing and takes any step.
    """
    if strategy.optimizer is None or strategy.optimizer is ServerOptimizer.AVGM:
        return
    try:
        resolution = 2.0 ** -he_params.scale_bits(he.clip, he.max_clients)
    except HEError as exc:
        raise ConfigError(f"he.clip: {exc}") from exc
    tau = float(strategy.settings()["tau"])
    if tau < resolution:
        raise ConfigError(
            f"strategy.tau: {tau:g} is below the HE fixed-point step {resolution:.3g} of the aggregate "
            f"(he.clip {he.clip:g}, he.max_clients {he.max_clients}): {strategy.optimizer.value} would step on "
            "quantisation noise; raise tau, or lower he.clip or he.max_clients for a finer step"
        )


def check_tracking(tracking: TrackingConfig) -> None:
    """Check the shape of a tracking section's backend name; raises ConfigError naming the key."""
    try:
        check_backend_name(tracking.backend)
    except ConfigError as exc:
        raise ConfigError(f"tracking.backend: {exc}") from exc


def check_he(he: HEConfig) -> None:
    """Check the bounds of an he section; raises ConfigError naming the key."""
    if not (math.isfinite(he.clip) and 0.0 < he.clip <= 1e6):
        raise ConfigError(f"he.clip: must be more than 0 and at most 1e6, got {he.clip}")
    if not 1 <= he.max_clients <= 16:
        raise ConfigError(f"he.max_clients: must be between 1 and 16, got {he.max_clients}")
    if not 1 <= he.max_examples <= 10**12:
        raise ConfigError(f"he.max_examples: must be between 1 and 10**12, got {he.max_examples}")


def check_script(script: ScriptConfig) -> None:
    """Check a script section's path shape and arguments; raises ConfigError naming the key."""
    check_relative_path("script.path", script.path)
    for i, arg in enumerate(script.args):
        if "\0" in arg:
            raise ConfigError(f"script.args[{i}]: contains a NUL character")


def check_relative_path(where: str, path: str) -> None:
    """Refuse an empty, absolute, backslashed or '..'-climbing path; raises ConfigError."""
    if not path:
        raise ConfigError(f"{where}: must not be empty")
    if "\\" in path or "\0" in path:
        raise ConfigError(f"{where}: {path!r} must use '/' as separator and no NUL")
    pure = PurePosixPath(path)
    if pure.is_absolute():
        raise ConfigError(f"{where}: {path!r} must be relative, not absolute")
    if any(part == ".." for part in pure.parts):
        raise ConfigError(f"{where}: {path!r} must not contain '..'")


def meta_to_json(meta: JobMeta) -> str:
    """meta as compact JSON with sorted keys, for the job store and the wire."""
    return json.dumps(to_plain(meta), sort_keys=True, separators=(",", ":"))


def to_yaml(value: JobMeta | AppConfig) -> bytes:
    """meta.yml or app/config.yml text for a JobMeta or an AppConfig, in field order."""
    return yaml.safe_dump(to_plain(value), sort_keys=False).encode()


def to_plain(value: Any) -> Any:
    """Dataclasses -> dicts (a field that is None left out), tuples -> lists, enums -> their values.

    The inverse of _schema.build.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = ((f.name, getattr(value, f.name)) for f in dataclasses.fields(value))
        return {name: to_plain(v) for name, v in fields if v is not None}
    if isinstance(value, tuple | list):
        return [to_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _read_yaml(folder: Path, rel: str) -> Any:
    path = _check_inside(folder, rel, rel)
    return _schema.parse_yaml(_fs.read_bounded(path, limits.MAX_CONFIG_FILE_BYTES, rel), rel)


def _check_inside(folder: Path, rel: str, where: str) -> Path:
    """folder/rel, which must be a regular file that resolves to inside folder."""
    path = folder / rel
    try:
        inside = path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise ConfigError(f"{where}: {rel} cannot be resolved: {exc}") from exc
    if not inside:
        raise ConfigError(f"{where}: {rel} points outside the job folder")
    if not path.is_file():
        raise ConfigError(f"{where}: {rel} is missing or not a regular file")
    return path


def _check_scaffold_model(path: Path, encrypted: bool, where: str) -> None:
    """The initial model must carry scaffold's control variates within the limits (fedsec.jobs.control)."""
    from fedsec.jobs import control  # numpy: only when a scaffold job is checked
    from fedsec.wire import arrays

    try:
        control.check_model(arrays.read_specs(path, where), encrypted, where)
    except WireError as exc:
        raise ConfigError(str(exc)) from exc


def _check_model(path: Path, where: str) -> None:
    """The initial model's header must be a valid array container (its data is read later)."""
    try:
        from fedsec.wire import arrays  # numpy: only when a job is checked, not at import

        arrays.read_specs(path, where)
    except WireError as exc:
        raise ConfigError(str(exc)) from exc
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror or exc}") from exc
