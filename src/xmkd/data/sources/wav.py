"""16-bit PCM WAV files: the format of the FSDD recordings and the ESC-50 clips in ``data/raw``."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np

from xmkd.errors import DataError


def read_wav(data: bytes | Path, where: str) -> tuple[np.ndarray, int]:
    """Decode a 16-bit PCM WAV.

    Returns:
        (wave (channels, S) float32 in [-1, 1), sample rate in Hz).

    Raises:
        DataError: not a 16-bit PCM WAV file.
    """
    try:
        with wave.open(io.BytesIO(data) if isinstance(data, bytes) else str(data), "rb") as w:
            if w.getsampwidth() != 2:
                raise DataError(f"{where}: expected 16-bit PCM, got {8 * w.getsampwidth()}-bit; re-fetch the sources.")
            n_ch, rate = w.getnchannels(), w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    except (wave.Error, EOFError, OSError) as e:
        raise DataError(f"cannot read WAV {where} ({e}); re-fetch it with the 'sources' stage.") from e
    return (pcm.reshape(-1, n_ch).T.astype(np.float32) / 32768.0), rate


def write_wav(path: Path, wave_1d: np.ndarray, rate: int) -> None:
    """Write a mono float waveform (S,) in [-1, 1] as 16-bit PCM WAV (rounded, clipped)."""
    pcm = np.clip(np.rint(np.asarray(wave_1d, dtype=np.float64) * 32768.0), -32768, 32767).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
