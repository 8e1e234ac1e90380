"""The quality gate: a candidate against its baseline, the floors and Production, on holdout rows."""
