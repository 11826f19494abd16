"""Typed configuration sections parsed from flat, kebab-case keys.

Flower hands an app its configuration as one flat mapping (``run_config``) whose
keys are the dotted paths of ``[tool.flwr.app.config]`` in ``pyproject.toml``
(``train.lr``, ``pruning.prunefl.reconfig-interval``...). This module turns such a
mapping into frozen dataclasses, once, at the entry point:

* every field of a :class:`Section` subclass is one key, ``<PREFIX>.<field-name>``
  with underscores written as hyphens;
* values are type-checked against the field's annotation (``int``, ``float``,
  ``bool``, ``str`` or a ``Literal`` of strings) before the dataclass is built;
* range checks live in each section's ``validate`` and raise :class:`ConfigError`,
  which names the key, the value given and what is allowed.

Nothing here knows about Flower, torch or the pruning methods.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Literal, Self, get_args, get_origin

Scalar = bool | int | float | str


class ConfigError(ValueError):
    """A mistake in the user's configuration.

    The message always names the offending key and value and says what is allowed,
    so that command-line entry points can print it without a traceback.
    """

    def __init__(self, key: str, value: object, allowed: str, what: str = "config key") -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        super().__init__(f"{what} '{key}' = {value!r} is not allowed: {allowed}")


def key_name(prefix: str, field_name: str) -> str:
    """Return the flat configuration key of ``field_name`` in section ``prefix``."""
    name = field_name.replace("_", "-")
    return f"{prefix}.{name}" if prefix else name


def _type_label(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(annotation))
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[annotation]


def coerce(key: str, value: object, annotation: Any) -> Scalar:
    """Check ``value`` against a field annotation and return it in that type.

    Integers are accepted for float fields; nothing else is converted, so a string
    never silently becomes a number.
    """
    if get_origin(annotation) is Literal:
        choices = get_args(annotation)
        if isinstance(value, str) and value in choices:
            return value
        raise ConfigError(key, value, _type_label(annotation))
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a programming error in a Section definition
        raise TypeError(f"unsupported field type {annotation!r} for {key}")
    raise ConfigError(key, value, _type_label(annotation))


@dataclasses.dataclass(frozen=True)
class Section:
    """Base of every configuration section.

    Subclasses are frozen dataclasses with a ``PREFIX`` and scalar fields with
    defaults; they override :meth:`validate` for range checks.
    """

    PREFIX: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` if a value is out of range."""

    # -- helpers for validate -------------------------------------------------
    def require(self, field_name: str, condition: bool, allowed: str) -> None:
        """Raise :class:`ConfigError` for ``field_name`` unless ``condition`` holds."""
        if not condition:
            raise ConfigError(key_name(self.PREFIX, field_name), getattr(self, field_name), allowed)

    # -- flat mapping <-> dataclass -----------------------------------------------
    @classmethod
    def field_types(cls) -> dict[str, Any]:
        """Map each field name to its resolved annotation."""
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}

    @classmethod
    def keys(cls) -> list[str]:
        """All flat keys of this section."""
        return [key_name(cls.PREFIX, name) for name in cls.field_types()]

    @classmethod
    def from_flat(cls, flat: Mapping[str, object]) -> Self:
        """Build the section from the keys of ``flat`` that belong to it.

        Missing keys take the field's default; keys of other sections are ignored.
        """
        values: dict[str, Scalar] = {}
        for name, annotation in cls.field_types().items():
            key = key_name(cls.PREFIX, name)
            if key in flat:
                values[name] = coerce(key, flat[key], annotation)
        return cls(**values)

    def to_flat(self) -> dict[str, Scalar]:
        """Return the section as flat ``key -> value`` pairs."""
        return {key_name(self.PREFIX, f.name): getattr(self, f.name) for f in dataclasses.fields(self)}


def reject_unknown_keys(flat: Mapping[str, object], known: Iterable[str]) -> None:
    """Raise :class:`ConfigError` for the first key of ``flat`` not in ``known``.

    The message suggests the closest known keys, since most unknown keys are typos.
    """
    known_set = set(known)
    for key in sorted(flat):
        if key not in known_set:
            close = difflib.get_close_matches(key, sorted(known_set), n=3, cutoff=0.6)
            hint = (
                f"did you mean {', '.join(repr(c) for c in close)}?"
                if close
                else ("see the [tool.flwr.app.config] table of pyproject.toml for every key")
            )
            raise ConfigError(key, flat[key], f"this key is unknown; {hint}")


def flatten(table: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    """Flatten nested TOML tables into dotted keys, as Flower does for run configs."""
    flat: dict[str, object] = {}
    for key, value in table.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat
