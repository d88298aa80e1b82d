"""Training throughput of the IOVQA recipe: qualitune's trainer against a plain transformers `Trainer`.

The recipe (IOVQA): LoRA rank 128 (alpha 256, dropout 0.05) on the decoder's linear layers, the
vision tower and projector frozen, an integer-only loss (`loss_on: value`: cross-entropy on the
two digits of "35" and nothing else), one image at 448x448 per example (`--media video`: a clip
shown as 2 sampled frames; `mixed`: half of each), answers of 2-3 tokens. The model is the
Qwen2.5-VL architecture with seeded random weights: by default the project's tiny model (runs on
any CPU); `--config benchmarks/configs/qwen2.5-vl-7b.json --device cuda` builds the real 7B
architecture in bf16 directly on the GPU (no download). On CUDA both runs use bf16 autocast.

Two runs on the same model (rebuilt from the same seed), data, batch size, learning rate and
number of epochs, one after the other in this process:

- **ours**: `qualitune.training.train`, the loop the `train` stage runs, with its throughput
  options on: length-grouped batches, padding-free packing where the attention kernel takes
  varlen input (`packing: auto`), the frozen vision tower run without autograd and its features
  cached per item (`cache_vision`), fused AdamW and a prefetching encoder thread (`auto`: CUDA),
  logits only at the supervised positions (always), gradient checkpointing only with
  `--gradient-checkpointing`.
- **baseline**: `transformers.Trainer` with its defaults, the same LoRA model, a torch Dataset
  encoding one example per item with the same `encode_examples`, labels = -100 everywhere except
  the integer's tokens, and `DataCollatorForSeq2Seq` padding input ids, attention mask and labels
  (plus concatenating the pixel tensors, which no stock collator knows how to batch). The model
  computes logits for every position and its own causal-LM loss.

Before timing, both compute the loss of the same first batch on the same weights; the two numbers
must agree (they do to float rounding: for [10, 50] every answer has two value tokens, so the
token mean and the per-row mean coincide).

Timing: the first `--warmup-steps` optimizer steps of each run are excluded; CUDA is synchronised
at every step end. Media files are decoded once before both runs (the trainer's file cache), so
neither pays JPEG/MP4 decoding; resizing, patching and tokenising are inside the timed loop of
both. `epochs` gives the figures per epoch: ours computes the vision tower in epoch 1 and reads
the cache afterwards.

FLOPs (model FLOPs of the work a step needs; MFU = FLOPs / (time x peak)), per example with T real
decoder tokens (no padding), n supervised positions, P vision patches:

    F = 2 (N_dec + N_lora) T            decoder forward (N_dec: decoder-layer weights, frozen)
      + 2 (N_dec + N_lora) T            backward: activation gradients through every layer
      + 2 N_lora T                      backward: weight gradients of the trainable (LoRA) weights
      + 3 * 2 L T^2 d                   causal attention scores and values: forward 2 L T^2 d
                                        (half of the full 4 L T^2 d), backward twice that
      + 4 d V n                         LM head at the supervised positions, forward + input grad
      + [when the vision tower runs]    2 N_vis P + 2 N_proj P/4 + 4 d_v (sum over blocks of the
                                        patches each patch attends to) x P, forward only (frozen)

i.e. the "6 N T" rule with the frozen weights' weight gradients removed (4 N_dec T instead of
6 N_dec T) and vision counted only where it runs (the cache removes it from epoch 2 on; padding,
recomputation by gradient checkpointing and the baseline's all-position logits are not counted:
they are waste, so they lower MFU). Peak FLOPS: a table of dense bf16 tensor-core peaks by GPU
name (H100 SXM 989.4 TFLOPS, ...), `--peak-tflops` overrides; on a CPU the peak is a measured fp32
GEMM rate (labelled as such), so CPU MFU says how much of what this CPU's matmul reaches.

    python benchmarks/train_throughput.py --device cpu|cuda [--quick]
        [--config benchmarks/configs/qwen2.5-vl-7b.json] [--batch-size 8] [--n-items 64]
        [--epochs 2] [--media image|video|mixed] [--size 448] [--attn auto|sdpa|flash_attention_2]
        [--gradient-checkpointing] [--peak-tflops X] [--ablation] [--no-baseline] [--threads N]
        [--out FILE]

Prints a table and the JSON it writes to `--out` (default reports/train_throughput_<device>.json)
as the last line.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import transformers
from PIL import Image

from qualitune.training import (
    Objective,
    TrainSettings,
    _load,
    build_phases,
    build_schedule,
    encode_examples,
    example_lengths,
    train,
)
from qualitune.vlm.inputs import make_image_processor
from qualitune.vlm.losses import LossConfig, supervised_labels
from qualitune.vlm.model import TINY_NAME, load_model, resolve_dtype
from qualitune.vlm.tokenizer import load_qwen_tokenizer
from qualitune.vlm.trainable import LoraSettings, apply_tuning
from qualitune.vlm.unwrap import unwrap_model

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark
from score_throughput import build_from_config, device_name  # noqa: E402

SEED = 0
IMAGE_TOKEN, VIDEO_TOKEN = 151655, 151656

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, TFLOPS; first match wins.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM / HBM3
    ("H200", 989.4),
    ("H20", 148.0),
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.1),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10", 125.0),
)


# --- data ---------------------------------------------------------------------------------------
def write_media(root: Path, n: int, size: int, media: str, seed: int = SEED) -> pd.DataFrame:
    """`n` seeded noise JPEGs (and/or 4-frame MP4 clips) of `size`^2 and a manifest for them."""
    import av

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        kind = media if media != "mixed" else ("image" if i % 2 == 0 else "video")
        if kind == "image":
            path = root / f"img{i:04d}.jpg"
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, quality=90)
        else:
            path = root / f"clip{i:04d}.mp4"
            with av.open(str(path), mode="w") as out:
                stream = out.add_stream("mpeg4", rate=4)
                stream.width = stream.height = size
                stream.pix_fmt = "yuv420p"
                for _ in range(4):
                    arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                    for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                        out.mux(packet)
                for packet in stream.encode():
                    out.mux(packet)
        rows.append(
            {"item_id": f"item{i}", "path": str(path), "media": kind, "mos_norm": float(rng.uniform(1, 5))}
        )
    return pd.DataFrame(rows)


class Stats:
    """Per-example token counts: T decoder tokens, patches per vision block, supervised tokens."""

    def __init__(self, examples, *, tokenizer, proc, n_frames):
        self.tokens, self.patches, self.supervised = [], [], []
        for ex in examples:
            b = encode_examples(
                [ex], tokenizer=tokenizer, image_processor=proc, n_frames=n_frames, video_mode="frames"
            )
            self.tokens.append(int(b["attention_mask"].sum()))
            grids = b.get("image_grid_thw")
            self.patches.append([int(g.prod()) for g in grids] if grids is not None else [])
            self.supervised.append(int(b["value_mask"].sum()))


# --- FLOPs --------------------------------------------------------------------------------------
class FlopModel:
    """The module docstring's formula, with parameter counts read off the built model."""

    def __init__(self, model: torch.nn.Module) -> None:
        base = unwrap_model(model)
        core = base.model
        cfg_t = base.config.text_config
        cfg_v = base.config.vision_config
        self.n_dec = sum(
            p.numel() for n, p in core.language_model.layers.named_parameters() if "lora_" not in n
        )
        self.n_lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
        self.n_vis = sum(p.numel() for n, p in core.visual.named_parameters() if not n.startswith("merger."))
        self.n_proj = sum(p.numel() for p in core.visual.merger.parameters())
        self.layers = cfg_t.num_hidden_layers
        self.d = cfg_t.num_attention_heads * (cfg_t.hidden_size // cfg_t.num_attention_heads)
        self.vocab = cfg_t.vocab_size
        self.width = cfg_t.hidden_size
        self.d_v = cfg_v.hidden_size
        self.depth_v = cfg_v.depth
        self.full_blocks = len(getattr(cfg_v, "fullatt_block_indexes", []) or [])
        merge = cfg_v.spatial_merge_size
        self.window = (
            (cfg_v.window_size // cfg_v.patch_size) ** 2 if getattr(cfg_v, "window_size", 0) else None
        )
        self.merge2 = merge * merge

    def decoder(self, tokens: int, supervised: int) -> float:
        n, lo = self.n_dec, self.n_lora
        attn = 2 * self.layers * tokens**2 * self.d
        return 4 * (n + lo) * tokens + 2 * lo * tokens + 3 * attn + 4 * self.width * self.vocab * supervised

    def vision(self, patches: list[int]) -> float:
        total = 0.0
        for p in patches:
            window = min(p, self.window) if self.window else p
            attended = self.full_blocks * p + (self.depth_v - self.full_blocks) * window
            total += 2 * self.n_vis * p + 2 * self.n_proj * p / self.merge2 + 4 * self.d_v * attended * p
        return total

    def example(self, stats: Stats, i: int, vision: bool) -> float:
        f = self.decoder(stats.tokens[i], stats.supervised[i])
        return f + (self.vision(stats.patches[i]) if vision else 0.0)


def peak_tflops(device: str, override: float | None) -> tuple[float | None, str]:
    if override is not None:
        return override, "--peak-tflops"
    if device == "cuda":
        name = torch.cuda.get_device_name()
        for key, value in PEAK_BF16_TFLOPS:
            if key.lower() in name.lower():
                return value, f"dense bf16 datasheet peak of {key}"
        return None, f"unknown GPU {name!r}: pass --peak-tflops"
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = math.inf
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        best = min(best, (time.perf_counter() - t0) / 4)
    return 2 * n**3 / best / 1e12, f"measured fp32 GEMM rate ({n}x{n}, {torch.get_num_threads()} threads)"


# --- memory -------------------------------------------------------------------------------------
def reset_peak(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return
    try:  # Linux: "5" resets the peak resident set size (VmHWM) of this process
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_gib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# --- runs ---------------------------------------------------------------------------------------
def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def stamp() -> tuple[float, float]:
    """(wall clock, CPU time of this process over all its threads), seconds."""
    return time.perf_counter(), time.process_time()


def summarise(ends, step_examples, stats, flops, warmup, steps_per_epoch, vision_epochs, peak, device):
    """Figures over the timed steps (after `warmup`), overall and per epoch."""

    def window(first: int, last: int) -> dict | None:  # steps first+1 .. last (1-based), timed
        if last <= first:
            return None
        seconds = ends[last - 1][0] - ends[first - 1][0]
        cpu = ends[last - 1][1] - ends[first - 1][1]
        ex = [i for s in range(first, last) for i in step_examples[s]]
        vision_of = [((s // steps_per_epoch) < vision_epochs) for s in range(first, last)]
        f = sum(
            flops.example(stats, i, v)
            for s, v in zip(range(first, last), vision_of, strict=True)
            for i in step_examples[s]
        )
        out = {
            "steps": last - first,
            "seconds": round(seconds, 4),
            "cpu_seconds": round(cpu, 3),  # this process's CPU time: contention shows as cpu << wall
            "samples_per_s": round(len(ex) / seconds, 3),
            "tokens_per_s": round(sum(stats.tokens[i] for i in ex) / seconds, 1),
            "tflops_per_s": round(f / seconds / 1e12, 4),
        }
        out["mfu"] = round(f / seconds / 1e12 / peak, 4) if peak else None
        return out

    n = len(ends)
    overall = window(warmup, n)
    epochs = []
    for e in range(math.ceil(n / steps_per_epoch)):
        lo, hi = max(warmup, e * steps_per_epoch), min(n, (e + 1) * steps_per_epoch)
        w = window(lo, hi)
        if w is not None:
            epochs.append({"epoch": e + 1, **w})
    return {**overall, "epochs": epochs, "peak_memory_gib": round(peak_gib(device), 3)}


def build_model(args, dtype):
    gc.collect()  # the previous run's model must be gone before a second 7B is built
    if args.device == "cuda":
        torch.cuda.empty_cache()
    if args.config is not None:
        model, tok = build_from_config(args.config, dtype, args.device, SEED, attn_implementation=args.attn)
    else:
        model, tok = load_model(args.model, dtype=dtype, device=args.device, seed=SEED)
        if args.attn != "sdpa":
            model.set_attn_implementation(args.attn)
    return model, tok


def run_ours(args, dtype, df, proc, stats, flops_cls, peak, *, options: bool = True):
    model, tok = build_model(args, dtype)
    settings = settings_for(args, options=options)
    phases = build_phases(df, settings)
    lengths = None
    if settings.group_by_length:
        lengths = [
            example_lengths(
                ph.examples, tokenizer=tok, image_processor=proc, n_frames=args.frames, video_mode="frames"
            )
            for ph in phases
        ]
    schedule = build_schedule(phases, settings.batch_size, settings.seed, lengths)  # what train() runs
    ends: list[tuple[float, float]] = []

    def on_log(step, metrics):
        sync(args.device)
        ends.append(stamp())

    reset_peak(args.device)
    result = train(model, tok, proc, df, settings, n_frames=args.frames, video_mode="frames", on_log=on_log)
    if len(ends) != len(schedule):
        raise RuntimeError(f"expected {len(schedule)} steps, timed {len(ends)}")
    flops = flops_cls(result.model)
    steps_per_epoch = math.ceil(len(df) / settings.batch_size)
    out = summarise(
        ends,
        [s.rows for s in schedule],
        stats,
        flops,
        args.warmup_steps,
        steps_per_epoch,
        1 if settings.cache_vision else args.epochs,
        peak,
        args.device,
    )
    out["losses"] = [round(h["loss"], 4) for h in result.history]
    out["options"] = {
        k: getattr(settings, k)
        for k in (
            "group_by_length",
            "packing",
            "cache_vision",
            "fused_optimizer",
            "prefetch",
            "gradient_checkpointing",
        )
    }
    del model, result
    return out


def settings_for(args, *, options: bool = True) -> TrainSettings:
    """The recipe; `options=False` turns the trainer's throughput options off (`--ablation`)."""
    return TrainSettings(
        method="iovqa",
        tuning="lora",
        answer_format="integer",
        label_range=(10, 50),
        loss_on="value",
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=2e-4,
        weight_decay=0.0,  # the recipe of the figures in docs/benchmarks.md (stated, not inherited)
        lr_scheduler="linear",
        warmup_ratio=0.0,
        max_grad_norm=1.0,
        seed=SEED,
        checkpoint_every=0,
        gradient_checkpointing=args.gradient_checkpointing,
        group_by_length=options,
        packing="auto" if options else False,
        cache_vision=options,
        fused_optimizer="auto" if options else False,
        prefetch="auto" if options else False,
        lora=LoraSettings(r=args.lora_r, alpha=2 * args.lora_r, dropout=0.05),
    )


class EncodedExamples(torch.utils.data.Dataset):
    """One example per item, encoded alone (no padding); labels only on the integer's tokens."""

    def __init__(self, examples, *, tokenizer, proc, n_frames):
        self.examples, self.tokenizer, self.proc, self.n_frames = examples, tokenizer, proc, n_frames
        self.order: list[int] = []  # indices in the order the Trainer asked for them

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        self.order.append(int(i))
        b = encode_examples(
            [self.examples[i]],
            tokenizer=self.tokenizer,
            image_processor=self.proc,
            n_frames=self.n_frames,
            video_mode="frames",
        )
        labels = supervised_labels(b["labels"], b["value_mask"], "value")
        out = {"input_ids": b["input_ids"][0].tolist(), "attention_mask": b["attention_mask"][0].tolist()}
        out["labels"] = labels[0].tolist()
        for k in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"):
            if k in b:
                out[k] = b[k]
        return out


class PaddingCollator:
    """`DataCollatorForSeq2Seq` (pads input ids, mask, labels with -100) plus the vision tensors,
    concatenated along the patch axis as Qwen2.5-VL takes them, and `mm_token_type_ids`."""

    def __init__(self, tokenizer) -> None:
        self.text = transformers.DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)

    def __call__(self, features: list[dict]) -> dict:
        vision = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")
        batch = dict(self.text([{k: v for k, v in f.items() if k not in vision} for f in features]))
        for k in vision:
            if k in features[0]:
                batch[k] = torch.cat([f[k] for f in features], dim=0)
        ids = batch["input_ids"]
        types = torch.zeros_like(ids, dtype=torch.int32)
        types[(ids == IMAGE_TOKEN) & (batch["attention_mask"] == 1)] = 1
        types[(ids == VIDEO_TOKEN) & (batch["attention_mask"] == 1)] = 2
        batch["mm_token_type_ids"] = types
        return batch


class StepTimer(transformers.TrainerCallback):
    def __init__(self, device: str) -> None:
        self.device, self.ends = device, []

    def on_step_end(self, args, state, control, **kwargs):
        sync(self.device)
        self.ends.append(stamp())


def baseline_model(args, dtype):
    model, tok = build_model(args, dtype)
    torch.manual_seed(SEED)  # as train() seeds before adding the adapters: the same initial LoRA
    model = apply_tuning(model, "lora", settings_for(args).lora)
    return model, tok


def run_baseline(args, dtype, df, proc, stats, flops_cls, peak, out_dir):
    model, tok = baseline_model(args, dtype)
    settings = settings_for(args)
    (phase,) = build_phases(df, settings)
    data = EncodedExamples(phase.examples, tokenizer=tok, proc=proc, n_frames=args.frames)
    targs = transformers.TrainingArguments(
        output_dir=str(out_dir),
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=args.epochs,
        learning_rate=settings.lr,
        weight_decay=0.0,
        warmup_steps=0,
        max_grad_norm=settings.max_grad_norm,
        lr_scheduler_type="linear",
        bf16=args.device == "cuda",
        use_cpu=args.device == "cpu",
        remove_unused_columns=False,
        label_names=["labels"],
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        seed=SEED,
        # named only when asked for: transformers renames it (activation_checkpointing) in 5.x
        **({"gradient_checkpointing": True} if args.gradient_checkpointing else {}),
    )
    timer = StepTimer(args.device)
    trainer = transformers.Trainer(
        model=model, args=targs, train_dataset=data, data_collator=PaddingCollator(tok), callbacks=[timer]
    )
    reset_peak(args.device)
    trainer.train()
    b = args.batch_size
    steps = [data.order[i : i + b] for i in range(0, len(data.order), b)]
    if len(steps) != len(timer.ends):
        raise RuntimeError(f"baseline: {len(steps)} batches fetched, {len(timer.ends)} steps timed")
    steps_per_epoch = math.ceil(len(df) / b)
    out = summarise(
        timer.ends,
        steps,
        stats,
        flops_cls(model),
        args.warmup_steps,
        steps_per_epoch,
        args.epochs,
        peak,
        args.device,
    )
    out["optim"] = getattr(targs.optim, "value", str(targs.optim))
    del trainer, model
    return out


def loss_check(args, dtype, df, proc) -> dict:
    """The first batch's loss through our objective and through the model's own loss (the
    baseline's), on the same freshly built weights: the two trainers optimise the same thing."""
    model, tok = baseline_model(args, dtype)
    settings = settings_for(args)
    (phase,) = build_phases(df, settings)
    examples = phase.examples[: args.batch_size]
    batch = encode_examples(
        examples, tokenizer=tok, image_processor=proc, n_frames=args.frames, video_mode="frames"
    )
    data = EncodedExamples(examples, tokenizer=tok, proc=proc, n_frames=args.frames)
    padded = PaddingCollator(tok)([data[i] for i in range(len(examples))])
    dev = next(model.parameters()).device
    with torch.no_grad(), torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.device == "cuda"):
        ours, _ = Objective(model, LossConfig(loss_on="value"), None)(batch)
        theirs = model(**{k: v.to(dev) for k, v in padded.items()}).loss
    out = {"ours": float(ours), "transformers": float(theirs), "abs_diff": abs(float(ours) - float(theirs))}
    del model
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
    ap.add_argument("--quick", action="store_true", help="16 items, batch 4, 2 epochs (CPU smoke run)")
    ap.add_argument("--config", type=Path, default=None, help="build this config JSON with random weights")
    ap.add_argument("--model", default=TINY_NAME, help=f"{TINY_NAME} (default) or a local checkpoint dir")
    ap.add_argument("--dtype", default=None, help="weights: fp32 | bf16 (default fp32 on cpu, bf16 on cuda)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 8 (quick 4)")
    ap.add_argument("--n-items", type=int, default=None, help="examples per epoch (default 64, quick 16)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--warmup-steps", type=int, default=None, help="untimed first steps (default 2, quick 1)")
    ap.add_argument("--size", type=int, default=448, help="square image/frame side in pixels (default 448)")
    ap.add_argument("--media", choices=["image", "video", "mixed"], default="image")
    ap.add_argument("--frames", type=int, default=2, help="frames shown per clip (default 2)")
    ap.add_argument("--lora-r", type=int, default=128)
    ap.add_argument(
        "--attn",
        default="auto",
        help="auto (flash_attention_2 on CUDA if installed, else sdpa) | sdpa | eager | flash_attention_2",
    )
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak FLOPS of one device, TFLOPS")
    ap.add_argument("--no-baseline", action="store_true", help="time only ours")
    ap.add_argument(
        "--ablation",
        action="store_true",
        help="also time ours with the throughput options off (length grouping, packing, vision cache, "
        "fused AdamW, prefetch); logits only at the supervised positions stay",
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="JSON file (default reports/train_throughput_<device>.json)"
    )
    args = ap.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            ap.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)

    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is False")
    args.batch_size = args.batch_size or (4 if args.quick else 8)
    n_items = args.n_items or (16 if args.quick else 64)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (1 if args.quick else 2)
    if args.batch_size < 1 or n_items < args.batch_size or args.epochs < 1 or args.size < 28:
        ap.error("need --batch-size >= 1, --n-items >= --batch-size, --epochs >= 1, --size >= 28")
    if not 1 <= args.warmup_steps < math.ceil(n_items / args.batch_size) * args.epochs:
        ap.error("--warmup-steps must be >= 1 and leave a step to time")
    if args.attn == "auto":
        from transformers.utils import is_flash_attn_2_available

        args.attn = "flash_attention_2" if args.device == "cuda" and is_flash_attn_2_available() else "sdpa"
    dtype = resolve_dtype(args.dtype or ("fp32" if args.device == "cpu" else "bf16"))
    out_path = args.out or Path("reports") / f"train_throughput_{args.device}.json"

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="qualitune-train-bench-") as tmp:
        tmp = Path(tmp)
        df = write_media(tmp, n_items, args.size, args.media)
        proc = make_image_processor(56 * 56, max(56 * 56, args.size * args.size))
        for path in df["path"]:  # decode every file once: both runs read the trainer's file cache
            _load(path, args.frames)
        tok = load_qwen_tokenizer(None if args.config is not None or args.model == TINY_NAME else args.model)
        if tok.pad_token_id is None:
            tok.pad_token = "<|endoftext|>"
        (phase,) = build_phases(df, settings_for(args))
        stats = Stats(phase.examples, tokenizer=tok, proc=proc, n_frames=args.frames)
        peak, peak_source = peak_tflops(args.device, args.peak_tflops)

        check = loss_check(args, dtype, df, proc)
        ours = run_ours(args, dtype, df, proc, stats, FlopModel, peak)
        plain = None
        if args.ablation:
            gc.collect()
            if args.device == "cuda":
                torch.cuda.empty_cache()
            plain = run_ours(args, dtype, df, proc, stats, FlopModel, peak, options=False)
        gc.collect()
        if args.device == "cuda":
            torch.cuda.empty_cache()
        baseline = None
        if not args.no_baseline:
            baseline = run_baseline(args, dtype, df, proc, stats, FlopModel, peak, tmp / "trainer")

    model_label = (
        f"Qwen2_5_VLForConditionalGeneration from {args.config} (random weights)"
        if args.config
        else args.model
    )
    speedup = round(ours["samples_per_s"] / baseline["samples_per_s"], 3) if baseline else None
    report = {
        "device": device_name(args.device),
        "model": model_label,
        "dtype": str(dtype).removeprefix("torch."),
        "autocast": "bf16" if args.device == "cuda" else None,
        "attn_implementation": args.attn,
        "recipe": {
            "lora_r": args.lora_r,
            "lora_alpha": 2 * args.lora_r,
            "loss_on": "value",
            "label_range": [10, 50],
            "media": args.media,
            "size": args.size,
            "frames_per_clip": args.frames,
            "batch_size": args.batch_size,
            "n_items": n_items,
            "epochs": args.epochs,
            "warmup_steps_untimed": args.warmup_steps,
            "tokens_per_example_mean": round(float(np.mean(stats.tokens)), 1),
            "gradient_checkpointing": args.gradient_checkpointing,
        },
        "peak_tflops": round(peak, 3) if peak else None,
        "peak_source": peak_source,
        "loss_check_first_batch": {k: round(v, 6) for k, v in check.items()},
        "ours": ours,
        "ours_options_off": plain,
        "baseline": baseline,
        "speedup_samples_per_s": speedup,
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    print_table(report)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    return 0


def print_table(r: dict) -> None:
    rc = r["recipe"]
    print(
        f"model    {r['model']} ({r['dtype']}, attention {r['attn_implementation']}, autocast {r['autocast']})"
    )
    print(f"device   {r['device']}")
    print(
        f"recipe   IOVQA: LoRA r{rc['lora_r']} on the decoder, loss on the integer only; {rc['n_items']} "
        f"{rc['media']} items {rc['size']}px, {rc['tokens_per_example_mean']:.0f} tokens/example, batch "
        f"{rc['batch_size']}, {rc['epochs']} epochs, first {rc['warmup_steps_untimed']} step(s) untimed"
    )
    print(f"peak     {r['peak_tflops']} TFLOPS ({r['peak_source']})")
    la = r["load_average_1min"]
    print(f"load     1-min load average {la['before']} before, {la['after']} after ({os.cpu_count()} cores)")
    lc = r["loss_check_first_batch"]
    print(
        f"check    first-batch loss: ours {lc['ours']:.5f}, transformers {lc['transformers']:.5f} (|diff| {lc['abs_diff']:.2e})"
    )
    print()
    print(f"{'run':<24}{'samples/s':>10}{'tokens/s':>11}{'TFLOP/s':>9}{'MFU':>8}{'CPU s':>8}{'peak GiB':>10}")
    runs = (
        ("ours", "ours (qualitune)"),
        ("ours_options_off", "ours, options off"),
        ("baseline", "transformers Trainer"),
    )
    for name, label in runs:
        x = r[name]
        if x is None:
            continue
        mfu = f"{100 * x['mfu']:.1f}%" if x["mfu"] is not None else "-"
        print(
            f"{label:<24}{x['samples_per_s']:>10.2f}{x['tokens_per_s']:>11.0f}{x['tflops_per_s']:>9.3f}{mfu:>8}"
            f"{x['cpu_seconds']:>8.1f}{x['peak_memory_gib']:>10.2f}"
        )
        for e in x["epochs"]:
            mfu = f"{100 * e['mfu']:.1f}%" if e["mfu"] is not None else "-"
            print(
                f"{'  epoch ' + str(e['epoch']):<24}{e['samples_per_s']:>10.2f}{e['tokens_per_s']:>11.0f}"
                f"{e['tflops_per_s']:>9.3f}{mfu:>8}{e['cpu_seconds']:>8.1f}"
            )
    if r["speedup_samples_per_s"] is not None:
        print(f"{'speedup ours / Trainer':<24}{r['speedup_samples_per_s']:>10.2f}x")


if __name__ == "__main__":
    raise SystemExit(main())
