"""Writes data.csv: scikit-learn's wine table (178 wines, 13 chemical measurements, 3 cultivars as
the target `cultivar`), plus a made-up `sample_id` that the profile excludes. No network."""

from sklearn.datasets import load_wine

frame = load_wine(as_frame=True).frame.rename(columns={"target": "cultivar"})
frame.insert(0, "sample_id", [f"W{i:04d}" for i in range(len(frame))])
frame.to_csv("data.csv", index=False)
print(f"data.csv: {len(frame)} rows, columns {', '.join(frame.columns)}")
