"""The tool registry: registry key -> tool class. ``@register_tool("name")`` adds user tools."""
from __future__ import annotations

from typing import Callable, TypeVar

from ..errors import ArrakisKeyError, ArrakisValueError, close_matches
from .base import BaseInterpretabilityTool

T = TypeVar("T", bound=type)

registry: dict[str, type[BaseInterpretabilityTool]] = {}


def register_tool(name: str, *, replace: bool = False) -> Callable[[T], T]:
    """Class decorator registering a BaseInterpretabilityTool subclass under ``name``."""

    def decorator(cls: T) -> T:
        if not (isinstance(cls, type) and issubclass(cls, BaseInterpretabilityTool)):
            raise ArrakisValueError(f"register_tool({name!r}) takes a BaseInterpretabilityTool subclass, got {cls!r}")
        if name in registry and registry[name] is not cls and not replace:
            raise ArrakisValueError(f"a tool is already registered as {name!r} ({registry[name].__name__}); "
                                    "pass replace=True to replace it")
        registry[name] = cls
        return cls

    return decorator


def get_tool_class(name: str) -> type[BaseInterpretabilityTool]:
    """The class registered under ``name``; an unknown name lists the registered ones."""
    if name not in registry:
        raise ArrakisKeyError(f"no tool registered as {name!r}; registered tools: {', '.join(sorted(registry))}."
                              + close_matches(name, registry))
    return registry[name]
