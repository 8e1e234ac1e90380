"""The built-in estimators and the import-path rule: each fact kept once, the settings' light
copy tied to the one training builds from."""

from __future__ import annotations

import ast

import pytest
from pydantic import ValidationError

from configs.settings import BUILT_IN_ESTIMATORS, TrainingSettings, is_import_path
from tasks.training.estimators import BUILT_INS
from tests.conftest import REPO


def test_the_settings_accept_exactly_the_built_ins_training_builds():
    # configs/settings/ cannot import scikit-learn (commands start fast), so it keeps the names.
    assert tuple(BUILT_INS) == BUILT_IN_ESTIMATORS


@pytest.mark.parametrize(
    ("estimator", "own"),
    [
        ("mypkg.models:make", True),
        ("mypkg.models:Factory.build", True),
        ("models:Net", True),
        ("random_forest", False),
        ("mypkg.models.make", False),
        ("a:b:c", False),
        ("mypkg models:make", False),
        ("1pkg:make", False),
    ],
)
def test_one_rule_says_what_is_an_import_path(estimator, own):
    assert is_import_path(estimator) is own
    if own:
        assert TrainingSettings(estimator=estimator).estimator == estimator
    else:
        assert not any(is_import_path(name) for name in BUILT_IN_ESTIMATORS)
        if estimator not in BUILT_IN_ESTIMATORS:
            with pytest.raises(ValidationError, match="must be a built-in"):
                TrainingSettings(estimator=estimator)


def test_no_module_tells_an_import_path_by_its_own_rule():
    """`":" in estimator` (or `training.estimator`) anywhere but the one rule: two rules that may disagree."""
    found = []
    for path in [*(REPO / "tasks").rglob("*.py"), *(REPO / "flows").rglob("*.py"), *(REPO / "configs").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Compare)
                and isinstance(node.left, ast.Constant)
                and node.left.value == ":"
                and "estimator" in ast.unparse(node.comparators[0])
            ):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert found == [], "use configs.settings.is_import_path"
