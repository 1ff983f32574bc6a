"""LogitLensView: the top tokens read from the residual stream after every layer, at every position."""
from __future__ import annotations

import html
from typing import Any

import numpy as np
import traitlets

from ..tools.logit_lens import LogitLens
from .base import STATIC, ArrakisWidget, f32, i32
from .png import heatmap_png, png_img_tag


class LogitLensView(ArrakisWidget):
    """``LogitLensView(model, text, k=5, target=None)``: layers × positions, each cell the top-1 token of
    the logit lens coloured by its probability, hover for the top-k; type a token to track its
    probability instead (``target``). Values come from the ``logit_lens`` tool's ``logit_lens_table``."""

    _esm = STATIC / "logit_lens.js"
    layer_labels = traitlets.List(traitlets.Unicode()).tag(sync=True)
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    k = traitlets.Int().tag(sync=True)
    vocab = traitlets.List(traitlets.Unicode()).tag(sync=True)
    top_ids = traitlets.Bytes().tag(sync=True)  # int32 [layer, pos, k]: indices into vocab
    top_probs = traitlets.Bytes().tag(sync=True)  # float32 [layer, pos, k]
    target = traitlets.Unicode("").tag(sync=True)
    target_probs = traitlets.Bytes(b"").tag(sync=True)  # float32 [layer, pos] or empty
    target_error = traitlets.Unicode("").tag(sync=True)

    def __init__(self, model: Any, text: Any, k: int = 5, target: Any = None) -> None:
        tool = LogitLens(model)
        tokens = tool.one_sequence(text)
        self.model, self.table = model, tool.logit_lens_table(tokens, top_k=k)
        ids = self.table.token_ids.values.numpy()
        unique, index = np.unique(ids, return_inverse=True)
        vocab = [str(model.to_string(int(i))) if model.tokenizer is not None else str(int(i)) for i in unique]
        super().__init__(layer_labels=[f"L{i}" for i in range(model.cfg.n_layers)], tokens=tool.str_tokens(tokens),
                         k=k, vocab=vocab, top_ids=i32(index.reshape(ids.shape)), top_probs=f32(self.table.probs.values),
                         title=f"logit lens: top-{k} after each layer")
        if target is not None:
            self.track(target)  # a bad initial target raises here, in the cell
        self.observe(self._on_target, "target")

    def track(self, target: Any) -> None:
        """Colour the grid by the lens probability of ``target`` (a token id or a one-token string)."""
        token = self.model.to_single_token(target)
        self.target_error = ""
        with self.hold_trait_notifications():
            self.target = str(target)
            self.target_probs = f32(self.table.target_probs(token).values)

    def _on_target(self, change: dict) -> None:
        if not change["new"]:
            self.target_probs, self.target_error = b"", ""
            return
        try:
            self.track(change["new"])
        except Exception as e:  # shown in the widget, where the user typed
            self.target_probs, self.target_error = b"", str(e)

    def fallback_html(self) -> str:
        top1 = self.table.probs.values[:, :, 0].numpy()
        return (f"<p>top-1 probability, layers (rows) × positions (columns)</p>{png_img_tag(heatmap_png(top1), 'lens')}"
                f"<p>last layer: {html.escape(' '.join(repr(t[0]) for t in self.table.tokens[-1][-8:]))}</p>")
