"""Stage 2: build the default audio-visual digit-video benchmark (``data/benchmark/``).

Each clip is a real MP4 (H.264 video + AAC sound) of ``frames / fps`` seconds:

* **Video** - a real MNIST digit moving inside a black ``size x size`` frame (Moving MNIST,
  Srivastava et al. 2015), degraded AV-MNIST style by keeping only ``pca_keep`` principal
  components (Vielzeuf et al. 2018). Training-origin digits (``mnist_5k.csv.gz``, 500 per class)
  make the training and validation clips, test-origin digits (first 8,000 of t10k) the test clips;
  every clip of a split uses a distinct image.
* **Audio** - ``sample_rate`` Hz mono. A *clean* clip has a spoken FSDD recording of the same digit
  (official split: takes 0-4 for test clips, 5-49 for training/validation clips) mixed with ESC-50
  background (per class, the first 6 of its 8 fold-4 clips by name for training/validation, the
  last 2 for test) at a seeded SNR. For an exact, seeded fraction ``irrelevant_rate`` of the clips the
  sound is *irrelevant*: either *mismatched* (another digit is spoken) or *background* (ESC-50 only).

Recipe details (the exact algorithm; recorded in ``recipe.json``):

* Seeding: every random choice comes from ``numpy.random.SeedSequence(seed, spawn_key=...)``:
  ``(split, 0, i)`` for clip ``i`` of a split (split codes train 0, val 1, test 2), ``(split, 1, b)``
  for block ``b`` (clips ``10b .. 10b+9``) and ``(3, origin, digit)`` for the order in which a
  class's MNIST images are used (origin 0 = train, 1 = test). Nothing depends on how many clips
  are built, so a subset (smaller ``n_*``) reproduces the first clips of a full
  build exactly - except the *pixels* of the videos, which depend on the PCA fitted on the
  training split's digits (see below).
* Labels: each block of 10 consecutive clips holds every digit once, in a seeded order, so the
  splits are exactly balanced (``n_*`` must be multiples of 10).
* Digits: the k-th clip of digit ``d`` in a split takes image ``k`` of the seeded permutation of the
  class-``d`` images of its origin (validation clips take the permutation from its end, so train
  and validation images never overlap).
* Irrelevant clips: block ``b`` has ``R(10 r (b+1)) - R(10 r b)`` of them (``r`` = irrelevant_rate,
  ``R`` = round half up), so every split has exactly ``R(r n)``; of the block's irrelevant clips
  ``R(s I') - R(s I)`` (``I``, ``I'`` = irrelevant clips before/after the block, ``s`` =
  mismatch_share) are mismatched, so exactly ``R(s R(r n))`` per split. They go to the digits with
  the fewest irrelevant clips so far and, among those, the ones furthest below their mismatched
  share (ties broken by seeded draws), so every digit gets the same share to within a clip.
* Video: PCA (scikit-learn, ``svd_solver="full"``) fitted on the training split's digits (28x28,
  0-255), every digit reconstructed from ``pca_keep`` components (0 = no PCA) and clipped to
  [0, 255], resized to ``digit_size`` (antialiased bilinear, torchvision, float64), snapped to a
  1/1024 grey-level grid (so that no CPU's last-bit differences change a pixel), then moved: start
  position uniform in ``[0, size - digit_size]^2``, direction uniform in [0, 2 pi), speed uniform in
  ``speed`` px/frame, reflected at the walls (positions rounded to whole px); composited on black
  (max), plus optional Gaussian pixel noise (std ``pixel_noise``), uint8 gray replicated to RGB.
* Audio: window of ``S = round(sample_rate * frames / fps)`` samples. Speech longer than the window
  is cut to its window-length segment of maximum energy, shorter speech is placed at a seeded
  offset. Background: a seeded ESC-50 clip of the split's pool; up to 5 seeded window-length
  segments are tried and the first whose RMS exceeds ``BACKGROUND_RMS_FLOOR`` is kept (else the
  clip's loudest window). It is scaled so that speech power (over the speech's own samples) /
  background power = ``snr_db`` (uniform in the range). The mixture (or the background alone) is
  normalised to RMS ``TARGET_RMS`` and clipped to [-1, 1].
* Encoding: PyAV, libx264 (yuv420p, crf ``video_crf``, ``fps``, one thread, ``cpu-independent=1``,
  frames converted to YUV bit-exactly) and FLAC (lossless 16-bit mono; ``audio_codec: aac`` for
  ffmpeg's AAC at ``AAC_BIT_RATE``), in a pool of worker processes; each file depends only on its
  clip, not on the worker count, the process or the x86-64 CPU (:mod:`xmkd.data.codec`).


Outputs: ``videos/<label>/<id>.mp4``, ``annotation.json`` (the reference implementation's format),
``provenance.parquet`` (one row per clip, see :data:`~xmkd.data.benchmark.provenance.PROVENANCE_COLUMNS`),
``recipe.json``.

The package follows the recipe's sections, each module importing only the ones before it:
:mod:`~xmkd.data.benchmark.config` (params, constants) -> :mod:`~xmkd.data.benchmark.raw` (decoded sources, pools)
-> :mod:`~xmkd.data.benchmark.plan` (every random choice of every clip) -> :mod:`~xmkd.data.benchmark.render`
(frames, sound) and :mod:`~xmkd.data.benchmark.provenance` (provenance.parquet, annotation.json);
:mod:`~xmkd.data.benchmark.encode` writes the MP4 files and :mod:`~xmkd.data.benchmark.build` is the stage
(:func:`build_benchmark`, recipe.json).
"""

from __future__ import annotations

from xmkd.data.benchmark.build import BenchmarkResult, build_benchmark
from xmkd.data.benchmark.config import BenchmarkConfig, config_from_params
from xmkd.data.benchmark.raw import RawData, load_raw

__all__ = ["BenchmarkConfig", "BenchmarkResult", "RawData", "build_benchmark", "config_from_params", "load_raw"]
