"""Real quality on real photos: train the compact backend on one dataset, evaluate on others.

    python benchmarks/real_data.py --train-root DIR --eval-root DIR [--eval-root DIR ...] \\
        --out results.json [--recipe benchmarks/configs/real_data.yaml] [--set train.epochs=1 ...]

Every root has the layout of `../shared/datasets/biq2021-train-subset`: `labels.csv` with
`image_name,mos` (any MOS scale, inferred from the values or given with `--scale`; other columns
ignored) and the photos under `images/`. In one run the script

1. ingests each root with qualitune's own `csv` reader (the train root split train/val by a seeded
   hash, `val_share` from the recipe; eval roots wholly `test`); a missing or unreadable photo is
   counted and reported, never silently dropped;
2. runs the machine annotators (cached by content hash under `--cache`) and fits the PMOD
   calibration on the train split only (`qualitune.pmod`);
3. runs the frozen EfficientNet-Lite0 encoder once over every photo: its pooled features give the
   **linear probe** baseline (ridge regression, alpha chosen on the train root's val split), and
   the same pass fills the compact model's feature cache, so training never re-runs the encoder;
4. trains the compact VLM with the recipe (optionally VITAL's PMOD pre-training first), through
   `qualitune.training.train`, the code path of the `train` stage;
5. scores every eval root (`expected` and `greedy`), and writes one JSON object keyed by each eval
   root's folder name: `{"srcc", "plcc", "krcc", "final", "n", ...}` for the VLM plus the
   `baselines` (`pmod_mean`, `linear_probe`), and the wall time of each step under `wall_seconds`.

`--scorer DIR` skips step 4 and evaluates a scorer saved by an earlier run (`--save-scorer`) on new
eval roots, with both baselines recomputed the same way (e.g. a cross-dataset check after the fact).

`--set key=value` overrides a recipe entry (dotted path, YAML value), which is how the ablations in
the README were run, e.g. `--set train.answer_format=decimal`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

HERE = Path(__file__).resolve().parent
DEFAULT_RECIPE = HERE / "configs" / "real_data.yaml"
STANDARD_SCALES = ((0.0, 1.0), (1.0, 5.0), (0.0, 5.0), (0.0, 10.0), (0.0, 100.0))
log = logging.getLogger("real_data")


def infer_scale(mos: np.ndarray) -> tuple[float, float]:
    """The smallest standard MOS scale that holds every value ([0,1], [1,5], [0,5], [0,10], [0,100])."""
    lo, hi = float(np.nanmin(mos)), float(np.nanmax(mos))
    for a, b in STANDARD_SCALES:
        if a <= lo and hi <= b:
            return a, b
    raise ValueError(f"MOS values span [{lo}, {hi}], outside every standard scale; pass --scale MIN MAX")


def load_root(root: Path, *, role: str, val_share: float, seed: int, scale=None) -> pd.DataFrame:
    """A root as a qualitune manifest (`path`, `mos_norm`, `split`, ...), via the `csv` reader."""
    from qualitune.ingest import ingest

    labels = root / "labels.csv"
    if not labels.is_file():
        raise ValueError(f"{root}: no labels.csv (expected columns image_name,mos and the photos in images/)")
    if scale is None:
        scale = infer_scale(pd.read_csv(labels)["mos"].to_numpy(dtype=float))
        log.info("%s: MOS scale inferred as %s", root.name, scale)
    ratios = {"train": 1.0 - val_share, "val": val_share} if role == "train" else {"test": 1.0}
    df = ingest(
        "csv",
        root,
        labels="labels.csv",
        name_col="image_name",
        mos_col="mos",
        scale=scale,
        split_ratios=ratios,
        seed=seed,
        dataset=root.name,
    )
    df["root"] = root.name
    return df


def check_readable(df: pd.DataFrame) -> pd.DataFrame:
    """Rows whose photo cannot be opened, with the reason (counted in the output, excluded from
    every metric of every method alike, so the comparison stays on the same items)."""
    from PIL import Image

    bad = []
    for path in df["path"].astype(str):
        try:
            with Image.open(path) as im:
                im.verify()
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file, reported below
            bad.append({"path": path, "error": f"{type(exc).__name__}: {exc}"})
    return pd.DataFrame(bad, columns=["path", "error"])


def metric_block(pred: np.ndarray, mos: np.ndarray) -> dict[str, Any]:
    from qualitune.metrics import correlations

    m = correlations(list(pred), list(mos))
    return {k: m[k] for k in ("srcc", "plcc", "krcc", "final", "n", "n_missing")}


def encoder_features(
    model, proc, paths: list[str], batch_size: int, feature_cache: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Global and grid features of the frozen encoder for each photo; fills the model's cache.

    With `feature_cache`, features are also kept on disk (keyed by the preprocessed pixels' hash,
    so another resize or encoder never hits a stale entry) for the next run."""
    from PIL import Image

    visual = _visual(model)
    store_path = Path(feature_cache) / "efficientnet-lite0-features.pt" if feature_cache else None
    if store_path is not None and store_path.is_file():
        visual.prime(torch.load(store_path, weights_only=True))
        log.info("encoder features: %d cached entries loaded from %s", len(visual.cached()), store_path)
    glob, grid = [], []
    for start in range(0, len(paths), batch_size):
        images = [Image.open(p).convert("RGB") for p in paths[start : start + batch_size]]
        pixels = torch.from_numpy(proc(images)["pixel_values"])
        with torch.no_grad():
            g, m = visual.features(pixels)
        glob.append(g.numpy())
        grid.append(m.numpy())
        if start % (20 * batch_size) == 0:
            log.info("encoder features: %d/%d", start + len(images), len(paths))
    if store_path is not None:
        store_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(visual.cached(), store_path.with_suffix(".tmp"))
        store_path.with_suffix(".tmp").replace(store_path)
    return np.concatenate(glob), np.concatenate(grid)


def linear_probe(
    feats: np.ndarray, y: np.ndarray, train: np.ndarray, val: np.ndarray
) -> tuple[np.ndarray, float]:
    """Ridge on the head's pooled features (the first 1280 global dimensions: the channel means),
    standardised on train; alpha picked by val SRCC from a log grid."""
    from scipy.stats import spearmanr
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    x = feats[:, :1280]
    scaler = StandardScaler().fit(x[train])
    xs = scaler.transform(x)
    best = (-np.inf, 1.0)
    for alpha in 10.0 ** np.arange(-1, 5):
        fit = Ridge(alpha=alpha).fit(xs[train], y[train])
        rho = spearmanr(fit.predict(xs[val]), y[val]).statistic
        best = max(best, (float(rho), float(alpha)))
    fit = Ridge(alpha=best[1]).fit(xs[train | val], y[train | val])
    return fit.predict(xs), best[1]


def set_path(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


def load_recipe(path: Path, overrides: list[str]) -> dict:
    recipe = yaml.safe_load(path.read_text())
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set needs key=value, got {item!r}")
        key, raw = item.split("=", 1)
        set_path(recipe, key.strip(), yaml.safe_load(raw))
    return recipe


def train_compact(model, tok, proc, df: pd.DataFrame, recipe: dict, timings: dict):
    """Optional VITAL PMOD pre-training, then the main recipe; returns (model, settings, history)."""
    from qualitune.training import TrainSettings, train

    history: dict[str, Any] = {}
    pre = recipe.get("pretrain") or {}
    if pre.get("enabled"):
        pre_settings = TrainSettings.from_params(pre["train"])
        t0 = time.perf_counter()
        res = train(model, tok, proc, df, pre_settings, checkpoint_dir=None, on_log=_progress(t0))
        timings["pretrain"] = time.perf_counter() - t0
        model = res.model
        history["pretrain"] = {"steps": res.optimizer_steps, "loss_last": _last_loss(res)}
    settings = TrainSettings.from_params(recipe["train"])
    t0 = time.perf_counter()
    res = train(model, tok, proc, df, settings, checkpoint_dir=None, on_log=_progress(t0))
    timings["train"] = time.perf_counter() - t0
    history["train"] = {
        "steps": res.optimizer_steps,
        "examples": res.n_examples,
        "loss_first": res.history[0]["loss"] if res.history else None,
        "loss_last": _last_loss(res),
        "parameters": res.parameter_counts,
    }
    return res.model, settings, history


def _progress(t0: float, every: int = 50):
    """An `on_log` hook: one log line every `every` optimizer steps (loss, elapsed seconds)."""

    def hook(step: int, logs: dict[str, float]) -> None:
        if step % every == 0:
            log.info(
                "step %d: loss %.4f, %.0f s",
                step,
                logs.get("train.loss", float("nan")),
                time.perf_counter() - t0,
            )

    return hook


def _last_loss(res) -> float | None:
    losses = [h["loss"] for h in res.history[-20:]]
    return float(np.mean(losses)) if losses else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    from qualitune.annotate import annotate_paths
    from qualitune.annotators import get_annotator
    from qualitune.evaluate import predict_frame
    from qualitune.pmod import DEFAULT_DESCRIPTORS, compute_pmod, describe
    from qualitune.scorer import Scorer, ScorerSpec, save_scorer
    from qualitune.vlm.model import load_model, make_processor

    recipe = load_recipe(Path(args.recipe), args.set or [])
    seed = int(recipe.get("seed", 0))
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    train_root = Path(args.train_root)
    frames = [
        load_root(train_root, role="train", val_share=float(recipe["val_share"]), seed=seed, scale=args.scale)
    ]
    eval_roots = [Path(r) for r in args.eval_root]
    names = [r.name for r in eval_roots]
    if len(set(names)) != len(names) or train_root.name in names:
        raise ValueError(f"eval roots need distinct folder names (and not the train root's): {names}")
    frames += [load_root(r, role="eval", val_share=0.0, seed=seed) for r in eval_roots]
    manifest = pd.concat(frames, ignore_index=True)
    limit = recipe.get("max_train_images")
    if limit:
        train_rows = manifest.index[manifest["split"] == "train"]
        keep = pd.Series(train_rows).sample(n=min(int(limit), len(train_rows)), random_state=seed)
        manifest = manifest.drop(index=train_rows.difference(keep)).reset_index(drop=True)
    bad = check_readable(manifest)
    bad_per_root = (
        manifest.loc[manifest["path"].astype(str).isin(bad["path"]), "root"].value_counts().to_dict()
    )
    if len(bad):
        log.warning("%d photos cannot be read; they are excluded and listed in the output", len(bad))
        manifest = manifest[~manifest["path"].isin(bad["path"])].reset_index(drop=True)
    timings["ingest"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    annotators = list(recipe["annotators"])
    ann = annotate_paths(manifest["path"].astype(str).tolist(), annotators, cache_dir=args.cache)
    directions = {n: bool(get_annotator(n).higher_is_better) for n in annotators}
    pm = compute_pmod(manifest, ann, directions).frame
    pm["description"] = describe(pm, DEFAULT_DESCRIPTORS, (pm["split"] == "train").to_numpy())
    timings["annotate_pmod"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    mcfg = recipe["model"]
    loaded = Scorer.load(args.scorer) if args.scorer else None
    if loaded is not None:
        model, tok = loaded.model, loaded.tokenizer
    else:
        model, tok = load_model(mcfg["name_or_path"], seed=int(mcfg.get("seed", 0)))
    proc = make_processor(model, 0, 0)
    timings["load_model"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    feats, grid_feats = encoder_features(
        model, proc, pm["path"].astype(str).tolist(), args.batch_size, args.feature_cache
    )
    timings["encoder_features"] = time.perf_counter() - t0
    y = pm["mos_norm"].to_numpy(dtype=float)
    is_train, is_val = (pm["split"] == "train").to_numpy(), (pm["split"] == "val").to_numpy()
    if loaded is None:  # a loaded scorer's projector keeps the standardisation it was trained with
        _visual(model).merger.standardise(
            torch.from_numpy(feats[is_train]), torch.from_numpy(grid_feats[is_train])
        )
    t0 = time.perf_counter()
    probe, alpha = linear_probe(feats, y, is_train, is_val)
    timings["linear_probe"] = time.perf_counter() - t0

    if loaded is None:
        df_train = pm[is_train].reset_index(drop=True)
        model.train()
        model, settings, history = train_compact(model, tok, proc, df_train, recipe, timings)
        model.eval()
        spec = ScorerSpec(
            base_model=str(mcfg["name_or_path"]),
            base_seed=int(mcfg.get("seed", 0)),
            answer_format=settings.fmt.to_dict(),
            two_stage=settings.method == "two_stage",
            recipe={"method": settings.method, "tuning": settings.tuning, "loss_on": settings.loss_on},
        )
        epochs: float | None = settings.epochs
    else:
        spec, history, epochs = loaded.spec, {"scorer": str(args.scorer), "trained": False}, None
    scorer = Scorer(model, tok, spec)

    results: dict[str, Any] = {}
    t0 = time.perf_counter()
    groups = [("val:" + train_root.name, pm[is_val])] if recipe["eval"].get("val", True) else []
    groups += [(n, pm[pm["root"] == n]) for n in names]
    for key, part in groups:
        entry: dict[str, Any] = {}
        for mode in recipe["eval"]["modes"]:
            pred = predict_frame(scorer, part, mode=mode, batch_size=args.batch_size)
            block = metric_block(
                pred["score_1_5"].to_numpy(dtype=float), part["mos_norm"].to_numpy(dtype=float)
            )
            block["parse_failures"] = int(pred.attrs["summary"].get("parse_failures", 0))
            if mode == recipe["eval"]["modes"][0]:
                entry.update(block)
                entry["mode"] = mode
            else:
                entry[mode] = block
        rows = part.index.to_numpy()
        entry["baselines"] = {
            "pmod_mean": metric_block(part["pmod_mean"].to_numpy(dtype=float), y[rows]),
            "linear_probe": metric_block(probe[rows], y[rows]),
        }
        entry["unreadable"] = int(bad_per_root.get(key, 0))
        results[key] = entry
    timings["evaluate"] = time.perf_counter() - t0

    inst_cfg = recipe.get("instability") or {}
    if inst_cfg.get("n", 0) > 0:
        from qualitune.analysis import instability

        t0 = time.perf_counter()
        heldout = pm[pm["root"] == names[0]] if names else pm[is_val]
        paths = heldout["path"].astype(str).tolist()[: int(inst_cfg["n"])]
        results["instability"] = instability(
            scorer,
            paths,
            repeats=int(inst_cfg.get("repeats", 4)),
            temperature=float(inst_cfg.get("temperature", 0.7)),
            batch_size=args.batch_size,
        )
        timings["instability"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    sample = pm[pm["root"] == names[0]] if names else pm[is_val]
    sample_paths = sample["path"].astype(str).tolist()[: args.speed_items]
    scorer_fresh = Scorer(model, tok, spec)
    _visual(model).clear_cache()  # time scoring as a user sees it: the encoder runs on every photo
    t1 = time.perf_counter()
    scorer_fresh.score_paths(sample_paths, mode="expected", batch_size=args.batch_size)
    speed = len(sample_paths) / (time.perf_counter() - t1)
    timings["speed_check"] = time.perf_counter() - t0

    if args.save_scorer and loaded is None:
        save_scorer(model, spec, args.save_scorer)
    timings["total"] = time.perf_counter() - t_all
    results["wall_seconds"] = {k: round(v, 1) for k, v in timings.items()}
    results["scoring_images_per_s"] = round(speed, 2)
    results["run"] = {
        "train_root": str(train_root),
        "n_train": int(is_train.sum()),
        "n_val": int(is_val.sum()),
        "epochs": epochs,
        "probe_alpha": alpha,
        "unreadable": bad.to_dict("records"),
        "history": history,
        "recipe": recipe,
        "threads": args.threads,
        "torch": torch.__version__,
    }
    return results


def _visual(model):
    from qualitune.vlm.inputs import _unwrap

    return _unwrap(model).model.visual


def _fmt(x: Any) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def print_table(results: dict[str, Any]) -> None:
    print(f"{'set':<34} {'method':<14} {'SRCC':>6} {'PLCC':>6} {'KRCC':>6} {'final':>6} {'n':>5}")
    for key, entry in results.items():
        if not isinstance(entry, dict) or "srcc" not in entry:
            continue
        rows = [("vlm " + entry.get("mode", ""), entry)]
        rows += [("vlm " + m, entry[m]) for m in ("greedy", "expected") if m in entry]
        rows += [(name, b) for name, b in entry["baselines"].items()]
        for name, b in rows:
            print(
                f"{key:<34} {name:<14} {_fmt(b['srcc']):>6} {_fmt(b['plcc']):>6} {_fmt(b['krcc']):>6} "
                f"{_fmt(b['final']):>6} {b['n']:>5}"
            )
    print("wall seconds:", results["wall_seconds"])
    print("scoring images/s (expected, batch, fresh encoder):", results["scoring_images_per_s"])
    if "instability" in results:
        print("instability:", results["instability"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-root", required=True)
    p.add_argument("--eval-root", action="append", default=[], help="repeatable")
    p.add_argument("--out", required=True, help="results JSON")
    p.add_argument("--recipe", default=str(DEFAULT_RECIPE))
    p.add_argument("--set", action="append", help="recipe override key=value (dotted, YAML value)")
    p.add_argument("--scale", nargs=2, type=float, help="the train root's MOS range (default: inferred)")
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "qualitune" / "annotations"))
    p.add_argument(
        "--feature-cache",
        default=str(Path.home() / ".cache" / "qualitune" / "real_data"),
        help="folder for the frozen encoder's features across runs ('' to disable)",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--speed-items", type=int, default=96, help="photos timed for the scoring speed")
    p.add_argument("--save-scorer", help="also write the trained scorer folder here")
    p.add_argument(
        "--scorer",
        help="evaluate this saved scorer (folder or models:/...) instead of training one; the train "
        "root still gives the PMOD calibration and the linear probe (same seed and subset as the recipe)",
    )
    args = p.parse_args(argv)
    if args.scorer and args.save_scorer:
        p.error("--scorer evaluates an existing scorer; --save-scorer has nothing new to save")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        results = run(args)
    except ValueError as exc:
        print(f"real_data: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
    print_table(results)
    print(f"wrote {out}")
    return 0


def _json_default(o: Any):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    return str(o)


if __name__ == "__main__":
    sys.exit(main())
