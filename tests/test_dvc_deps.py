"""The code deps DVC tracks cannot drift from the code a stage runs.

A training stage's `deps` in dvc.yaml are written by hand. A module that training imports but dvc.yaml omits
would leave cached results that `dvc repro` does not recompute after a change there. These tests walk the import
closure of each stage script (every `import xmkd...` / `from xmkd... import ...`, at module level or inside a
function) and check that every file in it is listed, itself or through a listed directory.

The one exception: `xmkd.methods` registers every method on import, so each training stage imports all method
files, but a run's numbers depend only on its own method's file and what that file imports. The training stages
list `src/xmkd/methods/<method>.py` and the test checks that method's own closure. Every other stage (the data
stages, the teachers, the report) is held to the same rule: its deps cover the closure of the script its `cmd`
runs (both scripts where the script's name is a parameter, as for `embed_teacher`).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
METHODS = SRC / "xmkd" / "methods"


def _module_file(name: str) -> Path | None:
    """src/ path of the xmkd module or package ``name`` (None when it is not a file of ours)."""
    base = SRC.joinpath(*name.split("."))
    if base.with_suffix(".py").exists():
        return base.with_suffix(".py")
    if (base / "__init__.py").exists():
        return base / "__init__.py"
    return None


def _imports(path: Path) -> set[str]:
    """xmkd modules imported anywhere in ``path`` (``from xmkd.a import b`` yields xmkd.a and, if a module, xmkd.a.b)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "xmkd"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] == "xmkd":
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if _module_file(f"{node.module}.{a.name}")}
    # importing xmkd.a.b runs xmkd/__init__.py and xmkd/a/__init__.py too
    for name in list(found):
        parts = name.split(".")
        found |= {".".join(parts[:i]) for i in range(1, len(parts))}
    return found


def closure(start: Path, skip_methods: bool = True, leaves: frozenset[Path] = frozenset()) -> set[Path]:
    """Files of the xmkd modules reachable from ``start`` by imports (method files other than base.py left out
    when ``skip_methods``; see the module docstring). Files in ``leaves`` are included but not followed."""
    seen: set[Path] = set()
    todo = [start]
    while todo:
        path = todo.pop()
        for name in _imports(path):
            f = _module_file(name)
            if f is None or f in seen:
                continue
            if skip_methods and f.parent == METHODS and f.name not in ("__init__.py", "base.py"):
                continue
            seen.add(f)
            if f not in leaves:
                todo.append(f)
    return seen


def _covered(f: Path, deps: list[str]) -> bool:
    rel = f.relative_to(ROOT).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


def _stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _deps(stage: dict, **subst: str) -> list[str]:
    body = stage.get("do", stage)
    out = []
    for d in body["deps"]:
        for k, v in subst.items():
            d = d.replace("${" + k + "}", v)
        out.append(d)
    return out


TRAINING = {"distill": "${item}", "ablate": "mnf_csc", "robust": "${item.method}", "reverse": "${item}"}


def _param_values(key: str) -> set[str]:
    """Values the dotted ``key`` takes in params.yaml and in every profile (profiles/*.yaml) that sets it."""
    values = set()
    for path in [ROOT / "params.yaml", *sorted((ROOT / "profiles").glob("*.yaml"))]:
        node = yaml.safe_load(path.read_text())
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            values.add(str(node))
    return values


def _scripts(stage: dict) -> dict[str, list[Path]]:
    """The stage scripts a stage's ``cmd`` runs: ``{name as written in cmd: [script files]}``; a name built from a
    parameter (``stages/${teacher_outputs.stage}.py``) maps to the script of every value params and profiles give."""
    out: dict[str, list[Path]] = {}
    for name in re.findall(r"stages/(\S+?)\.py", stage.get("do", stage)["cmd"]):
        keys = re.findall(r"\$\{([\w.]+)\}", name)
        names = {name}
        for key in keys:
            names = {n.replace("${" + key + "}", v) for n in names for v in _param_values(key)}
        out[name] = sorted(ROOT / "stages" / f"{n}.py" for n in names)
    return out


@pytest.mark.parametrize("stage", sorted(TRAINING))
def test_training_stage_deps_cover_the_import_closure(stage: str) -> None:
    deps = _deps(_stages()[stage])
    script = ROOT / "stages" / "distill.py"
    missing = sorted(f.relative_to(ROOT).as_posix() for f in closure(script) if not _covered(f, deps))
    assert not missing, f"dvc.yaml stage {stage!r} omits modules that stages/distill.py imports: {missing}"
    assert f"src/xmkd/methods/{TRAINING[stage]}.py" in deps


@pytest.mark.parametrize("method", sorted(p.stem for p in METHODS.glob("*.py") if p.stem not in ("__init__", "base")))
def test_each_methods_own_imports_are_tracked(method: str) -> None:
    """A method file's own imports (e.g. mnf_csc -> models/mnf.py) are deps of its training stages."""
    deps = _deps(_stages()["distill"], item=method)
    # the package __init__ (which imports every method to register it) is a dep of every stage: not followed here
    own = closure(METHODS / f"{method}.py", skip_methods=False, leaves=frozenset({METHODS / "__init__.py"}))
    own -= {METHODS / "__init__.py"}
    # a method that builds on another method's file (e.g. reuses its loss) needs that file listed too
    missing = sorted(
        f.relative_to(ROOT).as_posix() for f in own if not _covered(f, deps) and f.parent != METHODS
    )
    assert not missing, f"distill@{method} omits modules that methods/{method}.py imports: {missing}"
    others = sorted(f.stem for f in own if f.parent == METHODS and f.stem not in ("base", "__init__", method))
    assert not others, f"methods/{method}.py imports other method files {others}: list them in its stages' deps"


def test_resolve_configs_tracks_every_module_whose_defaults_reach_a_config() -> None:
    """Dataclass defaults of the method, train, student and evaluate configs end up in data/configs/*.json."""
    deps = _deps(_stages()["resolve_configs"])
    script = ROOT / "stages" / "resolve_configs.py"
    need = closure(script, skip_methods=False)
    missing = sorted(f.relative_to(ROOT).as_posix() for f in need if not _covered(f, deps))
    assert not missing, f"dvc.yaml stage 'resolve_configs' omits modules whose code shapes the configs: {missing}"
    assert _covered(METHODS / "kd.py", deps), "resolve_configs must track src/xmkd/methods (method config defaults)"


@pytest.mark.parametrize("stage", sorted(set(_stages()) - set(TRAINING)))
def test_every_other_stage_deps_cover_its_scripts_import_closure(stage: str) -> None:
    """Data stages, teachers, report: a module their script imports but dvc.yaml omits leaves stale outputs."""
    deps = _deps(_stages()[stage])
    scripts = _scripts(_stages()[stage])
    assert scripts, f"dvc.yaml stage {stage!r}: no stages/<name>.py in its cmd"
    for written, files in scripts.items():
        assert f"stages/{written}.py" in deps, f"dvc.yaml stage {stage!r} omits its script stages/{written}.py"
        assert files and all(f.is_file() for f in files), f"stage {stage!r}: no script file for stages/{written}.py"
        for script in files:
            missing = sorted(f.relative_to(ROOT).as_posix() for f in closure(script) if not _covered(f, deps))
            assert not missing, (
                f"dvc.yaml stage {stage!r} omits modules that {script.relative_to(ROOT)} imports: {missing}"
            )


def _corsmal_stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "corsmal" / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(_corsmal_stages()))
def test_corsmal_stage_deps_cover_its_scripts_import_closure(stage: str) -> None:
    """The CORSMAL pipeline (corsmal/dvc.yaml, run from the project root) is held to the same rule; its `configs`
    stage, like `resolve_configs`, also tracks every method file (their config defaults)."""
    body = _corsmal_stages()[stage]
    assert body.get("do", body).get("wdir") == "..", f"corsmal stage {stage!r} must run from the project root"
    deps = _deps(body)
    scripts = _scripts(body)
    assert scripts, f"corsmal/dvc.yaml stage {stage!r}: no stages/<name>.py in its cmd"
    for written, files in scripts.items():
        assert f"stages/{written}.py" in deps, f"corsmal/dvc.yaml stage {stage!r} omits stages/{written}.py"
        for script in files:
            need = closure(script, skip_methods=stage != "configs")
            missing = sorted(f.relative_to(ROOT).as_posix() for f in need if not _covered(f, deps))
            assert not missing, (
                f"corsmal/dvc.yaml stage {stage!r} omits modules that {script.relative_to(ROOT)} imports: {missing}"
            )


def test_a_missing_dep_fails_the_check() -> None:
    """The check can fail: train_teacher without src/xmkd/train.py (which teacher.py imports) is caught."""
    deps = [d for d in _deps(_stages()["train_teacher"]) if d != "src/xmkd/train.py"]
    need = closure(ROOT / "stages" / "train_teacher.py")
    missing = {f.relative_to(ROOT).as_posix() for f in need if not _covered(f, deps)}
    assert missing == {"src/xmkd/train.py"}


def test_a_script_named_by_a_parameter_expands_to_every_value() -> None:
    scripts = _scripts(_stages()["embed_teacher"])
    assert scripts == {
        "${teacher_outputs.stage}": [ROOT / "stages" / "embed_teacher.py", ROOT / "stages" / "import_teacher.py"]
    }


def test_the_closure_walk_sees_function_level_imports(tmp_path: Path) -> None:
    """The walk must not miss an import inside a function (the way cycles hide)."""
    f = tmp_path / "s.py"
    f.write_text("def main():\n    from xmkd.stats import describe\n    import xmkd.errors\n")
    files = {p.relative_to(SRC).as_posix() for p in closure(f)}
    assert {"xmkd/stats.py", "xmkd/errors.py", "xmkd/__init__.py"} <= files
