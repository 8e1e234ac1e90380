"""`shipway demo`: the whole journey on generated data, with live traffic through a real gateway.

1. train a first version on the demo data; with nothing in Production yet, promote it (an
   approval, answered by the demo itself unless `manual`);
2. train a second version on a fresh draw of the same distribution (the gate checks it against
   Production's contract, the benchmark times it): it becomes Shadow;
3. start the gateway, replay demo traffic through it (with feedback labels), and promote the
   second version: shadow analysis, approval, canary steps, approval, Production. The replay holds
   while an approval is awaited: a person may take minutes, and traffic then would only fill the log.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from configs.settings import Settings
from core.vocabulary import Alias, Tag
from flows.approval import AutoApprover
from flows.promote import PromotionResult, promotion_flow
from flows.train import TrainingResult, training_flow
from serving.server import running
from tasks.data.demo_data import generate
from tasks.promotion.traffic import Replay
from tasks.release import registry

REVIEWER = "shipway demo (auto-approval; run with --manual to decide yourself)"
TRAFFIC_ROWS = 5_000


@dataclass
class DemoResult:
    trained: list[TrainingResult]
    promoted: list[PromotionResult]
    requests: int
    seconds: float


def run_demo(settings: Settings, manual: bool, say: Callable[[str], None]) -> DemoResult:
    start = time.perf_counter()
    name = settings.training.model_name
    first = training_flow(data="demo", settings=settings)
    say(f"trained {name} version {first.version} (gate: {first.gate}); it is Shadow")
    trained, promoted = [first], []
    aliases, _ = registry.model_state(settings, name)
    if Alias.PRODUCTION.value not in aliases:
        say("nothing is in Production yet: promoting it directly (no live traffic to compare with)")
        promoted.append(_promote(settings, name, first.version, manual, decisions=1))

    seed = settings.training.seed + 1 + int(first.version)  # a fresh draw each time the demo runs
    second = training_flow(data=f"demo:{seed}", settings=settings)
    trained.append(second)
    say(f"trained version {second.version} on fresh data (demo:{seed}; gate against Production: {second.gate})")
    with running(settings) as url:
        replay = Replay(
            url,
            generate(TRAFFIC_ROWS, seed=seed + 1000),
            settings.data.target,
            api_token=settings.serving.api_token.get_secret_value(),
            hold=lambda: Tag.AWAITING_APPROVAL in registry.model_state(settings, name)[1],
            on_hold=lambda held: say(
                "replay held: the promotion waits for approval, no traffic is sent until it is answered"
                if held
                else "approval answered: replaying traffic again"
            ),
        )
        replay.start()
        say(f"gateway on {url}, replaying demo traffic with feedback labels; promoting version {second.version}")
        try:
            promoted.append(_promote(settings, name, second.version, manual, decisions=2))
        finally:
            replay.stop()
    return DemoResult(trained, promoted, replay.sent, time.perf_counter() - start)


def _promote(settings: Settings, name: str, version: str, manual: bool, decisions: int) -> PromotionResult:
    approver = None
    if not manual:
        approver = AutoApprover(
            settings,
            name,
            [True] * decisions,
            reviewer=REVIEWER,
            comment="approved by the demo on the evidence shown in the flow's artifacts",
        )
        approver.start()
    try:
        return promotion_flow(name=name, version=version, actor="shipway demo", settings=settings)
    finally:
        if approver is not None:
            approver.stop()
