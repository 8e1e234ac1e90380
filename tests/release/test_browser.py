"""The release as a person sees it: the MLflow UI (`shipway ui`) in headless Chromium.

What a reviewer looks for on the version page must be on the first screen, not inside the
scrolled tag box: the aliases, the git commit, the snapshot id, the validation status, the
latency p99 and who approved. Screenshots are kept under the test's tmp dir (paths printed).
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from core.vocabulary import Alias, Tag
from tasks.release import registry
from tasks.release.aliases import move
from tasks.release.decisions import record_approval
from tasks.release.record import EXPERIMENT
from tests.conftest import free_port, register_versions

CHROMIUM = Path("/usr/bin/chromium")
SHIPWAY = str(Path(sys.executable).with_name("shipway"))
NAME = "churn-classifier"
VIEWPORT = {"width": 1600, "height": 1000}
pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def chromium():
    if not CHROMIUM.is_file():
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser tests: .ci/run installs Debian's chromium")
        pytest.skip(f"no {CHROMIUM} (apt-get install -y chromium); CI runs these tests")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def release(small):
    """A demo store: version 1 Production after two approvals by rita, version 2 Shadow, benchmarked."""
    [(v1, _, snapshot), _] = register_versions(small, 2)
    for version, p99 in (("1", "3.21"), ("2", "3.5")):
        registry.set_version_tags(
            small,
            NAME,
            version,
            {
                "validation_status": "pass",
                "latency_p50_ms": "1.1",
                "latency_p95_ms": "2.2",
                "latency_p99_ms": p99,
                "latency_budget_p99_ms": "50",
                "latency_gate": "passed",
                "quality_gate": "passed",
            },
        )
    for stage in ("shadow", "production"):
        record_approval(
            small,
            NAME,
            "1",
            stage=stage,
            decision="approved",
            reviewer="rita",
            comment="looked at the canary",
            flow_run="0" * 32,
            evidence=[],
        )
    move(small, NAME, {Alias.PRODUCTION: "1"}, actor="rita", reason="first release")
    move(small, NAME, {Alias.SHADOW: "2"}, actor="training flow", reason="trained")
    return small, v1, snapshot


@pytest.fixture
def ui(release, tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [SHIPWAY, "ui", "--port", str(port)], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert server.poll() is None, server.stderr.read().decode()[-2000:]
        try:
            if httpx.get(f"{url}/ajax-api/2.0/mlflow/registered-models/get?name={NAME}", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "shipway ui did not answer in 120 s"
        time.sleep(0.5)
    yield url
    server.terminate()
    server.wait(timeout=30)


ML = "?workflowType=machine_learning"  # MLflow 3.17's UI view switch (GenAI is its default)
ON_TOP = """el => {  // the text is what the eye meets at its place: not clipped by a box, not covered
    const r = el.getBoundingClientRect();
    const hit = document.elementFromPoint(r.left + Math.min(r.width / 2, 8), r.top + r.height / 2);
    return hit !== null && (el.contains(hit) || hit.contains(el));
}"""


def first_screen(page, text: str) -> bool:
    """`text` is shown within the first screen: no scrolling of the page or of a box needed to see it."""
    found = page.get_by_text(text, exact=False).first
    found.wait_for(state="visible", timeout=30_000)
    box = found.bounding_box()
    inside = box is not None and box["y"] >= 0 and box["y"] + box["height"] <= VIEWPORT["height"]
    return inside and found.evaluate(ON_TOP)


def test_the_version_page_shows_the_release_at_a_glance(chromium, release, ui, tmp_path):
    settings, _, snapshot = release
    page = chromium.new_page(viewport=VIEWPORT)
    page.goto(f"{ui}/#/models/{NAME}/versions/1{ML}")
    page.get_by_text("Release at a glance").first.wait_for(timeout=60_000)
    shot = tmp_path / "version-page.png"
    page.screenshot(path=str(shot))
    print(f"screenshot: {shot}")
    version = registry.get_version(settings, NAME, "1")
    for fact in (
        "Production",  # the alias
        version.tags["git_commit"][:12],
        snapshot.id[:12],
        "validation",
        "3.21 ms",  # latency p99
        "approved by rita",
    ):
        assert first_screen(page, fact), f"'{fact}' is not on the first screen of the version page ({shot})"
    assert max(len(v) for v in version.tags.values()) <= 250

    page.goto(f"{ui}/#/models/{NAME}{ML}")  # the registered model: its description says what it is
    page.get_by_text("How a version ships").first.wait_for(timeout=60_000)
    page.screenshot(path=str(tmp_path / "model-page.png"))
    print(f"screenshot: {tmp_path / 'model-page.png'}")


def test_the_run_pages_show_the_training_and_the_audit_trail(chromium, release, ui, tmp_path):
    settings, v1, _ = release
    client, training = registry.connect(settings)
    page = chromium.new_page(viewport=VIEWPORT)
    page.goto(f"{ui}/#/experiments/{training}{ML}")  # the training experiment, in the model-training view
    page.get_by_text("Model training").first.wait_for(timeout=60_000)
    assert first_screen(page, "train-")
    page.goto(f"{ui}/#/experiments/{training}/runs/{v1.run_id}{ML}")
    page.get_by_text("roc_auc").first.wait_for(timeout=60_000)
    page.screenshot(path=str(tmp_path / "training-run.png"))
    print(f"screenshot: {tmp_path / 'training-run.png'}")

    record_run = registry.model_state(settings, NAME)[1][Tag.RELEASE_RECORD]
    releases = registry.connect(settings, experiment=EXPERIMENT)[1]
    page.goto(f"{ui}/#/experiments/{releases}/runs/{record_run}/artifacts{ML}")
    page.get_by_text("transitions.json").first.click(timeout=60_000)  # the audit trail, shown as a table
    page.get_by_text("first release").first.wait_for(timeout=60_000)
    shot = tmp_path / "release-record.png"
    page.screenshot(path=str(shot))
    print(f"screenshot: {shot}")
    assert first_screen(page, "training flow")  # who moved what, without scrolling the table
    assert client.get_experiment(releases).tags["mlflow.experimentKind"] == "custom_model_development"


def test_without_the_view_parameter_the_ui_still_opens_the_model_training_view(chromium, release, ui, tmp_path):
    """A link without ?workflowType (a bookmark, a colleague's link, MLflow's own links) opens the
    model-training view, not GenAI's Traces: `shipway ui` serves MLflow with the app `shipway`."""
    settings, _, _ = release
    run_id = registry.log_window(
        settings,
        NAME,
        run_name=f"{NAME} 2026-12-07 06:00",
        params={"window": "1h", "version": "1"},
        metrics={"requests": 120.0, "fallback_rate": 0.0},
        tags={"version": "1", "drift": "pass", "breached": "false", "breaches": ""},
        files=[],
    )
    _, monitoring = registry.connect(settings, experiment=settings.monitoring.experiment)
    page = chromium.new_page(viewport=VIEWPORT)  # a fresh browser: no view chosen yet
    page.goto(f"{ui}/#/experiments/{monitoring}")
    page.get_by_text(f"{NAME} 2026-12-07 06:00").first.wait_for(timeout=60_000)  # the windows' runs table
    assert "/runs" in page.url and "workflowType=machine_learning" in page.url, page.url
    page.screenshot(path=str(tmp_path / "monitoring-experiment.png"))
    print(f"screenshot: {tmp_path / 'monitoring-experiment.png'}")
    page.goto(f"{ui}/#/experiments/{monitoring}/runs/{run_id}")
    page.get_by_text("fallback_rate").first.wait_for(timeout=60_000)
    page.goto(f"{ui}/#/models/{NAME}/versions/1")
    page.get_by_text("Release at a glance").first.wait_for(timeout=60_000)
    assert page.evaluate("localStorage.getItem('mlflow.workflowType_v1')") == '"machine_learning"'
    page.screenshot(path=str(tmp_path / "version-page-plain.png"))
    # The user's own choice still wins: GenAI picked once stays picked.
    page.evaluate("localStorage.setItem('mlflow.workflowType_v1', JSON.stringify('genai'))")
    page.goto(f"{ui}/#/experiments/{monitoring}")
    page.reload()  # the page is loaded again: shipway's script runs at its start, before the app
    # Left as the user chose it (the app's own address change on reading it is MLflow's, and slow here).
    assert page.evaluate("localStorage.getItem('mlflow.workflowType_v1')") == '"genai"'
