"""Every run named in params.yaml, resolved into one validated JSON config per run.

A *run* is one distillation setting trained for every seed in ``seeds``. Four kinds, one DVC stage
template each (all call ``stages/distill.py --run <name>``):

==============  ===================================  ===============================================
kind            run name (= config/metrics stem)     DVC stage
==============  ===================================  ===============================================
main            ``<method>``                         ``distill@<method>`` (foreach ``methods``)
ablation        ``ablate-<name>``                    ``ablate@<name>`` (foreach ``ablations``)
robustness      ``robust-<method>-<rate>``           ``robust@<method>-<rate>`` (matrix)
reverse         ``reverse-<method>``                 ``reverse@<method>`` (foreach ``reverse.methods``)
==============  ===================================  ===============================================

- *ablations* are ``mnf_csc`` with nested overrides of its params sections (``ablations: {no_mnf: {mnf:
  {enabled: false}}}``);
- *robustness* runs train the same video student with the teacher's outputs of another irrelevant-sound
  rate: the videos are the same (the benchmark's video does not depend on the rate), only which clips
  carry irrelevant sound changes (``src/xmkd/data/conditions.py``);
- *reverse* runs swap the modalities: a video teacher (a main-table student) distils into an audio student.

The ``resolve_configs`` stage writes ``data/configs/<run>.json``; each training stage depends on its
run's file alone (not on params sections), so ``dvc exp run -S csc.temperature=0.1`` re-runs only the runs
whose resolved config changed. Which sections a method reads is declared by the method's class.
Everything is validated here, before any training starts.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from xmkd.config import parse_section
from xmkd.errors import ConfigError
from xmkd.launch import DistributedConfig
from xmkd.methods import method_class, method_config
from xmkd.models.student import StudentConfig
from xmkd.train import TrainConfig

Kind = Literal["main", "ablation", "robustness", "reverse"]
_NAME = re.compile(r"^[A-Za-z0-9_.]+$")
# benchmark keys that decide which clip carries which sound condition (robustness runs)
CONDITION_KEYS = ("seed", "n_train", "n_val", "n_test", "mismatch_share")
# keys that moved out of the train section (the loop does not see them)
MOVED_TRAIN_KEYS = {k: f"distributed.{k}" for k in ("nproc", "nnodes", "rdzv_endpoint", "backend")}


@dataclass(frozen=True)
class EvaluateConfig:
    """``evaluate`` section: map_topk = mAP depth (reference: 500); batch_size for inference."""

    map_topk: int = 500
    batch_size: int = 256


@dataclass(frozen=True)
class RobustnessConfig:
    """``robustness`` section: top-1 of ``methods`` as the irrelevant-sound rate varies.

    Attributes:
        methods: methods to train at every rate (issue: kd, the best two baselines, mnf_csc). Only methods
            that use the teacher: a teacher-free main method (``none``) gives the same student at every rate,
            so the report takes its row from the main run at every rate.
        rates: irrelevant-sound rates in [0, 1] besides ``benchmark.irrelevant_rate`` (the main runs give
            that column).
    """

    methods: list[str] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        bad = [r for r in self.rates if not 0.0 <= r <= 1.0]
        if bad:
            raise ValueError(f"robustness.rates must lie in [0, 1], got {bad}")


@dataclass(frozen=True)
class ReverseConfig:
    """``reverse`` section: the reverse direction, a video teacher distilling into an audio student.

    Attributes:
        methods: methods run with the modalities swapped.
        teacher_run: the main-table run whose video student is the teacher (must be in ``methods``).
        teacher_seed: which seed of that run.
        audio_channels: conv-block widths of the audio student (log-mel CNN); d = the last width.
    """

    methods: list[str] = field(default_factory=list)
    teacher_run: str = "none"
    teacher_seed: int = 0
    audio_channels: list[int] = field(default_factory=lambda: [8, 16, 32, 64])


@dataclass(frozen=True)
class RunSpec:
    """One run named in params.yaml (see the module docstring for the kinds and names).

    Attributes:
        name: run name, the stem of its config, metrics and checkpoint folder.
        kind: ``main``, ``ablation``, ``robustness`` or ``reverse``.
        method: distillation method.
        label: display name (method, or ablation name).
        irrelevant_rate: robustness runs: the irrelevant-sound rate; None = the benchmark as built.
        overrides: ablations: nested overrides of the method's params sections.
    """

    name: str
    kind: Kind
    method: str
    label: str
    irrelevant_rate: float | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def stage(self) -> str:
        """The DVC stage that trains this run."""
        return {
            "main": f"distill@{self.method}",
            "ablation": f"ablate@{self.label}",
            "robustness": f"robust@{self.method}-{self.irrelevant_rate}",
            "reverse": f"reverse@{self.method}",
        }[self.kind]


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs besides the data: method sections, training, student, seeds, evaluation.

    Attributes:
        method: distillation method name; sections: its parsed params sections.
        train, student, evaluate: the shared settings (a reverse run's student is the audio CNN).
        distributed: how many processes train each seed (DDP; :class:`xmkd.launch.DistributedConfig`).
        seeds: every seed this run trains.
        name, kind, label: see :class:`RunSpec`.
        modality: ``video`` (student sees frames, audio teacher) or ``audio`` (reverse direction).
        irrelevant_rate: robustness runs only; ``condition_keys`` holds the benchmark keys that
            decide which clips carry irrelevant sound at that rate.
        teacher: where the frozen teacher outputs come from (``data/teacher``,
            ``data/teacher_conditions``, ``data/video_teacher``).
    """

    method: str
    sections: dict[str, Any]
    train: TrainConfig
    student: StudentConfig
    evaluate: EvaluateConfig = EvaluateConfig()
    seeds: tuple[int, ...] = (0,)
    name: str = ""
    kind: str = "main"
    label: str = ""
    modality: str = "video"
    irrelevant_rate: float | None = None
    condition_keys: dict[str, Any] | None = None
    teacher: str = "data/teacher"
    distributed: DistributedConfig = DistributedConfig()

    def __post_init__(self) -> None:
        world = self.distributed.world_size
        if world > 1 and self.train.batch_size % world:
            raise ConfigError(
                f"train.batch_size = {self.train.batch_size} must be a multiple of distributed.nproc x "
                f"distributed.nnodes = {world} (each process takes batch_size / (nproc x nnodes) clips per step): "
                "change one of them."
            )
        if world > 1 and self.train.seed_workers > 1:
            raise ConfigError(
                f"train.seed_workers = {self.train.seed_workers} with distributed.nproc x distributed.nnodes = {world}: "
                "distributed runs train the seeds one after another; set train.seed_workers: 0 (or 1)."
            )

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable form (dataclasses as dicts, sorted keys on dump)."""
        return {
            "method": self.method,
            "sections": {k: dataclasses.asdict(v) for k, v in self.sections.items()},
            "train": dataclasses.asdict(self.train),
            "student": dataclasses.asdict(self.student),
            "evaluate": dataclasses.asdict(self.evaluate),
            "seeds": list(self.seeds),
            "name": self.name,
            "kind": self.kind,
            "label": self.label,
            "modality": self.modality,
            "irrelevant_rate": self.irrelevant_rate,
            "condition_keys": self.condition_keys,
            "teacher": self.teacher,
            "distributed": dataclasses.asdict(self.distributed),
        }


def method_names(params: dict[str, Any], key: str = "methods", where: str = "methods") -> list[str]:
    """A list of method names, validated (non-empty, unique, every name registered).

    Raises:
        ConfigError: not a list of strings, duplicates, or an unknown method (known ones listed).
    """
    names = params.get(key)
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"params.yaml '{where}' must be a non-empty list of method names, e.g. [none, kd, mnf_csc].")
    if len(set(names)) != len(names):
        raise ConfigError(f"params.yaml '{where}' lists a method twice: {names}.")
    for n in names:
        method_class(n)
    return names


def seeds(params: dict[str, Any]) -> list[int]:
    """The ``seeds`` list, validated (non-empty list of distinct ints)."""
    s = params.get("seeds")
    if not isinstance(s, list) or not s or not all(isinstance(x, int) and not isinstance(x, bool) for x in s):
        raise ConfigError("params.yaml 'seeds' must be a non-empty list of integers, e.g. [0, 1, 2].")
    if len(set(s)) != len(s):
        raise ConfigError(f"params.yaml 'seeds' lists a seed twice: {s}.")
    return s


def _section(params: dict[str, Any], cls: type, name: str) -> Any:
    return parse_section(cls, params.get(name) or {}, name)


def check_moved_keys(train: dict[str, Any] | None, where: str = "params.yaml") -> None:
    """Reject the DDP keys that used to be in the ``train`` section, naming where they live now.

    Raises:
        ConfigError: ``train.nproc`` (or ``nnodes``, ``rdzv_endpoint``, ``backend``) is set.
    """
    moved = [k for k in MOVED_TRAIN_KEYS if k in (train or {})]
    if moved:
        raise ConfigError(
            f"{where}: {', '.join(f'train.{k}' for k in moved)} moved to the 'distributed' section "
            f"({', '.join(MOVED_TRAIN_KEYS[k] for k in moved)}): move the key(s) there"
            + (" (re-run `dvc repro resolve_configs` to rewrite the run configs)." if where != "params.yaml" else ".")
        )


def ablations(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``ablations`` mapping {name: nested overrides of mnf_csc's sections}, validated.

    Raises:
        ConfigError: not a mapping, a bad name, or an override of a section mnf_csc does not read.
    """
    abl = params.get("ablations") or {}
    if not isinstance(abl, dict):
        raise ConfigError("params.yaml 'ablations' must map a name to overrides, e.g. {no_csc: {csc: {weight: 0.0}}}.")
    readable = method_class("mnf_csc").sections
    for name, over in abl.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"ablation name {name!r}: use letters, digits, '_' and '.' only.")
        if not isinstance(over, dict) or not all(isinstance(v, dict) for v in over.values()):
            raise ConfigError(f"ablations.{name} must map sections to overrides, e.g. {{csc: {{weight: 0.0}}}}.")
        for sec in over:
            if sec not in readable:
                hint = difflib.get_close_matches(sec, list(readable), n=1)
                raise ConfigError(
                    f"ablations.{name} overrides section '{sec}', which mnf_csc does not read (it reads "
                    f"{sorted(readable)}){f'; did you mean {hint[0]!r}?' if hint else ''}."
                )
    return abl


def run_specs(params: dict[str, Any]) -> list[RunSpec]:
    """Every run named in params, in params order: main methods, ablations, robustness, reverse.

    Raises:
        ConfigError: invalid lists, unknown methods, or a bad ablation/robustness/reverse section.
    """
    specs = [RunSpec(m, "main", m, m) for m in method_names(params)]
    specs += [RunSpec(f"ablate-{n}", "ablation", "mnf_csc", n, overrides=o) for n, o in ablations(params).items()]
    rob = _section(params, RobustnessConfig, "robustness")
    if rob.methods:
        method_names({"m": rob.methods}, "m", "robustness.methods")
        for m in rob.methods:
            if not method_class(m).uses_teacher:
                raise ConfigError(
                    f"robustness.methods lists '{m}', which uses no teacher: its student is the same at every "
                    f"irrelevant-sound rate, so the report takes its row from the main run ('{m}' in methods) at "
                    f"every rate. Remove '{m}' from robustness.methods."
                )
            for r in rob.rates:
                specs.append(RunSpec(f"robust-{m}-{r}", "robustness", m, m, irrelevant_rate=r))
    rev = _section(params, ReverseConfig, "reverse")
    if rev.methods:
        method_names({"m": rev.methods}, "m", "reverse.methods")
        if rev.teacher_run not in params["methods"]:
            raise ConfigError(
                f"reverse.teacher_run '{rev.teacher_run}' must be one of the main methods {params['methods']} "
                "(its video student is the reverse direction's teacher)."
            )
        specs += [RunSpec(f"reverse-{m}", "reverse", m, m) for m in rev.methods]
    return specs


def _apply(params: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(params)
    for sec, over in overrides.items():
        out[sec] = {**(out.get(sec) or {}), **over}
    return out


def resolve(params: dict[str, Any]) -> dict[str, RunConfig]:
    """Validate params and build the :class:`RunConfig` of every run named in params.

    Raises:
        ConfigError: any invalid, unknown or missing parameter.
    """
    check_moved_keys(params.get("train"))
    train = _section(params, TrainConfig, "train")
    distributed = _section(params, DistributedConfig, "distributed")
    student = _section(params, StudentConfig, "student")
    evaluate = _section(params, EvaluateConfig, "evaluate")
    seed_list = tuple(seeds(params))
    rev = _section(params, ReverseConfig, "reverse")
    bench = params.get("benchmark") or {}
    out: dict[str, RunConfig] = {}
    for spec in run_specs(params):
        sections = method_config(spec.method, _apply(params, spec.overrides))
        extra: dict[str, Any] = {}
        if spec.kind == "robustness":
            extra = {
                "irrelevant_rate": spec.irrelevant_rate,
                "condition_keys": {k: bench.get(k) for k in CONDITION_KEYS},
                "teacher": "data/teacher_conditions",
            }
        if spec.kind == "reverse":
            extra = {
                "modality": "audio",
                "teacher": "data/video_teacher",
            }
        run_student = (
            StudentConfig(
                arch="audio_cnn",
                audio_channels=list(rev.audio_channels),
                n_mels=int((params.get("features") or {}).get("n_mels", 40)),
            ) if spec.kind == "reverse" else student
        )
        out[spec.name] = RunConfig(
            spec.method, sections, train, run_student, evaluate, seed_list, spec.name, spec.kind, spec.label,
            distributed=distributed, **extra,
        )
    return out


def write_configs(params: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write ``<out_dir>/<run>.json`` for every run; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rc in resolve(params).items():
        p = out_dir / f"{name}.json"
        p.write_text(json.dumps(rc.to_json(), indent=1, sort_keys=True) + "\n")
        paths.append(p)
    return paths


def load_run_config(path: Path) -> RunConfig:
    """Read a resolved config written by :func:`write_configs`.

    Raises:
        ConfigError: the file is missing (run the resolve_configs stage).
    """
    if not path.exists():
        raise ConfigError(f"{path} does not exist: run `dvc repro resolve_configs` (or the whole pipeline) first.")
    raw = json.loads(path.read_text())
    check_moved_keys(raw.get("train"), where=str(path))
    cls = method_class(raw["method"])
    sections = {k: parse_section(cls.sections[k], v, k) for k, v in raw["sections"].items()}
    return RunConfig(
        raw["method"],
        sections,
        parse_section(TrainConfig, raw["train"], "train"),
        parse_section(StudentConfig, raw["student"], "student"),
        parse_section(EvaluateConfig, raw.get("evaluate") or {}, "evaluate"),
        tuple(raw.get("seeds") or (0,)),
        raw.get("name", raw["method"]),
        raw.get("kind", "main"),
        raw.get("label", raw["method"]),
        raw.get("modality", "video"),
        raw.get("irrelevant_rate"),
        raw.get("condition_keys"),
        raw.get("teacher", "data/teacher"),
        parse_section(DistributedConfig, raw.get("distributed") or {}, "distributed"),
    )
