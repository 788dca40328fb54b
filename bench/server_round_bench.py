"""Benchmark: the server's own work in one training round, per strategy, plain and HE, in this process.

Workload: bench/runtime_bench.py's cnn_params() (3,491,530 float32 parameters, CIFAR-10 CNN
shapes) as the global model, and 8 sites' updates written, before any timing, as the files the
server receives (seeded: the model plus normal noise of 0.01):
  - plain: fedsec.wire.arrays containers of full weights; scaffold's also carry each site's
    control-variate update (fedsec.jobs.control.CONTROL + name), as a plain scaffold upload does.
  - HE (he.clip 4.0, max_clients 16, each site's weight 1/8): fedsec.he.codec.encrypt_model of
    the full weights under a client context from fedsec.he.context.make_contexts(); scaffold's
    upload is its three sections (fedsec.site.scaffold.upload: model, the task's c, delta_c / the
    quantised weight); fedopt's is what fedsec.site.codec sends: the sealed global model and
    optimizer state after one step (fedsec.he.sealed, FSO1 bundle, the same for the 8 sites) and the
    encrypted weight difference.
Strategies: fedavg, fedprox (mu 0.01; the server side is fedavg's), fedopt adam / yogi / adagrad /
avgm (their default settings), scaffold (server_lr 1.0, N = 8), each made by
fedsec.workflow.strategies.make and folded by the job's codec (fedsec.workflow.codec.make: plain,
or encrypted with the server's context, which has no secret key), as fedsec.workflow.fedavg's
RoundDriver does. Under HE fedopt's round is SiteStepFold: the server sums the ciphertexts, checks
each site's sealed copy and keeps one; the step itself runs on the sites and is not timed here.
Per strategy and mode, median over --repeats of a fresh strategy and fold:
  fold  : check() and add() of the 8 updates (read from the page cache: written just before);
  close : write() of the round's result (the strategy's step, the checkpoint file and its state)
          and close();
  round : their sum; wall seconds (perf_counter) and CPU seconds of this process (process_time).
Also the size of one site's update (MB, 10**6 bytes) and the load average at start and end (the
machine is shared: wall seconds grow with it, CPU seconds much less). Asserts nothing.
Run: .venv/bin/python bench/server_round_bench.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # so that `python bench/NAME.py` finds the bench package

from bench.runtime_bench import N_SITES, cnn_params  # noqa: E402
from fedsec import fedopt  # noqa: E402
from fedsec.jobs import control  # noqa: E402
from fedsec.jobs.meta import HEConfig, ServerOptimizer, StrategyConfig, StrategyKind  # noqa: E402
from fedsec.wire import arrays  # noqa: E402
from fedsec.workflow import codec, strategies  # noqa: E402

JOB_ID = "server-round-bench"
NUMBER = 1  # the round timed: one after round 0, so fedopt's sealed state holds an optimizer state
NOISE = 0.01  # a site's change to each weight (normal), well within he.clip
HE = HEConfig(enabled=True, clip=4.0, max_examples=N_SITES, max_clients=16)  # FedAvgRecipe's clip and max_clients
WEIGHT = 1.0 / N_SITES  # each site's num_examples / he.max_examples
STRATEGIES: list[tuple[str, StrategyConfig]] = [
    ("fedavg", StrategyConfig(StrategyKind.FEDAVG)),
    ("fedprox", StrategyConfig(StrategyKind.FEDPROX, mu=0.01)),
    *((f"fedopt {o.value}", StrategyConfig(StrategyKind.FEDOPT, optimizer=o)) for o in ServerOptimizer),
    ("scaffold", StrategyConfig(StrategyKind.SCAFFOLD)),
]
Arrays = dict[str, NDArray[Any]]

HEADER = (
    f"{'strategy':<15} {'mode':<5} {'update MB':>9} {'fold wall':>10} {'fold cpu':>9} "
    f"{'close wall':>10} {'close cpu':>9} {'round wall':>10} {'round cpu':>9}"
)


@dataclass(frozen=True)
class Updates:
    """One strategy's round input: the 8 update files, their params_type, and the global model's file."""

    paths: list[Path]
    params_type: str
    model: Path


@dataclass(frozen=True)
class Timing:
    fold_wall: float
    fold_cpu: float
    close_wall: float
    close_cpu: float


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1, 5, 15 min; {os.cpu_count()} CPUs)"


def site_models(model: Arrays) -> list[Arrays]:
    """The 8 sites' full weights: the model plus seeded noise."""
    out: list[Arrays] = []
    for i in range(N_SITES):
        rng = np.random.default_rng(1000 + i)
        out.append({k: (v + rng.normal(0.0, NOISE, v.shape)).astype(v.dtype) for k, v in model.items()})
    return out


def control_update(model: Arrays, site: int) -> Arrays:
    """A site's control-variate update delta_c_i in its tensors' dtypes (as the server expects it): small noise."""
    rng = np.random.default_rng(2000 + site)
    specs = control.controlled(arrays.specs_of(model, "model"))
    return {spec.name: rng.normal(0.0, NOISE, spec.shape).astype(spec.dtype) for spec in specs}


class Inputs:
    """Writes each strategy's update files into folder (before timing), once per kind of upload."""

    def __init__(self, folder: Path, client_ctx: Any) -> None:
        self.folder = folder
        self.client_ctx = client_ctx
        self.model = cnn_params()
        self.sites = site_models(self.model)
        self.model_path = folder / "global.fsa"
        arrays.write_file(self.model_path, self.model, "global model")
        self._made: dict[str, list[Path]] = {}

    def _files(self, key: str, contents: Callable[[int], bytes | Arrays]) -> list[Path]:
        if key not in self._made:
            paths: list[Path] = []
            for i in range(N_SITES):
                body = contents(i)
                path = self.folder / f"{key.replace(' ', '-')}-{i}.upload"
                if isinstance(body, bytes):
                    path.write_bytes(body)
                else:
                    arrays.write_file(path, body, f"site {i}'s update")
                paths.append(path)
            self._made[key] = paths
        return self._made[key]

    def _encrypt(self, params: Arrays, site: int) -> bytes:
        from fedsec.he.codec import encrypt_model

        rng = np.random.default_rng(3000 + site)
        return encrypt_model(self.client_ctx, params, WEIGHT, HE.clip, rng, HE.max_clients)

    def updates(self, config: StrategyConfig, encrypted: bool) -> Updates:
        kind = config.name
        if kind is StrategyKind.SCAFFOLD:
            if encrypted:
                paths = self._files("scaffold-he", self._scaffold_upload)
            else:
                paths = self._files(
                    "scaffold-plain", lambda i: control.join(self.sites[i], control_update(self.model, i))
                )
            return Updates(paths, "full", self.model_path)
        if not encrypted:
            return Updates(self._files("plain", lambda i: self.sites[i]), "full", self.model_path)
        if kind is StrategyKind.FEDOPT:
            assert config.optimizer is not None
            head = self._fedopt_head(config)
            diffs = self._files("fedopt-diff-he", lambda i: self._encrypt(self._difference(i), i))
            paths = self._files(f"fedopt-{config.optimizer.value}-he", lambda i: head + diffs[i].read_bytes())
            return Updates(paths, "diff", self.model_path)
        return Updates(self._files("he", lambda i: self._encrypt(self.sites[i], i)), "full", self.model_path)

    def drop(self, key_part: str) -> None:
        """Remove the files whose key contains key_part (the large fedopt bundles, once timed)."""
        for key in [k for k in self._made if key_part in k]:
            for path in self._made.pop(key):
                path.unlink(missing_ok=True)

    def _difference(self, site: int) -> Arrays:
        return {k: (self.sites[site][k] - v).astype(v.dtype) for k, v in self.model.items()}

    def _scaffold_upload(self, site: int) -> bytes:
        """What fedsec.site.scaffold.upload gives a site to encrypt: the stepped model, c, delta_c / weight."""
        from fedsec.he.params import quantised_weight
        from fedsec.site import scaffold as site_scaffold

        c = {k: np.zeros(v.shape, np.float64) for k, v in control_update(self.model, site).items()}
        weight = quantised_weight(WEIGHT, HE.clip, HE.max_clients)
        params = site_scaffold.upload(
            self.sites[site], control_update(self.model, site), self.model, c, 1.0, weight, HE.clip, f"site {site}"
        )
        return self._encrypt(params, site)

    def _fedopt_head(self, config: StrategyConfig) -> bytes:
        """The FSO1 head every site's upload starts with: the sealed model and state after round NUMBER's step.

        As fedsec.site.fedopt_he.step seals it (a round-0 state stepped once by the mean of the sites' changes).
        """
        from fedsec.he.sealed import bundle_header, seal

        assert config.optimizer is not None
        settings = {k: float(v) for k, v in config.settings().items() if k != "optimizer"}
        step = fedopt.FedOptStep(config.optimizer, settings)
        specs = arrays.specs_of(self.model, "model")
        mean: dict[str, NDArray[np.float64]] = {
            k: np.asarray(np.mean([s[k] - v for s in self.sites], axis=0, dtype=np.float64))
            for k, v in self.model.items()
        }
        model = step.step(specs, self.model, lambda name, _x: mean[name])
        plain = fedopt.sealed_plaintext(model, step.state())
        sealed = seal(self.client_ctx, plain)
        return bundle_header(fedopt.digest(JOB_ID, NUMBER, plain), len(sealed)) + sealed


def one_round(update_codec: codec.UpdateCodec, config: StrategyConfig, updates: Updates, out: Path) -> Timing:
    """One round's fold and close with a fresh strategy, timed."""
    strategy = strategies.make(config, N_SITES, update_codec.encrypted)
    update_codec.check(strategy)
    specs = update_codec.update_specs(strategy, arrays.read_specs(updates.model, "global model"))
    fold = update_codec.fold(strategy, specs, final=False)
    dest = out / f"round-{NUMBER}{update_codec.suffix}"
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        for i, path in enumerate(updates.paths):
            where = f"site-{i + 1}'s update of round {NUMBER}"
            fold.check(path, where)
            fold.add(f"site-{i + 1}", path, WEIGHT, updates.params_type, where)
        fold_wall, fold_cpu = time.perf_counter() - wall, time.process_time() - cpu
        wall, cpu = time.perf_counter(), time.process_time()
        fold.write(updates.model, dest, NUMBER)
        fold.close()
        close_wall, close_cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        fold.close()
        for path in out.iterdir():
            path.unlink()
    return Timing(fold_wall, fold_cpu, close_wall, close_cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plain-only", action="store_true", help="skip the HE rows")
    args = parser.parse_args()
    print(f"load average at start: {load_average()}")
    modes = [False] if args.plain_only else [False, True]
    client_ctx: Any = None
    server_ctx: Any = None
    if not args.plain_only:
        from fedsec.he import context

        client_bytes, server_bytes = context.make_contexts()
        client_ctx = context.load_client_context(client_bytes, "client context")
        server_ctx = context.load_server_context(server_bytes, "server context")
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="server-round-bench-") as tmp:
        root = Path(tmp)
        inputs = Inputs(root, client_ctx)
        n_params = sum(v.size for v in inputs.model.values())
        print(f"model: {n_params:,} float32 parameters, {N_SITES} sites, {args.repeats} repeats (medians)")
        print(HEADER, flush=True)
        for encrypted in modes:
            incoming = root / "incoming"
            out = root / "out"
            for folder in (incoming, out):
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir()
            update_codec = codec.make(JOB_ID, HE if encrypted else HEConfig(), server_ctx, incoming)
            for label, config in STRATEGIES:
                updates = inputs.updates(config, encrypted)
                times = [one_round(update_codec, config, updates, out) for _ in range(args.repeats)]
                med = {f: statistics.median(getattr(t, f) for t in times) for f in Timing.__dataclass_fields__}
                size = updates.paths[0].stat().st_size / 1e6
                mode = "HE" if encrypted else "plain"
                rows.append(
                    f"{label:<15} {mode:<5} {size:>9.1f} "
                    f"{med['fold_wall']:>10.2f} {med['fold_cpu']:>9.2f} "
                    f"{med['close_wall']:>10.2f} {med['close_cpu']:>9.2f} "
                    f"{med['fold_wall'] + med['close_wall']:>10.2f} {med['fold_cpu'] + med['close_cpu']:>9.2f}"
                )
                print(rows[-1], flush=True)
                if encrypted and config.optimizer is not None:
                    inputs.drop(f"fedopt-{config.optimizer.value}")
    print()
    print(HEADER)
    print("\n".join(rows))
    print(
        "fold: check + add of the 8 updates; close: the round's write (step, checkpoint, state) and close. "
        "HE fedopt: the sites step; the server sums the ciphertexts, checks the 8 sealed copies, keeps one."
    )
    print(f"load average at end: {load_average()}")


if __name__ == "__main__":
    main()
