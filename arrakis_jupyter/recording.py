"""Recording one run of an experiment: timing, status, tee'd output, metrics, model and environment.

``Recorder`` is what the magics and the bench's decorators use::

    with Recorder(store, "ioi", source, model=model) as run:
        run.result = do_the_experiment()

On exit the run is written to the store in one transaction: ``ok``, ``error`` (with the
traceback) or ``interrupted`` (KeyboardInterrupt); the exception still propagates.
``log_metric`` adds a metric to the innermost active run.
"""
from __future__ import annotations

import contextvars
import math
import platform
import sys
import time
import traceback
import warnings
from functools import lru_cache
from typing import Any, Sequence

import torch

from .errors import ArrakisValueError
from .store import RunRecord, Store

OUTPUT_CAP = 65_536  # characters of each of stdout / stderr kept with a run: the first and last half

_active: contextvars.ContextVar["Recorder | None"] = contextvars.ContextVar("arrakis_run", default=None)


def active_run() -> "Recorder | None":
    """The innermost run being recorded, or None."""
    return _active.get()


def log_metric(name: str, value: Any, step: int | None = None) -> None:
    """Record a metric (a real number) with the run in progress (a ``%%arrakis`` cell or a logged function)."""
    if not isinstance(name, str) or not name.strip():
        raise ArrakisValueError(f"a metric name is a non-empty string, got {name!r}")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ArrakisValueError(f"metric {name!r} must be a single number, got a tensor of shape "
                                    f"{tuple(value.shape)}")
        value = value.item()
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ArrakisValueError(f"metric {name!r} must be a real number, got {type(value).__name__}: {value!r}") from None
    if step is not None and (not isinstance(step, int) or isinstance(step, bool) or step < 0):
        raise ArrakisValueError(f"metric step must be a non-negative int or None, got {step!r}")
    run = _active.get()
    if run is None:
        warnings.warn(f"log_metric({name!r}) outside an experiment run was not recorded: log metrics inside a "
                      "%%arrakis cell or a function decorated with @bench.log_experiment", stacklevel=2)
        return
    run.metrics.append((name, step, number if math.isfinite(number) else None, time.time()))


def record_figure(figure: Any) -> None:
    """Keep ``figure`` (bokeh, matplotlib, anything with a PNG/HTML repr) with the run in progress, if any."""
    run = _active.get()
    if run is not None:
        run.figures.append(figure)


@lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
    import transformers

    from . import __version__

    return {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "transformers": transformers.__version__, "arrakis_jupyter": __version__}


def environment(device: Any = None) -> dict[str, str]:
    """Versions of python, torch, transformers and arrakis_jupyter, and the device computed on."""
    env = dict(_versions())
    env["device"] = str(device) if device is not None else "cpu"
    if env["device"].startswith("cuda") and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(torch.device(env["device"]))
    return env


class _Capture:
    """Stands in for sys.stdout / sys.stderr: writes through, and keeps the first and last
    ``OUTPUT_CAP // 2`` characters (with the count of those cut in between)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._head: list[str] = []
        self._head_len = 0
        self._tail = ""
        self._total = 0

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        half = OUTPUT_CAP // 2
        self._total += len(text)
        if self._head_len < half:
            take = text[: half - self._head_len]
            self._head.append(take)
            self._head_len += len(take)
            text = text[len(take):]
        if text:
            self._tail = (self._tail + text)[-half:]
        return written

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def text(self) -> str:
        head = "".join(self._head)
        cut = self._total - len(head) - len(self._tail)
        if cut <= 0:
            return head + self._tail
        return (f"{head}\n[... {cut} characters cut: a run keeps the first and last {OUTPUT_CAP // 2} characters "
                f"of each output stream ...]\n{self._tail}")


class Recorder:
    """Context manager recording one run to ``store`` (``store=None``: run without recording)."""

    def __init__(self, store: Store | None, name: str, source: str, *, kind: str = "cell", model: Any = None,
                 arguments: Any = None, tags: Sequence[str] = (), note: str = "", notebook: str | None = None,
                 cell_id: str | None = None, key: Any = None) -> None:
        self.store, self.name, self.source, self.kind = store, name, source, kind
        self.model, self.arguments, self.tags, self.note = model, arguments, tuple(tags), note
        self.notebook, self.cell_id, self.key = notebook, cell_id, key
        self.result: Any = None
        self.metrics: list[tuple[str, int | None, float | None, float]] = []
        self.figures: list[Any] = []
        self.run_id: int | None = None
        self.status: str | None = None
        self.duration: float | None = None

    def __enter__(self) -> "Recorder":
        self._token = _active.set(self)
        self._streams = sys.stdout, sys.stderr
        self._out, self._err = _Capture(sys.stdout), _Capture(sys.stderr)
        sys.stdout, sys.stderr = self._out, self._err
        self.started = time.time()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.duration = time.perf_counter() - self._t0
        sys.stdout, sys.stderr = self._streams
        _active.reset(self._token)
        if exc_type is None:
            self.status, error = "ok", None
        else:
            self.status = "interrupted" if issubclass(exc_type, KeyboardInterrupt) else "error"
            error = "".join(traceback.format_exception(exc_type, exc, tb))
        if self.store is not None:
            self._write(error)
        return False

    def _write(self, error: str | None) -> None:
        model = self.model
        record = RunRecord(
            name=self.name, source=self.source, kind=self.kind, started=self.started, duration=self.duration,
            status=self.status, error=error, arguments=self.arguments, result=self.result if error is None else None,
            stdout=self._out.text(), stderr=self._err.text(),
            model=model.fingerprint() if model is not None else None,
            environment=environment(getattr(model, "device", None)), notebook=self.notebook,
            cell_id=self.cell_id, tags=self.tags, note=self.note, metrics=self.metrics,
            figures=self.figures)
        try:
            self.run_id = self.store.record(record)
        except Exception as e:  # never hide the user's own exception behind a recording failure
            if error is None:
                raise
            warnings.warn(f"arrakis: this failed run could not be recorded: {e}", stacklevel=3)
            return
        for python_type in record.placeholders:
            warnings.warn(f"arrakis: a result of type {python_type} could not be serialised; the run keeps a "
                          "placeholder with its type and repr", stacklevel=3)
