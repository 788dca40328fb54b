"""`fedsec he decrypt`: an HE result's encrypted model becomes global_model.safetensors (or .fsa when asked)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fedsec
from fedsec import cli
from fedsec.errors import HEError
from fedsec.he import codec, context, params
from fedsec.wire import arrays


def test_decrypt_writes_safetensors_beside_the_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    client, _server = context.make_contexts()
    (tmp_path / "client_context.tenseal").write_bytes(client)
    ctx = context.load_client_context(client, "client")
    model = {"w": np.linspace(-1, 1, 30).reshape(5, 6).astype(np.float32), "b": np.array([0.5, -0.25])}
    result = tmp_path / "result"
    result.mkdir()
    (result / "global_model.fsh").write_bytes(codec.encrypt_model(ctx, model, 1.0, params.DEFAULT_CLIP))
    with pytest.raises(HEError, match="fedsec he decrypt --context"):
        fedsec.load_model(result)  # encrypted: it says how to decrypt

    assert cli.main(["he", "decrypt", "--context", str(tmp_path / "client_context.tenseal"), str(result)]) == 0
    assert f"into {result / 'global_model.safetensors'}" in capsys.readouterr().out
    plain = fedsec.load_model(result)  # the folder's safetensors now
    assert sorted(plain) == ["b", "w"]
    step = 2.0 ** -params.scale_bits(params.DEFAULT_CLIP)
    for name, value in model.items():
        assert plain[name].shape == value.shape
        assert np.max(np.abs(plain[name] - value)) <= step

    out = tmp_path / "plain.fsa"
    argv = ["he", "decrypt", "--context", str(tmp_path / "client_context.tenseal"), str(result), "-o", str(out)]
    assert cli.main(argv) == 0
    assert sorted(arrays.read_file(out)) == ["b", "w"]


def test_decrypt_leaves_out_a_scaffold_jobs_control_variate_sections(tmp_path: Path) -> None:
    client, _server = context.make_contexts()
    (tmp_path / "client_context.tenseal").write_bytes(client)
    ctx = context.load_client_context(client, "client")
    w = np.array([0.5, -0.25], np.float32)
    upload = {"w": w, "scaffold.c/w": np.zeros(2, np.float32), "scaffold.dc/w": np.ones(2, np.float32)}
    (tmp_path / "global_model.fsh").write_bytes(codec.encrypt_model(ctx, upload, 1.0, params.DEFAULT_CLIP))
    out = tmp_path / "plain.fsa"
    argv = ["he", "decrypt", "--context", str(tmp_path / "client_context.tenseal"), str(tmp_path), "-o", str(out)]
    assert cli.main(argv) == 0
    assert list(arrays.read_file(out)) == ["w"]


def test_decrypt_opens_a_fedopt_result_exactly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fedsec.jobs.meta import ServerOptimizer, StrategyConfig, StrategyKind
    from fedsec.site import fedopt_he

    client, _server = context.make_contexts()
    (tmp_path / "client_context.tenseal").write_bytes(client)
    ctx = context.load_client_context(client, "client")
    model: dict[str, Any] = {"w": np.linspace(-3, 3, 30).reshape(5, 6).astype(np.float32), "n": np.array(7, np.int64)}
    strategy = StrategyConfig(StrategyKind.FEDOPT, optimizer=ServerOptimizer.ADAM)
    stepped = fedopt_he.step(ctx, "job", strategy, 0, arrays.encode(model), False, "initial model")
    result = tmp_path / "result"
    result.mkdir()
    (result / "global_model.fsh").write_bytes(stepped.prefix)  # a FedOpt job's result: the sealed step, no sum
    out = tmp_path / "plain.fsa"
    argv = ["he", "decrypt", "--context", str(tmp_path / "client_context.tenseal"), str(result), "-o", str(out)]
    assert cli.main(argv) == 0
    assert "the FedOpt global model" in capsys.readouterr().out
    assert out.read_bytes() == arrays.encode(model)  # sealed exactly: no fixed point, the same bytes
