"""The format registry: spec string -> format instance."""

from __future__ import annotations

from typing import TypeVar

from ._base import WeightFormat

_REGISTRY: dict[str, type[WeightFormat]] = {}

F = TypeVar("F", bound=type[WeightFormat])


def register_format(cls: F) -> F:
    """Class decorator: make ``cls`` reachable from its spec strings."""
    if cls.family in _REGISTRY:
        raise ValueError(f"format family {cls.family!r} is already registered by {_REGISTRY[cls.family].__name__}")
    _REGISTRY[cls.family] = cls
    return cls


def registered_formats() -> tuple[type[WeightFormat], ...]:
    """Every registered format class, in registration order."""
    return tuple(_REGISTRY.values())


def all_specs() -> list[str]:
    """Every spec string accepted by some registered format."""
    return [spec for cls in _REGISTRY.values() for spec in cls.all_specs()]


def parse_format(fmt: str | WeightFormat) -> WeightFormat:
    """Turn a spec string (``"int4-g128"``, ``"nf4-g64"``, ``"mxfp4"`` ...) into a format.

    A :class:`WeightFormat` instance is returned unchanged.  An unknown spec,
    or a known family with unsupported parameters, raises ``ValueError``
    naming what is accepted.
    """
    if isinstance(fmt, WeightFormat):
        return fmt
    if not isinstance(fmt, str):
        raise ValueError(f"fmt must be a format spec string or WeightFormat, got {type(fmt).__name__}")
    spec = fmt.strip().lower()
    for cls in _REGISTRY.values():
        match = cls.pattern.match(spec)
        if match:
            return cls.from_match(fmt, match)
    accepted = ", ".join(cls.template for cls in _REGISTRY.values())
    raise ValueError(f"fmt={fmt!r} is not a known weight format; accepted: {accepted}")
