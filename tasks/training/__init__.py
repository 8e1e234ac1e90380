"""Training: the Pipeline and its estimator, the baseline, their ONNX forms, metrics, trained rows."""
