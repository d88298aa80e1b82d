"""Checkpoints that survive a kill -9: trainable weights, optimizer, scheduler, every RNG state and the
step, written to a temporary folder and renamed; a fingerprint of settings and data refuses a
checkpoint made for something else.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from qualitune.errors import QualituneError
from qualitune.training.schedule import Phase
from qualitune.training.settings import TrainSettings

SPEED_ONLY = ("packing", "cache_vision", "fused_optimizer", "prefetch")
"""Settings that change how fast a step runs, not which examples it sees: a run may resume with
other values (the weights then agree to float rounding), and they stay out of the fingerprint."""


def fingerprint(settings: TrainSettings, phases: Sequence[Phase], extra: dict | None = None) -> str:
    d = {k: v for k, v in settings.to_dict().items() if k not in SPEED_ONLY}
    if not d.get("group_by_length"):
        d.pop("group_by_length", None)  # default off: fingerprints of earlier runs stay valid
    h = hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode())
    h.update(json.dumps(extra or {}, sort_keys=True, default=str).encode())
    for ph in phases:
        for ex in ph.examples:
            h.update(f"{ph.name}|{ex.task}|{ex.item_id}|{ex.answer}|{ex.levels}|{ex.weight}\n".encode())
    return h.hexdigest()[:16]


def _rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint (`ckpt-NNNNNNN/state.json` exists) or None."""
    d = Path(directory)
    if not d.is_dir():
        return None
    done = sorted(
        p for p in d.glob("ckpt-*") if p.is_dir() and (p / "state.json").is_file() and "tmp" not in p.name
    )
    return done[-1] if done else None


def _save_checkpoint(
    directory: Path, micro_step: int, acc, model, optimizer, scheduler, fp: str, keep: int
) -> None:
    from safetensors.torch import save_file

    from qualitune.vlm.trainable import trainable_state

    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"ckpt-{micro_step:07d}"
    tmp = directory / f"ckpt-{micro_step:07d}.tmp"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    acc.wait_for_everyone()
    torch.save(_rng_state(), tmp / f"rng_{acc.process_index}.pt")
    if acc.is_main_process:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    acc.wait_for_everyone()
    if acc.is_main_process:
        state = {"micro_step": micro_step, "fingerprint": fp, "world_size": acc.num_processes}
        (tmp / "state.json").write_text(json.dumps(state))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(p for p in directory.glob("ckpt-*") if p.is_dir() and p != final)[
            : -max(1, keep) + 1 or None
        ]:
            if old.name.endswith(".tmp"):
                continue
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def _load_checkpoint(path: Path, acc, model, optimizer, scheduler, fp: str) -> int:
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text())
    if state["fingerprint"] != fp:
        raise QualituneError(
            f"checkpoint {path} was made for other settings or data (fingerprint {state['fingerprint']} != {fp}); "
            "delete the checkpoint folder or set train.resume: false to start over"
        )
    if state.get("world_size", 1) != acc.num_processes:
        raise QualituneError(
            f"checkpoint {path} was written by {state.get('world_size')} processes, this run has {acc.num_processes}"
        )
    weights = load_file(str(path / "trainable.safetensors"))
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            if name not in named:
                raise QualituneError(f"checkpoint {path} has weight {name} the model lacks")
            named[name].copy_(value.to(named[name].device, named[name].dtype))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng_file = path / f"rng_{acc.process_index}.pt"
    _set_rng_state(torch.load(rng_file, weights_only=False))
    return int(state["micro_step"])
