"""The example project's own model code: a Pipeline factory and a transformer class of its own."""
