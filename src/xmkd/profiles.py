"""Named parameter profiles: one command switches the pipeline to another setting, with no code edited.

A profile is a *partial* ``params.yaml`` stored as ``profiles/<name>.yaml``: the same nesting, only the keys it
changes. It is applied as a DVC experiment, ``dvc exp run -n <name> -S key=value ...``: DVC rewrites params.yaml
in the experiment (not in your workspace), and every ``-S`` value uses Hydra's override syntax. So a profile is
never a second copy of params.yaml that can drift: keys it does not mention keep their params.yaml values.

Command line (run from the project root)::

    python -m xmkd.profiles list                      # available profiles
    python -m xmkd.profiles show paper                # key: params.yaml value -> profile value
    python -m xmkd.profiles overrides paper           # the -S arguments, shell-quoted, on one line
    python -m xmkd.profiles run paper [-- --queue]    # dvc exp run -n paper -S ... [extra dvc args]
    python -m xmkd.profiles run ucf51 paper           # several profiles, combined in order: -n ucf51-paper

A profile can also *remove* keys, e.g. entries of a mapping such as ``ablations``, with a top-level list
``remove: [ablations.no_csc, ...]`` (dotted keys, each applied as ``-S '~key'``, Hydra's delete), and name the
pipeline it runs with a top-level list ``targets: [corsmal/dvc.yaml]`` (passed to ``dvc exp run``; default: the
project's dvc.yaml). A profile may consist of ``targets`` alone (``corsmal``: the CORSMAL pipeline as params.yaml
sets it).

Before anything is printed or run, the profile is validated against params.yaml: every key must already exist
there (a typo names the closest existing key), a mapping cannot replace a value or the reverse, and (for ``run``)
the sections the profile touches are parsed strictly with the pipeline's own config classes, so a wrong type
fails here and not hours into ``dvc exp run``.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import math
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from xmkd.config import flatten, load_params, repo_root
from xmkd.errors import ConfigError, XmkdError

PROFILES_DIR = "profiles"
REMOVE = "remove"  # a profile's top-level list of dotted params keys it deletes (not a params.yaml key)
TARGETS = "targets"  # a profile's top-level list of dvc.yaml files / stages for `dvc exp run` (not a params key)
# One component of a key in Hydra's override grammar (hydra-core 1.3, OverrideLexer.g4: ID).
_HYDRA_ID = re.compile(r"^[A-Za-z_$][A-Za-z0-9_\-$]*$")

# Hydra's grammar (hydra-core 1.3, OverrideLexer.g4): these unquoted words are not strings.
_RESERVED = re.compile(r"(?i)^(null|true|false|[+-]?inf|nan)$")
# A conservative subset of Hydra's unquoted string: letters, digits, _ - . / not starting like a number
# (relative paths ./x and ../x included).
_BARE = re.compile(r"^(?:[A-Za-z_/]|\.\.?/)[A-Za-z0-9_\-./]*$")


def profiles_dir(root: Path | None = None) -> Path:
    """``<project root>/profiles`` (see :func:`xmkd.config.repo_root`)."""
    return (root or repo_root()) / PROFILES_DIR


def available_profiles(root: Path | None = None) -> list[str]:
    """Names of the profiles in ``profiles/`` (``<name>.yaml``), sorted."""
    d = profiles_dir(root)
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def profile_path(name: str, root: Path | None = None) -> Path:
    """Path of profile ``name``: ``profiles/<name>.yaml``, or ``name`` itself if it is a path to a YAML file.

    Raises:
        ConfigError: no such profile; the message lists the available ones.
    """
    as_path = Path(name)
    if as_path.suffix in (".yaml", ".yml") and as_path.is_file():
        return as_path
    p = profiles_dir(root) / f"{name}.yaml"
    if not p.is_file():
        known = available_profiles(root)
        hint = difflib.get_close_matches(name, known, n=1)
        raise ConfigError(
            f"no profile '{name}' (looked for {p})"
            + (f"; did you mean '{hint[0]}'?" if hint else "")
            + f" Available profiles: {', '.join(known) or 'none'}. A profile is a partial params.yaml in {PROFILES_DIR}/."
        )
    return p


def load_profile(name: str, root: Path | None = None) -> dict[str, Any]:
    """Read profile ``name`` (see :func:`profile_path`) as a nested dict of the params it changes.

    Raises:
        ConfigError: the profile does not exist, is not valid YAML, or is not a non-empty mapping.
    """
    p = profile_path(name, root)
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"profile {p} is not valid YAML: {e}. Fix the file.") from e
    if not isinstance(data, dict) or not data:
        raise ConfigError(
            f"profile {p} must be a non-empty mapping of params.yaml keys (nested as in params.yaml), "
            f"got {type(data).__name__}."
        )
    return data


def _all_keys(d: dict[str, Any], prefix: str = "") -> list[str]:
    """Every dotted key of a nested dict, sections included: {"a": {"b": 1}} -> ["a", "a.b"]."""
    out: list[str] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.append(key)
        if isinstance(v, dict):
            out.extend(_all_keys(v, key + "."))
    return out


def removals(profile: dict[str, Any]) -> list[str]:
    """The dotted keys the profile deletes (its top-level ``remove`` list; empty when it has none).

    Raises:
        ConfigError: ``remove`` is not a list of dotted-key strings.
    """
    keys = profile.get(REMOVE, [])
    if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
        raise ConfigError(
            f"profile '{REMOVE}' must be a list of dotted params.yaml keys, e.g. [ablations.no_csc]; got {keys!r}."
        )
    return keys


def targets(profile: dict[str, Any]) -> list[str]:
    """The ``dvc exp run`` targets the profile names (its top-level ``targets`` list; empty = dvc.yaml).

    Raises:
        ConfigError: ``targets`` is not a list of non-empty strings.
    """
    ts = profile.get(TARGETS, [])
    if not isinstance(ts, list) or not all(isinstance(t, str) and t for t in ts):
        raise ConfigError(f"profile '{TARGETS}' must be a list of dvc.yaml files or stages, e.g. [corsmal/dvc.yaml]; "
                          f"got {ts!r}.")
    return ts


def _settings(profile: dict[str, Any]) -> dict[str, Any]:
    """The profile without its ``remove`` and ``targets`` lists: the keys it sets."""
    return {k: v for k, v in profile.items() if k not in (REMOVE, TARGETS)}


def validate(params: dict[str, Any], profile: dict[str, Any]) -> None:
    """Check that every key of ``profile`` exists in ``params`` with the same shape (mapping vs value), and that
    every key it removes exists and is not also set by it.

    Raises:
        ConfigError: an unknown key (the closest existing dotted key is named), or a mapping where params.yaml
            has a value (or the reverse), or a key both removed and set.
    """
    targets(profile)  # a well-formed list
    known = _all_keys(params)
    set_keys = _all_keys(_settings(profile))
    for key in removals(profile):
        bad = [part for part in key.split(".") if not _HYDRA_ID.match(part)]
        if bad:
            raise ConfigError(
                f"profile removes '{key}': DVC's -S (Hydra) cannot address it ({bad[0]!r} is not a Hydra key; a name "
                "with a '.' in it, such as tau0_0.03, reads as two keys). Remove only such keys, or a whole section."
            )
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"profile removes '{key}', which is not in params.yaml{hint}. Fix the key in the profile's "
                f"'{REMOVE}' list."
            )
        if any(k == key or k.startswith(key + ".") for k in set_keys):
            raise ConfigError(f"profile both removes and sets '{key}': keep one of the two.")

    def walk(base: dict[str, Any], over: dict[str, Any], prefix: str) -> None:
        for k, v in over.items():
            key = f"{prefix}{k}"
            if not isinstance(k, str) or k not in base:
                close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(
                    f"profile key '{key}' is not in params.yaml{hint}. A profile may only change keys that exist "
                    "in params.yaml: fix the key in the profile."
                )
            if isinstance(v, dict) != isinstance(base[k], dict):
                want = "a mapping (section)" if isinstance(base[k], dict) else "a value"
                raise ConfigError(
                    f"profile key '{key}' must be {want}, as in params.yaml; got {v!r}. Fix the profile "
                    "(set the keys inside a section one by one)."
                )
            if isinstance(v, dict):
                walk(base[k], v, key + ".")

    walk(params, _settings(profile), "")


def merge(params: dict[str, Any], profile: dict[str, Any]) -> dict[str, Any]:
    """params.yaml with the profile applied (a new dict; neither argument is modified).

    Raises:
        ConfigError: see :func:`validate`.
    """
    validate(params, profile)
    out = copy.deepcopy(params)

    def put(base: dict[str, Any], over: dict[str, Any]) -> None:
        for k, v in over.items():
            if isinstance(v, dict):
                put(base[k], v)
            else:
                base[k] = copy.deepcopy(v)

    for key in removals(profile):
        *parents, last = key.split(".")
        base = out
        for k in parents:
            base = base[k]
        del base[last]
    put(out, _settings(profile))
    return out


def _quote(s: str) -> str:
    """Hydra single-quoted string: escape quotes, the backslashes before them or at the end, and ``${``."""
    body = re.sub(r"(\\*)(')", lambda m: m.group(1) * 2 + "\\'", s)
    body = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, body)
    body = body.replace("${", "\\${")
    return f"'{body}'"


def format_value(value: Any) -> str:
    """One value in Hydra override syntax, as DVC's ``-S`` parses it.

    ``None`` -> ``null``; booleans -> ``true``/``false``; numbers as Python writes them (``0.0003``,
    ``1e-05``, ``inf``, ``nan``); lists -> ``[a,b]``; dicts -> ``{k:v}``; strings bare when Hydra reads them back
    as the same string (``r2plus1d_18``, ``data/x.json``), else single-quoted (``'a b'``, ``'null'``, ``'1.5'``).

    Raises:
        ConfigError: a value of another type (e.g. a date) that has no override syntax.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return value if _BARE.match(value) and not _RESERVED.match(value) else _quote(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{format_value(str(k))}:{format_value(v)}" for k, v in value.items()) + "}"
    raise ConfigError(f"cannot write {value!r} ({type(value).__name__}) as a DVC -S override: use a plain YAML value.")


def to_overrides(profile: dict[str, Any]) -> list[str]:
    """Overrides for ``dvc exp run -S``: ``~key`` for each removed key, then ``key=value`` per leaf it sets
    (dotted keys, Hydra values), in file order.

    Example: ``{"train": {"lr": 0.0003, "milestones": [150]}}`` -> ``["train.lr=0.0003", "train.milestones=[150]"]``;
    ``{"remove": ["ablations.no_csc"]}`` -> ``["~ablations.no_csc"]``.
    """
    return [f"~{k}" for k in removals(profile)] + [
        f"{k}={format_value(v)}" for k, v in flatten(_settings(profile)).items()
    ]


#: what :func:`diff` gives as the new value of a removed key
REMOVED = "<removed>"


def diff(params: dict[str, Any], profile: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted key, params.yaml value, profile value) for every key of the profile (validated first); a removed
    key's new value is :data:`REMOVED`."""
    merged = merge(params, profile)
    old, new = flatten(params), flatten(merged)
    rows: list[tuple[str, Any, Any]] = []
    for key in removals(profile):
        inside = {k: v for k, v in old.items() if k == key or k.startswith(key + ".")}
        rows += [(k, v, REMOVED) for k, v in inside.items()]
    return rows + [(k, old.get(k), new[k]) for k in flatten(_settings(profile))]


def _strict_sections(merged: dict[str, Any], sections: set[str]) -> None:
    """Parse the touched sections of the merged params with the pipeline's own strict parsers."""
    from xmkd.runs import resolve

    # always: train, student, evaluate, methods, seeds and the listed methods' sections
    checks: list[Callable[[], Any]] = [lambda: resolve(merged)]
    if "features" in sections:
        from xmkd.data.features import config_from_params as features_config

        checks.append(lambda: features_config(merged))
    if "benchmark" in sections:
        from xmkd.data.benchmark import config_from_params as benchmark_config

        checks.append(lambda: benchmark_config(merged))
    if "sources" in sections:
        from xmkd.data.sources import parse_config

        checks.append(lambda: parse_config(merged))
    if "teacher" in sections:
        from xmkd.config import parse_section
        from xmkd.teacher import TeacherConfig

        checks.append(lambda: parse_section(TeacherConfig, merged.get("teacher"), "teacher"))
    if "teacher_import" in sections:
        from xmkd.config import parse_section
        from xmkd.teacher_import import TeacherImportConfig

        checks.append(lambda: parse_section(TeacherImportConfig, merged.get("teacher_import"), "teacher_import"))
    if "corsmal" in sections:
        from xmkd.corsmal_config import resolve_runs

        checks.append(lambda: resolve_runs(merged))
    from xmkd.config import parse_section
    from xmkd.methods import known_methods, method_class

    for name in known_methods():  # sections of methods not in `methods` are checked too
        for section, cls in method_class(name).sections.items():
            if section in sections and section in merged:
                checks.append(lambda s=section, c=cls: parse_section(c, merged[s], s))
    for check in checks:
        check()


def combine(profiles: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several profiles as one (nested merge; a key set by a later profile wins; the ``remove`` lists are joined),
    e.g. ``ucf51`` + ``paper``."""
    out: dict[str, Any] = {}
    removed = [k for p in profiles for k in removals(p)]

    def put(base: dict[str, Any], over: dict[str, Any]) -> None:
        for k, v in over.items():
            if isinstance(v, dict) and isinstance(base.get(k), dict):
                put(base[k], v)
            else:
                base[k] = copy.deepcopy(v)

    for p in profiles:
        put(out, _settings(p))
    if removed:
        out[REMOVE] = list(dict.fromkeys(removed))
    named = [t for p in profiles for t in targets(p)]
    if named:
        out[TARGETS] = list(dict.fromkeys(named))
    return out


def check(
    name: str | Sequence[str], root: Path | None = None, strict: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load profile ``name`` (or several, combined in order, see :func:`combine`) and validate it against
    ``<root>/params.yaml``; returns (profile, merged params).

    Args:
        strict: also parse the sections the profile touches with the stages' config classes (imports torch).

    Raises:
        ConfigError: unknown profile or key, wrong shape, or (strict) a value the pipeline would reject.
    """
    root = root or repo_root()
    names = [name] if isinstance(name, str) else list(name)
    params = load_params(root / "params.yaml")
    parts = [load_profile(n, root) for n in names]
    for part in parts:
        validate(params, part)  # each profile on its own, so an error names keys as its file has them
    profile = combine(parts)
    lacking = [t for t in targets(profile) if t.endswith(".yaml") and not (root / t).is_file()]
    if lacking:
        raise ConfigError(f"profile targets {lacking}, which this checkout does not have: fix the profile's "
                          f"'{TARGETS}' list.")
    merged = merge(params, profile)
    if strict:
        touched = set(_settings(profile)) | {k.split(".")[0] for k in removals(profile)}
        if any(t.startswith("corsmal") for t in targets(profile)):
            touched.add("corsmal")
        _strict_sections(merged, touched)
    return profile, merged


def run_command(
    name: str | Sequence[str], profile: dict[str, Any], exp_name: str | None = None, extra: Sequence[str] = ()
) -> list[str]:
    """The ``dvc exp run -n <exp_name or the profile names joined by '-'> -S ... <extra> <targets>`` command line."""
    names = [name] if isinstance(name, str) else list(name)
    dvc = Path(sys.executable).parent / "dvc"  # the project's dvc, also when .venv is not activated
    default = "-".join(Path(n).stem for n in names)
    cmd = [str(dvc) if dvc.exists() else "dvc", "exp", "run", "-n", exp_name or default]
    for o in to_overrides(profile):
        cmd += ["-S", o]
    return cmd + list(extra) + targets(profile)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (see the module docstring). Returns the exit status (``run``: DVC's)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    ap = argparse.ArgumentParser(prog="python -m xmkd.profiles", description="Named parameter profiles.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="available profiles")
    for cmd, help_ in (
        ("show", "print what the profile changes: key: params.yaml value -> profile value"),
        ("overrides", "print the dvc exp run -S arguments (shell-quoted, one line)"),
        ("run", "dvc exp run -n NAME -S ... [-- extra dvc exp run arguments, e.g. --queue]"),
    ):
        p = sub.add_parser(cmd, help=help_)
        p.add_argument(
            "name", nargs="+", help="profile name (profiles/<name>.yaml) or path to a YAML file; several are "
            "combined in order (a later one wins on a key both set), e.g. `ucf51 paper`"
        )
        if cmd == "run":
            p.add_argument("--exp-name", help="experiment name (default: the profile names joined by '-')")
            p.add_argument("--dry-run", action="store_true", help="print the command, do not run it")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "list":
            print("\n".join(available_profiles()))
            return 0
        if args.cmd == "show":
            profile, _ = check(args.name, strict=False)
            params = load_params(repo_root() / "params.yaml")
            rows = diff(params, profile)
            if targets(profile):
                print(f"runs: {' '.join(targets(profile))}")
            width = max((len(k) for k, _, _ in rows), default=0)
            for k, old, new in rows:
                mark = "  (unchanged)" if old == new else ""
                shown = new if new is REMOVED else format_value(new)
                print(f"{k:<{width}}  {format_value(old)} -> {shown}{mark}")
            return 0
        if args.cmd == "overrides":
            profile, _ = check(args.name, strict=False)
            print(" ".join(f"-S {shlex.quote(o)}" for o in to_overrides(profile)))
            return 0
        profile, _ = check(args.name, strict=True)
        cmd = run_command(args.name, profile, args.exp_name, extra)
        print("+ " + shlex.join(cmd), flush=True)
        if args.dry_run:
            return 0
        return subprocess.call(cmd, cwd=repo_root())
    except XmkdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
