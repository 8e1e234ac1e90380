"""The docs follow the code: the configuration reference is what the settings' schema generates,
every setting is described, every error message docs/troubleshooting.md lists is one the code
still raises, and every relative link in the docs leads to a file."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from configs.reference import DOC, render
from configs.settings import Settings
from tests.conftest import REPO

CODE = ["core", "configs", "expectations", "flows", "serving", "tasks"]
TROUBLESHOOTING = REPO / "docs" / "troubleshooting.md"
# A placeholder in a documented message: <what>, '<what>', "<what>" or `...` (free text).
PLACEHOLDER = re.compile(r"""(['"]?)<[a-z][a-z0-9 _.,/-]*>\1|\.\.\.""")
HOLE = re.compile(r"%[-+ #0-9.]*[sdrfg]|\{[^{}]*\}")  # %-style and str.format fields in plain strings


def test_every_setting_has_a_description():
    missing = [
        f"{section}.{key}"
        for section, field in Settings.model_fields.items()
        for key, leaf in field.annotation.model_fields.items()
        if not (leaf.description or "").strip()
    ]
    assert missing == []


def test_the_configuration_reference_is_what_the_settings_generate():
    assert DOC.read_text() == render(DOC.read_text()), (
        "docs/configuration.md is out of date: run `python -m configs.reference`"
    )


def documented_messages() -> list[str]:
    """Every message docs/troubleshooting.md lists: each `code span` in the first cell of a table row."""
    messages = []
    for line in TROUBLESHOOTING.read_text().splitlines():
        if not line.startswith("| ") or line.startswith(("| message", "| ---")):
            continue
        first = line[2:].split(" | ", 1)[0]
        messages += re.findall(r"`([^`]+)`", first)
    return messages


def fragments(message: str) -> list[str]:
    """The literal parts of a documented message: what the code must hold word for word."""
    return [part for part in PLACEHOLDER.split(message) if part and re.search(r"[A-Za-z]", part)]


def code_pieces() -> set[str]:
    """The literal text of every string in the code: an f-string's parts between its fields, a plain
    string's parts between its %-style or format fields."""
    pieces: set[str] = set()
    for package in CODE:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.JoinedStr):
                    pieces |= {v.value for v in node.values if isinstance(v, ast.Constant)}
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    pieces |= set(HOLE.split(node.value))
    return pieces


def test_troubleshooting_lists_messages_in_the_documented_form():
    messages = documented_messages()
    assert len(messages) >= 40  # the whole list was read, not one section of it
    assert all(fragments(m) for m in messages), "a message made only of placeholders says nothing"


def test_every_documented_error_message_is_still_in_the_code():
    code = CodeText()
    gone = {message: [part for part in fragments(message) if not code.has(part)] for message in documented_messages()}
    assert {m: parts for m, parts in gone.items() if parts} == {}, (
        "docs/troubleshooting.md lists messages the code no longer has (fragments not found)"
    )


class CodeText:
    """The code's string pieces. A message the code puts together from several strings (a prefix and
    a reason) is found too: a fragment may run from the end of one piece through whole pieces into
    the start of another, but it may join pieces only where they end and begin."""

    def __init__(self):
        self.pieces = code_pieces()
        self.suffixes = {p[i:] for p in self.pieces for i in range(len(p))}
        self.prefixes = {p[:i] for p in self.pieces for i in range(1, len(p) + 1)}

    def has(self, fragment: str) -> bool:
        if any(fragment in piece for piece in self.pieces):
            return True
        n = len(fragment)
        joins = [i for i in range(1, n) if not (fragment[i - 1].isalnum() and fragment[i].isalnum())]  # not mid-word
        reached = [i for i in joins if fragment[:i] in self.suffixes]
        seen = set(reached)
        while reached:
            i = reached.pop()
            if fragment[i:] in self.prefixes:
                return True
            for j in joins:
                if j > i and j not in seen and fragment[i:j] in self.pieces:
                    seen.add(j)
                    reached.append(j)
        return False


def test_a_fragment_may_join_pieces_only_where_they_end_and_begin():
    code = CodeText.__new__(CodeText)
    code.pieces = {"promotion of ", " stopped: ", "canary ", " breached: ", "x"}
    code.suffixes = {p[i:] for p in code.pieces for i in range(len(p))}
    code.prefixes = {p[:i] for p in code.pieces for i in range(1, len(p) + 1)}
    assert code.has(" stopped: canary ") and code.has("of  stopped: can")
    assert not code.has(" stopped: the canary ")  # a word the code does not have
    assert not code.has("promotion  stopped")  # "promotion " does not end a piece
    assert not code.has(" stopped: canaryx")  # nor do pieces join inside a word


def test_the_placeholder_reading_of_a_message():
    message = "promotion of '<name>' version <n> stopped: canary <share> breached: ..."
    assert fragments(message) == ["promotion of ", " version ", " stopped: canary ", " breached: "]


DOCS = [
    REPO / "README.md",
    REPO / "CONTRIBUTING.md",
    REPO / "docker" / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
]


# Written on other branches at the same time; the README's index already names them.
@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_lead_to_files_and_headings(doc):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists() or (anchor and path.suffix == ".md" and anchor not in anchors(path)):
            broken.append(target)
    assert broken == []


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces to dashes (code blocks skipped)."""
    found, fenced = set(), False
    for line in path.read_text().splitlines():
        fenced ^= line.startswith("```")
        if line.startswith("#") and not fenced:
            found.add(re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-"))
    return found


def test_the_readme_stays_short_and_starts_with_the_two_commands():
    readme = (REPO / "README.md").read_text()
    assert len(readme.encode()) <= 12 * 1024
    setup = "python3 -m venv .venv && .venv/bin/pip install -q 'uv>=0.13' && .venv/bin/uv sync --frozen --inexact"
    commands = [line for line in readme.splitlines() if line.startswith(setup)]
    assert commands == [f"{setup} && .venv/bin/shipway demo", f"{setup} && .venv/bin/pytest"]
    assert commands[1] in (REPO / ".ci" / "run").read_text()  # CI runs the README's test command


ARCHITECTURE = REPO / "docs" / "architecture.md"


def import_order() -> list[list[str]]:
    """docs/architecture.md's numbered list: the packages (`tasks/gate/`) and modules (`tasks/features.py`) of each line."""
    return [
        re.findall(r"`([^`]+)`", line) for line in ARCHITECTURE.read_text().splitlines() if re.match(r"\d+\. `", line)
    ]


def imports(path: Path) -> set[str]:
    """The shipway modules a file imports, anywhere in it (lazily, or only for the type checker, too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] in CODE}


def test_the_architecture_names_every_package_and_imports_follow_its_order():
    lines = import_order()
    assert len(lines) >= 5, "docs/architecture.md: the numbered list of the import order was not found"
    line_of = {entry: i for i, entries in enumerate(lines) for entry in entries}

    def entry(path: str) -> str | None:
        """The list's entry holding a file: `tasks/features.py` itself, or the longest folder around it."""
        return max((e for e in line_of if path == e or (e.endswith("/") and path.startswith(e))), key=len, default=None)

    files = sorted(str(p.relative_to(REPO)) for package in CODE for p in (REPO / package).rglob("*.py"))
    unnamed = [f for f in files if entry(f) is None and f != "tasks/__init__.py"]
    assert unnamed == [], "docs/architecture.md's import order does not name the package of these files"

    def file_of(module: str) -> str | None:
        for candidate in (module.replace(".", "/") + ".py", module.replace(".", "/") + "/__init__.py"):
            if (REPO / candidate).is_file():
                return candidate
        return None

    upward = []
    for f in files:
        source = entry(f)
        for module in imports(REPO / f):
            target = entry(file_of(module) or "")
            if source and target and target != source and line_of[target] >= line_of[source]:
                upward.append(f"{f} imports {module} ({target}, line {line_of[target] + 1} of the order)")
    assert upward == [], "imports that do not point to an earlier line of docs/architecture.md's order"


def table(doc: Path, header: str) -> list[list[str]]:
    """The rows of the table in `doc` whose header row starts with `header`, as lists of cells."""
    lines = doc.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header}"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_the_estimator_table_is_the_built_ins_training_builds():
    from tasks.training.estimators import BUILT_INS, CLASSIFICATION, REGRESSION

    documented = {
        re.search(r"`([^`]+)`", name)[1]: (classifier, regressor)
        for name, classifier, regressor in table(REPO / "docs" / "bring-your-own-model.md", "name |")
    }
    built = {
        name: tuple(family[kind].__name__ if kind in family else "-" for kind in (CLASSIFICATION, REGRESSION))
        for name, family in BUILT_INS.items()
    }
    assert documented == built, (
        "docs/bring-your-own-model.md's estimator table differs from tasks/training/estimators.py"
    )


def test_the_metric_table_is_the_metrics_the_gate_computes():
    from configs.settings import DEFAULT_METRIC
    from core.vocabulary import Task
    from tasks.training.quality_metrics import metrics_of

    documented = {
        Task(task.split()[0]): (re.findall(r"`([^`]+)`", default), re.findall(r"`([^`]+)`", allowed))
        for task, default, allowed in table(REPO / "docs" / "quality-gate.md", "task (`training.task`")
    }
    computed = {
        task: ([default], [m for m in metrics_of(task) if m != default]) for task, default in DEFAULT_METRIC.items()
    }
    assert {t: (d, sorted(a)) for t, (d, a) in documented.items()} == {
        t: (d, sorted(a)) for t, (d, a) in computed.items()
    }, "docs/quality-gate.md's metric table differs from tasks/training/quality_metrics.py"


def test_the_holdout_metrics_table_is_what_a_run_logs():
    """docs/bring-your-own-model.md's metric_* tags per task: the gate's metrics of the task, and
    for multiclass the one-vs-rest roc_auc a run logs but the gate does not judge."""
    from core.vocabulary import Task
    from tasks.training.quality_metrics import metrics_of

    documented = {
        Task(task): set(re.sub(r"\([^)]*\)", "", metrics).replace(" ", "").split(","))  # "(one-vs-rest)" dropped
        for task, metrics, *_ in table(REPO / "docs" / "bring-your-own-model.md", "task | holdout metrics")
    }
    logged = {task: set(metrics_of(task)) for task in documented}
    logged[Task.MULTICLASS] |= {"roc_auc"}
    assert documented == logged
