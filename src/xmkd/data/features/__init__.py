"""Feature extraction (stage ``extract_features``): a folder of videos + an annotation -> a feature cache.

Input: any folder of video files and an annotation in the reference implementation's format::

    {"labels": ["ClassA", ...], "database": {"<id>": {"subset": "training", "label": "ClassA"}, ...}}

Each id is looked up as ``<video_dir>/<label>/<id>.<ext>`` (UCF101 layout; the benchmark's layout too), or as
``<id>.<ext>`` anywhere under ``video_dir`` if that is unique. Output (``data/features/``):

- ``frames.npy``: uint8 (N, T, size, size, 3) RGB, written row by row through a memory map.
- ``logmel.npy``: float32 (N, n_mels, n_frames), :func:`xmkd.data.audio.logmel` of each sound track.
- ``manifest.parquet``: row i describes sample i (see :data:`~xmkd.data.features.config.MANIFEST_COLUMNS`).
- ``labels.json``: the annotation's class names; ``label_index`` indexes this list.
- ``report.json``: counts, skipped files by reason, the config used.
- only with ``features.eval_clips = K > 1``: ``eval_frames.npy``, uint8 (M, K, T, size, size, 3), ``K``
  evaluation clips (:func:`xmkd.data.video.clip_indices`) of each of the M rows of an evaluation subset
  (every subset except :data:`~xmkd.data.features.config.TRAINING_SUBSETS`), and ``eval_rows.npy``, int64
  (M,), the ascending cache rows they belong to. Training rows get no extra clips: they are trained on, and serve as the retrieval
  gallery, with their single clip. With K = 1 neither file is written and the cache is byte-identical to
  one written before the option existed.

:class:`FeatureCache` reads it back (memory-mapped) for training.

The package, module by module: :mod:`~xmkd.data.features.config` (params, the cache's files and manifest columns),
:mod:`~xmkd.data.features.annotation` (the annotation and each entry's file), :mod:`~xmkd.data.features.decode`
(one video's arrays, the ordered process pool), :mod:`~xmkd.data.features.extract` (the stage: the cache written
atomically, report.json) and :mod:`~xmkd.data.features.cache` (:class:`FeatureCache`).
"""

from __future__ import annotations

from xmkd.data.features.annotation import index_video_dir, load_annotation, resolve_videos
from xmkd.data.features.cache import FeatureCache
from xmkd.data.features.config import MANIFEST_COLUMNS, FeatureConfig, config_from_params
from xmkd.data.features.extract import ExtractionResult, extract_features

__all__ = [
    "MANIFEST_COLUMNS",
    "ExtractionResult",
    "FeatureCache",
    "FeatureConfig",
    "config_from_params",
    "extract_features",
    "index_video_dir",
    "load_annotation",
    "resolve_videos",
]
