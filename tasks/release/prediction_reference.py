"""What a version predicted on its holdout at registration, kept with the version for monitoring.

A small JSON artifact (`monitoring/prediction_reference.json`, its sha256 in the version's tag
`prediction_reference_sha256`): the predicted class counts (classifiers), histograms of the served
scores (the probability of each class for a version served with predict_proba; the output of a
regressor) on bins cut at the holdout's deciles, the calibration of each class's probability
fitted on the holdout (Platt scaling of its logit, P(class) = sigmoid(a * logit(p) + b): two
numbers, so a holdout of a few hundred rows does not fit its own noise as an isotonic map does),
and the holdout's own accuracy and ROC AUC under the rule the monitor applies to logged
probabilities (the argmax). Monitoring compares a window's served outputs with the histograms
(prediction drift) and estimates performance without labels from the calibration (CBPE). Its size
follows the number of bins, not the holdout's rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.plain import plain_list

ARTIFACT = "monitoring/prediction_reference.json"
FILE = "prediction_reference.json"
BINS = 10  # decile bins: enough to see a shape, few enough that each holds many holdout rows
FORMAT = 1


@dataclass
class PredictionReference:
    task: str
    predict_fn: str
    rows: int
    classes: list | None = None
    class_counts: dict[str, int] = field(default_factory=dict)  # class (JSON text) -> predicted count
    scores: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # name -> {edges, counts}
    calibration: dict[str, dict[str, float]] = field(default_factory=dict)  # class -> Platt's {a, b}
    holdout: dict[str, float] = field(default_factory=dict)  # accuracy, roc_auc on the holdout

    @property
    def has_probabilities(self) -> bool:
        return self.predict_fn == "predict_proba" and bool(self.calibration)

    def dumps(self) -> bytes:
        return json.dumps({"format": FORMAT, **self.__dict__}, sort_keys=True).encode()

    @classmethod
    def loads(cls, data: bytes) -> PredictionReference:
        raw = json.loads(data)
        raw.pop("format", None)
        return cls(**raw)

    def calibrated(self, probabilities: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities (rows sum to 1) of raw ones in the order of `classes`."""
        assert self.classes is not None
        columns = []
        for k, cls in enumerate(self.classes):
            curve = self.calibration.get(class_key(cls))
            raw = probabilities[:, k]
            columns.append(raw if curve is None else 1 / (1 + np.exp(-(curve["a"] * logit(raw) + curve["b"]))))
        calibrated = np.column_stack(columns)
        if len(self.classes) == 2:  # binary: the positive class's map decides both
            calibrated[:, 0] = 1 - calibrated[:, 1]
            return calibrated
        total = calibrated.sum(axis=1, keepdims=True)
        uniform = np.full_like(calibrated, 1 / len(self.classes))
        return np.where(total > 0, calibrated / np.where(total > 0, total, 1), uniform)


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def class_key(value: Any) -> str:
    """A class as JSON text, the way the monitor compares classes (numpy scalars as plain values)."""
    return json.dumps(value.item() if hasattr(value, "item") else value)


def score_names(classes: list | None, task: str) -> list[str]:
    """The served score distributions kept: the positive class's probability (binary), each class's
    (multiclass), or the output (regression)."""
    if classes is None or task == "regression":
        return ["output"]
    return [f"p({class_key(classes[1])})"] if len(classes) == 2 else [f"p({class_key(c)})" for c in classes]


def score_columns(values: np.ndarray, classes: list | None, task: str) -> dict[str, np.ndarray]:
    """The kept score columns of served values: a probability matrix or a vector of outputs."""
    if classes is None or task == "regression":
        return {"output": np.asarray(values, dtype=float).ravel()}
    if len(classes) == 2:
        return {score_names(classes, task)[0]: values[:, 1]}
    return dict(zip(score_names(classes, task), values.T, strict=True))


def histogram(values: np.ndarray) -> dict[str, list[float]]:
    """Counts in bins cut at the deciles of `values`, open at both ends (a window's outputs beyond
    the holdout's range fall in the end bins)."""
    inner = np.unique(np.quantile(values, np.linspace(0, 1, BINS + 1)[1:-1])) if len(values) else np.array([])
    edges = np.concatenate([[-np.inf], inner, [np.inf]])
    return {"edges": [float(e) for e in inner], "counts": [int(c) for c in np.histogram(values, edges)[0]]}


def bin_counts(values: np.ndarray, inner_edges: list[float]) -> np.ndarray:
    edges = np.concatenate([[-np.inf], inner_edges, [np.inf]])
    return np.histogram(np.asarray(values, dtype=float), edges)[0]


def build(model: Any, X: Any, y: Any, task: str, predict_fn: str) -> PredictionReference:
    """The reference of `model` on its holdout `X`, `y`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    classes = plain_list(getattr(model, "classes_", [])) if task != "regression" else None
    served = np.asarray(getattr(model, predict_fn)(X))
    reference = PredictionReference(task=task, predict_fn=predict_fn, rows=len(served), classes=classes)
    if classes is None:
        reference.scores = {"output": histogram(served.astype(float).ravel())}
        return reference
    probabilities = served if predict_fn == "predict_proba" else None
    predicted = np.asarray(classes, dtype=object)[probabilities.argmax(axis=1)] if probabilities is not None else served
    keys = [class_key(p) for p in predicted]
    reference.class_counts = {class_key(c): keys.count(class_key(c)) for c in classes}
    if probabilities is None:
        return reference
    reference.scores = {k: histogram(v) for k, v in score_columns(probabilities, classes, task).items()}
    truth = np.asarray(y)
    for k, cls in enumerate(classes):
        if len(classes) == 2 and k == 0:
            continue  # binary: one map, the positive class's
        hit = truth == cls
        if 0 < hit.sum() < len(hit):  # a class absent from the holdout keeps its raw probability
            platt = LogisticRegression(C=1e4).fit(logit(probabilities[:, k])[:, None], hit)
            reference.calibration[class_key(cls)] = {"a": float(platt.coef_[0, 0]), "b": float(platt.intercept_[0])}
    reference.holdout["accuracy"] = float(np.mean(predicted == truth))
    if len(classes) == 2 and len(np.unique(truth)) == 2:
        reference.holdout["roc_auc"] = float(roc_auc_score(truth == classes[1], probabilities[:, 1]))
    return reference


def load(settings: Any, version: Any) -> PredictionReference | None:
    """The reference logged with `version` (a ModelVersion; its sha256 checked: IntegrityError), or None
    for a version registered before references were kept."""
    import os
    import tempfile
    from pathlib import Path

    import mlflow
    from mlflow.exceptions import MlflowException

    from core import integrity
    from core.errors import RegistryError
    from core.vocabulary import Tag
    from tasks.release.registry import connect

    tags = dict(version.tags)
    if Tag.PREDICTION_REFERENCE_SHA256 not in tags or not version.run_id:
        return None
    connect(settings, create=False)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = f"runs:/{version.run_id}/{ARTIFACT}"
    with tempfile.TemporaryDirectory(prefix="shipway-") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        except (MlflowException, OSError) as exc:
            raise RegistryError(
                f"version {version.version} of '{version.name}': cannot read its prediction reference {uri}: {exc}"
            ) from None
        data = Path(path).read_bytes()
    integrity.check(data, tags, integrity.PREDICTION_REFERENCE, version.name, str(version.version))
    return PredictionReference.loads(data)
