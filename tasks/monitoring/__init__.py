"""Monitoring: one window of the prediction log, and the trend over windows."""
