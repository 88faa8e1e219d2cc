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
from xmkd.data.sequences import SequenceClips, load_sequence, pack_sequences, pad_collate
from xmkd.errors import DataError
from xmkd.methods import known_methods
from xmkd.models.sequence import build_sequence_student
from xmkd.models.student import StudentConfig, build_student

MIRROR = Path(os.environ.get("XMKD_DATA_MIRROR", "../shared/datasets")) / "corsmal"
NAMES = ["s0_fi0_fu0_b0_l0", "s0_fi1_fu1_b0_l0", "s0_fi3_fu2_b0_l0"]  # empty, pasta, water
BOXES = ["s0_fi0_fu0_b0_l0", "s0_fi1_fu1_b0_l0", "s0_fi2_fu1_b0_l0"]  # containers 7-9 (never water): empty, pasta, rice
needs_data = pytest.mark.skipif(not (MIRROR / "vggish").is_dir(), reason="CORSMAL mirror not present")


def small_corsmal(tmp: Path, containers: tuple[int, ...] = (1, 2, 3)) -> Path:
    """A small copy of real files: 3 recordings of each of ``containers`` (:data:`NAMES`; :data:`BOXES` in 7-9)."""
    root = tmp / "corsmal"
    for c in containers:
        for n in NAMES if c < 7 else BOXES:
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
def test_layout_command_on_realsmall_corsmal(tmp_path: Path) -> None:
    root = small_corsmal(tmp_path)
    out = tmp_path / "ann.json"
    layouts_main(["corsmal", "--root", str(root), "--fold", "1", "--out", str(out)])
    ann = json.loads(out.read_text())
    assert ann["labels"] == ["empty", "pasta", "rice", "water"]
    db = ann["database"]
    assert len(db) == 9
    assert db["c2_s0_fi3_fu2_b0_l0"] == {"subset": "testing", "label": "water", "container": 2}
    assert db["c1_s0_fi1_fu1_b0_l0"]["subset"] == "training" and db["c1_s0_fi1_fu1_b0_l0"]["label"] == "pasta"
    assert {v["subset"] for k, v in db.items() if k.startswith("c3_")} == {"training"}
    recs = corsmal.scan(root, (1, 2, 3))
    split = corsmal.read_fold(out, [r.id for r in recs])  # what the training stages read
    assert split.labels.tolist() == [0, 1, 3] * 3
    assert split.indices("testing").tolist() == [3, 4, 5]
    video, audio = corsmal.load_views(recs, "video"), corsmal.load_views(recs, "audio")
    assert [len(v) for v in video] == [4] * 9 and all(a[0].shape[1] == 128 for a in audio)
    packed = pack_sequences(video)
    assert packed.shape[:2] == (9, 4) and packed.shape[3] == 513
    # the mask channel says how long each real sequence is
    t0 = np.load(root / "r21d_rgb" / "1" / f"{NAMES[0]}_c1_rgb.npy").shape[0]
    assert packed[0, 0, :, -1].sum() == t0 == video[0][0].shape[0]
    with pytest.raises(DataError, match="does not list"):
        corsmal.read_fold(out, ["c9_s0_fi0_fu0_b0_l0"])


@needs_data
@pytest.mark.parametrize("damage", ["corrupt", "shape", "nan", "missing_camera"])
def test_layout_errors_name_the_file(tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]) -> None:
    root = small_corsmal(tmp_path)
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
    assert out2.feature_map.shape == out.feature_map.shape  # padding beyond the longest sequence is dropped
    # a clip's own padded steps give zero tokens, and its outputs do not depend on the other clips of the batch
    one = net(x[:, 0])
    lengths = x[:, 0, :, -1].sum(1).long()
    short = int(lengths.argmin())
    assert lengths[short] < t and torch.all(one.feature_map[short, lengths[short]:] == 0)
    alone = net(x[short : short + 1, 0])
    assert torch.allclose(alone.logits, one.logits[short : short + 1], atol=1e-5)
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


def _ragged(n: int, seed: int = 0) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[rng.normal(size=(int(rng.integers(1, 9)), 512)).astype(np.float32) for _ in range(4)] for _ in range(n)]


def test_ragged_clips_are_padded_per_batch() -> None:
    seqs = _ragged(5)
    ds = SequenceClips(seqs, np.arange(5) % 4, np.zeros((5, 3), np.float32), np.zeros((5, 4), np.float32),
                       np.array([4, 1, 2]))
    assert ds.lengths().tolist() == [max(s.shape[0] for s in seqs[i]) for i in (4, 1, 2)]
    x, y, emb, logits, pos = pad_collate([ds[0], ds[2]])
    assert x.shape == (2, 4, max(ds.lengths()[[0, 2]]), 513) and pos.tolist() == [0, 2] and y.tolist() == [0, 2]
    first = seqs[4][1]
    assert torch.equal(x[0, 1, : len(first), :512], torch.from_numpy(first)) and x[0, 1, len(first):].abs().sum() == 0
    assert x[0, 1, :, 512].sum() == len(first)  # the mask channel
    with pytest.raises(ValueError, match="indices"):
        SequenceClips(seqs, np.zeros(5), np.zeros((5, 3)), np.zeros((5, 4)), np.array([5]))


@pytest.mark.parametrize("method", known_methods())
def test_one_training_step_of_every_method(method: str) -> None:
    """Every method trains the CORSMAL student through the pipeline's own path (ragged clips, 4 cameras)."""
    from xmkd.corsmal_config import resolve_runs
    from xmkd.corsmal_run import fit_and_evaluate

    params = yaml.safe_load(Path(__file__).resolve().parents[1].joinpath("params.yaml").read_text())
    params["methods"] = [method] if method == "none" else ["none", method]
    params["corsmal"]["train"] |= {"epochs": 1, "batch_size": 8}
    run = resolve_runs(params)[method]
    n, c, dt = 16, 4, 32
    rng = np.random.default_rng(0)
    y = np.arange(n) % c
    teacher = rng.normal(size=(n, dt)).astype(np.float32), rng.normal(size=(n, c)).astype(np.float32)
    torch.manual_seed(0)
    student, _, res = fit_and_evaluate(run, _ragged(n), y, teacher, np.arange(12), np.arange(12, 16), seed=3)
    torch.manual_seed(3)
    fresh = build_sequence_student(run.student, c)  # fit_and_evaluate seeds 3, then builds the student first
    assert any(not torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), student.state_dict().values(), strict=True))
    assert np.isfinite(res["history"][0]["loss/total"]) and res["pred"].shape == (4,)
    assert set(res["metrics"]) >= {"top1", "mean_class_acc", "f1_weighted", "f1_best_epoch", "best_epoch"}


@needs_data
def test_teacher_trains_on_the_folds_training_containers_only(tmp_path: Path) -> None:
    from xmkd.sequence_teacher import SequenceTeacherConfig, classification_summary, fold_teacher

    torch.set_num_threads(1)
    recs = corsmal.scan(small_corsmal(tmp_path))
    audio = pack_sequences(corsmal.load_views(recs, "audio"))[:, 0]
    labels = np.array([r.fields["type"] for r in recs])
    tr, te = np.arange(6), np.arange(6, 9)  # fold 0 holds out container 3 = rows 6-8
    cfg = SequenceTeacherConfig(epochs=2, hidden=16)
    emb, logits, m, losses = fold_teacher(audio, labels, tr, te, cfg)
    assert emb.shape == (9, 16) and logits.shape == (9, 4) and np.isfinite(emb).all() and len(losses) == 2
    assert m["num_train"] == 6 and m["num_test"] == 3 and 0 <= m["test_f1_weighted"] <= 1
    # the held-out recordings' sound and labels never reach training: change them, the teacher stays the same
    audio[6:] = audio[6:][::-1].copy()
    labels[6:] = 2
    emb2, _, _, _ = fold_teacher(audio, labels, tr, te, cfg)
    assert np.allclose(emb[:6], emb2[:6], atol=1e-6)
    s = classification_summary(np.array([0, 1, 1, 3]), np.array([0, 1, 2, 3]), 4)
    assert s["top1"] == 0.75 and s["mean_class_acc"] == 0.75
    assert s["f1_weighted"] == pytest.approx((1 + 2 / 3 + 0 + 1) / 4)


def test_inner_split_never_uses_the_held_out_containers() -> None:
    for f, held in corsmal.FOLDS.items():
        train_c, val_c = corsmal.inner_split(f)
        assert not set(held) & (set(train_c) | set(val_c)) and not set(train_c) & set(val_c)
        assert len(train_c) == len(val_c) == 3
    with pytest.raises(DataError, match="fold 5"):
        corsmal.inner_split(5)


def test_corsmal_runs_and_their_errors(tmp_path: Path) -> None:
    from xmkd.corsmal_config import CorsmalRun, load_run, resolve_runs, write_configs
    from xmkd.errors import ConfigError

    params = yaml.safe_load(Path(__file__).resolve().parents[1].joinpath("params.yaml").read_text())
    runs = resolve_runs(params)
    assert list(runs)[: len(params["methods"])] == params["methods"]  # all 15 methods, then the ablations
    assert [r.label for r in runs.values() if r.kind == "ablation"] == params["corsmal"]["ablations"]
    abl = runs["ablate-no_csc"]
    assert abl.method == "mnf_csc" and abl.sections["csc"].weight == 0.0 and runs["mnf_csc"].sections["csc"].weight == 1.0
    assert abl.stage == "corsmal/dvc.yaml:ablate@no_csc" and runs["kd"].stage == "corsmal/dvc.yaml:distill@kd"
    assert runs["kd"].folds == (0, 1, 2) and runs["kd"].seeds == tuple(params["seeds"])
    paths = write_configs(params, tmp_path)
    assert len(paths) == len(runs) and load_run(tmp_path / "kd.json") == runs["kd"]
    assert CorsmalRun.from_json(runs["ablate-no_csc"].to_json()) == abl
    bad = {**params, "corsmal": {**params["corsmal"], "ablations": ["no_mnf", "no_such"]}}
    with pytest.raises(ConfigError, match="no_such"):
        resolve_runs(bad)
    bad = {**params, "corsmal": {**params["corsmal"], "train": {"epoch": 3}}}
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        resolve_runs(bad)
    with pytest.raises(ConfigError, match="no 'corsmal' section"):
        resolve_runs({k: v for k, v in params.items() if k != "corsmal"})
    with pytest.raises(ConfigError, match="configs"):
        load_run(tmp_path / "missing.json")
