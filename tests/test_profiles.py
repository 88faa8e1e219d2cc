"""Parameter profiles (src/xmkd/profiles.py): validation against params.yaml, Hydra override formatting, and
that DVC's own `-S` machinery turns the overrides into exactly the merged params."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from xmkd.config import load_params
from xmkd.errors import ConfigError
from xmkd.profiles import check, combine, format_value, load_profile, main, merge, to_overrides

ROOT = Path(__file__).resolve().parents[1]

PAPER = {
    "student.arch": "r2plus1d_ref",
    "benchmark.n_train": 4000,
    "features.frames": 16,
    "features.size": 112,
    "features.eval_clips": 3,
    "train.batch_size": 32,
    "train.lr": 0.0003,
    "train.weight_decay": 0.0005,
    "train.epochs": 200,
    "train.milestones": [150],
    "train.label_fraction": 1.0,
    "csc.temperature": 0.07,
}


@pytest.fixture()
def params() -> dict:
    return load_params(ROOT / "params.yaml")


def test_paper_profile_has_the_papers_setting(params: dict) -> None:
    profile = load_profile("paper", ROOT)
    merged = merge(params, profile)
    for key, want in PAPER.items():
        section, name = key.split(".")
        assert merged[section][name] == want, key
    assert merged["student"]["width"] == params["student"]["width"]  # keys it does not name are untouched
    assert params["student"]["arch"] == "r2plus1d_small"  # merge does not modify its input


def test_paper_overrides_are_hydra_syntax() -> None:
    assert to_overrides(load_profile("paper", ROOT)) == [
        "student.arch=r2plus1d_ref",
        "benchmark.n_train=4000",
        "benchmark.frames=8",
        "benchmark.fps=8",
        "features.frames=16",
        "features.size=112",
        "features.eval_clips=3",
        "train.batch_size=32",
        "train.lr=0.0003",
        "train.weight_decay=0.0005",
        "train.epochs=200",
        "train.milestones=[150]",
        "train.label_fraction=1.0",
        "csc.temperature=0.07",
    ]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "null"),
        (True, "true"),
        (False, "false"),
        (3, "3"),
        (1e-5, "1e-05"),
        ([1, 2], "[1,2]"),
        ([], "[]"),
        (["none", "kd"], "[none,kd]"),
        ("r2plus1d_18", "r2plus1d_18"),
        ("data/benchmark/videos", "data/benchmark/videos"),
        ("../shared/x.tar.gz", "../shared/x.tar.gz"),
        ("./x", "./x"),
        (".5", "'.5'"),  # a float unquoted
        ("a b", "'a b'"),
        ("null", "'null'"),  # the string, not None
        ("1.5", "'1.5'"),  # the string, not a float
        ("a,b", "'a,b'"),
        ("it's", "'it\\'s'"),
        ({"x": 1}, "{x:1}"),
    ],
)
def test_format_value(value: object, text: str) -> None:
    assert format_value(value) == text


def test_dvc_applies_the_overrides_to_exactly_the_merged_params(tmp_path: Path, params: dict) -> None:
    """The printed overrides, parsed and applied by DVC's -S code (Hydra), give merge(params, profile)."""
    from dvc.utils.hydra import apply_overrides

    profile = {
        **load_profile("paper", ROOT),
        "methods": ["none", "mnf_csc"],
        "csc": {"tau_min": 0.01, "temperature": 0.2},
        "features": {"video_dir": "/data/ucf 101/videos", "annotation": "null"},  # need quoting
        "sources": {"mirror": "../shared/datasets"},
    }
    p = tmp_path / "params.yaml"
    shutil.copy2(ROOT / "params.yaml", p)
    apply_overrides(p, to_overrides(profile))
    assert yaml.safe_load(p.read_text()) == merge(params, profile)


def test_unknown_key_names_the_closest_key(params: dict) -> None:
    with pytest.raises(ConfigError, match=r"'train\.batchsize'.*did you mean 'train\.batch_size'"):
        merge(params, {"train": {"batchsize": 8}})
    with pytest.raises(ConfigError, match=r"'trian'.*did you mean 'train'"):
        merge(params, {"trian": {"lr": 0.1}})
    with pytest.raises(ConfigError, match=r"'student\.arch' must be a value"):
        merge(params, {"student": {"arch": {"name": "r2plus1d_18"}}})
    with pytest.raises(ConfigError, match=r"'train' must be a mapping"):
        merge(params, {"train": 5})


def test_unknown_profile_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError, match=r"no profile 'papr'.*did you mean 'paper'"):
        load_profile("papr", ROOT)


def test_strict_check_rejects_a_value_the_pipeline_would_reject(tmp_path: Path) -> None:
    shutil.copy2(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "bad.yaml").write_text("train:\n  lr: fast\n")
    with pytest.raises(ConfigError, match=r"train\.lr must be a number"):
        check("bad", root=tmp_path, strict=True)
    check("bad", root=tmp_path, strict=False)  # keys alone are fine
    check("paper", root=ROOT, strict=True)


def test_cli_overrides_and_run_dry_run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert main(["overrides", "paper"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("-S student.arch=r2plus1d_ref ") and "-S 'train.milestones=[150]'" in out
    assert main(["run", "paper", "--dry-run", "--", "--queue"]) == 0
    cmd = capsys.readouterr().out
    assert " exp run -n paper -S student.arch=r2plus1d_ref" in cmd and cmd.rstrip().endswith("--queue")
    assert main(["show", "nope"]) == 1
    assert "no profile 'nope'" in capsys.readouterr().err


def test_profiles_combine_in_order_and_each_is_validated(tmp_path: Path) -> None:
    assert combine([{"train": {"lr": 0.1, "epochs": 2}}, {"train": {"lr": 0.2}, "seeds": [0]}]) == {
        "train": {"lr": 0.2, "epochs": 2},
        "seeds": [0],
    }
    shutil.copy2(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "a.yaml").write_text("train:\n  epochs: 2\n  lr: 0.1\n")
    (tmp_path / "profiles" / "b.yaml").write_text("train:\n  lr: 0.2\n")
    (tmp_path / "profiles" / "typo.yaml").write_text("csc:\n  temprature: 0.2\n")
    profile, merged = check(["a", "b"], root=tmp_path, strict=False)
    assert profile == {"train": {"epochs": 2, "lr": 0.2}} and merged["train"]["lr"] == 0.2
    with pytest.raises(ConfigError, match=r"'csc\.temprature'.*did you mean 'csc\.temperature'"):
        check(["a", "typo"], root=tmp_path, strict=False)


def test_cli_run_with_two_profiles_names_the_experiment_after_both(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setattr("xmkd.profiles.load_profile", lambda n, root=None: {"a": {"train": {"epochs": 40}},
                                                                            "b": {"train": {"lr": 0.2}}}[n])
    assert main(["run", "a", "b", "--dry-run"]) == 0
    cmd = capsys.readouterr().out
    assert " exp run -n a-b -S train.epochs=40 -S train.lr=0.2" in cmd


def test_a_profile_removes_keys_and_dvc_applies_the_removal(tmp_path: Path, params: dict) -> None:
    """`remove: [dotted keys]` deletes them (`-S ~key`): merge() and DVC's own -S code agree; a removed key that
    does not exist, or one the profile also sets, is an error naming it."""
    from dvc.utils.hydra import apply_overrides

    profile = {"remove": ["ablations.no_csc", "ablations.fixed_tau"], "train": {"epochs": 3}}
    assert to_overrides(profile)[:2] == ["~ablations.no_csc", "~ablations.fixed_tau"]
    merged = merge(params, profile)
    assert set(merged["ablations"]) == set(params["ablations"]) - {"no_csc", "fixed_tau"}
    assert merged["train"]["epochs"] == 3 and "no_csc" in params["ablations"]  # params itself untouched
    p = tmp_path / "params.yaml"
    shutil.copy2(ROOT / "params.yaml", p)
    apply_overrides(p, to_overrides(profile))
    assert yaml.safe_load(p.read_text()) == merged
    with pytest.raises(ConfigError, match=r"removes 'ablations\.no_csv'.*did you mean 'ablations\.no_csc'"):
        merge(params, {"remove": ["ablations.no_csv"]})
    with pytest.raises(ConfigError, match=r"both removes and sets 'train\.epochs'"):
        merge(params, {"remove": ["train.epochs"], "train": {"epochs": 3}})
    with pytest.raises(ConfigError, match=r"removes 'ablations\.tau0_0\.1': DVC's -S \(Hydra\) cannot address it"):
        merge(params, {"remove": ["ablations.tau0_0.1"]})  # Hydra would read tau0_0 . 1
    with pytest.raises(ConfigError, match="must be a list of dotted params.yaml keys"):
        merge(params, {"remove": "ablations.no_csc"})
    assert combine([{"remove": ["a.b"]}, {"remove": ["c"], "x": 1}]) == {"x": 1, "remove": ["a.b", "c"]}


def test_quick_profile_is_a_valid_smaller_comparison(params: dict) -> None:
    """The quick profile validates strictly and keeps every kind of run (main, ablations incl. a tau0 point,
    robustness at a rate other than the main table's, reverse), fewer of them."""
    profile, merged = check("quick", root=ROOT, strict=True)
    assert {"none", "kd", "mnf_csc"} <= set(merged["methods"]) and len(merged["methods"]) < len(params["methods"])
    assert 0 < len(merged["ablations"]) < len(params["ablations"])
    assert any(name.startswith("tau0_") for name in merged["ablations"])
    assert set(merged["robustness"]["rates"]) - {merged["benchmark"]["irrelevant_rate"]}
    assert merged["robustness"]["methods"] and merged["reverse"]["methods"]


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "profiles").glob("*.yaml")))
def test_every_shipped_profile_validates_strictly(name: str) -> None:
    """A profile whose key drifted from params.yaml (renamed, removed) fails here, not in a user's run."""
    check(name, root=ROOT, strict=True)


def test_quick_profile_shows_its_own_premise_check(params: dict) -> None:
    """The premise check needs kd and none at irrelevant rate 0: quick runs kd there (README, "Quick start")."""
    _, merged = check("quick", root=ROOT, strict=True)
    assert 0.0 in merged["robustness"]["rates"] and "kd" in merged["robustness"]["methods"]
    assert merged["train"] == params["train"]  # the default regime's schedule and label fraction


def test_default_is_the_few_labels_regime_and_all_labels_is_a_profile(params: dict) -> None:
    assert 0 < params["train"]["label_fraction"] < 1
    _, merged = check("all_labels", root=ROOT, strict=True)
    assert merged["train"]["label_fraction"] == 1.0
    assert {k: v for k, v in merged["train"].items() if k != "label_fraction"} == {
        k: v for k, v in params["train"].items() if k != "label_fraction"
    }
    for paper_setting in ("paper", "ucf51"):
        assert merge(params, load_profile(paper_setting, ROOT))["train"]["label_fraction"] == 1.0
