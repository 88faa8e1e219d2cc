"""The ``features`` params (:class:`FeatureConfig`) and the layout of the feature cache: its files, the manifest's
columns, the subsets that get no evaluation clips."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from xmkd.data.audio import LogMelConfig
from xmkd.errors import ConfigError

#: Columns of ``manifest.parquet``, in order, with their dtypes.
MANIFEST_COLUMNS: dict[str, str] = {
    "id": "string",
    "subset": "string",
    "label": "string",
    "label_index": "int64",
    "path": "string",  # relative to video_dir, POSIX separators
    "duration_s": "float64",  # s, video stream
    "fps": "float64",  # frames/s, video stream
    "n_video_frames_decoded": "int64",
    "width_in": "int64",  # px, source video
    "height_in": "int64",  # px, source video
    "video_codec": "string",
    "audio_codec": "string",
    "audio_sample_rate_in": "int64",  # Hz, source sound track
    "audio_channels_in": "int64",
    "audio_seconds_in": "float64",  # s, decoded source sound track
    "audio_padded_s": "float64",  # s of zeros appended to reach features.audio_seconds
}

FILES = ("frames.npy", "logmel.npy", "manifest.parquet", "labels.json", "report.json")
#: Files of the multi-clip evaluation input (only with ``features.eval_clips > 1``).
EVAL_FILES = ("eval_frames.npy", "eval_rows.npy")
#: Subsets whose rows get no evaluation clips; the rows of every other subset do.
TRAINING_SUBSETS: tuple[str, ...] = ("training", "train")


@dataclass(frozen=True)
class FeatureConfig:
    """The ``features`` section of params.yaml.

    Attributes:
        video_dir: folder of video files (relative paths resolve against the working directory).
        annotation: annotation JSON (reference format, see module docstring).
        frames: T, frames per clip, the centre frames of T equal segments of the video.
        size: px; frames are resized (short side, antialiased) and centre-cropped to size x size.
        sample_rate: Hz; sound is resampled to mono at this rate.
        audio_seconds: s; sound is cropped from t=0 or zero-padded to this length.
        n_fft: FFT size (samples) of the log-mel.
        hop_length: hop (samples) of the log-mel.
        n_mels: mel bands.
        top_db: dB, per-clip dynamic range floor of the log-mel.
        on_error: ``"error"``: a file that is missing, will not decode or has no sound track stops the
            extraction with a :class:`~xmkd.errors.DecodeError`; ``"skip"``: it is left out and listed in
            report.json.
        workers: decoding processes (1 = decode in the calling process). Results do not depend on it.
        eval_clips: K, clips per evaluation video (rows not in :data:`TRAINING_SUBSETS`), averaged at test
            time (the paper: 3). K > 1 also writes ``eval_frames.npy`` / ``eval_rows.npy``; K = 1 writes
            neither and changes nothing.
    """

    video_dir: str = "data/benchmark/videos"
    annotation: str = "data/benchmark/annotation.json"
    frames: int = 8
    size: int = 32
    sample_rate: int = 8000
    audio_seconds: float = 1.0
    n_fft: int = 256
    hop_length: int = 80
    n_mels: int = 40
    top_db: float = 80.0
    on_error: Literal["error", "skip"] = "error"
    workers: int = 2
    eval_clips: int = 1

    def __post_init__(self) -> None:
        for name in ("frames", "size", "sample_rate", "n_fft", "hop_length", "n_mels", "workers", "eval_clips"):
            if getattr(self, name) < 1:
                raise ValueError(f"features.{name} must be >= 1, got {getattr(self, name)}")
        if self.audio_seconds <= 0:
            raise ValueError(f"features.audio_seconds must be > 0, got {self.audio_seconds}")
        if self.top_db <= 0:
            raise ValueError(f"features.top_db must be > 0, got {self.top_db}")
        if self.hop_length > self.n_fft:
            raise ValueError(f"features.hop_length ({self.hop_length}) must be <= features.n_fft ({self.n_fft})")
        if self.on_error not in ("error", "skip"):
            raise ValueError(f"features.on_error must be 'error' or 'skip', got {self.on_error!r}")

    def logmel_config(self) -> LogMelConfig:
        """The :class:`~xmkd.data.audio.LogMelConfig` these parameters describe."""
        return LogMelConfig(
            sample_rate=self.sample_rate, audio_seconds=self.audio_seconds, n_fft=self.n_fft,
            hop_length=self.hop_length, n_mels=self.n_mels, top_db=self.top_db,
        )


def config_from_params(params: dict[str, Any]) -> FeatureConfig:
    """Parse the ``features`` section of a params dict into a :class:`FeatureConfig`.

    Raises:
        ConfigError: on unknown keys, wrong types or invalid values.
    """
    from xmkd.config import parse_section

    section = params.get("features")
    if section is not None and not isinstance(section, dict):
        raise ConfigError("params.yaml section 'features' must be a mapping of keys to values.")
    return parse_section(FeatureConfig, section, "features")
