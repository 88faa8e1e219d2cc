"""Build the test suite's small benchmark in a fresh process (used by tests/test_benchmark.py).

    python tests/build_small_benchmark.py OUT [--workers N] [--baseline-cpu]

``--baseline-cpu`` builds it as a CPU without any SIMD extension would: FFmpeg's CPU flags are forced
to none (``av_force_cpu_flags(0)``: swscale, the FLAC/AAC encoders and libavutil's DSP run their C
code), x264 runs without assembly (``no-asm``), and the caller sets ``OPENBLAS_CORETYPE=Prescott`` and
``ATEN_CPU_CAPABILITY=default`` for the PCA and the resize. Thread counts come from the environment
(``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``).
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import os
from pathlib import Path

import av

from xmkd.data import benchmark as bm
from xmkd.data import codec

SMALL = bm.BenchmarkConfig(n_train=40, n_val=10, n_test=20)  #: the configuration of tests/test_benchmark.py


def force_baseline_cpu() -> None:
    """No SIMD in FFmpeg (this process) and none in x264 (every encoder opened from now on)."""
    libs = glob.glob(os.path.join(os.path.dirname(av.__file__), os.pardir, "av.libs", "libavutil-*.so*"))
    if not libs:
        raise SystemExit("cannot find the libavutil bundled with PyAV (av.libs/) to force its CPU flags")
    ctypes.CDLL(libs[0]).av_force_cpu_flags(0)
    codec.X264_PARAMS = "cpu-independent=1:no-asm=1"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--baseline-cpu", action="store_true")
    a = ap.parse_args()
    if a.baseline_cpu:
        force_baseline_cpu()
    mirror = os.environ.get("XMKD_DATA_MIRROR") or str(Path(__file__).resolve().parents[2] / "shared" / "datasets")
    bm.build_benchmark(SMALL, mirror, a.out, workers=a.workers)
