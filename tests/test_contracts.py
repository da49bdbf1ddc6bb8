"""The import contracts (pyproject's [tool.importlinter]) hold on the package, and each fails on a planted violation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = str(Path(sys.executable).with_name("lint-imports"))


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([LINT, "--no-cache", str(root / "pyproject.toml")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture()
def copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "pipeline", tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "tests").mkdir()
    for name in ("__init__.py", "contracts.py"):
        shutil.copy(ROOT / "tests" / name, tmp_path / "tests" / name)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_package_keeps_every_contract():
    r = lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "BROKEN" not in r.stdout and r.stdout.count("KEPT") >= 3


def plant(root: Path, module: str, line: str) -> None:
    path = root.joinpath(*module.split(".")).with_suffix(".py")
    path.write_text(path.read_text() + f"\n{line}\n")


@pytest.mark.parametrize("module,line,expected", [
    ("pipeline.science.film", "from pipeline.platform.tracking import redact  # noqa",
     "pipeline.science is not allowed to import pipeline.platform"),
    ("pipeline.data.datasets", "from pipeline.training.progress import fmt_duration  # noqa",
     "pipeline.data is not allowed to import pipeline.training"),
    ("pipeline.training.loop", "import mlflow  # noqa", "pipeline.training.loop -> mlflow"),
    ("pipeline.launch.demo", "from pipeline.data.s3 import _where  # noqa", "imports pipeline.data.s3._where"),
])
def test_a_planted_violation_breaks_its_contract(copy, module, line, expected):
    assert lint(copy).returncode == 0  # the copy is clean before the plant
    plant(copy, module, line)
    r = lint(copy)
    assert r.returncode != 0
    assert "BROKEN" in r.stdout and expected in r.stdout, r.stdout
