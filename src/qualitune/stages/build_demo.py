"""DVC stage `build_demo`: the embedded default dataset from packaged media (params section `demo`)."""

from __future__ import annotations

import argparse
import sys
import time

from qualitune.config import load_params, section
from qualitune.demo_data import DemoConfig, build_demo, summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    cfg = DemoConfig.from_section(section(load_params(args.params), "demo"))  # validates the keys
    options = {k: v for k, v in vars(cfg).items() if k != "out_dir"}
    t0 = time.perf_counter()
    labels = build_demo(cfg.out_dir, **options)
    print(summary(labels))
    print(f"demo dataset written to {cfg.out_dir} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
