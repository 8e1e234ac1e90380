"""POST /feedback: ground-truth labels by request id, checked before any of them is logged.

A call is taken whole or refused whole (a 4xx naming the first label at fault), so a client never
has to work out which of its labels were kept:
- at most `serving.max_feedback_labels` labels a call (413 beyond);
- each label fits the model's task, as the served versions' tags `task` and `classes` say: one of
  a classifier's classes (as JSON types them: "1" is not the class 1, 1.0 is), a finite number for
  a regression model. A version without these tags (a model registered outside shipway) takes any
  string, number or boolean;
- each request id was answered by this gateway's model (the gateway checks its own recent ids,
  then the prediction log): a label for an id never served would join nothing, so it is a
  client's mistake or someone else's noise, never evidence.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from core.vocabulary import Tag, Task
from serving import request_ids
from serving.schema import BadInput, json_text

SHOWN = 5  # unknown ids named in a refusal; the rest are counted


@dataclass(frozen=True)
class Item:
    where: str  # "feedback" or "feedback[i]": how a message names it
    request_id: str
    label: Any


@dataclass(frozen=True)
class LabelRule:
    """What labels one served version can be scored on: its task and, for a classifier, its classes."""

    task: Task
    classes: tuple | None = None

    @classmethod
    def of(cls, tags: dict[str, str]) -> LabelRule | None:
        """From a version's tags; None for a version without shipway's task tag."""
        try:
            task = Task(tags.get(Tag.TASK, ""))
        except ValueError:
            return None
        classes = tuple(json.loads(tags[Tag.CLASSES])) if Tag.CLASSES in tags else None
        return cls(task, classes if task.is_classification else None)


def check_content_type(content_type: bytes | None) -> None:
    """JSON only: a browser posts text/plain (and no content type) cross-site without a preflight."""
    mime = (content_type or b"").split(b";")[0].strip().lower()
    if mime != b"application/json":
        shown = mime.decode("latin-1") or "none"
        raise BadInput(
            f"send the labels as JSON with 'Content-Type: application/json' (got {shown})", 415, "BAD_REQUEST"
        )


def parse(body: bytes, max_labels: int) -> list[Item]:
    """`{"request_id": ..., "label": ...}` or a list of them; each label a string, number or boolean."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadInput(f"malformed JSON: {exc}", 400, "BAD_REQUEST") from None
    items = doc if isinstance(doc, list) else [doc]
    if not items:
        raise BadInput('no labels: send {"request_id": ..., "label": ...} or a list of them')
    if len(items) > max_labels:
        raise BadInput(
            f"{len(items)} labels in one call, more than the limit of {max_labels} (serving.max_feedback_labels): "
            "send them in smaller calls",
            413,
            "REQUEST_LIMIT_EXCEEDED",
        )
    out = []
    for i, item in enumerate(items):
        where = f"feedback[{i}]" if isinstance(doc, list) else "feedback"
        if not isinstance(item, dict):
            raise BadInput(f"{where} must be an object with 'request_id' and 'label'")
        extra = sorted(set(item) - {"request_id", "label"})
        if extra:
            raise BadInput(f"{where}: unknown key(s) {', '.join(map(repr, extra))}; send 'request_id' and 'label'")
        request_id = item.get("request_id")
        if not isinstance(request_id, str) or not request_ids.valid(request_id):
            raise BadInput(f"{where}: 'request_id' must be the X-Request-Id of an answered request")
        label = item.get("label")
        if label is None or isinstance(label, (list, dict)):
            raise BadInput(f"{where}: 'label' must be a string, number or boolean, got {_shown(label)}")
        out.append(Item(where, request_id, label))
    return out


def check_labels(items: list[Item], rules: Iterable[LabelRule]) -> list[Item]:
    """The items with each label as it will be logged (a class as the model names it: 1.0 -> 1);
    BadInput naming the first label no served version could be scored on."""
    rules = list(dict.fromkeys(rules))
    if not rules:
        return items
    out = []
    for item in items:
        fitted = [label for rule in rules if (label := _fit(item.label, rule)) is not _MISFIT]
        if not fitted:
            raise BadInput(f"{item.where}: {_problem(item.label, rules)}")
        out.append(Item(item.where, item.request_id, fitted[0]))
    return out


def unknown_ids(items: list[Item], unknown: set[str]) -> BadInput:
    """The refusal of a call with labels for ids this model never answered, naming them."""
    first = {item.request_id: item for item in reversed(items)}  # each id named once, where it first appears
    missing = sorted((first[i] for i in unknown), key=items.index)
    named = ", ".join(f"'{item.request_id}' ({item.where})" for item in missing[:SHOWN])
    more = f" and {len(missing) - SHOWN} more" if len(missing) > SHOWN else ""
    return BadInput(
        f"no request was answered under the id(s) {named}{more}: a label is taken only for the X-Request-Id "
        "of a request this model answered; none of this call's labels was logged"
    )


_MISFIT = object()


def _fit(label: Any, rule: LabelRule) -> Any:
    """The label as logged under `rule`, or _MISFIT."""
    if rule.task is Task.REGRESSION:
        number = isinstance(label, (int, float)) and not isinstance(label, bool)
        return label if number and math.isfinite(label) else _MISFIT
    if rule.classes is None:  # a classifier whose classes were not recorded
        return label
    return next((c for c in rule.classes if _key(c) == _key(label)), _MISFIT)


def _key(value: Any) -> tuple:
    """Equal for a class and a label naming it: 1 and 1.0 alike; "1", 1 and true apart."""
    if isinstance(value, bool):
        return ("boolean", value)
    if isinstance(value, (int, float)):
        return ("number", float(value))
    return (type(value).__name__, value)


def _problem(label: Any, rules: list[LabelRule]) -> str:
    classes = [c for rule in rules for c in rule.classes or ()]
    if classes:
        shown = ", ".join(_shown(c) for c in dict.fromkeys(classes))
        return f"label {_shown(label)} is not one of the model's classes: {shown}"
    return f"label {_shown(label)} is not a finite number, as a regression model's label must be"


def _shown(value: Any) -> str:
    return json_text(value, 40)
