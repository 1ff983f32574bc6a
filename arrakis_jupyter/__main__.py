"""Command line: ``python -m arrakis_jupyter demo [PROMPT]`` checks the main job from a terminal."""
from __future__ import annotations

import argparse
import sys

DEFAULT_PROMPT = "The capital of France is"


def demo(prompt: str, top_k: int = 5, out=sys.stdout) -> None:
    """Print the default model's top-k next tokens and a logit-lens table (layer x top-1 token)."""
    import torch

    from . import load_model

    model = load_model()
    with torch.no_grad():
        logits, cache = model.run_with_cache(prompt, names_filter=lambda n: n.endswith("hook_resid_post"))
        probs = logits[0, -1].float().softmax(-1)
        top = probs.topk(top_k)
        print(f"Model: {model.cfg.architecture} ({model.cfg.n_layers} layers), prompt: {prompt!r}", file=out)
        print(f"\nTop-{top_k} next tokens:", file=out)
        for rank, (p, i) in enumerate(zip(top.values.tolist(), top.indices.tolist()), 1):
            print(f"  {rank}. {model.to_string(i)!r:<16} p={p:.4f}", file=out)
        resid = torch.stack([cache[f"blocks.{l}.hook_resid_post"][0, -1] for l in range(model.cfg.n_layers)])
        lens = model.lens_logits(resid).softmax(-1)
        final_top = top.indices[0]
        print(f"\nLogit lens at the last position (top-1 token after each layer; p of {model.to_string(final_top)!r}):",
              file=out)
        print(f"  {'layer':>5}  {'top-1 token':<16} {'p(top-1)':>9} {'p(final)':>9}", file=out)
        for layer, row in enumerate(lens):
            p, i = row.max(-1)
            print(f"  {layer:>5}  {model.to_string(int(i))!r:<16} {float(p):>9.4f} {float(row[final_top]):>9.4f}",
                  file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m arrakis_jupyter", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="top-5 next tokens and a logit-lens table on the default model")
    p_demo.add_argument("prompt", nargs="?", default=DEFAULT_PROMPT)
    p_demo.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo(args.prompt, args.top_k)
    return 0


if __name__ == "__main__":
    sys.exit(main())
