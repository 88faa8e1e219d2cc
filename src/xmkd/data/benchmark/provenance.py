"""The benchmark's record of its clips: ``provenance.parquet`` (one row per :class:`ClipPlan`) and
``annotation.json`` (the reference implementation's format)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xmkd.data.benchmark.config import NUM_CLASSES
from xmkd.data.benchmark.plan import ClipPlan

PROVENANCE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "string"), ("subset", "string"), ("label", "int64"), ("path", "string"),
    ("mnist_origin", "string"), ("mnist_index", "int64"), ("audio_condition", "string"),
    ("spoken_digit", "int64"), ("fsdd_file", "string"), ("fsdd_crop_start", "int64"),
    ("speech_offset", "int64"), ("esc50_file", "string"), ("esc50_category", "string"),
    ("esc50_offset", "int64"), ("snr_db", "float64"), ("start_x", "float64"), ("start_y", "float64"),
    ("velocity_x", "float64"), ("velocity_y", "float64"),
)  # fmt: skip


def write_provenance(plans: list[ClipPlan], path: Path) -> None:
    """Write ``provenance.parquet``: one row per clip sorted by id, fixed schema (see PROVENANCE_COLUMNS)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = sorted(plans, key=lambda p: p.id)
    schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in PROVENANCE_COLUMNS])
    columns = {name: [getattr(p, name) for p in rows] for name, _ in PROVENANCE_COLUMNS}
    table = pa.table(columns, schema=schema)
    pq.write_table(table, path, compression="zstd")


def annotation(plans: list[ClipPlan]) -> dict[str, Any]:
    """The reference implementation's annotation: ``{"labels": [...], "database": {id: {subset, label}}}``."""
    return {
        "labels": [str(d) for d in range(NUM_CLASSES)],
        "database": {p.id: {"subset": p.subset, "label": str(p.label)} for p in sorted(plans, key=lambda p: p.id)},
    }
