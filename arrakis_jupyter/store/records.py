"""What the store hands out: run records going in, versions, runs and diffs coming out."""
from __future__ import annotations

import time
import unicodedata
import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence

import pandas as pd

from ..errors import ArrakisValueError

NAME_LIMIT = 200


def check_name(name: Any, what: str = "experiment name") -> str:
    """Return ``name`` if it is a valid experiment name (or tag), else raise a clear error."""
    accepted = (f"{what}s are non-empty text up to {NAME_LIMIT} characters without path separators (/ \\), "
                "control characters or leading/trailing spaces")
    if not isinstance(name, str):
        raise ArrakisValueError(f"{what} must be a string, got {type(name).__name__}: {name!r}. {accepted}.")
    problem = None
    if not name.strip():
        problem = "is empty"
    elif len(name) > NAME_LIMIT:
        problem = f"is {len(name)} characters long"
    elif "/" in name or "\\" in name:
        problem = "contains a path separator"
    elif any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in name):
        problem = "contains a control character"
    elif name != name.strip():
        problem = "has leading or trailing whitespace"
    elif name in (".", ".."):
        problem = "is a relative path"
    if problem:
        raise ArrakisValueError(f"{what} {name!r} {problem}: {accepted}.")
    return name


@dataclass
class RunRecord:
    """Everything recorded about one run; ``Store.record`` writes it in one transaction.

    ``stdout``/``stderr`` are stored as given (the recorder caps them, see ``recording.OUTPUT_CAP``)."""

    name: str
    source: str
    kind: str = "cell"
    started: float = field(default_factory=time.time)
    duration: float | None = None
    status: str = "ok"
    error: str | None = None
    arguments: Any = None
    result: Any = None
    stdout: str = ""
    stderr: str = ""
    model: dict | None = None
    environment: dict | None = None
    notebook: str | None = None
    cell_id: str | None = None
    tags: Sequence[str] = ()
    note: str = ""
    metrics: list[tuple[str, int | None, float, float]] = field(default_factory=list)  # name, step, value, time
    figures: list[Any] = field(default_factory=list)  # figures drawn during the run (bokeh, matplotlib...)
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)
    placeholders: list[str] = field(default_factory=list)  # filled by Store.record: result types not serialised


@dataclass(repr=False)
class Version:
    """One version of an experiment: its source and the runs made with it."""

    name: str
    hash: str
    index: int
    kind: str
    source: str
    first_seen: pd.Timestamp
    last_seen: pd.Timestamp
    runs: pd.DataFrame  # all its runs, or the page asked for
    run_count: int = -1  # how many runs the version has (len(runs) when all were loaded)

    def __post_init__(self) -> None:
        if self.run_count < 0:
            self.run_count = len(self.runs)

    def _repr_html_(self) -> str:
        from .render import version_html

        return version_html(self)

    def __repr__(self) -> str:
        return (f"{self.name} v{self.index} {self.hash} ({self.kind}, first seen {self.first_seen:%Y-%m-%d %H:%M:%S}, "
                f"{self.run_count} runs)\n\n{self.source}\n\n{self.runs.to_string() if len(self.runs) else ''}")


@dataclass
class Run:
    """One run of a version, with its decoded result, outputs, model, environment and metrics."""

    id: int
    uid: str
    name: str
    hash: str
    started: pd.Timestamp
    duration: float | None
    status: str
    error: str | None
    arguments: Any
    result: Any
    result_type: str | None
    stdout: str
    stderr: str
    model: dict | None
    environment: dict | None
    notebook: str | None
    cell_id: str | None
    tags: list[str]
    note: str
    metrics: pd.DataFrame
    figures: list[Any] = field(default_factory=list)


@dataclass(repr=False)
class VersionDiff:
    """Two versions of an experiment compared: unified source diff, results and metrics side by side."""

    name: str
    a: str
    b: str
    source_diff: str
    results: pd.DataFrame
    metrics: pd.DataFrame
    version_a: Version
    version_b: Version

    def _repr_html_(self) -> str:
        from .render import diff_html

        return diff_html(self)

    def __repr__(self) -> str:
        parts = [self.source_diff or f"(sources of {self.a} and {self.b} are identical up to whitespace)"]
        if len(self.results):
            parts.append("results:\n" + self.results.to_string(index=False))
        if len(self.metrics):
            parts.append("metrics:\n" + self.metrics.to_string())
        return "\n\n".join(parts)


def to_timestamps(series: pd.Series) -> pd.Series:
    return pd.to_datetime(series, unit="s", utc=True).dt.round("us")
