"""The ``benchmark`` params (:class:`BenchmarkConfig`) and the recipe's fixed constants (levels, splits, conditions)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xmkd.config import parse_section

TARGET_RMS = 0.05  #: RMS of every clip's sound track (full scale = 1)
BACKGROUND_RMS_FLOOR = 1e-3  #: RMS below which a background segment counts as silent (-60 dBFS)
BACKGROUND_TRIES = 5  #: seeded background offsets tried before falling back to the loudest window
AAC_BIT_RATE = 32_000  #: bit/s of the AAC sound track
DIGIT_GRID = 1024  #: prepared digits are multiples of 1/DIGIT_GRID grey level (see prepare_digits)
MAX_IN_FLIGHT = 256  #: rendered clips queued for the encoder pool at most
NUM_CLASSES = 10

#: split name -> (seed code, annotation subset, MNIST origin, FSDD takes, ESC-50 pool)
SPLITS: dict[str, tuple[int, str, str, range, str]] = {
    "train": (0, "training", "train", range(5, 50), "trainval"),
    "val": (1, "validation", "train", range(5, 50), "trainval"),
    "test": (2, "testing", "test", range(0, 5), "test"),
}
CONDITIONS = ("clean", "mismatched", "background")


@dataclass(frozen=True)
class BenchmarkConfig:
    """The ``benchmark`` section of params.yaml.

    Attributes:
        seed: root seed of every random choice.
        n_train / n_val / n_test: clips per split, multiples of 10 (balanced over the digits).
        frames: video frames per clip.
        size: px, frame height = width.
        fps: frames per second; a clip lasts ``frames / fps`` s.
        digit_size: px, side of the resized MNIST digit (<= size).
        speed: [low, high] px/frame, range of the digit's speed.
        pca_keep: PCA components kept (0 = no PCA degradation).
        pixel_noise: std of additive Gaussian pixel noise (0-255 scale), 0 = none.
        snr_db: [low, high] dB, range of the speech-to-background SNR.
        irrelevant_rate: fraction of each split's clips whose sound is irrelevant.
        mismatch_share: share of the irrelevant clips that are 'mismatched' (others 'background').
        sample_rate: Hz of the sound track.
        video_crf: libx264 constant rate factor (0-51, lower = better).
        audio_codec: ``flac`` (lossless 16-bit: the samples decode bit-exactly on every CPU) or
            ``aac`` (lossy, :data:`AAC_BIT_RATE`; its floating-point decoder differs by ~1 ulp between CPUs).
    """

    seed: int = 0
    n_train: int = 4000
    n_val: int = 500
    n_test: int = 1000
    frames: int = 8
    size: int = 32
    fps: int = 8
    digit_size: int = 24
    speed: tuple[float, float] = (1.0, 2.5)
    pca_keep: int = 16
    pixel_noise: float = 0.0
    snr_db: tuple[float, float] = (0.0, 10.0)
    irrelevant_rate: float = 0.3
    mismatch_share: float = 0.5
    sample_rate: int = 8000
    video_crf: int = 18
    audio_codec: str = "flac"

    def __post_init__(self) -> None:
        for name in ("n_train", "n_val", "n_test"):
            n = getattr(self, name)
            if n <= 0 or n % NUM_CLASSES:
                raise ValueError(f"benchmark.{name} must be a positive multiple of 10 (balanced digits), got {n}")
        for name in ("speed", "snr_db"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
                raise ValueError(f"benchmark.{name} must be [low, high] with low <= high, got {list(lo_hi)}")
        if self.speed[0] < 0:
            raise ValueError(f"benchmark.speed must be >= 0 px/frame, got {list(self.speed)}")
        if not 1 <= self.digit_size <= self.size:
            raise ValueError(f"benchmark.digit_size must be in [1, size={self.size}] px, got {self.digit_size}")
        if self.size % 2:
            raise ValueError(f"benchmark.size must be even (H.264 yuv420p), got {self.size}")
        if self.frames < 1 or self.fps < 1 or self.sample_rate < 1000:
            raise ValueError("benchmark.frames and fps must be >= 1 and sample_rate >= 1000 Hz")
        if not 0 <= self.pca_keep <= 784:
            raise ValueError(f"benchmark.pca_keep must be in [0, 784], got {self.pca_keep}")
        if self.pca_keep > self.n_train:
            raise ValueError(
                f"benchmark.pca_keep={self.pca_keep} exceeds the {self.n_train} training digits it is fit on"
            )
        if not (0 <= self.irrelevant_rate <= 1 and 0 <= self.mismatch_share <= 1):
            raise ValueError("benchmark.irrelevant_rate and mismatch_share must be in [0, 1]")
        if self.pixel_noise < 0:
            raise ValueError(f"benchmark.pixel_noise must be >= 0, got {self.pixel_noise}")
        if not 0 <= self.video_crf <= 51:
            raise ValueError(f"benchmark.video_crf must be in [0, 51], got {self.video_crf}")
        if self.audio_codec not in ("flac", "aac"):
            raise ValueError(f"benchmark.audio_codec must be 'flac' (lossless) or 'aac', got {self.audio_codec!r}")

    @property
    def n_samples(self) -> int:
        """Samples per sound track: ``round(sample_rate * frames / fps)``."""
        return int(round(self.sample_rate * self.frames / self.fps))

    def n_clips(self, split: str) -> int:
        """Number of clips of ``split`` (``train``, ``val`` or ``test``)."""
        return int(getattr(self, f"n_{split}"))


def config_from_params(params: dict[str, Any]) -> BenchmarkConfig:
    """Parse the ``benchmark`` section of the params dict.

    Raises:
        ConfigError: unknown/mistyped key or invalid value.
    """
    return parse_section(BenchmarkConfig, params.get("benchmark"), "benchmark")
