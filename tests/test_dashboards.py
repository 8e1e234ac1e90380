"""The docker stack's Prometheus and Grafana, checked without a Docker engine or a Grafana server.

What is checked: the alert rules and the Prometheus config pass the real `promtool` (Debian's
`prometheus` package; .ci/run installs it); each alert fires on the failure it names and none
fires on clean traffic (`promtool test rules` on synthetic series); the limits in the rules are
the production profile's; every series the dashboard and the rules draw is one a real gateway
exports at /metrics (scraped here), or a recording rule built from them; every panel's query is
valid PromQL; the provisioning files point at the services and paths compose mounts; and a real
Prometheus (the same Debian package) scraping a real gateway under traffic loads the rules
healthy, fires none, and answers every panel's query with the gateway's series (all but those of
failures a healthy gateway never had). Grafana itself cannot run here (no Docker, not in
Debian): the dashboard is not rendered, only its queries answered as Grafana would ask them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from configs.settings import load_settings
from core.vocabulary import Alias
from serving.server import running
from tasks.monitoring.window import parse_window
from tests.conftest import REPO

DOCKER = REPO / "docker"
PROMETHEUS_YML = DOCKER / "prometheus/prometheus.yml"
RULES = DOCKER / "prometheus/rules/shipway.yaml"
GRAFANA = DOCKER / "grafana"
DASHBOARD = GRAFANA / "dashboards/shipway-gateway.json"
PROFILE = REPO / "configs/production.yaml"
# Series no gateway exports: Prometheus's own `up` and `ALERTS`.
NOT_FROM_THE_GATEWAY = {"up", "ALERTS"}
METRIC = re.compile(r"(?<![\w\"'])(shipway[_:][\w:]*|up|ALERTS)\b")


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI must check the alert rules: .ci/run installs Debian's prometheus (promtool)")
        pytest.skip("no promtool (apt-get install -y --no-install-recommends prometheus); CI runs these tests")
    return found


def run_promtool(promtool: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def alert(name: str) -> dict:
    [found] = [r for r in rules() if r.get("alert") == name]
    return found


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of every panel."""
    doc = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in doc["panels"] if p["type"] != "row" for t in p["targets"]]


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


# --- the rules and the config, by promtool --------------------------------------------------


def test_rules_and_config_pass_promtool(promtool, tmp_path):
    done = run_promtool(promtool, "check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    # The config with its rule_files pointed at the repository's: both checked together.
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    config["rule_files"] = [str(RULES.parent / Path(pattern).name) for pattern in config["rule_files"]]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    done = run_promtool(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_every_dashboard_query_is_valid_promql(promtool, tmp_path):
    # promtool parses every expression of a rule file: each query becomes a recording rule.
    queries = [{"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(dashboard_queries())]
    (tmp_path / "queries.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": queries}]}))
    done = run_promtool(promtool, "check", "rules", str(tmp_path / "queries.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr


# Traffic of one gateway, a sample a minute for 40 minutes: (series, promtool's expanding notation).
CLEAN = {
    'shipway_requests_total{role="production",status="200"}': "0+1000x40",
    'shipway_requests_total{role="fallback",status="200"}': "0+5x40",  # 0.5 %
    'shipway_requests_total{role="production",status="400"}': "0+20x40",
    'shipway_request_latency_seconds_bucket{role="production",le="0.01"}': "0+990x40",
    'shipway_request_latency_seconds_bucket{role="production",le="0.05"}': "0+1025x40",
    'shipway_request_latency_seconds_bucket{role="production",le="0.1"}': "0+1025x40",
    'shipway_request_latency_seconds_bucket{role="production",le="+Inf"}': "0+1025x40",
    "shipway_prediction_log_dropped_total": "0x40",
    "shipway_prediction_log_stalled_seconds": "0x40",
    "shipway_shadow_backlog": "10x40",
    "shipway_shadow_skipped_total": "0x40",
    'shipway_integrity_failures_total{model_version="3",file="model.onnx"}': "0x40",
    'shipway_large_batches_refused_total{model_version="3",reason="timeout"}': "0x40",
    'shipway_model_load_failures_total{model_version="3"}': "0x40",
    'up{job="shipway-gateway",instance="gateway:8080"}': "1x40",
    # each sample's time is minute x 60 s: a window that ended 10 minutes before
    'shipway_monitoring_window_end_timestamp_seconds{model="churn-classifier",model_version="3"}': "-600+60x40",
}
# The same gateway on a bad day: each alert's failure, from minute 10 on.
FAILING = CLEAN | {
    'shipway_requests_total{role="fallback",status="200"}': "0+5x10 55+50x30",  # ~5 % from the fallback chain
    'shipway_requests_total{role="fallback",status="503"}': "0x10 10+10x30",  # ~1 % unanswered
    'shipway_request_latency_seconds_bucket{role="production",le="0.05"}': "0+1025x10 10260+1000x30",
    'shipway_request_latency_seconds_bucket{role="production",le="0.1"}': "0+1025x10 10310+1050x30",
    'shipway_request_latency_seconds_bucket{role="production",le="+Inf"}': "0+1025x10 10310+1050x30",
    "shipway_prediction_log_dropped_total": "0x10 40+40x30",
    "shipway_prediction_log_stalled_seconds": "0x10 90+60x30",
    "shipway_shadow_backlog": "10x10 950x30",
    "shipway_shadow_skipped_total": "0x10 30+30x30",
    'shipway_integrity_failures_total{model_version="3",file="model.onnx"}': "0x10 1+1x30",
    'shipway_large_batches_refused_total{model_version="3",reason="timeout"}': "0x10 2+2x30",
    'shipway_model_load_failures_total{model_version="3"}': "0x10 1+1x30",
    'up{job="shipway-gateway",instance="gateway:8080"}': "1x10 0x30",
    'shipway_estimated_performance_drop{model="churn-classifier",model_version="3",metric="roc_auc"}': "0.01x10 0.08x30",
    'shipway_prediction_psi{model="churn-classifier",model_version="3"}': "0.02x10 0.35x30",
    'shipway_monitoring_window_end_timestamp_seconds{model="churn-classifier",model_version="3"}': "-20000x40",
}


def firing(series: dict[str, str], expected: list[str]) -> dict:
    return {
        "interval": "1m",
        "input_series": [{"series": name, "values": values} for name, values in series.items()],
        "promql_expr_test": [
            {
                "expr": 'count by (alertname) (ALERTS{alertstate="firing"})',
                "eval_time": "35m",
                "exp_samples": [{"labels": f'{{alertname="{name}"}}', "value": 1} for name in sorted(expected)],
            }
        ],
    }


def test_each_alert_fires_on_its_failure_and_none_on_clean_traffic(promtool, tmp_path):
    alerts = [r["alert"] for r in rules() if "alert" in r]
    tests = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [firing(CLEAN, []), firing(FAILING, alerts)],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    done = run_promtool(promtool, "test", "rules", str(tmp_path / "tests.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_limits_in_the_rules_are_the_production_profiles():
    settings = load_settings(PROFILE)

    def limit(name: str, op: str) -> float:
        found = re.findall(rf"{re.escape(op)}\s*([\d.]+)", alert(name)["expr"])
        assert found, f"{name}: no `{op} number` in its expression"
        return float(found[0])

    assert limit("ShipwayLatencyP99OverBudget", ">") == settings.serving.latency_budget_p99_ms / 1000
    assert limit("ShipwayFallbackRateHigh", ">") == settings.monitoring.max_fallback_rate
    assert limit("ShipwayErrorRateHigh", ">") == settings.monitoring.max_error_rate
    for name in ("ShipwayLatencyP99OverBudget", "ShipwayFallbackRateHigh", "ShipwayErrorRateHigh"):
        assert limit(name, ">=") == settings.monitoring.min_requests, f"{name}: judged on fewer requests"
    assert limit("ShipwayShadowBacklog", ">") == 0.8 * settings.serving.shadow_queue_size
    assert limit("ShipwayEstimatedPerformanceDrop", ">") == settings.monitoring.max_estimated_drop
    assert limit("ShipwayPredictionDrift", ">") == settings.monitoring.max_prediction_psi
    window = parse_window(settings.monitoring.window).total_seconds()
    assert limit("ShipwayMonitoringStale", ">") == 3 * window


def assert_rule_test(promtool: str, tmp_path: Path, test: dict, interval: str) -> None:
    """One `promtool test rules` case against the project's rules, evaluated every `interval`."""
    (tmp_path / "tests.yaml").write_text(
        yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": interval, "tests": [test]})
    )
    done = run_promtool(promtool, "test", "rules", str(tmp_path / "tests.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_estimate_alert_fires_per_metric_past_the_limit_only(promtool, tmp_path):
    """A drop at the limit does not fire, one past it does, for that metric of that version alone."""
    drop = "shipway_estimated_performance_drop"
    series = {
        f'{drop}{{model="churn-classifier",model_version="3",metric="roc_auc"}}': "0.05x10 0.08x10",
        f'{drop}{{model="churn-classifier",model_version="3",metric="accuracy"}}': "0.02x20",
    }
    test = {
        "interval": "1m",
        "input_series": [{"series": name, "values": values} for name, values in series.items()],
        "alert_rule_test": [
            {"eval_time": "5m", "alertname": "ShipwayEstimatedPerformanceDrop", "exp_alerts": []},
            {
                "eval_time": "15m",
                "alertname": "ShipwayEstimatedPerformanceDrop",
                "exp_alerts": [
                    {
                        "exp_labels": {
                            "severity": "warning",
                            "model": "churn-classifier",
                            "model_version": "3",
                            "metric": "roc_auc",
                        },
                        "exp_annotations": {
                            "summary": "Estimated roc_auc of churn-classifier version 3 dropped by 0.080 (limit 0.05)",
                            "description": alert("ShipwayEstimatedPerformanceDrop")["annotations"]["description"],
                        },
                    }
                ],
            },
        ],
    }
    assert_rule_test(promtool, tmp_path, test, "1m")


def test_the_stale_monitoring_alert_fires_once_three_windows_went_by_without_one(promtool, tmp_path):
    """The estimate and drift series hold their last value when the monitor stops: their age is the alarm."""
    end = "shipway_monitoring_window_end_timestamp_seconds"
    series = {
        f'{end}{{model="churn-classifier",model_version="3"}}': "0x50",  # the last window ended at time 0
        f'{end}{{model="churn-classifier",model_version="2"}}': "0+300x50",  # a monitor that keeps running
    }
    stale = {"severity": "warning", "model": "churn-classifier", "model_version": "3"}
    test = {
        "interval": "5m",
        "input_series": [{"series": name, "values": values} for name, values in series.items()],
        "alert_rule_test": [
            {"eval_time": "190m", "alertname": "ShipwayMonitoringStale", "exp_alerts": []},  # 3h10m: pending
            {
                "eval_time": "200m",
                "alertname": "ShipwayMonitoringStale",
                "exp_alerts": [
                    {
                        "exp_labels": stale,
                        "exp_annotations": {
                            "summary": "No monitoring window of churn-classifier version 3 for 3h 20m 0s",
                            "description": alert("ShipwayMonitoringStale")["annotations"]["description"],
                        },
                    }
                ],
            },
        ],
    }
    assert_rule_test(promtool, tmp_path, test, "5m")


# --- every series drawn or alerted on is one a real gateway exports --------------------------


@cache
def recorded() -> dict[str, str]:
    return {r["record"]: r["expr"] for r in rules() if "record" in r}


def names_in(expr: str) -> set[str]:
    return set(METRIC.findall(expr))


def exported_by_a_gateway(settings) -> set[str]:
    """The sample names of every metric family a real gateway's /metrics declares."""
    with running(settings) as url:
        httpx.post(f"{url}/invocations", json={"dataframe_records": [{"x": 1}]}, timeout=30)  # nothing served: 503
        text = httpx.get(f"{url}/metrics", timeout=30).text
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


def test_every_series_on_the_dashboard_and_in_the_rules_is_exported_by_the_gateway(settings):
    exported = exported_by_a_gateway(settings)
    assert "shipway_requests_total" in exported and "shipway_shadow_backlog" in exported
    for name, expr in recorded().items():
        unknown = names_in(expr) - exported - recorded().keys()
        assert not unknown, f"recording rule {name} reads {sorted(unknown)}, which no gateway exports"
    for rule in rules():
        if "alert" in rule:
            unknown = names_in(rule["expr"]) - exported - recorded().keys() - NOT_FROM_THE_GATEWAY
            assert not unknown, f"alert {rule['alert']} reads {sorted(unknown)}, which no gateway exports"
    drawn = set()
    for title, expr in dashboard_queries():
        found = names_in(expr)
        assert found, f"panel {title!r}: no shipway series in {expr!r}"
        unknown = found - exported - recorded().keys()
        assert not unknown, f"panel {title!r} draws {sorted(unknown)}, which no gateway exports"
        drawn |= found
    drawn |= {n for name in drawn & recorded().keys() for n in names_in(recorded()[name])}
    families = {re.sub(r"_(total|created|bucket|count|sum)$", "", n) for n in exported if n.startswith("shipway_")}
    missed = {f for f in families if not any(re.sub(r"_(total|bucket)$", "", d) == f for d in drawn)}
    assert not missed, f"the gateway exports {sorted(missed)}, which no panel draws"


# --- the files point at each other and at the services ----------------------------------------


def mounts(service: str) -> dict[Path, str]:
    """Repository path -> where the container sees it, for the bind mounts of `service`."""
    found = {}
    for volume in compose()["services"][service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            found[(DOCKER / source).resolve()] = target
    return found


def test_prometheus_scrapes_the_gateway_and_loads_the_rules_compose_mounts():
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    targets = [t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]]
    gateway_cmd = json.loads(re.findall(r"^CMD (.*)$", (DOCKER / "Dockerfile.gateway").read_text(), re.M)[-1])
    assert targets == [f"gateway:{gateway_cmd[gateway_cmd.index('--port') + 1]}"]
    assert [job["job_name"] for job in config["scrape_configs"]] == ["shipway-gateway"]  # what `up{job=...}` reads
    assert 'job="shipway-gateway"' in alert("ShipwayGatewayDown")["expr"]
    seen = mounts("prometheus")
    assert seen[PROMETHEUS_YML] in compose()["services"]["prometheus"]["command"][0]
    [pattern] = config["rule_files"]
    assert Path(pattern).parent.as_posix() == seen[RULES.parent]
    assert RULES.match(Path(pattern).name)


def test_grafana_provisions_the_dashboard_on_the_stacks_prometheus():
    seen = mounts("grafana")
    assert seen[GRAFANA / "provisioning"] == "/etc/grafana/provisioning"
    [source] = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yaml").read_text())["datasources"]
    url = urlsplit(source["url"])
    prometheus_ports = {int(p.rsplit(":", 1)[1]) for p in compose()["services"]["prometheus"]["ports"]}
    assert url.hostname == "prometheus" and url.port in prometheus_ports
    doc = json.loads(DASHBOARD.read_text())
    for panel in doc["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == source["uid"], f"panel {panel['title']!r} names another data source"
    [provider] = yaml.safe_load((GRAFANA / "provisioning/dashboards/shipway.yaml").read_text())["providers"]
    assert provider["options"]["path"] == seen[DASHBOARD.parent]
    home = compose()["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{seen[DASHBOARD.parent]}/{DASHBOARD.name}"
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"


# --- a real Prometheus on a real gateway: the dashboard's queries return its series ----------------


@pytest.mark.slow  # trains a version and runs a gateway and Prometheus (~30 s)
def test_a_real_prometheus_on_a_real_gateway_answers_every_panel_and_loads_the_rules(small, tmp_path):
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("no prometheus binary (Debian's prometheus package, which .ci/run installs for promtool)")
    from tasks.data.demo_data import TARGET, generate
    from tasks.promotion.traffic import Replay
    from tasks.release.aliases import move
    from tests.conftest import free_port, register_versions, wait_for

    register_versions(small, 1)
    move(small, "churn-classifier", {Alias.PRODUCTION: "1"}, actor="test", reason="setup")
    with running(small) as url:
        config = yaml.safe_load(PROMETHEUS_YML.read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(RULES)]
        [job] = config["scrape_configs"]
        job["static_configs"] = [{"targets": [urlsplit(url).netloc]}]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        server = subprocess.Popen(
            [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        api = f"http://127.0.0.1:{port}/api/v1"
        try:
            replay = Replay(url, generate(500, seed=3), TARGET, feedback_share=0.0, max_rate=50)
            replay.start()

            def query(expr: str) -> list:
                answer = httpx.get(f"{api}/query", params={"query": expr}, timeout=10).json()
                assert answer["status"] == "success", f"{expr!r}: {answer}"
                return answer["data"]["result"]

            def recorded() -> bool:
                try:
                    return bool(_answers(query, "shipway:request_latency_seconds:p99_5m"))
                except ValueError:  # Prometheus still starting: its API answers in plain text until ready
                    return False
                except httpx.ConnectError:  # not listening yet (a loaded machine); a Prometheus that exited fails below
                    assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
                    return False

            wait_for(recorded, 90, "a recorded p99")
            replay.stop()
            empty = [(title, expr) for title, expr in dashboard_queries() if not query(expr)]
            # Only failures the healthy gateway never had draw nothing: fallbacks, errors, refusals, the Shadow.
            # The monitoring row: no `shipway monitor` window has run on this version.
            quiet = ("Fallbacks", "Errors", "refused", "Integrity", "Shadow", "load failures", "failures", "monitoring")
            assert all(any(word in title for word in quiet) for title, _ in empty), [t for t, _ in empty]
            assert {title for title, _ in dashboard_queries()} - {title for title, _ in empty} >= {
                "Requests by role and status",
                "Answers by version",
                "Latency p99 against the budget (serving.latency_budget_p99_ms = 50 ms)",
                "Prediction-log rows: written, dropped",
                "Served versions",
            }
            groups = httpx.get(f"{api}/rules", timeout=10).json()["data"]["groups"]
            loaded = [rule for group in groups for rule in group["rules"]]
            assert len(loaded) == len(rules()) and all(r["health"] == "ok" for r in loaded), loaded
            firing = [r["name"] for r in loaded if r["type"] == "alerting" and r["state"] != "inactive"]
            assert firing == [], f"alerts on a healthy gateway: {firing}"
        finally:
            server.terminate()
            server.wait(timeout=30)


def _answers(query, expr: str) -> bool:
    result = query(expr)
    return bool(result) and result[0]["value"][1] not in ("NaN", "0")
