from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from fedsec import limits
from fedsec.errors import JobError
from fedsec.jobs import load_job_folder
from fedsec.jobs.meta import FORMAT, JobMeta, ServerOptimizer, StrategyKind, WorkflowKind, meta_to_json, parse_meta
from fedsec.wire import arrays

META: dict[str, Any] = {"format": FORMAT, "name": "demo", "sites": [], "min_clients": 2}
CONFIG: dict[str, Any] = {
    "workflow": {
        "kind": "fedavg",
        "num_rounds": 3,
        "sample_fraction": 1.0,
        "round_timeout": 600.0,
        "start_timeout": 120.0,
        "evaluate_final": True,
    },
    "script": {"path": "client.py", "args": ["--epochs", "2"]},
    "initial_model": "initial_model.fsa",
}
DELETE = object()


def changed(doc: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of doc with the dotted key set to value (or removed, for DELETE)."""
    out = copy.deepcopy(doc)
    *parents, last = key.split(".")
    node = out
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return out


def write_job(root: Path, meta: dict[str, Any] = META, config: dict[str, Any] = CONFIG) -> Path:
    (root / "app/custom").mkdir(parents=True)
    (root / "meta.yml").write_text(yaml.safe_dump(meta))
    (root / "app/config.yml").write_text(yaml.safe_dump(config))
    (root / "app/custom/client.py").write_text("print('train')\n")
    arrays.write_file(root / "app/initial_model.fsa", {"w": np.zeros((2, 3), np.float32)})
    return root


def test_valid_folder_loads(tmp_path: Path) -> None:
    meta, app = load_job_folder(write_job(tmp_path / "job"))
    assert meta == JobMeta(format=FORMAT, name="demo", sites=(), min_clients=2)
    assert app.workflow.kind is WorkflowKind.FEDAVG
    assert app.workflow.num_rounds == 3
    assert app.workflow.evaluate_final is True
    assert app.script.path == "client.py"
    assert app.script.args == ("--epochs", "2")
    assert app.initial_model == "initial_model.fsa"


def test_defaults_and_sites(tmp_path: Path) -> None:
    meta_doc = {"format": FORMAT, "name": "demo", "sites": ["site-1", "site-2"], "min_clients": 2}
    config_doc = {
        "workflow": {"kind": "fedavg", "num_rounds": 1},
        "script": {"path": "client.py"},
        "initial_model": "initial_model.fsa",
    }
    meta, app = load_job_folder(write_job(tmp_path / "job", meta_doc, config_doc))
    assert meta.sites == ("site-1", "site-2")
    assert app.workflow.sample_fraction == 1.0
    assert app.workflow.round_timeout == 600.0
    assert app.workflow.start_timeout == 120.0
    assert app.script.args == ()


def test_script_in_a_subfolder(tmp_path: Path) -> None:
    root = write_job(tmp_path / "job", config=changed(CONFIG, "script.path", "pkg/train.py"))
    (root / "app/custom/pkg").mkdir()
    (root / "app/custom/pkg/train.py").write_text("")
    assert load_job_folder(root)[1].script.path == "pkg/train.py"


@pytest.mark.parametrize(
    ("meta", "fragment"),
    [
        (changed(META, "colour", "red"), "meta.yml: colour: unknown key"),
        (changed(META, "format", "fedsec-job/2"), "meta.yml: format: 'fedsec-job/2' is not supported"),
        (changed(META, "name", DELETE), "meta.yml: name: required key is missing"),
        (changed(META, "name", "../evil"), "meta.yml: job name '../evil' is not safe"),
        (changed(META, "name", "a" * (limits.MAX_JOB_NAME + 1)), "meta.yml: name: longer than"),
        (changed(META, "min_clients", 0), "meta.yml: min_clients: must be at least 1"),
        (changed(META, "min_clients", "2"), "meta.yml: min_clients: expected an integer"),
        (changed(META, "sites", ["site-1"]), "meta.yml: min_clients: 2 is more than the 1 sites listed"),
        (changed(META, "sites", ["site 1", "site-2"]), "meta.yml: sites[0] name 'site 1' is not safe"),
        (changed(META, "sites", ["../site", "site-2"]), "meta.yml: sites[0] name '../site' is not safe"),
        (changed(META, "sites", ["site-1", "SITE-1"]), "meta.yml: sites[1]: 'SITE-1' is a duplicate of sites[0]"),
        (changed(META, "sites", "site-1"), "meta.yml: sites: expected a list"),
        ([1, 2], "meta.yml: document: expected a mapping"),
    ],
)
def test_bad_meta(tmp_path: Path, meta: Any, fragment: str) -> None:
    root = write_job(tmp_path / "job", meta=meta)
    with pytest.raises(JobError) as info:
        load_job_folder(root)
    assert str(info.value).startswith(f"job folder {root}: ")
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("extra", 1, "app/config.yml: extra: unknown key"),
        ("workflow.aggregator", "x", "app/config.yml: workflow.aggregator: unknown key"),
        ("workflow.kind", "fedprox", "app/config.yml: workflow.kind: 'fedprox' is not one of fedavg"),
        ("workflow.kind", "fedsec.workflow.FedAvg", "workflow.kind: 'fedsec.workflow.FedAvg' is not one of"),
        ("workflow.num_rounds", 0, "workflow.num_rounds: must be between 1 and"),
        ("workflow.num_rounds", limits.MAX_ROUNDS + 1, "workflow.num_rounds: must be between 1 and"),
        ("workflow.num_rounds", 2.5, "workflow.num_rounds: expected an integer"),
        ("workflow.num_rounds", DELETE, "workflow.num_rounds: required key is missing"),
        ("workflow.sample_fraction", 0, "workflow.sample_fraction: must be in (0, 1]"),
        ("workflow.sample_fraction", 1.5, "workflow.sample_fraction: must be in (0, 1]"),
        ("workflow.sample_fraction", math.nan, "workflow.sample_fraction: must be in (0, 1]"),
        ("workflow.sample_seed", -1, "workflow.sample_seed: must be in [0, 2**63), got -1"),
        ("workflow.sample_seed", 2**63, "workflow.sample_seed: must be in [0, 2**63)"),
        ("workflow.round_timeout", 0, "workflow.round_timeout: must be more than 0"),
        ("workflow.start_timeout", math.inf, "workflow.start_timeout: must be more than 0"),
        ("workflow.evaluate_final", "yes", "workflow.evaluate_final: expected true or false"),
        ("script.path", "../x.py", "script.path: '../x.py' must not contain '..'"),
        ("script.path", "sub/../../x.py", "must not contain '..'"),
        ("script.path", "/etc/passwd", "script.path: '/etc/passwd' must be relative"),
        ("script.path", "sub\\x.py", "script.path: 'sub\\\\x.py' must use '/'"),
        ("script.path", "", "script.path: must not be empty"),
        ("script.path", "missing.py", "script.path: app/custom/missing.py is missing"),
        ("script.path", ".", "script.path: app/custom/. is missing or not a regular file"),
        ("script.args", [1], "script.args[0]: expected a string"),
        ("script.args", ["a\0b"], "script.args[0]: contains a NUL"),
        ("initial_model", "nope.fsa", "initial_model: app/nope.fsa is missing"),
        ("initial_model", "../meta.yml", "initial_model: '../meta.yml' must not contain '..'"),
        ("initial_model", "config.yml", "initial_model: app/config.yml"),  # not an array container
        ("initial_model", DELETE, "initial_model: required key is missing"),
    ],
)
def test_bad_config(tmp_path: Path, key: str, value: Any, fragment: str) -> None:
    root = write_job(tmp_path / "job", config=changed(CONFIG, key, value))
    with pytest.raises(JobError) as info:
        load_job_folder(root)
    assert str(info.value).startswith(f"job folder {root}: app/config.yml: ")
    assert fragment in str(info.value)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="not a folder"):
        load_job_folder(tmp_path / "nope")
    root = write_job(tmp_path / "job")
    (root / "meta.yml").unlink()
    with pytest.raises(JobError, match="meta.yml: meta.yml is missing"):
        load_job_folder(root)
    root = write_job(tmp_path / "job2")
    (root / "app/config.yml").unlink()
    with pytest.raises(JobError, match="app/config.yml is missing"):
        load_job_folder(root)


def test_invalid_and_oversized_yaml(tmp_path: Path) -> None:
    root = write_job(tmp_path / "job")
    (root / "meta.yml").write_text("name: [unclosed\n")
    with pytest.raises(JobError, match="meta.yml: invalid YAML at line"):
        load_job_folder(root)
    (root / "meta.yml").write_bytes(b"#" * (limits.MAX_CONFIG_FILE_BYTES + 1))
    with pytest.raises(JobError, match="meta.yml: larger than the limit"):
        load_job_folder(root)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (b"name: " + b"[" * 100_000, "meta.yml: nested deeper than"),
        (b"format: fedsec-job/1\nname: x\nmin_clients: " + b"1" * 200_000, "meta.yml: a number of more than"),
    ],
)
def test_meta_that_would_crash_the_parser_is_refused(tmp_path: Path, text: bytes, fragment: str) -> None:
    root = write_job(tmp_path / "job")
    (root / "meta.yml").write_bytes(text)
    with pytest.raises(JobError, match=fragment):
        load_job_folder(root)


def test_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.py"
    outside.write_text("print('not in the job')\n")
    root = write_job(tmp_path / "job")
    (root / "app/custom/client.py").unlink()
    (root / "app/custom/client.py").symlink_to(outside)
    with pytest.raises(JobError, match="script.path: app/custom/client.py points outside the job folder"):
        load_job_folder(root)


def test_meta_to_json_roundtrips() -> None:
    meta = parse_meta(changed(META, "sites", ["site-2", "site-1"]))
    text = meta_to_json(meta)
    assert json.loads(text) == {"format": FORMAT, "name": "demo", "sites": ["site-2", "site-1"], "min_clients": 2}
    assert parse_meta(json.loads(text)) == meta
    assert text == meta_to_json(parse_meta(json.loads(text)))


@pytest.mark.parametrize(
    ("strategy", "fragment"),
    [
        ("fedsgd", "strategy.name: 'fedsgd' is not one of fedavg, fedprox, fedopt"),
        ({"name": "fedsec.workflow.FedOpt"}, "strategy.name: 'fedsec.workflow.FedOpt' is not one of"),
        ({"name": "fedavg", "mu": 0.1}, "strategy.mu: not a setting of fedavg"),
        ({"name": "fedavg", "extra": 1}, "strategy.extra: unknown key"),
        ({"name": "fedprox"}, "strategy.mu: fedprox needs mu"),
        ({"name": "fedprox", "mu": -0.5}, "strategy.mu: must be in [0, 1e+06], got -0.5"),
        ({"name": "fedprox", "mu": math.nan}, "strategy.mu: must be in [0, 1e+06]"),
        ({"name": "fedprox", "mu": "high"}, "strategy.mu: expected a number"),
        ({"name": "fedprox", "mu": 0.1, "server_lr": 1.0}, "strategy.server_lr: not a setting of fedprox"),
        ({"name": "fedopt"}, "strategy.optimizer: fedopt needs an optimizer: adam, yogi, adagrad or avgm"),
        ({"name": "fedopt", "optimizer": "sgd"}, "strategy.optimizer: 'sgd' is not one of adam, yogi, adagrad, avgm"),
        (
            {"name": "fedopt", "optimizer": "adam", "momentum": 0.9},
            "strategy.momentum: not a setting of fedopt with optimizer adam",
        ),
        (
            {"name": "fedopt", "optimizer": "avgm", "beta2": 0.9},
            "strategy.beta2: not a setting of fedopt with optimizer avgm",
        ),
        (
            {"name": "fedopt", "optimizer": "adagrad", "beta2": 0.9},
            "strategy.beta2: not a setting of fedopt with optimizer adagrad",
        ),
        ({"name": "fedopt", "optimizer": "adam", "mu": 0.1}, "strategy.mu: not a setting of fedopt"),
        ({"name": "fedopt", "optimizer": "adam", "server_lr": 0}, "strategy.server_lr: must be in (0, 1e+06]"),
        ({"name": "fedopt", "optimizer": "adam", "beta1": 1.0}, "strategy.beta1: must be in [0, 1)"),
        ({"name": "fedopt", "optimizer": "yogi", "beta2": -0.1}, "strategy.beta2: must be in [0, 1)"),
        ({"name": "fedopt", "optimizer": "adam", "tau": 0.0}, "strategy.tau: must be in (0, 1]"),
        ({"name": "fedopt", "optimizer": "avgm", "momentum": math.inf}, "strategy.momentum: must be in [0, 1)"),
        ({"name": "scaffold", "mu": 0.1}, "strategy.mu: not a setting of scaffold"),
        ({"name": "scaffold", "optimizer": "adam"}, "strategy.optimizer: not a setting of scaffold"),
        ({"name": "scaffold", "server_lr": 0.0}, "strategy.server_lr: must be in (0, 1e+06], got 0.0"),
        ({"name": "scaffold", "server_lr": math.nan}, "strategy.server_lr: must be in (0, 1e+06]"),
    ],
)
def test_bad_strategy(tmp_path: Path, strategy: Any, fragment: str) -> None:
    root = write_job(tmp_path / "job", config={**CONFIG, "strategy": strategy})
    with pytest.raises(JobError) as info:
        load_job_folder(root)
    assert str(info.value).startswith(f"job folder {root}: app/config.yml: ")
    assert fragment in str(info.value)


def test_fedopt_with_he_loads_when_tau_is_above_the_fixed_point_step(tmp_path: Path) -> None:
    # he.clip 4 and max_clients 16 give f = 34: a step of 2**-34 = 5.8e-11, far below the default tau 1e-3
    config = {**CONFIG, "strategy": {"name": "fedopt", "optimizer": "adam"}, "he": {"enabled": True}}
    _, app = load_job_folder(write_job(tmp_path / "job", config=config))
    assert app.he.enabled and app.strategy.optimizer is ServerOptimizer.ADAM


@pytest.mark.parametrize(
    ("strategy", "he", "fragment"),
    [
        # f = 34 (clip 4, 16 sites): 1e-11 < 2**-34 = 5.82e-11
        ({"optimizer": "adam", "tau": 1e-11}, {}, "strategy.tau: 1e-11 is below the HE fixed-point step 5.82e-11"),
        # clip 1e6 (the largest) with 16 sites leaves f = 17: 2**-17 = 7.63e-6
        (
            {"optimizer": "yogi", "tau": 1e-6},
            {"clip": 1e6},
            "strategy.tau: 1e-06 is below the HE fixed-point step 7.63e-06",
        ),
        # clip 1 with 2 sites: f = 39, a step of 1.82e-12
        (
            {"optimizer": "adagrad", "tau": 1e-12},
            {"clip": 1.0, "max_clients": 2},
            "1e-12 is below the HE fixed-point step 1.82e-12",
        ),
    ],
)
def test_fedopt_with_he_refuses_a_tau_below_the_fixed_point_step(
    tmp_path: Path, strategy: dict[str, Any], he: dict[str, Any], fragment: str
) -> None:
    config = {**CONFIG, "strategy": {"name": "fedopt", **strategy}, "he": {"enabled": True, **he}}
    with pytest.raises(JobError, match=re.escape(fragment)):
        load_job_folder(write_job(tmp_path / "job", config=config))


SCAFFOLD_META = {**META, "sites": ["site-1", "site-2", "site-3"]}


def test_scaffold_needs_the_sites_listed(tmp_path: Path) -> None:
    root = write_job(tmp_path / "job", config={**CONFIG, "strategy": "scaffold"})
    with pytest.raises(JobError, match="meta.yml: sites: scaffold needs the job's sites listed: their number N"):
        load_job_folder(root)
    _, app = load_job_folder(write_job(tmp_path / "listed", SCAFFOLD_META, {**CONFIG, "strategy": "scaffold"}))
    assert app.strategy.name is StrategyKind.SCAFFOLD
    assert app.strategy.task_meta() == {"name": "scaffold", "server_lr": 1.0}


@pytest.mark.parametrize(
    ("model", "he", "fragment"),
    [
        ({"scaffold/w": np.zeros(2, np.float32)}, False, "tensor 'scaffold/w': names starting scaffold/"),
        ({"n": np.zeros(2, np.int64)}, False, "scaffold needs a model with floating-point tensors"),
        ({"w" * 250: np.zeros(2, np.float32)}, False, "is longer than 256 characters"),
        ({"w": np.zeros(1, np.float32)}, True, None),
        ({f"t{i}": np.zeros(1, np.float32) for i in range(4000)}, True, "12000 tensors, over the limit of 10000"),
    ],
)
def test_scaffold_refuses_a_model_whose_control_variates_go_over_a_limit(
    tmp_path: Path, model: dict[str, Any], he: bool, fragment: str | None
) -> None:
    root = write_job(tmp_path / "job", SCAFFOLD_META, {**CONFIG, "strategy": "scaffold", "he": {"enabled": he}})
    arrays.write_file(root / "app/initial_model.fsa", model)
    if fragment is None:
        load_job_folder(root)
        return
    with pytest.raises(JobError) as info:
        load_job_folder(root)
    assert fragment in str(info.value)
    assert "app/config.yml: initial_model: app/initial_model.fsa" in str(info.value)


def test_fedopt_avgm_with_he_takes_any_fixed_point_step(tmp_path: Path) -> None:
    config = {**CONFIG, "strategy": {"name": "fedopt", "optimizer": "avgm"}, "he": {"enabled": True, "clip": 1000.0}}
    _, app = load_job_folder(write_job(tmp_path / "job", config=config))
    assert app.strategy.optimizer is ServerOptimizer.AVGM


@pytest.mark.parametrize(
    ("strategy", "kind", "settings"),
    [
        (DELETE, StrategyKind.FEDAVG, {}),
        ("fedavg", StrategyKind.FEDAVG, {}),
        ({"name": "fedprox", "mu": 0}, StrategyKind.FEDPROX, {"mu": 0.0}),
        (
            {"name": "fedopt", "optimizer": "adam", "beta1": 0.5},
            StrategyKind.FEDOPT,
            {"optimizer": "adam", "server_lr": 0.1, "beta1": 0.5, "beta2": 0.99, "tau": 0.001},
        ),
        (
            {"name": "fedopt", "optimizer": "avgm"},
            StrategyKind.FEDOPT,
            {"optimizer": "avgm", "server_lr": 1.0, "momentum": 0.9},
        ),
    ],
)
def test_strategy_and_its_effective_settings(
    tmp_path: Path, strategy: Any, kind: StrategyKind, settings: dict[str, Any]
) -> None:
    config = CONFIG if strategy is DELETE else {**CONFIG, "strategy": strategy}
    _, app = load_job_folder(write_job(tmp_path / "job", config=config))
    assert app.strategy.name is kind
    assert app.strategy.settings() == settings
