"""The units of work: plain functions that do it, thin Prefect tasks that add retries and logging."""
