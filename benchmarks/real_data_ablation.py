"""The real-photo ablations as DVC experiments of the real-data pipeline, tabulated from `dvc exp show`.

`[--only NAME ...] [--table-only] [--set k=v ...]`: each variant is `qualitune experiment OVERLAYS
--name abl-NAME --target evaluate` with its `--set` values (500 train photos, outputs under
reports/real/ablation); writes reports/real/ablation/summary.json, rendered by docs/build.py."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

# A ladder, each row adding one thing to the row above (PMOD pre-training is the pipeline default,
# so the rows below it switch it off); two-stage is the third seed method on the same photos.
OFF = "train.pretrain.enabled=false"
VARIANTS = {
    "decimal": ["train.answer_format=decimal", "train.loss_on=answer", OFF],
    "integer": ["train.loss_on=answer", OFF],
    "integer-mask": [OFF],
    "pmod-pretrain": [],
    "two-stage": ["train.method=two_stage", OFF],
}
OVERLAYS = ["configs/params/real-data.yaml", "configs/params/real-data-ablation.yaml"]
METRICS, SUMMARY = "reports/real/ablation/eval_metrics.json", "reports/real/ablation/summary.json"


def summary(shown: list[dict]) -> dict:
    """The rows in ladder order from `dvc exp show --json` output, and the variants not run."""
    found = {}
    for exp in (e for rev in shown for e in rev.get("experiments") or []):
        name, m = (exp.get("name") or "").removeprefix("abl-"), exp["revs"][0]["data"].get("metrics") or {}
        if name in VARIANTS and (m := (m.get(METRICS) or {}).get("data")):
            t, b = m["test"]["expected"], m["test"]["baselines"]
            found[name] = {"variant": name, "overrides": VARIANTS[name], "test_srcc": t["srcc"]}
            found[name] |= {"test_plcc": t["plcc"], "val_srcc": m["val"]["expected"]["srcc"]}
            found[name] |= {"probe_srcc": b["linear_probe"]["srcc"], "pmod_mean_srcc": b["pmod_mean"]["srcc"]}
            found[name]["share_level_changed"] = m["instability"]["share_level_changed"]
    overlay = yaml.safe_load((Path(__file__).resolve().parents[1] / OVERLAYS[1]).read_text())
    rows, missing = [found[v] for v in VARIANTS if v in found], [v for v in VARIANTS if v not in found]
    return {"n_train": overlay["train"]["max_train_samples"], "seed": 0, "rows": rows, "not_run": missing}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="*", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--set", action="append", default=[], help="one more params value for every variant")
    a = p.parse_args()
    for v in [] if a.table_only else a.only:
        sets = [x for s in VARIANTS[v] + a.set for x in ("--set", s)]
        cmd = ["experiment", *OVERLAYS, "--name", f"abl-{v}", "--target", "evaluate", *sets]
        subprocess.run([sys.executable, "-m", "qualitune.cli", *cmd], check=True)
    show = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "show", "--json", "-A"], capture_output=True, check=True
    )
    Path(SUMMARY).write_text(json.dumps(summary(json.loads(show.stdout)), indent=2) + "\n")
    print(f"wrote {SUMMARY}; `python docs/build.py` renders docs/methods.md's table from it")
