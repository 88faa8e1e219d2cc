"""Stage corsmal configs: validate the CORSMAL runs of params.yaml, write corsmal/configs/<run>.json per run."""

from __future__ import annotations

from xmkd.cli import run_main
from xmkd.config import load_params
from xmkd.corsmal_config import write_configs
from xmkd.corsmal_paths import CONFIGS


def main() -> None:
    paths = write_configs(load_params(), CONFIGS)
    print(f"wrote {len(paths)} CORSMAL run configs: {', '.join(p.stem for p in paths)}")


if __name__ == "__main__":
    run_main(main)
