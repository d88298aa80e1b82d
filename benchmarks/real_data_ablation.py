"""The ablations of the README's "Real data" table, each a `real_data.py` run with overrides.

    python benchmarks/real_data_ablation.py --train-root data/biq2021-train \\
        --eval-root data/biq2021-heldout --out-dir reports/real_data/ablation [--train-images 1000]

Runs, on the same train subset, seed and held-out root:
- IOVQA's label study: decimal labels, integer labels (loss on the whole answer), integer labels
  with the integer-only mask (the recipe);
- VITAL: the recipe with PMOD pre-training of projector + LoRA first;
- one-stage (the recipe) vs two-stage reasoning (describe, then score from the description);
each with the instability of its answers (sampled, T=0.7). Prints a markdown table and writes one
JSON per variant plus `summary.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import real_data  # noqa: E402

VARIANTS: dict[str, list[str]] = {
    "decimal labels": ["train.answer_format=decimal"],
    "integer labels": ["train.loss_on=answer"],
    "integer + integer-only mask": [],
    "integer + mask, PMOD pre-training": ["pretrain.enabled=true"],
    "two-stage (describe, then score)": ["train.method=two_stage", "train.stage1_epochs=1"],
}


def _target(out: Path, name: str) -> Path:
    """The variant's results JSON in the output folder."""
    return out / (name.split(" (")[0].replace(" ", "_").replace(",", "").replace("+", "plus") + ".json")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-root", required=True)
    p.add_argument("--eval-root", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--train-images", type=int, default=1000)
    p.add_argument("--epochs", type=float, default=2)
    p.add_argument("--only", action="append", help="run only these variants (repeatable)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    common = [
        f"max_train_images={args.train_images}",
        f"train.epochs={args.epochs}",
        "eval.modes=[expected]",
        "eval.val=false",
        "instability.n=48",
    ]
    for name, sets in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        argv_run = [
            "--train-root",
            args.train_root,
            "--eval-root",
            args.eval_root,
            "--out",
            str(_target(out, name)),
        ]
        argv_run += ["--threads", str(args.threads), "--speed-items", "16"]
        for s in common + sets:
            argv_run += ["--set", s]
        print(f"=== {name}: {' '.join(sets) or '(recipe)'}", flush=True)
        rc = real_data.main(argv_run)
        if rc != 0:
            return rc
    # The table gathers every variant's JSON in the folder: `--only` reruns some, the rest stay.
    summary = {}
    for name in VARIANTS:
        if not _target(out, name).is_file():
            continue
        res = json.loads(_target(out, name).read_text())
        held = res[Path(args.eval_root).name]
        summary[name] = {
            "srcc": held["srcc"],
            "plcc": held["plcc"],
            "n": held["n"],
            "parse_failures": held.get("parse_failures"),
            "instability": res.get("instability"),
            "train_seconds": res["wall_seconds"].get("train"),
            "pretrain_seconds": res["wall_seconds"].get("pretrain"),
        }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("| variant | SRCC | PLCC | share of answers changed | level changed | mean item std | train s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in summary.items():
        inst = r["instability"] or {}
        secs = (r["train_seconds"] or 0) + (r["pretrain_seconds"] or 0)
        print(
            f"| {name} | {r['srcc']:.3f} | {r['plcc']:.3f} | {inst.get('share_changed', float('nan')):.2f} | "
            f"{inst.get('share_level_changed', float('nan')):.2f} | {inst.get('mean_item_std', float('nan')):.2f} | {secs:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
