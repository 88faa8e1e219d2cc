"""CORSMAL as feature sequences: layout command on a real subset, file checks, the sequence student, one
training step of every method on it (src/xmkd/data/corsmal.py, data/sequences.py, models/sequence.py)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from xmkd.data import corsmal
from xmkd.data.layouts import main as layouts_main
from xmkd.data.sequences import load_sequence, pack_sequences
from xmkd.errors import DataError
from xmkd.methods import Dims, build_method, known_methods, method_config
from xmkd.models.student import StudentConfig, build_student
from xmkd.train import ClipDataset, TrainConfig, make_loader, train

MIRROR = Path(os.environ.get("XMKD_DATA_MIRROR", "../shared/datasets")) / "corsmal"
NAMES = ["s0_fi0_fu0_b0_l0", "s0_fi1_fu1_b0_l0", "s0_fi3_fu2_b0_l0"]  # empty, pasta, water
needs_data = pytest.mark.skipif(not (MIRROR / "vggish").is_dir(), reason="CORSMAL mirror not present")


def _subset(tmp: Path, containers: tuple[int, ...] = (1, 2, 3)) -> Path:
    """A small copy of real files: 3 recordings of each of ``containers`` (water: not in 7-9)."""
    root = tmp / "corsmal"
    for c in containers:
        for n in NAMES:
            src_a = MIRROR / "vggish" / str(c) / f"{n}_audio_vggish.npy"
            (root / "vggish" / str(c)).mkdir(parents=True, exist_ok=True)
            shutil.copy(src_a, root / "vggish" / str(c) / src_a.name)
            (root / "r21d_rgb" / str(c)).mkdir(parents=True, exist_ok=True)
            for k in corsmal.CAMERAS:
                f = MIRROR / "r21d_rgb" / str(c) / f"{n}_c{k}_rgb.npy"
                shutil.copy(f, root / "r21d_rgb" / str(c) / f.name)
    return root


def test_name_grammar_and_folds() -> None:
    assert corsmal.parse_name("s2_fi3_fu1_b1_l0") == {"subject": 2, "type": 3, "level": 1, "background": 1, "lighting": 0}
    with pytest.raises(DataError, match="does not follow"):
        corsmal.parse_name("s2_fi3_fu1_b1")
    with pytest.raises(DataError, match="not one of 0-3"):
        corsmal.parse_name("s0_fi7_fu1_b1_l0")
    held = {f: [c for c in corsmal.CONTAINERS if corsmal.fold_subset(c, f) == "testing"] for f in corsmal.FOLDS}
    assert held == {0: [3, 6, 9], 1: [2, 5, 8], 2: [1, 4, 7]}
    assert sorted(sum(held.values(), [])) == list(corsmal.CONTAINERS)  # every container held out exactly once
    with pytest.raises(DataError, match="fold 3"):
        corsmal.fold_subset(1, 3)


@needs_data
def test_layout_command_on_real_subset(tmp_path: Path) -> None:
    root = _subset(tmp_path)
    out = tmp_path / "ann.json"
    layouts_main(["corsmal", "--root", str(root), "--fold", "1", "--out", str(out)])
    ann = json.loads(out.read_text())
    assert ann["labels"] == ["empty", "pasta", "rice", "water"]
    db = ann["database"]
    assert len(db) == 9
    assert db["c2_s0_fi3_fu2_b0_l0"] == {"subset": "testing", "label": "water", "container": 2}
    assert db["c1_s0_fi1_fu1_b0_l0"]["subset"] == "training" and db["c1_s0_fi1_fu1_b0_l0"]["label"] == "pasta"
    assert {v["subset"] for k, v in db.items() if k.startswith("c3_")} == {"training"}
    arrays = corsmal.load_arrays(corsmal.scan(root, (1, 2, 3)))
    assert arrays.video.shape[:2] == (9, 4) and arrays.video.shape[3] == 513
    assert arrays.audio.shape[1] == 1 and arrays.audio.shape[3] == 129
    assert arrays.labels.tolist() == [0, 1, 3] * 3
    assert arrays.subset_indices(1, "testing").tolist() == [3, 4, 5]
    # the mask channel says how long each real sequence is
    t0 = np.load(root / "r21d_rgb" / "1" / f"{NAMES[0]}_c1_rgb.npy").shape[0]
    assert arrays.video[0, 0, :, -1].sum() == t0


@needs_data
@pytest.mark.parametrize("damage", ["corrupt", "shape", "nan", "missing_camera"])
def test_layout_errors_name_the_file(tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]) -> None:
    root = _subset(tmp_path)
    bad = root / "r21d_rgb" / "2" / f"{NAMES[1]}_c3_rgb.npy"
    if damage == "corrupt":
        bad.write_bytes(bad.read_bytes()[:100])
    elif damage == "shape":
        np.save(bad, np.zeros((5, 128), np.float32))
    elif damage == "nan":
        arr = np.load(bad)
        arr[0, 0] = np.nan
        np.save(bad, arr)
    else:
        bad.unlink()
    with pytest.raises(SystemExit):
        layouts_main(["corsmal", "--root", str(root), "--fold", "0", "--out", str(tmp_path / "a.json")])
    err = capsys.readouterr().err
    assert str(bad) in err
    assert {"corrupt": "corrupt", "shape": "expected (T, 512)", "nan": "NaN", "missing_camera": "no video file"}[damage] in err
    assert not (tmp_path / "a.json").exists()


def test_load_sequence_checks(tmp_path: Path) -> None:
    p = tmp_path / "x.npy"
    np.save(p, np.ones((3, 4), np.int64))
    with pytest.raises(DataError, match="dtype"):
        load_sequence(p, 4)
    np.save(p, np.ones((0, 4), np.float32))
    with pytest.raises(DataError, match="no time step"):
        load_sequence(p, 4)
    np.save(p, np.ones((3, 4), np.float32))
    assert load_sequence(p, 4).shape == (3, 4)


def _packed(n: int = 6, views: int = 4, d: int = 512, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return pack_sequences([[rng.normal(size=(int(rng.integers(1, 9)), d)).astype(np.float32) for _ in range(views)]
                           for _ in range(n)])


def test_student_shapes_and_padding_is_masked() -> None:
    torch.manual_seed(0)
    net = build_student(StudentConfig(arch="sequence_conv", width=8), 4).eval()
    x = torch.from_numpy(_packed())
    out = net(x)
    t = x.shape[2]
    assert out.feature_map.shape == (6, t, 64) and out.feature.shape == (6, 64) and out.logits.shape == (6, 4)
    # the same clip padded with 10 more steps gives the same outputs
    longer = torch.cat([x, torch.zeros(6, 4, 10, 513)], dim=2)
    out2 = net(longer)
    assert torch.allclose(out.logits, out2.logits, atol=1e-5) and torch.allclose(out.feature, out2.feature, atol=1e-5)
    assert torch.all(out2.feature_map[:, t:] == 0)
    # eval = mean over the views' logits
    per_view = torch.stack([net(x[:, v]).logits for v in range(4)], 1).mean(1)
    assert torch.allclose(out.logits, per_view, atol=1e-5)
    # training: one view per sample (its logits equal that view's)
    net.train()
    net.drop.p = 0.0
    torch.manual_seed(1)
    tr = net(x).logits
    torch.manual_seed(1)
    pick = torch.randint(4, (6,))
    net.eval()
    assert torch.allclose(tr, net(x[torch.arange(6), pick]).logits, atol=1e-5)


@pytest.mark.parametrize("method", known_methods())
def test_one_training_step_of_every_method(method: str) -> None:
    params = yaml.safe_load(Path(__file__).resolve().parents[1].joinpath("params.yaml").read_text())
    torch.manual_seed(0)
    n, c, dt = 16, 4, 128
    x = _packed(n, views=4, d=512)
    rng = np.random.default_rng(0)
    y = np.arange(n) % c
    emb, logits = rng.normal(size=(n, dt)).astype(np.float32), rng.normal(size=(n, c)).astype(np.float32)
    cfg = StudentConfig(arch="sequence_conv", width=8)
    student = build_student(cfg, c)
    m = build_method(method, Dims(cfg.embed_dim, dt, c, n), method_config(method, params))
    tc = TrainConfig(epochs=1, batch_size=8, device="cpu", amp=False)
    before = [p.detach().clone() for p in student.parameters()]
    ds = ClipDataset(x, y, emb, logits, np.arange(n))
    hist = train(student, m, make_loader(ds, tc, True, 0, torch.device("cpu")), None, tc, torch.device("cpu"))
    assert np.isfinite(hist[0]["loss/total"])
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))


@needs_data
def test_teacher_trains_on_the_folds_training_containers_only(tmp_path: Path) -> None:
    from xmkd.sequence_teacher import SequenceTeacherConfig, classification_summary, fold_teacher

    torch.set_num_threads(1)
    arrays = corsmal.load_arrays(corsmal.scan(_subset(tmp_path)))
    cfg = SequenceTeacherConfig(epochs=2, hidden=16)
    emb, logits, m = fold_teacher(arrays, 0, cfg)  # fold 0 holds out container 3 = rows 6-8
    assert emb.shape == (9, 16) and logits.shape == (9, 4) and np.isfinite(emb).all()
    assert m["num_train"] == 6 and m["num_test"] == 3 and 0 <= m["test_f1_weighted"] <= 1
    # the held-out recordings' sound and labels never reach training: change them, the teacher stays the same
    arrays.audio[6:] = arrays.audio[6:][::-1].copy()
    arrays.labels[6:] = 2
    emb2, _, _ = fold_teacher(arrays, 0, cfg)
    assert np.allclose(emb[:6], emb2[:6], atol=1e-6)
    s = classification_summary(np.array([0, 1, 1, 3]), np.array([0, 1, 2, 3]), 4)
    assert s["top1"] == 0.75 and s["mean_class_acc"] == 0.75
    assert s["f1_weighted"] == pytest.approx((1 + 2 / 3 + 0 + 1) / 4)


def test_fold_mean_summary_and_table() -> None:
    from xmkd.corsmal_run import markdown_table, summarise

    def r(v: float) -> dict[str, float]:
        return {"top1": v, "mean_class_acc": v, "f1_weighted": v, "f1_best_epoch": v + 0.1}

    res = {"none": {f: {s: r(0.3 + 0.01 * s) for s in (0, 1, 2)} for f in (0, 1, 2)},
           "kd": {f: {s: r(0.4 + 0.01 * s + 0.03 * f) for s in (0, 1, 2)} for f in (0, 1, 2)}}
    s = summarise(res, [0, 1, 2])
    assert s["kd"]["top1"]["mean"] == pytest.approx(0.44)  # mean over seeds of the fold means (0.43, 0.44, 0.45)
    assert s["paired"]["kd"]["top1"]["seed_estimate"]["mean"] == pytest.approx(0.13)
    table = markdown_table(s, {"mean_test_f1_weighted": 0.95})
    assert "| kd | 44.0 [" in table and "kd: F1 +13.0" in table and "91.3" in table and "67.3" in table
