"""The configuration reference (``docs/configuration.md``), generated from the config
classes' fields and docstrings: ``python -m runtime.app.reference > docs/configuration.md``.

A test regenerates it and fails when the file is out of date, so the reference is
always what the code accepts. Only built-in components are listed (a plug-in documents
its own).
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any, Literal, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from runtime.app.config import _LEGACY, RunConfig
from runtime.core.registry import Component, components

__all__ = ["reference"]

BUILTIN = ("runtime.", "strategies.", "learners.")
FAMILIES = [
    ("policies", "Policy backends", "kind", "policy"),
    ("tasks", "Task sources", "source", "tasks"),
    ("strategies", "Strategies", "name", "strategy"),
    ("verifiers", "Verifiers", "name", "verifiers.outcome / verifiers.process"),
    ("learners", "Learners", "kind", "learner"),
]


def _type(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(json.dumps(a) for a in get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join("null" if a is type(None) else _type(a) for a in get_args(annotation))
    if origin is typing.Annotated:
        return _type(get_args(annotation)[0])
    if origin in (list, tuple, set):
        args = [a for a in get_args(annotation) if a is not Ellipsis]
        return f"list of {_type(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, Component) and annotation.family:
        return f"a {annotation.family} component"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    return getattr(annotation, "__name__", str(annotation)).replace("NoneType", "null")


def _range(field: FieldInfo) -> str:
    marks = {annotated_types.Ge: (">=", "ge"), annotated_types.Gt: (">", "gt"), annotated_types.Le: ("<=", "le"),
             annotated_types.Lt: ("<", "lt")}  # fmt: skip
    parts = []
    for m in field.metadata:
        for cls, (sign, attr) in marks.items():
            if isinstance(m, cls):
                parts.append(f"{sign} {getattr(m, attr)}")
        if isinstance(m, annotated_types.MinLen) and m.min_length:
            parts.append(f"at least {m.min_length} long")
        if callable(getattr(m, "builtin_names", None)):  # a name checked against a registry (learners.algorithms)
            parts.append(", ".join(f"`{n}`" for n in m.builtin_names()) + " or another registered name")
    return ", ".join(parts)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
    if isinstance(value, BaseModel) and not isinstance(value, Component):
        return f"see [{type(value).__name__}](#{type(value).__name__.lower()})"
    if isinstance(value, Component):
        key = type(value).key
        return f"`{json.dumps({key: getattr(value, key)})}` with its defaults"
    if isinstance(value, BaseModel):
        return f"`{json.dumps(value.model_dump(mode='json'))}`"
    if isinstance(value, set):
        value = sorted(value)
    return f"`{json.dumps(value)}`"


def _doc(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def _table(model: type[BaseModel], skip: tuple[str, ...] = (), owner: bool = False) -> list[str]:
    head = "| key | type | default | allowed | what it does |" + (" declared by |" if owner else "")
    lines = [head, "|---|---|---|---|---|" + ("---|" if owner else "")]
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        cells = [f"`{name}`", _type(field.annotation), _default(field), _range(field), _doc(field.description)]
        row = "| " + " | ".join(cells) + " |"
        if owner:
            declared = next(c.__name__ for c in reversed(model.__mro__) if name in getattr(c, "__annotations__", {}))
            row += f" {declared} |"
        lines.append(row)
    return lines


def _nested(model: type[BaseModel], seen: set[type[BaseModel]]) -> list[type[BaseModel]]:
    """Plain config models reachable from ``model``'s fields (documented in their own section)."""
    found: list[type[BaseModel]] = []
    for field in model.model_fields.values():
        stack: list[Any] = [field.annotation]
        while stack:
            t = stack.pop()
            stack.extend(get_args(t))
            is_model = isinstance(t, type) and issubclass(t, BaseModel) and not issubclass(t, Component)
            if is_model and t not in seen:
                seen.add(t)
                found.append(t)
                found.extend(_nested(t, seen))
    return found


def reference() -> str:
    """The whole reference, as Markdown."""
    out = [
        "# Configuration reference",
        "",
        "Generated from the config classes by `python -m runtime.app.reference > docs/configuration.md`",
        "(`tests/test_docs.py` fails when this file is out of date). A run config is one YAML",
        "mapping; unknown keys are errors, and a bad value is reported with its field, the value",
        "and what is allowed. Any field can be overridden on the command line:",
        "`searchlearn run CONFIG --set strategy.n=16 --set scheduler.concurrency=8`.",
        "",
        "## The run config",
        "",
        *_table(RunConfig),
        "",
    ]
    seen: set[type[BaseModel]] = set()
    for model in _nested(RunConfig, seen):
        doc = _doc(model.__doc__) if model.__doc__ and "BaseModel" not in model.__doc__ else ""
        out += [f"### {model.__name__}", "", doc, "", *_table(model), ""]
    out += [
        "## Components",
        "",
        "`policy`, `tasks`, `strategy`, `verifiers.outcome` / `verifiers.process` and `learner` each",
        "name a registered component: a name alone (`outcome: exact`), or a mapping with the name",
        "under its key and the component's settings (`strategy: {name: best_of_n, n: 8}`,",
        "`policy: {kind: local, path: bundled}`). The name may also be `module:Class`, and",
        "installed plug-ins add names through entry points (see",
        "[extending.md](extending.md)). `verifiers.process` may be a list of verifiers, each with",
        "an optional `weight`: their weighted sum.",
        "",
    ]
    for family, title, key, where in FAMILIES:
        found = {n: c for n, c in components(family).items() if c.__module__.startswith(BUILTIN)}
        out += [f"## {title}", "", f"Selected by `{where}` (key `{key}`).", ""]
        out += ["| " + key + " | class | what it is |", "|---|---|---|"]
        out += [f"| `{n}` | `{c.__module__}.{c.__name__}` | {_doc(c.__doc__)} |" for n, c in found.items()]
        out.append("")
        for n, cls in found.items():
            roles = ""
            if family == "verifiers":
                kinds = [r for r, m in (("outcome", "score"), ("process", "score_step")) if hasattr(cls, m)]
                roles = f" ({' and '.join(kinds)})"
            out += [f"### `{n}`{roles}", "", _doc(cls.__doc__), ""]
            if len(cls.model_fields) > 1:
                out += [*_table(cls, skip=(key,), owner=family == "learners"), ""]
            else:
                out += ["No settings.", ""]
            for model in _nested(cls, seen):
                out += [f"#### {model.__name__}", "", _doc(model.__doc__), "", *_table(model), ""]
    out += [
        "## Older verifier keys",
        "",
        "Configs written before verifiers were components kept their settings flat in",
        "`verifiers:`. These keys still work and go to the named verifier's own settings; a key",
        "for a verifier the section does not use is an error.",
        "",
        "| old key | verifier | its setting |",
        "|---|---|---|",
        *[f"| `{k}` | `{n}` | `{f}` |" for k, (n, f) in _LEGACY.items()],
        "| `process_weights: {a: w, ...}` | each named | `process: [{name: a, weight: w}, ...]` |",
        "",
    ]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(reference(), end="")  # noqa: T201 (a script's output)
