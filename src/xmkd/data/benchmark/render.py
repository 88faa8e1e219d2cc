"""Rendering a planned clip: its sound track (speech over background, levelled), the digit's trajectory and the
frames, and the PCA-degraded, resized digits they are drawn from."""

from __future__ import annotations

import math

import numpy as np

from xmkd.data.benchmark.config import DIGIT_GRID, TARGET_RMS, BenchmarkConfig
from xmkd.data.benchmark.plan import ClipPlan, _rms
from xmkd.data.benchmark.raw import RawData


def render_audio(plan: ClipPlan, raw: RawData, n_samples: int) -> np.ndarray:
    """The clip's sound track, (n_samples,) float32 in [-1, 1] with RMS :data:`TARGET_RMS`."""
    bg = raw.esc50[plan.esc50_file].astype(np.float64)[plan.esc50_offset : plan.esc50_offset + n_samples]
    bg = np.pad(bg, (0, n_samples - bg.shape[0]))
    if plan.fsdd_file is None:
        mix = bg
    else:
        rec = raw.fsdd[plan.fsdd_file].astype(np.float64)
        seg = rec[plan.fsdd_crop_start : plan.fsdd_crop_start + n_samples]
        mix = np.zeros(n_samples)
        mix[plan.speech_offset : plan.speech_offset + seg.shape[0]] = seg
        p_speech, p_bg = _rms(seg) ** 2, _rms(bg) ** 2
        gain = math.sqrt(p_speech / (p_bg * 10.0 ** (plan.snr_db / 10.0))) if p_bg > 0 else 0.0
        mix = mix + gain * bg
    level = _rms(mix)
    if level > 0:
        mix = mix * (TARGET_RMS / level)
    return np.clip(mix, -1.0, 1.0).astype(np.float32)


def trajectory(plan: ClipPlan, cfg: BenchmarkConfig) -> tuple[np.ndarray, np.ndarray]:
    """Integer top-left positions (x, y), each (frames,), of the digit: linear motion reflected at the walls."""
    lim = cfg.size - cfg.digit_size
    t = np.arange(cfg.frames, dtype=np.float64)

    def reflect(p: np.ndarray) -> np.ndarray:
        if lim == 0:
            return np.zeros_like(p)
        return lim - np.abs(np.mod(p, 2 * lim) - lim)

    xs = reflect(plan.start_x + plan.velocity_x * t)
    ys = reflect(plan.start_y + plan.velocity_y * t)
    return np.rint(xs).astype(np.int64), np.rint(ys).astype(np.int64)


def render_video(plan: ClipPlan, digit: np.ndarray, cfg: BenchmarkConfig) -> np.ndarray:
    """The clip's frames, (frames, size, size) uint8 gray, from the (digit_size, digit_size) float digit."""
    canvas = np.zeros((cfg.frames, cfg.size, cfg.size), dtype=np.float32)
    xs, ys = trajectory(plan, cfg)
    d = cfg.digit_size
    for t, (x, y) in enumerate(zip(xs, ys, strict=True)):
        canvas[t, y : y + d, x : x + d] = np.maximum(canvas[t, y : y + d, x : x + d], digit)
    if cfg.pixel_noise > 0:
        canvas += np.random.default_rng(plan.noise_seed).normal(0.0, cfg.pixel_noise, canvas.shape).astype(np.float32)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def prepare_digits(
    cfg: BenchmarkConfig, raw: RawData, plans: list[ClipPlan]
) -> tuple[dict[tuple[str, int], np.ndarray], list[float]]:
    """PCA-degrade and resize every digit the plans use.

    The PCA is fitted on the training split's digits only (28x28 flattened, 0-255).

    Returns:
        ((origin, index) -> (digit_size, digit_size) float32 in [0, 255],
         explained-variance ratio of each kept component).
    """
    import torch
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    keys = sorted({(p.mnist_origin, p.mnist_index) for p in plans})
    x = np.stack([raw.mnist[o][0][i] for o, i in keys]).reshape(len(keys), -1).astype(np.float64)
    ratio: list[float] = []
    if cfg.pca_keep > 0:
        from sklearn.decomposition import PCA

        fit_rows = [p.mnist_index for p in plans if p.split == "train"]
        pca = PCA(n_components=cfg.pca_keep, svd_solver="full").fit(
            raw.mnist["train"][0][fit_rows].reshape(len(fit_rows), -1).astype(np.float64)
        )
        x = pca.inverse_transform(pca.transform(x))
        ratio = [float(r) for r in pca.explained_variance_ratio_]
    x = np.clip(x, 0.0, 255.0).reshape(-1, 1, 28, 28)
    small = TF.resize(
        torch.from_numpy(x),  # float64 throughout: kernel differences stay ~1e-12, far below the grid
        [cfg.digit_size, cfg.digit_size],
        interpolation=InterpolationMode.BILINEAR,
        antialias=True,
    )
    small = small.clamp(0.0, 255.0).numpy()[:, 0]
    # Snap to a 1/DIGIT_GRID grey-level grid, exactly representable in float32: the BLAS / ATen kernels
    # of another CPU change the float64 values in their last bits only, so that the frames rounded from
    # them (render_video) are the same integers on every machine (float32 throughout moved values by
    # up to 4.6e-5 between OpenBLAS/ATen's native and baseline kernels and changed rendered frames).
    small = (np.rint(small * DIGIT_GRID) / DIGIT_GRID).astype(np.float32)
    return {k: small[n] for n, k in enumerate(keys)}, ratio
