"""Turning a VLM into a scorer: greedy answers, and expected scores from token probabilities.

Three scorers read the same `encode_batch` output (left-padded, explicit attention mask):

- `greedy_scores`: `generate(do_sample=False)` and a strict parse (IOVQA decodes at temperature 0).
  Unparseable answers stay `score=None, parse_ok=False` and are counted in a `ParseReport`.
- `expected_scores`: the probability of every integer in [lo, hi] under Qwen's digit-by-digit
  tokenisation, without a generate loop. One forward pass gives P(first digit); the digit strings
  of the range form a trie, and each internal node (a digit prefix with continuations, e.g. "1".."5"
  for [10, 50]) is evaluated in one further forward over the cached prefix, all nodes side by side
  under a tree-shaped attention mask (the KV cache is cropped back afterwards, never copied).
  p(k) = product of its digit probabilities, times P(end of answer) when k's digits are also the
  prefix of another valid integer (e.g. "1" vs "10" in [0, 100]); for prefix-free
  ranges such as [10, 50] the end token is not queried.
- `level_scores`: Q-Align style softmax restricted to the five level words at the answer position.

Invalid probability mass (tokens that are not a valid continuation: letters, other digits,
out-of-range integers) is never spread onto a score: the distribution over valid answers is
renormalised (score = sum p(k) k / sum p(k)) and the mass that was invalid, 1 - sum p(k), is
reported per item as `invalid_mass`, so a model that mostly answers off-format shows it. Past
`max_invalid_mass` (default `MAX_INVALID_MASS`, 0.5) the renormalised mean is no longer a score (it
would average the crumbs of a distribution that is almost all elsewhere): the item is counted as
unparsed, its reason and invalid mass in the `ParseReport`, and its score stays None.

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

from qualitune.errors import QualituneError
from qualitune.vlm.answers import LEVELS, ParseReport, parse_integer, parse_level
from qualitune.vlm.inputs import model_inputs
from qualitune.vlm.tasks import AnswerFormat, level_of
from qualitune.vlm.unwrap import unwrap_model

MAX_INVALID_MASS = 0.5
"""Default `max_invalid_mass` of an `expected` score: more than half the answer probability on
off-format text means the model did not answer the question, whatever the valid rest averages to."""


def check_max_invalid_mass(value: float) -> float:
    """`max_invalid_mass` as a float in [0, 1], or a ValueError that says what it means."""
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise QualituneError(
            f"max_invalid_mass must be in [0, 1] (the largest share of answer probability off the valid "
            f"answers that still gives an expected score; 1 accepts every item), got {value!r}"
        )
    return v


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
        raise QualituneError(f"label range must be integers 0 <= lo <= hi, got [{lo}, {hi}]")


def _end_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids = {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(i for i in ids if isinstance(i, int) and i >= 0)


def _core(model: torch.nn.Module) -> torch.nn.Module:
    """The inner `Qwen2(_5)_VLModel` that owns `get_rope_index`."""
    base = unwrap_model(model)
    inner = getattr(base, "model", None)
    if inner is None or not hasattr(inner, "get_rope_index"):
        raise QualituneError(f"{type(base).__name__} is not a Qwen2-VL/Qwen2.5-VL generation model")
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


MIN_SHARED_PREFIX = 8
"""Shortest common prompt prefix (tokens) worth computing once per batch (`shared_prefix_length`)."""

PER_TOKEN_KEYS = ("input_ids", "mm_token_type_ids")


def shared_prefix_length(inputs: dict[str, torch.Tensor]) -> int:
    """How many leading tokens every row of an unpadded batch shares, up to the first vision token.

    Those positions hold the same keys and values in every row, so `_prefix_forward` computes them
    for one row and repeats the cache: the compact backend puts the question before the picture, so
    its whole question is such a prefix. 0 when the batch is padded, has one row, or shares less
    than `MIN_SHARED_PREFIX` tokens (the repeat would not pay).
    """
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    if ids.shape[0] < 2 or not bool(mask.all()):
        return 0
    same = (ids == ids[:1]).all(dim=0)
    if "mm_token_type_ids" in inputs:
        same &= ~(inputs["mm_token_type_ids"] != 0).any(dim=0)  # pad ids agree, their pixels do not
    n = int(same.long().cumprod(dim=0).sum())
    n = min(n, ids.shape[1] - 1)  # at least the last token goes through the batched forward
    return n if n >= MIN_SHARED_PREFIX else 0


def _prefix_forward(model, batch, *, share_prefix: bool = True):
    """One forward over the prompts; returns (last-position log-probs, inputs, positions, cache).

    With `share_prefix`, a prefix common to all rows (`shared_prefix_length`) is computed once and
    its cache repeated over the batch; the result equals the plain forward to float rounding
    (tested), at a fraction of the cost when the question precedes the picture.
    """
    inputs = model_inputs(model, {k: v for k, v in batch.items() if k != "labels"})
    mask = inputs["attention_mask"]
    if not bool(mask[:, -1].all()):
        raise QualituneError(
            "expected/level scoring needs left-padded inputs: encode_batch(..., padding_side='left')"
        )
    positions = mrope_positions(model, inputs)
    n = shared_prefix_length(inputs) if share_prefix else 0
    if n:
        head = model(
            input_ids=inputs["input_ids"][:1, :n],
            attention_mask=mask[:1, :n],
            position_ids=positions[:, :1, :n],
            use_cache=True,
        )
        cache = head.past_key_values
        cache.batch_repeat_interleave(mask.shape[0])
        tail = {k: (v[:, n:] if k in PER_TOKEN_KEYS else v) for k, v in inputs.items()}
        out = model(
            **tail, position_ids=positions[:, :, n:], past_key_values=cache, use_cache=True, logits_to_keep=1
        )
    else:
        out = model(**inputs, position_ids=positions, use_cache=True, logits_to_keep=1)
    logprobs = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
    return logprobs, inputs, positions, out.past_key_values


def _tree_logprobs(
    model, cache, mask, next_pos, nodes: set[tuple[int, ...]]
) -> dict[tuple[int, ...], torch.Tensor]:
    """Next-token log-probs after every trie node, in ONE cached forward ("tree attention").

    Each internal node contributes its last token; a token sees the whole prefix plus its own
    ancestors in the trie (a 4-D mask), sits at position prefix_end + depth - 1, and so computes
    exactly what feeding that node's tokens alone after the prefix would. For [10, 50] that is the
    five first digits side by side: two forwards in all instead of one per node, or one per
    generated token for `generate()`. The cache is cropped back afterwards.
    """
    order = sorted(nodes, key=lambda s: (len(s), s))
    index = {node: i for i, node in enumerate(order)}
    n = len(order)
    b, prefix_len = mask.shape
    dev = mask.device
    allowed = torch.zeros((n, n), dtype=torch.bool, device=dev)
    for i, node in enumerate(order):
        for j in range(1, len(node) + 1):
            allowed[i, index[node[:j]]] = True  # its ancestors (proper prefixes that are nodes) and itself
    tree_mask = torch.cat(
        [mask.bool()[:, None, None, :].expand(b, 1, n, prefix_len), allowed[None, None].expand(b, 1, n, n)],
        dim=-1,
    )
    ids = torch.tensor([node[-1] for node in order], dtype=torch.long, device=dev).expand(b, n)
    depth = torch.tensor([len(node) - 1 for node in order], device=dev)
    pos = (next_pos.unsqueeze(1) + depth.unsqueeze(0)).unsqueeze(0).expand(3, -1, -1)
    out = model(
        input_ids=ids,
        attention_mask=tree_mask,
        position_ids=pos,
        past_key_values=cache,
        use_cache=True,
    )
    cache.crop(-n)
    logprobs = torch.log_softmax(out.logits.float(), dim=-1)
    return {node: logprobs[:, i] for i, node in enumerate(order)}


def _digit_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    ids = {}
    for d in "0123456789":
        toks = tokenizer(d, add_special_tokens=False)["input_ids"]
        if len(toks) != 1:
            raise QualituneError(
                f"tokenizer splits digit {d!r} into {len(toks)} tokens; not a Qwen tokenizer?"
            )
        ids[d] = toks[0]
    return ids


def _token_sequences(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[tuple[int, ...]]:
    seqs = [tuple(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    if any(not s for s in seqs):
        raise QualituneError("an answer candidate tokenises to nothing")
    if len(set(seqs)) != len(seqs):
        raise QualituneError("two answer candidates tokenise to the same ids")
    return seqs


@torch.no_grad()
def candidate_distribution(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    batch: dict[str, torch.Tensor],
    candidates: list[str],
    *,
    end_text: str = "<|im_end|>",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities `(B, len(candidates))` of each answer text and the invalid mass `(B,)`.

    The candidates' token sequences form a trie; every internal node (a proper prefix some candidate
    extends) is evaluated in one tree-attention forward over the cached prompt (`_tree_logprobs`).
    A candidate that is itself an internal node (e.g. "1" when "10" is valid) must also end there:
    its probability is multiplied by P(first token of `end_text`, or any end-of-turn token).
    """
    seqs = _token_sequences(tokenizer, candidates)
    end_ids = sorted(
        set(_end_token_ids(tokenizer)) | set(tokenizer(end_text, add_special_tokens=False)["input_ids"][:1])
    )
    internal = {s[:j] for s in seqs for j in range(1, len(s))}

    first, inputs, positions, cache = _prefix_forward(model, batch)
    mask = inputs["attention_mask"]
    next_pos = positions.amax(dim=(0, 2)) + 1  # per row: one past the largest prefix position
    node_logprobs: dict[tuple[int, ...], torch.Tensor] = {(): first}
    if internal:
        node_logprobs.update(_tree_logprobs(model, cache, mask, next_pos, internal))

    b = mask.shape[0]
    probs = torch.zeros((b, len(seqs)), dtype=torch.float64, device=mask.device)
    for idx, seq in enumerate(seqs):
        logp = torch.zeros(b, dtype=torch.float64, device=mask.device)
        for j, tok in enumerate(seq):
            logp = logp + node_logprobs[seq[:j]][:, tok].double()
        if seq in internal:  # also the start of a longer valid answer: it must end here
            logp = logp + torch.logsumexp(node_logprobs[seq][:, end_ids].double(), dim=-1)
        probs[:, idx] = logp.exp()
    invalid = (1.0 - probs.sum(dim=1)).clamp(min=0.0)
    return probs.cpu(), invalid.cpu()


def integer_distribution(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    batch: dict[str, torch.Tensor],
    lo: int,
    hi: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities `(B, hi-lo+1)` of each integer answer (unnormalised) and the invalid mass `(B,)`."""
    _check_range(lo, hi)
    _digit_ids(tokenizer)  # fails early on a tokenizer that does not split digits
    return candidate_distribution(model, tokenizer, batch, [str(k) for k in range(lo, hi + 1)])


def expected_scores(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    batch: dict[str, torch.Tensor],
    lo: int,
    hi: int,
    *,
    max_invalid_mass: float = MAX_INVALID_MASS,
) -> list[ItemScore]:
    """Expected integer label per item: sum p(k) k / sum p(k) over k in [lo, hi] (see module doc);
    `format_scores` in expected mode for the integer format."""
    _check_range(lo, hi)
    return format_scores(
        model,
        tokenizer,
        batch,
        AnswerFormat("integer", lo, hi),
        "expected",
        max_invalid_mass=max_invalid_mass,
    )


def level_token_ids(tokenizer: PreTrainedTokenizerBase, leading_space: bool = True) -> list[int]:
    """First token of each level word (" bad" ... " excellent"); they must be distinct."""
    ids = []
    for word in LEVELS:
        toks = tokenizer((" " if leading_space else "") + word, add_special_tokens=False)["input_ids"]
        ids.append(toks[0])
    if len(set(ids)) != len(ids):
        raise QualituneError(f"level words share a first token ({ids}); use leading_space=True")
    return ids


def first_token_ids(tokenizer: PreTrainedTokenizerBase, fmt) -> list[int]:
    """The token of each `fmt.first_token_bins()` bin, in order: what a soft label's KL is taken
    over. Every valid value must start with its bin's token, and the bins' tokens must differ."""
    if fmt.kind == "level":
        return level_token_ids(tokenizer)
    bins = [text for text, _, _ in fmt.first_token_bins()]
    ids = []
    for text in bins:
        toks = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids.append(toks[0] if len(toks) == 1 else None)
    values = {t: tokenizer(t, add_special_tokens=False)["input_ids"][0] for t, _ in fmt.candidates()}
    firsts = {t[0]: i for t, i in values.items()}
    if (
        None in ids
        or len(set(ids)) != len(ids)
        or any(firsts[b] != i for b, i in zip(bins, ids, strict=True))
    ):
        raise QualituneError(
            f"soft labels need each leading character {bins} to be one token that starts every value "
            f"it leads; this tokenizer splits them otherwise ({ids}): set train.label_sigma to 0"
        )
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
def generate_texts(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    batch: dict[str, torch.Tensor],
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float | None = None,
) -> list[str]:
    """Decode each row's continuation: greedy (the papers' temperature 0) unless `do_sample`."""
    inputs = model_inputs(model, {k: v for k, v in batch.items() if k != "labels"})
    width = inputs["input_ids"].shape[1]
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0}
        if do_sample
        else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    )
    out = model.generate(
        **inputs,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=_end_token_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        **sampling,
    )
    return tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)


SCORING_MODES = ("greedy", "expected")


def format_scores(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    batch: dict[str, torch.Tensor],
    fmt: AnswerFormat,
    mode: str,
    *,
    report: ParseReport | None = None,
    index_offset: int = 0,
    do_sample: bool = False,
    temperature: float | None = None,
    max_invalid_mass: float = MAX_INVALID_MASS,
) -> list[ItemScore]:
    """Score a batch encoded with `assistant_prefix=fmt.prefix`, in any answer format.

    `expected`: probability of every valid answer text (`candidate_distribution`), score = the
    renormalised mean of their values, `invalid_mass` reported. `greedy`: generate, then parse
    strictly with `fmt.parse`; failures stay None. In both modes every item goes to `report` (item
    index + `index_offset`); an `expected` failure is an item whose valid answers all underflowed
    or whose invalid mass exceeds `max_invalid_mass` (module doc).
    Generation stops at the end of turn or after as many tokens as the longest valid answer (plus
    the format's suffix): an integer-only-mask model was never trained to emit the end token, and
    what it would say after a complete answer is not part of the answer.
    Sampling (`do_sample`, `temperature`) exists for the instability analysis only.
    """
    if mode not in SCORING_MODES:
        raise QualituneError(f"scoring mode must be one of {SCORING_MODES}, got {mode!r}")
    if mode == "expected":
        max_invalid_mass = check_max_invalid_mass(max_invalid_mass)
        cands = fmt.candidates()
        probs, invalid = candidate_distribution(
            model, tokenizer, batch, [c for c, _ in cands], end_text=fmt.suffix + "<|im_end|>"
        )
        values = torch.tensor([v for _, v in cands], dtype=torch.float64)
        bins = torch.as_tensor(level_of(fmt.to_norm(values.numpy())))
        levels = torch.zeros((probs.shape[0], 5), dtype=torch.float64).index_add_(1, bins, probs)
        total = probs.sum(dim=1)
        report = report if report is not None else ParseReport()
        results = []
        for i in range(probs.shape[0]):
            if float(total[i]) <= 0.0:  # all mass underflowed: nothing valid to average
                report.add(index_offset + i, "no probability on any valid answer", None)
                results.append(ItemScore(None, None, parse_ok=False, invalid_mass=1.0))
                continue
            if float(invalid[i]) > max_invalid_mass:  # a mean of crumbs is not a score (module doc)
                inv = float(invalid[i])
                report.add(
                    index_offset + i, f"invalid mass {inv:.6g} > max_invalid_mass {max_invalid_mass:g}", None
                )
                results.append(ItemScore(None, None, parse_ok=False, invalid_mass=inv))
                continue
            score = float((probs[i] * values).sum() / total[i])
            report.add(index_offset + i, "", score)  # counted, so parse_failures covers both modes
            results.append(
                ItemScore(
                    score, (levels[i] / total[i]).tolist(), parse_ok=True, invalid_mass=float(invalid[i])
                )
            )
        return results
    longest = max(len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c, _ in fmt.candidates())
    texts = generate_texts(
        model,
        tokenizer,
        batch,
        max_new_tokens=longest + len(tokenizer(fmt.suffix, add_special_tokens=False)["input_ids"]),
        do_sample=do_sample,
        temperature=temperature,
    )
    report = report if report is not None else ParseReport()
    results = []
    for i, text in enumerate(texts):
        value = fmt.parse(text)
        report.add(index_offset + i, text, value)
        levels = None if value is None else _one_hot(int(level_of(fmt.to_norm(value))))
        results.append(ItemScore(value, levels, answer=text, parse_ok=value is not None))
    return results


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
        raise QualituneError(f"answer_format must be 'integer' or 'level', got {answer_format!r}")
    texts = generate_texts(model, tokenizer, batch, max_new_tokens=max_new_tokens)
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
    "SCORING_MODES",
    "ItemScore",
    "candidate_distribution",
    "format_scores",
    "generate_texts",
    "expected_scores",
    "MAX_INVALID_MASS",
    "check_max_invalid_mass",
    "greedy_scores",
    "integer_distribution",
    "level_index",
    "level_scores",
    "level_to_label",
    "mrope_positions",
    "time_scorers",
]
