"""Hyper-parameter search with Optuna over the train stage: :mod:`~.settings` (the `tune` params
section), :mod:`~.space` (a trial's point as a params overlay), :mod:`~.objective` (one trial: its overlay and the training run it scores) and
:mod:`~.study` (sampler, storage, the best trial's overlay file). The search itself, workers and
MLflow included, is :func:`qualitune.pipeline.tune.run_search`.
"""

from qualitune.search.objective import LostTrial, Objective, SurplusTrial, objective
from qualitune.search.settings import (
    DEFAULT_SPACE,
    SECTION,
    PrunerSettings,
    TuneSettings,
    parse_range_key,
    range_key,
    safe_url,
)
from qualitune.search.space import LORA_TUNINGS, effective_space, overlay_from_values, suggest
from qualitune.search.study import (
    LIVE,
    TRIAL_PREFIX,
    TrialSeededSampler,
    best_trial,
    load_study,
    make_storage,
    overlay_header,
    overlay_of,
    prune_trial_dirs,
    trial_counts,
    trial_dir,
    write_overlay,
)

__all__ = [
    "DEFAULT_SPACE",
    "LIVE",
    "LORA_TUNINGS",
    "SECTION",
    "TRIAL_PREFIX",
    "LostTrial",
    "Objective",
    "PrunerSettings",
    "SurplusTrial",
    "TrialSeededSampler",
    "TuneSettings",
    "best_trial",
    "effective_space",
    "load_study",
    "make_storage",
    "objective",
    "overlay_from_values",
    "overlay_header",
    "overlay_of",
    "parse_range_key",
    "prune_trial_dirs",
    "range_key",
    "safe_url",
    "suggest",
    "trial_counts",
    "trial_dir",
    "write_overlay",
]
