"""Writes data.csv: scikit-learn's diabetes table (442 patients, 10 measurements, disease progression
a year later as the target `progression`). It ships with scikit-learn: no network."""

from sklearn.datasets import load_diabetes

frame = load_diabetes(as_frame=True, scaled=False).frame.rename(columns={"target": "progression"})
frame.to_csv("data.csv", index=False)
print(f"data.csv: {len(frame)} rows, columns {', '.join(frame.columns)}")
