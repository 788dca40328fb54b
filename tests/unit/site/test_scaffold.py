"""SCAFFOLD under HE in the site relay: what a site encrypts, and the (x, c) a decrypted sum gives.

Hand-worked: N = 3, server_lr = 0.5, x = [1], c = [0.2]; site 1 (weight 1) trained to y = [3] with
delta_c = [0.3], site 2 (weight 0.5) to y = [1] with delta_c = [-0.6]. The uploads hold y' = x + 0.5 (y - x):
[2] and [1]; c: [0.2] each; delta_c / weight: [0.3] and [-1.2]. Weighted by 1 and 0.5 and divided by the
total weight 1.5, the sum decrypts to x' = (2 + 0.5) / 1.5 = 5/3 (= 1 + 0.5 * ((3 + 0.5) / 1.5 - 1)),
c = 0.2 and (0.3 - 0.6) / 1.5 = -0.2; so the next c is 0.2 + 1.5 * -0.2 / 3 = 0.1 = 0.2 + (0.3 - 0.6) / 3.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from fedsec.errors import WireError
from fedsec.jobs import control
from fedsec.site import scaffold
from fedsec.wire import arrays

Arrays = dict[str, NDArray[Any]]
X: Arrays = {"w": np.array([1.0], np.float32), "n": np.array([2], np.int64)}
C: Arrays = {"w": np.array([0.2], np.float32)}
SITES: list[tuple[Arrays, Arrays, float]] = [  # (y, delta_c, weight)
    ({"w": np.array([3.0], np.float32), "n": np.array([4], np.int64)}, {"w": np.array([0.3], np.float32)}, 1.0),
    ({"w": np.array([1.0], np.float32), "n": np.array([4], np.int64)}, {"w": np.array([-0.6], np.float32)}, 0.5),
]


def _uploads(clip: float = 4.0) -> list[tuple[dict[str, NDArray[Any]], float]]:
    return [(scaffold.upload(y, dc, X, C, 0.5, w, clip, "upload"), w) for y, dc, w in SITES]


def test_uploads_hold_the_stepped_model_c_and_the_reweighted_update() -> None:
    first, second = (upload for upload, _ in _uploads())
    assert list(first) == ["w", "n", "scaffold.c/w", "scaffold.dc/w"]
    assert arrays.specs_of(first) == control.sum_specs(arrays.specs_of(X))
    assert first["w"].tolist() == [2.0] and second["w"].tolist() == [1.0]
    assert first["n"].tolist() == [4]  # a counter is averaged as it is
    assert first["scaffold.c/w"].tolist() == pytest.approx([0.2])
    assert first["scaffold.dc/w"].tolist() == pytest.approx([0.3])
    assert second["scaffold.dc/w"].tolist() == pytest.approx([-1.2])


def test_the_weighted_sum_gives_every_site_the_next_x_and_c() -> None:
    uploads = _uploads()
    total = sum(w for _, w in uploads)
    first = uploads[0][0]  # decrypted as codec.decrypt_model gives it: each tensor in its own dtype
    mean = {k: (np.sum([u[k] * w for u, w in uploads], axis=0) / total).astype(v.dtype) for k, v in first.items()}
    model, c = scaffold.task_from_sum(mean, total, 3, "sum")
    assert model["w"].tolist() == pytest.approx([5 / 3])
    assert c["w"].tolist() == pytest.approx([0.1])
    assert c["w"].dtype == np.float32


def test_a_control_variate_beyond_the_clip_is_refused_not_clipped() -> None:
    y, dc, _ = SITES[0]
    with pytest.raises(WireError, match=r"'w' reaches 0.3, beyond he.clip 0.25"):
        scaffold.upload(y, dc, X, C, 0.5, 1.0, 0.25, "upload")


def test_an_update_without_its_control_variate_is_refused() -> None:
    with pytest.raises(WireError, match="'scaffold/w' is missing"):
        control.split(X, control.CONTROL, "update")
    with pytest.raises(WireError, match="controls no floating-point tensor"):
        control.split({**X, "scaffold/w": C["w"], "scaffold/n": np.array([1.0])}, control.CONTROL, "update")
    with pytest.raises(WireError, match="does not belong here"):
        control.split({**X, "scaffold.c/w": C["w"]}, control.CONTROL, "update")


@pytest.mark.skipif(importlib.util.find_spec("tenseal") is None, reason="needs tenseal")
def test_encrypted_uploads_sum_to_the_next_c_within_the_fixed_point(tmp_path: Path) -> None:
    from fedsec.he import codec, context, params

    client, server = context.make_contexts()
    ctx = context.load_client_context(client, "client")
    clip, max_clients = 4.0, 3
    total = codec.EncryptedSum(
        context.load_server_context(server, "server"), control.sum_specs(arrays.specs_of(X)), clip, max_clients
    )
    for i, (y, dc, w) in enumerate(SITES):
        weight = params.quantised_weight(w, clip, max_clients)
        path = tmp_path / f"upload-{i}.fsh"
        path.write_bytes(
            codec.encrypt_model(ctx, scaffold.upload(y, dc, X, C, 0.5, weight, clip, "upload"), w, clip, None, 3)
        )
        total.add_file(path, "upload")
    total.write(tmp_path / "sum.fsh")
    decrypted, weight_sum = codec.decrypt_model(ctx, (tmp_path / "sum.fsh").read_bytes(), "sum")
    model, c = scaffold.task_from_sum(decrypted, weight_sum, 3, "sum")
    step = 2.0 ** -params.scale_bits(clip, max_clients)
    assert weight_sum == 1.5
    within = 4 * step + 2e-7  # and float32's rounding of the inputs and the result (2**-38 is finer)
    assert model["w"].tolist() == pytest.approx([5 / 3], abs=within)
    assert c["w"].tolist() == pytest.approx([0.1], abs=within)
