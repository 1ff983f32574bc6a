"""BaseInterpretabilityBench: Arrakis's experiment bench, with lazily instantiated tools."""
from __future__ import annotations

import functools
from typing import Any, Callable

from .errors import ArrakisKeyError, close_matches
from . import tools as _tools  # noqa: F401  (importing the package registers the built-in tools)
from .tools.registry import get_tool_class, registry


class ToolDict(dict):
    """``bench.tools``: registry keys instantiate on first use; ``update()`` adds user tools as in Arrakis."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def __missing__(self, name: str):
        tool = get_tool_class(name)(self.model)
        self[name] = tool
        return tool

    def __contains__(self, name: object) -> bool:
        return dict.__contains__(self, name) or name in registry

    def available(self) -> list[str]:
        return sorted(set(self.keys()) | set(registry))


class BaseInterpretabilityBench:
    """Holds a model and its tools; ``@bench.use_tools("attention", ...)`` injects tools into a function."""

    def __init__(self, model: Any, save_dir: str = "experiments") -> None:
        self.model = model
        self.save_dir = save_dir
        self.tools = ToolDict(model)

    def use_tools(self, *names: str) -> Callable:
        """Decorator: the function receives each named tool as the keyword argument of the same name."""
        for name in names:
            if name not in self.tools:
                raise ArrakisKeyError(f"unknown tool {name!r}; available tools: {', '.join(self.tools.available())}."
                                      + close_matches(name, self.tools.available()))

        def decorator(func: Callable) -> Callable:
            @functools.wraps(func)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                for name in names:
                    kwargs.setdefault(name, self.tools[name])
                return func(*args, **kwargs)

            return wrapper

        return decorator
