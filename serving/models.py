"""A loaded model version behind one `predict(batch) -> list` call, whatever its form.

ONNX (parity-checked at registration) runs in onnxruntime on float64/string tensors; otherwise
the sklearn pipeline gets the DataFrame it was trained on; any other MLflow model goes through
pyfunc. Predictions come back as JSON-ready lists, the same values `mlflow.pyfunc` returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from serving.schema import Batch, Schema
from tasks.compile import session
from tasks.registry import LoadedVersion


@dataclass
class Servable:
    version: str
    flavor: str  # onnx | sklearn | pyfunc
    schema: Schema
    model: Any  # an onnxruntime session, a sklearn estimator or a pyfunc model

    def predict(self, batch: Batch) -> list:
        return self.finish(self.forward(self.prepare(batch)))

    # The three stages, apart so that the benchmark can time each.
    def prepare(self, batch: Batch) -> Any:
        return self.schema.feeds(batch) if self.flavor == "onnx" else self.schema.frame(batch)

    def forward(self, prepared: Any) -> Any:
        if self.flavor == "onnx":
            return self._run(self._outputs, prepared, None)[0]
        return self.model.predict(prepared)

    def finish(self, output: Any) -> list:
        if self.flavor == "onnx":
            return output.reshape(-1).tolist()
        return jsonable(output)

    def __post_init__(self) -> None:
        # Fetch only the label output: probabilities are not part of the answer.
        self._outputs = [self.model.get_outputs()[0].name] if self.flavor == "onnx" else None
        # The C session itself: InferenceSession.run re-checks in Python (~15 us a call) that
        # every input is fed, which Schema.feeds always does; only the CPU provider is used.
        self._run = self.model._sess.run if self.flavor == "onnx" else None


def servable(loaded: LoadedVersion) -> Servable:
    schema = Schema(loaded.columns)
    if loaded.onnx is not None:
        return Servable(loaded.version, "onnx", schema, session(loaded.onnx))
    return Servable(loaded.version, loaded.flavor, schema, loaded.model)


def baseline_servable(loaded: LoadedVersion, model: Any) -> Servable:
    """The version's heuristic baseline: a small sklearn pipeline over the same columns."""
    return Servable(loaded.version, "sklearn", Schema(loaded.columns), model)


def jsonable(predictions: Any) -> list:
    """What MLflow's scoring server would put under "predictions"."""
    if isinstance(predictions, pd.DataFrame):
        return predictions.to_dict(orient="records")
    if isinstance(predictions, (pd.Series, np.ndarray)):
        return predictions.tolist()
    return list(predictions)
