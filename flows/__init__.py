"""Prefect flows that read as the journey of a model version, and the `shipway` CLI."""
