"""Training and scoring on the compact backend, idle and beside a competing CPU-bound process.

Users' machines are rarely idle. On 2 cores, libgomp's default wait policy (threads spin for a
while at every barrier, waiting for their partner) turned one competing process into an 8x slower
`train` stage: the partner thread was descheduled, and the spinning one burnt its time slice
waiting for it. `qualitune/__init__.py` therefore defaults `OMP_WAIT_POLICY` to PASSIVE (waiting
threads sleep); this script measures both policies in one run so the choice stays a measurement.

For each policy (`ACTIVE`: libgomp's spinning, what torch did before; `PASSIVE`: the project's
default) and each condition (idle; beside one `while True: pass` process, i.e. one busy core), a
fresh child process (the policy is read once, when torch loads libgomp) builds the compact model
and times, after one warm-up:

- **train**: `qualitune.training.train` (the `train` stage's loop) for one epoch of the IOVQA
  recipe over `--n` synthetic photos, batch 8, projector + LoRA, encoder frozen (its features
  computed in the epoch, as in a first epoch);
- **score**: `Scorer.score_paths` in `expected` mode over the same photos.

Runs are interleaved (policy x condition, repeated `--repeats` times) so that drift on a shared
machine hits all alike; the table gives medians. Last line: one JSON object with `train_slowdown`
and `score_slowdown` (loaded / idle seconds) for the default policy, and the same for ACTIVE under
`before`.

    python benchmarks/under_load.py [--quick] [--n 48] [--repeats 3] [--spin N]

`--spin N` adds libgomp's default policy with GOMP_SPINCOUNT=N (spin N iterations, then sleep).
"""

# isort: split
import qualitune  # noqa: F401  (first: its OMP_WAIT_POLICY default must precede torch's libgomp)

# isort: split
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

POLICIES = ("ACTIVE", "PASSIVE")
# `--spin N` adds a third: libgomp's default policy with GOMP_SPINCOUNT=N (spin briefly, then sleep)
BUSY = "while True: pass"


def _photos(root: Path, n: int) -> list[str]:
    """`n` 384x288 photos: smooth gradients with seeded noise of growing strength."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:288, 0:384]
    paths = []
    for i in range(n):
        base = np.stack([xx * 0.6, yy * 0.8, (xx + yy) * 0.3], axis=-1) % 255
        img = np.clip(base + rng.normal(0, 40 * i / max(1, n - 1), base.shape), 0, 255).astype("uint8")
        p = root / f"p{i}.png"
        Image.fromarray(img).save(p)
        paths.append(str(p))
    return paths


def child(n: int) -> dict:
    import pandas as pd
    import torch

    from qualitune.scorer import Scorer, ScorerSpec
    from qualitune.training import TrainSettings, train
    from qualitune.vlm.model import COMPACT_NAME, load_model, make_processor
    from qualitune.vlm.trainable import LoraSettings

    with tempfile.TemporaryDirectory() as tmp:
        paths = _photos(Path(tmp), n)
        df = pd.DataFrame(
            {
                "item_id": [f"p{i}" for i in range(n)],
                "path": paths,
                "media": "image",
                "mos_norm": [1.0 + 4.0 * i / max(1, n - 1) for i in range(n)],
                "split": "train",
            }
        )
        settings = TrainSettings(
            method="iovqa",
            tuning="warmup",
            epochs=1,
            batch_size=8,
            lr=1e-3,
            seed=0,
            lora=LoraSettings(r=8, alpha=16),
        )
        out = {"threads": torch.get_num_threads(), "policy": os.environ.get("OMP_WAIT_POLICY")}
        for label in ("warmup", "timed"):
            model, tok = load_model(COMPACT_NAME, seed=0)
            proc = make_processor(model, 0, 0)
            t = time.perf_counter()
            result = train(model, tok, proc, df if label == "timed" else df.head(8), settings)
            train_s = time.perf_counter() - t
            result.model.eval()
            scorer = Scorer(
                result.model,
                tok,
                ScorerSpec(
                    base_model=COMPACT_NAME, answer_format=settings.fmt.to_dict(), max_invalid_mass=1.0
                ),
            )
            t = time.perf_counter()
            scorer.score_paths(paths if label == "timed" else paths[:8], mode="expected")
            score_s = time.perf_counter() - t
        out.update(train_s=train_s, score_s=score_s)
    return out


def run_child(policy: str, loaded: bool, n: int) -> dict:
    env = dict(os.environ)
    if policy.startswith("SPIN"):  # the default policy with a bounded spin
        env["OMP_WAIT_POLICY"] = ""  # set (so qualitune keeps it) but no policy: libgomp's default
        env["GOMP_SPINCOUNT"] = policy[len("SPIN") :]
    else:
        env["OMP_WAIT_POLICY"] = policy
    busy = subprocess.Popen([sys.executable, "-c", BUSY]) if loaded else None
    try:
        res = subprocess.run(
            [sys.executable, __file__, "--child", "--n", str(n)], env=env, capture_output=True, text=True
        )
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    if res.returncode != 0:
        raise SystemExit(f"child ({policy}, loaded={loaded}) failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="16 photos, 1 repeat")
    ap.add_argument("--n", type=int, default=None, help="photos per run (default 48, quick 16)")
    ap.add_argument("--repeats", type=int, default=None, help="runs per cell (default 3, quick 1)")
    ap.add_argument("--spin", type=int, default=None, help="also time GOMP_SPINCOUNT=N (default policy)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    n = args.n or (16 if args.quick else 48)
    if args.child:
        print(json.dumps(child(n)))
        return
    repeats = args.repeats or (1 if args.quick else 3)
    policies = POLICIES + ((f"SPIN{args.spin}",) if args.spin is not None else ())
    cells: dict[tuple[str, bool], list[dict]] = {}
    for _ in range(repeats):
        for policy in policies:
            for loaded in (False, True):
                r = run_child(policy, loaded, n)
                cells.setdefault((policy, loaded), []).append(r)
                print(
                    f"{policy:8s} {'loaded' if loaded else 'idle':7s} train {r['train_s']:6.2f} s  score {r['score_s']:6.2f} s",
                    flush=True,
                )

    def med(policy: str, loaded: bool, key: str) -> float:
        return statistics.median(r[key] for r in cells[(policy, loaded)])

    summary = {}
    for policy in policies:
        s = {"n": n, "repeats": repeats}
        for part in ("train", "score"):
            idle, busy = med(policy, False, f"{part}_s"), med(policy, True, f"{part}_s")
            s[f"{part}_idle_s"], s[f"{part}_loaded_s"] = round(idle, 3), round(busy, 3)
            s[f"{part}_slowdown"] = round(busy / idle, 2)
        summary[policy] = s
    print(
        "\n| policy | train idle s | train loaded s | slowdown | score idle s | score loaded s | slowdown |"
    )
    print("|---|---|---|---|---|---|---|")
    for policy, s in summary.items():
        print(
            f"| {policy} | {s['train_idle_s']} | {s['train_loaded_s']} | {s['train_slowdown']} | "
            f"{s['score_idle_s']} | {s['score_loaded_s']} | {s['score_slowdown']} |"
        )
    after, before = summary["PASSIVE"], summary["ACTIVE"]
    print(
        json.dumps(
            {
                "train_slowdown": after["train_slowdown"],
                "score_slowdown": after["score_slowdown"],
                "idle_cost_train": round(after["train_idle_s"] / before["train_idle_s"], 3),
                "idle_cost_score": round(after["score_idle_s"] / before["score_idle_s"], 3),
                "after": after,
                "before": before,
                **{k: v for k, v in summary.items() if k.startswith("SPIN")},
            }
        )
    )


if __name__ == "__main__":
    main()
