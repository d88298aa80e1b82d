"""The docs stay true: generated tables match the committed metrics, the README stays short, links resolve.

Fast and model-free: it reads markdown and the small JSON metrics files only.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "docs" / "build.py"
README_MAX_LINES = 200
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def load_build():
    spec = importlib.util.spec_from_file_location("docs_build", BUILD)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BUILD), "--check", "--root", str(root)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    out, seen, fence = set(), {}, False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fence = not fence
        if fence or not line.startswith("#"):
            continue
        base = slug(line.lstrip("#"))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


@pytest.fixture()
def copy_root(tmp_path: Path) -> Path:
    """The pages and the committed metrics files, copied to a scratch root."""
    for page in pages():
        dest = tmp_path / page.relative_to(ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(page, dest)
    for src in (ROOT / "reports").rglob("*.json"):
        dest = tmp_path / src.relative_to(ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
    return tmp_path


def test_generated_blocks_are_up_to_date():
    result = check(ROOT)
    assert result.returncode == 0, result.stderr + "\nrun `python docs/build.py` and commit the pages"


def test_readme_is_short():
    n = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; move detail to docs/ (limit {README_MAX_LINES})"


def test_every_page_has_its_generated_blocks():
    text = {p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8") for p in pages()}
    build = load_build()
    used = {name for t in text.values() for name in re.findall(r"<!-- generated:([a-z0-9-]+) -->", t)}
    assert used == set(build.BLOCKS), f"blocks on no page: {set(build.BLOCKS) - used}"
    assert "<!-- generated:real-results -->" in text["README.md"]


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page: Path):
    broken = []
    for target in links(page):
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(
                f"{target} (no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})"
            )
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    assert not broken, f"{page.name}: broken links: {broken}"


def test_a_changed_metric_changes_the_table_and_fails_the_check(copy_root: Path):
    assert check(copy_root).returncode == 0
    metrics = copy_root / "reports" / "real" / "eval_metrics.json"
    m = json.loads(metrics.read_text())
    before = load_build().render(copy_root)["README.md"]
    old = f"{m['test']['expected']['srcc']:.3f}"
    m["test"]["expected"]["srcc"] = 0.123456
    metrics.write_text(json.dumps(m))
    after = load_build().render(copy_root)["README.md"]
    assert after != before
    assert "**0.123**" in after and f"**{old}**" in before
    result = check(copy_root)
    assert result.returncode == 1
    assert "README.md" in result.stderr and "docs/compact-backend.md" in result.stderr
    # rewriting makes it current again, and only the generated block changed
    subprocess.run([sys.executable, str(BUILD), "--root", str(copy_root)], check=True, capture_output=True)
    assert check(copy_root).returncode == 0
    rewritten = (copy_root / "README.md").read_text(encoding="utf-8")
    outside = re.compile(r"<!-- generated:(\S+) -->.*?<!-- /generated:\1 -->", re.S)
    assert outside.sub("", rewritten) == outside.sub("", before)


def test_training_seconds_and_pretrain_phase_are_read(copy_root: Path):
    build = load_build()
    train = copy_root / "reports" / "real" / "pretrain_off_train_metrics.json"
    t = json.loads(train.read_text())
    t["train"]["seconds"] = 600.0
    train.write_text(json.dumps(t))
    assert "600 s (10.0 min)" in build.block("pretrain-on-off", copy_root)
    t["pretrain"] = {"seconds": 60.0}
    train.write_text(json.dumps(t))
    assert "60 s PMOD + 540 s MOS = 10.0 min" in build.block("pretrain-on-off", copy_root)


def test_ablation_table_from_summary_and_note_without_it(copy_root: Path):
    build = load_build()
    summary = copy_root / "reports" / "real" / "ablation" / "summary.json"
    summary.unlink(missing_ok=True)
    assert "not run yet: `python benchmarks/real_data_ablation.py`" in build.block("ablation", copy_root)
    rows = [
        {"variant": v, "overrides": o, "test_srcc": 0.1 * i, "test_plcc": 0.2, "val_srcc": 0.3,
         "probe_srcc": 0.4, "pmod_mean_srcc": 0.5, "share_level_changed": 0.25}
        for i, (v, o) in enumerate(
            [("two-stage", ["train.method=two_stage"]), ("decimal", ["train.answer_format=decimal"]),
             ("pmod-pretrain", [])], start=1,
        )
    ]  # fmt: skip
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text(json.dumps({"n_train": 500, "seed": 3, "rows": rows}))
    text = build.block("ablation", copy_root)
    body = [line for line in text.splitlines() if line.startswith("| ") and "variant" not in line]
    assert [line.split(" | ")[0] for line in body] == ["| decimal", "| pmod-pretrain", "| two-stage"]
    assert "`train.method=two_stage`" in text and "| 0.300 |" in text and "| 0.25 |" in text
    assert "one seed (3)" in text


def test_missing_metrics_file_renders_a_note(copy_root: Path):
    (copy_root / "reports" / "eval_metrics.json").unlink()
    text = load_build().block("demo-results", copy_root)
    assert text.startswith("_not run yet: `make demo`")
