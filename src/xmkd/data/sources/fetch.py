"""The stage: the ``sources`` params (:class:`SourcesConfig`) and :func:`fetch_sources`, which assembles
``data/raw`` from the mirror or upstream in a temporary folder, writes ``SOURCES.json`` and moves it into place."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xmkd.data.sources.layout import ESC50_AUDIO_DIR, FSDD_DIR, MIRROR_ENV, SOURCES_FILE
from xmkd.data.sources.manifest import load_manifest, sha256_file
from xmkd.data.sources.mirror import copy_from_mirror, resolve_mirror
from xmkd.data.sources.upstream import SOURCE_INFO, download_sources
from xmkd.errors import ConfigError

log = logging.getLogger(__name__)


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
