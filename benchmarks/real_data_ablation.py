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

VARIANTS = {
    "decimal": ["train.answer_format=decimal"],
    "integer": ["train.loss_on=answer"],
    "integer-mask": [],
    "pmod-pretrain": ["train.pretrain.enabled=true"],
    "two-stage": ["train.method=two_stage"],
}
OVERLAYS = ["configs/params/real-data.yaml", "configs/params/real-data-ablation.yaml"]


def run(name: str, extra: list[str]) -> None:
    sets = [a for s in VARIANTS[name] + extra for a in ("--set", s)]
    cmd = ["qualitune", "experiment", *OVERLAYS, "--name", f"abl-{name}", "--target", "evaluate", *sets]
    subprocess.run([sys.executable, "-m", "qualitune.cli", *cmd[1:]], check=True)


def table() -> None:
    show = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json", "-A"], capture_output=True)
    print(
        "| variant | SRCC | PLCC | probe SRCC | PMOD-mean SRCC | level changed |\n|---|---|---|---|---|---|"
    )
    for exp in (e for rev in json.loads(show.stdout) for e in rev.get("experiments") or []):
        data = exp["revs"][0]["data"]
        name = (exp.get("name") or "").removeprefix("abl-")
        m = (data.get("metrics") or {}).get(OVERLAY_METRICS, {}).get("data")
        if name in VARIANTS and m:
            t, b, inst = m["test"]["expected"], m["test"]["baselines"], m["instability"]
            probe, pmod = b["linear_probe"]["srcc"], b["pmod_mean"]["srcc"]
            print(f"| {name} | {t['srcc']:.3f} | {t['plcc']:.3f} | {probe:.3f} | {pmod:.3f} |", end="")
            print(f" {inst['share_level_changed']:.2f} |")


OVERLAY_METRICS = "reports/real/ablation/eval_metrics.json"

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="*", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--set", action="append", default=[], help="one more params value for every variant")
    a = p.parse_args()
    for v in [] if a.table_only else a.only:
        run(v, a.set)
    table()
