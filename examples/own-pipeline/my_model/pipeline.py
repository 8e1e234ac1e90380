"""The factory shipway calls with `training.params` (`training.estimator: my_model.pipeline:build`).

With `training.preprocessing: none` the Pipeline gets the raw feature columns, by name, as the
client sends them: it does all of its own preprocessing.
"""

from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from my_model.transformers import ClippedLog

SKEWED = ["monthly_spend", "support_calls"]
PLAIN = ["tenure_months"]
CATEGORIES = ["plan", "region"]
FLAGS = ["autopay"]


def build(C: float = 1.0, upper_quantile: float = 0.99) -> Pipeline:
    skewed = Pipeline(
        [
            ("impute", SimpleImputer(strategy="median")),
            ("log", ClippedLog(upper_quantile=upper_quantile)),
            ("scale", StandardScaler()),
        ]
    )
    columns = ColumnTransformer(
        [
            ("skewed", skewed, SKEWED),
            ("plain", StandardScaler(), PLAIN),
            ("categories", OneHotEncoder(handle_unknown="ignore"), CATEGORIES),
            ("flags", OneHotEncoder(drop="if_binary"), FLAGS),
        ]
    )
    return Pipeline([("columns", columns), ("model", LogisticRegression(C=C, max_iter=1000))])
