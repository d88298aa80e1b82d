"""Fault injection (#20): a full disk while a checkpoint or the scorer folder is written.

The write is made to fail the way a full disk fails it (`OSError(ENOSPC)` from the writer, part of
the files already written), through the real functions. What must hold: the error reaches the
caller, and the previous checkpoint / scorer is still complete and loads.
"""

from __future__ import annotations

import errno
import json

import pytest
import torch

from qualitune import scorer as scorer_mod
from qualitune import training
from vlm_factory import tiny_scorer_dir


class _OneProcess:
    """The parts of an `accelerate.Accelerator` that checkpointing uses, for a single process."""

    is_main_process = True
    process_index = 0
    num_processes = 1

    def wait_for_everyone(self) -> None:
        pass


def _disk_full(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def _parts():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return model, opt, sched


def test_disk_full_during_a_checkpoint_keeps_the_previous_one_loadable(tmp_path, monkeypatch):
    model, opt, sched = _parts()
    acc = _OneProcess()
    training._save_checkpoint(tmp_path, 10, acc, model, opt, sched, "fp", keep=2)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)  # the next checkpoint would hold other weights
    real_save = torch.save

    def save(obj, path, *a, **k):  # the RNG state is written, then the optimizer's hits the full disk
        if str(path).endswith("optimizer.pt"):
            _disk_full()
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError, match="No space left"):
        training._save_checkpoint(tmp_path, 20, acc, model, opt, sched, "fp", keep=2)
    monkeypatch.undo()
    latest = training.latest_checkpoint(tmp_path)
    assert latest is not None and latest.name == "ckpt-0000010"
    assert (tmp_path / "ckpt-0000020.tmp").is_dir()  # the half-written one is never taken for a checkpoint
    fresh, fresh_opt, fresh_sched = _parts()
    with torch.no_grad():
        fresh.weight.zero_()
    step = training._load_checkpoint(latest, acc, fresh, fresh_opt, fresh_sched, "fp")
    assert step == 10
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, saved[k]), k


def test_disk_full_while_writing_the_scorer_keeps_the_previous_scorer(tmp_path, monkeypatch):
    out = tiny_scorer_dir(tmp_path / "scorer", max_pixels=56 * 56)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    spec = scorer_mod.ScorerSpec.read(out)
    spec.max_pixels = 84 * 84
    monkeypatch.setattr(scorer_mod.ScorerSpec, "write", _disk_full)
    with pytest.raises(OSError, match="No space left"):
        scorer_mod.save_scorer(torch.nn.Linear(2, 2), spec, out)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert json.loads((out / scorer_mod.SPEC_FILE).read_text())["max_pixels"] == 56 * 56
    loaded = scorer_mod.Scorer.load(out, device="cpu")
    assert loaded.spec.max_pixels == 56 * 56
