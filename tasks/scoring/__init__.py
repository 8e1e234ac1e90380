"""Batch scoring: a dataset's partitions gated and predicted by a model version on Dask, with lineage."""
