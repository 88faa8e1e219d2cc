"""The local mirror and the checks of a raw tree against the manifest: which mirror to use, copying it with every
file's sha256 verified, and the fast presence check of ``data/raw`` that downstream stages run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from xmkd.data.sources.layout import ESC50_AUDIO_DIR, FSDD_DIR, LAYOUT_HELP, MIRROR_ENV
from xmkd.data.sources.manifest import Manifest, load_manifest, sha256_file
from xmkd.errors import DataError


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
