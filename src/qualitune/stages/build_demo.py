"""DVC stage `build_demo`: the embedded default dataset from packaged media (params section `demo`)."""

from __future__ import annotations

import sys
import time

from qualitune.config import section
from qualitune.demo import DemoConfig, build_demo, summary
from qualitune.stages import stage_main


def run_stage(params: dict) -> int:
    cfg = DemoConfig.from_section(section(params, "demo"))  # validates the keys
    options = {k: v for k, v in vars(cfg).items() if k != "out_dir"}
    t0 = time.perf_counter()
    labels = build_demo(cfg.out_dir, **options)
    print(summary(labels))
    print(f"demo dataset written to {cfg.out_dir} in {time.perf_counter() - t0:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    return stage_main("build_demo", run_stage, argv)


if __name__ == "__main__":
    sys.exit(main())
