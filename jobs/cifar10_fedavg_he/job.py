"""Build the cifar10_fedavg_he job: cifar10_fedavg with every update encrypted (BFV), and run it.

    python jobs/cifar10_fedavg_he/job.py --startup_kit workspaces/.../admin@org.com

The project must be provisioned with HE (features: {he: {enabled: true}}). The
server only adds ciphertexts; the downloaded result stays encrypted: a site's key
holder decrypts it with `fedsec he decrypt --context .../client_context.tenseal DIR`.
Same options as jobs/cifar10_fedavg/job.py. Exits 0 when the job finished completed, 1 otherwise.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from fedsec.errors import FedsecError


def _plain_job() -> ModuleType:
    """jobs/cifar10_fedavg/job.py, loaded by path (both folders are named job.py)."""
    path = Path(__file__).resolve().parents[1] / "cifar10_fedavg" / "job.py"
    spec = importlib.util.spec_from_file_location("cifar10_fedavg_job", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"job.py: error: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    plain = _plain_job()
    code: int = plain.run(plain.parse_args(he=True), "cifar10_fedavg_he")
    return code


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FedsecError as exc:
        sys.exit(f"job.py: error: {exc}")
