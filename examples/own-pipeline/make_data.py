"""Writes data.csv: 2,000 made-up subscription customers, a mixed table as it comes from a warehouse.

customer_id (an ID: excluded), signed_up (a date: the out-of-time split, not a feature),
tenure_months, monthly_spend (skewed: the pipeline logs it), support_calls (some missing),
plan and region (categories), autopay (a boolean), and the target churned (a boolean).
"""

import numpy as np
import pandas as pd

ROWS = 2_000
rng = np.random.default_rng(7)
plan = rng.choice(["basic", "plus", "pro"], ROWS, p=[0.5, 0.3, 0.2])
region = rng.choice(["north", "south", "east", "west"], ROWS)
tenure = rng.integers(1, 72, ROWS)
spend = np.round(rng.lognormal(3.5, 0.8, ROWS), 2)
calls = rng.poisson(1.5, ROWS).astype(float)
calls[rng.random(ROWS) < 0.05] = np.nan
autopay = rng.random(ROWS) < 0.6
logit = (
    0.8
    - 0.05 * tenure
    + 0.6 * np.nan_to_num(calls, nan=1.5)
    - 0.5 * np.log1p(spend)
    + np.select([plan == "basic", plan == "pro"], [0.7, -0.6], 0.0)
    - 1.0 * autopay
)
churned = rng.random(ROWS) < 1 / (1 + np.exp(-logit))
frame = pd.DataFrame(
    {
        "customer_id": [f"C{i:05d}" for i in range(ROWS)],
        "signed_up": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 730, ROWS), unit="D"),
        "tenure_months": tenure,
        "monthly_spend": spend,
        "support_calls": calls,
        "plan": plan,
        "region": region,
        "autopay": autopay,
        "churned": churned,
    }
)
frame.to_csv("data.csv", index=False)
print(f"data.csv: {len(frame)} rows, churn rate {churned.mean():.2f}, columns {', '.join(frame.columns)}")
