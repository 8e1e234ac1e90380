"""Performance estimated without labels (CBPE) per monitoring window, against the realised figures.

Run from the repository root:

    .venv/bin/python tests/benchmarks/bench_monitoring_estimate.py [--windows 20] [--rows 10000] [--model hgb]

A scenario made here, its labels withheld from the estimate: a binary classifier (scaling and
logistic regression) trained on 20,000 rows whose label follows a fixed logistic law of five
features (`--model hgb`: a histogram gradient-boosted tree model instead); its prediction reference (tasks/release/prediction_reference.py) built on a 5,000-row
holdout. Then `--windows` clean windows of `--rows` rows from the training distribution, and
shifted windows where the inputs move towards the decision boundary (a covariate shift: the law
of the label given the inputs is unchanged, accuracy falls). Each window goes through the
monitor's own code (`tasks.monitoring.estimate.assess`) on prediction-log rows holding the served
probabilities as JSON, timed; then the realised accuracy and ROC AUC on the withheld labels.

Targets: |estimated - realised| <= 0.03 for accuracy and AUC in every window; <= 2 s per window;
a breach (monitoring.max_estimated_drop) in the first shifted window; none in the clean ones.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import orjson  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.ensemble import HistGradientBoostingClassifier  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from configs.settings import load_settings  # noqa: E402
from tasks.monitoring.estimate import assess  # noqa: E402
from tasks.release.prediction_reference import build  # noqa: E402

COEF = np.array([1.6, -1.1, 0.8, 0.0, 0.5])
FEATURES = [f"x{i}" for i in range(len(COEF))]


def draw(rows: int, rng: np.random.Generator, shrink: float = 1.0) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows with label ~ Bernoulli(sigmoid(x @ COEF)); `shrink` < 1 pulls the inputs that drive the
    label towards the boundary (a covariate shift: same law of the label, less separable rows)."""
    x = rng.normal(size=(rows, len(COEF)))
    x[:, :3] *= shrink
    y = (rng.random(rows) < 1 / (1 + np.exp(-(x @ COEF)))).astype(int)
    return pd.DataFrame(x, columns=FEATURES), y


def log_of(model, X: pd.DataFrame, start: int) -> pd.DataFrame:
    """Prediction-log rows as the gateway writes them for a version served with predict_proba."""
    probabilities = model.predict_proba(X)
    return pd.DataFrame(
        {
            "request_id": [f"r{start + i}" for i in range(len(X))],
            "role": "production",
            "model_version": "1",
            "inputs": [orjson.dumps([r]).decode() for r in X.to_dict(orient="records")],
            "prediction": [orjson.dumps([p]).decode() for p in probabilities.tolist()],
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=20)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--model", choices=["logistic", "hgb"], default="logistic")
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    settings = load_settings(None)
    X, y = draw(20_000, rng)
    model = (
        HistGradientBoostingClassifier(max_iter=150, random_state=0)
        if args.model == "hgb"
        else make_pipeline(StandardScaler(), LogisticRegression())
    ).fit(X, y)
    Xh, yh = draw(5_000, rng)
    reference = build(model, Xh, yh, "binary", "predict_proba")
    print(
        f"{args.model}: holdout accuracy {reference.holdout['accuracy']:.4f}, roc_auc {reference.holdout['roc_auc']:.4f}; "
        f"max_estimated_drop {settings.monitoring.max_estimated_drop}, reference {len(reference.dumps())} bytes"
    )
    no_labels = pd.DataFrame({"request_id": pd.Series(dtype=str), "label": pd.Series(dtype=object)})
    scenario = [("clean", 1.0)] * args.windows + [("shifted", s) for s in (0.45, 0.4, 0.35)]
    errors, times, rows = [], [], []
    for i, (kind, shrink) in enumerate(scenario):
        Xw, yw = draw(args.rows, rng, shrink)
        log = log_of(model, Xw, i * args.rows)
        began = time.perf_counter()
        result = assess(log, no_labels, "1", reference, settings)
        times.append(time.perf_counter() - began)
        m = result.metrics
        p = model.predict_proba(Xw)[:, 1]
        real_acc, real_auc = float(np.mean((p > 0.5) == yw)), float(roc_auc_score(yw, p))
        errors.append((m["estimated_accuracy"] - real_acc, m["estimated_roc_auc"] - real_auc))
        breach = "; ".join(b for b in result.breaches if b.startswith("estimated")) or "-"
        rows.append((kind, i, real_acc, m["estimated_accuracy"], real_auc, m["estimated_roc_auc"], times[-1], breach))
        print(
            f"{kind:8s} window {i:2d}: accuracy {real_acc:.4f} est {m['estimated_accuracy']:.4f} "
            f"[{m['estimated_accuracy_low']:.4f}, {m['estimated_accuracy_high']:.4f}]  roc_auc {real_auc:.4f} est "
            f"{m['estimated_roc_auc']:.4f}  psi {m['prediction_psi']:.3f}  {times[-1]:.2f} s  breach: {breach}"
        )
    err = np.abs(np.asarray(errors))
    clean_breaches = sum(r[7] != "-" for r in rows if r[0] == "clean")
    first_shifted = next(r for r in rows if r[0] == "shifted")
    print(
        f"\nmax |estimated - realised|: accuracy {err[:, 0].max():.4f}, roc_auc {err[:, 1].max():.4f} "
        f"(target <= 0.03); per window {np.median(times):.2f} s median, {max(times):.2f} s max (target <= 2 s); "
        f"breaches in {args.windows} clean windows: {clean_breaches} (target 0); first shifted window: "
        f"{'breach' if first_shifted[7] != '-' else 'NO breach'}; load {os.getloadavg()[0]:.1f}"
    )
    ok = err.max() <= 0.03 and max(times) <= 2 and clean_breaches == 0 and first_shifted[7] != "-"
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
