"""Stage ``extract_features``: decode every annotated video into ``data/features`` (frames + log-mels).

deps: ``features.video_dir``, ``features.annotation`` (and the modules this script imports, dvc.yaml);
params: ``features``; outs: ``data/features``. See :mod:`xmkd.data.features`.
"""

from __future__ import annotations

from dataclasses import asdict

from xmkd.cli import run_main
from xmkd.config import load_params
from xmkd.data.features import config_from_params, extract_features
from xmkd.progress import progress_callback

OUT_DIR = "data/features"


def main() -> None:
    """Parse ``features`` from params.yaml, extract, log counts and timing to the tracking store."""
    from xmkd.tracking import stage_run

    cfg = config_from_params(load_params())
    with stage_run("extract_features", {"features": asdict(cfg)}) as run:
        with progress_callback("extract_features: decoding", unit="video") as progress:
            result = extract_features(cfg, OUT_DIR, progress=progress)
        metrics = {
            "n_annotated": float(result.n_annotated),
            "n_decoded": float(result.n_decoded),
            "n_skipped": float(len(result.skipped)),
            "extract_seconds": result.seconds,
            "clips_per_second": result.n_decoded / max(result.seconds, 1e-9),
            "audio_padded_clips": float(result.report["audio_padded_clips"]),
        }
        metrics.update({f"skipped_{reason}": float(n) for reason, n in result.skipped_counts().items()})
        run.log_metrics(metrics)
        run.log_artifact(f"{OUT_DIR}/report.json")
    skipped = ", ".join(f"{r}={n}" for r, n in result.skipped_counts().items()) or "none"
    print(
        f"extract_features: {result.n_decoded}/{result.n_annotated} videos -> {OUT_DIR} "
        f"in {result.seconds:.1f} s (skipped: {skipped})"
    )


if __name__ == "__main__":
    run_main(main)
