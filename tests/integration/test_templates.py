"""Each `fedsec job new` template runs as written on a `fedsec poc 2` federation, and its result opens anywhere.

job.py runs the recipe with recipe.run(kit) (fedsec.api.run_recipe): submitted, followed round by round, downloaded;
the downloaded global_model.safetensors is read by safetensors alone, in a process without fedsec.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import fedsec
from tests.integration.harness import PocFolder

REPO = Path(__file__).resolve().parents[2]
SAFETENSORS_ONLY = """
import json, sys
from safetensors.numpy import load_file
model = load_file(sys.argv[1])
assert not any(m == "fedsec" or m.startswith("fedsec.") for m in sys.modules)
print(json.dumps({k: [str(v.dtype), list(v.shape), float(v.astype("float64").sum())] for k, v in model.items()}))
"""


@pytest.fixture(scope="module")
def poc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PocFolder]:
    folder = PocFolder(tmp_path_factory.mktemp("templates") / "poc")
    started = folder.run("2")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield folder
    finally:
        folder.run("stop")
        folder.kill_all()


@pytest.fixture(autouse=True)
def _logs_on_failure(request: pytest.FixtureRequest, poc: PocFolder) -> None:
    request.node._federation = poc  # conftest.py prints its logs when the test fails


def read_without_fedsec(path: Path) -> dict[str, list[object]]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", SAFETENSORS_ONLY, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=path.parent,
        env=env,
    )
    loaded: dict[str, list[object]] = json.loads(done.stdout)
    return loaded


@pytest.mark.parametrize("template", ["numpy", "pytorch", "sklearn"])
def test_template_job_runs_to_completion(poc: PocFolder, tmp_path: Path, template: str) -> None:
    if template != "numpy":
        pytest.importorskip("torch" if template == "pytorch" else "sklearn")
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedsec",
            "job",
            "new",
            f"my_{template}",
            "--template",
            template,
            "--dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    done = subprocess.run(
        [sys.executable, str(tmp_path / f"my_{template}" / "job.py"), "--startup_kit", str(poc.admin_kit)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    lines = out.splitlines()
    job_id = lines[0].removeprefix("submitted job ")
    assert [line.split(":")[0] for line in lines[1:5]] == ["round 1/3", "round 2/3", "round 3/3", "final global model"]
    assert f"job {job_id}: finished:completed" in lines
    result = poc.admin_kit / "transfer" / job_id
    assert f"result downloaded to {result}" in lines
    final_accuracy = float(lines[4].split("accuracy ")[1].split(",")[0])
    assert final_accuracy > 0.8, out  # each template learns its task in 3 rounds

    plain = result / "global_model.safetensors"
    assert plain.stat().st_mode & 0o777 == 0o600
    seen = read_without_fedsec(plain)
    model = fedsec.load_model(result)
    assert seen == {k: [str(v.dtype), list(v.shape), float(v.astype("float64").sum())] for k, v in model.items()}
    stored = fedsec.load_model(result / "global_model.fsa")  # the server's own copy: the same weights
    assert all(np.array_equal(stored[k], model[k]) for k in stored) and sorted(stored) == sorted(model)
    if template == "pytorch":
        import torch

        # by path, under a name of its own: a module cached as "model" would shadow other tests' job modules
        spec = importlib.util.spec_from_file_location("template_pytorch_model", tmp_path / "my_pytorch" / "model.py")
        assert spec is not None and spec.loader is not None
        template_model = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(template_model)
        from fedsec.client.torch_io import load_into

        net = template_model.Net()
        load_into(net, model)
        assert torch.equal(net.out.bias.detach(), torch.from_numpy(model["out.bias"]))


def test_a_recipe_runs_itself_and_returns_the_result(
    poc: PocFolder, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedsec.api import FedAvgRecipe, JobResult
    from fedsec.jobs.scaffold import new_job

    new_job(tmp_path / "direct", "numpy")
    initial = {"weight": np.zeros((20, 3), np.float32), "bias": np.zeros(3, np.float32)}
    recipe = FedAvgRecipe(
        "direct", initial, tmp_path / "direct" / "client.py", num_rounds=2, min_clients=2,
        custom_files=[tmp_path / "direct" / "model.py"],
    )  # fmt: skip
    result = recipe.run(poc.admin_kit, dest=tmp_path / "results")
    assert isinstance(result, JobResult)
    assert result.completed and result.status == "finished:completed" and result.reason == ""
    assert result.result == tmp_path / "results" / result.job_id
    assert result.model is not None
    assert {k: v.shape for k, v in result.model.items()} == {"weight": (20, 3), "bias": (3,)}
    assert not np.array_equal(result.model["weight"], initial["weight"])  # it trained
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"submitted job {result.job_id}"
    assert [line.split(":")[0] for line in lines[1:4]] == ["round 1/2", "round 2/2", "final global model"]
    assert lines[4:] == [f"job {result.job_id}: finished:completed", f"result downloaded to {result.result}"]
    with pytest.raises(Exception, match="exists already"):  # a second download never replaces the first
        from fedsec.api import Session

        with Session(poc.admin_kit) as s:
            s.download_job_result(result.job_id, tmp_path / "results")
