"""Decoding images and sampling video frames robustly.

Every reader here either returns fully decoded pixels or raises `MediaError` with a message that
names the file and the problem: a corrupt or truncated file must never turn into a silent black
image or a half-read array, because the validation gate and the annotators rely on these readers.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from qualitune.errors import QualituneError

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
VIDEO_EXTS = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".yuv", ".flv", ".mpg", ".mpeg"})

# PIL would otherwise pad truncated JPEGs with grey; we want the error.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class MediaError(QualituneError):
    """A media file is missing, unreadable, truncated or of an unsupported kind."""


def media_kind(path: str | Path) -> str:
    """'image' or 'video' from the file extension (case-insensitive)."""
    ext = Path(path).suffix.lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS:
        return "video"
    raise MediaError(
        f"{path}: unsupported extension {ext!r}; images: {sorted(IMAGE_EXTS)}, videos: {sorted(VIDEO_EXTS)}"
    )


def require_file(path: str | Path) -> Path:
    """`path` as a Path if it is a non-empty regular file, else `MediaError` saying which it is not:
    the first check of every reader here."""
    p = Path(path)
    if not p.exists():
        raise MediaError(f"{p}: file not found")
    if not p.is_file():
        raise MediaError(f"{p}: not a regular file")
    if p.stat().st_size == 0:
        raise MediaError(f"{p}: empty file")
    return p


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode (L, LA, P, RGBA, CMYK, I;16, I, F) to 8-bit RGB.

    Alpha is composited on white (what a viewer shows); 16-bit and float images are scaled by their
    own range rather than clipped, so a 16-bit PNG does not turn white.
    """
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr8 = np.clip(np.round(arr / hi * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    return img.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image as 8-bit RGB, or raise `MediaError`."""
    p = require_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                img.load()  # forces the full decode: catches truncation and corrupt entropy data
                rgb = to_rgb(img)
    except MediaError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError… depending on the codec
        raise MediaError(f"{p}: cannot decode image ({type(exc).__name__}: {exc})") from exc
    if rgb.width < 1 or rgb.height < 1:
        raise MediaError(f"{p}: image has no pixels ({rgb.width}x{rgb.height})")
    return rgb


def _uniform_targets(duration: float, n: int) -> list[float]:
    """Centre-of-segment times: the clip is cut into n equal parts and one frame taken from each."""
    return [duration * (i + 0.5) / n for i in range(n)]


def _decode_at(
    path: Path, targets: Sequence[float]
) -> tuple[list[Image.Image], float | None, int, str | None]:
    """One sequential pass: for each target time keep the first frame at or after it.

    Timestamps (pts) rather than frame indices make this correct for variable frame rate.
    Returns (frames, last decoded time, number of frames decoded, error text if decoding stopped early).
    """
    import av

    frames: list[Image.Image] = []
    last_time: float | None = None
    decoded = 0
    error: str | None = None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            want = list(targets)
            try:
                for frame in container.decode(stream):
                    decoded += 1
                    t = (
                        float(frame.time)
                        if frame.time is not None
                        else (decoded - 1) / float(stream.average_rate or 25)
                    )
                    last_time = t
                    while want and t + 1e-6 >= want[0]:
                        frames.append(frame.to_image().convert("RGB"))
                        want.pop(0)
                    if not want:
                        break
            except av.error.FFmpegError as exc:  # unreadable tail: keep what decoded before it
                error = f"{type(exc).__name__}: {exc}"
    except MediaError:
        raise
    except Exception as exc:
        if decoded == 0:
            raise MediaError(f"{path}: cannot open video ({type(exc).__name__}: {exc})") from exc
        error = f"{type(exc).__name__}: {exc}"
    return frames, last_time, decoded, error


def _container_duration(path: Path) -> float | None:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"{path}: no video stream")
            stream = container.streams.video[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            if container.duration is not None:
                return container.duration / 1_000_000.0
    except MediaError:
        raise
    except Exception as exc:
        raise MediaError(f"{path}: cannot open video ({type(exc).__name__}: {exc})") from exc
    return None


def probe_media(path: str | Path, media: str) -> None:
    """Raise `MediaError` unless `path` is a non-empty regular file whose header reads as `media`
    ("image": PIL parses the header, no pixels decoded; "video": the container opens and has a
    video stream). The cheap half of a decode check, for `qualitune validate --no-media-check`."""
    path = require_file(path)
    if media == "video":
        _container_duration(path)
        return
    try:
        with Image.open(path) as img:
            if img.width <= 0 or img.height <= 0:
                raise MediaError(f"{path}: image header declares size {img.size}")
    except MediaError:
        raise
    except Exception as exc:  # UnidentifiedImageError, a truncated header, ...
        raise MediaError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from exc


def sample_frames(path: str | Path, n: int = 2) -> list[Image.Image]:
    """Sample `n` frames uniformly in time from a video, as RGB images.

    Robust to the three ways real clips lie about themselves:
    - variable frame rate: sampling is by timestamp, not by index;
    - a container duration longer than the decodable stream (unreadable or truncated tail): the
      first pass stops early, and a second pass resamples over the part that does decode;
    - very short clips (fewer frames than `n`): frames repeat, so callers always get `n` images.
    Raises `MediaError` if no frame at all can be decoded.
    """
    if n < 1:
        raise QualituneError(f"n_frames must be >= 1, got {n}")
    p = require_file(path)
    duration = _container_duration(p)
    if duration and duration > 0:
        frames, last_time, decoded, _ = _decode_at(p, _uniform_targets(duration, n))
        if len(frames) == n:
            return frames
        if decoded == 0:
            raise MediaError(f"{p}: no decodable video frame")
        # Shorter than advertised: resample over the span that actually decodes.
        duration = last_time if last_time and last_time > 0 else 0.0
    # Unknown or too-short duration: find the real span, then sample it.
    if not duration:
        _, last_time, decoded, error = _decode_at(p, [float("inf")])
        if decoded == 0:
            raise MediaError(f"{p}: no decodable video frame" + (f" ({error})" if error else ""))
        duration = last_time or 0.0
    targets = _uniform_targets(duration, n) if duration > 0 else [0.0] * n
    frames, _, decoded, error = _decode_at(p, targets)
    if not frames:
        raise MediaError(f"{p}: no decodable video frame" + (f" ({error})" if error else ""))
    while len(frames) < n:  # a clip of fewer frames than asked for
        frames.append(frames[-1].copy())
    return frames


def load_media(path: str | Path, n_frames: int = 2) -> list[Image.Image]:
    """One RGB image for an image file; `n_frames` sampled frames for a video."""
    kind = media_kind(path)
    if kind == "image":
        return [load_image(path)]
    return sample_frames(path, n_frames)


class FileIndex:
    """Finds files in one folder by name, tolerating case mismatches (".JPG" vs ".jpg") and a
    missing extension ("name" for "name.mp4", as LSVQ's label file writes it).

    Real label files disagree with the file system in exactly these ways. The folder is listed
    once, so resolving 10k names costs one directory scan, not 10k.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._by_name: dict[str, Path] = {}
        self._by_stem: dict[str, Path] = {}
        if self.directory.is_dir():
            for child in sorted(self.directory.iterdir()):
                if child.is_file():
                    self._by_name.setdefault(child.name.lower(), child)
                    self._by_stem.setdefault(child.stem.lower(), child)

    def find(self, name: str) -> Path | None:
        exact = self.directory / name
        if exact.is_file():
            return exact
        hit = self._by_name.get(name.lower())
        if hit is None and not Path(name).suffix:
            hit = self._by_stem.get(name.lower())
        return hit


def outside_root_errors(paths: Sequence[Path], found: Sequence[bool], root: str | Path) -> list[str]:
    """Why each found file is not part of the dataset ("" when it is): the file, after following
    links, lies outside `root`. A label name that climbs out (`../x.jpg`), an absolute name elsewhere
    or a symlink to another folder would otherwise make the pipeline read (and train on) files that
    are not the dataset's, and a dataset folder handed over by someone else could read any file this
    user can. The one place outside `root` a file may live is a DVC cache (`.dvc/cache`): a dataset
    checked out with `cache.type symlink` links every file there.

    Real paths of folders are computed once per folder, so a million files cost one `lstat` each."""
    real_root = Path(os.path.realpath(root))
    real_dirs: dict[Path, Path] = {}
    out = []
    for path, ok in zip(paths, found, strict=True):
        if not ok:
            out.append("")
            continue
        parent = Path(os.path.abspath(path)).parent
        real_parent = real_dirs.get(parent)
        if real_parent is None:
            real_parent = real_dirs[parent] = Path(os.path.realpath(parent))
        real = Path(os.path.realpath(path)) if os.path.islink(path) else real_parent / Path(path).name
        inside = real.is_relative_to(real_root) or any(
            p.name == "cache" and p.parent.name == ".dvc" for p in real.parents
        )
        out.append(
            ""
            if inside
            else f"{path}: resolves to {real}, outside the folder being read ({real_root}); not read "
            "(copy or move the file into it)"
        )
    return out
