"""Analyses of a scorer beyond correlation: instability, logit lens, attention shares, grounding.

- Instability (two-stage paper): ask each item K times -- sampling at a temperature and rotating
  paraphrased prompts -- and report the share of items whose predicted integer (and level) is not
  the same every time, plus the mean per-item std of the score. Unparsed answers are counted.
- Logit lens: the hidden state of every decoder layer at the score position (where the first token
  of the answer is predicted), through the final norm and the LM head: top-k tokens per layer.
- Attention: at the score position, the share of attention (mean over heads and items) that goes to
  image tokens, description tokens (two-stage prompts) and the rest of the prompt, per layer.
- Grounding (two-stage): R^2 of the predicted score regressed on the attributes named in the
  model's own description, and the rate of contradictions (a "strong"/"badly" attribute while the
  score sits in the top level).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from qualitune.errors import QualituneError
from qualitune.pmod import DEFAULT_DESCRIPTORS, Descriptor
from qualitune.scorer import Scorer
from qualitune.vlm.answers import ParseReport
from qualitune.vlm.inputs import model_inputs
from qualitune.vlm.tasks import level_of
from qualitune.vlm.unwrap import unwrap_model


def _load_items(scorer: Scorer, paths: Sequence[str]) -> tuple[list[Any], list[str]]:
    from qualitune.media import load_media, media_kind

    items, kinds = [], []
    for p in paths:
        kind = media_kind(p)
        frames = load_media(p, n_frames=scorer.spec.n_frames)
        items.append(frames[0] if kind == "image" else list(frames))
        kinds.append(kind)
    return items, kinds


def instability(
    scorer: Scorer,
    paths: Sequence[str],
    *,
    repeats: int = 4,
    temperature: float = 0.7,
    paraphrases: Sequence[str] = (),
    batch_size: int = 8,
    seed: int = 0,
) -> dict[str, float]:
    """Share of items whose answer changes over `repeats` sampled, paraphrased queries.

    Paraphrases are templates with `{media}`, `{lo}`, `{hi}`; they apply to integer-format scorers
    (the others keep their own question). Items with fewer than two parsed answers are left out of
    the change shares and counted in `items_unparsed`.
    """
    if repeats < 2:
        raise QualituneError("instability needs at least 2 repeats per item")
    fmt = scorer.fmt
    items, kinds = _load_items(scorer, paths)
    values = np.full((len(items), repeats), np.nan)
    report = ParseReport()
    torch.manual_seed(seed)
    for r in range(repeats):
        for start in range(0, len(items), batch_size):
            sl = slice(start, start + batch_size)
            prompts = None
            if paraphrases and fmt.kind == "integer" and not scorer.spec.two_stage:
                template = paraphrases[r % len(paraphrases)]
                prompts = [template.format(media=k, lo=fmt.lo, hi=fmt.hi) for k in kinds[sl]]
            scores, _ = scorer.score_items(
                items[sl],
                kinds[sl],
                mode="greedy",
                report=report,
                do_sample=True,
                temperature=temperature,
                prompts=prompts,
            )
            values[sl, r] = [np.nan if s.score is None else s.score for s in scores]
    parsed = np.isfinite(values)
    usable = parsed.sum(axis=1) >= 2
    changed_int = [len(set(v[np.isfinite(v)].round(6))) > 1 for v in values[usable]]
    levels = [set(level_of(fmt.to_norm(v[np.isfinite(v)])).tolist()) for v in values[usable]]
    stds = [float(np.std(v[np.isfinite(v)])) for v in values[usable]]
    n = int(usable.sum())
    return {
        "items": len(items),
        "repeats": repeats,
        "items_scored": n,
        "items_unparsed": int(len(items) - n),
        "share_changed": float(np.mean(changed_int)) if n else math.nan,
        "share_level_changed": float(np.mean([len(s) > 1 for s in levels])) if n else math.nan,
        "mean_item_std": float(np.mean(stds)) if n else math.nan,
        "parse_failure_rate": report.failure_rate,
    }


def _score_batch(scorer: Scorer, paths: Sequence[str]) -> tuple[dict[str, torch.Tensor], list[str | None]]:
    """The scoring inputs (stage 2's text-only prompt for two-stage scorers) and descriptions."""
    items, kinds = _load_items(scorer, paths)
    descriptions: list[str | None] = [None] * len(items)
    if scorer.spec.two_stage:
        descriptions = list(scorer.describe(items, kinds))
        questions = [
            scorer.fmt.question_from_description(d, k) for d, k in zip(descriptions, kinds, strict=True)
        ]
        return scorer._encode([None] * len(items), questions, scorer.fmt.prefix), descriptions
    return scorer._encode(items, [scorer.fmt.question(k) for k in kinds], scorer.fmt.prefix), descriptions


@torch.no_grad()
def logit_lens(scorer: Scorer, paths: Sequence[str], *, top_k: int = 5) -> pd.DataFrame:
    """Rows (item, layer, rank, token, prob): top-k next tokens decoded from every layer at the
    score position. Layer 0 is the embedding output; the last layer equals the model's output."""
    batch, _ = _score_batch(scorer, paths)
    model = scorer.model
    base = unwrap_model(model)
    inputs = model_inputs(model, batch)
    out = base.model(**inputs, output_hidden_states=True, use_cache=False)
    norm = base.model.language_model.norm
    hidden = out.hidden_states
    final = out.last_hidden_state[:, -1]
    rows = []
    for layer, h in enumerate(hidden):
        h_last = h[:, -1]
        # transformers stores the last layer's state already normed; normalising twice would skew it
        normed = h_last if torch.allclose(h_last, final) else norm(h_last)
        probs = torch.softmax(base.lm_head(normed).float(), dim=-1)
        top = probs.topk(top_k, dim=-1)
        for i in range(h.shape[0]):
            for rank in range(top_k):
                tok = int(top.indices[i, rank])
                rows.append(
                    {
                        "item": str(paths[i]),
                        "layer": layer,
                        "rank": rank + 1,
                        "token": scorer.tokenizer.decode([tok]),
                        "token_id": tok,
                        "prob": float(top.values[i, rank]),
                    }
                )
    return pd.DataFrame(rows)


def candidate_lens(scorer: Scorer, paths: Sequence[str]) -> pd.DataFrame:
    """Mean probability per layer of each valid answer's first token (for the heatmap)."""
    batch, _ = _score_batch(scorer, paths)
    base = unwrap_model(scorer.model)
    firsts = sorted(
        {scorer.tokenizer(c, add_special_tokens=False)["input_ids"][0] for c, _ in scorer.fmt.candidates()}
    )
    with torch.no_grad():
        out = base.model(**model_inputs(scorer.model, batch), output_hidden_states=True, use_cache=False)
        final = out.last_hidden_state[:, -1]
        rows = []
        for layer, h in enumerate(out.hidden_states):
            h_last = h[:, -1]
            normed = h_last if torch.allclose(h_last, final) else base.model.language_model.norm(h_last)
            probs = torch.softmax(base.lm_head(normed).float(), dim=-1)[:, firsts].mean(0)
            for tok, p in zip(firsts, probs.tolist(), strict=True):
                rows.append({"layer": layer, "token": scorer.tokenizer.decode([tok]), "prob": p})
    return pd.DataFrame(rows)


def _description_mask(
    scorer: Scorer, input_ids: torch.Tensor, descriptions: Sequence[str | None]
) -> torch.Tensor:
    """Positions of each row's description tokens inside its prompt (exact token-subsequence match)."""
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for i, desc in enumerate(descriptions):
        if not desc:
            continue
        ids = scorer.tokenizer(" " + desc, add_special_tokens=False)["input_ids"]
        row = input_ids[i].tolist()
        for start in range(len(row) - len(ids) + 1):
            if row[start : start + len(ids)] == ids:
                mask[i, start : start + len(ids)] = True
                break
    return mask


@torch.no_grad()
def attention_shares(scorer: Scorer, paths: Sequence[str]) -> pd.DataFrame:
    """Per layer: share of the score position's attention on image, description and prompt tokens.

    Needs attention weights, which SDPA does not return: the model is switched to eager attention
    for this call and switched back afterwards."""
    batch, descriptions = _score_batch(scorer, paths)
    base = unwrap_model(scorer.model)
    previous = base.config._attn_implementation
    base.set_attn_implementation("eager")
    try:
        out = base.model(**model_inputs(scorer.model, batch), output_attentions=True, use_cache=False)
    finally:
        base.set_attn_implementation(previous)
    ids = batch["input_ids"]
    valid = batch["attention_mask"].bool()
    image = (batch["mm_token_type_ids"] > 0) & valid
    desc = _description_mask(scorer, ids, descriptions) & valid
    prompt = valid & ~image & ~desc
    rows = []
    for layer, att in enumerate(out.attentions):
        a = att[:, :, -1, :].float().mean(dim=1)  # (B, L): score position, mean over heads
        for name, m in (("image", image), ("description", desc), ("prompt", prompt)):
            rows.append({"layer": layer + 1, "part": name, "share": float((a * m).sum(-1).mean())})
    return pd.DataFrame(rows)


def _attribute_features(descriptions: Sequence[str], descriptors: Sequence[Descriptor]) -> np.ndarray:
    """Severity 0/1/2 (good/mild/strong phrase) per descriptor; NaN where the phrase is absent."""
    feats = np.full((len(descriptions), len(descriptors)), np.nan)
    for i, text in enumerate(descriptions):
        t = (text or "").lower()
        for j, d in enumerate(descriptors):
            for sev in (2, 1, 0):  # strongest first: "strong blur" contains no "mild blur"
                if d.phrases[sev].lower() in t:
                    feats[i, j] = sev
                    break
    return feats


def grounding(
    descriptions: Sequence[str],
    scores_1_5: Sequence[float | None],
    descriptors: Sequence[Descriptor] = DEFAULT_DESCRIPTORS,
) -> dict[str, float]:
    """How much of the score the model's own description explains, and how often they contradict."""
    s = np.array([np.nan if v is None else float(v) for v in scores_1_5])
    x = _attribute_features(descriptions, descriptors)
    named = np.isfinite(x).any(axis=1) & np.isfinite(s)
    out = {"items": len(s), "items_with_attributes": int(named.sum())}
    if named.sum() < len(descriptors) + 2 or np.ptp(s[named]) == 0:
        out.update(r2=math.nan, contradiction_rate=math.nan)
        return out
    xs = np.nan_to_num(x[named], nan=0.0)
    design = np.column_stack([np.ones(len(xs)), xs])
    coef, *_ = np.linalg.lstsq(design, s[named], rcond=None)
    resid = s[named] - design @ coef
    out["r2"] = float(1 - resid.var() / s[named].var())
    severe = (np.nan_to_num(x[named], nan=0) >= 2).any(axis=1)
    top = level_of(s[named]) == 4
    out["contradiction_rate"] = float(np.mean(severe & top))
    out["severe_items"] = int(severe.sum())
    return out


__all__ = [
    "attention_shares",
    "candidate_lens",
    "grounding",
    "instability",
    "logit_lens",
]
