"""The layers of src/xmkd import one way (import-linter contracts in pyproject.toml, docs/pipeline.md#layers).

`lint-imports` must keep every contract on the code as it is, and break them on a copy of the package with a
deliberate back-import inside a function (the way the old 18-module cycle through ddp.py hid) or with a new module
that no layer names.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"


def _lint(src: Path, config: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` over the ``xmkd`` package in ``src`` (first on the path), uncached."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([str(LINT), str(config), "--no-cache"], cwd=config.parent, env=env, capture_output=True,
                          text=True, timeout=300)


def _copy(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of src/xmkd and pyproject.toml to break."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "xmkd", src / "xmkd", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return src, tmp_path / "pyproject.toml"


def test_the_import_contracts_hold() -> None:
    res = _lint(ROOT / "src", ROOT / "pyproject.toml")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Contracts: 2 kept, 0 broken." in res.stdout


def test_a_function_level_import_back_up_breaks_the_layers(tmp_path: Path) -> None:
    src, config = _copy(tmp_path)
    train = src / "xmkd" / "train.py"
    train.write_text(train.read_text() + "\n\ndef _back_up() -> None:\n    from xmkd.experiment import run_seed  # noqa: F401\n")
    res = _lint(src, config)
    assert res.returncode == 1, res.stdout
    assert "layers import one way" in res.stdout and "BROKEN" in res.stdout
    assert "xmkd.train -> xmkd.experiment" in res.stdout


def test_a_module_no_layer_names_breaks_the_layers(tmp_path: Path) -> None:
    src, config = _copy(tmp_path)
    (src / "xmkd" / "helpers.py").write_text('"""A new module nobody placed."""\n')
    res = _lint(src, config)
    assert res.returncode == 1, res.stdout
    assert "xmkd.helpers" in res.stdout
