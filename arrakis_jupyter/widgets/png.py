"""Static PNG heatmaps (no plotting library): the widgets' fallback when no widget manager is there."""
from __future__ import annotations

import base64
import struct
import zlib

import numpy as np

# Colormap anchors (value in [0, 1] -> RGB), interpolated linearly: matplotlib's viridis, and a
# blue-white-red diverging map. The same anchors are used by the widgets' front end.
VIRIDIS = np.array([[68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142], [31, 158, 137],
                    [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37]], dtype=np.float64)
DIVERGING = np.array([[33, 102, 172], [103, 169, 207], [209, 229, 240], [247, 247, 247], [253, 219, 199],
                      [239, 138, 98], [178, 24, 43]], dtype=np.float64)
NAN_RGB = (200, 200, 200)


def colorize(values: np.ndarray, cmap: str = "viridis", low: float | None = None,
             high: float | None = None) -> np.ndarray:
    """RGB uint8 [..., 3] of ``values`` mapped linearly from [low, high] (default: their range) onto ``cmap``
    ("viridis" or "diverging": centred on 0, ±max|value|). NaN is grey."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    if cmap == "diverging":
        bound = float(np.abs(finite).max()) if finite.size else 1.0
        low, high = -bound, bound
    if low is None:
        low = float(finite.min()) if finite.size else 0.0
    if high is None:
        high = float(finite.max()) if finite.size else 1.0
    anchors = VIRIDIS if cmap == "viridis" else DIVERGING
    t = np.clip((v - low) / (high - low if high > low else 1.0), 0, 1)
    t = np.nan_to_num(t) * (len(anchors) - 1)
    i = np.minimum(t.astype(int), len(anchors) - 2)
    f = (t - i)[..., None]
    rgb = anchors[i] * (1 - f) + anchors[i + 1] * f
    rgb[~np.isfinite(v)] = NAN_RGB
    return rgb.round().astype(np.uint8)


def encode_png(rgb: np.ndarray) -> bytes:
    """A PNG file of an RGB uint8 image [height, width, 3]."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def heatmap_png(values: np.ndarray, cmap: str = "viridis", cell: int | None = None, max_side: int = 600) -> bytes:
    """A PNG heatmap of a 2-D array, each cell ``cell`` pixels (default: fit ``max_side``)."""
    v = np.asarray(values, dtype=np.float64)
    if cell is None:
        cell = max(1, min(24, max_side // max(v.shape)))
    rgb = colorize(v, cmap)
    return encode_png(np.repeat(np.repeat(rgb, cell, axis=0), cell, axis=1))


def png_img_tag(png: bytes, alt: str) -> str:
    import html

    return (f'<img alt="{html.escape(alt)}" style="image-rendering:pixelated" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode()}"/>')
