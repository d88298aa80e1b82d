"""The demo pipeline at several seeds, as DVC experiments, tabulated from `dvc exp show`.

`[--seeds 1 2 ...] [--table-only] [--set k=v ...]`: each seed K is `qualitune experiment
configs/params/demo-seed.yaml --name demo-seed-K --set model.seed=K --set train.seed=K --target
evaluate` (outputs under models/seeds/, reports/seeds/); the summary, with the default run's seed 0
from reports/eval_metrics.json, goes to reports/seeds/summary.json, rendered by docs/build.py."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

OVERLAY, METRICS = "configs/params/demo-seed.yaml", "reports/seeds/eval_metrics.json"
SUMMARY, DEFAULT = "reports/seeds/summary.json", "reports/eval_metrics.json"


def row(seed: int, m: dict, source: str) -> dict:
    """One seed's VLM (expected mode) and baseline figures per split."""
    out = {"seed": seed, "source": source}
    for split in ("val", "test"):
        v, b = m[split]["expected"], m[split]["baselines"]
        out[split] = {"srcc": v["srcc"], "plcc": v["plcc"], "probe_srcc": b["linear_probe"]["srcc"]}
        out[split]["pmod_mean_srcc"] = b["pmod_mean"]["srcc"]
        out[split]["anchor_probe_srcc"] = (b.get("anchor_probe") or {}).get("srcc")
    return out


def summary(shown: list[dict], default: dict | None, extra: list[str]) -> dict:
    """The seeds found in `dvc exp show --json` output (experiments named demo-seed-K), seed 0 first."""
    rows = [row(0, default, DEFAULT)] if default else []
    for exp in (e for rev in shown for e in rev.get("experiments") or []):
        name, data = exp.get("name") or "", exp["revs"][0]["data"]
        if name.startswith("demo-seed-") and (
            m := ((data.get("metrics") or {}).get(METRICS) or {}).get("data")
        ):
            rows.append(row(int(name.removeprefix("demo-seed-")), m, f"experiment {name}"))
    rows.sort(key=lambda r: r["seed"])
    return {"rows": rows, "set": extra}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", nargs="*", type=int, default=[1, 2])
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--set", action="append", default=[], help="one more params value for every seed")
    a = p.parse_args()
    for k in [] if a.table_only else a.seeds:
        sets = [x for s in [f"model.seed={k}", f"train.seed={k}", *a.set] for x in ("--set", s)]
        cmd = ["experiment", OVERLAY, "--name", f"demo-seed-{k}", "--target", "evaluate", *sets]
        subprocess.run([sys.executable, "-m", "qualitune.cli", *cmd], check=True)
    show = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "show", "--json", "-A"], capture_output=True, check=True
    )
    default = json.loads(Path(DEFAULT).read_text()) if Path(DEFAULT).is_file() else None
    Path(SUMMARY).parent.mkdir(parents=True, exist_ok=True)
    Path(SUMMARY).write_text(json.dumps(summary(json.loads(show.stdout), default, a.set), indent=2) + "\n")
    print(f"wrote {SUMMARY}; `python docs/build.py` renders docs/pipeline.md's seed table from it")
