"""Stage ``sources``: copy (from a local mirror) or download the raw sources into ``data/raw``.

params: ``sources`` (``mirror``, ``timeout_s``; env ``XMKD_DATA_MIRROR`` overrides ``mirror``);
outs: ``data/raw`` (with ``data/raw/SOURCES.json``). See :mod:`xmkd.data.sources`.
"""

from __future__ import annotations

import time
from dataclasses import asdict

from xmkd.cli import run_main
from xmkd.config import load_params
from xmkd.data.sources import SOURCES_FILE, fetch_sources, parse_config

OUT_DIR = "data/raw"


def main() -> None:
    """Parse ``sources``, fetch and verify the raw files, log counts and timing to the tracking store."""
    from xmkd.tracking import stage_run

    cfg = parse_config(load_params())
    with stage_run("sources", {"sources": asdict(cfg)}) as run:
        t0 = time.perf_counter()
        doc = fetch_sources(OUT_DIR, cfg)
        seconds = time.perf_counter() - t0
        run.log_metrics({**{k: float(v) for k, v in doc["counts"].items()}, "sources_seconds": seconds})
        run.set_tags({"xmkd.sources.method": doc["method"]})
        run.log_artifact(f"{OUT_DIR}/{SOURCES_FILE}")
    counts = ", ".join(f"{k}={v}" for k, v in sorted(doc["counts"].items()))
    print(f"sources: {counts} -> {OUT_DIR} ({doc['method']}, verified) in {seconds:.1f} s")


if __name__ == "__main__":
    run_main(main)
