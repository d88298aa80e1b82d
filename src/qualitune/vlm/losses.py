"""Training losses on the answer tokens: IOVQA's value-only mask, VITAL's KL + weighted CE and focal loss.

Logits are computed only where a loss is taken (the positions just before each supervised token),
never for the whole sequence: with Qwen's 152k vocabulary, full-sequence logits are most of a small
model's memory and time, and exactly the same numbers come out for the supervised positions.

Per-row losses are averaged over the row's supervised tokens, weighted by the example weight and
summed over rows, then divided by the number of rows of this process. With data-parallel training
the trainer scales each process's loss by its share of the global batch (the last batch may split
unevenly), so DDP's gradient mean equals the single-process result on the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qualitune.errors import QualituneError
from qualitune.vlm.inputs import IGNORE_INDEX

LOSS_ON = ("value", "answer")


def supervised_labels(labels: torch.Tensor, value_mask: torch.Tensor, loss_on: str) -> torch.Tensor:
    """The labels that carry loss: `value` keeps only the value's tokens (IOVQA's integer-only mask:
    the integer's digits; not the template, not "<|im_end|>"); `answer` keeps every answer token."""
    if loss_on not in LOSS_ON:
        raise QualituneError(f"loss_on must be one of {LOSS_ON}, got {loss_on!r}")
    if loss_on == "answer":
        return labels
    return torch.where(value_mask, labels, torch.full_like(labels, IGNORE_INDEX))


def focal_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, alpha: float, gamma: float
) -> torch.Tensor:
    """Per-token focal loss alpha * (1 - p_t)^gamma * CE (Lin et al.); gamma = 0 is alpha * CE.

    VITAL uses it on the description tokens so frequent, easy words ("the quality is good") stop
    dominating the gradient of the rare attribute words.
    """
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return -alpha * (1.0 - logp.exp()).pow(gamma) * logp


@dataclass(frozen=True)
class LossConfig:
    """Loss settings. `focal_tasks` use the focal loss instead of CE; a `level` score example with a
    target distribution adds `kl_weight` * KL(PMOD || softmax over the five level tokens) to
    `ce_weight` * its CE."""

    loss_on: str = "value"
    kl_weight: float = 1.0
    ce_weight: float = 1.0
    focal_alpha: float = 1.0
    focal_gamma: float = 2.0
    focal_tasks: tuple[str, ...] = ()


def answer_losses(
    hidden: torch.Tensor,
    lm_head: torch.nn.Module,
    labels: torch.Tensor,
    *,
    focal_rows: torch.Tensor,
    cfg: LossConfig,
    level_ids: list[int] | None = None,
    level_targets: torch.Tensor | None = None,
    level_rows: torch.Tensor | None = None,
    value_start: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-row losses `(B,)`: `ce` (or focal) over supervised tokens, and `kl` for level rows.

    `labels` are already masked (`supervised_labels`); position t's hidden state predicts token t+1.
    `level_rows` marks rows whose value is a level word at `value_start` with a target distribution
    `level_targets` (B, 5) over `level_ids`.
    """
    b = labels.shape[0]
    target = labels[:, 1:]
    rows, cols = torch.nonzero(target != IGNORE_INDEX, as_tuple=True)
    logits = lm_head(hidden[rows, cols])  # (T, V): only supervised positions
    tok_target = target[rows, cols]
    ce_tok = F.cross_entropy(logits.float(), tok_target, reduction="none")
    if bool(focal_rows.any()):
        focal_tok = focal_cross_entropy(logits, tok_target, cfg.focal_alpha, cfg.focal_gamma)
        ce_tok = torch.where(focal_rows[rows], focal_tok, ce_tok)
    counts = torch.zeros(b, device=hidden.device).index_add_(0, rows, torch.ones_like(ce_tok))
    ce = torch.zeros(b, device=hidden.device).index_add_(0, rows, ce_tok) / counts.clamp(min=1)
    out = {"ce": ce, "n_tokens": counts}
    kl = torch.zeros(b, device=hidden.device)
    if level_rows is not None and bool(level_rows.any()):
        if level_ids is None or level_targets is None or value_start is None:
            raise QualituneError("level rows need level_ids, level_targets and value_start")
        r = torch.nonzero(level_rows, as_tuple=True)[0]
        # the value's first token is predicted by the hidden state one position earlier
        h = hidden[r, value_start[r] - 1]
        logq = torch.log_softmax(lm_head(h).float()[:, level_ids], dim=-1)
        p = level_targets[r].float().clamp(min=0)
        p = p / p.sum(dim=-1, keepdim=True).clamp(min=1e-12)
        kl_rows = (p * (torch.log(p.clamp(min=1e-12)) - logq)).sum(dim=-1)
        kl = kl.index_put((r,), kl_rows)
    out["kl"] = kl
    return out


def combine(
    losses: dict[str, torch.Tensor], weights: torch.Tensor, level_rows: torch.Tensor | None, cfg: LossConfig
):
    """Scalar loss: sum over rows of weight * (ce_weight * ce + kl_weight * kl) on level rows and
    weight * ce elsewhere, divided by the local row count (see module docstring)."""
    ce_w = torch.ones_like(weights)
    if level_rows is not None:
        ce_w = torch.where(level_rows, torch.full_like(weights, cfg.ce_weight), ce_w)
    per_row = ce_w * losses["ce"] + cfg.kl_weight * losses["kl"]
    return (weights * per_row).sum() / weights.shape[0]


__all__ = ["LOSS_ON", "LossConfig", "answer_losses", "combine", "focal_cross_entropy", "supervised_labels"]
