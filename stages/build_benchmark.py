"""Stage ``build_benchmark``: build the default audio-visual digit-video benchmark.

deps: ``data/raw`` (and the modules this script imports, dvc.yaml); params: ``benchmark``;
outs: ``data/benchmark`` (videos/<label>/<id>.mp4, annotation.json, provenance.parquet, recipe.json);
metrics: ``metrics/dataset.json``. See :mod:`xmkd.data.benchmark`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from xmkd.cli import run_main
from xmkd.config import load_params
from xmkd.data.benchmark import build_benchmark, config_from_params
from xmkd.progress import progress_callback

RAW_DIR = "data/raw"
OUT_DIR = "data/benchmark"
METRICS = "metrics/dataset.json"
WORKERS = 2


def main() -> None:
    """Parse ``benchmark``, build it, log counts and timing, write ``metrics/dataset.json``."""
    from xmkd.tracking import stage_run

    cfg = config_from_params(load_params())
    with stage_run("build_benchmark", {"benchmark": asdict(cfg)}) as run:
        with progress_callback("build_benchmark: encoding", unit="clip") as progress:
            result = build_benchmark(cfg, RAW_DIR, OUT_DIR, workers=WORKERS, progress=progress)
        metrics = {f"{split}_{k}": v for split, c in result.counts.items() for k, v in c.items()}
        metrics["pca_explained_variance_kept"] = result.recipe["pca"]["explained_variance_kept"]
        Path(METRICS).parent.mkdir(parents=True, exist_ok=True)
        Path(METRICS).write_text(json.dumps(metrics, sort_keys=True, indent=1) + "\n")
        run.log_metrics(
            {**metrics, "build_seconds": result.seconds, "clips_per_second": result.n_clips / result.seconds}
        )
        run.log_artifact(f"{OUT_DIR}/recipe.json")
    print(
        f"build_benchmark: {result.n_clips} clips -> {OUT_DIR} in {result.seconds:.1f} s ({WORKERS} encoder processes)"
    )


if __name__ == "__main__":
    run_main(main)
