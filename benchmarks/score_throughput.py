"""Scoring throughput (items/s): the `expected` scorer against a `generate()`-based scorer.

Both scorers turn a VLM into an image-quality scorer on an integer scale [lo, hi]:

- `expected_scores` (qualitune.vlm.scoring): ONE forward pass over the prompt (vision tower + full
  prompt prefill, logits of the last position only) gives P(first digit); the other digit
  probabilities come from short cached continuation steps on that prefix (the digit prefixes of
  the range, e.g. "1".."5" for [10, 50], fed after the prompt and cropped off the KV cache again;
  scoring.py evaluates them all in one tree-attention step, so 2 model calls per batch). No
  sampling loop, no parsing, and the output is a full distribution over the integers.
- `greedy_scores`: the usual way, `model.generate(do_sample=False, max_new_tokens=4)`: prefill,
  then one decode step per new token until every row has emitted an end token (a random model
  practically never does, so 4 calls per batch; a real one answering "35<|im_end|>" makes 3),
  and a strict parse of the text.

On a real model both are dominated by the same prefill (vision tower + ~300 prompt tokens at
448 px); the difference is what follows it: a few cached steps against generate()'s token loop
with its per-step overhead (input preparation, logits processors, stopping criteria). The table
counts the model calls per batch of each scorer, so a change in either shows up there.

Both get the exact same encoded batches (same model, same images, same prompt, same batch size),
already on the model's device and dtype, so only model work is timed: each scorer gets one warm-up
call, then `--repeats` passes over all batches, interleaved batch by batch (E G, G E, ...) so that
contention on a shared machine hits both alike; CUDA is synchronised around every timed call.
Image preprocessing (resize, normalise, patchify, tokenise: `encode_batch`) is excluded from both
and reported on its own as items/s (steady state: `--repeats` passes whose output is dropped, as
in a streaming loader). Model calls per batch of each scorer are counted with a forward hook.

The default model is the tiny random Qwen2.5-VL (real architecture, real vocabulary, real patch
geometry, so an image costs as many tokens as on the 7B), which makes the CPU figures a measure of
code-path overhead rather than of 7B compute. `--config benchmarks/configs/qwen2.5-vl-7b.json
--device cuda` builds the real 7B architecture with random weights in bf16 directly on the GPU.
Prints a table, then one line of JSON (the last line).

    python benchmarks/score_throughput.py [--quick] [--device cpu|cuda] [--batch-size 8]
        [--n-items N] [--size 448] [--repeats R] [--model NAME_OR_DIR | --config JSON] [--dtype fp32|bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image

from qualitune.vlm.inputs import encode_batch, make_image_processor
from qualitune.vlm.model import TINY_NAME, load_model, model_class_for, resolve_dtype
from qualitune.vlm.scoring import expected_scores, greedy_scores
from qualitune.vlm.tokenizer import load_qwen_tokenizer

PROMPT = (
    "Rate the visual quality of this image on an integer scale from {lo} to {hi}. "
    "Answer with the integer only."
)
SEED = 0


def make_images(n: int, size: int, seed: int = SEED) -> list[Image.Image]:
    """`n` seeded random-noise RGB images, `size` x `size` (pixel content does not change the cost)."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def build_from_config(
    path: Path, dtype: torch.dtype, device: str, seed: int, attn_implementation: str = "sdpa"
):
    """The architecture in a config JSON with seeded random weights, built directly on `device`.

    Building under `torch.device("cuda")` allocates (and initialises) every parameter on the GPU in
    `dtype`, so a 7B model never needs ~16 GB (bf16) of host RAM.
    """
    from transformers import AutoConfig

    raw = json.loads(Path(path).read_text())
    raw = {k: v for k, v in raw.items() if not k.startswith("_")}  # "_comment" etc.
    model_type = raw.pop("model_type")
    config = AutoConfig.for_model(model_type, **raw)
    cls = model_class_for(config)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = cls._from_config(config, attn_implementation=attn_implementation, dtype=dtype)
    tokenizer = load_qwen_tokenizer(None)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = "<|endoftext|>"
    model.eval()
    return model, tokenizer


def untie_random_head(model: torch.nn.Module, seed: int = 1, scale: float = 0.3) -> None:
    """Give a random model an untied, seeded random `lm_head` (as tests/test_vlm_scoring.py does).

    With random *tied* embeddings the final hidden state stays close to the last input token's
    embedding, so that token ("\\n" after "assistant") wins every argmax and generate() collapses
    into repeating it for every image. An independent random head gives varied, per-image answers,
    so the generate() baseline decodes the way a model that actually answers does, and its loop
    length does not hinge on what that degenerate fixed point happens to be (an end token there
    would stop generate() after one step and make the baseline look artificially fast).
    """
    weight = model.lm_head.weight
    g = torch.Generator(device=weight.device).manual_seed(seed)
    new = torch.randn(weight.shape, generator=g, device=weight.device) * scale
    model.lm_head.weight = torch.nn.Parameter(new.to(weight.dtype))


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {cpu or 'unknown'} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


class ForwardCounter:
    """Counts calls of the top-level model (prefill, decode steps, cached digit steps)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.n = 0
        self._handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, module, args) -> None:
        self.n += 1

    def remove(self) -> None:
        self._handle.remove()


def to_device(batch: dict[str, torch.Tensor], device: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The batch as `model_inputs` would hand it to the model, so its own `.to()` calls are no-ops."""
    out = {}
    for key, value in batch.items():
        value = value.to(device)
        if key in ("pixel_values", "pixel_values_videos"):
            value = value.to(dtype)
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's, one per core); 1 is steadier on a loaded shared machine",
    )
    ap.add_argument("--quick", action="store_true", help="16 items, 2 passes (CPU smoke run)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--n-items", type=int, default=None, help="items per pass (default 64, quick 16)")
    ap.add_argument("--size", type=int, default=448, help="square image side in pixels (default 448)")
    ap.add_argument(
        "--repeats", type=int, default=None, help="timed passes over all items (default 3, quick 2)"
    )
    ap.add_argument("--model", default=TINY_NAME, help=f"{TINY_NAME} (default) or a local checkpoint dir")
    ap.add_argument("--config", type=Path, default=None, help="build this config JSON with random weights")
    ap.add_argument("--dtype", default=None, help="fp32 | bf16 | fp16 (default fp32 on cpu, bf16 on cuda)")
    ap.add_argument("--lo", type=int, default=10)
    ap.add_argument("--hi", type=int, default=50)
    ap.add_argument("--max-new-tokens", type=int, default=4, help="generate() budget of the baseline")
    args = ap.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            ap.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)

    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is False")
    n_items = args.n_items or (16 if args.quick else 64)
    repeats = args.repeats or (2 if args.quick else 3)
    if n_items < 1 or args.batch_size < 1 or repeats < 1 or args.size < 28:
        ap.error("need --n-items, --batch-size, --repeats >= 1 and --size >= 28")
    dtype_name = args.dtype or ("fp32" if args.device == "cpu" else "bf16")
    try:
        dtype = resolve_dtype(dtype_name)
    except ValueError as e:
        ap.error(str(e))
    if not isinstance(dtype, torch.dtype):
        ap.error(f"--dtype must name a dtype, got {dtype_name!r}")

    # --- model -------------------------------------------------------------------------------
    t0 = time.perf_counter()
    if args.config is not None:
        model, tok = build_from_config(args.config, dtype, args.device, SEED)
        model_label = f"{model_class_for(model.config).__name__} from {args.config} (random weights)"
        random_weights = True
    else:
        model, tok = load_model(args.model, dtype=dtype, device=args.device, seed=SEED)
        model_label = args.model
        random_weights = args.model == TINY_NAME
    if random_weights and model.lm_head.weight is model.get_input_embeddings().weight:
        untie_random_head(model)  # see the docstring: tied random weights make generate() degenerate
    load_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())

    # --- inputs (encoding timed on its own) --------------------------------------------------
    lo, hi = args.lo, args.hi
    prompt = PROMPT.format(lo=lo, hi=hi)
    images = make_images(n_items, args.size)
    proc = make_image_processor(56 * 56, max(28 * 28 * 1280, args.size * args.size))
    chunks = [images[i : i + args.batch_size] for i in range(0, n_items, args.batch_size)]
    host_batches = [
        encode_batch(c, prompt, tokenizer=tok, image_processor=proc, padding_side="left") for c in chunks
    ]
    # Encoding is timed on separate passes whose output is dropped, as a streaming loader would:
    # the pass above keeps every batch alive, so it pays first-touch page faults on ~5 MB of fp32
    # patches per 448 px image and ran ~3x slower than steady state on a 2-core machine.
    t0 = time.perf_counter()
    for _ in range(repeats):
        for c in chunks:
            encode_batch(c, prompt, tokenizer=tok, image_processor=proc, padding_side="left")
    encode_s = (time.perf_counter() - t0) / repeats
    merge = int(proc.merge_size) ** 2
    image_tokens = int(host_batches[0]["image_grid_thw"][0].prod()) // merge
    prompt_tokens = int(host_batches[0]["attention_mask"][0].sum())
    batches = [to_device(b, args.device, dtype) for b in host_batches]

    # --- scorers -----------------------------------------------------------------------------
    scorers = {
        "expected": lambda b: expected_scores(model, tok, b, lo, hi),
        "generate": lambda b: greedy_scores(model, tok, b, lo, hi, max_new_tokens=args.max_new_tokens),
    }

    def sync() -> None:
        if args.device == "cuda":
            torch.cuda.synchronize()

    forwards: dict[str, int] = {}
    warm: dict[str, list] = {}
    for name, fn in scorers.items():
        counter = ForwardCounter(model)
        warm[name] = fn(batches[0])  # warm-up; also counts forward calls for one batch
        sync()
        counter.remove()
        forwards[name] = counter.n

    # Interleaved per batch (E G, G E, E G, ...): on a small shared machine another process can
    # slow a 2-thread torch call several-fold for seconds; alternating batch by batch makes such a
    # burst hit both scorers alike instead of whichever pass it happened to fall in.
    times: dict[str, list[float]] = {name: [] for name in scorers}
    order = list(scorers)
    n_batches = len(batches)
    for r in range(repeats):
        for i, b in enumerate(batches):
            for name in order if (r * n_batches + i) % 2 == 0 else order[::-1]:
                sync()
                t0 = time.perf_counter()
                scorers[name](b)
                sync()
                times[name].append(time.perf_counter() - t0)

    ips = {name: n_items * repeats / sum(ts) for name, ts in times.items()}
    median_ms = {name: 1e3 * float(np.median(ts)) for name, ts in times.items()}
    speedup = ips["expected"] / ips["generate"]
    parse_ok = sum(r.parse_ok for r in warm["generate"]) / len(warm["generate"])

    # --- report ------------------------------------------------------------------------------
    print(
        f"model    {model_label}  ({n_params / 1e6:,.1f} M params, {dtype_name}, "
        f"built/loaded in {load_s:.1f} s)"
    )
    print(f"device   {device_name(args.device)}")
    print(
        f"inputs   {n_items} noise images {args.size}x{args.size}, batch {args.batch_size} "
        f"({n_batches} batches), {image_tokens} image tokens + {prompt_tokens - image_tokens} text tokens "
        f"per item, range [{lo}, {hi}]"
    )
    print(f"timing   1 warm-up call each, then {repeats} pass(es) over all batches, interleaved per batch")
    print()
    print(f"{'stage':<36}{'items/s':>9}{'ms/batch':>10}{'median':>9}{'calls/batch':>13}")
    enc_ms = 1e3 * encode_s / n_batches
    print(f"{'encode (preprocess + tokenise)':<36}{n_items / encode_s:>9.2f}{enc_ms:>10.1f}{'-':>9}{'-':>13}")
    for name, label in (
        ("expected", "expected (1 forward + cached steps)"),
        ("generate", "generate() greedy baseline"),
    ):
        ms = 1e3 * sum(times[name]) / (repeats * n_batches)
        print(f"{label:<36}{ips[name]:>9.2f}{ms:>10.1f}{median_ms[name]:>9.1f}{forwards[name]:>13d}")
    print(f"{'speedup expected / generate':<36}{speedup:>9.2f}x")
    if random_weights:
        print(
            f"(random weights: generate() answers parse in {parse_ok:.0%} of the warm-up batch; timing only)"
        )
    print(
        json.dumps(
            {
                "items_per_s": round(ips["expected"], 3),
                "baseline_items_per_s": round(ips["generate"], 3),
                "speedup": round(speedup, 3),
                "encode_items_per_s": round(n_items / encode_s, 3),
                "device": device_name(args.device),
                "model": model_label,
                "params": n_params,
                "random_weights": random_weights,
                "dtype": dtype_name,
                "batch_size": args.batch_size,
                "n_items": n_items,
                "repeats": repeats,
                "size": args.size,
                "image_tokens_per_item": image_tokens,
                "prompt_tokens_per_item": prompt_tokens,
                "lo": lo,
                "hi": hi,
                "max_new_tokens": args.max_new_tokens,
                "forwards_per_batch": forwards,
                "batch_ms_median": {k: round(v, 2) for k, v in median_ms.items()},
                "total_seconds": {k: round(sum(v), 4) for k, v in times.items()},
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
