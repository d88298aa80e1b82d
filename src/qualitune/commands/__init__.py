"""Subcommands of the `qualitune` CLI: each module exposes `register(subparsers)` and sets `func`.

The helpers here are the options that more than one subcommand shares, defined once.
"""

from __future__ import annotations

import argparse


def add_model_runtime_arguments(p: argparse.ArgumentParser) -> None:
    """`--device` and `--dtype`, for the subcommands that load a scorer (`score`, `serve`)."""
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="compute dtype (default: the scorer's own: float32 for the compact backend, the "
        "checkpoint's for a Qwen folder). bfloat16 halves memory, but on the compact backend it moves "
        "scores by ~0.3 on the 10-50 scale (docs/compact-backend.md)",
    )


def default_device(requested: str | None) -> str | None:
    """The device asked for, else CUDA when there is one (None: where the model loads, the CPU)."""
    if requested is not None:
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else None
