"""The ``corsmal`` section of params.yaml and the CORSMAL runs it names, one validated JSON config per run.

The CORSMAL track (docs/corsmal.md, pipeline ``corsmal/dvc.yaml``) compares the same methods as the main table
(params ``methods``, each with its own params sections, unchanged) and the MNF+CSC ablations (params
``ablations``, or the subset ``corsmal.ablations``) with the same seeds (params ``seeds``), on every container
fold of :data:`xmkd.data.corsmal.FOLDS`. What differs from the main table is the data, the student
(``corsmal.student``: the feature-sequence student of :mod:`xmkd.models.sequence`) and its training recipe
(``corsmal.train``, calibrated on ``none`` and the teacher only: docs/corsmal.md, "Calibration").

Stage ``configs`` writes ``corsmal/configs/<run>.json``; a training stage depends on its own file only, so a
change of one method's section re-runs that method alone. Robustness and reverse-direction runs do not apply
(CORSMAL has no controlled rate of irrelevant sound; the reverse direction is the main pipeline's).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xmkd.config import parse_section
from xmkd.corsmal_paths import CONFIGS, PIPELINE
from xmkd.data.corsmal import FOLDS
from xmkd.errors import ConfigError
from xmkd.methods import method_class, method_config
from xmkd.models.sequence import SequenceStudentConfig
from xmkd.runs import ablations, method_names, seeds
from xmkd.sequence_teacher import SequenceTeacherConfig
from xmkd.train import TrainConfig


@dataclass(frozen=True)
class CorsmalConfig:
    """``corsmal`` section of params.yaml.

    Attributes:
        root: the CORSMAL features folder (``vggish/``, ``r21d_rgb/``), read in place; relative to the project root.
        student: the video student (:class:`~xmkd.models.sequence.SequenceStudentConfig`).
        train: its training recipe (:class:`~xmkd.train.TrainConfig`; ``seed_workers`` = (fold, seed) runs
            trained at once, 0 = auto).
        teacher: the VGGish GRU teacher of every fold (:class:`~xmkd.sequence_teacher.SequenceTeacherConfig`).
        eval_batch_size: clips per batch at evaluation (every epoch, for the optimistic best-epoch F1).
        ablations: names of params ``ablations`` run here (one DVC stage each).
    """

    root: str = "../shared/datasets/corsmal"
    student: SequenceStudentConfig = SequenceStudentConfig()
    train: TrainConfig = TrainConfig()
    teacher: SequenceTeacherConfig = SequenceTeacherConfig()
    eval_batch_size: int = 128
    ablations: list[str] = field(default_factory=list)


def corsmal_config(params: dict[str, Any]) -> CorsmalConfig:
    """Parse ``params["corsmal"]`` strictly.

    Raises:
        ConfigError: the section is missing, or has an unknown key, a wrong type or an invalid value.
    """
    if not isinstance(params.get("corsmal"), dict):
        raise ConfigError("params.yaml has no 'corsmal' section: restore it from the repository's params.yaml.")
    return parse_section(CorsmalConfig, params["corsmal"], "corsmal")


@dataclass(frozen=True)
class CorsmalRun:
    """One CORSMAL run: a method (or an MNF+CSC ablation) trained on every fold for every seed.

    Attributes:
        name: run name (``<method>`` or ``ablate-<name>``), the stem of its config and output folder.
        kind: ``main`` or ``ablation``. method: the distillation method. label: display name.
        overrides: ablations: the nested overrides of mnf_csc's sections.
        sections: the method's parsed params sections. student, train: the student and its recipe.
        seeds, folds: what is trained. root: the features folder. eval_batch_size: see :class:`CorsmalConfig`.
    """

    name: str
    kind: str
    method: str
    label: str
    sections: dict[str, Any]
    student: SequenceStudentConfig
    train: TrainConfig
    seeds: tuple[int, ...]
    folds: tuple[int, ...]
    root: str
    eval_batch_size: int = 128
    overrides: dict[str, Any] = field(default_factory=dict)
    irrelevant_rate: float | None = None  # the report's run-spec protocol; CORSMAL has no such rate

    @property
    def stage(self) -> str:
        """The DVC stage that trains this run, e.g. ``corsmal/dvc.yaml:distill@kd``."""
        item = self.method if self.kind == "main" else self.label
        return f"{PIPELINE}:{'distill' if self.kind == 'main' else 'ablate'}@{item}"

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        out = dataclasses.asdict(self)
        out["sections"] = {k: dataclasses.asdict(v) for k, v in self.sections.items()}
        out["seeds"], out["folds"] = list(self.seeds), list(self.folds)
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> CorsmalRun:
        """Inverse of :meth:`to_json` (sections parsed strictly again)."""
        m = method_class(raw["method"])
        return cls(
            raw["name"], raw["kind"], raw["method"], raw["label"],
            {k: parse_section(m.sections[k], v, k) for k, v in raw["sections"].items()},
            parse_section(SequenceStudentConfig, raw["student"], "corsmal.student"),
            parse_section(TrainConfig, raw["train"], "corsmal.train"),
            tuple(raw["seeds"]), tuple(raw["folds"]), raw["root"], raw.get("eval_batch_size", 128),
            raw.get("overrides") or {},
        )


def _apply(params: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(params)
    for sec, over in overrides.items():
        out[sec] = {**(out.get(sec) or {}), **over}
    return out


def resolve_runs(params: dict[str, Any], folds: tuple[int, ...] = tuple(FOLDS)) -> dict[str, CorsmalRun]:
    """Every CORSMAL run named in params: each of ``methods``, then each ablation of ``corsmal.ablations``.

    Raises:
        ConfigError: invalid ``methods``, ``seeds``, ``ablations`` or ``corsmal`` section, or a name in
            ``corsmal.ablations`` that ``ablations`` does not define (or listed twice).
    """
    cfg = corsmal_config(params)
    seed_list = tuple(seeds(params))
    abl = ablations(params)
    chosen = cfg.ablations
    unknown = [a for a in chosen if a not in abl]
    if len(set(chosen)) != len(chosen):
        raise ConfigError(f"corsmal.ablations lists an ablation twice: {chosen}.")
    if unknown:
        raise ConfigError(f"corsmal.ablations names {unknown}, which params 'ablations' does not define "
                          f"({sorted(abl)}): fix the list.")
    specs = [(m, "main", m, m, {}) for m in method_names(params)]
    specs += [(f"ablate-{a}", "ablation", "mnf_csc", a, abl[a]) for a in chosen]
    return {
        name: CorsmalRun(name, kind, method, label, method_config(method, _apply(params, over)), cfg.student,
                         cfg.train, seed_list, tuple(folds), cfg.root, cfg.eval_batch_size, over)
        for name, kind, method, label, over in specs
    }


def write_configs(params: dict[str, Any], out_dir: Path = CONFIGS) -> list[Path]:
    """Write ``<out_dir>/<run>.json`` for every run of :func:`resolve_runs` (the folder holds nothing else)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = resolve_runs(params)
    for stale in out_dir.glob("*.json"):
        if stale.stem not in runs:
            stale.unlink()
    paths = []
    for name, run in runs.items():
        p = out_dir / f"{name}.json"
        p.write_text(json.dumps(run.to_json(), indent=1, sort_keys=True) + "\n")
        paths.append(p)
    return paths


def load_run(path: Path) -> CorsmalRun:
    """Read a config written by :func:`write_configs`.

    Raises:
        ConfigError: the file is missing (names the stage to run) or invalid.
    """
    if not path.exists():
        raise ConfigError(f"{path} does not exist: run `dvc repro {PIPELINE}:configs` first.")
    try:
        return CorsmalRun.from_json(json.loads(path.read_text()))
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{path} is not a CORSMAL run config ({e!r}): run `dvc repro {PIPELINE}:configs`.") from e
