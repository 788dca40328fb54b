from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from fedsec import limits
from fedsec.errors import JobError
from fedsec.jobs import FedAvgRecipe, FedOptRecipe, FedProxRecipe, ScaffoldRecipe, load_job_folder, pack, unpack
from fedsec.jobs.meta import WorkflowKind
from fedsec.wire import arrays

WEIGHTS: dict[str, NDArray[Any]] = {
    "conv.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
    "conv.bias": np.zeros(3, np.float64),
}


class FakeTensor:
    """Quacks like a torch tensor as far as the recipe cares."""

    def __init__(self, array: NDArray[Any]) -> None:
        self.array = array

    def detach(self) -> FakeTensor:
        return self

    def cpu(self) -> FakeTensor:
        return self

    def numpy(self) -> NDArray[Any]:
        return self.array


class FakeModel:
    def __init__(self, weights: dict[str, NDArray[Any]]) -> None:
        self.weights = weights

    def state_dict(self) -> dict[str, Any]:
        return {name: FakeTensor(value) for name, value in self.weights.items()}


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "train.py"
    path.parent.mkdir()
    path.write_text("print('train')\n")
    return path


def test_export_from_arrays(tmp_path: Path, script: Path) -> None:
    helper = script.parent / "helper.py"
    helper.write_text("X = 1\n")
    package = script.parent / "pkg"
    (package / "__pycache__").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__pycache__/x.cpython-311.pyc").write_bytes(b"\0")
    recipe = FedAvgRecipe(
        "demo",
        WEIGHTS,
        script,
        num_rounds=4,
        min_clients=2,
        script_args=["--epochs", "3"],
        custom_files=[helper, str(package)],
        sites=["site-1", "site-2", "site-3"],
        sample_fraction=0.5,
        round_timeout=30.0,
        start_timeout=10.0,
        evaluate_final=False,
    )
    folder = recipe.export(tmp_path / "out" / "demo_job")
    assert folder == tmp_path / "out" / "demo_job"
    assert os.listdir(tmp_path / "out") == ["demo_job"]  # no staging folder left

    meta, app = load_job_folder(folder)
    assert (meta.name, meta.min_clients, meta.sites) == ("demo", 2, ("site-1", "site-2", "site-3"))
    assert app.workflow.kind is WorkflowKind.FEDAVG
    assert (app.workflow.num_rounds, app.workflow.sample_fraction) == (4, 0.5)
    assert (app.workflow.round_timeout, app.workflow.start_timeout, app.workflow.evaluate_final) == (30.0, 10.0, False)
    assert (app.script.path, app.script.args) == ("train.py", ("--epochs", "3"))
    custom = folder / "app/custom"
    assert sorted(p.relative_to(custom).as_posix() for p in custom.rglob("*")) == [
        "helper.py",
        "pkg",
        "pkg/__init__.py",
        "train.py",
    ]
    assert (custom / "train.py").read_bytes() == script.read_bytes()

    model = arrays.read_file(folder / "app" / app.initial_model)
    assert list(model) == list(WEIGHTS)
    for name, value in WEIGHTS.items():
        assert model[name].dtype == value.dtype
        np.testing.assert_array_equal(model[name], value)


def test_export_from_a_model_with_state_dict(tmp_path: Path, script: Path) -> None:
    weights = {name: value.copy() for name, value in WEIGHTS.items()}
    recipe = FedAvgRecipe("demo", FakeModel(weights), script, 1, 1)
    weights["conv.weight"] += 100  # training after the recipe was made does not change it
    model = arrays.read_file(recipe.export(tmp_path / "job") / "app/initial_model.fsa")
    np.testing.assert_array_equal(model["conv.weight"], WEIGHTS["conv.weight"])


def test_exported_job_survives_pack_and_unpack(tmp_path: Path, script: Path) -> None:
    folder = FedAvgRecipe("demo", WEIGHTS, script, 2, 1).export(tmp_path / "job")
    unpack(pack(folder), tmp_path / "copy")
    assert load_job_folder(tmp_path / "copy") == load_job_folder(folder)


def test_export_refuses_an_existing_folder(tmp_path: Path, script: Path) -> None:
    recipe = FedAvgRecipe("demo", WEIGHTS, script, 2, 1)
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "keep").write_text("mine")
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(JobError, match="exists already"):
        recipe.export(tmp_path / "job")
    assert os.listdir(tmp_path / "job") == ["keep"]
    assert sorted(os.listdir(tmp_path)) == before


def test_export_leaves_nothing_when_a_file_vanishes(tmp_path: Path, script: Path) -> None:
    helper = tmp_path / "helper.py"
    helper.write_text("")
    recipe = FedAvgRecipe("demo", WEIGHTS, script, 2, 1, custom_files=[helper])
    helper.unlink()
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(JobError, match="cannot copy"):
        recipe.export(tmp_path / "job")
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"num_rounds": 0}, "workflow.num_rounds: must be between 1 and"),
        ({"num_rounds": limits.MAX_ROUNDS + 1}, "workflow.num_rounds: must be between 1 and"),
        ({"num_rounds": True}, "workflow.num_rounds: expected an integer"),
        ({"min_clients": 0}, "min_clients: must be at least 1"),
        ({"min_clients": 3, "sites": ["site-1", "site-2"]}, "min_clients: 3 is more than the 2 sites listed"),
        ({"name": "bad name"}, "job name 'bad name' is not safe"),
        ({"name": "../up"}, "job name '../up' is not safe"),
        ({"sites": "site-1"}, "sites: give a list, not a single string"),
        ({"sites": ["site-1", "site-1"]}, "sites[1]: 'site-1' is a duplicate"),
        ({"script_args": "--epochs 3"}, "script_args: give a list"),
        ({"script_args": [3]}, "script.args[0]: expected a string"),
        ({"sample_fraction": 0.0}, "workflow.sample_fraction: must be in (0, 1]"),
        ({"round_timeout": -1.0}, "workflow.round_timeout: must be more than 0"),
        ({"train_script": "/nonexistent/train.py"}, "train_script /nonexistent/train.py is missing"),
        ({"custom_files": ["/nonexistent/model.py"]}, "custom_files: /nonexistent/model.py is missing"),
        ({"model": {}}, "model: the model has no tensors"),
        ({"model": {"w": np.array(["a"], dtype=object)}}, "tensor 'w' has dtype 'object'"),
        ({"model": {"w": np.zeros(2, np.complex64)}}, "tensor 'w' has dtype 'complex64'"),
        ({"model": {1: np.zeros(2)}}, "tensor names must be strings"),
        ({"model": object()}, "expected a model with state_dict() or a mapping of arrays"),
    ],
)
def test_bad_arguments(script: Path, changes: dict[str, Any], fragment: str) -> None:
    args: dict[str, Any] = {"name": "demo", "model": WEIGHTS, "train_script": script, "num_rounds": 2, "min_clients": 1}
    args.update(changes)
    with pytest.raises(JobError) as info:
        FedAvgRecipe(**args)
    assert str(info.value).startswith(f"FedAvgRecipe {args['name']!r}: ")
    assert fragment in str(info.value)


def test_custom_file_names_must_not_clash(tmp_path: Path, script: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "train.py").write_text("")
    with pytest.raises(JobError, match="custom_files: .*train.py has the same name as train_script"):
        FedAvgRecipe("demo", WEIGHTS, script, 2, 1, custom_files=[other / "train.py"])


def test_fedprox_and_fedopt_recipes_write_their_strategy_section(tmp_path: Path, script: Path) -> None:
    prox = FedProxRecipe("prox", WEIGHTS, script, 2, 1, mu=0.05, sample_fraction=0.5)
    _, app = load_job_folder(prox.export(tmp_path / "prox"))
    assert (app.strategy.name.value, app.strategy.settings(), app.workflow.sample_fraction) == (
        "fedprox",
        {"mu": 0.05},
        0.5,
    )
    opt = FedOptRecipe("opt", WEIGHTS, script, 2, 1, optimizer="yogi", server_lr=0.5)
    folder = opt.export(tmp_path / "opt")
    _, app = load_job_folder(folder)
    assert app.strategy.settings() == {"optimizer": "yogi", "server_lr": 0.5, "beta1": 0.9, "beta2": 0.99, "tau": 0.001}
    written = (folder / "app/config.yml").read_text()
    assert "strategy:\n  name: fedopt\n  optimizer: yogi\n  server_lr: 0.5\n" in written  # no null settings
    _, app = load_job_folder(FedAvgRecipe("avg", WEIGHTS, script, 2, 1).export(tmp_path / "avg"))
    assert app.strategy.name.value == "fedavg"


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (
            lambda s: FedProxRecipe("p", WEIGHTS, s, 2, 1, mu=-1.0),
            "FedProxRecipe 'p': app/config.yml: strategy.mu: must be in",
        ),
        (
            lambda s: FedOptRecipe("o", WEIGHTS, s, 2, 1, optimizer="sgd"),
            "FedOptRecipe 'o': app/config.yml: strategy.optimizer: 'sgd'",
        ),
        (
            lambda s: FedOptRecipe("o", WEIGHTS, s, 2, 1, optimizer="avgm", beta2=0.9),
            "strategy.beta2: not a setting of fedopt with optimizer avgm",
        ),
        (lambda s: ScaffoldRecipe("s", WEIGHTS, s, 2, 1), "ScaffoldRecipe 's': meta.yml: sites: scaffold needs"),
        (
            lambda s: ScaffoldRecipe("s", WEIGHTS, s, 2, 1, sites=["a", "b"], server_lr=-1.0),
            "strategy.server_lr: must be in (0, 1e+06]",
        ),
        (
            lambda s: ScaffoldRecipe("s", {"scaffold.c/w": np.zeros(2)}, s, 2, 1, sites=["a"]),
            "ScaffoldRecipe 's': model: tensor 'scaffold.c/w': names starting",
        ),
        (
            lambda s: FedOptRecipe("o", WEIGHTS, s, 2, 1, he=True, tau=1e-11),
            "strategy.tau: 1e-11 is below the HE fixed-point step",
        ),
    ],
)
def test_strategy_recipes_refuse_bad_settings(script: Path, make: Any, fragment: str) -> None:
    with pytest.raises(JobError) as info:
        make(script)
    assert fragment in str(info.value)


def test_scaffold_recipe_writes_its_strategy_and_sites(tmp_path: Path, script: Path) -> None:
    recipe = ScaffoldRecipe("scaf", WEIGHTS, script, 2, 2, sites=["site-1", "site-2"], server_lr=0.5, he=True)
    meta, app = load_job_folder(recipe.export(tmp_path / "scaf"))
    assert (app.strategy.name.value, app.strategy.settings(), meta.sites) == (
        "scaffold",
        {"server_lr": 0.5},
        ("site-1", "site-2"),
    )
    assert app.he.enabled
    _, app = load_job_folder(ScaffoldRecipe("d", WEIGHTS, script, 2, 1, sites=["a"]).export(tmp_path / "d"))
    assert app.strategy.settings() == {"server_lr": 1.0}
