"""Learned no-reference metrics through pyiqa, registered only when pyiqa is importable.

pyiqa needs torchvision and downloads its weights on first use, neither of which this project can
rely on, so these annotators are optional: `available_annotators()` lists them only when
`import pyiqa` would work, and asking for one without pyiqa gives an error naming the package.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from qualitune.annotators.base import Annotator, register

# name -> (pyiqa metric, higher_is_better, native range)
LEARNED = {
    "musiq": ("musiq", True, (0.0, 100.0)),
    "topiq_nr": ("topiq_nr", True, (0.0, 1.0)),
    "clipiqa": ("clipiqa", True, (0.0, 1.0)),
    "maniqa": ("maniqa", True, (0.0, 1.0)),
}


def _pyiqa_missing() -> str | None:
    if importlib.util.find_spec("pyiqa") is None:
        return "it needs the optional package pyiqa (pip install pyiqa; it also needs torchvision and downloads weights)"
    return None


class PyiqaAnnotator(Annotator):
    version = "pyiqa"

    def __init__(self, name: str) -> None:
        import pyiqa
        import torch

        metric, self.higher_is_better, self.native_range = LEARNED[name]  # type: ignore[misc]
        self.name = name  # type: ignore[misc]
        self.version = f"pyiqa-{pyiqa.__version__}"  # type: ignore[misc]
        self._torch = torch
        self._metric = pyiqa.create_metric(metric, device="cpu")

    def _score(self, rgb: np.ndarray) -> float:
        x = self._torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0
        with self._torch.no_grad():
            return float(self._metric(x).item())


for _name in LEARNED:
    register(_name, lambda n=_name: PyiqaAnnotator(n), _pyiqa_missing)
