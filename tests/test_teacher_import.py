"""Precomputed teacher embeddings (src/xmkd/teacher_import/, stages/import_teacher.py) on REAL data: the PANNs CNN14
UCF51 embeddings of the data mirror (``ucf51/audiocnn14embed512_features.tar.gz`` + ``ucf51/annotation.json``),
restricted to 8 classes (all their videos), read straight from the archive; bad inputs in tmp folders."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from xmkd.data.features import MANIFEST_COLUMNS, load_annotation
from xmkd.errors import ConfigError, DataError
from xmkd.teacher_import import TeacherImportConfig, import_teacher
from xmkd.teacher_import.embeddings import load_embeddings
from xmkd.teacher_import.head import head_logits, topk_accuracy, train_head
from xmkd.teacher_import.importer import main

REPO = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("XMKD_DATA_MIRROR", REPO.parent / "shared" / "datasets"))
TAR = MIRROR / "ucf51" / "audiocnn14embed512_features.tar.gz"
ANNOTATION = MIRROR / "ucf51" / "annotation.json"
CLASSES = ["Archery", "BlowDryHair", "HandStandPushups", "IceDancing", "PlayingCello", "Rafting", "Surfing", "Typing"]

pytestmark = pytest.mark.skipif(not (TAR.is_file() and ANNOTATION.is_file()), reason="UCF51 files not in the mirror")

FAST = dict(epochs=30)  # keeps the file well under a minute; the defaults are measured on the full split (README)


@pytest.fixture(scope="module")
def subset(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The 8-class subset: its annotation file, the entries in pipeline order, and the raw .npy of every video
    (read independently of the module under test) in a directory tree ``<Class>/<id>.npy``."""
    root = tmp_path_factory.mktemp("ucf8")
    ref = json.loads(ANNOTATION.read_text())
    db = {k: v for k, v in ref["database"].items() if v["label"] in CLASSES}
    (root / "annotation.json").write_text(json.dumps({"labels": CLASSES, "database": db}))
    _, entries = load_annotation(root / "annotation.json")
    raw: dict[str, np.ndarray] = {}
    tree = root / "tree" / "audiocnn14embed512_features"
    with tarfile.open(TAR) as tf:
        for m in tf:
            name = m.name.split("/")[-1]
            if m.isfile() and name[:-4] in db and not name.startswith("."):
                data = tf.extractfile(m).read()
                raw[name[:-4]] = np.load(io.BytesIO(data))
                (tree / m.name.split("/")[-2]).mkdir(parents=True, exist_ok=True)
                (tree / m.name.split("/")[-2] / name).write_bytes(data)
    return {"root": root, "entries": entries, "raw": raw, "tree": root / "tree"}


def cfg(source: Path | str, **kw: object) -> TeacherImportConfig:
    return TeacherImportConfig(source=str(source), **{**FAST, **kw})


def test_import_aligns_ids_and_trains_a_head_well_above_chance(subset: dict) -> None:
    entries = subset["entries"]
    ids = [e[0] for e in entries]
    assert len(ids) == 1094 and sum(e[1] == "validation" for e in entries) == 301
    out = import_teacher(cfg(TAR), ids, [e[3] for e in entries], [e[1] for e in entries], len(CLASSES),
                         label_names=CLASSES)
    assert out.ids == ids and out.embeddings.shape == (1094, 512) and out.embeddings.dtype == np.float32
    for i in (0, 500, 1093):  # row i is the file of ids[i], bit for bit
        np.testing.assert_array_equal(out.embeddings[i], subset["raw"][ids[i]])
    assert out.logits.shape == (1094, 8) and out.logits.dtype == np.float32 and np.isfinite(out.logits).all()
    m = out.metrics
    assert m["n_train"] == 793 and m["n_val"] == 301 and m["dim"] == 512 and m["n_missing"] == 0
    assert m["n_unused_embeddings"] == 6837 - 1094
    # folders say HandstandPushups, the labels HandStandPushups: same class, case-insensitively
    assert m["n_folder_label_mismatch"] == 0
    assert m["val_top1"] > 0.6, m  # chance is 1/8
    assert m["train_top1"] > 0.6 and m["val_top5"] >= m["val_top1"]
    val = np.flatnonzero(out.subsets == "validation")
    assert m["val_top1"] == pytest.approx(topk_accuracy(out.logits[val], out.labels[val]))
    # seeded: the same config gives the same head
    head, _ = train_head(out.embeddings, out.labels, np.flatnonzero(out.subsets == "training"), 8, cfg(TAR))
    np.testing.assert_array_equal(head_logits(head, out.embeddings), out.logits)


def test_directory_source_equals_archive_and_mlp_head(subset: dict) -> None:
    ids = [e[0] for e in subset["entries"]][::-1]  # any requested order is honoured
    a = load_embeddings(TAR, ids)
    d = load_embeddings(subset["tree"], ids)
    assert a.ids == d.ids == ids
    np.testing.assert_array_equal(a.embeddings, d.embeddings)
    out = import_teacher(cfg(subset["tree"], head="mlp", hidden_dim=64), ids, [0] * len(ids),
                         ["training"] * len(ids), 8)
    assert out.logits.shape == (len(ids), 8)


def test_missing_embeddings_error_or_skip(subset: dict) -> None:
    entries = subset["entries"][:40]
    ids = [e[0] for e in entries] + ["v_Nope_g01_c01", "v_Nope_g01_c02"]
    with pytest.raises(DataError, match=r"2 of 42 clips have no teacher embedding.*v_Nope_g01_c01, v_Nope_g01_c02"):
        load_embeddings(subset["tree"], ids)
    got = load_embeddings(subset["tree"], ids, on_missing="skip")
    assert got.missing == ["v_Nope_g01_c01", "v_Nope_g01_c02"] and got.ids == ids[:40]
    out = import_teacher(cfg(subset["tree"], on_missing="skip"), ids, [0] * 42, ["training"] * 42, 8)
    assert out.metrics["n_missing"] == 2 and len(out.ids) == 40
    with pytest.raises(DataError, match="none of the 1 clip ids"):
        load_embeddings(subset["tree"], ["v_Nope_g01_c01"], on_missing="skip")
    with pytest.raises(DataError, match="not found"):
        load_embeddings(subset["root"] / "absent.tar.gz", ids)


def test_cli_scores_the_head_alone(subset: dict, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--annotation", str(subset["root"] / "annotation.json"), "--source", str(subset["tree"]), "--epochs", "5",
          "--head", "mlp", "--hidden-dim", "32"])
    m = json.loads(capsys.readouterr().out)
    assert m["n_train"] == 793 and m["n_val"] == 301 and 0.125 < m["val_top1"] <= 1
    with pytest.raises(SystemExit) as e:
        main(["--annotation", str(subset["root"] / "annotation.json"), "--source", str(subset["tree"]), "--lr", "0"])
    assert e.value.code == 1 and "error: teacher_import.lr must be > 0" in capsys.readouterr().err


def _tree(tmp_path: Path, arrays: dict[str, np.ndarray]) -> Path:
    for rel, arr in arrays.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / rel, arr)
    return tmp_path


def test_bad_embeddings(tmp_path: Path) -> None:
    ok = np.ones(512, np.float32)
    ids = ["a", "b", "c"]
    src = _tree(tmp_path / "shape", {"X/a.npy": ok, "X/b.npy": ok, "Y/c.npy": np.ones(256, np.float32)})
    with pytest.raises(DataError, match=r"1 teacher embedding\(s\) differ from the shape \(512,\).*c\.npy has shape \(256,\)"):
        load_embeddings(src, ids)
    src = _tree(tmp_path / "seq", {f"X/{i}.npy": np.ones((3, 512), np.float32) for i in ids})
    with pytest.raises(DataError, match=r"one vector per video.*\(3, 512\)"):
        load_embeddings(src, ids)
    nan = ok.copy()
    nan[7] = np.nan
    src = _tree(tmp_path / "nan", {"X/a.npy": ok, "X/b.npy": nan, "X/c.npy": ok})
    with pytest.raises(DataError, match=r"1 teacher embedding\(s\) hold NaN or inf.*b\.npy"):
        load_embeddings(src, ids)
    src = _tree(tmp_path / "dup", {"X/a.npy": ok, "Y/a.npy": ok, "X/b.npy": ok, "X/c.npy": ok})
    with pytest.raises(DataError, match=r"id 'a' occurs twice"):
        load_embeddings(src, ids)
    src = _tree(tmp_path / "junk", {"X/a.npy": ok, "X/b.npy": ok, "X/c.npy": ok[None], "X/._a.npy": ok[:3],
                                    "__MACOSX/X/b.npy": ok[:3]})  # (1, D) is fine; macOS junk is ignored
    assert load_embeddings(src, ids).embeddings.shape == (3, 512)
    (tmp_path / "junk" / "X" / "b.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match=r"b\.npy is not a valid \.npy"):
        load_embeddings(src, ids)
    (tmp_path / "broken.tar.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match="tar archive|corrupt"):
        load_embeddings(tmp_path / "broken.tar.gz", ids)
    with pytest.raises(ValueError, match="source is empty"):
        TeacherImportConfig()


# ----------------------------------------------------------------------------------------------- the stage


def _stage():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("import_teacher_stage", REPO / "stages" / "import_teacher.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def _fake_cache(root: Path, ids: list[str], subsets: list[str], labels: list[int], names: list[str]) -> None:
    """A feature cache with the given rows (frames/log-mels are 1-pixel placeholders: only the ids matter here)."""
    root.mkdir(parents=True)
    n = len(ids)
    np.save(root / "frames.npy", np.zeros((n, 1, 1, 1, 3), np.uint8))
    np.save(root / "logmel.npy", np.zeros((n, 1, 1), np.float32))
    rows = {c: [0] * n for c in MANIFEST_COLUMNS}
    rows.update(id=ids, subset=subsets, label=[names[i] for i in labels], label_index=labels, path=ids)
    for c, t in MANIFEST_COLUMNS.items():
        if t == "string" and c not in ("id", "subset", "label", "path"):
            rows[c] = [""] * n
    pd.DataFrame(rows).astype(MANIFEST_COLUMNS).to_parquet(root / "manifest.parquet", index=False)
    (root / "labels.json").write_text(json.dumps(names))
    (root / "report.json").write_text("{}")


def test_stage_writes_outputs_in_cache_order_and_fails_cleanly(
    subset: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stage = _stage()
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "dvc.yaml").write_text("stages: {}\n")
    params = {"features": {"annotation": str(subset["root"] / "annotation.json")},
              "teacher_import": {"source": str(TAR), "epochs": 5}}
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(proj)
    logged: dict[str, float] = {}

    class Run:  # MLflow itself is covered by the pipeline test; here only what the stage hands it
        def log_metrics(self, m: dict[str, float], step: int | None = None) -> None:
            logged.update(m)

        def log_artifact(self, path: object) -> None:
            assert Path(str(path)).is_file()

    @contextlib.contextmanager
    def fake_stage_run(name: str, params: dict | None = None) -> Iterator[Run]:
        yield Run()

    monkeypatch.setattr(stage, "stage_run", fake_stage_run)
    entries = subset["entries"]

    # no feature cache: the annotation's order (as extract_features would sort it)
    ids, labels, subsets, names, origin = stage.clips(params)
    assert ids == [e[0] for e in entries] and names == CLASSES and origin.endswith("annotation.json")

    # a feature cache (videos of 3 classes only, val first): its manifest order wins
    pick = [e for e in entries if e[2] in ("Archery", "Typing", "HandStandPushups")][::-1]
    _fake_cache(proj / "data/features", [e[0] for e in pick], [e[1] for e in pick], [e[3] for e in pick], CLASSES)
    stage.main()
    written = (proj / "data/teacher/ids.txt").read_text().split("\n")[:-1]
    assert written == [e[0] for e in pick]
    emb = np.load(proj / "data/teacher/embeddings.npy")
    logits = np.load(proj / "data/teacher/logits.npy")
    assert emb.shape == (len(pick), 512) and logits.shape == (len(pick), 8)
    np.testing.assert_array_equal(emb[0], subset["raw"][pick[0][0]])
    metrics = json.loads((proj / "metrics/teacher.json").read_text())
    assert metrics["n_train"] + metrics["n_val"] == len(pick) and 0 <= metrics["val_top1"] <= 1
    assert logged["val_top1"] == pytest.approx(metrics["val_top1"], abs=1e-6) and "head_loss" in logged
    assert sorted(p.name for p in (proj / "data").iterdir()) == ["features", "teacher"]  # no temp dirs left

    # a failing import leaves the previous outputs untouched
    before = {p: p.read_bytes() for p in [*(proj / "data/teacher").iterdir(), proj / "metrics/teacher.json"]}
    params["teacher_import"]["source"] = str(tmp_path / "missing.tar.gz")
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(DataError, match="not found"):
        stage.main()
    assert {p: p.read_bytes() for p in before} == before
    # skipping clips of a feature cache would leave data/teacher shorter than the cache: refused, nothing written
    params["teacher_import"] = {"source": str(TAR), "epochs": 5, "on_missing": "skip"}
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.rmtree(proj / "data/features")
    _fake_cache(proj / "data/features", ["v_Nope_g01_c01", pick[0][0]], ["training", "training"], [0, 0], CLASSES)
    with pytest.raises(DataError, match=r"1 clips of the feature cache have no teacher embedding \(v_Nope_g01_c01\)"):
        stage.main()
    assert {p: p.read_bytes() for p in before} == before
    params["teacher_import"] = {"source": str(TAR), "epoch": 5}
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        stage.main()
    assert sorted(p.name for p in (proj / "data").iterdir()) == ["features", "teacher"]

