"""The layers of docs/architecture.md hold: the import contract covers every core module, the command line
starts without Ray, and serving runs without the simulator or RLlib."""

from __future__ import annotations

import configparser
import pkgutil
import subprocess
import sys
from pathlib import Path

import rayrec

REPO = Path(__file__).resolve().parent.parent
ABOVE_CORE = {"rayrec.ab", "rayrec.cli", "rayrec.commands", "rayrec.__main__"}


def _contract(name: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser()
    parser.read(REPO / ".importlinter")
    return parser[f"importlinter:contract:{name}"]


def _lines(value: str) -> set[str]:
    return {line.strip() for line in value.splitlines() if line.strip() and not line.strip().startswith("#")}


def test_every_core_module_is_named_in_the_core_contract():
    core = {f"rayrec.{m.name}" for m in pkgutil.iter_modules(rayrec.__path__)} - ABOVE_CORE
    listed = _lines(_contract("core")["source_modules"])
    assert core == listed, (
        f"add to .importlinter's core contract: {sorted(core - listed)}; gone: {sorted(listed - core)}"
    )


def test_the_import_contract_is_kept():
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--config", str(REPO / ".importlinter")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout


def _imported_after(code: str) -> set[str]:
    """Top-level-ish module names imported by a fresh interpreter running ``code``."""
    probe = f"{code}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_rayrec_help_imports_neither_ray_nor_torch():
    """Every command's parser is built for any command, so what they import at module level every run pays
    (scipy.stats, special and optimize added a second to each invocation on 2 cores; scipy.sparse is cheap)."""
    modules = _imported_after("import rayrec.cli\nrayrec.cli.build_parser()")
    packages = (
        "ray",
        "torch",
        "transformers",
        "faiss",
        "sklearn",
        "scipy.stats",
        "scipy.special",
        "scipy.optimize",
    )
    heavy = sorted(m for m in modules if any(m == p or m.startswith(f"{p}.") for p in packages))
    assert not heavy, f"`rayrec --help` imports {heavy[:10]}"


def test_serving_never_loads_the_simulator_or_rllib():
    modules = _imported_after("import serving.app")
    forbidden = sorted(
        m
        for m in modules
        if m.split(".")[0] in {"envs", "trainers", "gymnasium"} or m.startswith("ray.rllib")
    )
    assert not forbidden, f"serving.app loads {forbidden[:10]}"
