import datetime as dt
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from core.errors import DataError, SnapshotError
from tasks.data import snapshot as snap
from tasks.data.demo_data import generate
from tasks.data.snapshot import canonicalize, content_hash, read_snapshot, read_source, take_snapshot, write_snapshot
from tasks.data.storage import LocalStore
from tests.conftest import tuned


@pytest.fixture
def frame() -> pd.DataFrame:
    return generate(2_000, seed=11)


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "snapshots")


def files(root):
    return {p.relative_to(root): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_same_content_same_id_whatever_the_column_order_or_file_format(frame, tmp_path):
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.parquet")
    ids = {
        content_hash(canonicalize(frame)),
        content_hash(canonicalize(frame[frame.columns[::-1]])),
        content_hash(canonicalize(pd.read_csv(tmp_path / "d.csv"))),
        content_hash(canonicalize(pd.read_parquet(tmp_path / "d.parquet"))),
    }
    assert len(ids) == 1


def test_any_changed_value_changes_the_id(frame):
    changed = frame.copy()
    changed.loc[1234, "plan"] = "premium" if changed.loc[1234, "plan"] != "premium" else "basic"
    renamed = frame.rename(columns={"age": "age_years"})
    one_nan = frame.copy()
    one_nan.loc[7, "monthly_charges"] = np.nan
    ids = {content_hash(canonicalize(f)) for f in (frame, changed, renamed, one_nan, frame.iloc[:-1])}
    assert len(ids) == 5


def test_canonical_dtypes():
    raw = pd.DataFrame(
        {
            "b_int_with_null": pd.array([1, None, 3], dtype="Int64"),
            "a_numbers_as_objects": pd.Series([1, 2, 3], dtype=object),
            "c_category": pd.Categorical(["x", "y", "x"]),
            "d_flag_with_null": pd.Series([True, None, False], dtype=object),
            "e_float32": np.array([1.5, 2.5, 3.5], dtype="float32"),
            "f_when": pd.to_datetime(["2024-01-01", "2024-01-02", None]),
        }
    )
    canon = canonicalize(raw)
    assert list(canon.columns) == sorted(raw.columns)
    assert {c: str(t) for c, t in canon.dtypes.items()} == {
        "a_numbers_as_objects": "int64",
        "b_int_with_null": "float64",
        "c_category": "str",
        "d_flag_with_null": "float64",
        "e_float32": "float64",
        "f_when": "datetime64[us]",
    }


def test_a_zone_is_not_part_of_the_id_its_instants_are():
    """Berlin and UTC times of the same instants are the same data; a naive time is another."""
    instants = pd.Series(pd.date_range("2024-03-30", periods=48, freq="h", tz="UTC", unit="us"))
    utc = pd.DataFrame({"when": instants})
    berlin = pd.DataFrame({"when": instants.dt.tz_convert("Europe/Berlin").dt.as_unit("ns")})
    naive = pd.DataFrame({"when": instants.dt.tz_localize(None)})
    assert len({content_hash(canonicalize(utc)) for _ in range(3)}) == 1  # once random (memory addresses)
    assert content_hash(canonicalize(berlin)) == content_hash(canonicalize(utc))
    assert str(canonicalize(berlin)["when"].dtype) == "datetime64[us, UTC]"
    assert content_hash(canonicalize(naive)) != content_hash(canonicalize(utc))


def test_nested_values_durations_and_mixed_objects_have_a_canonical_form():
    raw = pd.DataFrame(
        {
            "lists": pd.Series([[1, None], [2], None], dtype=object),
            "records": [{"b": "x", "a": 1}, {"a": None}, None],
            "waited": pd.to_timedelta([1.5, None, 60], unit="s"),
            "mixed": pd.Series([1, "a", None], dtype=object),
            "days": pd.Series([dt.date(2024, 5, 31), None, dt.date(2024, 6, 1)], dtype=object),
        }
    )
    canon = canonicalize(raw)
    assert canon["lists"].tolist()[:2] == ["[1,null]", "[2]"]
    assert canon["records"].tolist()[:2] == ['{"a":1,"b":"x"}', "{}"]
    assert canon["waited"].tolist()[::2] == [1.5, 60.0]
    assert canon["mixed"].tolist()[:2] == ["1", "a"]
    assert str(canon["days"].dtype) == "datetime64[us]"


def test_arrow_backed_sparse_and_period_columns_are_canonical_too(tmp_path):
    frame = pd.DataFrame(
        {
            "when": pd.date_range("2024-01-01", periods=4, freq="D", tz="Asia/Kolkata"),
            "tags": [["a"], [], None, ["b", "c"]],
            "n": pd.array([1, None, 3, 4], dtype="Int64"),
            "s": ["x", None, "y", "z"],
        }
    )
    frame.to_parquet(tmp_path / "d.parquet")
    arrow = pd.read_parquet(tmp_path / "d.parquet", dtype_backend="pyarrow")
    assert isinstance(arrow["when"].dtype, pd.ArrowDtype)
    assert content_hash(canonicalize(arrow)) == content_hash(canonicalize(frame))
    odd = canonicalize(
        pd.DataFrame(
            {"sparse": pd.arrays.SparseArray([0, 1, 0]), "month": pd.period_range("2024-01", periods=3, freq="M")}
        )
    )
    assert odd["sparse"].tolist() == [0, 1, 0] and odd["month"].tolist() == ["2024-01", "2024-02", "2024-03"]


def test_an_unsupported_or_uncanonical_column_is_named():
    with pytest.raises(DataError, match="column 'x' is not canonical"):
        content_hash(pd.DataFrame({"x": pd.Series([object()], dtype=object)}))


def test_write_then_read_returns_the_same_frame_and_a_full_manifest(frame, store):
    written = write_snapshot(frame, "demo", store)
    assert written.created
    assert written.uri == f"{store.uri}/{written.id}"
    loaded = read_snapshot(store, written.id)
    pd.testing.assert_frame_equal(loaded.frame, canonicalize(frame))
    manifest = loaded.manifest
    assert (manifest.id, manifest.source, manifest.rows) == (written.id, "demo", 2_000)
    assert list(manifest.columns) == sorted(frame.columns)
    assert manifest.columns["plan"] == "str"
    assert manifest.profile["total_charges"]["null_fraction"] == pytest.approx(frame["total_charges"].isna().mean())
    assert manifest.profile["age"]["quantiles"]["0.5"] == frame["age"].median()
    assert sum(manifest.profile["contract"]["top"].values()) == pytest.approx(1.0)
    assert manifest.data_bytes == (store.root / written.id / "data.parquet").stat().st_size


def test_identical_data_is_not_written_again(frame, store):
    first = write_snapshot(frame, "first.csv", store)
    before = files(store.root)
    again = write_snapshot(frame.sample(frac=1, axis=1, random_state=0), "second.parquet", store)
    assert (again.id, again.created) == (first.id, False)
    assert again.manifest.source == "first.csv"  # the stored manifest is kept, not rewritten
    assert files(store.root) == before


def test_a_changed_data_file_fails_loudly_on_read(frame, store):
    written = write_snapshot(frame, "demo", store)
    path = store.root / written.id / "data.parquet"
    tampered = pd.read_parquet(path)
    tampered.loc[0, "age"] += 1
    tampered.to_parquet(path, index=False)
    with pytest.raises(SnapshotError, match=f"snapshot {written.id[:12]} .* has changed since it was written"):
        read_snapshot(store, written.id)


def test_reusing_a_tampered_snapshot_is_refused_naming_the_snapshot_and_its_file(frame, store, tmp_path, settings):
    written = write_snapshot(frame, "demo", store)
    path = store.root / written.id / "data.parquet"
    tampered = pd.read_parquet(path)
    tampered.loc[0, "plan"] = "tampered"
    tampered.to_parquet(path, index=False)
    before = files(store.root)
    with pytest.raises(SnapshotError, match=f"snapshot {written.id[:12]} .*: {written.id}/data.parquet now hashes to"):
        write_snapshot(frame, "demo", store)
    assert files(store.root) == before  # refused, not silently repaired
    # The journey's own entry point refuses it too (same content from a file, the configured store).
    frame.to_csv(tmp_path / "same.csv", index=False)
    settings.snapshots.store = str(store.root)
    with pytest.raises(SnapshotError, match=written.id[:12]):
        take_snapshot(str(tmp_path / "same.csv"), settings)


def test_a_truncated_data_file_is_unreadable(frame, store):
    written = write_snapshot(frame, "demo", store)
    path = store.root / written.id / "data.parquet"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(SnapshotError, match="is unreadable"):
        read_snapshot(store, written.id)


def test_a_corrupt_or_foreign_manifest_is_refused(frame, store):
    written = write_snapshot(frame, "demo", store)
    manifest = store.root / written.id / "manifest.json"
    content = json.loads(manifest.read_text())
    manifest.write_text(json.dumps(content | {"id": "f" * 64}))
    with pytest.raises(SnapshotError, match="manifest for another snapshot"):
        read_snapshot(store, written.id)
    manifest.write_text("{not json")
    with pytest.raises(SnapshotError, match="corrupt manifest"):
        read_snapshot(store, written.id)


def test_a_crash_while_writing_leaves_no_snapshot_behind(frame, store, monkeypatch):
    calls = []

    def crash_on_second_row_group(self, table, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return original(self, table, *args, **kwargs)

    original = pq.ParquetWriter.write_table
    monkeypatch.setattr(snap, "ROW_GROUP", 500)
    monkeypatch.setattr(pq.ParquetWriter, "write_table", crash_on_second_row_group)
    with pytest.raises(OSError, match="disk full"):
        write_snapshot(frame, "demo", store)
    assert files(store.root) == {}  # no data file, no temp file, no manifest
    monkeypatch.undo()
    snapshot_id = content_hash(canonicalize(frame))
    with pytest.raises(SnapshotError, match="not found"):
        read_snapshot(store, snapshot_id)
    assert write_snapshot(frame, "demo", store).created  # a rerun completes it


def test_data_without_manifest_does_not_count_as_a_snapshot(frame, store):
    written = write_snapshot(frame, "demo", store)
    (store.root / written.id / "manifest.json").unlink()  # as if the process died before the manifest
    with pytest.raises(SnapshotError, match="not found"):
        read_snapshot(store, written.id)
    assert write_snapshot(frame, "demo", store).created
    assert read_snapshot(store, written.id).manifest.rows == len(frame)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", b"", "the file is empty"),
        ("header.csv", b"a,b,churned\n", "data has no rows"),
        ("garbage.parquet", b"this is not parquet", "cannot read .*garbage.parquet"),
        ("data.json", b"{}", "unsupported file type '.json'"),
        ("latin1.csv", "a,b\n\xe9,\xff\n".encode("utf-16"), "cannot read .*latin1.csv"),
    ],
)
def test_bad_sources_get_clear_errors(settings, tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        take_snapshot(str(path), settings, target="churned")


def test_missing_file_and_missing_target(settings, tmp_path, frame):
    with pytest.raises(DataError, match="cannot read .*nowhere.csv: no such file"):
        take_snapshot(str(tmp_path / "nowhere.csv"), settings)
    frame.drop(columns=["churned"]).to_csv(tmp_path / "unlabelled.csv", index=False)
    with pytest.raises(DataError, match="target column 'churned' is not in .*unlabelled.csv"):
        take_snapshot(str(tmp_path / "unlabelled.csv"), settings, target="churned")


def test_take_snapshot_of_a_file_and_of_the_demo(settings, tmp_path, frame):
    frame.to_csv(tmp_path / "d.csv", index=False)
    from_file = take_snapshot(str(tmp_path / "d.csv"), settings, target="churned")
    assert from_file.manifest.source == str(tmp_path / "d.csv")
    assert from_file.uri.startswith(str(tmp_path / ".shipway" / "snapshots"))
    demo = take_snapshot("demo", tuned(settings, data={"demo_rows": 300}))
    assert demo.manifest.rows == 300


def test_demo_seed_sources_draw_other_data_and_bad_ones_name_themselves(settings):
    from tasks.data.snapshot import check_source, read_source

    assert read_source("demo", settings).equals(read_source(f"demo:{settings.training.seed}", settings))
    assert not read_source("demo:7", settings).equals(read_source("demo", settings))
    with pytest.raises(DataError, match="cannot read demo:x: a demo source is 'demo' or 'demo:SEED'"):
        check_source("demo:x")


def test_iso_dates_in_a_csv_are_read_as_datetimes_and_other_text_stays_text(settings, tmp_path):
    (tmp_path / "d.csv").write_text(
        "day,stamp,offset,numbers,junk,impossible,mixed_zones\n"
        "2024-05-31,2024-05-31T14:00:00,2024-05-31T14:00:00+02:00,20240531,2024-05-31,2024-02-30,2024-05-31T14:00Z\n"
        "2024-06-01,2024-06-01 09:30:15.25,2024-12-01T14:00:00Z,20240601,soon,2024-03-01,2024-05-31T14:00\n"
        ",,2024-06-01T08:00:00-0500,20240602,,,\n"
    )
    read = read_source(str(tmp_path / "d.csv"), settings)
    assert {c: str(t) for c, t in read.dtypes.items()} == {
        "day": "datetime64[us]",
        "stamp": "datetime64[us]",
        "offset": "datetime64[us, UTC]",  # mixed offsets: every value to UTC
        "numbers": "int64",
        "junk": "str",
        "impossible": "str",
        "mixed_zones": "str",  # with and without an offset: no instant for some, so text
    }
    assert read["offset"].tolist() == [
        pd.Timestamp("2024-05-31T12:00:00Z"),
        pd.Timestamp("2024-12-01T14:00:00Z"),
        pd.Timestamp("2024-06-01T13:00:00Z"),
    ]
    assert pd.isna(read["day"].iloc[2])


def test_iso_text_in_a_parquet_string_column_is_read_as_the_csv_reads_it(settings, tmp_path):
    """pandas writes ISO strings (an object column) to Parquet as text: read as text, a probe's
    timestamps became 20,018 one-hot categories, and a version's signature changed between files."""
    text = pd.DataFrame({"created_at": ["2016-12-31T18:58:12Z", "2017-01-01T09:00:00Z", None], "x": [1.0, 2.0, 3.0],
                         "note": ["2016-12-31", "soon", None]})  # fmt: skip
    text.to_parquet(tmp_path / "d.parquet")
    text.to_csv(tmp_path / "d.csv", index=False)
    from_parquet = read_source(str(tmp_path / "d.parquet"), settings)
    from_csv = read_source(str(tmp_path / "d.csv"), settings)
    assert str(from_parquet["created_at"].dtype) == "datetime64[us, UTC]"
    assert from_parquet["note"].tolist()[:2] == ["2016-12-31", "soon"]  # not every value a date: text
    assert content_hash(canonicalize(from_parquet)) == content_hash(canonicalize(from_csv))


def test_a_table_from_csv_with_iso_dates_gets_the_id_of_the_same_table_from_parquet(settings, tmp_path):
    frame = pd.DataFrame(
        {
            "when": pd.Series(pd.date_range("2024-01-01", periods=50, freq="7h", tz="Europe/Berlin")),
            "day": pd.date_range("2023-01-01", periods=50, freq="D"),
            "x": np.arange(50.0),
        }
    )
    frame.loc[3, "day"] = pd.NaT
    frame.to_parquet(tmp_path / "d.parquet")
    frame.to_csv(tmp_path / "d.csv", index=False)  # offsets written as +01:00 / +02:00
    from_csv = read_source(str(tmp_path / "d.csv"), settings)
    from_parquet = read_source(str(tmp_path / "d.parquet"), settings)
    assert content_hash(canonicalize(from_csv)) == content_hash(canonicalize(from_parquet))
