"""Where the CORSMAL pipeline (``corsmal/dvc.yaml``) writes, relative to the project root, and what its workers'
fork server imports (standard library only, so a stage imports it before the training code: the light stages
never import that, and the training stages start the fork server first, :mod:`xmkd.workers`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xmkd.errors import ConfigError

OUT = Path("corsmal")
PIPELINE = "corsmal/dvc.yaml"
CONFIGS = OUT / "configs"
REPORTS = OUT / "reports"
SUMMARY = OUT / "metrics" / "summary.json"
#: what the fork server of the (fold, seed) workers (:func:`xmkd.corsmal_run.run_all`) imports once
WORKER_MODULES: tuple[str, ...] = ("xmkd.corsmal_run", "sklearn.metrics")


def fold_dir(fold: int) -> Path:
    """``corsmal/folds/fold-<k>``: the fold's ``annotation.json``, ``teacher/`` outputs and ``teacher.json``."""
    return OUT / "folds" / f"fold-{fold}"


def run_fold_dir(run: str, fold: int) -> Path:
    """``corsmal/runs/<run>/fold-<k>``: ``eval/<run>.json``, ``train/<run>.json``, ``<run>.npz``, ``seed-<s>.pt``."""
    return OUT / "runs" / run / f"fold-{fold}"


def metrics_path(run: str) -> Path:
    """``corsmal/metrics/<run>.json``: per fold the mean over seeds, and the mean over folds (``dvc metrics``)."""
    return OUT / "metrics" / f"{run}.json"


def corsmal_section(params: dict[str, Any], key: str) -> Any:
    """``params["corsmal"][key]``, for the stages that need one key and not the training code's config classes.

    Raises:
        ConfigError: the section or the key is missing.
    """
    section = params.get("corsmal")
    if not isinstance(section, dict) or key not in section:
        raise ConfigError(f"params.yaml lacks 'corsmal.{key}': restore the 'corsmal' section from the repository's "
                          "params.yaml (docs/corsmal.md).")
    return section[key]
