"""Components by name: what the run config is assembled from.

A *family* (strategies, verifiers, learners, tasks) is a base class derived from
:class:`Component`; a component is a subclass with a ``Literal`` name field (the
family's ``key``, ``name`` by default) and its settings as documented, range-checked
pydantic fields. Defining such a subclass registers it: no central list is edited.

A config section names its component, and :func:`lookup` finds the class:

1. registered already (its module was imported);
2. ``module:Class``: imported, then checked to belong to the family;
3. an entry point of that name in the group ``searchlearn.<family>`` (how third-party
   packages add components: ``[project.entry-points."searchlearn.strategies"]``);
4. the family's built-in packages, imported module by module (so a new built-in file
   registers itself by existing).

Design decisions:
- Lookup is lazy: a run only imports the components it names (and a learner family
  that needs torch is imported only by a config with a learner).
- Two different classes may not claim one name in a family; the error names both.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, SerializeAsAny

from runtime.core.errors import ConfigError

__all__ = [
    "Component",
    "ComponentField",
    "component_name",
    "components",
    "lookup",
    "register_builtins",
    "validate_component",
]

_REGISTRY: dict[str, dict[str, type[Component]]] = {}
_BUILTINS: dict[str, list[str]] = {}
_SCANNED: set[str] = set()
_KEYS: dict[str, str] = {}
_DEFAULTS: dict[str, str | None] = {}


class Component(BaseModel):
    """Base of every configurable component: settings are fields, unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)

    family: ClassVar[str] = ""
    """The registry this class and its subclasses register in (set by a family base)."""
    key: ClassVar[str] = "name"
    """The field that names a component in its config section."""
    default_component: ClassVar[str | None] = None
    """The component a section without the key means (None: the key is required)."""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        name = component_name(cls)
        if not cls.family:
            return
        if name is None:  # a family base (its key field is a plain str)
            _KEYS.setdefault(cls.family, cls.key)
            _DEFAULTS.setdefault(cls.family, cls.default_component)
            return
        family = _REGISTRY.setdefault(cls.family, {})
        other = family.get(name)
        if other is not None and _qualname(other) != _qualname(cls):
            raise ConfigError(
                f"{cls.family} component name {name!r} is claimed by both {_qualname(other)} and {_qualname(cls)}"
            )
        family[name] = cls


def _qualname(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def component_name(cls: type[Component]) -> str | None:
    """The single ``Literal`` value of ``cls``'s key field, or None for an abstract base."""
    field = cls.model_fields.get(cls.key)
    if field is None or get_origin(field.annotation) is not Literal:
        return None
    values = get_args(field.annotation)
    return str(values[0]) if len(values) == 1 else None


def register_builtins(family: str, *packages: str) -> None:
    """Packages whose modules hold the family's built-in components (imported on demand)."""
    listed = _BUILTINS.setdefault(family, [])
    listed.extend(p for p in packages if p not in listed)


def _scan(family: str) -> None:
    for package in _BUILTINS.get(family, []):
        if package in _SCANNED:
            continue
        _SCANNED.add(package)
        module = importlib.import_module(package)
        for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
            if not info.name.startswith("_"):
                importlib.import_module(f"{package}.{info.name}")


def _entry_point(family: str, name: str) -> type[Component] | None:
    for ep in entry_points(group=f"searchlearn.{family}"):
        if ep.name == name:
            return _checked(family, ep.load(), f"entry point {ep.name} = {ep.value}")
    return None


def _checked(family: str, obj: Any, origin: str) -> type[Component]:
    registered = _REGISTRY.get(family, {})
    if not (isinstance(obj, type) and obj in registered.values()):
        raise ConfigError(f"{origin} is not a {family} component (a subclass of the family's base with a Literal name)")
    return obj


def lookup(family: str, name: str) -> type[Component]:
    """The class of component ``name`` in ``family`` (see module doc); ConfigError if none."""
    registered = _REGISTRY.setdefault(family, {})
    if name in registered:
        return registered[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"cannot import {name!r}: {exc}") from None
        return _checked(family, obj, repr(name))
    found = _entry_point(family, name)
    if found is not None:
        return found
    _scan(family)
    if name in registered:
        return registered[name]
    raise ConfigError(f"unknown {family} component {name!r} (allowed: {', '.join(sorted(components(family)))})")


def components(family: str) -> dict[str, type[Component]]:
    """Every component of ``family``: built-ins, entry points and what is registered."""
    _scan(family)
    for ep in entry_points(group=f"searchlearn.{family}"):
        if ep.name not in _REGISTRY.get(family, {}):
            ep.load()
    return dict(sorted(_REGISTRY.get(family, {}).items()))


def validate_component(family: str, value: Any) -> Component:
    """A component of ``family`` from a config value: an instance, a name, or a mapping
    holding the family's key (a name or ``module:Class``) and the component's settings."""
    if isinstance(value, Component):
        return value
    key = _KEYS.get(family, "name")
    if isinstance(value, str):
        value = {key: value}
    if isinstance(value, dict) and key not in value and _DEFAULTS.get(family):
        value = {key: _DEFAULTS[family], **value}
    if not isinstance(value, dict) or not isinstance(value.get(key), str):
        raise ValueError(f"expected a {family} component: a name, or a mapping with {key!r} and its settings")
    try:
        cls = lookup(family, value[key])
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return cls.model_validate({**value, key: component_name(cls)})


def ComponentField(family: str, base: type[Component]) -> Any:  # noqa: N802 (a type factory)
    """The annotation of a config field holding one component of ``family``: it accepts
    what :func:`validate_component` does and dumps the component's own fields."""
    # ``base`` is a class only known at run time: a type application mypy cannot check
    return Annotated[SerializeAsAny[base], BeforeValidator(lambda v: validate_component(family, v))]  # type: ignore[misc,valid-type]


S = TypeVar("S", bound=BaseModel)


def with_overrides(settings: S, overrides: dict[str, Any]) -> S:
    """``settings`` with some fields replaced, validated as its own class (a learner or
    converter takes its settings object, or the same fields as keywords)."""
    return type(settings).model_validate(settings.model_dump() | overrides) if overrides else settings
