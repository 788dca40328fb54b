"""Pin the package's architecture: import directions, heavy-library homes, no pickle."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "fedsec"

# Layer of each top-level module/package of fedsec; imports point to a lower layer
# (or within the same foundation/building-block layer), never up.
LAYERS = {
    "errors": 0, "limits": 0, "_fs": 0, "_proc": 0, "_schema": 0, "logs": 0, "filters": 0, "_deps": 0,
    "pki": 1, "wire": 1, "he": 1, "jobs": 1, "tracking": 1, "state": 1, "fedopt": 1,
    "kit": 2, "provision": 2, "transport": 2, "tracking.receivers": 2,
    "server": 3, "workflow": 3, "site": 3, "client": 3, "api": 3,
    "admin": 4, "cli": 4, "launch": 4, "__main__": 5,
    # the package's front door re-exports (fedsec.load_model) lazily; the light-import test keeps it light
    "__init__": 5,
}  # fmt: skip
PROCESS_PACKAGES = {"server", "workflow", "site", "client", "api"}

# Each heavy library may be imported only under these fedsec modules.
HOMES = {
    "tenseal": ("he",),
    "mlflow": ("tracking.receivers",),
    "prompt_toolkit": ("admin",),
    "grpc": ("transport", "wire", "server", "workflow", "site", "client", "api"),
    "torch": ("client",),
    "psycopg": ("state.postgres",),
}


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        if rel.name.endswith(("_pb2", "_pb2_grpc")):
            continue
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out.append((".".join(parts), path))
    return out


def _unit(module: str) -> str:
    """The layer unit of a dotted module path inside fedsec."""
    if module.startswith("tracking.receivers"):
        return "tracking.receivers"
    return module.split(".", maxsplit=1)[0]


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at top level of the file) for each import in path."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, id(node) in top))
            found += [(f"{node.module}.{a.name}", id(node) in top) for a in node.names if node.module == "fedsec"]
    return found


def test_modules_found() -> None:
    names = {m for m, _ in _modules()}
    assert {"cli", "kit", "pki.certs", "provision.builder"} <= names


@pytest.mark.parametrize(("module", "path"), _modules(), ids=[m for m, _ in _modules()])
def test_imports_point_down(module: str, path: Path) -> None:
    mine = _unit(module)
    assert mine in LAYERS, f"{module}: add its package to LAYERS in this test and to STYLE.md's tree"
    for name, _ in _imports(path):
        if not name.startswith("fedsec.") or name == "fedsec.__version__":
            continue
        target = _unit(name.removeprefix("fedsec."))
        if target == mine or target == "__version__":
            continue
        assert target in LAYERS, f"{module} imports unknown fedsec.{target}"
        assert LAYERS[target] <= LAYERS[mine], f"{module} (layer {LAYERS[mine]}) imports up into {name}"
        if mine in PROCESS_PACKAGES:
            assert target not in PROCESS_PACKAGES, f"{module}: process packages never import each other ({name})"


@pytest.mark.parametrize(("module", "path"), _modules(), ids=[m for m, _ in _modules()])
def test_heavy_libraries_stay_home(module: str, path: Path) -> None:
    for name, at_top in _imports(path):
        lib = name.split(".")[0]
        if lib in HOMES:
            homes = HOMES[lib]
            assert any(module == h or module.startswith(h + ".") for h in homes), f"{module} imports {lib}"
            if lib == "torch":
                assert not at_top, f"{module}: torch is imported lazily, inside functions"


def test_import_fedsec_and_cli_is_light() -> None:
    code = (
        "import sys, fedsec, fedsec.cli, fedsec.kit, fedsec.provision;"
        "heavy = [m for m in ('grpc','torch','tenseal','mlflow','prompt_toolkit','numpy') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


_FORBIDDEN = [
    (re.compile(r"\bimport (c?pickle|dill|cloudpickle|marshal|shelve)\b"), "pickle-family import"),
    (re.compile(r"\bpickle\.loads?\("), "pickle load"),
    (re.compile(r"torch\.load\((?![^)]*weights_only=True)"), "torch.load without weights_only=True"),
    (re.compile(r"allow_pickle\s*=\s*True"), "numpy allow_pickle=True"),
    (re.compile(r"yaml\.(load|unsafe_load)\("), "unsafe YAML load"),
    (re.compile(r"(?<![.\w])(eval|exec)\("), "eval/exec"),
]


def test_no_unsafe_deserialisation() -> None:
    root = PKG.parent
    files = [p for d in ("fedsec", "jobs") for p in (root / d).rglob("*.py") if "_pb2" not in p.name]
    assert files
    for path in files:
        text = path.read_text()
        for pattern, what in _FORBIDDEN:
            match = pattern.search(text)
            assert match is None, f"{path.relative_to(root)}: {what}: {match.group(0) if match else ''}"
