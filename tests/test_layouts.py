"""Annotations from dataset layouts (src/xmkd/data/layouts.py): UCF101 official split files and class folders.

UCF101's split files are not in the data mirror; tests write files in the official format (``classInd.txt``
``"<i> <Class>"``, ``trainlist0N.txt`` ``"<Class>/<video>.avi <i>"``, ``testlist0N.txt`` ``"<Class>/<video>.avi"``,
CRLF line ends, UCF101's own case mismatch ``HandstandPushups/v_HandStandPushups_*``). The class-folder layout is
checked end to end with extract_features on the real video fixtures of the mirror.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from pathlib import Path

import pytest

from xmkd.data.features import FeatureCache, FeatureConfig, extract_features, load_annotation, resolve_videos
from xmkd.data.layouts import (
    class_folders_annotation,
    classes_from_annotation,
    main,
    read_class_list,
    ucf101_annotation,
    write_annotation,
)
from xmkd.errors import DataError

REPO = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("XMKD_DATA_MIRROR", REPO.parent / "shared" / "datasets"))
AVI = MIRROR / "video-fixtures" / "ucf101_ApplyEyeMakeup_with_audio.avi"
MP4 = MIRROR / "video-fixtures" / "bigbuckbunny_5s_720p_aac51.mp4"
UCF51 = MIRROR / "ucf51"

CLASSES = ["ApplyEyeMakeup", "Archery", "HandstandPushups", "YoYo"]


def write_splits(root: Path, train: list[tuple[str, str]], test: list[tuple[str, str]], split: int = 1,
                 classes: list[str] = CLASSES) -> Path:
    """Official-format split files: (class folder, video id) pairs; CRLF line ends as in the UCF101 release."""
    root.mkdir(parents=True, exist_ok=True)
    idx = {c: i + 1 for i, c in enumerate(classes)}
    (root / "classInd.txt").write_bytes("".join(f"{idx[c]} {c}\r\n" for c in classes).encode())
    (root / f"trainlist{split:02d}.txt").write_bytes("".join(f"{c}/{v}.avi {idx[c]}\r\n" for c, v in train).encode())
    (root / f"testlist{split:02d}.txt").write_bytes("".join(f"{c}/{v}.avi\r\n" for c, v in test).encode())
    return root


TRAIN = [("ApplyEyeMakeup", "v_ApplyEyeMakeup_g08_c01"), ("ApplyEyeMakeup", "v_ApplyEyeMakeup_g09_c02"),
         ("Archery", "v_Archery_g08_c01"), ("HandstandPushups", "v_HandStandPushups_g08_c01"),
         ("YoYo", "v_YoYo_g10_c01")]
TEST = [("ApplyEyeMakeup", "v_ApplyEyeMakeup_g01_c01"), ("Archery", "v_Archery_g01_c01"),
        ("HandstandPushups", "v_HandStandPushups_g01_c01"), ("YoYo", "v_YoYo_g02_c01")]


def test_ucf101_all_classes(tmp_path: Path) -> None:
    ann = ucf101_annotation(write_splits(tmp_path, TRAIN, TEST), split=1)
    assert ann["labels"] == CLASSES  # classInd order and spelling
    db = ann["database"]
    assert len(db) == 9
    assert db["v_ApplyEyeMakeup_g08_c01"] == {"subset": "training", "label": "ApplyEyeMakeup"}
    assert db["v_HandStandPushups_g01_c01"] == {"subset": "validation", "label": "HandstandPushups"}
    assert [v["subset"] for v in db.values()] == ["training"] * 5 + ["validation"] * 4  # sorted by subset, then id


def test_ucf101_class_list_keeps_its_spelling_and_order(tmp_path: Path) -> None:
    splits = write_splits(tmp_path, TRAIN, TEST)
    ann = ucf101_annotation(splits, classes=["HandStandPushups", "ApplyEyeMakeup"], test_subset="testing")
    assert ann["labels"] == ["HandStandPushups", "ApplyEyeMakeup"]
    assert set(ann["database"]) == {
        "v_HandStandPushups_g08_c01", "v_HandStandPushups_g01_c01", "v_ApplyEyeMakeup_g08_c01",
        "v_ApplyEyeMakeup_g09_c02", "v_ApplyEyeMakeup_g01_c01",
    }
    assert ann["database"]["v_HandStandPushups_g01_c01"] == {"subset": "testing", "label": "HandStandPushups"}
    # the annotation is readable by the extraction stage, and the label spelling matches the ids' own
    path = write_annotation(ann, tmp_path / "a.json")
    labels, entries = load_annotation(path)
    assert labels == ann["labels"] and len(entries) == 5


def test_ucf101_annotation_finds_videos_in_the_official_folder_layout(tmp_path: Path) -> None:
    """UCF-101/HandstandPushups/v_HandStandPushups_*.avi is found for the label 'HandStandPushups' (by unique id)."""
    videos = tmp_path / "UCF-101"
    for cls, vid in TRAIN + TEST:
        (videos / cls).mkdir(parents=True, exist_ok=True)
        (videos / cls / f"{vid}.avi").write_bytes(b"")
    ann = ucf101_annotation(write_splits(tmp_path / "lists", TRAIN, TEST), classes=["HandStandPushups", "YoYo"])
    _, entries = load_annotation(write_annotation(ann, tmp_path / "a.json"))
    found = {v.id: v.path for v in resolve_videos(videos, entries)}
    assert found == {
        "v_HandStandPushups_g08_c01": "HandstandPushups/v_HandStandPushups_g08_c01.avi",
        "v_HandStandPushups_g01_c01": "HandstandPushups/v_HandStandPushups_g01_c01.avi",
        "v_YoYo_g10_c01": "YoYo/v_YoYo_g10_c01.avi",
        "v_YoYo_g02_c01": "YoYo/v_YoYo_g02_c01.avi",
    }


@pytest.mark.skipif(not (UCF51 / "annotation.json").is_file(), reason="UCF51 files not in the data mirror")
def test_ucf101_split1_with_ucf51_classes_gives_the_reference_annotation(tmp_path: Path) -> None:
    """Split files in the official format for the 6,837 UCF51 videos of the mirror (split 1 = groups 1-7 test)
    + --classes-from the reference annotation reproduce the reference: same labels, subsets and label spelling.
    The reference lacks one video that has an embedding (v_PlayingCello_g19_c06)."""
    ref = json.loads((UCF51 / "annotation.json").read_text())
    videos = []
    with tarfile.open(UCF51 / "audiocnn14embed512_features.tar.gz") as tf:
        for m in tf.getmembers():
            parts = m.name.split("/")
            if m.isfile() and parts[-1].endswith(".npy") and not parts[-1].startswith("."):
                videos.append((parts[-2], parts[-1][:-4]))  # folder HandstandPushups, id v_HandStandPushups_...
    classes = sorted({c for c, _ in videos} | {"BaseballPitch", "YoYo"}, key=str.lower)  # + non-UCF51 classes
    group = {v: int(re.search(r"_g(\d+)_", v).group(1)) for _, v in videos}
    extra = [("YoYo", "v_YoYo_g08_c01")]
    splits = write_splits(tmp_path, [x for x in videos if group[x[1]] > 7] + extra,
                          [x for x in videos if group[x[1]] <= 7] + [("BaseballPitch", "v_BaseballPitch_g01_c01")],
                          classes=classes)
    ann = ucf101_annotation(splits, 1, classes_from_annotation(UCF51 / "annotation.json"))
    assert ann["labels"] == ref["labels"]
    assert set(ann["database"]) - set(ref["database"]) == {"v_PlayingCello_g19_c06"}
    assert all(ann["database"][k] == v for k, v in ref["database"].items())


def test_ucf101_errors(tmp_path: Path) -> None:
    splits = write_splits(tmp_path / "s", TRAIN, TEST)
    with pytest.raises(DataError, match=r"trainlist02\.txt.*testlist02\.txt"):
        ucf101_annotation(splits, split=2)
    with pytest.raises(DataError, match=r"not UCF101 classes.*'Archer'.*did you mean 'Archery'"):
        ucf101_annotation(splits, classes=["ApplyEyeMakeup", "Archer"])
    dup = write_splits(tmp_path / "d", TRAIN, TEST + [TRAIN[0]])
    with pytest.raises(DataError, match=r"v_ApplyEyeMakeup_g08_c01.*occurs twice"):
        ucf101_annotation(dup)
    bad = write_splits(tmp_path / "b", TRAIN, TEST)
    (bad / "trainlist01.txt").write_text("Archery/v_Archery_g08_c01.avi 1\n")
    with pytest.raises(DataError, match=r"line 1: index '1' disagrees.*Archery = 2"):
        ucf101_annotation(bad)
    (bad / "trainlist01.txt").write_text("Juggling/v_Juggling_g08_c01.avi 1\n")
    with pytest.raises(DataError, match=r"class folder 'Juggling' is not in"):
        ucf101_annotation(bad)


def test_class_lists(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text("# UCF51 subset\nArchery\r\n\nYoYo\n")
    assert read_class_list(tmp_path / "c.txt") == ["Archery", "YoYo"]
    (tmp_path / "d.txt").write_text("Archery\narchery\n")
    with pytest.raises(DataError, match="more than once"):
        read_class_list(tmp_path / "d.txt")
    (tmp_path / "a.json").write_text(json.dumps({"labels": ["B", "A"], "database": {}}))
    assert read_class_list(tmp_path / "a.json") == ["B", "A"]
    with pytest.raises(DataError, match="not found"):
        read_class_list(tmp_path / "missing.txt")


# ----------------------------------------------------------------------------------------------- class folders


def make_tree(root: Path, counts: dict[str, int], ext: str = ".mp4") -> Path:
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / cls / f"{cls.lower()}_{i:03d}{ext}").write_bytes(b"")
    return root


def test_class_folders_split_is_stratified_and_seeded(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "v", {"Cat": 10, "Dog": 5, "Eel": 21})
    (root / "Cat" / "notes.txt").write_text("not a video")
    (root / "Cat" / ".hidden.mp4").write_bytes(b"")
    ann = class_folders_annotation(root, val=0.2, test=0.1, seed=0)
    assert ann["labels"] == ["Cat", "Dog", "Eel"]
    db = ann["database"]
    per = {(c, s): sum(v == {"subset": s, "label": c} for v in db.values())
           for c in ann["labels"] for s in ("training", "validation", "testing")}
    assert per == {("Cat", "training"): 7, ("Cat", "validation"): 2, ("Cat", "testing"): 1,
                   ("Dog", "training"): 3, ("Dog", "validation"): 1, ("Dog", "testing"): 1,  # 0.5 rounds up
                   ("Eel", "training"): 15, ("Eel", "validation"): 4, ("Eel", "testing"): 2}
    assert len(db) == 36 and "notes" not in db and ".hidden" not in db
    assert class_folders_annotation(root, 0.2, 0.1, seed=0) == ann
    other = class_folders_annotation(root, 0.2, 0.1, seed=1)
    assert other["database"] != ann["database"] and set(other["database"]) == set(db)


def test_class_folders_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        class_folders_annotation(tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.mp4").write_bytes(b"")
    with pytest.raises(DataError, match="no class folder"):
        class_folders_annotation(tmp_path / "flat")
    root = make_tree(tmp_path / "e", {"Cat": 3})
    (root / "Dog").mkdir()
    (root / "Dog" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"hold no video.*\['Dog'\]"):
        class_folders_annotation(root)
    root = make_tree(tmp_path / "dup", {"Cat": 3, "Dog": 3})
    (root / "Dog" / "cat_001.avi").write_bytes(b"")
    with pytest.raises(DataError, match=r"'cat_001' occurs twice"):
        class_folders_annotation(root)
    root = make_tree(tmp_path / "small", {"Cat": 2})
    with pytest.raises(DataError, match=r"'Cat' has 2 video\(s\): too few"):
        class_folders_annotation(root, val=0.5, test=0.5 - 1e-9)
    with pytest.raises(DataError, match="val"):
        class_folders_annotation(root, val=1.0)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_tree(tmp_path / "v", {"Cat": 5, "Dog": 5})
    main(["folders", "--root", str(root), "--val", "0.2", "--seed", "3", "--out", str(tmp_path / "out" / "a.json")])
    assert "2 classes, 10 videos (training 8, validation 2)" in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "a.json").read_text()) == class_folders_annotation(root, 0.2, 0.0, 3)
    splits = write_splits(tmp_path / "s", TRAIN, TEST)
    (tmp_path / "cls.txt").write_text("YoYo\nArchery\n")
    main(["ucf101", "--splits", str(splits), "--classes", str(tmp_path / "cls.txt"), "--out", str(tmp_path / "u.json")])
    assert json.loads((tmp_path / "u.json").read_text())["labels"] == ["YoYo", "Archery"]
    main(["rename-subset", "--annotation", str(tmp_path / "u.json"), "--out", str(tmp_path / "t.json")])
    renamed = json.loads((tmp_path / "t.json").read_text())
    before = json.loads((tmp_path / "u.json").read_text())["database"]
    assert renamed["database"] == {
        k: {**v, "subset": "testing" if v["subset"] == "validation" else v["subset"]} for k, v in before.items()
    }
    assert "testing 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["rename-subset", "--annotation", str(tmp_path / "t.json"), "--out", str(tmp_path / "t2.json")])
    assert "no video is in subset 'validation'; subsets present: ['testing', 'training']" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["ucf101", "--splits", str(tmp_path / "none"), "--out", str(tmp_path / "x.json")])
    assert e.value.code == 1
    assert "error: UCF101 split files not found" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.skipif(not (AVI.is_file() and MP4.is_file()), reason="video fixtures not in the data mirror")
def test_class_folders_annotation_drives_extract_features(tmp_path: Path) -> None:
    """Real videos (AVI/MPEG-4/MP3 and MP4/H.264/AAC) in class folders -> annotation -> feature cache."""
    root = tmp_path / "videos"
    for cls, src, names in (("Makeup", AVI, ("m1", "m2")), ("Bunny", MP4, ("b1", "b2"))):
        (root / cls).mkdir(parents=True)
        for n in names:
            os.symlink(src, root / cls / f"{n}{src.suffix}")
    ann = class_folders_annotation(root, val=0.5, seed=0)
    write_annotation(ann, tmp_path / "annotation.json")
    cfg = FeatureConfig(video_dir=str(root), annotation=str(tmp_path / "annotation.json"), frames=2, size=16,
                        sample_rate=8000, audio_seconds=0.5, n_fft=256, hop_length=128, n_mels=16, workers=1)
    result = extract_features(cfg, tmp_path / "features")
    assert result.n_decoded == 4 and not result.skipped
    cache = FeatureCache(tmp_path / "features")
    assert cache.frames.shape == (4, 2, 16, 16, 3) and cache.labels == ["Bunny", "Makeup"]
    rows = {r.id: (r.subset, r.label, r.path) for r in cache.manifest.itertuples()}
    assert {k: v[:2] for k, v in rows.items()} == {k: (v["subset"], v["label"]) for k, v in ann["database"].items()}
    assert rows["m1"][2] == "Makeup/m1.avi" and rows["b2"][2] == "Bunny/b2.mp4"
    assert sorted(v[0] for v in rows.values()) == ["training", "training", "validation", "validation"]
