"""Which files a batch's partitions are, where scored files may go, and a partition's columns as the
model takes them: the parts of `shipway score` that need no model or cluster."""

import boto3
import pandas as pd
import pytest

from core.errors import DataError
from serving import Column
from tasks.scoring.batch import check_output, model_frame, partitions
from tests.conftest import tuned


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_a_folder_s_partitions_in_name_order_without_markers_or_hidden_files(settings, tmp_path):
    for name in ["b.parquet", "a.csv", "day=1/c.PARQUET", "day=2/d.pq", "notes.txt", "_SUCCESS", ".hidden.parquet",
                 "_temporary/1/part-00000.parquet", "_quarantine/part-00001.parquet", ".spark/e.parquet"]:  # fmt: skip
        touch(tmp_path / "in" / name)
    found = partitions(str(tmp_path / "in"), settings)
    assert found == [str(tmp_path / "in" / n) for n in ["a.csv", "b.parquet", "day=1/c.PARQUET", "day=2/d.pq"]]
    assert partitions(str(tmp_path / "in" / "b.parquet"), settings) == [str(tmp_path / "in" / "b.parquet")]


def test_a_source_without_partitions_is_named(settings, tmp_path):
    with pytest.raises(DataError, match=r"gone.parquet: no such file"):
        partitions(str(tmp_path / "gone.parquet"), settings)
    with pytest.raises(DataError, match=r"unsupported file type '.json'"):
        partitions(str(tmp_path / "x.json"), settings)
    touch(tmp_path / "empty" / "readme.txt")
    with pytest.raises(DataError, match=r"empty: it holds no .csv or .parquet partition"):
        partitions(str(tmp_path / "empty"), settings)


def test_an_s3_prefix_s_partitions(settings, s3_endpoint, s3_bucket):
    settings = tuned(settings, s3={"endpoint_url": s3_endpoint})
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    for key in ["in/day=1/a.parquet", "in/b.csv", "in/_SUCCESS", "in/_temporary/x.parquet", "inside/c.parquet"]:
        s3.put_object(Bucket=s3_bucket, Key=key, Body=b"x")
    assert partitions(f"s3://{s3_bucket}/in", settings) == [
        f"s3://{s3_bucket}/in/b.csv",
        f"s3://{s3_bucket}/in/day=1/a.parquet",
    ]
    assert partitions(f"s3://{s3_bucket}/in/b.csv", settings) == [f"s3://{s3_bucket}/in/b.csv"]
    with pytest.raises(DataError, match=rf"s3://{s3_bucket}/nothing: it holds no .csv or .parquet partition"):
        partitions(f"s3://{s3_bucket}/nothing", settings)
    with pytest.raises(DataError, match=r"cannot read s3://no-such-bucket-here/in: NoSuchBucket"):
        partitions("s3://no-such-bucket-here/in", settings)
    s3.put_object(Bucket=s3_bucket, Key="out/part-00000.parquet", Body=b"x")
    with pytest.raises(DataError, match=r"already holds files \(out/part-00000.parquet"):
        check_output(f"s3://{s3_bucket}/out", settings)
    check_output(f"s3://{s3_bucket}/new", settings)


def test_the_output_must_be_new_or_empty(settings, tmp_path):
    check_output(str(tmp_path / "new"), settings)
    (tmp_path / "empty" / "_temporary").mkdir(parents=True)  # another run's staging: not scored files
    check_output(str(tmp_path / "empty"), settings)
    touch(tmp_path / "full" / "part-00000.parquet")
    with pytest.raises(DataError, match=r"--out .*full already holds files \(part-00000.parquet"):
        check_output(str(tmp_path / "full"), settings)
    touch(tmp_path / "file.parquet")
    with pytest.raises(DataError, match=r"file.parquet is a file"):
        check_output(str(tmp_path / "file.parquet"), settings)


COLUMNS = [Column("age", "long", True), Column("spend", "double", True), Column("plan", "string", True)]


def test_a_partition_s_columns_as_the_model_takes_them():
    read = pd.DataFrame({"plan": ["a", None], "age": [30, 40], "spend": ["1.5", "2"], "extra": [1, 2]})
    frame = model_frame(read, COLUMNS, "p.csv")
    assert list(frame.columns) == ["age", "spend", "plan"]
    assert frame["spend"].tolist() == [1.5, 2.0] and str(frame["age"].dtype) == "int64"
    with pytest.raises(DataError, match=r"cannot score p.csv: column 'spend' is missing \(the model takes age, spend"):
        model_frame(read.drop(columns="spend"), COLUMNS, "p.csv")
    with pytest.raises(DataError, match=r"cannot score p.csv: column 'spend' is not double"):
        model_frame(read.assign(spend=["cheap", "dear"]), COLUMNS, "p.csv")
