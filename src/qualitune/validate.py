"""The validation gate: a Great Expectations suite over the manifest, plus a quarantine.

Why GX and not a handful of pandas checks: users already read GX reports, and the suite is the
single, inspectable definition of "a row fit for training". Checks that need the files themselves
(does it exist, does it decode, is the same picture in two splits?) are computed first into derived
columns (`_file_error`, `_content_dup`…) and then asserted by GX like any other column, so one
mechanism decides and one report explains.

Rows that fail any expectation go to the quarantine file with a readable `reason`; the rest go on.
Nothing is dropped without a trace, and the gate fails (non-zero exit) when the failing share
exceeds `max_fail_share`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from qualitune.errors import QualituneError
from qualitune.jsonable import json_default
from qualitune.manifest import (
    MEDIA_KINDS,
    NORM_MAX,
    NORM_MIN,
    REQUIRED,
    SPLITS,
    read_manifest,
    write_manifest,
)

log = logging.getLogger(__name__)

NUMERIC = ("mos", "mos_std", "mos_norm", "scale_min", "scale_max")
TEXT = ("item_id", "path", "media", "split", "dataset")


def check_file(path: str, media: str, decode: bool = True) -> tuple[str, str]:
    """Check one item. Returns (error message or "", content hash or "").

    `decode` (the default): decode it fully; images hash their decoded pixels (so the same picture
    saved as PNG and BMP still collides), videos hash their bytes after checking that at least one
    frame decodes. `decode=False` (`check_media: false`): only that it is a non-empty regular file
    whose header reads as its media (`qualitune.media.probe_media`), no hash, so the cross-split
    duplicate check needs the decode. Skipping the decode is a speed choice, not a licence to train
    on a missing file or a text file named `.jpg`.
    """
    from qualitune.media import MediaError, load_image, probe_media, sample_frames

    if media not in MEDIA_KINDS:
        return f"unknown media kind {media!r} (expected one of {MEDIA_KINDS})", ""
    try:
        if not decode:
            probe_media(path, media)
            return "", ""
        if media == "image":
            img = load_image(path)
            digest = hashlib.sha256(f"{img.size}".encode() + img.tobytes()).hexdigest()
        else:
            sample_frames(path, 1)
            digest = _file_hash(path)
    except MediaError as exc:
        return str(exc), ""
    except Exception as exc:  # a decoder bug must not stop the batch; it is reported per row
        return f"{path}: unexpected error while reading ({type(exc).__name__}: {exc})", ""
    return "", digest


def _file_hash(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_many(args: list[tuple[str, str, bool]]) -> list[tuple[str, str]]:
    return [check_file(p, m, d) for p, m, d in args]


def check_files(
    paths: list[str], media: list[str], workers: int | None = None, *, decode: bool = True
) -> tuple[list[str], list[str]]:
    """`check_file` over many items, in parallel chunks across all cores."""
    items = [(p, m, decode) for p, m in zip(paths, media, strict=True)]
    workers = workers or os.cpu_count() or 1
    if workers <= 1 or len(items) < 64:
        results = _check_many(items)
    else:
        n_chunks = workers * 8
        chunks = [items[i::n_chunks] for i in range(n_chunks)]
        results_by_chunk: list[list[tuple[str, str]]]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results_by_chunk = list(pool.map(_check_many, chunks))
        results = [("", "")] * len(items)
        for i, chunk_res in enumerate(results_by_chunk):
            for j, res in enumerate(chunk_res):
                results[i + j * n_chunks] = res
    errors = [e for e, _ in results]
    hashes = [h for _, h in results]
    return errors, hashes


def derive_columns(df: pd.DataFrame, *, check_media: bool = True, workers: int | None = None) -> pd.DataFrame:
    """Add the derived columns the GX suite asserts on (all prefixed with `_`)."""
    out = df.copy()
    for col in NUMERIC:
        if col in out.columns:
            out[col] = pd.to_numeric(out[col], errors="coerce")
    span = (out["scale_max"] - out["scale_min"]).where(lambda s: s > 0)
    out["_mos_rel"] = (out["mos"] - out["scale_min"]) / span  # in [0, 1] when inside the source scale
    # Duplicated rows: the first occurrence stays, later ones are quarantined (same id or same file).
    out["_first_id"] = ~out["item_id"].duplicated(keep="first")
    out["_first_path"] = ~out["path"].duplicated(keep="first")
    # without check_media, existence and the header are still checked: only the decode is skipped.
    # A row ingest marked (`path_error`: the file lies outside the dataset root) is never opened.
    refused = (
        out["path_error"].fillna("").astype(str).tolist() if "path_error" in out.columns else [""] * len(out)
    )
    todo = [i for i, e in enumerate(refused) if not e]
    checked, hashed = check_files(
        out["path"].astype(str).iloc[todo].tolist(),
        out["media"].astype(str).iloc[todo].tolist(),
        workers,
        decode=check_media,
    )
    errors, hashes = list(refused), [""] * len(out)
    for i, e, h in zip(todo, checked, hashed, strict=True):
        errors[i], hashes[i] = e, h
    out["_file_error"] = errors
    out["_content_hash"] = hashes
    # Identical content in two splits leaks test data into training: flag every row whose content
    # also occurs in another split (rows that merely repeat within one split are caught above).
    has_hash = out["_content_hash"] != ""
    splits_per_hash = out[has_hash].groupby("_content_hash")["split"].nunique()
    leaky = set(splits_per_hash[splits_per_hash > 1].index)
    out["_content_ok"] = ~out["_content_hash"].isin(leaky)
    return out


@dataclass(frozen=True)
class Check:
    """One expectation plus the reason text a failing row gets in the quarantine."""

    expectation: object
    reason: Callable[[pd.Series], str]


def _missing_reason(row: pd.Series, col: str) -> str:
    """The reason a null column gets: for a MOS whose text did not parse, that text (`mos_raw`)."""
    raw = row.get(f"{col}_raw") if col == "mos" else None
    if isinstance(raw, str):
        return f"mos {raw!r} is not a number (the label file's text)"
    return f"{col} is missing (NaN/empty)"


def build_checks() -> list[Check]:
    """The expectation suite, each entry with how to explain a failing row."""
    import great_expectations as gx

    E = gx.expectations
    checks: list[Check] = []
    for col in ("item_id", "path", "media", "mos", "mos_norm", "split", "dataset", "scale_min", "scale_max"):
        checks.append(
            Check(E.ExpectColumnValuesToNotBeNull(column=col), lambda r, c=col: _missing_reason(r, c))
        )
    checks += [
        Check(
            E.ExpectColumnValuesToBeBetween(column="_mos_rel", min_value=0.0, max_value=1.0),
            lambda r: f"mos {r['mos']} outside its source scale [{r['scale_min']}, {r['scale_max']}]",
        ),
        Check(
            E.ExpectColumnValuesToBeBetween(column="mos_norm", min_value=NORM_MIN, max_value=NORM_MAX),
            lambda r: f"mos_norm {r['mos_norm']} outside [{NORM_MIN}, {NORM_MAX}]",
        ),
        Check(
            E.ExpectColumnValuesToBeBetween(column="mos_std", min_value=0.0),
            lambda r: f"mos_std {r['mos_std']} is negative",
        ),
        Check(
            E.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
            lambda r: f"split {r['split']!r} is not one of {list(SPLITS)}",
        ),
        Check(
            E.ExpectColumnValuesToBeInSet(column="media", value_set=list(MEDIA_KINDS)),
            lambda r: f"media {r['media']!r} is not one of {list(MEDIA_KINDS)} (unsupported file extension?)",
        ),
        Check(
            E.ExpectColumnValuesToBeInSet(column="_first_id", value_set=[True]),
            lambda r: f"duplicated row: item_id {r['item_id']!r} already appears earlier in the manifest",
        ),
        Check(
            E.ExpectColumnValuesToBeInSet(column="_first_path", value_set=[True]),
            lambda r: f"duplicated row: file {r['path']!r} already appears earlier in the manifest",
        ),
        Check(
            E.ExpectColumnValuesToBeInSet(column="_file_error", value_set=[""]),
            lambda r: str(r["_file_error"]),
        ),
        Check(
            E.ExpectColumnValuesToBeInSet(column="_content_ok", value_set=[True]),
            lambda r: (
                f"identical content occurs in more than one split (content sha256 {r['_content_hash'][:12]}…)"
            ),
        ),
    ]
    return checks


@dataclass
class ValidationOutcome:
    valid: pd.DataFrame
    quarantine: pd.DataFrame
    report: dict = field(default_factory=dict)
    html: str = ""

    @property
    def fail_share(self) -> float:
        n = len(self.valid) + len(self.quarantine)
        return len(self.quarantine) / n if n else 0.0


def _gx_context():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    return ctx


def validate_manifest(
    df: pd.DataFrame, *, check_media: bool = True, workers: int | None = None, render_html: bool = True
) -> ValidationOutcome:
    """Run the GX suite over a manifest and split it into valid rows and quarantined rows."""
    import great_expectations as gx

    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise QualituneError(
            f"manifest lacks required columns {missing}; it has {list(df.columns)}. "
            "Re-create it with `qualitune ingest`."
        )
    base = df.reset_index(drop=True)
    derived = derive_columns(base, check_media=check_media, workers=workers)

    ctx = _gx_context()
    source = ctx.data_sources.add_pandas("manifest")
    batch_def = source.add_dataframe_asset("manifest").add_batch_definition_whole_dataframe("all")
    suite = ctx.suites.add(gx.ExpectationSuite(name="qualitune_manifest"))
    # Table-level expectations: schema and types.
    for col in REQUIRED:
        suite.add_expectation(gx.expectations.ExpectColumnToExist(column=col))
    for col in NUMERIC:
        suite.add_expectation(
            gx.expectations.ExpectColumnValuesToBeInTypeList(
                column=col, type_list=["float64", "Float64", "float32"]
            )
        )
    checks = build_checks()
    for check in checks:
        suite.add_expectation(check.expectation)
    batch = batch_def.get_batch(batch_parameters={"dataframe": derived})
    result = batch.validate(suite, result_format="COMPLETE")

    reasons: dict[int, list[str]] = {}
    by_key = {(c.expectation.expectation_type, c.expectation.column): c for c in checks}
    table_failures = []
    for res in result.results:
        cfg = res.expectation_config
        if res.exception_info and res.exception_info.get("raised_exception"):
            raise RuntimeError(
                f"GX expectation {cfg.type} on {cfg.kwargs.get('column')} raised: {res.exception_info}"
            )
        if res.success:
            continue
        idx = res.result.get("unexpected_index_list")
        if idx is None:
            table_failures.append(f"{cfg.type}({cfg.kwargs.get('column')})")
            continue
        check = by_key[(cfg.type, cfg.kwargs.get("column"))]
        for i in idx:
            reasons.setdefault(int(i), []).append(check.reason(derived.loc[int(i)]))
    if table_failures:
        raise QualituneError(f"manifest fails table-level expectations: {', '.join(table_failures)}")

    bad = sorted(reasons)
    quarantine = base.loc[bad].copy()
    quarantine.insert(0, "reason", ["; ".join(reasons[i]) for i in bad])
    valid = base.drop(index=bad).reset_index(drop=True)

    stats = result.to_json_dict()
    report = {
        "n_rows": int(len(base)),
        "n_valid": int(len(valid)),
        "n_quarantined": int(len(quarantine)),
        "fail_share": float(len(quarantine) / len(base)) if len(base) else 0.0,
        "media_checked": bool(check_media),
        "per_split": {s: int((valid["split"] == s).sum()) for s in SPLITS},
        "per_dataset": {str(k): int(v) for k, v in valid["dataset"].value_counts().items()},
        "expectations": [
            {
                "expectation": r.expectation_config.type,
                "column": r.expectation_config.kwargs.get("column"),
                "success": bool(r.success),
                "unexpected_count": int(r.result.get("unexpected_count") or 0),
            }
            for r in result.results
        ],
        "gx_success": bool(result.success),
        "gx_statistics": stats.get("statistics", {}),
    }
    html = ""
    if render_html:
        html = _render_html(result)
    return ValidationOutcome(valid=valid, quarantine=quarantine, report=report, html=html)


def _render_html(result) -> str:
    """GX's own validation-results page, rendered without a filesystem Data Docs site."""
    try:
        from great_expectations.render.renderer import ValidationResultsPageRenderer
        from great_expectations.render.view import DefaultJinjaPageView

        page = DefaultJinjaPageView().render(ValidationResultsPageRenderer().render(result))
    except Exception as exc:  # the HTML is a convenience; the JSON report is the record
        log.warning("GX HTML rendering failed (%s); the JSON report is still written", exc)
        return ""
    return stable_html(page)


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_STAMP = re.compile(r"\d{8}T\d{6}\.\d{6}Z")


def stable_html(page: str) -> str:
    """GX's page with what changes on every render made stable: the run's wall-clock stamps (shown,
    and as the logo's cache-buster) and the random uuid4 of each collapsible block. The page is a
    DVC output: without this a rerun on the same manifest changes `dvc.lock` and marks every later
    registered model `git_dirty`. The run's time is not lost: MLflow and DVC record when it ran."""
    ids: dict[str, str] = {}
    page = _UUID.sub(lambda m: ids.setdefault(m.group(0), f"block-{len(ids) + 1}"), page)
    page = re.sub(r"\?d=" + _STAMP.pattern, "", page)
    return _STAMP.sub("(run time not recorded in this page)", page)


class GateFailed(QualituneError):
    """The failing share exceeded the threshold; outputs were still written for inspection."""


def run_validation(
    manifest: str | Path,
    *,
    out: str | Path | None,
    quarantine: str | Path,
    report: str | Path,
    html: str | Path | None = None,
    max_fail_share: float = 0.0,
    check_media: bool = True,
    workers: int | None = None,
) -> ValidationOutcome:
    """Validate a manifest file, write the valid rows, the quarantine, the reports; raise `GateFailed`
    (after writing everything) when more than `max_fail_share` of the rows fail."""
    df = read_manifest(manifest)
    outcome = validate_manifest(df, check_media=check_media, workers=workers, render_html=html is not None)
    outcome.report["manifest"] = str(manifest)
    outcome.report["max_fail_share"] = float(max_fail_share)
    outcome.report["gate_passed"] = outcome.fail_share <= max_fail_share
    if out is not None:
        from qualitune.manifest import manifest_metadata

        meta = manifest_metadata(manifest)
        meta["validated"] = {k: outcome.report[k] for k in ("n_rows", "n_valid", "n_quarantined")}
        write_manifest(outcome.valid, out, meta)
    qpath = Path(quarantine)
    qpath.parent.mkdir(parents=True, exist_ok=True)
    outcome.quarantine.to_csv(qpath, index=False)
    rpath = Path(report)
    rpath.parent.mkdir(parents=True, exist_ok=True)
    rpath.write_text(json.dumps(outcome.report, indent=2, default=json_default) + "\n")
    if html is not None and outcome.html:
        Path(html).parent.mkdir(parents=True, exist_ok=True)
        Path(html).write_text(outcome.html)
    if not outcome.report["gate_passed"]:
        raise GateFailed(summary(outcome))
    return outcome


def write_metrics(outcome: ValidationOutcome, path: str | Path) -> Path:
    """A flat metrics file for `dvc metrics show`: row counts, the failing share, rows per split (the
    full report stays in `validate.report`)."""
    r = outcome.report
    flat = {k: r[k] for k in ("n_rows", "n_valid", "n_quarantined", "fail_share")}
    flat |= {f"n_{s}": n for s, n in r["per_split"].items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(flat, indent=2) + "\n")
    return path


def summary(outcome: ValidationOutcome, max_lines: int = 10) -> str:
    """A readable summary: counts, the share against the threshold, and the first failing rows."""
    r = outcome.report
    lines = [
        f"{r['n_rows']} rows: {r['n_valid']} valid, {r['n_quarantined']} quarantined "
        f"({100 * outcome.fail_share:.2f} % failing; threshold {100 * r.get('max_fail_share', 0):.2f} %)"
    ]
    failed = [e for e in r["expectations"] if not e["success"]]
    for e in failed:
        lines.append(f"  - {e['expectation']}({e['column']}): {e['unexpected_count']} rows")
    for _, row in outcome.quarantine.head(max_lines).iterrows():
        lines.append(f"  * {row['item_id']}: {row['reason']}")
    if len(outcome.quarantine) > max_lines:
        lines.append(f"  … and {len(outcome.quarantine) - max_lines} more in the quarantine file")
    return "\n".join(lines)
