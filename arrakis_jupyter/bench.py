"""BaseInterpretabilityBench: Arrakis's experiment bench on the experiment store.

Every call of a function decorated with ``@bench.log_experiment`` (or ``profile_model`` /
``test_hypothesis``) is recorded as a run of the experiment named after the function; the
function's source is the version.
"""
from __future__ import annotations

import functools
import inspect
import os
import pathlib
import textwrap
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from . import tools as _tools  # noqa: F401  (importing the package registers the built-in tools)
from .errors import ArrakisKeyError, ArrakisValueError, close_matches
from .recording import Recorder, active_run, log_metric, record_figure
from .store import Store, default_store_dir
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


def function_source(func: Callable) -> str:
    """The source of a (possibly decorated) function, decorators included, dedented."""
    inner = inspect.unwrap(func)
    try:
        return textwrap.dedent(inspect.getsource(inner))
    except (OSError, TypeError):
        code = getattr(inner, "__code__", None)
        digest = code.co_code.hex() if code is not None else "?"
        return f"# source of {getattr(inner, '__qualname__', inner)!s} is unavailable\n# bytecode {digest}\n"


def _attach(result: Any, key: str, value: Any) -> Any:
    """Arrakis convention: analysis extras go into the result dict (non-dict results are wrapped)."""
    if isinstance(result, dict):
        result[key] = value
        return result
    return {"result": result, key: value}


class BaseInterpretabilityBench:
    """A model, its tools, and an experiment store (``save_dir``, default ``$ARRAKIS_HOME`` or ``./experiments``).

    ``@bench.use_tools("attention", ...)`` injects tools; ``@bench.log_experiment`` records each call;
    ``bench.list_versions(name)`` / ``bench.get_version(name, hash)`` read the versions back.
    """

    def __init__(self, model: Any, save_dir: str | os.PathLike | None = None) -> None:
        self.model = model
        self.save_dir = pathlib.Path(save_dir) if save_dir is not None else default_store_dir()
        self.tools = ToolDict(model)
        self._store: Store | None = None
        from .plots import BokehWrapper

        self._plotting_lib: Any = BokehWrapper

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.save_dir)
        return self._store

    # ---- tools ------------------------------------------------------------------------------
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

    # ---- versions -------------------------------------------------------------------------------
    def _recorded(self, func: Callable, args: tuple, kwargs: dict, body: Callable[[], Any],
                  tags: Sequence[str] = (), note: str = "") -> Any:
        """Run ``body`` as a run of ``func``'s experiment, or inside the run already recording ``func``."""
        key = inspect.unwrap(func)
        current = active_run()
        if current is not None and current.key is key:
            return body()
        recorder = Recorder(self.store, func.__name__, function_source(func), kind="function", model=self.model,
                            arguments={"args": list(args), "kwargs": dict(kwargs)}, tags=tags, note=note, key=key)
        with recorder:
            recorder.result = body()
        return recorder.result

    def log_experiment(self, func: Callable | None = None, *, tags: Sequence[str] = (), note: str = "") -> Callable:
        """Decorator (bare or with tags/note): record every call as a run of the experiment named after the
        function, whose source is the version. The result is returned unchanged."""

        def decorator(f: Callable) -> Callable:
            @functools.wraps(f)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                return self._recorded(f, args, kwargs, lambda: f(*args, **kwargs), tags, note)

            return wrapper

        return decorator(func) if func is not None else decorator

    def list_versions(self, experiment_name: str) -> list[str]:
        """Version hashes of an experiment, oldest first (empty if it was never run)."""
        try:
            return list(self.store.versions(experiment_name)["hash"])
        except ArrakisKeyError:  # never run
            return []

    def get_version(self, experiment_name: str, version_hash: str) -> dict[str, Any] | None:
        """A version as a dict: source, hash, first/last seen, runs, and the last run's args, kwargs, result."""
        if not self.list_versions(experiment_name):
            return None
        v = self.store.version(experiment_name, version_hash)
        last = self.store.last_run(experiment_name, v.hash)
        arguments = (last.arguments or {}) if last else {}
        return {"name": v.name, "hash": v.hash, "source": v.source, "first_seen": v.first_seen,
                "last_seen": v.last_seen, "runs": len(v.runs), "args": arguments.get("args"),
                "kwargs": arguments.get("kwargs"), "result": last.result if last else None,
                "timestamp": last.started if last else None}

    # ---- profiling and hypothesis tests ---------------------------------------------------------
    def profile_model(self, granularity: str = "layer", track_memory: bool = True) -> Callable:
        """Decorator: wall time and peak memory per layer (or per component) of the forward passes the
        function runs; the ``ModelProfile`` goes into ``result["profiling"]`` and its figures are logged
        as metrics of the run."""
        from .profiling import GRANULARITIES, profile_forward

        if granularity not in GRANULARITIES:
            raise ArrakisValueError(f"granularity {granularity!r} is not one of {', '.join(GRANULARITIES)}")

        def decorator(func: Callable) -> Callable:
            @functools.wraps(func)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                def body() -> Any:
                    with profile_forward(self.model, granularity, track_memory) as profile:
                        result = func(*args, **kwargs)
                    for name, value in profile.metrics().items():
                        log_metric(name, value)
                    return _attach(result, "profiling", profile)

                return self._recorded(func, args, kwargs, body)

            return wrapper

        return decorator

    def test_hypothesis(self, null_func: Callable, alt_func: Callable, n_samples: int = 100, alpha: float = 0.05,
                        method: str = "welch", alternative: str = "two-sided") -> Callable:
        """Decorator: after the function runs, draw ``n_samples`` values from ``null_func`` and from
        ``alt_func`` (called with the function's arguments) and test whether their means differ
        (``method``: "welch" t-test, "permutation" or "paired_permutation"; see ``stats.hypothesis_test``).
        The test's statistic, p-value, effect size and decision go into ``result["hypothesis_test"]`` and
        are logged as metrics of the run."""
        from .stats import hypothesis_test

        if not isinstance(n_samples, int) or n_samples < 2:
            raise ArrakisValueError(f"n_samples must be an int >= 2, got {n_samples!r}")

        def decorator(func: Callable) -> Callable:
            @functools.wraps(func)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                def body() -> Any:
                    result = func(*args, **kwargs)
                    null, alt = [], []
                    for _ in tqdm(range(n_samples), desc=f"{func.__name__}: sampling null and alternative"):
                        null.append(null_func(*args, **kwargs))
                        alt.append(alt_func(*args, **kwargs))
                    test = hypothesis_test(null, alt, method=method, alternative=alternative, alpha=alpha)
                    for name in ("statistic", "p_value", "effect_size", "reject_null", "mean_null", "mean_alt"):
                        log_metric(f"hypothesis/{name}", float(getattr(test, name)))
                    return _attach(result, "hypothesis_test", test.to_dict())

                return self._recorded(func, args, kwargs, body)

            return wrapper

        return decorator

    # ---- plots ----------------------------------------------------------------------------------
    def set_plotting_lib(self, lib: Any) -> None:
        """The plotting wrapper ``plot_results`` draws with: ``BokehWrapper`` (default) or ``MatplotlibWrapper``."""
        from .plots import PlotWrapper

        if not (isinstance(lib, type) and issubclass(lib, PlotWrapper)) and not isinstance(lib, PlotWrapper):
            raise ArrakisValueError(f"the plotting library must be BokehWrapper, MatplotlibWrapper or another "
                                    f"arrakis_jupyter.plots.PlotWrapper, got {lib!r}")
        lib.check_available()
        self._plotting_lib = lib

    def plot_results(self, *plots: Any, input_ids: Any, **kwargs: Any) -> Callable:
        """Decorator (Arrakis): run the model on ``input_ids`` once, draw each ``PlotSpec`` with the plotting
        library and call the function with ``fig=`` (one figure, or a list for several specs). Inside a
        ``%%arrakis`` cell or a logged function the figures are recorded with the run."""
        from .plots import PlotSpec

        if not plots or not all(isinstance(p, PlotSpec) for p in plots):
            raise ArrakisValueError(f"plot_results takes one or more PlotSpec(...), got {plots!r}")
        keys = [k for p in plots for k in p.data_keys]
        names = sorted(set(keys)) if all(p.data_keys for p in plots) else None  # plot types with defaults need all

        def decorator(func: Callable) -> Callable:
            @functools.wraps(func)
            def wrapper(*args: Any, **kw: Any) -> Any:
                import torch

                with torch.no_grad():
                    _, cache = self.model.run_with_cache(input_ids, names_filter=names)
                figs = [self._plotting_lib.plot(cache=cache, spec=p, model=self.model, tokens=input_ids, **kwargs)
                        for p in plots]
                for fig in figs:
                    record_figure(fig)
                return func(*args, fig=figs[0] if len(figs) == 1 else figs, **kw)

            return wrapper

        return decorator
