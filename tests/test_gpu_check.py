"""benchmarks/gpu_check.py in its CPU mode: the same composition the GPU run makes, at toy size, so
that the first lent GPU needs one call (#18); and the saved-tokenizer path a bare GPU box needs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_saved_offline_tokenizer_loads_without_dashscope(tmp_path, monkeypatch):
    from qualitune.vlm import tokenizer as T

    text = "<|im_start|>user\nRate this image from 10 to 50.<|im_end|>"
    built = T.load_qwen_tokenizer(None)
    built.save_pretrained(str(tmp_path / "tok"))

    def no_dashscope():
        raise AssertionError("the saved copy must be used, not dashscope's qwen.tiktoken")

    monkeypatch.setattr(T, "qwen_tiktoken_path", no_dashscope)
    monkeypatch.setenv(T.SAVED_TOKENIZER_ENV, str(tmp_path / "tok"))
    saved = T.load_qwen_tokenizer(None)
    assert saved(text)["input_ids"] == built(text)["input_ids"]
    assert saved.chat_template and saved.pad_token_id is not None
    monkeypatch.setenv(T.SAVED_TOKENIZER_ENV, str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="--save-tokenizer"):
        T.load_qwen_tokenizer(None)


def test_gpu_check_cpu_tiny_prints_the_named_figures(tmp_path):
    save = [
        sys.executable,
        str(ROOT / "benchmarks" / "gpu_check.py"),
        "--save-tokenizer",
        str(tmp_path / "tok"),
    ]
    subprocess.run(save, check=True, capture_output=True, cwd=ROOT, timeout=300)
    out = tmp_path / "gpu_check.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny"]
    cmd += ["--tokenizer", str(tmp_path / "tok"), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last == json.loads(out.read_text())
    assert last["train"]["status"] == "ok" and last["score"]["status"] == "ok"
    for key in ("samples_per_s", "mfu", "baseline_samples_per_s"):
        assert last["train"][key] > 0, key
    assert last["score"]["images_per_s"] > 0
    # both trainers optimise the same objective: the same first-batch loss on the same weights
    assert last["first_batch_loss_diff"] < 1e-4
    assert last["reports"]["train"]["recipe"]["loss_on"] == "value"
