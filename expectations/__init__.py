"""Great Expectations suite builders: the data contract of a model version."""
