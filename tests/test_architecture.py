"""The architecture's rules (docs/architecture.md) as tests: the import contracts, the light
packages, the size limits. Each failure names the module or function that breaks a rule."""

from __future__ import annotations

import ast
import json
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import mnist_exp

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
HEAVY = ("tensorflow", "keras", "mlflow")
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 60


def light_modules() -> list[str]:
    """Every module of the light packages, so a module split out of one is checked too."""
    modules = ["mnist_exp.errors", "mnist_exp.tracking.store", "mnist_exp.tracking.record",
               "mnist_exp.sweeps.study", "mnist_exp.sweeps.cluster"]
    for package in ("config", "data", "cli"):
        path = [str(Path(mnist_exp.__file__).parent / package)]
        modules += [f"mnist_exp.{package}"] + [
            f"mnist_exp.{package}.{info.name}" for info in pkgutil.iter_modules(path)]
    return modules


def test_import_contracts_hold():
    """pyproject.toml's [tool.importlinter] contracts: layers, Hydra only in the commands,
    no TensorFlow/Keras/MLflow in config, data and errors."""
    lint_imports = shutil.which("lint-imports", path=Path(sys.executable).parent) or "lint-imports"
    result = subprocess.run([lint_imports, "--no-cache"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    report, exit_code = result.stdout[result.stdout.find("Contracts"):], result.returncode
    assert exit_code == 0, report + result.stderr  # the report starts after the banner
    assert "0 broken" in report


def test_light_packages_import_without_tensorflow_keras_mlflow():
    """In a fresh interpreter, each light module is imported in turn; the first to bring in a
    heavy library is named."""
    script = (
        "import importlib, json, sys\n"
        f"heavy = {HEAVY!r}\n"
        "culprits = {}\n"
        f"for name in {light_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        "    for lib in heavy:\n"
        "        if lib in sys.modules and lib not in culprits:\n"
        "            culprits[lib] = name\n"
        "print(json.dumps(culprits))\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    culprits = json.loads(result.stdout.splitlines()[-1])
    assert culprits == {}, "\n".join(f"{module} imports {lib}"
                                     for lib, module in culprits.items())


def test_modules_and_functions_stay_small():
    """No module over 300 lines, no function (or method) over 60 lines, in all of src/."""
    too_long = []
    for path in sorted(SRC.rglob("*.py")):
        source = path.read_text()
        where = path.relative_to(ROOT)
        lines = len(source.splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{where}: module of {lines} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{where}:{node.lineno}: {node.name}() of {length} lines")
    assert too_long == [], "\n".join(too_long)
