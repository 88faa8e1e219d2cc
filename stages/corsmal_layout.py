"""Stage corsmal layout@<fold>: the fold's annotation from the CORSMAL file names (the ``layouts corsmal`` command).

Every feature file under ``corsmal.root`` is read and checked (shape, dtype, finiteness; an error names the file).
Output: corsmal/folds/fold-<k>/annotation.json (reference format: labels; per clip its subset, label, container).
"""

from __future__ import annotations

import argparse
from collections import Counter

from xmkd.cli import run_main
from xmkd.config import load_params
from xmkd.corsmal_paths import corsmal_section, fold_dir
from xmkd.data.corsmal import FOLDS, layout_command
from xmkd.data.layouts import write_annotation
from xmkd.tracking import stage_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--fold", type=int, required=True, choices=sorted(FOLDS))
    args = ap.parse_args()
    root = str(corsmal_section(load_params(), "root"))
    with stage_run(f"corsmal layout@{args.fold}", params={"root": root, "fold": args.fold}) as run:
        ann = layout_command(root, args.fold, check=True)
        out = write_annotation(ann, fold_dir(args.fold) / "annotation.json")
        counts = Counter((e["subset"], e["label"]) for e in ann["database"].values())
        run.log_metrics({f"{s}/{lbl}": float(n) for (s, lbl), n in counts.items()})
        print(f"{out}: " + ", ".join(f"{s} {lbl} {n}" for (s, lbl), n in sorted(counts.items())))


if __name__ == "__main__":
    run_main(main)
