"""A model ten times the gRPC message cap goes through every hop in chunks, both ways, byte for byte.

training script -> site parent -> server parent -> workflow process, and back; then the
result to the admin. The script reports a CRC-32 of each model it receives.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from fedsec import limits
from fedsec.api import Session
from fedsec.jobs import FedAvgRecipe
from fedsec.wire import arrays
from tests.integration.harness import Federation

SCRIPT = Path(__file__).parent / "scripts" / "large_client.py"
SHAPES = {"embed": (1000, 2500), "w1": (2500, 1000), "w2": (5_000_000,), "b": (7,)}  # ~40 MB of float32


def initial_model() -> dict[str, NDArray[Any]]:
    """Values that change every 1 KiB along each tensor and differ between tensors.

    Any chunk (1 MiB) lost, repeated or out of place changes the values; runs of equal
    values keep the job archive cheap to deflate (weights that look random cost ~20 MB/s).
    """
    out = {}
    for i, (name, shape) in enumerate(SHAPES.items()):
        n = int(np.prod(shape))
        out[name] = ((np.arange(n) // 256) * 0.25 + 10_000 * i).astype(np.float32).reshape(shape)
    return out


def crc(model: dict[str, NDArray[Any]]) -> float:
    value = 0
    for tensor in model.values():
        value = zlib.crc32(tensor.tobytes(), value)
    return float(value)


def plus(model: dict[str, NDArray[Any]], delta: float) -> dict[str, NDArray[Any]]:
    return {name: tensor + np.float32(delta) for name, tensor in model.items()}


@pytest.mark.federation(n_clients=1, heartbeat_timeout=30.0)
def test_a_model_over_the_message_cap_round_trips(federation: Federation, tmp_path: Path) -> None:
    initial = initial_model()
    size = sum(t.nbytes for t in initial.values())
    assert size > 8 * limits.MAX_MESSAGE_BYTES
    recipe = FedAvgRecipe("large", initial, SCRIPT, num_rounds=2, min_clients=1, start_timeout=60.0)
    folder = recipe.export(tmp_path / "large-job")
    federation.start_all()
    with Session(federation.admin_kit) as s:
        job_id = s.submit_job(folder)
        info = s.wait_for_job(job_id, timeout=180, poll=0.5)
        assert info.status == "finished:completed", info.reason
        result = s.download_job_result(job_id)

    final = arrays.read_file(result / "global_model.fsa")
    want = plus(plus(initial, 0.5), 0.5)  # the server adds each round's average in float32
    assert list(final) == list(want)
    for name, tensor in want.items():
        assert final[name].dtype == np.float32 and final[name].shape == tensor.shape, name
        assert np.array_equal(final[name], tensor), name
    # what the script received each round, byte for byte: the initial model, then after round 0
    rounds = info.progress["rounds"]
    assert [r["sites"] for r in rounds] == [["site-1"], ["site-1"]]
    assert [r["metrics"]["crc"] for r in rounds] == [crc(initial), crc(plus(initial, 0.5))]
    assert all(r["metrics"]["bytes"] == size for r in rounds)
    assert info.progress["final"]["metrics"]["crc"] == crc(want)
