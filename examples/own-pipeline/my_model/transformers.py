"""A transformer of this project's own. shipway saves it with the model (skops) and ships this
package with it (MLflow code_paths), so the gateway loads it anywhere."""

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin


class ClippedLog(TransformerMixin, BaseEstimator):
    """Clips each column at its training `upper_quantile`, then takes log1p: tames skewed amounts
    and counts, so one huge bill does not dominate a linear model."""

    def __init__(self, upper_quantile: float = 0.99):
        self.upper_quantile = upper_quantile

    def fit(self, X, y=None):
        values = np.asarray(X, dtype=float)
        self.upper_ = np.nanquantile(values, self.upper_quantile, axis=0)
        return self

    def transform(self, X):
        values = np.asarray(X, dtype=float)
        return np.log1p(np.clip(values, 0, self.upper_))

    def get_feature_names_out(self, input_features=None):
        return np.asarray(input_features, dtype=object)
