"""The qualitune scorer as an MLflow pyfunc, logged as "models from code".

`qualitune.gate.log_and_register` logs this file with
``mlflow.pyfunc.log_model(python_model=<this file>, artifacts={"scorer": <scorer folder>})``: MLflow
copies the file into the model and executes it on load, where ``mlflow.models.set_model`` hands it
the model object; nothing is pickled. The environment that loads it needs ``qualitune`` installed.

Input: a DataFrame (the annotation tells MLflow not to infer a signature from type hints: the logged
signature is explicit) with a column ``image`` holding base64-encoded file bytes (an image, or an MP4/MOV,
Matroska/WebM or AVI video); files are decoded in memory, never read from server-side paths.
Params: ``mode`` (``expected``, the default, or ``greedy``) and ``batch_size`` (default 8).
Output: one dict per row with ``score`` (on the scorer's label scale), ``score_1_5``, ``levels``
(probabilities of bad..excellent), ``mode``, ``media`` and ``error`` (None when scored); a row that
does not decode gets ``score: None`` and the reason, and the other rows are still scored.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from qualitune.tracking import import_mlflow

mlflow = import_mlflow()  # MLflow with its telemetry switched off


class QualituneScorerModel(mlflow.pyfunc.PythonModel):
    """Loads `qualitune.scorer.Scorer` from the ``scorer`` artifact and scores base64 media."""

    scorer = None

    def load_context(self, context) -> None:
        import torch

        from qualitune.scorer import Scorer

        device = "cuda" if torch.cuda.is_available() else None
        self.scorer = Scorer.load(context.artifacts["scorer"], device=device)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> list[dict[str, Any]]:
        from qualitune.codec import input_values, score_encoded

        if self.scorer is None:
            raise RuntimeError("the scorer is not loaded (load_context was not called)")
        params = dict(params or {})
        mode = params.get("mode") or "expected"
        batch_size = int(params.get("batch_size") or 8)
        return score_encoded(self.scorer, input_values(model_input), mode=mode, batch_size=batch_size)


# MLflow executes this file under a generated module name; a plain `import qualitune.pyfunc_model`
# (docs, tests, the serving layer reusing the class) leaves MLflow's global model slot alone.
if __name__ != "qualitune.pyfunc_model":
    mlflow.models.set_model(QualituneScorerModel())
