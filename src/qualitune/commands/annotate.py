"""`qualitune annotate PATH... --annotators niqe,brisque,piqe --out FILE.csv`: score media files."""

from __future__ import annotations

import argparse
from pathlib import Path

from qualitune.errors import QualituneError
from qualitune.media import IMAGE_EXTS, VIDEO_EXTS

MEDIA_EXTS = IMAGE_EXTS | VIDEO_EXTS


def expand_paths(items: list[str], refused: dict[str, str] | None = None) -> list[Path]:
    """Files stay as given (a missing one becomes a row with its error); a directory expands to
    the media files inside it, recursively, sorted. A file found in a directory that links to a
    place outside that directory is not returned (nor read): it goes to `refused` (path -> reason),
    which the commands report as a row with that error, so the output still has one row per file."""
    from qualitune.media import outside_root_errors

    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(c for c in p.rglob("*") if c.is_file() and c.suffix.lower() in MEDIA_EXTS)
            for c, why in zip(found, outside_root_errors(found, [True] * len(found), p), strict=True):
                if not why:
                    out.append(c)
                elif refused is not None:
                    refused[str(c)] = why
        else:
            out.append(p)
    return out


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from qualitune.annotate import annotate_paths
    from qualitune.annotators import resolve_annotators

    names = [n.strip() for n in args.annotators.split(",") if n.strip()]
    resolve_annotators(names)  # unknown names fail here, listing the known ones
    missing = [item for item in args.paths if not Path(item).exists()]
    if missing:  # a typo in a path is not a file that failed to decode
        raise QualituneError(
            f"{len(missing)} path(s) not found: {', '.join(missing[:5])}"
            + (" ..." if len(missing) > 5 else "")
            + "; give existing media files or folders"
        )
    refused: dict[str, str] = {}
    paths = expand_paths(args.paths, refused)
    if not paths and not refused:
        raise QualituneError(
            f"no media files found in {', '.join(args.paths)} (extensions: {sorted(MEDIA_EXTS)})"
        )
    df = annotate_paths(paths, names, n_frames=args.frames, workers=args.workers, cache_dir=args.cache)
    if refused:  # links out of the folder: a row each, with the reason, never read
        attrs = dict(df.attrs)
        rows = pd.DataFrame({"path": list(refused), "error": list(refused.values())})
        df = pd.concat([df, rows], ignore_index=True)
        df.attrs.update(attrs)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    n_err = int((df["error"] != "").sum())
    print(
        f"annotated {len(df)} items with {', '.join(names)}: {n_err} with errors, "
        f"{df.attrs['n_cached']} cached cells -> {out}"
    )
    return 1 if n_err else 0  # as `qualitune score`: the CSV has every row, the status says some failed


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "annotate",
        help="score images/videos with no-reference quality annotators",
        description="Score media files with machine annotators (NIQE, BRISQUE, PIQE, fast ones); "
        "writes one CSV row per file (path, one column per annotator, error).",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="media files or directories (recursive)")
    p.add_argument(
        "--annotators", default="niqe,brisque,piqe", help="comma-separated names (default: %(default)s)"
    )
    p.add_argument("--out", required=True, help="output CSV")
    p.add_argument("--frames", type=int, default=2, help="frames sampled per video (default: %(default)s)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--cache", default=None, help="cache directory (sqlite); re-runs score only new content")
    p.set_defaults(func=run)
