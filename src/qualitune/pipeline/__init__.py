"""The pipeline's steps as library functions: what the DVC stages, the CLI, the Prefect flows, the Optuna
search and the benchmarks all call, so that each step exists once.

- :func:`qualitune.pipeline.train.train_scorer`: params -> a trained, saved, validated scorer;
- :func:`qualitune.pipeline.evaluate.evaluate_scorer`: params -> metrics of a scorer per split and mode,
  beside the probe and PMOD baselines;
- :func:`qualitune.pipeline.register.register_scorer`: params -> a registered version and the gate's decision.

The stage modules (:mod:`qualitune.stages`) are shells over these: read params, call, print one line.
"""
