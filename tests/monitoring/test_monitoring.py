"""Monitoring windows: parsing, the figures of a window, and when a breach counts as sustained."""

from datetime import UTC, datetime, timedelta

import orjson
import pandas as pd
import pytest

from configs.settings import MonitoringSettings, Settings
from core.errors import ShipwayError
from tasks.monitoring.window import parse_window, served_inputs, summarize, sustained

SETTINGS = MonitoringSettings(min_requests=10)
BUDGET_MS = 50.0  # serving.latency_budget_p99_ms


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1h", timedelta(hours=1)),
        ("30m", timedelta(minutes=30)),
        ("90s", timedelta(seconds=90)),
        ("2d", timedelta(days=2)),
        ("1.5h", timedelta(minutes=90)),
    ],
)
def test_windows_parse(text, expected):
    assert parse_window(text) == expected


@pytest.mark.parametrize("text", ["", "1", "h", "1w", "-1h", "0m", "one hour"])
def test_a_bad_window_names_itself(text):
    with pytest.raises(ShipwayError, match=f"window '{text}' is not a duration like 30m, 1h or 2d"):
        parse_window(text)


def log_rows(
    n: int,
    *,
    role: str = "production",
    source=None,
    prediction=(1,),
    latency: float = 1.0,
    start: int = 0,
    version: str = "1",
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "request_id": [f"r{start + i}" for i in range(n)],
            "model_version": version,
            "role": role,
            "source": source,
            "inputs": [orjson.dumps([{"age": 30 + i % 5, "plan": "basic"}]).decode() for i in range(n)],
            "prediction": [None if prediction is None else orjson.dumps(list(prediction)).decode()] * n,
            "latency_ms": latency,
        }
    )


NO_FEEDBACK = pd.DataFrame({"request_id": pd.Series(dtype=str), "label": pd.Series(dtype=object)})


def test_a_healthy_window_has_its_figures_and_no_breach():
    log = pd.concat([log_rows(100), log_rows(100, role="shadow")])  # shadow rows are not answers
    summary = summarize(log, NO_FEEDBACK, SETTINGS, latency_budget_ms=BUDGET_MS)
    assert summary.requests == 100
    assert summary.metrics["fallback_rate"] == 0 and summary.metrics["error_rate"] == 0
    assert summary.metrics["latency_p99_ms"] == pytest.approx(1.0)
    assert not summary.breached


def test_a_window_counts_its_requests_by_the_version_that_answered():
    """A rollback inside the window: a probe's monitor said "version 1: 1,082 requests" where 82 were version 2's."""
    log = pd.concat([log_rows(1000), log_rows(82, version="2", start=1000), log_rows(50, role="shadow", version="3")])
    summary = summarize(log, NO_FEEDBACK, SETTINGS, latency_budget_ms=BUDGET_MS)
    assert (summary.requests, summary.by_version) == (1082, {"1": 1000, "2": 82})


def test_fallbacks_errors_rejections_and_latency_breach_their_limits():
    log = pd.concat(
        [
            log_rows(80, latency=80.0),
            log_rows(5, role="fallback", source="baseline", start=100),
            log_rows(5, role="fallback", prediction=None, start=200),  # 503: every fallback failed
            log_rows(10, prediction=None, start=300),
        ]
    )  # 400: the client's input was refused
    summary = summarize(log, NO_FEEDBACK, SETTINGS, latency_budget_ms=BUDGET_MS)
    assert summary.metrics["fallback_rate"] == pytest.approx(0.10)
    assert summary.metrics["error_rate"] == pytest.approx(0.05)
    assert summary.metrics["rejected_rate"] == pytest.approx(0.10)
    assert [b.split()[0] for b in summary.breaches] == [
        "fallback_rate",
        "error_rate",
        "rejected_rate",
        "latency_p99_ms",
    ]


def test_too_few_requests_breach_nothing():
    assert not summarize(
        log_rows(5, role="fallback", prediction=None), NO_FEEDBACK, SETTINGS, latency_budget_ms=BUDGET_MS
    ).breached


def test_accuracy_comes_from_feedback_labels():
    log = log_rows(40)
    feedback = pd.DataFrame({"request_id": log["request_id"], "label": [1] * 30 + [0] * 10})
    settings = SETTINGS.model_copy(update={"min_accuracy": 0.9})
    summary = summarize(log, feedback, settings, latency_budget_ms=BUDGET_MS)
    assert summary.metrics["accuracy"] == pytest.approx(0.75)
    assert summary.metrics["labeled"] == 40
    assert summary.breaches == ["accuracy 0.75 < 0.9"]


def test_served_inputs_are_the_answered_requests_features():
    log = pd.concat([log_rows(3), log_rows(3, role="shadow")])
    inputs = served_inputs(log)
    assert list(inputs.columns) == ["age", "plan"] and len(inputs) == 3


def test_served_dates_come_back_as_datetimes_without_a_zone():
    """The gateway logs a datetime as ISO text without an offset; rows of older gateways may carry one."""
    texts = ["2024-05-31T14:00:00", None, "2024-05-31T14:00:00.250000", "2024-05-31T16:00:00+02:00"]
    log = log_rows(4).assign(inputs=[orjson.dumps([{"when": t, "note": t}]).decode() for t in texts])
    inputs = served_inputs(log, ["when", "absent"])
    assert inputs["when"].dtype.kind == "M" and inputs["when"].dt.tz is None
    assert inputs["when"].tolist()[2:] == [pd.Timestamp("2024-05-31T14:00:00.25"), pd.Timestamp("2024-05-31T14:00")]
    assert pd.isna(inputs["when"][1]) and inputs["note"].dropna().tolist() == [t for t in texts if t]  # as logged


@pytest.mark.parametrize(
    ("before", "now", "windows", "expected"),
    [
        ([True, True], True, 3, True),
        ([True, False], True, 3, False),
        ([True], True, 3, False),  # not enough history yet
        ([True, True], False, 3, False),
        ([], True, 1, True),
    ],
)
def test_a_breach_is_sustained_only_after_enough_windows_in_a_row(before, now, windows, expected):
    assert sustained(before, now, windows) is expected


def test_one_window_fills_the_trend_picture_with_its_own_time_range_and_the_limits(tmp_path):
    import matplotlib.dates as mdates

    from tasks.monitoring.trend import plot_trend, trend_figure

    limits = Settings(monitoring={"max_fallback_rate": 0.02}, serving={"latency_budget_p99_ms": 50})
    end = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    start = end - timedelta(hours=1)
    figure = trend_figure(
        [], {"drifted_columns": 0.0, "fallback_rate": 0.004, "latency_p99_ms": 7.5}, start, end, limits
    )
    drift, fallback, latency, outputs, estimated = figure.axes
    low, high = (mdates.num2date(x) for x in latency.get_xlim())
    assert start - timedelta(minutes=10) <= low <= start and end <= high <= end + timedelta(minutes=10)
    for ax in figure.axes:
        assert ax.get_ylim()[0] == 0  # no negative range for counts, rates and latencies
    assert fallback.get_ylim()[1] >= 0.02 and latency.get_ylim()[1] >= 50  # the limits are in the picture
    limit_lines = {ax: [line.get_ydata()[0] for line in ax.lines if line.get_linestyle() == "--"] for ax in figure.axes}
    assert limit_lines == {drift: [], fallback: [0.02], latency: [50.0], outputs: [0.2], estimated: []}
    assert plot_trend([], {"fallback_rate": 0.0}, start, end, limits, tmp_path / "trend.png")
    assert (tmp_path / "trend.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_trend_spans_the_logged_windows_from_the_first_start(tmp_path):
    import matplotlib.dates as mdates

    from tasks.monitoring.trend import trend_figure

    end = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    history = [  # newest first, as registry.monitoring_history gives them
        {
            "time": 0,
            "metrics": {"fallback_rate": 0.01},
            "params": {
                "start": (end - timedelta(hours=h + 1)).isoformat(),
                "end": (end - timedelta(hours=h)).isoformat(),
            },
        }
        for h in range(1, 4)
    ]
    figure = trend_figure(history, {"fallback_rate": 0.03}, end - timedelta(hours=1), end, Settings())
    low, high = (mdates.num2date(x) for x in figure.axes[1].get_xlim())
    assert end - timedelta(hours=4, minutes=15) <= low <= end - timedelta(hours=4)
    assert end <= high <= end + timedelta(minutes=15)
    assert figure.axes[1].get_ylim()[1] >= 0.03
