"""The serving gateway: MLflow's scoring protocol, alias routing, prediction log, fallbacks."""
