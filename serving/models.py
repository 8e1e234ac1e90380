"""A loaded model version behind one `predict(batch) -> list` call, whatever its form.

ONNX (parity-checked at registration) runs in onnxruntime on float64/string tensors; otherwise
the sklearn pipeline gets the DataFrame it was trained on; any other MLflow model goes through
pyfunc. Predictions come back as JSON-ready lists, the same values `mlflow.pyfunc` returns.
`Inputs` holds one request's columns, typed (and made tensors) once per schema, whichever
version or process predicts on them.
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pandas as pd

from core.plain import plain_list
from serving.feedback import LabelRule
from serving.onnx import session
from serving.registry_reader import LoadedVersion
from serving.schema import JSON_TYPE, BadInput, Batch, Raw, Schema, parse

log = logging.getLogger("shipway.serving")

SPLIT_ROWS = 2_048  # an ONNX batch of at least twice this is split across the cores, one slice a thread
CORES = len(os.sched_getaffinity(0))


@dataclass
class Servable:
    version: str
    flavor: str  # onnx | sklearn | pyfunc
    schema: Schema
    model: Any  # an onnxruntime session, a sklearn estimator or a pyfunc model
    predict_fn: str = "predict"  # predict_proba: rows of class probabilities, as MLflow's pyfunc answers
    label_rule: LabelRule | None = None  # what /feedback labels must be (task, classes); None: not recorded

    def predict(self, batch: Batch) -> list:
        return self.finish(self.forward(self.prepare(batch)))

    # The three stages, apart so that the benchmark can time each.
    def prepare(self, batch: Batch) -> Any:
        return self.schema.feeds(batch) if self.flavor == "onnx" else self.schema.frame(batch)

    def forward(self, prepared: Any) -> Any:
        if self.flavor == "onnx":
            return self._onnx(prepared)
        return self._predict(prepared)

    def _onnx(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The graph's answer; a large batch in row slices run at once, one a core. Sessions run one
        thread each (tuned for one row) and release the GIL: a tree ensemble's batch is the walk of
        every row through every tree, and rows are independent."""
        rows = len(next(iter(feeds.values())))
        slices = min(CORES, rows // SPLIT_ROWS)
        if slices < 2:
            return self._run(self._outputs, feeds, None)[0]
        bounds = np.linspace(0, rows, slices + 1, dtype=int)
        parts = [{name: tensor[a:b] for name, tensor in feeds.items()} for a, b in itertools.pairwise(bounds)]
        return np.concatenate(list(_slice_pool().map(lambda part: self._run(self._outputs, part, None)[0], parts)))

    def finish(self, output: Any) -> list:
        if self.flavor == "onnx":
            return output.tolist() if self.predict_fn == "predict_proba" else output.reshape(-1).tolist()
        return predictions_json(output)

    def __post_init__(self) -> None:
        # Fetch only the answer's output: labels (or values), or for predict_proba the probabilities.
        answer = 1 if self.predict_fn == "predict_proba" else 0
        self._outputs = [self.model.get_outputs()[answer].name] if self.flavor == "onnx" else None
        # sklearn answers with the method MLflow's pyfunc would call; a pyfunc model knows its own.
        self._predict: Any = getattr(self.model, self.predict_fn if self.flavor == "sklearn" else "predict", None)
        # The C session itself: InferenceSession.run re-checks in Python, on every call, that
        # every input is fed, which Schema.feeds always does; only the CPU provider is used.
        self._run: Any = self.model._sess.run if self.flavor == "onnx" else None


@cache
def _slice_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(CORES, thread_name_prefix="onnx-slice")


def servable(loaded: LoadedVersion) -> Servable:
    # A pipeline or an ONNX graph needs every column; a pyfunc model may go without an optional one.
    schema = Schema(loaded.columns, complete=loaded.flavor != "pyfunc")
    rule = LabelRule.of(loaded.tags)
    if loaded.onnx is not None:
        return Servable(loaded.version, "onnx", schema, session(loaded.onnx), loaded.predict_fn, rule)
    return Servable(loaded.version, loaded.flavor, schema, loaded.model, loaded.predict_fn, rule)


def baseline_servable(version: str, schema: Schema, model: Any, predict_fn: str) -> Servable:
    """A version's heuristic baseline over the same columns, answering in the version's own form
    (classes fitted on the same training split): its ONNX bytes, compiled at registration, or the
    small sklearn pipeline itself."""
    if isinstance(model, bytes):
        return Servable(version, "onnx", schema, session(model), predict_fn)
    return Servable(version, "sklearn", schema, model, predict_fn)


def warm_up(model: Servable, example: bytes | None) -> None:
    """One prediction before the version is served, on its serving input example (else a row of
    the signature's types). A model's first call pays for lazy imports and caches (a sklearn
    pipeline's took longer than serving.timeout_ms): made by a request, it would time out and be
    answered by the fallback chain. A model that fails here is served all the same, as before: its
    requests say how it fails, and the fallback chain answers them."""
    started = time.perf_counter()
    try:
        rows = model.schema.placeholder()
        if example is not None:
            try:
                rows = parse(example, JSON_TYPE)
            except BadInput:
                pass  # a format shipway does not read (tensors): the signature's row warms it as well
        Inputs(rows).predict(model)
    except Exception as exc:
        log.warning("version %s failed its warm-up call: %s: %s", model.version, type(exc).__name__, exc)
        return
    log.debug("version %s warmed up in %.3fs", model.version, time.perf_counter() - started)


def predictions_json(predictions: Any) -> list:
    """What MLflow's scoring server would put under "predictions" (NaN kept, as MLflow does)."""
    if isinstance(predictions, pd.DataFrame):
        return predictions.to_dict(orient="records")
    if isinstance(predictions, (pd.Series, np.ndarray)):
        return predictions.tolist()
    return plain_list(predictions)


class Inputs:
    """One request's parsed columns, typed once per schema (versions may differ in columns).

    ONNX tensors are prepared once per schema too: when a Canary fails, Production (most often
    with the same columns) answers from the very arrays the Canary was given.
    """

    def __init__(self, raw: Raw):
        self.raw = raw
        self._typed: dict[Schema, Batch] = {}
        self._feeds: dict[Schema, Any] = {}

    def for_model(self, model: Servable) -> Batch:
        batch = self._typed.get(model.schema)
        if batch is None:
            batch = self._typed[model.schema] = model.schema.coerce(self.raw)
        return batch

    def predict(self, model: Servable) -> list:
        batch = self.for_model(model)
        if model.flavor != "onnx":
            return model.predict(batch)
        feeds = self._feeds.get(model.schema)
        if feeds is None:
            feeds = self._feeds[model.schema] = model.prepare(batch)
        return model.finish(model.forward(feeds))


def freeze_heap() -> None:
    """Move what is alive now (the imports, the first models) out of the garbage collector's
    sight: a full collection of that heap is a long pause, which every answer under way would
    share (docs/benchmarks.md). Later garbage is collected as usual."""
    gc.collect()
    gc.freeze()
