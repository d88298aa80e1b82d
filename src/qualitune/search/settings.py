"""The `tune` params section, validated: storage, study, trial budget, pruner and search space.

A key of `tune.space` left out (or null) is not searched: its params value stays. The storage URL's
password never reaches a log, MLflow or the overlay's header (`safe_url`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from qualitune.errors import QualituneError

SECTION = "tune"
DEFAULT_SPACE: dict[str, Any] = {
    "lr": [1.0e-4, 1.0e-2],
    "epochs": [1, 4],
    "lora_r": [8, 16, 32],
    "label_range": [[1, 5], [10, 50], [0, 100]],
}
_SPACE_KEYS = ("lr", "epochs", "lora_r", "label_range")
_KNOWN_KEYS = (
    "storage",
    "study_name",
    "n_trials",
    "timeout_s",
    "seed",
    "direction",
    "out",
    "trials_dir",
    "pruner",
    "space",
    "heartbeat_s",
    "grace_s",
    "max_failures",
)


@dataclass(frozen=True)
class PrunerSettings:
    """Optuna's MedianPruner; ``tune.pruner: null`` switches pruning off."""

    enabled: bool = True
    n_startup_trials: int = 5
    n_warmup_steps: int = 1


@dataclass(frozen=True)
class TuneSettings:
    """The ``tune`` params section, validated. Build it with :meth:`from_params`."""

    storage: str = "sqlite:///optuna.db"
    study_name: str = "qualitune"
    n_trials: int = 0
    timeout_s: float | None = None
    seed: int | None = 0
    direction: str = "maximize"
    out: str = "tuned_params.yaml"
    trials_dir: str = "models/trials"
    pruner: PrunerSettings = field(default_factory=PrunerSettings)
    space: dict[str, Any] = field(default_factory=lambda: _normalise_space(DEFAULT_SPACE))
    heartbeat_s: int = 60
    grace_s: int = 180
    max_failures: int = 10

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> TuneSettings:
        from qualitune.config import checked_section

        raw = checked_section(params, SECTION, _KNOWN_KEYS)
        kw: dict[str, Any] = {}
        for key in ("storage", "study_name", "out", "trials_dir"):
            if key in raw:
                value = raw[key]
                if not isinstance(value, str) or not value.strip():
                    raise QualituneError(f"{SECTION}.{key} must be a non-empty string, got {value!r}")
                kw[key] = value.strip()
        for key, minimum in (("n_trials", 0), ("heartbeat_s", 1), ("grace_s", 1), ("max_failures", 1)):
            if key in raw:
                kw[key] = _int(raw[key], f"{SECTION}.{key}", minimum)
        if raw.get("timeout_s") is not None:
            timeout = raw["timeout_s"]
            if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
                raise QualituneError(
                    f"{SECTION}.timeout_s must be seconds > 0 (or null for no limit), got {timeout!r}"
                )
            kw["timeout_s"] = float(timeout)
        if "seed" in raw:
            kw["seed"] = None if raw["seed"] is None else _int(raw["seed"], f"{SECTION}.seed", 0)
        if "direction" in raw:
            if raw["direction"] not in ("maximize", "minimize"):
                raise QualituneError(
                    f"{SECTION}.direction must be maximize or minimize, got {raw['direction']!r}"
                )
            kw["direction"] = raw["direction"]
        if "pruner" in raw:
            kw["pruner"] = _pruner(raw["pruner"])
        if "space" in raw:
            kw["space"] = _normalise_space(raw["space"])
        settings = cls(**kw)
        if settings.grace_s <= settings.heartbeat_s:
            raise QualituneError(f"{SECTION}.grace_s must be larger than {SECTION}.heartbeat_s")
        return settings

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["storage"] = safe_url(self.storage)
        return d


def _int(value: Any, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise QualituneError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _pruner(raw: Any) -> PrunerSettings:
    if raw is None or raw is False:
        return PrunerSettings(enabled=False)
    if not isinstance(raw, Mapping):
        raise QualituneError(f"{SECTION}.pruner must be a mapping (n_startup_trials, n_warmup_steps) or null")
    unknown = sorted(set(raw) - {"n_startup_trials", "n_warmup_steps"})
    if unknown:
        raise QualituneError(f"unknown key(s) in {SECTION}.pruner: {unknown}")
    return PrunerSettings(
        enabled=True,
        n_startup_trials=_int(raw.get("n_startup_trials", 5), f"{SECTION}.pruner.n_startup_trials", 0),
        n_warmup_steps=_int(raw.get("n_warmup_steps", 1), f"{SECTION}.pruner.n_warmup_steps", 0),
    )


def range_key(lo: int, hi: int) -> str:
    """A label range as the primitive Optuna stores for a categorical choice: ``[10, 50]`` -> ``"10-50"``."""
    return f"{lo}-{hi}"


def parse_range_key(key: str) -> list[int]:
    lo, _, hi = str(key).partition("-")
    return [int(lo), int(hi)]


def _normalise_space(raw: Any) -> dict[str, Any]:
    """Validate ``tune.space``; a key left out (or null) is not searched, its params value stays."""
    if not isinstance(raw, Mapping):
        raise QualituneError(f"{SECTION}.space must be a mapping with keys from {list(_SPACE_KEYS)}")
    unknown = sorted(set(raw) - set(_SPACE_KEYS))
    if unknown:
        raise QualituneError(f"unknown key(s) in {SECTION}.space: {unknown}; known: {list(_SPACE_KEYS)}")
    space: dict[str, Any] = {}
    if raw.get("lr") is not None:
        lo, hi = _pair(raw["lr"], "lr", float)  # float(): YAML 1.1 reads `3e-4` (no dot) as a string
        if not 0 < lo <= hi:
            raise QualituneError(
                f"{SECTION}.space.lr must be [low, high] with 0 < low <= high, got {raw['lr']!r}"
            )
        space["lr"] = [lo, hi]
    if raw.get("epochs") is not None:
        lo, hi = _pair(raw["epochs"], "epochs", int)
        if not 0 <= lo <= hi:
            raise QualituneError(f"{SECTION}.space.epochs must be [low, high] with 0 <= low <= high")
        space["epochs"] = [lo, hi]
    if raw.get("lora_r") is not None:
        choices = raw["lora_r"]
        if not isinstance(choices, list | tuple) or not choices:
            raise QualituneError(f"{SECTION}.space.lora_r must be a non-empty list of ranks, got {choices!r}")
        ranks = [_int(r, f"{SECTION}.space.lora_r[]", 1) for r in choices]
        if len(set(ranks)) != len(ranks):
            raise QualituneError(f"{SECTION}.space.lora_r has duplicates: {ranks}")
        space["lora_r"] = ranks
    if raw.get("label_range") is not None:
        choices = raw["label_range"]
        if not isinstance(choices, list | tuple) or not choices:
            raise QualituneError(f"{SECTION}.space.label_range must be a non-empty list of [lo, hi] pairs")
        ranges = []
        for c in choices:
            lo, hi = _pair(c, "label_range[]", int)
            if not 0 <= lo < hi:
                raise QualituneError(f"{SECTION}.space.label_range: {c!r} needs 0 <= lo < hi")
            ranges.append([lo, hi])
        if len({tuple(r) for r in ranges}) != len(ranges):
            raise QualituneError(f"{SECTION}.space.label_range has duplicates: {ranges}")
        space["label_range"] = ranges
    return space


def _pair(value: Any, key: str, cast: Callable[[Any], Any]) -> tuple[Any, Any]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise QualituneError(f"{SECTION}.space.{key} must be a [low, high] pair, got {value!r}")
    try:
        lo, hi = cast(value[0]), cast(value[1])
    except (TypeError, ValueError) as e:
        raise QualituneError(f"{SECTION}.space.{key} must hold numbers, got {value!r}") from e
    if cast is int and (float(value[0]) != lo or float(value[1]) != hi):
        raise QualituneError(f"{SECTION}.space.{key} must hold integers, got {value!r}")
    return lo, hi


def safe_url(url: str) -> str:
    """The storage URL without its password (for logs, MLflow and the overlay's header)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a SQLAlchemy URL; the storage will say so
        return url
