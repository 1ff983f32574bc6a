"""Results in the store: JSON where a value is JSON, content-addressed files for the rest.

``encode`` turns a Python value into a JSON tree. JSON values stay as they are; everything else
becomes a marked node ``{"__arrakis__": {"type": ...}}``: tensors and arrays are saved as
safetensors files, DataFrames as pandas' table JSON, bokeh figures as standalone HTML,
matplotlib figures and other objects with a PNG repr as PNG. A value that none of these fit is
stored as a placeholder naming its type (with its repr), never silently as ``str()``; so is a value whose
serialiser fails, so that the rest of a result is always stored. ``decode`` turns the tree back into Python
values: floats, tensors, arrays and frames come back exactly (NaN and ±inf included).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import importlib
import io
import math
import os
import pathlib
import re
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .frames import axis_spec, frame_json, label, read_frame
from .hashing import content_hash

MARK = "__arrakis__"
MAX_DEPTH = 64
REPR_LIMIT = 500
EXTENSIONS = {"tensor": ".safetensors", "ndarray": ".safetensors", "dataframe": ".json", "series": ".json",
              "html": ".html", "png": ".png"}
_HASH = re.compile(r"^[0-9a-f]{64}$")
MAX_INT_BITS = 13000  # bigger ints have more digits than JSON (Python's int/str limit: 4300) allows: stored in hex


@dataclass
class Unserialisable:
    """Placeholder for a value the store could not serialise: its type and repr are kept."""

    python_type: str
    repr: str
    reason: str = "no serialiser for this type"

    def __repr__(self) -> str:
        return f"<unserialisable {self.python_type}: {self.repr}>"


@dataclass
class StoredFigure:
    """A figure saved with a run (PNG or standalone HTML), displayable in a notebook."""

    kind: str
    path: pathlib.Path

    def _repr_png_(self) -> bytes | None:
        return self.path.read_bytes() if self.kind == "png" else None

    def _repr_html_(self) -> str | None:
        if self.kind != "html":
            return None
        import html

        return (f'<iframe srcdoc="{html.escape(self.path.read_text())}" style="width:100%;height:480px;'
                f'border:0"></iframe>')


@dataclass
class ArtefactFiles:
    """The content-addressed files of one store: ``root/<2 hex>/<sha256><ext>``, written atomically."""

    root: pathlib.Path

    def put(self, data: bytes, kind: str) -> tuple[str, str, int]:
        """Write ``data`` (if not already there); returns (hash, file relative to root, size)."""
        digest = content_hash(data)
        rel = f"{digest[:2]}/{digest}{EXTENSIONS[kind]}"
        path = self.root / rel
        try:  # already there: marked as fresh, so that Store.gc's grace period protects it until our commit
            os.utime(path)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                pathlib.Path(tmp).unlink(missing_ok=True)
                raise
        except OSError:  # there, but not ours to touch
            pass
        return digest, rel, len(data)

    def path(self, digest: str, kind: str) -> pathlib.Path:
        if not _HASH.match(digest) or kind not in EXTENSIONS:
            raise ValueError(f"not an artefact reference: {digest!r} ({kind!r})")
        return self.root / digest[:2] / f"{digest}{EXTENSIONS[kind]}"


def is_tensor(value: Any) -> bool:
    """A torch tensor? (without importing torch: if torch was never imported, nothing is a tensor)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def type_name(value: Any) -> str:
    cls = type(value)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _node(kind: str, **fields: Any) -> dict:
    return {MARK: {"type": kind, **fields}}


class Encoder:
    """Encodes values, writing artefacts through ``files``; ``placeholders`` lists what was not serialisable."""

    def __init__(self, files: ArtefactFiles) -> None:
        self.files = files
        self.placeholders: list[str] = []
        self.artefacts: dict[str, tuple[str, str, int]] = {}  # hash -> (kind, file, size)
        self._open: set[int] = set()  # ids of the values being encoded (a value met again contains itself)

    def put(self, data: bytes, kind: str) -> str:
        digest, rel, size = self.files.put(data, kind)
        self.artefacts[digest] = (kind, rel, size)
        return digest

    def __call__(self, value: Any) -> Any:
        return self.encode(value, 0)

    def encode(self, value: Any, depth: int) -> Any:
        """``value`` as JSON; never raises: a value whose serialiser fails becomes a placeholder naming the error."""
        if depth > MAX_DEPTH:
            return self.placeholder(value, f"nested deeper than {MAX_DEPTH} levels")
        if id(value) in self._open:
            return self.placeholder(value, "it contains itself")
        self._open.add(id(value))
        try:
            return self._encode(value, depth)
        except Exception as e:  # a failing serialiser must not lose the run
            return self.placeholder(value, f"serialising it failed: {_error(e)}")
        finally:
            self._open.discard(id(value))

    def _encode(self, value: Any, depth: int) -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, int) and not isinstance(value, enum.Enum):
            return int(value) if value.bit_length() <= MAX_INT_BITS else _node("int", hex=hex(value))
        if isinstance(value, float):
            return float(value) if math.isfinite(value) else _node("float", value=repr(float(value)))
        if isinstance(value, complex):
            return _node("complex", real=self.encode(value.real, depth), imag=self.encode(value.imag, depth))
        if isinstance(value, np.generic) and not isinstance(value, np.void):
            item = value.item()
            if isinstance(item, np.generic) or isinstance(value, (np.datetime64, np.timedelta64)):
                node = self.ndarray(np.asarray(value), depth)  # no exact Python value: a 0-d array
                node[MARK]["scalar"] = True
                return node
            return self.encode(item, depth)
        if is_tensor(value):
            return self.tensor(value)
        if isinstance(value, np.ndarray):
            return self.ndarray(value, depth)
        if isinstance(value, (pd.DataFrame, pd.Series)):
            return self.frame(value)
        if isinstance(value, dict):
            return self.mapping(value, depth)
        if isinstance(value, list):
            return [self.encode(v, depth + 1) for v in value]
        if isinstance(value, tuple) and not hasattr(value, "_fields"):
            return _node("tuple", items=[self.encode(v, depth + 1) for v in value])
        if isinstance(value, (set, frozenset)):
            frozen = {"frozen": True} if isinstance(value, frozenset) else {}
            return _node("set", items=[self.encode(v, depth + 1) for v in sorted(value, key=_safe_repr)], **frozen)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = {f.name: self.encode(getattr(value, f.name), depth + 1) for f in dataclasses.fields(value)}
            return _node("dataclass", cls=type_name(value), fields=fields)
        if hasattr(value, "_fields") and isinstance(value, tuple):  # namedtuple
            return _node("namedtuple", cls=type_name(value),
                         fields={k: self.encode(v, depth + 1) for k, v in value._asdict().items()})
        if isinstance(value, enum.Enum):
            return _node("enum", cls=type_name(value), name=value.name)
        if isinstance(value, pathlib.PurePath):
            return _node("path", value=str(value))
        if isinstance(value, (dt.datetime, dt.date)):
            return _node(type(value).__name__, value=value.isoformat())
        if isinstance(value, bytes):
            return self.placeholder(value, "raw bytes are not stored")
        return self.figure(value)

    def mapping(self, value: dict, depth: int) -> Any:
        if all(isinstance(k, str) for k in value) and MARK not in value:
            return {k: self.encode(v, depth + 1) for k, v in value.items()}
        return _node("dict", items=[[self.encode(k, depth + 1), self.encode(v, depth + 1)] for k, v in value.items()])

    def tensor(self, value: Any) -> Any:
        import torch

        if value.layout != torch.strided or value.device.type == "meta" or value.is_quantized:
            return self.placeholder(value, f"{value.layout} / {value.device.type} tensors are not stored")
        t = value.detach().cpu().resolve_conj().resolve_neg().contiguous()
        node = {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""), **self.saved(t, "tensor")}
        if t.is_floating_point() and t.numel():
            node["summary"] = summary((t if t.dtype in (torch.float32, torch.float64) else t.float()).numpy())
        return _node("tensor", **node)

    def ndarray(self, value: np.ndarray, depth: int) -> Any:
        if value.dtype.kind not in "biufcmM":
            return _node("ndarray_list", dtype=str(value.dtype), items=self.encode(value.tolist(), depth + 1))
        a = value if value.flags.c_contiguous else value.copy(order="C")
        node = {"shape": list(a.shape), "dtype": str(a.dtype), **self.saved(a, "ndarray")}
        if a.dtype.kind == "f" and a.size:
            node["summary"] = summary(a)
        return _node("ndarray", **node)

    def saved(self, value: Any, kind: str) -> dict:
        """Write a contiguous tensor / array as safetensors; one of a dtype safetensors lacks (complex128,
        longdouble, datetime64...) is written as its bytes, ``raw``."""
        save = importlib.import_module("safetensors.torch" if kind == "tensor" else "safetensors.numpy").save
        try:
            return {"artefact": self.put(save({"value": value}), kind)}
        except Exception:
            uint8 = sys.modules["torch"].uint8 if kind == "tensor" else np.uint8
            return {"artefact": self.put(save({"value": value.reshape(-1).view(uint8)}), kind), "raw": True}

    def frame(self, value: pd.DataFrame | pd.Series) -> Any:
        """DataFrames (and Series, as one-column frames) in pandas' table JSON, which keeps dtypes and index
        (split JSON where table JSON cannot hold the frame), float values exact (see ``frame_json``)."""
        kind, extra = "dataframe", {}
        if isinstance(value, pd.Series):
            kind, extra, value = "series", {"name": label(value.name)}, value.to_frame(name="value")
        orient = "table" if value.columns.is_unique else "split"
        try:
            text, nonfinite = frame_json(value, orient)
        except Exception:  # MultiIndex columns, names shared by index and columns...
            if orient == "split":
                raise
            orient = "split"
            text, nonfinite = frame_json(value, orient)
        if nonfinite:
            extra["nonfinite"] = nonfinite
        digest = self.put(text.encode(), kind)
        return _node(kind, artefact=digest, orient=orient, shape=list(value.shape),
                     dtypes=[str(d) for d in value.dtypes], labels=[axis_spec(value.index), axis_spec(value.columns)],
                     **extra)

    def figure(self, value: Any) -> Any:
        module = type(value).__module__ or ""
        if module.startswith("bokeh."):
            from bokeh.embed import file_html
            from bokeh.resources import INLINE

            html = file_html(value, resources=INLINE, title=getattr(value, "name", None) or "figure")
            return _node("figure", artefact=self.put(html.encode(), "html"), format="html",
                         cls=type_name(value))
        if module.startswith("matplotlib.") and hasattr(value, "savefig"):
            buf = io.BytesIO()
            value.savefig(buf, format="png", bbox_inches="tight")
            return _node("figure", artefact=self.put(buf.getvalue(), "png"), format="png", cls=type_name(value))
        png = getattr(value, "_repr_png_", None)
        if callable(png):
            data = png()
            if isinstance(data, bytes):
                return _node("figure", artefact=self.put(data, "png"), format="png", cls=type_name(value))
        html = _html_repr(value)  # widgets (their static fallback) and other rich objects
        if html:
            return _node("figure", artefact=self.put(html.encode(), "html"), format="html", cls=type_name(value))
        return self.placeholder(value, "no serialiser for this type")

    def placeholder(self, value: Any, reason: str) -> dict:
        name = type_name(value)
        self.placeholders.append(name)
        text = _safe_repr(value)
        if len(text) > REPR_LIMIT:
            text = text[:REPR_LIMIT] + f"... ({len(text) - REPR_LIMIT} more characters)"
        return _node("unserialisable", python_type=name, repr=text, reason=reason)


def summary(values: np.ndarray) -> dict[str, Any]:
    """min / max / mean of the finite values (null where there are none), with counts of ``nan``, ``posinf``
    and ``neginf`` where there are any: always valid JSON."""
    finite = np.isfinite(values)
    kept = values if finite.all() else values[finite]
    out: dict[str, Any] = {"min": None, "max": None, "mean": None}
    if kept.size:
        with np.errstate(over="ignore", invalid="ignore"):
            mean = kept.mean(dtype=np.float64)
            if not np.isfinite(mean):  # the sum overflowed: sum the values scaled down instead
                mean = (kept / kept.size).sum(dtype=np.float64)
            out = {"min": _finite(kept.min()), "max": _finite(kept.max()), "mean": _finite(mean)}
    if kept.size < values.size:
        counts = {"nan": np.isnan(values).sum(), "posinf": np.isposinf(values).sum(),
                  "neginf": np.isneginf(values).sum()}
        out.update({k: int(n) for k, n in counts.items() if n})
    return out


def _finite(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception as e:  # a broken __repr__ must not lose the run
        return f"<repr failed: {type(e).__name__}>"


def _error(e: BaseException) -> str:
    """``TypeName: message`` of an exception (shortened), even where its ``str`` fails."""
    try:
        text = f"{type(e).__name__}: {e}"
    except Exception:
        text = type(e).__name__
    return text if len(text) <= REPR_LIMIT else text[:REPR_LIMIT] + "..."


def decode(tree: Any, files: ArtefactFiles) -> Any:
    """The Python value an encoded tree stands for (tensors, arrays and frames are read from their files)."""
    if isinstance(tree, list):
        return [decode(v, files) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if MARK not in tree:
        return {k: decode(v, files) for k, v in tree.items()}
    node = tree[MARK]
    kind = node["type"]
    if kind == "float":
        value = float(node["value"])
        return math.nan if math.isnan(value) else value  # one NaN object: a NaN dict key finds itself
    if kind == "int":
        return int(node["hex"], 16)
    if kind == "complex":
        return complex(decode(node["real"], files), decode(node["imag"], files))
    if kind in ("tensor", "ndarray"):
        load = importlib.import_module("safetensors.torch" if kind == "tensor" else "safetensors.numpy").load_file
        value = load(files.path(node["artefact"], kind))["value"]
        if node.get("raw"):  # bytes of a dtype safetensors lacks
            dtype = getattr(sys.modules["torch"], node["dtype"]) if kind == "tensor" else np.dtype(node["dtype"])
            value = value.view(dtype).reshape(node["shape"])
        return value[()] if node.get("scalar") else value
    if kind == "ndarray_list":
        dtype = np.dtype(node["dtype"]) if re.fullmatch(r"[<>|=]?U\d+", node["dtype"]) else object
        return np.array(decode(node["items"], files), dtype=dtype)
    if kind in ("dataframe", "series"):
        text = files.path(node["artefact"], kind).read_text()
        try:
            frame = read_frame(text, node)
        except Exception:  # a frame this reader does not know: pandas' reader, which rounds floats
            frame = pd.read_json(io.StringIO(text), orient=node["orient"])
        if kind == "dataframe":
            return frame
        return frame.iloc[:, 0].rename(node.get("name"))
    if kind == "figure":
        fmt = node["format"]
        return StoredFigure(fmt, files.path(node["artefact"], fmt))
    if kind == "tuple":
        return tuple(decode(node["items"], files))
    if kind == "set":
        items = (_hashable(v) for v in decode(node["items"], files))
        return frozenset(items) if node.get("frozen") else set(items)
    if kind == "dict":
        return {_hashable(decode(k, files)): decode(v, files) for k, v in node["items"]}
    if kind in ("dataclass", "namedtuple"):
        fields = {k: decode(v, files) for k, v in node["fields"].items()}
        cls = _trusted_class(node["cls"])
        try:
            return cls(**fields) if cls is not None else {"__class__": node["cls"], **fields}
        except (TypeError, ValueError):
            return {"__class__": node["cls"], **fields}
    if kind == "enum":
        cls = _trusted_class(node["cls"])
        return cls[node["name"]] if cls is not None else f"{node['cls']}.{node['name']}"
    if kind == "path":
        return pathlib.Path(node["value"])
    if kind in ("datetime", "date"):
        return getattr(dt, kind).fromisoformat(node["value"])
    if kind == "unserialisable":
        return Unserialisable(node["python_type"], node["repr"], node.get("reason", ""))
    raise ValueError(f"unknown stored value type {kind!r}")


def _html_repr(value: Any) -> str | None:
    """The ``text/html`` a rich object shows in a notebook (``_repr_mimebundle_`` or ``_repr_html_``)."""
    try:
        bundle = value._repr_mimebundle_() if callable(getattr(value, "_repr_mimebundle_", None)) else None
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        if isinstance(data, dict) and isinstance(data.get("text/html"), str):
            return data["text/html"]
        html = value._repr_html_() if callable(getattr(value, "_repr_html_", None)) else None
        return html if isinstance(html, str) else None
    except Exception:  # a broken repr must not lose the run: the placeholder keeps its type
        return None


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return frozenset(value) if isinstance(value, set) else value


def _trusted_class(qualified: str) -> type | None:
    """Classes of arrakis_jupyter itself are rebuilt on decode; others come back as dicts."""
    module, _, name = qualified.rpartition(".")
    if not module.startswith("arrakis_jupyter"):
        return None
    try:
        obj: Any = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
        return obj if isinstance(obj, type) else None
    except (ImportError, AttributeError):
        return None


def describe(value: Any) -> str:
    """A short label of a result's type for tables: ``float``, ``Tensor[2, 3] float32``, ``DataFrame 10×3``."""
    try:
        return _describe(value)
    except Exception:  # a value that breaks len() or .shape
        return type(value).__name__


def _describe(value: Any) -> str:
    if is_tensor(value):
        return f"Tensor{list(value.shape)} {str(value.dtype).replace('torch.', '')}"
    if isinstance(value, np.ndarray):
        return f"ndarray{list(value.shape)} {value.dtype}"
    if isinstance(value, pd.DataFrame):
        return f"DataFrame {value.shape[0]}×{value.shape[1]}"
    if isinstance(value, pd.Series):
        return f"Series {len(value)}"
    if isinstance(value, (list, tuple, dict, set)):
        return f"{type(value).__name__}[{len(value)}]"
    return type(value).__name__
