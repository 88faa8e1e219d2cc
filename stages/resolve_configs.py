"""Stage resolve_configs: validate params.yaml and write data/configs/<method>.json per method."""

from __future__ import annotations

from pathlib import Path

from xmkd.cli import run_main
from xmkd.config import load_params
from xmkd.runs import write_configs

OUT = Path("data/configs")


def main() -> None:
    paths = write_configs(load_params(), OUT)
    print(f"wrote {len(paths)} run configs: {', '.join(p.stem for p in paths)}")


if __name__ == "__main__":
    run_main(main)
