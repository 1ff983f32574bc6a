#!/usr/bin/env python
"""Benchmark ``causal`` activation patching against ``transformer_lens.patching`` on the default model.

resid_pre patching over every layer x position of a 14-token prompt on SmolLM2-135M-Instruct
(30 layers x 14 positions = 420 patched runs), metric = logit(" Paris") - logit(" Rome") at the
last position, clean "... Eiffel Tower ..." vs corrupted "... Colosseum ..." (same token length):

1. ``tl_patching``   ``transformer_lens.patching.get_act_patch_resid_pre`` on a TransformerLens 4
   ``TransformerBridge.boot_transformers(...)`` booted offline on a deep copy of the same in-memory
   HF model (one forward pass per cell), run under ``torch.no_grad()`` (the faster way to call it;
   ``--tl-grad`` times it as it runs by default, building the autograd graph);
2. ``causal.patch`` ``CausalTracer(model).patch(clean, corrupted, metric, hook="resid_pre")`` for each
   ``--chunk-sizes`` entry ("auto" = the tool's default, 32 cells): the patched runs are batched, and
   what patching cannot change is not recomputed: layers before a chunk's first patched layer run
   once at batch 1, positions before its first patched position come from the unpatched run's KV
   cache (see ``arrakis_jupyter/tools/causal.py``). The timing includes everything the call does: the
   clean run caching the activations, the metric's validation run and the unpatched run. ``forwards``
   counts the HF model's forward calls in one such call (those three included).

Both results are compared cell by cell (max |ours - TL|). The run fails (exit status 1) unless the
auto-chunked run is at least ``--min-speedup`` (5) times faster than TL and within ``--tol`` (1e-3).

    python benchmarks/bench_patching.py [--repeats 3 --chunk-sizes auto,16 --json out.json]
"""
from __future__ import annotations

import offline  # noqa: F401  (first: hub access off, repo on sys.path)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

TL_MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"  # with hf_model= it is only recorded, never fetched
CLEAN = "Fact: the famous Eiffel Tower is located in the beautiful city of"
CORRUPTED = "Fact: the famous Colosseum is located in the beautiful city of"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each causal.patch variant (median reported)")
    p.add_argument("--chunk-sizes", default="auto",
                   help="comma-separated chunk sizes for causal.patch; 'auto' = the tool's default")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--tl-grad", action="store_true", help="time TL with autograd on (its default) instead of no_grad")
    p.add_argument("--min-speedup", type=float, default=5.0)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args(argv)


def boot_bridge(model):
    from transformer_lens.model_bridge import TransformerBridge

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = TransformerBridge.boot_transformers(TL_MODEL_NAME, hf_model=copy.deepcopy(model.hf_model),
                                                     tokenizer=model.tokenizer, device="cpu")
    bridge.eval()
    return bridge


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformer_lens import patching

    from arrakis_jupyter import load_model
    from arrakis_jupyter.tools.causal import CausalTracer

    model = load_model()
    clean, corrupted = model.to_tokens(CLEAN), model.to_tokens(CORRUPTED)
    assert clean.shape == corrupted.shape == (1, 14), (clean.shape, corrupted.shape)
    paris, rome = model.to_single_token(" Paris"), model.to_single_token(" Rome")

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return (logits[:, -1, paris] - logits[:, -1, rome]).mean()

    with torch.no_grad():
        clean_diff, corrupted_diff = float(metric(model(clean))), float(metric(model(corrupted)))
    n_cells = model.cfg.n_layers * clean.shape[1]

    t0 = time.perf_counter()
    bridge = boot_bridge(model)
    boot_s = time.perf_counter() - t0
    with torch.no_grad():
        _, tl_cache = bridge.run_with_cache(clean)
    grad_ctx = contextlib.nullcontext() if args.tl_grad else torch.no_grad()
    t0 = time.perf_counter()
    with grad_ctx:
        tl = patching.get_act_patch_resid_pre(bridge, corrupted, tl_cache, metric).detach().float()
    tl_s = time.perf_counter() - t0

    tool = CausalTracer(model)
    calls = [0]
    model.hf_model.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    rows = [dict(variant=f"tl_patching{' (grad)' if args.tl_grad else ''}", chunk="-", forwards=n_cells,
                 seconds=tl_s, times=[tl_s], speedup=1.0, max_diff=0.0)]
    for spec in [s.strip() for s in args.chunk_sizes.split(",") if s.strip()]:
        chunk = None if spec == "auto" else int(spec)
        times, result = [], None
        for _ in range(args.repeats):
            calls[0] = 0
            t0 = time.perf_counter()
            result = tool.patch(clean, corrupted, metric, hook="resid_pre", by="layer_pos", chunk_size=chunk,
                                progress=False)
            times.append(time.perf_counter() - t0)
        used = chunk or tool._auto_chunk(1, clean.shape[1])
        med = statistics.median(times)
        rows.append(dict(variant="causal.patch", chunk=f"{spec} ({used})" if spec == "auto" else spec,
                         forwards=calls[0], seconds=med, times=times, speedup=tl_s / med,
                         max_diff=float((result.values - tl).abs().max())))

    print(f"\nresid_pre patching, {model.cfg.n_layers} layers x {clean.shape[1]} positions = {n_cells} cells; "
          f"SmolLM2-135M-Instruct, float32, CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}")
    print(f"metric = logit(' Paris') - logit(' Rome'): clean {clean_diff:.4f}, corrupted {corrupted_diff:.4f}; "
          f"TL bridge boot {boot_s:.1f} s (not timed below)")
    print(f"{'variant':<22}{'chunk':>10}{'forwards':>10}{'time (s)':>11}{'runs (s)':>24}{'speed-up':>10}"
          f"{'max |diff|':>12}")
    for r in rows:
        runs = ", ".join(f"{t:.2f}" for t in r["times"])
        print(f"{r['variant']:<22}{r['chunk']:>10}{r['forwards']:>10}{r['seconds']:>11.2f}{runs:>24}"
              f"{r['speedup']:>9.1f}x{r['max_diff']:>12.2e}")
    auto = next((r for r in rows[1:] if r["chunk"].startswith("auto")), rows[-1])
    ok = auto["speedup"] >= args.min_speedup and auto["max_diff"] <= args.tol
    print(f"\n{'PASS' if ok else 'FAIL'}: causal.patch (chunk {auto['chunk']}) is {auto['speedup']:.1f}x faster than "
          f"transformer_lens.patching (target >= {args.min_speedup}x), max |diff| {auto['max_diff']:.2e} "
          f"(target <= {args.tol:g})")
    if args.json:
        args.json.write_text(json.dumps(dict(rows=rows, clean_metric=clean_diff, corrupted_metric=corrupted_diff,
                                             threads=torch.get_num_threads(), ok=ok), indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
