"""write_read tool: write/read head scores and information flow, checked against computations from the HF modules."""
from __future__ import annotations

import pytest
import torch

import arrakis_jupyter.tools.read_write  # noqa: F401  (registers the tool)
from arrakis_jupyter.errors import ArrakisIndexError, ArrakisValueError
from arrakis_jupyter.tools.read_write import WriteReadAnalyzer
from arrakis_jupyter.tools.registry import get_tool_class
from conftest import tiny

ARCHS = ["llama", "gpt2"]  # llama: grouped-query attention 4:2 and RMSNorm; gpt2: fused qkv, LayerNorm, biases
TOL = dict(rtol=1e-4, atol=1e-6)


def randomised(name: str):
    """A tiny model whose norm weights are not all ones, so folding ln1's weight into the circuits is tested."""
    model = tiny(name)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for mod in model.hf_model.modules():
            if "norm" in type(mod).__name__.lower() and getattr(mod, "weight", None) is not None:
                mod.weight.copy_(0.5 + torch.rand(mod.weight.shape, generator=g))
    return model


@pytest.fixture(scope="module", params=ARCHS)
def model(request):
    return randomised(request.param)


def hf_attention(model, layer: int):
    """(ln1 weight [d], W_Q [H,d,dh], W_K [KV,d,dh], W_V [KV,d,dh], W_O [H,dh,d], ln1 module, value fn) read
    straight from the Hugging Face modules, not from the canonical weights the tool uses."""
    cfg = model.cfg
    H, KV, dh, d = cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_model
    if cfg.hf_model_type == "gpt2":
        block = model.hf_model.transformer.h[layer]
        w = block.attn.c_attn.weight  # Conv1D: x @ w, [d, 3d]
        wq, wk, wv = (w[:, i * d:(i + 1) * d].reshape(d, -1, dh).permute(1, 0, 2) for i in range(3))
        wo = block.attn.c_proj.weight.reshape(H, dh, d)
        ln = block.ln_1
        value = lambda xn: block.attn.c_attn(xn)[..., 2 * d:].reshape(*xn.shape[:-1], KV, dh)  # noqa: E731
    else:
        block = model.hf_model.model.layers[layer]
        a = block.self_attn
        wq = a.q_proj.weight.T.reshape(d, H, dh).permute(1, 0, 2)
        wk = a.k_proj.weight.T.reshape(d, KV, dh).permute(1, 0, 2)
        wv = a.v_proj.weight.T.reshape(d, KV, dh).permute(1, 0, 2)
        wo = a.o_proj.weight.T.reshape(H, dh, d)
        ln = block.input_layernorm
        value = lambda xn: a.v_proj(xn).reshape(*xn.shape[:-1], KV, dh)  # noqa: E731
    return ln.weight.detach(), wq.detach(), wk.detach(), wv.detach(), wo.detach(), ln, value


def direct_circuits(model, layer):
    lnw, wq, wk, wv, wo, _, _ = hf_attention(model, layer)
    D = torch.diag(lnw)
    qk, ov = [], []
    for h in range(model.cfg.n_heads):
        kv = h * model.cfg.n_kv_heads // model.cfg.n_heads  # the kv head query head h shares
        qk.append(D @ wq[h] @ wk[kv].T @ D)
        ov.append(D @ wv[kv] @ wo[h])
    return torch.stack(qk), torch.stack(ov)


def expected_selection(layer, scores, threshold):
    order = sorted(range(len(scores)), key=lambda h: -float(scores[h]))
    return [(layer, h) for h in order if scores[h] >= threshold]


def test_registered_under_arrakis_key():
    assert get_tool_class("write_read") is WriteReadAnalyzer


@pytest.mark.parametrize("layer", [0, 1])
def test_write_scores_are_relative_ov_norms(model, layer):
    _, ov = direct_circuits(model, layer)
    norms = torch.linalg.matrix_norm(ov)  # Frobenius, [head]
    expected = norms / norms.max()
    tool = WriteReadAnalyzer(model)
    threshold = float(expected.sort().values[1])  # a threshold that splits the heads
    result = tool.identify_write_heads(layer, threshold=threshold)
    torch.testing.assert_close(result.scores.values, expected, **TOL)
    torch.testing.assert_close(torch.tensor(result.table["ov_norm"].values), norms, **TOL)
    assert result.scores.labels("head") == [f"L{layer}H{h}" for h in range(4)]
    assert list(result) == expected_selection(layer, expected, threshold) and len(result) == 3
    assert list(result.table["selected"]) == [bool(s >= threshold) for s in expected]
    assert tool.identify_write_heads(layer, threshold=1.0).heads == [(layer, int(expected.argmax()))]


def test_write_scores_in_a_subspace(model):
    """U spanned by three random directions: ||W_OV P_U||_F with the projector P_U = D^T (D D^T)^-1 D."""
    _, ov = direct_circuits(model, 1)
    dirs = torch.randn(3, model.cfg.d_model, generator=torch.Generator().manual_seed(5))
    proj = dirs.T @ torch.linalg.inv(dirs @ dirs.T) @ dirs
    written = torch.linalg.matrix_norm(ov @ proj)
    result = WriteReadAnalyzer(model).identify_write_heads(1, threshold=0.0, subspace=dirs)
    torch.testing.assert_close(result.scores.values, written / written.max(), **TOL)
    fraction = written ** 2 / torch.linalg.matrix_norm(ov) ** 2
    torch.testing.assert_close(torch.tensor(result.table["fraction"].values), fraction, **TOL)
    assert len(result) == 4 and bool((fraction < 0.5).all())  # 3 of 64 dims hold a small share of the energy
    one_dim = WriteReadAnalyzer(model).identify_write_heads(1, subspace=7)
    col = ov[:, :, 7].norm(dim=-1)
    torch.testing.assert_close(one_dim.scores.values, col / col.max(), **TOL)


@pytest.mark.parametrize("dim", [0, 37, -1])
def test_read_scores_from_qk_and_ov_rows_and_columns(model, dim):
    qk, ov = direct_circuits(model, 0)
    d = dim % model.cfg.d_model
    reads = {"q": qk[:, d, :].norm(dim=-1), "k": qk[:, :, d].norm(dim=-1), "v": ov[:, d, :].norm(dim=-1)}
    rel = {c: r / r.max() for c, r in reads.items()}
    expected = torch.stack(list(rel.values())).amax(0)
    result = WriteReadAnalyzer(model).identify_read_heads(0, dim, threshold=0.9)
    for c in "qkv":
        torch.testing.assert_close(torch.tensor(result.table[f"{c}_read"].values), reads[c], **TOL)
        torch.testing.assert_close(torch.tensor(result.table[f"{c}_rel"].values), rel[c], **TOL)
    torch.testing.assert_close(result.scores.values, expected, **TOL)
    assert list(result) == expected_selection(0, expected, 0.9)


@pytest.mark.parametrize("name", ARCHS)
def test_a_head_made_to_read_a_dimension_is_found(name):
    """Scale input dimension 11 of one query head's weights by 20: that head alone reads it through its query."""
    model = tiny(name)
    cfg, dim, head = model.cfg, 11, 2
    rows = slice(head * cfg.d_head, (head + 1) * cfg.d_head)
    with torch.no_grad():
        if name == "gpt2":
            model.hf_model.transformer.h[1].attn.c_attn.weight[dim, rows] *= 20
        else:
            model.hf_model.model.layers[1].self_attn.q_proj.weight[rows, dim] *= 20
    result = WriteReadAnalyzer(model).identify_read_heads(1, dim)
    q_rel = result.table["q_rel"]
    assert q_rel.idxmax() == "L1H2" and q_rel.drop("L1H2").max() < 0.3
    assert (1, 2) in result.heads and float(result.scores[head]) == 1.0


def direct_flow(model, tokens, src, dst, n_layers):
    """attention[dst, src] * ||v_src W_O^h|| with v from the HF ln1 and value projection of the cached resid_pre."""
    names = lambda n: n.endswith(("hook_resid_pre", "hook_pattern"))  # noqa: E731
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
        flows = []
        for l in range(n_layers):
            _, _, _, _, wo, ln, value = hf_attention(model, l)
            v = value(ln(cache[f"blocks.{l}.hook_resid_pre"][0, src]))  # [kv, d_head]
            kv = torch.arange(model.cfg.n_heads) * model.cfg.n_kv_heads // model.cfg.n_heads
            out = torch.einsum("hd,hdm->hm", v[kv], wo).norm(dim=-1)
            flows.append(cache[f"blocks.{l}.attn.hook_pattern"][0, :, dst, src] * out)
    return torch.stack(flows)


def ablated_flow(model, tokens, src, dst, n_layers):
    """Causal check: zero the value vectors at src; each head's output at dst changes by exactly its src term."""
    flows = []
    with torch.no_grad():
        for l in range(n_layers):
            name = f"blocks.{l}.attn.hook_result"
            _, clean = model.run_with_cache(tokens, names_filter=name)

            def zero_src(v, hook):
                v = v.clone()
                v[:, src] = 0
                return v

            _, ablated = model.run_with_cache(tokens, names_filter=name,
                                              fwd_hooks=[(f"blocks.{l}.attn.hook_v", zero_src)])
            flows.append((clean[name][0, dst] - ablated[name][0, dst]).norm(dim=-1))
    return torch.stack(flows)


@pytest.mark.parametrize("src,dst", [(2, 7), (0, -1), (4, 4)])
def test_information_flow_matches_direct_and_ablation(model, tokens, src, dst):
    tool = WriteReadAnalyzer(model)
    result = tool.trace_information_flow(tokens[:1], src, dst, n_layers=2)
    d = dst % tokens.shape[1]
    assert (result.src_pos, result.dst_pos) == (src, d) and result.flow.shape == (2, 4)
    torch.testing.assert_close(result.flow.values, direct_flow(model, tokens[:1], src, d, 2), **TOL)
    torch.testing.assert_close(result.flow.values, ablated_flow(model, tokens[:1], src, d, 2), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(result.flow.values, result.attention.values * result.ov_norm.values)
    torch.testing.assert_close(result.per_layer, result.flow.values.sum(-1))
    frame = result.to_frame()
    assert list(frame.columns) == ["attention", "ov_norm", "flow"] and len(frame) == 8
    one = tool.trace_information_flow(tokens[0], src, dst, n_layers=1)
    torch.testing.assert_close(one.flow.values, result.flow.values[:1])


def test_default_model_write_read_and_flow(default_model):
    tool = WriteReadAnalyzer(default_model)
    qk, ov = direct_circuits(default_model, 5)  # SmolLM2: 9 query heads over 3 kv heads
    norms = torch.linalg.matrix_norm(ov)
    write = tool.identify_write_heads(5)
    torch.testing.assert_close(write.scores.values, norms / norms.max(), **TOL)
    assert list(write) == expected_selection(5, norms / norms.max(), 0.8) and 1 <= len(write) <= 9
    read = tool.identify_read_heads(5, 100)
    torch.testing.assert_close(torch.tensor(read.table["k_read"].values), qk[:, :, 100].norm(dim=-1), **TOL)

    prompt = "The capital of France is"
    flow = tool.trace_information_flow(prompt, " France", " is", n_layers=3)
    assert (flow.src_pos, flow.dst_pos, flow.src_token, flow.dst_token) == (3, 4, " France", " is")
    assert flow.flow.shape == (3, 9)
    tokens = default_model.to_tokens(prompt)
    torch.testing.assert_close(flow.flow.values, direct_flow(default_model, tokens, 3, 4, 3), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(flow.flow.values, ablated_flow(default_model, tokens, 3, 4, 3), rtol=1e-4, atol=1e-5)
    assert tool.trace_information_flow(prompt, "France", "is").src_pos == 3  # surrounding spaces ignored


def test_bad_input_gets_clear_errors(tokens):
    tool = WriteReadAnalyzer(tiny("llama"))
    with pytest.raises(ArrakisIndexError, match=r"layer 2 is out of range: valid layers are 0..1"):
        tool.identify_write_heads(2)
    with pytest.raises(ArrakisIndexError, match=r"layer -3 is out of range"):
        tool.identify_read_heads(-3, 0)
    with pytest.raises(ArrakisIndexError, match=r"dim_idx must be a residual dimension in 0..63 \(d_model=64\), got 64"):
        tool.identify_read_heads(0, 64)
    with pytest.raises(ArrakisIndexError, match="got 1.5"):
        tool.identify_read_heads(0, 1.5)
    with pytest.raises(ArrakisValueError, match=r"threshold must be a number in \[0, 1\].*got 1.5"):
        tool.identify_write_heads(0, threshold=1.5)
    with pytest.raises(ArrakisIndexError, match="residual dimension 99 is out of range"):
        tool.identify_write_heads(0, subspace=99)
    with pytest.raises(ArrakisValueError, match=r"directions \[k, d_model=64\], got shape \(2, 10\)"):
        tool.identify_write_heads(0, subspace=torch.ones(2, 10))
    with pytest.raises(ArrakisValueError, match="span only 1 dimensions"):
        tool.identify_write_heads(0, subspace=torch.ones(2, 64))
    with pytest.raises(ArrakisIndexError, match=r"n_layers must be an int in 1..2, got 3"):
        tool.trace_information_flow(tokens[:1], 0, 1, n_layers=3)
    with pytest.raises(ArrakisIndexError, match=r"src_token position 9 is out of range: .* 0..8"):
        tool.trace_information_flow(tokens[:1], 9, 1)
    with pytest.raises(ArrakisValueError, match=r"dst position 1 .* is before src position 5"):
        tool.trace_information_flow(tokens[:1], 5, 1)
    with pytest.raises(ArrakisValueError, match="one sequence at a time, got a batch of 2"):
        tool.trace_information_flow(tokens, 0, 1)
    with pytest.raises(ArrakisValueError, match=r"src_token token 'zebra' is not in the input; its tokens are \["):
        tool.trace_information_flow(tokens[:1], "zebra", 1)
