"""fedsec.api's recipes are fedsec.jobs' recipes that also run themselves (run() is run_recipe)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedsec import api
from fedsec.api import recipes
from fedsec.jobs import recipe as job_recipes


@pytest.mark.parametrize(
    ("cls", "base", "settings"),
    [
        (api.FedAvgRecipe, job_recipes.FedAvgRecipe, {}),
        (api.FedProxRecipe, job_recipes.FedProxRecipe, {"mu": 0.01}),
        (api.FedOptRecipe, job_recipes.FedOptRecipe, {"optimizer": "adam"}),
        (api.ScaffoldRecipe, job_recipes.ScaffoldRecipe, {"server_lr": 0.5, "sites": ["site-1"]}),
    ],
)
def test_run_hands_the_recipe_and_every_option_to_run_recipe(
    cls: Any, base: type, settings: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "client.py"
    script.write_text("")
    recipe: Any = cls("r", {"w": np.zeros(2, np.float32)}, script, num_rounds=1, min_clients=1, **settings)
    assert base in type(recipe).__mro__
    calls: list[tuple[Any, ...]] = []

    def run_recipe(*args: Any, **kw: Any) -> str:
        calls.append((args, kw))
        return "result"

    monkeypatch.setattr(recipes, "run_recipe", run_recipe)
    assert recipe.run("kit", dest="d", poll=0.5, timeout=9.0, echo=None) == "result"
    assert calls == [((recipe, "kit"), {"dest": "d", "progress": None, "echo": None, "poll": 0.5, "timeout": 9.0})]
    assert (recipe.export(tmp_path / "job") / "meta.yml").is_file()  # still the recipe of fedsec.jobs
