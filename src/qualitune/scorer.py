"""Scoring files with a trained scorer: decoding, batching, the two inference modes, the results.

:class:`Scorer` wraps a model loaded from a scorer folder (format: :mod:`qualitune.scorer_folder`)
or a registry reference (:func:`resolve_model_ref`, through :mod:`qualitune.store`) and scores paths
or decoded media in `expected` mode (the probability-weighted answer, no generate loop) or `greedy`
mode (the generated answer, parsed), reporting per item what could not be read or parsed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qualitune.errors import QualituneError
from qualitune.progress import Progress
from qualitune.scorer_folder import (  # re-exported: the folder format is part of the scorer's API
    ADAPTER_DIR,
    SPEC_FILE,
    WEIGHTS_FILE,
    ScorerSpec,
    load_scored_model,
    save_scorer,
)
from qualitune.vlm.answers import ParseReport
from qualitune.vlm.inputs import encode_batch
from qualitune.vlm.scoring import (
    SCORING_MODES,
    ItemScore,
    check_max_invalid_mass,
    format_scores,
    generate_texts,
)
from qualitune.vlm.tasks import DESCRIBE_QUESTION
from qualitune.vlm.unwrap import unwrap_model

log = logging.getLogger(__name__)


def resolve_model_ref(ref: str | Path) -> Path:
    """A scorer folder for `ref`: a local folder, `models:/name@alias` / `models:/name/version` from
    the MLflow registry, or `runs:/RUN_ID/model` (a logged model), downloaded into qualitune's cache."""
    text = str(ref)
    if text.startswith("models:/"):
        from qualitune.store import download_scorer

        return download_scorer(text)
    if text.startswith("runs:/"):
        from qualitune.store import download_run_scorer

        return download_run_scorer(text)
    path = Path(text)
    if not path.exists():
        raise QualituneError(
            f"model {text!r} not found: give a scorer folder (e.g. models/scorer), models:/name@alias "
            "or runs:/RUN_ID/model"
        )
    return path


@dataclass
class ScoreRun:
    """Results for a list of paths: one dict per path, in order, plus the parse report and errors."""

    results: list[dict[str, Any]]
    report: ParseReport
    n_media_errors: int = 0

    @property
    def n_failed(self) -> int:
        return self.n_media_errors + self.report.n_failed

    def summary(self) -> dict[str, Any]:
        return {
            "items": len(self.results),
            "scored": sum(r["score"] is not None for r in self.results),
            "media_errors": self.n_media_errors,
            **self.report.summary(),
        }


class Scorer:
    """A loaded scorer: `score_items` for PIL inputs, `score_paths` for files (images and videos)."""

    def __init__(self, model: torch.nn.Module, tokenizer, spec: ScorerSpec):
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.fmt = spec.fmt
        from qualitune.vlm.model import make_processor

        self.image_processor = make_processor(model, spec.min_pixels, spec.max_pixels)

    @classmethod
    def load(
        cls,
        ref: str | Path,
        *,
        device: str | None = None,
        dtype: str | None = None,
        feature_store: str | Path | None = None,
        max_invalid_mass: float | None = None,
    ) -> Scorer:
        """Load for inference: LoRA merged into the weights, cast to `dtype` when given
        (`float32`, `bfloat16`, ...; default: the scorer's own, `auto`). `feature_store`: a folder
        of the compact encoder's features on disk (`qualitune.vlm.feature_store`), for the
        pipeline's stages, which score the same photos again and again; off by default (a server
        sees new photos). `max_invalid_mass` overrides the scorer's own (`ScorerSpec`)."""
        from qualitune.vlm.feature_store import attach_feature_store

        model, tok, spec = load_scored_model(
            resolve_model_ref(ref), device=device, dtype=dtype, merge_adapters=True
        )
        visual = getattr(getattr(unwrap_model(model), "model", None), "visual", None)
        if hasattr(visual, "limit_cache"):  # the compact backend's feature cache: bounded for serving
            visual.limit_cache(int(os.environ.get("QUALITUNE_SCORER_FEATURE_CACHE", "1024")))
        attach_feature_store(model, feature_store)
        if max_invalid_mass is not None:
            spec.max_invalid_mass = check_max_invalid_mass(max_invalid_mass)
        return cls(model, tok, spec)

    def _encode(self, items: Sequence[Any], prompts: Sequence[str], prefix: str) -> dict[str, torch.Tensor]:
        return encode_batch(
            list(items),
            list(prompts),
            tokenizer=self.tokenizer,
            image_processor=self.image_processor,
            padding_side="left",
            video_mode=self.spec.video_mode,
            assistant_prefix=prefix,
        )

    def describe(self, items: Sequence[Any], kinds: Sequence[str]) -> list[str]:
        """Stage one of two-stage inference: the model's own description of each item."""
        batch = self._encode(items, [DESCRIBE_QUESTION.format(media=k) for k in kinds], "")
        texts = generate_texts(
            self.model, self.tokenizer, batch, max_new_tokens=self.spec.describe_max_new_tokens
        )
        return [t.strip() for t in texts]

    def score_items(
        self,
        items: Sequence[Any],
        kinds: Sequence[str] | None = None,
        *,
        mode: str = "expected",
        report: ParseReport | None = None,
        index_offset: int = 0,
        do_sample: bool = False,
        temperature: float | None = None,
        prompts: Sequence[str] | None = None,
    ) -> tuple[list[ItemScore], list[str | None]]:
        """Score one batch of PIL images / frame lists; returns scores and (two-stage) descriptions."""
        if mode not in SCORING_MODES:
            raise QualituneError(f"mode must be one of {SCORING_MODES}, got {mode!r}")
        kinds = list(kinds) if kinds is not None else ["image"] * len(items)
        descriptions: list[str | None] = [None] * len(items)
        if self.spec.two_stage:
            descriptions = list(self.describe(items, kinds))
            questions = [
                self.fmt.question_from_description(d, k) for d, k in zip(descriptions, kinds, strict=True)
            ]
            batch = self._encode([None] * len(items), questions, self.fmt.prefix)
        else:
            questions = list(prompts) if prompts is not None else [self.fmt.question(k) for k in kinds]
            batch = self._encode(items, questions, self.fmt.prefix)
        scores = format_scores(
            self.model,
            self.tokenizer,
            batch,
            self.fmt,
            mode,
            report=report,
            index_offset=index_offset,
            do_sample=do_sample,
            temperature=temperature,
            max_invalid_mass=self.spec.max_invalid_mass,
        )
        return scores, descriptions

    def score_paths(
        self,
        paths: Sequence[str | Path],
        *,
        mode: str = "expected",
        batch_size: int = 8,
        on_progress: Callable[[int, int], Any] | None = None,
    ) -> ScoreRun:
        """Score files; a file that cannot be read gets an `error` and never stops the batch.

        Streams: one background thread decodes (and, where the image processor can, resizes) the
        next `batch_size` files while the model scores the current batch, so decoding overlaps the
        model (PIL and PyAV release the GIL) and memory holds about two batches of pixels however
        many files there are. Batches are the readable files in order, as if the unreadable ones
        were not there, so a bad file never changes another file's score. `on_progress(done, total)`
        replaces the progress output of this call (a caller scoring in chunks keeps one for all).
        """
        if batch_size < 1:
            raise QualituneError(f"batch size must be >= 1, got {batch_size}")
        report = ParseReport()
        results: list[dict[str, Any]] = [{"path": str(p)} for p in paths]
        scored: list[int] = []  # result index of each scored item, in the report's index order
        waiting: list[tuple[int, Any, str]] = []
        n_errors = 0

        if on_progress is None:
            on_progress = Progress(len(paths), f"scoring ({mode})", "files").report

        def flush(items: list[tuple[int, Any, str]]) -> None:
            self.score_into(
                results, items, mode=mode, batch_size=len(items), report=report, index_offset=len(scored)
            )
            scored.extend(i for i, _, _ in items)
            on_progress(len(scored) + n_errors, len(paths))

        chunks = iter(range(s, min(s + batch_size, len(paths))) for s in range(0, len(paths), batch_size))
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="qualitune-decode") as pool:
            first = next(chunks, None)
            ahead = pool.submit(self._decode, paths, first) if first is not None else None
            while ahead is not None:
                decoded = ahead.result()
                nxt = next(chunks, None)
                ahead = pool.submit(self._decode, paths, nxt) if nxt is not None else None
                for i, item, kind, error in decoded:
                    if error is None:
                        waiting.append((i, item, kind))
                    else:
                        results[i].update(score=None, error=error)
                        n_errors += 1
                while len(waiting) >= batch_size:
                    flush(waiting[:batch_size])
                    waiting = waiting[batch_size:]
            if waiting:
                flush(waiting)
        # report indices refer to scored items; map them back to paths for the failure list
        for k, (idx, raw) in enumerate(report.failures):
            report.failures[k] = (scored[idx], raw)
        return ScoreRun(results, report, n_errors)

    def _decode(self, paths: Sequence[str | Path], indices: range) -> list[tuple[int, Any, str, str | None]]:
        """`(index, media, kind, error)` per file: one image or a frame list, or the reason it
        could not be read. Runs in the decode thread."""
        from qualitune.media import MediaError, load_media, media_kind

        prepare = getattr(self.image_processor, "prepare", None)
        out: list[tuple[int, Any, str, str | None]] = []
        for i in indices:
            try:
                kind = media_kind(paths[i])
                frames = load_media(paths[i], n_frames=self.spec.n_frames)
                if prepare is not None:
                    frames = [prepare(f) for f in frames]
                out.append((i, frames[0] if kind == "image" else list(frames), kind, None))
            except (MediaError, OSError, ValueError) as exc:
                out.append((i, None, "", str(exc)))
        return out

    def score_into(
        self,
        results: list[dict[str, Any]],
        ok: Sequence[tuple[int, Any, str]],
        *,
        mode: str,
        batch_size: int,
        report: ParseReport,
        index_offset: int = 0,
    ) -> None:
        """Score decoded items `(result index, media, kind)` in batches, updating `results` in place
        (shared by file scoring and the pyfunc's bytes scoring). Parse failures go to `report` under
        the item's position in `ok` plus `index_offset`."""
        for start in range(0, len(ok), batch_size):
            chunk = ok[start : start + batch_size]
            scores, descriptions = self.score_items(
                [c[1] for c in chunk],
                [c[2] for c in chunk],
                mode=mode,
                report=report,
                index_offset=index_offset + start,
            )
            for (i, _, _), sc, desc in zip(chunk, scores, descriptions, strict=True):
                results[i].update(self._result(sc, desc, mode))

    def _result(self, sc: ItemScore, description: str | None, mode: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "score": sc.score,
            "score_1_5": None if sc.score is None else float(self.fmt.to_norm(sc.score)),
            "levels": sc.level_probs,
            "mode": mode,
        }
        if sc.answer is not None:
            out["answer"] = sc.answer
        if sc.invalid_mass is not None:
            out["invalid_mass"] = sc.invalid_mass
        if description is not None:
            out["description"] = description
        if sc.score is None:
            out["error"] = (
                "answer did not parse" if mode == "greedy" else "no probability on any valid answer"
            )
        return out


__all__ = [
    "ADAPTER_DIR",
    "SPEC_FILE",
    "WEIGHTS_FILE",
    "ScoreRun",
    "Scorer",
    "ScorerSpec",
    "load_scored_model",
    "resolve_model_ref",
    "save_scorer",
]
