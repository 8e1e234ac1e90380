"""shipway's core: the vocabulary every package shares (errors, aliases, roles, verdicts, tasks,
tag names, model references, the training statistics of a contract) and one MLflow client per
tracking store. It imports no other shipway package and no Prefect, so the gateway can use it
without loading the flows.
"""
