"""knowledge tool (alias k_prober): Arrakis's polysemantic score against a direct numpy computation, the concept-
neuron probe against direct run_with_cache reads, and a token-level "is this token a number" linear probe on the
default model that beats its shuffled-label control by a wide margin on held-out tokens."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import tiny

from arrakis_jupyter import corpus
from arrakis_jupyter.errors import ArrakisIndexError, ArrakisValueError, HookNameError
from arrakis_jupyter.tools.knowledge import KnowledgeProber, ProbeResult
from arrakis_jupyter.tools.registry import get_tool_class


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


@pytest.fixture(scope="module")
def kp(default_model) -> KnowledgeProber:
    return KnowledgeProber(default_model)


def has_digit(s: str) -> bool:
    return any(c.isdigit() for c in s)


@pytest.fixture(scope="module")
def number_data(default_model):
    """Passages of the shipped corpus with digits; per-token labels: 1 = the token contains a digit, 0 = a random
    sample of as many other tokens (BOS excluded), None = not used."""
    m, rng = default_model, random.Random(0)
    texts = [p for p in corpus.default(300) if sum(map(str.isdigit, p)) >= 4][:30]
    labels = []
    for text in texts:
        st = m.to_str_tokens(text)
        lab = [None] * len(st)
        pos = [i for i, s in enumerate(st) if has_digit(s)]
        neg = [i for i, s in enumerate(st) if not has_digit(s) and not (i == 0 and m.cfg.default_prepend_bos)]
        for i in pos:
            lab[i] = 1
        for i in rng.sample(neg, min(len(neg), len(pos))):
            lab[i] = 0
        labels.append(lab)
    return texts, labels


def test_registered_under_both_names():
    assert get_tool_class("knowledge") is KnowledgeProber
    assert get_tool_class("k_prober") is KnowledgeProber


def numpy_polysemantic(W: np.ndarray, k: int) -> np.ndarray:
    """Arrakis's loop, in numpy: W [d_model, d_mlp], neurons are columns."""
    U = W / np.linalg.norm(W, axis=0)
    sim = U.T @ U
    out = []
    for i in range(W.shape[1]):
        order = [j for j in np.argsort(-sim[i], kind="stable") if j != i][:k]
        nb = U[:, order]
        mean = nb.mean(axis=1, keepdims=True)
        out.append(np.linalg.norm(mean) / np.linalg.norm(nb - mean, axis=0).mean())
    return np.array(out)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("k", [2, 5])
def test_polysemantic_score_matches_numpy(arch, k):
    model = tiny(arch)
    res = get_tool_class("k_prober")(model).polysemantic_score(1, k_neighbors=k)
    assert res.dims == ("neuron",) and res.shape == (model.cfg.d_mlp,)
    expected = numpy_polysemantic(model.W_in[1].detach().double().numpy(), k)
    np.testing.assert_allclose(res.values.numpy(), expected, rtol=1e-4)


def test_polysemantic_score_default_model(kp, default_model):
    res = kp.polysemantic_score(6)
    expected = numpy_polysemantic(default_model.W_in[6].detach().double().numpy(), 5)
    np.testing.assert_allclose(res.values.numpy(), expected, rtol=1e-4)
    assert list(res.to_frame().columns) == ["polysemantic_score"]


def test_knowledge_probe_matches_run_with_cache(kp, default_model):
    pairs = [("The capital of France is Paris", "The capital of France is Rome"),
             ("The sky is blue", "The sky is green"), ("Two plus two is four", "Two plus two is five"),
             ("Water freezes at zero degrees", "Water freezes at ninety degrees")]
    layer, neuron = 6, 10
    df = kp.knowledge_probe(pairs, (layer, neuron))
    hook = f"blocks.{layer}.mlp.hook_post"
    for row, (t, f) in zip(df.itertuples(), pairs):
        for text, got in ((t, row.true_activation), (f, row.false_activation)):
            with torch.no_grad():
                _, cache = default_model.run_with_cache(text, names_filter=hook)
            assert got == pytest.approx(float(cache[hook][0, -1, neuron]), abs=1e-5)
    d = (df["true_activation"] - df["false_activation"]).to_numpy()
    assert df.attrs["mean_difference"] == pytest.approx(d.mean())
    assert df.attrs["t"] == pytest.approx(d.mean() / (d.std(ddof=1) / np.sqrt(len(d))))
    assert 0 <= df.attrs["p"] <= 1 and df.attrs["n_pairs"] == 4


def test_number_token_probe_beats_control(kp, default_model, number_data):
    texts, labels = number_data
    res = kp.train_probe(texts, labels, 6, hook="resid_post")
    assert isinstance(res, ProbeResult) and res.hook == "blocks.6.hook_resid_post" and res.token_level
    n = sum(v is not None for lab in labels for v in lab)
    assert res.n_train + res.n_test == n and res.n_test >= 80
    train, test = set(res.train_index.tolist()), set(res.test_index.tolist())
    assert not train & test and train | test == set(range(n))  # held-out tokens were not trained on
    # measured: held-out accuracy 1.00 vs control 0.43 (balanced classes, chance 0.5)
    assert res.accuracy >= 0.95 and res.balanced_accuracy >= 0.95
    assert res.control_accuracy <= 0.70 and res.accuracy - res.control_accuracy >= 0.25
    # the held-out accuracy, recomputed from the probe's weights on activations read directly
    feats, ys = [], []
    for text, lab in zip(texts, labels):
        with torch.no_grad():
            _, cache = default_model.run_with_cache(text, names_filter=res.hook, return_type=None)
        for p, v in enumerate(lab):
            if v is not None:
                feats.append(cache[res.hook][0, p])
                ys.append(v)
    X, y = torch.stack(feats), torch.tensor(ys)
    idx = res.test_index
    assert float((res.decide(X[idx]) == y[idx]).float().mean()) == pytest.approx(res.accuracy)
    pred = res.predict("In 1999 we had 3 cats.")
    st = default_model.to_str_tokens("In 1999 we had 3 cats.")
    assert len(pred) == len(st)
    assert all(pred[i] == 1 for i, s in enumerate(st) if has_digit(s))
    assert pred[st.index(" cats")] == 0


def test_text_level_probe_last_token(kp):
    words = ["apples", "rivers", "houses", "trees", "people", "cities", "books", "roads", "songs", "clouds"]
    texts, labels = [], []
    for i, w in enumerate(words * 2):
        texts.append(f"We counted the {w} and found {3 + i}")
        labels.append(1)
        texts.append(f"We counted the {w} and found nothing")
        labels.append(0)
    res = kp.train_probe(texts, labels, 4, hook="mlp.hook_post", test_fraction=0.3)
    assert not res.token_level and res.n_train + res.n_test == 40 and res.n_test == 12
    assert res.accuracy >= 0.9
    assert res.predict(["They found 12", "They found nothing"]) == [1, 0]


def test_bad_inputs(kp):
    with pytest.raises(ArrakisValueError, match="texts is empty"):
        kp.train_probe([], [], 6)
    with pytest.raises(ArrakisValueError, match="one entry per text: 2 texts but 1 labels"):
        kp.train_probe(["a b", "c d"], [1], 6)
    with pytest.raises(ArrakisValueError, match=r"labels\[0\] has 1 labels but text 0 has \d+ tokens"):
        kp.train_probe(["one two three", "four"], [[1], [0]], 6)
    with pytest.raises(ArrakisValueError, match="at least two classes, but every label is 1"):
        kp.train_probe(["a", "b", "c"], [1, 1, 1], 6)
    with pytest.raises(HookNameError, match="'resid_middle' is not a per-token hook point.*accepted"):
        kp.train_probe(["a", "b"], [0, 1], 6, hook="resid_middle")
    with pytest.raises(ArrakisIndexError, match="layer"):
        kp.train_probe(["a", "b"], [0, 1], 99)
    with pytest.raises(ArrakisValueError, match="class 1 has 1 example"):
        kp.train_probe(["a", "b", "c"], [0, 0, 1], 6)
    with pytest.raises(ArrakisValueError, match="all ints .* or all lists"):
        kp.train_probe(["a", "b"], [0, [1]], 6)
    with pytest.raises(ArrakisValueError, match="k_neighbors must be an int in \\[2, 1535\\].*got 1536"):
        kp.polysemantic_score(0, k_neighbors=1536)
    with pytest.raises(ArrakisValueError, match="k_neighbors must be an int in \\[2, 1535\\].*got 1"):
        kp.polysemantic_score(0, k_neighbors=1)
    with pytest.raises(ArrakisValueError, match="non-empty list of \\(true_input, false_input\\) pairs"):
        kp.knowledge_probe([], (6, 1))
    with pytest.raises(ArrakisValueError, match="concept_neuron must be a \\(layer, neuron\\) pair"):
        kp.knowledge_probe([("a", "b")], 6)
    with pytest.raises(ArrakisIndexError, match="neuron"):
        kp.knowledge_probe([("a", "b")], (6, 5000))
    with pytest.raises(ArrakisValueError, match=r"ids\[0\] must be a \(true_input, false_input\) pair"):
        kp.knowledge_probe([("a", "b", "c")], (6, 1))
