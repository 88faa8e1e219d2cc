"""Log-mel front end shared by feature extraction (clips) and teacher pretraining (FSDD).

One function computes every log-mel in the project, so the teacher sees the same input
representation at pretraining time and when it embeds the benchmark's clips.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torchaudio


@dataclass(frozen=True)
class LogMelConfig:
    """Parameters of the log-mel spectrogram (``features`` section of params.yaml).

    Attributes:
        sample_rate: Hz; audio is resampled to this rate, mono, before the transform.
        audio_seconds: length in seconds every sound track is cropped or zero-padded to.
        n_fft: FFT size in samples (also the window length).
        hop_length: hop in samples.
        n_mels: number of mel bands.
        top_db: dynamic range floor of the dB conversion (per clip, relative to its max).
    """

    sample_rate: int = 8000
    audio_seconds: float = 1.0
    n_fft: int = 256
    hop_length: int = 80
    n_mels: int = 40
    top_db: float = 80.0

    @property
    def n_samples(self) -> int:
        """Samples per sound track: ``round(sample_rate * audio_seconds)``."""
        return int(round(self.sample_rate * self.audio_seconds))

    @property
    def n_frames(self) -> int:
        """Log-mel frames per sound track (centre-padded STFT)."""
        return self.n_samples // self.hop_length + 1


@lru_cache(maxsize=8)
def _mel(cfg: LogMelConfig) -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, n_mels=cfg.n_mels, power=2.0
    )


def fit_length(wave: torch.Tensor, n_samples: int) -> torch.Tensor:
    """Crop (from the start) or zero-pad the last axis of ``wave`` to ``n_samples``."""
    if wave.shape[-1] >= n_samples:
        return wave[..., :n_samples]
    return torch.nn.functional.pad(wave, (0, n_samples - wave.shape[-1]))


def logmel(wave: torch.Tensor, cfg: LogMelConfig) -> torch.Tensor:
    """Log-mel spectrogram in dB.

    Args:
        wave: (S,) or (B, S) float waveform at ``cfg.sample_rate``, values in [-1, 1].
            It is cropped or zero-padded to ``cfg.n_samples`` first.
        cfg: transform parameters.

    Returns:
        (n_mels, n_frames) or (B, n_mels, n_frames) float32, dB re. each clip's maximum
        power floored at ``-cfg.top_db`` (so a silent clip is a constant, not -inf).
    """
    # torchaudio's AmplitudeToDB floors at top_db below the max of the *whole batch* for 3-D input,
    # which would make a clip's features depend on its batch-mates; the floor here is per clip.
    wave = fit_length(wave.float(), cfg.n_samples)
    power = _mel(cfg)(wave)  # (..., n_mels, n_frames)
    db = 10.0 * torch.log10(power.clamp_min(1e-10))
    peak = db.amax(dim=(-2, -1), keepdim=True)
    return torch.maximum(db, peak - cfg.top_db).float()

