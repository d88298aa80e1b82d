"""Turning a VLM into a scorer: greedy answers, and expected scores from token probabilities.

Three scorers read the same `encode_batch` output (left-padded, explicit attention mask):

- `greedy_scores`: `generate(do_sample=False)` and a strict parse (IOVQA decodes at temperature 0).
  Unparseable answers stay `score=None, parse_ok=False` and are counted in a `ParseReport`.
- `expected_scores`: the probability of every integer in [lo, hi] under Qwen's digit-by-digit
  tokenisation, without a generate loop. One forward pass gives P(first digit); the digit strings
  of the range form a trie, and each internal node (a digit prefix with continuations, e.g. "1".."5"
  for [10, 50]) costs one batched step on the cached prefix (the KV cache is cropped back after
  each step, so no copy of it is made). p(k) = product of its digit probabilities, times
  P(end of answer) when k's digits are also the prefix of another valid integer (e.g. "1" vs "10"
  in [0, 100]); for prefix-free ranges such as [10, 50] the end token is not queried.
- `level_scores`: Q-Align style softmax restricted to the five level words at the answer position.

Invalid probability mass (tokens that are not a valid continuation: letters, other digits,
out-of-range integers) is never spread onto a score: the distribution over valid answers is
renormalised (score = sum p(k) k / sum p(k)) and the mass that was invalid, 1 - sum p(k), is
reported per item as `invalid_mass`, so a model that mostly answers off-format shows it.

Scores do not depend on batch composition or padding: M-RoPE positions are computed per row from
the attention mask (`get_rope_index` drops padded positions) and passed explicitly, every step
carries the full attention mask, and the answer position is the last column (left padding).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from qualitune.vlm.answers import LEVELS, ParseReport, parse_integer, parse_level
from qualitune.vlm.inputs import _unwrap, model_inputs


@dataclass
class ItemScore:
    """One item's result. `score` is on the label scale [lo, hi]; None when the answer did not parse."""

    score: float | None
    level_probs: list[float] | None
    answer: str | None = None
    parse_ok: bool = True
    invalid_mass: float | None = None


def level_index(k: float, lo: int, hi: int) -> int:
    """The quality level (0 bad .. 4 excellent) of a label: the nearest of 5 evenly spaced centres.

    Centres are lo + i*(hi-lo)/4 (10, 20, 30, 40, 50 for [10, 50], i.e. MOS 1..5), ties go up.
    """
    if hi <= lo:
        return 0
    x = (k - lo) / (hi - lo) * 4.0
    return int(min(4, max(0, int(x + 0.5 + 1e-9))))


def level_to_label(i: float, lo: int, hi: int) -> float:
    """Map a (possibly fractional) level index 0..4 back to the label scale."""
    return lo + i * (hi - lo) / 4.0


def _check_range(lo: int, hi: int) -> None:
    if not (isinstance(lo, int) and isinstance(hi, int)) or lo < 0 or hi < lo:
        raise ValueError(f"label range must be integers 0 <= lo <= hi, got [{lo}, {hi}]")


def _end_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids = {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(i for i in ids if isinstance(i, int) and i >= 0)


def _core(model: torch.nn.Module) -> torch.nn.Module:
    """The inner `Qwen2(_5)_VLModel` that owns `get_rope_index`."""
    base = _unwrap(model)
    inner = getattr(base, "model", None)
    if inner is None or not hasattr(inner, "get_rope_index"):
        raise ValueError(f"{type(base).__name__} is not a Qwen2-VL/Qwen2.5-VL generation model")
    return inner


def mrope_positions(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """3-D M-RoPE position ids `(3, B, L)` for a padded batch, computed per row from its mask."""
    core = _core(model)
    accepted = inspect.signature(core.get_rope_index).parameters
    kwargs = {
        k: inputs[k]
        for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts", "attention_mask")
        if k in inputs and k in accepted
    }
    if "image_grid_thw" not in kwargs and "video_grid_thw" not in kwargs:
        pos = (inputs["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
        return pos.unsqueeze(0).expand(3, -1, -1)
    positions, _ = core.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"], **kwargs)
    return positions


def _prefix_forward(model, batch):
    """One forward over the prompts; returns (last-position log-probs, inputs, positions, cache)."""
    inputs = model_inputs(model, {k: v for k, v in batch.items() if k != "labels"})
    mask = inputs["attention_mask"]
    if not bool(mask[:, -1].all()):
        raise ValueError(
            "expected/level scoring needs left-padded inputs: encode_batch(..., padding_side='left')"
        )
    positions = mrope_positions(model, inputs)
    out = model(**inputs, position_ids=positions, use_cache=True, logits_to_keep=1)
    logprobs = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
    return logprobs, inputs, positions, out.past_key_values


def _step_logprobs(model, cache, mask, next_pos, tokens: list[int]) -> torch.Tensor:
    """Log-probs after appending `tokens` to every row's cached prefix; the cache is restored."""
    b = mask.shape[0]
    n = len(tokens)
    ids = torch.tensor(tokens, dtype=torch.long, device=mask.device).expand(b, n)
    pos = (next_pos.unsqueeze(1) + torch.arange(n, device=mask.device)).unsqueeze(0).expand(3, -1, -1)
    full_mask = torch.cat([mask, torch.ones((b, n), dtype=mask.dtype, device=mask.device)], dim=1)
    out = model(
        input_ids=ids,
        attention_mask=full_mask,
        position_ids=pos,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    cache.crop(-n)  # negative: remove the n tokens just appended (all transformers versions)
    return torch.log_softmax(out.logits[:, -1].float(), dim=-1)


def _digit_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    ids = {}
    for d in "0123456789":
        toks = tokenizer(d, add_special_tokens=False)["input_ids"]
        if len(toks) != 1:
            raise ValueError(f"tokenizer splits digit {d!r} into {len(toks)} tokens; not a Qwen tokenizer?")
        ids[d] = toks[0]
    return ids


@torch.no_grad()
def integer_distribution(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    batch: dict[str, torch.Tensor],
    lo: int,
    hi: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities `(B, hi-lo+1)` of each integer answer (unnormalised) and the invalid mass `(B,)`.

    The integers' digit strings form a trie; node "d1..dj" needs one cached step if some valid
    integer extends it. Each step feeds the node's digits after the prefix and crops them off again.
    """
    _check_range(lo, hi)
    digit = _digit_ids(tokenizer)
    end_ids = _end_token_ids(tokenizer)
    labels = [str(k) for k in range(lo, hi + 1)]
    prefixes = {s[:j] for s in labels for j in range(1, len(s))}  # internal nodes that need a step

    first, inputs, positions, cache = _prefix_forward(model, batch)
    mask = inputs["attention_mask"]
    next_pos = positions.amax(dim=(0, 2)) + 1  # per row: one past the largest prefix position
    node_logprobs: dict[str, torch.Tensor] = {"": first}
    # Shorter prefixes first, so a node's parent is always evaluated before it.
    for node in sorted(prefixes, key=lambda s: (len(s), s)):
        node_logprobs[node] = _step_logprobs(model, cache, mask, next_pos, [digit[c] for c in node])

    b = mask.shape[0]
    probs = torch.zeros((b, len(labels)), dtype=torch.float64, device=mask.device)
    for idx, s in enumerate(labels):
        logp = torch.zeros(b, dtype=torch.float64, device=mask.device)
        for j, c in enumerate(s):
            logp = logp + node_logprobs[s[:j]][:, digit[c]].double()
        if s in prefixes:  # also the start of a longer valid integer: it must end here
            logp = logp + torch.logsumexp(node_logprobs[s][:, end_ids].double(), dim=-1)
        probs[:, idx] = logp.exp()
    invalid = (1.0 - probs.sum(dim=1)).clamp(min=0.0)
    return probs.cpu(), invalid.cpu()


def _levels_from_integers(probs: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    bins = torch.tensor([level_index(k, lo, hi) for k in range(lo, hi + 1)])
    out = torch.zeros((probs.shape[0], 5), dtype=probs.dtype)
    out.index_add_(1, bins, probs)
    return out / out.sum(dim=1, keepdim=True).clamp(min=1e-300)


@torch.no_grad()
def expected_scores(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    batch: dict[str, torch.Tensor],
    lo: int,
    hi: int,
) -> list[ItemScore]:
    """Expected integer label per item: sum p(k) k / sum p(k) over k in [lo, hi] (see module doc)."""
    probs, invalid = integer_distribution(model, tokenizer, batch, lo, hi)
    ks = torch.arange(lo, hi + 1, dtype=torch.float64)
    total = probs.sum(dim=1)
    levels = _levels_from_integers(probs, lo, hi)
    results = []
    for i in range(probs.shape[0]):
        if float(total[i]) <= 0.0:  # all mass underflowed: nothing valid to average, record the failure
            results.append(ItemScore(None, None, parse_ok=False, invalid_mass=1.0))
            continue
        score = float((probs[i] * ks).sum() / total[i])
        results.append(ItemScore(score, levels[i].tolist(), parse_ok=True, invalid_mass=float(invalid[i])))
    return results


def level_token_ids(tokenizer: PreTrainedTokenizerBase, leading_space: bool = True) -> list[int]:
    """First token of each level word (" bad" ... " excellent"); they must be distinct."""
    ids = []
    for word in LEVELS:
        toks = tokenizer((" " if leading_space else "") + word, add_special_tokens=False)["input_ids"]
        ids.append(toks[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"level words share a first token ({ids}); use leading_space=True")
    return ids


@torch.no_grad()
def level_scores(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    batch: dict[str, torch.Tensor],
    lo: int,
    hi: int,
    *,
    leading_space: bool = True,
) -> list[ItemScore]:
    """Q-Align scoring: softmax over the 5 level tokens at the answer position, expected level mapped
    to [lo, hi]. `leading_space` chooses " good" (after a pre-filled "The quality is") or "good"."""
    _check_range(lo, hi)
    ids = level_token_ids(tokenizer, leading_space)
    logprobs, *_ = _prefix_forward(model, batch)
    sub = logprobs[:, ids].double()
    invalid = (1.0 - sub.exp().sum(dim=1)).clamp(min=0.0)
    dist = torch.softmax(sub, dim=1).cpu()
    expected = (dist * torch.arange(5, dtype=torch.float64)).sum(dim=1)
    return [
        ItemScore(
            level_to_label(float(expected[i]), lo, hi), dist[i].tolist(), invalid_mass=float(invalid[i])
        )
        for i in range(dist.shape[0])
    ]


@torch.no_grad()
def greedy_scores(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    batch: dict[str, torch.Tensor],
    lo: int,
    hi: int,
    *,
    answer_format: str = "integer",
    max_new_tokens: int = 4,
    report: ParseReport | None = None,
) -> list[ItemScore]:
    """Greedy decoding then a strict parse; failures stay None and are added to `report`.

    `answer_format` "integer" parses a bare integer in [lo, hi]; "level" parses one of the five
    words and maps it to the label scale. `max_new_tokens` should cover the digits plus the end
    token (4 for [10, 50] leaves room to see an over-long answer fail).
    """
    _check_range(lo, hi)
    if answer_format not in ("integer", "level"):
        raise ValueError(f"answer_format must be 'integer' or 'level', got {answer_format!r}")
    inputs = model_inputs(model, {k: v for k, v in batch.items() if k != "labels"})
    width = inputs["input_ids"].shape[1]
    out = model.generate(
        **inputs,
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=_end_token_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        temperature=None,
        top_p=None,
        top_k=None,
    )
    texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    report = report if report is not None else ParseReport()
    results = []
    for i, text in enumerate(texts):
        if answer_format == "integer":
            value = report.add(i, text, parse_integer(text, lo, hi))
            score = None if value is None else float(value)
            levels = None if value is None else _one_hot(level_index(value, lo, hi))
        else:
            idx = report.add(i, text, parse_level(text))
            score = None if idx is None else level_to_label(idx, lo, hi)
            levels = None if idx is None else _one_hot(idx)
        results.append(ItemScore(score, levels, answer=text, parse_ok=score is not None))
    return results


def _one_hot(i: int) -> list[float]:
    return [1.0 if j == i else 0.0 for j in range(5)]


def time_scorers(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    batch: dict[str, torch.Tensor],
    lo: int,
    hi: int,
    n_repeats: int = 3,
) -> dict[str, float]:
    """Median seconds per batch for each scorer (one warm-up call first), for benchmarks."""
    timings: dict[str, float] = {}
    scorers = {
        "greedy": lambda: greedy_scores(model, tokenizer, batch, lo, hi),
        "expected": lambda: expected_scores(model, tokenizer, batch, lo, hi),
        "level": lambda: level_scores(model, tokenizer, batch, lo, hi),
    }
    for name, fn in scorers.items():
        fn()
        runs = []
        for _ in range(max(1, n_repeats)):
            t0 = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t0)
        timings[name] = sorted(runs)[len(runs) // 2]
    return timings


__all__ = [
    "ItemScore",
    "expected_scores",
    "greedy_scores",
    "integer_distribution",
    "level_index",
    "level_scores",
    "level_to_label",
    "mrope_positions",
    "time_scorers",
]
