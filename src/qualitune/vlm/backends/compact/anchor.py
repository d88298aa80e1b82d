"""The probe-anchored quality token: one more visual token, worded in the decoder's own vocabulary.

Why: a projector trained from scratch has to invent tokens the decoder has never seen, and the
decoder has to learn to read them, at the same time. On small training sets (the demo's 1,004 items
of 12 scenes) that race is chaotic: identical runs differing only in float summation order ended
anywhere between val SRCC 0.27 and 0.72, and the answer position's hidden state kept much less of
the quality signal than the projector's own output held (ridge on it: test 0.39 vs 0.82). Given one
token that literally *is* the right answer's first digit, the same decoder learns to read it within
two epochs (0.93 SRCC): reading is easy when the token is in the decoder's vocabulary.

So the anchor token is a mixture of the decoder's input embeddings of the answer's first tokens
(the digits "1".."5" of answers on [10, 50]; the five level words for level answers), weighted by a
linear probe on the frozen encoder's global features:

    w = softmax(W · LayerNorm((g - shift) * gain) + b),   token = w @ E[first tokens]

The probe is fitted before training, in closed form (ridge on the train split, its penalty chosen by
val SRCC, as the evaluation's linear-probe baseline is), and turned into the exact Gaussian
soft-assignment of its prediction to the first-token bins: with prediction y and bin centres c_k,
log w_k = -(y - c_k)^2 / (2 sigma^2) + const is linear in y, hence in the features, with sigma the
probe's val RMSE. The anchor then stays **frozen**: LP-FT (Kumar et al., "Fine-Tuning can Distort
Pretrained Features and Underperform Out-of-Distribution", ICLR 2022) starts fine-tuning from a
fitted linear head; keeping that head fixed means the projector and LoRA can only add to what the
probe knows, never wash it out on a small training set. Measured on the demo (docs/pipeline.md):
three seeds land within 0.02 of each other (val 0.72-0.74, test 0.65-0.67) where the same recipe
without the anchor spread over 0.27-0.72.

The anchor belongs to the compact backend (its projector is ours); `model.anchor: none` leaves it
out. A scorer records it (`ScorerSpec.anchor_tokens`), so loading rebuilds the token before the
weights go in; scorers written without it load and score as before.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from qualitune.errors import QualituneError
from qualitune.vlm.backends.compact.modeling import global_feature_dim, is_compact
from qualitune.vlm.unwrap import unwrap_model

log = logging.getLogger(__name__)

MIN_SIGMA = 0.25
"""Floor of the soft assignment's width (1-5 scale): a probe that fits val almost exactly must not
turn the token into a hard one-hot that hides how unsure it is (the PMOD's `min_std` reasoning)."""


class QualityAnchor(nn.Module):
    """The frozen anchor: fitted standardisation, per-item LayerNorm, a linear map to K logits, and
    the K anchor embeddings. Every tensor is a parameter (so scorer folders save it with the other
    weights) that `qualitune.vlm.trainable` keeps frozen in every tuning mode."""

    def __init__(self, global_dim: int, k: int, hidden: int):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(global_dim), requires_grad=False)
        self.gain = nn.Parameter(torch.ones(global_dim), requires_grad=False)
        self.weight = nn.Parameter(torch.zeros(k, global_dim), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(k), requires_grad=False)
        self.embeds = nn.Parameter(torch.zeros(k, hidden), requires_grad=False)
        # the bins' centres on 1-5 and the assignment's width: they turn the logits back into the
        # probe's own prediction (`probe_scores`), which evaluation reports as a baseline
        self.centres = nn.Parameter(torch.linspace(1.0, 5.0, k), requires_grad=False)
        self.sigma = nn.Parameter(torch.ones(()), requires_grad=False)

    def logits(self, global_feats: torch.Tensor) -> torch.Tensor:
        """(N, K) logits of the anchor embeddings for raw global features (N, global_dim)."""
        x = (global_feats.to(self.shift.dtype) - self.shift) * self.gain
        z = F.layer_norm(x, x.shape[-1:])
        return F.linear(z, self.weight, self.bias)

    def mixture(self, global_feats: torch.Tensor) -> torch.Tensor:
        """(N, K) weights of the anchor embeddings."""
        return torch.softmax(self.logits(global_feats), dim=-1)

    def probe_scores(self, global_feats: torch.Tensor) -> torch.Tensor:
        """(N,) the probe's prediction on 1-5 that the logits encode: logit_k = (c_k y - c_k^2 / 2)
        / sigma^2, so the first and last bins' difference gives y back exactly."""
        lg, c, s2 = self.logits(global_feats), self.centres, self.sigma**2
        return (s2 * (lg[:, -1] - lg[:, 0]) + (c[-1] ** 2 - c[0] ** 2) / 2) / (c[-1] - c[0])

    def forward(self, global_feats: torch.Tensor) -> torch.Tensor:
        """(N, hidden): one anchor token per image."""
        return self.mixture(global_feats) @ self.embeds


def add_anchor(model: torch.nn.Module, k: int) -> QualityAnchor:
    """Give a compact model's projector an anchor of `k` embeddings (idempotent for the same `k`);
    the image processor made afterwards expands each image into one more token."""
    if not is_compact(model):
        raise QualituneError(
            "the probe-anchored quality token belongs to the compact backend; set model.anchor: none "
            f"for {type(unwrap_model(model)).__name__}"
        )
    base = unwrap_model(model)
    merger = base.model.visual.merger
    if merger.anchor is not None:
        if merger.anchor.weight.shape[0] != k:
            raise QualituneError(
                f"the model already has an anchor of {merger.anchor.weight.shape[0]} tokens, not {k}"
            )
        return merger.anchor
    ref = merger.scale
    merger.anchor = QualityAnchor(global_feature_dim(), k, base.config.hidden_size).to(ref.device)
    base.config.anchor_tokens = int(k)
    return merger.anchor


def anchor_vocabulary(tokenizer, fmt) -> tuple[list[int], list[float], list[str]]:
    """`(token ids, bin centres on 1-5, texts)` of the anchor: the answer format's first tokens
    (`AnswerFormat.first_token_bins`), or the five level words for a format whose first token is not
    one bin per leading character (e.g. integers on [0, 100])."""
    from qualitune.vlm.scoring import first_token_ids
    from qualitune.vlm.tasks import AnswerFormat

    try:
        ids = first_token_ids(tokenizer, fmt)
        bins = fmt.first_token_bins()
    except QualituneError as exc:
        log.info("anchor: %s; the anchor uses the five level words instead", exc)
        fmt = AnswerFormat("level")
        ids, bins = first_token_ids(tokenizer, fmt), fmt.first_token_bins()
    centres = [float(fmt.to_norm((lo + hi) / 2)) for _, lo, hi in bins]
    return ids, centres, [text for text, _, _ in bins]


def training_features(
    model: torch.nn.Module, processor, paths: Sequence[str], *, n_frames: int, on_progress=None
) -> tuple[np.ndarray, list[str | None]]:
    """Each item's raw global feature vector (the mean over a video's frames; NaN where unreadable)."""
    from qualitune.baselines import pooled_features

    return pooled_features(
        model, processor, list(paths), n_frames=n_frames, global_vector=True, on_progress=on_progress
    )


def fit_anchor(
    model: torch.nn.Module,
    processor,
    tokenizer,
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    fmt,
    *,
    n_frames: int = 2,
    on_progress=None,
) -> dict:
    """Fit the model's anchor (see the module docstring) on `train_df`, its penalty on `val_df`;
    returns what was fitted: penalty, width, the probe's val SRCC, item counts, anchor tokens."""
    from qualitune.baselines import linear_probe

    anchor = unwrap_model(model).model.visual.merger.anchor
    if anchor is None:
        raise QualituneError("fit_anchor: the model has no anchor (add_anchor first)")
    ids, centres, texts = anchor_vocabulary(tokenizer, fmt)
    if len(ids) != anchor.weight.shape[0]:
        raise QualituneError(f"the anchor has {anchor.weight.shape[0]} tokens, the answer format {len(ids)}")
    df = pd.concat([train_df, val_df], ignore_index=True)
    feats, errors = training_features(
        model, processor, df["path"].astype(str).tolist(), n_frames=n_frames, on_progress=on_progress
    )
    is_train = np.arange(len(df)) < len(train_df)
    ok = np.isfinite(feats).all(axis=1)
    shift = feats[is_train & ok].mean(axis=0)
    gain = 1.0 / np.clip(feats[is_train & ok].std(axis=0), 1e-4, None)
    with torch.no_grad():  # exactly the transform `QualityAnchor.mixture` applies
        x = torch.from_numpy((np.nan_to_num(feats) - shift) * gain).float()
        z = F.layer_norm(x, x.shape[-1:]).double().numpy()
    z[~ok] = np.nan
    y = df["mos_norm"].to_numpy(dtype=np.float64)
    probe = linear_probe(z, y, is_train, ~is_train)
    val = ~is_train & ok & np.isfinite(y)
    sigma = max(float(np.sqrt(np.mean((probe.predictions[val] - y[val]) ** 2))), MIN_SIGMA)
    c = np.asarray(centres, dtype=np.float64)
    weight = (c[:, None] / sigma**2) * probe.coef[None, :]
    bias = (c * probe.intercept - c**2 / 2) / sigma**2
    embeds = unwrap_model(model).get_input_embeddings().weight[ids]
    with torch.no_grad():
        anchor.shift.copy_(torch.from_numpy(shift))
        anchor.gain.copy_(torch.from_numpy(gain))
        anchor.weight.copy_(torch.from_numpy(weight))
        anchor.bias.copy_(torch.from_numpy(bias))
        anchor.embeds.copy_(embeds.detach())
        anchor.centres.copy_(torch.from_numpy(c))
        anchor.sigma.fill_(sigma)
    return {
        "tokens": texts,
        "centres": [round(v, 4) for v in centres],
        "alpha": probe.alpha,
        "sigma": round(sigma, 4),
        "probe_val_srcc": round(probe.val_srcc, 4),
        "n_train": probe.n_train,
        "unreadable": int(sum(e is not None for e in errors)),
    }


__all__ = ["MIN_SIGMA", "QualityAnchor", "add_anchor", "anchor_vocabulary", "fit_anchor", "training_features"]
