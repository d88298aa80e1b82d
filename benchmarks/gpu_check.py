"""One-shot GPU check: the 7B IOVQA recipe's training throughput and MFU beside a plain
transformers `Trainer`, and `expected`-mode scoring at 448x448, in one call that fits a short loan.

Made for the first lent H100/H200, which may come with 15 minutes of device time for a whole
session and no package index: it builds the Qwen2.5-VL-7B architecture
(`benchmarks/configs/qwen2.5-vl-7b.json`) with random weights in bf16 directly on the GPU (nothing
to download; MFU and images/s do not depend on the weights' values), and needs only what the
device image has (torch, transformers, peft, accelerate, pandas, PIL) plus this repository's
`src/` on the path and a saved copy of the offline Qwen tokenizer (`--tokenizer`; the offline build
converts dashscope's `qwen.tiktoken`, a package the GPU image lacks). It composes the two
throughput benchmarks, each in its own process so the first 7B's memory is gone before the next:

1. `train_throughput.py`: qualitune's trainer (the `train` stage's loop) and `transformers.Trainer`
   on the same batches after checking that both compute the same first-batch loss; samples/s,
   tokens/s, MFU against the GPU's dense bf16 peak, peak memory.
2. `score_throughput.py`: `expected`-mode scoring (one forward + cached digit steps) and the
   `generate()` baseline, images/s at 448x448, batch 32.

    python benchmarks/gpu_check.py --save-tokenizer .cache/gpu_check/tokenizer   # here, once
    benchmarks/gpu_check.sh                                                      # on the GPU box
    python benchmarks/gpu_check.py --device cpu --tiny                           # CPU smoke (tests)

Prints each part's table, then one JSON object on its last line (also written to `--out`, default
`$OUT/gpu_check.json` when `$OUT` is set): `train.samples_per_s`, `train.mfu`,
`train.baseline_samples_per_s`, `score.images_per_s`, `first_batch_loss_diff`, and the parts'
full reports. A part that fails or runs out of its time budget is reported with its exit status
and the tail of its output; the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIG_7B = HERE / "configs" / "qwen2.5-vl-7b.json"
sys.path.insert(0, str(ROOT / "src"))  # the GPU box runs from the repository, nothing installed

from qualitune.vlm.tokenizer import SAVED_TOKENIZER_ENV, load_qwen_tokenizer  # noqa: E402

# Each benchmark's sizes. `tiny`: the tiny random Qwen at toy sizes (a CPU smoke run of every code
# path); `7b`: the 7B architecture at the recipe's sizes (448 px, LoRA r 128, scoring batch 32).
SIZES = {
    "tiny": {
        "train": "--n-items 8 --batch-size 4 --epochs 1 --warmup-steps 1 --size 56 --lora-r 8",
        "score": "--n-items 8 --batch-size 4 --size 56 --repeats 1",
    },
    "7b": {
        "train": "--n-items 64 --batch-size 8 --epochs 2 --warmup-steps 2 --size 448",
        "score": "--n-items 128 --batch-size 32 --size 448 --repeats 2",
    },
}


def part_args(device: str, tiny: bool) -> dict[str, list[str]]:
    """Each benchmark's command line."""
    model = [] if tiny else ["--config", str(CONFIG_7B)]
    sizes = SIZES["tiny" if tiny else "7b"]
    return {part: ["--device", device, *model, *sizes[part].split()] for part in ("train", "score")}


def run_part(script: str, args: list[str], timeout_s: float, env: dict[str, str], out_json: Path | None):
    """Run one benchmark in a fresh process; its report is the JSON on its last stdout line."""
    cmd = [sys.executable, str(HERE / script), *args] + (["--out", str(out_json)] if out_json else [])
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stdout or b"")[-2000:]
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        return None, {"status": f"timed out after {timeout_s:.0f} s", "tail": tail}
    seconds = round(time.perf_counter() - t0, 1)
    sys.stdout.write(proc.stdout)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        return None, {"status": f"exit {proc.returncode}", "seconds": seconds, "tail": proc.stderr[-3000:]}
    try:
        report = json.loads(lines[-1])
    except json.JSONDecodeError:
        return None, {"status": "no JSON on the last line", "seconds": seconds, "tail": proc.stdout[-2000:]}
    return report, {"status": "ok", "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    ap.add_argument("--tiny", action="store_true", help="the tiny random Qwen at toy sizes (CPU smoke run)")
    ap.add_argument("--tokenizer", type=Path, default=None, help="a folder written by --save-tokenizer")
    ap.add_argument(
        "--save-tokenizer", type=Path, default=None, help="write the offline tokenizer here, exit"
    )
    ap.add_argument("--budget-s", type=float, default=480.0, help="time for both parts (default 8 min)")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default $OUT/gpu_check.json if $OUT)")
    args = ap.parse_args(argv)

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if args.save_tokenizer is not None:
        os.environ.pop(SAVED_TOKENIZER_ENV, None)  # build it from dashscope, not from another copy
        load_qwen_tokenizer(None).save_pretrained(str(args.save_tokenizer))
        print(f"offline Qwen tokenizer saved to {args.save_tokenizer}; carry it and pass --tokenizer")
        return 0
    if args.tokenizer is not None:
        if not (args.tokenizer / "tokenizer.json").is_file():
            ap.error(f"--tokenizer {args.tokenizer} has no tokenizer.json; write it with --save-tokenizer")
        env[SAVED_TOKENIZER_ENV] = str(args.tokenizer.resolve())
    out = args.out or (Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else None)

    t0 = time.perf_counter()
    parts = part_args(args.device, args.tiny)
    # training gets the larger share: it builds the 7B three times (loss check, ours, Trainer)
    with tempfile.TemporaryDirectory(prefix="qualitune-gpu-check-") as tmp:  # train_throughput's own file
        train, train_status = run_part(
            "train_throughput.py", parts["train"], 0.65 * args.budget_s, env, Path(tmp) / "train.json"
        )
    left = max(30.0, args.budget_s - (time.perf_counter() - t0))
    score, score_status = run_part("score_throughput.py", parts["score"], left, env, None)

    train, score = train or {}, score or {}
    ours, baseline = train.get("ours") or {}, train.get("baseline") or {}
    report = {
        "device": args.device,
        "model": "tiny-qwen2.5-vl" if args.tiny else "Qwen2.5-VL-7B architecture, random weights, bf16",
        "train": {
            **{k: ours.get(k) for k in ("samples_per_s", "tokens_per_s", "mfu", "peak_memory_gib")},
            **{f"baseline_{k}": baseline.get(k) for k in ("samples_per_s", "mfu", "peak_memory_gib")},
            "peak_tflops": train.get("peak_tflops"),
            **train_status,
        },
        "score": {
            "images_per_s": score.get("items_per_s"),
            "baseline_images_per_s": score.get("baseline_items_per_s"),
            "batch_size": score.get("batch_size"),
            "size": score.get("size"),
            **score_status,
        },
        "first_batch_loss_diff": (train.get("loss_check_first_batch") or {}).get("abs_diff"),
        "seconds": round(time.perf_counter() - t0, 1),
        "reports": {"train": train or None, "score": score or None},
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    return 0 if train_status["status"] == score_status["status"] == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
