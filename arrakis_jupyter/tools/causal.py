"""``causal``: activation patching, attribution patching, ROME causal tracing, neuron interventions.

Activation patching follows ``transformer_lens.patching``: run the *corrupted* tokens, replace one
activation (a layer, a position, a head...) by its value in the *clean* run, and apply
``metric(logits) -> scalar``. ``metric`` is written for one run's logits [batch, pos, d_vocab]
(``batch`` = the batch of the corrupted tokens) and must return a 0-d tensor or a number.

Speed: a chunk of ``n`` grid cells runs as one forward pass of ``n * batch`` rows, row block ``i``
patched at cell ``i``; the metric is applied to each row block, as TransformerLens applies it to each
patched run. For a single corrupted sequence the runs also skip, exactly (causality), what patching
cannot change: layers before a chunk's first patched layer run once at batch 1, and positions before
its first patched position are not recomputed (their keys/values come from the unpatched run's KV
cache, their logits are that run's). Cells are grouped by position band, then layer.

Attribution patching (Syed et al. / Nanda): the first-order approximation of activation patching,
``metric(patched) - metric(corrupted) ~= sum((clean_act - corrupted_act) * d metric / d act)`` over
the entries the cell patches, gradients taken on the corrupted run. It estimates the *change* of
the metric; activation patching reports the metric itself.

Causal tracing (Meng et al. 2022, ROME): the subject tokens' embeddings (``hook_embed``) get
Gaussian noise of std ``noise_level`` (3) times the std of the embedding matrix ``W_E`` (over all its
entries), ``n_samples`` noise draws (fixed by ``seed``, the same draws for every cell); each layer's
output (``hook_resid_post``) at each position is restored to its clean value, and the probability of
the target token at the last position, averaged over the draws (one sweep per draw), is reported.
``kind="attn"`` /
``"mlp"`` restore ``hook_attn_out`` / ``hook_mlp_out`` over a window of layers around each layer
(``range(L - window // 2, L + ceil(window / 2))`` clipped to the model, as in ROME).
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

import pandas as pd
import torch

from ..errors import ArrakisValueError, check_index
from .base import BaseInterpretabilityTool, LabelledTensor
from .registry import register_tool

Metric = Callable[[torch.Tensor], Any]


class Cell(NamedTuple):
    """One patched run: the source's ``[:, *index]`` is written into each activation of ``names`` (``index``
    skips the batch dim; ``index[pos_axis]`` is the (query) position; ``pos_axis`` None: every position)."""

    names: tuple[str, ...]
    index: tuple
    pos_axis: int | None

    @property
    def layer(self) -> int:
        return min(int(n.split(".")[1]) for n in self.names)

    @property
    def pos(self) -> int:
        return 0 if self.pos_axis is None else self.index[self.pos_axis]

    def shifted(self, p0: int) -> tuple:  # ``index`` in a run that starts at position p0
        i = self.pos_axis
        return self.index if i is None else self.index[:i] + (self.index[i] - p0,) + self.index[i + 1:]


SITES = {"resid_pre": "hook_resid_pre", "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out",
         "z": "attn.hook_z", "pattern": "attn.hook_pattern"}
HEAD_SITES = ("z", "pattern")
TRACE_SITES = {"hidden": "hook_resid_post", "attn": "hook_attn_out", "mlp": "hook_mlp_out"}
_ALL = slice(None)


@dataclass
class TraceResult:
    """Causal tracing of one prompt: ``scores`` [layer, pos] is the target's probability with that
    cell restored (noise-averaged); ``clean_prob`` / ``corrupted_prob`` bracket it."""

    scores: LabelledTensor
    clean_prob: float
    corrupted_prob: float
    target: int
    target_token: str
    subject_positions: list[int]
    kind: str
    window: int
    noise_std: float

    def to_frame(self) -> pd.DataFrame:
        return self.scores.to_frame()

    def _repr_html_(self) -> str:
        return (f"<p>{self.target_token!r}: clean p={self.clean_prob:.4f}, corrupted p={self.corrupted_prob:.4f} "
                f"({self.kind})</p>" + self.scores._repr_html_())


@dataclass
class NeuronEffect:
    """Scaling MLP neuron ``neuron`` of ``layer`` by ``scale``: the next-token prediction at ``pos``
    before / after ([d_vocab] float32 logits), and ``top``: the ``top_k`` tokens whose probability
    changed most (columns token_id, token, prob_before, prob_after, delta_prob, delta_logit)."""

    layer: int
    neuron: int
    scale: float
    pos: int
    activation: torch.Tensor
    logits_before: torch.Tensor
    logits_after: torch.Tensor
    kl_divergence: float
    top: pd.DataFrame

    def _repr_html_(self) -> str:
        head = f"<p>L{self.layer} N{self.neuron} x {self.scale}: KL={self.kl_divergence:.4g}</p>"
        return head + self.top._repr_html_()


def _scalar(value: Any, need_grad: bool = False) -> torch.Tensor:
    """A metric's return value as a 0-d float32 tensor, or a clear error."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and not need_grad:
        return torch.tensor(float(value))
    if not isinstance(value, torch.Tensor) and not number:
        raise ArrakisValueError(f"metric must return a scalar (a 0-d tensor or a number), got {type(value).__name__}")
    if not number and value.ndim != 0:
        raise ArrakisValueError(f"metric must return a scalar (a 0-d tensor) for one run's logits [batch, pos, "
                                f"d_vocab], got a tensor of shape {tuple(value.shape)}; reduce it, e.g. with .mean()")
    if need_grad and (number or not value.requires_grad):
        raise ArrakisValueError("attribution patching needs a metric differentiable in the logits; its result does "
                                "not depend on them (was it detached, or turned into a Python number?)")
    return value if need_grad else value.detach().float().cpu()


@register_tool("causal")
class CausalTracer(BaseInterpretabilityTool):
    """Causal interventions: ``patch``, ``attribution_patch``, ``trace_token_probability``, ``intervene_on_neuron``."""

    # ---- inputs and grids ---------------------------------------------------------------------
    def _pair(self, clean: Any, corrupted: Any) -> tuple[torch.Tensor, torch.Tensor]:
        clean_t, corr_t = self.tokens(clean), self.tokens(corrupted)
        if clean_t.shape != corr_t.shape:
            raise ArrakisValueError(f"clean and corrupted tokens must have the same shape; got {tuple(clean_t.shape)} "
                                    f"and {tuple(corr_t.shape)} (choose prompts of the same token length)")
        return clean_t, corr_t

    @staticmethod
    def _check_args(metric: Any = None, chunk_size: Any = None) -> None:
        if metric is not None and not callable(metric):
            raise ArrakisValueError(f"metric must be a function of the logits returning a scalar, got {metric!r}")
        if chunk_size is not None and (type(chunk_size) is not int or chunk_size < 1):
            raise ArrakisValueError(f"chunk_size must be a positive int or None (automatic), got {chunk_size!r}")

    def _pos_labels(self, tokens: torch.Tensor, positions: list[int]) -> list[str]:
        strs = self.str_tokens(tokens[:1])
        return [f"{p}: {strs[p]}" for p in positions]

    def _indices(self, values: Sequence[int] | int | None, size: int, what: str) -> list[int]:
        if values is None:
            return list(range(size))
        values = [values] if isinstance(values, int) else list(values)
        if not values:
            raise ArrakisValueError(f"{what}s must be None (all) or a non-empty list of {what} indices")
        return [check_index(v, size, what) for v in values]

    def _grid(self, tokens: torch.Tensor, hook: str, by: str, layers, positions, heads):
        """(dims, coords, cells) of a patching grid over ``tokens`` [batch, pos] (the first row labels the
        positions); cells in row-major (layer-first) order."""
        if hook not in SITES:
            raise ArrakisValueError(f"hook must be one of {', '.join(map(repr, SITES))}, got {hook!r}")
        allowed = ("layer_pos", "layer", "head", "head_pos") if hook in HEAD_SITES else ("layer_pos", "layer")
        if by not in allowed:
            raise ArrakisValueError(f"by={by!r} is not available for hook={hook!r}; accepted: {', '.join(allowed)}"
                                    + ("" if hook in HEAD_SITES else " (per-head grids need hook='z' or 'pattern')"))
        cfg = self.model.cfg
        ls = self._indices(layers, cfg.n_layers, "layer")
        ps = self._indices(positions, tokens.shape[1], "position")
        hs = self._indices(heads, cfg.n_heads, "head")
        name = lambda l: (f"blocks.{l}.{SITES[hook]}",)  # noqa: E731
        pat = hook == "pattern"  # pattern is [batch, head, query_pos, key_pos]; "pos" is the query position
        coords: dict[str, list] = {"layer": ls}
        if by == "layer":
            return ("layer",), coords, [Cell(name(l), (), None) for l in ls]
        coords["pos"], coords["head"] = self._pos_labels(tokens, ps), hs
        if by == "layer_pos":
            return ("layer", "pos"), {"layer": ls, "pos": coords["pos"]}, \
                [Cell(name(l), (_ALL, p), 1) if pat else Cell(name(l), (p,), 0) for l in ls for p in ps]
        if by == "head":
            return ("layer", "head"), {"layer": ls, "head": hs}, \
                [Cell(name(l), (h,) if pat else (_ALL, h), None) for l in ls for h in hs]
        return ("layer", "pos", "head"), coords, \
            [Cell(name(l), (h, p), 1) if pat else Cell(name(l), (p, h), 0) for l in ls for p in ps for h in hs]

    # ---- the batched sweep engine ---------------------------------------------------------------
    def _auto_chunk(self, rows_per_cell: int, n_pos: int) -> int:
        """Cells per forward pass: at most 32 rows and about 128 MB of float32 logits."""
        budget = (128 << 20) // (4 * max(1, n_pos) * self.model.cfg.d_vocab * rows_per_cell)
        return max(1, min(32 // rows_per_cell or 1, budget))

    def _plan(self, cells: list[Cell], n_pos: int, chunk: int, by_position: bool) -> list[list[int]]:
        """Chunks of cell indices: layer-major, or (``by_position``) banded by position first, the band width
        minimising the work (a chunk runs its positions >= its first through its layers >= its first)."""
        layer_major = [list(range(s, min(s + chunk, len(cells)))) for s in range(0, len(cells), chunk)]
        if not by_position or any(c.pos_axis is None for c in cells):
            return layer_major
        cfg = self.model.cfg
        unembed = cfg.d_vocab / (4 * cfg.d_model + 3 * cfg.d_mlp)  # lm_head work in units of one layer
        per_pass = 16 * (cfg.n_layers + unembed)  # reading every weight once costs about 16 token-rows

        def work(groups):
            return sum(len(g) * (n_pos - min(cells[i].pos for i in g)) * (cfg.n_layers - min(cells[i].layer for i in g)
                       + unembed) + per_pass for g in groups)

        best, best_work = layer_major, work(layer_major)
        for band in sorted({2 ** k for k in range(max(1, n_pos).bit_length())} | {n_pos}):
            bands: dict[int, list[int]] = defaultdict(list)
            for i in sorted(range(len(cells)), key=lambda i: (cells[i].layer, cells[i].pos)):
                bands[cells[i].pos // band].append(i)
            groups = [g[s:s + chunk] for g in bands.values() for s in range(0, len(g), chunk)]
            if work(groups) < best_work:
                best, best_work = groups, work(groups)
        return best

    @torch.no_grad()
    def _sweep(self, tokens: torch.Tensor, cells: list[Cell], source: dict[str, torch.Tensor],
               evaluate: Callable[[torch.Tensor], torch.Tensor], chunk_size: int | None, desc: str,
               progress: bool, embed_delta: torch.Tensor | None = None) -> torch.Tensor:
        """``evaluate(logits [b, pos, d_vocab])`` of ``tokens`` [b, pos] run with each cell patched in from
        ``source`` -> [n_cells] (see the module doc). ``embed_delta`` [1, pos, d_model] (b == 1 only) is
        added to ``hook_embed`` in every run, the unpatched one included."""
        from transformers import DynamicCache

        b, n_pos = tokens.shape
        chunk = chunk_size or self._auto_chunk(b, n_pos)
        shared, kv, base = b == 1, None, None
        if shared:
            kv = DynamicCache()  # filled by the unpatched run
            base = self.model.run_with_hooks(tokens, fwd_hooks=self._delta(embed_delta, 0), past_key_values=kv)
        elif embed_delta is not None:
            raise ArrakisValueError("embed_delta needs a single sequence")
        by_position = shared and len(kv.layers) == self.model.cfg.n_layers and all(
            getattr(layer, "keys", None) is not None and layer.keys.shape[-2] == n_pos for layer in kv.layers)
        out = torch.empty(len(cells))
        self._last_plan = []
        plan = self._plan(cells, n_pos, chunk, by_position)
        for group in self.progress(plan, desc=desc, total=len(plan), disable=not progress):
            part = [cells[i] for i in group]
            n, p0 = len(part), min(c.pos for c in part) if by_position else 0
            todo: dict[str, list[tuple[int, tuple, tuple]]] = defaultdict(list)
            for i, cell in enumerate(part):
                for name in cell.names:
                    todo[name].append((i, cell.index, cell.shifted(p0)))

            def write(act: torch.Tensor, hook) -> torch.Tensor:
                act = act.clone()
                rows = act.view(n, -1, *act.shape[1:])  # [cell, batch, ...]
                src = source[hook.name]
                for i, index, target in todo[hook.name]:
                    rows[(i, _ALL) + target] = src[(_ALL,) + index]
                return act

            hooks = [(name, write) for name in todo] + self._delta(embed_delta, p0)
            first = min(c.layer for c in part)
            self._last_plan.append((first, p0, n))
            if shared:
                logits = self._run_shared(tokens, n, first, p0, hooks, base, kv)
            else:
                logits = self.model.run_with_hooks(tokens.repeat(n, 1), fwd_hooks=hooks)
            for i, ci in enumerate(group):
                out[ci] = evaluate(logits[i * b:(i + 1) * b])
        return out

    @staticmethod
    def _delta(embed_delta: torch.Tensor | None, p0: int) -> list:
        if embed_delta is None:
            return []
        return [("hook_embed", lambda emb, hook: emb + embed_delta[:, p0:].to(emb.device, emb.dtype))]

    def _run_shared(self, tokens: torch.Tensor, n: int, first_layer: int, p0: int, hooks: list,
                    base: torch.Tensor, base_kv) -> torch.Tensor:
        """Logits [n, pos, d_vocab] of n copies of ``tokens`` [1, pos] under ``hooks`` that touch no layer before
        ``first_layer`` and no position before ``p0``; earlier positions come from the unpatched run (its
        logits ``base`` and KV cache ``base_kv``), earlier layers run at batch 1."""
        from transformers import DynamicCache

        cache = None
        if p0:
            kv = [(l.keys[..., :p0, :], l.values[..., :p0, :]) for l in base_kv.layers]
            cache = DynamicCache(ddp_cache_data=[
                (k.expand(n, *k.shape[1:]), v.expand(n, *v.shape[1:])) if layer >= first_layer else (k, v)
                for layer, (k, v) in enumerate(kv)])

        def expand(module, args, kwargs):
            if args:
                return (args[0].expand(n, *args[0].shape[1:]).contiguous(), *args[1:]), kwargs
            h = kwargs["hidden_states"]
            return args, {**kwargs, "hidden_states": h.expand(n, *h.shape[1:]).contiguous()}

        handle = self.model.adapter.layers()[first_layer].register_forward_pre_hook(expand, with_kwargs=True,
                                                                                    prepend=True)
        try:
            logits = self.model.run_with_hooks(tokens[:, p0:], fwd_hooks=hooks, past_key_values=cache)
        finally:
            handle.remove()
        if p0:
            logits = torch.cat([base[:, :p0].expand(n, -1, -1), logits], dim=1)
        return logits

    # ---- activation patching --------------------------------------------------------------------
    def patch(self, clean: Any, corrupted: Any, metric: Metric, hook: str = "resid_pre", by: str = "layer_pos",
              layers: Sequence[int] | None = None, positions: Sequence[int] | None = None,
              heads: Sequence[int] | None = None, chunk_size: int | None = None,
              progress: bool = True) -> LabelledTensor:
        """Activation patching: ``metric`` of the corrupted run with one clean activation patched in.

        clean, corrupted: text or ids of the same shape [batch, pos]. metric: logits [batch, pos, d_vocab]
        -> scalar. hook: ``resid_pre``, ``attn_out``, ``mlp_out``, ``z`` [batch, pos, head, d_head] or
        ``pattern`` [batch, head, q, k]. by: ``layer_pos`` (the vector at one position; for ``pattern``,
        one query row of every head), ``layer`` (every position), ``head`` (one head, every position;
        z/pattern only) or ``head_pos`` (one head at one (query) position). ``layers`` / ``positions`` /
        ``heads`` restrict the grid. Returns dims ``("layer",)``, ``("layer", "pos")``, ``("layer", "head")``
        or ``("layer", "pos", "head")``, float32, the same numbers as ``transformer_lens.patching``.
        """
        clean_t, corr_t = self._pair(clean, corrupted)
        self._check_args(metric, chunk_size)
        dims, coords, cells = self._grid(clean_t, hook, by, layers, positions, heads)
        with torch.no_grad():
            _scalar(metric(self.model(corr_t)))  # validates the metric once, before the sweep
            names = sorted({n for cell in cells for n in cell.names})
            _, cache = self.model.run_with_cache(clean_t, names_filter=names)
        source = {n: cache[n] for n in names}
        values = self._sweep(corr_t, cells, source, lambda logits: _scalar(metric(logits)), chunk_size,
                             f"patching {hook} by {by}", progress)
        return LabelledTensor(values.reshape([len(coords[d]) for d in dims]), dims, coords, name="metric")

    def attribution_patch(self, clean: Any, corrupted: Any, metric: Metric, hook: str = "resid_pre",
                          by: str = "layer_pos", layers: Sequence[int] | None = None,
                          positions: Sequence[int] | None = None, heads: Sequence[int] | None = None) -> LabelledTensor:
        """Attribution patching: the linear estimate of ``metric(patched) - metric(corrupted)`` for each cell
        of the same grids as :meth:`patch`, ``sum over the cell's entries of (clean - corrupted) * grad``,
        the gradient of ``metric`` (differentiable) taken on the corrupted run. One forward and one
        backward pass; the model's parameter ``.grad`` is left untouched."""
        clean_t, corr_t = self._pair(clean, corrupted)
        self._check_args(metric)
        dims, coords, cells = self._grid(clean_t, hook, by, layers, positions, heads)
        names = sorted({n for cell in cells for n in cell.names})
        with torch.no_grad():
            _, cache = self.model.run_with_cache(clean_t, names_filter=names)
        seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

        def add_zero(act: torch.Tensor, hook) -> torch.Tensor:
            delta = torch.zeros_like(act, requires_grad=True)
            seen[hook.name] = (act.detach(), delta)
            return act + delta

        with torch.enable_grad():
            value = _scalar(metric(self.model.run_with_hooks(corr_t, fwd_hooks=[(n, add_zero) for n in names])), True)
            grads = torch.autograd.grad(value, [seen[n][1] for n in names], allow_unused=True)
        contrib = {n: (cache[n] - seen[n][0]) * (g if g is not None else torch.zeros_like(seen[n][0]))
                   for n, g in zip(names, grads)}
        values = torch.stack([sum(contrib[n][(_ALL,) + index].sum() for n in cell_names)
                              for cell_names, index, _ in cells]).float().cpu()
        return LabelledTensor(values.reshape([len(coords[d]) for d in dims]), dims, coords, name="attribution")

    # ---- ROME causal tracing ----------------------------------------------------------------------
    def _subject_positions(self, tokens: torch.Tensor, subject: Any) -> list[int]:
        n_pos = tokens.shape[1]
        if subject is None:
            bos = getattr(self.model.tokenizer, "bos_token_id", None)
            return [p for p in range(n_pos) if not (p == 0 and bos is not None and int(tokens[0, 0]) == bos)]
        if isinstance(subject, str):
            strs = self.str_tokens(tokens)
            text = "".join(strs)
            needle = subject if subject in text else subject.strip()
            start = text.find(needle) if needle else -1
            if start < 0:
                raise ArrakisValueError(f"subject {subject!r} does not occur in the prompt's tokens {strs}")
            end, out, at = start + len(needle), [], 0
            for p, s in enumerate(strs):
                if at < end and at + len(s) > start:
                    out.append(p)
                at += len(s)
            return out
        if isinstance(subject, tuple) and len(subject) == 2 and all(isinstance(v, int) for v in subject):
            start, end = (check_index(subject[0], n_pos, "subject start"), subject[1])
            if not start < end <= n_pos:
                raise ArrakisValueError(f"subject span (start, end) must satisfy 0 <= start < end <= {n_pos}, "
                                        f"got {subject}")
            return list(range(start, end))
        return self._indices(subject, n_pos, "subject position")

    def trace_token_probability(self, input_ids: Any, target_idx: int | str, subject: Any = None,
                                kind: str = "hidden", window: int = 10, noise_level: float = 3.0, n_samples: int = 10,
                                seed: int = 0, layers: Sequence[int] | None = None,
                                positions: Sequence[int] | None = None, chunk_size: int | None = None,
                                progress: bool = True) -> TraceResult:
        """ROME causal tracing (see the module doc) of ``target_idx`` (id or one-token string) after one prompt.

        subject: the positions to corrupt: a ``(start, end)`` tuple (half-open span), a list of
        positions, a string located in the prompt's tokens, or None (every position but a leading BOS).
        kind: ``"hidden"`` (layer outputs), ``"attn"`` or ``"mlp"`` (windows of ``window`` layers).
        Returns a :class:`TraceResult` with ``scores`` [layer, pos] (restored probabilities).
        """
        tokens = self.one_sequence(input_ids, "trace_token_probability")
        target = self.target_token(target_idx)
        if kind not in TRACE_SITES:
            raise ArrakisValueError(f"kind must be one of {', '.join(map(repr, TRACE_SITES))}, got {kind!r}")
        for what, v in (("window", window), ("n_samples", n_samples)):
            if not isinstance(v, int) or v < 1:
                raise ArrakisValueError(f"{what} must be a positive int, got {v!r}")
        self._check_args(chunk_size=chunk_size)
        subj = self._subject_positions(tokens, subject)
        n_layers = self.model.cfg.n_layers
        ls = self._indices(layers, n_layers, "layer")
        ps = self._indices(positions, tokens.shape[1], "position")
        site = TRACE_SITES[kind]
        span = (lambda l: [l]) if kind == "hidden" else \
            (lambda l: list(range(max(0, l - window // 2), min(n_layers, l + math.ceil(window / 2)))))
        cells = [Cell(tuple(f"blocks.{k}.{site}" for k in span(l)), (p,), 0) for l in ls for p in ps]
        names = sorted({n for cell in cells for n in cell.names})

        std = noise_level * float(self.model.W_E.detach().float().std())
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(n_samples, len(subj), self.model.cfg.d_model, generator=gen) * std
        noise = noise.to(self.model.device, self.model.dtype)

        prob = lambda logits: logits[:, -1].float().softmax(-1)[:, target].mean().cpu()  # noqa: E731
        with torch.no_grad():
            clean_logits, cache = self.model.run_with_cache(tokens, names_filter=names)

            def noised(emb: torch.Tensor, hook) -> torch.Tensor:
                emb = emb.clone()
                emb[:, subj] += noise
                return emb

            corrupted = float(prob(self.model.run_with_hooks(tokens.repeat(n_samples, 1),
                                                             fwd_hooks=[("hook_embed", noised)])))
        values = torch.zeros(len(cells))
        for sample in self.progress(range(n_samples), desc=f"causal tracing ({kind})", disable=not progress):
            delta = torch.zeros(1, tokens.shape[1], self.model.cfg.d_model, device=noise.device, dtype=noise.dtype)
            delta[0, subj] = noise[sample]
            values += self._sweep(tokens, cells, {n: cache[n] for n in names}, prob, chunk_size, "", False, delta)
        values /= n_samples
        scores = LabelledTensor(values.reshape(len(ls), len(ps)), ("layer", "pos"),
                                {"layer": ls, "pos": self._pos_labels(tokens, ps)}, name="prob")
        target_token = self.model.to_string(target) if self.model.tokenizer is not None else str(target)
        return TraceResult(scores, float(prob(clean_logits)), corrupted, target, target_token, subj, kind,
                           1 if kind == "hidden" else window, std)

    # ---- neurons ------------------------------------------------------------------------------------
    @torch.no_grad()
    def intervene_on_neuron(self, input_ids: Any, layer_idx: int, neuron_idx: int, scale: float = 0.0,
                            pos: int = -1, top_k: int = 10) -> NeuronEffect:
        """Scale MLP neuron ``neuron_idx`` of ``layer_idx`` (``mlp.hook_post``, every position) by ``scale``
        (0 ablates it) for one run, and compare the prediction at ``pos`` with the unchanged run.
        Hooks only: the weights are never edited."""
        tokens = self.one_sequence(input_ids, "intervene_on_neuron")
        layer = self.check_layer(layer_idx)
        neuron = check_index(neuron_idx, self.model.cfg.d_mlp, "neuron")
        p = check_index(pos, tokens.shape[1], "position")
        if not isinstance(top_k, int) or top_k < 1:
            raise ArrakisValueError(f"top_k must be a positive int, got {top_k!r}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise ArrakisValueError(f"scale must be a number (0 ablates the neuron), got {scale!r}")
        name = f"blocks.{layer}.mlp.hook_post"
        before, cache = self.model.run_with_cache(tokens, names_filter=[name])

        def scaled(act: torch.Tensor, hook) -> torch.Tensor:
            act = act.clone()
            act[..., neuron] *= scale
            return act

        after = self.model.run_with_hooks(tokens, fwd_hooks=[(name, scaled)])
        lb, la = before[0, p].float().cpu(), after[0, p].float().cpu()
        pb, pa = lb.softmax(-1), la.softmax(-1)
        kl = float((pb * (lb.log_softmax(-1) - la.log_softmax(-1))).sum())
        top = (pa - pb).abs().topk(min(top_k, pb.numel())).indices.tolist()
        to_str = (lambda t: self.model.to_string(t)) if self.model.tokenizer is not None else str
        frame = pd.DataFrame({"token_id": top, "token": [to_str(t) for t in top], "prob_before": pb[top].numpy(),
                              "prob_after": pa[top].numpy(), "delta_prob": (pa - pb)[top].numpy(),
                              "delta_logit": (la - lb)[top].numpy()})
        return NeuronEffect(layer, neuron, float(scale), p, cache[name][0, :, neuron].float().cpu(), lb, la, kl, frame)
