"""The ONNX side of serving: feeding a frame's columns as tensors and a session tuned for one-row
requests. tasks/training/compile.py builds the graphs and checks their parity through the same functions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import onnxruntime as ort

NULL_TOKEN = "\u2400"  # SYMBOL FOR NULL: ONNX strings cannot be None, and "\x00" ends a C string


def frame_feeds(X: pd.DataFrame) -> dict[str, np.ndarray]:
    """ONNX inputs for a DataFrame: one (n, 1) tensor per column, float64 (booleans as 0/1;
    datetimes as microseconds since 1970 in UTC, NaT as NaN) or string."""
    feeds = {}
    for col in X.columns:
        s = X[col]
        if pd.api.types.is_datetime64_any_dtype(s.dtype):
            feeds[col] = epoch_us(s).reshape(-1, 1)
        elif pd.api.types.is_numeric_dtype(s.dtype):
            feeds[col] = s.to_numpy(dtype=np.float64, na_value=np.nan).reshape(-1, 1)
        else:
            feeds[col] = np.array([NULL_TOKEN if v is None or v != v else v for v in s.tolist()], dtype=object).reshape(
                -1, 1
            )
    return feeds


def epoch_us(stamps: pd.Series) -> np.ndarray:
    """Datetimes (naive ones read as UTC, as the date parts read them) as float64 microseconds
    since 1970, NaT as NaN: exact to the microsecond within 285 years of 1970."""
    if getattr(stamps.dt, "tz", None) is not None:
        stamps = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
    micros = stamps.astype("datetime64[us]")
    values = micros.to_numpy().view("int64").astype(np.float64)
    values[micros.isna().to_numpy()] = np.nan
    return values


def session(onx: bytes) -> ort.InferenceSession:
    """An onnxruntime session tuned for one-row requests: one thread, no spinning."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(onx, options, providers=["CPUExecutionProvider"])
