"""The README's ablations as DVC experiments of the real-data pipeline, then one table.

    python benchmarks/real_data_ablation.py [--only NAME ...] [--table-only] [--set key=value ...]

Each variant is `qualitune experiment configs/params/real-data.yaml configs/params/real-data-ablation.yaml
--name abl-NAME --target evaluate` with the variant's `--set` values (500 train photos, outputs under
models/real/ablation and reports/real/ablation). The table comes from `dvc exp show --json`: held-out
(test) SRCC/PLCC in expected mode beside both baselines, and the share of photos whose level changed,
written to reports/real/ablation/summary.json (committed: docs/build.py renders the docs table from it).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

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
SUMMARY = "reports/real/ablation/summary.json"


def run(name: str, extra: list[str]) -> None:
    sets = [a for s in VARIANTS[name] + extra for a in ("--set", s)]
    cmd = ["experiment", *OVERLAYS, "--name", f"abl-{name}", "--target", "evaluate", *sets]
    subprocess.run([sys.executable, "-m", "qualitune.cli", *cmd], check=True)


def summary(shown: list[dict]) -> dict:
    """The ablation rows, in ladder order, from `dvc exp show --json` output (the file docs/ renders)."""
    found = {}
    for exp in (e for rev in shown for e in rev.get("experiments") or []):
        name = (exp.get("name") or "").removeprefix("abl-")
        m = ((exp["revs"][0]["data"].get("metrics") or {}).get(METRICS) or {}).get("data")
        if name in VARIANTS and m:
            t, b = m["test"]["expected"], m["test"]["baselines"]
            found[name] = {
                "variant": name,
                "overrides": VARIANTS[name],
                "test_srcc": t["srcc"],
                "test_plcc": t["plcc"],
                "val_srcc": m["val"]["expected"]["srcc"],
                "probe_srcc": b["linear_probe"]["srcc"],
                "pmod_mean_srcc": b["pmod_mean"]["srcc"],
                "share_level_changed": m["instability"]["share_level_changed"],
            }
    overlay = yaml.safe_load((Path(__file__).resolve().parents[1] / OVERLAYS[1]).read_text())
    return {
        "n_train": overlay["train"]["max_train_samples"],
        "seed": 0,
        "rows": [found[v] for v in VARIANTS if v in found],
        "not_run": [v for v in VARIANTS if v not in found],
    }


def table(s: dict) -> str:
    head = "| variant | test SRCC | test PLCC | val SRCC | probe SRCC | PMOD-mean SRCC | level changed |"
    lines = [head, "|---" * 7 + "|"]
    for r in s["rows"]:
        cells = [r[k] for k in ("test_srcc", "test_plcc", "val_srcc", "probe_srcc", "pmod_mean_srcc")]
        lines.append(
            f"| {r['variant']} | "
            + " | ".join(f"{c:.3f}" for c in cells)
            + f" | {r['share_level_changed']:.2f} |"
        )
    return "\n".join(lines)


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
    result = summary(json.loads(show.stdout))
    with open(SUMMARY, "w") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")
    print(table(result))
    print(f"wrote {SUMMARY} (committed; docs/build.py renders docs/methods.md's table from it)")
