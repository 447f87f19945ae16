"""The generated configuration reference is current, and documents every component."""

from __future__ import annotations

from pathlib import Path

from runtime.app.reference import reference
from runtime.core.registry import components

DOC = Path(__file__).parents[1] / "docs" / "configuration.md"


def test_configuration_reference_is_up_to_date() -> None:
    assert DOC.read_text(encoding="utf-8") == reference(), (
        "docs/configuration.md is out of date: python -m runtime.app.reference > docs/configuration.md"
    )


def test_every_builtin_component_and_setting_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    for family in ("strategies", "verifiers", "tasks", "learners"):
        for name, cls in components(family).items():
            if not cls.__module__.startswith(("runtime.", "strategies.", "learners.")):
                continue
            assert f"### `{name}`" in text, f"{family} component {name} is not documented"
            for field, info in cls.model_fields.items():
                if field == cls.key:  # the name itself: documented by the heading
                    continue
                assert f"| `{field}` |" in text
                assert info.description, f"{cls.__name__}.{field} has no docstring"
