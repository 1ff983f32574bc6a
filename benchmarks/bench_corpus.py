#!/usr/bin/env python
"""Benchmark streaming activations over the shipped corpus against plain forward passes.

On the default model, the first ``--tokens`` tokens of ``corpus.default()`` in batches of
``--batch`` windows of ``--length`` tokens:

- ``plain``: ``model(tokens, attention_mask=...)`` for each batch (tokenisation done beforehand);
- ``stream``: ``corpus.stream_activations(model, corpus, hook)`` end to end (tokenising lazily, then a
  forward pass that keeps ``hook``'s activation of each batch). Target: at least 80% of plain's
  throughput (tokens per second).

Memory: the largest resident set size seen after each batch in a fresh process streaming N and 4N tokens
(each process only streams and drops each batch): it must not grow with the corpus.

    python benchmarks/bench_corpus.py [--tokens 16384 --batch 8 --length 128 --hook blocks.6.hook_resid_post]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import offline  # noqa: E402,F401

CHILD = """
import sys, torch
sys.path.insert(0, {repo!r})
from arrakis_jupyter import corpus, load_model

def rss_kib():  # resident memory now (ru_maxrss would keep the model-loading peak)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])

model = load_model()
torch.set_grad_enabled(False)
before, peak, n = rss_kib(), 0, 0
for batch, acts in corpus.stream_activations(model, corpus.default(), {hook!r}, {batch}, {length}, {tokens}, False):
    n += batch.n_tokens
    peak = max(peak, rss_kib())
print(n, before, peak)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=16_384)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--hook", default="blocks.6.hook_resid_post")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch

    from arrakis_jupyter import corpus, load_model

    model = load_model()
    torch.set_grad_enabled(False)
    texts = corpus.default()
    batches = list(corpus.token_batches(model, texts, args.batch, args.length, args.tokens, progress=False))
    n_tokens = sum(b.n_tokens for b in batches)

    def plain() -> None:
        for b in batches:
            model(b.tokens, attention_mask=b.attention_mask)

    def stream() -> None:
        for _ in corpus.stream_activations(model, texts, args.hook, args.batch, args.length, args.tokens,
                                           progress=False):
            pass

    plain()  # warm-up
    times: dict[str, list[float]] = {"plain": [], "stream": []}
    for i in range(args.repeats):
        for name, fn in ((("plain", plain), ("stream", stream)) if i % 2 == 0 else (("stream", stream), ("plain", plain))):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    best = {k: min(v) for k, v in times.items()}
    ratio = best["plain"] / best["stream"]

    rss = {}
    for tokens in (args.tokens // 4, args.tokens):
        code = CHILD.format(repo=str(offline.REPO), hook=args.hook, batch=args.batch, length=args.length, tokens=tokens)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
        rss[tokens] = {"tokens": int(out[0]), "rss_before_mib": int(out[1]) / 1024, "rss_peak_mib": int(out[2]) / 1024}

    result = {"tokens": n_tokens, "plain_s": best["plain"], "stream_s": best["stream"],
              "plain_tok_per_s": n_tokens / best["plain"], "stream_tok_per_s": n_tokens / best["stream"],
              "stream_over_plain_throughput": ratio, "rss": rss,
              "main_process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print(f"{n_tokens} corpus tokens, batches of {args.batch} x {args.length}, hook {args.hook}")
    print(f"  plain forward          {result['plain_tok_per_s']:8.0f} tok/s")
    print(f"  stream_activations     {result['stream_tok_per_s']:8.0f} tok/s  ({ratio:.0%} of plain; target >= 80%)")
    for tokens, r in rss.items():
        print(f"  peak RSS streaming {r['tokens']:6d} tokens: {r['rss_peak_mib']:7.0f} MiB "
              f"(after loading the model: {r['rss_before_mib']:.0f} MiB)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
