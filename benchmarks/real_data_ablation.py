"""The README's ablations as DVC experiments of the real-data pipeline, then one table.

    python benchmarks/real_data_ablation.py [--only NAME ...] [--table-only] [--set key=value ...]

Each variant is `qualitune experiment configs/params/real-data.yaml configs/params/real-data-ablation.yaml
--name abl-NAME --target evaluate` with the variant's `--set` values (500 train photos, outputs under
models/real/ablation and reports/real/ablation). The table comes from `dvc exp show --json`: held-out
(test) SRCC/PLCC in expected mode beside both baselines, and the share of photos whose level changed.
"""

import argparse
import json
import subprocess
import sys

# A ladder: each row adds one thing to the row above (PMOD pre-training is the pipeline default, so
# the rows below it switch it off); two-stage is the third seed method on the same photos.
OFF = "train.pretrain.enabled=false"
VARIANTS = {
    "decimal": ["train.answer_format=decimal", "train.loss_on=answer", OFF],
    "integer": ["train.loss_on=answer", OFF],
    "integer-mask": [OFF],
    "pmod-pretrain": [],
    "two-stage": ["train.method=two_stage", OFF],
}
OVERLAYS = ["configs/params/real-data.yaml", "configs/params/real-data-ablation.yaml"]
METRICS = "reports/real/ablation/eval_metrics.json"


def run(name: str, extra: list[str]) -> None:
    sets = [a for s in VARIANTS[name] + extra for a in ("--set", s)]
    cmd = ["experiment", *OVERLAYS, "--name", f"abl-{name}", "--target", "evaluate", *sets]
    subprocess.run([sys.executable, "-m", "qualitune.cli", *cmd], check=True)


def rows(shown: list[dict]) -> list[str]:
    """Markdown rows, one per ablation experiment in `dvc exp show --json` output."""
    out = []
    for exp in (e for rev in shown for e in rev.get("experiments") or []):
        name = (exp.get("name") or "").removeprefix("abl-")
        m = ((exp["revs"][0]["data"].get("metrics") or {}).get(METRICS) or {}).get("data")
        if name in VARIANTS and m:
            t, b, inst = m["test"]["expected"], m["test"]["baselines"], m["instability"]
            cells = [t["srcc"], t["plcc"], b["linear_probe"]["srcc"], b["pmod_mean"]["srcc"]]
            out.append(
                f"| {name} | "
                + " | ".join(f"{c:.3f}" for c in cells)
                + f" | {inst['share_level_changed']:.2f} |"
            )
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="*", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--set", action="append", default=[], help="one more params value for every variant")
    a = p.parse_args()
    for v in [] if a.table_only else a.only:
        run(v, a.set)
    show = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "show", "--json", "-A"], capture_output=True, check=True
    )
    print(
        "| variant | SRCC | PLCC | probe SRCC | PMOD-mean SRCC | level changed |\n|---|---|---|---|---|---|"
    )
    print("\n".join(rows(json.loads(show.stdout))))
