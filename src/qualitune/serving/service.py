"""One loaded scorer behind a lock: loading, the warm-up that makes ``/ping`` mean ready, scoring."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qualitune.scorer import Scorer

log = logging.getLogger(__name__)


@dataclass
class ScoringService:
    """One loaded scorer behind a lock. ``ready`` turns true only after a warm-up image has been scored,
    so ``/ping`` means "a request now gets scores", not merely "the process is up"."""

    ref: str
    device: str | None = None
    dtype: str | None = None  # None: the scorer's own (fp32 for the compact backend)
    scorer: Scorer | None = None
    source: str | None = None  # the scorer folder the reference resolved to
    error: str | None = None  # why loading failed (the server then stops)
    ready: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_scorer(
        cls, scorer: Scorer, ref: str = "<in-process>", *, warm_up: bool = True
    ) -> ScoringService:
        """A service around an already loaded scorer (tests, notebooks)."""
        service = cls(ref=ref, scorer=scorer)
        if warm_up:
            service.warm_up()
        service.ready = True
        return service

    def resolve(self) -> Path:
        """The local scorer folder of ``ref`` (downloads ``models:/`` and ``runs:/`` references): done
        before the port opens, so a wrong reference fails the command at once with the reason."""
        from qualitune.scorer import resolve_model_ref

        self.source = str(resolve_model_ref(self.ref))
        return Path(self.source)

    def load(self) -> None:
        """Load the weights (safetensors, ``trust_remote_code`` off) and score a warm-up image."""
        from qualitune.scorer import Scorer

        started = time.perf_counter()
        folder = Path(self.source) if self.source else self.resolve()
        self.scorer = Scorer.load(folder, device=self.device, dtype=self.dtype)
        self.warm_up()
        self.ready = True
        log.info(
            "model %s (%s) loaded and warmed up in %.1f s", self.ref, folder, time.perf_counter() - started
        )

    def warm_up(self) -> None:
        """Score one small grey image: the first forward pass allocates and compiles what it needs, and a
        model that cannot score fails here instead of on a client's request."""
        from PIL import Image

        if self.scorer is None:
            raise RuntimeError("no scorer loaded")
        img = Image.new("RGB", (64, 64), (128, 128, 128))
        with self._lock:
            self.scorer.score_items([img], ["image"], mode="expected")

    @property
    def n_frames(self) -> int:
        assert self.scorer is not None
        return int(self.scorer.spec.n_frames)

    def score(
        self, decoded: Sequence[tuple[int, Any, str]], n_rows: int, *, mode: str, batch_size: int
    ) -> list[dict[str, Any]]:
        """One prediction per row (the pyfunc's fields: score, score_1_5, levels, mode, media, error, and
        answer or invalid_mass), scored in batches of ``batch_size``, one request at a time."""
        from qualitune.vlm.answers import ParseReport

        if self.scorer is None:
            raise RuntimeError("no scorer loaded")
        results: list[dict[str, Any]] = [
            {"score": None, "score_1_5": None, "levels": None, "mode": mode, "media": None, "error": None}
            for _ in range(n_rows)
        ]
        for i, _, kind in decoded:
            results[i]["media"] = kind
        with self._lock:
            self.scorer.score_into(
                results, list(decoded), mode=mode, batch_size=batch_size, report=ParseReport()
            )
        return results
